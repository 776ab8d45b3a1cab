"""Can this host take an incoming domain? The target checks of PrepareIncoming (pure).

``check_target`` is one function over a snapshot of this host (``TargetSnapshot``, gathered by
the prepare service), returning every problem at once, so a dry run shows the operator
everything to fix in one go -- in the order they would fix them: the definition, the domain
itself, its CPU and memory, networking, disks, space.

CPU: a guest with a ``custom`` (or ``host-model``) CPU is compared with what this host's
hypervisor offers (libvirt's virConnectCompareHypervisorCPU, run by the service;
``snapshot.cpu`` holds the verdict). A ``host-passthrough``/``maximum`` guest carries the
source host's own CPU, which this host cannot judge from the XML: the coordinator requires the
same host CPU model and features on both hosts instead (coordinator/preflight.py).

Memory: the domain's memory against what this host has available (free plus reclaimable page
cache, as the hypervisor reports it; 0 = unknown, not checked).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ferry.agent.domxml import ParsedDomain, backing_formats, parse_disks, parse_domain, parse_nics, parse_xml
from ferry.diskplan import map_path, plan_disks
from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument, ResourceExhausted, clip
from ferry.model import Disk, DiskPlan, DomainInfo, HostMapping, Nic, PrepareRecord, Problem, StorageDir, StorageMode
from ferry.units import human_bytes

# CPU modes whose definition names a model and features libvirt can compare with this host
COMPARABLE_CPU_MODES = frozenset({"custom", "host-model"})


# image formats a prepare creates (qemu-img create -f ...) and names as a backing format
IMAGE_FORMATS = frozenset({"raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc"})


@dataclass(frozen=True)
class PathFacts:
    exists: bool
    writable_dir: bool = True
    free_bytes: int = 0
    shared: bool = False  # on shared storage (declared shared dir or cluster file system)
    fs_key: str = ""  # paths with the same key share one file system's free space
    fingerprint: str = ""  # a backing file's (agent/fingerprint.py), when the plan has one to compare
    identity: str = ""  # a block device's (HostSystem.block_identity)
    # why the agent may not create (a destination) or read (a backing file) the path: outside
    # the image directories, ``..``, relative, a symbolic link (``HostSystem.confine``)
    refused: Problem | None = None


@dataclass(frozen=True)
class TargetSnapshot:
    """What this host looks like, as far as one prepare cares."""

    host_name: str
    bridges: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    domains: tuple[DomainInfo, ...] = ()  # domains here with the incoming name or UUID
    paths: Mapping[str, PathFacts] = field(default_factory=dict)  # destinations and backing files
    records: tuple[PrepareRecord, ...] = ()  # prepares of the same domain not yet finished
    reserved: Mapping[str, int] = field(default_factory=dict)  # fs key -> bytes other prepares will fill
    memory_available_bytes: int = 0  # free + reclaimable; 0 = unknown (not checked)
    emulator_present: bool = True  # the domain's <emulator> exists here (or none named)
    cpu: CpuVerdict | None = None  # None: not compared (no comparable <cpu>)
    # the source's shared-storage probes (agent/shared_probes.py): the source directory of each ->
    # its path on this host (mapped); their facts are in ``paths``
    probes: Mapping[str, str] = field(default_factory=dict)
    # block devices the guest uses in place: path -> the source's identity of it ("" = unknown)
    block_devices: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GuestCpu:
    """The guest's ``<cpu>`` and what libvirt needs to compare it with this host's hypervisor."""

    mode: str  # "custom", "host-model", "host-passthrough", "maximum"
    model: str
    xml: str  # the <cpu> element alone, as virConnectCompareHypervisorCPU takes it
    arch: str = ""  # <os><type arch=...>
    machine: str = ""  # <os><type machine=...>
    virttype: str = ""  # <domain type=...>: "kvm", "qemu"
    emulator: str = ""  # <devices><emulator>

    @property
    def comparable(self) -> bool:
        """Does the definition say which CPU the guest needs? (not a copy of the source's CPU)"""
        return self.mode in COMPARABLE_CPU_MODES and bool(self.model)


@dataclass(frozen=True)
class CpuVerdict:
    """libvirt's answer for the guest's CPU on this host."""

    incompatible: str = ""  # libvirt's explanation ("" = this host can run it)
    failed: Problem | None = None  # libvirt could not compare (unknown model, machine...)


def cpu_check_failed(host: str, detail: str) -> FailedPrecondition:
    """libvirt on ``host`` could not compare the guest's CPU (the real and the fake adapter)."""
    return FailedPrecondition(
        f"libvirt on {host} cannot check the guest's CPU: {detail}",
        reason="CPU_CHECK_FAILED",
        hint="the domain's CPU model, machine type or emulator is unknown to libvirt/QEMU on this host: "
        "use ones it offers (virsh domcapabilities) or pick another target",
    )


def guest_cpu(xml: str) -> GuestCpu | None:
    """The guest's CPU definition, None when the domain has no ``<cpu>`` (the hypervisor's
    default model) or the XML does not parse (reported elsewhere).

    >>> cpu = guest_cpu("<domain type='qemu'><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>"
    ...                 "<cpu mode='custom' match='exact'><model>qemu64</model></cpu></domain>")
    >>> cpu.mode, cpu.model, cpu.arch, cpu.machine, cpu.virttype, cpu.comparable
    ('custom', 'qemu64', 'x86_64', 'pc-q35-7.2', 'qemu', True)
    """
    try:
        root = parse_xml(xml)
    except InvalidArgument:
        return None
    cpu = root.find("cpu")
    if root.tag != "domain" or cpu is None:
        return None
    os_type = root.find("os/type")
    return GuestCpu(
        mode=cpu.get("mode") or "custom",
        model=(cpu.findtext("model") or "").strip(),
        xml=ET.tostring(cpu, encoding="unicode").strip(),
        arch=os_type.get("arch", "") if os_type is not None else "",
        machine=os_type.get("machine", "") if os_type is not None else "",
        virttype=root.get("type", ""),
        emulator=(root.findtext("devices/emulator") or "").strip(),
    )


def required_bytes(plan: DiskPlan) -> int:
    """What copying a disk will fill on the target: its allocation, or its virtual size."""
    return plan.allocation or plan.virtual_size


def resolve_plans(xml: str, plans: Iterable[DiskPlan], storage: StorageMode, mapping: HostMapping) -> list[DiskPlan]:
    """Fill in what the caller left to the target (pure).

    * no plans at all: plan from the XML (sizes unknown there, so only SHARED works that way);
    * ``destination`` empty: the source path through the path-prefix mapping;
    * COPY_INC: an empty ``backing_file`` is the disk's nearest backing file from the XML,
      mapped; an empty ``backing_format`` is that backing store's format from the XML;
    * COPY_ALL copies the whole chain into one image, so a copied disk gets no backing file.

    ``xml`` may be "" (it did not parse): then only the plans given are used.
    """
    plans = list(plans)
    disks = parse_disks(xml) if xml else []
    if not plans:
        plans = plan_disks(disks, storage, (), mapping)
    chains = {d.target: d.backing_chain for d in disks}
    formats = backing_formats(xml) if xml else {}
    out = []
    for p in plans:
        p = replace(p, destination=p.destination or map_path(p.source, mapping.path_prefixes))
        if p.copy and storage is StorageMode.COPY_INC:
            chain = chains.get(p.target, ())
            backing = p.backing_file or (map_path(chain[0], mapping.path_prefixes) if chain else "")
            p = replace(
                p,
                backing_file=backing,
                backing_format=p.backing_format or (formats.get(p.target, "") if backing else ""),
            )
        elif p.copy:
            p = replace(p, backing_file="", backing_format="")
        out.append(p)
    return out


def _domain_problems(parsed: ParsedDomain, snap: TargetSnapshot) -> list[Problem]:
    out = []
    for dom in snap.domains:
        if dom.name == parsed.name and dom.uuid == parsed.uuid and not dom.state.is_active:
            continue  # libvirt lets an incoming migration replace its own inactive definition
        same = "name" if dom.name == parsed.name else "UUID"
        state = "running" if dom.state.is_active else "defined, not running"
        out.append(
            Problem(
                "DOMAIN_EXISTS",
                f"{snap.host_name} already has a domain with the {same} of {parsed.name} "
                f"({dom.name}, {dom.uuid}, {state})",
                f"it already runs on {snap.host_name}: nothing to migrate"
                if dom.state.is_active and dom.uuid == parsed.uuid
                else f"if {dom.name} on {snap.host_name} is a stale copy, undefine it there "
                f"(virsh undefine {dom.name}); otherwise pick another target",
                kind=AlreadyExists,
            )
        )
    for rec in snap.records:
        out.append(
            Problem(
                "PREPARE_EXISTS",
                f"{snap.host_name} already has a prepared incoming migration of {rec.domain_name} "
                f"(prepare {rec.prepare_id}, migration {rec.migration_id or 'unknown'})",
                f"let that migration finish, or clean it up (CleanupIncoming {rec.prepare_id}); "
                f"it expires at {rec.expires_at.isoformat()}",
                kind=AlreadyExists,
            )
        )
    return out


def _nic_problems(nics: Iterable[Nic], mapping: HostMapping, snap: TargetSnapshot) -> list[Problem]:
    out, seen = [], set()
    for nic in nics:
        if nic.type not in ("bridge", "network") or not nic.source or (nic.type, nic.source) in seen:
            continue
        seen.add((nic.type, nic.source))
        kind = nic.type
        table, have = (mapping.bridges, snap.bridges) if kind == "bridge" else (mapping.networks, snap.networks)
        wanted = table.get(nic.source, nic.source)
        if wanted in have:
            continue
        mapped = f" (mapped from {nic.source})" if wanted != nic.source else ""
        listed = ", ".join(have) if have else "none"
        example = have[0] if have else f"TARGET_{kind.upper()}"
        out.append(
            Problem(
                f"{kind.upper()}_MISSING",
                f"{kind} {wanted}{mapped} does not exist on {snap.host_name}",
                f"{snap.host_name} has {kind}s {listed}; map it: --map-{kind} {nic.source}={example}",
                kind=FailedPrecondition,
            )
        )
    return out


def _disk_problems(
    plans: list[DiskPlan],
    storage: StorageMode,
    devices: Mapping[str, Disk] | None,
    snap: TargetSnapshot,
    domain_name: str = "",
) -> list[Problem]:
    out: list[Problem] = []
    host = snap.host_name
    facts = snap.paths
    destinations: dict[str, str] = {}
    for p in plans:
        dest = p.destination
        if devices is not None and p.target not in devices:
            out.append(
                Problem(
                    "DISK_NOT_IN_DOMAIN",
                    f"the disk plan names {p.target}, which the domain does not have",
                    f"the domain's disks are {', '.join(sorted(devices)) or 'none'}",
                    kind=InvalidArgument,
                )
            )
            continue
        if dest in destinations:
            out.append(
                Problem(
                    "DUPLICATE_DESTINATION",
                    f"disks {destinations[dest]} and {p.target} would both live at {dest}",
                    "map them to different paths (--map-path)",
                    kind=InvalidArgument,
                )
            )
            continue
        destinations[dest] = p.target
        f = facts.get(dest, PathFacts(exists=False))
        if p.copy and f.refused is not None:
            out.append(f.refused)
            continue
        if not p.copy:
            why = "on shared storage" if storage is StorageMode.SHARED else "not copied"
            disk = devices.get(p.target) if devices is not None else None
            writable = disk is not None and not disk.readonly and disk.device == "disk"
            if not f.exists and disk is not None and not writable:
                kind = "a read-only cdrom" if disk.device == "cdrom" else f"a read-only {disk.device}"
                out.append(
                    Problem(
                        "SHARED_DISK_MISSING",
                        f"disk {p.target} ({kind}: libvirt never copies it) needs {dest} on {host}, but nothing "
                        "is there",
                        f"copy {os.path.basename(p.source)} to {dest} on {host} (each host needs its own copy of a "
                        f"read-only image), map its directory (--map-path {os.path.dirname(p.source)}=DIR), or "
                        + (
                            f"eject it first (virsh change-media {domain_name} {p.target} --eject)"
                            if disk.device == "cdrom" and domain_name
                            else "put it on shared storage"
                        ),
                        kind=FailedPrecondition,
                    )
                )
            elif not f.exists:
                out.append(
                    Problem(
                        "SHARED_DISK_MISSING",
                        f"disk {p.target} ({why}) is expected at {dest} on {host}, but nothing is there",
                        f"make {os.path.dirname(dest)} visible on {host} (mount the shared storage), map the path "
                        f"(--map-path {os.path.dirname(p.source)}=DIR), or copy the disk (--copy-storage-all)",
                        kind=FailedPrecondition,
                    )
                )
            elif writable and not f.shared:
                out.append(
                    Problem(
                        "DISK_NOT_SHARED",
                        f"disk {p.target} ({why}) is writable, but {dest} on {host} is on local storage: the guest "
                        "would continue on a different file than on the source",
                        f"copy the disk (--copy-storage-all); if {os.path.dirname(dest)} really is shared, list it "
                        f"in shared_dirs of {host}'s agent config",
                        kind=FailedPrecondition,
                    )
                )
            elif writable and (mismatch := _probe_unseen(p, snap)) is not None:
                out.append(mismatch)
            continue
        if storage is StorageMode.SHARED:
            out.append(
                Problem(
                    "COPY_WITH_SHARED_STORAGE",
                    f"disk {p.target} is planned as a copy, but the storage mode is shared",
                    "use --copy-storage-all or --copy-storage-inc, or plan the disk as shared",
                    kind=InvalidArgument,
                )
            )
            continue
        for what, fmt in (("format", p.format), ("backing format", p.backing_format if p.backing_file else "")):
            if fmt and fmt not in IMAGE_FORMATS:
                out.append(
                    Problem(
                        "DISK_FORMAT_UNSUPPORTED",
                        f"disk {p.target}: {what} {clip(repr(fmt), 40)} is not an image format this agent creates",
                        f"use one of {', '.join(sorted(IMAGE_FORMATS))}",
                        kind=InvalidArgument,
                    )
                )
        if p.virtual_size <= 0:
            out.append(
                Problem(
                    "DISK_SIZE_UNKNOWN",
                    f"disk {p.target} has no virtual size; its image cannot be created",
                    "pass disk plans with sizes (the source agent's inventory has them)",
                    kind=InvalidArgument,
                )
            )
        if f.exists:
            out.append(
                Problem(
                    "FILE_IN_THE_WAY",
                    f"{dest} already exists on {host} (disk {p.target} would be created there)",
                    f"remove or move {dest} on {host} if it is a leftover, or map the disk elsewhere "
                    f"(--map-path {os.path.dirname(p.source)}=DIR)",
                    kind=AlreadyExists,
                )
            )
        elif not f.writable_dir:
            out.append(
                Problem(
                    "PATH_NOT_WRITABLE",
                    f"the agent cannot create {dest} on {host}: its directory is not writable",
                    f"make {os.path.dirname(dest)} writable for the agent, or map the disk elsewhere (--map-path)",
                    kind=FailedPrecondition,
                )
            )
        backing = facts.get(p.backing_file, PathFacts(exists=False))
        if storage is StorageMode.COPY_INC and p.backing_file and backing.refused is not None:
            out.append(backing.refused)
        elif storage is StorageMode.COPY_INC and p.backing_file and not backing.exists:
            out.append(
                Problem(
                    "BACKING_MISSING",
                    f"disk {p.target} needs its backing file {p.backing_file} on {host}, and it is not there",
                    f"copy the backing file to {p.backing_file} on {host}, map its directory (--map-path), "
                    "or copy the whole disk (--copy-storage-all)",
                    kind=FailedPrecondition,
                )
            )
        elif (
            storage is StorageMode.COPY_INC
            and p.backing_fingerprint
            and backing.fingerprint
            and backing.fingerprint != p.backing_fingerprint
        ):
            out.append(
                Problem(
                    "BACKING_MISMATCH",
                    f"disk {p.target}: the backing file {p.backing_file} on {host} is another image than the source's "
                    "(their sampled bytes differ): only the top layer is copied, so the guest would read its other "
                    "blocks from the wrong base",
                    f"copy the source's backing file byte for byte (cp, rsync) to {p.backing_file} on {host}, or "
                    "copy the whole disk (--copy-storage-all)",
                    kind=FailedPrecondition,
                )
            )
    copies = [
        p
        for p in plans
        if p.copy and p.destination in destinations and facts.get(p.destination, PathFacts(False)).refused is None
    ]
    return out + _space_problems(copies, snap)


def _block_problems(devices: Mapping[str, Disk], snap: TargetSnapshot) -> list[Problem]:
    """A block device is never copied: the guest goes on with the device at the same path here,
    which must be the same device (the source's identity, when it knows one)."""
    out = []
    for d in devices.values():
        if not d.block_device or d.block_device not in snap.block_devices:
            continue
        path, host = d.block_device, snap.host_name
        want, f = snap.block_devices[path], snap.paths.get(d.block_device, PathFacts(exists=False))
        fix = (
            "Ferry never copies a block device: put it on storage both hosts see (a multipath LUN, a shared "
            "volume group), or move the disk into a file image (it is copied then)"
        )
        if not f.exists:
            out.append(
                Problem(
                    "BLOCK_DEVICE_MISSING",
                    f"disk {d.target} is the block device {path}, which does not exist on {host}",
                    fix,
                    kind=FailedPrecondition,
                )
            )
        elif want and f.identity != want:
            seen = f"is {f.identity}" if f.identity else "has no identity this host can read"
            out.append(
                Problem(
                    "BLOCK_DEVICE_MISMATCH",
                    f"disk {d.target}: {path} on {host} is another device than the guest's ({want}; here it {seen}): "
                    "the guest would go on with a different disk",
                    f"{fix}; if {path} on {host} was made for this guest by hand, it is not the same storage",
                    kind=FailedPrecondition,
                )
            )
    return out


def _probe_unseen(p: DiskPlan, snap: TargetSnapshot) -> Problem | None:
    """A disk left in place whose source probe is not where this host expects the disk's
    directory: this host's file at that path is another file than the guest's."""
    probe = snap.probes.get(os.path.dirname(p.source))
    if probe is None or snap.paths.get(probe, PathFacts(exists=False)).exists:
        return None
    src_dir, dest_dir = os.path.dirname(p.source), os.path.dirname(p.destination)
    where = dest_dir if dest_dir == src_dir else f"{dest_dir} (mapped from {src_dir})"
    return Problem(
        "SHARED_STORAGE_MISMATCH",
        f"disk {p.target}: {p.destination} on {snap.host_name} is not the file the guest uses: a probe file the "
        f"source wrote next to the disk does not appear in {where} here, so {snap.host_name} sees other storage "
        "there (the shared storage not mounted, or a local copy in its place)",
        f"mount the shared storage at {dest_dir} on {snap.host_name} (findmnt {dest_dir}) or map the path to where it "
        f"is mounted (--map-path {src_dir}=DIR); if {p.destination} there is a stand-in or a stale copy, remove it; "
        "or copy the disk (--copy-storage-all)",
        kind=FailedPrecondition,
    )


def _space_problems(copies: list[DiskPlan], snap: TargetSnapshot) -> list[Problem]:
    by_fs: dict[str, list[DiskPlan]] = {}
    for p in copies:
        by_fs.setdefault(snap.paths.get(p.destination, PathFacts(False)).fs_key or p.destination, []).append(p)
    out = []
    for key, plans in by_fs.items():
        need = sum(required_bytes(p) for p in plans)
        free = snap.paths.get(plans[0].destination, PathFacts(False)).free_bytes
        reserved = snap.reserved.get(key, 0)
        if need <= free - reserved:
            continue
        others = f", {human_bytes(reserved)} of it promised to other incoming migrations" if reserved else ""
        out.append(
            Problem(
                "INSUFFICIENT_SPACE",
                f"disks {', '.join(p.target for p in plans)} need {human_bytes(need)} under {key} on "
                f"{snap.host_name}; {human_bytes(free)} free{others}",
                f"free {human_bytes(need - free + reserved)} there, or map the disks to a roomier directory "
                "(--map-path)",
                kind=ResourceExhausted,
            )
        )
    return out


def _cpu_problems(parsed: ParsedDomain, cpu: GuestCpu | None, snap: TargetSnapshot) -> list[Problem]:
    out = []
    if cpu is not None and cpu.emulator and not snap.emulator_present:
        out.append(
            Problem(
                "EMULATOR_MISSING",
                f"{parsed.name} runs on the emulator {cpu.emulator}, which does not exist on {snap.host_name}",
                f"install QEMU at {cpu.emulator} on {snap.host_name} (every host needs the same emulator path), "
                "or pick another target",
                kind=FailedPrecondition,
            )
        )
    verdict = snap.cpu
    if cpu is None or verdict is None:
        return out
    if verdict.failed is not None:
        out.append(verdict.failed)
    elif verdict.incompatible:
        model = f"model {cpu.model}, " if cpu.model else ""
        out.append(
            Problem(
                "CPU_INCOMPATIBLE",
                f"{snap.host_name} cannot run the CPU of {parsed.name} ({model}mode {cpu.mode}): "
                f"{verdict.incompatible}",
                f"pick a target whose CPU has the features named, or give {parsed.name} a CPU model every host "
                "offers (e.g. a baseline of all hosts' CPUs: virsh hypervisor-cpu-baseline on their domain "
                "capabilities), then restart it",
                kind=FailedPrecondition,
            )
        )
    return out


def _memory_problems(parsed: ParsedDomain, snap: TargetSnapshot) -> list[Problem]:
    have, need = snap.memory_available_bytes, parsed.memory_bytes
    if not have or need <= have:
        return []
    return [
        Problem(
            "INSUFFICIENT_MEMORY",
            f"{parsed.name} needs {human_bytes(need)} of memory; {snap.host_name} has {human_bytes(have)} available",
            f"free {human_bytes(need - have)} on {snap.host_name} (stop or migrate other guests away), or pick "
            "another target",
            kind=ResourceExhausted,
        )
    ]


def check_target(
    xml: str, plans: list[DiskPlan], mapping: HostMapping, storage: StorageMode, snapshot: TargetSnapshot
) -> list[Problem]:
    """Every reason this host cannot take the domain (empty: ready), in the order an operator
    would fix them: the definition, the domain itself, its CPU and memory, networking, disks,
    space."""
    try:
        parsed, nics = parse_domain(xml), parse_nics(xml)
        devices: dict[str, Disk] | None = {d.target: d for d in parse_disks(xml)}
    except InvalidArgument as exc:
        return [
            Problem.of(exc),
            *_disk_problems(plans, storage, None, snapshot),
        ]
    return [
        *_domain_problems(parsed, snapshot),
        *_cpu_problems(parsed, guest_cpu(xml), snapshot),
        *_memory_problems(parsed, snapshot),
        *_nic_problems(nics, mapping, snapshot),
        *_disk_problems(plans, storage, devices, snapshot, parsed.name),
        *_block_problems(devices or {}, snapshot),
    ]


def refusal(problems: list[Problem]) -> FerryError:
    """One error for a refused prepare: the first problem's type and reason, every message."""
    first = problems[0]
    if len(problems) == 1:
        return first.to_error()
    hints = list(dict.fromkeys(p.hint for p in problems if p.hint))
    return first.kind(
        f"{len(problems)} problems: " + "; ".join(p.message for p in problems),
        reason=first.reason,
        hint="; ".join(hints),
    )


def storage_key(path: str, dirs: Iterable[StorageDir]) -> str:
    """The configured storage directory holding ``path`` (longest), else the path's directory."""
    best = ""
    for d in dirs:
        root = d.path.rstrip("/")
        if (path == root or path.startswith(root + "/")) and len(root) > len(best):
            best = root
    return best or os.path.dirname(path)
