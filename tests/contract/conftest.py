"""Store contract fixtures: the same `store_subject` is an in-memory store and a real single-member etcd."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.etcd_store import EtcdStore
from ferry.lab.etcd import EtcdCluster
from ferry.testing.memory_store import MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class StoreSubject:
    """A store under test plus how to let time pass for it."""

    name: str
    store: MemoryStore | EtcdStore
    clock: FakeClock | None
    expiry_slack_s: float  # how late after its TTL the store may delete a lease's keys

    async def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass on the store's clock (jump a fake clock, or really wait)."""
        if self.clock is None:
            await asyncio.sleep(seconds)
            return
        self.clock.now += seconds
        assert isinstance(self.store, MemoryStore)
        self.store.expire_leases()
        await asyncio.sleep(0)

    async def compact(self, revision: int) -> None:
        await self.store.compact(revision)


@pytest.fixture(scope="session")
def etcd_single(etcd_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster.plan(tmp_path_factory.mktemp("etcd-contract"), 1, binary=etcd_bin)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(
    params=[
        "memory",
        pytest.param("etcd", marks=pytest.mark.etcd),
        # the agents' store: watches read on the event loop, not in threads
        pytest.param("etcd-loop-watch", marks=pytest.mark.etcd),
    ]
)
async def store_subject(request: pytest.FixtureRequest) -> AsyncIterator[StoreSubject]:
    if request.param == "memory":
        clock = FakeClock()
        subj = StoreSubject("memory", MemoryStore(clock), clock, expiry_slack_s=0.01)
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd_single")
        # A fresh namespace per test: tests share the server but never see each other's keys.
        store = EtcdStore(
            cluster.endpoints,
            prefix=f"/contract-{uuid.uuid4().hex[:8]}/",
            timeout_s=5.0,
            watch_threads=request.param == "etcd",
        )
        # etcd checks lease expiry every 500 ms and applies the deletion through raft.
        subj = StoreSubject("etcd", store, None, expiry_slack_s=1.0)
    try:
        yield subj
    finally:
        await subj.store.close()
