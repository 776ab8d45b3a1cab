"""Pure rendering for the `ferry` CLI as plain text: tables, sizes, figures of a migration in
flight (rate, dirty rate, ETA), the progress line. No I/O here; ``live.py`` draws the same
figures with rich on a terminal. Phases, job phases and drain states are spelled as in the JSON
(``jsonout``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import cast

from google.protobuf.timestamp_pb2 import Timestamp

from ferry.cli.jsonout import enum_word, label_word, phase_word
from ferry.units import human_bytes
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb

FINAL: frozenset[cpb.Phase] = frozenset(
    {cpb.PHASE_SUCCEEDED, cpb.PHASE_FAILED, cpb.PHASE_CANCELLED, cpb.PHASE_ROLLED_BACK}
)
IN_FLIGHT: tuple[cpb.Phase, ...] = tuple(cast(cpb.Phase, p) for p in cpb.Phase.values() if p and p not in FINAL)
DRAIN_FINAL: frozenset[cpb.DrainState] = frozenset(
    {cpb.DRAIN_STATE_SUCCEEDED, cpb.DRAIN_STATE_INCOMPLETE, cpb.DRAIN_STATE_CANCELLED}
)


def size(n: int) -> str:
    """Bytes as a short human figure: 0 B, 512 B, 1.5 KiB, 256 MiB, 3.2 GiB."""
    return human_bytes(n, short=True)


def bandwidth_use(h: cpb.HostStatus) -> str:
    """A host's migration bandwidth out/in of its budget (MiB/s), "-" without a budget.

    >>> bandwidth_use(cpb.HostStatus(bandwidth_budget_mibps=40, bandwidth_out_mibps=40, bandwidth_in_mibps=8))
    '40/8 of 40'
    >>> bandwidth_use(cpb.HostStatus())
    '-'
    """
    if not h.bandwidth_budget_mibps:
        return "-"
    return f"{h.bandwidth_out_mibps}/{h.bandwidth_in_mibps} of {h.bandwidth_budget_mibps}"


def migration_problems(hosts: Sequence[cpb.HostStatus]) -> list[str]:
    """What each listed host's agent reports against migrating to or from it (preflight blocks on
    it), with the fix.

    >>> h = cpb.HostStatus(name="h2", facts=tpb.HostFacts(libvirt_uri_problem="the URI reaches h3"))
    >>> for line in migration_problems([h, cpb.HostStatus(name="h1")]): print(line)
    h2: TARGET_URI_MISMATCH: the URI reaches h3
      fix: set advertise_libvirt_uri in h2's agent config to its own libvirtd's URI, restart the agent
    """
    lines = []
    for h in hosts:
        if h.facts.libvirt_uri_problem:
            lines.append(f"{h.name}: TARGET_URI_MISMATCH: {h.facts.libvirt_uri_problem}")
            lines.append(
                f"  fix: set advertise_libvirt_uri in {h.name}'s agent config to its own libvirtd's URI, "
                "restart the agent"
            )
        if h.facts.migration_tls_problem:
            lines.append(f"{h.name}: MIGRATION_TLS_MISSING: {h.facts.migration_tls_problem}")
            lines.append(
                f"  fix: install QEMU's migration certificates on {h.name}, from a CA that signs the hypervisors only"
            )
    return lines


def shared_host_uuids(hosts: Sequence[cpb.HostStatus]) -> list[str]:
    """One line per group of listed hosts that report one libvirt host UUID, with the fix.

    >>> f = lambda u: tpb.HostFacts(host_uuid=u)
    >>> hs = [cpb.HostStatus(name="h1", facts=f("5e1f"), shares_host_uuid_with=["h3"]),
    ...       cpb.HostStatus(name="h3", facts=f("5e1f"), shares_host_uuid_with=["h1"])]
    >>> print(shared_host_uuids(hs)[0])
    h1, h3 report one libvirt host UUID (5e1f): libvirt takes them for one machine, no migration runs between them
    """
    lines, seen = [], set()
    for h in hosts:
        if not h.shares_host_uuid_with or h.name in seen:
            continue
        group = sorted({h.name, *h.shares_host_uuid_with})
        seen.update(group)
        lines.append(
            f"{', '.join(group)} report one libvirt host UUID ({h.facts.host_uuid}): libvirt takes them for one "
            "machine, no migration runs between them"
        )
        lines.append(
            '  fix: give each its own: host_uuid = "<output of uuidgen>" in /etc/libvirt/libvirtd.conf, '
            "then restart libvirtd there"
        )
    return lines


def api_levels(hosts: Sequence[cpb.HostStatus]) -> list[str]:
    """Lines under ``ferry hosts`` when the agents speak different API levels (ferry/compat.py), as
    in a rolling upgrade: which hosts are behind, and what is refused until they are upgraded.

    >>> def h(name, level):
    ...     return cpb.HostStatus(name=name, facts=tpb.HostFacts(hostname=name, agent_version="0.1.0", api_level=level))
    >>> api_levels([h("host1", 1), h("host3", 1)])
    []
    >>> first, then = api_levels([h("host1", 1), h("host2", 0), h("host3", 1)])
    >>> first
    'agents of different API levels (an upgrade under way?): level 0: host2 (ferry-agent 0.1.0); level 1: host1, host3'
    >>> then.split(",")[0]
    '  until host2 is upgraded'
    """
    known = [x for x in hosts if x.facts.hostname]
    levels = sorted({x.facts.api_level for x in known})
    if len(levels) < 2:
        return []

    def at(level: int) -> list[cpb.HostStatus]:
        return [x for x in known if x.facts.api_level == level]

    behind = [x for x in known if x.facts.api_level < levels[-1]]
    parts = [
        f"level {lvl}: "
        + ", ".join(
            x.name + (f" (ferry-agent {x.facts.agent_version})" if x.facts.agent_version and lvl < levels[-1] else "")
            for x in at(lvl)
        )
        for lvl in levels
    ]
    names = ", ".join(x.name for x in behind)
    verb, their = ("is", "its") if len(behind) == 1 else ("are", "their")
    return [
        "agents of different API levels (an upgrade under way?): " + "; ".join(parts),
        f"  until {names} {verb} upgraded, {their} migrations that leave disks in place or copy with "
        "--copy-storage-inc are refused as unverified (or need --unsafe)",
    ]


def cell_width(text: str) -> int:
    """The columns ``text`` takes on a terminal: two per wide character (East Asian Wide or
    Fullwidth: CJK, fullwidth forms), none per combining mark, one per other character. (rich
    measures its own tables so; the plain ones do not import it.)

    >>> cell_width("web-1"), cell_width("虚拟机一号"), cell_width("cafe\u0301"), cell_width("ＡＢ")
    (5, 10, 4, 4)
    """
    return sum(_char_width(ch) for ch in text)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table, its columns padded by display width (:func:`cell_width`),
    so a VM named in CJK does not push the rest of its row out of line."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(cell_width(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c + " " * (w - cell_width(c)) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def phase_name(phase: int) -> str:
    """PHASE_ROLLED_BACK -> rolled_back (the JSON's spelling)."""
    return phase_word(phase)


def vm_state(v: cpb.VM) -> str:
    """A VM's state for ``ferry vms``; on a host that does not answer, its last known one."""
    state = enum_word(tpb.DomainState.DESCRIPTOR, v.domain.state)
    return f"unreachable (last: {state})" if v.unreachable else state


def job_phase_name(phase: int) -> str:
    """MIGRATION_PHASE_DISK_MIRROR -> disk_mirror (the JSON's spelling)."""
    return enum_word(tpb.MigrationPhase.DESCRIPTOR, phase)


def duration(seconds: float) -> str:
    """A short duration: 0.4 s, 12 s, 3m05s, 1h02m.

    >>> duration(0.42), duration(12.3), duration(185), duration(3725)
    ('0.4 s', '12 s', '3m05s', '1h02m')
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def fraction(progress: tpb.MigrationProgress) -> float:
    """Share of the job done, memory and disk together, in [0, 1]. Memory counts as far as libvirt
    has been through it (total - remaining): a zero page is skipped with a few bytes sent, so the
    bytes sent held a mostly empty guest's bar far behind (38 % on the lab when the job was nine
    tenths through), then it jumped to the end.

    >>> MiB = 1 << 20
    >>> round(fraction(tpb.MigrationProgress(memory_total=256 * MiB, memory_processed=83 * MiB,
    ...                                      memory_remaining=135 * MiB)), 2)
    0.47
    """
    memory = progress.memory_total or progress.memory_processed + progress.memory_remaining
    done = memory_through(progress) + progress.disk_processed
    whole = memory + progress.disk_processed + progress.disk_remaining
    if whole == 0:
        return 0.0
    return min(1.0, done / whole)


def memory_through(progress: tpb.MigrationProgress) -> int:
    """The memory libvirt has been through (total - remaining; the bytes sent without a total)."""
    memory = progress.memory_total or progress.memory_processed + progress.memory_remaining
    return max(memory - progress.memory_remaining, 0)


def known(progress: tpb.MigrationProgress) -> bool:
    """Whether the job reported any byte counts yet (before that there is no percentage)."""
    return bool(
        progress.memory_processed + progress.memory_remaining + progress.disk_processed + progress.disk_remaining
    )


def remaining(progress: tpb.MigrationProgress) -> int:
    return progress.memory_remaining + progress.disk_remaining


def dirty_rate(progress: tpb.MigrationProgress) -> int:
    """Bytes the guest dirties per second (libvirt reports pages per second)."""
    return progress.dirty_rate_pages * (progress.page_size or 4096)


def transfer_rate(progress: tpb.MigrationProgress, previous: tpb.MigrationProgress | None = None) -> int:
    """Bytes per second being sent: libvirt's figure when it reports one (the memory stream),
    else measured between two polls of the same job (disk mirroring reports no rate).

    >>> before = tpb.MigrationProgress(disk_processed=10 << 20, elapsed_ms=1000)
    >>> transfer_rate(tpb.MigrationProgress(disk_processed=30 << 20, elapsed_ms=3000), before) == 10 << 20
    True
    """
    if progress.bandwidth_bps:
        return progress.bandwidth_bps
    if previous is None or progress.elapsed_ms <= previous.elapsed_ms:
        return 0
    sent = progress.memory_processed + progress.disk_processed - previous.memory_processed - previous.disk_processed
    return max(0, sent * 1000 // (progress.elapsed_ms - previous.elapsed_ms))


def eta_s(progress: tpb.MigrationProgress, rate: int | None = None) -> float | None:
    """Seconds left at ``rate`` (default: libvirt's reported one), None when it cannot be told
    (no rate yet) or pre-copy does not converge (the guest dirties memory as fast as it is sent).
    During pre-copy the stream gains only ``rate - dirty rate`` on what is left.

    >>> MiB = 1 << 20
    >>> eta_s(tpb.MigrationProgress(phase=tpb.MIGRATION_PHASE_PRECOPY, memory_remaining=100 * MiB,
    ...       bandwidth_bps=30 * MiB, dirty_rate_pages=2560, page_size=4096))
    5.0
    >>> eta_s(tpb.MigrationProgress(phase=tpb.MIGRATION_PHASE_PRECOPY, memory_remaining=100 * MiB,
    ...       bandwidth_bps=10 * MiB, dirty_rate_pages=2560, page_size=4096)) is None
    True
    """
    gain = progress.bandwidth_bps if rate is None else rate
    if progress.phase == tpb.MIGRATION_PHASE_PRECOPY:
        gain -= dirty_rate(progress)
    if gain <= 0 or not known(progress):
        return None
    return remaining(progress) / gain


def progress_bar(
    progress: tpb.MigrationProgress,
    width: int = 30,
    at_least: float = 0.0,
    previous: tpb.MigrationProgress | None = None,
) -> str:
    """One status line; the bar never shows less than ``at_least`` (a bar that runs backwards,
    as pre-copy's remaining bytes grow again, misleads more than one that pauses). E.g.
    ``[###############...............]  50% precopy mem 128 MiB/256 MiB disk 0 B left iter 2 dirty 12 MiB/s 3.2 s``;
    ``previous`` (the job's last figures) lets it measure the rate when libvirt reports none.
    """
    frac = max(fraction(progress), at_least)
    filled = int(round(frac * width))
    bar = "#" * filled + "." * (width - filled)
    parts = [f"[{bar}] {frac * 100:3.0f}%" if known(progress) else f"[{bar}]  --%", job_phase_name(progress.phase)]
    if progress.memory_total:
        parts.append(f"mem {size(memory_through(progress))}/{size(progress.memory_total)}")  # as the bar counts it
    if progress.disk_total:
        parts.append(f"disk {size(progress.disk_remaining)} left")
    if progress.iteration:
        parts.append(f"iter {progress.iteration}")
    if progress.dirty_rate_pages:
        parts.append(f"dirty {size(dirty_rate(progress))}/s")
    rate = transfer_rate(progress, previous)
    if rate:
        parts.append(f"bw {size(rate)}/s")
    # the agent's ETA knows the policy (a switch to post-copy to come); else the rates alone
    eta = progress.eta_ms / 1000 if progress.eta_ms else eta_s(progress, rate)
    if eta is not None:
        parts.append(f"eta {duration(eta)}")
    parts.append(f"{progress.elapsed_ms / 1000:.1f} s")
    if progress.postcopy_failed:
        parts.append("post-copy link broken: resuming")
    return " ".join(parts)


_POSTCOPY = {
    tpb.POSTCOPY_MODE_UNSPECIFIED: "never",
    tpb.POSTCOPY_MODE_NEVER: "never",
    tpb.POSTCOPY_MODE_MANUAL: "by hand",
    tpb.POSTCOPY_MODE_ON_PREDICTION: "on prediction",
    tpb.POSTCOPY_MODE_ON_STALL: "on stall",
    tpb.POSTCOPY_MODE_AFTER: "after",
}


def policy_summary(p: tpb.ConvergencePolicy) -> str:
    """A policy in one line: ``bw 32 MiB/s, downtime 100->500 ms (3 steps), post-copy on prediction ...``"""
    parts = [f"bw {p.bandwidth_mibps} MiB/s" if p.bandwidth_mibps else "bw default"]
    if p.downtime_steps:
        steps = p.downtime_steps
        ladder = f"{steps[0].max_downtime_ms}->{steps[-1].max_downtime_ms} ms ({len(steps)} steps)"
        parts.append(f"downtime {steps[0].max_downtime_ms} ms" if len(steps) == 1 else f"downtime {ladder}")
    if p.auto_converge:
        parts.append(
            "auto-converge"
            + (f" {p.auto_converge_initial}+{p.auto_converge_increment}%" if p.auto_converge_initial else "")
        )
    pc = _POSTCOPY.get(p.postcopy, "?")
    if p.postcopy == tpb.POSTCOPY_MODE_AFTER:
        pc = f"after {p.postcopy_after_s:.0f} s"
    parts.append(f"post-copy {pc}" + (f" at {p.postcopy_bandwidth_mibps} MiB/s" if p.postcopy_bandwidth_mibps else ""))
    timeout = f"{p.completion_timeout_s:.0f} s" if p.completion_timeout_s else f"{p.timeout_per_gib_s:.0f} s/GiB"
    parts.append(f"timeout {timeout}")
    if p.progress_timeout_s:
        parts.append(f"no progress {p.progress_timeout_s:.0f} s")
    parts.append("then force-complete" if p.timeout_action == tpb.TIMEOUT_ACTION_FORCE_COMPLETE else "then abort")
    if p.parallel_connections:
        parts.append(f"{p.parallel_connections} connections")
    if p.compression:
        parts.append("compression " + "+".join(p.compression))
    if p.refuse_unfinishable:
        parts.append("refuses what it cannot finish")
    return ", ".join(parts)


def prediction_lines(policy: tpb.ConvergencePolicy, prediction: tpb.Prediction) -> list[str]:
    """What preflight and submit show of the policy and the prediction."""
    lines = []
    if policy.ByteSize():
        lines.append(f"  policy: {policy.name or '(from the flags)'}: {policy_summary(policy)}")
    if prediction.words:
        lines.append(f"  prediction: {prediction.words}")
    return lines


def submitted_note(m: cpb.Migration) -> str:
    """What `ferry migrate` adds to its first line: the policy chosen and the prediction.

    >>> submitted_note(cpb.Migration(policy=tpb.ConvergencePolicy(name="busy"), prediction=tpb.Prediction(words="w")))
    ' (policy busy); predicted: w'
    >>> submitted_note(cpb.Migration())
    ''
    """
    note = f" (policy {m.policy.name})" if m.policy.name else ""
    return note + (f"; predicted: {m.prediction.words}" if m.prediction.words else "")


def policies(resp: cpb.ListPoliciesResponse) -> str:
    """`ferry policies`: each policy in a line, then the selector rules in order."""
    if not resp.policies:
        return "no convergence policies configured ([policies.NAME] in the coordinator config); flags only"
    rows = [[p.name, policy_summary(p)] for p in resp.policies]
    out = table(("POLICY", "WHAT IT DOES"), rows)
    if resp.selectors:
        out += "\n\nChosen for a migration without --policy (first match):"
        for sel in resp.selectors:
            when = [
                f"VM {sel.vm}" if sel.vm else "",
                f"memory >= {size(sel.min_memory_bytes)}" if sel.min_memory_bytes else "",
            ]
            when.append(f"memory <= {size(sel.max_memory_bytes)}" if sel.max_memory_bytes else "")
            out += f"\n  {sel.policy}: " + (" and ".join(w for w in when if w) or "every VM")
    return out


def cordoned(h: cpb.HostStatus, asked: str) -> str:
    """What ``ferry hosts cordon`` did; ``asked``: the reason given. A repeat keeps the first
    reason and time (a retried call changes nothing), and says so when the words differ.

    >>> h = cpb.HostStatus(name="h1", cordoned=True, cordon_reason="fan")
    >>> h.cordoned_at.FromSeconds(1_700_000_000)
    >>> cordoned(h, "fan").startswith("h1 cordoned since "), cordoned(h, "psu").endswith("to change it)")
    (True, True)
    >>> cordoned(cpb.HostStatus(name="h1", cordoned=True), "")
    'h1 cordoned: no reason given'
    """
    since = f" since {_time(h.cordoned_at)}" if h.cordoned_at.seconds else ""
    text = f"{h.name} cordoned{since}: {h.cordon_reason or 'no reason given'}"
    if h.drain_id:
        text += f" (by drain {h.drain_id})"
    if asked and asked != h.cordon_reason:
        text += " (it was cordoned already: the first reason is kept; uncordon and cordon again to change it)"
    return text


def _time(ts: Timestamp) -> str:
    """A timestamp in local time for tables; "" when unset."""
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else ""


def _clock(ts: Timestamp, *, ms: bool = False) -> str:
    """A timestamp's time of day in local time, as a record's history and actions list it (like
    :func:`_time`: the wire's timestamps are UTC, a naive ``ToDatetime()`` would print UTC)."""
    at = ts.ToDatetime(tzinfo=UTC).astimezone()
    return at.strftime("%H:%M:%S.%f")[:-3] if ms else at.strftime("%H:%M:%S")


def migration_line(m: cpb.Migration) -> list[object]:
    return [
        m.id,
        m.vm,
        m.source_host,
        m.target_host,
        phase_name(m.phase),
        m.error.reason if m.error.reason else "",
        _time(m.created_at),
    ]


MIGRATION_HEADERS = ("ID", "VM", "FROM", "TO", "PHASE", "REASON", "CREATED")


def note(m: cpb.Migration) -> str:
    """Why a migration is where it is: its error, else the last history entry's reason."""
    if m.error.reason:
        return f"{m.error.reason}: {m.error.message}"
    return m.history[-1].reason if m.history else ""


def age_s(m: cpb.Migration, now: datetime) -> float:
    """Seconds since the migration was submitted."""
    if not m.created_at.seconds:
        return 0.0
    return max(0.0, (now - m.created_at.ToDatetime(tzinfo=UTC)).total_seconds())


def shows_progress(m: cpb.Migration) -> bool:
    """A migration whose job figures mean something now (libvirt's job runs or just ended)."""
    return m.HasField("progress") and m.phase in (cpb.PHASE_MIGRATING, cpb.PHASE_FINISHING)


#: ``ferry top`` as plain lines (not a terminal): one row per migration in flight
TOP_HEADERS = ("ID", "VM", "FROM", "TO", "PHASE", "DONE", "RATE", "DIRTY", "LEFT", "ETA", "AGE", "NOTE")


def top_fraction(m: cpb.Migration, previous: tpb.MigrationProgress | None = None, at_least: float = 0.0) -> float:
    """The share of ``m``'s job ``ferry top`` shows: never less than ``at_least`` (the most it showed
    of it before) nor than ``previous`` (its progress one refresh ago) had. As ``ferry migrate``'s
    bar (:func:`progress_bar`): pre-copy's remaining bytes grow again when a pass re-sends the pages
    the guest dirtied, and a DONE that runs backwards misleads more than one that pauses.

    >>> def m(left): return cpb.Migration(progress=tpb.MigrationProgress(memory_total=100, memory_remaining=left))
    >>> top_fraction(m(40)), top_fraction(m(40), m(10).progress), top_fraction(m(40), at_least=0.95)
    (0.6, 0.9, 0.95)
    """
    frac = max(fraction(m.progress), at_least)
    if previous is not None and known(previous):
        frac = max(frac, fraction(previous))
    return frac


def top_row(
    m: cpb.Migration, now: datetime, previous: tpb.MigrationProgress | None = None, at_least: float = 0.0
) -> list[str]:
    """``ferry top``'s figures of one migration, as text (``live.py`` draws the same on a terminal);
    ``previous``: its progress one refresh ago, to measure the rate libvirt does not report;
    ``at_least``: the most of it DONE showed before (:func:`top_fraction`)."""
    figures = ["", "", "", "", ""]
    if shows_progress(m):
        p = m.progress
        rate = transfer_rate(p, previous)
        eta = eta_s(p, rate)
        done = top_fraction(m, previous, at_least)
        figures = [
            f"{done * 100:.0f}% {job_phase_name(p.phase)}" if known(p) else f"-- {job_phase_name(p.phase)}",
            f"{size(rate)}/s" if rate else "",
            f"{size(dirty_rate(p))}/s" if p.dirty_rate_pages else "",
            size(remaining(p)) if known(p) else "",
            duration(eta) if eta is not None else ("stalled" if rate else ""),
        ]
    return [m.id, m.vm, m.source_host, m.target_host, phase_name(m.phase), *figures, duration(age_s(m, now)), note(m)]


def finished_line(m: cpb.Migration) -> str:
    """One finished migration, for ``ferry top``'s footer.

    >>> r = tpb.CompletedJob(time_elapsed_ms=21000, downtime_not_measured=True)
    >>> m = cpb.Migration(id="m-1", vm="g1", source_host="h1", target_host="h3", phase=cpb.PHASE_SUCCEEDED, result=r)
    >>> finished_line(m)
    '  m-1  g1 h1 -> h3  succeeded in 21 s, downtime not measured (post-copy)'
    """
    line = f"{_time(m.updated_at) or _time(m.created_at)}  {m.id}  {m.vm} {m.source_host} -> {m.target_host}  "
    line += phase_name(m.phase)
    if m.HasField("result") and m.result.time_elapsed_ms:
        r = m.result
        downtime = "not measured (post-copy)" if r.downtime_not_measured else f"{r.downtime_ms} ms"
        line += f" in {duration(r.time_elapsed_ms / 1000)}, downtime {downtime}"
    if m.error.reason:
        line += f"  {m.error.reason}"
    return line


Previous = Mapping[str, tpb.MigrationProgress]  # migration ID -> its progress one refresh ago
Shown = Mapping[str, float]  # migration ID -> the most of it ``ferry top`` showed done so far


def top_text(
    in_flight: Sequence[cpb.Migration],
    finished: Sequence[cpb.Migration],
    now: datetime,
    previous: Previous | None = None,
    shown: Shown | None = None,
) -> str:
    """One refresh of ``ferry top`` as plain lines (when the output is not a terminal)."""
    previous, shown = previous or {}, shown or {}
    lines = [f"--- {now.astimezone().strftime('%Y-%m-%d %H:%M:%S')}  {summary(in_flight)}"]
    if in_flight:
        rows = [top_row(m, now, previous.get(m.id), shown.get(m.id, 0.0)) for m in in_flight]
        lines.append(table(TOP_HEADERS, rows))
    if finished:
        lines += ["finished:"] + [f"  {finished_line(m)}" for m in finished]
    return "\n".join(lines)


def top_failed(reason: str, message: str) -> str:
    """A refresh of ``ferry top`` that failed (the coordinator restarting, a replica failing over):
    top says so and goes on refreshing.

    >>> top_failed("UNREACHABLE", "Socket closed")
    'refresh failed: UNREACHABLE: Socket closed (trying again)'
    """
    return f"refresh failed: {reason}: {message} (trying again)"


def top_failed_text(reason: str, message: str, now: datetime) -> str:
    """A failed refresh as plain lines: a block of its own, as :func:`top_text` begins one."""
    return f"--- {now.astimezone().strftime('%Y-%m-%d %H:%M:%S')}  {top_failed(reason, message)}"


def summary(in_flight: Sequence[cpb.Migration]) -> str:
    """``2 migrating, 1 pending`` (or ``nothing in flight``)."""
    counts: dict[str, int] = {}
    for m in in_flight:
        counts[phase_name(m.phase)] = counts.get(phase_name(m.phase), 0) + 1
    if not counts:
        return "nothing in flight"
    return ", ".join(f"{n} {phase}" for phase, n in counts.items())


def migration_detail(m: cpb.Migration) -> str:
    """`ferry migrations show ID`: the record, its history and why it ended as it did."""
    lines = [
        f"Migration {m.id}",
        f"  VM:        {m.vm} ({m.vm_uuid})",
        f"  From/to:   {m.source_host} -> {m.target_host}",
        f"  Phase:     {phase_name(m.phase)}"
        + ("  (ahead of its slot: the job starts when one frees)" if m.ahead_of_slot else "")
        + ("  (cancel requested)" if m.cancel_requested else ""),
        f"  Priority:  {m.priority}",
    ]
    if m.idempotency_key:
        lines.append(f"  Key:       {m.idempotency_key}")
    if m.error.reason:
        lines.append(f"  Reason:    {m.error.reason}: {m.error.message}")
        if m.error.hint:
            lines.append(f"  Hint:      {m.error.hint}")
    if shows_progress(m) and m.progress.elapsed_ms:
        lines.append(f"  Progress:  {progress_bar(m.progress)}")
    if m.HasField("policy"):
        lines.append(f"  Policy:    {m.policy.name or '(from the flags)'}: {policy_summary(m.policy)}")
    if m.HasField("prediction") and m.prediction.words:
        lines.append(f"  Predicted: {m.prediction.words}")
    if m.HasField("result") and m.result.time_elapsed_ms:
        r = m.result
        downtime = "not measured (post-copy)" if r.downtime_not_measured else f"{r.downtime_ms} ms"
        lines.append(
            f"  Result:    total {r.time_elapsed_ms} ms, downtime {downtime}, "
            f"memory {size(r.memory_processed)}, disk {size(r.disk_processed)}, "
            f"{r.iterations} iterations" + (", post-copy" if r.postcopy else "")
        )
    if m.actions:
        lines.append("  Actions:")
        for a in m.actions:
            at = _clock(a.at) if a.at.seconds else "--:--:--"
            lines.append(f"    {at}  {a.action:<16} {a.reason}" + (f"  [{a.by}]" if a.by else ""))
    lines.append("  History:")
    for h in m.history:
        at = _clock(h.at, ms=True)
        lines.append(f"    {at}  {label(h.phase):<12} {h.reason}")
    return "\n".join(lines)


def label(history_phase: str) -> str:
    """A history entry's phase in the JSON's spelling."""
    return label_word(history_phase)


# ---------------------------------------------------------------- placement and drains


def candidates(resp: cpb.PreflightResponse | cpb.RankTargetsResponse, vm: str) -> list[str]:
    """The ranking as `ferry preflight VM` (no --to) prints it: feasible hosts best first with
    their score and reasons, then every rejected host with each blocker and its fix."""
    lines = []
    if resp.candidates:
        checked = (
            f"; the agents' checks ran on {resp.target_host} alone, the others are ranked from the inventory"
            if isinstance(resp, cpb.PreflightResponse) and resp.ok and len(resp.candidates) > 1
            else ""
        )
        lines.append(f"Candidates for {vm} (from {resp.source_host}), best first{checked}:")
        for n, c in enumerate(resp.candidates, 1):
            lines.append(f"  {n}. {c.host}  score {c.score:.2f}{'  (busy: would queue)' if c.busy else ''}")
            lines += [f"       {why}" for why in c.reasons]
    if resp.rejected:
        lines.append("Rejected:")
        for c in resp.rejected:
            lines.append(f"  {c.host}:")
            for b in c.blockers:
                lines.append(f"    {b.reason}: {b.message}")
                if b.hint:
                    lines.append(f"      fix: {b.hint}")
    return lines


def drain_state_name(state: int) -> str:
    """DRAIN_STATE_INCOMPLETE -> incomplete (the JSON's spelling)."""
    return enum_word(cpb.DrainState.DESCRIPTOR, state)


def item_state_name(state: int) -> str:
    """DRAIN_ITEM_STATE_MOVED -> moved (the JSON's spelling)."""
    return enum_word(cpb.DrainItemState.DESCRIPTOR, state)


def drain_bar(d: cpb.Drain, width: int = 30) -> str:
    """``[##########....................]  3/10 VMs  1.2 GiB/4.0 GiB  1 failed  2 migrating  ETA 45 s``"""
    frac = d.bytes_moved / d.bytes_total if d.bytes_total else (d.vms_moved / d.vms_total if d.vms_total else 0.0)
    filled = int(round(min(frac, 1.0) * width))
    parts = [
        f"[{'#' * filled}{'.' * (width - filled)}]",
        f"{d.vms_moved}/{d.vms_total} VMs",
        f"{size(d.bytes_moved)}/{size(d.bytes_total)}",
    ]
    if d.vms_failed:
        parts.append(f"{d.vms_failed} failed")
    parts += in_flight_words(d)
    if d.HasField("waiting"):  # its host, or every host it may use, does not answer: no ETA holds
        parts.append(
            "waiting: no target answers" if d.waiting.reason == "TARGETS_DOWN" else f"waiting: {d.host} does not answer"
        )
    elif d.state in (cpb.DRAIN_STATE_RUNNING, cpb.DRAIN_STATE_PAUSED, cpb.DRAIN_STATE_CANCELLING):
        parts.append(f"ETA {duration(d.eta_s)}" if d.state == cpb.DRAIN_STATE_RUNNING else drain_state_name(d.state))
    return "  ".join(parts)


# (unspecified: just submitted, its record not seen yet)
_BEFORE_JOB = frozenset((cpb.PHASE_UNSPECIFIED, cpb.PHASE_PENDING, cpb.PHASE_PREFLIGHT, cpb.PHASE_PREPARING))


def in_flight_words(d: cpb.Drain) -> list[str]:
    """A drain's VMs under way, those whose job has not started apart: a drain queues one
    migration ahead per slot (preflight and prepare while the slot is busy), so "1 migrating,
    1 preparing" with one slot, not "2 migrating".

    >>> d = cpb.Drain(vms_migrating=2, items=[
    ...     cpb.DrainItem(state=cpb.DRAIN_ITEM_STATE_MIGRATING, migration_phase=cpb.PHASE_MIGRATING),
    ...     cpb.DrainItem(state=cpb.DRAIN_ITEM_STATE_MIGRATING, migration_phase=cpb.PHASE_PREPARING)])
    >>> in_flight_words(d)
    ['1 migrating', '1 preparing']
    >>> in_flight_words(cpb.Drain(vms_migrating=1))  # no items (a summary): their phases unknown
    ['1 migrating']
    """
    early = sum(1 for i in d.items if i.state == cpb.DRAIN_ITEM_STATE_MIGRATING and i.migration_phase in _BEFORE_JOB)
    early = min(early, d.vms_migrating)
    words = []
    if d.vms_migrating - early:
        words.append(f"{d.vms_migrating - early} migrating")
    if early:
        words.append(f"{early} preparing")
    return words


def item_state_words(i: cpb.DrainItem) -> str:
    """An item's state, with its migration's phase while that has not reached its job:
    ``migrating (preparing)``."""
    word = item_state_name(i.state)
    if i.state == cpb.DRAIN_ITEM_STATE_MIGRATING and i.migration_phase in _BEFORE_JOB:
        return f"{word} ({phase_name(i.migration_phase or cpb.PHASE_PENDING)})"
    return word


DRAIN_HEADERS = ("ID", "HOST", "STATE", "MOVED", "FAILED", "MIGRATING", "ETA", "CREATED")


def drain_line(d: cpb.Drain) -> list[object]:
    final = d.state in DRAIN_FINAL
    return [
        d.id,
        d.host,
        drain_state_name(d.state),
        f"{d.vms_moved}/{d.vms_total}",
        d.vms_failed,
        d.vms_migrating,
        "" if final else duration(d.eta_s),
        _time(d.created_at),
    ]


def drain_detail(d: cpb.Drain) -> str:
    """`ferry drains show ID` (and a dry run's plan): every VM, where it goes or went, and why not."""
    head = "Plan for draining" if d.dry_run else f"Drain {d.id} of"
    lines = [f"{head} {d.host}" + (f" ({d.reason})" if d.reason else "")]
    if not d.dry_run:
        lines.append(f"  State:     {drain_state_name(d.state)}")
    lines.append(
        f"  Slots:     {d.slots} at once"
        + (f" (asked {d.max_parallel})" if d.max_parallel and d.max_parallel != d.slots else "")
        + (f"; targets {', '.join(d.targets)}" if d.targets else "")
        + (f"; policy {d.policy}" if d.policy else "")
    )
    if not d.items:  # nothing to estimate, no table to show
        lines.append(
            f"  Nothing to move: {d.host} runs no VM" + (" (the drain would only cordon it)" if d.dry_run else "")
        )
        return "\n".join(lines + _drain_history(d))
    lines.append(f"  Estimated: {duration(d.estimated_s)} for the whole drain")
    if not d.dry_run:
        lines.append(f"  Progress:  {drain_bar(d)}")
    if d.HasField("waiting"):
        lines.append(f"  Waiting:   {d.waiting.reason}: {d.waiting.message}")
        lines.append(f"             fix: {d.waiting.hint}")
    rows = []
    for i in d.items:
        why = ""
        if i.problems and i.state != cpb.DRAIN_ITEM_STATE_MOVED:
            p = i.problems[-1]
            why = f"{p.reason}: {p.message}"
        rows.append(
            [
                i.vm,
                "planned" if d.dry_run and i.state == cpb.DRAIN_ITEM_STATE_WAITING else item_state_words(i),
                i.target_host or "-",
                duration(i.estimate_s) if i.estimate_s else "-",
                i.migration_id or "-",
                why,
            ]
        )
    lines.append("")
    lines.append(table(("VM", "STATE", "TARGET", "ESTIMATE", "MIGRATION", "WHY NOT"), rows))
    fixes = [
        (i.vm, i.problems[-1].hint)
        for i in d.items
        if i.problems
        and i.problems[-1].hint
        and (
            i.state in (cpb.DRAIN_ITEM_STATE_FAILED, cpb.DRAIN_ITEM_STATE_SKIPPED)
            or (d.dry_run and i.state == cpb.DRAIN_ITEM_STATE_WAITING)  # predicted not to finish
        )
    ]
    if fixes:
        lines.append("")
        lines += [f"  {vm}: fix: {hint}" for vm, hint in fixes]
    return "\n".join(lines + _drain_history(d))


def _drain_history(d: cpb.Drain) -> list[str]:
    if not d.history or d.dry_run:
        return []
    lines = ["", "History:"]
    for h in d.history:
        at = _clock(h.at, ms=True)
        lines.append(f"  {at}  {drain_state_name(h.state):<11} {h.reason}")
    return lines
