"""The fleet lab tests' hands and eyes: the ``ferry`` CLI run exactly as an operator runs it, and
what an operator then looks at on the hosts (virsh, the image directory, the agent's prepares,
the guest's console and disk).

    run = ferry(lab, "migrate", "g1", "--to", "host2")     # <venv>/bin/ferry --output json ...
    run.code, run.data["phase"], run.error.get("reason")
    placement(lab, "g1")                                    # {"host2": "running"}

The CLI gets ``FERRY_CONFIG=<lab>/cli.toml`` (the config ``ferry-lab up`` writes for the lab: every
coordinator replica) and nothing else of the test process's view of the lab. Import it from a
test in tests/lab as ``from fleetcli import ...``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.lab import Lab
from ferry.lab.controlplane import lab_cli_config
from ferry.lab.topology import IMAGE_DIR
from ferry.rpc import create_channel
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc

FERRY = Path(sys.executable).parent / "ferry"  # the venv's console script, beside its python
HOSTS = ("host1", "host2")

# Phases as `ferry --output json` spells them, in a record and in its history (docs/cli-json.md)
SUCCEEDED, FAILED, CANCELLED, ROLLED_BACK = ("succeeded", "failed", "cancelled", "rolled_back")
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, ROLLED_BACK})
MIGRATING, PREPARING = "migrating", "preparing"
HOLDS_SLOT = frozenset({"preflight", PREPARING, MIGRATING, "finishing", "rolling_back"})


# ---------------------------------------------------------------- the CLI


@dataclass(frozen=True)
class CliRun:
    """One ``ferry`` invocation: exit code, output, and stdout parsed as JSON (None if not)."""

    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str
    data: Any
    seconds: float

    @property
    def error(self) -> dict[str, str]:
        """The ``{"reason", "message", "hint", "code"}`` a refused command prints ({} if none)."""
        if isinstance(self.data, dict) and isinstance(self.data.get("error"), dict):
            return self.data["error"]
        return {}

    def __str__(self) -> str:
        """For assertion messages: the command, its exit code and what it printed."""
        return (
            f"`{' '.join(self.argv)}` exited {self.code} after {self.seconds:.1f} s\n"
            f"stdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}"
        )


def ferry(lab: Lab, *args: str, timeout: float = 180.0) -> CliRun:
    """``<venv>/bin/ferry --output json ARGS`` with ``FERRY_CONFIG=<lab>/cli.toml``."""
    env = {k: v for k, v in os.environ.items() if k != "FERRY_COORDINATOR"}
    env["FERRY_CONFIG"] = str(lab_cli_config(lab.paths))
    argv = (str(FERRY), "--output", "json", *args)
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    try:
        data = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        data = None
    return CliRun(argv, proc.returncode, proc.stdout, proc.stderr, data, time.monotonic() - started)


def ok(run: CliRun) -> Any:
    """The JSON of a command that must succeed (exit 0)."""
    assert run.code == 0 and run.data is not None, str(run)
    return run.data


def submit(lab: Lab, vm: str, *flags: str, to: str = "host2") -> str:
    """``ferry migrate VM --to HOST --no-wait FLAGS``: the new migration's id."""
    return str(ok(ferry(lab, "migrate", vm, "--to", to, "--no-wait", *flags))["id"])


def show(lab: Lab, migration_id: str) -> dict[str, Any]:
    return dict(ok(ferry(lab, "migrations", "show", migration_id)))


def wait_for(
    lab: Lab, migration_id: str, phases: Iterable[str], timeout: float, interval: float = 0.3
) -> dict[str, Any]:
    """Poll ``ferry migrations show`` until the phase is one of ``phases`` (or final)."""
    wanted = set(phases)
    deadline = time.monotonic() + timeout
    while True:
        record = show(lab, migration_id)
        if record["phase"] in wanted or record["phase"] in FINAL:
            return record
        assert time.monotonic() < deadline, (
            f"{migration_id} still {record['phase']} after {timeout:.0f} s: {history(record)}"
        )
        time.sleep(interval)


def wait_final(lab: Lab, migration_id: str, timeout: float) -> dict[str, Any]:
    return wait_for(lab, migration_id, FINAL, timeout)


