"""Fencing deposed coordinator leaders: the agent refuses changes from an older leader term.

A coordinator leads while its lease holds, but a leader that was paused (SIGSTOP, a long GC or
swap stall, a VM freeze) past its lease may still have calls queued when it runs again: by then
another coordinator leads and may have decided otherwise (rolled the migration back, started
another one). The leader's *term* -- the create revision of its ``leader`` key in etcd, which
grows with every new leader -- travels with every agent call the engine makes
(``leader_term`` in the requests). The agent keeps the highest term it has seen, in its state
dir so that a restart does not forget it, and:

* a change (PrepareIncoming, CleanupIncoming, CommitIncoming, Migrate, AbortMigration,
  TuneMigration, RemoveSourceDisks) from an older term is refused: FailedPrecondition,
  reason STALE_LEADER, before anything is touched;
* a read (GetDomain, GetJob, ListPrepares, a PrepareIncoming dry run) is never refused, but a
  newer term it carries is remembered: the new leader's first look at a host fences the old one
  there, before it decides anything from what it saw;
* term 0 is a call from outside the leader's engine (an operator's tool, a test): never refused.

Terms are etcd revisions, and etcd restored from a backup (disaster recovery) starts again below
them: the leader elected after a restore has a lower term than the one the agents last saw, and
every agent would refuse it for good. So before refusing, an agent that can read etcd (it
registers there) asks whose term the ``leader`` key holds now: when it is the caller's, etcd's
history went back, and the agent follows etcd -- the caller leads -- and keeps its term.

The rule is ``verdict`` (pure); :class:`LeaderFence` keeps the highest term and its file.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from ferry.agent.statefile import write_atomically
from ferry.errors import FailedPrecondition, FerryError

log = logging.getLogger(__name__)

STALE_LEADER = "STALE_LEADER"


class Verdict(enum.Enum):
    OK = "ok"  # not newer, not older (or no term: not a leader's call)
    NEWER = "newer"  # a new leader: remember its term
    STALE = "stale"  # a deposed leader's call


def verdict(highest: int, term: int) -> Verdict:
    """What a call with ``term`` is, given the highest term seen.

    >>> [verdict(5, t).value for t in (0, 3, 5, 7)]
    ['ok', 'stale', 'ok', 'newer']
    """
    if term <= 0 or term == highest:
        return Verdict.OK
    return Verdict.NEWER if term > highest else Verdict.STALE


class LeaderFence:
    """The highest leader term seen, kept in ``path`` (written before the call it came with goes on).
    ``current_term``: the term etcd's ``leader`` key holds now (None: no leader); set when the agent
    registers in etcd. After etcd's history went back, ``ceiling`` keeps the highest term from
    before: a term up to it is a leader from before the restore unless etcd names it now."""

    def __init__(self, path: Path | None, current_term: Callable[[], Awaitable[int | None]] | None = None) -> None:
        self.path = path
        self.highest, self.ceiling = _load(path)
        self.current_term = current_term

    def observe(self, term: int) -> None:
        """A read: remember a newer term; never refuses."""
        if verdict(self.highest, term) is Verdict.NEWER and term > self.ceiling:
            self._raise_to(term)

    async def admit(self, term: int, call: str) -> None:
        """A change: raise FailedPrecondition (STALE_LEADER) for an older term, unless etcd's leader
        key holds that term now (etcd restored from a backup: its revisions started again lower);
        remember a newer one (one up to ``ceiling`` only when etcd names it)."""
        match verdict(self.highest, term):
            case Verdict.STALE if await self._leads_now(term):
                log.warning(
                    "coordinator leader term went back from %d to %d, and etcd's leader key holds %d: etcd's "
                    "history went back (restored from a backup?); following the leader etcd names",
                    self.highest,
                    term,
                    term,
                )
                self._set(term, max(self.ceiling, self.highest))
            case Verdict.NEWER if term > self.ceiling:
                self._raise_to(term)
            case Verdict.NEWER if await self._leads_now(term):
                self._set(term, self.ceiling)
            case Verdict.STALE | Verdict.NEWER:
                current = self.highest
                log.warning("refused %s from a deposed leader: term %d, current term %d", call, term, current)
                raise FailedPrecondition(
                    f"{call} refused: it comes from a coordinator leader that was deposed (term {term}); "
                    f"the current leader's term is {current}",
                    reason=STALE_LEADER,
                    hint="nothing to undo: the current leader drives the migration; a coordinator that gets this "
                    "must stop acting (it steps down)",
                )
            case Verdict.OK:
                pass

    async def _leads_now(self, term: int) -> bool:
        if self.current_term is None:
            return False
        try:
            return await self.current_term() == term
        except FerryError as exc:  # etcd not answering: refuse, as without etcd
            log.info("cannot read etcd's leader key (%s): refusing term %d", exc.reason, term)
            return False

    def _raise_to(self, term: int) -> None:
        log.info("coordinator leader term %d (was %d)", term, self.highest)
        self._set(term, 0)  # above any term from before a restore: the ceiling has done its work

    def _set(self, term: int, ceiling: int) -> None:
        self.highest, self.ceiling = term, ceiling
        if self.path is not None:
            _store(self.path, term, ceiling)


def _load(path: Path | None) -> tuple[int, int]:
    """(highest, ceiling) from the file: "TERM" or "TERM CEILING"."""
    if path is None:
        return 0, 0
    try:
        words = path.read_text().split()
        return (int(words[0]) if words else 0), (int(words[1]) if len(words) > 1 else 0)
    except FileNotFoundError:
        return 0, 0
    except (OSError, ValueError) as exc:  # unreadable: start over (the next leader's call raises it again)
        log.error("cannot read the leader term in %s (%s); starting from 0", path, exc)
        return 0, 0


def _store(path: Path, term: int, ceiling: int = 0) -> None:
    """Atomically, durably: a crash leaves the old term or the new one. On the event loop: a new
    leader's term is written once per leader change, before its call goes on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, f"{term} {ceiling}\n" if ceiling else f"{term}\n")
