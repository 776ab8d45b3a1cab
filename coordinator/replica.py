"""What every coordinator replica keeps in memory of the store: the migrations, the drains and the
host cordons (each a :class:`~ferry.coordinator.view.PrefixView`), and the migrations on their
way to each host (``placer.LoadBook``), for placement, ``ferry hosts``, the drains' API and the
fleet-wide watch. Compare-and-set writes never rely on them: they read the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ferry import keys
from ferry.errors import FerryError
from ferry.store import Entry, Store

from . import hoststate
from .drain import DrainRecord
from .drain import decode as decode_drain
from .hoststate import HostCordon
from .placer import LoadBook
from .record import MigrationRecord, decode
from .view import PrefixView

log = logging.getLogger(__name__)


def _migration(entry: Entry) -> MigrationRecord | None:
    try:
        return decode(entry.value, entry.mod_revision)
    except FerryError as err:
        log.error("skipping %s: %s: %s", entry.key, err.reason, err)
        return None


def _drain(entry: Entry) -> DrainRecord | None:
    try:
        return decode_drain(entry.value, entry.mod_revision)
    except FerryError as err:
        log.error("skipping %s: %s: %s", entry.key, err.reason, err)
        return None


@dataclass
class ReplicaViews:
    migrations: PrefixView[MigrationRecord]
    drains: PrefixView[DrainRecord]
    cordons: PrefixView[HostCordon]
    book: LoadBook

    async def start(self) -> None:
        await self.cordons.start()
        await self.drains.start()
        await self.migrations.start()

    async def close(self) -> None:
        for v in (self.migrations, self.drains, self.cordons):
            await v.close()

    def cordoned(self) -> frozenset[str]:
        return frozenset(name for name, c in self.cordons.items.items() if c.cordoned)


def replica_views(store: Store) -> ReplicaViews:
    book = LoadBook()
    migrations = PrefixView(store, keys.MIGRATIONS, _migration)
    migrations.subscribe(book.on_change)
    return ReplicaViews(
        migrations,
        PrefixView(store, keys.DRAINS, _drain),
        PrefixView(store, keys.HOST_STATE, hoststate.decode_entry),
        book,
    )
