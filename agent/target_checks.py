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

Networking: each NIC's bridge or libvirt network, after the mapping, must exist here; a bridge
must also be of the kind the NIC's ``<virtualport>`` needs (``Nic.bridge_kind``), when this host
knows the bridge's kind (``snapshot.bridge_kinds``): libvirt adds a NIC with ``<virtualport
type='openvswitch'>`` to an Open vSwitch bridge with ovs-vsctl and one without a
``<virtualport>`` to a Linux bridge, and either fails on the other kind (BRIDGE_TYPE_MISMATCH).

Memory: the domain's memory against what this host has available (free plus reclaimable page
cache, as the hypervisor reports it; 0 = unknown, not checked). An offline migration moves a
shut-off definition only: it needs no memory here, and it is not checked then.

Host hardware the definition names (``guest_devices``), which libvirt would refuse or fail on
mid-migration, after the prepare created its images: host devices passed through to the guest
(a PCI ``<hostdev>``, an SR-IOV ``<interface type='hostdev'>``: libvirt migrates none but USB
ones live: HOSTDEV_NOT_MIGRATABLE, not checked offline), a macvtap NIC's network device
(``<interface type='direct'><source dev>``: NET_DEVICE_MISSING), and the host CPUs and NUMA
nodes the guest is pinned to (``<vcpu cpuset>``, ``<cputune>`` pins, ``<numatune>`` nodesets:
PINNED_CPUS_MISSING, NUMA_NODES_MISSING). The coordinator's inventory carries none of them (not
the guest's devices or pinning, not the host's network devices, CPU numbers or NUMA nodes), so
only this host checks them.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ferry.agent.domxml import ParsedDomain, backing_formats, parse_disks, parse_domain, parse_nics, parse_xml
from ferry.diskplan import map_path, plan_disks
from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument, ResourceExhausted, clip
from ferry.model import (
    LINUX_BRIDGE,
    OVS_BRIDGE,
    Disk,
    DiskPlan,
    DomainInfo,
    HostMapping,
    Nic,
    PrepareRecord,
    Problem,
    StorageDir,
    StorageMode,
)
from ferry.units import human_bytes

# CPU modes whose definition names a model and features libvirt can compare with this host
COMPARABLE_CPU_MODES = frozenset({"custom", "host-model"})


# image formats a prepare creates (qemu-img create -f ...) and names as a backing format
IMAGE_FORMATS = frozenset({"raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc"})

# the highest host CPU (or NUMA node) number a libvirt CPU list may name (VIR_DOMAIN_CPUMASK_LEN - 1)
MAX_CPU_ID = 16383


@dataclass(frozen=True)
class PathFacts:
    exists: bool
    writable_dir: bool = True
    free_bytes: int = 0
    shared: bool = False  # on shared storage (declared shared dir or cluster file system)
    fs_key: str = ""  # paths with the same key share one file system's free space
    fingerprint: str = ""  # a backing file's (agent/fingerprint.py), when the plan has one to compare
    identity: str = ""  # a block device's (HostSystem.block_identity)
    block: bool = False  # a block device is there (asked only of the guest's block devices)
    # why the agent may not create (a destination) or read (a backing file) the path: outside
    # the image directories, ``..``, relative, a symbolic link (``HostSystem.confine``)
    refused: Problem | None = None


@dataclass(frozen=True)
class TargetSnapshot:
    """What this host looks like, as far as one prepare cares."""

    host_name: str
    bridges: tuple[str, ...] = ()
    # bridge -> LINUX_BRIDGE or OVS_BRIDGE (HostSystem.bridge_kinds); one not in it: kind not compared
    bridge_kinds: Mapping[str, str] = field(default_factory=dict)
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
    # this host's network devices (gathered for a macvtap NIC), CPUs and NUMA nodes online (for
    # a pinned guest); None: this host cannot tell (not checked)
    net_devices: tuple[str, ...] = ()
    cpus: frozenset[int] | None = frozenset()
    numa_nodes: frozenset[int] | None = frozenset()


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


