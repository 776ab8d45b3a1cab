"""The agent's configuration: one TOML file, parsed once at start into frozen dataclasses.

    [agent]
    name = "host1"                                   # unique host name in the fleet
    listen = ["10.77.0.11:7070", "unix:/run/ferry/agent.sock"]
    libvirt_uri = "qemu:///system"                   # the local libvirtd
    advertise_libvirt_uri = "qemu+tcp://10.77.0.11/system"   # how peers' libvirtd reach this one
    migration_address = "10.77.0.11"                 # QEMU's incoming migration stream
    image_dirs = ["/var/lib/libvirt/images"]           # the only places images are created or removed
    shared_dirs = ["/mnt/nfs-images"]
    bridges = ["br-guest"]                           # bridges guests may use (default: every bridge)
    migration_targets = ["qemu+tls://host2/system"]  # without [registry]: where Migrate may go
    state_dir = "/var/lib/ferry-agent"
    prepare_ttl_s = 600
    libvirt_timeout_s = 30
    migration_tls = true                             # VIR_MIGRATE_TLS (the default; false: plaintext streams)
    migration_tls_dir = "/etc/pki/qemu"              # QEMU's migration certificates (qemu.conf's x509 dir)

    [tls]                                            # required: mutual TLS for the gRPC API
    ca = "/etc/ferry/pki/ca.pem"                     # (or insecure = true: plaintext, a warning at start)
    cert = "/etc/ferry/pki/agent.host1.pem"          # identity ferry://agent/host1 (ferry/identity.py)
    key = "/etc/ferry/pki/agent.host1-key.pem"

    [registry]                                       # optional: announce this agent to the coordinators
    etcd_endpoints = ["10.77.0.1:2379"]
    address = "10.77.0.11:7070"                      # this agent's gRPC address as coordinators reach it
    prefix = "/ferry/"                               # the coordinators' etcd prefix
    ttl_s = 10                                       # the registration disappears this long after a crash
    # ca/cert/key/server_name: TLS to etcd (default: the [tls] files); insecure = true for plaintext

    [metrics]                                        # Prometheus: GET /metrics (on unless enabled = false)
    listen = ["10.77.0.11:9470"]                     # default: the first gRPC address's host, port 9470

    [log]
    format = "json"                                  # "text" (default) or "json" (one object per line)
    level = "info"                                   # --log-level wins

Unknown keys are an error naming the key: a typo must not silently fall back to a default.
TLS is required: a config without [tls], or with only part of ca/cert/key, is refused naming the
missing key. Relative TLS paths are taken relative to the config file's directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    log_of,
    metrics_listen_default,
    metrics_of,
    parse_toml,
    read_config,
    tls_section,
)

METRICS_PORT = 9470


@dataclass(frozen=True)
class RegistryConfig:
    """Where the agent registers itself (``hosts/<name>`` under a lease; agent/registration.py)."""

    etcd_endpoints: tuple[str, ...]
    address: str
    prefix: str = "/ferry/"
    ttl_s: int = 10
    tls: Tls | None = None  # client TLS to etcd (None: plaintext, only with insecure = true)
    server_name: str | None = None  # a DNS name in the etcd members' certificates (default: the dialled host)


@dataclass(frozen=True)
class AgentConfig:
    name: str
    listen: tuple[str, ...]
    advertise_libvirt_uri: str
    libvirt_uri: str = "qemu:///system"
    migration_address: str = ""
    image_dirs: tuple[str, ...] = ("/var/lib/libvirt/images",)
    shared_dirs: tuple[str, ...] = ()
    bridges: tuple[str, ...] = ()  # the bridges guests may use; empty: every Linux and Open vSwitch bridge
    # libvirt URIs Migrate may go to besides the registered hosts' (fleets without [registry])
    migration_targets: tuple[str, ...] = ()
    state_dir: str = "/var/lib/ferry-agent"
    prepare_ttl_s: int = 600
    libvirt_timeout_s: float = 30.0
    migration_tls: bool = True
    migration_tls_dir: str = "/etc/pki/qemu"
    tls: Tls | None = None
    registry: RegistryConfig | None = None
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()

    @property
    def metrics_listen(self) -> tuple[str, ...]:
        """Where the metrics endpoint listens (``[metrics] listen``, else beside the gRPC API)."""
        return self.metrics.listen or metrics_listen_default(self.listen, METRICS_PORT)


_REQUIRED = ("name", "listen", "advertise_libvirt_uri")
_STRINGS = ("name", "libvirt_uri", "advertise_libvirt_uri", "migration_address", "state_dir", "migration_tls_dir")
_AGENT_KEYS = frozenset(AgentConfig.__dataclass_fields__) - {"tls", "registry", "metrics", "log"}
_REGISTRY_KEYS = (frozenset(RegistryConfig.__dataclass_fields__) - {"tls"}) | set(TLS_SECTION_KEYS)


def _registry(t: Table, base: Path, daemon_tls: Tls | None) -> RegistryConfig:
    t.require("etcd_endpoints", "address")
    values: dict[str, Any] = {"etcd_endpoints": t.strings("etcd_endpoints"), "address": t.string("address")}
    values["tls"] = etcd_tls_of(t, base, daemon_tls)
    if "server_name" in t:
        values["server_name"] = t.string("server_name")
    if "prefix" in t:
        values["prefix"] = t.string("prefix")
        if not values["prefix"].endswith("/"):
            raise bad(t.source, "[registry] prefix must end with '/'", 'e.g. prefix = "/ferry/"')
    if "ttl_s" in t:
        values["ttl_s"] = int(t.number("ttl_s", integer=True))
        if values["ttl_s"] < 2:
            raise bad(t.source, "[registry] ttl_s must be at least 2", "e.g. ttl_s = 10")
    return RegistryConfig(**values)


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> AgentConfig:
    """Parse the agent's TOML text. Raises InvalidArgument (CONFIG_INVALID) naming the problem."""
    doc = parse_toml(text, source)
    Table(doc, "top level", source, ("agent", "tls", "registry", "metrics", "log"))
    if "agent" not in doc:
        raise bad(source, "no [agent] table", "start the file with [agent] and its keys")
    a = Table(doc["agent"], "agent", source, _AGENT_KEYS)
    a.require(*_REQUIRED)
    values: dict[str, Any] = {key: a.string(key, nonempty=key in _REQUIRED) for key in _STRINGS if key in a}
    values["listen"] = a.strings("listen")
    for key in ("image_dirs", "shared_dirs", "bridges", "migration_targets"):
        if key in a:
            values[key] = a.strings(key, nonempty=False)
    for key in ("image_dirs", "shared_dirs"):
        for d in values.get(key, ()):
            if not d.startswith("/") or ".." in d.split("/"):
                raise bad(
                    source,
                    f"[agent] {key}: {d!r} is not an absolute path without '..'",
                    f'e.g. {key} = ["/srv/images"]',
                )
    if "prepare_ttl_s" in a:
        values["prepare_ttl_s"] = int(a.number("prepare_ttl_s", integer=True))
    if "migration_tls" in a:
        values["migration_tls"] = a.flag("migration_tls")
    if "libvirt_timeout_s" in a:
        values["libvirt_timeout_s"] = float(a.number("libvirt_timeout_s"))
    base = base_dir or Path.cwd()
    values["tls"] = tls_section(doc, source, base)
    if "registry" in doc:
        values["registry"] = _registry(Table(doc["registry"], "registry", source, _REGISTRY_KEYS), base, values["tls"])
    if "metrics" in doc:
        values["metrics"] = metrics_of(Table(doc["metrics"], "metrics", source, METRICS_KEYS))
    if "log" in doc:
        values["log"] = log_of(Table(doc["log"], "log", source, LOG_KEYS))
    return AgentConfig(**values)


def load_config(path: str | Path) -> AgentConfig:
    """Read and parse the config file at ``path``."""
    return read_config(path, parse_config)
