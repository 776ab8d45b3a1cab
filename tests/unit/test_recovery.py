"""Recovery after a leader change or an agent restart, and the placement invariant of every decision.

The invariant, over every non-final phase x every observable placement x every prepare listing:
no decision leaves the guest running on two hosts, removes the target's images while the guest
may run there, commits or succeeds unless the guest runs on the target only, or starts a second
job or prepare blindly; and no record is left without a deadline.
"""

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.coordinator.decide import decide
from ferry.coordinator.events import (
    AbortMigration,
    CleanupTarget,
    CommitTarget,
    KeepTarget,
    ObservePlacement,
    Placement,
    PrepareTarget,
    RunPreflight,
    StartMigration,
    WatchJob,
)
from ferry.coordinator.phases import GiB, Phase, Timeouts
from ferry.coordinator.record import new_migration, too_late_to_cancel, with_phase
from ferry.coordinator.recovery import recover
from ferry.model import DomainState, MigrationOptions, MigrationPhase, MigrationProgress, PrepareRecord, Problem

T0 = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=30)
T = Timeouts()
R, P, OFF, UNK = DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTOFF, DomainState.UNKNOWN
E_JOB = Problem("MIGRATION_FAILED", "the job failed", "see the log")


def walk(*phases, offline=False, **kw):
    r = new_migration(
        id="m-1",
        vm="g1",
        vm_uuid="u-1",
        source_host="host1",
        target_host="host2",
        now=T0,
        timeouts=T,
        memory_bytes=1 * GiB,
        options=MigrationOptions(offline=offline),
    )
    for p in phases:
        r = with_phase(r, p, T0, p.name.lower(), T)
    return replace(r, **kw)


TO_MIGRATING = (Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING)
RECORDS = {
    "pending": walk(),
    "pending-after-retry": walk(Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK, Phase.PENDING, attempt=1),
    "preflight": walk(Phase.PREFLIGHT, attempt=1),
    "preparing": walk(Phase.PREFLIGHT, Phase.PREPARING, attempt=1),
    "preparing-last-attempt": walk(Phase.PREFLIGHT, Phase.PREPARING, attempt=3),
    # prepared ahead of its slot, waiting for it
    "waiting-for-slot": walk(Phase.PREFLIGHT, Phase.PREPARING, attempt=1, ahead=True, prepare_id="p-1"),
    "migrating": walk(*TO_MIGRATING, attempt=1, prepare_id="p-1"),
    "migrating-failed": walk(*TO_MIGRATING, attempt=1, prepare_id="p-1", error=E_JOB),
    "migrating-postcopy": walk(
        *TO_MIGRATING, attempt=1, prepare_id="p-1", progress=MigrationProgress(MigrationPhase.POSTCOPY)
    ),
    "migrating-offline": walk(*TO_MIGRATING, offline=True, attempt=1, prepare_id="p-1"),
    "finishing": walk(*TO_MIGRATING, Phase.FINISHING, attempt=1, prepare_id="p-1"),
    "finishing-offline": walk(*TO_MIGRATING, Phase.FINISHING, offline=True, attempt=1, prepare_id="p-1"),
    # the target committed; the source did not answer the removal of its copied disks
    "finishing-committed": walk(
        *TO_MIGRATING,
        Phase.FINISHING,
        attempt=1,
        prepare_id="p-1",
        committed_at=NOW - timedelta(seconds=5),
        lost_host="host1",
        lost_since=NOW - timedelta(seconds=5),
    ),
    "rb-before-job": walk(
        Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK, attempt=1, rollback_to=Phase.ROLLED_BACK, error=E_JOB
    ),
    "rb-retry": walk(Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK, attempt=1, rollback_to=Phase.PENDING),
    "rb-after-job": walk(
        *TO_MIGRATING, Phase.ROLLING_BACK, attempt=1, prepare_id="p-1", rollback_to=Phase.ROLLED_BACK, error=E_JOB
    ),
    "rb-after-job-cleaned": walk(
        *TO_MIGRATING,
        Phase.ROLLING_BACK,
        attempt=1,
        prepare_id="p-1",
        rollback_to=Phase.ROLLED_BACK,
        error=E_JOB,
        target_cleaned=True,
    ),
    "rb-cancel": walk(
        *TO_MIGRATING,
        Phase.ROLLING_BACK,
        attempt=1,
        prepare_id="p-1",
        rollback_to=Phase.CANCELLED,
        cancel_requested=True,
    ),
}
# ... and each, once it has seen the target hold a paused incoming copy for the whole bound
RECORDS.update(
    {
        f"{name}-stale-copy": replace(r, stale_incoming_since=NOW - timedelta(seconds=T.stale_incoming_s))
        for name, r in list(RECORDS.items())
        if name.startswith(("migrating", "finishing", "rb-after-job", "rb-cancel"))
    }
)
STATES = (None, R, P, OFF, UNK)
PLACEMENTS = [Placement(s, t, j) for s, t, j in itertools.product(STATES, STATES, (False, True))] + [
    # the target's domain an incoming migration's, still paused by libvirt for it
    Placement(s, DomainState.PAUSED, j, target_arriving=True)
    for s, j in itertools.product(STATES, (False, True))
]
PLACEMENTS.append(None)


