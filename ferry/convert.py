"""Protobuf <-> ferry.model converters: the only place the two meet.

Servers convert at their edges (request -> model, model -> response); core logic sees only
``ferry.model``. Each ``*_to_pb`` has a ``*_from_pb`` partner and a round trip is lossless for
every field the proto carries (tests/unit/test_convert.py).

The ``*_from_pb`` of what requests carry (storage mode, options, mapping, disk plans) check their
fields as they read them (``ferry.validate``): an unknown enum number, a number out of range, an
over-long name or a control character is InvalidArgument with a reason code, never a KeyError.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

from google.protobuf import timestamp_pb2

from ferry import validate
from ferry.convergence import ConvergencePolicy, DowntimeStep, PostcopyMode, TimeoutAction
from ferry.errors import InvalidArgument
from ferry.model import (
    CompletedJob,
    Disk,
    DiskPlan,
    DomainInfo,
    DomainState,
    GuestLoad,
    HostFacts,
    HostMapping,
    Inventory,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    MigrationResult,
    Nic,
    PolicyAction,
    PreparedIncoming,
    PrepareRecord,
    Problem,
    StorageDir,
    StorageMode,
)
from ferry.paths import PATH_MAX
from ferry.prediction import Prediction
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import types_pb2 as tpb

# ---------------------------------------------------------------- time


def timestamp_to_pb(at: datetime | None) -> timestamp_pb2.Timestamp:
    """A timezone-aware datetime (naive means UTC) as a Timestamp; None -> unset (zero)."""
    ts = timestamp_pb2.Timestamp()
    if at is not None:
        ts.FromDatetime(at if at.tzinfo else at.replace(tzinfo=UTC))
    return ts


def timestamp_from_pb(ts: timestamp_pb2.Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


# ---------------------------------------------------------------- enums

_STORAGE_TO_PB = {
    StorageMode.SHARED: tpb.STORAGE_MODE_SHARED,
    StorageMode.COPY_ALL: tpb.STORAGE_MODE_COPY_ALL,
    StorageMode.COPY_INC: tpb.STORAGE_MODE_COPY_INC,
}
_STORAGE_FROM_PB = {v: k for k, v in _STORAGE_TO_PB.items()}


def storage_mode_to_pb(mode: StorageMode | None) -> tpb.StorageMode:
    """None (auto, coordinator only) -> STORAGE_MODE_UNSPECIFIED."""
    return tpb.STORAGE_MODE_UNSPECIFIED if mode is None else _STORAGE_TO_PB[mode]


def storage_mode_from_pb(value: int, *, unspecified: StorageMode | None = StorageMode.SHARED) -> StorageMode | None:
    """STORAGE_MODE_UNSPECIFIED means SHARED at the agent and "auto" (None) at the coordinator.

    A number this build does not know is InvalidArgument (BAD_STORAGE_MODE).
    """
    if value == tpb.STORAGE_MODE_UNSPECIFIED:
        return unspecified
    mode = _STORAGE_FROM_PB.get(cast(tpb.StorageMode, value))
    if mode is None:
        raise InvalidArgument(
            f"storage: unknown storage mode number {value}",
            reason="BAD_STORAGE_MODE",
            hint="use STORAGE_MODE_SHARED, STORAGE_MODE_COPY_ALL or STORAGE_MODE_COPY_INC (or leave it unset)",
        )
    return mode


def domain_state_to_pb(state: DomainState | None) -> tpb.DomainState:
    """Same numbers as libvirt's virDomainState; UNKNOWN and None -> UNSPECIFIED."""
    return cast(tpb.DomainState, 0 if state is None else state.value)


def domain_state_from_pb(value: int) -> DomainState:
    try:
        return DomainState(value)
    except ValueError:
        return DomainState.UNKNOWN


def phase_to_pb(phase: MigrationPhase) -> tpb.MigrationPhase:
    """Same numbers as ``ferry.v1.MigrationPhase``."""
    return cast(tpb.MigrationPhase, phase.value)


def phase_from_pb(value: int) -> MigrationPhase | None:
    """MIGRATION_PHASE_UNSPECIFIED (or a value this build does not know) -> None."""
    try:
        return MigrationPhase(value)
    except ValueError:
        return None


# ---------------------------------------------------------------- host


def storage_dir_to_pb(d: StorageDir) -> tpb.StorageDir:
    return tpb.StorageDir(
        path=d.path, free_bytes=d.free_bytes, total_bytes=d.total_bytes, shared=d.shared, fs_type=d.fs_type
    )


