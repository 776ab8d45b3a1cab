"""Pure helpers of the benchmarks in bench/: statistics, number formatting, Markdown tables, the
peak overlap of time intervals, drain planning and parsing ``virsh domjobinfo``.

No side effects and no clock: the benchmark scripts measure, these functions summarise. The
tables are Markdown (pipes), readable in a terminal and pasted as they are into bench/README.md.
"""

from __future__ import annotations

import contextlib
import cProfile
import itertools
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


# ---------------------------------------------------------------- statistics


def percentile(values: Iterable[float], pct: float) -> float:
    """The ``pct``-th percentile, linear between the two closest ranks (numpy's default).

    >>> percentile([1, 2, 3, 4], 50)
    2.5
    >>> percentile([10, 20, 30, 40, 50], 95)
    48.0
    >>> percentile([7], 95)
    7.0
    """
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile {pct} is not between 0 and 100")
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    """The middle value (the mean of the two middle ones for an even count).

    >>> median([3, 1, 2])
    2.0
    """
    return percentile(values, 50)


# ---------------------------------------------------------------- formatting

DASH = "-"


def secs(value: float | None) -> str:
    """Seconds with two decimals (``-`` for no value).

    >>> secs(2.414), secs(None)
    ('2.41 s', '-')
    """
    return DASH if value is None else f"{value:.2f} s"


def msecs(value: float | None) -> str:
    """Whole milliseconds (``-`` for no value).

    >>> msecs(156.6), msecs(None)
    ('157 ms', '-')
    """
    return DASH if value is None else f"{value:.0f} ms"


def spread(values: Sequence[float]) -> str:
    """Median, then min-max when there is more than one value (seconds).

    >>> spread([2.2, 3.05, 2.41])
    '2.41 s (2.20-3.05)'
    >>> spread([2.2])
    '2.20 s'
    >>> spread([])
    '-'
    """
    if not values:
        return DASH
    if len(values) == 1:
        return secs(values[0])
    return f"{secs(median(values))} ({min(values):.2f}-{max(values):.2f})"


def median_ms(values: Sequence[float]) -> str:
    """The median in milliseconds.

    >>> median_ms([100, 300, 157]), median_ms([])
    ('157 ms', '-')
    """
    return msecs(median(values)) if values else DASH


def overhead(value: float | None, baseline: float | None) -> str:
    """How much longer than the baseline, absolute and relative.

    >>> overhead(3.0, 2.5)
    '+0.50 s (+20%)'
    >>> overhead(2.4, 2.5)
    '-0.10 s (-4%)'
    >>> overhead(2.5, None)
    '-'
    """
    if value is None or baseline is None or baseline <= 0:
        return DASH
    diff = value - baseline
    return f"{diff:+.2f} s ({diff / baseline:+.0%})"


def rate(count: int, seconds: float) -> str:
    """Per second, three significant figures.

    >>> rate(100, 0.8), rate(3, 0)
    ('125/s', '-')
    """
    if seconds <= 0:
        return DASH
    return f"{count / seconds:.3g}/s"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, columns padded to their widest cell (numbers right-aligned).

    >>> print(markdown_table(["case", "runs"], [["raw virsh", 3], ["ferry", 12]]))
    | case      | runs |
    |-----------|-----:|
    | raw virsh |    3 |
    | ferry     |   12 |
    """
    cells = [[str(h) for h in headers]] + [[_cell(c) for c in row] for row in rows]
    width = len(headers)
    if any(len(r) != width for r in cells):
        raise ValueError(f"every row needs {width} cells")
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(width)]
    sizes = [max(len(r[i]) for r in cells) for i in range(width)]

    def line(row: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(c.rjust(s) if num else c.ljust(s) for c, s, num in zip(row, sizes, numeric, strict=True))
            + " |"
        )

    rule = (
        "|"
        + "|".join("-" * (s + 1) + ":" if num else "-" * (s + 2) for s, num in zip(sizes, numeric, strict=True))
        + "|"
    )
    head = "| " + " | ".join(c.ljust(s) for c, s in zip(cells[0], sizes, strict=True)) + " |"
    return "\n".join([head, rule, *(line(r) for r in cells[1:])])


def _cell(value: object) -> str:
    return str(value).replace("|", "/").replace("\n", " ")


def _is_number(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+(\.\d+)?", text) is not None


def load_line(loadavg: tuple[float, float, float], cores: int | None = None) -> str:
    """What else the machine was doing: its load average (1, 5, 15 min) against its cores.

    >>> load_line((1.234, 0.5, 0.25), cores=2)
    'load average 1.23 / 0.50 / 0.25 on 2 cores'
    """
    cores = cores if cores is not None else (os.cpu_count() or 0)
    one, five, fifteen = loadavg
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {cores} cores"


# ---------------------------------------------------------------- concurrency


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals open at one instant. Intervals are half-open ``[start, end)``: one that
    ends exactly when another starts does not overlap it (a slot handed over).

    >>> peak_overlap([(0, 2), (1, 3), (2, 4)])
    2
    >>> peak_overlap([(0, 1), (1, 2)])
    1
    >>> peak_overlap([])
    0
    """
    events = sorted((t, step) for start, end in intervals for t, step in ((start, 1), (end, -1)))
    peak = current = 0
    for _, step in events:  # at equal times -1 sorts before +1: ends first
        current += step
        peak = max(peak, current)
    return peak


