"""The pre-copy model and the prediction (ferry/prediction.py), with worked examples by hand.

The model: iteration 1 sends the non-zero memory at the bandwidth B; each iteration of t seconds
leaves min(W, D*t) dirty (D the dirty rate, W the working set); the next iteration sends that;
pre-copy ends when what is left fits in the max downtime at B.
"""

import doctest

import pytest

from ferry import prediction as pr
from ferry.model import GuestLoad
from ferry.prediction import LadderStep, Need, PolicyView, Workload, precopy, predict, working_set, workload_of

MiB = 1 << 20


def test_docstring_examples():
    assert doctest.testmod(pr).failed == 0


def guest(dirty_mibps, *, ws_mib=64, resident_mib=160, disk_mib=0):
    return Workload(256 * MiB, dirty_mibps * MiB, ws_mib * MiB, resident_mib * MiB, disk_mib * MiB)


# ---------------------------------------------------------------- worked examples


def test_an_idle_guest_converges_after_one_pass():
    """94 MiB non-zero at 32 MiB/s: 94/32 = 2.94 s, nothing dirtied, the switch-over sends nothing.
    (The lab measured 3.1 s of job and 94 MiB of normal pages for this guest.)"""
    p = precopy(guest(0, resident_mib=94), 32 * MiB)
    assert (p.converges, p.iterations, p.downtime_ms) == (True, 2, 0)
    assert p.seconds == pytest.approx(94 / 32)


def test_a_guest_dirtying_a_quarter_of_the_link_converges_geometrically():
    """D=8, W=64, B=32: 160/32 = 5 s, then min(64, 40) = 40 MiB in 1.25 s, then 10 MiB in 0.31 s,
    then 2.5 MiB fits in 300 ms (9.6 MiB): 4 iterations, 5 + 1.25 + 0.3125 + 2.5/32 = 6.64 s."""
    p = precopy(guest(8), 32 * MiB)
    assert (p.converges, p.iterations) == (True, 4)
    assert p.seconds == pytest.approx(5 + 1.25 + 0.3125 + 2.5 / 32)
    assert p.downtime_ms == pytest.approx(2.5 / 32 * 1000)


def test_three_quarters_of_the_link_takes_nine_iterations():
    """D=24, W=64, B=32, 96 MiB resident: 3 s, then 64, 48, 36, 27, 20.25, 15.19, 11.39 MiB (each
    0.75 of the one before), then 8.54 MiB fits: 9 iterations, 10.2 s, 267 ms of downtime."""
    p = precopy(guest(24, resident_mib=96), 32 * MiB)
    assert (p.converges, p.iterations) == (True, 9)
    sends = [96, 64, 48, 36, 27, 20.25, 15.1875, 11.390625]
    assert p.seconds == pytest.approx(sum(sends) / 32 + 8.54296875 / 32)
    assert p.downtime_ms == pytest.approx(8.54296875 / 32 * 1000)


@pytest.mark.parametrize(("dirty", "bw"), [(40, 32), (32, 32), (16, 16), (24, 16)])
def test_a_guest_dirtying_the_link_or_more_never_converges(dirty, bw):
    """Each iteration finds the whole working set dirty again: 64 MiB left forever."""
    p = precopy(guest(dirty), bw * MiB, limit_s=300)
    assert not p.converges
    assert p.residual_bytes == 64 * MiB
    assert p.seconds == 300  # it gave up at the limit


def test_a_higher_max_downtime_later_lets_it_through():
    """D=16=B, W=64: 4 s of switch-over needed. The ladder's 5 s step at 60 s lets it end at
    60 s + 4 s; with only 3 s it never does."""
    got = precopy(guest(16), 16 * MiB, ladder=(LadderStep(300), LadderStep(5000, after_s=60)), limit_s=300)
    assert (got.converges, got.step) == (True, 1)
    assert got.seconds == pytest.approx(64.0)
    assert not precopy(
        guest(16), 16 * MiB, ladder=(LadderStep(300), LadderStep(3000, after_s=60)), limit_s=300
    ).converges


