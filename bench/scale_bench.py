#!/usr/bin/env python3
"""The coordinator's scheduling at fleet scale, over simulated hypervisors (no root needed).

    .venv/bin/python bench/scale_bench.py                      # 50 hosts, 500 VMs, drain 10; memory and etcd
    .venv/bin/python bench/scale_bench.py --store memory --hosts 20 --vms 100 --drain 4

What runs, all in this one Python process (one event loop, so one core at most):

* H agents (``tests/component/fleet.py``): real ``AgentServicer`` gRPC servers on 127.0.0.1:0
  over FakeHypervisor/FakeHostSystem, whose migrations are jobs of a few steps of ``--step-ms``
  each (fast: the bench measures the control plane, not data transfer). Each agent registers
  in the store under a lease, as ``ferry-agent`` does.
* V running VMs spread evenly over the hosts (each with a local qcow2 disk and a shared one).
* One coordinator replica (``build_coordinator``, production timeouts and engine timing) on
  (a) the in-memory store and (b) a real single-member etcd on loopback ports
  (``ferry.lab.etcd``, started and stopped here by its PID). It wins the election and runs the
  engine.

Then a drain of K hosts: every VM of K evenly spaced hosts is submitted through the gRPC API
(``SubmitMigration``, ``--concurrency`` requests in flight) to the host that has the fewest VMs,
and the bench waits until every record is final. The coordinator's writes are counted by a
wrapper around its store (the agents' registrations write to the store directly, uncounted).

Reported per store: submissions/s; time until all Succeeded; the most migrations holding a
slot at once (from the records' histories) and the most libvirt jobs at once (sampled on the
fakes) against the limits -- exceeding a limit fails the run (exit status 1); store writes per
migration; time in queue (submitted -> admitted) p50/p95; submitted -> Succeeded p50/p95.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from benchlib import (
    holding_spans,
    load_line,
    markdown_table,
    msecs,
    peak_overlap,
    peak_overlap_by,
    percentile,
    plan_drain,
    rate,
    secs,
    spread_hosts,
)

from ferry.agent.registration import Registration
from ferry.coordinator.agent_client import GrpcAgentClient
from ferry.coordinator.config import (
    AgentsConfig,
    CoordinatorConfig,
    EtcdConfig,
    HostDecl,
)
from ferry.coordinator.main import Coordinator, build_coordinator
from ferry.coordinator.phases import Phase
from ferry.coordinator.record import MigrationRecord, decode
from ferry.coordinator.slots import Limits
from ferry.keys import MIGRATIONS
from ferry.model import Inventory
from ferry.rpc import create_channel
from ferry.store import Entry, Resync, Store, WatchEvent
from ferry.testing.fleet import Fleet, MaxConcurrency, bridge_of, start_fleet
from ferry.testing.memory_store import MemoryStore
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb

REPO = Path(__file__).resolve().parent.parent

log = logging.getLogger("scale_bench")

LEAD_TIMEOUT_S = 30.0
# what `ferry migrate VM --to HOST` sends: live, storage decided from the inventory (local disks
# copied), the definition moves with the VM (persistent on the target, undefined on the source):
# the API's zero values
DRAIN_OPTIONS = tpb.MigrationOptions()
DRAIN_TIMEOUT_S = 600.0


# ---------------------------------------------------------------- the store, counted


class CountingStore:
    """The Store port passed through, counting each write call by key prefix (``migrations/``,
    ``vm-active/``, ``idempotency/``, ``leader``). Reads, watches and lease calls are not writes."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.writes: Counter[str] = Counter()

    def _count(self, key: str) -> None:
        head, sep, _ = key.partition("/")
        self.writes[head + sep] += 1

    async def get(self, key: str) -> Entry | None:
        return await self.inner.get(key)

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        return await self.inner.list(prefix)

    async def create(self, key: str, value: bytes, lease: int | None = None) -> int:
        self._count(key)
        return await self.inner.create(key, value, lease)

    async def update(self, key: str, value: bytes, expected_mod_revision: int, lease: int | None = None) -> int:
        self._count(key)
        return await self.inner.update(key, value, expected_mod_revision, lease)

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        self._count(key)
        return await self.inner.delete(key, expected_mod_revision)

    async def grant_lease(self, ttl_s: float) -> int:
        return await self.inner.grant_lease(ttl_s)

    async def keepalive(self, lease: int) -> int:
        return await self.inner.keepalive(lease)

    async def revoke(self, lease: int) -> None:
        await self.inner.revoke(lease)

    def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        return self.inner.watch(prefix, start_revision)

    async def close(self) -> None:
        await self.inner.close()


