"""``Lab``: the lab's Python API (what ``ferry-lab`` and the lab tests call).

    lab = Lab("/tmp/my-lab")
    lab.up(hosts=2)                       # core namespace, host1..2 with libvirtd, agents
    lab.guest("demo", host="host1")       # boots, waits for the first heartbeat
    lab.heartbeats("demo")                # -> 7
    lab.virsh("host1", "list", "--all")
    lab.down()                            # stops exactly what state.json records

More processes in the core namespace (etcd members, coordinators) go through
``start_component``: they are recorded like the rest, shown by ``status`` and stopped by
``down`` in their kind's stop order.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, NotFound
from ferry.lab import agents as agents_mod
from ferry.lab import guests, hosts, packages, procs, teardown
from ferry.lab import state as state_mod
from ferry.lab import status as status_mod
from ferry.lab.image import GuestImage, build_guest
from ferry.lab.procs import SYSTEM_CLOCK, Clock, CommandResult
from ferry.lab.state import CORE, Component, HostRecord, LabState
from ferry.lab.teardown import DownReport
from ferry.lab.topology import (
    CORE_ADDRESS,
    HostPlan,
    LabPaths,
    lab_dir_problem,
    plan_hosts,
    render_etc_hosts,
    with_qemu_user,
)

log = logging.getLogger("ferry.lab")

DEFAULT_LAB_DIR = Path("/tmp/ferry-lab")


def default_lab_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$FERRY_LAB_DIR`` or /tmp/ferry-lab."""
    return Path(environ.get("FERRY_LAB_DIR") or DEFAULT_LAB_DIR)


