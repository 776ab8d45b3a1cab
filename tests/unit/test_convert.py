"""Protobuf <-> model converters: round trips keep every field, enums keep their meaning."""

from datetime import UTC, datetime

import pytest

from ferry import convert
from ferry.errors import FailedPrecondition
from ferry.model import (
    CompletedJob,
    Disk,
    DiskPlan,
    DomainInfo,
    DomainState,
    HostFacts,
    HostMapping,
    Inventory,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    MigrationResult,
    Nic,
    PreparedIncoming,
    PrepareRecord,
    Problem,
    StorageDir,
    StorageMode,
)
from ferry.v1 import types_pb2 as tpb

FACTS = HostFacts(
    hostname="host1",
    host_uuid="6c61622d-0000-4000-8000-000000000001",
    libvirt_version=9_000_000,
    qemu_version=7_002_000,
    cpu_model="Broadwell",
    arch="x86_64",
    cpu_features=("vmx", "aes"),
    cpus=2,
    memory_total_bytes=8 << 30,
    memory_free_bytes=6 << 30,
    bridges=("br-guest",),
    networks=("default",),
    storage=(
        StorageDir("/var/lib/libvirt/images", 10 << 30, 20 << 30, False, "ext4"),
        StorageDir("/tmp/ferry-lab/shared", 1 << 30, 2 << 30, True, "tmpfs"),
    ),
    libvirt_uri="qemu+tcp://10.77.0.11/system",
    migration_address="10.77.0.11",
    agent_version="0.1.0",
    machine_types=("pc-q35-7.2", "q35", "pc-i440fx-7.2"),
    emulator="/usr/bin/qemu-system-x86_64",
)

DOMAIN = DomainInfo(
    name="g1",
    uuid="0d1f2c3b-aaaa-bbbb-cccc-000000000001",
    state=DomainState.PAUSED,
    memory_bytes=256 << 20,
    vcpus=1,
    persistent=True,
    disks=(
        Disk(
            "vda",
            "/var/lib/libvirt/images/g1.qcow2",
            "qcow2",
            256 << 20,
            3 << 20,
            ("/var/lib/libvirt/images/base.qcow2",),
            "none",
            False,
            False,
            "disk",
            "virtio",
        ),
        Disk("sda", "", "raw", device="cdrom", readonly=True, bus="sata"),
    ),
    nics=(Nic("bridge", "br-guest", "52:54:00:00:00:01", "virtio"),),
    cpu_mode="custom",
    cpu_model="qemu64",
    os_type="qemu",
    machine="pc-q35-7.2",
)


def test_host_facts_round_trip():
    assert convert.host_facts_from_pb(convert.host_facts_to_pb(FACTS)) == FACTS


def test_domain_round_trip():
    assert convert.domain_from_pb(convert.domain_to_pb(DOMAIN)) == DOMAIN


@pytest.mark.parametrize("state", list(DomainState))
def test_domain_state_numbers_match_proto(state):
    name = tpb.DomainState.Name(convert.domain_state_to_pb(state))
    expected = "DOMAIN_STATE_UNSPECIFIED" if state is DomainState.UNKNOWN else f"DOMAIN_STATE_{state.name}"
    assert name == expected
    assert convert.domain_state_from_pb(convert.domain_state_to_pb(state)) is state


@pytest.mark.parametrize("phase", list(MigrationPhase))
def test_phase_numbers_match_proto(phase):
    assert tpb.MigrationPhase.Name(convert.phase_to_pb(phase)) == f"MIGRATION_PHASE_{phase.name}"
    assert convert.phase_from_pb(convert.phase_to_pb(phase)) is phase


def test_unknown_phase_is_none():
    assert convert.phase_from_pb(0) is None


@pytest.mark.parametrize(
    ("value", "unspecified", "expected"),
    [
        (tpb.STORAGE_MODE_UNSPECIFIED, StorageMode.SHARED, StorageMode.SHARED),  # agent
        (tpb.STORAGE_MODE_UNSPECIFIED, None, None),  # coordinator: auto
        (tpb.STORAGE_MODE_COPY_ALL, None, StorageMode.COPY_ALL),
        (tpb.STORAGE_MODE_COPY_INC, StorageMode.SHARED, StorageMode.COPY_INC),
        (tpb.STORAGE_MODE_SHARED, None, StorageMode.SHARED),
    ],
)
def test_storage_mode(value, unspecified, expected):
    assert convert.storage_mode_from_pb(value, unspecified=unspecified) is expected


def test_options_round_trip():
    opts = MigrationOptions(
        offline=False,
        storage=StorageMode.COPY_INC,
        migrate_disks=("vda", "vdb"),
        persist_dest=True,
        undefine_source=False,
        bandwidth_mibps=40,
        max_downtime_ms=500,
        auto_converge=True,
        allow_postcopy=True,
        unsafe=True,
        completion_timeout_s=300,
        postcopy_on_stall=True,
    )
    assert convert.options_from_pb(convert.options_to_pb(opts)) == opts


@pytest.mark.parametrize(
    ("wire", "persist_dest", "undefine_source"),
    [
        # a plain request (proto3 zero values): the definition moves with the VM
        (tpb.MigrationOptions(), True, True),
        (tpb.MigrationOptions(keep_source_definition=True), True, False),
        (tpb.MigrationOptions(transient_target=True), False, True),
        (tpb.MigrationOptions(keep_source_definition=True, transient_target=True), False, False),
    ],
)
def test_definition_defaults_are_the_safe_ones(wire, persist_dest, undefine_source):
    o = convert.options_from_pb(wire)
    assert (o.persist_dest, o.undefine_source) == (persist_dest, undefine_source)
    back = convert.options_to_pb(o)  # and back: only what is asked for is on the wire
    assert (back.keep_source_definition, back.transient_target) == (wire.keep_source_definition, wire.transient_target)


