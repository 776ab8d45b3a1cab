"""``Lab``: the lab's Python API (what ``ferry-lab`` and the lab tests call).

    lab = Lab("/tmp/my-lab")
    lab.up(hosts=2, control_plane=ControlPlane(coordinators=2))
                                          # core namespace, host1..2 with libvirtd, agents,
                                          # etcd s1 and coordinators c1, c2 in the core namespace
    lab.guest("demo", host="host1")       # boots, waits for the first heartbeat
    lab.heartbeats("demo")                # -> 7
    lab.virsh("host1", "list", "--all")
    lab.leader()                          # -> "c1" (the ``leader`` key in etcd)
    lab.kill("coordinator c1")            # SIGKILL by recorded PID (a drill)
    lab.restart("coordinator c1")         # same command line, waits until it serves
    lab.down()                            # stops exactly what state.json records

More processes in the core namespace go through ``start_component``: they are recorded like the
rest, shown by ``status`` and stopped by ``down`` in their kind's stop order.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument, NotFound
from ferry.lab import agents as agents_mod
from ferry.lab import cliconfig, control, drills, faults, firewall, guests, hosts, packages, pki, procs, teardown
from ferry.lab import state as state_mod
from ferry.lab import status as status_mod
from ferry.lab.controlplane import (
    ETCD_SERVER_NAME,
    ControlPlane,
    ControlPlanePlan,
    Registry,
    control_plane_sockets,
    coordinators_dir,
    etcd_dir,
    plan_control_plane,
    render_cli_toml,
)
from ferry.lab.etcd import find_etcd_binary
from ferry.lab.image import GuestImage, build_guest
from ferry.lab.procs import SYSTEM_CLOCK, Clock, CommandResult
from ferry.lab.state import CORE, Component, HostRecord, LabState
from ferry.lab.teardown import DownReport
from ferry.lab.topology import (
    CORE_ADDRESS,
    MAX_SOCKET_PATH,
    HostPlan,
    LabPaths,
    lab_dir_problem,
    plan_hosts,
    render_etc_hosts,
    with_qemu_user,
)
from ferry.rpc import Tls

log = logging.getLogger("ferry.lab")

DEFAULT_LAB_DIR = Path("/tmp/ferry-lab")


def default_lab_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$FERRY_LAB_DIR`` or /tmp/ferry-lab."""
    return Path(environ.get("FERRY_LAB_DIR") or DEFAULT_LAB_DIR)


