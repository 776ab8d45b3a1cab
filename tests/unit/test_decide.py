"""The decision function: each (record, event) yields exactly this phase, these actions, this outcome."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.coordinator.decide import Location, decide, locate
from ferry.coordinator.events import (
    COMMIT_STEP,
    KEEP_STEP,
    AbortMigration,
    Admitted,
    AgentLost,
    CancelRequested,
    CleanedUp,
    CleanupTarget,
    CommitTarget,
    Committed,
    KeepTarget,
    MigrationEnded,
    ObservePlacement,
    Placement,
    PreflightResult,
    Prepared,
    PrepareFailed,
    PrepareTarget,
    Progress,
    RunPreflight,
    SlotGranted,
    StartMigration,
    StepFailed,
    Tick,
    Waiting,
    WatchJob,
)
from ferry.coordinator.phases import GiB, Phase, Timeouts
from ferry.coordinator.record import ActionEntry, decode, encode, new_migration, too_late_to_cancel, with_phase
from ferry.model import (
    CompletedJob,
    DiskPlan,
    DomainState,
    JobStats,
    MigrationPhase,
    MigrationProgress,
    PolicyAction,
    Problem,
    StorageMode,
)

T0 = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=10)
LATE = T0 + timedelta(days=2)  # past every deadline
T = Timeouts()

R, P, OFF, UNK = DomainState.RUNNING, DomainState.PAUSED, DomainState.SHUTOFF, DomainState.UNKNOWN
ON_SRC = Placement(R, None)
ON_TGT = Placement(None, R)
ON_TGT_SRC_DEFINED = Placement(OFF, R)  # undefine_source=False
SRC_AND_INCOMING = Placement(R, P)  # the target's incoming copy not torn down yet
TGT_AND_PAUSED_SRC = Placement(P, R)  # the source's copy not stopped yet
MOVING = Placement(R, P, source_job_active=True)
BOTH = Placement(R, R)
BOTH_JOB = Placement(R, R, source_job_active=True)
NOWHERE = Placement(OFF, None)
UNCLEAR = Placement(UNK, None)

E_SPACE = Problem("INSUFFICIENT_SPACE", "3 GiB needed, 1 GiB free in /var/lib/libvirt/images", "free space")
E_BRIDGE = Problem("BRIDGE_MISSING", "no bridge br-guest on host2", "add a bridge mapping")
E_JOB = Problem("MIGRATION_FAILED", "the job failed", "see the log")
OBSERVE_LATER = ObservePlacement(T.observe_delay_s)


def walk(*phases: Phase, **kw):
    r = new_migration(
        id="m-1",
        vm="g1",
        vm_uuid="u-1",
        source_host="host1",
        target_host="host2",
        now=T0,
        timeouts=T,
        memory_bytes=1 * GiB,
    )
    for p in phases:
        r = with_phase(r, p, T0, p.name.lower(), T)
    return replace(r, **kw)


_TO_MIGRATING = (Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING)
PENDING = walk()
PREFLIGHT = walk(Phase.PREFLIGHT, attempt=1)
PREPARING = walk(Phase.PREFLIGHT, Phase.PREPARING, attempt=1)
MIGRATING = walk(*_TO_MIGRATING, attempt=1, prepare_id="p-1", destination_xml="<domain/>")
MIGRATING_FAILED = replace(MIGRATING, error=E_JOB)
POSTCOPY = replace(MIGRATING, progress=MigrationProgress(MigrationPhase.POSTCOPY))
SWITCHING = replace(
    MIGRATING,
    progress=MigrationProgress(MigrationPhase.PRECOPY),
    actions=(ActionEntry(T0, PolicyAction("start-postcopy", "no progress for 60 s")),),
)
FINISHING = walk(*_TO_MIGRATING, Phase.FINISHING, attempt=1, prepare_id="p-1")
RB_EARLY = walk(
    Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK, attempt=1, rollback_to=Phase.ROLLED_BACK, error=E_SPACE
)
RB_RETRY = replace(RB_EARLY, rollback_to=Phase.PENDING, error=None)
RB_LATE = walk(
    *_TO_MIGRATING, Phase.ROLLING_BACK, attempt=1, prepare_id="p-1", rollback_to=Phase.ROLLED_BACK, error=E_JOB
)
RB_LATE_CLEANED = replace(RB_LATE, target_cleaned=True)
RB_CANCEL = replace(RB_LATE, rollback_to=Phase.CANCELLED, cancel_requested=True, error=None)
SUCCEEDED = walk(*_TO_MIGRATING, Phase.FINISHING, Phase.SUCCEEDED, prepare_id="p-1")
CANCELLED = walk(Phase.PREFLIGHT, Phase.CANCELLED, cancel_requested=True)


def check(record, event, phase, actions, outcome, now=NOW):
    d = decide(record, event, now, T)
    assert (d.record.phase, d.actions, d.outcome) == (phase, actions, outcome)
    assert d.record.revision == record.revision
    return d.record


def test_a_wait_is_noted_once_and_only_while_pending():
    r = check(PENDING, Waiting("host2 is down"), Phase.PENDING, (), "waiting: host2 is down")
    assert r.history[-1].reason == "waiting: host2 is down"
    d = decide(r, Waiting("host2 is down"), NOW, T)
    assert d.record is r and d.outcome == "still waiting: host2 is down"  # nothing to write
    check(r, Waiting("target host2 is cordoned"), Phase.PENDING, (), "waiting: target host2 is cordoned")
    assert decide(MIGRATING, Waiting("x"), NOW, T).outcome == "ignored: Waiting in MIGRATING"


@pytest.mark.parametrize(
    ("record", "event", "phase", "actions", "outcome"),
    [
        pytest.param(
            PENDING, Admitted(), Phase.PREFLIGHT, (RunPreflight(),), "admitted; running preflight", id="admitted"
        ),
        pytest.param(
            PREFLIGHT,
            PreflightResult(),
            Phase.PREPARING,
            (PrepareTarget(),),
            "preflight passed; preparing target",
            id="preflight-ok",
        ),
        pytest.param(
            PREFLIGHT,
            PreflightResult((E_BRIDGE, E_SPACE)),
            Phase.FAILED,
            (),
            "preflight found 2 problem(s): BRIDGE_MISSING, INSUFFICIENT_SPACE; failed",
            id="preflight-blocked",
        ),
        pytest.param(
            PREPARING,
            Prepared("p-1", "<domain/>"),
            Phase.MIGRATING,
            (StartMigration(),),
            "prepared; starting migration",
            id="prepared",
        ),
        pytest.param(
            PREPARING,
            PrepareFailed(E_SPACE),
            Phase.ROLLING_BACK,
            (CleanupTarget(()),),
            "prepare failed: INSUFFICIENT_SPACE; rolling back (cleaning target, then rolled back)",
            id="prepare-failed",
        ),
        pytest.param(
            MIGRATING,
            MigrationEnded(True, CompletedJob(downtime_ms=40)),
            Phase.FINISHING,
            (CommitTarget("p-1", require_landed=True),),
            "migration completed; committing if the guest landed on target",
            id="job-completed",
        ),
        pytest.param(
            replace(MIGRATING, options=replace(MIGRATING.options, offline=True)),
            MigrationEnded(True, CompletedJob(downtime_ms=40)),
            Phase.FINISHING,
            (ObservePlacement(),),
            "migration completed; verifying placement",
            id="offline-job-completed",
        ),
        pytest.param(
            replace(MIGRATING, prepare_id=""),
            MigrationEnded(True, CompletedJob(downtime_ms=40)),
            Phase.FINISHING,
            (ObservePlacement(),),
            "migration completed; verifying placement",
            id="job-completed-no-prepare",
        ),
        pytest.param(
            MIGRATING,
            MigrationEnded(False, error=E_JOB),
            Phase.MIGRATING,
            (ObservePlacement(),),
            "migration failed (MIGRATION_FAILED); observing placement",
            id="job-failed",
        ),
        pytest.param(FINISHING, Committed(), Phase.SUCCEEDED, (), "committed; succeeded", id="committed"),
        pytest.param(RB_EARLY, CleanedUp(), Phase.ROLLED_BACK, (), "target cleaned; rolled back", id="cleaned-early"),
        pytest.param(
            RB_RETRY,
            CleanedUp(),
            Phase.PENDING,
            (),
            "target cleaned; re-queued (attempt 1 of 3 used)",
            id="cleaned-retry",
        ),
        pytest.param(
            RB_LATE,
            CleanedUp(),
            Phase.ROLLING_BACK,
            (ObservePlacement(),),
            "target cleaned; verifying the guest runs on source",
            id="cleaned-then-verify",
        ),
        pytest.param(
            RB_LATE,
            MigrationEnded(False, error=E_JOB),
            Phase.ROLLING_BACK,
            (ObservePlacement(),),
            "migration job ended (failed); observing placement",
            id="aborted-job-ended",
        ),
        pytest.param(
            RB_EARLY,
            Prepared("p-9", "<domain/>"),
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-9",)),),
            "late prepare p-9; removing it",
            id="late-prepare-while-rolling-back",
        ),
        pytest.param(
            PENDING,
            Prepared("p-9", "<domain/>"),
            Phase.PENDING,
            (CleanupTarget(("p-9",)),),
            "late prepare p-9; removing it",
            id="late-prepare-after-requeue",
        ),
        pytest.param(
            PREFLIGHT,
            Prepared("p-9", "<domain/>"),
            Phase.PREFLIGHT,
            (CleanupTarget(("p-9",)),),
            "late prepare p-9; removing it",
            id="late-prepare-in-the-next-preflight",
        ),
        pytest.param(
            CANCELLED,
            Prepared("p-9", "<domain/>"),
            Phase.CANCELLED,
            (CleanupTarget(("p-9",)),),
            "late prepare p-9 of a CANCELLED migration; removing it",
            id="late-prepare-after-cancel",
        ),
        pytest.param(
            SUCCEEDED,
            Prepared("p-9", "<domain/>"),
            Phase.SUCCEEDED,
            (),
            "ignored: Prepared, the migration is final (SUCCEEDED)",
            id="final-ignores",
        ),
        pytest.param(MIGRATING, Admitted(), Phase.MIGRATING, (), "ignored: Admitted in MIGRATING", id="stale-event"),
        pytest.param(
            PENDING, PreflightResult(), Phase.PENDING, (), "ignored: PreflightResult in PENDING", id="stale-preflight"
        ),
        pytest.param(
            FINISHING,
            Progress(MigrationProgress()),
            Phase.FINISHING,
            (),
            "ignored: Progress in FINISHING",
            id="late-progress",
        ),
        pytest.param(
            RB_LATE,
            StepFailed("CleanupTarget", Problem("DOMAIN_RUNNING", "g1 runs on host2", "")),
            Phase.ROLLING_BACK,
            (),
            "CleanupTarget failed (DOMAIN_RUNNING); retrying at the deadline",
            id="step-failed",
        ),
    ],
)
def test_events(record, event, phase, actions, outcome):
    check(record, event, phase, actions, outcome)


def test_a_failed_step_in_rollback_is_retried_after_the_retry_delay_not_the_phase_limit():
    """An operator's fix on the host (here: a copy libvirtd kept) is picked up 30 s after the
    failure, then 60, 120 s ... (``retry_delay_s``), not at the end of RollingBack's 180 s; the
    note carries the error's hint. A deadline that is already sooner stays."""
    stuck = Problem("INCOMING_COPY_STUCK", "libvirtd on host2 keeps g1", "restart libvirtd on host2")
    r = decide(RB_LATE, StepFailed("clean up the target on host2", stuck), NOW, T).record
    assert r.phase_deadline == NOW + timedelta(seconds=T.retry_base_s) < RB_LATE.phase_deadline
    assert r.history[-1].reason.endswith("INCOMING_COPY_STUCK: libvirtd on host2 keeps g1; restart libvirtd on host2")
    again = replace(RB_LATE, retries=2)
    assert decide(again, StepFailed("x", stuck), NOW, T).record.phase_deadline == NOW + timedelta(seconds=120)
    soon = replace(RB_LATE, phase_deadline=NOW + timedelta(seconds=5))
    assert decide(soon, StepFailed("x", stuck), NOW, T).record.phase_deadline == soon.phase_deadline
    migrating = decide(MIGRATING, StepFailed("x", stuck), NOW, T).record
    assert migrating.phase_deadline == MIGRATING.phase_deadline  # Migrating keeps its own limit


