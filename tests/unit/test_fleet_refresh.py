"""Which hosts a refresh of the fleet view asks (``Fleet.refresh``), counted by the agents' calls."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from ferry import keys
from ferry.coordinator.fleet import Fleet
from ferry.model import HostFacts, Inventory
from ferry.registry import HostRegistration
from ferry.testing.memory_store import MemoryStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Agent:
    """Answers ``inventory()``, or never answers while ``hung``; counts the calls."""

    host: str
    hung: bool = False
    calls: int = 0

    async def inventory(self) -> Inventory:
        self.calls += 1
        if self.hung:
            await asyncio.Event().wait()
        return Inventory(HostFacts(self.host, f"uuid-{self.host}"), ())


async def test_a_placement_does_not_wait_for_a_host_that_did_not_answer():
    """A refresh of every host (a placement, a ranking) leaves a host whose agent did not answer
    to the prober: it would wait ``inventory_timeout_s`` for it at every placement. Asked by name
    or forced, it is asked."""
    agents = {name: Agent(name) for name in ("h1", "h2", "h3")}
    store = MemoryStore()
    for name in agents:
        await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
    fleet = Fleet(store, lambda name, address: agents[name], lambda: NOW, inventory_ttl_s=0.0)  # type: ignore[arg-type,return-value]
    fleet.inventory_timeout_s = 0.05
    await fleet.start()
    try:
        await fleet.refresh()
        agents["h3"].hung = True
        await fleet.refresh(force=True)  # h3 does not answer: unreachable
        assert [h.name for h in fleet.hosts() if not h.available] == ["h3"]
        before = {name: a.calls for name, a in agents.items()}
        await fleet.refresh()  # every inventory is stale (TTL 0): all asked but h3
        assert {name: a.calls - before[name] for name, a in agents.items()} == {"h1": 1, "h2": 1, "h3": 0}
        await fleet.refresh(["h3"])
        await fleet.refresh(force=True)
        assert agents["h3"].calls - before["h3"] == 2
        agents["h3"].hung = False
        await fleet.refresh(["h3"])  # (the prober's call) it answers again: asked with the others
        assert fleet.host("h3").available
        await fleet.refresh()
        assert agents["h3"].calls - before["h3"] == 4
    finally:
        await fleet.close()
        await store.close()
