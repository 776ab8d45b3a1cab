"""Admission: which queued migrations start, in which order, within which limits."""

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import MigrationRecord, new_migration
from ferry.coordinator.slots import Limits, admission_changed, admit, plan_admission, queue_order, vm_key

NOW = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
HOSTS = {"h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8"}


def q(id, src, tgt, prio=0, age_s=0.0, vm=None) -> MigrationRecord:
    """A queued record submitted ``age_s`` seconds ago."""
    return new_migration(
        id=id,
        vm=vm or f"vm-{id}",
        vm_uuid="",
        source_host=src,
        target_host=tgt,
        now=NOW - timedelta(seconds=age_s),
        timeouts=Timeouts(),
        priority=prio,
    )


def a(id, src, tgt, phase=Phase.MIGRATING, vm=None) -> MigrationRecord:
    return replace(q(id, src, tgt, vm=vm), phase=phase)


L = Limits(per_host_outbound=1, per_host_inbound=2, cluster=5, reserve_after_s=900)


@pytest.mark.parametrize(
    ("queued", "active", "limits", "down", "expected"),
    [
        pytest.param([], [], L, set(), [], id="nothing-queued"),
        pytest.param([q("q1", "h1", "h2")], [], L, set(), ["q1"], id="one"),
        pytest.param(
            [q("q1", "h1", "h2", prio=0, age_s=60), q("q2", "h1", "h3", prio=5)],
            [],
            L,
            set(),
            ["q2"],
            id="priority-first",
        ),
        pytest.param(
            [q("q1", "h1", "h2", age_s=10), q("q2", "h1", "h3", age_s=60)], [], L, set(), ["q2"], id="then-older-first"
        ),
        pytest.param([q("q1", "h1", "h3")], [a("a1", "h1", "h2")], L, set(), [], id="outbound-full"),
        pytest.param(
            [q("q1", "h4", "h3")], [a("a1", "h1", "h3"), a("a2", "h2", "h3")], L, set(), [], id="inbound-full"
        ),
        pytest.param(
            [q("q1", "h4", "h3")],
            [a("a1", "h1", "h3"), replace(a("a2", "h2", "h3", phase=Phase.FINISHING), committed_at=NOW)],
            L,
            set(),
            ["q1"],
            id="committed-and-waiting-for-its-source-holds-no-slot",
        ),
        pytest.param(
            [q("q1", "h3", "h4", vm="g")],
            [replace(a("a1", "h1", "h3", phase=Phase.FINISHING, vm="g"), committed_at=NOW)],
            L,
            set(),
            [],
            id="committed-and-waiting-still-holds-its-vm",
        ),
        pytest.param(
            [q("q1", "h5", "h6")],
            [a("a1", "h1", "h2"), a("a2", "h3", "h4")],
            Limits(1, 2, cluster=2),
            set(),
            [],
            id="cluster-full",
        ),
        pytest.param(
            [q("q1", "h1", "h2", age_s=60), q("q2", "h3", "h4")],
            [a("a1", "h1", "h5")],
            L,
            set(),
            ["q2"],
            id="busy-host-does-not-block-the-queue",
        ),
        pytest.param(
            [q("q1", "h1", "h9", age_s=60), q("q2", "h3", "h4")], [], L, {"h9"}, ["q2"], id="unavailable-host-skipped"
        ),
        pytest.param(
            [q("q1", "h9", "h2", age_s=60), q("q2", "h3", "h4")], [], L, {"h9"}, ["q2"], id="unavailable-source-skipped"
        ),
        pytest.param(
            [q("q1", "h1", "h2", vm="g1")], [a("a1", "h3", "h4", vm="g1")], L, set(), [], id="vm-already-migrating"
        ),
        pytest.param(
            [q("q1", "h1", "h2", vm="g1", age_s=9), q("q2", "h3", "h4", vm="g1")],
            [],
            L,
            set(),
            ["q1"],
            id="one-per-vm-in-a-pass",
        ),
        pytest.param(
            [q("q1", "h1", "h2")],
            [
                a("f1", "h1", "h2", Phase.SUCCEEDED),
                a("f2", "h1", "h2", Phase.ROLLED_BACK),
                a("p1", "h1", "h2", Phase.PENDING),
            ],
            L,
            set(),
            ["q1"],
            id="final-and-queued-hold-no-slot",
        ),
        pytest.param(
            [q("q1", "h1", "h3")],
            [a("r1", "h1", "h2", Phase.ROLLING_BACK)],
            L,
            set(),
            [],
            id="rolling-back-holds-its-slot",
        ),
        pytest.param(
            [
                q("q1", "h1", "h3", age_s=40),
                q("q2", "h1", "h4", age_s=30),
                q("q3", "h2", "h3", age_s=20),
                q("q4", "h4", "h3", age_s=10),
            ],
            [],
            L,
            set(),
            ["q1", "q3"],
            id="several-in-one-pass",
        ),
        pytest.param(
            [q(f"q{i}", f"h{i}", "h8", age_s=10 - i) for i in range(1, 5)],
            [],
            Limits(per_host_outbound=1, per_host_inbound=9, cluster=3),
            set(),
            ["q1", "q2", "q3"],
            id="cluster-limit-in-a-pass",
        ),
        # starvation: q-old has waited past reserve_after_s and keeps its hosts and a cluster slot
        pytest.param(
            [q("old", "h1", "h3", age_s=1000), q("q2", "h4", "h5")],
            [a("a1", "h1", "h2")],
            Limits(1, 2, cluster=2),
            set(),
            [],
            id="aged-reserves-cluster-slot",
        ),
        pytest.param(
            [q("young", "h1", "h3", age_s=10), q("q2", "h4", "h5")],
            [a("a1", "h1", "h2")],
            Limits(1, 2, cluster=2),
            set(),
            ["q2"],
            id="young-does-not-reserve",
        ),
        pytest.param(
            [q("old", "h6", "h2", age_s=1000), q("q3", "h6", "h8")],
            [a("a1", "h1", "h2")],
            Limits(1, 1, cluster=5),
            set(),
            [],
            id="aged-reserves-its-source",
        ),
        pytest.param(
            [q("young", "h6", "h2", age_s=10), q("q3", "h6", "h8")],
            [a("a1", "h1", "h2")],
            Limits(1, 1, cluster=5),
            set(),
            ["q3"],
            id="without-aging-the-source-is-taken",
        ),
        pytest.param(
            [q("old", "h9", "h3", age_s=5000), q("q2", "h4", "h3")],
            [],
            Limits(1, 1, cluster=5),
            {"h9"},
            ["q2"],
            id="aged-but-host-down-does-not-reserve",
        ),
        pytest.param(
            [q("hi", "h4", "h3", prio=9), q("old", "h1", "h3", age_s=5000)],
            [],
            Limits(1, 1, cluster=5),
            set(),
            ["hi"],
            id="aging-does-not-override-priority",
        ),
    ],
)
def test_admit(queued, active, limits, down, expected):
    assert admit(queued, active, limits, (HOSTS | {"h9"}) - down, now=NOW) == expected


