"""Ferry's domain model: plain frozen dataclasses shared by agent, coordinator and CLI.

Protobuf messages are converted to and from these at the servers' edges (ferry/convert.py);
core logic never sees protobuf or libvirt objects.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from ferry.errors import FailedPrecondition, FerryError


class DomainState(enum.Enum):
    """libvirt's domain states (virDomainState), named as in the field."""

    UNKNOWN = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7

    @property
    def is_active(self) -> bool:
        """A QEMU process exists for the domain."""
        return self in (
            DomainState.RUNNING,
            DomainState.BLOCKED,
            DomainState.PAUSED,
            DomainState.SHUTDOWN,
            DomainState.PMSUSPENDED,
        )


class StorageMode(enum.Enum):
    SHARED = "shared"  # disks are on storage both hosts see
    COPY_ALL = "copy-all"  # copy every listed disk (virsh --copy-storage-all)
    COPY_INC = "copy-inc"  # copy the top layer; backing files already on the target


@dataclass(frozen=True)
class StorageDir:
    path: str
    free_bytes: int
    total_bytes: int
    shared: bool = False
    fs_type: str = ""


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    host_uuid: str
    libvirt_version: int = 0
    qemu_version: int = 0
    cpu_model: str = ""
    arch: str = ""
    cpu_features: tuple[str, ...] = ()
    cpus: int = 0
    memory_total_bytes: int = 0
    memory_free_bytes: int = 0
    bridges: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    storage: tuple[StorageDir, ...] = ()
    libvirt_uri: str = ""
    migration_address: str = ""
    agent_version: str = ""
    migration_tls_problem: str = ""  # why this host cannot migrate over TLS ("" = it can)
    api_level: int = 0  # the requests its agent honours (ferry/compat.py); 0: an agent from before levels
    libvirt_uri_problem: str = ""  # why peers cannot migrate here by libvirt_uri ("" = nothing known)
    # the machine types (and aliases) libvirt's capabilities list for ``arch``: those of ``emulator``,
    # the host's default QEMU binary for it; () / "": not reported (an agent from before them)
    machine_types: tuple[str, ...] = ()
    emulator: str = ""


# CPU modes in which the guest runs on a copy of its host's CPU: the target cannot judge such a
# CPU from the domain XML; only the coordinator, which knows both hosts' CPUs, can
HOST_CPU_MODES = frozenset({"host-passthrough", "maximum"})


@dataclass(frozen=True)
class Disk:
    target: str
    source: str = ""
    format: str = ""
    virtual_size: int = 0
    allocation: int = 0
    backing_chain: tuple[str, ...] = ()
    cache: str = ""
    shared: bool = False
    readonly: bool = False
    device: str = "disk"
    bus: str = ""
    # shared for Ferry (the agent's shared_dirs, or ceph-fuse) on a file system libvirt does not
    # know as shared: libvirt refuses to migrate it in place unless the migration is marked unsafe
    shared_unknown_to_libvirt: bool = False
    backing_fingerprint: str = ""  # the nearest backing file's (agent/fingerprint.py), when asked for
    block_device: str = ""  # <disk type='block'>: the device's path (never copied)
    block_identity: str = ""  # what the device is on this host: "dm:UUID", "wwid:WWID", "" unknown


# What a bridge is (HostSystem.bridge_kinds). libvirt adds a NIC with <virtualport
# type='openvswitch'> to an Open vSwitch bridge (ovs-vsctl add-port) and one without a
# <virtualport> to a Linux bridge (as a bridge port): the bridge must be of that kind.
LINUX_BRIDGE = "linux"
OVS_BRIDGE = "openvswitch"  # the <virtualport> type that goes with it


