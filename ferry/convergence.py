"""Convergence policy of a live migration, as data, and the one step it asks for per poll (pure).

A ``ConvergencePolicy`` says how a migration is brought to an end: its bandwidth cap, a ladder of
max-downtime steps (VDSM's schedule, Nova's ``downtime_steps``), auto-converge, when to switch to
post-copy and at what bandwidth, how long it may take (per GiB, and without progress) and what
happens then (abort, or force-complete), parallel connections and compression. Named policies
live in the coordinator's config (``[policies.NAME]``, the same keys as ``policy_doc``); the
coordinator sends the chosen one with the Migrate call; the agent's progress loop
(``ferry.agent.migration``) applies it:

* ``policy_from_options``: today's flags as a policy; ``with_options``: a named policy with the
  flags a request gave on top.
* ``completion_timeout_s``: the time a migration may take (Nova's 800 s per GiB, at least 120 s).
* ``stalled``: pre-copy makes no headway (what is left at each iteration stops shrinking).
* ``Watch`` / ``observe``: what the loop remembers between polls, one immutable value per poll.
* ``next_action``: the one ``Step`` for this poll, with its reason, most urgent first.
* ``live_converges`` / ``eta_s``: the predictor (``ferry.prediction``) fed with the running job.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from itertools import pairwise
from typing import Any

from ferry.errors import InvalidArgument
from ferry.model import JobStats, MigrationOptions, MigrationPhase
from ferry.prediction import LadderStep, PolicyView, Precopy, Workload, precopy

GiB = 1 << 30
MiB = 1 << 20
_INVALID = "INVALID_CONVERGENCE_POLICY"


class PostcopyMode(enum.Enum):
    """Whether post-copy is allowed, and when the agent switches to it by itself."""

    #: Not allowed: the job runs without libvirt's post-copy flag; it can never switch.
    NEVER = "never"
    #: Allowed, switched only by an operator (``ferry migrations postcopy``) or the timeout action.
    MANUAL = "manual"
    #: After iteration 1 when the prediction made before the start says pre-copy will not converge
    #: in time; later when the running job's dirty rate and bandwidth say so (from iteration 3:
    #: QEMU's dirty rate of iteration 2 still reads low), or when it stalls.
    ON_PREDICTION = "on-prediction"
    #: When pre-copy stalls (``stalled`` over the policy's ``stall_iterations``).
    ON_STALL = "on-stall"
    #: After ``postcopy_after_s`` seconds of migration.
    AFTER = "after"


class TimeoutAction(enum.Enum):
    """What happens when a migration runs past its completion or progress timeout."""

    #: Abort the job: the guest keeps running on the source.
    ABORT = "abort"
    #: Finish it now: switch to post-copy if the policy allows it, else pause the guest on the
    #: source so that pre-copy sends the rest (a long downtime, but it ends).
    FORCE_COMPLETE = "force-complete"


#: libvirt's compression methods (``VIR_MIGRATE_PARAM_COMPRESSION``); zlib and zstd are multifd's.
COMPRESSION_METHODS = ("mt", "xbzrle", "zlib", "zstd")
MULTIFD_COMPRESSION = ("zlib", "zstd")


@dataclass(frozen=True)
class DowntimeStep:
    """One step of the max-downtime ladder: once the migration has run ``after_s`` seconds *and*
    reached pre-copy iteration ``after_iterations`` (0: no condition), allow ``max_downtime_ms``."""

    max_downtime_ms: int
    after_s: float = 0.0
    after_iterations: int = 0


def _bad(message: str, hint: str) -> InvalidArgument:
    return InvalidArgument(message, reason=_INVALID, hint=hint)


@dataclass(frozen=True)
class ConvergencePolicy:
    """How a migration is brought to an end. The start parameters (bandwidth, auto-converge,
    post-copy allowed and its bandwidth, parallel connections, compression) go into the migrate
    call; the rest is applied per poll by ``next_action``.

    The downtime ladder is monotone: no step comes before the one above it, nor allows less
    downtime.

    >>> try:
    ...     ConvergencePolicy(downtime_steps=(DowntimeStep(300), DowntimeStep(100, after_s=30)))
    ... except InvalidArgument as e:
    ...     print(e.message)
    max-downtime step 2 (100 ms after 30 s, iteration 0) does not follow step 1 (300 ms after 0 s, iteration 0)
    """

    name: str = ""  # "": from the request's flags
    bandwidth_mibps: int = 0  # 0: QEMU's default
    downtime_steps: tuple[DowntimeStep, ...] = ()  # (): libvirt's default max downtime throughout
    auto_converge: bool = False
    auto_converge_initial: int = 0  # % the guest is slowed first (0: QEMU's 20)
    auto_converge_increment: int = 0  # % more per iteration (0: QEMU's 10)
    postcopy: PostcopyMode = PostcopyMode.NEVER
    postcopy_after_s: float = 0.0  # AFTER
    postcopy_bandwidth_mibps: int = 0  # 0: no cap in post-copy
    stall_iterations: int = 3  # ON_STALL: iterations without headway that make a stall
    stall_tolerance: float = 0.05  # ON_STALL: less than this fraction better is no headway
    completion_timeout_s: float = 0.0  # fixed; 0: per GiB of data, at least the minimum
    timeout_per_gib_s: float = 800.0
    min_timeout_s: float = 120.0
    progress_timeout_s: float = 0.0  # 0: none; else the time without a new low of the data remaining
    timeout_action: TimeoutAction = TimeoutAction.ABORT
    parallel_connections: int = 0  # multifd; 0: one connection
    compression: tuple[str, ...] = ()
    refuse_unfinishable: bool = False  # refuse a migration the prediction says this policy cannot finish

    def __post_init__(self) -> None:
        for n, step in enumerate(self.downtime_steps, start=1):
            if step.max_downtime_ms <= 0:
                raise _bad(
                    f"max-downtime step {n} allows {step.max_downtime_ms} ms",
                    "give every step of the ladder a max downtime above 0 ms",
                )
        for n, (a, b) in enumerate(pairwise(self.downtime_steps), start=2):
            if (
                b.after_s < a.after_s
                or b.after_iterations < a.after_iterations
                or b.max_downtime_ms < a.max_downtime_ms
            ):
                raise _bad(
                    f"max-downtime step {n} ({_step_text(b)}) does not follow step {n - 1} ({_step_text(a)})",
                    "order the ladder by time and iteration, with max downtime never decreasing",
                )
        if self.postcopy is PostcopyMode.AFTER and self.postcopy_after_s <= 0:
            raise _bad("post-copy 'after' needs postcopy_after_s above 0", "say after how many seconds to switch")
        for key in ("auto_converge_initial", "auto_converge_increment"):
            if not 0 <= getattr(self, key) <= 100:
                raise _bad(f"{key} is {getattr(self, key)} %", "give a percentage from 0 to 100")
        if self.parallel_connections < 0 or self.parallel_connections > 255:
            raise _bad(f"parallel_connections is {self.parallel_connections}", "give 0 (off) to 255")
        if self.parallel_connections and self.allows_postcopy:
            raise _bad(
                f"policy {self.name or '(flags)'} combines parallel connections (multifd) with post-copy",
                "QEMU (7.2 and later) cannot run post-copy over multifd: drop one of them",
            )
        for method in self.compression:
            if method not in COMPRESSION_METHODS:
                raise _bad(f"unknown compression method {method!r}", f"use {', '.join(COMPRESSION_METHODS)}")
            if method in MULTIFD_COMPRESSION and not self.parallel_connections:
                raise _bad(f"compression {method} needs parallel connections", "set parallel_connections as well")

    @property
    def allows_postcopy(self) -> bool:
        """The job starts with libvirt's post-copy flag (a switch is possible)."""
        return self.postcopy is not PostcopyMode.NEVER

    @property
    def label(self) -> str:
        return self.name or "(from the flags)"


