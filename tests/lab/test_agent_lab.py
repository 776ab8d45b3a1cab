"""The agents the lab runs inside its hosts, driven over gRPC as the coordinator drives them:
inventory, prepare on the target, live migration with disk copy and progress, abort.

What an operator would check: the guest keeps beating on the target, it lands on the target's
bridge, nothing is left on the source, and an aborted migration leaves the guest where it was
and the prepared disk can be cleaned up.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ferry import convert
from ferry.diskplan import plan_disks
from ferry.model import HostMapping, StorageMode
from ferry.rpc import create_channel, from_rpc_error
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import types_pb2 as tpb

pytestmark = pytest.mark.lab

TO_HOST2 = tpb.HostMapping(bridges={"br-guest": "br-vm"})


@pytest.fixture
async def stubs(lab):
    channels = [create_channel(lab.agent_address(h), tls=lab.client_tls()) for h in ("host1", "host2")]
    yield [agrpc.AgentStub(c) for c in channels]
    for c in channels:
        await c.close()


@pytest.fixture
def guests(lab):
    names: list[str] = []
    yield names
    for name in names:
        for host in ("host1", "host2"):
            lab.virsh(host, "destroy", name, check=False)
            lab.virsh(host, "undefine", name, check=False)


async def prepare(src, dst, name: str) -> apb.PrepareIncomingResponse:
    got = await src.GetDomain(apb.GetDomainRequest(name=name, include_xml=True), timeout=30)
    plans = plan_disks(convert.domain_from_pb(got.domain).disks, StorageMode.COPY_ALL, (), HostMapping())
    return await dst.PrepareIncoming(
        apb.PrepareIncomingRequest(
            domain_xml=got.xml,
            disks=[convert.disk_plan_to_pb(p) for p in plans],
            mapping=TO_HOST2,
            storage=tpb.STORAGE_MODE_COPY_ALL,
            migration_id="lab-1",
        ),
        timeout=60,
    )


async def test_inventory_of_a_real_host(lab, stubs):
    inv = await stubs[0].GetInventory(apb.GetInventoryRequest(), timeout=30)
    h = inv.host
    assert h.hostname == "host1" and h.host_uuid == lab.host("host1").host_uuid
    assert h.libvirt_uri == lab.tcp_uri("host1") and h.migration_address == lab.host_ip("host1")
    assert "br-guest" in h.bridges
    assert {(s.path, s.shared) for s in h.storage} >= {
        ("/var/lib/libvirt/images", False),
        (str(lab.paths.shared), True),
    }
    assert h.libvirt_version >= 9_000_000 and h.qemu_version >= 7_000_000


async def test_live_migration_with_disk_copy(lab, stubs, guests):
    src, dst = stubs
    name = "la-move"
    guests.append(name)
    await asyncio.to_thread(lab.guest, name, "host1", dirty_rate="20")
    await asyncio.to_thread(lab.wait_for_heartbeat, name, above=5, timeout=60)  # 1 MiB written to vda
    prep = await prepare(src, dst, name)
    beats = lab.heartbeats(name)
    events = [
        e
        async for e in src.Migrate(
            apb.MigrateRequest(
                domain=name,
                target_uri=lab.tcp_uri("host2"),
                destination_xml=prep.destination_xml,
                migration_id="lab-1",
                progress_interval_ms=200,
                options=tpb.MigrationOptions(storage=tpb.STORAGE_MODE_COPY_ALL, max_downtime_ms=300),
            ),
            timeout=300,
        )
    ]
    result = events[-1].result
    assert events[-1].HasField("result")
    assert result.job.time_elapsed_ms > 0 and result.job.memory_processed > 0
    # the target does not count disk bytes and a short copy may end between two polls: the source
    # reports at least the disk total it saw, else the bytes planned for the copy -- never 0
    assert result.job.disk_processed >= 1 << 20
    assert result.source_state == tpb.DOMAIN_STATE_UNSPECIFIED and not result.source_defined
    phases = [e.progress.phase for e in events[:-1] if e.HasField("progress")]
    assert phases == sorted(phases)
    await dst.CommitIncoming(apb.CommitIncomingRequest(prepare_id=prep.prepare_id), timeout=30)
    moved = await dst.GetDomain(apb.GetDomainRequest(name=name), timeout=30)
    assert moved.domain.state == tpb.DOMAIN_STATE_RUNNING
    assert [n.source for n in moved.domain.nics] == ["br-vm"]
    assert moved.domain.disks[0].allocation > 1 << 20  # the guest's data reached the new image
    assert name not in lab.virsh("host1", "list", "--all", "--name").stdout.split()
    assert lab.wait_for_heartbeat(name, above=beats + 2, timeout=30) > beats + 2  # still beating, on host2
    assert lab.console(name).count("GUEST-BOOTED") == 1, "the guest rebooted"
    assert not (await dst.ListPrepares(apb.ListPreparesRequest(), timeout=30)).prepares


async def test_abort_through_the_agent(lab, stubs, guests):
    src, dst = stubs
    name = "la-abort"
    guests.append(name)
    await asyncio.to_thread(lab.guest, name, "host1", disks=("64M",), dirty_rate="max")
    prep = await prepare(src, dst, name)
    call = src.Migrate(
        apb.MigrateRequest(
            domain=name,
            target_uri=lab.tcp_uri("host2"),
            destination_xml=prep.destination_xml,
            progress_interval_ms=200,
            options=tpb.MigrationOptions(storage=tpb.STORAGE_MODE_COPY_ALL, bandwidth_mibps=20),
        ),
        timeout=300,
    )
    aborted = False
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for event in call:
            if event.progress.phase == tpb.MIGRATION_PHASE_PRECOPY and not aborted:
                job = await src.GetJob(apb.GetJobRequest(domain=name), timeout=30)
                assert job.active and job.operation == "migration out"
                aborted = (await src.AbortMigration(apb.AbortMigrationRequest(domain=name), timeout=30)).aborted
    assert aborted
    err = from_rpc_error(exc.value)
    assert (exc.value.code(), err.reason) == (grpc.StatusCode.ABORTED, "MIGRATION_ABORTED")
    still = await src.GetDomain(apb.GetDomainRequest(name=name), timeout=30)
    assert still.domain.state == tpb.DOMAIN_STATE_RUNNING
    beats = lab.heartbeats(name)
    assert lab.wait_for_heartbeat(name, above=beats + 1, timeout=30) > beats + 1
    assert lab.console(name).count("GUEST-BOOTED") == 1, "the guest rebooted"
    done = await dst.CleanupIncoming(apb.CleanupIncomingRequest(prepare_id=prep.prepare_id), timeout=60)
    assert list(done.removed) == list(prep.created)
    assert lab.host_exec("host2", "test", "-e", prep.created[0], check=False).returncode != 0


async def test_stalled_precopy_switches_to_postcopy(lab, stubs, guests):
    """Dirtying 64 MiB flat out, sent at 20 MiB/s: each pre-copy iteration leaves as much as the
    one before; the agent switches to post-copy and the guest lands, still beating."""
    src, dst = stubs
    name = "la-postcopy"
    guests.append(name)
    await asyncio.to_thread(lab.guest, name, "host1", disks=("64M",), dirty_rate="max")
    prep = await prepare(src, dst, name)
    events = [
        e
        async for e in src.Migrate(
            apb.MigrateRequest(
                domain=name,
                target_uri=lab.tcp_uri("host2"),
                destination_xml=prep.destination_xml,
                progress_interval_ms=200,
                options=tpb.MigrationOptions(
                    storage=tpb.STORAGE_MODE_COPY_ALL,
                    bandwidth_mibps=20,
                    allow_postcopy=True,
                    postcopy_on_stall=True,
                ),
            ),
            timeout=300,
        )
    ]
    assert tpb.MIGRATION_PHASE_POSTCOPY in [e.progress.phase for e in events[:-1]]
    assert events[-1].result.job.postcopy
    await dst.CommitIncoming(apb.CommitIncomingRequest(prepare_id=prep.prepare_id), timeout=30)
    assert (await dst.GetDomain(apb.GetDomainRequest(name=name), timeout=30)).domain.state == tpb.DOMAIN_STATE_RUNNING
    beats = lab.heartbeats(name)
    assert lab.wait_for_heartbeat(name, above=beats + 1, timeout=30) > beats + 1
    assert lab.console(name).count("GUEST-BOOTED") == 1, "the guest rebooted"
