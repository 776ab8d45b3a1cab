"""Open vSwitch bridges: what LocalHostSystem finds (a made-up sysfs tree and a stand-in ovs-vsctl),
the NIC's <virtualport>, and the target check of a bridge's kind."""

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ferry.agent.hostsystem import LocalHostSystem
from ferry.agent.inventory import Inventory
from ferry.agent.prepare import PrepareService
from ferry.agent.target_checks import TargetSnapshot, check_target
from ferry.coordinator.submission import check_overrides
from ferry.errors import FailedPrecondition
from ferry.model import LINUX_BRIDGE, OVS_BRIDGE, HostFacts, HostMapping, JobStats, Nic, StorageMode
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeHypervisor

LX, OVS = LINUX_BRIDGE, OVS_BRIDGE
UUID = "0d6f7c4e-5a3b-4c8e-9f1a-2b3c4d5e6f70"
# what ovs-vsctl prints when ovsdb-server does not run
NO_DB = "ovs-vsctl: unix:/var/run/openvswitch/db.sock: database connection failed (No such file or directory)"


def sysfs(root: Path, devices: dict[str, str]) -> str:
    """/sys/class/net with each device: "bridge" (a Linux bridge: a bridge/ directory) or "dev"."""
    for name, kind in devices.items():
        (root / "sys" / "class" / "net" / name).mkdir(parents=True)
        if kind == "bridge":
            (root / "sys" / "class" / "net" / name / "bridge").mkdir()
    return str(root / "sys")


def ovs_vsctl(root: Path, answer: str | list[str]) -> str:
    """A stand-in for ovs-vsctl that records its arguments: "missing" (not installed), "fails"
    (no database), or the bridges ``list-br`` prints."""
    script = root / "ovs-vsctl"
    if answer == "missing":
        return str(script)
    if answer == "fails":
        body = f"echo '{NO_DB}' >&2; exit 1"
    else:
        body = "printf '" + "".join(f"{b}\\n" for b in answer) + "'"
    script.write_text(f'#!/bin/sh\necho "$@" >> {root}/calls\n{body}\n')
    script.chmod(0o755)
    return str(script)


def calls(root: Path) -> list[str]:
    return (root / "calls").read_text().splitlines() if (root / "calls").exists() else []


KERNEL_OVS = {"br-vm": "bridge", "eth0": "dev", "ovs-system": "dev", "br-ovs": "dev", "vlan10": "dev"}


@pytest.mark.parametrize(
    ("devices", "answer", "declared", "expected"),
    [
        # no OVS datapath device: only Linux bridges, ovs-vsctl is not asked
        ({"br-vm": "bridge", "eth0": "dev"}, ["br-ovs"], (), {"br-vm": LX}),
        ({"br-vm": "bridge", "br-ovs": "dev"}, "missing", ("br-ovs", "br-vm"), {"br-vm": LX}),
        # the kernel datapath: ovs-vsctl's bridges that are network devices (vlan10: an internal
        # port, not a bridge; br-gone: configured, no device)
        (KERNEL_OVS, ["br-ovs", "br-gone"], (), {"br-ovs": OVS, "br-vm": LX}),
        (KERNEL_OVS, ["br-ovs"], ("br-ovs", "vlan10"), {"br-ovs": OVS}),  # it answers: the declared vlan10 is no bridge
        (KERNEL_OVS, ["br-vm"], (), {"br-vm": LX}),  # a Linux bridge by sysfs stays one
        (KERNEL_OVS, ["ovs-system"], (), {"br-vm": LX}),  # the datapath's own device is no bridge
        (KERNEL_OVS, [], (), {"br-vm": LX}),
        # the userspace (netdev) datapath
        ({"ovs-netdev": "dev", "br-dpdk": "dev"}, ["br-dpdk"], (), {"br-dpdk": OVS}),
        # ovs-vsctl cannot be asked: the declared bridges that are devices but not Linux bridges
        (KERNEL_OVS, "missing", ("br-ovs", "br-vm", "br-gone"), {"br-ovs": OVS, "br-vm": LX}),
        (KERNEL_OVS, "fails", ("br-ovs",), {"br-ovs": OVS}),
        (KERNEL_OVS, "missing", (), {"br-vm": LX}),  # nothing declared: none guessed
        (KERNEL_OVS, "fails", (), {"br-vm": LX}),
    ],
)
def test_bridge_kinds(tmp_path, devices, answer, declared, expected):
    host = LocalHostSystem(
        [], sysfs_root=sysfs(tmp_path, devices), bridges=declared, ovs_vsctl=ovs_vsctl(tmp_path, answer)
    )
    assert host.bridge_kinds() == expected
    assert host.bridges() == list(expected)  # the inventory's bridges: both kinds, sorted


