import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DomainState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DOMAIN_STATE_UNSPECIFIED: _ClassVar[DomainState]
    DOMAIN_STATE_RUNNING: _ClassVar[DomainState]
    DOMAIN_STATE_BLOCKED: _ClassVar[DomainState]
    DOMAIN_STATE_PAUSED: _ClassVar[DomainState]
    DOMAIN_STATE_SHUTDOWN: _ClassVar[DomainState]
    DOMAIN_STATE_SHUTOFF: _ClassVar[DomainState]
    DOMAIN_STATE_CRASHED: _ClassVar[DomainState]
    DOMAIN_STATE_PMSUSPENDED: _ClassVar[DomainState]

class StorageMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORAGE_MODE_UNSPECIFIED: _ClassVar[StorageMode]
    STORAGE_MODE_SHARED: _ClassVar[StorageMode]
    STORAGE_MODE_COPY_ALL: _ClassVar[StorageMode]
    STORAGE_MODE_COPY_INC: _ClassVar[StorageMode]

class MigrationPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MIGRATION_PHASE_UNSPECIFIED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_STARTING: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_DISK_MIRROR: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_PRECOPY: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_POSTCOPY: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_FINISHING: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_COMPLETED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_FAILED: _ClassVar[MigrationPhase]
    MIGRATION_PHASE_CANCELLED: _ClassVar[MigrationPhase]

class PostcopyMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POSTCOPY_MODE_UNSPECIFIED: _ClassVar[PostcopyMode]
    POSTCOPY_MODE_NEVER: _ClassVar[PostcopyMode]
    POSTCOPY_MODE_MANUAL: _ClassVar[PostcopyMode]
    POSTCOPY_MODE_ON_PREDICTION: _ClassVar[PostcopyMode]
    POSTCOPY_MODE_ON_STALL: _ClassVar[PostcopyMode]
    POSTCOPY_MODE_AFTER: _ClassVar[PostcopyMode]

class TimeoutAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIMEOUT_ACTION_UNSPECIFIED: _ClassVar[TimeoutAction]
    TIMEOUT_ACTION_ABORT: _ClassVar[TimeoutAction]
    TIMEOUT_ACTION_FORCE_COMPLETE: _ClassVar[TimeoutAction]
DOMAIN_STATE_UNSPECIFIED: DomainState
DOMAIN_STATE_RUNNING: DomainState
DOMAIN_STATE_BLOCKED: DomainState
DOMAIN_STATE_PAUSED: DomainState
DOMAIN_STATE_SHUTDOWN: DomainState
DOMAIN_STATE_SHUTOFF: DomainState
DOMAIN_STATE_CRASHED: DomainState
DOMAIN_STATE_PMSUSPENDED: DomainState
STORAGE_MODE_UNSPECIFIED: StorageMode
STORAGE_MODE_SHARED: StorageMode
STORAGE_MODE_COPY_ALL: StorageMode
STORAGE_MODE_COPY_INC: StorageMode
MIGRATION_PHASE_UNSPECIFIED: MigrationPhase
MIGRATION_PHASE_STARTING: MigrationPhase
MIGRATION_PHASE_DISK_MIRROR: MigrationPhase
MIGRATION_PHASE_PRECOPY: MigrationPhase
MIGRATION_PHASE_POSTCOPY: MigrationPhase
MIGRATION_PHASE_FINISHING: MigrationPhase
MIGRATION_PHASE_COMPLETED: MigrationPhase
MIGRATION_PHASE_FAILED: MigrationPhase
MIGRATION_PHASE_CANCELLED: MigrationPhase
POSTCOPY_MODE_UNSPECIFIED: PostcopyMode
POSTCOPY_MODE_NEVER: PostcopyMode
POSTCOPY_MODE_MANUAL: PostcopyMode
POSTCOPY_MODE_ON_PREDICTION: PostcopyMode
POSTCOPY_MODE_ON_STALL: PostcopyMode
POSTCOPY_MODE_AFTER: PostcopyMode
TIMEOUT_ACTION_UNSPECIFIED: TimeoutAction
TIMEOUT_ACTION_ABORT: TimeoutAction
TIMEOUT_ACTION_FORCE_COMPLETE: TimeoutAction

