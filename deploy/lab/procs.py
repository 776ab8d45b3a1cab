"""Processes the lab starts: spawn them detached, record them, tell whether they still run,
stop them by recorded PID, and run short commands with a time limit.

A ProcessRecord holds the PID *and* the kernel's start time of that process (``/proc/PID/stat``
field 22), so a PID that was recycled by some other process is never mistaken for ours, and
never signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.errors import DeadlineExceeded, FailedPrecondition, Internal

NAMESPACE_KINDS = ("net", "mnt", "uts")


@dataclass(frozen=True)
class Clock:
    """Time as the lab's waiting loops see it (injected so tests can fake it)."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


SYSTEM_CLOCK = Clock()


@dataclass(frozen=True)
class ProcessRecord:
    """One process we started, as written to state.json."""

    pid: int
    start_ticks: int  # /proc/PID/stat starttime; 0 = exited before we looked
    argv: tuple[str, ...]
    log: str = ""  # where its stdout/stderr go ("" = /dev/null)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "argv": list(self.argv), "log": self.log}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        return cls(
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            argv=tuple(data["argv"]),
            log=str(data.get("log", "")),
        )


# ---------------------------------------------------------------- /proc readers


@dataclass(frozen=True)
class ProcStat:
    state: str  # R, S, D, Z (zombie), X (dead), ...
    start_ticks: int


