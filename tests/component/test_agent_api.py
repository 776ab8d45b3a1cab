"""The agent's gRPC API end to end over a real channel, with fake libvirt and fake host below.

What an operator would check: the inventory says what is on the host; errors carry a reason and
a hint; a refused prepare leaves nothing behind; a migration streams progress, ends with the
target's figures, and the domain really moved; an abort leaves the guest on the source.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ferry import convert
from ferry.agent.migration import DriverPolicy, MigrationDriver
from ferry.agent.source_records import Outcome, SourceRecords
from ferry.diskplan import plan_disks
from ferry.errors import Aborted, FailedPrecondition, NotFound
from ferry.model import DomainState, HostMapping, StorageMode
from ferry.rpc import from_rpc_error
from ferry.testing.fake_hypervisor import MiB, make_domain_xml
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import types_pb2 as tpb

GiB = 1 << 30
TO_HOST2 = tpb.HostMapping(bridges={"br-guest": "br-vm"})


IMAGES = "/var/lib/libvirt/images"  # host-local on each fake host (as in conftest)
SHARED = "/srv/shared"  # declared shared on each fake host


def add_guest(agent, name: str, *, memory: int = 256 * MiB, dirty: int = 0) -> str:
    """A running guest with a local qcow2 disk (vda) and a disk on shared storage (vdb)."""
    local, shared = f"{IMAGES}/{name}.qcow2", f"{SHARED}/{name}-data.raw"
    agent.host.create_image(local, fmt="qcow2", virtual_size=GiB)
    agent.hv.disk_sizes[local] = (GiB, 512 * MiB)  # what blockInfo would say
    agent.host.files[shared] = 64 * MiB
    xml = make_domain_xml(
        name, memory_bytes=memory, disks=[("vda", local, "qcow2"), ("vdb", shared, "raw")], bridges=["br-guest"]
    )
    return agent.hv.add_domain(xml, dirty_bytes_per_s=dirty).uuid


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    return exc.value


async def prepare_target(source, target, name: str, **kw) -> apb.PrepareIncomingResponse:
    """What the coordinator does: plan the disks from the source's inventory, prepare the target."""
    got = await source.stub.GetDomain(apb.GetDomainRequest(name=name, include_xml=True))
    domain = convert.domain_from_pb(got.domain)
    plans = plan_disks(domain.disks, StorageMode.COPY_ALL, (), HostMapping())
    return await target.stub.PrepareIncoming(
        apb.PrepareIncomingRequest(
            domain_xml=got.xml,
            disks=[convert.disk_plan_to_pb(p) for p in plans],
            mapping=TO_HOST2,
            storage=tpb.STORAGE_MODE_COPY_ALL,
            migration_id="m-1",
            **kw,
        )
    )


def migrate_request(name: str, target, destination_xml: str, **options) -> apb.MigrateRequest:
    return apb.MigrateRequest(
        domain=name,
        target_uri=target.hv.uri,
        destination_xml=destination_xml,
        migration_id="m-1",
        progress_interval_ms=10,
        options=tpb.MigrationOptions(storage=tpb.STORAGE_MODE_COPY_ALL, **options),
    )


# ---------------------------------------------------------------- inventory


async def test_inventory_says_what_is_on_the_host(agents):
    host1, _ = agents
    uuid = add_guest(host1, "g1")
    inv = await host1.stub.GetInventory(apb.GetInventoryRequest())
    h = inv.host
    assert (h.hostname, h.host_uuid) == ("host1", "6c61622d-0000-4000-8000-000000000001")
    assert list(h.bridges) == ["br-guest"]
    assert h.libvirt_uri == "qemu+tcp://10.77.0.11/system"  # advertised, not the local URI
    assert h.migration_address == "10.77.0.11"
    assert h.libvirt_version == 9_000_000 and h.memory_total_bytes > 0 and h.agent_version
    assert {(s.path, s.shared) for s in h.storage} == {(IMAGES, False), (SHARED, True)}
    [g1] = inv.domains
    assert (g1.name, g1.uuid, g1.state, g1.memory_bytes) == ("g1", uuid, tpb.DOMAIN_STATE_RUNNING, 256 * MiB)
    disks = {d.target: d for d in g1.disks}
    assert disks["vda"].virtual_size == GiB and not disks["vda"].shared
    assert disks["vdb"].shared  # on the declared shared dir
    assert [(n.type, n.source) for n in g1.nics] == [("bridge", "br-guest")]


