"""The lab itself: what an operator checks after ``ferry-lab up``, ``guest`` and ``down``.

The first part needs no lab (the lab's pure rules: addresses, config files, domain XML,
initramfs, stop order). The tests marked ``lab`` run real libvirtd/QEMU hosts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ferry.agent.config import parse_config as parse_agent_config
from ferry.errors import AlreadyExists
from ferry.lab import Lab, procs
from ferry.lab.domain import DiskSpec, GuestSpec, domain_xml, last_heartbeat, parse_size
from ferry.lab.image import CpioEntry, cpio_newc
from ferry.lab.procs import ProcessRecord
from ferry.lab.state import CORE, Component, LabState, stop_rank
from ferry.lab.status import render_text
from ferry.lab.topology import LabPaths, lab_dir_problem, plan_hosts, render_agent_toml

# ---------------------------------------------------------------- pure rules (no lab)


def test_hosts_get_addresses_bridges_and_distinct_uuids():
    plans = plan_hosts(LabPaths(Path("/tmp/l")), 3)
    assert [(p.name, p.address, p.guest_bridge) for p in plans] == [
        ("host1", "10.77.0.11", "br-guest"),
        ("host2", "10.77.0.12", "br-vm"),
        ("host3", "10.77.0.13", "br-guest"),
    ]
    assert len({p.host_uuid for p in plans}) == 3
    assert plans[0].libvirt_uri == "qemu:///system?socket=/tmp/l/hosts/host1/run/libvirt-sock"
    assert plans[1].tcp_uri == "qemu+tls://10.77.0.12/system?pkipath=/etc/libvirt/pki"  # peers: TLS only
    assert plans[0].agent_address == "unix:/tmp/l/hosts/host1/agent.sock"


def test_agent_config_is_the_agreed_format():
    paths = LabPaths(Path("/tmp/l"))
    plan = plan_hosts(paths, 1)[0]
    doc = tomllib.loads(render_agent_toml(paths, plan))
    agent = doc["agent"]
    assert doc["tls"] == {
        "ca": "/tmp/l/pki/ca.pem",
        "cert": "/tmp/l/pki/agent.host1.pem",
        "key": "/tmp/l/pki/agent.host1-key.pem",
    }
    assert agent == {
        "name": "host1",
        "listen": ["10.77.0.11:7070", "unix:/tmp/l/hosts/host1/agent.sock"],
        "libvirt_uri": "qemu:///system",
        "advertise_libvirt_uri": "qemu+tls://10.77.0.11/system?pkipath=/etc/libvirt/pki",
        "migration_address": "10.77.0.11",
        "image_dirs": ["/var/lib/libvirt/images"],
        "shared_dirs": ["/tmp/l/shared"],
        "state_dir": "/var/lib/ferry-agent",
        "prepare_ttl_s": 600,
        "libvirt_timeout_s": 30,
        "migration_tls_dir": "/etc/libvirt/pki/qemu",
    }
    # metrics inside the host's namespace and on a socket the root namespace reaches
    config = parse_agent_config(render_agent_toml(paths, plan))
    assert config.metrics_listen == ("10.77.0.11:9470", "unix:/tmp/l/hosts/host1/metrics.sock")


@pytest.mark.parametrize(
    ("lab_dir", "usable"),
    [
        ("/tmp/ferry-lab", True),
        ("/var/tmp/lab", False),  # hidden by every host's overlay /var
        ("/run/lab", False),
        ("relative/lab", False),
        ("/tmp/" + "x" * 90, False),  # socket paths would not fit in sun_path
    ],
)
def test_lab_dir_rules(lab_dir, usable):
    assert (lab_dir_problem(Path(lab_dir)) == "") is usable


def test_guest_xml_is_tcg_with_cache_none_disks_and_appending_console():
    spec = GuestSpec(
        name="g1",
        memory_mib=256,
        kernel="/l/guest/vmlinuz",
        initrd="/l/guest/initrd.gz",
        console_log="/l/shared/g1.console.log",
        disks=(DiskSpec("vda", "/var/lib/libvirt/images/g1-vda.qcow2", 1 << 28),),
        bridge="br-guest",
        dirty_rate="max",
    )
    dom = ET.fromstring(domain_xml(spec))
    assert dom.get("type") == "qemu"
    assert dom.find("os/type").get("machine").startswith("pc-q35")
    assert dom.find("cpu/model").text == "qemu64"
    assert dom.find("devices/disk/driver").get("cache") == "none"
    assert dom.find("devices/disk/target").get("dev") == "vda"
    assert dom.find("devices/interface/source").get("bridge") == "br-guest"
    assert dom.find("devices/serial/source").attrib == {"path": "/l/shared/g1.console.log", "append": "on"}
    assert dom.find("devices/memballoon").get("model") == "none"
    assert "dirty_rate=max" in dom.find("os/cmdline").text
    # ACPI on: QEMU 10 (the lab's, see deploy/fetch-qemu.sh) no longer takes libvirt 9's -no-acpi
    assert dom.find("features/acpi") is not None
    assert dom.find("devices/emulator").text == "/usr/bin/qemu-system-x86_64"  # the spec's default


def test_guests_run_on_debian_13s_qemu_when_it_is_there(tmp_path):
    from ferry.lab.domain import EMULATOR, lab_emulator

    wrapper = tmp_path / "qemu-system-x86_64"
    assert lab_emulator({}, wrapper) == EMULATOR  # not fetched: the system's
    wrapper.write_text("#!/bin/sh\n")
    wrapper.chmod(0o755)
    assert lab_emulator({}, wrapper) == str(wrapper)
    assert lab_emulator({"FERRY_LAB_QEMU": "system"}, wrapper) == EMULATOR
    assert lab_emulator({"FERRY_LAB_QEMU": "/opt/q"}, wrapper) == "/opt/q"


def test_guest_without_nic_or_dirtier():
    spec = GuestSpec(name="g1", memory_mib=256, kernel="k", initrd="i", console_log="c")
    dom = ET.fromstring(domain_xml(spec))
    assert dom.find("devices/interface") is None
    assert "dirty_rate" not in dom.find("os/cmdline").text


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256M", 256 << 20),
        ("256MiB", 256 << 20),
        ("1G", 1 << 30),
        ("1.5G", 3 << 29),
    ],
)
def test_disk_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["256", "12k", "abc", ""])
def test_disk_sizes_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_last_heartbeat_ignores_other_console_lines():
    console = "GUEST-BOOTED\nHEARTBEAT 1 uptime=1.0\n[ 3.1] kernel says\nHEARTBEAT 12 uptime=12.5\nHEAR"
    assert last_heartbeat(console) == 12
    assert last_heartbeat("GUEST-BOOTED\n") == 0


def test_initramfs_archive_lists_with_cpio(tmp_path):
    entries = [
        CpioEntry("bin", 0o40755),
        CpioEntry("bin/busybox", 0o100755, b"\x7fELF..."),
        CpioEntry("bin/sh", 0o120777, b"busybox"),
        CpioEntry("init", 0o100755, b"#!/bin/sh\n"),
    ]
    archive = tmp_path / "a.cpio"
    archive.write_bytes(cpio_newc(entries))
    listed = subprocess.run(
        ["cpio", "-t", "--quiet"], stdin=archive.open("rb"), capture_output=True, text=True, check=True
    )
    assert listed.stdout.split() == ["bin", "bin/busybox", "bin/sh", "init"]


def test_down_stops_workers_before_libvirtd_and_holders_last():
    order = sorted(
        [
            ("core", "holder", CORE),
            ("host1", "holder", "host1"),
            ("host1/libvirtd", "libvirtd", "host1"),
            ("host1/agent", "agent", "host1"),
            ("etcd1", "etcd", CORE),
            ("coordinator", "coordinator", CORE),
        ],
        key=lambda c: stop_rank(c[1], c[2]),
    )
    assert [name for name, _, _ in order] == ["host1/agent", "coordinator", "etcd1", "host1/libvirtd", "host1", "core"]


def test_status_text_names_a_failed_agent_and_its_reason():
    state = LabState(lab_dir="/l", created="t", core_address="10.77.0.1")
    dead = ProcessRecord(pid=1, start_ticks=0, argv=("x",))
    state = state.with_component(
        Component("host1/agent", "agent", "host1", dead, error="exited during start (log: /l/a.log)")
    )
    from ferry.lab.status import component_status

    entry = component_status(state.component("host1/agent"))
    assert entry["state"] == "failed"
    status = {
        "lab_dir": "/l",
        "up": False,
        "created": "t",
        "core": {"address": "10.77.0.1/24", "bridge": "br0", "holder": None},
        "hosts": [],
        "components": [entry],
    }
    text = render_text(status)
    assert "FAILED" in text and "/l/a.log" in text


def test_status_says_where_each_metrics_endpoint_is():
    from ferry.lab.status import _control_lines, _metrics_lines

    agent = {"endpoints": {"metrics": "unix:/l/hosts/host1/metrics.sock", "metrics_tcp": "10.77.0.11:9470"}}
    [line] = _metrics_lines(agent)
    assert "curl --unix-socket /l/hosts/host1/metrics.sock http://localhost/metrics" in line
    assert "https://10.77.0.11:9470/metrics, with pki/reader.lab.pem" in line
    assert _metrics_lines({"endpoints": {"unix": "unix:/x"}}) == []  # started before metrics existed
    coordinator = {
        "kind": "coordinator",
        "label": "coordinator c1",
        "pid": 7,
        "state": "running",
        "error": "",
        "endpoints": {"grpc": "10.77.0.1:7100", "unix": "unix:/l/c1.sock", "metrics": "unix:/l/c1.metrics.sock"},
    }
    control = {"leader": "c1", "leader_error": "", "user_cli_config": "/c.toml"}
    lines = _control_lines(control, [coordinator])
    assert any("curl --unix-socket /l/c1.metrics.sock" in line for line in lines)


# ---------------------------------------------------------------- the real lab


@pytest.mark.lab
def test_hosts_are_distinct_libvirt_hosts_with_their_guest_bridges(lab):
    uuids = {}
    for host, bridge in (("host1", "br-guest"), ("host2", "br-vm")):
        caps = ET.fromstring(lab.virsh(host, "capabilities").stdout)
        uuids[host] = caps.find("host/uuid").text
        assert uuids[host] == lab.host(host).host_uuid
        assert lab.host_exec(host, "hostname").stdout.strip() == host
        links = json.loads(lab.host_exec(host, "ip", "-j", "link", "show", "type", "bridge").stdout)
        assert [link["ifname"] for link in links] == [bridge]
        addrs = json.loads(lab.host_exec(host, "ip", "-j", "-4", "addr", "show", "eth0").stdout)
        assert addrs[0]["addr_info"][0]["local"] == lab.host_ip(host)
    assert uuids["host1"] != uuids["host2"]


@pytest.mark.lab
def test_hosts_reach_each_others_libvirtd_over_the_lab_network(lab):
    # the path a peer-to-peer migration takes: host1's side talks to host2's libvirtd over TCP
    seen = lab.host_exec("host1", "virsh", "-c", lab.tcp_uri("host2"), "hostname")
    assert seen.stdout.strip() == "host2"


@pytest.mark.lab
def test_status_reports_every_component(lab):
    status = lab.status()
    json.dumps(status)  # what `ferry-lab status --output json` prints
    assert status["up"] and status["core"]["holder"]["state"] == "running"
    for host in status["hosts"]:
        assert host["holder"]["state"] == "running"
        assert host["libvirtd"]["state"] == "running" and host["libvirtd"]["pid"]
        assert Path(host["libvirt_uri"].split("socket=")[1]).is_socket()
        agent = host["agent"]
        # the agent either serves, or the lab says clearly why not (the hosts stay up)
        assert (agent["state"] == "running" and agent["serving"]) or (
            agent["state"] == "failed" and agent["log"] in agent["error"]
        ), agent


@pytest.mark.lab
def test_up_again_reuses_the_lab_or_refuses_a_different_one(lab):
    before = lab.state()
    assert lab.up(hosts=2, install=False) == before
    with pytest.raises(AlreadyExists):
        lab.up(hosts=3, install=False)


@pytest.mark.lab
def test_guest_boots_on_host1_and_keeps_beating(lab):
    info = lab.guest("beat", host="host1")
    assert info.boot_seconds < 60
    assert "beat" in lab.virsh("host1", "list", "--name").stdout.split()
    assert "beat" not in lab.virsh("host2", "list", "--all", "--name").stdout.split()
    assert "br-guest" in lab.virsh("host1", "domiflist", "beat").stdout
    first = lab.heartbeats("beat")
    assert lab.wait_for_heartbeat("beat", above=first + 2, timeout=30) > first + 2
    # its disk is host-local: host1 has it, host2 does not
    disk = info.disks[0].path
    assert lab.host_exec("host1", "test", "-f", disk, check=False).returncode == 0
    assert lab.host_exec("host2", "test", "-e", disk, check=False).returncode != 0
    assert "DISK vda" in lab.console("beat")


@pytest.mark.lab
def test_a_failed_agent_is_reported_and_the_host_stays_up(tmp_path, lab_cache):
    small = Lab(tmp_path / "lab", cache_dir=lab_cache)
    try:
        small.up(hosts=1, install=False, agent_command=["/bin/false"])
        host = small.status()["hosts"][0]
        assert host["agent"]["state"] == "failed" and "exit code 1" in host["agent"]["error"]
        assert host["libvirtd"]["state"] == "running"
        assert small.virsh("host1", "version").returncode == 0
    finally:
        small.down()


@pytest.mark.lab
def test_a_core_component_is_recorded_shown_and_stopped(tmp_path, lab_cache):
    """The place etcd members and coordinators will take: started in the core namespace,
    listed by status, stopped by down."""
    small = Lab(tmp_path / "lab", cache_dir=lab_cache)
    try:
        small.up(hosts=1, agents=False, install=False)
        component = small.start_component(
            "coordinator", "coordinator", ["sleep", "infinity"], endpoints={"grpc": "10.77.0.1:7000"}
        )
        core_holder = small.state().holder(CORE)
        assert os.readlink(f"/proc/{component.process.pid}/ns/net") == os.readlink(f"/proc/{core_holder.pid}/ns/net")
        [shown] = small.status()["components"]
        assert (shown["name"], shown["place"], shown["state"]) == ("coordinator", CORE, "running")
    finally:
        report = small.down()
    assert ("coordinator", "stopped") in report.stopped
    assert not procs.is_alive(component.process)


def _root_links() -> set[str]:
    return {
        link["ifname"]
        for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    }


def _ferry_lab(lab_dir: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FERRY_LAB_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-m", "ferry.lab.main", "--lab-dir", str(lab_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.lab
def test_down_leaves_nothing_running(tmp_path, lab_cache):
    """Through the command, as an operator: up, a guest, status, down; then no recorded process,
    no QEMU and nothing in the lab's namespaces is left, and the root namespace never changed."""
    lab_dir = tmp_path / "lab"
    links_before = _root_links()
    _ferry_lab(lab_dir, lab_cache, "up", "--hosts", "1", "--no-install")
    try:
        assert _root_links() == links_before
        _ferry_lab(lab_dir, lab_cache, "guest", "g1", "--host", "host1", "--no-nic")
        qemu_pid = int((lab_dir / "hosts/host1/run/qemu/g1.pid").read_text())
        qemu = ProcessRecord(qemu_pid, procs.read_stat(qemu_pid).start_ticks, ("qemu",))
        status = json.loads(_ferry_lab(lab_dir, lab_cache, "status", "--output", "json").stdout)
        state = Lab(lab_dir).state()
        assert state is not None
        records = [c.process for c in state.components if c.process is not None]
        pids = {r.pid for r in records}
        assert {status["core"]["holder"]["pid"], status["hosts"][0]["libvirtd"]["pid"]} <= pids
        assert all(procs.is_alive(r) for r in records)
    finally:
        _ferry_lab(lab_dir, lab_cache, "down")
    assert not any(procs.is_alive(r) for r in records)
    assert not procs.is_alive(qemu)
    assert procs.pids_in_namespaces(state.all_namespaces()) == {}
    after = json.loads(_ferry_lab(lab_dir, lab_cache, "status", "--output", "json").stdout)
    assert after["up"] is False and after["hosts"] == []
    assert _root_links() == links_before
