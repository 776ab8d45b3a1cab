"""A coordinator under test: a real coordinator gRPC server on 127.0.0.1:0 over an in-memory
store, with real agent gRPC servers (over fakes) that registered themselves in that store; the
``fx`` and ``leading`` fixtures (tests/component/conftest.py) are built from it.

    s = await start(tmp_path)            # not leading: records stay where a test puts them
    await lead(s)                        # elected, its engine running with fast timings
    code, out = await s.ferry(capsys, "vms")   # the real `ferry` code, -o json
    await close(s)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from ferry import keys
from ferry.agent.registration import Registration
from ferry.cli import main as cli
from ferry.coordinator.agent_client import GrpcAgentClient
from ferry.coordinator.config import AgentsConfig, CoordinatorConfig, EtcdConfig, HostDecl, bandwidth_budget
from ferry.coordinator.engine import Engine
from ferry.coordinator.main import Coordinator, build_coordinator
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import decode, encode, with_phase
from ferry.rpc import create_channel
from ferry.testing.fleet import Fleet as AgentFleet
from ferry.testing.fleet import start_fleet
from ferry.testing.memory_store import MemoryStore
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc

# host1 and host3 have bridge br-guest, host2 br-vm (ferry/testing/fleet.py)
HOSTS = {
    "host1": HostDecl("host1", bridges={"guest": "br-guest"}),
    "host2": HostDecl("host2", bridges={"guest": "br-vm"}),
    "host3": HostDecl("host3", bridges={"guest": "br-guest"}),
}

FAST = Timeouts(
    preflight_s=3,
    preparing_s=3,
    migrating_min_s=3,
    migrating_grace_s=1,
    finishing_s=1.5,
    rolling_back_s=1.5,
    retry_base_s=0.2,
    retry_max_s=0.5,
    observe_delay_s=0.02,
)


@dataclass
class Setup:
    agents: AgentFleet
    store: MemoryStore
    coordinator: Coordinator
    address: str
    stub: cgrpc.CoordinatorStub
    registrations: dict[str, Registration]
    channel: grpc.aio.Channel
    outputs: list[tuple[tuple[str, ...], int, Any]] = field(default_factory=list)

    async def ferry(self, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
        """Run the `ferry` command against this coordinator with --output json; every output
        is kept in ``outputs`` (argv, exit code, parsed JSON) for the schema checks."""
        capsys.readouterr()
        code = await cli.run(
            ["--coordinator", self.address, "--insecure", "--output", "json", "--rpc-timeout", "10", *args]
        )
        out = capsys.readouterr().out
        data = json.loads(out) if out.strip() else {}
        self.outputs.append((args, code, data))
        return code, data

    async def submit(self, vm: str, to: str, key: str = "", **kw: Any) -> cpb.Migration:
        return await self.stub.SubmitMigration(
            cpb.SubmitMigrationRequest(vm=vm, target_host=to, idempotency_key=key, **kw)
        )

    async def advance(self, migration_id: str, *phases: Phase) -> None:
        """Move a record along as the leader's engine would (compare-and-set on its revision)."""
        for phase in phases:
            entry = await self.store.get(keys.migration_key(migration_id))
            assert entry is not None
            record = decode(entry.value, entry.mod_revision)
            moved = with_phase(record, phase, datetime.now(UTC), f"test: {phase.name}", Timeouts())
            await self.store.update(entry.key, encode(moved), entry.mod_revision)


def config(hosts: dict[str, HostDecl] = HOSTS) -> CoordinatorConfig:
    return CoordinatorConfig(
        id="c1",
        listen=("127.0.0.1:0",),
        etcd=EtcdConfig(("unused:1",)),
        agents=AgentsConfig(inventory_ttl_s=0.0, inventory_timeout_s=3.0),
        hosts=hosts,
    )


async def start(tmp_path: Path, hosts: dict[str, HostDecl] = HOSTS) -> Setup:
    agents = await start_fleet(tmp_path / "agents", 3)
    store = MemoryStore()
    registrations = {}
    for name, a in agents.agents.items():
        r = a.registration()
        reg = Registration(store, name, r.address, r.libvirt_uri, r.migration_address, ttl_s=10)
        registrations[name] = reg
        asyncio.get_running_loop().create_task(reg.run())
        await asyncio.wait_for(reg.registered.wait(), 5)
    coordinator = build_coordinator(config(hosts), store, lambda h, addr: GrpcAgentClient(h, addr, timeout_s=5.0))
    coordinator.fleet.reprobe_s = 0.2
    [port] = await coordinator.start(campaign=False)
    address = f"127.0.0.1:{port}"
    channel = create_channel(address)
    return Setup(agents, store, coordinator, address, cgrpc.CoordinatorStub(channel), registrations, channel)


def fast_engine(c: Coordinator, timeouts: Timeouts = FAST, **kw: Any) -> Engine:
    """The engine ``c`` runs once it leads, with fast timings (ticks, progress writes, job polls
    and store retries); ``kw``: more of the Engine's arguments (cordoned, observer, ...). The
    hosts' bandwidth budgets are its config's."""
    kw.setdefault("bandwidth_budget", bandwidth_budget(c.config))
    return Engine(
        c.store,
        c.fleet,
        limits=c.config.limits,
        timeouts=timeouts,
        clock=lambda: datetime.now(UTC),
        prepare_ttl_s=60,
        tick_s=0.05,
        progress_write_s=0.05,
        job_poll_s=0.02,
        store_retry_s=0.05,
        **kw,
    )


async def lead(s: Setup) -> None:
    """Elect this coordinator and run its engine with fast timings."""
    c = s.coordinator
    c.new_engine = lambda: fast_engine(c)  # type: ignore[method-assign]
    c.servicer.submissions.timeouts = FAST
    c._election_task = asyncio.get_running_loop().create_task(c.election.run(c._lead, c._demoted))
    for _ in range(200):
        if c.is_leader() and c.engine is not None:
            break
        await asyncio.sleep(0.01)


async def close(s: Setup) -> None:
    await s.channel.close()
    await s.coordinator.stop(grace_s=0.5)
    for reg in s.registrations.values():
        await reg.stop()
    await s.agents.close()
    await s.store.close()
