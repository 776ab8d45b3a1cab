"""Component fixtures: real agent gRPC servers on 127.0.0.1:0 over in-memory ports.

Two fake hosts share one FakeFleet, so a migration from host1 moves the domain into host2's
FakeHypervisor. host1 has bridge br-guest, host2 br-vm (as in the lab), so a migration between
them needs a bridge mapping.

``fx`` / ``leading``: a coordinator over an in-memory store and three fake agents, without and
with its engine (``coordinator_setup.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from coordinator_setup import Setup, close, lead, start  # beside this file

from ferry.agent.config import AgentConfig
from ferry.agent.main import build_agent, register
from ferry.agent.service import AgentServicer
from ferry.agent.targets import MigrationTargets
from ferry.rpc import create_channel, create_server
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor
from ferry.v1 import agent_pb2_grpc as agrpc

GiB = 1 << 30
IMAGES = "/var/lib/libvirt/images"  # host-local on each host
SHARED = "/srv/shared"  # declared shared storage on each host


@dataclass
class AgentUnderTest:
    name: str
    hv: FakeHypervisor
    host: FakeHostSystem
    servicer: AgentServicer
    server: grpc.aio.Server
    address: str
    channel: grpc.aio.Channel
    stub: agrpc.AgentStub


async def start_agent(
    name: str, index: int, fleet: FakeFleet, state_dir: Path, *, bridges: list[str]
) -> AgentUnderTest:
    host = FakeHostSystem(
        bridges=bridges,
        dirs={IMAGES: 50 * GiB, SHARED: 100 * GiB},
        totals={IMAGES: 100 * GiB, SHARED: 200 * GiB},
        shared_dirs=[SHARED],
        shared_files=fleet.shared_files,
    )
    ip = f"10.77.0.{10 + index}"
    hv = FakeHypervisor(
        hostname=name,
        uri=f"qemu+tcp://{ip}/system",
        fleet=fleet,
        host=host,
        host_uuid=f"6c61622d-0000-4000-8000-{index:012d}",
    )
    config = AgentConfig(
        name=name,
        listen=("127.0.0.1:0",),
        advertise_libvirt_uri=hv.uri,
        migration_address=ip,
        image_dirs=(IMAGES,),
        shared_dirs=(SHARED,),
        state_dir=str(state_dir),
        prepare_ttl_s=600,
    )
    # Migrate may go to every host of this fake fleet (as if registered)
    servicer = build_agent(config, hv, host, targets=MigrationTargets(name, peers=lambda: list(fleet.hosts)))
    server, [port] = create_server(config.listen, register(servicer))
    await server.start()
    address = f"127.0.0.1:{port}"
    channel = create_channel(address)
    return AgentUnderTest(name, hv, host, servicer, server, address, channel, agrpc.AgentStub(channel))


@pytest.fixture
async def agents(tmp_path: Path) -> AsyncIterator[tuple[AgentUnderTest, AgentUnderTest]]:
    fleet = FakeFleet()
    host1 = await start_agent("host1", 1, fleet, tmp_path / "host1", bridges=["br-guest"])
    host2 = await start_agent("host2", 2, fleet, tmp_path / "host2", bridges=["br-vm"])
    yield host1, host2
    for a in (host1, host2):
        a.hv.release()
        await a.channel.close()
        await a.server.stop(None)


@pytest.fixture
async def fx(tmp_path: Path) -> AsyncIterator[Setup]:
    """A coordinator (not leading) over in-memory etcd and three fake agents (coordinator_setup.py)."""
    s = await start(tmp_path)
    try:
        yield s
    finally:
        await close(s)


@pytest.fixture
async def leading(tmp_path: Path) -> AsyncIterator[Setup]:
    """The same, with this coordinator elected and its engine running (fast timings)."""
    s = await start(tmp_path)
    await lead(s)
    try:
        yield s
    finally:
        await close(s)
