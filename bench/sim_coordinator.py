#!/usr/bin/env python3
"""The coordinator of the fleet simulation (started by ``scale_bench.py``): ``ferry-coordinator``
as ``serve()`` builds it -- the same config file, the etcd adapter, gRPC agent clients -- with its
store calls counted (by call and key prefix). On SIGTERM it resigns and stops like the daemon,
then writes the counts and its CPU seconds as JSON to ``--stats``; ``--profile FILE`` runs it
under cProfile.

Counting here, not from etcd's own metrics, because the agents' registrations use the same etcd.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from pathlib import Path

from benchlib import profiled

from ferry.coordinator.config import load_config
from ferry.coordinator.main import build_coordinator, etcd_store, grpc_agent_factory
from ferry.store import Entry, Resync, Store, WatchEvent, Write


class CountingStore:
    """The Store port passed through, counting each call as ``<call> <key prefix>``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def _count(self, call: str, key: str) -> None:
        head, sep, _ = key.partition("/")
        self.calls[f"{call} {head + sep}"] += 1

    async def get(self, key: str) -> Entry | None:
        self._count("get", key)
        return await self.inner.get(key)

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        self._count("list", prefix)
        return await self.inner.list(prefix)

    async def create(self, key: str, value: bytes, lease: int | None = None) -> int:
        self._count("create", key)
        return await self.inner.create(key, value, lease)

    async def update(self, key: str, value: bytes, expected_mod_revision: int, lease: int | None = None) -> int:
        self._count("update", key)
        return await self.inner.update(key, value, expected_mod_revision, lease)

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        self._count("delete", key)
        return await self.inner.delete(key, expected_mod_revision)

    async def commit(self, writes: Sequence[Write]) -> int:
        self._count("commit", writes[0].key)  # one write of the store, named by its first key
        return await self.inner.commit(writes)

    async def grant_lease(self, ttl_s: int) -> int:
        return await self.inner.grant_lease(ttl_s)

    async def keepalive(self, lease: int) -> int:
        return await self.inner.keepalive(lease)

    async def revoke(self, lease: int) -> None:
        await self.inner.revoke(lease)

    def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        self._count("watch", prefix)
        if prefix.startswith("migrations"):
            return self._timed_watch(prefix, start_revision)
        return self.inner.watch(prefix, start_revision)

    async def _timed_watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        """The migrations' watch, noting how long after a record's last change its event came
        (the change's time is the record's ``updated_at``)."""
        async for event in self.inner.watch(prefix, start_revision):
            if isinstance(event, WatchEvent) and event.entry is not None:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    at = json.loads(event.entry.value).get("updated_at")
                    if at:
                        WATCH_LAG.append(time.time() - datetime.fromisoformat(at).timestamp())
            yield event

    async def close(self) -> None:
        await self.inner.close()


WATCH_LAG: list[float] = []  # seconds from a migration record's change to its watch event here
LOOP_LAG: list[float] = []  # how late a 0.1 s sleep of this process's event loop woke


async def _sample_lag() -> None:
    """Every 30 s a line in the log: the event loop's lag and the migrations' watch lag."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        for _ in range(300):
            t = loop.time()
            await asyncio.sleep(0.1)
            LOOP_LAG.append(loop.time() - t - 0.1)
        now = loop.time()
        loop_lag, watch_lag = sorted(LOOP_LAG), sorted(WATCH_LAG)
        LOOP_LAG.clear()
        WATCH_LAG.clear()

        def pct(xs: list[float], p: float) -> float:
            return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0.0

        logging.getLogger("sim").warning(
            "over %.0f s: event loop lag p50 %.3f p99 %.3f max %.3f s; migrations' watch lag (%d events) "
            "p50 %.3f p99 %.3f max %.3f s",
            now - last,
            pct(loop_lag, 0.5),
            pct(loop_lag, 0.99),
            pct(loop_lag, 1.0),
            len(watch_lag),
            pct(watch_lag, 0.5),
            pct(watch_lag, 0.99),
            pct(watch_lag, 1.0),
        )
        last = now


async def serve(config_path: Path, stats: Path) -> None:
    config = load_config(config_path)
    store = CountingStore(etcd_store(config))
    coordinator = build_coordinator(config, store, grpc_agent_factory(config))  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats.with_suffix(".ready").write_text("")
    try:
        await coordinator.start()
        dump = loop.create_task(_dump_on_request(store, stats))
        lag = loop.create_task(_sample_lag())
        await stop.wait()
        dump.cancel()
        lag.cancel()
    finally:
        await coordinator.stop(grace_s=2.0)
        await store.close()
    _write(store, stats)


def _write(store: CountingStore, stats: Path) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats.write_text(json.dumps({"calls": dict(store.calls), "cpu_s": usage.ru_utime + usage.ru_stime}))


async def _dump_on_request(store: CountingStore, stats: Path) -> None:
    """Write the counts whenever ``<stats>.want`` appears (the bench reads them between runs)."""
    want = stats.with_suffix(".want")
    while True:
        await asyncio.sleep(0.2)
        if want.exists():
            _write(store, stats)
            want.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--stats", type=Path, required=True)
    p.add_argument("--profile", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in filter(None, os.environ.get("FERRY_SIM_INFO_LOGGERS", "").split(",")):
        logging.getLogger(name).setLevel(logging.INFO)  # e.g. ferry.coordinator.fleet, for a closer look
    with profiled(args.profile):
        asyncio.run(serve(args.config, args.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
