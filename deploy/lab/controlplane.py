"""The lab's control plane as pure data: etcd members and coordinators in the core namespace,
their config files, the agents' registry section and the ``ferry`` CLI's config.

Nothing here touches the system, so every rule is testable from a table.

Worked example, lab dir /tmp/ferry-lab, 2 hosts, ``ControlPlane(etcd_members=1, coordinators=2)``::

    etcd s1   client https://10.77.0.1:2379  peer http://10.77.0.1:2380  data /tmp/ferry-lab/etcd/s1.data
    c1        10.77.0.1:7100  unix:/tmp/ferry-lab/coordinators/c1.sock
              config /tmp/ferry-lab/coordinators/c1/coordinator.toml
              metrics 10.77.0.1:9471  unix:/tmp/ferry-lab/coordinators/c1.metrics.sock
    c2        10.77.0.1:7101  unix:/tmp/ferry-lab/coordinators/c2.sock
    agents    [registry] etcd_endpoints = ["10.77.0.1:2379"], server_name = "etcd", address = "10.77.0.11:7070"
              ttl_s = 10
    cli.toml  coordinator = "unix:/tmp/ferry-lab/coordinators/c1.sock"
              coordinators = ["unix:.../c1.sock", "unix:.../c2.sock"]
              ca, cert, key = /tmp/ferry-lab/pki/{ca,operator.lab,operator.lab-key}.pem

Every link is mutual TLS with certificates from the lab CA (``pki.py``): etcd's client port
requires client certificates and has RBAC on (each agent writes only its own ``hosts/<name>``),
coordinators and agents serve only callers with a lab certificate, by role.

With 3 etcd members: s1 2379/2380, s2 2381/2382, s3 2383/2384 (all on 10.77.0.1: they share the
core namespace). Every coordinator replica serves the whole API (reads from etcd, writes by
compare-and-set; only the engine runs on the leader), so the CLI may use any live one.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry.lab.etcd import MemberSpec, MemberTLS
from ferry.lab.topology import CORE_ADDRESS, IMAGE_DIR, HostPlan, LabPaths

# The DNS name in the etcd members' certificate (pki.py) that coordinators and agents verify:
# a gRPC client given several endpoints cannot check each one's IP address, so it needs a name.
ETCD_SERVER_NAME = "etcd"

ETCD_FIRST_CLIENT_PORT = 2379  # member sN: client 2379 + 2(N-1), peer one above
COORDINATOR_FIRST_PORT = 7100  # cN: 7100 + N - 1
COORDINATOR_FIRST_METRICS_PORT = 9471  # cN: 9471 + N - 1 (9471: ferry.coordinator.config's default)
ETCD_PREFIX = "/ferry/"
ETCD_CLUSTER_TOKEN = "ferry-lab"
REGISTRY_TTL_S = 10
ELECTION_TTL_S = 10
ETCD_MEMBER_COUNTS = (1, 3)
MAX_COORDINATORS = 3
GUEST_NETWORK = "guest"  # the logical network every host's guest bridge belongs to


@dataclass(frozen=True)
class ControlPlane:
    """What to run in the core namespace besides the bridge (the shape a lab is asked for)."""

    etcd_members: int = 1
    coordinators: int = 1
    per_host_outbound: int = 1
    per_host_inbound: int = 2
    cluster: int = 4
    host_bandwidth_mibps: int = 0  # each host's migration budget, shared by its jobs (0: none)

    def problem(self) -> str:
        """Why this shape cannot be started ("" when it can)."""
        if self.etcd_members not in ETCD_MEMBER_COUNTS:
            return f"etcd runs with 1 or 3 members, not {self.etcd_members}"
        if not 1 <= self.coordinators <= MAX_COORDINATORS:
            return f"a lab runs 1 to {MAX_COORDINATORS} coordinators, not {self.coordinators}"
        if min(self.per_host_outbound, self.per_host_inbound, self.cluster) < 1:
            return "migration limits must be at least 1"
        if self.host_bandwidth_mibps < 0:
            return "a host's bandwidth budget is 0 (none) or more MiB/s"
        return ""


@dataclass(frozen=True)
class CoordinatorPlan:
    id: str  # c1, c2, ...
    listen: str  # 10.77.0.1:7100, inside the core namespace
    socket: Path  # <lab>/coordinators/c1.sock, reachable from the root namespace
    config: Path  # <lab>/coordinators/c1/coordinator.toml
    log: Path
    metrics_listen: str = ""  # 10.77.0.1:9471, inside the core namespace
    metrics_socket: Path | None = None  # <lab>/coordinators/c1.metrics.sock, from the root namespace

    @property
    def address(self) -> str:
        """What the CLI in the root namespace dials: ``unix:<lab>/coordinators/c1.sock``."""
        return f"unix:{self.socket}"

    @property
    def metrics_address(self) -> str:
        """Its metrics endpoint from the root namespace: ``unix:<lab>/coordinators/c1.metrics.sock``."""
        return f"unix:{self.metrics_socket}" if self.metrics_socket else ""


@dataclass(frozen=True)
class ControlPlanePlan:
    etcd: tuple[MemberSpec, ...]
    coordinators: tuple[CoordinatorPlan, ...]
    shape: ControlPlane

    @property
    def etcd_endpoints(self) -> tuple[str, ...]:
        """``host:port`` of every member (what coordinators and agents are configured with)."""
        return tuple(m.endpoint for m in self.etcd)

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.etcd)

    def member(self, name: str) -> MemberSpec | None:
        return next((m for m in self.etcd if m.name == name), None)


def etcd_dir(paths: LabPaths) -> Path:
    return paths.root / "etcd"


def coordinators_dir(paths: LabPaths) -> Path:
    return paths.root / "coordinators"


def lab_cli_config(paths: LabPaths) -> Path:
    """The CLI config every lab writes for itself (``FERRY_CONFIG=<lab>/cli.toml ferry ...``)."""
    return paths.root / "cli.toml"


def etcd_member_spec(paths: LabPaths, index: int, tls: MemberTLS | None = None) -> MemberSpec:
    """Member ``s<index>`` (1-based) on the core address (TLS on its client port with ``tls``)."""
    client = ETCD_FIRST_CLIENT_PORT + 2 * (index - 1)
    name = f"s{index}"
    return MemberSpec(
        name=name,
        host=CORE_ADDRESS,
        client_port=client,
        peer_port=client + 1,
        data_dir=etcd_dir(paths) / f"{name}.data",
        tls=tls,
        peer_host="127.0.0.1",  # every member is in the core namespace: raft stays on its loopback
    )


def coordinator_plan(paths: LabPaths, index: int) -> CoordinatorPlan:
    cid = f"c{index}"
    home = coordinators_dir(paths) / cid
    return CoordinatorPlan(
        id=cid,
        listen=f"{CORE_ADDRESS}:{COORDINATOR_FIRST_PORT + index - 1}",
        socket=coordinators_dir(paths) / f"{cid}.sock",
        config=home / "coordinator.toml",
        log=home / "coordinator.log",
        metrics_listen=f"{CORE_ADDRESS}:{COORDINATOR_FIRST_METRICS_PORT + index - 1}",
        metrics_socket=coordinators_dir(paths) / f"{cid}.metrics.sock",
    )


def plan_control_plane(paths: LabPaths, shape: ControlPlane, tls: MemberTLS | None = None) -> ControlPlanePlan:
    problem = shape.problem()
    if problem:
        raise ValueError(problem)
    return ControlPlanePlan(
        etcd=tuple(etcd_member_spec(paths, i, tls) for i in range(1, shape.etcd_members + 1)),
        coordinators=tuple(coordinator_plan(paths, i) for i in range(1, shape.coordinators + 1)),
        shape=shape,
    )


def control_plane_sockets(paths: LabPaths, shape: ControlPlane) -> tuple[Path, ...]:
    """The unix sockets a control plane of this shape creates (for the sun_path length check)."""
    plans = [coordinator_plan(paths, i) for i in range(1, shape.coordinators + 1)]
    return tuple(sock for p in plans for sock in (p.socket, p.metrics_socket) if sock is not None)


# ---------------------------------------------------------------- config files


def _etcd_tls_lines(etcd_pki: Path, stem: str) -> list[str]:
    """A daemon's TLS to etcd: etcd's CA and the client certificate it issued (CN ``stem``, etcd's
    user), and the DNS name the members' certificate carries."""
    return [
        f"ca = {_toml_str(str(etcd_pki / 'ca.pem'))}",
        f"cert = {_toml_str(str(etcd_pki / f'{stem}.pem'))}",
        f"key = {_toml_str(str(etcd_pki / f'{stem}-key.pem'))}",
        f"server_name = {_toml_str(ETCD_SERVER_NAME)}",
    ]


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def render_coordinator_toml(
    plan: ControlPlanePlan, coordinator: CoordinatorPlan, hosts: Sequence[HostPlan], pki: Path | None = None
) -> str:
    """The replica's config in coordinator/config.py's format. Every host declares its guest
    bridge under the logical network ``guest`` and its image directory, so a migration from a
    ``br-guest`` host to a ``br-vm`` host needs no ``--map-bridge``."""
    shape = plan.shape
    lines = [
        f"# written by ferry-lab for coordinator {coordinator.id} (runs in the lab's core namespace)",
        "[coordinator]",
        f"id = {_toml_str(coordinator.id)}",
        f"listen = {_toml_list([coordinator.listen, coordinator.address])}",
        f"advertise = {_toml_str(coordinator.listen)}",
        f"election_ttl_s = {ELECTION_TTL_S}",
        "",
        "[metrics]",
        f"listen = {_toml_list([coordinator.metrics_listen, coordinator.metrics_address])}",
        "",
        "[etcd]",
        f"endpoints = {_toml_list(plan.etcd_endpoints)}",
        f"prefix = {_toml_str(ETCD_PREFIX)}",
        # else TLS with a certificate of etcd's own CA (not the APIs'), the members' checked for its DNS name
        *(_etcd_tls_lines(pki / "etcd", f"coordinator.{coordinator.id}") if pki is not None else ["insecure = true"]),
        "",
        "[limits]",
        f"per_host_outbound = {shape.per_host_outbound}",
        f"per_host_inbound = {shape.per_host_inbound}",
        f"cluster = {shape.cluster}",
        f"host_bandwidth_mibps = {shape.host_bandwidth_mibps}",
        "",
    ]
    if pki is None:
        lines += ["[tls]", "insecure = true", ""]
    else:  # one identity for the API and the agents: ferry://coordinator/cN (etcd: its own CA, above)
        stem = f"coordinator.{coordinator.id}"
        lines += [
            "[tls]",
            f"ca = {_toml_str(str(pki / 'ca.pem'))}",
            f"cert = {_toml_str(str(pki / f'{stem}.pem'))}",
            f"key = {_toml_str(str(pki / f'{stem}-key.pem'))}",
        ]
    for host in hosts:
        lines += [
            "",
            f"[hosts.{host.name}]",
            f"bridges = {{ {GUEST_NETWORK} = {_toml_str(host.guest_bridge)} }}",
            f"paths = {{ images = {_toml_str(IMAGE_DIR)} }}",
        ]
    return "\n".join(lines) + "\n" + LAB_POLICIES


