import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from ferry.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_PENDING: _ClassVar[Phase]
    PHASE_PREFLIGHT: _ClassVar[Phase]
    PHASE_PREPARING: _ClassVar[Phase]
    PHASE_MIGRATING: _ClassVar[Phase]
    PHASE_FINISHING: _ClassVar[Phase]
    PHASE_ROLLING_BACK: _ClassVar[Phase]
    PHASE_SUCCEEDED: _ClassVar[Phase]
    PHASE_FAILED: _ClassVar[Phase]
    PHASE_CANCELLED: _ClassVar[Phase]
    PHASE_ROLLED_BACK: _ClassVar[Phase]

class DrainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAIN_STATE_UNSPECIFIED: _ClassVar[DrainState]
    DRAIN_STATE_RUNNING: _ClassVar[DrainState]
    DRAIN_STATE_PAUSED: _ClassVar[DrainState]
    DRAIN_STATE_CANCELLING: _ClassVar[DrainState]
    DRAIN_STATE_SUCCEEDED: _ClassVar[DrainState]
    DRAIN_STATE_INCOMPLETE: _ClassVar[DrainState]
    DRAIN_STATE_CANCELLED: _ClassVar[DrainState]

class DrainItemState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRAIN_ITEM_STATE_UNSPECIFIED: _ClassVar[DrainItemState]
    DRAIN_ITEM_STATE_WAITING: _ClassVar[DrainItemState]
    DRAIN_ITEM_STATE_MIGRATING: _ClassVar[DrainItemState]
    DRAIN_ITEM_STATE_MOVED: _ClassVar[DrainItemState]
    DRAIN_ITEM_STATE_FAILED: _ClassVar[DrainItemState]
    DRAIN_ITEM_STATE_SKIPPED: _ClassVar[DrainItemState]