def test_preflight_problems_all_reach_the_record():
    r = decide(PREFLIGHT, PreflightResult((E_BRIDGE, E_SPACE)), NOW, T).record
    assert r.error.reason == "BRIDGE_MISSING"
    assert E_BRIDGE.message in r.error.message and E_SPACE.message in r.error.message
    assert r.history[-1].reason == "preflight: BRIDGE_MISSING, INSUFFICIENT_SPACE"


def test_progress_updates_only_the_progress():
    snap = MigrationProgress(MigrationPhase.PRECOPY, JobStats(memory_total=100, memory_processed=60, iteration=2))
    d = decide(MIGRATING, Progress(snap), NOW, T)
    assert d.record == replace(MIGRATING, progress=snap, updated_at=NOW)
    assert d.actions == () and d.outcome == "progress"


def test_an_ignored_event_changes_nothing():
    d = decide(MIGRATING, Admitted(), NOW, T)
    assert d.record is MIGRATING


# --- after the job: placement decides -----------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "placement", "phase", "actions", "outcome"),
    [
        pytest.param(
            MIGRATING,
            MOVING,
            Phase.MIGRATING,
            (WatchJob(),),
            "migration job running; following it",
            id="migrating-moving",
        ),
        pytest.param(
            MIGRATING_FAILED,
            ON_SRC,
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "migration failed (MIGRATION_FAILED), guest runs on source; rolling back "
            "(cleaning target, then rolled back)",
            id="failed-on-source",
        ),
        pytest.param(
            MIGRATING_FAILED,
            ON_TGT,
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "guest runs on target (the job reported MIGRATION_FAILED); committing",
            id="failed-but-landed",
        ),
        pytest.param(
            MIGRATING_FAILED,
            SRC_AND_INCOMING,
            Phase.MIGRATING,
            (OBSERVE_LATER,),
            "placement settling; observing again",
            id="failed-settling",
        ),
        pytest.param(
            MIGRATING_FAILED,
            MOVING,
            Phase.MIGRATING,
            (OBSERVE_LATER,),
            "job still active after it reported its end; observing again",
            id="failed-still-moving",
        ),
        pytest.param(
            MIGRATING_FAILED,
            UNCLEAR,
            Phase.MIGRATING,
            (OBSERVE_LATER,),
            "placement unclear; observing again",
            id="failed-unclear",
        ),
        pytest.param(
            MIGRATING_FAILED,
            BOTH_JOB,
            Phase.MIGRATING,
            (AbortMigration(), OBSERVE_LATER),
            "guest executes on both hosts while the job runs; aborting the job",
            id="both-with-job",
        ),
        pytest.param(
            MIGRATING_FAILED,
            BOTH,
            Phase.FAILED,
            (),
            "g1 executes on both host1 and host2; failed, needs an operator",
            id="split-brain",
        ),
        pytest.param(
            MIGRATING_FAILED,
            NOWHERE,
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "g1 runs on neither host; it stopped on host1 during pre-copy; rolling back (cleaning target, then failed)",
            id="nowhere-precopy",
        ),
        pytest.param(
            replace(POSTCOPY, error=E_JOB),
            NOWHERE,
            Phase.FAILED,
            (KeepTarget("p-1"),),  # the target's copies may be the newest: its agent keeps them
            "g1 runs on neither host1 nor host2; failed, needs an operator",
            id="nowhere-postcopy",
        ),
        pytest.param(
            MIGRATING,
            ON_SRC,
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "migration interrupted (MIGRATION_INTERRUPTED), guest runs on source; rolling back "
            "(cleaning target, then re-queue)",
            id="job-gone-unobserved",
        ),
        pytest.param(
            replace(MIGRATING, attempt=T.max_attempts),
            ON_SRC,
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "migration interrupted (MIGRATION_INTERRUPTED), guest runs on source; rolling back "
            "(cleaning target, then rolled back)",
            id="job-gone-unobserved-last-attempt",
        ),
        pytest.param(
            MIGRATING_FAILED,
            ON_SRC,
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "migration failed (MIGRATION_FAILED), guest runs on source; rolling back "
            "(cleaning target, then rolled back)",
            id="job-failed-on-source",
        ),
        pytest.param(
            FINISHING,
            ON_TGT,
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "guest runs on target only; committing",
            id="finishing-landed",
        ),
        pytest.param(
            FINISHING,
            ON_TGT_SRC_DEFINED,
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "guest runs on target only; committing",
            id="finishing-source-kept-defined",
        ),
        pytest.param(
            FINISHING,
            TGT_AND_PAUSED_SRC,
            Phase.FINISHING,
            (OBSERVE_LATER,),
            "placement settling; observing again",
            id="finishing-source-not-stopped-yet",
        ),
        pytest.param(
            FINISHING,
            ON_SRC,
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "the job reported success but the guest runs on source only; rolling back "
            "(cleaning target, then rolled back)",
            id="finishing-not-landed",
        ),
        pytest.param(
            FINISHING,
            NOWHERE,
            Phase.FAILED,
            (KeepTarget("p-1"),),
            "g1 runs on neither host1 nor host2; failed, needs an operator",
            id="finishing-nowhere",
        ),
        pytest.param(
            RB_LATE,
            MOVING,
            Phase.ROLLING_BACK,
            (AbortMigration(), OBSERVE_LATER),
            "migration job still active; aborting it",
            id="rb-still-moving",
        ),
        pytest.param(
            RB_LATE,
            SRC_AND_INCOMING,
            Phase.ROLLING_BACK,
            (OBSERVE_LATER,),
            "placement settling; observing again",
            id="rb-incoming-not-gone",
        ),
        pytest.param(
            RB_LATE,
            ON_SRC,
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "job stopped, guest runs on source only; cleaning target",
            id="rb-clean",
        ),
        pytest.param(
            RB_LATE_CLEANED,
            ON_SRC,
            Phase.ROLLED_BACK,
            (),
            "target cleaned, guest runs on source; rolled back",
            id="rb-verified",
        ),
        pytest.param(
            replace(RB_CANCEL, target_cleaned=True),
            ON_SRC,
            Phase.CANCELLED,
            (),
            "target cleaned, guest runs on source; cancelled",
            id="rb-cancel-verified",
        ),
        pytest.param(
            RB_LATE,
            ON_TGT,
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "the migration landed: the guest runs on target; finishing",
            id="rb-landed",
        ),
        pytest.param(
            RB_CANCEL,
            ON_TGT,
            Phase.FINISHING,
            (CommitTarget("p-1"),),
            "too late to cancel: the guest runs on target; finishing",
            id="rb-cancel-too-late",
        ),
        pytest.param(
            RB_LATE_CLEANED,
            NOWHERE,
            Phase.FAILED,
            (),
            "g1 runs on neither host1 nor host2; failed, needs an operator",
            id="rb-gone-after-clean",
        ),
        pytest.param(
            RB_EARLY,
            BOTH,
            Phase.ROLLING_BACK,
            (),
            "placement not needed: no migration job was started",
            id="rb-early-ignores-placement",
        ),
        pytest.param(PREPARING, ON_SRC, Phase.PREPARING, (), "ignored: Placement in PREPARING", id="preparing"),
    ],
)
def test_placement(record, placement, phase, actions, outcome):
    check(record, placement, phase, actions, outcome)


