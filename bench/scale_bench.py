#!/usr/bin/env python3
"""The control plane at fleet scale: 1,000 simulated hosts, a real etcd, the real coordinator
process, thousands of migrations and drains of a tenth of the fleet (no root needed).

    .venv/bin/python bench/scale_bench.py                                  # 1000 hosts, 10,000 migrations
    .venv/bin/python bench/scale_bench.py --hosts 100 --processes 2 --migrations 1000   # a small run
    .venv/bin/python bench/scale_bench.py --levels 100,200,400,800         # the rate against the load first

What runs, each in its own process(es), all on this machine:

* etcd (``ferry.lab.etcd``: one member on loopback ports, ``--unsafe-no-fsync`` on 3.5, stopped by
  its PID);
* ``--processes`` agent processes (``bench/sim_agents.py``), ``--hosts`` agents in all: real
  ``AgentServicer`` gRPC servers over FakeHypervisor, each registered in etcd under its own lease
  as ferry-agent does. The hosts of one process form a cell whose guest bridge no other cell has,
  so placement keeps each VM in its cell (the fakes move domains in memory, within a process);
* one coordinator (``bench/sim_coordinator.py``: ferry-coordinator as ``serve()`` builds it, with
  its store calls counted; its own config in the work dir): it wins the election and runs the
  engine, the drains and the API;
* this process: it submits through the coordinator's gRPC API, as a scheduler would, and follows
  the records with a watch on etcd (so following costs the coordinator nothing).

The run: ``--drain-fraction`` of the hosts (evenly spread) are drained (SubmitDrain, each at its
host's outbound limit), and at the same time ``SubmitMigration`` without a target keeps
``--in-flight`` migrations of the other VMs under way until ``--migrations`` migrations in all
(drains included) have been submitted; then it waits until everything is final.

Printed: phase transitions per second (the records' histories), etcd writes and round trips per
migration (the coordinator's store calls, counted in its process: create, update, delete; plus
get and list), p50/p95
from submit to done, the coordinator's CPU (of one core), each drain's makespan against its lower
bound (the sum of its VMs' estimated migration times / its slots) and whether the limits held (the
records' slot intervals, and the fakes' job counts sampled every 50 ms). ``--levels`` first runs
the same load without drains at each in-flight level and prints the rate and the coordinator's CPU
at each: where the rate stops growing and what is busy then.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import grpc
from benchlib import (
    holding_spans,
    load_line,
    markdown_table,
    peak_overlap,
    peak_overlap_by,
    percentile,
    phase_durations,
    rate,
    secs,
    spread_hosts,
)

from ferry.coordinator.drain import DrainRecord
from ferry.coordinator.drain import decode as decode_drain
from ferry.coordinator.drain import encode as encode_drain
from ferry.coordinator.drainplan import migration_id as drain_migration_id
from ferry.coordinator.drainplan import slots as drain_slots
from ferry.coordinator.phases import Phase
from ferry.coordinator.record import MigrationRecord, decode, encode
from ferry.etcd_store import EtcdStore
from ferry.keys import DRAINS, MIGRATIONS
from ferry.lab.etcd import EtcdCluster, etcd_version, require_etcd_binary, supports_no_fsync
from ferry.rpc import SERVER_BUSY, create_channel, from_rpc_error
from ferry.store import EventKind, Resync
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb

REPO = Path(__file__).resolve().parent
PREFIX = "/ferry-sim/"
MiB = 1 << 20
# what `ferry migrate VM` sends: live, storage from the inventory (local disks copied), the definition
# moves with the VM (persistent on the target, undefined on the source): the API's zero values
OPTIONS = tpb.MigrationOptions()
STEP_BYTES = 1024 * MiB // 10  # a fake job moves 1 GiB per simulated second, in steps of 100 ms

log = logging.getLogger("scale_bench")


# ---------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def coordinator_toml(port: int, endpoints: Sequence[str], args: argparse.Namespace) -> str:
    out, inbound, cluster = args.limits
    ahead = args.prepare_ahead
    job_s = job_seconds(args)
    return f"""# written by bench/scale_bench.py
[coordinator]
id = "sim"
listen = ["127.0.0.1:{port}"]
election_ttl_s = 10

[tls]
insecure = true  # loopback only; the sim agents serve without TLS too

[etcd]
endpoints = [{", ".join(f'"{e}"' for e in endpoints)}]
prefix = "{PREFIX}"
timeout_s = 10
insecure = true

[limits]
per_host_outbound = {out}
per_host_inbound = {inbound}
cluster = {cluster}
prepare_ahead = {ahead}

