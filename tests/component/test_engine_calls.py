"""The agent calls one migration costs the engine (real agent gRPC servers over fakes).

Every call is a round trip on the way from admission to the committed record; the counts here
are what a migration needs, so a change that adds one shows up as a failing table row.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from test_engine import engine, final, store, submit, until  # noqa: F401  (fixtures, beside this file)
from test_engine import fleet as fleet  # noqa: F401

from ferry.coordinator.actions import PREFLIGHT_XML_FRESH_S, Actions, ActionTiming
from ferry.coordinator.events import Placement, PreflightResult, Prepared
from ferry.coordinator.phases import Phase
from ferry.model import DomainState
from ferry.ports import AgentClient
from ferry.testing.fleet import Fleet, FleetDirectory


class CountingClient:
    """An agent client that counts the calls made through it, by (host, method)."""

    def __init__(self, inner: AgentClient, host: str, calls: Counter[tuple[str, str]]) -> None:
        self._inner = inner
        self._host = host
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def counted(*args: Any, **kw: Any) -> Any:
            self._calls[(self._host, name)] += 1
            return attr(*args, **kw)

        return counted


class CountingDirectory(FleetDirectory):
    def __init__(self, fleet: Fleet) -> None:
        super().__init__(fleet)
        self.calls: Counter[tuple[str, str]] = Counter()

    def client(self, host: str) -> AgentClient:  # type: ignore[override]
        return CountingClient(super().client(host), host, self.calls)  # type: ignore[return-value]


# a copy-storage migration host1 -> host2 that succeeds (vda copied, vdb on shared storage):
# every agent call of the engine
ONE_MIGRATION = {
    ("host1", "inventory"): 1,  # host facts: this engine has no fleet view (the coordinator's has
    ("host2", "inventory"): 1,  # them cached: no inventory call per migration there)
    ("host1", "get_domain"): 1,  # preflight (with the XML, reused by the prepare)
    ("host2", "prepare_incoming"): 2,  # the dry run, the prepare
    ("host1", "probe_target"): 1,  # the first preflight of the pair (remembered for a minute)
    ("host1", "mark_shared_storage"): 1,  # a probe next to vdb, for the dry run to find on host2
    ("host1", "unmark_shared_storage"): 1,  # and removed after it
    ("host1", "migrate"): 1,
    ("host2", "commit_incoming"): 1,  # checks the guest landed: no placement observed after the job
    ("host1", "remove_source_disks"): 1,
}


async def test_one_migration_costs_these_agent_calls(store, fleet):  # noqa: F811
    fleet.add_guest("host1", "g1")
    hosts = CountingDirectory(fleet)
    async with engine(store, hosts) as running:
        await until(lambda: running.engine.loaded.is_set())  # (a record found at start is recovered: more calls)
        m = await submit(store, fleet, "g1", "host1", "host2")
        r = await final(store, m.id)
    assert r.phase is Phase.SUCCEEDED, r.history
    assert fleet.where("g1") == {"host2": DomainState.RUNNING}
    assert dict(hosts.calls) == ONE_MIGRATION


@pytest.mark.parametrize(("pause_s", "source_asked"), [(0.0, 1), (PREFLIGHT_XML_FRESH_S + 1.0, 2)])
async def test_a_prepare_uses_its_preflights_xml_only_a_moment_later(store, fleet, pause_s, source_asked):  # noqa: F811
    """A prepare right after its preflight uses the XML the preflight read; after a pause (a
    prepare resumed later) it asks the source again."""
    fleet.add_guest("host1", "g1")
    hosts = CountingDirectory(fleet)
    clock = [100.0]
    actions = Actions(hosts, ActionTiming(prepare_ttl_s=60), monotonic=lambda: clock[0])
    m = await submit(store, fleet, "g1", "host1", "host2")
    checked = await actions.run_preflight(m)
    assert checked == PreflightResult(())
    clock[0] += pause_s
    prepared = await actions.prepare_target(m)
    assert isinstance(prepared, Prepared) and prepared.prepare_id
    assert hosts.calls[("host1", "get_domain")] == source_asked
    assert fleet.prepares("host2") != []


async def test_a_checked_commit_of_a_guest_that_did_not_land_reports_the_placement(store, fleet):  # noqa: F811
    """CommitTarget(require_landed) over the wire: the target refuses (NOT_LANDED, the guest still
    runs on the source), the prepare stays, and the event is the placement both hosts show."""
    fleet.add_guest("host1", "g1")
    actions = Actions(CountingDirectory(fleet), ActionTiming(prepare_ttl_s=60))
    m = await submit(store, fleet, "g1", "host1", "host2")
    prepared = await actions.prepare_target(m)
    assert isinstance(prepared, Prepared)
    event = await actions.commit(m, prepared.prepare_id, require_landed=True)
    assert event == Placement(DomainState.RUNNING, None, False)
    assert fleet.prepares("host2") == [prepared.prepare_id]
