"""MemoryStore specifics the contract suite does not cover: clock-driven expiry, history bounds, close."""

from __future__ import annotations

import asyncio

import pytest

from ferry.errors import Unavailable
from ferry.store import Entry, EventKind, Resync, WatchEvent, write_landed
from ferry.testing.memory_store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_lease_expires_on_the_injected_clock_with_all_its_keys_in_one_revision():
    clock = Clock()
    store = MemoryStore(clock)
    lease = await store.grant_lease(10)
    await store.create("a", b"", lease=lease)
    last = await store.create("b", b"", lease=lease)
    clock.now = 9.99
    store.expire_leases()
    assert store.revision == last
    clock.now = 10.0
    store.expire_leases()
    assert store.revision == last + 1
    events = [e async for e in _take(store.watch("", last + 1), 2)]
    assert [(e.kind, e.entry.key, e.revision) for e in events] == [
        (EventKind.DELETE, "a", last + 1),
        (EventKind.DELETE, "b", last + 1),
    ]
    await store.close()


async def test_expiry_reaches_watchers_without_any_call():
    store = MemoryStore()  # real monotonic clock
    lease = await store.grant_lease(0.2)
    rev = await store.create("k", b"", lease=lease)
    async with asyncio.timeout(1):
        async for item in store.watch("k", rev + 1):
            assert isinstance(item, WatchEvent) and item.kind is EventKind.DELETE
            break
    await store.close()


async def test_bounded_history_compacts_and_old_watches_resync():
    store = MemoryStore(history_limit=10)
    first = await store.create("k/0", b"0")
    for i in range(1, 30):
        await store.create(f"k/{i}", b"x")
    [item] = [i async for i in _take(store.watch("k/", first), 1)]
    assert isinstance(item, Resync)
    assert len(item.entries) == 30 and item.revision == store.revision
    await store.close()


async def test_closed_store_refuses_calls_and_ends_watches():
    store = MemoryStore()
    watch = store.watch("", 1)
    consumer = asyncio.create_task(_drain(watch))
    await asyncio.sleep(0)
    await store.close()
    assert await asyncio.wait_for(consumer, 1) == []
    with pytest.raises(Unavailable):
        await store.get("k")


@pytest.mark.parametrize(
    ("current", "value", "lease", "after", "landed"),
    [
        (None, b"v", None, 0, False),  # key gone
        (Entry("k", b"v", 8, 3), b"v", None, 5, True),  # ours
        (Entry("k", b"v", 8, 3, lease=7), b"v", None, 5, False),  # same bytes, other lease
        (Entry("k", b"v", 8, 3, lease=7), b"v", 7, 0, True),  # our create under our lease
        (Entry("k", b"w", 8, 3), b"v", None, 5, False),  # someone else's bytes
        (Entry("k", b"v", 5, 3), b"v", None, 5, False),  # not newer than the compare
    ],
)
def test_write_landed(current, value, lease, after, landed):
    assert write_landed(current, value, lease, after) is landed


async def _take(items, n):
    count = 0
    async for item in items:
        yield item
        count += 1
        if count == n:
            return


async def _drain(items):
    return [i async for i in items]
