"""Translation between libvirt's values and Ferry's model: flags, typed parameters, capabilities,
node memory, domain state and XML, job statistics.

Integers on purpose: these tests need neither libvirtd nor, except the last ones, the libvirt module.
"""

import pytest

from ferry.agent import libvirt_translate as lt
from ferry.agent.libvirt_translate import (
    job_stats_from_libvirt,
    migration_flags,
    migration_params,
    parse_capabilities,
)
from ferry.model import Disk, DomainState, MigrationOptions, StorageMode

L = lt  # libvirt's numbers as written out in the module (test_numbers_match_libvirt pins them)
P2P, LIVE, PERSIST, UNDEF = (
    L.VIR_MIGRATE_PEER2PEER,
    L.VIR_MIGRATE_LIVE,
    L.VIR_MIGRATE_PERSIST_DEST,
    L.VIR_MIGRATE_UNDEFINE_SOURCE,
)


@pytest.mark.parametrize(
    ("options", "copy", "flags"),
    [
        (MigrationOptions(), False, P2P | LIVE | PERSIST | UNDEF),
        (MigrationOptions(persist_dest=False, undefine_source=False), False, P2P | LIVE),
        (
            MigrationOptions(storage=StorageMode.COPY_ALL),
            True,
            P2P | LIVE | PERSIST | UNDEF | L.VIR_MIGRATE_NON_SHARED_DISK,
        ),
        (
            MigrationOptions(storage=StorageMode.COPY_INC),
            True,
            P2P | LIVE | PERSIST | UNDEF | L.VIR_MIGRATE_NON_SHARED_INC,
        ),
        (MigrationOptions(storage=StorageMode.COPY_ALL), False, P2P | LIVE | PERSIST | UNDEF),  # nothing to copy
        (
            MigrationOptions(offline=True, persist_dest=False, undefine_source=False),
            False,
            P2P | L.VIR_MIGRATE_OFFLINE | PERSIST,
        ),
        (
            MigrationOptions(auto_converge=True, allow_postcopy=True, unsafe=True, undefine_source=False),
            False,
            P2P | LIVE | PERSIST | L.VIR_MIGRATE_AUTO_CONVERGE | L.VIR_MIGRATE_POSTCOPY | L.VIR_MIGRATE_UNSAFE,
        ),
    ],
)
def test_migration_flags(options, copy, flags):
    # encrypted by default (VIR_MIGRATE_TLS = 1 << 16, libvirt's number)
    assert migration_flags(options, copy_disks=copy) == flags | L.VIR_MIGRATE_TLS == flags | 65536
    assert migration_flags(options, copy_disks=copy, tls=False) == flags


def test_migration_params():
    opts = MigrationOptions(storage=StorageMode.COPY_ALL, bandwidth_mibps=40)
    assert migration_params(
        opts, destination_xml="<domain/>", migrate_disks=["vda"], migrate_uri="tcp://10.77.0.12"
    ) == {
        "destination_xml": "<domain/>",
        "persistent_xml": "<domain/>",
        "migrate_disks": ["vda"],
        "bandwidth": 40,
        "migrate_uri": "tcp://10.77.0.12",
    }
    # shared storage copies nothing; no destination XML keeps the source's; transient target: no persistent XML
    assert migration_params(
        MigrationOptions(persist_dest=False), destination_xml="<domain/>", migrate_disks=["vda"], migrate_uri=""
    ) == {"destination_xml": "<domain/>"}
    assert migration_params(MigrationOptions(), destination_xml="", migrate_disks=[], migrate_uri="") == {}


CAPS = """<capabilities><host><uuid>6c61622d-0000-4000-8000-000000000001</uuid>
<cpu><arch>x86_64</arch><model>Broadwell-noTSX-IBRS</model><vendor>Intel</vendor>
<feature name='vme'/><feature name='ss'/></cpu></host></capabilities>"""


def test_parse_capabilities():
    c = parse_capabilities(CAPS)
    assert (c.host_uuid, c.arch, c.cpu_model, c.cpu_features) == (
        "6c61622d-0000-4000-8000-000000000001",
        "x86_64",
        "Broadwell-noTSX-IBRS",
        ("vme", "ss"),
    )


def test_job_stats_from_libvirt():
    s = job_stats_from_libvirt(
        {
            "type": 2,
            "operation": 5,
            "time_elapsed": 920,
            "memory_total": 268435456,
            "memory_processed": 100,
            "memory_remaining": 50,
            "memory_dirty_rate": 2500,
            "memory_iteration": 2,
            "memory_bps": 1000,
            "disk_total": 10,
            "disk_remaining": 0,
            "disk_processed": 10,
            "auto_converge_throttle": 20,
        },
        postcopy=True,
    )
    assert s.active and s.job_type == "unbounded" and s.operation == "migration out"
    assert (s.memory_remaining, s.iteration, s.dirty_rate_pages, s.page_size, s.postcopy) == (50, 2, 2500, 4096, True)
    done = job_stats_from_libvirt({"type": 3, "downtime": 157})
    assert not done.active and done.job_type == "completed" and done.downtime_ms == 157
    assert job_stats_from_libvirt({"type": 0}).job_type == "none"