def prepare(pid, migration_id="m-1"):
    return PrepareRecord(
        pid, "g1", "u-1", ("/var/lib/libvirt/images/g1.qcow2",), T0, T0 + timedelta(hours=1), migration_id
    )


LISTINGS = {"unknown": None, "empty": [], "ours": [prepare("p-2")], "other": [prepare("p-x", "m-other")]}


def _executing(s):
    return s in (DomainState.RUNNING, DomainState.BLOCKED)


def assert_invariant(before, placement, d, *, recovering):
    """The safety rules every decision keeps, whatever it observed."""
    after, acts = d.record, d.actions
    kinds = {type(a) for a in acts}
    started = before.migration_started
    p = placement
    ctx = f"{before.phase.name} {p} -> {after.phase.name} {acts} ({d.outcome})"
    s, t = (p.source_state, p.target_state) if p else (UNK, UNK)
    job = p.source_job_active if p else True
    clear = UNK not in (s, t)
    if before.options.offline:
        t_present, s_alive = t is not None and clear, s is not None and s.is_active
        s_present = s is not None
    else:
        t_present, s_alive = t is not None and t.is_active, s is not None and s.is_active
        s_present = s_alive
    t_alive = t is not None and t.is_active

    # the target's images are removed only when the guest cannot be using them
    # (or, with the guest running nowhere, when the source still defines it and the migration
    # would have undefined it there: it stopped before the switch-over, the target's copy is partial)
    # ... except a discard: libvirt's incoming copy, paused for the migration, while the source
    # executes the guest with no job (the source never handed it over: it would be paused)
    discards = any(isinstance(a, CleanupTarget) and a.discard_incoming for a in acts)
    if discards:
        arriving = p is not None and p.target_arriving and t is DomainState.PAUSED
        assert clear and _executing(s) and not job and arriving and not before.options.offline, ctx
    elif CleanupTarget in kinds and started:
        stopped_before_switch = (
            t is None
            and s in (DomainState.SHUTOFF, DomainState.CRASHED)
            and before.options.undefine_source
            and not before.options.offline
        )
        # ... or, defined on neither host after its job failed before any post-copy, the guest is gone
        # from the source by someone's hand: the target's incoming copy never became it
        removed_before_landing = (
            t is None
            and s is None
            and before.phase is Phase.MIGRATING
            and before.error is not None
            and not too_late_to_cancel(before)
            and not before.options.offline
        )
        assert clear and not t_alive and not t_present and not job, ctx
        assert s_present or stopped_before_switch or removed_before_landing, ctx
    # commit / success only when the guest runs on the target alone -- landed: not an incoming
    # domain still paused for the migration, nor one going away -- or, once the job completed
    # (seen or not), when the target alone defines it persistently: it landed, then stopped there
    if CommitTarget in kinds or (after.phase is Phase.SUCCEEDED and before.phase is not Phase.SUCCEEDED):
        o = before.options
        arriving = p is not None and (p.target_arriving or t is DomainState.SHUTDOWN) and not o.offline
        landed_then_stopped = (
            before.phase in (Phase.MIGRATING, Phase.FINISHING)
            and not o.offline
            and o.persist_dest
            and o.undefine_source
            and s is None
            and t in (DomainState.SHUTOFF, DomainState.CRASHED)
        )
        assert clear and ((t_present and not arriving) or landed_then_stopped) and not s_alive and not job, ctx
    # a rollback ends only with the guest on the source alone
    if after.phase in (Phase.ROLLED_BACK, Phase.CANCELLED) and after.phase is not before.phase and started:
        assert clear and s_present and not t_alive and not job, ctx
    # executing on both hosts: stop the job (pre-copy: the source is authoritative) or call an operator
    if started and p and _executing(s) and _executing(t):
        assert CleanupTarget not in kinds and CommitTarget not in kinds, ctx
        assert AbortMigration in kinds or (after.phase is Phase.FAILED and after.error.reason == "VM_ON_TWO_HOSTS"), ctx
    # never a second job or a second prepare from an observation
    assert not kinds & {StartMigration, PrepareTarget}, ctx
    if WatchJob in kinds:
        assert p and job, ctx
    # never stuck: a non-final record has a deadline
    if not after.phase.is_final:
        assert after.phase_deadline is not None, ctx
    if recovering and after.phase is Phase.FAILED and before.phase is not Phase.FAILED:
        assert after.error and after.error.hint, ctx


