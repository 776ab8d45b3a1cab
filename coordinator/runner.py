"""The driver of one migration record: events in, ``decide`` (or ``recover``), CAS write, actions.

One ``RecordRunner`` per record that is not final, one asyncio task each, handling one event at
a time (so decisions about a record are serialised). For each event:

1. take the newest version of the record the runner knows (its own writes and the watch's; the
   store is read after a lost compare-and-set and to recover);
2. ``d = decide(record, event, now, timeouts)`` (``recover`` for the internal ``Recover`` event,
   after observing the record's hosts);
3. if ``d.record is not record``: write ``encode(d.record)`` with compare-and-set on the record's
   revision; on Conflict read again and decide again. Progress-only decisions are written at most
   once per ``progress_write_s``, the first one that long after the job's first report (the
   newest one wins);
4. only after the write landed, perform ``d.actions`` in order (``actions.Actions``), each result
   coming back as another event -- late results too: ``decide`` ignores or cleans them up.

A ``Recover`` (leader change, an agent back or restarted) observes only when the runner has
nothing under way: a job being followed reports its own end, and calls still out are waited for
first (observing beside them races with them).

At most one job follower per record (the Migrate stream, or GetJob polling): a WatchJob while
one runs does nothing. While the Migrate call of a StartMigration has not ended, every Placement
is fed to ``decide`` with ``migrate_call_open``: libvirt's job may yet start, whatever the source
shows. The same action is never run twice at once (two observations, two
cleanups, two prepares). Store outages are retried with backoff; the runner stops when its
record is final and nothing it started is still running, or when the engine stops it (leader
demotion: tasks are cancelled, libvirt jobs are left running for the next leader to recover).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ferry import logcontext
from ferry.errors import AlreadyExists, FerryError, Unavailable
from ferry.keys import decode_id, migration_key, vm_active_key
from ferry.store import Conflict, Put, Remove, Store

from .actions import Actions
from .decide import decide
from .events import (
    Action,
    Admitted,
    AgentLost,
    CancelRequested,
    Decision,
    Event,
    ObservePlacement,
    Placement,
    Progress,
    SlotGranted,
    StartMigration,
    WatchJob,
)
from .phases import Phase, Timeouts
from .record import MigrationRecord, decode, encode, evolve
from .recovery import recover

log = logging.getLogger(__name__)

# the phases in which a cancel flag set by the API is fed to decide as CancelRequested
CANCELLABLE = frozenset({Phase.PENDING, Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING})
_NEEDS_PLACEMENT = frozenset({Phase.MIGRATING, Phase.FINISHING, Phase.ROLLING_BACK})
_NEEDS_PREPARES = frozenset({Phase.PENDING, Phase.PREPARING, Phase.ROLLING_BACK})
# at most this long a Recover waits for the runner's agent calls under way (each has its deadline)
RECOVER_SETTLE_S = 30.0


@dataclass(frozen=True)
class Recover:
    """Internal event: observe the record's hosts and resume it (``recovery.recover``)."""


@dataclass(frozen=True)
class _FlushProgress:
    """Internal: write the progress held back by the throttle."""


@dataclass(frozen=True)
class _Wake:
    """Internal: an action ended; check whether the runner is done."""


Input = Event | Recover | _FlushProgress | _Wake


@dataclass(frozen=True)
class RunnerContext:
    """What every runner shares with the engine."""

    store: Store
    actions: Actions
    timeouts: Timeouts
    clock: Callable[[], datetime]
    on_written: Callable[[MigrationRecord, MigrationRecord], None]  # (old, new) after a write landed
    on_admission_handled: Callable[[str], None]
    progress_write_s: float = 1.0
    store_retry_s: float = 0.5
    # records whose final write also released their vm-active claim (the engine need not)
    released: set[str] = field(default_factory=set)


def _same_action(a: Action) -> Action:
    """Actions that must not run twice at once compare equal here (any two observations do)."""
    return ObservePlacement() if isinstance(a, ObservePlacement) else a