def storage_dir_from_pb(m: tpb.StorageDir) -> StorageDir:
    return StorageDir(
        path=m.path, free_bytes=m.free_bytes, total_bytes=m.total_bytes, shared=m.shared, fs_type=m.fs_type
    )


def host_facts_to_pb(f: HostFacts) -> tpb.HostFacts:
    return tpb.HostFacts(
        hostname=f.hostname,
        host_uuid=f.host_uuid,
        libvirt_version=f.libvirt_version,
        qemu_version=f.qemu_version,
        cpu_model=f.cpu_model,
        arch=f.arch,
        cpu_features=list(f.cpu_features),
        cpus=f.cpus,
        memory_total_bytes=f.memory_total_bytes,
        memory_free_bytes=f.memory_free_bytes,
        bridges=list(f.bridges),
        networks=list(f.networks),
        storage=[storage_dir_to_pb(d) for d in f.storage],
        libvirt_uri=f.libvirt_uri,
        migration_address=f.migration_address,
        agent_version=f.agent_version,
        migration_tls_problem=f.migration_tls_problem,
        libvirt_uri_problem=f.libvirt_uri_problem,
        api_level=f.api_level,
        machine_types=list(f.machine_types),
        emulator=f.emulator,
    )


def host_facts_from_pb(m: tpb.HostFacts) -> HostFacts:
    return HostFacts(
        hostname=m.hostname,
        host_uuid=m.host_uuid,
        libvirt_version=m.libvirt_version,
        qemu_version=m.qemu_version,
        cpu_model=m.cpu_model,
        arch=m.arch,
        cpu_features=tuple(m.cpu_features),
        cpus=m.cpus,
        memory_total_bytes=m.memory_total_bytes,
        memory_free_bytes=m.memory_free_bytes,
        bridges=tuple(m.bridges),
        networks=tuple(m.networks),
        storage=tuple(storage_dir_from_pb(d) for d in m.storage),
        libvirt_uri=m.libvirt_uri,
        migration_address=m.migration_address,
        agent_version=m.agent_version,
        migration_tls_problem=m.migration_tls_problem,
        libvirt_uri_problem=m.libvirt_uri_problem,
        api_level=m.api_level,
        machine_types=tuple(m.machine_types),
        emulator=m.emulator,
    )


# ---------------------------------------------------------------- domains


def disk_to_pb(d: Disk) -> tpb.Disk:
    return tpb.Disk(
        target=d.target,
        source=d.source,
        format=d.format,
        virtual_size=d.virtual_size,
        allocation=d.allocation,
        backing_chain=list(d.backing_chain),
        cache=d.cache,
        shared=d.shared,
        readonly=d.readonly,
        device=d.device,
        bus=d.bus,
        shared_unknown_to_libvirt=d.shared_unknown_to_libvirt,
        backing_fingerprint=d.backing_fingerprint,
        block_device=d.block_device,
        block_identity=d.block_identity,
    )


def disk_from_pb(m: tpb.Disk) -> Disk:
    return Disk(
        target=m.target,
        source=m.source,
        format=m.format,
        virtual_size=m.virtual_size,
        allocation=m.allocation,
        backing_chain=tuple(m.backing_chain),
        cache=m.cache,
        shared=m.shared,
        readonly=m.readonly,
        device=m.device or "disk",
        bus=m.bus,
        shared_unknown_to_libvirt=m.shared_unknown_to_libvirt,
        backing_fingerprint=m.backing_fingerprint,
        block_device=m.block_device,
        block_identity=m.block_identity,
    )


def nic_to_pb(n: Nic) -> tpb.Nic:
    return tpb.Nic(type=n.type, source=n.source, mac=n.mac, model=n.model)


def nic_from_pb(m: tpb.Nic) -> Nic:
    return Nic(type=m.type, source=m.source, mac=m.mac, model=m.model)


def domain_to_pb(d: DomainInfo) -> tpb.Domain:
    return tpb.Domain(
        name=d.name,
        uuid=d.uuid,
        state=domain_state_to_pb(d.state),
        memory_bytes=d.memory_bytes,
        vcpus=d.vcpus,
        persistent=d.persistent,
        disks=[disk_to_pb(x) for x in d.disks],
        nics=[nic_to_pb(x) for x in d.nics],
        cpu_mode=d.cpu_mode,
        cpu_model=d.cpu_model,
        os_type=d.os_type,
        emulator=d.emulator,
        machine=d.machine,
        paused_by_libvirt=d.paused_by_libvirt,
    )