def test_waiting_records_say_why():
    plan = plan_admission(
        [q("q1", "h1", "h3", age_s=1000), q("q2", "h2", "h9"), q("q3", "h4", "h3", vm="g1"), q("q4", "h5", "h6")],
        [a("a1", "h1", "h2"), a("a2", "h7", "h8", vm="g1")],
        Limits(1, 2, cluster=3),
        HOSTS,
        now=NOW,
    )
    assert plan.start == ()
    assert {id: str(why) for id, why in plan.waiting.items()} == {
        "q1": "full: h1 outbound limit 1; reserving its slots (waiting since 2026-11-25T19:43:20+00:00)",
        "q2": "host h9 unavailable",
        "q3": "g1 has another migration",
        "q4": "full: cluster limit 3",
    }


def test_queue_order():
    rs = [
        q("c", "h1", "h2", prio=1, age_s=5),
        q("b", "h1", "h2", prio=1, age_s=50),
        q("a", "h1", "h2", prio=1, age_s=50),
        q("z", "h1", "h2", prio=7),
        q("y", "h1", "h2", prio=-1, age_s=999),
    ]
    assert [r.id for r in queue_order(rs)] == ["z", "a", "b", "c", "y"]


# --- property: random fleets and queues ---------------------------------------------------------

PHASES = list(Phase)


def random_case(rng: random.Random):
    hosts = [f"h{i}" for i in range(1, rng.randint(2, 6) + 1)]
    vms = [f"g{i}" for i in range(1, 9)]
    limits = Limits(rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 6), reserve_after_s=600)
    active = []
    for i in range(rng.randint(0, 6)):
        s, t = rng.sample(hosts, 2)
        active.append(a(f"a{i}", s, t, rng.choice(PHASES), vm=rng.choice(vms)))
    queued = []
    for i in range(rng.randint(0, 14)):
        s, t = rng.sample(hosts, 2)
        queued.append(
            q(f"q{i}", s, t, prio=rng.randint(0, 2), age_s=rng.choice([0, 30, 300, 700, 3000]), vm=rng.choice(vms))
        )
    available = {h for h in hosts if rng.random() < 0.85}
    return queued, active, limits, available


