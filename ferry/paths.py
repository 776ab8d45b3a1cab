"""Path rules (pure): which paths a caller may make an agent create, read or remove.

An agent creates disk images, reads backing files and removes images only inside its configured
image directories (``image_dirs`` and ``shared_dirs``). Every such path a request names must be:

==========================  =======================================================================
reason                      refused when the path
==========================  =======================================================================
``PATH_INVALID_CHARACTERS``  holds a NUL or another control character
``PATH_TOO_LONG``            is longer than ``PATH_MAX`` characters
``PATH_NOT_ABSOLUTE``        does not start with ``/`` (a relative path would land in the agent's
                             working directory)
``PATH_DOTDOT``              has a ``..`` component
``PATH_NOT_NORMALIZED``      has ``//``, ``/./`` or a trailing ``/`` (so a prefix check means what
                             it says)
``PATH_OUTSIDE_IMAGE_DIRS``  is not below one of the image directories
``PATH_SYMLINK``             passes through a symbolic link below the image directory (checked on
                             the host by the agent, ``agent/confine.py``; the image directory
                             itself is the operator's and may be one)
==========================  =======================================================================

The coordinator applies the same lexical rules to a request's mapping overrides at submit, with
the target's image directories as reported in its inventory; the agent applies them again, with
the symlink check, to every path it is asked to touch.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

from ferry.errors import FailedPrecondition, InvalidArgument, clip
from ferry.model import Problem, StorageDir

#: the file systems libvirt takes for shared storage (virFileIsSharedFS: it refuses to migrate a
#: disk in place anywhere else unless the migration is marked unsafe); by their mount table names
LIBVIRT_SHARED_FS_TYPES = frozenset(
    {"nfs", "nfs4", "gfs2", "ocfs2", "afs", "smb3", "smbfs", "cifs", "ceph", "gpfs", "acfs", "beegfs"}
    | {"fuse.glusterfs", "fuse.quobyte"}
)

PATH_MAX = 1024


class PathUse(enum.Enum):
    """What the agent would do with a path."""

    CREATE = "create"  # a new disk image (its missing parent directories too)
    READ = "read"  # a backing file qemu-img reads
    REMOVE = "remove"  # an image to delete


def _bad(reason: str, message: str, hint: str) -> Problem:
    return Problem(reason, message, hint, kind=InvalidArgument)


def root_of(path: str, roots: Iterable[str]) -> str | None:
    """The longest root ``path`` lies strictly below (whole components), None when none.

    >>> root_of("/srv/img/a/b.qcow2", ["/srv", "/srv/img/"]), root_of("/srv/img", ["/srv/img"])
    ('/srv/img', None)
    """
    best = None
    for root in roots:
        r = root.rstrip("/") or "/"
        below = path.startswith(r + "/") if r != "/" else path.startswith("/") and path != "/"
        if below and (best is None or len(r) > len(best)):
            best = r
    return best


def syntax_problem(path: str, what: str = "path") -> Problem | None:
    """Why ``path`` is not an absolute, normalised path without control characters (None: it is).

    >>> [syntax_problem(p).reason for p in ["a/b", "/a/../b", "/a//b", "/a/b/", "/a/\\0"]]
    ['PATH_NOT_ABSOLUTE', 'PATH_DOTDOT', 'PATH_NOT_NORMALIZED', 'PATH_NOT_NORMALIZED', 'PATH_INVALID_CHARACTERS']
    >>> syntax_problem("/var/lib/libvirt/images/g1.qcow2") is None
    True
    >>> syntax_problem("/var/lib/libvirt/images/", "mapping source prefix").hint
    'give it in its plain form: /var/lib/libvirt/images'
    """
    shown = clip(repr(path))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return _bad(
            "PATH_INVALID_CHARACTERS",
            f"{what} {shown} holds a NUL or control character",
            "name files with printable characters only",
        )
    if len(path) > PATH_MAX:
        return _bad("PATH_TOO_LONG", f"{what} {shown} is longer than {PATH_MAX} characters", "use a shorter path")
    if not path.startswith("/"):
        return _bad(
            "PATH_NOT_ABSOLUTE",
            f"{what} {shown} is not absolute",
            "give the full path, starting with / (relative paths are never used)",
        )
    parts = path.split("/")[1:]
    if ".." in parts:
        return _bad("PATH_DOTDOT", f"{what} {shown} has a '..' component", "give the path without '..'")
    if path != "/" and ("" in parts or "." in parts):
        return _bad(
            "PATH_NOT_NORMALIZED",
            f"{what} {shown} is not normalised ('//', '/./' or a trailing '/')",
            f"give it in its plain form: {'/' + '/'.join(p for p in parts if p not in ('', '.'))}",
        )
    return None


def path_problem(path: str, roots: Iterable[str], what: str = "path", *, allow_root: bool = False) -> Problem | None:
    """Why the agent may not touch ``path`` (lexically), None when it may: the syntax rules, then
    PATH_OUTSIDE_IMAGE_DIRS when it is not below one of ``roots`` (``allow_root``: or one of them).

    >>> path_problem("/var/lib/libvirt/images/../../../etc/cron.d/g1.qcow2", ["/var/lib/libvirt/images"]).reason
    'PATH_DOTDOT'
    >>> path_problem("/etc/shadow", ["/var/lib/libvirt/images"]).reason
    'PATH_OUTSIDE_IMAGE_DIRS'
    >>> path_problem("/var/lib/libvirt/images/g1.qcow2", ["/var/lib/libvirt/images"]) is None
    True
    """
    roots = [r for r in roots if r]
    found = syntax_problem(path, what)
    if found is not None:
        return found
    if root_of(path, roots) is not None or (allow_root and path in {r.rstrip("/") or "/" for r in roots}):
        return None
    listed = ", ".join(sorted(roots)) or "none configured"
    return _bad(
        "PATH_OUTSIDE_IMAGE_DIRS",
        f"{what} {clip(path)} is outside the image directories ({clip(listed)})",
        "use a path inside one of the host's image_dirs or shared_dirs (or map it there: --map-path)",
    )


def symlink_problem(path: str, link: str, what: str = "path") -> Problem:
    """``path`` passes through the symbolic link ``link`` (below an image directory)."""
    return Problem(
        "PATH_SYMLINK",
        f"{what} {clip(path)} passes through the symbolic link {clip(link)}",
        "symbolic links below the image directories are never followed: replace the link with a real "
        "directory or file, or use the path it points to when that is inside an image directory",
        kind=FailedPrecondition,
    )


def _inside(path: str, directory: str) -> bool:
    d = directory.rstrip("/")
    return bool(d) and (path == d or path.startswith(d + "/"))


def not_local(
    paths: Iterable[str], dirs: Iterable[StorageDir], shared: Callable[[str], bool] = lambda p: False
) -> list[str]:
    """Paths not inside a local (not shared) storage directory, or on shared storage themselves
    (``shared(path)``: the host says so, e.g. a cluster file system): what RemoveSourceDisks refuses.

    >>> dirs = [StorageDir("/var/lib/libvirt/images", 0, 0), StorageDir("/mnt/nfs", 0, 0, shared=True)]
    >>> not_local(["/var/lib/libvirt/images/a.qcow2", "/mnt/nfs/b.qcow2", "/etc/passwd",
    ...            "/var/lib/libvirt/images"], dirs, lambda p: False)
    ['/mnt/nfs/b.qcow2', '/etc/passwd', '/var/lib/libvirt/images']
    """
    dirs = list(dirs)
    local = [d.path for d in dirs if not d.shared]
    return [
        p
        for p in paths
        if not any(_inside(p, d) and p.rstrip("/") != d.rstrip("/") for d in local)
        or any(_inside(p, d.path) for d in dirs if d.shared)
        or shared(p)
    ]
