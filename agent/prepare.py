"""The target side of a migration: PrepareIncoming, CleanupIncoming, CommitIncoming, ListPrepares.

A prepare checks that this host can take the domain, creates the disk images a storage copy
needs, and returns the destination XML. What it created is written down first (a JSON record
per prepare in ``state_dir``, ``prepare_records``), so it can be undone exactly -- after a
failure or a cancellation midway, after an agent restart, or when nobody comes back for it
(records expire; ``sweep`` runs periodically).

Lifecycle of one record::

    prepare ──► (migration runs) ──► commit    the domain landed: the images are its disks now
                                └──► cleanup   it did not: remove exactly the created files
    expired ──► sweep: domain defined here ? commit : cleanup

The checks are one pure function (``target_checks.check_target``) over a snapshot of this host
that this service gathers (domains, bridges, networks, paths, memory, the CPU comparison),
returning every problem at once, so a dry run shows the operator everything to fix in one go.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple, ParamSpec, TypeVar

from ferry.agent.domxml import ParsedDomain, parse_domain, parse_nics, rewrite_for_target
from ferry.agent.fingerprint import fingerprint_or_empty
from ferry.agent.prepare_records import PrepareStore
from ferry.agent.target_checks import (
    CpuVerdict,
    GuestCpu,
    GuestDevices,
    PathFacts,
    TargetSnapshot,
    check_target,
    guest_cpu,
    guest_devices,
    refusal,
    required_bytes,
    resolve_plans,
    storage_key,
)
from ferry.diskplan import map_path
from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument, NotFound, clip
from ferry.model import (
    DiskPlan,
    DomainInfo,
    DomainState,
    HostMapping,
    Nic,
    PreparedIncoming,
    PrepareRecord,
    Problem,
    StorageMode,
)
from ferry.paths import PathUse
from ferry.ports import HostSystem, Hypervisor

log = logging.getLogger(__name__)

_PREPARE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["CleanupOutcome", "PrepareService", "PrepareStore", "check_target"]


class CleanupOutcome(NamedTuple):
    removed: list[str]
    already_gone: bool


def _check_id(prepare_id: str) -> None:
    if not _PREPARE_ID.fullmatch(prepare_id):
        raise InvalidArgument(
            f"{clip(repr(prepare_id))} is not a prepare id",
            reason="INVALID_PREPARE_ID",
            hint="use the prepare_id PrepareIncoming returned (ListPrepares shows them)",
        )


def _in_thread(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
    """``func`` started in a thread as ``asyncio.to_thread`` starts it, but as a plain future, not
    a task: no cancellation reaches it (not even ``asyncio.run``'s of every task at exit), so
    ``_finished`` can wait for it to end."""
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(None, lambda: context.run(func, *args, **kwargs))


async def _finished(call: asyncio.Future[T]) -> T:
    """The result of a call ``_in_thread`` started. When the caller is cancelled meanwhile (its
    client's deadline), first wait for the call to end -- a thread cannot be stopped, and what it
    goes on to do (create an image, write a record) must be done before anyone undoes it -- then
    let the cancellation go on; cancelled again while waiting, it keeps waiting. How the call
    ended stays on ``call`` (``_raised``)."""
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        while not call.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([call])
        if not call.cancelled():
            call.exception()  # seen: the cancellation goes on, not the call's own error
        raise


def _raised(call: asyncio.Future[T], error: type[BaseException]) -> bool:
    """Whether the ended ``call`` raised an ``error``."""
    return call.done() and not call.cancelled() and isinstance(call.exception(), error)


class PrepareService:
    """PrepareIncoming / CleanupIncoming / CommitIncoming / ListPrepares over the two ports."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        host: HostSystem,
        state_dir: Path,
        *,
        default_ttl_s: int,
        clock: Callable[[], datetime],
        host_name: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        incoming_wait_s: float = 15.0,
        poll_s: float = 0.5,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._hv = hypervisor
        self._host = host
        self._state_dir = Path(state_dir)
        self._store = PrepareStore(state_dir)
        self._ttl_s = default_ttl_s
        self._clock = clock
        self._host_name = host_name
        self._sleep = sleep
        self._incoming_wait = timedelta(seconds=incoming_wait_s)
        self._poll_s = poll_s
        self._new_id = new_id
        self._lock = asyncio.Lock()  # one record change at a time; checks and creation stay consistent

    @property
    def host_name(self) -> str:
        """This host's name in the fleet (the agent's configured name)."""
        return self._host_name

    @property
    def host_system(self) -> HostSystem:
        return self._host

    @property
    def state_dir(self) -> Path:
        """Where this agent keeps its records."""
        return self._state_dir

    @property
    def clock(self) -> Callable[[], datetime]:
        return self._clock

    # ------------------------------------------------------------------ prepare

    async def _snapshot(
        self,
        parsed: ParsedDomain | None,
        cpu: GuestCpu | None,
        nics: list[Nic],
        plans: list[DiskPlan],
        probes: Mapping[str, str],
        block_devices: Mapping[str, str],
        hardware: GuestDevices | None = None,
    ) -> TargetSnapshot:
        domains: dict[str, DomainInfo] = {}
        networks: tuple[str, ...] = ()
        records: tuple[PrepareRecord, ...] = ()
        memory = 0
        if parsed is not None:
            for query in ({"name": parsed.name}, {"uuid": parsed.uuid}):
                if next(iter(query.values())):
                    found = await self._hv.find_domain(**query)
                    if found is not None:
                        domains[found.uuid] = found
            facts = await self._hv.host_facts()
            memory = facts.memory_free_bytes
            if any(n.type == "network" for n in nics):
                networks = tuple(facts.networks)
        stored = self._store.all()
        if parsed is not None:
            records = tuple(r for r, _ in stored if r.domain_uuid == parsed.uuid)
        # what the agent itself would touch is confined: the images it creates, the backing
        # files qemu-img reads; and so is what the guest will open here: a disk expected on
        # shared storage, or a read-only image each host has, must be below the image or shared
        # directories too (a mapping, or a forged XML, must not hand the guest /etc/shadow);
        # a block device must be one (``check_target``)
        uses: dict[str, PathUse | None] = {p.destination: PathUse.READ for p in plans if not p.copy}
        uses |= {probe: None for probe in probes.values()}
        uses |= {device: None for device in block_devices}
        uses |= {p.backing_file: PathUse.READ for p in plans if p.copy and p.backing_file}
        uses |= {p.destination: PathUse.CREATE for p in plans if p.copy}
        emulator = parsed.emulator if parsed is not None else ""  # with a <cpu> element or without
        compare = frozenset(p.backing_file for p in plans if p.copy and p.backing_file and p.backing_fingerprint)
        in_place = frozenset(p.destination for p in plans if not p.copy)
        facts_by_path, bridge_kinds, reserved, emulator_present = await asyncio.to_thread(
            self._host_view, uses, stored, emulator, compare, frozenset(block_devices), in_place
        )
        verdict = await self._compare_cpu(cpu, emulator_present) if parsed is not None else None
        direct, pinned = any(n.type == "direct" for n in nics), hardware is not None and hardware.pinned
        net_devices, cpus, nodes = (
            await asyncio.to_thread(self._hardware_view, direct, pinned)
            if direct or pinned
            else ((), frozenset(), frozenset())
        )
        return TargetSnapshot(
            host_name=self._host_name,
            bridges=tuple(bridge_kinds),
            bridge_kinds=bridge_kinds,
            networks=networks,
            domains=tuple(domains.values()),
            paths=facts_by_path,
            records=records,
            reserved=reserved,
            memory_available_bytes=memory,
            emulator_present=emulator_present,
            cpu=verdict,
            probes=probes,
            block_devices=block_devices,
            net_devices=net_devices,
            cpus=cpus,
            numa_nodes=nodes,
        )

    async def _compare_cpu(self, cpu: GuestCpu | None, emulator_present: bool) -> CpuVerdict | None:
        """libvirt's verdict on the guest's CPU here; None when there is nothing to compare. A
        comparison libvirt refuses for the domain's sake (unknown model or machine type) is a
        problem; one it cannot make (libvirtd down, timeout) fails the prepare like any call."""
        if cpu is None or not cpu.comparable:
            return None
        try:
            why = await self._hv.compare_cpu(
                cpu.xml,
                arch=cpu.arch,
                machine=cpu.machine,
                virttype=cpu.virttype,
                emulator=cpu.emulator if emulator_present else "",
            )
        except FerryError as err:
            if not err.caller_fault:
                raise
            return CpuVerdict(failed=Problem.of(err))
        return CpuVerdict(incompatible=why)

    def _hardware_view(
        self, direct: bool, pinned: bool
    ) -> tuple[tuple[str, ...], frozenset[int] | None, frozenset[int] | None]:
        """This host's network devices (asked for a macvtap NIC), CPUs and NUMA nodes online (for a
        pinned guest; None: this host cannot tell)."""
        devices = tuple(self._host.net_devices()) if direct else ()
        if not pinned:
            return devices, frozenset(), frozenset()
        return devices, self._host.online_cpus() or None, self._host.numa_nodes() or None

    def _host_view(
        self,
        uses: Mapping[str, PathUse | None],
        stored: list[tuple[PrepareRecord, dict[str, int]]],
        emulator: str,
        compare: frozenset[str] = frozenset(),
        blocks: frozenset[str] = frozenset(),
        in_place: frozenset[str] = frozenset(),
    ) -> tuple[dict[str, PathFacts], dict[str, str], dict[str, int], bool]:
        """``compare``: backing files whose fingerprint a plan carries; ``blocks``: block devices;
        ``in_place``: disks the guest opens here as they are (not copied)."""
        dirs = self._host.storage_dirs()
        facts = {}
        for path, use in sorted(uses.items()):
            what = "disk" if path in in_place else ""
            refused = self._host.confine(path, use, what) if use is not None else None
            if refused is not None:  # looked at no further
                facts[path] = PathFacts(exists=False, refused=refused)
                continue
            facts[path] = PathFacts(
                exists=self._host.exists(path),
                writable_dir=self._host.writable_dir(path),
                free_bytes=self._host.free_bytes(path),
                shared=self._host.is_shared(path),
                fs_key=storage_key(path, dirs),
                fingerprint=fingerprint_or_empty(self._host, path) if path in compare else "",
                identity=self._host.block_identity(path) if path in blocks else "",
                block=path in blocks and self._host.is_block_device(path),
            )
        reserved: dict[str, int] = {}
        for _, by_path in stored:
            for path, size in by_path.items():
                key = storage_key(path, dirs)
                reserved[key] = reserved.get(key, 0) + size
        emulator_present = not emulator or self._host.exists(emulator)
        return facts, self._host.bridge_kinds(), reserved, emulator_present

    async def prepare(
        self,
        domain_xml: str,
        disks: list[DiskPlan],
        mapping: HostMapping,
        storage: StorageMode,
        ttl_s: int,
        migration_id: str,
        dry_run: bool,
        *,
        shared_probes: Sequence[str] = (),
        block_devices: Mapping[str, str] | None = None,
        offline: bool = False,
    ) -> PreparedIncoming:
        """Check this host, then (unless ``dry_run``) create the images and record them.
        ``shared_probes``: the source's probe files next to disks left in place
        (``agent/shared_probes.py``), each to be found here at its mapped path. ``block_devices``:
        the block devices the guest uses in place, path -> the source's identity of each.
        ``offline``: the migration moves a shut-off definition (``check_target``).

        Refused (nothing created) with the first problem's error type, the message listing all.
        """
        async with self._lock:
            try:
                parsed, nics = parse_domain(domain_xml), parse_nics(domain_xml)
            except InvalidArgument:
                parsed, nics = None, []
            plans = resolve_plans(domain_xml if parsed else "", disks, storage, mapping)
            probes = {os.path.dirname(p): map_path(p, mapping.path_prefixes) for p in shared_probes}
            snapshot = await self._snapshot(
                parsed,
                guest_cpu(domain_xml) if parsed else None,
                nics,
                plans,
                probes,
                dict(block_devices or {}),
                guest_devices(domain_xml) if parsed else None,
            )
            problems = check_target(domain_xml, plans, mapping, storage, snapshot, offline=offline)
            try:
                destination_xml = rewrite_for_target(domain_xml, mapping, plans)
            except InvalidArgument:
                destination_xml = ""  # already among the problems
            if dry_run:
                return PreparedIncoming("", destination_xml, tuple(plans), (), None, tuple(problems))
            if problems:
                raise refusal(problems)
            assert parsed is not None  # no problems: the XML parsed
            return await self._create(parsed, plans, destination_xml, ttl_s or self._ttl_s, migration_id)

    async def _create(
        self, parsed: ParsedDomain, plans: list[DiskPlan], destination_xml: str, ttl_s: int, migration_id: str
    ) -> PreparedIncoming:
        """Record, then create, each image; on any failure undo what was created. Cancelled midway
        (the caller's deadline, on slow storage), it first waits for the record or image being
        written (``_finished``), so the undo sees it: nothing is left that no record names."""
        now = self._clock()
        record = PrepareRecord(
            prepare_id=self._new_id(),
            domain_name=parsed.name,
            domain_uuid=parsed.uuid,
            created=(),
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
            migration_id=migration_id,
        )
        reserved = {p.destination: required_bytes(p) for p in plans if p.copy}
        created: list[str] = []
        try:
            await _finished(_in_thread(self._store.save, record, reserved))
            for p in plans:
                if not p.copy:
                    continue
                created.append(p.destination)  # intent first: a crash from here on still cleans up
                await _finished(_in_thread(self._store.save, replace(record, created=tuple(created)), reserved))
                creating = _in_thread(
                    self._host.create_image,
                    p.destination,
                    fmt=p.format,
                    virtual_size=p.virtual_size,
                    backing_file=p.backing_file,
                    backing_format=p.backing_format,
                )
                try:
                    await _finished(creating)
                except BaseException:
                    if _raised(creating, AlreadyExists):  # cancelled or not
                        created.pop()  # someone else's file appeared meanwhile: never remove it
                    raise
        except BaseException:
            await self._undo(replace(record, created=tuple(created)), reserved)
            raise
        log.info("prepared %s for %s: created %s", record.prepare_id, parsed.name, ", ".join(created) or "nothing")
        return PreparedIncoming(record.prepare_id, destination_xml, tuple(plans), tuple(created), record.expires_at)

    async def _undo(self, record: PrepareRecord, reserved: Mapping[str, int]) -> list[str]:
        """Remove the record's files, then the record; what could not be removed stays recorded."""
        removed, left = [], []
        for path in record.created:
            try:
                if await asyncio.to_thread(self._host.remove, path):
                    removed.append(path)
            except FerryError:
                log.warning(
                    "could not remove %s (prepare %s); kept for a later cleanup", path, record.prepare_id, exc_info=True
                )
                left.append(path)
        if left:
            kept = replace(record, created=tuple(left))
            await asyncio.to_thread(self._store.save, kept, {p: reserved.get(p, 0) for p in left})
            raise FailedPrecondition(
                f"could not remove {', '.join(left)} on {self._host_name}",
                reason="REMOVE_FAILED",
                hint=f"check the agent's log and the files' directory; CleanupIncoming {record.prepare_id} retries",
            )
        await asyncio.to_thread(self._store.delete, record.prepare_id)
        return removed

    # ------------------------------------------------------------------ cleanup / commit

    async def _refuse_if_running_here(self, record: PrepareRecord, discard_incoming: bool = False) -> None:
        """Wait (bounded) for an incoming migration job to end; refuse while the domain is active.

        ``discard_incoming``: the caller saw the guest execute on the source with no job; a domain
        libvirt still holds paused here for the incoming migration (transient, it never ran here)
        is a leftover: destroy it (``Hypervisor.destroy_incoming`` checks it is one)."""
        deadline = self._clock() + self._incoming_wait
        discarded = False
        while True:
            dom = await self._hv.find_domain(uuid=record.domain_uuid)
            if dom is None or not dom.state.is_active:
                return
            if discard_incoming and not discarded and dom.paused_by_libvirt and not dom.persistent:
                if await self._hv.destroy_incoming(record.domain_uuid):  # False: it went away by itself
                    log.warning(
                        "destroyed %s (%s): the unfinished incoming copy of migration %s, left paused here while "
                        "the guest runs on its source",
                        record.domain_name,
                        record.domain_uuid,
                        record.migration_id or "?",
                    )
                discarded = True
                continue
            try:
                job_running = (await self._hv.job_stats(record.domain_uuid)).active
            except NotFound:
                return  # the failed incoming domain went away meanwhile
            if not job_running or self._clock() >= deadline:
                break
            await self._sleep(self._poll_s)
        hint = (
            f"the migration landed: commit it (CommitIncoming {record.prepare_id}) instead; to throw the "
            f"guest away, destroy and undefine {record.domain_name} on {self._host_name} first"
        )
        if job_running:
            hint = (
                f"an incoming migration of {record.domain_name} is still running: cancel it on the source, "
                "then clean up again"
            )
        raise FailedPrecondition(
            f"{record.domain_name} ({record.domain_uuid}) is running on {self._host_name}; its disks stay",
            reason="DOMAIN_RUNNING_HERE",
            hint=hint,
        )

    async def cleanup(self, prepare_id: str, *, discard_incoming: bool = False) -> CleanupOutcome:
        """Remove exactly what the prepare created, then its record. Idempotent.

        ``discard_incoming``: see ``_refuse_if_running_here``."""
        _check_id(prepare_id)
        loaded = self._store.load(prepare_id)
        if loaded is None:
            return CleanupOutcome([], True)
        await self._refuse_if_running_here(loaded[0], discard_incoming)
        async with self._lock:
            loaded = self._store.load(prepare_id)
            if loaded is None:
                return CleanupOutcome([], True)
            removed = await self._undo(*loaded)
        log.info(
            "cleaned up prepare %s of %s: removed %s",
            prepare_id,
            loaded[0].domain_name,
            ", ".join(removed) or "nothing",
        )
        return CleanupOutcome(removed, False)

    async def commit(self, prepare_id: str, *, require_landed: bool = False) -> bool:
        """The domain landed: its images are its own now; forget the record. False: no such record.

        ``require_landed``: first check that the guest landed here (``_check_landed``); if not,
        FailedPrecondition NOT_LANDED and the record stays."""
        _check_id(prepare_id)
        if require_landed:
            loaded = self._store.load(prepare_id)
            if loaded is None:
                return False
            await self._check_landed(loaded[0])
        async with self._lock:
            return await asyncio.to_thread(self._store.delete, prepare_id)

    async def _check_landed(self, record: PrepareRecord) -> None:
        """The prepared domain runs here as a landed guest: active, not held paused by libvirt for
        an incoming migration, not shutting down, and with no job running."""
        dom = await self._hv.find_domain(uuid=record.domain_uuid)
        why = ""
        if dom is None:
            why = "is not defined here"
        elif not dom.state.is_active or dom.state is DomainState.SHUTDOWN:
            why = f"is {dom.state.name.lower()} here"
        elif dom.paused_by_libvirt:
            why = "is still held paused by libvirt for its incoming migration"
        else:
            try:
                if (await self._hv.job_stats(record.domain_uuid)).active:
                    why = "still runs a job here"
            except NotFound:
                why = "is not defined here"
        if why:
            raise FailedPrecondition(
                f"{record.domain_name} ({record.domain_uuid}) {why}: it has not landed on {self._host_name}; "
                f"prepare {record.prepare_id} is kept",
                reason="NOT_LANDED",
                hint="find where the guest runs (GetDomain on both hosts) before committing or cleaning up",
            )

    def list(self) -> builtins.list[PrepareRecord]:
        return [r for r, _ in self._store.all()]

    async def sweep(self) -> builtins.list[str]:
        """Finish every expired prepare: commit it when its domain is defined here, else clean it up.

        Returns one line per expired prepare saying what happened (kept ones say why).
        """
        now, outcomes = self._clock(), []
        for record in self.list():
            if record.expires_at > now:
                continue
            rid, name = record.prepare_id, record.domain_name
            try:
                dom = await self._hv.find_domain(uuid=record.domain_uuid)
                if dom is not None and dom.state.is_active and (await self._hv.job_stats(record.domain_uuid)).active:
                    outcomes.append(f"{rid}: kept, an incoming migration of {name} is still running")
                elif dom is not None:
                    await self.commit(rid)
                    outcomes.append(f"{rid}: committed, {name} is defined here")
                else:
                    removed, _ = await self.cleanup(rid)
                    outcomes.append(f"{rid}: cleaned up, removed {len(removed)} file(s) of {name}")
            except FerryError as exc:
                log.warning("sweep kept prepare %s: %s", rid, exc)
                outcomes.append(f"{rid}: kept, {exc.reason}: {exc.message}")
        return outcomes
