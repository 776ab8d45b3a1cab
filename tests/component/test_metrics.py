"""Metrics of one migration, end to end: a coordinator (leading, its engine running) over an
in-memory store, two agents over fakes, every component's registry served over HTTP as the daemons
serve it, scraped during and after a migration driven through the API.

What an operator looks at: the endpoints answer in Prometheus' text format; while the migration
runs the source agent shows its job (remaining bytes, dirty rate, iteration) and the leader shows
it in flight; afterwards the counters say one started and one succeeded, the histograms hold its
duration, downtime and bytes, the RPC and etcd metrics counted the calls; and every metric the
Grafana dashboard in deploy/grafana queries exists.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from coordinator_setup import fast_engine  # beside this file
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ferry.agent.registration import Registration
from ferry.coordinator.agent_client import GrpcAgentClient
from ferry.coordinator.config import AgentsConfig, CoordinatorConfig, EtcdConfig, HostDecl
from ferry.coordinator.main import Coordinator, build_coordinator
from ferry.coordinator.metrics import CoordinatorMetrics
from ferry.coordinator.phases import Timeouts
from ferry.metrics import MetricsServer, RpcMetrics, StoreMetrics, new_registry
from ferry.rpc import create_channel
from ferry.testing.fleet import Fleet, start_fleet
from ferry.testing.memory_store import MemoryStore
from ferry.timed_store import TimedStore
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ferry-dashboard.json"
FAST = Timeouts(
    preflight_s=3,
    preparing_s=3,
    migrating_min_s=10,
    migrating_grace_s=1,
    finishing_s=1.5,
    rolling_back_s=1.5,
    retry_base_s=0.2,
    retry_max_s=0.5,
    observe_delay_s=0.02,
)
MiB = 1 << 20
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Setup:
    agents: Fleet
    store: MemoryStore
    coordinator: Coordinator
    registry: CollectorRegistry
    stub: cgrpc.CoordinatorStub
    endpoints: dict[str, str]  # component -> base URL of its metrics endpoint
    servers: list[MetricsServer]
    registrations: list[Registration]

    def registries(self) -> dict[str, CollectorRegistry]:
        return {"coordinator": self.registry, **{n: a.registry for n, a in self.agents.agents.items()}}


def scrape_url(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return answer.read().decode()


async def scrape(setup: Setup, component: str) -> Samples:
    text = await asyncio.to_thread(scrape_url, setup.endpoints[component])
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def has(samples: Samples, name: str, **labels: str) -> bool:
    want = set(labels.items())
    return any(n == name and want <= ls for n, ls in samples)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    agents = await start_fleet(tmp_path / "agents", 2, step_s=0.02, metrics=True)
    registry = new_registry("coordinator")
    memory = MemoryStore()
    store = TimedStore(memory, StoreMetrics(registry))
    registrations = []
    for name, a in agents.agents.items():
        r = a.registration()
        reg = Registration(store, name, r.address, r.libvirt_uri, r.migration_address, ttl_s=10)
        registrations.append(reg)
        asyncio.get_running_loop().create_task(reg.run())
        await asyncio.wait_for(reg.registered.wait(), 5)
    config = CoordinatorConfig(
        id="c1",
        listen=("127.0.0.1:0",),
        etcd=EtcdConfig(("unused:1",)),
        agents=AgentsConfig(inventory_ttl_s=0.0, inventory_timeout_s=3.0),
        hosts={
            "host1": HostDecl("host1", bridges={"guest": "br-guest"}),
            "host2": HostDecl("host2", bridges={"guest": "br-vm"}),
        },
    )
    observer = CoordinatorMetrics(registry, config.limits)
    c = build_coordinator(
        config,
        store,
        lambda h, addr: GrpcAgentClient(h, addr, timeout_s=5.0, progress_interval_ms=10),
        rpc_observer=RpcMetrics(registry),
        record_observer=observer,
    )
    observer.watch(
        records=c.leader_records, hosts=lambda: c.fleet.available_hosts(), leader=c.is_leader, health=c.host_health
    )
    c.new_engine = lambda: fast_engine(c, FAST, observer=c.record_observer)  # type: ignore[method-assign]
    c.servicer.submissions.timeouts = FAST
    [port] = await c.start()
    channel = create_channel(f"127.0.0.1:{port}")
    servers, endpoints = [], {}
    # the coordinator over a unix socket and TCP, the agents over TCP (the daemons take both)
    coordinator_server = MetricsServer(registry)
    [coordinator_port, _] = await coordinator_server.start(["127.0.0.1:0", f"unix:{tmp_path}/c1.metrics.sock"])
    servers.append(coordinator_server)
    endpoints["coordinator"] = f"http://127.0.0.1:{coordinator_port}"
    for name, a in agents.agents.items():
        server = MetricsServer(a.registry)
        [agent_port] = await server.start(["127.0.0.1:0"])
        servers.append(server)
        endpoints[name] = f"http://127.0.0.1:{agent_port}"
    for _ in range(300):
        if c.is_leader() and c.engine is not None:
            break
        await asyncio.sleep(0.01)
    s = Setup(agents, memory, c, registry, cgrpc.CoordinatorStub(channel), endpoints, servers, registrations)
    try:
        yield s
    finally:
        await channel.close()
        for server in servers:
            await server.close()
        await c.stop(grace_s=0.5)
        for reg in registrations:
            await reg.stop()
        await agents.close()
        await memory.close()


async def migrate_watching(setup: Setup) -> tuple[cpb.Migration, list[Samples], list[Samples]]:
    """Migrate g1 host1 -> host2 (bandwidth capped, the guest dirtying memory: a few pre-copy
    passes), scraping the source agent and the coordinator until the record is final."""
    setup.agents.add_guest("host1", "g1", memory=256 * MiB, dirty=8 * MiB)
    m = await setup.stub.SubmitMigration(
        cpb.SubmitMigrationRequest(
            vm="g1",
            target_host="host2",
            options=tpb.MigrationOptions(bandwidth_mibps=64),
        )
    )
    agent_scrapes: list[Samples] = []
    leader_scrapes: list[Samples] = []
    for _ in range(400):
        agent_scrapes.append(await scrape(setup, "host1"))
        leader_scrapes.append(await scrape(setup, "coordinator"))
        m = await setup.stub.GetMigration(cpb.GetMigrationRequest(id=m.id))
        if m.phase in (cpb.PHASE_SUCCEEDED, cpb.PHASE_FAILED, cpb.PHASE_ROLLED_BACK, cpb.PHASE_CANCELLED):
            break
        await asyncio.sleep(0.02)
    return m, agent_scrapes, leader_scrapes


async def test_metrics_move_during_a_migration(setup: Setup) -> None:
    before = await scrape(setup, "coordinator")
    assert value(before, "ferry_coordinator_leader") == 1
    assert value(before, "ferry_migrations_finished_total", outcome="succeeded") == 0
    assert value(before, "ferry_build_info", component="coordinator") == 1

    m, during_agent, during_leader = await migrate_watching(setup)
    assert m.phase == cpb.PHASE_SUCCEEDED, m
    assert setup.agents.running_on("g1") == ["host2"]

    # while it ran: the source agent showed its job, the leader showed it in flight
    job = {"migration_id": m.id, "domain": "g1"}
    running = [s for s in during_agent if value(s, "ferry_agent_migrations_running") == 1]
    assert running, "the source agent never showed the job running"
    remaining = [value(s, "ferry_agent_migration_remaining_bytes", kind="memory", **job) for s in running]
    assert max(remaining) > 0
    assert max(value(s, "ferry_agent_migration_dirty_rate_bytes_per_second", **job) for s in running) > 0
    assert max(value(s, "ferry_agent_migration_iteration", **job) for s in running) >= 2
    assert max(value(s, "ferry_agent_migration_bandwidth_bytes_per_second", **job) for s in running) == 64 * MiB
    assert any(value(s, "ferry_migrations_in_flight", phase="migrating") == 1 for s in during_leader)
    assert any(value(s, "ferry_host_slots_used", host="host1", direction="outbound") == 1 for s in during_leader)

    # afterwards: the job's series are gone, the counters and histograms hold the migration
    agent = await scrape(setup, "host1")
    target = await scrape(setup, "host2")
    leader = await scrape(setup, "coordinator")
    assert value(agent, "ferry_agent_migrations_running") == 0
    assert not has(agent, "ferry_agent_migration_remaining_bytes", migration_id=m.id)
    assert value(agent, "ferry_agent_migration_jobs_total", outcome="completed") == 1
    assert value(agent, "ferry_rpc_server_handled_total", service="Agent", method="Migrate", code="OK") == 1
    assert value(target, "ferry_rpc_server_handled_total", service="Agent", method="PrepareIncoming", code="OK") >= 1
    assert value(target, "ferry_agent_prepares_held") == 0  # committed

    assert value(leader, "ferry_migrations_started_total", policy="default") == 1
    assert value(leader, "ferry_migrations_finished_total", outcome="succeeded", policy="default") == 1
    assert value(leader, "ferry_migrations_finished_total", outcome="failed") == 0
    assert value(leader, "ferry_migration_duration_seconds_count", outcome="succeeded") == 1
    assert value(leader, "ferry_migration_duration_seconds_sum", outcome="succeeded") > 0
    assert value(leader, "ferry_migration_downtime_seconds_count") == 1
    assert value(leader, "ferry_migration_transferred_bytes_sum", kind="memory") >= 256 * MiB
    assert value(leader, "ferry_migrations_in_flight") == 0
    assert value(leader, "ferry_queue_depth") == 0
    submitted = value(leader, "ferry_rpc_server_handled_total", service="Coordinator", method="SubmitMigration")
    assert submitted == 1
    assert value(leader, "ferry_etcd_request_duration_seconds_count", operation="update") > 0
    assert value(leader, "ferry_etcd_request_duration_seconds_count", operation="create") >= 3  # record + 2 keys


async def test_a_refused_call_is_counted_by_its_code(setup: Setup) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused_call:
        await setup.stub.SubmitMigration(cpb.SubmitMigrationRequest(vm="nope", target_host="host2"))
    assert refused_call.value.code() == grpc.StatusCode.NOT_FOUND
    # the server counts the call once its handler has returned, which may be just after the
    # client saw the status: scrape again for a moment
    for _ in range(50):
        leader = await scrape(setup, "coordinator")
        refused = value(
            leader, "ferry_rpc_server_handled_total", service="Coordinator", method="SubmitMigration", code="NOT_FOUND"
        )
        if refused:
            break
        await asyncio.sleep(0.02)
    assert refused == 1


def queryable(registries: dict[str, CollectorRegistry]) -> set[str]:
    """Every series name a query may use: a counter's ``_total``, a histogram's ``_bucket``,
    ``_sum`` and ``_count``, a gauge's own name (from the families, with samples or not yet)."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}
    for registry in registries.values():
        for family in registry.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return names


