"""The leader's engine end to end: MemoryStore + real agent gRPC servers over fakes.

What an operator would check: the record ends in the right phase and its history says why; the
guest runs on exactly one host, the right one; nothing of the migration is left on the target
after a rollback; the VM can be migrated again (its vm-active key is released); slot limits hold.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ferry.agent import libvirt_errors as le
from ferry.coordinator import replica
from ferry.coordinator.engine import Engine
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.preflight import preflight
from ferry.coordinator.record import MigrationRecord, decode, encode, new_migration
from ferry.coordinator.slots import Limits
from ferry.errors import FailedPrecondition, FerryError, Unavailable
from ferry.keys import encode_id, idempotency_key, migration_key, vm_active_key
from ferry.model import DomainState, MigrationOptions, MigrationPhase, StorageMode
from ferry.registry import HostChange
from ferry.store import Conflict, EventKind, Put, Resync, Store
from ferry.testing.fleet import IMAGES, Fleet, FleetDirectory, MaxConcurrency, start_fleet
from ferry.testing.memory_store import MemoryStore

FAST = Timeouts(
    preflight_s=3,
    preparing_s=3,
    migrating_min_s=3,
    migrating_grace_s=1,
    finishing_s=1.5,
    rolling_back_s=1.5,
    retry_base_s=0.2,
    retry_max_s=0.5,
    observe_delay_s=0.02,
)
COPY = MigrationOptions(storage=StorageMode.COPY_ALL, persist_dest=True, undefine_source=True)


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, 3)
    yield f
    await f.close()


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


class Running:
    """An engine running in a background task (the leader), stopped at the end of the test."""

    def __init__(
        self,
        store: Store,
        hosts: FleetDirectory,
        limits: Limits = Limits(),
        *,
        progress_write_s: float = 0.05,
        timeouts: Timeouts = FAST,
        **kw: Any,
    ) -> None:
        self.engine = Engine(
            store,
            hosts,
            limits=limits,
            timeouts=timeouts,
            clock=now,
            prepare_ttl_s=60,
            tick_s=0.05,
            progress_write_s=progress_write_s,
            job_poll_s=0.02,
            store_retry_s=0.05,
            **kw,
        )
        self.task = asyncio.get_running_loop().create_task(self.engine.run())

    async def stop(self) -> None:
        await self.engine.stop()
        await self.task


@pytest.fixture
async def hosts(fleet: Fleet) -> FleetDirectory:
    return FleetDirectory(fleet)


@contextlib.asynccontextmanager
async def engine(store: Store, hosts: FleetDirectory, limits: Limits = Limits(), **kw: Any) -> AsyncIterator[Running]:
    running = Running(store, hosts, limits, **kw)
    try:
        yield running
    finally:
        await running.stop()


async def submit(
    store: Store,
    fleet: Fleet,
    vm: str,
    source: str,
    target: str,
    *,
    mapping: bool = True,
    options: MigrationOptions = COPY,
    key: str = "",
    together: bool = False,
) -> MigrationRecord:
    """What the API does at submit: the Pending record, its idempotency key, the VM's claim (one
    after the other; ``together``: in one store write, as the API does when neither exists)."""
    uuid = fleet[source].hv.domains and next(d.uuid for d in fleet[source].hv.domains.values() if d.name == vm)
    n = len((await store.list("migrations/"))[0]) + 1
    record = new_migration(
        id=f"m-{n}",
        vm=vm,
        vm_uuid=uuid,
        source_host=source,
        target_host=target,
        now=now(),
        timeouts=FAST,
        options=options,
        mapping=fleet.mapping(source, target) if mapping else None,
        idempotency_key=key or f"key-{n}",
        memory_bytes=256 << 20,
    )
    if together:
        revision = await store.commit(
            [
                Put(idempotency_key(record.idempotency_key), encode_id(record.id)),
                Put(vm_active_key(uuid), encode_id(record.id)),
                Put(migration_key(record.id), encode(record)),
            ]
        )
        return replace(record, revision=revision, create_revision=revision)
    await store.create(vm_active_key(uuid), encode_id(record.id))
    await store.create(idempotency_key(record.idempotency_key), encode_id(record.id))
    revision = await store.create(migration_key(record.id), encode(record))
    return replace(record, revision=revision)


async def read(store: Store, migration_id: str) -> MigrationRecord:
    entry = await store.get(migration_key(migration_id))
    assert entry is not None
    return decode(entry.value, entry.mod_revision)


async def wait_for(store: Store, migration_id: str, done, timeout: float = 4.0) -> MigrationRecord:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = await read(store, migration_id)
        if done(r):
            return r
        if loop.time() > deadline:
            history = [(h.phase.name, h.reason) for h in r.history]
            pytest.fail(f"{migration_id} stayed {r.phase.name}: {history}")
        await asyncio.sleep(0.01)


async def final(store: Store, migration_id: str, timeout: float = 4.0) -> MigrationRecord:
    return await wait_for(store, migration_id, lambda r: r.phase.is_final, timeout)


async def until(check, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def request_cancel(store: Store, migration_id: str) -> None:
    """What the API does on CancelMigration: set the flag with a compare-and-set."""
    while True:
        r = await read(store, migration_id)
        try:
            await store.update(migration_key(migration_id), encode(replace(r, cancel_requested=True)), r.revision)
            return
        except Conflict:
            continue


def phases(r: MigrationRecord) -> list[str]:
    out: list[str] = []
    for h in r.history:
        if not out or out[-1] != h.phase.name:
            out.append(h.phase.name)
    return out


async def claim_released(store: Store, r: MigrationRecord) -> bool:
    return await store.get(vm_active_key(r.vm_uuid)) is None


# ---------------------------------------------------------------- the happy path


async def test_submitted_migration_succeeds(store, fleet, hosts):
    fleet.add_guest("host1", "g1")
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts):
        r = await final(store, m.id)
        await until(lambda: fleet.prepares("host2") == [])
    assert r.phase is Phase.SUCCEEDED, r.history
    assert phases(r) == ["PENDING", "PREFLIGHT", "PREPARING", "MIGRATING", "FINISHING", "SUCCEEDED"]
    assert r.result is not None and r.result.memory_processed > 0  # (a job this short stores no progress)
    assert r.error is None and r.prepare_id
    assert fleet.where("g1") == {"host2": DomainState.RUNNING}  # moved, nothing left on host1
    assert fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2")  # the copied disk is the guest's
    assert fleet.prepares("host2") == []  # committed
    assert await claim_released(store, r)  # the VM can migrate again
    assert await store.get(idempotency_key(m.idempotency_key)) is not None


async def test_the_final_write_releases_the_claim_in_the_same_store_write(store, fleet, hosts):
    """One store write (a commit) makes the record final and deletes vm-active/<uuid>."""
    fleet.add_guest("host1", "g1")
    m = await submit(store, fleet, "g1", "host1", "host2")
    events = store.watch("", m.revision)
    async with engine(store, hosts):
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED
    deleted = []
    async with asyncio.timeout(2):
        async for e in events:
            if e.kind is EventKind.DELETE and e.entry.key == vm_active_key(r.vm_uuid):
                deleted.append(e.revision)
                break
    await events.aclose()
    assert deleted == [r.revision]


async def test_an_engine_cancelled_while_it_shuts_down_still_counts_as_stopped(store, hosts, monkeypatch):
    """Seen in CI: a leader's duties were cancelled while its engine was shutting down, the
    engine stayed "running", and the next ``stop()`` waited for ever."""
    running = Running(store, hosts)
    await until(lambda: running.engine.loaded.is_set())
    slow = asyncio.Event()

    async def slow_shutdown() -> None:
        slow.set()
        await asyncio.sleep(30)

    monkeypatch.setattr(running.engine, "_shutdown", slow_shutdown)
    stopping = asyncio.get_running_loop().create_task(running.engine.stop())
    await asyncio.wait_for(slow.wait(), 2)
    running.task.cancel()  # the election cancels the duties meanwhile
    await asyncio.gather(running.task, return_exceptions=True)
    await asyncio.wait_for(stopping, 2)


async def test_a_claim_created_with_its_record_is_released_without_reading_it(store, fleet, hosts, monkeypatch):
    """As the API submits: the claim and the record in one write, so the claim's revision is the
    record's create revision and the final write deletes it without a read first."""
    fleet.add_guest("host1", "g1")
    m = await submit(store, fleet, "g1", "host1", "host2", together=True)
    reads: list[str] = []
    get = store.get

    async def counting_get(key: str):
        reads.append(key)
        return await get(key)

    monkeypatch.setattr(store, "get", counting_get)
    async with engine(store, hosts):
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED, r.history
    assert vm_active_key(m.vm_uuid) not in reads
    assert await claim_released(store, r)