def test_a_step_that_waits_for_an_iteration_counts_the_iterations():
    """The lab's precopy policy: 3 s from 20 s and iteration 4. D=40 > B=32, W=64: 5 s, then 2 s
    per iteration; iteration 4 comes at 11 s, 20 s later: through at 20 s + 2 s."""
    ladder = (LadderStep(100), LadderStep(300, after_s=5), LadderStep(1000, after_s=10), LadderStep(3000, 20, 4))
    got = precopy(guest(40), 32 * MiB, ladder=ladder, limit_s=120)
    assert (got.converges, got.step) == (True, 3)
    assert got.seconds == pytest.approx(22.0)


def test_copied_disks_go_first():
    """64 MiB of disk at 32 MiB/s: 2 s more, before memory."""
    base = precopy(guest(8), 32 * MiB)
    with_disk = precopy(guest(8, disk_mib=64), 32 * MiB)
    assert with_disk.seconds == pytest.approx(base.seconds + 2)
    assert with_disk.first_iteration_s == pytest.approx(2 + 5)


def test_auto_converge_slows_the_guest_until_it_fits():
    """D=40 > B=32 does not converge; throttled by 20 % +10 % per iteration from iteration 3 it does."""
    assert not precopy(guest(40), 32 * MiB, limit_s=600).converges
    assert precopy(guest(40), 32 * MiB, limit_s=600, throttle=(20, 10)).converges


def test_the_running_job_picks_up_where_it_is():
    """From iteration 4 with 20 MiB left to send (D=8, B=32): 0.625 s, then 5 MiB fits."""
    p = precopy(guest(8), 32 * MiB, elapsed_s=10.0, iteration=4, to_send=20 * MiB)
    assert (p.converges, p.iterations) == (True, 5)
    assert p.seconds == pytest.approx(10 + 0.625 + 5 / 32)


@pytest.mark.parametrize("bw", [16, 32, 64])
def test_the_verdict_is_dirty_rate_below_bandwidth(bw):
    """With a 64 MiB working set and QEMU's 300 ms: converges exactly when D < B."""
    for dirty in range(0, 2 * bw, 4):
        assert precopy(guest(dirty), bw * MiB, limit_s=3600).converges is (dirty < bw), dirty


def test_more_dirtying_never_predicts_a_shorter_job():
    times = [precopy(guest(d), 32 * MiB).seconds for d in range(0, 32, 2)]
    assert times == sorted(times)


# ---------------------------------------------------------------- the working set


@pytest.mark.parametrize(
    ("short", "long", "ws_mib"),
    [
        ((1, 40), (3, 21), 63),  # saturated: 63 MiB seen in 3 s
        ((1, 24), (3, 23), 0),  # not saturated: cannot tell
        ((1, 0), (3, 0), 0),  # idle
        ((1, 300), (3, 120), 256),  # more than memory: memory
    ],
)
def test_working_set_from_two_periods(short, long, ws_mib):
    got = working_set(short[1] * MiB, short[0], long[1] * MiB, long[0], 256 * MiB)
    assert got // MiB == ws_mib


