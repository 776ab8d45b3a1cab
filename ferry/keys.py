"""The store key layout, shared by the coordinator (engine, API) and the agents (registration).

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
``hosts/<name>``             an agent's registration (``registry.HostRegistration`` JSON), written by the
                             agent under its own lease: absent = the agent is down
``last-seen/<host>``         the VMs a host last reported (``LastSeen`` JSON: when, and its Inventory
                             protobuf), written by a coordinator when they change, so that every
                             replica still lists a dead host's VMs (``coordinator/fleet.py``)
``leader``                   the elected coordinator (``LEADER_KEY``; ``election.py``)
===========================  =====================================================================

There is no multi-key transaction in the Store port; each key is written on its own, so every
reader tolerates the others being momentarily out of step (a ``vm-active`` key naming a record
that is final, or not yet written).
"""

from __future__ import annotations

from ferry.errors import Internal
from ferry.store import Conflict, Entry, Store

MIGRATIONS = "migrations/"
IDEMPOTENCY = "idempotency/"
VM_ACTIVE = "vm-active/"
HOSTS = "hosts/"
LAST_SEEN = "last-seen/"
LEADER_KEY = "leader"  # the elected coordinator (``election.py``)


def _child(prefix: str, name: str) -> str:
    if not name or "/" in name:
        raise Internal(
            f"{name!r} cannot be a key below {prefix}",
            reason="KEY_INVALID",
            hint="a coordinator bug: ids, names and UUIDs are non-empty and have no '/'",
        )
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


def last_seen_key(host: str) -> str:
    """``last-seen/<host>``.

    >>> last_seen_key("host1")
    'last-seen/host1'
    """
    return _child(LAST_SEEN, host)


def name_below(prefix: str, key: str) -> str:
    """The last part of ``key`` below ``prefix`` ('' when it is not below it).

    >>> name_below(MIGRATIONS, "migrations/m-42"), name_below(HOSTS, "migrations/m-42")
    ('m-42', '')
    """
    return key[len(prefix) :] if key.startswith(prefix) else ""


def encode_id(migration_id: str) -> bytes:
    """The value of an ``idempotency/`` or ``vm-active/`` key."""
    return migration_id.encode()


def decode_id(value: bytes) -> str:
    return value.decode(errors="replace")


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
            continue  # rewritten meanwhile: read it again
