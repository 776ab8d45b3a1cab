"""A Store that times every call of the store it wraps (for the etcd latency metrics).

``TimedStore(store, observer)`` is itself a Store (``ferry.store``): each call is passed on
unchanged and, when it ends, ``observer.store_call(operation, seconds, reason)`` is told how long it
took and how it ended (``reason`` "" on success, else the FerryError's reason, e.g.
``CAS_CONFLICT``, ``UNAVAILABLE``). Watches are passed through untimed (they run for hours).
The adapters stay as they are; the daemons wrap the store they built.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from ferry.errors import FerryError
from ferry.store import Entry, Resync, Store, WatchEvent, Write

T = TypeVar("T")


class StoreObserver(Protocol):
    def store_call(self, operation: str, seconds: float, reason: str) -> None:
        """One store call ended after ``seconds``; ``reason`` is "" when it succeeded."""
        ...


class TimedStore:
    def __init__(self, store: Store, observer: StoreObserver, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._observer = observer
        self._clock = clock

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = self._clock()
        reason = ""
        try:
            return await call
        except FerryError as err:
            reason = err.reason
            raise
        except asyncio.CancelledError:
            reason = "CANCELLED"
            raise
        except Exception:
            reason = "UNEXPECTED"
            raise
        finally:
            self._observer.store_call(operation, self._clock() - started, reason)

    async def get(self, key: str) -> Entry | None:
        return await self._timed("get", self.store.get(key))

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        return await self._timed("list", self.store.list(prefix))

    async def create(self, key: str, value: bytes, lease: int | None = None) -> int:
        return await self._timed("create", self.store.create(key, value, lease))

    async def update(self, key: str, value: bytes, expected_mod_revision: int, lease: int | None = None) -> int:
        return await self._timed("update", self.store.update(key, value, expected_mod_revision, lease))

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        return await self._timed("delete", self.store.delete(key, expected_mod_revision))

    async def commit(self, writes: Sequence[Write]) -> int:
        return await self._timed("commit", self.store.commit(writes))

    async def grant_lease(self, ttl_s: int) -> int:
        return await self._timed("grant_lease", self.store.grant_lease(ttl_s))

    async def keepalive(self, lease: int) -> int:
        return await self._timed("keepalive", self.store.keepalive(lease))

    async def revoke(self, lease: int) -> None:
        await self._timed("revoke", self.store.revoke(lease))

    def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        return self.store.watch(prefix, start_revision)

    async def close(self) -> None:
        await self.store.close()
