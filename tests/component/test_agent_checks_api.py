"""The agent's target checks, probe and source-disk removal over its gRPC API (fakes below).

What an operator would check: a dry run names a CPU the target cannot run and the memory it
lacks; the source says why it cannot reach a target; after a copy migration the source's images
are gone and the guest can come back; an aborted migration is reported cancelled, never
finishing; a completed copy reports the disk bytes it moved.
"""

from __future__ import annotations

import grpc
import pytest
from test_agent_api import IMAGES, SHARED, TO_HOST2, add_guest, migrate_request, prepare_target, rpc_error

from ferry import convert
from ferry.diskplan import plan_disks
from ferry.model import HostMapping, StorageMode
from ferry.rpc import from_rpc_error
from ferry.testing.fake_hypervisor import MiB, make_domain_xml
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import types_pb2 as tpb

GiB = 1 << 30
AVX512_GUEST = (
    "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>"
    "<feature policy='require' name='avx512f'/></cpu>"
)


async def dry_run(source, target, name: str, *, devices: str = "", offline: bool = False) -> list[tpb.ErrorDetail]:
    """The target's dry run for the guest as the source defines it, plus ``devices``."""
    got = await source.stub.GetDomain(apb.GetDomainRequest(name=name, include_xml=True))
    plans = plan_disks(convert.domain_from_pb(got.domain).disks, StorageMode.SHARED, (), HostMapping())
    resp = await target.stub.PrepareIncoming(
        apb.PrepareIncomingRequest(
            domain_xml=got.xml.replace("</devices>", f"{devices}</devices>"),
            disks=[convert.disk_plan_to_pb(p) for p in plans],
            mapping=TO_HOST2,
            storage=tpb.STORAGE_MODE_SHARED,
            dry_run=True,
            offline=offline,
        )
    )
    return list(resp.problems)


def shared_guest(agent, other, name: str, *, cpu: str = "", memory: int = 256 * MiB) -> str:
    """A running guest whose only disk is on shared storage (visible on both fake hosts)."""
    path = f"{SHARED}/{name}.raw"
    agent.host.files[path] = other.host.files[path] = 64 * MiB
    xml = make_domain_xml(name, memory_bytes=memory, disks=[("vda", path, "raw")], bridges=["br-guest"], cpu=cpu)
    return agent.hv.add_domain(xml).uuid


# ---------------------------------------------------------------- CPU and memory on the target


async def test_dry_run_names_the_cpu_features_the_target_lacks(agents):
    host1, host2 = agents
    shared_guest(host1, host2, "g1", cpu=AVX512_GUEST)
    [p] = await dry_run(host1, host2, "g1")
    assert p.reason == "CPU_INCOMPATIBLE"
    assert "avx512f" in p.message and "host2" in p.message
    assert "hypervisor-cpu-baseline" in p.hint
    host2.hv.cpu_features.add("avx512f")  # a host that has it
    assert await dry_run(host1, host2, "g1") == []


async def test_prepare_for_real_is_refused_for_the_cpu_and_creates_nothing(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    got = await host1.stub.GetDomain(apb.GetDomainRequest(name="g1", include_xml=True))
    xml = got.xml.replace("<devices>", AVX512_GUEST + "<devices>")
    plans = plan_disks(convert.domain_from_pb(got.domain).disks, StorageMode.COPY_ALL, (), HostMapping())
    exc = await rpc_error(
        host2.stub.PrepareIncoming(
            apb.PrepareIncomingRequest(
                domain_xml=xml,
                disks=[convert.disk_plan_to_pb(p) for p in plans],
                mapping=TO_HOST2,
                storage=tpb.STORAGE_MODE_COPY_ALL,
            )
        )
    )
    assert (exc.code(), from_rpc_error(exc).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CPU_INCOMPATIBLE")
    assert host2.host.created == [] and not host2.servicer.prepare.list()


async def test_dry_run_names_missing_memory_with_the_cpu(agents):
    host1, host2 = agents
    shared_guest(host1, host2, "big", cpu=AVX512_GUEST, memory=8 * GiB)
    host2.hv.memory_total_bytes = 4 * GiB
    problems = await dry_run(host1, host2, "big")
    assert [p.reason for p in problems] == ["CPU_INCOMPATIBLE", "INSUFFICIENT_MEMORY"]
    assert "8.0 GiB" in problems[1].message and "4.0 GiB available" in problems[1].message


async def test_an_offline_dry_run_checks_no_memory_nor_host_devices(agents):
    host1, host2 = agents
    shared_guest(host1, host2, "big", memory=8 * GiB)
    host2.hv.memory_total_bytes = 4 * GiB
    gpu = (
        "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
        "<address domain='0x0000' bus='0x65' slot='0x00' function='0x0'/></source></hostdev>"
    )
    live = await dry_run(host1, host2, "big", devices=gpu)
    assert [p.reason for p in live] == ["HOSTDEV_NOT_MIGRATABLE", "INSUFFICIENT_MEMORY"]
    assert "PCI device 0000:65:00.0" in live[0].message and "--offline" in live[0].hint
    assert await dry_run(host1, host2, "big", devices=gpu, offline=True) == []  # a shut-off definition moves


async def test_dry_run_names_a_macvtap_device_the_target_lacks(agents):
    host1, host2 = agents
    shared_guest(host1, host2, "g1")
    macvtap = "<interface type='direct'><source dev='{}' mode='bridge'/></interface>"
    assert await dry_run(host1, host2, "g1", devices=macvtap.format("eth0")) == []  # the fake host's uplink
    [p] = await dry_run(host1, host2, "g1", devices=macvtap.format("enp65s0f0"))
    assert p.reason == "NET_DEVICE_MISSING" and "enp65s0f0" in p.message and "host2" in p.message


# ---------------------------------------------------------------- ProbeTarget


async def test_probe_of_a_reachable_target(agents):
    host1, host2 = agents
    resp = await host1.stub.ProbeTarget(apb.ProbeTargetRequest(target_uri=host2.hv.uri, migration_address="10.77.0.12"))
    assert list(resp.problems) == []


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("qemu+tcp://no-such-host.invalid/system", "TARGET_UNRESOLVABLE"),
        ("qemu+tcp://10.77.0.99/system", "TARGET_UNREACHABLE"),
        ("nonsense", "TARGET_URI_INVALID"),
    ],
)
async def test_probe_names_why_a_target_cannot_be_reached(agents, uri, reason):
    host1, _ = agents
    resp = await host1.stub.ProbeTarget(apb.ProbeTargetRequest(target_uri=uri))
    [p] = resp.problems
    assert p.reason == reason and p.hint


