"""Fencing, end to end on the in-memory store and real agent servers over fakes: a leader paused
past its lease (as by SIGSTOP: its store calls, its clock and its queued agent calls all frozen)
is replaced; when it runs again, its queued calls reach the agents with its old term and are
refused (STALE_LEADER), and the new leader's decisions stand.

The scenario is the dangerous one: the old leader had written Migrating and was about to send
Migrate for a shared-storage guest. The new leader found no job, rolled the migration back and
said so in the record. Unfenced, the old leader's Migrate would then move the guest while the
record says it stayed: a VM lost in the records.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ferry.coordinator.agent_client import GrpcAgentClient
from ferry.coordinator.election import Election
from ferry.coordinator.engine import Engine
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import MigrationRecord, decode, encode, new_migration
from ferry.coordinator.slots import Limits
from ferry.errors import FailedPrecondition, FerryError
from ferry.keys import encode_id, idempotency_key, migration_key, vm_active_key
from ferry.model import DomainState, MigrationOptions, MigrationResult, StorageMode
from ferry.testing.fleet import Fleet, FleetDirectory, start_fleet
from ferry.testing.memory_store import MemoryStore

TTL_S = 1
FAST = Timeouts(
    preflight_s=3,
    preparing_s=3,
    migrating_min_s=30,
    migrating_grace_s=1,
    finishing_s=3,
    rolling_back_s=3,
    retry_base_s=0.2,
    retry_max_s=0.5,
    observe_delay_s=0.02,
)
SHARED = MigrationOptions(storage=StorageMode.SHARED, unsafe=True)


def now() -> datetime:
    return datetime.now(UTC)


class PausableStore:
    """The store as one coordinator process sees it: while paused, none of its calls return and
    no watch event reaches it (the process is stopped); the store itself goes on (leases expire)."""

    def __init__(self, base: MemoryStore) -> None:
        self.base = base
        self._running = asyncio.Event()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def __getattr__(self, name: str) -> Any:
        call = getattr(self.base, name)

        async def paused_call(*args: Any, **kw: Any) -> Any:
            await self._running.wait()
            result = await call(*args, **kw)
            await self._running.wait()
            return result

        return paused_call

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[Any]:
        async for event in self.base.watch(prefix, start_revision):
            await self._running.wait()
            yield event


class FreezableClock:
    """A monotonic clock that stands still while frozen and jumps ahead when thawed."""

    def __init__(self) -> None:
        self.frozen_at: float | None = None

    def __call__(self) -> float:
        return self.frozen_at if self.frozen_at is not None else time.monotonic()

    def freeze(self) -> None:
        self.frozen_at = time.monotonic()

    def thaw(self) -> None:
        self.frozen_at = None


class GatedClient:
    """An agent client whose Migrate waits at ``gate`` before it is sent (a call queued in a
    process that is about to be paused); what the agent answered is kept in ``outcomes``."""

    def __init__(self, inner: GrpcAgentClient, gate: asyncio.Event, outcomes: list[tuple[str, str]]) -> None:
        self.inner = inner
        self.host = inner.host
        self.gate = gate
        self.outcomes = outcomes
        self.waiting = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def migrate(self, vm: str, **kw: Any) -> AsyncIterator[Any]:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        try:
            async for item in self.inner.migrate(vm, **kw):
                if isinstance(item, MigrationResult):
                    self.outcomes.append(("Migrate", "OK"))
                yield item
        except FerryError as err:
            self.outcomes.append(("Migrate", err.reason))
            raise


class GatedDirectory:
    def __init__(self, hosts: FleetDirectory, gate: asyncio.Event) -> None:
        self.hosts = hosts
        self.gate = gate
        self.outcomes: list[tuple[str, str]] = []
        self.clients: dict[str, GatedClient] = {}

    def client(self, host: str) -> GatedClient:
        if host not in self.clients:
            self.clients[host] = GatedClient(self.hosts.client(host), self.gate, self.outcomes)
        return self.clients[host]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hosts, name)


class Leader:
    """A candidate whose duties, while elected, are an engine that sends its term."""

    def __init__(self, store: Any, hosts: Any, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.election = Election(store, name, f"{name}:1", ttl_s=TTL_S, clock=clock)
        self.store, self.hosts = store, hosts
        self.engines: list[Engine] = []
        self.task = asyncio.get_running_loop().create_task(self.election.run(self._elected, self._demoted))

    async def _elected(self) -> None:
        engine = Engine(
            self.store,
            self.hosts,
            limits=Limits(),
            timeouts=FAST,
            clock=now,
            prepare_ttl_s=60,
            tick_s=0.05,
            progress_write_s=0.05,
            job_poll_s=0.02,
            store_retry_s=0.05,
            leader_term=self.election.term,
        )
        self.engines.append(engine)
        await engine.run()

    async def _demoted(self) -> None:
        if self.engines:
            await self.engines[-1].stop()

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        for engine in self.engines:
            await engine.stop()


async def until(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
    return got


async def read(store: MemoryStore, migration_id: str) -> MigrationRecord:
    entry = await store.get(migration_key(migration_id))
    assert entry is not None
    return decode(entry.value, entry.mod_revision)


async def wait_phase(
    store: MemoryStore, migration_id: str, phases: set[Phase], timeout: float = 5.0
) -> MigrationRecord:
    deadline = time.monotonic() + timeout
    while (r := await read(store, migration_id)).phase not in phases:
        assert time.monotonic() < deadline, [(h.phase.name, h.reason) for h in r.history]
        await asyncio.sleep(0.01)
    return r


async def submit(store: MemoryStore, fleet: Fleet, n: int, target: str) -> MigrationRecord:
    uuid = next(d.uuid for a in fleet.agents.values() for d in a.hv.domains.values() if d.name == "g1")
    source = next(n for n, a in fleet.agents.items() if a.state_of("g1") is DomainState.RUNNING)
    record = new_migration(
        id=f"m-{n}",
        vm="g1",
        vm_uuid=uuid,
        source_host=source,
        target_host=target,
        now=now(),
        timeouts=FAST,
        options=SHARED,
        mapping=fleet.mapping(source, target),
        idempotency_key=f"key-{n}",
        memory_bytes=256 << 20,
    )
    await store.create(vm_active_key(uuid), encode_id(record.id))
    await store.create(idempotency_key(record.idempotency_key), encode_id(record.id))
    await store.create(migration_key(record.id), encode(record))
    return record


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, 2)
    yield f
    await f.close()


async def test_a_paused_leaders_queued_calls_are_refused_and_the_new_leaders_stand(fleet):
    fleet.add_guest("host1", "g1", local_disk=False)  # shared storage: an unfenced Migrate would move it
    store = MemoryStore()
    gate = asyncio.Event()  # A's Migrate waits here: queued when A is paused
    a_store, a_clock = PausableStore(store), FreezableClock()
    a_hosts = GatedDirectory(FleetDirectory(fleet), gate)
    a = Leader(a_store, a_hosts, "a", clock=a_clock)
    b: Leader | None = None
    try:
        await until(a.election.is_leader)
        term_a = a.election.term
        m1 = await submit(store, fleet, 1, "host2")
        await wait_phase(store, m1.id, {Phase.MIGRATING})
        await until(lambda: a_hosts.clients.get("host1") and a_hosts.clients["host1"].waiting)

        # A stops (SIGSTOP) with its Migrate queued; its lease runs out; B takes over
        a_store.pause()
        a_clock.freeze()
        b = Leader(store, FleetDirectory(fleet), "b")
        await until(b.election.is_leader, timeout=3 * TTL_S + 2)
        assert b.election.term > term_a
        # no job ran: B rolled it back and ran it again, with its own term
        r = await wait_phase(store, m1.id, {Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK})
        history = [(h.phase.name, h.reason) for h in r.history]
        assert r.phase is Phase.SUCCEEDED and r.attempt == 2, history
        assert any("MIGRATION_INTERRUPTED" in why for _, why in history), history
        assert a.election.is_leader()  # A, frozen, does not know yet

        # A runs again: its queued Migrate goes out first (it was on its way), with its old
        # term, and is refused; A's engine stops at that refusal, and A steps down
        gate.set()
        await until(lambda: a_hosts.outcomes)
        assert a_hosts.outcomes == [("Migrate", "STALE_LEADER")]
        a_clock.thaw()
        a_store.resume()
        await until(lambda: not a.election.is_leader())
        assert all(not e._running for e in a.engines)  # A's engine stopped acting
        assert fleet.where("g1") == {"host2": DomainState.RUNNING}  # the guest is where the record says
        after = await read(store, m1.id)
        assert after.phase is Phase.SUCCEEDED and after.revision == r.revision  # A wrote nothing more

        # the new leader's calls go on working
        m2 = await submit(store, fleet, 2, "host1")
        done = await wait_phase(store, m2.id, {Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK})
        assert done.phase is Phase.SUCCEEDED, [(h.phase.name, h.reason) for h in done.history]
        assert fleet.where("g1") == {"host1": DomainState.RUNNING}
    finally:
        gate.set()
        a_store.resume()
        a_clock.thaw()
        await a.stop()
        if b is not None:
            await b.stop()
        await store.close()


async def test_an_agent_refuses_changes_from_an_older_term_and_answers_its_reads(fleet, tmp_path):
    uuid = fleet.add_guest("host1", "g1")
    client = fleet.client("host1")
    await client.get_job("g1", leader_term=9)  # the new leader's first look
    with pytest.raises(FailedPrecondition) as exc:
        await client.abort_migration("g1", leader_term=7)
    assert exc.value.reason == "STALE_LEADER" and exc.value.hint
    for call in (
        client.cleanup_incoming("p-1", leader_term=7),
        client.commit_incoming("p-1", leader_term=7),
        client.tune_migration("g1", max_downtime_ms=500, leader_term=7),
        client.remove_source_disks(uuid, ["/var/lib/libvirt/images/g1.qcow2"], migration_id="m-1", leader_term=7),
    ):
        with pytest.raises(FailedPrecondition):
            await call
    assert (await client.get_domain("g1", leader_term=7))[0].uuid == uuid  # reads are answered
    assert await client.list_prepares(leader_term=7) == []
    assert await client.abort_migration("g1") is False  # no term (an operator's tool): not fenced
    assert await client.abort_migration("g1", leader_term=9) is False
    assert (tmp_path / "host1" / "leader-term").read_text().strip() == "9"  # kept across restarts
