"""Driving a drain (pure): given the drain, its migrations and a way to place a VM, what to do now.

``step(drain, migrations, place, now, ...)`` is the whole policy; the leader's controller
(``drain_controller.py``) calls it after every change of the drain or of one of its migrations,
writes the new drain record by compare-and-set, then submits and cancels what the step says.

1. Items follow their migrations: Succeeded -> MOVED; Failed/RolledBack -> back to WAITING for
   another host (the target joins ``tried``), FAILED once ``max_attempts`` are used or when the
   migration's error needs an operator (the guest on two hosts, or on none); Cancelled by a user
   -> SKIPPED. A migration still queued for a target that was cordoned meanwhile is cancelled by
   the drain and its VM placed again. A MIGRATING item whose migration record does not exist yet (the leader stopped
   between writing the drain and creating it) is submitted again under the same id.
2. CANCELLING: every migration under way is cancelled, waiting items are SKIPPED; once nothing
   runs, CANCELLED. PAUSED: nothing new starts.
3. RUNNING: while fewer than ``slots`` items migrate, the longest waiting item first (longest
   processing time first keeps the makespan near its bound), each is placed: the best feasible
   host that is not busy (its inbound slots free, counting what is on its way, including what
   this step placed) gets it; if every feasible host is busy the item waits for the next step;
   if no host is feasible the item is FAILED with every host's blockers.
4. Nothing waiting or migrating: SUCCEEDED (every item moved, or left the host on its own: skipped
   ``VM_GONE``, the host is empty of it all the same) or INCOMPLETE. Before that, what came to the
   host after the drain listed its VMs (``Arrivals``; a cordon stops what is queued for the host,
   not a migration already under way to it): a VM it runs now that the drain does not list joins
   the drain as one more item, and while a migration into it may still land one, the drain waits.

Slots: ``min(max_parallel, the host's outbound limit)``. When the drain runs at the host's limit,
it keeps ``QUEUE_AHEAD`` more migration queued per slot: the admission, which enforces that limit,
starts one the moment a slot frees, instead of a step of the drain later (the gap would add up
over a drain's rounds; with one queued for all slots, two slots freeing together left one of them
idle until the drain's next step: in the 1,000-host simulation the gap's p95 was 1.8 s, 0.3 s with
one per slot). With a ``max_parallel`` below the limit nothing is queued ahead (the admission would
start it at once).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from ferry.model import Problem

from .drain import DrainItem, DrainRecord, DrainState, ItemState, with_state
from .phases import Phase
from .record import MigrationRecord, PhaseChange

MiB = 1 << 20
QUEUE_AHEAD = 1  # per slot
GONE = "VM_GONE"  # an item's VM is no longer on the drained host (its fresh inventory lacks it)

# a failed migration with one of these errors left the guest where only an operator can judge it
NEEDS_OPERATOR = frozenset(
    {
        "VM_ON_TWO_HOSTS",
        "VM_NOT_RUNNING",
        "VM_STARTED_ON_SOURCE",
        "FINISH_INCOMPLETE",
        "COMMIT_FAILED",
        "ROLLBACK_INCOMPLETE",
        "POSTCOPY_STUCK",
        "POSTCOPY_FAILED",
    }
)


@dataclass(frozen=True)
class Estimates:
    """How long a migration is expected to take: ``overhead_s + bytes / bandwidth``."""

    bandwidth_mibps: float = 100.0
    overhead_s: float = 3.0

    def seconds(self, memory_bytes: int, disk_bytes: int) -> float:
        """
        >>> Estimates(bandwidth_mibps=100, overhead_s=3).seconds(1024 * MiB, 1024 * MiB)
        23.48
        """
        return round(self.overhead_s + (memory_bytes + disk_bytes) / (self.bandwidth_mibps * MiB), 2)

    def within(self, budget_mibps: int, slots_n: int) -> Estimates:
        """The estimates when ``slots_n`` migrations at once share a host's budget (0: none).

        >>> Estimates(bandwidth_mibps=100).within(120, 2).bandwidth_mibps, Estimates(100).within(0, 2).bandwidth_mibps
        (60.0, 100)
        """
        if budget_mibps <= 0:
            return self
        return replace(self, bandwidth_mibps=min(self.bandwidth_mibps, budget_mibps / max(slots_n, 1)))


@dataclass(frozen=True)
class Target:
    host: str


@dataclass(frozen=True)
class Busy:
    """Feasible hosts exist, but each one's inbound slots are taken right now."""


