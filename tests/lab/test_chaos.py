"""The fault campaign, one trial per class (what CI runs; ``bench/chaos.py --one-per-class`` runs
the same) and one per cell in ``REGRESSIONS``: for each a fresh guest is migrated host1 -> host2
under a cap, the fault hits when the record enters the trial's phase, is repaired after its
outage, and every invariant of issue 11 is checked (bench/README.md, "chaos.py"). One test per
class, and one per regression, asserts that trial held.

A class known to break is listed in ``EXPECTED_TO_BREAK`` with the bug that breaks it and
marked ``xfail`` (not strict), so the suite stays green until its fix lands; once it has, the
class is deleted from there and its test must pass. Run with ``-s`` for the campaign's tables and
its wall time.

First, on the campaign's own lab (3 etcd members, 2 coordinators, host2 with a 512 MiB image
filesystem), the lab's fault primitives are checked to do what they say.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import chaos
import chaoslib as c
from fleetcli import placement

from ferry.lab import Lab
from ferry.lab.domain import parse_size
from ferry.lab.faults import FILL_BLOCK, image_dir_free

pytestmark = pytest.mark.lab

# Classes that break on today's code, with what breaks them. Empty: the two host-death breaks of the
# 42-trial campaign of 2026-12-02 are fixed (bench/README.md: an incoming domain left paused on the
# target is no landed guest; a VM that landed on a target that then died is listed there and committed).
EXPECTED_TO_BREAK: dict[str, str] = {}

# Cells beyond the classes' CI cells that a campaign once broke, tried as well: each hits the
# instant its bug needed, so its trial checks the fix on the real parts. (class, phase, kind):
REGRESSIONS = (
    # the source's libvirtd down as its copied disks are removed after the commit: the image stayed
    # (SOURCE_DISKS_LEFT) and a migration back was refused FILE_IN_THE_WAY (bench/README.md, 2026-12-03)
    ("source-libvirtd-kill", "Finishing", "copy"),
    # the target cut off past its lease as the copy lands: the leader, which had never asked about the
    # guest, knew its disks only by name, and the migration back (host2 not registered again yet) was
    # planned as shared storage, refused DISK_NOT_SHARED (bench/README.md, 2026-12-04). Its timing
    # does not always meet that window; its fix is tested without the lab as well.
    ("partition-target", "Finishing", "copy"),
)


@pytest.fixture(scope="module")
def chaos_lab(tmp_path_factory: pytest.TempPathFactory, lab_cache: Path) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("chaos")
    lab = Lab(root, cache_dir=lab_cache, cli_config=root / "operator-cli.toml")
    try:
        chaos.start_lab(lab)
        yield lab
    finally:
        lab.down()


# ---------------------------------------------------------------- the lab's fault primitives


def libvirt_reachable(lab: Lab, host: str) -> bool:
    """Whether host1 reaches ``host``'s libvirtd over the lab network (what a migration needs)."""
    probe = lab.host_exec("host1", "timeout", "5", "virsh", "-c", lab.tcp_uri(host), "version", timeout=15, check=False)
    return probe.returncode == 0


def test_a_partition_cuts_the_host_off_until_healed(chaos_lab: Lab):
    assert libvirt_reachable(chaos_lab, "host2")
    chaos_lab.partition("host2")
    try:
        assert chaos_lab.link_up("host2") is False
        assert not libvirt_reachable(chaos_lab, "host2")
        assert chaos_lab.status()["hosts"][1]["link_up"] is False
    finally:
        chaos_lab.heal("host2")
    assert chaos_lab.link_up("host2") is True
    assert libvirt_reachable(chaos_lab, "host2")


def test_the_small_image_filesystem_fills_up_and_empties(chaos_lab: Lab):
    state = chaos_lab.require_state()
    size = parse_size(chaos.IMAGE_FS)
    assert state.host("host2").image_fs_bytes == size
    assert size - (16 << 20) < image_dir_free(state, "host2") <= size
    filled = chaos_lab.fill_images("host2")
    probe = ["dd", "if=/dev/zero", "of=/var/lib/libvirt/images/probe", "bs=64k", "count=1", "conv=fsync"]
    try:
        assert image_dir_free(state, "host2") < FILL_BLOCK
        assert filled > size - (16 << 20)
        assert chaos_lab.host_exec("host2", *probe, check=False).returncode != 0  # ENOSPC
    finally:
        assert chaos_lab.unfill_images("host2") is True
    assert image_dir_free(state, "host2") > size - (16 << 20)
    assert chaos_lab.host_exec("host2", *probe, check=False).returncode == 0
    chaos_lab.host_exec("host2", "rm", "-f", "/var/lib/libvirt/images/probe")


