#!/usr/bin/env python3
"""Convergence policies and the prediction on real TCG guests between two real libvirt hosts,
raw ``virsh migrate`` beside Ferry in the same run (needs root).

    sudo .venv/bin/python bench/policy_bench.py                  # parts a, b, c: about 25 minutes
    sudo .venv/bin/python bench/policy_bench.py --parts a --quick

It brings up its own lab (like migration_bench.py: a fresh /tmp/ferry-bench-* directory, host1
and host2, etcd, one coordinator with the lab's policies -- deploy/lab/controlplane.py), and
always takes it down again.

(a) The busy guest (256 MiB, dirtying ``--dirty-rate`` MiB/s over 64 MiB) at a ``--bandwidth``
    cap, on shared storage and with a copied disk: raw virsh (plain: aborted after
    ``--busy-limit``; ``--postcopy --postcopy-after-precopy``: virsh's own switch after the
    first pass) against ``ferry migrate --policy busy`` (post-copy on prediction), ``--policy
    precopy`` (never post-copy: a max-downtime ladder to 3 s) and ``--policy strict`` (never
    post-copy, 300 ms: refused up front). The bound is RAM / bandwidth.
(b) The prediction table: dirty rates ``--rates`` x caps ``--caps``, shared storage, the
    policy from the flags (no post-copy, QEMU's 300 ms, ``--table-timeout``): what ``ferry
    preflight`` predicted (the submission reuses its measurement; the record keeps the
    prediction) against what happened.
(c) Multifd: an idle 1 GiB guest, no cap, one connection against four (``--policy multifd``),
    raw virsh with and without ``--parallel`` beside.

Wall time: from the command until it returned with the guest on the target. Job: libvirt's
(``virsh domjobinfo --completed`` on the target for raw virsh, the record's result for Ferry).
Every migration that lands is checked: the guest runs on the target only, in the same boot.
"""

from __future__ import annotations

import argparse
import logging
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))  # fleetcli.py: the ferry CLI as the lab tests run it

from benchlib import (
    jobinfo_ms,
    load_line,
    markdown_table,
    median,
    parse_domjobinfo,
    prediction_error,
    secs,
)
from fleetcli import ferry

from ferry.lab import ControlPlane, Lab
from ferry.lab.topology import IMAGE_DIR

HOSTS = ("host1", "host2")
MiB = 1 << 20


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Run:
    """One migration. ``wall_s`` None: it did not land (see ``note``)."""

    case: str
    wall_s: float | None
    job_ms: float | None = None
    downtime_ms: float | None = None
    note: str = ""
    record: dict | None = None