@dataclass(frozen=True)
class Nowhere:
    problem: Problem


Choice = Target | Busy | Nowhere
# place(item, exclude) -> where it should go now; ``exclude``: hosts it must not go to
Place = Callable[[DrainItem, frozenset[str]], Choice]


@dataclass(frozen=True)
class Submit:
    """Start (or, after a leader change, create again) the migration of one item."""

    vm: str
    vm_uuid: str
    migration_id: str
    target: str


@dataclass(frozen=True)
class Arrivals:
    """What came to a drained host after its drain listed the VMs: asked for before it ends."""

    items: tuple[DrainItem, ...] = ()  # VMs the host runs now that the drain does not list
    inbound: tuple[str, ...] = ()  # migrations into the host whose jobs may still land a VM


@dataclass(frozen=True)
class Step:
    drain: DrainRecord  # ``is`` the input when nothing changed
    submit: tuple[Submit, ...] = ()
    cancel: tuple[str, ...] = ()
    outcome: str = ""


def slots(d: DrainRecord, outbound_limit: int) -> int:
    """How many of the drain's migrations run at once.

    >>> from datetime import UTC, datetime
    >>> d = DrainRecord("d", "h1", datetime(2026, 1, 1, tzinfo=UTC), max_parallel=4)
    >>> slots(d, 2), slots(replace(d, max_parallel=0), 2), slots(replace(d, max_parallel=1), 2)
    (2, 2, 1)
    """
    limit = max(outbound_limit, 1)
    return min(d.max_parallel, limit) if d.max_parallel > 0 else limit


def migration_id(d: DrainRecord, index: int, attempt: int) -> str:
    """The id of an item's migration: fixed by the drain, the item and the attempt, so creating it
    again after a leader change finds the first one.

    >>> from datetime import UTC, datetime
    >>> migration_id(DrainRecord("d-1a2b", "h1", datetime(2026, 1, 1, tzinfo=UTC)), 3, 2)
    'd-1a2b-3-2'
    """
    return f"{d.id}-{index}-{attempt}"


def lpt_order(items: Iterable[tuple[int, DrainItem]]) -> list[tuple[int, DrainItem]]:
    """Longest estimated migration first, then by VM name."""
    return sorted(items, key=lambda ii: (-ii[1].estimate_s, ii[1].vm))


def lpt_makespan(estimates: Iterable[float], slots_n: int, busy: Iterable[float] = ()) -> float:
    """The makespan of longest-first list scheduling on ``slots_n`` slots (at most 4/3 of the
    best possible; with many items per slot it approaches the bound ``sum / slots``). ``busy``:
    what the jobs already running have left, each holding a slot (more of them than slots, after
    a drain's slots were lowered, hold one each too).

    >>> lpt_makespan([5, 4, 3, 3, 3], 2)     # the best is 9 (5+4 | 3+3+3)
    10.0
    >>> lpt_makespan([3] * 8, 2)
    12.0
    >>> lpt_makespan([], 2, busy=[4.0])      # one job left: two slots do not halve it
    4.0
    >>> lpt_makespan([3.0, 3.0], 2, busy=[4.0, 1.0])  # 1 + 3 | 4 + 3
    7.0
    """
    loads = sorted(float(b) for b in busy)
    loads += [0.0] * (max(slots_n, 1) - len(loads))
    heapq.heapify(loads)
    for e in sorted(estimates, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + e)
    return max(loads)


def _in_slot_since(r: MigrationRecord) -> datetime:
    """When the record's current attempt got its slot: it entered Migrating (a record prepared
    ahead waited before that), else it was admitted (the first entry after its last Pending)."""
    attempt: list[PhaseChange] = []
    for change in reversed(r.history):
        if change.phase is Phase.PENDING:
            break
        attempt.insert(0, change)
    if not attempt:
        return r.created_at
    return next((c.at for c in attempt if c.phase is Phase.MIGRATING), attempt[0].at)


# ---------------------------------------------------------------- following the migrations


