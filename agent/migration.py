"""The migration driver: runs one libvirt migration job, applies its convergence policy and
reports its progress.

The policy is data and pure functions (``ferry.convergence``); the progress snapshots come from
``ferry.agent.progress``. This module is the loop that applies them through the Hypervisor port:
``MigrationDriver.run`` starts ``Hypervisor.migrate`` as a task, polls ``job_stats`` every
progress interval, folds each snapshot into the policy's ``Watch``, does the one step
``next_action`` asks for (abort on timeout, set a max-downtime step, switch to post-copy, pause
the guest to force completion), yields a ``MigrationProgress`` (with an ETA) whenever something
changed and a ``PolicyAction`` for every step taken (with its reason), and ends with a
``MigrationResult`` (completed-job figures read on the target, and what is left of the domain on
the source).

Operators reach a running migration through its ``Control`` (the servicer's TuneMigration): a
force-complete request (the loop carries it out as a policy step and reports it), a max downtime
they set (the ladder goes on above it only), a switch to post-copy they made.

An abort that came before libvirt showed the job (the servicer's AbortMigration found none to
abort: libvirt registers the job a moment after the migrate call reaches it, and the call may wait
on the target before that) is on the ``Control`` too: the job must not run. Before the migrate
call the loop does not make it; after, it ends at once with Aborted (MIGRATION_ABORTED) and leaves
a watcher that aborts the job as soon as libvirt shows it, until the call ended (libvirt honours an
abort before QEMU's migration starts). So a caller that saw the abort answered and the stream end
with no job running can count on the guest staying where it is.

Post-copy recovery: when the link breaks during post-copy, libvirt marks the source "paused
(post-copy failed)" (the guest waits, paused, on the target). The loop then probes the target
and, once it answers, repeats the migrate call with libvirt's post-copy recovery flag, until it
completes or ``DriverPolicy.postcopy_recovery_s`` passes. The first call may still be waiting
for the target when the link comes back (seen: for minutes); the resumed call does not wait for it.

Cancellation (the client closed the Migrate stream, or the agent's RPC was cancelled): the
libvirt job is *not* aborted. A migration half done is usually best left to finish -- aborting
throws away the copied state, and a client that lost its connection (coordinator fail-over,
network blip) has not decided to stop. The job keeps running, the agent logs that it was left
running and, later, how it ended; the caller decides through AbortMigration / GetJob. The
hypervisor call keeps its own hard limit (completion timeout plus a margin), so an orphaned job
that never converges is still aborted in the end. A job the loop stops watching before it ended
(cancelled, or given up on after an abort that did not end it) hands its end to the servicer
through ``Control.left_running``: what is recorded of the job's end waits for that, not for the
loop's error.

A guest force-complete paused is never left paused: when the loop leaves while the job runs, it
is resumed on the source; once the job completed, it arrives paused and is resumed on the target
before anything else is asked of the target. Either resume runs to its end even when the caller
is cancelled meanwhile (``_to_the_end``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from ferry.agent.progress import changed, memory_pending, next_progress, phase_of
from ferry.convergence import (
    Action,
    ConvergencePolicy,
    Step,
    Watch,
    after_operator_downtime,
    completion_timeout_s,
    eta_s,
    max_downtime_ms,
    migrate_options,
    next_action,
    observe,
    policy_from_options,
)
from ferry.convert import completed_job_from_stats
from ferry.errors import Aborted, DeadlineExceeded, FailedPrecondition, FerryError, Internal, NotFound
from ferry.model import (
    CompletedJob,
    DomainInfo,
    DomainState,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    MigrationResult,
    PolicyAction,
    StorageMode,
    disk_bytes_copied,
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
    # an abort that came before the job showed: how often the job is looked for, to abort it as it
    # starts (at most the progress interval); a job takes longer than this from its start to its end
    abort_poll_s: float = 0.02
    call_margin_s: float = 60.0  # hard limit of the migrate call beyond the completion timeout
    postcopy_recovery_s: float = 900.0  # how long a broken post-copy is resumed before giving up
    resume_backoff_s: tuple[float, ...] = (1.0, 2.0, 3.0)  # between resume attempts (the last repeats)
    # a completed migration's copy libvirt left on the source: how long it may take to stop (it
    # is then undefined), looked at every leftover_poll_s
    leftover_wait_s: float = 30.0
    leftover_poll_s: float = 0.5


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
    # driver's defaults), as an older coordinator's Migrate call asks
    convergence: ConvergencePolicy | None = None
    predicted_converges: bool | None = None  # the prediction made before the start (None: none)


@dataclass
class Control:
    """What an operator asked of one running migration (the servicer's TuneMigration), read by
    the loop at every poll; and what the loop tells the servicer back."""

    force_requested: str = ""  # who asked to force-complete
    operator_downtime_ms: int = 0  # a max downtime set by an operator (0: none)
    postcopy_started: bool = False  # an operator switched to post-copy
    # the job copies disks: their copy keeps the speed it started at (libvirt refuses to change
    # it while the migration runs); a bandwidth tune changes the memory's only
    copies_disks: bool = False
    # set by the loop when it stops watching before it saw the job end (the caller went away, an
    # abort did not end the job in time): the job's end, True when the migration completed (the
    # guest runs on the target), False when it failed; cancelled when nobody can tell
    left_running: asyncio.Future[bool] | None = None
    # set by the servicer's AbortMigration (before it asks libvirt to abort): acted on by the loop
    # only while it has seen no job of this migration (the abort found none: see the module
    # docstring); a job the loop saw is libvirt's to abort
    abort_requested: bool = False


Event = MigrationProgress | PolicyAction | MigrationResult


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

    async def run(self, req: MigrationRequest, control: Control | None = None) -> AsyncGenerator[Event, None]:
        """Yield progress snapshots and the policy's actions while the job runs, then one
        MigrationResult.

        Raises the job's error (Aborted when aborted, DeadlineExceeded MIGRATION_TIMEOUT when
        the completion timeout hit, Internal POSTCOPY_FAILED when a broken post-copy could not
        be resumed, others per the libvirt error table). The observer hears of the job from its
        first snapshot (the job has started) to its end.
        """
        key = JobKey(req.migration_id, req.domain_name or req.domain)
        started, outcome = False, "failed"
        try:
            async with contextlib.aclosing(self._run(req, control)) as events:
                async for event in events:
                    if not started:
                        started = True
                        self._observer.job_started(key)
                    if isinstance(event, MigrationResult):
                        outcome = "completed"
                    elif isinstance(event, MigrationProgress):
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

    async def _run(self, req: MigrationRequest, control: Control | None) -> AsyncGenerator[Event, None]:
        domain = await self._hv.get_domain(req.domain)
        if not req.options.offline and not domain.state.is_active:
            raise FailedPrecondition(
                f"domain {domain.name} is {domain.state.name.lower()}, not running: cannot migrate live",
                reason="DOMAIN_NOT_RUNNING",
                hint="start the domain first, or migrate it offline (definition only)",
            )
        control = control if control is not None else Control()
        policy = req.convergence
        if policy is None:
            policy = policy_from_options(req.options, base=self._policy.defaults)
        opts = migrate_options(policy, req.options)
        control.copies_disks = opts.storage is not StorageMode.SHARED and not opts.offline
        timeout = completion_timeout_s(policy, domain.memory_bytes, req.disk_bytes)
        interval = req.progress_interval_s or self._policy.progress_interval_s
        started = self._clock()
        by = f"policy {policy.label}"
        watch = Watch(started_at=started, timeout_s=timeout, predicted_converges=req.predicted_converges)
        log.info(
            "migrating %s (%s) to %s: storage %s, disks %s, policy %s, timeout %.0f s%s",
            domain.name,
            domain.uuid,
            req.target_uri,
            opts.storage.value,
            ",".join(req.migrate_disks) or "-",
            policy.label,
            timeout,
            f", migration {req.migration_id}" if req.migration_id else "",
        )

        def migrate(resume: bool) -> asyncio.Task[None]:
            return asyncio.create_task(
                self._hv.migrate(
                    domain.uuid,
                    target_uri=req.target_uri,
                    destination_xml=req.destination_xml,
                    options=opts,
                    migrate_disks=list(req.migrate_disks),
                    migrate_uri=req.migrate_uri,
                    timeout_s=timeout + self._policy.call_margin_s,
                    policy=policy,
                    resume_postcopy=resume,
                ),
                name=f"{'resume ' if resume else ''}migrate {domain.name}",
            )

        if control.abort_requested:  # aborted before it started: it never starts
            raise _aborted_before_start(domain.name)
        first = migrate(False)
        calls: set[asyncio.Task[None]] = {first}  # migrate calls in flight (the first, a resume)
        recovery: Recovery | None = None  # a broken post-copy being resumed
        resume: asyncio.Task[None] | None = None  # the resume call in flight
        progress = next_progress(
            None, MigrationPhase.STARTING, JobStats(), max_downtime_ms=max_downtime_ms(policy, watch)
        )
        last_stats = JobStats()
        poll: asyncio.Task[JobStats | None] | None = None
        guarded = False  # aborted before the job showed: a watcher aborts it once it does
        try:
            yield progress
            while True:
                if calls:
                    await asyncio.wait(calls, timeout=interval)
                else:
                    await asyncio.sleep(interval)
                ended = {t for t in calls if t.done()}
                calls -= ended
                if any(t.exception() is None for t in ended):
                    break  # the job completed (a resumed call may have completed a broken post-copy)
                for failed in ended:
                    exc = failed.exception()
                    assert exc is not None
                    if not watch.postcopy_started:
                        raise exc
                    # a failed call in post-copy: did the link break (the guest waits on the target)?
                    recovery, note = await self._broken_postcopy(recovery, exc, domain.uuid, req.target_uri)
                    if note is not None:
                        yield note
                watch = _apply_control(policy, watch, control)
                if control.abort_requested and not last_stats.active and not watch.postcopy_started:
                    # an abort came and no poll has seen the job: it has not started, or just did
                    # (then the abort itself found it). It must not run: end now, the call's job
                    # aborted as soon as libvirt shows it.
                    guarded = True
                    self._abort_once_started(domain, calls, interval)
                    raise _aborted_before_start(domain.name)
                # a statistics call may block (libvirt holds the domain's job lock for a
                # while during a disk mirror): never let it hide the end of the job
                poll = asyncio.create_task(self._poll(domain.uuid))
                await asyncio.wait({*calls, poll}, return_when=asyncio.FIRST_COMPLETED)
                if not poll.done() or any(t.done() for t in calls):
                    continue  # a call ended first: judge it before the statistics
                stats, poll = poll.result(), None
                if stats is not None:
                    stats = memory_pending(stats, domain.memory_bytes)
                now = self._clock()
                if recovery is not None:
                    self._give_up_when_late(recovery, domain.uuid, req.target_uri, now)
                if recovery is not None and (resume is None or resume.done()) and now >= recovery.next_at:
                    # (the first call may still wait on the target: a resume does not wait for it)
                    note = await self._try_resume(recovery, req.target_uri, domain.uuid, now)
                    if note is not None:
                        yield note
                        resume = migrate(True)
                        calls.add(resume)
                if stats is None:  # no statistics this time: only the clock can decide
                    step = next_action(policy, watch, JobStats(), progress.phase, now)
                    watch, done = await self._act(step, policy, watch, now, domain, calls, by)
                    if done is not None:
                        yield done
                    continue
                if stats.postcopy_failed and watch.postcopy_started and recovery is None:
                    # seen before the call failed (it may wait on the target for minutes)
                    recovery, note = await self._broken_postcopy(None, None, domain.uuid, req.target_uri)
                    if note is not None:
                        yield note
                if stats.active:
                    last_stats = replace(
                        stats,
                        disk_total=max(stats.disk_total, last_stats.disk_total),
                        disk_processed=max(stats.disk_processed, last_stats.disk_processed),
                    )
                watch = observe(watch, stats, now)
                phase = phase_of(stats, postcopy_started=watch.postcopy_started)
                eta = eta_s(policy, watch, stats, phase, now)
                snapshot = replace(
                    next_progress(
                        progress,
                        phase,
                        stats,
                        max_downtime_ms=max_downtime_ms(policy, watch),
                        elapsed_ms=int((now - started) * 1000),
                    ),
                    eta_ms=int(eta * 1000) if eta is not None else 0,
                )
                if changed(progress, snapshot):
                    progress = snapshot
                    yield snapshot
                switched = watch.postcopy_started
                step = next_action(policy, watch, stats, phase, now)
                watch, done = await self._act(step, policy, watch, now, domain, calls, by)
                if done is not None:
                    yield done
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
        except BaseException:
            call_end = _calls_ended(calls)  # (True: a call completed that the loop had not seen yet)
            if call_end is not False:
                control.left_running = _end_of(calls)
            if watch.paused:  # force-complete paused the guest: let it run where it is
                if call_end:
                    await _to_the_end(self._unpause_target(req.target_uri, domain.uuid))
                else:
                    await _to_the_end(self._unpause_source(domain.uuid))
                if call_end is None and control.left_running is not None:
                    # the switch-over may come before the source runs it again: it then lands paused
                    landed = self._unpause_target_once_landed(req.target_uri, domain.uuid)
                    control.left_running.add_done_callback(landed)
            raise
        finally:
            if poll is not None:
                poll.cancel()
            for t in calls:
                if t is first and recovery is not None:
                    log.info(
                        "the first migrate call of %s still waits on the target; left to end by itself", domain.name
                    )
                elif guarded:
                    log.info(
                        "the migration of %s was aborted before its job started; its migrate call is still out: "
                        "the job is aborted as soon as libvirt shows it",
                        domain.name,
                    )
                else:
                    log.warning(
                        "no longer watching the migration of %s (%s) to %s (call ended or cancelled); "
                        "the libvirt job keeps running: stop it with AbortMigration",
                        domain.name,
                        domain.uuid,
                        req.target_uri,
                    )
                t.add_done_callback(_log_orphan_end(domain.name))
        if watch.paused:  # it arrived paused: it runs again first, whether or not the caller still listens
            await _to_the_end(self._unpause_target(req.target_uri, domain.uuid))
        job = await self._completed_job(req.target_uri, domain.uuid, last_stats, watch, started)
        job = replace(job, disk_processed=disk_bytes_copied(job.disk_processed, last_stats, req.disk_bytes))
        state, defined = await self._leftover(domain.uuid)
        if req.options.undefine_source and not req.options.offline:
            state, defined = await self._remove_leftover(domain, state, defined)
            if _left(state, defined) and calls:
                self._remove_leftover_when_ended(domain, calls)
        log.info(
            "migrated %s to %s in %d ms (downtime %s); on the source: %s",
            domain.name,
            req.target_uri,
            job.time_elapsed_ms,
            f"{job.downtime_ms} ms" if job.downtime_measured else "not measured",
            "nothing" if state is None else f"{state.name.lower()}{', defined' if defined else ''}",
        )
        yield MigrationResult(job=job, source_state=state, source_defined=defined)

    def _abort_once_started(self, domain: DomainInfo, calls: set[asyncio.Task[None]], interval: float) -> None:
        """The watcher of a migration aborted before its job showed (the module docstring): while
        its migrate ``calls`` are out, look for the job every ``abort_poll_s`` (at most
        ``interval``) and abort it once libvirt shows it (again after a refusal)."""
        pending = tuple(calls)
        poll_s = min(interval, self._policy.abort_poll_s)

        async def watch() -> None:
            aborted = False
            while not all(t.done() for t in pending):
                stats = None if aborted else await self._poll(domain.uuid)
                if stats is not None and stats.active:
                    try:
                        aborted = await self._hv.abort_job(domain.uuid)
                        log.info("the job of %s, aborted before it started, showed: aborting it", domain.name)
                    except FerryError as exc:
                        log.warning("cannot abort the job of %s as it starts: %s: %s", domain.name, exc.reason, exc)
                await asyncio.wait(pending, timeout=poll_s)

        _in_background(watch())

    # ------------------------------------------------------------------ post-copy recovery

    async def _broken_postcopy(
        self, recovery: Recovery | None, exc: BaseException | None, uuid: str, target_uri: str
    ) -> tuple[Recovery, PolicyAction | None]:
        """A migrate call failed in post-copy (``exc``), or the statistics say the link broke
        (``exc`` None). A broken link leaves the source "paused (post-copy failed)": resume it
        (the Recovery, with the next attempt after a backoff). Anything else is the job's error:
        raised (then the coordinator looks where the guest is). Past the recovery time: raised."""
        stats = await self._poll(uuid)
        if stats is None or not stats.postcopy_failed:
            if exc is None:
                raise Internal(f"post-copy of {uuid} failed", reason="POSTCOPY_FAILED")
            raise exc
        now = self._clock()
        note = None
        if recovery is None:
            recovery = Recovery(since=now)
            why = f" ({exc.reason if isinstance(exc, FerryError) else type(exc).__name__})" if exc else ""
            note = PolicyAction(
                "postcopy-paused",
                f"the post-copy link to {target_uri} broke{why}: the guest waits, paused, on the target; "
                "resuming once the target answers",
                int((now - recovery.since) * 1000),
                "agent",
            )
            log.warning("post-copy of %s to %s broke%s; resuming once the target answers", uuid, target_uri, why)
        elif exc is not None:  # a resume attempt failed: try again after a backoff
            recovery.failures += 1
            backoff = self._policy.resume_backoff_s
            recovery.next_at = now + backoff[min(recovery.failures - 1, len(backoff) - 1)]
            log.info("resuming the post-copy of %s failed (%s); trying again", uuid, exc)
        if exc is not None:
            recovery.error = exc
        self._give_up_when_late(recovery, uuid, target_uri, now)
        return recovery, note

    def _give_up_when_late(self, recovery: Recovery, uuid: str, target_uri: str, now: float) -> None:
        if now - recovery.since <= self._policy.postcopy_recovery_s:
            return
        raise Internal(
            f"the post-copy migration of {uuid} to {target_uri} broke and could not be resumed in "
            f"{self._policy.postcopy_recovery_s:.0f} s" + (f": {recovery.error}" if recovery.error else ""),
            reason="POSTCOPY_FAILED",
            hint="the guest is paused on the target; once the link works: `virsh migrate --postcopy "
            "--postcopy-resume` on the source (never destroy either side: each holds part of its memory)",
        ) from recovery.error

    async def _try_resume(self, r: Recovery, target_uri: str, uuid: str, now: float) -> PolicyAction | None:
        """Probe the target: when it answers, a resume attempt may start (the action saying so);
        else the next probe after a backoff (None)."""
        try:
            await self._hv.probe_peer(target_uri)
        except FerryError as exc:
            r.failures += 1
            backoff = self._policy.resume_backoff_s
            r.next_at = now + backoff[min(r.failures - 1, len(backoff) - 1)]
            log.info("post-copy of %s: %s does not answer yet (%s)", uuid, target_uri, exc.reason)
            return None
        r.resumes += 1
        return PolicyAction(
            "postcopy-resume",
            f"{target_uri} answers again {now - r.since:.0f} s after the link broke: resuming post-copy "
            f"(attempt {r.resumes})",
            0,
            "agent",
        )

    async def _unpause_source(self, uuid: str) -> None:
        """Force-complete paused the guest and the job failed: let it run on the source again."""
        try:
            left = await self._hv.find_domain(uuid=uuid)
            if left is not None and left.state is DomainState.PAUSED:
                await self._hv.resume(uuid)
                log.info("the migration of %s failed after force-complete paused it: resumed on the source", uuid)
        except FerryError as exc:
            log.warning("cannot resume %s on the source after a failed migration: %s: %s", uuid, exc.reason, exc)

    async def _unpause_target(self, target_uri: str, uuid: str) -> None:
        """A guest paused on the source to force completion arrives paused: let it run there."""
        try:
            if await self._hv.remote_resume(target_uri, uuid):
                log.info("%s arrived paused on %s (force-complete paused it): resumed", uuid, target_uri)
        except FerryError as exc:
            log.warning("cannot resume %s on %s after force-complete: %s: %s", uuid, target_uri, exc.reason, exc)

    def _unpause_target_once_landed(self, target_uri: str, uuid: str) -> Callable[[asyncio.Future[bool]], None]:
        """For a job left running after force-complete paused its guest: once it completed, the
        guest may be paused on the target (``_unpause_target`` leaves a running one alone)."""

        def ended(end: asyncio.Future[bool]) -> None:
            if not end.cancelled() and end.result():
                _in_background(self._unpause_target(target_uri, uuid))

        return ended

    # ------------------------------------------------------------------ one poll

    async def _poll(self, uuid: str) -> JobStats | None:
        """This poll's statistics; None when they tell nothing: no job (yet, or any more: the
        source's job ends before the migrate call returns, and libvirt then reports an empty
        job, whose zeros would read as a progress that ran back to nothing)."""
        try:
            stats = await self._hv.job_stats(uuid)
            return None if _no_job(stats) else stats
        except NotFound:
            return None  # the job ended and took the source definition with it
        except FerryError as exc:
            log.warning("cannot read job statistics of %s: %s: %s", uuid, exc.reason, exc)
            return None

    async def _act(
        self,
        step: Step,
        policy: ConvergencePolicy,
        w: Watch,
        now: float,
        domain: DomainInfo,
        calls: set[asyncio.Task[None]],
        by: str,
    ) -> tuple[Watch, PolicyAction | None]:
        """Do ``step`` through the hypervisor; the watch after it and what was done (None: nothing)."""
        uuid = domain.uuid
        elapsed = int((now - w.started_at) * 1000)

        def done(reason: str = "") -> PolicyAction:
            return PolicyAction(step.action.value, reason or step.reason, elapsed, by)

        if step.action is Action.SET_MAX_DOWNTIME:
            try:
                await self._hv.set_max_downtime(uuid, step.max_downtime_ms)
                log.info("max downtime of %s set to %d ms: %s", uuid, step.max_downtime_ms, step.reason)
            except FerryError as exc:
                log.warning("cannot set max downtime of %s: %s: %s", uuid, exc.reason, exc)
                return replace(w, downtime_steps_applied=step.ladder_index + 1), done(
                    f"{step.reason} (refused: {exc.reason})"
                )
            return replace(w, downtime_steps_applied=step.ladder_index + 1), done()
        if step.action is Action.START_POSTCOPY:
            log.info("%s: %s", uuid, step.reason)
            try:
                await self._hv.start_postcopy(uuid)
                return replace(w, postcopy_started=True), done()
            except FerryError as exc:
                log.warning("cannot switch %s to post-copy: %s: %s", uuid, exc.reason, exc)
                return replace(w, postcopy_refused=True), done(f"{step.reason} (refused: {exc.reason}: {exc.message})")
        if step.action is Action.PAUSE_GUEST:
            log.info("%s: %s", uuid, step.reason)
            try:
                await self._hv.suspend(uuid)
            except FerryError as exc:
                log.warning("cannot pause %s: %s: %s", uuid, exc.reason, exc)
                return replace(w, paused=True), done(f"{step.reason} (refused: {exc.reason})")
            return replace(w, paused=True), done()
        if step.action is Action.ABORT_TIMEOUT:
            await self._abort_on_timeout(domain, calls, step.reason)
            return w, done()
        return w, None

    async def _abort_on_timeout(self, domain: DomainInfo, calls: set[asyncio.Task[None]], reason: str) -> None:
        """Abort the job and raise DeadlineExceeded -- unless it finished in the meantime."""
        uuid = domain.uuid
        log.warning("migration of %s (%s): %s", domain.name, uuid, reason)
        hint = (
            "the guest dirties memory faster than it can be sent: use a policy that allows post-copy or "
            "force-complete, raise the bandwidth or max downtime, or give it a longer completion timeout"
        )
        err = DeadlineExceeded(f"migration of {domain.name}: {reason}", reason="MIGRATION_TIMEOUT", hint=hint)
        try:
            await self._hv.abort_job(uuid)
        except FerryError as exc:
            log.warning("abort of %s after its timeout failed: %s: %s", uuid, exc.reason, exc)
        if not calls:
            raise err
        task = next(iter(calls))
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
            log.info(
                "cannot read the completed job of %s on %s (%s: %s); reporting the last statistics seen%s",
                uuid,
                target_uri,
                exc.reason,
                exc,
                " (after post-copy libvirt keeps none)" if w.postcopy_started else "",
            )
            elapsed = int((self._clock() - started) * 1000)
            return replace(
                completed_job_from_stats(last, postcopy=w.postcopy_started),
                time_elapsed_ms=max(elapsed, last.time_elapsed_ms),
                downtime_ms=0,
                downtime_measured=False,
            )

    async def _remove_leftover(
        self, domain: DomainInfo, state: DomainState | None, defined: bool
    ) -> tuple[DomainState | None, bool]:
        """The migration completed with the source's definition to be removed, and libvirt left
        it (seen in the lab after a post-copy resumed several times; once in CI still there, shut
        off, after the record said succeeded): the guest runs on the target, so starting this copy
        would run it twice. A copy still stopping (paused) is waited for, a lookup that failed is
        tried again, up to ``leftover_wait_s``; an inactive one is undefined (its disks stay).
        Returns what the source holds then."""
        polls = max(1, int(self._policy.leftover_wait_s / self._policy.leftover_poll_s))
        for attempt in range(polls + 1):
            if not _left(state, defined):
                break
            if state is not None and state is not DomainState.UNKNOWN and not state.is_active:
                try:
                    if await self._hv.undefine_inactive(domain.uuid):
                        log.warning(
                            "libvirt left the definition of %s on the source after migrating it; removed it",
                            domain.name,
                        )
                except FerryError as exc:
                    log.warning(
                        "cannot remove the definition %s left on the source: %s: %s", domain.name, exc.reason, exc
                    )
            elif attempt == 0:
                log.info(
                    "the source still holds %s (%s) after its migration completed; waiting for it to stop",
                    domain.name,
                    _held(state),
                )
            if attempt < polls:
                await asyncio.sleep(self._policy.leftover_poll_s)
            state, defined = await self._leftover(domain.uuid)
        else:
            if _left(state, defined):
                log.warning(
                    "the source still holds %s (%s%s) %.0f s after its migration completed",
                    domain.name,
                    _held(state),
                    ", defined" if defined else "",
                    self._policy.leftover_wait_s,
                )
        return state, defined

    def _remove_leftover_when_ended(self, domain: DomainInfo, calls: set[asyncio.Task[None]]) -> None:
        """A migrate call of the completed migration still runs (the first one, waiting on the
        target, after a resumed post-copy completed) and may hold the source's copy: remove the
        copy once the call ended (within ``postcopy_recovery_s``: later, the guest may have come
        back to this host)."""
        until = self._clock() + self._policy.postcopy_recovery_s

        def ended(_: asyncio.Task[None]) -> None:
            if any(not t.done() for t in calls) or self._clock() > until:
                return
            _in_background(self._remove_leftover_later(domain))

        for t in calls:
            t.add_done_callback(ended)

    async def _remove_leftover_later(self, domain: DomainInfo) -> None:
        state, defined = await self._leftover(domain.uuid)
        state, defined = await self._remove_leftover(domain, state, defined)
        if not _left(state, defined):
            log.info("the copy of %s left on the source is gone now that the last migrate call ended", domain.name)

    async def _leftover(self, uuid: str) -> tuple[DomainState | None, bool]:
        try:
            left = await self._hv.find_domain(uuid=uuid)
        except FerryError as exc:
            log.warning("cannot look up %s on the source after migrating: %s: %s", uuid, exc.reason, exc)
            return DomainState.UNKNOWN, False
        if left is None:
            return None, False
        return left.state, left.persistent


@dataclass
class Recovery:
    """A post-copy whose link broke, being resumed."""

    since: float
    error: BaseException | None = None  # the last call's error
    next_at: float = 0.0  # no attempt before this
    failures: int = 0
    resumes: int = 0


def _apply_control(policy: ConvergencePolicy, w: Watch, control: Control) -> Watch:
    if control.force_requested and not w.force_requested:
        w = replace(w, force_requested=control.force_requested)
    if control.operator_downtime_ms and control.operator_downtime_ms != w.operator_downtime_ms:
        w = after_operator_downtime(policy, w, control.operator_downtime_ms)
    if control.postcopy_started and not w.postcopy_started:
        w = replace(w, postcopy_started=True)
    return w


_CLEANUPS: set[asyncio.Task[None]] = set()  # what runs on after its migration: leftover removals, resumes


def _in_background(work: Coroutine[object, object, None]) -> asyncio.Task[None]:
    """Run ``work`` as a task of its own, kept until it ends (``_CLEANUPS``)."""
    task = asyncio.get_running_loop().create_task(work)
    _CLEANUPS.add(task)
    task.add_done_callback(_CLEANUPS.discard)
    return task


async def _to_the_end(work: Coroutine[object, object, None]) -> None:
    """Await ``work``; a caller cancelled meanwhile does not stop it (it runs to its end in the
    background, the cancellation goes on up). For what must not be left half done: a resume."""
    await asyncio.shield(_in_background(work))


def _aborted_before_start(name: str) -> Aborted:
    return Aborted(
        f"the migration of {name} was aborted before its job started",
        reason="MIGRATION_ABORTED",
        hint="nothing moved; migrate again when wanted",
    )


def _calls_ended(calls: Iterable[asyncio.Task[None]]) -> bool | None:
    """How migrate calls ended: True once one completed (the guest runs on the target), False
    once all failed (or none was started), None while one runs or when one was cancelled (its
    end unknown)."""
    calls = tuple(calls)
    if any(t.done() and not t.cancelled() and t.exception() is None for t in calls):
        return True
    if all(t.done() and not t.cancelled() for t in calls):
        return False
    return None


def _end_of(calls: Iterable[asyncio.Task[None]]) -> asyncio.Future[bool]:
    """The end of migrate calls nobody watches any more: ``_calls_ended`` once it is known;
    cancelled when they all ended and it is not."""
    calls = tuple(calls)
    end: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def ended(_: asyncio.Task[None]) -> None:
        if end.done():
            return
        outcome = _calls_ended(calls)
        if outcome is not None:
            end.set_result(outcome)
        elif all(t.done() for t in calls):
            end.cancel()

    for t in calls:
        t.add_done_callback(ended)
    return end


def _left(state: DomainState | None, defined: bool) -> bool:
    """The source still holds a copy worth removing: defined, or not known (a failed lookup).

    >>> _left(None, False), _left(DomainState.SHUTOFF, True), _left(DomainState.UNKNOWN, False)
    (False, True, True)
    >>> _left(DomainState.RUNNING, False)  # transient: it goes away when it stops
    False
    """
    return state is not None and (defined or state is DomainState.UNKNOWN)


def _held(state: DomainState | None) -> str:
    return "gone" if state is None else "lookup failed" if state is DomainState.UNKNOWN else state.name.lower()


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


def _no_job(stats: JobStats) -> bool:
    """libvirt's answer when the domain has no job: not active, type none, no figures.

    >>> _no_job(JobStats()), _no_job(JobStats(active=True)), _no_job(JobStats(memory_processed=1))
    (True, False, False)
    """
    return (
        not stats.active
        and stats.job_type == "none"
        and not (stats.memory_total or stats.memory_processed or stats.disk_total or stats.disk_processed)
    )