class CountingAgentClient(GrpcAgentClient):
    """The coordinator's agent client, counting GetInventory calls (one shared counter)."""

    def __init__(self, host: str, address: str, counter: Counter[str]) -> None:
        super().__init__(host, address, timeout_s=30.0)
        self._counter = counter

    async def inventory(self) -> Inventory:
        self._counter["GetInventory"] += 1
        return await super().inventory()


@contextlib.asynccontextmanager
async def open_store(kind: str, workdir: Path) -> AsyncIterator[tuple[Store, str]]:
    """The store to bench and a line describing it; an etcd member is stopped (by PID) on exit."""
    if kind == "memory":
        store = MemoryStore()
        try:
            yield store, "in-memory store (MemoryStore)"
        finally:
            await store.close()
        return
    from ferry.etcd_store import EtcdStore
    from ferry.lab.etcd import (
        EtcdCluster,
        etcd_version,
        require_etcd_binary,
        supports_no_fsync,
    )

    binary = require_etcd_binary()
    cluster = EtcdCluster.plan(workdir / "etcd", 1, binary=binary)
    started = await asyncio.to_thread(cluster.start)
    member = cluster.members[0]
    version = etcd_version(binary)
    fsync = "--unsafe-no-fsync" if supports_no_fsync(version) else "fsync on"
    store = EtcdStore(cluster.endpoints, "/ferry-bench/")
    try:
        yield (
            store,
            (
                f"etcd {'.'.join(map(str, version))}, 1 member on {member.endpoint} "
                f"(pid {member.pid}, {fsync}), healthy after {started:.1f} s"
            ),
        )
    finally:
        await store.close()
        await asyncio.to_thread(cluster.stop)


# ---------------------------------------------------------------- one run


@dataclass
class ScaleResult:
    store: str
    hosts: int
    vms: int
    drained: list[str]
    limits: Limits
    submitted: int = 0
    refused: list[str] = field(default_factory=list)
    submit_s: float = 0.0
    all_final_s: float = 0.0
    records: list[MigrationRecord] = field(default_factory=list)
    writes: Counter[str] = field(default_factory=Counter)
    agent_calls: Counter[str] = field(default_factory=Counter)
    jobs_cluster: int = 0
    jobs_per_source: int = 0
    timed_out: bool = False
    left_on_drained: int = 0  # domains (running or defined) still on the drained hosts
    misplaced: list[str] = field(default_factory=list)  # VMs not running on their target only


