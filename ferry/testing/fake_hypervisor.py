"""An in-memory Hypervisor for component tests and fleet simulation.

It behaves like ``LibvirtHypervisor`` where the agent can tell: domains are read from their XML
through ``domxml`` (as the real adapter does), errors are built through the same libvirt error
table (``libvirt_errors.translate``) for the same situations, and a migration is a job that
advances step by step -- disk mirror, pre-copy iterations against a dirty rate, post-copy,
switch-over -- and moves the domain to the target ``FakeHypervisor`` of the same ``FakeFleet``.

Time: each step is ``step_ms`` of simulated time and takes ``step_s`` of real time (quick;
kept on schedule when the event loop wakes a step late: ``next_step_at``);
``hold()`` / ``release()`` stop and restart every job between steps, so a test can act
mid-migration deterministically. Failure injection: ``fail(method, error)``, ``hang(method)``
and ``fail_migration(name, at_step, code)``.
"""

from __future__ import annotations

import asyncio
import re
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ferry.agent import libvirt_errors as le
from ferry.agent import probe
from ferry.agent.domxml import ParsedDomain, parse_disks, parse_domain, parse_nics
from ferry.agent.target_checks import cpu_check_failed
from ferry.convergence import ConvergencePolicy
from ferry.errors import FerryError
from ferry.model import (
    HOST_CPU_MODES,
    Disk,
    DomainInfo,
    DomainState,
    HostFacts,
    JobStats,
    MigrationOptions,
    Nic,
    StorageMode,
)
from ferry.paths import LIBVIRT_SHARED_FS_TYPES
from ferry.testing.fake_hostsystem import FakeHostSystem, FakeImage

MiB = 1 << 20
GiB = 1 << 30

# file systems libvirt trusts for migration without copying (virFileIsSharedFS / IsClusterFS)
_SHARED_FS = LIBVIRT_SHARED_FS_TYPES
_CLUSTER_FS = frozenset({"gfs2", "ocfs2"})

# CPU models the fake knows, with the features each requires (a small excerpt of QEMU's)
CPU_MODELS: dict[str, tuple[str, ...]] = {
    "qemu64": (
        "fpu",
        "pae",
        "cx8",
        "apic",
        "sep",
        "cmov",
        "mmx",
        "fxsr",
        "sse",
        "sse2",
        "pni",
        "cx16",
        "lm",
        "syscall",
        "nx",
    ),
    "Haswell-noTSX": (
        "fpu",
        "pae",
        "cx8",
        "apic",
        "sep",
        "cmov",
        "mmx",
        "fxsr",
        "sse",
        "sse2",
        "pni",
        "cx16",
        "lm",
        "syscall",
        "nx",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "aes",
        "avx",
        "avx2",
        "fma",
    ),
    "Skylake-Server": (
        "fpu",
        "pae",
        "cx8",
        "apic",
        "sep",
        "cmov",
        "mmx",
        "fxsr",
        "sse",
        "sse2",
        "pni",
        "cx16",
        "lm",
        "syscall",
        "nx",
        "ssse3",
        "sse4.1",
        "sse4.2",
        "popcnt",
        "aes",
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512dq",
        "avx512cd",
        "avx512bw",
        "avx512vl",
    ),
}
# what a fake host's CPU offers unless a test says otherwise: Haswell-class, no AVX-512
DEFAULT_CPU_FEATURES = frozenset(CPU_MODELS["Haswell-noTSX"])

# A fake host's QEMU unless a test says otherwise: Debian 12's 7.2, with the x86_64 machine types
# its capabilities list (`qemu-system-x86_64 -machine help`): one pc-i440fx-X.Y per release from 1.4
# and one pc-q35-X.Y from 2.4 (and 4.0.1) up to 7.2, the aliases pc and q35 of the newest, and the
# unversioned ones. A domain defined without a machine type gets QEMU's default, as libvirt fills it in.
DEFAULT_QEMU_VERSION = 7_002_000
DEFAULT_EMULATOR = "/usr/bin/qemu-system-x86_64"
_RELEASES = [
    f"{major}.{minor}"
    for major, last in ((1, 7), (2, 12), (3, 1), (4, 2), (5, 2), (6, 2), (7, 2))
    for minor in range(last + 1)
]
DEFAULT_MACHINE_TYPES: tuple[str, ...] = (
    "microvm",
    "pc",
    *(f"pc-i440fx-{r}" for r in _RELEASES[_RELEASES.index("1.4") :]),
    "q35",
    *(f"pc-q35-{r}" for r in _RELEASES[_RELEASES.index("2.4") :]),
    "pc-q35-4.0.1",
    "isapc",
    "none",
    "x-remote",
)
MACHINE_ALIASES = {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2", "": "pc-i440fx-7.2"}  # "" = QEMU's default


def make_domain_xml(
    name: str,
    *,
    uuid: str = "",
    memory_bytes: int = 256 * MiB,
    vcpus: int = 1,
    disks: Iterable[tuple[str, str, str]] = (),
    bridges: Iterable[str] = (),
    networks: Iterable[str] = (),
    domain_type: str = "qemu",
    cpu: str = "",
) -> str:
    """A small libvirt domain definition: disks as (target, path, format), NICs on bridges/networks,
    ``cpu`` a ``<cpu>`` element (none: the hypervisor's default CPU)."""
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}' cache='none'/>"
        f"<source file='{path}'/><target dev='{target}' bus='virtio'/></disk>"
        for target, path, fmt in disks
    )
    nic_xml = "".join(
        f"<interface type='bridge'><mac address='52:54:00:00:00:{i:02x}'/><source bridge='{b}'/>"
        f"<model type='virtio'/></interface>"
        for i, b in enumerate(bridges)
    )
    nic_xml += "".join(
        f"<interface type='network'><mac address='52:54:00:00:01:{i:02x}'/><source network='{n}'/>"
        f"<model type='virtio'/></interface>"
        for i, n in enumerate(networks)
    )
    return (
        f"<domain type='{domain_type}'><name>{name}</name><uuid>{uuid or uuidlib.uuid4()}</uuid>"
        f"<memory unit='KiB'>{memory_bytes // 1024}</memory><vcpu>{vcpus}</vcpu>"
        f"<os><type arch='x86_64'>hvm</type></os>{cpu}"
        f"<devices>{disk_xml}{nic_xml}</devices></domain>"
    )


