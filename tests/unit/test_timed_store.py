"""TimedStore: every store call passes through unchanged and is timed with how it ended."""

from __future__ import annotations

import pytest

from ferry.store import Conflict
from ferry.testing.memory_store import MemoryStore
from ferry.timed_store import TimedStore


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float, str]] = []

    def store_call(self, operation: str, seconds: float, reason: str) -> None:
        self.seen.append((operation, seconds, reason))


async def test_calls_are_timed_and_failures_named():
    ticks = iter(range(100))
    calls = Calls()
    store = TimedStore(MemoryStore(), calls, clock=lambda: float(next(ticks)))
    rev = await store.create("k", b"v")
    assert (await store.get("k")).value == b"v"
    with pytest.raises(Conflict):
        await store.update("k", b"w", rev + 5)
    await store.update("k", b"w", rev)
    entries, _ = await store.list("")
    assert [e.key for e in entries] == ["k"]
    lease = await store.grant_lease(5)
    await store.keepalive(lease)
    await store.revoke(lease)
    await store.delete("k")
    await store.close()
    assert [(op, reason) for op, _, reason in calls.seen] == [
        ("create", ""),
        ("get", ""),
        ("update", "CAS_CONFLICT"),
        ("update", ""),
        ("list", ""),
        ("grant_lease", ""),
        ("keepalive", ""),
        ("revoke", ""),
        ("delete", ""),
    ]
    assert all(seconds == 1.0 for _, seconds, _ in calls.seen)  # one tick per call
