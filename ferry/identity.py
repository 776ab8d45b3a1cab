"""Who is calling: identities and roles as Ferry's certificates carry them (pure: no TLS library here).

The scheme. Every Ferry certificate names exactly one identity in a URI subject alternative name::

    ferry://ROLE/NAME          e.g. ferry://agent/host1, ferry://coordinator/c1, ferry://operator/alice

ROLE is one of :data:`ROLES`; NAME is the host name for an agent, the replica id for a
coordinator, a person or program for the others. The subject's common name is ``ROLE.NAME``:
etcd takes it as the user name when it checks client certificates (``--client-cert-auth``), so
one certificate per identity serves both Ferry's gRPC APIs and etcd. Server certificates add the
DNS names and IP addresses clients dial; an agent's certificate carries its host name as a DNS
name, which the coordinator checks against the host's registration (see
``ferry.rpc.create_channel(server_name=...)``).

What each role may call is one table, ``ferry.authz.RULES``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SCHEME = "ferry"


class Role(enum.StrEnum):
    """The roles a certificate can carry (least privileged last)."""

    AGENT = "agent"  # a hypervisor's agent: serves the Agent API, writes only its own etcd key
    COORDINATOR = "coordinator"  # the only caller of the agents' mutating RPCs; owns the etcd prefix
    OPERATOR = "operator"  # a person: submit, cancel, mapping overrides, unsafe options, and every read
    SCHEDULER = "scheduler"  # a program: submit and cancel, without overrides or unsafe options
    READER = "reader"  # list, get, watch, preflight


ROLES = tuple(r.value for r in Role)


@dataclass(frozen=True)
class Identity:
    """One caller: a role and a name (``ferry://ROLE/NAME``)."""

    role: Role
    name: str

    @property
    def uri(self) -> str:
        """The URI SAN.

        >>> Identity(Role.AGENT, "host1").uri
        'ferry://agent/host1'
        """
        return f"{SCHEME}://{self.role.value}/{self.name}"

    @property
    def common_name(self) -> str:
        """The subject CN (etcd's user name for this identity).

        >>> Identity(Role.COORDINATOR, "c1").common_name
        'coordinator.c1'
        """
        return f"{self.role.value}.{self.name}"

    def __str__(self) -> str:
        return self.uri


def valid_name(name: str) -> bool:
    """A NAME: 1-52 characters of letters, digits, ``.``, ``-``, ``_`` (so that the common name
    ``ROLE.NAME`` fits X.509's 64 characters).

    >>> valid_name("host1"), valid_name("a/b"), valid_name("")
    (True, False, False)
    """
    return 0 < len(name) <= 52 and all(c.isascii() and (c.isalnum() or c in ".-_") for c in name)


def parse_identity_uri(uri: str) -> Identity | None:
    """The identity a ``ferry://ROLE/NAME`` URI names; None for anything else.

    >>> parse_identity_uri("ferry://operator/alice")
    Identity(role=<Role.OPERATOR: 'operator'>, name='alice')
    >>> parse_identity_uri("ferry://king/alice") is None, parse_identity_uri("spiffe://x/y") is None
    (True, True)
    """
    prefix = f"{SCHEME}://"
    if not uri.startswith(prefix):
        return None
    role, sep, name = uri[len(prefix) :].partition("/")
    if not sep or role not in ROLES or not valid_name(name):
        return None
    return Identity(Role(role), name)


def identity_of(uris: list[str]) -> Identity | None:
    """The one identity among a certificate's URI SANs; None when there is none or more than one."""
    found = {i for i in (parse_identity_uri(u) for u in uris) if i is not None}
    return found.pop() if len(found) == 1 else None
