"""The coordinator's gRPC servicer: the fleet migration API (proto/ferry/v1/coordinator.proto).

Thin: request -> model (``coordinator/convert.py``) -> store / fleet view -> protobuf. Every
replica serves it: reads come straight from the store, submissions and cancel requests are
compare-and-set writes to it; only the leader's engine acts on the records.

Submission (idempotent, one active migration per VM), in store writes:

1. ``idempotency/<key>`` exists: return that migration unchanged (whatever it is now).
2. Validate against the fleet view: target known, VM found, not already on the target.
3. create ``idempotency/<key>`` -> the new id (losing that race: return the winner's migration);
4. create ``vm-active/<vm_uuid>`` -> the new id; when it names a migration that is not final:
   FAILED_PRECONDITION ``VM_BUSY`` naming it (and our idempotency key is released again); a key
   naming a final or a missing record is stale and taken over by compare-and-set;
5. create ``migrations/<id>``: a Pending record (``record.new_migration``).

A crash between the steps leaves keys naming a record that does not exist; readers wait a moment
for it (another submission may be between steps 3 and 5) and then treat such a key as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import grpc

from ferry import convert as fconvert
from ferry import keys
from ferry.diskplan import plan_disks
from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument, NotFound
from ferry.model import DomainInfo, HostMapping, MigrationOptions, Problem, StorageMode
from ferry.rpc import rpc_method
from ferry.store import Conflict, EventKind, Resync, Store
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb

from . import convert
from .checks import effective_storage
from .config import HostDecl, derive_mapping
from .fleet import Fleet
from .phases import Timeouts
from .preflight import preflight
from .record import MigrationRecord, decode, encode, new_migration, note

log = logging.getLogger(__name__)

SERVICE_NAME = cpb.DESCRIPTOR.services_by_name["Coordinator"].full_name
Clock = Callable[[], datetime]
IdFactory = Callable[[], str]

# How long a key may name a record that is not there yet: a submission between its writes, each
# of which the etcd adapter may retry for its timeout (5 s). Longer: a crashed submission's key.
IN_FLIGHT_WAIT_S = 20.0
_IN_FLIGHT_POLL_S = 0.05
MAX_IDEMPOTENCY_KEY = 200
# ListVMs / ListHosts are operators' reads: inventories at most this old (a scheduler uses the TTL)
READ_MAX_AGE_S = 1.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


def new_migration_id() -> str:
    """A short random id, e.g. ``m-3f2a9c41d07b``."""
    return f"m-{uuid.uuid4().hex[:12]}"


def _required(value: str, field: str, example: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required", reason="MISSING_FIELD", hint=f"set {field}, e.g. {example}")
    return value


@dataclass(frozen=True)
class _Plan:
    """A request resolved against the fleet view: where the VM is and how it would move."""

    source: str
    domain: DomainInfo
    options: MigrationOptions  # storage resolved (auto -> the effective mode)
    mapping: HostMapping  # derived from [hosts.*] + the request's overrides


class CoordinatorServicer(cgrpc.CoordinatorServicer):
    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        *,
        hosts: Mapping[str, HostDecl] | None = None,
        timeouts: Timeouts = Timeouts(),
        clock: Clock = _utc_now,
        new_id: IdFactory = new_migration_id,
        in_flight_wait_s: float = IN_FLIGHT_WAIT_S,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.hosts = dict(hosts or {})
        self.timeouts = timeouts
        self._clock = clock
        self._new_id = new_id
        self.in_flight_wait_s = in_flight_wait_s

    # ------------------------------------------------------------------ submit

    @rpc_method
    async def SubmitMigration(
        self, request: cpb.SubmitMigrationRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Migration:
        vm = _required(request.vm, "vm", '"web-1" (a name or UUID, see `ferry vms`)')
        target = _required(request.target_host, "target_host", '"host2" (see `ferry hosts`)')
        key = request.idempotency_key
        if len(key) > MAX_IDEMPOTENCY_KEY or "/" in key:
            raise InvalidArgument(
                f"idempotency key {key[:40]!r}... is not usable",
                reason="BAD_IDEMPOTENCY_KEY",
                hint=f"use at most {MAX_IDEMPOTENCY_KEY} characters without '/' (a UUID is fine)",
            )
        if key:
            earlier = await self._by_idempotency_key(key)
            if earlier is not None:
                return convert.migration_to_pb(earlier)
        plan = await self._plan(vm, target, request.options, request.mapping)
        copied = plan_disks(plan.domain.disks, plan.options.storage, plan.options.migrate_disks, plan.mapping)
        migration_id = self._new_id()
        record = new_migration(
            id=migration_id,
            vm=plan.domain.name,
            vm_uuid=plan.domain.uuid,
            source_host=plan.source,
            target_host=target,
            now=self._clock(),
            timeouts=self.timeouts,
            options=plan.options,
            mapping=plan.mapping,
            priority=request.priority,
            idempotency_key=key,
            memory_bytes=plan.domain.memory_bytes,
            disk_bytes=sum(p.allocation or p.virtual_size for p in copied if p.copy),
        )
        return convert.migration_to_pb(await self._create(record))

    async def _create(self, record: MigrationRecord) -> MigrationRecord:
        key_revision = None
        if record.idempotency_key:
            try:
                key_revision = await self.store.create(
                    keys.idempotency_key(record.idempotency_key), keys.encode_id(record.id)
                )
            except AlreadyExists:
                earlier = await self._by_idempotency_key(record.idempotency_key)
                if earlier is not None:
                    return earlier
                return await self._create(record)  # the other submission gave up: try again
        try:
            vm_revision = await self._claim_vm(record)
            try:
                revision = await self.store.create(keys.migration_key(record.id), encode(record))
            except BaseException:
                with contextlib.suppress(FerryError):
                    await self.store.delete(keys.vm_active_key(record.vm_uuid), expected_mod_revision=vm_revision)
                raise
        except BaseException:
            if key_revision is not None:
                with contextlib.suppress(FerryError):
                    await self.store.delete(
                        keys.idempotency_key(record.idempotency_key), expected_mod_revision=key_revision
                    )
            raise
        log.info(
            "submitted %s: %s %s -> %s (storage %s)",
            record.id,
            record.vm,
            record.source_host,
            record.target_host,
            record.options.storage.value,
        )
        return replace(record, revision=revision)

    async def _claim_vm(self, record: MigrationRecord) -> int:
        """Make ``vm-active/<uuid>`` name our record; VM_BUSY when another migration is not final."""
        key = keys.vm_active_key(record.vm_uuid)
        while True:
            try:
                return await self.store.create(key, keys.encode_id(record.id))
            except AlreadyExists:
                pass
            entry = await self.store.get(key)
            if entry is None:
                continue
            other_id = keys.decode_id(entry.value)
            other = await self._wait_for_record(other_id)
            if other is not None and not other.phase.is_final:
                raise FailedPrecondition(
                    f"{record.vm} already has migration {other_id} ({convert.phase_label(other.phase)}, "
                    f"{other.source_host} -> {other.target_host})",
                    reason="VM_BUSY",
                    hint=f"wait for it (ferry migrations watch {other_id}) or cancel it "
                    f"(ferry migrations cancel {other_id})",
                )
            try:
                return await self.store.update(key, keys.encode_id(record.id), entry.mod_revision)
            except Conflict:
                continue

    async def _by_idempotency_key(self, key: str) -> MigrationRecord | None:
        """The migration submitted with ``key``; None when there is none (or only a stale key)."""
        entry = await self.store.get(keys.idempotency_key(key))
        if entry is None:
            return None
        record = await self._wait_for_record(keys.decode_id(entry.value))
        if record is None:
            log.warning(
                "idempotency key %r names migration %s, which does not exist; taking the key over",
                key,
                keys.decode_id(entry.value),
            )
            with contextlib.suppress(FerryError):
                await self.store.delete(keys.idempotency_key(key), expected_mod_revision=entry.mod_revision)
        return record

    async def _wait_for_record(self, migration_id: str) -> MigrationRecord | None:
        """The record, waiting up to ``in_flight_wait_s`` for a submission still between its writes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.in_flight_wait_s
        while True:
            record = await self._get(migration_id)
            if record is not None or loop.time() >= deadline:
                return record
            await asyncio.sleep(_IN_FLIGHT_POLL_S)

    async def _plan(self, vm: str, target: str, options_pb: tpb.MigrationOptions, mapping_pb: tpb.HostMapping) -> _Plan:
        """Resolve a submission against the fleet (inventories asked now); raises the first problem."""
        located = await self.fleet.locate_vm(vm, fresh=True)
        if self.fleet.host(target) is None:
            raise NotFound(
                f"no host named {target!r} is registered",
                reason="TARGET_UNKNOWN",
                hint="check the name with `ferry hosts`; its agent must be running",
            )
        if located is None:
            raise NotFound(
                f"no host reports a VM named {vm!r}", reason="VM_UNKNOWN", hint="check the name with `ferry vms`"
            )
        source, domain = located
        if source == target:
            raise FailedPrecondition(
                f"{domain.name} already runs on {target}", reason="SAME_HOST", hint="pick another target host"
            )
        options, explicit = convert.options_from_request(options_pb)
        storage = effective_storage(domain, options, explicit)
        overrides = fconvert.mapping_from_pb(mapping_pb)
        mapping = derive_mapping(self.hosts.get(source), self.hosts.get(target), overrides)
        return _Plan(source, domain, replace(options, storage=storage), mapping)

    # ------------------------------------------------------------------ migrations

    async def _get(self, migration_id: str) -> MigrationRecord | None:
        if not migration_id or "/" in migration_id:
            return None
        entry = await self.store.get(keys.migration_key(migration_id))
        return None if entry is None else decode(entry.value, entry.mod_revision)

    async def _must_get(self, migration_id: str) -> MigrationRecord:
        _required(migration_id, "id", '"m-3f2a9c41d07b" (see `ferry migrations`)')
        record = await self._get(migration_id)
        if record is None:
            raise NotFound(
                f"no migration {migration_id!r}",
                reason="MIGRATION_UNKNOWN",
                hint="list migrations with `ferry migrations`",
            )
        return record

    async def _records(self) -> list[MigrationRecord]:
        entries, _ = await self.store.list(keys.MIGRATIONS)
        out = []
        for e in entries:
            try:
                out.append(decode(e.value, e.mod_revision))
            except FerryError as exc:
                log.warning("skipping unreadable record %s: %s: %s", e.key, exc.reason, exc)
        return out

    @rpc_method
    async def GetMigration(self, request: cpb.GetMigrationRequest, context: grpc.aio.ServicerContext) -> cpb.Migration:
        return convert.migration_to_pb(await self._must_get(request.id))

    @rpc_method
    async def ListMigrations(
        self, request: cpb.ListMigrationsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListMigrationsResponse:
        phases = set()
        for value in request.phases:
            phase = convert.phase_from_pb(value)
            if phase is None:
                raise InvalidArgument(
                    f"unknown phase number {value}",
                    reason="BAD_PHASE",
                    hint="use the ferry.v1.Phase values (Pending ... RolledBack)",
                )
            phases.add(phase)
        records = [
            r
            for r in await self._records()
            if (not phases or r.phase in phases)
            and (not request.host or request.host in (r.source_host, r.target_host))
            and (not request.vm or request.vm in (r.vm, r.vm_uuid))
        ]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        if request.limit:
            records = records[: request.limit]
        return cpb.ListMigrationsResponse(migrations=[convert.migration_to_pb(r) for r in records])

    @rpc_method
    async def WatchMigration(
        self, request: cpb.WatchMigrationRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cpb.Migration]:
        record = await self._must_get(request.id)
        yield convert.migration_to_pb(record)
        if record.phase.is_final:
            return
        key = keys.migration_key(record.id)
        watch = self.store.watch(key, record.revision + 1)
        async with contextlib.aclosing(watch):
            async for item in watch:
                if isinstance(item, Resync):
                    entry = next((e for e in item.entries if e.key == key), None)
                    if entry is None or entry.mod_revision == record.revision:
                        if entry is None:
                            raise NotFound(
                                f"migration {record.id} was deleted",
                                reason="MIGRATION_DELETED",
                                hint="list migrations with `ferry migrations`",
                            )
                        continue
                    record = decode(entry.value, entry.mod_revision)
                elif item.entry.key != key:
                    continue  # a key that only starts with ours
                elif item.kind is EventKind.DELETE:
                    raise NotFound(
                        f"migration {record.id} was deleted",
                        reason="MIGRATION_DELETED",
                        hint="list migrations with `ferry migrations`",
                    )
                else:
                    record = decode(item.entry.value, item.entry.mod_revision)
                yield convert.migration_to_pb(record)
                if record.phase.is_final:
                    return

    @rpc_method
    async def CancelMigration(
        self, request: cpb.CancelMigrationRequest, context: grpc.aio.ServicerContext
    ) -> cpb.Migration:
        while True:
            record = await self._must_get(request.id)
            if record.phase.is_final:
                raise FailedPrecondition(
                    f"migration {record.id} already ended ({convert.phase_label(record.phase)})",
                    reason="ALREADY_FINAL",
                    hint="nothing to cancel; see `ferry migrations show " + record.id + "`",
                )
            if record.cancel_requested:
                return convert.migration_to_pb(record)
            asked = replace(note(record, self._clock(), "cancel requested"), cancel_requested=True)
            try:
                revision = await self.store.update(keys.migration_key(record.id), encode(asked), record.revision)
            except Conflict:
                continue  # the engine moved it meanwhile: decide again on the new record
            log.info("cancel requested for %s (%s)", record.id, record.phase.name)
            return convert.migration_to_pb(replace(asked, revision=revision))

    # ------------------------------------------------------------------ hosts and VMs

    async def _active_by_vm(self) -> tuple[list[MigrationRecord], dict[str, str]]:
        active = [r for r in await self._records() if not r.phase.is_final]
        return active, {r.vm_uuid: r.id for r in sorted(active, key=lambda r: r.created_at)}

    @rpc_method
    async def ListHosts(
        self, request: cpb.ListHostsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListHostsResponse:
        await self.fleet.refresh(max_age_s=READ_MAX_AGE_S)
        active, _ = await self._active_by_vm()
        return cpb.ListHostsResponse(
            hosts=[
                convert.host_status_to_pb(
                    name=h.name,
                    address=h.address,
                    available=h.available,
                    facts=h.facts,
                    domains=len(h.domains),
                    migrations_out=sum(r.source_host == h.name for r in active),
                    migrations_in=sum(r.target_host == h.name for r in active),
                    last_seen=h.last_seen,
                )
                for h in self.fleet.hosts()
            ]
        )

    @rpc_method
    async def ListVMs(self, request: cpb.ListVMsRequest, context: grpc.aio.ServicerContext) -> cpb.ListVMsResponse:
        if request.host and self.fleet.host(request.host) is None:
            raise NotFound(
                f"no host named {request.host!r} is registered",
                reason="HOST_UNKNOWN",
                hint="check the name with `ferry hosts`",
            )
        records = await self._records()
        # an operator's read: inventories at most a second old (not the scheduler-facing TTL), and
        # a host whose inventory predates a migration's last change to it is asked again, so a VM
        # shows where it runs now, not where it ran a few seconds ago
        moved = {
            name
            for r in records
            for name in (r.source_host, r.target_host)
            if (h := self.fleet.host(name)) is not None and (h.last_seen is None or r.updated_at > h.last_seen)
        }
        wanted = [request.host] if request.host else [h.name for h in self.fleet.hosts()]
        await asyncio.gather(
            self.fleet.refresh([n for n in wanted if n not in moved], max_age_s=READ_MAX_AGE_S),
            self.fleet.refresh([n for n in wanted if n in moved], force=True),
        )
        by_vm = {r.vm_uuid: r.id for r in sorted(records, key=lambda r: r.created_at) if not r.phase.is_final}
        return cpb.ListVMsResponse(
            vms=[
                convert.vm_to_pb(d, h.name, by_vm.get(d.uuid, ""))
                for h in self.fleet.hosts()
                if not request.host or h.name == request.host
                for d in sorted(h.domains, key=lambda d: d.name)
            ]
        )

    # ------------------------------------------------------------------ preflight

    @rpc_method
    async def Preflight(
        self, request: cpb.PreflightRequest, context: grpc.aio.ServicerContext
    ) -> cpb.PreflightResponse:
        vm = _required(request.vm, "vm", '"web-1" (a name or UUID, see `ferry vms`)')
        target = _required(request.target_host, "target_host", '"host2" (see `ferry hosts`)')
        options, explicit = convert.options_from_request(request.options)
        overrides = fconvert.mapping_from_pb(request.mapping)
        located = await self.fleet.locate_vm(vm, fresh=True)
        source = located[0] if located is not None else None
        try:
            mapping = derive_mapping(self.hosts.get(source or ""), self.hosts.get(target), overrides)
        except FerryError as exc:
            return cpb.PreflightResponse(
                ok=False,
                source_host=source or "",
                blockers=[fconvert.problem_to_pb(Problem.of(exc))],
            )
        report = await preflight(
            self.fleet, vm, target, options, mapping, storage=options.storage if explicit else None, source_host=source
        )
        blockers = [self._target_down(b, target) for b in report.blockers]
        warnings = []
        if report.domain is not None and not explicit and report.storage is not None:
            why = "a writable disk is local" if report.storage is StorageMode.COPY_ALL else "no writable local disk"
            warnings.append(f"storage mode {report.storage.value}, decided from the inventory ({why})")
        return cpb.PreflightResponse(
            ok=not blockers,
            blockers=[fconvert.problem_to_pb(b) for b in dict.fromkeys(blockers)],
            source_host=report.source_host,
            disks=[fconvert.disk_plan_to_pb(d) for d in report.disks],
            warnings=warnings,
        )

    def _target_down(self, blocker: Problem, target: str) -> Problem:
        """The shared preflight sees only available hosts: a target the fleet knows is down, not unknown."""
        view = self.fleet.host_view(target)
        if blocker.reason != "TARGET_UNKNOWN" or view is None:
            return blocker
        return Problem(
            "TARGET_DOWN",
            f"the agent on {target} is not available (not registered or not answering)",
            f"start ferry-agent on {target} or pick another target",
        )


def register(servicer: CoordinatorServicer) -> Callable[[grpc.aio.Server], list[str]]:
    """For ``ferry.rpc.create_server``: add the servicer, name its service."""

    def add(server: grpc.aio.Server) -> list[str]:
        cgrpc.add_CoordinatorServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return add