class FleetObject(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLEET_OBJECT_UNSPECIFIED: _ClassVar[FleetObject]
    FLEET_OBJECT_MIGRATION: _ClassVar[FleetObject]
    FLEET_OBJECT_DRAIN: _ClassVar[FleetObject]
PHASE_UNSPECIFIED: Phase
PHASE_PENDING: Phase
PHASE_PREFLIGHT: Phase
PHASE_PREPARING: Phase
PHASE_MIGRATING: Phase
PHASE_FINISHING: Phase
PHASE_ROLLING_BACK: Phase
PHASE_SUCCEEDED: Phase
PHASE_FAILED: Phase
PHASE_CANCELLED: Phase
PHASE_ROLLED_BACK: Phase
DRAIN_STATE_UNSPECIFIED: DrainState
DRAIN_STATE_RUNNING: DrainState
DRAIN_STATE_PAUSED: DrainState
DRAIN_STATE_CANCELLING: DrainState
DRAIN_STATE_SUCCEEDED: DrainState
DRAIN_STATE_INCOMPLETE: DrainState
DRAIN_STATE_CANCELLED: DrainState
DRAIN_ITEM_STATE_UNSPECIFIED: DrainItemState
DRAIN_ITEM_STATE_WAITING: DrainItemState
DRAIN_ITEM_STATE_MIGRATING: DrainItemState
DRAIN_ITEM_STATE_MOVED: DrainItemState
DRAIN_ITEM_STATE_FAILED: DrainItemState
DRAIN_ITEM_STATE_SKIPPED: DrainItemState
FLEET_OBJECT_UNSPECIFIED: FleetObject
FLEET_OBJECT_MIGRATION: FleetObject
FLEET_OBJECT_DRAIN: FleetObject

class SubmitMigrationRequest(_message.Message):
    __slots__ = ("vm", "target_host", "options", "idempotency_key", "priority", "mapping", "policy")
    VM_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    vm: str
    target_host: str
    options: _types_pb2.MigrationOptions
    idempotency_key: str
    priority: int
    mapping: _types_pb2.HostMapping
    policy: str
    def __init__(self, vm: _Optional[str] = ..., target_host: _Optional[str] = ..., options: _Optional[_Union[_types_pb2.MigrationOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., priority: _Optional[int] = ..., mapping: _Optional[_Union[_types_pb2.HostMapping, _Mapping]] = ..., policy: _Optional[str] = ...) -> None: ...

class Migration(_message.Message):
    __slots__ = ("id", "vm", "vm_uuid", "source_host", "target_host", "options", "mapping", "priority", "idempotency_key", "phase", "history", "created_at", "updated_at", "progress", "result", "error", "cancel_requested", "prepare_id", "policy", "prediction", "actions", "ahead_of_slot")
    ID_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOST_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    PREPARE_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    AHEAD_OF_SLOT_FIELD_NUMBER: _ClassVar[int]
    id: str
    vm: str
    vm_uuid: str
    source_host: str
    target_host: str
    options: _types_pb2.MigrationOptions
    mapping: _types_pb2.HostMapping
    priority: int
    idempotency_key: str
    phase: Phase
    history: _containers.RepeatedCompositeFieldContainer[_types_pb2.TimedPhase]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    progress: _types_pb2.MigrationProgress
    result: _types_pb2.CompletedJob
    error: _types_pb2.ErrorDetail
    cancel_requested: bool
    prepare_id: str
    policy: _types_pb2.ConvergencePolicy
    prediction: _types_pb2.Prediction
    actions: _containers.RepeatedCompositeFieldContainer[_types_pb2.PolicyAction]
    ahead_of_slot: bool
    def __init__(self, id: _Optional[str] = ..., vm: _Optional[str] = ..., vm_uuid: _Optional[str] = ..., source_host: _Optional[str] = ..., target_host: _Optional[str] = ..., options: _Optional[_Union[_types_pb2.MigrationOptions, _Mapping]] = ..., mapping: _Optional[_Union[_types_pb2.HostMapping, _Mapping]] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., history: _Optional[_Iterable[_Union[_types_pb2.TimedPhase, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[_types_pb2.MigrationProgress, _Mapping]] = ..., result: _Optional[_Union[_types_pb2.CompletedJob, _Mapping]] = ..., error: _Optional[_Union[_types_pb2.ErrorDetail, _Mapping]] = ..., cancel_requested: _Optional[bool] = ..., prepare_id: _Optional[str] = ..., policy: _Optional[_Union[_types_pb2.ConvergencePolicy, _Mapping]] = ..., prediction: _Optional[_Union[_types_pb2.Prediction, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[_types_pb2.PolicyAction, _Mapping]]] = ..., ahead_of_slot: _Optional[bool] = ...) -> None: ...

class GetMigrationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListMigrationsRequest(_message.Message):
    __slots__ = ("phases", "host", "vm", "limit", "page_size", "page_token")
    PHASES_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    phases: _containers.RepeatedScalarFieldContainer[Phase]
    host: str
    vm: str
    limit: int
    page_size: int
    page_token: str
    def __init__(self, phases: _Optional[_Iterable[_Union[Phase, str]]] = ..., host: _Optional[str] = ..., vm: _Optional[str] = ..., limit: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMigrationsResponse(_message.Message):
    __slots__ = ("migrations", "next_page_token")
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    next_page_token: str
    def __init__(self, migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchMigrationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelMigrationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class HostStatus(_message.Message):
    __slots__ = ("name", "address", "available", "facts", "domains", "migrations_out", "migrations_in", "last_seen", "cordoned", "cordon_reason", "drain_id", "cordoned_at", "bandwidth_budget_mibps", "bandwidth_out_mibps", "bandwidth_in_mibps", "why_down", "shares_host_uuid_with")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_OUT_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_IN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    CORDONED_FIELD_NUMBER: _ClassVar[int]
    CORDON_REASON_FIELD_NUMBER: _ClassVar[int]
    DRAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CORDONED_AT_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BUDGET_MIBPS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_OUT_MIBPS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_IN_MIBPS_FIELD_NUMBER: _ClassVar[int]
    WHY_DOWN_FIELD_NUMBER: _ClassVar[int]
    SHARES_HOST_UUID_WITH_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    available: bool
    facts: _types_pb2.HostFacts
    domains: int
    migrations_out: int
    migrations_in: int
    last_seen: _timestamp_pb2.Timestamp
    cordoned: bool
    cordon_reason: str
    drain_id: str
    cordoned_at: _timestamp_pb2.Timestamp
    bandwidth_budget_mibps: int
    bandwidth_out_mibps: int
    bandwidth_in_mibps: int
    why_down: _types_pb2.ErrorDetail
    shares_host_uuid_with: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., available: _Optional[bool] = ..., facts: _Optional[_Union[_types_pb2.HostFacts, _Mapping]] = ..., domains: _Optional[int] = ..., migrations_out: _Optional[int] = ..., migrations_in: _Optional[int] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cordoned: _Optional[bool] = ..., cordon_reason: _Optional[str] = ..., drain_id: _Optional[str] = ..., cordoned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bandwidth_budget_mibps: _Optional[int] = ..., bandwidth_out_mibps: _Optional[int] = ..., bandwidth_in_mibps: _Optional[int] = ..., why_down: _Optional[_Union[_types_pb2.ErrorDetail, _Mapping]] = ..., shares_host_uuid_with: _Optional[_Iterable[str]] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "next_page_token")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[HostStatus]
    next_page_token: str
    def __init__(self, hosts: _Optional[_Iterable[_Union[HostStatus, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VM(_message.Message):
    __slots__ = ("domain", "host", "migration_id", "unreachable", "last_seen")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    domain: _types_pb2.Domain
    host: str
    migration_id: str
    unreachable: bool
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, domain: _Optional[_Union[_types_pb2.Domain, _Mapping]] = ..., host: _Optional[str] = ..., migration_id: _Optional[str] = ..., unreachable: _Optional[bool] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListVMsRequest(_message.Message):
    __slots__ = ("host", "page_size", "page_token")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host: str
    page_size: int
    page_token: str
    def __init__(self, host: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVMsResponse(_message.Message):
    __slots__ = ("vms", "next_page_token")
    VMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VM]
    next_page_token: str
    def __init__(self, vms: _Optional[_Iterable[_Union[VM, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PreflightRequest(_message.Message):
    __slots__ = ("vm", "target_host", "options", "mapping", "policy")
    VM_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    vm: str
    target_host: str
    options: _types_pb2.MigrationOptions
    mapping: _types_pb2.HostMapping
    policy: str
    def __init__(self, vm: _Optional[str] = ..., target_host: _Optional[str] = ..., options: _Optional[_Union[_types_pb2.MigrationOptions, _Mapping]] = ..., mapping: _Optional[_Union[_types_pb2.HostMapping, _Mapping]] = ..., policy: _Optional[str] = ...) -> None: ...

class PreflightResponse(_message.Message):
    __slots__ = ("ok", "blockers", "source_host", "disks", "warnings", "target_host", "candidates", "rejected", "policy", "prediction")
    OK_FIELD_NUMBER: _ClassVar[int]
    BLOCKERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOST_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    blockers: _containers.RepeatedCompositeFieldContainer[_types_pb2.ErrorDetail]
    source_host: str
    disks: _containers.RepeatedCompositeFieldContainer[_types_pb2.DiskPlan]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    target_host: str
    candidates: _containers.RepeatedCompositeFieldContainer[HostCandidate]
    rejected: _containers.RepeatedCompositeFieldContainer[HostCandidate]
    policy: _types_pb2.ConvergencePolicy
    prediction: _types_pb2.Prediction
    def __init__(self, ok: _Optional[bool] = ..., blockers: _Optional[_Iterable[_Union[_types_pb2.ErrorDetail, _Mapping]]] = ..., source_host: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[_types_pb2.DiskPlan, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., target_host: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[HostCandidate, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[HostCandidate, _Mapping]]] = ..., policy: _Optional[_Union[_types_pb2.ConvergencePolicy, _Mapping]] = ..., prediction: _Optional[_Union[_types_pb2.Prediction, _Mapping]] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicySelector(_message.Message):
    __slots__ = ("policy", "vm", "min_memory_bytes", "max_memory_bytes")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    MIN_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    policy: str
    vm: str
    min_memory_bytes: int
    max_memory_bytes: int
    def __init__(self, policy: _Optional[str] = ..., vm: _Optional[str] = ..., min_memory_bytes: _Optional[int] = ..., max_memory_bytes: _Optional[int] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "selectors")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[_types_pb2.ConvergencePolicy]
    selectors: _containers.RepeatedCompositeFieldContainer[PolicySelector]
    def __init__(self, policies: _Optional[_Iterable[_Union[_types_pb2.ConvergencePolicy, _Mapping]]] = ..., selectors: _Optional[_Iterable[_Union[PolicySelector, _Mapping]]] = ...) -> None: ...

class ControlMigrationRequest(_message.Message):
    __slots__ = ("id", "max_downtime_ms", "bandwidth_mibps", "start_postcopy", "force_complete")
    ID_FIELD_NUMBER: _ClassVar[int]
    MAX_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MIBPS_FIELD_NUMBER: _ClassVar[int]
    START_POSTCOPY_FIELD_NUMBER: _ClassVar[int]
    FORCE_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    id: str
    max_downtime_ms: int
    bandwidth_mibps: int
    start_postcopy: bool
    force_complete: bool
    def __init__(self, id: _Optional[str] = ..., max_downtime_ms: _Optional[int] = ..., bandwidth_mibps: _Optional[int] = ..., start_postcopy: _Optional[bool] = ..., force_complete: _Optional[bool] = ...) -> None: ...

class ControlMigrationResponse(_message.Message):
    __slots__ = ("migration", "max_downtime_ms", "bandwidth_mibps", "done")
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    MAX_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MIBPS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    max_downtime_ms: int
    bandwidth_mibps: int
    done: str
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ..., max_downtime_ms: _Optional[int] = ..., bandwidth_mibps: _Optional[int] = ..., done: _Optional[str] = ...) -> None: ...

class CordonHostRequest(_message.Message):
    __slots__ = ("host", "reason")
    HOST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    host: str
    reason: str
    def __init__(self, host: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UncordonHostRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: str
    def __init__(self, host: _Optional[str] = ...) -> None: ...

class ForgetHostRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: str
    def __init__(self, host: _Optional[str] = ...) -> None: ...

class ForgetHostResponse(_message.Message):
    __slots__ = ("host", "vms")
    HOST_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    host: str
    vms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host: _Optional[str] = ..., vms: _Optional[_Iterable[str]] = ...) -> None: ...

class HostCandidate(_message.Message):
    __slots__ = ("host", "score", "reasons", "blockers", "busy")
    HOST_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    BLOCKERS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    host: str
    score: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    blockers: _containers.RepeatedCompositeFieldContainer[_types_pb2.ErrorDetail]
    busy: bool
    def __init__(self, host: _Optional[str] = ..., score: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ..., blockers: _Optional[_Iterable[_Union[_types_pb2.ErrorDetail, _Mapping]]] = ..., busy: _Optional[bool] = ...) -> None: ...

class RankTargetsRequest(_message.Message):
    __slots__ = ("vm", "options", "mapping", "hosts")
    VM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    vm: str
    options: _types_pb2.MigrationOptions
    mapping: _types_pb2.HostMapping
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, vm: _Optional[str] = ..., options: _Optional[_Union[_types_pb2.MigrationOptions, _Mapping]] = ..., mapping: _Optional[_Union[_types_pb2.HostMapping, _Mapping]] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class RankTargetsResponse(_message.Message):
    __slots__ = ("source_host", "candidates", "rejected")
    SOURCE_HOST_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    source_host: str
    candidates: _containers.RepeatedCompositeFieldContainer[HostCandidate]
    rejected: _containers.RepeatedCompositeFieldContainer[HostCandidate]
    def __init__(self, source_host: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[HostCandidate, _Mapping]]] = ..., rejected: _Optional[_Iterable[_Union[HostCandidate, _Mapping]]] = ...) -> None: ...

class DrainItem(_message.Message):
    __slots__ = ("vm", "vm_uuid", "state", "target_host", "migration_id", "attempts", "tried", "problems", "estimate_s", "bytes_total", "bytes_moved", "started_at", "ended_at", "migration_phase")
    VM_FIELD_NUMBER: _ClassVar[int]
    VM_UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TRIED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_MOVED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_PHASE_FIELD_NUMBER: _ClassVar[int]
    vm: str
    vm_uuid: str
    state: DrainItemState
    target_host: str
    migration_id: str
    attempts: int
    tried: _containers.RepeatedScalarFieldContainer[str]
    problems: _containers.RepeatedCompositeFieldContainer[_types_pb2.ErrorDetail]
    estimate_s: float
    bytes_total: int
    bytes_moved: int
    started_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    migration_phase: Phase
    def __init__(self, vm: _Optional[str] = ..., vm_uuid: _Optional[str] = ..., state: _Optional[_Union[DrainItemState, str]] = ..., target_host: _Optional[str] = ..., migration_id: _Optional[str] = ..., attempts: _Optional[int] = ..., tried: _Optional[_Iterable[str]] = ..., problems: _Optional[_Iterable[_Union[_types_pb2.ErrorDetail, _Mapping]]] = ..., estimate_s: _Optional[float] = ..., bytes_total: _Optional[int] = ..., bytes_moved: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., migration_phase: _Optional[_Union[Phase, str]] = ...) -> None: ...

class Drain(_message.Message):
    __slots__ = ("id", "host", "state", "reason", "targets", "max_parallel", "policy", "slots", "items", "created_at", "updated_at", "ended_at", "history", "vms_total", "vms_moved", "vms_failed", "vms_migrating", "bytes_total", "bytes_moved", "eta_s", "estimated_s", "dry_run", "waiting")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    VMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    VMS_MOVED_FIELD_NUMBER: _ClassVar[int]
    VMS_FAILED_FIELD_NUMBER: _ClassVar[int]
    VMS_MIGRATING_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BYTES_MOVED_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_S_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: str
    state: DrainState
    reason: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    max_parallel: int
    policy: str
    slots: int
    items: _containers.RepeatedCompositeFieldContainer[DrainItem]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    history: _containers.RepeatedCompositeFieldContainer[DrainChange]
    vms_total: int
    vms_moved: int
    vms_failed: int
    vms_migrating: int
    bytes_total: int
    bytes_moved: int
    eta_s: float
    estimated_s: float
    dry_run: bool
    waiting: _types_pb2.ErrorDetail
    def __init__(self, id: _Optional[str] = ..., host: _Optional[str] = ..., state: _Optional[_Union[DrainState, str]] = ..., reason: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., max_parallel: _Optional[int] = ..., policy: _Optional[str] = ..., slots: _Optional[int] = ..., items: _Optional[_Iterable[_Union[DrainItem, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., history: _Optional[_Iterable[_Union[DrainChange, _Mapping]]] = ..., vms_total: _Optional[int] = ..., vms_moved: _Optional[int] = ..., vms_failed: _Optional[int] = ..., vms_migrating: _Optional[int] = ..., bytes_total: _Optional[int] = ..., bytes_moved: _Optional[int] = ..., eta_s: _Optional[float] = ..., estimated_s: _Optional[float] = ..., dry_run: _Optional[bool] = ..., waiting: _Optional[_Union[_types_pb2.ErrorDetail, _Mapping]] = ...) -> None: ...

class DrainChange(_message.Message):
    __slots__ = ("state", "at", "reason")
    STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    state: DrainState
    at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, state: _Optional[_Union[DrainState, str]] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class SubmitDrainRequest(_message.Message):
    __slots__ = ("host", "targets", "max_parallel", "policy", "dry_run", "reason", "options")
    HOST_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    host: str
    targets: _containers.RepeatedScalarFieldContainer[str]
    max_parallel: int
    policy: str
    dry_run: bool
    reason: str
    options: _types_pb2.MigrationOptions
    def __init__(self, host: _Optional[str] = ..., targets: _Optional[_Iterable[str]] = ..., max_parallel: _Optional[int] = ..., policy: _Optional[str] = ..., dry_run: _Optional[bool] = ..., reason: _Optional[str] = ..., options: _Optional[_Union[_types_pb2.MigrationOptions, _Mapping]] = ...) -> None: ...

class GetDrainRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListDrainsRequest(_message.Message):
    __slots__ = ("host", "states", "page_size", "page_token")
    HOST_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    host: str
    states: _containers.RepeatedScalarFieldContainer[DrainState]
    page_size: int
    page_token: str
    def __init__(self, host: _Optional[str] = ..., states: _Optional[_Iterable[_Union[DrainState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDrainsResponse(_message.Message):
    __slots__ = ("drains", "next_page_token")
    DRAINS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    drains: _containers.RepeatedCompositeFieldContainer[Drain]
    next_page_token: str
    def __init__(self, drains: _Optional[_Iterable[_Union[Drain, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchDrainRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class PauseDrainRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ResumeDrainRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelDrainRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchFleetRequest(_message.Message):
    __slots__ = ("objects", "hosts", "vms", "phases", "drain_states", "current")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    DRAIN_STATES_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedScalarFieldContainer[FleetObject]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    vms: _containers.RepeatedScalarFieldContainer[str]
    phases: _containers.RepeatedScalarFieldContainer[Phase]
    drain_states: _containers.RepeatedScalarFieldContainer[DrainState]
    current: bool
    def __init__(self, objects: _Optional[_Iterable[_Union[FleetObject, str]]] = ..., hosts: _Optional[_Iterable[str]] = ..., vms: _Optional[_Iterable[str]] = ..., phases: _Optional[_Iterable[_Union[Phase, str]]] = ..., drain_states: _Optional[_Iterable[_Union[DrainState, str]]] = ..., current: _Optional[bool] = ...) -> None: ...

class FleetEvent(_message.Message):
    __slots__ = ("migration", "drain", "deleted", "id", "kind")
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    migration: Migration
    drain: Drain
    deleted: bool
    id: str
    kind: FleetObject
    def __init__(self, migration: _Optional[_Union[Migration, _Mapping]] = ..., drain: _Optional[_Union[Drain, _Mapping]] = ..., deleted: _Optional[bool] = ..., id: _Optional[str] = ..., kind: _Optional[_Union[FleetObject, str]] = ...) -> None: ...
