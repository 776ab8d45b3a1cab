"""The coordinator's configuration: one TOML file, parsed once at start into frozen dataclasses.

    [coordinator]
    id = "coord-1"                                   # unique among the coordinator replicas
    listen = ["10.77.0.1:7100", "unix:/run/ferry/coordinator.sock"]
    advertise = "10.77.0.1:7100"                     # written into the leader key (who leads, where)
    election_ttl_s = 10                              # leader lease
    prepare_ttl_s = 900                              # how long a target keeps an unused prepare

    [etcd]
    endpoints = ["10.77.0.1:2379"]
    prefix = "/ferry/"
    timeout_s = 5
    # ca = "/etc/ferry/pki/etcd-ca.pem"  cert = "..."  key = "..."  server_name = "etcd.dc1"
    # (default: the [tls] files; plaintext only with insecure = true here)

    [limits]                                         # concurrent migrations
    per_host_outbound = 1
    per_host_inbound = 2
    cluster = 4
    prepare_ahead = 1                                # per slot: preflight + prepare while it is busy
    host_bandwidth_mibps = 0                         # a host's migration traffic, each way, shared by its
                                                     #   running jobs (0: none; [hosts.X] bandwidth_mibps)

    [timeouts]                                       # optional overrides of phases.Timeouts
    preflight_s = 120
    agent_lost_s = 120                               # wait this long for a lost agent or libvirtd
    slot_wait_s = 300                                # prepared ahead of its slot: wait this long for it

    [agents]
    call_timeout_s = 30                              # one agent call (not a migration stream)
    inventory_ttl_s = 5                              # inventory older than this is fetched again
    inventory_timeout_s = 3                          # an inventory not back by then: agent unreachable
    # ca = "..."  cert = "..."  key = "..."   (mutual TLS to the agents; default: the [tls] files)

    [tls]                                            # required: mutual TLS for the coordinator's API
    ca = "/etc/ferry/pki/ca.pem"                     # (or insecure = true: plaintext, a warning at start)
    cert = "/etc/ferry/pki/coordinator.c1.pem"       # identity ferry://coordinator/c1 (ferry/identity.py)
    key = "/etc/ferry/pki/coordinator.c1-key.pem"

    [placement]                                      # choosing a target (no --to, drains)
    weights = { memory = 0.5, balance = 0.3, inbound = 0.2 }
    anti_affinity = { web = ["web-*"] }              # group -> VM name patterns: never on one host

    [drains]
    bandwidth_mibps = 100                            # estimated migration time: overhead_s +
    overhead_s = 3                                   #   (memory + copied disks) / bandwidth
    max_attempts = 3                                 # migrations per VM (another host each time)

    [retention]                                      # the leader deletes what ended long ago
    migrations_s = 604800                            # finished migration records (7 days; 0 = keep)
    idempotency_s = 86400                            # their idempotency keys (at most migrations_s)
    drains_s = 2592000                               # finished drains (30 days; 0 = keep)

    [engine]
    progress_write_s = 1                             # a migration's progress is stored at most this often

    [metrics]                                        # Prometheus: GET /metrics (on unless enabled = false)
    listen = ["10.77.0.1:9471"]                      # default: the first listen address's host, port 9471

    [log]
    format = "json"                                  # "text" (default) or "json" (one object per line)

    [hosts.host1]                                    # facts about a host, by logical name
    bridges = { guest = "br-guest" }                 # logical network -> this host's bridge
    networks = { mgmt = "default" }                  # logical network -> this host's libvirt network
    paths = { images = "/var/lib/libvirt/images" }   # logical storage -> this host's directory
    bandwidth_mibps = 1000                           # this host's migration budget ([limits] host_bandwidth_mibps)

    [policies.busy]                                  # a named convergence policy (ferry/convergence.py keys)
    bandwidth_mibps = 32
    downtime = [{ ms = 100 }, { ms = 300, after_s = 10 }, { ms = 500, after_s = 10, after_iterations = 5 }]
    postcopy = "on-prediction"                       # never | manual | on-prediction | on-stall | after
    postcopy_bandwidth_mibps = 64
    timeout_per_gib_s = 150
    progress_timeout_s = 150
    timeout_action = "force-complete"                # abort | force-complete

    [[policy_selectors]]                             # first match wins; a request's --policy wins over all
    policy = "busy"
    vm = "db-*"                                      # shell pattern on the VM name
    min_memory_mib = 4096                            # and/or max_memory_mib

    [prediction]
    link_mibps = 1000                                # the migration link, for a policy without a bandwidth cap
    periods_s = [1, 3]                               # dirty-rate calculations on the source (seconds each)
    on_submit = false                                # measure in SubmitMigration itself (else: a Preflight's
    reuse_s = 120                                    #   measurement of the last reuse_s, or the Preflight phase)
    always = false                                   # Preflight phase: measure every guest, not only those whose
                                                     #   policy acts on the prediction (on-prediction, refuse)

The mapping between two hosts is derived from their ``[hosts.*]`` tables (:func:`derive_mapping`),
so no pair of hosts needs its own table. Unknown keys are an error naming the key. Relative file
paths are taken relative to the config file's directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ferry.convergence import ConvergencePolicy, policy_from_doc
from ferry.errors import FailedPrecondition, FerryError
from ferry.model import HostMapping
from ferry.rpc import Tls
from ferry.tomlconfig import (
    LOG_KEYS,
    METRICS_KEYS,
    TLS_SECTION_KEYS,
    LogConfig,
    MetricsConfig,
    Table,
    bad,
    etcd_tls_of,
    insecure_of,
    log_of,
    metrics_listen_default,
    metrics_of,
    parse_toml,
    read_config,
    tls_of,
    tls_section,
)
from ferry.validate import MAX_PREPARE_TTL_S

from .drainplan import Estimates
from .phases import Timeouts
from .placement import AntiAffinity, PlacementPolicy, Weights
from .policies import PolicySelector, PredictionConfig
from .slots import Limits

METRICS_PORT = 9471


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    prefix: str = "/ferry/"
    timeout_s: float = 5.0
    tls: Tls | None = None  # client TLS (None: plaintext, only with insecure = true in [etcd])
    server_name: str | None = None


@dataclass(frozen=True)
class AgentsConfig:
    """How the coordinator talks to agents."""

    call_timeout_s: float = 30.0
    inventory_ttl_s: float = 5.0
    inventory_timeout_s: float = 3.0
    tls: Tls | None = None


@dataclass(frozen=True)
class HostDecl:
    """One host's own names for logical networks and storage (``[hosts.<name>]``)."""

    name: str
    bridges: Mapping[str, str] = field(default_factory=dict)
    networks: Mapping[str, str] = field(default_factory=dict)
    paths: Mapping[str, str] = field(default_factory=dict)
    bandwidth_mibps: int = 0  # its migration budget (0: [limits] host_bandwidth_mibps)