def test_ovs_vsctl_is_asked_with_a_timeout_and_only_with_a_datapath(tmp_path):
    host = LocalHostSystem([], sysfs_root=sysfs(tmp_path, {"br-vm": "bridge"}), ovs_vsctl=ovs_vsctl(tmp_path, []))
    host.bridges()
    assert calls(tmp_path) == []
    (tmp_path / "sys" / "class" / "net" / "ovs-system").mkdir()
    host.bridges()
    assert calls(tmp_path) == ["--timeout=2 list-br"]  # without one it waits for its database forever


def test_ovs_vsctl_failing_is_logged_once(tmp_path, caplog):
    host = LocalHostSystem([], sysfs_root=sysfs(tmp_path, KERNEL_OVS), ovs_vsctl=ovs_vsctl(tmp_path, "fails"))
    with caplog.at_level(logging.WARNING, logger="ferry.agent.hostsystem"):
        host.bridges()
        host.bridges()
    [record] = caplog.records
    assert NO_DB in record.getMessage() and "declared bridges" in record.getMessage()


def test_no_sysfs_no_bridges(tmp_path):
    assert LocalHostSystem([], sysfs_root=str(tmp_path / "nowhere")).bridge_kinds() == {}


# ------------------------------------------------------------------------- the NIC's kind


@pytest.mark.parametrize(
    ("nic", "kind"),
    [
        (Nic("bridge", "br0"), LX),
        (Nic("bridge", "br0", virtualport="openvswitch"), OVS),
        (Nic("bridge", "br0", virtualport="midonet"), ""),  # not attached to a bridge of either kind
        (Nic("bridge", "br0", virtualport="none"), ""),  # a <virtualport> without a type
        (Nic("network", "default"), ""),  # the network decides
        (Nic("network", "ovs-net", virtualport="openvswitch"), ""),
        (Nic("direct", "eth0"), ""),
    ],
)
def test_the_kind_of_bridge_a_nic_needs(nic, kind):
    assert nic.bridge_kind == kind


# ------------------------------------------------------------------------- the target check


def domain(*nics: tuple[str, str]) -> str:
    """A domain with a bridge NIC per (bridge, virtualport type) ("" = no <virtualport>)."""
    xml = "".join(
        f"<interface type='bridge'><mac address='52:54:00:00:00:0{i}'/><source bridge='{bridge}'/>"
        + (f"<virtualport type='{port}'><parameters interfaceid='1a2b'/></virtualport>" if port else "")
        + "<model type='virtio'/></interface>"
        for i, (bridge, port) in enumerate(nics)
    )
    return (
        f"<domain type='kvm'><name>g1</name><uuid>{UUID}</uuid><memory unit='MiB'>256</memory>"
        f"<devices>{xml}</devices></domain>"
    )


BOTH = {"br0": LX, "br-ovs": OVS}


@pytest.mark.parametrize(
    ("nics", "mapping", "kinds", "expected"),
    [
        ([("br-ovs", "openvswitch")], {}, BOTH, []),
        ([("br0", "")], {}, BOTH, []),
        ([("br-ovs", "openvswitch"), ("br0", "")], {}, BOTH, []),
        ([("br-ovs", "openvswitch")], {}, {}, []),  # kinds not known: the name is enough
        ([("br-x", "midonet")], {"br-x": "br0"}, BOTH, []),  # not compared
        (
            [("br-ovs", "")],
            {},
            BOTH,
            [
                (
                    "BRIDGE_TYPE_MISMATCH",
                    "bridge br-ovs on host2 is an Open vSwitch bridge; "
                    "a NIC without a <virtualport> needs a Linux bridge",
                    "host2 has Linux bridges br0; map it: --map-bridge br-ovs=br0",
                )
            ],
        ),
        (
            [("br-guest", "openvswitch"), ("br-guest", "openvswitch")],  # once for both NICs
            {"br-guest": "br0"},
            BOTH,
            [
                (
                    "BRIDGE_TYPE_MISMATCH",
                    "bridge br0 (mapped from br-guest) on host2 is a Linux bridge; "
                    "a NIC with <virtualport type='openvswitch'> needs an Open vSwitch bridge",
                    "host2 has Open vSwitch bridges br-ovs; map it: --map-bridge br-guest=br-ovs",
                )
            ],
        ),
        (
            [("br0", "openvswitch")],
            {},
            {"br0": LX},
            [
                (
                    "BRIDGE_TYPE_MISMATCH",
                    "bridge br0 on host2 is a Linux bridge; a NIC with <virtualport type='openvswitch'> needs an "
                    "Open vSwitch bridge",
                    "host2 has no Open vSwitch bridge: pick another target, or add one there (--map-bridge br0=NAME)",
                )
            ],
        ),
        (  # missing is missing, whatever the kind, and said once
            [("br-gone", "openvswitch"), ("br-gone", "")],
            {},
            BOTH,
            [
                (
                    "BRIDGE_MISSING",
                    "bridge br-gone does not exist on host2",
                    "host2 has bridges br-ovs, br0; map it: --map-bridge br-gone=br-ovs",
                )
            ],
        ),
    ],
)
def test_bridge_check(nics, mapping, kinds, expected):
    snap = TargetSnapshot(host_name="host2", bridges=tuple(sorted(kinds) or ("br-ovs", "br0")), bridge_kinds=kinds)
    found = check_target(domain(*nics), [], HostMapping(bridges=mapping), StorageMode.SHARED, snap)
    assert [(p.reason, p.message, p.hint) for p in found] == expected
    assert all(p.kind is FailedPrecondition for p in found)