def domain_from_pb(m: tpb.Domain) -> DomainInfo:
    return DomainInfo(
        name=m.name,
        uuid=m.uuid,
        state=domain_state_from_pb(m.state),
        memory_bytes=m.memory_bytes,
        vcpus=m.vcpus,
        persistent=m.persistent,
        disks=tuple(disk_from_pb(x) for x in m.disks),
        nics=tuple(nic_from_pb(x) for x in m.nics),
        cpu_mode=m.cpu_mode,
        cpu_model=m.cpu_model,
        os_type=m.os_type,
        emulator=m.emulator,
        machine=m.machine,
        paused_by_libvirt=m.paused_by_libvirt,
    )


def inventory_to_pb(inv: Inventory) -> apb.Inventory:
    return apb.Inventory(host=host_facts_to_pb(inv.host), domains=[domain_to_pb(d) for d in inv.domains])


def inventory_from_pb(m: apb.Inventory) -> Inventory:
    return Inventory(host=host_facts_from_pb(m.host), domains=tuple(domain_from_pb(d) for d in m.domains))


# ---------------------------------------------------------------- problems


def problem_to_pb(p: Problem) -> tpb.ErrorDetail:
    return tpb.ErrorDetail(reason=p.reason, message=p.message, hint=p.hint)


def problem_from_pb(m: tpb.ErrorDetail) -> Problem:
    """A problem reported by an agent or the coordinator; its error kind stays where it was found."""
    return Problem(reason=m.reason, message=m.message, hint=m.hint)


# ---------------------------------------------------------------- prepare


def mapping_to_pb(m: HostMapping) -> tpb.HostMapping:
    return tpb.HostMapping(bridges=dict(m.bridges), networks=dict(m.networks), path_prefixes=dict(m.path_prefixes))


def _names_map(values: dict[str, str], field: str, *, max_len: int = validate.MAX_NAME) -> dict[str, str]:
    validate.items(values, field)
    for key, value in values.items():
        validate.text(key, f"{field} key", max_len=max_len)
        validate.text(value, f"{field}[{key[:40]}]", max_len=max_len)
    return values


def mapping_from_pb(m: tpb.HostMapping) -> HostMapping:
    """Names and prefixes checked for length and control characters (whether a prefix may be used
    is the coordinator's and the target agent's decision: ``ferry.paths``)."""
    return HostMapping(
        bridges=_names_map(dict(m.bridges), "mapping.bridges"),
        networks=_names_map(dict(m.networks), "mapping.networks"),
        path_prefixes=_names_map(dict(m.path_prefixes), "mapping.path_prefixes", max_len=PATH_MAX),
    )


def disk_plan_to_pb(p: DiskPlan) -> tpb.DiskPlan:
    return tpb.DiskPlan(
        target=p.target,
        source=p.source,
        destination=p.destination,
        format=p.format,
        virtual_size=p.virtual_size,
        allocation=p.allocation,
        backing_file=p.backing_file,
        backing_format=p.backing_format,
        copy=p.copy,
        backing_fingerprint=p.backing_fingerprint,
    )


def disk_plan_from_pb(m: tpb.DiskPlan) -> DiskPlan:
    """Fields checked for length, control characters and size (paths: ``ferry.paths`` where used)."""
    field = f"disks[{m.target[:40]}]"
    for name, value, limit in (
        ("target", m.target, validate.MAX_NAME),
        ("format", m.format, 32),
        ("backing_format", m.backing_format, 32),
        ("source", m.source, PATH_MAX),
        ("destination", m.destination, PATH_MAX),
        ("backing_file", m.backing_file, PATH_MAX),
        ("backing_fingerprint", m.backing_fingerprint, 128),
    ):
        validate.text(value, f"{field}.{name}", max_len=limit)
    validate.number(m.virtual_size, f"{field}.virtual_size", hi=validate.MAX_IMAGE_BYTES)
    validate.number(m.allocation, f"{field}.allocation", hi=validate.MAX_IMAGE_BYTES)
    return DiskPlan(
        target=m.target,
        source=m.source,
        destination=m.destination,
        format=m.format or "qcow2",
        virtual_size=m.virtual_size,
        allocation=m.allocation,
        backing_file=m.backing_file,
        backing_format=m.backing_format,
        copy=m.copy,
        backing_fingerprint=m.backing_fingerprint,
    )


