"""``ferry-coordinator --config coordinator.toml``: one coordinator replica.

Every replica serves the Coordinator API (health checking and reflection included) from the
store and its fleet view; the replica elected leader (``election.py``: the ``leader`` key under a
lease) also runs the engine, which moves the migration records along. Losing the lease stops the
engine at once; SIGTERM/SIGINT resigns (the next replica takes over without waiting for the lease
to expire), then stops serving.

Metrics (``[metrics]``, ``coordinator/metrics.py``) are served beside the API; the etcd store is
wrapped in ``ferry.timed_store.TimedStore`` for its latency. Its Python dependencies come with
``pip install 'ferry[coordinator]'``; the modules needing them are imported only in ``serve``.

Who leads: the ``leader`` key (below the etcd prefix) holds ``{"id": ..., "address": ...}`` of the
leader, readable by anyone: ``etcdctl get /ferry/leader --print-value-only``, or in Python
``await current_leader(store)`` (None when nobody leads right now).

Exit status: 0 after a clean stop, 2 for a bad config, 1 when it cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from ferry.daemon import RestartRequested, first_ended, run_daemon, tls_in
from ferry.diskplan import landed_disks
from ferry.keys import LEADER_KEY
from ferry.rpc import RpcObserver, create_server
from ferry.store import Store
from ferry.timed_store import StoreObserver, TimedStore

from .agent_client import GrpcAgentClient
from .bandwidth import no_budget
from .checks import HostHealth, host_refusals
from .config import CoordinatorConfig, bandwidth_budget, load_config
from .drain_controller import DrainController
from .drains import Drains
from .election import Candidate, Election
from .fleet import AgentFactory, Fleet, last_seen_max_age
from .phases import Phase
from .placer import Placer
from .record import MigrationRecord
from .replica import ReplicaViews, replica_views
from .retention import Sweeper
from .service import CoordinatorServicer, register
from .submission import Submissions

if TYPE_CHECKING:
    from .engine import RecordObserver
    from .record import MigrationRecord

log = logging.getLogger("ferry.coordinator")

GRACE_S = 5.0
Clock = Callable[[], datetime]
# the coordinator extra's modules (pyproject.toml), checked before anything imports them
REQUIRES = ("etcd3aio", "prometheus_client", "pythonjsonlogger")


def _utc_now() -> datetime:
    return datetime.now(UTC)


async def current_leader(store: Store) -> Candidate | None:
    """The elected coordinator as the store says (id and advertised address), or None."""
    entry = await store.get(LEADER_KEY)
    return Candidate.decode(entry.value) if entry is not None else None


class Coordinator:
    """One replica: fleet view + API servicer (submissions behind it) + election (+ the engine while leading)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        store: Store,
        fleet: Fleet,
        servicer: CoordinatorServicer,
        election: Election,
        clock: Clock,
        monotonic: Callable[[], float],
        views: ReplicaViews | None = None,
        *,
        rpc_observer: RpcObserver | None = None,
        record_observer: RecordObserver | None = None,
    ) -> None:
        self.config = config
        self.rpc_observer = rpc_observer
        self.record_observer = record_observer
        self.store = store
        self.fleet = fleet
        self.servicer = servicer
        self.election = election
        self.views = views or servicer.views
        self.drain_controller: DrainController | None = None
        self.sweeper: Sweeper | None = None
        self._clock = clock
        self._monotonic = monotonic
        self.engine: Any = None
        self.server: grpc.aio.Server | None = None
        self.ports: list[int] = []
        self._election_task: asyncio.Task[None] | None = None

    def submitted(self, record: MigrationRecord) -> None:
        """A migration this replica's API created: placement counts it at once, and so does the
        engine when this replica leads (it need not wait for the watch to bring it)."""
        self.views.book.note(record)
        if self.engine is not None:
            self.engine.created(record)

    # -- leadership -----------------------------------------------------------------------------

    def new_engine(self) -> Any:
        from .engine import Engine  # the leader's reconcile loop

        return Engine(
            self.store,
            self.fleet,
            limits=self.config.limits,
            timeouts=self.config.timeouts,
            clock=self._clock,
            prepare_ttl_s=self.config.prepare_ttl_s,
            progress_write_s=self.config.engine.progress_write_s,
            cordoned=self.views.cordoned,
            known_facts=self.fleet.fresh_facts,
            decode_entry=self.views.decoder,
            written=self.views.decoder.written,
            observer=self.record_observer,
            prediction=self.config.prediction,
            leader_term=self.election.term,
            bandwidth_budget=bandwidth_budget(self.config),
        )

    async def _lead(self) -> None:
        """Runs while elected (cancelled by the election on step-down): the engine, and once it
        has listed the records, the drains and the retention sweeper beside it."""
        log.info("%s leads: starting the engine", self.config.id)
        engine = self.engine = self.new_engine()
        controller = self.drain_controller = DrainController(
            self.store,
            self.views.drains,
            lambda: engine.records,
            self.servicer.placer,
            self.servicer.submissions,
            self.views.cordons.items,
            outbound_limit=self.config.limits.per_host_outbound,
            clock=self._clock,
            max_attempts=self.config.drains.max_attempts,
            items_of=self.servicer.drains.items_of,
        )
        engine.observers.append(controller.on_migration)
        self.sweeper = Sweeper(
            self.store, lambda: engine.records, self.views.drains.items, self.config.retention, self._clock
        )
        unsubscribe = self.views.cordons.subscribe(lambda _name, _state: engine.admit_soon())

        async def beside() -> None:
            await engine.loaded.wait()
            assert self.sweeper is not None
            await asyncio.gather(controller.run(), self.sweeper.run())

        helpers = asyncio.get_running_loop().create_task(beside(), name="drains and retention")
        try:
            await engine.run()
        finally:
            unsubscribe()
            helpers.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await helpers

    async def _demoted(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            result = engine.stop()
            if asyncio.iscoroutine(result):
                await result
        log.info("%s no longer leads: engine stopped", self.config.id)

    def is_leader(self) -> bool:
        return self.election.is_leader()

    def leader_bandwidth(self) -> dict[tuple[str, str], int] | None:
        """What the leader's engine set for the jobs running through hosts with a bandwidth budget."""
        sharing = getattr(self.engine, "sharing", None) if self.engine is not None else None
        return sharing.use() if sharing is not None else None

    def host_health(self) -> list[HostHealth]:
        """Each known host: up or not, and why preflight would refuse any migration to it."""
        hosts = self.fleet.hosts()
        refusals = host_refusals({h.name: h.facts for h in hosts})
        return [HostHealth(h.name, h.available, refusals.get(h.name, ())) for h in hosts]

    def leader_records(self) -> list[MigrationRecord] | None:
        """The leader's engine's view of the records (None when this replica does not lead)."""
        engine = self.engine
        records = getattr(engine, "records", None) if engine is not None else None
        return list(records.values()) if isinstance(records, dict) else None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, campaign: bool = True) -> list[int]:
        """Follow the fleet, serve the API on the configured addresses, campaign for leadership.

        Returns the bound port of each listen address (0 for unix sockets).
        """
        # the fleet first: the records' landings (``note_landed``, as the views list them) are noted
        # only for hosts it knows -- a host's last-seen VMs, loaded later, need those after their time
        await self.fleet.start()
        await self.views.start()
        self.server, self.ports = create_server(
            self.config.listen, register(self.servicer), tls=self.config.tls, observer=self.rpc_observer
        )
        await self.server.start()
        if campaign:
            self._election_task = asyncio.create_task(self.election.run(self._lead, self._demoted), name="election")
        return self.ports

    def background_tasks(self) -> list[asyncio.Task[None]]:
        """The tasks meant to run until :meth:`stop` (the campaign, once started)."""
        return [self._election_task] if self._election_task is not None else []

    async def stop(self, grace_s: float = GRACE_S) -> None:
        """Resign (engine stopped, lease revoked), stop serving, stop following the fleet.
        The store is the caller's to close."""
        if self._election_task is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(grace_s):
                    await self.election.resign()
            self._election_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._election_task
            self._election_task = None
        if self.server is not None:
            await self.server.stop(grace_s)
            self.server = None
        await self.fleet.close()
        await self.views.close()


