"""Pure rendering for the `ferry` CLI: tables, sizes, the progress bar. No I/O here."""

from __future__ import annotations

from collections.abc import Sequence

from ferry.units import human_bytes
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb


def size(n: int) -> str:
    """Bytes as a short human figure: 0 B, 512 B, 1.5 KiB, 256 MiB, 3.2 GiB."""
    return human_bytes(n, short=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def phase_name(phase: int) -> str:
    """PHASE_ROLLED_BACK -> RolledBack."""
    raw = cpb.Phase.Name(phase).removeprefix("PHASE_")
    return "".join(part.capitalize() for part in raw.split("_"))


def job_phase_name(phase: int) -> str:
    raw = tpb.MigrationPhase.Name(phase).removeprefix("MIGRATION_PHASE_")
    return raw.lower().replace("_", "-")


def fraction(progress: tpb.MigrationProgress) -> float:
    """Share of the job done, memory and disk together, in [0, 1]."""
    done = progress.memory_processed + progress.disk_processed
    left = progress.memory_remaining + progress.disk_remaining
    if done + left == 0:
        return 0.0
    return min(1.0, done / (done + left))


def progress_bar(progress: tpb.MigrationProgress, width: int = 30, at_least: float = 0.0) -> str:
    """One status line; the bar never shows less than ``at_least`` (a bar that runs backwards,
    as pre-copy's remaining bytes grow again, misleads more than one that pauses). E.g.
    ``[###############...............]  50% precopy mem 128 MiB/256 MiB disk 0 B left iter 2 dirty 12 MiB/s 3.2 s``
    """
    known = progress.memory_processed + progress.memory_remaining + progress.disk_processed + progress.disk_remaining
    frac = max(fraction(progress), at_least)
    filled = int(round(frac * width))
    bar = "#" * filled + "." * (width - filled)
    parts = [f"[{bar}] {frac * 100:3.0f}%" if known else f"[{bar}]  --%", job_phase_name(progress.phase)]
    if progress.memory_total:
        parts.append(f"mem {size(progress.memory_processed)}/{size(progress.memory_total)}")
    if progress.disk_total:
        parts.append(f"disk {size(progress.disk_remaining)} left")
    if progress.iteration:
        parts.append(f"iter {progress.iteration}")
    if progress.dirty_rate_pages:
        page = progress.page_size or 4096
        parts.append(f"dirty {size(progress.dirty_rate_pages * page)}/s")
    if progress.bandwidth_bps:
        parts.append(f"bw {size(progress.bandwidth_bps)}/s")
    parts.append(f"{progress.elapsed_ms / 1000:.1f} s")
    return " ".join(parts)


def migration_line(m: cpb.Migration) -> list[object]:
    return [
        m.id,
        m.vm,
        m.source_host,
        m.target_host,
        phase_name(m.phase),
        m.error.reason if m.error.reason else "",
        m.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if m.created_at.seconds else "",
    ]


MIGRATION_HEADERS = ("ID", "VM", "FROM", "TO", "PHASE", "REASON", "CREATED")


def migration_detail(m: cpb.Migration) -> str:
    """`ferry migrations show ID`: the record, its history and why it ended as it did."""
    lines = [
        f"Migration {m.id}",
        f"  VM:        {m.vm} ({m.vm_uuid})",
        f"  From/to:   {m.source_host} -> {m.target_host}",
        f"  Phase:     {phase_name(m.phase)}" + ("  (cancel requested)" if m.cancel_requested else ""),
        f"  Priority:  {m.priority}",
    ]
    if m.idempotency_key:
        lines.append(f"  Key:       {m.idempotency_key}")
    if m.error.reason:
        lines.append(f"  Reason:    {m.error.reason}: {m.error.message}")
        if m.error.hint:
            lines.append(f"  Hint:      {m.error.hint}")
    if m.HasField("progress") and m.progress.elapsed_ms and m.phase in (cpb.PHASE_MIGRATING, cpb.PHASE_FINISHING):
        lines.append(f"  Progress:  {progress_bar(m.progress)}")
    if m.HasField("result") and m.result.time_elapsed_ms:
        r = m.result
        lines.append(
            f"  Result:    total {r.time_elapsed_ms} ms, downtime {r.downtime_ms} ms, "
            f"memory {size(r.memory_processed)}, disk {size(r.disk_processed)}, "
            f"{r.iterations} iterations" + (", post-copy" if r.postcopy else "")
        )
    lines.append("  History:")
    for h in m.history:
        at = h.at.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
        lines.append(f"    {at}  {h.phase:<12} {h.reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------- placement and drains


def candidates(resp: cpb.PreflightResponse | cpb.RankTargetsResponse, vm: str) -> list[str]:
    """The ranking as `ferry preflight VM` (no --to) prints it: feasible hosts best first with
    their score and reasons, then every rejected host with each blocker and its fix."""
    lines = []
    if resp.candidates:
        lines.append(f"Candidates for {vm} (from {resp.source_host}), best first:")
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
    """DRAIN_STATE_INCOMPLETE -> Incomplete."""
    return cpb.DrainState.Name(state).removeprefix("DRAIN_STATE_").capitalize()


def item_state_name(state: int) -> str:
    return cpb.DrainItemState.Name(state).removeprefix("DRAIN_ITEM_STATE_").lower()


def duration(seconds: float) -> str:
    """
    >>> duration(5.2), duration(125), duration(3725)
    ('5 s', '2 min 5 s', '1 h 2 min')
    """
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


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
    if d.vms_migrating:
        parts.append(f"{d.vms_migrating} migrating")
    if d.state in (cpb.DRAIN_STATE_RUNNING, cpb.DRAIN_STATE_PAUSED, cpb.DRAIN_STATE_CANCELLING):
        parts.append(f"ETA {duration(d.eta_s)}" if d.state == cpb.DRAIN_STATE_RUNNING else drain_state_name(d.state))
    return "  ".join(parts)


DRAIN_HEADERS = ("ID", "HOST", "STATE", "MOVED", "FAILED", "MIGRATING", "ETA", "CREATED")


def drain_line(d: cpb.Drain) -> list[object]:
    final = d.state in (cpb.DRAIN_STATE_SUCCEEDED, cpb.DRAIN_STATE_INCOMPLETE, cpb.DRAIN_STATE_CANCELLED)
    return [
        d.id,
        d.host,
        drain_state_name(d.state),
        f"{d.vms_moved}/{d.vms_total}",
        d.vms_failed,
        d.vms_migrating,
        "" if final else duration(d.eta_s),
        d.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if d.created_at.seconds else "",
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
    lines.append(f"  Estimated: {duration(d.estimated_s)} for the whole drain")
    if not d.dry_run:
        lines.append(f"  Progress:  {drain_bar(d)}")
    rows = []
    for i in d.items:
        why = ""
        if i.problems and i.state != cpb.DRAIN_ITEM_STATE_MOVED:
            p = i.problems[-1]
            why = f"{p.reason}: {p.message}"
        rows.append(
            [
                i.vm,
                "planned" if d.dry_run and i.state == cpb.DRAIN_ITEM_STATE_WAITING else item_state_name(i.state),
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
        if i.problems and i.problems[-1].hint and i.state in (cpb.DRAIN_ITEM_STATE_FAILED, cpb.DRAIN_ITEM_STATE_SKIPPED)
    ]
    if fixes:
        lines.append("")
        lines += [f"  {vm}: fix: {hint}" for vm, hint in fixes]
    if d.history and not d.dry_run:
        lines.append("")
        lines.append("History:")
        for h in d.history:
            at = h.at.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
            lines.append(f"  {at}  {h.phase:<11} {h.reason}")
    return "\n".join(lines)
