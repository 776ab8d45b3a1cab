"""Running the lab's control plane: etcd members and coordinators inside the core namespace,
and asking etcd (with ``etcdctl`` inside that namespace) who is healthy and who leads.

The core namespace shares the root mount namespace, so data dirs, logs and the coordinators'
unix sockets are ordinary paths below the lab dir; only the network (10.77.0.1) is private.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ferry.errors import DeadlineExceeded, FailedPrecondition, FerryError, Unavailable
from ferry.keys import HOSTS, LEADER_KEY
from ferry.lab import procs
from ferry.lab.agents import run_async, wait_serving
from ferry.lab.controlplane import (
    ETCD_CLUSTER_TOKEN,
    ETCD_PREFIX,
    ControlPlanePlan,
    CoordinatorPlan,
    endpoint_health,
    endpoint_leader,
    leader_of,
    render_coordinator_toml,
)
from ferry.lab.etcd import MemberSpec, etcd_tool, member_command, require_etcd_binary
from ferry.lab.hosts import nsenter
from ferry.lab.procs import SYSTEM_CLOCK, Clock, ProcessRecord
from ferry.lab.state import CORE, Component, LabState
from ferry.lab.topology import HostPlan
from ferry.rpc import Tls

log = logging.getLogger("ferry.lab")

ETCD_READY_TIMEOUT_S = 20.0
LEADER_TIMEOUT_S = 20.0
HOSTS_TIMEOUT_S = 30.0
ETCDCTL_TIMEOUT_S = 1.0

Record = Callable[[Component], None]


def etcd_component_name(member: str) -> str:
    return f"etcd/{member}"


def coordinator_component_name(cid: str) -> str:
    return f"coordinator/{cid}"


def default_coordinator_command() -> list[str]:
    """``python -m ferry.coordinator.main`` with ferry-lab's own interpreter."""
    return [sys.executable, "-m", "ferry.coordinator.main"]


# ---------------------------------------------------------------- etcd


def start_etcd_member(spec: MemberSpec, initial_cluster: str, core: ProcessRecord, record: Record) -> Component:
    """Start one member inside the core namespace (on its data dir: a restart when it exists)
    and record it at once. fsync stays on: drills kill members, their data must survive."""
    binary = require_etcd_binary()
    spec.data_dir.parent.mkdir(parents=True, exist_ok=True)
    argv = member_command(binary, spec, initial_cluster, cluster_token=ETCD_CLUSTER_TOKEN, no_fsync=False)
    process = procs.spawn(nsenter(core.pid, argv, mount=False), log=spec.data_dir.parent / f"{spec.name}.log")
    component = Component(
        name=etcd_component_name(spec.name),
        kind="etcd",
        place=CORE,
        process=process,
        endpoints={"client": spec.client_url, "peer": spec.peer_url, "data": str(spec.data_dir)},
    )
    record(component)
    return component


def etcdctl_binary() -> Path | None:
    """etcdctl beside the etcd server binary (deploy/fetch-etcd.sh puts both), else on PATH."""
    return etcd_tool("etcdctl")


def etcdctl(
    core_pid: int,
    client_urls: Sequence[str],
    *args: str,
    timeout_s: float = ETCDCTL_TIMEOUT_S,
    tls: Tls | None = None,
    stdin: str | None = None,
) -> procs.CommandResult:
    """Run ``etcdctl ARGS`` inside the core namespace against ``client_urls`` (exit status not
    checked: ``endpoint health`` exits 1 while still reporting every endpoint). ``tls``: the CA
    and a client certificate (the lab's etcd root user, ``pki.etcd_admin``)."""
    binary = etcdctl_binary()
    if binary is None:
        raise FailedPrecondition(
            "no etcdctl beside the etcd binary nor on PATH",
            reason="ETCDCTL_MISSING",
            hint="run deploy/fetch-etcd.sh (it installs etcd and etcdctl)",
        )
    argv = [
        str(binary),
        f"--endpoints={','.join(client_urls)}",
        "--dial-timeout=1s",
        f"--command-timeout={timeout_s:g}s",
    ]
    if tls is not None:
        argv += [f"--cacert={tls.ca}", f"--cert={tls.cert}", f"--key={tls.key}"]
    return procs.run(
        nsenter(core_pid, [*argv, *args], mount=False, uts=False),
        timeout=timeout_s * 2 + 5,
        check=False,
        env={**os.environ, "ETCDCTL_API": "3"},
        input_text=stdin,
    )


