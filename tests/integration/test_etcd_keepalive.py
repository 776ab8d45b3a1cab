"""The etcd store's lease keepalives: one shared LeaseKeepAlive stream per store, across member
restarts, hung members and close()."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.request

import pytest

from ferry.errors import Unavailable
from ferry.etcd_store import EtcdStore
from ferry.lab.etcd import EtcdCluster, EtcdMember

pytestmark = pytest.mark.etcd

PREFIX = "/keepalive-test/"
TTL_S = 5


def keepalive_streams_opened(member: EtcdMember) -> int:
    """How many LeaseKeepAlive streams ``member`` has accepted since it started (its /metrics)."""
    with urllib.request.urlopen(f"http://{member.endpoint}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    pattern = r'^grpc_server_started_total\{[^}]*grpc_method="LeaseKeepAlive"[^}]*\} (\S+)$'
    return sum(int(float(m)) for m in re.findall(pattern, text, re.MULTILINE))


async def test_renewals_of_many_leases_share_one_stream(etcd_one: EtcdCluster) -> None:
    [member] = etcd_one.members
    store = EtcdStore(etcd_one.endpoints, prefix=PREFIX)
    try:
        leases = [await store.grant_lease(TTL_S) for _ in range(10)]
        before = keepalive_streams_opened(member)
        for _ in range(5):
            ttls = await asyncio.gather(*(store.keepalive(lease) for lease in leases))
            assert ttls == [TTL_S] * 10
        assert keepalive_streams_opened(member) - before == 1  # 50 renewals, one stream
    finally:
        await store.close()


async def test_keepalive_works_again_after_the_member_restarts(etcd_one: EtcdCluster) -> None:
    [member] = etcd_one.members
    store = EtcdStore(etcd_one.endpoints, prefix=PREFIX, timeout_s=10.0)
    try:
        lease = await store.grant_lease(TTL_S)
        await store.create("held", b"x", lease=lease)
        assert await store.keepalive(lease) == TTL_S  # the stream is open

        member.kill()  # the stream breaks under the store
        renewal = asyncio.create_task(store.keepalive(lease))  # retried until etcd is back
        await asyncio.sleep(0.3)
        member.start()
        member.wait_healthy()
        assert await renewal == TTL_S
        for _ in range(3):
            assert await store.keepalive(lease) == TTL_S
        entry = await store.get("held")
        assert entry is not None and entry.lease == lease
    finally:
        await store.close()


async def test_keepalive_leaves_a_hung_member_within_the_attempt_timeout(etcd_three: EtcdCluster) -> None:
    """The stream sits on one member; SIGSTOP either follower in turn: renewals go on via the other."""
    followers = [m for m in etcd_three.members if not m.is_raft_leader()]
    assert len(followers) == 2
    store = EtcdStore([m.endpoint for m in followers], prefix=PREFIX, timeout_s=5.0, attempt_timeout_s=0.5)
    try:
        leases = [await store.grant_lease(TTL_S) for _ in range(3)]
        for hung in followers:
            await asyncio.gather(*(store.keepalive(lease) for lease in leases))
            hung.pause()
            try:
                for _ in range(3):
                    started = time.monotonic()
                    ttls = await asyncio.gather(*(store.keepalive(lease) for lease in leases))
                    assert ttls == [TTL_S] * 3
                    assert time.monotonic() - started < 2.0  # one attempt timeout, then the other member
            finally:
                hung.resume()
    finally:
        await store.close()


async def test_close_with_a_renewal_pending_ends_stream_and_reader(
    etcd_one: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # The scenario needs a renewal still pending when close() is called. It failed twice in full
    # runs (about 1 in 25 runs of this test alone) with the renewal answered: whether etcd answered
    # it before SIGSTOP took hold is not known, so the renewal's state at close is checked and
    # said, and a try where it was already answered is made again (at most 3).
    [member] = etcd_one.members
    for _ in range(3):
        store = EtcdStore(etcd_one.endpoints, prefix=PREFIX, timeout_s=5.0)
        lease = await store.grant_lease(TTL_S)
        assert await store.keepalive(lease) == TTL_S
        member.pause()  # the next renewal waits for an answer that does not come
        try:
            with caplog.at_level(logging.DEBUG, logger="asyncio"):
                renewal = asyncio.create_task(store.keepalive(lease))
                await asyncio.sleep(0.2)
                pending = not renewal.done()
                await store.close()
                try:
                    got = await renewal
                except Unavailable as err:
                    assert err.reason == "STORE_CLOSED"
                else:
                    assert not pending, f"a renewal pending at close() returned {got} after it"
                    continue  # answered before close(): not the scenario; again
                assert [t for t in asyncio.all_tasks() if "keepalive" in t.get_name()] == []
                break
        finally:
            member.resume()
    else:
        pytest.fail("etcd answered a renewal while paused in all 3 tries")
    # grpc's own poller may log "Event loop is closed" when the test's loop ends (seen once in CI): not ours
    ours = [r for r in caplog.records if "PollerCompletionQueue" not in r.getMessage()]
    assert [r for r in ours if r.levelno >= logging.WARNING] == []
