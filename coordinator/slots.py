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

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .record import MigrationRecord


@dataclass(frozen=True)
class Limits:
    """Concurrent migrations allowed (from the coordinator's config)."""

    per_host_outbound: int = 1
    per_host_inbound: int = 2
    cluster: int = 5
    reserve_after_s: float = 900.0


@dataclass(frozen=True)
class Admission:
    """The records to start now, in order, and why each other queued record waits."""

    start: tuple[str, ...]
    waiting: dict[str, str] = field(default_factory=dict)


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
) -> Admission:
    """Which queued records start now. ``active`` may hold any records: only those whose phase
    holds a slot count. ``now`` enables reservation by aged records (``reserve_after_s``)."""
    busy = [r for r in active if r.phase.holds_slot]
    out_n = Counter(r.source_host for r in busy)
    in_n = Counter(r.target_host for r in busy)
    cluster_n = len(busy)
    vms = {vm_key(r) for r in busy}
    start: list[str] = []
    waiting: dict[str, str] = {}
    for r in queue_order(q for q in queued if not q.phase.holds_slot and not q.phase.is_final):
        why = _why_not(r, out_n, in_n, cluster_n, vms, limits, hosts_available)
        if why is None:
            start.append(r.id)
        else:
            waiting[r.id] = why
            aged = now is not None and (now - r.created_at).total_seconds() >= limits.reserve_after_s
            if not (aged and why.startswith("full")):
                continue
            waiting[r.id] = f"{why}; reserving its slots (waiting since {r.created_at.isoformat()})"
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
) -> str | None:
    down = [h for h in (r.source_host, r.target_host) if h not in hosts_available]
    if down:
        return f"host {', '.join(down)} unavailable"
    if vm_key(r) in vms:
        return f"{r.vm} has another migration"
    if cluster_n >= limits.cluster:
        return f"full: cluster limit {limits.cluster}"
    if out_n[r.source_host] >= limits.per_host_outbound:
        return f"full: {r.source_host} outbound limit {limits.per_host_outbound}"
    if in_n[r.target_host] >= limits.per_host_inbound:
        return f"full: {r.target_host} inbound limit {limits.per_host_inbound}"
    return None


def admit(
    queued: Sequence[MigrationRecord],
    active: Sequence[MigrationRecord],
    limits: Limits,
    hosts_available: Collection[str],
    now: datetime | None = None,
) -> list[str]:
    """Ids of the queued records to start now, in order (feed each ``Admitted``)."""
    return list(plan_admission(queued, active, limits, hosts_available, now).start)