def peak_overlap_by(intervals: Iterable[tuple[K, float, float]]) -> dict[K, int]:
    """:func:`peak_overlap` for each key (e.g. per source host).

    >>> peak_overlap_by([("h1", 0, 2), ("h1", 1, 3), ("h2", 0, 9)])
    {'h1': 2, 'h2': 1}
    """
    grouped: dict[K, list[tuple[float, float]]] = {}
    for key, start, end in intervals:
        grouped.setdefault(key, []).append((start, end))
    return {key: peak_overlap(spans) for key, spans in grouped.items()}


# ---------------------------------------------------------------- drain planning


def plan_drain(
    vms_by_host: Mapping[str, Sequence[str]], drained: Collection[str], sort_key: Callable[[str], object] | None = None
) -> list[tuple[str, str, str]]:
    """(vm, source, target) for every VM of the drained hosts: each goes to the host that then has
    the fewest VMs (counting the ones already sent there), ties broken by ``sort_key`` (default:
    the name), so the drained VMs spread evenly over the rest of the fleet.

    >>> plan_drain({"h1": ["a", "b", "c"], "h2": ["d"], "h3": []}, {"h1"})
    [('a', 'h1', 'h3'), ('b', 'h1', 'h2'), ('c', 'h1', 'h3')]
    """
    key = sort_key or (lambda name: name)
    remaining = [h for h in vms_by_host if h not in drained]
    if not remaining:
        raise ValueError("draining every host leaves nowhere to go")
    load = Counter({h: len(vms_by_host[h]) for h in remaining})
    plan = []
    for source in sorted(drained, key=key):
        for vm in vms_by_host.get(source, ()):
            target = min(remaining, key=lambda h: (load[h], key(h)))
            load[target] += 1
            plan.append((vm, source, target))
    return plan