class HostFacts(_message.Message):
    __slots__ = ("hostname", "host_uuid", "libvirt_version", "qemu_version", "cpu_model", "arch", "cpu_features", "memory_total_bytes", "memory_free_bytes", "bridges", "networks", "storage", "libvirt_uri", "migration_address", "agent_version", "cpus", "migration_tls_problem", "api_level", "libvirt_uri_problem", "machine_types", "emulator")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    HOST_UUID_FIELD_NUMBER: _ClassVar[int]
    LIBVIRT_VERSION_FIELD_NUMBER: _ClassVar[int]
    QEMU_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    LIBVIRT_URI_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_TLS_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    API_LEVEL_FIELD_NUMBER: _ClassVar[int]
    LIBVIRT_URI_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    MACHINE_TYPES_FIELD_NUMBER: _ClassVar[int]
    EMULATOR_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    host_uuid: str
    libvirt_version: int
    qemu_version: int
    cpu_model: str
    arch: str
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    memory_total_bytes: int
    memory_free_bytes: int
    bridges: _containers.RepeatedScalarFieldContainer[str]
    networks: _containers.RepeatedScalarFieldContainer[str]
    storage: _containers.RepeatedCompositeFieldContainer[StorageDir]
    libvirt_uri: str
    migration_address: str
    agent_version: str
    cpus: int
    migration_tls_problem: str
    api_level: int
    libvirt_uri_problem: str
    machine_types: _containers.RepeatedScalarFieldContainer[str]
    emulator: str
    def __init__(self, hostname: _Optional[str] = ..., host_uuid: _Optional[str] = ..., libvirt_version: _Optional[int] = ..., qemu_version: _Optional[int] = ..., cpu_model: _Optional[str] = ..., arch: _Optional[str] = ..., cpu_features: _Optional[_Iterable[str]] = ..., memory_total_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., bridges: _Optional[_Iterable[str]] = ..., networks: _Optional[_Iterable[str]] = ..., storage: _Optional[_Iterable[_Union[StorageDir, _Mapping]]] = ..., libvirt_uri: _Optional[str] = ..., migration_address: _Optional[str] = ..., agent_version: _Optional[str] = ..., cpus: _Optional[int] = ..., migration_tls_problem: _Optional[str] = ..., api_level: _Optional[int] = ..., libvirt_uri_problem: _Optional[str] = ..., machine_types: _Optional[_Iterable[str]] = ..., emulator: _Optional[str] = ...) -> None: ...

class StorageDir(_message.Message):
    __slots__ = ("path", "free_bytes", "total_bytes", "shared", "fs_type")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    FS_TYPE_FIELD_NUMBER: _ClassVar[int]
    path: str
    free_bytes: int
    total_bytes: int
    shared: bool
    fs_type: str
    def __init__(self, path: _Optional[str] = ..., free_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., shared: _Optional[bool] = ..., fs_type: _Optional[str] = ...) -> None: ...

