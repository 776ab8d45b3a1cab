"""The drain's policy (``coordinator/drainplan.py``) and record (``coordinator/drain.py``), pure:
given a drain, its migrations and a placement, what starts, what is retried elsewhere, what is
reported as impossible, and when the drain ends. Tables, no I/O.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.coordinator.drain import DrainItem, DrainRecord, DrainState, ItemState, decode, encode, with_state
from ferry.coordinator.drainplan import (
    Arrivals,
    Busy,
    Estimates,
    Nowhere,
    Target,
    lpt_makespan,
    plan,
    progress,
    slots,
    step,
)
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import new_migration, with_phase
from ferry.model import MigrationOptions, Problem, StorageMode

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
GiB = 1 << 30


def item(vm: str, estimate: float = 10.0, **kw: object) -> DrainItem:
    return DrainItem(vm, f"uuid-{vm}", GiB, 0, estimate, **kw)  # type: ignore[arg-type]


def drain(*items: DrainItem, max_parallel: int = 0, state: DrainState = DrainState.RUNNING) -> DrainRecord:
    d = DrainRecord("d-1", "h1", NOW, items=items, max_parallel=max_parallel, updated_at=NOW)
    return with_state(d, state, NOW, "test")


def migration(mid: str, vm: str, target: str, phase: Phase, error: Problem | None = None):
    r = new_migration(
        id=mid, vm=vm, vm_uuid=f"uuid-{vm}", source_host="h1", target_host=target, now=NOW, timeouts=Timeouts()
    )
    path = {
        Phase.PREPARING: [Phase.PREFLIGHT, Phase.PREPARING],
        Phase.MIGRATING: [Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING],
        Phase.SUCCEEDED: [Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING, Phase.FINISHING, Phase.SUCCEEDED],
        Phase.ROLLED_BACK: [Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK, Phase.ROLLED_BACK],
        Phase.FAILED: [Phase.FAILED],
        Phase.CANCELLED: [Phase.CANCELLED],
    }[phase]
    for p in path:
        r = with_phase(r, p, NOW, "t", Timeouts())
    return replace(r, error=error)


def everywhere(host: str = "h2"):
    return lambda item, exclude: Target(host) if host not in exclude else Nowhere(Problem("NO_TARGET", "x", ""))


def states(d: DrainRecord) -> dict[str, str]:
    return {i.vm: i.state.name for i in d.items}


def test_starts_the_longest_first_up_to_its_slots():
    d = drain(item("short", 5), item("long", 50), item("mid", 20), max_parallel=2)
    s = step(d, {}, everywhere(), NOW, outbound_limit=4)
    assert [(x.vm, x.target) for x in s.submit] == [("long", "h2"), ("mid", "h2")]
    assert states(s.drain) == {"short": "WAITING", "long": "MIGRATING", "mid": "MIGRATING"}
    # each migration's id is fixed by the drain, the item and the attempt
    assert [x.migration_id for x in s.submit] == ["d-1-1-1", "d-1-2-1"]
    assert s.drain.item("uuid-long").attempts == 1 and s.drain.item("uuid-long").started_at == NOW


@pytest.mark.parametrize(
    ("max_parallel", "outbound", "expected", "submitted"),
    [
        # at the host's limit one more per slot is queued: the admission (which holds the limit)
        # starts it the moment a slot frees, also when both slots free at once
        (0, 2, 2, 4),
        (5, 2, 2, 4),
        # below it nothing is queued ahead: the admission would start it at once
        (1, 2, 1, 1),
        (3, 4, 3, 3),
    ],
)
def test_slots_never_exceed_the_hosts_outbound_limit(max_parallel, outbound, expected, submitted):
    d = drain(*(item(f"v{i}") for i in range(6)), max_parallel=max_parallel)
    assert slots(d, outbound) == expected
    assert len(step(d, {}, everywhere(), NOW, outbound_limit=outbound).submit) == submitted


def test_a_busy_target_makes_the_item_wait_and_a_later_one_may_go():
    calls = []

    def place(it: DrainItem, exclude: frozenset[str]):
        calls.append(it.vm)
        return Busy() if it.vm == "big" else Target("h3")

    s = step(drain(item("big", 99), item("small", 1)), {}, place, NOW, outbound_limit=2)
    assert states(s.drain) == {"big": "WAITING", "small": "MIGRATING"} and calls == ["big", "small"]


def test_an_item_that_fits_nowhere_fails_with_the_reason_and_the_rest_go_on():
    nowhere = Problem("NO_TARGET", "no host can take lonely: BRIDGE_MISSING on h2, h3", "map the bridge")

    def place(it: DrainItem, exclude: frozenset[str]):
        return Nowhere(nowhere) if it.vm == "lonely" else Target("h2")

    s = step(drain(item("lonely"), item("a")), {}, place, NOW, outbound_limit=2)
    assert states(s.drain) == {"lonely": "FAILED", "a": "MIGRATING"}
    assert s.drain.item("uuid-lonely").problems == (nowhere,)


@pytest.mark.parametrize(
    ("phase", "error", "attempts", "expected", "tried"),
    [
        (Phase.SUCCEEDED, None, 1, "MOVED", ()),
        # failed elsewhere: back to waiting, the target is not tried again
        (Phase.ROLLED_BACK, Problem("MIGRATION_FAILED", "qemu closed", ""), 1, "WAITING", ("h2",)),
        (Phase.FAILED, Problem("BRIDGE_MISSING", "br0 missing on h2", ""), 1, "WAITING", ("h2",)),
        # attempts used up
        (Phase.ROLLED_BACK, Problem("MIGRATION_FAILED", "qemu closed", ""), 3, "FAILED", ("h2",)),
        # the guest is where only an operator can judge: no retry
        (Phase.FAILED, Problem("VM_ON_TWO_HOSTS", "on both", ""), 1, "FAILED", ("h2",)),
        (Phase.FAILED, Problem("POSTCOPY_FAILED", "broke after the switch-over", ""), 1, "FAILED", ("h2",)),
        (Phase.FAILED, Problem("COMMIT_FAILED", "landed, not committed", ""), 1, "FAILED", ("h2",)),
        # cancelled by a user: not moved, not retried
        (Phase.CANCELLED, None, 1, "SKIPPED", ()),
    ],
)
def test_items_follow_their_migrations(phase, error, attempts, expected, tried):
    d = drain(item("v", migration_id="d-1-0-1", target="h2", attempts=attempts, state=ItemState.MIGRATING))
    ms = {"d-1-0-1": migration("d-1-0-1", "v", "h2", phase, error)}
    s = step(d, ms, lambda it, ex: Busy(), NOW, outbound_limit=1, max_attempts=3)
    got = s.drain.item("uuid-v")
    assert (got.state.name, got.tried) == (expected, tried)
    if error is not None:
        assert got.problems == (error,)


def test_a_failed_item_is_replanned_to_another_host_in_the_same_step():
    d = drain(item("v", migration_id="d-1-0-1", target="h2", attempts=1, state=ItemState.MIGRATING))
    ms = {"d-1-0-1": migration("d-1-0-1", "v", "h2", Phase.ROLLED_BACK, Problem("X", "y", ""))}
    seen = []

    def place(it: DrainItem, exclude: frozenset[str]):
        seen.append(exclude)
        return Target("h3")

    s = step(d, ms, place, NOW, outbound_limit=1)
    assert seen == [frozenset({"h1", "h2"})]  # neither its own host nor the one that failed
    assert [(x.migration_id, x.target) for x in s.submit] == [("d-1-0-2", "h3")]


def test_a_migrating_item_without_its_record_is_submitted_again_under_the_same_id():
    """The old leader wrote the drain, then stopped before creating the migration."""
    d = drain(item("v", migration_id="d-1-0-1", target="h2", attempts=1, state=ItemState.MIGRATING))
    s = step(d, {}, everywhere(), NOW, outbound_limit=1)
    assert [(x.migration_id, x.target) for x in s.submit] == [("d-1-0-1", "h2")]
    assert s.drain is d  # nothing to write


def test_the_drain_ends_succeeded_or_incomplete():
    moved = item("a", state=ItemState.MOVED, target="h2")
    failed = item("b", state=ItemState.FAILED, problems=(Problem("NO_TARGET", "x", ""),))
    s = step(drain(moved), {}, everywhere(), NOW, outbound_limit=1)
    assert s.drain.state is DrainState.SUCCEEDED and s.drain.ended_at == NOW
    s = step(drain(moved, failed), {}, everywhere(), NOW, outbound_limit=1)
    assert s.drain.state is DrainState.INCOMPLETE and "b (NO_TARGET)" in s.drain.history[-1].reason


def test_a_vm_that_left_the_host_on_its_own_does_not_make_the_drain_incomplete():
    """Seen on the lab: a guest moved away by hand during a drain ended it INCOMPLETE (exit 1) though
    the host was empty. A VM gone from the host is done; one stopped there is not (still on it)."""
    moved = item("a", state=ItemState.MOVED, target="h2")
    gone = item(
        "g", state=ItemState.SKIPPED, problems=(Problem("VM_GONE", "g is no longer on h1: it is on h3 now", ""),)
    )
    stopped = item("s", state=ItemState.SKIPPED, problems=(Problem("VM_NOT_RUNNING", "s is shut off on h1", ""),))
    s = step(drain(moved, gone), {}, everywhere(), NOW, outbound_limit=1)
    assert s.drain.state is DrainState.SUCCEEDED and s.outcome == "succeeded"
    assert s.drain.history[-1].reason == "1 VM(s) moved; 1 left the host on its own: g"
    s = step(drain(moved, gone, stopped), {}, everywhere(), NOW, outbound_limit=1)
    assert s.drain.state is DrainState.INCOMPLETE and "s (VM_NOT_RUNNING)" in s.drain.history[-1].reason
    assert "g (" not in s.drain.history[-1].reason


def test_a_vm_skipped_while_stopped_then_removed_is_gone():
    """Seen on the lab: `virsh destroy g4; virsh undefine g4` during a drain: a step between the two
    skipped g4 VM_NOT_RUNNING, and the drain would end INCOMPLETE with the host empty of it."""
    moved = item("a", state=ItemState.MOVED, target="h2")
    stopped = item("g4", state=ItemState.SKIPPED, problems=(Problem("VM_NOT_RUNNING", "g4 is shut off on h1", ""),))
    running = item("b", state=ItemState.MIGRATING, target="h2", migration_id="m-b")
    d = drain(moved, stopped, running)
    left = Problem("VM_GONE", "g4 is no longer on h1: no host reports it (undefined or destroyed?)", "")
    s = step(
        d,
        {"m-b": migration("m-b", "b", "h2", Phase.SUCCEEDED)},
        everywhere(),
        NOW,
        outbound_limit=1,
        gone={"uuid-g4": left},
    )
    assert s.drain.state is DrainState.SUCCEEDED, s.drain.history[-1]
    assert {i.vm: i.problems[-1].reason for i in s.drain.items if i.problems} == {"g4": "VM_GONE"}
    assert "1 left the host on its own: g4" in s.drain.history[-1].reason
    # still stopped on the host (not in ``gone``): skipped, the drain incomplete, as before
    s = step(d, {"m-b": migration("m-b", "b", "h2", Phase.SUCCEEDED)}, everywhere(), NOW, outbound_limit=1, gone={})
    assert s.drain.state is DrainState.INCOMPLETE


def test_a_migration_that_found_its_vm_gone_skips_the_item():
    """The VM removed from the host while its migration was prepared ahead: the migration fails
    VM_GONE (the target's copies removed); the item is skipped, not tried on another host."""
    gone = Problem("VM_GONE", "g1 is gone from h1 (removed ...) before its migration switched over", "")
    d = drain(item("g1", state=ItemState.MIGRATING, target="h2", migration_id="m-1", attempts=1))
    s = step(d, {"m-1": migration("m-1", "g1", "h2", Phase.FAILED, gone)}, everywhere("h3"), NOW, outbound_limit=1)
    assert s.drain.state is DrainState.SUCCEEDED and not s.submit
    [it] = s.drain.items
    assert it.state is ItemState.SKIPPED and it.problems[-1].reason == "VM_GONE"


def test_a_waiting_vm_missing_from_the_host_is_skipped_as_gone():
    waiting = item("g")
    gone = Nowhere(Problem("VM_GONE", "g is no longer on h1: no host reports it (undefined or destroyed?)", ""))
    s = step(drain(waiting), {}, lambda i, exclude: gone, NOW, outbound_limit=1)
    assert s.drain.state is DrainState.SUCCEEDED and not s.submit
    [done] = s.drain.items
    assert done.state is ItemState.SKIPPED and done.problems[-1].reason == "VM_GONE" and not done.tried


def test_paused_starts_nothing_and_cancelling_cancels_what_runs():
    d = drain(item("a"), item("b", migration_id="d-1-1-1", target="h2", attempts=1, state=ItemState.MIGRATING))
    ms = {"d-1-1-1": migration("d-1-1-1", "b", "h2", Phase.MIGRATING)}
    paused = step(with_state(d, DrainState.PAUSED, NOW, "p"), ms, everywhere(), NOW, outbound_limit=2)
    assert paused.submit == () and states(paused.drain)["a"] == "WAITING"
    cancelling = step(with_state(d, DrainState.CANCELLING, NOW, "c"), ms, everywhere(), NOW, outbound_limit=2)
    assert cancelling.cancel == ("d-1-1-1",) and cancelling.submit == ()
    assert states(cancelling.drain) == {"a": "SKIPPED", "b": "MIGRATING"}
    # once the migration ended (cancelled), the drain is
    ms["d-1-1-1"] = migration("d-1-1-1", "b", "h2", Phase.CANCELLED)
    done = step(cancelling.drain, ms, everywhere(), NOW, outbound_limit=2)
    assert done.drain.state is DrainState.CANCELLED and states(done.drain) == {"a": "SKIPPED", "b": "SKIPPED"}


def test_cancelling_skips_a_vm_whose_migration_a_stopped_leader_never_created():
    # the old leader wrote the item MIGRATING, then stopped before creating its migration; the
    # operator cancelled before the new leader stepped: creating it only to cancel it helps no one,
    # and waiting for it would hold the drain (and its host's cordon) in CANCELLING forever
    d = drain(item("a", migration_id="d-1-0-1", target="h2", attempts=1, state=ItemState.MIGRATING))
    cancelled = step(with_state(d, DrainState.CANCELLING, NOW, "c"), {}, everywhere(), NOW, outbound_limit=1)
    assert cancelled.submit == () and cancelled.cancel == ()
    assert cancelled.drain.state is DrainState.CANCELLED and states(cancelled.drain) == {"a": "SKIPPED"}
    # one this leader is creating right now is waited for, then cancelled
    creating = step(
        with_state(d, DrainState.CANCELLING, NOW, "c"), {}, everywhere(), NOW, outbound_limit=1, creating={"d-1-0-1"}
    )
    assert creating.drain.state is DrainState.CANCELLING and states(creating.drain) == {"a": "MIGRATING"}


def test_before_it_ends_a_drain_takes_in_what_came_to_its_host_meanwhile():
    # every listed VM moved; meanwhile a migration already under way into h1 (a cordon stops only
    # queued ones) landed "late": the drain moves it too, rather than say h1 is empty
    moved = migration("d-1-0-1", "a", "h2", Phase.SUCCEEDED)
    d = drain(item("a", migration_id="d-1-0-1", target="h2", attempts=1, state=ItemState.MIGRATING))
    ended = step(d, {"d-1-0-1": moved}, everywhere(), NOW, outbound_limit=1)
    assert ended.drain.state is DrainState.SUCCEEDED  # what the controller checks arrivals for
    waits = step(d, {"d-1-0-1": moved}, everywhere(), NOW, outbound_limit=1, arrivals=Arrivals(inbound=("m-9",)))
    assert waits.drain.state is DrainState.RUNNING and "1 migration(s) into h1 may land a VM" in waits.outcome
    came = step(d, {"d-1-0-1": moved}, everywhere(), NOW, outbound_limit=1, arrivals=Arrivals(items=(item("late"),)))
    assert states(came.drain) == {"a": "MOVED", "late": "MIGRATING"}
    assert [(x.vm, x.target) for x in came.submit] == [("late", "h2")]
    assert "late came to h1 after the drain listed its VMs" in came.drain.history[-1].reason
    # a cancelled drain takes nothing in
    cancelling = with_state(d, DrainState.CANCELLING, NOW, "c")
    gone = step(
        cancelling, {"d-1-0-1": moved}, everywhere(), NOW, outbound_limit=1, arrivals=Arrivals(items=(item("late"),))
    )
    assert gone.drain.state is DrainState.CANCELLED and "late" not in states(gone.drain)


def test_the_dry_run_plan_places_every_vm_and_estimates_the_makespan():
    placed: dict[str, int] = {}

    def place(it: DrainItem):
        if it.vm == "lonely":
            return Nowhere(Problem("NO_TARGET", "nowhere", ""))
        host = "h2" if placed.get("h2", 0) <= placed.get("h3", 0) else "h3"
        placed[host] = placed.get(host, 0) + 1
        return Target(host)

    d = drain(item("a", 30), item("b", 20), item("c", 10), item("lonely", 5), max_parallel=2)
    planned, makespan = plan(d, place, outbound_limit=2)
    got = {i.vm: (i.state.name, i.target) for i in planned.items}
    assert got == {"a": ("WAITING", "h2"), "b": ("WAITING", "h3"), "c": ("WAITING", "h2"), "lonely": ("FAILED", "")}
    assert makespan == 30.0  # a | b + c


def test_lpt_makespan_approaches_the_bound_with_many_items():
    estimates = [10.0] * 40 + [7.0] * 13
    bound = sum(estimates) / 4
    assert bound <= lpt_makespan(estimates, 4) <= 1.05 * bound


def test_progress_counts_bytes_and_estimates_the_time_left():
    moved = item(
        "a", 10, state=ItemState.MOVED, started_at=NOW - timedelta(seconds=40), ended_at=NOW - timedelta(seconds=20)
    )  # took 20 s for an estimate of 10: the rest is scaled by 2
    waiting = [item("b", 10), item("c", 10)]
    d = drain(moved, *waiting, max_parallel=1)
    p = progress(d, {}, NOW, outbound_limit=1)
    assert (p.total, p.moved, p.failed, p.migrating) == (3, 1, 0, 0)
    assert (p.bytes_total, p.bytes_moved) == (3 * GiB, GiB)
    assert p.eta_s == 40.0


def test_the_time_left_follows_the_running_jobs_and_never_reads_zero_while_one_runs():
    """The ETA read 0.0 s for the last 4 s of a lab drain: the job had outrun its estimate, and one
    job left was divided over two slots. Now it is the agent's ETA for a running job (else what is
    left of its estimate, at least 1 s), and a lone job takes its own time whatever the slots."""
    from ferry.model import MigrationProgress

    late = migration("m-late", "a", "h2", Phase.MIGRATING)  # submitted at NOW, estimate 10 s
    d = drain(item("a", 10, state=ItemState.MIGRATING, migration_id="m-late"), max_parallel=2)
    assert progress(d, {"m-late": late}, NOW + timedelta(seconds=30), outbound_limit=2).eta_s == 1.0
    told = replace(late, progress=MigrationProgress(eta_ms=4_000))
    assert progress(d, {"m-late": told}, NOW + timedelta(seconds=30), outbound_limit=2).eta_s == 4.0
    assert progress(d, {"m-late": late}, NOW + timedelta(seconds=2), outbound_limit=2).eta_s == 8.0  # not 4
    two = drain(
        item("a", 10, state=ItemState.MIGRATING, migration_id="m-late"),
        item("b", 10, state=ItemState.MIGRATING, migration_id="m-b"),
        item("c", 10),
        max_parallel=2,
    )
    b = replace(migration("m-b", "b", "h3", Phase.MIGRATING), progress=MigrationProgress(eta_ms=1_000))
    at = NOW + timedelta(seconds=2)
    assert progress(two, {"m-late": late, "m-b": b}, at, outbound_limit=2).eta_s == 11.0  # c after b: 1 + 10
    # c prepared ahead of its slot: it still waits for b's
    ahead = replace(migration("m-c", "c", "h3", Phase.MIGRATING), phase=Phase.PREPARING, ahead=True)
    items = (*two.items[:2], replace(two.items[2], state=ItemState.MIGRATING, migration_id="m-c"))
    three = replace(two, items=items)
    assert progress(three, {"m-late": late, "m-b": b, "m-c": ahead}, at, outbound_limit=2).eta_s == 11.0
    # prepared ahead at NOW, its job started 20 s later: what is left is counted from then
    r = new_migration(
        id="m-d", vm="d", vm_uuid="uuid-d", source_host="h1", target_host="h2", now=NOW, timeouts=Timeouts()
    )
    for phase, after in ((Phase.PREFLIGHT, 0), (Phase.PREPARING, 0), (Phase.MIGRATING, 20)):
        r = with_phase(r, phase, NOW + timedelta(seconds=after), "t", Timeouts())
    one = drain(item("d", 10, state=ItemState.MIGRATING, migration_id="m-d"), max_parallel=2)
    assert progress(one, {"m-d": r}, NOW + timedelta(seconds=23), outbound_limit=2).eta_s == 7.0


def test_a_running_vms_memory_counts_as_far_as_libvirt_went_through_it():
    """Zero pages are skipped with a few bytes sent: the bytes sent alone held the bar back."""
    from ferry.model import JobStats, MigrationProgress

    stats = JobStats(active=True, memory_total=GiB, memory_processed=GiB // 8, memory_remaining=GiB // 4)
    r = replace(migration("m-a", "a", "h2", Phase.MIGRATING), progress=MigrationProgress(stats=stats))
    d = drain(item("a", 10, state=ItemState.MIGRATING, migration_id="m-a"), max_parallel=1)
    assert progress(d, {"m-a": r}, NOW, outbound_limit=1).bytes_moved == GiB * 3 // 4


def test_estimates():
    e = Estimates(bandwidth_mibps=256, overhead_s=2)
    assert e.seconds(256 << 20, 256 << 20) == 4.0


def test_the_record_survives_its_json():
    d = drain(
        item("a", state=ItemState.MOVED, target="h2", migration_id="d-1-0-1", attempts=1, started_at=NOW, ended_at=NOW),
        item("b", tried=("h3",), problems=(Problem("X", "y", "z"),)),
        max_parallel=2,
    )
    d = replace(
        d,
        targets=("h2", "h3"),
        policy="busy",
        options=MigrationOptions(storage=StorageMode.COPY_ALL, migrate_disks=("vda",), bandwidth_mibps=64),
        storage_explicit=True,
        estimated_s=12.5,
        reason="kernel",
    )
    assert decode(encode(d), 42) == replace(d, revision=42)


def test_a_queued_migration_to_a_host_cordoned_meanwhile_is_taken_back_and_placed_again():
    d = drain(item("v", migration_id="d-1-0-1", target="h2", attempts=1, state=ItemState.MIGRATING))
    queued = new_migration(
        id="d-1-0-1", vm="v", vm_uuid="uuid-v", source_host="h1", target_host="h2", now=NOW, timeouts=Timeouts()
    )
    s = step(d, {"d-1-0-1": queued}, everywhere("h3"), NOW, outbound_limit=1, cordoned={"h2"})
    assert s.cancel == ("d-1-0-1",) and s.submit == ()
    assert s.drain.item("uuid-v").problems[-1].reason == "TARGET_CORDONED"
    # once cancelled, the VM goes to another host (not to the cordoned one)
    cancelled = replace(with_phase(queued, Phase.CANCELLED, NOW, "t", Timeouts()))
    again = step(s.drain, {"d-1-0-1": cancelled}, everywhere("h3"), NOW, outbound_limit=1, cordoned={"h2"})
    assert [(x.migration_id, x.target) for x in again.submit] == [("d-1-0-2", "h3")]
    assert again.drain.item("uuid-v").tried == ("h2",)
    # so is one prepared ahead of its slot (no job yet: slots grant it none into a cordoned host)
    prepared_ahead = replace(migration("d-1-0-1", "v", "h2", Phase.PREPARING), ahead=True)
    assert step(d, {"d-1-0-1": prepared_ahead}, everywhere("h3"), NOW, outbound_limit=1, cordoned={"h2"}).cancel == (
        "d-1-0-1",
    )
    # an admitted one is left to finish: cordoning stops what is queued, not what runs
    running = migration("d-1-0-1", "v", "h2", Phase.MIGRATING)
    assert step(d, {"d-1-0-1": running}, everywhere("h3"), NOW, outbound_limit=1, cordoned={"h2"}).cancel == ()
    granted = migration("d-1-0-1", "v", "h2", Phase.PREPARING)  # holding its slot: its job starts once prepared
    assert step(d, {"d-1-0-1": granted}, everywhere("h3"), NOW, outbound_limit=1, cordoned={"h2"}).cancel == ()


def test_a_guest_not_running_is_skipped_with_a_hint_its_disks_allow() -> None:
    """A shut-off guest on a local disk cannot move offline (OFFLINE_LOCAL_DISK): the hint says to
    start it; one on shared storage may have its definition moved."""
    from ferry.coordinator.drainplan import Estimates
    from ferry.coordinator.drains import domain_items
    from ferry.model import Disk, DomainInfo, DomainState

    local = DomainInfo("local", "u-1", DomainState.SHUTOFF, disks=(Disk("vda", "/img/local.qcow2"),))
    shared = DomainInfo("shared", "u-2", DomainState.SHUTOFF, disks=(Disk("vda", "/nfs/s.qcow2", shared=True),))
    got = {i.vm: i for i in domain_items((local, shared), MigrationOptions(), False, Estimates(), "host1")}
    assert {i.state for i in got.values()} == {ItemState.SKIPPED}
    assert got["local"].problems[0].message == "local is shut off on host1: only running guests are moved"
    assert "--offline" not in got["local"].problems[0].hint
    assert got["shared"].problems[0].hint.endswith("ferry migrate shared --offline")
