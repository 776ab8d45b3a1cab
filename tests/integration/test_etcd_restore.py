"""The etcd store when etcd is restored from a snapshot (disaster recovery): history goes back.

A restored etcd serves an older state at a lower revision. A watch resumed after its last event
would wait for revisions that are not coming; caches built on it would stay newer than etcd. The
store says so (``on_rewound``, once) and its watches resync to the restored state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_etcd_cluster import Collector, wait_until

from ferry.etcd_store import EtcdStore
from ferry.lab.etcd import EtcdCluster
from ferry.store import Resync, WatchEvent

pytestmark = pytest.mark.etcd

PREFIX = "/restore-test/"


def watched_store(etcd: EtcdCluster) -> tuple[EtcdStore, list[tuple[int, int]]]:
    """A store, and the (highest, now) of each time it said etcd's history went back."""
    store = EtcdStore(etcd.endpoints, prefix=PREFIX)
    rewound: list[tuple[int, int]] = []
    store.on_rewound = lambda highest, now: rewound.append((highest, now))
    return store, rewound


async def watching(store: EtcdStore) -> Collector:
    _, revision = await store.list("jobs/")
    return Collector(store, "jobs/", revision + 1)


async def test_a_restored_etcd_is_noticed_once_and_watches_resync_to_its_state(
    etcd_one: EtcdCluster, tmp_path: Path
) -> None:
    store, rewound = watched_store(etcd_one)
    try:
        collector = await watching(store)
        await store.create("jobs/a", b"before")
        etcd_one.snapshot(tmp_path / "backup.db")
        for key in "bcd":
            await store.create(f"jobs/{key}", b"after")
        highest = store.highest_revision
        await wait_until(lambda: len(collector.items) == 4, 5)

        etcd_one.restore(tmp_path / "backup.db")
        await wait_until(lambda: any(isinstance(i, Resync) for i in collector.items), 15)
        [resync] = [i for i in collector.items if isinstance(i, Resync)]
        assert [(e.key, e.value) for e in resync.entries] == [("jobs/a", b"before")]
        assert resync.revision < highest
        assert rewound and rewound[0][0] == highest and rewound[0][1] < highest
        assert len(rewound) == 1

        await store.create("jobs/e", b"restored")  # the watch goes on from the restored state
        await wait_until(lambda: isinstance(collector.items[-1], WatchEvent), 5)
        assert collector.puts()[-1] == ("jobs/e", b"restored")
        await collector.stop()
    finally:
        await store.close()


async def test_a_restore_with_bumped_revisions_is_noticed_by_the_keys_that_went_back(
    etcd_one: EtcdCluster, tmp_path: Path
) -> None:
    """etcdutl snapshot restore --bump-revision --mark-compacted (etcd's advice, so watchers do not
    miss events): revisions go on growing, the watches see compaction, and the listing holds a key
    at an older version than the watch already delivered."""
    store, rewound = watched_store(etcd_one)
    try:
        collector = await watching(store)
        first = await store.create("jobs/a", b"before")
        etcd_one.snapshot(tmp_path / "backup.db")
        second = await store.update("jobs/a", b"after", expected_mod_revision=first)
        await wait_until(lambda: len(collector.items) == 2, 5)

        etcd_one.restore(tmp_path / "backup.db", bump_revision=1000)
        await wait_until(lambda: any(isinstance(i, Resync) for i in collector.items), 15)
        [resync] = [i for i in collector.items if isinstance(i, Resync)]
        assert [(e.key, e.value, e.mod_revision) for e in resync.entries] == [("jobs/a", b"before", first)]
        assert resync.revision > second  # bumped: no answer went back
        assert rewound == [(second, first)]
        await collector.stop()
    finally:
        await store.close()


async def test_calls_answered_out_of_order_are_not_taken_for_a_restore(etcd_one: EtcdCluster) -> None:
    """Calls that overlap in time may come back in any order (the coordinator's do, all the time):
    only one sent after another was answered must see at least its revision."""
    store, rewound = watched_store(etcd_one)
    try:

        async def churn(i: int) -> None:
            for j in range(10):
                await store.create(f"churn/{i}-{j}", b"x")
                await store.get(f"churn/{(i + 1) % 40}-{j}")
                await store.list("churn/")

        await asyncio.gather(*(churn(i) for i in range(40)))
        assert rewound == []
        assert store.highest_revision >= 400
    finally:
        await store.close()