[agents]
call_timeout_s = 30
inventory_ttl_s = {args.inventory_ttl}
inventory_timeout_s = 10

[drains]
# the fakes' real speed: a {args.memory_mib + args.disk_mib} MiB guest takes {job_s:g} s
bandwidth_mibps = {(args.memory_mib + args.disk_mib) / job_s:.3f}
overhead_s = 0

[engine]
progress_write_s = {args.progress_write_s:g}
"""


def job_seconds(args: argparse.Namespace) -> float:
    """A fake migration's real duration: memory and disk move in steps of 102.4 MiB."""
    steps = -(-args.memory_mib * MiB // STEP_BYTES) + -(-args.disk_mib * MiB // STEP_BYTES)
    return steps * args.step_s


@dataclass
class Sim:
    workdir: Path
    etcd: EtcdCluster
    agents: list[subprocess.Popen[str]] = field(default_factory=list)
    coordinator: subprocess.Popen[bytes] | None = None
    address: str = ""
    hosts: list[str] = field(default_factory=list)
    state: Path | None = None  # the agents' state directories (see ``agent_state_root``)

    @property
    def stats(self) -> Path:
        return self.workdir / "coordinator-stats.json"


def agent_state_root() -> Path | None:
    """Where the simulated agents keep their state files (prepare and source records, each written
    with fsync): tmpfs when the machine has one. A fleet's agents each fsync to their own disk; a
    thousand agents fsyncing to one disk from four event loops is not a fleet (a profile of one
    agent process: 6 % of its loop's time blocked in fsync)."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="ferry-scale-state-", dir=shm)) if shm.is_dir() else None


async def idle_cost(sim: Sim, seconds: float) -> None:
    """Print what the registered agents and etcd use with no coordinator and no migration: the
    registrations' upkeep alone (after 15 s to settle, over ``seconds``)."""
    await asyncio.sleep(15)

    def used() -> tuple[float, float]:
        return sum(cpu_seconds(p.pid) for p in sim.agents), cpu_seconds(sim.etcd.members[0].pid or 0)

    (agents0, etcd0), t0 = used(), time.monotonic()
    await asyncio.sleep(seconds)
    (agents1, etcd1), wall = used(), time.monotonic() - t0
    print(
        f"idle fleet over {wall:.0f} s: agent processes {100 * (agents1 - agents0) / wall:.1f} % of a core, "
        f"etcd {100 * (etcd1 - etcd0) / wall:.1f} %",
        flush=True,
    )


def start_agents(sim: Sim, args: argparse.Namespace) -> None:
    per = -(-args.hosts // args.processes)
    first = 1
    for cell in range(args.processes):
        count = min(per, args.hosts - first + 1)
        if count <= 0:
            break
        argv = [
            sys.executable,
            str(REPO / "sim_agents.py"),
            "--etcd",
            ",".join(sim.etcd.endpoints),
            "--prefix",
            PREFIX,
            "--first",
            str(first),
            "--count",
            str(count),
            "--cell",
            str(cell),
            "--vms",
            str(args.vms_per_host),
            "--memory-mib",
            str(args.memory_mib),
            "--disk-mib",
            str(args.disk_mib),
            "--step-s",
            str(args.step_s),
            "--ttl",
            str(args.agent_ttl),
            "--state-dir",
            str((sim.state or sim.workdir) / f"cell{cell}"),
        ]
        if args.agent_profile is not None and cell == 0:
            argv += ["--profile", str(args.agent_profile)]
        err = open(sim.workdir / f"cell{cell}.log", "w")  # noqa: SIM115 -- kept open for the process's life
        sim.agents.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True))
        sim.hosts += [f"host{i}" for i in range(first, first + count)]
        first += count
    for p in sim.agents:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"an agent process did not start (see {sim.workdir}/cell*.log)")


def stop_agents(sim: Sim) -> list[dict[str, float]]:
    stats = []
    for p in sim.agents:
        assert p.stdin is not None and p.stdout is not None
        with contextlib.suppress(OSError):
            p.stdin.close()
    for p in sim.agents:
        assert p.stdout is not None
        try:
            line = p.stdout.readline()
            stats.append(json.loads(line) if line else {})
            p.wait(timeout=60)
        except (subprocess.TimeoutExpired, ValueError):
            p.terminate()  # our own child, by its PID
            p.wait(timeout=10)
    return stats


