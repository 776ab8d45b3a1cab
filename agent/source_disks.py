"""RemoveSourceDisks: the source's local images after a copy migration landed elsewhere.

After a migration with storage copy succeeded and the target committed it, the images on the
source are garbage: nothing uses them, they take space, and they are in the way of migrating
the domain back (the target-side check FILE_IN_THE_WAY). The coordinator asks the source to
remove them; this module decides whether it may, and does.

Only what this agent itself recorded is ever removed: a Migrate that copies disks records the
domain and the source paths under its migration id (``source_records``, before the job starts);
RemoveSourceDisks names that migration id.

Refusals (nothing is removed when any applies):

* INVALID_ARGUMENT (MISSING_FIELD, PATH_INVALID, BAD_ID): no UUID or no migration id; a path
  that is not absolute and normalised (``..``, ``//``);
* FAILED_PRECONDITION DOMAIN_STILL_HERE: a domain with that UUID exists on this host, running
  or only defined -- the disks are (or may again be) its own;
* FAILED_PRECONDITION MIGRATION_NOT_RECORDED: this host recorded no migration with that id
  copying disks of that domain (a made-up UUID or id);
* FAILED_PRECONDITION MIGRATION_NOT_COMPLETED: the agent saw that migration's job fail (a job
  the Migrate stopped watching while it ran -- its caller went away, an abort did not end it --
  is recorded when it ends: until then, the domain's whereabouts decide);
* INVALID_ARGUMENT PATH_NOT_LOCAL: a path outside this host's local image directories, or on
  shared storage (another host's guest may use it: shared storage is never removed here);
* FAILED_PRECONDITION DISK_IN_USE: another domain on this host names the path as a disk or in
  its backing chain;
* FAILED_PRECONDITION PATH_PREPARED: the path is an image prepared for an incoming migration;
* FAILED_PRECONDITION PATH_NOT_RECORDED: the migration did not copy that path;
* the host's own confinement (``HostSystem.remove``): a symbolic link below the image directory
  (PATH_SYMLINK) is never followed.

Removing is idempotent: a path already gone is reported as such.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ferry.agent.source_records import Outcome, SourceRecord, SourceRecords
from ferry.errors import FailedPrecondition, InvalidArgument, clip
from ferry.model import DomainInfo, PrepareRecord
from ferry.paths import not_local
from ferry.ports import HostSystem, Hypervisor
from ferry.validate import ident

log = logging.getLogger(__name__)


def invalid_paths(paths: Iterable[str]) -> list[str]:
    """Paths that are not absolute and normalised (so a prefix check means what it says).

    >>> invalid_paths(["/var/lib/libvirt/images/a.qcow2", "images/b", "/var/lib/../../etc/passwd", "/x//y"])
    ['images/b', '/var/lib/../../etc/passwd', '/x//y']
    """
    return [p for p in paths if not p.startswith("/") or os.path.normpath(p) != p or p.startswith("//")]


def in_use(paths: Iterable[str], domains: Iterable[DomainInfo]) -> dict[str, str]:
    """Path -> the domain that names it (as a disk or in a disk's backing chain)."""
    wanted = set(paths)
    out: dict[str, str] = {}
    for dom in domains:
        for disk in dom.disks:
            for path in (disk.source, *disk.backing_chain):
                if path in wanted:
                    out.setdefault(path, dom.name)
    return out


@dataclass(frozen=True)
class Removal:
    removed: tuple[str, ...]
    already_gone: tuple[str, ...]


class SourceDisks:
    """RemoveSourceDisks over the Hypervisor and HostSystem ports (see the module docstring)."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        host: HostSystem,
        *,
        host_name: str,
        records: SourceRecords,
        prepared: Callable[[], list[PrepareRecord]] = list,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._hv = hypervisor
        self._host = host
        self._host_name = host_name
        self._records = records
        self._prepared = prepared
        self._clock = clock
        self._lock = asyncio.Lock()
        self._settling: set[asyncio.Task[None]] = set()  # ends of left-running jobs being recorded

    # ------------------------------------------------------------------ what a Migrate copies

    async def migration_started(self, migration_id: str, domain: DomainInfo, paths: Sequence[str]) -> None:
        """Record, before the job starts, which of the domain's disks the migration copies."""
        if migration_id and paths:
            record = SourceRecord(migration_id, domain.uuid, domain.name, tuple(dict.fromkeys(paths)), self._clock())
            await asyncio.to_thread(self._records.save, record)

    async def migration_ended(self, migration_id: str, *, completed: bool) -> None:
        """How the job ended, as this agent saw it (a job it stopped watching stays RUNNING:
        ``migration_left_running``)."""
        if migration_id:
            outcome = Outcome.COMPLETED if completed else Outcome.FAILED
            await asyncio.to_thread(self._records.ended, migration_id, outcome, self._clock())

    def migration_left_running(self, migration_id: str, end: asyncio.Future[bool]) -> None:
        """The Migrate stopped watching a job that still runs (``Control.left_running``): the
        record stays RUNNING until ``end``, then says how it ended -- unless RemoveSourceDisks
        removed the paths meanwhile (the domain had left). A job whose end nobody knows (``end``
        cancelled) stays RUNNING."""
        if not migration_id:
            return

        def ended(end: asyncio.Future[bool]) -> None:
            if end.cancelled():
                return
            task = asyncio.get_running_loop().create_task(self._settle(migration_id, completed=end.result()))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)

        end.add_done_callback(ended)

    async def _settle(self, migration_id: str, *, completed: bool) -> None:
        outcome = Outcome.COMPLETED if completed else Outcome.FAILED
        try:
            async with self._lock:  # (not between a removal's checks and its record)
                if await asyncio.to_thread(self._records.settled, migration_id, outcome, self._clock()):
                    log.info("left-running migration %s: recorded %s", migration_id, outcome.value)
        except OSError as exc:
            log.warning("cannot record how left-running migration %s ended (%s): %s", migration_id, outcome.value, exc)

    async def sweep(self) -> list[str]:
        """Forget records of migrations started long ago (``source_records.KEEP``)."""
        return await asyncio.to_thread(self._records.sweep, self._clock())

    # ------------------------------------------------------------------ RemoveSourceDisks

    async def remove(self, domain_uuid: str, paths: Sequence[str], *, migration_id: str = "") -> Removal:
        if not domain_uuid:
            raise InvalidArgument(
                "domain_uuid is required", reason="MISSING_FIELD", hint="name the migrated domain by its UUID"
            )
        paths = list(dict.fromkeys(paths))
        if not paths:
            return Removal((), ())
        bad = invalid_paths(paths)
        if bad:
            raise InvalidArgument(
                f"not absolute, normalised paths: {clip(', '.join(bad))}",
                reason="PATH_INVALID",
                hint="pass the disk paths exactly as the domain's XML named them on this host",
            )
        if not migration_id:
            raise InvalidArgument(
                "migration_id is required",
                reason="MISSING_FIELD",
                hint="name the migration that copied the disks: only disks this host recorded for it are removed",
            )
        ident(migration_id, "migration_id")
        async with self._lock:
            record = await self._refuse(domain_uuid, paths, migration_id)
            others = [p for p in paths if p not in record.paths]
            if others:
                raise FailedPrecondition(
                    f"migration {migration_id} did not copy {clip(', '.join(others))} from {self._host_name}",
                    reason="PATH_NOT_RECORDED",
                    hint=f"only the disks it copied are removed: {clip(', '.join(record.paths))}",
                )
            removed: list[str] = []
            gone: list[str] = []
            for path in paths:
                (removed if await asyncio.to_thread(self._host.remove, path) else gone).append(path)
            await asyncio.to_thread(self._records.ended, migration_id, Outcome.REMOVED, self._clock())
        log.info(
            "removed the source disks of %s%s on %s: %s%s",
            domain_uuid,
            f" (migration {migration_id})" if migration_id else "",
            self._host_name,
            ", ".join(removed) or "none",
            f"; already gone: {', '.join(gone)}" if gone else "",
        )
        return Removal(tuple(removed), tuple(gone))

    def _recorded(self, migration_id: str, uuid: str) -> SourceRecord:
        record = self._records.load(migration_id)
        if record is None or record.domain_uuid != uuid:
            raise FailedPrecondition(
                f"{self._host_name} recorded no migration {migration_id} copying disks of {clip(uuid, 64)}",
                reason="MIGRATION_NOT_RECORDED",
                hint="only disks a Migrate from this host copied, recorded under its migration id, are removed; "
                "remove other files by hand",
            )
        if record.outcome is Outcome.FAILED:
            raise FailedPrecondition(
                f"migration {migration_id} of {record.domain_name} failed on {self._host_name}; its disks stay",
                reason="MIGRATION_NOT_COMPLETED",
                hint="the domain did not leave this host with that migration: check where it runs",
            )
        return record

    async def _refuse(self, uuid: str, paths: list[str], migration_id: str) -> SourceRecord:
        """The migration's record, when nothing refuses the removal (the module doc's order)."""
        here = await self._hv.find_domain(uuid=uuid)
        if here is not None:
            state = "running" if here.state.is_active else "defined, not running"
            raise FailedPrecondition(
                f"{here.name} ({clip(uuid, 64)}) still exists on {self._host_name} ({state}); its disks stay",
                reason="DOMAIN_STILL_HERE",
                hint=f"the domain did not (only) leave {self._host_name}: check where it runs (virsh list --all "
                f"on each host); if the copy here is stale, undefine it (virsh undefine {here.name}) first",
            )
        record = self._recorded(migration_id, uuid)
        dirs = await asyncio.to_thread(self._host.storage_dirs)
        outside = await asyncio.to_thread(not_local, paths, dirs, self._host.is_shared)
        if outside:
            local = ", ".join(d.path for d in dirs if not d.shared) or "none configured"
            raise InvalidArgument(
                f"not in a local image directory of {self._host_name}: {clip(', '.join(outside))}",
                reason="PATH_NOT_LOCAL",
                hint=f"only images under the local image_dirs ({local}) are removed; shared storage never is "
                "(remove such files by hand once no host uses them)",
            )
        used = in_use(paths, await self._hv.list_domains())
        if used:
            raise FailedPrecondition(
                "in use on " + self._host_name + ": " + clip(", ".join(f"{p} by {d}" for p, d in used.items())),
                reason="DISK_IN_USE",
                hint="these files belong to other domains here: leave them",
            )
        prepared = {p: r.prepare_id for r in self._prepared() for p in r.created if p in paths}
        if prepared:
            raise FailedPrecondition(
                f"prepared for an incoming migration on {self._host_name}: "
                + clip(", ".join(f"{p} (prepare {i})" for p, i in prepared.items())),
                reason="PATH_PREPARED",
                hint="an incoming migration will use these images: let it finish, or clean it up first",
            )
        return record
