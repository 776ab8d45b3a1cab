"""GrpcAgentClient against real agent servers (fakes below): every method of the AgentClient
port, errors with their reason and hint, an unreachable agent, the Migrate stream."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from ferry.agent.service import disks_to_copy
from ferry.coordinator.agent_client import (
    AGENT_TIMEOUT,
    AGENT_UNREACHABLE,
    GrpcAgentClient,
    agent_lost,
    transport_failure,
)
from ferry.diskplan import plan_disks
from ferry.errors import Aborted, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from ferry.model import (
    Disk,
    DiskPlan,
    DomainInfo,
    DomainState,
    HostMapping,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    MigrationResult,
    StorageMode,
)
from ferry.testing.fleet import IMAGES, Fleet, start_fleet

COPY = MigrationOptions(storage=StorageMode.COPY_ALL, persist_dest=True, undefine_source=True)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, 2)
    yield f
    await f.close()


async def prepare(fleet: Fleet, vm: str, *, dry_run: bool = False, mapping: HostMapping | None = None):
    source, target = fleet.client("host1"), fleet.client("host2")
    domain, xml = await source.get_domain(vm, include_xml=True)
    plans = plan_disks(domain.disks, StorageMode.COPY_ALL, (), HostMapping())
    return await target.prepare_incoming(
        domain_xml=xml,
        disks=plans,
        mapping=fleet.mapping("host1", "host2") if mapping is None else mapping,
        storage=StorageMode.COPY_ALL,
        ttl_s=60,
        migration_id="m-1",
        dry_run=dry_run,
    )


async def test_inventory_and_get_domain(fleet):
    uuid = fleet.add_guest("host1", "g1")
    inv = await fleet.client("host1").inventory()
    assert inv.host.hostname == "host1" and inv.host.bridges == ("br-guest",)
    assert inv.host.libvirt_uri == "qemu+tcp://10.77.0.11/system" and inv.host.migration_address == "10.77.0.11"
    [g1] = inv.domains
    assert (g1.name, g1.uuid, g1.state) == ("g1", uuid, DomainState.RUNNING)
    domain, xml = await fleet.client("host1").get_domain(uuid, include_xml=True)
    assert domain.name == "g1" and "<name>g1</name>" in xml
    assert {d.target: d.shared for d in domain.disks} == {"vda": False, "vdb": True}
    _, no_xml = await fleet.client("host1").get_domain("g1")
    assert no_xml == ""


async def test_not_found_keeps_reason_and_hint(fleet):
    with pytest.raises(NotFound) as exc:
        await fleet.client("host1").get_domain("nope")
    assert exc.value.reason == "DOMAIN_NOT_FOUND" and "virsh list --all" in exc.value.hint
    assert not agent_lost(exc.value) and not transport_failure(exc.value)


async def test_prepare_dry_run_reports_problems_and_creates_nothing(fleet):
    fleet.add_guest("host1", "g1")
    out = await prepare(fleet, "g1", dry_run=True, mapping=HostMapping())
    assert [p.reason for p in out.problems] == ["BRIDGE_MISSING"]
    assert "br-guest=br-vm" in out.problems[0].hint
    assert out.prepare_id == "" and fleet["host2"].host.created == []


async def test_prepare_list_cleanup_commit(fleet):
    fleet.add_guest("host1", "g1")
    target = fleet.client("host2")
    out = await prepare(fleet, "g1")
    assert out.prepare_id and out.created == (f"{IMAGES}/g1.qcow2",) and "br-vm" in out.destination_xml
    assert out.expires_at is not None and out.disks[0].destination == f"{IMAGES}/g1.qcow2"
    [listed] = await target.list_prepares()
    assert (listed.prepare_id, listed.migration_id, listed.domain_name) == (out.prepare_id, "m-1", "g1")
    assert await target.cleanup_incoming(out.prepare_id) == [f"{IMAGES}/g1.qcow2"]
    assert await target.cleanup_incoming(out.prepare_id) == []  # already gone
    assert await target.list_prepares() == []
    again = await prepare(fleet, "g1")
    await target.commit_incoming(again.prepare_id)
    await target.commit_incoming(again.prepare_id)  # unknown now: still fine
    assert await target.list_prepares() == [] and fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2")


async def test_prepare_refused_keeps_reason(fleet):
    fleet.add_guest("host1", "g1")
    with pytest.raises(FailedPrecondition) as exc:
        await prepare(fleet, "g1", mapping=HostMapping())
    assert exc.value.reason == "BRIDGE_MISSING"
    with pytest.raises(InvalidArgument):
        await fleet.client("host2").cleanup_incoming("../etc")


async def test_migrate_streams_progress_then_result(fleet):
    fleet.add_guest("host1", "g1")
    out = await prepare(fleet, "g1")
    events = [
        e
        async for e in fleet.client("host1").migrate(
            "g1",
            target_uri=fleet["host2"].hv.uri,
            destination_xml=out.destination_xml,
            options=COPY,
            migration_id="m-1",
            migrate_uri="tcp://10.77.0.12",
        )
    ]
    *progress, result = events
    assert progress and all(isinstance(p, MigrationProgress) for p in progress)
    assert progress[0].phase is MigrationPhase.STARTING
    assert isinstance(result, MigrationResult) and result.source_state is None
    assert result.job.memory_processed > 0 and result.job.disk_processed > 0  # the local disk was copied
    assert fleet.running_on("g1") == ["host2"]


async def test_migrate_copies_exactly_the_prepared_disks(fleet):
    fleet.add_guest("host1", "g1")
    out = await prepare(fleet, "g1")
    assert [(p.target, p.copy) for p in out.disks] == [("vda", True), ("vdb", False)]
    fleet["host1"].hv.hold()
    stream = fleet.client("host1").migrate(
        "g1",
        target_uri=fleet["host2"].hv.uri,
        destination_xml=out.destination_xml,
        options=COPY,
        migration_id="m-1",
        disks=out.disks,
    )
    await anext(stream)
    [running] = fleet["host1"].hv.jobs.values()
    assert running.migrate_disks == ["vda"]
    fleet["host1"].hv.release()
    *_, result = [e async for e in stream]
    assert isinstance(result, MigrationResult) and fleet.running_on("g1") == ["host2"]


@pytest.mark.parametrize(
    ("plans", "options", "copied"),
    [
        # the plan decides, whatever the options would plan (here: both local disks)
        ((DiskPlan("vda", "/i/a.qcow2"), DiskPlan("vdb", "/i/b.qcow2", copy=False)), COPY, ["vda"]),
        ((DiskPlan("vda", "/i/a.qcow2", copy=False),), COPY, []),
        # no plan (an older coordinator): planned here from the options, as the target did
        ((), COPY, ["vda", "vdb"]),
        ((), replace(COPY, migrate_disks=("vdb",)), ["vdb"]),
        ((), MigrationOptions(storage=StorageMode.SHARED), []),
    ],
)
def test_disks_to_copy(plans, options, copied):
    domain = DomainInfo(
        "g1",
        "u-1",
        DomainState.RUNNING,
        disks=(Disk("vda", "/i/a.qcow2", "qcow2"), Disk("vdb", "/i/b.qcow2", "qcow2")),
    )
    assert disks_to_copy(domain, options, plans) == copied


async def test_abort_tune_and_get_job(fleet):
    fleet.add_guest("host1", "g1", dirty=64 << 20)
    out = await prepare(fleet, "g1")
    source = fleet.client("host1")
    fleet["host1"].hv.hold()
    stream = source.migrate(
        "g1", target_uri=fleet["host2"].hv.uri, destination_xml=out.destination_xml, options=COPY, migration_id="m-1"
    )
    first = await anext(stream)
    assert isinstance(first, MigrationProgress) and first.phase is MigrationPhase.STARTING
    job = await source.get_job("g1")
    assert job.stats.active and job.stats.operation == "migration out" and job.stats.memory_total == 256 << 20
    tuned = await source.tune_migration("g1", max_downtime_ms=500, bandwidth_mibps=100)
    # the job copies disks: libvirt keeps a disk copy at its start speed (the lab saw it: virsh
    # blockjob --bandwidth during the migration cannot acquire the state change lock)
    assert "bandwidth 100 MiB/s (the memory's: a disk copy keeps the speed it started at" in tuned.done
    [running] = fleet["host1"].hv.jobs.values()
    assert running.max_downtime_ms == 500 and running.bandwidth_bps == 100 << 20
    assert await source.abort_migration("g1") is True
    fleet["host1"].hv.release()
    with pytest.raises(Aborted):
        async for _ in stream:
            pass
    assert await source.abort_migration("g1") is False  # no job any more
    assert not (await source.get_job("g1")).stats.active
    assert fleet.running_on("g1") == ["host1"]


async def test_closing_the_stream_leaves_the_job_running(fleet):
    fleet.add_guest("host1", "g1")
    out = await prepare(fleet, "g1")
    fleet["host1"].hv.hold()
    stream = fleet.client("host1").migrate(
        "g1", target_uri=fleet["host2"].hv.uri, destination_xml=out.destination_xml, options=COPY, migration_id="m-1"
    )
    await anext(stream)
    await stream.aclose()
    await asyncio.sleep(0.05)
    assert (await fleet.client("host1").get_job("g1")).stats.active  # not aborted
    fleet["host1"].hv.release()
    for _ in range(200):
        if fleet.running_on("g1") == ["host2"]:
            break
        await asyncio.sleep(0.01)
    assert fleet.running_on("g1") == ["host2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_agent_is_unavailable():
    client = GrpcAgentClient("host9", f"127.0.0.1:{_free_port()}", timeout_s=2)
    try:
        with pytest.raises(Unavailable) as exc:
            await client.inventory()
        assert exc.value.reason == AGENT_UNREACHABLE and "host9" in exc.value.hint
        assert agent_lost(exc.value) and transport_failure(exc.value)
        with pytest.raises(Unavailable):
            async for _ in client.migrate(
                "g1", target_uri="qemu+tcp://x/system", destination_xml="", options=COPY, migration_id="m-1"
            ):
                pass
    finally:
        await client.close()


async def test_stopped_agent_is_unavailable_and_comes_back(fleet):
    client = fleet.client("host2")
    await fleet["host2"].stop()
    with pytest.raises(Unavailable) as exc:
        await client.list_prepares()
    assert exc.value.reason == AGENT_UNREACHABLE
    await fleet["host2"].start()
    # gRPC's shared subchannel may still wait out its first reconnect backoff (about 1 s)
    for _ in range(50):
        try:
            assert await client.list_prepares() == []
            return
        except Unavailable:
            await asyncio.sleep(0.1)
    pytest.fail("the restarted agent was not reachable within 5 s")


async def test_hung_libvirt_is_a_deadline(fleet):
    fleet.add_guest("host1", "g1")
    fleet["host1"].hv.hang("get_domain")
    client = GrpcAgentClient("host1", fleet["host1"].address, timeout_s=0.2)
    try:
        with pytest.raises(DeadlineExceeded) as exc:
            await client.get_domain("g1")
        assert exc.value.reason == AGENT_TIMEOUT and agent_lost(exc.value)
    finally:
        await client.close()