def history(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(phase, reason) of each history entry, for assertion messages and checks."""
    return [(h["phase"], h["reason"]) for h in record["history"]]


def ms(record: dict[str, Any], field: str) -> int:
    """A figure of the completed job (numbers in the JSON; 0 when the job did not complete)."""
    result = record["result"]
    return int(result[field]) if result is not None else 0


# ---------------------------------------------------------------- what the hosts say


def placement(lab: Lab, name: str) -> dict[str, str]:
    """host -> ``virsh domstate`` of the guest, for each host where it is defined or runs."""
    out = {}
    for host in lab.hosts():
        listed = lab.virsh(host, "list", "--all", "--name", check=False).stdout.split()
        if name in listed:
            out[host] = lab.virsh(host, "domstate", name, check=False).stdout.strip()
    return out


def running_on(lab: Lab, name: str) -> list[str]:
    return [h for h, state in placement(lab, name).items() if state == "running"]


def beats(lab: Lab, name: str, *, timeout: float = 20.0) -> tuple[int, int]:
    """The heartbeat now and a later, higher one: the guest is alive (wherever it runs), and
    still in the boot it had before: a guest that crashed and rebooted also beats."""
    first = lab.heartbeats(name)
    later = lab.wait_for_heartbeat(name, above=first, timeout=timeout)
    assert_same_boot(lab, name)
    return first, later


def assert_same_boot(lab: Lab, name: str) -> None:
    """Exactly one boot marker on the guest's console: it never rebooted (a kernel panic reboots it)."""
    console = lab.console(name)
    boots = console.count("GUEST-BOOTED")
    panic = next((line for line in console.splitlines() if "Kernel panic" in line), "")
    assert boots == 1, f"{name} booted {boots} times" + (f"; {panic.strip()}" if panic else "")


def images(lab: Lab, host: str, name: str) -> list[str]:
    """The guest's image files in the host-local image directory (``<name>-vdX.qcow2``)."""
    listing = lab.host_exec(host, "ls", "-1", IMAGE_DIR).stdout.split()
    return sorted(f for f in listing if re.fullmatch(re.escape(name) + r"-vd[a-z]+\.qcow2", f))


def prepares(lab: Lab, host: str) -> list[apb.Prepare]:
    """The host agent's ListPrepares (over its unix socket, as an operator's grpcurl would)."""

    async def ask() -> list[apb.Prepare]:
        async with create_channel(lab.agent_address(host), tls=lab.client_tls()) as channel:
            resp = await agrpc.AgentStub(channel).ListPrepares(apb.ListPreparesRequest(), timeout=30)
            return list(resp.prepares)

    return asyncio.run(ask())


def prepares_of(lab: Lab, host: str, name: str, migration_id: str = "") -> list[str]:
    """Prepare ids on ``host`` for this guest or this migration."""
    return [
        p.prepare_id
        for p in prepares(lab, host)
        if p.domain_name == name or (migration_id and p.migration_id == migration_id)
    ]


def outgoing_jobs(lab: Lab, host: str, names: Iterable[str]) -> list[str]:
    """Which of the guests have an active outgoing migration job on ``host`` (virsh domjobinfo)."""
    busy = []
    for name in names:
        info = lab.virsh(host, "domjobinfo", name, check=False)
        fields = dict(line.split(":", 1) for line in info.stdout.splitlines() if ":" in line)
        if (
            fields.get("Operation", "").strip() == "Outgoing migration"
            and fields.get("Job type", "None").strip() != "None"
        ):
            busy.append(name)
    return busy


def disk_bytes(lab: Lab, host: str, image: str, offset: int, length: int) -> bytes:
    """Bytes of a guest's disk as the image file holds them, read inside ``host`` with
    ``qemu-io -r -U`` (read-only, no lock: the guest may be running)."""
    out = lab.host_exec(host, "qemu-io", "-r", "-U", "-f", "qcow2", "-c", f"read -v {offset} {length}", image).stdout
    data = bytearray()
    for line in out.splitlines():
        head, sep, rest = line.partition(":  ")
        if sep and re.fullmatch(r"[0-9a-f]{8}", head):
            data += bytes(int(b, 16) for b in rest[: 16 * 3].split())
    assert len(data) == length, f"qemu-io read {len(data)} of {length} bytes:\n{out[-2000:]}"
    return bytes(data)


def disk_marker(lab: Lab, host: str, image: str) -> int:
    """The heartbeat count in the guest's marker in sector 0 (``marker heartbeat=N``); 0 if none."""
    text = disk_bytes(lab, host, image, 0, 512).split(b"\0", 1)[0].decode(errors="replace")
    found = re.match(r"marker heartbeat=(\d+)", text)
    return int(found.group(1)) if found else 0


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(interval)


# ---------------------------------------------------------------- cleaning up


def remove_guests(lab: Lab, names: Iterable[str]) -> None:
    """Whatever a test left of its guests, wherever it is: active migrations cancelled (so no
    slot stays taken), domains destroyed and undefined, images and console logs removed."""
    names = list(names)
    for name in names:
        listed = ferry(lab, "migrations", "--vm", name)
        for m in (listed.data or {}).get("migrations", []) if listed.code == 0 else ():
            if m["phase"] not in FINAL:
                ferry(lab, "migrations", "cancel", m["id"])
                try:
                    wait_final(lab, m["id"], timeout=60)
                except AssertionError as exc:
                    print(f"cleanup: {exc}")
    for name in names:
        for host in HOSTS:
            lab.virsh(host, "destroy", name, check=False)
            lab.virsh(host, "undefine", name, check=False)
            for image in images(lab, host, name):
                lab.host_exec(host, "rm", "-f", f"{IMAGE_DIR}/{image}", check=False)
        lab.paths.console_log(name).unlink(missing_ok=True)
