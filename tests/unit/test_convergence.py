"""Convergence policy: today's policy from the options, timeout, stall, the max-downtime ladder,
the action per poll."""

import doctest
import random
from dataclasses import replace

import pytest

from ferry import convergence as c
from ferry.convergence import (
    Action,
    ConvergencePolicy,
    DowntimeStep,
    PostcopyMode,
    TimeoutAction,
    Watch,
    after_operator_downtime,
    completion_timeout_s,
    downtime_ladder,
    due_downtime_step,
    eta_s,
    max_downtime_ms,
    migrate_options,
    next_action,
    observe,
    policy_doc,
    policy_from_doc,
    policy_from_options,
    stalled,
    with_options,
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


# ---------------------------------------------------------------- post-copy rules, per mode

PC = PostcopyMode
STALLED_PEAKS = (256 * MiB, 64 * MiB, 64 * MiB, 64 * MiB, 64 * MiB)  # no headway after iteration 2
STALLED = dict(peaks=STALLED_PEAKS, iteration=5)
NOT_CONVERGING = dict(iteration=3, peaks=(256 * MiB, 64 * MiB, 64 * MiB))  # iteration 3 sends what 2 sent


def running(iteration: int, *, dirty_mibps: int = 0, bw_mibps: int = 32, left_mib: int = 64) -> JobStats:
    return precopy(
        100, left_mib, iteration, dirty_rate_pages=dirty_mibps * 256, bandwidth_bps=bw_mibps * MiB, page_size=4096
    )


@pytest.mark.parametrize(
    ("mode", "watch_kw", "stats", "phase", "now", "expected"),
    [
        # never and manual: no switch by the policy itself, however hopeless
        (PC.NEVER, STALLED, running(5, dirty_mibps=40), P.PRECOPY, 50, Action.CONTINUE),
        (PC.MANUAL, STALLED, running(5, dirty_mibps=40), P.PRECOPY, 50, Action.CONTINUE),
        # on stall: only once stalled
        (PC.ON_STALL, STALLED, running(5), P.PRECOPY, 50, Action.START_POSTCOPY),
        (
            PC.ON_STALL,
            dict(peaks=(256 * MiB, 64 * MiB, 32 * MiB), iteration=3),
            running(3),
            P.PRECOPY,
            50,
            Action.CONTINUE,
        ),
        # after N s (the policy's 20 s): not before, then in pre-copy only
        (PC.AFTER, dict(iteration=1, peaks=(256 * MiB,)), running(1), P.PRECOPY, 19, Action.CONTINUE),
        (PC.AFTER, dict(iteration=1, peaks=(256 * MiB,)), running(1), P.PRECOPY, 20, Action.START_POSTCOPY),
        (
            PC.AFTER,
            dict(iteration=0),
            JobStats(active=True, disk_total=1, disk_remaining=1),
            P.DISK_MIRROR,
            30,
            Action.CONTINUE,
        ),
        # on prediction: the up-front verdict after iteration 1 ...
        (
            PC.ON_PREDICTION,
            dict(predicted_converges=False, iteration=1, peaks=(256 * MiB,)),
            running(1),
            P.PRECOPY,
            5,
            Action.CONTINUE,
        ),
        (
            PC.ON_PREDICTION,
            dict(predicted_converges=False, iteration=2, peaks=(256 * MiB, 64 * MiB)),
            running(2),
            P.PRECOPY,
            9,
            Action.START_POSTCOPY,
        ),
        # ... the running job's rates from iteration 3 (guest 40 MiB/s over a 32 MiB/s link) ...
        (
            PC.ON_PREDICTION,
            dict(predicted_converges=True, iteration=2, peaks=(256 * MiB, 64 * MiB)),
            running(2, dirty_mibps=40),
            P.PRECOPY,
            9,
            Action.CONTINUE,
        ),
        (
            PC.ON_PREDICTION,
            dict(NOT_CONVERGING, predicted_converges=True),
            running(3, dirty_mibps=40),
            P.PRECOPY,
            11,
            Action.START_POSTCOPY,
        ),
        (
            PC.ON_PREDICTION,
            dict(predicted_converges=None, iteration=3, peaks=(256 * MiB, 64 * MiB, 40 * MiB)),
            running(3, dirty_mibps=8),
            P.PRECOPY,
            11,
            Action.CONTINUE,
        ),
        # ... or a stall
        (
            PC.ON_PREDICTION,
            dict(STALLED, predicted_converges=True),
            running(5, dirty_mibps=8),
            P.PRECOPY,
            20,
            Action.START_POSTCOPY,
        ),
        # never twice, never after a refusal, never while paused
        (PC.ON_STALL, dict(STALLED, postcopy_refused=True), running(5), P.PRECOPY, 50, Action.CONTINUE),
        (PC.ON_STALL, dict(STALLED, paused=True), running(5), P.PRECOPY, 50, Action.CONTINUE),
        (PC.ON_STALL, dict(STALLED, postcopy_started=True), running(5), P.POSTCOPY, 50, Action.CONTINUE),
    ],
)
def test_postcopy_rules(mode, watch_kw, stats, phase, now, expected):
    policy = ConvergencePolicy(postcopy=mode, postcopy_after_s=20 if mode is PC.AFTER else 0, stall_iterations=3)
    step = next_action(policy, Watch(0.0, 200.0, **watch_kw), stats, phase, float(now))
    assert step.action is expected
    assert (step.reason != "") is (expected is not Action.CONTINUE)  # every step says why


# ---------------------------------------------------------------- the timeout action

FORCE = TimeoutAction.FORCE_COMPLETE
FORCE_POSTCOPY = ConvergencePolicy(timeout_action=FORCE, postcopy=PC.MANUAL)  # force-complete may switch
NO_NEW_LOW = dict(best_remaining=64 * MiB, progress_at=10.0)  # the data remaining last fell at 10 s


@pytest.mark.parametrize(
    ("policy", "watch_kw", "phase", "now", "expected", "why"),
    [
        (ConvergencePolicy(), {}, P.PRECOPY, 99, Action.CONTINUE, ""),
        (ConvergencePolicy(), {}, P.PRECOPY, 100, Action.ABORT_TIMEOUT, "completion timeout of 100 s"),
        # force-complete: post-copy when allowed and memory pre-copy runs ...
        (FORCE_POSTCOPY, {}, P.PRECOPY, 100, Action.START_POSTCOPY, "switching to post-copy"),
        # ... else pause the guest and let pre-copy send the rest
        (ConvergencePolicy(timeout_action=FORCE), {}, P.PRECOPY, 100, Action.PAUSE_GUEST, "post-copy not allowed"),
        (FORCE_POSTCOPY, {}, P.DISK_MIRROR, 100, Action.PAUSE_GUEST, "memory pre-copy not started"),
        (FORCE_POSTCOPY, dict(postcopy_refused=True), P.PRECOPY, 100, Action.PAUSE_GUEST, "post-copy refused"),
        # paused already: wait for the end (no abort of a paused guest's job)
        (ConvergencePolicy(timeout_action=FORCE), dict(paused=True), P.PRECOPY, 500, Action.CONTINUE, ""),
        # post-copy is never aborted
        (ConvergencePolicy(), dict(postcopy_started=True), P.POSTCOPY, 500, Action.CONTINUE, ""),
        # the progress timeout: no new low of the data remaining for 30 s
        (ConvergencePolicy(progress_timeout_s=30), NO_NEW_LOW, P.PRECOPY, 39, Action.CONTINUE, ""),
        (
            ConvergencePolicy(progress_timeout_s=30),
            NO_NEW_LOW,
            P.PRECOPY,
            40,
            Action.ABORT_TIMEOUT,
            "no progress for 30 s",
        ),
        (
            ConvergencePolicy(progress_timeout_s=30, timeout_action=FORCE),
            NO_NEW_LOW,
            P.PRECOPY,
            40,
            Action.PAUSE_GUEST,
            "no progress for 30 s",
        ),
        # an operator's force-complete comes first, at any time
        (
            ConvergencePolicy(postcopy=PC.MANUAL),
            dict(force_requested="alice"),
            P.PRECOPY,
            1,
            Action.START_POSTCOPY,
            "requested by alice",
        ),
        (ConvergencePolicy(), dict(force_requested="alice"), P.PRECOPY, 1, Action.PAUSE_GUEST, "requested by alice"),
    ],
)
def test_timeout_action(policy, watch_kw, phase, now, expected, why):
    step = next_action(policy, Watch(0.0, 100.0, **watch_kw), RUNNING, phase, float(now))
    assert step.action is expected
    assert why in step.reason


def test_progress_is_a_new_low_of_the_data_remaining():
    w = Watch(0.0, 100.0)
    for t, left in [(1, 200), (2, 150), (3, 170), (4, 150), (5, 120), (6, 130)]:
        w = observe(w, precopy(10, left, 1), float(t))
    assert (w.best_remaining, w.progress_at) == (120 * MiB, 5.0)


# ---------------------------------------------------------------- the ladder is monotone


@pytest.mark.parametrize("seed", range(40))
def test_any_valid_ladder_only_ever_raises_the_downtime(seed):
    """Random ladders, polls and operator settings: the max downtimes the policy sets go up, each
    ladder step at most once, and never to or below what an operator set before."""
    rng = random.Random(seed)
    steps, ms, t, it = [], 0, 0.0, 0
    for _ in range(rng.randint(1, 6)):
        ms, t, it = ms + rng.randint(1, 400), t + rng.choice([0, 5, 30]), it + rng.choice([0, 0, 2])
        steps.append(DowntimeStep(ms, after_s=t, after_iterations=it))
    policy = ConvergencePolicy(downtime_steps=tuple(steps))
    w, set_by_policy, indexes, operator = Watch(0.0, 10_000.0), [], [], 0
    for now in sorted(rng.uniform(0, 200) for _ in range(60)):
        if rng.random() < 0.05:
            operator = max(operator, rng.randint(1, 2000))
            w = after_operator_downtime(policy, w, operator)
        stats = precopy(1, 100, 1 + int(now // 10))
        w = observe(w, stats, now)
        step = next_action(policy, w, stats, P.PRECOPY, now)
        if step.action is Action.SET_MAX_DOWNTIME:
            assert step.max_downtime_ms > operator
            assert step.max_downtime_ms == steps[step.ladder_index].max_downtime_ms
            set_by_policy.append(step.max_downtime_ms)
            indexes.append(step.ladder_index)
            w = replace(w, downtime_steps_applied=step.ladder_index + 1)
    assert set_by_policy == sorted(set_by_policy)  # up only
    assert indexes == sorted(set(indexes))  # each step once
    assert max_downtime_ms(policy, w) >= max([operator, *set_by_policy])


def test_the_policy_never_lowers_an_operators_max_downtime():
    policy = ConvergencePolicy(
        downtime_steps=(DowntimeStep(100), DowntimeStep(300, after_s=10), DowntimeStep(900, after_s=20))
    )
    w = after_operator_downtime(policy, Watch(0.0, 100.0), 500)
    assert next_action(policy, w, RUNNING, P.PRECOPY, 15.0).action is Action.CONTINUE  # 100 and 300 skipped
    step = next_action(policy, w, RUNNING, P.PRECOPY, 20.0)
    assert (step.action, step.max_downtime_ms) == (Action.SET_MAX_DOWNTIME, 900)
    assert max_downtime_ms(policy, w) == 500


def test_nova_style_ladder():
    assert [(s.max_downtime_ms, s.after_s) for s in downtime_ladder(500, 3, 30, first_ms=100)] == [
        (100, 0.0),
        (300, 30.0),
        (500, 60.0),
    ]


# ---------------------------------------------------------------- what a policy may be


@pytest.mark.parametrize(
    ("kw", "names"),
    [
        (dict(postcopy=PC.AFTER), "postcopy_after_s"),
        (dict(parallel_connections=4, postcopy=PC.ON_STALL), "multifd"),
        (dict(compression=("lz4",)), "lz4"),
        (dict(compression=("zstd",)), "parallel connections"),
        (dict(auto_converge_initial=120), "auto_converge_initial"),
    ],
)
def test_a_policy_that_cannot_work_is_refused(kw, names):
    with pytest.raises(InvalidArgument) as e:
        ConvergencePolicy(**kw)
    assert e.value.reason == "INVALID_CONVERGENCE_POLICY"
    assert names in e.value.message + e.value.hint


def test_multifd_with_compression_and_no_postcopy_is_fine():
    p = ConvergencePolicy(parallel_connections=4, compression=("zstd",))
    assert not p.allows_postcopy


def test_a_policy_survives_its_document_form():
    p = ConvergencePolicy(
        name="busy",
        bandwidth_mibps=32,
        downtime_steps=(DowntimeStep(100), DowntimeStep(500, after_s=30, after_iterations=4)),
        auto_converge=True,
        auto_converge_initial=60,
        auto_converge_increment=20,
        postcopy=PC.ON_PREDICTION,
        postcopy_bandwidth_mibps=64,
        completion_timeout_s=600,
        progress_timeout_s=150,
        timeout_action=FORCE,
        refuse_unfinishable=True,
    )
    assert policy_from_doc(policy_doc(p)) == p


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"bandwith_mibps": 32}, "unknown key(s) bandwith_mibps"),
        ({"postcopy": "sometimes"}, "postcopy = 'sometimes' is unknown"),
        ({"timeout_action": "pray"}, "timeout_action = 'pray' is unknown"),
        ({"bandwidth_mibps": -1}, "bandwidth_mibps must be a number >= 0"),
        ({"downtime": [{"after_s": 3}]}, "downtime step 1 has no ms"),
        ({"downtime": [{"ms": 300}, {"ms": 100, "after_s": 3}]}, "does not follow step 1"),
        ({"auto_converge": "yes"}, "auto_converge must be true or false"),
    ],
)
def test_policy_documents_that_are_refused(doc, says):
    with pytest.raises(InvalidArgument) as e:
        policy_from_doc(doc, where="[policies.x]")
    assert says in e.value.message


