"""`ferry` over real gRPC against a real coordinator (in-memory store, fake agents): the JSON of
every command validates against docs/cli-json.schema.json, `ferry top` shows a migration in flight,
the output option works before and after the command, Ctrl-C while waiting says the migration goes
on and exits 130. (The schema against the protobuf messages and the page: tests/unit/test_cli_json.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from coordinator_setup import Setup
from google.protobuf.message import Message

from ferry.cli import main as cli
from ferry.cli import render
from ferry.coordinator.phases import Phase
from ferry.errors import FerryError, NotFound, PermissionDenied, Unavailable
from ferry.rpc import Tls, to_status
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "cli-json.schema.json").read_text())
FERRY = Path(sys.executable).parent / "ferry"


def validate(name: str, document: Any) -> None:
    sub = {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{name}"}
    check = jsonschema.Draft202012Validator(sub, format_checker=jsonschema.FormatChecker())
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(document)]
    assert not errors, f"not a {name}: {errors}\n{json.dumps(document, indent=2)[:3000]}"


def schema_of(argv: tuple[str, ...], code: int) -> str:
    """Which definition a command's output must follow (docs/cli-json.md, the table)."""
    if code in (2, 3, 64):
        return "error"
    command = argv[0]
    if command == "migrations":
        return "Migration" if len(argv) > 1 and argv[1] in ("show", "watch", "cancel") else "ListMigrationsResponse"
    if command == "hosts" and len(argv) > 1 and argv[1] in ("cordon", "uncordon"):
        return "HostStatus"
    if command == "hosts" and len(argv) > 1 and argv[1] == "forget":
        return "ForgetHostResponse"
    if command == "drains":
        return (
            "Drain"
            if len(argv) > 1 and argv[1] in ("show", "watch", "pause", "resume", "cancel")
            else "ListDrainsResponse"
        )
    return {
        "drain": "Drain",
        "hosts": "ListHostsResponse",
        "vms": "ListVMsResponse",
        "preflight": "PreflightResponse",
        "migrate": "Migration",
    }[command]


async def wait_phase(s: Setup, migration_id: str, phase: int, *, progress: bool = False) -> cpb.Migration:
    for _ in range(500):
        m = await s.stub.GetMigration(cpb.GetMigrationRequest(id=migration_id))
        if m.phase == phase and (not progress or m.progress.memory_processed > 0):
            return m
        await asyncio.sleep(0.02)
    raise AssertionError(f"{migration_id} never reached {cpb.Phase.Name(phase)}: {m}")


async def top_json(capsys: pytest.CaptureFixture[str], s: Setup, *args: str) -> list[dict[str, Any]]:
    capsys.readouterr()
    code = await cli.run(["top", "--insecure", "--coordinator", s.address, "-o", "json", *args])
    assert code == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


