"""An in-memory HostSystem for component tests and fleet simulation.

It behaves like ``LocalHostSystem`` where callers can tell (tests/contract keeps the two
honest): images are created only inside known directories, an existing path is refused with
FILE_IN_THE_WAY, a qcow2 image takes a small header's worth of space, a raw one is sparse.
Confinement follows the same rules (``ferry.paths``): the configured directories are
``storage``; ``symlinks`` are paths that are symbolic links on this fake host.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ferry.errors import AlreadyExists, FailedPrecondition
from ferry.model import LINUX_BRIDGE, OVS_BRIDGE, Problem, StorageDir
from ferry.paths import LIBVIRT_SHARED_FS_TYPES, PathUse, path_problem, root_of, symlink_problem

QCOW2_HEADER_BYTES = 192 * 1024  # what `qemu-img create -f qcow2` allocates, roughly


@dataclass(frozen=True)
class FakeImage:
    fmt: str
    virtual_size: int
    backing_file: str = ""
    backing_format: str = ""
    allocated: int = 0


@dataclass
class FakeDir:
    free_bytes: int
    total_bytes: int
    shared: bool = False
    writable: bool = True
    fs_type: str = "ext4"


def _under(path: str, directory: str) -> bool:
    d = directory.rstrip("/")
    return path == d or path.startswith(d + "/") or d == ""


class FakeHostSystem:
    """Bridges, directories (each its own file system) and files, all in memory.

    ``bridges`` are Linux bridges, ``ovs_bridges`` Open vSwitch bridges; guests may use both.
    ``dirs`` maps a directory to its free bytes (total = free unless given in ``totals``);
    ``files`` are files already present (path -> size in bytes); ``shared_dirs`` are on shared
    storage (on NFS unless ``fs_types`` names another file system); ``read_only_dirs`` refuse new
    files. ``shared_files``: one dict given to every fake host of a fleet that mounts the same
    shared storage -- the files a host writes under its shared directories live there, so the
    other hosts see them (without it, each host's shared directories are its own, as when the
    shared storage is not mounted and a local directory stands in for it).
    """

    def __init__(
        self,
        *,
        bridges: Iterable[str] = (),
        ovs_bridges: Iterable[str] = (),
        dirs: Mapping[str, int] | None = None,
        totals: Mapping[str, int] | None = None,
        shared_dirs: Iterable[str] = (),
        read_only_dirs: Iterable[str] = (),
        files: Mapping[str, int] | None = None,
        storage: Iterable[str] | None = None,
        fs_types: Mapping[str, str] | None = None,
        shared_files: dict[str, FakeImage | int] | None = None,
    ) -> None:
        self.bridge_names = list(bridges)
        self.ovs_bridge_names = list(ovs_bridges)
        shared, read_only = set(shared_dirs), set(read_only_dirs)
        self.dirs: dict[str, FakeDir] = {
            d: FakeDir(
                free,
                (totals or {}).get(d, free),
                shared=d in shared,
                writable=d not in read_only,
                fs_type=(fs_types or {}).get(d, "nfs4" if d in shared else "ext4"),
            )
            for d, free in (dirs or {}).items()
        }
        self.files: dict[str, FakeImage | int] = dict(files or {})
        self.shared_files = shared_files
        self.storage = list(storage) if storage is not None else list(self.dirs)
        self.created: list[str] = []
        self.removed: list[str] = []
        self.fail_create: dict[str, Exception] = {}
        self.symlinks: set[str] = set()
        self.fingerprints: dict[str, str] = {}  # path -> fingerprint of an image with other bytes
        self.block_devices: dict[str, str] = {}  # path -> its identity ("" = a device of unknown identity)
        self.nics = ["eth0", "lo"]  # network devices besides the bridges (a macvtap NIC's uplink)
        self.cpus = frozenset(range(4))  # CPUs online
        self.nodes = frozenset({0})  # NUMA nodes online

    def _dir_of(self, path: str) -> tuple[str, FakeDir] | None:
        best = None
        for d, info in self.dirs.items():
            if _under(path, d) and (best is None or len(d) > len(best[0])):
                best = (d, info)
        return best

    def _files_of(self, path: str) -> dict[str, FakeImage | int]:
        """Where ``path``'s file lives: the fleet's shared files for a shared directory, if given."""
        found = self._dir_of(path)
        if self.shared_files is not None and found is not None and found[1].shared:
            return self.shared_files
        return self.files

    # ------------------------------------------------------------------ port

    def bridges(self) -> list[str]:
        return list(self.bridge_kinds())

    def bridge_kinds(self) -> dict[str, str]:
        kinds = {b: LINUX_BRIDGE for b in self.bridge_names} | {b: OVS_BRIDGE for b in self.ovs_bridge_names}
        return dict(sorted(kinds.items()))

    def storage_dirs(self) -> list[StorageDir]:
        return [
            StorageDir(
                path=d,
                free_bytes=self.dirs[d].free_bytes,
                total_bytes=self.dirs[d].total_bytes,
                shared=self.dirs[d].shared,
                fs_type=self.dirs[d].fs_type,
            )
            for d in self.storage
            if d in self.dirs
        ]

    def free_bytes(self, path: str) -> int:
        found = self._dir_of(path)
        return found[1].free_bytes if found else 0

    def confine(self, path: str, use: PathUse, what: str = "") -> Problem | None:
        what = what or ("backing file" if use is PathUse.READ else "image")
        found = path_problem(path, self.storage, what)
        if found is not None:
            return found
        root = root_of(path, self.storage)
        assert root is not None
        parts = path[len(root) :].strip("/").split("/")
        for i in range(1, len(parts) + 1):
            current = "/".join([root, *parts[:i]])
            if current in self.symlinks and (i < len(parts) or use is not PathUse.CREATE):
                return symlink_problem(path, current, what)
        return None

    def exists(self, path: str) -> bool:
        return (
            path in self.files
            or path in self.block_devices
            or path in self._files_of(path)
            or path in self.symlinks
            or path.rstrip("/") in self.dirs
        )

    def writable_dir(self, path: str) -> bool:
        parent = path.rstrip("/").rsplit("/", 1)[0] or "/"
        found = self._dir_of(parent)
        return bool(found and found[1].writable)

    def is_shared(self, path: str) -> bool:
        found = self._dir_of(path)
        return bool(found and found[1].shared)

    def libvirt_shared(self, path: str) -> bool:
        found = self._dir_of(path)
        return bool(found and found[1].fs_type in LIBVIRT_SHARED_FS_TYPES)

    def create_image(
        self, path: str, *, fmt: str, virtual_size: int, backing_file: str = "", backing_format: str = ""
    ) -> None:
        for checked, use in ((path, PathUse.CREATE), (backing_file, PathUse.READ)):
            problem = self.confine(checked, use) if checked else None
            if problem is not None:
                raise problem.to_error()
        if self.exists(path) and path.rstrip("/") not in self.dirs:
            raise AlreadyExists(
                f"{path} already exists",
                reason="FILE_IN_THE_WAY",
                hint=f"remove or move {path}, or map the disk to another directory (--map-path)",
            )
        if path in self.fail_create:
            raise self.fail_create[path]
        if not self.writable_dir(path):
            raise FailedPrecondition(
                f"cannot create {path}: not writable",
                reason="PATH_NOT_WRITABLE",
                hint="make the directory writable for the agent, or map the disk to another directory (--map-path)",
            )
        found = self._dir_of(path)
        assert found is not None  # writable_dir found it
        allocated = QCOW2_HEADER_BYTES if fmt == "qcow2" else 0
        found[1].free_bytes = max(0, found[1].free_bytes - allocated)
        self._files_of(path)[path] = FakeImage(fmt, virtual_size, backing_file, backing_format, allocated)
        self.created.append(path)

    def is_block_device(self, path: str) -> bool:
        return path in self.block_devices

    def block_identity(self, path: str) -> str:
        return self.block_devices.get(path, "")

    def fingerprint(self, path: str) -> str:
        """Set ``fingerprints[path]`` for an image whose bytes differ; else one from what the fake
        knows of the file (the same image on two fake hosts has the same fingerprint)."""
        problem = self.confine(path, PathUse.READ)
        if problem is not None:
            raise problem.to_error()
        if path in self.fingerprints:
            return self.fingerprints[path]
        entry = self.files.get(path, self._files_of(path).get(path))
        if entry is None:
            raise FailedPrecondition(
                f"cannot open backing file {path}: missing",
                reason="BACKING_MISSING",
                hint=f"check that {path} exists and the agent may read it",
            )
        return "fake:" + hashlib.sha256(repr(entry).encode()).hexdigest()[:32]

    def write_probe(self, path: str) -> None:
        problem = self.confine(path, PathUse.CREATE)
        if problem is not None:
            raise problem.to_error()
        if self.exists(path):
            raise AlreadyExists(f"{path} already exists", reason="FILE_IN_THE_WAY")
        if not self.writable_dir(path):
            raise FailedPrecondition(
                f"cannot create {path}: not writable",
                reason="PATH_NOT_WRITABLE",
                hint="make the directory writable for the agent",
            )
        self._files_of(path)[path] = 0
        self.created.append(path)

    def remove(self, path: str) -> bool:
        problem = self.confine(path, PathUse.REMOVE)
        if problem is not None:
            raise problem.to_error()
        entry = self.files.pop(path, None)
        if entry is None:
            entry = self._files_of(path).pop(path, None)
        if entry is None:
            return False
        allocated = entry.allocated if isinstance(entry, FakeImage) else entry
        found = self._dir_of(path)
        if found:
            found[1].free_bytes += allocated
        self.removed.append(path)
        return True

    def net_devices(self) -> list[str]:
        return sorted({*self.nics, *self.bridges()})

    def online_cpus(self) -> frozenset[int]:
        return self.cpus

    def numa_nodes(self) -> frozenset[int]:
        return self.nodes