@dataclass(frozen=True)
class DrainsConfig:
    estimates: Estimates = Estimates()
    max_attempts: int = 3


@dataclass(frozen=True)
class Retention:
    """How long finished objects are kept before the leader deletes them (0 = forever).

    A migration's idempotency key goes at the latest with its record: a key replayed after that
    submits a new migration.
    """

    migrations_s: float = 7 * 86400.0
    idempotency_s: float = 86400.0
    drains_s: float = 30 * 86400.0
    sweep_s: float = 60.0  # how often the leader looks


@dataclass(frozen=True)
class EngineConfig:
    progress_write_s: float = 1.0


@dataclass(frozen=True)
class CoordinatorConfig:
    id: str
    listen: tuple[str, ...]
    etcd: EtcdConfig
    advertise: str = ""
    election_ttl_s: int = 10
    prepare_ttl_s: int = 900
    limits: Limits = Limits(per_host_outbound=1, per_host_inbound=2, cluster=4, prepare_ahead=1)
    timeouts: Timeouts = Timeouts()
    agents: AgentsConfig = AgentsConfig()
    hosts: Mapping[str, HostDecl] = field(default_factory=dict)
    tls: Tls | None = None
    placement: PlacementPolicy = PlacementPolicy()  # its inbound_limit is limits.per_host_inbound
    drains: DrainsConfig = DrainsConfig()
    retention: Retention = Retention()
    engine: EngineConfig = EngineConfig()
    policies: Mapping[str, ConvergencePolicy] = field(default_factory=dict)
    policy_selectors: tuple[PolicySelector, ...] = ()
    prediction: PredictionConfig = PredictionConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()

    @property
    def metrics_listen(self) -> tuple[str, ...]:
        """Where the metrics endpoint listens (``[metrics] listen``, else beside the gRPC API)."""
        return self.metrics.listen or metrics_listen_default(self.listen, METRICS_PORT)

    @property
    def advertised(self) -> str:
        """The address other components reach this replica at (``advertise``, else the first listen)."""
        return self.advertise or self.listen[0]