async def test_the_versions_the_engine_wrote_are_not_decoded_again(store, fleet, hosts, monkeypatch):
    """The replica's decoder keeps each version the engine writes: the watch's echo of it is that
    record, so of a migration's versions only the submitted one is decoded (as the main wiring)."""
    decoded: list[int] = []

    def counting(data: bytes, revision: int, create_revision: int = 0) -> MigrationRecord:
        decoded.append(revision)
        return decode(data, revision, create_revision)

    monkeypatch.setattr(replica, "decode", counting)
    decoder = replica.RecordDecoder()
    fleet.add_guest("host1", "g1")
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts, decode_entry=decoder, written=decoder.written) as running:
        r = await final(store, m.id)
        await until(lambda: running.engine.records[m.id].revision == r.revision)
        entry = await store.get(migration_key(m.id))
        assert entry is not None and decoder(entry) is running.engine.records[m.id]  # the one it wrote
    assert r.phase is Phase.SUCCEEDED
    assert decoded == [m.revision]  # the engine wrote the other five versions or more


async def test_missing_bridge_fails_in_preflight_and_creates_nothing(store, fleet, hosts):
    fleet.add_guest("host1", "g1")
    m = await submit(store, fleet, "g1", "host1", "host2", mapping=False)
    async with engine(store, hosts):
        r = await final(store, m.id)
    assert r.phase is Phase.FAILED and phases(r) == ["PENDING", "PREFLIGHT", "FAILED"]
    assert r.error is not None and r.error.reason == "BRIDGE_MISSING" and "br-guest=br-vm" in r.error.hint
    assert fleet["host2"].host.created == [] and fleet.prepares("host2") == []
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert await claim_released(store, r)


async def test_offline_migration_of_a_local_disk_fails_in_preflight_and_creates_nothing(store, fleet, hosts):
    uuid = fleet.add_guest("host1", "g1")
    fleet["host1"].hv.domains[uuid].state = DomainState.SHUTOFF
    m = await submit(store, fleet, "g1", "host1", "host2", options=replace(COPY, offline=True))
    async with engine(store, hosts):
        r = await final(store, m.id)
    assert r.phase is Phase.FAILED and phases(r) == ["PENDING", "PREFLIGHT", "FAILED"], r.history
    assert r.error is not None and r.error.reason == "OFFLINE_LOCAL_DISK" and "--copy-storage-all" in r.error.hint
    assert fleet["host2"].host.created == [] and fleet.prepares("host2") == []  # no image made for nothing
    assert fleet.where("g1") == {"host1": DomainState.SHUTOFF}


async def test_offline_migration_of_a_guest_bigger_than_the_targets_memory_lands(store, fleet, hosts):
    # an offline migration moves a shut-off definition: the target needs none of its 32 GiB (it has 16),
    # neither in the preflight's dry run nor in the prepare for real
    uuid = fleet.add_guest("host1", "g1", memory=32 << 30, local_disk=False)
    fleet["host1"].hv.domains[uuid].state = DomainState.SHUTOFF
    options = replace(COPY, offline=True, storage=StorageMode.SHARED)
    m = await submit(store, fleet, "g1", "host1", "host2", options=options)
    async with engine(store, hosts):
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED, [(h.phase.name, h.reason) for h in r.history]
    assert fleet.where("g1") == {"host2": DomainState.SHUTOFF}