def _follow(
    d: DrainRecord,
    migrations: Mapping[str, MigrationRecord],
    now: datetime,
    max_attempts: int,
    cordoned: Collection[str] = (),
) -> tuple[DrainRecord, tuple[str, ...]]:
    """The items after their migrations' news, and the queued migrations to take back: a target
    cordoned after it was chosen keeps its migration waiting in the queue, so the drain cancels
    it and places the VM again (the item goes back to WAITING once the cancel landed)."""
    items = []
    take_back = []
    for item in d.items:
        if item.state is not ItemState.MIGRATING:
            items.append(item)
            continue
        r = migrations.get(item.migration_id)
        if r is not None and _waits_for_slot(r) and r.target_host in cordoned and d.state is DrainState.RUNNING:
            if not r.cancel_requested:
                take_back.append(r.id)
            if not item.problems or item.problems[-1].reason != "TARGET_CORDONED":
                item = replace(item, problems=(*item.problems, _cordoned_meanwhile(item, r.target_host)))
            items.append(item)
            continue
        if r is None or not r.phase.is_final:
            items.append(item)
            continue
        if r.phase is Phase.SUCCEEDED:
            # (an earlier attempt's problem stays: why it went to another host than first chosen)
            items.append(replace(item, state=ItemState.MOVED, target=r.target_host, ended_at=now))
            continue
        error = r.error or Problem(
            "MIGRATION_" + r.phase.name,
            f"migration {r.id} ended {r.phase.name.lower()}",
            f"ferry migrations show {r.id}",
        )
        if r.phase is Phase.CANCELLED and item.problems and item.problems[-1].reason == "TARGET_CORDONED":
            tried = item.tried + ((r.target_host,) if r.target_host not in item.tried else ())
            items.append(replace(item, state=ItemState.WAITING, tried=tried))  # place it again
            continue
        if r.phase is Phase.CANCELLED:
            why = "the drain was cancelled" if d.state is DrainState.CANCELLING else "its migration was cancelled"
            cancelled = Problem("CANCELLED", f"{item.vm}: {why} ({r.id})", "drain the host again to move it")
            items.append(replace(item, state=ItemState.SKIPPED, problems=(cancelled,), ended_at=now))
            continue
        if error.reason == GONE:  # its migration found it gone from the host: it left on its own
            items.append(replace(item, state=ItemState.SKIPPED, problems=(error,), ended_at=now))
            continue
        tried = item.tried + ((r.target_host,) if r.target_host not in item.tried else ())
        final = error.reason in NEEDS_OPERATOR or item.attempts >= max_attempts or d.state is DrainState.CANCELLING
        items.append(
            replace(
                item,
                state=ItemState.FAILED if final else ItemState.WAITING,
                tried=tried,
                problems=(error,),
                ended_at=now if final else None,
            )
        )
    new = replace(d, items=tuple(items)) if tuple(items) != d.items else d
    return new, tuple(take_back)


def _waits_for_slot(r: MigrationRecord) -> bool:
    """Queued, or admitted ahead of its slot and not granted it yet (``slots.py``): no job runs."""
    return r.phase is Phase.PENDING or (r.ahead and r.phase in (Phase.PREFLIGHT, Phase.PREPARING))


def _cordoned_meanwhile(item: DrainItem, host: str) -> Problem:
    return Problem(
        "TARGET_CORDONED",
        f"{host} was cordoned while the migration of {item.vm} waited for a slot",
        "the drain places it on another host",
    )


# ---------------------------------------------------------------- the step


