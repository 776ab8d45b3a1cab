#!/usr/bin/env python3
"""The fault campaign: real migrations on a private lab, a fault injected when the record enters
a phase, and six invariants checked after every trial (needs root).

    sudo .venv/bin/python bench/chaos.py --one-per-class          # what CI runs: one trial per class
    sudo .venv/bin/python bench/chaos.py --trials 42 --seed 7     # the full campaign, every class
    sudo .venv/bin/python bench/chaos.py --classes leader-kill,disk-full --trials 4
    sudo .venv/bin/python bench/chaos.py --control 5               # no faults: raw virsh vs ferry

It brings up its own lab in a fresh /tmp/ferry-chaos-* directory (never the operator's
/tmp/ferry-lab): host1 and host2 (host2 with a 512 MiB image filesystem of its own, so that it
can fill up), three etcd members and two coordinators; it always takes the lab down again (also
on Ctrl-C or SIGTERM) and removes the directory.

A trial: a fresh guest (256 MiB, one 64M qcow2 disk, shared or host-local) boots on host1; it is
submitted to host2 exactly as ``ferry migrate --no-wait --bandwidth 16 ...`` builds the request;
the submission is watched (WatchMigration on the coordinator that does not lead) and the fault is
injected as soon as the record enters the trial's phase (for Migrating: once libvirt's job runs
on the source); after the class's outage the fault is repaired; then the invariants
(``chaoslib.INVARIANTS``) are checked as an operator would (``ferry`` CLI, ``virsh`` on each host,
the agents' ListPrepares, the guest's console); then the guest is removed everywhere and every
lab component is made to run again before the next trial. Classes and their outages are in
``chaoslib.CLASSES``; the tables and the exit status are described in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "lab"))  # fleetcli: the ferry CLI and what the hosts say

import chaoslib as c
import grpc
from benchlib import load_line
from fleetcli import CliRun, ferry, images, placement, prepares

from ferry.cli.main import build_mapping, build_options
from ferry.cli.main import parser as cli_parser
from ferry.errors import FerryError
from ferry.lab import ControlPlane, Lab, procs
from ferry.lab.controlplane import ELECTION_TTL_S, REGISTRY_TTL_S
from ferry.lab.domain import parse_size
from ferry.lab.topology import IMAGE_DIR
from ferry.rpc import Tls, create_channel
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc

SOURCE, TARGET = "host1", "host2"
HOSTS = (SOURCE, TARGET)
IMAGE_FS = "512M"  # host2's own image filesystem (what disk-full fills)
JOB_START_S = 10.0  # Migrating: wait this long at most for libvirt's job to show on the source
HEARTBEAT_S = 20.0  # a living guest beats again within this
SETTLE_S = 10.0  # leftovers and ferry vms may lag the final record by this much
NEW_MIGRATION_S = 240.0
HEALTHY_S = 45.0  # a host unavailable this long before a trial gets its libvirtd and agent restarted
CANCEL_S = 30.0  # a cancelled migration left by a trial ends within this (else the lab is repaired)
VIRSH_S = 20.0
STUCK_NOTE_S = 60.0  # how long past the final bound a record may still come to say INCOMING_COPY_STUCK

log = logging.getLogger("chaos")


def say(text: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Settings:
    bandwidth: int = 16  # MiB/s: the migration's cap (long enough to hit Migrating mid-job)
    memory_mib: int = 256
    disk: str = "64M"
    final_within_s: float = 60.0
    outage_s: float | None = None  # replaces every class's outage
    logs: Path | None = None  # consoles of broken trials are copied here


def start_lab(lab: Lab) -> None:
    """The campaign's lab: 2 hosts (host2 with a small image filesystem), 3 etcd members, 2
    coordinators."""
    lab.up(
        hosts=2,
        install=False,
        control_plane=ControlPlane(etcd_members=3, coordinators=2),
        image_fs={TARGET: parse_size(IMAGE_FS)},
    )


# ---------------------------------------------------------------- looking at the lab


def cli_json(lab: Lab, *args: str, timeout: float = 60.0) -> CliRun:
    try:
        return ferry(lab, *args, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CliRun(("ferry", *args), 124, "", "timed out", None, timeout)


def show(lab: Lab, mid: str) -> dict[str, Any] | None:
    run = cli_json(lab, "migrations", "show", mid, timeout=20)
    return run.data if run.code == 0 and isinstance(run.data, dict) else None


def record_phase(record: dict[str, Any] | None) -> str:
    return c.phase_from_json(str(record.get("phase", ""))) if record else ""


def record_history(record: dict[str, Any] | None) -> tuple[tuple[str, str, str], ...]:
    if not record:
        return ()
    return tuple((h.get("phase", ""), h.get("at", ""), h.get("reason", "")) for h in record.get("history", []))


def final_at(record: dict[str, Any]) -> float | None:
    """When the record became final (its last history entry), seconds since the epoch."""
    history = record.get("history") or []
    if not history:
        return None
    return datetime.fromisoformat(history[-1]["at"].replace("Z", "+00:00")).timestamp()


def hosts_available(lab: Lab) -> dict[str, bool] | None:
    run = cli_json(lab, "hosts", timeout=20)
    if run.code != 0 or not isinstance(run.data, dict):
        return None
    return {h["name"]: bool(h.get("available")) for h in run.data.get("hosts", [])}


def ferry_vm_entries(lab: Lab, vm: str) -> list[dict[str, Any]] | None:
    run = cli_json(lab, "vms", timeout=20)
    if run.code != 0 or not isinstance(run.data, dict):
        return None
    return [v for v in run.data.get("vms", []) if v.get("domain", {}).get("name") == vm]


def unfinished(lab: Lab) -> list[dict[str, Any]] | None:
    run = cli_json(lab, "migrations", timeout=20)
    if run.code != 0 or not isinstance(run.data, dict):
        return None
    return [m for m in run.data.get("migrations", []) if c.phase_from_json(m["phase"]) not in c.FINAL_PHASES]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(interval)


def console(lab: Lab, vm: str) -> str:
    try:
        return lab.console(vm)
    except FerryError:
        return ""


def heartbeat_goes_on(lab: Lab, vm: str) -> bool:
    try:
        lab.wait_for_heartbeat(vm, above=lab.heartbeats(vm), timeout=HEARTBEAT_S)
        return True
    except FerryError:
        return False


def outgoing_job(lab: Lab, host: str, vm: str) -> bool:
    info = lab.virsh(host, "domjobinfo", vm, check=False, timeout=10).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return fields.get("Operation", "").strip() == "Outgoing migration" and fields.get("Job type", "").strip() != "None"


def leftovers(lab: Lab, vm: str, mid: str, home: str, shared: bool) -> list[str]:
    """What is left of the guest and its migration where it should not be: a domain or an image
    on a host other than ``home``, a prepare of it on any host."""
    found = []
    where = placement(lab, vm)
    for host in HOSTS:
        if host != home:
            if host in where:
                found.append(f"{host}: domain {vm} defined ({where[host]})")
            if not shared:
                found += [f"{host}: image {IMAGE_DIR}/{name}" for name in images(lab, host, vm)]
        try:
            left = [p.prepare_id for p in prepares(lab, host) if p.domain_name == vm or p.migration_id == mid]
        except Exception as exc:  # an agent that does not answer says nothing about its prepares
            found.append(f"{host}: prepares unknown (ListPrepares failed: {type(exc).__name__})")
            continue
        found += [f"{host}: prepare {p}" for p in left]
    return found


# ---------------------------------------------------------------- the campaign


@dataclass
class Injection:
    what: str
    repair: Callable[[], str]


class Campaign:
    def __init__(self, lab: Lab, settings: Settings) -> None:
        self.lab = lab
        self.settings = settings
        self.down_after: float | None = None  # the last dead-host check: seconds until Ferry showed it DOWN
        self.repairs: list[str] = []  # what the campaign had to repair in the lab after the last trial
        self.results: list[c.TrialResult] = []  # so far (kept when the run is interrupted)

    # -- the plan

    def run(self, specs: Sequence[c.TrialSpec]) -> list[c.TrialResult]:
        results = self.results
        for spec in specs:
            say(f"trial {spec.index}/{len(specs)}: {spec.label}")
            try:
                self.make_healthy()
            except (FerryError, RuntimeError) as exc:
                problem = f"the lab was not healthy before the trial: {exc}"[:500]
                self.attach_repairs()
                results.append(c.TrialResult(spec, "", "", {}, "", None, 0.0, error=problem))
                say(f"trial {spec.index}: NOT RUN, {problem}")
                continue
            self.attach_repairs()  # what the previous trial left for make_healthy to repair
            result = self.trial(spec)
            results.append(result)
            self.attach_repairs()  # what its clean-up had to repair
            verdict = (
                "held"
                if result.held
                else "BROKE " + ", ".join([*result.broken, *([result.error] if result.error else [])])
            )
            say(
                f"trial {spec.index}: {verdict}; {result.final_phase or 'not final'}, "
                f"recovery {'-' if result.recovery_s is None else f'{max(0.0, result.recovery_s):.1f} s'}, "
                f"{result.seconds:.0f} s"
            )
        return results

    def attach_repairs(self) -> None:
        """Notes on the last trial for what the campaign had to repair in the lab after it."""
        if self.repairs and self.results:
            last = self.results[-1]
            self.results[-1] = replace(last, notes=(*last.notes, *(f"afterwards: {r}" for r in self.repairs)))
            say("repaired after that trial: " + "; ".join(self.repairs))
        self.repairs = []

    # -- one trial

    def trial(self, spec: c.TrialSpec) -> c.TrialResult:
        fault = c.BY_NAME[spec.fault]
        vm = f"cx{spec.index:02d}-{spec.kind}"
        shared = spec.kind == "shared"
        started = time.monotonic()
        notes: list[str] = []
        mid, hit, after, record = "", "", "", None
        broken: dict[str, str] = {}
        error = ""
        boots, panic = 1, ""
        recovery: float | None = None
        try:
            self.lab.guest(vm, SOURCE, memory_mib=self.settings.memory_mib, disks=(self.settings.disk,), shared=shared)
            mid, caught, injection = self.submit_and_inject(vm, spec.phase, shared, self.arm(fault))
            injected_at = time.monotonic() - (time.time() - caught.injected_wall)
            hit, after = caught.seen, caught.after
            notes.append(f"fault: {injection.what}; {caught.describe()}")
            dead = {"source": SOURCE, "target": TARGET}.get(fault.down_host, "")
            # where the guest ran when the fault hit: on the target once its job completed
            ran_on = c.guest_host_at(caught.seen, SOURCE, TARGET)
            guest_killed = spec.fault.startswith("host-death") and ran_on == dead
            outage = fault.outage_s if self.settings.outage_s is None else self.settings.outage_s
            dead_host = self.dead_host_report(vm, dead, ran_on == dead, injected_at + outage) if dead else None
            if dead and self.down_after is not None:
                notes.append(f"Ferry showed {dead} DOWN {self.down_after:.1f} s after it went away")
            time.sleep(max(0.0, injected_at + outage - time.monotonic()))
            notes.append(f"repair: {injection.repair()}")
            repaired_at = time.time()
            # INCOMING_COPY_STUCK comes ~70 s after the repair (the stale copy waited for 30 s, then
            # libvirt's 30 s for the lock): looked for past the bound; a record final that late still
            # breaks final-60s
            wait = self.settings.final_within_s + STUCK_NOTE_S
            record = self.wait_final(mid, repaired_at + wait, until=c.copy_stuck)
            if record_phase(record) not in c.FINAL_PHASES and c.copy_stuck(record):
                # libvirt's own wedge, which no API call clears: an operator does what the record says,
                # and the record must then end within the same bound, counted from that second repair
                notes.append(f"operator: {self.follow_stuck_hint(vm)}")
                repaired_at = time.time()
                record = self.wait_final(mid, repaired_at + self.settings.final_within_s)
            phase = record_phase(record)
            if record is not None and phase in c.FINAL_PHASES:
                at = final_at(record)
                recovery = None if at is None else at - repaired_at
            text = console(self.lab, vm)  # before the new migration (which may need a boot)
            boots, panic = c.console_boots(text), c.panic_excerpt(text)
            observed = self.observe(
                vm,
                mid,
                shared,
                final=phase if recovery is not None else "",
                recovery=recovery,
                guest_killed=guest_killed,
                console_seen=(boots, panic),
                dead_host=dead_host,
            )
            broken = c.check(observed, final_within_s=self.settings.final_within_s)
            record = show(self.lab, mid) or record
        except Exception as exc:  # the trial could not be run as planned: reported, never hidden
            log.debug("trial %s failed", spec.label, exc_info=True)
            error = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            try:
                self.cleanup(vm, shared, bool(broken or error))
            except Exception as exc:  # the next trial's health check says whether the lab recovered
                notes.append(f"cleanup failed: {type(exc).__name__}: {exc}"[:500])
        return c.TrialResult(
            spec=spec,
            vm=vm,
            hit_phase=hit,
            after_phase=after,
            broken=broken,
            final_phase=record_phase(record) if record_phase(record) in c.FINAL_PHASES else "",
            recovery_s=recovery,
            seconds=time.monotonic() - started,
            history=record_history(record),
            notes=tuple(notes),
            boots=boots,
            panic=panic,
            error=error,
        )

    def submit_and_inject(
        self, vm: str, phase: str, shared: bool, inject: Callable[[], Injection]
    ) -> tuple[str, Caught, Injection]:
        """Submit as ``ferry migrate --no-wait`` builds it, to the coordinator that does not
        lead, watch there until the record is in ``phase`` (or past it) and inject the fault
        right there, inside the watch loop (for Migrating: once libvirt's job runs on the
        source). Returns the migration's id, when and where the fault hit, and the injection."""
        flags = ["--bandwidth", str(self.settings.bandwidth), "--unsafe" if shared else "--copy-storage-all"]
        args = cli_parser().parse_args(["migrate", vm, "--to", TARGET, "--no-wait", *flags])
        request = cpb.SubmitMigrationRequest(
            vm=vm,
            target_host=TARGET,
            options=build_options(args),
            mapping=build_mapping(args),
            idempotency_key=f"chaos-{vm}",
        )
        injected: list[Injection] = []

        def at_phase(seen: str) -> float:
            if seen == "Migrating" == phase:
                wait_for(lambda: outgoing_job(self.lab, SOURCE, vm), JOB_START_S, interval=0.05)
            fired = time.time()  # the fault's first act follows within a few milliseconds
            injected.append(inject())
            return fired

        mid, caught = asyncio.run(
            _submit_watch_inject(self.standby_address(), self.lab.client_tls("operator.lab"), request, phase, at_phase)
        )
        return mid, caught, injected[0]

    def standby_address(self) -> str:
        coordinators = self.lab.require_state().of_kind("coordinator")
        leader = self.lab.leader()
        ordered = sorted(coordinators, key=lambda comp: comp.name.endswith(f"/{leader}"))
        return ordered[0].endpoints["unix"]

    def arm(self, fault: c.FaultClass) -> Callable[[], Injection]:
        """What the fault will hit, found out now (the leader, the etcd raft leader: asking
        takes tens of milliseconds), and the function that fires it at the phase."""
        lab = self.lab
        name = fault.name
        if name == "none":
            return lambda: Injection("none", lambda: "none")
        if name in ("leader-kill", "leader-stop"):
            leader = lab.leader()
            if leader is None:
                raise RuntimeError("no coordinator leads: nothing to kill")
            who = f"coordinator {leader}"
            if name == "leader-kill":
                return lambda: _signalled(lab, who, "KILL", lambda: _restarted(lab, who))
            return lambda: _signalled(lab, who, "STOP", lambda: lab.kill(who, "CONT"))
        if name.endswith("-agent-kill") or name.endswith("-libvirtd-kill"):
            host = SOURCE if name.startswith("source") else TARGET
            who = f"{'agent' if '-agent-' in name else 'libvirtd'} {host}"
            return lambda: _signalled(lab, who, "KILL", lambda: _restarted(lab, who))
        if name.startswith("etcd-"):
            first = lab.etcd_leader() or "s1"
            members = [first]
            if name == "etcd-quorum-loss":
                others = [m.name.partition("/")[2] for m in lab.require_state().of_kind("etcd")]
                members.append(next(m for m in others if m != first))

            def kill_members() -> Injection:
                for member in members:
                    lab.kill(f"etcd {member}", "KILL")
                return Injection(
                    "etcd " + ", ".join(members) + " SIGKILL",
                    lambda: "; ".join(_restarted(lab, f"etcd {m}") for m in members),
                )

            return kill_members
        if name.startswith("partition-"):
            host = SOURCE if name.endswith("source") else TARGET

            def heal() -> str:
                lab.heal(host)
                return f"{host} link up"

            def partition() -> Injection:
                lab.partition(host)
                return Injection(f"{host} link down", heal)

            return partition
        if name == "disk-full":

            def unfill() -> str:
                lab.unfill_images(TARGET)
                return f"{TARGET} filler removed"

            def fill() -> Injection:
                filled = lab.fill_images(TARGET)
                return Injection(f"{TARGET} image filesystem filled ({filled >> 20} MiB filler)", unfill)

            return fill
        if name.startswith("host-death-"):
            host = SOURCE if name.endswith("source") else TARGET

            def revive() -> str:
                started = lab.revive_host(host)
                return f"{host} back: " + ", ".join(
                    f"{s.name} pid {s.process.pid if s.process else '-'}" for s in started
                )

            def die() -> Injection:
                death = lab.kill_host(host)
                lost = f", its /run/libvirt lost ({c.lost_guests(death.lost)})" if death.lost else ""
                return Injection(f"{host} died ({len(death.killed)} processes killed, link down{lost})", revive)

            return die
        raise ValueError(f"no injector for {name}")

    def dead_host_report(self, vm: str, dead: str, ran_there: bool, until: float) -> str:
        """While ``dead`` is gone: Ferry shows it DOWN (within the lease and a little), still
        lists the guest there marked unreachable when it ran there, and the guest boots
        nowhere else. "" when all that held, else what did not."""
        problems = []
        self.down_after = None
        lease = REGISTRY_TTL_S + 10.0
        gone = time.monotonic()
        down = wait_for(
            lambda: (hosts_available(self.lab) or {}).get(dead) is False,
            min(lease, max(0.0, until - time.monotonic() - 1)),
        )
        self.down_after = time.monotonic() - gone if down else None
        if not down:
            problems.append(f"Ferry still shows {dead} up {lease:.0f} s after it went away")
        elif ran_there:
            entries = ferry_vm_entries(self.lab, vm)
            if entries is None:
                problems.append("ferry vms failed")
            else:
                there = [e for e in entries if e.get("host") == dead]
                if not there:
                    listed = ", ".join(str(e.get("host")) for e in entries) or "nowhere"
                    problems.append(f"ferry vms no longer lists {vm} on {dead} (lists it: {listed})")
                elif not any(c.marked_unreachable(e) for e in there):
                    state = there[0].get("domain", {}).get("state", "?")
                    problems.append(f"ferry vms lists {vm} on {dead} as {state}, not marked unreachable")
        time.sleep(max(0.0, until - time.monotonic() - 0.5))
        boots = c.console_boots(console(self.lab, vm))
        if boots > 1:
            problems.append(f"the guest booted again while {dead} was gone ({boots} boot markers)")
        return "; ".join(problems)

    def wait_final(
        self, mid: str, deadline: float, until: Callable[[dict[str, Any]], bool] = lambda record: False
    ) -> dict[str, Any] | None:
        """The record once final, or once ``until(record)``, or as it is at ``deadline``."""
        last: dict[str, Any] | None = None
        while True:
            record = show(self.lab, mid)
            if record is not None:
                last = record
                if record_phase(record) in c.FINAL_PHASES or until(record):
                    return record
            if time.time() >= deadline:
                return last
            time.sleep(0.5)

    def observe(
        self,
        vm: str,
        mid: str,
        shared: bool,
        *,
        final: str,
        recovery: float | None,
        guest_killed: bool,
        console_seen: tuple[int, str],
        dead_host: str | None,
    ) -> c.Observed:
        """Everything the invariants are checked on, seen after the record got final (or the
        time for it ran out); ``console_seen``: boots and panic read before anything here."""
        where = placement(self.lab, vm)
        running = c.running_hosts(where)
        beating: bool | None = None if guest_killed and not running else heartbeat_goes_on(self.lab, vm)
        home = running[0] if len(running) == 1 else (next(iter(where)) if guest_killed and len(where) == 1 else "")
        # cleaning up may lag the final record a little: what is still there after SETTLE_S
        left = _settled(lambda: leftovers(self.lab, vm, mid, home, shared), SETTLE_S) if home else []
        mismatch = _settled_text(
            lambda: c.vms_mismatch(
                {e["host"]: e.get("domain", {}).get("state", "") for e in ferry_vm_entries(self.lab, vm) or []},
                placement(self.lab, vm),
            ),
            SETTLE_S,
        )
        new = self.new_migration(vm, shared, placement(self.lab, vm), guest_killed)
        return c.Observed(
            source=SOURCE,
            target=TARGET,
            final_phase=final,
            recovery_s=recovery,
            placement=where,
            boots=console_seen[0],
            beating=beating,
            leftovers=tuple(left),
            vms_mismatch=mismatch,
            new_migration=new,
            dead_host=dead_host,
            guest_killed=guest_killed,
            panic=console_seen[1],
        )

    def new_migration(self, vm: str, shared: bool, where: dict[str, str], guest_killed: bool) -> str:
        """Move the guest once more, uncapped, to the host it is not on: "" when that worked."""
        running = c.running_hosts(where)
        if guest_killed and not running and len(where) == 1:
            host = next(iter(where))
            # the operator starts the guest that died with its host (a boot the checks expect)
            self.lab.virsh(host, "start", vm, check=False)
            if not heartbeat_goes_on(self.lab, vm):
                return f"the guest did not come back after `virsh start` on {host}"
            running = [host]
        if len(running) != 1:
            return f"not tried: the guest runs on {len(running)} hosts"
        to = TARGET if running[0] == SOURCE else SOURCE
        run = cli_json(self.lab, "migrate", vm, "--to", to, *(["--unsafe"] if shared else []), timeout=NEW_MIGRATION_S)
        if run.code != 0:
            reason = run.error.get("reason") or (record_phase(run.data) if isinstance(run.data, dict) else "")
            return f"ferry migrate {vm} --to {to} exited {run.code}: {reason or run.stderr.strip()[-200:]}"
        after = placement(self.lab, vm)
        if after != {to: "running"}:
            return f"after the new migration to {to}: {after}"
        if not heartbeat_goes_on(self.lab, vm):
            return f"the guest stopped beating after the new migration to {to}"
        return ""

    # -- between trials

    def cleanup(self, vm: str, shared: bool, keep_console: bool) -> None:
        """Remove the guest everywhere and undo the fault, whatever state the trial left: a
        paused process resumed, links up, the filler gone, dead components restarted, an
        unfinished migration cancelled (Ferry cleans up first), then the guest destroyed (its
        QEMU killed when libvirtd cannot), undefined, its disks and console removed."""
        lab = self.lab
        for comp in lab.require_state().components:
            if procs.is_paused(comp.process):
                procs.send_signal(comp.process, signal.SIGCONT)
        lab.unfill_images(TARGET)
        self.restart_dead()
        listed = cli_json(lab, "migrations", "--vm", vm)
        for m in (listed.data or {}).get("migrations", []) if listed.code == 0 else ():
            if c.phase_from_json(m["phase"]) not in c.FINAL_PHASES:
                cli_json(lab, "migrations", "cancel", m["id"])
                self.wait_final(m["id"], time.time() + CANCEL_S)
        if keep_console and self.settings.logs is not None:
            self.settings.logs.mkdir(parents=True, exist_ok=True)
            (self.settings.logs / f"{vm}.console.log").write_text(console(lab, vm))
        for host in HOSTS:
            self.force_off(host, vm)
            for image in images(lab, host, vm):
                lab.host_exec(host, "rm", "-f", f"{IMAGE_DIR}/{image}", check=False)
        for path in lab.paths.shared.glob(f"{vm}-vd*.qcow2"):
            path.unlink(missing_ok=True)
        lab.paths.console_log(vm).unlink(missing_ok=True)

    def follow_stuck_hint(self, vm: str) -> str:
        """What INCOMING_COPY_STUCK's hint tells an operator to do on the target (its QEMU, if
        any, killed; libvirtd stopped; the copy's runtime record removed; libvirtd started)."""
        done = self.lab.purge_guest(TARGET, vm)
        return f"the record said INCOMING_COPY_STUCK; did what its hint says on {TARGET}: " + ", ".join(done)

    def force_off(self, host: str, vm: str) -> None:
        """virsh destroy and undefine; when libvirtd does not manage (a restarted libvirtd can
        keep an incoming migration's job forever), the guest's QEMU is killed and libvirtd
        restarted."""
        try:
            self.lab.virsh(host, "destroy", vm, check=False, timeout=VIRSH_S)
            self.lab.virsh(host, "undefine", vm, check=False, timeout=VIRSH_S)
            return
        except FerryError as exc:
            done = self.lab.purge_guest(host, vm)
            self.repairs.append(f"{host}: `virsh destroy {vm}` hung ({exc.reason}): " + ", ".join(done))
        self.lab.virsh(host, "destroy", vm, check=False, timeout=VIRSH_S)
        self.lab.virsh(host, "undefine", vm, check=False, timeout=VIRSH_S)

    def trial_guests_on(self, host: str) -> list[str]:
        """Guests of earlier trials still known to the host's libvirtd (by their runtime
        records: listing them may hang when libvirtd is wedged)."""
        runtime = self.lab.paths.host(host) / "run" / "qemu"
        return sorted(p.stem for p in runtime.glob("*.xml") if p.stem.startswith(("cx", "ctl")))

    def restart_dead(self) -> None:
        state = self.lab.require_state()
        for host in HOSTS:
            if self.lab.link_up(host) is False:
                self.lab.heal(host)
        order = {"etcd": 0, "libvirtd": 1, "agent": 2, "coordinator": 3}
        dead = [comp for comp in state.components if comp.kind in order and not procs.is_alive(comp.process)]
        for comp in sorted(dead, key=lambda comp: order[comp.kind]):
            self.repairs.append(f"{comp.name} found dead: restarted")
            self.lab.restart(comp.name)

    def make_healthy(self) -> None:
        """Before a trial: every component runs, a coordinator leads, both hosts are available
        (a host that stays unavailable gets its libvirtd and agent restarted) and no migration
        is unfinished (a stuck one is cancelled)."""
        self.restart_dead()
        if self.lab.wait_for_leader(timeout=ELECTION_TTL_S + 20) is None:
            raise RuntimeError("no coordinator leads: the lab cannot run more trials")

        def down() -> list[str]:
            available = hosts_available(self.lab) or {}
            return [h for h in HOSTS if not available.get(h)]

        if not wait_for(lambda: not down(), HEALTHY_S):
            for host in down():
                self.repairs.append(f"{host} still unavailable to Ferry: libvirtd and agent restarted")
                for name in self.trial_guests_on(host):
                    self.repairs.append(
                        f"{host}: guest {name} left behind: " + ", ".join(self.lab.purge_guest(host, name))
                    )
                self.lab.restart(["libvirtd", host])
                self.lab.restart(["agent", host])
            if not wait_for(lambda: not down(), HEALTHY_S):
                raise RuntimeError(f"the coordinators do not list {', '.join(down())} as available")
        stuck = wait_for(lambda: unfinished(self.lab) == [], 30) is False
        if stuck:
            for m in unfinished(self.lab) or []:
                self.repairs.append(f"unfinished migration {m['id']} ({m['vm']}, {m['phase']}) cancelled")
                cli_json(self.lab, "migrations", "cancel", m["id"])
                self.wait_final(m["id"], time.time() + CANCEL_S)
            if unfinished(self.lab):
                raise RuntimeError("unfinished migrations that cancel does not end: later trials would queue")


