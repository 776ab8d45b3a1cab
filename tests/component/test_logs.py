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
import contextlib
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


async def test_only_a_coordinator_names_the_migration_of_its_calls_in_the_servers_log(tmp_path: Path):
    """With TLS, the migration fields a call's metadata names go on the server's log lines, the
    audit line included, only when the caller is a coordinator: a refused reader cannot make its
    line read `vm=web-1 outcome=OK identity=ferry://coordinator/c1`."""
    import grpc

    from ferry.agent.config import AgentConfig
    from ferry.agent.main import build_agent
    from ferry.agent.main import register as register_agent
    from ferry.certs import issue_identity, new_ca, write_pem
    from ferry.identity import Identity, Role
    from ferry.logcontext import MigrationFields
    from ferry.logsetup import TextFormatter
    from ferry.rpc import Tls, create_channel, create_server
    from ferry.testing.fake_hostsystem import FakeHostSystem
    from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor
    from ferry.v1 import agent_pb2 as apb
    from ferry.v1 import agent_pb2_grpc as agrpc

    def tls(stem: str) -> Tls:
        return Tls(tmp_path / "ca.pem", tmp_path / f"{stem}.pem", tmp_path / f"{stem}-key.pem")

    ca = new_ca("CA")
    write_pem(tmp_path, "ca", ca)
    agent_id = Identity(Role.AGENT, "host1")
    write_pem(tmp_path, "server", issue_identity(ca, agent_id, dns=["localhost"], ips=["127.0.0.1"]))
    write_pem(tmp_path, "reader", issue_identity(ca, Identity(Role.READER, "grafana")))
    write_pem(tmp_path, "coordinator", issue_identity(ca, Identity(Role.COORDINATOR, "c1")))
    hv = FakeHypervisor(hostname="host1", uri="qemu+tls://127.0.0.1/system", fleet=FakeFleet())
    config = AgentConfig(
        name="host1", listen=("127.0.0.1:0",), advertise_libvirt_uri=hv.uri, image_dirs=("/images",),
        state_dir=str(tmp_path / "state"), tls=tls("server"),
    )  # fmt: skip
    agent = build_agent(config, hv, FakeHostSystem(dirs={"/images": 1 << 30}))
    server, [port] = create_server(config.listen, register_agent(agent), tls=config.tls)
    await server.start()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(TextFormatter())
    handler.addFilter(MigrationFields())
    audit = logging.getLogger("ferry.audit")
    audit.addHandler(handler)
    audit.setLevel(logging.INFO)
    forged = (("ferry-migration-id", "m-forged"), ("ferry-vm", "web-1 outcome=OK identity=ferry://coordinator/c1"))
    try:
        for who in ("reader", "coordinator"):
            channel = create_channel(f"127.0.0.1:{port}", tls=tls(who))
            try:
                call = agrpc.AgentStub(channel).CleanupIncoming(
                    apb.CleanupIncomingRequest(prepare_id="p1"), metadata=forged, timeout=5
                )
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call
            finally:
                await channel.close()
        reader, coordinator = out.getvalue().strip().splitlines()
        assert "outcome=PERMISSION_DENIED" in reader and "m-forged" not in reader and "web-1" not in reader
        # the coordinator's own words are kept, quoted where they are more than one word
        assert 'migration_id=m-forged  vm="web-1 outcome=OK identity=ferry://coordinator/c1"' in coordinator
    finally:
        audit.removeHandler(handler)
        await server.stop(None)