def check_limits(queued, active, limits, available, start):
    by_id = {r.id: r for r in queued}
    busy = [r for r in active if r.phase.holds_slot]
    started = [by_id[i] for i in start]
    assert len(set(start)) == len(start)
    out = Counter(r.source_host for r in busy + started)
    inn = Counter(r.target_host for r in busy + started)
    for r in started:
        assert r.source_host in available and r.target_host in available
        assert out[r.source_host] <= limits.per_host_outbound
        assert inn[r.target_host] <= limits.per_host_inbound
    if started:
        assert len(busy) + len(started) <= limits.cluster
    vms = [vm_key(r) for r in busy] + [vm_key(r) for r in started]
    assert all(vms.count(vm_key(r)) == 1 for r in started), "two migrations of one VM"
    return busy, started, out, inn


@pytest.mark.parametrize("seed", range(40))
def test_random_queues_without_aging(seed):
    rng = random.Random(seed)
    for _ in range(50):
        queued, active, limits, available = random_case(rng)
        start = admit(queued, active, limits, available)  # no clock: no reservation
        busy, started, out, inn = check_limits(queued, active, limits, available, start)
        order = queue_order(queued)
        rank = {r.id: i for i, r in enumerate(order)}
        taken = {vm_key(r) for r in busy}
        for r in order:
            if r.id in start:
                taken.add(vm_key(r))
                continue
            if r.source_host not in available or r.target_host not in available or vm_key(r) in taken:
                continue
            # no head-of-line blocking: a record left waiting really does not fit
            assert (
                out[r.source_host] >= limits.per_host_outbound
                or inn[r.target_host] >= limits.per_host_inbound
                or len(busy) + len(started) >= limits.cluster
            ), (r, start)
            # order per host pair: nobody behind it on the same hosts went first
            assert not [
                b
                for b in started
                if (b.source_host, b.target_host) == (r.source_host, r.target_host) and rank[b.id] > rank[r.id]
            ]


@pytest.mark.parametrize("seed", range(40))
def test_random_queues_with_aging(seed):
    rng = random.Random(1000 + seed)
    for _ in range(50):
        queued, active, limits, available = random_case(rng)
        plan = plan_admission(queued, active, limits, available, now=NOW)
        busy, started, _, _ = check_limits(queued, active, limits, available, plan.start)
        order = queue_order(queued)
        reserving = [r for r in order if r.id in plan.waiting and plan.waiting[r.id].reserving]
        for r in reserving:
            assert (NOW - r.created_at).total_seconds() >= limits.reserve_after_s
            assert r.source_host in available and r.target_host in available
        # a reservation is honoured: each started record fits with the slots reserved by the
        # aged records ahead of it counted as taken
        for b in started:
            ahead = [r for r in order[: order.index(b)] if r in started or r in reserving] + [b]
            load = busy + ahead
            assert Counter(r.source_host for r in load)[b.source_host] <= limits.per_host_outbound, plan
            assert Counter(r.target_host for r in load)[b.target_host] <= limits.per_host_inbound, plan
            assert len(load) <= limits.cluster, plan


# --- preparing ahead of a slot ------------------------------------------------------------------


def ah(id, src, tgt, phase=Phase.PREPARING, vm=None, age_s=0.0) -> MigrationRecord:
    """A record admitted ahead of its slot."""
    return replace(q(id, src, tgt, vm=vm, age_s=age_s), phase=phase, ahead=True)


A1 = Limits(per_host_outbound=1, per_host_inbound=2, cluster=5, reserve_after_s=900, prepare_ahead=1)


def test_a_record_held_back_by_a_full_limit_goes_ahead_up_to_the_allowance():
    plan = plan_admission(
        [q("q1", "h1", "h3", age_s=20), q("q2", "h1", "h4", age_s=10), q("q3", "h5", "h6")],
        [a("a1", "h1", "h2")],
        A1,
        HOSTS,
        now=NOW,
    )
    assert plan.start == ("q3",)
    assert plan.ahead == ("q1",)  # one per slot, and h1 has one: q2 waits Pending
    assert str(plan.waiting["q1"]) == "full: h1 outbound limit 1"
    assert str(plan.waiting["q2"]) == "full: h1 outbound limit 1"
    assert plan.grant == ()


