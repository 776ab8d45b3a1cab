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


#: versions kept of a record that is not final: the engine writes the next version before the
#: watches (the engine's and the view's) brought back the last, and one watch may lag the other
KEPT_VERSIONS = 4


class RecordDecoder:
    """Each version of a migration record decoded once for the whole replica: the leader's engine
    and the replica's view watch the same keys. Keeps the newest few versions of each key it
    decoded or the engine wrote (``written``: most versions are the engine's, ~6 per migration);
    of a final record, once its final version was asked for, that one alone."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[int, MigrationRecord]] = {}

    def __call__(self, entry: Entry) -> MigrationRecord:
        """The record of ``entry`` (raises as ``record.decode`` does)."""
        versions = self._by_key.get(entry.key)
        record = versions.get(entry.mod_revision) if versions is not None else None
        if record is None:
            record = decode(entry.value, entry.mod_revision, entry.create_revision)
            versions = self._keep(entry.key, record)
        if record.phase.is_final and versions is not None and len(versions) > 1:
            # the watches bring versions in order: the older ones were asked for (once more at most)
            self._by_key[entry.key] = {r.revision: r for r in versions.values() if r.revision >= record.revision}
        return record

    def written(self, record: MigrationRecord) -> None:
        """A version this replica just wrote (``record.revision``: its write's revision): when a
        watch brings that version back, it is ``record`` again, not decoded anew (``decode`` of
        ``encode`` gives the record back, and the engine goes on from ``record`` itself)."""
        self._keep(keys.migration_key(record.id), record)

    def _keep(self, key: str, record: MigrationRecord) -> dict[int, MigrationRecord]:
        versions = self._by_key.setdefault(key, {})
        versions[record.revision] = record
        if len(versions) > KEPT_VERSIONS:
            del versions[min(versions)]
        return versions

    def forget(self, key: str) -> None:
        self._by_key.pop(key, None)

    def view_entry(self, entry: Entry) -> MigrationRecord | None:
        """For the view: None (logged) for an unreadable record."""
        try:
            return self(entry)
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
    decoder: RecordDecoder

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
    decoder = RecordDecoder()
    migrations = PrefixView(store, keys.MIGRATIONS, decoder.view_entry)
    migrations.subscribe(book.on_change)
    migrations.subscribe(lambda name, r: decoder.forget(keys.MIGRATIONS + name) if r is None else None)
    return ReplicaViews(
        migrations,
        PrefixView(store, keys.DRAINS, _drain),
        PrefixView(store, keys.HOST_STATE, hoststate.decode_entry),
        book,
        decoder,
    )