def test_landing_after_a_failure_report_clears_the_error():
    r = decide(MIGRATING_FAILED, ON_TGT, NOW, T).record
    assert r.error is None


@pytest.mark.parametrize(
    ("record", "reason"),
    [(MIGRATING_FAILED, "VM_ON_TWO_HOSTS"), (FINISHING, "VM_ON_TWO_HOSTS"), (RB_LATE, "VM_ON_TWO_HOSTS")],
)
def test_split_brain_fails_loudly_and_keeps_everything(record, reason):
    d = decide(record, BOTH, NOW, T)
    assert d.record.error.reason == reason
    assert "suspend one copy" in d.record.error.hint and "p-1" in d.record.error.hint
    assert d.actions == ()


def test_a_vm_gone_everywhere_after_post_copy_keeps_the_target_copies_and_says_so():
    d = decide(replace(POSTCOPY, error=E_JOB), NOWHERE, NOW, T)
    assert d.record.error.reason == "VM_NOT_RUNNING"
    assert "start it" in d.record.error.hint and "prepare p-1" in d.record.error.hint


def test_a_vm_gone_everywhere_during_pre_copy_ends_failed_with_the_target_cleaned():
    # its host died (or QEMU crashed) in pre-copy: the source holds its newest state, the
    # target's copies are incomplete; removed, so the next migration can prepare again
    d = decide(MIGRATING_FAILED, NOWHERE, NOW, T)
    assert d.record.error.reason == "VM_NOT_RUNNING"
    assert "virsh start g1" in d.record.error.hint and "host1" in d.record.error.hint
    d = decide(d.record, CleanedUp(), NOW, T)
    assert (d.record.phase, d.actions) == (Phase.ROLLING_BACK, (ObservePlacement(),))
    d = decide(d.record, NOWHERE, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.FAILED, ())
    assert d.record.error.reason == "VM_NOT_RUNNING"


@pytest.mark.parametrize(
    ("placement", "offline", "location"),
    [
        (ON_SRC, False, Location.ON_SOURCE),
        (ON_TGT, False, Location.ON_TARGET),
        (ON_TGT_SRC_DEFINED, False, Location.ON_TARGET),
        (Placement(P, None), False, Location.ON_SOURCE),  # a paused guest lives on the source
        (Placement(None, P), False, Location.ON_TARGET),  # a paused guest landed paused
        # an incoming migration's domain, still paused for it, or one going away: not landed
        (Placement(None, P, target_arriving=True), False, Location.ARRIVING),
        (Placement(OFF, P, target_arriving=True), False, Location.ARRIVING),
        (Placement(DomainState.CRASHED, P, target_arriving=True), False, Location.ARRIVING),
        (Placement(None, DomainState.SHUTDOWN), False, Location.ARRIVING),
        (Placement(R, P, target_arriving=True), False, Location.SETTLING),
        (Placement(R, P, source_job_active=True, target_arriving=True), False, Location.MOVING),
        (SRC_AND_INCOMING, False, Location.SETTLING),
        (TGT_AND_PAUSED_SRC, False, Location.SETTLING),
        (Placement(P, P), False, Location.SETTLING),
        (MOVING, False, Location.MOVING),
        (Placement(P, R, source_job_active=True), False, Location.MOVING),  # post-copy
        (BOTH, False, Location.ON_BOTH),
        (BOTH_JOB, False, Location.ON_BOTH),
        (Placement(DomainState.BLOCKED, R), False, Location.ON_BOTH),
        (NOWHERE, False, Location.NOWHERE),
        (Placement(None, None), False, Location.NOWHERE),
        (Placement(DomainState.CRASHED, OFF), False, Location.NOWHERE),
        (UNCLEAR, False, Location.UNCLEAR),
        (Placement(R, UNK), False, Location.UNCLEAR),
        # offline: the definition moves, a defined domain is present
        (Placement(OFF, None), True, Location.ON_SOURCE),
        (Placement(None, OFF), True, Location.ON_TARGET),
        (Placement(OFF, OFF), True, Location.ON_TARGET),  # undefine_source=False keeps the source's
        (Placement(None, None), True, Location.NOWHERE),
        (Placement(R, None), True, Location.ON_SOURCE),  # somebody started it meanwhile
        (Placement(R, OFF), True, Location.DIVERGED),  # ... after the definition moved
        (Placement(OFF, R), True, Location.ON_TARGET),
    ],
)
def test_locate(placement, offline, location):
    assert locate(placement, offline) is location


# --- cancel -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "phase", "actions", "outcome", "ends"),
    [
        (PENDING, Phase.CANCELLED, (), "cancelled", None),
        (PREFLIGHT, Phase.CANCELLED, (), "cancelled", None),
        (
            PREPARING,
            Phase.ROLLING_BACK,
            (CleanupTarget(()),),
            "cancel requested; rolling back (cleaning target, then cancelled)",
            Phase.CANCELLED,
        ),
        (
            MIGRATING,
            Phase.ROLLING_BACK,
            (AbortMigration(), ObservePlacement()),
            "cancel requested; rolling back (aborting migration; observing placement, then cancelled)",
            Phase.CANCELLED,
        ),
        (
            MIGRATING_FAILED,
            Phase.ROLLING_BACK,
            (AbortMigration(), ObservePlacement()),
            "cancel requested; rolling back (aborting migration; observing placement, then rolled back)",
            Phase.ROLLED_BACK,
        ),
        (POSTCOPY, Phase.MIGRATING, (), "too late to cancel: " + too_late_to_cancel(POSTCOPY), None),
        # the switch to post-copy asked and done, before a progress report says so: the API refuses the
        # cancel (submission) and the engine keeps going alike (one rule, record.too_late_to_cancel)
        (
            SWITCHING,
            Phase.MIGRATING,
            (),
            "too late to cancel: post-copy started: g1 runs on host2 with part of its memory still on host1, "
            "and stopping it would lose the guest",
            None,
        ),
        (FINISHING, Phase.FINISHING, (), "too late to cancel: g1 landed on host2; the migration is finishing", None),
        (
            RB_RETRY,
            Phase.ROLLING_BACK,
            (),
            "cancel requested; the rollback now ends cancelled instead of re-queued",
            Phase.CANCELLED,
        ),
        (
            RB_LATE,
            Phase.ROLLING_BACK,
            (),
            "cancel requested; already rolling back, ends ROLLED_BACK",
            Phase.ROLLED_BACK,
        ),
        (RB_CANCEL, Phase.ROLLING_BACK, (), "already cancelling", Phase.CANCELLED),
        (SUCCEEDED, Phase.SUCCEEDED, (), "ignored: CancelRequested, the migration is final (SUCCEEDED)", None),
    ],
)
def test_cancel(record, phase, actions, outcome, ends):
    r = check(record, CancelRequested(), phase, actions, outcome)
    if phase is Phase.ROLLING_BACK:
        assert r.rollback_to is ends and r.cancel_requested
    if "too late" in outcome:
        assert r is record  # nothing stored: the API answers with the unchanged record


