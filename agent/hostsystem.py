"""The HostSystem port for real: bridges (Linux and Open vSwitch), image directories, qemu-img.

Bridges. A Linux bridge is a network device with a ``bridge/`` directory in sysfs
(``/sys/class/net/NAME/bridge``). An Open vSwitch bridge is a network device too -- its local
port, an OVS "internal" device named after the bridge -- but has no such directory, and nothing
in sysfs tells it from any other internal port: every device on an OVS bridge shows the datapath's
device as its master (``ovs-system``, as libvirt notes in virnetdevopenvswitch.c), whichever
bridge it is on. Only Open vSwitch's database knows its bridges, so they are what ``ovs-vsctl
list-br`` lists (real and fake bridges, one a line) -- the tool libvirt itself runs to add a
``<virtualport type='openvswitch'>`` NIC to its bridge (``ovs-vsctl add-port``), so a host whose
guests use Open vSwitch has it -- and that exist as network devices (libvirt reads a bridge's MTU
from its device before attaching a NIC). ovs-vsctl is only asked when a datapath device exists:
``ovs-system`` (the kernel's openvswitch datapath) or ``ovs-netdev`` (the userspace one); no OVS
bridge forwards without one. Where ovs-vsctl cannot be asked (not installed where the agent runs,
its database not answering within ``OVS_VSCTL_TIMEOUT_S``), the declared ``bridges`` that are
network devices but not Linux bridges count as Open vSwitch bridges when a datapath device
exists: the operator vouches for them. The kinds matter: libvirt adds a NIC without a
<virtualport> to a Linux bridge and one with ``type='openvswitch'`` with ovs-vsctl, and either
fails on a bridge of the other kind (``target_checks``: BRIDGE_TYPE_MISMATCH).

Shared storage is what the operator declares (``shared_dirs``) or a cluster file system
(NFS, CIFS, Ceph, GFS2, OCFS2, GlusterFS) found in the mount table.

Confined: images are created, read as backing files and removed only inside the configured
image directories (``image_dirs`` and ``shared_dirs``), walked without following symbolic links
(``agent/confine.py``). qemu-img works on the descriptor the walk opened (``/proc/self/fd/N``),
never on a path it would resolve again. ``bridges`` (when configured) are the only bridges
offered to guests.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ferry.agent.confine import ImageDirs
from ferry.agent.fingerprint import fingerprint
from ferry.agent.target_checks import parse_cpu_list
from ferry.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, FerryError, Internal, clip
from ferry.model import LINUX_BRIDGE, OVS_BRIDGE, Problem, StorageDir
from ferry.paths import LIBVIRT_SHARED_FS_TYPES, PathUse, symlink_problem

log = logging.getLogger(__name__)

CLUSTER_FS_TYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "ceph", "gfs2", "ocfs2", "glusterfs", "fuse.glusterfs", "fuse.cephfs"}
)

# the network device of an Open vSwitch datapath: the kernel's, the userspace (netdev) one's
OVS_DATAPATH_DEVICES = frozenset({"ovs-system", "ovs-netdev"})
OVS_VSCTL_TIMEOUT_S = 2  # ovs-vsctl --timeout: it waits forever for its database otherwise


def _under(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or inside it (whole path components)."""
    d = directory.rstrip("/")
    return path == d or path.startswith(d + "/") or d == ""


def _unescape_mount_field(field: str) -> str:
    """The mount table escapes space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _read(path: Path) -> str:
    """A sysfs attribute's value, stripped; "" when it is not there."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