class Bench:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    # ------------------------------------------------------------------ guests

    def where(self, vm: str) -> str:
        return next(h for h in HOSTS if vm in self.lab.virsh(h, "list", "--name", check=False).stdout.split())

    def boot(self, vm: str, *, memory: int = 256, shared: bool, rate: str | None, dirty_mb: int = 64) -> None:
        self.lab.guest(vm, HOSTS[0], memory_mib=memory, disks=("32M",), shared=shared, nic=False,
                       dirty_rate=rate, dirty_mb=dirty_mb)  # fmt: skip
        self.lab.wait_for_heartbeat(vm, above=3, timeout=60)

    def remove(self, vm: str) -> None:
        for host in HOSTS:
            self.lab.virsh(host, "destroy", vm, check=False)
            self.lab.virsh(host, "undefine", vm, check=False)
            self.lab.host_exec(host, "rm", "-f", f"{IMAGE_DIR}/{vm}-vda.qcow2", check=False)

    def check_landed(self, vm: str, source: str, target: str) -> str:
        """'' when the guest runs on the target only, in the same boot; else what is wrong."""
        on_target = vm in self.lab.virsh(target, "list", "--name", check=False).stdout.split()
        on_source = vm in self.lab.virsh(source, "list", "--name", check=False).stdout.split()
        boots = self.lab.console(vm).count("GUEST-BOOTED")
        wrong = [] if on_target and not on_source else [f"runs on {'both' if on_source else 'neither'}"]
        if boots != 1:
            wrong.append(f"REBOOTED ({boots} boots)")
        return "; ".join(wrong)

    # ------------------------------------------------------------------ raw virsh

    def raw(self, case: str, vm: str, *, shared: bool, extra: Sequence[str], limit_s: float) -> Run:
        source = self.where(vm)
        target = HOSTS[1] if source == HOSTS[0] else HOSTS[0]
        flags = ["--live", "--p2p", "--persistent", "--undefinesource"]
        flags += ["--unsafe"] if shared else ["--copy-storage-all"]
        argv = self.lab.exec_argv(
            source, ["virsh", "-c", "qemu:///system", "migrate", *flags, *extra, vm, self.lab.tcp_uri(target)]
        )
        started = time.monotonic()
        if not shared:
            self.lab.host_exec(target, "qemu-img", "create", "-q", "-f", "qcow2", f"{IMAGE_DIR}/{vm}-vda.qcow2", "32M")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            _, err = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            self.lab.virsh(source, "domjobabort", vm, check=False, timeout=60)
            proc.communicate(timeout=120)
            if not shared:
                self.lab.host_exec(target, "rm", "-f", f"{IMAGE_DIR}/{vm}-vda.qcow2", check=False)
            return Run(case, None, note=f"did not finish in {limit_s:.0f} s (aborted)")
        wall = time.monotonic() - started
        if proc.returncode != 0:
            return Run(case, None, note=f"failed: {err.strip()[:120]}")
        if not shared:
            self.lab.host_exec(source, "rm", "-f", f"{IMAGE_DIR}/{vm}-vda.qcow2", check=False)
        info = parse_domjobinfo(self.lab.virsh(target, "domjobinfo", "--completed", vm, check=False).stdout)
        wrong = self.check_landed(vm, source, target)
        return Run(case, wall, jobinfo_ms(info, "Time elapsed"), jobinfo_ms(info, "Total downtime"), wrong)

    # ------------------------------------------------------------------ ferry

    def cli(self, case: str, vm: str, *flags: str, shared: bool, timeout: float = 600) -> Run:
        source = self.where(vm)
        target = HOSTS[1] if source == HOSTS[0] else HOSTS[0]
        storage = ["--shared-storage", "--unsafe"] if shared else ["--copy-storage-all"]
        run = ferry(self.lab, "migrate", vm, "--to", target, *storage, *flags, timeout=timeout)
        data = run.data if isinstance(run.data, dict) else {}
        if run.code == 2:
            err = data.get("error") or {}
            return Run(case, None, note=f"{err.get('reason', '?')}: {err.get('message', '')}")
        phase = str(data.get("phase", ""))
        if phase != "succeeded":
            reason = (data.get("error") or {}).get("reason", "?")
            return Run(case, None, note=f"ended {phase} ({reason})", record=data)
        result = data.get("result") or {}
        downtime = None if result.get("downtime_not_measured") else float(result.get("downtime_ms", 0))
        steps = [f"{a['action']} ({a.get('elapsed_ms', '0')} ms)" for a in data.get("actions", [])
                 if a.get("by", "").startswith("policy")]  # fmt: skip
        notes = [n for n in (self.check_landed(vm, source, target), ", ".join(steps)) if n]
        return Run(case, run.seconds, float(result.get("time_elapsed_ms", 0)), downtime, "; ".join(notes), data)


# ---------------------------------------------------------------- (a) the busy guest


def part_a(b: Bench, a: argparse.Namespace) -> str:
    bound = 256 / a.bandwidth
    bw = str(a.bandwidth)
    rows = []
    for shared in (True,) if a.quick else (True, False):
        storage = "shared" if shared else "copy-storage"
        vm = f"busy-{'sh' if shared else 'cp'}"
        say(f"(a) {storage}: booting {vm} (dirty {a.dirty_rate} MiB/s)")
        b.boot(vm, shared=shared, rate=str(a.dirty_rate))
        cases: list[tuple[str, str, list[str]]] = [
            ("raw `virsh migrate --bandwidth B`", "raw", ["--bandwidth", bw]),
            (
                "raw `virsh migrate --bandwidth B --postcopy --postcopy-after-precopy`",
                "raw",
                ["--bandwidth", bw, "--postcopy", "--postcopy-after-precopy"],
            ),
            ("`ferry migrate --policy busy` (post-copy on prediction)", "ferry", ["--policy", "busy"]),
            ("`ferry migrate --policy precopy` (no post-copy, ladder to 3 s)", "ferry", ["--policy", "precopy"]),
            ("`ferry migrate --policy strict` (no post-copy, 300 ms, refuses)", "ferry", ["--policy", "strict"]),
        ]
        for label, kind, flags in cases:
            say(f"(a) {storage}: {label}")
            if kind == "raw":
                r = b.raw(label, vm, shared=shared, extra=flags, limit_s=a.busy_limit)
            else:
                r = b.cli(label, vm, *flags, "--bandwidth", bw, shared=shared)
            say(f"    -> wall {secs(r.wall_s)}, job {r.job_ms} ms, downtime {r.downtime_ms}; {r.note}")
            job_s = r.job_ms / 1000 if r.job_ms else None
            versus = f"{job_s / bound:.2f}x" if job_s else "-"
            predicted = ""
            if r.record and (r.record.get("prediction") or {}).get("words"):
                predicted = r.record["prediction"]["words"]
            elif r.note.startswith("WILL_NOT_CONVERGE"):
                predicted = r.note
            rows.append([
                storage, label, secs(r.wall_s) if r.wall_s else "did not land", f"{job_s:.1f} s" if job_s else "-",
                versus, "not measured (post-copy)" if r.wall_s and r.downtime_ms is None else
                (f"{r.downtime_ms:.0f} ms" if r.downtime_ms is not None else "-"),
                predicted or "-", r.note if not r.note.startswith("WILL_NOT_CONVERGE") else "",
            ])  # fmt: skip
        b.remove(vm)
    header = (
        f"(a) busy guest: 256 MiB dirtying {a.dirty_rate} MiB/s, cap {a.bandwidth} MiB/s: bound RAM/bandwidth "
        f"= {bound:.0f} s (1.5x = {1.5 * bound:.0f} s, 4x = {4 * bound:.0f} s)\n\n"
    )
    return header + markdown_table(
        ["storage", "case", "wall", "job", "job / bound", "downtime", "Ferry's prediction", "note"], rows
    )