def natural(name: str) -> tuple[object, ...]:
    """host2 before host10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def coordinator_config(fleet: Fleet, limits: Limits) -> CoordinatorConfig:
    """Production defaults but for the limits; the logical bridge 'guest' is named per host as in
    the lab (br-guest on odd hosts, br-vm on even ones), so the mapping is derived per pair."""
    decls = {n: HostDecl(n, bridges={"guest": bridge_of(a.index)}) for n, a in fleet.agents.items()}
    return CoordinatorConfig(
        id="bench",
        listen=("127.0.0.1:0",),
        etcd=EtcdConfig(("unused:1",)),
        limits=limits,
        agents=AgentsConfig(),
        hosts=decls,
    )


async def wait_until_leading(coordinator: Coordinator, hosts: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LEAD_TIMEOUT_S
    while not (
        coordinator.is_leader() and coordinator.engine is not None and len(coordinator.fleet.available_hosts()) == hosts
    ):
        if loop.time() > deadline:
            raise TimeoutError(f"the coordinator did not lead with {hosts} hosts within {LEAD_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.05)


async def submit_all(
    stub: cgrpc.CoordinatorStub, plan: list[tuple[str, str, str]], concurrency: int, result: ScaleResult
) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(vm: str, target: str) -> None:
        async with gate:
            try:
                await stub.SubmitMigration(
                    cpb.SubmitMigrationRequest(
                        vm=vm, target_host=target, idempotency_key=f"drain-{vm}", options=DRAIN_OPTIONS
                    ),
                    timeout=60,
                )
                result.submitted += 1
            except Exception as exc:  # noqa: BLE001 -- a refused submission is reported, not fatal
                result.refused.append(f"{vm}: {exc}")

    await asyncio.gather(*(one(vm, target) for vm, _, target in plan))


async def wait_all_final(store: Store, count: int, timeout_s: float) -> list[MigrationRecord] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        entries, _ = await store.list(MIGRATIONS)
        records = [decode(e.value, e.mod_revision) for e in entries]
        if len(records) >= count and all(r.phase.is_final for r in records):
            return records
        if loop.time() > deadline:
            return None
        await asyncio.sleep(0.02)


async def run_once(kind: str, args: argparse.Namespace, limits: Limits) -> ScaleResult:
    with tempfile.TemporaryDirectory(prefix="ferry-scale-") as tmp:
        workdir = Path(tmp)
        async with open_store(kind, workdir) as (raw, described):
            result = ScaleResult(described, args.hosts, args.vms, [], limits)
            fleet: Fleet = await start_fleet(workdir / "agents", args.hosts, step_s=args.step_ms / 1000)
            registrations: list[Registration] = []
            coordinator: Coordinator | None = None
            channel = None
            try:
                names = sorted(fleet.agents, key=natural)
                vms_by_host: dict[str, list[str]] = {h: [] for h in names}
                for i in range(args.vms):
                    host, vm = names[i % len(names)], f"vm{i + 1:04d}"
                    fleet.add_guest(host, vm)
                    vms_by_host[host].append(vm)
                for name in names:
                    reg = fleet[name].registration()
                    r = Registration(raw, name, reg.address, reg.libvirt_uri, reg.migration_address, ttl_s=10)
                    registrations.append(r)
                    asyncio.get_running_loop().create_task(r.run(), name=f"registration {name}")
                await asyncio.wait_for(asyncio.gather(*(r.registered.wait() for r in registrations)), 30)

                counted = CountingStore(raw)
                calls: Counter[str] = Counter()
                coordinator = build_coordinator(
                    coordinator_config(fleet, limits),
                    counted,
                    lambda host, address: CountingAgentClient(host, address, calls),
                )
                [port] = await coordinator.start()
                await wait_until_leading(coordinator, len(names))
                channel = create_channel(f"127.0.0.1:{port}")
                stub = cgrpc.CoordinatorStub(channel)

                result.drained = spread_hosts(names, args.drain)
                plan = plan_drain(vms_by_host, set(result.drained), sort_key=natural)
                counted.writes.clear()
                calls.clear()
                with MaxConcurrency(list(fleet.agents.values()), interval_s=0.005) as jobs:
                    started = time.monotonic()
                    await submit_all(stub, plan, args.concurrency, result)
                    result.submit_s = time.monotonic() - started
                    records = await wait_all_final(raw, result.submitted, DRAIN_TIMEOUT_S)
                    result.all_final_s = time.monotonic() - started
                result.timed_out = records is None
                result.records = records or []
                result.writes = Counter(counted.writes)
                result.agent_calls = Counter(calls)
                result.jobs_cluster = jobs.cluster
                result.jobs_per_source = max(jobs.per_source.values(), default=0)
                result.left_on_drained = sum(len(fleet[h].hv.domains) for h in result.drained)
                result.misplaced = [vm for vm, _, target in plan if fleet.running_on(vm) != [target]]
            finally:
                if channel is not None:
                    await channel.close()
                if coordinator is not None:
                    await coordinator.stop(grace_s=1.0)
                for r in registrations:
                    await r.stop()
                await fleet.close()
            return result


# ---------------------------------------------------------------- the report


def slot_intervals(r: MigrationRecord) -> list[tuple[float, float]]:
    """When the record held a slot (from its history), as POSIX seconds."""
    return holding_spans([(c.at.timestamp(), c.phase.holds_slot) for c in r.history])


def first_at(r: MigrationRecord, phase: Phase) -> datetime | None:
    return next((c.at for c in r.history if c.phase is phase), None)


def report(result: ScaleResult) -> tuple[str, bool]:
    """The table of one run, and whether every limit held."""
    records = result.records
    done = [r for r in records if r.phase is Phase.SUCCEEDED]
    others = Counter(r.phase.name for r in records if r.phase is not Phase.SUCCEEDED)
    spans = [(r, s) for r in records for s in slot_intervals(r)]
    cluster = peak_overlap(s for _, s in spans)
    out = max(peak_overlap_by((r.source_host, *s) for r, s in spans).values(), default=0)
    inbound = max(peak_overlap_by((r.target_host, *s) for r, s in spans).values(), default=0)
    lim = result.limits
    held = (
        cluster <= lim.cluster
        and out <= lim.per_host_outbound
        and inbound <= lim.per_host_inbound
        and result.jobs_cluster <= lim.cluster
        and result.jobs_per_source <= lim.per_host_outbound
    )
    queue = [(a - r.created_at).total_seconds() * 1000 for r in records if (a := first_at(r, Phase.PREFLIGHT))]
    total = [(a - r.created_at).total_seconds() for r in done if (a := first_at(r, Phase.SUCCEEDED))]
    n = max(len(records), 1)
    writes = result.writes
    per = {p: writes[p] / n for p in ("migrations/", "vm-active/", "idempotency/")}
    all_writes = sum(writes.values())
    ended = "timed out" if result.timed_out else secs(result.all_final_s)
    rows = [
        [
            "fleet",
            (
                f"{result.hosts} hosts, {result.vms} VMs; drained {len(result.drained)} hosts "
                f"({', '.join(result.drained[:4])}{', ...' if len(result.drained) > 4 else ''})"
            ),
        ],
        ["migrations submitted", f"{result.submitted} (refused {len(result.refused)})"],
        ["submissions/s", f"{rate(result.submitted, result.submit_s)} ({secs(result.submit_s)} for all)"],
        [
            "all final after",
            (f"{ended}: {len(done)} Succeeded" + "".join(f", {c} {p}" for p, c in sorted(others.items()))),
        ],
        ["drain throughput", rate(len(done), result.all_final_s)],
        [
            "afterwards",
            (
                f"{result.left_on_drained} domains left on the drained hosts; "
                f"{len(result.misplaced)} VMs not running on their target alone"
            ),
        ],
        [
            "peak holding a slot: cluster / per source / per target",
            (
                f"{cluster} / {out} / {inbound} (limits {lim.cluster} / {lim.per_host_outbound} / "
                f"{lim.per_host_inbound}): {'within' if held else 'EXCEEDED'}"
            ),
        ],
        [
            "peak libvirt jobs (sampled on the fakes): cluster / per source",
            f"{result.jobs_cluster} / {result.jobs_per_source}",
        ],
        [
            "store writes per migration",
            (
                f"{all_writes / n:.1f} (record {per['migrations/']:.1f}, vm-active "
                f"{per['vm-active/']:.1f}, idempotency {per['idempotency/']:.1f}, "
                f"other {(all_writes - sum(writes[p] for p in per)) / n:.1f})"
            ),
        ],
        ["agent inventory calls per migration (GetInventory)", f"{result.agent_calls['GetInventory'] / n:.1f}"],
        ["time in queue p50 / p95", f"{_p(queue, 50, msecs)} / {_p(queue, 95, msecs)}"],
        ["submitted -> Succeeded p50 / p95", f"{_p(total, 50, secs)} / {_p(total, 95, secs)}"],
    ]
    text = f"**{result.store}**\n\n" + markdown_table(["measure", "value"], rows)
    if result.refused:
        text += "\n\nrefused: " + "; ".join(result.refused[:5])
    failed = [r for r in records if r.phase is not Phase.SUCCEEDED][:3]
    for r in failed:
        text += (
            f"\n\n{r.id} {r.vm} ended {r.phase.name}: {r.error.reason if r.error else ''} "
            f"{r.error.message if r.error else ''}"
        )
    return text, held and not result.timed_out and not result.misplaced


def _p(values: Sequence[float], pct: float, fmt: object) -> str:
    return fmt(percentile(values, pct)) if values else "-"  # type: ignore[operator]


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--hosts", type=int, default=50, help="simulated hypervisors (default 50)")
    p.add_argument("--vms", type=int, default=500, help="running VMs, spread evenly (default 500)")
    p.add_argument("--drain", type=int, default=10, help="hosts to drain (default 10)")
    p.add_argument("--store", choices=("memory", "etcd", "both"), default="both")
    p.add_argument(
        "--limits",
        default="2,2,8",
        metavar="OUT,IN,CLUSTER",
        help="per-host outbound, per-host inbound, cluster (default 2,2,8)",
    )
    p.add_argument("--concurrency", type=int, default=16, help="submissions in flight (default 16)")
    p.add_argument(
        "--step-ms", type=float, default=5.0, help="real milliseconds per step of a fake migration job (default 5)"
    )
    args = p.parse_args(argv)
    if not 0 < args.drain < args.hosts:
        p.error("--drain must be at least 1 and leave a host to drain to")
    return args


def parse_limits(text: str) -> Limits:
    out, inbound, cluster = (int(x) for x in text.split(","))
    return Limits(per_host_outbound=out, per_host_inbound=inbound, cluster=cluster)


async def amain(args: argparse.Namespace) -> int:
    limits = parse_limits(args.limits)
    stores = ["memory", "etcd"] if args.store == "both" else [args.store]
    print(
        f"# scale_bench {datetime.now().astimezone().isoformat(timespec='seconds')}: "
        f"{load_line(os.getloadavg())} at start; Python {sys.version.split()[0]}, "
        f"everything in one process; fake job step {args.step_ms:g} ms; "
        f"{args.concurrency} submissions in flight\n",
        flush=True,
    )
    ok = True
    for kind in stores:
        result = await run_once(kind, args, limits)
        text, held = report(result)
        ok = ok and held
        print(text + "\n", flush=True)
    print(f"({load_line(os.getloadavg())} at the end)")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ferry.coordinator.election").setLevel(logging.ERROR)  # "stepped down" at the end
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
