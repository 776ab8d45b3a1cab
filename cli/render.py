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
    if progress.postcopy_failed:
        parts.append("LINK BROKEN, resuming")
    elif progress.eta_ms:
        parts.append(f"ETA {progress.eta_ms / 1000:.0f} s")
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
            at = a.at.ToDatetime().strftime("%H:%M:%S") if a.at.seconds else "--:--:--"
            lines.append(f"    {at}  {a.action:<16} {a.reason}" + (f"  [{a.by}]" if a.by else ""))
    lines.append("  History:")
    for h in m.history:
        at = h.at.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
        lines.append(f"    {at}  {h.phase:<12} {h.reason}")
    return "\n".join(lines)