# ---------------------------------------------------------------- stopping and failing


async def test_cancel_mid_migration(store, fleet, hosts):
    uuid = fleet.add_guest("host1", "g1")
    fleet["host1"].hv.hold()
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        await until(lambda: uuid in fleet["host1"].hv.jobs)
        await request_cancel(store, m.id)
        await until(lambda: uuid not in fleet["host1"].hv.jobs or fleet["host1"].hv.jobs[uuid].abort)
        fleet["host1"].hv.release()
        r = await final(store, m.id)
    assert r.phase is Phase.CANCELLED, [(h.phase.name, h.reason) for h in r.history]
    assert r.cancel_requested and "ROLLING_BACK" in phases(r)
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert fleet.prepares("host2") == [] and not fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2")
    assert await claim_released(store, r)


async def test_cancel_while_queued(store, fleet, hosts):
    fleet.add_guest("host1", "g1")
    await hosts.down("host2")  # the target is down: the record stays queued
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts):
        await asyncio.sleep(0.2)
        assert (await read(store, m.id)).phase is Phase.PENDING
        await request_cancel(store, m.id)
        r = await final(store, m.id)
    assert r.phase is Phase.CANCELLED and phases(r) == ["PENDING", "CANCELLED"]
    assert await claim_released(store, r)


async def test_migration_failure_rolls_back(store, fleet, hosts):
    fleet.add_guest("host1", "g1")
    fleet["host1"].hv.fail_migration("g1", at_step=3)
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts):
        r = await final(store, m.id)
    assert r.phase is Phase.ROLLED_BACK, [(h.phase.name, h.reason) for h in r.history]
    assert phases(r) == ["PENDING", "PREFLIGHT", "PREPARING", "MIGRATING", "ROLLING_BACK", "ROLLED_BACK"]
    assert r.error is not None and r.error.reason and r.error.hint  # why, and what to do
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert fleet.prepares("host2") == [] and not fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2")
    assert await claim_released(store, r)


async def test_a_post_copy_broken_after_its_switch_over_fails_and_host2_keeps_the_guests_newest_disks(
    store, fleet, hosts
):
    """The job fails after the switch-over to post-copy (the target's QEMU dies): the fake leaves g1
    paused on host1 ("post-copy failed") and nothing on host2. Was: rolled back, host2's images
    (what g1 wrote since the switch-over) removed, ROLLED_BACK "guest runs on source"."""
    from ferry.convergence import ConvergencePolicy, PostcopyMode

    fleet.add_guest("host1", "g1", dirty=1 << 30)  # switches to post-copy after iteration 1 (step ~22)
    m = await submit(store, fleet, "g1", "host1", "host2", options=replace(COPY, bandwidth_mibps=128))
    busy = ConvergencePolicy(name="busy", bandwidth_mibps=128, postcopy=PostcopyMode.ON_PREDICTION)
    entry = await store.get(migration_key(m.id))
    await store.update(entry.key, encode(replace(m, policy=busy)), entry.mod_revision)
    fleet["host1"].hv.fail_migration("g1", at_step=32)  # in post-copy (it would complete at ~45)
    async with engine(store, hosts):
        r = await final(store, m.id, timeout=10)
        await until(lambda: fleet.prepares("host2") == [])  # KeepTarget: committed, not removed
    assert [e.action.action for e in r.actions] == ["start-postcopy"]
    assert r.phase is Phase.FAILED and r.error.reason == "POSTCOPY_FAILED", [
        (h.phase.name, h.reason) for h in r.history
    ]
    assert "ROLLING_BACK" not in phases(r)
    assert f"{IMAGES}/g1.qcow2 on host2, prepare {r.prepare_id}" in r.error.hint and "kept" in r.error.hint
    assert fleet.where("g1") == {"host1": DomainState.PAUSED}  # touched nothing
    assert fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2")
    assert await fleet["host2"].servicer.prepare.sweep() == []  # nothing left for host2's sweep to remove
    assert fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2") and fleet["host1"].host.exists(f"{IMAGES}/g1.qcow2")
    assert await claim_released(store, r)


async def test_a_cancel_before_libvirt_shows_the_job_keeps_the_guest_where_the_record_says(store, fleet, hosts):
    """The source agent's Migrate call reached libvirt, whose job is not registered yet: the abort
    finds no job. Was: the rollback ended CANCELLED ("guest runs on source") and the call then
    started the job, moving the guest to host2 under that record."""
    fleet.add_guest("host1", "g1", local_disk=False)
    gate = fleet["host1"].hv.hold_calls("migrate")  # the call waits in libvirt before its job exists
    m = await submit(store, fleet, "g1", "host1", "host2", options=replace(COPY, storage=StorageMode.SHARED))
    async with engine(store, hosts):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        await until(lambda: "migrate" in fleet["host1"].hv.calls)
        await request_cancel(store, m.id)
        r = await final(store, m.id)
        assert not fleet["host1"].servicer._migrating  # the record ended only once the Migrate call had
        gate.set()  # libvirt's job starts now: aborted as it shows
        await until(lambda: bool(fleet["host1"].hv.migrate_calls) and not fleet["host1"].hv.jobs)
        await asyncio.sleep(0.1)
        r2 = await read(store, m.id)
    assert r.phase is Phase.CANCELLED and r2.phase is Phase.CANCELLED, [(h.phase.name, h.reason) for h in r.history]
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}, "the record says CANCELLED: the guest must not move"
    assert fleet.prepares("host2") == []