def etcd_health(core_pid: int, client_urls: Sequence[str], tls: Tls | None = None) -> dict[str, bool]:
    """client URL -> healthy (a member that does not answer within a second is unhealthy)."""
    if not client_urls:
        return {}
    found = endpoint_health(etcdctl(core_pid, client_urls, "endpoint", "health", "-w", "json", tls=tls).stdout)
    return {url: found.get(url, False) for url in client_urls}


def etcd_leader_url(core_pid: int, client_urls: Sequence[str], tls: Tls | None = None) -> str | None:
    """The client URL of the etcd member that leads the raft cluster (None: no leader, e.g.
    quorum lost)."""
    return endpoint_leader(etcdctl(core_pid, client_urls, "endpoint", "status", "-w", "json", tls=tls).stdout)


def read_leader(core_pid: int, client_urls: Sequence[str], tls: Tls | None = None) -> str | None:
    """The id of the coordinator the ``leader`` key names (None: nobody leads right now).
    Raises Unavailable when etcd does not answer (then nobody knows)."""
    result = etcdctl(
        core_pid, client_urls, "get", ETCD_PREFIX + LEADER_KEY, "--print-value-only", timeout_s=2.0, tls=tls
    )
    if result.returncode != 0:
        raise Unavailable(
            f"etcd did not answer at {', '.join(client_urls)}",
            reason="LAB_ETCD_UNAVAILABLE",
            hint="see ferry-lab status; restart a member with ferry-lab restart etcd s1",
        )
    return leader_of(result.stdout.strip())


def wait_etcd_healthy(
    core_pid: int,
    members: Sequence[Component],
    *,
    timeout: float = ETCD_READY_TIMEOUT_S,
    clock: Clock = SYSTEM_CLOCK,
    tls: Tls | None = None,
) -> float:
    """Wait until every member reports healthy; returns the seconds it took. A member that
    exits, or a cluster not healthy in time, raises with the log to read."""
    started = clock.now()
    urls = [m.endpoints["client"] for m in members]

    def healthy() -> bool:
        for member in members:
            if not procs.is_alive(member.process):
                assert member.process is not None
                raise FailedPrecondition(
                    f"etcd member {member.name} exited during start: {procs.log_tail(member.process.log)}",
                    reason="LAB_ETCD_EXITED",
                    hint=f"read {member.process.log}",
                )
        return all(etcd_health(core_pid, urls, tls).values())

    if not procs.wait_until(healthy, timeout, clock=clock, interval=0.1):
        raise DeadlineExceeded(
            f"etcd not healthy at {', '.join(urls)} within {timeout:.0f} s",
            reason="LAB_ETCD_TIMEOUT",
            hint=f"read the members' logs in {Path(members[0].endpoints['data']).parent}",
        )
    return clock.now() - started


# ---------------------------------------------------------------- coordinators


