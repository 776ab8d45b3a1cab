"""The coordinator's side of the copied disks and of the host CPU (pure): the record keeps the
disk plan from the prepare (its copies' source paths are the source's to remove), the commit's
note goes into the history, and a host-passthrough guest needs the same host CPU on the target."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.coordinator.decide import decide
from ferry.coordinator.events import (
    AgentLost,
    CleanedUp,
    CommitTarget,
    Committed,
    ObservePlacement,
    Placement,
    Prepared,
    StartMigration,
    Tick,
)
from ferry.coordinator.phases import GiB, Phase, Timeouts
from ferry.coordinator.preflight import host_cpu_blockers
from ferry.coordinator.record import decode, encode, new_migration, with_phase
from ferry.model import DiskPlan, DomainInfo, DomainState, HostFacts

T0 = datetime(2026, 11, 25, 20, 0, tzinfo=UTC)
NOW = T0 + timedelta(seconds=10)
T = Timeouts()
DISKS = ("/var/lib/libvirt/images/g1-vda.qcow2", "/var/lib/libvirt/images/g1-vdb.qcow2")
PLANS = (
    DiskPlan("vda", DISKS[0], DISKS[0], virtual_size=GiB, allocation=GiB // 4),
    DiskPlan("vdb", DISKS[1], DISKS[1], virtual_size=GiB),
    DiskPlan("vdc", "/shared/g1-data.raw", "/shared/g1-data.raw", format="raw", copy=False),  # shared: stays
)


def walk(*phases: Phase, **kw):
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
    for p in phases:
        r = with_phase(r, p, T0, p.name.lower(), T)
    return replace(r, **kw)


PREPARING = walk(Phase.PREFLIGHT, Phase.PREPARING, attempt=1)
FINISHING = walk(
    Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING, Phase.FINISHING, attempt=1, prepare_id="p-1", disks=PLANS
)


def test_the_prepare_tells_which_source_disks_are_copied():
    d = decide(PREPARING, Prepared("p-1", "<domain/>", PLANS), NOW, T)
    assert d.record.phase is Phase.MIGRATING and d.actions == (StartMigration(),)
    assert d.record.copied_disks == DISKS
    assert d.record.disks == PLANS  # sent with the Migrate call


def test_a_retry_forgets_the_copied_disks_of_the_attempt_before():
    requeued = walk(
        Phase.PREFLIGHT, Phase.PREPARING, Phase.ROLLING_BACK, attempt=1, rollback_to=Phase.PENDING, disks=PLANS
    )
    d = decide(requeued, CleanedUp(), NOW, T)
    assert d.record.phase is Phase.PENDING and d.record.copied_disks == ()


@pytest.mark.parametrize(
    ("note", "history"),
    [
        ("", [("FINISHING", "finishing"), ("SUCCEEDED", "target committed")]),
        (
            "source disks removed on host1: " + ", ".join(DISKS),
            [
                ("FINISHING", "finishing"),
                ("FINISHING", "source disks removed on host1: " + ", ".join(DISKS)),
                ("SUCCEEDED", "target committed"),
            ],
        ),
        (
            "SOURCE_DISKS_LEFT: a on host1 not removed (DOMAIN_STILL_HERE: ...)",
            [
                ("FINISHING", "finishing"),
                ("FINISHING", "SOURCE_DISKS_LEFT: a on host1 not removed (DOMAIN_STILL_HERE: ...)"),
                ("SUCCEEDED", "target committed"),
            ],
        ),
    ],
)
def test_committed_notes_what_became_of_the_source_disks_and_succeeds(note, history):
    d = decide(FINISHING, Committed(note), NOW, T)
    assert d.record.phase is Phase.SUCCEEDED and d.record.error is None
    assert [(h.phase.name, h.reason) for h in d.record.history[-len(history) :]] == history


# ---------------------------------------------------------------- a source that does not answer the removal

LOST = "SOURCE_DISKS_LEFT: ... on host1 not removed (AGENT_UNREACHABLE: connection refused); remove them by hand ..."
REMOVED = "source disks removed on host1: " + ", ".join(DISKS)
ON_TARGET = Placement(None, DomainState.RUNNING)


def step(r, event, at_s: float):
    """decide at T0 + ``at_s``, the record through its JSON as the engine stores it."""
    d = decide(r, event, T0 + timedelta(seconds=at_s), T)
    return decode(encode(d.record), r.revision + 1), d


def test_a_source_down_at_the_removal_is_waited_for_then_its_disks_are_removed():
    r, d = step(FINISHING, Committed(LOST, source_lost=True), 10)
    assert r.phase is Phase.FINISHING and r.committed_at == T0 + timedelta(seconds=10)
    assert r.lost_host == "host1" and d.actions == (ObservePlacement(T.agent_probe_s),)
    assert "target committed; the copied disks on host1 are removed once it answers" in [h.reason for h in r.history]
    assert not any("SOURCE_DISKS_LEFT" in h.reason for h in r.history)  # not left yet
    r, d = step(r, AgentLost("host1"), 11)  # the probe: still down
    assert r.phase is Phase.FINISHING and isinstance(d.actions[0], ObservePlacement)
    r, d = step(r, ON_TARGET, 18)  # back: the placement is known again
    assert d.actions == (CommitTarget("p-1"),) and r.lost_host == "" and r.committed_at is not None
    r, d = step(r, Committed(REMOVED), 19)  # the commit is a no-op now; the removal works
    assert r.phase is Phase.SUCCEEDED and r.error is None and r.committed_at is None
    assert [h.reason for h in r.history[-2:]] == [REMOVED, "target committed"]


def test_a_source_lost_again_at_the_second_try_is_waited_for_from_the_first_commit_on():
    r, _ = step(FINISHING, Committed(LOST, source_lost=True), 10)
    r, _ = step(r, ON_TARGET, 20)
    r, d = step(r, Committed(LOST, source_lost=True), 21)  # down again
    assert r.phase is Phase.FINISHING and r.committed_at == T0 + timedelta(seconds=10)
    assert [h.reason for h in r.history].count(
        "target committed; the copied disks on host1 are removed once it answers"
    ) == 1
    r, _ = step(r, ON_TARGET, 20 + T.agent_lost_s)
    r, _ = step(r, Committed(LOST, source_lost=True), 20 + T.agent_lost_s)  # agent_lost_s after the commit
    assert r.phase is Phase.SUCCEEDED and r.error is None
    assert r.history[-2].reason == LOST


def test_a_source_that_never_answers_ends_succeeded_with_its_disks_noted_not_failed():
    r, _ = step(FINISHING, Committed(LOST, source_lost=True), 10)
    r, d = step(r, Tick(), 10 + T.agent_lost_s)
    assert r.phase is Phase.SUCCEEDED and r.error is None and r.lost_host == "" and r.committed_at is None
    left = r.history[-2].reason
    assert left.startswith("SOURCE_DISKS_LEFT: " + ", ".join(DISKS) + " on host1 not removed")
    assert f"agent on host1 lost for {T.agent_lost_s:g} s" in left and "run on host2 only" in left


def test_a_lost_agent_in_finishing_before_the_commit_still_fails_touching_nothing():
    r, _ = step(FINISHING, AgentLost("host1"), 10)
    r, _ = step(r, Tick(), 10 + T.agent_lost_s)
    assert r.phase is Phase.FAILED and r.error is not None and r.error.reason == "AGENT_LOST"
    assert "were not committed and are kept" in r.error.hint


def test_the_commit_time_is_in_the_json_only_while_it_waits():
    waiting = replace(FINISHING, committed_at=NOW)
    assert decode(encode(waiting), 7).committed_at == NOW
    assert b"committed_at" not in encode(FINISHING)  # a record older coordinators read


def test_the_record_keeps_the_copied_disks_in_its_json():
    assert decode(encode(FINISHING), 7).copied_disks == DISKS
    assert decode(encode(FINISHING), 7).disks == PLANS
    older = encode(replace(FINISHING, disks=())).replace(b'"disks":[],', b"")
    assert b"copied_disks" not in older
    assert decode(older, 7).copied_disks == ()  # a record written before the field existed


# ---------------------------------------------------------------- host CPU of host-passthrough guests


def facts(host, model="Skylake-Server-IBRS", features=("avx2", "avx512f", "sse4.2")):
    return HostFacts(hostname=host, host_uuid=host, cpu_model=model, cpu_features=tuple(features))


def guest(mode):
    return DomainInfo("g1", "u-1", DomainState.RUNNING, cpu_mode=mode)


@pytest.mark.parametrize(
    ("mode", "target", "reasons"),
    [
        ("host-passthrough", facts("host2"), []),  # identical hosts
        ("host-passthrough", facts("host2", features=("avx2", "avx512f", "sse4.2", "amx")), []),  # more is fine
        ("host-passthrough", facts("host2", model="Cascadelake-Server"), ["CPU_INCOMPATIBLE"]),  # another model
        ("host-passthrough", facts("host2", features=("avx2", "sse4.2")), ["CPU_INCOMPATIBLE"]),  # fewer features
        ("maximum", facts("host2", features=("avx2",)), ["CPU_INCOMPATIBLE"]),
        ("custom", facts("host2", model="Haswell", features=()), []),  # the target agent compares these
        ("host-model", facts("host2", model="Haswell", features=()), []),
        ("", facts("host2", model="Haswell", features=()), []),
    ],
)
def test_host_cpu_blockers(mode, target, reasons):
    assert [b.reason for b in host_cpu_blockers("g1", guest(mode), facts("host1"), target)] == reasons


def test_host_cpu_blocker_names_the_models_and_missing_features():
    [b] = host_cpu_blockers(
        "g1", guest("host-passthrough"), facts("host1"), facts("host2", model="Haswell-noTSX", features=("avx2",))
    )
    assert "Skylake-Server-IBRS" in b.message and "Haswell-noTSX" in b.message
    assert "host2 lacks avx512f, sse4.2" in b.message
    assert "same CPU model" in b.hint and "hypervisor-cpu-baseline" in b.hint


def test_unknown_facts_pass():
    assert host_cpu_blockers("g1", guest("host-passthrough"), None, facts("host2")) == []
    assert host_cpu_blockers("g1", None, facts("host1"), facts("host2", model="x")) == []
