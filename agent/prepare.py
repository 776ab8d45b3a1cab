"""The target side of a migration: PrepareIncoming, CleanupIncoming, CommitIncoming, ListPrepares.

A prepare checks that this host can take the domain, creates the disk images a storage copy
needs, and returns the destination XML. What it created is written down first (a JSON record
per prepare in ``state_dir``), so it can be undone exactly -- after a failure midway, after an
agent restart, or when nobody comes back for it (records expire; ``sweep`` runs periodically).

Lifecycle of one record::

    prepare ──► (migration runs) ──► commit    the domain landed: the images are its disks now
                                └──► cleanup   it did not: remove exactly the created files
    expired ──► sweep: domain defined here ? commit : cleanup

The checks are one pure function (``check_target``) over a snapshot of this host, returning
every problem at once, so a dry run shows the operator everything to fix in one go.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from ferry.agent.diskplan import map_path, plan_disks
from ferry.agent.domxml import ParsedDomain, backing_formats, parse_disks, parse_domain, parse_nics, \
    rewrite_for_target
from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument, NotFound, \
    ResourceExhausted
from ferry.model import Disk, DiskPlan, DomainInfo, HostMapping, Nic, PrepareRecord, StorageDir, StorageMode
from ferry.ports import HostSystem, Hypervisor

log = logging.getLogger(__name__)

_PREPARE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


# ---------------------------------------------------------------------------- pure checks


@dataclass(frozen=True)
class Problem:
    """One reason this host cannot take the domain, with what to do about it."""

    error: type[FerryError]
    reason: str
    message: str
    hint: str = ""

    def to_error(self) -> FerryError:
        return self.error(self.message, reason=self.reason, hint=self.hint)


@dataclass(frozen=True)
class PathFacts:
    exists: bool
    writable_dir: bool = True
    free_bytes: int = 0
    shared: bool = False  # on shared storage (declared shared dir or cluster file system)
    fs_key: str = ""  # paths with the same key share one file system's free space


@dataclass(frozen=True)
class TargetSnapshot:
    """What this host looks like, as far as one prepare cares."""

    host_name: str
    bridges: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    domains: tuple[DomainInfo, ...] = ()          # domains here with the incoming name or UUID
    paths: Mapping[str, PathFacts] = field(default_factory=dict)  # destinations and backing files
    records: tuple[PrepareRecord, ...] = ()        # prepares of the same domain not yet finished
    reserved: Mapping[str, int] = field(default_factory=dict)  # fs key -> bytes other prepares will fill


def human_bytes(n: int) -> str:
    """>>> human_bytes(3 << 30)
    '3.0 GiB'"""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def required_bytes(plan: DiskPlan) -> int:
    """What copying a disk will fill on the target: its allocation, or its virtual size."""
    return plan.allocation or plan.virtual_size


def resolve_plans(xml: str, plans: Iterable[DiskPlan], storage: StorageMode,
                  mapping: HostMapping) -> list[DiskPlan]:
    """Fill in what the caller left to the target (pure).

    * no plans at all: plan from the XML (sizes unknown there, so only SHARED works that way);
    * ``destination`` empty: the source path through the path-prefix mapping;
    * COPY_INC: an empty ``backing_file`` is the disk's nearest backing file from the XML,
      mapped; an empty ``backing_format`` is that backing store's format from the XML;
    * COPY_ALL copies the whole chain into one image, so a copied disk gets no backing file.

    ``xml`` may be "" (it did not parse): then only the plans given are used.
    """
    plans = list(plans)
    disks = parse_disks(xml) if xml else []
    if not plans:
        plans = plan_disks(disks, storage, (), mapping)
    chains = {d.target: d.backing_chain for d in disks}
    formats = backing_formats(xml) if xml else {}
    out = []
    for p in plans:
        p = replace(p, destination=p.destination or map_path(p.source, mapping.path_prefixes))
        if p.copy and storage is StorageMode.COPY_INC:
            chain = chains.get(p.target, ())
            backing = p.backing_file or (map_path(chain[0], mapping.path_prefixes) if chain else "")
            p = replace(p, backing_file=backing,
                        backing_format=p.backing_format or (formats.get(p.target, "") if backing else ""))
        elif p.copy:
            p = replace(p, backing_file="", backing_format="")
        out.append(p)
    return out


def _domain_problems(parsed: ParsedDomain, snap: TargetSnapshot) -> list[Problem]:
    out = []
    for dom in snap.domains:
        if dom.name == parsed.name and dom.uuid == parsed.uuid and not dom.state.is_active:
            continue  # libvirt lets an incoming migration replace its own inactive definition
        same = "name" if dom.name == parsed.name else "UUID"
        state = "running" if dom.state.is_active else "defined, not running"
        out.append(Problem(
            AlreadyExists, "DOMAIN_EXISTS",
            f"{snap.host_name} already has a domain with the {same} of {parsed.name} "
            f"({dom.name}, {dom.uuid}, {state})",
            f"it already runs on {snap.host_name}: nothing to migrate" if dom.state.is_active and
            dom.uuid == parsed.uuid else
            f"if {dom.name} on {snap.host_name} is a stale copy, undefine it there (virsh undefine {dom.name}); "
            "otherwise pick another target"))
    for rec in snap.records:
        out.append(Problem(
            AlreadyExists, "PREPARE_EXISTS",
            f"{snap.host_name} already has a prepared incoming migration of {rec.domain_name} "
            f"(prepare {rec.prepare_id}, migration {rec.migration_id or 'unknown'})",
            f"let that migration finish, or clean it up (CleanupIncoming {rec.prepare_id}); "
            f"it expires at {rec.expires_at.isoformat()}"))
    return out


def _nic_problems(nics: Iterable[Nic], mapping: HostMapping, snap: TargetSnapshot) -> list[Problem]:
    out, seen = [], set()
    for nic in nics:
        if nic.type not in ("bridge", "network") or not nic.source or (nic.type, nic.source) in seen:
            continue
        seen.add((nic.type, nic.source))
        kind = nic.type
        table, have = (mapping.bridges, snap.bridges) if kind == "bridge" else (mapping.networks, snap.networks)
        wanted = table.get(nic.source, nic.source)
        if wanted in have:
            continue
        mapped = f" (mapped from {nic.source})" if wanted != nic.source else ""
        listed = ", ".join(have) if have else "none"
        example = have[0] if have else f"TARGET_{kind.upper()}"
        out.append(Problem(
            FailedPrecondition, f"{kind.upper()}_MISSING",
            f"{kind} {wanted}{mapped} does not exist on {snap.host_name}",
            f"{snap.host_name} has {kind}s {listed}; map it: --map-{kind} {nic.source}={example}"))
    return out


def _disk_problems(plans: list[DiskPlan], storage: StorageMode, devices: Mapping[str, Disk] | None,
                   snap: TargetSnapshot) -> list[Problem]:
    out: list[Problem] = []
    host = snap.host_name
    facts = snap.paths
    destinations: dict[str, str] = {}
    for p in plans:
        dest = p.destination
        if devices is not None and p.target not in devices:
            out.append(Problem(InvalidArgument, "DISK_NOT_IN_DOMAIN",
                               f"the disk plan names {p.target}, which the domain does not have",
                               f"the domain's disks are {', '.join(sorted(devices)) or 'none'}"))
            continue
        if dest in destinations:
            out.append(Problem(InvalidArgument, "DUPLICATE_DESTINATION",
                               f"disks {destinations[dest]} and {p.target} would both live at {dest}",
                               "map them to different paths (--map-path)"))
            continue
        destinations[dest] = p.target
        f = facts.get(dest, PathFacts(exists=False))
        if not p.copy:
            why = "on shared storage" if storage is StorageMode.SHARED else "not copied"
            disk = devices.get(p.target) if devices is not None else None
            writable = disk is not None and not disk.readonly and disk.device == "disk"
            if not f.exists:
                out.append(Problem(
                    FailedPrecondition, "SHARED_DISK_MISSING",
                    f"disk {p.target} ({why}) is expected at {dest} on {host}, but nothing is there",
                    f"make {os.path.dirname(dest)} visible on {host} (mount the shared storage), map the path "
                    f"(--map-path {os.path.dirname(p.source)}=DIR), or copy the disk (--copy-storage-all)"))
            elif writable and not f.shared:
                out.append(Problem(
                    FailedPrecondition, "DISK_NOT_SHARED",
                    f"disk {p.target} ({why}) is writable, but {dest} on {host} is on local storage: the guest "
                    "would continue on a different file than on the source",
                    f"copy the disk (--copy-storage-all); if {os.path.dirname(dest)} really is shared, list it "
                    f"in shared_dirs of {host}'s agent config"))
            continue
        if storage is StorageMode.SHARED:
            out.append(Problem(InvalidArgument, "COPY_WITH_SHARED_STORAGE",
                               f"disk {p.target} is planned as a copy, but the storage mode is shared",
                               "use --copy-storage-all or --copy-storage-inc, or plan the disk as shared"))
            continue
        if p.virtual_size <= 0:
            out.append(Problem(InvalidArgument, "DISK_SIZE_UNKNOWN",
                               f"disk {p.target} has no virtual size; its image cannot be created",
                               "pass disk plans with sizes (the source agent's inventory has them)"))
        if f.exists:
            out.append(Problem(
                AlreadyExists, "FILE_IN_THE_WAY",
                f"{dest} already exists on {host} (disk {p.target} would be created there)",
                f"remove or move {dest} on {host} if it is a leftover, or map the disk elsewhere "
                f"(--map-path {os.path.dirname(p.source)}=DIR)"))
        elif not f.writable_dir:
            out.append(Problem(
                FailedPrecondition, "PATH_NOT_WRITABLE",
                f"the agent cannot create {dest} on {host}: its directory is not writable",
                f"make {os.path.dirname(dest)} writable for the agent, or map the disk elsewhere (--map-path)"))
        if storage is StorageMode.COPY_INC and p.backing_file and \
                not facts.get(p.backing_file, PathFacts(exists=False)).exists:
            out.append(Problem(
                FailedPrecondition, "BACKING_MISSING",
                f"disk {p.target} needs its backing file {p.backing_file} on {host}, and it is not there",
                f"copy the backing file to {p.backing_file} on {host}, map its directory (--map-path), "
                "or copy the whole disk (--copy-storage-all)"))
    return out + _space_problems([p for p in plans if p.copy and p.destination in destinations], snap)


def _space_problems(copies: list[DiskPlan], snap: TargetSnapshot) -> list[Problem]:
    by_fs: dict[str, list[DiskPlan]] = {}
    for p in copies:
        by_fs.setdefault(snap.paths.get(p.destination, PathFacts(False)).fs_key or p.destination, []).append(p)
    out = []
    for key, plans in by_fs.items():
        need = sum(required_bytes(p) for p in plans)
        free = snap.paths.get(plans[0].destination, PathFacts(False)).free_bytes
        reserved = snap.reserved.get(key, 0)
        if need <= free - reserved:
            continue
        others = f", {human_bytes(reserved)} of it promised to other incoming migrations" if reserved else ""
        out.append(Problem(
            ResourceExhausted, "INSUFFICIENT_SPACE",
            f"disks {', '.join(p.target for p in plans)} need {human_bytes(need)} under {key} on "
            f"{snap.host_name}; {human_bytes(free)} free{others}",
            f"free {human_bytes(need - free + reserved)} there, or map the disks to a roomier directory "
            "(--map-path)"))
    return out


def check_target(xml: str, plans: list[DiskPlan], mapping: HostMapping, storage: StorageMode,
                 snapshot: TargetSnapshot) -> list[Problem]:
    """Every reason this host cannot take the domain (empty: ready), in the order an operator
    would fix them: the definition, the domain itself, networking, disks, space."""
    try:
        parsed, nics = parse_domain(xml), parse_nics(xml)
        devices: dict[str, Disk] | None = {d.target: d for d in parse_disks(xml)}
    except InvalidArgument as exc:
        return [Problem(InvalidArgument, exc.reason, exc.message, exc.hint),
                *_disk_problems(plans, storage, None, snapshot)]
    return [*_domain_problems(parsed, snapshot), *_nic_problems(nics, mapping, snapshot),
            *_disk_problems(plans, storage, devices, snapshot)]


def refusal(problems: list[Problem]) -> FerryError:
    """One error for a refused prepare: the first problem's type and reason, every message."""
    first = problems[0]
    if len(problems) == 1:
        return first.to_error()
    hints = list(dict.fromkeys(p.hint for p in problems if p.hint))
    return first.error(f"{len(problems)} problems: " + "; ".join(p.message for p in problems),
                       reason=first.reason, hint="; ".join(hints))


