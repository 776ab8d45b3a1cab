"""A fleet of real agent gRPC servers in this process, over fakes: for component tests.

``start_fleet(state_dir, 3)`` starts agents host1..hostN, each a real ``AgentServicer`` built by
``build_agent`` and served on 127.0.0.1:0, over its own FakeHypervisor and FakeHostSystem. The
fake hypervisors share one FakeFleet, so a migration really moves the domain from one fake to
another. As in the lab, odd hosts have bridge ``br-guest`` and even hosts ``br-vm``, so a
migration between them needs a bridge mapping (``mapping(src, dst)``).

An agent can be stopped and started again on the same port (``FakeAgent.stop`` / ``start``):
its prepares (on disk) and its fake libvirt (in memory) survive, like a restarted ferry-agent.
``MaxConcurrency`` records how many migration jobs ran at once on the fakes. With
``metrics=True`` each agent has its Prometheus registry (``FakeAgent.registry``), fed as
ferry-agent feeds it (the driver's jobs, the prepares, every gRPC call).

Import it from a test in tests/component as ``from fleet import ...``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ferry.agent.config import AgentConfig
from ferry.agent.main import build_agent, register
from ferry.agent.service import AgentServicer
from ferry.agent.targets import MigrationTargets
from ferry.coordinator.agent_client import GrpcAgentClient
from ferry.model import DomainState, HostMapping, Problem
from ferry.registry import HostChange, HostRegistration, down_problem
from ferry.rpc import RpcObserver, create_server
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor, MiB, make_domain_xml

GiB = 1 << 30
IMAGES = "/var/lib/libvirt/images"  # host-local on each host
SHARED = "/srv/shared"  # declared shared storage on each host


def bridge_of(index: int) -> str:
    """The guest bridge of host N: br-guest on odd hosts, br-vm on even ones (as in the lab)."""
    return "br-guest" if index % 2 else "br-vm"


@dataclass
class FakeAgent:
    """One host: its fakes, its servicer and (while running) its gRPC server."""

    name: str
    index: int
    hv: FakeHypervisor
    host: FakeHostSystem
    servicer: AgentServicer
    config: AgentConfig
    port: int = 0
    server: grpc.aio.Server | None = None
    registry: Any = None  # prometheus_client.CollectorRegistry with metrics=True
    rpc_observer: RpcObserver | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.server is not None

    def registration(self) -> HostRegistration:
        return HostRegistration(
            self.name, self.address, libvirt_uri=self.hv.uri, migration_address=self.config.migration_address
        )

    async def start(self) -> None:
        """Serve (again) on this agent's port (a free one the first time)."""
        if self.server is not None:
            return
        listen = f"127.0.0.1:{self.port}"
        server, [port] = create_server([listen], register(self.servicer), observer=self.rpc_observer)
        await server.start()
        self.server, self.port = server, port

    async def stop(self) -> None:
        """Stop serving at once (open streams are cut); the fakes keep their state."""
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop(None)

    def state_of(self, vm: str) -> DomainState | None:
        """The domain's state on this host, None when it has no such domain."""
        dom = next((d for d in self.hv.domains.values() if vm in (d.name, d.uuid)), None)
        return dom.state if dom is not None else None


class MaxConcurrency:
    """Samples the fakes' running jobs every ``interval_s``: the most seen at once, per source."""

    def __init__(self, agents: list[FakeAgent], interval_s: float = 0.002) -> None:
        self._agents = agents
        self._interval_s = interval_s
        self.cluster = 0
        self.per_source: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        total = 0
        for a in self._agents:
            n = len(a.hv.jobs)
            total += n
            self.per_source[a.name] = max(self.per_source.get(a.name, 0), n)
        self.cluster = max(self.cluster, total)

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._interval_s)

    def __enter__(self) -> MaxConcurrency:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


@dataclass
class Fleet:
    fakes: FakeFleet
    agents: dict[str, FakeAgent] = field(default_factory=dict)
    clients: list[GrpcAgentClient] = field(default_factory=list)

    def __getitem__(self, name: str) -> FakeAgent:
        return self.agents[name]

    def client(self, name: str, *, timeout_s: float = 5.0, progress_interval_ms: int = 10) -> GrpcAgentClient:
        """A new gRPC client to the agent ``name`` (closed by ``close``)."""
        a = self.agents[name]
        c = GrpcAgentClient(
            name, a.address, timeout_s=timeout_s, slow_timeout_s=timeout_s, progress_interval_ms=progress_interval_ms
        )
        self.clients.append(c)
        return c

    def mapping(self, source: str, target: str) -> HostMapping:
        """The bridge mapping a guest on ``source`` needs on ``target`` (empty when the same)."""
        s, t = bridge_of(self.agents[source].index), bridge_of(self.agents[target].index)
        return HostMapping(bridges={s: t} if s != t else {})

    def add_guest(
        self, host: str, name: str, *, memory: int = 256 * MiB, dirty: int = 0, local_disk: bool = True
    ) -> str:
        """A running guest on ``host`` with a local qcow2 disk (vda, unless ``local_disk`` is
        False) and a raw disk on shared storage (vdb), on the host's bridge. Returns its UUID."""
        a = self.agents[host]
        disks = []
        if local_disk:
            local = f"{IMAGES}/{name}.qcow2"
            a.host.create_image(local, fmt="qcow2", virtual_size=GiB)
            disks.append(("vda", local, "qcow2"))
        shared = f"{SHARED}/{name}-data.raw"
        for other in self.agents.values():  # shared storage: the same file everywhere
            other.host.files[shared] = 64 * MiB
        disks.append(("vdb", shared, "raw"))
        xml = make_domain_xml(name, memory_bytes=memory, disks=disks, bridges=[bridge_of(a.index)])
        return a.hv.add_domain(xml, dirty_bytes_per_s=dirty).uuid

    def where(self, vm: str) -> dict[str, DomainState]:
        """Every host holding the domain, with its state there."""
        return {n: s for n, a in self.agents.items() if (s := a.state_of(vm)) is not None}

    def running_on(self, vm: str) -> list[str]:
        """The hosts where the domain is active (a QEMU process would exist)."""
        return [n for n, s in self.where(vm).items() if s.is_active]

    def prepares(self, host: str) -> list[str]:
        return [r.prepare_id for r in self.agents[host].servicer.prepare.list()]

    async def close(self) -> None:
        for a in self.agents.values():
            a.hv.release()
        for c in self.clients:
            await c.close()
        for a in self.agents.values():
            await a.stop()


