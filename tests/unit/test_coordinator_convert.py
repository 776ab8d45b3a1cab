"""MigrationRecord <-> ferry.v1.Migration: what API clients see of a stored record."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.coordinator import convert
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import new_migration, with_phase
from ferry.model import (
    CompletedJob,
    HostMapping,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    Problem,
    StorageMode,
)
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb

T0 = datetime(2026, 11, 25, 12, 0, 0, 123000, tzinfo=UTC)


def submitted():
    return new_migration(
        id="m-1",
        vm="web-1",
        vm_uuid="u-1",
        source_host="host1",
        target_host="host2",
        now=T0,
        timeouts=Timeouts(),
        options=MigrationOptions(
            storage=StorageMode.COPY_ALL, migrate_disks=("vda",), bandwidth_mibps=100, allow_postcopy=True
        ),
        mapping=HostMapping(bridges={"br-guest": "br-vm"}, path_prefixes={"/a": "/b"}),
        priority=5,
        idempotency_key="k-1",
        memory_bytes=256 << 20,
    )


def finished():
    t = Timeouts()
    r = submitted()
    for i, phase in enumerate((Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING), 1):
        r = with_phase(r, phase, T0 + timedelta(seconds=i), f"to {phase.name}", t)
    r = replace(
        r,
        prepare_id="p-9",
        cancel_requested=True,
        progress=MigrationProgress(
            MigrationPhase.PRECOPY,
            JobStats(
                memory_total=256 << 20,
                memory_processed=100,
                memory_remaining=5,
                iteration=3,
                dirty_rate_pages=7,
                page_size=4096,
                bandwidth_bps=10 << 20,
                time_elapsed_ms=900,
                auto_converge_throttle=20,
            ),
            max_downtime_ms=300,
        ),
    )
    r = with_phase(r, Phase.ROLLING_BACK, T0 + timedelta(seconds=5), "failed", t)
    r = replace(
        r,
        error=Problem("MIGRATION_FAILED", "job failed", "look at the source's libvirtd log"),
        result=CompletedJob(time_elapsed_ms=900, downtime_ms=40, memory_processed=100, iterations=3),
    )
    return with_phase(r, Phase.ROLLED_BACK, T0 + timedelta(seconds=6), "target cleaned", t)


@pytest.mark.parametrize("record", [submitted(), finished()], ids=["pending", "rolled-back"])
def test_round_trip_keeps_every_field_the_api_carries(record):
    back = convert.migration_from_pb(convert.migration_to_pb(record))
    shown = (
        "id",
        "vm",
        "vm_uuid",
        "source_host",
        "target_host",
        "created_at",
        "options",
        "mapping",
        "priority",
        "idempotency_key",
        "updated_at",
        "phase",
        "history",
        "prepare_id",
        "progress",
        "result",
        "error",
        "cancel_requested",
    )
    for name in shown:
        assert getattr(back, name) == getattr(record, name), name


def test_migration_as_the_cli_reads_it():
    m = convert.migration_to_pb(finished())
    assert m.phase == cpb.PHASE_ROLLED_BACK
    assert [h.phase for h in m.history] == [
        "Pending",
        "Preflight",
        "Preparing",
        "Migrating",
        "RollingBack",
        "RolledBack",
    ]
    assert m.history[0].reason == "submitted" and m.history[0].at.ToDatetime(tzinfo=UTC) == T0
    assert m.options.storage == tpb.STORAGE_MODE_COPY_ALL and list(m.options.migrate_disks) == ["vda"]
    assert dict(m.mapping.bridges) == {"br-guest": "br-vm"}
    assert (m.error.reason, m.error.hint) == ("MIGRATION_FAILED", "look at the source's libvirtd log")
    assert m.progress.phase == tpb.MIGRATION_PHASE_PRECOPY and m.progress.iteration == 3
    assert m.result.downtime_ms == 40 and m.cancel_requested and m.prepare_id == "p-9"


def test_pending_record_has_no_progress_result_or_error():
    m = convert.migration_to_pb(submitted())
    assert not m.HasField("progress") and not m.HasField("result") and not m.HasField("error")
    assert m.phase == cpb.PHASE_PENDING and m.updated_at == m.created_at


@pytest.mark.parametrize("phase", list(Phase))
def test_phase_numbers_and_labels(phase):
    assert convert.phase_from_pb(convert.phase_to_pb(phase)) is phase
    assert cpb.Phase.Name(convert.phase_to_pb(phase)) == f"PHASE_{phase.name}"
    assert convert.phase_from_label(convert.phase_label(phase)) is phase


def test_unknown_phase_number_is_none():
    assert convert.phase_from_pb(cpb.PHASE_UNSPECIFIED) is None
    assert convert.phase_from_pb(99) is None


def test_request_options_say_whether_storage_was_given():
    opts, explicit = convert.options_from_request(tpb.MigrationOptions(storage=tpb.STORAGE_MODE_UNSPECIFIED))
    assert not explicit
    opts, explicit = convert.options_from_request(tpb.MigrationOptions(storage=tpb.STORAGE_MODE_COPY_INC))
    assert explicit and opts.storage is StorageMode.COPY_INC
