"""``EtcdStore.list`` in pages against a real etcd: every page read at the first page's revision
(a write between pages is not in the list), and a list whose revision is compacted between two
pages starts over at the newest."""

from __future__ import annotations

import pytest

from ferry import etcd_store
from ferry.etcd_store import EtcdStore
from ferry.lab.etcd import EtcdCluster

pytestmark = pytest.mark.etcd

PREFIX = "/list-test/"


async def test_pages_are_read_at_the_first_pages_revision(etcd_one: EtcdCluster, monkeypatch) -> None:
    monkeypatch.setattr(etcd_store, "LIST_PAGE_KEYS", 3)
    store = EtcdStore(etcd_one.endpoints, prefix=PREFIX, timeout_s=5.0)
    try:
        for n in range(10):
            await store.create(f"k/{n:02d}", b"before")
        real_get, pages = None, []

        async def write_between_pages(services, *args, **kw):
            if not kw.get("range_end"):  # the test's own get
                return await real_get(*args, **kw)
            pages.append(kw.get("revision", 0))
            if len(pages) == 2:  # after the first page: a change and a new key
                await store.update("k/08", b"after", (await store.get("k/08")).mod_revision)
                await store.create("k/05b", b"after")
            return await real_get(*args, **kw)

        services = await store._connected()
        real_get = services.kv.get
        monkeypatch.setattr(services.kv, "get", lambda *a, **kw: write_between_pages(services, *a, **kw))
        entries, revision = await store.list("k/")
        assert len(pages) == 4 and pages[0] == 0 and set(pages[1:]) == {revision}  # 10 keys in pages of 3
        assert [e.key for e in entries] == [f"k/{n:02d}" for n in range(10)]
        assert {e.value for e in entries} == {b"before"}
    finally:
        await store.close()


async def test_a_list_whose_revision_is_compacted_starts_over(etcd_one: EtcdCluster, monkeypatch) -> None:
    monkeypatch.setattr(etcd_store, "LIST_PAGE_KEYS", 2)
    store = EtcdStore(etcd_one.endpoints, prefix=PREFIX + "c/", timeout_s=5.0)
    try:
        for n in range(5):
            await store.create(f"k/{n}", b"v")
        calls = 0
        services = await store._connected()
        real_get = services.kv.get

        async def compact_after_the_first_page(*args, **kw):
            nonlocal calls
            calls += kw.get("range_end") is not None
            if calls == 2 and kw.get("revision"):
                await store.create("k/9", b"new")
                await store.compact(await store.create("x", b"x"))
            return await real_get(*args, **kw)

        monkeypatch.setattr(services.kv, "get", compact_after_the_first_page)
        entries, _ = await store.list("k/")
        assert [e.key for e in entries] == ["k/0", "k/1", "k/2", "k/3", "k/4", "k/9"]  # listed again, newest
    finally:
        await store.close()
