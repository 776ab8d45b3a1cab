"""The whole fleet path on real hosts, driven through the ``ferry`` CLI as an operator drives it:
``ferry`` -> coordinator (etcd, leader) -> agents -> libvirt on the lab's hosts.

What the operator checks afterwards is what these tests check: where the guest runs (virsh), that
it still beats (its console), that its disk content arrived (the image on the target, read with
qemu-io), what the record says (``ferry migrations show``), and that nothing was left behind
(no domain, image or prepare of it on the host it does not run on).

The session lab has one outbound migration slot per host (``per_host_outbound = 1``) and derives
the bridge mapping host1 br-guest -> host2 br-vm, so a plain ``ferry migrate g --to host2`` works.
Run with ``-s`` to see the measured numbers.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
from fleetcli import (
    CANCELLED,
    FAILED,
    FINAL,
    HOLDS_SLOT,
    MIGRATING,
    SUCCEEDED,
    beats,
    disk_bytes,
    disk_marker,
    ferry,
    history,
    images,
    ms,
    ok,
    outgoing_jobs,
    placement,
    prepares_of,
    remove_guests,
    running_on,
    show,
    submit,
    wait_final,
    wait_for,
    wait_until,
)

from ferry.lab import Lab
from ferry.lab.topology import IMAGE_DIR

pytestmark = pytest.mark.lab

MiB = 1 << 20
FORWARD = ["pending", "preflight", "preparing", "migrating", "finishing", "succeeded"]


@pytest.fixture
def guests(lab: Lab) -> Iterator[list[str]]:
    """Names of the guests a test boots; removed afterwards wherever they ended up."""
    names: list[str] = []
    yield names
    remove_guests(lab, names)


def boot(lab: Lab, guests: list[str], name: str, **kw: object) -> None:
    guests.append(name)
    lab.guest(name, "host1", **kw)  # type: ignore[arg-type]


def phases(record: dict) -> list[str]:
    """The phases of a record's history, repeats (retries, notes) folded."""
    out: list[str] = []
    for phase, _ in history(record):
        if not out or out[-1] != phase:
            out.append(phase)
    return out


def at(entry: dict) -> datetime:
    return datetime.fromisoformat(entry["at"])


# ---------------------------------------------------------------- a) the whole way, with the disk


def test_live_migration_copies_the_disk_and_the_guest_runs_on_the_target(lab, guests):
    name = "fm-move"
    boot(lab, guests, name, disks=("128M",))
    image = f"{IMAGE_DIR}/{name}-vda.qcow2"
    # heartbeat 5 wrote the disk marker and 1 MiB of random data at 2 MiB (rewritten only at 165)
    lab.wait_for_heartbeat(name, above=6, timeout=60)
    marker_before = disk_marker(lab, "host1", image)
    data_before = disk_bytes(lab, "host1", image, 2 * MiB, 4096)
    assert marker_before >= 5 and data_before != bytes(4096)

    run = ferry(lab, "migrate", name, "--to", "host2", "--copy-storage-all")

    assert run.code == 0, run
    m = run.data
    assert m["phase"] == SUCCEEDED, history(m)
    assert phases(m) == FORWARD, history(m)
    assert (m["source_host"], m["target_host"]) == ("host1", "host2")
    assert m["options"]["storage"] == "copy_all"
    assert m["mapping"]["bridges"] == {"br-guest": "br-vm"}
    assert ms(m, "time_elapsed_ms") > 0 and ms(m, "downtime_ms") > 0 and ms(m, "memory_processed") > 0
    # (disk_processed may be 0: the source's last statistics poll can miss a short disk copy)
    print(
        f"\n[fleet] migrate {name} host1 -> host2 --copy-storage-all: wall {run.seconds:.1f} s (CLI), "
        f"job {ms(m, 'time_elapsed_ms')} ms, downtime {ms(m, 'downtime_ms')} ms, "
        f"memory {ms(m, 'memory_processed') / MiB:.0f} MiB, disk {ms(m, 'disk_processed') / MiB:.0f} MiB"
    )

    # runs on host2 only: not running, not even defined on host1, and host1's now unused copy of
    # the image is gone (it would block a migration back), the history saying so
    assert placement(lab, name) == {"host2": "running"}
    assert images(lab, "host1", name) == []
    assert any("source disks removed on host1" in h["reason"] for h in m["history"]), history(m)
    before, after = beats(lab, name)
    assert after > before
    # the same boot goes on: a guest that panicked and rebooted on the target would also "beat"
    assert lab.console(name).count("GUEST-BOOTED") == 1, "the guest rebooted during the migration"
    # the disk arrived: the marker and the data written on host1 are in host2's image
    assert disk_marker(lab, "host2", image) >= marker_before
    assert disk_bytes(lab, "host2", image, 2 * MiB, 4096) == data_before
    assert prepares_of(lab, "host2", name, m["id"]) == []  # committed: the image is the guest's

    again = show(lab, m["id"])
    assert again["phase"] == SUCCEEDED and phases(again) == FORWARD
    assert again["result"]["downtime_ms"] == m["result"]["downtime_ms"]

    def where() -> list[str]:
        vms = ok(ferry(lab, "vms"))["vms"]
        return [v["host"] for v in vms if v["domain"]["name"] == name]

    assert wait_until(lambda: where() == ["host2"], 10, f"`ferry vms` placing {name} on host2")