def storage_key(path: str, dirs: Iterable[StorageDir]) -> str:
    """The configured storage directory holding ``path`` (longest), else the path's directory."""
    best = ""
    for d in dirs:
        root = d.path.rstrip("/")
        if (path == root or path.startswith(root + "/")) and len(root) > len(best):
            best = root
    return best or os.path.dirname(path)


# ---------------------------------------------------------------------------- records


class PrepareStore:
    """One JSON file per prepare under ``state_dir/prepares``, written atomically
    (temporary file, fsync, rename, fsync of the directory)."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = Path(state_dir) / "prepares"
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, prepare_id: str) -> Path:
        return self._dir / f"{prepare_id}.json"

    def save(self, record: PrepareRecord, reserved: Mapping[str, int]) -> None:
        doc = {
            "prepare_id": record.prepare_id, "domain_name": record.domain_name,
            "domain_uuid": record.domain_uuid, "created": list(record.created),
            "created_at": record.created_at.isoformat(), "expires_at": record.expires_at.isoformat(),
            "migration_id": record.migration_id, "reserved": dict(reserved),
        }
        tmp = self._dir / f".{record.prepare_id}.json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(record.prepare_id))
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self, prepare_id: str) -> tuple[PrepareRecord, dict[str, int]] | None:
        try:
            doc = json.loads(self._path(prepare_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        record = PrepareRecord(
            prepare_id=doc["prepare_id"], domain_name=doc["domain_name"], domain_uuid=doc["domain_uuid"],
            created=tuple(doc["created"]), created_at=datetime.fromisoformat(doc["created_at"]),
            expires_at=datetime.fromisoformat(doc["expires_at"]), migration_id=doc.get("migration_id", ""))
        return record, {k: int(v) for k, v in doc.get("reserved", {}).items()}

    def all(self) -> list[tuple[PrepareRecord, dict[str, int]]]:
        out = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                loaded = self.load(path.stem)
            except (ValueError, KeyError, TypeError):
                log.error("unreadable prepare record %s: left in place for an operator", path)
                continue
            if loaded is not None:
                out.append(loaded)
        return sorted(out, key=lambda r: r[0].created_at)

    def delete(self, prepare_id: str) -> bool:
        try:
            self._path(prepare_id).unlink()
        except FileNotFoundError:
            return False
        return True


# ---------------------------------------------------------------------------- service


@dataclass(frozen=True)
class PrepareOutcome:
    prepare_id: str                 # "" for a dry run
    destination_xml: str            # "" when the XML could not be rewritten
    disks: tuple[DiskPlan, ...]     # with destinations (and COPY_INC backing files) filled in
    created: tuple[str, ...]
    expires_at: datetime | None     # None for a dry run
    problems: tuple[Problem, ...] = ()


class CleanupOutcome(NamedTuple):
    removed: list[str]
    already_gone: bool


def _check_id(prepare_id: str) -> None:
    if not _PREPARE_ID.fullmatch(prepare_id):
        raise InvalidArgument(f"{prepare_id!r} is not a prepare id", reason="INVALID_PREPARE_ID",
                              hint="use the prepare_id PrepareIncoming returned (ListPrepares shows them)")


class PrepareService:
    """PrepareIncoming / CleanupIncoming / CommitIncoming / ListPrepares over the two ports."""

    def __init__(self, hypervisor: Hypervisor, host: HostSystem, state_dir: Path, *, default_ttl_s: int,
                 clock: Callable[[], datetime], host_name: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 incoming_wait_s: float = 15.0, poll_s: float = 0.5,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self._hv = hypervisor
        self._host = host
        self._store = PrepareStore(state_dir)
        self._ttl_s = default_ttl_s
        self._clock = clock
        self._host_name = host_name
        self._sleep = sleep
        self._incoming_wait = timedelta(seconds=incoming_wait_s)
        self._poll_s = poll_s
        self._new_id = new_id
        self._lock = asyncio.Lock()  # one record change at a time; checks and creation stay consistent

    # ------------------------------------------------------------------ prepare

    async def _snapshot(self, parsed: ParsedDomain | None, nics: list[Nic], plans: list[DiskPlan]) -> TargetSnapshot:
        domains: dict[str, DomainInfo] = {}
        networks: tuple[str, ...] = ()
        records: tuple[PrepareRecord, ...] = ()
        if parsed is not None:
            for query in ({"name": parsed.name}, {"uuid": parsed.uuid}):
                if next(iter(query.values())):
                    found = await self._hv.find_domain(**query)
                    if found is not None:
                        domains[found.uuid] = found
            if any(n.type == "network" for n in nics):
                networks = tuple((await self._hv.host_facts()).networks)
        stored = self._store.all()
        if parsed is not None:
            records = tuple(r for r, _ in stored if r.domain_uuid == parsed.uuid)
        paths = {p.destination for p in plans} | {p.backing_file for p in plans if p.backing_file}
        facts, bridges, reserved = await asyncio.to_thread(self._host_view, sorted(paths), stored)
        return TargetSnapshot(host_name=self._host_name, bridges=bridges, networks=networks,
                              domains=tuple(domains.values()), paths=facts, records=records, reserved=reserved)

    def _host_view(self, paths: list[str], stored: list[tuple[PrepareRecord, dict[str, int]]]
                   ) -> tuple[dict[str, PathFacts], tuple[str, ...], dict[str, int]]:
        dirs = self._host.storage_dirs()
        facts = {path: PathFacts(exists=self._host.exists(path), writable_dir=self._host.writable_dir(path),
                                 free_bytes=self._host.free_bytes(path), shared=self._host.is_shared(path),
                                 fs_key=storage_key(path, dirs))
                 for path in paths}
        reserved: dict[str, int] = {}
        for _, by_path in stored:
            for path, size in by_path.items():
                key = storage_key(path, dirs)
                reserved[key] = reserved.get(key, 0) + size
        return facts, tuple(self._host.bridges()), reserved

    async def prepare(self, domain_xml: str, disks: list[DiskPlan], mapping: HostMapping, storage: StorageMode,
                      ttl_s: int, migration_id: str, dry_run: bool) -> PrepareOutcome:
        """Check this host, then (unless ``dry_run``) create the images and record them.

        Refused (nothing created) with the first problem's error type, the message listing all.
        """
        async with self._lock:
            try:
                parsed, nics = parse_domain(domain_xml), parse_nics(domain_xml)
            except InvalidArgument:
                parsed, nics = None, []
            plans = resolve_plans(domain_xml if parsed else "", disks, storage, mapping)
            snapshot = await self._snapshot(parsed, nics, plans)
            problems = check_target(domain_xml, plans, mapping, storage, snapshot)
            try:
                destination_xml = rewrite_for_target(domain_xml, mapping, plans)
            except InvalidArgument:
                destination_xml = ""  # already among the problems
            if dry_run:
                return PrepareOutcome("", destination_xml, tuple(plans), (), None, tuple(problems))
            if problems:
                raise refusal(problems)
            assert parsed is not None  # no problems: the XML parsed
            return await self._create(parsed, plans, destination_xml, ttl_s or self._ttl_s, migration_id)

    async def _create(self, parsed: ParsedDomain, plans: list[DiskPlan], destination_xml: str, ttl_s: int,
                      migration_id: str) -> PrepareOutcome:
        now = self._clock()
        record = PrepareRecord(prepare_id=self._new_id(), domain_name=parsed.name, domain_uuid=parsed.uuid,
                               created=(), created_at=now, expires_at=now + timedelta(seconds=ttl_s),
                               migration_id=migration_id)
        reserved = {p.destination: required_bytes(p) for p in plans if p.copy}
        created: list[str] = []
        try:
            self._store.save(record, reserved)
            for p in plans:
                if not p.copy:
                    continue
                created.append(p.destination)  # intent first: a crash from here on still cleans up
                self._store.save(replace(record, created=tuple(created)), reserved)
                try:
                    await asyncio.to_thread(self._host.create_image, p.destination, fmt=p.format,
                                            virtual_size=p.virtual_size, backing_file=p.backing_file,
                                            backing_format=p.backing_format)
                except AlreadyExists:
                    created.pop()  # someone else's file appeared meanwhile: never remove it
                    raise
        except BaseException:
            await self._undo(replace(record, created=tuple(created)), reserved)
            raise
        log.info("prepared %s for %s: created %s", record.prepare_id, parsed.name, ", ".join(created) or "nothing")
        return PrepareOutcome(record.prepare_id, destination_xml, tuple(plans), tuple(created), record.expires_at)

    async def _undo(self, record: PrepareRecord, reserved: Mapping[str, int]) -> list[str]:
        """Remove the record's files, then the record; what could not be removed stays recorded."""
        removed, left = [], []
        for path in record.created:
            try:
                if await asyncio.to_thread(self._host.remove, path):
                    removed.append(path)
            except FerryError:
                log.warning("could not remove %s (prepare %s); kept for a later cleanup", path,
                            record.prepare_id, exc_info=True)
                left.append(path)
        if left:
            self._store.save(replace(record, created=tuple(left)), {p: reserved.get(p, 0) for p in left})
            raise FailedPrecondition(
                f"could not remove {', '.join(left)} on {self._host_name}", reason="REMOVE_FAILED",
                hint=f"check the agent's log and the files' directory; CleanupIncoming {record.prepare_id} "
                     "retries")
        self._store.delete(record.prepare_id)
        return removed

    # ------------------------------------------------------------------ cleanup / commit

    async def _refuse_if_running_here(self, record: PrepareRecord) -> None:
        """Wait (bounded) for an incoming migration job to end; refuse while the domain is active."""
        deadline = self._clock() + self._incoming_wait
        while True:
            dom = await self._hv.find_domain(uuid=record.domain_uuid)
            if dom is None or not dom.state.is_active:
                return
            try:
                job_running = (await self._hv.job_stats(record.domain_uuid)).active
            except NotFound:
                return  # the failed incoming domain went away meanwhile
            if not job_running or self._clock() >= deadline:
                break
            await self._sleep(self._poll_s)
        hint = (f"the migration landed: commit it (CommitIncoming {record.prepare_id}) instead; to throw the "
                f"guest away, destroy and undefine {record.domain_name} on {self._host_name} first")
        if job_running:
            hint = (f"an incoming migration of {record.domain_name} is still running: cancel it on the source, "
                    "then clean up again")
        raise FailedPrecondition(
            f"{record.domain_name} ({record.domain_uuid}) is running on {self._host_name}; its disks stay",
            reason="DOMAIN_RUNNING_HERE", hint=hint)

    async def cleanup(self, prepare_id: str) -> CleanupOutcome:
        """Remove exactly what the prepare created, then its record. Idempotent."""
        _check_id(prepare_id)
        loaded = self._store.load(prepare_id)
        if loaded is None:
            return CleanupOutcome([], True)
        await self._refuse_if_running_here(loaded[0])
        async with self._lock:
            loaded = self._store.load(prepare_id)
            if loaded is None:
                return CleanupOutcome([], True)
            removed = await self._undo(*loaded)
        log.info("cleaned up prepare %s of %s: removed %s", prepare_id, loaded[0].domain_name,
                 ", ".join(removed) or "nothing")
        return CleanupOutcome(removed, False)

    async def commit(self, prepare_id: str) -> bool:
        """The domain landed: its images are its own now; forget the record. False: no such record."""
        _check_id(prepare_id)
        async with self._lock:
            return self._store.delete(prepare_id)

    def list(self) -> list[PrepareRecord]:
        return [r for r, _ in self._store.all()]

    async def sweep(self) -> list[str]:
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
