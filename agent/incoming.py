"""The target's own check of an incoming migration's domain XML, as libvirt's qemu hook.

PrepareIncoming checks the XML the coordinator sends it and returns the destination XML; but the
XML libvirt starts the incoming guest with is what the *source* agent is given by the coordinator,
and passes to libvirt. A coordinator that lies (a compromised one, a forged certificate) could send
the source a destination XML whose disk is ``/etc/shadow`` or ``/dev/sda``: the storage copy would
then write the guest's disk over that host file. Only the target can refuse it, and libvirt gives it
the place: its qemu hook, run with ``GUEST migrate begin -`` and the incoming XML on stdin at the
start of every incoming migration, which fails the migration when the hook exits non-zero
(libvirt's hooks documentation, "QEMU guest migration"; ``/etc/libvirt/hooks/qemu.d/`` since 6.5).

``ferry-agent-hook`` is that hook (``deploy/libvirt/ferry-qemu-hook`` installs it as
``/etc/libvirt/hooks/qemu.d/ferry``): every disk of the incoming XML -- file sources and their
backing chains -- must lie below the agent's ``image_dirs`` or ``shared_dirs`` (the agent's own
confinement rules: ``HostSystem.confine``), and a ``type='block'`` disk must be a block device
there. It prints nothing on stdout (libvirt then keeps the XML as it is), a line per problem on
stderr (libvirt puts it in the migration's error), and exits 1 when there is one; every other
hook operation is left alone (exit 0). It reads only the agent's config and the host's paths:
a hook must not call libvirt (its daemon waits for the hook).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from ferry.errors import FerryError
from ferry.model import Problem
from ferry.paths import PathUse
from ferry.ports import HostSystem

DEFAULT_CONFIG = "/etc/ferry/agent.toml"


@dataclass(frozen=True)
class DiskPath:
    """A host path a disk of the domain opens: its file (or a file of its backing chain), or a
    block device."""

    target: str  # the disk's target dev, "vda"
    path: str
    block: bool = False


def disk_paths(xml: str) -> list[DiskPath]:
    """Every host path the domain's disks open: file sources, the files of their backing chains,
    block devices. Network disks (rbd, iscsi...) and empty drives open none.

    >>> x = ("<domain><devices><disk type='file'><source file='/img/top.qcow2'/><target dev='vda'/>"
    ...      "<backingStore type='file'><source file='/img/base.raw'/></backingStore></disk>"
    ...      "<disk type='block'><source dev='/dev/vg/lv'/><target dev='vdb'/></disk>"
    ...      "<disk type='network'><source protocol='rbd' name='p/i'/><target dev='vdc'/></disk>"
    ...      "<disk type='file' device='cdrom'><target dev='sda'/></disk></devices></domain>")
    >>> [(d.target, d.path, d.block) for d in disk_paths(x)]
    [('vda', '/img/top.qcow2', False), ('vda', '/img/base.raw', False), ('vdb', '/dev/vg/lv', True)]
    """
    out: list[DiskPath] = []
    for disk in ET.fromstring(xml).iterfind("devices/disk"):
        target_el = disk.find("target")
        target = target_el.get("dev", "") if target_el is not None else ""
        store: ET.Element | None = disk
        while store is not None:  # the disk, then its <backingStore> chain
            kind, source = store.get("type", "file"), store.find("source")
            if source is not None and kind == "file" and source.get("file"):
                out.append(DiskPath(target, source.get("file", "")))
            elif source is not None and kind == "block" and source.get("dev"):
                out.append(DiskPath(target, source.get("dev", ""), block=True))
            store = store.find("backingStore")
    return out


def incoming_problems(xml: str, host: HostSystem) -> list[Problem]:
    """Why this host refuses to start the incoming guest of ``xml`` (empty: it does not).

    >>> from ferry.testing.fake_hostsystem import FakeHostSystem
    >>> host = FakeHostSystem(dirs={"/img": 1 << 30})
    >>> ok = ("<domain><devices><disk type='file'><source file='/img/g1.qcow2'/><target dev='vda'/></disk>"
    ...       "</devices></domain>")
    >>> incoming_problems(ok, host)
    []
    >>> [p.reason for p in incoming_problems(ok.replace("/img/g1.qcow2", "/etc/shadow"), host)]
    ['PATH_OUTSIDE_IMAGE_DIRS']
    """
    try:
        paths = disk_paths(xml)
    except ET.ParseError as exc:
        return [Problem("INVALID_XML", f"the incoming domain XML does not parse: {exc}", "")]
    problems: list[Problem] = []
    for d in paths:
        if d.block:
            if not host.is_block_device(d.path):
                problems.append(
                    Problem(
                        "BLOCK_DEVICE_MISMATCH",
                        f"disk {d.target} is the block device {d.path}, which is not a block device here",
                        "a migration's destination XML must name this host's own devices (PrepareIncoming's)",
                    )
                )
            continue
        refused = host.confine(d.path, PathUse.READ, "disk")
        if refused is not None:
            problems.append(refused)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """libvirt's qemu hook: ``ferry-agent-hook [--config agent.toml] GUEST OPERATION SUBOPERATION EXTRA``."""
    parser = argparse.ArgumentParser(
        prog="ferry-agent-hook",
        description="libvirt qemu hook: refuse an incoming migration whose disks lie outside the agent's "
        "image directories (install as /etc/libvirt/hooks/qemu.d/ferry)",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"the agent's config (default {DEFAULT_CONFIG})")
    parser.add_argument("guest")
    parser.add_argument("operation")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args(argv)
    if args.operation != "migrate":
        return 0
    xml = sys.stdin.read()
    try:
        from ferry.agent.config import load_config
        from ferry.agent.hostsystem import LocalHostSystem

        config = load_config(args.config)
        host = LocalHostSystem(config.image_dirs, config.shared_dirs, bridges=config.bridges)
        problems = incoming_problems(xml, host)
    except FerryError as exc:  # no config to judge by: refuse (a hook that cannot judge lets nothing in)
        problems = [Problem.of(exc)]
    for p in problems:
        print(f"ferry refused the incoming migration of {args.guest}: {p.reason}: {p.message}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
