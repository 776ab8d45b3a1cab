"""What `ferry top` and the progress bar show: the figures (rate, dirty rate, ETA), plain lines when
the output is not a terminal, rich's in-place view on one, colours only when NO_COLOR is unset."""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from ferry.cli import live, render
from ferry.cli.top import order
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb

MiB = 1 << 20
NOW = datetime(2026, 11, 25, 10, 0, 30, tzinfo=UTC)
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])(?:;[0-9;]*)?m")  # an SGR setting a foreground colour


@pytest.fixture(autouse=True)
def _terminal(monkeypatch):
    """A colour terminal, whatever this test runs in (rich reads TERM and NO_COLOR)."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)


def ts(at: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(at)
    return out


def migration(mid: str, phase: int, *, age_s: float = 30, job_phase: int = 0, **progress: int) -> cpb.Migration:
    m = cpb.Migration(
        id=mid,
        vm=f"vm-{mid}",
        source_host="host1",
        target_host="host2",
        phase=phase,
        created_at=ts(NOW - timedelta(seconds=age_s)),
        history=[tpb.TimedPhase(phase="Migrating", reason="target prepared")],
    )
    if progress:
        m.progress.CopyFrom(tpb.MigrationProgress(phase=job_phase, page_size=4096, **progress))
    return m


RUNNING = migration(
    "m-run",
    cpb.PHASE_MIGRATING,
    job_phase=tpb.MIGRATION_PHASE_PRECOPY,
    memory_total=256 * MiB,
    memory_processed=192 * MiB,
    memory_remaining=64 * MiB,
    bandwidth_bps=40 * MiB,
    dirty_rate_pages=2560,  # 10 MiB/s
    elapsed_ms=5200,
    iteration=3,
)
QUEUED = migration("m-wait", cpb.PHASE_PENDING, age_s=4)


@pytest.mark.parametrize(
    ("progress", "eta"),
    [
        # pre-copy gains rate - dirty rate on what is left: 64 MiB at 40 - 10 MiB/s
        (dict(phase=tpb.MIGRATION_PHASE_PRECOPY, memory_remaining=60 * MiB, bandwidth_bps=40 * MiB), 1.5),
        (
            dict(
                phase=tpb.MIGRATION_PHASE_PRECOPY,
                memory_remaining=60 * MiB,
                bandwidth_bps=40 * MiB,
                dirty_rate_pages=2560,
                page_size=4096,
            ),
            2.0,
        ),
        # dirtied as fast as it is sent: no ETA (shown as "stalled")
        (
            dict(
                phase=tpb.MIGRATION_PHASE_PRECOPY,
                memory_remaining=60 * MiB,
                bandwidth_bps=10 * MiB,
                dirty_rate_pages=2560,
                page_size=4096,
            ),
            None,
        ),
        # disk mirror and post-copy: the dirty rate does not hold the stream back
        (
            dict(
                phase=tpb.MIGRATION_PHASE_DISK_MIRROR,
                disk_remaining=100 * MiB,
                memory_remaining=20 * MiB,
                bandwidth_bps=60 * MiB,
                dirty_rate_pages=2560,
            ),
            2.0,
        ),
        (dict(phase=tpb.MIGRATION_PHASE_STARTING), None),  # no rate yet
        (dict(phase=tpb.MIGRATION_PHASE_PRECOPY, bandwidth_bps=10 * MiB), None),  # no byte counts yet
    ],
)
def test_eta(progress, eta):
    assert render.eta_s(tpb.MigrationProgress(**progress)) == eta


def test_a_top_row_has_the_figures_an_operator_reads():
    row = render.top_row(RUNNING, NOW)
    assert row == [
        "m-run",
        "vm-m-run",
        "host1",
        "host2",
        "migrating",
        "75% precopy",
        "40 MiB/s",
        "10 MiB/s",
        "64 MiB",
        "2.1 s",
        "30 s",
        "target prepared",
    ]
    queued = render.top_row(QUEUED, NOW)
    assert queued[4:10] == ["pending", "", "", "", "", ""] and queued[10] == "4.0 s"


def test_working_migrations_come_first_then_the_queue_oldest_first():
    old_queued = migration("m-q-old", cpb.PHASE_PENDING, age_s=50)
    assert [m.id for m in order([QUEUED, RUNNING, old_queued])] == ["m-run", "m-q-old", "m-wait"]


def test_plain_lines_when_not_a_terminal():
    finished = migration("m-done", cpb.PHASE_SUCCEEDED)
    finished.result.CopyFrom(tpb.CompletedJob(time_elapsed_ms=2300, downtime_ms=61))
    text = render.top_text([RUNNING, QUEUED], [finished], NOW)
    lines = text.splitlines()
    assert lines[0].startswith("--- ") and lines[0].endswith("1 migrating, 1 pending")
    assert lines[1].split() == list(render.TOP_HEADERS)
    assert lines[2].split()[:5] == ["m-run", "vm-m-run", "host1", "host2", "migrating"]
    assert lines[-2] == "finished:" and "succeeded in 2.3 s, downtime 61 ms" in lines[-1]
    assert "\x1b" not in text
    assert render.top_text([], [], NOW).endswith("nothing in flight")


def _draw(renderable, *, no_color: bool) -> str:
    screen = live.Screen(io.StringIO(), tty=True, width=200)
    screen.console.no_color = no_color
    screen.console.print(renderable)
    out = screen.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_the_live_view_on_a_terminal_draws_bars_and_colours():
    view = live.top_view([RUNNING, QUEUED], [], NOW, "unix:/lab/c1.sock")
    out = _draw(view, no_color=False)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "ferry top" in plain and "unix:/lab/c1.sock" in plain and "1 migrating, 1 pending" in plain
    assert "━" in plain and "75% precopy" in plain and "40 MiB/s" in plain and "2.1 s" in plain
    assert COLOUR.search(out), "no colour on a terminal"
    uncoloured = _draw(view, no_color=True)
    assert not COLOUR.search(uncoloured), "NO_COLOR: no colours"
    assert "━" in uncoloured  # the bar is still drawn


def test_no_color_in_the_environment_is_honoured(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert live.Screen(io.StringIO(), tty=True).console.no_color
    monkeypatch.delenv("NO_COLOR")
    assert not live.Screen(io.StringIO(), tty=True).console.no_color


def test_tables_are_plain_text_unless_on_a_terminal():
    rows = [["host1", "up"], ["host2", "DOWN"]]
    piped = live.Screen(io.StringIO(), tty=False)
    piped.table(("HOST", "STATE"), rows)
    assert piped.file.getvalue() == "HOST   STATE\nhost1  up\nhost2  DOWN\n"  # type: ignore[attr-defined]
    tty = live.Screen(io.StringIO(), tty=True, width=80)
    tty.table(("HOST", "STATE"), rows)
    out = tty.file.getvalue()  # type: ignore[attr-defined]
    assert COLOUR.search(out) and re.sub(r"\x1b\[[0-9;]*m", "", out).split() == [
        "HOST",
        "STATE",
        "host1",
        "up",
        "host2",
        "DOWN",
    ]


def test_the_progress_bar_is_redrawn_in_place_on_a_terminal():
    screen = live.Screen(io.StringIO(), tty=True, width=120)
    with screen.live() as area:
        area.line("migrating: target prepared")
        area.show(live.progress_line(RUNNING.progress))
        area.show(live.progress_line(RUNNING.progress, at_least=0.9))
    out = screen.file.getvalue()  # type: ignore[attr-defined]
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out)
    assert "migrating: target prepared" in plain and "75% precopy" in plain and "90% precopy" in plain
    assert "\x1b[1A" in out or "\x1b[2K" in out  # rich moved the cursor back up to redraw
    # not a terminal: no live area, the lines are printed as they come
    piped = live.Screen(io.StringIO(), tty=False)
    with piped.live() as area:
        area.line("migrating")
        area.show(live.progress_line(RUNNING.progress))  # nothing: the caller prints plain lines
    assert piped.file.getvalue() == "migrating\n"  # type: ignore[attr-defined]


def test_the_rate_of_a_disk_mirror_is_measured_between_refreshes():
    """libvirt reports no rate while it mirrors disks: top measures it from the job's own clock."""
    figures = dict(job_phase=tpb.MIGRATION_PHASE_DISK_MIRROR, disk_total=200 * MiB)
    before = migration("m-disk", cpb.PHASE_MIGRATING, **figures, disk_processed=40 * MiB, disk_remaining=160 * MiB)
    before.progress.elapsed_ms = 4000
    now = migration("m-disk", cpb.PHASE_MIGRATING, **figures, disk_processed=56 * MiB, disk_remaining=144 * MiB)
    now.progress.elapsed_ms = 6000
    assert render.top_row(now, NOW)[5:10] == ["28% disk_mirror", "", "", "144 MiB", ""]  # nothing to measure yet
    assert render.top_row(now, NOW, before.progress)[5:10] == ["28% disk_mirror", "8.0 MiB/s", "", "144 MiB", "18 s"]
    assert "bw 8.0 MiB/s eta 18 s" in render.progress_bar(now.progress, previous=before.progress)


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_drain_of_an_empty_host_says_there_is_nothing_to_move(dry_run):
    d = cpb.Drain(id="d-1", host="host3", dry_run=dry_run, slots=1, state=cpb.DRAIN_STATE_SUCCEEDED)
    text = render.drain_detail(d)
    assert "Nothing to move: host3 runs no VM" in text
    assert ("the drain would only cordon it" in text) is dry_run
    assert "Estimated" not in text and "VM  STATE" not in text