@dataclass(frozen=True)
class Caught:
    """When and where the fault hit: the phase the watch saw, when the record entered it (its
    history), when the fault was injected (both seconds since the epoch) and the record's phase
    read right after the injection ("" when the coordinators did not answer)."""

    seen: str
    entered: float | None
    injected_wall: float
    after: str

    def describe(self) -> str:
        lag = "" if self.entered is None else f"{(self.injected_wall - self.entered) * 1000:.0f} ms after "
        after = f"; the record was {self.after} right after it" if self.after and self.after != self.seen else ""
        return f"hit {lag}the record entered {self.seen}{after}"


async def _submit_watch_inject(
    address: str, tls: Tls, request: cpb.SubmitMigrationRequest, phase: str, at_phase: Callable[[str], float]
) -> tuple[str, Caught]:
    wanted = c.phase_index(phase)
    async with create_channel(address, tls=tls) as channel:
        stub = cgrpc.CoordinatorStub(channel)
        record = await stub.SubmitMigration(request, timeout=30)
        seen = c.phase_from_json(cpb.Phase.Name(record.phase))
        if c.phase_index(seen) < wanted:
            stream = stub.WatchMigration(cpb.WatchMigrationRequest(id=record.id), timeout=300)
            async for record in stream:
                seen = c.phase_from_json(cpb.Phase.Name(record.phase))
                if c.phase_index(seen) >= wanted:
                    break
            stream.cancel()
        injected = at_phase(seen)  # the injection: blocks the loop, nothing else runs here meanwhile
        entered = next((h.at.seconds + h.at.nanos / 1e9 for h in record.history if h.phase == seen), None)
        try:
            after = c.phase_from_json(
                cpb.Phase.Name((await stub.GetMigration(cpb.GetMigrationRequest(id=record.id), timeout=2)).phase)
            )
        except grpc.RpcError:
            after = ""
        return record.id, Caught(seen, entered, injected, after)