def prepare_record_to_pb(r: PrepareRecord) -> apb.Prepare:
    return apb.Prepare(
        prepare_id=r.prepare_id,
        domain_name=r.domain_name,
        domain_uuid=r.domain_uuid,
        created=list(r.created),
        created_at=timestamp_to_pb(r.created_at),
        expires_at=timestamp_to_pb(r.expires_at),
        migration_id=r.migration_id,
    )


def prepare_record_from_pb(m: apb.Prepare) -> PrepareRecord:
    epoch = datetime.fromtimestamp(0, UTC)
    return PrepareRecord(
        prepare_id=m.prepare_id,
        domain_name=m.domain_name,
        domain_uuid=m.domain_uuid,
        created=tuple(m.created),
        created_at=timestamp_from_pb(m.created_at) or epoch,
        expires_at=timestamp_from_pb(m.expires_at) or epoch,
        migration_id=m.migration_id,
    )


def prepared_to_pb(p: PreparedIncoming) -> apb.PrepareIncomingResponse:
    m = apb.PrepareIncomingResponse(
        prepare_id=p.prepare_id,
        destination_xml=p.destination_xml,
        disks=[disk_plan_to_pb(d) for d in p.disks],
        created=list(p.created),
        problems=[problem_to_pb(x) for x in p.problems],
    )
    if p.expires_at is not None:
        m.expires_at.CopyFrom(timestamp_to_pb(p.expires_at))
    return m


def prepared_from_pb(m: apb.PrepareIncomingResponse) -> PreparedIncoming:
    return PreparedIncoming(
        prepare_id=m.prepare_id,
        destination_xml=m.destination_xml,
        disks=tuple(disk_plan_from_pb(d) for d in m.disks),
        created=tuple(m.created),
        expires_at=timestamp_from_pb(m.expires_at),
        problems=tuple(problem_from_pb(x) for x in m.problems),
    )


# ---------------------------------------------------------------- migration


def options_to_pb(o: MigrationOptions) -> tpb.MigrationOptions:
    return tpb.MigrationOptions(
        offline=o.offline,
        storage=storage_mode_to_pb(o.storage),
        migrate_disks=list(o.migrate_disks),
        keep_source_definition=not o.undefine_source,
        transient_target=not o.persist_dest,
        persist_transient=o.persist_transient,
        bandwidth_mibps=o.bandwidth_mibps,
        max_downtime_ms=o.max_downtime_ms,
        auto_converge=o.auto_converge,
        allow_postcopy=o.allow_postcopy,
        unsafe=o.unsafe,
        completion_timeout_s=o.completion_timeout_s,
        postcopy_on_stall=o.postcopy_on_stall,
    )


def options_from_pb(
    m: tpb.MigrationOptions, *, unspecified_storage: StorageMode = StorageMode.SHARED
) -> MigrationOptions:
    """The wire's zero values are the safe defaults: without ``keep_source_definition`` and
    ``transient_target`` the definition moves with the VM (``persist_dest`` and
    ``undefine_source`` on), so a plain request never leaves the VM defined on two hosts.

    Numbers out of range (a negative bandwidth sent as unsigned reads 4294967295), an unknown
    storage mode and bad disk names are InvalidArgument.
    """
    storage = storage_mode_from_pb(m.storage, unspecified=unspecified_storage)
    assert storage is not None
    validate.names(m.migrate_disks, "options.migrate_disks", max_len=64)
    validate.number(
        m.bandwidth_mibps, "options.bandwidth_mibps", hi=validate.MAX_BANDWIDTH_MIBPS, zero="QEMU's default"
    )
    validate.number(m.max_downtime_ms, "options.max_downtime_ms", hi=validate.MAX_DOWNTIME_MS, zero="QEMU's default")
    validate.number(
        m.completion_timeout_s,
        "options.completion_timeout_s",
        hi=validate.MAX_COMPLETION_TIMEOUT_S,
        zero="a timeout derived from the size",
    )
    return MigrationOptions(
        offline=m.offline,
        storage=storage,
        migrate_disks=tuple(m.migrate_disks),
        persist_dest=not m.transient_target,
        undefine_source=not m.keep_source_definition,
        persist_transient=m.persist_transient,
        bandwidth_mibps=m.bandwidth_mibps,
        max_downtime_ms=m.max_downtime_ms,
        auto_converge=m.auto_converge,
        allow_postcopy=m.allow_postcopy,
        unsafe=m.unsafe,
        completion_timeout_s=m.completion_timeout_s,
        postcopy_on_stall=m.postcopy_on_stall,
    )