# ---------------------------------------------------------------- mapping between two hosts

_FLAGS = {"bridge": "--map-bridge", "network": "--map-network", "path": "--map-path"}


def _pairs(
    kind: str,
    source: Mapping[str, str],
    target: Mapping[str, str],
    overridden: Mapping[str, str],
    source_host: str,
    target_host: str,
) -> dict[str, str]:
    """source name -> target name for every logical name both hosts declare (identities left out).

    Two logical names that give one source name two different target names are ambiguous, unless
    the request overrides that source name.
    """
    out: dict[str, str] = {}
    via: dict[str, str] = {}
    for logical in sorted(source.keys() & target.keys()):
        src, dst = source[logical], target[logical]
        if src in overridden:
            continue
        if src in out and out[src] != dst:
            raise FailedPrecondition(
                f"{kind} {src!r} on {source_host} is both {via[src]!r} and {logical!r}, which are "
                f"{out[src]!r} and {dst!r} on {target_host}",
                reason="MAPPING_AMBIGUOUS",
                hint=f"give this migration's {kind} mapping explicitly ({_FLAGS[kind]} {src}=NAME) "
                "or fix the [hosts.*] tables in the coordinator config",
            )
        out[src] = dst
        via[src] = logical
    return {s: d for s, d in out.items() if s != d}


def derive_mapping(
    source: HostDecl | None, target: HostDecl | None, overrides: HostMapping | None = None
) -> HostMapping:
    """The translation of host-specific names from ``source`` to ``target`` (pure).

    For every logical name both hosts declare: the source's bridge/network/path -> the target's.
    The request's ``overrides`` win, key by key. A host without a ``[hosts.*]`` table declares
    nothing, so only the overrides apply.

    >>> a = HostDecl("h1", bridges={"guest": "br-guest"}, paths={"images": "/var/lib/libvirt/images"})
    >>> b = HostDecl("h2", bridges={"guest": "br-vm"}, paths={"images": "/srv/images"})
    >>> derive_mapping(a, b).bridges, derive_mapping(a, b).path_prefixes
    ({'br-guest': 'br-vm'}, {'/var/lib/libvirt/images': '/srv/images'})
    >>> derive_mapping(a, b, HostMapping(bridges={"br-guest": "br-x"})).bridges
    {'br-guest': 'br-x'}
    """
    overrides = overrides or HostMapping()
    empty = HostDecl("")
    s, t = source or empty, target or empty
    sname, tname = s.name or "the source", t.name or "the target"
    bridges = _pairs("bridge", s.bridges, t.bridges, overrides.bridges, sname, tname)
    networks = _pairs("network", s.networks, t.networks, overrides.networks, sname, tname)
    paths = _pairs("path", s.paths, t.paths, overrides.path_prefixes, sname, tname)
    return HostMapping(
        bridges={**bridges, **overrides.bridges},
        networks={**networks, **overrides.networks},
        path_prefixes={**paths, **overrides.path_prefixes},
    )


