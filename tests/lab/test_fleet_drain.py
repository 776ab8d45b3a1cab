"""Fleet operations on real hosts, driven through the ``ferry`` CLI as an operator drives them:
``ferry migrate VM`` without a target, ``ferry drain HOST``, a drain across a leader crash, and a
drain with a guest that no other host can take.

The module's own lab: three hosts (host1 and host3 with guest bridge br-guest, host2 with br-vm,
mapped by the coordinators' [hosts.*] tables), etcd, two coordinators, two outbound migration
slots per host. What the operator checks is what these tests check: where each guest runs
(virsh), that it still beats on its first boot, that its disk content arrived, what `ferry hosts`
and `ferry drains show` say, and that nothing of it is left on the host it left. Run with ``-s``
to see the numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetcli import (
    FINAL,
    SUCCEEDED,
    disk_marker,
    ferry,
    history,
    images,
    ok,
    placement,
    prepares_of,
    show,
    wait_final,
)

from ferry.lab import ControlPlane, Lab
from ferry.lab.controlplane import ELECTION_TTL_S
from ferry.lab.topology import IMAGE_DIR

pytestmark = pytest.mark.lab

HOSTS3 = ("host1", "host2", "host3")
DRAIN_WITHIN_S = 300.0


@pytest.fixture(scope="module")
def lab3(tmp_path_factory: pytest.TempPathFactory, lab_cache: Path) -> Iterator[Lab]:
    home = tmp_path_factory.mktemp("drain-lab")
    the_lab = Lab(home / "lab", cache_dir=lab_cache, cli_config=home / "cli.toml")
    try:
        the_lab.up(
            hosts=3,
            install=False,
            control_plane=ControlPlane(
                etcd_members=1, coordinators=2, per_host_outbound=2, per_host_inbound=2, cluster=4
            ),
        )
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture
def guests(lab3: Lab) -> Iterator[list[str]]:
    """Names of the guests a test boots; removed afterwards from every host, host1 back in service."""
    names: list[str] = []
    yield names
    for d in (ferry(lab3, "drains").data or {}).get("drains", []):
        if d["state"] in ("running", "paused"):
            ferry(lab3, "drains", "cancel", d["id"])
    for name in names:
        for m in (ferry(lab3, "migrations", "--vm", name).data or {}).get("migrations", []):
            if m["phase"] not in FINAL:
                ferry(lab3, "migrations", "cancel", m["id"])
                wait_final(lab3, m["id"], timeout=60)
        for host in HOSTS3:
            lab3.virsh(host, "destroy", name, check=False)
            lab3.virsh(host, "undefine", name, check=False)
            for image in images(lab3, host, name):
                lab3.host_exec(host, "rm", "-f", f"{IMAGE_DIR}/{image}", check=False)
        lab3.paths.console_log(name).unlink(missing_ok=True)
    for host in HOSTS3:
        ferry(lab3, "hosts", "uncordon", host)


def boot(lab: Lab, guests: list[str], *names: str, host: str = "host1", **kw: object) -> None:
    guests.extend(names)
    for name in names:
        lab.guest(name, host, disks=("32M",), memory_mib=192, **kw)  # type: ignore[arg-type]


def one_boot_and_beating(lab: Lab, name: str) -> None:
    """Still its first boot (a guest that crashed and rebooted would beat too), and beating."""
    assert lab.console(name).count("GUEST-BOOTED") == 1, f"{name} rebooted"
    before = lab.heartbeats(name)
    assert lab.wait_for_heartbeat(name, above=before, timeout=30) > before


def runs_on(lab: Lab, name: str) -> list[str]:
    return [h for h, state in placement(lab, name).items() if state == "running"]


def items(drain: dict) -> dict[str, dict]:
    return {i["vm"]: i for i in drain["items"]}


def job_slot_held(history: list[dict]) -> list[tuple[bool, str]]:
    """(holds a slot, at) for each history entry. A migration admitted ahead of its slot
    (``prepare_ahead``) prepares without one and holds it from "slot granted" on."""
    held, ahead = [], False
    for h in history:
        if h["reason"].startswith("admitted ahead"):
            ahead = True
        elif h["reason"].startswith("slot granted"):
            ahead = False
        holds = h["phase"] not in ("pending", "succeeded", "failed", "cancelled", "rolled_back")
        ahead = ahead and holds
        held.append((holds and not ahead, h["at"]))
    return held


def peak_out(lab: Lab, drain: dict, host: str) -> int:
    """The most of the drain's migrations holding a slot at once (from their histories)."""
    spans = []
    for i in drain["items"]:
        if not i.get("migration_id"):
            continue
        m = show(lab, i["migration_id"])
        held = job_slot_held(m["history"])
        start = next((at for holds, at in held if holds), None)
        end = next((at for holds, at in reversed(held) if not holds), None)
        if start and end and m["source_host"] == host:
            spans.append((start, end))
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = cur = 0
    for _, step in events:
        cur += step
        peak = max(peak, cur)
    return peak