def test_top_done_never_runs_backwards_as_a_new_precopy_pass_starts():
    """Pre-copy's remaining bytes grow again as a pass re-sends the pages the guest dirtied: top's
    DONE ran backwards (90% -> 61%) where `ferry migrate`'s bar holds."""
    figures = dict(job_phase=tpb.MIGRATION_PHASE_PRECOPY, memory_total=1024 * MiB, bandwidth_bps=100 * MiB)
    first = migration("m-1", cpb.PHASE_MIGRATING, **figures, memory_remaining=100 * MiB, elapsed_ms=9000)
    second = migration("m-1", cpb.PHASE_MIGRATING, **figures, memory_remaining=400 * MiB, elapsed_ms=10000)
    third = migration("m-1", cpb.PHASE_MIGRATING, **figures, memory_remaining=300 * MiB, elapsed_ms=11000)
    assert render.top_row(first, NOW)[5] == "90% precopy" and render.top_row(second, NOW)[5] == "61% precopy"
    assert render.top_row(second, NOW, first.progress)[5] == "90% precopy"  # the refresh before
    # two refreshes on, the one before says 61%: the most shown so far, as `ferry top` keeps it
    assert render.top_row(third, NOW, second.progress)[5] == "71% precopy"
    assert render.top_row(third, NOW, second.progress, at_least=0.9)[5] == "90% precopy"
    assert "90% precopy" in render.top_text([third], [], NOW, {"m-1": second.progress}, {"m-1": 0.9})
    view = _draw(live.top_view([third], [], NOW, "c1", {"m-1": second.progress}, {"m-1": 0.9}), no_color=True)
    assert "90% precopy" in view


