"""`ferry` over real gRPC against a real coordinator (in-memory store, fake agents): the JSON of
every command validates against docs/cli-json.schema.json, `ferry top` shows a migration in flight,
the output option works before and after the command, Ctrl-C while waiting says the migration goes
on and exits 130. (The schema against the protobuf messages and the page: tests/unit/test_cli_json.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
from coordinator_setup import Setup

from ferry.cli import main as cli
from ferry.coordinator.phases import Phase
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