# ---------------------------------------------------------------- b) preflight says why not


def test_preflight_names_a_missing_bridge_and_an_unknown_host(lab, guests):
    name, bridge = "fm-pre", "br-fm-only1"  # a bridge host1 has and host2 does not
    lab.host_exec("host1", "ip", "link", "add", bridge, "type", "bridge")
    try:
        lab.host_exec("host1", "ip", "link", "set", bridge, "up")
        boot(lab, guests, name, disks=("32M",), bridge=bridge)

        run = ferry(lab, "preflight", name, "--to", "host2")
        assert run.code == 1, run  # blockers found
        blockers = {b["reason"]: b for b in run.data["blockers"]}
        assert set(blockers) == {"BRIDGE_MISSING"}, run
        assert bridge in blockers["BRIDGE_MISSING"]["message"]
        assert f"--map-bridge {bridge}=br-vm" in blockers["BRIDGE_MISSING"]["hint"]
        assert run.data["ok"] is False and run.data["source_host"] == "host1"

        # the hint is what fixes it
        fixed = ferry(lab, "preflight", name, "--to", "host2", "--map-bridge", f"{bridge}=br-vm")
        assert fixed.code == 0 and fixed.data["ok"] is True, fixed

        unknown = ferry(lab, "preflight", name, "--to", "host9")
        assert unknown.code == 1, unknown
        [blocker] = unknown.data["blockers"]
        assert blocker["reason"] == "TARGET_UNKNOWN" and "host9" in blocker["message"]
        assert "ferry hosts" in blocker["hint"]

        # a migration to an unknown host is refused outright (nothing is recorded)
        refused = ferry(lab, "migrate", name, "--to", "host9")
        assert refused.code == 2, refused
        assert (refused.error["reason"], refused.error["code"]) == ("TARGET_UNKNOWN", "NOT_FOUND")
        assert refused.error["hint"]

        # submitted anyway without the mapping: it fails in Preflight, having touched nothing
        blocked = ferry(lab, "migrate", name, "--to", "host2")
        assert blocked.code == 1, blocked
        assert blocked.data["phase"] == FAILED and blocked.data["error"]["reason"] == "BRIDGE_MISSING"
        assert "preparing" not in phases(blocked.data)
        assert placement(lab, name) == {"host1": "running"}
        assert images(lab, "host2", name) == [] and prepares_of(lab, "host2", name) == []
    finally:
        remove_guests(lab, [name])
        lab.host_exec("host1", "ip", "link", "del", bridge, check=False)


