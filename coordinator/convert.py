"""The coordinator's records <-> ferry.v1 coordinator messages (pure; the servicer's edges).

``migration_to_pb`` shows a stored MigrationRecord to API clients; ``migration_from_pb`` reads one
back (for clients and round-trip tests): lossless for every field the proto carries. The record's
internals (deadline, attempts, retries, destination XML, rollback goal) are not part of the API.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import cast

from ferry import convert
from ferry.model import DomainInfo, HostFacts, MigrationOptions, Problem, StorageMode
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb

from .drain import DrainItem, DrainRecord, DrainState, ItemState
from .drainplan import Progress
from .hoststate import HostCordon
from .phases import Phase
from .placement import Candidate
from .policies import PolicySelector
from .record import ActionEntry, MigrationRecord, PhaseChange

# ---------------------------------------------------------------- phases


def phase_to_pb(phase: Phase) -> cpb.Phase:
    """``phases.Phase`` values equal the ``ferry.v1.Phase`` numbers."""
    return cast(cpb.Phase, phase.value)


def phase_from_pb(value: int) -> Phase | None:
    """PHASE_UNSPECIFIED (or a number this build does not know) -> None."""
    try:
        return Phase(value)
    except ValueError:
        return None


def phase_label(phase: Phase) -> str:
    """The name operators read (as the CLI prints it): ROLLED_BACK -> "RolledBack"."""
    return "".join(part.capitalize() for part in phase.name.split("_"))


def phase_word(phase: Phase) -> str:
    """A phase as messages, tables and JSON spell it: ROLLED_BACK -> "rolled_back"."""
    return phase.name.lower()


def phase_from_label(label: str) -> Phase:
    """Inverse of :func:`phase_label`; raises KeyError for an unknown label."""
    wanted = label.replace("_", "").lower()
    for phase in Phase:
        if phase.name.replace("_", "").lower() == wanted:
            return phase
    raise KeyError(label)


# ---------------------------------------------------------------- pieces


def history_to_pb(c: PhaseChange) -> tpb.TimedPhase:
    return tpb.TimedPhase(phase=phase_label(c.phase), at=convert.timestamp_to_pb(c.at), reason=c.reason)


def history_from_pb(m: tpb.TimedPhase) -> PhaseChange:
    at = convert.timestamp_from_pb(m.at) or datetime.fromtimestamp(0, UTC)
    return PhaseChange(phase=phase_from_label(m.phase), at=at, reason=m.reason)


# ---------------------------------------------------------------- migrations


def migration_to_pb(r: MigrationRecord) -> cpb.Migration:
    m = cpb.Migration(
        id=r.id,
        vm=r.vm,
        vm_uuid=r.vm_uuid,
        source_host=r.source_host,
        target_host=r.target_host,
        options=convert.options_to_pb(r.options),
        mapping=convert.mapping_to_pb(r.mapping),
        priority=r.priority,
        idempotency_key=r.idempotency_key,
        phase=phase_to_pb(r.phase),
        history=[history_to_pb(c) for c in r.history],
        created_at=convert.timestamp_to_pb(r.created_at),
        cancel_requested=r.cancel_requested,
        prepare_id=r.prepare_id,
        ahead_of_slot=r.ahead,
    )
    if r.updated_at is not None:
        m.updated_at.CopyFrom(convert.timestamp_to_pb(r.updated_at))
    if r.progress is not None:
        m.progress.CopyFrom(convert.progress_to_pb(r.progress))
    if r.result is not None:
        m.result.CopyFrom(convert.completed_job_to_pb(r.result))
    if r.error is not None:
        m.error.CopyFrom(convert.problem_to_pb(r.error))
    if r.policy is not None:
        m.policy.CopyFrom(convert.policy_to_pb(r.policy))
    if r.prediction is not None:
        m.prediction.CopyFrom(convert.prediction_to_pb(r.prediction))
    m.actions.extend(convert.policy_action_to_pb(e.action, e.at) for e in r.actions)
    return m


def migration_from_pb(m: cpb.Migration) -> MigrationRecord:
    """The API's view of a record as a MigrationRecord (fields the proto lacks keep their defaults)."""
    return MigrationRecord(
        id=m.id,
        vm=m.vm,
        vm_uuid=m.vm_uuid,
        source_host=m.source_host,
        target_host=m.target_host,
        created_at=convert.timestamp_from_pb(m.created_at) or datetime.fromtimestamp(0, UTC),
        options=convert.options_from_pb(m.options),
        mapping=convert.mapping_from_pb(m.mapping),
        priority=m.priority,
        idempotency_key=m.idempotency_key,
        updated_at=convert.timestamp_from_pb(m.updated_at),
        phase=phase_from_pb(m.phase) or Phase.PENDING,
        history=tuple(history_from_pb(c) for c in m.history),
        prepare_id=m.prepare_id,
        progress=convert.progress_from_pb(m.progress) if m.HasField("progress") else None,
        result=convert.completed_job_from_pb(m.result) if m.HasField("result") else None,
        error=convert.problem_from_pb(m.error) if m.HasField("error") else None,
        cancel_requested=m.cancel_requested,
        ahead=m.ahead_of_slot,
        policy=convert.policy_from_pb(m.policy) if m.HasField("policy") else None,
        prediction=convert.prediction_from_pb(m.prediction) if m.HasField("prediction") else None,
        actions=tuple(
            ActionEntry(
                convert.timestamp_from_pb(a.at) or datetime.fromtimestamp(0, UTC), convert.policy_action_from_pb(a)
            )
            for a in m.actions
        ),
    )


