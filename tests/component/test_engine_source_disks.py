"""The engine after a copy migration, and preflight's probe, CPU and machine type checks, over real
agent gRPC servers on fakes.

What an operator would check: after a copy migration the source keeps no image of the guest and
the guest can be migrated back; when the source's images cannot be removed the migration still
succeeds and its history says which files stay and why; preflight says when the source cannot
reach the target, when a host-passthrough guest would meet another CPU, and when the target's QEMU
lacks the guest's machine type.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_engine import COPY, SLOW, engine, final, read, submit, until, wait_for

from ferry.coordinator.phases import Phase
from ferry.coordinator.preflight import preflight
from ferry.coordinator.record import encode
from ferry.coordinator.slots import Limits
from ferry.keys import migration_key
from ferry.model import DomainState, MigrationOptions, StorageMode
from ferry.registry import HostRegistration
from ferry.store import Put
from ferry.testing.fake_hostsystem import FakeDir, FakeImage
from ferry.testing.fake_hypervisor import MiB, make_domain_xml
from ferry.testing.fleet import IMAGES, Fleet, FleetDirectory, start_fleet
from ferry.testing.memory_store import MemoryStore


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, 2)
    yield f
    await f.close()


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


@pytest.fixture
async def hosts(fleet: Fleet) -> FleetDirectory:
    return FleetDirectory(fleet)


def notes(r) -> list[str]:
    return [h.reason for h in r.history]


async def test_a_copy_migration_removes_the_source_disk_and_the_guest_can_come_back(store, fleet, hosts):
    fleet.add_guest("host1", "g1")
    image = f"{IMAGES}/g1.qcow2"
    async with engine(store, hosts):
        there = await final(store, (await submit(store, fleet, "g1", "host1", "host2")).id)
        assert there.phase is Phase.SUCCEEDED, notes(there)
        assert there.copied_disks == (image,)
        assert not fleet["host1"].host.exists(image) and fleet["host2"].host.exists(image)
        assert f"source disks removed on host1: {image}" in notes(there)
        back = await final(store, (await submit(store, fleet, "g1", "host2", "host1")).id)
    assert back.phase is Phase.SUCCEEDED, notes(back)  # no FILE_IN_THE_WAY on host1
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert fleet["host1"].host.exists(image) and not fleet["host2"].host.exists(image)


async def test_source_disks_that_stay_are_noted_and_the_migration_still_succeeds(store, fleet, hosts):
    fleet.add_guest("host1", "g1")
    keep = replace(COPY, undefine_source=False)  # the source keeps its definition
    async with engine(store, hosts):
        r = await final(store, (await submit(store, fleet, "g1", "host1", "host2", options=keep)).id)
    assert r.phase is Phase.SUCCEEDED and r.error is None
    [left] = [n for n in notes(r) if n.startswith("SOURCE_DISKS_LEFT")]
    assert f"{IMAGES}/g1.qcow2 on host1" in left and "DOMAIN_STILL_HERE" in left
    assert fleet["host1"].host.exists(f"{IMAGES}/g1.qcow2")  # its definition still names it


@pytest.mark.parametrize("down", ["libvirtd", "agent"])
async def test_a_source_down_when_its_disks_are_removed_is_waited_for_and_they_go(store, fleet, hosts, down):
    """Found by the fault campaign: the source's libvirtd (or agent) down for seconds right after
    the target committed left the copied image on the source (the record ended Succeeded with
    SOURCE_DISKS_LEFT) and a migration back was refused FILE_IN_THE_WAY."""
    uuid = fleet.add_guest("host1", "g1")
    image = f"{IMAGES}/g1.qcow2"
    fleet["host1"].hv.hold()
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts, timeouts=SLOW):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        await until(lambda: uuid in fleet["host1"].hv.jobs)
        committing = fleet["host2"].hv.hold_calls("find_domain")  # the commit checks the guest landed
        before = fleet["host2"].hv.calls.count("find_domain")  # the prepare's
        fleet["host1"].hv.release()
        await until(lambda: fleet["host2"].hv.calls.count("find_domain") > before)
        if down == "libvirtd":
            fleet["host1"].hv.reachable = False
        else:
            await fleet["host1"].stop()  # killed; its lease still says available
        committing.set()
        waiting = await wait_for(store, m.id, lambda r: r.committed_at is not None and r.lost_host == "host1")
        await asyncio.sleep(0.3)  # probes fail meanwhile
        assert (await read(store, m.id)).phase is Phase.FINISHING and fleet["host1"].host.exists(image)
        if down == "libvirtd":
            fleet["host1"].hv.reachable = True
        else:
            await fleet["host1"].start()
        there = await final(store, m.id, timeout=3)
        assert there.phase is Phase.SUCCEEDED and there.error is None, notes(there)
        assert not any(n.startswith("SOURCE_DISKS_LEFT") for n in notes(there)), notes(there)
        assert f"source disks removed on host1: {image}" in notes(there)
        assert "target committed; the copied disks on host1 are removed once it answers" in notes(waiting)
        assert not fleet["host1"].host.exists(image) and fleet.where("g1") == {"host2": DomainState.RUNNING}
        back = await final(store, (await submit(store, fleet, "g1", "host2", "host1")).id)
    assert back.phase is Phase.SUCCEEDED, notes(back)  # no FILE_IN_THE_WAY on host1
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}


async def test_a_record_waiting_for_its_source_after_the_commit_frees_its_slots(store, tmp_path):
    """The guest runs on the target and no job runs for the record any more: while it waits for
    its source's copied disks (up to ``agent_lost_s``), the target takes its next migration; it
    held the target's only inbound slot until then."""
    fleet = await start_fleet(tmp_path, 3)
    try:
        hosts = FleetDirectory(fleet)
        fleet.add_guest("host1", "g1")
        fleet.add_guest("host3", "g3")
        image = f"{IMAGES}/g1.qcow2"
        one_in = Limits(per_host_inbound=1)
        async with engine(store, hosts, limits=one_in, timeouts=SLOW):
            fleet["host1"].hv.hold()
            m = await submit(store, fleet, "g1", "host1", "host2")
            await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
            committing = fleet["host2"].hv.hold_calls("find_domain")
            before = fleet["host2"].hv.calls.count("find_domain")
            fleet["host1"].hv.release()
            await until(lambda: fleet["host2"].hv.calls.count("find_domain") > before)
            fleet["host1"].hv.reachable = False  # its libvirtd down as the copies are to go
            committing.set()
            await wait_for(store, m.id, lambda r: r.committed_at is not None)
            other = await final(store, (await submit(store, fleet, "g3", "host3", "host2")).id)
            assert other.phase is Phase.SUCCEEDED, notes(other)
            assert (await read(store, m.id)).phase is Phase.FINISHING and fleet["host1"].host.exists(image)
            fleet["host1"].hv.reachable = True
            there = await final(store, m.id, timeout=3)
        assert there.phase is Phase.SUCCEEDED and not fleet["host1"].host.exists(image), notes(there)
    finally:
        await fleet.close()


