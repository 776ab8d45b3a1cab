"""Migration slots and the queue: which Pending records may start now (pure).

A record holds a slot from admission (Preflight) until it is final (``Phase.holds_slot``), or until
its target committed while its source could not be reached to remove the copied disks
(``holds_slot``: it then only waits for the source, with no job, and the guest is the target's); there is
no explicit release: leaving a slot-holding phase frees it, and the shell runs ``admit`` again. The
VM stays taken until the record is final (a migration back would find the copies in the way).

Preparing ahead (``Limits.prepare_ahead``): a queued record held back only by a full limit may be
admitted *ahead* of its slot, up to ``prepare_ahead`` such records per slot: per source host
``prepare_ahead * per_host_outbound``, per target host ``prepare_ahead * per_host_inbound``, in all
``prepare_ahead * cluster`` (so when two slots of a host free together, both next jobs are ready).
It runs its preflight and the target's prepare at once, then waits
(Preparing, prepared) until a slot is *granted* (``Admission.grant``), and only its migration job
holds the slot. So the limits bound the jobs, and a host's next migration starts its job the
moment a slot frees instead of preparing first. A record ahead (``MigrationRecord.ahead``) counts
against the ahead allowance, not the limits, until granted; grants go in queue order before any
new admission. An aged record (see Starvation) does not go ahead but reserves, and one ahead that
ages reserves its slots as well.

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

from .phases import Phase
from .record import MigrationRecord


@dataclass(frozen=True)
class Limits:
    """Concurrent migrations allowed (from the coordinator's config)."""

    per_host_outbound: int = 1
    per_host_inbound: int = 2
    cluster: int = 5
    reserve_after_s: float = 900.0
    # records per slot (of a source host, a target host, the cluster) that may preflight and
    # prepare ahead of it; 0: none (each waits Pending for its slot)
    prepare_ahead: int = 0
    # MiB/s a host's migrations may use, outbound and inbound each, shared by its running jobs
    # (``bandwidth.py``; ``[hosts.NAME] bandwidth_mibps`` for one host); 0: none
    host_bandwidth_mibps: int = 0


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
    """The records to start now, in order, and why each other queued record waits.

    ``start``: admit holding a slot; ``ahead``: admit ahead of a slot (preflight and prepare,
    then wait for a grant); ``grant``: records ahead that get their slot now. A record in
    ``ahead`` is also in ``waiting``, with the reason its slot is not free."""

    start: tuple[str, ...]
    waiting: dict[str, WaitReason] = field(default_factory=dict)
    ahead: tuple[str, ...] = ()
    grant: tuple[str, ...] = ()


def queue_order(queued: Iterable[MigrationRecord]) -> list[MigrationRecord]:
    """Priority (higher first), then age (older first), then id."""
    return sorted(queued, key=lambda r: (-r.priority, r.created_at, r.id))


def holds_slot(r: MigrationRecord) -> bool:
    """Counts against the limits (or, ahead, the allowance): admitted, not final, and not a record
    whose target committed and that waits only for its source to answer (``committed_at``).

    >>> from datetime import UTC
    >>> r = MigrationRecord("m-1", "g1", "u1", "h1", "h2", datetime(2026, 1, 1, tzinfo=UTC), phase=Phase.FINISHING)
    >>> holds_slot(r), holds_slot(replace(r, committed_at=r.created_at))
    (True, False)
    """
    return r.phase.holds_slot and r.committed_at is None


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
    """Which queued records start now, and which records ahead get their slot. ``active`` may
    hold any records: those whose phase holds a slot count, against the limits or (``ahead``)
    against ``prepare_ahead``. ``now`` enables reservation by aged records (``reserve_after_s``);
    a record whose target is in ``cordoned`` waits (TARGET_CORDONED) and reserves nothing, and so
    does one ahead: no slot is granted into a cordoned target, nor while a host of it is down."""
    holding = [r for r in active if r.phase.holds_slot]  # each holds its VM
    busy = [r for r in holding if not r.ahead and holds_slot(r)]
    out_n = Counter(r.source_host for r in busy)
    in_n = Counter(r.target_host for r in busy)
    cluster_n = len(busy)
    vms = {vm_key(r) for r in holding}
    staged = [r for r in holding if r.ahead]
    ahead_out = Counter(r.source_host for r in staged)
    ahead_in = Counter(r.target_host for r in staged)
    grant: list[str] = []
    for r in queue_order(r for r in staged if r.phase in (Phase.PREFLIGHT, Phase.PREPARING)):
        if r.source_host not in hosts_available or r.target_host not in hosts_available or r.target_host in cordoned:
            continue  # as a queued record, it waits for its host (no job into a host cordoned meanwhile)
        fits = _fits(r, out_n, in_n, cluster_n, limits)
        if fits:
            grant.append(r.id)
            ahead_out[r.source_host] -= 1
            ahead_in[r.target_host] -= 1
        elif not _aged(r, now, limits):
            continue
        # granted, or aged and reserving its slots as a queued record does
        out_n[r.source_host] += 1
        in_n[r.target_host] += 1
        cluster_n += 1
    start: list[str] = []
    ahead: list[str] = []
    waiting: dict[str, WaitReason] = {}
    for r in queue_order(q for q in queued if not q.phase.holds_slot and not q.phase.is_final):
        why = _why_not(r, out_n, in_n, cluster_n, vms, limits, hosts_available, cordoned)
        if why is None:
            start.append(r.id)
        else:
            waiting[r.id] = why
            aged = _aged(r, now, limits)
            if why.kind.is_full and not aged and _may_go_ahead(r, ahead_out, ahead_in, len(staged), limits):
                ahead.append(r.id)
                staged.append(r)
                ahead_out[r.source_host] += 1
                ahead_in[r.target_host] += 1
                vms.add(vm_key(r))
                continue
            if not (aged and why.kind.is_full):
                continue
            waiting[r.id] = replace(why, reserving_since=r.created_at)
        out_n[r.source_host] += 1
        in_n[r.target_host] += 1
        cluster_n += 1
        vms.add(vm_key(r))
    return Admission(tuple(start), waiting, tuple(ahead), tuple(grant))


def admission_changed(old: MigrationRecord, new: MigrationRecord) -> bool:
    """Whether ``plan_admission`` may decide otherwise with ``new`` in place of ``old`` (a
    record's next version): it was or is queued, took or left a slot, or is ahead of its slot.
    A record not ahead moving between phases that hold a slot (preflight, preparing, migrating,
    finishing, rolling back) changes none of the plan's counts: the engine does not plan again
    for it (every migration makes three such moves, and a plan counts every open record)."""
    return not (holds_slot(old) and holds_slot(new) and not old.ahead and not new.ahead)


def _aged(r: MigrationRecord, now: datetime | None, limits: Limits) -> bool:
    return now is not None and (now - r.created_at).total_seconds() >= limits.reserve_after_s


def _may_go_ahead(
    r: MigrationRecord, ahead_out: Counter[str], ahead_in: Counter[str], staged_n: int, limits: Limits
) -> bool:
    n = limits.prepare_ahead
    return (
        ahead_out[r.source_host] < n * limits.per_host_outbound
        and ahead_in[r.target_host] < n * limits.per_host_inbound
        and staged_n < n * limits.cluster
    )


def _fits(r: MigrationRecord, out_n: Counter[str], in_n: Counter[str], cluster_n: int, limits: Limits) -> bool:
    """Whether one more migration of ``r``'s hosts fits the limits (its hosts' and the cluster's)."""
    return (
        cluster_n < limits.cluster
        and out_n[r.source_host] < limits.per_host_outbound
        and in_n[r.target_host] < limits.per_host_inbound
    )


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