def test_a_host_whose_agent_advertises_another_hosts_libvirt_uri_is_no_target(lab, guests):
    # host2's agent config copied from host1's (advertise_libvirt_uri): a migration "to host2" would
    # go to host1's libvirtd. host2's agent opens that URI, sees host1's host UUID, and says so
    name = "fm-uri"
    boot(lab, guests, name, disks=("16M",), nic=False)
    line = re.compile(r'^advertise_libvirt_uri = "([^"]+)"$', re.M)
    conf = {h: lab.paths.host(h) / "agent.toml" for h in ("host1", "host2")}
    own = conf["host2"].read_text()
    copied = line.search(conf["host1"].read_text())
    assert copied is not None and line.search(own) is not None
    conf["host2"].write_text(line.sub(f'advertise_libvirt_uri = "{copied[1]}"', own))
    try:
        lab.restart("agent host2")

        def refused() -> bool:
            run = ferry(lab, "preflight", name, "--to", "host2")
            return run.code == 1 and [b["reason"] for b in run.data["blockers"]] == ["TARGET_URI_MISMATCH"]

        wait_until(refused, 60, "preflight refusing host2 for its advertised URI", interval=1)
        [blocker] = ferry(lab, "preflight", name, "--to", "host2").data["blockers"]
        print(f"\n[fleet] {blocker['message']}")
        assert "reaches another machine's libvirtd" in blocker["message"] and copied[1] in blocker["message"]
        assert "advertise_libvirt_uri in host2's agent config" in blocker["hint"]
    finally:
        conf["host2"].write_text(own)
        lab.restart("agent host2")
    wait_until(lambda: ferry(lab, "preflight", name, "--to", "host2").code == 0, 60, "host2 a target again", interval=1)


def test_a_shared_disk_the_target_sees_elsewhere_is_refused_until_its_storage_is_mounted(lab, guests):
    """host2's shared storage is not mounted (a tmpfs in its place, in host2's mount namespace) and
    a stand-in image sits at the guest's disk path there, as an operator pre-creates one. By path
    alone the disk is present on shared storage; the source's probe file proves it is another file.
    Nothing moves and no probe is left; once the storage is back, the same migration succeeds."""
    name = "fm-shared"
    boot(lab, guests, name, disks=("32M",), shared=True, nic=False)
    shared = str(lab.paths.shared)
    disk = f"{shared}/{name}-vda.qcow2"
    lab.host_exec("host2", "mount", "-t", "tmpfs", "-o", "size=64m", "ferry-standin", shared)
    try:
        lab.host_exec("host2", "qemu-img", "create", "-q", "-f", "qcow2", disk, "32M")
        # the lab's shared directory is a plain one: libvirt needs the migration marked unsafe
        run = ferry(lab, "preflight", name, "--to", "host2", "--unsafe")
        assert run.code == 1, run
        [blocker] = run.data["blockers"]
        assert blocker["reason"] == "SHARED_STORAGE_MISMATCH", run
        assert f"{disk} on host2 is not the file the guest uses" in blocker["message"]
        assert f"mount the shared storage at {shared} on host2" in blocker["hint"]

        blocked = ferry(lab, "migrate", name, "--to", "host2", "--unsafe")
        assert blocked.code == 1 and blocked.data["error"]["reason"] == "SHARED_STORAGE_MISMATCH", blocked
        assert "preparing" not in phases(blocked.data) and prepares_of(lab, "host2", name) == []
        assert placement(lab, name) == {"host1": "running"}
        for host in ("host1", "host2"):  # no probe on the shared storage, nor in the stand-in
            assert ".ferry-probe-" not in lab.host_exec(host, "ls", "-a", shared).stdout
    finally:
        lab.host_exec("host2", "umount", shared, check=False)

    marker = wait_until(lambda: disk_marker(lab, "host1", disk), 30, "the guest's disk marker")
    moved = ferry(lab, "migrate", name, "--to", "host2", "--unsafe")
    assert moved.code == 0 and moved.data["phase"] == SUCCEEDED, moved
    assert running_on(lab, name) == ["host2"]
    beats(lab, name)  # alive, and still its first boot
    assert disk_marker(lab, "host2", disk) >= marker  # the same disk, still written by the guest
    assert placement(lab, name) == {"host2": "running"} and prepares_of(lab, "host1", name) == []
    assert ".ferry-probe-" not in lab.host_exec("host1", "ls", "-a", shared).stdout


