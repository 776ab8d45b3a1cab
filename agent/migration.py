"""The migration driver: runs one libvirt migration job, applies its convergence policy and
reports its progress.

The policy is data and pure functions (``ferry.convergence``); the progress snapshots come from
``ferry.agent.progress``. This module is the loop that applies them through the Hypervisor port:
``MigrationDriver.run`` starts ``Hypervisor.migrate`` as a task, polls ``job_stats`` every
progress interval, folds each snapshot into the policy's ``Watch``, does the one action
``next_action`` asks for (abort on timeout, set a max-downtime step, switch to post-copy), yields
a ``MigrationProgress`` whenever something changed, and ends with a ``MigrationResult``
(completed-job figures read on the target, and what is left of the domain on the source).

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
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ferry.agent.progress import changed, disk_bytes_copied, next_progress, phase_of
from ferry.convergence import (
    Action,
    ConvergencePolicy,
    Watch,
    completion_timeout_s,
    due_downtime_step,
    max_downtime_ms,
    migrate_options,
    next_action,
    observe,
    policy_from_options,
)
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

# ---------------------------------------------------------------- the loop


@dataclass(frozen=True)
class DriverPolicy:
    progress_interval_s: float = 0.5
    # the convergence policy under a request's options (policy_from_options): the completion
    # timeout per GiB and its minimum, the stall rule
    defaults: ConvergencePolicy = ConvergencePolicy()
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
    progress_interval_s: float = 0.0  # 0 = the driver's
    migration_id: str = ""
    domain_name: str = ""  # for the observer (metrics labels): the name, when ``domain`` is a UUID
    # how to bring the job to an end; None: from the options (policy_from_options over the
    # driver's defaults), as every Migrate call asks today
    convergence: ConvergencePolicy | None = None


Event = MigrationProgress | MigrationResult


@dataclass(frozen=True)
class JobKey:
    """One job the driver runs: the caller's migration id and the domain's name."""

    migration_id: str
    domain: str


class JobObserver(Protocol):
    """What the driver tells about the jobs it runs (the agent's metrics: ``agent/metrics.py``).

    ``job_started`` once the libvirt job was started, ``job_progress`` with every snapshot,
    ``job_ended`` once with how it ended: ``completed``, ``failed``, ``timed_out``, ``aborted``,
    or ``left_running`` (the caller stopped watching; the job goes on unwatched).
    """

    def job_started(self, job: JobKey) -> None: ...

    def job_progress(self, job: JobKey, progress: MigrationProgress) -> None: ...

    def job_ended(self, job: JobKey, outcome: str) -> None: ...


class NoJobObserver:
    """The default: nobody listens."""

    def job_started(self, job: JobKey) -> None:
        pass

    def job_progress(self, job: JobKey, progress: MigrationProgress) -> None:
        pass

    def job_ended(self, job: JobKey, outcome: str) -> None:
        pass


class MigrationDriver:
    """Runs migrations on one host's hypervisor. Stateless between migrations."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        *,
        clock: Callable[[], float] = time.monotonic,
        policy: DriverPolicy = DriverPolicy(),
        observer: JobObserver | None = None,
    ) -> None:
        self._hv = hypervisor
        self._clock = clock
        self._policy = policy
        self._observer = observer or NoJobObserver()

    async def run(self, req: MigrationRequest) -> AsyncIterator[Event]:
        """Yield progress snapshots while the job runs, then one MigrationResult.

        Raises the job's error (Aborted when aborted, DeadlineExceeded MIGRATION_TIMEOUT when
        the completion timeout hit, others per the libvirt error table). The observer hears of
        the job from its first snapshot (the job has started) to its end.
        """
        key = JobKey(req.migration_id, req.domain_name or req.domain)
        started, outcome = False, "failed"
        try:
            async with contextlib.aclosing(self._run(req)) as events:
                async for event in events:
                    if not started:
                        started = True
                        self._observer.job_started(key)
                    if isinstance(event, MigrationResult):
                        outcome = "completed"
                    else:
                        self._observer.job_progress(key, event)
                    yield event
        except DeadlineExceeded:
            outcome = "timed_out"
            raise
        except Aborted:
            outcome = "aborted"
            raise
        except (GeneratorExit, asyncio.CancelledError):
            if outcome != "completed":
                outcome = "left_running"  # _run logged that the job keeps running
            raise
        finally:
            if started:
                self._observer.job_ended(key, outcome)

    async def _run(self, req: MigrationRequest) -> AsyncGenerator[Event, None]:
        domain = await self._hv.get_domain(req.domain)
        if not req.options.offline and not domain.state.is_active:
            raise FailedPrecondition(
                f"domain {domain.name} is {domain.state.name.lower()}, not running: cannot migrate live",
                reason="DOMAIN_NOT_RUNNING",
                hint="start the domain first, or migrate it offline (definition only)",
            )
        policy = req.convergence
        if policy is None:
            policy = policy_from_options(req.options, base=self._policy.defaults)
        opts = migrate_options(policy, req.options)
        timeout = completion_timeout_s(policy, domain.memory_bytes, req.disk_bytes)
        interval = req.progress_interval_s or self._policy.progress_interval_s
        started = self._clock()
        watch = Watch(started_at=started, timeout_s=timeout)
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
        progress = next_progress(
            None, MigrationPhase.STARTING, JobStats(), max_downtime_ms=max_downtime_ms(policy, watch)
        )
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
                    action = next_action(policy, watch, JobStats(), progress.phase, now)
                    watch = await self._act(action, policy, watch, now, domain.uuid, task)
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
                    progress,
                    phase,
                    stats,
                    max_downtime_ms=max_downtime_ms(policy, watch),
                    elapsed_ms=int((now - started) * 1000),
                )
                if changed(progress, snapshot):
                    progress = snapshot
                    yield snapshot
                switched = watch.postcopy_started
                action = next_action(policy, watch, stats, phase, now)
                watch = await self._act(action, policy, watch, now, domain.uuid, task)
                if watch.postcopy_started and not switched:
                    # report the switch now: statistics may not answer again before the end
                    progress = next_progress(
                        progress,
                        MigrationPhase.POSTCOPY,
                        replace(stats, postcopy=True),
                        max_downtime_ms=max_downtime_ms(policy, watch),
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

    async def _act(
        self, action: Action, policy: ConvergencePolicy, w: Watch, now: float, uuid: str, task: asyncio.Task[None]
    ) -> Watch:
        """Do ``action`` through the hypervisor; the watch after it."""
        if action is Action.SET_MAX_DOWNTIME:
            step = due_downtime_step(policy, w, now)
            if step is None:  # next_action asks for one only when a step is due
                return w
            ms = policy.downtime_steps[step].max_downtime_ms
            try:
                await self._hv.set_max_downtime(uuid, ms)
                log.info("max downtime of %s set to %d ms", uuid, ms)
            except FerryError as exc:
                log.warning("cannot set max downtime of %s: %s: %s", uuid, exc.reason, exc)
            return replace(w, downtime_steps_applied=step + 1)
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
                return replace(w, postcopy_refused=True)
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
