"""Migration policy: phases, progress that never runs backwards, timeout, stall, the action per poll."""

import doctest
from dataclasses import replace

import pytest

from ferry.agent import migration as m
from ferry.agent.migration import (
    Action,
    Watch,
    changed,
    completion_timeout_s,
    decide,
    next_progress,
    observe,
    phase_of,
    stalled,
)
from ferry.model import JobStats, MigrationOptions, MigrationPhase

MiB = 1 << 20
P = MigrationPhase


def test_docstring_examples():
    assert doctest.testmod(m).failed == 0


@pytest.mark.parametrize(
    ("stats", "postcopy_started", "phase"),
    [
        (JobStats(), False, P.STARTING),  # no job yet
        (JobStats(active=True), False, P.STARTING),  # job, nothing moved
        (JobStats(active=True, disk_total=1024, disk_remaining=1024), False, P.DISK_MIRROR),
        (JobStats(active=True, disk_total=1024, disk_processed=1024), False, P.DISK_MIRROR),  # synced, memory next
        (
            JobStats(
                active=True,
                disk_total=1024,
                disk_processed=1024,
                memory_total=256,
                memory_processed=10,
                memory_remaining=246,
                iteration=1,
            ),
            False,
            P.PRECOPY,
        ),
        (JobStats(active=True, memory_total=256, memory_processed=10, memory_remaining=246), False, P.PRECOPY),
        (JobStats(active=True, memory_total=256, memory_processed=300, memory_remaining=40), True, P.POSTCOPY),
        (JobStats(active=True, memory_processed=300, postcopy=True), False, P.POSTCOPY),
        (JobStats(active=False, memory_processed=300), False, P.FINISHING),  # job over, call not back
        (JobStats(job_type="completed", memory_processed=300), False, P.FINISHING),  # completed, call not back
        # ended badly: QEMU said so, libvirt's migrate call has not returned its error yet
        (JobStats(job_type="cancelled", memory_processed=300), False, P.CANCELLED),  # aborted
        (JobStats(job_type="cancelled"), False, P.CANCELLED),  # aborted before data moved
        (JobStats(job_type="cancelled", memory_processed=300), True, P.CANCELLED),  # post-copy asked, aborted
        (JobStats(job_type="failed", disk_total=1024, disk_processed=512), False, P.FAILED),
        (JobStats(job_type="failed", memory_processed=300, postcopy=True), False, P.FAILED),
    ],
)
def test_phase_of(stats, postcopy_started, phase):
    assert phase_of(stats, postcopy_started=postcopy_started) is phase


@pytest.mark.parametrize(
    ("a", "b", "later"),
    [
        (P.STARTING, P.PRECOPY, P.PRECOPY),
        (P.POSTCOPY, P.PRECOPY, P.POSTCOPY),
        (P.PRECOPY, P.FINISHING, P.FINISHING),
        (P.PRECOPY, P.CANCELLED, P.CANCELLED),  # an end is later than any running phase
        (P.FINISHING, P.FAILED, P.FAILED),
        (P.CANCELLED, P.PRECOPY, P.CANCELLED),  # and stays
        (P.FAILED, P.CANCELLED, P.FAILED),  # the first end seen stays
    ],
)
def test_later_phase(a, b, later):
    assert m.later_phase(a, b) is later


def test_an_aborted_job_is_never_reported_finishing():
    """The polls an abort produces, in libvirt's order: the job runs, QEMU cancels it (libvirt
    says "cancelled"), the job is gone (nothing to report); the phases reported never say
    FINISHING and end CANCELLED."""
    polls = [
        precopy(100, 156, 1),
        JobStats(job_type="cancelled", memory_total=256 * MiB, memory_processed=120 * MiB),
        JobStats(),
    ]
    progress, seen = None, []
    for stats in polls:
        progress = next_progress(progress, phase_of(stats), stats)
        seen.append(progress.phase)
    assert seen == [P.PRECOPY, P.CANCELLED, P.CANCELLED]


