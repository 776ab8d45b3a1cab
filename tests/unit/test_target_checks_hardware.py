"""The target checks of what libvirt would refuse or fail on only mid-migration, after the prepare
made its images: host devices passed through, a macvtap NIC's device, CPU and NUMA pinning; what
an offline migration needs (no memory); an emulator named without a <cpu>; the space a
--copy-storage-all copy of a backing chain fills."""

import pytest
from test_target_checks import EMULATOR, UUID, CpuHypervisor, domain, dry_run, service  # beside this file

from ferry.agent.target_checks import (
    PathFacts,
    TargetSnapshot,
    check_target,
    cpu_list,
    guest_devices,
    parse_cpu_list,
    resolve_plans,
)
from ferry.diskplan import plan_disks
from ferry.errors import FailedPrecondition, ResourceExhausted
from ferry.model import Disk, DiskPlan, HostMapping, StorageMode
from ferry.testing.fake_hostsystem import FakeHostSystem

MiB, GiB = 1 << 20, 1 << 30
PCI = (
    "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
    "<address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source></hostdev>"
)
USB = "<hostdev mode='subsystem' type='usb'><source><vendor id='0x0781'/><product id='0x5567'/></source></hostdev>"
VF = "<interface type='hostdev' managed='yes'><source><address type='pci' domain='0x0000' bus='0x3b' slot='0x10' function='0x2'/></source>{}</interface>"  # noqa: E501
MACVTAP = "<interface type='direct'><mac address='52:54:00:00:00:01'/><source dev='{}' mode='bridge'/></interface>"


def guest(devices: str = "", extra: str = "", memory_mib: int = 256) -> str:
    """A guest with these devices and these elements before <devices> (pinning)."""
    return (
        f"<domain type='kvm'><name>g1</name><uuid>{UUID}</uuid><memory unit='MiB'>{memory_mib}</memory>"
        f"<vcpu placement='static'>2</vcpu>{extra}<devices>{devices}</devices></domain>"
    )


def host(**facts) -> TargetSnapshot:
    """A target with eth0 and br0, CPUs 0-3 and NUMA node 0 unless told otherwise."""
    base = dict(net_devices=("br0", "eth0", "lo"), cpus=frozenset(range(4)), numa_nodes=frozenset({0}))
    return TargetSnapshot("host2", **(base | facts))


def reasons(xml: str, snap: TargetSnapshot | None = None, *, offline: bool = False) -> list[str]:
    found = check_target(xml, [], HostMapping(), StorageMode.SHARED, snap or host(), offline=offline)
    assert all(p.kind is FailedPrecondition for p in found if p.reason != "INSUFFICIENT_MEMORY")
    return [p.reason for p in found]


# ---------------------------------------------------------------- CPU lists


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("0", {0}),
        ("0-3", {0, 1, 2, 3}),
        ("0-3,^1", {0, 2, 3}),
        ("0-1, 8-9", {0, 1, 8, 9}),  # libvirt tolerates spaces
        ("1,^1", set()),
        ("16383", {16383}),  # the highest CPU libvirt takes
    ],
)
def test_parse_cpu_list(text, ids):
    assert parse_cpu_list(text) == frozenset(ids)


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-1", "0x1", "16384", "0-99999999999", "1,,2"])
def test_parse_cpu_list_refuses_anything_else(text):
    with pytest.raises(ValueError):
        parse_cpu_list(text)


@pytest.mark.parametrize(
    ("ids", "text"), [((), "none"), ((3,), "3"), ((0, 1, 2, 3, 8, 10, 11), "0-3,8,10-11"), (range(16, 32), "16-31")]
)
def test_cpu_list(ids, text):
    assert cpu_list(ids) == text
    assert text == "none" or parse_cpu_list(text) == frozenset(ids)


# ---------------------------------------------------------------- host devices


