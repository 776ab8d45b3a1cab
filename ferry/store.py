"""The coordinator's Store port: a small, etcd-shaped key-value contract.

The coordinator keeps its state (leader lock, migration records, slots) in a store that offers
revisions, compare-and-set, leases and watches. This module is the contract; the adapters are
``memory_store.MemoryStore`` (tests, fleet simulations) and ``etcd_store.EtcdStore`` (the only
module that imports the etcd client). A contract suite runs against both.

Keys are ``str`` relative to the adapter's namespace (e.g. ``"leader"``, ``"migrations/42"``),
values are ``bytes``. Every write moves one global revision counter forward; each key records the
revision that created it and the one that last modified it.

Which calls are atomic compare-and-set (decided by the store in one step, never by read-then-write
in the client):

=============================================  ==============================================
call                                           atomic condition
=============================================  ==============================================
``create(key, value, lease)``                  key absent (``create_revision == 0``)
``update(key, value, expected_mod_revision)``  key's ``mod_revision == expected_mod_revision``
``delete(key, expected_mod_revision=N)``       key's ``mod_revision == N`` (absent is fine)
``delete(key)``                                none: unconditional
``commit([Put(...), Remove(...), ...])``       every write's own condition, all in one
                                               revision or none
=============================================  ==============================================

``commit`` joins writes that belong together into one store write (one revision, one raft round):
a migration record with the claim on its VM, the final record with the claim's release.

Retried writes are idempotent. A write whose reply was lost (timeout after the store applied it)
is retried by the adapter; the retry's compare then fails against our own write. When that
happens the adapter re-reads the key and reports success if it holds exactly the bytes (and
lease) we wrote at a revision newer than the one we compared against. Two writers that write the
same bytes are therefore indistinguishable after a lost reply: where ownership matters, put the
writer's identity in the value (the leader key does).

Leases: a lease expires ``ttl`` seconds after its last keepalive reached the store, and every key
attached to it is deleted in one revision. A holder measures its own deadline from the time it
*sent* the keepalive (see ``election.py``).

Watch contract: ``watch(prefix, start_revision)`` yields every change under ``prefix`` with
revision >= ``start_revision``, in revision order, across reconnects. If the store no longer has
that history (compaction, or a gap a reconnect cannot close) it yields one :class:`Resync`
carrying the prefix's full content at a revision R, then continues with changes after R: the
consumer replaces its view with the snapshot. The usual pattern is
``entries, rev = await store.list(p)`` then ``watch(p, rev + 1)``.

Errors (all ``ferry.errors`` types): :class:`Conflict` (CAS lost), ``AlreadyExists`` (create on an
existing key), :class:`LeaseLost` (lease expired or revoked), ``Unavailable`` (store unreachable;
the hint names the endpoints), ``FailedPrecondition`` (credentials/TLS refused).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ferry.errors import Aborted, AlreadyExists, FerryError


class Conflict(Aborted):
    """A compare-and-set lost: the key changed since the caller read it. Re-read and decide again."""

    default_reason = "CAS_CONFLICT"


class LeaseLost(Aborted):
    """The lease expired or was revoked; the keys attached to it are gone."""

    default_reason = "LEASE_LOST"


def key_exists(key: str) -> AlreadyExists:
    """The error ``create`` raises when ``key`` is already there."""
    return AlreadyExists(
        f"store key {key!r} already exists",
        reason="KEY_EXISTS",
        hint="read the key and decide from its value (create only succeeds on an absent key)",
    )


def cas_conflict(key: str, expected: int, actual: int) -> Conflict:
    """The error a lost compare-and-set raises (``actual`` is 0 for an absent key)."""
    return Conflict(
        f"store key {key!r} changed: expected mod revision {expected}, found {actual or 'no key'}",
        hint="re-read the key and retry the decision with its new revision",
    )


def lease_lost(lease: int) -> LeaseLost:
    return LeaseLost(
        f"lease {lease:x} has expired or was revoked",
        hint="grant a new lease; keys attached to the old one are gone",
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as the store holds it.

    ``lease`` is None for keys without a lease. For a deletion event, ``value`` is empty,
    ``create_revision`` is 0 and ``mod_revision`` is the revision of the deletion.
    """

    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int | None = None


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A key was written (``PUT``: ``entry`` is its new state) or deleted (``DELETE``)."""

    kind: EventKind
    entry: Entry

    @property
    def revision(self) -> int:
        return self.entry.mod_revision


@dataclass(frozen=True, slots=True)
class Resync:
    """History was lost: ``entries`` is everything under the prefix at ``revision``.

    Replace your view with it; the events that follow have revisions > ``revision``.
    """

    entries: tuple[Entry, ...]
    revision: int


def write_landed(current: Entry | None, value: bytes, lease: int | None, after_revision: int) -> bool:
    """After a retried write's compare failed: does the key hold exactly our write?

    True when the key exists with our bytes and lease, modified after ``after_revision``
    (the revision we compared against; 0 for a create).

    >>> e = Entry("k", b"v2", mod_revision=8, create_revision=3)
    >>> write_landed(e, b"v2", None, after_revision=5)
    True
    >>> write_landed(e, b"v3", None, after_revision=5)   # someone else's bytes
    False
    >>> write_landed(e, b"v2", None, after_revision=8)   # not newer than what we compared
    False
    """
    return (
        current is not None
        and current.value == value
        and current.lease == lease
        and current.mod_revision > after_revision
    )


@dataclass(frozen=True)
class Put:
    """In a :meth:`Store.commit`: write ``value`` at ``key`` if the key's ``mod_revision`` is
    ``expected_mod_revision``; 0 means the key must not exist (a create). Never leased."""

    key: str
    value: bytes
    expected_mod_revision: int = 0


@dataclass(frozen=True)
class Remove:
    """In a :meth:`Store.commit`: delete ``key`` if its ``mod_revision`` is ``expected_mod_revision``."""

    key: str
    expected_mod_revision: int


Write = Put | Remove


def commit_landed(current: dict[str, Entry | None], writes: Sequence[Write]) -> int | None:
    """After a retried commit's compare failed: did the first attempt apply it? The revision it
    applied at when every Put's key holds our bytes (no lease) at one revision newer than what
    we compared against, and every Remove's key is gone; else None. ``current``: each key now.

    >>> w = [Put("m/1", b"r", 0), Remove("v/1", 5)]
    >>> commit_landed({"m/1": Entry("m/1", b"r", 9, 9), "v/1": None}, w)
    9
    >>> commit_landed({"m/1": Entry("m/1", b"r", 9, 9), "v/1": Entry("v/1", b"x", 5, 5)}, w) is None
    True
    >>> commit_landed({"m/1": Entry("m/1", b"theirs", 9, 9), "v/1": None}, w) is None
    True
    """
    revisions = set()
    for w in writes:
        now = current.get(w.key)
        if isinstance(w, Remove):
            if now is not None:
                return None
            continue
        if not write_landed(now, w.value, None, w.expected_mod_revision):
            return None
        assert now is not None
        revisions.add(now.mod_revision)
    return revisions.pop() if len(revisions) == 1 else None


def check_writes(writes: Sequence[Write]) -> None:
    """A commit needs at least one Put and distinct keys (etcd refuses a key twice in a txn)."""
    if not any(isinstance(w, Put) for w in writes):
        raise ValueError("a commit needs at least one Put")
    if len({w.key for w in writes}) != len(writes):
        raise ValueError("a commit names a key twice")


def commit_refused(w: Write, actual: int) -> FerryError:
    """The error for the first write whose condition failed (``actual``: its key's mod_revision, 0 absent)."""
    if isinstance(w, Put) and w.expected_mod_revision == 0:
        return key_exists(w.key)
    return cas_conflict(w.key, w.expected_mod_revision, actual)


class Store(Protocol):
    """The store as the coordinator uses it. All calls are coroutines; all errors are FerryErrors."""

    async def get(self, key: str) -> Entry | None:
        """The key's current entry (linearizable read), or None when absent."""
        ...

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        """Every key starting with ``prefix`` (sorted by key) and the store revision of this read."""
        ...

    async def create(self, key: str, value: bytes, lease: int | None = None) -> int:
        """Atomic create-if-absent. Returns the new revision; raises AlreadyExists (KEY_EXISTS)."""
        ...

    async def update(self, key: str, value: bytes, expected_mod_revision: int, lease: int | None = None) -> int:
        """Atomic compare-and-set on ``mod_revision``; returns the new revision, raises Conflict.
        Only an existing key is updated (``create`` writes an absent one): an expected revision
        of 0 is a Conflict, though etcd's compare alone would take it for an absent key's.

        The written key is attached to ``lease`` (None: no lease), as with etcd's put. A dead lease
        is LeaseLost only once the compare held (as etcd decides the compare first).
        """
        ...

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        """Delete the key; with ``expected_mod_revision`` only if unchanged (else Conflict).

        Returns the revision of the deletion, or None when the key was already absent (this
        includes a retried delete whose first attempt had applied).
        """
        ...

    async def commit(self, writes: Sequence[Write]) -> int:
        """Every write in one revision, each under its own condition, or none of them: then
        AlreadyExists or Conflict for the first write (in the given order) whose condition failed.
        Returns the new revision. At least one Put; each key once."""
        ...

    async def grant_lease(self, ttl_s: int) -> int:
        """A new lease id; the lease expires ``ttl_s`` seconds after its last keepalive."""
        ...

    async def keepalive(self, lease: int) -> int:
        """Renew the lease; returns its TTL in seconds from now. Raises LeaseLost."""
        ...

    async def revoke(self, lease: int) -> None:
        """End the lease now, deleting its keys. Revoking an unknown lease is not an error."""
        ...

    def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[WatchEvent | Resync, None]:
        """Changes under ``prefix`` from ``start_revision`` on (see the module doc). Runs until closed.

        An async generator: a consumer that stops early closes it (``aclose()``, ``contextlib.aclosing``).
        """
        ...

    async def close(self) -> None:
        """Release connections and background tasks; open watches end."""
        ...
