"""The pure parts of the fault campaign (``bench/chaos.py``): the fault classes, the trial plan,
what a guest's console says, the invariants checked after every trial, and the tables.

No side effects and no clock: chaos.py injects faults and observes the lab; these functions
decide what was observed and summarise it. Tested by ``tests/unit/test_chaos_plan.py``.

A trial: boot a fresh guest on the source host, submit a capped migration to the target, inject
the fault when the record enters the chosen phase, repair it after the class's outage, then
check the invariants (``INVARIANTS``).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from benchlib import DASH, markdown_table, median

PHASES = ("Preflight", "Preparing", "Migrating", "Finishing")
KINDS = ("shared", "copy")  # disks on the lab's shared storage / host-local disks copied
FINAL_PHASES = ("Succeeded", "Failed", "Cancelled", "RolledBack")

# The invariants, in the order the tables show them (the six of issue 11, and a seventh for a
# host that went away).
INVARIANTS: dict[str, str] = {
    "one-host": "the guest runs on exactly one host (the one the record names) and is defined nowhere else",
    "first-boot": "it keeps its first boot (one boot marker on its console) and keeps beating",
    "final-60s": "the record is final within the limit (60 s) of the repair",
    "nothing-left": "nothing is left on the other host: no domain, no prepare, no image",
    "vms-agree": "`ferry vms` agrees with libvirt on every host",
    "new-migration": "a new migration afterwards works",
    "dead-host": "while a host is gone, Ferry shows it DOWN, still lists its VMs marked unreachable "
    "and starts none of them elsewhere",
}


@dataclass(frozen=True)
class FaultClass:
    """One kind of fault. ``outage_s``: from the fault to its repair. ``ci``: the (phase, kind)
    of the one-per-class campaign. ``down_host``: "source"/"target" when the class takes a
    whole host away (then the ``dead-host`` invariant applies)."""

    name: str
    what: str
    repair: str
    outage_s: float
    ci: tuple[str, str]
    phases: tuple[str, ...] = PHASES
    kinds: tuple[str, ...] = KINDS
    down_host: str = ""


CLASSES: tuple[FaultClass, ...] = (
    FaultClass("none", "no fault: Ferry's baseline under the same cap", "-", 0, ("Migrating", "shared")),
    FaultClass(
        "leader-kill", "SIGKILL of the leading coordinator", "restarted (it stands by)", 15, ("Migrating", "shared")
    ),
    FaultClass(
        "leader-stop",
        "SIGSTOP of the leading coordinator, hung past its 10 s lease",
        "SIGCONT",
        20,
        ("Migrating", "copy"),
    ),
    FaultClass(
        "source-agent-kill",
        "SIGKILL of the source host's agent, back within its 10 s lease",
        "restarted",
        6,
        ("Preparing", "copy"),
    ),
    FaultClass(
        "target-agent-kill",
        "SIGKILL of the target host's agent, back within its 10 s lease",
        "restarted",
        6,
        ("Finishing", "copy"),
    ),
    FaultClass(
        "source-libvirtd-kill",
        "SIGKILL of the source's libvirtd (QEMU keeps running)",
        "restarted",
        10,
        ("Migrating", "copy"),
    ),
    FaultClass(
        "target-libvirtd-kill",
        "SIGKILL of the target's libvirtd (QEMU keeps running)",
        "restarted",
        10,
        ("Migrating", "shared"),
    ),
    FaultClass(
        "etcd-member-kill",
        "SIGKILL of the etcd member that leads the raft cluster (2 of 3 stay)",
        "restarted",
        10,
        ("Migrating", "shared"),
    ),
    FaultClass(
        "etcd-quorum-loss",
        "SIGKILL of 2 of the 3 etcd members, the raft leader first (no quorum)",
        "both restarted",
        20,
        ("Migrating", "copy"),
    ),
    FaultClass(
        "partition-source",
        "the source host's link taken down in the core namespace",
        "link up",
        25,
        ("Migrating", "shared"),
        down_host="source",
    ),
    FaultClass(
        "partition-target",
        "the target host's link taken down in the core namespace",
        "link up",
        25,
        ("Migrating", "copy"),
        down_host="target",
    ),
    FaultClass(
        "disk-full",
        "the target's image filesystem filled up (a filler file takes what is left)",
        "filler removed",
        10,
        ("Migrating", "copy"),
        phases=("Preparing", "Migrating"),
        kinds=("copy",),
    ),
    FaultClass(
        "host-death-source",
        "the source host dies: link down, libvirtd, every QEMU and the agent SIGKILLed at once",
        "power back: link up, libvirtd and agent restarted (its guests stay off)",
        25,
        ("Migrating", "shared"),
        down_host="source",
    ),
    FaultClass(
        "host-death-target",
        "the target host dies: link down, libvirtd, every QEMU and the agent SIGKILLed at once",
        "power back: link up, libvirtd and agent restarted (its guests stay off)",
        25,
        ("Migrating", "copy"),
        down_host="target",
    ),
)
BY_NAME: dict[str, FaultClass] = {c.name: c for c in CLASSES}


def select_classes(names: str | None) -> tuple[FaultClass, ...]:
    """``--classes a,b``: those classes in the table's order (None or "" or "all": every one).

    >>> [c.name for c in select_classes("disk-full,none")]
    ['none', 'disk-full']
    """
    if not names or names == "all":
        return CLASSES
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted(wanted - set(BY_NAME))
    if unknown:
        raise ValueError(f"unknown fault classes {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
    return tuple(c for c in CLASSES if c.name in wanted)


# ---------------------------------------------------------------- the plan


@dataclass(frozen=True)
class TrialSpec:
    index: int  # 1-based, in the order the trials run
    fault: str
    phase: str
    kind: str

    @property
    def label(self) -> str:
        return f"{self.fault} @ {self.phase} ({self.kind})"


def cells(fault: FaultClass) -> list[tuple[str, str]]:
    """Every (phase, kind) the class can be tried at.

    >>> cells(BY_NAME["disk-full"])
    [('Preparing', 'copy'), ('Migrating', 'copy')]
    """
    return [(p, k) for p in fault.phases for k in fault.kinds]


def parse_cell(text: str) -> tuple[str, str]:
    """``--at``'s "PHASE/KIND".

    >>> parse_cell("Finishing/copy")
    ('Finishing', 'copy')
    >>> parse_cell("finishing")
    Traceback (most recent call last):
    ValueError: --at wants PHASE/KIND (Finishing/copy); phases: Preflight, Preparing, Migrating, Finishing; kinds: ...
    """
    phase, _, kind = text.partition("/")
    if phase not in PHASES or kind not in ("copy", "shared"):
        raise ValueError(f"--at wants PHASE/KIND (Finishing/copy); phases: {', '.join(PHASES)}; kinds: copy, shared")
    return phase, kind


def plan_trials(
    classes: Sequence[FaultClass],
    *,
    trials: int | None = None,
    seed: int = 0,
    one_per_class: bool = False,
    at: tuple[str, str] | None = None,
) -> list[TrialSpec]:
    """The trials to run. ``one_per_class``: each class once, at its ``ci`` cell (what CI runs).
    Otherwise ``trials`` (default 3 per class) taken round-robin over the classes, so every
    class is covered before any gets a second trial; each class walks its (phase, kind) cells
    in an order shuffled by ``seed``, its ``ci`` cell first, and starts over when it has been
    through them all.

    >>> [t.label for t in plan_trials([BY_NAME["none"], BY_NAME["disk-full"]], one_per_class=True)]
    ['none @ Migrating (shared)', 'disk-full @ Migrating (copy)']
    >>> [t.label for t in plan_trials([BY_NAME["disk-full"]], trials=3, seed=1)]
    ['disk-full @ Migrating (copy)', 'disk-full @ Preparing (copy)', 'disk-full @ Migrating (copy)']

    ``at`` (phase, kind): only that cell, for a class that has it (repeating one finding):

    >>> [t.label for t in plan_trials([BY_NAME["disk-full"], BY_NAME["none"]], trials=3, at=("Finishing", "copy"))]
    ['none @ Finishing (copy)', 'none @ Finishing (copy)', 'none @ Finishing (copy)']
    """
    if at is not None:
        classes = [c for c in classes if at in cells(c)]
        if not classes:
            return []
        count = 3 * len(classes) if trials is None else trials
        return [TrialSpec(i + 1, classes[i % len(classes)].name, *at) for i in range(count)]
    if one_per_class:
        return [TrialSpec(i, c.name, *c.ci) for i, c in enumerate(classes, 1)]
    if not classes:
        return []
    count = 3 * len(classes) if trials is None else trials
    rng = random.Random(seed)
    orders: dict[str, list[tuple[str, str]]] = {}
    for c in classes:
        rest = [cell for cell in cells(c) if cell != c.ci]
        rng.shuffle(rest)
        orders[c.name] = [c.ci, *rest] if c.ci in cells(c) else rest
    plan = []
    for i in range(count):
        fault = classes[i % len(classes)]
        order = orders[fault.name]
        phase, kind = order[(i // len(classes)) % len(order)]
        plan.append(TrialSpec(i + 1, fault.name, phase, kind))
    return plan


def lost_guests(lost: Sequence[str]) -> str:
    """The guests whose runtime record a host death took (``HostDeath.lost``); "no pid" marks
    one libvirtd was still starting (no pidfile of its QEMU yet).

    >>> lost_guests(["qemu", "qemu/a.pid", "qemu/a.xml", "qemu/b.xml", "libvirt-sock"])
    'runtime records of a, b (no pid)'
    >>> lost_guests(["qemu", "qemu/driver.pid"])
    'no guest runtime record'
    """
    names = sorted(PurePosixPath(e).stem for e in lost if e.startswith("qemu/") and e.endswith(".xml"))
    if not names:
        return "no guest runtime record"
    shown = [n if f"qemu/{n}.pid" in lost else f"{n} (no pid)" for n in names]
    return "runtime records of " + ", ".join(shown)


def copy_stuck(record: Mapping[str, Any] | None) -> bool:
    """The record (``ferry migrations show --output json``) says the target's libvirtd keeps the
    incoming copy under a job that never ends (INCOMING_COPY_STUCK): libvirt's own wedge, which
    only the operator's step in its hint clears.

    >>> copy_stuck({"history": [{"reason": "clean up the target on host2 failed: INCOMING_COPY_STUCK: ..."}]})
    True
    >>> copy_stuck({"history": [{"reason": "submitted"}]}), copy_stuck(None)
    (False, False)
    """
    return any("INCOMING_COPY_STUCK" in str(h.get("reason", "")) for h in (record or {}).get("history", []))


def phase_from_json(name: str) -> str:
    """A record's phase as ``ferry --output json`` prints it (``rolled_back`` since the CLI's
    JSON schema; ``PHASE_ROLLED_BACK`` before) -> as the history names it.

    >>> phase_from_json("rolled_back"), phase_from_json("migrating"), phase_from_json("PHASE_ROLLED_BACK")
    ('RolledBack', 'Migrating', 'RolledBack')
    >>> phase_from_json("Finishing"), phase_from_json("")
    ('Finishing', '')
    """
    if not (name.startswith("PHASE_") or name.islower()):
        return name
    return "".join(part.capitalize() for part in name.removeprefix("PHASE_").split("_"))


def phase_index(phase: str) -> int:
    """Where a phase stands in a migration's life (final phases after Finishing; RollingBack
    and unknown ones too).

    >>> phase_index("Preflight") < phase_index("Migrating") < phase_index("Succeeded")
    True
    """
    order = ("Pending", *PHASES)
    return order.index(phase) if phase in order else len(order)


# ---------------------------------------------------------------- the guest's console

BOOT_MARK = "GUEST-BOOTED"
_PANIC_RE = re.compile(r"Kernel panic|BUG: |Oops|general protection fault|RIP: |Call Trace")


def console_boots(console: str) -> int:
    """How many times the guest booted (``GUEST-BOOTED`` lines on its console).

    >>> console_boots("GUEST-BOOTED MemTotal: 1\\nHEARTBEAT 1 uptime=1\\nGUEST-BOOTED MemTotal: 1\\n")
    2
    """
    return sum(1 for line in console.splitlines() if line.startswith(BOOT_MARK))


def panic_excerpt(console: str, lines: int = 4) -> str:
    """The first kernel-panic-like line on the console and the few after it, on one line ("" if
    none): what explains a reboot.

    >>> panic_excerpt("HEARTBEAT 9\\n[ 9.1] BUG: unable to handle page fault\\n[ 9.2] RIP: 0010:x\\nHEARTBEAT 1")
    '[ 9.1] BUG: unable to handle page fault | [ 9.2] RIP: 0010:x | HEARTBEAT 1'
    """
    rows = console.splitlines()
    for i, line in enumerate(rows):
        if _PANIC_RE.search(line):
            return " | ".join(r.strip() for r in rows[i : i + lines] if r.strip())
    return ""


# ---------------------------------------------------------------- the invariants


@dataclass(frozen=True)
class Observed:
    """What a trial saw after the repair (``chaos.py`` gathers it).

    ``placement``: host -> libvirt state of the guest ("running", "shut off", ...), where it is
    defined or runs. ``guest_killed``: the guest was running on a host that died (then it may
    run nowhere, but must not have been started anywhere). ``recovery_s``: repair -> final
    record (negative: final before the repair; None: not final). ``beating``: the heartbeat
    went on (None: not checked, the guest is dead). ``dead_host``: what the dead-host check
    found ("" all well, None: not a host-down class)."""

    source: str
    target: str
    final_phase: str
    recovery_s: float | None
    placement: Mapping[str, str]
    boots: int
    beating: bool | None
    leftovers: tuple[str, ...] = ()
    vms_mismatch: str = ""
    new_migration: str = ""
    dead_host: str | None = None
    guest_killed: bool = False
    panic: str = ""


def home_of(final_phase: str, source: str, target: str) -> str | None:
    """Where the record says the guest runs: the target after Succeeded, the source after
    RolledBack or Cancelled; None when it does not say (Failed: "needs an operator", or not
    final).

    >>> home_of("Succeeded", "host1", "host2"), home_of("RolledBack", "host1", "host2"), home_of("Failed", "a", "b")
    ('host2', 'host1', None)
    """
    if final_phase == "Succeeded":
        return target
    if final_phase in ("RolledBack", "Cancelled"):
        return source
    return None


def guest_host_at(phase: str, source: str, target: str) -> str:
    """Where the guest runs while its record is in ``phase``: on the source until libvirt's job
    completed (Finishing), then on the target; after the end, where the record says.

    >>> [guest_host_at(p, "h1", "h2") for p in ("Preflight", "Migrating", "Finishing", "Succeeded", "RolledBack")]
    ['h1', 'h1', 'h2', 'h2', 'h1']
    """
    if phase in ("Finishing", "Succeeded"):
        return target
    return source


def running_hosts(placement: Mapping[str, str]) -> list[str]:
    return sorted(h for h, state in placement.items() if state == "running")


def check(observed: Observed, *, final_within_s: float = 60.0) -> dict[str, str]:
    """The invariants a trial broke: name -> what was wrong (empty: every one held).

    >>> ok = Observed("host1", "host2", "Succeeded", 3.0, {"host2": "running"}, 1, True)
    >>> check(ok)
    {}
    >>> check(Observed("host1", "host2", "", None, {"host1": "running", "host2": "paused"}, 2, True))["final-60s"]
    'the record is still not final 60 s after the repair'
    """
    o = observed
    broken: dict[str, str] = {}
    running = running_hosts(o.placement)
    home = home_of(o.final_phase, o.source, o.target)
    where = ", ".join(f"{h}: {s}" for h, s in sorted(o.placement.items())) or "defined nowhere"
    if o.guest_killed:
        if running:
            broken["one-host"] = f"the guest died with its host but runs again on {', '.join(running)} ({where})"
        elif len(o.placement) > 1:
            broken["one-host"] = f"the dead guest is defined on {len(o.placement)} hosts ({where})"
    elif len(running) != 1:
        broken["one-host"] = f"the guest runs on {len(running)} hosts ({where})"
    elif home is not None and running != [home]:
        broken["one-host"] = f"the record says {o.final_phase} but the guest runs on {running[0]} ({where})"
    elif len(o.placement) > 1:
        broken["one-host"] = f"the guest is defined on {len(o.placement)} hosts ({where})"
    if o.boots != 1:
        broken["first-boot"] = f"{o.boots} boot markers on the console" + (f"; panic: {o.panic}" if o.panic else "")
    elif o.beating is False:
        broken["first-boot"] = "the heartbeat stopped"
    if o.recovery_s is None:
        broken["final-60s"] = f"the record is still not final {final_within_s:.0f} s after the repair"
    elif o.recovery_s > final_within_s:
        broken["final-60s"] = f"final {o.recovery_s:.1f} s after the repair"
    if o.leftovers:
        broken["nothing-left"] = "; ".join(o.leftovers)
    if o.vms_mismatch:
        broken["vms-agree"] = o.vms_mismatch
    if o.new_migration:
        broken["new-migration"] = o.new_migration
    if o.dead_host:
        broken["dead-host"] = o.dead_host
    return broken


def vms_mismatch(ferry_says: Mapping[str, str], libvirt_says: Mapping[str, str]) -> str:
    """How ``ferry vms`` (host -> DomainState name) and libvirt (host -> ``virsh domstate``)
    disagree about one guest ("" when they agree).

    >>> vms_mismatch({"host2": "DOMAIN_STATE_RUNNING"}, {"host2": "running"})
    ''
    >>> vms_mismatch({"host1": "DOMAIN_STATE_RUNNING"}, {"host2": "running"})
    'ferry vms: host1 running; libvirt: host2 running'
    """
    ferry = {h: s.removeprefix("DOMAIN_STATE_").lower().replace("_", " ") for h, s in ferry_says.items()}
    libvirt = {h: ("shutoff" if s == "shut off" else s) for h, s in libvirt_says.items()}
    ferry = {h: ("shutoff" if s == "shut off" else s) for h, s in ferry.items()}
    if ferry == libvirt:
        return ""

    def show(states: Mapping[str, str]) -> str:
        return ", ".join(f"{h} {s}" for h, s in sorted(states.items())) or "nowhere"

    return f"ferry vms: {show(ferry)}; libvirt: {show(libvirt)}"


def marked_unreachable(entry: Mapping[str, Any]) -> bool:
    """Whether a ``ferry --output json vms`` entry marks its VM as unreachable: a true field
    named ``unreachable`` (on the entry or its domain), or any value naming UNREACHABLE (e.g.
    an enum state). proto3 JSON leaves false booleans out, so a ``reachable: false`` cannot be
    told from an old coordinator that says nothing; hence the positive mark.

    >>> marked_unreachable({"host": "host1", "unreachable": True})
    True
    >>> marked_unreachable({"host": "host1", "domain": {"state": "DOMAIN_STATE_UNREACHABLE"}})
    True
    >>> marked_unreachable({"host": "host1", "domain": {"state": "DOMAIN_STATE_RUNNING"}})
    False
    """
    for key, value in entry.items():
        if key == "unreachable" and value is True:
            return True
        if isinstance(value, str) and "UNREACHABLE" in value.upper():
            return True
        if isinstance(value, Mapping) and marked_unreachable(value):
            return True
    return False


# ---------------------------------------------------------------- results and tables


@dataclass(frozen=True)
class TrialResult:
    spec: TrialSpec
    vm: str
    hit_phase: str  # the record's phase when the fault hit ("" when it was never injected)
    broken: Mapping[str, str]
    final_phase: str
    recovery_s: float | None
    seconds: float  # the whole trial, boot to cleanup
    history: tuple[tuple[str, str, str], ...] = ()  # (phase, at, reason)
    notes: tuple[str, ...] = ()
    boots: int = 1
    panic: str = ""
    error: str = ""  # the trial itself could not be run as planned (counts as broken)
    after_phase: str = ""  # the record's phase read right after the injection ("" unknown)

    @property
    def held(self) -> bool:
        return not self.broken and not self.error

    @property
    def missed_phase(self) -> bool:
        """The fault hit later than the phase it was meant for: the phase was over before the
        watch saw it, or the record was already final right after the injection."""
        late = self.after_phase in FINAL_PHASES
        return bool(self.hit_phase) and (self.hit_phase != self.spec.phase or late)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.spec.index,
            "fault": self.spec.fault,
            "phase": self.spec.phase,
            "kind": self.spec.kind,
            "vm": self.vm,
            "hit_phase": self.hit_phase,
            "after_phase": self.after_phase,
            "held": self.held,
            "broken": dict(self.broken),
            "error": self.error,
            "final_phase": self.final_phase,
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
            "seconds": round(self.seconds, 1),
            "boots": self.boots,
            "panic": self.panic,
            "history": [{"phase": p, "at": at, "reason": r} for p, at, r in self.history],
            "notes": list(self.notes),
        }


def recovery_figure(results: Iterable[TrialResult]) -> str:
    """p50/max of repair -> final over the trials whose record got final (a record final before
    the repair counts 0).

    >>> r = lambda s: TrialResult(TrialSpec(1, "x", "Migrating", "copy"), "v", "Migrating", {}, "Succeeded", s, 1.0)
    >>> recovery_figure([r(2.0), r(-1.0), r(10.0), r(None)])
    '2.0 / 10.0 s'
    """
    values = [max(0.0, r.recovery_s) for r in results if r.recovery_s is not None]
    if not values:
        return DASH
    return f"{median(values):.1f} / {max(values):.1f} s"


def broken_counts(results: Iterable[TrialResult]) -> str:
    """The invariants broken across these trials, most often first (``-`` for none).

    >>> r = lambda b: TrialResult(TrialSpec(1, "x", "Migrating", "copy"), "v", "Migrating", b, "", None, 1.0)
    >>> broken_counts([r({"final-60s": "x", "nothing-left": "y"}), r({"final-60s": "z"}), r({})])
    'final-60s 2, nothing-left 1'
    """
    counts: Counter[str] = Counter()
    errors = 0
    for result in results:
        counts.update(result.broken.keys())
        errors += bool(result.error)
    order = list(INVARIANTS)
    parts = [f"{name} {n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], order.index(kv[0])))]
    if errors:
        parts.append(f"not run as planned {errors}")
    return ", ".join(parts) or DASH


def outcomes(results: Iterable[TrialResult]) -> str:
    """How the records ended, most often first.

    >>> r = lambda p: TrialResult(TrialSpec(1, "x", "Migrating", "copy"), "v", "Migrating", {}, p, None, 1.0)
    >>> outcomes([r("Succeeded"), r("Failed"), r("Succeeded"), r("")])
    'Succeeded 2, Failed 1, not final 1'
    """
    counts = Counter(r.final_phase or ("not final" if r.hit_phase else "not run") for r in results)
    return ", ".join(f"{phase} {n}" for phase, n in counts.most_common()) or DASH


SUMMARY_HEADERS = (
    "class",
    "trials",
    "held",
    "outcomes",
    "broken invariants",
    "recovery p50 / max",
    "phase missed",
    "reboots",
)


def summary_rows(results: Sequence[TrialResult], classes: Sequence[FaultClass] = CLASSES) -> list[list[object]]:
    """One row per class that ran (in the classes' order), then the total."""
    rows: list[list[object]] = []
    for fault in classes:
        mine = [r for r in results if r.spec.fault == fault.name]
        if not mine:
            continue
        rows.append(_row(fault.name, mine))
    if results:
        rows.append(_row("all", list(results)))
    return rows


def _row(name: str, results: Sequence[TrialResult]) -> list[object]:
    return [
        name,
        len(results),
        sum(r.held for r in results),
        outcomes(results),
        broken_counts(results),
        recovery_figure(results),
        sum(r.missed_phase for r in results),
        sum(max(0, r.boots - 1) for r in results),
    ]


def summary_table(results: Sequence[TrialResult], classes: Sequence[FaultClass] = CLASSES) -> str:
    return markdown_table(SUMMARY_HEADERS, summary_rows(results, classes))


TRIAL_HEADERS = ("#", "class", "phase (hit)", "kind", "final", "recovery", "held", "broken")


def trials_table(results: Sequence[TrialResult]) -> str:
    """One row per trial, in the order they ran."""
    rows = []
    for r in results:
        hit = r.spec.phase
        if r.missed_phase:
            hit += (
                f" ({r.hit_phase}, already {r.after_phase})" if r.after_phase in FINAL_PHASES else f" ({r.hit_phase})"
            )
        elif not r.hit_phase:
            hit += " (never)"
        recovery = DASH if r.recovery_s is None else f"{max(0.0, r.recovery_s):.1f} s"
        broken = ", ".join(r.broken) + (f" [{r.error}]" if r.error else "")
        rows.append(
            [
                r.spec.index,
                r.spec.fault,
                hit,
                r.spec.kind,
                r.final_phase or "NOT FINAL",
                recovery,
                "yes" if r.held else "NO",
                broken or DASH,
            ]
        )
    return markdown_table(TRIAL_HEADERS, rows)


def break_report(results: Sequence[TrialResult]) -> str:
    """For every trial that broke something: what, and the record's history."""
    out = []
    for r in results:
        if r.held:
            continue
        out.append(f"#{r.spec.index} {r.spec.label} (hit at {r.hit_phase or 'never'}), guest {r.vm}:")
        if r.error:
            out.append(f"  not run as planned: {r.error}")
        for name, why in r.broken.items():
            out.append(f"  {name}: {why}")
        for note in r.notes:
            out.append(f"  note: {note}")
        for phase, at, reason in r.history:
            out.append(f"    {at}  {phase:<12} {reason}")
    return "\n".join(out)


def exit_code(results: Sequence[TrialResult]) -> int:
    """0 when every trial held every invariant, 1 otherwise.

    >>> exit_code([])
    0
    """
    return 0 if all(r.held for r in results) else 1


@dataclass(frozen=True)
class ControlResult:
    """A migration in the control run (no faults): raw ``virsh migrate`` or ``ferry migrate``
    under the same cap, to tie a guest's reboot to TCG rather than to Ferry."""

    mode: str  # "virsh" | "ferry"
    kind: str
    ok: bool
    boots: int
    panic: str = ""
    seconds: float = 0.0
    note: str = ""


CONTROL_HEADERS = ("mode", "kind", "migrations", "finished", "reboots", "panics", "wall median")


def control_table(results: Sequence[ControlResult]) -> str:
    rows: list[list[object]] = []
    for mode in ("virsh", "ferry"):
        for kind in KINDS:
            mine = [r for r in results if r.mode == mode and r.kind == kind]
            if not mine:
                continue
            rows.append(
                [
                    "raw `virsh migrate`" if mode == "virsh" else "`ferry migrate`",
                    kind,
                    len(mine),
                    sum(r.ok for r in mine),
                    sum(max(0, r.boots - 1) for r in mine),
                    sum(bool(r.panic) for r in mine),
                    f"{median([r.seconds for r in mine]):.1f} s",
                ]
            )
    return markdown_table(CONTROL_HEADERS, rows)