def next_step_at(previous: float, step_s: float, now: float) -> float:
    """When a job's next step is due: ``step_s`` after the previous one, so that a busy event
    loop waking a step late does not make the whole job late (a job of n steps takes n * step_s,
    as a fleet simulation's estimates assume); a job behind by a step or more (held, or the loop
    stalled) takes its next step a full ``step_s`` from now, not a burst of steps at once.

    >>> next_step_at(10.0, 0.5, 10.02)   # the previous step woke 20 ms late: 480 ms to the next
    10.5
    >>> next_step_at(10.0, 0.5, 10.9)    # behind (held for a while): a whole step from now
    11.4
    """
    due = previous + step_s
    return due if due > now else now + step_s


@dataclass
class FakeDomain:
    xml: str
    state: DomainState
    persistent: bool = True
    dirty_bytes_per_s: int = 0  # how fast the guest dirties memory
    completed: JobStats | None = None
    max_downtime_ms: int = 300  # migration parameters for the next job (libvirt keeps them too)
    bandwidth_mibps: int = 0
    #: PAUSED by libvirt for a migration: a test puts an unfinished incoming domain on a host with it
    #: (the fake's own migrations land in one step and never show one)
    paused_by_libvirt: bool = False

    @property
    def name(self) -> str:
        return self.parsed.name

    @property
    def uuid(self) -> str:
        return self.parsed.uuid

    # the parse of ``xml`` (the XML it was made from, what it found): every lookup by name or UUID
    # reads these, a fleet simulation thousands of times a second; parsed again when xml changes
    _parsed: tuple[str, ParsedDomain, tuple[Disk, ...], tuple[Nic, ...]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def _parse(self) -> tuple[str, ParsedDomain, tuple[Disk, ...], tuple[Nic, ...]]:
        xml = self.xml
        if self._parsed is None or self._parsed[0] is not xml:
            self._parsed = (xml, parse_domain(xml), tuple(parse_disks(xml)), tuple(parse_nics(xml)))
        return self._parsed

    @property
    def parsed(self) -> ParsedDomain:
        return self._parse()[1]

    @property
    def disks(self) -> tuple[Disk, ...]:
        return self._parse()[2]

    @property
    def nics(self) -> tuple[Nic, ...]:
        return self._parse()[3]


@dataclass
class _Job:
    domain: FakeDomain
    target: FakeHypervisor
    options: MigrationOptions
    migrate_disks: list[str]
    destination_xml: str
    stats: JobStats
    max_downtime_ms: int = 300
    bandwidth_bps: int = GiB
    # the disk copy's speed, set once at the start: libvirt cannot change it while the migration
    # runs (migrate-setspeed changes the memory's only); 0: the start's bandwidth_bps
    mirror_bps: int = 0
    throttle: int = 0
    dirtied: int = 0
    step: int = 0
    abort: bool = False
    # set with ``abort`` (``request_abort``): wakes a job held between steps, so that an abort
    # is acted on even while jobs are held
    aborted: asyncio.Event = field(default_factory=asyncio.Event)
    postcopy: bool = False
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def request_abort(self) -> None:
        self.abort = True
        self.aborted.set()


class FakeFleet:
    """The fake hypervisors that can reach each other, by libvirt URI.

    Name resolution: an IP address is itself; a name in ``names`` has those addresses; the host
    name of a member's URI resolves (to itself); anything else does not resolve.
    """

    def __init__(self) -> None:
        self.hosts: dict[str, FakeHypervisor] = {}
        self.names: dict[str, list[str]] = {}
        # the files on the shared storage every member mounts (FakeHostSystem's ``shared_files``)
        self.shared_files: dict[str, FakeImage | int] = {}

    def resolve(self, host: str) -> list[str]:
        if probe.is_ip_address(host) or any(probe.parse_peer_uri(uri).host == host for uri in self.hosts):
            return self.names.get(host, [host])
        if host in self.names:
            return list(self.names[host])
        raise OSError(-2, "Name or service not known")

    def listening(self, address: str, port: int) -> FakeHypervisor | None:
        """The member whose libvirtd would answer a TCP connection to ``address:port``."""
        for uri, hv in self.hosts.items():
            peer = probe.parse_peer_uri(uri)
            if peer.port == port and address in ([peer.host] + self.names.get(peer.host, [])):
                return hv
        return None


class FakeHypervisor:
    """Domains, jobs and faults of one fake libvirt host (see the module docstring)."""

    def __init__(
        self,
        *,
        hostname: str = "fake1",
        uri: str = "",
        fleet: FakeFleet | None = None,
        host: FakeHostSystem | None = None,
        timeout_s: float = 30.0,
        step_s: float = 0.005,
        step_ms: int = 100,
        host_uuid: str = "",
        networks: Iterable[str] = (),
        memory_total_bytes: int = 16 * GiB,
        cpus: int = 4,
        cpu_features: Iterable[str] = DEFAULT_CPU_FEATURES,
    ) -> None:
        self.hostname = hostname
        self.uri = uri or f"qemu+tcp://{hostname}/system"
        self.fleet = fleet or FakeFleet()
        self.fleet.hosts[self.uri] = self
        self.host = host
        self.timeout_s = timeout_s
        self.step_s = step_s
        self.leaves_source_definition = False  # libvirt keeps the source definition despite UNDEFINE_SOURCE
        # ... and that copy still stops: paused for this many lookups of it, then shut off
        self.leftover_stops_after_lookups = 0
        self._stopping: dict[str, int] = {}  # uuid -> lookups left before the copy is shut off
        self.step_ms = step_ms
        self.host_uuid = host_uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, hostname))
        self.networks = list(networks)
        self.memory_total_bytes = memory_total_bytes
        self.cpus = cpus
        self.cpu_features: set[str] = set(cpu_features)  # what this host's CPU offers (settable)
        # its default QEMU (settable): its version and the machine types it offers
        self.qemu_version = DEFAULT_QEMU_VERSION
        self.machine_types: tuple[str, ...] = DEFAULT_MACHINE_TYPES
        self.domains: dict[str, FakeDomain] = {}  # by UUID
        self.disk_sizes: dict[str, tuple[int, int]] = {}  # path -> (virtual size, allocation)
        self.jobs: dict[str, _Job] = {}  # by domain UUID
        self.calls: list[str] = []
        # (options, policy, resume) of every migrate call, for tests
        self.migrate_calls: list[tuple[MigrationOptions, ConvergencePolicy | None, bool]] = []
        self.reachable = True
        self._faults: dict[str, list[FerryError]] = {}
        self._hangs: set[str] = set()
        self._call_gates: dict[str, asyncio.Event] = {}
        self._failures: dict[str, tuple[int, int]] = {}  # domain name -> (step, libvirt code)
        self._gate = asyncio.Event()
        self._gate.set()

    # ------------------------------------------------------------------ set-up and faults

    def add_domain(
        self, xml: str, *, state: DomainState = DomainState.RUNNING, persistent: bool = True, dirty_bytes_per_s: int = 0
    ) -> DomainInfo:
        dom = FakeDomain(xml, state, persistent, dirty_bytes_per_s)
        self.domains[dom.uuid] = dom
        return self._info(dom)

    def fail(self, method: str, error: FerryError, times: int = 1) -> None:
        """The next ``times`` calls of ``method`` raise ``error``."""
        self._faults.setdefault(method, []).extend([error] * times)

    def hang(self, method: str) -> None:
        """Calls of ``method`` block until their timeout, like a hung libvirtd."""
        self._hangs.add(method)

    def hold_calls(self, method: str) -> asyncio.Event:
        """Calls of ``method`` wait, once entered, until the returned event is set."""
        gate = self._call_gates[method] = asyncio.Event()
        return gate

    def fail_migration(self, name: str, *, at_step: int = 1, code: int = le.VIR_ERR_OPERATION_FAILED) -> None:
        """The next migration of ``name`` fails at ``at_step`` with libvirt error ``code``."""
        self._failures[name] = (at_step, code)

    def hold(self) -> None:
        """Stop every migration job between two steps (until ``release``)."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def set_dirty_rate(self, name: str, bytes_per_s: int) -> None:
        self._lookup(name, "setDirtyRate").dirty_bytes_per_s = bytes_per_s

    # ------------------------------------------------------------------ helpers

    def _error(
        self,
        code: int,
        message: str,
        call: str,
        *,
        domain: int = le.VIR_FROM_QEMU,
        peer: str = "",
        peer_unreachable: bool = False,
        same_host_uuid: bool = False,
    ) -> FerryError:
        return le.translate(
            code,
            domain,
            message,
            call=call,
            host=self.uri,
            peer=peer,
            peer_unreachable=peer_unreachable,
            same_host_uuid=same_host_uuid,
        )

    async def _enter(self, method: str, call: str) -> None:
        self.calls.append(method)
        if not self.reachable:
            raise self._error(
                le.VIR_ERR_SYSTEM_ERROR, "unable to connect to server: Connection refused", call, domain=le.VIR_FROM_RPC
            )
        gate = self._call_gates.get(method)
        if gate is not None:
            await gate.wait()
        if method in self._hangs:
            await asyncio.sleep(self.timeout_s)
            raise le.timeout_error(call, self.uri, self.timeout_s)
        faults = self._faults.get(method)
        if faults:
            raise faults.pop(0)

    def _lookup(self, name_or_uuid: str, call: str) -> FakeDomain:
        dom = self.domains.get(name_or_uuid) or next((d for d in self.domains.values() if d.name == name_or_uuid), None)
        if dom is None:
            raise self._error(
                le.VIR_ERR_NO_DOMAIN, f"Domain not found: no domain with matching name or uuid '{name_or_uuid}'", call
            )
        return dom

    def _size(self, path: str) -> tuple[int, int]:
        if path in self.disk_sizes:
            return self.disk_sizes[path]
        entry = self.host.files.get(path) if self.host is not None else None
        if isinstance(entry, FakeImage):
            return entry.virtual_size, entry.allocated
        if isinstance(entry, int):
            return entry, entry
        return 0, 0

    def _info(self, dom: FakeDomain) -> DomainInfo:
        parsed = dom.parsed
        disks = tuple(
            replace(d, virtual_size=self._size(d.source)[0], allocation=self._size(d.source)[1]) if d.source else d
            for d in dom.disks
        )
        return DomainInfo(
            name=parsed.name,
            uuid=parsed.uuid,
            state=dom.state,
            memory_bytes=parsed.memory_bytes,
            vcpus=parsed.vcpus,
            persistent=dom.persistent,
            disks=disks,
            nics=dom.nics,
            cpu_mode=parsed.cpu_mode,
            cpu_model=parsed.cpu_model,
            os_type=parsed.domain_type,
            emulator=parsed.emulator,
            machine=MACHINE_ALIASES.get(parsed.machine, parsed.machine),  # canonical, as libvirt stores it
            paused_by_libvirt=dom.paused_by_libvirt and dom.state is DomainState.PAUSED,
        )

    # ------------------------------------------------------------------ port: reading

    async def host_facts(self) -> HostFacts:
        await self._enter("host_facts", "getCapabilities")
        used = sum(d.parsed.memory_bytes for d in self.domains.values() if d.state.is_active)
        return HostFacts(
            hostname=self.hostname,
            host_uuid=self.host_uuid,
            libvirt_version=9_000_000,
            qemu_version=self.qemu_version,
            cpu_model="qemu64",
            arch="x86_64",
            cpu_features=tuple(sorted(self.cpu_features)),
            cpus=self.cpus,
            memory_total_bytes=self.memory_total_bytes,
            memory_free_bytes=self.memory_total_bytes - used,
            networks=tuple(self.networks),
            machine_types=self.machine_types,
            emulator=DEFAULT_EMULATOR,
        )

    async def ping(self, timeout_s: float | None = None) -> None:
        await self._enter("ping", "getLibVersion")

    async def list_domains(self) -> list[DomainInfo]:
        await self._enter("list_domains", "listAllDomains")
        return sorted((self._info(d) for d in self.domains.values()), key=lambda d: d.name)

    async def get_domain(self, name_or_uuid: str) -> DomainInfo:
        await self._enter("get_domain", "lookupByName")
        return self._info(self._lookup(name_or_uuid, "lookupByName"))

    async def find_domain(self, *, name: str = "", uuid: str = "") -> DomainInfo | None:
        await self._enter("find_domain", "lookupByUUIDString" if uuid else "lookupByName")
        for dom in self.domains.values():
            if (uuid and dom.uuid == uuid) or (not uuid and name and dom.name == name):
                if dom.uuid in self._stopping:  # a migrated copy libvirt still stops
                    self._stopping[dom.uuid] -= 1
                    if self._stopping[dom.uuid] < 0:
                        del self._stopping[dom.uuid]
                        dom.state = DomainState.SHUTOFF
                return self._info(dom)
        return None

    async def domain_xml(self, name_or_uuid: str, *, migratable: bool = True, secure: bool = True) -> str:
        await self._enter("domain_xml", "XMLDesc")
        xml = self._lookup(name_or_uuid, "XMLDesc").xml
        if secure:
            return xml
        # as libvirt without VIR_DOMAIN_XML_SECURE: no graphics passwords
        return re.sub(r"""(<graphics\b[^>]*?)\s+passwd=(?:'[^']*'|"[^"]*")""", r"\1", xml)

    async def job_stats(self, name_or_uuid: str, *, completed: bool = False) -> JobStats:
        await self._enter("job_stats", "jobStats")
        dom = self._lookup(name_or_uuid, "jobStats")
        if completed:
            return dom.completed or JobStats()
        if not dom.state.is_active:
            return JobStats()  # a domain that does not run has no job (the real adapter says so too)
        job = self.jobs.get(dom.uuid)
        if job is None:
            return JobStats()
        s = job.stats
        if s.disk_total and s.memory_processed == 0 and not s.postcopy:
            # as libvirt's: while the disks are mirrored, memory has not started and its figures are 0
            return replace(s, memory_total=0, memory_remaining=0)
        return s

    def _remote(self, target_uri: str) -> FakeHypervisor:
        """The fake at ``target_uri``, as a connection to it opens: libvirt's RPC error when
        there is none or it is unreachable."""
        target = self.fleet.hosts.get(target_uri)
        if target is None or not target.reachable:
            raise le.translate(
                le.VIR_ERR_SYSTEM_ERROR, le.VIR_FROM_RPC, "unable to connect to server", call="open", host=target_uri
            )
        return target

    async def remote_completed_job(self, target_uri: str, name_or_uuid: str) -> JobStats:
        await self._enter("remote_completed_job", "jobStats")
        target = self._remote(target_uri)
        return await target.job_stats(name_or_uuid, completed=True)

    async def remote_host_uuid(self, uri: str) -> str:
        await self._enter("remote_host_uuid", "getCapabilities")
        return self._remote(uri).host_uuid

    # ------------------------------------------------------------------ port: CPU and peers

    async def compare_cpu(self, cpu_xml: str, *, arch: str, machine: str, virttype: str, emulator: str) -> str:
        """As libvirt: a model's features plus the required ones must all be on this host's CPU
        (``cpu_features``); an unknown model cannot be compared; a CPU copied from the host
        (host-passthrough) compares as a superset."""
        await self._enter("compare_cpu", "compareHypervisorCPU")
        cpu = ET.fromstring(cpu_xml)
        if cpu.get("mode") in HOST_CPU_MODES or cpu.get("mode") == "host-model":
            return ""
        model = (cpu.findtext("model") or "").strip()
        if model not in CPU_MODELS:
            raise cpu_check_failed(self.uri, f"internal error: Unknown CPU model {model}")
        dropped = {f.get("name", "") for f in cpu.iterfind("feature") if f.get("policy") in ("disable", "forbid")}
        wanted = [
            *CPU_MODELS[model],
            *(f.get("name", "") for f in cpu.iterfind("feature") if f.get("policy", "require") == "require"),
        ]
        missing = [f for f in dict.fromkeys(wanted) if f not in dropped and f not in self.cpu_features]
        return f"Host CPU does not provide required features: {', '.join(missing)}" if missing else ""

    async def probe_peer(self, uri: str, *, migration_address: str = "") -> int:
        """The probe's steps over the fleet: names per ``FakeFleet.resolve``; a TCP connection
        opens to a reachable member's libvirtd port, is refused by an unreachable one, and
        times out anywhere else; the libvirt open succeeds on a reachable member."""
        await self._enter("probe_peer", "open")

        async def resolve(host: str, _port: int) -> list[str]:
            return self.fleet.resolve(host)

        async def connect(address: str, port: int) -> None:
            member = self.fleet.listening(address, port)
            if member is None:
                raise TimeoutError
            if not member.reachable:
                raise ConnectionRefusedError(111, "Connection refused")

        async def open_libvirt() -> None:
            member = self.fleet.hosts.get(uri)
            if member is None or not member.reachable:
                raise probe.open_failed(uri, self.hostname, "unable to connect to server: Connection refused")

        return await probe.probe_peer(
            uri,
            from_host=self.hostname,
            resolve=resolve,
            connect=connect,
            open_libvirt=open_libvirt,
            migration_address=migration_address,
            clock=lambda: 0.0,
        )

    # ------------------------------------------------------------------ port: tuning a job

    def _job(self, name_or_uuid: str, call: str) -> _Job:
        dom = self._lookup(name_or_uuid, call)
        job = self.jobs.get(dom.uuid)
        if job is None:
            raise self._error(
                le.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: no job is active on the domain", call
            )
        return job

    async def abort_job(self, name_or_uuid: str) -> bool:
        await self._enter("abort_job", "abortJob")
        dom = self._lookup(name_or_uuid, "abortJob")
        job = self.jobs.get(dom.uuid)
        if job is None:
            return False
        if job.postcopy:
            raise self._error(le.VIR_ERR_OPERATION_INVALID, "cannot abort migration in post-copy mode", "abortJob")
        job.request_abort()
        return True

    async def set_max_downtime(self, name_or_uuid: str, ms: int) -> None:
        """Without a job (as libvirt does) the value is kept for the next migration."""
        await self._enter("set_max_downtime", "migrateSetMaxDowntime")
        dom = self._lookup(name_or_uuid, "migrateSetMaxDowntime")
        dom.max_downtime_ms = ms
        if dom.uuid in self.jobs:
            self.jobs[dom.uuid].max_downtime_ms = ms

    async def set_bandwidth(self, name_or_uuid: str, mibps: int) -> None:
        await self._enter("set_bandwidth", "migrateSetMaxSpeed")
        dom = self._lookup(name_or_uuid, "migrateSetMaxSpeed")
        dom.bandwidth_mibps = mibps
        if dom.uuid in self.jobs:
            self.jobs[dom.uuid].bandwidth_bps = (mibps * MiB) if mibps else GiB

    async def migration_limits(self, name_or_uuid: str) -> tuple[int, int]:
        await self._enter("migration_limits", "migrateGetMaxDowntime")
        dom = self._lookup(name_or_uuid, "migrateGetMaxDowntime")
        job = self.jobs.get(dom.uuid)
        if job is not None:
            return job.max_downtime_ms, job.bandwidth_bps // MiB if job.bandwidth_bps != GiB else 0
        return dom.max_downtime_ms, dom.bandwidth_mibps

    async def suspend(self, name_or_uuid: str) -> None:
        await self._enter("suspend", "suspend")
        dom = self._lookup(name_or_uuid, "suspend")
        if not dom.state.is_active:
            raise self._error(
                le.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running", "suspend"
            )
        dom.state = DomainState.PAUSED

    async def resume(self, name_or_uuid: str) -> None:
        await self._enter("resume", "resume")
        dom = self._lookup(name_or_uuid, "resume")
        if dom.state is DomainState.PAUSED:
            dom.state = DomainState.RUNNING

    async def undefine_inactive(self, name_or_uuid: str) -> bool:
        await self._enter("undefine_inactive", "undefine")
        dom = next((d for d in self.domains.values() if name_or_uuid in (d.name, d.uuid)), None)
        if dom is None or dom.state.is_active:
            return False
        del self.domains[dom.uuid]
        return True

    async def destroy_incoming(self, uuid: str) -> bool:
        await self._enter("destroy_incoming", "destroy")
        dom = self.domains.get(uuid)
        if dom is None:
            return False
        incoming = dom.state is DomainState.PAUSED and dom.paused_by_libvirt
        if not incoming or dom.persistent:
            raise le.not_incoming(dom.name, uuid, self.uri, persistent=dom.persistent, state=dom.state.name.lower())
        self.jobs.pop(uuid, None)
        del self.domains[uuid]
        return True

    async def remote_resume(self, target_uri: str, name_or_uuid: str) -> bool:
        await self._enter("remote_resume", "resume")
        target = self._remote(target_uri)
        dom = target._lookup(name_or_uuid, "resume")
        if dom.state is not DomainState.PAUSED:
            return False
        dom.state = DomainState.RUNNING
        return True

    async def dirty_rate(self, name_or_uuid: str, seconds: int) -> float:
        """The guest's configured rate, as a page-sampling measurement of ``seconds`` would see it
        (at most its memory over the period); takes one step, not ``seconds``."""
        await self._enter("dirty_rate", "startDirtyRateCalc")
        dom = self._lookup(name_or_uuid, "startDirtyRateCalc")
        await asyncio.sleep(self.step_s)
        memory = dom.parsed.memory_bytes
        return float(min(memory, dom.dirty_bytes_per_s * seconds) / max(1, seconds))

    async def guest_ram_resident(self, name_or_uuid: str) -> int:
        return 0  # unknown: the agent estimates from memory_rss

    async def memory_rss(self, name_or_uuid: str) -> int:
        await self._enter("memory_rss", "memoryStats")
        dom = self._lookup(name_or_uuid, "memoryStats")
        return dom.parsed.memory_bytes if dom.state.is_active else 0

    async def start_postcopy(self, name_or_uuid: str) -> None:
        await self._enter("start_postcopy", "migrateStartPostCopy")
        job = self._job(name_or_uuid, "migrateStartPostCopy")
        if not job.options.allow_postcopy:
            raise self._error(
                le.VIR_ERR_OPERATION_INVALID,
                "switching to post-copy requires migration to be started with VIR_MIGRATE_POSTCOPY",
                "migrateStartPostCopy",
            )
        job.postcopy = True

    # ------------------------------------------------------------------ port: migrate

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
        call = "migrateToURI3"
        await self._enter("migrate", call)
        self.migrate_calls.append((options, policy, resume_postcopy))
        dom = self._lookup(name_or_uuid, call)
        target = self.fleet.hosts.get(target_uri)
        if target is None or not target.reachable:
            raise self._error(
                le.VIR_ERR_OPERATION_FAILED,
                f"Failed to connect to remote libvirt URI {target_uri}",
                call,
                peer=target_uri,
                peer_unreachable=True,
            )
        job = self._start_job(dom, target, destination_xml, options, migrate_disks, target_uri)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(job.done)
        except TimeoutError:
            job.request_abort()
            raise le.timeout_error(call, self.uri, timeout_s) from None

    def _start_job(
        self,
        dom: FakeDomain,
        target: FakeHypervisor,
        destination_xml: str,
        options: MigrationOptions,
        migrate_disks: list[str],
        target_uri: str,
    ) -> _Job:
        call = "migrateToURI3"
        if dom.uuid in self.jobs:
            raise self._error(
                le.VIR_ERR_OPERATION_TIMEOUT,
                "Timed out during operation: cannot acquire "
                "state change lock (held by monitor=remoteDispatchDomainMigratePerform3Params)",
                call,
            )
        if options.offline:
            if not options.persist_dest:
                raise self._error(
                    le.VIR_ERR_OPERATION_INVALID,
                    "offline migration must be specified with the persistent flag set",
                    call,
                )
            if options.storage is not StorageMode.SHARED:
                raise self._error(
                    le.VIR_ERR_OPERATION_INVALID, "offline migration cannot handle non-shared storage", call
                )
        elif not dom.state.is_active:
            raise self._error(
                le.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: domain is not running", call
            )
        if target.host_uuid.lower() == self.host_uuid.lower():  # as libvirt's cookie check
            raise self._error(
                le.VIR_ERR_INTERNAL_ERROR,
                f"internal error: Attempt to migrate guest to the same host {self.host_uuid}",
                call,
                peer=target_uri,
                same_host_uuid=True,  # (the real adapter asks both libvirtds for their UUIDs)
            )
        incoming = destination_xml or dom.xml
        for other in target.domains.values():
            if (other.uuid == dom.uuid or other.name == dom.name) and other.state.is_active:
                raise self._error(
                    le.VIR_ERR_OPERATION_INVALID,
                    f"Requested operation is not valid: domain '{other.name}' is already active",
                    call,
                )
        copy = options.storage is not StorageMode.SHARED
        if not options.offline and not options.unsafe:  # the source checks this first (Begin phase)
            self._check_safe(dom, set(migrate_disks) if copy else set(), call)
        disk_total = 0
        if copy and not options.offline:
            by_target = {d.target: d for d in parse_disks(incoming)}
            for name in migrate_disks:
                path = by_target[name].source if name in by_target else ""
                if target.host is not None and not target.host.exists(path):
                    raise self._error(
                        le.VIR_ERR_NO_STORAGE_POOL,
                        f"Storage pool not found: no storage pool with matching target path '{path.rsplit('/', 1)[0]}'",
                        call,
                        domain=18,
                        peer=target_uri,
                    )
                src = next((d for d in dom.disks if d.target == name), None)
                size = self._size(src.source) if src else (0, 0)
                disk_total += size[1] or size[0]
        # the target precreates storage first, then starts QEMU (which needs the bridges)
        if target.host is not None and not options.offline:
            for nic in parse_nics(incoming):
                if nic.type == "bridge" and nic.source not in target.host.bridges():
                    # what the target's QEMU driver reports, passed back through the source
                    raise self._error(
                        le.VIR_ERR_SYSTEM_ERROR,
                        f"Cannot get interface MTU on '{nic.source}': No such device",
                        call,
                        domain=0,
                        peer=target_uri,
                    )
        memory = dom.parsed.memory_bytes
        stats = JobStats(
            active=True,
            job_type="unbounded",
            operation="migration out",
            memory_total=memory,
            memory_remaining=memory,
            disk_total=disk_total,
            disk_remaining=disk_total,
        )
        mibps = options.bandwidth_mibps or dom.bandwidth_mibps
        job = _Job(
            dom,
            target,
            options,
            list(migrate_disks),
            incoming,
            stats,
            max_downtime_ms=dom.max_downtime_ms,
            bandwidth_bps=(mibps * MiB) if mibps else GiB,
            mirror_bps=(mibps * MiB) if mibps else GiB,
        )
        self.jobs[dom.uuid] = job
        asyncio.get_running_loop().create_task(self._run_job(job), name=f"fake migration {dom.name}")
        return job

    def _fs_type(self, path: str) -> str:
        assert self.host is not None
        best = ("", "ext4")
        for d, info in self.host.dirs.items():
            root = d.rstrip("/")
            if (path == root or path.startswith(root + "/")) and len(root) >= len(best[0]):
                best = (root, info.fs_type)
        return best[1]

    def _check_safe(self, dom: FakeDomain, copied: set[str], call: str) -> None:
        """libvirt's safety rule for disks that are not copied: they must be on a shared file
        system, and (unless it is a cluster file system) use cache none or directsync."""
        if self.host is None:
            return
        for disk in dom.disks:
            if not disk.source or disk.readonly or disk.target in copied:
                continue
            fs = self._fs_type(disk.source)
            if fs not in _SHARED_FS:
                raise self._error(
                    le.VIR_ERR_MIGRATE_UNSAFE, "Unsafe migration: Migration without shared storage is unsafe", call
                )
            if fs not in _CLUSTER_FS and disk.cache not in ("none", "directsync"):
                raise self._error(
                    le.VIR_ERR_MIGRATE_UNSAFE,
                    "Unsafe migration: Migration may lead to data "
                    "corruption if disks use cache other than none or directsync",
                    call,
                )

    async def _run_job(self, job: _Job) -> None:
        name = job.domain.name
        failure = self._failures.pop(name, None)
        loop = asyncio.get_running_loop()
        step_at = loop.time()
        try:
            if job.options.offline:
                self._land(job)
                return
            while True:
                step_at = next_step_at(step_at, self.step_s, loop.time())
                await asyncio.sleep(step_at - loop.time())
                self._check_libvirtd(job)
                await self._held(job)  # an abort is acted on even while jobs are held (its end then waits)
                if not job.abort:
                    job.step += 1
                if job.abort:
                    await self._ending(job, "cancelled")
                    raise self._error(
                        le.VIR_ERR_OPERATION_ABORTED,
                        "operation aborted: job 'migration out' canceled by client",
                        "migrateToURI3",
                    )
                if failure and job.step >= failure[0]:
                    await self._ending(job, "failed")
                    raise self._error(
                        failure[1],
                        "internal error: qemu unexpectedly closed the monitor",
                        "migrateToURI3",
                        peer=job.target.uri,
                    )
                if self._advance(job):
                    self._land(job)
                    return
        except FerryError as exc:
            if job.postcopy:
                job.domain.state = DomainState.PAUSED  # post-copy failed: the guest is split
            job.done.set_exception(exc)
        finally:
            self.jobs.pop(job.domain.uuid, None)
            if not job.done.done():
                job.done.set_result(None)
            job.done.exception()  # retrieved here: a job nobody waits for any more must not warn

    async def _held(self, job: _Job) -> None:
        """Wait while jobs are held; an abort requested meanwhile ends the wait (a job that went
        to wait just before an abort must not miss it)."""
        if self._gate.is_set():
            return
        gate = asyncio.ensure_future(self._gate.wait())
        aborted = asyncio.ensure_future(job.aborted.wait())
        try:
            await asyncio.wait((gate, aborted), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gate.cancel()
            aborted.cancel()

    def _check_libvirtd(self, job: _Job) -> None:
        """A peer-to-peer job dies with either host's libvirtd (``reachable`` False): the source's
        migrate call fails on its broken connection, or the source cannot reach the target's
        libvirtd any more; the guest keeps running on the source (pre-copy)."""
        if not self.reachable:
            raise self._error(
                le.VIR_ERR_SYSTEM_ERROR,
                "End of file while reading data: Input/output error",
                "migrateToURI3",
                domain=le.VIR_FROM_RPC,
            )
        if not job.target.reachable:
            raise self._error(
                le.VIR_ERR_OPERATION_FAILED,
                "operation failed: migration out job: unexpectedly failed",
                "migrateToURI3",
                peer=job.target.uri,
                peer_unreachable=True,
            )

    async def _ending(self, job: _Job, job_type: str) -> None:
        """As libvirt between QEMU's end of a failed or cancelled job and the migrate call's
        error: for one step (longer while held) the statistics say "failed"/"cancelled"."""
        job.stats = replace(job.stats, active=False, job_type=job_type)
        await asyncio.sleep(self.step_s)
        await self._gate.wait()

    def _advance(self, job: _Job) -> bool:
        """One step of the job; True when it has switched over and completed."""
        s = job.stats
        send = job.bandwidth_bps * self.step_ms // 1000
        elapsed = s.time_elapsed_ms + self.step_ms
        if s.disk_remaining > 0:
            moved = min((job.mirror_bps or job.bandwidth_bps) * self.step_ms // 1000, s.disk_remaining)
            job.stats = replace(
                s,
                time_elapsed_ms=elapsed,
                disk_processed=s.disk_processed + moved,
                disk_remaining=s.disk_remaining - moved,
                bandwidth_bps=job.bandwidth_bps,
            )
            return False
        if job.postcopy:
            if job.domain.state is not DomainState.PAUSED:
                job.domain.state = DomainState.PAUSED  # the guest now runs on the target
            moved = min(send, s.memory_remaining)
            job.stats = replace(
                s,
                time_elapsed_ms=elapsed,
                memory_processed=s.memory_processed + moved,
                memory_remaining=s.memory_remaining - moved,
                postcopy=True,
                dirty_rate_pages=0,
            )
            return job.stats.memory_remaining == 0
        iteration = max(1, s.iteration)
        rate = job.domain.dirty_bytes_per_s * (100 - job.throttle) // 100
        if job.domain.state is DomainState.PAUSED:
            rate = 0  # a paused guest dirties nothing (force-complete without post-copy)
        job.dirtied = min(s.memory_total, job.dirtied + rate * self.step_ms // 1000)
        moved = min(send, s.memory_remaining)
        remaining = s.memory_remaining - moved
        if remaining == 0:
            if job.dirtied * 1000 // max(1, job.bandwidth_bps) <= job.max_downtime_ms:
                job.stats = replace(
                    s,
                    time_elapsed_ms=elapsed,
                    memory_processed=s.memory_processed + moved + job.dirtied,
                    memory_remaining=0,
                    iteration=iteration,
                    downtime_ms=max(1, job.dirtied * 1000 // max(1, job.bandwidth_bps)),
                )
                return True
            iteration, remaining, job.dirtied = iteration + 1, job.dirtied, 0
            if job.options.auto_converge and iteration > 2:
                job.throttle = min(99, (job.throttle or 10) + 10)
        job.stats = replace(
            s,
            time_elapsed_ms=elapsed,
            memory_processed=s.memory_processed + moved,
            memory_remaining=remaining,
            iteration=iteration,
            bandwidth_bps=job.bandwidth_bps,
            dirty_rate_pages=rate // 4096,
            auto_converge_throttle=job.throttle,
        )
        return False

    def _land(self, job: _Job) -> None:
        """Switch-over: the domain now lives on the target; the source keeps what the flags say."""
        dom, opts, target = job.domain, job.options, job.target
        done = replace(job.stats, active=False, job_type="completed", operation="migration in", postcopy=job.postcopy)
        # as libvirt: the target's completed "migration in" job does not count disk bytes
        incoming = replace(done, disk_total=0, disk_processed=0, disk_remaining=0)
        arriving = DomainState.PAUSED if dom.state is DomainState.PAUSED and not job.postcopy else DomainState.RUNNING
        arrived = FakeDomain(
            job.destination_xml,
            DomainState.SHUTOFF if opts.offline else arriving,
            persistent=opts.persist_dest or opts.offline,
            dirty_bytes_per_s=dom.dirty_bytes_per_s,
            # as libvirt 9: no completed job on the target after post-copy (seen in the lab)
            completed=None if job.postcopy else incoming,
        )
        target.domains = {u: d for u, d in target.domains.items() if d.uuid != dom.uuid and d.name != dom.name}
        target.domains[arrived.uuid] = arrived
        if opts.offline:  # only the definition moved; a running guest keeps running here
            if opts.undefine_source and dom.state.is_active:
                dom.persistent = False
            elif opts.undefine_source:
                del self.domains[dom.uuid]
            return
        # what the source keeps: its definition unless undefined (a transient domain has none), or
        # when a test has libvirt leave it anyway (seen after a post-copy resumed several times)
        keep = (not opts.undefine_source or self.leaves_source_definition) and dom.persistent
        if not keep:
            del self.domains[dom.uuid]
            return
        dom.state = DomainState.PAUSED if self.leftover_stops_after_lookups else DomainState.SHUTOFF
        if self.leftover_stops_after_lookups:
            self._stopping[dom.uuid] = self.leftover_stops_after_lookups
        dom.completed = replace(done, operation="migration out")