def build_coordinator(
    config: CoordinatorConfig,
    store: Store,
    agent_factory: AgentFactory,
    clock: Clock = _utc_now,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    rpc_observer: RpcObserver | None = None,
    record_observer: RecordObserver | None = None,
) -> Coordinator:
    """A replica wired to ``store`` and ``agent_factory`` (tests: MemoryStore and in-process agents).
    The observers (the metrics) hear about every API call and every record the engine writes."""
    fleet = Fleet(
        store,
        agent_factory,
        clock,
        config.agents.inventory_ttl_s,
        inventory_timeout_s=config.agents.inventory_timeout_s,
        declared=config.hosts,
        last_seen_max_age_s=last_seen_max_age(config.retention.migrations_s),
    )
    views = replica_views(store)

    def landed(_name: str, r: MigrationRecord | None) -> None:
        # Finishing: the job completed (or recovery found the guest on the target), it landed
        if r is not None and r.phase in (Phase.FINISHING, Phase.SUCCEEDED) and not r.options.offline:
            at = next((h.at for h in reversed(r.history) if h.phase is Phase.FINISHING), None)
            fleet.note_landed(
                r.vm_uuid,
                r.source_host,
                r.target_host,
                at or r.updated_at or r.created_at,
                name=r.vm,
                memory_bytes=r.memory_bytes,
                disks=landed_disks(r.disks),
                mapping=r.mapping,
            )

    views.migrations.subscribe(landed)
    placer = Placer(
        fleet,
        views.cordons.items,
        views.book,
        config.hosts,
        replace(config.placement, inbound_limit=config.limits.per_host_inbound),
    )
    budget = bandwidth_budget(config) or no_budget
    submissions = Submissions(
        store,
        fleet,
        hosts=config.hosts,
        timeouts=config.timeouts,
        clock=clock,
        placer=placer,
        cordons=views.cordons.items,
        policies=config.policies,
        selectors=config.policy_selectors,
        prediction=config.prediction,
        budget=budget,
    )
    drains = Drains(
        store,
        fleet,
        placer,
        outbound_limit=config.limits.per_host_outbound,
        estimates=config.drains.estimates,
        clock=clock,
        budget=budget,
    )
    servicer = CoordinatorServicer(
        store,
        fleet,
        submissions,
        hosts=config.hosts,
        views=views,
        placer=placer,
        drains=drains,
        slots=(config.limits.per_host_outbound, config.limits.per_host_inbound),
    )
    election = Election(store, config.id, config.advertised, ttl_s=config.election_ttl_s, clock=monotonic)
    coordinator = Coordinator(
        config,
        store,
        fleet,
        servicer,
        election,
        clock,
        monotonic,
        rpc_observer=rpc_observer,
        record_observer=record_observer,
    )
    submissions.on_submitted = coordinator.submitted  # placement's book, and the engine while leading
    return coordinator