def step(
    d: DrainRecord,
    migrations: Mapping[str, MigrationRecord],
    place: Place,
    now: datetime,
    *,
    outbound_limit: int,
    max_attempts: int = 3,
    cordoned: Collection[str] = (),
    gone: Mapping[str, Problem] | None = None,
    creating: Collection[str] = (),
    arrivals: Arrivals | None = None,
) -> Step:
    """What to do about drain ``d`` now (see the module doc). ``cordoned``: the hosts cordoned now;
    ``gone``: VMs (by UUID) confirmed no longer on the host, with the VM_GONE problem saying where
    they are: a VM skipped while it was stopped there, then removed, is gone as well; ``creating``:
    the migration ids whose records are being created (not in ``migrations`` yet, not lost);
    ``arrivals``: what came to the host meanwhile (None: not looked at; the caller looks when the
    step without it would end the drain, and steps again with it)."""
    if d.state.is_final:
        return Step(d, outcome="final")
    new, take_back = _follow(d, migrations, now, max_attempts, cordoned)
    if gone:
        new = _left_after_stopping(new, gone, now)
    resubmit = tuple(
        Submit(i.vm, i.vm_uuid, i.migration_id, i.target)
        for i in new.items
        if i.state is ItemState.MIGRATING and i.migration_id not in migrations
    )
    if new.state is DrainState.CANCELLING:
        return _cancelling(new, migrations, now, creating)
    submits: list[Submit] = []
    if new.state is DrainState.RUNNING and arrivals is not None and arrivals.items:
        new = _arrived(new, arrivals.items, now)
    if new.state is DrainState.RUNNING:
        new, submits = _start(new, place, now, outbound_limit)
    if not any(i.state in (ItemState.WAITING, ItemState.MIGRATING) for i in new.items):
        if new.state is DrainState.RUNNING and arrivals is not None and arrivals.inbound:
            waits = f"waiting: {len(arrivals.inbound)} migration(s) into {new.host} may land a VM there"
            return Step(new if new != d else d, resubmit, take_back, waits)
        return _end(new, now)
    changed = new != d
    moved = new.count(ItemState.MOVED)
    outcome = (
        f"{len(submits)} started, {new.count(ItemState.MIGRATING)} migrating, {moved}/{len(new.items)} moved"
        if submits or changed
        else "nothing to do"
    )
    return Step(new if changed else d, resubmit + tuple(submits), take_back, outcome)


def _start(d: DrainRecord, place: Place, now: datetime, outbound_limit: int) -> tuple[DrainRecord, list[Submit]]:
    n = slots(d, outbound_limit)
    ahead = n * QUEUE_AHEAD if n >= max(outbound_limit, 1) else 0
    free = n + ahead - d.count(ItemState.MIGRATING)
    submits: list[Submit] = []
    items = list(d.items)
    waiting = [(n, i) for n, i in enumerate(items) if i.state is ItemState.WAITING]
    for index, item in lpt_order(waiting):
        if free <= 0:
            break
        choice = place(item, frozenset(item.tried) | {d.host})
        if isinstance(choice, Busy):
            continue
        if isinstance(choice, Nowhere):
            # it left the host on its own, or stopped (as the plan skips a guest not running)
            gone = choice.problem.reason in (GONE, "VM_NOT_RUNNING")
            items[index] = replace(
                item,
                state=ItemState.SKIPPED if gone else ItemState.FAILED,
                problems=item.problems + (choice.problem,),
                ended_at=now,
            )
            continue
        attempt = item.attempts + 1
        mid = migration_id(d, index, attempt)
        items[index] = replace(
            item,
            state=ItemState.MIGRATING,
            target=choice.host,
            migration_id=mid,
            attempts=attempt,
            started_at=item.started_at or now,
        )
        submits.append(Submit(item.vm, item.vm_uuid, mid, choice.host))
        free -= 1
    new = replace(d, items=tuple(items))
    if new != d:
        new = replace(new, updated_at=now)
    return new, submits


def _cancelling(
    d: DrainRecord, migrations: Mapping[str, MigrationRecord], now: datetime, creating: Collection[str]
) -> Step:
    """Waiting items skipped, migrations under way cancelled; an item whose migration was never
    created (a leader stopped between the drain's write and the migration's) is skipped too, not
    created only to be cancelled: else the drain would wait for it forever."""
    skipped = Problem("CANCELLED", "the drain was cancelled before this VM moved", "drain the host again to move it")

    def never_started(i: DrainItem) -> bool:
        return i.state is ItemState.MIGRATING and i.migration_id not in migrations and i.migration_id not in creating

    items = tuple(
        replace(i, state=ItemState.SKIPPED, problems=(skipped,), ended_at=now)
        if i.state is ItemState.WAITING or never_started(i)
        else i
        for i in d.items
    )
    new = replace(d, items=items)
    cancel = tuple(
        i.migration_id
        for i in items
        if i.state is ItemState.MIGRATING
        and (r := migrations.get(i.migration_id)) is not None
        and not r.phase.is_final
        and not r.cancel_requested
    )
    if not new.count(ItemState.MIGRATING):
        moved = new.count(ItemState.MOVED)
        return Step(
            with_state(new, DrainState.CANCELLED, now, f"cancelled; {moved} VM(s) had moved"), outcome="cancelled"
        )
    return Step(new if new != d else d, (), cancel, f"cancelling: {len(cancel)} migration(s) to cancel")