async def test_a_shared_storage_migration_removes_nothing(store, fleet, hosts):
    fleet.add_guest("host1", "g1", local_disk=False)
    async with engine(store, hosts):
        r = await final(store, (await submit(store, fleet, "g1", "host1", "host2", options=MigrationOptions())).id)
    assert r.phase is Phase.SUCCEEDED and r.copied_disks == ()
    assert not [n for n in notes(r) if "source disks" in n.lower()]
    # nothing but the preflight's shared-storage probe, which is gone from the shared storage too
    assert [p.rsplit("/", 1)[1][:13] for p in fleet["host1"].host.removed] == [".ferry-probe-"]
    assert [f for f in fleet.fakes.shared_files if ".ferry-probe-" in f] == []


# ---------------------------------------------------------------- preflight: the source probes the target


class Advertising(FleetDirectory):
    """A directory whose hosts advertise the libvirt URI a test chooses (a bad name, a dead IP)."""

    def __init__(self, fleet: Fleet, uris: dict[str, str]) -> None:
        super().__init__(fleet)
        self.uris = uris

    def registration(self, host: str) -> HostRegistration | None:
        reg = super().registration(host)
        return replace(reg, libvirt_uri=self.uris[host]) if reg is not None and host in self.uris else reg


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("qemu+tcp://no-such-host.invalid/system", "TARGET_UNRESOLVABLE"),
        ("qemu+tcp://10.77.0.99/system", "TARGET_UNREACHABLE"),
    ],
)
async def test_preflight_says_when_the_source_cannot_reach_the_target(fleet, uri, reason):
    fleet.add_guest("host1", "g1")
    directory = Advertising(fleet, {"host2": uri})
    report = await preflight(directory, "g1", "host2", MigrationOptions(), fleet.mapping("host1", "host2"))
    assert [b.reason for b in report.blockers] == [reason]
    assert report.unavailable == () and "probe_peer" in fleet["host1"].hv.calls
    [b] = report.blockers
    assert "host1" in b.hint  # where to fix it, from where


