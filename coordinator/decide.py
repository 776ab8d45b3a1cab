"""The coordinator's decision function: one record + one event -> new record + actions (pure).

The vocabulary (events, actions, ``Decision``) is in ``events.py``. The shell (the leader loop)
feeds every observation as an event, stores ``Decision.record`` with
a compare-and-swap on the old record's revision, and only then performs ``Decision.actions``;
each action's result comes back as another event. ``Decision.outcome`` is a short sentence for
logs and tests. Nothing here does I/O or reads the clock.

Where the guest is decides what happens after a migration job ended, never an error's text:
``locate`` turns the domain states observed on both hosts into a ``Location``, and then

    location   Migrating (job ended)   Finishing            RollingBack (a job was started)
    moving     follow the job          observe again        abort the job, observe again
    on source  roll back, clean target roll back, clean     clean target; cleaned -> RolledBack/Cancelled
    on target  Finishing, commit       commit -> Succeeded  too late: Finishing, commit
    settling   observe again (the phase deadline bounds the wait); but the guest executing on
               the source with no job while the target keeps libvirt's paused incoming copy
               (``stale_incoming``) is waited for only ``stale_incoming_s``: then the target is
               cleaned, that copy destroyed (``CleanupTarget(discard_incoming=True)``), and the
               migration rolls back
    on both    job active: abort it (executing on both while a job runs can only be pre-copy,
               where the source holds the authoritative state and libvirt then stops the
               target's incoming copy); no job: Failed VM_ON_TWO_HOSTS, nothing removed
    nowhere    Failed VM_NOT_RUNNING, nothing removed (the target may hold the newest disks:
               it keeps them, ``KeepTarget``)

"On source" has two exceptions, in every phase. After the job switched to post-copy
(``record.postcopy_reached``) it means the job broke after the switch-over with the target's copy
gone: the source holds the guest paused, its memory split, and the target's images hold what it
wrote since: Failed POSTCOPY_FAILED, nothing removed, the target keeps its copies (``KeepTarget``:
a failure whose hint says they are kept makes the target's agent keep them, else its sweep removes
an expired prepare whose domain is not there). And while this leader's Migrate call has not ended
(``Placement.migrate_call_open``) libvirt's job may yet start: observe again (RollingBack: abort
again), nothing removed, the rollback not ended.

A job the source reports completed (Migrating, online) skips the first observation: the target
commits only if the guest landed there (``CommitTarget(require_landed=True)``), and if it did not,
its answer is the placement observed on both hosts, acted on as above.

Before a job was started (Preparing, a rollback from it) the target holds only empty images: the
rollback removes them without looking at the guest.

A record admitted ahead of its slot (``Admitted(ahead=True)``, ``slots.py``) runs its preflight
and prepare as any other, then waits in Preparing with the prepare's id, the phase deadline reset
to ``slot_wait_s``; ``SlotGranted`` starts its job (or, before it is prepared, only clears
``ahead``: the job then starts when the prepare answers). Waiting past the deadline rolls back to
Pending: the prepare is removed and the record queues again.

An agent that cannot be reached (``AgentLost``: its call failed on the way, its libvirtd does not
answer, or its registration says so) is waited for in every phase but Pending and Preparing: the
record notes since when (``lost_host``/``lost_since``) and ``ObservePlacement`` probes both hosts
again after ``probe_delay_s`` (0.5 s, growing by half up to 5 s). The first answer from both
(``Placement``) ends the wait and the phase goes on at once (Preflight runs again, a rollback
cleans the target, the others act on the placement). ``Timeouts.agent_lost_s`` after the loss,
not at the phase deadline, the wait ends: Migrating rolls back, the other phases fail with
AGENT_LOST and a hint. Preparing rolls back at once (its answer is lost; the next attempt's
preflight then waits for the agent).

Once the target committed, a copy migration's source must remove its copies of the disks (they
are in the way of a migration back). A source that cannot be reached for it
(``Committed(source_lost=True)``) is waited for the same way, the record kept in Finishing with
``committed_at``; its answer leads to the commit (a no-op now) and the removal again. After
``agent_lost_s`` the record succeeds all the same, noting SOURCE_DISKS_LEFT with the paths: the
guest runs on the target. A commit that keeps failing (the target answers, with an error) fails
the record after ``max_retries`` with COMMIT_FAILED, naming the prepare and the source's copied
disks left (removed only after a commit).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from ferry.model import (
    CompletedJob,
    DomainState,
    JobStats,
    MigrationPhase,
    MigrationProgress,
    Problem,
    StorageMode,
    disk_bytes_copied,
)

from .events import (
    COMMIT_STEP,
    KEEP_STEP,
    AbortMigration,
    Action,
    Admitted,
    AgentLost,
    CancelRequested,
    CleanedUp,
    CleanupTarget,
    CommitTarget,
    Committed,
    Decision,
    Event,
    KeepTarget,
    MigrationEnded,
    ObservePlacement,
    Placement,
    PolicyActed,
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
from .phases import Phase, Timeouts, probe_delay_s, retry_delay_s
from .record import (
    MigrationRecord,
    evolve,
    note,
    postcopy_reached,
    too_late_to_cancel,
    with_action,
    with_phase,
    with_retry,
)

# --- where the guest is --------------------------------------------------------------------------


class Location(enum.Enum):
    #: An outgoing migration job still runs on the source.
    MOVING = "moving"
    #: Alive on the source only: a rollback may remove the target's prepare.
    ON_SOURCE = "on source"
    #: Alive on the target only: the migration landed.
    ON_TARGET = "on target"
    #: On the target only, but not a landed guest: an incoming migration's domain that libvirt
    #: still keeps paused for it, or one being shut down (state SHUTDOWN); the source runs neither
    #: the guest nor a job. libvirt finishes or removes it (an incoming domain whose source went
    #: away is destroyed): observe again.
    ARRIVING = "arriving on target"
    #: Alive on both, at most one executing (the other paused): the end of a migration or of
    #: an abort, libvirt is about to stop one copy. Observe again.
    SETTLING = "settling"
    #: Executing on both hosts: split brain.
    ON_BOTH = "on both hosts"
    #: Alive on neither host (shut down, crashed, or lost).
    NOWHERE = "nowhere"
    #: An agent reported an unknown state: cannot tell. Observe again.
    UNCLEAR = "unclear"
    #: Offline only: the definition reached the target, but the guest was started on the source.
    DIVERGED = "diverged"


EXECUTING = (DomainState.RUNNING, DomainState.BLOCKED)


def _alive(state: DomainState | None) -> bool:
    return state is not None and state.is_active


def locate(p: Placement, offline: bool = False) -> Location:
    """Where the guest is. An offline migration moves a shut-off definition: there a defined
    domain counts as present (the target's definition wins: the source may keep its own)."""
    s, t = p.source_state, p.target_state
    if DomainState.UNKNOWN in (s, t):
        return Location.UNCLEAR
    if s in EXECUTING and t in EXECUTING:
        return Location.ON_BOTH
    if p.source_job_active:
        return Location.MOVING
    if offline and not _alive(t):
        if _alive(s):
            return Location.DIVERGED if t is not None else Location.ON_SOURCE
        return Location.ON_TARGET if t is not None else Location.ON_SOURCE if s is not None else Location.NOWHERE
    if _alive(s) and _alive(t):
        return Location.SETTLING
    if _alive(s):
        return Location.ON_SOURCE
    if _alive(t):
        return Location.ARRIVING if p.target_arriving or t is DomainState.SHUTDOWN else Location.ON_TARGET
    return Location.NOWHERE


# --- the decision function -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    """The inputs of one decision (also used by ``recovery``)."""

    r: MigrationRecord
    now: datetime
    t: Timeouts

    def to(self, phase: Phase, reason: str, **changes: Any) -> MigrationRecord:
        return with_phase(evolve(self.r, **changes) if changes else self.r, phase, self.now, reason, self.t)

    def keep(self, outcome: str, *actions: Action) -> Decision:
        return Decision(self.r, actions, outcome)

    def ignore(self, event: Event) -> Decision:
        return Decision(self.r, (), f"ignored: {type(event).__name__} in {self.r.phase.name}")

    def noted(self, reason: str, outcome: str, *actions: Action) -> Decision:
        return Decision(note(self.r, self.now, reason), actions, outcome)

    @property
    def observe_later(self) -> ObservePlacement:
        return ObservePlacement(self.t.observe_delay_s)


def decide(record: MigrationRecord, event: Event, now: datetime, timeouts: Timeouts = Timeouts()) -> Decision:
    """What to do about ``event`` for ``record`` at ``now``."""
    c = Ctx(record, now, timeouts)
    if record.phase.is_final:
        return _final(c, event)
    match event:
        case Admitted():
            return _admitted(c, event)
        case Waiting():
            return _waiting(c, event)
        case SlotGranted():
            return _granted(c, event)
        case PreflightResult():
            return _preflight_result(c, event)
        case Prepared():
            return _prepared(c, event)
        case PrepareFailed() if record.phase is Phase.PREPARING:
            return roll_back(c, f"prepare failed: {event.error.reason}", error=event.error, goal=Phase.ROLLED_BACK)
        case Progress() if record.phase is Phase.MIGRATING:
            return Decision(evolve(record, progress=event.progress, updated_at=now), (), "progress")
        case PolicyActed() if record.migration_started:
            a = event.action
            return Decision(with_action(record, now, a), (), f"{a.by or 'the agent'}: {a.action}: {a.reason}")
        case MigrationEnded():
            return _migration_ended(c, event)
        case CancelRequested():
            return _cancel(c)
        case CleanedUp() if record.phase is Phase.ROLLING_BACK:
            return _cleaned_up(c)
        case Committed() if record.phase is Phase.FINISHING:
            return _committed(c, event)
        case StepFailed():
            return _step_failed(c, event)
        case Placement() if record.lost_host:
            return after_wait(answered(c), event)
        case Placement() if record.phase in (Phase.MIGRATING, Phase.FINISHING, Phase.ROLLING_BACK):
            return on_placement(c, event)
        case AgentLost():
            return _agent_lost(c, event)
        case Tick():
            return _tick(c)
    return c.ignore(event)


def _step_failed(c: Ctx, event: StepFailed) -> Decision:
    """A step failed while its agent answered: noted with the error's hint, retried at the
    deadline. In Finishing and RollingBack (idempotent steps, the guest's place known) that
    deadline is brought in to the next retry's delay (``retry_delay_s``, 30 s the first time)
    rather than the phase's whole limit: a failure an operator fixes on the host (a copy libvirtd
    keeps, a full disk) is picked up soon after the fix, and after ``max_retries`` the record
    fails loudly as for any deadline."""
    r, e = c.r, event.error
    d = c.noted(
        f"{event.step} failed: {e.reason}: {e.message}" + (f"; {e.hint}" if e.hint else ""),
        f"{event.step} failed ({e.reason}); retrying at the deadline",
    )
    if r.phase in (Phase.FINISHING, Phase.ROLLING_BACK):
        sooner = c.now + timedelta(seconds=retry_delay_s(c.t, r.retries + 1))
        if r.phase_deadline is None or sooner < r.phase_deadline:
            return replace(d, record=evolve(d.record, phase_deadline=sooner))
    return d


def _committed(c: Ctx, event: Committed) -> Decision:
    """The target committed. A source that could not be reached to remove its copied disks is
    waited for as any lost agent (its copies are in the way of a migration back): once it answers,
    the placement is observed again and the commit (a no-op now) and the removal redone. Past
    ``agent_lost_s`` since the commit the record succeeds with the SOURCE_DISKS_LEFT note."""
    r = c.r
    if event.source_lost:
        since = r.committed_at or c.now
        if (c.now - since).total_seconds() < c.t.agent_lost_s:
            waiting = evolve(r, committed_at=since, updated_at=c.now)
            if r.committed_at is None:
                waiting = note(
                    waiting,
                    c.now,
                    f"target committed; the copied disks on {r.source_host} are removed once it answers",
                )
            return agent_lost(replace(c, r=waiting), r.source_host)
    return _succeeded(c, event.note, event.job)


def _succeeded(c: Ctx, why: str, job: CompletedJob | None = None) -> Decision:
    r = c.r
    if r.result is None and job is not None:  # the target's completed job: it does not count disks
        seen = r.progress.stats if r.progress is not None else JobStats()
        job = replace(job, disk_processed=disk_bytes_copied(job.disk_processed, seen, r.disk_bytes))
    result = r.result or job  # the stream's own figures win
    final = completed_progress(r.progress, result, r.memory_bytes)
    c = replace(c, r=evolve(r, result=result, progress=final))
    noted = replace(c, r=note(c.r, c.now, why)) if why else c
    return Decision(noted.to(Phase.SUCCEEDED, "target committed"), (), "committed; succeeded")


def _final(c: Ctx, event: Event) -> Decision:
    r = c.r
    if (
        isinstance(event, Prepared)
        and event.prepare_id != r.prepare_id
        and r.phase is not Phase.SUCCEEDED
        and not r.migration_started
    ):
        # the answer of a PrepareIncoming still in flight when the record ended: nobody will use it
        return c.keep(
            f"late prepare {event.prepare_id} of a {r.phase.name} migration; removing it",
            CleanupTarget((event.prepare_id,)),
        )
    if isinstance(event, StepFailed) and r.phase is Phase.FAILED and event.step.startswith(KEEP_STEP):
        # the record said the target's copies are kept: say they may not be
        e = event.error
        return c.noted(
            f"{event.step} failed: {e.reason}: {e.message}; prepare {r.prepare_id or '?'} is still a prepare there, "
            f"which its agent's sweep removes once it expires: copy its images away first (or retry: CommitIncoming "
            f"{r.prepare_id or '?'} on {r.target_host})",
            f"{event.step} failed ({e.reason}); noted",
        )
    return Decision(r, (), f"ignored: {type(event).__name__}, the migration is final ({r.phase.name})")


def _waiting(c: Ctx, event: Waiting) -> Decision:
    """Noted once: the same wait again (a new leader's first plan) writes nothing."""
    if c.r.phase is not Phase.PENDING:
        return c.ignore(event)
    text = f"waiting: {event.why}"
    if c.r.history and c.r.history[-1].reason == text:
        return c.keep(f"still {text}")
    return Decision(note(c.r, c.now, text), (), text)


def _admitted(c: Ctx, event: Admitted) -> Decision:
    if c.r.phase is not Phase.PENDING:
        return c.ignore(event)
    n = c.r.attempt + 1
    if event.ahead:
        return Decision(
            c.to(Phase.PREFLIGHT, f"admitted ahead of its slot (attempt {n})", attempt=n, ahead=True),
            (RunPreflight(),),
            "admitted ahead of its slot; running preflight (the job waits for a slot)",
        )
    return Decision(
        c.to(Phase.PREFLIGHT, f"admitted (attempt {n})", attempt=n), (RunPreflight(),), "admitted; running preflight"
    )


def _granted(c: Ctx, event: SlotGranted) -> Decision:
    r = c.r
    if not r.ahead or r.phase not in (Phase.PREFLIGHT, Phase.PREPARING):
        return c.ignore(event)
    if r.phase is Phase.PREPARING and r.prepare_id:  # prepared, waiting: the job starts now
        return Decision(
            c.to(Phase.MIGRATING, f"slot granted; target prepared ({r.prepare_id})", ahead=False),
            (StartMigration(),),
            "slot granted; starting migration",
        )
    return Decision(  # not yet prepared: the job starts as soon as it is
        note(replace(r, ahead=False), c.now, "slot granted"), (), "slot granted; the job starts once prepared"
    )


def _preflight_result(c: Ctx, event: PreflightResult) -> Decision:
    if c.r.phase is not Phase.PREFLIGHT:
        return c.ignore(event)
    if event.prediction is not None:
        c = replace(c, r=replace(c.r, prediction=event.prediction))
    if not event.problems:
        return Decision(
            c.to(Phase.PREPARING, "preflight passed"), (PrepareTarget(),), "preflight passed; preparing target"
        )
    reasons = ", ".join(p.reason for p in event.problems)
    first = event.problems[0]
    error = (
        first
        if len(event.problems) == 1
        else Problem(
            first.reason,
            "; ".join(p.message for p in event.problems),
            "; ".join(p.hint for p in event.problems if p.hint),
        )
    )
    return Decision(
        c.to(Phase.FAILED, f"preflight: {reasons}", error=error),
        (),
        f"preflight found {len(event.problems)} problem(s): {reasons}; failed",
    )


def _prepared(c: Ctx, event: Prepared) -> Decision:
    r = c.r
    if r.phase is Phase.PREPARING and r.ahead and r.prepare_id:  # prepared ahead of its slot already
        if event.prepare_id == r.prepare_id:
            return c.ignore(event)
        return c.keep(f"a second prepare {event.prepare_id}; removing it", CleanupTarget((event.prepare_id,)))
    if r.phase is Phase.PREPARING and r.ahead:
        waiting = replace(
            r,
            prepare_id=event.prepare_id,
            destination_xml=event.destination_xml,
            disks=event.disks,
            phase_deadline=c.now + timedelta(seconds=c.t.slot_wait_s),
        )
        return Decision(
            note(waiting, c.now, f"target prepared ({event.prepare_id}); waiting for a slot"),
            (),
            "prepared; waiting for a slot",
        )
    if r.phase is Phase.PREPARING:
        return Decision(
            c.to(
                Phase.MIGRATING,
                f"target prepared ({event.prepare_id})",
                prepare_id=event.prepare_id,
                destination_xml=event.destination_xml,
                disks=event.disks,
            ),
            (StartMigration(),),
            "prepared; starting migration",
        )
    if r.phase in (Phase.PENDING, Phase.PREFLIGHT) and event.prepare_id and event.prepare_id != r.prepare_id:
        # an earlier attempt's answer, come after the record was re-queued: nobody will use it,
        # and left there it would stop the next attempt (PREPARE_EXISTS)
        return c.noted(
            f"late prepare {event.prepare_id} of an earlier attempt; removing it",
            f"late prepare {event.prepare_id}; removing it",
            CleanupTarget((event.prepare_id,)),
        )
    if r.phase is Phase.ROLLING_BACK and event.prepare_id != r.prepare_id:
        r2 = note(
            replace(r, prepare_id=r.prepare_id or event.prepare_id, target_cleaned=False),
            c.now,
            f"late prepare {event.prepare_id}; removing it",
        )
        if r.migration_started:  # removed with the rest once the guest is known off the target
            return Decision(r2, (c.observe_later,), f"late prepare {event.prepare_id}; observing placement")
        return Decision(
            r2, (CleanupTarget(_ids(r2, event.prepare_id)),), f"late prepare {event.prepare_id}; removing it"
        )
    return c.ignore(event)


def _ids(r: MigrationRecord, *extra: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(i for i in (r.prepare_id, *extra) if i))


def retry_goal(r: MigrationRecord, t: Timeouts) -> Phase:
    return Phase.PENDING if r.attempt < t.max_attempts else Phase.ROLLED_BACK


def roll_back(
    c: Ctx,
    reason: str,
    *,
    goal: Phase,
    error: Problem | None = None,
    abort: bool = False,
    safe_to_clean: bool = False,
    **changes: object,
) -> Decision:
    """Enter RollingBack, ending in ``goal``. Before a migration job was started the target holds
    only empty images: clean at once. After, first make sure the guest is not on the target
    (``safe_to_clean``: a placement just showed it on the source only)."""
    r = c.to(Phase.ROLLING_BACK, reason, error=error or c.r.error, rollback_to=goal, target_cleaned=False, **changes)
    if not r.migration_started or safe_to_clean:
        actions: tuple[Action, ...] = (CleanupTarget(_ids(r)),)
        then = "cleaning target"
    else:
        actions = ((AbortMigration(),) if abort else ()) + (ObservePlacement(),)
        then = ("aborting migration; " if abort else "") + "observing placement"
    ends = {Phase.PENDING: "then re-queue", Phase.CANCELLED: "then cancelled", Phase.FAILED: "then failed"}.get(
        goal, "then rolled back"
    )
    return Decision(r, actions, f"{reason}; rolling back ({then}, {ends})")


def requeue(c: Ctx, reason: str, error: Problem) -> Decision:
    """Nothing was touched: queue again, or fail after max_attempts admissions."""
    r = c.r
    if r.attempt < c.t.max_attempts:
        return Decision(
            c.to(Phase.PENDING, f"re-queued: {reason}", prepare_id="", destination_xml="", disks=(), progress=None),
            (),
            f"{reason}; re-queued (attempt {r.attempt} of {c.t.max_attempts} used)",
        )
    err = replace(error, message=f"{error.message} (after {r.attempt} attempts)")
    return Decision(c.to(Phase.FAILED, reason, error=err), (), f"{reason}; failed after {r.attempt} attempts")


def finish_rollback(c: Ctx, reason: str) -> Decision:
    r = c.r
    goal = r.rollback_to or Phase.ROLLED_BACK
    if goal is Phase.PENDING:
        r2 = c.to(
            Phase.PENDING,
            f"re-queued: {reason}",
            prepare_id="",
            destination_xml="",
            disks=(),
            progress=None,
            rollback_to=None,
            target_cleaned=False,
        )
        return Decision(r2, (), f"{reason}; re-queued (attempt {r.attempt} of {c.t.max_attempts} used)")
    return Decision(c.to(goal, reason), (), f"{reason}; {goal.name.lower().replace('_', ' ')}")


def _migration_ended(c: Ctx, event: MigrationEnded) -> Decision:
    r = c.r
    if r.phase is Phase.MIGRATING:
        if event.ok:
            finishing = c.to(Phase.FINISHING, "migration job completed", result=event.job)
            if r.prepare_id and not r.options.offline:
                # libvirt reports success on the source only after the target resumed the guest and
                # the source's copy stopped: commit, the target checking the guest landed there (if
                # it did not, the target's answer is a placement observed on both hosts instead)
                return Decision(
                    finishing,
                    (CommitTarget(r.prepare_id, require_landed=True),),
                    "migration completed; committing if the guest landed on target",
                )
            return Decision(finishing, (ObservePlacement(),), "migration completed; verifying placement")
        err = event.error or Problem(
            "MIGRATION_FAILED", "the migration job failed without an error", "see the source agent's log"
        )
        r2 = note(replace(r, error=err), c.now, f"migration job ended: {err.reason}")
        return Decision(r2, (ObservePlacement(),), f"migration failed ({err.reason}); observing placement")
    if r.phase is Phase.ROLLING_BACK and r.migration_started:
        r2 = replace(r, result=event.job or r.result, updated_at=c.now) if event.ok else r
        return Decision(
            r2,
            (ObservePlacement(),),
            f"migration job ended ({'completed' if event.ok else 'failed'}); observing placement",
        )
    return c.ignore(event)


def _cancel(c: Ctx) -> Decision:
    r = c.r
    match r.phase:
        case Phase.PENDING | Phase.PREFLIGHT:
            return Decision(c.to(Phase.CANCELLED, "cancelled by user", cancel_requested=True), (), "cancelled")
        case Phase.PREPARING:
            # no job yet: nothing to abort
            return roll_back(c, "cancel requested", goal=Phase.CANCELLED, cancel_requested=True)
        case Phase.MIGRATING | Phase.FINISHING if why := too_late_to_cancel(r):
            return c.keep(f"too late to cancel: {why}")
        case Phase.MIGRATING:
            goal = Phase.ROLLED_BACK if r.error else Phase.CANCELLED
            return roll_back(c, "cancel requested", goal=goal, abort=True, cancel_requested=True)
    # ROLLING_BACK
    if r.cancel_requested:
        return c.keep("already cancelling")
    if r.rollback_to is Phase.PENDING:
        r2 = note(replace(r, cancel_requested=True, rollback_to=Phase.CANCELLED), c.now, "cancel requested")
        return Decision(r2, (), "cancel requested; the rollback now ends cancelled instead of re-queued")
    r2 = note(replace(r, cancel_requested=True), c.now, "cancel requested")
    return Decision(
        r2, (), f"cancel requested; already rolling back, ends {r.rollback_to.name if r.rollback_to else '?'}"
    )


def _cleaned_up(c: Ctx) -> Decision:
    r = replace(c.r, target_cleaned=True)
    if not r.migration_started:
        return finish_rollback(replace(c, r=r), "target cleaned")
    return Decision(
        note(r, c.now, "target cleaned"), (ObservePlacement(),), "target cleaned; verifying the guest runs on source"
    )


def agent_lost(c: Ctx, host: str, why: Problem | None = None) -> Decision:
    """``host``'s agent (or its libvirtd: ``why``, when known) did not answer: wait for it with
    probes, up to ``agent_lost_s`` (module docstring); Preparing rolls back at once."""
    r, t = c.r, c.t
    if host not in (r.source_host, r.target_host) or r.phase is Phase.PENDING:
        return c.ignore(AgentLost(host, why))
    lost = f"agent on {host} lost" if why is None else f"{host} unavailable: {why.reason}: {why.message}"
    if r.phase is Phase.PREPARING:  # the prepare's answer is lost: undo it, the next attempt waits
        goal = retry_goal(r, t)
        return roll_back(c, lost, goal=goal, error=_lost_error(r, host, 0) if goal is Phase.ROLLED_BACK else None)
    if not r.lost_host or r.lost_since is None:
        r2 = note(replace(r, lost_host=host, lost_since=c.now), c.now, f"{lost}; probing it until it answers")
        delay = probe_delay_s(t, 0)
        return Decision(
            r2,
            (ObservePlacement(delay),),
            f"{lost}; probing again in {delay:g} s (gives up after {t.agent_lost_s:g} s)",
        )
    lost_for = (c.now - r.lost_since).total_seconds()
    if lost_for >= t.agent_lost_s:
        return gave_up_waiting(c)
    delay = probe_delay_s(t, lost_for)
    return c.keep(f"{lost} for {lost_for:.1f} s; probing again in {delay:g} s", ObservePlacement(delay))


def _agent_lost(c: Ctx, event: AgentLost) -> Decision:
    return agent_lost(c, event.host, event.why)


def answered(c: Ctx) -> Ctx:
    """Both agents answered (a placement was observed): the wait for a lost one ends."""
    r = c.r
    if not r.lost_host:
        return c
    waited = (c.now - r.lost_since).total_seconds() if r.lost_since else 0.0
    back = replace(r, lost_host="", lost_since=None)
    return replace(c, r=note(back, c.now, f"{r.lost_host} available again after {waited:.1f} s"))


def after_wait(c: Ctx, p: Placement) -> Decision:
    """The phase goes on once the lost agent answers again (``c`` already ``answered``)."""
    r = c.r
    match r.phase:
        case Phase.PREFLIGHT:
            return c.keep("agents answer again; re-running preflight", RunPreflight())
        case Phase.ROLLING_BACK if not r.migration_started:
            return c.keep("agents answer again; cleaning target", CleanupTarget(_ids(r)))
        case Phase.MIGRATING | Phase.FINISHING | Phase.ROLLING_BACK:
            return on_placement(c, p)
    return c.keep(f"agents answer again ({r.phase.name})")


def _lost_error(r: MigrationRecord, host: str, waited_s: float) -> Problem:
    waited = f" for {waited_s:.0f} s" if waited_s else ""
    return Problem(
        "AGENT_LOST",
        f"the agent on {host} or its libvirtd could not be reached{waited}",
        f"check ferry-agent and libvirtd on {host} (`ferry hosts`, the agent's log); then `ferry vms` shows where "
        f"{r.vm} runs",
    )


def gave_up_waiting(c: Ctx) -> Decision:
    """The lost agent did not answer within ``agent_lost_s``: undo what can be undone, else fail
    touching nothing, with what the operator must check; a target that committed already
    succeeds, noting the source's disks left."""
    r, t = c.r, c.t
    host = r.lost_host
    err = _lost_error(r, host, t.agent_lost_s)
    reason = f"agent on {host} lost for {t.agent_lost_s:g} s"
    match r.phase:
        case Phase.PREFLIGHT:  # nothing was touched
            return Decision(c.to(Phase.FAILED, reason, error=err), (), f"{reason}; failed")
        case Phase.MIGRATING if r.progress is None or r.progress.phase is not MigrationPhase.POSTCOPY:
            return roll_back(c, reason, goal=Phase.ROLLED_BACK, error=err, abort=True)
        case Phase.MIGRATING:
            hint = (
                f"post-copy: {r.vm} runs on {r.target_host} with memory still on {r.source_host}; restart neither. "
                f"Once {host} is back, `virsh domjobinfo {r.vm}` on {r.source_host} and, if the job broke, "
                f"`virsh migrate --postcopy-resume`"
            )
        case Phase.FINISHING if r.committed_at is not None:
            paths = ", ".join(r.copied_disks) or "(none recorded)"
            return _succeeded(
                c,
                f"SOURCE_DISKS_LEFT: {paths} on {r.source_host} not removed ({reason}); remove them by hand "
                f"once {r.vm} is known to run on {r.target_host} only",
            )
        case Phase.FINISHING:
            hint = (
                f"the migration job completed: once {host} is back, check that {r.vm} runs on {r.target_host} only "
                f"(`virsh list --all` on both); its prepared images (prepare {r.prepare_id or '?'}) were not "
                f"committed and are kept"
            )
        case _:  # RollingBack
            hint = (
                f"once {host} is back, check where {r.vm} runs (`virsh list --all` on {r.source_host} and "
                f"{r.target_host}); if on {r.source_host} only, remove prepare {r.prepare_id or '(id unknown)'} on "
                f"{r.target_host}"
            )
    return _needs_operator(c, replace(err, hint=f"{err.hint}; {hint}"))


def completed_progress(
    last: MigrationProgress | None, job: CompletedJob | None, memory_bytes: int
) -> MigrationProgress:
    """The progress of a migration that landed: nothing left, what was moved as the completed job
    says (else the totals), so a record never ends showing a leader's last throttled snapshot.

    >>> p = completed_progress(None, CompletedJob(time_elapsed_ms=900, memory_processed=300, iterations=2), 256)
    >>> p.phase.name, p.stats.memory_processed, p.stats.memory_total, p.stats.memory_remaining, p.stats.iteration
    ('COMPLETED', 300, 256, 0, 2)
    """
    s = last.stats if last is not None else JobStats()
    total = s.memory_total or memory_bytes
    done = (job.memory_processed if job else 0) or max(s.memory_processed, total)
    disk = max(s.disk_processed, job.disk_processed if job else 0, s.disk_total)
    stats = replace(  # the figures the wire and the record carry (``MigrationProgress``)
        s,
        memory_total=total,
        memory_processed=done,
        memory_remaining=0,
        disk_processed=disk,
        disk_remaining=0,
        dirty_rate_pages=0,
        time_elapsed_ms=(job.time_elapsed_ms if job else 0) or s.time_elapsed_ms,
        iteration=(job.iterations if job else 0) or s.iteration,
    )
    return MigrationProgress(MigrationPhase.COMPLETED, stats, last.max_downtime_ms if last else 0)


def _tick(c: Ctx) -> Decision:
    r = c.r
    lost_deadline = r.lost_deadline(c.t)
    if lost_deadline is not None:
        if c.now >= lost_deadline:
            return gave_up_waiting(c)
        return c.keep(f"no action: waiting for the agent on {r.lost_host} until {lost_deadline:%H:%M:%S}")
    if r.phase_deadline is not None and c.now < r.phase_deadline:
        return c.keep("no action: deadline not reached")
    match r.phase:
        case Phase.PENDING:
            return Decision(
                c.to(
                    Phase.FAILED,
                    "queued too long",
                    error=Problem(
                        "QUEUE_TIMEOUT",
                        f"no migration slot became free for {r.vm} before the queue deadline",
                        "raise the slot limits or the priority, check both hosts' agents are up, then resubmit",
                    ),
                ),
                (),
                "queued too long; failed",
            )
        case Phase.PREFLIGHT:
            return requeue(
                c,
                "preflight timed out",
                Problem(
                    "PREFLIGHT_TIMEOUT",
                    f"the preflight of {r.vm} did not finish in time",
                    f"check ferry-agent on {r.target_host} answers (ferry hosts)",
                ),
            )
        case Phase.PREPARING if r.ahead and r.prepare_id:
            return roll_back(
                c,
                f"no slot for {c.t.slot_wait_s:g} s with the target prepared; releasing the prepare, queueing again",
                goal=Phase.PENDING,
            )
        case Phase.PREPARING:
            goal = retry_goal(r, c.t)
            err = Problem(
                "PREPARE_TIMEOUT",
                f"{r.target_host} did not finish preparing {r.vm} in time",
                f"check disk space and ferry-agent's log on {r.target_host}",
            )
            return roll_back(c, "prepare timed out", goal=goal, error=err if goal is Phase.ROLLED_BACK else None)
        case Phase.MIGRATING:
            return _migrating_deadline(c)
    return _retry_or_fail(c)


def _migrating_deadline(c: Ctx) -> Decision:
    r = c.r
    if r.progress is not None and r.progress.phase is MigrationPhase.POSTCOPY:
        # post-copy cannot be aborted: the target already runs the guest. Keep watching.
        return _retry_or_fail(c)
    if r.error is not None:  # the job ended but the placement never settled
        return roll_back(c, "placement did not settle", goal=Phase.ROLLED_BACK, abort=True)
    err = Problem(
        "MIGRATION_TIMEOUT",
        f"the migration of {r.vm} did not complete before its deadline",
        "the guest dirties memory faster than the link copies it: raise the bandwidth or "
        "max downtime, allow auto-converge or post-copy, or migrate when it is quieter",
    )
    return roll_back(c, "migration timed out", goal=Phase.ROLLED_BACK, error=err, abort=True)


def _retry_or_fail(c: Ctx) -> Decision:
    """Finishing, RollingBack, a stuck post-copy: retry with backoff; after max_retries fail loudly."""
    r, t = c.r, c.t
    if r.retries < t.max_retries:
        r2 = with_retry(r, c.now, "deadline passed", t)
        return Decision(r2, _phase_actions(r2), f"deadline passed; retry {r2.retries} of {t.max_retries}")
    last = next((h.reason for h in reversed(r.history) if "failed" in h.reason), "")
    where = f"{r.source_host} and {r.target_host}"
    err = {
        Phase.MIGRATING: Problem(
            "POSTCOPY_STUCK",
            f"the post-copy migration of {r.vm} does not complete",
            f"check the link between {where}; `virsh domjobinfo {r.vm}` on "
            f"{r.source_host}; if it broke, `virsh migrate --postcopy-resume`",
        ),
        Phase.FINISHING: _commit_failed(r)
        if last.startswith(f"{COMMIT_STEP} on ")
        else Problem(
            "FINISH_INCOMPLETE",
            f"could not confirm {r.vm} runs on {r.target_host} only",
            f"check `virsh list` on {where}; destroy a paused leftover on "
            f"{r.source_host} once the guest runs on {r.target_host}",
        ),
        Phase.ROLLING_BACK: Problem(
            "ROLLBACK_INCOMPLETE",
            f"could not finish undoing the migration of {r.vm}" + (f" ({r.error.reason})" if r.error else ""),
            f"check `virsh list` on {where}; once {r.vm} runs on {r.source_host} only, "
            f"remove prepare {r.prepare_id or '(id unknown)'} on {r.target_host}",
        ),
    }[r.phase]
    if last:
        err = replace(err, message=f"{err.message}; last: {last}")
    return Decision(
        c.to(Phase.FAILED, f"gave up after {r.retries} retries", error=err),
        (),
        f"gave up after {r.retries} retries; failed ({err.reason})",
    )


def _commit_failed(r: MigrationRecord) -> Problem:
    """Finishing gave up on a commit that kept failing (the step that failed last): the guest
    landed (Finishing is entered only when the job completed or the guest was seen on the target;
    each retry commits only once it is seen there again), so the migration is done but for the
    commit, and the source's copies of the copied disks, removed only after a commit, are left."""
    pid = r.prepare_id or "?"
    copied = r.copied_disks if r.options.storage is not StorageMode.SHARED else ()
    left = (
        f"; the source's copies of the copied disks were not removed: once {r.vm} runs on {r.target_host} only, "
        f"remove {', '.join(copied)} on {r.source_host} by hand"
        if copied
        else ""
    )
    return Problem(
        "COMMIT_FAILED",
        f"the migration of {r.vm} to {r.target_host} completed, but {r.target_host} did not commit prepare {pid}",
        f"see ferry-agent's log on {r.target_host} for why; check that {r.vm} runs on {r.target_host} only (`virsh "
        f"list --all` on {r.source_host} and {r.target_host}): then the migration is done and its prepared images "
        f"are {r.vm}'s disks (the agent's sweep commits prepare {pid} once it expires, {r.vm} being defined there; or "
        f"CommitIncoming {pid} once the cause is fixed){left}",
    )


def _phase_actions(r: MigrationRecord) -> tuple[Action, ...]:
    """What to (re)do to make progress in a retried phase; all idempotent."""
    if r.phase is Phase.ROLLING_BACK:
        if not r.migration_started:
            return (CleanupTarget(_ids(r)),)
        return (ObservePlacement(),) if r.target_cleaned else (AbortMigration(), ObservePlacement())
    return (ObservePlacement(),)


def on_placement(c: Ctx, p: Placement) -> Decision:
    """Migrating, Finishing, RollingBack: act on where the guest is."""
    r = c.r
    if r.phase is Phase.ROLLING_BACK and not r.migration_started:
        return c.keep("placement not needed: no migration job was started")
    loc = locate(p, r.options.offline)
    if loc is Location.ON_BOTH:
        if p.source_job_active:
            # Executing on both while the job runs can only be pre-copy (in post-copy the source
            # is paused), where the source holds the authoritative state: abort, libvirt then
            # stops the target's incoming copy.
            return c.keep(
                "guest executes on both hosts while the job runs; aborting the job", AbortMigration(), c.observe_later
            )
        return _needs_operator(
            c,
            Problem(
                "VM_ON_TWO_HOSTS",
                f"{r.vm} executes on both {r.source_host} and {r.target_host}",
                f"suspend one copy now (virsh suspend), keep the one with the newest state, destroy the other; "
                f"Ferry removed nothing (prepare {r.prepare_id or '?'} on {r.target_host} is kept)",
            ),
        )
    if loc is Location.DIVERGED:
        return _needs_operator(
            c,
            Problem(
                "VM_STARTED_ON_SOURCE",
                f"{r.vm} was started on {r.source_host} while its definition moved to {r.target_host}",
                f"keep one: shut it down and rerun the migration, or undefine it on "
                f"{r.target_host} (virsh undefine); Ferry removed nothing",
            ),
        )
    if loc is Location.NOWHERE:
        if r.phase is Phase.ROLLING_BACK and r.rollback_to is Phase.FAILED and r.target_cleaned:
            return finish_rollback(c, f"target cleaned; {r.vm} runs on neither host")
        if r.phase is Phase.MIGRATING and _stopped_in_precopy(r, p):
            # Stopped before the switch-over (its host died, QEMU crashed): the source's disks and
            # definition hold its newest state, the target's copies are incomplete. Remove those,
            # so nothing is left there and the next migration can prepare again.
            return _fail_removing_target_copies(
                c,
                f"{r.vm} runs on neither host; it stopped on {r.source_host} during pre-copy",
                Problem(
                    "VM_NOT_RUNNING",
                    f"{r.vm} stopped on {r.source_host} during pre-copy: it runs on neither "
                    f"{r.source_host} nor {r.target_host}",
                    f"its newest state is on {r.source_host}: find out why it stopped (libvirt/qemu logs there), "
                    f"then start it there (virsh start {r.vm}); the target's incomplete copies are removed",
                ),
            )
        if r.phase is Phase.MIGRATING and _removed_before_landing(r, p):
            # Defined on neither host, and its job failed before any post-copy: someone removed the
            # guest from the source (virsh destroy + undefine: a VM deleted, say, during a drain).
            # The target's incoming copy never became the guest: its copies are incomplete, remove
            # them (seen on the lab: they were kept, VM_NOT_RUNNING for an operator to judge).
            return _fail_removing_target_copies(
                c,
                f"{r.vm} is defined on neither host: it is gone from {r.source_host}",
                Problem(
                    "VM_GONE",
                    f"{r.vm} is gone from {r.source_host} (removed, or a transient guest that stopped) before "
                    f"its migration switched over (the job failed: {r.error.reason if r.error else '?'}); it is "
                    f"defined on neither {r.source_host} nor {r.target_host}",
                    f"nothing to move; if it was not removed on purpose, its disks are still on {r.source_host} "
                    "(define it there again); the target's incomplete copies are removed",
                ),
            )
        if r.phase in (Phase.MIGRATING, Phase.FINISHING) and _stopped_after_landing(r, p):
            # The job completed (seen, or not yet: the target's persistent definition and the
            # source's none say so), so the guest landed; it stopped there afterwards (its host
            # died or QEMU crashed). The target's definition and disks are its newest state: the
            # migration is done, its prepare is the VM's own now.
            stopped = (
                f"{r.vm} landed on {r.target_host} and stopped there afterwards "
                f"({p.target_state.name.lower() if p.target_state else '?'}; its host went down or QEMU crashed): "
                f"it is defined on {r.target_host} alone; start it there (virsh start {r.vm}); Ferry never starts it"
            )
            if r.phase is Phase.MIGRATING:
                return Decision(
                    c.to(Phase.FINISHING, stopped, error=None), (CommitTarget(r.prepare_id),), f"{stopped}; committing"
                )
            return Decision(note(r, c.now, stopped), (CommitTarget(r.prepare_id),), f"{stopped}; committing")
        kept = "" if r.target_cleaned else f"; {_copies_kept(r)}"
        return _needs_operator(
            c,
            Problem(
                "VM_NOT_RUNNING",
                f"{r.vm} runs on neither {r.source_host} nor {r.target_host}",
                f"find out why it stopped (libvirt/qemu logs on both hosts) and start it where its newest disks are: "
                f"{r.source_host} unless the migration reached post-copy or completed{kept}",
            ),
            *_keep(r),
        )
    if stale_incoming(p, r.options.offline):
        return _stale_incoming(c)
    if r.stale_incoming_since is not None:  # the target's paused copy went away: the wait ends
        c = replace(c, r=replace(r, stale_incoming_since=None, updated_at=c.now))
        r = c.r
    if loc in (Location.SETTLING, Location.UNCLEAR, Location.ARRIVING):
        return c.keep(f"placement {loc.value}; observing again", c.observe_later)
    if loc is Location.ON_SOURCE and _split_after_switchover(r, p):
        return _postcopy_failed(c, p)
    if loc is Location.ON_SOURCE and p.migrate_call_open and r.phase in (Phase.MIGRATING, Phase.ROLLING_BACK):
        # No job on the source, but this leader's Migrate call has not ended: libvirt registers the
        # job a moment after the call reaches it, so it may yet start. Nothing is removed and the
        # rollback does not end before the call did (a rollback ended here once, CANCELLED, and the
        # job then started and moved the guest). Aborted again: an abort the agent takes before the
        # job shows makes it end the call and abort the job as soon as it starts.
        if r.phase is Phase.ROLLING_BACK:
            return c.keep(
                "guest on source only, but the Migrate call is still open (its job may yet start); aborting it",
                AbortMigration(),
                c.observe_later,
            )
        return c.keep("no job on source yet, but the Migrate call is still open; observing again", c.observe_later)
    match r.phase:
        case Phase.MIGRATING:
            return _placement_migrating(c, loc)
        case Phase.FINISHING:
            if loc is Location.ON_TARGET:
                return c.keep("guest runs on target only; committing", CommitTarget(r.prepare_id))
            if loc is Location.ON_SOURCE:
                return roll_back(
                    c,
                    "the job reported success but the guest runs on source only",
                    goal=Phase.ROLLED_BACK,
                    safe_to_clean=True,
                    error=Problem(
                        "MIGRATION_NOT_LANDED",
                        f"{r.vm} still runs on {r.source_host} after the migration job reported success",
                        "retry the migration; report it if it happens again",
                    ),
                )
            return c.keep("a migration job is active on source again; observing", c.observe_later)
    # ROLLING_BACK, after a job was started
    if loc is Location.MOVING:
        return c.keep("migration job still active; aborting it", AbortMigration(), c.observe_later)
    if loc is Location.ON_TARGET:
        why = "too late to cancel" if r.rollback_to is Phase.CANCELLED else "the migration landed"
        return Decision(
            c.to(Phase.FINISHING, f"{why}: guest runs on target", rollback_to=None, error=None),
            (CommitTarget(r.prepare_id),),
            f"{why}: the guest runs on target; finishing",
        )
    if not r.target_cleaned:
        return c.keep("job stopped, guest runs on source only; cleaning target", CleanupTarget(_ids(r)))
    return finish_rollback(c, "target cleaned, guest runs on source")


def stale_incoming(p: Placement, offline: bool = False) -> bool:
    """The guest executes on the source with no job while the target holds libvirt's paused
    incoming copy: the end of a failed or aborted migration. libvirt removes that copy at once,
    unless the target's libvirtd lost track of it (restarted mid-migration). Never after a
    switch-over: a source that handed the guest over is paused, then gone."""
    return (
        not offline
        and p.source_state in EXECUTING
        and not p.source_job_active
        and p.target_state is DomainState.PAUSED
        and p.target_arriving
    )


def _stale_incoming(c: Ctx) -> Decision:
    """A ``stale_incoming`` placement: observe again; once it lasted ``stale_incoming_s``, clean
    the target, destroying that copy (``CleanupTarget.discard_incoming``), and roll back."""
    r, t = c.r, c.t
    what = f"{r.vm} runs on {r.source_host} with no job; {r.target_host} holds its incoming copy paused"
    if r.stale_incoming_since is None:
        # usually gone by the next look: noted only if it has to be discarded
        r2 = replace(r, stale_incoming_since=c.now, updated_at=c.now)
        return Decision(r2, (c.observe_later,), f"{what}; observing again")
    waited = (c.now - r.stale_incoming_since).total_seconds()
    if waited < t.stale_incoming_s:
        return c.keep(f"{what} ({waited:.0f} s); observing again", c.observe_later)
    reason = f"{what} for {waited:.0f} s: libvirt left it behind; discarding it"
    clean = CleanupTarget(_ids(r), discard_incoming=True)
    if r.phase is Phase.ROLLING_BACK:
        return Decision(note(r, c.now, reason), (clean,), f"{reason}; cleaning target")
    err = r.error or Problem(
        "MIGRATION_NOT_LANDED" if r.phase is Phase.FINISHING else "MIGRATION_INTERRUPTED",
        f"the migration of {r.vm} ended with the guest on {r.source_host} and an unfinished incoming copy "
        f"left paused on {r.target_host}",
        f"see the libvirtd log on {r.target_host} (a restart during the migration leaves such a copy); "
        "retry the migration",
    )
    # as for any job that ended unobserved (``_placement_migrating``): tried again while attempts last
    goal = retry_goal(r, c.t) if r.phase is Phase.MIGRATING and r.error is None else Phase.ROLLED_BACK
    d = roll_back(c, reason, goal=goal, error=err if goal is Phase.ROLLED_BACK else None, safe_to_clean=True)
    return Decision(d.record, (clean,), d.outcome)


def _placement_migrating(c: Ctx, loc: Location) -> Decision:
    r = c.r
    if loc is Location.MOVING:
        if r.error is None:  # the shell keeps one follower per record: a no-op if it has one
            return c.keep("migration job running; following it", WatchJob())
        return c.keep("job still active after it reported its end; observing again", c.observe_later)
    if loc is Location.ON_TARGET:
        ended = f" (the job reported {r.error.reason})" if r.error else ""
        return Decision(
            c.to(Phase.FINISHING, f"guest runs on target{ended}", error=None),
            (CommitTarget(r.prepare_id),),
            f"guest runs on target{ended}; committing",
        )
    if r.error is None:
        # no job, and none reported its end: the job ended while nobody followed it, or never
        # began (a leader that died just after asking for it: the agent's call was cut first).
        # The guest runs on the source only; clean the target and try again while attempts last.
        err = Problem(
            "MIGRATION_INTERRUPTED",
            f"the migration job of {r.vm} ended unobserved or never began (coordinator or agent restart)",
            f"see the agent log on {r.source_host}; retry the migration",
        )
        goal = retry_goal(r, c.t)
        return roll_back(
            c,
            f"migration interrupted ({err.reason}), guest runs on source",
            goal=goal,
            error=err if goal is Phase.ROLLED_BACK else None,
            safe_to_clean=True,
        )
    return roll_back(
        c,
        f"migration failed ({r.error.reason}), guest runs on source",
        goal=Phase.ROLLED_BACK,
        error=r.error,
        safe_to_clean=True,
    )


def _stopped_in_precopy(r: MigrationRecord, p: Placement) -> bool:
    """A guest running nowhere certainly stopped before its migration switched over: the job was
    not in post-copy, the target has no definition (a landed migration defines it there, or
    runs it transient), and the source still defines it although a completed migration would have
    undefined it there."""
    return (
        not r.options.offline
        and r.options.undefine_source
        and not postcopy_reached(r)  # never in post-copy (seen, or asked for by a policy or operator)
        and p.target_state is None
        and p.source_state in (DomainState.SHUTOFF, DomainState.CRASHED)
    )


def _fail_removing_target_copies(c: Ctx, reason: str, error: Problem) -> Decision:
    """The guest never became the target's (it runs nowhere, and the job never switched over): the
    target's copies are incomplete; remove them (nothing is left there, the next migration can
    prepare again) and fail with ``error``."""
    return roll_back(c, reason, goal=Phase.FAILED, safe_to_clean=True, error=error)


def _removed_before_landing(r: MigrationRecord, p: Placement) -> bool:
    """A guest defined on neither host whose job failed (not completed) and was never seen in
    post-copy: the target's incoming copy never became the guest (a completed job would have
    defined it there), so the source lost it by someone's hand, not by the migration."""
    return (
        not r.options.offline
        and r.error is not None
        and not too_late_to_cancel(r)  # never in post-copy (seen, or asked for by a policy or operator)
        and p.source_state is None
        and p.target_state is None
    )


def _stopped_after_landing(r: MigrationRecord, p: Placement) -> bool:
    """A guest running nowhere certainly landed when the target defines it persistently (shut off
    or crashed: its host died, QEMU crashed) and the source no longer does: only a completed
    migration defines it there and undefines it here."""
    return (
        not r.options.offline
        and r.options.persist_dest
        and r.options.undefine_source
        and p.source_state is None
        and p.target_state in (DomainState.SHUTOFF, DomainState.CRASHED)
    )


def _needs_operator(c: Ctx, err: Problem, *keep: KeepTarget) -> Decision:
    """Fail loudly and touch nothing: the guest is not where a rollback or a commit is safe.
    ``keep``: the target keeps its copies for the operator (``_keep``), as ``err`` says."""
    return Decision(c.to(Phase.FAILED, err.reason, error=err), keep, f"{err.message}; failed, needs an operator")


def _keep(r: MigrationRecord) -> tuple[KeepTarget, ...]:
    """The target keeps the prepare's images (``KeepTarget``): a failure for an operator whose
    hint says they are kept, while the target still holds them. Without this the target's agent
    removes them once the prepare expires (a domain defined there would keep them, but none is)."""
    return (KeepTarget(r.prepare_id),) if r.prepare_id and not r.target_cleaned else ()


def _target_copies(r: MigrationRecord) -> tuple[str, ...]:
    """The images the target's prepare made: the destinations of the disks planned copied."""
    return tuple(p.destination or p.source for p in r.disks if p.copy)


def _copies(r: MigrationRecord) -> str:
    """The target's copies in a hint: their paths (when the plan is known) and the prepare."""
    files = ", ".join(_target_copies(r))
    pid = r.prepare_id or "?"
    return f"{files} on {r.target_host}, prepare {pid}" if files else f"prepare {pid}"


def _copies_kept(r: MigrationRecord) -> str:
    """What the hint of a failure with ``_keep`` says of the target's copies."""
    return f"the target's copies ({_copies(r)}) are kept: committed there, so its agent does not remove them"


def _split_after_switchover(r: MigrationRecord, p: Placement) -> bool:
    """The guest, alive on the source only, is what a post-copy that broke after its switch-over
    leaves there: the job switched (``postcopy_reached``: seen, or asked for) and the source does
    not execute the guest (a switch-over pauses it for good; a switch asked for but refused, or
    failed before the switch-over, leaves it running there with all its state: a plain rollback)."""
    seen = r.progress is not None and r.progress.phase is MigrationPhase.POSTCOPY
    return (
        r.migration_started
        and not r.options.offline
        and postcopy_reached(r)
        and (seen or p.source_state not in EXECUTING)
    )


def _postcopy_failed(c: Ctx, p: Placement) -> Decision:
    """The guest is on the source only after its job switched to post-copy (``postcopy_reached``):
    the job broke after the switch-over with the target's copy gone (its QEMU or host died), and
    the source holds the guest paused ("post-copy failed"), its memory split between the hosts,
    the target's part lost. Neither rolling back (the target's images hold what the guest wrote
    since the switch-over, its newest disks) nor finishing is possible: fail for an operator,
    removing nothing, the target keeping its copies (``KeepTarget``)."""
    r = c.r
    held = p.source_state.name.lower() if p.source_state is not None else "?"
    job = f"the job failed: {r.error.reason}" if r.error else "its job ended unobserved"
    if r.target_cleaned:
        disks = f"the target's copies (prepare {r.prepare_id or '?'}) were removed before this was seen"
        restart = f"start it again from its disks on {r.source_host} (as they were at the switch-over)"
    elif r.options.storage is StorageMode.SHARED and not _target_copies(r):
        disks = f"its disks, on shared storage, hold what it wrote on {r.target_host}"
        restart = f"start it again (virsh start {r.vm}): it boots from them"
    else:
        disks = (
            f"its newest disks are the target's copies ({_copies(r)}), kept: committed there, so its agent does "
            "not remove them"
        )
        restart = (
            f"start it from those: copy them over its disks on {r.source_host}, or define it on {r.target_host} "
            "with them"
        )
    return _needs_operator(
        c,
        Problem(
            "POSTCOPY_FAILED",
            f"the post-copy migration of {r.vm} broke after the switch-over ({job}): {r.target_host} no longer "
            f"runs it and {r.source_host} holds it {held}; its memory was split between the hosts and the part on "
            f"{r.target_host} is lost",
            f"{r.vm} cannot go on from {r.source_host}: do not resume it there; {disks}; find out why QEMU stopped "
            f"on {r.target_host} (libvirt and qemu logs there), then destroy {r.vm} on {r.source_host} (virsh "
            f"destroy) and {restart}; Ferry removed nothing",
        ),
        *_keep(r),
    )
