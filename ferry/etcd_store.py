"""The Store port on a real etcd cluster (etcd3aio client). The only module that imports it.

What this adapter adds over the client (see /work/shared/notes/etcd.md for the client's defects):

- Retries are ours. The client is built with one attempt per call; each call here gets attempts
  of ``attempt_timeout_s`` each, until ``timeout_s`` has passed, spread round-robin over the
  endpoints (so a killed or hung member costs one attempt). Then ``Unavailable`` naming the
  endpoints.
- Writes are idempotent. A txn whose attempt timed out may have been applied; when its retry's
  compare fails we read the key back in the same txn and accept our own write
  (``store.write_landed``) instead of reporting a false conflict.
- Watches never skip. The client resumes a broken watch from the last *response* revision, which
  can be ahead of the last *event* delivered (its first response carries the current revision),
  and on compaction it silently stops. Here a watch resumes from the last delivered event + 1,
  and when etcd reports compaction it yields a ``Resync`` snapshot and continues after it.
- Watches keep up with a busy event loop. Each watch stream is read by a thread of its own on a
  synchronous channel (``ferry.etcd_watch``: an asyncio stream reads one response per turn of
  the loop, and fell over a minute behind a loaded coordinator).
- A watch on a member that hangs (SIGSTOP, frozen VM) is only noticed by gRPC keepalive
  (10 s ping + 5 s timeout, the client's fixed values); consumers that must react sooner re-read
  on a timer as well (the election re-reads the leader key every ttl).
- ``list`` reads a prefix in one response (no pagination): fine for thousands of keys.
- History that goes back is noticed. etcd restored from a snapshot (disaster recovery) serves an
  older state at a lower revision: a watch resumed after the last event it delivered would wait
  for revisions that are not coming, and every cache built on it would stay newer than etcd. Every
  linearizable read and write is checked against the highest revision seen (they only grow in a
  working cluster, for a call sent after another was answered); one below it calls
  ``on_rewound(highest, now)``. A watch whose stream reports a revision below its last event lists
  its prefix again and yields a ``Resync`` of the restored state. A restore with ``--bump-revision
  --mark-compacted`` keeps revisions growing; then a read (get, list) that returns a key at an older
  revision than one already read or watched for it, at or before the read's own revision, calls
  ``on_rewound`` too (a key's revision never goes back within one history).
- Leases: grant/keepalive/revoke only; no client-side Lock/Election (they never refresh their
  lease). Leader election lives in ``election.py`` on top of this port. All keepalives of a store
  share one ``LeaseKeepAlive`` stream (the client opens one per renewal); see ``_KeepaliveStream``.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from etcd3aio import (
    Etcd3Client,
    EtcdConnectionError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
    prefix_range_end,
)
from etcd3aio._protobuf import LeaseKeepAliveRequest  # the client exports no request type
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.watch import WatchService

from ferry.errors import FailedPrecondition, FerryError, InvalidArgument, Unavailable
from ferry.etcd_watch import AioWatchStream, WatchStream, watch_channel
from ferry.rpc import Tls, error_type_for
from ferry.store import (
    Conflict,
    Entry,
    EventKind,
    LeaseLost,
    Put,
    Resync,
    WatchEvent,
    Write,
    cas_conflict,
    check_writes,
    commit_landed,
    commit_refused,
    key_exists,
    lease_lost,
    write_landed,
)

T = TypeVar("T")

_TRANSIENT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_REFUSED_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 0.5
_WATCH_FIRST_BACKOFF_S = 0.1  # a broken watch is opened again after this, doubling to the max
_MAX_WATCH_BACKOFF_S = 1.0

log = logging.getLogger(__name__)

# the ops whose answers carry a revision at least as high as any answered before (linearizable
# reads, and writes); lease calls and watches do not promise that
_LINEARIZABLE = frozenset({"get", "list", "create", "update", "delete", "commit"})


class _ReplyLost(Exception):
    """An attempt whose outcome is unknown (timeout, connection lost, or injected by a test)."""


@dataclass(frozen=True)
class EtcdTLS:
    """TLS to etcd: the CA that signed the servers' certificates, and a client cert for mTLS."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None  # needed with several endpoints: a DNS SAN of the server certs

    @classmethod
    def of(cls, tls: Tls | None, server_name: str | None = None) -> EtcdTLS | None:
        """From a config's TLS files (the agent's ``[registry]``, the coordinator's ``[etcd]``);
        None (plaintext) for None."""
        if tls is None:
            return None
        return cls(ca_file=tls.ca, cert_file=tls.cert, key_file=tls.key, server_name=server_name)


