"""The leader's engine: the reconcile loop that drives every migration record through ``decide``.

While this coordinator leads, ``Engine.run()``:

* lists ``migrations/``; resumes each record that is not final (``recovery.recover`` after
  observing its hosts) and releases the ``vm-active/`` keys still naming final records;
* watches ``migrations/`` from there on (a Resync replaces the view; a broken watch is re-listed):
  a new record gets a runner (``runner.RecordRunner``, one task per record), a record turning
  final has its ``vm-active/<vm_uuid>`` key released, a ``cancel_requested`` flag the API set is
  fed as ``CancelRequested``;
* admits queued records (``slots.plan_admission``) after every change that queues a record or
  frees a slot, when a host comes or goes, and on every tick, feeding ``Admitted`` to each record
  chosen (``Admitted(ahead=True)`` to those admitted ahead of their slot) and ``SlotGranted`` to
  each record ahead whose slot is free now; a record fed either counts as holding what it was
  given until its runner has handled it;
* ticks every ``tick_s``: ``Tick`` to every runner whose phase deadline has passed (as far as the
  engine knows; ``decide`` checks again), ``Recover`` again to those whose recovery could not
  observe their hosts;
* follows host changes (``HostDirectory.changes``): a host going down (lease gone, agent not
  answering, or its libvirtd down as its registration says) is ``AgentLost(host)`` for the records
  involving it; a host coming back, or its agent registering anew after a restart within its
  lease, resumes them at once (``Recover``: observe both hosts, act on what is there).

``stop()`` (demotion) cancels every task without aborting any libvirt job: the next leader
recovers from what it observes. The engine can ``run()`` again after a ``stop()``.

Fencing: every agent call carries ``leader_term`` (the election's term: its leader key's create
revision). When an agent refuses one as STALE_LEADER, a newer leader exists: this engine stops at
once and ``run()`` raises FailedPrecondition STALE_LEADER, so the election steps down.

How the API talks to the engine, through the store only: it submits by creating the record
(Pending), its ``idempotency/`` key and its ``vm-active/`` key (``keys.py``); it cancels by
setting ``cancel_requested`` on the record with a compare-and-set (the engine feeds
``CancelRequested``; ``decide`` then cancels or says it is too late).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Coroutine, Mapping
from datetime import datetime
from typing import Any, Protocol

from ferry.errors import FailedPrecondition, FerryError, Internal
from ferry.keys import MIGRATIONS, VM_ACTIVE, decode_id, name_below, release_vm_active
from ferry.model import HostFacts, PolicyAction, Problem
from ferry.registry import HostDirectory
from ferry.store import Entry, EventKind, Resync, Store

from .actions import STALE_LEADER, Actions, ActionTiming
from .events import Admitted, AgentLost, PolicyActed, SlotGranted, Tick, Waiting
from .phases import Phase, Timeouts
from .policies import PredictionConfig
from .record import MigrationRecord, decode, evolve
from .runner import RecordRunner, Recover, RunnerContext
from .sharing import BY as SHARING_BY
from .sharing import BandwidthSharing
from .slots import Limits, WaitKind, WaitReason, admission_changed, plan_admission

log = logging.getLogger(__name__)


class RecordObserver(Protocol):
    """Told of every record version a runner wrote (the coordinator's metrics count transitions
    from it: ``coordinator/metrics.py``). Cheap, never raises."""

    def record_written(self, old: MigrationRecord, new: MigrationRecord) -> None: ...


class Engine:
    def __init__(
        self,
        store: Store,
        hosts: HostDirectory,
        *,
        limits: Limits,
        timeouts: Timeouts,
        clock: Callable[[], datetime],
        prepare_ttl_s: int,
        tick_s: float = 2.0,
        progress_write_s: float = 1.0,
        job_poll_s: float = 1.0,
        store_retry_s: float = 0.5,
        cordoned: Callable[[], Collection[str]] = frozenset,
        known_facts: Callable[[str], HostFacts | None] | None = None,
        decode_entry: Callable[[Entry], MigrationRecord] | None = None,
        written: Callable[[MigrationRecord], None] = lambda record: None,
        observer: RecordObserver | None = None,
        prediction: PredictionConfig = PredictionConfig(),
        leader_term: int = 0,
        bandwidth_budget: Callable[[str], int] | None = None,
    ) -> None:
        self.store = store
        self.observer = observer
        self.cordoned = cordoned  # hosts that receive no migration (``hoststate.py``): admission skips them
        # a version of a record, decoded (the replica's shared decoder: each version decoded once)
        self._decode_entry = decode_entry or (lambda e: decode(e.value, e.mod_revision, e.create_revision))
        self._tell_written = written  # each version the engine wrote (that decoder keeps it: no decoding its echo)
        self.hosts = hosts
        self.limits = limits
        self.timeouts = timeouts
        self.clock = clock
        self.tick_s = tick_s
        self.store_retry_s = store_retry_s
        self.leader_term = leader_term
        actions = Actions(
            hosts,
            ActionTiming(job_poll_s=job_poll_s, prepare_ttl_s=prepare_ttl_s),
            known_facts,
            prediction,
            leader_term=leader_term,
            on_stale=self._deposed,
        )
        # hosts' migration bandwidth budgets shared by their running jobs (none configured: off)
        self.sharing: BandwidthSharing | None = None
        if bandwidth_budget is not None:
            self.sharing = BandwidthSharing(
                bandwidth_budget,
                (limits.per_host_outbound, limits.per_host_inbound),
                self._tune_bandwidth,
                self._tell,
                self._spawn,
            )
            actions.start_bandwidth = self.sharing.start_share
            actions.budget = bandwidth_budget
        self._ctx = RunnerContext(
            store,
            actions,
            timeouts,
            clock,
            self._written,
            self._admission_handled,
            progress_write_s=progress_write_s,
            store_retry_s=store_retry_s,
        )
        self.records: dict[str, MigrationRecord] = {}  # the newest version of every record seen
        self._open: dict[str, MigrationRecord] = {}  # those not final (what admission looks at)
        self.runners: dict[str, RecordRunner] = {}
        self._admitting: dict[str, bool] = {}  # fed Admitted, not yet handled -> ahead of its slot
        self._granting: set[str] = set()  # fed SlotGranted, not yet handled
        self._waits: dict[str, str] = {}  # queued records fed Waiting: the wait, in words
        self.loaded = asyncio.Event()  # set once the records are listed (the leader's drains wait for it)
        # called with every new version of a record the engine sees (the leader's drains follow them)
        self.observers: list[Callable[[MigrationRecord], None]] = []
        self._admit_needed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Drive every record while leading; returns after ``stop()`` (or when cancelled)."""
        if self._running:
            raise RuntimeError("the engine is already running")
        self._running = True
        self._stopped = asyncio.Event()
        self._admit_needed = asyncio.Event()
        self.loaded = asyncio.Event()
        self.records, self._open, self.runners, self._admitting, self._granting = {}, {}, {}, {}, set()
        self._waits = {}
        try:
            starting = asyncio.get_running_loop().create_task(self._start(), name="engine start")
            stopping = asyncio.get_running_loop().create_task(self._stopped.wait())
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():  # stopped before the store answered
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            revision = starting.result()
            self.loaded.set()
            self._spawn(self._watch(revision + 1), "watch migrations")
            self._spawn(self._follow_hosts(), "follow hosts")
            self._spawn(self._tick(), "tick")
            self._spawn(self._admit_loop(), "admit")
            self.admit_soon()
            log.info("engine running: %d record(s), %d not final", len(self.records), len(self.runners))
            await self._stopped.wait()
        finally:
            try:
                await self._shutdown()
            finally:  # also when cancelled while shutting down: stop() waits for this
                self._running = False
        if self._failure is not None:  # the election steps down when its leader's duties fail
            failure, self._failure = self._failure, None
            if isinstance(failure, FerryError) and failure.reason == STALE_LEADER:
                raise failure
            raise Internal(
                f"the engine stopped: {failure!r}",
                reason="ENGINE_FAILED",
                hint="a coordinator bug: report it with the log; another replica takes over",
            ) from failure

    async def _start(self) -> int:
        """List the records and resume them; a store outage is retried (demotion cancels us)."""
        delay = self.store_retry_s
        while True:
            try:
                revision = await self._load(recovering=True)
                await self._release_final_claims()
                return revision
            except FerryError as err:
                log.warning("cannot list the migrations (%s); retrying in %.1f s", err.reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        """Stop driving (leader demotion): cancel every task, leave every libvirt job running."""
        self._stopped.set()
        while self._running:
            await asyncio.sleep(0.01)

    async def _shutdown(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)
        log.info(
            "engine stopped; %d migration(s) left to the next leader",
            sum(1 for r in self.records.values() if not r.phase.is_final),
        )
        self._tasks.clear()

    def _deposed(self, refusal: Problem) -> None:
        """An agent refused a call of ours as STALE_LEADER: another coordinator leads now."""
        if self._failure is None:
            log.error("a newer leader exists (%s): stopping the engine", refusal.message)
            self._failure = FailedPrecondition(
                f"an agent refused this leader's call: {refusal.message}",
                reason=STALE_LEADER,
                hint="another coordinator leads; this one steps down",
            )
        self._stopped.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("engine task %s failed: %r; stopping the engine", task.get_name(), exc, exc_info=exc)
            self._failure = self._failure or exc
            self._stopped.set()

    # ------------------------------------------------------------------ the view of the records

    async def _load(self, *, recovering: bool) -> int:
        entries, revision = await self.store.list(MIGRATIONS)
        present = set()
        for entry in entries:
            record = self._decode(entry)
            if record is not None:
                present.add(record.id)
                self._seen(record, recovering=recovering)
        for gone in set(self.records) - present:
            self._deleted(gone)
        return revision

    def _decode(self, entry: Entry) -> MigrationRecord | None:
        try:
            return self._decode_entry(entry)
        except FerryError as err:
            log.error("skipping %s: %s: %s (hint: %s)", entry.key, err.reason, err.message, err.hint)
            return None

    def _seen(self, record: MigrationRecord, *, recovering: bool = False) -> None:
        """A version of a record (listed, watched or written by us)."""
        old = self.records.get(record.id)
        if old is not None and old.revision >= record.revision:
            return
        self.records[record.id] = record
        if record.phase.is_final:
            self._open.pop(record.id, None)
        else:
            self._open[record.id] = record
        if old is None or (old.phase is not record.phase and admission_changed(old, record)):
            self.admit_soon()
        if self.sharing is not None:
            self.sharing.seen(old, record)
        for observe in self.observers:
            observe(record)
        runner = self.runners.get(record.id)
        if record.phase.is_final:
            if record.id in self._ctx.released:  # its final write released the claim
                self._ctx.released.discard(record.id)
            elif (old is None and not recovering) or (old is not None and not old.phase.is_final):
                self._spawn(self._release(record), f"release vm-active of {record.id}")
            if runner is not None:
                runner.seen(record)
            return
        if runner is None or runner.done:
            runner = self.runners[record.id] = RecordRunner(self._ctx, record)
            if recovering or record.phase is not Phase.PENDING:  # not a fresh submission: resume it
                runner.feed(Recover())
        runner.seen(record)

    async def _tune_bandwidth(self, r: MigrationRecord, mibps: int) -> object:
        client = self.hosts.client(r.source_host)
        return await client.tune_migration(
            r.vm_uuid or r.vm, bandwidth_mibps=mibps, requested_by=SHARING_BY, leader_term=self.leader_term
        )

    def _tell(self, migration_id: str, action: PolicyAction) -> None:
        runner = self.runners.get(migration_id)
        if runner is not None and not runner.done:
            runner.feed(PolicyActed(action))

    def _deleted(self, migration_id: str) -> None:
        self.records.pop(migration_id, None)
        self._open.pop(migration_id, None)
        self._admitting.pop(migration_id, None)
        self._granting.discard(migration_id)
        self.admit_soon()

    def created(self, record: MigrationRecord) -> None:
        """A record this replica's API just created (its store revision set): taken in at once,
        as the engine's own writes are, not when the watch brings it. At 1,000 simulated hosts
        the migrations' watch delivered events 2-13 s (p50) after their writes, and each new
        migration waited that long to be admitted with both its hosts' slots free."""
        if not self._running or not self.loaded.is_set() or not record.revision:
            return  # not leading, or still listing: the list or the watch brings it
        self._tell_written(record)
        self._seen(record)

    def _written(self, old: MigrationRecord, new: MigrationRecord) -> None:
        self._tell_written(new)
        if self.observer is not None:
            self.observer.record_written(old, new)
        self._seen(new)

    async def _release(self, record: MigrationRecord) -> None:
        if not record.vm_uuid:
            return
        delay = self.store_retry_s
        while True:
            try:
                if await release_vm_active(self.store, record.vm_uuid, record.id):
                    log.info(
                        "migration %s is %s: released vm-active/%s",
                        record.id,
                        record.phase.name,
                        record.vm_uuid,
                        extra=record.log_context.extra(),
                    )
                return
            except FerryError as err:
                log.warning("cannot release vm-active/%s yet: %s", record.vm_uuid, err.reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _release_final_claims(self) -> None:
        """vm-active keys naming a final record (a leader stopped before releasing them)."""
        claims, _ = await self.store.list(VM_ACTIVE)
        for entry in claims:
            record = self.records.get(decode_id(entry.value))
            if record is not None and record.phase.is_final and record.vm_uuid == name_below(VM_ACTIVE, entry.key):
                self._spawn(self._release(record), f"release vm-active of {record.id}")

    async def _watch(self, start_revision: int) -> None:
        delay = self.store_retry_s
        while True:
            try:
                async for event in self.store.watch(MIGRATIONS, start_revision):
                    delay = self.store_retry_s
                    if isinstance(event, Resync):
                        present = set()
                        for entry in event.entries:
                            record = self._decode(entry)
                            if record is not None:
                                present.add(record.id)
                                self._seen(record)
                        for gone in set(self.records) - present:
                            self._deleted(gone)
                        start_revision = event.revision + 1
                        continue
                    start_revision = event.revision + 1
                    if event.kind is EventKind.DELETE:
                        self._deleted(name_below(MIGRATIONS, event.entry.key))
                        continue
                    record = self._decode(event.entry)
                    if record is not None:
                        self._seen(record)
                return  # the store closed
            except FerryError as err:
                log.warning("watch on %s broke (%s); listing again in %.1f s", MIGRATIONS, err.reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                with contextlib.suppress(FerryError):
                    start_revision = await self._load(recovering=False) + 1

    # ------------------------------------------------------------------ admission, ticks, hosts

    def admit_soon(self) -> None:
        """Run admission at the next opportunity (cheap to call often)."""
        self._admit_needed.set()

    def _admission_handled(self, migration_id: str) -> None:
        self._admitting.pop(migration_id, None)
        self._granting.discard(migration_id)
        self.admit_soon()

    async def _admit_loop(self) -> None:
        while True:
            await self._admit_needed.wait()
            self._admit_needed.clear()
            self._admit_once()

    def _admit_once(self) -> None:
        queued = [r for r in self._open.values() if r.phase is Phase.PENDING and r.id not in self._admitting]
        if not queued and not any(r.ahead for r in self._open.values()):
            return
        handing = self._admitting.keys() | self._granting
        active = [r for r in self._open.values() if r.phase.holds_slot and r.id not in handing]
        active += [
            evolve(self.records[i], phase=Phase.PREFLIGHT, ahead=ahead)
            for i, ahead in self._admitting.items()
            if i in self.records
        ]
        active += [evolve(self.records[i], ahead=False) for i in self._granting if i in self.records]
        plan = plan_admission(queued, active, self.limits, self.hosts.available_hosts(), self.clock(), self.cordoned())
        self._note_waits(plan.waiting)
        for migration_id in plan.grant:
            runner = self.runners.get(migration_id)
            if runner is not None and not runner.done:
                self._granting.add(migration_id)
                runner.feed(SlotGranted())
        ahead = set(plan.ahead)
        for migration_id in (*plan.start, *plan.ahead):
            runner = self.runners.get(migration_id)
            if runner is None or runner.done:
                continue
            self._admitting[migration_id] = migration_id in ahead
            runner.feed(Admitted(ahead=migration_id in ahead))

    def _note_waits(self, waiting: Mapping[str, WaitReason]) -> None:
        """Tell each queued record that waits for a host that is down or cordoned (not for a full
        limit, the routine wait), once per change of its wait: its history then says why it does
        not start, and ``ferry migrate`` shows it."""
        waits: dict[str, str] = {}
        for migration_id, why in waiting.items():
            if why.kind is WaitKind.HOST_UNAVAILABLE:
                down = [(h, self.hosts.why_down(h)) for h in why.hosts]
                text = "; ".join(
                    f"{h} is not available" + (f" ({p.reason}: {p.message})" if p else "") for h, p in down
                )
                back = f"{', '.join(why.hosts)} {'are' if len(down) > 1 else 'is'} back"
                waits[migration_id] = f"{text}; it starts when {back} (or cancel it)"
            elif why.kind is WaitKind.TARGET_CORDONED:
                target = ", ".join(why.hosts)
                waits[migration_id] = (
                    f"target {target} is cordoned; it starts when {target} is uncordoned (or cancel it)"
                )
        for migration_id, text in waits.items():
            runner = self.runners.get(migration_id)
            if self._waits.get(migration_id) != text and runner is not None and not runner.done:
                runner.feed(Waiting(text))
        self._waits = waits

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = self.clock()
            for migration_id, runner in list(self.runners.items()):
                if runner.done:
                    del self.runners[migration_id]
                    record = self.records.get(migration_id)
                    if record is not None and not record.phase.is_final and not runner.gone:
                        log.error(
                            "migration %s: its runner ended early; resuming it",
                            migration_id,
                            extra=record.log_context.extra(),
                        )
                        self.runners[migration_id] = RecordRunner(self._ctx, record)
                        self.runners[migration_id].feed(Recover())
                    continue
                if runner.needs_recovery:
                    runner.feed(Recover())
                deadline = runner.record.next_deadline(self.timeouts)
                if deadline is not None and now >= deadline:  # decide acts on Tick only then
                    runner.feed(Tick())
            self.admit_soon()

    async def _follow_hosts(self) -> None:
        async for change in self.hosts.changes():
            involved = [r for r in self.runners.values() if not r.done and r.involves(change.host)]
            log.info(
                "agent on %s is %s: %d migration(s) involved",
                change.host,
                "restarted" if change.restarted else "available" if change.available else "unavailable",
                len(involved),
            )
            for runner in involved:
                runner.feed(Recover() if change.available else AgentLost(change.host, change.why))
            self.admit_soon()