# --- more of what we send ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("storage", "disks", "copies"),
    [
        (StorageMode.COPY_ALL, ["vda"], True),
        (StorageMode.COPY_INC, ["vda", "vdb"], True),
        (StorageMode.COPY_ALL, [], False),  # nothing to copy
        (StorageMode.SHARED, ["vda"], False),  # the target sees the same storage
    ],
)
def test_copies_disks(storage, disks, copies):
    options = MigrationOptions(storage=storage)
    assert lt.copies_disks(options, disks) is copies
    # the flags and the parameters agree on it
    flags = migration_flags(options, copy_disks=lt.copies_disks(options, disks))
    assert bool(flags & (lt.VIR_MIGRATE_NON_SHARED_DISK | lt.VIR_MIGRATE_NON_SHARED_INC)) is copies
    params = migration_params(options, destination_xml="", migrate_disks=disks, migrate_uri="")
    assert ("migrate_disks" in params) is copies


@pytest.mark.parametrize(
    ("params", "logged"),
    [
        ({}, []),
        ({"destination_xml": "<d/>", "persistent_xml": "<d/>"}, []),
        ({"migrate_uri": "tcp://h", "destination_xml": "<d/>", "bandwidth": 40}, ["bandwidth", "migrate_uri"]),
    ],
)
def test_loggable_params(params, logged):
    assert lt.loggable_params(params) == logged


@pytest.mark.parametrize(("migratable", "flags"), [(True, 1 | 8), (False, 1)])  # SECURE | MIGRATABLE
def test_domain_xml_flags(migratable, flags):
    assert lt.domain_xml_flags(migratable=migratable) == flags
    # without secrets (GetDomain for a caller other than the coordinator): no VIR_DOMAIN_XML_SECURE (1)
    assert lt.domain_xml_flags(migratable=migratable, secure=False) == flags & ~1


@pytest.mark.parametrize(("completed", "flags"), [(True, 1 | 2), (False, 0)])  # COMPLETED | KEEP_COMPLETED
def test_job_stats_flags(completed, flags):
    assert lt.job_stats_flags(completed=completed) == flags


@pytest.mark.parametrize(
    ("ref", "is_uuid"),
    [
        ("6c61622d-0000-4000-8000-000000000001", True),
        ("6C61622D000040008000000000000001", True),  # libvirt accepts it without dashes
        ("web-1", False),
        ("6c61622d-0000-4000-8000-00000000000", False),  # one digit short
        ("", False),
    ],
)
def test_looks_like_uuid(ref, is_uuid):
    assert lt.looks_like_uuid(ref) is is_uuid


# --- more of what we read ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<capabilities><host><uuid> u1 </uuid></host></capabilities>", ("u1", "", "", ())),  # no <cpu>
        (
            "<capabilities><host><cpu><arch>aarch64</arch><feature/><feature name='sve'/></cpu></host></capabilities>",
            ("", "aarch64", "", ("sve",)),
        ),
    ],
)
def test_parse_capabilities_partial(xml, expected):
    c = parse_capabilities(xml)
    assert (c.host_uuid, c.arch, c.cpu_model, c.cpu_features) == expected


@pytest.mark.parametrize(
    ("stats", "info_mib", "total", "available"),
    [
        (
            {"total": 8_000_000, "free": 1_000_000, "buffers": 24, "cached": 2_000_000},
            7000,
            8_192_000_000,
            3_072_024_576,
        ),
        ({"total": 1_000, "free": 10}, 2, 2 << 20, 10_240),  # node info says more (NUMA)
        ({}, 4096, 4 << 30, 0),  # libvirt said nothing: the adapter asks virNodeGetFreeMemory
    ],
)
def test_node_memory(stats, info_mib, total, available):
    assert lt.total_memory(stats, info_mib) == total
    assert lt.available_memory(stats) == available