# ---------------------------------------------------------------- parsing


def _etcd(doc: dict[str, Any], base: Path, source: str, daemon_tls: Tls | None) -> EtcdConfig:
    if "etcd" not in doc:
        raise bad(source, "no [etcd] table", 'add [etcd] with endpoints = ["HOST:PORT", ...]')
    allowed = tuple(f.name for f in fields(EtcdConfig) if f.name != "tls") + TLS_SECTION_KEYS
    t = Table(doc["etcd"], "etcd", source, allowed)
    if "endpoints" not in t:
        raise bad(source, "[etcd] lacks endpoints", 'add endpoints = ["HOST:PORT", ...]')
    values: dict[str, Any] = {"endpoints": t.strings("endpoints")}
    if "prefix" in t:
        prefix = t.string("prefix")
        if not prefix.endswith("/"):
            raise bad(source, f"[etcd] prefix {prefix!r} must end with '/'", f'write prefix = "{prefix}/"')
        values["prefix"] = prefix
    if "timeout_s" in t:
        values["timeout_s"] = float(t.number("timeout_s"))
    values["tls"] = etcd_tls_of(t, base, daemon_tls)
    if "server_name" in t:
        values["server_name"] = t.string("server_name")
    return EtcdConfig(**values)


def _limits(doc: dict[str, Any], source: str) -> Limits:
    default = CoordinatorConfig.limits
    if "limits" not in doc:
        return default
    allowed = tuple(f.name for f in fields(Limits))
    t = Table(doc["limits"], "limits", source, allowed)
    values = {f.name: getattr(default, f.name) for f in fields(Limits)}
    for key in ("per_host_outbound", "per_host_inbound", "cluster"):
        if key in t:
            values[key] = int(t.number(key, integer=True))
    if "prepare_ahead" in t:  # 0: none ahead
        ahead = _non_negative(t, "prepare_ahead")
        if ahead != int(ahead):
            raise bad(source, f"[limits] prepare_ahead must be a whole number, not {ahead:g}", "e.g. prepare_ahead = 1")
        values["prepare_ahead"] = int(ahead)
    if "host_bandwidth_mibps" in t:  # 0: none
        values["host_bandwidth_mibps"] = _whole(t, "host_bandwidth_mibps")
    if "reserve_after_s" in t:
        values["reserve_after_s"] = float(t.number("reserve_after_s"))
    return Limits(**values)


def _timeouts(doc: dict[str, Any], source: str) -> Timeouts:
    if "timeouts" not in doc:
        return Timeouts()
    kinds = {f.name: f.type for f in fields(Timeouts)}
    t = Table(doc["timeouts"], "timeouts", source, tuple(kinds))
    values: dict[str, Any] = {}
    for key in t.data:
        integer = kinds[key] in (int, "int")
        values[key] = int(t.number(key, integer=True)) if integer else float(t.number(key))
    return Timeouts(**values)


def _agents(doc: dict[str, Any], base: Path, source: str, daemon_tls: Tls | None) -> AgentsConfig:
    """``[agents]``; TLS to the agents is the [tls] identity unless the table gives its own
    ca/cert/key (or insecure = true)."""
    t = Table(
        doc.get("agents", {}),
        "agents",
        source,
        ("call_timeout_s", "inventory_ttl_s", "inventory_timeout_s", *TLS_SECTION_KEYS),
    )
    values: dict[str, Any] = {
        k: float(t.number(k)) for k in ("call_timeout_s", "inventory_ttl_s", "inventory_timeout_s") if k in t
    }
    values["tls"] = None if insecure_of(t) else (tls_of(t, base, required=False) or daemon_tls)
    return AgentsConfig(**values)


