"""The fleet view keeps a dead host's VMs in view for every replica (``coordinator/fleet.py``).

A replica that never asked a host before it went away (a follower coordinator, a new leader)
must still list that host's VMs, as the host last reported them, marked unreachable: a dead host
must not look like lost VMs. The domains are kept in the store under ``last-seen/<host>``,
written only when they change. Real Fleet objects on the in-memory store; the agents are
stand-ins answering ``inventory()`` or failing like an unreachable agent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from ferry import keys
from ferry.coordinator.fleet import LAST_SEEN_MAX_AGE_S, Fleet, decode_last_seen
from ferry.errors import NotFound, Unavailable
from ferry.model import Disk, DomainInfo, DomainState, HostFacts, Inventory, Nic
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

    async def get_domain(self, name_or_uuid: str) -> tuple[DomainInfo, str]:
        self.calls += 1
        if self.down:
            raise Unavailable(f"the agent on {self.host} cannot be reached", reason="AGENT_UNREACHABLE")
        found = next((d for d in self.domains if name_or_uuid in (d.name, d.uuid)), None)
        if found is None:
            raise NotFound(f"no domain {name_or_uuid}", reason="DOMAIN_NOT_FOUND")
        return found, ""

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


# -- a migration alone does not rewrite last-seen: the records' landings already say it --------


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def at(self, minutes: float) -> datetime:
        self.now = T1 + timedelta(minutes=minutes)
        return self.now


async def fleet_with_clock(store: MemoryStore, agents: dict[str, Agent], clock: Clock) -> Fleet:
    fleet = Fleet(store, lambda name, address: agents[name], clock, inventory_ttl_s=0.0)  # type: ignore[arg-type,return-value]
    await fleet.start()
    return fleet


async def two_hosts(g1: DomainInfo, *others: DomainInfo) -> tuple[MemoryStore, dict[str, Agent]]:
    store = MemoryStore()
    agents = {"host1": Agent("host1", [g1, *others]), "host2": Agent("host2")}
    for name in agents:
        await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
    return store, agents


async def revisions(store: MemoryStore) -> dict[str, int]:
    entries, _ = await store.list(keys.LAST_SEEN)
    return {e.key: e.mod_revision for e in entries}


async def stored(store: MemoryStore, host: str) -> tuple[datetime, Inventory]:
    entry = await store.get(keys.last_seen_key(host))
    assert entry is not None
    return decode_last_seen(entry.value)


def land(agents: dict[str, Agent], vm: DomainInfo, source: str, target: str, **details: object) -> None:
    """The guest moves as libvirt moves it: gone from the source, on the target as the target
    describes it (its own disk paths and bridge details)."""
    agents[source].domains.remove(vm)
    agents[target].domains.append(replace(vm, **details))  # type: ignore[arg-type]


G1 = DomainInfo(
    "g1",
    "u-1",
    DomainState.RUNNING,
    memory_bytes=1 << 30,
    vcpus=2,
    disks=(Disk("vda", "/srv/host1/g1.qcow2", allocation=1 << 20),),
    nics=(Nic("bridge", "br-guest", "52:54:00:00:00:01"),),
)


async def test_a_landing_between_two_fetches_writes_no_last_seen_on_either_host() -> None:
    store, agents = await two_hosts(G1)
    clock = Clock(T1)
    fleet = await fleet_with_clock(store, agents, clock)
    await fleet.refresh()
    before = await revisions(store)
    assert len(before) == 2
    land(agents, G1, "host1", "host2", disks=(Disk("vda", "/srv/host2/g1.qcow2", allocation=2 << 20),))
    fleet.note_landed("u-1", "host1", "host2", clock.at(1), name="g1", memory_bytes=1 << 30)
    clock.at(2)
    await fleet.refresh(force=True)
    assert await revisions(store) == before  # neither host's last-seen written
    host1, host2 = fleet.host("host1"), fleet.host("host2")
    assert host1 is not None and host1.domains == ()
    assert host2 is not None and [d.name for d in host2.domains] == ["g1"]
    assert (await stored(store, "host2"))[0] == T1  # the snapshot keeps its time
    await fleet.close()


async def test_a_vm_stopped_on_a_host_writes_its_last_seen_with_the_new_time() -> None:
    g2 = DomainInfo("g2", "u-2", DomainState.RUNNING)
    store, agents = await two_hosts(G1, g2)
    clock = Clock(T1)
    fleet = await fleet_with_clock(store, agents, clock)
    await fleet.refresh()
    before = await revisions(store)
    land(agents, G1, "host1", "host2")
    fleet.note_landed("u-1", "host1", "host2", clock.at(1), name="g1")
    agents["host1"].domains[:] = [replace(g2, state=DomainState.SHUTOFF)]  # someone stopped g2
    await fleet.refresh(force=True)
    after = await revisions(store)
    assert after[keys.last_seen_key("host1")] > before[keys.last_seen_key("host1")]
    assert after[keys.last_seen_key("host2")] == before[keys.last_seen_key("host2")]  # the landing alone
    at, inventory = await stored(store, "host1")
    assert at == clock.now and inventory.domains == (replace(g2, state=DomainState.SHUTOFF),)
    await fleet.close()


async def g1_landed_on_host2() -> tuple[MemoryStore, dict[str, Agent], Clock, Fleet]:
    """g1 on host1 as a replica (the leader) saw it at T1, then moved to host2, landing at T1 + 1 min."""
    store, agents = await two_hosts(G1)
    clock = Clock(T1)
    leader = await fleet_with_clock(store, agents, clock)
    await leader.refresh()
    land(agents, G1, "host1", "host2")
    leader.note_landed("u-1", "host1", "host2", clock.at(1), name="g1", memory_bytes=1 << 30)
    return store, agents, clock, leader


async def test_a_replica_started_later_lists_a_moved_vm_on_its_new_host_from_the_older_last_seen() -> None:
    store, agents, clock, leader = await g1_landed_on_host2()
    clock.at(2)
    await leader.refresh(force=True)
    assert (await stored(store, "host2"))[1].domains == ()  # not rewritten: the landing says it
    agents["host2"].down = True  # host2 stops answering
    clock.at(3)
    late = await fleet_with_clock(store, agents, clock)
    late.note_landed("u-1", "host1", "host2", T1 + timedelta(minutes=1), name="g1", memory_bytes=1 << 30)
    await late.refresh()
    host1, host2 = late.host("host1"), late.host("host2")
    assert host1 is not None and host1.available and host1.domains == ()
    assert host2 is not None and not host2.available and [d.name for d in host2.domains] == ["g1"]
    located = await late.locate_vm("g1")
    assert located is not None and located[0] == "host2"
    for f in (leader, late):
        await f.close()


async def test_a_host_that_stops_answering_after_a_landing_gets_it_written_for_replicas_without_the_record() -> None:
    # the records of migrations are deleted after [retention] migrations_s: the replica that saw
    # host2 go writes the landing into its last-seen, so a replica starting a week later lists g1
    store, agents, clock, leader = await g1_landed_on_host2()
    agents["host2"].down = True  # before anyone asked it again
    clock.at(2)
    await leader.refresh(force=True)
    at, inventory = await stored(store, "host2")
    assert at == T1 and [d.name for d in inventory.domains] == ["g1"]  # under the time of its inventory
    assert inventory.domains[0].vcpus == 2  # the leader's copy of the domain, not a bare name
    clock.at(60 * 24 * 8)
    late = await fleet_with_clock(store, agents, clock)  # no record of the landing left
    await late.refresh()
    host2 = late.host("host2")
    assert host2 is not None and not host2.available and [d.name for d in host2.domains] == ["g1"]
    for f in (leader, late):
        await f.close()


async def test_a_landing_only_change_rewrites_last_seen_once_the_snapshot_is_older_than_the_max_age() -> None:
    g2 = DomainInfo("g2", "u-2", DomainState.RUNNING)
    store, agents = await two_hosts(G1, g2)
    clock = Clock(T1)
    fleet = await fleet_with_clock(store, agents, clock)
    assert fleet.last_seen_max_age_s == LAST_SEEN_MAX_AGE_S == 600.0
    await fleet.refresh()
    first = await revisions(store)
    land(agents, G1, "host1", "host2")
    fleet.note_landed("u-1", "host1", "host2", clock.at(1), name="g1")
    clock.at(9)
    await fleet.refresh(force=True)
    assert await revisions(store) == first  # 9 minutes old: the landing's record is there
    land(agents, g2, "host1", "host2")
    fleet.note_landed("u-2", "host1", "host2", clock.at(10.5), name="g2")
    clock.at(11)
    await fleet.refresh(force=True)
    for host, names in (("host1", []), ("host2", ["g1", "g2"])):  # 11 minutes old: written anew
        at, inventory = await stored(store, host)
        assert at == clock.now and [d.name for d in inventory.domains] == names
    await fleet.close()


async def test_a_landing_before_the_snapshot_does_not_explain_a_change_after_it() -> None:
    # the record of a landing can reach a replica after it saved an inventory taken before the
    # landing showed: the snapshot's time is past the landing, so a loader would not apply it
    store, agents = await two_hosts(G1)
    clock = Clock(T1)
    fleet = await fleet_with_clock(store, agents, clock)
    await fleet.refresh()  # g1 on host1, saved at T1
    land(agents, G1, "host1", "host2")
    fleet.note_landed("u-1", "host1", "host2", T1 - timedelta(seconds=1), name="g1")
    clock.at(1)
    await fleet.refresh(force=True)
    for host, names in (("host1", []), ("host2", ["g1"])):
        at, inventory = await stored(store, host)
        assert at == clock.now and [d.name for d in inventory.domains] == names
    await fleet.close()


async def test_a_domain_its_host_confirmed_is_not_replaced_by_an_older_landing_note() -> None:
    """Seen in the fleet simulation: a landing noted for a VM neither cached inventory had gives it
    only a name and memory; the submission's GetDomain then put the real domain (disks, NICs) in
    view, but the next landing on that host applied the old note again, and placement sent the
    VM to a host without its bridge, as if its disk were shared (it failed in preflight)."""
    g9 = replace(G1, name="g9", uuid="u-9", disks=(Disk("vda", "/srv/host2/g9.qcow2", allocation=1 << 20),))
    store, agents = await two_hosts(G1)
    clock = Clock(T1)
    fleet = await fleet_with_clock(store, agents, clock)
    await fleet.refresh()
    agents["host2"].domains.append(g9)  # landed from a host this view never asked
    fleet.note_landed("u-9", "host1", "host2", clock.at(1), name="g9", memory_bytes=1 << 30)
    host2 = fleet.host("host2")
    assert host2 is not None and [d.disks for d in host2.domains if d.uuid == "u-9"] == [()]  # the note's
    assert await fleet.locate_vm("g9", fresh=True) == ("host2", g9)
    land(agents, G1, "host1", "host2")
    fleet.note_landed("u-1", "host1", "host2", clock.at(2), name="g1")  # another landing on host2
    host2 = fleet.host("host2")
    assert host2 is not None and [d for d in host2.domains if d.uuid == "u-9"] == [g9]
    assert await fleet.locate_vm("g9") == ("host2", g9)
    await fleet.close()
