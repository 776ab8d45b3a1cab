"""The etcd store on a 3-member cluster: member crashes, restarts, compaction, lost quorum."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from ferry.errors import Unavailable
from ferry.etcd_store import EtcdStore, EtcdTLS
from ferry.lab.etcd import EtcdCluster
from ferry.store import Resync, WatchEvent

pytestmark = pytest.mark.etcd

PREFIX = "/cluster-test/"


async def wait_until(predicate: Callable[[], bool], within_s: float) -> None:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within_s:
            pytest.fail(f"condition not met within {within_s} s")
        await asyncio.sleep(0.02)


class Collector:
    """Consumes a watch in the background into a list."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        self.items: list[WatchEvent | Resync] = []
        self._task = asyncio.create_task(self._run(store, prefix, start_revision))

    async def _run(self, store: EtcdStore, prefix: str, start_revision: int) -> None:
        async for item in store.watch(prefix, start_revision):
            self.items.append(item)

    def puts(self) -> list[tuple[str, bytes]]:
        return [(i.entry.key, i.entry.value) for i in self.items if isinstance(i, WatchEvent)]

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_compare_and_set_keeps_working_when_the_raft_leader_is_killed(etcd_three: EtcdCluster) -> None:
    store = EtcdStore(etcd_three.endpoints, prefix=PREFIX, timeout_s=5.0, attempt_timeout_s=1.0)
    try:
        revision = await store.create("counter", b"0")
        done = 0
        slowest = 0.0

        async def increment_for(seconds: float) -> None:
            nonlocal revision, done, slowest
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                started = time.monotonic()
                revision = await store.update("counter", str(done + 1).encode(), expected_mod_revision=revision)
                done += 1
                slowest = max(slowest, time.monotonic() - started)

        await increment_for(0.5)
        victim = etcd_three.raft_leader()
        assert victim is not None
        victim.kill()
        await increment_for(2.5)  # no exception: every CAS went through, none was lost or doubled
        entry = await store.get("counter")
        assert entry is not None and entry.value == str(done).encode()
        assert slowest < 5.0
        print(f"\n{done} CAS in 3 s across a leader kill; slowest {slowest:.2f} s")

        victim.start()
        victim.wait_healthy()
        rejoined = EtcdStore([victim.endpoint], prefix=PREFIX)
        try:
            caught_up = await rejoined.get("counter")
            assert caught_up is not None and caught_up.value == str(done).encode()
        finally:
            await rejoined.close()
    finally:
        await store.close()