def progress_to_pb(p: MigrationProgress) -> tpb.MigrationProgress:
    s = p.stats
    return tpb.MigrationProgress(
        phase=phase_to_pb(p.phase),
        memory_total=s.memory_total,
        memory_processed=s.memory_processed,
        memory_remaining=s.memory_remaining,
        disk_total=s.disk_total,
        disk_processed=s.disk_processed,
        disk_remaining=s.disk_remaining,
        dirty_rate_pages=s.dirty_rate_pages,
        page_size=s.page_size,
        iteration=s.iteration,
        bandwidth_bps=s.bandwidth_bps,
        elapsed_ms=s.time_elapsed_ms,
        auto_converge_throttle=s.auto_converge_throttle,
        max_downtime_ms=p.max_downtime_ms,
        eta_ms=p.eta_ms,
        postcopy_failed=s.postcopy_failed,
    )


def progress_from_pb(m: tpb.MigrationProgress) -> MigrationProgress:
    """The figures the message carries; the other JobStats fields keep their defaults."""
    stats = JobStats(
        time_elapsed_ms=m.elapsed_ms,
        memory_total=m.memory_total,
        memory_processed=m.memory_processed,
        memory_remaining=m.memory_remaining,
        disk_total=m.disk_total,
        disk_processed=m.disk_processed,
        disk_remaining=m.disk_remaining,
        dirty_rate_pages=m.dirty_rate_pages,
        page_size=m.page_size or 4096,
        iteration=m.iteration,
        bandwidth_bps=m.bandwidth_bps,
        auto_converge_throttle=m.auto_converge_throttle,
        postcopy_failed=m.postcopy_failed,
    )
    return MigrationProgress(
        phase=phase_from_pb(m.phase) or MigrationPhase.STARTING,
        stats=stats,
        max_downtime_ms=m.max_downtime_ms,
        eta_ms=m.eta_ms,
    )


def completed_job_to_pb(j: CompletedJob) -> tpb.CompletedJob:
    return tpb.CompletedJob(
        time_elapsed_ms=j.time_elapsed_ms,
        downtime_ms=j.downtime_ms,
        memory_processed=j.memory_processed,
        disk_processed=j.disk_processed,
        iterations=j.iterations,
        postcopy=j.postcopy,
        downtime_not_measured=not j.downtime_measured,
    )


def completed_job_from_pb(m: tpb.CompletedJob) -> CompletedJob:
    return CompletedJob(
        time_elapsed_ms=m.time_elapsed_ms,
        downtime_ms=m.downtime_ms,
        memory_processed=m.memory_processed,
        disk_processed=m.disk_processed,
        iterations=m.iterations,
        postcopy=m.postcopy,
        downtime_measured=not m.downtime_not_measured,
    )


def completed_job_from_stats(s: JobStats, *, postcopy: bool = False) -> CompletedJob:
    """A completed job's figures from libvirt's completed job statistics."""
    return CompletedJob(
        time_elapsed_ms=s.time_elapsed_ms,
        downtime_ms=s.downtime_ms,
        memory_processed=s.memory_processed,
        disk_processed=s.disk_processed,
        iterations=s.iteration,
        postcopy=postcopy or s.postcopy,
    )


def migrate_result_to_pb(r: MigrationResult) -> apb.MigrateResult:
    """``source_state`` None: nothing is left of the domain on the source (UNSPECIFIED)."""
    return apb.MigrateResult(
        job=completed_job_to_pb(r.job), source_state=domain_state_to_pb(r.source_state), source_defined=r.source_defined
    )


def migrate_result_from_pb(m: apb.MigrateResult) -> MigrationResult:
    state = None if m.source_state == tpb.DOMAIN_STATE_UNSPECIFIED else domain_state_from_pb(m.source_state)
    return MigrationResult(job=completed_job_from_pb(m.job), source_state=state, source_defined=m.source_defined)


def job_to_pb(p: MigrationProgress) -> apb.GetJobResponse:
    """GetJob's answer for the running job (or none): libvirt's job type and operation, and the
    job's progress with its phase."""
    s = p.stats
    return apb.GetJobResponse(active=s.active, job_type=s.job_type, operation=s.operation, progress=progress_to_pb(p))