def options_from_request(m: tpb.MigrationOptions) -> tuple[MigrationOptions, bool]:
    """A request's options and whether its storage mode was given (UNSPECIFIED = auto)."""
    explicit = m.storage != tpb.STORAGE_MODE_UNSPECIFIED
    return convert.options_from_pb(m, unspecified_storage=StorageMode.SHARED), explicit


# ---------------------------------------------------------------- hosts and VMs


def host_status_to_pb(
    *,
    name: str,
    address: str,
    available: bool,
    facts: HostFacts | None,
    domains: int,
    migrations_out: int,
    migrations_in: int,
    last_seen: datetime | None,
    cordon: HostCordon | None = None,
    bandwidth: tuple[int, int, int] = (0, 0, 0),
    why_down: Problem | None = None,
    shares_host_uuid_with: Sequence[str] = (),
) -> cpb.HostStatus:
    """``bandwidth``: the host's migration budget, and what its running jobs get out and in (MiB/s);
    ``why_down``: which part of an unavailable host is down; ``shares_host_uuid_with``: the other
    hosts reporting its libvirt host UUID."""
    h = cpb.HostStatus(
        name=name,
        address=address,
        available=available,
        domains=domains,
        migrations_out=migrations_out,
        migrations_in=migrations_in,
        bandwidth_budget_mibps=bandwidth[0],
        bandwidth_out_mibps=bandwidth[1],
        bandwidth_in_mibps=bandwidth[2],
        shares_host_uuid_with=list(shares_host_uuid_with),
    )
    if cordon is not None and cordon.cordoned:
        h.cordoned = True
        h.cordon_reason = cordon.reason
        h.drain_id = cordon.drain_id
        if cordon.since is not None:
            h.cordoned_at.CopyFrom(convert.timestamp_to_pb(cordon.since))
    if facts is not None:
        h.facts.CopyFrom(convert.host_facts_to_pb(facts))
    if last_seen is not None:
        h.last_seen.CopyFrom(convert.timestamp_to_pb(last_seen))
    if why_down is not None and not available:
        h.why_down.CopyFrom(convert.problem_to_pb(why_down))
    return h


def vm_to_pb(
    domain: DomainInfo,
    host: str,
    migration_id: str = "",
    *,
    unreachable: bool = False,
    last_seen: datetime | None = None,
) -> cpb.VM:
    """``unreachable``: the host does not answer; ``domain`` is its last report (at ``last_seen``)."""
    vm = cpb.VM(domain=convert.domain_to_pb(domain), host=host, migration_id=migration_id, unreachable=unreachable)
    if unreachable and last_seen is not None:
        vm.last_seen.CopyFrom(convert.timestamp_to_pb(last_seen))
    return vm