@pytest.mark.parametrize(
    ("devices", "words"),
    [
        (PCI, ["PCI device 0000:03:00.1"]),
        (USB, []),  # libvirt looks a USB device up again on the target
        (VF.format(""), ["SR-IOV interface on PCI device 0000:3b:10.2"]),
        (VF.format("<teaming type='transient' persistent='ua-net0'/>"), []),  # libvirt unplugs it for the move
        (
            "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source>"
            "<address uuid='c2177883-f1bb-47f0-914d-32a22e3a8804'/></source></hostdev>",
            ["mediated device c2177883-f1bb-47f0-914d-32a22e3a8804"],
        ),
        (
            "<hostdev mode='subsystem' type='scsi'><source><adapter name='scsi_host0'/>"
            "<address bus='0' target='0' unit='0'/></source></hostdev>",
            ["SCSI device scsi_host0"],
        ),
        (
            "<hostdev mode='capabilities' type='storage'><source><block>/dev/sdf1</block></source></hostdev>",
            ["host storage device /dev/sdf1"],
        ),
        (PCI + USB + PCI.replace("0x1'", "0x0'"), ["PCI device 0000:03:00.1", "PCI device 0000:03:00.0"]),
    ],
)
def test_host_devices_libvirt_does_not_migrate_live(devices, words):
    assert list(guest_devices(guest(devices)).host_devices) == words
    assert reasons(guest(devices)) == (["HOSTDEV_NOT_MIGRATABLE"] if words else [])


def test_a_host_device_is_refused_with_every_device_named_and_the_ways_out():
    [p] = check_target(guest(PCI + VF.format("")), [], HostMapping(), StorageMode.SHARED, host())
    assert p.reason == "HOSTDEV_NOT_MIGRATABLE" and p.kind is FailedPrecondition
    assert "PCI device 0000:03:00.1, SR-IOV interface on PCI device 0000:3b:10.2" in p.message
    assert "virsh detach-device g1" in p.hint and "--offline" in p.hint


def test_an_offline_migration_moves_a_host_devices_definition():
    assert reasons(guest(PCI), offline=True) == []


# ---------------------------------------------------------------- macvtap


@pytest.mark.parametrize(
    ("devices", "net_devices", "expected"),
    [
        (MACVTAP.format("eth0"), ("eth0",), []),
        (MACVTAP.format("enp65s0f0"), ("eth0", "lo"), ["NET_DEVICE_MISSING"]),
        (MACVTAP.format("enp65s0f0") * 2, ("eth0",), ["NET_DEVICE_MISSING"]),  # one problem per device
        (MACVTAP.format("eth1") + MACVTAP.format("eth2"), (), ["NET_DEVICE_MISSING", "NET_DEVICE_MISSING"]),
        ("<interface type='direct'><source mode='bridge'/></interface>", (), []),  # names none: libvirt refuses it
        ("<interface type='user'/>", (), []),
    ],
)
def test_a_macvtap_nic_needs_its_network_device_on_the_target(devices, net_devices, expected):
    assert reasons(guest(devices), host(net_devices=net_devices)) == expected


def test_a_missing_macvtap_device_says_that_ferry_does_not_map_it():
    [p] = check_target(guest(MACVTAP.format("enp65s0f0")), [], HostMapping(), StorageMode.SHARED, host())
    assert p.message == (
        "macvtap NIC 52:54:00:00:00:01 (<interface type='direct'>) is attached to the network device enp65s0f0, "
        "which does not exist on host2"
    )
    assert "does not map a macvtap's device" in p.hint and "--map-network" in p.hint
    assert p.hint.endswith("host2 has network devices br0, eth0, lo")


# ---------------------------------------------------------------- pinning

STRICT_NODE_1 = "<numatune><memory mode='strict' nodeset='1'/></numatune>"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", []),
        ("<cputune><vcpupin vcpu='0' cpuset='2'/><emulatorpin cpuset='0-1'/></cputune>", []),
        ("<cputune><vcpupin vcpu='1' cpuset='6'/></cputune>", ["PINNED_CPUS_MISSING"]),
        ("<cputune><emulatorpin cpuset='3-4'/></cputune>", ["PINNED_CPUS_MISSING"]),
        ("<cputune><iothreadpin iothread='1' cpuset='9'/></cputune>", ["PINNED_CPUS_MISSING"]),
        ("<numatune><memory mode='strict' nodeset='0'/></numatune>", []),
        (STRICT_NODE_1, ["NUMA_NODES_MISSING"]),
        ("<numatune><memory mode='strict' placement='auto'/></numatune>", []),  # numad chooses
        ("<numatune><memnode cellid='0' mode='strict' nodeset='0-1'/></numatune>", ["NUMA_NODES_MISSING"]),
        (
            "<cputune><vcpupin vcpu='0' cpuset='16'/></cputune>" + STRICT_NODE_1,
            ["PINNED_CPUS_MISSING", "NUMA_NODES_MISSING"],
        ),
    ],
)
def test_the_cpus_and_numa_nodes_a_guest_is_pinned_to_must_exist_on_the_target(extra, expected):
    assert reasons(guest(extra=extra)) == expected


