"""Live operations on a running migration (coordinator/live.py), on the in-memory store with a
recording agent: what is sent to the source, what the record says afterwards, what is refused."""

from __future__ import annotations

import doctest
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry import keys
from ferry.convergence import ConvergencePolicy, PostcopyMode
from ferry.coordinator import live as live_module
from ferry.coordinator.live import LiveOps, LiveRequest
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import MigrationRecord, decode, encode, new_migration, with_phase
from ferry.errors import FailedPrecondition, InvalidArgument, NotFound
from ferry.ports import TuneResult
from ferry.testing.memory_store import MemoryStore

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_docstring_examples():
    assert doctest.testmod(live_module).failed == 0


@dataclass
class RecordingAgent:
    """The source agent's TuneMigration: records the calls, answers libvirt's values."""

    calls: list[dict[str, object]] = field(default_factory=list)
    max_downtime_ms: int = 300
    bandwidth_mibps: int = 32

    async def tune_migration(self, vm: str, **kw: object) -> TuneResult:
        self.calls.append({"vm": vm, **kw})
        if kw.get("max_downtime_ms") is not None:
            self.max_downtime_ms = int(kw["max_downtime_ms"])  # type: ignore[arg-type]
        if kw.get("bandwidth_mibps") is not None:
            self.bandwidth_mibps = int(kw["bandwidth_mibps"])  # type: ignore[arg-type]
        done = "force-complete requested" if kw.get("force_complete") else "tuned"
        return TuneResult(self.max_downtime_ms, self.bandwidth_mibps, done)


@dataclass
class Hosts:
    agent: RecordingAgent

    def client(self, host: str) -> RecordingAgent:
        assert host == "host1"  # always the source
        return self.agent


async def stored(store: MemoryStore, record: MigrationRecord) -> MigrationRecord:
    revision = await store.create(keys.migration_key(record.id), encode(record))
    return replace(record, revision=revision)


def migrating(policy: ConvergencePolicy | None = None) -> MigrationRecord:
    r = new_migration(
        id="m-1",
        vm="g1",
        vm_uuid="u-1",
        source_host="host1",
        target_host="host2",
        now=T0,
        timeouts=Timeouts(),
        policy=policy,
    )
    for phase in (Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING):
        r = with_phase(r, phase, T0, phase.name.lower(), Timeouts())
    return r


@pytest.fixture
def setup() -> tuple[MemoryStore, RecordingAgent, LiveOps]:
    store = MemoryStore()
    agent = RecordingAgent()
    return store, agent, LiveOps(store, Hosts(agent), lambda: T0 + timedelta(seconds=42))  # type: ignore[arg-type]


async def test_tune_reaches_the_source_and_the_record_says_who_and_what_libvirt_reads(setup):
    store, agent, ops = setup
    await stored(store, migrating())
    record, result = await ops.control("m-1", LiveRequest(max_downtime_ms=700), requested_by="alice via unix:")
    assert agent.calls == [
        {
            "vm": "u-1",
            "max_downtime_ms": 700,
            "bandwidth_mibps": None,
            "start_postcopy": False,
            "force_complete": False,
            "requested_by": "alice via unix:",
        }
    ]
    assert (result.max_downtime_ms, result.bandwidth_mibps) == (700, 32)
    said = "tune by alice via unix:: tuned (libvirt reads max downtime 700 ms, bandwidth 32 MiB/s)"
    assert record.history[-1].reason == said and record.history[-1].phase is Phase.MIGRATING
    assert [(e.action.action, e.action.by, e.at) for e in record.actions] == [
        ("tune", "alice via unix:", T0 + timedelta(seconds=42))
    ]
    entry = await store.get(keys.migration_key("m-1"))
    assert decode(entry.value, entry.mod_revision) == record


async def test_force_complete_and_postcopy_are_sent_as_such(setup):
    store, agent, ops = setup
    await stored(store, migrating(ConvergencePolicy(name="p", postcopy=PostcopyMode.MANUAL)))
    await ops.control("m-1", LiveRequest(force_complete=True), requested_by="bob")
    await ops.control("m-1", LiveRequest(start_postcopy=True), requested_by="bob")
    assert [(c["force_complete"], c["start_postcopy"]) for c in agent.calls] == [(True, False), (False, True)]
    entry = await store.get(keys.migration_key("m-1"))
    assert [e.action.action for e in decode(entry.value, entry.mod_revision).actions] == ["force-complete", "postcopy"]


@pytest.mark.parametrize(
    ("record", "req", "error", "reason"),
    [
        (migrating(), LiveRequest(), InvalidArgument, "NOTHING_TO_DO"),
        (
            replace(migrating(), phase=Phase.SUCCEEDED),
            LiveRequest(max_downtime_ms=500),
            FailedPrecondition,
            "MIGRATION_NOT_RUNNING",
        ),
        (
            new_migration(
                id="m-1", vm="g1", vm_uuid="u-1", source_host="host1", target_host="host2", now=T0, timeouts=Timeouts()
            ),
            LiveRequest(force_complete=True),
            FailedPrecondition,
            "MIGRATION_NOT_RUNNING",
        ),
        # the job was started without libvirt's post-copy flag: a switch cannot work
        (
            migrating(ConvergencePolicy(name="strict")),
            LiveRequest(start_postcopy=True),
            FailedPrecondition,
            "POSTCOPY_NOT_ALLOWED",
        ),
    ],
)
async def test_refused_requests_reach_no_agent_and_change_no_record(setup, record, req, error, reason):
    store, agent, ops = setup
    before = await stored(store, record)
    with pytest.raises(error) as e:
        await ops.control("m-1", req, requested_by="carol")
    assert e.value.reason == reason and e.value.hint
    assert agent.calls == []
    entry = await store.get(keys.migration_key("m-1"))
    assert entry.mod_revision == before.revision


async def test_an_unknown_migration_is_not_found(setup):
    _, agent, ops = setup
    with pytest.raises(NotFound):
        await ops.control("m-404", LiveRequest(max_downtime_ms=1), requested_by="dave")
    assert agent.calls == []


@dataclass
class PeerContext:
    """What ``requested_by`` reads of a gRPC call: the peer, no TLS identity, the metadata."""

    address: str
    metadata: tuple[tuple[str, str], ...] = ()

    def peer(self) -> str:
        return self.address

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


@pytest.mark.parametrize(
    ("claimed", "expected"),
    [
        ("", "ipv4:127.0.0.1:5000"),
        ("alice", "alice via ipv4:127.0.0.1:5000"),
        ("al\x00ice\n", "al?ice? via ipv4:127.0.0.1:5000"),
    ],
)
def test_who_asked_is_printable_and_short_enough_for_the_agent(claimed, expected):
    """The coordinator sends ``requested_by`` on to the source agent, which refuses control
    characters and more than 200 characters in it: a client's claimed name is cut and cleaned."""
    from ferry import validate
    from ferry.coordinator.service import USER_METADATA, requested_by

    meta = ((USER_METADATA, claimed),) if claimed else ()
    assert requested_by(PeerContext("ipv4:127.0.0.1:5000", meta)) == expected  # type: ignore[arg-type]
    long = requested_by(PeerContext("ipv4:127.0.0.1:5000", ((USER_METADATA, "x" * 10_000),)))  # type: ignore[arg-type]
    assert validate.text(long, "requested_by") == long