def _signalled(lab: Lab, who: str, signal_name: str, repair: Callable[[], str]) -> Injection:
    lab.kill(who, signal_name)
    return Injection(f"{who} SIG{signal_name}", repair)


def _restarted(lab: Lab, who: str) -> str:
    component = lab.restart(who)
    return f"{who} restarted (pid {component.process.pid if component.process else '-'})"


def _settled(probe: Callable[[], list[str]], timeout: float) -> list[str]:
    """Probe until it finds nothing or the time is up; the last finding."""
    found = probe()
    deadline = time.monotonic() + timeout
    while found and time.monotonic() < deadline:
        time.sleep(1.0)
        found = probe()
    return found


def _settled_text(probe: Callable[[], str], timeout: float) -> str:
    found = probe()
    deadline = time.monotonic() + timeout
    while found and time.monotonic() < deadline:
        time.sleep(1.0)
        found = probe()
    return found


# ---------------------------------------------------------------- the control run (no faults)


def control_run(lab: Lab, settings: Settings, rounds: int, results: list[c.ControlResult]) -> list[c.ControlResult]:
    """``rounds`` migrations per guest kind with raw ``virsh migrate`` and as many with
    ``ferry migrate``, both under the campaign's cap, no faults (appended to ``results``): a
    reboot in these is TCG's doing, not Ferry's."""
    for i in range(1, rounds + 1):
        for kind in c.KINDS:
            for mode in ("virsh", "ferry"):
                vm = f"ctl{i:02d}-{mode[0]}{kind[0]}"
                shared = kind == "shared"
                started = time.monotonic()
                note = ""
                try:
                    lab.guest(vm, SOURCE, memory_mib=settings.memory_mib, disks=(settings.disk,), shared=shared)
                    started = time.monotonic()
                    ok, note = (_raw_migrate if mode == "virsh" else _ferry_migrate)(lab, vm, shared, settings)
                    if ok:
                        ok = heartbeat_goes_on(lab, vm)
                        note = note or ("" if ok else "no heartbeat after the migration")
                except FerryError as exc:
                    ok, note = False, exc.message
                text = console(lab, vm)
                result = c.ControlResult(
                    mode, kind, ok, c.console_boots(text), c.panic_excerpt(text), time.monotonic() - started, note
                )
                say(f"control {vm}: {'ok' if ok else 'FAILED ' + note}, {result.boots} boot(s)")
                results.append(result)
                Campaign(lab, settings).cleanup(vm, shared, result.boots > 1)
    return results