def _hosts(doc: dict[str, Any], source: str) -> dict[str, HostDecl]:
    if "hosts" not in doc:
        return {}
    table = doc["hosts"]
    if not isinstance(table, dict):
        raise bad(source, "[hosts] must hold one table per host", "write [hosts.NAME] tables")
    out = {}
    for name, data in table.items():
        t = Table(data, f"hosts.{name}", source, ("bridges", "networks", "paths", "bandwidth_mibps"))
        out[name] = HostDecl(
            name,
            **{k: t.names(k) for k in ("bridges", "networks", "paths") if k in t},
            bandwidth_mibps=_whole(t, "bandwidth_mibps") if "bandwidth_mibps" in t else 0,
        )
    return out


def _whole(t: Table, key: str) -> int:
    """A whole number >= 0."""
    v = _non_negative(t, key)
    if v != int(v):
        raise bad(t.source, f"[{t.section}] {key} must be a whole number, not {v:g}", f"e.g. {key} = 1000")
    return int(v)


def bandwidth_budget(config: CoordinatorConfig) -> Callable[[str], int] | None:
    """Each host's migration budget in MiB/s (0: none); None when no host has one.

    >>> etcd = EtcdConfig(("127.0.0.1:2379",))
    >>> c = CoordinatorConfig("c1", (), etcd, hosts={"h2": HostDecl("h2", bandwidth_mibps=50)})
    >>> b = bandwidth_budget(c)
    >>> b is not None and (b("h1"), b("h2"))
    (0, 50)
    >>> bandwidth_budget(CoordinatorConfig("c1", (), etcd)) is None
    True
    """
    default = config.limits.host_bandwidth_mibps
    own = {name: h.bandwidth_mibps for name, h in config.hosts.items() if h.bandwidth_mibps}
    if not default and not own:
        return None
    return lambda host: own.get(host, default)


def _non_negative(t: Table, key: str) -> float:
    """A number >= 0 (``Table.number`` wants a positive one; 0 means "none" / "forever" here)."""
    v = t.data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise bad(t.source, f"[{t.section}] {key} must be a number >= 0, not {v!r}", f"e.g. {key} = 1")
    return float(v)


def _placement(doc: dict[str, Any], source: str, limits: Limits) -> PlacementPolicy:
    if "placement" not in doc:
        return PlacementPolicy(inbound_limit=limits.per_host_inbound)
    t = Table(doc["placement"], "placement", source, ("weights", "anti_affinity"))
    weights = Weights()
    if "weights" in t:
        w = Table(t.data["weights"], "placement.weights", source, ("memory", "balance", "inbound"))
        weights = Weights(**{k: _non_negative(w, k) for k in ("memory", "balance", "inbound") if k in w})
    groups = []
    if "anti_affinity" in t:
        table = t.data["anti_affinity"]
        if not isinstance(table, dict):
            raise bad(source, "[placement] anti_affinity must be a table", 'write anti_affinity = { web = ["web-*"] }')
        g = Table(table, "placement.anti_affinity", source, tuple(table))
        groups = [AntiAffinity(name, g.strings(name)) for name in table]
    return PlacementPolicy(weights, limits.per_host_inbound, tuple(groups))


def _drains(doc: dict[str, Any], source: str) -> DrainsConfig:
    if "drains" not in doc:
        return DrainsConfig()
    t = Table(doc["drains"], "drains", source, ("bandwidth_mibps", "overhead_s", "max_attempts"))
    e = Estimates()
    estimates = Estimates(
        float(t.number("bandwidth_mibps")) if "bandwidth_mibps" in t else e.bandwidth_mibps,
        _non_negative(t, "overhead_s") if "overhead_s" in t else e.overhead_s,
    )
    if estimates.bandwidth_mibps <= 0:
        raise bad(source, "[drains] bandwidth_mibps must be positive", "e.g. bandwidth_mibps = 100")
    attempts = int(t.number("max_attempts", integer=True)) if "max_attempts" in t else DrainsConfig.max_attempts
    if attempts < 1:
        raise bad(source, "[drains] max_attempts must be at least 1", "e.g. max_attempts = 3")
    return DrainsConfig(estimates, attempts)