# The lab's convergence policies (coordinator/config.py's [policies.NAME]); `ferry policies`
# lists them. The lab's link under TCG carries ~150 MiB/s uncapped.
LAB_POLICIES = """
[prediction]
link_mibps = 150
periods_s = [1, 3]

# post-copy as soon as the prediction (or, from iteration 2, the running job) says pre-copy
# will not converge; force-complete should it still run at the timeout
[policies.busy]
postcopy = "on-prediction"
downtime = [{ ms = 300 }, { ms = 500, after_s = 20 }]
timeout_per_gib_s = 300
progress_timeout_s = 60
timeout_action = "force-complete"

# post-copy 4 s in, slowly (8 MiB/s): a long post-copy, for the drills on its link
[policies.postcopy-early]
postcopy = "after"
postcopy_after_s = 4
postcopy_bandwidth_mibps = 8

# never post-copy: a max-downtime ladder up to 3 s (the lab's busy guest rewrites 64 MiB: 2 s at
# 32 MiB/s), then pause the guest to finish at the timeout
[policies.precopy]
downtime = [
  { ms = 100 }, { ms = 300, after_s = 5 }, { ms = 1000, after_s = 10 },
  { ms = 3000, after_s = 20, after_iterations = 4 },
]
timeout_per_gib_s = 240
timeout_action = "force-complete"

# four parallel connections (multifd); no post-copy (QEMU cannot run it over multifd)
[policies.multifd]
parallel_connections = 4

# never post-copy, never more than 300 ms of downtime: refuses what it cannot finish
[policies.strict]
downtime = [{ ms = 300 }]
timeout_per_gib_s = 480
refuse_unfinishable = true
"""


