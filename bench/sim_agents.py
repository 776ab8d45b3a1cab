#!/usr/bin/env python3
"""One process of the fleet simulation (started by ``scale_bench.py``): ``--count`` agents over
FakeHypervisor, each a real ``AgentServicer`` gRPC server on 127.0.0.1 registered in etcd under
its own lease, as ferry-agent does.

The agents of one process form a *cell*: their fake hypervisors share one FakeFleet (a migration
moves the domain in memory, so source and target must live in the same process), and every host
and guest of cell C has the guest bridge ``br-c<C>``, which no other cell has -- placement, which
knows nothing of processes, keeps a VM inside its cell because every other host lacks its bridge.

Each host runs ``--vms`` guests (``v<host>-<n>``: ``--memory-mib`` of memory, a local qcow2 disk of
``--disk-mib``), and a fake migration copies memory + disk in steps of 100 ms of simulated time at
1 GiB/s, each step taking ``--step-s`` of real time.

Protocol with the orchestrator: one JSON line on stdout once every agent is registered
(``{"ready": ...}``); then the process runs until stdin is closed, sampling the fake jobs every
50 ms; at the end one JSON line with its figures (the most jobs at once per source host and in
total, re-registrations, CPU seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from benchlib import profiled

from ferry.agent.config import AgentConfig
from ferry.agent.main import build_agent, register
from ferry.agent.registration import Registration
from ferry.agent.targets import MigrationTargets
from ferry.etcd_store import EtcdStore
from ferry.rpc import create_server
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor, make_domain_xml

MiB = 1 << 20
GiB = 1 << 30
IMAGES = "/var/lib/libvirt/images"


def vm_uuid(host: int, n: int) -> str:
    return f"6c61622d-{host:04d}-4000-8000-{n:012d}"


class CallCounter:
    """Counts the agents' calls by method (an RpcObserver of their gRPC servers)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None:
        self.calls[method] += 1


CALLS = CallCounter()


async def start(args: argparse.Namespace) -> tuple[list[FakeHypervisor], list[object], list[Registration], EtcdStore]:
    fleet = FakeFleet()
    bridge = f"br-c{args.cell}"
    hvs, servers, regs = [], [], []
    store = EtcdStore(args.etcd.split(","), args.prefix, timeout_s=10.0, watch_threads=False)  # as an agent's
    for i in range(args.first, args.first + args.count):
        name = f"host{i}"
        host = FakeHostSystem(bridges=[bridge], dirs={IMAGES: 500 * GiB}, totals={IMAGES: 1000 * GiB})
        ip = f"10.{77 + i // 65000}.{i // 250 % 256}.{i % 250 + 1}"  # only named, never dialled
        hv = FakeHypervisor(
            hostname=name,
            uri=f"qemu+tcp://{ip}/system",
            fleet=fleet,
            host=host,
            host_uuid=f"6c61622d-0000-4000-8000-{i:012d}",
            step_s=args.step_s,
            memory_total_bytes=64 * GiB,
            cpus=32,
        )
        config = AgentConfig(
            name=name,
            listen=("127.0.0.1:0",),
            advertise_libvirt_uri=hv.uri,
            migration_address=ip,
            image_dirs=(IMAGES,),
            state_dir=str(Path(args.state_dir) / name),
            prepare_ttl_s=600,
        )
        # where Migrate may go: the registered hosts, read from etcd as a real agent does (the
        # coordinator names the target host: one read of its registration per Migrate)
        targets = MigrationTargets(name, store=store)
        servicer = build_agent(config, hv, host, targets=targets)
        server, [port] = create_server(config.listen, register(servicer), observer=CALLS)
        await server.start()
        for n in range(args.vms):
            vm = f"v{i}-{n}"
            disk = f"{IMAGES}/{vm}.qcow2"
            host.create_image(disk, fmt="qcow2", virtual_size=args.disk_mib * MiB)
            hv.disk_sizes[disk] = (args.disk_mib * MiB, args.disk_mib * MiB)  # fully allocated: all of it is copied
            xml = make_domain_xml(
                vm,
                uuid=vm_uuid(i, n),
                memory_bytes=args.memory_mib * MiB,
                disks=[("vda", disk, "qcow2")],
                bridges=[bridge],
            )
            hv.add_domain(xml)
        reg = Registration(store, name, f"127.0.0.1:{port}", hv.uri, ip, ttl_s=args.ttl)
        asyncio.get_running_loop().create_task(reg.run(), name=f"registration {name}")
        hvs.append(hv)
        servers.append(server)
        regs.append(reg)
    await asyncio.wait_for(asyncio.gather(*(r.registered.wait() for r in regs)), 120)
    return hvs, servers, regs, store


async def stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def amain(args: argparse.Namespace) -> None:
    hvs, servers, regs, store = await start(args)
    print(json.dumps({"ready": True, "hosts": len(hvs), "vms": len(hvs) * args.vms}), flush=True)
    peak_per_source, peak_total = 0, 0
    done = asyncio.get_running_loop().create_task(stdin_closed())
    while not done.done():
        total = 0
        for hv in hvs:
            n = len(hv.jobs)
            total += n
            peak_per_source = max(peak_per_source, n)
        peak_total = max(peak_total, total)
        await asyncio.sleep(0.05)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "peak_jobs_per_source": peak_per_source,
                "peak_jobs": peak_total,
                "reregistrations": sum(max(r.registrations - 1, 0) for r in regs),
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "calls": dict(CALLS.calls),
            }
        ),
        flush=True,
    )
    for hv in hvs:
        hv.release()
    for r in regs:
        await r.stop()
    for s in servers:
        await s.stop(None)  # type: ignore[attr-defined]
    await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--etcd", required=True, help="HOST:PORT[,HOST:PORT]")
    p.add_argument("--prefix", default="/ferry/")
    p.add_argument("--first", type=int, required=True, help="the first host's number")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--cell", type=int, required=True)
    p.add_argument("--vms", type=int, default=10)
    p.add_argument("--memory-mib", type=int, default=512)
    p.add_argument("--disk-mib", type=int, default=512)
    p.add_argument("--step-s", type=float, default=0.5)
    p.add_argument("--ttl", type=int, default=10)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--profile", type=Path, help="run under cProfile, writing its stats here at the end")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s cell{args.cell} %(levelname)s %(name)s: %(message)s"
    )
    started = time.monotonic()
    try:
        with profiled(args.profile):
            asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130
    logging.getLogger("sim").info("ran %.0f s (pid %d)", time.monotonic() - started, os.getpid())
    return 0


if __name__ == "__main__":
    sys.exit(main())