# libvirt's capabilities of a Debian 12 host (shortened): the default QEMU of each arch, its machine
# types with the aliases (canonical=...), a KVM domain type listing them again for the same binary
CAPS_GUESTS = """<capabilities><host><uuid>u1</uuid><cpu><arch>x86_64</arch><model>Skylake</model></cpu></host>
<guest><os_type>hvm</os_type><arch name='i686'><wordsize>32</wordsize><emulator>/usr/bin/qemu-system-i386</emulator>
<machine maxCpus='255'>pc-i440fx-7.2</machine><domain type='qemu'/></arch></guest>
<guest><os_type>hvm</os_type><arch name='x86_64'><wordsize>64</wordsize>
<emulator>/usr/bin/qemu-system-x86_64</emulator>
<machine maxCpus='255'>pc-i440fx-7.2</machine><machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine>
<machine maxCpus='288'>pc-q35-7.2</machine><machine canonical='pc-q35-7.2' maxCpus='288'>q35</machine>
<machine maxCpus='288'>pc-q35-7.1</machine>
<domain type='qemu'/><domain type='kvm'><emulator>/usr/bin/qemu-system-x86_64</emulator>
<machine maxCpus='288'>pc-q35-7.2</machine></domain>
<domain type='kvm'><emulator>/usr/bin/kvm-old</emulator><machine>pc-1.0</machine></domain></arch></guest>
<guest><os_type>xen</os_type><arch name='x86_64'><emulator>/usr/bin/xenner</emulator><machine>xenner</machine>
</arch></guest></capabilities>"""


def test_machine_types_from_capabilities():
    c = parse_capabilities(CAPS_GUESTS)
    assert c.emulator == "/usr/bin/qemu-system-x86_64"
    assert c.machine_types == ("pc-i440fx-7.2", "pc", "pc-q35-7.2", "q35", "pc-q35-7.1")  # the host's arch, hvm
    assert parse_capabilities(CAPS).machine_types == ()  # no <guest>: none reported
    # no host CPU arch in the capabilities: virNodeGetInfo's names the guests to read
    bare = CAPS_GUESTS.replace("<arch>x86_64</arch>", "")
    assert parse_capabilities(bare).machine_types == ()
    assert parse_capabilities(bare, default_arch="i686").machine_types == ("pc-i440fx-7.2",)
    facts = lt.host_facts(
        capabilities_xml=CAPS_GUESTS,
        node_info=["x86_64", 7812, 4],
        hostname="host1",
        libvirt_version=9_000_000,
        qemu_version=7_002_000,
        memory_total=8 << 30,
        memory_available=3 << 30,
        networks=[],
    )
    assert (facts.emulator, facts.machine_types) == (c.emulator, c.machine_types)


def test_host_facts():
    facts = lt.host_facts(
        capabilities_xml=CAPS,
        node_info=["x86_64", 7812, 4, 2400, 1, 1, 4, 1],
        hostname="host1",
        libvirt_version=10_000_000,
        qemu_version=8_002_000,
        memory_total=8 << 30,
        memory_available=3 << 30,
        networks=["default", "br-net"],
    )
    assert (facts.hostname, facts.host_uuid, facts.arch, facts.cpu_model, facts.cpus) == (
        "host1",
        "6c61622d-0000-4000-8000-000000000001",
        "x86_64",
        "Broadwell-noTSX-IBRS",
        4,
    )
    assert (facts.libvirt_version, facts.qemu_version) == (10_000_000, 8_002_000)
    assert (facts.memory_total_bytes, facts.memory_free_bytes) == (8 << 30, 3 << 30)
    assert facts.cpu_features == ("vme", "ss")
    assert facts.networks == ("br-net", "default")  # sorted
    # capabilities without an arch: virNodeGetInfo's model names it
    bare = lt.host_facts(
        capabilities_xml="<capabilities><host/></capabilities>",
        node_info=["aarch64", 1, 2],
        hostname="h",
        libvirt_version=0,
        qemu_version=0,
        memory_total=0,
        memory_available=0,
        networks=[],
    )
    assert (bare.arch, bare.cpus, bare.networks) == ("aarch64", 2, ())


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (0, DomainState.UNKNOWN),  # VIR_DOMAIN_NOSTATE
        (1, DomainState.RUNNING),
        (2, DomainState.BLOCKED),
        (3, DomainState.PAUSED),
        (4, DomainState.SHUTDOWN),
        (5, DomainState.SHUTOFF),
        (6, DomainState.CRASHED),
        (7, DomainState.PMSUSPENDED),
        (8, DomainState.UNKNOWN),  # a state a newer libvirt may add
        (-1, DomainState.UNKNOWN),
    ],
)
def test_domain_state(state, expected):
    assert lt.domain_state(state) is expected


@pytest.mark.parametrize(
    ("state", "reason", "postcopy"),
    [
        (3, 12, True),  # PAUSED, PAUSED_POSTCOPY
        (1, 10, True),  # RUNNING, RUNNING_POSTCOPY
        (1, 2, False),  # RUNNING, MIGRATED
        (3, 2, False),  # PAUSED, MIGRATION
        (1, 12, False),  # a paused reason number under RUNNING means something else
        (3, 10, False),
        # post-copy whose link broke: still post-copy (the guest is split between the hosts: never
        # abort, never cancel), and failed, for the agent to resume it
        (3, 13, True),  # PAUSED, PAUSED_POSTCOPY_FAILED (the source)
        (1, 11, True),  # RUNNING, RUNNING_POSTCOPY_FAILED (the target)
    ],
)
def test_in_postcopy(state, reason, postcopy):
    assert lt.in_postcopy(state, reason) is postcopy
    assert lt.postcopy_failed(state, reason) is (reason in (11, 13) and postcopy)


