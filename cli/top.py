"""``ferry top``: every migration in flight, refreshed every ``--interval`` seconds.

It polls ``ListMigrations`` (the in-flight phases, then the last few final ones): the records
carry the job's progress as the leader stores it (about once a second), so polling at that pace
shows what a watch per migration would, with two calls per refresh and no new RPC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime

from ferry.cli import jsonout, live, render
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb


def order(in_flight: Sequence[cpb.Migration]) -> list[cpb.Migration]:
    """Working migrations first, then the queue; each oldest first (as they were submitted)."""
    return sorted(
        in_flight,
        key=lambda m: (m.phase == cpb.PHASE_PENDING, m.created_at.seconds, m.created_at.nanos, m.id),
    )


async def snapshot(
    stub: cgrpc.CoordinatorStub, args: argparse.Namespace, timeout: float
) -> tuple[list[cpb.Migration], list[cpb.Migration]]:
    """(in flight, last finished) as the coordinator has them now."""
    host, vm = args.host or "", args.vm or ""
    busy = await stub.ListMigrations(
        cpb.ListMigrationsRequest(phases=render.IN_FLIGHT, host=host, vm=vm), timeout=timeout
    )
    finished: list[cpb.Migration] = []
    if args.finished > 0:
        done = await stub.ListMigrations(
            cpb.ListMigrationsRequest(phases=sorted(render.FINAL), host=host, vm=vm, limit=args.finished),
            timeout=timeout,
        )
        finished = list(done.migrations)
    return order(busy.migrations), finished


def snapshot_json(in_flight: Sequence[cpb.Migration], finished: Sequence[cpb.Migration], now: datetime) -> str:
    """One refresh as one line of JSON (the ``top`` object of docs/cli-json.md)."""
    return json.dumps(
        {
            "at": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "in_flight": [jsonout.to_json(m) for m in in_flight],
            "finished": [jsonout.to_json(m) for m in finished],
        }
    )


async def run(
    stub: cgrpc.CoordinatorStub, args: argparse.Namespace, screen: live.Screen, source: str, timeout: float
) -> int:
    """Refresh until ``--iterations`` refreshes were shown (0: until Ctrl-C)."""
    as_json = args.output == "json"
    shown = 0
    previous: dict[str, tpb.MigrationProgress] = {}
    with screen.live(enabled=not as_json) as area:
        while True:
            in_flight, finished = await snapshot(stub, args, timeout)
            now = datetime.now(UTC)
            if as_json:
                screen.text(snapshot_json(in_flight, finished, now))
            elif screen.tty:
                area.show(live.top_view(in_flight, finished, now, source, previous))
            else:
                screen.text(render.top_text(in_flight, finished, now, previous) + "\n")
            previous = {m.id: m.progress for m in in_flight if m.HasField("progress")}
            shown += 1
            if args.iterations and shown >= args.iterations:
                return 0
            await asyncio.sleep(args.interval)