async def test_watch_resumes_without_gaps_after_its_member_restarts(
    etcd_three: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ferry.etcd_store")
    watched, *others = etcd_three.members
    watcher_store = EtcdStore([watched.endpoint], prefix=PREFIX)
    writer = EtcdStore([m.endpoint for m in others], prefix=PREFIX)
    try:
        _, revision = await writer.list("jobs/")
        collector = Collector(watcher_store, "jobs/", revision + 1)
        await writer.create("jobs/a", b"1")
        await wait_until(lambda: len(collector.items) == 1, 5)

        watched.kill()
        for key in ("b", "c", "d"):
            await writer.create(f"jobs/{key}", b"1")
        await asyncio.sleep(0.3)
        assert collector.puts() == [("jobs/a", b"1")]  # its member is down

        watched.start()
        watched.wait_healthy()
        await writer.create("jobs/e", b"1")
        await wait_until(lambda: len(collector.items) == 5, 10)
        assert collector.puts() == [(f"jobs/{k}", b"1") for k in "abcde"]
        assert not any(isinstance(i, Resync) for i in collector.items)
        # the outage in the log: one warning however many attempts, one line when it resumed
        said = [(r.levelno, r.getMessage()) for r in caplog.records if "jobs/" in r.getMessage()]
        assert [level for level, _ in said] == [logging.WARNING, logging.INFO], said
        assert "broke" in said[0][1] and "resumed after" in said[1][1]
        await collector.stop()
    finally:
        await watcher_store.close()
        await writer.close()


async def test_watch_resyncs_when_history_was_compacted_during_the_outage(etcd_three: EtcdCluster) -> None:
    watched, *others = etcd_three.members
    watcher_store = EtcdStore([watched.endpoint], prefix=PREFIX)
    writer = EtcdStore([m.endpoint for m in others], prefix=PREFIX)
    try:
        _, revision = await writer.list("jobs/")
        collector = Collector(watcher_store, "jobs/", revision + 1)
        first = await writer.create("jobs/a", b"1")
        await wait_until(lambda: len(collector.items) == 1, 5)

        watched.kill()
        await writer.update("jobs/a", b"2", expected_mod_revision=first)
        last = await writer.create("jobs/b", b"1")
        await writer.compact(last)

        watched.start()
        watched.wait_healthy()
        await wait_until(lambda: len(collector.items) == 2, 10)
        resync = collector.items[1]
        assert isinstance(resync, Resync)
        assert [(e.key, e.value) for e in resync.entries] == [("jobs/a", b"2"), ("jobs/b", b"1")]

        await writer.create("jobs/c", b"1")
        await wait_until(lambda: len(collector.items) == 3, 5)
        assert collector.puts()[-1] == ("jobs/c", b"1")
        await collector.stop()
    finally:
        await watcher_store.close()
        await writer.close()


async def test_lost_quorum_is_unavailable_naming_the_endpoints_then_recovers(etcd_three: EtcdCluster) -> None:
    store = EtcdStore(etcd_three.endpoints, prefix=PREFIX, timeout_s=2.0, attempt_timeout_s=0.5)
    try:
        revision = await store.create("k", b"1")
        down = etcd_three.members[:2]
        for m in down:
            m.kill()
        started = time.monotonic()
        with pytest.raises(Unavailable) as err:
            await store.update("k", b"2", expected_mod_revision=revision)
        assert time.monotonic() - started < 3.0
        assert err.value.reason == "STORE_UNAVAILABLE"
        assert all(e in err.value.hint for e in etcd_three.endpoints)

        for m in down:
            m.start()
        for m in down:
            m.wait_healthy()
        # The timed-out update may or may not have been applied; a fresh read decides.
        entry = await store.get("k")
        assert entry is not None and entry.value in (b"1", b"2")
        await store.update("k", b"3", expected_mod_revision=entry.mod_revision)
    finally:
        await store.close()


async def test_tls_with_client_certificates(etcd_tls: EtcdCluster) -> None:
    pki = etcd_tls.members[0].spec.tls
    assert pki is not None
    good = EtcdTLS(pki.ca_file, pki.client_cert_file, pki.client_key_file, server_name="localhost")
    store = EtcdStore(etcd_tls.endpoints, prefix=PREFIX, tls=good)
    plain = EtcdStore(etcd_tls.endpoints, prefix=PREFIX, timeout_s=1.0, attempt_timeout_s=0.3)
    no_client_cert = EtcdStore(
        etcd_tls.endpoints, prefix=PREFIX, tls=EtcdTLS(pki.ca_file, server_name="localhost"), timeout_s=1.0
    )
    try:
        revision = await store.create("secure", b"1")
        assert (await store.get("secure")).mod_revision == revision  # type: ignore[union-attr]
        # watches run on a channel of their own (ferry.etcd_watch), with the same certificates
        watch = store.watch("secure", revision)
        first = await asyncio.wait_for(anext(watch), 10)
        await watch.aclose()
        assert isinstance(first, WatchEvent) and first.entry.value == b"1"
        # gRPC reports a refused handshake as UNAVAILABLE, so these cannot be told from a down server.
        for refused in (plain, no_client_cert):
            with pytest.raises(Unavailable):
                await refused.get("secure")
    finally:
        for s in (store, plain, no_client_cert):
            await s.close()