# --- deadlines --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "phase", "actions", "outcome"),
    [
        (PENDING, Phase.FAILED, (), "queued too long; failed"),
        (PREFLIGHT, Phase.PENDING, (), "preflight timed out; re-queued (attempt 1 of 3 used)"),
        (replace(PREFLIGHT, attempt=3), Phase.FAILED, (), "preflight timed out; failed after 3 attempts"),
        (
            PREPARING,
            Phase.ROLLING_BACK,
            (CleanupTarget(()),),
            "prepare timed out; rolling back (cleaning target, then re-queue)",
        ),
        (
            replace(PREPARING, attempt=3),
            Phase.ROLLING_BACK,
            (CleanupTarget(()),),
            "prepare timed out; rolling back (cleaning target, then rolled back)",
        ),
        (
            MIGRATING,
            Phase.ROLLING_BACK,
            (AbortMigration(), ObservePlacement()),
            "migration timed out; rolling back (aborting migration; observing placement, then rolled back)",
        ),
        (
            MIGRATING_FAILED,
            Phase.ROLLING_BACK,
            (AbortMigration(), ObservePlacement()),
            "placement did not settle; rolling back (aborting migration; observing placement, then rolled back)",
        ),
        (POSTCOPY, Phase.MIGRATING, (ObservePlacement(),), "deadline passed; retry 1 of 8"),
        (FINISHING, Phase.FINISHING, (ObservePlacement(),), "deadline passed; retry 1 of 8"),
        (RB_EARLY, Phase.ROLLING_BACK, (CleanupTarget(()),), "deadline passed; retry 1 of 8"),
        (RB_LATE, Phase.ROLLING_BACK, (AbortMigration(), ObservePlacement()), "deadline passed; retry 1 of 8"),
        (RB_LATE_CLEANED, Phase.ROLLING_BACK, (ObservePlacement(),), "deadline passed; retry 1 of 8"),
        (replace(RB_LATE, retries=8), Phase.FAILED, (), "gave up after 8 retries; failed (ROLLBACK_INCOMPLETE)"),
        (replace(FINISHING, retries=8), Phase.FAILED, (), "gave up after 8 retries; failed (FINISH_INCOMPLETE)"),
        (replace(POSTCOPY, retries=8), Phase.FAILED, (), "gave up after 8 retries; failed (POSTCOPY_STUCK)"),
    ],
)
def test_deadline(record, phase, actions, outcome):
    r = check(record, Tick(), phase, actions, outcome, now=LATE)
    if phase is Phase.FAILED:
        assert r.error.hint and r.error.message


@pytest.mark.parametrize("record", [PENDING, PREFLIGHT, PREPARING, MIGRATING, FINISHING, RB_LATE])
def test_no_action_before_the_deadline(record):
    d = decide(record, Tick(), record.phase_deadline - timedelta(seconds=1), T)
    assert d.record is record and d.actions == () and d.outcome == "no action: deadline not reached"


def test_migration_timeout_is_recorded():
    r = decide(MIGRATING, Tick(), LATE, T).record
    assert r.error.reason == "MIGRATION_TIMEOUT" and r.rollback_to is Phase.ROLLED_BACK


def test_rollback_retries_with_backoff_then_fails_loudly():
    r, now, delays = RB_LATE, LATE, []
    r = decide(r, StepFailed("CleanupTarget", Problem("DOMAIN_RUNNING", "g1 is running on host2", "")), now, T).record
    for _ in range(20):
        d = decide(r, Tick(), now, T)
        r = d.record
        if r.phase is not Phase.ROLLING_BACK:
            break
        delays.append((r.phase_deadline - now).total_seconds())
        now = r.phase_deadline
    assert delays == [30.0, 60.0, 120.0, 240.0, 480.0, 900.0, 900.0, 900.0]
    assert r.phase is Phase.FAILED and r.error.reason == "ROLLBACK_INCOMPLETE"
    assert "MIGRATION_FAILED" in r.error.message and "DOMAIN_RUNNING" in r.error.message
    assert "prepare p-1 on host2" in r.error.hint
    assert [h.reason for h in r.history if h.reason.startswith("retry")][-1] == "retry 8: deadline passed"


# --- agents lost ------------------------------------------------------------------------------------

PROBE = ObservePlacement(0.5)  # the first probe of a lost agent (Timeouts.agent_probe_s)
LOST = "agent on {h} lost; probing again in 0.5 s (gives up after 120 s)"


def lost(record, host, at=NOW):
    """``record`` waiting for ``host`` since ``at``."""
    return replace(record, lost_host=host, lost_since=at)


@pytest.mark.parametrize(
    ("record", "host", "phase", "actions", "outcome"),
    [
        (PENDING, "host2", Phase.PENDING, (), "ignored: AgentLost in PENDING"),
        # nothing touched yet: wait for it (was: re-queued at once, three attempts spent in 70 ms)
        (PREFLIGHT, "host2", Phase.PREFLIGHT, (PROBE,), LOST.format(h="host2")),
        (replace(PREFLIGHT, attempt=3), "host1", Phase.PREFLIGHT, (PROBE,), LOST.format(h="host1")),
        # the prepare's answer is lost: undo it at once (the next attempt's preflight waits)
        (
            PREPARING,
            "host2",
            Phase.ROLLING_BACK,
            (CleanupTarget(()),),
            "agent on host2 lost; rolling back (cleaning target, then re-queue)",
        ),
        # was: "waiting for it" until the phase deadline (44 minutes), for a lease change that never came
        (MIGRATING, "host1", Phase.MIGRATING, (PROBE,), LOST.format(h="host1")),
        (MIGRATING_FAILED, "host1", Phase.MIGRATING, (PROBE,), LOST.format(h="host1")),
        (FINISHING, "host2", Phase.FINISHING, (PROBE,), LOST.format(h="host2")),
        (RB_LATE, "host2", Phase.ROLLING_BACK, (PROBE,), LOST.format(h="host2")),
        (RB_EARLY, "host2", Phase.ROLLING_BACK, (PROBE,), LOST.format(h="host2")),
        (MIGRATING, "host9", Phase.MIGRATING, (), "ignored: AgentLost in MIGRATING"),
    ],
)
def test_agent_lost(record, host, phase, actions, outcome):
    r = check(record, AgentLost(host), phase, actions, outcome)
    if actions == (PROBE,):  # the wait is in the record (a new leader goes on with it)
        assert (r.lost_host, r.lost_since) == (host, NOW)
        assert r.history[-1].reason == f"agent on {host} lost; probing it until it answers"
        assert r.next_deadline(T) == NOW + timedelta(seconds=120)  # not the phase's (bug 1: 44 min)


def test_a_host_lost_with_its_reason_says_which_part_is_down():
    """The fleet knows why a host went away (here its libvirtd, the agent running): the record says
    that, not "agent on host1 lost"."""
    why = Problem("LIBVIRTD_DOWN", "libvirtd on host1 does not answer its agent (the agent runs)", "start libvirtd")
    outcome = "host1 unavailable: LIBVIRTD_DOWN: libvirtd on host1 does not answer its agent (the agent runs)"
    r = check(
        MIGRATING,
        AgentLost("host1", why),
        Phase.MIGRATING,
        (PROBE,),
        f"{outcome}; probing again in 0.5 s (gives up after 120 s)",
    )
    assert r.history[-1].reason == f"{outcome}; probing it until it answers"


@pytest.mark.parametrize(
    ("after_s", "delay"),
    [(0.2, 0.5), (1.5, 0.75), (3, 1.5), (6, 3.0), (20, 5.0), (119, 5.0)],
)
def test_a_lost_agent_is_probed_with_back_off_without_writing_the_record(after_s, delay):
    r = lost(FINISHING, "host2")
    d = decide(r, AgentLost("host2"), NOW + timedelta(seconds=after_s), T)
    assert d.record is r  # no store write per probe
    assert d.actions == (ObservePlacement(delay),)
    assert d.outcome == f"agent on host2 lost for {after_s:.1f} s; probing again in {delay:g} s"


@pytest.mark.parametrize(
    ("record", "phase", "actions", "reason", "hint"),
    [
        (PREFLIGHT, Phase.FAILED, (), "AGENT_LOST", "check ferry-agent and libvirtd on host2"),
        (MIGRATING, Phase.ROLLING_BACK, (AbortMigration(), ObservePlacement()), "AGENT_LOST", "ferry vms"),
        (POSTCOPY, Phase.FAILED, (), "AGENT_LOST", "restart neither"),
        (FINISHING, Phase.FAILED, (), "AGENT_LOST", "were not committed and are kept"),
        (RB_LATE, Phase.FAILED, (), "AGENT_LOST", "remove prepare p-1 on host2"),
        (RB_EARLY, Phase.FAILED, (), "AGENT_LOST", "remove prepare (id unknown) on host2"),
    ],
)
def test_a_lost_agent_is_given_up_on_after_agent_lost_s(record, phase, actions, reason, hint):
    waiting = lost(record, "host2")
    too_late = NOW + timedelta(seconds=T.agent_lost_s)
    for event in (AgentLost("host2"), Tick()):  # the next probe's failure, or the engine's tick
        d = decide(waiting, event, too_late, T)
        assert (d.record.phase, d.actions) == (phase, actions), d.outcome
        assert d.record.error.reason == reason and hint in d.record.error.hint, d.record.error
        assert "for 120 s" in d.record.error.message
        assert (d.record.lost_host, d.record.lost_since) == ("", None)  # a new phase, a new wait
    early = decide(waiting, Tick(), too_late - timedelta(seconds=1), T)  # not before, whatever the phase deadline
    assert early.record is waiting and early.actions == (), early.outcome


def test_the_phase_deadline_no_longer_bounds_a_lost_agent():
    # Migrating's deadline is minutes to hours away (44 min in the campaign); the wait is not
    r = lost(MIGRATING_FAILED, "host1")
    assert r.phase_deadline > NOW + timedelta(minutes=10)
    assert r.next_deadline(T) == NOW + timedelta(seconds=120)


