"""Placement against the live fleet: the fleet view, the cordons and the migrations on their way,
fed to the pure ranking of ``placement.py``.

``LoadBook`` keeps the migrations that still count against their target (not final, or succeeded
after the target's last inventory), fed by every change of ``migrations/`` the replica sees and
by its own submissions at once (``note``), so two placements a millisecond apart never promise
the same room twice. ``Placer.rank`` builds one :class:`placement.HostOption` per known host from
the cached inventories -- no agent is asked -- and ranks them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from ferry.model import DomainInfo, HostFacts, HostMapping, MigrationOptions, StorageMode

from .checks import effective_storage
from .config import HostDecl, derive_mapping
from .fleet import Fleet
from .hoststate import HostCordon
from .phases import Phase
from .placement import HostLoad, HostOption, PlacementPolicy, Ranking, Reservations, loads, rank
from .record import MigrationRecord

log = logging.getLogger(__name__)

# a succeeded migration counts against its target until the target's inventory shows it, or this long
SETTLE_MAX = timedelta(minutes=2)


class LoadBook:
    """The migrations that count against their target (see the module doc)."""

    def __init__(self) -> None:
        self._unsettled: dict[str, MigrationRecord] = {}
        # placed but not written yet (a submission between its choice and its writes): by id
        self._reserved: dict[str, tuple[str, HostLoad]] = {}

    def reserve(self, migration_id: str, target: str, domain: DomainInfo, disk_bytes: int) -> None:
        """A placement chose ``target`` for ``domain``: count it there from now on, before its
        record exists (two placements a moment apart must not both take the last room)."""
        self._reserved[migration_id] = (target, HostLoad().plus(domain, disk_bytes))

    def release(self, migration_id: str) -> None:
        """The placed migration will not be created (refused): forget its reservation."""
        self._reserved.pop(migration_id, None)

    def note(self, record: MigrationRecord) -> None:
        """A version of a record (from the store's watch, or just written by this replica)."""
        self._reserved.pop(record.id, None)
        old = self._unsettled.get(record.id)
        if old is not None and old.revision and record.revision and old.revision > record.revision:
            return
        if record.phase.is_final and record.phase is not Phase.SUCCEEDED:
            self._unsettled.pop(record.id, None)
        else:
            self._unsettled[record.id] = record

    def on_change(self, name: str, record: MigrationRecord | None) -> None:
        """For ``PrefixView.subscribe``."""
        if record is None:
            self._unsettled.pop(name, None)
        else:
            self.note(record)

    def loads(self, inventory_at: Mapping[str, datetime | None], now: datetime) -> dict[str, HostLoad]:
        for mid, r in list(self._unsettled.items()):
            if r.phase is Phase.SUCCEEDED:
                seen = inventory_at.get(r.target_host)
                landed = r.updated_at or r.created_at
                if (seen is not None and seen > landed) or now - landed > SETTLE_MAX:
                    del self._unsettled[mid]
        out = loads(self._unsettled.values(), inventory_at)
        for target, extra in self._reserved.values():
            h = out.get(target, HostLoad())
            out[target] = HostLoad(
                h.inbound + extra.inbound,
                h.memory_bytes + extra.memory_bytes,
                h.disk_bytes + extra.disk_bytes,
                h.vms + extra.vms,
                h.names | extra.names,
            )
        return out

    def targets_of(self, vm: str) -> set[str]:
        """Where the VM (name or UUID) is going or just went: its migrations that still count."""
        return {r.target_host for r in self._unsettled.values() if vm in (r.vm, r.vm_uuid)}

    def __len__(self) -> int:
        return len(self._unsettled)


@dataclass(frozen=True)
class Placed:
    """A VM located and ranked: where it is, the storage mode it would move with, the ranking."""

    source: str
    domain: DomainInfo
    storage: StorageMode
    ranking: Ranking


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
        # the options without loads and when each inventory was taken, while the fleet view and
        # the cordons stay as they were (rebuilding them for 1,000 hosts per placement costs)
        self._base: tuple[object, list[HostOption], dict[str, datetime | None]] | None = None
        self._shapes: dict[str, tuple[HostFacts, Hashable]] = {}  # by host, while its facts are the same
        # by host: its option while its inventory, availability and cordon are the same objects
        self._options: dict[str, tuple[tuple[int, bool, HostCordon | None], HostOption]] = {}

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
            facts.cpu_model,
            frozenset(facts.cpu_features),
            frozenset(facts.bridges),
            frozenset(facts.networks),
            declared,
        )
        self._shapes[name] = (facts, shape)
        return shape

    def _base_options(self) -> tuple[list[HostOption], dict[str, datetime | None]]:
        key = (self.fleet.version, tuple(sorted((n, c) for n, c in self.cordons.items() if c.cordoned)))
        if self._base is None or self._base[0] != key:
            base, inventory_at = [], {}
            for name, available, inventory, fetched_at in self.fleet.entries():
                cordon = self.cordons.get(name)
                known = self._options.get(name)
                if known is not None and known[0] == (id(inventory), available, cordon):
                    option = known[1]  # unchanged: keep it (and what it worked out of its domains)
                else:
                    facts = inventory.host if inventory is not None else None
                    domains = inventory.domains if inventory is not None else ()
                    option = HostOption(name, available, facts, domains, cordon, shape=self._shape(name, facts))
                    self._options[name] = ((id(inventory), available, cordon), option)
                base.append(option)
                inventory_at[name] = fetched_at
            self._base = (key, base, inventory_at)
        return self._base[1], self._base[2]

    def options(self, now: datetime, reservations: Reservations | None = None) -> list[HostOption]:
        """Every host the fleet view knows, as placement sees it now."""
        base, inventory_at = self._base_options()
        booked = self.book.loads(inventory_at, now)
        out = [replace(o, load=booked[o.name]) if o.name in booked else o for o in base]
        return reservations.apply(out) if reservations is not None else out

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
        storage = effective_storage(domain, options, storage_explicit)
        every = hosts if hosts is not None else self.options(now, reservations)
        src = next((o for o in every if o.name == source), HostOption(source, False, None))
        allowed, excluded = set(only), set(exclude) - {source}
        candidates = [
            o for o in every if (not allowed or o.name in allowed or o.name == source) and o.name not in excluded
        ]
        ranking = rank(
            domain,
            src,
            candidates,
            options=replace(options, storage=storage),
            storage=storage,
            mapping_for=lambda target: self.mapping(source, target, overrides),
            policy=self.policy,
            detail=detail,
        )
        return Placed(source, domain, storage, ranking)