def test_a_target_with_the_same_ovs_bridge_takes_the_guest(tmp_path):
    """The regression: an OVS bridge has no bridge/ directory in sysfs, so every target said
    BRIDGE_MISSING, even one with that bridge declared in the agent's ``bridges``."""
    root = sysfs(tmp_path, {"br-ovs": "dev", "ovs-system": "dev", "eth0": "dev"})
    host = LocalHostSystem([], sysfs_root=root, bridges=["br-ovs"], ovs_vsctl=ovs_vsctl(tmp_path, "missing"))
    snap = TargetSnapshot(host_name="host2", bridges=tuple(host.bridges()), bridge_kinds=host.bridge_kinds())
    assert check_target(domain(("br-ovs", "openvswitch")), [], HostMapping(), StorageMode.SHARED, snap) == []
    [p] = check_target(domain(("br-ovs", "")), [], HostMapping(), StorageMode.SHARED, snap)
    assert p.reason == "BRIDGE_TYPE_MISMATCH"


# ------------------------------------------------------------------------- PrepareIncoming


class Hypervisor:
    """What PrepareService asks libvirt for a guest without a <cpu>."""

    async def find_domain(self, *, name="", uuid=""):
        return None

    async def job_stats(self, name_or_uuid, *, completed=False):
        return JobStats()

    async def host_facts(self):
        return HostFacts(hostname="host2", host_uuid="h2", memory_free_bytes=8 << 30)


async def test_prepare_checks_the_bridges_kinds(tmp_path):
    host = FakeHostSystem(bridges=["br0"], ovs_bridges=["br-ovs"])
    svc = PrepareService(
        Hypervisor(),
        host,
        tmp_path,
        default_ttl_s=60,
        clock=lambda: datetime(2026, 11, 25, tzinfo=UTC),
        host_name="host2",
    )

    async def dry_run(xml, mapping=None):
        out = await svc.prepare(xml, [], mapping or HostMapping(), StorageMode.SHARED, 0, "m-1", True)
        return [p.reason for p in out.problems]

    assert host.bridges() == ["br-ovs", "br0"]
    assert await dry_run(domain(("br-ovs", "openvswitch"), ("br0", ""))) == []
    assert await dry_run(domain(("br-ovs", ""))) == ["BRIDGE_TYPE_MISMATCH"]
    assert await dry_run(domain(("br-src", "openvswitch")), HostMapping(bridges={"br-src": "br0"})) == [
        "BRIDGE_TYPE_MISMATCH"
    ]


# ------------------------------------------------------------------------- inventory and submit


async def test_the_inventory_reports_ovs_bridges_and_a_mapping_may_name_one():
    host = FakeHostSystem(bridges=["br0"], ovs_bridges=["br-ovs"])
    facts = await Inventory(FakeHypervisor(hostname="h2"), host, libvirt_uri="", migration_address="").facts()
    assert facts.bridges == ("br-ovs", "br0")  # `ferry hosts` BRIDGES, placement, submit
    check_overrides(HostMapping(bridges={"br-guest": "br-ovs"}), "h2", facts)  # not BRIDGE_MISSING