@pytest.mark.parametrize("name", sorted(RECORDS))
@pytest.mark.parametrize("placement", PLACEMENTS, ids=str)
def test_recovery_keeps_the_invariant(name, placement):
    record = RECORDS[name]
    for listing in LISTINGS.values():
        d = recover(record, placement, listing, NOW, T)
        assert_invariant(record, placement, d, recovering=True)


@pytest.mark.parametrize("name", sorted(RECORDS))
@pytest.mark.parametrize("placement", PLACEMENTS[:-1], ids=str)
def test_every_placement_event_keeps_the_invariant(name, placement):
    record = RECORDS[name]
    assert_invariant(record, placement, decide(record, placement, NOW, T), recovering=False)


ON_SRC = Placement(R, None)
ON_TGT = Placement(None, R)
MOVING = Placement(R, P, True)


@pytest.mark.parametrize(
    ("name", "placement", "listing", "phase", "actions", "outcome"),
    [
        ("pending", ON_SRC, "empty", Phase.PENDING, (), "queued; nothing to recover"),
        (
            "pending-after-retry",
            ON_SRC,
            "ours",
            Phase.PENDING,
            (CleanupTarget(("p-2",)),),
            "queued; removing 1 stray prepare(s) of an earlier attempt",
        ),
        ("pending", ON_SRC, "other", Phase.PENDING, (), "queued; nothing to recover"),
        ("preflight", None, "unknown", Phase.PREFLIGHT, (RunPreflight(),), "re-running preflight"),
        ("preparing", ON_SRC, "empty", Phase.PENDING, (), "prepare interrupted, target holds nothing; re-queued"),
        ("preparing-last-attempt", ON_SRC, "empty", Phase.FAILED, (), "prepare interrupted; failed after 3 attempts"),
        (
            "preparing",
            ON_SRC,
            "ours",
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-2",)),),
            "prepare interrupted; rolling back (cleaning target, then re-queue)",
        ),
        (
            "preparing",
            ON_SRC,
            "unknown",
            Phase.ROLLING_BACK,
            (CleanupTarget(()),),
            "prepare interrupted; rolling back (cleaning target, then re-queue)",
        ),
        (
            "preparing-last-attempt",
            ON_SRC,
            "ours",
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-2",)),),
            "prepare interrupted; rolling back (cleaning target, then rolled back)",
        ),
        ("migrating", MOVING, "ours", Phase.MIGRATING, (WatchJob(),), "recovered: migration job running; following it"),
        (
            "migrating-postcopy",
            Placement(P, R, True),
            "ours",
            Phase.MIGRATING,
            (WatchJob(),),
            "recovered: migration job running; following it",
        ),
        (
            "migrating",
            ON_TGT,
            "ours",
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "recovered: guest runs on target; committing",
        ),
        (
            "migrating",
            ON_SRC,
            "ours",
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "recovered: migration interrupted (MIGRATION_INTERRUPTED), guest runs on source; rolling back "
            "(cleaning target, then re-queue)",
        ),
        (
            "migrating",
            Placement(P, R),
            "ours",
            Phase.MIGRATING,
            (ObservePlacement(2.0),),
            "recovered: placement settling; observing again",
        ),
        ("migrating", None, "ours", Phase.MIGRATING, (), "cannot observe g1 on both hosts; waiting for the agents"),
        (
            "migrating",
            Placement(R, R),
            "ours",
            Phase.FAILED,
            (),
            "recovered: g1 executes on both host1 and host2; failed, needs an operator",
        ),
        (
            "migrating-offline",
            Placement(None, OFF),
            "empty",
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "recovered: guest runs on target; committing",
        ),
        (
            "finishing",
            ON_TGT,
            "ours",
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "recovered: guest runs on target only; committing",
        ),
        (
            "finishing",
            Placement(OFF, None),
            "ours",
            Phase.FAILED,
            (KeepTarget("p-1"),),  # the target keeps its copies for the operator
            "recovered: g1 runs on neither host1 nor host2; failed, needs an operator",
        ),
        ("rb-before-job", None, "empty", Phase.ROLLED_BACK, (), "target holds nothing of this migration; rolled back"),
        (
            "rb-before-job",
            None,
            "ours",
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-2",)),),
            "resuming rollback; cleaning target",
        ),
        (
            "rb-retry",
            None,
            "empty",
            Phase.PENDING,
            (),
            "target holds nothing of this migration; re-queued (attempt 1 of 3 used)",
        ),
        (
            "rb-after-job",
            MOVING,
            "ours",
            Phase.ROLLING_BACK,
            (AbortMigration(), ObservePlacement(2.0)),
            "recovered: migration job still active; aborting it",
        ),
        (
            "rb-after-job",
            ON_SRC,
            "ours",
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "recovered: job stopped, guest runs on source only; cleaning target",
        ),
        (
            "rb-after-job-cleaned",
            ON_SRC,
            "empty",
            Phase.ROLLED_BACK,
            (),
            "recovered: target cleaned, guest runs on source; rolled back",
        ),
        (
            "rb-cancel",
            ON_TGT,
            "ours",
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "recovered: too late to cancel: the guest runs on target; finishing",
        ),
    ],
)
def test_recover(name, placement, listing, phase, actions, outcome):
    d = recover(RECORDS[name], placement, LISTINGS[listing], NOW, T)
    assert (d.record.phase, d.actions, d.outcome) == (phase, actions, outcome)


