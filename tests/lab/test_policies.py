"""Convergence policies, the prediction and live operations on real hosts, through the ``ferry``
CLI as an operator uses them, with a guest that dirties its memory faster than the migration's
bandwidth cap carries it (so pre-copy alone never ends).

The lab's coordinator config holds the policies ``busy`` (post-copy on prediction), ``precopy``
(never post-copy; a max-downtime ladder, force-complete at the timeout), ``strict`` (never
post-copy, 300 ms, refuses what it cannot finish) and ``postcopy-early`` (post-copy after 4 s at
8 MiB/s: a long post-copy for the link drill); see deploy/lab/controlplane.py.

What an operator checks: what preflight predicted, that the guest runs on the target only and
still beats in the same boot (one boot marker: a guest whose memory the migration corrupted
panics and reboots -- and still beats), what the record says the policy and the operator did.
Run with ``-s`` to see the measured times against the prediction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fleetcli import (
    MIGRATING,
    SUCCEEDED,
    beats,
    ferry,
    history,
    ms,
    ok,
    placement,
    remove_guests,
    show,
    submit,
    wait_final,
    wait_for,
    wait_until,
)

from ferry.lab import Lab
from ferry.lab.agents import agent_log_path

pytestmark = pytest.mark.lab

CAP = "32"  # MiB/s: the busy guest dirties 40
# The tests that assert the prediction keep a wide margin: a TCG guest on a loaded machine dirties less
# than it is set to (CI measured 28 MiB/s of the 40, twice, which converges at 32: a right prediction,
# a failed test)
PREFLIGHT_CAP = "16"


@pytest.fixture
def guests(lab: Lab) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    remove_guests(lab, names)


def busy_guest(lab: Lab, guests: list[str], name: str, rate: str = "40") -> None:
    guests.append(name)
    lab.guest(name, "host1", disks=("32M",), dirty_rate=rate)
    lab.wait_for_heartbeat(name, above=3, timeout=60)  # the dirtier is running


def actions(record: dict) -> list[tuple[str, str, str]]:
    return [(a["action"], a.get("by", ""), a["reason"]) for a in record.get("actions", [])]


def source_max_downtime(lab: Lab, name: str) -> int:
    """What libvirt on the source holds, asked by virsh (not by Ferry)."""
    return int(lab.virsh("host1", "migrate-getmaxdowntime", name).stdout.strip())


def job_in_precopy(lab: Lab, migration_id: str) -> dict:
    """Wait until the record shows memory pre-copy (past the disk mirror)."""

    def precopy() -> bool:
        return (show(lab, migration_id)["progress"] or {}).get("phase") == "precopy"

    wait_until(precopy, 60, f"{migration_id} in pre-copy", interval=0.3)
    return show(lab, migration_id)


# ---------------------------------------------------------------- preflight predicts


def test_preflight_on_a_busy_guest_says_it_will_not_converge_and_what_the_policy_does(lab, guests):
    name = "pol-pre"
    busy_guest(lab, guests, name)
    run = ferry(lab, "preflight", name, "--to", "host2", "--policy", "busy", "--bandwidth", PREFLIGHT_CAP)
    out = ok(run)
    p = out["prediction"]
    print(f"\n[policies] preflight {name}: {p['words']} (dirty {float(p['dirty_bps']) / (1 << 20):.0f} MiB/s)")
    assert out["ok"] and out["policy"]["name"] == "busy"
    assert p["known"] and not p.get("converges") and p["finishes"] and p["need"] == "post-copy"
    assert f"will not converge at {PREFLIGHT_CAP} MiB/s" in p["words"]
    assert "policy busy switches to post-copy after iteration 1" in p["words"]
    # the same guest under the policy that refuses what it cannot finish: blocked, saying why
    strict = ferry(lab, "preflight", name, "--to", "host2", "--policy", "strict", "--bandwidth", PREFLIGHT_CAP)
    assert strict.code == 1, strict
    [blocker] = strict.data["blockers"]
    assert blocker["reason"] == "WILL_NOT_CONVERGE" and "will not converge" in blocker["message"]
    refused = ferry(lab, "migrate", name, "--to", "host2", "--policy", "strict", "--bandwidth", PREFLIGHT_CAP)
    assert refused.code == 2 and refused.error["reason"] == "WILL_NOT_CONVERGE"
    assert placement(lab, name) == {"host1": "running"}  # nothing was touched


# ---------------------------------------------------------------- a post-copy policy finishes it


def test_a_busy_guest_finishes_under_the_postcopy_policy_in_the_same_boot(lab, guests):
    name = "pol-busy"
    busy_guest(lab, guests, name)
    run = ferry(lab, "migrate", name, "--to", "host2", "--policy", "busy", "--bandwidth", PREFLIGHT_CAP, timeout=300)
    m = ok(run)
    assert m["phase"] == SUCCEEDED, history(m)
    assert m["policy"]["name"] == "busy"
    p = m["prediction"]
    assert p["known"] and not p.get("converges") and p["need"] == "post-copy"
    done = actions(m)
    assert [a for a, by, _ in done if by == "policy busy"][-1] == "start-postcopy", done
    assert m["result"]["postcopy"] and m["result"].get("downtime_not_measured")
    job_s = ms(m, "time_elapsed_ms") / 1000
    bound_s = 256 / int(PREFLIGHT_CAP)  # RAM / bandwidth
    print(
        f"\n[policies] busy guest under policy busy: job {job_s:.1f} s (RAM/bandwidth {bound_s:.0f} s, "
        f"predicted {float(p['seconds']):.1f} s), CLI {run.seconds:.1f} s; actions: "
        + "; ".join(f"{a}: {r}" for a, _, r in done)
    )
    assert placement(lab, name) == {"host2": "running"}
    beats(lab, name)  # still beating, in the same boot


# ---------------------------------------------------------------- an operator tunes, then forces


def test_tune_reaches_libvirt_and_force_complete_ends_a_migration_that_does_not_converge(lab, guests):
    name = "pol-force"
    busy_guest(lab, guests, name)
    mid = submit(lab, name, "--policy", "precopy", "--bandwidth", CAP)
    assert wait_for(lab, mid, {MIGRATING}, timeout=60)["phase"] == MIGRATING
    job_in_precopy(lab, mid)

    tuned = ok(ferry(lab, "migrations", "tune", mid, "--max-downtime", "800"))
    assert tuned["max_downtime_ms"] == 800  # Ferry's reading of libvirt ...
    assert source_max_downtime(lab, name) == 800  # ... and virsh's
    assert "tune by " in tuned["migration"]["history"][-1]["reason"]

    refused = ferry(lab, "migrations", "postcopy", mid)
    assert refused.code == 2 and refused.error["reason"] == "POSTCOPY_NOT_ALLOWED"

    time.sleep(3)  # still not converging: 40 MiB/s dirtied, 32 MiB/s sent
    assert show(lab, mid)["phase"] == MIGRATING
    forced = ok(ferry(lab, "migrations", "force-complete", mid))
    assert "force-complete requested" in forced["done"]
    final = wait_final(lab, mid, timeout=120)
    assert final["phase"] == SUCCEEDED, history(final)
    done = actions(final)
    assert ("pause-guest", "policy precopy") in [(a, by) for a, by, _ in done], done
    assert any(a == "force-complete" and "force-complete by" in r for a, _, r in done), done
    # the ladder never went below the operator's 800 ms
    ladder = [r for a, by, r in done if a == "set-max-downtime" and by == "policy precopy"]
    print(
        f"\n[policies] force-complete of {name}: job {ms(final, 'time_elapsed_ms')} ms, downtime "
        f"{ms(final, 'downtime_ms')} ms; ladder steps {ladder}"
    )
    assert placement(lab, name) == {"host2": "running"}  # arrived paused, resumed there
    beats(lab, name)


# ---------------------------------------------------------------- the post-copy link breaks


def break_migration_link(lab: Lab, seconds: float) -> None:
    """The migration link between host1 and host2 goes away for ``seconds``: host2's interface
    down, and the QEMU migration connections reset on both ends (a switch rebooting drops the
    link; the connection dies with it: without the reset TCP would just retransmit)."""
    lab.host_exec("host2", "ip", "link", "set", "eth0", "down")
    try:
        lab.host_exec("host1", "ss", "-tnK", "dport", ">=", "49152", "and", "dport", "<=", "49215", check=False)
        lab.host_exec("host2", "ss", "-tnK", "sport", ">=", "49152", "and", "sport", "<=", "49215", check=False)
        time.sleep(seconds)
    finally:
        lab.host_exec("host2", "ip", "link", "set", "eth0", "up")


def test_a_postcopy_whose_link_breaks_for_ten_seconds_resumes_and_the_guest_keeps_its_boot(lab, guests):
    name = "pol-link"
    busy_guest(lab, guests, name, rate="16")
    mid = submit(lab, name, "--policy", "postcopy-early", "--bandwidth", CAP)

    def in_postcopy() -> bool:
        return (show(lab, mid)["progress"] or {}).get("phase") == "postcopy"

    wait_until(in_postcopy, 90, f"{mid} in post-copy", interval=0.2)
    time.sleep(1)
    # the target's inventory answers during post-copy (it waited 30 s for the incoming job's lock,
    # and the host looked down): the VM shows on both hosts, host2 up
    listed = ferry(lab, "vms", timeout=20)
    assert listed.code == 0 and listed.seconds < 5, listed
    on = {vm["host"] for vm in listed.data["vms"] if vm["domain"]["name"] == name}
    assert on == {"host1", "host2"}, listed.data
    hosts = {h["name"]: h for h in ferry(lab, "hosts").data["hosts"]}
    assert hosts["host2"]["available"], hosts["host2"]["why_down"]
    broke = time.monotonic()
    break_migration_link(lab, 10)
    assert lab.virsh("host1", "domstate", "--reason", name).stdout.strip() == "paused (post-copy failed)"
    final = wait_final(lab, mid, timeout=180)
    took = time.monotonic() - broke
    assert final["phase"] == SUCCEEDED, history(final)
    done = [a for a, _, _ in actions(final)]
    assert done[:1] == ["start-postcopy"] and "postcopy-paused" in done and "postcopy-resume" in done, done
    print(f"\n[policies] post-copy link down 10 s: Succeeded {took:.0f} s after the break; actions {done}")
    # (a CI run once saw host1 keep the guest defined, shut off, here: the agent's account of it)
    said = [
        line
        for line in agent_log_path(lab.paths, "host1").read_text().splitlines()
        if name in line and any(w in line for w in ("migrated", "source still holds", "left the definition", "left on"))
    ]
    assert placement(lab, name) == {"host2": "running"}, said
    beats(lab, name)  # the same boot: not a byte of its memory lost