@pytest.mark.parametrize(
    ("record", "placement", "phase", "actions", "outcome"),
    [
        (
            PREFLIGHT,
            Placement(R, None),
            Phase.PREFLIGHT,
            (RunPreflight(),),
            "agents answer again; re-running preflight",
        ),
        (
            RB_EARLY,
            Placement(R, None),
            Phase.ROLLING_BACK,
            (CleanupTarget(()),),
            "agents answer again; cleaning target",
        ),
        # libvirtd on the source came back: the job was cancelled, the guest runs on the source
        (
            MIGRATING_FAILED,
            ON_SRC,
            Phase.ROLLING_BACK,
            (CleanupTarget(("p-1",)),),
            "migration failed (MIGRATION_FAILED), guest runs on source; "
            "rolling back (cleaning target, then rolled back)",
        ),
        (MIGRATING, MOVING, Phase.MIGRATING, (WatchJob(),), "migration job running; following it"),
        # the target agent restarted within its lease during Finishing: commit at once
        (FINISHING, ON_TGT, Phase.FINISHING, (CommitTarget("p-1"),), "guest runs on target only; committing"),
        (RB_LATE_CLEANED, ON_SRC, Phase.ROLLED_BACK, (), "target cleaned, guest runs on source; rolled back"),
    ],
)
def test_the_phase_goes_on_as_soon_as_both_agents_answer(record, placement, phase, actions, outcome):
    r = check(lost(record, "host2"), placement, phase, actions, outcome, now=NOW + timedelta(seconds=5.5))
    assert (r.lost_host, r.lost_since) == ("", None)
    if r.phase is record.phase:
        assert r.history[-1].reason == "host2 available again after 5.5 s"


def test_libvirtd_killed_on_the_source_mid_migration_rolls_back_once_it_is_back():
    """Bug 1: the job failed (LIBVIRT_UNREACHABLE), placement could not be read, and the record
    waited for a lease change that never came. Now: probes until libvirtd answers, then act."""
    e = Problem("LIBVIRT_UNREACHABLE", "migrateToURI3 on qemu:///system: End of file while reading data", "")
    events = [MigrationEnded(False, error=e), AgentLost("host1")]
    events += [AgentLost("host1")] * 5  # probes while libvirtd is down
    events += [ON_SRC, CleanedUp(), ON_SRC]  # back: the guest runs on the source
    r, outcomes = run(MIGRATING, events)
    assert [a for _, a in outcomes[1:7]] == [(PROBE,)] + [
        (ObservePlacement(d),) for d in (0.5, 1.0, 1.5, 2.0, 2.5)
    ]  # the run advances 1 s per event: half the time lost so far
    assert r.phase is Phase.ROLLED_BACK and r.error.reason == "LIBVIRT_UNREACHABLE" and r.target_cleaned
    reasons = [h.reason for h in r.history]
    assert "agent on host1 lost; probing it until it answers" in reasons
    assert "host1 available again after 6.0 s" in reasons


def test_a_source_agent_restart_while_preparing_does_not_spend_every_attempt():
    """Bug 3: all three attempts were spent in 70 ms while the agent restarted in 5.5 s."""
    events = [AgentLost("host1"), CleanedUp(), Admitted(), AgentLost("host1"), AgentLost("host1"), AgentLost("host1")]
    events += [Placement(R, None), PreflightResult(), Prepared("p-2", "<domain/>")]
    r, outcomes = run(PREPARING, events)
    assert r.phase is Phase.MIGRATING and r.attempt == 2, [h.reason for h in r.history]
    assert [o for o, _ in outcomes[3:]] == [
        LOST.format(h="host1"),
        "agent on host1 lost for 1.0 s; probing again in 0.5 s",
        "agent on host1 lost for 2.0 s; probing again in 1 s",
        "agents answer again; re-running preflight",
        "preflight passed; preparing target",
        "prepared; starting migration",
    ]


def test_a_target_agent_restarted_while_finishing_commits_when_it_answers():
    """Bug 2: the record stalled 116 s until the Finishing deadline."""
    r, outcomes = run(FINISHING, [AgentLost("host2"), AgentLost("host2"), ON_TGT, Committed()])
    assert r.phase is Phase.SUCCEEDED
    assert [a for _, a in outcomes] == [(PROBE,), (ObservePlacement(0.5),), (CommitTarget("p-1"),), ()]


# --- whole runs, as the shell drives them (store round trip included) -----------------------------


def run(record, events):
    outcomes = []
    for i, e in enumerate(events):
        d = decide(record, e, NOW + timedelta(seconds=i), T)
        outcomes.append((d.outcome, d.actions))
        record = decode(encode(d.record), record.revision + 1)
    return record, outcomes


def test_happy_path():
    job = CompletedJob(time_elapsed_ms=9000, downtime_ms=42, memory_processed=300 << 20, iterations=4)
    r, outcomes = run(
        PENDING,
        [
            Admitted(),
            PreflightResult(),
            Prepared("p-1", "<domain type='qemu'/>"),
            Progress(
                MigrationProgress(MigrationPhase.PRECOPY, JobStats(memory_total=256 << 20, memory_processed=1 << 20))
            ),
            MigrationEnded(True, job),
            Committed(),
        ],
    )
    assert outcomes == [
        ("admitted; running preflight", (RunPreflight(),)),
        ("preflight passed; preparing target", (PrepareTarget(),)),
        ("prepared; starting migration", (StartMigration(),)),
        ("progress", ()),
        ("migration completed; committing if the guest landed on target", (CommitTarget("p-1", require_landed=True),)),
        ("committed; succeeded", ()),
    ]
    assert [h.phase for h in r.history] == [
        Phase.PENDING,
        Phase.PREFLIGHT,
        Phase.PREPARING,
        Phase.MIGRATING,
        Phase.FINISHING,
        Phase.SUCCEEDED,
    ]
    assert r.result == job and r.error is None and r.phase_deadline is None
    assert r.progress.stats.memory_total == 256 << 20


def test_a_completed_job_whose_guest_did_not_land_is_judged_by_placement():
    """The target refused the checked commit (NOT_LANDED): its answer is the placement, and
    Finishing acts on it as after any observation."""
    r, outcomes = run(MIGRATING, [MigrationEnded(True), TGT_AND_PAUSED_SRC, ON_TGT, Committed()])
    assert outcomes == [
        ("migration completed; committing if the guest landed on target", (CommitTarget("p-1", require_landed=True),)),
        ("placement settling; observing again", (OBSERVE_LATER,)),
        ("guest runs on target only; committing", (CommitTarget("p-1"),)),
        ("committed; succeeded", ()),
    ]
    assert r.phase is Phase.SUCCEEDED
    r, outcomes = run(MIGRATING, [MigrationEnded(True), ON_SRC])
    assert r.phase is Phase.ROLLING_BACK and r.error.reason == "MIGRATION_NOT_LANDED"
    assert outcomes[-1][1] == (CleanupTarget(("p-1",)),)


def test_failed_migration_rolls_back_and_verifies():
    r, outcomes = run(MIGRATING, [MigrationEnded(False, error=E_JOB), SRC_AND_INCOMING, ON_SRC, CleanedUp(), ON_SRC])
    assert [o for o, _ in outcomes] == [
        "migration failed (MIGRATION_FAILED); observing placement",
        "placement settling; observing again",
        "migration failed (MIGRATION_FAILED), guest runs on source; rolling back (cleaning target, then rolled back)",
        "target cleaned; verifying the guest runs on source",
        "target cleaned, guest runs on source; rolled back",
    ]
    assert r.phase is Phase.ROLLED_BACK and r.error == E_JOB and r.target_cleaned


def test_cancel_while_migrating_ends_cancelled():
    r, outcomes = run(
        MIGRATING, [CancelRequested(), MOVING, MigrationEnded(False, error=E_JOB), ON_SRC, CleanedUp(), ON_SRC]
    )
    assert r.phase is Phase.CANCELLED and r.cancel_requested and r.error is None
    assert outcomes[1] == ("migration job still active; aborting it", (AbortMigration(), OBSERVE_LATER))


def test_interrupted_prepare_is_retried_then_gives_up():
    r = PREPARING
    for attempt in (1, 2, 3):
        assert r.attempt == attempt
        r, _ = run(r, [AgentLost("host2"), CleanedUp()])
        if attempt < 3:
            assert r.phase is Phase.PENDING and r.prepare_id == ""
            r, _ = run(r, [Admitted(), PreflightResult()])
    assert r.phase is Phase.ROLLED_BACK and r.error.reason == "AGENT_LOST"


@pytest.mark.parametrize(
    ("had", "read", "kept"),
    [
        (None, CompletedJob(time_elapsed_ms=900, downtime_ms=60), CompletedJob(time_elapsed_ms=900, downtime_ms=60)),
        (
            CompletedJob(time_elapsed_ms=850, downtime_ms=40),
            CompletedJob(time_elapsed_ms=900, downtime_ms=60),
            CompletedJob(time_elapsed_ms=850, downtime_ms=40),
        ),  # the stream's own figures win
        (None, None, None),  # nothing known: nothing invented
    ],
)
def test_commit_fills_in_the_completed_job_only_when_missing(had, read, kept):
    d = decide(replace(FINISHING, result=had), Committed(job=read), NOW)
    assert d.record.phase is Phase.SUCCEEDED and d.record.result == kept