async def test_preflight_of_a_reachable_target_probes_it_and_finds_nothing(fleet, hosts):
    fleet.add_guest("host1", "g1")
    report = await preflight(hosts, "g1", "host2", MigrationOptions(), fleet.mapping("host1", "host2"))
    assert report.ok, report.blockers
    assert "probe_peer" in fleet["host1"].hv.calls


async def test_preflight_blocks_a_host_passthrough_guest_on_another_cpu(fleet, hosts):
    path = "/srv/shared/pt.raw"
    for a in fleet.agents.values():
        a.host.files[path] = 64 * MiB
    fleet["host1"].hv.add_domain(
        make_domain_xml(
            "pt", disks=[("vda", path, "raw")], bridges=["br-guest"], cpu="<cpu mode='host-passthrough' check='none'/>"
        )
    )
    mapping = fleet.mapping("host1", "host2")
    assert (await preflight(hosts, "pt", "host2", MigrationOptions(), mapping)).ok  # identical fake hosts
    fleet["host2"].hv.cpu_features -= {"avx2", "fma"}
    report = await preflight(hosts, "pt", "host2", MigrationOptions(), mapping)
    [b] = report.blockers
    assert b.reason == "CPU_INCOMPATIBLE" and "host2 lacks avx2, fma" in b.message


async def test_preflight_blocks_a_guest_whose_machine_type_the_targets_qemu_lacks(fleet, hosts):
    """A pc-q35-8.2 guest cannot run on QEMU 8.0 (each release brings its own machine type), even
    host-passthrough, whose CPU the target agent does not compare; QEMU 7.2 -> 10.0 is fine."""
    path = "/srv/shared/mt.raw"
    for a in fleet.agents.values():
        a.host.files[path] = 64 * MiB
    xml = make_domain_xml(
        "mt", disks=[("vda", path, "raw")], bridges=["br-guest"], cpu="<cpu mode='host-passthrough' check='none'/>"
    )
    fleet["host1"].hv.add_domain(xml.replace("<type arch='x86_64'>", "<type arch='x86_64' machine='pc-q35-8.2'>"))
    q35 = [f"pc-q35-{major}.{minor}" for major in (7, 8, 9) for minor in range(3)] + ["pc-q35-10.0"]
    src, dst = fleet["host1"].hv, fleet["host2"].hv
    src.qemu_version, src.machine_types = 8_002_000, tuple(q35[: q35.index("pc-q35-8.2") + 1])
    dst.qemu_version, dst.machine_types = 8_000_000, tuple(q35[: q35.index("pc-q35-8.0") + 1])
    mapping = fleet.mapping("host1", "host2")
    report = await preflight(hosts, "mt", "host2", MigrationOptions(), mapping)
    [b] = report.blockers
    assert b.reason == "MACHINE_TYPE_MISSING" and "pc-q35-8.2" in b.message and "QEMU is 8.2 or newer" in b.hint
    dst.qemu_version, dst.machine_types = 10_000_000, tuple(q35)  # a newer QEMU keeps it
    assert (await preflight(hosts, "mt", "host2", MigrationOptions(), mapping)).ok


async def test_an_agent_without_the_call_is_too_old_not_broken():
    from ferry.coordinator.agent_client import AGENT_TOO_OLD, GrpcAgentClient
    from ferry.errors import FailedPrecondition
    from ferry.rpc import create_server
    from ferry.v1 import agent_pb2_grpc as agrpc

    def register(server):
        agrpc.add_AgentServicer_to_server(agrpc.AgentServicer(), server)  # answers UNIMPLEMENTED to all
        return ["ferry.v1.Agent"]

    server, [port] = create_server(["127.0.0.1:0"], register)
    await server.start()
    client = GrpcAgentClient("old", f"127.0.0.1:{port}", timeout_s=5)
    try:
        with pytest.raises(FailedPrecondition) as exc:
            await client.probe_target("qemu+tcp://10.77.0.12/system")
        assert exc.value.reason == AGENT_TOO_OLD and "ProbeTarget" in exc.value.message
        assert "upgrade ferry-agent on old" in exc.value.hint
    finally:
        await client.close()
        await server.stop(None)