@pytest.mark.parametrize(
    ("vcpu", "expected"),
    [
        ("<vcpu placement='static' cpuset='0-3'>2</vcpu>", []),
        ("<vcpu placement='static' cpuset='2-5,^4,^5'>2</vcpu>", []),  # what is left out is not needed
        ("<vcpu placement='static' cpuset='16-31'>2</vcpu>", ["PINNED_CPUS_MISSING"]),
        ("<vcpu placement='auto' cpuset='16-31'>2</vcpu>", []),  # libvirt ignores the cpuset then
        ("<vcpu cpuset='not-a-list'>2</vcpu>", []),  # not what libvirt took: not checked
    ],
)
def test_vcpu_cpuset(vcpu, expected):
    xml = guest().replace("<vcpu placement='static'>2</vcpu>", vcpu)
    assert reasons(xml) == expected


def test_pinning_is_not_checked_where_the_target_cannot_tell():
    xml = guest(extra="<cputune><vcpupin vcpu='0' cpuset='16'/></cputune>" + STRICT_NODE_1)
    assert reasons(xml, host(cpus=None, numa_nodes=None)) == []


def test_a_pinning_problem_names_the_cpus_where_they_are_pinned_and_what_the_target_has():
    xml = guest(extra="<cputune><vcpupin vcpu='1' cpuset='6-7'/><emulatorpin cpuset='3,8'/></cputune>" + STRICT_NODE_1)
    cpus, nodes = check_target(xml, [], HostMapping(), StorageMode.SHARED, host())
    assert cpus.message == (
        "g1 is pinned to host CPUs 6-8 (<vcpupin vcpu='1'>, <emulatorpin>), which host2 does not have (its CPUs: 0-3)"
    )
    assert "virsh vcpupin" in cpus.hint and "pick a target with CPUs 6-8" in cpus.hint
    assert nodes.message == (
        "the memory of g1 is bound to host NUMA nodes 1 (<numatune><memory nodeset>), which host2 does not have "
        "(its nodes: 0)"
    )
    assert "virsh numatune g1" in nodes.hint


async def test_prepare_asks_this_host_for_its_devices_cpus_and_nodes(tmp_path):
    machine = FakeHostSystem(files={EMULATOR: 1})
    machine.nics, machine.cpus, machine.nodes = ["enp65s0f0"], frozenset(range(32)), frozenset({0, 1})
    pinned = "<vcpu placement='static' cpuset='16-31'>2</vcpu>" + STRICT_NODE_1
    xml = domain().replace("<devices>", f"{pinned}<devices>{MACVTAP.format('enp65s0f0')}")
    assert await dry_run(service(CpuHypervisor(), tmp_path, machine), xml) == []
    machine.nics, machine.cpus, machine.nodes = ["eth0"], frozenset(range(4)), frozenset({0})
    found = [r for r, _ in await dry_run(service(CpuHypervisor(), tmp_path, machine), xml)]
    assert found == ["PINNED_CPUS_MISSING", "NUMA_NODES_MISSING", "NET_DEVICE_MISSING"]
    machine.cpus = machine.nodes = frozenset()  # this host cannot tell: only the device is checked
    found = [r for r, _ in await dry_run(service(CpuHypervisor(), tmp_path, machine), xml)]
    assert found == ["NET_DEVICE_MISSING"]


# ---------------------------------------------------------------- offline: no memory


@pytest.mark.parametrize(("offline", "expected"), [(False, ["INSUFFICIENT_MEMORY"]), (True, [])])
def test_an_offline_migration_needs_no_memory_on_the_target(offline, expected):
    snap = host(memory_available_bytes=GiB)
    assert reasons(guest(memory_mib=32 * 1024), snap, offline=offline) == expected


async def test_prepare_checks_no_memory_for_an_offline_migration(tmp_path):
    svc = service(CpuHypervisor(memory=128 * MiB), tmp_path)
    live = await svc.prepare(domain(), [], HostMapping(), StorageMode.SHARED, 0, "m-1", True)
    offline = await svc.prepare(domain(), [], HostMapping(), StorageMode.SHARED, 0, "m-1", True, offline=True)
    assert [p.reason for p in live.problems] == ["INSUFFICIENT_MEMORY"] and offline.problems == ()