def test_recovered_interruption_is_recorded():
    d = recover(RECORDS["migrating"], ON_SRC, [], NOW, T)
    assert d.record.rollback_to is Phase.PENDING  # tried again: the guest runs on the source only
    assert "MIGRATION_INTERRUPTED" in d.record.history[-1].reason
    last = recover(replace(RECORDS["migrating"], attempt=T.max_attempts), ON_SRC, [], NOW, T)
    assert last.record.rollback_to is Phase.ROLLED_BACK
    assert last.record.error.reason == "MIGRATION_INTERRUPTED" and "host1" in last.record.error.hint


@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED, Phase.ROLLED_BACK])
def test_final_records_are_left_alone(phase):
    path = {
        Phase.SUCCEEDED: (*TO_MIGRATING, Phase.FINISHING, Phase.SUCCEEDED),
        Phase.FAILED: (Phase.FAILED,),
        Phase.CANCELLED: (Phase.CANCELLED,),
        Phase.ROLLED_BACK: (Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK, Phase.ROLLED_BACK),
    }[phase]
    r = walk(*path)
    for p in (None, ON_SRC, Placement(R, R)):
        d = recover(r, p, [prepare("p-2")], NOW, T)
        assert d.record is r and d.actions == () and d.outcome == f"final ({phase.name}); nothing to recover"


def test_a_recovered_record_then_finishes_through_decide():
    """Leader change mid-migration: the new leader reattaches, the job ends, the record finishes."""
    from ferry.coordinator.events import Committed, MigrationEnded

    d = recover(RECORDS["migrating"], MOVING, [prepare("p-1")], NOW, T)
    assert d.actions == (WatchJob(),)
    r = d.record
    for event in (MigrationEnded(True), ON_TGT, Committed()):
        r = decide(r, event, NOW, T).record
    assert r.phase is Phase.SUCCEEDED


