"""The fault campaign's pure parts (bench/chaoslib.py): which trials run, what a guest's console
says, which invariant an observation breaks, and the numbers in the tables. The campaign itself
runs on the lab (tests/lab/test_chaos.py, bench/chaos.py)."""

from __future__ import annotations

import doctest
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import chaoslib as c

# ---------------------------------------------------------------- the classes and the plan


def test_every_class_can_run_its_ci_cell_and_names_are_unique():
    assert len(c.BY_NAME) == len(c.CLASSES)
    for fault in c.CLASSES:
        assert fault.ci in c.cells(fault), fault.name
        assert set(fault.phases) <= set(c.PHASES) and set(fault.kinds) <= set(c.KINDS)
        assert fault.down_host in ("", "source", "target")


def test_the_issue_s_fault_classes_are_all_there():
    wanted = {
        "leader-kill",
        "leader-stop",
        "source-agent-kill",
        "target-agent-kill",
        "source-libvirtd-kill",
        "target-libvirtd-kill",
        "etcd-member-kill",
        "etcd-quorum-loss",
        "partition-source",
        "partition-target",
        "disk-full",
        "host-death-source",
        "host-death-target",
    }
    assert wanted <= set(c.BY_NAME)
    assert c.BY_NAME["disk-full"].kinds == ("copy",)  # a shared guest copies no disk
    assert {f.name for f in c.CLASSES if f.down_host} == {
        "partition-source",
        "partition-target",
        "host-death-source",
        "host-death-target",
    }


def test_one_per_class_is_each_class_once_at_its_ci_cell():
    plan = c.plan_trials(c.CLASSES, one_per_class=True)
    assert [t.fault for t in plan] == [f.name for f in c.CLASSES]
    assert [(t.phase, t.kind) for t in plan] == [f.ci for f in c.CLASSES]
    assert [t.index for t in plan] == list(range(1, len(plan) + 1))


def test_the_full_campaign_covers_every_class_before_repeating_one():
    plan = c.plan_trials(c.CLASSES, seed=3)
    assert len(plan) == 3 * len(c.CLASSES) >= 40
    first_round = plan[: len(c.CLASSES)]
    assert {t.fault for t in first_round} == set(c.BY_NAME)
    assert Counter(t.fault for t in plan) == Counter({f.name: 3 for f in c.CLASSES})


def test_a_class_walks_its_cells_before_it_repeats_one():
    fault = c.BY_NAME["leader-kill"]
    plan = c.plan_trials([fault], trials=len(c.cells(fault)) + 1, seed=11)
    walked = [(t.phase, t.kind) for t in plan]
    assert walked[0] == fault.ci
    assert sorted(walked[:-1]) == sorted(c.cells(fault))
    assert walked[-1] == walked[0]


def test_the_seed_decides_the_order_and_repeats_it():
    one = c.plan_trials(c.CLASSES, trials=42, seed=1)
    assert one == c.plan_trials(c.CLASSES, trials=42, seed=1)
    assert one != c.plan_trials(c.CLASSES, trials=42, seed=2)


def test_classes_are_chosen_by_name_in_table_order():
    assert [f.name for f in c.select_classes("host-death-target, none")] == ["none", "host-death-target"]
    assert c.select_classes(None) == c.select_classes("all") == c.CLASSES
    with pytest.raises(ValueError, match="unknown fault classes nope"):
        c.select_classes("none,nope")


@pytest.mark.parametrize(
    ("seen", "wanted", "reached"),
    [
        ("Pending", "Preflight", False),
        ("Preflight", "Preflight", True),
        ("Migrating", "Preparing", True),
        ("RollingBack", "Finishing", True),
        ("Succeeded", "Finishing", True),
        ("Preparing", "Migrating", False),
    ],
)
def test_a_phase_is_reached_at_it_or_after_it(seen, wanted, reached):
    assert (c.phase_index(seen) >= c.phase_index(wanted)) is reached


# ---------------------------------------------------------------- the console

CONSOLE = """\
[    2.53] ACPI: \\_SB_.LNKS: No IRQ available
GUEST-BOOTED MemTotal: 223740 kB dirty_mb=64 dirty_rate=off
DISK vda sectors=131072 previous marker: none
HEARTBEAT 1 uptime=2.71
HEARTBEAT 2 uptime=3.72
[   40.10] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
[   40.11] CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-28-cloud-amd64
[   40.12] Call Trace:
[   40.13]  <TASK>
[   40.14] Kernel Offset: disabled
GUEST-BOOTED MemTotal: 223740 kB dirty_mb=64 dirty_rate=off
HEARTBEAT 1 uptime=2.70
"""


