#!/usr/bin/env python3
"""Live migrations of real TCG guests between two real libvirt hosts: raw ``virsh migrate``
against Ferry, in the same run (needs root).

    sudo .venv/bin/python bench/migration_bench.py               # 3 rounds, about 5 minutes
    sudo .venv/bin/python bench/migration_bench.py --quick       # 1 round, short busy limit

It brings up its own lab in a fresh temporary directory (never the operator's /tmp/ferry-lab):
host1 and host2 with a libvirtd and a ferry-agent each, etcd and one coordinator; it always takes
the lab down again (also on Ctrl-C or SIGTERM) and removes the directory.

Cases, each on its own guest with a host-local qcow2 disk (no NIC, so no bridge mapping is
needed by either side), interleaved round by round and alternating direction
(host1 -> host2, then back), so every case sees the same machine load and both directions:

* raw: what an operator does by hand, from inside the source host: ``qemu-img create`` of the
  target disk at the same path and size inside the target host, then ``virsh migrate --live
  --p2p --tls --copy-storage-all --persistent --undefinesource VM qemu+tls://TARGET/system``.
* agent: Ferry's agents over gRPC, as the coordinator drives them (``tests/lab/agentflow.py``):
  GetDomain + GetInventory, PrepareIncoming on the target (creates the disk, rewrites the XML),
  Migrate (progress streamed), CommitIncoming.
* cli: Ferry end to end: ``ferry --output json migrate VM --to HOST --copy-storage-all`` as a
  subprocess against the coordinator (submit, queue, preflight, prepare, migrate, finish; Python
  start-up of the CLI included).

Then a busy guest (memory dirtied at ``--dirty-rate`` MiB/s, migration bandwidth capped at
``--bandwidth`` MiB/s, so pre-copy cannot converge): raw virsh with ``--bandwidth`` (aborted with
``virsh domjobabort`` after ``--busy-limit`` seconds) against ``ferry migrate`` with
``--postcopy --postcopy-on-stall`` and with ``--auto-converge``.

Measured per migration: wall time (start of the first command until it returned with the guest
running on the target), libvirt's job time and the guest's downtime (the target's completed
job: ``virsh domjobinfo --completed`` for raw virsh, the Migrate result for Ferry). Between
migrations the disk left on the source host is removed (untimed): neither virsh nor Ferry
removes it yet.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))  # agentflow.py: a migration through the agents' API

from benchlib import (
    BREAKDOWN_STEPS,
    breakdown,
    jobinfo_ms,
    jobinfo_number,
    load_line,
    markdown_table,
    median,
    median_ms,
    msecs,
    overhead,
    parse_domjobinfo,
    phase_durations,
    secs,
    spread,
)

from ferry.cli.config import client_tls
from ferry.lab import ControlPlane, Lab
from ferry.lab.controlplane import coordinators_dir, lab_cli_config
from ferry.lab.domain import lab_emulator, parse_size
from ferry.lab.topology import IMAGE_DIR
from ferry.model import StorageMode
from ferry.rpc import Tls
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc

FERRY = Path(sys.executable).parent / "ferry"
HOSTS = ("host1", "host2")
MIGRATE_TIMEOUT_S = 300.0
RAW = "raw"


@dataclass(frozen=True)
class Sample:
    """One migration. ``wall_s`` None: it did not finish (see ``note``)."""

    case: str
    source: str
    target: str
    wall_s: float | None
    job_ms: float | None = None
    downtime_ms: float | None = None
    note: str = ""
    migrate_call_s: float | None = None  # agent case: the Migrate stream alone
    limit_s: float | None = None  # the time it was given (busy cases)
    marks: dict[str, float] = field(default_factory=dict)  # cli case: when each step ended (POSIX s)


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    busy: bool = False


CASES = (
    Case(RAW, "raw `virsh migrate --live --p2p --copy-storage-all` (target disk made by hand)"),
    Case("agent", "Ferry agent API (PrepareIncoming + Migrate + CommitIncoming)"),
    Case("cli", "Ferry end to end: `ferry migrate --copy-storage-all` via the coordinator"),
)


def busy_cases(bandwidth: int, quick: bool) -> tuple[Case, ...]:
    cases = (
        Case("busy-raw", f"busy guest: raw `virsh migrate ... --bandwidth {bandwidth}`", True),
        Case(
            "busy-postcopy",
            f"busy guest: `ferry migrate ... --bandwidth {bandwidth} --postcopy --postcopy-on-stall`",
            True,
        ),
    )
    if not quick:
        cases += (
            Case("busy-autoconverge", f"busy guest: `ferry migrate ... --bandwidth {bandwidth} --auto-converge`", True),
        )
    return cases


def other(host: str) -> str:
    return HOSTS[1] if host == HOSTS[0] else HOSTS[0]


def disk_of(vm: str) -> str:
    return f"{IMAGE_DIR}/{vm}-vda.qcow2"


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the record's own times


class RecordWatch:
    """Every version of a VM's migration records as the coordinator streams them (WatchFleet,
    filtered on the VM), read in a thread while ``ferry migrate`` runs: the record's history
    gives the phase times; the first version carrying progress tells when the source's job
    started (its ``updated_at``)."""

    def __init__(self, address: str, vm: str, tls: Tls | None) -> None:
        self.versions: list[cpb.Migration] = []
        if tls is None:
            self._channel = grpc.insecure_channel(address)
        else:  # the lab's coordinators are TLS only: the operator CLI's certificate, as ``ferry`` uses it
            creds = grpc.ssl_channel_credentials(tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes())
            self._channel = grpc.secure_channel(
                address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
            )
        stub = cgrpc.CoordinatorStub(self._channel)
        request = cpb.WatchFleetRequest(vms=[vm], objects=[cpb.FLEET_OBJECT_MIGRATION], current=True)
        self._call = stub.WatchFleet(request)
        self._live = threading.Event()
        self._thread = threading.Thread(target=self._read, name=f"watch {vm}", daemon=True)
        self._thread.start()
        self._live.wait(1.0)  # the older records of the VM (current=True) prove the watch is on

    def _read(self) -> None:
        try:
            for event in self._call:
                self.versions.append(event.migration)
                self._live.set()
        except grpc.RpcError:
            pass  # cancelled by stop()

    def stop(self) -> None:
        self._call.cancel()
        self._thread.join(5)
        self._channel.close()

    def job_started(self, migration_id: str) -> float | None:
        """When the source's job started: a stored progress's time minus the job's elapsed time
        it reports (None when no progress was stored: a job shorter than progress_write_s)."""
        for m in self.versions:
            if m.id == migration_id and m.HasField("progress") and m.phase == cpb.PHASE_MIGRATING:
                if not m.updated_at.seconds:
                    return None
                return m.updated_at.ToDatetime().replace(tzinfo=UTC).timestamp() - m.progress.elapsed_ms / 1000
        return None


def record_marks(data: dict, started: float, returned: float, job_started: float | None) -> dict[str, float]:
    """The time marks of one ``ferry migrate`` (see ``benchlib.breakdown``) from its JSON record."""
    marks = {"cli started": started, "cli returned": returned}
    if data.get("created_at"):
        marks["submitted"] = datetime.fromisoformat(data["created_at"]).timestamp()
    first = {"preflight": "admitted", "migrating": "prepared", "finishing": "job done", "succeeded": "committed"}
    for h in data.get("history", []):
        mark = first.get(h.get("phase", ""))
        if mark and mark not in marks:
            marks[mark] = datetime.fromisoformat(h["at"]).timestamp()
    result = data.get("result", {})
    if job_started is None and "job done" in marks and result.get("time_elapsed_ms"):
        # no progress stored (a short job): the completed job's own duration, counted back from its end
        job_started = marks["job done"] - int(result["time_elapsed_ms"]) / 1000
    if job_started is not None:
        marks["job started"] = job_started
    return marks


# ---------------------------------------------------------------- the three ways to migrate


class Migrator:
    def __init__(self, lab: Lab, disk_bytes: int) -> None:
        self.lab = lab
        self.disk_bytes = disk_bytes

    # -- raw virsh, the operator's way

    def _virsh_migrate_argv(self, vm: str, target: str, extra: Sequence[str]) -> list[str]:
        return self.lab.exec_argv(
            self.source_of(vm),
            [
                "virsh",
                "-c",
                "qemu:///system",
                "migrate",
                "--live",
                "--p2p",
                "--tls",  # the lab's libvirtd refuses plaintext migrations (migrate_tls_force): TLS vs TLS
                "--copy-storage-all",
                "--persistent",
                "--undefinesource",
                *extra,
                vm,
                self.lab.tcp_uri(target),
            ],
        )

    def source_of(self, vm: str) -> str:
        return next(h for h in HOSTS if self.running_on(h, vm))

    def running_on(self, host: str, vm: str) -> bool:
        listing = self.lab.virsh(host, "list", "--name", check=False).stdout.split()
        return vm in listing

    def _completed_job(self, host: str, vm: str) -> tuple[float | None, float | None]:
        info = parse_domjobinfo(self.lab.virsh(host, "domjobinfo", "--completed", vm, check=False).stdout)
        return jobinfo_ms(info, "Time elapsed"), jobinfo_ms(info, "Total downtime")

    def raw(
        self, case: str, vm: str, source: str, target: str, *, bandwidth: int = 0, limit_s: float = MIGRATE_TIMEOUT_S
    ) -> Sample:
        """qemu-img create inside the target, then virsh migrate inside the source; after
        ``limit_s`` the job is aborted (virsh domjobabort) and the sample has no wall time."""
        extra = ["--bandwidth", str(bandwidth)] if bandwidth else []
        argv = self._virsh_migrate_argv(vm, target, extra)
        started = time.monotonic()
        self.lab.host_exec(target, "qemu-img", "create", "-q", "-f", "qcow2", disk_of(vm), str(self.disk_bytes))
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            out, err = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            return self._abort(case, vm, source, target, proc, limit_s)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            self.lab.host_exec(target, "rm", "-f", disk_of(vm), check=False)
            raise RuntimeError(f"virsh migrate {vm} {source} -> {target} failed: {err.strip() or out.strip()}")
        job, downtime = self._completed_job(target, vm)
        return Sample(case, source, target, wall, job, downtime)

    def _abort(
        self, case: str, vm: str, source: str, target: str, proc: subprocess.Popen[str], limit_s: float
    ) -> Sample:
        info = parse_domjobinfo(self.lab.virsh(source, "domjobinfo", vm, check=False).stdout)
        self.lab.virsh(source, "domjobabort", vm, check=False, timeout=60)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own virsh client, by its PID; the job itself was aborted above
            proc.communicate()
        self.lab.host_exec(target, "rm", "-f", disk_of(vm), check=False)
        remaining = jobinfo_number(info, "Memory remaining")
        dirty_pages = jobinfo_number(info, "Dirty rate")
        where = "still runs on " + source if self.running_on(source, vm) else "does NOT run on " + source
        note = (
            f"aborted after {limit_s:.0f} s at iteration {info.get('Iteration', '?')}, "
            f"{f'{remaining:.0f}' if remaining is not None else '?'} MiB left"
            + (f", guest dirtying {dirty_pages * 4096 / (1 << 20):.0f} MiB/s" if dirty_pages else "")
            + f"; guest {where}"
        )
        return Sample(case, source, target, None, note=note, limit_s=limit_s)

    # -- Ferry through the agents' gRPC API

    def agent(self, case: str, vm: str, source: str, target: str) -> Sample:
        import agentflow  # tests/lab: the same flow the lab tests use

        started = time.monotonic()
        run = asyncio.run(agentflow.migrate(self.lab, vm, source, target, storage=StorageMode.COPY_ALL))
        wall = time.monotonic() - started
        job = run.result.job if run.result is not None else None
        return Sample(
            case,
            source,
            target,
            wall,
            job.time_elapsed_ms if job else None,
            job.downtime_ms if job else None,
            migrate_call_s=run.wall_s,
        )

    # -- Ferry end to end: the CLI against the coordinator

    def _cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "FERRY_COORDINATOR"}
        env["FERRY_CONFIG"] = str(lab_cli_config(self.lab.paths))
        return env

    def cli_call_s(self, repeat: int = 3) -> float:
        """The median wall time of ``ferry --output json hosts``: the CLI's Python start-up, its
        connection and one small RPC -- the part of the cli case that is not migrating."""
        walls = []
        for _ in range(repeat):
            started = time.monotonic()
            subprocess.run(
                [str(FERRY), "--output", "json", "hosts"],
                capture_output=True,
                env=self._cli_env(),
                stdin=subprocess.DEVNULL,
                timeout=60,
                check=True,
            )
            walls.append(time.monotonic() - started)
        return median(walls)

    def cli(self, case: str, vm: str, source: str, target: str, *flags: str, limit_s: float | None = None) -> Sample:
        """``ferry migrate``; with ``limit_s`` as its ``--timeout``: a migration that ends without
        success then (rolled back by Ferry) is a sample without wall time, any other failure raises."""
        env = self._cli_env()
        argv = [str(FERRY), "--output", "json", "migrate", vm, "--to", target, "--copy-storage-all", *flags]
        if limit_s is not None:
            argv += ["--timeout", str(int(limit_s))]
        watch = RecordWatch(f"unix:{coordinators_dir(self.lab.paths) / 'c1.sock'}", vm, client_tls(env=env))
        try:
            started_at = time.time()
            started = time.monotonic()
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=env,
                stdin=subprocess.DEVNULL,
                timeout=MIGRATE_TIMEOUT_S + 60,
                check=False,
            )
            wall = time.monotonic() - started
            returned_at = time.time()
        finally:
            watch.stop()
        try:
            data = json.loads(done.stdout)
        except ValueError:
            data = {}
        phase = str(data.get("phase", ""))
        if limit_s is not None and done.returncode == 1 and phase != "succeeded":
            reason = (data.get("error") or {}).get("reason", "?")
            return Sample(
                case,
                source,
                target,
                None,
                limit_s=limit_s,
                note=f"ended {phase} after {wall:.0f} s ({reason})",
            )
        if done.returncode != 0 or phase != "succeeded":
            raise RuntimeError(
                f"ferry migrate {vm} -> {target} exited {done.returncode}: {done.stdout[-1500:]} {done.stderr[-1500:]}"
            )
        result = data.get("result") or {}
        notes = ["switched to post-copy"] if result.get("postcopy") else []
        if result.get("iterations"):
            notes.append(f"{result['iterations']} iterations")
        notes += slow_steps(data.get("history", []), wall)
        return Sample(
            case,
            source,
            target,
            wall,
            float(result.get("time_elapsed_ms", 0)) or None,
            float(result.get("downtime_ms", 0)) or None,
            note=", ".join(notes),
            marks=record_marks(data, started_at, returned_at, watch.job_started(str(data.get("id", "")))),
        )

    # -- housekeeping (untimed)

    def settle(self, sample: Sample, vm: str) -> None:
        """Check where the guest runs; remove the disk the migration left on the host it left."""
        if sample.wall_s is None:
            if not self.running_on(sample.source, vm):
                raise RuntimeError(f"{vm} is not running on {sample.source} after the aborted migration")
            return
        if not self.running_on(sample.target, vm) or self.running_on(sample.source, vm):
            raise RuntimeError(f"{vm} should run on {sample.target} only after {sample.case}")
        self.lab.host_exec(sample.source, "rm", "-f", disk_of(vm), check=False)


def slow_steps(history: Sequence[dict[str, str]], wall_s: float, over_s: float = 5.0) -> list[str]:
    """What took long outside the migration job, from a record's history as ``ferry --output
    json`` prints it (docs/cli-json.md): a phase other than migrating longer than ``over_s``, and the CLI seeing the
    final phase much later than the record reached it."""
    try:
        steps = [(h["phase"], datetime.fromisoformat(h["at"]).timestamp()) for h in history]
    except (KeyError, ValueError):
        return []
    if len(steps) < 2:
        return []
    out = [
        f"{phase} took {spent:.0f} s"
        for phase, spent in phase_durations(steps).items()
        if phase != "migrating" and spent > over_s
    ]
    late = wall_s - (steps[-1][1] - steps[0][1])
    if late > over_s:
        out.append(f"the CLI returned {late:.0f} s after the record was final")
    return out


# ---------------------------------------------------------------- the run


@dataclass
class Settings:
    rounds: int
    memory_mib: int
    disk: str
    quick: bool
    dirty_rate: int
    bandwidth: int
    busy_limit_s: float
    busy_rounds: int
    converge_limit_s: float
    busy: bool = True


def boot(lab: Lab, names: Sequence[str], settings: Settings, **kw: object) -> None:
    """Start the guests on host1 at once (TCG boots take ~10 s each, more in parallel)."""
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        futures = [
            pool.submit(
                lab.guest, name, HOSTS[0], memory_mib=settings.memory_mib, disks=(settings.disk,), nic=False, **kw
            )
            for name in names
        ]
        for f in futures:
            f.result()


def remove(lab: Lab, names: Sequence[str]) -> None:
    for name in names:
        for host in HOSTS:
            lab.virsh(host, "destroy", name, check=False)
            lab.virsh(host, "undefine", name, check=False)
            lab.host_exec(host, "rm", "-f", disk_of(name), check=False)


def run_cases(lab: Lab, settings: Settings) -> tuple[list[Sample], float]:
    """The samples of every case, and the wall time of one small ``ferry`` command."""
    m = Migrator(lab, parse_size(settings.disk))
    samples: list[Sample] = []
    guests = {c.key: f"bench-{c.key}" for c in CASES}
    say(f"booting {len(guests)} guests on {HOSTS[0]} ({settings.memory_mib} MiB, disk {settings.disk})")
    boot(lab, list(guests.values()), settings)
    cli_call = m.cli_call_s()
    runs: dict[str, Callable[[str, str, str, str], Sample]] = {RAW: m.raw, "agent": m.agent, "cli": m.cli}
    for r in range(settings.rounds):
        for case in CASES:
            vm = guests[case.key]
            source = m.source_of(vm)
            target = other(source)
            sample = runs[case.key](case.key, vm, source, target)
            m.settle(sample, vm)
            samples.append(sample)
            say(
                f"round {r + 1}/{settings.rounds} {case.key:6} {source} -> {target}: "
                f"wall {secs(sample.wall_s)}, job {msecs(sample.job_ms)}, downtime {msecs(sample.downtime_ms)}"
            )
    remove(lab, list(guests.values()))
    if not settings.busy:
        return samples, cli_call

    busy = "bench-busy"
    say(f"booting {busy} (dirty rate {settings.dirty_rate} MiB/s)")
    boot(lab, [busy], settings, dirty_rate=str(settings.dirty_rate))
    bw = str(settings.bandwidth)
    for r in range(settings.busy_rounds):
        for case in busy_cases(settings.bandwidth, settings.quick):
            source = m.source_of(busy)
            target = other(source)
            say(f"busy round {r + 1}/{settings.busy_rounds} {case.key} {source} -> {target}")
            if case.key == "busy-raw":
                sample = m.raw(
                    case.key, busy, source, target, bandwidth=settings.bandwidth, limit_s=settings.busy_limit_s
                )
            elif case.key == "busy-postcopy":
                sample = m.cli(case.key, busy, source, target, "--bandwidth", bw, "--postcopy", "--postcopy-on-stall")
            else:
                sample = m.cli(
                    case.key,
                    busy,
                    source,
                    target,
                    "--bandwidth",
                    bw,
                    "--auto-converge",
                    limit_s=settings.converge_limit_s,
                )
            m.settle(sample, busy)
            samples.append(sample)
            ended = f"wall {sample.wall_s:.2f} s" if sample.wall_s else "did not finish"
            say(f"  -> {ended}; {sample.note}")
    return samples, cli_call


# ---------------------------------------------------------------- the table


def table(samples: Sequence[Sample], settings: Settings) -> str:
    cases = CASES + (busy_cases(settings.bandwidth, settings.quick) if settings.busy else ())
    by_case = {c.key: [s for s in samples if s.case == c.key] for c in cases}

    def walls(key: str) -> list[float]:
        return [s.wall_s for s in by_case.get(key, []) if s.wall_s is not None]

    raw_wall = median(walls(RAW)) if walls(RAW) else None
    busy_raw_finished = bool(walls("busy-raw"))
    busy_raw_wall = median(walls("busy-raw")) if busy_raw_finished else None
    rows = []
    for c in cases:
        got = by_case[c.key]
        if not got:
            continue
        finished = walls(c.key)
        limit = next((s.limit_s for s in got if s.limit_s is not None), None)
        wall = spread(finished) if finished else f"did not finish in {limit or 0:.0f} s"
        if c.key == RAW:
            vs = "baseline"
        elif c.busy and c.key != "busy-raw":
            vs = overhead(median(finished), busy_raw_wall) if busy_raw_finished and finished else "raw did not finish"
        elif c.key == "busy-raw":
            vs = "baseline (busy)"
        else:
            vs = overhead(median(finished), raw_wall) if finished else "-"
        notes = [s.note for s in got if s.note]
        note = notes[0] if len(notes) == 1 or c.key == "busy-raw" else "; ".join(dict.fromkeys(notes))
        calls = [s.migrate_call_s for s in got if s.migrate_call_s is not None]
        if calls:
            note = "the Migrate call alone " + spread(calls)
        rows.append(
            [
                c.label,
                f"{len(finished)}/{len(got)}",
                wall,
                median_ms([s.job_ms for s in got if s.job_ms is not None]),
                median_ms([s.downtime_ms for s in got if s.downtime_ms is not None]),
                vs,
                note,
            ]
        )
    return markdown_table(
        ["case", "runs", "wall median (min-max)", "job median", "downtime median", "overhead vs raw", "note"], rows
    )


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3, help="migrations per normal case (default 3)")
    p.add_argument("--memory", type=int, default=256, metavar="MiB", help="guest memory (default 256)")
    p.add_argument("--disk", default="256M", help="guest disk size (default 256M)")
    p.add_argument(
        "--quick", action="store_true", help="1 round, busy limit 20 s, no auto-converge case (about 2 minutes)"
    )
    p.add_argument("--dirty-rate", type=int, default=40, metavar="MiB/s", help="busy guest (default 40)")
    p.add_argument("--bandwidth", type=int, default=32, metavar="MiB/s", help="busy cases' cap (default 32)")
    p.add_argument(
        "--busy-limit",
        type=float,
        default=60.0,
        metavar="s",
        help="abort raw virsh on the busy guest after this long (default 60)",
    )
    p.add_argument(
        "--converge-limit",
        type=float,
        default=120.0,
        metavar="s",
        help="ferry migrate --timeout of the auto-converge case (default 120)",
    )
    p.add_argument("--busy-rounds", type=int, default=1, help="migrations per busy case (default 1)")
    p.add_argument("--no-busy", action="store_true", help="only the normal cases (raw, agent, cli)")
    p.add_argument(
        "--keep-logs",
        metavar="DIR",
        type=Path,
        help="copy the lab's logs (coordinator, agents, libvirtd, QEMU) here before teardown",
    )
    p.add_argument(
        "--lab-cache",
        metavar="DIR",
        help="keep libvirt's QEMU capabilities here between runs (default: inside the lab)",
    )
    return p.parse_args(argv)


def settings_of(a: argparse.Namespace) -> Settings:
    if a.quick:
        return Settings(
            1,
            a.memory,
            a.disk,
            True,
            a.dirty_rate,
            a.bandwidth,
            min(a.busy_limit, 20.0),
            1,
            a.converge_limit,
            not a.no_busy,
        )
    return Settings(
        a.rounds,
        a.memory,
        a.disk,
        False,
        a.dirty_rate,
        a.bandwidth,
        a.busy_limit,
        a.busy_rounds,
        a.converge_limit,
        not a.no_busy,
    )


def keep_logs(lab_dir: Path, into: Path) -> None:
    """Copy every ``*.log`` of the lab (same relative paths) into ``into``."""
    for log_file in lab_dir.rglob("*.log"):
        if log_file.is_file():
            dest = into / log_file.relative_to(lab_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(log_file, dest)
    say(f"lab logs copied to {into}")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def versions(lab: Lab) -> str:
    """libvirt's version and that of the QEMU the guests run on (the lab's emulator: Debian 13's
    when deploy/fetch-qemu.sh put it there, not necessarily the system's)."""
    libvirt = lab.host_exec(HOSTS[0], "libvirtd", "--version", check=False).stdout.split()
    qemu = lab.host_exec(HOSTS[0], lab_emulator(), "--version", check=False).stdout.split()
    return f"libvirt {libvirt[-1] if libvirt else '?'}, QEMU {qemu[3] if len(qemu) > 3 else '?'} (TCG)"


