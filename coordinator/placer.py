"""Placement against the live fleet: the fleet view, the cordons and the migrations on their way,
fed to the pure ranking of ``placement.py``.

``LoadBook`` keeps the migrations that still count against their target (not final, or succeeded
after the target's last inventory), fed by every change of ``migrations/`` the replica sees and
by its own submissions at once (``note``), so two placements a millisecond apart never promise
the same room twice. ``Placer.rank`` builds one :class:`placement.HostOption` per known host from
the cached inventories -- no agent is asked -- and ranks them (``Placer.choose``: picks the
best of them).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ferry.model import DomainInfo, HostFacts, HostMapping, Inventory, MigrationOptions, Problem, StorageMode

from .changelog import ChangeLog
from .checks import effective_storage
from .config import HostDecl, derive_mapping
from .fleet import Fleet
from .hoststate import HostCordon
from .phases import Phase
from .placement import HostLoad, HostOption, PlacementPolicy, Ranking, Reservations, choose, loads, rank
from .record import MigrationRecord

log = logging.getLogger(__name__)

# a succeeded migration counts against its target until the target's inventory shows it, or this long
SETTLE_MAX = timedelta(minutes=2)


class LoadBook:
    """The migrations that count against their target (see the module doc).

    Kept by target, so a placement's ``loads`` works out again only the targets whose records or
    inventory time changed since the last call (a 1,000-host fleet holds every migration of the last
    ``SETTLE_MAX`` here, and is placed on many times a second); the result is ``placement.loads``
    of the records that remain, as if worked out anew. ``version`` moves on with every change of
    a target's records or reservations and ``changed_since`` names those targets, so a placer that
    keeps the options of its last placement updates only them and the hosts whose inventory time
    changed (``settle``, then ``load`` for each).
    """

    def __init__(self) -> None:
        self._unsettled: dict[str, MigrationRecord] = {}
        # placed but not written yet (a submission between its choice and its writes): by id, and
        # by target and id
        self._reserved: dict[str, tuple[str, HostLoad]] = {}
        self._reserved_at: dict[str, dict[str, HostLoad]] = {}
        self._by_target: dict[str, dict[str, MigrationRecord]] = {}  # the same records, by target and id
        self._by_vm: dict[str, set[str]] = {}  # a VM's name and UUID -> the ids of its records here
        self._landings: list[tuple[datetime, str]] = []  # (landed, id) of succeeded records: a heap
        # per target: the inventory time its load was worked out for, and that load (None: no load)
        self._worked_out: dict[str, tuple[datetime | None, HostLoad | None]] = {}
        self._changes = ChangeLog()  # the targets whose records or reservations changed, by version
        # the revision of each record's final version seen (until the record is deleted): an older
        # version noted after it (a submitter's own, resumed late) is not counted again
        self._ended: dict[str, int] = {}

    def reserve(self, migration_id: str, target: str, domain: DomainInfo, disk_bytes: int) -> None:
        """A placement chose ``target`` for ``domain``: count it there from now on, before its
        record exists (two placements a moment apart must not both take the last room)."""
        self._unreserve(migration_id)
        load = HostLoad().plus(domain, disk_bytes)
        self._reserved[migration_id] = (target, load)
        self._reserved_at.setdefault(target, {})[migration_id] = load
        self._changes.touch(target)

    def release(self, migration_id: str) -> None:
        """The placed migration will not be created (refused): forget its reservation."""
        self._unreserve(migration_id)

    def note(self, record: MigrationRecord) -> None:
        """A version of a record (from the store's watch, or just written by this replica)."""
        self._unreserve(record.id)
        old = self._unsettled.get(record.id)
        if old is not None and old.revision and record.revision and old.revision > record.revision:
            return
        ended = self._ended.get(record.id)
        if ended is not None and record.revision and ended > record.revision:
            return
        if record.phase.is_final and record.revision:
            self._ended[record.id] = record.revision
        self._drop(record.id)
        if not record.phase.is_final or record.phase is Phase.SUCCEEDED:
            self._add(record)

    def on_change(self, name: str, record: MigrationRecord | None) -> None:
        """For ``PrefixView.subscribe``."""
        if record is None:
            self._drop(name)
            self._ended.pop(name, None)
        else:
            self.note(record)

    def loads(self, inventory_at: Mapping[str, datetime | None], now: datetime) -> dict[str, HostLoad]:
        """Every target's load, given when each host's inventory was taken."""
        self._expire(now)
        out: dict[str, HostLoad] = {}
        for target in list(self._by_target):
            load = self._worked(target, inventory_at.get(target))
            if load is not None:
                out[target] = load
        for target, extra in self._reserved.values():
            out[target] = _sum(out.get(target), extra)
        return out

    def settle(self, inventory_at: Mapping[str, datetime | None], now: datetime, hosts: Collection[str]) -> None:
        """What ``loads`` would find changed, for a caller that follows ``changed_since``: the
        landings past ``SETTLE_MAX`` and the targets among ``hosts`` (those whose inventory time
        changed since its last call) worked out again."""
        self._expire(now)
        for target in hosts:
            if target in self._by_target:
                self._worked(target, inventory_at.get(target))

    def load(self, target: str, seen: datetime | None) -> HostLoad | None:
        """``target``'s entry of ``loads`` (its inventory taken at ``seen``); None: no load."""
        load = self._worked(target, seen) if target in self._by_target else None
        for extra in self._reserved_at.get(target, {}).values():
            load = _sum(load, extra)
        return load

    @property
    def version(self) -> int:
        return self._changes.version

    def changed_since(self, version: int) -> list[str]:
        """The targets whose records or reservations changed after ``version`` (of
        ``self.version``); a target whose inventory time changed may count its records otherwise:
        the caller knows those (``settle``)."""
        return self._changes.changed_since(version)

    def _expire(self, now: datetime) -> None:
        while self._landings and now - self._landings[0][0] > SETTLE_MAX:
            landed, mid = heapq.heappop(self._landings)
            r = self._unsettled.get(mid)
            if r is not None and r.phase is Phase.SUCCEEDED and (r.updated_at or r.created_at) == landed:
                self._drop(mid)

    def _worked(self, target: str, seen: datetime | None) -> HostLoad | None:
        """The load of ``target``'s records (it has some), worked out again if they or ``seen``
        changed since the last time; the succeeded ones its inventory shows are dropped."""
        records = self._by_target[target]
        known = self._worked_out.get(target)
        if known is None or known[0] != seen:
            if seen is not None:  # settled: its target's inventory was taken after it landed
                for mid in [
                    mid
                    for mid, r in records.items()
                    if r.phase is Phase.SUCCEEDED and seen > (r.updated_at or r.created_at)
                ]:
                    self._drop(mid)
                if not records:
                    return None
            known = self._worked_out[target] = (seen, loads(records.values(), {target: seen}).get(target))
        return known[1]

    def _unreserve(self, migration_id: str) -> None:
        got = self._reserved.pop(migration_id, None)
        if got is not None:
            target = got[0]
            mine = self._reserved_at[target]
            del mine[migration_id]
            if not mine:
                del self._reserved_at[target]
            self._changes.touch(target)

    def targets_of(self, vm: str) -> set[str]:
        """Where the VM (name or UUID) just went or may be, by its newest migration that still
        counts: the target of one that succeeded, both hosts of one under way. Not the targets of
        the ones before it: a VM moved ten times in a few minutes is not looked for on ten hosts."""
        newest = max((self._unsettled[mid] for mid in self._by_vm.get(vm, ())), key=_newest_first, default=None)
        if newest is None:
            return set()
        return {newest.target_host} if newest.phase.is_final else {newest.source_host, newest.target_host}

    def __len__(self) -> int:
        return len(self._unsettled)

    def _add(self, r: MigrationRecord) -> None:
        self._unsettled[r.id] = r
        self._by_target.setdefault(r.target_host, {})[r.id] = r
        self._worked_out.pop(r.target_host, None)
        self._changes.touch(r.target_host)
        for key in {r.vm, r.vm_uuid}:
            self._by_vm.setdefault(key, set()).add(r.id)
        if r.phase is Phase.SUCCEEDED:
            heapq.heappush(self._landings, (r.updated_at or r.created_at, r.id))

    def _drop(self, migration_id: str) -> None:
        r = self._unsettled.pop(migration_id, None)
        if r is None:
            return
        records = self._by_target.get(r.target_host)
        if records is not None:
            records.pop(migration_id, None)
            if not records:
                del self._by_target[r.target_host]
        self._worked_out.pop(r.target_host, None)
        self._changes.touch(r.target_host)
        for key in (r.vm, r.vm_uuid):
            ids = self._by_vm.get(key)
            if ids is not None:
                ids.discard(migration_id)
                if not ids:
                    del self._by_vm[key]


def _sum(h: HostLoad | None, extra: HostLoad) -> HostLoad:
    return extra if h is None else h.add(extra)


def _newest_first(r: MigrationRecord) -> tuple[datetime, str]:
    return r.created_at, r.id


@dataclass(frozen=True)
class Placed:
    """A VM located and ranked: where it is, the storage mode it would move with, the ranking."""

    source: str
    domain: DomainInfo
    storage: StorageMode
    ranking: Ranking


@dataclass(frozen=True)
class _Base:
    """The hosts' options without loads as of fleet ``version`` and ``cordoned``."""

    version: int
    cordoned: tuple[tuple[str, HostCordon], ...]
    options: list[HostOption]
    inventory_at: dict[str, datetime | None]
    index: dict[str, int]  # a host's place in ``options`` (the fleet's order: by name)


@dataclass(frozen=True)
class _Kept:
    """``Placer.options``' last options (the base's ``index``: built anew with the base), as of
    fleet version ``fleet_version`` and load book version ``book_version``."""

    index: dict[str, int]
    fleet_version: int
    book_version: int
    options: list[HostOption]


class Placer:
    def __init__(
        self,
        fleet: Fleet,
        cordons: Mapping[str, HostCordon],
        book: LoadBook,
        hosts: Mapping[str, HostDecl],
        policy: PlacementPolicy = PlacementPolicy(),
    ) -> None:
        self.fleet = fleet
        self.cordons = cordons  # a live mapping (the host-state view's items)
        self.book = book
        self.hosts = dict(hosts)
        self.policy = policy
        # the options without loads and when each inventory was taken, as of a version of the fleet
        # view and the cordons (rebuilding them for 1,000 hosts per placement costs)
        self._base: _Base | None = None
        self._shapes: dict[str, tuple[HostFacts, Hashable]] = {}  # by host, while its facts are the same
        self._shape_numbers: dict[Hashable, int] = {}
        # by host: its option while its inventory, availability and cordon are the same (the
        # inventory and cordon held here, so a new one can never pass for it by a reused id)
        self._options: dict[
            str, tuple[Inventory | None, tuple[bool, Problem | None], HostCordon | None, HostOption]
        ] = {}
        # by host: its option with a load, while the option and the load (``LoadBook.loads`` keeps
        # a target's while nothing changes there) are the same objects
        self._loaded: dict[str, tuple[HostOption, HostLoad, HostOption]] = {}
        self._kept: _Kept | None = None  # the last call's options, for the next

    def _shape(self, name: str, facts: HostFacts | None) -> Hashable | None:
        if facts is None:
            return None
        known = self._shapes.get(name)
        if known is not None and known[0] is facts:
            return known[1]
        decl = self.hosts.get(name)
        declared = (
            (
                tuple(sorted(decl.bridges.items())),
                tuple(sorted(decl.networks.items())),
                tuple(sorted(decl.paths.items())),
            )
            if decl is not None
            else None
        )
        shape = (
            tuple(d.path for d in facts.storage),
            facts.arch,
            facts.qemu_version,
            facts.libvirt_version,
            frozenset(facts.machine_types),  # qemu_blockers: the guest's machine type must be there
            facts.emulator,  # ... when the guest runs this QEMU binary
            facts.cpu_model,
            frozenset(facts.cpu_features),
            frozenset(facts.bridges),
            frozenset(facts.networks),
            facts.migration_tls_problem,  # tls_blockers: a host that cannot encrypt is refused
            facts.libvirt_uri_problem,  # a target whose URI reaches another machine is refused
            facts.api_level,  # old_agents: what an old agent cannot check is refused
            declared,
        )
        # one small number per distinct shape: a ranking looks a shape up for every host
        number = self._shape_numbers.setdefault(shape, len(self._shape_numbers))
        self._shapes[name] = (facts, number)
        return number

    def _base_options(self) -> tuple[list[HostOption], dict[str, datetime | None]]:
        """Every host's option without its load, and when its inventory was taken: updated for the
        hosts the fleet view changed since the last call, built anew when a host came or a cordon
        changed."""
        version = self.fleet.version
        cordoned = tuple(sorted((n, c) for n, c in self.cordons.items() if c.cordoned))
        base = self._base
        if base is not None and base.cordoned == cordoned:
            if base.version == version:
                return base.options, base.inventory_at
            changed = self.fleet.changed_since(base.version)
            if all(name in base.index and self.fleet.knows(name) for name in changed):
                options, inventory_at = list(base.options), dict(base.inventory_at)
                for name in changed:
                    name, available, inventory, fetched_at = self.fleet.entry(name)
                    options[base.index[name]] = self._option(name, available, inventory)
                    inventory_at[name] = fetched_at
                self._base = replace(base, version=version, options=options, inventory_at=inventory_at)
                return options, inventory_at
        options, inventory_at, index = [], {}, {}
        for name, available, inventory, fetched_at in self.fleet.entries():
            index[name] = len(options)
            options.append(self._option(name, available, inventory))
            inventory_at[name] = fetched_at
        self._base = _Base(version, cordoned, options, inventory_at, index)
        return options, inventory_at

    def _option(self, name: str, available: bool, inventory: Inventory | None) -> HostOption:
        """The host's option without a load: the one built before while its inventory (the same
        object), availability and cordon are the same (it keeps what it worked out of its domains)."""
        cordon = self.cordons.get(name)
        down = None if available else self.fleet.why_down(name)  # a host down says which part is
        known = self._options.get(name)
        if known is not None and known[0] is inventory and known[1] == (available, down) and known[2] == cordon:
            return known[3]
        facts = inventory.host if inventory is not None else None
        domains = inventory.domains if inventory is not None else ()
        option = HostOption(name, available, facts, domains, cordon, shape=self._shape(name, facts), why_down=down)
        self._options[name] = (inventory, (available, down), cordon, option)
        return option

    def options(self, now: datetime, reservations: Reservations | None = None) -> list[HostOption]:
        """Every host the fleet view knows, as placement sees it now: the options of the last
        call with those of the hosts whose option or load changed since replaced (every option
        and every load looked at again only when the hosts or cordons changed)."""
        base, inventory_at = self._base_options()
        assert self._base is not None
        index = self._base.index
        kept = self._kept
        if kept is None or kept.index is not index:
            booked = self.book.loads(inventory_at, now)
            out = list(base)  # the hosts without a load as they are; only those with one replaced
            for name, load in booked.items():
                i = index.get(name)
                if i is not None:  # (None: a target the fleet view does not know, forgotten)
                    out[i] = self._with_load(base[i], load)
        else:
            hosts = self.fleet.changed_since(kept.fleet_version)
            self.book.settle(inventory_at, now, hosts)
            out = kept.options
            for name in {*hosts, *self.book.changed_since(kept.book_version)}:
                i = index.get(name)
                if i is not None:
                    now_on = self.book.load(name, inventory_at.get(name))
                    out[i] = base[i] if now_on is None else self._with_load(base[i], now_on)
        self._kept = _Kept(index, self._base.version, self.book.version, out)
        return reservations.apply(out) if reservations is not None else list(out)

    def _with_load(self, o: HostOption, load: HostLoad) -> HostOption:
        """``o`` with ``load``: the one made before while both are the same objects."""
        known = self._loaded.get(o.name)
        if known is None or known[0] is not o or known[1] is not load:
            known = self._loaded[o.name] = (o, load, o.with_load(load))
        return known[2]

    def _find(self, options: list[HostOption], name: str) -> HostOption | None:
        """``name``'s option in ``options`` (built by ``options``: the fleet's order, looked up by
        its index; any other list: searched)."""
        i = self._base.index.get(name) if self._base is not None else None
        if i is not None and i < len(options) and options[i].name == name:
            return options[i]
        return next((o for o in options if o.name == name), None)

    def mapping(self, source: str, target: str, overrides: HostMapping | None = None) -> HostMapping:
        """The source -> target mapping from the ``[hosts.*]`` tables and the overrides (may raise)."""
        return derive_mapping(self.hosts.get(source), self.hosts.get(target), overrides)

    def rank(
        self,
        domain: DomainInfo,
        source: str,
        options: MigrationOptions,
        *,
        storage_explicit: bool,
        now: datetime,
        overrides: HostMapping | None = None,
        only: Collection[str] = (),
        exclude: Collection[str] = (),
        reservations: Reservations | None = None,
        hosts: list[HostOption] | None = None,
        detail: bool = True,
    ) -> Placed:
        """Rank every host (or those in ``only``, never those in ``exclude``) for ``domain`` on
        ``source``; ``hosts``: options
        built already (a drain placing many VMs builds them once per step); ``detail=False``: only
        the choice matters (see ``placement.rank``)."""
        return self._judge(
            domain, source, options, storage_explicit, now, overrides, only, exclude, reservations, hosts, detail
        )

    def choose(
        self,
        domain: DomainInfo,
        source: str,
        options: MigrationOptions,
        *,
        storage_explicit: bool,
        now: datetime,
        overrides: HostMapping | None = None,
        only: Collection[str] = (),
        exclude: Collection[str] = (),
        hosts: list[HostOption] | None = None,
    ) -> Placed:
        """As ``rank``, for a caller that takes the best host alone (a submission without a target,
        a drain): ``placement.choose``, the same first candidate at a fraction of the cost."""
        return self._judge(domain, source, options, storage_explicit, now, overrides, only, exclude, None, hosts, None)

    def _judge(
        self,
        domain: DomainInfo,
        source: str,
        options: MigrationOptions,
        storage_explicit: bool,
        now: datetime,
        overrides: HostMapping | None,
        only: Collection[str],
        exclude: Collection[str],
        reservations: Reservations | None,
        hosts: list[HostOption] | None,
        detail: bool | None,
    ) -> Placed:
        """``rank`` (``detail`` True or False) or ``choose`` (None)."""
        storage = effective_storage(domain, options, storage_explicit)
        every = hosts if hosts is not None else self.options(now, reservations)
        src = self._find(every, source) or HostOption(source, False, None)
        allowed, excluded = set(only), set(exclude) - {source}
        candidates = (
            [o for o in every if (not allowed or o.name in allowed or o.name == source) and o.name not in excluded]
            if allowed or excluded
            else every
        )
        judged = replace(options, storage=storage)

        def mapping_for(target: str) -> HostMapping:
            return self.mapping(source, target, overrides)

        if detail is None:
            ranking = choose(
                domain, src, candidates, options=judged, storage=storage, mapping_for=mapping_for, policy=self.policy
            )
        else:
            ranking = rank(
                domain,
                src,
                candidates,
                options=judged,
                storage=storage,
                mapping_for=mapping_for,
                policy=self.policy,
                detail=detail,
            )
        return Placed(source, domain, storage, ranking)