async def test_a_commit_that_keeps_failing_names_the_prepare_and_the_source_disks_left(store, fleet, hosts):
    """The guest landed on host2, whose CommitIncoming keeps failing. Was: FINISH_INCOMPLETE "could
    not confirm g1 runs on host2 only", and host1's copied disk (removed only after a commit) named
    nowhere."""
    fleet.add_guest("host1", "g1")

    async def refuse(prepare_id: str, *, require_landed: bool = False) -> bool:
        raise FailedPrecondition("cannot write the prepare record", reason="STATE_WRITE_FAILED")

    fleet["host2"].servicer.prepare.commit = refuse  # type: ignore[method-assign]
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts, timeouts=replace(FAST, max_retries=1)):
        r = await final(store, m.id)
    assert r.phase is Phase.FAILED and r.error.reason == "COMMIT_FAILED", [(h.phase.name, h.reason) for h in r.history]
    assert "STATE_WRITE_FAILED" in r.error.message and f"prepare {r.prepare_id}" in r.error.hint
    assert f"remove {IMAGES}/g1.qcow2 on host1 by hand" in r.error.hint
    assert fleet.where("g1") == {"host2": DomainState.RUNNING}
    assert fleet["host1"].host.exists(f"{IMAGES}/g1.qcow2")  # left, as the hint says


@contextlib.asynccontextmanager
async def copy_left_on_host2(
    store: MemoryStore, fleet: Fleet, hosts: FleetDirectory, stale_incoming_s: float
) -> AsyncIterator[tuple[str, str]]:
    """g1's migration to host2 fails at its third step, while host2 holds the incoming domain as
    libvirt leaves it after a restart mid-migration: paused for the migration, transient. Yields
    (migration id, g1's UUID) with the engine running and the job held before its failure."""
    uuid = fleet.add_guest("host1", "g1")
    xml = fleet["host1"].hv.domains[uuid].xml
    fleet["host1"].hv.fail_migration("g1", at_step=3)
    fleet["host1"].hv.hold()
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts, timeouts=replace(FAST, stale_incoming_s=stale_incoming_s)):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        fleet["host2"].hv.add_domain(xml, state=DomainState.PAUSED, persistent=False)
        fleet["host2"].hv.domains[uuid].paused_by_libvirt = True  # libvirt's incoming copy, never run
        yield m.id, uuid


async def test_an_incoming_copy_libvirt_left_paused_on_the_target_is_discarded(store, fleet, hosts):
    """A target libvirtd restarted mid-migration can keep the incoming domain paused after the
    source's job failed (seen in a chaos trial). The record waits ``stale_incoming_s`` for libvirt
    to remove it, then the target's cleanup destroys it, and the migration rolls back cleanly."""
    async with copy_left_on_host2(store, fleet, hosts, 0.3) as (mid, _):
        fleet["host1"].hv.release()
        r = await final(store, mid)
    history = [(h.phase.name, h.reason) for h in r.history]
    assert r.phase is Phase.ROLLED_BACK and r.error is not None and r.error.reason, history
    assert any("libvirt left it behind; discarding it" in why for _, why in history), history
    assert "destroy_incoming" in fleet["host2"].hv.calls
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert fleet.prepares("host2") == [] and not fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2")
    assert await claim_released(store, r)


async def test_an_incoming_copy_libvirt_cannot_destroy_is_reported_and_retried_not_an_agent_lost(store, fleet, hosts):
    """libvirt 9.0, restarted after it was killed while it started the copy's QEMU, keeps the copy
    under a job that never ends and fails its destroy (seen in a chaos trial): the agent and
    libvirtd answer, so the record says what is stuck and what to do, never "agent lost", and
    the rollback is retried until the copy can go (here: the third try)."""
    async with copy_left_on_host2(store, fleet, hosts, 0.3) as (mid, uuid):
        stuck = le.incoming_stuck("g1", uuid, "qemu:///system", "cannot acquire state change lock")
        fleet["host2"].hv.fail("destroy_incoming", stuck, times=2)
        fleet["host1"].hv.release()
        r = await final(store, mid)
    history = [(h.phase.name, h.reason) for h in r.history]
    assert r.phase is Phase.ROLLED_BACK, history
    failed = [why for _, why in history if "INCOMING_COPY_STUCK" in why]
    assert len(failed) == 2 and "stop libvirtd" in failed[0] and "on host2" in failed[0], history
    assert not any("lost" in why for _, why in history), history
    assert fleet["host2"].hv.calls.count("destroy_incoming") == 3
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert fleet.prepares("host2") == [] and not fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2")
    assert await claim_released(store, r)


async def test_a_paused_target_copy_is_never_discarded_while_the_source_does_not_execute(store, fleet, hosts):
    """The source paused (it may have handed the guest over): the target's copy is not a leftover;
    the record waits, as for any placement that has not settled, and nothing is destroyed."""
    async with copy_left_on_host2(store, fleet, hosts, 0.1) as (mid, uuid):
        fleet["host1"].hv.domains[uuid].state = DomainState.PAUSED
        fleet["host1"].hv.release()
        await asyncio.sleep(1.0)
        r = await read(store, mid)
    assert r.phase is Phase.MIGRATING and r.stale_incoming_since is None, phases(r)
    assert "destroy_incoming" not in fleet["host2"].hv.calls
    assert fleet.where("g1") == {"host1": DomainState.PAUSED, "host2": DomainState.PAUSED}


async def test_migration_that_does_not_converge_rolls_back(store, fleet, hosts):
    fleet.add_guest("host1", "g1", dirty=1 << 30)  # dirties memory faster than the link copies it
    m = await submit(
        store, fleet, "g1", "host1", "host2", options=replace(COPY, bandwidth_mibps=128, completion_timeout_s=1)
    )
    async with engine(store, hosts):
        r = await final(store, m.id)
    assert r.phase is Phase.ROLLED_BACK, [(h.phase.name, h.reason) for h in r.history]
    assert r.error is not None and r.error.reason == "MIGRATION_TIMEOUT" and "post-copy" in r.error.hint
    assert r.progress is not None and r.progress.stats.iteration > 1  # it tried, iteration after iteration
    assert fleet.where("g1") == {"host1": DomainState.RUNNING} and fleet.prepares("host2") == []