def job_from_pb(m: apb.GetJobResponse) -> MigrationProgress:
    p = progress_from_pb(m.progress)
    return replace(p, stats=replace(p.stats, active=m.active, job_type=m.job_type, operation=m.operation))


def completed_job_response_to_pb(s: JobStats) -> apb.GetJobResponse:
    """GetJob's answer for ``completed``: the last completed job's figures (zero when none)."""
    return apb.GetJobResponse(
        active=s.active,
        job_type=s.job_type,
        operation=s.operation,
        completed=completed_job_to_pb(completed_job_from_stats(s)),
    )


def completed_job_response_from_pb(m: apb.GetJobResponse) -> CompletedJob:
    return completed_job_from_pb(m.completed)


# ---------------------------------------------------------------- convergence policy, prediction

_POSTCOPY_TO_PB = {
    PostcopyMode.NEVER: tpb.POSTCOPY_MODE_NEVER,
    PostcopyMode.MANUAL: tpb.POSTCOPY_MODE_MANUAL,
    PostcopyMode.ON_PREDICTION: tpb.POSTCOPY_MODE_ON_PREDICTION,
    PostcopyMode.ON_STALL: tpb.POSTCOPY_MODE_ON_STALL,
    PostcopyMode.AFTER: tpb.POSTCOPY_MODE_AFTER,
}
_POSTCOPY_FROM_PB = {v: k for k, v in _POSTCOPY_TO_PB.items()}
_TIMEOUT_TO_PB = {
    TimeoutAction.ABORT: tpb.TIMEOUT_ACTION_ABORT,
    TimeoutAction.FORCE_COMPLETE: tpb.TIMEOUT_ACTION_FORCE_COMPLETE,
}
_TIMEOUT_FROM_PB = {v: k for k, v in _TIMEOUT_TO_PB.items()}


def policy_to_pb(p: ConvergencePolicy) -> tpb.ConvergencePolicy:
    return tpb.ConvergencePolicy(
        name=p.name,
        bandwidth_mibps=p.bandwidth_mibps,
        downtime_steps=[
            tpb.DowntimeStep(max_downtime_ms=s.max_downtime_ms, after_s=s.after_s, after_iterations=s.after_iterations)
            for s in p.downtime_steps
        ],
        auto_converge=p.auto_converge,
        auto_converge_initial=p.auto_converge_initial,
        auto_converge_increment=p.auto_converge_increment,
        postcopy=_POSTCOPY_TO_PB[p.postcopy],
        postcopy_after_s=p.postcopy_after_s,
        postcopy_bandwidth_mibps=p.postcopy_bandwidth_mibps,
        stall_iterations=p.stall_iterations,
        stall_tolerance=p.stall_tolerance,
        completion_timeout_s=p.completion_timeout_s,
        timeout_per_gib_s=p.timeout_per_gib_s,
        min_timeout_s=p.min_timeout_s,
        progress_timeout_s=p.progress_timeout_s,
        timeout_action=_TIMEOUT_TO_PB[p.timeout_action],
        parallel_connections=p.parallel_connections,
        compression=list(p.compression),
        refuse_unfinishable=p.refuse_unfinishable,
    )


