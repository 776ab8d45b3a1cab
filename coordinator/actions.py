"""Performing the decision function's actions against the agents; each result becomes an event.

``Actions.perform(record, action, emit)`` does one action of ``decide`` and reports what happened
through ``emit`` (called once or more, never raising). The rules, from ``decide``'s contract:

* an agent call failing Unavailable/DeadlineExceeded -> ``AgentLost(host)``; any other error ->
  ``PrepareFailed`` (PrepareTarget), ``StepFailed`` (other steps), or a problem in
  ``PreflightResult`` (RunPreflight);
* the Migrate stream: progress -> ``Progress``, its result -> ``MigrationEnded(ok=True)``, a job
  error -> ``MigrationEnded(ok=False)``; a stream cut on the way (agent restart, network) is
  ``AgentLost(source)`` and the job is then followed by polling GetJob, as for ``WatchJob``;
* a followed job that is no longer active is judged by where the guest is: ``Placement``
  (GetJob cannot say how a job it no longer runs ended; ``decide`` acts on placement anyway);
* ObservePlacement: GetDomain on both hosts (NotFound = None), GetJob on the source
  ("migration out" active = ``source_job_active``);
* PrepareTarget: the source's XML (and disks) as the record's passed preflight read them a moment
  before (``PREFLIGHT_XML_FRESH_S``), else from a fresh GetDomain on the source -- one agent call
  less on the way to the job;
* CleanupTarget: the listed prepares, then every prepare ListPrepares shows with this
  migration's id; an already removed one counts as cleaned;
* CommitTarget with ``require_landed`` that the target refuses (NOT_LANDED: the guest did not land
  there) reports the Placement observed instead;
* KeepTarget: the target's CommitIncoming without the landing check, nothing else (the source's
  disks stay); its failure, an unreachable target too, is ``StepFailed`` (``KEEP_STEP``): the
  record is final by then, ``decide`` notes it there;
* CommitTarget on an unknown prepare counts as committed. Once the target committed a migration
  that copied disks, the source's copies are garbage (and in the way of a migration back): the
  source's RemoveSourceDisks removes them, best effort -- what became of them is a note in the
  record's history (SOURCE_DISKS_LEFT with the paths when they stay), never a failure. A source
  that cannot be reached for it (Unavailable/DeadlineExceeded) is ``Committed(source_lost=True)``:
  ``decide`` waits for it and commits (a no-op now) and removes again once it answers.

Every agent call carries the leader's term (``leader_term``, ``agent/fencing.py``). An agent that
refuses one as STALE_LEADER has seen a newer leader: this one was deposed (paused past its lease)
and must not act on anything any more. Nothing is emitted for such a call; ``on_stale`` tells
the engine, which stops (and the election steps down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import cast

from ferry.convergence import policy_from_options
from ferry.diskplan import plan_disks
from ferry.errors import FerryError, InvalidArgument, NotFound
from ferry.model import (
    CompletedJob,
    DomainInfo,
    HostFacts,
    JobStats,
    MigrationProgress,
    MigrationResult,
    PolicyAction,
    PrepareRecord,
    Problem,
    StorageMode,
)
from ferry.paths import not_local
from ferry.ports import AgentClient
from ferry.registry import HostDirectory, migrate_uri_for

from .agent_client import agent_lost, transport_failure
from .bandwidth import alone, no_budget
from .events import (
    COMMIT_STEP,
    KEEP_STEP,
    AbortMigration,
    Action,
    AgentLost,
    CleanedUp,
    CleanupTarget,
    CommitTarget,
    Committed,
    Event,
    KeepTarget,
    MigrationEnded,
    ObservePlacement,
    Placement,
    PolicyActed,
    PreflightResult,
    Prepared,
    PrepareFailed,
    PrepareTarget,
    Progress,
    RunPreflight,
    StartMigration,
    StepFailed,
    WatchJob,
)
from .policies import PredictionConfig, copy_bytes, needs_prediction, predict_migration, refusal
from .preflight import PreflightReport, ProbeCache, measure, preflight
from .record import MigrationRecord

log = logging.getLogger(__name__)

PATH_NOT_LOCAL = "PATH_NOT_LOCAL"  # RemoveSourceDisks: a path outside the local image directories

Emit = Callable[[Event], None]
MIGRATION_OUT = "migration out"


def vm_ref(r: MigrationRecord) -> str:
    """How agents are asked for the record's domain: by UUID when known (names can be reused)."""
    return r.vm_uuid or r.vm


