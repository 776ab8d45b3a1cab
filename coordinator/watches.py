"""One store watch for every WatchMigration stream of this replica (a fan-out).

A thousand ``ferry migrate`` progress bars must not mean a thousand etcd watches. The first
subscriber starts one watch on ``migrations/``; every change is handed to the subscribers of
that key (a ``Resync`` to all of them); the last one to leave stops it.

No change is lost between a subscriber's first read and its first event: it subscribes *before*
it reads the record, and the watch starts at the store revision read after the subscription
(``store.list(key)``), so every later change reaches its queue. Events it already saw in that
read come again and are skipped by revision (the reader compares ``mod_revision``).

A subscriber that does not keep up (``queue_size`` changes waiting) is told so once
(``OVERFLOW``) and should read the record again; a failed store watch is handed to every
subscriber as its error, and the next subscriber starts a new watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from ferry import keys
from ferry.errors import FerryError, Unavailable
from ferry.store import Resync, Store, WatchEvent

log = logging.getLogger(__name__)

OVERFLOW = "overflow"  # what a subscriber that fell behind gets instead of the changes it missed


class Subscription:
    """The changes of one key, in revision order."""

    def __init__(self, key: str, queue_size: int) -> None:
        self.key = key
        self._queue: asyncio.Queue[WatchEvent | Resync | str | FerryError] = asyncio.Queue(queue_size)
        self._overflowed = False

    def put(self, item: WatchEvent | Resync | FerryError) -> None:
        if isinstance(item, FerryError):  # the watch ended: nothing queued matters any more
            self._drain()
            self._queue.put_nowait(item)
            return
        if self._overflowed:
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._overflowed = True
            self._drain()  # what it missed is superseded by a fresh read
            self._queue.put_nowait(OVERFLOW)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def next(self) -> WatchEvent | Resync | str:
        """The next change, or OVERFLOW (read the record again); raises the watch's error."""
        item = await self._queue.get()
        if item == OVERFLOW:
            self._overflowed = False
        if isinstance(item, FerryError):
            raise item
        return item


class MigrationWatches:
    """The shared watch on ``migrations/`` (see the module doc)."""

    def __init__(self, store: Store, *, queue_size: int = 1024) -> None:
        self.store = store
        self.queue_size = queue_size
        self._subs: dict[str, set[Subscription]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.watches_started = 0  # store watches opened so far (one per busy period, not per stream)

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    @contextlib.asynccontextmanager
    async def subscribe(self, key: str) -> AsyncIterator[Subscription]:
        """Changes of ``key`` from now on, while the block runs."""
        sub = Subscription(key, self.queue_size)
        self._subs.setdefault(key, set()).add(sub)
        try:
            await self._ensure_running(key)
            yield sub
        finally:
            subs = self._subs.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[key]
            if not self._subs and self._task is not None:
                self._task.cancel()
                self._task = None

    async def _ensure_running(self, key: str) -> None:
        async with self._lock:
            if self._task is not None and not self._task.done():
                return
            _, revision = await self.store.list(key)  # after our subscription: nothing is missed
            if not self._subs:
                return  # everyone left meanwhile
            self._task = asyncio.create_task(self._run(revision + 1), name="migration watch fan-out")
            self.watches_started += 1

    async def _run(self, start_revision: int) -> None:
        watch = self.store.watch(keys.MIGRATIONS, start_revision)
        try:
            async with contextlib.aclosing(watch):
                async for item in watch:
                    if isinstance(item, Resync):
                        for subs in list(self._subs.values()):
                            for sub in list(subs):
                                sub.put(item)
                    else:
                        for sub in list(self._subs.get(item.entry.key, ())):
                            sub.put(item)
        except FerryError as err:
            self._fail(err)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every subscriber as their error
            log.exception("the migration watch failed")
            self._fail(Unavailable(f"the migration watch failed: {type(exc).__name__}", reason="WATCH_FAILED"))
        else:
            self._fail(Unavailable("the migration watch ended", reason="WATCH_FAILED", hint="watch again"))

    def _fail(self, err: FerryError) -> None:
        log.warning("migration watch ended: %s: %s", err.reason, err)
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.put(err)