@pytest.mark.parametrize(
    ("seen", "planned", "disk"),
    [
        (JobStats(disk_total=64 << 20, disk_processed=40 << 20), 60 << 20, 64 << 20),  # the copy seen: it completed
        (JobStats(), 60 << 20, 60 << 20),  # no snapshot showed the copy: as planned
        (JobStats(), 0, 0),  # shared storage: nothing copied
    ],
)
def test_a_completed_job_read_from_the_target_gets_the_disk_bytes_it_does_not_count(seen, planned, disk):
    """Seen on the lab (etcd down during a copy): the record ended "disk 0 B" for a 64 MiB copy."""
    last = MigrationProgress(MigrationPhase.DISK_MIRROR, seen)
    read = CompletedJob(time_elapsed_ms=8600, memory_processed=99 << 20)
    r = decide(replace(FINISHING, progress=last, disk_bytes=planned), Committed(job=read), NOW, T).record
    assert r.result == replace(read, disk_processed=disk) and r.progress.stats.disk_processed == disk


# ---------------------------------------------------------------- what the policy did


def test_a_policy_action_is_kept_in_the_record_with_its_reason():
    from ferry.coordinator.events import PolicyActed
    from ferry.model import PolicyAction

    a = PolicyAction("start-postcopy", "iteration 2: predicted not to converge", 5100, "policy busy")
    d = decide(MIGRATING, PolicyActed(a), NOW, T)
    assert [(e.at, e.action) for e in d.record.actions] == [(NOW, a)]
    assert d.record.phase is Phase.MIGRATING and not d.actions
    assert d.outcome == "policy busy: start-postcopy: iteration 2: predicted not to converge"
    # before a job could run there is nothing to act on: ignored
    assert decide(PREPARING, PolicyActed(a), NOW, T).record is PREPARING


def test_the_preflight_phases_prediction_is_kept_and_a_refusal_fails_touching_nothing():
    from ferry.coordinator.events import PreflightResult
    from ferry.prediction import Prediction

    p = Prediction(False, False, "abort", words="will not converge at 32 MiB/s")
    d = decide(PREFLIGHT, PreflightResult((), p), NOW, T)
    assert d.record.phase is Phase.PREPARING and d.record.prediction == p
    refused = Problem("WILL_NOT_CONVERGE", "refused up front: will not converge at 32 MiB/s", "choose a policy")
    d = decide(PREFLIGHT, PreflightResult((refused,), p), NOW, T)
    assert (d.record.phase, d.record.error, d.record.prediction, d.actions) == (Phase.FAILED, refused, p, ())


@pytest.mark.parametrize(
    ("result", "read", "processed"),
    [
        (None, CompletedJob(time_elapsed_ms=9000, memory_processed=330 << 20, iterations=3), 330 << 20),
        (CompletedJob(time_elapsed_ms=8000, memory_processed=325 << 20), None, 325 << 20),
        (None, None, 320 << 20),  # nothing read: the totals, never the stale snapshot
    ],
)
def test_a_landed_migration_ends_with_its_final_progress(result, read, processed):
    """Bug 5: a record finished by a new leader kept its last throttled snapshot (1/320 MiB)."""
    stale = MigrationProgress(MigrationPhase.PRECOPY, JobStats(memory_total=320 << 20, memory_processed=1 << 20))
    r = decide(replace(FINISHING, progress=stale, result=result), Committed(job=read), NOW, T).record
    assert r.phase is Phase.SUCCEEDED and r.progress.phase is MigrationPhase.COMPLETED
    s = r.progress.stats
    assert (s.memory_processed, s.memory_total, s.memory_remaining, s.disk_remaining) == (processed, 320 << 20, 0, 0)
    assert decode(encode(r), 1).progress == r.progress  # and so it is stored


# --- a whole host died at the switch-over (the chaos campaign of 2026-12-02) ----------------------


def test_an_incoming_domain_left_on_the_target_by_a_dead_source_is_not_a_landed_guest():
    # Campaign trial #13: host1 died 35 ms into Migrating. When it came back, its kernel still sent
    # the migration's first message: host2's libvirtd started the incoming QEMU (paused for the
    # migration), found the source gone and destroyed it 0.6 s later. Ferry's recovery saw "on
    # target only" in between and committed: Succeeded, with the guest running nowhere.
    waiting = lost(MIGRATING, "host1")
    arriving = Placement(DomainState.CRASHED, P, target_arriving=True)
    d = decide(waiting, arriving, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.MIGRATING, (OBSERVE_LATER,))
    assert d.outcome == "placement arriving on target; observing again"
    # libvirt destroys it: "in shutdown" first, still not a landed guest
    d = decide(d.record, Placement(DomainState.CRASHED, DomainState.SHUTDOWN), NOW, T)
    assert (d.record.phase, d.actions) == (Phase.MIGRATING, (OBSERVE_LATER,))
    # then gone: the guest stopped in pre-copy with its host; the target's copies are removed
    d = decide(d.record, Placement(DomainState.CRASHED, None), NOW, T)
    assert d.record.phase is Phase.ROLLING_BACK and d.record.error.reason == "VM_NOT_RUNNING"
    assert any(isinstance(a, CleanupTarget) for a in d.actions)


def test_a_finished_job_whose_target_died_commits_the_vm_defined_there_alone():
    # Campaign trial #42: the job completed (the guest landed on host2), then host2 died. Back, it
    # defines the guest shut off; host1 no longer does. Was: Failed VM_NOT_RUNNING with the prepare
    # kept. The migration did move the VM: commit (the prepare is the VM's own now), say why.
    for stopped in (OFF, DomainState.CRASHED):
        d = decide(lost(FINISHING, "host2"), Placement(None, stopped), NOW, T)
        assert (d.record.phase, d.actions) == (Phase.FINISHING, (CommitTarget("p-1"),))
        why = d.record.history[-1].reason
        assert "landed on host2 and stopped there afterwards" in why and "virsh start g1" in why, why
        assert "Ferry never starts it" in why
        d = decide(d.record, Committed(), NOW, T)
        assert d.record.phase is Phase.SUCCEEDED and d.record.error is None
    # the same when the job's end was not seen (the target died right after it): the definitions say
    d = decide(lost(MIGRATING, "host2"), Placement(None, OFF), NOW, T)
    assert (d.record.phase, d.actions) == (Phase.FINISHING, (CommitTarget("p-1"),))
    assert "landed on host2 and stopped there afterwards" in d.record.history[-1].reason


@pytest.mark.parametrize(
    "placement",
    [
        Placement(OFF, OFF),  # the source keeps a definition: which one is newest is not certain
        Placement(None, None),  # gone everywhere (a transient target)
        Placement(OFF, None),
    ],
)
def test_a_finished_job_with_the_guest_nowhere_otherwise_needs_an_operator(placement):
    d = decide(FINISHING, placement, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.FAILED, (KeepTarget("p-1"),))  # the target keeps its copies
    assert d.record.error.reason == "VM_NOT_RUNNING"


def test_a_transient_target_is_not_committed_after_its_host_died():
    transient = replace(FINISHING, options=replace(FINISHING.options, persist_dest=False))
    d = decide(transient, Placement(None, OFF), NOW, T)
    assert d.record.phase is Phase.FAILED


# --- admitted ahead of its slot -------------------------------------------------------------------


def test_a_record_ahead_prepares_then_waits_and_its_job_starts_at_the_grant():
    r, outcomes = run(
        PENDING,
        [Admitted(ahead=True), PreflightResult(), Prepared("p-1", "<domain/>"), SlotGranted(), MigrationEnded(True)],
    )
    assert outcomes == [
        ("admitted ahead of its slot; running preflight (the job waits for a slot)", (RunPreflight(),)),
        ("preflight passed; preparing target", (PrepareTarget(),)),
        ("prepared; waiting for a slot", ()),
        ("slot granted; starting migration", (StartMigration(),)),
        ("migration completed; committing if the guest landed on target", (CommitTarget("p-1", require_landed=True),)),
    ]
    assert not r.ahead and r.prepare_id == "p-1"
    assert [h.reason for h in r.history][1:5] == [
        "admitted ahead of its slot (attempt 1)",
        "preflight passed",
        "target prepared (p-1); waiting for a slot",
        "slot granted; target prepared (p-1)",
    ]


def test_a_record_ahead_granted_before_it_is_prepared_starts_its_job_when_it_is():
    r, outcomes = run(PENDING, [Admitted(ahead=True), PreflightResult(), SlotGranted(), Prepared("p-1", "<domain/>")])
    assert [o for o, _ in outcomes][2:] == [
        "slot granted; the job starts once prepared",
        "prepared; starting migration",
    ]
    assert r.phase is Phase.MIGRATING and not r.ahead


WAITING = replace(PREPARING, ahead=True, prepare_id="p-1", destination_xml="<domain/>")