# ---------------------------------------------------------------- placement


def test_migrate_without_a_target_lands_on_a_feasible_host(lab3, guests):
    boot(lab3, guests, "fd-place")
    ranked = ferry(lab3, "preflight", "fd-place")
    assert ranked.code == 0, ranked
    assert {c["host"] for c in ranked.data["candidates"]} == {"host2", "host3"}
    assert all(c["reasons"] for c in ranked.data["candidates"])

    run = ferry(lab3, "migrate", "fd-place")
    assert run.code == 0, run
    m = run.data
    assert m["phase"] == SUCCEEDED, history(m)
    assert m["target_host"] in ("host2", "host3")
    assert any(h["reason"].startswith(f"placed on {m['target_host']} (score") for h in m["history"]), history(m)
    assert placement(lab3, "fd-place") == {m["target_host"]: "running"}  # runs there, nothing left on host1
    assert images(lab3, "host1", "fd-place") == []
    one_boot_and_beating(lab3, "fd-place")
    print(f"\n[drain] ferry migrate fd-place (no --to) -> {m['target_host']}: {run.seconds:.1f} s")


# ---------------------------------------------------------------- a drain


def test_drain_empties_the_host_within_its_slots(lab3, guests):
    names = [f"fd-d{i}" for i in range(4)]
    boot(lab3, guests, *names)
    lab3.wait_for_heartbeat(names[-1], above=6, timeout=90)  # the markers are on the disks
    markers = {n: disk_marker(lab3, "host1", f"{IMAGE_DIR}/{n}-vda.qcow2") for n in names}
    assert all(m >= 5 for m in markers.values()), markers

    plan = ferry(lab3, "drain", "host1", "--dry-run")
    assert plan.code == 0 and plan.data["dry_run"], plan
    assert {i["target_host"] for i in plan.data["items"]} <= {"host2", "host3"}
    assert ferry(lab3, "drains").data.get("drains", []) == []  # the dry run wrote nothing

    run = ferry(lab3, "drain", "host1", "--max-parallel", "2", "--reason", "kernel update", timeout=DRAIN_WITHIN_S)
    assert run.code == 0, run
    d = run.data
    assert d["state"] == "succeeded" and d["vms_moved"] == 4, d
    for name, item in items(d).items():
        assert item["state"] == "moved", item
        target = item["target_host"]
        assert placement(lab3, name) == {target: "running"}, name
        assert images(lab3, "host1", name) == [] and prepares_of(lab3, "host1", name) == []
        assert disk_marker(lab3, target, f"{IMAGE_DIR}/{name}-vda.qcow2") >= markers[name]
        one_boot_and_beating(lab3, name)
    assert peak_out(lab3, d, "host1") <= 2

    hosts = {h["name"]: h for h in ok(ferry(lab3, "hosts"))["hosts"]}
    assert hosts["host1"]["cordoned"] and hosts["host1"]["drain_id"] == d["id"]
    assert hosts["host1"]["cordon_reason"] == "kernel update"
    refused = ferry(lab3, "migrate", names[0], "--to", "host1", "--no-wait")
    assert refused.code == 2 and refused.error["reason"] == "TARGET_CORDONED", refused
    print(f"\n[drain] ferry drain host1 (4 guests, 2 slots): {run.seconds:.1f} s, estimated {d['estimated_s']:.0f} s")