async def test_get_domain_not_found_has_reason_and_hint(agents):
    host1, _ = agents
    err = from_rpc_error(await rpc_error(host1.stub.GetDomain(apb.GetDomainRequest(name="nope"))))
    assert isinstance(err, NotFound)
    assert err.reason == "DOMAIN_NOT_FOUND"
    assert "virsh list --all" in err.hint


async def test_get_domain_with_xml(agents):
    host1, _ = agents
    uuid = add_guest(host1, "g1")
    got = await host1.stub.GetDomain(apb.GetDomainRequest(name=uuid, include_xml=True))
    assert got.domain.name == "g1" and "<name>g1</name>" in got.xml


# ---------------------------------------------------------------- target side


async def test_prepare_missing_bridge_is_refused_and_creates_nothing(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    got = await host1.stub.GetDomain(apb.GetDomainRequest(name="g1", include_xml=True))
    plans = plan_disks(convert.domain_from_pb(got.domain).disks, StorageMode.COPY_ALL, (), HostMapping())
    exc = await rpc_error(
        host2.stub.PrepareIncoming(
            apb.PrepareIncomingRequest(
                domain_xml=got.xml, disks=[convert.disk_plan_to_pb(p) for p in plans], storage=tpb.STORAGE_MODE_COPY_ALL
            )
        )
    )  # no bridge mapping
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = from_rpc_error(exc)
    assert err.reason == "BRIDGE_MISSING"
    assert "br-guest=br-vm" in err.hint  # the hint says how to map it
    assert host2.host.created == []
    assert not (await host2.stub.ListPrepares(apb.ListPreparesRequest())).prepares


async def test_dry_run_lists_every_problem_and_creates_nothing(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    host2.host.files[f"{IMAGES}/g1.qcow2"] = 5  # a leftover in the way
    got = await host1.stub.GetDomain(apb.GetDomainRequest(name="g1", include_xml=True))
    plans = plan_disks(convert.domain_from_pb(got.domain).disks, StorageMode.COPY_ALL, (), HostMapping())
    resp = await host2.stub.PrepareIncoming(
        apb.PrepareIncomingRequest(
            domain_xml=got.xml,
            disks=[convert.disk_plan_to_pb(p) for p in plans],
            storage=tpb.STORAGE_MODE_COPY_ALL,
            dry_run=True,
        )
    )
    reasons = {p.reason for p in resp.problems}
    assert {"BRIDGE_MISSING", "FILE_IN_THE_WAY", "SHARED_DISK_MISSING"} <= reasons
    assert all(p.message and p.hint for p in resp.problems)
    assert resp.prepare_id == "" and not resp.created
    assert host2.host.created == []


async def test_prepare_then_cleanup(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB  # shared storage: seen on both
    prep = await prepare_target(host1, host2, "g1")
    assert list(prep.created) == [f"{IMAGES}/g1.qcow2"]
    assert "br-vm" in prep.destination_xml and "br-guest" not in prep.destination_xml
    listed = (await host2.stub.ListPrepares(apb.ListPreparesRequest())).prepares
    assert [(p.prepare_id, p.domain_name, p.migration_id) for p in listed] == [(prep.prepare_id, "g1", "m-1")]
    done = await host2.stub.CleanupIncoming(apb.CleanupIncomingRequest(prepare_id=prep.prepare_id))
    assert list(done.removed) == [f"{IMAGES}/g1.qcow2"] and not done.already_gone
    assert not host2.host.exists(f"{IMAGES}/g1.qcow2")
    again = await host2.stub.CleanupIncoming(apb.CleanupIncomingRequest(prepare_id=prep.prepare_id))
    assert again.already_gone


@pytest.mark.parametrize(
    ("paused_by_libvirt", "persistent", "discarded"),
    [
        (True, False, True),  # libvirt's unfinished incoming copy: destroyed, then the files removed
        (False, False, False),  # paused by a user: not a migration's leftover
        (True, True, False),  # a persistent definition: not a bare incoming copy
    ],
)
async def test_a_cleanup_discards_only_an_unfinished_incoming_copy(agents, paused_by_libvirt, persistent, discarded):
    host1, host2 = agents
    uuid = add_guest(host1, "g1")
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    host2.hv.add_domain(prep.destination_xml, state=DomainState.PAUSED, persistent=persistent)
    host2.hv.domains[uuid].paused_by_libvirt = paused_by_libvirt
    # without the caller's word that the guest executes on the source, never
    refused = await rpc_error(host2.stub.CleanupIncoming(apb.CleanupIncomingRequest(prepare_id=prep.prepare_id)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert from_rpc_error(refused).reason == "DOMAIN_RUNNING_HERE"
    request = apb.CleanupIncomingRequest(prepare_id=prep.prepare_id, discard_incoming=True)
    if discarded:
        done = await host2.stub.CleanupIncoming(request)
        assert list(done.removed) == [f"{IMAGES}/g1.qcow2"] and uuid not in host2.hv.domains
        assert host2.hv.calls.count("destroy_incoming") == 1
        return
    refused = await rpc_error(host2.stub.CleanupIncoming(request))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert from_rpc_error(refused).reason == "DOMAIN_RUNNING_HERE", refused.details()
    assert "destroy_incoming" not in host2.hv.calls and uuid in host2.hv.domains
    assert host2.host.exists(f"{IMAGES}/g1.qcow2")  # its disks stay


# ---------------------------------------------------------------- source side


@pytest.mark.parametrize("stopping_lookups", [0, 2])
async def test_a_definition_libvirt_left_on_the_source_after_a_completed_migration_is_removed(agents, stopping_lookups):
    # seen in the lab: a post-copy resumed five times completed, and host1 still defined the guest,
    # shut off, beside it running on host2 -- starting that copy would run the VM twice. Seen once
    # in CI: the copy was still stopping (paused) when the agent looked: it is waited for
    host1, host2 = agents
    add_guest(host1, "g1")
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    host1.hv.leaves_source_definition = True
    host1.hv.leftover_stops_after_lookups = stopping_lookups  # paused for that many lookups, then shut off
    events = [e async for e in host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml))]
    result = events[-1].result
    assert result.source_state == tpb.DOMAIN_STATE_UNSPECIFIED and not result.source_defined
    assert await host1.hv.find_domain(name="g1") is None and "undefine_inactive" in host1.hv.calls
    assert (await host2.hv.find_domain(name="g1")).state is DomainState.RUNNING


async def test_a_target_of_the_sources_host_uuid_is_refused_as_such(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    host2.hv.host_uuid = host1.hv.host_uuid  # a cloned install
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml)):
            pass
    err = exc.value
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and from_rpc_error(err).reason == "HOST_UUID_SHARED"
    assert (await host1.hv.find_domain(name="g1")).state is DomainState.RUNNING


async def test_a_kept_source_definition_stays_when_asked_for(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    events = [
        e
        async for e in host1.stub.Migrate(
            migrate_request("g1", host2, prep.destination_xml, keep_source_definition=True)
        )
    ]
    assert events[-1].result.source_defined and "undefine_inactive" not in host1.hv.calls


@pytest.mark.parametrize(
    ("persistent", "persist_transient", "after"),
    [
        (False, False, False),  # a transient VM has no definition to move: it stays transient
        (False, True, True),  # unless --persistent is named, as virsh does
        (True, False, True),  # a persistent one moves its definition
    ],
)
async def test_a_transient_vm_stays_transient_unless_asked(agents, persistent, persist_transient, after):
    host1, host2 = agents
    add_guest(host1, "g1")
    if not persistent:
        host1.hv.domains[next(iter(host1.hv.domains))].persistent = False
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    request = migrate_request("g1", host2, prep.destination_xml, persist_transient=persist_transient)
    assert [e async for e in host1.stub.Migrate(request)][-1].HasField("result")
    arrived = await host2.hv.find_domain(name="g1")
    assert arrived.state is DomainState.RUNNING and arrived.persistent is after
    assert await host1.hv.find_domain(name="g1") is None


async def test_migrate_streams_progress_then_result_and_the_domain_moves(agents):
    host1, host2 = agents
    uuid = add_guest(host1, "g1", dirty=50 * MiB)  # converges in a few iterations
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    events = [
        e
        async for e in host1.stub.Migrate(
            migrate_request("g1", host2, prep.destination_xml, max_downtime_ms=500, bandwidth_mibps=100)
        )
    ]
    progress = [e.progress for e in events[:-1] if e.HasField("progress")]
    assert progress and all(e.HasField("progress") or e.HasField("action") for e in events[:-1])
    # the one max-downtime step the flags make, with its reason
    actions = [e.action for e in events if e.HasField("action")]
    assert [(a.action, a.reason) for a in actions] == [("set-max-downtime", "max-downtime step 1 of 1: 500 ms")]
    phases = [p.phase for p in progress]
    assert tpb.MIGRATION_PHASE_DISK_MIRROR in phases and tpb.MIGRATION_PHASE_PRECOPY in phases
    assert phases == sorted(phases)  # phases never go back
    assert max(p.disk_total for p in progress) == 512 * MiB
    assert max(p.iteration for p in progress) >= 2
    assert progress[-1].memory_total == 256 * MiB and progress[-1].max_downtime_ms == 500
    result = events[-1].result
    assert events[-1].HasField("result")
    assert result.job.time_elapsed_ms > 0 and result.job.memory_processed >= 256 * MiB
    assert result.job.disk_processed > 0
    assert result.source_state == tpb.DOMAIN_STATE_UNSPECIFIED and not result.source_defined
    # the domain moved: running on host2 with host2's bridge, gone from host1
    moved = await host2.stub.GetDomain(apb.GetDomainRequest(name="g1", include_xml=True))
    assert (moved.domain.uuid, moved.domain.state) == (uuid, tpb.DOMAIN_STATE_RUNNING)
    assert [n.source for n in moved.domain.nics] == ["br-vm"]
    assert not (await host1.stub.GetInventory(apb.GetInventoryRequest())).domains
    assert "set_max_downtime" in host1.hv.calls
    await host2.stub.CommitIncoming(apb.CommitIncomingRequest(prepare_id=prep.prepare_id))
    assert not (await host2.stub.ListPrepares(apb.ListPreparesRequest())).prepares
    assert host2.host.exists(f"{IMAGES}/g1.qcow2")  # the disk is the domain's now


async def test_migrate_without_prepare_fails_and_leaves_the_guest(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    exc = await rpc_error(_drain(host1.stub.Migrate(migrate_request("g1", host2, ""))))
    err = from_rpc_error(exc)
    assert (exc.code(), err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "TARGET_DISK_MISSING")
    assert host1.hv.domains and not host2.hv.domains


async def _drain(stream) -> list:
    return [e async for e in stream]


async def _until(predicate, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_abort_mid_way_leaves_the_guest_on_the_source(agents):
    host1, host2 = agents
    uuid = add_guest(host1, "g1", memory=2 * GiB, dirty=4 * GiB)  # dirties faster than it sends: never ends
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    stream = host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml))
    aborted = False
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for event in stream:
            if event.progress.phase == tpb.MIGRATION_PHASE_PRECOPY and not aborted:
                busy = await rpc_error(host1.stub.Migrate(migrate_request("g1", host2, "")).read())
                assert from_rpc_error(busy).reason == "MIGRATION_IN_PROGRESS"
                job = await host1.stub.GetJob(apb.GetJobRequest(domain="g1"))
                assert job.active and job.operation == "migration out"
                assert (await host1.stub.AbortMigration(apb.AbortMigrationRequest(domain="g1"))).aborted
                aborted = True
    assert aborted
    err = from_rpc_error(exc.value)
    assert (exc.value.code(), err.reason) == (grpc.StatusCode.ABORTED, "MIGRATION_ABORTED")
    assert isinstance(err, Aborted)
    assert (await host1.hv.get_domain(uuid)).state is DomainState.RUNNING
    assert not host2.hv.domains
    again = await host1.stub.AbortMigration(apb.AbortMigrationRequest(domain="g1"))
    assert not again.aborted  # nothing left to abort


async def migrate_then_close_the_stream(host1, host2) -> str:
    """g1 (a guest that does not converge) migrating to host2, its Migrate stream closed by the
    caller once pre-copy runs (a coordinator gone); g1's UUID."""
    uuid = add_guest(host1, "g1", memory=2 * GiB, dirty=4 * GiB)
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    call = host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml))
    async for event in call:
        if event.progress.phase == tpb.MIGRATION_PHASE_PRECOPY:
            break
    call.cancel()
    return uuid


async def test_closed_stream_leaves_the_job_running_until_aborted(agents):
    host1, host2 = agents
    uuid = await migrate_then_close_the_stream(host1, host2)
    await asyncio.sleep(0.1)
    assert uuid in host1.hv.jobs  # still migrating
    await host1.stub.TuneMigration(apb.TuneMigrationRequest(domain="g1", bandwidth_mibps=100))
    assert host1.hv.jobs[uuid].bandwidth_bps == 100 * MiB
    assert (await host1.stub.AbortMigration(apb.AbortMigrationRequest(domain="g1"))).aborted
    await _until(lambda: uuid not in host1.hv.jobs)
    assert (await host1.hv.get_domain(uuid)).state is DomainState.RUNNING


def outcome(tmp_path, host: str, migration_id: str = "m-1") -> Outcome:
    """How ``host``'s agent recorded the end of its outgoing migration (``source_records``)."""
    return SourceRecords(tmp_path / host).load(migration_id).outcome


async def test_a_job_that_completes_after_the_agent_gave_up_on_it_may_have_its_source_disks_removed(agents, tmp_path):
    """The completion timeout's abort did not end the job (libvirt busy): Migrate fails, the job
    runs on. Recorded FAILED, its disks stayed for good (MIGRATION_NOT_COMPLETED) although the
    guest landed on host2; the record now waits for the job's end."""
    host1, host2 = agents
    uuid = add_guest(host1, "g1", memory=2 * GiB, dirty=4 * GiB)  # does not converge
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    host1.servicer.driver = MigrationDriver(host1.hv, policy=DriverPolicy(abort_wait_s=0.05))
    host1.hv.fail("abort_job", FailedPrecondition("cannot acquire state change lock", reason="LIBVIRT_BUSY"))
    request = migrate_request("g1", host2, prep.destination_xml, completion_timeout_s=1)
    exc = await rpc_error(_drain(host1.stub.Migrate(request)))
    assert from_rpc_error(exc).reason == "MIGRATION_TIMEOUT" and "did not end the job" in exc.details()
    assert uuid in host1.hv.jobs and outcome(tmp_path, "host1") is Outcome.RUNNING  # not seen ending
    host1.hv.set_dirty_rate("g1", 0)  # the job, still running, converges
    await _until(lambda: uuid in host2.hv.domains and outcome(tmp_path, "host1") is Outcome.COMPLETED)
    done = await host1.stub.RemoveSourceDisks(
        apb.RemoveSourceDisksRequest(domain_uuid=uuid, paths=[f"{IMAGES}/g1.qcow2"], migration_id="m-1")
    )
    assert list(done.removed) == [f"{IMAGES}/g1.qcow2"] and outcome(tmp_path, "host1") is Outcome.REMOVED


async def test_a_job_left_running_by_a_closed_stream_is_recorded_when_it_ends(agents, tmp_path):
    host1, host2 = agents
    uuid = await migrate_then_close_the_stream(host1, host2)
    await _until(lambda: not host1.servicer._migrating)  # the agent saw the stream close
    assert uuid in host1.hv.jobs and outcome(tmp_path, "host1") is Outcome.RUNNING
    assert (await host1.stub.AbortMigration(apb.AbortMigrationRequest(domain="g1"))).aborted
    await _until(lambda: outcome(tmp_path, "host1") is Outcome.FAILED)  # the guest stayed on host1
    assert (await host1.hv.get_domain(uuid)).state is DomainState.RUNNING


async def test_an_abort_before_libvirt_shows_the_job_ends_the_migrate_and_the_job_is_aborted_as_it_starts(
    agents, tmp_path
):
    """The migrate call reached libvirt, which has not registered the job yet: AbortMigration finds
    none. Was: "no job running", the Migrate went on, and the job started once libvirt got to it --
    after the coordinator, told there was nothing to abort, had ended the migration CANCELLED."""
    host1, host2 = agents
    uuid = add_guest(host1, "g1")
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    gate = host1.hv.hold_calls("migrate")  # the call waits in libvirt, before its job exists
    stream = asyncio.ensure_future(_drain(host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml))))
    await _until(lambda: "migrate" in host1.hv.calls)
    assert (await host1.stub.AbortMigration(apb.AbortMigrationRequest(domain="g1"))).aborted
    exc = await rpc_error(stream)  # at once, while the call still waits in libvirt
    assert (exc.code(), from_rpc_error(exc).reason) == (grpc.StatusCode.ABORTED, "MIGRATION_ABORTED")
    assert "before its job started" in exc.details() and not host1.servicer._migrating
    gate.set()  # libvirt gets to the call: its job starts, and is aborted as it shows
    await _until(lambda: bool(host1.hv.migrate_calls) and uuid not in host1.hv.jobs)
    await _until(lambda: outcome(tmp_path, "host1") is Outcome.FAILED)  # its end recorded: disks stay
    assert (await host1.hv.get_domain(uuid)).state is DomainState.RUNNING
    assert not host2.hv.domains