def parse_cpu_list(text: str) -> frozenset[int]:
    """The CPUs (or NUMA nodes) of a list as libvirt and the kernel write one: numbers and ranges,
    comma-separated, libvirt's ``^N`` leaving one out. Raises ValueError for anything else.

    >>> sorted(parse_cpu_list("0-3,^2, 8"))
    [0, 1, 3, 8]
    >>> parse_cpu_list("16-31") == frozenset(range(16, 32))
    True
    """
    take: set[int] = set()
    drop: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.removeprefix("^").partition("-")
        if not first.isdecimal() or (dash and not last.isdecimal()):
            raise ValueError(f"not a CPU list: {clip(repr(text), 40)}")
        lo, hi = int(first), int(last if dash else first)
        if hi < lo or hi > MAX_CPU_ID:
            raise ValueError(f"not a CPU list: {clip(repr(text), 40)}")
        (drop if part.startswith("^") else take).update(range(lo, hi + 1))
    return frozenset(take - drop)


def cpu_list(ids: Iterable[int]) -> str:
    """CPU (or node) numbers as a list ``parse_cpu_list`` reads, "none" for none.

    >>> cpu_list({8, 0, 1, 2, 3, 10}), cpu_list(())
    ('0-3,8,10', 'none')
    """
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs) or "none"


@dataclass(frozen=True)
class GuestDevices:
    """The host hardware a guest's definition names, beyond its disks and bridges."""

    # devices of the host passed through to the guest, which libvirt does not migrate live, in
    # words ("PCI device 0000:03:00.0")
    host_devices: tuple[str, ...] = ()
    # the host CPUs and NUMA nodes it is pinned to, by what pins them ("<vcpu cpuset>" -> CPUs)
    cpus: Mapping[str, frozenset[int]] = field(default_factory=dict)
    nodes: Mapping[str, frozenset[int]] = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        return bool(self.cpus or self.nodes)


def _pci_words(el: ET.Element | None) -> str:
    """A ``<source><address>`` as lspci writes a PCI address ("" when it is none)."""
    addr = el.find("source/address") if el is not None else None
    if addr is None:
        return ""
    try:
        parts = [int(addr.get(k, "0"), 16) for k in ("domain", "bus", "slot", "function")]
    except ValueError:
        return ""
    return "{:04x}:{:02x}:{:02x}.{:x}".format(*parts)


def _host_device_words(el: ET.Element) -> str:
    """A ``<hostdev>`` libvirt does not migrate live, in words; "" for one it does (USB)."""
    kind = el.get("type", "")
    if el.get("mode", "subsystem") != "subsystem":  # mode='capabilities': a host block/char/net device
        found = next((t.strip() for t in el.itertext() if t.strip()), "")
        return f"host {kind or 'capabilities'} device {found}".rstrip()
    if kind == "usb":
        return ""
    if kind == "pci":
        return f"PCI device {_pci_words(el)}".rstrip()
    if kind == "mdev":
        addr = el.find("source/address")
        return f"mediated device {addr.get('uuid', '') if addr is not None else ''}".rstrip()
    if kind == "scsi":
        adapter = el.find("source/adapter")
        return f"SCSI device {adapter.get('name', '') if adapter is not None else ''}".rstrip()
    if kind == "scsi_host":
        source = el.find("source")
        return f"SCSI host {source.get('wwpn', '') if source is not None else ''}".rstrip()
    return f"{kind or 'host'} device"


