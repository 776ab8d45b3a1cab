"""The lab's test guest, built from what the machine already has (no downloads): the host's
cloud kernel, an initramfs with busybox, the six virtio modules, a static memory dirtier and
the guest's /init (deploy/lab/guest/). Built once per lab dir and reused while its inputs are
unchanged.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ferry.errors import FailedPrecondition
from ferry.lab import procs
from ferry.lab.topology import LabPaths

SOURCE_DIR = Path(__file__).parent / "guest"
VIRTIO_MODULES = (
    "virtio/virtio_ring",
    "virtio/virtio",
    "virtio/virtio_pci_modern_dev",
    "virtio/virtio_pci_legacy_dev",
    "virtio/virtio_pci",
    "block/virtio_blk",
)
BUSYBOX_APPLETS = ("sh", "mount", "insmod", "cat", "echo", "sleep", "dd", "grep", "tr", "cut", "head", "sync")
BUSYBOX = Path("/bin/busybox")
BUILD_FORMAT = "1"  # bump when the image layout changes


@dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_version: str


# ---------------------------------------------------------------- kernel choice (pure)


def version_key(version: str) -> tuple[int, ...]:
    """``6.1.0-56-cloud-amd64`` -> (6, 1, 0, 56): numeric parts, for sorting."""
    return tuple(int(part) for part in re.findall(r"\d+", version))


def pick_cloud_kernel(vmlinuz_names: Iterable[str], module_versions: Iterable[str]) -> str:
    """The newest cloud kernel version that has both /boot/vmlinuz-VERSION and modules
    ("" when none does).

    >>> pick_cloud_kernel(["vmlinuz-6.1.0-9-cloud-amd64", "vmlinuz-6.1.0-56-cloud-amd64",
    ...                    "vmlinuz-6.1.0-60-amd64"],
    ...                   ["6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64"])
    '6.1.0-56-cloud-amd64'
    """
    with_modules = set(module_versions)
    versions = [n.removeprefix("vmlinuz-") for n in vmlinuz_names if n.startswith("vmlinuz-")]
    usable = [v for v in versions if "cloud" in v and v in with_modules]
    return max(usable, key=version_key, default="")


def find_cloud_kernel(boot: Path = Path("/boot"), modules: Path = Path("/lib/modules")) -> str:
    names = [p.name for p in boot.glob("vmlinuz-*")]
    versions = [p.name for p in modules.iterdir()] if modules.is_dir() else []
    version = pick_cloud_kernel(names, versions)
    if not version:
        raise FailedPrecondition(
            "no cloud kernel with modules found (/boot/vmlinuz-*cloud* + /lib/modules/VERSION)",
            reason="LAB_NO_GUEST_KERNEL",
            hint="install linux-image-cloud-amd64 (it is in deploy/lab/apt-packages.txt)",
        )
    return version


# ---------------------------------------------------------------- cpio newc (pure)


@dataclass(frozen=True)
class CpioEntry:
    name: str  # path inside the archive, no leading "/"
    mode: int  # full st_mode (type + permissions)
    data: bytes = b""  # file content, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """An initramfs archive in the "new ASCII" cpio format the kernel unpacks: each entry is a
    110-byte hex header, the NUL-terminated name and the data, both padded to 4 bytes.
    Deterministic (inode numbers in order, mtime 0), so the same inputs give the same bytes."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    def add(ino: int, entry: CpioEntry) -> None:
        name = entry.name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(name)
        pad()
        out.extend(entry.data)
        pad()

    ino = 0
    for ino, entry in enumerate(entries, start=1):
        add(ino, entry)
    add(ino + 1, CpioEntry("TRAILER!!!", 0))
    return bytes(out)


def _dir(name: str) -> CpioEntry:
    return CpioEntry(name, stat.S_IFDIR | 0o755)


def _file(name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
    return CpioEntry(name, stat.S_IFREG | perm, data)


def initramfs_entries(init: bytes, busybox: bytes, dirtier: bytes, modules: dict[str, bytes]) -> list[CpioEntry]:
    """The guest's root file system: /init, busybox and its applets, the dirtier, modules."""
    entries = [_dir(d) for d in ("bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules")]
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(_file("init", init, 0o755))
    entries.append(_file("bin/busybox", busybox, 0o755))
    entries += [CpioEntry(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in BUSYBOX_APPLETS]
    entries.append(_file("bin/dirtier", dirtier, 0o755))
    entries += [_file(f"lib/modules/{name}.ko", data) for name, data in sorted(modules.items())]
    return entries


# ---------------------------------------------------------------- build (side effects)


def build_guest(paths: LabPaths) -> GuestImage:
    """Build (or reuse) <lab>/guest/{vmlinuz,initrd.gz,dirtier}."""
    out = paths.guest
    out.mkdir(parents=True, exist_ok=True)
    version = find_cloud_kernel()
    kernel_src = Path("/boot") / f"vmlinuz-{version}"
    module_dir = Path("/lib/modules") / version / "kernel" / "drivers"
    init = (SOURCE_DIR / "init").read_bytes()
    dirtier_c = (SOURCE_DIR / "dirtier.c").read_bytes()
    if not BUSYBOX.exists():
        raise FailedPrecondition(
            "/bin/busybox is missing",
            reason="LAB_NO_BUSYBOX",
            hint="install busybox-static (deploy/lab/apt-packages.txt)",
        )
    busybox = BUSYBOX.read_bytes()

    key = hashlib.sha256()
    for part in (BUILD_FORMAT.encode(), init, dirtier_c, busybox, version.encode()):
        key.update(hashlib.sha256(part).digest())
    build_key = key.hexdigest()
    image = GuestImage(kernel=out / "vmlinuz", initrd=out / "initrd.gz", kernel_version=version)
    key_file = out / "build.key"
    if (
        key_file.exists()
        and key_file.read_text().strip() == build_key
        and image.kernel.exists()
        and image.initrd.exists()
    ):
        return image

    dirtier = out / "dirtier"
    procs.run(
        ["gcc", "-O2", "-static", "-o", str(dirtier), str(SOURCE_DIR / "dirtier.c")],
        timeout=120.0,
        reason="LAB_GUEST_BUILD_FAILED",
        hint="install gcc and libc6-dev (deploy/lab/apt-packages.txt)",
    )
    modules = {}
    for module in VIRTIO_MODULES:
        ko = module_dir / f"{module}.ko"
        if not ko.exists():
            raise FailedPrecondition(
                f"kernel module {ko} is missing", reason="LAB_NO_MODULE", hint="reinstall linux-image-cloud-amd64"
            )
        modules[module.rsplit("/", 1)[1]] = ko.read_bytes()
    archive = cpio_newc(initramfs_entries(init, busybox, dirtier.read_bytes(), modules))
    tmp = image.initrd.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(archive, compresslevel=1, mtime=0))
    tmp.replace(image.initrd)
    shutil.copyfile(kernel_src, image.kernel)
    key_file.write_text(build_key + "\n")
    return image
