"""Crashes in the middle of a real migration, driven through the ``ferry`` CLI: the leading
coordinator killed with SIGKILL (the standby takes over when the leader's lease runs out), and the
source host's agent killed and restarted.

The guarantee an operator relies on is the same for both: the migration still ends, within a
bounded time, as Succeeded (the guest runs on the target) or RolledBack (it runs on the source);
the guest runs on exactly one host and keeps beating; the host it does not run on holds no domain
of it and no prepare (and, after a rollback, no image on the target).

The same for etcd restored from a backup taken mid-migration (disaster recovery): the coordinators
notice that its history went back and start over.

The lab's election lease is 10 s (``ferry.lab.controlplane.ELECTION_TTL_S``). Every killed
process is started again before the test ends, so later tests still have two coordinators and
both agents. Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetcli import (
    IMAGE_DIR,
    MIGRATING,
    ROLLED_BACK,
    SUCCEEDED,
    assert_same_boot,
    beats,
    disk_marker,
    ferry,
    history,
    images,
    ms,
    outgoing_jobs,
    placement,
    prepares_of,
    remove_guests,
    running_on,
    submit,
    wait_final,
    wait_for,
    wait_until,
)

from ferry.lab import Lab
from ferry.lab.agents import agent_log_path
from ferry.lab.controlplane import ELECTION_TTL_S

pytestmark = pytest.mark.lab

END_WITHIN_S = 180.0  # the migration ends (either way) within this after the crash


@pytest.fixture
def guests(lab: Lab) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    remove_guests(lab, names)


def start_slow_migration(lab: Lab, guests: list[str], name: str, bandwidth_mibps: int) -> str:
    """Boot ``name`` on host1 and start moving it to host2 slowly; return once libvirt's job
    runs (the record is Migrating and host1 has an outgoing migration job)."""
    guests.append(name)
    lab.guest(name, "host1", disks=("64M",))
    mid = submit(lab, name, "--bandwidth", str(bandwidth_mibps))
    assert wait_for(lab, mid, {MIGRATING}, timeout=60)["phase"] == MIGRATING
    wait_until(lambda: outgoing_jobs(lab, "host1", [name]), 30, "libvirt's job on host1", interval=0.2)
    return mid


def check_outcome(lab: Lab, name: str, mid: str, final: dict) -> str:
    """Ended well (Succeeded or RolledBack) and the hosts agree with the record; returns where
    the guest runs."""
    assert final["phase"] in (SUCCEEDED, ROLLED_BACK), history(final)
    home = "host2" if final["phase"] == SUCCEEDED else "host1"
    assert placement(lab, name) == {home: "running"}, f"{final['phase']}: {history(final)}"
    before, after = beats(lab, name)
    assert after > before
    assert outgoing_jobs(lab, "host1", [name]) == []
    for host in ("host1", "host2"):
        assert prepares_of(lab, host, name, mid) == [], f"prepare of {mid} left on {host}"
    if final["phase"] == ROLLED_BACK:
        assert images(lab, "host2", name) == [], "the rolled-back target keeps an image"
        assert final["error"]["reason"], history(final)
    # After success the source still holds its copy of the disk image: not checked, the
    # coordinator does not remove source disks yet (agent RemoveSourceDisks is not wired in).
    return home


def steps(record: dict) -> str:
    return " > ".join(f"{phase} ({reason})" for phase, reason in history(record))


# ---------------------------------------------------------------- c) the leader dies


def test_leader_killed_mid_migration_the_standby_finishes_it(lab, guests):
    name = "ff-leader"
    leader = lab.leader()
    assert leader in ("c1", "c2"), f"no leader before the test: {leader!r}"
    # ~100 MiB of memory and a 64 MiB disk at 8 MiB/s: the job outlives the lease (10 s)
    mid = start_slow_migration(lab, guests, name, bandwidth_mibps=8)
    killed = time.monotonic()
    try:
        lab.kill(f"coordinator {leader}", "KILL")
        standby = lab.wait_for_leader(other_than=leader, timeout=ELECTION_TTL_S + 30)
        failover = time.monotonic() - killed
        assert standby is not None and standby != leader, f"no coordinator took over from {leader}"
        final = wait_final(lab, mid, timeout=END_WITHIN_S)
        ended = time.monotonic() - killed
        home = check_outcome(lab, name, mid, final)
    finally:
        lab.restart(f"coordinator {leader}")
    assert lab.leader() == standby  # the restarted one stands by
    print(
        f"\n[fleet] leader {leader} killed mid-migration: {standby} leads after {failover:.1f} s "
        f"(lease {ELECTION_TTL_S} s); {final['phase']} {ended:.1f} s after the kill, "
        f"guest on {home}; job {ms(final, 'time_elapsed_ms')} ms, downtime {ms(final, 'downtime_ms')} ms "
        f"(0 = not recorded after a fail-over)\n[fleet]   history: {steps(final)}"
    )


# ---------------------------------------------------------------- d) the source agent dies


def test_source_agent_killed_and_restarted_mid_migration(lab, guests):
    name = "ff-agent"
    mid = start_slow_migration(lab, guests, name, bandwidth_mibps=16)
    killed = time.monotonic()
    try:
        lab.kill("agent host1", "KILL")
    finally:
        lab.restart("agent host1")
    back = time.monotonic() - killed
    final = wait_final(lab, mid, timeout=END_WITHIN_S)
    ended = time.monotonic() - killed
    home = check_outcome(lab, name, mid, final)
    print(
        f"\n[fleet] source agent killed mid-migration, serving again after {back:.1f} s; "
        f"{final['phase']} {ended:.1f} s after the kill, guest on {home}"
        f"\n[fleet]   history: {steps(final)}"
    )


# ---------------------------------------------------------------- e) etcd restored from a backup


def disk_kept(lab: Lab, name: str, marker: int) -> None:
    """The guest's disk on host2 holds what the guest wrote on host1 (its marker did not go back),
    and host1 kept no copy of it."""
    assert disk_marker(lab, "host2", f"{IMAGE_DIR}/{name}-vda.qcow2") >= marker > 0
    assert images(lab, "host1", name) == [], "the source kept its image"


def source_marker(lab: Lab, name: str) -> int:
    image = f"{IMAGE_DIR}/{name}-vda.qcow2"
    return int(wait_until(lambda: disk_marker(lab, "host1", image), 30, f"{name}'s disk marker on host1"))


def succeeded_again(lab: Lab, mid: str) -> dict:
    """The record once it is Succeeded again (the CLI may find a coordinator starting over: asked again)."""

    def settled() -> dict | None:
        run = ferry(lab, "migrations", "show", mid)
        return run.data if run.code == 0 and run.data and run.data["phase"] == SUCCEEDED else None

    return dict(wait_until(settled, 60, f"{mid} finished again after the restore"))


def test_etcd_restored_from_a_snapshot_taken_mid_migration(lab, guests, tmp_path):
    """Disaster recovery: etcd is restored from a backup made while the migration ran. The restored
    record says Migrating, though the guest has landed since. Each coordinator notices that etcd's
    history went back, starts over (same PID), and the leader finishes the record from what the
    hosts say; the guest never rebooted and can move again (its claim is released).

    Between the backup and the restore the leader changed and led another migration, so the agents
    hold a leader term (an etcd revision) above any the restored etcd gives out at first: they follow
    the leader etcd's ``leader`` key names instead of refusing it as deposed (STALE_LEADER)."""
    name = "ff-restore"
    mid = start_slow_migration(lab, guests, name, bandwidth_mibps=16)
    marker = source_marker(lab, name)
    print(lab.etcd_snapshot(tmp_path / "backup.db"))
    first = wait_final(lab, mid, timeout=END_WITHIN_S)
    assert first["phase"] == SUCCEEDED, history(first)
    leader = lab.leader()
    lab.kill(f"coordinator {leader}", "KILL")
    assert lab.wait_for_leader(other_than=leader, timeout=ELECTION_TTL_S + 30) not in (None, leader)
    lab.restart(f"coordinator {leader}")
    guests.append("ff-restore2")  # the new leader's migration: both agents see its (higher) term
    lab.guest("ff-restore2", "host1", disks=("64M",))
    assert wait_final(lab, submit(lab, "ff-restore2"), timeout=END_WITHIN_S)["phase"] == SUCCEEDED
    state = lab.require_state()
    coordinators = {c: state.component(f"coordinator/{c}") for c in ("c1", "c2")}
    pids = {c: comp.process.pid for c, comp in coordinators.items() if comp is not None and comp.process}
    restored = time.monotonic()
    print(lab.etcd_restore(tmp_path / "backup.db"))
    final = succeeded_again(lab, mid)
    took = time.monotonic() - restored
    assert ("finishing", "guest runs on target") in history(final), history(final)
    check_outcome(lab, name, mid, final)
    disk_kept(lab, name, marker)
    for c, comp in coordinators.items():
        assert comp is not None and comp.process is not None
        log = Path(comp.process.log).read_text()
        assert "starts over: etcd's history went back" in log, f"{c} did not notice the restore"
        now = lab.require_state().component(f"coordinator/{c}")
        assert now is not None and now.process is not None and now.process.pid == pids[c]  # the same process
    assert lab.leader() in ("c1", "c2")
    again = wait_final(lab, submit(lab, name, to="host1"), timeout=END_WITHIN_S)
    assert again["phase"] == SUCCEEDED and running_on(lab, name) == ["host1"], history(again)
    assert_same_boot(lab, name)
    followed = [
        h for h in ("host1", "host2") if "following the leader etcd names" in agent_log_path(lab.paths, h).read_text()
    ]
    print(
        f"\n[fleet] etcd restored from a mid-migration backup: {mid} Succeeded again {took:.1f} s later; "
        f"agents that followed a lower leader term: {followed or 'none'}"
    )