async def test_progress_writes_are_throttled(store, fleet, hosts):
    fleet.add_guest("host1", "g1")
    m = await submit(store, fleet, "g1", "host1", "host2", options=replace(COPY, bandwidth_mibps=16))
    writes: list[MigrationRecord] = []

    async def count() -> None:
        _, revision = await store.list("migrations/")
        async for event in store.watch(migration_key(m.id), revision + 1):
            if isinstance(event, Resync) or event.kind is not EventKind.PUT:
                continue
            writes.append(decode(event.entry.value, event.entry.mod_revision))

    counter = asyncio.get_running_loop().create_task(count())
    async with engine(store, hosts, progress_write_s=0.2):
        r = await final(store, m.id)
    counter.cancel()
    assert r.phase is Phase.SUCCEEDED
    migrating = [w for w in writes if w.phase is Phase.MIGRATING]
    started = next(h.at for h in r.history if h.phase is Phase.MIGRATING)
    ended = next(h.at for h in r.history if h.phase is Phase.FINISHING)
    seconds = (ended - started).total_seconds()
    assert seconds > 0.5  # long enough to report progress often
    assert 2 <= len(migrating) <= 1 + seconds / 0.2 + 2  # entering + at most one per 0.2 s (+ slack)
    processed = [w.progress.stats.disk_processed + w.progress.stats.memory_processed for w in migrating if w.progress]
    assert processed == sorted(processed)  # never backwards


# ---------------------------------------------------------------- leader change, lost agents


async def test_new_leader_resumes_a_running_migration(store, fleet, hosts):
    uuid = fleet.add_guest("host1", "g1")
    fleet["host1"].hv.hold()
    m = await submit(store, fleet, "g1", "host1", "host2")
    a = Running(store, hosts)
    await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
    await until(lambda: uuid in fleet["host1"].hv.jobs)
    await a.stop()  # demoted mid-migration
    assert a.task.done() and all(r.done for r in a.engine.runners.values())  # nothing of A runs
    await asyncio.sleep(0.05)
    job = fleet["host1"].hv.jobs.get(uuid)
    assert job is not None and not job.abort  # the libvirt job was left running
    async with engine(store, hosts):  # the next leader
        fleet["host1"].hv.release()
        r = await final(store, m.id)
    assert r.phase in (Phase.SUCCEEDED, Phase.ROLLED_BACK), [(h.phase.name, h.reason) for h in r.history]
    assert len(fleet.running_on("g1")) == 1
    assert fleet.running_on("g1") == (["host2"] if r.phase is Phase.SUCCEEDED else ["host1"])
    assert r.phase is Phase.SUCCEEDED  # here the job completed: it lands
    assert fleet.prepares("host2") == [] and await claim_released(store, r)
    # the new leader never saw the Migrate stream end, yet the record has the job's figures (target's)
    assert r.result is not None and r.result.time_elapsed_ms > 0, r.result
    # and its progress is the landed job's, not the old leader's last snapshot (bug 5)
    assert r.progress is not None and r.progress.phase is MigrationPhase.COMPLETED
    assert (r.progress.stats.memory_remaining, r.progress.stats.disk_remaining) == (0, 0)


async def test_source_agent_lost_mid_migration(store, fleet, hosts):
    uuid = fleet.add_guest("host1", "g1")
    fleet["host1"].hv.hold()
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        await until(lambda: uuid in fleet["host1"].hv.jobs)
        await hosts.down("host1")  # agent gone; libvirt's job goes on
        await wait_for(store, m.id, lambda r: any("lost" in h.reason for h in r.history))
        fleet["host1"].hv.release()
        await until(lambda: uuid not in fleet["host1"].hv.jobs)  # the job landed meanwhile
        assert (await read(store, m.id)).phase is Phase.MIGRATING  # nobody could tell yet
        await hosts.up("host1")
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED, [(h.phase.name, h.reason) for h in r.history]
    assert fleet.where("g1") == {"host2": DomainState.RUNNING}
    assert fleet.prepares("host2") == [] and await claim_released(store, r)


async def test_a_migration_queued_for_a_host_that_is_down_says_so_and_starts_when_it_is_back(store, fleet, hosts):
    """Seen on the lab: `ferry migrate app2 --to host2` with host2's libvirtd down printed
    "pending: submitted" and nothing more; the record said nothing of why it did not start."""
    fleet.add_guest("host1", "g1")
    await hosts.down("host2")
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts):
        r = await wait_for(store, m.id, lambda r: r.history[-1].reason.startswith("waiting: "))
        assert r.phase is Phase.PENDING
        assert r.history[-1].reason == (
            "waiting: host2 is not available (AGENT_NOT_REGISTERED: no agent is registered for host2: ferry-agent "
            "does not run there, or it cannot reach etcd (its registration ends with its lease)); it starts when "
            "host2 is back (or cancel it)"
        )
        await asyncio.sleep(0.2)  # later plans change nothing: noted once
        assert [h.reason.startswith("waiting: ") for h in (await read(store, m.id)).history].count(True) == 1
        await hosts.up("host2")
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED, [(h.phase.name, h.reason) for h in r.history]


async def test_target_agent_lost_while_finishing(store, fleet, hosts):
    uuid = fleet.add_guest("host1", "g1")
    fleet["host1"].hv.hold()
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        await until(lambda: uuid in fleet["host1"].hv.jobs)
        await hosts.down("host2")
        fleet["host1"].hv.release()  # lands while host2's agent is away
        await wait_for(store, m.id, lambda r: r.phase is Phase.FINISHING and r.lost_host == "host2")
        await hosts.up("host2")
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED, [(h.phase.name, h.reason) for h in r.history]
    assert fleet.where("g1") == {"host2": DomainState.RUNNING} and fleet.prepares("host2") == []


