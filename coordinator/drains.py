"""The drain protocol of the API, over the store and the fleet view (no gRPC): submit, pause,
resume, cancel. Every replica runs it; the leader's ``drain_controller`` does the moving.

Submitting a drain of host H, in store writes:

1. ``drain-active/H`` created naming the new id (create-if-absent); when it names a drain that is
   not final, FAILED_PRECONDITION ``DRAIN_ACTIVE`` naming it; a key naming a final or missing
   drain is stale and taken over by compare-and-set;
2. ``drains/<id>`` created: RUNNING, one item per domain of H (its inventory asked now): running
   guests WAITING with their estimated migration time, the others SKIPPED (VM_NOT_RUNNING);
3. ``host-state/H`` cordoned by the drain (``hoststate.cordon``) -- the leader repeats this
   before it moves anything, so a crash between the steps cannot leave a drain of an uncordoned
   host.

A dry run does none of it: it answers the plan (each VM placed in turn, every placed one counted
against its host, so no host is overcommitted) and the estimated makespan.

Pause / resume / cancel: a compare-and-set of the drain's state (RUNNING <-> PAUSED, either ->
CANCELLING); the leader acts on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from ferry import keys
from ferry.diskplan import plan_disks
from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument, NotFound
from ferry.model import DomainInfo, HostMapping, MigrationOptions, Problem
from ferry.store import Conflict, Store

from .bandwidth import no_budget
from .checks import effective_storage, offline_disk_blockers, state_words
from .drain import DrainItem, DrainRecord, DrainState, ItemState, decode, encode, with_state
from .drainplan import GONE, Estimates, Nowhere, Target, plan, slots
from .fleet import Fleet
from .hoststate import cordon
from .placement import Reservations
from .placer import Placer

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
MAX_REASON = 500
STALE_WAIT_S = 20.0  # how long a drain-active key may name a drain not written yet


def new_drain_id() -> str:
    """e.g. ``d-3f2a9c41``: short, as it prefixes the ids of the drain's migrations."""
    return f"d-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class DrainRequest:
    host: str
    targets: tuple[str, ...] = ()
    max_parallel: int = 0
    policy: str = ""
    reason: str = ""
    options: MigrationOptions = MigrationOptions()
    storage_explicit: bool = False
    dry_run: bool = False


async def read_drain(store: Store, drain_id: str) -> DrainRecord | None:
    if not drain_id or "/" in drain_id:
        return None
    entry = await store.get(keys.drain_key(drain_id))
    return None if entry is None else decode(entry.value, entry.mod_revision)


async def must_read_drain(store: Store, drain_id: str) -> DrainRecord:
    d = await read_drain(store, drain_id)
    if d is None:
        raise NotFound(f"no drain {drain_id!r}", reason="DRAIN_UNKNOWN", hint="list drains with `ferry drains`")
    return d


async def active_drain_of(store: Store, host: str) -> str:
    """The id of the drain of ``host`` that is not final ('' when none)."""
    entry = await store.get(keys.drain_active_key(host))
    if entry is None:
        return ""
    d = await read_drain(store, keys.decode_id(entry.value))
    return d.id if d is not None and not d.state.is_final else ""


def domains_by_uuid(fleet: Fleet, host: str) -> dict[str, DomainInfo]:
    """The domains ``host`` last reported (the fleet's cached inventory), by UUID."""
    state = fleet.host(host)
    return {d.uuid: d for d in (state.domains if state is not None else ())}


def gone_problem(item: DrainItem, host: str, elsewhere: str) -> Problem:
    """VM_GONE: ``item``'s VM is not on ``host`` any more; ``elsewhere``: the host it is on now ("": none says)."""
    where = f"it is on {elsewhere} now" if elsewhere else "no host reports it (undefined or destroyed?)"
    return Problem(
        GONE, f"{item.vm} is no longer on {host}: {where}", "nothing to move: it left the host outside this drain"
    )


def cached_whereabouts(fleet: Fleet, vm_uuid: str, host: str) -> str:
    """The host other than ``host`` whose cached inventory lists the VM ("" for none; first by name)."""
    return next(
        (
            name
            for name, _, inv, _ in fleet.entries()
            if name != host and inv is not None and any(d.uuid == vm_uuid for d in inv.domains)
        ),
        "",
    )


def copied_bytes(domain: DomainInfo, options: MigrationOptions, explicit: bool) -> int:
    """The disk bytes a migration of ``domain`` copies (0 with shared storage)."""
    storage = effective_storage(domain, options, explicit)
    try:
        plans = plan_disks(domain.disks, storage, options.migrate_disks, HostMapping())
    except FerryError:
        return 0
    return sum(p.allocation or p.virtual_size for p in plans if p.copy)