def test_workload_from_what_the_source_measured():
    load = GuestLoad(256 * MiB, samples=((3.0, 21.0 * MiB), (1.0, 40.0 * MiB)), resident_bytes=150 * MiB)
    w = workload_of(load, disk_bytes=8 * MiB)
    assert (w.dirty_bps, w.working_set_bytes // MiB, w.first_pass, w.disk_bytes) == (40 * MiB, 63, 150 * MiB, 8 * MiB)


# ---------------------------------------------------------------- what the policy will need

BUSY = guest(40)  # never converges at 32 MiB/s


@pytest.mark.parametrize(
    ("workload", "view", "converges", "finishes", "need", "seconds", "words"),
    [
        (guest(8), PolicyView("p", timeout_s=200), True, True, Need.PRECOPY, 6.64, "converges at 32 MiB/s"),
        # D = B: 64 MiB left each time, 2 s at 32 MiB/s: through once the ladder allows 3 s
        (
            guest(32),
            PolicyView("p", ladder=(LadderStep(300), LadderStep(3000, after_s=20)), timeout_s=200),
            True,
            True,
            Need.DOWNTIME_STEP,
            22.0,
            "once max downtime reaches 3000 ms (step 2)",
        ),
        # iteration 1 = 5 s, then the 64 MiB working set in post-copy at 32 MiB/s: 7 s
        (
            BUSY,
            PolicyView("busy", postcopy="on-prediction", timeout_s=200),
            False,
            True,
            Need.POSTCOPY,
            7.0,
            "after iteration 1",
        ),
        # at 8 MiB/s in post-copy: 5 + 8 s
        (
            BUSY,
            PolicyView("busy", postcopy="on-prediction", postcopy_bandwidth_bps=8 * MiB, timeout_s=200),
            False,
            True,
            Need.POSTCOPY,
            13.0,
            "expected ~13 s",
        ),
        # on stall after 3 iterations without headway: 5 + 4 x 2 s, then 2 s
        (
            BUSY,
            PolicyView("s", postcopy="on-stall", stall_iterations=3, timeout_s=200),
            False,
            True,
            Need.POSTCOPY,
            15.0,
            "stalls",
        ),
        (
            BUSY,
            PolicyView("a", postcopy="after", postcopy_after_s=30, timeout_s=200),
            False,
            True,
            Need.POSTCOPY,
            32.0,
            "after 30 s",
        ),
        # force-complete at the timeout: post-copy if allowed, else a pause (64 MiB at 32 MiB/s)
        (
            BUSY,
            PolicyView("f", postcopy="manual", timeout_s=120, timeout_action="force-complete"),
            False,
            True,
            Need.FORCE_COMPLETE,
            122.0,
            "switches to post-copy at its timeout",
        ),
        (
            BUSY,
            PolicyView("f", timeout_s=120, timeout_action="force-complete"),
            False,
            True,
            Need.FORCE_COMPLETE,
            122.0,
            "pauses the guest",
        ),
        (
            BUSY,
            PolicyView("strict", timeout_s=120),
            False,
            False,
            Need.ABORT,
            120.0,
            "allows no post-copy and aborts after 120 s",
        ),
        (Workload(256 * MiB), PolicyView("x"), None, None, Need.UNKNOWN, 0.0, "not measured"),
    ],
)
def test_predict(workload, view, converges, finishes, need, seconds, words):
    p = predict(workload, 32 * MiB, view)
    assert (p.converges, p.finishes, p.need) == (converges, finishes, need)
    if seconds is not None:
        assert p.seconds == pytest.approx(seconds, abs=0.01)
    assert words in p.words


def test_the_force_complete_pause_is_the_downtime():
    p = predict(BUSY, 32 * MiB, PolicyView("f", timeout_s=120, timeout_action="force-complete"))
    assert p.downtime_ms == pytest.approx(2000)  # 64 MiB at 32 MiB/s with the guest paused


def test_a_hosts_bandwidth_budget_bounds_the_prediction():
    """A guest dirtying 40 MiB/s converges on the 1,000 MiB/s link a policy without a cap assumes,
    not under a host's budget of 32 MiB/s (``[limits] host_bandwidth_mibps``)."""
    from ferry.convergence import ConvergencePolicy
    from ferry.coordinator.policies import PredictionConfig, predict_migration

    load = GuestLoad(256 * MiB, samples=((1.0, 40.0 * MiB), (3.0, 40.0 * MiB)), resident_bytes=160 * MiB)
    policy, config = ConvergencePolicy(name="plain"), PredictionConfig(link_mibps=1000)
    free = predict_migration(policy, load, disk_bytes=0, config=config)
    budgeted = predict_migration(policy, load, disk_bytes=0, config=config, budget_mibps=32)
    assert free.converges is True and budgeted.converges is False
    assert "32 MiB/s" in budgeted.words
