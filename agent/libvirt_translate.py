"""Translation between libvirt's values and Ferry's model (pure: no connection, no ``libvirt``).

What the libvirt adapter sends (migrateToURI3 flags and typed parameters from
``MigrationOptions``, XML and job-statistics flags) and what it reads back (capabilities XML,
node info and memory statistics, domain XML and state, job-statistics dicts) as functions of plain
values; ``libvirt_hypervisor`` keeps the connection, the threads and the timeouts.

The constants are libvirt's stable ABI (``include/libvirt/libvirt-domain.h``,
``libvirt-host.h``), written out as in ``libvirt_errors`` so that this module and its tests need
neither the ``libvirt`` module nor a libvirtd. tests/unit/test_libvirt_translate.py checks them
against the libvirt module when it is installed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ferry.agent.domxml import parse_disks, parse_domain, parse_nics
from ferry.convergence import ConvergencePolicy
from ferry.model import DomainInfo, DomainState, HostFacts, JobStats, MigrationOptions, StorageMode

MiB = 1 << 20

# virDomainMigrateFlags (the ones Ferry sets)
VIR_MIGRATE_LIVE = 1
VIR_MIGRATE_PEER2PEER = 2
VIR_MIGRATE_PERSIST_DEST = 8
VIR_MIGRATE_UNDEFINE_SOURCE = 16
VIR_MIGRATE_NON_SHARED_DISK = 64
VIR_MIGRATE_NON_SHARED_INC = 128
VIR_MIGRATE_UNSAFE = 512
VIR_MIGRATE_OFFLINE = 1024
VIR_MIGRATE_COMPRESSED = 2048
VIR_MIGRATE_AUTO_CONVERGE = 8192
VIR_MIGRATE_POSTCOPY = 32768
VIR_MIGRATE_TLS = 65536
VIR_MIGRATE_PARALLEL = 131072
VIR_MIGRATE_POSTCOPY_RESUME = 524288

# migrateToURI3 typed parameter names
VIR_MIGRATE_PARAM_URI = "migrate_uri"
VIR_MIGRATE_PARAM_DEST_XML = "destination_xml"
VIR_MIGRATE_PARAM_PERSIST_XML = "persistent_xml"
VIR_MIGRATE_PARAM_BANDWIDTH = "bandwidth"
VIR_MIGRATE_PARAM_MIGRATE_DISKS = "migrate_disks"
VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL = "auto_converge.initial"
VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT = "auto_converge.increment"
VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY = "bandwidth.postcopy"
VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS = "parallel.connections"
VIR_MIGRATE_PARAM_COMPRESSION = "compression"

# virDomainMigrateMaxSpeedFlags; virDomainDirtyRateCalcFlags and virDomainDirtyRateStatus;
# virDomainStatsTypes
VIR_DOMAIN_MIGRATE_MAX_SPEED_POSTCOPY = 1
VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING = 0  # the only mode QEMU 7.2 survives under TCG (dirty-bitmap crashes it)
VIR_DOMAIN_DIRTYRATE_MEASURED = 2
VIR_DOMAIN_STATS_DIRTYRATE = 512

# virDomainState and the reasons that mean post-copy
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_PAUSED = 3
VIR_DOMAIN_RUNNING_POSTCOPY = 10  # virDomainRunningReason
VIR_DOMAIN_RUNNING_POSTCOPY_FAILED = 11
VIR_DOMAIN_PAUSED_MIGRATION = 2  # virDomainPausedReason
VIR_DOMAIN_PAUSED_STARTING_UP = 11
VIR_DOMAIN_PAUSED_POSTCOPY = 12
VIR_DOMAIN_PAUSED_POSTCOPY_FAILED = 13

# virConnectGetAllDomainStats / virDomainListGetStats
VIR_DOMAIN_STATS_BLOCK = 32
VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT = 1 << 29

# virDomainXMLFlags, virDomainGetJobStatsFlags
VIR_DOMAIN_XML_SECURE = 1
VIR_DOMAIN_XML_MIGRATABLE = 8
VIR_DOMAIN_JOB_STATS_COMPLETED = 1
VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED = 2

# virDomainJobType
VIR_DOMAIN_JOB_NONE = 0
VIR_DOMAIN_JOB_BOUNDED = 1
VIR_DOMAIN_JOB_UNBOUNDED = 2
VIR_DOMAIN_JOB_COMPLETED = 3
VIR_DOMAIN_JOB_FAILED = 4
VIR_DOMAIN_JOB_CANCELLED = 5

# virDomainJobOperation
VIR_DOMAIN_JOB_OPERATION_UNKNOWN = 0
VIR_DOMAIN_JOB_OPERATION_START = 1
VIR_DOMAIN_JOB_OPERATION_SAVE = 2
VIR_DOMAIN_JOB_OPERATION_RESTORE = 3
VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN = 4
VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT = 5
VIR_DOMAIN_JOB_OPERATION_SNAPSHOT = 6
VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_REVERT = 7
VIR_DOMAIN_JOB_OPERATION_DUMP = 8
VIR_DOMAIN_JOB_OPERATION_BACKUP = 9
VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_DELETE = 10

# virConnectCompareCPUFlags, virNodeGetMemoryStats' cell number
VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE = 1
VIR_NODE_MEMORY_STATS_ALL_CELLS = -1

JOB_TYPES = {
    VIR_DOMAIN_JOB_NONE: "none",
    VIR_DOMAIN_JOB_BOUNDED: "bounded",
    VIR_DOMAIN_JOB_UNBOUNDED: "unbounded",
    VIR_DOMAIN_JOB_COMPLETED: "completed",
    VIR_DOMAIN_JOB_FAILED: "failed",
    VIR_DOMAIN_JOB_CANCELLED: "cancelled",
}
JOB_OPERATIONS = {
    VIR_DOMAIN_JOB_OPERATION_UNKNOWN: "",
    VIR_DOMAIN_JOB_OPERATION_START: "start",
    VIR_DOMAIN_JOB_OPERATION_SAVE: "save",
    VIR_DOMAIN_JOB_OPERATION_RESTORE: "restore",
    VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN: "migration in",
    VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT: "migration out",
    VIR_DOMAIN_JOB_OPERATION_SNAPSHOT: "snapshot",
    VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_REVERT: "snapshot revert",
    VIR_DOMAIN_JOB_OPERATION_DUMP: "dump",
    VIR_DOMAIN_JOB_OPERATION_BACKUP: "backup",
    VIR_DOMAIN_JOB_OPERATION_SNAPSHOT_DELETE: "snapshot delete",
}

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def looks_like_uuid(name_or_uuid: str) -> bool:
    """Whether a domain reference is looked up by UUID first (a name may look like one too).

    >>> looks_like_uuid("6c61622d-0000-4000-8000-000000000001"), looks_like_uuid("web-1")
    (True, False)
    """
    return bool(_UUID.match(name_or_uuid))


# ---------------------------------------------------------------- what we send


def copies_disks(options: MigrationOptions, migrate_disks: Sequence[str]) -> bool:
    """Whether the migration copies storage: disks to copy and storage that is not shared."""
    return bool(migrate_disks) and options.storage is not StorageMode.SHARED


def migration_flags(
    options: MigrationOptions,
    *,
    copy_disks: bool,
    policy: ConvergencePolicy | None = None,
    resume_postcopy: bool = False,
    tls: bool = True,
) -> int:
    """migrateToURI3 flags: always peer-to-peer; TLS (the memory stream and the NBD disk copy
    encrypted) unless switched off; live unless offline (offline = definition only, hence
    PERSIST_DEST); storage copy per the storage mode when there are disks to copy; the policy's
    parallel connections and compression; post-copy recovery when resuming.

    >>> hex(migration_flags(MigrationOptions(allow_postcopy=True), copy_disks=False, resume_postcopy=True))
    '0x9801b'
    """
    flags = VIR_MIGRATE_PEER2PEER | (VIR_MIGRATE_TLS if tls else 0)
    if options.offline:
        flags |= VIR_MIGRATE_OFFLINE | VIR_MIGRATE_PERSIST_DEST
    else:
        flags |= VIR_MIGRATE_LIVE
    if options.persist_dest:
        flags |= VIR_MIGRATE_PERSIST_DEST
    if options.undefine_source:
        flags |= VIR_MIGRATE_UNDEFINE_SOURCE
    if copy_disks and options.storage is StorageMode.COPY_ALL:
        flags |= VIR_MIGRATE_NON_SHARED_DISK
    elif copy_disks and options.storage is StorageMode.COPY_INC:
        flags |= VIR_MIGRATE_NON_SHARED_INC
    if options.auto_converge:
        flags |= VIR_MIGRATE_AUTO_CONVERGE
    if options.allow_postcopy:
        flags |= VIR_MIGRATE_POSTCOPY
    if options.unsafe:
        flags |= VIR_MIGRATE_UNSAFE
    if policy is not None and policy.parallel_connections:
        flags |= VIR_MIGRATE_PARALLEL
    if policy is not None and policy.compression:
        flags |= VIR_MIGRATE_COMPRESSED
    if resume_postcopy:
        flags |= VIR_MIGRATE_POSTCOPY | VIR_MIGRATE_POSTCOPY_RESUME
    return flags


def migration_params(
    options: MigrationOptions,
    *,
    destination_xml: str,
    migrate_disks: list[str],
    migrate_uri: str,
    policy: ConvergencePolicy | None = None,
) -> dict[str, Any]:
    """migrateToURI3 typed parameters. The destination XML is also the persistent definition
    on the target: without it libvirt would keep the source's host-specific names there. The
    policy adds auto-converge's steps, the post-copy bandwidth, the parallel connections and
    the compression methods.

    >>> from ferry.convergence import PostcopyMode
    >>> p = ConvergencePolicy(auto_converge=True, auto_converge_initial=60, postcopy=PostcopyMode.MANUAL,
    ...                       postcopy_bandwidth_mibps=8)
    >>> o = MigrationOptions(auto_converge=True, allow_postcopy=True)
    >>> sorted(migration_params(o, destination_xml="", migrate_disks=[], migrate_uri="", policy=p).items())
    [('auto_converge.initial', 60), ('bandwidth.postcopy', 8)]
    """
    params: dict[str, Any] = {}
    if destination_xml:
        params[VIR_MIGRATE_PARAM_DEST_XML] = destination_xml
        if options.persist_dest or options.offline:
            params[VIR_MIGRATE_PARAM_PERSIST_XML] = destination_xml
    if copies_disks(options, migrate_disks):
        params[VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(migrate_disks)
    if options.bandwidth_mibps:
        params[VIR_MIGRATE_PARAM_BANDWIDTH] = options.bandwidth_mibps
    if migrate_uri:
        params[VIR_MIGRATE_PARAM_URI] = migrate_uri
    if policy is not None:
        if options.auto_converge and policy.auto_converge_initial:
            params[VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = policy.auto_converge_initial
        if options.auto_converge and policy.auto_converge_increment:
            params[VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = policy.auto_converge_increment
        if options.allow_postcopy and policy.postcopy_bandwidth_mibps:
            params[VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = policy.postcopy_bandwidth_mibps
        if policy.parallel_connections:
            params[VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = policy.parallel_connections
        if policy.compression:
            params[VIR_MIGRATE_PARAM_COMPRESSION] = list(policy.compression)
    return params


def loggable_params(params: Mapping[str, Any]) -> list[str]:
    """The parameter names worth a log line (the XML documents are left out).

    >>> loggable_params({"destination_xml": "<domain/>", "persistent_xml": "<domain/>", "bandwidth": 40})
    ['bandwidth']
    """
    return sorted(k for k in params if k not in (VIR_MIGRATE_PARAM_DEST_XML, VIR_MIGRATE_PARAM_PERSIST_XML))


def domain_xml_flags(*, migratable: bool, secure: bool = True) -> int:
    """virDomainGetXMLDesc flags: SECURE (secrets such as graphics passwords) when asked, as a
    definition sent to the target needs them; MIGRATABLE for a definition to send."""
    return (VIR_DOMAIN_XML_SECURE if secure else 0) | (VIR_DOMAIN_XML_MIGRATABLE if migratable else 0)


def job_stats_flags(*, completed: bool) -> int:
    """virDomainGetJobStats flags. Reading completed statistics clears them unless
    KEEP_COMPLETED: they are kept for other readers."""
    return VIR_DOMAIN_JOB_STATS_COMPLETED | VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED if completed else 0


# ---------------------------------------------------------------- what we read


@dataclass(frozen=True)
class Capabilities:
    host_uuid: str = ""
    arch: str = ""
    cpu_model: str = ""
    cpu_features: tuple[str, ...] = ()
    emulator: str = ""  # the default QEMU binary for hvm guests of the host's arch
    machine_types: tuple[str, ...] = ()  # the machine types it offers, aliases included


def parse_capabilities(xml: str, *, default_arch: str = "") -> Capabilities:
    """Host UUID, CPU arch, model and features from ``virConnectGetCapabilities``, and the QEMU
    binary and machine types of hvm guests of the host's arch (``default_arch`` when the
    capabilities name no host CPU arch): see ``guest_machines``."""
    root = ET.fromstring(xml)
    cpu = root.find("host/cpu")
    arch = (cpu.findtext("arch") or "").strip() if cpu is not None else ""
    emulator, machines = guest_machines(root, arch or default_arch)
    return Capabilities(
        host_uuid=(root.findtext("host/uuid") or "").strip(),
        arch=arch,
        cpu_model=(cpu.findtext("model") or "").strip() if cpu is not None else "",
        cpu_features=tuple(f.get("name", "") for f in cpu.iterfind("feature") if f.get("name"))
        if cpu is not None
        else (),
        emulator=emulator,
        machine_types=machines,
    )


def guest_machines(capabilities: ET.Element, arch: str) -> tuple[str, tuple[str, ...]]:
    """(QEMU binary, machine types) that the capabilities list for hvm guests of ``arch``:
    ``<guest><os_type>hvm</os_type><arch name=ARCH><emulator>`` and its ``<machine>`` entries,
    aliases included (``<machine canonical='pc-q35-8.2'>q35</machine>``), plus those a
    ``<domain type=...>`` of that arch lists for the same binary; in libvirt's order, each once.
    ("", ()) when the capabilities list no such guest.

    >>> caps = ET.fromstring("<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'>"
    ...     "<emulator>/usr/bin/qemu-system-x86_64</emulator><machine maxCpus='288'>pc-q35-8.2</machine>"
    ...     "<machine canonical='pc-q35-8.2' maxCpus='288'>q35</machine><domain type='qemu'/>"
    ...     "<domain type='kvm'><machine>pc-q35-8.2</machine></domain></arch></guest></capabilities>")
    >>> guest_machines(caps, "x86_64")
    ('/usr/bin/qemu-system-x86_64', ('pc-q35-8.2', 'q35'))
    >>> guest_machines(caps, "aarch64")
    ('', ())
    """
    for guest in capabilities.iterfind("guest"):
        found = guest.find("arch")
        if (guest.findtext("os_type") or "").strip() != "hvm" or found is None or found.get("name") != arch:
            continue
        emulator = (found.findtext("emulator") or "").strip()
        names = [m.text for m in found.iterfind("machine")]
        for domain in found.iterfind("domain"):
            if (domain.findtext("emulator") or "").strip() in ("", emulator):
                names += [m.text for m in domain.iterfind("machine")]
        return emulator, tuple(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    return "", ()


def available_memory(stats: Mapping[str, int]) -> int:
    """Bytes of memory available for a new guest from virNodeGetMemoryStats (KiB): free plus
    buffers and page cache (what the kernel reclaims at once); 0 when libvirt said nothing.

    >>> available_memory({"total": 8_000_000, "free": 1_000_000, "buffers": 24, "cached": 2_000_000})
    3072024576
    """
    return sum(int(stats.get(k, 0)) for k in ("free", "buffers", "cached")) * 1024


def total_memory(stats: Mapping[str, int], info_mib: int) -> int:
    """Bytes of memory of the host: the node memory statistics' total (the kernel's MemTotal,
    KiB) or virNodeGetInfo's MiB, whichever is larger (the latter comes from NUMA topology,
    which some virtual machines report short).

    >>> total_memory({"total": 8_000_000}, 7000), total_memory({}, 7000)
    (8192000000, 7340032000)
    """
    return max(int(stats.get("total", 0)) * 1024, info_mib * MiB)


def host_facts(
    *,
    capabilities_xml: str,
    node_info: Sequence[Any],
    hostname: str,
    libvirt_version: int,
    qemu_version: int,
    memory_total: int,
    memory_available: int,
    networks: Iterable[str],
) -> HostFacts:
    """HostFacts from virConnectGetCapabilities, virNodeGetInfo (``[model, memory MiB, cpus, MHz,
    nodes, sockets, cores, threads]``; its model is the arch when the capabilities name none)
    and the other connection-level reads. Its machine types are those the capabilities list for
    the host's arch: of its default QEMU binary (``emulator``), whose version ``qemu_version`` is
    (virConnectGetVersion)."""
    caps = parse_capabilities(capabilities_xml, default_arch=str(node_info[0]))
    return HostFacts(
        hostname=hostname,
        host_uuid=caps.host_uuid,
        libvirt_version=libvirt_version,
        qemu_version=qemu_version,
        cpu_model=caps.cpu_model,
        arch=caps.arch or node_info[0],
        cpu_features=caps.cpu_features,
        cpus=int(node_info[2]),
        memory_total_bytes=memory_total,
        memory_free_bytes=memory_available,
        networks=tuple(sorted(networks)),
        machine_types=caps.machine_types,
        emulator=caps.emulator,
    )


def domain_state(state: int) -> DomainState:
    """virDomainState as DomainState (same numbers); one this model does not know is UNKNOWN."""
    try:
        return DomainState(state)
    except ValueError:
        return DomainState.UNKNOWN


def in_postcopy(state: int, reason: int) -> bool:
    """Whether virDomainGetState's (state, reason) says the migration switched to post-copy
    (running, or failed there: its link broke)."""
    return (state, reason) in (
        (VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_POSTCOPY),
        (VIR_DOMAIN_RUNNING, VIR_DOMAIN_RUNNING_POSTCOPY),
    ) or postcopy_failed(state, reason)


def postcopy_failed(state: int, reason: int) -> bool:
    """Whether (state, reason) says a post-copy migration lost its link: the source paused
    (post-copy failed), the target running but waiting for pages. libvirt's post-copy recovery
    (VIR_MIGRATE_POSTCOPY_RESUME) picks it up again.

    >>> postcopy_failed(VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_POSTCOPY_FAILED), postcopy_failed(VIR_DOMAIN_PAUSED, 1)
    (True, False)
    """
    return (state, reason) in (
        (VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_POSTCOPY_FAILED),
        (VIR_DOMAIN_RUNNING, VIR_DOMAIN_RUNNING_POSTCOPY_FAILED),
    )


_SMAPS_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")


def guest_ram_resident(smaps: str, memory_bytes: int) -> int:
    r"""The guest's RAM that is resident in its QEMU process (pages the guest touched), from
    ``/proc/PID/smaps``: the private read-write anonymous mapping of the guest's memory size
    (QEMU's RAM block); 0 when there is none.

    >>> smaps = "7f00-7f00 r-xp 0 0 0 /usr/bin/qemu\nRss: 100 kB\n"
    >>> smaps += f"{0x10000000:x}-{0x20000000:x} rw-p 0 0 0 \nRss: 122880 kB\n"
    >>> guest_ram_resident(smaps, 256 << 20) >> 20
    120
    """
    best = 0
    size, perms, path = 0, "", ""
    for line in smaps.splitlines():
        m = _SMAPS_HEADER.match(line)
        if m:
            size, perms, path = int(m.group(2), 16) - int(m.group(1), 16), m.group(3), m.group(4)
        elif line.startswith("Rss:") and perms == "rw-p" and not path:
            if memory_bytes <= size <= memory_bytes + memory_bytes // 50 + (4 << 20):
                best = max(best, int(line.split()[1]) * 1024)
    return best


def dirty_rate_of(stats: Mapping[str, Any]) -> float | None:
    """The dirty rate in bytes per second from virConnectGetAllDomainStats' ``dirtyrate.*``
    (None while the calculation has not finished).

    >>> dirty_rate_of({"dirtyrate.calc_status": 2, "dirtyrate.megabytes_per_second": 24}) / MiB
    24.0
    >>> dirty_rate_of({"dirtyrate.calc_status": 1}) is None
    True
    """
    if int(stats.get("dirtyrate.calc_status", 0)) != VIR_DOMAIN_DIRTYRATE_MEASURED:
        return None
    return float(int(stats.get("dirtyrate.megabytes_per_second", 0)) * MiB)


def block_sizes_from_stats(stats: Mapping[str, Any]) -> dict[str, tuple[int, int]] | None:
    """``(capacity, allocation)`` per disk target from the "block" group of a running domain's
    virDomainListGetStats with NOWAIT (top layers only). Asked that way libvirt never waits for a
    domain job -- virDomainGetBlockInfo does, and an incoming migration's job allows none, so on a
    target it waits for the whole job (seen: 30 s, then "cannot acquire state change lock") --
    and leaves out the sizes it cannot read without one: such a disk is left out here too.
    None when the statistics have no block group at all (a driver without them, e.g. libvirt's
    test driver): ask virDomainGetBlockInfo then.

    >>> block_sizes_from_stats({"block.count": 2, "block.0.name": "vda", "block.0.capacity": 1024,
    ...     "block.0.allocation": 512, "block.1.name": "vdb"})
    {'vda': (1024, 512)}
    >>> block_sizes_from_stats({}) is None
    True
    """
    if "block.count" not in stats:
        return None
    out: dict[str, tuple[int, int]] = {}
    for i in range(int(stats.get("block.count", 0))):
        name, capacity = stats.get(f"block.{i}.name"), stats.get(f"block.{i}.capacity")
        if name and capacity is not None:
            out[str(name)] = (int(capacity), int(stats.get(f"block.{i}.allocation", 0)))
    return out


def block_info_targets(xml: str) -> list[str]:
    """The disks virDomainGetBlockInfo is asked about: those with a source (an empty CD-ROM
    drive has none)."""
    return [disk.target for disk in parse_disks(xml) if disk.source]


def domain_info(
    xml: str, *, state: int, persistent: bool, block_sizes: Mapping[str, tuple[int, int]], reason: int = 0
) -> DomainInfo:
    """DomainInfo from the domain's XML, its virDomainState (and the state's reason), whether it is
    persistent and ``(capacity, allocation)`` per disk target from virDomainGetBlockInfo (a disk
    without an entry keeps the sizes the XML gives)."""
    parsed = parse_domain(xml)
    disks = []
    for disk in parse_disks(xml):
        if disk.target in block_sizes:
            capacity, allocation = block_sizes[disk.target]
            disk = replace(disk, virtual_size=capacity, allocation=allocation)
        disks.append(disk)
    return DomainInfo(
        name=parsed.name,
        uuid=parsed.uuid,
        state=domain_state(state),
        memory_bytes=parsed.memory_bytes,
        vcpus=parsed.vcpus,
        persistent=persistent,
        disks=tuple(disks),
        nics=tuple(parse_nics(xml)),
        cpu_mode=parsed.cpu_mode,
        cpu_model=parsed.cpu_model,
        os_type=parsed.domain_type,
        emulator=parsed.emulator,
        machine=parsed.machine,
        paused_by_libvirt=paused_by_libvirt(state, reason),
    )


def paused_by_libvirt(state: int, reason: int) -> bool:
    """Whether (state, reason) says libvirt itself keeps the domain paused: while it starts the
    QEMU process (STARTING_UP) or for a migration (MIGRATION). On the host a migration goes to,
    that is an incoming domain that has not finished: libvirt starts it paused ("starting up",
    then "migrating", seen in the lab: 0.7 s, then the whole copy) and resumes it only at the end.
    A landed guest is never paused so; a migrated paused guest lands paused by the user.

    >>> paused_by_libvirt(VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_MIGRATION), paused_by_libvirt(VIR_DOMAIN_PAUSED, 1)
    (True, False)
    >>> paused_by_libvirt(VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_STARTING_UP)
    True
    """
    return state == VIR_DOMAIN_PAUSED and reason in (VIR_DOMAIN_PAUSED_MIGRATION, VIR_DOMAIN_PAUSED_STARTING_UP)


def job_stats_from_libvirt(d: Mapping[str, Any], *, postcopy: bool = False, postcopy_failed: bool = False) -> JobStats:
    """virDomainGetJobStats' typed parameters as JobStats."""
    job_type = JOB_TYPES.get(int(d.get("type", 0)), "none")
    return JobStats(
        active=job_type in ("bounded", "unbounded"),
        job_type=job_type,
        operation=JOB_OPERATIONS.get(int(d.get("operation", 0)), ""),
        time_elapsed_ms=int(d.get("time_elapsed", 0)),
        memory_total=int(d.get("memory_total", 0)),
        memory_processed=int(d.get("memory_processed", 0)),
        memory_remaining=int(d.get("memory_remaining", 0)),
        disk_total=int(d.get("disk_total", 0)),
        disk_processed=int(d.get("disk_processed", 0)),
        disk_remaining=int(d.get("disk_remaining", 0)),
        dirty_rate_pages=int(d.get("memory_dirty_rate", 0)),
        page_size=int(d.get("memory_page_size", 0)) or 4096,
        iteration=int(d.get("memory_iteration", 0)),
        bandwidth_bps=int(d.get("memory_bps", 0)),
        auto_converge_throttle=int(d.get("auto_converge_throttle", 0)),
        downtime_ms=int(d.get("downtime", 0)),
        postcopy=postcopy,
        postcopy_failed=postcopy_failed,
    )