def test_a_drain_completes_with_the_leader_killed_halfway(lab3, guests):
    names = [f"fd-k{i}" for i in range(3)]
    boot(lab3, guests, *names)
    d = ok(ferry(lab3, "drain", "host1", "--max-parallel", "1", "--no-wait"))
    drain_id = d["id"]
    deadline = time.monotonic() + 120
    while ok(ferry(lab3, "drains", "show", drain_id)).get("vms_moved", 0) < 1:
        assert time.monotonic() < deadline, "the first guest did not move"
        time.sleep(0.5)
    leader = lab3.leader()
    assert leader is not None
    lab3.kill(f"coordinator {leader}", "KILL")
    try:
        deadline = time.monotonic() + DRAIN_WITHIN_S
        while True:
            d = ferry(lab3, "drains", "show", drain_id).data or {}
            if d.get("state") in ("succeeded", "incomplete", "cancelled"):
                break
            assert time.monotonic() < deadline, f"the drain did not end: {d}"
            time.sleep(1)
    finally:
        lab3.restart(f"coordinator {leader}")
    assert d["state"] == "succeeded", d
    assert lab3.wait_for_leader(timeout=ELECTION_TTL_S * 3) is not None
    for name, item in items(d).items():
        assert runs_on(lab3, name) == [item["target_host"]] and item["target_host"] != "host1", name
        one_boot_and_beating(lab3, name)
    migrations = ok(ferry(lab3, "migrations", "--host", "host1"))["migrations"]
    moved = [show(lab3, m["id"]) for m in migrations if m["vm"] in names]
    said = [(m["id"], m["vm"], m["phase"], m.get("error"), history(m)) for m in moved]
    assert len(moved) == 3 and all(m["phase"] == SUCCEEDED for m in moved), (said, d["items"])  # one migration each
    print(f"\n[drain] drain {drain_id} went on after {leader} was killed; {d['vms_moved']} moved")


def test_a_guest_that_fits_nowhere_is_reported_and_the_others_move(lab3, guests):
    bridge = "br-fd-only1"  # on host1 only
    lab3.host_exec("host1", "ip", "link", "add", bridge, "type", "bridge")
    try:
        lab3.host_exec("host1", "ip", "link", "set", bridge, "up")
        boot(lab3, guests, "fd-n0", "fd-n1")
        boot(lab3, guests, "fd-lonely", bridge=bridge)
        run = ferry(lab3, "drain", "host1", timeout=DRAIN_WITHIN_S)
        assert run.code == 1, run  # ended without moving everything
        d = run.data
        assert d["state"] == "incomplete" and d["vms_moved"] == 2, d
        lonely = items(d)["fd-lonely"]
        assert lonely["state"] == "failed", lonely
        reason = lonely["problems"][-1]
        assert reason["reason"] == "NO_TARGET" and "BRIDGE_MISSING" in reason["message"], reason
        assert reason["hint"]
        assert runs_on(lab3, "fd-lonely") == ["host1"]
        one_boot_and_beating(lab3, "fd-lonely")
        for name in ("fd-n0", "fd-n1"):
            item = items(d)[name]
            assert item["state"] == "moved" and runs_on(lab3, name) == [item["target_host"]]
        assert "fd-lonely (NO_TARGET)" in d["history"][-1]["reason"]
    finally:
        for name in list(guests):
            lab3.virsh("host1", "destroy", name, check=False)
        lab3.host_exec("host1", "ip", "link", "del", bridge, check=False)


def test_a_dry_run_says_which_guest_its_policy_would_not_move(lab3, guests):
    """A guest dirtying 60 MiB/s over 256 MiB, drained at 8 MiB/s under a policy without post-copy:
    the dry run measures it on host1 (libvirt's dirty-rate calculation) and flags it before
    anything starts; with post-copy on stall it would finish. Nothing is written either way."""
    guests.append("fd-busy")
    lab3.guest("fd-busy", "host1", disks=("32M",), memory_mib=512, dirty_rate="60", dirty_mb=256)
    lab3.wait_for_heartbeat("fd-busy", above=5, timeout=90)
    before = ferry(lab3, "drains").data.get("drains", [])  # the module's earlier tests' drains
    plan = ferry(lab3, "drain", "host1", "--dry-run", "--bandwidth", "8")
    assert plan.code == 1 and plan.data["dry_run"], plan
    [busy] = [i for i in plan.data["items"] if i["vm"] == "fd-busy"]
    assert busy["state"] == "waiting" and busy["target_host"] in ("host2", "host3"), busy
    [p] = busy["problems"]
    assert p["reason"] == "WILL_NOT_CONVERGE" and "will not converge at 8 MiB/s" in p["message"], p
    finishing = ferry(lab3, "drain", "host1", "--dry-run", "--bandwidth", "8", "--postcopy", "--postcopy-on-stall")
    assert finishing.code == 0 and not any(i.get("problems") for i in finishing.data["items"]), finishing
    assert ferry(lab3, "drains").data.get("drains", []) == before  # the dry runs wrote nothing
    print(f"\n[drain] dry run of a busy guest at 8 MiB/s: {p['message']} ({plan.seconds:.1f} s)")
