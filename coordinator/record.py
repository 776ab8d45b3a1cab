"""The migration record the coordinator keeps in the store, and its versioned JSON form (pure).

One record per migration, under one key; every change is a compare-and-swap on ``revision``
(the store's mod revision, kept beside the record, never inside its JSON). Records are immutable:
``with_phase``/``with_retry``/``note`` return a new record with the history extended.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from ferry.convergence import ConvergencePolicy, completion_timeout_s, policy_doc, policy_from_doc
from ferry.errors import FerryError, Internal
from ferry.logcontext import MigrationContext
from ferry.model import (
    CompletedJob,
    DiskPlan,
    HostMapping,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    PolicyAction,
    Problem,
    StorageMode,
)
from ferry.prediction import Prediction

from .phases import Phase, Timeouts, check_transition, phase_timeout_s, retry_delay_s

SCHEMA = 1
HISTORY_MAX = 200  # the first entry (submission) is always kept
ACTIONS_MAX = 200  # the first ones and the newest are kept


@dataclass(frozen=True)
class PhaseChange:
    """One history entry. Same phase as the one before: a note (a retry, a failed step)."""

    phase: Phase
    at: datetime
    reason: str = ""


@dataclass(frozen=True)
class ActionEntry:
    """One thing done to the running job (a policy step, an operator's request) and when the
    coordinator learned of it."""

    at: datetime
    action: PolicyAction


@dataclass(frozen=True)
class MigrationRecord:
    id: str
    vm: str  # domain name on the source
    vm_uuid: str
    source_host: str
    target_host: str
    created_at: datetime
    options: MigrationOptions = MigrationOptions()
    mapping: HostMapping = field(default_factory=HostMapping)
    priority: int = 0  # higher first
    idempotency_key: str = ""
    updated_at: datetime | None = None
    phase: Phase = Phase.PENDING
    history: tuple[PhaseChange, ...] = ()
    phase_deadline: datetime | None = None
    memory_bytes: int = 0  # guest memory, for Migrating's deadline
    disk_bytes: int = 0  # bytes of disk to copy (0 with shared storage)
    prepare_id: str = ""
    destination_xml: str = ""
    disks: tuple[DiskPlan, ...] = ()  # the disk plan the target prepared; sent with the Migrate call
    progress: MigrationProgress | None = None  # the source's last report of the job
    result: CompletedJob | None = None
    error: Problem | None = None
    cancel_requested: bool = False
    attempt: int = 0  # admissions so far (Pending -> Preflight)
    retries: int = 0  # deadline retries in the current phase
    rollback_to: Phase | None = None  # RollingBack ends in this: ROLLED_BACK, CANCELLED or PENDING
    target_cleaned: bool = False  # RollingBack: the target's prepare is removed
    policy: ConvergencePolicy | None = None  # how the job is brought to an end (None: from the options)
    prediction: Prediction | None = None  # made at submission
    actions: tuple[ActionEntry, ...] = ()  # what the policy and operators did to the job, and why
    # waiting for an agent (or its libvirtd) that does not answer: which host, since when
    # (cleared when both hosts answer again and on every phase change; ``decide``)
    lost_host: str = ""
    lost_since: datetime | None = None
    # since when the target holds libvirt's unfinished incoming copy paused while the guest
    # executes on the source with no job (``decide``: discarded after ``stale_incoming_s``)
    stale_incoming_since: datetime | None = None
    # admitted ahead of its slot (``slots.py``): preflight and prepare run, the job waits for a
    # grant (``SlotGranted``); counts against ``Limits.prepare_ahead``, not the limits
    ahead: bool = False
    # Finishing: the target committed while the source did not answer the removal of its copied
    # disks; since when (``decide``: the source is waited for, then Succeeded either way)
    committed_at: datetime | None = None
    revision: int = 0  # the store's mod revision; not part of the JSON
    # the store revision that created the record (0: unknown); not part of the JSON. Submission
    # creates the VM's ``vm-active/`` claim in the same write, so it is the claim's revision too;
    # store metadata, left out of comparisons
    create_revision: int = field(default=0, compare=False)

    @property
    def log_context(self) -> MigrationContext:
        """What the log lines about this record name (``ferry.logcontext``)."""
        return MigrationContext(self.id, vm=self.vm, source=self.source_host, target=self.target_host)

    @property
    def copied_disks(self) -> tuple[str, ...]:
        """Source paths of the disks the target prepared copies of (the source's to remove once
        the target committed)."""
        return tuple(p.source for p in self.disks if p.copy and p.source)

    @property
    def migration_started(self) -> bool:
        """A migration job may have been started in this attempt (Migrating was entered since
        the record was last Pending). Until then the target holds only empty images."""
        for change in reversed(self.history):
            if change.phase is Phase.MIGRATING:
                return True
            if change.phase is Phase.PENDING:
                return False
        return False

    def lost_deadline(self, t: Timeouts) -> datetime | None:
        """When the wait for a lost agent ends (None: not waiting)."""
        if self.lost_since is None:
            return None
        return self.lost_since + timedelta(seconds=t.agent_lost_s)

    def next_deadline(self, t: Timeouts) -> datetime | None:
        """The deadline ``decide`` acts on at a Tick: while waiting for a lost agent, the wait's
        (the phase's own deadline acts once the agent answered, if it passed meanwhile)."""
        return self.lost_deadline(t) if self.lost_since is not None else self.phase_deadline


_FIELDS = frozenset(f.name for f in fields(MigrationRecord))


def evolve(r: MigrationRecord, **changes: Any) -> MigrationRecord:
    """``dataclasses.replace(r, **changes)`` at a seventh of its cost: the record has no
    ``__post_init__`` and nothing derived kept on it, so a copy of its fields with the changes is
    what ``replace`` builds. Every transition and progress report makes several of these.

    >>> r = new_migration(id="m1", vm="vm1", vm_uuid="u1", source_host="h1", target_host="h2",
    ...                   now=datetime(2026, 1, 1, tzinfo=UTC), timeouts=Timeouts())
    >>> evolve(r, revision=7) == replace(r, revision=7), r.revision
    (True, 0)
    >>> evolve(r, revison=7)
    Traceback (most recent call last):
    TypeError: MigrationRecord has no field 'revison'
    """
    if not changes.keys() <= _FIELDS:
        raise TypeError(f"MigrationRecord has no field {min(changes.keys() - _FIELDS)!r}")
    new = object.__new__(MigrationRecord)
    state = new.__dict__
    state.update(r.__dict__)
    state.update(changes)  # frozen: set past __setattr__, as dataclasses' own __init__ does
    return new


def new_migration(
    *,
    id: str,
    vm: str,
    vm_uuid: str,
    source_host: str,
    target_host: str,
    now: datetime,
    timeouts: Timeouts,
    options: MigrationOptions = MigrationOptions(),
    mapping: HostMapping | None = None,
    priority: int = 0,
    idempotency_key: str = "",
    memory_bytes: int = 0,
    disk_bytes: int = 0,
    policy: ConvergencePolicy | None = None,
    prediction: Prediction | None = None,
) -> MigrationRecord:
    """A freshly submitted record: Pending, with its queue deadline."""
    r = MigrationRecord(
        id=id,
        vm=vm,
        vm_uuid=vm_uuid,
        source_host=source_host,
        target_host=target_host,
        created_at=now,
        options=options,
        mapping=mapping or HostMapping(),
        priority=priority,
        idempotency_key=idempotency_key,
        memory_bytes=memory_bytes,
        disk_bytes=disk_bytes,
        policy=policy,
        prediction=prediction,
    )
    submitted = "submitted" + (f" (policy {policy.name})" if policy is not None and policy.name else "")
    return replace(
        r,
        updated_at=now,
        history=(PhaseChange(Phase.PENDING, now, submitted),),
        phase_deadline=_deadline(r, Phase.PENDING, now, timeouts),
    )


def _deadline(r: MigrationRecord, phase: Phase, now: datetime, t: Timeouts) -> datetime | None:
    """With a policy, Migrating lasts its completion timeout (as the agent applies it) plus the grace."""
    given = r.options.completion_timeout_s
    if r.policy is not None:
        given = math.ceil(completion_timeout_s(r.policy, r.memory_bytes, r.disk_bytes))
    s = phase_timeout_s(phase, t, r.memory_bytes, r.disk_bytes, given)
    return None if s is None else now + timedelta(seconds=s)


def _append(history: tuple[PhaseChange, ...], change: PhaseChange) -> tuple[PhaseChange, ...]:
    h = history + (change,)
    return h if len(h) <= HISTORY_MAX else h[:1] + h[len(h) - HISTORY_MAX + 1 :]


def with_phase(r: MigrationRecord, phase: Phase, now: datetime, reason: str, timeouts: Timeouts) -> MigrationRecord:
    """The record moved to ``phase``: history extended, the phase's deadline set, retries reset,
    a wait for a lost agent ended (the new phase's actions find out whether it still is).

    Raises Internal (ILLEGAL_TRANSITION) for a move the transition table does not allow.
    """
    check_transition(r.phase, phase)
    return evolve(
        r,
        phase=phase,
        history=_append(r.history, PhaseChange(phase, now, reason)),
        phase_deadline=_deadline(r, phase, now, timeouts),
        retries=0,
        lost_host="",
        lost_since=None,
        ahead=r.ahead and phase.holds_slot,  # queued again or final: no longer ahead of a slot
        committed_at=r.committed_at if phase is Phase.FINISHING else None,
        # kept while the migration's own phases act on it, gone once queued again or final
        stale_incoming_since=(
            r.stale_incoming_since if phase in (Phase.MIGRATING, Phase.FINISHING, Phase.ROLLING_BACK) else None
        ),
        updated_at=now,
    )


def with_retry(r: MigrationRecord, now: datetime, reason: str, timeouts: Timeouts) -> MigrationRecord:
    """Retry the current phase after its deadline: note it, count it, back off the next deadline."""
    check_transition(r.phase, r.phase)
    n = r.retries + 1
    return evolve(
        r,
        retries=n,
        history=_append(r.history, PhaseChange(r.phase, now, f"retry {n}: {reason}")),
        phase_deadline=now + timedelta(seconds=retry_delay_s(timeouts, n)),
        updated_at=now,
    )


def note(r: MigrationRecord, now: datetime, reason: str) -> MigrationRecord:
    """A history note in the current phase (a step failed, an agent was lost)."""
    return evolve(r, history=_append(r.history, PhaseChange(r.phase, now, reason)), updated_at=now)


def with_action(r: MigrationRecord, now: datetime, action: PolicyAction) -> MigrationRecord:
    """One more thing done to the job; past ACTIONS_MAX the oldest after the first half go."""
    entries = r.actions + (ActionEntry(now, action),)
    if len(entries) > ACTIONS_MAX:
        keep = ACTIONS_MAX // 2
        entries = entries[:keep] + entries[len(entries) - (ACTIONS_MAX - keep) :]
    return evolve(r, actions=entries, updated_at=now)


# --- JSON ----------------------------------------------------------------------------------------


def time_doc(dt: datetime | None, record: str) -> str | None:
    """A stored time as ISO text in UTC (None stays None); ``record`` names the kind of record
    for the error a naive datetime raises (Internal ``RECORD_INVALID``: a clock bug). The drain
    records (``drain.py``) store their times the same way.

    >>> time_doc(datetime(2026, 1, 1, 12, tzinfo=UTC), "migration record")
    '2026-01-01T12:00:00+00:00'
    """
    if dt is None:
        return None
    if dt.tzinfo is None:
        raise Internal(
            f"naive datetime {dt.isoformat()} in a {record}",
            reason="RECORD_INVALID",
            hint="a coordinator bug: the clock must give timezone-aware UTC times",
        )
    return dt.astimezone(UTC).isoformat()


def _ts(dt: datetime | None) -> str | None:
    return time_doc(dt, "migration record")


def time_from_doc(s: str | None) -> datetime | None:
    """The reverse of :func:`time_doc`; a time without a timezone is refused (ValueError)."""
    if s is None:
        return None
    dt = datetime.fromisoformat(s)
    if dt.tzinfo is None:
        raise ValueError(f"time {s!r} has no timezone")
    return dt.astimezone(UTC)


def _at(s: str) -> datetime:
    dt = time_from_doc(s)
    if dt is None:
        raise ValueError("a required time is missing")
    return dt


# Fields the stored dataclasses gained after schema 1 was first released. A coordinator of an earlier
# release refuses a key it does not know (RECORD_INVALID: it would skip the record, and lose track of
# its VM), so these are written only when not at their default: in a rolling upgrade, or after a
# downgrade, the older coordinator still reads every record that does not use them. A new field of
# a stored dataclass goes here (tests/unit/test_record_compat.py holds the first release's keys).
LATER_FIELDS: dict[type, frozenset[str]] = {
    MigrationOptions: frozenset({"persist_transient"}),
    DiskPlan: frozenset({"backing_fingerprint"}),
}


def plain(obj: Any) -> dict[str, Any]:
    """A flat dataclass of ints/strs/bools/enums/tuples as a JSON object (enums by name), without
    its ``LATER_FIELDS`` that are at their default.

    >>> plain(DiskPlan("vda", "/a.qcow2"))["backing_file"], "backing_fingerprint" in plain(DiskPlan("vda", "/a.qcow2"))
    ('', False)
    >>> plain(MigrationOptions(persist_transient=True))["persist_transient"]
    True
    """
    later = LATER_FIELDS.get(type(obj), frozenset())
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if f.name in later and v == f.default:
            continue
        out[f.name] = v.name if isinstance(v, enum.Enum) else list(v) if isinstance(v, tuple) else v
    return out


# The progress's JSON keys: the figures the agent reports (the wire's), flat, named as in
# ferry.v1.MigrationProgress; "phase" by name.
_PROGRESS_KEYS = (
    ("memory_total", "memory_total"),
    ("memory_processed", "memory_processed"),
    ("memory_remaining", "memory_remaining"),
    ("disk_total", "disk_total"),
    ("disk_processed", "disk_processed"),
    ("disk_remaining", "disk_remaining"),
    ("iteration", "iteration"),
    ("dirty_rate_pages", "dirty_rate_pages"),  # pages per second
    ("page_size", "page_size"),
    ("bandwidth_bps", "bandwidth_bps"),  # bytes per second
    ("elapsed_ms", "time_elapsed_ms"),
    ("auto_converge_throttle", "auto_converge_throttle"),
    ("postcopy_failed", "postcopy_failed"),
)


def _progress_doc(p: MigrationProgress) -> dict[str, Any]:
    doc: dict[str, Any] = {"phase": p.phase.name, "max_downtime_ms": p.max_downtime_ms, "eta_ms": p.eta_ms}
    doc.update((key, getattr(p.stats, name)) for key, name in _PROGRESS_KEYS)
    return doc


def _progress(d: dict[str, Any]) -> MigrationProgress:
    known = {key for key, _ in _PROGRESS_KEYS} | {"phase", "max_downtime_ms", "eta_ms"}
    if set(d) - known:
        raise ValueError(f"unknown progress fields {sorted(set(d) - known)}")
    stats = JobStats(**{name: d[key] for key, name in _PROGRESS_KEYS if key in d})
    phase = MigrationPhase[d["phase"]] if "phase" in d else MigrationPhase.STARTING
    return MigrationProgress(phase, stats, d.get("max_downtime_ms", 0), d.get("eta_ms", 0))


def problem_doc(p: Problem) -> dict[str, str]:
    return {"reason": p.reason, "message": p.message, "hint": p.hint}


def _disks(d: dict[str, Any]) -> tuple[DiskPlan, ...]:
    if "disks" in d:
        return tuple(DiskPlan(**p) for p in d["disks"])
    # a record of an older coordinator kept only the copied disks' source paths; such a record is
    # past its PrepareIncoming (a retry plans again), so its sources are all that is used
    return tuple(DiskPlan(target="", source=path) for path in d.get("copied_disks", ()))


def encode(r: MigrationRecord) -> bytes:
    """The record as versioned JSON ("schema": 1); ``revision`` is left out."""
    doc = {
        "schema": SCHEMA,
        "id": r.id,
        "vm": r.vm,
        "vm_uuid": r.vm_uuid,
        "source_host": r.source_host,
        "target_host": r.target_host,
        "created_at": _ts(r.created_at),
        "updated_at": _ts(r.updated_at),
        "options": plain(r.options),
        "mapping": {
            "bridges": dict(r.mapping.bridges),
            "networks": dict(r.mapping.networks),
            "path_prefixes": dict(r.mapping.path_prefixes),
        },
        "priority": r.priority,
        "idempotency_key": r.idempotency_key,
        "phase": r.phase.name,
        "history": [{"phase": c.phase.name, "at": _ts(c.at), "reason": c.reason} for c in r.history],
        "phase_deadline": _ts(r.phase_deadline),
        "memory_bytes": r.memory_bytes,
        "disk_bytes": r.disk_bytes,
        "prepare_id": r.prepare_id,
        "destination_xml": r.destination_xml,
        "disks": [plain(p) for p in r.disks],
        "progress": None if r.progress is None else _progress_doc(r.progress),
        "result": None if r.result is None else plain(r.result),
        "error": None if r.error is None else problem_doc(r.error),
        "cancel_requested": r.cancel_requested,
        "attempt": r.attempt,
        "retries": r.retries,
        "rollback_to": None if r.rollback_to is None else r.rollback_to.name,
        "target_cleaned": r.target_cleaned,
        "policy": None if r.policy is None else policy_doc(r.policy),
        "prediction": None if r.prediction is None else plain(r.prediction),
        "actions": [{"at": _ts(e.at), **{k: v for k, v in plain(e.action).items()}} for e in r.actions],
    }
    if r.lost_since is not None:  # only while waiting: a record without them reads on older coordinators
        doc.update(lost_host=r.lost_host, lost_since=_ts(r.lost_since))
    if r.stale_incoming_since is not None:  # likewise only while it lasts
        doc["stale_incoming_since"] = _ts(r.stale_incoming_since)
    if r.ahead:  # likewise only while ahead of its slot
        doc["ahead"] = True
    if r.committed_at is not None:  # likewise only while the source's disks wait for it
        doc["committed_at"] = _ts(r.committed_at)
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes, revision: int, create_revision: int = 0) -> MigrationRecord:
    """The record stored as ``data`` at store revision ``revision`` (created at ``create_revision``).

    Raises Internal: reason RECORD_SCHEMA for a schema this coordinator does not know (a newer
    coordinator wrote it), RECORD_INVALID for anything unreadable.
    """
    try:
        doc = json.loads(data)
        schema = doc.get("schema") if isinstance(doc, dict) else None
    except ValueError as e:
        raise Internal(
            f"migration record is not JSON: {e}",
            reason="RECORD_INVALID",
            hint="inspect the key in etcd; delete it if it is not a Ferry record",
        ) from e
    if schema != SCHEMA:
        raise Internal(
            f"migration record has schema {schema!r}; this coordinator reads {SCHEMA}",
            reason="RECORD_SCHEMA",
            hint="run the same Ferry version on every coordinator",
        )
    try:
        return _decode(doc, revision, create_revision)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise Internal(
            f"migration record {doc.get('id', '?')!r} is unreadable: {e!r}",
            reason="RECORD_INVALID",
            hint="inspect the key in etcd; a coordinator bug or a hand edit broke it",
        ) from e


def _policy(doc: dict[str, Any] | None) -> ConvergencePolicy | None:
    if doc is None:
        return None
    try:
        return policy_from_doc(doc, where="the record's policy")
    except FerryError as e:
        raise ValueError(e.message) from e


def _decode(d: dict[str, Any], revision: int, create_revision: int = 0) -> MigrationRecord:
    o = dict(d["options"])
    o["storage"] = StorageMode[o["storage"]]
    o["migrate_disks"] = tuple(o["migrate_disks"])
    m = d["mapping"]
    rec = MigrationRecord(
        id=d["id"],
        vm=d["vm"],
        vm_uuid=d["vm_uuid"],
        source_host=d["source_host"],
        target_host=d["target_host"],
        created_at=_at(d["created_at"]),
        updated_at=time_from_doc(d["updated_at"]),
        options=MigrationOptions(**o),
        mapping=HostMapping(
            bridges=dict(m["bridges"]), networks=dict(m["networks"]), path_prefixes=dict(m["path_prefixes"])
        ),
        priority=int(d["priority"]),
        idempotency_key=d["idempotency_key"],
        phase=Phase[d["phase"]],
        history=tuple(PhaseChange(Phase[c["phase"]], _at(c["at"]), c["reason"]) for c in d["history"]),
        phase_deadline=time_from_doc(d["phase_deadline"]),
        memory_bytes=int(d["memory_bytes"]),
        disk_bytes=int(d["disk_bytes"]),
        prepare_id=d["prepare_id"],
        destination_xml=d["destination_xml"],
        disks=_disks(d),  # absent in records of older coordinators
        progress=None if d["progress"] is None else _progress(d["progress"]),
        result=None if d["result"] is None else CompletedJob(**d["result"]),
        error=None if d["error"] is None else Problem(**d["error"]),
        cancel_requested=bool(d["cancel_requested"]),
        attempt=int(d["attempt"]),
        retries=int(d["retries"]),
        rollback_to=None if d["rollback_to"] is None else Phase[d["rollback_to"]],
        target_cleaned=bool(d["target_cleaned"]),
        # absent in records of older coordinators
        policy=_policy(d.get("policy")),
        prediction=None if d.get("prediction") is None else Prediction(**d["prediction"]),
        actions=tuple(
            ActionEntry(_at(a["at"]), PolicyAction(**{k: v for k, v in a.items() if k != "at"}))
            for a in d.get("actions", ())
        ),
        lost_host=str(d.get("lost_host", "")),
        lost_since=time_from_doc(d.get("lost_since")),
        stale_incoming_since=time_from_doc(d.get("stale_incoming_since")),
        ahead=bool(d.get("ahead", False)),
        committed_at=time_from_doc(d.get("committed_at")),
        revision=revision,
        create_revision=create_revision,
    )
    known = {f.name for f in fields(MigrationRecord)} - {"revision", "create_revision"} | {"schema", "copied_disks"}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    return rec


def postcopy_reached(r: MigrationRecord) -> bool:
    """The job switched to post-copy, or was asked to by a policy or an operator: seen in its
    progress, or in its actions (a switch reported there may come before, or instead of, a progress
    report saying so). From then on the target's copy holds part of the guest: never undone."""
    return (r.progress is not None and r.progress.phase is MigrationPhase.POSTCOPY) or any(
        a.action.action == "start-postcopy" for a in r.actions
    )


def too_late_to_cancel(r: MigrationRecord) -> str:
    """Why ``r`` can no longer be undone ("" when it can): its guest runs on the target already
    (post-copy started: the source keeps part of its memory), or it landed and is finishing. The
    engine keeps going then (``decide._cancel``); the API says so instead of accepting the cancel."""
    if r.phase is Phase.FINISHING:
        return f"{r.vm} landed on {r.target_host}; the migration is finishing"
    if r.phase is Phase.MIGRATING and postcopy_reached(r):
        return (
            f"post-copy started: {r.vm} runs on {r.target_host} with part of its memory still on {r.source_host}, "
            "and stopping it would lose the guest"
        )
    return ""