def _raw_migrate(lab: Lab, vm: str, shared: bool, settings: Settings) -> tuple[bool, str]:
    """What an operator types: the target disk made by hand for a copy, the domain XML with the
    target's bridge name (the hosts' guest bridges differ), then virsh migrate from inside the
    source host."""
    xml = lab.virsh(SOURCE, "dumpxml", "--migratable", vm).stdout
    bridges = (lab.host(SOURCE).guest_bridge, lab.host(TARGET).guest_bridge)
    dest_xml = lab.paths.shared / f"{vm}.dest.xml"
    dest_xml.write_text(xml.replace(f"bridge='{bridges[0]}'", f"bridge='{bridges[1]}'"))
    # --tls: the lab's libvirtd refuses plaintext migrations (migrate_tls_force), as ferry's are TLS
    flags = ["--live", "--p2p", "--tls", "--persistent", "--undefinesource", "--bandwidth", str(settings.bandwidth)]
    flags += ["--xml", str(dest_xml)]
    if shared:
        flags.append("--unsafe")
    else:
        disk = f"{IMAGE_DIR}/{vm}-vda.qcow2"
        lab.host_exec(TARGET, "qemu-img", "create", "-q", "-f", "qcow2", disk, str(parse_size(settings.disk)))
        flags.append("--copy-storage-all")
    argv = ["virsh", "-c", "qemu:///system", "migrate", *flags, vm, lab.tcp_uri(TARGET)]
    done = lab.host_exec(SOURCE, *argv, timeout=NEW_MIGRATION_S, check=False)
    if done.returncode != 0:
        return False, (done.stderr or done.stdout).strip()[-200:]
    return placement(lab, vm) == {TARGET: "running"}, ""


