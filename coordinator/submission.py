"""The submit and cancel protocols of the migration API, over the store and the fleet view (no gRPC).

The servicer (``service.py``) converts a request to a :class:`SubmitRequest` and calls
:meth:`Submissions.submit`; every replica runs it, so every step is a compare-and-set write to
the store (``ferry/keys.py``) and the leader's engine picks the record up from there.

Submission (idempotent, one active migration per VM), in store writes:

1. ``idempotency/<key>`` exists: return that migration unchanged (whatever it is now) -- when
   the request is the same (VM, target when one is named, options, priority, mapping overrides, a
   named policy); a key reused with a different body is refused INVALID_ARGUMENT
   ``IDEMPOTENCY_KEY_REUSED``.
2. Validate against the fleet view: VM found; no target given: the best feasible host of the
   cached inventories (``placer.py``), refused NO_TARGET with every host's blockers when there
   is none; target known, not cordoned (TARGET_CORDONED), not the VM's own host; the request's
   mapping overrides land inside the target's image directories and name bridges and networks
   it has (``check_overrides``).
3. create ``idempotency/<key>`` -> the new id (losing that race: return the winner's migration);
   Then the convergence policy is chosen (``policies.choose_policy``: the request's name, the
   config's selector rules, or the flags) and the migration is predicted from the guest's
   measurement: taken now with ``[prediction] on_submit``, else one a Preflight made in the last
   ``reuse_s`` (none: the engine's Preflight phase measures and predicts); a policy that refuses
   what it cannot finish refuses here (WILL_NOT_CONVERGE), writing nothing.
4. create ``vm-active/<vm_uuid>`` -> the new id; when it names a migration that is not final:
   FAILED_PRECONDITION ``VM_BUSY`` naming it (and our idempotency key is released again); a key
   naming a final or a missing record is stale and taken over by compare-and-set;
5. create ``migrations/<id>``: a Pending record (``record.new_migration``). Steps 3 to 5 are one
   store write (``Store.commit``) when neither the idempotency key nor the VM's ``vm-active`` key
   exists (the usual case); else they run one by one.

A crash between the steps leaves keys naming a record that does not exist; readers wait a moment
for it (another submission may be between steps 3 and 5) and then treat such a key as stale.

Cancel: mark the record ``cancel_requested`` (compare-and-set on its revision, deciding again
when the engine moved it meanwhile); the engine does the rest. Nothing here acts on a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from ferry import keys
from ferry.convergence import ConvergencePolicy
from ferry.diskplan import plan_disks
from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument, NotFound, clip
from ferry.model import DomainInfo, GuestLoad, HostFacts, HostMapping, MigrationOptions
from ferry.paths import path_problem, syntax_problem
from ferry.prediction import Prediction
from ferry.store import Conflict, Put, Store

from .bandwidth import alone, no_budget
from .checks import effective_storage, vm_blockers
from .config import HostDecl, derive_mapping
from .convert import phase_word
from .fleet import Fleet
from .hoststate import HostCordon, cordoned_error
from .phases import Timeouts
from .placer import Placer
from .policies import PolicySelector, PredictionConfig, choose_policy, copy_bytes, refusal
from .preflight import measure, predict_for
from .record import MigrationRecord, decode, encode, new_migration, note, too_late_to_cancel

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
IdFactory = Callable[[], str]

# How long a key may name a record that is not there yet: a submission between its writes, each
# of which the etcd adapter may retry for its timeout (5 s). Longer: a crashed submission's key.
IN_FLIGHT_WAIT_S = 20.0
_IN_FLIGHT_POLL_S = 0.05
MAX_IDEMPOTENCY_KEY = 200


def _utc_now() -> datetime:
    return datetime.now(UTC)


def new_migration_id() -> str:
    """A short random id, e.g. ``m-3f2a9c41d07b``."""
    return f"m-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class SubmitRequest:
    """A SubmitMigration request in the model's words (``vm`` and ``target_host`` are non-empty)."""

    vm: str  # a name or a UUID
    target_host: str = ""  # "" = the best feasible host (placement)
    options: MigrationOptions = MigrationOptions()
    storage_explicit: bool = False  # False: "auto", decided from the inventory (``effective_storage``)
    mapping: HostMapping = field(default_factory=HostMapping)  # overrides of the derived mapping
    priority: int = 0
    idempotency_key: str = ""
    # placement: only these hosts may be chosen (empty: any); a drain's ``--to``
    candidates: tuple[str, ...] = ()
    # internal callers (a drain): the record's id, so submitting it again is idempotent
    migration_id: str = ""
    source_host: str = ""  # internal callers: where the VM is, as they know it ("" = look it up)
    policy: str = ""  # a named convergence policy; "": the selector rules, else the flags


