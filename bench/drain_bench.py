#!/usr/bin/env python3
"""A drain of a real host with four TCG guests: one migration at a time against two at once, in
the same run (needs root).

    sudo .venv/bin/python bench/drain_bench.py                 # 2 rounds, about 4 minutes
    sudo .venv/bin/python bench/drain_bench.py --rounds 3 --guests 4

It brings up its own lab in a fresh temporary directory (never the operator's /tmp/ferry-lab):
host1..host3 (host1 and host3 with guest bridge br-guest, host2 with br-vm), etcd, one
coordinator with two outbound migration slots per host; it always takes the lab down again and
removes the directory.

Each round boots nothing new: the guests (``--guests``, each with a host-local qcow2 disk of
``--disk``) start on host1 once; a case is ``ferry drain host1 --max-parallel N`` (the CLI waits
until the drain is final), after which host1 is uncordoned and the guests are migrated back to it
(untimed). The cases alternate their order round by round. Checked after every drain: the drain
succeeded, every guest runs on one host other than host1, still on its first boot.

Printed: the drain's wall time (the CLI's, start to return) and its own makespan (created ->
ended), the median per case, and the 2-slot case against the serial one.
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType

from benchlib import load_line, markdown_table, median, spread

from ferry.lab import ControlPlane, Lab
from ferry.lab.controlplane import lab_cli_config

FERRY = Path(sys.executable).parent / "ferry"
HOSTS = ("host1", "host2", "host3")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Sample:
    slots: int
    wall_s: float
    makespan_s: float
    estimated_s: float
    targets: tuple[str, ...]
    one_boot: bool


class Bench:
    def __init__(self, lab: Lab, guests: list[str]) -> None:
        self.lab = lab
        self.guests = guests

    def ferry(self, *args: str, timeout: float = 600) -> dict:
        env = {k: v for k, v in os.environ.items() if k != "FERRY_COORDINATOR"}
        env["FERRY_CONFIG"] = str(lab_cli_config(self.lab.paths))
        done = subprocess.run(
            [str(FERRY), "--output", "json", *args],
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
        try:
            return dict(json.loads(done.stdout)) if done.stdout.strip() else {}
        except ValueError:
            raise RuntimeError(f"ferry {' '.join(args)}: {done.stdout[-500:]} {done.stderr[-500:]}") from None

    def running_on(self, name: str) -> list[str]:
        return [h for h in HOSTS if name in self.lab.virsh(h, "list", "--name", check=False).stdout.split()]

    def drain(self, slots: int) -> Sample:
        started = time.monotonic()
        d = self.ferry("drain", "host1", "--max-parallel", str(slots), "--reason", f"bench {slots} slot(s)")
        wall = time.monotonic() - started
        if d.get("state") != "succeeded":
            raise RuntimeError(f"the drain with {slots} slot(s) ended {d.get('state')}: {json.dumps(d)[-1500:]}")
        targets = []
        for name in self.guests:
            where = self.running_on(name)
            if len(where) != 1 or where == ["host1"]:
                raise RuntimeError(f"{name} runs on {where} after the drain")
            targets.append(where[0])
        boots = all(self.lab.console(n).count("GUEST-BOOTED") == 1 for n in self.guests)
        created = datetime.fromisoformat(d["created_at"])
        ended = datetime.fromisoformat(d["ended_at"])
        return Sample(slots, wall, (ended - created).total_seconds(), float(d["estimated_s"]), tuple(targets), boots)

    def back_to_host1(self) -> None:
        self.ferry("hosts", "uncordon", "host1")
        for name in self.guests:
            if self.running_on(name) != ["host1"]:
                m = self.ferry("migrate", name, "--to", "host1")
                if m.get("phase") != "succeeded":
                    raise RuntimeError(f"{name} did not come back to host1: {json.dumps(m)[-800:]}")


def table(samples: Sequence[Sample]) -> str:
    serial = [s.wall_s for s in samples if s.slots == 1]
    rows = []
    for slots in sorted({s.slots for s in samples}):
        got = [s for s in samples if s.slots == slots]
        walls = [s.wall_s for s in got]
        vs = "baseline" if slots == 1 else (f"{median(walls) / median(serial):.2f}x the serial time" if serial else "-")
        rows.append(
            [
                f"`ferry drain host1 --max-parallel {slots}`",
                len(got),
                spread(walls),
                spread([s.makespan_s for s in got]),
                f"{median([s.estimated_s for s in got]):.0f} s",
                vs,
                "yes" if all(s.one_boot for s in got) else "NO",
            ]
        )
    return markdown_table(
        [
            "case",
            "runs",
            "wall median (min-max)",
            "makespan (created -> ended)",
            "estimated",
            "vs serial",
            "first boot",
        ],
        rows,
    )


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--guests", type=int, default=4)
    p.add_argument("--disk", default="64M")
    p.add_argument("--memory", type=int, default=256, metavar="MiB")
    p.add_argument("--lab-cache", metavar="DIR", help="keep libvirt's QEMU capabilities here between runs")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("drain_bench needs root (it starts a lab: namespaces, libvirtd, QEMU)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    load_at_start = os.getloadavg()
    started = time.monotonic()
    lab_dir = Path(tempfile.mkdtemp(prefix="ferry-drain-bench-", dir="/tmp"))
    lab = Lab(lab_dir, cache_dir=args.lab_cache, cli_config=lab_dir / "operator-cli.toml")
    samples: list[Sample] = []
    try:
        say(f"lab in {lab_dir}: host1..host3, etcd, one coordinator, 2 outbound slots per host")
        lab.up(
            hosts=3,
            install=False,
            control_plane=ControlPlane(
                etcd_members=1, coordinators=1, per_host_outbound=2, per_host_inbound=2, cluster=4
            ),
        )
        guests = [f"drain-g{i}" for i in range(args.guests)]
        say(f"booting {len(guests)} guests on host1 ({args.memory} MiB, disk {args.disk})")
        for name in guests:
            lab.guest(name, "host1", memory_mib=args.memory, disks=(args.disk,))
        bench = Bench(lab, guests)
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for slots in order:
                sample = bench.drain(slots)
                samples.append(sample)
                say(
                    f"round {r + 1}/{args.rounds}: {slots} slot(s): wall {sample.wall_s:.1f} s, makespan "
                    f"{sample.makespan_s:.1f} s (estimated {sample.estimated_s:.0f} s) -> {', '.join(sample.targets)}"
                )
                bench.back_to_host1()
    finally:
        say("taking the lab down")
        try:
            report = lab.down()
            say(f"lab down in {report.seconds:.1f} s; left over: {', '.join(report.leftovers) or 'nothing'}")
        finally:
            shutil.rmtree(lab_dir, ignore_errors=True)
    print(
        f"# drain_bench {datetime.now().astimezone().isoformat(timespec='seconds')}: {load_line(load_at_start)} at "
        f"start, {load_line(os.getloadavg())} at the end; {args.guests} guests ({args.memory} MiB, disk {args.disk}, "
        f"host-local qcow2) drained from host1 to host2/host3; {args.rounds} round(s); "
        f"whole run {time.monotonic() - started:.0f} s\n"
    )
    print(table(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