def _retention(doc: dict[str, Any], source: str) -> Retention:
    if "retention" not in doc:
        return Retention()
    keys = ("migrations_s", "idempotency_s", "drains_s", "sweep_s")
    t = Table(doc["retention"], "retention", source, keys)
    values = {k: _non_negative(t, k) for k in keys if k in t}
    r = Retention(**values)
    if min(r.migrations_s, r.idempotency_s, r.drains_s) < 0 or r.sweep_s <= 0:
        raise bad(source, "[retention] times must be positive (0 = keep forever)", "e.g. migrations_s = 604800")
    if r.migrations_s and (not r.idempotency_s or r.idempotency_s > r.migrations_s):
        raise bad(
            source,
            "[retention] idempotency_s must not exceed migrations_s (a key goes with its record at the latest)",
            f"e.g. idempotency_s = {r.migrations_s:g}",
        )
    return r


def _engine(doc: dict[str, Any], source: str) -> EngineConfig:
    if "engine" not in doc:
        return EngineConfig()
    t = Table(doc["engine"], "engine", source, ("progress_write_s",))
    return EngineConfig(float(t.number("progress_write_s")) if "progress_write_s" in t else 1.0)


def _policies(doc: dict[str, Any], source: str) -> dict[str, ConvergencePolicy]:
    table = doc.get("policies", {})
    if not isinstance(table, dict):
        raise bad(source, "[policies] must hold one table per policy", "write [policies.NAME] tables")
    out = {}
    for name, data in table.items():
        if not isinstance(data, dict):
            raise bad(source, f"policies.{name} is not a table", f"write [policies.{name}] with its keys")
        try:
            out[name] = policy_from_doc(data, name=name, where=f"[policies.{name}]")
        except FerryError as e:
            raise bad(source, e.message, e.hint) from e
    return out


def _selectors(
    doc: dict[str, Any], source: str, policies: Mapping[str, ConvergencePolicy]
) -> tuple[PolicySelector, ...]:
    rules = doc.get("policy_selectors", [])
    if not isinstance(rules, list):
        raise bad(source, "policy_selectors must be [[policy_selectors]] tables", "write [[policy_selectors]]")
    out = []
    for n, data in enumerate(rules, start=1):
        t = Table(data, f"policy_selectors #{n}", source, ("policy", "vm", "min_memory_mib", "max_memory_mib"))
        if "policy" not in t:
            raise bad(source, f"policy_selectors #{n} names no policy", 'add policy = "NAME"')
        name = t.string("policy")
        if name not in policies:
            raise bad(
                source, f"policy_selectors #{n} names policy {name!r}, which is not defined", f"add [policies.{name}]"
            )
        out.append(
            PolicySelector(
                name,
                vm=t.string("vm") if "vm" in t else "",
                min_memory_bytes=int(t.number("min_memory_mib", integer=True)) << 20 if "min_memory_mib" in t else 0,
                max_memory_bytes=int(t.number("max_memory_mib", integer=True)) << 20 if "max_memory_mib" in t else 0,
            )
        )
    return tuple(out)