def test_flags_go_on_top_of_a_named_policy():
    busy = ConvergencePolicy(
        name="busy", bandwidth_mibps=32, downtime_steps=(DowntimeStep(300),), postcopy=PC.ON_PREDICTION
    )
    assert with_options(busy, MigrationOptions()) == busy
    p = with_options(busy, MigrationOptions(max_downtime_ms=800, auto_converge=True))
    assert (p.name, p.bandwidth_mibps, p.downtime_steps, p.auto_converge, p.postcopy) == (
        "busy",
        32,
        (DowntimeStep(800),),
        True,
        PC.ON_PREDICTION,
    )
    strict = ConvergencePolicy(name="strict")
    assert with_options(strict, MigrationOptions(allow_postcopy=True)).postcopy is PC.MANUAL


# ---------------------------------------------------------------- the ETA


@pytest.mark.parametrize(
    ("policy", "watch_kw", "stats", "phase", "now", "eta"),
    [
        # post-copy: what is left at the post-copy bandwidth
        (
            ConvergencePolicy(postcopy_bandwidth_mibps=8),
            dict(postcopy_started=True),
            running(3, left_mib=80),
            P.POSTCOPY,
            10,
            10.0,
        ),
        # pre-copy converging: 32 MiB left at 32 MiB/s, then 8 MiB/s x 1 s = 8 MiB > 9.6? no: fits 300 ms -> done
        (
            ConvergencePolicy(),
            dict(iteration=3, peaks=(256 * MiB, 64 * MiB, 32 * MiB)),
            running(3, dirty_mibps=8, left_mib=32),
            P.PRECOPY,
            10,
            1.25,
        ),
        # not converging, post-copy on prediction: this iteration, then the working set at the link
        (
            ConvergencePolicy(postcopy=PC.ON_PREDICTION),
            NOT_CONVERGING,
            running(3, dirty_mibps=40, left_mib=64),
            P.PRECOPY,
            10,
            4.0,
        ),
        # not converging, abort at the timeout (100 s): the time left
        (ConvergencePolicy(), NOT_CONVERGING, running(3, dirty_mibps=40, left_mib=64), P.PRECOPY, 40, 60.0),
        # no bandwidth figure yet: unknown
        (ConvergencePolicy(), {}, precopy(1, 200, 1), P.PRECOPY, 1, None),
    ],
)
def test_eta(policy, watch_kw, stats, phase, now, eta):
    got = eta_s(policy, Watch(0.0, 100.0, **watch_kw), stats, phase, float(now))
    assert got == (None if eta is None else pytest.approx(eta, abs=0.01))
