import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from ferry.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInventoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("host", "domains")
    HOST_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    host: _types_pb2.HostFacts
    domains: _containers.RepeatedCompositeFieldContainer[_types_pb2.Domain]
    def __init__(self, host: _Optional[_Union[_types_pb2.HostFacts, _Mapping]] = ..., domains: _Optional[_Iterable[_Union[_types_pb2.Domain, _Mapping]]] = ...) -> None: ...

class GetDomainRequest(_message.Message):
    __slots__ = ("name", "include_xml", "leader_term", "backing_fingerprints")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_XML_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    BACKING_FINGERPRINTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    include_xml: bool
    leader_term: int
    backing_fingerprints: bool
    def __init__(self, name: _Optional[str] = ..., include_xml: _Optional[bool] = ..., leader_term: _Optional[int] = ..., backing_fingerprints: _Optional[bool] = ...) -> None: ...

class GetDomainResponse(_message.Message):
    __slots__ = ("domain", "xml")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    XML_FIELD_NUMBER: _ClassVar[int]
    domain: _types_pb2.Domain
    xml: str
    def __init__(self, domain: _Optional[_Union[_types_pb2.Domain, _Mapping]] = ..., xml: _Optional[str] = ...) -> None: ...

class PrepareIncomingRequest(_message.Message):
    __slots__ = ("domain_xml", "disks", "mapping", "storage", "ttl_seconds", "migration_id", "dry_run", "leader_term", "shared_probes", "block_devices", "offline")
    class BlockDevicesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DOMAIN_XML_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    SHARED_PROBES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_DEVICES_FIELD_NUMBER: _ClassVar[int]
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    domain_xml: str
    disks: _containers.RepeatedCompositeFieldContainer[_types_pb2.DiskPlan]
    mapping: _types_pb2.HostMapping
    storage: _types_pb2.StorageMode
    ttl_seconds: int
    migration_id: str
    dry_run: bool
    leader_term: int
    shared_probes: _containers.RepeatedScalarFieldContainer[str]
    block_devices: _containers.ScalarMap[str, str]
    offline: bool
    def __init__(self, domain_xml: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[_types_pb2.DiskPlan, _Mapping]]] = ..., mapping: _Optional[_Union[_types_pb2.HostMapping, _Mapping]] = ..., storage: _Optional[_Union[_types_pb2.StorageMode, str]] = ..., ttl_seconds: _Optional[int] = ..., migration_id: _Optional[str] = ..., dry_run: _Optional[bool] = ..., leader_term: _Optional[int] = ..., shared_probes: _Optional[_Iterable[str]] = ..., block_devices: _Optional[_Mapping[str, str]] = ..., offline: _Optional[bool] = ...) -> None: ...

class PrepareIncomingResponse(_message.Message):
    __slots__ = ("prepare_id", "destination_xml", "disks", "created", "expires_at", "problems")
    PREPARE_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_XML_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    prepare_id: str
    destination_xml: str
    disks: _containers.RepeatedCompositeFieldContainer[_types_pb2.DiskPlan]
    created: _containers.RepeatedScalarFieldContainer[str]
    expires_at: _timestamp_pb2.Timestamp
    problems: _containers.RepeatedCompositeFieldContainer[_types_pb2.ErrorDetail]
    def __init__(self, prepare_id: _Optional[str] = ..., destination_xml: _Optional[str] = ..., disks: _Optional[_Iterable[_Union[_types_pb2.DiskPlan, _Mapping]]] = ..., created: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., problems: _Optional[_Iterable[_Union[_types_pb2.ErrorDetail, _Mapping]]] = ...) -> None: ...

class CleanupIncomingRequest(_message.Message):
    __slots__ = ("prepare_id", "leader_term", "discard_incoming")
    PREPARE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    DISCARD_INCOMING_FIELD_NUMBER: _ClassVar[int]
    prepare_id: str
    leader_term: int
    discard_incoming: bool
    def __init__(self, prepare_id: _Optional[str] = ..., leader_term: _Optional[int] = ..., discard_incoming: _Optional[bool] = ...) -> None: ...

class CleanupIncomingResponse(_message.Message):
    __slots__ = ("removed", "already_gone")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_GONE_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    already_gone: bool
    def __init__(self, removed: _Optional[_Iterable[str]] = ..., already_gone: _Optional[bool] = ...) -> None: ...

class CommitIncomingRequest(_message.Message):
    __slots__ = ("prepare_id", "leader_term", "require_landed")
    PREPARE_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_LANDED_FIELD_NUMBER: _ClassVar[int]
    prepare_id: str
    leader_term: int
    require_landed: bool
    def __init__(self, prepare_id: _Optional[str] = ..., leader_term: _Optional[int] = ..., require_landed: _Optional[bool] = ...) -> None: ...

class CommitIncomingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListPreparesRequest(_message.Message):
    __slots__ = ("leader_term",)
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    leader_term: int
    def __init__(self, leader_term: _Optional[int] = ...) -> None: ...

class Prepare(_message.Message):
    __slots__ = ("prepare_id", "domain_name", "domain_uuid", "created", "created_at", "expires_at", "migration_id")
    PREPARE_ID_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_NAME_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_UUID_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    prepare_id: str
    domain_name: str
    domain_uuid: str
    created: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    migration_id: str
    def __init__(self, prepare_id: _Optional[str] = ..., domain_name: _Optional[str] = ..., domain_uuid: _Optional[str] = ..., created: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., migration_id: _Optional[str] = ...) -> None: ...

class ListPreparesResponse(_message.Message):
    __slots__ = ("prepares",)
    PREPARES_FIELD_NUMBER: _ClassVar[int]
    prepares: _containers.RepeatedCompositeFieldContainer[Prepare]
    def __init__(self, prepares: _Optional[_Iterable[_Union[Prepare, _Mapping]]] = ...) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("domain", "target_uri", "migrate_uri", "destination_xml", "options", "migration_id", "progress_interval_ms", "disks", "leader_term", "policy", "predicted_converges", "target_host")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TARGET_URI_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_URI_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_XML_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CONVERGES_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    domain: str
    target_uri: str
    migrate_uri: str
    destination_xml: str
    options: _types_pb2.MigrationOptions
    migration_id: str
    progress_interval_ms: int
    disks: _containers.RepeatedCompositeFieldContainer[_types_pb2.DiskPlan]
    leader_term: int
    policy: _types_pb2.ConvergencePolicy
    predicted_converges: bool
    target_host: str
    def __init__(self, domain: _Optional[str] = ..., target_uri: _Optional[str] = ..., migrate_uri: _Optional[str] = ..., destination_xml: _Optional[str] = ..., options: _Optional[_Union[_types_pb2.MigrationOptions, _Mapping]] = ..., migration_id: _Optional[str] = ..., progress_interval_ms: _Optional[int] = ..., disks: _Optional[_Iterable[_Union[_types_pb2.DiskPlan, _Mapping]]] = ..., leader_term: _Optional[int] = ..., policy: _Optional[_Union[_types_pb2.ConvergencePolicy, _Mapping]] = ..., predicted_converges: _Optional[bool] = ..., target_host: _Optional[str] = ...) -> None: ...

class MigrateEvent(_message.Message):
    __slots__ = ("progress", "result", "action")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    progress: _types_pb2.MigrationProgress
    result: MigrateResult
    action: _types_pb2.PolicyAction
    def __init__(self, progress: _Optional[_Union[_types_pb2.MigrationProgress, _Mapping]] = ..., result: _Optional[_Union[MigrateResult, _Mapping]] = ..., action: _Optional[_Union[_types_pb2.PolicyAction, _Mapping]] = ...) -> None: ...

class MigrateResult(_message.Message):
    __slots__ = ("job", "source_state", "source_defined")
    JOB_FIELD_NUMBER: _ClassVar[int]
    SOURCE_STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_DEFINED_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.CompletedJob
    source_state: _types_pb2.DomainState
    source_defined: bool
    def __init__(self, job: _Optional[_Union[_types_pb2.CompletedJob, _Mapping]] = ..., source_state: _Optional[_Union[_types_pb2.DomainState, str]] = ..., source_defined: _Optional[bool] = ...) -> None: ...

class AbortMigrationRequest(_message.Message):
    __slots__ = ("domain", "leader_term")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    domain: str
    leader_term: int
    def __init__(self, domain: _Optional[str] = ..., leader_term: _Optional[int] = ...) -> None: ...

class AbortMigrationResponse(_message.Message):
    __slots__ = ("aborted",)
    ABORTED_FIELD_NUMBER: _ClassVar[int]
    aborted: bool
    def __init__(self, aborted: _Optional[bool] = ...) -> None: ...

