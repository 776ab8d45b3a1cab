"""The lab's control plane: etcd and coordinators in the core namespace, agents registered in
etcd, the ``ferry`` CLI working right after ``ferry-lab up``, and the drills (kill, restart)
the HA tests use.

The first part needs no lab (config files, names, the CLI config rules). The tests marked
``lab`` run the real thing: libvirtd hosts, etcd, two coordinator replicas.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from ferry.agent.config import parse_config as parse_agent_config
from ferry.cli.config import coordinator_address
from ferry.cli.main import run as ferry
from ferry.coordinator.config import derive_mapping
from ferry.coordinator.config import parse_config as parse_coordinator_config
from ferry.errors import FailedPrecondition, NotFound
from ferry.lab import ControlPlane, Lab, cliconfig, drills, procs
from ferry.lab.agents import health_serving, render_agent_config
from ferry.lab.controlplane import (
    Registry,
    endpoint_health,
    leader_of,
    plan_control_plane,
    render_cli_toml,
    render_coordinator_toml,
)
from ferry.lab.procs import ProcessRecord
from ferry.lab.state import CORE, Component, LabState
from ferry.lab.status import render_text
from ferry.lab.topology import LabPaths, plan_hosts

LAB = Path("/tmp/l")

# ---------------------------------------------------------------- pure rules (no lab)


def test_etcd_members_and_coordinators_get_distinct_ports_on_the_core_address():
    plan = plan_control_plane(LabPaths(LAB), ControlPlane(etcd_members=3, coordinators=2))
    assert [(m.name, m.client_url, m.peer_url) for m in plan.etcd] == [
        ("s1", "http://10.77.0.1:2379", "http://127.0.0.1:2380"),  # raft on the core's loopback: no host
        ("s2", "http://10.77.0.1:2381", "http://127.0.0.1:2382"),  # reaches it (it is plain HTTP)
        ("s3", "http://10.77.0.1:2383", "http://127.0.0.1:2384"),
    ]
    assert plan.etcd[0].data_dir == LAB / "etcd/s1.data"
    assert [(c.id, c.listen, c.address) for c in plan.coordinators] == [
        ("c1", "10.77.0.1:7100", "unix:/tmp/l/coordinators/c1.sock"),
        ("c2", "10.77.0.1:7101", "unix:/tmp/l/coordinators/c2.sock"),
    ]
    assert plan.coordinators[1].config == LAB / "coordinators/c2/coordinator.toml"


@pytest.mark.parametrize(
    "shape",
    [ControlPlane(etcd_members=2), ControlPlane(coordinators=0), ControlPlane(coordinators=4), ControlPlane(cluster=0)],
)
def test_shapes_the_lab_refuses(shape):
    assert shape.problem()
    with pytest.raises(ValueError):
        plan_control_plane(LabPaths(LAB), shape)


def test_coordinator_config_is_what_ferry_coordinator_reads():
    paths = LabPaths(LAB)
    hosts = plan_hosts(paths, 2)
    plan = plan_control_plane(paths, ControlPlane(coordinators=2))
    config = parse_coordinator_config(render_coordinator_toml(plan, plan.coordinators[1], hosts, LAB / "pki"))
    assert config.id == "c2"
    # its own identity for the API and the agents; for etcd a certificate of etcd's own CA
    assert config.tls is not None and config.tls.cert == LAB / "pki/coordinator.c2.pem"
    assert config.agents.tls == config.tls
    assert config.etcd.tls is not None and config.etcd.tls.ca == LAB / "pki/etcd/ca.pem"
    assert config.etcd.tls.cert == LAB / "pki/etcd/coordinator.c2.pem" and config.tls.ca == LAB / "pki/ca.pem"
    assert config.listen == ("10.77.0.1:7101", "unix:/tmp/l/coordinators/c2.sock")
    assert config.metrics_listen == ("10.77.0.1:9472", "unix:/tmp/l/coordinators/c2.metrics.sock")
    assert config.etcd.endpoints == ("10.77.0.1:2379",) and config.etcd.prefix == "/ferry/"
    # the members' certificate is checked for its DNS name: a client of several endpoints needs one
    assert config.etcd.server_name == "etcd"
    limits = config.limits
    assert (limits.per_host_outbound, limits.per_host_inbound, limits.cluster) == (1, 2, 4)
    # br-guest on host1, br-vm on host2: the mapping is derived, no --map-bridge needed
    mapping = derive_mapping(config.hosts["host1"], config.hosts["host2"])
    assert mapping.bridges == {"br-guest": "br-vm"}
    assert mapping.path_prefixes == {}  # same image dir on every lab host


def test_agents_register_with_their_lab_network_address():
    paths = LabPaths(LAB)
    host2 = plan_hosts(paths, 2)[1]
    text = render_agent_config(paths, host2, Registry(("10.77.0.1:2379", "10.77.0.1:2381"), server_name="etcd"))
    registry = parse_agent_config(text).registry
    assert registry is not None
    assert registry.etcd_endpoints == ("10.77.0.1:2379", "10.77.0.1:2381") and registry.server_name == "etcd"
    # a TLS lab: a certificate of etcd's own CA (CN agent.host2, etcd's user), not the API's
    secured = Registry(("10.77.0.1:2379",), server_name="etcd", etcd_pki=LAB / "pki/etcd")
    registry = parse_agent_config(render_agent_config(paths, host2, secured)).registry
    assert registry is not None and registry.tls is not None and registry.server_name == "etcd"
    assert (registry.tls.ca, registry.tls.cert) == (LAB / "pki/etcd/ca.pem", LAB / "pki/etcd/agent.host2.pem")
    assert (registry.address, registry.prefix, registry.ttl_s) == ("10.77.0.12:7070", "/ferry/", 10)
    assert parse_agent_config(render_agent_config(paths, host2, None)).registry is None


def test_cli_config_names_the_first_replica_and_all_of_them():
    plan = plan_control_plane(LabPaths(LAB), ControlPlane(coordinators=2))
    text = render_cli_toml(LAB, plan.coordinators, LAB / "pki")
    doc = tomllib.loads(text)
    assert (doc["ca"], doc["cert"]) == ("/tmp/l/pki/ca.pem", "/tmp/l/pki/operator.lab.pem")  # ferry://operator/lab
    assert doc["coordinators"] == ["unix:/tmp/l/coordinators/c1.sock", "unix:/tmp/l/coordinators/c2.sock"]
    assert doc["coordinator"] == "unix:/tmp/l/coordinators/c1.sock"


def test_cli_config_the_cli_reads(tmp_path):
    plan = plan_control_plane(LabPaths(tmp_path), ControlPlane())
    outcome = cliconfig.install(
        tmp_path, render_cli_toml(tmp_path, plan.coordinators), tmp_path / "xdg" / "ferry" / "cli.toml"
    )
    assert outcome.written
    for config in (outcome.lab_config, outcome.user_config):
        assert coordinator_address(None, {"FERRY_CONFIG": str(config)}) == f"unix:{tmp_path}/coordinators/c1.sock"
    assert (
        coordinator_address(None, {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}) == f"unix:{tmp_path}/coordinators/c1.sock"
    )


def test_someone_elses_cli_config_is_kept_on_up_and_down(tmp_path):
    lab_dir = tmp_path / "lab"
    user = tmp_path / "home" / "cli.toml"
    user.parent.mkdir()
    foreign = 'coordinator = "10.20.30.40:7100"\n'
    user.write_text(foreign)
    plan = plan_control_plane(LabPaths(lab_dir), ControlPlane())
    outcome = cliconfig.install(lab_dir, render_cli_toml(lab_dir, plan.coordinators), user)
    assert not outcome.written and user.read_text() == foreign
    assert f"FERRY_CONFIG={lab_dir}/cli.toml" in outcome.advice()
    cliconfig.remove(lab_dir, user)
    assert user.read_text() == foreign and not (lab_dir / "cli.toml").exists()


def test_a_cli_config_of_this_lab_is_replaced_and_removed(tmp_path):
    lab_dir, user = tmp_path / "lab", tmp_path / "cli.toml"
    old = plan_control_plane(LabPaths(lab_dir), ControlPlane(coordinators=2))
    user.write_text(render_cli_toml(lab_dir, old.coordinators[1:]))  # an earlier run of it
    new = plan_control_plane(LabPaths(lab_dir), ControlPlane())
    assert cliconfig.install(lab_dir, render_cli_toml(lab_dir, new.coordinators), user).written
    other_lab = tmp_path / "other"
    cliconfig.remove(other_lab, user)  # another lab's down leaves it alone
    assert user.exists()
    cliconfig.remove(lab_dir, user)
    assert not user.exists()


def _state() -> LabState:
    def comp(name: str, kind: str, place: str = CORE) -> Component:
        return Component(name, kind, place, ProcessRecord(1, 1, ("x",)))

    return LabState(
        "/tmp/l",
        "now",
        "10.77.0.1",
        components=(
            comp(CORE, "holder"),
            comp("host1", "holder", "host1"),
            comp("host1/libvirtd", "libvirtd", "host1"),
            comp("host1/agent", "agent", "host1"),
            comp("etcd/s1", "etcd"),
            comp("coordinator/c1", "coordinator"),
            comp("coordinator/c2", "coordinator"),
        ),
    )


@pytest.mark.parametrize(
    "words, name",
    [
        (["coordinator", "c1"], "coordinator/c1"),
        (["coordinator c2"], "coordinator/c2"),
        (["c2"], "coordinator/c2"),
        (["coordinator/c1"], "coordinator/c1"),
        (["etcd", "s1"], "etcd/s1"),
        (["s1"], "etcd/s1"),
        (["agent", "host1"], "host1/agent"),
        (["host1/agent"], "host1/agent"),
        (["libvirtd", "host1"], "host1/libvirtd"),
    ],
)
def test_components_are_named_as_an_operator_says_them(words, name):
    assert drills.resolve(_state(), words).name == name


@pytest.mark.parametrize("words", [["coordinator"], ["c3"], ["agent", "host2"], []])
def test_unknown_or_ambiguous_names_list_the_known_ones(words):
    with pytest.raises(NotFound) as err:
        drills.resolve(_state(), words)
    assert "coordinator c1" in err.value.hint and "agent host1" in err.value.hint


def test_holders_are_not_drill_targets():
    for words in (["host1"], [CORE]):
        with pytest.raises(FailedPrecondition):
            drills.resolve(_state(), words)


def test_what_etcdctl_says():
    assert leader_of('{"address": "10.77.0.1:7101", "id": "c2"}') == "c2"
    assert leader_of("") is None and leader_of("garbage") is None
    out = (
        '[{"endpoint":"http://10.77.0.1:2379","health":true,"took":"2ms"},'
        '{"endpoint":"http://10.77.0.1:2381","health":false,"error":"context deadline"}]'
    )
    assert endpoint_health(out) == {"http://10.77.0.1:2379": True, "http://10.77.0.1:2381": False}
    assert endpoint_health("Error: unhealthy cluster") == {}


def test_status_text_marks_the_leader_and_a_paused_member():
    def entry(label: str, kind: str, state: str, **extra: object) -> dict[str, object]:
        return {
            "name": label.replace(" ", "/"),
            "label": label,
            "kind": kind,
            "place": CORE,
            "pid": 7,
            "alive": True,
            "state": state,
            "error": "",
            "log": "",
            "endpoints": {"client": "http://10.77.0.1:2379"}
            if kind == "etcd"
            else {"grpc": "10.77.0.1:7100", "unix": "unix:/l/coordinators/c1.sock"},
            **extra,
        }

    status = {
        "lab_dir": "/l",
        "up": True,
        "created": "now",
        "core": {"address": "10.77.0.1/24", "bridge": "br0", "holder": None},
        "hosts": [],
        "control_plane": {"leader": "c2", "leader_error": "", "cli_config": "/l/cli.toml", "user_cli_config": ""},
        "components": [
            entry("etcd s1", "etcd", "paused", healthy=None),
            entry("coordinator c1", "coordinator", "running", serving=True, leader=False),
            entry("coordinator c2", "coordinator", "running", serving=True, leader=True),
        ],
    }
    lines = render_text(status).splitlines()
    assert "control   leader c2" in lines
    assert any("coordinator c2" in x and "serving, LEADER" in x for x in lines)
    assert not any("coordinator c1" in x and "LEADER" in x for x in lines)
    assert any("etcd s1" in x and "PAUSED" in x for x in lines)
    assert any("FERRY_CONFIG=/l/cli.toml" in x for x in lines)


# ---------------------------------------------------------------- the real lab


async def _ferry_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()
    code = await ferry(["--output", "json", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


@pytest.mark.lab
def test_control_plane_is_up_with_one_leader(fleet_lab: Lab, cli_config_home: Path):
    status = fleet_lab.status()
    json.dumps(status)  # what `ferry-lab status --output json` prints
    plane = {e["label"]: e for e in status["components"] if e["kind"] in ("etcd", "coordinator")}
    assert set(plane) == {"etcd s1", "coordinator c1", "coordinator c2"}
    assert plane["etcd s1"]["healthy"] and plane["etcd s1"]["pid"]
    assert plane["etcd s1"]["endpoints"]["client"] == "https://10.77.0.1:2379"  # TLS with client certificates
    for cid in ("c1", "c2"):
        coordinator = plane[f"coordinator {cid}"]
        assert coordinator["state"] == "running" and coordinator["serving"], coordinator
        assert coordinator["endpoints"]["unix"] == f"unix:{fleet_lab.dir}/coordinators/{cid}.sock"
    leaders = [e["id"] for e in plane.values() if e.get("leader")]
    assert leaders == [status["leader"]] == [fleet_lab.leader()]
    # the operator's CLI config (a temporary $XDG_CONFIG_HOME here) points into this lab
    user_config = cli_config_home / "ferry" / "cli.toml"
    assert status["control_plane"]["user_cli_config"] == str(user_config)
    assert (
        coordinator_address(None, {"XDG_CONFIG_HOME": str(cli_config_home)})
        == f"unix:{fleet_lab.dir}/coordinators/c1.sock"
    )


@pytest.mark.lab
async def test_the_cli_lists_the_hosts_and_a_guest(fleet_lab: Lab, monkeypatch, capsys):
    monkeypatch.setenv("FERRY_CONFIG", str(fleet_lab.dir / "cli.toml"))
    hosts = (await _ferry_json(capsys, "hosts"))["hosts"]
    assert {h["name"]: h["available"] for h in hosts} == {"host1": True, "host2": True}
    by_name = {h["name"]: h for h in hosts}
    assert by_name["host2"]["address"] == "10.77.0.12:7070"  # over the lab network
    fleet_lab.guest("fleetvm", host="host2")
    deadline = time.monotonic() + 15  # the coordinators cache inventories for 5 s
    while True:
        vms = (await _ferry_json(capsys, "vms")).get("vms", [])
        found = [v for v in vms if v["domain"]["name"] == "fleetvm"]
        if found or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    assert [v["host"] for v in found] == ["host2"]


@pytest.mark.lab
async def test_the_other_coordinator_takes_over_when_the_leader_is_killed(fleet_lab: Lab, capsys):
    leader = fleet_lab.leader()
    assert leader in ("c1", "c2")
    other = "c2" if leader == "c1" else "c1"
    try:
        assert "exited" in fleet_lab.kill(f"coordinator {leader}")
        killed_at = time.monotonic()
        assert fleet_lab.wait_for_leader(other_than=leader, timeout=20) == other
        took = time.monotonic() - killed_at
        assert took < 15, f"takeover took {took:.1f} s"
        status = fleet_lab.status()
        entries = {e["id"]: e for e in status["components"] if e["kind"] == "coordinator"}
        assert entries[leader]["state"] == "dead" and entries[other]["leader"]
        # the survivor serves the whole API
        hosts = (await _ferry_json(capsys, "--coordinator", entries[other]["endpoints"]["unix"], "hosts"))["hosts"]
        assert {h["name"] for h in hosts} == {"host1", "host2"}
    finally:
        fleet_lab.restart(f"coordinator {leader}")
    assert health_serving(f"unix:{fleet_lab.dir}/coordinators/{leader}.sock")
    assert fleet_lab.leader() == other  # the restarted replica follows


def _ferry_lab(lab_dir: Path, cache: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "ferry.lab.main", "--lab-dir", str(lab_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FERRY_LAB_CACHE_DIR": str(cache), **env},
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.lab
def test_up_and_down_through_the_command_keep_a_foreign_cli_config(tmp_path, lab_cache):
    """Two coordinators on one host, as an operator whose own CLI config points elsewhere:
    it is kept (the lab says how to use its own), and down leaves no recorded process."""
    lab_dir, home = tmp_path / "lab", tmp_path / "xdg"
    (home / "ferry").mkdir(parents=True)
    foreign = 'coordinator = "10.20.30.40:7100"\n'
    (home / "ferry" / "cli.toml").write_text(foreign)
    env = {"XDG_CONFIG_HOME": str(home)}
    up = _ferry_lab(lab_dir, lab_cache, env, "up", "--hosts", "1", "--coordinators", "2", "--no-install")
    try:
        assert f"FERRY_CONFIG={lab_dir}/cli.toml" in up.stdout
        assert (home / "ferry" / "cli.toml").read_text() == foreign
        status = json.loads(_ferry_lab(lab_dir, lab_cache, env, "status", "--output", "json").stdout)
        assert status["leader"] in ("c1", "c2")
        state = Lab(lab_dir).state()
        assert state is not None
        records = [c.process for c in state.components if c.process is not None]
        assert {c.kind for c in state.components} >= {"etcd", "coordinator", "agent"}
        assert all(procs.is_alive(r) for r in records)
    finally:
        _ferry_lab(lab_dir, lab_cache, env, "down")
    assert not any(procs.is_alive(r) for r in records)
    assert procs.pids_in_namespaces(state.all_namespaces()) == {}
    assert (home / "ferry" / "cli.toml").read_text() == foreign
    assert not (lab_dir / "cli.toml").exists()
