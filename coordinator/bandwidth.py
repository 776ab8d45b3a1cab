"""A host's migration bandwidth budget, shared by the migrations running on it (pure).

An operator may give a host a budget for migration traffic (``[limits] host_bandwidth_mibps``,
``[hosts.NAME] bandwidth_mibps``): what its migration link may carry, outbound and inbound each
(a full-duplex link), so that migrations leave room for the guests' own traffic, and so that two
migrations at once each know what they really get. Without a budget each migration runs at its
policy's cap (0: QEMU's default), as before.

Each running job (a record in Migrating) is a flow from its source to its target with its own cap
(its policy's bandwidth, or what an operator tuned; 0 = none). On each host with a budget the
flows through it share it max-min fairly: a flow capped below an equal share keeps its cap, the
rest split what is left equally, and what a flow held lower by its other end leaves unused goes to
the others (progressive filling: all rise together until a cap or a budget stops them). So no
host's budget is exceeded in either direction.

A job that copies disks (``--copy-storage-all``) is the exception: libvirt sets the speed of its
disk copy once, at the start, and refuses to change it while the migration runs (virsh blockjob
--bandwidth: "cannot acquire state change lock"; migrate-setspeed changes only the memory's). Such a
job starts at its hosts' budgets over their slots (``fixed_share``: 50 MiB/s of 100 with 2 outbound
slots) and keeps it while its disks are copied: a fixed flow, and the others share what the fixed
ones leave. Once its memory moves it shares like the others (the mirror then only keeps the
guest's new disk writes in step, at its first speed, beside the memory's share).

The engine recomputes the shares when a job starts or ends on a host with a budget, starts each
job at its share and tunes the running ones whose share changed (``sharing.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Flow:
    """A running (or starting) migration job: from ``source`` to ``target``, at most ``cap_mibps``
    (0: no cap of its own). ``fixed``: it runs at exactly ``cap_mibps`` whatever the others do (a
    job copying disks: libvirt sets the disk copy's speed once, at the start, and refuses to
    change it while the migration runs)."""

    id: str
    source: str
    target: str
    cap_mibps: int = 0
    fixed: bool = False


def fixed_share(budget: Callable[[str], int], source: str, target: str, cap_mibps: int, slots: tuple[int, int]) -> int:
    """The speed a job that copies disks starts at, and keeps: its hosts' budgets over their
    outbound and inbound ``slots``, at most its own cap (0: none), at least 1. So the disk copies
    out of (into) a host never exceed its budget together, whatever starts after them.

    >>> h1 = lambda h: 100 if h == "h1" else 0
    >>> [fixed_share(h1, s, "h2", cap, (2, 2)) for s, cap in (("h1", 0), ("h1", 32), ("h3", 0))]
    [50, 32, 0]
    """
    parts = [b // n for b, n in ((budget(source), slots[0]), (budget(target), slots[1])) if b > 0]
    if cap_mibps:
        parts.append(cap_mibps)
    return max(min(parts), 1) if parts else 0


def shares(flows: Iterable[Flow], budget: Callable[[str], int]) -> dict[str, int]:
    """Each flow's bandwidth in whole MiB/s (at least 1), max-min fair: every flow rises at the same
    pace until it meets its own cap or one of its hosts' budgets runs out (progressive filling). 0:
    no cap at all (no budget on either end and no cap of its own). ``budget(host)``: 0 for none.

    >>> fs = [Flow("a", "h1", "h2"), Flow("b", "h1", "h3", cap_mibps=30), Flow("c", "h4", "h3")]
    >>> shares(fs, lambda h: 100 if h == "h1" else 0)
    {'a': 70, 'b': 30, 'c': 0}
    >>> shares(fs, lambda h: {"h1": 100, "h3": 40}.get(h, 0))
    {'a': 80, 'b': 20, 'c': 20}
    >>> shares([Flow("a", "h1", "h2"), Flow("b", "h1", "h2")], lambda h: 100)
    {'a': 50, 'b': 50}
    >>> shares([Flow("a", "h1", "h2", cap_mibps=32)], lambda h: 0)
    {'a': 32}
    >>> shares([Flow("a", "h1", "h2", cap_mibps=50, fixed=True), Flow("b", "h1", "h3")], lambda h: 100)
    {'a': 50, 'b': 50}
    """
    flows = list(flows)
    links: dict[tuple[str, bool], list[Flow]] = {}  # (host, outbound) with a budget -> its flows
    for f in flows:
        for host, outbound in ((f.source, True), (f.target, False)):
            if budget(host) > 0:
                links.setdefault((host, outbound), []).append(f)
    rate = {f.id: float(f.cap_mibps) if f.fixed else 0.0 for f in flows}
    limited = {f.id for f in flows if f.fixed or f.cap_mibps or (f.source, True) in links or (f.target, False) in links}
    rising = {f.id: f for f in flows if f.id in limited and not f.fixed}
    while rising:
        step = max(
            min(
                [f.cap_mibps - rate[i] for i, f in rising.items() if f.cap_mibps]
                + [
                    (budget(host) - sum(rate[f.id] for f in on)) / n
                    for (host, _), on in links.items()
                    if (n := sum(f.id in rising for f in on))
                ]
            ),
            0.0,  # fixed flows may fill a budget alone: the others then get the least (1 MiB/s)
        )
        for i in rising:
            rate[i] += step
        full = {
            f.id for (host, _), on in links.items() if sum(rate[f.id] for f in on) >= budget(host) - 1e-9 for f in on
        }
        for i, f in list(rising.items()):
            if i in full or (f.cap_mibps and rate[i] >= f.cap_mibps - 1e-9):
                del rising[i]
    return {f.id: max(int(rate[f.id] + 1e-9), 1) if f.id in limited else 0 for f in flows}


def no_budget(host: str) -> int:
    """No host has a budget (the default everywhere a budget is asked for)."""
    return 0


def alone(budget: Callable[[str], int], source: str, target: str) -> int:
    """The most one job from ``source`` to ``target`` may get under their budgets (0: none).

    >>> alone(lambda h: {"h1": 100, "h2": 40}.get(h, 0), "h1", "h2"), alone(lambda h: 0, "h1", "h2")
    (40, 0)
    """
    limits = [b for b in (budget(source), budget(target)) if b > 0]
    return min(limits) if limits else 0


def why(
    flow: Flow,
    got: dict[str, int],
    flows: Iterable[Flow],
    budget: Callable[[str], int],
    slots: tuple[int, int] = (1, 1),
) -> str:
    """The note that says what holds a flow at its share (``got``: every flow's share): its own cap,
    or each budget it goes through that its flows fill.

    >>> fs = [Flow("a", "h1", "h2"), Flow("b", "h1", "h3", cap_mibps=30)]
    >>> got = shares(fs, lambda h: 100 if h == "h1" else 0)
    >>> why(fs[0], got, fs, lambda h: 100 if h == "h1" else 0)
    'bandwidth 70 MiB/s: the migration budget of h1, 100 MiB/s out, shared by 2 migrations'
    >>> why(fs[1], got, fs, lambda h: 100 if h == "h1" else 0)
    'bandwidth 30 MiB/s: its own cap (the migration budget of h1, 100 MiB/s out, is shared by 2 migrations)'
    >>> why(fs[0], {"a": 50}, fs[:1], lambda h: 50)
    'bandwidth 50 MiB/s: the migration budgets of h1, 50 MiB/s out, and h2, 50 MiB/s in'
    >>> c = Flow("c", "h1", "h2", 50, fixed=True)
    >>> print(why(c, {"c": 50}, [], lambda h: 100 if h == "h1" else 0, (2, 2)))  # doctest: +NORMALIZE_WHITESPACE
    bandwidth 50 MiB/s while its disks are copied (libvirt sets a disk copy's speed once);
    h1 has 100 MiB/s out for 2 slots
    """
    flows = list(flows)
    share = got[flow.id]
    if flow.fixed:
        ends_text = " and ".join(
            f"{h} has {budget(h)} MiB/s {d} for {n} slot{'s' if n != 1 else ''}"
            for h, d, n in ((flow.source, "out", slots[0]), (flow.target, "in", slots[1]))
            if budget(h) > 0
        )
        return (
            f"bandwidth {share} MiB/s while its disks are copied (libvirt sets a disk copy's speed once); {ends_text}"
        )
    ends = []
    for host, outbound in ((flow.source, True), (flow.target, False)):
        b = budget(host)
        on = [f for f in flows if (f.source if outbound else f.target) == host]
        if b > 0 and sum(got.get(f.id, 0) for f in on) >= b - len(on):  # full (whole MiB/s rounding)
            ends.append((host, f"{b} MiB/s {'out' if outbound else 'in'}", len(on)))
    if len(ends) == 2 and ends[0][2] == ends[1][2] == 1:
        (h1, b1, _), (h2, b2, _) = ends
        text = f"the migration budgets of {h1}, {b1}, and {h2}, {b2}"
    else:
        text = "; ".join(
            f"the migration budget of {h}, {b}" + (f", shared by {n} migrations" if n > 1 else "") for h, b, n in ends
        )
    if flow.cap_mibps and share >= flow.cap_mibps:
        text = f"its own cap ({text.replace(', shared by', ', is shared by')})" if text else "its own cap"
    return f"bandwidth {share} MiB/s: {text or 'within every budget'}"