async def test_probe_of_a_target_whose_libvirtd_is_down(agents):
    host1, host2 = agents
    host2.hv.reachable = False
    [p] = (await host1.stub.ProbeTarget(apb.ProbeTargetRequest(target_uri=host2.hv.uri))).problems
    assert p.reason == "TARGET_UNREACHABLE" and "refused" in p.message


async def test_probe_needs_a_uri(agents):
    host1, _ = agents
    exc = await rpc_error(host1.stub.ProbeTarget(apb.ProbeTargetRequest()))
    assert (exc.code(), from_rpc_error(exc).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD")


# ---------------------------------------------------------------- a copy migration, there and back


async def migrate(source, target, name: str) -> apb.MigrateResult:
    prep = await prepare_target(source, target, name)
    events = [e async for e in source.stub.Migrate(migrate_request(name, target, prep.destination_xml))]
    await target.stub.CommitIncoming(apb.CommitIncomingRequest(prepare_id=prep.prepare_id))
    return events[-1].result


async def test_source_disks_removed_after_a_copy_migration_and_the_guest_comes_back(agents):
    host1, host2 = agents
    uuid = add_guest(host1, "g1")
    local, shared = f"{IMAGES}/g1.qcow2", f"{SHARED}/g1-data.raw"
    host2.host.files[shared] = 64 * MiB
    exc = await rpc_error(
        host1.stub.RemoveSourceDisks(apb.RemoveSourceDisksRequest(domain_uuid=uuid, paths=[local], migration_id="m-1"))
    )
    assert (exc.code(), from_rpc_error(exc).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DOMAIN_STILL_HERE")
    await migrate(host1, host2, "g1")
    exc = await rpc_error(
        host1.stub.RemoveSourceDisks(
            apb.RemoveSourceDisksRequest(domain_uuid=uuid, paths=[local, shared], migration_id="m-1")
        )
    )
    assert (exc.code(), from_rpc_error(exc).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PATH_NOT_LOCAL")
    assert host1.host.exists(local) and host1.host.exists(shared)  # refused: nothing removed
    done = await host1.stub.RemoveSourceDisks(
        apb.RemoveSourceDisksRequest(domain_uuid=uuid, paths=[local], migration_id="m-1")
    )
    assert (list(done.removed), list(done.already_gone)) == ([local], [])
    assert not host1.host.exists(local) and host1.host.exists(shared)
    again = await host1.stub.RemoveSourceDisks(
        apb.RemoveSourceDisksRequest(domain_uuid=uuid, paths=[local], migration_id="m-1")
    )
    assert (list(again.removed), list(again.already_gone)) == ([], [local])
    # back to host1: its image is no longer in the way
    host1.hv.disk_sizes[local] = host2.hv.disk_sizes[local] = (GiB, 512 * MiB)
    back = await host2.stub.GetDomain(apb.GetDomainRequest(name="g1", include_xml=True))
    plans = plan_disks(convert.domain_from_pb(back.domain).disks, StorageMode.COPY_ALL, (), HostMapping())
    prep = await host1.stub.PrepareIncoming(
        apb.PrepareIncomingRequest(
            domain_xml=back.xml,
            disks=[convert.disk_plan_to_pb(p) for p in plans],
            mapping=tpb.HostMapping(bridges={"br-vm": "br-guest"}),
            storage=tpb.STORAGE_MODE_COPY_ALL,
        )
    )
    assert list(prep.created) == [local]


# ---------------------------------------------------------------- what the Migrate stream reports


async def test_an_aborted_migration_is_reported_cancelled_never_finishing(agents):
    host1, host2 = agents
    add_guest(host1, "g1", memory=2 * GiB, dirty=4 * GiB)  # never converges
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    phases, job_types = [], []
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for event in host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml)):
            phases.append(event.progress.phase)
            if event.progress.phase == tpb.MIGRATION_PHASE_PRECOPY and not job_types:
                host1.hv.hold()  # the job's end waits: libvirt's window
                assert (await host1.stub.AbortMigration(apb.AbortMigrationRequest(domain="g1"))).aborted
                job_types.append("aborting")
            elif event.progress.phase == tpb.MIGRATION_PHASE_CANCELLED:
                job_types.append((await host1.stub.GetJob(apb.GetJobRequest(domain="g1"))).job_type)
                host1.hv.release()
    assert from_rpc_error(exc.value).reason == "MIGRATION_ABORTED"
    assert tpb.MIGRATION_PHASE_FINISHING not in phases
    assert phases[-1] == tpb.MIGRATION_PHASE_CANCELLED and job_types == ["aborting", "cancelled"]


async def test_a_completed_copy_reports_the_disk_bytes_it_moved(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    result = await migrate(host1, host2, "g1")
    assert result.job.disk_processed >= 512 * MiB  # the target counted 0
    assert host2.hv.domains[next(iter(host2.hv.domains))].completed.disk_processed == 0