async def test_every_commands_json_follows_the_documented_schema(leading, capsys):
    s: Setup = leading
    s.agents.add_guest("host1", "g1")
    s.agents.add_guest("host1", "slow")
    await s.ferry(capsys, "hosts")
    await s.ferry(capsys, "vms")
    await s.ferry(capsys, "vms", "--host", "host1")
    assert (await s.ferry(capsys, "preflight", "g1", "--to", "host2"))[0] == 0
    assert (await s.ferry(capsys, "preflight", "g1", "--to", "host9"))[0] == 1  # blocked
    code, done = await s.ferry(capsys, "migrate", "g1", "--to", "host2")  # waits until final
    assert code == 0 and done["phase"] == "succeeded" and done["result"]["time_elapsed_ms"] > 0
    assert done["error"] is None  # (progress: null -- a job shorter than progress_write_s stores none)

    # a slow one (1 MiB/s): in flight long enough to look at, then cancelled
    code, queued = await s.ferry(capsys, "migrate", "slow", "--to", "host3", "--bandwidth", "1", "--no-wait")
    assert code == 0 and queued["phase"] in ("pending", "preflight") and queued["progress"] is None
    await wait_phase(s, queued["id"], cpb.PHASE_MIGRATING, progress=True)
    await s.ferry(capsys, "migrations")
    await s.ferry(capsys, "migrations", "--phase", "migrating", "--limit", "1")
    code, shown = await s.ferry(capsys, "migrations", "show", queued["id"])
    assert shown["phase"] == "migrating" and shown["progress"]["phase"] in ("disk_mirror", "precopy")
    assert isinstance(shown["progress"]["memory_total"], int) and shown["progress"]["memory_total"] > 0
    [snapshot] = await top_json(capsys, s, "--iterations", "1")
    validate("top", snapshot)
    assert [m["vm"] for m in snapshot["in_flight"]] == ["slow"]
    assert [m["vm"] for m in snapshot["finished"]] == ["g1"]
    code, cancelled = await s.ferry(capsys, "migrations", "cancel", "--vm", "slow")  # selected by filter
    assert code == 0 and cancelled["id"] == queued["id"] and cancelled["cancel_requested"] is True
    code, final = await s.ferry(capsys, "migrations", "watch", queued["id"])
    assert code == 1 and final["phase"] in ("cancelled", "rolled_back"), final["history"]
    assert all(h["phase"] in SCHEMA["$defs"]["phase"]["enum"] for h in final["history"])

    # refusals, an unreachable coordinator and a usage error: the error object
    assert (await s.ferry(capsys, "migrate", "nope", "--to", "host2"))[0] == 2
    assert (await s.ferry(capsys, "migrations", "show", "m-nope"))[0] == 2
    assert (await s.ferry(capsys, "migrations", "show", queued["id"], "--vm", "g1"))[0] == 2  # not g1's
    assert (await s.ferry(capsys, "migrate", "g1", "--to", "host3", "--map-bridge", "x"))[0] == 64
    assert (await s.ferry(capsys, "--coordinator", "unix:/nonexistent/c.sock", "hosts"))[0] == 3

    # placement, cordons and drains
    assert (await s.ferry(capsys, "preflight", "g1"))[0] in (0, 1)  # ranked (no --to)
    assert (await s.ferry(capsys, "hosts", "cordon", "host3", "--reason", "test"))[0] == 0
    assert (await s.ferry(capsys, "hosts", "uncordon", "host3"))[0] == 0
    assert (await s.ferry(capsys, "drain", "host2", "--dry-run"))[0] == 0
    code, drained = await s.ferry(capsys, "drain", "host2")
    assert code == 0 and drained["state"] == "succeeded", drained
    await s.ferry(capsys, "drains")
    await s.ferry(capsys, "drains", "show", drained["id"])

    commands = {args[0] if args[0] != "migrations" else " ".join(args[:2]) for args, _, _ in s.outputs}
    assert {"hosts", "vms", "preflight", "migrate", "migrations", "migrations show", "migrations cancel"} <= commands
    for args, code, data in s.outputs:
        validate(schema_of(args, code), data)


async def test_top_shows_the_migration_in_flight_with_its_figures(leading, capsys):
    s: Setup = leading
    s.agents.add_guest("host1", "busy", dirty=20 << 20)
    m = await s.submit("busy", "host2", options=tpb.MigrationOptions(bandwidth_mibps=1))
    await wait_phase(s, m.id, cpb.PHASE_MIGRATING, progress=True)
    try:
        # not a terminal (capsys): one block of plain lines per refresh, never cut at a width
        capsys.readouterr()
        top = ["top", "--insecure", "--coordinator", s.address]
        assert await cli.run([*top, "--iterations", "2", "--interval", "0.05"]) == 0
        out = capsys.readouterr().out
        blocks = [b for b in out.split("--- ") if b.strip()]
        assert len(blocks) == 2 and "\x1b[" not in out
        header, row = blocks[-1].splitlines()[1:3]
        assert header.split()[:6] == ["ID", "VM", "FROM", "TO", "PHASE", "DONE"]
        assert row.split()[:5] == [m.id, "busy", "host1", "host2", "migrating"]
        assert "MiB/s" in row  # the rate (and the dirty rate) in bytes per second
        # filtered away: nothing in flight
        capsys.readouterr()
        assert await cli.run([*top, "--iterations", "1", "--vm", "other"]) == 0
        assert "nothing in flight" in capsys.readouterr().out
    finally:
        await s.stub.CancelMigration(cpb.CancelMigrationRequest(id=m.id))
        await wait_phase(s, m.id, cpb.PHASE_CANCELLED)