class TuneMigrationRequest(_message.Message):
    __slots__ = ("domain", "max_downtime_ms", "bandwidth_mibps", "start_postcopy", "leader_term", "force_complete", "requested_by")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    MAX_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MIBPS_FIELD_NUMBER: _ClassVar[int]
    START_POSTCOPY_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    FORCE_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    domain: str
    max_downtime_ms: int
    bandwidth_mibps: int
    start_postcopy: bool
    leader_term: int
    force_complete: bool
    requested_by: str
    def __init__(self, domain: _Optional[str] = ..., max_downtime_ms: _Optional[int] = ..., bandwidth_mibps: _Optional[int] = ..., start_postcopy: _Optional[bool] = ..., leader_term: _Optional[int] = ..., force_complete: _Optional[bool] = ..., requested_by: _Optional[str] = ...) -> None: ...

class TuneMigrationResponse(_message.Message):
    __slots__ = ("max_downtime_ms", "bandwidth_mibps", "done")
    MAX_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MIBPS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    max_downtime_ms: int
    bandwidth_mibps: int
    done: str
    def __init__(self, max_downtime_ms: _Optional[int] = ..., bandwidth_mibps: _Optional[int] = ..., done: _Optional[str] = ...) -> None: ...

class MeasureGuestRequest(_message.Message):
    __slots__ = ("domain", "periods_s")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    PERIODS_S_FIELD_NUMBER: _ClassVar[int]
    domain: str
    periods_s: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, domain: _Optional[str] = ..., periods_s: _Optional[_Iterable[int]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("domain", "completed", "leader_term")
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    domain: str
    completed: bool
    leader_term: int
    def __init__(self, domain: _Optional[str] = ..., completed: _Optional[bool] = ..., leader_term: _Optional[int] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("active", "progress", "completed", "job_type", "operation")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    JOB_TYPE_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    active: bool
    progress: _types_pb2.MigrationProgress
    completed: _types_pb2.CompletedJob
    job_type: str
    operation: str
    def __init__(self, active: _Optional[bool] = ..., progress: _Optional[_Union[_types_pb2.MigrationProgress, _Mapping]] = ..., completed: _Optional[_Union[_types_pb2.CompletedJob, _Mapping]] = ..., job_type: _Optional[str] = ..., operation: _Optional[str] = ...) -> None: ...

class ProbeTargetRequest(_message.Message):
    __slots__ = ("target_uri", "migration_address")
    TARGET_URI_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    target_uri: str
    migration_address: str
    def __init__(self, target_uri: _Optional[str] = ..., migration_address: _Optional[str] = ...) -> None: ...

class ProbeTargetResponse(_message.Message):
    __slots__ = ("problems", "latency_ms")
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    problems: _containers.RepeatedCompositeFieldContainer[_types_pb2.ErrorDetail]
    latency_ms: int
    def __init__(self, problems: _Optional[_Iterable[_Union[_types_pb2.ErrorDetail, _Mapping]]] = ..., latency_ms: _Optional[int] = ...) -> None: ...

class RemoveSourceDisksRequest(_message.Message):
    __slots__ = ("domain_uuid", "paths", "migration_id", "leader_term")
    DOMAIN_UUID_FIELD_NUMBER: _ClassVar[int]
    PATHS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_TERM_FIELD_NUMBER: _ClassVar[int]
    domain_uuid: str
    paths: _containers.RepeatedScalarFieldContainer[str]
    migration_id: str
    leader_term: int
    def __init__(self, domain_uuid: _Optional[str] = ..., paths: _Optional[_Iterable[str]] = ..., migration_id: _Optional[str] = ..., leader_term: _Optional[int] = ...) -> None: ...

class RemoveSourceDisksResponse(_message.Message):
    __slots__ = ("removed", "already_gone")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_GONE_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    already_gone: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ..., already_gone: _Optional[_Iterable[str]] = ...) -> None: ...

class MarkSharedStorageRequest(_message.Message):
    __slots__ = ("disk_paths", "token")
    DISK_PATHS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    disk_paths: _containers.RepeatedScalarFieldContainer[str]
    token: str
    def __init__(self, disk_paths: _Optional[_Iterable[str]] = ..., token: _Optional[str] = ...) -> None: ...

class MarkSharedStorageResponse(_message.Message):
    __slots__ = ("probes", "problems")
    PROBES_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    probes: _containers.RepeatedScalarFieldContainer[str]
    problems: _containers.RepeatedCompositeFieldContainer[_types_pb2.ErrorDetail]
    def __init__(self, probes: _Optional[_Iterable[str]] = ..., problems: _Optional[_Iterable[_Union[_types_pb2.ErrorDetail, _Mapping]]] = ...) -> None: ...

class UnmarkSharedStorageRequest(_message.Message):
    __slots__ = ("probes",)
    PROBES_FIELD_NUMBER: _ClassVar[int]
    probes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, probes: _Optional[_Iterable[str]] = ...) -> None: ...

class UnmarkSharedStorageResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...
