"""A watch keeps up with a busy event loop (``ferry.etcd_watch``).

An asyncio gRPC stream reads one response per turn of the loop, and etcd sends one response per
revision: a coordinator whose loop turns every few tens of ms fell a minute behind its writers.
Each watch is now read by a thread, and the loop takes every response queued in one turn. The
test counts turns, not seconds: while another process writes, the loop must deliver many events
per turn.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest

from ferry import etcd_watch
from ferry.etcd_store import EtcdStore
from ferry.lab.etcd import EtcdCluster
from ferry.store import WatchEvent

pytestmark = pytest.mark.etcd

PREFIX = "/busy-loop-test/"
KEYS = 600

WRITER = """
import asyncio, sys
from ferry.etcd_store import EtcdStore

async def main() -> None:
    store = EtcdStore([sys.argv[1]], prefix=sys.argv[2])
    for i in range(int(sys.argv[3])):
        await store.create(f"m/{i:05d}", b"x" * 2000)  # one revision (one watch response) each
    await store.close()

asyncio.run(main())
"""


async def _watch_while_another_process_writes(endpoint: str, busy_s: float) -> tuple[list[str], int]:
    """Keys the watch delivered, and the loop's turns from the first write to the last event."""
    store = EtcdStore([endpoint], prefix=PREFIX)
    _, revision = await store.list("m/")
    keys: list[str] = []
    turns = 0

    async def busy() -> None:  # a loop that turns every ``busy_s``, as a loaded coordinator's does
        nonlocal turns
        while True:
            time.sleep(busy_s)
            turns += 1
            await asyncio.sleep(0)

    async def follow() -> None:
        async for item in store.watch("m/", revision + 1):
            assert isinstance(item, WatchEvent)
            keys.append(item.entry.key)
            if len(keys) == KEYS:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.2)  # the watch is open before the first write
    writer = await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, endpoint, PREFIX, str(KEYS))
    turner = asyncio.create_task(busy())
    try:
        assert await writer.wait() == 0
        async with asyncio.timeout(120):
            await follower
    finally:
        turner.cancel()
        follower.cancel()
        await asyncio.gather(turner, follower, return_exceptions=True)
        await store.close()
    return keys, turns


async def test_a_watch_delivers_many_events_per_turn_of_a_busy_loop(etcd_one: EtcdCluster) -> None:
    keys, turns = await _watch_while_another_process_writes(etcd_one.endpoints[0], busy_s=0.05)
    assert keys == [f"m/{i:05d}" for i in range(KEYS)]  # every event, in order
    # one response per turn (the asyncio stream) would need at least KEYS turns
    assert turns < KEYS / 2, f"{turns} turns of the loop for {KEYS} events"


async def test_a_watch_whose_queue_fills_waits_and_loses_nothing(
    etcd_one: EtcdCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(etcd_watch, "MAX_QUEUED", 3)  # the thread waits for the consumer every 3 responses
    keys, _ = await _watch_while_another_process_writes(etcd_one.endpoints[0], busy_s=0.02)
    assert keys == [f"m/{i:05d}" for i in range(KEYS)]


async def test_closing_the_store_ends_its_watches_and_their_threads(etcd_one: EtcdCluster) -> None:
    store = EtcdStore(etcd_one.endpoints, prefix=PREFIX)
    _, revision = await store.list("m/")
    seen: list[str] = []

    async def follow() -> None:
        async for item in store.watch("m/", revision + 1):
            assert isinstance(item, WatchEvent)
            seen.append(item.entry.key)

    follower = asyncio.create_task(follow())
    await store.create("m/a", b"1")
    async with asyncio.timeout(10):
        while not seen:
            await asyncio.sleep(0.02)
    await store.close()
    async with asyncio.timeout(10):
        await follower  # ends by itself: the store closed
    assert seen == ["m/a"]
    assert [t for t in threading.enumerate() if t.name == "etcd watch"] == []
