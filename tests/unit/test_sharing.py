"""The leader's bandwidth sharing (``coordinator/sharing.py``) against stand-ins for the agents and
the runners: a job entering Migrating starts at its share (no tune), a job a new leader finds
running is tuned, a job tuned before it reported progress is tuned again at its first progress,
a tune that failed is tried again at the next change."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from ferry.coordinator.phases import Phase
from ferry.coordinator.record import MigrationRecord
from ferry.coordinator.sharing import BandwidthSharing
from ferry.errors import Unavailable
from ferry.model import MigrationPhase, MigrationProgress, PolicyAction

T0 = datetime(2026, 12, 4, tzinfo=UTC)


def rec(mid: str, phase: Phase = Phase.MIGRATING, source: str = "h1", target: str = "h2") -> MigrationRecord:
    return MigrationRecord(mid, f"vm-{mid}", f"u-{mid}", source, target, T0, phase=phase)


class Harness:
    def __init__(self, budget: dict[str, int]) -> None:
        self.tuned: list[tuple[str, int]] = []
        self.told: list[tuple[str, str]] = []
        self.failing = False
        self.tasks: list[asyncio.Task[None]] = []
        self.s = BandwidthSharing(lambda h: budget.get(h, 0), (2, 2), self.tune, self.tell, self.spawn)

    async def tune(self, r: MigrationRecord, mibps: int) -> object:
        if self.failing:
            raise Unavailable("agent down", reason="UNREACHABLE")
        self.tuned.append((r.id, mibps))
        return None

    def tell(self, mid: str, action: PolicyAction) -> None:
        self.told.append((mid, action.reason))

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(coro))

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks)
        self.tasks.clear()


def progressed(r: MigrationRecord) -> MigrationRecord:
    return replace(r, progress=MigrationProgress(phase=MigrationPhase.PRECOPY))


def mirroring(r: MigrationRecord) -> MigrationRecord:
    """A job copying its disks (its memory not moving yet)."""
    return replace(r, progress=MigrationProgress(phase=MigrationPhase.DISK_MIRROR))


async def test_a_job_entering_migrating_starts_at_its_share_and_the_running_one_is_tuned() -> None:
    h = Harness({"h1": 100})
    a = progressed(rec("a"))
    h.s.seen(None, a)  # found running: tuned to the whole budget
    await h.settle()
    assert h.tuned == [("a", 100)]
    b0 = rec("b", Phase.PREPARING, target="h3")
    h.s.seen(None, b0)
    h.s.seen(b0, replace(b0, phase=Phase.MIGRATING))  # entering: its Migrate carries 50
    await h.settle()
    assert h.s.start_share("b") == 50 and h.tuned == [("a", 100), ("a", 50)]
    assert [m for m, _ in h.told] == ["a", "b", "a"]


async def test_a_job_tuned_before_its_first_progress_is_tuned_again_then() -> None:
    h = Harness({"h1": 100})
    a0 = rec("a", Phase.PREPARING)
    h.s.seen(None, a0)
    a1 = replace(a0, phase=Phase.MIGRATING)
    h.s.seen(a0, a1)  # starts at 100
    b0 = rec("b", Phase.PREPARING)
    h.s.seen(None, b0)
    h.s.seen(b0, replace(b0, phase=Phase.MIGRATING))  # a tuned to 50 before its job ran
    await h.settle()
    assert h.tuned == [("a", 50)]
    h.s.seen(a1, progressed(a1))  # its job runs now: 50 again (its Migrate may have set 100 after)
    await h.settle()
    assert h.tuned == [("a", 50), ("a", 50)]
    h.s.seen(progressed(a1), replace(progressed(a1), updated_at=T0))  # later progress: nothing more
    await h.settle()
    assert h.tuned == [("a", 50), ("a", 50)]


async def test_a_failed_tune_is_tried_again_at_the_next_change() -> None:
    h = Harness({"h1": 100})
    a = progressed(rec("a"))
    h.failing = True
    h.s.seen(None, a)
    await h.settle()
    assert h.tuned == [] and h.told == []
    h.failing = False
    b = progressed(rec("b", target="h3"))
    h.s.seen(None, b)
    await h.settle()
    assert sorted(h.tuned) == [("a", 50), ("b", 50)]
    h.s.seen(b, replace(b, phase=Phase.FINISHING))  # b's job ended: a gets it all back
    await h.settle()
    assert h.tuned[-1] == ("a", 100)


async def test_hosts_without_a_budget_are_left_alone() -> None:
    h = Harness({"h9": 100})
    a = progressed(rec("a"))
    h.s.seen(None, a)
    await h.settle()
    assert h.tuned == [] and h.told == [] and h.s.start_share("a") is None


async def test_a_job_that_copies_disks_keeps_its_start_speed_whatever_is_tuned_later() -> None:
    from ferry.coordinator.record import ActionEntry
    from ferry.model import DiskPlan

    h = Harness({"h1": 100})
    c0 = replace(rec("c", Phase.PREPARING), disks=(DiskPlan("vda", "/i/c.qcow2", copy=True),))
    h.s.seen(None, c0)
    c1 = replace(c0, phase=Phase.MIGRATING)
    h.s.seen(c0, c1)
    assert h.s.start_share("c") == 50  # 100 over 2 slots, though alone
    tuned = PolicyAction("tune", "tune by alice: bandwidth 20 MiB/s (libvirt reads ...)", 0, "alice")
    c2 = replace(mirroring(c1), actions=(ActionEntry(T0, tuned),))
    h.s.seen(c1, c2)
    await h.settle()
    assert h.tuned == [] and h.s.flows["c"].cap_mibps == 50 and [m for m, _ in h.told] == ["c"]
    # its memory moves: the disks are copied, and the memory's speed is the operator's again
    h.s.seen(c2, replace(progressed(c2)))
    await h.settle()
    assert h.tuned == [("c", 20)] and not h.s.flows["c"].fixed


async def test_a_job_whose_disks_are_copied_shares_the_budget_like_any_other() -> None:
    """libvirt cannot change a disk copy's speed, but it does change the memory's: once the job
    reports its memory phase it is no longer a fixed flow, and gets its share."""
    from ferry.model import DiskPlan

    h = Harness({"h1": 100})
    c0 = replace(rec("c", Phase.PREPARING), disks=(DiskPlan("vda", "/i/c.qcow2", copy=True),))
    h.s.seen(None, c0)
    c1 = replace(c0, phase=Phase.MIGRATING)
    h.s.seen(c0, c1)
    assert h.s.start_share("c") == 50  # 100 over 2 slots while it copies its disk
    c2 = mirroring(c1)
    h.s.seen(c1, c2)
    await h.settle()
    assert h.tuned == []
    h.s.seen(c2, progressed(c2))  # the memory moves: alone, the whole budget
    await h.settle()
    assert h.tuned == [("c", 100)] and h.s.use() == {("h1", "outbound"): 100}
    assert h.told[-1] == ("c", "bandwidth 100 MiB/s: the migration budget of h1, 100 MiB/s out")


async def test_the_use_of_each_budget_is_what_was_set_and_the_metrics_show_it() -> None:
    from prometheus_client import CollectorRegistry

    from ferry.coordinator.metrics import CoordinatorMetrics
    from ferry.coordinator.slots import Limits

    h = Harness({"h1": 100})
    for mid, target in (("a", "h2"), ("b", "h3")):
        h.s.seen(None, progressed(rec(mid, target=target)))
    await h.settle()
    assert h.s.use() == {("h1", "outbound"): 100}  # 50 + 50; h2 and h3 have no budget
    registry = CollectorRegistry()
    metrics = CoordinatorMetrics(registry, Limits())
    metrics.watch(
        records=lambda: [],
        hosts=lambda: ["h1", "h2"],
        leader=lambda: True,
        budget=lambda host: 100 if host == "h1" else 0,
        bandwidth_used=h.s.use,
    )
    assert registry.get_sample_value("ferry_host_bandwidth_budget_mibps", {"host": "h1"}) == 100
    assert registry.get_sample_value("ferry_host_bandwidth_used_mibps", {"host": "h1", "direction": "outbound"}) == 100
    assert registry.get_sample_value("ferry_host_bandwidth_used_mibps", {"host": "h1", "direction": "inbound"}) == 0
    assert registry.get_sample_value("ferry_host_bandwidth_budget_mibps", {"host": "h2"}) is None


async def test_any_replica_tells_the_use_from_the_records_as_the_leader_set_it() -> None:
    """``planned_use`` (ListHosts, on any replica) gives what the leader set, also for a job that
    copies disks and was tuned by an operator later (its copy keeps the speed it started at), and a
    new leader finding that job keeps it at that speed."""
    from ferry.coordinator.record import ActionEntry
    from ferry.coordinator.sharing import planned_use
    from ferry.model import DiskPlan

    budget = {"h1": 100, "h3": 30}
    h = Harness(budget)
    c = replace(mirroring(rec("c")), disks=(DiskPlan("vda", "/i/c.qcow2", copy=True),))
    tuned = PolicyAction("tune", "tune by alice: bandwidth 20 MiB/s (libvirt reads ...)", 0, "alice")
    c = replace(c, actions=(ActionEntry(T0, tuned),))
    records = [
        c,
        progressed(rec("a", target="h3")),
        progressed(rec("b", source="h2", target="h3")),
        rec("q", Phase.PENDING),
    ]
    for r in records:
        h.s.seen(None, r)
    await h.settle()
    assert h.s.use() == {("h1", "outbound"): 65, ("h3", "inbound"): 30}  # c fixed at 50; a and b 15 each into h3
    assert planned_use(records, lambda n: budget.get(n, 0), (2, 2)) == h.s.use()
    assert h.s.start_share("c") == 50
    assert planned_use(records, lambda n: 0, (2, 2)) == {}