def test_nothing_goes_ahead_without_an_allowance_or_for_what_a_slot_cannot_fix():
    queued = [q("q1", "h1", "h3"), q("q2", "h9", "h4"), q("q3", "h5", "h6", vm="g1"), q("q4", "h1", "h7")]
    active = [a("a1", "h1", "h2"), a("a2", "h8", "h4", vm="g1")]
    assert plan_admission(queued, active, replace(A1, prepare_ahead=0), HOSTS, now=NOW).ahead == ()
    plan = plan_admission(queued, active, A1, HOSTS, now=NOW, cordoned={"h3"})
    # q1: its target is cordoned; q2: a host is down; q3: its VM migrates; q4: h1 full, goes ahead
    assert (plan.start, plan.ahead) == ((), ("q4",))
    assert plan.waiting["q1"].kind.value == "target cordoned"


def test_a_record_ahead_counts_against_the_allowance_not_the_limits():
    plan = plan_admission([q("q1", "h1", "h3")], [ah("s1", "h1", "h2")], A1, HOSTS, now=NOW)
    assert plan.grant == ("s1",)  # its slot is free: granted, and it now holds h1's one slot
    assert plan.start == ()
    assert plan.ahead == ("q1",)  # the allowance it left is taken by the next one


def test_grants_go_in_queue_order_and_before_new_admissions():
    staged = [ah("s-new", "h1", "h2", age_s=5), ah("s-old", "h1", "h3", age_s=50)]
    plan = plan_admission([q("q1", "h1", "h4", prio=9)], staged, replace(A1, prepare_ahead=2), HOSTS, now=NOW)
    assert plan.grant == ("s-old",)
    assert plan.start == ()
    assert plan.ahead == ("q1",)  # priority 9 waits for the slot s-old took, ahead beside s-new
    assert str(plan.waiting["q1"]) == "full: h1 outbound limit 1"


def test_only_records_not_yet_migrating_are_granted():
    rolling = ah("r1", "h1", "h2", phase=Phase.ROLLING_BACK)
    plan = plan_admission([], [rolling], A1, HOSTS, now=NOW)
    assert plan.grant == ()


def test_no_slot_is_granted_into_a_target_cordoned_meanwhile_nor_while_a_host_is_down():
    # s1 prepared on h3 ahead of h1's slot, which is free now; meanwhile h3 was cordoned (a drain
    # of h3): its job would move a VM onto the host being emptied. It waits as a queued record does.
    staged = ah("s1", "h1", "h3")
    plan = plan_admission([q("q1", "h2", "h3")], [staged], A1, HOSTS, now=NOW, cordoned={"h3"})
    assert plan.grant == () and plan.waiting["q1"].kind.value == "target cordoned"
    plan = plan_admission([], [staged], A1, HOSTS - {"h3"}, now=NOW)
    assert plan.grant == ()
    # and it reserves nothing meanwhile: h1's slot goes to the next record that can use it
    aged = ah("s-old", "h1", "h3", age_s=1000)
    plan = plan_admission([q("q2", "h1", "h4")], [aged], A1, HOSTS, now=NOW, cordoned={"h3"})
    assert plan.grant == () and plan.start == ("q2",)


def test_a_record_ahead_that_aged_reserves_its_slots():
    staged = ah("s-old", "h1", "h3", age_s=1000)
    plan = plan_admission(
        [q("q1", "h2", "h3")], [a("a1", "h4", "h3"), staged], replace(A1, per_host_inbound=1), HOSTS, now=NOW
    )
    assert plan.grant == ()
    assert "q1" not in plan.start  # h3's inbound slot frees for s-old first