@dataclass(frozen=True)
class _Services:
    """A connected client's services (the client holds them as optional: None until connect())."""

    kv: KVService
    lease: LeaseService
    watch: WatchService


def _entry(kv: Any, prefix_len: int) -> Entry:
    return Entry(
        key=kv.key[prefix_len:].decode(),
        value=bytes(kv.value),
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
        lease=kv.lease or None,
    )


#: keys per page of ``EtcdStore.list`` (a migration record is ~3 KiB; its domain XML at most 1 MiB)
LIST_PAGE_KEYS = 500


class _PageTooLarge(FerryError):
    """A list page's answer was over the client's message size: ask again in smaller pages."""


class _Compacted(FerryError):
    """The revision a list reads its pages at was compacted meanwhile: list again."""


def _outcome_unknown(exc: BaseException) -> bool:
    """The attempt may or may not have reached etcd: retry (reads) or check (writes)."""
    if isinstance(exc, (EtcdConnectionError, EtcdTransientError, TimeoutError, _ReplyLost)):
        return True
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in _TRANSIENT_CODES


class _KeepaliveStream:
    """One ``LeaseKeepAlive`` stream that carries every keepalive of a store, for all its leases.

    Opening a stream per renewal costs an HTTP/2 stream on both sides each time; an agent renews
    every ttl/3, so a thousand agents opened some 300 streams a second. Here requests go out on a
    queue feeding the stream, and one reader task hands each response to its waiter.

    etcd answers a stream's requests one by one, in order (a response carries only the lease ID
    and TTL). So the waiters of one lease form a FIFO: the n-th answer for lease L resolves the
    n-th request for L sent on this stream. That is what keeps the election's argument: a
    keepalive returns etcd's answer to the request *it* sent, never an earlier caller's answer
    to a request sent before this one began.

    Any doubt ends the stream: it broke (etcd restarted, member killed, connection reset), an
    answer came for no waiter, or a waiter left without its answer (its attempt timed out, as on
    a hung member, or it was cancelled). Every pending waiter then fails as outcome-unknown, which
    the store's retry loop retries on a new stream (which round-robin may place on another member).
    """

    def __init__(self, services: _Services) -> None:
        self.services = services  # the connection this stream was opened on
        self.broken = False
        self._requests: asyncio.Queue[LeaseKeepAliveRequest | None] = asyncio.Queue()
        self._waiters: dict[int, deque[asyncio.Future[int]]] = {}
        lease = services.lease
        # The client's keep_alive() sends a single request; its stub (with the auth metadata it
        # uses for every call) opens a stream we can keep writing to.
        self._call = lease._stub.LeaseKeepAlive(self._outgoing(), metadata=lease._metadata or None)
        self.reader = asyncio.get_running_loop().create_task(self._read(), name="etcd lease keepalive stream")

    async def renew(self, lease: int, timeout_s: float) -> int:
        """Send one keepalive for ``lease``; its TTL from etcd's answer to it (<= 0: the lease is gone)."""
        if self.broken:
            raise _ReplyLost()
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        answer.add_done_callback(_retrieve)
        self._waiters.setdefault(lease, deque()).append(answer)  # in the order the requests are sent
        self._requests.put_nowait(LeaseKeepAliveRequest(ID=lease))
        try:
            async with asyncio.timeout(timeout_s):
                return await answer
        finally:
            if not answer.done() or answer.cancelled():  # left without its answer: the stream is in doubt
                self.end(_ReplyLost)

    def end(self, error: Callable[[], BaseException]) -> None:
        """Stop using this stream: pending waiters fail with ``error()``, the call is cancelled."""
        if self.broken:
            return
        self.broken = True
        self._requests.put_nowait(None)
        self._call.cancel()
        waiters, self._waiters = self._waiters, {}
        for queue in waiters.values():
            for answer in queue:
                if not answer.done():
                    answer.set_exception(error())

    async def _outgoing(self) -> AsyncGenerator[LeaseKeepAliveRequest, None]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    self.end(_ReplyLost)  # etcd ended the stream
                    return
                queue = self._waiters.get(resp.ID)
                if not queue:
                    self.end(_ReplyLost)  # an answer to no request of ours: the FIFO cannot be trusted
                    return
                answer = queue.popleft()
                if not queue:
                    del self._waiters[resp.ID]
                if not answer.done():
                    answer.set_result(int(resp.TTL))
        except grpc.aio.AioRpcError as exc:
            # the stream ended under every waiter, whatever the code: retried, unless etcd refused us
            refused = exc if exc.code() in _REFUSED_CODES else None
            self.end(lambda: refused or _ReplyLost())
        except asyncio.CancelledError:
            self.end(_ReplyLost)  # the call was cancelled (end(), close()) or this task was


