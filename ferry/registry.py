"""Host registration and the fleet's directory of agents: shared by the agents and the coordinator.

An agent writes its :class:`HostRegistration` under ``hosts/<name>`` (``keys.host_key``) with its own
lease (``agent/registration.py``); the coordinator follows that prefix (``coordinator/fleet.py``) and
offers the result to its engine and preflight as a :class:`HostDirectory`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ferry.errors import FerryError, Internal
from ferry.model import Problem
from ferry.ports import AgentClient


@dataclass(frozen=True)
class HostRegistration:
    """What an agent writes under ``hosts/<name>`` while it runs (under its own lease).

    ``address`` is the agent's gRPC address as the coordinator reaches it; ``libvirt_uri`` the
    URI peers' libvirtd use to reach this host (the migration target URI); ``migration_address``
    the address QEMU listens on for incoming migration streams ('' = libvirt's choice);
    ``libvirt_up`` whether the agent's libvirtd answers (``agent/health.py``; absent in the
    values of older agents: True); ``registered_at`` when this run of the agent registered (a new
    value means the agent restarted or registered again).
    """

    name: str
    address: str
    libvirt_uri: str = ""
    migration_address: str = ""
    registered_at: datetime | None = None
    libvirt_up: bool = True

    def encode(self) -> bytes:
        at = self.registered_at.astimezone(UTC).isoformat() if self.registered_at else None
        return json.dumps(
            {
                "name": self.name,
                "address": self.address,
                "libvirt_uri": self.libvirt_uri,
                "migration_address": self.migration_address,
                "registered_at": at,
                "libvirt_up": self.libvirt_up,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> HostRegistration:
        """Raises Internal (REGISTRATION_INVALID) for a value that is not a registration."""
        try:
            doc = json.loads(value)
            at = doc.get("registered_at")
            return cls(
                name=str(doc["name"]),
                address=str(doc["address"]),
                libvirt_uri=str(doc.get("libvirt_uri") or ""),
                migration_address=str(doc.get("migration_address") or ""),
                registered_at=datetime.fromisoformat(at) if at else None,
                libvirt_up=bool(doc.get("libvirt_up", True)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise Internal(
                f"host registration is unreadable: {e!r}",
                reason="REGISTRATION_INVALID",
                hint="run the same Ferry version on agents and coordinators; delete the key if it is not an agent's",
            ) from e

    @property
    def migrate_uri(self) -> str:
        """QEMU's migration URI for this host as a target ('' = let libvirt choose).

        >>> HostRegistration("host2", "10.77.0.12:7070", migration_address="10.77.0.12").migrate_uri
        'tcp://10.77.0.12'
        """
        return migrate_uri_for(self.migration_address)


def migrate_uri_for(migration_address: str) -> str:
    """``tcp://<address>`` (IPv6 in brackets), or '' when the address is unknown."""
    if not migration_address:
        return ""
    host = (
        f"[{migration_address}]"
        if ":" in migration_address and not migration_address.startswith("[")
        else migration_address
    )
    return f"tcp://{host}"


@dataclass(frozen=True)
class HostChange:
    """A host's agent became available (registered, answering, its libvirtd up) or stopped
    being so; ``available`` with ``restarted``: it stayed available but its agent registered
    anew (a restart within its lease), so whatever it was doing may have been cut."""

    host: str
    available: bool
    restarted: bool = False
    why: Problem | None = None  # unavailable: which part is down, and what to check


def down_problem(
    name: str,
    address: str,
    registration: HostRegistration | None,
    reachable: bool | None,
    error: FerryError | None,
) -> Problem | None:
    """Why a host is not available (None: it is), naming the part that is down: its agent is not
    registered, its libvirtd does not answer the agent, or the agent does not answer this replica.

    >>> from dataclasses import replace
    >>> reg = HostRegistration("h2", "10.0.0.2:7070")
    >>> down_problem("h2", "", None, None, None).reason
    'AGENT_NOT_REGISTERED'
    >>> p = down_problem("h2", "10.0.0.2:7070", replace(reg, libvirt_up=False), True, None)
    >>> p.reason, p.message
    ('LIBVIRTD_DOWN', 'libvirtd on h2 does not answer its agent (the agent runs)')
    >>> down_problem("h2", "10.0.0.2:7070", reg, None, None) is None
    True
    """
    if registration is None:
        return Problem(
            "AGENT_NOT_REGISTERED",
            f"no agent is registered for {name}: ferry-agent does not run there, or it cannot reach etcd "
            "(its registration ends with its lease)",
            f"start ferry-agent on {name} (`systemctl status ferry-agent`; `ferry-agent --config FILE --check` "
            "checks its config and certificates)",
        )
    if not registration.libvirt_up:
        return Problem(
            "LIBVIRTD_DOWN",
            f"libvirtd on {name} does not answer its agent (the agent runs)",
            f"start libvirtd on {name} (`systemctl status libvirtd`); the host is used again within seconds "
            "of its return",
        )
    if reachable is False:
        why = f": {error.reason}: {error.message}" if error is not None else ""
        return Problem(
            "AGENT_UNREACHABLE",
            f"the agent on {name} is registered ({address}) but does not answer the coordinator{why}",
            (error.hint if error is not None and error.hint else "")
            or f"check ferry-agent on {name} and the network from the coordinator to {address}",
        )
    return None


class HostDirectory(Protocol):
    """The fleet's agents as the engine and preflight use them."""

    def client(self, host: str) -> AgentClient:
        """The agent client for ``host``; raises a FerryError for a host it does not know."""
        ...

    def available_hosts(self) -> set[str]:
        """Hosts whose agent is registered (lease alive) and answering."""
        ...

    def why_down(self, host: str) -> Problem | None:
        """Why ``host`` is not available (:func:`down_problem`); None when it is, or is not known."""
        ...

    def registration(self, host: str) -> HostRegistration | None:
        """What the host's agent registered (libvirt URI, migration address), None when unknown:
        callers then fall back to the host's inventory."""
        ...

    def changes(self) -> AsyncIterator[HostChange]:
        """Availability changes from now on (ends when the directory closes)."""
        ...
