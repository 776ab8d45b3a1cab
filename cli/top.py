"""``ferry top``: every migration in flight, refreshed every ``--interval`` seconds.

It polls ``ListMigrations`` (the in-flight phases, then the last few final ones): the records
carry the job's progress as the leader stores it (about once a second), so polling at that pace
shows what a watch per migration would, with two calls per refresh and no new RPC.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import grpc

from ferry.cli import jsonout, live, render
from ferry.cli.args import EXIT_OK, EXIT_UNREACHABLE
from ferry.errors import FerryError
from ferry.rpc import SERVER_BUSY, from_rpc_error
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


class View:
    """What ``ferry top`` shows, refresh after refresh: the figures of each one that succeeded,
    else why it failed. Keeps what the next refresh's figures need: each migration's progress one
    refresh ago (to measure a rate libvirt does not report) and the most of it DONE showed (a
    DONE that runs backwards as a pre-copy pass starts misleads more than one that pauses)."""

    def __init__(self, screen: live.Screen, area: live.LiveArea, as_json: bool, source: str) -> None:
        self.screen, self.area, self.as_json, self.source = screen, area, as_json, source
        self.previous: dict[str, tpb.MigrationProgress] = {}
        self.done: dict[str, float] = {}  # migration ID -> the most of it DONE showed
        # the last refresh that succeeded, as it was drawn: a failed one's status line goes under it
        self.last: tuple[Sequence[cpb.Migration], Sequence[cpb.Migration], datetime, render.Previous, render.Shown]
        self.last = ([], [], datetime.now(UTC), {}, {})
        self.answered = False

    def figures(self, in_flight: Sequence[cpb.Migration], finished: Sequence[cpb.Migration], now: datetime) -> None:
        previous, done = self.previous, self.done
        if self.as_json:
            self.screen.text(snapshot_json(in_flight, finished, now))
        elif self.screen.tty:
            self.area.show(live.top_view(in_flight, finished, now, self.source, previous, done))
        else:
            self.screen.text(render.top_text(in_flight, finished, now, previous, done) + "\n")
        self.last, self.answered = (in_flight, finished, now, previous, done), True
        self.done = {
            m.id: render.top_fraction(m, previous.get(m.id), done.get(m.id, 0.0))
            for m in in_flight
            if render.shows_progress(m) and render.known(m.progress)
        }
        self.previous = {m.id: m.progress for m in in_flight if m.HasField("progress")}

    def failed(self, err: FerryError, now: datetime) -> None:
        if self.as_json:  # JSON Lines: the error object on one line, as every refresh
            self.screen.text(json.dumps(jsonout.error_json(err.reason, err.message, err.hint, err.code.name)))
        elif self.screen.tty:
            problem = f"{now.astimezone().strftime('%H:%M:%S')}  {render.top_failed(err.reason, err.message)}"
            in_flight, finished, at, previous, done = self.last
            summary = None if self.answered else "no answer yet"
            self.area.show(
                live.top_view(in_flight, finished, at, self.source, previous, done, problem=problem, summary=summary)
            )
        else:
            self.screen.text(render.top_failed_text(err.reason, err.message, now) + "\n")


async def run(
    stub: cgrpc.CoordinatorStub,
    args: argparse.Namespace,
    screen: live.Screen,
    source: str,
    timeout: float,
    reconnect: Callable[[], Awaitable[tuple[cgrpc.CoordinatorStub, str]]] | None = None,
) -> int:
    """Refresh until ``--iterations`` refreshes were shown (0: until Ctrl-C).

    A refresh the coordinator does not answer (it restarts, a replica fails over, it is busy or
    failed) is shown as such -- a status line under the last figures on a terminal, a block of
    its own in plain lines, an ``error`` object on its line with ``-o json`` -- and the next one
    is tried after ``--interval``, from the first coordinator that answers when ``reconnect`` is
    given (several configured). A refusal (the caller's fault) ends it as it ends any command.
    Exit status: 0, or 3 when the last refresh failed."""
    shown = 0
    with screen.live(enabled=args.output != "json") as area:
        view = View(screen, area, args.output == "json", source)
        while True:
            failed: FerryError | None = None
            try:
                in_flight, finished = await snapshot(stub, args, timeout)
            except grpc.RpcError as exc:
                failed = from_rpc_error(exc)
                if failed.caller_fault and failed.reason != SERVER_BUSY:
                    raise
                view.failed(failed, datetime.now(UTC))
                if reconnect is not None:
                    with contextlib.suppress(FerryError):  # none answers: the next refresh says so
                        stub, view.source = await reconnect()
            else:
                view.figures(in_flight, finished, datetime.now(UTC))
            shown += 1
            if args.iterations and shown >= args.iterations:
                return EXIT_OK if failed is None else EXIT_UNREACHABLE
            await asyncio.sleep(args.interval)
