"""Hosts' migration bandwidth budgets on real hosts (``[limits] host_bandwidth_mibps``): two
migrations out of host1 share its budget, and libvirt on host1 says so.

The module's own lab: two hosts with a budget of 16 MiB/s each (out and in), two outbound slots,
one coordinator. Two guests on the lab's shared storage whose memory holds data (a dirtier at a low
rate keeps 96 MiB written, so a migration takes seconds at 8 MiB/s) go from host1 to host2 one
after the other. What an operator checks is what the test checks: `virsh migrate-getspeed` on host1
while both run (8 each; the first one started at 16 and was tuned down), the second one alone again
at 16 once the other ended, the records' actions saying why, and both guests on host2 on their
first boot. A guest whose disk is copied starts at 16 / 2 slots even alone and keeps it while its
disk is copied (libvirt cannot re-tune a disk copy), then its memory gets the whole budget. Run with
``-s`` to see the speeds sampled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetcli import (
    SUCCEEDED,
    assert_same_boot,
    beats,
    images,
    placement,
    remove_guests,
    show,
    submit,
    wait_final,
    wait_until,
)

from ferry.lab import ControlPlane, Lab

pytestmark = pytest.mark.lab

BUDGET = 16  # low enough that the jobs overlap for seconds on the lab's TCG guests
UNLIMITED = 1 << 40  # MiB/s: libvirt reads (2^63 - 1) bytes/s, its default, for no limit set
FILL_S = 15  # the copied guest's dirtier writes 4 MiB/s: ~60 MiB before its migration, ~90 by its memory phase


@pytest.fixture(scope="module")
def budget_lab(tmp_path_factory: pytest.TempPathFactory, lab_cache: Path) -> Iterator[Lab]:
    home = tmp_path_factory.mktemp("bandwidth-lab")
    the_lab = Lab(home / "lab", cache_dir=lab_cache, cli_config=home / "cli.toml")
    try:
        the_lab.up(
            hosts=2,
            install=False,
            control_plane=ControlPlane(
                etcd_members=1, coordinators=1, per_host_outbound=2, per_host_inbound=2, host_bandwidth_mibps=BUDGET
            ),
        )
        yield the_lab
    finally:
        the_lab.down()


def speed(lab: Lab, name: str) -> int | None:
    """libvirt's migration speed of the guest's job on host1 (MiB/s); None when no job runs (before
    and after the reading: a job that ended in between reads libvirt's "unlimited" default), or when
    the job has no speed yet (at its very start libvirt also reads "unlimited", 8796093022207)."""

    def running() -> bool:
        return "Unbounded" in lab.virsh("host1", "domjobinfo", name, check=False).stdout

    if not running():
        return None
    out = lab.virsh("host1", "migrate-getspeed", name, check=False).stdout.strip()
    return int(out) if out.isdigit() and int(out) < UNLIMITED and running() else None


def test_two_migrations_out_of_a_host_share_its_budget(budget_lab: Lab) -> None:
    lab = budget_lab
    names = ["bw1", "bw2"]
    try:
        for name in names:
            lab.guest(name, "host1", disks=("32M",), shared=True, memory_mib=192, dirty_rate="2", dirty_mb=96)
        samples: list[tuple[float, int | None, int | None]] = []
        done = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not done.is_set():
                samples.append((round(time.monotonic() - t0, 1), speed(lab, "bw1"), speed(lab, "bw2")))
                time.sleep(0.3)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            first = submit(lab, "bw1", "--unsafe")
            wait_until(lambda: speed(lab, "bw1") == BUDGET, 60, "bw1's job at the whole budget")
            time.sleep(1.5)  # a head start (~60 MiB): bw1 ends first, and bw2 then runs alone a while
            second = submit(lab, "bw2", "--unsafe")
            wait_until(
                lambda: (speed(lab, "bw1"), speed(lab, "bw2")) == (BUDGET // 2, BUDGET // 2),
                30,
                "both at half the budget",
            )
            r1, r2 = wait_final(lab, first, timeout=180), wait_final(lab, second, timeout=180)
        finally:
            done.set()
            sampler.join()
            print("\n  t (s)  bw1 MiB/s  bw2 MiB/s\n" + "\n".join(f"  {t:5.1f}  {a}  {b}" for t, a, b in samples))
        assert r1["phase"] == r2["phase"] == SUCCEEDED
        # both at half, then the one still running alone at the whole budget again
        shared = next(i for i, (_, a, b) in enumerate(samples) if a == b == BUDGET // 2)
        assert any((a is None and b == BUDGET) or (b is None and a == BUDGET) for _, a, b in samples[shared:]), samples
        for r in (r1, r2):
            notes = [a["reason"] for a in show(lab, r["id"]).get("actions", []) if a["action"] == "bandwidth"]
            assert f"bandwidth {BUDGET // 2} MiB/s: the migration budget of host1, {BUDGET} MiB/s out, shared by 2" in (
                " ".join(notes)
            ), notes
        for name in names:
            assert placement(lab, name) == {"host2": "running"}  # not even defined on host1 any more
            beats(lab, name)
            assert_same_boot(lab, name)
    finally:
        remove_guests(lab, names)


def test_a_migration_that_copies_disks_keeps_the_budget_over_the_slots_until_its_memory_moves(
    budget_lab: Lab,
) -> None:
    lab = budget_lab
    try:
        # host-local: copied. Its memory holds data, so that the memory phase takes seconds after the
        # disk copy: enough for the leader to see it (the progress it stores, once a second) and re-tune
        # the job. Right after boot it held little, and one run of four missed the memory phase.
        lab.guest("bw3", "host1", disks=("64M",), memory_mib=192, dirty_rate="4", dirty_mb=96)
        time.sleep(FILL_S)
        mid = submit(lab, "bw3", "--copy-storage-all")
        seen: list[int] = []

        def running() -> bool:
            s = speed(lab, "bw3")
            if s is not None and (not seen or seen[-1] != s):
                seen.append(s)
            return show(lab, mid)["phase"] in ("finishing", SUCCEEDED, "failed", "rolled_back")

        wait_until(running, 120, "bw3's migration to end")
        r = wait_final(lab, mid, timeout=60)
        assert r["phase"] == SUCCEEDED
        # alone, yet half the budget while its disk is copied; the whole budget once its memory moves
        assert seen == [BUDGET // 2, BUDGET], seen
        notes = [a["reason"] for a in show(lab, mid).get("actions", []) if a["action"] == "bandwidth"]
        assert notes == [
            f"bandwidth {BUDGET // 2} MiB/s while its disks are copied (libvirt sets a disk copy's speed once); "
            f"host1 has {BUDGET} MiB/s out for 2 slots and host2 has {BUDGET} MiB/s in for 2 slots",
            f"bandwidth {BUDGET} MiB/s: the migration budgets of host1, {BUDGET} MiB/s out, "
            f"and host2, {BUDGET} MiB/s in",
        ], notes
        assert placement(lab, "bw3") == {"host2": "running"}
        assert images(lab, "host1", "bw3") == [] and images(lab, "host2", "bw3") == ["bw3-vda.qcow2"]
        beats(lab, "bw3")
        assert_same_boot(lab, "bw3")
    finally:
        remove_guests(lab, ["bw3"])