class Lab:
    """One lab, identified by its directory."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        cache_dir: str | Path | None = None,
        cli_config: str | Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """``cache_dir`` keeps libvirt's QEMU capabilities between lab starts (default
        $FERRY_LAB_CACHE_DIR, else <lab>/cache; labs may share one). ``cli_config``: the
        operator's ``ferry`` CLI config that ``up`` writes when it is free or already points
        into this lab (default $XDG_CONFIG_HOME/ferry/cli.toml, else ~/.config/ferry/cli.toml)."""
        self.paths = LabPaths(Path(path).absolute() if path else default_lab_dir().absolute())
        cache = cache_dir or os.environ.get("FERRY_LAB_CACHE_DIR") or self.paths.cache
        self.cache_dir = Path(cache).absolute()
        self.clock = clock
        self._cli_config = Path(cli_config) if cli_config else None
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
            raise FailedPrecondition(
                f"no lab is up in {self.dir}", reason="LAB_NOT_UP", hint=f"start one: ferry-lab --lab-dir {self.dir} up"
            )
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

    @property
    def user_cli_config(self) -> Path:
        """The operator's ``ferry`` CLI config this lab writes when it may."""
        return self._cli_config or cliconfig.user_cli_config()

    def up(
        self,
        hosts: int = 2,
        *,
        agents: bool = True,
        install: bool = True,
        agent_command: Sequence[str] | None = None,
        control_plane: ControlPlane | None = None,
        coordinator_command: Sequence[str] | None = None,
        image_fs: Mapping[str, int] | None = None,
    ) -> LabState:
        """Start the lab: core namespace, ``hosts`` lab hosts in parallel (each with its own
        libvirtd), the guest image, and a Ferry agent per host (unless ``agents`` is False;
        ``agent_command`` replaces ``python -m ferry.agent.main``, it gets ``--config FILE``).
        Missing Debian packages are installed (``install``) or refused.

        With ``control_plane``, etcd and the coordinators start in the core namespace while
        the hosts boot, the agents register in etcd, and ``up`` returns once a coordinator
        leads and lists the agents' hosts; the ``ferry`` CLI config is written (see
        ``user_cli_config``, and always <lab>/cli.toml). A coordinator that does not start is
        recorded as failed, like an agent; etcd that does not start fails ``up``.

        A lab that is already up in this dir with the same number of hosts (and, when one is
        asked for, the same control plane) is reused; one that differs or is half dead is
        refused. A failure while starting stops everything started so far and raises.

        ``image_fs`` (host name -> bytes) gives those hosts a small image filesystem of their
        own (/var/lib/libvirt/images), e.g. a target whose disk can fill up mid-copy.
        """
        if os.geteuid() != 0:
            raise FailedPrecondition(
                "the lab needs root (namespaces, mounts, libvirtd)", reason="LAB_NOT_ROOT", hint="run ferry-lab as root"
            )
        try:
            plans = plan_hosts(self.paths, hosts, image_fs)
        except ValueError as exc:
            raise InvalidArgument(str(exc), reason="LAB_BAD_SHAPE", hint="see ferry-lab up --help") from None
        if control_plane is not None:
            _check_control_plane(control_plane)
        problem = lab_dir_problem(self.dir, tuple(p.name for p in plans))
        for sock in control_plane_sockets(self.paths, control_plane) if control_plane else ():
            if not problem and len(str(sock)) > MAX_SOCKET_PATH:
                problem = f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes"
        if problem:
            raise FailedPrecondition(
                problem,
                reason="LAB_DIR_UNUSABLE",
                hint="pick another --lab-dir (or FERRY_LAB_DIR), e.g. /tmp/ferry-lab",
            )
        with state_mod.locked(self.paths.lock_file):
            existing = self.state()
            if existing is not None:
                reused = self._reuse_or_refuse(existing, plans, control_plane)
                if reused is not None:
                    return reused
            packages.ensure_installed(install=install)
            started = self.clock.now()
            self._fresh_dirs()
            pki.create(self.paths, plans)  # the lab CA and a certificate per identity, before anything starts
            self._state = LabState(lab_dir=str(self.dir), created=_now_iso(), core_address=CORE_ADDRESS)
            state_mod.save(self.paths.state_file, self._state)
            try:
                self._start(plans, agents, agent_command, control_plane, coordinator_command)
            except BaseException as exc:
                log.error("lab start failed (%s); stopping what was started", exc)
                current = self.state() or self._state
                teardown.take_down(self.paths, current, clock=self.clock)
                self._remove_cli_configs(current)
                raise
            log.info("lab up in %.1f s: %s", self.clock.now() - started, self.dir)
            return self.require_state()

    def _reuse_or_refuse(
        self, existing: LabState, plans: Sequence[HostPlan], control_plane: ControlPlane | None
    ) -> LabState | None:
        alive = status_mod.lab_processes_alive(existing)
        has = (len(existing.of_kind("etcd")), len(existing.of_kind("coordinator")))
        hosts = len(plans)
        image_fs = {p.name: p.image_fs_bytes for p in plans}
        same = [(h.name, h.image_fs_bytes) for h in existing.hosts] == list(image_fs.items()) and (
            control_plane is None or has == (control_plane.etcd_members, control_plane.coordinators)
        )
        if alive == "all" and same:
            log.info("lab already up in %s with %d hosts: reusing it", self.dir, hosts)
            dead = [
                drills.spoken_name(c)
                for c in existing.components
                if c.kind in ("etcd", "coordinator") and not procs.is_alive(c.process)
            ]
            if dead:
                log.warning("not running: %s (ferry-lab restart %s)", ", ".join(dead), dead[0])
            return existing
        if alive != "none":
            shape = f"{len(existing.hosts)} hosts"
            if has != (0, 0):
                shape += f", {has[0]} etcd, {has[1]} coordinators"
            if alive == "some":
                shape += ", some parts dead"
            raise AlreadyExists(
                f"a lab is already up in {self.dir} ({shape})",
                reason="LAB_ALREADY_UP",
                hint=f"use it, or stop it first: ferry-lab --lab-dir {self.dir} down",
            )
        log.info("previous lab in %s is gone; starting afresh", self.dir)
        teardown.take_down(self.paths, existing, clock=self.clock)
        self._remove_cli_configs(existing)
        return None

    def _fresh_dirs(self) -> None:
        """A new lab starts empty (etcd's data too); the guest build (guest/) is kept as a
        cache."""
        for sub in (
            self.paths.core,
            self.paths.hosts,
            self.paths.shared,
            etcd_dir(self.paths),
            coordinators_dir(self.paths),
            pki.pki_dir(self.paths),
        ):
            if sub.exists():
                shutil.rmtree(sub)
        for sub in (self.paths.core, self.paths.hosts, self.paths.shared, self.paths.guest):
            sub.mkdir(parents=True, exist_ok=True)

    def _start(
        self,
        plans: Sequence[HostPlan],
        agents: bool,
        agent_command: Sequence[str] | None,
        control_plane: ControlPlane | None,
        coordinator_command: Sequence[str] | None,
    ) -> None:
        t0 = self.clock.now()
        core = hosts.start_core(self.paths, self._record, clock=self.clock)
        with self._state_lock:
            assert self._state is not None
            self._state = replace(self._state, core_namespaces=procs.namespace_ids(core.pid))
            state_mod.save(self.paths.state_file, self._state)
        log.info("core namespace up (holder %d, %s on br0)", core.pid, CORE_ADDRESS)
        passwd, group = with_qemu_user(Path("/etc/passwd").read_text(), Path("/etc/group").read_text())
        etc_hosts = render_etc_hosts(tuple(plans))
        caps_cache = self.cache_dir / "qemu-capabilities"

        # only the hypervisors reach libvirtd and QEMU; only the core (coordinators, the metrics'
        # scrapers) the agents
        rules = firewall.render(
            firewall.Allowed(
                hypervisors=tuple(p.address for p in plans), controllers=(CORE_ADDRESS,), scrapers=(CORE_ADDRESS,)
            )
        )

        def one_host(plan: HostPlan) -> HostRecord:
            host = hosts.start_host(
                self.paths,
                plan,
                core,
                passwd,
                group,
                etc_hosts,
                self._record,
                caps_cache=caps_cache,
                clock=self.clock,
                firewall=rules,
            )
            self._record_host(host)
            log.info(
                "%s up in %.1f s: %s, libvirtd %s", plan.name, self.clock.now() - t0, plan.address, plan.libvirt_uri
            )
            return host

        etcd_tls = pki.etcd_member_tls(self.paths)
        cp_plan = plan_control_plane(self.paths, control_plane, etcd_tls) if control_plane else None
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(plans) + 2) as pool:
            image = pool.submit(build_guest, self.paths)
            started: list[concurrent.futures.Future[Any]] = [pool.submit(one_host, plan) for plan in plans]
            if cp_plan is not None:  # needs only the core namespace: starts beside the hosts
                started.append(
                    pool.submit(
                        control.start, cp_plan, plans, core, self._record, coordinator_command, clock=self.clock
                    )
                )
            for future in concurrent.futures.as_completed([image, *started]):
                future.result()  # the first failure is raised (the others finish first)
        hosts.save_qemu_capabilities(self.paths, plans[0].name, caps_cache)
        registry = (
            Registry(
                cp_plan.etcd_endpoints,
                server_name=ETCD_SERVER_NAME if etcd_tls is not None else "",
                etcd_pki=pki.etcd_pki_dir(self.paths) if etcd_tls is not None else None,
            )
            if cp_plan is not None
            else None
        )
        if agents:
            self._start_agents(plans, agent_command, registry)
        if cp_plan is not None:
            self._settle_control_plane(cp_plan, core)

    def _settle_control_plane(self, plan: ControlPlanePlan, core: procs.ProcessRecord) -> None:
        """Wait until a coordinator leads and lists the agents' hosts, then write the CLI
        config (the operator's too, when it is free or already ours)."""
        control.settle(plan, self.require_state(), core, clock=self.clock)
        outcome = cliconfig.install(
            self.dir, render_cli_toml(self.dir, plan.coordinators, pki.pki_dir(self.paths)), self.user_cli_config
        )
        if outcome.written:
            with self._state_lock:
                assert self._state is not None
                self._state = replace(self._state, user_cli_config=str(outcome.user_config))
                state_mod.save(self.paths.state_file, self._state)
        log.info("%s", outcome.advice())

    def _remove_cli_configs(self, state: LabState | None) -> None:
        recorded = state.user_cli_config if state is not None else ""
        cliconfig.remove(self.dir, Path(recorded) if recorded else None)

    def _start_agents(
        self, plans: Sequence[HostPlan], command: Sequence[str] | None, registry: Registry | None
    ) -> None:
        current = self.require_state()
        started = []
        for plan in plans:
            holder = current.holder(plan.name)
            assert holder is not None
            agent = agents_mod.start_agent(self.paths, plan, holder, command, registry=registry, peers=plans)
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
            report = teardown.take_down(self.paths, current, clock=self.clock)
            self._remove_cli_configs(current)
            return report

    # ------------------------------------------------------------ components in namespaces

    def start_component(
        self,
        name: str,
        kind: str,
        argv: Sequence[str],
        *,
        place: str = CORE,
        log_file: Path | None = None,
        endpoints: Mapping[str, str] | None = None,
    ) -> Component:
        """Start ``argv`` inside ``place``'s namespaces ("core" or a host) and record it, so
        that status shows it and down stops it (e.g. etcd members, coordinators)."""
        holder = self.require_state().holder(place)
        if holder is None or not procs.is_alive(holder):
            raise FailedPrecondition(
                f"namespace {place!r} of the lab is not up", reason="LAB_NOT_UP", hint="ferry-lab up first"
            )
        process = procs.spawn(self.exec_argv(place, argv), log=log_file or self.dir / place / f"{name}.log")
        component = Component(name=name, kind=kind, place=place, process=process, endpoints=dict(endpoints or {}))
        self.add_component(component)
        # returned once it runs inside (nsenter joins the namespaces just after the fork)
        wanted = procs.namespace_ids(holder.pid).get("net")
        procs.wait_until(
            lambda: not procs.is_alive(process) or procs.namespace_ids(process.pid).get("net") == wanted,
            5.0,
            clock=self.clock,
            interval=0.01,
        )
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
            raise NotFound(
                f"no host {name!r} in the lab in {self.dir}",
                reason="LAB_NO_HOST",
                hint="see ferry-lab status for the lab's hosts",
            )
        return record

    def hosts(self) -> list[str]:
        return [h.name for h in self.require_state().hosts]

    def host_ip(self, host: str) -> str:
        return self.host(host).address

    def client_tls(self, stem: str = "coordinator.c1") -> Tls:
        """The lab CA and one identity's certificate (``<lab>/pki/<stem>.pem``): ``coordinator.c1``
        (the agents' mutating RPCs), ``operator.lab``, ``scheduler.lab``, ``reader.lab``,
        ``agent.hostN``."""
        return pki.tls(self.paths, stem)

    def libvirt_uri(self, host: str) -> str:
        """``qemu:///system?socket=<lab>/hosts/HOST/run/libvirt-sock`` (root namespace)."""
        return self.host(host).libvirt_uri

    def tcp_uri(self, host: str) -> str:
        """``qemu+tls://ADDRESS/system?pkipath=/etc/libvirt/pki``: how other lab hosts reach this
        libvirtd (TLS only; the name predates TLS)."""
        return self.host(host).tcp_uri

    def agent_address(self, host: str) -> str:
        """``unix:<lab>/hosts/HOST/agent.sock``: the agent's gRPC address from the root ns."""
        return self.host(host).agent_address

    def exec_argv(self, place: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``place``'s namespaces ("core" or a host)."""
        holder = self.require_state().holder(place)
        if holder is None:
            raise NotFound(
                f"no {place!r} in the lab in {self.dir}",
                reason="LAB_NO_HOST",
                hint="see ferry-lab status for the lab's hosts",
            )
        if place == CORE:
            return hosts.nsenter(holder.pid, argv, mount=False)
        return hosts.nsenter(holder.pid, argv)

    # ------------------------------------------------------------ operator conveniences

    def virsh(self, host: str, *args: str, timeout: float = 60.0, check: bool = True) -> CommandResult:
        """``virsh -c <host's unix URI> ARGS`` from the root namespace."""
        return procs.run(
            hosts.virsh_argv(self.libvirt_uri(host), args), timeout=timeout, check=check, reason="LAB_VIRSH_FAILED"
        )

    def host_exec(self, host: str, *argv: str, timeout: float = 60.0, check: bool = True) -> CommandResult:
        """Run a command inside a host's (or the core's) namespaces."""
        return procs.run(self.exec_argv(host, argv), timeout=timeout, check=check)

    # ------------------------------------------------------------ guests

    def guest_image(self) -> GuestImage:
        return build_guest(self.paths)

    def guest(
        self,
        name: str,
        host: str,
        *,
        memory_mib: int = 256,
        disks: Sequence[str] = ("256M",),
        shared: bool = False,
        dirty_rate: str | None = None,
        dirty_mb: int = 64,
        nic: bool = True,
        bridge: str | None = None,
        timeout: float = guests.BOOT_TIMEOUT_S,
        backing: str | None = None,
    ) -> guests.GuestInfo:
        """Create disks, define and start a test guest on ``host``; wait for its first
        heartbeat. See guests.create_guest."""
        return guests.create_guest(
            self,
            name,
            host,
            memory_mib=memory_mib,
            disks=disks,
            shared=shared,
            dirty_rate=dirty_rate,
            dirty_mb=dirty_mb,
            nic=nic,
            bridge=bridge,
            timeout=timeout,
            backing=backing,
        )

    def console(self, name: str) -> str:
        """Everything the guest printed on its serial console (across migrations)."""
        try:
            return self.paths.console_log(name).read_text(errors="replace")
        except FileNotFoundError:
            raise NotFound(
                f"no console log for guest {name!r}",
                reason="LAB_NO_GUEST",
                hint="create it with ferry-lab guest NAME --host HOST",
            ) from None

    def heartbeats(self, name: str) -> int:
        """The count of the guest's last heartbeat (0: none yet)."""
        return guests.last_heartbeat(self.console(name))

    def wait_for_heartbeat(self, name: str, above: int = 0, timeout: float = 30.0) -> int:
        """Wait until the guest's heartbeat count exceeds ``above``; returns the new count."""
        return guests.wait_for_heartbeat(self, name, above=above, timeout=timeout)

    # ------------------------------------------------------------ control plane and drills

    def etcd_access(self) -> tuple[int, list[str]]:
        """(PID whose network namespace reaches etcd, the members' client URLs)."""
        current = self.require_state()
        members = current.of_kind("etcd")
        core = current.holder(CORE)
        if not members or core is None:
            raise FailedPrecondition(
                f"the lab in {self.dir} runs no control plane",
                reason="LAB_NO_CONTROL_PLANE",
                hint="ferry-lab down, then ferry-lab up (without --no-control-plane)",
            )
        return core.pid, [m.endpoints["client"] for m in members]

    def leader(self) -> str | None:
        """The id of the coordinator that leads now (the ``leader`` key in etcd), None when
        nobody does. Unavailable when etcd does not answer."""
        return control.read_leader(*self.etcd_access(), pki.etcd_admin(self.paths))

    def wait_for_leader(
        self, *, other_than: str | None = None, timeout: float = control.LEADER_TIMEOUT_S
    ) -> str | None:
        """Wait until a coordinator (other than ``other_than``) leads; its id, None at timeout."""
        core_pid, urls = self.etcd_access()
        return control.wait_for_leader(
            core_pid, urls, timeout=timeout, clock=self.clock, other_than=other_than, tls=pki.etcd_admin(self.paths)
        )

    def kill(self, name: str | Sequence[str], signal: str = "KILL") -> str:
        """Signal a component by its recorded PID (``"coordinator c1"``, ``"etcd s1"``,
        ``"agent host1"``; KILL, TERM, STOP or CONT); after KILL/TERM, waits until it is gone."""
        return drills.kill(self.require_state(), _words(name), signal, clock=self.clock)

    def restart(self, name: str | Sequence[str]) -> Component:
        """Stop a component if it runs, start it again with its recorded command line and wait
        until it serves (etcd healthy, agent/coordinator health SERVING, libvirtd answering)."""
        return drills.restart(self.require_state(), _words(name), self.add_component, clock=self.clock)

    def etcd_snapshot(self, path: Path) -> str:
        """Save the lab's etcd to ``path`` (``etcdctl snapshot save``, as a backup is made)."""
        return drills.etcd_snapshot(self.require_state(), path)

    def etcd_restore(self, snapshot: Path, *, bump_revision: int = 0) -> str:
        """Restore every etcd member from ``snapshot`` and start it again (disaster recovery);
        the coordinators and agents keep running and see etcd's history go back."""
        return drills.etcd_restore(
            self.require_state(), snapshot, self.add_component, bump_revision=bump_revision, clock=self.clock
        )

    def etcd_leader(self) -> str | None:
        """The etcd member that leads the raft cluster now (``"s2"``), None when none does
        (quorum lost) or no member answers."""
        core_pid, urls = self.etcd_access()
        url = control.etcd_leader_url(core_pid, urls, pki.etcd_admin(self.paths))
        member = next((c for c in self.require_state().of_kind("etcd") if c.endpoints.get("client") == url), None)
        return member.name.partition("/")[2] if member is not None else None

    # ------------------------------------------------------------ whole-host faults (see faults.py)

    def partition(self, host: str) -> None:
        """Cut ``host`` off the lab network (its link down in the core namespace)."""
        faults.set_link(self.require_state(), host, up=False)

    def heal(self, host: str) -> None:
        """Bring ``host``'s link up again."""
        faults.set_link(self.require_state(), host, up=True)

    def link_up(self, host: str) -> bool | None:
        return faults.link_up(self.require_state(), host)

    def kill_host(self, host: str) -> faults.HostDeath:
        """A power cut: link down, libvirtd, every QEMU and the agent of ``host`` killed at once."""
        return faults.kill_host(self.require_state(), host, clock=self.clock)

    def revive_host(self, host: str) -> list[Component]:
        """The power back: link up, libvirtd and the agent started again (each waited for).
        The guests the host ran stay shut off."""
        self.heal(host)
        started = [self.restart(["libvirtd", host])]
        if self.require_state().component(f"{host}/agent") is not None:
            started.append(self.restart(["agent", host]))
        return started

    def kill_guest(self, host: str, name: str) -> bool:
        """SIGKILL guest ``name``'s QEMU on ``host`` (when libvirtd cannot destroy it)."""
        return faults.kill_guest(self.require_state(), host, name)

    def purge_guest(self, host: str, name: str) -> list[str]:
        """The last resort for a guest libvirtd cannot let go of: its QEMU killed, libvirtd
        stopped, libvirtd's runtime record of the guest removed, libvirtd started again (the
        definition stays, shut off). Returns what was done."""
        done = [f"QEMU of {name} killed"] if faults.kill_guest(self.require_state(), host, name) else []
        libvirtd = self.require_state().component(f"{host}/libvirtd")
        procs.stop(libvirtd.process if libvirtd else None, grace=teardown.GRACE_S["libvirtd"], clock=self.clock)
        done += [f"removed {p}" for p in faults.forget_guest_runtime(self.require_state(), host, name)]
        self.restart(["libvirtd", host])
        return [*done, f"libvirtd {host} restarted"]

    def fill_images(self, host: str, leave: int = 0) -> int:
        """Fill ``host``'s own image filesystem up to ``leave`` free bytes; the filler's size."""
        return faults.fill_images(self.require_state(), host, leave)

    def unfill_images(self, host: str) -> bool:
        """Remove the filler from ``host``'s image filesystem; True when there was one."""
        return faults.unfill_images(self.require_state(), host)

    # ------------------------------------------------------------ status

    def status(self, *, probe: bool = True) -> dict[str, Any]:
        """Every component with PID, addresses and whether it runs (JSON-ready). With
        ``probe``, agents get a health check and hosts list their guests."""
        return status_mod.build_status(self.dir, self.state(), probe=probe)


def _check_control_plane(shape: ControlPlane) -> None:
    """Refuse, before anything starts, a shape or a machine the control plane cannot run on."""
    if shape.problem():
        raise InvalidArgument(
            shape.problem(), reason="LAB_BAD_CONTROL_PLANE", hint="use --etcd-members 1 or 3 and --coordinators 1 to 3"
        )
    if find_etcd_binary() is None or control.etcdctl_binary() is None:
        raise FailedPrecondition(
            "no etcd server binary (or no etcdctl beside it) for the lab's control plane",
            reason="ETCD_BINARY_MISSING",
            hint="run deploy/fetch-etcd.sh (or set FERRY_ETCD_BIN), or start the lab without "
            "one: ferry-lab up --no-control-plane",
        )


def _words(name: str | Sequence[str]) -> list[str]:
    return name.split() if isinstance(name, str) else list(name)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["DEFAULT_LAB_DIR", "ControlPlane", "DownReport", "FerryError", "Lab", "default_lab_dir"]
