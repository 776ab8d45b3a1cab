"""Operators' hands on a running migration: tune it, switch it to post-copy, force it to complete.

Any replica serves these (not only the leader): the request goes straight to the source's agent
(TuneMigration, which reads libvirt's values back after the change), then the record gets a
history note and an action saying what was asked, by whom, and what libvirt now holds -- by a
compare-and-set on the record, as a cancel does. The leader's engine is not involved: the
running job is the agent's, and a force-complete is carried out by the agent's driver as a step
of the policy (it reports that step in the Migrate stream like any other).

Who asked: the caller's identity as the server sees it (``requested_by``; the peer's certificate
identity once mutual TLS names callers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from ferry import keys
from ferry.errors import FailedPrecondition, InvalidArgument
from ferry.model import PolicyAction
from ferry.ports import TuneResult
from ferry.registry import HostDirectory
from ferry.store import Conflict, Store

from .convert import phase_word
from .phases import Phase
from .record import MigrationRecord, encode, note, with_action
from .submission import must_read_migration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveRequest:
    """What an operator asks of a running migration."""

    max_downtime_ms: int | None = None
    bandwidth_mibps: int | None = None
    start_postcopy: bool = False
    force_complete: bool = False

    @property
    def verb(self) -> str:
        """The action's name in the record: force-complete, postcopy or tune."""
        if self.force_complete:
            return "force-complete"
        if self.start_postcopy:
            return "postcopy"
        return "tune"

    @property
    def empty(self) -> bool:
        return (
            self.max_downtime_ms is None
            and self.bandwidth_mibps is None
            and not self.start_postcopy
            and not self.force_complete
        )


def check_request(r: MigrationRecord, req: LiveRequest) -> None:
    """Refuse what cannot be done to this record (pure): nothing asked, no job running, a
    post-copy the policy does not allow.

    >>> from datetime import UTC
    >>> r = MigrationRecord("m-1", "vm", "u", "h1", "h2", datetime(2026, 1, 1, tzinfo=UTC))
    >>> try:
    ...     check_request(r, LiveRequest(max_downtime_ms=500))
    ... except FailedPrecondition as e:
    ...     print(e.reason)
    MIGRATION_NOT_RUNNING
    """
    if req.empty:
        raise InvalidArgument(
            "nothing to change",
            reason="NOTHING_TO_DO",
            hint="give --max-downtime and/or --bandwidth, or use force-complete / postcopy",
        )
    if r.phase is not Phase.MIGRATING or not r.migration_started:
        raise FailedPrecondition(
            f"migration {r.id} is {phase_word(r.phase)}, not migrating: there is no job to change",
            reason="MIGRATION_NOT_RUNNING",
            hint=f"see `ferry migrations show {r.id}`",
        )
    if req.start_postcopy and r.policy is not None and not r.policy.allows_postcopy:
        raise FailedPrecondition(
            f"policy {r.policy.label} of migration {r.id} does not allow post-copy (the job was started without it)",
            reason="POSTCOPY_NOT_ALLOWED",
            hint=f"`ferry migrations force-complete {r.id}` pauses the guest to finish instead",
        )


def describe(req: LiveRequest, by: str, result: TuneResult) -> str:
    """The history note for a request carried out.

    >>> describe(LiveRequest(max_downtime_ms=500), "alice", TuneResult(500, 32, "max downtime 500 ms"))
    'tune by alice: max downtime 500 ms (libvirt reads max downtime 500 ms, bandwidth 32 MiB/s)'
    """
    return (
        f"{req.verb} by {by}: {result.done} "
        f"(libvirt reads max downtime {result.max_downtime_ms} ms, bandwidth {result.bandwidth_mibps} MiB/s)"
    )


class LiveOps:
    """Changing running migrations (see the module docstring)."""

    def __init__(self, store: Store, hosts: HostDirectory, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.hosts = hosts
        self._clock = clock

    async def control(
        self, migration_id: str, req: LiveRequest, *, requested_by: str
    ) -> tuple[MigrationRecord, TuneResult]:
        """Carry ``req`` out on the source's agent and record it. Raises NotFound
        (MIGRATION_UNKNOWN), InvalidArgument (NOTHING_TO_DO), FailedPrecondition
        (MIGRATION_NOT_RUNNING, POSTCOPY_NOT_ALLOWED) and the agent's errors."""
        record = await must_read_migration(self.store, migration_id)
        check_request(record, req)
        result = await self.hosts.client(record.source_host).tune_migration(
            record.vm_uuid or record.vm,
            max_downtime_ms=req.max_downtime_ms,
            bandwidth_mibps=req.bandwidth_mibps,
            start_postcopy=req.start_postcopy,
            force_complete=req.force_complete,
            requested_by=requested_by,
        )
        text = describe(req, requested_by, result)
        log.info("migration %s: %s", record.id, text)
        while True:
            now = self._clock()
            updated = with_action(note(record, now, text), now, PolicyAction(req.verb, text, 0, requested_by))
            try:
                revision = await self.store.update(keys.migration_key(record.id), encode(updated), record.revision)
            except Conflict:
                record = await must_read_migration(self.store, migration_id)
                continue
            return replace(updated, revision=revision), result