def parse_proc_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat. The command name (field 2) may hold spaces and parentheses, so
    fields are counted from the last ')'.

    >>> parse_proc_stat("42 (sleep) S 1 42 42 0 -1 4194560 " + "0 " * 8 + "20 0 1 0 98765 0")
    ProcStat(state='S', start_ticks=98765)
    """
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state); starttime is field 22
    return ProcStat(state=rest[0], start_ticks=int(rest[22 - 3]))


def read_stat(pid: int) -> ProcStat | None:
    try:
        return parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def is_alive(record: ProcessRecord | None) -> bool:
    """The recorded process still runs (same PID *and* start time, not a zombie)."""
    if record is None or record.start_ticks == 0:
        return False
    _reap(record.pid)
    stat = read_stat(record.pid)
    return stat is not None and stat.start_ticks == record.start_ticks and stat.state not in "ZX"


def namespace_ids(pid: int) -> dict[str, str]:
    """The namespaces of ``pid`` that are *not* the caller's own, e.g.
    ``{"net": "net:[4026532xyz]", "uts": "uts:[...]"}`` for the core holder, which shares our
    mount namespace (empty when the process is gone)."""
    ids = {}
    for kind in NAMESPACE_KINDS:
        try:
            theirs = os.readlink(f"/proc/{pid}/ns/{kind}")
        except OSError:
            return {}
        if theirs != os.readlink(f"/proc/self/ns/{kind}"):
            ids[kind] = theirs
    return ids


def pids_in_namespaces(ns_ids: Iterable[str]) -> dict[int, str]:
    """Every live process in any of the given namespaces (matched on net and mnt),
    with its command line, e.g. to prove that nothing of a lab is left."""
    # never our own namespaces: that would be every process on the machine
    wanted = set(ns_ids) - {os.readlink(f"/proc/self/ns/{kind}") for kind in NAMESPACE_KINDS}
    found: dict[int, str] = {}
    if not wanted:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        for kind in ("net", "mnt"):
            try:
                if os.readlink(f"/proc/{pid}/ns/{kind}") in wanted:
                    stat = read_stat(pid)
                    if stat is not None and stat.state not in "ZX":
                        found[pid] = _cmdline(pid)
                    break
            except OSError:
                break
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


# ---------------------------------------------------------------- start / stop

# Popen objects of the processes this Python process started: kept so they can be reaped
# (no zombies while e.g. a pytest session runs) and so an early exit code can be reported.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        child.poll()


def exit_status(record: ProcessRecord) -> int | None:
    """The exit code of a process this Python process started and that has exited."""
    child = _children.get(record.pid)
    return None if child is None else child.poll()


def spawn(argv: Sequence[str], *, log: Path | None = None, env: Mapping[str, str] | None = None) -> ProcessRecord:
    """Start a long-running process detached from our session (Ctrl-C on the command that
    started it does not reach it), stdin from /dev/null, stdout+stderr to ``log``."""
    out: Any = subprocess.DEVNULL
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab")  # noqa: SIM115 - handed to the child, closed right below
    try:
        child = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=dict(env) if env is not None else None,
        )
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot start {argv[0]}: {exc}",
            reason="LAB_SPAWN_FAILED",
            hint="install the lab's packages (deploy/lab/apt-packages.txt) and run as root",
        ) from exc
    finally:
        if log is not None:
            out.close()
    _children[child.pid] = child
    stat = read_stat(child.pid)
    ticks = stat.start_ticks if stat is not None else 0
    return ProcessRecord(pid=child.pid, start_ticks=ticks, argv=tuple(argv), log=str(log) if log else "")


def wait_until(
    predicate: Callable[[], bool], timeout: float, *, clock: Clock = SYSTEM_CLOCK, interval: float = 0.1
) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = clock.now() + timeout
    while True:
        if predicate():
            return True
        if clock.now() >= deadline:
            return False
        clock.sleep(interval)


def stop(record: ProcessRecord | None, *, grace: float = 10.0, clock: Clock = SYSTEM_CLOCK) -> str:
    """SIGTERM the recorded process, SIGKILL it after ``grace`` seconds, wait until it is gone.

    Returns what happened: "not running", "stopped" or "killed".
    """
    if not is_alive(record):
        return "not running"
    assert record is not None
    _signal(record, signal.SIGTERM)
    _signal(record, signal.SIGCONT)  # a paused (SIGSTOP) process can only act on it when resumed
    if wait_until(lambda: not is_alive(record), grace, clock=clock, interval=0.05):
        return "stopped"
    _signal(record, signal.SIGKILL)
    if wait_until(lambda: not is_alive(record), 10.0, clock=clock, interval=0.05):
        return "killed"
    raise Internal(
        f"process {record.pid} ({record.argv[0]}) survived SIGKILL",
        reason="LAB_PROCESS_STUCK",
        hint=f"look at /proc/{record.pid}/stack; it is probably stuck in the kernel",
    )


def send_signal(record: ProcessRecord | None, signum: signal.Signals) -> bool:
    """Signal a recorded process if it still runs (same PID and start time); False if not."""
    if not is_alive(record):
        return False
    assert record is not None
    _signal(record, signum)
    return True


def is_paused(record: ProcessRecord | None) -> bool:
    """The recorded process runs but is stopped by a signal (SIGSTOP: state T)."""
    if not is_alive(record):
        return False
    assert record is not None
    stat = read_stat(record.pid)
    return stat is not None and stat.state == "T"


def _signal(record: ProcessRecord, signum: signal.Signals) -> None:
    # is_alive() checked the start time just before: this PID is still the one we started
    try:
        os.kill(record.pid, signum)
    except ProcessLookupError:
        pass


def kill_pid(pid: int, signum: signal.Signals = signal.SIGKILL) -> None:
    """Signal a PID found by namespace membership (a process inside the lab's namespaces)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- short commands


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str = field(repr=False, default="")


def run(
    argv: Sequence[str],
    *,
    timeout: float = 30.0,
    check: bool = True,
    input_text: str | None = None,
    reason: str = "LAB_COMMAND_FAILED",
    hint: str = "the command's own error is quoted in the message",
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run a short command with a time limit; a failure becomes a FerryError carrying its
    stderr (for the person reading it, never to be parsed)."""
    try:
        done = subprocess.run(
            list(argv),
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeadlineExceeded(
            f"{' '.join(argv)} did not finish within {timeout:.0f} s", reason="LAB_COMMAND_TIMEOUT", hint=hint
        ) from exc
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot run {argv[0]}: {exc}",
            reason="LAB_COMMAND_MISSING",
            hint="install the lab's packages (deploy/lab/apt-packages.txt)",
        ) from exc
    result = CommandResult(tuple(argv), done.returncode, done.stdout, done.stderr)
    if check and done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-800:]
        raise Internal(f"{' '.join(argv)} exited with {done.returncode}: {detail}", reason=reason, hint=hint)
    return result


def log_tail(log: Path | str, lines: int = 5) -> str:
    """The last lines of a log, joined on one line (for error messages)."""
    try:
        text = Path(log).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