# ---------------------------------------------------------------- (b) the prediction table


def part_b(b: Bench, a: argparse.Namespace) -> str:
    rows, cells = [], []
    rates = [0, 40] if a.quick else a.rates
    caps = [32] if a.quick else a.caps
    for rate in rates:
        vm = f"pred-{rate}"
        say(f"(b) booting {vm} (dirty {rate or 'none'} MiB/s)")
        b.boot(vm, shared=True, rate=str(rate) if rate else None)
        for cap in caps:
            flags = ("--bandwidth", str(cap), "--timeout", str(int(a.table_timeout)))
            # the operator's way: preflight (measures and predicts), then migrate (the submission
            # reuses that measurement: its record keeps the prediction)
            target = HOSTS[1] if b.where(vm) == HOSTS[0] else HOSTS[0]
            ferry(b.lab, "preflight", vm, "--to", target, "--shared-storage", "--unsafe", *flags, timeout=120)
            r = b.cli(f"{rate}@{cap}", vm, *flags, shared=True)
            rec = r.record or {}
            p = rec.get("prediction") or {}
            predicted_yes = bool(p.get("converges"))
            actual_yes = r.wall_s is not None
            pred_s = float(p.get("seconds", 0)) if predicted_yes else None
            act_s = r.job_ms / 1000 if r.job_ms and actual_yes else None
            err = prediction_error(pred_s, act_s)
            cells.append((predicted_yes, actual_yes, err))
            say(f"    {rate} MiB/s @ {cap}: predicted {predicted_yes} {pred_s}, actual {actual_yes} {act_s}; {r.note}")
            rows.append([
                rate, cap, f"{float(p.get('dirty_bps', 0)) / MiB:.0f}",
                "yes" if predicted_yes else "no", "yes" if actual_yes else f"no ({r.note or 'timeout'})",
                "right" if predicted_yes == actual_yes else "WRONG",
                f"{pred_s:.1f} s" if pred_s else "-", f"{act_s:.1f} s" if act_s else "-",
                f"{err:+.0%}" if err is not None else "-",
            ])  # fmt: skip
        b.remove(vm)
    right = sum(p == x for p, x, _ in cells)
    timed = [e for _, _, e in cells if e is not None]
    within = sum(abs(e) <= 0.30 for e in timed)
    summary = (
        f"\n\nverdicts right: {right}/{len(cells)} ({right / max(1, len(cells)):.0%}); "
        f"job time within +-30 %: {within}/{len(timed)} of those that converged as predicted"
        + (f" (median error {median([abs(e) for e in timed]):.0%})" if timed else "")
    )
    header = (
        f"(b) prediction table: shared storage, the flags' policy (no post-copy, 300 ms), completion timeout "
        f"{a.table_timeout:.0f} s; predicted by `ferry preflight` (libvirt's dirty-rate calculation, 1 s + 3 s), "
        "kept in the record\n\n"
    )
    return header + markdown_table(
        ["guest MiB/s", "cap MiB/s", "measured MiB/s", "predicted converge", "converged", "verdict",
         "predicted job", "actual job", "time error"],
        rows,
    ) + summary  # fmt: skip


# ---------------------------------------------------------------- (c) multifd