def test_the_old_definition_fields_are_reserved():
    assert not {"persist_dest", "undefine_source"} & set(tpb.MigrationOptions.DESCRIPTOR.fields_by_name)
    assert {4, 5}.isdisjoint(f.number for f in tpb.MigrationOptions.DESCRIPTOR.fields)


def test_mapping_and_disk_plan_round_trip():
    m = HostMapping(bridges={"br-guest": "br-vm"}, networks={"default": "lab"}, path_prefixes={"/a/": "/b/"})
    assert convert.mapping_from_pb(convert.mapping_to_pb(m)) == m
    p = DiskPlan("vda", "/a/g1.qcow2", "/b/g1.qcow2", "qcow2", 1 << 30, 5 << 20, "/b/base.qcow2", "qcow2", True)
    assert convert.disk_plan_from_pb(convert.disk_plan_to_pb(p)) == p


def test_prepare_record_round_trip_keeps_times_in_utc():
    r = PrepareRecord(
        "p1",
        "g1",
        "u1",
        ("/var/lib/libvirt/images/g1.qcow2",),
        datetime(2026, 11, 25, 20, 0, 0, 123000, tzinfo=UTC),
        datetime(2026, 11, 25, 20, 10, 0, tzinfo=UTC),
        "m-42",
    )
    assert convert.prepare_record_from_pb(convert.prepare_record_to_pb(r)) == r


def test_unset_timestamp_is_none():
    assert convert.timestamp_from_pb(convert.timestamp_to_pb(None)) is None


def test_progress_round_trip():
    stats = JobStats(  # what the wire carries: libvirt's job type and the like stay behind
        time_elapsed_ms=1500,
        memory_total=256 << 20,
        memory_processed=100 << 20,
        memory_remaining=156 << 20,
        disk_total=1 << 30,
        disk_processed=1 << 30,
        disk_remaining=0,
        dirty_rate_pages=2500,
        page_size=4096,
        iteration=2,
        bandwidth_bps=50 << 20,
        auto_converge_throttle=20,
    )
    p = MigrationProgress(MigrationPhase.PRECOPY, stats, max_downtime_ms=300)
    assert convert.progress_from_pb(convert.progress_to_pb(p)) == p


def test_completed_job_from_stats_and_result():
    s = JobStats(
        job_type="completed",
        time_elapsed_ms=920,
        downtime_ms=157,
        memory_processed=136 << 20,
        disk_processed=256 << 20,
        iteration=3,
    )
    job = convert.completed_job_from_stats(s, postcopy=True)
    assert job == CompletedJob(920, 157, 136 << 20, 256 << 20, 3, True)
    res = convert.migrate_result_to_pb(MigrationResult(job, None, False))
    assert res.source_state == tpb.DOMAIN_STATE_UNSPECIFIED and not res.source_defined
    assert convert.completed_job_from_pb(res.job) == job


def test_error_detail():
    d = convert.problem_to_pb(
        Problem.of(FailedPrecondition("no bridge br-vm", reason="BRIDGE_MISSING", hint="create it or map it"))
    )
    assert (d.reason, d.message, d.hint) == ("BRIDGE_MISSING", "no bridge br-vm", "create it or map it")


def test_problem_round_trip():
    b = Problem("TARGET_UNREACHABLE", "libvirtd on host2 cannot be reached from host1", "check the firewall")
    assert convert.problem_from_pb(convert.problem_to_pb(b)) == b
    err = FailedPrecondition("host2 cannot run the CPU", reason="CPU_INCOMPATIBLE", hint="pick another")
    assert convert.problem_from_pb(convert.problem_to_pb(Problem.of(err))) == Problem(err.reason, err.message, err.hint)


def test_inventory_round_trip():
    inv = Inventory(host=FACTS, domains=(DOMAIN,))
    assert convert.inventory_from_pb(convert.inventory_to_pb(inv)) == inv


def test_prepared_round_trip():
    plan = DiskPlan("vda", "/a/g1.qcow2", "/b/g1.qcow2", "qcow2", 1 << 30, 5 << 20)
    done = PreparedIncoming("p1", "<domain/>", (plan,), ("/b/g1.qcow2",), datetime(2026, 11, 25, 20, 10, tzinfo=UTC))
    assert convert.prepared_from_pb(convert.prepared_to_pb(done)) == done
    dry = PreparedIncoming(disks=(plan,), problems=(Problem("BRIDGE_MISSING", "no br-vm", "map it"),))
    assert convert.prepared_from_pb(convert.prepared_to_pb(dry)) == dry


@pytest.mark.parametrize("state", [None, DomainState.PAUSED])
def test_migrate_result_round_trip(state):
    r = MigrationResult(CompletedJob(920, 157, 136 << 20, 0, 3, False), state, state is not None)
    assert convert.migrate_result_from_pb(convert.migrate_result_to_pb(r)) == r


def test_get_job_carries_the_phase_and_libvirts_job():
    stats = JobStats(
        active=True, job_type="unbounded", operation="migration out", memory_total=256 << 20, memory_processed=1 << 20
    )
    p = MigrationProgress(MigrationPhase.PRECOPY, stats)
    assert convert.job_from_pb(convert.job_to_pb(p)) == p
    done = JobStats(job_type="completed", time_elapsed_ms=920, downtime_ms=157, memory_processed=9, iteration=3)
    response = convert.completed_job_response_to_pb(done)
    assert convert.completed_job_response_from_pb(response) == convert.completed_job_from_stats(done)
