"""Leader election on real etcd: one leader, takeover after a crash, step-down before the lease ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from ferry.coordinator.election import Election
from ferry.etcd_store import EtcdStore
from ferry.lab.etcd import EtcdCluster

pytestmark = pytest.mark.etcd

TTL_S = 2  # etcd's smallest lease TTL with default timings
EXPIRY_MARGIN_S = 1.5  # etcd revokes expired leases every 0.5 s; then a watch event and a create


class Timeline:
    """Who led when, from the callbacks, plus a sampler that checks is_leader() every 5 ms."""

    def __init__(self) -> None:
        self.elected: dict[str, list[float]] = {}
        self.demoted: dict[str, list[float]] = {}
        self.overlaps: list[float] = []

    def callbacks(self, who: str) -> tuple[Callable[[], object], Callable[[], object]]:
        async def on_elected() -> None:
            self.elected.setdefault(who, []).append(time.monotonic())

        async def on_demoted() -> None:
            self.demoted.setdefault(who, []).append(time.monotonic())

        return on_elected, on_demoted

    async def sample(self, elections: list[Election]) -> None:
        while True:
            if sum(e.is_leader() for e in elections) > 1:
                self.overlaps.append(time.monotonic())
            await asyncio.sleep(0.005)


async def wait_until(predicate: Callable[[], bool], within_s: float) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``within_s``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within_s:
            pytest.fail(f"condition not met within {within_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


class Candidates:
    """Elections with their own store each, running as tasks; everything torn down in close()."""

    def __init__(self) -> None:
        self.timeline = Timeline()
        self.elections: list[Election] = []
        self.stores: list[EtcdStore] = []
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.sampler: asyncio.Task[None] | None = None

    def add(self, name: str, endpoints: list[str]) -> Election:
        store = EtcdStore(endpoints, prefix="/election-test/", timeout_s=3.0, attempt_timeout_s=0.5)
        election = Election(store, name, f"{name}.example:7000", ttl_s=TTL_S)
        self.stores.append(store)
        self.elections.append(election)
        on_elected, on_demoted = self.timeline.callbacks(name)
        self.tasks[name] = asyncio.create_task(election.run(on_elected, on_demoted))  # type: ignore[arg-type]
        if self.sampler is None:
            self.sampler = asyncio.create_task(self.timeline.sample(self.elections))
        return election

    async def close(self) -> None:
        tasks = [*self.tasks.values(), *([self.sampler] if self.sampler else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for store in self.stores:
            await store.close()


async def test_exactly_one_leader_and_takeover_within_ttl_after_a_crash(etcd_one: EtcdCluster) -> None:
    c = Candidates()
    try:
        a, b = c.add("a", etcd_one.endpoints), c.add("b", etcd_one.endpoints)
        await wait_until(lambda: a.is_leader() or b.is_leader(), 5)
        await asyncio.sleep(TTL_S)  # several renewals: still exactly one
        leader, other = (a, b) if a.is_leader() else (b, a)
        assert leader.is_leader() and not other.is_leader()
        assert await other.leader() == leader.me
        assert await leader.leader() == leader.me

        crashed_at = time.monotonic()
        c.tasks[leader.me.id].cancel()  # a crash: its keepalives stop, its lease is left to expire
        await asyncio.gather(c.tasks[leader.me.id], return_exceptions=True)
        assert not leader.is_leader()
        takeover_s = await wait_until(other.is_leader, TTL_S + EXPIRY_MARGIN_S + 1)
        assert takeover_s <= TTL_S + EXPIRY_MARGIN_S
        assert c.timeline.elected[other.me.id][-1] >= crashed_at
        assert await other.leader() == other.me
        assert c.timeline.overlaps == []
    finally:
        await c.close()


async def test_resign_hands_over_at_once(etcd_one: EtcdCluster) -> None:
    c = Candidates()
    try:
        a = c.add("a", etcd_one.endpoints)
        await wait_until(a.is_leader, 5)
        b = c.add("b", etcd_one.endpoints)
        await asyncio.sleep(0.3)
        assert not b.is_leader()

        resigned_at = time.monotonic()
        await a.resign()
        assert not a.is_leader()
        assert c.timeline.demoted["a"][-1] >= resigned_at
        takeover_s = await wait_until(b.is_leader, 2)
        assert takeover_s < 1.0  # no waiting for a TTL
        await asyncio.wait_for(c.tasks["a"], 1)  # run() returned: a no longer campaigns
        assert a.last_outcome == "stepped down: resigned"
        assert c.timeline.overlaps == []
    finally:
        await c.close()


async def test_leader_steps_down_before_its_lease_can_expire_when_etcd_stops(etcd_one: EtcdCluster) -> None:
    c = Candidates()
    try:
        a = c.add("a", etcd_one.endpoints)
        await wait_until(a.is_leader, 5)
        b = c.add("b", etcd_one.endpoints)
        await asyncio.sleep(0.5)

        [member] = etcd_one.members
        stopped_at = time.monotonic()
        member.pause()
        await wait_until(lambda: not a.is_leader(), TTL_S)
        await wait_until(lambda: "a" in c.timeline.demoted, 1)
        # Its last renewal was sent before the stop, so its lease lives until >= stopped_at + ttl.
        assert c.timeline.demoted["a"][-1] < stopped_at + TTL_S
        assert a.last_outcome == "stepped down: no lease renewal succeeded before the lease could expire"

        member.resume()  # the old lease expires now; either candidate may win the new term
        await wait_until(lambda: a.is_leader() or b.is_leader(), TTL_S + EXPIRY_MARGIN_S + 3)
        new_leader = "a" if a.is_leader() else "b"
        assert c.timeline.elected[new_leader][-1] > c.timeline.demoted["a"][-1]
        assert c.timeline.overlaps == []
    finally:
        etcd_one.members[0].resume()
        await c.close()


async def test_leader_cut_off_from_a_working_majority_steps_down_before_the_other_takes_over(
    etcd_three: EtcdCluster,
) -> None:
    """The leader talks only to the raft leader; SIGSTOP it: the other two elect and serve on."""
    stopped = etcd_three.raft_leader()
    assert stopped is not None
    rest = [m.endpoint for m in etcd_three.members if m is not stopped]
    c = Candidates()
    try:
        a = c.add("a", [stopped.endpoint])
        await wait_until(a.is_leader, 5)
        b = c.add("b", rest)
        await asyncio.sleep(0.5)
        assert await b.leader() == a.me

        stopped_at = time.monotonic()
        stopped.pause()
        await wait_until(b.is_leader, TTL_S + 3 + EXPIRY_MARGIN_S)  # raft election (~1 s) + lease
        a_down = c.timeline.demoted["a"][-1]
        assert a_down < stopped_at + TTL_S
        assert c.timeline.elected["b"][-1] > a_down
        assert c.timeline.overlaps == []
    finally:
        stopped.resume()
        await c.close()
