"""MigrationRecord <-> ferry.v1.Migration: what API clients see of a stored record."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.convergence import ConvergencePolicy, DowntimeStep, PostcopyMode, TimeoutAction
from ferry.coordinator import convert
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import MigrationRecord, decode, encode, new_migration, with_action, with_phase
from ferry.model import (
    CompletedJob,
    HostMapping,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    PolicyAction,
    Problem,
    StorageMode,
)
from ferry.prediction import Prediction
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


def with_policy():
    """A migration under a named policy, with its prediction and two actions taken."""
    policy = ConvergencePolicy(
        name="busy",
        bandwidth_mibps=32,
        downtime_steps=(DowntimeStep(300), DowntimeStep(500, after_s=20)),
        postcopy=PostcopyMode.ON_PREDICTION,
        postcopy_bandwidth_mibps=64,
        progress_timeout_s=60,
        timeout_action=TimeoutAction.FORCE_COMPLETE,
    )
    prediction = Prediction(
        False,
        True,
        "post-copy",
        2,
        7.25,
        0.0,
        5.0,
        40.0 * (1 << 20),
        64 << 20,
        160 << 20,
        256 << 20,
        0,
        32.0 * (1 << 20),
        "busy",
        "will not converge at 32 MiB/s",
    )
    r = replace(finished(), policy=policy, prediction=prediction)
    r = with_action(
        r, T0 + timedelta(seconds=3), PolicyAction("set-max-downtime", "step 1 of 2: 300 ms", 400, "policy busy")
    )
    return with_action(
        r, T0 + timedelta(seconds=4), PolicyAction("start-postcopy", "predicted not to converge", 5100, "policy busy")
    )


def ahead_of_its_slot() -> MigrationRecord:
    r = submitted()
    return replace(with_phase(r, Phase.PREFLIGHT, T0, "admitted ahead of its slot (attempt 1)", Timeouts()), ahead=True)


@pytest.mark.parametrize(
    "record",
    [submitted(), finished(), with_policy(), ahead_of_its_slot()],
    ids=["pending", "rolled-back", "policy", "ahead"],
)
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
        "ahead",
        "policy",
        "prediction",
        "actions",
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


def test_policy_prediction_and_actions_survive_the_records_json():
    r = with_policy()
    assert decode(encode(r), 7) == replace(r, revision=7)


def test_a_policys_zeros_take_the_defaults_on_the_wire():
    from ferry import convert as fconvert

    assert fconvert.policy_from_pb(tpb.ConvergencePolicy(name="p")) == ConvergencePolicy(name="p")
    assert fconvert.policy_from_pb(fconvert.policy_to_pb(with_policy().policy)) == with_policy().policy


@pytest.mark.parametrize(
    ("policy", "reason", "field"),
    [
        (tpb.ConvergencePolicy(postcopy_after_s=float("nan")), "OUT_OF_RANGE", "policy.postcopy_after_s"),
        (tpb.ConvergencePolicy(completion_timeout_s=-1.0), "OUT_OF_RANGE", "policy.completion_timeout_s"),
        (tpb.ConvergencePolicy(progress_timeout_s=float("inf")), "OUT_OF_RANGE", "policy.progress_timeout_s"),
        (tpb.ConvergencePolicy(stall_tolerance=2.0), "OUT_OF_RANGE", "policy.stall_tolerance"),
        (tpb.ConvergencePolicy(bandwidth_mibps=4294967295), "OUT_OF_RANGE", "policy.bandwidth_mibps"),
        (
            tpb.ConvergencePolicy(downtime_steps=[tpb.DowntimeStep(max_downtime_ms=300, after_s=1e300)]),
            "OUT_OF_RANGE",
            "policy.downtime_steps[0].after_s",
        ),
        (
            tpb.ConvergencePolicy(downtime_steps=[tpb.DowntimeStep(max_downtime_ms=300)] * 300),
            "TOO_MANY_ITEMS",
            "policy.downtime_steps",
        ),
        (tpb.ConvergencePolicy(name="x" * 500), "FIELD_TOO_LONG", "policy.name"),
    ],
)
def test_a_policy_off_the_wire_is_checked_at_the_edge(policy, reason, field):
    """The agent reads the policy from a MigrateRequest: a NaN, an infinity or a negative number
    of seconds is refused there, with the field named, before the driver runs."""
    from ferry import convert as fconvert
    from ferry.errors import InvalidArgument

    with pytest.raises(InvalidArgument) as err:
        fconvert.policy_from_pb(policy)
    assert err.value.reason == reason and err.value.message.startswith(field)