@dataclass(frozen=True)
class Registry:
    """The agents' ``[registry]`` section: where they announce themselves."""

    etcd_endpoints: tuple[str, ...]
    prefix: str = ETCD_PREFIX
    ttl_s: int = REGISTRY_TTL_S
    server_name: str = ""  # the members' certificate's DNS name (TLS labs: ETCD_SERVER_NAME)
    etcd_pki: Path | None = None  # TLS labs: etcd's CA and the agents' etcd certificates (pki/etcd)


def render_registry_section(registry: Registry, plan: HostPlan) -> str:
    """``[registry]`` for one host's agent: its address is the lab-network one (10.77.0.1N:7070),
    the one coordinators in the core namespace reach it at, like in a real fleet."""
    return "\n".join(
        [
            "[registry]",
            f"etcd_endpoints = {_toml_list(registry.etcd_endpoints)}",
            f"address = {_toml_str(plan.agent_listen)}",
            f"prefix = {_toml_str(registry.prefix)}",
            f"ttl_s = {registry.ttl_s}",
            *(
                _etcd_tls_lines(registry.etcd_pki, f"agent.{plan.name}")
                if registry.etcd_pki is not None
                else [f"server_name = {_toml_str(registry.server_name)}"]
                if registry.server_name
                else []
            ),
            "",
        ]
    )


