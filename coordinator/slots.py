"""Migration slots and the queue: which Pending records may start now (pure).

A record holds a slot from admission (Preflight) until it is final (``Phase.holds_slot``); there is
no explicit release: leaving a slot-holding phase frees it, and the shell runs ``admit`` again.

Order: priority (higher first), then age (older ``created_at`` first), then id. A record that
cannot start now (a host's agent is down, a host's limit or the cluster limit is full, its VM has
another migration) is skipped, not waited for: later records whose hosts are free still go, so a
busy host never blocks the rest of the fleet (no head-of-line blocking).

Starvation: skipping lets a steady stream of later records keep taking the slots an earlier one
waits for (e.g. a record for a busy target behind many small ones to idle hosts, which then
fill the cluster limit). So a record waiting longer than ``Limits.reserve_after_s`` that is held
back only by full limits *reserves*: for the rest of the pass it counts as if it ran, on its
source, its target and the cluster, so later records cannot take those slots; when a running
migration ends, the aged record gets the slot. Records held back by an unavailable host do not
reserve (the host may be gone for hours). Aging does not override priority: a higher-priority
record still goes first.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from .record import MigrationRecord


@dataclass(frozen=True)
class Limits:
    """Concurrent migrations allowed (from the coordinator's config)."""

    per_host_outbound: int = 1
    per_host_inbound: int = 2
    cluster: int = 5
    reserve_after_s: float = 900.0


class WaitKind(enum.Enum):
    """Why a queued record cannot start now."""

    HOST_UNAVAILABLE = "host unavailable"
    """The agent of its source or target host (or both) is not registered."""
    TARGET_CORDONED = "target cordoned"
    """Its target host is cordoned (``hoststate.py``): it waits until uncordoned or cancelled."""
    VM_BUSY = "vm busy"
    """Its VM has another migration holding a slot (or starting in this pass)."""
    CLUSTER_FULL = "cluster full"
    """The cluster-wide limit of concurrent migrations is reached."""
    SOURCE_FULL = "source full"
    """Its source host's outbound limit is reached."""
    TARGET_FULL = "target full"
    """Its target host's inbound limit is reached."""

    @property
    def is_full(self) -> bool:
        """Held back only by a full limit: a slot frees when a running migration ends (an aged
        record waiting for this reserves; one waiting for a host or its VM does not)."""
        return self in (WaitKind.CLUSTER_FULL, WaitKind.SOURCE_FULL, WaitKind.TARGET_FULL)


@dataclass(frozen=True)
class WaitReason:
    """Why a queued record waits, with what the operator needs to see it.

    ``hosts``: the unavailable hosts (HOST_UNAVAILABLE) or the host whose limit is full
    (SOURCE_FULL, TARGET_FULL); ``vm``: the VM's name (VM_BUSY); ``limit``: the full limit;
    ``reserving_since``: set when the record has waited long enough to reserve its slots (its
    ``created_at``). ``str()`` is the text operators read:

    >>> str(WaitReason(WaitKind.HOST_UNAVAILABLE, hosts=("h1", "h2")))
    'host h1, h2 unavailable'
    >>> str(WaitReason(WaitKind.TARGET_CORDONED, hosts=("h2",)))
    'target h2 cordoned'
    >>> str(WaitReason(WaitKind.VM_BUSY, vm="g1"))
    'g1 has another migration'
    >>> str(WaitReason(WaitKind.CLUSTER_FULL, limit=5))
    'full: cluster limit 5'
    >>> str(WaitReason(WaitKind.TARGET_FULL, hosts=("h3",), limit=2))
    'full: h3 inbound limit 2'
    >>> from datetime import UTC
    >>> str(WaitReason(WaitKind.SOURCE_FULL, hosts=("h1",), limit=1, reserving_since=datetime(2026, 1, 2, tzinfo=UTC)))
    'full: h1 outbound limit 1; reserving its slots (waiting since 2026-01-02T00:00:00+00:00)'
    """

    kind: WaitKind
    hosts: tuple[str, ...] = ()
    vm: str = ""
    limit: int = 0
    reserving_since: datetime | None = None

    @property
    def reserving(self) -> bool:
        """It counts as running for the rest of the pass (see the module docstring)."""
        return self.reserving_since is not None

    def describe(self) -> str:
        text = self._why()
        if self.reserving_since is not None:
            text += f"; reserving its slots (waiting since {self.reserving_since.isoformat()})"
        return text

    def _why(self) -> str:
        match self.kind:
            case WaitKind.HOST_UNAVAILABLE:
                return f"host {', '.join(self.hosts)} unavailable"
            case WaitKind.TARGET_CORDONED:
                return f"target {', '.join(self.hosts)} cordoned"
            case WaitKind.VM_BUSY:
                return f"{self.vm} has another migration"
            case WaitKind.CLUSTER_FULL:
                return f"full: cluster limit {self.limit}"
            case WaitKind.SOURCE_FULL:
                return f"full: {', '.join(self.hosts)} outbound limit {self.limit}"
            case WaitKind.TARGET_FULL:
                return f"full: {', '.join(self.hosts)} inbound limit {self.limit}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class Admission:
    """The records to start now, in order, and why each other queued record waits."""

    start: tuple[str, ...]
    waiting: dict[str, WaitReason] = field(default_factory=dict)


def queue_order(queued: Iterable[MigrationRecord]) -> list[MigrationRecord]:
    """Priority (higher first), then age (older first), then id."""
    return sorted(queued, key=lambda r: (-r.priority, r.created_at, r.id))


def vm_key(r: MigrationRecord) -> str:
    return r.vm_uuid or r.vm


def plan_admission(
    queued: Sequence[MigrationRecord],
    active: Sequence[MigrationRecord],
    limits: Limits,
    hosts_available: Collection[str],
    now: datetime | None = None,
    cordoned: Collection[str] = (),
) -> Admission:
    """Which queued records start now. ``active`` may hold any records: only those whose phase
    holds a slot count. ``now`` enables reservation by aged records (``reserve_after_s``);
    a record whose target is in ``cordoned`` waits (TARGET_CORDONED) and reserves nothing."""
    busy = [r for r in active if r.phase.holds_slot]
    out_n = Counter(r.source_host for r in busy)
    in_n = Counter(r.target_host for r in busy)
    cluster_n = len(busy)
    vms = {vm_key(r) for r in busy}
    start: list[str] = []
    waiting: dict[str, WaitReason] = {}
    for r in queue_order(q for q in queued if not q.phase.holds_slot and not q.phase.is_final):
        why = _why_not(r, out_n, in_n, cluster_n, vms, limits, hosts_available, cordoned)
        if why is None:
            start.append(r.id)
        else:
            waiting[r.id] = why
            aged = now is not None and (now - r.created_at).total_seconds() >= limits.reserve_after_s
            if not (aged and why.kind.is_full):
                continue
            waiting[r.id] = replace(why, reserving_since=r.created_at)
        out_n[r.source_host] += 1
        in_n[r.target_host] += 1
        cluster_n += 1
        vms.add(vm_key(r))
    return Admission(tuple(start), waiting)


def _why_not(
    r: MigrationRecord,
    out_n: Counter[str],
    in_n: Counter[str],
    cluster_n: int,
    vms: set[str],
    limits: Limits,
    hosts_available: Collection[str],
    cordoned: Collection[str] = (),
) -> WaitReason | None:
    down = tuple(h for h in (r.source_host, r.target_host) if h not in hosts_available)
    if down:
        return WaitReason(WaitKind.HOST_UNAVAILABLE, hosts=down)
    if r.target_host in cordoned:
        return WaitReason(WaitKind.TARGET_CORDONED, hosts=(r.target_host,))
    if vm_key(r) in vms:
        return WaitReason(WaitKind.VM_BUSY, vm=r.vm)
    if cluster_n >= limits.cluster:
        return WaitReason(WaitKind.CLUSTER_FULL, limit=limits.cluster)
    if out_n[r.source_host] >= limits.per_host_outbound:
        return WaitReason(WaitKind.SOURCE_FULL, hosts=(r.source_host,), limit=limits.per_host_outbound)
    if in_n[r.target_host] >= limits.per_host_inbound:
        return WaitReason(WaitKind.TARGET_FULL, hosts=(r.target_host,), limit=limits.per_host_inbound)
    return None


def admit(
    queued: Sequence[MigrationRecord],
    active: Sequence[MigrationRecord],
    limits: Limits,
    hosts_available: Collection[str],
    now: datetime | None = None,
    cordoned: Collection[str] = (),
) -> list[str]:
    """Ids of the queued records to start now, in order (feed each ``Admitted``)."""
    return list(plan_admission(queued, active, limits, hosts_available, now, cordoned).start)