# ---------------------------------------------------------------- preflight: shared storage is the same file


def probes_left(fleet: Fleet) -> list[str]:
    places = [fleet.fakes.shared_files, *(a.host.files for a in fleet.agents.values())]
    return [p for files in places for p in files if ".ferry-probe-" in p]


async def test_a_shared_disk_the_target_sees_elsewhere_is_refused_and_nothing_moves(store, fleet, hosts):
    """host2's shared storage is not mounted: a local file stands at the shared disk's path (as an
    operator pre-creates one). By path alone it passes; the source's probe shows it is another file."""
    fleet.add_guest("host1", "g1")  # vda local (copied), vdb on the shared storage
    fleet["host2"].host.shared_files = None  # host2's /srv/shared: a local directory of its own
    assert fleet["host2"].host.exists("/srv/shared/g1-data.raw")  # the stand-in
    report = await preflight(hosts, "g1", "host2", MigrationOptions(), fleet.mapping("host1", "host2"))
    [b] = report.blockers
    assert b.reason == "SHARED_STORAGE_MISMATCH" and "disk vdb: /srv/shared/g1-data.raw on host2" in b.message
    assert "mount the shared storage at /srv/shared on host2" in b.hint
    assert probes_left(fleet) == []
    async with engine(store, hosts):
        r = await final(store, (await submit(store, fleet, "g1", "host1", "host2")).id)
    assert r.phase is Phase.FAILED and r.error is not None and r.error.reason == "SHARED_STORAGE_MISMATCH"
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert fleet["host2"].host.created == [] and fleet.prepares("host2") == [] and probes_left(fleet) == []
    fleet["host2"].host.shared_files = fleet.fakes.shared_files  # mounted again
    assert (await preflight(hosts, "g1", "host2", MigrationOptions(), fleet.mapping("host1", "host2"))).ok


async def test_a_shared_disk_the_source_cannot_probe_needs_the_operators_word(fleet, hosts):
    """The disk's directory is outside what the source agent may write: the check cannot be made.
    That blocks, with the fixes, unless the migration is marked unsafe."""
    fleet.add_guest("host1", "g1")
    fleet["host1"].host.storage = [IMAGES]  # /srv/shared not among host1's agent's directories
    mapping = fleet.mapping("host1", "host2")
    report = await preflight(hosts, "g1", "host2", MigrationOptions(), mapping)
    [b] = report.blockers
    assert b.reason == "SHARED_STORAGE_UNVERIFIED" and b.message.startswith(
        "host1 cannot check that host2 sees the same storage as it does: no probe written in /srv/shared"
    )
    assert "shared_dirs of host1's agent config" in b.hint and "--unsafe" in b.hint
    assert (await preflight(hosts, "g1", "host2", MigrationOptions(unsafe=True), mapping)).ok


async def test_a_disk_copied_from_outside_the_image_directories_stays_and_the_others_go(store, fleet, hosts):
    """vdb was copied from /srv/vm (not one of host1's agent's directories) into the target's image
    directory with a path mapping: host1's agent never removes it, but g2's vda still goes."""
    fleet["host1"].host.dirs["/srv/vm"] = FakeDir(1 << 30, 1 << 30)  # a directory, not in storage
    fleet["host1"].host.files["/srv/vm/g2-vdb.qcow2"] = 64 * MiB
    fleet["host1"].host.create_image(f"{IMAGES}/g2.qcow2", fmt="qcow2", virtual_size=64 * MiB)
    fleet["host1"].hv.add_domain(
        make_domain_xml(
            "g2",
            disks=[("vda", f"{IMAGES}/g2.qcow2", "qcow2"), ("vdb", "/srv/vm/g2-vdb.qcow2", "qcow2")],
            bridges=["br-guest"],
        )
    )
    record = await submit(store, fleet, "g2", "host1", "host2")
    mapping = replace(record.mapping, path_prefixes={"/srv/vm": IMAGES})
    await store.commit([Put(migration_key(record.id), encode(replace(record, mapping=mapping)), record.revision)])
    async with engine(store, hosts):
        r = await final(store, record.id)
    assert r.phase is Phase.SUCCEEDED, notes(r)
    assert set(r.copied_disks) == {f"{IMAGES}/g2.qcow2", "/srv/vm/g2-vdb.qcow2"}
    [note] = [n for n in notes(r) if "source disks" in n]
    assert note == (
        f"source disks removed on host1: {IMAGES}/g2.qcow2; left: /srv/vm/g2-vdb.qcow2 (not in a local image "
        "directory of host1: remove by hand once the guest is known to run on host2 only)"
    )
    assert not fleet["host1"].host.exists(f"{IMAGES}/g2.qcow2") and fleet["host1"].host.exists("/srv/vm/g2-vdb.qcow2")