def _retrieve(answer: asyncio.Future[int]) -> None:
    """Mark a failed answer's exception as seen: its waiter may have gone (no 'never retrieved' log)."""
    if not answer.cancelled():
        answer.exception()


class EtcdStore:
    """The Store port on etcd ``endpoints`` (``host:port``), keys under ``prefix`` (e.g. "/ferry/")."""

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str = "/ferry/",
        *,
        tls: EtcdTLS | None = None,
        timeout_s: float = 5.0,
        attempt_timeout_s: float = 1.0,
        watch_threads: bool = True,
    ) -> None:
        """``watch_threads``: read each watch in a thread of its own (``ferry.etcd_watch``: keeps up
        with a busy watch on a busy event loop; the coordinator); False: on the event loop (for
        many quiet watches in one process; the agents' registrations)."""
        if not endpoints:
            raise InvalidArgument(
                "no etcd endpoints given", reason="NO_ENDPOINTS", hint="list host:port of each member"
            )
        if not prefix:
            raise InvalidArgument(
                "empty key prefix", reason="NO_PREFIX", hint='use a per-cluster prefix like "/ferry/"'
            )
        self.endpoints = [e.split("://", 1)[-1] for e in endpoints]
        self.prefix = prefix
        self._prefix_bytes = prefix.encode()
        self._tls = tls
        self._timeout_s = timeout_s
        self._attempt_timeout_s = min(attempt_timeout_s, timeout_s)
        self._client: Etcd3Client | None = None
        self._services: _Services | None = None
        self._lost_replies = 0
        self._closed = False
        self._keepalives: _KeepaliveStream | None = None
        self._keepalive_readers: set[asyncio.Task[None]] = set()  # of streams opened, until they end
        self._watch_chan: grpc.Channel | None = None  # the watches' own (synchronous) channel
        self._watch_threads = watch_threads
        self.highest_revision = 0  # of every linearizable read and write answered so far
        # key -> the newest mod_revision read or watched (a history check); a key this store deletes, or
        # sees deleted, is forgotten, so it holds the keys in use, not every key ever read
        self._versions: dict[str, int] = {}
        # called once each time etcd answers below that: restored from a snapshot, or replaced
        self.on_rewound: Callable[[int, int], None] | None = None

    def _saw(self, revision: int, floor: int) -> None:
        """A linearizable answer at ``revision`` to a call sent when the highest revision answered
        was ``floor``. Calls that overlap in time may be answered in any order; one sent after
        another was answered must see at least its revision."""
        if revision >= floor or floor > self.highest_revision:  # in order, or sent before a rewind seen already
            self.highest_revision = max(self.highest_revision, revision)
            return
        seen, self.highest_revision = self.highest_revision, revision
        self._rewound(
            seen,
            revision,
            f"etcd {','.join(self.endpoints)} answers at revision {revision} after {seen}: its history went back "
            "(restored from a snapshot, or another cluster at the same endpoints)",
        )

    def _check_versions(self, entries: Sequence[Entry], at: int) -> None:
        """Entries read at revision ``at``: one older than a version of its key seen at or before
        ``at`` means etcd's history went back with its revisions going on (``--bump-revision``)."""
        versions = self._versions
        for e in entries:
            known = versions.get(e.key, 0)
            if e.mod_revision < known <= at:
                versions.clear()
                self._rewound(
                    known,
                    e.mod_revision,
                    f"etcd {','.join(self.endpoints)} holds {e.key} at revision {e.mod_revision}, older than the "
                    f"{known} read before: its history went back (restored from a snapshot with --bump-revision?)",
                )
                return
        for e in entries:
            versions[e.key] = max(versions.get(e.key, 0), e.mod_revision)

    def _rewound(self, seen: int, now: int, why: str) -> None:
        log.error("%s", why)
        if self.on_rewound is not None:
            self.on_rewound(seen, now)

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        resp = await self._call("get", lambda c, t: c.kv.get(self._full(key), timeout=t))
        entry = _entry(resp.kvs[0], len(self._prefix_bytes)) if resp.kvs else None
        if entry is not None:
            self._check_versions([entry], int(resp.header.revision))
        return entry

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        """In pages of at most ``LIST_PAGE_KEYS`` keys, all read at the first page's revision: etcd
        answers a range in one message, and the client takes at most 4 MiB (~1,200 migration records,
        fewer with large domain XML). A page still too large is asked again in smaller ones; when the
        first page's revision is compacted before the last page is read, the list starts over."""
        full = self._full(prefix)
        while True:
            try:
                entries, revision = await self._list_pages(full, prefix_range_end(full))
            except _Compacted:
                continue
            self._check_versions(entries, revision)
            return entries, revision

    async def _list_pages(self, full: str, end: bytes) -> tuple[builtins.list[Entry], int]:
        entries: builtins.list[Entry] = []
        start: str | bytes = full
        revision, limit = 0, LIST_PAGE_KEYS
        while True:

            async def page(
                c: _Services, t: float, start: str | bytes = start, at: int = revision, n: int = limit
            ) -> Any:
                try:
                    return await c.kv.get(start, range_end=end, revision=at, limit=n, timeout=t)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and n > 1:
                        raise _PageTooLarge(f"a page of {n} keys is over the client's message size") from exc
                    if exc.code() == grpc.StatusCode.OUT_OF_RANGE and at:
                        raise _Compacted(f"revision {at} was compacted while listing") from exc
                    raise

            try:
                resp = await self._call("list", page)
            except _PageTooLarge:
                limit = max(1, limit // 8)
                continue
            revision = revision or int(resp.header.revision)
            entries.extend(_entry(kv, len(self._prefix_bytes)) for kv in resp.kvs)
            if not resp.more or not resp.kvs:
                return entries, revision
            start = bytes(resp.kvs[-1].key) + b"\0"  # the next key after the last one

    # -- atomic writes --------------------------------------------------------------------------

    async def create(self, key: str, value: bytes, lease: int | None = None) -> int:
        full = self._full(key)

        def txn(c: _Services, t: float) -> Awaitable[Any]:
            kv = c.kv
            return kv.txn(
                [kv.txn_compare_create_revision(full, 0)],
                [kv.txn_op_put(full, value, lease=lease or 0)],
                [kv.txn_op_get(full)],
                timeout=t,
            )

        resp, retried = await self._write("create", txn, lease)
        if resp.succeeded:
            return int(resp.header.revision)
        current = self._read_back(resp)
        if retried and write_landed(current, value, lease, 0):
            assert current is not None
            return current.mod_revision
        raise key_exists(key)

    async def update(self, key: str, value: bytes, expected_mod_revision: int, lease: int | None = None) -> int:
        if expected_mod_revision <= 0:  # an absent key's mod revision is 0: etcd's compare would create it
            raise cas_conflict(key, expected_mod_revision, 0)
        full = self._full(key)

        def txn(c: _Services, t: float) -> Awaitable[Any]:
            kv = c.kv
            return kv.txn(
                [_compare_mod(kv, full, expected_mod_revision)],
                [kv.txn_op_put(full, value, lease=lease or 0)],
                [kv.txn_op_get(full)],
                timeout=t,
            )

        resp, retried = await self._write("update", txn, lease)
        if resp.succeeded:
            return int(resp.header.revision)
        current = self._read_back(resp)
        if retried and write_landed(current, value, lease, expected_mod_revision):
            assert current is not None
            return current.mod_revision
        raise cas_conflict(key, expected_mod_revision, current.mod_revision if current else 0)

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        full = self._full(key)
        self._versions.pop(key, None)  # gone, or kept at its version: either way nothing to compare with
        if expected_mod_revision is None:
            resp = await self._call("delete", lambda c, t: c.kv.delete(full, timeout=t))
            return resp.header.revision if resp.deleted else None

        def txn(c: _Services, t: float) -> Awaitable[Any]:
            kv = c.kv
            return kv.txn(
                [_compare_mod(kv, full, expected_mod_revision)],
                [kv.txn_op_delete(full)],
                [kv.txn_op_get(full)],
                timeout=t,
            )

        resp, _ = await self._write("delete", txn, None)
        if resp.succeeded:
            return resp.header.revision if resp.responses[0].response_delete_range.deleted else None
        current = self._read_back(resp)
        if current is None:
            return None
        raise cas_conflict(key, expected_mod_revision, current.mod_revision)

    async def commit(self, writes: Sequence[Write]) -> int:
        check_writes(writes)
        full = [self._full(w.key) for w in writes]
        for w in writes:
            if not isinstance(w, Put):
                self._versions.pop(w.key, None)  # as in delete()

        def txn(c: _Services, t: float) -> Awaitable[Any]:
            kv = c.kv
            compares = [
                kv.txn_compare_create_revision(k, 0)
                if isinstance(w, Put) and w.expected_mod_revision == 0
                else _compare_mod(kv, k, w.expected_mod_revision)
                for w, k in zip(writes, full, strict=True)
            ]
            ops = [
                kv.txn_op_put(k, w.value, lease=0) if isinstance(w, Put) else kv.txn_op_delete(k)
                for w, k in zip(writes, full, strict=True)
            ]
            return kv.txn(compares, ops, [kv.txn_op_get(k) for k in full], timeout=t)

        resp, retried = await self._write("commit", txn, None)
        if resp.succeeded:
            return int(resp.header.revision)
        current = {w.key: self._read_back(resp, i) for i, w in enumerate(writes)}
        if retried:
            landed = commit_landed(current, writes)
            if landed is not None:
                return landed
        for w in writes:
            now = current[w.key]
            actual = now.mod_revision if now is not None else 0
            if actual != w.expected_mod_revision:
                raise commit_refused(w, actual)
        raise Conflict(  # every compare holds now: the keys changed back between the txn and its reply
            f"store keys {', '.join(w.key for w in writes)} changed during the commit",
            hint="re-read the keys and retry the decision",
        )

    # -- leases ---------------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> int:
        # A retried grant may leak the first lease; it has no keys and expires after ttl_s.
        resp = await self._call("grant lease", lambda c, t: c.lease.grant(int(ttl_s), timeout=t))
        return int(resp.ID)

    async def keepalive(self, lease: int) -> int:
        # Every keepalive of this store goes over one LeaseKeepAlive stream (see _KeepaliveStream).
        ttl = await self._call("keepalive", lambda c, t: self._keepalive_stream(c).renew(lease, t))
        if ttl <= 0:
            raise lease_lost(lease)
        return ttl

    async def revoke(self, lease: int) -> None:
        try:
            await self._call("revoke lease", lambda c, t: c.lease.revoke(lease, timeout=t))
        except LeaseLost:
            pass  # already gone: that is what we wanted

    # -- watch ----------------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        full = self._full(prefix)
        delivered = start_revision - 1  # every event at or below this revision was yielded
        backoff = _WATCH_FIRST_BACKOFF_S
        broken_at: float | None = None  # since when the watch is broken (one warning, then debug)
        attempts = 0
        while not self._closed:
            stream: WatchStream | AioWatchStream
            if self._watch_threads:
                stream = WatchStream(self._watch_channel(), full.encode(), prefix_range_end(full), delivered + 1)
            else:
                watch = (await self._connected()).watch
                stream = AioWatchStream(
                    watch._stub, watch._metadata, full.encode(), prefix_range_end(full), delivered + 1
                )
            compacted = False
            try:
                async for resp in stream:
                    if resp.compact_revision > 0:
                        compacted = True
                        break
                    if 0 < resp.header.revision < delivered:  # etcd went back: list what it has now
                        log.warning(
                            "watch on %r: etcd is at revision %d, below the last event seen (%d); listing again",
                            full,
                            resp.header.revision,
                            delivered,
                        )
                        compacted = True
                        break
                    if resp.canceled:
                        raise Unavailable(
                            f"etcd cancelled the watch on {full!r}",
                            reason="WATCH_CANCELLED",
                            hint="check the etcd members' logs and permissions on the prefix",
                        )
                    backoff = _WATCH_FIRST_BACKOFF_S
                    if broken_at is not None:
                        log.info(
                            "watch on %r resumed after %.1f s (%d attempt(s))",
                            full,
                            time.monotonic() - broken_at,
                            attempts,
                        )
                        broken_at, attempts = None, 0
                    for ev in resp.events:
                        kind = EventKind.DELETE if ev.type == ev.DELETE else EventKind.PUT
                        delivered = ev.kv.mod_revision
                        entry = _entry(ev.kv, len(self._prefix_bytes))
                        if kind is EventKind.PUT:
                            self._versions[entry.key] = max(self._versions.get(entry.key, 0), entry.mod_revision)
                        else:
                            self._versions.pop(entry.key, None)
                        yield WatchEvent(kind, entry)
            except grpc.RpcError as exc:
                if self._closed:
                    return
                if _rpc_code(exc) not in _TRANSIENT_CODES:
                    raise self._map(exc, "watch", None) from exc
                attempts += 1
                if broken_at is None:
                    broken_at = time.monotonic()
                    log.warning(
                        "watch on %r broke (%s); resuming, retried every %.1f s at most",
                        full,
                        _rpc_code(exc),
                        _MAX_WATCH_BACKOFF_S,
                    )
                else:
                    log.debug("watch on %r: attempt %d failed (%s)", full, attempts, _rpc_code(exc))
                await asyncio.sleep(backoff)  # then resume after the last event delivered
                backoff = min(backoff * 2, _MAX_WATCH_BACKOFF_S)
            finally:
                await stream.close()
            if compacted:
                entries, revision = await self._list_until_ok(prefix)  # checks each key's version
                yield Resync(tuple(entries), revision)
                delivered = revision

    # -- lifecycle and test controls ------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._keepalives is not None:
            self._keepalives.end(_ReplyLost)  # its waiters retry, and find the store closed
            self._keepalives = None
        if self._keepalive_readers:
            await asyncio.gather(*self._keepalive_readers)
        if self._client is not None:
            await self._client.close()
            self._client = None
            self._services = None
        if self._watch_chan is not None:
            self._watch_chan.close()  # cancels the watches' streams: their threads end
            self._watch_chan = None

    def lose_next_replies(self, count: int = 1) -> None:
        """Test fault: the next ``count`` txns reach etcd and apply, then their reply is 'lost'."""
        self._lost_replies += count

    async def compact(self, revision: int) -> None:
        """Compact etcd's history before ``revision`` (for tests and maintenance)."""
        await self._call("compact", lambda c, t: c.kv.compact(revision, physical=True, timeout=t))

    # -- internals ------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self.prefix + key

    def _read_back(self, resp: Any, index: int = 0) -> Entry | None:
        """The key as the failure branch's get (the ``index``-th) saw it, in the same revision as the failed compare."""
        kvs = resp.responses[index].response_range.kvs
        return _entry(kvs[0], len(self._prefix_bytes)) if kvs else None

    async def _connected(self) -> _Services:
        if self._closed:
            raise Unavailable(
                "the etcd store is closed", reason="STORE_CLOSED", hint="do not use a store after close()"
            )
        if self._services is None:
            tls = self._tls
            client = Etcd3Client(
                self.endpoints,
                rpc_max_attempts=1,
                tls_server_name=tls.server_name if tls else None,
                ca_cert=tls.ca_file.read_bytes() if tls else None,  # None: plaintext
                cert_chain=tls.cert_file.read_bytes() if tls and tls.cert_file else None,
                cert_key=tls.key_file.read_bytes() if tls and tls.key_file else None,
            )
            await client.connect()
            assert client.kv is not None and client.lease is not None and client.watch is not None  # by connect()
            self._client = client
            self._services = _Services(client.kv, client.lease, client.watch)
        return self._services

    def _watch_channel(self) -> grpc.Channel:
        if self._closed:
            raise Unavailable(
                "the etcd store is closed", reason="STORE_CLOSED", hint="do not use a store after close()"
            )
        if self._watch_chan is None:
            tls = self._tls
            self._watch_chan = watch_channel(
                self.endpoints,
                ca_cert=tls.ca_file.read_bytes() if tls else None,
                cert_key=tls.key_file.read_bytes() if tls and tls.key_file else None,
                cert_chain=tls.cert_file.read_bytes() if tls and tls.cert_file else None,
                server_name=tls.server_name if tls else None,
            )
        return self._watch_chan

    def _keepalive_stream(self, services: _Services) -> _KeepaliveStream:
        """The shared keepalive stream on ``services``; a new one if there is none, it broke, or
        it was opened on an earlier connection."""
        stream = self._keepalives
        if stream is not None and not stream.broken and stream.services is services:
            return stream
        if stream is not None:
            stream.end(_ReplyLost)
        stream = self._keepalives = _KeepaliveStream(services)
        self._keepalive_readers.add(stream.reader)
        stream.reader.add_done_callback(self._keepalive_readers.discard)
        return stream

    async def _call(self, op: str, attempt: Callable[[_Services, float], Awaitable[T]]) -> T:
        """Run ``attempt`` until it succeeds, retrying outcome-unknown failures until ``timeout_s``."""
        result, _ = await self._retrying(op, attempt, None)
        return result

    async def _write(
        self, op: str, txn: Callable[[_Services, float], Awaitable[Any]], lease: int | None
    ) -> tuple[Any, bool]:
        """Run a txn; also says whether an earlier attempt's outcome was unknown (it may have applied)."""

        async def attempt(c: _Services, t: float) -> Any:
            resp = await txn(c, t)
            if self._lost_replies > 0:
                self._lost_replies -= 1
                raise _ReplyLost()
            return resp

        return await self._retrying(op, attempt, lease)

    async def _retrying(
        self, op: str, attempt: Callable[[_Services, float], Awaitable[T]], lease: int | None
    ) -> tuple[T, bool]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        backoff = _FIRST_BACKOFF_S
        uncertain = False
        while True:
            services = await self._connected()
            per_try = max(0.05, min(self._attempt_timeout_s, deadline - loop.time()))
            floor = self.highest_revision  # what every call answered before this one saw
            try:
                result = await attempt(services, per_try)
                if op in _LINEARIZABLE:
                    self._saw(int(result.header.revision), floor)  # type: ignore[attr-defined]
                return result, uncertain
            except Exception as exc:
                if not _outcome_unknown(exc):
                    raise self._map(exc, op, lease) from exc
                uncertain = True
                if loop.time() + backoff >= deadline:
                    raise self._unavailable(op) from exc
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)

    async def _list_until_ok(self, prefix: str) -> tuple[builtins.list[Entry], int]:  # builtins: self.list shadows it
        while True:
            try:
                return await self.list(prefix)
            except Unavailable:
                if self._closed:
                    raise
                await asyncio.sleep(_MAX_BACKOFF_S)

    def _unavailable(self, op: str) -> Unavailable:
        return Unavailable(
            f"etcd did not answer {op} within {self._timeout_s:g} s",
            reason="STORE_UNAVAILABLE",
            hint=f"check that etcd is running and reachable at {', '.join(self.endpoints)}",
        )

    def _map(self, exc: BaseException, op: str, lease: int | None) -> FerryError:
        """A client error as a ferry error, decided by type and gRPC code (never by text)."""
        if isinstance(exc, (EtcdUnauthenticatedError, EtcdPermissionDeniedError)):
            return FailedPrecondition(
                f"etcd refused {op}: not authorised",
                reason="STORE_AUTH",
                hint="check the etcd TLS client certificate / credentials for this prefix",
            )
        code = _rpc_code(exc)
        if code is not None:
            if code == grpc.StatusCode.NOT_FOUND and lease is not None:
                return lease_lost(lease)
            if code == grpc.StatusCode.NOT_FOUND and op in ("revoke lease", "keepalive"):
                return LeaseLost(f"etcd: {op} on an unknown lease", hint="grant a new lease")
            if code == grpc.StatusCode.CANCELLED and self._closed:
                return self._unavailable(op)
            return error_type_for(code)(
                f"etcd {op} failed: {code.name}",
                reason="STORE_ERROR",
                hint=f"see the etcd members' logs ({', '.join(self.endpoints)})",
            )
        if isinstance(exc, FerryError):
            return exc
        return error_type_for(grpc.StatusCode.INTERNAL)(
            f"etcd {op} failed: {type(exc).__name__}",
            reason="STORE_ERROR",
            hint="this is a bug in Ferry's etcd adapter",
        )


def _rpc_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of a failed call, asyncio (the client's) or synchronous (the watches'); None if not one."""
    if isinstance(exc, (grpc.aio.AioRpcError, grpc.Call)):
        return exc.code()
    return None


def _compare_mod(kv: Any, key: str, revision: int) -> Any:
    """Compare ``mod_revision == revision``: the client has no builder for it, so retarget its Compare."""
    compare = kv.txn_compare_version(key, 0)
    compare.target = compare.MOD
    compare.mod_revision = revision
    return compare