def domain_items(
    domains: tuple[DomainInfo, ...], options: MigrationOptions, explicit: bool, estimates: Estimates, host: str
) -> list[DrainItem]:
    """One item per domain of the host: running guests to move, the others skipped."""
    items = []
    for dom in sorted(domains, key=lambda d: d.name):
        disk = copied_bytes(dom, options, explicit)
        if not dom.state.is_active:
            items.append(
                DrainItem(
                    dom.name,
                    dom.uuid,
                    dom.memory_bytes,
                    disk,
                    0.0,
                    state=ItemState.SKIPPED,
                    problems=(
                        Problem(
                            "VM_NOT_RUNNING",
                            f"{dom.name} is {state_words(dom.state)} on {host}: only running guests are moved",
                            _start_hint(dom, host),
                        ),
                    ),
                )
            )
            continue
        items.append(DrainItem(dom.name, dom.uuid, dom.memory_bytes, disk, estimates.seconds(dom.memory_bytes, disk)))
    return items


class Drains:
    """Submitting, pausing, resuming and cancelling drains: see the module doc."""

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        placer: Placer,
        *,
        outbound_limit: int,
        estimates: Estimates = Estimates(),
        clock: Clock = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = new_drain_id,
        stale_wait_s: float = STALE_WAIT_S,
        budget: Callable[[str], int] = no_budget,
    ) -> None:
        self.store = store
        self.budget = budget  # hosts' migration bandwidth budgets (``bandwidth.py``; 0: none)
        self.fleet = fleet
        self.placer = placer
        self.outbound_limit = outbound_limit
        self.estimates = estimates
        self._clock = clock
        self._new_id = new_id
        self.stale_wait_s = stale_wait_s

    # ------------------------------------------------------------------ submit

    async def submit(self, request: DrainRequest) -> DrainRecord:
        """A new RUNNING drain (or, ``dry_run``, its plan). Raises NotFound (HOST_UNKNOWN,
        TARGET_UNKNOWN), InvalidArgument (BAD_REASON, BAD_TARGETS), FailedPrecondition
        (DRAIN_ACTIVE, NOTHING_TO_DRAIN)."""
        host = request.host
        if len(request.reason) > MAX_REASON:
            raise InvalidArgument(
                f"the reason has {len(request.reason)} characters", reason="BAD_REASON", hint=f"at most {MAX_REASON}"
            )
        if self.fleet.host(host) is None:
            raise NotFound(
                f"no host named {host!r} is known",
                reason="HOST_UNKNOWN",
                hint=self.fleet.host_hint(host, "check the name with `ferry hosts`"),
            )
        self.fleet.require_known(request.targets, reason="TARGET_UNKNOWN")
        if host in request.targets:
            raise InvalidArgument(
                f"{host} cannot be a target of its own drain",
                reason="BAD_TARGETS",
                hint="name other hosts with --to, or none (any feasible host)",
            )
        if request.max_parallel < 0:
            raise InvalidArgument(
                "max_parallel is negative", reason="BAD_MAX_PARALLEL", hint="use 0 (the default) or more"
            )
        await asyncio.gather(self.fleet.refresh([host], force=True), self.fleet.refresh())
        state = self.fleet.host(host)
        domains = state.domains if state is not None else ()
        if state is None or state.inventory is None:
            raise FailedPrecondition(
                f"the agent on {host} has not reported its domains",
                reason="HOST_DOWN",
                hint=f"check ferry-agent on {host} (ferry hosts); a drain needs to know what runs there",
            )
        now = self._clock()
        drain = DrainRecord(
            id=self._new_id(),
            host=host,
            created_at=now,
            reason=request.reason,
            targets=tuple(request.targets),
            max_parallel=request.max_parallel,
            policy=request.policy,
            options=request.options,
            storage_explicit=request.storage_explicit,
            updated_at=now,
        )
        drain = replace(drain, items=tuple(self.items_of(drain, domains)))
        planned, makespan = self.plan(drain, now)
        drain = replace(drain, estimated_s=makespan)
        if request.dry_run:
            return replace(planned, estimated_s=makespan)
        drain = with_state(drain, DrainState.RUNNING, now, f"submitted: {len(drain.items)} VM(s) on {host}")
        await self._claim(drain)
        try:
            revision = await self.store.create(keys.drain_key(drain.id), encode(drain))
        except BaseException:
            with contextlib.suppress(FerryError):
                await keys_release(self.store, host, drain.id)
            raise
        with contextlib.suppress(FerryError):  # the leader cordons again before it moves anything
            await cordon(self.store, host, request.reason or f"drain {drain.id}", now, drain_id=drain.id)
        log.info("drain %s of %s submitted: %d VM(s), estimated %.0f s", drain.id, host, len(drain.items), makespan)
        return replace(drain, revision=revision)

    def items_of(self, drain: DrainRecord, domains: Sequence[DomainInfo]) -> list[DrainItem]:
        """The items ``drain`` makes of ``domains`` of its host (at submission, and for what comes
        to the host before it ends)."""
        # its slots share the host's budget, if it has one: each migration is that much slower
        estimates = self.estimates.within(self.budget(drain.host), slots(drain, self.outbound_limit))
        return domain_items(tuple(domains), drain.options, drain.storage_explicit, estimates, drain.host)

    def plan(self, drain: DrainRecord, now: datetime) -> tuple[DrainRecord, float]:
        """Every waiting item placed in turn from the cached inventories (see ``drainplan.plan``)."""
        booked = Reservations()
        hosts = self.placer.options(now)
        by_uuid = domains_by_uuid(self.fleet, drain.host)

        def place(item: DrainItem) -> Target | Nowhere:
            domain = by_uuid.get(item.vm_uuid)
            if domain is None:
                return Nowhere(gone_problem(item, drain.host, cached_whereabouts(self.fleet, item.vm_uuid, drain.host)))
            placed = self.placer.choose(
                domain,
                drain.host,
                drain.options,
                storage_explicit=drain.storage_explicit,
                now=now,
                only=drain.targets,
                hosts=booked.apply(hosts),
            )
            best = placed.ranking.best
            if best is None:
                return Nowhere(placed.ranking.nowhere())
            booked.add(best.host, domain, item.disk_bytes)
            return Target(best.host)

        return plan(drain, place, self.outbound_limit)

    async def _claim(self, drain: DrainRecord) -> None:
        key = keys.drain_active_key(drain.host)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stale_wait_s
        while True:
            try:
                await self.store.create(key, keys.encode_id(drain.id))
                return
            except AlreadyExists:
                pass
            entry = await self.store.get(key)
            if entry is None:
                continue
            other_id = keys.decode_id(entry.value)
            other = await read_drain(self.store, other_id)
            if other is None and loop.time() < deadline:
                await asyncio.sleep(0.05)  # another submission between its writes
                continue
            if other is not None and not other.state.is_final:
                raise FailedPrecondition(
                    f"{drain.host} is already being drained ({other.id}, {other.state.name.lower()})",
                    reason="DRAIN_ACTIVE",
                    hint=f"watch it (ferry drains watch {other.id}) or cancel it (ferry drains cancel {other.id})",
                )
            try:
                await self.store.update(key, keys.encode_id(drain.id), entry.mod_revision)
                return
            except Conflict:
                continue

    # ------------------------------------------------------------------ pause, resume, cancel

    async def _change(self, drain_id: str, want: str) -> DrainRecord:
        while True:
            d = await must_read_drain(self.store, drain_id)
            now = self._clock()
            if d.state.is_final:
                raise FailedPrecondition(
                    f"drain {d.id} already ended ({d.state.name.lower()})",
                    reason="ALREADY_FINAL",
                    hint=f"see `ferry drains show {d.id}`",
                )
            if want == "pause":
                if d.state is not DrainState.RUNNING:
                    if d.state is DrainState.PAUSED:
                        return d
                    raise FailedPrecondition(
                        f"drain {d.id} is {d.state.name.lower()}", reason="NOT_RUNNING", hint="nothing to pause"
                    )
                new = with_state(d, DrainState.PAUSED, now, "paused: no new migration starts")
            elif want == "resume":
                if d.state is not DrainState.PAUSED:
                    if d.state is DrainState.RUNNING:
                        return d
                    raise FailedPrecondition(
                        f"drain {d.id} is {d.state.name.lower()}", reason="NOT_PAUSED", hint="nothing to resume"
                    )
                new = with_state(d, DrainState.RUNNING, now, "resumed")
            else:
                if d.state is DrainState.CANCELLING:
                    return d
                new = with_state(d, DrainState.CANCELLING, now, "cancel requested")
            try:
                revision = await self.store.update(keys.drain_key(d.id), encode(new), d.revision)
            except Conflict:
                continue  # the leader moved it meanwhile: decide again
            log.info("drain %s: %s", d.id, want)
            return replace(new, revision=revision)

    async def pause(self, drain_id: str) -> DrainRecord:
        return await self._change(drain_id, "pause")

    async def resume(self, drain_id: str) -> DrainRecord:
        return await self._change(drain_id, "resume")

    async def cancel(self, drain_id: str) -> DrainRecord:
        return await self._change(drain_id, "cancel")


async def keys_release(store: Store, host: str, drain_id: str) -> bool:
    """Delete ``drain-active/<host>`` if (and only while) it names ``drain_id``."""
    key = keys.drain_active_key(host)
    while True:
        entry = await store.get(key)
        if entry is None or keys.decode_id(entry.value) != drain_id:
            return False
        try:
            return await store.delete(key, expected_mod_revision=entry.mod_revision) is not None
        except Conflict:
            continue


def _start_hint(dom: DomainInfo, host: str) -> str:
    """How to move a guest a drain skips because it is not running."""
    if offline_disk_blockers(dom, host):
        return "start it and drain again (its local disks move only live)"
    return f"start it and drain again, or move its definition: ferry migrate {dom.name} --offline"
