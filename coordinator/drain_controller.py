"""The leader's drains: each drain that is not final is stepped (``drainplan.step``) whenever it
or one of its migrations changes, and on a tick; the new drain record is written by
compare-and-set, then its migrations are submitted (``Submissions.submit`` with the item's fixed
migration id) and cancelled.

Runs beside the engine while this replica leads, on the engine's view of the migration records
(``engine.observers``) and the replica's view of ``drains/``. Nothing is kept only in memory: a
new leader reads the drains and their migrations from the store and goes on from there -- an
item MIGRATING whose migration record does not exist (the old leader stopped between its two
writes) is submitted again under the same id, which is idempotent.

Write-ahead: the drain record naming an item's migration id is written before the migration is
created, so no migration of a drain exists that its drain does not know about.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from ferry import keys
from ferry.errors import FerryError
from ferry.model import DomainInfo, Problem
from ferry.store import Conflict, Store

from .checks import vm_blockers
from .drain import DrainItem, DrainRecord, DrainState, ItemState, decode, encode, with_item
from .drainplan import GONE, Arrivals, Busy, Choice, Estimates, Nowhere, Step, Target, step
from .drains import domain_items, domains_by_uuid, gone_problem, keys_release
from .hoststate import HostCordon, cordon
from .placement import HostOption, Reservations
from .placer import Placer
from .record import MigrationRecord
from .slots import holds_slot
from .submission import Submissions, SubmitRequest
from .view import PrefixView

log = logging.getLogger(__name__)

# a submission refused with one of these: the VM is not there to move any more
_GONE = frozenset({GONE, "VM_NOT_RUNNING"})
# the submission found the VM on no host, or on its target already: it left the drained host
_LEFT = frozenset({"VM_UNKNOWN", "SAME_HOST"})
# how old the drained host's inventory may be while a VM skipped as stopped there may be removed
STOPPED_MAX_AGE_S = 1.0
# refused for what the VM itself is (checks.vm_blockers): no other host would take it either
_OWN = frozenset({"VM_TRANSIENT", "OFFLINE_LOCAL_DISK"})
# a host rejected only for these may take the VM later: the item waits instead of failing
_TRANSIENT = frozenset({"TARGET_DOWN", "INVENTORY_UNKNOWN"})


class DrainController:
    def __init__(
        self,
        store: Store,
        drains: PrefixView[DrainRecord],
        records: Callable[[], Mapping[str, MigrationRecord]],
        placer: Placer,
        submissions: Submissions,
        cordons: Mapping[str, HostCordon],
        *,
        outbound_limit: int,
        clock: Callable[[], datetime],
        max_attempts: int = 3,
        tick_s: float = 1.0,
        retry_s: float = 0.5,
        items_of: Callable[[DrainRecord, Sequence[DomainInfo]], list[DrainItem]] | None = None,
    ) -> None:
        self.store = store
        self.drains = drains
        self.records = records  # the engine's records, now
        self.placer = placer
        self.submissions = submissions
        self.cordons = cordons
        self.outbound_limit = outbound_limit
        self.clock = clock
        self.max_attempts = max_attempts
        self.tick_s = tick_s
        self.retry_s = retry_s
        # a drain's items for domains of its host (``Drains.items_of``): for VMs that came meanwhile
        self.items_of = items_of or (
            lambda d, domains: domain_items(tuple(domains), d.options, d.storage_explicit, Estimates(), d.host)
        )
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._latest: dict[str, DrainRecord] = {}  # our own writes, newer than the view for a moment
        self._submitting: set[str] = set()  # migration ids being created right now
        # ids created (or found created) by this controller that the engine's view has not shown yet:
        # not submitted again meanwhile (a step between the write and the watch event would resubmit)
        self._created: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # the drains being stepped now, each by a task of its own: a drain's steps follow one
        # another, different drains' steps run side by side (one after the other, 100 drains
        # waited for each other's store writes: a finished drain was seen seconds late)
        self._stepping: dict[str, asyncio.Task[None]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self.steps = 0  # for the scale bench: how often a drain was stepped

    # ------------------------------------------------------------------ feeding

    def on_drain(self, name: str, d: DrainRecord | None) -> None:
        if d is not None and not d.state.is_final:
            self._mark(d.id)

    def on_migration(self, r: MigrationRecord) -> None:
        """A migration record changed (from the engine): a drain cares when one of its own ends."""
        if not r.phase.is_final or not r.id.startswith("d-"):
            return
        drain_id = r.id.rsplit("-", 2)[0]
        if drain_id in self.drains.items or drain_id in self._latest:
            self._mark(drain_id)

    def _mark(self, drain_id: str) -> None:
        self._dirty.add(drain_id)
        self._wake.set()

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        self._unsubscribe = self.drains.subscribe(self.on_drain)
        try:
            for d in list(self.drains.items.values()):
                if not d.state.is_final:
                    self._mark(d.id)
            ticker = asyncio.get_running_loop().create_task(self._tick(), name="drains tick")
            try:
                while True:
                    await self._wake.wait()
                    self._wake.clear()
                    ready = sorted(i for i in self._dirty if i not in self._stepping)
                    self._dirty.difference_update(ready)  # one marked while stepped waits for that step
                    for drain_id in ready:
                        task = asyncio.get_running_loop().create_task(self._step_retrying(drain_id))
                        self._stepping[drain_id] = task
                        task.add_done_callback(functools.partial(self._stepped, drain_id))
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
        finally:
            if self._unsubscribe is not None:
                self._unsubscribe()
            pending = [*self._tasks, *self._stepping.values()]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._stepping.clear()

    def _stepped(self, drain_id: str, _: asyncio.Task[None]) -> None:
        self._stepping.pop(drain_id, None)
        if drain_id in self._dirty:  # changed meanwhile: step it again
            self._wake.set()

    async def _tick(self) -> None:
        """Step every drain now and then (busy targets free up without a change of its own), and
        keep the inventories placement reads fresh while drains run (only stale ones are asked)."""
        refreshing: asyncio.Task[None] | None = None
        try:
            while True:
                await asyncio.sleep(self.tick_s)
                running = [d for d in self.drains.items.values() if not d.state.is_final]
                for d in running:
                    self._mark(d.id)
                if running and (refreshing is None or refreshing.done()):
                    refreshing = asyncio.get_running_loop().create_task(self.placer.fleet.refresh())
        finally:
            if refreshing is not None:
                refreshing.cancel()

    def _current(self, drain_id: str) -> DrainRecord | None:
        seen = self.drains.items.get(drain_id)
        mine = self._latest.get(drain_id)
        if mine is not None and (seen is None or mine.revision >= seen.revision):
            return mine
        if mine is not None:
            del self._latest[drain_id]
        return seen

    async def _step_retrying(self, drain_id: str) -> None:
        delay = self.retry_s
        while True:
            try:
                await self._step(drain_id)
                return
            except FerryError as err:
                log.warning("drain %s: %s: %s; trying again in %.1f s", drain_id, err.reason, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _step(self, drain_id: str) -> None:
        d = self._current(drain_id)
        if d is None or d.state.is_final:
            return
        await self._ensure_cordoned(d)
        whereabouts: dict[str, str] = {}
        if d.state is DrainState.RUNNING and any(_may_leave(i) for i in d.items):
            # what runs on the host, at most a TTL old; a VM missing there is looked for on the
            # host again now (that copy may predate the drain): only then has it left the host
            await self.placer.fleet.refresh([d.host])
            whereabouts = await self._whereabouts(d)
        gone = {
            i.vm_uuid: gone_problem(i, d.host, whereabouts[i.vm_uuid])
            for i in d.items
            if i.state is ItemState.SKIPPED and i.vm_uuid in whereabouts
        }
        while True:
            self.steps += 1
            now = self.clock()
            place, chosen = self._placer_for(d, now, whereabouts)
            try:
                stepped = await self._step_once(d, place, now, gone)
            finally:  # each chosen target counted until the write: now by its migration, or not at all
                for key in chosen:
                    self.placer.book.release(key)
            if stepped is None:  # the record changed meanwhile: read it and step again
                d = await self._read(drain_id)
                if d is None or d.state.is_final:
                    return
                continue
            d = stepped
            if d.state.is_final:
                with contextlib.suppress(FerryError):
                    await keys_release(self.store, d.host, d.id)
                log.info("drain %s of %s ended %s", d.id, d.host, d.state.name)
            return

    async def _step_once(
        self,
        d: DrainRecord,
        place: Callable[[DrainItem, frozenset[str]], Choice],
        now: datetime,
        gone: Mapping[str, Problem] | None = None,
    ) -> DrainRecord | None:
        """One step of ``d``: its new record written and what it asks for done; None on a
        conflicting write (nothing done)."""
        records = self.records()
        if self._created:
            self._created = {m for m in self._created if m not in records}
        pending = self._submitting | self._created
        stepped = functools.partial(
            step,
            d,
            records,
            place,
            now,
            outbound_limit=self.outbound_limit,
            max_attempts=self.max_attempts,
            cordoned=frozenset(n for n, c in self.cordons.items() if c.cordoned),
            gone=gone,
            creating=pending,
        )
        s = stepped()
        if s.drain.state.is_final and d.state is DrainState.RUNNING:  # it would end: what came meanwhile?
            arrivals = await self._arrivals(d, records)
            if arrivals.items or arrivals.inbound:
                s = stepped(arrivals=arrivals)
        s = replace(s, submit=tuple(x for x in s.submit if x.migration_id not in pending))
        if s.drain is not d:
            try:
                d = await self._write(d, s.drain)
            except Conflict:
                return None
        if s.outcome not in ("nothing to do", "final"):
            log.info("drain %s (%s): %s", d.id, d.state.name, s.outcome)
        self._perform(d, s)
        return d

    async def _arrivals(self, d: DrainRecord, records: Mapping[str, MigrationRecord]) -> Arrivals:
        """What came to ``d``'s host since it listed the VMs: migrations into it whose jobs run or
        will (a cordon stops only what is queued), else the VMs its inventory, asked now, shows
        that ``d`` does not list."""
        inbound = tuple(
            sorted(r.id for r in records.values() if r.target_host == d.host and holds_slot(r) and not r.ahead)
        )
        if inbound:
            return Arrivals(inbound=inbound)
        await self.placer.fleet.refresh([d.host], force=True)
        listed = {i.vm_uuid for i in d.items}
        came = [dom for uuid, dom in domains_by_uuid(self.placer.fleet, d.host).items() if uuid not in listed]
        return Arrivals(items=tuple(self.items_of(d, came))) if came else Arrivals()

    async def _read(self, drain_id: str) -> DrainRecord | None:
        entry = await self.store.get(keys.drain_key(drain_id))
        return None if entry is None else decode(entry.value, entry.mod_revision)

    async def _write(self, old: DrainRecord, new: DrainRecord) -> DrainRecord:
        revision = await self.store.update(keys.drain_key(old.id), encode(new), old.revision)
        written = replace(new, revision=revision)
        self._latest[old.id] = written
        return written

    async def _ensure_cordoned(self, d: DrainRecord) -> None:
        c = self.cordons.get(d.host)
        if c is None or not c.cordoned or c.drain_id != d.id:
            await cordon(self.store, d.host, d.reason or f"drain {d.id}", self.clock(), drain_id=d.id)

    async def _whereabouts(self, d: DrainRecord) -> dict[str, str]:
        """Where each VM waiting its turn (or skipped while stopped) that the drained host no longer
        lists is now (UUID -> host, "" for nowhere). The host is asked again first (its copy may
        predate the drain; an unreachable host is not asked: its VMs are where they were); then the
        fleet, as a submission looks for a VM."""
        fleet = self.placer.fleet
        if any(i.state is ItemState.SKIPPED and _may_leave(i) for i in d.items):
            await fleet.refresh([d.host], max_age_s=STOPPED_MAX_AGE_S)  # the drain may end at this step
        listed = domains_by_uuid(fleet, d.host)
        missing = [i for i in d.items if _may_leave(i) and i.vm_uuid not in listed]
        if not missing:
            return {}
        await fleet.refresh([d.host], force=True)
        source = fleet.host(d.host)
        if source is None or source.reachable is not True:
            return {}
        on_host = domains_by_uuid(fleet, d.host)
        found = {}
        for item in missing:
            if item.vm_uuid not in on_host:
                located = await fleet.locate_vm(item.vm_uuid, fresh=True)
                found[item.vm_uuid] = located[0] if located is not None and located[0] != d.host else ""
        return found

    # ------------------------------------------------------------------ placing

    def _placer_for(
        self, d: DrainRecord, now: datetime, whereabouts: Mapping[str, str] | None = None
    ) -> tuple[Callable[[DrainItem, frozenset[str]], Choice], list[str]]:
        """The step's placement, and the keys of the reservations it makes: a target chosen
        counts against its host at once (``LoadBook.reserve``), so another drain's step running
        meanwhile does not take the same room; the caller releases them once the step's
        migrations are reserved under their own ids (or were not started)."""
        booked = Reservations()
        chosen: list[str] = []
        hosts: list[HostOption] = []  # built on first use: a step that places nothing costs nothing
        by_uuid = domains_by_uuid(self.placer.fleet, d.host)

        def place(item: DrainItem, exclude: frozenset[str]) -> Choice:
            domain = by_uuid.get(item.vm_uuid)
            if domain is None:
                if whereabouts is None or item.vm_uuid not in whereabouts:
                    return Busy()  # not confirmed gone (the host did not answer): wait for it
                return Nowhere(gone_problem(item, d.host, whereabouts[item.vm_uuid]))
            own = vm_blockers(domain, d.host, d.options)
            if own:  # the VM itself (stopped since the plan): no host would take it
                return Nowhere(own[0])
            if not hosts:
                hosts.extend(self.placer.options(now))
            if d.targets and not set(d.targets) - exclude:
                tried = ", ".join(sorted(exclude - {d.host})) or "none"
                last = item.problems[-1] if item.problems else None
                return Nowhere(
                    Problem(
                        "NO_TARGET",
                        f"no host is left to try for {item.vm} (tried {tried})"
                        + (f"; last: {last.reason}: {last.message}" if last else ""),
                        last.hint if last else "add a host, or name more targets (--to)",
                    )
                )
            placed = self.placer.choose(
                domain,
                d.host,
                d.options,
                storage_explicit=d.storage_explicit,
                now=now,
                only=d.targets,
                exclude=exclude,
                hosts=booked.apply(hosts),
            )
            free = next((c for c in placed.ranking.candidates if not c.busy), None)  # the best is free if one is
            if free is not None:
                booked.add(free.host, domain, item.disk_bytes)
                key = f"{d.id}/{item.vm_uuid}/choice"
                self.placer.book.reserve(key, free.host, domain, item.disk_bytes)
                chosen.append(key)
                return Target(free.host)
            if placed.ranking.candidates:
                return Busy()
            if any({b.reason for b in c.blockers} <= _TRANSIENT for c in placed.ranking.rejected):
                return Busy()  # a host that is down (or not yet seen) may take it once it is back
            return Nowhere(placed.ranking.nowhere())

        return place, chosen

    # ------------------------------------------------------------------ acting

    def _perform(self, d: DrainRecord, s: Step) -> None:
        by_uuid = domains_by_uuid(self.placer.fleet, d.host)
        for sub in s.submit:
            self._submitting.add(sub.migration_id)
            item, domain = d.item(sub.vm_uuid), by_uuid.get(sub.vm_uuid)
            if item is not None and domain is not None:  # counts against its target at once (another
                self.placer.book.reserve(sub.migration_id, sub.target, domain, item.disk_bytes)  # drain's next step)
            self._spawn(self._submit(d, sub.vm_uuid, sub.vm, sub.migration_id, sub.target))
        for mid in s.cancel:
            self._spawn(self._cancel(mid))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit(self, d: DrainRecord, vm_uuid: str, vm: str, migration_id: str, target: str) -> None:
        created = False
        try:
            await self.submissions.submit(
                SubmitRequest(
                    vm=vm_uuid,
                    target_host=target,
                    options=d.options,
                    storage_explicit=d.storage_explicit,
                    migration_id=migration_id,
                    source_host=d.host,
                    policy=d.policy,
                )
            )
            created = True
        except FerryError as err:
            log.info("drain %s: %s to %s refused: %s: %s", d.id, vm, target, err.reason, err.message)
            await self._refused(d.id, vm_uuid, migration_id, target, Problem.of(err))
        finally:
            if created and migration_id not in self.records():
                self._created.add(migration_id)
            self._submitting.discard(migration_id)
            if not created:
                self._mark(d.id)

    async def _refused(self, drain_id: str, vm_uuid: str, migration_id: str, target: str, problem: Problem) -> None:
        """The migration could not even be created: the item goes back to WAITING (another host),
        is FAILED after its attempts or for what the VM itself is, or SKIPPED when its VM is not on
        the host any more or no longer runs (as the plan skips a guest not running)."""
        while True:
            d = self._current(drain_id) or await self._read(drain_id)
            if d is None or d.state.is_final:
                return
            item = d.item(vm_uuid)
            if item is None or item.migration_id != migration_id or item.state is not ItemState.MIGRATING:
                return
            now = self.clock()
            if problem.reason in _LEFT:  # the submission looked for it on every host that may have it
                problem = Problem(
                    GONE, f"{item.vm} is no longer on {d.host}: {problem.message}", "nothing to move: it left the host"
                )
            if problem.reason in _GONE:
                new_item = replace(item, state=ItemState.SKIPPED, problems=(problem,), ended_at=now)
            elif item.attempts >= self.max_attempts or problem.reason in _OWN:
                new_item = replace(item, state=ItemState.FAILED, problems=(problem,), ended_at=now)
            else:
                new_item = replace(item, state=ItemState.WAITING, tried=(*item.tried, target), problems=(problem,))
            try:
                await self._write(d, with_item(replace(d, updated_at=now), new_item))
                return
            except Conflict:
                fresh = await self._read(drain_id)
                if fresh is not None:
                    self._latest[drain_id] = fresh

    async def _cancel(self, migration_id: str) -> None:
        try:
            await self.submissions.cancel(migration_id)
        except FerryError as err:
            log.info("cannot cancel %s: %s", migration_id, err.reason)


def _may_leave(item: DrainItem) -> bool:
    """An item whose VM leaving the host outside the drain counts as gone: waiting its turn, or
    skipped while stopped there (then removed: destroy, then undefine)."""
    if item.state is ItemState.WAITING:
        return True
    return item.state is ItemState.SKIPPED and bool(item.problems) and item.problems[-1].reason == "VM_NOT_RUNNING"
