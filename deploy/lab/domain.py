"""The lab guest as libvirt sees it, and what its console says (pure functions).

Worked example: ``domain_xml(GuestSpec(name="demo", memory_mib=256, ...))`` is a TCG
(``type='qemu'``) q35 domain with ACPI and a qemu64 CPU, direct kernel boot of the lab image, one
virtio qcow2 disk per DiskSpec (cache='none'), the serial console appended to
<lab>/shared/demo.console.log and, unless ``bridge`` is None, a virtio NIC on that bridge. Its
emulator is ``GuestSpec.emulator``: the lab uses Debian 13's QEMU when deploy/fetch-qemu.sh put
it in place (``lab_emulator``): Debian 12's QEMU 7.2 loses guest memory writes while migrating
a TCG guest (see that script). ACPI is on because QEMU 10 no longer takes libvirt 9's
``-no-acpi``.
"""

from __future__ import annotations

import os
import re
import string
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MACHINE = "pc-q35-7.2"  # QEMU 7.2's (Debian 12); QEMU 10 runs it too; every lab host runs the same QEMU
EMULATOR = "/usr/bin/qemu-system-x86_64"
# Debian 13's QEMU, put there by deploy/fetch-qemu.sh (the lab's default when present)
TRIXIE_EMULATOR = Path(__file__).resolve().parents[2] / ".cache" / "qemu-trixie" / "qemu-system-x86_64"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HEARTBEAT_RE = re.compile(r"^HEARTBEAT (\d+) uptime=", re.MULTILINE)
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT])(?:i?B)?$", re.IGNORECASE)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class DiskSpec:
    target: str  # vda, vdb, ...
    path: str  # as the host's QEMU sees it
    size_bytes: int


@dataclass(frozen=True)
class GuestSpec:
    name: str
    memory_mib: int
    kernel: str
    initrd: str
    console_log: str
    disks: tuple[DiskSpec, ...] = ()
    bridge: str | None = None  # None: no NIC
    dirty_rate: str | None = None  # MiB/s as text, "max", or None: no dirtier
    dirty_mb: int = 64
    vcpus: int = 1
    machine: str = MACHINE
    emulator: str = EMULATOR


def disk_targets(count: int) -> list[str]:
    """``vda``, ``vdb``, ... (up to 26 virtio disks).

    >>> disk_targets(3)
    ['vda', 'vdb', 'vdc']
    """
    if not 0 <= count <= 26:
        raise ValueError(f"a lab guest has 0 to 26 disks, not {count}")
    return [f"vd{letter}" for letter in string.ascii_lowercase[:count]]


def parse_size(text: str) -> int:
    """A disk size with a unit, in bytes: ``256M`` / ``256MiB`` -> 268435456, ``1G`` -> 2**30.

    A bare number is refused: qemu-img would read it as bytes, which is never what is meant.
    """
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise ValueError(f"disk size {text!r} needs a unit, e.g. 256M or 1G")
    size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if size < 1 << 20:
        raise ValueError(f"disk size {text!r} is below 1 MiB")
    return size


def parse_dirty_rate(text: str) -> str:
    """``max`` (flat out) or a positive MiB/s number, as the guest's kernel argument wants it."""
    if text == "max":
        return text
    try:
        rate = float(text)
    except ValueError:
        raise ValueError(f"dirty rate {text!r} is neither a MiB/s number nor 'max'") from None
    if rate <= 0:
        raise ValueError(f"dirty rate {text!r} must be above 0 (or 'max')")
    return f"{rate:g}"


def lab_emulator(environ: Mapping[str, str] = os.environ, trixie: Path = TRIXIE_EMULATOR) -> str:
    """The QEMU binary lab guests run on: ``$FERRY_LAB_QEMU`` (a path, or "system" for Debian
    12's), else Debian 13's from deploy/fetch-qemu.sh when it is there, else the system's.

    >>> lab_emulator({"FERRY_LAB_QEMU": "system"}), lab_emulator({}, Path("/nonexistent"))
    ('/usr/bin/qemu-system-x86_64', '/usr/bin/qemu-system-x86_64')
    """
    chosen = environ.get("FERRY_LAB_QEMU", "")
    if chosen == "system":
        return EMULATOR
    if chosen:
        return chosen
    return str(trixie) if os.access(trixie, os.X_OK) else EMULATOR


def kernel_cmdline(spec: GuestSpec) -> str:
    args = ["console=ttyS0", "quiet", "panic=-1"]
    if spec.dirty_rate is not None:
        args += [f"dirty_mb={spec.dirty_mb}", f"dirty_rate={spec.dirty_rate}"]
    return " ".join(args)


def domain_xml(spec: GuestSpec) -> str:
    domain = ET.Element("domain", type="qemu")  # TCG: KVM does not work on the lab machine
    ET.SubElement(domain, "name").text = spec.name
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.vcpus)
    os_el = ET.SubElement(domain, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine=spec.machine).text = "hvm"
    ET.SubElement(os_el, "kernel").text = spec.kernel
    ET.SubElement(os_el, "initrd").text = spec.initrd
    ET.SubElement(os_el, "cmdline").text = kernel_cmdline(spec)
    ET.SubElement(ET.SubElement(domain, "features"), "acpi")
    cpu = ET.SubElement(domain, "cpu", mode="custom", match="exact", check="none")
    ET.SubElement(cpu, "model", fallback="forbid").text = "qemu64"
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    ET.SubElement(devices, "emulator").text = spec.emulator
    for disk in spec.disks:
        disk_el = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk_el, "driver", name="qemu", type="qcow2", cache="none")
        ET.SubElement(disk_el, "source", file=disk.path)
        ET.SubElement(disk_el, "target", dev=disk.target, bus="virtio")
    if spec.bridge is not None:
        nic = ET.SubElement(devices, "interface", type="bridge")
        ET.SubElement(nic, "source", bridge=spec.bridge)
        ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="file")
    # append='on': the log continues (not truncated) when the guest resumes on another host
    ET.SubElement(serial, "source", path=spec.console_log, append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def last_heartbeat(console: str) -> int:
    """The count of the last ``HEARTBEAT n`` line on a guest console (0: none yet).

    >>> last_heartbeat("GUEST-BOOTED\\nHEARTBEAT 1 uptime=2.1\\nHEARTBEAT 2 uptime=3.1\\nHEART")
    2
    """
    counts = _HEARTBEAT_RE.findall(console)
    return int(counts[-1]) if counts else 0