def outgoing(job: JobStats) -> bool:
    """An outgoing migration job runs (an unnamed active job counts: older libvirt has no name)."""
    return job.active and job.operation in (MIGRATION_OUT, "")


STALE_LEADER = "STALE_LEADER"
NOT_LANDED = "NOT_LANDED"  # CommitIncoming(require_landed): the guest did not land on the target
# the source's XML a passed preflight read, used by the prepare that follows within this long
# (a prepare resumed later, or by another leader, asks the source again); at most this many kept
PREFLIGHT_XML_FRESH_S = 10.0
PREFLIGHTED_KEPT = 4096


@dataclass(frozen=True)
class ActionTiming:
    job_poll_s: float = 1.0  # GetJob polling while following a job without a stream
    prepare_ttl_s: int = 600  # prepares expire on the target after this (agent sweep)


def _stale(event: Event) -> Problem | None:
    """The STALE_LEADER refusal an event carries, if any."""
    error = getattr(event, "error", None)
    return error if isinstance(error, Problem) and error.reason == STALE_LEADER else None


class Actions:
    """The side effects of the engine, one method per action (see the module docstring)."""

    def __init__(
        self,
        hosts: HostDirectory,
        timing: ActionTiming,
        known_facts: Callable[[str], HostFacts | None] | None = None,
        prediction: PredictionConfig = PredictionConfig(),
        *,
        leader_term: int = 0,
        on_stale: Callable[[Problem], None] = lambda problem: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hosts = hosts
        self.timing = timing
        self.known_facts = known_facts  # fresh cached host facts (the fleet view): fewer inventory calls
        self.probes = ProbeCache()  # probes that passed lately: not repeated for every migration
        self.prediction = prediction
        self.term = leader_term
        self.on_stale = on_stale
        # the last passed preflight of each record (and when): its prepare, which follows at once,
        # takes the source's domain and XML from it instead of asking the source again
        self._preflighted: OrderedDict[str, tuple[PreflightReport, float]] = OrderedDict()
        self._monotonic = monotonic
        # the bandwidth a job starts at when hosts' budgets are shared (None: its policy's cap)
        self.start_bandwidth: Callable[[str], int | None] = lambda migration_id: None
        self.budget: Callable[[str], int] = no_budget  # hosts' budgets, for the prediction

    def _fenced(self, r: MigrationRecord, sink: Emit) -> Emit:
        """``sink``, except for a STALE_LEADER refusal: that goes to ``on_stale`` instead."""

        def emit(event: Event) -> None:
            stale = _stale(event)
            if stale is None:
                sink(event)
            else:
                log.error("migration %s: an agent refused this leader's call: %s", r.id, stale.message)
                self.on_stale(stale)

        return emit

    def _client(self, host: str) -> AgentClient:
        return self.hosts.client(host)

    def _failed(self, host: str, step: str, err: FerryError) -> Event:
        return AgentLost(host, Problem.of(err)) if agent_lost(err) else StepFailed(f"{step} on {host}", Problem.of(err))

    async def perform(
        self, r: MigrationRecord, action: Action, emit: Emit, following: Callable[[], bool] = lambda: True
    ) -> None:
        """Do ``action`` for ``r``; ``following()`` says whether a job follower should go on."""
        emit = self._fenced(r, emit)
        match action:
            case RunPreflight():
                emit(await self.run_preflight(r))
            case PrepareTarget():
                emit(await self.prepare_target(r))
            case StartMigration():
                await self.start_migration(r, emit, following)
            case WatchJob():
                await self.follow_job(r, emit, following)
            case AbortMigration():
                event = await self.abort(r)
                if event is not None:
                    emit(event)
            case ObservePlacement(delay_s=delay):
                if delay > 0:
                    await asyncio.sleep(delay)
                emit(await self.placement(r))
            case CleanupTarget(prepare_ids=ids, discard_incoming=discard):
                emit(await self.cleanup(r, ids, discard_incoming=discard))
            case CommitTarget(prepare_id=pid, require_landed=landed):
                emit(await self.commit(r, pid, require_landed=landed))
            case KeepTarget(prepare_id=pid):
                failed = await self.keep(r, pid)
                if failed is not None:
                    emit(failed)

    # ------------------------------------------------------------------ before the target is touched

    async def run_preflight(self, r: MigrationRecord) -> Event:
        """The preflight, and (for a record without one) the prediction: the guest measured on
        the source while the checks run."""
        measuring = None
        policy = r.policy or policy_from_options(r.options)
        wanted = self.prediction.always or needs_prediction(policy)
        if wanted and r.prediction is None and not r.options.offline and r.vm_uuid:
            measuring = asyncio.create_task(
                measure(self.hosts, r.source_host, r.vm_uuid, r.memory_bytes, self.prediction)
            )
        try:
            report = await preflight(
                self.hosts,
                vm_ref(r),
                r.target_host,
                r.options,
                r.mapping,
                storage=r.options.storage,
                source_host=r.source_host,
                migration_id=r.id,
                known_facts=self.known_facts,
                probes=self.probes,
            )
        except BaseException:
            if measuring is not None:
                measuring.cancel()
            raise
        load = await measuring if measuring is not None else None
        involved = [h for h in report.unavailable if h in (r.source_host, r.target_host)]
        if involved:
            return AgentLost(involved[0])
        if load is None:
            result = PreflightResult(report.blockers)
        else:
            prediction = predict_migration(
                policy,
                load,
                disk_bytes=copy_bytes(report.disks),
                config=self.prediction,
                budget_mibps=alone(self.budget, r.source_host, r.target_host),
            )
            log.info("migration %s: prediction under policy %s: %s", r.id, policy.label, prediction.words)
            refused = refusal(policy, prediction)
            result = PreflightResult(
                report.blockers + ((Problem.of(refused),) if refused is not None else ()), prediction
            )
        if not result.problems and report.domain is not None and report.domain_xml:
            self._remember_preflight(r.id, report)
        return result

    def _remember_preflight(self, migration_id: str, report: PreflightReport) -> None:
        self._preflighted[migration_id] = (report, self._monotonic())
        self._preflighted.move_to_end(migration_id)
        while len(self._preflighted) > PREFLIGHTED_KEPT:  # records that never reached their prepare
            self._preflighted.popitem(last=False)

    def _passed_preflight(self, migration_id: str) -> PreflightReport | None:
        """The record's passed preflight (with the source's domain and XML), if a moment ago."""
        known = self._preflighted.pop(migration_id, None)
        if known is None or self._monotonic() - known[1] > PREFLIGHT_XML_FRESH_S:
            return None
        return known[0]

    async def prepare_target(self, r: MigrationRecord) -> Event:
        """The target's PrepareIncoming from the source's XML: the one its passed preflight read
        a moment ago, else asked again (a prepare resumed by recovery or by another leader)."""
        known = self._passed_preflight(r.id)
        if known is not None and known.domain is not None:
            domain, xml = known.domain, known.domain_xml
        else:
            try:
                domain, xml = await self._client(r.source_host).get_domain(
                    vm_ref(r),
                    include_xml=True,
                    leader_term=self.term,
                    backing_fingerprints=r.options.storage is StorageMode.COPY_INC,
                )
            except FerryError as err:
                return AgentLost(r.source_host, Problem.of(err)) if agent_lost(err) else PrepareFailed(Problem.of(err))
        try:
            plans = plan_disks(domain.disks, r.options.storage, r.options.migrate_disks, r.mapping)
            out = await self._client(r.target_host).prepare_incoming(
                domain_xml=xml,
                disks=plans,
                mapping=r.mapping,
                storage=r.options.storage,
                ttl_s=self.timing.prepare_ttl_s,
                migration_id=r.id,
                dry_run=False,
                leader_term=self.term,
                offline=r.options.offline,
            )
        except FerryError as err:
            return AgentLost(r.target_host, Problem.of(err)) if agent_lost(err) else PrepareFailed(Problem.of(err))
        return Prepared(out.prepare_id, out.destination_xml, tuple(out.disks or plans))

    # ------------------------------------------------------------------ the job

    async def target_uris(self, host: str) -> tuple[str, str]:
        """The target's libvirt URI and QEMU migration URI: its registration, else its inventory."""
        reg = self.hosts.registration(host)
        if reg is not None and reg.libvirt_uri:
            return reg.libvirt_uri, reg.migrate_uri
        facts = (await self._client(host).inventory()).host
        return facts.libvirt_uri, migrate_uri_for(facts.migration_address)

    async def start_migration(self, r: MigrationRecord, emit: Emit, following: Callable[[], bool]) -> None:
        try:
            target_uri, migrate_uri = await self.target_uris(r.target_host)
        except FerryError as err:
            emit(self._failed(r.target_host, "find the target's libvirt URI", err))
            return
        if not target_uri:
            emit(
                MigrationEnded(
                    False,
                    error=Problem(
                        "TARGET_URI_UNKNOWN",
                        f"{r.target_host} advertises no libvirt URI",
                        f"set advertise_libvirt_uri in ferry-agent's config on {r.target_host}",
                    ),
                )
            )
            return
        options, policy = r.options, r.policy
        share = self.start_bandwidth(r.id)  # the hosts' budgets shared (``sharing.py``)
        if share is not None:
            options = replace(options, bandwidth_mibps=share)
            policy = replace(policy, bandwidth_mibps=share) if policy is not None else None
        try:
            async for item in self._client(r.source_host).migrate(
                vm_ref(r),
                target_uri=target_uri,
                destination_xml=r.destination_xml,
                options=options,
                migration_id=r.id,
                migrate_uri=migrate_uri,
                disks=r.disks,
                policy=policy,
                predicted_converges=r.prediction.converges if r.prediction is not None else None,
                leader_term=self.term,
                target_host=r.target_host,
            ):
                if isinstance(item, MigrationResult):
                    emit(MigrationEnded(True, job=item.job))
                    return
                if isinstance(item, PolicyAction):
                    emit(PolicyActed(item))
                    continue
                emit(Progress(item))
        except FerryError as err:
            if not transport_failure(err):
                emit(MigrationEnded(False, error=Problem.of(err)))
                return
            log.warning(
                "migration %s: the Migrate stream from %s broke (%s); following the job by GetJob",
                r.id,
                r.source_host,
                err.reason,
            )
            emit(AgentLost(r.source_host))
            await self.follow_job(r, emit, following, lost=True)
            return
        emit(
            MigrationEnded(
                False,
                error=Problem(
                    "MIGRATE_STREAM_ENDED",
                    f"the Migrate stream from {r.source_host} ended without a result",
                    f"see ferry-agent's log on {r.source_host}",
                ),
            )
        )

    async def follow_job(
        self, r: MigrationRecord, emit: Emit, following: Callable[[], bool], *, lost: bool = False
    ) -> None:
        """Poll GetJob on the source while the job runs; when it ends, report the placement.
        ``lost``: the source was just reported lost (report it again only after it answered)."""
        last: MigrationProgress | None = None
        while following():
            try:
                job = await self._source_job(r)
            except FerryError as err:
                if not lost:
                    emit(self._failed(r.source_host, "follow the migration job", err))
                lost = True
                await asyncio.sleep(self.timing.job_poll_s)
                continue
            lost = False
            if not outgoing(job.stats):
                emit(await self.placement(r))
                return
            if job != last:
                emit(Progress(job))
                last = job
            await asyncio.sleep(self.timing.job_poll_s)

    async def abort(self, r: MigrationRecord) -> Event | None:
        try:
            client = self._client(r.source_host)
        except FerryError as err:
            return self._failed(r.source_host, "abort the migration job", err)
        try:
            aborted = await client.abort_migration(vm_ref(r), leader_term=self.term)
        except NotFound:
            return None  # the domain left the source: nothing to abort
        except FerryError as err:
            return self._failed(r.source_host, "abort the migration job", err)
        log.info("migration %s: abort on %s: %s", r.id, r.source_host, "aborting" if aborted else "no job running")
        return None

    # ------------------------------------------------------------------ placement and the target

    async def _domain(self, host: str, r: MigrationRecord) -> DomainInfo | None:
        client = self._client(host)  # an unknown host is an error here, not an absent domain
        try:
            domain, _ = await client.get_domain(vm_ref(r), leader_term=self.term)
        except NotFound:
            return None
        return domain

    async def _source_job(self, r: MigrationRecord) -> MigrationProgress:
        """The source's job of the domain (none when the domain is gone from the source)."""
        client = self._client(r.source_host)
        try:
            return await client.get_job(vm_ref(r), leader_term=self.term)
        except NotFound:
            return MigrationProgress()

    async def _source_job_active(self, r: MigrationRecord) -> bool:
        return outgoing((await self._source_job(r)).stats)

    async def placement(self, r: MigrationRecord) -> Event:
        """Placement, or AgentLost/StepFailed naming the host that could not be asked."""

        async def ask(host: str, call: object) -> object:
            try:
                return await call  # type: ignore[misc]
            except FerryError as err:
                return (host, err)

        src, tgt, job = await asyncio.gather(
            ask(r.source_host, self._domain(r.source_host, r)),
            ask(r.target_host, self._domain(r.target_host, r)),
            ask(r.source_host, self._source_job_active(r)),
        )
        for got in (src, tgt, job):
            if isinstance(got, tuple):
                host, err = got
                return self._failed(host, "observe the placement", err)
        s, t = cast(DomainInfo | None, src), cast(DomainInfo | None, tgt)
        return Placement(
            s.state if s else None,
            t.state if t else None,
            bool(job),
            target_arriving=bool(t and t.paused_by_libvirt),
        )

    async def prepares(self, r: MigrationRecord) -> list[PrepareRecord] | None:
        """The target's prepares, None when it cannot be asked."""
        try:
            return await self._client(r.target_host).list_prepares(leader_term=self.term)
        except FerryError as err:
            log.info("migration %s: cannot list prepares on %s: %s", r.id, r.target_host, err.reason)
            return None

    async def cleanup(self, r: MigrationRecord, ids: tuple[str, ...], *, discard_incoming: bool = False) -> Event:
        try:
            target = self._client(r.target_host)
            for pid in ids:
                removed = await target.cleanup_incoming(pid, discard_incoming=discard_incoming, leader_term=self.term)
                log.info(
                    "migration %s: cleaned prepare %s on %s: %s",
                    r.id,
                    pid,
                    r.target_host,
                    ", ".join(removed) or "already gone",
                )
            for p in await target.list_prepares(leader_term=self.term):
                if p.migration_id == r.id:
                    removed = await target.cleanup_incoming(
                        p.prepare_id, discard_incoming=discard_incoming, leader_term=self.term
                    )
                    log.info(
                        "migration %s: cleaned stray prepare %s on %s: %s",
                        r.id,
                        p.prepare_id,
                        r.target_host,
                        ", ".join(removed) or "already gone",
                    )
        except FerryError as err:
            return self._failed(r.target_host, "clean up the target", err)
        return CleanedUp()

    async def commit(self, r: MigrationRecord, prepare_id: str, *, require_landed: bool = False) -> Event:
        """Committed; with ``require_landed``, the Placement observed when the target says the
        guest did not land there (NOT_LANDED)."""
        if prepare_id:
            try:
                client = self._client(r.target_host)
            except FerryError as err:
                return self._failed(r.target_host, COMMIT_STEP, err)
            try:
                await client.commit_incoming(prepare_id, require_landed=require_landed, leader_term=self.term)
            except NotFound:
                pass  # already committed (or swept): the images are the domain's
            except FerryError as err:
                if require_landed and err.reason == NOT_LANDED:
                    log.info("migration %s: %s; observing the placement", r.id, err.message)
                    return await self.placement(r)
                return self._failed(r.target_host, COMMIT_STEP, err)
        note, source_lost = await self.remove_source_disks(r)
        return Committed(note, await self.completed_job(r), source_lost=source_lost)

    async def keep(self, r: MigrationRecord, prepare_id: str) -> Event | None:
        """KeepTarget: the target's CommitIncoming without the landing check, so that its agent
        forgets the prepare and leaves its images for an operator; None once done (or when the
        prepare is gone already: nothing can be done about it then)."""
        step = f"{KEEP_STEP} on {r.target_host}"
        try:
            await self._client(r.target_host).commit_incoming(prepare_id, leader_term=self.term)
        except NotFound:
            log.warning("migration %s: prepare %s is no longer on %s: nothing to keep", r.id, prepare_id, r.target_host)
            return None
        except FerryError as err:
            log.error(
                "migration %s: cannot have %s keep the images of prepare %s (%s: %s): its sweep removes them once "
                "it expires",
                r.id,
                r.target_host,
                prepare_id,
                err.reason,
                err,
            )
            return StepFailed(step, Problem.of(err))
        log.info(
            "migration %s: prepare %s committed on %s: its images are kept for an operator",
            r.id,
            prepare_id,
            r.target_host,
        )
        return None

    async def completed_job(self, r: MigrationRecord) -> CompletedJob | None:
        """The target's completed job for a record without a result (best effort; None if unknown)."""
        if r.result is not None:
            return None
        try:
            job = await self._client(r.target_host).completed_job(vm_ref(r), leader_term=self.term)
        except FerryError as err:
            log.info("migration %s: no completed job on %s: %s", r.id, r.target_host, err.reason)
            return None
        return job if job.time_elapsed_ms else None

    async def remove_source_disks(self, r: MigrationRecord) -> tuple[str, bool]:
        """The source's copies of the disks the migration copied, removed; a note saying so
        ("" when nothing was copied), and whether the source could not be reached (its agent or
        libvirtd: ``decide`` then waits for it). Never raises: the migration has landed either way."""
        paths = r.copied_disks if r.options.storage is not StorageMode.SHARED else ()
        if not paths:
            return "", False
        listed, left = ", ".join(paths), ""
        try:
            if not r.vm_uuid:
                raise InvalidArgument("the record has no VM UUID", reason="VM_UUID_UNKNOWN")
            try:
                removed, gone = await self._client(r.source_host).remove_source_disks(
                    r.vm_uuid, paths, migration_id=r.id, leader_term=self.term
                )
            except FerryError as err:
                # some disks were copied from outside the source's local image directories (with
                # --map-path): the agent refuses them all; the others are removed, those named
                kept = await self._not_local(r.source_host, paths) if err.reason == PATH_NOT_LOCAL else []
                if not kept or len(kept) == len(paths):
                    raise
                left = (
                    f"; left: {', '.join(kept)} (not in a local image directory of {r.source_host}: remove "
                    f"by hand once the guest is known to run on {r.target_host} only)"
                )
                removed, gone = await self._client(r.source_host).remove_source_disks(
                    r.vm_uuid, [p for p in paths if p not in kept], migration_id=r.id, leader_term=self.term
                )
        except FerryError as err:
            if err.reason == STALE_LEADER:
                self.on_stale(Problem.of(err))
            log.warning(
                "migration %s: the source's disks on %s not removed (%s: %s): %s",
                r.id,
                r.source_host,
                err.reason,
                err,
                listed,
            )
            return (
                f"SOURCE_DISKS_LEFT: {listed} on {r.source_host} not removed ({err.reason}: {err.message}); "
                f"remove them by hand once the guest is known to run on {r.target_host} only"
            ), agent_lost(err)
        log.info("migration %s: removed the source's disks on %s: %s", r.id, r.source_host, ", ".join(removed))
        done = ", ".join(removed) or "none"
        return f"source disks removed on {r.source_host}: {done}" + (
            f" (already gone: {', '.join(gone)})" if gone else ""
        ) + left, False

    async def _not_local(self, host: str, paths: Sequence[str]) -> list[str]:
        """The paths outside ``host``'s local image directories, from its storage directories."""
        facts = self.known_facts(host) if self.known_facts is not None else None
        if facts is None:
            facts = (await self._client(host).inventory()).host
        return not_local(paths, facts.storage)
