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

The rule is ``verdict`` (pure); :class:`LeaderFence` keeps the highest term and its file.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path

from ferry.agent.statefile import write_atomically
from ferry.errors import FailedPrecondition

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
    """The highest leader term seen, kept in ``path`` (written before the call it came with goes on)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.highest = _load(path)

    def observe(self, term: int) -> None:
        """A read: remember a newer term; never refuses."""
        if verdict(self.highest, term) is Verdict.NEWER:
            self._raise_to(term)

    def admit(self, term: int, call: str) -> None:
        """A change: raise FailedPrecondition (STALE_LEADER) for an older term; remember a newer one."""
        match verdict(self.highest, term):
            case Verdict.STALE:
                log.warning("refused %s from a deposed leader: term %d, current term %d", call, term, self.highest)
                raise FailedPrecondition(
                    f"{call} refused: it comes from a coordinator leader that was deposed (term {term}); "
                    f"the current leader's term is {self.highest}",
                    reason=STALE_LEADER,
                    hint="nothing to undo: the current leader drives the migration; a coordinator that gets this "
                    "must stop acting (it steps down)",
                )
            case Verdict.NEWER:
                self._raise_to(term)
            case Verdict.OK:
                pass

    def _raise_to(self, term: int) -> None:
        log.info("coordinator leader term %d (was %d)", term, self.highest)
        self.highest = term
        if self.path is not None:
            _store(self.path, term)


def _load(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return 0
    except (OSError, ValueError) as exc:  # unreadable: start over (the next leader's call raises it again)
        log.error("cannot read the leader term in %s (%s); starting from 0", path, exc)
        return 0


def _store(path: Path, term: int) -> None:
    """Atomically, durably: a crash leaves the old term or the new one. On the event loop: a new
    leader's term is written once per leader change, before its call goes on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, f"{term}\n")