# ---------------------------------------------------------------- preflight: a copy-inc base is the same image


def copy_inc_guest(fleet: Fleet) -> tuple[str, str]:
    """A guest "ci" on host1 whose qcow2 top layer lies on a base image every host has: (base, top)."""
    base, top = f"{IMAGES}/base.qcow2", f"{IMAGES}/ci.qcow2"
    for a in fleet.agents.values():
        a.host.files[base] = FakeImage("qcow2", 1 << 30)
    fleet["host1"].host.create_image(top, fmt="qcow2", virtual_size=1 << 30, backing_file=base, backing_format="qcow2")
    chain = f"<backingStore type='file'><format type='qcow2'/><source file='{base}'/><backingStore/></backingStore>"
    xml = make_domain_xml("ci", disks=[("vda", top, "qcow2")], bridges=["br-guest"])
    fleet["host1"].hv.add_domain(xml.replace(f"<source file='{top}'/>", f"<source file='{top}'/>{chain}"))
    return base, top


async def test_a_copy_inc_base_image_that_is_another_image_on_the_target_is_refused(store, fleet, hosts):
    """--copy-storage-inc copies the top layer only: the target's base under the same name must be
    the same bytes. Another image there (a newer template) would be read under the copied layer."""
    base, _ = copy_inc_guest(fleet)
    inc, mapping = MigrationOptions(storage=StorageMode.COPY_INC), fleet.mapping("host1", "host2")
    report = await preflight(hosts, "ci", "host2", inc, mapping, storage=StorageMode.COPY_INC)
    assert report.ok, report.blockers
    [plan] = report.disks
    assert plan.backing_file == base and plan.backing_fingerprint.startswith("fake:")
    fleet["host2"].host.fingerprints[base] = "fake:a-newer-template"
    report = await preflight(hosts, "ci", "host2", inc, mapping, storage=StorageMode.COPY_INC)
    [b] = report.blockers
    assert b.reason == "BACKING_MISMATCH" and f"{base} on host2 is another image than the source's" in b.message
    async with engine(store, hosts):
        r = await final(store, (await submit(store, fleet, "ci", "host1", "host2", options=inc)).id)
    assert r.phase is Phase.FAILED and r.error is not None and r.error.reason == "BACKING_MISMATCH"
    assert fleet.where("ci") == {"host1": DomainState.RUNNING}
    assert fleet["host2"].host.created == [] and fleet.prepares("host2") == []


# ---------------------------------------------------------------- preflight: a block device is the same device


@pytest.mark.parametrize(
    ("source", "target", "unsafe", "reasons"),
    [
        ("dm:mpath-3600a0980", "dm:mpath-3600a0980", False, []),  # one multipath LUN seen by both hosts
        ("dm:LVM-vg0host1lv", None, False, ["BLOCK_DEVICE_MISSING"]),  # a local LV, nothing on host2
        ("dm:LVM-vg0host1lv", "dm:LVM-vg0host2lv", False, ["BLOCK_DEVICE_MISMATCH"]),  # same name, other LV
        ("", "", False, ["BLOCK_DEVICE_UNVERIFIED"]),  # host1 cannot tell what the device is
        ("", "", True, []),  # ... and the operator vouches for it
    ],
)
async def test_a_block_device_the_guest_keeps_must_be_the_same_device_on_the_target(
    fleet, hosts, source, target, unsafe, reasons
):
    lun = "/dev/mapper/data-lun"
    fleet["host1"].host.block_devices[lun] = source
    if target is not None:
        fleet["host2"].host.block_devices[lun] = target
    disk = (
        f"<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/><source dev='{lun}'/>"
        "<target dev='vdc' bus='virtio'/></disk></devices>"
    )
    fleet.add_guest("host1", "g1")
    dom = next(iter(fleet["host1"].hv.domains.values()))
    dom.xml = dom.xml.replace("</devices>", disk)
    options = MigrationOptions(unsafe=unsafe)
    report = await preflight(hosts, "g1", "host2", options, fleet.mapping("host1", "host2"))
    assert [b.reason for b in report.blockers] == reasons, report.blockers
    assert all(lun in b.message and b.hint for b in report.blockers)


