"""The fleet view keeps a dead host's VMs in view for every replica (``coordinator/fleet.py``).

A replica that never asked a host before it went away (a follower coordinator, a new leader)
must still list that host's VMs, as the host last reported them, marked unreachable: a dead host
must not look like lost VMs. The domains are kept in the store under ``last-seen/<host>``,
written only when they change. Real Fleet objects on the in-memory store; the agents are
stand-ins answering ``inventory()`` or failing like an unreachable agent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ferry import keys
from ferry.coordinator.fleet import Fleet, decode_last_seen
from ferry.errors import Unavailable
from ferry.model import DomainInfo, DomainState, HostFacts, Inventory
from ferry.registry import HostRegistration
from ferry.testing.memory_store import MemoryStore

T1 = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
T2 = datetime(2026, 12, 2, 1, 5, tzinfo=UTC)


@dataclass
class Agent:
    host: str
    domains: list[DomainInfo] = field(default_factory=list)
    down: bool = False
    calls: int = 0

    async def inventory(self) -> Inventory:
        self.calls += 1
        if self.down:
            raise Unavailable(f"the agent on {self.host} cannot be reached", reason="AGENT_UNREACHABLE")
        return Inventory(HostFacts(self.host, f"uuid-{self.host}"), tuple(self.domains))


async def fleet_over(store: MemoryStore, agents: dict[str, Agent], now: datetime) -> Fleet:
    fleet = Fleet(store, lambda name, address: agents[name], lambda: now, inventory_ttl_s=0.0)  # type: ignore[arg-type,return-value]
    await fleet.start()
    return fleet


async def test_a_replica_that_never_asked_a_dead_host_lists_its_vms_as_last_reported() -> None:
    store = MemoryStore()
    g1 = DomainInfo("g1", "u-1", DomainState.RUNNING, memory_bytes=1 << 30)
    agents = {"host1": Agent("host1", [g1]), "host2": Agent("host2")}
    for name in agents:
        await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
    leader = await fleet_over(store, agents, T1)
    await leader.refresh()
    entry = await store.get(keys.last_seen_key("host1"))
    assert entry is not None and decode_last_seen(entry.value)[1].domains == (g1,)

    agents["host1"].down = True  # host1 dies; a follower that never asked it lists the VMs
    follower = await fleet_over(store, agents, T2)
    await follower.refresh()
    host1 = follower.host("host1")
    assert host1 is not None and not host1.available
    assert host1.domains == (g1,) and host1.last_seen == T1  # when host1 last reported them
    assert await follower.locate_vm("g1") == ("host1", g1)
    await leader.close()
    await follower.close()


async def test_the_store_is_written_only_when_the_domains_change() -> None:
    store = MemoryStore()
    agents = {"host1": Agent("host1", [DomainInfo("g1", "u-1", DomainState.RUNNING)])}
    await store.create(keys.host_key("host1"), HostRegistration("host1", "fake:host1").encode())
    fleet = await fleet_over(store, agents, T1)
    await fleet.refresh(force=True)
    first = await store.get(keys.last_seen_key("host1"))
    await fleet.refresh(force=True)
    await fleet.refresh(force=True)
    assert agents["host1"].calls == 3
    same = await store.get(keys.last_seen_key("host1"))
    assert first is not None and same is not None and same.mod_revision == first.mod_revision
    agents["host1"].domains.append(DomainInfo("g2", "u-2", DomainState.PAUSED))
    await fleet.refresh(force=True)
    changed = await store.get(keys.last_seen_key("host1"))
    assert changed is not None and changed.mod_revision > first.mod_revision
    assert [d.name for d in decode_last_seen(changed.value)[1].domains] == ["g1", "g2"]
    await fleet.close()


async def test_a_host_gone_before_a_replica_asked_it_or_before_the_replica_started_stays_in_view() -> None:
    store = MemoryStore()
    g1 = DomainInfo("g1", "u-1", DomainState.RUNNING)
    agents = {"host1": Agent("host1", [g1]), "host2": Agent("host2")}
    for name in agents:
        await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
    leader = await fleet_over(store, agents, T1)
    await leader.refresh()
    follower = await fleet_over(store, agents, T2)  # registered hosts known, nothing asked yet
    entry = await store.get(keys.host_key("host1"))
    assert entry is not None
    await store.delete(entry.key)  # host1 dies: its lease, and so its registration, goes
    for _ in range(100):
        if (h := follower.host("host1")) is not None and not h.available:
            break
        await asyncio.sleep(0.01)
    await follower.refresh()
    host1 = follower.host("host1")
    assert host1 is not None and not host1.available and host1.domains == (g1,) and host1.last_seen == T1
    late = await fleet_over(store, agents, T2)  # a replica started after host1 died
    await late.refresh()
    host1 = late.host("host1")
    assert host1 is not None and not host1.available and host1.domains == (g1,)
    for f in (leader, follower, late):
        await f.close()


async def test_a_replica_with_an_older_view_of_a_dead_host_takes_the_newer_one_from_the_store() -> None:
    # the chaos campaign's case: the replica answering `ferry vms` had asked host1 before the guest
    # was created there; another replica saw it since; then host1 went away
    store = MemoryStore()
    g1, g2 = DomainInfo("g1", "u-1", DomainState.RUNNING), DomainInfo("g2", "u-2", DomainState.RUNNING)
    agents = {"host1": Agent("host1", [g1])}
    await store.create(keys.host_key("host1"), HostRegistration("host1", "fake:host1").encode())
    early = await fleet_over(store, agents, T1)
    await early.refresh()  # sees g1 only
    agents["host1"].domains.append(g2)
    later = await fleet_over(store, agents, T2)
    await later.refresh()  # sees g1 and g2, and keeps them in last-seen/host1
    agents["host1"].down = True
    await early.refresh(force=True)
    host1 = early.host("host1")
    assert host1 is not None and not host1.available
    assert host1.domains == (g1, g2) and host1.last_seen == T2
    for f in (early, later):
        await f.close()


T3 = datetime(2026, 12, 2, 1, 10, tzinfo=UTC)


async def test_a_vm_that_landed_on_a_host_that_died_before_anyone_asked_it_again_is_listed_there() -> None:
    # Campaign trial #42: the job completed (the guest landed on host2), then host2 died before any
    # replica took its inventory again; `ferry vms` listed the VM nowhere. The record reaching
    # Finishing moves it in the view, and the move survives loading host2's older last-seen VMs.
    store = MemoryStore()
    g1 = DomainInfo("g1", "u-1", DomainState.RUNNING, memory_bytes=1 << 30)
    agents = {"host1": Agent("host1", [g1]), "host2": Agent("host2")}
    for name in agents:
        await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
    leader = await fleet_over(store, agents, T1)
    await leader.refresh()  # host2 reported no VM at T1 (kept in last-seen/host2)
    follower = await fleet_over(store, agents, T1)  # has asked nobody, knows g1 only by the record
    agents["host1"].domains.clear()
    agents["host2"].domains.append(g1)
    for f in (leader, follower):
        f.note_landed("u-1", "host1", "host2", T2, name="g1", memory_bytes=1 << 30)
    agents["host2"].down = True  # host2 dies
    for f in (leader, follower):
        await f.refresh(force=True)
        host2 = f.host("host2")
        assert host2 is not None and not host2.available
        assert [d.name for d in host2.domains] == ["g1"]
        assert await f.locate_vm("g1") == ("host2", host2.domains[0])
        host1 = f.host("host1")
        assert host1 is not None and host1.domains == ()
    # an older landing noted later (records come in key order at a start) changes nothing
    leader.note_landed("u-1", "host2", "host1", T1)
    host2 = leader.host("host2")
    assert host2 is not None and [d.name for d in host2.domains] == ["g1"]
    # host2 back: its own inventory (taken after the landing) replaces the note
    agents["host2"].down = False
    agents["host2"].domains[:] = [DomainInfo("g1", "u-1", DomainState.SHUTOFF)]
    late = await fleet_over(store, agents, T3)
    late.note_landed("u-1", "host1", "host2", T2, name="g1")
    await late.refresh(force=True)
    host2 = late.host("host2")
    assert host2 is not None and host2.domains == (DomainInfo("g1", "u-1", DomainState.SHUTOFF),)
    for f in (leader, follower, late):
        await f.close()