def test_copy_inc_moves_the_top_layer_onto_the_same_base_and_refuses_another(lab, guests):
    """A guest made from a template (vda a qcow2 overlay on it). --copy-storage-inc copies the
    overlay alone, onto the target's template of the same name: first another image there (the
    template rebuilt), which preflight refuses, then a byte-for-byte copy, onto which it moves."""
    name, base = "fm-inc", f"{IMAGE_DIR}/fm-template.qcow2"
    shared = f"{lab.paths.shared}/fm-template.qcow2"
    lab.host_exec("host1", "qemu-img", "create", "-q", "-f", "qcow2", base, "64M")
    lab.host_exec("host1", "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", base)
    lab.host_exec("host1", "cp", base, shared)
    lab.host_exec("host2", "qemu-img", "create", "-q", "-f", "qcow2", base, "64M")  # rebuilt: other bytes
    lab.host_exec("host2", "qemu-io", "-f", "qcow2", "-c", "write -P 0x77 0 8M", base)
    try:
        boot(lab, guests, name, disks=("64M",), backing=base, nic=False)
        image = f"{IMAGE_DIR}/{name}-vda.qcow2"
        assert disk_bytes(lab, "host1", image, 4 * MiB, 4096) == b"\x5a" * 4096  # read through to the template
        blocked = ferry(lab, "preflight", name, "--to", "host2", "--copy-storage-inc")
        assert blocked.code == 1, blocked
        [blocker] = blocked.data["blockers"]
        assert blocker["reason"] == "BACKING_MISMATCH", blocked
        assert f"{base} on host2 is another image than the source's" in blocker["message"]

        lab.host_exec("host2", "cp", shared, base)  # the template, byte for byte
        marker = wait_until(lambda: disk_marker(lab, "host1", image), 30, "the guest's disk marker")
        moved = ferry(lab, "migrate", name, "--to", "host2", "--copy-storage-inc")
        assert moved.code == 0 and moved.data["phase"] == SUCCEEDED, moved
        assert running_on(lab, name) == ["host2"]
        beats(lab, name)  # alive, and still its first boot
        info = lab.host_exec("host2", "qemu-img", "info", "-U", image).stdout
        assert f"backing file: {base}" in info  # the overlay alone moved
        assert disk_marker(lab, "host2", image) >= marker  # what the guest wrote, in the copied overlay
        assert disk_bytes(lab, "host2", image, 4 * MiB, 4096) == b"\x5a" * 4096  # the template's, under it
        assert images(lab, "host1", name) == [] and prepares_of(lab, "host1", name) == []  # nothing left
    finally:
        remove_guests(lab, [name])
        for host in ("host1", "host2"):
            lab.host_exec(host, "rm", "-f", base, check=False)
        lab.host_exec("host1", "rm", "-f", shared, check=False)


# ---------------------------------------------------------------- e) one migration per VM


def test_same_idempotency_key_same_migration_and_a_busy_vm_is_refused(lab, guests):
    name = "fm-busy"
    boot(lab, guests, name, disks=("32M",))
    key = f"fm-busy-{uuid.uuid4().hex[:8]}"
    slow = ("--bandwidth", "8", "--idempotency-key", key)

    first = submit(lab, name, *slow)
    again = ok(ferry(lab, "migrate", name, "--to", "host2", "--no-wait", *slow))
    assert again["id"] == first and again["idempotency_key"] == key

    busy = ferry(lab, "migrate", name, "--to", "host2", "--no-wait")
    assert busy.code == 2, busy
    assert (busy.error["reason"], busy.error["code"]) == ("VM_BUSY", "FAILED_PRECONDITION")
    assert first in busy.error["message"] and f"ferry migrations cancel {first}" in busy.error["hint"]
    listed = ok(ferry(lab, "migrations", "--vm", name))["migrations"]
    assert [m["id"] for m in listed] == [first]

    ok(ferry(lab, "migrations", "cancel", first))
    assert wait_final(lab, first, timeout=90)["phase"] in (CANCELLED, SUCCEEDED)
    assert len(running_on(lab, name)) == 1
    beats(lab, name)  # and the same boot


# ---------------------------------------------------------------- f) one outbound slot


def slot_start(r: dict) -> datetime:
    """When a record took its slot: admitted, or granted after it was admitted ahead of it."""
    h = r["history"]
    if any(x["reason"].startswith("admitted ahead") for x in h):
        return at(next(x for x in h if x["reason"].startswith("slot granted")))
    return at(next(x for x in h if x["phase"] == "preflight"))