def breakdown_table(samples: Sequence[Sample]) -> str:
    """Where the cli case's wall time goes, step by step (medians over its rounds), beside raw
    virsh's whole wall time and the libvirt job of each."""
    cli = [s for s in samples if s.case == "cli" and s.marks]
    raw = [s.wall_s for s in samples if s.case == RAW and s.wall_s is not None]
    if not cli:
        return ""
    steps = [breakdown(s.marks) for s in cli]
    rows = []
    for label, start, end in BREAKDOWN_STEPS:
        values = [b[label] for b in steps if label in b]
        rows.append([f"{start} -> {end}", label, median_ms([v * 1000 for v in values]) if values else "-"])
    walls = [s.wall_s for s in cli if s.wall_s is not None]
    rows.append(["cli started -> cli returned", "`ferry migrate` wall", median_ms([w * 1000 for w in walls])])
    if raw:
        rows.append(["", "raw virsh wall (same run)", median_ms([w * 1000 for w in raw])])
        rows.append(["", "ferry / raw", f"{median(walls) / median(raw):.2f}x" if walls else "-"])
    return markdown_table(["from -> to", "step", f"median of {len(cli)}"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_of(args)
    if os.geteuid() != 0:
        print("migration_bench needs root (it starts a lab: namespaces, libvirtd, QEMU)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    load_at_start = os.getloadavg()
    started = time.monotonic()
    lab_dir = Path(tempfile.mkdtemp(prefix="ferry-bench-", dir="/tmp"))
    lab = Lab(lab_dir, cache_dir=args.lab_cache, cli_config=lab_dir / "operator-cli.toml")
    samples: list[Sample] = []
    cli_call = 0.0
    try:
        say(f"lab in {lab_dir}: host1, host2, etcd, one coordinator")
        lab.up(hosts=2, install=False, control_plane=ControlPlane(etcd_members=1, coordinators=1))
        described = versions(lab)
        samples, cli_call = run_cases(lab, settings)
    finally:
        if args.keep_logs is not None:
            keep_logs(lab_dir, args.keep_logs)
        say("taking the lab down")
        try:
            report = lab.down()
            say(
                f"lab down in {report.seconds:.1f} s; {len(report.stopped)} processes stopped, "
                f"left over: {', '.join(report.leftovers) or 'nothing'}"
            )
        finally:
            shutil.rmtree(lab_dir, ignore_errors=True)
    print(
        f"# migration_bench {datetime.now().astimezone().isoformat(timespec='seconds')}: "
        f"{load_line(load_at_start)} at start, {load_line(os.getloadavg())} at the end; "
        f"{described}; guest {settings.memory_mib} MiB, disk {settings.disk} (qcow2, host-local); "
        f"{settings.rounds} round(s); busy guest dirties {settings.dirty_rate} MiB/s; "
        f"whole run {time.monotonic() - started:.0f} s\n"
    )
    print(table(samples, settings))
    steps = breakdown_table(samples)
    if steps:
        print(
            "\nWhere `ferry migrate` spends its time (the record's own times; job started = a stored "
            "progress's time minus the elapsed time it reports, else the job's end minus its duration):\n"
        )
        print(steps)
    print(
        f"\n`ferry --output json hosts` (the CLI's start-up, connection and one small RPC) takes "
        f"{cli_call:.2f} s (median of 3) of the cli case's wall time."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
