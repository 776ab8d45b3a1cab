"""One Store contract, run against the in-memory store and a real etcd: the fake cannot drift."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from ferry.errors import AlreadyExists, Unavailable
from ferry.etcd_store import EtcdStore
from ferry.lab.etcd import free_loopback_ports
from ferry.store import Conflict, EventKind, LeaseLost, Put, Remove, Resync, WatchEvent

if TYPE_CHECKING:
    from conftest import StoreSubject  # tests/contract/conftest.py

TTL_S = 2  # etcd's smallest lease TTL with default timings


async def take(items: AsyncIterator[WatchEvent | Resync], n: int, timeout_s: float = 5.0) -> list[WatchEvent | Resync]:
    out: list[WatchEvent | Resync] = []
    async with asyncio.timeout(timeout_s):
        async for item in items:
            out.append(item)
            if len(out) == n:
                break
    return out


def summary(items: list[WatchEvent | Resync]) -> list[tuple[str, str, bytes, int]]:
    return [(i.kind.value, i.entry.key, i.entry.value, i.revision) for i in items if isinstance(i, WatchEvent)]


async def test_create_only_if_absent(store_subject: StoreSubject) -> None:
    store = store_subject.store
    rev = await store.create("jobs/a", b"one")
    entry = await store.get("jobs/a")
    assert entry is not None
    assert (entry.value, entry.mod_revision, entry.create_revision, entry.lease) == (b"one", rev, rev, None)

    with pytest.raises(AlreadyExists) as err:
        await store.create("jobs/a", b"two")
    assert err.value.reason == "KEY_EXISTS"
    assert (await store.get("jobs/a")) == entry
    assert await store.get("jobs/missing") is None


async def test_update_is_compare_and_set_on_mod_revision(store_subject: StoreSubject) -> None:
    store = store_subject.store
    created = await store.create("k", b"v1")
    updated = await store.update("k", b"v2", expected_mod_revision=created)
    assert updated > created
    entry = await store.get("k")
    assert entry is not None
    assert (entry.value, entry.mod_revision, entry.create_revision) == (b"v2", updated, created)

    with pytest.raises(Conflict) as err:
        await store.update("k", b"stale", expected_mod_revision=created)
    assert err.value.reason == "CAS_CONFLICT"
    assert (await store.get("k")) == entry

    with pytest.raises(Conflict):
        await store.update("absent", b"x", expected_mod_revision=created)
    assert await store.get("absent") is None
    with pytest.raises(Conflict):  # 0 is an absent key's mod revision to etcd: its compare alone would create it
        await store.update("absent", b"x", expected_mod_revision=0)
    assert await store.get("absent") is None


async def test_the_compare_is_decided_before_the_lease(store_subject: StoreSubject) -> None:
    """As etcd: a write under a dead lease that fails its compare fails as the compare says."""
    store = store_subject.store
    created = await store.create("k", b"v")
    lease = await store.grant_lease(5)
    await store.revoke(lease)
    with pytest.raises(AlreadyExists):
        await store.create("k", b"again", lease=lease)
    with pytest.raises(Conflict):
        await store.update("k", b"stale", expected_mod_revision=created + 100, lease=lease)
    with pytest.raises(LeaseLost):
        await store.update("k", b"v2", expected_mod_revision=created, lease=lease)
    assert (await store.get("k")).value == b"v"  # type: ignore[union-attr]


async def test_list_returns_only_the_prefix_sorted_with_revision(store_subject: StoreSubject) -> None:
    store = store_subject.store
    await store.create("a/2", b"2")
    await store.create("b/1", b"b")
    await store.create("a/1", b"1")
    last = await store.create("ab", b"ab")

    entries, revision = await store.list("a/")
    assert [(e.key, e.value) for e in entries] == [("a/1", b"1"), ("a/2", b"2")]
    assert revision == last
    everything, _ = await store.list("")
    assert [e.key for e in everything] == ["a/1", "a/2", "ab", "b/1"]


async def test_a_list_larger_than_a_grpc_message_comes_whole(store_subject: StoreSubject) -> None:
    """~1,300 records of 4 KiB: over the 4 MiB a gRPC client takes in one message (a coordinator
    that leads again lists every migration record)."""
    store = store_subject.store
    value = b"r" * 4096
    for chunk in range(0, 1300, 100):
        await asyncio.gather(*(store.create(f"m/{n:05d}", value) for n in range(chunk, chunk + 100)))
    last = await store.create("n/after", b"x")
    entries, revision = await store.list("m/")
    assert [e.key for e in entries] == [f"m/{n:05d}" for n in range(1300)]
    assert all(e.value == value for e in entries) and revision == last


async def test_delete_plain_and_compare_and_set(store_subject: StoreSubject) -> None:
    store = store_subject.store
    rev = await store.create("d/1", b"x")
    assert await store.delete("d/1") == rev + 1
    assert await store.get("d/1") is None
    assert await store.delete("d/1") is None  # already gone: not an error

    rev = await store.create("d/2", b"x")
    rev2 = await store.update("d/2", b"y", expected_mod_revision=rev)
    with pytest.raises(Conflict):
        await store.delete("d/2", expected_mod_revision=rev)
    assert (await store.get("d/2")) is not None
    assert await store.delete("d/2", expected_mod_revision=rev2) == rev2 + 1
    assert await store.delete("d/2", expected_mod_revision=rev2) is None


async def test_lease_expiry_removes_its_keys(store_subject: StoreSubject) -> None:
    store = store_subject.store
    lease = await store.grant_lease(TTL_S)
    await store.create("leased/a", b"a", lease=lease)
    await store.create("leased/b", b"b", lease=lease)
    await store.create("leased/plain", b"p")
    entry = await store.get("leased/a")
    assert entry is not None and entry.lease == lease

    await store_subject.sleep(TTL_S + store_subject.expiry_slack_s)

    entries, _ = await store.list("leased/")
    assert [e.key for e in entries] == ["leased/plain"]
    with pytest.raises(LeaseLost):
        await store.keepalive(lease)
    with pytest.raises(LeaseLost):
        await store.create("leased/c", b"c", lease=lease)


async def test_keepalive_keeps_keys_past_the_ttl(store_subject: StoreSubject) -> None:
    store = store_subject.store
    lease = await store.grant_lease(TTL_S)
    await store.create("kept", b"x", lease=lease)
    for _ in range(3):  # 3 s in all, more than the TTL
        await store_subject.sleep(TTL_S / 2)
        assert await store.keepalive(lease) == TTL_S
    assert (await store.get("kept")) is not None


async def test_concurrent_keepalives_of_several_leases_all_renew(store_subject: StoreSubject) -> None:
    store = store_subject.store
    leases = [await store.grant_lease(TTL_S) for _ in range(5)]
    for n, lease in enumerate(leases):
        await store.create(f"many/{n}", b"x", lease=lease)
    for _ in range(3):  # 3 s in all, more than the TTL: only the renewals keep the keys
        await store_subject.sleep(TTL_S / 2)
        # several at once per lease too: each call gets an answer of its own
        ttls = await asyncio.gather(*(store.keepalive(lease) for lease in leases for _ in range(4)))
        assert ttls == [TTL_S] * 20
    entries, _ = await store.list("many/")
    assert [e.key for e in entries] == [f"many/{n}" for n in range(5)]


async def test_keepalive_of_a_revoked_lease_is_lost_while_another_renews(store_subject: StoreSubject) -> None:
    store = store_subject.store
    gone, kept = await store.grant_lease(TTL_S), await store.grant_lease(TTL_S)
    assert await store.keepalive(gone) == TTL_S
    await store.revoke(gone)
    results = await asyncio.gather(store.keepalive(gone), store.keepalive(kept), return_exceptions=True)
    assert isinstance(results[0], LeaseLost)
    assert results[1] == TTL_S
    assert await store.keepalive(kept) == TTL_S  # and the other lease still renews afterwards
    with pytest.raises(LeaseLost):
        await store.keepalive(gone)


async def test_revoke_deletes_keys_at_once_and_update_can_detach(store_subject: StoreSubject) -> None:
    store = store_subject.store
    lease = await store.grant_lease(TTL_S)
    rev = await store.create("r/a", b"a", lease=lease)
    await store.create("r/b", b"b", lease=lease)
    await store.update("r/a", b"a2", expected_mod_revision=rev)  # no lease given: detached
    await store.revoke(lease)
    entries, _ = await store.list("r/")
    assert [(e.key, e.lease) for e in entries] == [("r/a", None)]
    await store.revoke(lease)  # again: not an error


async def test_watch_replays_from_start_revision_then_follows(store_subject: StoreSubject) -> None:
    store = store_subject.store
    r1 = await store.create("w/1", b"a")
    r2 = await store.update("w/1", b"b", expected_mod_revision=r1)
    r3 = await store.create("w/2", b"c")
    await store.create("other", b"not watched")
    r5 = await store.delete("w/1")

    watch = store.watch("w/", r2)
    replayed = await take(watch, 3)
    assert summary(replayed) == [("put", "w/1", b"b", r2), ("put", "w/2", b"c", r3), ("delete", "w/1", b"", r5)]

    async def write_later() -> int:
        await asyncio.sleep(0.05)
        return await store.create("w/3", b"d")

    writer = asyncio.create_task(write_later())
    live = await take(watch, 1)
    assert summary(live) == [("put", "w/3", b"d", await writer)]
    await watch.aclose()


async def test_watch_sees_lease_expiry_as_delete(store_subject: StoreSubject) -> None:
    store = store_subject.store
    lease = await store.grant_lease(TTL_S)
    rev = await store.create("e/k", b"x", lease=lease)
    watch = store.watch("e/", rev + 1)
    waiter = asyncio.create_task(take(watch, 1, timeout_s=TTL_S + 3))
    await store_subject.sleep(TTL_S + store_subject.expiry_slack_s)
    [event] = await waiter
    assert isinstance(event, WatchEvent)
    assert (event.kind, event.entry.key) == (EventKind.DELETE, "e/k")
    await watch.aclose()


async def test_watch_from_compacted_history_resyncs_then_follows(store_subject: StoreSubject) -> None:
    store = store_subject.store
    r1 = await store.create("c/1", b"a")
    await store.update("c/1", b"b", expected_mod_revision=r1)
    last = await store.create("c/2", b"c")
    await store_subject.compact(last)

    watch = store.watch("c/", r1)
    [resync] = await take(watch, 1)
    assert isinstance(resync, Resync)
    assert [(e.key, e.value) for e in resync.entries] == [("c/1", b"b"), ("c/2", b"c")]
    assert resync.revision >= last

    r_new = await store.create("c/3", b"d")
    [event] = await take(watch, 1)
    assert summary([event]) == [("put", "c/3", b"d", r_new)]
    await watch.aclose()


async def test_retried_writes_whose_first_attempt_applied_succeed_once(store_subject: StoreSubject) -> None:
    """A txn applied by the store whose reply was lost is retried; the retry recognises our write."""
    store = store_subject.store
    rev = await store.create("i/k", b"v1")

    store.lose_next_replies(1)
    rev2 = await store.update("i/k", b"v2", expected_mod_revision=rev)
    entry = await store.get("i/k")
    assert entry is not None and (entry.value, entry.mod_revision) == (b"v2", rev2)
    assert rev2 == rev + 1  # applied exactly once

    store.lose_next_replies(1)
    rev3 = await store.create("i/new", b"n")
    assert rev3 == rev2 + 1
    assert (await store.get("i/new")) is not None

    store.lose_next_replies(1)
    assert await store.delete("i/k", expected_mod_revision=rev2) is None  # applied; reply lost
    assert await store.get("i/k") is None
    _, revision = await store.list("i/")
    assert revision == rev3 + 1

    # A real conflict is still one: someone else's bytes are never taken for ours.
    other = await store.create("i/other", b"theirs")
    store.lose_next_replies(1)
    with pytest.raises(Conflict):
        await store.update("i/other", b"ours", expected_mod_revision=other - 1)


async def test_commit_applies_every_write_in_one_revision_or_none(store_subject: StoreSubject) -> None:
    store = store_subject.store
    claim = await store.create("c/claim", b"m1")
    record = await store.create("c/record", b"v1")
    _, start = await store.list("c/")
    events = store.watch("c/", start + 1)

    # a create, a compare-and-set and a delete, all in one revision
    rev = await store.commit([Put("c/new", b"n"), Put("c/record", b"v2", record), Remove("c/claim", claim)])
    assert rev == start + 1
    new, rec = await store.get("c/new"), await store.get("c/record")
    assert new is not None and (new.value, new.mod_revision, new.create_revision) == (b"n", rev, rev)
    assert rec is not None and (rec.value, rec.mod_revision) == (b"v2", rev)
    assert await store.get("c/claim") is None
    got = summary(await take(events, 3))
    assert sorted(got) == sorted(
        [("put", "c/new", b"n", rev), ("put", "c/record", b"v2", rev), ("delete", "c/claim", b"", rev)]
    )
    await events.aclose()

    # one failed condition: nothing is written, and the error names the first key that failed
    with pytest.raises(AlreadyExists):
        await store.commit([Put("c/other", b"o"), Put("c/new", b"again")])
    with pytest.raises(Conflict, match="c/record"):
        await store.commit([Put("c/other", b"o"), Put("c/record", b"v3", record)])
    with pytest.raises(Conflict, match="c/claim"):
        await store.commit([Put("c/other", b"o"), Remove("c/claim", claim)])
    assert await store.get("c/other") is None
    _, after = await store.list("c/")
    assert after == rev

    # retried after a lost reply: applied once, and the retry recognises it
    store.lose_next_replies(1)
    rev2 = await store.commit([Put("c/other", b"o"), Remove("c/new", rev)])
    assert rev2 == rev + 1
    other = await store.get("c/other")
    assert other is not None and other.mod_revision == rev2 and await store.get("c/new") is None

    with pytest.raises(ValueError):
        await store.commit([Remove("c/other", rev2)])  # no Put
    with pytest.raises(ValueError):
        await store.commit([Put("c/x", b"1"), Put("c/x", b"2")])  # a key twice


async def test_unreachable_etcd_is_unavailable_naming_the_endpoints() -> None:
    [port] = free_loopback_ports(1)
    store = EtcdStore([f"127.0.0.1:{port}"], timeout_s=1.0, attempt_timeout_s=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable) as err:
            await store.get("anything")
    finally:
        await store.close()
    assert err.value.reason == "STORE_UNAVAILABLE"
    assert f"127.0.0.1:{port}" in err.value.hint
    assert time.monotonic() - started < 2.0
