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
    __slots__ = ("id", "vm", "vm_uuid", "source_host", "target_host", "options", "mapping", "priority", "idempotency_key", "phase", "history", "created_at", "updated_at", "progress", "result", "error", "cancel_requested", "prepare_id", "policy", "prediction", "actions")
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
    def __init__(self, id: _Optional[str] = ..., vm: _Optional[str] = ..., vm_uuid: _Optional[str] = ..., source_host: _Optional[str] = ..., target_host: _Optional[str] = ..., options: _Optional[_Union[_types_pb2.MigrationOptions, _Mapping]] = ..., mapping: _Optional[_Union[_types_pb2.HostMapping, _Mapping]] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., phase: _Optional[_Union[Phase, str]] = ..., history: _Optional[_Iterable[_Union[_types_pb2.TimedPhase, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[_types_pb2.MigrationProgress, _Mapping]] = ..., result: _Optional[_Union[_types_pb2.CompletedJob, _Mapping]] = ..., error: _Optional[_Union[_types_pb2.ErrorDetail, _Mapping]] = ..., cancel_requested: _Optional[bool] = ..., prepare_id: _Optional[str] = ..., policy: _Optional[_Union[_types_pb2.ConvergencePolicy, _Mapping]] = ..., prediction: _Optional[_Union[_types_pb2.Prediction, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[_types_pb2.PolicyAction, _Mapping]]] = ...) -> None: ...

class GetMigrationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListMigrationsRequest(_message.Message):
    __slots__ = ("phases", "host", "vm", "limit")
    PHASES_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    VM_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    phases: _containers.RepeatedScalarFieldContainer[Phase]
    host: str
    vm: str
    limit: int
    def __init__(self, phases: _Optional[_Iterable[_Union[Phase, str]]] = ..., host: _Optional[str] = ..., vm: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListMigrationsResponse(_message.Message):
    __slots__ = ("migrations",)
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    migrations: _containers.RepeatedCompositeFieldContainer[Migration]
    def __init__(self, migrations: _Optional[_Iterable[_Union[Migration, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("name", "address", "available", "facts", "domains", "migrations_out", "migrations_in", "last_seen")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_OUT_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_IN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    available: bool
    facts: _types_pb2.HostFacts
    domains: int
    migrations_out: int
    migrations_in: int
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., available: _Optional[bool] = ..., facts: _Optional[_Union[_types_pb2.HostFacts, _Mapping]] = ..., domains: _Optional[int] = ..., migrations_out: _Optional[int] = ..., migrations_in: _Optional[int] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts",)
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[HostStatus]
    def __init__(self, hosts: _Optional[_Iterable[_Union[HostStatus, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: str
    def __init__(self, host: _Optional[str] = ...) -> None: ...

class ListVMsResponse(_message.Message):
    __slots__ = ("vms",)
    VMS_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[VM]
    def __init__(self, vms: _Optional[_Iterable[_Union[VM, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("ok", "blockers", "source_host", "disks", "warnings", "policy", "prediction")
    OK_FIELD_NUMBER: _ClassVar[int]
    BLOCKERS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_HOST_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    blockers: _containers.RepeatedCompositeFieldContainer[_types_pb2.ErrorDetail]
    source_host: str
    disks: _containers.RepeatedCompositeFieldContainer[_types_pb2.DiskPlan]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    policy: _types_pb2.ConvergencePolicy
    prediction: _types_pb2.Prediction
    def __init__(self, ok: _Optional[bool] = ..., blockers: _Optional[_Iterable[_Union[_types_pb2.ErrorDetail, _Mapping]]] = ..., source_host: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[_types_pb2.DiskPlan, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., policy: _Optional[_Union[_types_pb2.ConvergencePolicy, _Mapping]] = ..., prediction: _Optional[_Union[_types_pb2.Prediction, _Mapping]] = ...) -> None: ...

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