def _prediction(doc: dict[str, Any], source: str) -> PredictionConfig:
    if "prediction" not in doc:
        return PredictionConfig()
    t = Table(doc["prediction"], "prediction", source, ("link_mibps", "periods_s", "on_submit", "reuse_s", "always"))
    values: dict[str, Any] = {}
    if "link_mibps" in t:
        values["link_mibps"] = int(t.number("link_mibps", integer=True))
    if "periods_s" in t:
        periods = t.data["periods_s"]
        if (
            not isinstance(periods, list)
            or not 1 <= len(periods) <= 8
            or not all(isinstance(p, int) and 1 <= p <= 60 for p in periods)
        ):
            raise bad(
                source, "[prediction] periods_s must be 1 to 60 s each, at most 8 of them", "write periods_s = [1, 3]"
            )
        values["periods_s"] = tuple(periods)
    if "reuse_s" in t:
        values["reuse_s"] = float(t.number("reuse_s"))
    for key in ("on_submit", "always"):
        if key in t:
            if not isinstance(t.data[key], bool):
                raise bad(source, f"[prediction] {key} must be true or false", f"write {key} = true")
            values[key] = t.data[key]
    return PredictionConfig(**values)


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> CoordinatorConfig:
    """Parse the coordinator's TOML text. Raises InvalidArgument (CONFIG_INVALID) naming the problem."""
    doc = parse_toml(text, source)
    base = base_dir or Path.cwd()
    Table(
        doc,
        "top level",
        source,
        (
            "coordinator",
            "etcd",
            "limits",
            "timeouts",
            "agents",
            "hosts",
            "tls",
            "metrics",
            "log",
            "placement",
            "drains",
            "retention",
            "engine",
            "policies",
            "policy_selectors",
            "prediction",
        ),
    )
    if "coordinator" not in doc:
        raise bad(source, "no [coordinator] table", "start the file with [coordinator] (id, listen)")
    c = Table(
        doc["coordinator"], "coordinator", source, ("id", "listen", "advertise", "election_ttl_s", "prepare_ttl_s")
    )
    missing = [k for k in ("id", "listen") if k not in c]
    if missing:
        raise bad(source, f"[coordinator] lacks {', '.join(missing)}", f"add {', '.join(missing)} to [coordinator]")
    values: dict[str, Any] = {"id": c.string("id"), "listen": c.strings("listen")}
    if "advertise" in c:
        values["advertise"] = c.string("advertise")
    for key in ("election_ttl_s", "prepare_ttl_s"):
        if key in c:
            values[key] = int(c.number(key, integer=True))
    if values.get("prepare_ttl_s", 0) > MAX_PREPARE_TTL_S:
        raise bad(source, f"[coordinator] prepare_ttl_s is over {MAX_PREPARE_TTL_S} s", "e.g. prepare_ttl_s = 900")
    values["tls"] = tls_section(doc, source, base)
    values["etcd"] = _etcd(doc, base, source, values["tls"])
    values["limits"] = _limits(doc, source)
    values["timeouts"] = _timeouts(doc, source)
    ttl = values.get("prepare_ttl_s", CoordinatorConfig.prepare_ttl_s)
    if values["limits"].prepare_ahead and values["timeouts"].slot_wait_s >= ttl:
        raise bad(
            source,
            f"[timeouts] slot_wait_s ({values['timeouts'].slot_wait_s:g} s) is not below [coordinator] prepare_ttl_s "
            f"({ttl} s): a migration prepared ahead of its slot would lose its prepare on the target while it waits",
            f"e.g. slot_wait_s = {ttl // 3}, or prepare_ahead = 0 in [limits]",
        )
    values["agents"] = _agents(doc, base, source, values["tls"])
    values["hosts"] = _hosts(doc, source)
    values["placement"] = _placement(doc, source, values["limits"])
    values["drains"] = _drains(doc, source)
    values["retention"] = _retention(doc, source)
    values["engine"] = _engine(doc, source)
    values["policies"] = _policies(doc, source)
    values["policy_selectors"] = _selectors(doc, source, values["policies"])
    values["prediction"] = _prediction(doc, source)
    if "metrics" in doc:
        values["metrics"] = metrics_of(Table(doc["metrics"], "metrics", source, METRICS_KEYS))
    if "log" in doc:
        values["log"] = log_of(Table(doc["log"], "log", source, LOG_KEYS))
    return CoordinatorConfig(**values)


def load_config(path: str | Path) -> CoordinatorConfig:
    """Read and parse the config file at ``path``."""
    return read_config(path, parse_config)
