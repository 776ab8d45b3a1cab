"""Where the `ferry` CLI draws: rich on a terminal, plain text everywhere else.

:class:`Screen` decides once per run: on a terminal, tables get bold headers and coloured phases,
``ferry migrate`` a progress bar updated in place and ``ferry top`` a live view (rich's ``Live``);
colours follow ``NO_COLOR`` (rich reads it). When the output is not a terminal (a pipe, a file,
a script) the same content is printed as plain lines by ``render.py``, never wrapped or cut at a
guessed width and without escape codes. The figures come from ``render.py`` either way.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from ferry.cli import render
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb

# rich is imported where it draws, not here: a command whose output is not a terminal (a script,
# ``-o json``) never needs it, and importing it is ~30 ms of every such command's start-up
if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

#: colours of words that appear in cells (phases, host state)
STYLES = {
    "succeeded": "green",
    "failed": "bold red",
    "rolled_back": "red",
    "cancelled": "yellow",
    "rolling_back": "yellow",
    "pending": "dim",
    "up": "green",
    "DOWN": "bold red",
    "stalled": "bold yellow",
}
BAR_WIDTH = 20


def styled(cell: object) -> Text:
    from rich.text import Text

    text = str(cell)
    return Text(text, style=STYLES.get(text, ""))


def rich_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    """The plain table's content with a bold header and coloured phases, no box."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    t = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
    for h in headers:
        t.add_column(h, overflow="fold")
    for row in rows:
        t.add_row(*(c if isinstance(c, Text | ProgressBar) else styled(c) for c in row))
    return t


def progress_line(
    progress: tpb.MigrationProgress, at_least: float = 0.0, previous: tpb.MigrationProgress | None = None
) -> RenderableType:
    """``ferry migrate``'s bar on a terminal: a rich bar, then the plain line's figures."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    frac = max(render.fraction(progress), at_least)
    figures = render.progress_bar(progress, at_least=at_least, previous=previous).split("] ", 1)[1]
    line = Table.grid(padding=(0, 1))
    line.add_row(ProgressBar(total=1.0, completed=frac, width=30), Text(figures))
    return line


def top_view(
    in_flight: Sequence[cpb.Migration],
    finished: Sequence[cpb.Migration],
    now: datetime,
    source: str,
    previous: render.Previous | None = None,
    shown: render.Shown | None = None,
    problem: str = "",
    summary: str | None = None,
) -> RenderableType:
    """One refresh of ``ferry top`` on a terminal; ``shown``: the most of each migration DONE showed
    before (never less now); ``problem``: why the refreshes since this one failed, a status line
    under it (the figures stay this refresh's); ``summary``: the header's words instead of the count
    in flight (before any refresh succeeded)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    previous, shown = previous or {}, shown or {}
    header = Text.assemble(
        ("ferry top", "bold"),
        f"  {now.astimezone().strftime('%H:%M:%S')}  {source}  ",
        (render.summary(in_flight) if summary is None else summary, "bold"),
        ("  (Ctrl-C leaves; the migrations go on)", "dim"),
    )
    parts: list[RenderableType] = [header]
    if in_flight:
        t = Table(box=None, header_style="bold", pad_edge=False, show_edge=False, expand=False)
        for h in ("ID", "VM", "FROM -> TO", "PHASE", "PROGRESS", "", "RATE", "DIRTY", "LEFT", "ETA", "AGE", "NOTE"):
            t.add_column(h, no_wrap=h != "NOTE", overflow="ellipsis")
        for m in in_flight:
            before, at_least = previous.get(m.id), shown.get(m.id, 0.0)
            row = render.top_row(m, now, before, at_least)
            done, rate, dirty, left, eta, age, note = row[5:]
            bar: RenderableType = Text("")
            if render.shows_progress(m) and render.known(m.progress):
                bar = ProgressBar(total=1.0, completed=render.top_fraction(m, before, at_least), width=BAR_WIDTH)
            t.add_row(
                m.id,
                m.vm,
                f"{m.source_host} -> {m.target_host}",
                styled(render.phase_name(m.phase)),
                bar,
                done,
                rate,
                dirty,
                left,
                styled(eta),
                age,
                Text(note, style="dim"),
            )
        parts.append(t)
    if finished:
        parts.append(Text("finished:", style="bold"))
        for m in finished:
            parts.append(Text("  " + render.finished_line(m), style=STYLES.get(render.phase_name(m.phase), "")))
    if problem:
        parts.append(Text(problem, style="bold yellow"))
    return Group(*parts)


class Screen:
    """The CLI's standard output: a terminal (rich) or not (plain text)."""

    def __init__(self, file: TextIO | None = None, *, tty: bool | None = None, width: int | None = None) -> None:
        self.file = file if file is not None else sys.stdout
        self.tty = self.file.isatty() if tty is None else tty
        self._width = width

    @cached_property
    def console(self) -> Console:
        from rich.console import Console

        return Console(file=self.file, force_terminal=self.tty, highlight=False, width=self._width)

    def text(self, text: str) -> None:
        print(text, file=self.file, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        if self.tty:
            self.console.print(rich_table(headers, rows))
        else:
            self.text(render.table(headers, rows))

    def live(self, *, enabled: bool = True) -> LiveArea:
        return LiveArea(self, enabled=enabled)


class LiveArea:
    """A region redrawn in place on a terminal (rich's Live); lines printed with :meth:`line`
    scroll above it. Not on a terminal, :meth:`show` prints nothing (callers print lines)."""

    def __init__(self, screen: Screen, *, enabled: bool = True) -> None:
        self.screen = screen
        self.enabled = enabled and screen.tty
        self._live: Live | None = None

    def __enter__(self) -> LiveArea:
        if self.enabled:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text(""), console=self.screen.console, auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()

    def show(self, renderable: RenderableType) -> None:
        if self._live is not None:
            self._live.update(renderable, refresh=True)

    def line(self, text: str, style: str = "") -> None:
        if self._live is not None:
            from rich.text import Text

            self._live.console.print(Text(text, style=style))
        else:
            self.screen.text(text)