@pytest.mark.parametrize(
    ("reported", "seen", "planned", "expected"),
    [
        (0, JobStats(disk_total=1000, disk_processed=1000), 800, 1000),  # the source saw it all copied
        (0, JobStats(disk_total=1000, disk_processed=600), 800, 1000),  # last poll mid-copy: it completed
        (0, JobStats(), 800, 800),  # no poll saw the copy: as planned
        (1200, JobStats(disk_total=1000), 800, 1200),  # a target that counts wins
        (0, JobStats(), 0, 0),  # nothing copied (shared storage)
    ],
)
def test_disk_bytes_of_a_completed_copy(reported, seen, planned, expected):
    assert m.disk_bytes_copied(reported, seen, planned) == expected


def precopy(processed, remaining, iteration, **kw):
    return JobStats(
        active=True,
        memory_total=256 * MiB,
        memory_processed=processed * MiB,
        memory_remaining=remaining * MiB,
        iteration=iteration,
        **kw,
    )


@pytest.mark.parametrize(
    ("prev", "new", "expected"),
    [
        # same phase and iteration: processed never drops, remaining never grows
        ((P.PRECOPY, precopy(100, 156, 1)), (P.PRECOPY, precopy(90, 160, 1)), (P.PRECOPY, 100, 156, 1)),
        # a new iteration may show more left (memory was re-dirtied)
        ((P.PRECOPY, precopy(250, 6, 1)), (P.PRECOPY, precopy(260, 60, 2)), (P.PRECOPY, 260, 60, 2)),
        # the iteration never goes back
        ((P.PRECOPY, precopy(250, 6, 2)), (P.PRECOPY, precopy(260, 60, 1)), (P.PRECOPY, 260, 6, 2)),
        # the phase never goes back (a stats glitch reporting "nothing processed")
        ((P.PRECOPY, precopy(100, 156, 1)), (P.DISK_MIRROR, precopy(0, 256, 0)), (P.PRECOPY, 100, 156, 1)),
        # a new phase is reported as it is
        ((P.PRECOPY, precopy(300, 40, 3)), (P.POSTCOPY, precopy(310, 30, 3)), (P.POSTCOPY, 310, 30, 3)),
    ],
)
def test_progress_never_runs_backwards(prev, new, expected):
    p = next_progress(None, *prev)
    q = next_progress(p, *new)
    assert (q.phase, q.stats.memory_processed // MiB, q.stats.memory_remaining // MiB, q.stats.iteration) == expected


def test_disk_remaining_clamped_within_mirror():
    d = JobStats(active=True, disk_total=100, disk_processed=40, disk_remaining=60)
    p = next_progress(None, P.DISK_MIRROR, d)
    q = next_progress(p, P.DISK_MIRROR, replace(d, disk_processed=45, disk_remaining=70))
    assert (q.stats.disk_processed, q.stats.disk_remaining) == (45, 60)


def test_elapsed_from_libvirt_or_clock_and_never_backwards():
    p = next_progress(None, P.PRECOPY, precopy(1, 1, 1), elapsed_ms=500)
    assert p.stats.time_elapsed_ms == 500
    q = next_progress(p, P.PRECOPY, precopy(1, 1, 1, time_elapsed_ms=300))
    assert q.stats.time_elapsed_ms == 500


def test_changed_ignores_elapsed_only():
    p = next_progress(None, P.PRECOPY, precopy(1, 1, 1, time_elapsed_ms=100))
    assert not changed(p, replace(p, stats=replace(p.stats, time_elapsed_ms=900)))
    assert changed(p, replace(p, stats=replace(p.stats, memory_processed=2)))
    assert changed(None, p)


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
    assert completion_timeout_s(MigrationOptions(completion_timeout_s=given), memory, disk) == expected


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


def watch(**kw):
    base = dict(started_at=0.0, timeout_s=100.0)
    return Watch(**{**base, **kw})


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
    ],
)
def test_decide(w, phase, now, action):
    assert decide(w, RUNNING, phase, now) is action


def test_downtime_waits_for_an_active_job():
    assert decide(watch(max_downtime_ms=500), JobStats(), P.STARTING, 1) is Action.CONTINUE
