"""A prefix of the store kept in memory: listed once, then followed by a watch (no gRPC).

``PrefixView(store, "drains/", decode)`` lists the prefix, then watches it from the next revision;
a ``Resync`` (history lost) replaces the view with its snapshot, a broken watch is listed again
after a pause. Values are decoded once per change (``decode(entry)``; None skips an unreadable
value, which the decoder logs). Subscribers are called on every change with the name below the
prefix and the new value (None: deleted), in revision order.

The view lags the store by the watch's delivery (milliseconds): it serves the decisions that
tolerate that (placement, the leader's drains, the fleet-wide watch, ``ferry hosts``), never a
compare-and-set, which always goes to the store with the revision read there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from ferry.errors import FerryError
from ferry.store import Entry, EventKind, Resync, Store

log = logging.getLogger(__name__)

T = TypeVar("T")


class PrefixView(Generic[T]):
    """See the module doc. ``await start()`` (returns once listed), ``await close()``."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        decode: Callable[[Entry], T | None],
        *,
        retry_s: float = 0.5,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self._decode = decode
        self.retry_s = retry_s
        self.items: dict[str, T] = {}
        self.revision = 0  # the store revision the view reflects (at least)
        self._listeners: list[Callable[[str, T | None], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    def subscribe(self, listener: Callable[[str, T | None], None]) -> Callable[[], None]:
        """Call ``listener(name, value_or_None)`` on every change from now on; returns the
        function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"view {self.prefix}")
        await self._ready.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def get(self, name: str) -> T | None:
        return self.items.get(name)

    # ------------------------------------------------------------------ internals

    def _put(self, entry: Entry) -> None:
        """The new value of a key; one that does not decode (a newer version's schema, a value
        written by hand) leaves the view as a fresh list would: without the key, not with its
        superseded value."""
        name = entry.key[len(self.prefix) :]
        try:
            value = self._decode(entry)
        except Exception:  # a decoder's own bug (or a value deeper than json's recursion limit)
            log.exception(
                "view %s: cannot decode %s (revision %d); leaving it out", self.prefix, name, entry.mod_revision
            )
            value = None
        if value is None:
            self._delete(name)
            return
        self.items[name] = value
        self._tell(name, value)

    def _delete(self, name: str) -> None:
        if self.items.pop(name, None) is not None:
            self._tell(name, None)

    def _tell(self, name: str, value: T | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(name, value)
            except Exception:  # a listener's bug must not stop the view
                log.exception("view %s: a listener failed on %s", self.prefix, name)

    def _replace(self, entries: list[Entry] | tuple[Entry, ...], revision: int) -> None:
        present = set()
        for entry in entries:
            present.add(entry.key[len(self.prefix) :])
            self._put(entry)
        for gone in set(self.items) - present:
            self._delete(gone)
        self.revision = max(self.revision, revision)

    async def _run(self) -> None:
        delay = self.retry_s
        while True:
            try:
                entries, revision = await self.store.list(self.prefix)
                self._replace(entries, revision)
                self._ready.set()
                async for event in self.store.watch(self.prefix, revision + 1):
                    delay = self.retry_s
                    if isinstance(event, Resync):
                        self._replace(event.entries, event.revision)
                        continue
                    if event.kind is EventKind.DELETE:
                        self._delete(event.entry.key[len(self.prefix) :])
                    else:
                        self._put(event.entry)
                    self.revision = max(self.revision, event.revision)
                return  # the store closed
            except FerryError as err:
                log.warning("view %s: %s; listing again in %.1f s", self.prefix, err.reason, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