def test_boots_and_the_panic_that_explains_a_reboot():
    assert c.console_boots(CONSOLE) == 2
    excerpt = c.panic_excerpt(CONSOLE)
    assert excerpt.startswith("[   40.10] Kernel panic - not syncing: Attempted to kill init!")
    assert excerpt.count(" | ") == 3
    assert c.console_boots("HEARTBEAT 1 uptime=1\nGUEST-BOOTEDx\n") == 1  # a line that starts with the mark
    assert c.panic_excerpt("GUEST-BOOTED\nHEARTBEAT 1 uptime=1\n") == ""


# ---------------------------------------------------------------- the invariants

OK = c.Observed("host1", "host2", "Succeeded", 4.2, {"host2": "running"}, boots=1, beating=True)


@pytest.mark.parametrize(
    ("change", "broken"),
    [
        ({}, {}),
        ({"final_phase": "RolledBack", "placement": {"host1": "running"}}, {}),
        ({"final_phase": "Failed", "placement": {"host1": "running"}}, {}),  # Failed names no host
        ({"recovery_s": -3.0}, {}),  # final before the repair
        ({"recovery_s": None, "final_phase": ""}, {"final-60s": "still not final 60 s"}),
        ({"recovery_s": 61.0}, {"final-60s": "final 61.0 s after"}),
        ({"placement": {"host1": "running", "host2": "running"}}, {"one-host": "runs on 2 hosts"}),
        ({"placement": {"host1": "running"}}, {"one-host": "record says Succeeded but the guest runs on host1"}),
        ({"placement": {"host1": "shut off", "host2": "running"}}, {"one-host": "defined on 2 hosts"}),
        ({"placement": {}}, {"one-host": "runs on 0 hosts"}),
        ({"boots": 2, "panic": "Kernel panic"}, {"first-boot": "2 boot markers on the console; panic: Kernel"}),
        ({"beating": False}, {"first-boot": "heartbeat stopped"}),
        ({"leftovers": ("host1: prepare p1", "host1: image x")}, {"nothing-left": "host1: prepare p1; host1: image"}),
        ({"vms_mismatch": "ferry vms: nowhere; libvirt: host2 running"}, {"vms-agree": "ferry vms: nowhere"}),
        ({"new_migration": "exited 2: VM_BUSY"}, {"new-migration": "VM_BUSY"}),
        ({"dead_host": "ferry vms no longer lists g1"}, {"dead-host": "no longer lists"}),
        ({"dead_host": ""}, {}),
    ],
)
def test_what_each_observation_breaks(change, broken):
    found = c.check(replace(OK, **change))
    assert set(found) == set(broken)
    for name, words in broken.items():
        assert words in found[name]


DEAD = c.Observed(
    "host1", "host2", "Failed", 20.0, {"host1": "shut off"}, boots=1, beating=None, guest_killed=True, dead_host=""
)


@pytest.mark.parametrize(
    ("change", "broken"),
    [
        ({}, set()),  # the guest died with its host and stays off: as it should
        ({"placement": {"host2": "running"}, "boots": 2}, {"one-host", "first-boot"}),  # started elsewhere
        ({"placement": {"host1": "running"}, "boots": 2}, {"one-host", "first-boot"}),  # restarted where it died
        ({"placement": {"host1": "shut off", "host2": "shut off"}}, {"one-host"}),
        ({"recovery_s": None, "final_phase": ""}, {"final-60s"}),
    ],
)
def test_a_guest_that_died_with_its_host_must_not_run_again(change, broken):
    assert set(c.check(replace(DEAD, **change))) == broken


@pytest.mark.parametrize(
    ("ferry_says", "libvirt_says", "agree"),
    [
        ({"host2": "DOMAIN_STATE_RUNNING"}, {"host2": "running"}, True),
        ({"host1": "DOMAIN_STATE_SHUTOFF"}, {"host1": "shut off"}, True),
        ({"host1": "DOMAIN_STATE_PAUSED"}, {"host1": "paused"}, True),
        ({}, {}, True),
        ({}, {"host1": "running"}, False),
        ({"host1": "DOMAIN_STATE_RUNNING"}, {"host1": "running", "host2": "shut off"}, False),
        ({"host1": "DOMAIN_STATE_RUNNING"}, {"host1": "paused"}, False),
    ],
)
def test_ferry_vms_against_libvirt(ferry_says, libvirt_says, agree):
    assert (c.vms_mismatch(ferry_says, libvirt_says) == "") is agree


@pytest.mark.parametrize(
    ("entry", "marked"),
    [
        ({"host": "host1", "domain": {"name": "g", "state": "DOMAIN_STATE_RUNNING"}}, False),
        ({"host": "host1", "domain": {"name": "g"}}, False),  # state left out: proto3's zero value
        ({"host": "host1", "unreachable": True, "domain": {"name": "g"}}, True),
        ({"host": "host1", "domain": {"name": "g", "unreachable": True}}, True),
        ({"host": "host1", "state": "VM_STATE_UNREACHABLE", "domain": {"name": "g"}}, True),
        ({"host": "host1", "unreachable": False}, False),
    ],
)
def test_a_vm_marked_unreachable(entry, marked):
    assert c.marked_unreachable(entry) is marked


