"""An in-memory HostSystem for component tests and fleet simulation.

It behaves like ``LocalHostSystem`` where callers can tell (tests/contract keeps the two
honest): images are created only inside known directories, an existing path is refused with
FILE_IN_THE_WAY, a qcow2 image takes a small header's worth of space, a raw one is sparse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ferry.errors import AlreadyExists, FailedPrecondition
from ferry.model import StorageDir

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

    ``dirs`` maps a directory to its free bytes (total = free unless given in ``totals``);
    ``files`` are files already present (path -> size in bytes); ``shared_dirs`` are on shared
    storage; ``read_only_dirs`` refuse new files.
    """

    def __init__(
        self,
        *,
        bridges: Iterable[str] = (),
        dirs: Mapping[str, int] | None = None,
        totals: Mapping[str, int] | None = None,
        shared_dirs: Iterable[str] = (),
        read_only_dirs: Iterable[str] = (),
        files: Mapping[str, int] | None = None,
        storage: Iterable[str] | None = None,
    ) -> None:
        self.bridge_names = list(bridges)
        shared, read_only = set(shared_dirs), set(read_only_dirs)
        self.dirs: dict[str, FakeDir] = {
            d: FakeDir(
                free,
                (totals or {}).get(d, free),
                shared=d in shared,
                writable=d not in read_only,
                fs_type="nfs4" if d in shared else "ext4",
            )
            for d, free in (dirs or {}).items()
        }
        self.files: dict[str, FakeImage | int] = dict(files or {})
        self.storage = list(storage) if storage is not None else list(self.dirs)
        self.created: list[str] = []
        self.removed: list[str] = []
        self.fail_create: dict[str, Exception] = {}

    def _dir_of(self, path: str) -> tuple[str, FakeDir] | None:
        best = None
        for d, info in self.dirs.items():
            if _under(path, d) and (best is None or len(d) > len(best[0])):
                best = (d, info)
        return best

    # ------------------------------------------------------------------ port

    def bridges(self) -> list[str]:
        return sorted(self.bridge_names)

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

    def exists(self, path: str) -> bool:
        return path in self.files or path.rstrip("/") in self.dirs

    def writable_dir(self, path: str) -> bool:
        parent = path.rstrip("/").rsplit("/", 1)[0] or "/"
        found = self._dir_of(parent)
        return bool(found and found[1].writable)

    def is_shared(self, path: str) -> bool:
        found = self._dir_of(path)
        return bool(found and found[1].shared)

    def create_image(
        self, path: str, *, fmt: str, virtual_size: int, backing_file: str = "", backing_format: str = ""
    ) -> None:
        if path in self.files:
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
        self.files[path] = FakeImage(fmt, virtual_size, backing_file, backing_format, allocated)
        self.created.append(path)

    def remove(self, path: str) -> bool:
        entry = self.files.pop(path, None)
        if entry is None:
            return False
        allocated = entry.allocated if isinstance(entry, FakeImage) else entry
        found = self._dir_of(path)
        if found:
            found[1].free_bytes += allocated
        self.removed.append(path)
        return True
