"""Taking a lab down: exactly the processes state.json records, in stop order, then proof that
nothing of the lab is left.

Order: guests are destroyed through their libvirtd; agents, coordinators, etcd members,
libvirtds stop (SIGTERM, SIGKILL after a grace period) rank by rank, each rank in parallel;
QEMU processes libvirt recorded and that are still in a host's mount namespace are killed;
then the holders, whose namespaces (and every mount in them) disappear with them.
Finally every process still inside the lab's namespaces is reported, and killed when the
namespace is one whose live holder we checked at the start (PID + start time): nobody else
can have started processes there.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
from dataclasses import dataclass

from ferry.errors import FerryError, Internal
from ferry.lab import hosts, procs
from ferry.lab.procs import SYSTEM_CLOCK, Clock
from ferry.lab.state import STOP_RANK, Component, HostRecord, LabState
from ferry.lab.topology import LabPaths

log = logging.getLogger("ferry.lab")

GRACE_S = {"libvirtd": 15.0, "agent": 10.0, "holder": 5.0}
DEFAULT_GRACE_S = 10.0


@dataclass(frozen=True)
class DownReport:
    lab_dir: str
    was_up: bool = True
    stopped: tuple[tuple[str, str], ...] = ()  # (component, what happened)
    guests_destroyed: tuple[str, ...] = ()  # "host1/demo"
    leftovers: tuple[str, ...] = ()  # "PID cmdline" found after stopping
    seconds: float = 0.0


def take_down(paths: LabPaths, state: LabState, *, clock: Clock = SYSTEM_CLOCK) -> DownReport:
    started = clock.now()
    vouched = _namespaces_of_live_holders(state)
    problems: list[str] = []

    destroyed = _destroy_guests(state)
    holders = [c for c in state.components if c.kind == "holder"]
    others = [c for c in state.components if c.kind != "holder"]
    stopped = _stop_by_rank(others, problems, clock)
    for host in state.hosts:
        if host.namespaces.get("mnt") not in vouched:
            continue
        for pid in hosts.qemu_pids(paths, host):
            log.info("killing QEMU %d left in %s", pid, host.name)
            procs.kill_pid(pid)
    stopped += _stop_by_rank(holders, problems, clock)

    # Only namespaces whose live holder we checked at the start are searched: a recorded
    # namespace id of a lab that is long gone may have been reused by someone else's.
    leftovers = procs.pids_in_namespaces(vouched)
    report_leftovers = tuple(f"{pid} {cmd}" for pid, cmd in sorted(leftovers.items()))
    for pid, cmd in leftovers.items():
        log.warning("killing process %d left in the lab's namespaces: %s", pid, cmd)
        procs.kill_pid(pid, signal.SIGKILL)
    procs.wait_until(lambda: not procs.pids_in_namespaces(vouched), 10.0, clock=clock)

    still_running = [c.name for c in state.components if procs.is_alive(c.process)]
    still_inside = procs.pids_in_namespaces(vouched)
    if still_running or still_inside or problems:
        raise Internal(
            "lab not completely down: "
            + "; ".join(
                [
                    *problems,
                    *(f"{n} still runs" for n in still_running),
                    *(f"process {p} ({c}) still in the lab's namespaces" for p, c in still_inside.items()),
                ]
            ),
            reason="LAB_DOWN_INCOMPLETE",
            hint=f"state kept in {paths.state_file}; look at these processes, then run ferry-lab down again",
        )
    if paths.state_file.exists():
        os.replace(paths.state_file, paths.root / "last-state.json")
    seconds = clock.now() - started
    log.debug("lab down in %.1f s (%d guests destroyed)", seconds, len(destroyed))
    return DownReport(
        lab_dir=str(paths.root),
        stopped=tuple(stopped),
        guests_destroyed=tuple(destroyed),
        leftovers=report_leftovers,
        seconds=seconds,
    )


def _namespaces_of_live_holders(state: LabState) -> set[str]:
    vouched: set[str] = set()
    for component in state.components:
        if component.kind == "holder" and procs.is_alive(component.process):
            assert component.process is not None
            vouched |= set(procs.namespace_ids(component.process.pid).values())
    return vouched


def _destroy_guests(state: LabState) -> list[str]:
    running = [h for h in state.hosts if procs.is_alive(_process_of(state, f"{h.name}/libvirtd"))]
    if not running:
        return []
    destroyed: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(running)) as pool:
        for host, names in zip(running, pool.map(_destroy_quietly, running), strict=False):
            destroyed += [f"{host.name}/{n}" for n in names]
    return destroyed


def _destroy_quietly(host: HostRecord) -> list[str]:
    try:
        return hosts.destroy_guests(host)
    except FerryError as exc:  # libvirtd not answering: its QEMUs are killed further down
        log.warning("cannot destroy guests on %s: %s", host.name, exc)
        return []


def _process_of(state: LabState, name: str) -> procs.ProcessRecord | None:
    component = state.component(name)
    return component.process if component is not None else None


def _stop_by_rank(components: list[Component], problems: list[str], clock: Clock) -> list[tuple[str, str]]:
    outcomes: list[tuple[str, str]] = []
    for rank in sorted({c.stop_rank for c in components}):
        group = [c for c in components if c.stop_rank == rank]

        def stop_one(component: Component) -> tuple[str, str]:
            grace = GRACE_S.get(component.kind, DEFAULT_GRACE_S)
            try:
                return component.name, procs.stop(component.process, grace=grace, clock=clock)
            except FerryError as exc:
                problems.append(f"{component.name}: {exc}")
                return component.name, "stuck"

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(group)) as pool:
            outcomes += list(pool.map(stop_one, group))
    return outcomes


__all__ = ["STOP_RANK", "DownReport", "take_down"]