def _left_after_stopping(d: DrainRecord, gone: Mapping[str, Problem], now: datetime) -> DrainRecord:
    """Items skipped because their VM was stopped, whose VM has since left the host: gone."""
    items = tuple(
        replace(i, problems=i.problems + (gone[i.vm_uuid],))
        if i.state is ItemState.SKIPPED
        and i.vm_uuid in gone
        and i.problems
        and i.problems[-1].reason == "VM_NOT_RUNNING"
        else i
        for i in d.items
    )
    return d if items == d.items else replace(d, items=items, updated_at=now)


def left_on_its_own(item: DrainItem) -> bool:
    """Skipped because the VM was no longer on the host (moved or removed outside the drain)."""
    return item.state is ItemState.SKIPPED and bool(item.problems) and item.problems[-1].reason == GONE


def _arrived(d: DrainRecord, items: Iterable[DrainItem], now: datetime) -> DrainRecord:
    """``d`` with the VMs that came to its host since it listed them, as more items (each once)."""
    listed = {i.vm_uuid for i in d.items}
    new = tuple(i for i in items if i.vm_uuid not in listed)
    if not new:
        return d
    note = f"{', '.join(i.vm for i in new)} came to {d.host} after the drain listed its VMs: moved too"
    return with_state(replace(d, items=d.items + new, updated_at=now), d.state, now, note)


def _end(d: DrainRecord, now: datetime) -> Step:
    moved = d.count(ItemState.MOVED)
    gone = [i.vm for i in d.items if left_on_its_own(i)]
    left = [i for i in d.items if i.state is not ItemState.MOVED and not left_on_its_own(i)]
    if not left:
        summary = f"all {moved} VM(s) moved" if not gone else f"{moved} VM(s) moved"
        if gone:
            summary += f"; {len(gone)} left the host on its own: {', '.join(gone)}"
        return Step(with_state(d, DrainState.SUCCEEDED, now, summary), outcome="succeeded")
    why = ", ".join(f"{i.vm} ({i.problems[-1].reason if i.problems else i.state.name})" for i in left)
    return Step(
        with_state(d, DrainState.INCOMPLETE, now, f"{moved} VM(s) moved; {len(left)} could not: {why}"),
        outcome="incomplete",
    )


# ---------------------------------------------------------------- the plan and the progress


def plan(
    d: DrainRecord, place: Callable[[DrainItem], Target | Nowhere], outbound_limit: int
) -> tuple[DrainRecord, float]:
    """A dry run: every item placed at once (each placed VM counts against its host for the next,
    so no host is overcommitted), and the makespan longest-first scheduling on the drain's slots
    would give. Items that fit nowhere are FAILED with the reasons."""
    items = list(d.items)
    for index, item in lpt_order((n, i) for n, i in enumerate(items) if i.state is ItemState.WAITING):
        choice = place(item)
        if isinstance(choice, Target):
            items[index] = replace(item, target=choice.host)
        else:
            items[index] = replace(item, state=ItemState.FAILED, problems=(choice.problem,))
    planned = replace(d, items=tuple(items))
    movable = [i.estimate_s for i in items if i.state is ItemState.WAITING]
    return planned, round(lpt_makespan(movable, slots(d, outbound_limit)), 1)


@dataclass(frozen=True)
class Progress:
    total: int
    moved: int
    failed: int  # failed + skipped
    migrating: int
    bytes_total: int
    bytes_moved: int
    eta_s: float


