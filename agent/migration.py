"""The migration driver: runs one libvirt migration job and reports its progress.

Pure policy first (plain arguments, clock passed in, tested with tables in
tests/unit/test_migration_policy.py), then the progress loop that applies it:

* ``phase_of``: which phase a job is in, from its statistics.
* ``next_progress``: the snapshot to report; progress never runs backwards within a phase.
* ``completion_timeout_s``: the time a migration may take (Nova's 800 s per GiB, at least 120 s).
* ``stalled``: pre-copy makes no headway (what is left at each iteration stops shrinking).
* ``decide``: the one action for this poll (abort on timeout, apply max downtime, switch to
  post-copy on stall, or nothing), from an immutable ``Watch`` of what the loop remembers.

The loop (``MigrationDriver.run``) starts ``Hypervisor.migrate`` as a task, polls ``job_stats``
every progress interval, yields a ``MigrationProgress`` whenever something changed, and ends
with a ``MigrationResult`` (completed-job figures read on the target, and what is left of the
domain on the source).

Cancellation (the client closed the Migrate stream, or the agent's RPC was cancelled): the
libvirt job is *not* aborted. A migration half done is usually best left to finish -- aborting
throws away the copied state, and a client that lost its connection (coordinator fail-over,
network blip) has not decided to stop. The job keeps running, the agent logs that it was left
running and, later, how it ended; the caller decides through AbortMigration / GetJob. The
hypervisor call keeps its own hard limit (completion timeout plus a margin), so an orphaned job
that never converges is still aborted in the end.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace

from ferry.convert import completed_job_from_stats
from ferry.errors import Aborted, DeadlineExceeded, FailedPrecondition, FerryError, NotFound
from ferry.model import (
    CompletedJob,
    DomainState,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    MigrationResult,
)
from ferry.ports import Hypervisor

log = logging.getLogger(__name__)

GiB = 1 << 30

# ---------------------------------------------------------------- pure policy

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


def disk_bytes_copied(reported: int, seen: JobStats, planned: int) -> int:
    """The disk bytes of a migration that completed: the target does not count them, and a job
    shorter than a statistics poll never shows them. So: the most of the completed job's own
    figure, the disk bytes the source last reported processed, and the last disk total seen (a
    completed copy processed all of it); when nothing was seen, the bytes planned for the copy.

    >>> disk_bytes_copied(0, JobStats(disk_total=1000, disk_processed=900), 800)
    1000
    >>> disk_bytes_copied(0, JobStats(), 800)
    800
    >>> disk_bytes_copied(0, JobStats(), 0)     # nothing copied (shared storage)
    0
    """
    return max(reported, seen.disk_processed, seen.disk_total) or planned


def completion_timeout_s(
    options: MigrationOptions, memory_bytes: int, disk_bytes: int, *, per_gib_s: float = 800.0, minimum_s: float = 120.0
) -> float:
    """How long the migration may take before it is aborted.

    The caller's ``completion_timeout_s`` when given; otherwise ``per_gib_s`` for every GiB of
    RAM plus copied disk (as Nova's live_migration_completion_timeout), at least ``minimum_s``.

    >>> completion_timeout_s(MigrationOptions(), 256 << 20, 0)
    200.0
    >>> completion_timeout_s(MigrationOptions(), 64 << 20, 0)
    120.0
    >>> completion_timeout_s(MigrationOptions(completion_timeout_s=30), 8 << 30, 0)
    30.0
    """
    if options.completion_timeout_s:
        return float(options.completion_timeout_s)
    return float(max(minimum_s, math.ceil(per_gib_s * (memory_bytes + disk_bytes) / GiB)))


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
    SET_MAX_DOWNTIME = "set-max-downtime"
    START_POSTCOPY = "start-postcopy"
    ABORT_TIMEOUT = "abort-timeout"


@dataclass(frozen=True)
class Watch:
    """What the progress loop remembers between polls; each poll makes a new one."""

    started_at: float
    timeout_s: float
    max_downtime_ms: int = 0
    downtime_applied: bool = False
    postcopy_on_stall: bool = False  # allowed and asked for
    postcopy_started: bool = False
    stall_iterations: int = 3
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


def decide(w: Watch, stats: JobStats, phase: MigrationPhase, now: float) -> Action:
    """The one action for this poll, most urgent first.

    * past the completion timeout -> ABORT_TIMEOUT, except in post-copy: the guest already
      runs on the target and an abort would lose it, so it is left to finish
    * the job is active and max downtime not yet applied -> SET_MAX_DOWNTIME
    * post-copy on stall wanted, pre-copy stalled -> START_POSTCOPY
    """
    if now - w.started_at >= w.timeout_s and phase != MigrationPhase.POSTCOPY and not w.postcopy_started:
        return Action.ABORT_TIMEOUT
    if stats.active and w.max_downtime_ms and not w.downtime_applied:
        return Action.SET_MAX_DOWNTIME
    if (
        w.postcopy_on_stall
        and not w.postcopy_started
        and phase == MigrationPhase.PRECOPY
        and stalled(w.peaks, w.stall_iterations)
    ):
        return Action.START_POSTCOPY
    return Action.CONTINUE


# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class DriverPolicy:
    progress_interval_s: float = 0.5
    timeout_per_gib_s: float = 800.0
    min_timeout_s: float = 120.0
    stall_iterations: int = 3
    abort_wait_s: float = 60.0  # after our abort, how long the job may take to end
    call_margin_s: float = 60.0  # hard limit of the migrate call beyond the completion timeout


@dataclass(frozen=True)
class MigrationRequest:
    domain: str  # name or UUID on this (source) host
    target_uri: str
    options: MigrationOptions
    destination_xml: str = ""
    migrate_disks: tuple[str, ...] = ()
    migrate_uri: str = ""
    disk_bytes: int = 0  # bytes to copy: the derived completion timeout; the completed
    # job's disk figure when no poll saw the copy
    progress_interval_s: float = 0.0  # 0 = the policy's
    migration_id: str = ""


Event = MigrationProgress | MigrationResult


class MigrationDriver:
    """Runs migrations on one host's hypervisor. Stateless between migrations."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: DriverPolicy = DriverPolicy(),
    ) -> None:
        self._hv = hypervisor
        self._clock = clock
        self._policy = policy

    async def run(self, req: MigrationRequest) -> AsyncIterator[Event]:
        """Yield progress snapshots while the job runs, then one MigrationResult.

        Raises the job's error (Aborted when aborted, DeadlineExceeded MIGRATION_TIMEOUT when
        the completion timeout hit, others per the libvirt error table).
        """
        domain = await self._hv.get_domain(req.domain)
        if not req.options.offline and not domain.state.is_active:
            raise FailedPrecondition(
                f"domain {domain.name} is {domain.state.name.lower()}, not running: cannot migrate live",
                reason="DOMAIN_NOT_RUNNING",
                hint="start the domain first, or migrate it offline (definition only)",
            )
        opts = req.options
        timeout = completion_timeout_s(
            opts,
            domain.memory_bytes,
            req.disk_bytes,
            per_gib_s=self._policy.timeout_per_gib_s,
            minimum_s=self._policy.min_timeout_s,
        )
        interval = req.progress_interval_s or self._policy.progress_interval_s
        started = self._clock()
        watch = Watch(
            started_at=started,
            timeout_s=timeout,
            max_downtime_ms=opts.max_downtime_ms,
            postcopy_on_stall=opts.allow_postcopy and opts.postcopy_on_stall,
            stall_iterations=self._policy.stall_iterations,
        )
        log.info(
            "migrating %s (%s) to %s: storage %s, disks %s, timeout %.0f s%s",
            domain.name,
            domain.uuid,
            req.target_uri,
            opts.storage.value,
            ",".join(req.migrate_disks) or "-",
            timeout,
            f", migration {req.migration_id}" if req.migration_id else "",
        )
        task = asyncio.create_task(
            self._hv.migrate(
                domain.uuid,
                target_uri=req.target_uri,
                destination_xml=req.destination_xml,
                options=opts,
                migrate_disks=list(req.migrate_disks),
                migrate_uri=req.migrate_uri,
                timeout_s=timeout + self._policy.call_margin_s,
            ),
            name=f"migrate {domain.name}",
        )
        progress = next_progress(None, MigrationPhase.STARTING, JobStats(), max_downtime_ms=opts.max_downtime_ms)
        last_stats = JobStats()
        poll: asyncio.Task[JobStats | None] | None = None
        try:
            yield progress
            while True:
                await asyncio.wait({task}, timeout=interval)
                if task.done():
                    break
                # a statistics call may block (libvirt holds the domain's job lock for a
                # while during a disk mirror): never let it hide the end of the job
                poll = asyncio.create_task(self._poll(domain.uuid))
                await asyncio.wait({task, poll}, return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    break
                stats, poll = poll.result(), None
                now = self._clock()
                if stats is None:  # no statistics this time: only the clock can decide
                    watch = await self._act(decide(watch, JobStats(), progress.phase, now), watch, domain.uuid, task)
                    continue
                if stats.active:
                    last_stats = replace(
                        stats,
                        disk_total=max(stats.disk_total, last_stats.disk_total),
                        disk_processed=max(stats.disk_processed, last_stats.disk_processed),
                    )
                watch = observe(watch, stats)
                phase = phase_of(stats, postcopy_started=watch.postcopy_started)
                snapshot = next_progress(
                    progress, phase, stats, max_downtime_ms=opts.max_downtime_ms, elapsed_ms=int((now - started) * 1000)
                )
                if changed(progress, snapshot):
                    progress = snapshot
                    yield snapshot
                switched = watch.postcopy_started
                watch = await self._act(decide(watch, stats, phase, now), watch, domain.uuid, task)
                if watch.postcopy_started and not switched:
                    # report the switch now: statistics may not answer again before the end
                    progress = next_progress(
                        progress,
                        MigrationPhase.POSTCOPY,
                        replace(stats, postcopy=True),
                        max_downtime_ms=opts.max_downtime_ms,
                        elapsed_ms=int((now - started) * 1000),
                    )
                    yield progress
            task.result()  # raises the job's error
        finally:
            if poll is not None:
                poll.cancel()
            if not task.done():
                log.warning(
                    "no longer watching the migration of %s (%s) to %s (call ended or cancelled); "
                    "the libvirt job keeps running: stop it with AbortMigration",
                    domain.name,
                    domain.uuid,
                    req.target_uri,
                )
                task.add_done_callback(_log_orphan_end(domain.name))
        job = await self._completed_job(req.target_uri, domain.uuid, last_stats, watch, started)
        job = replace(job, disk_processed=disk_bytes_copied(job.disk_processed, last_stats, req.disk_bytes))
        state, defined = await self._leftover(domain.uuid)
        log.info(
            "migrated %s to %s in %d ms (downtime %d ms); on the source: %s",
            domain.name,
            req.target_uri,
            job.time_elapsed_ms,
            job.downtime_ms,
            "nothing" if state is None else f"{state.name.lower()}{', defined' if defined else ''}",
        )
        yield MigrationResult(job=job, source_state=state, source_defined=defined)

    async def _poll(self, uuid: str) -> JobStats | None:
        try:
            return await self._hv.job_stats(uuid)
        except NotFound:
            return None  # the job ended and took the source definition with it
        except FerryError as exc:
            log.warning("cannot read job statistics of %s: %s: %s", uuid, exc.reason, exc)
            return None

    async def _act(self, action: Action, w: Watch, uuid: str, task: asyncio.Task[None]) -> Watch:
        if action is Action.SET_MAX_DOWNTIME:
            try:
                await self._hv.set_max_downtime(uuid, w.max_downtime_ms)
                log.info("max downtime of %s set to %d ms", uuid, w.max_downtime_ms)
            except FerryError as exc:
                log.warning("cannot set max downtime of %s: %s: %s", uuid, exc.reason, exc)
            return replace(w, downtime_applied=True)
        if action is Action.START_POSTCOPY:
            log.info(
                "pre-copy of %s stalls (left per iteration: %s): switching to post-copy",
                uuid,
                ", ".join(str(p >> 20) + " MiB" for p in w.peaks),
            )
            try:
                await self._hv.start_postcopy(uuid)
                return replace(w, postcopy_started=True)
            except FerryError as exc:
                log.warning("cannot switch %s to post-copy: %s: %s", uuid, exc.reason, exc)
                return replace(w, postcopy_on_stall=False)
        if action is Action.ABORT_TIMEOUT:
            await self._abort_on_timeout(w, uuid, task)
        return w

    async def _abort_on_timeout(self, w: Watch, uuid: str, task: asyncio.Task[None]) -> None:
        """Abort the job and raise DeadlineExceeded -- unless it finished in the meantime."""
        log.warning("migration of %s did not complete in %.0f s: aborting it", uuid, w.timeout_s)
        hint = (
            "the guest dirties memory faster than it can be sent: allow post-copy or auto-converge, "
            "raise the bandwidth or max downtime, or give it a longer completion timeout"
        )
        err = DeadlineExceeded(
            f"migration of {uuid} did not complete within {w.timeout_s:.0f} s", reason="MIGRATION_TIMEOUT", hint=hint
        )
        try:
            await self._hv.abort_job(uuid)
        except FerryError as exc:
            log.warning("abort of %s after its timeout failed: %s: %s", uuid, exc.reason, exc)
        done, _ = await asyncio.wait({task}, timeout=self._policy.abort_wait_s)
        if not done:
            raise DeadlineExceeded(
                f"{err.message}; the abort did not end the job within {self._policy.abort_wait_s:.0f} s",
                reason="MIGRATION_TIMEOUT",
                hint="check the job with GetJob and abort it again with AbortMigration",
            )
        if task.exception() is None:
            return  # it completed just before the abort: a success after all
        if isinstance(task.exception(), Aborted):
            raise err
        raise err from task.exception()

    async def _completed_job(
        self, target_uri: str, uuid: str, last: JobStats, w: Watch, started: float
    ) -> CompletedJob:
        try:
            stats = await self._hv.remote_completed_job(target_uri, uuid)
            if stats.job_type != "completed":
                raise NotFound(
                    f"no completed job of {uuid} on {target_uri} (job type {stats.job_type})",
                    reason="COMPLETED_JOB_MISSING",
                )
            # (the disk bytes: the caller's ``disk_bytes_copied``; the target does not count them)
            return completed_job_from_stats(stats, postcopy=w.postcopy_started)
        except FerryError as exc:
            log.warning(
                "cannot read the completed job of %s on %s (%s: %s); reporting the last statistics seen",
                uuid,
                target_uri,
                exc.reason,
                exc,
            )
            elapsed = int((self._clock() - started) * 1000)
            return replace(
                completed_job_from_stats(last, postcopy=w.postcopy_started),
                time_elapsed_ms=max(elapsed, last.time_elapsed_ms),
            )

    async def _leftover(self, uuid: str) -> tuple[DomainState | None, bool]:
        try:
            left = await self._hv.find_domain(uuid=uuid)
        except FerryError as exc:
            log.warning("cannot look up %s on the source after migrating: %s: %s", uuid, exc.reason, exc)
            return DomainState.UNKNOWN, False
        if left is None:
            return None, False
        return left.state, left.persistent


def _log_orphan_end(name: str) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            log.warning("left-running migration of %s: its call was cancelled", name)
        elif task.exception() is not None:
            exc = task.exception()
            reason = exc.reason if isinstance(exc, FerryError) else type(exc).__name__
            log.warning("left-running migration of %s ended with %s: %s", name, reason, exc)
        else:
            log.info("left-running migration of %s completed", name)

    return done