def start_coordinator(sim: Sim, args: argparse.Namespace) -> None:
    """``bench/sim_coordinator.py``: ferry-coordinator as ``serve()`` builds it, its store calls
    counted (the agents share the etcd, so its own metrics cannot tell the coordinator's part)."""
    from ferry.lab.etcd import free_loopback_ports

    [port] = free_loopback_ports(1)
    cfg = sim.workdir / "coordinator.toml"
    cfg.write_text(coordinator_toml(port, sim.etcd.endpoints, args))
    argv = [sys.executable, str(REPO / "sim_coordinator.py"), "--config", str(cfg), "--stats", str(sim.stats)]
    if args.profile is not None:
        argv += ["--profile", str(args.profile)]
    out = open(sim.workdir / "coordinator.log", "wb")  # noqa: SIM115
    sim.coordinator = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    sim.address = f"127.0.0.1:{port}"


async def coordinator_calls(sim: Sim) -> Counter[str]:
    """The coordinator's store calls so far (it writes them when asked)."""
    want = sim.stats.with_suffix(".want")
    want.write_text("")
    for _ in range(200):
        if not want.exists():
            return Counter(json.loads(sim.stats.read_text())["calls"])
        await asyncio.sleep(0.05)
    raise RuntimeError("the coordinator did not write its store counts")


def stop_coordinator(sim: Sim) -> None:
    if sim.coordinator is not None and sim.coordinator.poll() is None:
        sim.coordinator.terminate()  # SIGTERM by its PID: it resigns and stops
        try:
            sim.coordinator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sim.coordinator.kill()
            sim.coordinator.wait()


# ---------------------------------------------------------------- following the records