def start_coordinator(
    plan: ControlPlanePlan,
    coordinator: CoordinatorPlan,
    hosts: Sequence[HostPlan],
    core: ProcessRecord,
    record: Record,
    command: Sequence[str] | None = None,
) -> Component:
    """Write the replica's config and start it inside the core namespace (network and UTS
    only: its unix socket below the lab dir is reachable from the root namespace)."""
    coordinator.config.parent.mkdir(parents=True, exist_ok=True)
    tls = plan.etcd[0].tls if plan.etcd else None
    pki = tls.ca_file.parent.parent if tls is not None else None  # etcd's CA is in <lab>/pki/etcd
    coordinator.config.write_text(render_coordinator_toml(plan, coordinator, hosts, pki))
    coordinator.socket.unlink(missing_ok=True)
    argv = [*(command or default_coordinator_command()), "--config", str(coordinator.config)]
    process = procs.spawn(
        nsenter(core.pid, argv, mount=False), log=coordinator.log, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    component = Component(
        name=coordinator_component_name(coordinator.id),
        kind="coordinator",
        place=CORE,
        process=process,
        endpoints={
            "grpc": coordinator.listen,
            "unix": coordinator.address,
            "metrics": coordinator.metrics_address,
            "metrics_tcp": coordinator.metrics_listen,
            "config": str(coordinator.config),
        },
    )
    record(component)
    return component


def wait_for_leader(
    core_pid: int,
    client_urls: Sequence[str],
    *,
    timeout: float = LEADER_TIMEOUT_S,
    clock: Clock = SYSTEM_CLOCK,
    other_than: str | None = None,
    tls: Tls | None = None,
) -> str | None:
    """Wait until some coordinator (other than ``other_than``) leads; its id, or None at
    timeout."""
    found: list[str] = []

    def elected() -> bool:
        try:
            leader = read_leader(core_pid, client_urls, tls)
        except FerryError:
            return False
        if leader is not None and leader != other_than:
            found.append(leader)
            return True
        return False

    procs.wait_until(elected, timeout, clock=clock, interval=0.2)
    return found[-1] if found else None


def available_hosts(address: str, timeout: float = 3.0) -> set[str]:
    """The hosts a coordinator lists as available (``ferry hosts``); empty when it does not
    answer."""
    return run_async(_list_available(address, timeout))


async def _list_available(address: str, timeout: float) -> set[str]:
    import grpc

    from ferry.lab.pki import tls_near
    from ferry.rpc import create_channel
    from ferry.v1 import coordinator_pb2 as cpb
    from ferry.v1 import coordinator_pb2_grpc as cgrpc

    channel = create_channel(address, tls=tls_near(address))
    try:
        reply = await cgrpc.CoordinatorStub(channel).ListHosts(cpb.ListHostsRequest(), timeout=timeout)
        return {h.name for h in reply.hosts if h.available}
    except grpc.RpcError:
        return set()
    finally:
        await channel.close()


def wait_for_hosts(
    address: str, hosts: Iterable[str], *, timeout: float = HOSTS_TIMEOUT_S, clock: Clock = SYSTEM_CLOCK
) -> set[str]:
    """Wait until the coordinator at ``address`` lists every one of ``hosts`` as available
    (agents registered in etcd, inventories fetched); returns those it lists at the end."""
    wanted = set(hosts)
    seen: set[str] = set()

    def listed() -> bool:
        seen.clear()
        seen.update(available_hosts(address))
        return wanted <= seen

    procs.wait_until(listed, timeout, clock=clock, interval=0.3)
    return seen


# ---------------------------------------------------------------- etcd's TLS and RBAC


def etcd_admin_of(plan: ControlPlanePlan) -> Tls | None:
    """The client certificate the lab tools use on etcd (its root user); None without TLS."""
    tls = plan.etcd[0].tls if plan.etcd else None
    return Tls(tls.ca_file, tls.client_cert_file, tls.client_key_file) if tls is not None else None


def rbac_commands(prefix: str, hosts: Sequence[str], coordinators: Sequence[str]) -> list[list[str]]:
    """etcdctl commands that give each identity its keys, then switch authentication on.

    etcd takes the user from the client certificate's CN (``ferry/identity.py``: ``ROLE.NAME``):
    a coordinator may read and write the whole prefix; an agent writes only its own registration key
    (exactly ``<prefix>hosts/<name>``, not a prefix: host1 must not write host10), reads the
    registrations (``<prefix>hosts/``: the migration targets it accepts are the registered hosts,
    ``agent/targets.py``) and the leader key (``agent/fencing.py``: whose term to follow after etcd
    was restored from a backup); root is the lab tools' admin.

    >>> for argv in rbac_commands("/ferry/", ["host1"], [])[2:7]:
    ...     print(" ".join(argv))
    role add agent.host1
    role grant-permission agent.host1 readwrite /ferry/hosts/host1
    role grant-permission agent.host1 read /ferry/hosts/ --prefix
    role grant-permission agent.host1 read /ferry/leader
    user add agent.host1 --no-password
    """
    out = [["user", "add", "root", "--no-password"], ["user", "grant-role", "root", "root"]]
    for host in hosts:
        user = f"agent.{host}"
        out += [
            ["role", "add", user],
            ["role", "grant-permission", user, "readwrite", f"{prefix}{HOSTS}{host}"],
            ["role", "grant-permission", user, "read", f"{prefix}{HOSTS}", "--prefix"],
            ["role", "grant-permission", user, "read", f"{prefix}{LEADER_KEY}"],
            ["user", "add", user, "--no-password"],
            ["user", "grant-role", user, user],
        ]
    out += [
        ["role", "add", "coordinator"],
        ["role", "grant-permission", "coordinator", "readwrite", prefix, "--prefix"],
    ]
    for cid in coordinators:
        user = f"coordinator.{cid}"
        out += [["user", "add", user, "--no-password"], ["user", "grant-role", user, "coordinator"]]
    out.append(["auth", "enable"])
    return out


def enable_rbac(
    core_pid: int,
    client_urls: Sequence[str],
    admin: Tls,
    hosts: Sequence[HostPlan],
    coordinators: Sequence[CoordinatorPlan],
) -> None:
    """Users, roles and ``auth enable`` on a fresh etcd (see :func:`rbac_commands`)."""
    for argv in rbac_commands(ETCD_PREFIX, [h.name for h in hosts], [c.id for c in coordinators]):
        result = etcdctl(core_pid, client_urls, *argv, timeout_s=5.0, tls=admin)
        if result.returncode != 0:
            raise FailedPrecondition(
                f"etcdctl {' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}",
                reason="LAB_ETCD_RBAC_FAILED",
                hint="read the etcd member's log in <lab>/etcd",
            )
    log.info("etcd RBAC on: each agent may write only hosts/<its name>; coordinators the prefix %s", ETCD_PREFIX)


# ---------------------------------------------------------------- the whole control plane


def start(
    plan: ControlPlanePlan,
    host_plans: Sequence[HostPlan],
    core: ProcessRecord,
    record: Record,
    command: Sequence[str] | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
) -> list[Component]:
    """etcd (raises when it does not get healthy), then the coordinators (recorded as failed
    when they do not serve, like agents: the hosts stay usable). Returns the coordinators."""
    members = [start_etcd_member(spec, plan.initial_cluster, core, record) for spec in plan.etcd]
    admin = etcd_admin_of(plan)
    seconds = wait_etcd_healthy(core.pid, members, clock=clock, tls=admin)
    log.info("etcd healthy in %.1f s: %s", seconds, ", ".join(m.endpoints["client"] for m in members))
    if admin is not None:
        enable_rbac(core.pid, [m.endpoints["client"] for m in members], admin, host_plans, plan.coordinators)
    started = [start_coordinator(plan, c, host_plans, core, record, command) for c in plan.coordinators]
    coordinators = wait_serving(started, clock=clock)
    for coordinator in coordinators:
        record(coordinator)
        if coordinator.error:
            log.warning("%s failed: %s", coordinator.name, coordinator.error)
        else:
            log.info(
                "%s serving on %s and %s",
                coordinator.name,
                coordinator.endpoints["grpc"],
                coordinator.endpoints["unix"],
            )
    return coordinators


def settle(plan: ControlPlanePlan, state: LabState, core: ProcessRecord, *, clock: Clock = SYSTEM_CLOCK) -> str | None:
    """After the agents started: wait until a coordinator leads and lists every serving
    agent's host as available, so the CLI works at once. Problems are logged, not raised (the
    lab stays usable for what does work). Returns the leader."""
    serving = [c for c in state.of_kind("coordinator") if not c.error]
    if not serving:
        log.warning("no coordinator serves: the ferry CLI will not work in this lab")
        return None
    t0 = clock.now()
    leader = wait_for_leader(core.pid, [m.client_url for m in plan.etcd], clock=clock, tls=etcd_admin_of(plan))
    if leader is None:
        log.warning(
            "no coordinator was elected within %.0f s (read %s)",
            LEADER_TIMEOUT_S,
            serving[0].process.log if serving[0].process else "the coordinators' logs",
        )
    else:
        log.info("coordinator %s leads (elected in %.1f s)", leader, clock.now() - t0)
    wanted = {a.place for a in state.of_kind("agent") if not a.error}
    missing = wanted - wait_for_hosts(serving[0].endpoints["unix"], wanted, clock=clock)
    if missing:
        log.warning(
            "the coordinators do not list %s as available yet (read the agents' logs: <lab>/hosts/HOST/agent.log)",
            ", ".join(sorted(missing)),
        )
    return leader