class Disk(_message.Message):
    __slots__ = ("target", "source", "format", "virtual_size", "allocation", "backing_chain", "cache", "shared", "readonly", "device", "bus", "shared_unknown_to_libvirt", "backing_fingerprint", "block_device", "block_identity")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    BACKING_CHAIN_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    READONLY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BUS_FIELD_NUMBER: _ClassVar[int]
    SHARED_UNKNOWN_TO_LIBVIRT_FIELD_NUMBER: _ClassVar[int]
    BACKING_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_DEVICE_FIELD_NUMBER: _ClassVar[int]
    BLOCK_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    target: str
    source: str
    format: str
    virtual_size: int
    allocation: int
    backing_chain: _containers.RepeatedScalarFieldContainer[str]
    cache: str
    shared: bool
    readonly: bool
    device: str
    bus: str
    shared_unknown_to_libvirt: bool
    backing_fingerprint: str
    block_device: str
    block_identity: str
    def __init__(self, target: _Optional[str] = ..., source: _Optional[str] = ..., format: _Optional[str] = ..., virtual_size: _Optional[int] = ..., allocation: _Optional[int] = ..., backing_chain: _Optional[_Iterable[str]] = ..., cache: _Optional[str] = ..., shared: _Optional[bool] = ..., readonly: _Optional[bool] = ..., device: _Optional[str] = ..., bus: _Optional[str] = ..., shared_unknown_to_libvirt: _Optional[bool] = ..., backing_fingerprint: _Optional[str] = ..., block_device: _Optional[str] = ..., block_identity: _Optional[str] = ...) -> None: ...