# ---------------------------------------------------------- preflight: agents of an older Ferry (a rolling upgrade)


async def test_an_old_target_agent_is_not_trusted_with_the_shared_storage_check(store, fleet, hosts):
    """Mid-upgrade, host2 still runs an agent of API level 0: it ignores the probes it is sent, so
    its dry run would pass a stand-in for the shared disk. The check is refused as unverified,
    naming the agent to upgrade; nothing is written on either host."""
    fleet.add_guest("host1", "g1")
    fleet["host2"].host.shared_files = None  # host2's shared storage not mounted: a stand-in there
    fleet["host2"].servicer.inventory.api_level = 0
    mapping = fleet.mapping("host1", "host2")
    report = await preflight(hosts, "g1", "host2", MigrationOptions(), mapping)
    [b] = report.blockers
    assert b.reason == "SHARED_STORAGE_UNVERIFIED"
    assert b.message.startswith("host1 cannot check that host2 sees the same storage as it does for /srv/shared/g1-")
    assert "host2's agent (ferry-agent " in b.message and "API level 0) does not look for the probe files" in b.message
    assert b.hint.startswith("upgrade ferry-agent on host2 (the check needs API level 1 on both hosts)")
    assert probes_left(fleet) == []
    async with engine(store, hosts):
        r = await final(store, (await submit(store, fleet, "g1", "host1", "host2")).id)
    assert r.phase is Phase.FAILED and r.error is not None and r.error.reason == "SHARED_STORAGE_UNVERIFIED"
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert fleet["host2"].host.created == [] and fleet.prepares("host2") == [] and probes_left(fleet) == []
    fleet["host2"].servicer.inventory.api_level = 1  # upgraded: the probe shows the stand-in
    [b] = (await preflight(hosts, "g1", "host2", MigrationOptions(), mapping)).blockers
    assert b.reason == "SHARED_STORAGE_MISMATCH"


async def test_an_old_source_agent_writes_no_probe_and_the_operator_may_vouch(fleet, hosts):
    fleet.add_guest("host1", "g1")
    fleet["host1"].servicer.inventory.api_level = 0
    mapping = fleet.mapping("host1", "host2")
    [b] = (await preflight(hosts, "g1", "host2", MigrationOptions(), mapping)).blockers
    assert b.reason == "SHARED_STORAGE_UNVERIFIED" and "host1's agent (" in b.message
    assert "API level 0) does not write the probe files that show it" in b.message
    assert (await preflight(hosts, "g1", "host2", MigrationOptions(unsafe=True), mapping)).ok


@pytest.mark.parametrize("old", ["host1", "host2"])
async def test_a_copy_inc_with_an_old_agent_cannot_show_the_base_is_the_same(fleet, hosts, old):
    base, _ = copy_inc_guest(fleet)
    fleet[old].servicer.inventory.api_level = 0
    inc, mapping = MigrationOptions(storage=StorageMode.COPY_INC), fleet.mapping("host1", "host2")
    [b] = (await preflight(hosts, "ci", "host2", inc, mapping, storage=StorageMode.COPY_INC)).blockers
    doing = "does not fingerprint" if old == "host1" else "does not compare"
    assert b.reason == "BACKING_UNVERIFIED" and b.message.startswith(
        f"host2's backing files {base} cannot be shown to be the source's: {old}'s agent ("
    )
    assert f"API level 0) {doing} backing files" in b.message and "--copy-storage-all" in b.hint
    assert b.hint.startswith(f"upgrade ferry-agent on {old} (the check needs API level 1 on both hosts)")
    unsafe = replace(inc, unsafe=True)
    assert (await preflight(hosts, "ci", "host2", unsafe, mapping, storage=StorageMode.COPY_INC)).ok
