"""Translation between libvirt's values and Ferry's model: flags, typed parameters, capabilities,
job statistics.

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
from ferry.model import DomainState, MigrationOptions, StorageMode

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
