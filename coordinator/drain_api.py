"""The drains' RPCs and the fleet-wide watch: a mixin of ``service.CoordinatorServicer``.

Thin like the rest of the servicer: requests -> ``drains.Drains`` (submit, pause, resume, cancel:
compare-and-set writes) or reads -> ``convert.drain_to_pb``. A drain's progress (bytes, ETA)
comes from its migrations as this replica's view of ``migrations/`` holds them, so WatchDrain
sends an update when the drain changes and, at most every ``PROGRESS_EVERY_S``, when one of its
migrations moved on. WatchFleet sends every change of every migration and drain that matches the
request's filters, from this replica's views (``replica.py``), in the order it saw them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from ferry import keys, validate
from ferry.errors import FerryError, InvalidArgument, NotFound, ResourceExhausted
from ferry.model import Problem
from ferry.rpc import Context, rpc_method
from ferry.v1 import coordinator_pb2 as cpb

from . import convert
from .bandwidth import alone
from .checks import host_down
from .drain import DrainItem, DrainRecord, ItemState, decode
from .drainplan import progress, slots, waiting_for_targets, waiting_on
from .drains import DrainRequest, domains_by_uuid, must_read_drain
from .paging import paginate
from .policies import choose_policy
from .preflight import predict_for
from .record import MigrationRecord

if TYPE_CHECKING:
    from ferry.store import Store

    from .drains import Drains
    from .fleet import Fleet
    from .replica import ReplicaViews
    from .submission import Submissions

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5
HOST_CHECK_S = 2.0  # a drain watch with no change looks this often whether its host went down or came back
PREDICT_AT_ONCE = 8  # a dry run's guests measured at once (each takes [prediction] periods_s)
WATCH_QUEUE_MAX = 10_000  # a fleet watch this far behind is ended (RESOURCE_EXHAUSTED)


MAX_REASON = 1000  # a drain's or a cordon's reason (the operator's words)


def _id(value: str) -> str:
    return validate.ident(value, "id", required=True, example='"d-3f2a9c41" (see `ferry drains`)')


def _known(values: Collection[int], field: str, enum: EnumTypeWrapper) -> set[int]:
    """Enum numbers of a filter: at most ``validate.MAX_ITEMS``, each one the enum knows but 0 (its
    UNSPECIFIED value matches nothing: a watch asking for it alone would never send a thing)."""
    validate.items(values, field)
    if 0 in values:
        raise InvalidArgument(
            f"{field}: {enum.Name(0)} (0) names no value",
            reason="BAD_ENUM_VALUE",
            hint=f"leave {field} empty for every value, or list ferry.v1.{enum.DESCRIPTOR.name} values",
        )
    unknown = sorted(set(values) - set(enum.values()))
    if unknown:
        raise InvalidArgument(
            f"{field}: unknown value {unknown[0]}",
            reason="BAD_ENUM_VALUE",
            hint=f"use the ferry.v1.{enum.DESCRIPTOR.name} values",
        )
    return set(values)


class DrainMethods:
    """Mixed into CoordinatorServicer, which provides these attributes."""

    store: Store
    fleet: Fleet
    views: ReplicaViews
    drains: Drains
    submissions: Submissions
    outbound_limit: int

    def _now(self) -> datetime:
        return self.drains._clock()

    def drain_pb(self, d: DrainRecord, *, dry_run: bool = False) -> cpb.Drain:
        migrations = self.views.migrations.items
        return convert.drain_to_pb(
            d,
            progress(d, migrations, self._now(), self.outbound_limit),
            slots(d, self.outbound_limit),
            migrations,
            dry_run=dry_run,
            waiting=None if dry_run else self._waiting(d),
        )

    def _waiting(self, d: DrainRecord) -> Problem | None:
        """Why its waiting VMs do not move now, as this replica's fleet view sees it."""
        on_host = waiting_on(d, self._host_down(d.host))
        if on_host is not None or not d.count(ItemState.WAITING) or d.count(ItemState.MIGRATING):
            return on_host
        cordons = self.views.cordons.items
        targets = {
            h.name: h.why_down if not h.available else None
            for h in self.fleet.hosts()
            if h.name != d.host
            and (not d.targets or h.name in d.targets)
            and not (h.name in cordons and cordons[h.name].cordoned)
        }
        return waiting_for_targets(d, targets)

    def _host_down(self, host: str) -> Problem | None:
        """What this replica's fleet view says of a host that is down; None when it answers."""
        view = self.fleet.host_view(host)
        if view is not None and view.available:
            return None
        return host_down(host, view.why_down if view is not None else None, target=False)

    # ------------------------------------------------------------------ drains

    @rpc_method
    async def SubmitDrain(self, request: cpb.SubmitDrainRequest, context: Context) -> cpb.Drain:
        validate.text(request.host, "host", required=True, example='"host1" (see `ferry hosts`)')
        validate.names(request.targets, "targets")
        validate.text(request.policy, "policy")
        validate.text(request.reason, "reason", max_len=MAX_REASON)
        options, explicit = convert.options_from_request(request.options)
        if request.policy:  # an unknown name is refused now, not once per VM as the drain runs
            choose_policy(
                self.submissions.policies, (), requested=request.policy, vm="", memory_bytes=0, options=options
            )
        d = await self.drains.submit(
            DrainRequest(
                host=request.host,
                targets=tuple(dict.fromkeys(request.targets)),
                max_parallel=request.max_parallel,
                policy=request.policy,
                reason=request.reason,
                options=options,
                storage_explicit=explicit,
                dry_run=request.dry_run,
            )
        )
        if request.dry_run:
            d = await self._predicted(d, request.policy)
        return self.drain_pb(d, dry_run=request.dry_run)

    async def _predicted(self, d: DrainRecord, policy_name: str) -> DrainRecord:
        """A dry run's planned VMs measured on their host (concurrently, ``PREDICT_AT_ONCE`` at a
        time) and predicted under the policy each would run under, at the share of the host's
        budget its slot gets: one that would not finish gets a WILL_NOT_CONVERGE problem (it
        stays planned; the drain would try it, and the policy decide)."""
        by_uuid = domains_by_uuid(self.fleet, d.host)
        budget = self.drains.budget
        share = budget(d.host) // slots(d, self.outbound_limit) if budget(d.host) > 0 else 0
        gate = asyncio.Semaphore(PREDICT_AT_ONCE)

        async def one(item: DrainItem) -> DrainItem:
            domain = by_uuid.get(item.vm_uuid)
            if item.state is not ItemState.WAITING or not item.target or domain is None or d.options.offline:
                return item
            policy = self.submissions.choose_policy(policy_name, domain, d.options)
            async with gate:
                load = await self.submissions.measure(d.host, domain)
            limits = [b for b in (share, alone(budget, d.host, item.target)) if b > 0]
            prediction = await predict_for(
                self.fleet,
                d.host,
                domain,
                policy,
                disk_bytes=item.disk_bytes,
                config=self.submissions.prediction,
                load=load,
                budget_mibps=min(limits) if limits else 0,
            )
            if prediction.finishes is not False:
                return item
            problem = Problem(
                "WILL_NOT_CONVERGE",
                f"predicted: {prediction.words}",
                f"policy {policy.label} would not move {item.vm}: give the drain a policy that allows post-copy "
                "or force-complete (--policy NAME, or --postcopy --postcopy-on-stall), more bandwidth, "
                "or drain when the guest is quieter",
            )
            return replace(item, problems=(*item.problems, problem))

        items = await asyncio.gather(*(one(i) for i in d.items))
        return replace(d, items=tuple(items))

    @rpc_method
    async def GetDrain(self, request: cpb.GetDrainRequest, context: Context) -> cpb.Drain:
        return self.drain_pb(await must_read_drain(self.store, _id(request.id)))

    @rpc_method
    async def ListDrains(self, request: cpb.ListDrainsRequest, context: Context) -> cpb.ListDrainsResponse:
        validate.text(request.host, "host")
        validate.items(request.states, "states")
        states = {convert.drain_state_from_pb(s) for s in request.states}
        if None in states:
            raise InvalidArgument("unknown drain state", reason="BAD_STATE", hint="use the ferry.v1.DrainState values")
        entries, _ = await self.store.list(keys.DRAINS)
        drains = []
        for e in entries:
            try:
                d = decode(e.value, e.mod_revision)
            except FerryError as err:
                log.warning("skipping %s: %s", e.key, err)
                continue
            if (not request.host or d.host == request.host) and (not states or d.state in states):
                drains.append(d)

        def key(d: DrainRecord) -> tuple[str, ...]:
            return (d.created_at.isoformat(), d.id)

        drains.sort(key=key, reverse=True)
        page, token = paginate(drains, key, request.page_size, request.page_token, descending=True)
        return cpb.ListDrainsResponse(drains=[self.drain_pb(d) for d in page], next_page_token=token)

    @rpc_method
    async def PauseDrain(self, request: cpb.PauseDrainRequest, context: Context) -> cpb.Drain:
        return self.drain_pb(await self.drains.pause(_id(request.id)))

    @rpc_method
    async def ResumeDrain(self, request: cpb.ResumeDrainRequest, context: Context) -> cpb.Drain:
        return self.drain_pb(await self.drains.resume(_id(request.id)))

    @rpc_method
    async def CancelDrain(self, request: cpb.CancelDrainRequest, context: Context) -> cpb.Drain:
        return self.drain_pb(await self.drains.cancel(_id(request.id)))

    @rpc_method
    async def WatchDrain(self, request: cpb.WatchDrainRequest, context: Context) -> AsyncIterator[cpb.Drain]:
        drain_id = _id(request.id)
        prefix = drain_id + "-"
        changed = asyncio.Event()
        latest: dict[str, DrainRecord | None] = {}

        def on_drain(name: str, new: DrainRecord | None) -> None:
            if name == drain_id:
                latest["drain"] = new
                changed.set()

        def on_migration(name: str, _r: MigrationRecord | None) -> None:
            if name.startswith(prefix):
                changed.set()

        # subscribe first, then read: a change the view applies while the first message is sent
        # (the drain's last: SUCCEEDED) is not lost, the watch does not wait for one more forever
        stops = [self.views.drains.subscribe(on_drain), self.views.migrations.subscribe(on_migration)]
        try:
            d = await must_read_drain(self.store, drain_id)
            sent = self.drain_pb(d)
            yield sent
            if d.state.is_final:
                return
            while True:
                try:
                    async with asyncio.timeout(HOST_CHECK_S):
                        await changed.wait()
                except TimeoutError:
                    # nothing changed: its host may have gone down (or come back) meanwhile
                    now = self.drain_pb(d)
                    if now.waiting != sent.waiting:
                        sent = now
                        yield now
                    continue
                changed.clear()
                if "drain" in latest:
                    newer = latest.pop("drain")
                    if newer is None:
                        raise NotFound(f"drain {d.id} was deleted", reason="DRAIN_DELETED", hint="ferry drains")
                    if newer.revision >= d.revision:
                        d = newer
                sent = self.drain_pb(d)
                yield sent
                if d.state.is_final:
                    return
                await asyncio.sleep(PROGRESS_EVERY_S)  # migrations' progress: at most this often
        finally:
            for stop in stops:
                stop()

    # ------------------------------------------------------------------ the fleet-wide watch

    @rpc_method
    async def WatchFleet(self, request: cpb.WatchFleetRequest, context: Context) -> AsyncIterator[cpb.FleetEvent]:
        objects = _known(request.objects, "objects", cpb.FleetObject) or {
            cpb.FLEET_OBJECT_MIGRATION,
            cpb.FLEET_OBJECT_DRAIN,
        }
        hosts, vms = set(validate.names(request.hosts, "hosts")), set(validate.names(request.vms, "vms"))
        phases = _known(request.phases, "phases", cpb.Phase)
        drain_states = _known(request.drain_states, "drain_states", cpb.DrainState)

        def migration_matches(r: MigrationRecord) -> bool:
            return (
                (not hosts or r.source_host in hosts or r.target_host in hosts)
                and (not vms or r.vm in vms or r.vm_uuid in vms)
                and (not phases or convert.phase_to_pb(r.phase) in phases)
            )

        def drain_matches(d: DrainRecord) -> bool:
            involved = {d.host, *d.targets, *(i.target for i in d.items)}
            return (
                (not hosts or bool(hosts & involved))
                and (not vms or any(i.vm in vms or i.vm_uuid in vms for i in d.items))
                and (not drain_states or convert.drain_state_to_pb(d.state) in drain_states)
            )

        queue: asyncio.Queue[cpb.FleetEvent | None] = asyncio.Queue()
        # ids this watch has sent and that still match: a deletion is told, and so is the change
        # that takes an object out of the filter (once, with the version that no longer matches)
        sent: set[tuple[int, str]] = set()

        def put(event: cpb.FleetEvent) -> None:
            if queue.qsize() >= WATCH_QUEUE_MAX:
                queue.put_nowait(None)
                return
            queue.put_nowait(event)

        def on_migration(name: str, r: MigrationRecord | None) -> None:
            key = (cpb.FLEET_OBJECT_MIGRATION, name)
            if r is None:
                if key in sent:
                    sent.discard(key)
                    put(cpb.FleetEvent(deleted=True, id=name, kind=cpb.FLEET_OBJECT_MIGRATION))
            elif migration_matches(r) or key in sent:
                if migration_matches(r):
                    sent.add(key)
                else:
                    sent.discard(key)
                put(cpb.FleetEvent(migration=convert.migration_to_pb(r), id=r.id, kind=cpb.FLEET_OBJECT_MIGRATION))

        def on_drain(name: str, d: DrainRecord | None) -> None:
            key = (cpb.FLEET_OBJECT_DRAIN, name)
            if d is None:
                if key in sent:
                    sent.discard(key)
                    put(cpb.FleetEvent(deleted=True, id=name, kind=cpb.FLEET_OBJECT_DRAIN))
            elif drain_matches(d) or key in sent:
                if drain_matches(d):
                    sent.add(key)
                else:
                    sent.discard(key)
                put(cpb.FleetEvent(drain=self.drain_pb(d), id=d.id, kind=cpb.FLEET_OBJECT_DRAIN))

        stops: list[Callable[[], None]] = []
        if cpb.FLEET_OBJECT_MIGRATION in objects:
            stops.append(self.views.migrations.subscribe(on_migration))
        if cpb.FLEET_OBJECT_DRAIN in objects:
            stops.append(self.views.drains.subscribe(on_drain))
        try:
            if request.current:
                if cpb.FLEET_OBJECT_DRAIN in objects:
                    for d in sorted(self.views.drains.items.values(), key=lambda x: (x.created_at, x.id)):
                        on_drain(d.id, d)
                if cpb.FLEET_OBJECT_MIGRATION in objects:
                    for r in sorted(self.views.migrations.items.values(), key=lambda x: (x.created_at, x.id)):
                        on_migration(r.id, r)
            while True:
                event = await queue.get()
                if event is None:
                    raise ResourceExhausted(
                        f"this watch fell {WATCH_QUEUE_MAX} changes behind",
                        reason="WATCH_BEHIND",
                        hint="read the stream faster, or narrow it (hosts, vms, phases); watch again with current",
                    )
                yield event
        finally:
            for stop in stops:
                stop()