async def _ferry(env_address: str, *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(FERRY),
        "--insecure",  # the test coordinator serves without TLS
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FERRY_COORDINATOR": env_address, "FERRY_CONFIG": "/nonexistent"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_output_option_before_or_after_the_command_in_the_installed_command(fx):
    fx.agents.add_guest("host1", "g1")
    outputs = []
    for argv in (("vms", "-o", "json"), ("vms", "--output", "json"), ("-o", "json", "vms")):
        code, out, err = await _ferry(fx.address, *argv)
        assert code == 0, err
        outputs.append(json.loads(out))
    assert outputs[0] == outputs[1] == outputs[2]
    vm = {v["domain"]["name"]: v for v in outputs[0]["vms"]}["g1"]
    assert vm["domain"]["memory_bytes"] == 256 << 20 and vm["migration_id"] == ""  # a number; present though empty
    code, _, err = await _ferry(fx.address, "vms", "--no-such-flag")
    assert code == 64 and "unrecognized arguments: --no-such-flag" in err


# a terminal's Ctrl-C: SIGINT as it is in a foreground shell, whatever this run inherited (a command
# started with `&` by a script ignores SIGINT, and so would ferry started from it). Set in a small
# Python that then execs ferry, not in a preexec_fn: that runs between fork and exec in a copy of
# this process, whose gRPC threads it does not have (a CI run saw ferry end at once, printing nothing)
_WITH_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


async def test_ctrl_c_while_waiting_says_the_migration_goes_on(fx):
    """No engine runs here: the migration stays pending, `ferry migrate` waits until Ctrl-C."""
    fx.agents.add_guest("host1", "g1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WITH_SIGINT,
        str(FERRY),
        "--insecure",
        "migrate",
        "g1",
        "--to",
        "host2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # faulthandler: should it not end, SIGABRT makes it print where each thread is
        env={**os.environ, "FERRY_COORDINATOR": fx.address, "FERRY_CONFIG": "/nonexistent", "PYTHONFAULTHANDLER": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    if not first.startswith("migration m-"):
        await asyncio.wait_for(proc.wait(), 30)
        said = (await proc.stderr.read()).decode()
        raise AssertionError(
            f"ferry printed {first!r} first, exit status {proc.returncode}; its stderr:\n{said[-6000:]}"
        )
    migration_id = first.split()[1].rstrip(":")
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip().startswith("pending")
    proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.send_signal(signal.SIGABRT)  # our own child
        await asyncio.wait_for(proc.wait(), 30)
        stuck = (await proc.stderr.read()).decode()
        raise AssertionError(f"ferry did not end within 30 s of Ctrl-C; its stderr:\n{stuck[-6000:]}") from None
    err = (await proc.stderr.read()).decode()
    assert proc.returncode == 130, err
    assert f"migration {migration_id} continues; `ferry migrations cancel {migration_id}` stops it" in err
    assert "Traceback" not in err
    m = await fx.stub.GetMigration(cpb.GetMigrationRequest(id=migration_id))
    assert m.phase == cpb.PHASE_PENDING and not m.cancel_requested  # it goes on, untouched


async def test_the_newest_matching_migration_is_picked_without_an_id(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    fx.agents.add_guest("host1", "g2")
    first = await fx.submit("g1", "host2")
    other = await fx.submit("g2", "host3")
    code, shown = await fx.ferry(capsys, "migrations", "show", "--vm", "g1")
    assert code == 0 and shown["id"] == first.id
    code, shown = await fx.ferry(capsys, "migrations", "show", "--host", "host3")
    assert code == 0 and shown["id"] == other.id
    code, shown = await fx.ferry(capsys, "migrations", "show", first.id, "--vm", "g1")  # ID and a filter that agree
    assert code == 0 and shown["id"] == first.id
    code, err = await fx.ferry(capsys, "migrations", "show", "--vm", "nope")
    assert code == 2 and err["error"]["reason"] == "MIGRATION_UNKNOWN"
    await fx.advance(first.id, Phase.FAILED)
    code, err = await fx.ferry(capsys, "migrations", "cancel", "--vm", "g1")  # only unfinished ones are cancelled
    assert code == 2 and err["error"]["reason"] == "MIGRATION_UNKNOWN"


class _BusyCoordinator(cgrpc.CoordinatorServicer):
    """A coordinator stand-in whose gRPC server turns the first ``busy`` calls away, as gRPC does
    with a call beyond ``max_concurrent_rpcs`` (no Ferry error in the status)."""

    def __init__(self, busy: int) -> None:
        self.busy, self.calls = busy, 0

    async def ListHosts(self, request, context):
        self.calls += 1
        if self.calls <= self.busy:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
        return cpb.ListHostsResponse()


@pytest.mark.parametrize(("busy", "code"), [(2, 0), (99, 3)])
async def test_a_busy_coordinator_is_asked_again_after_a_pause(busy, code, capsys, monkeypatch):
    monkeypatch.setattr(cli, "BUSY_BACKOFF_S", (0.01, 0.02, 0.04, 0.08))
    standin = _BusyCoordinator(busy)
    server = grpc.aio.server()
    cgrpc.add_CoordinatorServicer_to_server(standin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        got = await cli.run(["hosts", "--insecure", "--coordinator", f"127.0.0.1:{port}", "-o", "json"])
    finally:
        await server.stop(None)
    out = json.loads(capsys.readouterr().out)
    assert got == code
    if code == 0:
        assert standin.calls == 3 and out == {"hosts": [], "next_page_token": ""}
    else:  # given up after four pauses; the error says what to do
        assert standin.calls == 5
        assert out["error"]["reason"] == "SERVER_BUSY" and "retry in a few seconds" in out["error"]["hint"]


# ---------------------------------------------------------------- a coordinator that restarts, a watch that breaks

# a step of a stand-in's stream: a record to send, or how the stream breaks -- a status without a Ferry error
# (a coordinator gone: UNAVAILABLE "Socket closed"), a Ferry error (its store watch ended: WATCH_FAILED), or
# None: the stream ends before the record is final
Step = cpb.Migration | cpb.Drain | grpc.StatusCode | FerryError | None

WATCH_FAILED = Unavailable("the migration watch ended", reason="WATCH_FAILED", hint="watch again")


class _StandIn(cgrpc.CoordinatorServicer):
    """A coordinator stand-in over real gRPC, for what `ferry` does when a call or a watch of it
    breaks. GetMigration/GetDrain answer ``migration``/``drain`` (``lost``: UNAVAILABLE, as a
    coordinator gone); each WatchMigration/WatchDrain streams the next of ``watches`` (then the
    record alone); ListMigrations (`ferry top`) fails its calls numbered in ``failing``."""

    def __init__(self, *watches: list[Step], phase: int = cpb.PHASE_SUCCEEDED) -> None:
        self.migration = cpb.Migration(id="m-1", vm="g1", source_host="h1", target_host="h2", phase=phase)
        self.drain = cpb.Drain(id="d-1", host="h1", state=cpb.DRAIN_STATE_SUCCEEDED, vms_total=1, vms_moved=1)
        self.watches = list(watches)
        self.lost = False
        self.failing: dict[int, grpc.StatusCode | FerryError] = {}
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> int:
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.calls[name]

    @staticmethod
    async def _fail(context: grpc.aio.ServicerContext, how: grpc.StatusCode | FerryError) -> None:
        if isinstance(how, FerryError):
            await context.abort_with_status(to_status(how))
        await context.abort(how, "Socket closed")

    async def _get(self, name: str, record: Message, context: grpc.aio.ServicerContext) -> Any:
        self._count(name)
        if self.lost:
            await self._fail(context, grpc.StatusCode.UNAVAILABLE)
        return record

    async def _watch(self, name: str, record: Message, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self._count(name)
        for step in self.watches.pop(0) if self.watches else [record]:
            if step is None:
                return
            if isinstance(step, grpc.StatusCode | FerryError):
                await self._fail(context, step)
            yield step
            await asyncio.sleep(0.01)

    async def GetMigration(self, request, context):  # noqa: N802 - gRPC's names
        return await self._get("GetMigration", self.migration, context)

    async def GetDrain(self, request, context):  # noqa: N802
        return await self._get("GetDrain", self.drain, context)

    async def WatchMigration(self, request, context):  # noqa: N802
        async for m in self._watch("WatchMigration", self.migration, context):
            yield m

    async def WatchDrain(self, request, context):  # noqa: N802
        async for d in self._watch("WatchDrain", self.drain, context):
            yield d

    async def SubmitMigration(self, request, context):  # noqa: N802
        return cpb.Migration(id="m-1", vm=request.vm, phase=cpb.PHASE_PENDING, source_host="h1", target_host="h2")

    async def SubmitDrain(self, request, context):  # noqa: N802
        return cpb.Drain(id="d-1", host=request.host, state=cpb.DRAIN_STATE_RUNNING, vms_total=1)

    async def ListMigrations(self, request, context):  # noqa: N802
        if (how := self.failing.get(self._count("ListMigrations"))) is not None:
            await self._fail(context, how)
        in_flight = cpb.PHASE_MIGRATING in request.phases
        return cpb.ListMigrationsResponse(migrations=[self.migration] if in_flight else [])


@contextlib.asynccontextmanager
async def serving_standin(standin: _StandIn) -> AsyncIterator[str]:
    server = grpc.aio.server()
    cgrpc.add_CoordinatorServicer_to_server(standin, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


MIGRATING = cpb.Migration(
    id="m-1",
    vm="g1",
    phase=cpb.PHASE_MIGRATING,
    progress=tpb.MigrationProgress(memory_total=100, memory_processed=100, memory_remaining=0),
)


@pytest.fixture
def quick_watch_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "WATCH_AGAIN_S", (0.0, 0.01, 0.01))


@pytest.mark.parametrize("command", [("migrate", "g1", "--to", "h2"), ("migrations", "watch", "m-1")])
@pytest.mark.parametrize("broken", [grpc.StatusCode.UNAVAILABLE, WATCH_FAILED, None], ids=["lost", "failed", "ended"])
@pytest.mark.parametrize(("phase", "code"), [(cpb.PHASE_SUCCEEDED, 0), (cpb.PHASE_ROLLED_BACK, 1)], ids=["ok", "not"])
async def test_a_watch_broken_as_the_migration_ends_reads_the_record_again_and_exits_by_it(
    capsys, quick_watch_again, command, broken, phase, code
):
    """The coordinator restarted (or its store watch ended) right as the migration ended: `ferry
    migrate` exited 3, "UNREACHABLE: ... is the coordinator running?", the coordinator answering."""
    standin = _StandIn([MIGRATING, broken], phase=phase)
    async with serving_standin(standin) as address:
        got = await cli.run(["--insecure", "--coordinator", address, *command])
    out, err = capsys.readouterr()
    assert got == code, (out, err)
    why = "UNREACHABLE: Socket closed" if broken == grpc.StatusCode.UNAVAILABLE else ""
    if broken is WATCH_FAILED:
        why = "WATCH_FAILED: the migration watch ended"
    elif broken is None:
        why = "WATCH_ENDED: the watch of migration m-1 ended before it did"
    assert f"  the watch of migration m-1 broke ({why}); reading it again\n" in out
    assert f"Phase:     {render.phase_name(phase)}" in out and err == ""
    assert standin.calls["WatchMigration"] == 1  # the record read again is final: no watch again


async def test_a_watch_broken_midway_is_watched_again_until_the_record_is_final(capsys, quick_watch_again):
    done = cpb.Migration(id="m-1", vm="g1", phase=cpb.PHASE_SUCCEEDED, result=tpb.CompletedJob(time_elapsed_ms=900))
    standin = _StandIn([MIGRATING, grpc.StatusCode.UNAVAILABLE], [MIGRATING, WATCH_FAILED], [MIGRATING, done])
    standin.migration = MIGRATING  # not final when read again
    async with serving_standin(standin) as address:
        got = await cli.run(["--insecure", "--coordinator", address, "-o", "json", "migrations", "watch", "m-1"])
    final = json.loads(capsys.readouterr().out)
    assert got == 0 and final["phase"] == "succeeded" and final["result"]["time_elapsed_ms"] == 900
    validate("Migration", final)
    assert standin.calls == {"GetMigration": 3, "WatchMigration": 3}  # the selection, then once per break


async def test_no_coordinator_after_the_watch_broke_exits_3_saying_the_migration_goes_on(capsys, quick_watch_again):
    standin = _StandIn([MIGRATING, grpc.StatusCode.UNAVAILABLE])
    standin.lost = True  # the coordinator went away with the watch
    async with serving_standin(standin) as address:
        got = await cli.run(["--insecure", "--coordinator", address, "migrate", "g1", "--to", "h2"])
    err = capsys.readouterr().err
    assert got == 3 and standin.calls["GetMigration"] == 3  # once per pause, then given up
    assert "ferry: UNREACHABLE: lost the watch of migration m-1 (UNREACHABLE: Socket closed); it goes on in the" in err
    assert "fix: `ferry migrations watch m-1` follows it again once a coordinator answers; is the" in err


async def test_a_watch_refused_is_not_watched_again(capsys, quick_watch_again):
    standin = _StandIn([MIGRATING, NotFound("migration m-1 was deleted", reason="MIGRATION_DELETED")])
    async with serving_standin(standin) as address:
        got = await cli.run(["--insecure", "--coordinator", address, "-o", "json", "migrate", "g1", "--to", "h2"])
    out = json.loads(capsys.readouterr().out)
    assert got == 2 and out["error"]["reason"] == "MIGRATION_DELETED" and "GetMigration" not in standin.calls


async def test_a_watch_lost_with_its_coordinator_goes_on_from_another(capsys, monkeypatch, quick_watch_again):
    lost, other = _StandIn([MIGRATING, grpc.StatusCode.UNAVAILABLE]), _StandIn()
    lost.lost = True
    async with serving_standin(lost) as first, serving_standin(other) as second:
        picks: list[str] = []

        async def pick(addresses: Sequence[str], timeout_s: float = 2.0, tls: Tls | None = None) -> str:
            picks.append(first if not picks else second)  # the first answers at the start only
            return picks[-1]

        monkeypatch.setattr(cli, "pick_coordinator", pick)
        got = await cli.run(["--insecure", "--coordinator", f"{first},{second}", "migrate", "g1", "--to", "h2"])
    out, err = capsys.readouterr()
    assert got == 0 and "Phase:     succeeded" in out, (out, err)
    assert f"  following migration m-1 from the coordinator at {second}\n" in out
    assert other.calls == {"GetMigration": 1}  # read there, final: nothing to watch


@pytest.mark.parametrize("command", [("drain", "h1"), ("drains", "watch", "d-1")])
async def test_a_drains_watch_broken_reads_the_drain_again_too(capsys, quick_watch_again, command):
    running = cpb.Drain(id="d-1", host="h1", state=cpb.DRAIN_STATE_RUNNING, vms_total=1)
    standin = _StandIn([running, grpc.StatusCode.UNAVAILABLE])
    async with serving_standin(standin) as address:
        got = await cli.run(["--insecure", "--coordinator", address, "-o", "json", *command])
    final = json.loads(capsys.readouterr().out)
    assert got == 0 and final["state"] == "succeeded" and standin.calls == {"WatchDrain": 1, "GetDrain": 1}


TOP = ("top", "--insecure", "--interval", "0.01", "--finished", "0")


@pytest.mark.parametrize(("failing", "code"), [({2}, 0), ({3}, 3)])
async def test_top_goes_on_after_a_failed_refresh_each_line_one_json_object(capsys, failing, code):
    """A refresh lost to a coordinator restarting ended `ferry top` (exit 3), its error object
    printed over several lines in what is documented as JSON Lines."""
    standin = _StandIn(phase=cpb.PHASE_MIGRATING)
    standin.failing = dict.fromkeys(failing, grpc.StatusCode.UNAVAILABLE)
    async with serving_standin(standin) as address:
        got = await cli.run([*TOP, "--coordinator", address, "-o", "json", "--iterations", "3"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert got == code and len(lines) == 3  # exit 3 only when the last refresh failed
    for n, line in enumerate(lines, 1):
        validate("error" if n in failing else "top", line)
    [failed] = [lines[n - 1] for n in failing]
    assert failed["error"]["reason"] == "UNREACHABLE" and failed["error"]["code"] == "UNAVAILABLE"


async def test_top_in_plain_lines_says_a_refresh_failed_and_goes_on(capsys):
    standin = _StandIn(phase=cpb.PHASE_MIGRATING)
    standin.failing = {1: grpc.StatusCode.UNAVAILABLE}
    async with serving_standin(standin) as address:
        got = await cli.run([*TOP, "--coordinator", address, "--iterations", "2"])
    blocks = [b for b in capsys.readouterr().out.split("--- ") if b.strip()]
    assert got == 0 and len(blocks) == 2
    assert blocks[0].splitlines()[0].endswith("  refresh failed: UNREACHABLE: Socket closed (trying again)")
    assert blocks[1].splitlines()[0].endswith("1 migrating")


async def test_top_refused_ends_with_one_line_of_json(capsys):
    standin = _StandIn(phase=cpb.PHASE_MIGRATING)
    standin.failing = {2: PermissionDenied("not for this identity", reason="NOT_ALLOWED")}
    async with serving_standin(standin) as address:
        got = await cli.run([*TOP, "--coordinator", address, "-o", "json"])  # until Ctrl-C, but refused
    lines = capsys.readouterr().out.splitlines()
    assert got == 2 and len(lines) == 2 and json.loads(lines[1])["error"]["reason"] == "NOT_ALLOWED"


async def test_top_goes_on_from_another_coordinator_when_its_own_is_lost(capsys, monkeypatch):
    lost, other = _StandIn(), _StandIn(phase=cpb.PHASE_MIGRATING)
    lost.failing = dict.fromkeys(range(1, 10), grpc.StatusCode.UNAVAILABLE)
    async with serving_standin(lost) as first, serving_standin(other) as second:

        async def pick(addresses: Sequence[str], timeout_s: float = 2.0, tls: Tls | None = None) -> str:
            return second if lost.calls else first

        monkeypatch.setattr(cli, "pick_coordinator", pick)
        got = await cli.run([*TOP, "--coordinator", f"{first},{second}", "-o", "json", "--iterations", "3"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert got == 0 and [sorted(line) for line in lines] == [["error"]] + [["at", "finished", "in_flight"]] * 2
    assert lost.calls == {"ListMigrations": 1} and other.calls == {"ListMigrations": 2}