# ---------------------------------------------------------------- placement


def candidate_to_pb(c: Candidate) -> cpb.HostCandidate:
    return cpb.HostCandidate(
        host=c.host,
        score=c.score,
        reasons=list(c.reasons),
        blockers=[convert.problem_to_pb(b) for b in c.blockers],
        busy=c.busy,
    )


# ---------------------------------------------------------------- drains


def drain_state_to_pb(state: DrainState) -> cpb.DrainState:
    """``drain.DrainState`` values equal the ``ferry.v1.DrainState`` numbers."""
    return cast(cpb.DrainState, state.value)


def drain_state_from_pb(value: int) -> DrainState | None:
    try:
        return DrainState(value)
    except ValueError:
        return None


def drain_item_to_pb(i: DrainItem, migration: MigrationRecord | None = None) -> cpb.DrainItem:
    m = cpb.DrainItem(
        vm=i.vm,
        vm_uuid=i.vm_uuid,
        state=cast(cpb.DrainItemState, i.state.value),
        target_host=i.target,
        migration_id=i.migration_id,
        attempts=i.attempts,
        tried=list(i.tried),
        problems=[convert.problem_to_pb(p) for p in i.problems],
        estimate_s=i.estimate_s,
        bytes_total=i.bytes_total,
    )
    if i.state is ItemState.MOVED:
        m.bytes_moved = i.bytes_total
    elif migration is not None and migration.progress is not None:
        s = migration.progress.stats
        m.bytes_moved = min(s.memory_processed + s.disk_processed, i.bytes_total)
    if migration is not None:
        m.migration_phase = phase_to_pb(migration.phase)
    if i.started_at is not None:
        m.started_at.CopyFrom(convert.timestamp_to_pb(i.started_at))
    if i.ended_at is not None:
        m.ended_at.CopyFrom(convert.timestamp_to_pb(i.ended_at))
    return m


def drain_to_pb(
    d: DrainRecord,
    progress: Progress,
    slots: int,
    migrations: Mapping[str, MigrationRecord] | None = None,
    *,
    dry_run: bool = False,
    waiting: Problem | None = None,
) -> cpb.Drain:
    migrations = migrations or {}
    m = cpb.Drain(
        id=d.id,
        host=d.host,
        state=drain_state_to_pb(d.state),
        reason=d.reason,
        targets=list(d.targets),
        max_parallel=d.max_parallel,
        policy=d.policy,
        slots=slots,
        items=[drain_item_to_pb(i, migrations.get(i.migration_id)) for i in d.items],
        created_at=convert.timestamp_to_pb(d.created_at),
        history=[
            cpb.DrainChange(state=drain_state_to_pb(c.state), at=convert.timestamp_to_pb(c.at), reason=c.reason)
            for c in d.history
        ],
        vms_total=progress.total,
        vms_moved=progress.moved,
        vms_failed=progress.failed,
        vms_migrating=progress.migrating,
        bytes_total=progress.bytes_total,
        bytes_moved=progress.bytes_moved,
        eta_s=progress.eta_s,
        estimated_s=d.estimated_s,
        dry_run=dry_run,
    )
    if d.updated_at is not None:
        m.updated_at.CopyFrom(convert.timestamp_to_pb(d.updated_at))
    if d.ended_at is not None:
        m.ended_at.CopyFrom(convert.timestamp_to_pb(d.ended_at))
    if waiting is not None:
        m.waiting.CopyFrom(convert.problem_to_pb(waiting))
    return m


def selector_to_pb(s: PolicySelector) -> cpb.PolicySelector:
    return cpb.PolicySelector(
        policy=s.policy, vm=s.vm, min_memory_bytes=s.min_memory_bytes, max_memory_bytes=s.max_memory_bytes
    )


def selector_from_pb(m: cpb.PolicySelector) -> PolicySelector:
    return PolicySelector(m.policy, m.vm, m.min_memory_bytes, m.max_memory_bytes)