@pytest.mark.parametrize("seed", range(40))
def test_random_queues_with_records_ahead(seed):
    """Jobs never exceed the limits, records ahead never exceed the allowance, a record ahead
    left waiting really has no slot, and no VM is admitted twice."""
    rng = random.Random(2000 + seed)
    for _ in range(50):
        queued, active, limits, available = random_case(rng)
        limits = replace(limits, prepare_ahead=rng.randint(0, 2))
        active = [
            replace(r, ahead=True)
            if r.phase in (Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK) and rng.random() < 0.5
            else r
            for r in active
        ]
        plan = plan_admission(queued, active, limits, available, now=NOW)
        by_id = {r.id: r for r in [*queued, *active]}
        holding = [r for r in active if r.phase.holds_slot]
        assert all(by_id[i].ahead and by_id[i].phase in (Phase.PREFLIGHT, Phase.PREPARING) for i in plan.grant)
        assert not set(plan.start) & set(plan.ahead)
        jobs = [r for r in holding if not r.ahead or r.id in plan.grant] + [by_id[i] for i in plan.start]
        staged = [r for r in holding if r.ahead and r.id not in plan.grant] + [by_id[i] for i in plan.ahead]
        new_jobs = set(plan.grant) | set(plan.start)
        for r in jobs:
            if r.id in new_jobs:
                assert Counter(j.source_host for j in jobs)[r.source_host] <= limits.per_host_outbound
                assert Counter(j.target_host for j in jobs)[r.target_host] <= limits.per_host_inbound
        if new_jobs:
            assert len(jobs) <= limits.cluster
        for i in plan.ahead:
            r = by_id[i]
            assert plan.waiting[i].kind.is_full
            n = limits.prepare_ahead  # per slot
            assert Counter(s.source_host for s in staged)[r.source_host] <= n * limits.per_host_outbound
            assert Counter(s.target_host for s in staged)[r.target_host] <= n * limits.per_host_inbound
            assert len(staged) <= n * limits.cluster
        admitted = [by_id[i] for i in (*plan.start, *plan.ahead)]
        keys = [vm_key(r) for r in holding] + [vm_key(r) for r in admitted]
        assert all(keys.count(vm_key(r)) == 1 for r in admitted), "two migrations of one VM"
        out = Counter(j.source_host for j in jobs)
        inn = Counter(j.target_host for j in jobs)
        for i in plan.grant:
            assert by_id[i].source_host in available and by_id[i].target_host in available
        for r in holding:
            if r.ahead and r.phase in (Phase.PREFLIGHT, Phase.PREPARING) and r.id not in plan.grant:
                assert (
                    r.source_host not in available
                    or r.target_host not in available
                    or out[r.source_host] >= limits.per_host_outbound
                    or inn[r.target_host] >= limits.per_host_inbound
                    or len(jobs) >= limits.cluster
                ), (r, plan)


def test_the_allowance_is_per_slot():
    two = replace(A1, per_host_outbound=2)
    plan = plan_admission(
        [q("q1", "h1", "h3", age_s=3), q("q2", "h1", "h4", age_s=2), q("q3", "h1", "h5", age_s=1)],
        [a("a1", "h1", "h2"), a("a2", "h1", "h6")],
        two,
        HOSTS,
        now=NOW,
    )
    assert plan.ahead == ("q1", "q2")  # both slots of h1 have their next job ready


@pytest.mark.parametrize("seed", range(4))
def test_a_move_that_admission_changed_calls_unchanged_plans_the_same(seed):
    """The engine plans again after a record's move only when ``admission_changed`` says so: for
    every other move (phase and ahead flag, old and new at random) the plan with the new version
    is the plan with the old one, against random queues and records ahead."""
    rng = random.Random(3000 + seed)
    unchanged = 0
    for _ in range(300):
        queued, active, limits, available = random_case(rng)
        limits = replace(limits, prepare_ahead=rng.randint(0, 2))
        active = [replace(r, ahead=r.phase.holds_slot and rng.random() < 0.3) for r in active]
        s, t = rng.sample(sorted({r.source_host for r in queued + active} | {"h1", "h2"}), 2)
        moved = q("m", s, t, age_s=rng.choice([0, 700]), vm=f"g{rng.randint(1, 9)}")
        phases = PHASES + [p for p in PHASES if p.holds_slot]  # the moves it leaves alone, more often
        old, new = (
            replace(moved, phase=rng.choice(phases), ahead=rng.random() < 0.3),
            replace(moved, phase=rng.choice(phases), ahead=rng.random() < 0.3),
        )
        old, new = (  # finishing, its target committed: waiting for its source only
            replace(r, committed_at=NOW) if r.phase is Phase.FINISHING and rng.random() < 0.3 else r for r in (old, new)
        )
        if admission_changed(old, new):
            continue
        unchanged += 1
        assert planned_with(old, queued, active, limits, available) == planned_with(
            new, queued, active, limits, available
        ), (old.phase, old.ahead, new.phase, new.ahead)
    assert unchanged > 50


def planned_with(r, queued, active, limits, available):
    """The plan with ``r`` among the engine's open records: queued when pending, else holding."""
    return plan_admission(
        [*queued, r] if r.phase is Phase.PENDING else queued,
        [*active, r] if r.phase.holds_slot else active,
        limits,
        available,
        now=NOW,
    )