def render_cli_toml(lab_dir: Path, coordinators: Sequence[CoordinatorPlan], pki: Path | None = None) -> str:
    """The ``ferry`` CLI's config: the first replica, and every replica in order (a CLI that
    fails over tries them one after the other), and the lab's operator certificate."""
    addresses = [c.address for c in coordinators]
    lines = [
        f"# written by ferry-lab for the lab in {lab_dir}; `ferry-lab down` removes it",
        f"coordinator = {_toml_str(addresses[0])}",
        f"coordinators = {_toml_list(addresses)}",
    ]
    if pki is None:
        lines.append("insecure = true")
    else:  # identity ferry://operator/lab
        lines += [
            f"ca = {_toml_str(str(pki / 'ca.pem'))}",
            f"cert = {_toml_str(str(pki / 'operator.lab.pem'))}",
            f"key = {_toml_str(str(pki / 'operator.lab-key.pem'))}",
        ]
    return "\n".join([*lines, ""])


def cli_config_lab(text: str) -> Path | None:
    """The lab dir a CLI config points into, judged by its coordinator addresses (a unix socket
    below ``<lab>/coordinators/``); None for anything else, unreadable files included.

    >>> cli_config_lab('coordinator = "unix:/tmp/l/coordinators/c1.sock"')
    PosixPath('/tmp/l')
    >>> cli_config_lab('coordinator = "10.0.0.5:7100"') is None
    True
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    addresses = [doc.get("coordinator")]
    listed = doc.get("coordinators")
    if isinstance(listed, list):
        addresses += listed
    for address in addresses:
        if not isinstance(address, str) or not address.startswith("unix:"):
            continue
        socket = Path(address.removeprefix("unix:").removeprefix("//"))
        if socket.parent.name == "coordinators" and socket.is_absolute():
            return socket.parent.parent
    return None


def may_replace_cli_config(existing: str | None, lab_dir: Path) -> bool:
    """Whether ``ferry-lab`` may write (or remove) a CLI config that holds ``existing``: only
    when there is none, or it points into this very lab. Someone else's config is kept.

    >>> may_replace_cli_config(None, Path("/tmp/l"))
    True
    >>> may_replace_cli_config('coordinator = "unix:/tmp/l/coordinators/c2.sock"', Path("/tmp/l"))
    True
    >>> may_replace_cli_config('coordinator = "10.0.0.5:7100"', Path("/tmp/l"))
    False
    """
    if existing is None:
        return True
    return cli_config_lab(existing) == lab_dir


# ---------------------------------------------------------------- what etcdctl says


def leader_of(value: str) -> str | None:
    """The coordinator id in the leader key's value (``{"address": ..., "id": "c1"}``); None
    when there is no leader key (empty output) or it is unreadable.

    >>> leader_of('{"address": "10.77.0.1:7100", "id": "c1"}')
    'c1'
    >>> leader_of("") is None
    True
    """
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"]:
        return None
    return str(doc["id"])


def endpoint_health(output: str) -> dict[str, bool]:
    """client URL -> healthy, from ``etcdctl endpoint health -w json`` (which prints every
    endpoint, then exits 1 when one is unhealthy; unparsable output says nothing).

    >>> endpoint_health('[{"endpoint":"http://10.77.0.1:2379","health":true,"took":"2ms"}]')
    {'http://10.77.0.1:2379': True}
    """
    try:
        rows = json.loads(output)
    except ValueError:
        return {}
    if not isinstance(rows, list):
        return {}
    return {str(r["endpoint"]): r.get("health") is True for r in rows if isinstance(r, dict) and "endpoint" in r}


def endpoint_leader(output: str) -> str | None:
    """The client URL of the member that leads the etcd cluster now, from ``etcdctl endpoint
    status -w json`` (None when no answering member names a leader among the endpoints).

    >>> endpoint_leader('[{"Endpoint":"http://a:1","Status":{"header":{"member_id":7},"leader":9}},'
    ...                 '{"Endpoint":"http://b:2","Status":{"header":{"member_id":9},"leader":9}}]')
    'http://b:2'
    """
    try:
        rows = json.loads(output)
    except ValueError:
        return None
    if not isinstance(rows, list):
        return None
    for row in rows:
        status = row.get("Status") if isinstance(row, dict) else None
        if not isinstance(status, dict):
            continue
        member = status.get("header", {}).get("member_id")
        if member is not None and member == status.get("leader"):
            return str(row.get("Endpoint", "")) or None
    return None