class Follower:
    """Every migration and drain record as etcd streams them (this process's own watch)."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self.migrations: dict[str, MigrationRecord] = {}
        self.drains: dict[str, DrainRecord] = {}
        self.changed = asyncio.Event()
        self.on_final: list = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for prefix in (MIGRATIONS, DRAINS):
            entries, revision = await self.store.list(prefix)
            for e in entries:
                self._put(prefix, e.value, e.mod_revision)
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch(prefix, revision + 1)))

    def _put(self, prefix: str, value: bytes, revision: int) -> None:
        if prefix == MIGRATIONS:
            r = decode(value, revision)
            old = self.migrations.get(r.id)
            self.migrations[r.id] = r
            if r.phase.is_final and (old is None or not old.phase.is_final):
                for f in self.on_final:
                    f(r)
        else:
            d = decode_drain(value, revision)
            self.drains[d.id] = d
        self.changed.set()

    async def _watch(self, prefix: str, start: int) -> None:
        async for event in self.store.watch(prefix, start):
            if isinstance(event, Resync):
                for e in event.entries:
                    self._put(prefix, e.value, e.mod_revision)
            elif event.kind is EventKind.PUT:
                self._put(prefix, event.entry.value, event.entry.mod_revision)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ---------------------------------------------------------------- the load


@dataclass
class Run:
    """One measured stretch of load."""

    label: str
    in_flight: int
    max_open: int = 100  # submission calls open at once (a well-behaved scheduler's cap)
    started: float = 0.0  # POSIX seconds
    ended: float = 0.0
    submitted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    busy: int = 0  # submissions asked again after SERVER_BUSY (same idempotency key)
    ids: set[str] = field(default_factory=set)
    drain_ids: list[str] = field(default_factory=list)
    calls_before: Counter[str] = field(default_factory=Counter)  # the coordinator's store calls
    calls_after: Counter[str] = field(default_factory=Counter)
    cpu_before: float = 0.0
    cpu_after: float = 0.0


async def load(
    sim: Sim,
    stubs: Sequence[cgrpc.CoordinatorStub],
    follower: Follower,
    run: Run,
    vms: list[str],
    count: int,
    drains: Sequence[str] = (),
) -> None:
    """Drains of ``drains`` and, beside them, ``count`` placed migrations of ``vms`` with
    ``run.in_flight`` under way at a time; returns when every record of the run is final.
    ``stubs``: one per simulated scheduler (a connection each), taken in turn."""
    stub = stubs[0]
    assert sim.coordinator is not None
    free = list(vms)
    random.shuffle(free)
    busy: dict[str, str] = {}  # migration id -> vm
    slot = asyncio.Semaphore(run.in_flight)

    def ended(r: MigrationRecord) -> None:
        vm = busy.pop(r.id, None)
        if vm is not None:
            free.append(vm)
            slot.release()

    follower.on_final.append(ended)
    run.calls_before = await coordinator_calls(sim)
    run.cpu_before = cpu_seconds(sim.coordinator.pid)
    run.started = time.time()
    for host in drains:
        d = await stub.SubmitDrain(
            cpb.SubmitDrainRequest(host=host, reason="scale bench", options=OPTIONS), timeout=120
        )
        run.drain_ids.append(d.id)
        run.submitted += d.vms_total

    opened = asyncio.Semaphore(run.max_open)

    async def submit(vm: str, stub: cgrpc.CoordinatorStub) -> cpb.Migration:
        """What the README asks of a scheduler: a cap on open calls, and SERVER_BUSY asked again
        after a pause with the same idempotency key."""
        request = cpb.SubmitMigrationRequest(vm=vm, options=OPTIONS, idempotency_key=f"bench-{uuid.uuid4().hex}")
        for pause in (0.5, 1.0, 2.0, 4.0, 8.0, None):
            try:
                async with opened:
                    return await stub.SubmitMigration(request, timeout=120)
            except grpc.RpcError as exc:
                if pause is None or from_rpc_error(exc).reason != SERVER_BUSY:
                    raise
                run.busy += 1
                await asyncio.sleep(pause * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    async def one(vm: str, stub: cgrpc.CoordinatorStub) -> None:
        try:
            m = await submit(vm, stub)
        except grpc.RpcError as exc:  # a refusal is counted, not fatal
            err = from_rpc_error(exc)
            run.refused[f"{err.reason}: {err.message}"[:100]] += 1
            free.append(vm)
            slot.release()
            return
        run.ids.add(m.id)
        if m.id in follower.migrations and follower.migrations[m.id].phase.is_final:
            free.append(vm)
            slot.release()
        else:
            busy[m.id] = vm

    tasks = []
    left = count - run.submitted

    async def tell() -> None:  # a line on stderr now and then: a long run shows it moves
        while True:
            await asyncio.sleep(30)
            print(
                f"  ... {run.label}: {time.time() - run.started:.0f} s, submitted {run.submitted} "
                f"({len(busy)} under way, {run.max_open - opened._value} calls open, "
                f"{run.busy} asked again, {sum(run.refused.values())} refused)",
                file=sys.stderr,
                flush=True,
            )

    teller = asyncio.get_running_loop().create_task(tell())
    while left > 0:
        await slot.acquire()
        while not free:
            await asyncio.sleep(0.01)
        tasks.append(asyncio.get_running_loop().create_task(one(free.pop(), stubs[left % len(stubs)])))
        run.submitted += 1
        left -= 1
    await asyncio.gather(*tasks)
    while busy or any(not follower.drains.get(d, _NOT_YET).state.is_final for d in run.drain_ids):
        follower.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.changed.wait(), 1.0)
    teller.cancel()
    run.ended = time.time()
    run.cpu_after = cpu_seconds(sim.coordinator.pid)
    run.calls_after = await coordinator_calls(sim)
    follower.on_final.remove(ended)
    for d in run.drain_ids:
        run.ids |= {i.migration_id for i in follower.drains[d].items if i.migration_id}


class _NotYet:
    class state:  # noqa: N801 -- quacks like a DrainRecord's state
        is_final = False


_NOT_YET = _NotYet()


# ---------------------------------------------------------------- the report


def _transitions(r: MigrationRecord) -> list[float]:
    """When the record moved from one phase to another (POSIX seconds)."""
    out = []
    for prev, cur in zip(r.history, r.history[1:], strict=False):
        if cur.phase is not prev.phase:
            out.append(cur.at.timestamp())
    return out


def report(run: Run, follower: Follower, args: argparse.Namespace, agent_stats: Sequence[dict]) -> tuple[str, bool]:
    records = [follower.migrations[i] for i in run.ids if i in follower.migrations]
    wall = max(run.ended - run.started, 1e-9)
    moves = [t for r in records for t in _transitions(r) if run.started <= t <= run.ended]
    done = [r for r in records if r.phase is Phase.SUCCEEDED]
    ends = Counter(r.phase.name for r in records)
    to_done = [r.history[-1].at.timestamp() - r.created_at.timestamp() for r in done]
    n = max(len(records), 1)
    calls = run.calls_after - run.calls_before
    writes = sum(c for k, c in calls.items() if k.split()[0] in ("create", "update", "delete", "commit"))
    reads = sum(c for k, c in calls.items() if k.split()[0] in ("get", "list"))
    by_key = Counter()
    for k, c in calls.items():
        if k.split()[0] in ("create", "update", "delete", "commit"):
            by_key[k.split()[1]] += c
    cpu = run.cpu_after - run.cpu_before
    spans = [(r, s) for r in records for s in slot_spans(r)]
    out_peak = max(peak_overlap_by((r.source_host, *s) for r, s in spans).values(), default=0)
    in_peak = max(peak_overlap_by((r.target_host, *s) for r, s in spans).values(), default=0)
    cluster_peak = peak_overlap(s for _, s in spans)
    lim_out, lim_in, lim_cluster = args.limits
    fakes_peak = max((s.get("peak_jobs_per_source", 0) for s in agent_stats), default=0)
    held = out_peak <= lim_out and in_peak <= lim_in and cluster_peak <= lim_cluster and fakes_peak <= lim_out
    rows = [
        [
            "load",
            f"{run.in_flight} placed migrations in flight"
            + (f", {len(run.drain_ids)} drains" if run.drain_ids else ""),
        ],
        [
            "migrations",
            f"{len(records)} ({', '.join(f'{c} {p}' for p, c in sorted(ends.items()))}); "
            f"refused {sum(run.refused.values())}; asked again after SERVER_BUSY {run.busy}",
        ],
        ["wall (first submit -> all final)", secs(wall)],
        ["phase transitions/s", f"{len(moves) / wall:.0f} ({len(moves)} transitions)"],
        ["migrations done/s", rate(len(done), wall)],
        [
            "etcd writes per migration (the coordinator's)",
            f"{writes / n:.1f} (" + ", ".join(f"{key} {c / n:.1f}" for key, c in by_key.most_common()) + ")",
        ],
        ["etcd round trips per migration (writes + reads)", f"{(writes + reads) / n:.1f} (reads {reads / n:.1f})"],
        [
            "submit -> done p50 / p95",
            f"{secs(percentile(to_done, 50))} / {secs(percentile(to_done, 95))}" if to_done else "-",
        ],
        ["fake migration job", f"{job_seconds(args):g} s"],
        [
            "coordinator CPU",
            f"{cpu:.1f} s over {wall:.0f} s = {cpu / wall:.0%} of one core; "
            f"{cpu / max(len(moves), 1) * 1000:.2f} ms per transition",
        ],
        [
            "peak holding a slot: cluster / per source / per target",
            f"{cluster_peak} / {out_peak} / {in_peak} (limits {lim_cluster} / {lim_out} / {lim_in}); "
            f"fakes' jobs per source {fakes_peak}: {'within' if held else 'EXCEEDED'}",
        ],
    ]
    text = f"**{run.label}**\n\n" + markdown_table(["measure", "value"], rows)
    if run.refused:
        text += "\n\nrefused: " + "; ".join(f"{c}x {why}" for why, c in run.refused.most_common(3))
    failed = Counter(
        f"{r.phase.name} {r.error.reason}: {r.error.message[:100]}" if r.error else r.phase.name
        for r in records
        if r.phase is not Phase.SUCCEEDED
    )
    if failed:
        text += "\n\nnot succeeded: " + "; ".join(f"{c}x {why}" for why, c in failed.most_common(5))
    ok = held and not run.refused and not failed
    if run.drain_ids:
        table, drains_ok = drain_table(run, follower, args)
        text += "\n\n" + table
        ok = ok and drains_ok
    return text, ok


def slot_spans(r: MigrationRecord) -> list[tuple[float, float]]:
    """When ``r`` held a slot. One admitted ahead of its slot (``prepare_ahead``) held none
    while it prepared and waited: from "slot granted" on."""
    changes, ahead = [], False
    for c in r.history:
        if c.reason.startswith("admitted ahead"):
            ahead = True
        elif c.reason.startswith("slot granted"):
            ahead = False
        ahead = ahead and c.phase.holds_slot
        changes.append((c.at.timestamp(), c.phase.holds_slot and not ahead))
    return holding_spans(changes)


def drained_slot_times(run: Run, follower: Follower) -> tuple[list[float], list[float], list[float]]:
    """For every drained VM's last migration that succeeded: seconds in Migrating (the job, as
    the source agent's Migrate call ran it), the other seconds it held its slot (the control
    plane's share of the slot: preflight and prepare unless done ahead of the slot, finishing)
    and the drain's estimate for it."""
    jobs, others, estimates = [], [], []
    for did in run.drain_ids:
        for item in follower.drains[did].items:
            r = follower.migrations.get(item.migration_id)
            if r is None or r.phase is not Phase.SUCCEEDED:
                continue
            spent = phase_durations([(c.phase.name, c.at.timestamp()) for c in r.history])
            job = spent.get(Phase.MIGRATING.name, 0.0)
            jobs.append(job)
            others.append(sum(end - start for start, end in slot_spans(r)) - job)
            estimates.append(item.estimate_s)
    return jobs, others, estimates


