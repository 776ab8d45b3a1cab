"""A coordinator replica that starts after a migration landed lists the VM where it landed, also
when the target stopped answering before the replica asked it and its ``last-seen`` predates the
landing (``last-seen/<host>`` is not rewritten for a landing: the migration record says it).

A real coordinator (``build_coordinator``, gRPC API on 127.0.0.1:0, not campaigning) over the
in-memory store, asked with ``ListVMs`` as ``ferry vms`` asks; the agents are stand-ins answering
``inventory()`` or failing like an unreachable agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from ferry import keys
from ferry.coordinator.config import AgentsConfig, CoordinatorConfig, EtcdConfig
from ferry.coordinator.fleet import encode_last_seen
from ferry.coordinator.main import build_coordinator
from ferry.coordinator.phases import Phase
from ferry.coordinator.record import MigrationRecord, PhaseChange, encode
from ferry.errors import Unavailable
from ferry.model import DiskPlan, DomainInfo, DomainState, HostFacts, Inventory
from ferry.registry import HostRegistration
from ferry.rpc import create_channel
from ferry.testing.memory_store import MemoryStore
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc

T1 = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
T2 = datetime(2026, 12, 2, 1, 1, tzinfo=UTC)
T3 = datetime(2026, 12, 2, 1, 2, tzinfo=UTC)


@dataclass
class Agent:
    host: str
    domains: list[DomainInfo] = field(default_factory=list)
    down: bool = False

    async def inventory(self) -> Inventory:
        if self.down:
            raise Unavailable(f"the agent on {self.host} cannot be reached", reason="AGENT_UNREACHABLE")
        return Inventory(HostFacts(self.host, f"uuid-{self.host}"), tuple(self.domains))


async def test_a_replica_started_after_a_landing_lists_the_vm_on_the_unreachable_target() -> None:
    await _lists_g1_on_host2(g1_seen_on_host1=True)


async def test_a_landing_of_a_vm_the_replica_never_saw_keeps_its_disks_as_the_migration_placed_them() -> None:
    """Found by the fault campaign: the replica knew only the VM's name and memory from the record, so
    moving it back was planned as if its disks were on shared storage (refused DISK_NOT_SHARED)."""
    await _lists_g1_on_host2(g1_seen_on_host1=False)


async def _lists_g1_on_host2(*, g1_seen_on_host1: bool) -> None:
    store = MemoryStore()
    g1 = DomainInfo("g1", "u-1", DomainState.RUNNING, memory_bytes=1 << 30)
    agents = {"host1": Agent("host1"), "host2": Agent("host2", [g1], down=True)}
    for name in agents:
        await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
    # as another replica left it: both hosts seen at T1, g1 on host1; it landed on host2 at T2
    seen = (g1,) if g1_seen_on_host1 else ()
    await store.create(keys.last_seen_key("host1"), encode_last_seen(T1, Inventory(HostFacts("host1", "h1"), seen)))
    await store.create(keys.last_seen_key("host2"), encode_last_seen(T1, Inventory(HostFacts("host2", "h2"), ())))
    record = MigrationRecord(
        "m-000000000001",
        "g1",
        "u-1",
        "host1",
        "host2",
        T1,
        updated_at=T2,
        phase=Phase.SUCCEEDED,
        history=(PhaseChange(Phase.FINISHING, T2), PhaseChange(Phase.SUCCEEDED, T2)),
        memory_bytes=1 << 30,
        disks=(
            DiskPlan("vda", "/img/g1.qcow2", "/img/g1.qcow2"),
            DiskPlan("vdb", "/nfs/g1.raw", "/nfs/g1.raw", format="raw", copy=False),
        ),
    )
    await store.create(keys.migration_key(record.id), encode(record))
    config = CoordinatorConfig(
        id="c1",
        listen=("127.0.0.1:0",),
        etcd=EtcdConfig(("unused:1",)),
        agents=AgentsConfig(inventory_ttl_s=0.0, inventory_timeout_s=1.0),
    )
    coordinator = build_coordinator(config, store, lambda name, address: agents[name], lambda: T3)  # type: ignore[arg-type,return-value]
    [port] = await coordinator.start(campaign=False)
    try:
        async with create_channel(f"127.0.0.1:{port}") as channel:
            resp = await cgrpc.CoordinatorStub(channel).ListVMs(cpb.ListVMsRequest(), timeout=5)
        assert [(v.domain.name, v.host, v.unreachable) for v in resp.vms] == [("g1", "host2", True)]
        if not g1_seen_on_host1:  # what the record says: vda copied (local on host2), vdb shared
            assert [(d.target, d.source, d.shared) for d in resp.vms[0].domain.disks] == [
                ("vda", "/img/g1.qcow2", False),
                ("vdb", "/nfs/g1.raw", True),
            ]
    finally:
        await coordinator.stop(grace_s=0.1)
        await store.close()
