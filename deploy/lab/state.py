"""state.json: every process, address and socket a lab started, so that ``status`` can report
them and ``down`` can stop exactly those (by recorded PID) and nothing else.

Everything the lab runs is a Component: the holder processes of the namespaces, each host's
libvirtd and agent, the etcd members and coordinators in the core namespace (add a
Component with its own ``kind``; ``down`` stops components in ``stop_rank`` order, holders
last, so a new kind needs no change in the teardown).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ferry.errors import FailedPrecondition
from ferry.lab.procs import ProcessRecord

STATE_VERSION = 1

# Lower ranks stop first. Holders go last: their namespaces (and every mount in them) vanish
# with them, once nothing else is left inside.
STOP_RANK: Mapping[str, int] = {
    "agent": 10,
    "coordinator": 20,
    "etcd": 30,
    "libvirtd": 40,
    "holder": 90,
}
DEFAULT_STOP_RANK = 50
CORE = "core"


def stop_rank(kind: str, place: str) -> int:
    """When ``down`` stops a component; the core holder after every host holder."""
    rank = STOP_RANK.get(kind, DEFAULT_STOP_RANK)
    return rank + 1 if kind == "holder" and place == CORE else rank


@dataclass(frozen=True)
class Component:
    """One thing the lab runs."""

    name: str  # unique in the lab: "core", "host1", "host1/libvirtd", ...
    kind: str  # holder | libvirtd | agent | etcd | coordinator | ...
    place: str  # whose namespaces it runs in: "core" or a host name
    process: ProcessRecord | None  # None: it could not be started at all
    endpoints: Mapping[str, str] = field(default_factory=dict)  # e.g. {"grpc": "unix:..."}
    error: str = ""  # why it is not running as it should (start failure)

    @property
    def stop_rank(self) -> int:
        return stop_rank(self.kind, self.place)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "place": self.place,
            "process": self.process.to_json() if self.process else None,
            "endpoints": dict(self.endpoints),
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Component:
        process = data.get("process")
        return cls(
            name=data["name"],
            kind=data["kind"],
            place=data["place"],
            process=ProcessRecord.from_json(process) if process else None,
            endpoints=dict(data.get("endpoints", {})),
            error=data.get("error", ""),
        )


@dataclass(frozen=True)
class HostRecord:
    """A lab host's identity and addresses (its processes are Components placed on it)."""

    name: str
    index: int
    address: str
    host_uuid: str
    guest_bridge: str
    libvirt_uri: str  # root namespace, unix socket
    tcp_uri: str  # peers: qemu+tcp://ADDRESS/system
    agent_address: str  # root namespace: unix:<lab>/hosts/NAME/agent.sock
    agent_listen: str  # inside the host: ADDRESS:7070
    namespaces: Mapping[str, str] = field(default_factory=dict)  # net/mnt/uts ids
    image_fs_bytes: int = 0  # its own image filesystem (tmpfs) of this size; 0: part of /var

    def to_json(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HostRecord:
        return cls(**{**data, "namespaces": dict(data.get("namespaces", {}))})


@dataclass(frozen=True)
class LabState:
    lab_dir: str
    created: str  # ISO 8601, for people
    core_address: str
    core_namespaces: Mapping[str, str] = field(default_factory=dict)
    hosts: tuple[HostRecord, ...] = ()
    components: tuple[Component, ...] = ()
    user_cli_config: str = ""  # the operator's CLI config ``up`` wrote ("" = none), for down

    def of_kind(self, kind: str) -> tuple[Component, ...]:
        return tuple(c for c in self.components if c.kind == kind)

    def host(self, name: str) -> HostRecord | None:
        return next((h for h in self.hosts if h.name == name), None)

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def holder(self, place: str) -> ProcessRecord | None:
        """The holder process whose namespaces ``place`` ("core" or a host) is."""
        component = self.component(place)
        return component.process if component is not None else None

    def with_component(self, component: Component) -> LabState:
        """This state with ``component`` added (or replacing the one with its name, in its
        place: a restarted process keeps its position in status)."""
        if self.component(component.name) is None:
            return replace(self, components=(*self.components, component))
        return replace(self, components=tuple(component if c.name == component.name else c for c in self.components))

    def with_host(self, host: HostRecord) -> LabState:
        others = tuple(h for h in self.hosts if h.name != host.name)
        return replace(self, hosts=tuple(sorted((*others, host), key=lambda h: h.index)))

    def all_namespaces(self) -> set[str]:
        ids = set(self.core_namespaces.values())
        for host in self.hosts:
            ids |= set(host.namespaces.values())
        return ids

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "lab_dir": self.lab_dir,
            "created": self.created,
            "core_address": self.core_address,
            "core_namespaces": dict(self.core_namespaces),
            "hosts": [h.to_json() for h in self.hosts],
            "components": [c.to_json() for c in self.components],
            "user_cli_config": self.user_cli_config,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LabState:
        if data.get("version") != STATE_VERSION:
            raise FailedPrecondition(
                f"lab state version {data.get('version')} is not {STATE_VERSION}",
                reason="LAB_STATE_VERSION",
                hint="stop that lab with the ferry-lab version that started it",
            )
        return cls(
            lab_dir=data["lab_dir"],
            created=data["created"],
            core_address=data["core_address"],
            core_namespaces=dict(data.get("core_namespaces", {})),
            hosts=tuple(HostRecord.from_json(h) for h in data.get("hosts", [])),
            components=tuple(Component.from_json(c) for c in data.get("components", [])),
            user_cli_config=str(data.get("user_cli_config", "")),
        )


def load(path: Path) -> LabState | None:
    """The recorded state, or None when no lab was started in that dir."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return LabState.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise FailedPrecondition(
            f"{path} is not a lab state file: {exc}",
            reason="LAB_STATE_CORRUPT",
            hint="stop leftover processes listed in it by hand, then remove the file",
        ) from exc


def save(path: Path, state: LabState) -> None:
    """Write atomically (a crash never leaves half a state file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Serialize commands that change a lab (up, down) on the same lab dir."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