def policy_from_pb(m: tpb.ConvergencePolicy) -> ConvergencePolicy:
    """A 0 where the proto says "0 = default" takes ``ConvergencePolicy``'s default. Raises
    InvalidArgument (INVALID_CONVERGENCE_POLICY) for a policy that breaks its rules, and
    (OUT_OF_RANGE, TOO_MANY_ITEMS, ...) for a field out of the API's bounds."""
    validate.text(m.name, "policy.name")
    for key in ("bandwidth_mibps", "postcopy_bandwidth_mibps"):
        validate.number(getattr(m, key), f"policy.{key}", hi=validate.MAX_BANDWIDTH_MIBPS, zero="no cap")
    validate.items(m.downtime_steps, "policy.downtime_steps")
    for n, s in enumerate(m.downtime_steps):
        validate.number(
            s.max_downtime_ms, f"policy.downtime_steps[{n}].max_downtime_ms", lo=1, hi=validate.MAX_DOWNTIME_MS
        )
        validate.seconds(s.after_s, f"policy.downtime_steps[{n}].after_s")
    for key in (
        "postcopy_after_s",
        "completion_timeout_s",
        "timeout_per_gib_s",
        "min_timeout_s",
        "progress_timeout_s",
    ):
        validate.seconds(getattr(m, key), f"policy.{key}")
    validate.seconds(m.stall_tolerance, "policy.stall_tolerance", hi=1.0)
    validate.names(m.compression, "policy.compression", max_len=16)
    d = ConvergencePolicy()
    return ConvergencePolicy(
        name=m.name,
        bandwidth_mibps=m.bandwidth_mibps,
        downtime_steps=tuple(DowntimeStep(s.max_downtime_ms, s.after_s, s.after_iterations) for s in m.downtime_steps),
        auto_converge=m.auto_converge,
        auto_converge_initial=m.auto_converge_initial,
        auto_converge_increment=m.auto_converge_increment,
        postcopy=_POSTCOPY_FROM_PB.get(m.postcopy, PostcopyMode.NEVER),
        postcopy_after_s=m.postcopy_after_s,
        postcopy_bandwidth_mibps=m.postcopy_bandwidth_mibps,
        stall_iterations=m.stall_iterations or d.stall_iterations,
        stall_tolerance=m.stall_tolerance or d.stall_tolerance,
        completion_timeout_s=m.completion_timeout_s,
        timeout_per_gib_s=m.timeout_per_gib_s or d.timeout_per_gib_s,
        min_timeout_s=m.min_timeout_s or d.min_timeout_s,
        progress_timeout_s=m.progress_timeout_s,
        timeout_action=_TIMEOUT_FROM_PB.get(m.timeout_action, TimeoutAction.ABORT),
        parallel_connections=m.parallel_connections,
        compression=tuple(m.compression),
        refuse_unfinishable=m.refuse_unfinishable,
    )


def policy_action_to_pb(a: PolicyAction, at: datetime | None = None) -> tpb.PolicyAction:
    m = tpb.PolicyAction(action=a.action, reason=a.reason, elapsed_ms=a.elapsed_ms, by=a.by)
    if at is not None:
        m.at.CopyFrom(timestamp_to_pb(at))
    return m


def policy_action_from_pb(m: tpb.PolicyAction) -> PolicyAction:
    return PolicyAction(action=m.action, reason=m.reason, elapsed_ms=m.elapsed_ms, by=m.by)


def guest_load_to_pb(g: GuestLoad) -> tpb.GuestLoad:
    return tpb.GuestLoad(
        memory_bytes=g.memory_bytes,
        samples=[tpb.DirtyRateSample(period_s=s, bytes_per_s=r) for s, r in g.samples],
        resident_bytes=g.resident_bytes,
        error=g.error,
    )


def guest_load_from_pb(m: tpb.GuestLoad) -> GuestLoad:
    return GuestLoad(
        memory_bytes=m.memory_bytes,
        samples=tuple((s.period_s, s.bytes_per_s) for s in m.samples),
        resident_bytes=m.resident_bytes,
        error=m.error,
    )


def prediction_to_pb(p: Prediction) -> tpb.Prediction:
    return tpb.Prediction(
        known=p.converges is not None,
        converges=bool(p.converges),
        finishes=bool(p.finishes),
        need=p.need,
        iterations=p.iterations,
        seconds=p.seconds,
        downtime_ms=p.downtime_ms,
        switch_after_s=p.switch_after_s,
        dirty_bps=p.dirty_bps,
        working_set_bytes=p.working_set_bytes,
        resident_bytes=p.resident_bytes,
        memory_bytes=p.memory_bytes,
        disk_bytes=p.disk_bytes,
        bandwidth_bps=p.bandwidth_bps,
        policy=p.policy,
        words=p.words,
    )


def prediction_from_pb(m: tpb.Prediction) -> Prediction:
    return Prediction(
        converges=m.converges if m.known else None,
        finishes=m.finishes if m.known else None,
        need=m.need,
        iterations=m.iterations,
        seconds=m.seconds,
        downtime_ms=m.downtime_ms,
        switch_after_s=m.switch_after_s,
        dirty_bps=m.dirty_bps,
        working_set_bytes=m.working_set_bytes,
        resident_bytes=m.resident_bytes,
        memory_bytes=m.memory_bytes,
        disk_bytes=m.disk_bytes,
        bandwidth_bps=m.bandwidth_bps,
        policy=m.policy,
        words=m.words,
    )
