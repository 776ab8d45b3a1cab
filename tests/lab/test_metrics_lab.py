"""The metrics endpoints of a running lab, scraped with curl as an operator would, around one real
migration driven through the ``ferry`` CLI.

``ferry-lab status`` names every agent's and coordinator's endpoint: a unix socket reachable from
the root namespace (``curl --unix-socket``), and the TCP address the daemon listens on inside its
own namespace (as a real fleet's Prometheus would scrape it: HTTPS, a reader's client certificate;
another host's agent certificate is refused). Each answers with ``ferry_`` metrics;
during the migration the source agent shows the job and its libvirt statistics, afterwards the
counters of the leader, the source and the target moved by exactly this migration. Run with ``-s``
to see what was scraped.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest
from fleetcli import SUCCEEDED, beats, history, placement, remove_guests, submit, wait_final
from prometheus_client.parser import text_string_to_metric_families

from ferry.lab import Lab, pki
from ferry.lab.state import CORE

pytestmark = pytest.mark.lab

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def curl_argv(url: str, *, unix_socket: str = "", lab: Lab | None = None, cert: str = "") -> list[str]:
    """``curl -fsS`` (with the lab CA and the client certificate ``<lab>/pki/<cert>.pem`` when ``cert``)."""
    argv = ["curl", "-fsS", "--max-time", "5"]
    if unix_socket:
        argv += ["--unix-socket", unix_socket]
    if cert:
        assert lab is not None
        tls = pki.tls(lab.paths, cert)
        argv += ["--cacert", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)]
    return [*argv, url]


def curl(url: str, *, unix_socket: str = "", lab: Lab | None = None, host: str = "", cert: str = "") -> str:
    """What ``curl_argv`` fetches (from the root namespace, or inside ``host``'s namespaces)."""
    argv = curl_argv(url, unix_socket=unix_socket, lab=lab, cert=cert)
    if lab is not None and host:
        return lab.host_exec(host, *argv, timeout=10).stdout
    return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def endpoints(lab: Lab) -> dict[str, dict[str, str]]:
    """Component -> its endpoints, as ``ferry-lab status`` reports them."""
    status = lab.status()
    out = {h["name"]: h["agent"]["endpoints"] for h in status["hosts"] if h["agent"]}
    out.update({c["id"]: c["endpoints"] for c in status["components"] if c["kind"] == "coordinator"})
    return out


def scrape(lab: Lab, component: str) -> Samples:
    socket = endpoints(lab)[component]["metrics"].removeprefix("unix:")
    return parse(curl("http://localhost/metrics", unix_socket=socket))


def scrape_all(lab: Lab) -> dict[str, Samples]:
    return {name: scrape(lab, name) for name in endpoints(lab)}


@pytest.fixture
def guest(lab: Lab) -> Iterator[str]:
    name = "mx-1"
    lab.guest(name, "host1", disks=["128M"], dirty_rate="8", dirty_mb=32)
    yield name
    remove_guests(lab, [name])


def test_every_endpoint_is_listed_and_answers(lab: Lab) -> None:
    found = endpoints(lab)
    assert {"host1", "host2", "c1", "c2"} <= set(found)
    text = lab_status_text(lab)
    for name in ("host1", "host2", "c1", "c2"):
        socket = found[name]["metrics"].removeprefix("unix:")
        assert f"curl --unix-socket {socket}" in text  # `ferry-lab status` tells the operator how
        samples = parse(curl("http://localhost/metrics", unix_socket=socket))
        component = "agent" if name.startswith("host") else "coordinator"
        assert value(samples, "ferry_build_info", component=component) == 1, name
        uses = {dict(ls)["use"] for n, ls in samples if n == "ferry_tls_certificate_expiry_timestamp_seconds"}
        expected = {"migration", "migration: ca"} if component == "agent" else set()  # QEMU's, on the hosts
        # its [tls] (with the places that use it too, e.g. "agents.tls, tls"), and etcd's own CA's
        assert any("tls" in u.split(", ") for u in uses) and expected <= uses, (name, uses)
        assert {"etcd.tls", "registry.tls"} & uses, (name, uses)
    # the TCP listener on a host's address, scraped from the core namespace as a fleet's Prometheus
    # does from its own machine (the hosts' firewall lets only the core in): HTTPS, a reader's certificate
    url = f"https://{found['host1']['metrics_tcp']}/metrics"
    inside = parse(curl(url, lab=lab, host=CORE, cert="reader.lab"))
    assert value(inside, "ferry_build_info", component="agent") == 1
    refused = {
        what: lab.host_exec(CORE, *curl_argv(u, lab=lab, cert=c), timeout=10, check=False)
        for what, u, c in (
            ("another host's agent", url, "agent.host2"),
            ("no certificate", url, ""),
            ("plain HTTP", url.replace("https:", "http:"), ""),
        )
    }
    assert all(r.returncode != 0 and "ferry_" not in r.stdout for r in refused.values()), refused
    assert "403" in refused["another host's agent"].stderr, refused
    # exactly one replica leads
    leaders = [name for name in ("c1", "c2") if value(scrape(lab, name), "ferry_coordinator_leader") == 1]
    assert len(leaders) == 1


def lab_status_text(lab: Lab) -> str:
    from ferry.lab.status import render_text

    return render_text(lab.status())


def test_metrics_move_during_a_migration(lab: Lab, guest: str) -> None:
    lab.wait_for_heartbeat(guest, above=2, timeout=60)
    before = scrape_all(lab)
    migration_id = submit(lab, guest, "--copy-storage-all", "--bandwidth", "40")
    during: list[Samples] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        during.append(scrape(lab, "host1"))
        if value(during[-1], "ferry_agent_migration_jobs_total", outcome="completed") > value(
            before["host1"], "ferry_agent_migration_jobs_total", outcome="completed"
        ):
            break
        time.sleep(0.3)
    record = wait_final(lab, migration_id, 120)
    assert record["phase"] == SUCCEEDED, history(record)
    assert placement(lab, guest) == {"host2": "running"}
    first, last = beats(lab, guest)
    assert last > first

    # while it ran, the source agent showed the job and libvirt's figures for it
    job = {"migration_id": migration_id, "domain": guest}
    running = [s for s in during if value(s, "ferry_agent_migrations_running") >= 1]
    assert running, f"no scrape of host1 saw the job running ({len(during)} scrapes)"
    remaining = [value(s, "ferry_agent_migration_remaining_bytes", **job) for s in running]
    assert max(remaining) > 0
    iterations = [value(s, "ferry_agent_migration_iteration", **job) for s in running]
    dirty = [value(s, "ferry_agent_migration_dirty_rate_bytes_per_second", **job) for s in running]
    print(
        f"\n[metrics] {len(running)} scrapes of host1 saw the job: remaining "
        f"{[int(r) >> 20 for r in remaining]} MiB, iteration {iterations}, dirty rate "
        f"{[int(d) >> 20 for d in dirty]} MiB/s"
    )

    after = scrape_all(lab)

    def moved(component: str, name: str, **labels: str) -> float:
        return value(after[component], name, **labels) - value(before[component], name, **labels)

    assert moved("host1", "ferry_agent_migration_jobs_total", outcome="completed") == 1
    assert value(after["host1"], "ferry_agent_migrations_running") == 0
    assert moved("host1", "ferry_rpc_server_handled_total", method="Migrate", code="OK") == 1
    assert moved("host2", "ferry_rpc_server_handled_total", method="PrepareIncoming", code="OK") >= 1
    assert moved("host2", "ferry_rpc_server_handled_total", method="CommitIncoming", code="OK") == 1
    assert value(after["host2"], "ferry_agent_prepares_held") == 0
    # the leader's counters (summed over the replicas: each transition is counted where it was written)
    coordinators = ("c1", "c2")
    assert sum(moved(c, "ferry_migrations_started_total") for c in coordinators) == 1
    assert sum(moved(c, "ferry_migrations_finished_total", outcome="succeeded") for c in coordinators) == 1
    assert sum(moved(c, "ferry_migration_downtime_seconds_count") for c in coordinators) == 1
    assert sum(moved(c, "ferry_migration_transferred_bytes_sum", kind="memory") for c in coordinators) > 0
    assert sum(moved(c, "ferry_etcd_request_duration_seconds_count", operation="update") for c in coordinators) > 0
    assert sum(moved(c, "ferry_rpc_server_handled_total", method="SubmitMigration", code="OK") for c in coordinators)
