"""The JSON log lines of one migration: the leader's engine over an in-memory store and two agents
(real gRPC servers over fakes) in this process, every line captured as ferry-agent and
ferry-coordinator write it with ``[log] format = "json"``.

What an operator grepping the logs for one migration needs: every line is one JSON object with
time, level, logger and message; the lines about the migration, the coordinator's and both
agents' (the source's Migrate, the target's PrepareIncoming), carry its ``migration_id``, ``vm``,
``source`` and ``target``; the agents learn them from the coordinator's calls (gRPC metadata),
not from anything shared in this process.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ferry import logcontext
from ferry.coordinator.engine import Engine
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import decode, encode, new_migration
from ferry.coordinator.slots import Limits
from ferry.keys import encode_id, idempotency_key, migration_key, vm_active_key
from ferry.logsetup import make_handler
from ferry.model import MigrationOptions, StorageMode
from ferry.testing.fleet import Fleet, FleetDirectory, start_fleet
from ferry.testing.memory_store import MemoryStore
from ferry.tomlconfig import LogConfig

FAST = Timeouts(preflight_s=3, preparing_s=3, migrating_min_s=3, finishing_s=1.5, observe_delay_s=0.02)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every record of every logger, as the daemons write them with format = "json"."""
    out = io.StringIO()
    handler = make_handler(LogConfig(format="json"), out)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, 2)
    yield f
    await f.close()


async def migrate(fleet: Fleet) -> str:
    """host1 -> host2 through the leader's engine, as the API submits it; the record's id."""
    store = MemoryStore()
    uuid = fleet.add_guest("host1", "g1")
    record = new_migration(
        id="m-logs-1",
        vm="g1",
        vm_uuid=uuid,
        source_host="host1",
        target_host="host2",
        now=datetime.now(UTC),
        timeouts=FAST,
        options=MigrationOptions(storage=StorageMode.COPY_ALL),
        mapping=fleet.mapping("host1", "host2"),
        idempotency_key="k1",
        memory_bytes=256 << 20,
    )
    await store.create(vm_active_key(uuid), encode_id(record.id))
    await store.create(idempotency_key("k1"), encode_id(record.id))
    await store.create(migration_key(record.id), encode(record))
    engine = Engine(
        store,
        FleetDirectory(fleet),
        limits=Limits(),
        timeouts=FAST,
        clock=lambda: datetime.now(UTC),
        prepare_ttl_s=60,
        tick_s=0.05,
        progress_write_s=0.05,
        job_poll_s=0.02,
        store_retry_s=0.05,
    )
    task = asyncio.get_running_loop().create_task(engine.run())
    try:
        for _ in range(400):
            entry = await store.get(migration_key(record.id))
            assert entry is not None
            if decode(entry.value, entry.mod_revision).phase.is_final:
                break
            await asyncio.sleep(0.01)
        assert decode(entry.value, entry.mod_revision).phase is Phase.SUCCEEDED
    finally:
        await engine.stop()
        await task
        await store.close()
    return record.id


async def test_every_line_about_the_migration_names_it(fleet: Fleet, json_log: io.StringIO) -> None:
    assert logcontext.current() is None  # nothing bound in the test's own task
    migration_id = await migrate(fleet)
    assert fleet.running_on("g1") == ["host2"]

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    assert lines and all(isinstance(line, dict) for line in lines)
    for line in lines:
        assert {"time", "level", "logger", "message", *logcontext.FIELDS} <= set(line), line
    about = [line for line in lines if line["migration_id"] == migration_id]
    for line in about:
        assert (line["vm"], line["source"], line["target"]) == ("g1", "host1", "host2"), line
    # a line naming the migration in its text carries its fields too
    unlabelled = [line for line in lines if migration_id in line["message"] and line["migration_id"] != migration_id]
    assert not unlabelled, unlabelled
    loggers = {line["logger"] for line in about}
    assert "ferry.coordinator.runner" in loggers  # the leader's transitions
    assert "ferry.agent.migration" in loggers  # the source agent's job ("migrating g1 ...", "migrated g1 ...")
    assert "ferry.agent.prepare" in loggers  # the target agent's PrepareIncoming ("prepared ... for g1")
    phases = [
        line["message"] for line in about if line["logger"] == "ferry.coordinator.runner" and "->" in line["message"]
    ]
    assert any("MIGRATING -> FINISHING" in m for m in phases) and any("-> SUCCEEDED" in m for m in phases)
    # lines about nothing in particular carry the fields empty, not someone else's
    others = [line for line in lines if line["migration_id"] != migration_id]
    assert all(line["migration_id"] == "" and line["vm"] == "" for line in others)