@pytest.mark.parametrize(
    ("phase", "home"),
    [("Succeeded", "host2"), ("RolledBack", "host1"), ("Cancelled", "host1"), ("Failed", None), ("", None)],
)
def test_where_the_record_says_the_guest_runs(phase, home):
    assert c.home_of(phase, "host1", "host2") == home


def test_phases_as_the_json_prints_them():
    assert c.phase_from_json("PHASE_ROLLING_BACK") == "RollingBack"
    assert c.phase_from_json("PHASE_PREFLIGHT") == "Preflight"
    # what ferry --output json prints since the CLI's JSON schema
    assert c.phase_from_json("rolling_back") == "RollingBack"
    assert c.phase_from_json("preflight") == "Preflight"


# ---------------------------------------------------------------- the tables


def result(fault: str, broken: dict[str, str], recovery: float | None, **more) -> c.TrialResult:
    spec = c.TrialSpec(1, fault, "Migrating", "copy")
    return c.TrialResult(spec, "g", more.pop("hit", "Migrating"), broken, "Succeeded", recovery, 30.0, **more)


def test_the_summary_counts_trials_held_breaks_recovery_misses_and_reboots():
    results = [
        result("leader-kill", {}, 4.0),
        result("leader-kill", {}, -2.0),
        result("leader-kill", {}, 9.0, hit="Finishing"),  # the phase was over when the watch saw it
        result("source-libvirtd-kill", {"final-60s": "x", "nothing-left": "y"}, None),
        result("source-libvirtd-kill", {"final-60s": "x"}, None, boots=2),
        result("disk-full", {}, None, error="RuntimeError: no leader"),
    ]
    rows = {row[0]: row for row in c.summary_rows(results)}
    assert list(rows) == ["leader-kill", "source-libvirtd-kill", "disk-full", "all"]
    assert rows["leader-kill"] == ["leader-kill", 3, 3, "Succeeded 3", "-", "4.0 / 9.0 s", 1, 0]
    assert rows["source-libvirtd-kill"] == [
        "source-libvirtd-kill",
        2,
        0,
        "Succeeded 2",
        "final-60s 2, nothing-left 1",
        "-",
        0,
        1,
    ]
    assert rows["disk-full"][2:5] == [0, "Succeeded 1", "not run as planned 1"]
    assert rows["all"][1:3] == [6, 3]
    assert c.exit_code(results) == 1
    late = replace(results[0], after_phase="Succeeded")  # the record was final when the fault hit
    assert late.missed_phase and not replace(results[0], after_phase="Migrating").missed_phase
    assert c.exit_code(results[:3]) == 0


def test_the_tables_name_every_trial_and_every_break():
    results = [result("none", {}, 5.0), result("leader-stop", {"final-60s": "still not final"}, None)]
    results[1] = replace(results[1], final_phase="", history=(("Migrating", "2026-12-01T22:07:12Z", "agent lost"),))
    table = c.trials_table(results)
    assert "| NOT FINAL " in table and "| final-60s " in table
    report = c.break_report(results)
    assert "leader-stop @ Migrating (copy)" in report and "final-60s: still not final" in report
    assert "agent lost" in report and "none @" not in report
    assert c.summary_table(results).splitlines()[0].startswith("| class ")


def test_the_json_of_a_trial():
    data = result("none", {"vms-agree": "x"}, 1.234).to_json()
    assert data["held"] is False and data["broken"] == {"vms-agree": "x"} and data["recovery_s"] == 1.23
    assert {"fault", "phase", "kind", "hit_phase", "history", "notes", "boots", "panic"} <= set(data)


def test_the_control_table_counts_reboots_per_mode_and_kind():
    runs = [
        c.ControlResult("virsh", "shared", True, 1, seconds=8.0),
        c.ControlResult("virsh", "shared", True, 2, "Kernel panic", seconds=9.0),
        c.ControlResult("ferry", "copy", False, 1, seconds=3.0, note="MIGRATION_TIMEOUT"),
    ]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in c.control_table(runs).splitlines()[2:]]
    assert rows == [
        ["raw `virsh migrate`", "shared", "2", "2", "1", "1", "8.5 s"],
        ["`ferry migrate`", "copy", "1", "0", "0", "0", "3.0 s"],
    ]


def test_the_examples_in_chaoslib_docstrings_hold():
    assert doctest.testmod(c, optionflags=doctest.ELLIPSIS).failed == 0