def test_a_failed_refresh_of_top_is_a_status_line_under_the_last_figures():
    problem = "10:00:31  " + render.top_failed("UNREACHABLE", "Socket closed")
    out = re.sub(r"\x1b\[[0-9;]*m", "", _draw(live.top_view([RUNNING], [], NOW, "c1", problem=problem), no_color=True))
    assert "75% precopy" in out and out.splitlines()[-1] == problem  # under the figures of the last refresh
    never = _draw(live.top_view([], [], NOW, "c1", problem=problem, summary="no answer yet"), no_color=True)
    assert "no answer yet" in never and "nothing in flight" not in never
    plain = render.top_failed_text("UNREACHABLE", "Socket closed", NOW)
    assert plain.startswith("--- ") and plain.endswith("  refresh failed: UNREACHABLE: Socket closed (trying again)")


def test_plain_tables_line_up_by_display_width():
    """A VM named in CJK (two columns a character) pushed the rest of its row out of line."""
    rows = [["虚拟机一号", "host1", "running"], ["web-1", "host2", "running"], ["cafe\u0301", "host3", "ｆｕｌｌ"]]
    lines = render.table(("VM", "HOST", "STATE"), rows).splitlines()
    assert [render.cell_width(line[: line.index("host")]) for line in lines[1:]] == [12, 12, 12]
    assert lines[0] == "VM          HOST   STATE" and lines[3] == "cafe\u0301        host3  ｆｕｌｌ"


@pytest.fixture
def tokyo(monkeypatch):
    """Local time 9 hours ahead of UTC, whatever this test runs in."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_every_time_in_the_tables_is_local(tokyo):
    """`ferry drains` CREATED, a drain's history and a migration's actions printed UTC (naive
    ToDatetime()) beside the local times of `ferry migrations` and a migration's history."""
    at = {"seconds": 1_764_064_800}  # 2025-11-25 10:00:00 UTC, 19:00 in Tokyo
    m = cpb.Migration(
        id="m-1",
        created_at=at,
        actions=[tpb.PolicyAction(action="raise-downtime", at=at)],
        history=[tpb.TimedPhase(phase="Migrating", at=at)],
    )
    d = cpb.Drain(id="d-1", created_at=at, items=[cpb.DrainItem(vm="a")], history=[cpb.DrainChange(at=at)])
    assert render.migration_line(m)[-1] == render.drain_line(d)[-1] == "2025-11-25 19:00:00"
    detail = render.migration_detail(m)
    assert "    19:00:00  raise-downtime" in detail and "    19:00:00.000  migrating" in detail
    assert "  19:00:00.000  unspecified" in render.drain_detail(d)
    assert "10:00" not in detail + render.drain_detail(d)