def dashboard_metrics() -> dict[str, set[str]]:
    """Panel title -> the ferry_ metrics its queries name."""
    doc = json.loads(DASHBOARD.read_text())
    out: dict[str, set[str]] = {}
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            out.setdefault(panel["title"], set()).update(re.findall(r"\bferry_[a-z0-9_]+", target["expr"]))
    return out


async def test_every_metric_the_dashboard_queries_exists(setup: Setup) -> None:
    m, during, _ = await migrate_watching(setup)
    assert m.phase == cpb.PHASE_SUCCEEDED
    exist = queryable(setup.registries())
    # the running job's families exist only while it runs: take the names the source showed then
    exist |= {name for samples in during for name, _ in samples}
    panels = dashboard_metrics()
    assert len(panels) >= 20
    missing = {title: sorted(names - exist) for title, names in panels.items() if names - exist}
    assert not missing, f"the dashboard queries metrics no component has: {missing}"
    every = set().union(*panels.values())
    for needed in ("ferry_agent_migration_dirty_rate_bytes_per_second", "ferry_etcd_request_duration_seconds_bucket"):
        assert needed in every


async def test_each_host_shows_up_and_what_makes_it_refuse_every_migration(setup: Setup) -> None:
    before = await scrape(setup, "coordinator")
    assert value(before, "ferry_host_up", host="host1") == value(before, "ferry_host_up", host="host2") == 1
    assert not [s for s in before if s[0] == "ferry_host_refuses_migrations"]
    # host2 cloned from host1: neither can take a migration from the other
    setup.agents["host2"].hv.host_uuid = setup.agents["host1"].hv.host_uuid
    await setup.coordinator.fleet.refresh(["host1", "host2"], force=True)
    after = await scrape(setup, "coordinator")
    for host in ("host1", "host2"):
        assert value(after, "ferry_host_refuses_migrations", host=host, reason="HOST_UUID_SHARED") == 1


def test_dashboard_is_importable_grafana_json() -> None:
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] and doc["title"] == "Ferry"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