def test_one_outbound_slot_moves_three_guests_one_at_a_time(lab, guests):
    names = ["fm-q1", "fm-q2", "fm-q3"]
    guests.extend(names)
    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(lambda n: lab.guest(n, "host1", disks=("32M",)), names))

    started = time.monotonic()
    ids = [submit(lab, n) for n in names]
    jobs_seen: list[list[str]] = []
    done = threading.Event()

    def watch_libvirt() -> None:
        while not done.is_set():
            jobs_seen.append(outgoing_jobs(lab, "host1", names))
            time.sleep(0.3)

    watcher = threading.Thread(target=watch_libvirt, name="libvirt jobs on host1")
    watcher.start()
    busiest: list[str] = []
    slot_holders: set[str] = set()
    try:
        deadline = time.monotonic() + 180
        while True:
            listed = ok(ferry(lab, "migrations"))["migrations"]
            ours = {m["id"]: m for m in listed if m["id"] in ids}
            # one admitted ahead of its slot prepares meanwhile ([limits] prepare_ahead); it holds none
            holding = [i for i, m in ours.items() if m["phase"] in HOLDS_SLOT and not m["ahead_of_slot"]]
            slot_holders.update(holding)
            if len(holding) > len(busiest):
                busiest = [f"{ours[i]['vm']} {ours[i]['phase']}" for i in holding]
            if len(ours) == 3 and all(m["phase"] in FINAL for m in ours.values()):
                break
            assert time.monotonic() < deadline, {m["vm"]: m["phase"] for m in ours.values()}
            time.sleep(0.3)
    finally:
        done.set()
        watcher.join()
    wall = time.monotonic() - started

    assert len(busiest) <= 1, f"more than one migration out of host1 at once: {busiest}"
    assert len(slot_holders) >= 2, "the watch saw fewer than two migrations at work"
    assert max(len(j) for j in jobs_seen) == 1, f"outgoing libvirt jobs on host1: {jobs_seen}"
    records = [show(lab, i) for i in ids]
    assert [r["phase"] for r in records] == [SUCCEEDED] * 3, [history(r) for r in records]
    # the records agree: each held the slot (Preflight, or the grant of one admitted ahead of it,
    # .. final) after the previous let it go; the next ones prepared while the slot was busy
    spans = sorted((slot_start(r), at(r["history"][-1])) for r in records)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, spans
    assert any("waiting for a slot" in h["reason"] for r in records for h in r["history"]), [
        history(r) for r in records
    ]
    for n in names:
        assert placement(lab, n) == {"host2": "running"}
        before, after = beats(lab, n)
        assert after > before
    print(
        f"\n[fleet] three migrations through one outbound slot: {wall:.1f} s in all, each "
        + ", ".join(f"{ms(r, 'time_elapsed_ms')} ms (downtime {ms(r, 'downtime_ms')} ms)" for r in records)
    )


# ---------------------------------------------------------------- g) cancel mid-way


def test_cancel_mid_migration_leaves_the_guest_on_its_host_and_nothing_on_the_target(lab, guests):
    name = "fm-cancel"
    boot(lab, guests, name, disks=("64M",))
    mid = submit(lab, name, "--bandwidth", "8")
    assert wait_for(lab, mid, {MIGRATING}, timeout=60)["phase"] == MIGRATING
    wait_until(lambda: outgoing_jobs(lab, "host1", [name]), 30, "libvirt's job on host1", interval=0.2)

    asked = time.monotonic()
    cancel = ok(ferry(lab, "migrations", "cancel", mid))
    assert cancel["id"] == mid and cancel["cancel_requested"] is True
    final = wait_final(lab, mid, timeout=90)
    took = time.monotonic() - asked

    assert final["phase"] == CANCELLED, history(final)
    assert "rolling_back" in phases(final) and "finishing" not in phases(final)
    assert placement(lab, name) == {"host1": "running"}
    before, after = beats(lab, name)
    assert after > before
    assert outgoing_jobs(lab, "host1", [name]) == []
    assert images(lab, "host2", name) == []
    assert prepares_of(lab, "host2", name, mid) == []
    print(f"\n[fleet] cancel of {name} in Migrating: Cancelled {took:.1f} s after `ferry migrations cancel`")