def progress(d: DrainRecord, migrations: Mapping[str, MigrationRecord], now: datetime, outbound_limit: int) -> Progress:
    """Counts, bytes and the estimated time left: the running jobs' own ETAs (the agent's, from the
    live rates; else what is left of their estimates), then the waiting VMs scheduled longest first
    on the slots as those free (``lpt_makespan``); estimates scaled by how the moved VMs' real times
    compared with theirs. A job past its estimate with no ETA of its own still counts a second:
    the drain is not done while it runs."""
    moved_bytes = 0
    actual = estimated = 0.0
    for i in d.items:
        if i.state is ItemState.MOVED:
            moved_bytes += i.bytes_total
            if i.started_at and i.ended_at:
                actual += (i.ended_at - i.started_at).total_seconds()
                estimated += i.estimate_s * max(i.attempts, 1)
    ratio = actual / estimated if estimated > 0 else 1.0
    running: list[float] = []
    waiting: list[float] = []
    for i in d.items:
        if i.state is ItemState.MIGRATING:
            r = migrations.get(i.migration_id)
            own = 0.0
            if r is not None and r.progress is not None:
                s = r.progress.stats  # memory as far as libvirt went through it (zero pages are skipped)
                memory_done = max(s.memory_total - s.memory_remaining, 0) if s.memory_total else s.memory_processed
                moved_bytes += min(memory_done + s.disk_processed, i.bytes_total)
                own = r.progress.eta_ms / 1000
            if r is None or r.phase is Phase.PENDING or r.ahead:  # no slot yet: it waits its turn
                waiting.append(i.estimate_s * ratio)
                continue
            running.append(own or max(i.estimate_s * ratio - (now - _in_slot_since(r)).total_seconds(), 1.0))
        elif i.state is ItemState.WAITING:
            waiting.append(i.estimate_s * ratio)
    eta = 0.0 if d.state.is_final else round(lpt_makespan(waiting, slots(d, outbound_limit), busy=running), 1)
    return Progress(
        total=len(d.items),
        moved=d.count(ItemState.MOVED),
        failed=d.count(ItemState.FAILED, ItemState.SKIPPED),
        migrating=d.count(ItemState.MIGRATING),
        bytes_total=sum(i.bytes_total for i in d.items),
        bytes_moved=moved_bytes,
        eta_s=eta,
    )


def waiting_on(d: DrainRecord, host_down: Problem | None) -> Problem | None:
    """Why the drain's waiting VMs do not move now: its host is down (``host_down``, what the
    fleet view says of it; None: it answers), so they stay where they are until it answers. None
    when nothing waits on it (or the drain does not run).

    >>> from datetime import UTC, datetime
    >>> d = DrainRecord("d1", "h1", datetime(2026, 1, 1, tzinfo=UTC),
    ...                 items=(DrainItem("g1", "u1"), DrainItem("g2", "u2", state=ItemState.MOVED)))
    >>> down = Problem("SOURCE_DOWN", "h1 is not available: the agent does not answer", "start ferry-agent on h1")
    >>> print(waiting_on(d, down).message)
    1 VM waits on h1, which does not answer: h1 is not available: the agent does not answer
    >>> waiting_on(d, None), waiting_on(with_state(d, DrainState.PAUSED, d.created_at, "x"), down)
    (None, None)
    """
    n = d.count(ItemState.WAITING)
    if host_down is None or not n or d.state is not DrainState.RUNNING:
        return None
    return Problem(
        host_down.reason,
        f"{n} VM{'s wait' if n > 1 else ' waits'} on {d.host}, which does not answer: {host_down.message}",
        f"{host_down.hint}; the drain goes on by itself once {d.host} answers (its VMs stay where they are "
        "meanwhile), or cancel it",
    )


def waiting_for_targets(d: DrainRecord, targets: Mapping[str, Problem | None]) -> Problem | None:
    """Why the drain's waiting VMs do not move now when nothing of it moves and no host it may use
    answers (``targets``: each host it may use, not cordoned, and why it is down, None when it
    is up): they wait for one to come back (a host that is down is not a reason to fail them).

    >>> from datetime import UTC, datetime
    >>> d = DrainRecord("d1", "h1", datetime(2026, 1, 1, tzinfo=UTC), items=(DrainItem("g1", "u1"),))
    >>> down = Problem("AGENT_UNREACHABLE", "its agent is gone", "check ferry-agent")
    >>> print(waiting_for_targets(d, {"h2": down, "h3": down}).message)
    1 VM waits: no host that may take it answers (h2: its agent is gone; h3: its agent is gone)
    >>> waiting_for_targets(d, {"h2": down, "h3": None}), waiting_for_targets(d, {})
    (None, None)
    """
    n = d.count(ItemState.WAITING)
    if not n or not targets or d.count(ItemState.MIGRATING) or d.state is not DrainState.RUNNING:
        return None
    if any(why is None for why in targets.values()):
        return None
    down = "; ".join(f"{h}: {why.message if why is not None else 'down'}" for h, why in sorted(targets.items()))
    return Problem(
        "TARGETS_DOWN",
        f"{n} VM{'s wait' if n > 1 else ' waits'}: no host that may take {'them' if n > 1 else 'it'} answers ({down})",
        "bring one of them back (ferry hosts says what is down on each); the drain goes on by itself, or cancel it",
    )
