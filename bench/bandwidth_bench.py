#!/usr/bin/env python3
"""A host's migration bandwidth budget: a drain under Ferry's shared budget against raw ``virsh
migrate`` with a fixed cap per migration, in the same run, both against the physical bound (the
bytes moved / the budget). Needs root.

    sudo .venv/bin/python bench/bandwidth_bench.py                   # budget 32 MiB/s, 1 round, ~3 min
    sudo .venv/bin/python bench/bandwidth_bench.py --rounds 2 --budget 48

It brings up its own lab in a fresh temporary directory: host1 and host2, etcd, one coordinator
with two outbound (and inbound) slots per host and ``[limits] host_bandwidth_mibps = --budget``.
The guests (``--guests MEMORY:DIRTY,...``: each with that much memory, of which it keeps DIRTY MiB
written at ``--dirty-rate`` MiB/s, so the guests have different amounts to send; a small disk on the
lab's shared storage, no NIC) start on host1 once and fill their memory before the first case. The
disks are shared, not copied: libvirt sets a disk copy's speed once, at the start (``bandwidth.py``),
so a job that copies disks runs at the budget over the slots in Ferry too. Each round runs both
cases, in alternating order:

- **ferry**: ``ferry migrate VM --to host2 --unsafe --no-wait`` for each guest, the largest first,
  then waiting for all (the coordinator runs two at a time, in that order): it shares host1's
  budget among the running jobs and re-tunes them live as they start and end.
- **raw**: what an operator does by hand to keep two migrations at once within the budget: a
  worker pair takes the guests largest first, each ``virsh migrate --live --p2p --tls --persistent
  --undefinesource --unsafe --bandwidth BUDGET/2`` inside host1 (``--unsafe``, as ``ferry migrate
  --unsafe``: the lab's shared directory is no cluster file system).

After each case the guests go back to host1 with raw virsh, untimed and uncapped. Printed per case:
the wall time, the bytes the jobs moved (``virsh domjobinfo --completed`` on the target), the bound
(those bytes / the budget) and wall / bound; and that every guest is on host2, on its first boot. What
bounds both: the budget (the lab's links are veth pairs far faster); what a fixed cap loses is the
time one job runs alone at half the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from queue import Empty, Queue
from types import FrameType

from benchlib import jobinfo_bytes, load_line, markdown_table, median, parse_domjobinfo, spread
from drain_bench import Bench as DrainBench

from ferry.lab import ControlPlane, Lab

FINAL = ("succeeded", "failed", "cancelled", "rolled_back")
MiB = 1 << 20


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sample:
    case: str
    wall_s: float
    moved_bytes: int
    budget_mibps: int
    one_boot: bool

    @property
    def bound_s(self) -> float:
        return self.moved_bytes / (self.budget_mibps * MiB)


class Bench(DrainBench):
    """``ferry`` as drain_bench runs it (the lab's CLI config, JSON out), on this bench's guests."""

    def __init__(self, lab: Lab, guests: dict[str, int], budget: int) -> None:
        super().__init__(lab, list(guests))
        self.sizes = guests  # name -> its size's rank (larger first)
        self.budget = budget

    def on(self, host: str) -> list[str]:
        return self.lab.virsh(host, "list", "--name", check=False).stdout.split()

    def moved(self, host: str, name: str) -> int:
        info = parse_domjobinfo(self.lab.virsh(host, "domjobinfo", "--completed", name, check=False).stdout)
        return jobinfo_bytes(info, "Data processed") or (
            jobinfo_bytes(info, "Memory processed") + jobinfo_bytes(info, "File processed")
        )

    def virsh_migrate(self, name: str, source: str, target: str, bandwidth: int) -> None:
        argv = ["virsh", "-c", "qemu:///system", "migrate", "--live", "--p2p", "--tls", "--unsafe"]
        argv += ["--persistent", "--undefinesource", *(["--bandwidth", str(bandwidth)] if bandwidth else [])]
        done = subprocess.run(
            self.lab.exec_argv(source, [*argv, name, self.lab.tcp_uri(target)]),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=900,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"virsh migrate {name} {source} -> {target}: {done.stderr.strip() or done.stdout}")

    def check(self, case: str, started: float) -> Sample:
        wall = time.monotonic() - started
        there = self.on("host2")
        missing = [n for n in self.guests if n not in there]
        if missing:
            raise RuntimeError(f"{case}: {', '.join(missing)} not on host2")
        moved = sum(self.moved("host2", n) for n in self.guests)
        boots = all(self.lab.console(n).count("GUEST-BOOTED") == 1 for n in self.guests)
        return Sample(case, wall, moved, self.budget, boots)

    def ferry_case(self) -> Sample:
        started = time.monotonic()
        ids = []
        for name in sorted(self.guests, key=lambda n: -self.sizes[n]):  # queued in this order
            m = self.ferry("migrate", name, "--to", "host2", "--unsafe", "--no-wait")
            if not m.get("id"):
                raise RuntimeError(f"ferry migrate {name}: {json.dumps(m)[-800:]}")
            ids.append(m["id"])
        for mid in ids:
            while (m := self.ferry("migrations", "show", mid)).get("phase") not in FINAL:
                time.sleep(0.2)
            if m["phase"] != "succeeded":
                raise RuntimeError(f"{mid} ended {m['phase']}: {json.dumps(m.get('history'))[-1500:]}")
        return self.check("ferry", started)

    def raw_case(self) -> Sample:
        started = time.monotonic()
        queue: Queue[str] = Queue()
        for name in sorted(self.guests, key=lambda n: -self.sizes[n]):
            queue.put(name)

        def worker() -> None:
            while True:
                try:
                    name = queue.get_nowait()
                except Empty:
                    return
                self.virsh_migrate(name, "host1", "host2", self.budget // 2)

        with ThreadPoolExecutor(2) as pool:
            for f in [pool.submit(worker) for _ in range(2)]:
                f.result()
        return self.check("raw", started)

    def back(self) -> None:
        """Every guest to host1 again (raw, uncapped, untimed)."""
        self.ferry("hosts", "uncordon", "host1")
        for name in self.guests:
            if name in self.on("host2"):
                self.virsh_migrate(name, "host2", "host1", 0)


def table(samples: Sequence[Sample]) -> str:
    rows = []
    labels = {
        "ferry": "`ferry migrate` x3, 2 at once (the budget shared and re-tuned live)",
        "raw": "raw `virsh migrate --bandwidth BUDGET/2`, 2 at once (largest first)",
    }
    for case in ("ferry", "raw"):
        got = [s for s in samples if s.case == case]
        if not got:
            continue
        rows.append(
            [
                labels[case],
                len(got),
                spread([s.wall_s for s in got]),
                f"{median([s.moved_bytes for s in got]) / MiB:.0f} MiB",
                f"{median([s.bound_s for s in got]):.1f} s",
                f"{median([s.wall_s / s.bound_s for s in got]):.2f}x",
                "yes" if all(s.one_boot for s in got) else "NO",
            ]
        )
    return markdown_table(
        ["case", "runs", "wall median (min-max)", "moved", "bound (moved / budget)", "wall / bound", "first boot"],
        rows,
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=32, metavar="MiB/s", help="each host's budget. Default: 32")
    p.add_argument(
        "--guests",
        default="128:32,128:32,512:384",
        help="MEMORY:DIRTY MiB of each guest, comma-separated: its memory and how much of it it keeps written. "
        "Default: 128:32,128:32,512:384",
    )
    p.add_argument("--dirty-rate", type=int, default=8, metavar="MiB/s", help="how fast each rewrites it. Default: 8")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--lab-cache", metavar="DIR", help="keep libvirt's QEMU capabilities here between runs")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bandwidth_bench needs root (it starts a lab: namespaces, libvirtd, QEMU)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    load_at_start = os.getloadavg()
    started = time.monotonic()
    shapes = [tuple(int(x) for x in g.split(":")) for g in args.guests.split(",") if g.strip()]
    sizes = [dirty for _, dirty in shapes]
    lab_dir = Path(tempfile.mkdtemp(prefix="ferry-bandwidth-bench-", dir="/tmp"))
    lab = Lab(lab_dir, cache_dir=args.lab_cache, cli_config=lab_dir / "operator-cli.toml")
    samples: list[Sample] = []
    try:
        say(f"lab in {lab_dir}: host1, host2, etcd, one coordinator, 2 slots, budget {args.budget} MiB/s per host")
        lab.up(
            hosts=2,
            install=False,
            control_plane=ControlPlane(
                etcd_members=1,
                coordinators=1,
                per_host_outbound=2,
                per_host_inbound=2,
                cluster=4,
                host_bandwidth_mibps=args.budget,
            ),
        )
        guests = {f"bw-g{i}": memory * 1000 + dirty for i, (memory, dirty) in enumerate(shapes)}  # larger first
        say(f"booting {len(guests)} guests on host1 (MEMORY:DIRTY MiB {args.guests}, no NIC)")
        for (name, _), (memory, size) in zip(guests.items(), shapes, strict=True):
            lab.guest(
                name,
                "host1",
                memory_mib=memory,
                disks=("16M",),
                shared=True,
                nic=False,
                dirty_rate=str(args.dirty_rate),
                dirty_mb=size,
            )
        fill = max(sizes) / args.dirty_rate + 5
        say(f"waiting {fill:.0f} s: the guests write their memory")
        time.sleep(fill)
        bench = Bench(lab, guests, args.budget)
        for r in range(args.rounds):
            for case in ("ferry", "raw") if r % 2 == 0 else ("raw", "ferry"):
                sample = bench.ferry_case() if case == "ferry" else bench.raw_case()
                samples.append(sample)
                say(
                    f"round {r + 1}/{args.rounds}: {case}: wall {sample.wall_s:.1f} s, moved "
                    f"{sample.moved_bytes / MiB:.0f} MiB, bound {sample.bound_s:.1f} s "
                    f"({sample.wall_s / sample.bound_s:.2f}x)"
                )
                bench.back()
    finally:
        say("taking the lab down")
        try:
            report = lab.down()
            say(f"lab down in {report.seconds:.1f} s; left over: {', '.join(report.leftovers) or 'nothing'}")
        finally:
            shutil.rmtree(lab_dir, ignore_errors=True)
    print(
        f"# bandwidth_bench {datetime.now().astimezone().isoformat(timespec='seconds')}: "
        f"{load_line(load_at_start)} at start, {load_line(os.getloadavg())} at the end; budget {args.budget} MiB/s "
        f"per host; guests (MEMORY:DIRTY MiB) {args.guests}, dirtying at {args.dirty_rate} MiB/s (disks on shared "
        f"storage) from host1 to host2; {args.rounds} round(s); whole run {time.monotonic() - started:.0f} s\n"
    )
    print(table(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
