"""Phases, their transitions and deadlines; the migration record and its stored JSON form."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ferry.coordinator.phases import (
    TRANSITIONS,
    GiB,
    Phase,
    Timeouts,
    check_transition,
    migrating_timeout_s,
    phase_timeout_s,
    retry_delay_s,
)
from ferry.coordinator.record import (
    HISTORY_MAX,
    MigrationRecord,
    PhaseChange,
    decode,
    encode,
    new_migration,
    note,
    with_phase,
    with_retry,
)
from ferry.errors import Internal, Unavailable
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
from ferry.v1 import coordinator_pb2

T0 = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
T = Timeouts()


def rec(**kw) -> MigrationRecord:
    r = new_migration(
        id="m-1",
        vm="g1",
        vm_uuid="u-1",
        source_host="host1",
        target_host="host2",
        now=T0,
        timeouts=T,
        memory_bytes=1 * GiB,
    )
    return replace(r, **kw)


@pytest.mark.parametrize(
    ("phase", "final", "touches", "slot"),
    [
        (Phase.PENDING, False, False, False),
        (Phase.PREFLIGHT, False, False, True),
        (Phase.PREPARING, False, True, True),
        (Phase.MIGRATING, False, True, True),
        (Phase.FINISHING, False, True, True),
        (Phase.ROLLING_BACK, False, True, True),
        (Phase.SUCCEEDED, True, False, False),
        (Phase.FAILED, True, False, False),
        (Phase.CANCELLED, True, False, False),
        (Phase.ROLLED_BACK, True, False, False),
    ],
)
def test_predicates(phase, final, touches, slot):
    assert (phase.is_final, phase.touches_target, phase.holds_slot) == (final, touches, slot)


def test_values_match_the_protobuf_enum():
    for p in Phase:
        assert coordinator_pb2.Phase.Value(f"PHASE_{p.name}") == p.value


@pytest.mark.parametrize(
    ("a", "b", "ok"),
    [
        (Phase.PENDING, Phase.PREFLIGHT, True),
        (Phase.PENDING, Phase.CANCELLED, True),
        (Phase.PENDING, Phase.MIGRATING, False),
        (Phase.PREFLIGHT, Phase.PREPARING, True),
        (Phase.PREFLIGHT, Phase.PENDING, True),
        (Phase.PREFLIGHT, Phase.ROLLING_BACK, False),  # nothing to roll back before the target is touched
        (Phase.PREPARING, Phase.MIGRATING, True),
        (Phase.PREPARING, Phase.CANCELLED, False),  # a cancel while preparing cleans the target first
        (Phase.MIGRATING, Phase.FINISHING, True),
        (Phase.MIGRATING, Phase.SUCCEEDED, False),  # success only through Finishing's checks
        (Phase.MIGRATING, Phase.ROLLED_BACK, False),
        (Phase.FINISHING, Phase.SUCCEEDED, True),
        (Phase.FINISHING, Phase.CANCELLED, False),
        (Phase.ROLLING_BACK, Phase.FINISHING, True),  # the job landed despite the abort
        (Phase.ROLLING_BACK, Phase.PENDING, True),
        (Phase.ROLLING_BACK, Phase.ROLLING_BACK, True),  # a retry
        (Phase.PENDING, Phase.PENDING, False),
        (Phase.SUCCEEDED, Phase.PENDING, False),
        (Phase.FAILED, Phase.ROLLING_BACK, False),
    ],
)
def test_check_transition(a, b, ok):
    if ok:
        check_transition(a, b)
    else:
        with pytest.raises(Internal) as e:
            check_transition(a, b)
        assert e.value.reason == "ILLEGAL_TRANSITION"


def test_final_phases_lead_nowhere_and_every_other_phase_can_end():
    for p in Phase:
        assert (not TRANSITIONS[p]) == p.is_final
    # every non-final phase reaches a final one
    for p in Phase:
        seen, todo = set(), [p]
        while todo:
            q = todo.pop()
            seen.add(q)
            todo.extend(TRANSITIONS[q] - seen)
        assert any(q.is_final for q in seen), p


@pytest.mark.parametrize(
    ("memory", "disk", "completion", "expected"),
    [
        (256 << 20, 0, 0, 420.0),  # 200 s -> the 300 s minimum, + 120 s grace
        (1 * GiB, 0, 0, 920.0),  # 800 s/GiB
        (4 * GiB, 0, 0, 3320.0),
        (1 * GiB, 9 * GiB, 0, 8120.0),  # disks to copy count like memory
        (4 * GiB, 0, 600, 720.0),  # the caller's completion timeout + grace
    ],
)
def test_migrating_timeout(memory, disk, completion, expected):
    assert migrating_timeout_s(T, memory, disk, completion) == expected


def test_migrating_timeout_is_data():
    kubevirt_like = Timeouts(migrating_per_gib_s=150, migrating_min_s=150, migrating_grace_s=0)
    assert migrating_timeout_s(kubevirt_like, 4 * GiB, 0) == 600.0


def test_every_non_final_phase_has_a_timeout():
    for p in Phase:
        assert (phase_timeout_s(p, T) is None) == p.is_final


@pytest.mark.parametrize(("n", "delay"), [(1, 30.0), (2, 60.0), (5, 480.0), (6, 900.0), (20, 900.0)])
def test_retry_backoff(n, delay):
    assert retry_delay_s(T, n) == delay


# --- the record ---------------------------------------------------------------------------------


def test_new_migration_is_pending_with_a_queue_deadline():
    r = rec()
    assert r.phase is Phase.PENDING
    assert r.history == (PhaseChange(Phase.PENDING, T0, "submitted"),)
    assert r.phase_deadline == T0 + timedelta(hours=24)


def test_with_phase_appends_history_and_sets_the_deadline():
    now = T0 + timedelta(seconds=5)
    r = with_phase(rec(), Phase.PREFLIGHT, now, "admitted", T)
    r = with_phase(replace(r, retries=3), Phase.PREPARING, now, "preflight passed", T)
    assert [(h.phase, h.reason) for h in r.history] == [
        (Phase.PENDING, "submitted"),
        (Phase.PREFLIGHT, "admitted"),
        (Phase.PREPARING, "preflight passed"),
    ]
    assert r.phase_deadline == now + timedelta(seconds=600)
    assert r.retries == 0 and r.updated_at == now
    m = with_phase(r, Phase.MIGRATING, now, "prepared", T)
    assert m.phase_deadline == now + timedelta(seconds=920)  # 1 GiB of memory
    assert with_phase(m, Phase.FINISHING, now, "", T).phase_deadline == now + timedelta(seconds=120)
    done = with_phase(with_phase(m, Phase.FINISHING, now, "", T), Phase.SUCCEEDED, now, "", T)
    assert done.phase_deadline is None


def test_with_phase_refuses_an_illegal_move():
    with pytest.raises(Internal):
        with_phase(rec(), Phase.SUCCEEDED, T0, "skip", T)


def test_with_retry_backs_off_and_notes():
    r = with_phase(
        with_phase(
            with_phase(with_phase(rec(), Phase.PREFLIGHT, T0, "", T), Phase.PREPARING, T0, "", T),
            Phase.ROLLING_BACK,
            T0,
            "prepare failed",
            T,
        ),
        Phase.ROLLING_BACK,
        T0,
        "x",
        T,
    )
    r1 = with_retry(r, T0, "deadline passed", T)
    r2 = with_retry(r1, T0, "deadline passed", T)
    assert (r1.retries, r2.retries) == (1, 2)
    assert r2.phase_deadline == T0 + timedelta(seconds=60)
    assert r2.history[-1] == PhaseChange(Phase.ROLLING_BACK, T0, "retry 2: deadline passed")
    with pytest.raises(Internal):
        with_retry(rec(), T0, "no retries while queued", T)


def test_history_is_capped_keeping_the_submission():
    r = rec()
    for i in range(HISTORY_MAX + 50):
        r = note(r, T0, f"n{i}")
    assert len(r.history) == HISTORY_MAX
    assert r.history[0].reason == "submitted" and r.history[-1].reason == f"n{HISTORY_MAX + 49}"


@pytest.mark.parametrize(
    ("phases", "started"),
    [
        ((), False),
        ((Phase.PREFLIGHT, Phase.PREPARING), False),
        ((Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING, Phase.ROLLING_BACK), True),
        ((Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK, Phase.PENDING, Phase.PREFLIGHT), False),
    ],
)
def test_migration_started(phases, started):
    r = rec()
    for p in phases:
        r = with_phase(r, p, T0, "", T)
    assert r.migration_started is started


def full_record() -> MigrationRecord:
    """Every field away from its default."""
    return MigrationRecord(
        id="m-42",
        vm="g1",
        vm_uuid="9c1f6a6e-0000-4000-8000-000000000001",
        source_host="host1",
        target_host="host2",
        created_at=T0,
        options=MigrationOptions(
            offline=False,
            storage=StorageMode.COPY_INC,
            migrate_disks=("vda", "vdb"),
            persist_dest=False,
            undefine_source=False,
            bandwidth_mibps=100,
            max_downtime_ms=500,
            auto_converge=True,
            allow_postcopy=True,
            unsafe=True,
            completion_timeout_s=900,
            postcopy_on_stall=True,
        ),
        mapping=HostMapping(
            bridges={"br-guest": "br-vm"},
            networks={"default": "lan"},
            path_prefixes={"/var/lib/libvirt/images/": "/srv/images/"},
        ),
        priority=-3,
        idempotency_key="drain-host1-g1",
        updated_at=T0 + timedelta(seconds=9),
        phase=Phase.ROLLING_BACK,
        history=(PhaseChange(Phase.PENDING, T0, "submitted"), PhaseChange(Phase.ROLLING_BACK, T0, "ünïcode ✓")),
        phase_deadline=T0 + timedelta(minutes=3),
        memory_bytes=256 << 20,
        disk_bytes=3 << 30,
        prepare_id="p-7",
        destination_xml="<domain type='qemu'><name>g1</name></domain>",
        progress=MigrationProgress(
            MigrationPhase.PRECOPY,
            JobStats(
                memory_total=1,
                memory_processed=2,
                memory_remaining=3,
                disk_total=4,
                disk_processed=5,
                disk_remaining=6,
                iteration=7,
                dirty_rate_pages=8,
                page_size=4096,
                bandwidth_bps=9,
                time_elapsed_ms=10,
                auto_converge_throttle=20,
            ),
            300,
        ),
        result=CompletedJob(
            time_elapsed_ms=1, downtime_ms=2, memory_processed=3, disk_processed=4, iterations=5, postcopy=True
        ),
        error=Problem("MIGRATION_TIMEOUT", "too slow", "raise the bandwidth"),
        cancel_requested=True,
        attempt=2,
        retries=1,
        rollback_to=Phase.CANCELLED,
        target_cleaned=True,
        lost_host="host2",
        lost_since=T0 + timedelta(seconds=5),
        revision=0,
    )


def test_round_trip_every_field():
    r = full_record()
    back = decode(encode(r), 77)
    assert back == replace(r, revision=77)
    assert back.created_at.tzinfo is not None


def test_round_trip_defaults():
    assert decode(encode(rec()), 3) == replace(rec(), revision=3)


def test_the_wait_for_a_lost_agent_is_stored_only_while_waiting():
    import json

    assert "lost_host" not in json.loads(encode(rec()))  # so that older coordinators read it
    waiting = replace(rec(), lost_host="host1", lost_since=T0)
    doc = json.loads(encode(waiting))
    assert (doc["lost_host"], doc["lost_since"]) == ("host1", "2026-11-25T20:00:00+00:00")
    assert decode(encode(waiting), 1) == replace(waiting, revision=1)


def test_json_names_enums_and_keeps_revision_out():
    import json

    doc = json.loads(encode(full_record()))
    assert doc["schema"] == 1
    assert doc["phase"] == "ROLLING_BACK" and doc["rollback_to"] == "CANCELLED"
    assert doc["options"]["storage"] == "COPY_INC" and doc["progress"]["phase"] == "PRECOPY"
    assert doc["created_at"] == "2026-11-25T20:00:00+00:00"
    assert "revision" not in doc


def test_times_are_stored_in_utc():
    cet = timezone(timedelta(hours=1))
    r = rec(created_at=datetime(2026, 11, 25, 21, 0, tzinfo=cet))
    import json

    assert json.loads(encode(r))["created_at"] == "2026-11-25T20:00:00+00:00"


def test_naive_times_are_refused():
    with pytest.raises(Internal):
        encode(rec(created_at=datetime(2026, 11, 25, 20, 0)))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json", "RECORD_INVALID"),
        (b'{"schema": 2, "id": "m-1"}', "RECORD_SCHEMA"),
        (b'{"id": "m-1"}', "RECORD_SCHEMA"),
        (b'{"schema": 1, "id": "m-1"}', "RECORD_INVALID"),
        (encode(rec()).replace(b'"PENDING"', b'"LIMBO"'), "RECORD_INVALID"),
        (encode(rec()).replace(b'"schema":1', b'"schema":1,"surprise":true'), "RECORD_INVALID"),
    ],
)
def test_decode_errors_say_why(data, reason):
    with pytest.raises(Internal) as e:
        decode(data, 1)
    assert e.value.reason == reason and e.value.hint


def test_the_record_stores_the_figures_of_the_agents_progress():
    p = MigrationProgress(
        MigrationPhase.DISK_MIRROR,
        JobStats(
            active=True,
            time_elapsed_ms=1500,
            memory_total=100,
            memory_processed=40,
            memory_remaining=60,
            disk_total=10,
            disk_processed=5,
            disk_remaining=5,
            dirty_rate_pages=12,
            iteration=3,
            bandwidth_bps=1000,
            auto_converge_throttle=20,
        ),
        max_downtime_ms=300,
        eta_ms=4200,
    )
    import json

    # the JSON keys of the records older coordinators wrote (their ProgressSnapshot's fields),
    # and the ETA and the post-copy link's state since
    assert json.loads(encode(replace(rec(), progress=p)))["progress"] == dict(
        phase="DISK_MIRROR",
        memory_total=100,
        memory_processed=40,
        memory_remaining=60,
        disk_total=10,
        disk_processed=5,
        disk_remaining=5,
        iteration=3,
        dirty_rate_pages=12,
        page_size=4096,
        bandwidth_bps=1000,
        elapsed_ms=1500,
        auto_converge_throttle=20,
        max_downtime_ms=300,
        eta_ms=4200,
        postcopy_failed=False,
    )


def test_a_record_of_an_older_coordinator_is_read():
    """Written before the record kept the disk plan: its progress, error and copied disks."""
    old = (
        b'{"attempt":1,"cancel_requested":false,"copied_disks":["/img/g1.qcow2"],"created_at":'
        b'"2026-11-25T20:00:00+00:00","destination_xml":"","disk_bytes":0,"error":{"hint":"see the log",'
        b'"message":"the job failed","reason":"MIGRATION_FAILED"},"history":[{"at":"2026-11-25T20:00:00+00:00",'
        b'"phase":"PENDING","reason":"submitted"}],"id":"m-1","idempotency_key":"","mapping":{"bridges":{},'
        b'"networks":{},"path_prefixes":{}},"memory_bytes":0,"options":{"allow_postcopy":false,'
        b'"auto_converge":false,"bandwidth_mibps":0,"completion_timeout_s":0,"max_downtime_ms":0,'
        b'"migrate_disks":[],"offline":false,"persist_dest":true,"postcopy_on_stall":false,'
        b'"storage":"COPY_ALL","undefine_source":true,"unsafe":false},"phase":"MIGRATING",'
        b'"phase_deadline":null,"prepare_id":"p-1","priority":0,"progress":{"auto_converge_throttle":0,'
        b'"bandwidth_bps":5,"dirty_rate_pages":0,"disk_processed":0,"disk_remaining":0,"disk_total":0,'
        b'"elapsed_ms":700,"iteration":2,"max_downtime_ms":0,"memory_processed":40,"memory_remaining":60,'
        b'"memory_total":100,"page_size":4096,"phase":"POSTCOPY"},"result":null,"retries":0,'
        b'"rollback_to":null,"schema":1,"source_host":"host1","target_cleaned":false,"target_host":"host2",'
        b'"updated_at":"2026-11-25T20:00:00+00:00","vm":"g1","vm_uuid":"u-1"}'
    )
    r = decode(old, 5)
    assert r.copied_disks == ("/img/g1.qcow2",)
    assert r.error == Problem("MIGRATION_FAILED", "the job failed", "see the log")
    assert r.progress == MigrationProgress(
        MigrationPhase.POSTCOPY,
        JobStats(
            memory_total=100,
            memory_processed=40,
            memory_remaining=60,
            iteration=2,
            bandwidth_bps=5,
            time_elapsed_ms=700,
        ),
    )


def test_error_detail_of_a_ferry_error():
    assert Problem.of(Unavailable("no route", reason="AGENT_DOWN", hint="start it")) == Problem(
        "AGENT_DOWN", "no route", "start it"
    )
