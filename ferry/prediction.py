"""Will pre-copy converge? A model of QEMU's pre-copy, to say so before a migration starts (pure).

Pre-copy sends all of memory once (iteration 1), then, again and again, what the guest dirtied
while the previous iteration was being sent; it stops the guest and sends the rest (the switch-over,
the guest's downtime) once that rest fits in the max downtime at the link's rate. The model:

* iteration 1 sends the guest's non-zero memory (``resident_bytes``; zero pages cost almost
  nothing) at the bandwidth ``B``; copied disks go first (libvirt mirrors them, then starts memory);
* during an iteration of ``t`` seconds the guest dirties ``min(W, D * t)`` bytes: ``D`` its dirty
  rate, ``W`` the memory it keeps rewriting (its working set: a guest rewriting the same 64 MiB
  at 40 MiB/s never has more than 64 MiB dirty);
* the next iteration sends exactly that; once it fits in the max downtime in force (the policy's
  ladder, by time and iteration), the switch-over sends it and the job ends.

So pre-copy converges when ``D < B`` (each iteration is shorter than the one before, by ``D/B``),
or when even the whole working set fits in the max downtime. ``precopy`` runs this model;
``predict`` adds what a ``ConvergencePolicy`` does when it does not converge (post-copy, the
timeout action) and says it in words. ``working_set`` estimates ``W`` from two dirty-rate
measurements of different lengths (a short one sees the rate, a long one saturates at ``W``).

Worked example (the lab's busy guest): 256 MiB, 160 MiB of it non-zero, dirtying 40 MiB/s over a
64 MiB working set, capped at 32 MiB/s. Iteration 1 takes 160/32 = 5 s and leaves min(64, 200) =
64 MiB dirty; each later iteration sends 64 MiB in 2 s and finds 64 MiB dirty again: it never
converges. Post-copy after iteration 1 ends after 5 s + 64/32 s = 7 s.

>>> MiB = 1 << 20
>>> w = Workload(256 * MiB, dirty_bps=40 * MiB, working_set_bytes=64 * MiB, resident_bytes=160 * MiB)
>>> p = precopy(w, 32 * MiB, limit_s=200)
>>> p.converges, round(p.residual_bytes / MiB)
(False, 64)
>>> q = precopy(replace(w, dirty_bps=8 * MiB), 32 * MiB, limit_s=200)
>>> q.converges, q.iterations, round(q.seconds, 1)
(True, 4, 6.6)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ferry.model import GuestLoad

MiB = 1 << 20
DEFAULT_MAX_DOWNTIME_MS = 300  # QEMU's default max downtime
MAX_ITERATIONS = 500  # a guard: a model that runs longer says "does not converge"
STABLE = 0.98  # an iteration leaving at least this share of the one before makes no headway


@dataclass(frozen=True)
class Workload:
    """What a guest asks of a migration: the predictor's input.

    ``dirty_bps`` None: not measured (no prediction). ``working_set_bytes`` and
    ``resident_bytes`` 0: unknown, all of memory (the pessimistic reading)."""

    memory_bytes: int
    dirty_bps: float | None = None
    working_set_bytes: int = 0
    resident_bytes: int = 0
    disk_bytes: int = 0

    @property
    def working_set(self) -> int:
        return min(self.working_set_bytes or self.memory_bytes, self.memory_bytes)

    @property
    def first_pass(self) -> int:
        """Bytes iteration 1 sends."""
        return min(self.resident_bytes or self.memory_bytes, self.memory_bytes)


@dataclass(frozen=True)
class LadderStep:
    """A max-downtime step as the model sees it (``convergence.DowntimeStep``'s figures)."""

    max_downtime_ms: int
    after_s: float = 0.0
    after_iterations: int = 0


def downtime_in_force(ladder: Sequence[LadderStep], elapsed_s: float, iteration: int) -> tuple[int, int]:
    """(max downtime in ms, index of the step) at ``elapsed_s`` in ``iteration``: the highest step
    whose time and iteration have come; QEMU's default (index -1) before the first.

    >>> ladder = (LadderStep(100), LadderStep(500, after_s=30), LadderStep(900, after_iterations=10))
    >>> downtime_in_force(ladder, 10, 3), downtime_in_force(ladder, 40, 3), downtime_in_force(ladder, 40, 12)
    ((100, 0), (500, 1), (900, 2))
    >>> downtime_in_force((), 99, 99)
    (300, -1)
    """
    found = (DEFAULT_MAX_DOWNTIME_MS, -1)
    for i, step in enumerate(ladder):
        if elapsed_s >= step.after_s and iteration >= step.after_iterations:
            found = (step.max_downtime_ms, i)
    return found


def _next_step_time(
    ladder: Sequence[LadderStep],
    fits: float,
    bandwidth: float,
    elapsed_s: float,
    iteration: int,
    per_iteration_s: float,
) -> float | None:
    """When a ladder step that lets ``fits`` bytes through the switch-over comes (None: never),
    pre-copy repeating iterations of ``per_iteration_s`` from ``iteration`` at ``elapsed_s``.

    >>> steps = (LadderStep(300), LadderStep(3000, after_s=20, after_iterations=12))
    >>> _next_step_time(steps, 64 * MiB, 32 * MiB, 5.0, 3, 2.0)     # iteration 12 at 5 + 9 x 2 s = 23 s
    23.0
    """
    for step in ladder:
        if step.max_downtime_ms / 1000 * bandwidth >= fits:
            by_iteration = elapsed_s + max(0, step.after_iterations - iteration) * per_iteration_s
            return max(step.after_s, elapsed_s, by_iteration)
    return None


@dataclass(frozen=True)
class Precopy:
    """What the model says of pre-copy alone.

    ``seconds``: until the job ends (converged, the switch-over included) or until the model gave
    up (``limit_s``, or no headway and no ladder step to come). ``residual_bytes``: what was left to
    send at the end (the switch-over's, or the dirty set pre-copy cannot get below).
    ``first_iteration_s``: disk copy and iteration 1. ``step``: the ladder step in force when it
    converged (-1: QEMU's default)."""

    converges: bool
    iterations: int
    seconds: float
    residual_bytes: int
    first_iteration_s: float
    downtime_ms: float = 0.0
    step: int = -1


def precopy(
    w: Workload,
    bandwidth_bps: float,
    *,
    ladder: Sequence[LadderStep] = (),
    limit_s: float = 3600.0,
    throttle: tuple[int, int] | None = None,
    elapsed_s: float = 0.0,
    iteration: int = 1,
    to_send: int | None = None,
) -> Precopy:
    """Run the model (see the module docstring) until pre-copy converges or ``limit_s`` passes.

    ``throttle``: auto-converge's (initial %, increment %): from iteration 3 QEMU slows the
    guest's vCPUs by initial %, then by increment % more per iteration (to 99 %), which cuts
    the dirty rate by as much. ``elapsed_s``/``iteration``/``to_send``: start from a running
    job (iteration ``iteration`` with ``to_send`` bytes still to send in it) instead of the
    start; the disk copy is then over.

    >>> w = Workload(256 * MiB, dirty_bps=24 * MiB, working_set_bytes=64 * MiB, resident_bytes=96 * MiB)
    >>> p = precopy(w, 32 * MiB)
    >>> p.converges, p.iterations, round(p.seconds, 1), round(p.downtime_ms)
    (True, 9, 10.2, 267)
    >>> precopy(w, 16 * MiB).converges                       # dirties faster than the link carries
    False
    >>> precopy(w, 16 * MiB, ladder=(LadderStep(300), LadderStep(5000, after_s=60))).converges
    True
    """
    bandwidth = float(bandwidth_bps)
    if bandwidth <= 0:
        raise ValueError("the model needs a bandwidth above 0")
    dirty = float(w.dirty_bps or 0.0)
    cap = float(w.working_set)
    t = elapsed_s
    first_s = 0.0
    if to_send is None:
        t += w.disk_bytes / bandwidth
        send = float(w.first_pass)
    else:
        send = float(to_send)
    it = iteration
    while True:
        spent = send / bandwidth
        t += spent
        if it == iteration and to_send is None:
            first_s = t
        rate = dirty
        if throttle is not None and it >= 3:
            initial, increment = throttle
            rate *= 1 - min(99, initial + increment * (it - 3)) / 100
        dirtied = min(cap, rate * spent)
        ms, step = downtime_in_force(ladder, t, it + 1)
        if dirtied <= bandwidth * ms / 1000:
            return Precopy(
                True, it + 1, t + dirtied / bandwidth, int(dirtied), first_s, dirtied / bandwidth * 1000, step
            )
        if t >= limit_s or it - iteration >= MAX_ITERATIONS:
            return Precopy(False, it, min(t, max(limit_s, elapsed_s)), int(dirtied), first_s)
        if dirtied >= send * STABLE and (throttle is None or it >= 3 + 10):
            # no headway: the same dirty set each iteration until a ladder step lets it through
            at = _next_step_time(ladder, dirtied, bandwidth, t, it + 1, spent)
            if at is None or at >= limit_s:
                return Precopy(False, it, max(t, limit_s), int(dirtied), first_s)
            iterations = it + math.ceil((at - t) / max(spent, 1e-3))
            ms, step = downtime_in_force(ladder, at, iterations + 1)
            return Precopy(
                True, iterations + 1, at + dirtied / bandwidth, int(dirtied), first_s, dirtied / bandwidth * 1000, step
            )
        send = dirtied
        it += 1


def working_set(short_bps: float, short_s: float, long_bps: float, long_s: float, memory_bytes: int) -> int:
    """The working set from two dirty-rate measurements (0: cannot tell, take all of memory).

    A guest rewriting ``W`` bytes at ``D`` bytes/s shows ``D`` over a period ``T`` as long as
    ``D*T < W`` and ``W/T`` beyond: a longer measurement that reads clearly less than a short one
    (below 80 %) saturated, and ``W`` is about what it saw dirtied in all.

    >>> working_set(40 * MiB, 1, 21 * MiB, 3, 256 * MiB) // MiB          # 63 MiB seen in 3 s
    63
    >>> working_set(24 * MiB, 1, 23 * MiB, 3, 256 * MiB)                   # no saturation: unknown
    0
    """
    if short_bps <= 0 or long_s <= short_s or long_bps >= 0.8 * short_bps:
        return 0
    return min(memory_bytes, int(long_bps * long_s))


def workload_of(load: GuestLoad, disk_bytes: int = 0) -> Workload:
    """The predictor's input from what the source measured: the shortest period's rate is the
    dirty rate; a longer one that saturated gives the working set (``working_set``).

    >>> load = GuestLoad(256 * MiB, samples=((1.0, 40.0 * MiB), (3.0, 21.0 * MiB)), resident_bytes=160 * MiB)
    >>> w = workload_of(load, disk_bytes=64 * MiB)
    >>> w.dirty_bps / MiB, w.working_set_bytes // MiB, w.resident_bytes // MiB, w.disk_bytes // MiB
    (40.0, 63, 160, 64)
    >>> workload_of(GuestLoad(256 * MiB, error="not supported")).dirty_bps is None
    True
    """
    samples = sorted(load.samples)
    if not samples:
        return Workload(load.memory_bytes, None, 0, load.resident_bytes, disk_bytes)
    (short_s, short_bps), (long_s, long_bps) = samples[0], samples[-1]
    ws = working_set(short_bps, short_s, long_bps, long_s, load.memory_bytes) if len(samples) > 1 else 0
    return Workload(load.memory_bytes, short_bps, ws, load.resident_bytes, disk_bytes)


def resident_estimate(rss_bytes: int, memory_bytes: int, overhead_bytes: int) -> int:
    """Guest memory that is not zero, from the QEMU process's resident memory: pages the guest
    never touched are not resident, and iteration 1 sends zero pages for almost nothing. The
    process's own share (``overhead_bytes``: code, TCG's translation cache) is taken off. 0: unknown.

    >>> resident_estimate(250 * MiB, 256 * MiB, 90 * MiB) // MiB, resident_estimate(0, 256 * MiB, 90 * MiB)
    (160, 0)
    """
    if rss_bytes <= 0 or memory_bytes <= 0:
        return 0
    return max(min(memory_bytes, rss_bytes - overhead_bytes), memory_bytes // 16)


# ---------------------------------------------------------------- with a policy


@dataclass(frozen=True)
class PolicyView:
    """The parts of a convergence policy the predictor needs (``convergence.policy_view``)."""

    name: str = ""
    ladder: tuple[LadderStep, ...] = ()
    auto_converge: tuple[int, int] | None = None  # (initial %, increment %)
    postcopy: str = "never"  # never | manual | on-prediction | on-stall | after
    postcopy_after_s: float = 0.0
    postcopy_bandwidth_bps: float = 0.0  # 0: the pre-copy bandwidth
    stall_iterations: int = 3
    timeout_s: float = 3600.0
    timeout_action: str = "abort"  # abort | force-complete

    @property
    def allows_postcopy(self) -> bool:
        return self.postcopy != "never"


class Need:
    """What the policy will need to bring the migration to an end (``Prediction.need``)."""

    PRECOPY = "pre-copy"  # pre-copy converges with the first max downtime
    DOWNTIME_STEP = "max-downtime step"  # it converges once the ladder raised the max downtime
    POSTCOPY = "post-copy"  # the policy switches to post-copy
    FORCE_COMPLETE = "force-complete"  # the timeout action finishes it (post-copy or pause)
    ABORT = "abort"  # it does not finish: the timeout action aborts it
    UNKNOWN = "unknown"  # no dirty rate: no prediction


@dataclass(frozen=True)
class Prediction:
    """What a migration will do, before it starts: the verdict on pre-copy alone, what the
    policy will need, the expected job time, and the inputs, so that it can be checked against
    the result afterwards."""

    converges: bool | None  # pre-copy alone, within the timeout; None: unknown
    finishes: bool | None  # with the policy (post-copy, force-complete); None: unknown
    need: str
    iterations: int = 0
    seconds: float = 0.0  # expected libvirt job time; 0: unknown
    downtime_ms: float = 0.0  # expected switch-over pause (pre-copy); 0 for post-copy or unknown
    switch_after_s: float = 0.0  # post-copy or the timeout action comes after this long (0: none)
    dirty_bps: float = 0.0
    working_set_bytes: int = 0
    resident_bytes: int = 0
    memory_bytes: int = 0
    disk_bytes: int = 0
    bandwidth_bps: float = 0.0
    policy: str = ""
    words: str = ""


def _mib(bps: float) -> str:
    return f"{bps / MiB:.0f} MiB/s"


def _secs(s: float) -> str:
    return f"~{s:.0f} s" if s >= 10 else f"~{s:.1f} s"


def predict(w: Workload, bandwidth_bps: float, policy: PolicyView) -> Prediction:
    """The prediction for ``w`` at ``bandwidth_bps`` under ``policy`` (see ``Need``).

    >>> busy = Workload(256 * MiB, dirty_bps=40 * MiB, working_set_bytes=64 * MiB, resident_bytes=160 * MiB)
    >>> p = predict(busy, 32 * MiB, PolicyView("busy", postcopy="on-prediction", timeout_s=200))
    >>> p.converges, p.need
    (False, 'post-copy')
    >>> for part in p.words.split("; "): print(part)
    will not converge at 32 MiB/s (guest dirties ~40 MiB/s over ~64 MiB)
    policy busy switches to post-copy after iteration 1
    expected ~7.0 s
    >>> for part in predict(busy, 32 * MiB, PolicyView("strict", timeout_s=200)).words.split("; "): print(part)
    will not converge at 32 MiB/s (guest dirties ~40 MiB/s over ~64 MiB)
    policy strict allows no post-copy and aborts after 200 s
    """
    name = policy.name or "(from the flags)"
    base = Prediction(
        None,
        None,
        Need.UNKNOWN,
        dirty_bps=w.dirty_bps or 0.0,
        working_set_bytes=w.working_set_bytes,
        resident_bytes=w.resident_bytes,
        memory_bytes=w.memory_bytes,
        disk_bytes=w.disk_bytes,
        bandwidth_bps=bandwidth_bps,
        policy=policy.name,
    )
    if w.dirty_bps is None or bandwidth_bps <= 0:
        return replace(base, words="dirty rate not measured: no prediction")
    rate = f"{_mib(bandwidth_bps)} (guest dirties ~{_mib(w.dirty_bps)}" + (
        f" over ~{w.working_set_bytes / MiB:.0f} MiB)" if w.working_set_bytes else ")"
    )
    pre = precopy(w, bandwidth_bps, ladder=policy.ladder, limit_s=policy.timeout_s)
    auto = (
        precopy(w, bandwidth_bps, ladder=policy.ladder, limit_s=policy.timeout_s, throttle=policy.auto_converge)
        if policy.auto_converge is not None and not pre.converges
        else None
    )
    if pre.converges or (auto is not None and auto.converges):
        got = pre if pre.converges else auto
        assert got is not None
        if got is auto:
            need, how = Need.PRECOPY, "with auto-converge "
        elif got.step > 0:
            need = Need.DOWNTIME_STEP
            how = f"once max downtime reaches {policy.ladder[got.step].max_downtime_ms} ms (step {got.step + 1}) "
        else:
            need, how = Need.PRECOPY, ""
        words = f"converges {how}at {rate}: {got.iterations} iterations, expected {_secs(got.seconds)}"
        return replace(
            base,
            converges=True,
            finishes=True,
            need=need,
            iterations=got.iterations,
            seconds=got.seconds,
            downtime_ms=got.downtime_ms,
            words=words,
        )
    not_converging = f"will not converge at {rate}"
    pc_bw = policy.postcopy_bandwidth_bps or bandwidth_bps
    residual = float(pre.residual_bytes)
    switch: float | None = None
    when = ""
    if policy.postcopy == "on-prediction":
        switch, when = pre.first_iteration_s, "after iteration 1"
    elif policy.postcopy == "on-stall":
        per = residual / bandwidth_bps
        switch = pre.first_iteration_s + (policy.stall_iterations + 1) * per
        when = f"when pre-copy stalls (~{policy.stall_iterations + 1} iterations later)"
    elif policy.postcopy == "after":
        switch, when = policy.postcopy_after_s, f"after {policy.postcopy_after_s:.0f} s"
        if switch < pre.first_iteration_s:  # in iteration 1: what is not sent yet goes in post-copy
            residual = w.first_pass - max(0.0, switch - w.disk_bytes / bandwidth_bps) * bandwidth_bps
            residual += min(w.working_set, (w.dirty_bps or 0.0) * switch)
    if switch is not None and switch < policy.timeout_s:
        seconds = switch + residual / pc_bw
        return replace(
            base,
            converges=False,
            finishes=True,
            need=Need.POSTCOPY,
            iterations=pre.iterations,
            seconds=seconds,
            switch_after_s=switch,
            words=f"{not_converging}; policy {name} switches to post-copy {when}; expected {_secs(seconds)}",
        )
    timeout = policy.timeout_s
    if policy.timeout_action == "force-complete":
        if policy.allows_postcopy:
            seconds, how = timeout + residual / pc_bw, "switches to post-copy"
        else:
            seconds, how = timeout + residual / bandwidth_bps, "pauses the guest to finish"
        return replace(
            base,
            converges=False,
            finishes=True,
            need=Need.FORCE_COMPLETE,
            iterations=pre.iterations,
            seconds=seconds,
            downtime_ms=0.0 if policy.allows_postcopy else residual / bandwidth_bps * 1000,
            switch_after_s=timeout,
            words=f"{not_converging}; policy {name} {how} at its timeout ({timeout:.0f} s); expected {_secs(seconds)}",
        )
    allowed = "allows post-copy only by hand" if policy.allows_postcopy else "allows no post-copy"
    return replace(
        base,
        converges=False,
        finishes=False,
        need=Need.ABORT,
        iterations=pre.iterations,
        seconds=timeout,
        switch_after_s=timeout,
        words=f"{not_converging}; policy {name} {allowed} and aborts after {timeout:.0f} s",
    )
