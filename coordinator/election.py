"""Leader election on the Store port: exactly one coordinator acts at a time.

The leader lock is the key ``leader`` created with create-if-absent under a lease the candidate
holds; its value names the candidate (id and address, JSON). The leader renews the lease every
ttl/3 and **steps down at once** when a renewal has not succeeded before the lease could have
expired: it never acts as leader after that instant. Non-leaders watch the key (and re-read it
every ttl, in case their watch hangs on a stopped member) and campaign when it disappears.

Why measuring from the *send* time is safe: etcd extends a lease to "now + ttl" when it
*receives* the keepalive, which is after we sent it, so the lease cannot expire before
``sent + ttl``. We stop ``safety_s`` earlier to absorb our own scheduling delays. Etcd only ever
lengthens leases on its own leader changes, never shortens them.

Crash vs hand-over: cancelling :meth:`Election.run` is a crash (this process stops acting at
once, the lease is left to expire, another candidate takes over after ttl). :meth:`resign` is
the clean hand-over: duties are stopped, ``on_demoted`` runs, then the lease is revoked so the
next candidate takes over immediately. A leader that stepped down because the store stopped
answering revokes its lease once the store answers again: a restarted etcd member restores every
lease with a full ttl, so the old key would otherwise keep every candidate waiting that long.

The timing rules are pure (:class:`LeaseTiming`) and unit-tested with tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ferry.errors import AlreadyExists, FerryError
from ferry.keys import LEADER_KEY
from ferry.store import Entry, EventKind, LeaseLost, Resync, Store

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Callback = Callable[[], Coroutine[Any, Any, None]]  # an async function: on_elected runs as a task


@dataclass(frozen=True)
class Candidate:
    """Who leads (or wants to): a stable id and the address other components reach it at."""

    id: str
    address: str

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "address": self.address}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Candidate:
        """The candidate named by a leader key's value; an unreadable value is an unknown candidate."""
        try:
            doc = json.loads(data)
            return cls(str(doc["id"]), str(doc.get("address", "")))
        except (ValueError, KeyError, TypeError):
            return cls("?", "")


@dataclass(frozen=True)
class LeaseTiming:
    """When a lease holder renews and until when it may act (pure; times on one monotonic clock).

    >>> t = LeaseTiming(ttl_s=9, safety_s=1)
    >>> t.next_renewal(renewal_sent_at=100)    # every ttl/3
    103.0
    >>> t.deadline(renewal_sent_at=100)        # the lease lives >= 109; we stop at 108
    108
    >>> t.still_leader(renewal_sent_at=100, now=107.9), t.still_leader(renewal_sent_at=100, now=108)
    (True, False)
    >>> t.retry_at(now=105, renewal_sent_at=100)   # a renewal failed at 105: retry soon
    105.9
    >>> t.retry_at(now=107.5, renewal_sent_at=100) is None   # no time left: step down
    False
    >>> t.retry_at(now=108, renewal_sent_at=100) is None
    True
    """

    ttl_s: float
    safety_s: float

    @classmethod
    def for_ttl(cls, ttl_s: float) -> LeaseTiming:
        """Default safety margin: a tenth of the TTL, at least 0.2 s."""
        return cls(ttl_s, max(0.2, ttl_s / 10))

    def deadline(self, renewal_sent_at: float) -> float:
        """The last instant the holder may act after a successful renewal sent at ``renewal_sent_at``."""
        return renewal_sent_at + self.ttl_s - self.safety_s

    def still_leader(self, renewal_sent_at: float, now: float) -> bool:
        return now < self.deadline(renewal_sent_at)

    def next_renewal(self, renewal_sent_at: float) -> float:
        return renewal_sent_at + self.ttl_s / 3

    def retry_at(self, now: float, renewal_sent_at: float) -> float | None:
        """After a failed renewal at ``now``: when to try again, or None to step down now."""
        deadline = self.deadline(renewal_sent_at)
        if now >= deadline:
            return None
        return min(now + self.ttl_s / 10, deadline)


@dataclass
class _Term:
    """One period of leadership (mutable; owned by the run loop)."""

    lease: int
    key_revision: int  # create revision of our leader key
    renewal_sent_at: float
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    demoted: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()


