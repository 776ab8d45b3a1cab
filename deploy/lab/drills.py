"""Failure drills: signal one recorded lab process (``ferry-lab kill coordinator c1 --signal
KILL``) or restart it with the very command line it was started with (``ferry-lab restart
etcd s1``), then wait until it serves again.

Components are named as an operator says them: ``coordinator c1``, ``etcd s1``, ``agent host1``,
``libvirtd host1``, or by their recorded name (``coordinator/c1``, ``host1/agent``), or by the
short id alone when that is unambiguous (``c1``, ``s1``). Holders are refused: they keep the
lab's namespaces; killing one would take a whole host (or the lab network) away for good.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from ferry.errors import DeadlineExceeded, FailedPrecondition, FerryError, InvalidArgument, NotFound
from ferry.lab import agents, control, hosts, pki, procs
from ferry.lab.controlplane import ETCD_CLUSTER_TOKEN
from ferry.lab.etcd import restore_data_dir
from ferry.lab.procs import SYSTEM_CLOCK, Clock
from ferry.lab.state import CORE, Component, LabState
from ferry.lab.teardown import DEFAULT_GRACE_S, GRACE_S
from ferry.lab.topology import LabPaths

SIGNALS: dict[str, signal.Signals] = {
    "KILL": signal.SIGKILL,
    "TERM": signal.SIGTERM,
    "STOP": signal.SIGSTOP,
    "CONT": signal.SIGCONT,
}
EXIT_WAIT_S = 15.0
SETTLE_S = 0.5

Record = Callable[[Component], None]


def spoken_name(component: Component) -> str:
    """``coordinator/c1`` -> ``coordinator c1``; ``host1/agent`` -> ``agent host1``."""
    head, _, tail = component.name.partition("/")
    if not tail:
        return component.name
    return f"{head} {tail}" if head == component.kind else f"{tail} {head}"


KINDS = frozenset({"coordinator", "etcd", "agent", "libvirtd"})


def groups(words: Sequence[str]) -> list[tuple[str, ...]]:
    """The components a command line names, one after the other: several "KIND NAME" pairs, or
    one component however it is spoken. Pure.

    >>> groups(["agent", "host1", "agent", "host2"])
    [('agent', 'host1'), ('agent', 'host2')]
    >>> groups(["coordinator c1"]), groups(["c1"])
    ([('coordinator', 'c1')], [('c1',)])
    """
    parts = tuple(p for word in words for p in word.split())
    if len(parts) > 2 and len(parts) % 2 == 0 and all(k in KINDS for k in parts[::2]):
        return [parts[i : i + 2] for i in range(0, len(parts), 2)]
    return [parts]


def resolve(state: LabState, words: Sequence[str]) -> Component:
    """The component an operator means (see the module doc). Pure."""
    parts = tuple(p for word in words for p in word.split())
    candidates: list[Component] = []
    if len(parts) == 2:
        kind, ident = parts
        names = {f"{kind}/{ident}", f"{ident}/{kind}"}
        candidates = [c for c in state.components if c.name in names and c.kind == kind]
    elif len(parts) == 1:
        exact = state.component(parts[0])
        candidates = (
            [exact]
            if exact
            else [
                c
                for c in state.components
                if parts[0] in c.name.split("/") and c.kind != "holder" and c.kind != parts[0]
            ]
        )
    known = ", ".join(spoken_name(c) for c in state.components if c.kind != "holder")
    if len(candidates) != 1:
        what = " ".join(parts) or "(nothing)"
        problem = "is ambiguous" if candidates else "is not a component of this lab"
        raise NotFound(f"{what!r} {problem}", reason="LAB_NO_COMPONENT", hint=f"name one of: {known}")
    component = candidates[0]
    if component.kind == "holder":
        raise FailedPrecondition(
            f"{component.name} is the holder of the lab's namespaces",
            reason="LAB_HOLDER_PROTECTED",
            hint=f"kill what runs there instead: {known}",
        )
    return component


def signal_by_name(name: str) -> signal.Signals:
    try:
        return SIGNALS[name.upper().removeprefix("SIG")]
    except KeyError:
        raise InvalidArgument(
            f"signal {name!r} is not one the drills use",
            reason="LAB_BAD_SIGNAL",
            hint=f"use one of {', '.join(SIGNALS)}",
        ) from None


def kill(state: LabState, words: Sequence[str], signame: str = "KILL", *, clock: Clock = SYSTEM_CLOCK) -> str:
    """Send the signal to the recorded PID; after KILL/TERM wait until the process is gone.
    Returns what happened, for the operator."""
    component = resolve(state, words)
    signum = signal_by_name(signame)
    who = spoken_name(component)
    if not procs.send_signal(component.process, signum):
        raise FailedPrecondition(
            f"{who} is not running", reason="LAB_NOT_RUNNING", hint=f"start it again: ferry-lab restart {who}"
        )
    assert component.process is not None
    pid = component.process.pid
    if signum not in (signal.SIGKILL, signal.SIGTERM):
        return f"{who} (pid {pid}): sent SIG{signum.name.removeprefix('SIG')}"
    gone = procs.wait_until(lambda: not procs.is_alive(component.process), EXIT_WAIT_S, clock=clock, interval=0.05)
    return f"{who} (pid {pid}): {signum.name} -> " + ("exited" if gone else "STILL RUNNING")


def restart(state: LabState, words: Sequence[str], record: Record, *, clock: Clock = SYSTEM_CLOCK) -> Component:
    """Stop the component if it runs (SIGTERM, SIGKILL after its grace), start it again with
    its recorded command line and log, record the new process and wait until it serves."""
    old = resolve(state, words)
    if old.process is None:
        raise FailedPrecondition(
            f"{spoken_name(old)} was never started, nothing to repeat",
            reason="LAB_NEVER_STARTED",
            hint="ferry-lab down, then up",
        )
    procs.stop(old.process, grace=GRACE_S.get(old.kind, DEFAULT_GRACE_S), clock=clock)
    holder = state.holder(old.place)
    if old.kind == "libvirtd" and holder is not None and procs.is_alive(holder):
        hosts.restore_etc_binds(LabPaths(Path(state.lab_dir)), old.place, holder.pid)
    for address in old.endpoints.values():
        if address.startswith("unix:"):
            _remove_stale_socket(Path(address.removeprefix("unix:")))
    log = Path(old.process.log) if old.process.log else None
    process = procs.spawn(old.process.argv, log=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    fresh = replace(old, process=process, error="")
    record(fresh)
    try:
        _wait_ready(state, fresh, clock)
    except FerryError as exc:
        record(replace(fresh, error=f"restart: {exc.message}"))
        raise
    return fresh


def _remove_stale_socket(path: Path) -> None:
    """The socket of a process that is gone (a crash leaves it behind)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