def slots_busy_s(d: DrainRecord, migrations: dict[str, MigrationRecord]) -> float:
    """Seconds the drain's migrations held a slot, every attempt of every item summed."""
    held = 0.0
    for index, item in enumerate(d.items):
        for attempt in range(1, item.attempts + 1):
            r = migrations.get(drain_migration_id(d, index, attempt))
            if r is not None:
                held += sum(end - start for start, end in slot_spans(r))
    return held


def drain_table(run: Run, follower: Follower, args: argparse.Namespace) -> tuple[str, bool]:
    ratios, busy_ratios, states = [], [], Counter()
    worst: tuple[float, DrainRecord] | None = None
    for did in run.drain_ids:
        d = follower.drains[did]
        states[d.state.name] += 1
        n_slots = drain_slots(d, args.limits[0])
        bound = sum(i.estimate_s for i in d.items if i.estimate_s) / n_slots
        if d.ended_at is None or bound <= 0:
            continue
        makespan = (d.ended_at - d.created_at).total_seconds()
        ratio = makespan / bound
        ratios.append(ratio)
        busy = slots_busy_s(d, follower.migrations) / n_slots
        if busy > 0:
            busy_ratios.append(makespan / busy)
        if worst is None or ratio > worst[0]:
            worst = (ratio, d)
    within = sum(1 for x in ratios if x <= 1.05)
    jobs, others, estimates = drained_slot_times(run, follower)
    rows = [
        ["drains", f"{len(run.drain_ids)} ({', '.join(f'{c} {s}' for s, c in sorted(states.items()))})"],
        [
            "makespan / bound (sum of estimates / slots): min / p50 / p95 / max",
            " / ".join(f"{percentile(ratios, p):.3f}" for p in (0, 50, 95, 100)) if ratios else "-",
        ],
        ["drains within 1.05x their bound", f"{within} of {len(ratios)}"],
        [
            "makespan / the slots' busy time (sum of its migrations' slot-holding time / slots): "
            "min / p50 / p95 / max; within 1.05x",
            " / ".join(f"{percentile(busy_ratios, p):.3f}" for p in (0, 50, 95, 100))
            + f"; {sum(1 for x in busy_ratios if x <= 1.05)} of {len(busy_ratios)}"
            if busy_ratios
            else "-",
        ],
    ]
    if jobs:
        rows.append(
            [
                "a drained VM's slot, p50 / p95: the job (Migrating) + the rest of the slot "
                "(preflight and prepare unless ahead, finishing)",
                f"{percentile(jobs, 50):.2f} / {percentile(jobs, 95):.2f} s + {percentile(others, 50):.2f} / "
                f"{percentile(others, 95):.2f} s (estimate {percentile(estimates, 50):.2f} s)",
            ]
        )
    if worst is not None:
        w = worst[1]
        rows.append(
            [
                "the slowest",
                f"{w.id} of {w.host}: {(w.ended_at - w.created_at).total_seconds():.1f} s "  # type: ignore[operator]
                f"for {len(w.items)} VMs ({sum(i.estimate_s for i in w.items):.0f} s of estimates, "
                f"{drain_slots(w, args.limits[0])} slots)",
            ]
        )
    return markdown_table(["drains", "value"], rows), within == len(ratios) and states.get("SUCCEEDED", 0) == len(
        run.drain_ids
    )


