"""The agent's gRPC servicer: thin. Protobuf in -> model (ferry.convert) -> inventory / prepare /
migration driver -> model -> protobuf out. Errors are Ferry errors; ``rpc_method`` turns them
into statuses with reason and hint. Every request with a ``leader_term`` passes the fence
(``agent/fencing.py``) once its fields are checked, before anything acts on it: a change from a
deposed coordinator leader is refused (STALE_LEADER).

Every field is checked here, at the edge, before anything acts on it (``ferry.validate``, and the
converters): names and URIs at most ``MAX_NAME`` characters without control characters, ids as
ids, numbers in range, lists bounded, XML within bounds (``domxml.parse_xml``). A Migrate goes
only to a registered host (``targets.MigrationTargets``); the disks it copies are recorded for
RemoveSourceDisks (``source_disks``). GetDomain's XML carries secrets (graphics passwords) only
when ``secure_xml(context)`` allows it: by default, to the coordinator's identity only (``ferry.rpc_auth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

from ferry import convert, logcontext, model, validate
from ferry.agent.domxml import parse_xml
from ferry.agent.fencing import LeaderFence
from ferry.agent.inventory import Inventory
from ferry.agent.migration import Control, MigrationDriver, MigrationRequest
from ferry.agent.prepare import PrepareService
from ferry.agent.progress import memory_pending, phase_of
from ferry.agent.shared_probes import SharedProbes, check_token
from ferry.agent.source_disks import SourceDisks
from ferry.agent.source_records import SourceRecords
from ferry.agent.targets import MigrationTargets
from ferry.diskplan import copy_allocation, plan_disks
from ferry.errors import FailedPrecondition, FerryError, InvalidArgument, NotFound, clip
from ferry.identity import Role
from ferry.model import (
    DiskPlan,
    DomainInfo,
    GuestLoad,
    HostMapping,
    MigrationOptions,
    MigrationProgress,
    MigrationResult,
    PolicyAction,
    Problem,
    StorageMode,
)
from ferry.paths import PATH_MAX
from ferry.ports import Hypervisor
from ferry.prediction import resident_estimate
from ferry.rpc import Context, rpc_method
from ferry.rpc_auth import caller_may
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import types_pb2 as tpb

log = logging.getLogger(__name__)

SERVICE_NAME = apb.DESCRIPTOR.services_by_name["Agent"].full_name

MiB = 1 << 20
# the QEMU process's own resident memory (code, libraries, TCG's translation cache), taken off its
# resident memory to estimate the guest's non-zero memory when its RAM mapping cannot be read;
# measured in the lab: ~90 MiB (QEMU 7.2) to ~115 MiB (QEMU 10) for a 256 MiB TCG guest
QEMU_OVERHEAD = {"qemu": 100 * MiB, "kvm": 40 * MiB}
DIRTY_RATE_PERIODS_S = (1, 3)
MAX_DIRTY_RATE_PERIOD_S = 60  # libvirt's limit
MAX_DIRTY_RATE_PERIODS = 8  # one MeasureGuest takes their sum: at most 8 minutes


def _required(value: str, field: str) -> str:
    """A required name-like field (a domain name or UUID, a URI)."""
    return validate.text(value, field, required=True)


def _domain_ref(value: str, field: str = "domain") -> str:
    return _required(value, field)


def _paths(values: Sequence[str], field: str) -> list[str]:
    return [validate.text(p, f"{field}[{i}]", max_len=PATH_MAX) for i, p in enumerate(validate.items(values, field))]


def _uuid(value: str, field: str) -> str:
    _required(value, field)
    if len(value) > 64 or any(c not in "0123456789abcdefABCDEF-" for c in value):
        raise InvalidArgument(
            f"{field}: {clip(value)!r} is not a UUID",
            reason="BAD_UUID",
            hint="give the domain's UUID as libvirt prints it, e.g. 6c61622d-0000-4000-8000-000000000001",
        )
    return value


def _xml(value: str, field: str) -> str:
    """A domain definition within bounds (size, depth, no DOCTYPE or entities); '' passes."""
    if value:
        parse_xml(value)
    return value


def _plans(values: Sequence[tpb.DiskPlan], field: str = "disks") -> list[DiskPlan]:
    validate.items(values, field)
    return [convert.disk_plan_from_pb(d) for d in values]


def _term(value: int) -> int:
    """A request's ``leader_term``: 0 (not a leader's call) or an etcd revision."""
    return validate.number(value, "leader_term", hi=validate.MAX_LEADER_TERM, zero="a call from outside the leader")


def _coordinator_only(context: Context) -> bool:
    """Secrets go only to the coordinator, which sends them to the target (any caller on a
    server without TLS, whose operator chose to trust every caller)."""
    return caller_may(Role.COORDINATOR)


def _about(migration_id: str, *, vm: str = "", source: str = "", target: str = "") -> None:
    """Bind the migration a call is about for its log lines: what the caller's metadata named
    (``ferry.rpc``), completed with what this agent knows."""
    if not migration_id:
        return
    known = logcontext.MigrationContext(migration_id, vm=vm, source=source, target=target)
    logcontext.bind((logcontext.current() or known).merged(known))


def disks_to_copy(domain: DomainInfo, options: MigrationOptions, plans: Sequence[DiskPlan] = ()) -> list[str]:
    """The guest devices libvirt copies: exactly those the target prepared copies of (the plan
    the Migrate request carries). A request without a plan (an older coordinator): none for
    shared storage, else the caller's list or every writable local file disk (diskplan's rule,
    the same the target prepared for)."""
    if plans:
        return [p.target for p in plans if p.copy]
    if options.storage is StorageMode.SHARED:
        return []
    return [p.target for p in plan_disks(domain.disks, options.storage, options.migrate_disks, HostMapping()) if p.copy]


class AgentServicer(agrpc.AgentServicer):
    def __init__(
        self,
        *,
        hypervisor: Hypervisor,
        inventory: Inventory,
        prepare: PrepareService,
        driver: MigrationDriver,
        source_disks: SourceDisks | None = None,
        targets: MigrationTargets | None = None,
        secure_xml: Callable[[Context], bool] = _coordinator_only,
        fence: LeaderFence | None = None,
    ) -> None:
        """``source_disks`` defaults to one over the prepare service's host system and state
        directory (its prepared images are never removed as source disks); ``targets`` to none
        but the registry attached later (``targets.use_store``); ``secure_xml(context)``: may
        this caller read a domain's secrets (GetDomain)?; ``fence`` to one kept in memory only."""
        self.fence = fence or LeaderFence(None)
        self.hypervisor = hypervisor
        self.inventory = inventory
        self.prepare = prepare
        self.driver = driver
        self.source_disks = source_disks or SourceDisks(
            hypervisor,
            prepare.host_system,
            host_name=prepare.host_name,
            records=SourceRecords(prepare.state_dir),
            prepared=prepare.list,
            clock=prepare.clock,
        )
        self.targets = targets or MigrationTargets(prepare.host_name)
        self.shared_probes = SharedProbes(prepare.host_system)
        self.secure_xml = secure_xml
        self._migrating: dict[str, str] = {}  # domain UUID -> migration id, while a Migrate streams
        self._controls: dict[str, Control] = {}  # domain UUID -> its running migration's Control

    # ------------------------------------------------------------------ inventory

    @rpc_method
    async def GetInventory(self, request: apb.GetInventoryRequest, context: Context) -> apb.Inventory:
        facts = await self.inventory.facts()
        domains = await self.inventory.domains()
        return convert.inventory_to_pb(model.Inventory(host=facts, domains=tuple(domains)))

    @rpc_method
    async def GetDomain(self, request: apb.GetDomainRequest, context: Context) -> apb.GetDomainResponse:
        name = _domain_ref(request.name, "name")
        self.fence.observe(_term(request.leader_term))
        domain = await self.inventory.domain(name, backing_fingerprints=request.backing_fingerprints)
        xml = ""
        if request.include_xml:
            xml = await self.hypervisor.domain_xml(domain.uuid, migratable=True, secure=self.secure_xml(context))
        return apb.GetDomainResponse(domain=convert.domain_to_pb(domain), xml=xml)

    # ------------------------------------------------------------------ target side

    @rpc_method
    async def PrepareIncoming(
        self, request: apb.PrepareIncomingRequest, context: Context
    ) -> apb.PrepareIncomingResponse:
        storage = convert.storage_mode_from_pb(request.storage) or StorageMode.SHARED
        ttl = validate.number(
            request.ttl_seconds, "ttl_seconds", lo=1, hi=validate.MAX_PREPARE_TTL_S, zero="the agent's default"
        )
        if not request.domain_xml:
            _required(request.domain_xml, "domain_xml")
        migration_id = validate.ident(request.migration_id, "migration_id")
        xml = _xml(request.domain_xml, "domain_xml")
        plans = _plans(request.disks)
        mapping = convert.mapping_from_pb(request.mapping)
        if request.dry_run:
            self.fence.observe(_term(request.leader_term))
        else:
            await self.fence.admit(_term(request.leader_term), "PrepareIncoming")
        _about(migration_id, target=self.prepare.host_name)
        probes = _paths(request.shared_probes, "shared_probes")
        blocks = dict(
            zip(_paths(list(request.block_devices), "block_devices"), request.block_devices.values(), strict=True)
        )
        for path, identity in blocks.items():
            validate.text(identity, f"block_devices[{clip(path, 40)}]")
        out = await self.prepare.prepare(
            xml,
            plans,
            mapping,
            storage,
            ttl,
            migration_id,
            request.dry_run,
            shared_probes=probes,
            block_devices=blocks,
            offline=request.offline,
        )
        return convert.prepared_to_pb(out)

    @rpc_method
    async def CleanupIncoming(
        self, request: apb.CleanupIncomingRequest, context: Context
    ) -> apb.CleanupIncomingResponse:
        prepare_id = validate.ident(request.prepare_id, "prepare_id", required=True)
        await self.fence.admit(_term(request.leader_term), "CleanupIncoming")
        removed, already_gone = await self.prepare.cleanup(prepare_id, discard_incoming=request.discard_incoming)
        return apb.CleanupIncomingResponse(removed=removed, already_gone=already_gone)

    @rpc_method
    async def CommitIncoming(self, request: apb.CommitIncomingRequest, context: Context) -> apb.CommitIncomingResponse:
        prepare_id = validate.ident(request.prepare_id, "prepare_id", required=True)
        await self.fence.admit(_term(request.leader_term), "CommitIncoming")
        if not await self.prepare.commit(prepare_id, require_landed=request.require_landed):
            log.info("commit of prepare %s: no such record (already committed or cleaned up)", prepare_id)
        return apb.CommitIncomingResponse()

    @rpc_method
    async def ListPrepares(self, request: apb.ListPreparesRequest, context: Context) -> apb.ListPreparesResponse:
        self.fence.observe(_term(request.leader_term))
        return apb.ListPreparesResponse(prepares=[convert.prepare_record_to_pb(r) for r in self.prepare.list()])

    # ------------------------------------------------------------------ source side

    async def _claim(self, domain: DomainInfo, migration_id: str) -> Control:
        """One Migrate per domain: refuse while another streams here or libvirt runs a job; the
        claimed migration's Control. The claim is taken before anything is awaited (of two calls
        arriving together the second sees it) and given back when refused."""
        if domain.uuid not in self._migrating:
            control = self._controls[domain.uuid] = Control()
            self._migrating[domain.uuid] = migration_id
            try:
                busy = domain.state.is_active and (await self.hypervisor.job_stats(domain.uuid)).active
            except BaseException:
                self._release(domain.uuid, control)
                raise
            if not busy:
                return control
            self._release(domain.uuid, control)
        other = self._migrating.get(domain.uuid, "")
        raise FailedPrecondition(
            f"{domain.name} already has a running job" + (f" (migration {other})" if other else ""),
            reason="MIGRATION_IN_PROGRESS",
            hint="wait for it (GetJob) or stop it (AbortMigration) before migrating again",
        )

    def _release(self, uuid: str, control: Control) -> None:
        """Give back a claim (``_claim``) -- only the caller's own, known by its Control."""
        if self._controls.get(uuid) is control:
            del self._controls[uuid]
            self._migrating.pop(uuid, None)

    @rpc_method
    async def Migrate(self, request: apb.MigrateRequest, context: Context) -> AsyncIterator[apb.MigrateEvent]:
        options = convert.options_from_pb(request.options)
        target_uri = _required(request.target_uri, "target_uri")
        migrate_uri = validate.text(request.migrate_uri, "migrate_uri")
        name = _domain_ref(request.domain)
        migration_id = validate.ident(request.migration_id, "migration_id")
        interval = validate.number(
            request.progress_interval_ms,
            "progress_interval_ms",
            lo=validate.MIN_PROGRESS_INTERVAL_MS,
            hi=validate.MAX_PROGRESS_INTERVAL_MS,
            zero="500 ms",
        )
        plans = _plans(request.disks)
        _xml(request.destination_xml, "destination_xml")
        await self.fence.admit(_term(request.leader_term), "Migrate")
        target_host = validate.text(request.target_host, "target_host")
        await self.targets.check(target_uri, migrate_uri, host=target_host)
        domain = await self.inventory.domain(name)
        _about(migration_id, vm=domain.name, source=self.prepare.host_name)
        if not domain.persistent and options.persist_dest and not options.persist_transient and not options.offline:
            options = replace(options, persist_dest=False)  # it has no definition to move: it stays transient
        disks = disks_to_copy(domain, options, plans)
        copied = [d for d in domain.disks if d.target in disks]
        req = MigrationRequest(
            domain=domain.uuid,
            target_uri=target_uri,
            options=options,
            destination_xml=request.destination_xml,
            migrate_disks=tuple(disks),
            migrate_uri=migrate_uri,
            disk_bytes=sum(copy_allocation(d, options.storage) or d.virtual_size for d in copied),
            progress_interval_s=interval / 1000,
            migration_id=migration_id,
            convergence=convert.policy_from_pb(request.policy) if request.HasField("policy") else None,
            predicted_converges=request.predicted_converges if request.HasField("predicted_converges") else None,
            domain_name=domain.name,
        )
        control = await self._claim(domain, migration_id)
        completed = False
        try:
            # what this migration copies is recorded first: RemoveSourceDisks removes nothing else
            await self.source_disks.migration_started(migration_id, domain, [d.source for d in copied if d.source])
            try:
                # closed here, not whenever collected: by the finally below, the driver has set
                # control.left_running if it stopped watching a job still running
                async with contextlib.aclosing(self.driver.run(req, control)) as events:
                    async for event in events:
                        if isinstance(event, MigrationResult):
                            completed = True
                            yield apb.MigrateEvent(result=convert.migrate_result_to_pb(event))
                        elif isinstance(event, PolicyAction):
                            yield apb.MigrateEvent(action=convert.policy_action_to_pb(event))
                        else:
                            yield apb.MigrateEvent(progress=convert.progress_to_pb(event))
            except FerryError:
                if control.left_running is None:  # the job ended, failed: the domain stayed here
                    await self.source_disks.migration_ended(migration_id, completed=False)
                raise
            if completed:
                await self.source_disks.migration_ended(migration_id, completed=True)
        finally:
            self._release(domain.uuid, control)
            if not completed and control.left_running is not None:
                # the driver stopped watching a job still running: its end is recorded when it comes
                self.source_disks.migration_left_running(migration_id, control.left_running)

    async def _control_of(self, name: str) -> Control | None:
        """The Control of the Migrate that streams here for the domain ``name`` (or UUID), if any."""
        if not self._controls:
            return None
        control = self._controls.get(name)
        if control is None:
            with contextlib.suppress(NotFound):
                control = self._controls.get((await self.hypervisor.get_domain(name)).uuid)
        return control

    @rpc_method
    async def AbortMigration(self, request: apb.AbortMigrationRequest, context: Context) -> apb.AbortMigrationResponse:
        """Abort the domain's migration job. A Migrate of it streaming here whose job libvirt does
        not show yet (it registers it a moment after the call) is told first (``Control``): its job
        never runs, so an abort answered while no job shows cannot be followed by the guest moving.
        ``aborted``: a job was aborted, or such a Migrate was."""
        name = _domain_ref(request.domain)
        await self.fence.admit(_term(request.leader_term), "AbortMigration")
        control = await self._control_of(name)
        if control is not None:  # before libvirt's abort: a job that shows meanwhile is aborted either way
            control.abort_requested = True
        aborted = await self.hypervisor.abort_job(name)
        if not aborted and control is not None:
            log.info("abort of the migration of %s requested: its job has not started; it will not run", name)
        else:
            log.info("abort of the job of %s requested: %s", name, "aborting" if aborted else "no job running")
        return apb.AbortMigrationResponse(aborted=aborted or control is not None)

    @rpc_method
    async def TuneMigration(self, request: apb.TuneMigrationRequest, context: Context) -> apb.TuneMigrationResponse:
        """Change a running migration; its driver (when it runs here) learns of it, reports it in
        the Migrate stream and does a force-complete itself (post-copy if the job allows it, else
        pausing the guest). The answer holds libvirt's values read back."""
        name = _domain_ref(request.domain)
        max_downtime_ms, bandwidth_mibps = validate.live_tuning(
            request.max_downtime_ms if request.HasField("max_downtime_ms") else None,
            request.bandwidth_mibps if request.HasField("bandwidth_mibps") else None,
        )
        by = validate.text(request.requested_by, "requested_by") or "an operator"
        await self.fence.admit(_term(request.leader_term), "TuneMigration")
        uuid = (await self.hypervisor.get_domain(name)).uuid
        control = self._controls.get(uuid)
        done: list[str] = []
        if max_downtime_ms is not None:
            await self.hypervisor.set_max_downtime(uuid, max_downtime_ms)
            if control is not None:
                control.operator_downtime_ms = max_downtime_ms
            done.append(f"max downtime {max_downtime_ms} ms")
        if bandwidth_mibps is not None:
            await self.hypervisor.set_bandwidth(uuid, bandwidth_mibps)
            done.append(
                f"bandwidth {bandwidth_mibps} MiB/s"
                + (
                    " (the memory's: a disk copy keeps the speed it started at, libvirt cannot change it)"
                    if control is not None and control.copies_disks
                    else ""
                )
            )
        if request.start_postcopy:
            await self.hypervisor.start_postcopy(uuid)
            if control is not None:
                control.postcopy_started = True
            done.append("switched to post-copy")
        if request.force_complete:
            if control is not None:
                control.force_requested = by
                done.append("force-complete requested (the policy switches to post-copy if allowed, else pauses)")
            else:
                done.append(await self._force_complete(uuid))
        max_downtime, bandwidth = await self.hypervisor.migration_limits(uuid)
        text = "; ".join(done) or "nothing asked"
        read = f"libvirt reads max downtime {max_downtime} ms, bandwidth {bandwidth} MiB/s"
        log.info("tune of the migration of %s by %s: %s (%s)", name, by, text, read)
        return apb.TuneMigrationResponse(max_downtime_ms=max_downtime, bandwidth_mibps=bandwidth, done=text)

    async def _force_complete(self, uuid: str) -> str:
        """No driver here (an agent restarted mid-migration): post-copy if the job allows it,
        else pause the guest."""
        try:
            await self.hypervisor.start_postcopy(uuid)
            return "switched to post-copy"
        except FerryError as exc:
            log.info("force-complete of %s: no post-copy (%s): pausing the guest", uuid, exc.reason)
        await self.hypervisor.suspend(uuid)
        return "paused the guest to finish (post-copy not allowed)"

    @rpc_method
    async def MeasureGuest(self, request: apb.MeasureGuestRequest, context: Context) -> tpb.GuestLoad:
        """The guest's dirty rate over each period and its non-zero memory (see GuestLoad)."""
        name = _domain_ref(request.domain)
        periods = [
            int(p) for p in validate.items(request.periods_s, "periods_s", limit=MAX_DIRTY_RATE_PERIODS)
        ] or list(DIRTY_RATE_PERIODS_S)
        if any(not 1 <= p <= MAX_DIRTY_RATE_PERIOD_S for p in periods):
            raise InvalidArgument(
                f"dirty-rate periods {periods} out of range",
                reason="BAD_PERIOD",
                hint=f"give periods of 1 to {MAX_DIRTY_RATE_PERIOD_S} s",
            )
        domain = await self.inventory.domain(name)
        load = GuestLoad(memory_bytes=domain.memory_bytes)
        if not domain.state.is_active:
            return convert.guest_load_to_pb(replace(load, error=f"{domain.name} is not running"))
        samples: list[tuple[float, float]] = []
        error = ""
        for period in periods:
            try:
                samples.append((float(period), await self.hypervisor.dirty_rate(domain.uuid, period)))
            except FailedPrecondition as exc:
                error = exc.message
                break
        resident = await self.hypervisor.guest_ram_resident(domain.uuid)
        if not resident:  # no smaps: the process's resident memory less QEMU's own
            rss = await self.hypervisor.memory_rss(domain.uuid)
            overhead = QEMU_OVERHEAD.get(domain.os_type, QEMU_OVERHEAD["kvm"])
            resident = resident_estimate(rss, domain.memory_bytes, overhead)
        load = replace(load, samples=tuple(samples), resident_bytes=resident, error=error)
        return convert.guest_load_to_pb(load)

    @rpc_method
    async def GetJob(self, request: apb.GetJobRequest, context: Context) -> apb.GetJobResponse:
        domain = _domain_ref(request.domain)
        self.fence.observe(_term(request.leader_term))
        if request.completed:
            return convert.completed_job_response_to_pb(await self.hypervisor.job_stats(domain, completed=True))
        stats = await self.hypervisor.job_stats(domain)
        if stats.active and stats.disk_total and not stats.memory_total:  # mirroring: memory is all to send
            stats = memory_pending(stats, (await self.hypervisor.get_domain(domain)).memory_bytes)
        return convert.job_to_pb(MigrationProgress(phase_of(stats), stats))

    @rpc_method
    async def ProbeTarget(self, request: apb.ProbeTargetRequest, context: Context) -> apb.ProbeTargetResponse:
        """Problems reaching the target are the answer, not an error of the call."""
        uri = _required(request.target_uri, "target_uri")
        address = validate.text(request.migration_address, "migration_address")
        try:
            latency_ms = await self.hypervisor.probe_peer(uri, migration_address=address)
        except FerryError as err:
            log.info("probe of %s from %s: %s: %s", uri, self.prepare.host_name, err.reason, clip(err))
            return apb.ProbeTargetResponse(problems=[convert.problem_to_pb(Problem.of(err))])
        return apb.ProbeTargetResponse(latency_ms=latency_ms)

    @rpc_method
    async def RemoveSourceDisks(
        self, request: apb.RemoveSourceDisksRequest, context: Context
    ) -> apb.RemoveSourceDisksResponse:
        domain_uuid = _uuid(request.domain_uuid, "domain_uuid")
        paths = _paths(request.paths, "paths")
        await self.fence.admit(_term(request.leader_term), "RemoveSourceDisks")
        done = await self.source_disks.remove(domain_uuid, paths, migration_id=request.migration_id)
        return apb.RemoveSourceDisksResponse(removed=done.removed, already_gone=done.already_gone)

    @rpc_method
    async def MarkSharedStorage(
        self, request: apb.MarkSharedStorageRequest, context: Context
    ) -> apb.MarkSharedStorageResponse:
        """Directories that get no probe are the answer (problems), not an error of the call."""
        paths = _paths(request.disk_paths, "disk_paths")
        token = check_token(request.token)
        written, problems = await asyncio.to_thread(self.shared_probes.place, paths, token)
        return apb.MarkSharedStorageResponse(probes=written, problems=[convert.problem_to_pb(p) for p in problems])

    @rpc_method
    async def UnmarkSharedStorage(
        self, request: apb.UnmarkSharedStorageRequest, context: Context
    ) -> apb.UnmarkSharedStorageResponse:
        probes = _paths(request.probes, "probes")
        removed = await asyncio.to_thread(self.shared_probes.remove, probes)
        return apb.UnmarkSharedStorageResponse(removed=removed)