def test_etcd_restored_with_bumped_revisions_is_noticed_by_the_records(lab, guests, tmp_path):
    """The same restore as etcd advises it (``--bump-revision --mark-compacted``): revisions go on
    growing, so only the records themselves show the history went back -- the leader read the
    migration's final version, and etcd now holds an older one."""
    name = "ff-bumped"
    mid = start_slow_migration(lab, guests, name, bandwidth_mibps=16)
    marker = source_marker(lab, name)
    print(lab.etcd_snapshot(tmp_path / "backup.db"))
    assert wait_final(lab, mid, timeout=END_WITHIN_S)["phase"] == SUCCEEDED
    leader = lab.leader()
    restored = time.monotonic()
    print(lab.etcd_restore(tmp_path / "backup.db", bump_revision=1_000_000))
    final = succeeded_again(lab, mid)
    assert ("finishing", "guest runs on target") in history(final), history(final)
    check_outcome(lab, name, mid, final)
    disk_kept(lab, name, marker)
    component = lab.require_state().component(f"coordinator/{leader}")
    assert component is not None and component.process is not None
    assert "restored from a snapshot with --bump-revision?" in Path(component.process.log).read_text()
    took = time.monotonic() - restored
    print(f"\n[fleet] etcd restored with bumped revisions: {mid} Succeeded again {took:.1f} s later")
