"""The libvirt adapter's pure parts (flags, params, capabilities, job stats) and its reads against
libvirt's in-process test driver (test:///default: no libvirtd needed)."""

import pytest

libvirt = pytest.importorskip("libvirt")

from ferry.agent.libvirt_hypervisor import (  # noqa: E402
    LibvirtHypervisor,
    job_stats_from_libvirt,
    migration_flags,
    migration_params,
    parse_capabilities,
)
from ferry.errors import FailedPrecondition, NotFound  # noqa: E402
from ferry.model import DomainState, MigrationOptions, StorageMode  # noqa: E402

L = libvirt
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
    assert migration_flags(options, copy_disks=copy) == flags


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


@pytest.fixture
async def test_driver():
    h = LibvirtHypervisor("test:///default", 5)
    yield h
    h.close()


async def test_reads_against_the_test_driver(test_driver):
    facts = await test_driver.host_facts()
    assert facts.hostname and facts.libvirt_version >= 9_000_000 and facts.memory_total_bytes > 0
    [dom] = await test_driver.list_domains()
    assert (dom.name, dom.state, dom.persistent) == ("test", DomainState.RUNNING, True)
    assert dom.disks[0].target == "vda" and dom.disks[0].virtual_size > 0  # from blockInfo
    assert (await test_driver.get_domain(dom.uuid)).name == "test"  # by UUID too
    assert (await test_driver.find_domain(uuid=dom.uuid)).name == "test"
    assert await test_driver.find_domain(name="nope") is None
    assert "<name>test</name>" in await test_driver.domain_xml("test")


async def test_errors_come_from_the_table(test_driver):
    with pytest.raises(NotFound) as exc:
        await test_driver.get_domain("nope")
    assert exc.value.reason == "DOMAIN_NOT_FOUND"
    with pytest.raises(FailedPrecondition) as exc:
        await test_driver.job_stats("test")  # the test driver has no jobs
    assert exc.value.reason == "NOT_SUPPORTED"