def test_a_new_leader_that_cannot_reach_an_agent_waits_for_it_with_a_bound():
    """Recovery without a placement because a host does not answer: the same bounded wait as
    decide's (probes, then give up), kept across leaders through the record."""
    from datetime import timedelta

    from ferry.coordinator.events import ObservePlacement

    r = RECORDS["finishing"]
    d = recover(r, None, None, NOW, T, unreachable="host2")
    assert d.actions == (ObservePlacement(0.5),) and (d.record.lost_host, d.record.lost_since) == ("host2", NOW)
    # the next leader finds the wait in the record and keeps its start
    later = recover(d.record, None, None, NOW + timedelta(seconds=30), T, unreachable="host2")
    assert later.record is d.record and later.actions == (ObservePlacement(5.0),)
    gave_up = recover(d.record, None, None, NOW + timedelta(seconds=T.agent_lost_s), T, unreachable="host2")
    assert gave_up.record.phase is Phase.FAILED and gave_up.record.error.reason == "AGENT_LOST"
    # both answer: the wait ends, the phase goes on from the placement
    back = recover(d.record, ON_TGT, [], NOW + timedelta(seconds=3), T)
    assert back.actions == (CommitTarget("p-1"),) and back.record.lost_host == ""
    assert back.record.history[-1].reason == "host2 available again after 3.0 s"


def test_a_new_leader_goes_on_waiting_for_a_source_whose_copied_disks_are_not_removed_yet():
    """The target committed, the source did not answer the removal; the leader changed."""
    from ferry.coordinator.events import Committed

    r = RECORDS["finishing-committed"]
    d = recover(r, None, None, NOW, T, unreachable="host1")  # still down: the wait keeps its start
    assert d.record.lost_since == r.lost_since and d.record.phase is Phase.FINISHING
    back = recover(r, ON_TGT, [], NOW, T)  # back: commit again (a no-op) and remove
    assert back.actions == (CommitTarget("p-1"),) and back.record.committed_at == r.committed_at
    done = decide(back.record, Committed("source disks removed on host1: a"), NOW, T).record
    assert done.phase is Phase.SUCCEEDED and done.committed_at is None and done.error is None
    end = r.lost_since + timedelta(seconds=T.agent_lost_s)
    gave_up = recover(r, None, None, end, T, unreachable="host1")  # never back: succeeded, disks noted
    assert gave_up.record.phase is Phase.SUCCEEDED and gave_up.record.error is None
    assert gave_up.record.history[-2].reason.startswith("SOURCE_DISKS_LEFT: ")


@pytest.mark.parametrize(
    ("listing", "phase", "actions", "outcome"),
    [
        ([prepare("p-1")], Phase.PREPARING, (), "prepared ahead of its slot (p-1); waiting for it"),
        (
            [prepare("p-1"), prepare("p-2")],
            Phase.PREPARING,
            (CleanupTarget(("p-2",)),),
            "prepared ahead of its slot (p-1); waiting for it",
        ),
        (None, Phase.PREPARING, (), "prepared ahead of its slot (p-1); waiting for it"),
        ([], Phase.ROLLING_BACK, (CleanupTarget(("p-1",)),), None),  # the target lost it: queue again
    ],
)
def test_a_new_leader_keeps_a_record_prepared_ahead_waiting_while_its_prepare_is_there(
    listing, phase, actions, outcome
):
    d = recover(RECORDS["waiting-for-slot"], None, listing, NOW, T)
    assert (d.record.phase, d.actions) == (phase, actions)
    if outcome is not None:
        assert d.outcome == outcome
    else:
        assert d.record.rollback_to is Phase.PENDING


def test_a_new_leader_discards_an_incoming_copy_left_paused_past_the_bound():
    record = RECORDS["migrating-failed-stale-copy"]
    stale = Placement(R, P, target_arriving=True)
    d = recover(record, stale, [prepare("p-1")], NOW, T)
    assert d.record.phase is Phase.ROLLING_BACK and d.actions == (CleanupTarget(("p-1",), discard_incoming=True),)
    # a record that had not seen it before waits the bound from now
    fresh = RECORDS["migrating-failed"]
    d = recover(fresh, stale, [prepare("p-1")], NOW, T)
    assert d.record.phase is Phase.MIGRATING and d.record.stale_incoming_since == NOW
    assert d.actions == (ObservePlacement(T.observe_delay_s),)