class Nic(_message.Message):
    __slots__ = ("type", "source", "mac", "model")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    type: str
    source: str
    mac: str
    model: str
    def __init__(self, type: _Optional[str] = ..., source: _Optional[str] = ..., mac: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class Domain(_message.Message):
    __slots__ = ("name", "uuid", "state", "memory_bytes", "vcpus", "persistent", "disks", "nics", "cpu_mode", "cpu_model", "os_type", "emulator", "paused_by_libvirt", "machine")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_FIELD_NUMBER: _ClassVar[int]
    DISKS_FIELD_NUMBER: _ClassVar[int]
    NICS_FIELD_NUMBER: _ClassVar[int]
    CPU_MODE_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    OS_TYPE_FIELD_NUMBER: _ClassVar[int]
    EMULATOR_FIELD_NUMBER: _ClassVar[int]
    PAUSED_BY_LIBVIRT_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    uuid: str
    state: DomainState
    memory_bytes: int
    vcpus: int
    persistent: bool
    disks: _containers.RepeatedCompositeFieldContainer[Disk]
    nics: _containers.RepeatedCompositeFieldContainer[Nic]
    cpu_mode: str
    cpu_model: str
    os_type: str
    emulator: str
    paused_by_libvirt: bool
    machine: str
    def __init__(self, name: _Optional[str] = ..., uuid: _Optional[str] = ..., state: _Optional[_Union[DomainState, str]] = ..., memory_bytes: _Optional[int] = ..., vcpus: _Optional[int] = ..., persistent: _Optional[bool] = ..., disks: _Optional[_Iterable[_Union[Disk, _Mapping]]] = ..., nics: _Optional[_Iterable[_Union[Nic, _Mapping]]] = ..., cpu_mode: _Optional[str] = ..., cpu_model: _Optional[str] = ..., os_type: _Optional[str] = ..., emulator: _Optional[str] = ..., paused_by_libvirt: _Optional[bool] = ..., machine: _Optional[str] = ...) -> None: ...

class HostMapping(_message.Message):
    __slots__ = ("bridges", "networks", "path_prefixes")
    class BridgesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NetworksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class PathPrefixesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BRIDGES_FIELD_NUMBER: _ClassVar[int]
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    bridges: _containers.ScalarMap[str, str]
    networks: _containers.ScalarMap[str, str]
    path_prefixes: _containers.ScalarMap[str, str]
    def __init__(self, bridges: _Optional[_Mapping[str, str]] = ..., networks: _Optional[_Mapping[str, str]] = ..., path_prefixes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DiskPlan(_message.Message):
    __slots__ = ("target", "source", "destination", "format", "virtual_size", "allocation", "backing_file", "backing_format", "copy", "backing_fingerprint")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATION_FIELD_NUMBER: _ClassVar[int]
    BACKING_FILE_FIELD_NUMBER: _ClassVar[int]
    BACKING_FORMAT_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    BACKING_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    target: str
    source: str
    destination: str
    format: str
    virtual_size: int
    allocation: int
    backing_file: str
    backing_format: str
    copy: bool
    backing_fingerprint: str
    def __init__(self, target: _Optional[str] = ..., source: _Optional[str] = ..., destination: _Optional[str] = ..., format: _Optional[str] = ..., virtual_size: _Optional[int] = ..., allocation: _Optional[int] = ..., backing_file: _Optional[str] = ..., backing_format: _Optional[str] = ..., copy: _Optional[bool] = ..., backing_fingerprint: _Optional[str] = ...) -> None: ...

class MigrationOptions(_message.Message):
    __slots__ = ("offline", "storage", "migrate_disks", "bandwidth_mibps", "max_downtime_ms", "auto_converge", "allow_postcopy", "unsafe", "completion_timeout_s", "postcopy_on_stall", "keep_source_definition", "transient_target", "persist_transient")
    OFFLINE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FIELD_NUMBER: _ClassVar[int]
    MIGRATE_DISKS_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MIBPS_FIELD_NUMBER: _ClassVar[int]
    MAX_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONVERGE_FIELD_NUMBER: _ClassVar[int]
    ALLOW_POSTCOPY_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    POSTCOPY_ON_STALL_FIELD_NUMBER: _ClassVar[int]
    KEEP_SOURCE_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    TRANSIENT_TARGET_FIELD_NUMBER: _ClassVar[int]
    PERSIST_TRANSIENT_FIELD_NUMBER: _ClassVar[int]
    offline: bool
    storage: StorageMode
    migrate_disks: _containers.RepeatedScalarFieldContainer[str]
    bandwidth_mibps: int
    max_downtime_ms: int
    auto_converge: bool
    allow_postcopy: bool
    unsafe: bool
    completion_timeout_s: int
    postcopy_on_stall: bool
    keep_source_definition: bool
    transient_target: bool
    persist_transient: bool
    def __init__(self, offline: _Optional[bool] = ..., storage: _Optional[_Union[StorageMode, str]] = ..., migrate_disks: _Optional[_Iterable[str]] = ..., bandwidth_mibps: _Optional[int] = ..., max_downtime_ms: _Optional[int] = ..., auto_converge: _Optional[bool] = ..., allow_postcopy: _Optional[bool] = ..., unsafe: _Optional[bool] = ..., completion_timeout_s: _Optional[int] = ..., postcopy_on_stall: _Optional[bool] = ..., keep_source_definition: _Optional[bool] = ..., transient_target: _Optional[bool] = ..., persist_transient: _Optional[bool] = ...) -> None: ...

class MigrationProgress(_message.Message):
    __slots__ = ("phase", "memory_total", "memory_processed", "memory_remaining", "disk_total", "disk_processed", "disk_remaining", "dirty_rate_pages", "page_size", "iteration", "bandwidth_bps", "elapsed_ms", "auto_converge_throttle", "max_downtime_ms", "eta_ms", "postcopy_failed")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    MEMORY_REMAINING_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DISK_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    DISK_REMAINING_FIELD_NUMBER: _ClassVar[int]
    DIRTY_RATE_PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BPS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONVERGE_THROTTLE_FIELD_NUMBER: _ClassVar[int]
    MAX_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    ETA_MS_FIELD_NUMBER: _ClassVar[int]
    POSTCOPY_FAILED_FIELD_NUMBER: _ClassVar[int]
    phase: MigrationPhase
    memory_total: int
    memory_processed: int
    memory_remaining: int
    disk_total: int
    disk_processed: int
    disk_remaining: int
    dirty_rate_pages: int
    page_size: int
    iteration: int
    bandwidth_bps: int
    elapsed_ms: int
    auto_converge_throttle: int
    max_downtime_ms: int
    eta_ms: int
    postcopy_failed: bool
    def __init__(self, phase: _Optional[_Union[MigrationPhase, str]] = ..., memory_total: _Optional[int] = ..., memory_processed: _Optional[int] = ..., memory_remaining: _Optional[int] = ..., disk_total: _Optional[int] = ..., disk_processed: _Optional[int] = ..., disk_remaining: _Optional[int] = ..., dirty_rate_pages: _Optional[int] = ..., page_size: _Optional[int] = ..., iteration: _Optional[int] = ..., bandwidth_bps: _Optional[int] = ..., elapsed_ms: _Optional[int] = ..., auto_converge_throttle: _Optional[int] = ..., max_downtime_ms: _Optional[int] = ..., eta_ms: _Optional[int] = ..., postcopy_failed: _Optional[bool] = ...) -> None: ...

class CompletedJob(_message.Message):
    __slots__ = ("time_elapsed_ms", "downtime_ms", "memory_processed", "disk_processed", "iterations", "postcopy", "downtime_not_measured")
    TIME_ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    DISK_PROCESSED_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    POSTCOPY_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_NOT_MEASURED_FIELD_NUMBER: _ClassVar[int]
    time_elapsed_ms: int
    downtime_ms: int
    memory_processed: int
    disk_processed: int
    iterations: int
    postcopy: bool
    downtime_not_measured: bool
    def __init__(self, time_elapsed_ms: _Optional[int] = ..., downtime_ms: _Optional[int] = ..., memory_processed: _Optional[int] = ..., disk_processed: _Optional[int] = ..., iterations: _Optional[int] = ..., postcopy: _Optional[bool] = ..., downtime_not_measured: _Optional[bool] = ...) -> None: ...

class ConvergencePolicy(_message.Message):
    __slots__ = ("name", "bandwidth_mibps", "downtime_steps", "auto_converge", "auto_converge_initial", "auto_converge_increment", "postcopy", "postcopy_after_s", "postcopy_bandwidth_mibps", "stall_iterations", "stall_tolerance", "completion_timeout_s", "timeout_per_gib_s", "min_timeout_s", "progress_timeout_s", "timeout_action", "parallel_connections", "compression", "refuse_unfinishable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_MIBPS_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_STEPS_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONVERGE_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONVERGE_INITIAL_FIELD_NUMBER: _ClassVar[int]
    AUTO_CONVERGE_INCREMENT_FIELD_NUMBER: _ClassVar[int]
    POSTCOPY_FIELD_NUMBER: _ClassVar[int]
    POSTCOPY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    POSTCOPY_BANDWIDTH_MIBPS_FIELD_NUMBER: _ClassVar[int]
    STALL_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    STALL_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_PER_GIB_S_FIELD_NUMBER: _ClassVar[int]
    MIN_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_ACTION_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    REFUSE_UNFINISHABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    bandwidth_mibps: int
    downtime_steps: _containers.RepeatedCompositeFieldContainer[DowntimeStep]
    auto_converge: bool
    auto_converge_initial: int
    auto_converge_increment: int
    postcopy: PostcopyMode
    postcopy_after_s: float
    postcopy_bandwidth_mibps: int
    stall_iterations: int
    stall_tolerance: float
    completion_timeout_s: float
    timeout_per_gib_s: float
    min_timeout_s: float
    progress_timeout_s: float
    timeout_action: TimeoutAction
    parallel_connections: int
    compression: _containers.RepeatedScalarFieldContainer[str]
    refuse_unfinishable: bool
    def __init__(self, name: _Optional[str] = ..., bandwidth_mibps: _Optional[int] = ..., downtime_steps: _Optional[_Iterable[_Union[DowntimeStep, _Mapping]]] = ..., auto_converge: _Optional[bool] = ..., auto_converge_initial: _Optional[int] = ..., auto_converge_increment: _Optional[int] = ..., postcopy: _Optional[_Union[PostcopyMode, str]] = ..., postcopy_after_s: _Optional[float] = ..., postcopy_bandwidth_mibps: _Optional[int] = ..., stall_iterations: _Optional[int] = ..., stall_tolerance: _Optional[float] = ..., completion_timeout_s: _Optional[float] = ..., timeout_per_gib_s: _Optional[float] = ..., min_timeout_s: _Optional[float] = ..., progress_timeout_s: _Optional[float] = ..., timeout_action: _Optional[_Union[TimeoutAction, str]] = ..., parallel_connections: _Optional[int] = ..., compression: _Optional[_Iterable[str]] = ..., refuse_unfinishable: _Optional[bool] = ...) -> None: ...

class DowntimeStep(_message.Message):
    __slots__ = ("max_downtime_ms", "after_s", "after_iterations")
    MAX_DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    AFTER_S_FIELD_NUMBER: _ClassVar[int]
    AFTER_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    max_downtime_ms: int
    after_s: float
    after_iterations: int
    def __init__(self, max_downtime_ms: _Optional[int] = ..., after_s: _Optional[float] = ..., after_iterations: _Optional[int] = ...) -> None: ...

class PolicyAction(_message.Message):
    __slots__ = ("action", "reason", "elapsed_ms", "by", "at")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    action: str
    reason: str
    elapsed_ms: int
    by: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, action: _Optional[str] = ..., reason: _Optional[str] = ..., elapsed_ms: _Optional[int] = ..., by: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GuestLoad(_message.Message):
    __slots__ = ("memory_bytes", "samples", "resident_bytes", "error")
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    memory_bytes: int
    samples: _containers.RepeatedCompositeFieldContainer[DirtyRateSample]
    resident_bytes: int
    error: str
    def __init__(self, memory_bytes: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[DirtyRateSample, _Mapping]]] = ..., resident_bytes: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class DirtyRateSample(_message.Message):
    __slots__ = ("period_s", "bytes_per_s")
    PERIOD_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    period_s: float
    bytes_per_s: float
    def __init__(self, period_s: _Optional[float] = ..., bytes_per_s: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("known", "converges", "finishes", "need", "iterations", "seconds", "downtime_ms", "switch_after_s", "dirty_bps", "working_set_bytes", "resident_bytes", "memory_bytes", "disk_bytes", "bandwidth_bps", "policy", "words")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    CONVERGES_FIELD_NUMBER: _ClassVar[int]
    FINISHES_FIELD_NUMBER: _ClassVar[int]
    NEED_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_MS_FIELD_NUMBER: _ClassVar[int]
    SWITCH_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    DIRTY_BPS_FIELD_NUMBER: _ClassVar[int]
    WORKING_SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_BYTES_FIELD_NUMBER: _ClassVar[int]
    BANDWIDTH_BPS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    known: bool
    converges: bool
    finishes: bool
    need: str
    iterations: int
    seconds: float
    downtime_ms: float
    switch_after_s: float
    dirty_bps: float
    working_set_bytes: int
    resident_bytes: int
    memory_bytes: int
    disk_bytes: int
    bandwidth_bps: float
    policy: str
    words: str
    def __init__(self, known: _Optional[bool] = ..., converges: _Optional[bool] = ..., finishes: _Optional[bool] = ..., need: _Optional[str] = ..., iterations: _Optional[int] = ..., seconds: _Optional[float] = ..., downtime_ms: _Optional[float] = ..., switch_after_s: _Optional[float] = ..., dirty_bps: _Optional[float] = ..., working_set_bytes: _Optional[int] = ..., resident_bytes: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., disk_bytes: _Optional[int] = ..., bandwidth_bps: _Optional[float] = ..., policy: _Optional[str] = ..., words: _Optional[str] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("reason", "message", "hint")
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    reason: str
    message: str
    hint: str
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., hint: _Optional[str] = ...) -> None: ...

class TimedPhase(_message.Message):
    __slots__ = ("phase", "at", "reason")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    phase: str
    at: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, phase: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...