def test_a_host_death_kills_its_guest_and_revive_brings_back_libvirtd_and_agent(chaos_lab: Lab):
    chaos_lab.guest("dying", "host2", disks=("16M",))
    try:
        death = chaos_lab.kill_host("host2")
        killed = " ".join(death.killed)
        assert "libvirtd" in killed and "ferry.agent" in killed and "guest=dying" in killed
        assert "qemu/dying.xml" in death.lost  # libvirt's runtime record went with the power, as on a reboot
        assert chaos_lab.link_up("host2") is False
        status = chaos_lab.status()["hosts"][1]
        assert (status["libvirtd"]["state"], status["agent"]["state"]) == ("dead", "dead")
        beats = chaos_lab.heartbeats("dying")
        time.sleep(3)
        assert chaos_lab.heartbeats("dying") == beats  # the guest died with its host
        chaos_lab.revive_host("host2")
        status = chaos_lab.status()["hosts"][1]
        assert status["link_up"] is True and status["agent"]["serving"] is True
        assert placement(chaos_lab, "dying") == {"host2": "shut off"}  # as after a power cut
    finally:
        chaos_lab.virsh("host2", "destroy", "dying", check=False)
        chaos_lab.virsh("host2", "undefine", "dying", check=False)
        chaos_lab.host_exec("host2", "rm", "-f", "/var/lib/libvirt/images/dying-vda.qcow2", check=False)


def test_a_guest_libvirtd_cannot_destroy_is_killed_the_hard_way(chaos_lab: Lab):
    chaos_lab.guest("hard-off", "host1", disks=("16M",))
    try:
        assert chaos_lab.kill_guest("host1", "hard-off") is True
        deadline = time.monotonic() + 20
        while placement(chaos_lab, "hard-off") != {"host1": "shut off"}:
            assert time.monotonic() < deadline, placement(chaos_lab, "hard-off")
            time.sleep(0.5)
        assert chaos_lab.kill_guest("host1", "hard-off") is False  # nothing of it runs any more
    finally:
        chaos_lab.virsh("host1", "undefine", "hard-off", check=False)
        chaos_lab.host_exec("host1", "rm", "-f", "/var/lib/libvirt/images/hard-off-vda.qcow2", check=False)


# ---------------------------------------------------------------- the campaign


@pytest.fixture(scope="module")
def campaign(chaos_lab: Lab) -> dict[str, c.TrialResult]:
    specs = c.plan_trials(c.CLASSES, one_per_class=True)
    specs += [c.TrialSpec(len(specs) + i, *cell) for i, cell in enumerate(REGRESSIONS, 1)]
    started = time.monotonic()
    results = chaos.Campaign(chaos_lab, chaos.Settings()).run(specs)
    seconds = time.monotonic() - started
    print(f"\n[chaos] one trial per class and the regressions: {len(results)} trials in {seconds:.0f} s\n")
    print(c.summary_table(results) + "\n")
    print(c.trials_table(results) + "\n")
    print(c.break_report(results))
    return {r.spec.label: r for r in results}


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(f.name, marks=pytest.mark.xfail(strict=False, reason=EXPECTED_TO_BREAK[f.name]))
        if f.name in EXPECTED_TO_BREAK
        else f.name
        for f in c.CLASSES
    ],
)
def test_every_invariant_holds(campaign: dict[str, c.TrialResult], fault: str):
    result = campaign[c.TrialSpec(0, fault, *c.BY_NAME[fault].ci).label]
    assert result.held, "\n" + c.break_report([result])


@pytest.mark.parametrize("cell", REGRESSIONS, ids=[f"{f}@{p}-{k}" for f, p, k in REGRESSIONS])
def test_a_cell_a_campaign_once_broke_holds(campaign: dict[str, c.TrialResult], cell: tuple[str, str, str]):
    result = campaign[c.TrialSpec(0, *cell).label]
    assert result.held, "\n" + c.break_report([result])
