"""The leader's bandwidth sharing: hosts' migration budgets applied to the running jobs (see
``bandwidth.py`` for the rule).

The engine shows it every version of every record (``seen``). A record entering Migrating is a new
flow, one leaving it (finishing, rolling back, final) is gone; either recomputes the shares. The
starting job's Migrate call carries its share (``start_share``); each running job whose share
changed is tuned on its source's agent (TuneMigration: libvirt's migrate-setspeed) and the record
gets the note as an action by the coordinator ("bandwidth 50 MiB/s: the migration budget of host1,
100 MiB/s out, shared by 2 migrations"). A tune that fails is logged and tried again at the next
change; one sent before the job reported progress is sent again then (the Migrate call may have
started it at its earlier share). An operator's ``ferry migrations tune --bandwidth`` becomes the
job's own cap. A new leader applies the shares of the jobs it finds running.

Nothing happens, and nothing is computed, without a budget in the config.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from ferry.errors import FerryError
from ferry.model import MigrationPhase, PolicyAction

from .bandwidth import Flow, fixed_share, shares, why
from .phases import Phase
from .record import MigrationRecord

log = logging.getLogger(__name__)

BY = "ferry-coordinator"
ACTION = "bandwidth"
_TUNED = re.compile(r"\bbandwidth (\d+) MiB/s")
_MEMORY_PHASES = frozenset({MigrationPhase.PRECOPY, MigrationPhase.POSTCOPY})


def flowing(r: MigrationRecord | None) -> bool:
    """Its job runs (or is starting): the record is in Migrating."""
    return r is not None and r.phase is Phase.MIGRATING


def own_cap(r: MigrationRecord) -> int:
    """The job's own cap in MiB/s (0: none): the last operator's tune of its bandwidth, else its
    policy's (a request's ``--bandwidth`` is in the policy)."""
    for entry in reversed(r.actions):
        a = entry.action
        if a.action == "tune" and (m := _TUNED.search(a.reason.split(" (libvirt reads")[0])):
            return int(m.group(1))
    return _policy_cap(r)


def _policy_cap(r: MigrationRecord) -> int:
    return r.policy.bandwidth_mibps if r.policy is not None else r.options.bandwidth_mibps


def flow_of(r: MigrationRecord, budget: Callable[[str], int], slots: tuple[int, int]) -> Flow:
    """The record's job as a flow: a job copying disks through a host with a budget is a fixed
    one, at its hosts' budgets over their ``slots`` and its policy's cap, whatever an operator tuned
    later (that changes its memory's speed only): so a new leader finds the speed it started at.
    Once its memory moves (the disks copied), it shares like any other job."""
    if r.copied_disks and not memory_moves(r) and (budget(r.source_host) > 0 or budget(r.target_host) > 0):
        fixed = fixed_share(budget, r.source_host, r.target_host, _policy_cap(r), slots)
        return Flow(r.id, r.source_host, r.target_host, fixed, fixed=True)
    return Flow(r.id, r.source_host, r.target_host, own_cap(r))


def planned_use(
    records: Iterable[MigrationRecord], budget: Callable[[str], int], slots: tuple[int, int]
) -> dict[tuple[str, str], int]:
    """MiB/s the rule gives the running jobs through each host with a budget, by (host, direction):
    what any replica can tell from the records (``ListHosts``); the leader's metrics show what it
    set (``BandwidthSharing.use``), the same once its tunes are through."""
    flows = [flow_of(r, budget, slots) for r in records if flowing(r)]
    got = shares(flows, budget)
    return _through(flows, got, budget)


def _through(flows: Iterable[Flow], got: Mapping[str, int], budget: Callable[[str], int]) -> dict[tuple[str, str], int]:
    used: dict[tuple[str, str], int] = {}
    for f in flows:
        for host, direction in ((f.source, "outbound"), (f.target, "inbound")):
            if budget(host) > 0:
                used[(host, direction)] = used.get((host, direction), 0) + got.get(f.id, 0)
    return used


def memory_moves(r: MigrationRecord) -> bool:
    """The job reported its memory phase (pre- or post-copy): any disk copy is done, and libvirt
    changes the memory's speed when asked (the mirror only keeps the guest's new writes in step,
    at the speed it started at)."""
    return r.progress is not None and r.progress.phase in _MEMORY_PHASES


class BandwidthSharing:
    def __init__(
        self,
        budget: Callable[[str], int],
        slots: tuple[int, int],
        tune: Callable[[MigrationRecord, int], Coroutine[Any, Any, object]],
        tell: Callable[[str, PolicyAction], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
    ) -> None:
        self.budget = budget  # a host's budget in MiB/s, 0: none
        self.slots = slots  # (per_host_outbound, per_host_inbound): a disk copy's fixed share
        self._tune = tune  # TuneMigration(bandwidth) on the record's source
        self._tell = tell  # the note to the record's runner
        self._spawn = spawn
        self.flows: dict[str, Flow] = {}
        self.records: dict[str, MigrationRecord] = {}
        self.applied: dict[str, int] = {}  # what each job was started at or last tuned to
        self.shares: dict[str, int] = {}
        self._early: set[str] = set()  # tuned before its job reported progress

    def seen(self, old: MigrationRecord | None, new: MigrationRecord) -> None:
        was, now = new.id in self.flows, flowing(new)
        if not was and not now:
            return
        if not now:
            del self.flows[new.id], self.records[new.id]
            self.applied.pop(new.id, None)
            self.shares.pop(new.id, None)
            self._early.discard(new.id)
            self._share(starting=None)
            return
        self.records[new.id] = new
        # a job copying disks keeps the speed it started at, whatever is tuned later (its copy's),
        # until its memory moves
        flow = self._flow(new)
        if was and flow.fixed and self.flows[new.id].fixed:
            flow = self.flows[new.id]
        if was and flow == self.flows[new.id]:
            if new.id in self._early and new.progress is not None:
                # tuned before its job ran: the Migrate call may have set its start share after
                self._early.discard(new.id)
                self._apply(new.id, starting=None, again=True)
            return
        self.flows[new.id] = flow
        # entering Migrating in this engine: its Migrate call follows and carries the share; a job
        # found running (a new leader's list, the watch) is tuned like the others
        entering = not was and old is not None and old.phase is not Phase.MIGRATING
        self._share(starting=new.id if entering else None)

    def _flow(self, r: MigrationRecord) -> Flow:
        return flow_of(r, self.budget, self.slots)

    def use(self) -> dict[tuple[str, str], int]:
        """MiB/s set for the running jobs through each host with a budget, by (host, direction)."""
        return _through(self.flows.values(), self.applied, self.budget)

    def start_share(self, migration_id: str) -> int | None:
        """The bandwidth to start this job at; None: no budget touches it (its policy's cap)."""
        return self.applied.get(migration_id)

    def _touched(self, f: Flow) -> bool:
        return self.budget(f.source) > 0 or self.budget(f.target) > 0

    def _share(self, starting: str | None) -> None:
        self.shares = shares(self.flows.values(), self.budget)
        for fid in self.flows:
            self._apply(fid, starting)

    def _apply(self, fid: str, starting: str | None, *, again: bool = False) -> None:
        f, share = self.flows[fid], self.shares.get(fid, 0)
        if not self._touched(f) or (share == self.applied.get(fid) and not again):
            return
        self.applied[fid] = share
        text = why(f, self.shares, self.flows.values(), self.budget, self.slots)
        if fid == starting or f.fixed:  # its Migrate call carries the share (a fixed one keeps it)
            self._tell(fid, PolicyAction(ACTION, text, 0, BY))
            return
        r = self.records[fid]
        if r.progress is None:
            self._early.add(fid)
        self._spawn(self._tuned(r, share, text, tell=not again), f"bandwidth of {fid}")

    async def _tuned(self, r: MigrationRecord, share: int, text: str, *, tell: bool) -> None:
        try:
            await self._tune(r, share)
        except FerryError as err:
            log.warning("migration %s: could not set %s on %s: %s: %s", r.id, text, r.source_host, err.reason, err)
            if self.applied.get(r.id) == share:
                del self.applied[r.id]  # tried again at the next change or progress
            return
        log.info("migration %s: %s", r.id, text)
        if tell and r.id in self.flows:
            self._tell(r.id, PolicyAction(ACTION, text, 0, BY))