def _pins(root: ET.Element) -> tuple[dict[str, frozenset[int]], dict[str, frozenset[int]]]:
    """The host CPUs and NUMA nodes the definition pins to, by what pins them; a list libvirt
    ignores (``placement='auto'``: numad chooses) or would not have taken is left out."""
    cpus: list[tuple[str, str]] = []
    vcpu = root.find("vcpu")
    if vcpu is not None and vcpu.get("placement") != "auto":
        cpus.append(("<vcpu cpuset>", vcpu.get("cpuset", "")))
    for el in root.iterfind("cputune/*"):
        if el.tag in ("vcpupin", "emulatorpin", "iothreadpin"):
            which = {"vcpupin": "vcpu", "iothreadpin": "iothread"}.get(el.tag, "")
            cpus.append((f"<{el.tag} {which}='{el.get(which, '')}'>" if which else f"<{el.tag}>", el.get("cpuset", "")))
    nodes: list[tuple[str, str]] = []
    memory = root.find("numatune/memory")
    if memory is not None and memory.get("placement") != "auto":
        nodes.append(("<numatune><memory nodeset>", memory.get("nodeset", "")))
    for el in root.iterfind("numatune/memnode"):
        nodes.append((f"<memnode cellid='{el.get('cellid', '')}'>", el.get("nodeset", "")))

    def parsed(pins: list[tuple[str, str]]) -> dict[str, frozenset[int]]:
        out = {}
        for what, text in pins:
            try:
                out[what] = parse_cpu_list(text) if text else frozenset()
            except ValueError:
                continue  # libvirt took the definition: not a list it refuses on the target
            if not out[what]:
                del out[what]
        return out

    return parsed(cpus), parsed(nodes)


def guest_devices(xml: str) -> GuestDevices:
    """The host devices passed through to the guest that libvirt does not migrate live (every
    ``<hostdev>`` but a USB one, an ``<interface type='hostdev'>`` unless libvirt unplugs it
    for the migration: ``<teaming type='transient'>``), and the host CPUs and NUMA nodes it is
    pinned to. Nothing for XML that does not parse (reported elsewhere).

    >>> d = guest_devices("<domain><vcpu placement='static' cpuset='0-3,^1'>2</vcpu><devices>"
    ...     "<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' bus='0x03' "
    ...     "slot='0x00' function='0x1'/></source></hostdev>"
    ...     "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source></hostdev>"
    ...     "</devices></domain>")
    >>> d.host_devices, {k: sorted(v) for k, v in d.cpus.items()}, d.nodes
    (('PCI device 0000:03:00.1',), {'<vcpu cpuset>': [0, 2, 3]}, {})
    """
    try:
        root = parse_xml(xml)
    except InvalidArgument:
        return GuestDevices()
    if root.tag != "domain":
        return GuestDevices()
    found = [_host_device_words(el) for el in root.iterfind("devices/hostdev")]
    for nic in root.iterfind("devices/interface[@type='hostdev']"):
        teaming = nic.find("teaming")
        if teaming is None or teaming.get("type") != "transient":
            found.append(f"SR-IOV interface on PCI device {_pci_words(nic)}".rstrip())
    cpus, nodes = _pins(root)
    return GuestDevices(tuple(w for w in found if w), cpus, nodes)


def required_bytes(plan: DiskPlan) -> int:
    """What copying a disk will fill on the target: its allocation, or its virtual size when that
    is not known (a flattened chain's: ``resolve_plans``, ``ferry.diskplan.copy_allocation``)."""
    return plan.allocation or plan.virtual_size