def test_waiting_for_a_slot_has_its_own_deadline_then_releases_the_prepare_and_queues_again():
    d = decide(replace(PREPARING, ahead=True), Prepared("p-1", "<domain/>"), NOW, T)
    assert d.record.phase_deadline == NOW + timedelta(seconds=T.slot_wait_s)
    assert decide(d.record, Tick(), NOW + timedelta(seconds=T.slot_wait_s - 1), T).actions == ()
    late = decide(d.record, Tick(), NOW + timedelta(seconds=T.slot_wait_s), T)
    assert (late.record.phase, late.record.rollback_to, late.actions) == (
        Phase.ROLLING_BACK,
        Phase.PENDING,
        (CleanupTarget(("p-1",)),),
    )
    back = decide(late.record, CleanedUp(), NOW + timedelta(seconds=T.slot_wait_s + 1), T)
    assert back.record.phase is Phase.PENDING and not back.record.ahead


@pytest.mark.parametrize(
    ("record", "event", "phase", "actions", "outcome"),
    [
        pytest.param(WAITING, CancelRequested(), Phase.ROLLING_BACK, (CleanupTarget(("p-1",)),), None, id="cancel"),
        pytest.param(
            WAITING,
            Prepared("p-1", "<domain/>"),
            Phase.PREPARING,
            (),
            "ignored: Prepared in PREPARING",
            id="same-prepare-again",
        ),
        pytest.param(
            WAITING,
            Prepared("p-9", "<domain/>"),
            Phase.PREPARING,
            (CleanupTarget(("p-9",)),),
            "a second prepare p-9; removing it",
            id="another-prepare",
        ),
        pytest.param(
            PREPARING, SlotGranted(), Phase.PREPARING, (), "ignored: SlotGranted in PREPARING", id="not-ahead"
        ),
        pytest.param(
            replace(MIGRATING, ahead=True),
            SlotGranted(),
            Phase.MIGRATING,
            (),
            "ignored: SlotGranted in MIGRATING",
            id="migrating",
        ),
    ],
)
def test_a_record_waiting_for_its_slot(record, event, phase, actions, outcome):
    d = decide(record, event, NOW, T)
    assert (d.record.phase, d.actions) == (phase, actions)
    if outcome is not None:
        assert d.outcome == outcome


def test_ahead_is_kept_in_the_record_only_while_it_holds_a_slot():
    assert decode(encode(WAITING), 7).ahead
    assert b'"ahead"' not in encode(PREPARING)
    assert with_phase(WAITING, Phase.ROLLING_BACK, NOW, "x", T).ahead  # a rollback holds no job slot either
    assert not with_phase(with_phase(WAITING, Phase.ROLLING_BACK, NOW, "x", T), Phase.PENDING, NOW, "x", T).ahead


# ---------------------------------------------------------------- an incoming copy libvirt left behind

STALE = Placement(R, P, target_arriving=True)  # the guest runs on the source, no job; target paused for it
DISCARD = CleanupTarget(("p-1",), discard_incoming=True)


def run_at(record, timed_events):
    """``run`` with each event's own time (seconds after NOW)."""
    outcomes = []
    for at, e in timed_events:
        d = decide(record, e, NOW + timedelta(seconds=at), T)
        outcomes.append((d.outcome, d.actions))
        record = decode(encode(d.record), record.revision + 1)
    return record, outcomes


def test_an_incoming_copy_left_paused_on_the_target_is_discarded_after_the_bound():
    """Seen in a chaos trial: the target's libvirtd killed early in Migrating kept the incoming
    domain paused after its restart while the guest ran on the source. The record waited in
    "settling" until Migrating's deadline, holding its slots; now it waits ``stale_incoming_s``."""
    bound = T.stale_incoming_s
    r, outcomes = run_at(
        MIGRATING,
        [
            (0, MigrationEnded(False, error=E_JOB)),
            (1, STALE),
            (3, STALE),
            (1 + bound - 1, STALE),
            (1 + bound, STALE),
        ],
    )
    assert [a for _, a in outcomes[1:4]] == [(OBSERVE_LATER,)] * 3
    assert outcomes[1][0] == "g1 runs on host1 with no job; host2 holds its incoming copy paused; observing again"
    outcome, actions = outcomes[4]
    assert actions == (DISCARD,) and "libvirt left it behind; discarding it" in outcome
    assert r.phase is Phase.ROLLING_BACK and r.rollback_to is Phase.ROLLED_BACK and r.error == E_JOB
    assert any("for 30 s: libvirt left it behind" in h.reason for h in r.history)
    # the cleanup destroyed it: the placement shows the guest on the source alone
    r, outcomes = run_at(r, [(bound + 2, CleanedUp()), (bound + 3, ON_SRC)])
    assert r.phase is Phase.ROLLED_BACK and r.target_cleaned and r.stale_incoming_since is None
    assert [o for o, _ in outcomes] == [
        "target cleaned; verifying the guest runs on source",
        "target cleaned, guest runs on source; rolled back",
    ]


def test_an_incoming_copy_that_goes_away_by_itself_ends_the_wait():
    r, outcomes = run_at(MIGRATING_FAILED, [(0, STALE)])
    assert r.stale_incoming_since == NOW and r.history == MIGRATING_FAILED.history  # not noted yet
    r, outcomes = run_at(r, [(5, ON_SRC)])
    assert r.phase is Phase.ROLLING_BACK and r.stale_incoming_since is None
    assert outcomes[-1][1] == (CleanupTarget(("p-1",)),)  # no discard: nothing is there to discard
    # a stale copy seen again later waits the whole bound again
    r, outcomes = run_at(replace(MIGRATING_FAILED, stale_incoming_since=None), [(0, STALE), (20, ON_SRC)])
    assert r.stale_incoming_since is None


@pytest.mark.parametrize(
    ("record", "goal", "reason"),
    [
        (MIGRATING, Phase.PENDING, None),  # the job's end was never seen: tried again, as when interrupted
        (replace(MIGRATING, attempt=3), Phase.ROLLED_BACK, "MIGRATION_INTERRUPTED"),  # the last attempt
        (FINISHING, Phase.ROLLED_BACK, "MIGRATION_NOT_LANDED"),  # the job reported success, wrongly
        (RB_LATE, Phase.ROLLED_BACK, "MIGRATION_FAILED"),
        (RB_CANCEL, Phase.CANCELLED, None),
    ],
)
def test_every_phase_after_the_job_started_discards_a_left_copy(record, goal, reason):
    r, outcomes = run_at(record, [(0, STALE), (T.stale_incoming_s, STALE)])
    assert outcomes[-1][1] == (DISCARD,)
    assert r.phase is Phase.ROLLING_BACK and r.rollback_to is goal
    assert (r.error.reason if r.error else None) == reason


@pytest.mark.parametrize(
    "placement",
    [
        Placement(R, P),  # paused, but not by libvirt for a migration (a user paused it): not ours to destroy
        Placement(P, P, target_arriving=True),  # the source paused: it may have handed the guest over
        Placement(R, P, source_job_active=True, target_arriving=True),  # the job still runs
        Placement(DomainState.BLOCKED, R),  # the target runs it: on both
    ],
)
def test_only_a_source_executing_alone_with_no_job_makes_a_target_copy_a_leftover(placement):
    r, outcomes = run_at(MIGRATING_FAILED, [(0, placement), (T.stale_incoming_s * 2, placement)])
    assert r.stale_incoming_since is None
    assert all(not (isinstance(a, CleanupTarget) and a.discard_incoming) for _, acts in outcomes for a in acts)


def test_an_offline_migration_never_discards():
    offline = replace(MIGRATING_FAILED, options=replace(MIGRATING_FAILED.options, offline=True))
    r, outcomes = run_at(offline, [(0, STALE), (T.stale_incoming_s * 2, STALE)])
    assert r.stale_incoming_since is None
    assert all(not (isinstance(a, CleanupTarget) and a.discard_incoming) for _, acts in outcomes for a in acts)


# --- the guest removed from its source while its migration waited or started (a drain, 2026-12-05) -


def test_a_guest_removed_before_its_job_ran_is_gone_and_the_targets_copies_are_removed():
    # Seen on the lab: `virsh destroy g1; virsh undefine g1` on host2 while g1's migration was
    # prepared ahead of its slot; the job then failed DOMAIN_NOT_FOUND, g1 defined on neither host.
    # Was: Failed VM_NOT_RUNNING for an operator, the target's (empty) copies kept on host3.
    d = decide(MIGRATING_FAILED, Placement(None, None), NOW, T)
    assert d.record.phase is Phase.ROLLING_BACK and d.record.error.reason == "VM_GONE"
    assert any(isinstance(a, CleanupTarget) for a in d.actions)
    assert "defined on neither host1 nor host2" in d.record.error.message
    # in post-copy the target's copies may be the newest: an operator judges, nothing is removed
    # (the target keeps them: its agent would remove an expired prepare with no domain there)
    postcopy = replace(MIGRATING_FAILED, progress=MigrationProgress(phase=MigrationPhase.POSTCOPY))
    d = decide(postcopy, Placement(None, None), NOW, T)
    assert d.record.phase is Phase.FAILED and d.record.error.reason == "VM_NOT_RUNNING"
    assert d.actions == (KeepTarget("p-1"),)


