"""Test guests: disks, define, start, wait for the first heartbeat (side effects; the XML and
console parsing are in domain.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferry.errors import AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument
from ferry.lab import procs
from ferry.lab.domain import NAME_RE as GUEST_NAME_RE
from ferry.lab.domain import (
    DiskSpec,
    GuestSpec,
    disk_targets,
    domain_xml,
    lab_emulator,
    last_heartbeat,
    parse_dirty_rate,
    parse_size,
)
from ferry.lab.topology import IMAGE_DIR

if TYPE_CHECKING:
    from ferry.lab.lab import Lab

log = logging.getLogger("ferry.lab")

BOOT_TIMEOUT_S = 90.0  # 8-10 s under TCG alone; more when other guests keep the CPUs busy

__all__ = ["BOOT_TIMEOUT_S", "GuestInfo", "create_guest", "last_heartbeat", "wait_for_heartbeat"]


@dataclass(frozen=True)
class GuestInfo:
    name: str
    host: str
    host_address: str
    disks: tuple[DiskSpec, ...]
    shared: bool
    bridge: str | None
    console_log: str
    xml_file: str
    boot_seconds: float  # start to first heartbeat

    def describe(self) -> str:
        where = "shared storage" if self.shared else f"{self.host}-local storage"
        disks = ", ".join(f"{d.target}={d.path}" for d in self.disks) or "no disks"
        nic = f"NIC on {self.bridge}" if self.bridge else "no NIC"
        return (
            f"guest {self.name} runs on {self.host} ({self.host_address}); first heartbeat "
            f"after {self.boot_seconds:.1f} s\n  disks ({where}): {disks}\n  {nic}; "
            f"console: {self.console_log}"
        )


def create_guest(
    lab: Lab,
    name: str,
    host: str,
    *,
    memory_mib: int = 256,
    disks: Sequence[str] = ("256M",),
    shared: bool = False,
    dirty_rate: str | None = None,
    dirty_mb: int = 64,
    nic: bool = True,
    bridge: str | None = None,
    timeout: float = BOOT_TIMEOUT_S,
    backing: str | None = None,
) -> GuestInfo:
    """Create qcow2 disks (vda, vdb, ...) host-local in /var/lib/libvirt/images of ``host``
    or, with ``shared``, in <lab>/shared; define (persistent) and start the guest; wait for
    its first heartbeat. No memory dirtier unless ``dirty_rate`` (MiB/s or "max"). The NIC is
    on the host's guest bridge, or on ``bridge`` (which must exist on ``host``). ``backing``: vda is
    a qcow2 overlay on that image (which must exist on ``host``), as a guest made from a template."""
    try:
        if not GUEST_NAME_RE.match(name):
            raise ValueError(f"guest name {name!r} must be letters, digits, '.', '_', '-'")
        sizes = [parse_size(d) for d in disks]
        targets = disk_targets(len(sizes))
        rate = parse_dirty_rate(dirty_rate) if dirty_rate is not None else None
        if memory_mib < 64 or (rate is not None and dirty_mb >= memory_mib - 32):
            raise ValueError(f"memory {memory_mib} MiB is too small (dirty_mb {dirty_mb})")
    except ValueError as exc:
        raise InvalidArgument(str(exc), reason="LAB_BAD_GUEST", hint="see ferry-lab guest --help") from None
    target_host = lab.host(host)
    for other in lab.hosts():
        if lab.virsh(other, "dominfo", name, check=False).returncode == 0:
            raise AlreadyExists(
                f"a guest named {name} is already defined on {other}",
                reason="LAB_GUEST_EXISTS",
                hint=f"pick another name or remove it: ferry-lab virsh {other} undefine {name}",
            )
    image = lab.guest_image()

    disk_specs = []
    for target, size in zip(targets, sizes, strict=False):
        if shared:
            path = str(lab.paths.shared / f"{name}-{target}.qcow2")
        else:
            path = f"{IMAGE_DIR}/{name}-{target}.qcow2"
        disk_specs.append(DiskSpec(target=target, path=path, size_bytes=size))
    for i, disk in enumerate(disk_specs):
        _create_disk(lab, host, disk, shared, backing if i == 0 else None)

    console = lab.paths.console_log(name)
    console.unlink(missing_ok=True)  # a new guest of this name starts a new log
    spec = GuestSpec(
        name=name,
        memory_mib=memory_mib,
        kernel=str(image.kernel),
        initrd=str(image.initrd),
        console_log=str(console),
        disks=tuple(disk_specs),
        bridge=(bridge or target_host.guest_bridge) if nic else None,
        dirty_rate=rate,
        dirty_mb=dirty_mb,
        emulator=lab_emulator(),
    )
    xml_file = lab.paths.shared / f"{name}.xml"
    xml_file.write_text(domain_xml(spec))
    lab.virsh(host, "define", str(xml_file))
    started = lab.clock.now()
    lab.virsh(host, "start", name)
    log.info("guest %s started on %s; waiting for its first heartbeat", name, host)
    _wait_first_heartbeat(lab, name, host, timeout)
    return GuestInfo(
        name=name,
        host=host,
        host_address=target_host.address,
        disks=tuple(disk_specs),
        shared=shared,
        bridge=spec.bridge,
        console_log=str(console),
        xml_file=str(xml_file),
        boot_seconds=lab.clock.now() - started,
    )


def _create_disk(lab: Lab, host: str, disk: DiskSpec, shared: bool, backing: str | None = None) -> None:
    over = ["-b", backing, "-F", "qcow2"] if backing else []
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", *over, disk.path, str(disk.size_bytes)]
    if shared:
        if (lab.paths.shared / disk.path.rsplit("/", 1)[1]).exists():
            raise AlreadyExists(
                f"disk {disk.path} already exists",
                reason="LAB_DISK_EXISTS",
                hint="remove it or pick another guest name",
            )
        procs.run(argv, reason="LAB_DISK_CREATE_FAILED")
        return
    if lab.host_exec(host, "test", "-e", disk.path, check=False).returncode == 0:
        raise AlreadyExists(
            f"disk {disk.path} already exists on {host}",
            reason="LAB_DISK_EXISTS",
            hint=f"remove it (ferry-lab exec {host} rm {disk.path}) or pick another guest name",
        )
    lab.host_exec(host, *argv)


def _is_active(lab: Lab, host: str, name: str) -> bool:
    listing = lab.virsh(host, "list", "--name", check=False)
    return name in listing.stdout.split()


def _wait_first_heartbeat(lab: Lab, name: str, host: str, timeout: float) -> None:
    console = lab.paths.console_log(name)
    deadline = lab.clock.now() + timeout
    next_state_check = lab.clock.now() + 2.0
    while True:
        text = console.read_text(errors="replace") if console.exists() else ""
        if last_heartbeat(text) > 0:
            return
        now = lab.clock.now()
        if now >= next_state_check:
            next_state_check = now + 2.0
            if not _is_active(lab, host, name):
                qemu_log = lab.paths.host(host) / "var.upper/log/libvirt/qemu" / f"{name}.log"
                raise FailedPrecondition(
                    f"guest {name} stopped before its first heartbeat: {procs.log_tail(qemu_log)}",
                    reason="LAB_GUEST_DIED",
                    hint=f"see {qemu_log} and {console}",
                )
        if now >= deadline:
            raise DeadlineExceeded(
                f"guest {name} printed no heartbeat within {timeout:.0f} s",
                reason="LAB_GUEST_BOOT_TIMEOUT",
                hint=f"see {console}; a busy machine boots TCG guests slowly",
            )
        lab.clock.sleep(0.2)


def wait_for_heartbeat(lab: Lab, name: str, *, above: int, timeout: float) -> int:
    """Wait until the heartbeat count exceeds ``above``; returns it."""
    count = 0

    def beyond() -> bool:
        nonlocal count
        count = lab.heartbeats(name)
        return count > above

    if not procs.wait_until(beyond, timeout, clock=lab.clock, interval=0.2):
        raise DeadlineExceeded(
            f"guest {name}: heartbeat stuck at {count} (waited for more than {above} for {timeout:.0f} s)",
            reason="LAB_NO_HEARTBEAT",
            hint=f"see {lab.paths.console_log(name)}",
        )
    return count