class Lab:
    """One lab, identified by its directory."""

    def __init__(self, path: str | Path | None = None, *, cache_dir: str | Path | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        """``cache_dir`` keeps libvirt's QEMU capabilities between lab starts (default
        $FERRY_LAB_CACHE_DIR, else <lab>/cache; labs may share one)."""
        self.paths = LabPaths(Path(path).absolute() if path else default_lab_dir().absolute())
        cache = cache_dir or os.environ.get("FERRY_LAB_CACHE_DIR") or self.paths.cache
        self.cache_dir = Path(cache).absolute()
        self.clock = clock
        self._state_lock = threading.Lock()
        self._state: LabState | None = None

    @property
    def dir(self) -> Path:
        return self.paths.root

    # ------------------------------------------------------------ state

    def state(self) -> LabState | None:
        """What state.json records (None: no lab was started here, or it was taken down)."""
        return state_mod.load(self.paths.state_file)

    def require_state(self) -> LabState:
        current = self.state()
        if current is None:
            raise FailedPrecondition(f"no lab is up in {self.dir}", reason="LAB_NOT_UP",
                                     hint=f"start one: ferry-lab --lab-dir {self.dir} up")
        return current

    def _record(self, component: Component) -> None:
        """Add a started process to state.json at once (thread-safe), so that a failure or
        Ctrl-C right after leaves nothing down() does not know about."""
        with self._state_lock:
            assert self._state is not None
            self._state = self._state.with_component(component)
            state_mod.save(self.paths.state_file, self._state)

    def _record_host(self, host: HostRecord) -> None:
        with self._state_lock:
            assert self._state is not None
            self._state = self._state.with_host(host)
            state_mod.save(self.paths.state_file, self._state)

    # ------------------------------------------------------------ up

    def up(self, hosts: int = 2, *, agents: bool = True, install: bool = True,
           agent_command: Sequence[str] | None = None) -> LabState:
        """Start the lab: core namespace, ``hosts`` lab hosts in parallel (each with its own
        libvirtd), the guest image, and a Ferry agent per host (unless ``agents`` is False;
        ``agent_command`` replaces ``python -m ferry.agent.main``, it gets ``--config FILE``).
        Missing Debian packages are installed (``install``) or refused.

        A lab that is already up in this dir with the same number of hosts is reused; one that
        differs or is half dead is refused. A failure while starting stops everything started
        so far and raises.
        """
        if os.geteuid() != 0:
            raise FailedPrecondition("the lab needs root (namespaces, mounts, libvirtd)",
                                     reason="LAB_NOT_ROOT", hint="run ferry-lab as root")
        plans = plan_hosts(self.paths, hosts)
        problem = lab_dir_problem(self.dir, tuple(p.name for p in plans))
        if problem:
            raise FailedPrecondition(problem, reason="LAB_DIR_UNUSABLE",
                                     hint="pick another --lab-dir (or FERRY_LAB_DIR), e.g. "
                                          "/tmp/ferry-lab")
        with state_mod.locked(self.paths.lock_file):
            existing = self.state()
            if existing is not None:
                reused = self._reuse_or_refuse(existing, hosts)
                if reused is not None:
                    return reused
            packages.ensure_installed(install=install)
            started = self.clock.now()
            self._fresh_dirs()
            self._state = LabState(lab_dir=str(self.dir), created=_now_iso(),
                                   core_address=CORE_ADDRESS)
            state_mod.save(self.paths.state_file, self._state)
            try:
                self._start(plans, agents, agent_command)
            except BaseException as exc:
                log.error("lab start failed (%s); stopping what was started", exc)
                teardown.take_down(self.paths, self.state() or self._state, clock=self.clock)
                raise
            log.info("lab up in %.1f s: %s", self.clock.now() - started, self.dir)
            return self.require_state()

    def _reuse_or_refuse(self, existing: LabState, hosts: int) -> LabState | None:
        alive = status_mod.lab_processes_alive(existing)
        if alive == "all" and len(existing.hosts) == hosts:
            log.info("lab already up in %s with %d hosts: reusing it", self.dir, hosts)
            return existing
        if alive != "none":
            shape = f"{len(existing.hosts)} hosts" + (", some parts dead" if alive == "some"
                                                      else "")
            raise AlreadyExists(f"a lab is already up in {self.dir} ({shape})",
                                reason="LAB_ALREADY_UP",
                                hint=f"use it, or stop it first: ferry-lab --lab-dir {self.dir}"
                                     " down")
        log.info("previous lab in %s is gone; starting afresh", self.dir)
        teardown.take_down(self.paths, existing, clock=self.clock)
        return None

    def _fresh_dirs(self) -> None:
        """A new lab starts empty; the guest build (guest/) is kept as a cache."""
        for sub in (self.paths.core, self.paths.hosts, self.paths.shared):
            if sub.exists():
                shutil.rmtree(sub)
        for sub in (self.paths.core, self.paths.hosts, self.paths.shared, self.paths.guest):
            sub.mkdir(parents=True, exist_ok=True)

    def _start(self, plans: Sequence[HostPlan], agents: bool,
               agent_command: Sequence[str] | None) -> None:
        t0 = self.clock.now()
        core = hosts.start_core(self.paths, self._record, clock=self.clock)
        with self._state_lock:
            assert self._state is not None
            self._state = replace(self._state, core_namespaces=procs.namespace_ids(core.pid))
            state_mod.save(self.paths.state_file, self._state)
        log.info("core namespace up (holder %d, %s on br0)", core.pid, CORE_ADDRESS)
        passwd, group = with_qemu_user(Path("/etc/passwd").read_text(),
                                       Path("/etc/group").read_text())
        etc_hosts = render_etc_hosts(tuple(plans))
        caps_cache = self.cache_dir / "qemu-capabilities"

        def one_host(plan: HostPlan) -> HostRecord:
            host = hosts.start_host(self.paths, plan, core, passwd, group, etc_hosts,
                                    self._record, caps_cache=caps_cache, clock=self.clock)
            self._record_host(host)
            log.info("%s up in %.1f s: %s, libvirtd %s", plan.name, self.clock.now() - t0,
                     plan.address, plan.libvirt_uri)
            return host

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(plans) + 1) as pool:
            image = pool.submit(build_guest, self.paths)
            started = [pool.submit(one_host, plan) for plan in plans]
            for future in concurrent.futures.as_completed([image, *started]):
                future.result()    # the first failure is raised (the others finish first)
        hosts.save_qemu_capabilities(self.paths, plans[0].name, caps_cache)
        if agents:
            self._start_agents(plans, agent_command)

    def _start_agents(self, plans: Sequence[HostPlan],
                      command: Sequence[str] | None) -> None:
        current = self.require_state()
        started = []
        for plan in plans:
            holder = current.holder(plan.name)
            assert holder is not None
            agent = agents_mod.start_agent(self.paths, plan, holder, command)
            self._record(agent)
            started.append(agent)
        for agent in agents_mod.wait_for_agents(started, clock=self.clock):
            self._record(agent)
            if agent.error:
                log.warning("agent %s failed: %s", agent.name, agent.error)
            else:
                log.info("agent %s serving on %s", agent.name, agent.endpoints["unix"])

    # ------------------------------------------------------------ down

    def down(self) -> DownReport:
        """Destroy the guests, stop agents, libvirtds and holders (by recorded PID), wait for
        them to exit and check that no process is left in the lab's namespaces."""
        with state_mod.locked(self.paths.lock_file):
            current = self.state()
            if current is None:
                return DownReport(lab_dir=str(self.dir), was_up=False)
            return teardown.take_down(self.paths, current, clock=self.clock)

    # ------------------------------------------------------------ components in namespaces

    def start_component(self, name: str, kind: str, argv: Sequence[str], *,
                        place: str = CORE, log_file: Path | None = None,
                        endpoints: Mapping[str, str] | None = None) -> Component:
        """Start ``argv`` inside ``place``'s namespaces ("core" or a host) and record it, so
        that status shows it and down stops it (e.g. etcd members, coordinators)."""
        holder = self.require_state().holder(place)
        if holder is None or not procs.is_alive(holder):
            raise FailedPrecondition(f"namespace {place!r} of the lab is not up",
                                     reason="LAB_NOT_UP", hint="ferry-lab up first")
        process = procs.spawn(self.exec_argv(place, argv),
                              log=log_file or self.dir / place / f"{name}.log")
        component = Component(name=name, kind=kind, place=place, process=process,
                              endpoints=dict(endpoints or {}))
        self.add_component(component)
        return component

    def add_component(self, component: Component) -> None:
        """Record a process started elsewhere (e.g. by ferry.lab.etcd inside the core
        namespace) so that status reports it and down stops it by its kind's stop rank."""
        with state_mod.locked(self.paths.lock_file):
            current = self.require_state()
            state_mod.save(self.paths.state_file, current.with_component(component))

    # ------------------------------------------------------------ lookups

    def host(self, name: str) -> HostRecord:
        record = self.require_state().host(name)
        if record is None:
            raise NotFound(f"no host {name!r} in the lab in {self.dir}", reason="LAB_NO_HOST",
                           hint="see ferry-lab status for the lab's hosts")
        return record

    def hosts(self) -> list[str]:
        return [h.name for h in self.require_state().hosts]

    def host_ip(self, host: str) -> str:
        return self.host(host).address

    def libvirt_uri(self, host: str) -> str:
        """``qemu:///system?socket=<lab>/hosts/HOST/run/libvirt-sock`` (root namespace)."""
        return self.host(host).libvirt_uri

    def tcp_uri(self, host: str) -> str:
        """``qemu+tcp://ADDRESS/system``: how other lab hosts reach this libvirtd."""
        return self.host(host).tcp_uri

    def agent_address(self, host: str) -> str:
        """``unix:<lab>/hosts/HOST/agent.sock``: the agent's gRPC address from the root ns."""
        return self.host(host).agent_address

    def exec_argv(self, place: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``place``'s namespaces ("core" or a host)."""
        holder = self.require_state().holder(place)
        if holder is None:
            raise NotFound(f"no {place!r} in the lab in {self.dir}", reason="LAB_NO_HOST",
                           hint="see ferry-lab status for the lab's hosts")
        if place == CORE:
            return hosts.nsenter(holder.pid, argv, mount=False)
        return hosts.nsenter(holder.pid, argv)

    # ------------------------------------------------------------ operator conveniences

    def virsh(self, host: str, *args: str, timeout: float = 60.0,
              check: bool = True) -> CommandResult:
        """``virsh -c <host's unix URI> ARGS`` from the root namespace."""
        return procs.run(hosts.virsh_argv(self.libvirt_uri(host), args), timeout=timeout,
                         check=check, reason="LAB_VIRSH_FAILED")

    def host_exec(self, host: str, *argv: str, timeout: float = 60.0,
                  check: bool = True) -> CommandResult:
        """Run a command inside a host's (or the core's) namespaces."""
        return procs.run(self.exec_argv(host, argv), timeout=timeout, check=check)

    # ------------------------------------------------------------ guests

    def guest_image(self) -> GuestImage:
        return build_guest(self.paths)

    def guest(self, name: str, host: str, *, memory_mib: int = 256,
              disks: Sequence[str] = ("256M",), shared: bool = False,
              dirty_rate: str | None = None, dirty_mb: int = 64, nic: bool = True,
              timeout: float = guests.BOOT_TIMEOUT_S) -> guests.GuestInfo:
        """Create disks, define and start a test guest on ``host``; wait for its first
        heartbeat. See guests.create_guest."""
        return guests.create_guest(self, name, host, memory_mib=memory_mib, disks=disks,
                                   shared=shared, dirty_rate=dirty_rate, dirty_mb=dirty_mb,
                                   nic=nic, timeout=timeout)

    def console(self, name: str) -> str:
        """Everything the guest printed on its serial console (across migrations)."""
        try:
            return self.paths.console_log(name).read_text(errors="replace")
        except FileNotFoundError:
            raise NotFound(f"no console log for guest {name!r}", reason="LAB_NO_GUEST",
                           hint="create it with ferry-lab guest NAME --host HOST") from None

    def heartbeats(self, name: str) -> int:
        """The count of the guest's last heartbeat (0: none yet)."""
        return guests.last_heartbeat(self.console(name))

    def wait_for_heartbeat(self, name: str, above: int = 0, timeout: float = 30.0) -> int:
        """Wait until the guest's heartbeat count exceeds ``above``; returns the new count."""
        return guests.wait_for_heartbeat(self, name, above=above, timeout=timeout)

    # ------------------------------------------------------------ status

    def status(self, *, probe: bool = True) -> dict[str, Any]:
        """Every component with PID, addresses and whether it runs (JSON-ready). With
        ``probe``, agents get a health check and hosts list their guests."""
        return status_mod.build_status(self.dir, self.state(), probe=probe)


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["DEFAULT_LAB_DIR", "DownReport", "FerryError", "Lab", "default_lab_dir"]
