"""The phases of a migration record, which moves between them, and how long each may last (pure).

A record moves forward Pending -> Preflight -> Preparing -> Migrating -> Finishing -> Succeeded.
Before the target is touched a failure ends in Failed; after it, in RollingBack, which ends in
RolledBack, Cancelled (the user asked) or back in Pending (a retry of an interrupted prepare).
Every non-final phase has a deadline (``Timeouts``); ``coordinator/decide.py`` says what happens
when it passes, so no record stays in a phase forever.

The values equal the ``ferry.v1.Phase`` protobuf numbers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ferry.errors import Internal

GiB = 1 << 30


class Phase(enum.Enum):
    #: Queued, waiting for a migration slot (``coordinator/slots.py``). Nothing touched.
    PENDING = 1
    #: Admitted (holds a slot): the coordinator's inventory checks and the target agent's
    #: PrepareIncoming dry run. Creates nothing anywhere.
    PREFLIGHT = 2
    #: The target agent creates the disk images and the destination XML (PrepareIncoming).
    #: From here on the target may hold files of this migration.
    PREPARING = 3
    #: The source agent runs libvirt's migration job (Migrate stream); progress is recorded.
    MIGRATING = 4
    #: The job ended: check the guest runs on the target and is gone from the source, then
    #: hand the prepared images over to the domain (CommitIncoming).
    FINISHING = 5
    #: Undoing: abort the job if it still runs, remove the target's prepare (CleanupIncoming)
    #: once the guest is known not to run there, check the guest runs on the source.
    ROLLING_BACK = 6
    #: Final: the guest runs on the target, the source copy is gone, the images are committed.
    SUCCEEDED = 7
    #: Final: the migration could not start (nothing touched), or the guest needs an operator;
    #: ``record.error`` says which and what to do.
    FAILED = 8
    #: Final: cancelled by a user; the guest runs on the source, the target is cleaned.
    CANCELLED = 9
    #: Final: the migration failed and was undone; the guest runs on the source, the target is
    #: cleaned; ``record.error`` says why it failed.
    ROLLED_BACK = 10

    @property
    def is_final(self) -> bool:
        """No further transition; no deadline; the record only changes by deletion."""
        return self in FINAL

    @property
    def touches_target(self) -> bool:
        """The target host may hold prepared images (or an incoming domain) of this migration."""
        return self in (Phase.PREPARING, Phase.MIGRATING, Phase.FINISHING, Phase.ROLLING_BACK)

    @property
    def holds_slot(self) -> bool:
        """Counts against the per-host and cluster migration limits (admitted, not final)."""
        return not self.is_final and self is not Phase.PENDING


FINAL = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.CANCELLED, Phase.ROLLED_BACK})

# The allowed transitions. A phase mapped to itself is a retry of that phase (a history note,
# a new deadline), see ``record.with_retry``.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.PENDING: frozenset({Phase.PREFLIGHT, Phase.CANCELLED, Phase.FAILED}),
    # back to PENDING: an agent was lost or the dry run timed out (nothing was touched)
    Phase.PREFLIGHT: frozenset({Phase.PREPARING, Phase.PENDING, Phase.FAILED, Phase.CANCELLED}),
    # PENDING/FAILED only when the target is seen to hold nothing of this migration (recovery)
    Phase.PREPARING: frozenset({Phase.MIGRATING, Phase.ROLLING_BACK, Phase.PENDING, Phase.FAILED}),
    # FAILED: the guest runs on both hosts or on neither: an operator decides
    Phase.MIGRATING: frozenset({Phase.MIGRATING, Phase.FINISHING, Phase.ROLLING_BACK, Phase.FAILED}),
    # ROLLING_BACK: the job "succeeded" but the guest is seen on the source only
    Phase.FINISHING: frozenset({Phase.FINISHING, Phase.SUCCEEDED, Phase.ROLLING_BACK, Phase.FAILED}),
    # FINISHING: the guest turned out to run on the target (the job completed despite the abort)
    Phase.ROLLING_BACK: frozenset(
        {Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.CANCELLED, Phase.PENDING, Phase.FINISHING, Phase.FAILED}
    ),
    Phase.SUCCEEDED: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.CANCELLED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
}


def check_transition(current: Phase, new: Phase) -> None:
    """Raise Internal (reason ILLEGAL_TRANSITION) unless ``current -> new`` is in the table."""
    if new not in TRANSITIONS[current]:
        raise Internal(
            f"illegal phase transition {current.name} -> {new.name}",
            reason="ILLEGAL_TRANSITION",
            hint="a coordinator bug: report it with the migration's history",
        )


@dataclass(frozen=True)
class Timeouts:
    """How long each phase may last, and how Finishing/RollingBack retry after a deadline.

    Migrating's limit derives from the data to move, like Nova's completion timeout:
    ``max(migrating_min_s, migrating_per_gib_s * (memory + disk) / GiB) + migrating_grace_s``,
    or the caller's ``completion_timeout_s`` plus the grace. The grace leaves the source agent's
    own completion policy room to act first; this deadline is the coordinator's backstop.
    """

    pending_s: float = 24 * 3600.0
    preflight_s: float = 120.0
    preparing_s: float = 600.0
    migrating_per_gib_s: float = 800.0
    migrating_min_s: float = 300.0
    migrating_grace_s: float = 120.0
    finishing_s: float = 120.0
    rolling_back_s: float = 180.0
    # after a deadline in Finishing/RollingBack (or a stuck post-copy): retry after
    # retry_base_s, doubling up to retry_max_s; after max_retries fail loudly (Failed + hint)
    retry_base_s: float = 30.0
    retry_max_s: float = 900.0
    max_retries: int = 8
    # admissions per record: an interrupted preflight/prepare is re-queued until this many
    max_attempts: int = 3
    # pause before observing again a placement that is still settling
    observe_delay_s: float = 2.0
    # the guest executes on the source with no job while the target still holds libvirt's paused
    # incoming copy (its libvirtd restarted mid-migration and kept it): libvirt removes such a copy
    # at once when it can, so after this long the target's cleanup destroys it (``decide``)
    stale_incoming_s: float = 30.0
    # an agent (or its libvirtd) that does not answer, in any phase: probed again after
    # agent_probe_s, the pause growing by half up to agent_probe_max_s (``probe_delay_s``);
    # acted on as soon as both hosts answer; after agent_lost_s without an answer the migration
    # rolls back (Migrating) or fails with AGENT_LOST (``decide``), not at the phase deadline
    agent_lost_s: float = 120.0
    agent_probe_s: float = 0.5
    agent_probe_max_s: float = 5.0
    # a record prepared ahead of its slot (``slots.py``) waits this long for it, then releases
    # the prepare and queues again (keep it below the prepare's TTL on the target)
    slot_wait_s: float = 300.0


def migrating_timeout_s(t: Timeouts, memory_bytes: int, disk_bytes: int, completion_timeout_s: int = 0) -> float:
    """Seconds Migrating may last.

    >>> migrating_timeout_s(Timeouts(), 4 * GiB, 0)         # 800 s/GiB * 4 GiB + 120 s grace
    3320.0
    >>> migrating_timeout_s(Timeouts(), 256 << 20, 0)        # 200 s -> the 300 s minimum + grace
    420.0
    >>> migrating_timeout_s(Timeouts(), 4 * GiB, 0, 60)      # the caller's own limit + grace
    180.0
    """
    if completion_timeout_s > 0:
        return completion_timeout_s + t.migrating_grace_s
    data_gib = (max(memory_bytes, 0) + max(disk_bytes, 0)) / GiB
    return max(t.migrating_min_s, t.migrating_per_gib_s * data_gib) + t.migrating_grace_s


def phase_timeout_s(
    phase: Phase, t: Timeouts, memory_bytes: int = 0, disk_bytes: int = 0, completion_timeout_s: int = 0
) -> float | None:
    """Seconds ``phase`` may last before its deadline action; None for final phases."""
    if phase is Phase.MIGRATING:
        return migrating_timeout_s(t, memory_bytes, disk_bytes, completion_timeout_s)
    return {
        Phase.PENDING: t.pending_s,
        Phase.PREFLIGHT: t.preflight_s,
        Phase.PREPARING: t.preparing_s,
        Phase.FINISHING: t.finishing_s,
        Phase.ROLLING_BACK: t.rolling_back_s,
    }.get(phase)


def retry_delay_s(t: Timeouts, retry: int) -> float:
    """Delay before retry number ``retry`` (1-based): exponential, capped.

    >>> [retry_delay_s(Timeouts(), n) for n in (1, 2, 3, 6, 7)]
    [30.0, 60.0, 120.0, 900.0, 900.0]
    """
    return min(t.retry_base_s * 2.0 ** (max(retry, 1) - 1), t.retry_max_s)


def probe_delay_s(t: Timeouts, lost_for_s: float) -> float:
    """Pause before probing again an agent lost ``lost_for_s`` seconds ago: half the time lost so
    far, at least ``agent_probe_s``, at most ``agent_probe_max_s`` (so probes come quickly after
    a short outage, and a long one costs a probe every few seconds).

    >>> [probe_delay_s(Timeouts(), s) for s in (0, 0.5, 1.5, 3, 6, 60)]
    [0.5, 0.5, 0.75, 1.5, 3.0, 5.0]
    """
    return min(max(t.agent_probe_s, lost_for_s / 2), t.agent_probe_max_s)
