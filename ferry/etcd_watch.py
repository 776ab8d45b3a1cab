"""An etcd watch stream read by a thread of its own, for the etcd adapter (``ferry.etcd_store``).

Why a thread: a gRPC asyncio stream delivers one message per turn of the event loop (each read is
a batch on the completion queue, answered through the loop's poller). A coordinator whose loop
turns every 20 ms under load therefore reads at most ~50 watch responses a second, and etcd sends
one response per revision. Measured: at 150 writes/s with a 20 ms busy loop, the asyncio watch fell
77 s behind (p50); every reader of the view (the engine, ``WatchMigration``, the drains) was that
late. Here a thread blocks on a synchronous stream of the same channel settings, queues each
response as it comes, and wakes the loop once per batch; the loop takes everything queued in one
turn.

The queue is bounded (``MAX_QUEUED`` responses): a consumer that falls that far behind makes the
thread wait, and gRPC's flow control then makes etcd hold (and later coalesce) the rest, as before.

The thread has a price when a process holds many quiet watches: a thread blocked on a gRPC
stream wakes every 100 ms (gRPC waits in slices), so 250 agents' registration watches in one
process of the fleet simulation woke it 2,500 times a second for nothing. :class:`AioWatchStream`
reads the same stream on the event loop instead, costing nothing while no event comes; an
``EtcdStore(watch_threads=False)`` uses it (the agent's registration does).

Only the etcd adapter uses this module (the import rules keep etcd3aio there).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
from etcd3aio._protobuf import WatchCreateRequest, WatchRequest, WatchStub  # the client has no sync stream
from etcd3aio.connections import ConnectionManager

#: responses a stream queues before its thread waits for the consumer
MAX_QUEUED = 10_000
_END = object()  # the stream ended (etcd closed it, or it was cancelled)


def watch_channel(
    endpoints: Sequence[str],
    *,
    ca_cert: bytes | None = None,
    cert_key: bytes | None = None,
    cert_chain: bytes | None = None,
    server_name: str | None = None,
) -> grpc.Channel:
    """A synchronous channel with the same target, load balancing, keepalives and TLS as the client's."""
    manager = ConnectionManager(endpoints)
    options = list(manager.grpc_options)
    if ca_cert is None:
        return grpc.insecure_channel(manager.target, options=options)
    if server_name is not None:
        options.append(("grpc.ssl_target_name_override", server_name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_cert, private_key=cert_key, certificate_chain=cert_chain
    )
    return grpc.secure_channel(manager.target, credentials, options=options)


class WatchStream:
    """One watch of ``[key, range_end)`` from ``start_revision``: ``async for resp in stream`` yields
    etcd's WatchResponses in order; a broken stream raises its ``grpc.RpcError``; ``await close()``
    cancels the call and waits for the thread."""

    def __init__(self, channel: grpc.Channel, key: bytes, range_end: bytes, start_revision: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._request = WatchRequest(
            create_request=WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
        )
        self._stub = WatchStub(channel)
        self._queue: deque[Any] = deque()
        self._lock = threading.Condition()
        self._ready = asyncio.Event()  # something is queued (set from the thread through the loop)
        self._stopping = threading.Event()
        self._call: Any = None
        self._done = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="etcd watch", daemon=True)
        self._thread.start()

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            await self._ready.wait()
            with self._lock:
                self._ready.clear()
                batch = list(self._queue)
                self._queue.clear()
                self._lock.notify_all()
            for item in batch:
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

    async def close(self) -> None:
        self._stopping.set()
        with self._lock:
            call = self._call
            self._lock.notify_all()  # a thread waiting for room gives up
        if call is not None:
            call.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._done.wait()
        if self._done.is_set():  # told as the thread's last step: it is gone within moments (a CI run
            self._thread.join(timeout=1.0)  # once saw it still listed right after close)

    # -- the thread ---------------------------------------------------------------------------

    def _requests(self) -> Iterator[Any]:
        yield self._request
        self._stopping.wait()  # the stream stays open until close()

    def _run(self) -> None:
        try:
            call = self._stub.Watch(self._requests())
            with self._lock:
                self._call = call
            if self._stopping.is_set():
                call.cancel()
            for response in call:
                if not self._put(response):
                    return
            self._put(_END)
        except grpc.RpcError as exc:
            self._put(_END if self._stopping.is_set() else exc)
        finally:
            self._tell(self._done)

    def _put(self, item: Any) -> bool:
        """Queue ``item`` for the loop (waiting while the queue is full); False once closing."""
        with self._lock:
            while len(self._queue) >= MAX_QUEUED and not self._stopping.is_set():
                self._lock.wait()
            if self._stopping.is_set() and item is not _END:
                return False
            first = not self._queue
            self._queue.append(item)
        if first:
            self._tell(self._ready)
        return True

    def _tell(self, event: asyncio.Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
            self._loop.call_soon_threadsafe(event.set)


class AioWatchStream:
    """The same watch as :class:`WatchStream` over an asyncio channel: no thread, one response
    per turn of the event loop (for watches that see few events)."""

    def __init__(self, stub: WatchStub, metadata: Any, key: bytes, range_end: bytes, start_revision: int) -> None:
        self._request = WatchRequest(
            create_request=WatchCreateRequest(key=key, range_end=range_end, start_revision=start_revision)
        )
        self._closing = asyncio.Event()
        self._call = stub.Watch(self._outgoing(), metadata=metadata or None)

    async def _outgoing(self) -> AsyncIterator[Any]:
        yield self._request
        await self._closing.wait()  # the stream stays open until close()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for response in self._call:
            yield response

    async def close(self) -> None:
        self._closing.set()
        self._call.cancel()