def part_c(b: Bench, a: argparse.Namespace) -> str:
    vm = "mfd"
    say(f"(c) booting {vm}: 1 GiB, idle")
    b.boot(vm, memory=1024, shared=True, rate=None)
    runs: dict[str, list[Run]] = {}
    cases: list[tuple[str, str, list[str]]] = [
        ("raw `virsh migrate` (one connection)", "raw", []),
        (
            "raw `virsh migrate --parallel --parallel-connections 4`",
            "raw",
            ["--parallel", "--parallel-connections", "4"],
        ),
        ("`ferry migrate` (one connection)", "ferry", []),
        ("`ferry migrate --policy multifd` (4 connections)", "ferry", ["--policy", "multifd"]),
    ]
    for n in range(1 if a.quick else a.rounds):
        for label, kind, flags in cases:
            if kind == "raw":
                r = b.raw(label, vm, shared=True, extra=flags, limit_s=600)
            else:
                r = b.cli(label, vm, *flags, shared=True)
            say(f"(c) round {n + 1} {label}: wall {secs(r.wall_s)}, job {r.job_ms} ms; {r.note}")
            runs.setdefault(label, []).append(r)
    b.remove(vm)
    rows = []
    for label, got in runs.items():
        landed = [r for r in got if r.wall_s is not None]
        jobs = [r.job_ms for r in landed if r.job_ms]
        rows.append([
            label, f"{len(landed)}/{len(got)}", secs(median([r.wall_s for r in landed])) if landed else "-",
            f"{median(jobs) / 1000:.2f} s" if jobs else "-",
            "; ".join(dict.fromkeys(r.note for r in got if r.note)),
        ])  # fmt: skip
    return "(c) multifd: idle 1 GiB guest, shared storage, no bandwidth cap\n\n" + markdown_table(
        ["case", "runs", "wall median", "job median", "note"], rows
    )


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="a,b,c", help="which parts: a, b, c (default all)")
    p.add_argument("--quick", action="store_true", help="a: shared only; b: 0 and 40 MiB/s at 32; c: 1 round")
    p.add_argument("--dirty-rate", type=int, default=40, metavar="MiB/s", help="(a) the busy guest (default 40)")
    p.add_argument("--bandwidth", type=int, default=32, metavar="MiB/s", help="(a) the cap (default 32)")
    p.add_argument("--busy-limit", type=float, default=60.0, metavar="s", help="(a) raw virsh aborted after (60)")
    p.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[0, 8, 16, 24, 32, 40])
    p.add_argument("--caps", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32])
    p.add_argument("--table-timeout", type=float, default=60.0, metavar="s", help="(b) completion timeout (60)")
    p.add_argument("--rounds", type=int, default=3, help="(c) migrations per case (default 3)")
    p.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the lab's logs here before teardown")
    p.add_argument("--lab-cache", metavar="DIR", help="libvirt's QEMU capabilities between runs")
    return p.parse_args(argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if os.geteuid() != 0:
        print("policy_bench needs root (it starts a lab: namespaces, libvirtd, QEMU)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    load_at_start, started = os.getloadavg(), time.monotonic()
    lab_dir = Path(tempfile.mkdtemp(prefix="ferry-bench-", dir="/tmp"))
    lab = Lab(lab_dir, cache_dir=a.lab_cache, cli_config=lab_dir / "operator-cli.toml")
    parts = {"a": part_a, "b": part_b, "c": part_c}
    out: list[str] = []
    qemu = "?"
    try:
        say(f"lab in {lab_dir}")
        lab.up(hosts=2, install=False, control_plane=ControlPlane(etcd_members=1, coordinators=1))
        b = Bench(lab)
        for name in a.parts.split(","):
            out.append(parts[name.strip()](b, a))
        qemu = subprocess.run(
            [sys.executable, "-c", "from ferry.lab.domain import lab_emulator; print(lab_emulator())"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
    finally:
        if a.keep_logs is not None:
            for f in lab_dir.rglob("*.log"):
                dest = a.keep_logs / f.relative_to(lab_dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
        say("taking the lab down")
        try:
            report = lab.down()
            say(f"lab down; left over: {', '.join(report.leftovers) or 'nothing'}")
        finally:
            shutil.rmtree(lab_dir, ignore_errors=True)
    print(
        f"# policy_bench {datetime.now().astimezone().isoformat(timespec='seconds')}: {load_line(load_at_start)} at "
        f"start, {load_line(os.getloadavg())} at the end; parts {a.parts}{' (quick)' if a.quick else ''}; guests on "
        f"{qemu}; whole run {time.monotonic() - started:.0f} s\n"
    )
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
