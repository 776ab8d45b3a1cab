"""Convergence policy: today's policy from the options, timeout, stall, the max-downtime ladder,
the action per poll."""

import doctest
from dataclasses import replace

import pytest

from ferry import convergence as c
from ferry.convergence import (
    Action,
    ConvergencePolicy,
    DowntimeStep,
    PostcopyMode,
    Watch,
    completion_timeout_s,
    due_downtime_step,
    max_downtime_ms,
    migrate_options,
    next_action,
    observe,
    policy_from_options,
    stalled,
)
from ferry.errors import InvalidArgument
from ferry.model import JobStats, MigrationOptions, MigrationPhase

MiB = 1 << 20
P = MigrationPhase


def test_docstring_examples():
    assert doctest.testmod(c).failed == 0


def precopy(processed, remaining, iteration, **kw):
    return JobStats(
        active=True,
        memory_total=256 * MiB,
        memory_processed=processed * MiB,
        memory_remaining=remaining * MiB,
        iteration=iteration,
        **kw,
    )


# ---------------------------------------------------------------- today's policy, from the options


@pytest.mark.parametrize(
    ("options", "steps", "postcopy"),
    [
        (MigrationOptions(), (), PostcopyMode.NEVER),
        (MigrationOptions(max_downtime_ms=500), (DowntimeStep(500),), PostcopyMode.NEVER),  # a one-step ladder
        (MigrationOptions(allow_postcopy=True), (), PostcopyMode.MANUAL),  # allowed, switched by hand only
        (MigrationOptions(postcopy_on_stall=True), (), PostcopyMode.NEVER),  # not allowed: never
        (MigrationOptions(allow_postcopy=True, postcopy_on_stall=True), (), PostcopyMode.ON_STALL),
    ],
)
def test_policy_from_options(options, steps, postcopy):
    p = policy_from_options(options)
    assert (p.downtime_steps, p.postcopy) == (steps, postcopy)


def test_policy_from_options_keeps_the_start_parameters_and_the_agent_defaults():
    base = ConvergencePolicy(stall_iterations=5, timeout_per_gib_s=400.0, min_timeout_s=60.0)
    o = MigrationOptions(bandwidth_mibps=100, auto_converge=True, completion_timeout_s=45)
    p = policy_from_options(o, base=base)
    assert (p.bandwidth_mibps, p.auto_converge, p.completion_timeout_s) == (100, True, 45.0)
    assert (p.stall_iterations, p.timeout_per_gib_s, p.min_timeout_s) == (5, 400.0, 60.0)


@pytest.mark.parametrize(
    "options",
    [
        MigrationOptions(),
        MigrationOptions(bandwidth_mibps=100, auto_converge=True, max_downtime_ms=500),
        MigrationOptions(allow_postcopy=True),
        MigrationOptions(postcopy_on_stall=True),
        MigrationOptions(allow_postcopy=True, postcopy_on_stall=True),
    ],
)
def test_todays_policy_starts_the_job_with_the_options_as_given(options):
    assert migrate_options(policy_from_options(options), options) == options


@pytest.mark.parametrize(
    ("given", "memory", "disk", "expected"),
    [
        (0, 256 * MiB, 0, 200.0),  # 800 s/GiB
        (0, 64 * MiB, 0, 120.0),  # the minimum
        (0, 1 << 30, 1 << 30, 1600.0),  # RAM + copied disk
        (45, 8 << 30, 0, 45.0),  # the caller's wins
    ],
)
def test_completion_timeout(given, memory, disk, expected):
    policy = policy_from_options(MigrationOptions(completion_timeout_s=given))
    assert completion_timeout_s(policy, memory, disk) == expected


@pytest.mark.parametrize(
    ("peaks", "n", "expected"),
    [
        ([256, 160, 158, 161], 2, True),
        ([256, 160, 120, 118], 2, False),
        ([256, 160, 170, 165, 161], 3, True),
        ([256, 160, 170, 165, 150], 3, False),
        ([256, 160], 2, False),  # not enough iterations to tell
        ([256, 256, 256], 0, False),  # stall detection off
    ],
)
def test_stalled(peaks, n, expected):
    assert stalled(peaks, n) is expected


def test_observe_keeps_the_peak_per_iteration():
    w = Watch(0.0, 100.0)
    for it, left in [(0, 256), (1, 256), (1, 10), (2, 80), (2, 90), (2, 5), (4, 70)]:
        w = observe(w, precopy(1, left, it))
    assert w.peaks == (256 * MiB, 90 * MiB, 70 * MiB)
    assert observe(w, JobStats()) == w  # no job: nothing recorded


# ---------------------------------------------------------------- the action per poll


def watch(*, max_downtime_ms=0, postcopy_on_stall=False, stall_iterations=3, downtime_applied=False, **kw):
    """A policy from the options named (and the stall rule), and a watch 100 s long."""
    options = MigrationOptions(
        max_downtime_ms=max_downtime_ms, allow_postcopy=postcopy_on_stall, postcopy_on_stall=postcopy_on_stall
    )
    policy = policy_from_options(options, base=ConvergencePolicy(stall_iterations=stall_iterations))
    base = dict(started_at=0.0, timeout_s=100.0, downtime_steps_applied=int(downtime_applied))
    return policy, Watch(**{**base, **kw})


RUNNING = precopy(100, 100, 2)