class Election:
    """One candidate. ``await run(on_elected, on_demoted)`` campaigns, leads and campaigns again.

    ``on_elected`` runs as a task while we lead (it may run the leader's duties until cancelled);
    on step-down it is cancelled if still running, then ``on_demoted`` is awaited.
    """

    def __init__(
        self,
        store: Store,
        candidate_id: str,
        address: str,
        *,
        ttl_s: int = 10,
        clock: Clock = time.monotonic,
        key: str = LEADER_KEY,
        timing: LeaseTiming | None = None,
    ) -> None:
        self.store = store
        self.me = Candidate(candidate_id, address)
        self.ttl_s = ttl_s
        self.key = key
        self.timing = timing or LeaseTiming.for_ttl(ttl_s)
        self._clock = clock
        self._term: _Term | None = None
        self._resigned = False
        self._campaign_task: asyncio.Task[_Term] | None = None
        self._abandoned: int | None = None  # the lease of our ended term, not revoked (store down)
        self.last_outcome = "not started"
        self.observed: Candidate | None = None  # the leader last seen in the store

    # -- queries --------------------------------------------------------------------------------

    @property
    def term(self) -> int:
        """Our term while we lead: the create revision of our leader key, which grows with every
        new leader (0 when not leading). Agents refuse changes from an older term."""
        term = self._term
        return term.key_revision if term is not None else 0

    def is_leader(self) -> bool:
        """True only while our lease certainly still holds (decided on the clock, not on callbacks)."""
        term = self._term
        return (
            term is not None
            and not term.ended.is_set()
            and self.timing.still_leader(term.renewal_sent_at, self._clock())
        )

    async def leader(self) -> Candidate | None:
        """The current leader as the store says (None when there is none)."""
        entry = await self.store.get(self.key)
        self.observed = Candidate.decode(entry.value) if entry is not None else None
        return self.observed

    # -- the loop -------------------------------------------------------------------------------

    async def run(self, on_elected: Callback, on_demoted: Callback) -> None:
        """Campaign and lead until :meth:`resign` (returns) or cancellation (a crash)."""
        while not self._resigned:
            self._campaign_task = asyncio.create_task(self._campaign())
            try:
                term = await self._campaign_task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._resigned and current is not None and not current.cancelling():
                    return
                self._campaign_task.cancel()
                raise
            if self._resigned:
                await self._revoke_quietly(term.lease)
                return
            await self._lead(term, on_elected, on_demoted)

    async def resign(self) -> None:
        """Hand leadership over now (duties stopped, on_demoted run, lease revoked); stop campaigning."""
        self._resigned = True
        term = self._term
        if term is not None:
            term.end("resigned")
            await term.demoted.wait()
        elif self._campaign_task is not None and not self._campaign_task.done():
            self._campaign_task.cancel()

    # -- leading --------------------------------------------------------------------------------

    async def _lead(self, term: _Term, on_elected: Callback, on_demoted: Callback) -> None:
        self._term = term
        self.observed = self.me
        self.last_outcome = "elected"
        log.info("%s is leader (lease %x)", self.me.id, term.lease)
        duties = asyncio.create_task(on_elected())  # the leader's duties: cancelled on step-down
        duties.add_done_callback(lambda task: self._duties_ended(term, task))
        tasks = (asyncio.create_task(self._renew(term)), asyncio.create_task(self._watch_own_key(term)), duties)
        try:
            await term.ended.wait()
        except asyncio.CancelledError:
            term.end("cancelled")  # a crash: stop acting now, leave the lease to expire
            for task in tasks:
                task.cancel()
            self._term = None
            self.last_outcome = "cancelled while leader (lease left to expire)"
            raise
        try:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.last_outcome = f"stepped down: {term.end_reason}"
            log.warning("%s %s", self.me.id, self.last_outcome)
            await on_demoted()
        finally:
            # only now may a successor start; a lease the store could not revoke (it is down) is
            # revoked on the first campaign read once it answers: etcd restores a lease with a
            # full ttl when it restarts, and every candidate would wait that long for our old key
            if not await self._revoke_quietly(term.lease):
                self._abandoned = term.lease
            term.demoted.set()
            self._term = None

    def _duties_ended(self, term: _Term, duties: asyncio.Task[None]) -> None:
        """A leader whose duties crashed must not keep the lock; returning normally is fine."""
        if duties.cancelled() or duties.exception() is None:
            return
        log.error("%s: leader duties failed", self.me.id, exc_info=duties.exception())
        term.end(f"leader duties failed ({type(duties.exception()).__name__})")

    async def _renew(self, term: _Term) -> None:
        """Keep the lease alive; end the term the moment it could have expired."""
        next_at = self.timing.next_renewal(term.renewal_sent_at)
        while True:
            await self._sleep_until(min(next_at, self.timing.deadline(term.renewal_sent_at)))
            sent = self._clock()
            deadline = self.timing.deadline(term.renewal_sent_at)
            if sent >= deadline:
                term.end("no lease renewal succeeded before the lease could expire")
                return
            try:
                async with asyncio.timeout(deadline - sent):  # (wait_for can swallow a cancel on 3.11)
                    await self.store.keepalive(term.lease)
            except LeaseLost:
                term.end("lease lost")
                return
            except (FerryError, TimeoutError) as exc:
                retry = self.timing.retry_at(self._clock(), term.renewal_sent_at)
                if retry is None:
                    term.end("no lease renewal succeeded before the lease could expire")
                    return
                log.info("%s: lease renewal failed (%s); retrying", self.me.id, getattr(exc, "reason", "TIMEOUT"))
                next_at = retry
                continue
            term.renewal_sent_at = sent
            next_at = self.timing.next_renewal(sent)

    async def _watch_own_key(self, term: _Term) -> None:
        """End the term if our leader key is deleted or replaced (e.g. by an operator)."""
        while True:
            try:
                async for item in self.store.watch(self.key, term.key_revision + 1):
                    if isinstance(item, Resync):
                        ours = [e for e in item.entries if e.key == self.key]
                        if not ours or ours[0].create_revision != term.key_revision:
                            term.end("leader key gone")
                            return
                    elif item.entry.key == self.key:
                        term.end("leader key deleted" if item.kind is EventKind.DELETE else "leader key replaced")
                        return
                return  # the store was closed
            except FerryError:
                await asyncio.sleep(self.timing.ttl_s / 10)  # renewals decide about store loss

    # -- campaigning ----------------------------------------------------------------------------

    async def _campaign(self) -> _Term:
        """Wait until the key is free, then create it under a fresh lease. Returns our term."""
        backoff = 0.1
        while True:
            try:
                current = await self.store.get(self.key)
                if current is not None and self._abandoned is not None and current.lease == self._abandoned:
                    log.info("%s: revoking the lease of its own ended term (%x)", self.me.id, current.lease)
                    if await self._revoke_quietly(current.lease):
                        self._abandoned = None
                    continue
                if current is not None:
                    self.observed = Candidate.decode(current.value)
                    await self._wait_for_vacancy(current)
                    continue
                term = await self._try_acquire()
                if term is not None:
                    return term
                backoff = 0.1
            except FerryError as exc:
                log.info("%s: campaign: store error %s; retrying", self.me.id, exc.reason)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.ttl_s / 3)

    async def _try_acquire(self) -> _Term | None:
        sent = self._clock()  # the lease lives >= ttl from the grant request
        lease = await self.store.grant_lease(self.ttl_s)
        try:
            revision = await self.store.create(self.key, self.me.encode(), lease=lease)
        except (AlreadyExists, LeaseLost):
            await self._revoke_quietly(lease)
            return None
        except BaseException:
            await self._revoke_quietly(lease)
            raise
        return _Term(lease=lease, key_revision=revision, renewal_sent_at=sent)

    async def _wait_for_vacancy(self, current: Entry) -> None:
        """Return when the leader key is gone, or after ttl (the caller re-reads it)."""
        watch = self.store.watch(self.key, current.mod_revision + 1)
        try:
            async with asyncio.timeout(self.ttl_s):
                async for item in watch:
                    if isinstance(item, Resync):
                        if not any(e.key == self.key for e in item.entries):
                            return
                    elif item.entry.key == self.key:
                        if item.kind is EventKind.DELETE:
                            self.observed = None
                            return
                        self.observed = Candidate.decode(item.entry.value)
        except TimeoutError:
            return
        finally:
            await watch.aclose()

    # -- helpers --------------------------------------------------------------------------------

    async def _sleep_until(self, at: float) -> None:
        delay = at - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _revoke_quietly(self, lease: int) -> bool:
        """Best effort, bounded: revoking only speeds up the next election. Whether it was revoked."""
        with contextlib.suppress(FerryError, TimeoutError):
            async with asyncio.timeout(min(2.0, self.ttl_s / 2)):
                await self.store.revoke(lease)
                return True
        return False
