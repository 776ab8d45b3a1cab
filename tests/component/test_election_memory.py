"""Election on the in-memory store (real clock, 1 s leases): hand-over, crash, hung store, operator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from ferry.coordinator.election import Election
from ferry.errors import Unavailable
from ferry.testing.memory_store import MemoryStore

TTL_S = 1


class HangingStore(MemoryStore):
    """A store whose keepalives can be made to hang (like an etcd member under SIGSTOP)."""

    hang = False

    async def keepalive(self, lease: int) -> int:
        if self.hang:
            await asyncio.Event().wait()
        return await super().keepalive(lease)


async def wait_until(predicate: Callable[[], bool], within_s: float) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within_s:
            pytest.fail(f"condition not met within {within_s} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


class Run:
    def __init__(self, election: Election) -> None:
        self.election = election
        self.elected: list[float] = []
        self.demoted: list[float] = []
        self.outcomes: list[str] = []  # last_outcome at each step-down
        self.duty_cancelled = False
        self.task = asyncio.create_task(election.run(self._on_elected, self._on_demoted))

    async def _on_elected(self) -> None:
        self.elected.append(time.monotonic())
        try:
            await asyncio.Event().wait()  # the leader's duties, until cancelled
        except asyncio.CancelledError:
            self.duty_cancelled = True
            raise

    async def _on_demoted(self) -> None:
        self.demoted.append(time.monotonic())
        self.outcomes.append(self.election.last_outcome)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def store():
    s = HangingStore()
    yield s
    await s.close()


async def test_one_leader_and_resign_hands_over_at_once(store):
    a = Run(Election(store, "a", "a:1", ttl_s=TTL_S))
    await wait_until(a.election.is_leader, 1)
    b = Run(Election(store, "b", "b:1", ttl_s=TTL_S))
    await asyncio.sleep(2 * TTL_S)
    assert a.election.is_leader() and not b.election.is_leader()
    assert (await b.election.leader()).id == "a"

    await a.election.resign()
    assert a.duty_cancelled and a.demoted
    assert await wait_until(b.election.is_leader, 1) < 0.2
    assert b.elected[0] > a.demoted[0]
    await b.stop()
    await a.stop()


async def test_each_new_leader_has_a_higher_term(store):
    """The term agents fence on: the leader key's create revision, growing with every leader."""
    a = Run(Election(store, "a", "a:1", ttl_s=TTL_S))
    await wait_until(a.election.is_leader, 1)
    first = a.election.term
    b = Run(Election(store, "b", "b:1", ttl_s=TTL_S))
    await a.election.resign()
    await wait_until(b.election.is_leader, 1)
    assert b.election.term > first > 0 and a.election.term == 0  # not leading: no term
    await b.stop()
    await a.stop()


async def test_a_crashed_leader_is_replaced_after_its_ttl(store):
    a = Run(Election(store, "a", "a:1", ttl_s=TTL_S))
    await wait_until(a.election.is_leader, 1)
    b = Run(Election(store, "b", "b:1", ttl_s=TTL_S))
    await asyncio.sleep(0.1)
    crashed = time.monotonic()
    await a.stop()
    assert not a.election.is_leader() and a.demoted == []  # a crash calls nothing
    await wait_until(lambda: bool(b.elected), TTL_S + 0.5)  # its duties started (is_leader comes a step before)
    assert b.elected[0] - crashed >= TTL_S * 2 / 3 - 0.05  # the lease ran out, it was not revoked
    await b.stop()


async def test_a_leader_whose_store_hangs_steps_down_before_its_lease_expires(store):
    a = Run(Election(store, "a", "a:1", ttl_s=TTL_S))
    await wait_until(a.election.is_leader, 1)
    b = Run(Election(store, "b", "b:1", ttl_s=TTL_S))
    store.hang = True
    hung_at = time.monotonic()
    await wait_until(lambda: bool(a.demoted), TTL_S + 0.5)
    assert a.demoted[0] < hung_at + TTL_S - a.election.timing.safety_s + 0.05
    assert a.outcomes == ["stepped down: no lease renewal succeeded before the lease could expire"]
    assert a.duty_cancelled
    store.hang = False
    await wait_until(lambda: bool(b.elected), TTL_S + 1)  # its duties started (is_leader comes a step before)
    assert b.election.is_leader() and b.elected[0] > a.demoted[0]
    await b.stop()
    await a.stop()


async def test_deleting_the_leader_key_makes_the_leader_step_down(store):
    a = Run(Election(store, "a", "a:1", ttl_s=TTL_S))
    await wait_until(a.election.is_leader, 1)
    await store.delete("leader")
    await wait_until(lambda: bool(a.demoted), 0.5)
    assert a.outcomes == ["stepped down: leader key deleted"]
    await wait_until(a.election.is_leader, 1)  # and campaigns again
    await a.stop()


async def test_a_leader_whose_duties_crash_hands_over(store):
    async def failing_duties() -> None:
        raise RuntimeError("boom")

    outcomes: list[str] = []

    async def demoted() -> None:  # (it campaigns again at once: last_outcome alone may be "elected" already)
        outcomes.append(a.last_outcome)

    a = Election(store, "a", "a:1", ttl_s=TTL_S)
    task = asyncio.create_task(a.run(failing_duties, demoted))
    await wait_until(lambda: bool(outcomes), 1)
    assert outcomes[0] == "stepped down: leader duties failed (RuntimeError)"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class RestartingStore(MemoryStore):
    """A store that can go down (every call refused, no lease expires) and restart as an etcd
    member does: every lease it kept lives a full ttl again from the restart."""

    down = False

    def _enter(self) -> None:
        if self.down:
            raise Unavailable("etcd is down", reason="STORE_UNAVAILABLE")
        super()._enter()

    def expire_leases(self) -> None:
        if not self.down:
            super().expire_leases()

    def restart(self) -> None:
        now = self._clock()
        for held in self._leases.values():
            held.expires_at = now + held.ttl_s
        self.down = False


async def test_a_leader_cut_off_by_a_store_restart_revokes_its_old_lease_once_the_store_answers():
    """Seen on the lab (etcd killed for 8 s): the new leader came 12 s after etcd was back, the
    old leader's restored lease running out first. The old leader revokes it at its first read."""
    ttl = 3
    store = RestartingStore()
    try:
        a = Run(Election(store, "a", "a:1", ttl_s=ttl))
        await wait_until(a.election.is_leader, 1)
        b = Run(Election(store, "b", "b:1", ttl_s=ttl))
        await asyncio.sleep(0.1)
        store.down = True
        await wait_until(lambda: bool(a.demoted), ttl + 0.5)
        assert a.outcomes == ["stepped down: no lease renewal succeeded before the lease could expire"]
        store.restart()
        took = await wait_until(lambda: a.election.is_leader() or b.election.is_leader(), ttl)
        assert took < ttl / 2  # within a campaign's retry, not the restored lease's ttl
        await b.stop()
        await a.stop()
    finally:
        await store.close()