@pytest.mark.parametrize(
    ("w", "phase", "now", "action"),
    [
        (watch(), P.PRECOPY, 10, Action.CONTINUE),
        (watch(), P.PRECOPY, 100, Action.ABORT_TIMEOUT),
        (watch(postcopy_started=True), P.POSTCOPY, 500, Action.CONTINUE),  # never abort post-copy
        (watch(max_downtime_ms=500), P.DISK_MIRROR, 1, Action.SET_MAX_DOWNTIME),
        (watch(max_downtime_ms=500, downtime_applied=True), P.PRECOPY, 1, Action.CONTINUE),
        (watch(max_downtime_ms=500), P.PRECOPY, 100, Action.ABORT_TIMEOUT),  # timeout first
        (
            watch(postcopy_on_stall=True, stall_iterations=2, peaks=(256, 160, 160, 161)),
            P.PRECOPY,
            1,
            Action.START_POSTCOPY,
        ),
        (watch(postcopy_on_stall=False, stall_iterations=2, peaks=(256, 160, 160, 161)), P.PRECOPY, 1, Action.CONTINUE),
        (watch(postcopy_on_stall=True, stall_iterations=2, peaks=(256, 160, 100, 50)), P.PRECOPY, 1, Action.CONTINUE),
        (
            watch(postcopy_on_stall=True, postcopy_started=True, stall_iterations=2, peaks=(256, 160, 160, 161)),
            P.POSTCOPY,
            1,
            Action.CONTINUE,
        ),
        # the switch failed once: not tried again
        (
            watch(postcopy_on_stall=True, postcopy_refused=True, stall_iterations=2, peaks=(256, 160, 160, 161)),
            P.PRECOPY,
            1,
            Action.CONTINUE,
        ),
    ],
)
def test_decide(w, phase, now, action):
    policy, w = w
    assert next_action(policy, w, RUNNING, phase, now).action is action


def test_downtime_waits_for_an_active_job():
    policy, w = watch(max_downtime_ms=500)
    assert next_action(policy, w, JobStats(), P.STARTING, 1).action is Action.CONTINUE


# ---------------------------------------------------------------- the max-downtime ladder

# Nova's shape: start low, raise the allowed downtime as the migration goes on; the last step
# also waits for the fifth pre-copy iteration.
LADDER = ConvergencePolicy(
    downtime_steps=(
        DowntimeStep(50),
        DowntimeStep(100, after_s=30),
        DowntimeStep(200, after_s=60),
        DowntimeStep(500, after_s=90, after_iterations=5),
    )
)


@pytest.mark.parametrize(
    ("applied", "elapsed", "iteration", "due"),
    [
        (0, 0, 0, 0),  # the first step at once
        (1, 29, 1, None),  # the next one not yet
        (1, 30, 1, 1),
        (2, 45, 2, None),  # applied: not again
        (2, 60, 2, 2),
        (3, 120, 4, None),  # time has come, the iteration not
        (3, 120, 5, 3),
        (4, 900, 9, None),  # the top: nothing more
        (0, 75, 3, 2),  # the job ran late: the highest step due, those below passed over
        (1, 95, 5, 3),
        (3, 10, 0, None),  # never down the ladder
    ],
)
def test_due_downtime_step(applied, elapsed, iteration, due):
    w = Watch(1000.0, 900.0, downtime_steps_applied=applied, iteration=iteration)
    assert due_downtime_step(LADDER, w, 1000.0 + elapsed) == due


@pytest.mark.parametrize(
    ("polls", "set_ms"),
    [
        # (elapsed s, iteration, job active) per poll -> the max downtime set, in order
        ([(t, 1 + t // 20, True) for t in range(0, 200, 5)], [50, 100, 200, 500]),
        ([(t, 1, True) for t in range(0, 200, 5)], [50, 100, 200]),  # never the fifth iteration
        ([(t, 1 + t // 20, t >= 70) for t in range(0, 200, 5)], [200, 500]),  # no job until 70 s
        ([(t, 1 + t // 20, True) for t in range(0, 200, 50)], [50, 100, 500]),  # sparse polls pass one over
    ],
)
def test_ladder_is_climbed_once_per_step_and_never_down(polls, set_ms):
    """The loop's use of the policy, without the loop: each SET_MAX_DOWNTIME applies the step
    ``due_downtime_step`` names (the driver's ``_act``)."""
    w, seen = Watch(0.0, 900.0), []
    for elapsed, iteration, active in polls:
        stats = precopy(1, 100, iteration) if active else JobStats()
        w = observe(w, stats)
        got = next_action(LADDER, w, stats, P.PRECOPY, elapsed)
        if got.action is Action.SET_MAX_DOWNTIME:
            assert got.ladder_index == due_downtime_step(LADDER, w, elapsed)
            seen.append(got.max_downtime_ms)
            w = replace(w, downtime_steps_applied=got.ladder_index + 1)
            assert max_downtime_ms(LADDER, w) == seen[-1]
    assert seen == set_ms
    assert seen == sorted(set(seen))  # monotone, each step at most once


def test_timeout_comes_before_a_due_step():
    step = next_action(LADDER, Watch(0.0, 60.0, downtime_steps_applied=1), RUNNING, P.PRECOPY, 60.0)
    assert step.action is Action.ABORT_TIMEOUT


@pytest.mark.parametrize(
    "steps",
    [
        (DowntimeStep(300), DowntimeStep(100, after_s=30)),  # downtime going down
        (DowntimeStep(100, after_s=30), DowntimeStep(300, after_s=10)),  # time going back
        (DowntimeStep(100, after_iterations=3), DowntimeStep(300, after_iterations=2)),  # iteration going back
        (DowntimeStep(0),),  # no downtime at all
    ],
)
def test_a_ladder_that_is_not_monotone_is_refused(steps):
    with pytest.raises(InvalidArgument) as exc:
        ConvergencePolicy(downtime_steps=steps)
    assert exc.value.reason == "INVALID_CONVERGENCE_POLICY"