def _wait_ready(state: LabState, component: Component, clock: Clock) -> None:
    if component.kind in ("agent", "coordinator") and "unix" in component.endpoints:
        [ready] = agents.wait_serving([component], clock=clock)
        if ready.error:
            raise DeadlineExceeded(ready.error, reason="LAB_RESTART_FAILED", hint="read the log named in the message")
    elif component.kind == "etcd":
        core = state.holder(CORE)
        assert core is not None
        admin = pki.etcd_admin(LabPaths(Path(state.lab_dir)))
        control.wait_etcd_healthy(core.pid, [component], clock=clock, tls=admin)
    elif component.kind == "libvirtd":
        host = state.host(component.place)
        assert host is not None and component.process is not None
        hosts.wait_for_libvirtd(
            host.name, host.libvirt_uri, component.process, Path(component.process.log), clock=clock
        )
    else:
        clock.sleep(SETTLE_S)
        if not procs.is_alive(component.process):
            assert component.process is not None
            raise FailedPrecondition(
                f"{spoken_name(component)} exited right after its restart: {procs.log_tail(component.process.log)}",
                reason="LAB_RESTART_FAILED",
                hint=f"read {component.process.log}",
            )


def etcd_snapshot(state: LabState, path: Path) -> str:
    """``etcdctl snapshot save``: the lab's etcd as it is now, into ``path`` (a backup)."""
    core = state.holder(CORE)
    members = state.of_kind("etcd")
    if core is None or not members:
        raise FailedPrecondition("the lab runs no etcd", reason="LAB_NO_CONTROL_PLANE", hint="ferry-lab up")
    paths = LabPaths(Path(state.lab_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    admin = pki.etcd_admin(paths)
    urls = [m.endpoints["client"] for m in members]
    # etcdctl takes a snapshot from one member only (it refuses several endpoints): the raft leader's
    one = control.etcd_leader_url(core.pid, urls, admin) or urls[0]
    result = control.etcdctl(core.pid, [one], "snapshot", "save", str(path), tls=admin, timeout_s=10.0)
    if result.returncode != 0 or not path.is_file():
        raise FailedPrecondition(
            f"etcdctl snapshot save failed: {(result.stderr or result.stdout).strip()[-300:]}",
            reason="LAB_SNAPSHOT_FAILED",
            hint="check that etcd is healthy: ferry-lab status",
        )
    return f"etcd saved to {path} ({path.stat().st_size} bytes)"


def etcd_restore(
    state: LabState, snapshot: Path, record: Record, *, bump_revision: int = 0, clock: Clock = SYSTEM_CLOCK
) -> str:
    """Disaster recovery as an operator does it: stop every member, restore each data dir from
    ``snapshot`` (``etcdutl snapshot restore``, revisions ``bump_revision`` above the snapshot's
    when given; the old one is kept as DATA.before-restore), start
    them again with their recorded command lines and wait until they are healthy. Coordinators
    and agents keep running: they see etcd's history go back."""
    if not snapshot.is_file():
        raise NotFound(f"no snapshot at {snapshot}", reason="LAB_NO_SNAPSHOT", hint="ferry-lab etcd-snapshot FILE")
    members = state.of_kind("etcd")
    if not members:
        raise FailedPrecondition("the lab runs no etcd", reason="LAB_NO_CONTROL_PLANE", hint="ferry-lab up")
    peers = {m.name.partition("/")[2]: m.endpoints["peer"] for m in members}
    for m in members:
        procs.stop(m.process, grace=GRACE_S.get("etcd", DEFAULT_GRACE_S), clock=clock)
    for m in members:
        name = m.name.partition("/")[2]
        restore_data_dir(snapshot, name, Path(m.endpoints["data"]), peers, ETCD_CLUSTER_TOKEN, bump_revision)
    started = []
    for m in members:
        assert m.process is not None
        log = Path(m.process.log) if m.process.log else None
        fresh = replace(m, process=procs.spawn(m.process.argv, log=log), error="")
        record(fresh)
        started.append(fresh)
    for fresh in started:
        _wait_ready(state, fresh, clock)
    return f"etcd restored from {snapshot}: {', '.join(spoken_name(m) for m in started)} started on it"
