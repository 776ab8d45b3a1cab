"""The coordinator's store key layout, shared by the engine (leader) and the API servicer.

Keys are relative to the store adapter's prefix:

===========================  =====================================================================
key                          value
===========================  =====================================================================
``migrations/<id>``          the MigrationRecord (``record.encode``); CAS on its mod revision
``idempotency/<key>``        a migration id (UTF-8): the migration submitted with that key
``vm-active/<vm_uuid>``      a migration id (UTF-8): the one migration of that VM not yet final.
                             The API creates it at submit (create-if-absent: a second submit for
                             the VM is refused); the engine deletes it when the record becomes
                             final, and only while it still names that record (``release_vm_active``)
``hosts/<name>``             an agent's registration (``HostRegistration`` JSON), written by the
                             agent under its own lease: absent = the agent is down
``leader``                   the elected coordinator (``election.LEADER_KEY``)
===========================  =====================================================================

There is no multi-key transaction in the Store port; each key is written on its own, so every
reader tolerates the others being momentarily out of step (a ``vm-active`` key naming a record
that is final, or not yet written).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from ferry.errors import Internal

from .election import LEADER_KEY
from .store import Conflict, Entry, Store

MIGRATIONS = "migrations/"
IDEMPOTENCY = "idempotency/"
VM_ACTIVE = "vm-active/"
HOSTS = "hosts/"
LEADER = LEADER_KEY


def _child(prefix: str, name: str) -> str:
    if not name or "/" in name:
        raise Internal(f"{name!r} cannot be a key below {prefix}", reason="KEY_INVALID",
                       hint="a coordinator bug: ids, names and UUIDs are non-empty and have no '/'")
    return prefix + name


def migration_key(migration_id: str) -> str:
    """``migrations/<id>``.

    >>> migration_key("m-42")
    'migrations/m-42'
    """
    return _child(MIGRATIONS, migration_id)


def idempotency_key(key: str) -> str:
    """``idempotency/<key>`` (the caller's idempotency key, which must not contain '/')."""
    return _child(IDEMPOTENCY, key)


def vm_active_key(vm_uuid: str) -> str:
    """``vm-active/<vm_uuid>``; one key per VM, by UUID (names can be reused).

    >>> vm_active_key("6c61622d-0000-4000-8000-000000000001")
    'vm-active/6c61622d-0000-4000-8000-000000000001'
    """
    return _child(VM_ACTIVE, vm_uuid)


def host_key(name: str) -> str:
    """``hosts/<name>``."""
    return _child(HOSTS, name)


def name_below(prefix: str, key: str) -> str:
    """The last part of ``key`` below ``prefix`` ('' when it is not below it).

    >>> name_below(MIGRATIONS, "migrations/m-42"), name_below(HOSTS, "migrations/m-42")
    ('m-42', '')
    """
    return key[len(prefix):] if key.startswith(prefix) else ""


def encode_id(migration_id: str) -> bytes:
    """The value of an ``idempotency/`` or ``vm-active/`` key."""
    return migration_id.encode()


def decode_id(value: bytes) -> str:
    return value.decode(errors="replace")


@dataclass(frozen=True)
class HostRegistration:
    """What an agent writes under ``hosts/<name>`` while it runs (under its own lease).

    ``address`` is the agent's gRPC address as the coordinator reaches it; ``libvirt_uri`` the
    URI peers' libvirtd use to reach this host (the migration target URI); ``migration_address``
    the address QEMU listens on for incoming migration streams ('' = libvirt's choice).
    """

    name: str
    address: str
    libvirt_uri: str = ""
    migration_address: str = ""
    registered_at: datetime | None = None

    def encode(self) -> bytes:
        at = self.registered_at.astimezone(UTC).isoformat() if self.registered_at else None
        return json.dumps({"name": self.name, "address": self.address, "libvirt_uri": self.libvirt_uri,
                           "migration_address": self.migration_address, "registered_at": at},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, value: bytes) -> HostRegistration:
        """Raises Internal (REGISTRATION_INVALID) for a value that is not a registration."""
        try:
            doc = json.loads(value)
            at = doc.get("registered_at")
            return cls(name=str(doc["name"]), address=str(doc["address"]),
                       libvirt_uri=str(doc.get("libvirt_uri") or ""),
                       migration_address=str(doc.get("migration_address") or ""),
                       registered_at=datetime.fromisoformat(at) if at else None)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise Internal(f"host registration is unreadable: {e!r}", reason="REGISTRATION_INVALID",
                           hint="run the same Ferry version on agents and coordinators; "
                                "delete the key if it is not an agent's") from e

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
    host = f"[{migration_address}]" if ":" in migration_address and not migration_address.startswith("[") \
        else migration_address
    return f"tcp://{host}"


async def release_vm_active(store: Store, vm_uuid: str, migration_id: str) -> bool:
    """Delete ``vm-active/<vm_uuid>`` if (and only while) it names ``migration_id``.

    Returns True when this call deleted it. A key naming another migration (a newer submit) or
    already gone is left alone. Safe to repeat.
    """
    key = vm_active_key(vm_uuid)
    while True:
        entry: Entry | None = await store.get(key)
        if entry is None or decode_id(entry.value) != migration_id:
            return False
        try:
            return await store.delete(key, expected_mod_revision=entry.mod_revision) is not None
        except Conflict:
            continue   # rewritten meanwhile: read it again
