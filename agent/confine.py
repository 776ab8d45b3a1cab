"""The agent's image directories on this host, confined (the file-system half of ``ferry.paths``).

Every path the agent creates, reads as a backing file or removes is first checked lexically
(``ferry.paths.path_problem``: absolute, normalised, no ``..``, no control characters, below an
image directory). Then it is walked from its image directory one component at a time: each
directory is opened with ``O_NOFOLLOW`` relative to the one before (``dir_fd``), so a symbolic
link anywhere below the image directory is refused (PATH_SYMLINK) instead of followed, and the
final create, open or unlink happens relative to the directory descriptor the walk holds: a link
swapped in after the check is not followed either. The image directory itself is the operator's
configuration and is opened as configured (it may be a link, e.g. to a bigger disk).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Sequence

from ferry.errors import FailedPrecondition, FerryError, clip
from ferry.model import Problem
from ferry.paths import PathUse, path_problem, root_of, symlink_problem

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class NotADirectory(FailedPrecondition):
    default_reason = "PATH_NOT_A_DIRECTORY"


class ImageDirs:
    """The configured image directories (``image_dirs`` and ``shared_dirs``), as roots for walks."""

    def __init__(self, dirs: Sequence[str]) -> None:
        self.dirs = tuple(dict.fromkeys(d.rstrip("/") or "/" for d in dirs if d))

    def problem(self, path: str, use: PathUse, what: str = "") -> Problem | None:
        """Why the agent may not ``use`` ``path`` (None: it may). Looks at the host: symbolic
        links below the image directory are problems; a missing directory is not (CREATE makes it)."""
        what = what or {PathUse.CREATE: "image", PathUse.READ: "backing file", PathUse.REMOVE: "image"}[use]
        lexical = path_problem(path, self.dirs, what)
        if lexical is not None:
            return lexical
        try:
            with self.parent(path, create=False, what=what) as (fd, name):
                if fd is None:
                    return None
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    return None
                if stat.S_ISLNK(st.st_mode) and use is not PathUse.CREATE:
                    return symlink_problem(path, path, what)
        except FerryError as err:
            return Problem.of(err)
        except OSError as exc:
            return Problem(
                "PATH_UNREADABLE",
                f"cannot look at {clip(path)}: {exc.strerror}",
                "check the image directory's permissions",
            )
        return None

    def check(self, path: str, use: PathUse, what: str = "") -> None:
        """Raise the problem ``problem`` finds, if any."""
        found = self.problem(path, use, what)
        if found is not None:
            raise found.to_error()

    @contextlib.contextmanager
    def parent(self, path: str, *, create: bool, what: str = "path") -> Iterator[tuple[int | None, str]]:
        """An open descriptor of ``path``'s directory, reached without following a symbolic link
        below the image directory, and the final component's name. Missing directories are made
        when ``create`` (else the descriptor is None). ``path`` must pass ``path_problem``."""
        root = root_of(path, self.dirs)
        if root is None:  # the lexical check comes first; never here
            raise FailedPrecondition(f"{clip(path)} is outside the image directories", reason="PATH_OUTSIDE_IMAGE_DIRS")
        *dirs, name = path[len(root) :].lstrip("/").split("/")
        try:
            fd = os.open(root, _DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                yield None, name
                return
            os.makedirs(root, exist_ok=True)
            fd = os.open(root, _DIR_FLAGS)
        try:
            current = root
            for comp in dirs:
                current = f"{current}/{comp}"
                try:
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        yield None, name
                        return
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(comp, 0o755, dir_fd=fd)
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise symlink_problem(path, current, what).to_error()
                if not stat.S_ISDIR(st.st_mode):
                    raise NotADirectory(
                        f"{what} {clip(path)}: {clip(current)} is not a directory",
                        hint="remove the file in the way or pick another path",
                    )
                try:
                    nfd = os.open(comp, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link meanwhile
                        raise symlink_problem(path, current, what).to_error() from exc
                    raise
                os.close(fd)
                fd = nfd
            yield fd, name
        finally:
            os.close(fd)