async def test_an_abort_while_the_migrate_claims_the_domain_means_its_job_never_starts(agents, tmp_path):
    host1, host2 = agents
    uuid = add_guest(host1, "g1")
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    slow_stats = host1.hv.hold_calls("job_stats")  # the Migrate has claimed g1 and waits on libvirt
    stream = asyncio.ensure_future(_drain(host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml))))
    await _until(lambda: "job_stats" in host1.hv.calls)
    assert (await host1.stub.AbortMigration(apb.AbortMigrationRequest(domain="g1"))).aborted
    slow_stats.set()
    exc = await rpc_error(stream)
    assert (exc.code(), from_rpc_error(exc).reason) == (grpc.StatusCode.ABORTED, "MIGRATION_ABORTED")
    assert "migrate" not in host1.hv.calls  # libvirt was never asked
    assert outcome(tmp_path, "host1") is Outcome.FAILED
    assert (await host1.hv.get_domain(uuid)).state is DomainState.RUNNING and not host2.hv.domains
    # the next Migrate of g1 is not affected
    events = await _drain(host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml)))
    assert events[-1].HasField("result") and uuid in host2.hv.domains


async def test_two_migrates_of_one_domain_arriving_together_the_second_is_refused(agents):
    """The claim awaited libvirt's job statistics between its check and its claim: both calls
    passed, the second failed LIBVIRT_BUSY and, ending, dropped the first one's claim and Control."""
    host1, host2 = agents
    add_guest(host1, "g1", memory=2 * GiB, dirty=4 * GiB)  # converges only when forced
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    slow_stats = host1.hv.hold_calls("job_stats")  # the first claim waits on libvirt
    first = host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml))
    first_event = asyncio.ensure_future(first.read())
    await _until(lambda: "job_stats" in host1.hv.calls)
    second = host1.stub.Migrate(migrate_request("g1", host2, prep.destination_xml))
    async with asyncio.timeout(5):  # (it used to wait on libvirt too)
        busy = await rpc_error(second.read())
    assert (busy.code(), from_rpc_error(busy).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MIGRATION_IN_PROGRESS")
    assert "(migration m-1)" in busy.details()
    slow_stats.set()
    assert (await first_event).HasField("progress")
    # the first one still holds its claim and its Control: a force-complete reaches its driver
    again = await rpc_error(host1.stub.Migrate(migrate_request("g1", host2, "")).read())
    assert from_rpc_error(again).reason == "MIGRATION_IN_PROGRESS" and "(migration m-1)" in again.details()
    tuned = await host1.stub.TuneMigration(apb.TuneMigrationRequest(domain="g1", force_complete=True))
    assert tuned.done.startswith("force-complete requested")
    last = await first_event
    while (event := await first.read()) is not grpc.aio.EOF:
        last = event
    assert last.HasField("result") and (await host2.hv.get_domain("g1")).state is DomainState.RUNNING


async def test_live_migration_of_a_stopped_domain_is_refused(agents):
    host1, host2 = agents
    host1.hv.add_domain(make_domain_xml("off"), state=DomainState.SHUTOFF)
    exc = await rpc_error(_drain(host1.stub.Migrate(apb.MigrateRequest(domain="off", target_uri=host2.hv.uri))))
    err = from_rpc_error(exc)
    assert isinstance(err, FailedPrecondition) and err.reason == "DOMAIN_NOT_RUNNING"


async def test_postcopy_without_a_job_says_so(agents):
    host1, _ = agents
    add_guest(host1, "g1")
    await host1.stub.TuneMigration(apb.TuneMigrationRequest(domain="g1", max_downtime_ms=500))  # kept, as libvirt does
    err = from_rpc_error(
        await rpc_error(host1.stub.TuneMigration(apb.TuneMigrationRequest(domain="g1", start_postcopy=True)))
    )
    assert err.reason == "DOMAIN_STATE_INVALID"
    job = await host1.stub.GetJob(apb.GetJobRequest(domain="g1"))
    assert not job.active and job.job_type == "none"


# ---------------------------------------------------------------- server plumbing


async def test_health_serving(agents):
    host1, _ = agents
    health = health_pb2_grpc.HealthStub(host1.channel)
    for service in ("", "ferry.v1.Agent"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_agent_service(agents):
    host1, _ = agents
    stub = reflection_pb2_grpc.ServerReflectionStub(host1.channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = [s.name async for r in stub.ServerReflectionInfo(requests()) for s in r.list_services_response.service]
    assert "ferry.v1.Agent" in names


async def test_stalled_precopy_switches_to_postcopy_and_completes(agents):
    host1, host2 = agents
    uuid = add_guest(host1, "g1", dirty=4 * GiB)  # at 100 MiB/s never converges in pre-copy
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    events = await _drain(
        host1.stub.Migrate(
            migrate_request(
                "g1", host2, prep.destination_xml, bandwidth_mibps=100, allow_postcopy=True, postcopy_on_stall=True
            )
        )
    )
    phases = [e.progress.phase for e in events[:-1]]
    assert tpb.MIGRATION_PHASE_POSTCOPY in phases
    assert events[-1].result.job.postcopy
    assert "start_postcopy" in host1.hv.calls
    assert (await host2.hv.get_domain(uuid)).state is DomainState.RUNNING


async def test_no_convergence_hits_the_completion_timeout_and_aborts(agents):
    host1, host2 = agents
    uuid = add_guest(host1, "g1", dirty=4 * GiB)
    host2.host.files[f"{SHARED}/g1-data.raw"] = 64 * MiB
    prep = await prepare_target(host1, host2, "g1")
    exc = await rpc_error(
        _drain(
            host1.stub.Migrate(
                migrate_request("g1", host2, prep.destination_xml, bandwidth_mibps=100, completion_timeout_s=1)
            )
        )
    )
    err = from_rpc_error(exc)
    assert (exc.code(), err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "MIGRATION_TIMEOUT")
    assert "post-copy" in err.hint
    assert (await host1.hv.get_domain(uuid)).state is DomainState.RUNNING
    assert not host2.hv.domains and not host1.hv.jobs


async def test_libvirt_down_or_hung_is_named(agents):
    host1, _ = agents
    host1.hv.reachable = False
    err = from_rpc_error(await rpc_error(host1.stub.GetInventory(apb.GetInventoryRequest())))
    assert (type(err).__name__, err.reason) == ("Unavailable", "LIBVIRT_UNREACHABLE")
    host1.hv.reachable = True
    host1.hv.timeout_s = 0.05
    host1.hv.hang("list_domains")
    exc = await rpc_error(host1.stub.GetInventory(apb.GetInventoryRequest()))
    err = from_rpc_error(exc)
    assert (exc.code(), err.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "LIBVIRT_TIMEOUT")
    assert "listAllDomains" in err.message and host1.hv.uri in err.message
