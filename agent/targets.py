"""Where this agent may send a domain: only to registered hosts' libvirt URIs.

A Migrate names the target's libvirt URI (and optionally QEMU's migration URI). The agent does
not take the caller's word for it: the URI must be one a host registered in the store
(``hosts/<name>``, the registration's ``libvirt_uri``, read over the agent's own registration
connection), or one the agent's config lists (``migration_targets``, for fleets without a
registry). Anything else is refused (FAILED_PRECONDITION ``TARGET_NOT_REGISTERED``) before
libvirt is asked to connect anywhere. A QEMU migration URI must be ``tcp://HOST[:PORT]`` with
the target's own host or its registered migration address (``MIGRATE_URI_NOT_REGISTERED``).

A Migrate that names the target's host (``target_host``, as the coordinator does) is checked
against that one registration: one read of ``hosts/<name>``, not the whole ``hosts/`` listing
(at 1,000 hosts, ~300 KiB per Migrate). Anything short of a match (no such key, another URI, an
unreadable value, the store down) falls back to the full check, so the answer and its error
are the same either way.

When the store cannot be read, the last registrations read are used (and the failure logged):
registrations change rarely, and a migration the coordinator started should not fail because
this agent briefly lost etcd.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ferry import keys
from ferry.errors import FailedPrecondition, FerryError, InvalidArgument, clip
from ferry.registry import HostRegistration
from ferry.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A host this agent may migrate to."""

    uri: str
    name: str = ""
    migration_address: str = ""


def _host_of(uri: str) -> str:
    try:
        return (urlsplit(uri).hostname or "").lower()
    except ValueError:
        return ""


def _not_registered(uri: str, known: Iterable[Target]) -> FailedPrecondition:
    listed = ", ".join(sorted(f"{t.name or '?'}={t.uri}" for t in known)) or "none"
    return FailedPrecondition(
        f"{clip(uri)} is not the libvirt URI of a registered host",
        reason="TARGET_NOT_REGISTERED",
        hint=f"migrate only to hosts whose agent is registered (known: {clip(listed)}); "
        "without a registry, list the URI in migration_targets of this agent's config",
    )


class MigrationTargets:
    """The registered hosts (and the configured ``migration_targets``), checked per Migrate."""

    def __init__(
        self,
        own_name: str,
        static: Iterable[str] = (),
        *,
        store: Store | None = None,
        peers: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """``static``: URIs from the config; ``peers``: a callable listing more URIs (tests'
        in-process fleets); ``store``: the registry (``use_store`` can attach it later)."""
        self._own = own_name
        self._static = tuple(static)
        self._peers = peers
        self._store = store
        self._last: list[Target] = []

    def use_store(self, store: Store) -> None:
        """Read registrations from ``store`` (the agent's own registration connection)."""
        self._store = store

    async def known(self) -> list[Target]:
        """Every target allowed right now."""
        out = [Target(uri) for uri in self._static]
        if self._peers is not None:
            out += [Target(uri) for uri in self._peers()]
        if self._store is not None:
            out += await self._registered()
        return out

    async def _named(self, host: str, target_uri: str) -> Target | None:
        """``host``'s registration as a target when its URI is ``target_uri``; None otherwise."""
        if self._store is None or host == self._own or "/" in host:
            return None
        try:
            entry = await self._store.get(keys.host_key(host))
            reg = HostRegistration.decode(entry.value) if entry is not None else None
        except FerryError:
            return None  # the full check says what is wrong (or uses the last registrations read)
        if reg is None or reg.name != host or reg.libvirt_uri != target_uri:
            return None
        return Target(reg.libvirt_uri, reg.name, reg.migration_address)

    async def _registered(self) -> list[Target]:
        assert self._store is not None
        try:
            entries, _ = await self._store.list(keys.HOSTS)
        except FerryError as exc:
            log.warning("cannot read host registrations (%s: %s); using the last ones read", exc.reason, exc)
            return list(self._last)
        found = []
        for e in entries:
            try:
                reg = HostRegistration.decode(e.value)
            except FerryError:
                continue
            if reg.name != self._own and reg.libvirt_uri:
                found.append(Target(reg.libvirt_uri, reg.name, reg.migration_address))
        self._last = found
        return found

    async def check(self, target_uri: str, migrate_uri: str = "", *, host: str = "") -> Target:
        """The registered target ``target_uri`` names; raises when it names none (see the module
        doc). ``host``: the target's registered name, when the caller knows it."""
        target = await self._named(host, target_uri) if host else None
        if target is None:
            known = await self.known()
            target = next((t for t in known if t.uri == target_uri), None)
            if target is None:
                raise _not_registered(target_uri, known)
        if migrate_uri:
            parts = urlsplit(migrate_uri) if "://" in migrate_uri else None
            try:
                host = (parts.hostname or "").lower() if parts is not None else ""
                port_ok = parts is not None and (parts.port is None or 0 < parts.port < 65536)
            except ValueError:
                host, port_ok = "", False
            allowed = {_host_of(target.uri), target.migration_address.strip("[]").lower()} - {""}
            if parts is None or parts.scheme != "tcp" or not port_ok or parts.path not in ("", "/"):
                raise InvalidArgument(
                    f"migrate_uri {clip(migrate_uri)!r} is not tcp://HOST[:PORT]",
                    reason="MIGRATE_URI_INVALID",
                    hint="leave migrate_uri empty (libvirt's choice) or give tcp://TARGET_ADDRESS",
                )
            if host not in allowed:
                raise FailedPrecondition(
                    f"migrate_uri {clip(migrate_uri)!r} does not name {target.name or target.uri}'s addresses",
                    reason="MIGRATE_URI_NOT_REGISTERED",
                    hint=f"use tcp:// with one of {', '.join(sorted(allowed)) or 'the target host'}, or leave it empty",
                )
        return target