# ---------------------------------------------------------------- the emulator, with or without <cpu>


@pytest.mark.parametrize("cpu", ["", "<cpu mode='host-passthrough'/>"], ids=["no-cpu-element", "host-passthrough"])
def test_a_missing_emulator_is_reported_with_or_without_a_cpu_element(cpu):
    assert reasons(domain(cpu), host(emulator_present=False)) == ["EMULATOR_MISSING"]


async def test_prepare_looks_for_the_emulator_of_a_guest_without_a_cpu_element(tmp_path):
    found = await dry_run(service(CpuHypervisor(), tmp_path, FakeHostSystem()), domain())
    assert [r for r, _ in found] == ["EMULATOR_MISSING"] and EMULATOR in found[0][1]
    assert await dry_run(service(CpuHypervisor(), tmp_path, FakeHostSystem(files={EMULATOR: 1})), domain()) == []


# ---------------------------------------------------------------- space of a flattened chain

IMG = "/var/lib/libvirt/images"
OVERLAY_XML = (
    f"<domain type='kvm'><name>g1</name><uuid>{UUID}</uuid><memory unit='MiB'>256</memory><devices>"
    f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{IMG}/g1.qcow2'/>"
    f"<backingStore type='file'><format type='qcow2'/><source file='{IMG}/golden.qcow2'/><backingStore/>"
    "</backingStore><target dev='vda' bus='virtio'/></disk></devices></domain>"
)
FLAT_XML = OVERLAY_XML.replace(
    f"<backingStore type='file'><format type='qcow2'/><source file='{IMG}/golden.qcow2'/><backingStore/>"
    "</backingStore>",
    "",
)
# a 40 GiB disk whose top layer holds 2 MiB (what libvirt's block statistics report)
OVERLAY = Disk("vda", f"{IMG}/g1.qcow2", "qcow2", virtual_size=40 * GiB, allocation=2 * MiB,
               backing_chain=(f"{IMG}/golden.qcow2",))  # fmt: skip


@pytest.mark.parametrize(
    ("xml", "storage", "need"),
    [
        (OVERLAY_XML, StorageMode.COPY_ALL, 40 * GiB),  # the chain flattened into one image: up to its size
        (OVERLAY_XML, StorageMode.COPY_INC, 2 * MiB),  # the top layer, over the base kept here
        (FLAT_XML, StorageMode.COPY_ALL, 2 * MiB),  # no chain: the allocation is what is copied
    ],
)
def test_the_space_a_copy_needs(xml, storage, need):
    disk = OVERLAY if xml == OVERLAY_XML else Disk("vda", f"{IMG}/g1.qcow2", "qcow2", 40 * GiB, 2 * MiB)
    plans = resolve_plans(xml, plan_disks([disk], storage, (), HostMapping()), storage, HostMapping())
    paths = {
        f"{IMG}/g1.qcow2": PathFacts(exists=False, free_bytes=10 * GiB, fs_key=IMG),
        f"{IMG}/golden.qcow2": PathFacts(exists=True, fs_key=IMG),
    }
    found = check_target(xml, plans, HostMapping(), storage, TargetSnapshot("host2", paths=paths))
    assert [(p.reason, p.kind) for p in found] == (
        [("INSUFFICIENT_SPACE", ResourceExhausted)] if need > 10 * GiB else []
    )


def test_a_plan_with_the_top_layers_allocation_still_counts_the_flattened_chain():
    """A caller (an older coordinator) that sends the top layer's allocation for a copy-all disk."""
    plan = DiskPlan("vda", f"{IMG}/g1.qcow2", format="qcow2", virtual_size=40 * GiB, allocation=2 * MiB)
    [resolved] = resolve_plans(OVERLAY_XML, [plan], StorageMode.COPY_ALL, HostMapping())
    assert (resolved.allocation, resolved.backing_file) == (0, "")
    snap = TargetSnapshot("host2", paths={f"{IMG}/g1.qcow2": PathFacts(exists=False, free_bytes=10 * GiB)})
    [p] = check_target(OVERLAY_XML, [resolved], HostMapping(), StorageMode.COPY_ALL, snap)
    assert p.reason == "INSUFFICIENT_SPACE" and "need 40.0 GiB" in p.message