# ---------------------------------------------------------------- the whole bench


async def wait_leading(
    sim: Sim, stub: cgrpc.CoordinatorStub, store: EtcdStore, hosts: int, timeout_s: float = 300
) -> None:
    """Until the coordinator leads and sees every host available (its ListHosts pages also warm
    its inventory cache)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        if sim.coordinator is not None and sim.coordinator.poll() is not None:
            raise RuntimeError(f"the coordinator exited ({sim.coordinator.returncode})")
        try:
            leader = await store.get("leader")
            up, token = 0, ""
            while True:
                page = await stub.ListHosts(cpb.ListHostsRequest(page_token=token, page_size=500), timeout=60)
                up += sum(1 for h in page.hosts if h.available and h.HasField("facts"))
                token = page.next_page_token
                if not token:
                    break
            if leader is not None and up >= hosts:
                return
            last = f"leader {'elected' if leader else 'not elected'}, {up} of {hosts} hosts up"
        except Exception as exc:  # noqa: BLE001 -- still starting
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"the coordinator did not lead with {hosts} hosts within {timeout_s:.0f} s: {last}")
        await asyncio.sleep(0.5)


def agent_calls_line(agent_stats: list[dict], migrations: int, hosts: int) -> str:
    """The agents' calls per migration, by method, over the whole bench (the coordinator's first
    inventory of every host, one per host, taken out).

    >>> agent_calls_line([{"calls": {"GetInventory": 1300, "Migrate": 100}}, {"calls": {"Migrate": 100}}], 200, 1000)
    'agent calls per migration (whole bench, all migrations): 2.5 (GetInventory 1.5, Migrate 1.0)'
    """
    calls: Counter[str] = Counter()
    for s in agent_stats:
        calls.update(s.get("calls", {}))
    calls["GetInventory"] = max(calls["GetInventory"] - hosts, 0)
    n = max(migrations, 1)
    parts = ", ".join(f"{m} {c / n:.1f}" for m, c in calls.most_common() if c)
    return f"agent calls per migration (whole bench, all migrations): {calls.total() / n:.1f} ({parts})"


def machine_line(cpu_s: dict[str, float], wall_s: float, cores: int) -> str:
    """The CPU every process of the bench used, against what the machine had: when the sum nears
    all its cores, the machine bounds the rate, not the coordinator.

    >>> machine_line({"coordinator": 84.0, "agents": 148.0, "etcd": 45.0, "this bench": 10.0}, 160.0, 2)
    'CPU of the whole bench: 287 s in 160 s = 90% of 2 cores (coordinator 84, agents 148, etcd 45, this bench 10)'
    """
    total = sum(cpu_s.values())
    parts = ", ".join(f"{name} {s:.0f}" for name, s in cpu_s.items())
    return (
        f"CPU of the whole bench: {total:.0f} s in {wall_s:.0f} s = {total / (wall_s * cores):.0%} of {cores} cores "
        f"({parts})"
    )


async def amain(args: argparse.Namespace) -> int:
    print(
        f"# scale_bench {datetime.now().astimezone().isoformat(timespec='seconds')}: {load_line(os.getloadavg())} "
        f"at start; Python {sys.version.split()[0]}; {args.hosts} hosts in {args.processes} agent processes, "
        f"{args.vms_per_host} VMs each ({args.memory_mib} MiB memory + {args.disk_mib} MiB local disk); "
        f"fake job {job_seconds(args):g} s; limits out/in/cluster {'/'.join(map(str, args.limits))}, "
        f"prepare ahead {args.prepare_ahead}; "
        f"progress stored every {args.progress_write_s:g} s; "
        f"agents' registrations renewed every {args.agent_ttl / 3:.3g} s\n",
        flush=True,
    )
    ok = True
    with tempfile.TemporaryDirectory(prefix="ferry-scale-") as tmp:
        workdir = Path(tmp)
        binary = require_etcd_binary()
        etcd = EtcdCluster.plan(workdir / "etcd", 1, binary=binary)
        version = etcd_version(binary)
        started = time.monotonic()
        etcd.start()
        sim = Sim(workdir, etcd, state=agent_state_root())
        store = EtcdStore(etcd.endpoints, PREFIX, timeout_s=30)
        follower = Follower(store)
        agent_stats: list[dict] = []
        channel = None
        schedulers: list[grpc.aio.Channel] = []
        try:
            fsync = "--unsafe-no-fsync" if supports_no_fsync(version) else "fsync"
            print(f"etcd {'.'.join(map(str, version))} ({fsync}) on {etcd.endpoints[0]}", flush=True)
            start_agents(sim, args)
            print(f"{len(sim.hosts)} agents registered after {time.monotonic() - started:.0f} s", flush=True)
            if args.idle_s:
                await idle_cost(sim, args.idle_s)
                return 0
            start_coordinator(sim, args)
            channel = create_channel(sim.address)
            stub = cgrpc.CoordinatorStub(channel)
            # several schedulers, a connection each: one connection carries at most 100 calls at once
            most = max([args.in_flight, *args.levels])
            schedulers = [create_channel(sim.address) for _ in range(max(1, -(-most // 50)))]
            stubs = [cgrpc.CoordinatorStub(c) for c in schedulers]
            await wait_leading(sim, stub, store, len(sim.hosts))
            print(f"coordinator leads and sees every host after {time.monotonic() - started:.0f} s\n", flush=True)
            await follower.start()
            drained = spread_hosts(sim.hosts, max(1, int(len(sim.hosts) * args.drain_fraction)))
            movable = [
                f"v{h.removeprefix('host')}-{n}"
                for h in sim.hosts
                if h not in set(drained)
                for n in range(args.vms_per_host)
            ]
            for level in args.levels:
                run = Run(f"{level} in flight, no drains", level, args.max_open)
                await load(sim, stubs, follower, run, movable, args.level_migrations)
                text, _ = report(run, follower, args, [])
                print(text + "\n", flush=True)
            run = Run(
                f"main run: {args.migrations} migrations incl. drains of {len(drained)} hosts",
                args.in_flight,
                args.max_open,
            )
            await load(sim, stubs, follower, run, movable, args.migrations, drained)
            agent_stats = stop_agents(sim)
            if args.dump is not None:
                with args.dump.open("w") as f:
                    for r in follower.migrations.values():
                        f.write(json.dumps({"migration": encode(r).decode()}) + "\n")
                    for d in follower.drains.values():
                        f.write(json.dumps({"drain": encode_drain(d).decode()}) + "\n")
            text, ok = report(run, follower, args, agent_stats)
            print(text + "\n", flush=True)
            cpu = sum(s.get("cpu_s", 0.0) for s in agent_stats)
            rereg = sum(int(s.get("reregistrations", 0)) for s in agent_stats)
            print(agent_calls_line(agent_stats, len(follower.migrations), len(sim.hosts)), flush=True)
            print(
                f"agent processes: {cpu:.0f} CPU s in all; registrations lost and renewed: {rereg}; "
                f"etcd CPU {cpu_seconds(etcd.members[0].pid or 0):.0f} s; "
                f"whole bench {time.monotonic() - started:.0f} s; "
                f"{load_line(os.getloadavg())} at the end",
                flush=True,
            )
            own = resource.getrusage(resource.RUSAGE_SELF)
            used = {
                "coordinator": cpu_seconds(sim.coordinator.pid),
                "agents": cpu,
                "etcd": cpu_seconds(etcd.members[0].pid or 0),
                "this bench": own.ru_utime + own.ru_stime,
            }
            print(machine_line(used, time.monotonic() - started, os.cpu_count() or 1), flush=True)
        except BaseException:
            for name in ("coordinator.log", "cell0.log"):
                path = workdir / name
                if path.exists():
                    print(
                        f"--- the end of {name}:\n" + "".join(path.read_text().splitlines(True)[-25:]), file=sys.stderr
                    )
            raise
        finally:
            await follower.close()
            for c in [channel, *schedulers]:
                if c is not None:
                    await c.close()
            stop_coordinator(sim)
            if not agent_stats:
                stop_agents(sim)
            await store.close()
            etcd.stop()
            if sim.state is not None:
                shutil.rmtree(sim.state, ignore_errors=True)
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for path in workdir.glob("*.log"):
                    shutil.copy2(path, args.keep_logs / path.name)
    return 0 if ok else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--processes", type=int, default=4, help="agent processes (cells)")
    p.add_argument("--vms-per-host", type=int, default=10)
    p.add_argument("--memory-mib", type=int, default=512)
    p.add_argument("--disk-mib", type=int, default=512)
    p.add_argument("--step-s", type=float, default=0.5, help="real seconds per 100 ms step of a fake job")
    p.add_argument("--migrations", type=int, default=10_000, help="in the main run, drains included")
    p.add_argument("--drain-fraction", type=float, default=0.1)
    p.add_argument("--in-flight", type=int, default=600, help="placed migrations under way at once")
    p.add_argument(
        "--max-open", type=int, default=100, help="submission calls open at once (more are sent as these answer)"
    )
    p.add_argument("--limits", default="2,2,2000", help="per-host outbound, per-host inbound, cluster")
    p.add_argument(
        "--prepare-ahead",
        type=int,
        default=1,
        help="[limits] prepare_ahead: per slot, migrations that preflight and prepare while it is busy",
    )
    p.add_argument("--progress-write-s", type=float, default=5.0, help="[engine] progress_write_s")
    p.add_argument("--inventory-ttl", type=float, default=60.0, help="[agents] inventory_ttl_s")
    p.add_argument(
        "--agent-ttl",
        type=int,
        default=10,
        help="the agents' registration lease TTL (s); each renews every ttl/3, in the simulation's processes",
    )
    p.add_argument(
        "--idle-s", type=float, default=0, help="only measure the agents' and etcd's CPU this long, no migrations"
    )
    p.add_argument("--levels", default="", help="in-flight levels to measure first, e.g. 100,200,400")
    p.add_argument("--level-migrations", type=int, default=2000, help="migrations per level")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dump", type=Path, help="write every record (JSON lines) here, for a closer look")
    p.add_argument("--keep-logs", type=Path, help="copy the coordinator's and the agent processes' logs here")
    p.add_argument("--profile", type=Path, help="run the coordinator under cProfile, writing its stats here")
    p.add_argument("--agent-profile", type=Path, help="run the first agent process under cProfile, stats here")
    args = p.parse_args(argv)
    args.limits = tuple(int(x) for x in args.limits.split(","))
    args.levels = [int(x) for x in args.levels.split(",") if x]
    random.seed(args.seed)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