# --- a post-copy broken after its switch-over, the target's copy gone (review of 2026-12-06) -------

COPIED = (DiskPlan("vda", "/var/lib/libvirt/images/g1.qcow2", "/var/lib/libvirt/images/g1.qcow2", copy=True),)
SPLIT = Placement(P, None)  # the source holds it paused ("post-copy failed"), no job; the target's QEMU died
SWITCHED = replace(SWITCHING, error=E_JOB, disks=COPIED)  # the switch asked for, not yet reported by progress
RB_SWITCHED = replace(RB_LATE, actions=SWITCHING.actions, disks=COPIED)  # aborted, but post-copy came first


@pytest.mark.parametrize(
    ("record", "placement"),
    [
        pytest.param(replace(POSTCOPY, error=E_JOB, disks=COPIED), SPLIT, id="job-failed"),
        # no job reported its end (a leader change): was "interrupted", the target cleaned, re-queued
        pytest.param(replace(POSTCOPY, disks=COPIED), SPLIT, id="ended-unobserved"),
        pytest.param(SWITCHED, SPLIT, id="switch-not-yet-reported"),
        pytest.param(replace(POSTCOPY, error=E_JOB, disks=COPIED), Placement(R, None), id="source-running-after-all"),
        pytest.param(RB_SWITCHED, SPLIT, id="rolling-back"),
        pytest.param(replace(FINISHING, actions=SWITCHING.actions, disks=COPIED), SPLIT, id="finishing"),
    ],
)
def test_a_post_copy_broken_after_the_switch_over_is_failed_for_an_operator_keeping_the_target_copies(
    record, placement
):
    # Was: rolled back as "guest runs on source", CleanupIncoming removing the target's images (what
    # the guest wrote since the switch-over), ending ROLLED_BACK "target cleaned, guest runs on source".
    d = decide(record, placement, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.FAILED, (KeepTarget("p-1"),)), d.outcome
    err = d.record.error
    assert err.reason == "POSTCOPY_FAILED" and "after the switch-over" in err.message
    assert "memory was split" in err.message and "host2 is lost" in err.message
    assert "/var/lib/libvirt/images/g1.qcow2 on host2, prepare p-1" in err.hint and "kept" in err.hint
    assert "do not resume it" in err.hint and "Ferry removed nothing" in err.hint
    # whatever comes after: nothing is removed, the record stays failed
    for event in (CleanedUp(), placement, Tick()):
        assert decide(d.record, event, LATE, T).actions == ()


def test_a_post_copy_asked_for_but_refused_leaves_the_guest_running_on_the_source_and_rolls_back():
    # a switch-over pauses the source for good: a source executing with no job never switched
    d = decide(replace(SWITCHING, error=E_JOB), ON_SRC, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.ROLLING_BACK, (CleanupTarget(("p-1",)),))


def test_a_post_copy_broken_after_the_target_was_cleaned_says_so_and_keeps_nothing():
    d = decide(replace(RB_SWITCHED, target_cleaned=True), SPLIT, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.FAILED, ())
    assert "were removed" in d.record.error.hint


def test_a_post_copy_on_shared_storage_names_no_copies():
    shared = replace(POSTCOPY, error=E_JOB)  # no disk copied
    d = decide(shared, SPLIT, NOW, T)
    assert d.record.error.reason == "POSTCOPY_FAILED" and "on shared storage" in d.record.error.hint


def test_a_vm_gone_everywhere_after_post_copy_has_the_target_keep_its_copies_and_names_them():
    d = decide(replace(POSTCOPY, error=E_JOB, disks=COPIED), NOWHERE, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.FAILED, (KeepTarget("p-1"),))
    assert "the target's copies (/var/lib/libvirt/images/g1.qcow2 on host2, prepare p-1) are kept" in (
        d.record.error.hint
    )
    # a post-copy asked for (not yet reported) is post-copy too: the target's copies are not removed
    d = decide(replace(SWITCHED, progress=None), NOWHERE, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.FAILED, (KeepTarget("p-1"),))
    # nothing to keep once the target was cleaned
    d = decide(RB_LATE_CLEANED, NOWHERE, NOW, T)
    assert (d.record.phase, d.actions) == (Phase.FAILED, ())


def test_a_keep_that_failed_is_noted_on_the_failed_record():
    failed = decide(replace(POSTCOPY, error=E_JOB, disks=COPIED), SPLIT, NOW, T).record
    err = Problem("LIBVIRT_ERROR", "disk full", "")
    d = decide(failed, StepFailed(f"{KEEP_STEP} on host2", err), LATE, T)
    assert d.record.phase is Phase.FAILED and d.actions == ()
    assert "keep the target's copies on host2 failed: LIBVIRT_ERROR: disk full" in d.record.history[-1].reason
    assert "copy its images away first" in d.record.history[-1].reason
    # any other late failure of a final record changes nothing
    assert decide(failed, StepFailed("clean up the target on host2", err), LATE, T).record is failed


# --- a commit that keeps failing after the guest landed (review of 2026-12-06) ---------------------


def _commit_failing_for_good(record):
    r, now = record, LATE
    err = Problem("LIBVIRT_ERROR", "cannot chown image", "see the agent log on host2")
    for _ in range(3 * T.max_retries):
        r = decide(r, StepFailed(f"{COMMIT_STEP} on host2", err), now, T).record
        now = r.phase_deadline + timedelta(seconds=1)
        d = decide(r, Tick(), now, T)
        r = d.record
        if r.phase.is_final:
            return r
        r = decide(r, ON_TGT, now, T).record  # the guest runs on host2 only: committed again
    raise AssertionError(r.history)


@pytest.mark.parametrize(
    ("storage", "disks", "named"),
    [
        (StorageMode.COPY_ALL, COPIED, "remove /var/lib/libvirt/images/g1.qcow2 on host1 by hand"),
        (StorageMode.SHARED, (), ""),
    ],
)
def test_a_commit_failing_for_good_names_the_prepare_and_the_source_disks_left(storage, disks, named):
    # Was: FINISH_INCOMPLETE "could not confirm g1 runs on host2 only", a hint about a paused
    # leftover on host1, and the source's copied disks (removed only after a commit) named nowhere.
    r = replace(FINISHING, disks=disks, options=replace(FINISHING.options, storage=storage))
    r = _commit_failing_for_good(r)
    assert r.phase is Phase.FAILED and r.error.reason == "COMMIT_FAILED"
    assert r.error.message.startswith("the migration of g1 to host2 completed, but host2 did not commit prepare p-1")
    assert "cannot chown image" in r.error.message  # the last failure
    assert "prepare p-1" in r.error.hint and named in r.error.hint
    assert ("host1 by hand" in r.error.hint) is bool(named)


def test_finishing_that_cannot_see_the_guest_still_fails_finish_incomplete():
    r = replace(FINISHING, retries=T.max_retries)
    r = decide(r, StepFailed("observe the placement on host2", Problem("LIBVIRT_ERROR", "x", "")), LATE, T).record
    d = decide(r, Tick(), r.phase_deadline + timedelta(seconds=1), T)
    assert d.record.error.reason == "FINISH_INCOMPLETE"


# --- a cancel before libvirt's job exists (review of 2026-12-06) --------------------------------------

OPEN = Placement(R, None, migrate_call_open=True)  # no job yet, but the leader's Migrate call goes on


@pytest.mark.parametrize(
    ("record", "placement", "phase", "actions", "outcome"),
    [
        # the rollback neither cleans the target nor ends while the job may yet start
        pytest.param(
            RB_CANCEL,
            OPEN,
            Phase.ROLLING_BACK,
            (AbortMigration(), OBSERVE_LATER),
            "guest on source only, but the Migrate call is still open (its job may yet start); aborting it",
            id="rb-call-open",
        ),
        pytest.param(
            replace(RB_CANCEL, target_cleaned=True),
            OPEN,
            Phase.ROLLING_BACK,
            (AbortMigration(), OBSERVE_LATER),
            "guest on source only, but the Migrate call is still open (its job may yet start); aborting it",
            id="rb-cleaned-call-open",
        ),
        pytest.param(
            MIGRATING,
            OPEN,
            Phase.MIGRATING,
            (OBSERVE_LATER,),
            "no job on source yet, but the Migrate call is still open; observing again",
            id="migrating-call-open",
        ),
        # once the call ended, as before
        pytest.param(
            replace(RB_CANCEL, target_cleaned=True),
            ON_SRC,
            Phase.CANCELLED,
            (),
            "target cleaned, guest runs on source; cancelled",
            id="rb-call-ended",
        ),
        pytest.param(
            RB_CANCEL,
            replace(MOVING, migrate_call_open=True),
            Phase.ROLLING_BACK,
            (AbortMigration(), OBSERVE_LATER),
            "migration job still active; aborting it",
            id="rb-job-started",
        ),
    ],
)
def test_a_rollback_waits_for_the_migrate_call_to_end(record, placement, phase, actions, outcome):
    check(record, placement, phase, actions, outcome)
