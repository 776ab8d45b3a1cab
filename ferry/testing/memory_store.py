"""An in-memory Store that behaves like etcd: for unit tests and fleet-scale simulation.

Faithful where the coordinator can tell: one global revision counter, create/mod revisions,
atomic compare-and-set, leases that expire on an injected clock (all their keys deleted in one
revision), watches replayed from history, compaction (a watch from before it gets a Resync).
Not simulated: multiple members, auth, size limits.

Leases are expired lazily on every call and by a background task while leases exist, so
watchers see expiries without anyone calling in. With a fake clock, advance it and call
:meth:`MemoryStore.expire_leases` (or any other call).

Fault injection for tests: :meth:`MemoryStore.lose_next_replies` makes the next writes apply but
"lose their reply", so the store retries them exactly like the etcd adapter retries a txn after a
timeout (the retry's compare fails and the write is recognised as ours).
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import itertools
import math
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field, replace

from ferry.errors import Unavailable
from ferry.store import (
    Entry,
    EventKind,
    Put,
    Resync,
    WatchEvent,
    Write,
    cas_conflict,
    check_writes,
    commit_landed,
    commit_refused,
    key_exists,
    lease_lost,
    write_landed,
)

Clock = Callable[[], float]

# Expiry task: poll at least this often (so a fake clock's jumps are noticed) and at most this often.
_EXPIRY_POLL_MAX_S = 0.1
_EXPIRY_POLL_MIN_S = 0.005


@dataclass
class _Lease:
    ttl_s: float
    expires_at: float
    keys: set[str] = field(default_factory=set)


class MemoryStore:
    """The Store port in memory. ``history_limit`` bounds kept events (older ones are compacted)."""

    def __init__(self, clock: Clock = time.monotonic, *, history_limit: int = 100_000) -> None:
        self._clock = clock
        self._history_limit = history_limit
        self._revision = 1  # etcd's empty store is at revision 1
        self._compact_revision = 0  # watches from before this revision get a Resync
        self._keys: dict[str, Entry] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x7E57_0000_0001)
        self._history: list[WatchEvent] = []
        self._changed: asyncio.Event | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._lost_replies = 0
        self._closed = False
        self._watches_released = asyncio.Event()
        self._watches_released.set()

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        self._enter()
        return self._keys.get(key)

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        self._enter()
        return self._list(prefix)

    # -- atomic writes --------------------------------------------------------------------------

    async def create(self, key: str, value: bytes, lease: int | None = None) -> int:
        self._enter()
        retried = False
        while True:
            current = self._keys.get(key)
            if current is None:
                self._require_lease(lease)  # after the compare, as etcd: an existing key is KEY_EXISTS
                revision = self._put(key, value, lease)
                if self._reply_lost():
                    retried = True
                    continue
                return revision
            if retried and write_landed(current, value, lease, 0):
                return current.mod_revision
            raise key_exists(key)

    async def update(self, key: str, value: bytes, expected_mod_revision: int, lease: int | None = None) -> int:
        self._enter()
        retried = False
        while True:
            current = self._keys.get(key)
            if current is not None and current.mod_revision == expected_mod_revision:
                self._require_lease(lease)  # after the compare, as etcd: a stale revision is a Conflict
                revision = self._put(key, value, lease)
                if self._reply_lost():
                    retried = True
                    continue
                return revision
            if retried and write_landed(current, value, lease, expected_mod_revision):
                assert current is not None
                return current.mod_revision
            raise cas_conflict(key, expected_mod_revision, current.mod_revision if current else 0)

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        self._enter()
        while True:
            current = self._keys.get(key)
            if current is None:
                return None
            if expected_mod_revision is not None and current.mod_revision != expected_mod_revision:
                raise cas_conflict(key, expected_mod_revision, current.mod_revision)
            revision = self._delete_keys([key])
            if self._reply_lost():
                continue
            return revision

    async def commit(self, writes: Sequence[Write]) -> int:
        self._enter()
        check_writes(writes)
        retried = False
        while True:
            for w in writes:
                current = self._keys.get(w.key)
                actual = current.mod_revision if current is not None else 0
                if actual != w.expected_mod_revision:
                    landed = commit_landed({x.key: self._keys.get(x.key) for x in writes}, writes) if retried else None
                    if landed is not None:
                        return landed
                    raise commit_refused(w, actual)
            revision = self._apply(writes)
            if self._reply_lost():
                retried = True
                continue
            return revision

    # -- leases ---------------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: float) -> int:
        self._enter()
        lease = next(self._lease_ids)
        self._leases[lease] = _Lease(ttl_s, self._clock() + ttl_s)
        self._start_expiry_task()
        return lease

    async def keepalive(self, lease: int) -> int:
        self._enter()
        held = self._leases.get(lease)
        if held is None:
            raise lease_lost(lease)
        held.expires_at = self._clock() + held.ttl_s
        return math.ceil(held.ttl_s)

    async def revoke(self, lease: int) -> None:
        self._enter()
        held = self._leases.pop(lease, None)
        if held is not None and held.keys:
            self._delete_keys(sorted(held.keys))

    # -- watch ----------------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        next_revision = start_revision
        while not self._closed:
            self.expire_leases()
            if next_revision < self._compact_revision:
                entries, revision = self._list(prefix)
                yield Resync(tuple(entries), revision)
                next_revision = revision + 1
                continue
            changed = self._changed_event()
            first = bisect.bisect_left(self._history, next_revision, key=lambda e: e.revision)
            pending = [e for e in self._history[first:] if e.entry.key.startswith(prefix)]
            next_revision = max(next_revision, self._revision + 1)
            if pending:
                await self._watches_released.wait()
            for event in pending:
                yield event
            if not pending:
                await changed.wait()

    # -- lifecycle and test controls ------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._changed is not None:
            self._changed.set()
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            self._expiry_task = None

    def hold_watches(self) -> None:
        """Test control: watches deliver nothing until ``release_watches`` (a lagging etcd watch)."""
        self._watches_released.clear()

    def release_watches(self) -> None:
        self._watches_released.set()

    @property
    def revision(self) -> int:
        """The current store revision."""
        return self._revision

    def expire_leases(self) -> None:
        """Expire every lease whose deadline has passed on the clock (each in its own revision)."""
        now = self._clock()
        for lease, held in sorted(self._leases.items()):
            if held.expires_at <= now:
                del self._leases[lease]
                if held.keys:
                    self._delete_keys(sorted(held.keys))

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (like etcd's compaction): older watches get a Resync."""
        self._compact(revision)

    def _compact(self, revision: int) -> None:
        revision = min(revision, self._revision)
        first = bisect.bisect_left(self._history, revision, key=lambda e: e.revision)
        del self._history[:first]
        self._compact_revision = max(self._compact_revision, revision)

    def lose_next_replies(self, count: int = 1) -> None:
        """The next ``count`` writes apply but their reply is lost, so they are retried."""
        self._lost_replies += count

    # -- internals ------------------------------------------------------------------------------

    def _enter(self) -> None:
        if self._closed:
            raise Unavailable(
                "the in-memory store is closed", reason="STORE_CLOSED", hint="do not use a store after close()"
            )
        self.expire_leases()

    def _require_lease(self, lease: int | None) -> None:
        if lease is not None and lease not in self._leases:
            raise lease_lost(lease)

    def _reply_lost(self) -> bool:
        if self._lost_replies > 0:
            self._lost_replies -= 1
            return True
        return False

    def _list(self, prefix: str) -> tuple[builtins.list[Entry], int]:  # builtins: self.list shadows it
        entries = [e for k, e in sorted(self._keys.items()) if k.startswith(prefix)]
        return entries, self._revision

    def _put(self, key: str, value: bytes, lease: int | None) -> int:
        self._revision += 1
        previous = self._keys.get(key)
        if previous is not None and previous.lease is not None and previous.lease in self._leases:
            self._leases[previous.lease].keys.discard(key)
        created = previous.create_revision if previous is not None else self._revision
        entry = Entry(key, value, self._revision, created, lease)
        self._keys[key] = entry
        if lease is not None:
            self._leases[lease].keys.add(key)
        self._record([WatchEvent(EventKind.PUT, entry)])
        return self._revision

    def _apply(self, writes: Sequence[Write]) -> int:
        """Every write (conditions checked) in one revision, as one batch of watch events."""
        self._revision += 1
        events = []
        for w in writes:
            previous = self._keys.get(w.key)
            if previous is not None and previous.lease is not None and previous.lease in self._leases:
                self._leases[previous.lease].keys.discard(w.key)
            if isinstance(w, Put):
                created = previous.create_revision if previous is not None else self._revision
                entry = Entry(w.key, w.value, self._revision, created, None)
                self._keys[w.key] = entry
                events.append(WatchEvent(EventKind.PUT, entry))
            elif previous is not None:
                del self._keys[w.key]
                tombstone = replace(previous, value=b"", mod_revision=self._revision, create_revision=0, lease=None)
                events.append(WatchEvent(EventKind.DELETE, tombstone))
        self._record(events)
        return self._revision

    def _delete_keys(self, keys: builtins.list[str]) -> int:
        """Delete ``keys`` (all present) in one revision."""
        self._revision += 1
        events = []
        for key in keys:
            gone = self._keys.pop(key)
            if gone.lease is not None and gone.lease in self._leases:
                self._leases[gone.lease].keys.discard(key)
            tombstone = replace(gone, value=b"", mod_revision=self._revision, create_revision=0, lease=None)
            events.append(WatchEvent(EventKind.DELETE, tombstone))
        self._record(events)
        return self._revision

    def _record(self, events: builtins.list[WatchEvent]) -> None:
        self._history.extend(events)
        if len(self._history) > self._history_limit:
            keep_from = self._history[len(self._history) - self._history_limit // 2].revision
            self._compact(keep_from)
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _start_expiry_task(self) -> None:
        if self._expiry_task is None or self._expiry_task.done():
            self._expiry_task = asyncio.get_running_loop().create_task(self._expire_in_background())

    async def _expire_in_background(self) -> None:
        while self._leases and not self._closed:
            soonest = min(held.expires_at for held in self._leases.values())
            wait = min(max(soonest - self._clock(), _EXPIRY_POLL_MIN_S), _EXPIRY_POLL_MAX_S)
            await asyncio.sleep(wait)
            self.expire_leases()
