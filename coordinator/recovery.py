"""Resuming a migration after a leader change or an agent restart (pure).

A new leader knows nothing of the streams and calls the old one had in flight. For each record
that is not final it observes the real state (the domain on both hosts, the source's job, the
target's prepares) and calls ``recover``, which resumes or rolls back from what it sees. The rules
are those of ``decide``: never clean the target while the guest may run there, never commit
unless the guest runs on the target only, never start a second job or a second prepare blindly.

Phase by phase:
- Pending: stays queued; prepares of this migration left on the target (an earlier attempt's
  answer that was lost) are removed.
- Preflight: it created nothing: run it again.
- Preparing: the answer is lost and a prepare cannot be adopted (its XML is not listed): remove
  whatever the target holds for this migration, then re-queue (or fail after max_attempts).
- Migrating: a job still active on the source -> reattach (WatchJob); ended -> by placement,
  as after MigrationEnded(ok=False); a guest on the source only with no job reported failed
  (the job ended unobserved, or never began: the old leader died just after asking for it) is
  re-queued after the target is cleaned, MIGRATION_INTERRUPTED once the attempts are used up.
- Finishing, RollingBack: continue from the placement (commit, or abort/clean/verify).

A host that cannot be asked (``unreachable``) is waited for as ``decide`` waits for a lost agent:
probed with back-off, acted on as soon as both answer, given up on ``agent_lost_s`` after it was
first lost (a wait the previous leader started keeps its start: ``lost_since`` is in the record).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ferry.model import PrepareRecord, Problem

from .decide import Ctx, agent_lost, answered, finish_rollback, on_placement, retry_goal, roll_back
from .events import CleanupTarget, Decision, Placement, RunPreflight
from .phases import Phase, Timeouts
from .record import MigrationRecord


def recover(
    record: MigrationRecord,
    placement: Placement | None,
    prepares_on_target: Sequence[PrepareRecord] | None,
    now: datetime,
    timeouts: Timeouts = Timeouts(),
    *,
    unreachable: str = "",
) -> Decision:
    """What a new leader does with ``record``, given the observed state.

    ``placement`` is None when an agent could not be asked (``unreachable`` names its host when
    known), ``prepares_on_target`` is None when the target's ListPrepares failed. Without the
    facts it needs, recovery waits: for a named host as for any lost agent (``decide.agent_lost``),
    else until the record's deadline; the shell calls ``recover`` again when the agents answer.
    """
    c = Ctx(record, now, timeouts)
    r = record
    ours = tuple(p.prepare_id for p in prepares_on_target or () if p.migration_id == r.id)
    match r.phase:
        case _ if r.phase.is_final:
            return c.keep(f"final ({r.phase.name}); nothing to recover")
        case Phase.PENDING:
            if ours:
                return c.keep(
                    f"queued; removing {len(ours)} stray prepare(s) of an earlier attempt", CleanupTarget(ours)
                )
            return c.keep("queued; nothing to recover")
        case Phase.PREFLIGHT:
            return c.keep("re-running preflight", RunPreflight(), *((CleanupTarget(ours),) if ours else ()))
        case Phase.PREPARING:
            return _preparing(c, ours, prepares_on_target is not None)
        case Phase.ROLLING_BACK if not r.migration_started:
            if prepares_on_target is not None and not ours and not r.prepare_id:
                return finish_rollback(c, "target holds nothing of this migration")
            return c.keep("resuming rollback; cleaning target", CleanupTarget(tuple(dict.fromkeys((*_own(r), *ours)))))
    # Migrating, Finishing, RollingBack after a job was started: by placement
    if placement is None:
        if unreachable:
            d = agent_lost(c, unreachable)
            return Decision(d.record, d.actions, f"cannot observe {r.vm}: {d.outcome}")
        return c.keep(f"cannot observe {r.vm} on both hosts; waiting for the agents")
    d = on_placement(answered(c), placement)
    return Decision(d.record, d.actions, f"recovered: {d.outcome}")


def _own(r: MigrationRecord) -> tuple[str, ...]:
    return (r.prepare_id,) if r.prepare_id else ()


def _preparing(c: Ctx, ours: tuple[str, ...], listed: bool) -> Decision:
    r, t = c.r, c.t
    goal = retry_goal(r, t)
    err = Problem(
        "PREPARE_INTERRUPTED",
        f"preparing {r.target_host} for {r.vm} was interrupted {r.attempt} times",
        f"check ferry-agent's log on {r.target_host}, then resubmit",
    )
    if r.ahead and r.prepare_id and (not listed or r.prepare_id in ours):  # prepared ahead of its slot
        extra = tuple(i for i in ours if i != r.prepare_id)
        return c.keep(
            f"prepared ahead of its slot ({r.prepare_id}); waiting for it",
            *((CleanupTarget(extra),) if extra else ()),
        )
    if listed and not ours and not r.prepare_id:
        if goal is Phase.PENDING:
            return Decision(
                c.to(Phase.PENDING, "re-queued: prepare interrupted, target holds nothing"),
                (),
                "prepare interrupted, target holds nothing; re-queued",
            )
        return Decision(
            c.to(Phase.FAILED, "prepare interrupted", error=err),
            (),
            f"prepare interrupted; failed after {r.attempt} attempts",
        )
    d = roll_back(c, "prepare interrupted", goal=goal, error=err if goal is Phase.ROLLED_BACK else None)
    return Decision(d.record, (CleanupTarget(tuple(dict.fromkeys((*_own(r), *ours)))),), d.outcome)
