"""The coordinator's gRPC servicer: the fleet migration API (proto/ferry/v1/coordinator.proto).

Thin: request -> model (``coordinator/convert.py``, ``ferry/convert.py``) -> the protocol object
or a store / fleet view read -> protobuf. Every replica serves it: reads of records come straight
from the store; submitting and cancelling are ``submission.Submissions`` (compare-and-set writes
to the store, the protocol is described there); only the leader's engine acts on the records.
Cordons are ``hoststate.py``, placement ``placer.py``; the drains' RPCs and the fleet-wide watch
are in ``drain_api.py`` (a mixin of this class).

Every field is checked at the edge (``ferry.validate`` and the converters) before anything acts
on it: INVALID_ARGUMENT with a reason code. WatchMigration streams share one store watch
(``watches.MigrationWatches``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace

import grpc

from ferry import convert as fconvert
from ferry import keys, validate
from ferry.errors import FailedPrecondition, FerryError, InvalidArgument, NotFound, clip
from ferry.model import Problem, StorageMode
from ferry.rpc import Context, rpc_method
from ferry.store import EventKind, Resync, Store
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc

from . import convert, hoststate
from .bandwidth import alone
from .checks import host_down, shared_host_uuids, tcg_migration_warnings
from .config import HostDecl, derive_mapping
from .drain_api import MAX_REASON, DrainMethods
from .drains import Drains, active_drain_of
from .fleet import Fleet
from .live import LiveOps, LiveRequest
from .paging import paginate
from .placement import Ranking
from .placer import Placer
from .policies import copy_bytes, refusal
from .preflight import predict_for, preflight
from .record import MigrationRecord, decode
from .replica import ReplicaViews
from .sharing import planned_use
from .submission import Submissions, SubmitRequest, check_overrides, must_read_migration
from .watches import OVERFLOW, MigrationWatches

log = logging.getLogger(__name__)

SERVICE_NAME = cpb.DESCRIPTOR.services_by_name["Coordinator"].full_name
# ListVMs / ListHosts are operators' reads: inventories at most this old (a scheduler uses the TTL)
READ_MAX_AGE_S = 1.0


def _required(value: str, field: str, example: str) -> str:
    return validate.text(value, field, required=True, example=example)


def _required_id(migration_id: str) -> str:
    return validate.ident(migration_id, "id", required=True, example='"m-3f2a9c41d07b" (see `ferry migrations`)')


def _priority(value: int) -> int:
    return validate.number(value, "priority", lo=-validate.MAX_PRIORITY, hi=validate.MAX_PRIORITY)


USER_METADATA = "x-ferry-user"  # the name the CLI says it runs as (a claim, not an identity)


def requested_by(context: Context) -> str:
    """Who asks, as this server sees it: the peer's certificate identity when mutual TLS names
    it, else its address; with the user name the client claims (``x-ferry-user``) in front."""
    peer = context.peer() or "unknown peer"
    auth = context.auth_context()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names = list(auth.get(key, ())) if auth else []
        if names:
            peer = names[0].decode(errors="replace")
            break
    claimed = next((str(v) for k, v in context.invocation_metadata() or () if k == USER_METADATA), "")
    # sent on to the agent (TuneMigrationRequest.requested_by): printable and within its limits
    claimed, peer = (re.sub(r"[\x00-\x1f\x7f]", "?", clip(s, 60)) for s in (claimed, peer))
    return f"{claimed} via {peer}" if claimed else peer


class CoordinatorServicer(DrainMethods, cgrpc.CoordinatorServicer):
    """The API over ``store`` and ``fleet``; writes go through ``submissions`` and ``drains``.

    ``hosts``: the ``[hosts.*]`` declarations (Preflight derives the mapping from them);
    ``views``: the replica's views of migrations, drains and cordons (``replica.py``).
    """

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        submissions: Submissions,
        *,
        hosts: Mapping[str, HostDecl] | None = None,
        views: ReplicaViews,
        placer: Placer,
        drains: Drains,
        live: LiveOps | None = None,
        watches: MigrationWatches | None = None,
        slots: tuple[int, int] = (1, 1),
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.submissions = submissions
        self.hosts = dict(hosts or {})
        self.views = views
        self.placer = placer
        self.drains = drains
        # (per_host_outbound, per_host_inbound): a drain's slots, a disk copy's fixed share (ListHosts)
        self.slots = slots
        self.outbound_limit = slots[0]
        self._decoded: dict[str, MigrationRecord] = {}  # key -> record at its mod revision (list calls)
        self.live = live or LiveOps(store, fleet, submissions.clock)
        self.watches = watches or MigrationWatches(store)

    # ------------------------------------------------------------------ submit

    @rpc_method
    async def SubmitMigration(self, request: cpb.SubmitMigrationRequest, context: Context) -> cpb.Migration:
        vm = _required(request.vm, "vm", '"web-1" (a name or UUID, see `ferry vms`)')
        options, explicit = convert.options_from_request(request.options)
        submitted = await self.submissions.submit(
            SubmitRequest(
                vm=vm,
                target_host=validate.text(request.target_host, "target_host"),  # none: placement picks one
                options=options,
                storage_explicit=explicit,
                mapping=fconvert.mapping_from_pb(request.mapping),
                priority=_priority(request.priority),
                idempotency_key=validate.text(request.idempotency_key, "idempotency_key"),
                policy=validate.text(request.policy, "policy"),
            )
        )
        return convert.migration_to_pb(submitted)

    # ------------------------------------------------------------------ migrations

    async def _must_get(self, migration_id: str) -> MigrationRecord:
        return await must_read_migration(self.store, _required_id(migration_id))

    async def _records(self) -> list[MigrationRecord]:
        """Every record, read from the store now (each value decoded once per revision)."""
        entries, _ = await self.store.list(keys.MIGRATIONS)
        out = []
        cache: dict[str, MigrationRecord] = {}
        for e in entries:
            known = self._decoded.get(e.key)
            if known is not None and known.revision == e.mod_revision:
                out.append(known)
                cache[e.key] = known
                continue
            try:
                record = decode(e.value, e.mod_revision)
            except FerryError as exc:
                log.warning("skipping unreadable record %s: %s: %s", e.key, exc.reason, exc)
                continue
            out.append(record)
            cache[e.key] = record
        self._decoded = cache
        return out

    @rpc_method
    async def GetMigration(self, request: cpb.GetMigrationRequest, context: Context) -> cpb.Migration:
        return convert.migration_to_pb(await self._must_get(request.id))

    @rpc_method
    async def ListMigrations(self, request: cpb.ListMigrationsRequest, context: Context) -> cpb.ListMigrationsResponse:
        validate.items(request.phases, "phases", limit=32)
        validate.text(request.host, "host")
        validate.text(request.vm, "vm")
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
        records.sort(key=_newest_first, reverse=True)
        if request.limit:
            records = records[: request.limit]
        page, token = paginate(records, _newest_first, request.page_size, request.page_token, descending=True)
        return cpb.ListMigrationsResponse(migrations=[convert.migration_to_pb(r) for r in page], next_page_token=token)

    @rpc_method
    async def WatchMigration(
        self, request: cpb.WatchMigrationRequest, context: Context
    ) -> AsyncIterator[cpb.Migration]:
        migration_id = _required_id(request.id)
        key = keys.migration_key(migration_id)
        # subscribe first, then read: no change between the read and the first event is lost
        async with self.watches.subscribe(key) as changes:
            record = await self._must_get(migration_id)
            yield convert.migration_to_pb(record)
            while not record.phase.is_final:
                item = await changes.next()
                if item == OVERFLOW:  # fell behind: what counts is the record now
                    newer = await self._must_get(migration_id)
                elif isinstance(item, Resync):
                    entry = next((e for e in item.entries if e.key == key), None)
                    if entry is None:
                        raise _deleted(record.id)
                    newer = decode(entry.value, entry.mod_revision)
                elif isinstance(item, str) or item.entry.mod_revision <= record.revision:
                    continue  # seen in the first read already
                elif item.kind is EventKind.DELETE:
                    raise _deleted(record.id)
                else:
                    newer = decode(item.entry.value, item.entry.mod_revision)
                if newer.revision == record.revision:
                    continue
                record = newer
                yield convert.migration_to_pb(record)

    @rpc_method
    async def CancelMigration(self, request: cpb.CancelMigrationRequest, context: Context) -> cpb.Migration:
        return convert.migration_to_pb(await self.submissions.cancel(_required_id(request.id)))

    # ------------------------------------------------------------------ hosts and VMs

    async def _active_by_vm(self) -> tuple[list[MigrationRecord], dict[str, str]]:
        active = [r for r in await self._records() if not r.phase.is_final]
        return active, {r.vm_uuid: r.id for r in sorted(active, key=lambda r: r.created_at)}

    def _host_status(
        self,
        name: str,
        active: list[MigrationRecord] | None = None,
        cordon: hoststate.HostCordon | None = None,
        used: dict[tuple[str, str], int] | None = None,
        twins: Mapping[str, list[str]] | None = None,
    ) -> cpb.HostStatus:
        """The host as ListHosts shows it; ``cordon``: its state just written (else the view's);
        ``used``: the bandwidth of the jobs through each host (else computed from ``active``);
        ``twins``: hosts that share a libvirt host UUID (else worked out from the fleet view)."""
        h = self.fleet.host(name)
        if active is None:
            active = [r for r in self.views.migrations.items.values() if not r.phase.is_final]
        if used is None:
            used = planned_use(active, self.submissions.budget, self.slots)
        if twins is None:
            twins = shared_host_uuids({x.name: x.facts.host_uuid for x in self.fleet.hosts() if x.facts is not None})
        return convert.host_status_to_pb(
            name=name,
            address=h.address if h else "",
            available=h.available if h else False,
            why_down=h.why_down if h else None,
            facts=h.facts if h else None,
            domains=len(h.domains) if h else 0,
            migrations_out=sum(r.source_host == name for r in active),
            migrations_in=sum(r.target_host == name for r in active),
            last_seen=h.last_seen if h else None,
            cordon=cordon if cordon is not None else self.views.cordons.items.get(name),
            bandwidth=(self.submissions.budget(name), used.get((name, "outbound"), 0), used.get((name, "inbound"), 0)),
            shares_host_uuid_with=twins.get(name, ()),
        )

    @rpc_method
    async def ListHosts(self, request: cpb.ListHostsRequest, context: Context) -> cpb.ListHostsResponse:
        names = [h.name for h in self.fleet.hosts()]
        page, token = paginate(names, lambda n: (n,), request.page_size, request.page_token)
        await self.fleet.refresh(page, max_age_s=READ_MAX_AGE_S)
        active, _ = await self._active_by_vm()
        used = planned_use(active, self.submissions.budget, self.slots)
        twins = shared_host_uuids({h.name: h.facts.host_uuid for h in self.fleet.hosts() if h.facts is not None})
        return cpb.ListHostsResponse(
            hosts=[self._host_status(n, active, used=used, twins=twins) for n in page], next_page_token=token
        )

    def _must_know(self, host: str) -> str:
        _required(host, "host", '"host1" (see `ferry hosts`)')
        if self.fleet.host(host) is None:
            raise NotFound(
                f"no host named {host!r} is known",
                reason="HOST_UNKNOWN",
                hint=self.fleet.host_hint(host, "check the name with `ferry hosts`"),
            )
        return host

    @rpc_method
    async def CordonHost(self, request: cpb.CordonHostRequest, context: Context) -> cpb.HostStatus:
        host = self._must_know(request.host)
        validate.text(request.reason, "reason", max_len=MAX_REASON)
        state, _ = await hoststate.cordon(self.store, host, request.reason, self.submissions.clock())
        return self._host_status(host, cordon=state)

    @rpc_method
    async def UncordonHost(self, request: cpb.UncordonHostRequest, context: Context) -> cpb.HostStatus:
        host = self._must_know(request.host)

        async def active(name: str) -> str:
            return await active_drain_of(self.store, name)

        state = await hoststate.uncordon(self.store, host, active_drain=active)
        return self._host_status(host, cordon=state)

    @rpc_method
    async def ForgetHost(self, request: cpb.ForgetHostRequest, context: Context) -> cpb.ForgetHostResponse:
        host = self._must_know(request.host)
        if host in self.hosts:
            raise FailedPrecondition(
                f"{host} is declared in the coordinators' config ([hosts.{host}])",
                reason="HOST_DECLARED",
                hint=f"remove [hosts.{host}] from every coordinator's config and restart them, then forget it",
            )
        if self.fleet.registration(host) is not None:
            raise FailedPrecondition(
                f"the agent on {host} is registered: the host is in service",
                reason="HOST_REGISTERED",
                hint=f"stop ferry-agent on {host} (its registration ends with its lease), then forget it; "
                f"to keep migrations away from a host in service, cordon it (ferry hosts cordon {host})",
            )
        busy = sorted(
            r.id for r in await self._records() if not r.phase.is_final and host in (r.source_host, r.target_host)
        )
        busy += sorted(
            d.id
            for d in self.views.drains.items.values()
            if not d.state.is_final and host in (d.host, *d.targets, *(i.target for i in d.items))
        )
        if busy:
            raise FailedPrecondition(
                f"{host} is part of what is under way: {', '.join(busy[:5])}{' ...' if len(busy) > 5 else ''}",
                reason="HOST_BUSY",
                hint="let them end or cancel them (ferry migrations cancel ID, ferry drains cancel ID), then forget it",
            )
        vms = await self.fleet.forget(host)
        await hoststate.uncordon(self.store, host)  # its cordon goes with it
        log.info("forgot host %s (it last reported %d VM(s): %s)", host, len(vms), ", ".join(vms) or "none")
        return cpb.ForgetHostResponse(host=host, vms=vms)

    @rpc_method
    async def ListVMs(self, request: cpb.ListVMsRequest, context: Context) -> cpb.ListVMsResponse:
        validate.text(request.host, "host")
        if request.host and self.fleet.host(request.host) is None:
            raise NotFound(
                f"no host named {clip(request.host)!r} is registered",
                reason="HOST_UNKNOWN",
                hint=self.fleet.host_hint(request.host, "check the name with `ferry hosts`"),
            )
        records = await self._records()
        # an operator's read: inventories at most a second old (not the scheduler-facing TTL), and
        # a host whose inventory predates a migration's last change to it is asked again, so a VM
        # shows where it runs now, not where it ran a few seconds ago
        moved = {
            name
            for r in records
            for name in (r.source_host, r.target_host)
            if (h := self.fleet.host(name)) is not None
            and (h.last_seen is None or (r.updated_at is not None and r.updated_at > h.last_seen))
        }
        wanted = [request.host] if request.host else [h.name for h in self.fleet.hosts()]
        await asyncio.gather(
            self.fleet.refresh([n for n in wanted if n not in moved], max_age_s=READ_MAX_AGE_S),
            self.fleet.refresh([n for n in wanted if n in moved], force=True),
        )
        by_vm = {r.vm_uuid: r.id for r in sorted(records, key=lambda r: r.created_at) if not r.phase.is_final}
        # a host that does not answer keeps its VMs in the list, as it last reported them, marked
        # unreachable: a dead host must not look like lost VMs (Ferry never restarts them elsewhere)
        vms = [
            (h, d)
            for h in self.fleet.hosts()
            if not request.host or h.name == request.host
            for d in sorted(h.domains, key=lambda d: d.name)
        ]
        page, token = paginate(
            vms, lambda hd: (hd[0].name, hd[1].name, hd[1].uuid), request.page_size, request.page_token
        )
        return cpb.ListVMsResponse(
            vms=[
                convert.vm_to_pb(d, h.name, by_vm.get(d.uuid, ""), unreachable=not h.available, last_seen=h.last_seen)
                for h, d in page
            ],
            next_page_token=token,
        )

    # ------------------------------------------------------------------ preflight

    async def _rank(
        self,
        vm: str,
        m_options: cpb.SubmitMigrationRequest | cpb.PreflightRequest | cpb.RankTargetsRequest,
        only: tuple[str, ...] = (),
    ) -> tuple[str, Ranking]:
        options, explicit = convert.options_from_request(m_options.options)
        located = await self.fleet.locate_vm(vm, fresh=True)
        if located is None:
            raise NotFound(
                f"no host reports a VM named {vm!r}",
                reason="VM_UNKNOWN",
                hint=self.fleet.vm_hint(vm, "check the name with `ferry vms`"),
            )
        source, domain = located
        await self.fleet.refresh()  # every inventory at most a TTL old (only the stale ones are asked)
        placed = self.placer.rank(
            domain,
            source,
            options,
            storage_explicit=explicit,
            now=self.submissions.clock(),
            overrides=fconvert.mapping_from_pb(m_options.mapping),
            only=only,
        )
        return source, placed.ranking

    @rpc_method
    async def RankTargets(self, request: cpb.RankTargetsRequest, context: Context) -> cpb.RankTargetsResponse:
        vm = _required(request.vm, "vm", '"web-1" (a name or UUID, see `ferry vms`)')
        only = tuple(validate.names(request.hosts, "hosts"))
        self.fleet.require_known(only, reason="TARGET_UNKNOWN")  # a typo would rank nothing, answered OK
        source, ranking = await self._rank(vm, request, only)
        return cpb.RankTargetsResponse(
            source_host=source,
            candidates=[convert.candidate_to_pb(c) for c in ranking.candidates],
            rejected=[convert.candidate_to_pb(c) for c in ranking.rejected],
        )

    @rpc_method
    async def Preflight(self, request: cpb.PreflightRequest, context: Context) -> cpb.PreflightResponse:
        vm = _required(request.vm, "vm", '"web-1" (a name or UUID, see `ferry vms`)')
        target = validate.text(request.target_host, "target_host")
        if not target:  # every host ranked
            return await self._preflight_ranked(vm, request)
        return await self._preflight(vm, target, request)

    async def _preflight_ranked(self, vm: str, request: cpb.PreflightRequest) -> cpb.PreflightResponse:
        """No target: every host ranked; the feasible ones checked in full, best first, until one
        passes (its report is the answer); a candidate the full check blocks joins the rejected."""
        source, ranking = await self._rank(vm, request)
        candidates = [convert.candidate_to_pb(c) for c in ranking.candidates]
        rejected = [convert.candidate_to_pb(c) for c in ranking.rejected]
        for c in list(candidates):
            resp = await self._preflight(vm, c.host, request)
            if resp.ok:
                resp.candidates.extend(candidates)
                resp.rejected.extend(rejected)
                return resp
            candidates.remove(c)
            rejected.append(cpb.HostCandidate(host=c.host, blockers=resp.blockers))
        nowhere = ranking.nowhere() if not ranking.candidates else None
        blockers = [fconvert.problem_to_pb(nowhere)] if nowhere is not None else []
        if not blockers:
            blockers = [
                fconvert.problem_to_pb(
                    Problem("NO_TARGET", f"no host passed the full preflight of {vm}", "see each host's blockers")
                )
            ]
        rejected.sort(key=lambda c: c.host)
        return cpb.PreflightResponse(ok=False, source_host=source, blockers=blockers, rejected=rejected)

    async def _preflight(self, vm: str, target: str, request: cpb.PreflightRequest) -> cpb.PreflightResponse:
        options, explicit = convert.options_from_request(request.options)
        overrides = fconvert.mapping_from_pb(request.mapping)
        policy_name = validate.text(request.policy, "policy")
        located = await self.fleet.locate_vm(vm, fresh=True)
        source = located[0] if located is not None else None
        try:
            target_state = self.fleet.host(target)
            check_overrides(overrides, target, target_state.facts if target_state is not None else None)
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
        blockers = [self._named(b, vm, target) for b in report.blockers]
        cordon = self.views.cordons.items.get(target)
        if cordon is not None and cordon.cordoned:
            blockers.insert(0, hoststate.cordon_problem(cordon))
        warnings = []
        if report.domain is not None and not explicit and report.storage is not None:
            why = "a writable disk is local" if report.storage is StorageMode.COPY_ALL else "no writable local disk"
            warnings.append(f"storage mode {report.storage.value}, decided from the inventory ({why})")
        response = cpb.PreflightResponse(source_host=report.source_host, warnings=warnings, target_host=target)
        if report.domain is not None:
            policy = self.submissions.choose_policy(policy_name, report.domain, options)
            response.policy.CopyFrom(fconvert.policy_to_pb(policy))
            if not options.offline and report.source_host:
                disk_bytes = copy_bytes(report.disks)
                prediction = await predict_for(
                    self.fleet,
                    report.source_host,
                    report.domain,
                    policy,
                    disk_bytes=disk_bytes,
                    config=self.submissions.prediction,
                    load=await self.submissions.measure(report.source_host, report.domain),
                    budget_mibps=alone(self.submissions.budget, report.source_host, target),
                )
                response.prediction.CopyFrom(fconvert.prediction_to_pb(prediction))
                refused = refusal(policy, prediction)
                if refused is not None:
                    blockers.append(Problem.of(refused))
                warnings.extend(tcg_migration_warnings(report.domain, self.fleet.host_view(report.source_host)))
        response.ok = not blockers
        response.blockers.extend(fconvert.problem_to_pb(b) for b in dict.fromkeys(blockers))
        response.disks.extend(fconvert.disk_plan_to_pb(d) for d in report.disks)
        response.warnings[:] = warnings
        return response

    # ------------------------------------------------------------------ policies and live operations

    @rpc_method
    async def ListPolicies(self, request: cpb.ListPoliciesRequest, context: Context) -> cpb.ListPoliciesResponse:
        s = self.submissions
        return cpb.ListPoliciesResponse(
            policies=[fconvert.policy_to_pb(p) for _, p in sorted(s.policies.items())],
            selectors=[convert.selector_to_pb(sel) for sel in s.selectors],
        )

    @rpc_method
    async def ControlMigration(
        self, request: cpb.ControlMigrationRequest, context: Context
    ) -> cpb.ControlMigrationResponse:
        migration_id = _required_id(request.id)
        max_downtime_ms, bandwidth_mibps = validate.live_tuning(
            request.max_downtime_ms if request.HasField("max_downtime_ms") else None,
            request.bandwidth_mibps if request.HasField("bandwidth_mibps") else None,
        )
        req = LiveRequest(
            max_downtime_ms=max_downtime_ms,
            bandwidth_mibps=bandwidth_mibps,
            start_postcopy=request.start_postcopy,
            force_complete=request.force_complete,
        )
        record, result = await self.live.control(migration_id, req, requested_by=requested_by(context))
        return cpb.ControlMigrationResponse(
            migration=convert.migration_to_pb(record),
            max_downtime_ms=result.max_downtime_ms,
            bandwidth_mibps=result.bandwidth_mibps,
            done=result.done,
        )

    def _named(self, blocker: Problem, vm: str, target: str) -> Problem:
        """The shared preflight sees only available hosts: a target the fleet knows is down, not
        unknown; one it does not know may be a name the fleet knows otherwise (did you mean)."""
        if blocker.reason == "VM_UNKNOWN":
            return replace(blocker, hint=self.fleet.vm_hint(vm, blocker.hint))
        if blocker.reason != "TARGET_UNKNOWN":
            return blocker
        view = self.fleet.host_view(target)
        if view is None:
            return replace(blocker, hint=self.fleet.host_hint(target, blocker.hint))
        return host_down(target, self.fleet.why_down(target))


def _newest_first(r: MigrationRecord) -> tuple[str, ...]:
    return (r.created_at.isoformat(), r.id)


def _deleted(migration_id: str) -> NotFound:
    return NotFound(
        f"migration {migration_id} was deleted",
        reason="MIGRATION_DELETED",
        hint="list migrations with `ferry migrations`",
    )


def register(servicer: CoordinatorServicer) -> Callable[[grpc.aio.Server], list[str]]:
    """For ``ferry.rpc.create_server``: add the servicer, name its service."""

    def add(server: grpc.aio.Server) -> list[str]:
        cgrpc.add_CoordinatorServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return add