@dataclass(frozen=True)
class _Plan:
    """A request resolved against the fleet view: where the VM is and how it would move."""

    source: str
    target: str
    domain: DomainInfo
    options: MigrationOptions  # storage resolved (auto -> the effective mode)
    mapping: HostMapping  # derived from [hosts.*] + the request's overrides
    placed: str = ""  # why placement chose the target ("" when the caller named it)


def check_overrides(overrides: HostMapping, target: str, facts: HostFacts | None) -> None:
    """A request's mapping overrides may only send disks into the target's image directories and
    NICs to bridges and networks it has. Prefixes are always checked lexically (``ferry.paths``);
    against the target's directories, bridges and networks when its inventory is known (else
    the target agent refuses at prepare).

    Raises InvalidArgument (PATH_NOT_ABSOLUTE, PATH_DOTDOT, PATH_OUTSIDE_IMAGE_DIRS, ...) or
    FailedPrecondition (BRIDGE_MISSING, NETWORK_MISSING).
    """
    for source, dest in overrides.path_prefixes.items():
        for what, path in (("mapping source prefix", source), ("mapping target prefix", dest)):
            found = syntax_problem(path, what)
            if found is not None:
                raise found.to_error()
        if facts is not None:
            found = path_problem(
                dest, [d.path for d in facts.storage], f"mapping target prefix on {target}", allow_root=True
            )
            if found is not None:
                raise found.to_error()
    if facts is None:
        return
    for kind, table, have in (
        ("bridge", overrides.bridges, facts.bridges),
        ("network", overrides.networks, facts.networks),
    ):
        for source, dest in table.items():
            if dest not in have:
                raise FailedPrecondition(
                    f"the mapping sends {kind} {clip(source)} to {clip(dest)}, which {target} does not have",
                    reason=f"{kind.upper()}_MISSING",
                    hint=f"{target} has {kind}s {', '.join(have) or 'none'}: map to one of them (--map-{kind})",
                )


def request_differences(request: SubmitRequest, record: MigrationRecord) -> list[str]:
    """The fields in which ``request`` differs from the submission ``record`` came from.

    ``vm`` may name the record's VM by name or UUID; no target matches the one placement chose; an
    "auto" storage mode matches the mode the coordinator chose; the request's mapping overrides
    must be what the record maps them to.
    """
    out = []
    if request.vm not in (record.vm, record.vm_uuid):
        out.append("vm")
    if request.target_host and request.target_host != record.target_host:  # none named: placement chose
        out.append("target_host")
    if request.priority != record.priority:
        out.append("priority")
    options = request.options if request.storage_explicit else replace(request.options, storage=record.options.storage)
    if options != record.options:
        out.append("options")
    if request.policy and (record.policy is None or record.policy.name != request.policy):
        out.append("policy")
    m, r = request.mapping, record.mapping
    if any(
        r_table.get(k) != v
        for table, r_table in ((m.bridges, r.bridges), (m.networks, r.networks), (m.path_prefixes, r.path_prefixes))
        for k, v in table.items()
    ):
        out.append("mapping")
    return out


