"""The agent's configuration: one TOML file, parsed once at start into frozen dataclasses.

    [agent]
    name = "host1"                                   # unique host name in the fleet
    listen = ["10.77.0.11:7070", "unix:/run/ferry/agent.sock"]
    libvirt_uri = "qemu:///system"                   # the local libvirtd
    advertise_libvirt_uri = "qemu+tcp://10.77.0.11/system"   # how peers' libvirtd reach this one
    migration_address = "10.77.0.11"                 # QEMU's incoming migration stream
    image_dirs = ["/var/lib/libvirt/images"]
    shared_dirs = ["/mnt/nfs-images"]
    state_dir = "/var/lib/ferry-agent"
    prepare_ttl_s = 600
    libvirt_timeout_s = 30

    [tls]                                            # optional: mutual TLS for the gRPC API
    ca = "/etc/ferry/pki/ca.pem"
    cert = "/etc/ferry/pki/agent.pem"
    key = "/etc/ferry/pki/agent-key.pem"

    [registry]                                       # optional: announce this agent to the coordinators
    etcd_endpoints = ["10.77.0.1:2379"]
    address = "10.77.0.11:7070"                      # this agent's gRPC address as coordinators reach it
    prefix = "/ferry/"                               # the coordinators' etcd prefix
    ttl_s = 10                                       # the registration disappears this long after a crash

Unknown keys are an error naming the key: a typo must not silently fall back to a default.
Relative TLS paths are taken relative to the config file's directory.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.errors import InvalidArgument
from ferry.rpc import Tls


@dataclass(frozen=True)
class RegistryConfig:
    """Where the agent registers itself (``hosts/<name>`` under a lease; agent/registration.py)."""

    etcd_endpoints: tuple[str, ...]
    address: str
    prefix: str = "/ferry/"
    ttl_s: int = 10


@dataclass(frozen=True)
class AgentConfig:
    name: str
    listen: tuple[str, ...]
    advertise_libvirt_uri: str
    libvirt_uri: str = "qemu:///system"
    migration_address: str = ""
    image_dirs: tuple[str, ...] = ("/var/lib/libvirt/images",)
    shared_dirs: tuple[str, ...] = ()
    state_dir: str = "/var/lib/ferry-agent"
    prepare_ttl_s: int = 600
    libvirt_timeout_s: float = 30.0
    tls: Tls | None = None
    registry: RegistryConfig | None = None


_REQUIRED = ("name", "listen", "advertise_libvirt_uri")
_STRINGS = ("name", "libvirt_uri", "advertise_libvirt_uri", "migration_address", "state_dir")
_LISTS = ("listen", "image_dirs", "shared_dirs")
_AGENT_KEYS = frozenset(AgentConfig.__dataclass_fields__) - {"tls", "registry"}
_REGISTRY_KEYS = frozenset(RegistryConfig.__dataclass_fields__)
_TLS_KEYS = ("ca", "cert", "key")


def _bad(source: str, what: str, hint: str) -> InvalidArgument:
    return InvalidArgument(f"{source}: {what}", reason="CONFIG_INVALID", hint=hint)


def _check_keys(table: dict[str, Any], allowed: Any, section: str, source: str) -> None:
    for key in table:
        if key not in allowed:
            raise _bad(source, f"unknown key {key!r} in [{section}]",
                       f"remove {key!r} or fix its spelling; known keys: {', '.join(sorted(allowed))}")


def _string(table: dict[str, Any], key: str, section: str, source: str) -> str:
    value = table[key]
    if not isinstance(value, str):
        raise _bad(source, f"[{section}] {key} must be a string, not {type(value).__name__}",
                   f'write {key} = "..."')
    return value


def _string_list(table: dict[str, Any], key: str, source: str, section: str = "agent") -> tuple[str, ...]:
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(source, f"[{section}] {key} must be a list of non-empty strings",
                   f'write {key} = ["...", "..."]')
    return tuple(value)


def _number(table: dict[str, Any], key: str, source: str, *, integer: bool, section: str = "agent") -> int | float:
    value = table[key]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        raise _bad(source, f"[{section}] {key} must be a positive {'integer' if integer else 'number'}, "
                   f"not {value!r}", f"e.g. {key} = 30")
    return value


def _tls(table: Any, base: Path, source: str) -> Tls:
    if not isinstance(table, dict):
        raise _bad(source, "[tls] must be a table", "write [tls] with ca, cert and key")
    _check_keys(table, _TLS_KEYS, "tls", source)
    missing = [k for k in _TLS_KEYS if k not in table]
    if missing:
        raise _bad(source, f"[tls] lacks {', '.join(missing)}", "give all of ca, cert and key (PEM files)")
    paths = {k: base / _string(table, k, "tls", source) for k in _TLS_KEYS}
    return Tls(ca=paths["ca"], cert=paths["cert"], key=paths["key"])


def _registry(table: Any, source: str) -> RegistryConfig:
    if not isinstance(table, dict):
        raise _bad(source, "[registry] must be a table", "write [registry] with etcd_endpoints and address")
    _check_keys(table, _REGISTRY_KEYS, "registry", source)
    missing = [k for k in ("etcd_endpoints", "address") if k not in table]
    if missing:
        raise _bad(source, f"[registry] lacks {', '.join(missing)}", f"add {', '.join(missing)} to [registry]")
    values: dict[str, Any] = {"etcd_endpoints": _string_list(table, "etcd_endpoints", source, "registry"),
                              "address": _string(table, "address", "registry", source)}
    if not values["etcd_endpoints"] or not values["address"]:
        raise _bad(source, "[registry] etcd_endpoints and address must not be empty",
                   'e.g. etcd_endpoints = ["10.0.0.1:2379"], address = "10.0.0.7:7070"')
    if "prefix" in table:
        values["prefix"] = _string(table, "prefix", "registry", source)
        if not values["prefix"].endswith("/"):
            raise _bad(source, "[registry] prefix must end with '/'", 'e.g. prefix = "/ferry/"')
    if "ttl_s" in table:
        values["ttl_s"] = _number(table, "ttl_s", source, integer=True, section="registry")
        if values["ttl_s"] < 2:
            raise _bad(source, "[registry] ttl_s must be at least 2", "e.g. ttl_s = 10")
    return RegistryConfig(**values)


def parse_config(text: str, *, source: str = "<config>", base_dir: Path | None = None) -> AgentConfig:
    """Parse the agent's TOML text. Raises InvalidArgument (CONFIG_INVALID) naming the problem."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _bad(source, f"not valid TOML: {exc}", "fix the syntax at the line named") from exc
    _check_keys(doc, ("agent", "tls", "registry"), "top level", source)
    agent = doc.get("agent")
    if not isinstance(agent, dict):
        raise _bad(source, "no [agent] table", "start the file with [agent] and its keys")
    _check_keys(agent, _AGENT_KEYS, "agent", source)
    missing = [k for k in _REQUIRED if k not in agent]
    if missing:
        raise _bad(source, f"[agent] lacks {', '.join(missing)}", f"add {', '.join(missing)} to [agent]")
    values: dict[str, Any] = {}
    for key in _STRINGS:
        if key in agent:
            values[key] = _string(agent, key, "agent", source)
    for key in _LISTS:
        if key in agent:
            values[key] = _string_list(agent, key, source)
    if "prepare_ttl_s" in agent:
        values["prepare_ttl_s"] = _number(agent, "prepare_ttl_s", source, integer=True)
    if "libvirt_timeout_s" in agent:
        values["libvirt_timeout_s"] = float(_number(agent, "libvirt_timeout_s", source, integer=False))
    if not values["listen"]:
        raise _bad(source, "[agent] listen is empty", 'give at least one address, e.g. ["10.0.0.7:7070"]')
    if not values["name"]:
        raise _bad(source, "[agent] name is empty", "give the host's unique name in the fleet")
    if "tls" in doc:
        values["tls"] = _tls(doc["tls"], base_dir or Path.cwd(), source)
    if "registry" in doc:
        values["registry"] = _registry(doc["registry"], source)
    return AgentConfig(**values)


def load_config(path: str | Path) -> AgentConfig:
    """Read and parse the config file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read config {path}: {exc.strerror}", reason="CONFIG_UNREADABLE",
                              hint="pass an existing, readable file with --config") from exc
    return parse_config(text, source=str(path), base_dir=path.parent)
