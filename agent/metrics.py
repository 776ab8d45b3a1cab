"""The agent's Prometheus metrics (served by ``ferry.metrics.MetricsServer``; see its doc for the
RPC and etcd metrics every daemon has).

The migration driver reports its jobs through ``JobObserver`` (``agent/migration.py``); this
module keeps the last snapshot of each running job and shows it at scrape time, so a job's series
exist exactly while it runs. Labels ``migration_id`` (the coordinator's) and ``domain``:

- ``ferry_agent_migrations_running``: jobs this agent drives now;
- ``ferry_agent_migration_jobs_total{outcome}``: jobs ended: completed, failed, timed_out,
  aborted, left_running (the caller stopped watching, the job went on);
- ``ferry_agent_migration_remaining_bytes{kind}`` / ``..._processed_bytes{kind}``, kind memory or
  disk: libvirt's job statistics;
- ``ferry_agent_migration_dirty_rate_bytes_per_second``: guest memory dirtied per second;
- ``ferry_agent_migration_bandwidth_bytes_per_second``: the transfer rate;
- ``ferry_agent_migration_iteration``: the pre-copy pass over memory;
- ``ferry_agent_migration_max_downtime_seconds``: the downtime QEMU is allowed now;
- ``ferry_agent_migration_elapsed_seconds``;
- ``ferry_agent_migration_phase{phase}``: 1 for the job's phase (starting, disk_mirror, precopy,
  postcopy, finishing);
- ``ferry_agent_prepares_held``: PrepareIncoming records this host keeps (images created for
  migrations not yet committed or cleaned up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ferry.agent.migration import JobKey
from ferry.model import MigrationProgress, PrepareRecord

JOB_OUTCOMES = ("completed", "failed", "timed_out", "aborted", "left_running")
_JOB_LABELS = ["migration_id", "domain"]


class AgentMetrics(Collector):
    """A ``JobObserver`` for the driver and a collector of the jobs and prepares, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, prepares: Callable[[], Sequence[PrepareRecord]] | None = None):
        self._jobs: dict[JobKey, MigrationProgress] = {}
        self._prepares = prepares
        self.jobs_ended = Counter(
            "ferry_agent_migration_jobs",
            "Migration jobs this agent drove, by how they ended",
            ["outcome"],
            registry=registry,
        )
        for outcome in JOB_OUTCOMES:
            self.jobs_ended.labels(outcome)
        registry.register(self)

    def watch_prepares(self, prepares: Callable[[], Sequence[PrepareRecord]]) -> None:
        self._prepares = prepares

    # -- JobObserver ------------------------------------------------------------------------------

    def job_started(self, job: JobKey) -> None:
        self._jobs[job] = MigrationProgress()

    def job_progress(self, job: JobKey, progress: MigrationProgress) -> None:
        self._jobs[job] = progress

    def job_ended(self, job: JobKey, outcome: str) -> None:
        self._jobs.pop(job, None)
        self.jobs_ended.labels(outcome).inc()

    # -- Collector --------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("ferry_agent_migrations_running", "Migration jobs this agent drives now")
        running.add_metric([], len(self._jobs))
        yield running
        if self._prepares is not None:
            held = GaugeMetricFamily(
                "ferry_agent_prepares_held", "PrepareIncoming records kept on this host (not committed or cleaned up)"
            )
            held.add_metric([], len(self._prepares()))
            yield held
        yield from self._job_families(dict(self._jobs))

    def _job_families(self, jobs: dict[JobKey, MigrationProgress]) -> Iterator[Metric]:
        def family(name: str, doc: str, extra: Sequence[str] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"ferry_agent_migration_{name}", doc, labels=[*_JOB_LABELS, *extra])

        remaining = family("remaining_bytes", "Bytes libvirt has left to send, by kind (memory, disk)", ["kind"])
        processed = family("processed_bytes", "Bytes libvirt has sent, by kind (memory, disk)", ["kind"])
        dirty = family("dirty_rate_bytes_per_second", "Guest memory dirtied per second (libvirt's estimate)")
        bandwidth = family("bandwidth_bytes_per_second", "Memory transfer rate")
        iteration = family("iteration", "Pre-copy pass over guest memory (1 = the first full copy)")
        downtime = family("max_downtime_seconds", "Downtime QEMU may take to switch over, as set now")
        elapsed = family("elapsed_seconds", "Time since the job started")
        phase = family("phase", "1 for the job's phase", ["phase"])
        for job, p in jobs.items():
            labels = [job.migration_id, job.domain]
            s = p.stats
            remaining.add_metric([*labels, "memory"], s.memory_remaining)
            remaining.add_metric([*labels, "disk"], s.disk_remaining)
            processed.add_metric([*labels, "memory"], s.memory_processed)
            processed.add_metric([*labels, "disk"], s.disk_processed)
            dirty.add_metric(labels, s.dirty_rate_pages * s.page_size)
            bandwidth.add_metric(labels, s.bandwidth_bps)
            iteration.add_metric(labels, s.iteration)
            downtime.add_metric(labels, p.max_downtime_ms / 1000)
            elapsed.add_metric(labels, s.time_elapsed_ms / 1000)
            phase.add_metric([*labels, p.phase.name.lower()], 1)
        yield from (remaining, processed, dirty, bandwidth, iteration, downtime, elapsed, phase)