def _ferry_migrate(lab: Lab, vm: str, shared: bool, settings: Settings) -> tuple[bool, str]:
    flags = ["--bandwidth", str(settings.bandwidth), "--unsafe" if shared else "--copy-storage-all"]
    run = cli_json(lab, "migrate", vm, "--to", TARGET, *flags, timeout=NEW_MIGRATION_S)
    if run.code != 0:
        return False, str(run.error.get("reason") or record_phase(run.data if isinstance(run.data, dict) else None))
    return placement(lab, vm) == {TARGET: "running"}, ""


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="chaos.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", help=f"comma-separated fault classes (default all): {', '.join(c.BY_NAME)}")
    p.add_argument("--trials", type=int, help="number of trials (default 3 per class), round-robin over the classes")
    p.add_argument("--seed", type=int, help="shuffles each class's (phase, kind) cells (default: from the clock)")
    p.add_argument("--one-per-class", action="store_true", help="one trial per class at its CI cell (what CI runs)")
    p.add_argument("--at", metavar="PHASE/KIND", help="only this cell, e.g. Finishing/copy (repeating one finding)")
    p.add_argument("--output", choices=("text", "json"), default="text")
    p.add_argument("--bandwidth", type=int, default=Settings.bandwidth, metavar="MiB/s", help="migration cap (16)")
    p.add_argument("--memory", type=int, default=Settings.memory_mib, metavar="MiB", help="guest memory (256)")
    p.add_argument("--disk", default=Settings.disk, metavar="SIZE", help="guest disk (64M)")
    p.add_argument("--final-within", type=float, default=Settings.final_within_s, metavar="s", help="(60)")
    p.add_argument("--outage", type=float, metavar="s", help="fault-to-repair time for every class (default per class)")
    p.add_argument("--control", type=int, metavar="N", help="instead: N raw-virsh and N ferry migrations per kind")
    p.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy the lab's logs, broken guests' consoles and chaos.json here"
    )
    p.add_argument("--lab-cache", type=Path, metavar="DIR", help="keep libvirt's QEMU capabilities between runs")
    p.add_argument("--list", action="store_true", help="print the classes and the planned trials, run nothing")
    return p.parse_args(argv)


