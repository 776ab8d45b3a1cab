"""Preflight checks the coordinator makes itself, from the fleet inventory (pure).

The target agent adds its own (bridges, networks, files, space, CPU) through a PrepareIncoming
dry run, and the source agent probes the target's address; `ferry preflight` shows all of them
at once. Each blocker has a stable reason code and a hint that says what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ferry.model import (
    HOST_CPU_MODES,
    Disk,
    DomainInfo,
    DomainState,
    HostFacts,
    MigrationOptions,
    Problem,
    StorageMode,
)


@dataclass(frozen=True)
class HostView:
    """What the coordinator knows of one host: registered, agent lease alive, last inventory;
    ``why_down``: not available, which part is down (None: not known)."""

    name: str
    available: bool
    facts: HostFacts | None = None
    why_down: Problem | None = None


def host_down(name: str, why: Problem | None, *, target: bool = True) -> Problem:
    """TARGET_DOWN (or SOURCE_DOWN) for host ``name``, saying which part is down (``why``, from
    ``ferry.registry.down_problem``) and what to check.

    >>> host_down("h2", Problem("LIBVIRTD_DOWN", "libvirtd on h2 does not answer", "start libvirtd on h2")).hint
    'start libvirtd on h2, or pick another target'
    >>> host_down("h1", None, target=False).message
    'the agent on h1 is not available (not registered or not answering)'
    """
    code, other = ("TARGET_DOWN", "or pick another target") if target else ("SOURCE_DOWN", "")
    if why is None:
        return Problem(
            code,
            f"the agent on {name} is not available (not registered or not answering)",
            f"start ferry-agent on {name}" + (f" {other}" if other else ""),
        )
    return Problem(code, f"{name} is not available: {why.message}", why.hint + (f", {other}" if other else ""))


# libvirt: a target of an older major may not know what the source's domain XML holds, and hosts
# far apart are beyond what Ferry counts on (a rule of thumb, not a guarantee of libvirt's). QEMU is
# judged by machine types instead: see qemu_blockers. Versions use libvirt's encoding: major*1e6 +
# minor*1e3 + micro.
MAX_MAJOR_SKEW = 2

# QEMU deprecates a versioned machine type 3 years after its release and may remove it 3 years later
# (its docs, "Deprecated features", as of QEMU 10.0: 6 years, 18 releases). It releases one major
# a year (4.0 in 2019 ... 10.0 in 2025), so a QEMU this many majors past a machine type's release
# may have dropped it (Debian 13's QEMU 10.0 no longer has pc-i440fx-2.3, which Debian 12's 7.2 has).
MACHINE_TYPE_LIFETIME_MAJORS = 6

SAFE_SHARED_CACHE = {"none", "directsync"}

# a versioned machine type of upstream QEMU: the release that brought it ends its name
_MACHINE_VERSION_RE = re.compile(r"-(\d+)\.(\d+)(?:\.(\d+))?$")


def _major(version: int) -> int:
    return version // 1_000_000


def _release(version: int) -> int:
    """Major and minor, without the micro (a stable update adds no machine type)."""
    return version // 1_000


def _fmt(version: int) -> str:
    return f"{version // 1_000_000}.{version // 1_000 % 1_000}.{version % 1_000}"


def _fmt_minor(version: int) -> str:
    return f"{version // 1_000_000}.{version // 1_000 % 1_000}"


def _fmt_release(version: int) -> str:
    """A QEMU release as its machine types name it: ``8.2``, ``4.0.1`` (``_fmt`` says ``8.2.0``)."""
    return _fmt_minor(version) + (f".{version % 1_000}" if version % 1_000 else "")


def _split_machine(machine: str) -> tuple[str, int]:
    """(kind, release) of a versioned machine type: ("pc-q35", 8002000) for pc-q35-8.2; ("", 0)
    for a name that is not one."""
    found = _MACHINE_VERSION_RE.search(machine)
    if found is None:
        return "", 0
    major, minor, micro = (int(x or 0) for x in found.groups())
    return machine[: found.start()], major * 1_000_000 + minor * 1_000 + micro


def machine_version(machine: str) -> int:
    """The QEMU release that brought a versioned machine type (libvirt's encoding), 0 for a name
    that is not one: an alias (``q35``, ``pc``), an unversioned machine (``microvm``) or a
    distribution's own (``pc-q35-rhel9.4.0``, ``pc-i440fx-jammy``), whose number is not QEMU's.
    Upstream QEMU adds one per release and architecture (pc-q35-8.2, pc-i440fx-8.2, virt-8.2,
    pseries-8.2, s390-ccw-virtio-8.2 came with QEMU 8.2; pc-q35-4.0.1 with the stable 4.0.1).

    >>> machine_version("pc-q35-8.2"), machine_version("pc-q35-4.0.1"), machine_version("virt-10.0")
    (8002000, 4000001, 10000000)
    >>> machine_version("q35"), machine_version("pc-q35-rhel9.4.0"), machine_version("pc-i440fx-1.5-saucy")
    (0, 0, 0)
    """
    return _split_machine(machine)[1]


def _newest_of_kind(machine: str, offered: tuple[str, ...]) -> str:
    """The newest versioned machine type of the same kind (pc-q35-*, virt-*) in ``offered``, "" if none.

    >>> _newest_of_kind("pc-q35-8.2", ("q35", "pc-q35-7.2", "pc-q35-8.0", "pc-i440fx-8.1"))
    'pc-q35-8.0'
    """
    kind = _split_machine(machine)[0]
    same = [(release, m) for m in offered for k, release in [_split_machine(m)] if kind and release and k == kind]
    return max(same)[1] if same else ""


def _judges_domain(domain: DomainInfo | None, source: HostFacts, target: HostFacts) -> bool:
    """Whether the hosts' QEMU facts are about the binary the domain runs: a domain naming another
    one than the hosts report (``HostFacts.emulator``) runs a QEMU whose machine types and version
    the inventory does not hold (the lab's guests run Debian 13's QEMU from their own path)."""
    if domain is None or not domain.emulator:
        return True
    reported = target.emulator or source.emulator
    return not reported or domain.emulator == reported


def qemu_blockers(source: HostFacts, target: HostFacts, domain: DomainInfo | None = None) -> list[Problem]:
    """Whether the target's QEMU can take the guest (pure). A live migration needs the guest's
    machine type on both sides, and with it QEMU migrates either way: to a newer release and to an
    older one (QEMU's "Backwards compatibility" migration docs: qemu-5.2 -> qemu-5.1 with pc-5.1 is
    supported, pc-5.2 on qemu-5.1 "not possible"). libvirt replaces an alias (``q35``) with the
    versioned name it stands for when the domain is defined, and a migration carries that name: the
    target's QEMU is started with it. Upstream QEMU adds one versioned machine type per release
    (pc-q35-8.2 exists from QEMU 8.2 on) and keeps the older ones for years (Debian 13's QEMU 10.0
    still runs pc-q35-2.4). So:

    1. The target reports its machine types (``HostFacts.machine_types``, libvirt's capabilities)
       and the guest's is known (``DomainInfo.machine``): it must be among them, else
       MACHINE_TYPE_MISSING. The versions add nothing then: an older QEMU that has the machine
       type takes the guest, and a newer one that lists it runs it.
    2. Otherwise (an agent from before these fields on the target or the source, or no domain),
       conservatively from the versions:

       =========================================  ====================  =======================
       the guest's machine type                   target QEMU           blocker
       =========================================  ====================  =======================
       versioned (pc-q35-X.Y)                     older than X.Y        MACHINE_TYPE_MISSING
       versioned (pc-q35-X.Y)                     6+ majors past X      VERSION_SKEW
       unknown or unversioned                     an older release      VERSION_TOO_OLD
                                                  than the source's
       unknown or unversioned                     6+ majors past the    VERSION_SKEW
                                                  source's
       =========================================  ====================  =======================

       An older release may lack a machine type the guest got from the source's newer QEMU; 6
       majors is QEMU's lifetime of a versioned machine type (``MACHINE_TYPE_LIFETIME_MAJORS``).

    A domain that names another QEMU binary than the one the hosts report is not judged
    (``_judges_domain``); neither are hosts whose QEMU version is not known.

    >>> f = lambda name, qemu, *types: HostFacts(name, name, qemu_version=qemu, machine_types=types)
    >>> g = DomainInfo("g1", "u", DomainState.RUNNING, machine="pc-q35-8.2")
    >>> [p.reason for p in qemu_blockers(f("h1", 8_002_000), f("h2", 8_000_000, "pc-q35-8.0", "q35"), g)]
    ['MACHINE_TYPE_MISSING']
    >>> qemu_blockers(f("h1", 8_002_000), f("h2", 8_000_000, "pc-q35-8.2"), g)  # an older QEMU that has it
    []
    >>> [p.reason for p in qemu_blockers(f("h1", 8_002_000), f("h2", 8_000_000))]  # not reported: versions
    ['VERSION_TOO_OLD']
    >>> qemu_blockers(f("h1", 7_002_000), f("h2", 10_000_000))  # Debian 12 -> 13
    []
    """
    s, t = source.qemu_version, target.qemu_version
    if not _judges_domain(domain, source, target):
        return []
    machine = domain.machine if domain is not None else ""
    vm = domain.name if domain is not None else "the guest"
    if machine and target.machine_types:
        if machine in target.machine_types:
            return []
        return [_machine_type_missing(vm, machine, target)]
    if not t:
        return []
    since = machine_version(machine)
    if since and t < since:
        return [_machine_type_missing(vm, machine, target)]
    if not target.machine_types:
        unreported = f"{target.hostname}'s agent does not report its machine types"
    else:
        unreported = f"{vm}'s machine type is not known" + (" (its agent does not report it)" if domain else "")
    upgrade = "upgrade Ferry's agents (they report the machine types, and preflight then checks the guest's)"
    if not since and s and _release(t) < _release(s):
        return [
            Problem(
                "VERSION_TOO_OLD",
                f"QEMU on {target.hostname} is {_fmt(t)}, an older release than {_fmt(s)} on {source.hostname}, "
                f"and {unreported}: {vm} may use a machine type newer than QEMU {_fmt_minor(t)}",
                f"pick a target with QEMU {_fmt_minor(s)} or newer, upgrade QEMU on {target.hostname}, or {upgrade}",
            )
        ]
    base, what = (since, f"{vm}'s machine type {machine}") if since else (s, f"QEMU {_fmt(s)} on {source.hostname}")
    if base and _major(t) - _major(base) >= MACHINE_TYPE_LIFETIME_MAJORS:
        return [
            Problem(
                "VERSION_SKEW",
                f"QEMU {_fmt(t)} on {target.hostname} is {_major(t) - _major(base)} major versions past {what}, "
                f"and {unreported}: QEMU removes versioned machine types 6 years after their release",
                f"{upgrade}, or migrate through a host with an intermediate QEMU",
            )
        ]
    return []


def _machine_type_missing(vm: str, machine: str, target: HostFacts) -> Problem:
    """MACHINE_TYPE_MISSING: the target's QEMU lacks the guest's machine type (it says so, or its
    version is older than the release that brought it), with the way out that fits."""
    host, t, since = target.hostname, target.qemu_version, machine_version(machine)
    qemu = f"QEMU {_fmt(t)} on {host}" if t else f"the QEMU on {host}"
    newest = _newest_of_kind(machine, target.machine_types)
    change = (
        f"give {vm} a machine type {host} has"
        + (f" (its newest of the kind: {newest})" if newest else "")
        + " and restart it cold (shut down, virsh edit, start)"
    )
    if since and (not t or t < since):
        return Problem(
            "MACHINE_TYPE_MISSING",
            f"{vm} runs machine type {machine}, which {qemu} does not have: it came with QEMU {_fmt_release(since)}",
            f"pick a target whose QEMU is {_fmt_release(since)} or newer, upgrade QEMU on {host} to "
            f"{_fmt_release(since)} or later, or {change}",
        )
    if since:
        return Problem(
            "MACHINE_TYPE_MISSING",
            f"{vm} runs machine type {machine}, which {qemu} no longer has (QEMU removes versioned machine "
            "types 6 years after their release)",
            f"pick a target whose QEMU still has {machine} (an older release), or {change}",
        )
    return Problem(
        "MACHINE_TYPE_MISSING",
        f"{vm} runs machine type {machine}, which {qemu} does not offer",
        f"pick a target whose QEMU offers {machine} (virsh capabilities lists them), or {change}",
    )


def libvirt_version_blockers(source: HostFacts, target: HostFacts) -> list[Problem]:
    """A target libvirt of an older major (VERSION_TOO_OLD), or more than ``MAX_MAJOR_SKEW``
    majors apart (VERSION_SKEW); unknown versions pass.

    >>> f = lambda name, libvirt: HostFacts(name, name, libvirt_version=libvirt)
    >>> [p.reason for p in libvirt_version_blockers(f("h1", 10_000_000), f("h2", 9_000_000))]
    ['VERSION_TOO_OLD']
    >>> libvirt_version_blockers(f("h1", 9_000_000), f("h2", 11_003_000))  # Debian 12 -> 13
    []
    """
    s, t = source.libvirt_version, target.libvirt_version
    if not s or not t:
        return []
    if t < s and _major(t) < _major(s):
        return [
            Problem(
                "VERSION_TOO_OLD",
                f"libvirt on {target.hostname} is {_fmt(t)}, older than {_fmt(s)} on {source.hostname}",
                f"upgrade libvirt on {target.hostname} or pick a target with libvirt >= {_fmt(s)}",
            )
        ]
    if abs(_major(t) - _major(s)) > MAX_MAJOR_SKEW:
        return [
            Problem(
                "VERSION_SKEW",
                f"libvirt {_fmt(s)} on {source.hostname} and {_fmt(t)} on {target.hostname} are more than "
                f"{MAX_MAJOR_SKEW} major versions apart",
                "migrate through a host with an intermediate libvirt version",
            )
        ]
    return []


def version_blockers(source: HostFacts, target: HostFacts, domain: DomainInfo | None = None) -> list[Problem]:
    """The target's QEMU against the guest (``qemu_blockers``: its machine type, or without it the
    QEMU versions), then its libvirt against the source's (``libvirt_version_blockers``)."""
    return [*qemu_blockers(source, target, domain), *libvirt_version_blockers(source, target)]


def shared_host_uuid(source: str, sf: HostFacts | None, target: str, tf: HostFacts | None) -> Problem | None:
    """Two hosts whose libvirtds report one host UUID: libvirt takes them for one machine and
    refuses to migrate between them ("Attempt to migrate guest to the same host"). Cloned
    installs and boards whose firmware gives every machine the same UUID do this.

    >>> a, b = HostFacts("h1", "5e1f"), HostFacts("h2", "5E1F")
    >>> shared_host_uuid("h1", a, "h2", b).reason, shared_host_uuid("h1", a, "h2", HostFacts("h2", "77ab"))
    ('HOST_UUID_SHARED', None)
    """
    if sf is None or tf is None or not sf.host_uuid or source == target:
        return None
    if sf.host_uuid.lower() != tf.host_uuid.lower():
        return None
    return Problem(
        "HOST_UUID_SHARED",
        f"{source} and {target} report the same libvirt host UUID {sf.host_uuid}: libvirt takes them for one "
        "machine and refuses to migrate between them",
        f'give one of them its own UUID: host_uuid = "<output of uuidgen>" in /etc/libvirt/libvirtd.conf, then '
        f"restart libvirtd there (cloned installs and some firmware share one); or pick another target than {target}",
    )


def shared_host_uuids(uuids: Mapping[str, str]) -> dict[str, list[str]]:
    """Host -> the other hosts reporting its libvirt host UUID (hosts with one of their own are
    left out; an empty UUID is nobody's).

    >>> shared_host_uuids({"h1": "a", "h2": "b", "h3": "A", "h4": ""})
    {'h1': ['h3'], 'h3': ['h1']}
    """
    by_uuid: dict[str, list[str]] = {}
    for host, uuid in sorted(uuids.items()):
        if uuid:
            by_uuid.setdefault(uuid.lower(), []).append(host)
    return {h: [o for o in group if o != h] for group in by_uuid.values() if len(group) > 1 for h in group}


def tls_blockers(source: HostView, target: HostView) -> list[Problem]:
    """A host that cannot encrypt the migration stream (its agent reports why) blocks: Ferry does
    not fall back to a plaintext stream.

    >>> ok = HostView("h1", True, HostFacts("h1", "u1"))
    >>> bad = HostView("h2", True, HostFacts("h2", "u2", migration_tls_problem="no certificates"))
    >>> [p.reason for p in tls_blockers(ok, bad)], tls_blockers(ok, ok)
    (['MIGRATION_TLS_MISSING'], [])
    """
    out = []
    for view in (source, target):
        problem = view.facts.migration_tls_problem if view.facts is not None else ""
        if problem:
            out.append(
                Problem(
                    "MIGRATION_TLS_MISSING",
                    f"{view.name} cannot encrypt the migration stream safely: {problem}",
                    f"install QEMU's migration certificates on {view.name}, from a CA that signs the hypervisors "
                    "only (qemu.conf migrate_tls_x509_cert_dir, the agent's migration_tls_dir); its agent looks "
                    "again at each inventory",
                )
            )
    return out


def effective_storage(domain: DomainInfo, options: MigrationOptions, explicit: bool) -> StorageMode:
    """The storage mode to use: the caller's, or (auto) copy-all when a writable disk is local."""
    if explicit:
        return options.storage
    local = [d for d in domain.disks if d.source and not d.readonly and d.device == "disk" and not d.shared]
    return StorageMode.COPY_ALL if local else StorageMode.SHARED


def offline_disk_blockers(domain: DomainInfo, source_name: str) -> list[Problem]:
    """An offline migration moves the definition only: libvirt refuses to copy storage then
    ("offline migration cannot handle non-shared storage"), and a local disk left behind would
    leave the target's definition without its disk. So every writable local disk blocks it."""
    return [
        Problem(
            "OFFLINE_LOCAL_DISK",
            f"disk {d.target} ({d.source}) is on local storage of {source_name}; an offline migration "
            "moves only the definition and cannot copy disks",
            "start the VM and migrate it live with --copy-storage-all, or move the disk to shared storage first",
        )
        for d in _local_writable(domain)
    ]


def _local_writable(domain: DomainInfo) -> list[Disk]:
    return [d for d in domain.disks if d.device == "disk" and d.source and not d.readonly and not d.shared]


def state_words(state: DomainState) -> str:
    """A domain state as virsh says it: ``shut off``, ``paused``, ``crashed``."""
    return "shut off" if state is DomainState.SHUTOFF else state.name.lower()


def vm_blockers(domain: DomainInfo, source_name: str, options: MigrationOptions) -> list[Problem]:
    """What the VM itself blocks, whatever the target: a live migration of a guest not running, an
    offline one of a transient guest or of local disks. A submission is refused with the first one
    (no host could take it); preflight lists them with the target's.

    >>> [p.message for p in vm_blockers(DomainInfo("g1", "u-1", DomainState.SHUTOFF), "host1", MigrationOptions())]
    ['g1 is shut off on host1; a live migration needs a running VM']
    """
    out = []
    if not options.offline and domain.state not in (DomainState.RUNNING, DomainState.PAUSED, DomainState.BLOCKED):
        local = [d.target for d in _local_writable(domain)]
        out.append(
            Problem(
                "VM_NOT_RUNNING",
                f"{domain.name} is {state_words(domain.state)} on {source_name}; a live migration needs a running VM",
                f"start it (virsh start {domain.name} on {source_name}) and migrate it live; --offline moves only "
                f"the definition and cannot copy its local disk{'s' if len(local) > 1 else ''} {', '.join(local)}"
                if local
                else "start it, or migrate with --offline",
            )
        )
    if options.offline and not domain.persistent:
        out.append(
            Problem(
                "VM_TRANSIENT",
                f"{domain.name} has no persistent definition to migrate offline",
                "define it first (virsh dumpxml | virsh define) or migrate live",
            )
        )
    if options.offline:
        out.extend(offline_disk_blockers(domain, source_name))
    return out


def coordinator_blockers(
    vm: str,
    domain: DomainInfo | None,
    source: HostView | None,
    target_name: str,
    target: HostView | None,
    options: MigrationOptions,
    storage: StorageMode,
) -> list[Problem]:
    """Every blocker visible from the inventory alone. Empty = go on to the agents' checks."""
    out: list[Problem] = []
    if target is None:
        out.append(
            Problem(
                "TARGET_UNKNOWN",
                f"no host named {target_name!r} is registered",
                "check the name with `ferry hosts`; its agent must be running",
            )
        )
    elif not target.available:
        out.append(host_down(target_name, target.why_down))
    if domain is None or source is None:
        out.append(Problem("VM_UNKNOWN", f"no host reports a VM named {vm!r}", "check the name with `ferry vms`"))
        return out
    if source.name == target_name:
        out.append(Problem("SAME_HOST", f"{vm} already runs on {target_name}", "pick another target host"))
    out.extend(vm_blockers(domain, source.name, options))
    if not source.available:
        out.append(host_down(source.name, source.why_down, target=False))
    tf = target.facts if target is not None else None
    if tf is not None and tf.libvirt_uri_problem:
        out.append(
            Problem(
                "TARGET_URI_MISMATCH",
                f"{target_name} cannot be migrated to: {tf.libvirt_uri_problem}",
                f"set advertise_libvirt_uri in {target_name}'s agent config to the URI of its own libvirtd (its "
                "agent reports this from opening that URI), then restart that agent",
            )
        )
    if target is not None and not options.offline:
        out.extend(tls_blockers(source, target))
    if tf is not None and source.facts is not None:
        shared = shared_host_uuid(source.name, source.facts, target_name, tf)
        if shared is not None:
            out.append(shared)
        out.extend(version_blockers(source.facts, tf, domain))
        if tf.arch and source.facts.arch and tf.arch != source.facts.arch:
            out.append(
                Problem(
                    "ARCH_MISMATCH",
                    f"{source.name} is {source.facts.arch}, {target_name} is {tf.arch}",
                    "pick a target of the same architecture",
                )
            )
    if tf is not None and not options.offline and tf.memory_free_bytes and domain.memory_bytes > tf.memory_free_bytes:
        out.append(
            Problem(
                "INSUFFICIENT_MEMORY",
                f"{vm} needs {domain.memory_bytes >> 20} MiB, {target_name} has {tf.memory_free_bytes >> 20} MiB free",
                "free memory on the target or pick another",
            )
        )
    if storage == StorageMode.SHARED and not options.unsafe and not options.offline:
        for d in domain.disks:
            if d.device != "disk" or not d.source or d.readonly:
                continue
            if not d.shared:
                out.append(
                    Problem(
                        "DISK_NOT_SHARED",
                        f"disk {d.target} ({d.source}) is on local storage of {source.name}",
                        "copy it: --copy-storage-all (or --copy-storage-inc)",
                    )
                )
            elif d.shared_unknown_to_libvirt:
                out.append(
                    Problem(
                        "MIGRATION_UNSAFE",
                        f"disk {d.target} ({d.source}) is on storage Ferry takes for shared ({source.name}'s "
                        "shared_dirs) on a file system libvirt does not: libvirt would refuse the migration as unsafe",
                        "pass --unsafe if both hosts see the same coherent storage there; else copy it "
                        "(--copy-storage-all)",
                    )
                )
            elif (d.cache or "default") not in SAFE_SHARED_CACHE:
                out.append(
                    Problem(
                        "UNSAFE_CACHE",
                        f"disk {d.target} uses cache={d.cache or 'default'} on shared storage; "
                        "the target could read stale data",
                        "set cache='none' on the disk, or pass --unsafe if the storage is coherent",
                    )
                )
    if storage != StorageMode.SHARED and options.migrate_disks:
        known = {d.target for d in domain.disks}
        for dev in options.migrate_disks:
            if dev not in known:
                out.append(
                    Problem(
                        "UNKNOWN_DISK",
                        f"{vm} has no disk {dev}",
                        f"--migrate-disks takes some of: {', '.join(sorted(known)) or 'none'}",
                    )
                )
    return out


def host_cpu_blockers(
    vm: str, domain: DomainInfo | None, source: HostFacts | None, target: HostFacts | None
) -> list[Problem]:
    """A host-passthrough (or maximum) guest sees its host's CPU as it is: it can only move to a
    host with the same CPU model and at least the same features (pure; unknown facts pass)."""
    if domain is None or domain.cpu_mode not in HOST_CPU_MODES or source is None or target is None:
        return []
    missing = sorted(set(source.cpu_features) - set(target.cpu_features))
    if source.cpu_model == target.cpu_model and not missing:
        return []
    lacks = ""
    if missing:
        shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
        lacks = f"; {target.hostname} lacks {shown}"
    return [
        Problem(
            "CPU_INCOMPATIBLE",
            f"{vm} runs on its host's own CPU ({domain.cpu_mode}): {source.hostname} has a {source.cpu_model or '?'} "
            f"CPU, {target.hostname} a {target.cpu_model or '?'}{lacks}",
            "move host-passthrough guests only between hosts with the same CPU model and features, or give the "
            "guest a CPU model every host offers (a baseline: virsh hypervisor-cpu-baseline) and restart it",
        )
    ]


# QEMU under TCG before 9.0 loses guest memory writes during a live migration: the fast path of
# its dirty-bitmap sync cleared the migration bits without making TCG's TLB trap the next write to
# those pages (fixed by QEMU commit 03bfc2188f, "physmem: Fix migration dirty bitmap coherency with
# TCG memory access", in 9.0). In the lab (QEMU 7.2, Debian 12) a guest that writes memory crashed
# on the target after most capped migrations; QEMU 10.0 (Debian 13) never did.
TCG_MIGRATION_FIXED_QEMU = 9_000_000


def tcg_migration_warnings(domain: DomainInfo, source: HostView | None) -> list[str]:
    """A warning for a TCG guest (domain type qemu) run by the host's own QEMU older than 9.0
    (pure). A domain naming another emulator than the host's qemu-system binary is not judged:
    its version is not in the host facts.

    >>> from dataclasses import replace
    >>> d = DomainInfo("g1", "u", DomainState.RUNNING, os_type="qemu", emulator="/usr/bin/qemu-system-x86_64")
    >>> old = HostView("h1", True, HostFacts("h1", "x", qemu_version=7_002_022, arch="x86_64"))
    >>> tcg_migration_warnings(d, old)[0][:60]
    'g1 runs under TCG on QEMU 7.2.22, which loses guest memory w'
    >>> tcg_migration_warnings(replace(d, os_type="kvm"), old)
    []
    >>> tcg_migration_warnings(replace(d, emulator="/opt/qemu-10/bin/qemu-system-x86_64"), old)
    []
    """
    if domain.os_type != "qemu" or source is None or source.facts is None:
        return []
    version = source.facts.qemu_version
    standard = {"", f"/usr/bin/qemu-system-{source.facts.arch}", "/usr/bin/qemu-system-x86_64"}
    if not version or version >= TCG_MIGRATION_FIXED_QEMU or domain.emulator not in standard:
        return []
    return [
        f"{domain.name} runs under TCG on QEMU {_fmt(version)}, which loses guest memory writes during live "
        "migration (fixed in QEMU 9.0): the guest may crash on the target; use KVM or QEMU 9.0 or later"
    ]


@dataclass(frozen=True)
class HostHealth:
    """One host as the metrics show it (``host_refusals``)."""

    name: str
    up: bool
    refusals: tuple[str, ...] = ()


def host_refusals(facts_by_host: Mapping[str, HostFacts | None]) -> dict[str, tuple[str, ...]]:
    """Host -> the reasons preflight refuses any migration to it, from its last facts.

    >>> f = lambda u, **kw: HostFacts("h", u, **kw)
    >>> host_refusals({"h1": f("a"), "h2": f("a", libvirt_uri_problem="x"), "h3": f("b"), "h4": None})
    {'h1': ('HOST_UUID_SHARED',), 'h2': ('TARGET_URI_MISMATCH', 'HOST_UUID_SHARED'), 'h3': (), 'h4': ()}
    """
    twins = shared_host_uuids({h: f.host_uuid for h, f in facts_by_host.items() if f is not None})
    out: dict[str, tuple[str, ...]] = {}
    for host, f in facts_by_host.items():
        reasons = []
        if f is not None and f.migration_tls_problem:
            reasons.append("MIGRATION_TLS_MISSING")
        if f is not None and f.libvirt_uri_problem:
            reasons.append("TARGET_URI_MISMATCH")
        if twins.get(host):
            reasons.append("HOST_UUID_SHARED")
        out[host] = tuple(reasons)
    return out