async def read_migration(store: Store, migration_id: str) -> MigrationRecord | None:
    """The record ``migrations/<id>``; None when absent (or when the id cannot be a key)."""
    if not migration_id or "/" in migration_id:
        return None
    entry = await store.get(keys.migration_key(migration_id))
    return None if entry is None else decode(entry.value, entry.mod_revision)


async def must_read_migration(store: Store, migration_id: str) -> MigrationRecord:
    """The record ``migrations/<id>``; NotFound (MIGRATION_UNKNOWN) when there is none."""
    record = await read_migration(store, migration_id)
    if record is None:
        raise NotFound(
            f"no migration {migration_id!r}",
            reason="MIGRATION_UNKNOWN",
            hint="list migrations with `ferry migrations`",
        )
    return record


class Submissions:
    """Submitting migrations and asking for their cancellation: see the module doc."""

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
        placer: Placer | None = None,
        cordons: Mapping[str, HostCordon] | None = None,
        on_submitted: Callable[[MigrationRecord], None] | None = None,
        policies: Mapping[str, ConvergencePolicy] | None = None,
        selectors: tuple[PolicySelector, ...] = (),
        prediction: PredictionConfig = PredictionConfig(),
        budget: Callable[[str], int] = no_budget,
    ) -> None:
        self.store = store
        self.budget = budget  # hosts' migration bandwidth budgets (``bandwidth.py``; 0: none)
        self.fleet = fleet
        self.placer = placer
        self.cordons: Mapping[str, HostCordon] = cordons if cordons is not None else {}
        self.on_submitted = on_submitted  # every record this replica created (placement counts it at once)
        self.hosts = dict(hosts or {})
        self.policies = dict(policies or {})
        self.selectors = selectors
        self.prediction = prediction
        self._measured: dict[str, tuple[datetime, GuestLoad]] = {}  # VM UUID -> its last measurement
        self.timeouts = timeouts
        self._clock = clock
        self._new_id = new_id
        self.in_flight_wait_s = in_flight_wait_s

    @property
    def clock(self) -> Clock:
        return self._clock

    # ------------------------------------------------------------------ submit

    async def submit(self, request: SubmitRequest) -> MigrationRecord:
        """The migration submitted with the request's idempotency key, or a new Pending record.

        Raises InvalidArgument (BAD_IDEMPOTENCY_KEY, DISK_NOT_IN_DOMAIN, ...), NotFound
        (TARGET_UNKNOWN, VM_UNKNOWN), FailedPrecondition (SAME_HOST, VM_BUSY, TARGET_CORDONED,
        NO_TARGET).
        """
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
                return self._replay(request, earlier)
        if request.migration_id:
            existing = await read_migration(self.store, request.migration_id)
            if existing is not None:
                return existing
        migration_id = request.migration_id or self._new_id()
        try:
            return await self._submit(request, migration_id)
        finally:
            if self.placer is not None:  # a placement's reservation: the record (if any) counts from now on
                self.placer.book.release(migration_id)

    async def _submit(self, request: SubmitRequest, migration_id: str) -> MigrationRecord:
        plan = await self._plan(request, migration_id)
        copied = plan_disks(plan.domain.disks, plan.options.storage, plan.options.migrate_disks, plan.mapping)
        now = self._clock()
        disk_bytes = sum(p.allocation or p.virtual_size for p in copied if p.copy)
        policy = self.choose_policy(request.policy, plan.domain, plan.options)
        prediction = await self._predict(plan, policy, copy_bytes(copied))
        record = new_migration(
            id=migration_id,
            vm=plan.domain.name,
            vm_uuid=plan.domain.uuid,
            source_host=plan.source,
            target_host=plan.target,
            now=now,
            timeouts=self.timeouts,
            options=plan.options,
            mapping=plan.mapping,
            priority=request.priority,
            idempotency_key=request.idempotency_key,
            memory_bytes=plan.domain.memory_bytes,
            disk_bytes=disk_bytes,
            policy=policy,
            prediction=prediction,
        )
        if plan.placed:
            record = note(record, now, plan.placed)
        try:
            created = await self._create(record, request)
        except AlreadyExists:
            if not request.migration_id:
                raise
            existing = await read_migration(self.store, request.migration_id)  # the same id, created meanwhile
            if existing is None:
                raise
            return existing
        if self.on_submitted is not None and created.id == record.id:
            self.on_submitted(created)
        return created

    def _replay(self, request: SubmitRequest, earlier: MigrationRecord) -> MigrationRecord:
        """The migration the request's idempotency key names, when the request is the same one."""
        differ = request_differences(request, earlier)
        if differ:
            raise InvalidArgument(
                f"idempotency key {clip(request.idempotency_key, 60)!r} was used for migration {earlier.id} "
                f"({earlier.vm} {earlier.source_host} -> {earlier.target_host}) with another {', '.join(differ)}",
                reason="IDEMPOTENCY_KEY_REUSED",
                hint="send the same request again to get that migration, or use a new key for a new request",
            )
        return earlier

    def choose_policy(self, requested: str, domain: DomainInfo, options: MigrationOptions) -> ConvergencePolicy:
        """The policy a migration of ``domain`` runs under (``policies.choose_policy``)."""
        return choose_policy(
            self.policies,
            self.selectors,
            requested=requested,
            vm=domain.name,
            memory_bytes=domain.memory_bytes,
            options=options,
        )

    def remember(self, vm_uuid: str, load: GuestLoad) -> None:
        """A measurement of the guest (a Preflight's), for a submission soon after it."""
        if load.samples:
            self._measured[vm_uuid] = (self._clock(), load)

    def _recent(self, vm_uuid: str) -> GuestLoad | None:
        got = self._measured.get(vm_uuid)
        if got is None or (self._clock() - got[0]).total_seconds() > self.prediction.reuse_s:
            return None
        return got[1]

    async def measure(self, source: str, domain: DomainInfo) -> GuestLoad:
        """Measure the guest now and remember it."""
        load = await measure(self.fleet, source, domain.uuid, domain.memory_bytes, self.prediction)
        self.remember(domain.uuid, load)
        return load

    async def _predict(self, plan: _Plan, policy: ConvergencePolicy, disk_bytes: int) -> Prediction | None:
        """The prediction at submission (None without a measurement: the engine predicts in the
        Preflight phase); refuses a migration the policy cannot finish when the policy says so."""
        if plan.options.offline:
            return None
        if self.prediction.on_submit:
            load: GuestLoad | None = await self.measure(plan.source, plan.domain)
        else:
            load = self._recent(plan.domain.uuid)
        if load is None:
            return None
        prediction = await predict_for(
            self.fleet,
            plan.source,
            plan.domain,
            policy,
            disk_bytes=disk_bytes,
            config=self.prediction,
            load=load,
            budget_mibps=alone(self.budget, plan.source, plan.target),
        )
        refused = refusal(policy, prediction)
        if refused is not None:
            raise refused
        return prediction

    async def _plan(self, request: SubmitRequest, migration_id: str) -> _Plan:
        """Resolve a submission against the fleet (inventories asked now); raises the first problem."""
        vm, target = request.vm, request.target_host
        # where it may be besides where the view saw it: the caller's word, its last migration's target
        near = {request.source_host, *(self.placer.book.targets_of(vm) if self.placer is not None else ())}
        located = await self.fleet.locate_vm(vm, fresh=True, near=near)
        if target and self.fleet.host(target) is None:
            raise NotFound(
                f"no host named {target!r} is registered",
                reason="TARGET_UNKNOWN",
                hint=self.fleet.host_hint(target, "check the name with `ferry hosts`; its agent must be running"),
            )
        if located is None:
            raise NotFound(
                f"no host reports a VM named {vm!r}",
                reason="VM_UNKNOWN",
                hint=self.fleet.vm_hint(vm, "check the name with `ferry vms`"),
            )
        source, domain = located
        own = vm_blockers(domain, source, request.options)
        if own:  # no host could take it: said as it is, not as every host's NO_TARGET or a failed record
            raise FailedPrecondition(own[0].message, reason=own[0].reason, hint=own[0].hint)
        placed = ""
        if not target:
            await self.fleet.refresh()  # every inventory at most a TTL old (only the stale ones are asked)
            target, placed = self._place(request, source, domain, migration_id)
        if source == target:
            raise FailedPrecondition(
                f"{domain.name} already runs on {target}", reason="SAME_HOST", hint="pick another target host"
            )
        cordon = self.cordons.get(target)
        if cordon is not None and cordon.cordoned:
            raise cordoned_error(cordon)
        target_state = self.fleet.host(target)
        check_overrides(request.mapping, target, target_state.facts if target_state is not None else None)
        storage = effective_storage(domain, request.options, request.storage_explicit)
        mapping = derive_mapping(self.hosts.get(source), self.hosts.get(target), request.mapping)
        return _Plan(source, target, domain, replace(request.options, storage=storage), mapping, placed)

    def _place(self, request: SubmitRequest, source: str, domain: DomainInfo, migration_id: str) -> tuple[str, str]:
        """The best feasible host for a request without a target, and why (for the history)."""
        if self.placer is None:
            raise InvalidArgument(
                "target_host is required", reason="MISSING_FIELD", hint='set target_host, e.g. "host2"'
            )
        placed = self.placer.choose(
            domain,
            source,
            request.options,
            storage_explicit=request.storage_explicit,
            now=self._clock(),
            overrides=request.mapping,
            only=request.candidates,
        )
        best = placed.ranking.best
        if best is None:
            p = placed.ranking.nowhere()
            raise FailedPrecondition(p.message, reason=p.reason, hint=p.hint)
        storage = effective_storage(domain, request.options, request.storage_explicit)
        copied = plan_disks(domain.disks, storage, request.options.migrate_disks, HostMapping())
        disk_bytes = sum(p.allocation or p.virtual_size for p in copied if p.copy)
        self.placer.book.reserve(migration_id, best.host, domain, disk_bytes)
        why = f"placed on {best.host} (score {best.score:.2f}: {'; '.join(best.reasons)})"
        log.info("%s: %s", domain.name, why)
        return best.host, why

    async def _create(self, record: MigrationRecord, request: SubmitRequest) -> MigrationRecord:
        """Steps 3-5 of the module doc: in one store write when neither the idempotency key nor the
        VM's claim exists (the usual case), else step by step, each write undone again when a
        later one fails."""
        if record.idempotency_key:
            try:
                revision = await self.store.commit(
                    [
                        Put(keys.idempotency_key(record.idempotency_key), keys.encode_id(record.id)),
                        Put(keys.vm_active_key(record.vm_uuid), keys.encode_id(record.id)),
                        Put(keys.migration_key(record.id), encode(record)),
                    ]
                )
            except (AlreadyExists, Conflict):  # the key or a claim exists: step by step
                return await self._create_stepwise(record, request)
            self._log_created(record)
            return replace(record, revision=revision, create_revision=revision)
        return await self._create_stepwise(record, request)

    async def _create_stepwise(self, record: MigrationRecord, request: SubmitRequest) -> MigrationRecord:
        key_revision = None
        if record.idempotency_key:
            try:
                key_revision = await self.store.create(
                    keys.idempotency_key(record.idempotency_key), keys.encode_id(record.id)
                )
            except AlreadyExists:
                earlier = await self._by_idempotency_key(record.idempotency_key)
                if earlier is not None:
                    return self._replay(request, earlier)
                return await self._create_stepwise(record, request)  # the other submission gave up: again
        try:
            try:  # steps 4 and 5 in one store write when the VM has no claim at all (the usual case)
                revision = await self.store.commit(
                    [
                        Put(keys.vm_active_key(record.vm_uuid), keys.encode_id(record.id)),
                        Put(keys.migration_key(record.id), encode(record)),
                    ]
                )
            except (AlreadyExists, Conflict):  # a claim (busy, stale, or our own id again): step by step
                revision = await self._claim_and_create(record)
        except BaseException:
            if key_revision is not None:
                with contextlib.suppress(FerryError):
                    await self.store.delete(
                        keys.idempotency_key(record.idempotency_key), expected_mod_revision=key_revision
                    )
            raise
        self._log_created(record)
        return replace(record, revision=revision, create_revision=revision)

    @staticmethod
    def _log_created(record: MigrationRecord) -> None:
        log.info(
            "submitted %s: %s %s -> %s (storage %s)",
            record.id,
            record.vm,
            record.source_host,
            record.target_host,
            record.options.storage.value,
            extra=record.log_context.extra(),
        )

    async def _claim_and_create(self, record: MigrationRecord) -> int:
        """Steps 4 and 5 one after the other; the claim is undone when the record cannot be created,
        unless this call found it already naming the record (the same fixed id submitted twice: the
        claim is the other submission's, whose record may well exist)."""
        vm_revision = await self._claim_vm(record)
        try:
            return await self.store.create(keys.migration_key(record.id), encode(record))
        except BaseException:
            if vm_revision is not None:
                with contextlib.suppress(FerryError):
                    await self.store.delete(keys.vm_active_key(record.vm_uuid), expected_mod_revision=vm_revision)
            raise

    async def _claim_vm(self, record: MigrationRecord) -> int | None:
        """Make ``vm-active/<uuid>`` name our record: the revision written, or None when it already
        did (nothing written). VM_BUSY when another migration is not final."""
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
            if other_id == record.id:  # our own claim (the same fixed id, submitted again)
                return None
            other = await self._wait_for_record(other_id)
            if other is not None and not other.phase.is_final:
                raise FailedPrecondition(
                    f"{record.vm} already has migration {other_id} ({phase_word(other.phase)}, "
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
                clip(key),
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
            record = await read_migration(self.store, migration_id)
            if record is not None or loop.time() >= deadline:
                return record
            await asyncio.sleep(_IN_FLIGHT_POLL_S)

    # ------------------------------------------------------------------ cancel

    async def cancel(self, migration_id: str) -> MigrationRecord:
        """Mark the migration ``cancel_requested`` (repeating is fine); the engine winds it down.

        Raises NotFound (MIGRATION_UNKNOWN), FailedPrecondition (ALREADY_FINAL, TOO_LATE_TO_CANCEL:
        post-copy started, or the guest landed).
        """
        while True:
            record = await must_read_migration(self.store, migration_id)
            if record.phase.is_final:
                raise FailedPrecondition(
                    f"migration {record.id} already ended ({phase_word(record.phase)})",
                    reason="ALREADY_FINAL",
                    hint="nothing to cancel; see `ferry migrations show " + record.id + "`",
                )
            too_late = too_late_to_cancel(record)
            if too_late:
                raise FailedPrecondition(
                    f"migration {record.id} can no longer be cancelled: {too_late}",
                    reason="TOO_LATE_TO_CANCEL",
                    hint=f"let it finish (`ferry migrations watch {record.id}`); then, if it must, "
                    f"`ferry migrate {record.vm} --to {record.source_host}` moves it back",
                )
            if record.cancel_requested:
                return record
            asked = replace(note(record, self._clock(), "cancel requested"), cancel_requested=True)
            try:
                revision = await self.store.update(keys.migration_key(record.id), encode(asked), record.revision)
            except Conflict:
                continue  # the engine moved it meanwhile: decide again on the new record
            log.info("cancel requested for %s (%s)", record.id, record.phase.name, extra=record.log_context.extra())
            return replace(asked, revision=revision)