# Phase deadlines far away: only the wait for a lost agent may end these (as in a real fleet,
# where Migrating's deadline is minutes to hours: 44 min in the fault campaign)
SLOW = replace(FAST, migrating_min_s=600, preflight_s=600, preparing_s=600, finishing_s=600, rolling_back_s=600)


@pytest.mark.parametrize(("host", "reason"), [("host1", "LIBVIRT_UNREACHABLE"), ("host2", "TARGET_UNREACHABLE")])
async def test_libvirtd_killed_mid_migration_rolls_back_when_it_is_back(store, fleet, hosts, host, reason):
    """Bug 1 (source and target): the job failed with libvirtd, placement could not be read, and
    the record stayed Migrating until its deadline (the agent kept its lease: no host change came)."""
    uuid = fleet.add_guest("host1", "g1")
    fleet["host1"].hv.hold()
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts, timeouts=SLOW):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        await until(lambda: uuid in fleet["host1"].hv.jobs)
        fleet[host].hv.reachable = False  # libvirtd dies: the job with it
        fleet["host1"].hv.release()
        await wait_for(store, m.id, lambda r: r.lost_host == host)
        await asyncio.sleep(0.3)  # probes fail meanwhile
        assert (await read(store, m.id)).phase is Phase.MIGRATING
        fleet[host].hv.reachable = True  # libvirtd is back
        r = await final(store, m.id, timeout=3)  # the next probe (at most 5 s apart) finds it
    assert r.phase is Phase.ROLLED_BACK, [(h.phase.name, h.reason) for h in r.history]
    assert r.error is not None and r.error.reason == reason
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    assert fleet.prepares("host2") == [] and not fleet["host2"].host.exists(f"{IMAGES}/g1.qcow2")
    assert any(h.reason.startswith(f"{host} available again after") for h in r.history)


async def test_target_agent_restarted_within_its_lease_while_finishing(store, fleet, hosts):
    """Bug 2: the target's agent restarted without its registration changing; the record waited
    for the Finishing deadline (116 s in the campaign)."""
    uuid = fleet.add_guest("host1", "g1")
    fleet["host1"].hv.hold()
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts, timeouts=SLOW):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        await until(lambda: uuid in fleet["host1"].hv.jobs)
        await fleet["host2"].stop()  # killed; its lease (and so the directory) still says available
        fleet["host1"].hv.release()  # the job lands while the agent is away
        await wait_for(store, m.id, lambda r: r.phase is Phase.FINISHING and r.lost_host == "host2")
        await fleet["host2"].start()  # back within its lease: nobody announces it
        r = await final(store, m.id, timeout=3)
    assert r.phase is Phase.SUCCEEDED, [(h.phase.name, h.reason) for h in r.history]
    assert fleet.where("g1") == {"host2": DomainState.RUNNING} and fleet.prepares("host2") == []


async def test_a_source_agent_restart_before_preparing_does_not_spend_the_attempts(store, fleet, hosts):
    """Bug 3: preflight re-queued at once on a lost agent: three attempts in 70 ms, then Failed."""
    fleet.add_guest("host1", "g1")
    await fleet["host1"].stop()  # restarting; still registered
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts, timeouts=SLOW):
        await wait_for(store, m.id, lambda r: r.lost_host == "host1")
        await asyncio.sleep(1.0)
        assert (await read(store, m.id)).phase is Phase.PREFLIGHT  # waiting, not failed
        await fleet["host1"].start()
        r = await final(store, m.id, timeout=4)
    assert r.phase is Phase.SUCCEEDED and r.attempt == 1, [(h.phase.name, h.reason) for h in r.history]
    assert fleet.where("g1") == {"host2": DomainState.RUNNING}


async def test_an_agent_back_while_a_prepare_is_under_way_does_not_requeue_beside_it(store, fleet, hosts):
    """Seen in the fleet simulation: a target's agent registered anew while its PrepareIncoming
    was under way; recovery listed its prepares before the prepare landed and re-queued the
    record, the prepare landed anyway, and the next attempt failed on it (PREPARE_EXISTS)."""
    fleet.add_guest("host1", "g1")
    m = await submit(store, fleet, "g1", "host1", "host2")
    entered, gate = asyncio.Event(), asyncio.Event()
    async with engine(store, hosts) as running:
        actions = running.engine._ctx.actions
        prepare = actions.prepare_target

        async def held(r: MigrationRecord) -> Any:
            entered.set()
            await gate.wait()
            return await prepare(r)

        actions.prepare_target = held  # type: ignore[method-assign]
        await asyncio.wait_for(entered.wait(), 4)
        hosts._announce(HostChange("host2", available=True, restarted=True))
        await asyncio.sleep(0.3)
        gate.set()
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED and r.attempt == 1, [(h.phase.name, h.reason) for h in r.history]
    assert fleet.where("g1") == {"host2": DomainState.RUNNING} and fleet.prepares("host2") == []


async def test_an_agent_back_while_the_job_starts_does_not_abort_it(store, fleet, hosts):
    """Seen in the fleet simulation: an agent registered anew just as a job was asked for;
    recovery found the guest on the source and no job yet, took the job for ended, rolled the
    record back and aborted the job that then started (MIGRATION_INTERRUPTED)."""
    fleet.add_guest("host1", "g1")
    gate = fleet["host1"].hv.hold_calls("migrate")  # libvirt's migrate call not yet begun
    m = await submit(store, fleet, "g1", "host1", "host2")
    async with engine(store, hosts):
        await wait_for(store, m.id, lambda r: r.phase is Phase.MIGRATING)
        await until(lambda: "migrate" in fleet["host1"].hv.calls)
        hosts._announce(HostChange("host1", available=True, restarted=True))
        hosts._announce(HostChange("host2", available=True, restarted=True))
        await asyncio.sleep(0.3)
        gate.set()
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED and r.attempt == 1, [(h.phase.name, h.reason) for h in r.history]
    assert "abort_job" not in fleet["host1"].hv.calls
    assert fleet.where("g1") == {"host2": DomainState.RUNNING}


