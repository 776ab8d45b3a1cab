"""The benchmarks' pure helpers (bench/benchlib.py): the numbers an operator reads in their
tables must be the right ones -- medians and percentiles, overhead against the raw baseline,
peak concurrency against the limits, where a drain sends each VM, virsh's job figures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import benchlib as b

# what `virsh domjobinfo --completed` prints on the target after a migration (libvirt 9.0)
COMPLETED = """\
Job type:         Completed
Operation:        Incoming migration
Time elapsed:     816          ms
Time elapsed w/o network: 815          ms
Data processed:   140.213 MiB
Memory remaining: 0.000 B
Total downtime:   173          ms
Downtime w/o network: 172          ms
Iteration:        3
Dirty rate:       7913         pages/s
"""


@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([1, 2, 3, 4], 50, 2.5),
        ([3, 1, 2], 50, 2.0),
        ([10, 20, 30, 40, 50], 95, 48.0),
        ([10, 20, 30, 40, 50], 0, 10.0),
        ([10, 20, 30, 40, 50], 100, 50.0),
        ([7], 95, 7.0),
    ],
)
def test_percentile(values, pct, expected):
    assert b.percentile(values, pct) == pytest.approx(expected)


def test_percentile_of_nothing_is_refused():
    with pytest.raises(ValueError):
        b.percentile([], 50)


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ([2.2, 3.05, 2.41], "2.41 s (2.20-3.05)"),
        ([2.2], "2.20 s"),
        ([], "-"),
    ],
)
def test_spread_shows_median_then_range(values, text):
    assert b.spread(values) == text


@pytest.mark.parametrize(
    ("value", "baseline", "text"),
    [
        (3.0, 2.5, "+0.50 s (+20%)"),
        (2.4, 2.5, "-0.10 s (-4%)"),
        (2.5, None, "-"),
        (None, 2.5, "-"),
    ],
)
def test_overhead_against_the_raw_baseline(value, baseline, text):
    assert b.overhead(value, baseline) == text


def test_markdown_table_aligns_columns_and_right_aligns_numbers():
    text = b.markdown_table(["case", "runs", "wall"], [["raw", 3, "2.41 s"], ["ferry | cli", 12, "-"]])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1  # every line equally wide
    assert lines[1].startswith("|------") and "-:|" in lines[1]  # runs is right-aligned
    assert "ferry / cli" in lines[3]  # a pipe cannot break the table
    with pytest.raises(ValueError):
        b.markdown_table(["a", "b"], [["only one"]])


@pytest.mark.parametrize(
    ("intervals", "peak"),
    [
        ([(0, 2), (1, 3), (2, 4)], 2),
        ([(0, 1), (1, 2), (2, 3)], 1),  # a slot handed over at the same instant
        ([(0, 10), (1, 2), (1, 3), (2.5, 4)], 3),
        ([], 0),
    ],
)
def test_peak_overlap(intervals, peak):
    assert b.peak_overlap(intervals) == peak


def test_peak_overlap_per_host():
    spans = [("host1", 0, 2), ("host1", 1, 3), ("host2", 0, 9), ("host1", 3, 4)]
    assert b.peak_overlap_by(spans) == {"host1": 2, "host2": 1}


@pytest.mark.parametrize(
    ("changes", "spans"),
    [
        ([(0, False), (1, True), (2, True), (3, False)], [(1, 3)]),
        ([(0, False), (1, True), (3, False), (4, True), (6, False)], [(1, 3), (4, 6)]),  # re-queued once
        ([(0, False), (5, True)], [(5, 5)]),
        ([(0, False)], []),
    ],
)
def test_holding_spans_from_a_history(changes, spans):
    assert b.holding_spans(changes) == spans


def test_plan_drain_moves_every_vm_of_the_drained_hosts_once_and_evenly():
    fleet = {f"h{i}": [f"vm{i}-{j}" for j in range(4)] for i in range(1, 6)}
    plan = b.plan_drain(fleet, {"h1", "h3"})
    assert sorted(vm for vm, _, _ in plan) == sorted(fleet["h1"] + fleet["h3"])
    assert all(src in ("h1", "h3") and dst not in ("h1", "h3") for _, src, dst in plan)
    arrivals = {h: sum(1 for *_, dst in plan if dst == h) for h in ("h2", "h4", "h5")}
    assert max(arrivals.values()) - min(arrivals.values()) <= 1


def test_plan_drain_of_every_host_is_refused():
    with pytest.raises(ValueError):
        b.plan_drain({"h1": ["a"]}, {"h1"})


def test_spread_hosts_picks_evenly_and_leaves_one():
    hosts = [f"host{i}" for i in range(1, 51)]
    assert b.spread_hosts(hosts, 5) == ["host1", "host11", "host21", "host31", "host41"]
    with pytest.raises(ValueError):
        b.spread_hosts(hosts, 50)


def test_completed_job_figures_from_virsh():
    info = b.parse_domjobinfo(COMPLETED)
    assert b.jobinfo_ms(info, "Time elapsed") == 816
    assert b.jobinfo_ms(info, "Total downtime") == 173
    assert b.jobinfo_ms(info, "Time elapsed w/o network") == 815
    assert b.jobinfo_number(info, "Data processed") == pytest.approx(140.213)
    assert b.jobinfo_number(info, "Dirty rate") == 7913
    assert b.jobinfo_ms(info, "Setup time") is None  # absent: no number invented


def test_load_line_names_the_cores():
    assert b.load_line((1.234, 0.5, 0.25), cores=2) == "load average 1.23 / 0.50 / 0.25 on 2 cores"


def test_phase_durations_show_where_a_slow_migration_waited():
    history = [
        ("Pending", 0.0),
        ("Preflight", 0.2),
        ("Preparing", 0.3),
        ("Migrating", 0.5),
        ("Migrating", 10.0),
        ("Finishing", 24.5),
        ("Succeeded", 144.5),
    ]
    spent = b.phase_durations(history)
    assert spent["Migrating"] == pytest.approx(24.0)  # a note does not split the phase
    assert spent["Finishing"] == pytest.approx(120.0)
    assert "Succeeded" not in spent  # final: no duration
    assert b.phase_durations([("Pending", 0.0)]) == {}


def test_a_drains_busy_slot_time_sums_every_attempt_of_every_item():
    """The second drain ratio's denominator: the slot-holding time of each item's migrations,
    a failed attempt's included, found by the ids the drain gives them."""
    from datetime import UTC, datetime, timedelta

    import scale_bench as sb

    from ferry.coordinator.drain import DrainItem, DrainRecord
    from ferry.coordinator.phases import Phase, Timeouts
    from ferry.coordinator.record import new_migration, with_phase

    t0, t = datetime(2026, 12, 1, tzinfo=UTC), Timeouts()

    def migration(mid: str, *steps: tuple[Phase, float]):
        r = new_migration(id=mid, vm="v", vm_uuid="u", source_host="h1", target_host="h2", now=t0, timeouts=t)
        for phase, at in steps:
            r = with_phase(r, phase, t0 + timedelta(seconds=at), "", t)
        return r

    ok = ((Phase.PREFLIGHT, 1), (Phase.PREPARING, 2), (Phase.MIGRATING, 3), (Phase.FINISHING, 9), (Phase.SUCCEEDED, 10))
    failed = ((Phase.PREFLIGHT, 0), (Phase.FAILED, 4))
    d = DrainRecord("d-1", "h1", t0, items=(DrainItem("a", "ua", attempts=1), DrainItem("b", "ub", attempts=2)))
    records = {"d-1-0-1": migration("d-1-0-1", *ok), "d-1-1-1": migration("d-1-1-1", *failed)}
    records["d-1-1-2"] = migration("d-1-1-2", *ok)
    assert sb.slots_busy_s(d, records) == 9 + 4 + 9


def test_the_scale_bench_examples_run() -> None:
    """Its line builders' docstring examples (the agents' calls, the machine's CPU)."""
    import doctest

    import scale_bench as sb

    assert doctest.testmod(sb).failed == 0


def test_the_bytes_a_completed_job_moved():
    info = b.parse_domjobinfo(COMPLETED)
    assert b.jobinfo_bytes(info, "Data processed") == int(140.213 * (1 << 20))
    assert b.jobinfo_bytes(info, "Memory remaining") == 0
    assert b.jobinfo_bytes(info, "File processed") == 0  # absent: no disk was copied
