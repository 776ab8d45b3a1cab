"""The coordinator's Prometheus metrics (served by ``ferry.metrics.MetricsServer``; see its doc for
the RPC and etcd metrics every daemon has).

Counted from the records the leader's runners write (``CoordinatorMetrics.record_written``, the
engine's ``RecordObserver``), so each transition is counted once, by the replica that wrote it:
sum the counters over the replicas. ``policy`` is the convergence policy's name ("default"
until named policies exist).

- ``ferry_migrations_started_total{policy}``: migrations admitted for the first time
  (Pending -> Preflight, attempt 1);
- ``ferry_migrations_finished_total{outcome, policy}``: migrations that ended: succeeded,
  failed, cancelled, rolled_back;
- ``ferry_migration_duration_seconds{outcome}``: from submission to the end (queueing included);
- ``ferry_migration_downtime_seconds``: the guest's pause at switch-over (succeeded ones, the
  completed job's figure read on the target);
- ``ferry_migration_transferred_bytes{kind}``: memory and disk bytes sent (succeeded ones).

Read from the leader's view of the records at scrape time (absent on the other replicas):

- ``ferry_migrations_in_flight{phase}``: records not final, by phase (pending ... rolling_back);
- ``ferry_queue_depth``: queued (Pending) records;
- ``ferry_host_queue_depth{host, direction}``: queued records by source (outbound) and by
  target (inbound) host: a queued record counts once on each;
- ``ferry_host_slots_used{host, direction}`` and ``ferry_host_slots_limit{direction}``: records
  holding a migration slot, per host, and the per-host limits;
- ``ferry_cluster_slots_used`` and ``ferry_cluster_slots_limit``;
- ``ferry_host_bandwidth_budget_mibps{host}`` (hosts with a migration bandwidth budget) and
  ``ferry_host_bandwidth_used_mibps{host, direction}``: what the leader set for the jobs running
  through them (``sharing.py``).

Every replica, from its fleet view:

- ``ferry_coordinator_leader``: 1 on the replica that leads;
- ``ferry_host_up{host}``: 1 when the host's agent is registered and answers and its libvirtd is up;
- ``ferry_host_refuses_migrations{host, reason}``: 1 for each reason preflight refuses every migration
  to the host, whatever the VM: ``MIGRATION_TLS_MISSING``, ``TARGET_URI_MISMATCH``, ``HOST_UUID_SHARED``
  (``host_refusals``), so that an alert finds such a host before a drain needs it.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .bandwidth import no_budget
from .checks import HostHealth
from .phases import Phase
from .record import MigrationRecord
from .slots import Limits, holds_slot

DEFAULT_POLICY = "default"
OUTCOMES = {
    Phase.SUCCEEDED: "succeeded",
    Phase.FAILED: "failed",
    Phase.CANCELLED: "cancelled",
    Phase.ROLLED_BACK: "rolled_back",
}
DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
DOWNTIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10)
BYTES_BUCKETS = tuple(float(64 << 20 << (2 * i)) for i in range(9))  # 64 MiB .. 4 TiB, x4
DIRECTIONS = ("outbound", "inbound")


def phase_label(phase: Phase) -> str:
    """``Phase.ROLLING_BACK`` -> ``rolling_back``."""
    return phase.name.lower()


def policy_of(record: MigrationRecord) -> str:
    """The convergence policy a record runs under (one, unnamed, today)."""
    return DEFAULT_POLICY


@dataclass(frozen=True)
class Occupancy:
    """What the records say about queues and slots (pure; ``occupancy``)."""

    in_flight: dict[Phase, int] = field(default_factory=dict)
    queued: int = 0
    host_queued: Tally[tuple[str, str]] = field(default_factory=Tally)  # (host, direction)
    host_slots: Tally[tuple[str, str]] = field(default_factory=Tally)
    cluster_slots: int = 0
    host_ahead: Tally[tuple[str, str]] = field(default_factory=Tally)  # admitted ahead of a slot


def occupancy(records: Iterable[MigrationRecord]) -> Occupancy:
    """Count the records that are not final: by phase, queued per host, holding slots per host,
    admitted ahead of their slot per host.

    >>> from datetime import UTC, datetime
    >>> r = MigrationRecord("m-1", "g1", "u1", "h1", "h2", datetime(2026, 1, 1, tzinfo=UTC))
    >>> o = occupancy([r, MigrationRecord("m-2", "g2", "u2", "h1", "h3", r.created_at, phase=Phase.MIGRATING)])
    >>> o.queued, o.host_queued[("h2", "inbound")], o.host_slots[("h1", "outbound")], o.cluster_slots
    (1, 1, 1, 1)
    >>> o = occupancy([MigrationRecord("m-3", "g3", "u3", "h1", "h2", r.created_at, phase=Phase.PREPARING, ahead=True)])
    >>> o.host_ahead[("h1", "outbound")], o.host_slots[("h1", "outbound")], o.cluster_slots
    (1, 0, 0)
    """
    in_flight = {p: 0 for p in Phase if not p.is_final}
    host_queued: Tally[tuple[str, str]] = Tally()
    host_slots: Tally[tuple[str, str]] = Tally()
    host_ahead: Tally[tuple[str, str]] = Tally()
    cluster_slots = 0
    for r in records:
        if r.phase.is_final:
            continue
        in_flight[r.phase] += 1
        if r.phase.holds_slot and not holds_slot(r):
            continue  # committed; waits only for its source to remove the copied disks
        tally = (host_ahead if r.ahead else host_slots) if r.phase.holds_slot else host_queued
        tally[(r.source_host, "outbound")] += 1
        tally[(r.target_host, "inbound")] += 1
        cluster_slots += r.phase.holds_slot and not r.ahead
    return Occupancy(
        in_flight=in_flight,
        queued=in_flight[Phase.PENDING],
        host_queued=host_queued,
        host_slots=host_slots,
        cluster_slots=cluster_slots,
        host_ahead=host_ahead,
    )


class CoordinatorMetrics(Collector):
    """The engine's ``RecordObserver`` and a collector of the leader's view, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, limits: Limits) -> None:
        self.limits = limits
        self._records: Callable[[], Collection[MigrationRecord] | None] = lambda: None
        self._hosts: Callable[[], Collection[str]] = lambda: ()
        self._leader: Callable[[], bool] = lambda: False
        self._budget: Callable[[str], int] = no_budget
        self._bandwidth_used: Callable[[], Mapping[tuple[str, str], int] | None] = lambda: None
        self.started = Counter(
            "ferry_migrations_started", "Migrations admitted for the first time", ["policy"], registry=registry
        )
        self.finished = Counter(
            "ferry_migrations_finished", "Migrations that ended, by outcome", ["outcome", "policy"], registry=registry
        )
        self.duration = Histogram(
            "ferry_migration_duration_seconds",
            "Time from submission to the end of a migration",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.downtime = Histogram(
            "ferry_migration_downtime_seconds",
            "The guest's pause at switch-over (succeeded migrations)",
            buckets=DOWNTIME_BUCKETS,
            registry=registry,
        )
        self.transferred = Histogram(
            "ferry_migration_transferred_bytes",
            "Bytes a succeeded migration sent, by kind (memory, disk)",
            ["kind"],
            buckets=BYTES_BUCKETS,
            registry=registry,
        )
        self.started.labels(DEFAULT_POLICY)
        for outcome in OUTCOMES.values():
            self.finished.labels(outcome, DEFAULT_POLICY)
        registry.register(self)

    def watch(
        self,
        *,
        records: Callable[[], Collection[MigrationRecord] | None],
        hosts: Callable[[], Collection[str]],
        leader: Callable[[], bool],
        budget: Callable[[str], int] = no_budget,
        bandwidth_used: Callable[[], Mapping[tuple[str, str], int] | None] = lambda: None,
        health: Callable[[], Iterable[HostHealth]] = tuple,
    ) -> None:
        """Where to read the leader's records (None while not leading), the known hosts, and
        whether this replica leads, at scrape time; the hosts' bandwidth budgets and what the
        leader's jobs use of them; each host's health as this replica's fleet view has it."""
        self._records, self._hosts, self._leader = records, hosts, leader
        self._budget, self._bandwidth_used = budget, bandwidth_used
        self._health = health

    # -- RecordObserver -----------------------------------------------------------------------------

    def record_written(self, old: MigrationRecord, new: MigrationRecord) -> None:
        if old.phase is new.phase:
            return
        policy = policy_of(new)
        if old.phase is Phase.PENDING and new.phase is Phase.PREFLIGHT and new.attempt == 1:
            self.started.labels(policy).inc()
        if new.phase.is_final and not old.phase.is_final:
            outcome = OUTCOMES[new.phase]
            self.finished.labels(outcome, policy).inc()
            ended = new.updated_at or new.history[-1].at
            self.duration.labels(outcome).observe(max(0.0, (ended - new.created_at).total_seconds()))
            if new.phase is Phase.SUCCEEDED and new.result is not None:
                self.downtime.observe(new.result.downtime_ms / 1000)
                self.transferred.labels("memory").observe(new.result.memory_processed)
                self.transferred.labels("disk").observe(new.result.disk_processed)

    # -- Collector ------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        leader = GaugeMetricFamily("ferry_coordinator_leader", "1 on the coordinator replica that leads")
        leader.add_metric([], 1 if self._leader() else 0)
        up = GaugeMetricFamily(
            "ferry_host_up", "1 when the host's agent is registered and answers and its libvirtd is up", labels=["host"]
        )
        refuses = GaugeMetricFamily(
            "ferry_host_refuses_migrations",
            "1 for each reason preflight refuses every migration to the host",
            labels=["host", "reason"],
        )
        for h in self._health():
            up.add_metric([h.name], 1 if h.up else 0)
            for reason in h.refusals:
                refuses.add_metric([h.name, reason], 1)
        yield from (up, refuses)
        yield leader
        records = self._records()
        if records is None:
            return
        o = occupancy(records)
        hosts = sorted(
            set(self._hosts())
            | {h for h, _ in o.host_slots}
            | {h for h, _ in o.host_queued}
            | {h for h, _ in o.host_ahead}
        )
        in_flight = GaugeMetricFamily("ferry_migrations_in_flight", "Migrations not final, by phase", labels=["phase"])
        for phase, n in o.in_flight.items():
            in_flight.add_metric([phase_label(phase)], n)
        queued = GaugeMetricFamily("ferry_queue_depth", "Migrations queued (Pending)")
        queued.add_metric([], o.queued)
        host_queued = GaugeMetricFamily(
            "ferry_host_queue_depth",
            "Migrations queued, by source (outbound) and target (inbound) host",
            labels=["host", "direction"],
        )
        slots = GaugeMetricFamily(
            "ferry_host_slots_used",
            "Migrations holding a slot, by source (outbound) and target (inbound) host",
            labels=["host", "direction"],
        )
        ahead = GaugeMetricFamily(
            "ferry_host_migrations_ahead",
            "Migrations preparing (or prepared) ahead of their slot, by source (outbound) and target (inbound) host",
            labels=["host", "direction"],
        )
        for host in hosts:
            for direction in DIRECTIONS:
                host_queued.add_metric([host, direction], o.host_queued[(host, direction)])
                slots.add_metric([host, direction], o.host_slots[(host, direction)])
                ahead.add_metric([host, direction], o.host_ahead[(host, direction)])
        limit = GaugeMetricFamily(
            "ferry_host_slots_limit", "Concurrent migrations allowed per host", labels=["direction"]
        )
        limit.add_metric(["outbound"], self.limits.per_host_outbound)
        limit.add_metric(["inbound"], self.limits.per_host_inbound)
        cluster = GaugeMetricFamily("ferry_cluster_slots_used", "Migrations holding a slot in the cluster")
        cluster.add_metric([], o.cluster_slots)
        cluster_limit = GaugeMetricFamily("ferry_cluster_slots_limit", "Concurrent migrations allowed in the cluster")
        cluster_limit.add_metric([], self.limits.cluster)
        yield from (in_flight, queued, host_queued, slots, ahead, limit, cluster, cluster_limit)
        budgeted = [h for h in hosts if self._budget(h) > 0]
        if budgeted:
            budget = GaugeMetricFamily(
                "ferry_host_bandwidth_budget_mibps", "A host's migration bandwidth budget, each way", labels=["host"]
            )
            used_now = self._bandwidth_used() or {}
            used = GaugeMetricFamily(
                "ferry_host_bandwidth_used_mibps",
                "Bandwidth set for the migrations running through a host with a budget",
                labels=["host", "direction"],
            )
            for host in budgeted:
                budget.add_metric([host], self._budget(host))
                for direction in DIRECTIONS:
                    used.add_metric([host, direction], used_now.get((host, direction), 0))
            yield from (budget, used)