class LocalHostSystem:
    """This host's bridges, image directories and disk images."""

    def __init__(
        self,
        image_dirs: Sequence[str],
        shared_dirs: Sequence[str] = (),
        *,
        sysfs_root: str = "/sys",
        mounts_file: str = "/proc/self/mounts",
        qemu_img: str = "qemu-img",
        qemu_img_timeout_s: float = 60.0,
        bridges: Sequence[str] = (),
        ovs_vsctl: str = "ovs-vsctl",
    ) -> None:
        """``bridges``: the bridges guests may use (empty: every Linux and Open vSwitch bridge on
        the host); ``ovs_vsctl``: the program that lists the Open vSwitch bridges."""
        self._image_dirs = tuple(image_dirs)
        self._shared_dirs = tuple(os.path.realpath(d) for d in shared_dirs)
        self._shared_dirs_given = tuple(shared_dirs)
        self._confined = ImageDirs((*image_dirs, *shared_dirs))
        self._allowed_bridges = frozenset(bridges)
        self._sysfs = Path(sysfs_root)
        self._mounts_file = mounts_file
        self._qemu_img = qemu_img
        self._timeout_s = qemu_img_timeout_s
        self._ovs_vsctl = ovs_vsctl
        self._ovs_problem = ""  # why ovs-vsctl did not answer last time (logged when it changes)

    # ------------------------------------------------------------------ network

    def bridges(self) -> list[str]:
        return list(self.bridge_kinds())

    def bridge_kinds(self) -> dict[str, str]:
        """The bridges guests may use, each with its kind (see the module docstring)."""
        net = self._sysfs / "class" / "net"
        try:
            devices = {i.name for i in net.iterdir() if i.is_dir()}
        except FileNotFoundError:
            return {}
        kinds = {d: LINUX_BRIDGE for d in devices if (net / d / "bridge").is_dir()}
        if devices & OVS_DATAPATH_DEVICES:
            listed = self._ovs_bridges()
            if listed is None:  # Open vSwitch cannot be asked: the declared bridges
                listed = sorted(self._allowed_bridges)
            for b in listed:
                if b in devices and b not in kinds and b not in OVS_DATAPATH_DEVICES:
                    kinds[b] = OVS_BRIDGE
        return {b: kinds[b] for b in sorted(kinds) if not self._allowed_bridges or b in self._allowed_bridges}

    def _ovs_bridges(self) -> list[str] | None:
        """What ``ovs-vsctl list-br`` lists; None when it does not answer."""
        cmd = [self._ovs_vsctl, f"--timeout={OVS_VSCTL_TIMEOUT_S}", "list-br"]
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=OVS_VSCTL_TIMEOUT_S + 3,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._ovs_answered(f"cannot run {self._ovs_vsctl}: {exc}")
            return None
        if done.returncode != 0:
            why = clip(done.stderr.strip(), 500) or f"exit status {done.returncode}"
            self._ovs_answered(f"{self._ovs_vsctl} list-br failed: {why}")
            return None
        self._ovs_answered("")
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    def _ovs_answered(self, problem: str) -> None:
        """Log why ovs-vsctl did not answer, once until that changes."""
        if problem and problem != self._ovs_problem:
            log.warning("Open vSwitch bridges: %s; taking the declared bridges instead", problem)
        self._ovs_problem = problem

    # ------------------------------------------------------------------ storage

    def _mounts(self) -> list[tuple[str, str]]:
        """(mount point, fs type) of every mount."""
        try:
            lines = Path(self._mounts_file).read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            fields = line.split()
            if len(fields) >= 3:
                out.append((_unescape_mount_field(fields[1]), fields[2]))
        return out

    def fs_type(self, path: str) -> str:
        """Type of the file system holding ``path`` (longest mount point that contains it)."""
        real = os.path.realpath(_nearest_existing(path))
        best, fs = -1, ""
        for mount_point, kind in self._mounts():
            if _under(real, mount_point) and len(mount_point) > best:
                best, fs = len(mount_point), kind
        return fs

    def _statvfs(self, path: str) -> os.statvfs_result:
        return os.statvfs(_nearest_existing(path))

    def free_bytes(self, path: str) -> int:
        st = self._statvfs(path)
        return st.f_bavail * st.f_frsize

    def is_shared(self, path: str) -> bool:
        real = os.path.realpath(_nearest_existing(path))
        absolute = os.path.abspath(path)
        if any(_under(real, d) or _under(absolute, d) for d in self._shared_dirs):
            return True
        return self.fs_type(path) in CLUSTER_FS_TYPES

    def libvirt_shared(self, path: str) -> bool:
        return self.fs_type(path) in LIBVIRT_SHARED_FS_TYPES

    def storage_dirs(self) -> list[StorageDir]:
        out, seen = [], set()
        for directory in (*self._image_dirs, *self._shared_dirs_given):
            if directory in seen:
                continue
            seen.add(directory)
            st = self._statvfs(directory)
            out.append(
                StorageDir(
                    path=directory,
                    free_bytes=st.f_bavail * st.f_frsize,
                    total_bytes=st.f_blocks * st.f_frsize,
                    shared=self.is_shared(directory),
                    fs_type=self.fs_type(directory),
                )
            )
        return out

    # ------------------------------------------------------------------ files

    def confine(self, path: str, use: PathUse, what: str = "") -> Problem | None:
        return self._confined.problem(path, use, what)

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)  # a dangling symlink is in the way too

    def writable_dir(self, path: str) -> bool:
        parent = _nearest_existing(os.path.dirname(os.path.abspath(path)))
        return os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK)

    def create_image(
        self, path: str, *, fmt: str, virtual_size: int, backing_file: str = "", backing_format: str = ""
    ) -> None:
        self._confined.check(path, PathUse.CREATE)
        if backing_file:
            self._confined.check(backing_file, PathUse.READ)
        try:
            with self._confined.parent(path, create=True, what="image") as (dir_fd, name):
                assert dir_fd is not None  # create=True makes the directories
                # claim the name atomically, not following a link: qemu-img would overwrite a file
                fd = os.open(
                    name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
                )
        except FileExistsError as exc:
            raise AlreadyExists(
                f"{clip(path)} already exists",
                reason="FILE_IN_THE_WAY",
                hint=f"remove or move {clip(path)}, or map the disk to another directory (--map-path)",
            ) from exc
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot create {clip(path)}: {exc.strerror}",
                reason="PATH_NOT_WRITABLE",
                hint=f"make {clip(os.path.dirname(path))} writable for the agent, or map "
                "the disk to another directory (--map-path)",
            ) from exc
        try:
            if backing_file and not backing_format:
                backing_format = self._image_format(backing_file)
            cmd = [self._qemu_img, "create", "-q", "-f", fmt]
            if backing_file:
                cmd += ["-b", backing_file, "-F", backing_format]
            # qemu-img writes through the descriptor claimed above (a path it cannot re-resolve)
            self._run([*cmd, f"/proc/self/fd/{fd}", str(virtual_size)], what=f"create {path}", fds=(fd,))
        except BaseException:
            self._discard(path)
            raise
        finally:
            os.close(fd)

    def _image_format(self, path: str) -> str:
        with self._open(path, PathUse.READ, "backing file") as fd:
            out = self._run(
                [self._qemu_img, "info", "-U", "--output=json", f"/proc/self/fd/{fd}"], what=f"read {path}", fds=(fd,)
            )
        try:
            return str(json.loads(out)["format"])
        except (ValueError, KeyError) as exc:
            raise Internal(
                f"qemu-img info {clip(path)} printed no format",
                reason="QEMU_IMG_FAILED",
                hint="check the image with `qemu-img info`",
            ) from exc

    def _open(self, path: str, use: PathUse, what: str) -> _OpenFile:
        """A regular file in the image directories, opened read-only without following a link."""
        with self._confined.parent(path, create=False, what=what) as (dir_fd, name):
            try:
                if dir_fd is None:
                    raise FileNotFoundError(path)
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # the file itself is a link
                    raise symlink_problem(path, path, what).to_error() from exc
                raise FailedPrecondition(
                    f"cannot open {what} {clip(path)}: {exc.strerror or 'missing'}",
                    reason="BACKING_MISSING" if isinstance(exc, FileNotFoundError) else "PATH_UNREADABLE",
                    hint=f"check that {clip(path)} exists and the agent may read it",
                ) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FailedPrecondition(
                f"{what} {clip(path)} is not a regular file",
                reason="PATH_NOT_A_FILE",
                hint="name an image file",
            )
        return _OpenFile(fd)

    def _run(self, cmd: list[str], *, what: str, fds: Sequence[int] = ()) -> str:
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=self._timeout_s,
                check=False,
                stdin=subprocess.DEVNULL,
                pass_fds=tuple(fds),
            )
        except FileNotFoundError as exc:
            raise FailedPrecondition(
                f"{self._qemu_img} is not installed", reason="QEMU_IMG_MISSING", hint="install qemu-utils on this host"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise DeadlineExceeded(
                f"qemu-img did not {clip(what)} within {self._timeout_s:.0f} s",
                reason="QEMU_IMG_TIMEOUT",
                hint="check the storage under that path (hung NFS mount?)",
            ) from exc
        if done.returncode != 0:
            raise Internal(
                f"qemu-img could not {clip(what)}: {clip(done.stderr.strip(), 500)}",
                reason="QEMU_IMG_FAILED",
                hint="run the same qemu-img command by hand to see why",
            )
        return done.stdout

    def _discard(self, path: str) -> None:
        try:
            self._unlink(path)
        except (OSError, FerryError):
            log.warning("could not remove half-created image %s", clip(path), exc_info=True)

    def _unlink(self, path: str) -> bool:
        """Remove the file at ``path`` (walked without following links); False when it is not there."""
        with self._confined.parent(path, create=False, what="image") as (dir_fd, name):
            if dir_fd is None:
                return False
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if stat.S_ISLNK(st.st_mode):
                raise symlink_problem(path, path, "image").to_error()
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return False
        return True

    def remove(self, path: str) -> bool:
        self._confined.check(path, PathUse.REMOVE)
        try:
            return self._unlink(path)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot remove {clip(path)}: {exc.strerror}",
                reason="REMOVE_FAILED",
                hint=f"check the permissions of {clip(os.path.dirname(path))}; remove the "
                "file by hand if it is no longer needed",
            ) from exc

    def is_block_device(self, path: str) -> bool:
        try:
            return stat.S_ISBLK(os.stat(path).st_mode)  # a link followed, only to look
        except OSError:
            return False

    def block_identity(self, path: str) -> str:
        try:
            st = os.stat(path)  # /dev/VG/LV is a link to ../dm-N: followed, only to look
        except OSError:
            return ""
        if not stat.S_ISBLK(st.st_mode):
            return ""
        node = self._sysfs / "dev" / "block" / f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        suffix = ""
        part = _read(node / "partition")
        if part:  # a partition: its disk's identity and its number
            node, suffix = node.resolve().parent, f":part{part}"
        dm = _read(node / "dm" / "uuid")
        if dm:
            return f"dm:{dm}{suffix}"
        wwid = _read(node / "device" / "wwid") or _read(node / "wwid")
        return f"wwid:{wwid}{suffix}" if wwid else ""

    def fingerprint(self, path: str) -> str:
        self._confined.check(path, PathUse.READ)
        with self._open(path, PathUse.READ, "backing file") as fd:
            try:
                return fingerprint(fd)
            except OSError as exc:
                raise FailedPrecondition(
                    f"cannot read {clip(path)}: {exc.strerror}",
                    reason="PATH_UNREADABLE",
                    hint=f"check that the agent may read {clip(path)}",
                ) from exc

    def write_probe(self, path: str) -> None:
        self._confined.check(path, PathUse.CREATE, "probe")
        try:
            with self._confined.parent(path, create=False, what="probe") as (dir_fd, name):
                if dir_fd is None:
                    raise FileNotFoundError(errno.ENOENT, "no such directory")
                fd = os.open(
                    name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
                )
                os.close(fd)
        except FileExistsError as exc:
            raise AlreadyExists(f"{clip(path)} already exists", reason="FILE_IN_THE_WAY") from exc
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot create {clip(path)}: {exc.strerror}",
                reason="PATH_NOT_WRITABLE",
                hint=f"make {clip(os.path.dirname(path))} writable for the agent",
            ) from exc

    # ------------------------------------------------------------------ what guests pin to

    def net_devices(self) -> list[str]:
        try:
            return sorted(i.name for i in (self._sysfs / "class" / "net").iterdir())
        except OSError:
            return []

    def _online(self, what: str) -> frozenset[int]:
        """``/sys/devices/system/WHAT/online`` read; empty when it is not there or not a list."""
        try:
            return parse_cpu_list(_read(self._sysfs / "devices" / "system" / what / "online"))
        except ValueError:
            return frozenset()

    def online_cpus(self) -> frozenset[int]:
        return self._online("cpu")

    def numa_nodes(self) -> frozenset[int]:
        return self._online("node")


class _OpenFile:
    """A descriptor closed at the end of a ``with`` block."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