def grpc_agent_factory(config: CoordinatorConfig) -> AgentFactory:
    def make(host: str, address: str) -> GrpcAgentClient:
        return GrpcAgentClient(host, address, config.agents.tls, timeout_s=config.agents.call_timeout_s)

    return make


def etcd_store(
    config: CoordinatorConfig,
    observer: StoreObserver | None = None,
    on_rewound: Callable[[int, int], None] | None = None,
) -> Store:
    """The etcd adapter (timed for ``observer``, the metrics, when given); ``on_rewound(highest,
    now)``: etcd's history went back (restored from a snapshot)."""
    from ferry.certs import etcd_ca_warning
    from ferry.etcd_store import EtcdStore, EtcdTLS  # the only etcd import, only in the real process

    e = config.etcd
    if e.tls is None:
        log.warning("etcd %s WITHOUT TLS ([etcd] insecure = true)", ",".join(e.endpoints))
    elif warning := etcd_ca_warning(e.tls.ca, config.tls.ca if config.tls is not None else None):
        log.warning("%s", warning)
    store = EtcdStore(e.endpoints, e.prefix, tls=EtcdTLS.of(e.tls, e.server_name), timeout_s=e.timeout_s)
    store.on_rewound = on_rewound
    return store if observer is None else TimedStore(store, observer)


def _addresses(listen: Sequence[str], ports: Sequence[int]) -> str:
    return ", ".join(
        a if a.startswith("unix:") else f"{a.rsplit(':', 1)[0]}:{p}" for a, p in zip(listen, ports, strict=True)
    )


async def serve(config: CoordinatorConfig) -> None:
    from ferry.metrics import RpcMetrics, StoreMetrics, certificate_files, exporter, new_registry

    from .metrics import CoordinatorMetrics

    registry = new_registry("coordinator", certificate_files(tls_in(config)))
    metrics = CoordinatorMetrics(registry, config.limits)
    stop = asyncio.Event()
    rewound: list[str] = []

    def start_over(highest: int, now: int) -> None:
        # every view, claim and record this process holds is newer than etcd now: nothing of it
        # may be written back; a fresh process reads the fleet from etcd and the agents again
        rewound.append(f"etcd's history went back from revision {highest} to {now} (restored from a snapshot?)")
        stop.set()

    store = etcd_store(config, StoreMetrics(registry), on_rewound=start_over)
    coordinator = build_coordinator(
        config, store, grpc_agent_factory(config), rpc_observer=RpcMetrics(registry), record_observer=metrics
    )
    metrics.watch(
        records=coordinator.leader_records,
        hosts=lambda: coordinator.fleet.available_hosts() | set(config.hosts),
        leader=coordinator.is_leader,
        budget=bandwidth_budget(config) or no_budget,
        bandwidth_used=coordinator.leader_bandwidth,
        health=coordinator.host_health,
    )
    endpoint = exporter(registry, config.metrics, config.tls)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ended: asyncio.Task[None] | None = None
    try:
        if config.metrics.enabled:
            metrics_ports = await endpoint.start(config.metrics_listen)
            log.info("metrics on %s (%s)", _addresses(config.metrics_listen, metrics_ports), endpoint.scheme)
        ports = await coordinator.start()
        log.info(
            "coordinator %s (pid %d) serving on %s; etcd %s prefix %s",
            config.id,
            os.getpid(),
            _addresses(config.listen, ports),
            ",".join(config.etcd.endpoints),
            config.etcd.prefix,
        )
        # a replica whose campaign died would serve on, never to lead again
        ended = await first_ended(stop, coordinator.background_tasks(), log)
        log.info("stopping: resigning, then stopping the server (grace %.0f s)", GRACE_S)
    finally:
        await coordinator.stop()
        await endpoint.close()
        await store.close()
    log.info("stopped")
    if rewound:
        raise RestartRequested(rewound[0])
    if ended is not None:
        raise RestartRequested(f"its {ended.get_name()} task ended")


def main(argv: Sequence[str] | None = None) -> int:
    return run_daemon(
        "ferry-coordinator",
        "Ferry coordinator: the fleet migration API",
        load_config,
        serve,
        argv,
        extra="coordinator",
        requires=REQUIRES,
    )


if __name__ == "__main__":
    sys.exit(main())