def resolve_plans(xml: str, plans: Iterable[DiskPlan], storage: StorageMode, mapping: HostMapping) -> list[DiskPlan]:
    """Fill in what the caller left to the target (pure).

    * no plans at all: plan from the XML (sizes unknown there, so only SHARED works that way);
    * ``destination`` empty: the source path through the path-prefix mapping;
    * COPY_INC: an empty ``backing_file`` is the disk's nearest backing file from the XML,
      mapped; an empty ``backing_format`` is that backing store's format from the XML;
    * COPY_ALL copies the whole chain into one image, so a copied disk gets no backing file, and
      one with a backing chain in the XML no allocation: the caller's is the top layer's, and the
      image is written with every layer's data (``required_bytes`` counts its virtual size).

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
            p = replace(p, backing_file="", backing_format="", allocation=0 if chains.get(p.target) else p.allocation)
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
    out: list[Problem] = []
    for nic in nics:
        if nic.type not in ("bridge", "network") or not nic.source:
            continue
        kind = nic.type
        table, have = (mapping.bridges, snap.bridges) if kind == "bridge" else (mapping.networks, snap.networks)
        wanted = table.get(nic.source, nic.source)
        mapped = f" (mapped from {nic.source})" if wanted != nic.source else ""
        if wanted in have:
            found = _bridge_type_problem(nic, wanted, mapped, snap) if kind == "bridge" else None
        else:
            listed = ", ".join(have) if have else "none"
            example = have[0] if have else f"TARGET_{kind.upper()}"
            found = Problem(
                f"{kind.upper()}_MISSING",
                f"{kind} {wanted}{mapped} does not exist on {snap.host_name}",
                f"{snap.host_name} has {kind}s {listed}; map it: --map-{kind} {nic.source}={example}",
                kind=FailedPrecondition,
            )
        if found is not None and found not in out:  # once for all NICs on that bridge or network
            out.append(found)
    return out


_BRIDGE_KINDS = {LINUX_BRIDGE: "Linux bridge", OVS_BRIDGE: "Open vSwitch bridge"}


def _bridge_type_problem(nic: Nic, bridge: str, mapped: str, snap: TargetSnapshot) -> Problem | None:
    """``bridge`` (the NIC's, mapped) is here but of the other kind than the NIC's <virtualport>
    needs; None when it fits or either kind is not known.

    >>> snap = TargetSnapshot("host2", ("br0", "br-ovs"), {"br0": LINUX_BRIDGE, "br-ovs": OVS_BRIDGE})
    >>> p = _bridge_type_problem(Nic("bridge", "br-ovs"), "br-ovs", "", snap)
    >>> p.reason
    'BRIDGE_TYPE_MISMATCH'
    >>> p.message
    'bridge br-ovs on host2 is an Open vSwitch bridge; a NIC without a <virtualport> needs a Linux bridge'
    >>> p.hint
    'host2 has Linux bridges br0; map it: --map-bridge br-ovs=br0'
    >>> _bridge_type_problem(Nic("bridge", "br-ovs", virtualport="openvswitch"), "br-ovs", "", snap) is None
    True
    """
    need, got = nic.bridge_kind, snap.bridge_kinds.get(bridge, "")
    if not need or not got or need == got:
        return None
    port = "with <virtualport type='openvswitch'>" if need == OVS_BRIDGE else "without a <virtualport>"
    fitting = [b for b, k in snap.bridge_kinds.items() if k == need]
    host, name, article = snap.host_name, _BRIDGE_KINDS[need], {LINUX_BRIDGE: "a", OVS_BRIDGE: "an"}
    if fitting:
        hint = f"{host} has {name}s {', '.join(fitting)}; map it: --map-bridge {nic.source}={fitting[0]}"
    else:
        hint = f"{host} has no {name}: pick another target, or add one there (--map-bridge {nic.source}=NAME)"
    return Problem(
        "BRIDGE_TYPE_MISMATCH",
        f"bridge {bridge}{mapped} on {host} is {article[got]} {_BRIDGE_KINDS[got]}; "
        f"a NIC {port} needs {article[need]} {name}",
        hint,
        kind=FailedPrecondition,
    )


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
        if f.refused is not None:  # a copy's destination, or a disk the guest opens in place
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
        elif not f.block:  # a file there (/etc/shadow named as a "block device") is no disk for the guest
            out.append(
                Problem(
                    "BLOCK_DEVICE_MISMATCH",
                    f"disk {d.target} is the block device {path}, but on {host} {path} is not a block device",
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
    if parsed.emulator and not snap.emulator_present:  # a guest without <cpu> names its emulator too
        out.append(
            Problem(
                "EMULATOR_MISSING",
                f"{parsed.name} runs on the emulator {parsed.emulator}, which does not exist on {snap.host_name}",
                f"install QEMU at {parsed.emulator} on {snap.host_name} (every host needs the same emulator path), "
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


def _host_device_problems(parsed: ParsedDomain, devices: GuestDevices) -> list[Problem]:
    if not devices.host_devices:
        return []
    return [
        Problem(
            "HOSTDEV_NOT_MIGRATABLE",
            f"{parsed.name} has host devices passed through, which libvirt does not migrate live: "
            f"{', '.join(devices.host_devices)}",
            f"detach them before the migration (virsh detach-device {parsed.name} DEVICE.xml --live) and attach the "
            f"target's own afterwards, or shut {parsed.name} down and migrate it offline (--offline, its disks on "
            "shared storage)",
            kind=FailedPrecondition,
        )
    ]


def _pinning_problems(parsed: ParsedDomain, devices: GuestDevices, snap: TargetSnapshot) -> list[Problem]:
    out = []
    host, name = snap.host_name, parsed.name
    for pins, have, kind in ((devices.cpus, snap.cpus, "CPUs"), (devices.nodes, snap.numa_nodes, "NUMA nodes")):
        if have is None:
            continue  # this host cannot tell
        missing = {what: ids - have for what, ids in pins.items() if ids - have}
        if not missing:
            continue
        lacking = cpu_list(frozenset().union(*missing.values()))
        where = ", ".join(missing)
        if kind == "CPUs":
            out.append(
                Problem(
                    "PINNED_CPUS_MISSING",
                    f"{name} is pinned to host CPUs {lacking} ({where}), which {host} does not have "
                    f"(its CPUs: {cpu_list(have)})",
                    f"pin {name} to CPUs {host} has too (virsh vcpupin/emulatorpin/iothreadpin {name} ... --live "
                    f"--config; <vcpu cpuset>: virsh edit and a restart), or pick a target with CPUs {lacking}",
                    kind=FailedPrecondition,
                )
            )
        else:
            out.append(
                Problem(
                    "NUMA_NODES_MISSING",
                    f"the memory of {name} is bound to host NUMA nodes {lacking} ({where}), which {host} does not "
                    f"have (its nodes: {cpu_list(have)})",
                    f"bind it to nodes {host} has too (virsh numatune {name} --nodeset N --live --config), or pick "
                    f"a target with NUMA nodes {lacking}",
                    kind=FailedPrecondition,
                )
            )
    return out


def _listed(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return (", ".join(names[:limit]) + more) or "none"


def _direct_problems(nics: Iterable[Nic], snap: TargetSnapshot) -> list[Problem]:
    """A macvtap NIC (``<interface type='direct'>``) names the host's network device itself."""
    out, seen = [], set()
    host = snap.host_name
    for nic in nics:
        if nic.type != "direct" or not nic.source or nic.source in snap.net_devices or nic.source in seen:
            continue
        seen.add(nic.source)
        mac = f" {nic.mac}" if nic.mac else ""
        out.append(
            Problem(
                "NET_DEVICE_MISSING",
                f"macvtap NIC{mac} (<interface type='direct'>) is attached to the network device {nic.source}, which "
                f"does not exist on {host}",
                f"Ferry does not map a macvtap's device: give the uplink the name {nic.source} on {host} too (a "
                "systemd .link file), or attach the NIC to a libvirt network in macvtap mode (<forward mode='bridge'>)"
                f" on every host and map it (--map-network); {host} has network devices {_listed(snap.net_devices)}",
                kind=FailedPrecondition,
            )
        )
    return out


def check_target(
    xml: str,
    plans: list[DiskPlan],
    mapping: HostMapping,
    storage: StorageMode,
    snapshot: TargetSnapshot,
    *,
    offline: bool = False,
) -> list[Problem]:
    """Every reason this host cannot take the domain (empty: ready), in the order an operator
    would fix them: the definition, the domain itself, its CPU and memory, networking, disks,
    space. ``offline``: the migration moves a shut-off definition (no memory needed here, and
    libvirt moves host devices' definitions then)."""
    try:
        parsed, nics = parse_domain(xml), parse_nics(xml)
        devices: dict[str, Disk] | None = {d.target: d for d in parse_disks(xml)}
    except InvalidArgument as exc:
        return [
            Problem.of(exc),
            *_disk_problems(plans, storage, None, snapshot),
        ]
    hardware = guest_devices(xml)
    return [
        *_domain_problems(parsed, snapshot),
        *([] if offline else _host_device_problems(parsed, hardware)),
        *_cpu_problems(parsed, guest_cpu(xml), snapshot),
        *_pinning_problems(parsed, hardware, snapshot),
        *([] if offline else _memory_problems(parsed, snapshot)),
        *_nic_problems(nics, mapping, snapshot),
        *_direct_problems(nics, snapshot),
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