def _step_text(s: DowntimeStep) -> str:
    return f"{s.max_downtime_ms} ms after {s.after_s:.0f} s, iteration {s.after_iterations}"


def downtime_ladder(max_ms: int, steps: int, every_s: float, *, first_ms: int = 0) -> tuple[DowntimeStep, ...]:
    """Nova's ladder: ``steps`` steps from ``first_ms`` (default ``max_ms / steps``) up to
    ``max_ms``, one every ``every_s`` seconds, the increase even.

    >>> [(s.max_downtime_ms, s.after_s) for s in downtime_ladder(500, 5, 10)]
    [(100, 0.0), (200, 10.0), (300, 20.0), (400, 30.0), (500, 40.0)]
    """
    if steps < 1:
        raise _bad(f"a ladder of {steps} steps", "give at least one step")
    first = first_ms or max(1, max_ms // steps)
    if steps == 1:
        return (DowntimeStep(max_ms),)
    inc = (max_ms - first) / (steps - 1)
    return tuple(DowntimeStep(round(first + inc * i), after_s=float(every_s * i)) for i in range(steps))


def policy_from_options(
    options: MigrationOptions, *, base: ConvergencePolicy = ConvergencePolicy()
) -> ConvergencePolicy:
    """Today's policy: what a request's flags say, over ``base`` (the defaults for the timeout
    and the stall rule). The flags' max downtime is a one-step ladder, applied as soon as the job
    runs; ``--postcopy`` allows post-copy (switched by hand), with ``--postcopy-on-stall`` on
    stall.

    >>> p = policy_from_options(MigrationOptions(max_downtime_ms=500, allow_postcopy=True, postcopy_on_stall=True))
    >>> p.downtime_steps, p.postcopy.name
    ((DowntimeStep(max_downtime_ms=500, after_s=0.0, after_iterations=0),), 'ON_STALL')
    >>> policy_from_options(MigrationOptions(postcopy_on_stall=True)).postcopy.name
    'NEVER'
    """
    return replace(
        base,
        name="",
        bandwidth_mibps=options.bandwidth_mibps,
        downtime_steps=(DowntimeStep(options.max_downtime_ms),) if options.max_downtime_ms else (),
        auto_converge=options.auto_converge,
        postcopy=_postcopy_of(options, PostcopyMode.NEVER),
        completion_timeout_s=float(options.completion_timeout_s),
    )


def _postcopy_of(options: MigrationOptions, default: PostcopyMode) -> PostcopyMode:
    if options.allow_postcopy and options.postcopy_on_stall:
        return PostcopyMode.ON_STALL
    if options.allow_postcopy and default is PostcopyMode.NEVER:
        return PostcopyMode.MANUAL
    return default


def with_options(policy: ConvergencePolicy, options: MigrationOptions) -> ConvergencePolicy:
    """A named policy with the flags a request gave on top: each flag given wins (a bandwidth,
    a max downtime as a one-step ladder, auto-converge, post-copy allowed or on stall, a
    completion timeout); flags left out keep the policy's values.

    >>> busy = ConvergencePolicy(name="busy", bandwidth_mibps=32, postcopy=PostcopyMode.ON_PREDICTION)
    >>> p = with_options(busy, MigrationOptions(bandwidth_mibps=64, completion_timeout_s=90))
    >>> p.name, p.bandwidth_mibps, p.postcopy.name, p.completion_timeout_s
    ('busy', 64, 'ON_PREDICTION', 90.0)
    """
    return replace(
        policy,
        bandwidth_mibps=options.bandwidth_mibps or policy.bandwidth_mibps,
        downtime_steps=(DowntimeStep(options.max_downtime_ms),) if options.max_downtime_ms else policy.downtime_steps,
        auto_converge=options.auto_converge or policy.auto_converge,
        postcopy=_postcopy_of(options, policy.postcopy),
        completion_timeout_s=float(options.completion_timeout_s) or policy.completion_timeout_s,
    )


def flags_given(options: MigrationOptions) -> bool:
    """Whether a request set any convergence flag (then ``with_options`` changes a named policy)."""
    return bool(
        options.bandwidth_mibps
        or options.max_downtime_ms
        or options.auto_converge
        or options.allow_postcopy
        or options.completion_timeout_s
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
        allow_postcopy=options.allow_postcopy or policy.allows_postcopy,
    )


def completion_timeout_s(policy: ConvergencePolicy, memory_bytes: int, disk_bytes: int) -> float:
    """How long the migration may take before the policy's timeout action.

    The policy's fixed ``completion_timeout_s`` when given; otherwise ``timeout_per_gib_s`` for
    every GiB of RAM plus copied disk (as Nova's live_migration_completion_timeout, KubeVirt's
    completionTimeoutPerGiB), at least ``min_timeout_s``.

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


def policy_view(policy: ConvergencePolicy, timeout_s: float) -> PolicyView:
    """What the predictor needs of ``policy`` (``timeout_s``: its completion timeout for the guest)."""
    auto = (policy.auto_converge_initial or 20, policy.auto_converge_increment or 10) if policy.auto_converge else None
    return PolicyView(
        name=policy.name,
        ladder=tuple(LadderStep(s.max_downtime_ms, s.after_s, s.after_iterations) for s in policy.downtime_steps),
        auto_converge=auto,
        postcopy=policy.postcopy.value,
        postcopy_after_s=policy.postcopy_after_s,
        postcopy_bandwidth_bps=policy.postcopy_bandwidth_mibps * MiB,
        stall_iterations=policy.stall_iterations,
        timeout_s=timeout_s,
        timeout_action=policy.timeout_action.value,
    )


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
    SET_MAX_DOWNTIME = "set-max-downtime"  # the step's max_downtime_ms
    START_POSTCOPY = "start-postcopy"
    PAUSE_GUEST = "pause-guest"  # force-complete without post-copy: pre-copy then sends the rest
    ABORT_TIMEOUT = "abort-timeout"


@dataclass(frozen=True)
class Step:
    """One poll's action with its reason in words (the record shows both)."""

    action: Action
    reason: str = ""
    max_downtime_ms: int = 0  # SET_MAX_DOWNTIME
    ladder_index: int = -1  # SET_MAX_DOWNTIME: the ladder step applied


CONTINUE = Step(Action.CONTINUE)


@dataclass(frozen=True)
class Watch:
    """What the progress loop remembers between polls; each poll makes a new one."""

    started_at: float
    timeout_s: float  # the policy's completion timeout for this domain's data
    downtime_steps_applied: int = 0  # how far up the ladder the job's max downtime is
    postcopy_started: bool = False
    postcopy_refused: bool = False  # the switch to post-copy failed: not tried again
    paused: bool = False  # force-complete paused the guest
    peaks: tuple[int, ...] = ()  # most memory remaining seen per pre-copy iteration
    iteration: int = 0  # iteration of the last entry in ``peaks``
    predicted_converges: bool | None = None  # the prediction made before the start
    best_remaining: int = -1  # the least data remaining seen (-1: none yet)
    progress_at: float | None = None  # when it was seen (None: the start)
    force_requested: str = ""  # who asked to force-complete ("" nobody)
    operator_downtime_ms: int = 0  # an operator's max downtime: ladder steps below it are skipped


def observe(w: Watch, stats: JobStats, now: float | None = None) -> Watch:
    """Record one snapshot: memory remaining against its iteration, and (with ``now``) a new low
    of the data remaining for the progress timeout.

    >>> w = Watch(0.0, 100.0)
    >>> for it, left in [(1, 256), (1, 100), (2, 80), (2, 10), (3, 90)]:
    ...     w = observe(w, JobStats(active=True, memory_processed=1, memory_remaining=left, iteration=it))
    >>> w.peaks
    (256, 80, 90)
    """
    if not stats.active or (stats.memory_processed == 0 and stats.disk_processed == 0):
        return w
    if now is not None:
        left = stats.memory_remaining + stats.disk_remaining
        if w.best_remaining < 0 or left < w.best_remaining:
            w = replace(w, best_remaining=left, progress_at=now)
    if stats.iteration == 0 or stats.memory_processed == 0:
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
    """The max downtime to report: an operator's, else the last step applied, else the first
    one to come (0: none).

    >>> ladder = ConvergencePolicy(downtime_steps=(DowntimeStep(50), DowntimeStep(100, after_s=30)))
    >>> max_downtime_ms(ladder, Watch(0.0, 900.0)), max_downtime_ms(ladder, Watch(0.0, 900.0, downtime_steps_applied=2))
    (50, 100)
    """
    applied = 0
    if policy.downtime_steps:
        applied = policy.downtime_steps[max(0, w.downtime_steps_applied - 1)].max_downtime_ms
    return max(applied, w.operator_downtime_ms)


def after_operator_downtime(policy: ConvergencePolicy, w: Watch, ms: int) -> Watch:
    """An operator set the max downtime to ``ms``: the ladder goes on above it only (its steps at
    or below ``ms`` count as applied), so the policy never lowers what the operator raised.

    >>> steps = (DowntimeStep(100), DowntimeStep(300, after_s=10), DowntimeStep(900, after_s=20))
    >>> after_operator_downtime(ConvergencePolicy(downtime_steps=steps), Watch(0.0, 100.0), 500).downtime_steps_applied
    2
    """
    above = next((i for i, s in enumerate(policy.downtime_steps) if s.max_downtime_ms > ms), len(policy.downtime_steps))
    return replace(w, operator_downtime_ms=ms, downtime_steps_applied=max(w.downtime_steps_applied, above))


def live_workload(w: Watch, stats: JobStats) -> Workload:
    """The guest as the running job shows it: its dirty rate (QEMU's, from iteration 2), its
    working set (the most any later iteration had to send), its memory."""
    dirty = stats.dirty_rate_pages * (stats.page_size or 4096)
    ws = max(w.peaks[1:], default=0)
    return Workload(stats.memory_total, dirty_bps=float(dirty), working_set_bytes=ws)


def _live_precopy(policy: ConvergencePolicy, w: Watch, stats: JobStats, bandwidth: float, elapsed: float) -> Precopy:
    """The pre-copy model run on from where the job is (its iteration, what it has left to send
    in it) at ``bandwidth``, under the policy's downtime ladder and the watch's timeout."""
    return precopy(
        live_workload(w, stats),
        bandwidth,
        ladder=policy_view(policy, w.timeout_s).ladder,
        limit_s=w.timeout_s,
        elapsed_s=elapsed,
        iteration=max(1, stats.iteration),
        to_send=stats.memory_remaining,
    )


def live_converges(policy: ConvergencePolicy, w: Watch, stats: JobStats, now: float) -> bool | None:
    """Will the running pre-copy converge before the timeout, at the rates it shows now? None
    before iteration 2 (QEMU reports the dirty rate from then) or without a bandwidth figure."""
    bandwidth = stats.bandwidth_bps or policy.bandwidth_mibps * MiB
    if w.iteration < 2 or stats.iteration < 2 or bandwidth <= 0 or stats.memory_total <= 0:
        return None
    return _live_precopy(policy, w, stats, bandwidth, now - w.started_at).converges


def eta_s(policy: ConvergencePolicy, w: Watch, stats: JobStats, phase: MigrationPhase, now: float) -> float | None:
    """Seconds until the job should end, from the running job's rates (None: cannot tell yet).

    Post-copy: what is left at the post-copy (else the measured) bandwidth. Disk mirror: the
    disk left, then memory once. Pre-copy: the model from here; when it does not converge, until
    the policy's switch (post-copy or the timeout action) and the rest after it.

    >>> st = JobStats(active=True, memory_total=256 * MiB, memory_remaining=64 * MiB, bandwidth_bps=32 * MiB)
    >>> eta_s(ConvergencePolicy(), Watch(0.0, 200.0, postcopy_started=True), st, MigrationPhase.POSTCOPY, 10.0)
    2.0
    """
    bandwidth = float(stats.bandwidth_bps or policy.bandwidth_mibps * MiB)
    if not stats.active or bandwidth <= 0:
        return None
    if phase is MigrationPhase.POSTCOPY or w.postcopy_started:
        pc = float(policy.postcopy_bandwidth_mibps * MiB or bandwidth)
        return stats.memory_remaining / pc
    if phase is MigrationPhase.DISK_MIRROR:
        return (stats.disk_remaining + stats.memory_total) / bandwidth
    if phase is not MigrationPhase.PRECOPY:
        return None
    elapsed = now - w.started_at
    if w.paused:
        return stats.memory_remaining / bandwidth
    got = _live_precopy(policy, w, stats, bandwidth, elapsed)
    if got.converges:
        return max(0.0, got.seconds - elapsed)
    residual = float(got.residual_bytes)
    pc = float(policy.postcopy_bandwidth_mibps * MiB or bandwidth)
    this_iteration = stats.memory_remaining / bandwidth
    if policy.postcopy in (PostcopyMode.ON_PREDICTION, PostcopyMode.ON_STALL):
        return this_iteration + residual / pc
    if policy.postcopy is PostcopyMode.AFTER:
        return max(0.0, policy.postcopy_after_s - elapsed) + residual / pc
    left = max(0.0, w.timeout_s - elapsed)
    if policy.timeout_action is TimeoutAction.FORCE_COMPLETE:
        return left + residual / (pc if policy.allows_postcopy else bandwidth)
    return left  # it will be aborted then


def _finish(policy: ConvergencePolicy, w: Watch, phase: MigrationPhase, why: str) -> Step:
    """Force-complete: post-copy if allowed (and pre-copy of memory runs), else pause the guest."""
    if policy.allows_postcopy and not w.postcopy_refused and phase is MigrationPhase.PRECOPY:
        return Step(Action.START_POSTCOPY, f"{why}: switching to post-copy")
    if not w.paused:
        how = "post-copy refused" if w.postcopy_refused else "post-copy not allowed"
        if policy.allows_postcopy and not w.postcopy_refused:
            how = "memory pre-copy not started"
        return Step(Action.PAUSE_GUEST, f"{why}: pausing the guest to finish ({how})")
    return CONTINUE


def next_action(policy: ConvergencePolicy, w: Watch, stats: JobStats, phase: MigrationPhase, now: float) -> Step:
    """The one step for this poll, most urgent first. ``stats`` is this poll's snapshot
    (``JobStats()`` when there was none); ``phase`` the job's phase (the last reported one then).

    * in post-copy nothing more: the guest runs on the target and an abort would lose it
    * force-complete asked by an operator -> post-copy if allowed, else PAUSE_GUEST
    * past the completion timeout, or no new low of the data remaining for the progress
      timeout -> the timeout action (ABORT_TIMEOUT, or force-complete as above)
    * the job is active and a max-downtime step is due -> SET_MAX_DOWNTIME
    * in pre-copy, the post-copy rule: on stall, after N s, or on prediction -> START_POSTCOPY

    >>> p = policy_from_options(MigrationOptions(max_downtime_ms=500))
    >>> running = JobStats(active=True, memory_processed=1, iteration=1)
    >>> step = next_action(p, Watch(0.0, 100.0), running, MigrationPhase.PRECOPY, 1.0)
    >>> step.action.name, step.reason, step.max_downtime_ms
    ('SET_MAX_DOWNTIME', 'max-downtime step 1 of 1: 500 ms', 500)
    >>> next_action(p, Watch(0.0, 100.0, downtime_steps_applied=1), running, MigrationPhase.PRECOPY, 1.0).action.name
    'CONTINUE'
    >>> next_action(p, Watch(0.0, 100.0), running, MigrationPhase.PRECOPY, 100.0).reason
    'not complete after its completion timeout of 100 s: aborting'
    """
    if phase is MigrationPhase.POSTCOPY or w.postcopy_started:
        return CONTINUE
    if w.force_requested:
        return _finish(policy, w, phase, f"force-complete requested by {w.force_requested}")
    elapsed = now - w.started_at
    late = ""
    if elapsed >= w.timeout_s:
        late = f"not complete after its completion timeout of {w.timeout_s:.0f} s"
    elif policy.progress_timeout_s and now - (w.progress_at if w.progress_at is not None else w.started_at) >= (
        policy.progress_timeout_s
    ):
        late = (
            f"no progress for {policy.progress_timeout_s:.0f} s (data remaining not below {w.best_remaining >> 20} MiB)"
        )
    if late:
        if policy.timeout_action is TimeoutAction.ABORT:
            return Step(Action.ABORT_TIMEOUT, f"{late}: aborting")
        return _finish(policy, w, phase, late)
    if stats.active:
        due = due_downtime_step(policy, w, now)
        if due is not None:
            ms = policy.downtime_steps[due].max_downtime_ms
            if ms > w.operator_downtime_ms:
                n = len(policy.downtime_steps)
                return Step(Action.SET_MAX_DOWNTIME, f"max-downtime step {due + 1} of {n}: {ms} ms", ms, due)
    if phase is not MigrationPhase.PRECOPY or w.postcopy_refused or w.paused:
        return CONTINUE
    stall = stalled(w.peaks, policy.stall_iterations, tolerance=policy.stall_tolerance)
    left = ", ".join(f"{p >> 20} MiB" for p in w.peaks[-(policy.stall_iterations + 1) :])
    match policy.postcopy:
        case PostcopyMode.ON_STALL if stall:
            return Step(Action.START_POSTCOPY, f"pre-copy stalls (left per iteration: {left}): switching to post-copy")
        case PostcopyMode.AFTER if elapsed >= policy.postcopy_after_s:
            return Step(Action.START_POSTCOPY, f"{policy.postcopy_after_s:.0f} s of pre-copy: switching to post-copy")
        case PostcopyMode.ON_PREDICTION if w.iteration >= 2:
            if w.predicted_converges is False:
                return Step(
                    Action.START_POSTCOPY,
                    "iteration 1 done: predicted not to converge: switching to post-copy",
                )
            live = live_converges(policy, w, stats, now) if w.iteration >= 3 else None
            if live is False:
                dirty = stats.dirty_rate_pages * (stats.page_size or 4096)
                bw = stats.bandwidth_bps or policy.bandwidth_mibps * MiB
                return Step(
                    Action.START_POSTCOPY,
                    f"iteration {w.iteration}: pre-copy will not converge (guest dirties {dirty >> 20} MiB/s, "
                    f"link {bw >> 20} MiB/s): switching to post-copy",
                )
            if stall:
                return Step(
                    Action.START_POSTCOPY, f"pre-copy stalls (left per iteration: {left}): switching to post-copy"
                )
    return CONTINUE


# ---------------------------------------------------------------- as a document (config, record)

_KEYS = {f.name for f in fields(ConvergencePolicy)} - {"downtime_steps"} | {"downtime"}


def policy_doc(p: ConvergencePolicy) -> dict[str, Any]:
    """The policy as plain data: the keys of a ``[policies.NAME]`` table (and of the record).

    >>> policy_doc(ConvergencePolicy(name="x", downtime_steps=(DowntimeStep(100),)))["downtime"]
    [{'ms': 100, 'after_s': 0.0, 'after_iterations': 0}]
    """
    doc: dict[str, Any] = {}
    for f in fields(ConvergencePolicy):
        value = getattr(p, f.name)
        if f.name == "downtime_steps":
            doc["downtime"] = [
                {"ms": s.max_downtime_ms, "after_s": s.after_s, "after_iterations": s.after_iterations} for s in value
            ]
        elif isinstance(value, enum.Enum):
            doc[f.name] = value.value
        elif isinstance(value, tuple):
            doc[f.name] = list(value)
        else:
            doc[f.name] = value
    return doc


def _num(doc: Mapping[str, Any], key: str, where: str, *, integer: bool = False) -> float:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _bad(f"{where}: {key} must be a number >= 0, not {value!r}", f"write e.g. {key} = 30")
    if integer and int(value) != value:
        raise _bad(f"{where}: {key} must be a whole number, not {value!r}", f"write e.g. {key} = 30")
    return value


def _enum(kind: type[enum.Enum], doc: Mapping[str, Any], key: str, where: str) -> Any:
    try:
        return kind(doc[key])
    except ValueError:
        choices = " | ".join(str(m.value) for m in kind)
        raise _bad(f"{where}: {key} = {doc[key]!r} is unknown", f"one of {choices}") from None


def policy_from_doc(doc: Mapping[str, Any], *, name: str = "", where: str = "policy") -> ConvergencePolicy:
    """A policy from plain data (``policy_doc``'s keys; all optional). Raises InvalidArgument
    (INVALID_CONVERGENCE_POLICY) naming the key.

    >>> p = policy_from_doc({"postcopy": "after", "postcopy_after_s": 20, "downtime": [{"ms": 300}]}, name="late")
    >>> p.name, p.postcopy.name, p.downtime_steps[0].max_downtime_ms
    ('late', 'AFTER', 300)
    """
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise _bad(f"{where}: unknown key(s) {', '.join(unknown)}", f"known keys: {', '.join(sorted(_KEYS))}")
    values: dict[str, Any] = {"name": str(doc.get("name", name) or name)}
    ints = (
        "bandwidth_mibps",
        "auto_converge_initial",
        "auto_converge_increment",
        "postcopy_bandwidth_mibps",
        "stall_iterations",
        "parallel_connections",
    )
    for key in ints:
        if key in doc:
            values[key] = int(_num(doc, key, where, integer=True))
    floats = ("postcopy_after_s", "stall_tolerance", "completion_timeout_s", "timeout_per_gib_s", "min_timeout_s")
    for key in (*floats, "progress_timeout_s"):
        if key in doc:
            values[key] = float(_num(doc, key, where))
    for key in ("auto_converge", "refuse_unfinishable"):
        if key in doc:
            if not isinstance(doc[key], bool):
                raise _bad(f"{where}: {key} must be true or false", f"write {key} = true")
            values[key] = doc[key]
    if "postcopy" in doc:
        values["postcopy"] = _enum(PostcopyMode, doc, "postcopy", where)
    if "timeout_action" in doc:
        values["timeout_action"] = _enum(TimeoutAction, doc, "timeout_action", where)
    if "compression" in doc:
        if not isinstance(doc["compression"], list) or not all(isinstance(m, str) for m in doc["compression"]):
            raise _bad(f"{where}: compression must be a list of names", 'write compression = ["xbzrle"]')
        values["compression"] = tuple(doc["compression"])
    if "downtime" in doc:
        steps = []
        if not isinstance(doc["downtime"], list):
            raise _bad(
                f"{where}: downtime must be a list of steps", "write downtime = [{ms = 100}, {ms = 300, after_s = 30}]"
            )
        for n, s in enumerate(doc["downtime"], start=1):
            if not isinstance(s, Mapping) or not set(s) <= {"ms", "after_s", "after_iterations"}:
                raise _bad(
                    f"{where}: downtime step {n} is not {{ms, after_s, after_iterations}}",
                    "write {ms = 300, after_s = 30}",
                )
            if "ms" not in s:
                raise _bad(f"{where}: downtime step {n} has no ms", "write {ms = 300, after_s = 30}")
            at = f"{where} downtime step {n}"
            steps.append(
                DowntimeStep(
                    int(_num(s, "ms", at, integer=True)),
                    float(_num(s, "after_s", at)) if "after_s" in s else 0.0,
                    int(_num(s, "after_iterations", at, integer=True)) if "after_iterations" in s else 0,
                )
            )
        values["downtime_steps"] = tuple(steps)
    return ConvergencePolicy(**values)
