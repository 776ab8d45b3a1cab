"""The WatchMigration fan-out (``coordinator/watches.py``) on the in-memory store: one store watch
for every subscriber, each sees its key's changes in order, nothing between a subscriber's read
and its first event is lost, a slow subscriber is told it fell behind, a failed watch reaches
every subscriber, and the last one out closes the store watch."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from ferry import keys
from ferry.coordinator.watches import OVERFLOW, MigrationWatches
from ferry.errors import Unavailable
from ferry.store import Resync, WatchEvent
from ferry.testing.memory_store import MemoryStore


class CountingStore(MemoryStore):
    """Counts the store watches opened, per prefix."""

    def __init__(self) -> None:
        super().__init__()
        self.watches: Counter[str] = Counter()

    def watch(self, prefix, start_revision):
        self.watches[prefix] += 1
        return super().watch(prefix, start_revision)


@pytest.fixture
async def store():
    s = CountingStore()
    yield s
    await s.close()


async def values(sub, n: int) -> list[bytes]:
    out = []
    while len(out) < n:
        item = await asyncio.wait_for(sub.next(), 2)
        assert isinstance(item, WatchEvent)
        out.append(item.entry.value)
    return out


async def test_many_subscribers_share_one_store_watch(store):
    hub = MigrationWatches(store)
    ids = [f"m-{i}" for i in range(20)]
    for i in ids:
        await store.create(keys.migration_key(i), b"0")
    async with asyncio.TaskGroup() as tg:

        async def follow(migration_id: str) -> list[bytes]:
            async with hub.subscribe(keys.migration_key(migration_id)) as sub:
                ready.release()
                return await values(sub, 3)

        ready = asyncio.Semaphore(0)
        tasks = [tg.create_task(follow(i)) for i in ids * 2]  # two streams per migration
        for _ in tasks:
            await ready.acquire()
        assert hub.subscribers == 40
        for step in (b"1", b"2", b"3"):
            for i in ids:
                entry = await store.get(keys.migration_key(i))
                await store.update(entry.key, step, entry.mod_revision)
    assert all(t.result() == [b"1", b"2", b"3"] for t in tasks)  # each its own key, in order
    assert store.watches[keys.MIGRATIONS] == 1 and hub.watches_started == 1
    assert hub.subscribers == 0


async def test_nothing_between_the_read_and_the_first_event_is_lost(store):
    """Subscribe, then read: a change made right after the subscription reaches the queue."""
    hub = MigrationWatches(store)
    key = keys.migration_key("m-1")
    await store.create(key, b"a")
    async with hub.subscribe(key) as sub:
        await store.update(key, b"b", (await store.get(key)).mod_revision)  # before anyone reads
        assert (await store.get(key)).value == b"b"
        assert await values(sub, 1) == [b"b"]


async def test_the_last_subscriber_out_closes_the_watch_and_the_next_opens_one(store):
    hub = MigrationWatches(store)
    key = keys.migration_key("m-1")
    await store.create(key, b"a")
    async with hub.subscribe(key):
        pass
    await asyncio.sleep(0)
    async with hub.subscribe(key) as sub:
        await store.update(key, b"b", (await store.get(key)).mod_revision)
        assert await values(sub, 1) == [b"b"]
    assert hub.watches_started == 2


async def test_a_subscriber_that_falls_behind_is_told_once(store):
    hub = MigrationWatches(store, queue_size=2)
    key = keys.migration_key("m-1")
    await store.create(key, b"0")
    async with hub.subscribe(key) as sub:
        for n in range(1, 6):
            await store.update(key, str(n).encode(), (await store.get(key)).mod_revision)
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(sub.next(), 2) == OVERFLOW  # read the record again
        await store.update(key, b"6", (await store.get(key)).mod_revision)
        assert await values(sub, 1) == [b"6"]  # and it goes on


async def test_a_resync_reaches_every_subscriber(store):
    hub = MigrationWatches(store)
    key = keys.migration_key("m-1")
    await store.create(key, b"0")
    other = keys.migration_key("m-2")
    await store.create(other, b"x")
    async with hub.subscribe(key) as sub, hub.subscribe(other) as sub2:
        for value in (b"1", b"2"):  # written and compacted away before the fan-out reads them
            await store.update(key, value, (await store.get(key)).mod_revision)
        await store.compact(store.revision)
        for s in (sub, sub2):
            got = await asyncio.wait_for(s.next(), 2)
            assert isinstance(got, Resync)
            assert {e.key: e.value for e in got.entries}[key] == b"2"


async def test_a_failed_store_watch_reaches_every_subscriber(store):
    hub = MigrationWatches(store)
    key = keys.migration_key("m-1")
    await store.create(key, b"0")
    async with hub.subscribe(key) as a, hub.subscribe(key) as b:
        await store.close()  # the watch ends
        for sub in (a, b):
            with pytest.raises(Unavailable):
                await asyncio.wait_for(sub.next(), 2)


async def test_a_failed_watch_reaches_a_subscriber_that_fell_behind(store):
    hub = MigrationWatches(store, queue_size=1)
    key = keys.migration_key("m-1")
    await store.create(key, b"0")
    async with hub.subscribe(key) as sub:
        for n in range(1, 4):
            await store.update(key, str(n).encode(), (await store.get(key)).mod_revision)
        await asyncio.sleep(0.05)  # it fell behind: OVERFLOW is queued
        await store.close()
        with pytest.raises(Unavailable):  # the end is not lost behind the OVERFLOW marker
            await asyncio.wait_for(sub.next(), 2)