@pytest.mark.parametrize(
    ("job_type", "name", "active"),
    [(0, "none", False), (1, "bounded", True), (2, "unbounded", True), (3, "completed", False)]
    + [(4, "failed", False), (5, "cancelled", False), (9, "none", False)],  # unknown type: none
)
def test_job_types(job_type, name, active):
    s = job_stats_from_libvirt({"type": job_type})
    assert (s.job_type, s.active) == (name, active)


@pytest.mark.parametrize(
    ("operation", "name"),
    [(0, ""), (1, "start"), (4, "migration in"), (5, "migration out"), (10, "snapshot delete"), (99, "")],
)
def test_job_operations(operation, name):
    assert job_stats_from_libvirt({"type": 2, "operation": operation}).operation == name


def test_job_stats_defaults():
    s = job_stats_from_libvirt({})
    assert (s.active, s.job_type, s.operation, s.page_size, s.postcopy) == (False, "none", "", 4096, False)
    assert job_stats_from_libvirt({"memory_page_size": 65536}).page_size == 65536


GUEST = """<domain type='kvm'><name>web-1</name><uuid>6c61622d-0000-4000-8000-0000000000aa</uuid>
<memory unit='MiB'>512</memory><vcpu>2</vcpu><cpu mode='host-model'/>
<devices>
  <disk type='file' device='disk'><driver type='qcow2'/><source file='/var/lib/libvirt/images/web-1.qcow2'/>
    <target dev='vda' bus='virtio'/></disk>
  <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
  <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-guest'/></interface>
</devices></domain>"""


def test_block_info_targets():
    assert lt.block_info_targets(GUEST) == ["vda"]  # the empty CD-ROM drive has no source


def test_domain_info():
    info = lt.domain_info(GUEST, state=1, persistent=True, block_sizes={"vda": (10 << 30, 3 << 30)})
    assert (info.name, info.uuid, info.state, info.persistent) == (
        "web-1",
        "6c61622d-0000-4000-8000-0000000000aa",
        DomainState.RUNNING,
        True,
    )
    assert (info.memory_bytes, info.vcpus, info.cpu_mode, info.os_type) == (512 << 20, 2, "host-model", "kvm")
    vda, sda = info.disks
    assert (vda.target, vda.virtual_size, vda.allocation) == ("vda", 10 << 30, 3 << 30)
    assert isinstance(sda, Disk) and (sda.target, sda.source, sda.virtual_size) == ("sda", "", 0)
    assert [n.mac for n in info.nics] == ["52:54:00:00:00:01"]
    assert info.machine == ""  # GUEST names none
    on_q35 = lt.domain_info(
        GUEST.replace("<vcpu>", "<os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os><vcpu>"),
        state=1,
        persistent=True,
        block_sizes={},
    )
    assert on_q35.machine == "pc-q35-8.2"
    # no block info (libvirt could not say): the disk is listed unsized; an unknown state is UNKNOWN
    bare = lt.domain_info(GUEST, state=42, persistent=False, block_sizes={})
    assert (bare.disks[0].virtual_size, bare.state, bare.persistent) == (0, DomainState.UNKNOWN, False)


# --- the numbers are libvirt's ---------------------------------------------------------------------


def test_numbers_match_libvirt():
    libvirt = pytest.importorskip("libvirt")
    names = [n for n in dir(lt) if n.startswith("VIR_")]
    assert names
    for name in names:
        assert getattr(lt, name) == getattr(libvirt, name), name


def test_domain_states_are_libvirts():
    libvirt = pytest.importorskip("libvirt")
    for state in DomainState:
        name = "VIR_DOMAIN_NOSTATE" if state is DomainState.UNKNOWN else f"VIR_DOMAIN_{state.name}"
        assert state.value == getattr(libvirt, name), name


def test_block_sizes_from_nowait_statistics():
    # what libvirt 9 answered on the lab's target during an incoming copy: names, no sizes
    assert lt.block_sizes_from_stats({"block.count": 1, "block.0.name": "vda", "block.0.backingIndex": 1}) == {}
    idle = {"block.count": 1, "block.0.name": "vda", "block.0.capacity": 134217728, "block.0.allocation": 10878976}
    assert lt.block_sizes_from_stats(idle) == {"vda": (134217728, 10878976)}
    assert lt.block_sizes_from_stats({}) is None  # no block group (a driver without it): ask blockInfo
