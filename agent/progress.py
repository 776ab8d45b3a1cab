"""Progress of a migration job, from libvirt's job statistics (pure; tested with tables in
tests/unit/test_migration_policy.py):

* ``memory_pending``: the memory still to send while libvirt mirrors the disks (it reports none).
* ``phase_of``: which phase a job is in, from its statistics.
* ``later_phase``: the later of two phases (a reported phase never moves back).
* ``next_progress``: the snapshot to report; progress never runs backwards within a phase.
* ``changed``: a snapshot worth reporting (more than the elapsed time differs).
"""

from __future__ import annotations

from dataclasses import replace

from ferry.model import JobStats, MigrationPhase, MigrationProgress

# Phases a job passes through, in order; a reported phase never moves back in this order. The
# ends (failed, cancelled) come after every running phase: once seen, they stay.
_ORDER = {
    MigrationPhase.STARTING: 0,
    MigrationPhase.DISK_MIRROR: 1,
    MigrationPhase.PRECOPY: 2,
    MigrationPhase.POSTCOPY: 3,
    MigrationPhase.FINISHING: 4,
    MigrationPhase.COMPLETED: 5,
    MigrationPhase.FAILED: 5,
    MigrationPhase.CANCELLED: 5,
}

# libvirt's job types of a job that ended badly (QEMU reported it; the migrate call has not
# returned its error yet)
_ENDED_BADLY = {"failed": MigrationPhase.FAILED, "cancelled": MigrationPhase.CANCELLED}


def memory_pending(stats: JobStats, memory_bytes: int) -> JobStats:
    """``stats`` with the guest's memory (``memory_bytes``) all still to send while libvirt mirrors
    its disks: libvirt starts memory after the disks and reports no memory figures until then.
    Without them a progress bar stood at 100 % once the disks were copied and stayed there through
    pre-copy, an ETA counted the disks alone, and the progress timeout took the disks' last few
    bytes for the low that memory had to beat: on the lab it fired 60 s into a healthy pre-copy.

    >>> mirror = JobStats(active=True, disk_total=64, disk_processed=16, disk_remaining=48)
    >>> s = memory_pending(mirror, 512)
    >>> s.memory_total, s.memory_remaining, s.memory_processed
    (512, 512, 0)
    >>> started = replace(mirror, memory_total=513, memory_processed=8, memory_remaining=505)
    >>> memory_pending(started, 512) == started
    True
    """
    if stats.active and stats.disk_total and stats.memory_total == 0 and stats.memory_processed == 0:
        return replace(stats, memory_total=memory_bytes, memory_remaining=memory_bytes)
    return stats


def phase_of(stats: JobStats, *, postcopy_started: bool = False) -> MigrationPhase:
    """The phase of a migration job from one statistics snapshot.

    * the job failed -> FAILED; it was aborted -> CANCELLED (libvirt says so before the
      migrate call returns its error: never FINISHING then)
    * no job (yet) and nothing moved -> STARTING; no job any more but data moved -> FINISHING
      (libvirt completed the job, the migrate call has not returned yet)
    * post-copy requested or reported -> POSTCOPY
    * memory not started (nothing processed) and disks being copied -> DISK_MIRROR
      (libvirt mirrors non-shared disks first, then starts memory)
    * memory started -> PRECOPY

    >>> phase_of(JobStats(active=True, disk_total=1 << 30, disk_remaining=1 << 29)).name
    'DISK_MIRROR'
    >>> phase_of(JobStats(job_type="cancelled", memory_processed=1 << 20)).name
    'CANCELLED'
    """
    if stats.job_type in _ENDED_BADLY:
        return _ENDED_BADLY[stats.job_type]
    moved = stats.memory_processed > 0 or stats.disk_processed > 0
    if not stats.active:
        return MigrationPhase.FINISHING if moved else MigrationPhase.STARTING
    if postcopy_started or stats.postcopy:
        return MigrationPhase.POSTCOPY
    if stats.memory_processed == 0:
        if stats.disk_total > 0:
            return MigrationPhase.DISK_MIRROR
        return MigrationPhase.STARTING
    return MigrationPhase.PRECOPY


def later_phase(a: MigrationPhase, b: MigrationPhase) -> MigrationPhase:
    """The later of two phases; an end (completed, failed, cancelled) is later than any
    running phase, and the first end seen stays.

    >>> later_phase(MigrationPhase.PRECOPY, MigrationPhase.CANCELLED).name
    'CANCELLED'
    """
    return a if _ORDER[a] >= _ORDER[b] else b


def next_progress(
    prev: MigrationProgress | None,
    phase: MigrationPhase,
    stats: JobStats,
    *,
    max_downtime_ms: int = 0,
    elapsed_ms: int = 0,
) -> MigrationProgress:
    """The snapshot to report after ``prev``: progress never runs backwards within a phase.

    The phase never moves back; within one phase, processed bytes and the iteration never
    drop and, within one iteration, what remains never grows (a new pre-copy iteration
    re-dirties memory and may legitimately show more left). ``elapsed_ms`` stands in when
    libvirt reports no elapsed time.

    >>> s = JobStats(active=True, memory_total=100, memory_processed=60, memory_remaining=40, iteration=1)
    >>> p = next_progress(None, MigrationPhase.PRECOPY, s)
    >>> q = next_progress(p, MigrationPhase.PRECOPY, replace(s, memory_processed=50, memory_remaining=45))
    >>> q.stats.memory_processed, q.stats.memory_remaining
    (60, 40)
    """
    elapsed = stats.time_elapsed_ms or elapsed_ms
    if prev is None:
        return MigrationProgress(phase, replace(stats, time_elapsed_ms=elapsed), max_downtime_ms)
    phase = later_phase(prev.phase, phase)
    elapsed = max(elapsed, prev.stats.time_elapsed_ms)
    if phase != prev.phase:
        return MigrationProgress(phase, replace(stats, time_elapsed_ms=elapsed), max_downtime_ms)
    old = prev.stats
    iteration = max(stats.iteration, old.iteration)
    same_iteration = iteration == old.iteration
    return MigrationProgress(
        phase,
        replace(
            stats,
            time_elapsed_ms=elapsed,
            memory_processed=max(stats.memory_processed, old.memory_processed),
            disk_processed=max(stats.disk_processed, old.disk_processed),
            memory_remaining=min(stats.memory_remaining, old.memory_remaining)
            if same_iteration
            else stats.memory_remaining,
            disk_remaining=min(stats.disk_remaining, old.disk_remaining) if same_iteration else stats.disk_remaining,
            iteration=iteration,
        ),
        max_downtime_ms,
    )


def changed(prev: MigrationProgress | None, new: MigrationProgress) -> bool:
    """Worth reporting: anything but the elapsed time differs."""
    if prev is None:
        return True
    return (prev.phase, prev.max_downtime_ms, replace(prev.stats, time_elapsed_ms=0)) != (
        new.phase,
        new.max_downtime_ms,
        replace(new.stats, time_elapsed_ms=0),
    )