def spread_hosts(hosts: Sequence[str], count: int) -> list[str]:
    """``count`` of ``hosts`` evenly spaced through the list (a drain that is not all neighbours).

    >>> spread_hosts(["h1", "h2", "h3", "h4", "h5", "h6"], 2)
    ['h1', 'h4']
    """
    if not 0 < count < len(hosts):
        raise ValueError(f"cannot pick {count} of {len(hosts)} hosts (leave at least one)")
    return [hosts[i * len(hosts) // count] for i in range(count)]


# ---------------------------------------------------------------- virsh domjobinfo

_JOBINFO_LINE = re.compile(r"^([A-Za-z][A-Za-z /()-]*?):\s+(.*?)\s*$")


def parse_domjobinfo(text: str) -> dict[str, str]:
    """``virsh domjobinfo`` output as ``{field: value}``.

    >>> info = parse_domjobinfo("Job type:         Completed\\nTime elapsed:     2210         ms\\n")
    >>> info["Job type"], info["Time elapsed"]
    ('Completed', '2210         ms')
    """
    fields = {}
    for line in text.splitlines():
        found = _JOBINFO_LINE.match(line.strip())
        if found:
            fields[found.group(1)] = found.group(2)
    return fields


def jobinfo_ms(info: Mapping[str, str], field: str) -> int | None:
    """A millisecond field of :func:`parse_domjobinfo`'s result (None when absent).

    >>> jobinfo_ms({"Total downtime": "61           ms"}, "Total downtime")
    61
    >>> jobinfo_ms({}, "Total downtime") is None
    True
    """
    found = re.match(r"(\d+)\s*ms\b", info.get(field, ""))
    return int(found.group(1)) if found else None


def jobinfo_number(info: Mapping[str, str], field: str) -> float | None:
    """The leading number of a field ("Memory remaining: 180.412 MiB" -> 180.412).

    >>> jobinfo_number({"Memory remaining": "180.412 MiB"}, "Memory remaining")
    180.412
    """
    found = re.match(r"(\d+(?:\.\d+)?)", info.get(field, ""))
    return float(found.group(1)) if found else None


_SIZE_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def jobinfo_bytes(info: Mapping[str, str], field: str) -> int:
    """A size field of :func:`parse_domjobinfo`'s result in bytes (0 when absent).

    >>> jobinfo_bytes({"Data processed": "320.500 MiB"}, "Data processed"), jobinfo_bytes({}, "Data processed")
    (336068608, 0)
    """
    found = re.match(r"(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\b", info.get(field, ""))
    return int(float(found.group(1)) * _SIZE_UNITS.get(found.group(2), 1)) if found else 0


def holding_spans(changes: Sequence[tuple[float, bool]]) -> list[tuple[float, float]]:
    """The spans during which something was held, from time-ordered ``(at, holds)`` changes (a
    record's history: each phase holds a migration slot or not). A span still open at the end
    ends at the last change.

    >>> holding_spans([(0, False), (1, True), (2, True), (3, False), (4, True), (6, False)])
    [(1, 3), (4, 6)]
    >>> holding_spans([(0, False), (5, True)])
    [(5, 5)]
    """
    spans = []
    opened: float | None = None
    for at, holds in changes:
        if holds and opened is None:
            opened = at
        elif not holds and opened is not None:
            spans.append((opened, at))
            opened = None
    if opened is not None:
        spans.append((opened, changes[-1][0]))
    return spans


def phase_durations(history: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Seconds spent in each phase, from a record's time-ordered ``(phase, at)`` history (a repeated
    phase is a note within it; the last phase, final, gets no duration).

    >>> phase_durations([("Pending", 0.0), ("Preflight", 0.5), ("Migrating", 1.0),
    ...                  ("Migrating", 3.0), ("Finishing", 25.0), ("Succeeded", 145.0)])
    {'Pending': 0.5, 'Preflight': 0.5, 'Migrating': 24.0, 'Finishing': 120.0}
    """
    spent: dict[str, float] = {}
    for (phase, at), (_, following) in itertools.pairwise(history):
        spent[phase] = spent.get(phase, 0.0) + (following - at)
    return spent


# ---------------------------------------------------------------- where `ferry migrate` spends its time

BREAKDOWN_STEPS = (
    ("CLI start + submit", "cli started", "submitted"),
    ("queue", "submitted", "admitted"),
    ("preflight + prepare", "admitted", "prepared"),
    ("job start", "prepared", "job started"),
    ("libvirt job + its end", "job started", "job done"),
    ("finish (checked commit)", "job done", "committed"),
    ("CLI learns and exits", "committed", "cli returned"),
)


def breakdown(marks: Mapping[str, float]) -> dict[str, float]:
    """Seconds per step of one ``ferry migrate`` from its time marks (POSIX seconds): the CLI's
    start and return (measured by the bench) and the record's own times (submitted = created,
    admitted = Preflight entered, prepared = Migrating entered, job started = the first progress
    the source reported, job done = Finishing entered, committed = Succeeded). A step whose
    marks are missing is left out.

    >>> marks = {"cli started": 0.0, "submitted": 0.2, "admitted": 0.21, "prepared": 0.3,
    ...          "job started": 0.32, "job done": 2.3, "committed": 2.34, "cli returned": 2.4}
    >>> {k: round(v, 2) for k, v in breakdown(marks).items()}["libvirt job + its end"]
    1.98
    """
    return {
        label: marks[end] - marks[start] for label, start, end in BREAKDOWN_STEPS if start in marks and end in marks
    }


def prediction_error(predicted: float | None, actual: float | None) -> float | None:
    """The relative error of a predicted time: (predicted - actual) / actual; None without both.

    >>> prediction_error(12.0, 10.0), prediction_error(None, 10.0), prediction_error(5.0, 0.0)
    (0.2, None, None)
    """
    if predicted is None or actual is None or actual <= 0:
        return None
    return (predicted - actual) / actual


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """Run the body under cProfile and write its stats to ``path`` at the end (even when it
    raises); None: run it plain. The simulation's processes take ``--profile``."""
    if path is None:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(str(path))