@dataclass(frozen=True)
class Nic:
    type: str
    source: str = ""
    mac: str = ""
    model: str = ""
    # the <virtualport> type: "openvswitch", "midonet", ...; "none" for one without a type, ""
    # without a <virtualport>. Not in the API's Nic: only the target agent checks it.
    virtualport: str = ""

    @property
    def bridge_kind(self) -> str:
        """The kind of bridge libvirt attaches this NIC to ("" = not known from the NIC).

        >>> Nic("bridge", "br0").bridge_kind, Nic("bridge", "br0", virtualport="openvswitch").bridge_kind
        ('linux', 'openvswitch')
        >>> Nic("bridge", "br0", virtualport="midonet").bridge_kind, Nic("network", "default").bridge_kind
        ('', '')
        """
        if self.type != "bridge":
            return ""
        return {"": LINUX_BRIDGE, OVS_BRIDGE: OVS_BRIDGE}.get(self.virtualport, "")


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: DomainState
    memory_bytes: int = 0
    vcpus: int = 0
    persistent: bool = False
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    cpu_mode: str = ""
    cpu_model: str = ""
    os_type: str = ""
    emulator: str = ""  # the QEMU binary of the domain ("" = libvirt's default)
    machine: str = ""  # <os><type machine>, canonical ("pc-q35-8.2", never "q35"); "" = not known
    #: Paused by libvirt itself (virDomainGetState: PAUSED, reason STARTING_UP or MIGRATION). On the
    #: host a migration goes to: an incoming domain whose migration has not finished -- not a landed guest.
    paused_by_libvirt: bool = False


@dataclass(frozen=True)
class HostMapping:
    """Declarative translation of host-specific names from a source host to a target host."""

    bridges: dict[str, str] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)
    path_prefixes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DiskPlan:
    """What to do with one disk: copy it into a new image on the target, or expect it shared."""

    target: str
    source: str
    destination: str = ""
    format: str = "qcow2"
    virtual_size: int = 0
    allocation: int = 0
    backing_file: str = ""
    backing_format: str = ""
    copy: bool = True
    backing_fingerprint: str = ""  # COPY_INC: the source's backing file's; the target's must match


@dataclass(frozen=True)
class MigrationOptions:
    offline: bool = False
    storage: StorageMode = StorageMode.SHARED
    migrate_disks: tuple[str, ...] = ()
    persist_dest: bool = True
    undefine_source: bool = True
    persist_transient: bool = False  # a transient VM becomes persistent on the target too
    bandwidth_mibps: int = 0
    max_downtime_ms: int = 0
    auto_converge: bool = False
    allow_postcopy: bool = False
    unsafe: bool = False
    completion_timeout_s: int = 0
    postcopy_on_stall: bool = False


class MigrationPhase(enum.Enum):
    """Phase of a running libvirt migration job as the agent sees it."""

    STARTING = 1
    DISK_MIRROR = 2
    PRECOPY = 3
    POSTCOPY = 4
    FINISHING = 5
    COMPLETED = 6
    FAILED = 7
    CANCELLED = 8


@dataclass(frozen=True)
class JobStats:
    """A snapshot of libvirt's job statistics for a migration (virDomainGetJobStats)."""

    active: bool = False
    job_type: str = "none"
    operation: str = ""
    time_elapsed_ms: int = 0
    memory_total: int = 0
    memory_processed: int = 0
    memory_remaining: int = 0
    disk_total: int = 0
    disk_processed: int = 0
    disk_remaining: int = 0
    dirty_rate_pages: int = 0
    page_size: int = 4096
    iteration: int = 0
    bandwidth_bps: int = 0
    auto_converge_throttle: int = 0
    downtime_ms: int = 0
    postcopy: bool = False
    postcopy_failed: bool = False  # the post-copy link broke: the guest is paused until it is resumed


@dataclass(frozen=True)
class MigrationProgress:
    """How far a migration job got: its phase, libvirt's figures, the max downtime asked for.

    The one progress type from the agent's driver to the coordinator's record. Across the wire
    (``ferry.convert.progress_to_pb``) and in the record's JSON only the figures the proto
    carries survive; the other ``stats`` fields keep JobStats' defaults, except for GetJob's
    answer, which also carries ``active``, ``job_type`` and ``operation``.
    """

    phase: MigrationPhase = MigrationPhase.STARTING
    stats: JobStats = JobStats()
    max_downtime_ms: int = 0
    eta_ms: int = 0  # expected time to the end of the job from the live rates (0: unknown)


@dataclass(frozen=True)
class CompletedJob:
    time_elapsed_ms: int = 0
    downtime_ms: int = 0
    memory_processed: int = 0
    disk_processed: int = 0
    iterations: int = 0
    postcopy: bool = False
    # False: ``downtime_ms`` is no measured switch-over pause (after post-copy libvirt keeps no
    # completed job to read it from; the guest's pauses are its page faults over the network)
    downtime_measured: bool = True