class RecordRunner:
    def __init__(self, ctx: RunnerContext, record: MigrationRecord) -> None:
        self.ctx = ctx
        self.id = record.id
        self.record = record  # the newest version known (own writes, the watch)
        self.needs_recovery = False  # recovery could not observe: try again later
        self.gone = False  # the record was deleted
        self._queue: asyncio.Queue[Input] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight: Counter[Action] = Counter()
        self._follower: asyncio.Task[None] | None = None
        self._migrate_call: asyncio.Task[None] | None = None  # the follower of a StartMigration
        self._pending_progress: Progress | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._last_progress_write = -math.inf
        self._cancel_fed: Phase | None = None
        self.task = asyncio.get_running_loop().create_task(self._loop(), name=f"migration {self.id}")

    def __repr__(self) -> str:
        return f"RecordRunner({self.id}, {self.record.phase.name})"

    def involves(self, host: str) -> bool:
        return host in (self.record.source_host, self.record.target_host)

    @property
    def done(self) -> bool:
        return self.task.done()

    def feed(self, event: Input) -> None:
        if not self.task.done():
            self._queue.put_nowait(event)

    def seen(self, record: MigrationRecord) -> None:
        """A version of the record from the watch: remember it; feed a cancel the API asked for."""
        if record.revision > self.record.revision:
            self.record = record
        if record.cancel_requested and record.phase in CANCELLABLE and self._cancel_fed is not record.phase:
            self._cancel_fed = record.phase
            self.feed(CancelRequested())

    async def stop(self) -> None:
        """Cancel everything this runner does (leader demotion); libvirt jobs keep running."""
        if self._flush is not None:
            self._flush.cancel()
        tasks = [self.task, *self._tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ the loop

    def _finished(self) -> bool:
        idle = not self._tasks and self._queue.empty()
        return self.gone or (self.record.phase.is_final and idle)

    async def _loop(self) -> None:
        # every line this task and the actions it starts log is about this record; the agent
        # calls carry it along (ferry.rpc.call_metadata)
        logcontext.bind(self.record.log_context)
        while True:
            event = await self._queue.get()
            if not isinstance(event, _Wake):
                await self._handle_retrying(event)
            if self._finished():
                return

    async def _handle_retrying(self, event: Input) -> None:
        delay = self.ctx.store_retry_s
        try:
            while True:
                try:
                    await self._handle(event)
                    return
                except Unavailable as err:  # the store: agents' errors never leave the actions
                    log.warning(
                        "migration %s: store unavailable (%s); retrying %s in %.1f s",
                        self.id,
                        err.reason,
                        type(event).__name__,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                except FerryError as err:
                    log.error(
                        "migration %s: cannot handle %s: %s: %s",
                        self.id,
                        type(event).__name__,
                        err.reason,
                        err,
                        exc_info=not err.caller_fault,
                    )
                    return
                except Exception:  # a bug: drop this event, keep the record going (deadlines still act)
                    log.exception("migration %s: unexpected failure handling %s", self.id, type(event).__name__)
                    return
        finally:
            if isinstance(event, (Admitted, SlotGranted)):
                self.ctx.on_admission_handled(self.id)

    async def _read(self) -> MigrationRecord | None:
        entry = await self.ctx.store.get(migration_key(self.id))
        if entry is None:
            return None
        return decode(entry.value, entry.mod_revision, entry.create_revision)

    async def _handle(self, event: Input) -> None:
        if isinstance(event, _FlushProgress):
            self._flush = None
            if self._pending_progress is None:
                return
            event, self._pending_progress = self._pending_progress, None
        if isinstance(event, Recover) and await self._recovery_not_needed():
            return
        if isinstance(event, Placement) and self._migrate_call is not None and not self._migrate_call.done():
            event = replace(event, migrate_call_open=True)
        observed = await self._observe() if isinstance(event, Recover) else None
        # The newest version this runner knows (its own writes, the watch) is the store's unless
        # the API set the cancel flag a moment ago: decide on it and let the compare-and-set tell;
        # read the store after a conflict, and always to recover.
        cached = self.record if observed is None and self.record.revision else None
        while True:
            rec, cached = (cached, None) if cached is not None else (await self._read(), None)
            if rec is None:
                log.info("migration %s: the record was deleted; stopping", self.id)
                self.gone = True
                return
            now = self.ctx.clock()
            if observed is not None:
                placement, prepares, complete, unreachable = observed
                d = recover(rec, placement, prepares, now, self.ctx.timeouts, unreachable=unreachable)
                self.needs_recovery = not complete and not rec.phase.is_final
            else:
                assert not isinstance(event, (Recover, _FlushProgress, _Wake))
                d = decide(rec, event, now, self.ctx.timeouts)
            new = rec
            if d.record is not rec:
                if self._hold_progress(event, rec, d):
                    return
                try:
                    revision = await self._write(rec, d.record)
                except Conflict:
                    continue
                new = evolve(d.record, revision=revision)
                if new.revision > self.record.revision:
                    self.record = new
                if isinstance(event, Progress):
                    self._last_progress_write = asyncio.get_running_loop().time()
                self.ctx.on_written(rec, new)
            self._log(event, rec, new, d)
            self._perform(new, d.actions)
            return

    async def _write(self, rec: MigrationRecord, new: MigrationRecord) -> int:
        """Store ``new`` over ``rec`` (compare-and-set; Conflict when it changed). The write that
        makes the record final also deletes ``vm-active/<uuid>`` while that names this record: one
        store write for both, without reading the claim first when it was created with the record
        (its revision is the record's ``create_revision``)."""
        key = migration_key(self.id)
        if new.phase.is_final and not rec.phase.is_final and rec.vm_uuid:
            claim_key = vm_active_key(rec.vm_uuid)
            # created in one write with the record (the usual case): the claim's revision is known
            if rec.create_revision:
                revision = await self._write_releasing(key, rec, new, claim_key, rec.create_revision)
                if revision:
                    return revision
            claim = await self.ctx.store.get(claim_key)
            if claim is not None and decode_id(claim.value) == self.id and claim.mod_revision != rec.create_revision:
                revision = await self._write_releasing(key, rec, new, claim_key, claim.mod_revision)
                if revision:
                    return revision
        return await self.ctx.store.update(key, encode(new), rec.revision)

    async def _write_releasing(
        self, key: str, rec: MigrationRecord, new: MigrationRecord, claim_key: str, claim_revision: int
    ) -> int:
        """Store ``new`` and delete the claim at ``claim_revision`` in one write; 0 when the record
        or the claim changed (the plain write tells which)."""
        self.ctx.released.add(self.id)  # before the write: the watch may show it first
        try:
            revision = await self.ctx.store.commit(
                [Put(key, encode(new), rec.revision), Remove(claim_key, claim_revision)]
            )
        except BaseException as exc:
            self.ctx.released.discard(self.id)
            if not isinstance(exc, (Conflict, AlreadyExists)):
                raise
            return 0
        log.info("migration %s is %s: released %s", self.id, new.phase.name, claim_key)
        return revision

    def _log(self, event: Input, old: MigrationRecord, new: MigrationRecord, d: Decision) -> None:
        if isinstance(event, Progress) and old.phase is new.phase:
            log.debug("migration %s: %s", self.id, d.outcome)
        elif new.phase is not old.phase:
            log.info("migration %s: %s -> %s: %s", self.id, old.phase.name, new.phase.name, d.outcome)
        elif new is not old or d.actions:
            log.info("migration %s (%s): %s", self.id, new.phase.name, d.outcome)
        else:
            log.debug("migration %s (%s): %s: %s", self.id, new.phase.name, type(event).__name__, d.outcome)

    def _hold_progress(self, event: Input, rec: MigrationRecord, d: Decision) -> bool:
        """Throttle progress-only writes: hold this one back if the last was written too recently."""
        if not isinstance(event, Progress) or d.actions or d.record.phase is not rec.phase:
            return False
        loop = asyncio.get_running_loop()
        if self._last_progress_write == -math.inf:  # the job's first report waits an interval too: a
            self._last_progress_write = loop.time()  # job shorter than that stores no progress at all
        wait = self._last_progress_write + self.ctx.progress_write_s - loop.time()
        if wait <= 0:
            return False
        self._pending_progress = event
        if self._flush is None:
            self._flush = loop.call_later(wait, self.feed, _FlushProgress())
        return True

    async def _recovery_not_needed(self) -> bool:
        """Whether a Recover is better left to what this runner has under way. Observing while
        one of its calls is still out races with it (the prepare not yet on the target's list,
        the job just asked for and not yet active, the guest between the hosts): the record was
        re-queued while its prepare landed, and a job that was starting was taken for ended and
        aborted. So: a job being followed reports its own end (its stream, or GetJob polling
        after the stream broke); calls under way are waited for (each ends within its RPC
        deadline), and the Recover goes after the events they bring."""
        if self._follower is not None and not self._follower.done():
            log.info("migration %s: not recovering: its job is being followed, which reports its end", self.id)
            self.needs_recovery = False
            return True
        busy = [t for t in self._tasks if t is not self._follower and not t.done()]
        if not busy:
            return False
        _, still = await asyncio.wait(busy, timeout=RECOVER_SETTLE_S)
        if still:
            return False  # a call past its deadline: observe anyway
        log.info("migration %s: recovering after %d call(s) under way ended", self.id, len(busy))
        self.feed(Recover())
        return True

    async def _observe(self) -> tuple[Placement | None, list[Any] | None, bool, str]:
        """What recovery needs of the record's hosts; ``complete`` False when some could not be
        asked; the host whose agent could not be reached, when that is why."""
        r = self.record
        placement: Placement | None = None
        prepares = None
        complete = True
        unreachable = ""
        if r.phase in _NEEDS_PLACEMENT:
            got = await self.ctx.actions.placement(r)
            placement = got if isinstance(got, Placement) else None
            unreachable = got.host if isinstance(got, AgentLost) else ""
            complete = placement is not None
        prepares = await self.ctx.actions.prepares(r)
        if prepares is None and r.phase in _NEEDS_PREPARES:
            complete = False
        return placement, prepares, complete, unreachable

    # ------------------------------------------------------------------ actions

    def _following(self) -> bool:
        return self.record.phase is Phase.MIGRATING

    def _perform(self, record: MigrationRecord, actions: tuple[Action, ...]) -> None:
        sequence: list[Action] = []
        for a in actions:
            if isinstance(a, (StartMigration, WatchJob)):
                if self._follower is not None and not self._follower.done():
                    log.debug("migration %s: %s: already following the job", self.id, type(a).__name__)
                    continue
                self._follower = self._spawn(self.ctx.actions.perform(record, a, self.feed, self._following))
                if isinstance(a, StartMigration):
                    self._migrate_call = self._follower
            else:
                sequence.append(a)
        if sequence:
            self._spawn(self._run_sequence(record, sequence))

    async def _run_sequence(self, record: MigrationRecord, actions: list[Action]) -> None:
        for a in actions:
            key = _same_action(a)
            if self._inflight[key]:
                log.debug("migration %s: %s already running", self.id, a)
                continue
            self._inflight[key] += 1
            try:
                await self.ctx.actions.perform(record, a, self.feed, self._following)
            finally:
                self._inflight[key] -= 1
                if not self._inflight[key]:
                    del self._inflight[key]

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("migration %s: an action failed unexpectedly: %r", self.id, exc, exc_info=exc)
        self.feed(_Wake())
