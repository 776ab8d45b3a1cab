"""Convergence policy of a live migration, as data, and the one action it asks for per poll (pure).

A ``ConvergencePolicy`` says how a migration is brought to an end: its bandwidth cap, a ladder of
max-downtime steps (VDSM's schedule, Nova's ``downtime_steps``), auto-converge, when to switch to
post-copy, and how long it may take before it is aborted. It imports nothing but the model and
the errors, so the coordinator can choose named policies from its config and send them to the
agents; the agent's progress loop (``ferry.agent.migration``) applies it:

* ``policy_from_options``: today's policy, from a request's ``MigrationOptions``.
* ``completion_timeout_s``: the time a migration may take (Nova's 800 s per GiB, at least 120 s).
* ``stalled``: pre-copy makes no headway (what is left at each iteration stops shrinking).
* ``Watch`` / ``observe``: what the loop remembers between polls, one immutable value per poll.
* ``next_action``: the one action for this poll, most urgent first: abort on timeout, apply a
  max-downtime step (``due_downtime_step`` says which), switch to post-copy on stall, or nothing.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

from ferry.errors import InvalidArgument
from ferry.model import JobStats, MigrationOptions, MigrationPhase

GiB = 1 << 30


class PostcopyMode(enum.Enum):
    """When the agent switches a migration to post-copy by itself."""

    #: Never: pre-copy runs until it completes or times out (an operator may still switch it).
    NEVER = "never"
    #: When pre-copy stalls (``stalled`` over the policy's ``stall_iterations``).
    ON_STALL = "on-stall"


class TimeoutAction(enum.Enum):
    """What happens when a migration runs past its completion timeout (outside post-copy)."""

    #: Abort the job: the guest keeps running on the source.
    ABORT = "abort"


@dataclass(frozen=True)
class DowntimeStep:
    """One step of the max-downtime ladder: once the migration has run ``after_s`` seconds *and*
    reached pre-copy iteration ``after_iterations`` (0: no condition), allow ``max_downtime_ms``."""

    max_downtime_ms: int
    after_s: float = 0.0
    after_iterations: int = 0


@dataclass(frozen=True)
class ConvergencePolicy:
    """How a migration is brought to an end. The start parameters (bandwidth, auto-converge,
    post-copy allowed) go into the migrate call (``migrate_options``); the rest is applied per
    poll by ``next_action``.

    The downtime ladder is monotone: no step comes before the one above it, nor allows less
    downtime.

    >>> try:
    ...     ConvergencePolicy(downtime_steps=(DowntimeStep(300), DowntimeStep(100, after_s=30)))
    ... except InvalidArgument as e:
    ...     print(e.message)
    max-downtime step 2 (100 ms after 30 s, iteration 0) does not follow step 1 (300 ms after 0 s, iteration 0)
    """

    bandwidth_mibps: int = 0  # 0: QEMU's default
    downtime_steps: tuple[DowntimeStep, ...] = ()  # (): libvirt's default max downtime throughout
    auto_converge: bool = False
    postcopy: PostcopyMode = PostcopyMode.NEVER
    stall_iterations: int = 3  # ON_STALL: iterations without headway that make a stall
    stall_tolerance: float = 0.05  # ON_STALL: less than this fraction better is no headway
    completion_timeout_s: float = 0.0  # fixed; 0: per GiB of data, at least the minimum
    timeout_per_gib_s: float = 800.0
    min_timeout_s: float = 120.0
    timeout_action: TimeoutAction = TimeoutAction.ABORT

    def __post_init__(self) -> None:
        for n, step in enumerate(self.downtime_steps, start=1):
            if step.max_downtime_ms <= 0:
                raise InvalidArgument(
                    f"max-downtime step {n} allows {step.max_downtime_ms} ms",
                    reason="INVALID_CONVERGENCE_POLICY",
                    hint="give every step of the ladder a max downtime above 0 ms",
                )
        for n, (a, b) in enumerate(pairwise(self.downtime_steps), start=2):
            if (
                b.after_s < a.after_s
                or b.after_iterations < a.after_iterations
                or b.max_downtime_ms < a.max_downtime_ms
            ):
                raise InvalidArgument(
                    f"max-downtime step {n} ({_step_text(b)}) does not follow step {n - 1} ({_step_text(a)})",
                    reason="INVALID_CONVERGENCE_POLICY",
                    hint="order the ladder by time and iteration, with max downtime never decreasing",
                )


def _step_text(s: DowntimeStep) -> str:
    return f"{s.max_downtime_ms} ms after {s.after_s:.0f} s, iteration {s.after_iterations}"


def policy_from_options(
    options: MigrationOptions, *, base: ConvergencePolicy = ConvergencePolicy()
) -> ConvergencePolicy:
    """Today's policy: what a request's options say, over ``base`` (the agent's defaults for the
    timeout and the stall rule). The options' max downtime is a one-step ladder, applied as soon
    as the job runs; post-copy on stall needs post-copy allowed.

    >>> p = policy_from_options(MigrationOptions(max_downtime_ms=500, allow_postcopy=True, postcopy_on_stall=True))
    >>> p.downtime_steps, p.postcopy.name
    ((DowntimeStep(max_downtime_ms=500, after_s=0.0, after_iterations=0),), 'ON_STALL')
    >>> policy_from_options(MigrationOptions(postcopy_on_stall=True)).postcopy.name
    'NEVER'
    """
    return replace(
        base,
        bandwidth_mibps=options.bandwidth_mibps,
        downtime_steps=(DowntimeStep(options.max_downtime_ms),) if options.max_downtime_ms else (),
        auto_converge=options.auto_converge,
        postcopy=PostcopyMode.ON_STALL if options.allow_postcopy and options.postcopy_on_stall else PostcopyMode.NEVER,
        completion_timeout_s=float(options.completion_timeout_s),
    )


def migrate_options(policy: ConvergencePolicy, options: MigrationOptions) -> MigrationOptions:
    """The migrate call's options with the policy's start parameters: its bandwidth cap and
    auto-converge, and post-copy allowed when the policy may switch to it.

    >>> o = MigrationOptions(bandwidth_mibps=100, auto_converge=True)
    >>> migrate_options(policy_from_options(o), o) == o
    True
    >>> migrate_options(ConvergencePolicy(postcopy=PostcopyMode.ON_STALL), o).allow_postcopy
    True
    """
    return replace(
        options,
        bandwidth_mibps=policy.bandwidth_mibps,
        auto_converge=policy.auto_converge,
        allow_postcopy=options.allow_postcopy or policy.postcopy is PostcopyMode.ON_STALL,
    )


def completion_timeout_s(policy: ConvergencePolicy, memory_bytes: int, disk_bytes: int) -> float:
    """How long the migration may take before the policy's timeout action.

    The policy's fixed ``completion_timeout_s`` when given; otherwise ``timeout_per_gib_s`` for
    every GiB of RAM plus copied disk (as Nova's live_migration_completion_timeout), at least
    ``min_timeout_s``.

    >>> completion_timeout_s(ConvergencePolicy(), 256 << 20, 0)
    200.0
    >>> completion_timeout_s(ConvergencePolicy(), 64 << 20, 0)
    120.0
    >>> completion_timeout_s(ConvergencePolicy(completion_timeout_s=30), 8 << 30, 0)
    30.0
    """
    if policy.completion_timeout_s:
        return float(policy.completion_timeout_s)
    return float(max(policy.min_timeout_s, math.ceil(policy.timeout_per_gib_s * (memory_bytes + disk_bytes) / GiB)))


def stalled(peaks: Sequence[int], iterations: int, *, tolerance: float = 0.05) -> bool:
    """Pre-copy stalls: none of the last ``iterations`` iterations left less to send than the
    best earlier one (by more than ``tolerance``).

    ``peaks`` holds, per pre-copy iteration in order, the most memory seen remaining in it --
    about what was dirtied during the iteration before. A guest that converges shrinks it.

    >>> stalled([256, 160, 158, 161], 2)      # 158 is within 5 % of 160: no headway
    True
    >>> stalled([256, 160, 120, 118], 2)
    False
    >>> stalled([256, 160], 2)                # too few iterations to tell
    False
    """
    if iterations < 1 or len(peaks) <= iterations:
        return False
    best_before = min(peaks[:-iterations])
    return min(peaks[-iterations:]) > best_before * (1 - tolerance)


class Action(enum.Enum):
    """What the progress loop does after one poll."""

    CONTINUE = "continue"
    SET_MAX_DOWNTIME = "set-max-downtime"  # the step ``due_downtime_step`` names
    START_POSTCOPY = "start-postcopy"
    ABORT_TIMEOUT = "abort-timeout"


_ON_TIMEOUT = {TimeoutAction.ABORT: Action.ABORT_TIMEOUT}


@dataclass(frozen=True)
class Watch:
    """What the progress loop remembers between polls; each poll makes a new one."""

    started_at: float
    timeout_s: float  # the policy's completion timeout for this domain's data
    downtime_steps_applied: int = 0  # how far up the ladder the job's max downtime is
    postcopy_started: bool = False
    postcopy_refused: bool = False  # the switch to post-copy failed: not tried again
    peaks: tuple[int, ...] = ()  # most memory remaining seen per pre-copy iteration
    iteration: int = 0  # iteration of the last entry in ``peaks``


def observe(w: Watch, stats: JobStats) -> Watch:
    """Record one snapshot's memory remaining against its iteration.

    >>> w = Watch(0.0, 100.0)
    >>> for it, left in [(1, 256), (1, 100), (2, 80), (2, 10), (3, 90)]:
    ...     w = observe(w, JobStats(active=True, memory_processed=1, memory_remaining=left, iteration=it))
    >>> w.peaks
    (256, 80, 90)
    """
    if not stats.active or stats.iteration == 0 or stats.memory_processed == 0:
        return w
    if stats.iteration > w.iteration:
        return replace(w, peaks=(*w.peaks, stats.memory_remaining), iteration=stats.iteration)
    if stats.iteration == w.iteration and w.peaks and stats.memory_remaining > w.peaks[-1]:
        return replace(w, peaks=(*w.peaks[:-1], stats.memory_remaining))
    return w


def due_downtime_step(policy: ConvergencePolicy, w: Watch, now: float) -> int | None:
    """The ladder step to apply now (its index): the highest step whose time and iteration have
    come, when it is above the steps already applied; None when no new step is due. Steps passed
    over while the job did not run are not applied one by one: the highest due wins (as Nova's
    ``update_downtime``), so each step is applied at most once and the downtime only grows.

    >>> ladder = ConvergencePolicy(downtime_steps=(
    ...     DowntimeStep(50), DowntimeStep(100, after_s=30), DowntimeStep(300, after_s=60, after_iterations=5)))
    >>> due_downtime_step(ladder, Watch(0.0, 900.0), 1.0)
    0
    >>> due_downtime_step(ladder, Watch(0.0, 900.0, downtime_steps_applied=1), 10.0) is None
    True
    >>> due_downtime_step(ladder, Watch(0.0, 900.0, downtime_steps_applied=1, iteration=4), 75.0)
    1
    >>> due_downtime_step(ladder, Watch(0.0, 900.0, iteration=5), 75.0)     # 0 and 1 passed over
    2
    """
    elapsed = now - w.started_at
    due = None
    for i, step in enumerate(policy.downtime_steps):
        if elapsed >= step.after_s and w.iteration >= step.after_iterations:
            due = i
    return due if due is not None and due >= w.downtime_steps_applied else None


def max_downtime_ms(policy: ConvergencePolicy, w: Watch) -> int:
    """The max downtime to report: the last step applied, or the first one to come (0: none).

    >>> ladder = ConvergencePolicy(downtime_steps=(DowntimeStep(50), DowntimeStep(100, after_s=30)))
    >>> max_downtime_ms(ladder, Watch(0.0, 900.0)), max_downtime_ms(ladder, Watch(0.0, 900.0, downtime_steps_applied=2))
    (50, 100)
    """
    if not policy.downtime_steps:
        return 0
    return policy.downtime_steps[max(0, w.downtime_steps_applied - 1)].max_downtime_ms


def next_action(policy: ConvergencePolicy, w: Watch, stats: JobStats, phase: MigrationPhase, now: float) -> Action:
    """The one action for this poll, most urgent first. ``stats`` is this poll's snapshot
    (``JobStats()`` when there was none); ``phase`` the job's phase (the last reported one then).

    * past the completion timeout -> the policy's timeout action (ABORT_TIMEOUT), except in
      post-copy: the guest already runs on the target and an abort would lose it, so it is left
      to finish
    * the job is active and a max-downtime step is due -> SET_MAX_DOWNTIME
    * post-copy on stall, pre-copy stalled -> START_POSTCOPY

    >>> p = policy_from_options(MigrationOptions(max_downtime_ms=500))
    >>> running = JobStats(active=True, memory_processed=1, iteration=1)
    >>> next_action(p, Watch(0.0, 100.0), running, MigrationPhase.PRECOPY, 1.0).name
    'SET_MAX_DOWNTIME'
    >>> next_action(p, Watch(0.0, 100.0, downtime_steps_applied=1), running, MigrationPhase.PRECOPY, 1.0).name
    'CONTINUE'
    >>> next_action(p, Watch(0.0, 100.0), running, MigrationPhase.PRECOPY, 100.0).name
    'ABORT_TIMEOUT'
    """
    if now - w.started_at >= w.timeout_s and phase != MigrationPhase.POSTCOPY and not w.postcopy_started:
        return _ON_TIMEOUT[policy.timeout_action]
    if stats.active and due_downtime_step(policy, w, now) is not None:
        return Action.SET_MAX_DOWNTIME
    if (
        policy.postcopy is PostcopyMode.ON_STALL
        and not w.postcopy_started
        and not w.postcopy_refused
        and phase == MigrationPhase.PRECOPY
        and stalled(w.peaks, policy.stall_iterations, tolerance=policy.stall_tolerance)
    ):
        return Action.START_POSTCOPY
    return Action.CONTINUE
