"""Retention: the leader deletes finished migrations, their idempotency keys and finished drains
once they are older than the configured ``[retention]`` times (``config.Retention``).

``due`` (pure) says what is due; ``Sweeper`` deletes it every ``sweep_s``, each deletion a
compare-and-set on the revision it judged (a record that changed meanwhile is left for the next
sweep). An idempotency key is deleted only while it names the record it was judged for, so a key
reused later for a new migration is never touched. Nothing that is not final is ever deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from ferry import keys
from ferry.errors import FerryError
from ferry.store import Conflict, Store

from .config import Retention
from .drain import DrainRecord
from .record import MigrationRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    migrations: tuple[MigrationRecord, ...] = ()
    idempotency: tuple[MigrationRecord, ...] = ()  # records whose key is to go (the record may stay)
    drains: tuple[DrainRecord, ...] = ()


def _older(at: datetime | None, now: datetime, keep_s: float) -> bool:
    return keep_s > 0 and at is not None and now - at > timedelta(seconds=keep_s)


def due(
    records: Iterable[MigrationRecord],
    drains: Iterable[DrainRecord],
    now: datetime,
    retention: Retention,
    keys_gone: frozenset[str] = frozenset(),
) -> Due:
    """What retention deletes now. ``keys_gone``: records whose idempotency key is already deleted."""
    migrations, idem = [], []
    for r in records:
        if not r.phase.is_final:
            continue
        ended = r.updated_at or r.created_at
        if _older(ended, now, retention.migrations_s):
            migrations.append(r)
        elif r.idempotency_key and r.id not in keys_gone and _older(ended, now, retention.idempotency_s):
            idem.append(r)
    old_drains = [d for d in drains if d.state.is_final and _older(d.ended_at or d.updated_at, now, retention.drains_s)]
    return Due(tuple(migrations), tuple(idem), tuple(old_drains))


class Sweeper:
    def __init__(
        self,
        store: Store,
        records: Callable[[], Mapping[str, MigrationRecord]],
        drains: Mapping[str, DrainRecord],
        retention: Retention,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.records = records  # the engine's view
        self.drains = drains  # the drains view's items
        self.retention = retention
        self.clock = clock
        self._keys_gone: set[str] = set()
        self.deleted = {"migrations": 0, "idempotency": 0, "drains": 0}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.retention.sweep_s)
            try:
                await self.sweep()
            except FerryError as err:
                log.warning("retention sweep failed (%s); trying again in %.0f s", err.reason, self.retention.sweep_s)

    async def sweep(self) -> Due:
        d = due(
            list(self.records().values()),
            list(self.drains.values()),
            self.clock(),
            self.retention,
            frozenset(self._keys_gone),
        )
        for r in d.idempotency:
            await self._delete_key(r)
            self._keys_gone.add(r.id)
        for r in d.migrations:
            await self._delete_key(r)
            with contextlib.suppress(Conflict):
                await self.store.delete(keys.migration_key(r.id), expected_mod_revision=r.revision)
                self.deleted["migrations"] += 1
            self._keys_gone.discard(r.id)
        for dr in d.drains:
            with contextlib.suppress(Conflict):
                await self.store.delete(keys.drain_key(dr.id), expected_mod_revision=dr.revision)
                self.deleted["drains"] += 1
        if d.migrations or d.idempotency or d.drains:
            log.info(
                "retention: deleted %d migration record(s), %d idempotency key(s), %d drain(s)",
                len(d.migrations),
                len(d.idempotency) + sum(1 for r in d.migrations if r.idempotency_key),
                len(d.drains),
            )
        return d

    async def _delete_key(self, r: MigrationRecord) -> None:
        if not r.idempotency_key or r.id in self._keys_gone:
            return
        key = keys.idempotency_key(r.idempotency_key)
        entry = await self.store.get(key)
        if entry is None or keys.decode_id(entry.value) != r.id:
            return
        with contextlib.suppress(Conflict):
            if await self.store.delete(key, expected_mod_revision=entry.mod_revision) is not None:
                self.deleted["idempotency"] += 1