# ---------------------------------------------------------------- slots


async def watch_slots(store: Store, source: str, seen: list[int]) -> None:
    """The most records from ``source`` holding a slot at once, at every store revision."""
    entries, revision = await store.list("migrations/")
    phase = {e.key: decode(e.value, e.mod_revision) for e in entries}
    async for event in store.watch("migrations/", revision + 1):
        if isinstance(event, Resync):
            phase = {e.key: decode(e.value, e.mod_revision) for e in event.entries}
        elif event.kind is EventKind.PUT:
            phase[event.entry.key] = decode(event.entry.value, event.entry.mod_revision)
        seen.append(sum(1 for r in phase.values() if r.source_host == source and r.phase.holds_slot))


async def test_one_outbound_migration_at_a_time(store, fleet, hosts):
    for vm in ("g1", "g2", "g3"):
        fleet.add_guest("host1", vm)
    records = [
        await submit(store, fleet, vm, "host1", target)
        for vm, target in (("g1", "host2"), ("g2", "host3"), ("g3", "host2"))
    ]
    holding: list[int] = []
    watcher = asyncio.get_running_loop().create_task(watch_slots(store, "host1", holding))
    with MaxConcurrency(list(fleet.agents.values())) as jobs:
        async with engine(store, hosts, Limits(per_host_outbound=1, per_host_inbound=2, cluster=5)):
            done = [await final(store, m.id) for m in records]
    watcher.cancel()
    assert [r.phase for r in done] == [Phase.SUCCEEDED] * 3, [[h.reason for h in r.history] for r in done]
    assert jobs.per_source["host1"] == 1 and jobs.cluster == 1  # never two jobs at once
    assert max(holding) == 1  # never two slots from host1 at once
    assert fleet.running_on("g1") == ["host2"] and fleet.running_on("g2") == ["host3"]
    assert fleet.running_on("g3") == ["host2"]


async def test_the_next_migration_prepares_while_the_slot_is_busy_and_its_job_starts_at_once(store, fleet, hosts):
    """prepare_ahead = 1: g2 runs its preflight and prepare while g1's job holds host1's only
    slot, and starts its job when the slot frees; jobs never exceed the limit, nor records
    ahead the allowance."""
    for vm in ("g1", "g2", "g3"):
        fleet.add_guest("host1", vm)
    records = [await submit(store, fleet, vm, "host1", "host2") for vm in ("g1", "g2", "g3")]
    seen: list[MigrationRecord] = []
    gate = fleet["host1"].hv.hold_calls("migrate")
    limits = Limits(per_host_outbound=1, per_host_inbound=2, cluster=5, prepare_ahead=1)
    with MaxConcurrency(list(fleet.agents.values())) as jobs:
        async with engine(store, hosts, limits) as e:
            e.engine.observers.append(seen.append)
            await wait_for(store, records[1].id, lambda r: r.phase is Phase.PREPARING and bool(r.prepare_id))
            g3 = await store.get(migration_key(records[2].id))
            assert g3 is not None and decode(g3.value, g3.mod_revision).phase is Phase.PENDING  # one ahead at most
            gate.set()
            done = [await final(store, m.id) for m in records]
    assert [r.phase for r in done] == [Phase.SUCCEEDED] * 3, [[h.reason for h in r.history] for r in done]
    assert jobs.per_source["host1"] == 1  # never two jobs at once
    for vm in ("g1", "g2", "g3"):  # each runs on the target alone, nothing prepared left behind
        assert fleet.where(vm) == {"host2": DomainState.RUNNING}
    assert fleet.prepares("host2") == []
    reasons = [h.reason for h in done[1].history]
    assert reasons.index("target prepared (" + done[1].prepare_id + "); waiting for a slot") < next(
        i for i, why in enumerate(reasons) if why.startswith("slot granted")
    )
    latest: dict[str, MigrationRecord] = {}
    for r in seen:  # every version the engine saw: one job slot, one record ahead at most
        latest[r.id] = r
        holding = [x for x in latest.values() if x.phase.holds_slot]
        assert sum(1 for x in holding if not x.ahead) <= 1 and sum(1 for x in holding if x.ahead) <= 1


# ---------------------------------------------------------------- preflight (shared with the API)


async def test_preflight_finds_the_vm_and_plans_its_disks(fleet, hosts):
    fleet.add_guest("host1", "g1")
    report = await preflight(hosts, "g1", "host2", MigrationOptions(), fleet.mapping("host1", "host2"))
    assert report.ok, report.blockers
    assert report.source_host == "host1" and report.storage is StorageMode.COPY_ALL  # auto: vda is local
    plans = {p.target: (p.copy, p.destination) for p in report.disks}
    assert plans == {"vda": (True, f"{IMAGES}/g1.qcow2"), "vdb": (False, "/srv/shared/g1-data.raw")}
    assert fleet["host2"].host.created == [] and fleet.prepares("host2") == []  # touched nothing


async def test_preflight_lists_every_blocker(fleet, hosts):
    fleet.add_guest("host1", "g1")
    report = await preflight(
        hosts, "g1", "host2", MigrationOptions(), fleet.mapping("host1", "host2"), storage=StorageMode.SHARED
    )
    # vda is local: the coordinator's check and the target's dry run both say so, with a fix each
    assert {b.reason for b in report.blockers} == {"DISK_NOT_SHARED", "SHARED_DISK_MISSING"}
    assert all(b.hint for b in report.blockers)
    report = await preflight(hosts, "g1", "host1", MigrationOptions(), fleet.mapping("host1", "host2"))
    assert [b.reason for b in report.blockers] == ["SAME_HOST"]
    report = await preflight(hosts, "nope", "host2", MigrationOptions(), fleet.mapping("host1", "host2"))
    assert [b.reason for b in report.blockers] == ["VM_UNKNOWN"]
    report = await preflight(hosts, "g1", "host2", MigrationOptions(), fleet.mapping("host1", "host3"))
    assert [b.reason for b in report.blockers] == ["BRIDGE_MISSING"]  # the target's dry run


