"""The vocabulary of the coordinator's decision function (``decide``): events and actions (pure).

Events are what the shell (the leader loop) observed and feeds to ``decide``; actions are what
``decide`` asks the shell to perform once the new record is stored (``actions.Actions``), each
result coming back as another event. A ``Decision`` holds the new record, the actions and the
outcome in words.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.model import CompletedJob, DiskPlan, DomainState, MigrationProgress, PolicyAction, Problem
from ferry.prediction import Prediction

from .record import MigrationRecord

# --- events: what the shell observed -------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    """``slots.admit`` picked this Pending record; ``ahead``: ahead of its slot (preflight and
    prepare now, the job waits for ``SlotGranted``)."""

    ahead: bool = False


@dataclass(frozen=True)
class Waiting:
    """A Pending record waits for something an operator should see (a host down, a cordon; not
    a full limit, the routine wait): ``why``, in words, noted in its history once per change."""

    why: str


@dataclass(frozen=True)
class SlotGranted:
    """A record admitted ahead of its slot gets it (``slots.plan_admission``'s ``grant``)."""


@dataclass(frozen=True)
class PreflightResult:
    """Coordinator checks + the target's PrepareIncoming dry run; empty = ready. ``prediction``:
    made now, for a record that had none (a policy that refuses what it cannot finish adds its
    WILL_NOT_CONVERGE to the problems)."""

    problems: tuple[Problem, ...] = ()
    prediction: Prediction | None = None


@dataclass(frozen=True)
class Prepared:
    """The target's PrepareIncoming answered."""

    prepare_id: str
    destination_xml: str
    disks: tuple[DiskPlan, ...] = ()  # the disk plan the target prepared (its answer's)


@dataclass(frozen=True)
class PrepareFailed:
    """The target's PrepareIncoming failed with an error (not an unreachable agent: AgentLost)."""

    error: Problem


@dataclass(frozen=True)
class Progress:
    """A progress event of the source's Migrate stream (or of WatchJob)."""

    progress: MigrationProgress


@dataclass(frozen=True)
class PolicyActed:
    """The source's driver did something to the job (a policy step, a post-copy resume, an
    operator's request it carried out), with the reason: kept in the record's actions."""

    action: PolicyAction


@dataclass(frozen=True)
class MigrationEnded:
    """The migration job ended: the Migrate stream's result, its error, or WatchJob's end."""

    ok: bool
    job: CompletedJob | None = None
    error: Problem | None = None


@dataclass(frozen=True)
class CancelRequested:
    """A user asked to cancel (CancelMigration)."""


@dataclass(frozen=True)
class CleanedUp:
    """The target holds no prepare of this migration any more (removed, or already gone)."""


@dataclass(frozen=True)
class Committed:
    """The target's CommitIncoming answered (an unknown, already committed prepare counts).
    ``note``: what became of the source's copied disks, for the history ("" = nothing to say).
    ``job``: the completed job's figures read on the target, for a record that has none yet (a job
    followed by polling after a leader or agent change, whose Migrate stream never ended here).
    ``source_lost``: the source could not be reached to remove its copied disks (``note`` says
    which stay): ``decide`` waits for it before the record ends."""

    note: str = ""
    job: CompletedJob | None = None
    source_lost: bool = False


@dataclass(frozen=True)
class StepFailed:
    """An action failed with an error that is not an unreachable agent (that is AgentLost).
    ``step`` says which, in words, ending with " on HOST" (``COMMIT_STEP``, ``KEEP_STEP``)."""

    step: str
    error: Problem


#: ``StepFailed.step`` of a failed CommitTarget and of a failed KeepTarget (then " on HOST")
COMMIT_STEP = "commit the target"
KEEP_STEP = "keep the target's copies"


@dataclass(frozen=True)
class Placement:
    """The domain as observed on both hosts (GetDomain on each, GetJob on the source).

    A state of None means no such domain on that host; ``source_job_active`` means an outgoing
    migration job of this domain runs on the source; ``target_arriving`` means the target's domain
    is an incoming migration's that has not finished (libvirt keeps it paused for the migration).
    ``migrate_call_open``: the shell's own observation, not an agent's: this leader's Migrate call
    to the source (``StartMigration``) has not ended, so libvirt's job may yet start (the source
    registers it a moment after the call reaches it) although the source shows none.
    """

    source_state: DomainState | None
    target_state: DomainState | None
    source_job_active: bool = False
    target_arriving: bool = False
    migrate_call_open: bool = False


@dataclass(frozen=True)
class AgentLost:
    """An agent cannot be reached: its lease expired, its libvirtd is down, or a call failed
    Unavailable/DeadlineExceeded; ``why`` says which, when known (the record's history shows it)."""

    host: str
    why: Problem | None = None


@dataclass(frozen=True)
class Tick:
    """Time passed: check the phase deadline."""


Event = (
    Admitted
    | Waiting
    | SlotGranted
    | PreflightResult
    | Prepared
    | PrepareFailed
    | Progress
    | PolicyActed
    | MigrationEnded
    | CancelRequested
    | CleanedUp
    | Committed
    | StepFailed
    | Placement
    | AgentLost
    | Tick
)

# --- actions: what the shell performs (after storing the record) ---------------------------------


@dataclass(frozen=True)
class RunPreflight:
    """Coordinator checks and the target's PrepareIncoming(dry_run). Feed PreflightResult."""


@dataclass(frozen=True)
class PrepareTarget:
    """The target's PrepareIncoming(migration_id=record.id). Feed Prepared or PrepareFailed."""


@dataclass(frozen=True)
class StartMigration:
    """The source's Migrate stream with record.destination_xml. Feed Progress..., MigrationEnded."""


@dataclass(frozen=True)
class WatchJob:
    """Follow a running job (GetJob on the source, polled). Feed Progress..., MigrationEnded.
    A no-op when the shell already follows this record's job (its Migrate stream or a watcher)."""


@dataclass(frozen=True)
class AbortMigration:
    """The source's AbortMigration (no job = fine). The job's end arrives as MigrationEnded."""


@dataclass(frozen=True)
class ObservePlacement:
    """After ``delay_s``: GetDomain on both hosts and GetJob on the source. Feed Placement."""

    delay_s: float = 0.0


@dataclass(frozen=True)
class CleanupTarget:
    """The target's CleanupIncoming for each id, then for every other prepare ListPrepares shows
    with this migration's id (a prepare whose answer was lost). Feed CleanedUp when none is left."""

    prepare_ids: tuple[str, ...] = ()
    #: the placement showed the guest executing on the source with no job and the target holding
    #: libvirt's unfinished incoming copy for longer than ``Timeouts.stale_incoming_s``: the
    #: target destroys that copy first (``CleanupIncomingRequest.discard_incoming``)
    discard_incoming: bool = False


@dataclass(frozen=True)
class CommitTarget:
    """The target's CommitIncoming. Feed Committed.

    ``require_landed``: the target first checks the guest landed there (the source reported the
    job completed and nobody looked since); if it did not, feed the Placement observed instead."""

    prepare_id: str
    require_landed: bool = False


@dataclass(frozen=True)
class KeepTarget:
    """The target keeps the prepare's images for an operator: the record failed with the guest
    where they may hold its newest disks (post-copy, a job that completed) and no domain on the
    target claims them, so its agent's sweep would remove them once the prepare expires. The
    target's CommitIncoming without the landing check: the agent forgets the prepare and leaves
    its images; nothing else (the source's disks stay). Performed after the failed record was
    stored: feed StepFailed (``KEEP_STEP``) if it fails, noted in the record."""

    prepare_id: str


Action = (
    RunPreflight
    | PrepareTarget
    | StartMigration
    | WatchJob
    | AbortMigration
    | ObservePlacement
    | CleanupTarget
    | CommitTarget
    | KeepTarget
)


@dataclass(frozen=True)
class Decision:
    """The new record (``is`` the old one when nothing changed), what to do, and why in words."""

    record: MigrationRecord
    actions: tuple[Action, ...] = ()
    outcome: str = ""