def disk_bytes_copied(reported: int, seen: JobStats, planned: int) -> int:
    """The disk bytes of a migration that completed: the target does not count them, and a job
    shorter than a statistics poll never shows them. So: the most of the completed job's own
    figure, the disk bytes the source last reported processed, and the last disk total seen (a
    completed copy processed all of it); when nothing was seen, the bytes planned for the copy.

    >>> disk_bytes_copied(0, JobStats(disk_total=1000, disk_processed=900), 800)
    1000
    >>> disk_bytes_copied(0, JobStats(), 800)
    800
    >>> disk_bytes_copied(0, JobStats(), 0)     # nothing copied (shared storage)
    0
    """
    return max(reported, seen.disk_processed, seen.disk_total) or planned


@dataclass(frozen=True)
class PolicyAction:
    """One thing done to a running migration and why: a convergence policy's step (a max-downtime
    step, the switch to post-copy, pausing the guest, the abort on timeout, a post-copy resume)
    or an operator's request (tune, force-complete, post-copy). ``by``: "policy NAME" or who
    asked; ``elapsed_ms``: how far into the job."""

    action: str
    reason: str
    elapsed_ms: int = 0
    by: str = ""


@dataclass(frozen=True)
class GuestLoad:
    """What a guest asks of a migration, measured on its host before it starts: its dirty rate
    over one or more periods (libvirt's page-sampling dirty-rate calculation), its memory and how
    much of it is not zero (from the QEMU process's resident memory). ``error``: why a figure is
    missing (e.g. the calculation is not supported)."""

    memory_bytes: int = 0
    samples: tuple[tuple[float, float], ...] = ()  # (period s, bytes dirtied per second)
    resident_bytes: int = 0  # 0: unknown
    error: str = ""


@dataclass(frozen=True)
class PrepareRecord:
    """What one PrepareIncoming created on a target host, so that it can be undone exactly."""

    prepare_id: str
    domain_name: str
    domain_uuid: str
    created: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    migration_id: str = ""


@dataclass(frozen=True)
class Problem:
    """One reason something cannot go ahead, with what to do about it: a preflight blocker, a
    target check's finding, a probe's, a failed migration's error (the record's ``error``).

    ``kind`` is the FerryError type to raise it as (``to_error``); it stays where the problem was
    found: the wire (ErrorDetail) and the record carry reason, message and hint only, so ``kind``
    takes no part in comparisons.

    >>> p = Problem.of(FailedPrecondition("no bridge br-vm", reason="BRIDGE_MISSING", hint="map it"))
    >>> p == Problem("BRIDGE_MISSING", "no bridge br-vm", "map it"), repr(p.to_error())
    (True, "FailedPrecondition(BRIDGE_MISSING: 'no bridge br-vm')")
    """

    reason: str
    message: str
    hint: str = ""
    kind: type[FerryError] = field(default=FailedPrecondition, compare=False, repr=False)

    @classmethod
    def of(cls, err: FerryError) -> Problem:
        return cls(err.reason, err.message, err.hint, type(err))

    def to_error(self) -> FerryError:
        return self.kind(self.message, reason=self.reason, hint=self.hint)


@dataclass(frozen=True)
class Inventory:
    """What one agent reports: its host's facts and every domain on it."""

    host: HostFacts
    domains: tuple[DomainInfo, ...] = ()


@dataclass(frozen=True)
class PreparedIncoming:
    """The answer of a target agent's PrepareIncoming (a dry run's: no id, nothing created, and
    the ``problems`` found; a real prepare refuses with an error instead)."""

    prepare_id: str = ""  # "" for a dry run
    destination_xml: str = ""  # "" when the XML could not be rewritten
    disks: tuple[DiskPlan, ...] = ()  # the disk plan, destinations (and COPY_INC backing files) filled in
    created: tuple[str, ...] = ()
    expires_at: datetime | None = None  # None for a dry run
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class MigrationResult:
    """How a source agent's Migrate ended well: the completed job's figures, read on the target."""

    job: CompletedJob
    source_state: DomainState | None = None  # None: the domain is gone from the source
    source_defined: bool = False