async def test_preflight_names_unavailable_agents(fleet, hosts):
    fleet.add_guest("host1", "g1")
    await hosts.down("host2")
    report = await preflight(hosts, "g1", "host2", MigrationOptions(), fleet.mapping("host1", "host2"))
    assert [b.reason for b in report.blockers] == ["TARGET_UNKNOWN"] and report.unavailable == ("host2",)
    await fleet["host1"].stop()  # registered, but does not answer
    report = await preflight(
        hosts, "g1", "host3", MigrationOptions(), fleet.mapping("host1", "host3"), source_host="host1"
    )
    assert "AGENT_UNREACHABLE" in {b.reason for b in report.blockers}
    assert "VM_UNKNOWN" not in {b.reason for b in report.blockers} and report.unavailable == ("host1",)


async def test_a_vm_gone_from_its_source_is_named_where_it_runs_now(fleet, hosts):
    """A queued migration whose VM was moved meanwhile (by hand, or its record restored from an
    older etcd backup): the source has no such domain, and preflight says where it is."""
    uuid = fleet.add_guest("host1", "g1")
    dom = fleet["host1"].hv.domains.pop(uuid)  # virsh migrate by hand: now on host3
    fleet["host3"].hv.add_domain(dom.xml)
    mapping = fleet.mapping("host1", "host2")
    report = await preflight(hosts, uuid, "host2", MigrationOptions(), mapping, source_host="host1")
    [b] = report.blockers
    assert b.reason == "VM_UNKNOWN" and b.message.startswith("g1 is no longer on host1: it runs on host3 now")
    assert "ferry migrate g1" in b.hint
    fleet["host3"].hv.domains.clear()  # and nowhere at all: as before
    [b] = (await preflight(hosts, uuid, "host2", MigrationOptions(), mapping, source_host="host1")).blockers
    assert b.reason == "VM_UNKNOWN" and b.message == f"no host reports a VM named {uuid!r}"


# ---------------------------------------------------------------- the engine itself


async def test_a_failing_engine_task_ends_run_with_an_error(store, fleet, hosts):
    """The election steps down when its leader's duties fail: run() must not return quietly."""

    async def broken_changes():
        raise RuntimeError("directory broke")
        yield  # pragma: no cover - makes this an async generator

    hosts.changes = broken_changes  # type: ignore[method-assign]
    engine_ = Engine(store, hosts, limits=Limits(), timeouts=FAST, clock=now, prepare_ttl_s=60, tick_s=0.05)
    with pytest.raises(FerryError) as exc:
        await asyncio.wait_for(engine_.run(), 3)
    assert exc.value.reason == "ENGINE_FAILED"


async def test_stop_before_the_store_answers(fleet, hosts):
    class DownStore(MemoryStore):
        async def list(self, prefix):
            raise Unavailable("store down", reason="STORE_UNAVAILABLE")

    down = DownStore()
    engine_ = Engine(down, hosts, limits=Limits(), timeouts=FAST, clock=now, prepare_ttl_s=60, store_retry_s=0.01)
    task = asyncio.get_running_loop().create_task(engine_.run())
    await asyncio.sleep(0.1)
    assert not task.done()  # retrying
    await asyncio.wait_for(engine_.stop(), 2)
    await asyncio.wait_for(task, 2)
    await down.close()


# ---------------------------------------------------------------- the policy, predicted in Preflight


async def busy_guest_under(policy, store, fleet, hosts) -> MigrationRecord:
    """g1 dirtying 1 GiB/s on host1, submitted to host2 at a 128 MiB/s cap, its record then put
    under ``policy``; the engine runs it to its end (the final record)."""
    fleet.add_guest("host1", "g1", dirty=1 << 30)
    m = await submit(store, fleet, "g1", "host1", "host2", options=replace(COPY, bandwidth_mibps=128))
    entry = await store.get(migration_key(m.id))
    await store.update(entry.key, encode(replace(m, policy=policy)), entry.mod_revision)
    async with engine(store, hosts):
        return await final(store, m.id)


async def test_the_preflight_phase_predicts_and_the_policy_runs_with_its_actions_recorded(store, fleet, hosts):
    """A guest dirtying 1 GiB/s at a 128 MiB/s cap under a post-copy-on-prediction policy: the
    Preflight phase measures it (the fake source) and predicts no convergence; the driver switches
    after iteration 1; the record keeps the prediction, the policy and the step with its reason."""
    from ferry.convergence import ConvergencePolicy, PostcopyMode

    busy = ConvergencePolicy(name="busy", bandwidth_mibps=128, postcopy=PostcopyMode.ON_PREDICTION)
    r = await busy_guest_under(busy, store, fleet, hosts)
    assert r.phase is Phase.SUCCEEDED, r.history
    assert r.prediction is not None and r.prediction.converges is False and r.prediction.need == "post-copy"
    assert r.result is not None and r.result.postcopy and not r.result.downtime_measured
    assert [(e.action.action, e.action.by) for e in r.actions] == [("start-postcopy", "policy busy")]
    assert "predicted not to converge" in r.actions[0].action.reason
    assert fleet.where("g1") == {"host2": DomainState.RUNNING}


async def test_a_policy_that_refuses_what_it_cannot_finish_fails_in_preflight_touching_nothing(store, fleet, hosts):
    from ferry.convergence import ConvergencePolicy

    strict = ConvergencePolicy(name="strict", bandwidth_mibps=128, refuse_unfinishable=True)
    r = await busy_guest_under(strict, store, fleet, hosts)
    assert r.phase is Phase.FAILED and r.error is not None and r.error.reason == "WILL_NOT_CONVERGE"
    assert "will not converge at 128 MiB/s" in r.error.message
    assert "PREPARING" not in phases(r) and fleet.prepares("host2") == []
    assert fleet.where("g1") == {"host1": DomainState.RUNNING}
