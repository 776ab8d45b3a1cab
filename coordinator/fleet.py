"""The coordinator's view of the fleet: registered agents, their clients and cached inventories.

Source of truth for which hosts exist is the store: every agent keeps ``hosts/<name>`` alive under
its lease (``agent/registration.py``). :class:`Fleet` lists that prefix, then follows it with a
watch (a ``Resync`` replaces the view), keeps one AgentClient per registered host (a new one when
the address changes) and caches each host's Inventory. An inventory older than ``inventory_ttl_s``
is fetched again when someone asks (``refresh``), from every host concurrently, each call bounded
by ``inventory_timeout_s``; an agent that does not answer is shown unavailable with its last facts
(and asked again by the prober, not by the next placement: it would wait for it).

A host is **available** while its registration exists, says its libvirtd answers (the agent
watches it: ``agent/health.py``) and its last inventory call did not fail (an unreachable agent
is asked again every ``reprobe_s``, so it comes back on its own).

The domains of each host are also kept in the store (``last-seen/<host>``: when, and what the host
reported then), so a replica that never asked a host before it went away (a follower, a new leader)
still lists that host's VMs, marked unreachable, instead of losing them from view. A replica loading
it applies the migrations that landed after its time (``note_landed``: every replica learns them
from the records), so last-seen is written only when a host reports something that snapshot and
those landings do not already say (:func:`explained_by_landings`: a VM started, stopped, defined or
undefined by someone, a state change; compared as ``ferry vms`` lists it), when the snapshot is older
than ``last_seen_max_age_s`` (the records of the landings it relies on must outlive it: see
:func:`last_seen_max_age`), and once when a host stops answering while landings are pending (so
the snapshot no longer needs their records however long the host stays away). A migration alone
writes none (it was 1.6 to 1.9 of the coordinator's 12 etcd writes per migration at 1,000 hosts).
Hosts declared in the config but never registered, and hosts whose registration went away, stay
in the view as unavailable (so ``ferry hosts`` shows them DOWN instead of forgetting them).

The Fleet is also the leader engine's HostDirectory: ``client(host)``, ``available_hosts()``,
``registration(host)`` and ``changes()`` (a stream of :class:`HostChange` when a host becomes
available or unavailable, or its agent registered anew while available: a restart).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from ferry import convert
from ferry.errors import FerryError, NotFound, Unavailable
from ferry.keys import HOSTS as HOSTS_PREFIX
from ferry.keys import LAST_SEEN as LAST_SEEN_PREFIX
from ferry.keys import last_seen_key, name_below
from ferry.model import Disk, DomainInfo, DomainState, HostFacts, HostMapping, Inventory, Nic, Problem
from ferry.ports import AgentClient
from ferry.registry import HostChange, HostRegistration, down_problem
from ferry.store import Conflict, Entry, EventKind, Resync, Store
from ferry.v1 import agent_pb2 as apb

from . import names
from .changelog import ChangeLog
from .checks import HostView

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
AgentFactory = Callable[[str, str], AgentClient]  # (host name, agent address) -> client


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HostState:
    """One host as the fleet view sees it now."""

    name: str
    address: str  # agent gRPC address ("" when never registered)
    registered: bool  # the agent's lease holds its key
    reachable: bool | None  # last inventory call: True ok, False failed, None not tried
    inventory: Inventory | None  # the last inventory that arrived (kept when the agent is lost)
    last_seen: datetime | None  # when that inventory arrived
    error: FerryError | None = None  # why the last inventory call failed
    registration: HostRegistration | None = None

    @property
    def available(self) -> bool:
        libvirt_up = self.registration is None or self.registration.libvirt_up
        return self.registered and self.reachable is not False and libvirt_up

    @property
    def why_down(self) -> Problem | None:
        """Why it is not available, with what to check (None: it is)."""
        return down_problem(self.name, self.address, self.registration, self.reachable, self.error)

    @property
    def facts(self) -> HostFacts | None:
        return self.inventory.host if self.inventory is not None else None

    @property
    def domains(self) -> tuple[DomainInfo, ...]:
        return self.inventory.domains if self.inventory is not None else ()


@dataclass
class _Host:
    name: str
    registration: HostRegistration | None = None
    client: AgentClient | None = None
    client_address: str = ""
    inventory: Inventory | None = None
    fetched_at: datetime | None = None
    reachable: bool | None = None
    error: FerryError | None = None
    refreshing: asyncio.Task[None] | None = field(default=None, repr=False)
    saved: tuple[DomainInfo, ...] | None = None  # the domains last-seen/<name> holds, as far as we know
    saved_at: datetime | None = None  # and its time (a replica loading it applies the landings after it)
    # migrations that landed on or left this host after ``saved_at``, by VM UUID, the newest: when,
    # and the domain that arrived (None: it left); with ``saved`` they say what the host runs (none
    # are kept while no snapshot is known: one missing here costs a write, never a wrong listing)
    landed_since_saved: dict[str, tuple[datetime, DomainInfo | None]] = field(default_factory=dict)
    looked_up: bool = False  # last-seen/<name> was read (a host that never answered this replica)
    # migrations that landed (the record reached Finishing), by VM UUID, until an inventory taken
    # after them shows the move itself: when it came, and the domain that arrived here
    arrived: dict[str, tuple[datetime, DomainInfo]] = field(default_factory=dict)
    departed: dict[str, datetime] = field(default_factory=dict)

    @property
    def available(self) -> bool:
        """As ``HostState.available``, without building one (the placer reads this per host)."""
        reg = self.registration
        return reg is not None and reg.libvirt_up and self.reachable is not False

    def state(self) -> HostState:
        reg = self.registration
        return HostState(
            self.name,
            reg.address if reg else "",
            reg is not None,
            self.reachable,
            self.inventory,
            self.fetched_at,
            self.error,
            reg,
        )


def pick_domain(
    found: Iterable[tuple[str, DomainInfo]], available: Collection[str] = ()
) -> tuple[str, DomainInfo] | None:
    """Of the copies of one VM seen on several hosts, the one that counts (pure).

    A running (active) copy wins over a shut-off definition left behind; between two active
    copies, the one on an available host (the other is an unreachable host's last report); then
    the first host by name (a VM really active on two hosts is the engine's problem).

    >>> from ferry.model import DomainState as S
    >>> d = lambda st: DomainInfo("g1", "u1", st)
    >>> pick_domain([("h1", d(S.SHUTOFF)), ("h2", d(S.RUNNING))])[0]
    'h2'
    >>> pick_domain([("h2", d(S.SHUTOFF)), ("h1", d(S.SHUTOFF))])[0]
    'h1'
    >>> pick_domain([("h1", d(S.RUNNING)), ("h2", d(S.RUNNING))], available={"h2"})[0]
    'h2'
    """
    ranked = sorted(found, key=lambda hd: (not hd[1].state.is_active, hd[0] not in available, hd[0]))
    return ranked[0] if ranked else None


#: The oldest a last-seen snapshot may get while the host's changes are migrations alone (each then
#: explained by a landing noted after it): a replica loading it needs those landings' records, and
#: retention deletes them (``[retention] migrations_s``, a week by default). Ten minutes is far inside
#: that, and rewrites a 1,000-host fleet's snapshots at under two writes a second at most.
LAST_SEEN_MAX_AGE_S = 600.0


def last_seen_max_age(retention_s: float) -> float:
    """How old a last-seen snapshot may get before a landing-only change rewrites it, given how long
    finished migration records are kept (``retention_s``, 0 = forever): :data:`LAST_SEEN_MAX_AGE_S`,
    or half the retention when that is shorter (the host is asked every few seconds, so the records
    of every landing after the snapshot are still there when a replica loads it).

    >>> last_seen_max_age(7 * 86400.0), last_seen_max_age(0.0), last_seen_max_age(300.0)
    (600.0, 600.0, 150.0)
    """
    return LAST_SEEN_MAX_AGE_S if retention_s <= 0 else min(LAST_SEEN_MAX_AGE_S, retention_s / 2)


def listed(d: DomainInfo) -> tuple[object, ...]:
    """What ``ferry vms`` shows of a domain (its columns but the host): the part of a last-seen
    snapshot that must be right. Disk paths, allocations and the like may go stale in it."""
    return (
        d.uuid,
        d.name,
        d.state,
        d.memory_bytes,
        d.vcpus,
        tuple((x.target, x.shared) for x in d.disks),
        tuple(n.source for n in d.nics),
    )


def explained_by_landings(
    saved: Iterable[DomainInfo], now: Iterable[DomainInfo], landed: Mapping[str, DomainInfo | None]
) -> bool:
    """Whether the domains a host reports ``now`` are, as listed, those of its last-seen snapshot
    (``saved``) once the migrations that landed since are applied (pure). ``landed``: by VM UUID,
    the domain that arrived on the host (as the migration's note carries it), None for one that left.

    A VM a landing moved may also still look as in the snapshot (the inventory was taken before
    the landing): a replica loading the snapshot applies the landing all the same. Anything else
    that differs is not explained: the snapshot must be written.

    >>> from ferry.model import DomainState as S
    >>> g1, g2 = DomainInfo("g1", "u1", S.RUNNING), DomainInfo("g2", "u2", S.RUNNING)
    >>> explained_by_landings([g1, g2], [g2], {"u1": None})  # g1 left
    True
    >>> explained_by_landings([g2], [g2, g1], {"u1": g1})  # g1 arrived
    True
    >>> explained_by_landings([g1, g2], [g1, g2], {"u1": None})  # taken before g1 left
    True
    >>> explained_by_landings([g1, g2], [g1], {"u1": None})  # g2 went: no landing says so
    False
    >>> explained_by_landings([g1], [DomainInfo("g1", "u1", S.SHUTOFF)], {"u1": None})  # left a definition
    False
    """
    saved, now = tuple(saved), tuple(now)
    before = {d.uuid: listed(d) for d in saved}
    after = {d.uuid: listed(d) for d in now}
    if len(before) != len(saved) or len(after) != len(now):
        return False  # one UUID twice: not worth judging
    for uuid in before.keys() | after.keys() | landed.keys():
        seen = after.get(uuid)
        if seen == before.get(uuid):
            continue
        if uuid not in landed:
            return False
        moved = landed[uuid]
        if seen != (listed(moved) if moved is not None else None):
            return False
    return True


def encode_last_seen(at: datetime, inventory: Inventory) -> bytes:
    """The value of ``last-seen/<host>``: when, and the inventory (its protobuf, base64)."""
    pb = convert.inventory_to_pb(inventory).SerializeToString()
    return json.dumps({"at": at.isoformat(), "inventory": base64.b64encode(pb).decode()}).encode()


def decode_last_seen(value: bytes) -> tuple[datetime, Inventory]:
    """The inverse of :func:`encode_last_seen`.

    >>> from ferry.model import DomainState
    >>> at = datetime(2026, 12, 2, tzinfo=UTC)
    >>> inv = Inventory(HostFacts("h1", "hu1"), (DomainInfo("g1", "u1", DomainState.RUNNING),))
    >>> decode_last_seen(encode_last_seen(at, inv)) == (at, inv)
    True
    """
    data = json.loads(value)
    m = apb.Inventory()
    m.ParseFromString(base64.b64decode(data["inventory"]))
    return datetime.fromisoformat(data["at"]), convert.inventory_from_pb(m)


class Fleet:
    """See the module doc. ``await start()`` before use, ``await close()`` at the end."""

    def __init__(
        self,
        store: Store,
        agent_factory: AgentFactory,
        clock: Clock = _utc_now,
        inventory_ttl_s: float = 5.0,
        *,
        inventory_timeout_s: float = 3.0,
        declared: Iterable[str] = (),
        reprobe_s: float = 2.0,
        last_seen_max_age_s: float = LAST_SEEN_MAX_AGE_S,
    ) -> None:
        self.store = store
        self._factory = agent_factory
        self._clock = clock
        self.inventory_ttl_s = inventory_ttl_s
        self.inventory_timeout_s = inventory_timeout_s
        self.reprobe_s = reprobe_s
        self.last_seen_max_age_s = last_seen_max_age_s
        declared = tuple(declared)
        self._declared = frozenset(declared)
        self._hosts: dict[str, _Host] = {name: _Host(name) for name in declared}
        self._where: dict[str, set[str]] = {}  # a domain's name and UUID -> the hosts whose inventory has it
        self._landed_at: dict[str, datetime] = {}  # a VM UUID -> when its newest noted migration landed
        # every change of a host's inventory or state, by version (placement's caches)
        self._changes = ChangeLog()
        self._subscribers: list[asyncio.Queue[HostChange]] = []
        self._watcher: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._forgetter: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._available: tuple[int, frozenset[str]] = (-1, frozenset())  # as of a version

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the registrations and follow them from now on."""
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._follow(), name="fleet: hosts watch")
            self._prober = asyncio.create_task(self._reprobe(), name="fleet: re-probe unreachable agents")
        await self._ready.wait()
        try:  # hosts that reported VMs once and are gone now: in view (DOWN), their VMs listed
            entries, revision = await self.store.list(LAST_SEEN_PREFIX)
        except FerryError as exc:
            log.warning("could not list the hosts' last-seen VMs: %s", exc)
            return
        for e in entries:
            if name := name_below(LAST_SEEN_PREFIX, e.key):
                self._hosts.setdefault(name, _Host(name))
        if self._forgetter is None:
            self._forgetter = asyncio.create_task(self._follow_forgotten(revision), name="fleet: forgotten hosts")

    async def close(self) -> None:
        for task in (self._watcher, self._prober, self._forgetter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watcher = self._prober = self._forgetter = None
        for h in self._hosts.values():
            if h.refreshing is not None:
                h.refreshing.cancel()
            await _close_client(h.client)
            h.client = None

    # -- queries --------------------------------------------------------------------------------

    def hosts(self) -> list[HostState]:
        """Every known host (registered, declared or seen since start), by name."""
        return [self._hosts[n].state() for n in sorted(self._hosts)]

    def host(self, name: str) -> HostState | None:
        h = self._hosts.get(name)
        return h.state() if h is not None else None

    def entries(self) -> list[tuple[str, bool, Inventory | None, datetime | None]]:
        """(name, available, inventory, when it arrived) of every host: what placement reads, without
        building a HostState per host (a 1,000-host fleet is ranked many times a second)."""
        return [(n, h.available, h.inventory, h.fetched_at) for n, h in sorted(self._hosts.items())]

    def why_down(self, name: str) -> Problem | None:
        """Why ``name`` is not available (None: it is, or the fleet does not know it)."""
        h = self._hosts.get(name)
        return None if h is None or h.available else h.state().why_down

    def knows(self, name: str) -> bool:
        """Whether ``name`` is in the view (a forgotten host is not, though ``changed_since`` names it)."""
        return name in self._hosts

    def entry(self, name: str) -> tuple[str, bool, Inventory | None, datetime | None]:
        """One host's tuple of ``entries()``."""
        h = self._hosts[name]
        return name, h.available, h.inventory, h.fetched_at

    @property
    def version(self) -> int:
        """Moves on with every change of a host's inventory or state."""
        return self._changes.version

    def changed_since(self, version: int) -> list[str]:
        """The hosts whose inventory or state changed after ``version`` (of ``self.version``), the
        most recent first: placement updates its view of those alone."""
        return self._changes.changed_since(version)

    def _changed(self, h: _Host) -> None:
        self._changes.touch(h.name)

    def fresh_facts(self, name: str) -> HostFacts | None:
        """The host's facts from an inventory younger than the TTL that its agent answered; None
        otherwise (the caller asks the agent)."""
        h = self._hosts.get(name)
        if h is None or h.inventory is None or h.fetched_at is None or not h.reachable or not h.available:
            return None
        if self._clock() - h.fetched_at >= timedelta(seconds=self.inventory_ttl_s):
            return None
        return h.inventory.host

    def host_view(self, name: str) -> HostView | None:
        """What the preflight checks need of ``name``; None when no such host is known."""
        h = self._hosts.get(name)
        if h is None:
            return None
        s = h.state()
        return HostView(name=name, available=s.available, facts=s.facts, why_down=s.why_down)

    async def refresh(
        self, names: Iterable[str] | None = None, *, force: bool = False, max_age_s: float | None = None
    ) -> None:
        """Fetch the inventory of each (registered) host whose copy is older than ``max_age_s``
        (default: the inventory TTL), all at once; ``force``: whatever its age.

        Without ``names`` nor ``force`` (a placement, a ranking: every host), a host whose agent
        did not answer last time is not asked: the prober asks it again every ``reprobe_s``, and a
        placement does not wait up to ``inventory_timeout_s`` for a host it counts as down anyway.
        Never raises for an agent: a failed fetch marks that host unreachable and keeps its last facts.
        """
        max_age = self.inventory_ttl_s if max_age_s is None else min(max_age_s, self.inventory_ttl_s)
        taken_after = self._clock() - timedelta(seconds=max_age)  # a fresh inventory was taken after this
        wanted = self._hosts.keys() if names is None else [n for n in names if n in self._hosts]
        tasks = []
        for name in list(wanted):
            h = self._hosts[name]
            if h.registration is None or h.client is None:
                if h.inventory is None and not h.looked_up:
                    # gone before this replica asked it: what it last told any replica
                    tasks.append(asyncio.create_task(self._load_last_seen(h), name=f"last seen {name}"))
                continue
            if not force and h.reachable and h.fetched_at is not None and h.fetched_at > taken_after:
                continue  # fresh
            if h.reachable is False and names is None and not force:
                continue  # the prober's (``_reprobe``)
            if h.refreshing is None or h.refreshing.done():
                h.refreshing = asyncio.create_task(self._fetch(h), name=f"inventory {name}")
            tasks.append(h.refreshing)
        if tasks:
            await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)

    async def locate_vm(
        self, name_or_uuid: str, *, fresh: bool = False, near: Collection[str] = ()
    ) -> tuple[str, DomainInfo] | None:
        """The host a VM is on and its domain, by name or UUID.

        A running copy wins over a shut-off definition left on another host; None when no host
        reports it. ``fresh`` (a submission): the answer is checked now -- the hosts whose cached
        inventory shows the VM (and those in ``near``, where the caller believes it may be: the
        target of its last migration, say) are asked again,
        and only when none of them has it running is every host asked, so a submission costs
        one agent call, not one per host of the fleet. A host that just answered that it runs the
        VM wins over a cached copy that says the same of another host (that copy may be stale: a
        host that did not answer in time keeps what it reported).
        """
        running: set[str] = set()
        if not fresh:
            await self.refresh()
        else:
            reporting = self._reporting(name_or_uuid) | {n for n in near if n}
            running = await self._confirm(name_or_uuid, reporting)
            if not running:
                if reporting:
                    await self.refresh(reporting, force=True)
                if not self._running_copy(name_or_uuid):
                    await self.refresh(force=True)
        found = [
            (name, d)
            for name in sorted(self._where.get(name_or_uuid, ()))
            for d in self._domains(name)
            if name_or_uuid in (d.name, d.uuid)
        ]
        if running:
            found = [(name, d) for name, d in found if name in running] or found
        return pick_domain(found, self.available_hosts())

    def _domains(self, name: str) -> tuple[DomainInfo, ...]:
        inv = self._hosts[name].inventory
        return inv.domains if inv is not None else ()

    def _put_inventory(self, h: _Host, inventory: Inventory | None) -> None:
        """Set ``h``'s inventory, keeping the index of where each domain is."""
        if h.inventory is not None:
            for d in h.inventory.domains:
                for key in (d.name, d.uuid):
                    where = self._where.get(key)
                    if where is not None:
                        where.discard(h.name)
                        if not where:
                            del self._where[key]
        h.inventory = inventory
        if inventory is not None:
            for d in inventory.domains:
                for key in (d.name, d.uuid):
                    self._where.setdefault(key, set()).add(h.name)
        self._changed(h)

    async def _confirm(self, name_or_uuid: str, hosts: set[str]) -> set[str]:
        """Ask each of ``hosts`` for just this domain (GetDomain: one domain, not a whole
        inventory); the hosts that run it. Each answer updates that host's cached inventory."""

        async def ask(h: _Host) -> bool:
            client = h.client
            if client is None or h.inventory is None:
                return False
            try:
                async with asyncio.timeout(self.inventory_timeout_s):
                    domain, _ = await client.get_domain(name_or_uuid)
            except NotFound:
                gone = {d.uuid for d in h.inventory.domains if name_or_uuid in (d.name, d.uuid)}
                for uuid in gone:  # the host's word is newer than any landing noted for it
                    h.arrived.pop(uuid, None)
                others = tuple(d for d in h.inventory.domains if d.uuid not in gone)
                self._put_inventory(h, replace(h.inventory, domains=others))
                return False
            except (FerryError, TimeoutError):
                return False
            # the host's own answer (disks, NICs) is newer than a landing noted for the domain, which
            # may know only its name and memory: applying that note again must not bring it back
            h.arrived.pop(domain.uuid, None)
            h.departed.pop(domain.uuid, None)
            # one domain per name on a host: a cached one of this name under another UUID is an
            # older VM of that name (undefined and created anew since) and goes too
            others = tuple(d for d in h.inventory.domains if d.uuid != domain.uuid and d.name != domain.name)
            self._put_inventory(h, replace(h.inventory, domains=(*others, domain)))
            if h.inventory is not None and self._needs_save(h, h.inventory.domains):
                await self._save_last_seen(h, h.inventory)  # any replica lists it should the host die
            return domain.state.is_active

        known = [self._hosts[n] for n in hosts if n in self._hosts and self._hosts[n].registration is not None]
        answers = await asyncio.gather(*(ask(h) for h in known))
        return {h.name for h, active in zip(known, answers, strict=True) if active}

    def _running_copy(self, name_or_uuid: str) -> bool:
        return any(
            d.state.is_active
            for name in self._where.get(name_or_uuid, ())
            if self._hosts[name].reachable
            for d in self._domains(name)
            if name_or_uuid in (d.name, d.uuid)
        )

    def _reporting(self, name_or_uuid: str) -> set[str]:
        return set(self._where.get(name_or_uuid, ()))

    def host_hint(self, given: str, fallback: str) -> str:
        """The hint for an unknown host name: ``fallback``, led by the known host it most likely means."""
        return names.host_hint(given, {n: h.registration for n, h in self._hosts.items()}, fallback)

    def require_known(self, hosts: Iterable[str], *, reason: str) -> None:
        """NotFound (``reason``) naming every host of ``hosts`` the fleet does not know."""
        unknown = [h for h in hosts if h not in self._hosts]
        if unknown:
            raise NotFound(
                f"no host named {', '.join(map(repr, unknown))} is known",
                reason=reason,
                hint=self.host_hint(unknown[0], "check the names with `ferry hosts`")
                if len(unknown) == 1
                else "check the names with `ferry hosts`",
            )

    def vm_hint(self, given: str, fallback: str) -> str:
        """The hint for an unknown VM name: ``fallback``, led by the VM it most likely means."""
        return names.vm_hint(given, self._where, fallback)

    # -- the engine's HostDirectory -------------------------------------------------------------

    def client(self, host: str) -> AgentClient:
        """The agent client of ``host``. NotFound (HOST_UNKNOWN) when the host never registered."""
        h = self._hosts.get(host)
        if h is None or h.client is None:
            if h is not None:
                raise Unavailable(
                    f"the agent on {host} has not registered",
                    reason="AGENT_NOT_REGISTERED",
                    hint=f"start ferry-agent on {host} with a [registry] section",
                )
            raise NotFound(
                f"no host named {host!r} is known",
                reason="HOST_UNKNOWN",
                hint=self.host_hint(host, "check the name with `ferry hosts`; its agent must be running"),
            )
        return h.client

    def registration(self, host: str) -> HostRegistration | None:
        """What the agent of ``host`` registered (libvirt URI, migration address), while registered."""
        h = self._hosts.get(host)
        return h.registration if h is not None else None

    def available_hosts(self) -> set[str]:
        version, available = self._available
        if version != self.version:  # asked at every admission: worked out again for the hosts changed since
            if version < 0:
                available = frozenset(n for n, h in self._hosts.items() if h.available)
            else:
                changed = self.changed_since(version)
                up = {n for n in changed if (h := self._hosts.get(n)) is not None and h.available}
                available = (available - set(changed)) | up
            self._available = (self.version, available)
        return set(available)

    async def changes(self) -> AsyncIterator[HostChange]:
        """Every change of availability from now on (one queue per consumer)."""
        queue: asyncio.Queue[HostChange] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(queue)

    def note_landed(
        self,
        vm_uuid: str,
        source: str,
        target: str,
        at: datetime,
        *,
        name: str = "",
        memory_bytes: int = 0,
        disks: tuple[Disk, ...] = (),
        mapping: HostMapping | None = None,
    ) -> None:
        """A migration of ``vm_uuid`` from ``source`` to ``target`` landed at ``at`` (its job
        completed): move the domain between the two cached inventories, so the view knows where
        the VM runs without asking every host -- also when ``target`` stops answering before this
        replica asked it again (its last-seen VMs, loaded then, may predate the landing: the move is
        applied to them too). An inventory taken after ``at`` shows the move itself and ends the note.
        ``name``, ``memory_bytes`` and ``disks`` (as the migration placed them on the target) describe
        the domain when neither cached inventory has it (a replica that never asked about the VM):
        without its disks a submission moving it again would take it for a VM on shared storage.
        A domain known from the source's inventory lands with ``disks`` in place of its own (the
        same devices, at the paths the migration gave them) and its NICs on the bridges and
        networks ``mapping`` names (as the agent rewrote its XML for the target)."""
        src, tgt = self._hosts.get(source), self._hosts.get(target)
        newest = self._landed_at.get(vm_uuid)
        if src is None or tgt is None or (newest is not None and newest >= at):
            return  # a later move of the VM was noted already (records come in key order at a start)
        self._landed_at[vm_uuid] = at
        moved = next((d for d in src.inventory.domains if d.uuid == vm_uuid), None) if src.inventory else None
        if moved is not None:
            moved = as_landed(moved, disks, mapping)
        elif tgt.inventory is not None:
            moved = next((d for d in tgt.inventory.domains if d.uuid == vm_uuid), None)
        if moved is None and name:
            moved = DomainInfo(
                name=name, uuid=vm_uuid, state=DomainState.RUNNING, memory_bytes=memory_bytes, disks=disks
            )
        if moved is None:
            return
        arrived = replace(moved, state=DomainState.RUNNING)
        src.departed[vm_uuid] = at
        src.arrived.pop(vm_uuid, None)
        tgt.arrived[vm_uuid] = (at, arrived)
        tgt.departed.pop(vm_uuid, None)
        for h, dom in ((src, None), (tgt, arrived)):
            if h.saved_at is not None and at > h.saved_at:  # one before the snapshot is in it
                h.landed_since_saved[vm_uuid] = (at, dom)
        self._apply_moves(src)
        self._apply_moves(tgt)

    def _apply_moves(self, h: _Host) -> None:
        """Apply the landings noted after ``h``'s inventory was taken to it; forget the older ones."""
        if h.inventory is None:
            return
        taken = h.fetched_at
        domains = list(h.inventory.domains)
        for uuid, at in list(h.departed.items()):
            if taken is not None and taken >= at:
                del h.departed[uuid]
            else:
                domains = [d for d in domains if d.uuid != uuid]
        for uuid, (at, dom) in list(h.arrived.items()):
            if taken is not None and taken >= at:
                del h.arrived[uuid]
            else:
                domains = [*(d for d in domains if d.uuid != uuid), dom]
        if tuple(domains) != h.inventory.domains:
            self._put_inventory(h, replace(h.inventory, domains=tuple(domains)))

    async def forget(self, name: str) -> tuple[str, ...]:
        """Take ``name`` -- a host no agent is registered for (the caller checked) -- out of the view
        and delete ``last-seen/<name>``; the names of the VMs it last reported. Other replicas take
        it out when they see that deletion (``_follow_forgotten``)."""
        h = self._hosts.get(name)
        vms = tuple(sorted(d.name for d in h.inventory.domains)) if h is not None and h.inventory is not None else ()
        await self.store.delete(last_seen_key(name))
        self._drop(name)
        return vms

    def _drop(self, name: str) -> None:
        h = self._hosts.get(name)
        if h is None or h.registration is not None or name in self._declared:
            return  # registered again meanwhile, or declared in the config: it stays
        self._put_inventory(h, None)
        del self._hosts[name]
        if h.refreshing is not None:
            h.refreshing.cancel()
        asyncio.ensure_future(_close_client(h.client))
        log.info("host %s forgotten: no longer in view", name)

    async def _follow_forgotten(self, revision: int) -> None:
        """Drop a host from the view when its ``last-seen/<name>`` is deleted (ForgetHost on any
        replica). A resync (compacted history) drops nothing: a forget missed then shows until the
        replica restarts."""
        backoff = 0.1
        while True:
            try:
                watch = self.store.watch(LAST_SEEN_PREFIX, revision + 1)
                async with contextlib.aclosing(watch):
                    async for item in watch:
                        if isinstance(item, Resync):
                            revision = item.revision
                        else:
                            revision = max(revision, item.revision)
                            if item.kind is EventKind.DELETE and (name := name_below(LAST_SEEN_PREFIX, item.entry.key)):
                                self._drop(name)
                return  # the store was closed
            except FerryError as exc:
                log.warning("last-seen watch: %s: %s; watching again", exc.reason, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def report_unreachable(self, host: str, error: FerryError) -> None:
        """A caller (the engine) found the agent unreachable: show it so until an inventory answers."""
        h = self._hosts.get(host)
        if h is not None:
            self._set(h, reachable=False, error=error)

    # -- internals ------------------------------------------------------------------------------

    async def _fetch(self, h: _Host) -> None:
        client = h.client
        if client is None:
            return
        asked = self._clock()  # what the inventory shows is as of this moment at the earliest
        try:
            async with asyncio.timeout(self.inventory_timeout_s):
                inventory = await client.inventory()
        except (FerryError, TimeoutError) as exc:
            err = (
                exc
                if isinstance(exc, FerryError)
                else Unavailable(
                    f"the agent on {h.name} did not answer within {self.inventory_timeout_s:g} s",
                    reason="AGENT_TIMEOUT",
                    hint=f"check ferry-agent and libvirtd on {h.name}",
                )
            )
            if h.client is client:
                log.info("inventory of %s failed: %s: %s", h.name, err.reason, err)
                self._set(h, reachable=False, error=err)
                if not h.looked_up:  # once per outage: another replica may have seen it later than we did
                    await self._load_last_seen(h)
                    await self._save_landings(h)
            return
        if h.client is client:
            # taken as of when it was asked: a landing noted while the call ran may be missing from
            # it, so it stays noted (``_apply_moves``), else the VM would show on its old host again
            self._set(h, inventory=inventory, fetched_at=asked, reachable=True, error=None)
            self._apply_moves(h)
            h.looked_up = False
            if self._needs_save(h, inventory.domains):
                await self._save_last_seen(h, inventory, asked)

    def _needs_save(self, h: _Host, domains: tuple[DomainInfo, ...]) -> bool:
        """Whether ``last-seen/<host>`` must be written for a host reporting ``domains``: they differ
        from what it holds, other than by the landings noted since (a replica loading it applies
        those), or it is older than ``last_seen_max_age_s`` (their records must still be there)."""
        if domains == h.saved:
            return False
        if h.saved is None or h.saved_at is None:
            return True
        if (self._clock() - h.saved_at).total_seconds() >= self.last_seen_max_age_s:
            return True
        landed = {uuid: dom for uuid, (_, dom) in h.landed_since_saved.items()}
        return not explained_by_landings(h.saved, domains, landed)

    async def _save_landings(self, h: _Host) -> None:
        """``h`` stopped answering: if landings noted since its snapshot changed what it runs, write
        the view's domains (the snapshot with those landings applied), so a replica loading them
        needs no migration record however long the host is away. Under the snapshot's time (or the
        inventory's, if older): the inventory may have been taken just before a landing noted after
        that time, and a loader applies such landings again (to a VM already moved, a no-op)."""
        inv, taken, saved_at = h.inventory, h.fetched_at, h.saved_at
        if inv is None or taken is None or h.saved is None or saved_at is None or not h.landed_since_saved:
            return
        if {listed(d) for d in inv.domains} != {listed(d) for d in h.saved}:
            await self._save_last_seen(h, inv, min(taken, saved_at))

    async def _save_last_seen(self, h: _Host, inventory: Inventory, at: datetime | None = None) -> None:
        """Write ``last-seen/<host>``: ``inventory`` as of ``at`` (default: now) (an upsert; a lost
        race with another replica is fine: it wrote the same or newer). Never raises: the view
        works without it."""
        at = self._clock() if at is None else at
        value = encode_last_seen(at, inventory)
        key = last_seen_key(h.name)
        try:
            entry = await self.store.get(key)
            if entry is None:
                await self.store.create(key, value)
            else:
                await self.store.update(key, value, entry.mod_revision)
            self._saved(h, inventory.domains, at)
        except (Conflict, FerryError) as exc:
            log.info("could not save the VMs last seen on %s: %s", h.name, exc)

    @staticmethod
    def _saved(h: _Host, domains: tuple[DomainInfo, ...], at: datetime) -> None:
        """``last-seen/<host>`` holds ``domains`` as of ``at`` now: the landings up to then are in it."""
        h.saved, h.saved_at = domains, at
        for uuid, (landed_at, _) in list(h.landed_since_saved.items()):
            if landed_at <= at:
                del h.landed_since_saved[uuid]

    async def _load_last_seen(self, h: _Host) -> None:
        """A host that does not answer: what it last reported to any replica (``last-seen/<host>``)
        when that is newer than what this replica saw (or it saw nothing), so its VMs stay in view
        as they were last."""
        try:
            entry = await self.store.get(last_seen_key(h.name))
        except FerryError as exc:
            log.info("could not read the VMs last seen on %s: %s", h.name, exc)
            return
        h.looked_up = True
        if entry is None:
            return
        try:
            at, inventory = decode_last_seen(entry.value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s: %s", entry.key, exc)
            return
        if h.inventory is not None and h.fetched_at is not None and h.fetched_at >= at:
            return  # what this replica saw is as new
        log.info("%s does not answer: showing the %d VM(s) it reported at %s", h.name, len(inventory.domains), at)
        self._put_inventory(h, inventory)  # through the index of where each domain is
        h.fetched_at = at
        self._saved(h, inventory.domains, at)
        self._apply_moves(h)  # what landed or left after it reported these

    def _set(self, h: _Host, *, restarted: bool = False, **changes: object) -> None:
        """Change ``h``'s fields; tell subscribers when its availability flipped, or when it
        stayed available across a restart of its agent."""
        before = h.state().available
        if "inventory" in changes:
            self._put_inventory(h, changes.pop("inventory"))  # type: ignore[arg-type]
        self._changed(h)
        for name, value in changes.items():
            setattr(h, name, value)
        state = h.state()
        after = state.available
        if before != after or (after and restarted):
            why = state.why_down
            log.info(
                "host %s is %s%s",
                h.name,
                "available" if after else "unavailable" if before != after else "restarted",
                f": {why.reason}: {why.message}" if why else "",
            )
            for q in self._subscribers:
                q.put_nowait(HostChange(h.name, after, restarted=before == after, why=why))

    def _apply_put(self, entry: Entry) -> None:
        name = entry.key[len(HOSTS_PREFIX) :]
        try:
            reg = HostRegistration.decode(entry.value)
        except FerryError as exc:
            log.warning("ignoring registration %s: %s", entry.key, exc)
            return
        h = self._hosts.setdefault(name, _Host(name))
        if h.registration == reg:
            return
        restarted = h.registration is not None and h.registration.registered_at != reg.registered_at
        # a new, restarted or moved agent: nothing is known yet about reaching it
        changes: dict[str, object] = {"registration": reg, "reachable": None, "error": None}
        old = h.client
        if old is None or h.client_address != reg.address:
            changes.update(client=self._factory(name, reg.address), client_address=reg.address)
            if old is not None:
                asyncio.ensure_future(_close_client(old))
        self._set(h, restarted=restarted, **changes)

    def _apply_delete(self, key: str) -> None:
        h = self._hosts.get(key[len(HOSTS_PREFIX) :])
        if h is not None:
            self._set(h, registration=None)

    def _apply_snapshot(self, entries: Iterable[Entry]) -> None:
        present = {e.key for e in entries}
        for e in entries:
            self._apply_put(e)
        for name in list(self._hosts):
            if HOSTS_PREFIX + name not in present:
                self._apply_delete(HOSTS_PREFIX + name)

    async def _reprobe(self) -> None:
        """Ask unreachable (but registered) agents again every ``reprobe_s``, so a host that
        answers again becomes available without anyone calling the API."""
        while True:
            await asyncio.sleep(self.reprobe_s)
            # (not a host whose agent says its libvirtd is down: the agent's registration says when it is back)
            lost = [
                n
                for n, h in self._hosts.items()
                if h.registration is not None and h.registration.libvirt_up and h.reachable is False
            ]
            if lost:
                await self.refresh(lost, force=True)

    async def _follow(self) -> None:
        backoff = 0.1
        while True:
            try:
                entries, revision = await self.store.list(HOSTS_PREFIX)
                self._apply_snapshot(entries)
                self._ready.set()
                backoff = 0.1
                watch = self.store.watch(HOSTS_PREFIX, revision + 1)
                async with contextlib.aclosing(watch):
                    async for item in watch:
                        if isinstance(item, Resync):
                            self._apply_snapshot(item.entries)
                        elif item.kind is EventKind.PUT:
                            self._apply_put(item.entry)
                        else:
                            self._apply_delete(item.entry.key)
                return  # the store was closed
            except FerryError as exc:
                log.warning("hosts watch: %s: %s; listing again", exc.reason, exc)
                self._ready.set()  # serve what we know rather than hang the API
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


async def _close_client(client: AgentClient | None) -> None:
    close = getattr(client, "close", None)
    if close is None:
        return
    with contextlib.suppress(Exception):
        result = close()
        if inspect.isawaitable(result):
            await result


def as_landed(domain: DomainInfo, disks: Iterable[Disk], mapping: HostMapping | None) -> DomainInfo:
    """A domain of the source's inventory as it runs on the target once its migration landed: each
    of ``disks`` (the migration's plan, ``diskplan.landed_disks``) replaces the device of the same
    name, its other devices are kept; NICs are on the bridges and networks ``mapping`` names.

    >>> d = DomainInfo("g1", "u-1", DomainState.PAUSED, nics=(Nic("bridge", "br-guest"), Nic("network", "lan")),
    ...                disks=(Disk("vda", "/a/g1.qcow2", "qcow2", shared=True), Disk("hdc", "/iso/x.iso")))
    >>> got = as_landed(d, [Disk("vda", "/b/g1.qcow2", "qcow2")], HostMapping(bridges={"br-guest": "br-vm"}))
    >>> got.state.name, [(n.type, n.source) for n in got.nics]
    ('RUNNING', [('bridge', 'br-vm'), ('network', 'lan')])
    >>> [(x.target, x.source, x.shared) for x in got.disks]
    [('vda', '/b/g1.qcow2', False), ('hdc', '/iso/x.iso', False)]
    """
    placed = {d.target: d for d in disks}
    return replace(
        domain,
        state=DomainState.RUNNING,
        disks=tuple(
            d if (p := placed.get(d.target)) is None else replace(d, source=p.source, shared=p.shared)
            for d in domain.disks
        ),
        nics=domain.nics if mapping is None else tuple(_mapped_nic(n, mapping) for n in domain.nics),
    )


def _mapped_nic(nic: Nic, mapping: HostMapping) -> Nic:
    table = mapping.bridges if nic.type == "bridge" else mapping.networks if nic.type == "network" else {}
    return nic if nic.source not in table else replace(nic, source=table[nic.source])
