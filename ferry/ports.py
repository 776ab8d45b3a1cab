"""Ports: the narrow interfaces behind which every side effect lives.

Only ``agent/libvirt_hypervisor.py`` imports ``libvirt``; only the etcd store adapter imports the
etcd client. Each port lists just the calls its users make. Fakes implement the same ports and a
contract suite runs against fake and real adapter alike.

Every method raises only ``ferry.errors.FerryError`` subclasses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ferry.convergence import ConvergencePolicy
from ferry.model import (
    CompletedJob,
    DiskPlan,
    DomainInfo,
    GuestLoad,
    HostFacts,
    HostMapping,
    Inventory,
    JobStats,
    MigrationOptions,
    MigrationProgress,
    MigrationResult,
    PolicyAction,
    PreparedIncoming,
    PrepareRecord,
    Problem,
    StorageDir,
    StorageMode,
)
from ferry.paths import PathUse


class Hypervisor(Protocol):
    """The local libvirt, as the agent uses it. Every call has a timeout (DeadlineExceeded)."""

    async def host_facts(self) -> HostFacts:
        """Hostname, host UUID, versions, CPU, memory, libvirt networks (not bridges/storage)."""
        ...

    async def ping(self) -> None:
        """A round trip to libvirtd (reconnecting when the connection died), bounded by
        ``timeout_s``. Raises Unavailable (LIBVIRT_UNREACHABLE) or DeadlineExceeded when it does
        not answer."""
        ...

    async def list_domains(self) -> list[DomainInfo]: ...

    async def get_domain(self, name_or_uuid: str) -> DomainInfo:
        """Raises NotFound (reason DOMAIN_NOT_FOUND)."""
        ...

    async def find_domain(self, *, name: str = "", uuid: str = "") -> DomainInfo | None:
        """The domain with this name or this UUID, if any (active or only defined)."""
        ...

    async def domain_xml(self, name_or_uuid: str, *, migratable: bool = True, secure: bool = True) -> str:
        """The domain's definition; ``secure``: with its secrets (graphics passwords), as a
        definition sent to a migration target needs them."""
        ...

    async def migrate(
        self,
        name_or_uuid: str,
        *,
        target_uri: str,
        destination_xml: str,
        options: MigrationOptions,
        migrate_disks: list[str],
        migrate_uri: str = "",
        timeout_s: float,
        policy: ConvergencePolicy | None = None,
        resume_postcopy: bool = False,
    ) -> None:
        """Run a peer-to-peer migration to ``target_uri``; returns when the job ended well.

        ``policy``: its start parameters beyond the options (auto-converge's steps, post-copy
        bandwidth, parallel connections, compression). ``resume_postcopy``: resume a post-copy
        migration whose link broke (libvirt's post-copy recovery), same arguments as the first
        call.

        Raises Aborted when the job was aborted, Unavailable when the target cannot be reached,
        DeadlineExceeded after ``timeout_s``; others per the error table.
        """
        ...

    async def job_stats(self, name_or_uuid: str, *, completed: bool = False) -> JobStats:
        """The domain's running job (``completed``: its last completed job, kept for others).

        A domain that does not run has no job: an empty ``JobStats()`` (not an error). Raises
        NotFound (DOMAIN_NOT_FOUND) for an unknown domain.
        """
        ...

    async def remote_completed_job(self, target_uri: str, name_or_uuid: str) -> JobStats:
        """The completed migration job's statistics, read on the target host.

        The target does not count disk bytes: its ``disk_*`` figures are 0 after a storage copy
        (take them from the source's last statistics).
        """
        ...

    async def remote_host_uuid(self, uri: str) -> str:
        """The host UUID that the libvirtd at ``uri`` reports (another host's, or this one's own
        advertised URI). Raises as opening ``uri`` fails (Unavailable when it does not answer)."""
        ...

    async def abort_job(self, name_or_uuid: str) -> bool:
        """Abort the domain's running job. False when there was none: no job, the job ended
        meanwhile, or the domain left this host (the migration completed and undefined it)."""
        ...

    async def set_max_downtime(self, name_or_uuid: str, ms: int) -> None:
        """The running migration's maximum downtime; without a job the value is kept for the
        domain's next migration (as libvirt keeps it)."""
        ...

    async def set_bandwidth(self, name_or_uuid: str, mibps: int) -> None:
        """The running migration's bandwidth cap (0 = QEMU's default); without a job the value
        is kept for the domain's next migration."""
        ...

    async def start_postcopy(self, name_or_uuid: str) -> None: ...

    async def migration_limits(self, name_or_uuid: str) -> tuple[int, int]:
        """(max downtime ms, bandwidth MiB/s) libvirt holds for the domain's migration, read back."""
        ...

    async def suspend(self, name_or_uuid: str) -> None:
        """Pause the guest (force-complete without post-copy: pre-copy then sends the rest)."""
        ...

    async def resume(self, name_or_uuid: str) -> None:
        """Let a paused guest run again."""
        ...

    async def remote_resume(self, target_uri: str, name_or_uuid: str) -> bool:
        """Let the guest run on the target when it arrived paused there (True: it was paused)."""
        ...

    async def undefine_inactive(self, name_or_uuid: str) -> bool:
        """Remove the definition of a domain that is not running (its disks stay); False when it is
        active or gone. A completed migration's leftover on the source, nothing else."""
        ...

    async def destroy_incoming(self, uuid: str) -> bool:
        """Stop the domain ``uuid`` only while it is what a migration that never finished left
        here: transient, and held paused by libvirt for its incoming migration (it never ran
        here). True: destroyed; False: no such domain (nothing to do). Anything else (a persistent
        or a running domain, one the user paused) raises FailedPrecondition NOT_INCOMING and is
        left alone; a copy libvirtd cannot destroy because it holds its job lock for good raises
        FailedPrecondition INCOMING_COPY_STUCK."""
        ...

    async def dirty_rate(self, name_or_uuid: str, seconds: int) -> float:
        """The guest's dirty rate in bytes per second over ``seconds`` (libvirt's page-sampling
        calculation; waits for it). Raises FailedPrecondition (DIRTY_RATE_UNSUPPORTED) when
        this libvirt or QEMU cannot calculate it."""
        ...

    async def memory_rss(self, name_or_uuid: str) -> int:
        """The QEMU process's resident memory in bytes (0: unknown)."""
        ...

    async def guest_ram_resident(self, name_or_uuid: str) -> int:
        """The guest's RAM resident in its QEMU process (the pages it touched), in bytes (0: unknown)."""
        ...

    async def compare_cpu(self, cpu_xml: str, *, arch: str, machine: str, virttype: str, emulator: str) -> str:
        """Can this host run a guest with this ``<cpu>`` definition (virConnectCompareHypervisorCPU)?

        Returns "" when it can, else libvirt's explanation, which names the features the host
        lacks when libvirt knows them (e.g. "Host CPU does not provide required features:
        avx512f"). ``machine`` and ``emulator`` may be "" (libvirt's defaults). Raises
        FailedPrecondition (CPU_CHECK_FAILED) when libvirt cannot compare (unknown CPU model,
        machine type or emulator); others per the error table.
        """
        ...

    async def probe_peer(self, uri: str, *, migration_address: str = "") -> int:
        """Can this host reach the peer libvirtd at ``uri`` (as a migration to it would)?

        In order: the URI's host name resolves here; for TCP transports (qemu+tcp, qemu+tls) a
        TCP connection to libvirtd's port opens (ssh and unix transports skip this); a libvirt
        connection to ``uri`` opens. A ``migration_address`` (the peer's QEMU migration address)
        must resolve too. Each step has a short timeout. Returns the round trip in milliseconds.

        Raises InvalidArgument (TARGET_URI_INVALID), FailedPrecondition (TARGET_UNRESOLVABLE),
        Unavailable (TARGET_UNREACHABLE), or the error table's error for a refused connection
        (e.g. LIBVIRT_ACCESS_DENIED). Contacts only the addresses ``uri`` names.
        """
        ...


class HostSystem(Protocol):
    """The host's own files and network devices, as the agent uses them (no libvirt)."""

    def bridges(self) -> list[str]:
        """Names of the bridges guests may be attached to on this host: its Linux bridges and its
        Open vSwitch bridges (only the agent's ``bridges`` when it names any), sorted."""
        ...

    def bridge_kinds(self) -> dict[str, str]:
        """``bridges()``, each with its kind: ``LINUX_BRIDGE`` or ``OVS_BRIDGE`` (ferry.model)."""
        ...

    def storage_dirs(self) -> list[StorageDir]:
        """The configured image directories with their free space and shared flag."""
        ...

    def free_bytes(self, path: str) -> int:
        """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
        ...

    def confine(self, path: str, use: PathUse, what: str = "") -> Problem | None:
        """Why the agent may not ``use`` ``path`` (None: it may; ``what`` it is, in the problem's
        words: "image" or "backing file" by default): outside the configured image
        directories, not absolute or normalised, ``..``, a control character
        (``ferry.paths.path_problem``), or a symbolic link below the image directory
        (PATH_SYMLINK). ``create_image`` and ``remove`` refuse such paths with that problem."""
        ...

    def exists(self, path: str) -> bool: ...

    def writable_dir(self, path: str) -> bool:
        """True when ``path``'s directory exists (or can be created) and is writable."""
        ...

    def is_shared(self, path: str) -> bool:
        """True when ``path`` lies on storage declared shared (or a cluster file system)."""
        ...

    def libvirt_shared(self, path: str) -> bool:
        """True when libvirt itself takes ``path`` for shared storage: its file system is one
        libvirt knows (NFS, CIFS, Ceph, GFS2, OCFS2, GlusterFS, ...). A disk declared shared on
        another migrates in place only when the migration is marked unsafe."""
        ...

    def create_image(
        self, path: str, *, fmt: str, virtual_size: int, backing_file: str = "", backing_format: str = ""
    ) -> None:
        """Create a disk image (qemu-img create), parent directories included. Raises
        AlreadyExists when ``path`` exists, and ``confine``'s problem (for ``path`` or the
        backing file) as its error."""
        ...

    def remove(self, path: str) -> bool:
        """Remove a file Ferry created; False when it was already gone. Refuses what ``confine``
        refuses (nothing outside the image directories, never through a link)."""
        ...

    def is_block_device(self, path: str) -> bool:
        """Whether ``path`` is a block device (a link to one counts: /dev/VG/LV). Only looks."""
        ...

    def block_identity(self, path: str) -> str:
        """What the block device at ``path`` is, the same on every host that sees the same device:
        ``dm:UUID`` (a device-mapper device: LVM, multipath), ``wwid:WWID`` (a SCSI/NVMe LUN; a
        partition adds ``:partN``), "" when it is not a block device or this host cannot tell.
        Only looks (stat, sysfs): opens nothing at ``path``."""
        ...

    def fingerprint(self, path: str) -> str:
        """The fingerprint of an image file (``agent/fingerprint.py``), read without following a
        link; raises ``confine``'s problem (PathUse.READ) or FailedPrecondition (BACKING_MISSING,
        PATH_UNREADABLE, PATH_NOT_A_FILE)."""
        ...

    def write_probe(self, path: str) -> None:
        """Create the empty file ``path`` in an existing directory (a shared-storage probe,
        ``agent/shared_probes.py``). Raises AlreadyExists when ``path`` exists, FailedPrecondition
        (PATH_NOT_WRITABLE) when the directory is missing or not writable, and ``confine``'s
        problem as its error."""
        ...

    def net_devices(self) -> list[str]:
        """Names of every network device on this host (``/sys/class/net``, not only bridges): what a
        macvtap NIC (``<interface type='direct'>``) attaches to, sorted."""
        ...

    def online_cpus(self) -> frozenset[int]:
        """The CPUs online on this host (``/sys/devices/system/cpu/online``), what a guest's
        ``<vcpu cpuset>`` and ``<cputune>`` pins may name; empty when it cannot tell."""
        ...

    def numa_nodes(self) -> frozenset[int]:
        """The NUMA nodes online on this host (``/sys/devices/system/node/online``), what a guest's
        ``<numatune>`` nodesets may name; empty when it cannot tell."""
        ...


@dataclass(frozen=True)
class TuneResult:
    """A TuneMigration's answer: libvirt's max downtime and bandwidth read back, and what was done."""

    max_downtime_ms: int = 0
    bandwidth_mibps: int = 0
    done: str = ""


class AgentClient(Protocol):
    """One host's agent, as the coordinator uses it (the gRPC adapter or an in-process fake).

    Raises FerryError types; an agent that cannot be reached raises Unavailable. ``leader_term``:
    the calling leader's term (``agent/fencing.py``); a change from a deposed leader is refused
    with FailedPrecondition STALE_LEADER; 0 (callers outside the leader's engine) never is.
    """

    host: str

    async def inventory(self) -> Inventory: ...

    async def get_domain(
        self, vm: str, *, include_xml: bool = False, leader_term: int = 0, backing_fingerprints: bool = False
    ) -> tuple[DomainInfo, str]:
        """The domain and (when asked) its migratable XML; NotFound when not on this host.
        ``backing_fingerprints``: each disk's ``backing_fingerprint`` filled in (a copy-inc check)."""
        ...

    async def prepare_incoming(
        self,
        *,
        domain_xml: str,
        disks: Sequence[DiskPlan],
        mapping: HostMapping,
        storage: StorageMode,
        ttl_s: int,
        migration_id: str,
        dry_run: bool,
        leader_term: int = 0,
        shared_probes: Sequence[str] = (),
        block_devices: Mapping[str, str] | None = None,
        offline: bool = False,
    ) -> PreparedIncoming:
        """``offline``: the migration moves a shut-off definition (no memory checked on the target)."""
        ...

    async def cleanup_incoming(
        self, prepare_id: str, *, discard_incoming: bool = False, leader_term: int = 0
    ) -> list[str]:
        """Remove what the prepare created; returns the removed paths ([] when already gone).
        ``discard_incoming``: the guest executes on the source with no job; destroy the prepare's
        domain first if libvirt left it here as an unfinished incoming copy."""
        ...

    async def commit_incoming(self, prepare_id: str, *, require_landed: bool = False, leader_term: int = 0) -> None:
        """Forget the prepare: its images are the landed domain's. ``require_landed``: only if the
        guest runs there as a landed guest, else FailedPrecondition NOT_LANDED."""
        ...

    async def list_prepares(self, *, leader_term: int = 0) -> list[PrepareRecord]: ...

    def migrate(
        self,
        vm: str,
        *,
        target_uri: str,
        destination_xml: str,
        options: MigrationOptions,
        migration_id: str,
        migrate_uri: str = "",
        disks: Sequence[DiskPlan] = (),
        policy: ConvergencePolicy | None = None,
        predicted_converges: bool | None = None,
        leader_term: int = 0,
        target_host: str = "",
    ) -> AsyncIterator[MigrationProgress | PolicyAction | MigrationResult]:
        """Progress snapshots and the policy's actions, then one MigrationResult; a failed job
        raises its FerryError.

        ``target_host``: the target's registered name (the source agent then checks ``target_uri``
        against that registration alone; empty: against every registration).

        ``disks``: the plan the target prepared (PrepareIncoming's answer); the source copies
        exactly its ``copy`` disks. Empty: the source plans from the options itself.
        ``policy``: how to bring the job to an end (None: from the options, an older
        coordinator's way); ``predicted_converges``: the prediction made before the start.
        """
        ...

    async def abort_migration(self, vm: str, *, leader_term: int = 0) -> bool: ...

    async def tune_migration(
        self,
        vm: str,
        *,
        max_downtime_ms: int | None = None,
        bandwidth_mibps: int | None = None,
        start_postcopy: bool = False,
        force_complete: bool = False,
        requested_by: str = "",
        leader_term: int = 0,
    ) -> TuneResult:
        """Change a running migration; the answer holds libvirt's values read back after the
        change and what was done (``TuneResult.done``)."""
        ...

    async def measure_guest(self, vm: str, *, periods: Sequence[int] = (1, 3)) -> GuestLoad:
        """The guest's dirty rate over each period (seconds, one after the other) and its
        non-zero memory, for the prediction. A rate libvirt cannot measure is left out and said
        in ``GuestLoad.error``."""
        ...

    async def get_job(self, vm: str, *, leader_term: int = 0) -> MigrationProgress:
        """The domain's running job (``stats.active`` False: none) with its phase, as the agent
        judges it; ``stats`` holds libvirt's job type and operation (e.g. "migration out")."""
        ...

    async def completed_job(self, vm: str, *, leader_term: int = 0) -> CompletedJob:
        """The figures of the domain's last completed job on this host (all zero when none)."""
        ...

    async def probe_target(self, target_uri: str, *, migration_address: str = "") -> tuple[list[Problem], int]:
        """Can this (source) host reach the target's libvirtd? Returns the problems found
        (TARGET_UNRESOLVABLE, TARGET_UNREACHABLE, ...; empty = reachable) and the round trip
        in milliseconds."""
        ...

    async def remove_source_disks(
        self, vm_uuid: str, paths: Sequence[str], *, migration_id: str, leader_term: int = 0
    ) -> tuple[list[str], list[str]]:
        """After a copy migration landed elsewhere and was committed there: remove this host's
        now unused local images of the domain. Returns (removed, already gone). Refused while a
        domain with that UUID exists here (DOMAIN_STILL_HERE) and for paths outside the local
        image directories (PATH_NOT_LOCAL)."""
        ...

    async def mark_shared_storage(self, disk_paths: Sequence[str], token: str) -> tuple[list[str], list[Problem]]:
        """Write an empty probe file (``DIR/.ferry-probe-TOKEN``) in the directory of each of
        these disks on this (source) host, for a target to show that it sees the same storage
        (``prepare_incoming(shared_probes=...)``). Returns (probes written, one problem per
        directory where none could be: outside the image directories, not writable)."""
        ...

    async def unmark_shared_storage(self, probes: Sequence[str]) -> list[str]:
        """Remove probes ``mark_shared_storage`` wrote (any other path is ignored); the removed ones."""
        ...