async def start_agent(
    name: str, index: int, fakes: FakeFleet, state_dir: Path, *, step_s: float = 0.005, metrics: bool = False
) -> FakeAgent:
    host = FakeHostSystem(
        bridges=[bridge_of(index)],
        dirs={IMAGES: 50 * GiB, SHARED: 100 * GiB},
        totals={IMAGES: 100 * GiB, SHARED: 200 * GiB},
        shared_dirs=[SHARED],
        shared_files=fakes.shared_files,
    )
    ip = f"10.77.0.{10 + index}"  # only named: nothing connects to it (the fakes migrate in memory)
    hv = FakeHypervisor(
        hostname=name,
        uri=f"qemu+tcp://{ip}/system",
        fleet=fakes,
        host=host,
        host_uuid=f"6c61622d-0000-4000-8000-{index:012d}",
        step_s=step_s,
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
    # where Migrate may go: every host of this fake fleet (as if registered)
    targets = MigrationTargets(name, peers=lambda: list(fakes.hosts))
    if not metrics:
        agent = FakeAgent(name, index, hv, host, build_agent(config, hv, host, targets=targets), config)
    else:
        from ferry.agent.metrics import AgentMetrics
        from ferry.metrics import RpcMetrics, new_registry

        registry = new_registry("agent")
        jobs = AgentMetrics(registry)
        servicer = build_agent(config, hv, host, jobs=jobs, targets=targets)
        jobs.watch_prepares(servicer.prepare.list)
        agent = FakeAgent(name, index, hv, host, servicer, config, registry=registry, rpc_observer=RpcMetrics(registry))
    await agent.start()
    return agent


async def start_fleet(state_dir: Path, n: int = 2, *, step_s: float = 0.005, metrics: bool = False) -> Fleet:
    """Agents host1..host``n`` serving on 127.0.0.1:0; ``await fleet.close()`` when done."""
    fleet = Fleet(FakeFleet())
    for i in range(1, n + 1):
        name = f"host{i}"
        fleet.agents[name] = await start_agent(name, i, fleet.fakes, state_dir / name, step_s=step_s, metrics=metrics)
    return fleet


class FleetDirectory:
    """The engine's HostDirectory over a Fleet: a host is available until the test marks it down
    (``down``/``up`` stop/start its agent and announce the change, as an agent's registration key
    expiring or reappearing would)."""

    def __init__(self, fleet: Fleet, *, timeout_s: float = 2.0, progress_interval_ms: int = 10) -> None:
        self.fleet = fleet
        self.marked_down: set[str] = set()
        self._clients: dict[str, GrpcAgentClient] = {}
        self._listeners: list[asyncio.Queue[HostChange]] = []
        self._timeout_s = timeout_s
        self._progress_interval_ms = progress_interval_ms

    def client(self, host: str) -> GrpcAgentClient:
        if host not in self._clients:
            self._clients[host] = self.fleet.client(
                host, timeout_s=self._timeout_s, progress_interval_ms=self._progress_interval_ms
            )
        return self._clients[host]

    def available_hosts(self) -> set[str]:
        """Registered hosts: an agent stopped without ``down`` is still registered (its lease has
        not expired yet) but does not answer."""
        return {n for n in self.fleet.agents if n not in self.marked_down}

    def why_down(self, host: str) -> Problem | None:
        return down_problem(host, "", None, None, None) if host in self.marked_down else None

    def registration(self, host: str) -> HostRegistration | None:
        return self.fleet.agents[host].registration() if host in self.available_hosts() else None

    async def changes(self) -> AsyncIterator[HostChange]:
        queue: asyncio.Queue[HostChange] = asyncio.Queue()
        self._listeners.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._listeners.remove(queue)

    def _announce(self, change: HostChange) -> None:
        for q in self._listeners:
            q.put_nowait(change)

    async def down(self, host: str, *, stop_agent: bool = True) -> None:
        """The agent stops (unless ``stop_agent`` is False) and its registration goes away."""
        if stop_agent:
            await self.fleet.agents[host].stop()
        self.marked_down.add(host)
        self._announce(HostChange(host, available=False))

    async def up(self, host: str) -> None:
        await self.fleet.agents[host].start()
        self.marked_down.discard(host)
        self._announce(HostChange(host, available=True))