def keep_logs(lab_dir: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for log_file in lab_dir.rglob("*.log"):
        if log_file.is_file():
            dest = into / "lab" / log_file.relative_to(lab_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(log_file, dest)
    say(f"lab logs copied to {into}")


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def header(what: str, settings: Settings, load: str, seconds: float) -> str:
    return (
        f"# chaos {datetime.now().astimezone().isoformat(timespec='seconds')}: {load} at start, "
        f"{load_line(os.getloadavg())} at the end; {what}; guest {settings.memory_mib} MiB, "
        f"disk {settings.disk}, cap {settings.bandwidth} MiB/s; final within {settings.final_within_s:.0f} s "
        f"of the repair; whole run {seconds:.0f} s"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        classes = c.select_classes(args.classes)
        at = c.parse_cell(args.at) if args.at else None
    except ValueError as exc:
        print(f"chaos.py: {exc}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    specs = c.plan_trials(classes, trials=args.trials, seed=seed, one_per_class=args.one_per_class, at=at)
    settings = Settings(
        bandwidth=args.bandwidth,
        memory_mib=args.memory,
        disk=args.disk,
        final_within_s=args.final_within,
        outage_s=args.outage,
        logs=args.keep_logs,
    )
    if args.list:
        for fault in classes:
            print(f"{fault.name:<22} outage {fault.outage_s:>4.0f} s  {fault.what}; repair: {fault.repair}")
        for spec in specs:
            print(f"  {spec.index:>3}  {spec.label}")
        return 0
    if os.geteuid() != 0:
        print("chaos.py needs root (it starts a lab: namespaces, libvirtd, QEMU)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    load = load_line(os.getloadavg())
    started = time.monotonic()
    lab_dir = Path(tempfile.mkdtemp(prefix="ferry-chaos-", dir="/tmp"))
    lab = Lab(lab_dir, cache_dir=args.lab_cache, cli_config=lab_dir / "operator-cli.toml")
    campaign = Campaign(lab, settings)
    controls: list[c.ControlResult] = []
    interrupted = ""
    try:
        say(f"lab in {lab_dir}: host1, host2 (image fs {IMAGE_FS}), 3 etcd members, 2 coordinators")
        start_lab(lab)
        if args.control:
            controls = control_run(lab, settings, args.control, controls)
        else:
            campaign.run(specs)
    except KeyboardInterrupt as exc:  # the trials done so far are still reported
        interrupted = f"interrupted ({exc or 'Ctrl-C'}) after {len(campaign.results) or len(controls)} trials"
        say(interrupted)
    finally:
        if args.keep_logs is not None:
            keep_logs(lab_dir, args.keep_logs)
        say("taking the lab down")
        try:
            report = lab.down()
            say(f"lab down in {report.seconds:.1f} s; left over: {', '.join(report.leftovers) or 'nothing'}")
        finally:
            shutil.rmtree(lab_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    results = campaign.results
    if args.control:
        if args.output == "json":
            print(json.dumps({"control": [r.__dict__ for r in controls], "seconds": round(seconds, 1)}, indent=2))
        else:
            print(header(f"control run, {len(controls)} migrations, no faults", settings, load, seconds) + "\n")
            print(c.control_table(controls))
            for r in controls:
                if r.boots > 1 or not r.ok:
                    print(f"- {r.mode} {r.kind}: {'ok' if r.ok else 'failed ' + r.note}; {r.boots} boots; {r.panic}")
        return 0 if all(r.ok for r in controls) else 1
    report_json = json.dumps(
        {
            "seed": seed,
            "seconds": round(seconds, 1),
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.__dict__.items()},
            "summary": [dict(zip(c.SUMMARY_HEADERS, row, strict=True)) for row in c.summary_rows(results)],
            "trials": [r.to_json() for r in results],
            "interrupted": interrupted,
        },
        indent=2,
    )
    if args.keep_logs is not None:
        (args.keep_logs / "chaos.json").write_text(report_json + "\n")
    if args.output == "json":
        print(report_json)
    else:
        what = f"{len(results)} of {len(specs)} trials, seed {seed}" + (f" ({interrupted})" if interrupted else "")
        print(header(what, settings, load, seconds) + "\n")
        print(c.summary_table(results) + "\n")
        print(c.trials_table(results))
        report = c.break_report(results)
        if report:
            print("\nBroken trials, with the record's history:\n")
            print(report)
    return 130 if interrupted else c.exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
