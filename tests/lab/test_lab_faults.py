"""The lab's whole-host faults (``ferry.lab.faults``) and the small image filesystem a host may
get (``ferry-lab up --image-fs host2=512M``): their pure rules, from tables. They run for real in
the fault campaign (tests/lab/test_chaos.py, which also checks each primitive on a real host
first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.lab.controlplane import endpoint_leader
from ferry.lab.faults import (
    FILL_BLOCK,
    FILL_MARGIN,
    fill_steps,
    host_death_victims,
    link_argv,
    link_is_up,
    parse_statfs_free,
)
from ferry.lab.hosts import BOUND_ETC_FILES, host_mount_commands, lost_etc_binds
from ferry.lab.state import HostRecord
from ferry.lab.status import render_text
from ferry.lab.topology import IMAGE_DIR, LabPaths, image_fs_mount, parse_image_fs, plan_hosts, veth_name


def test_a_partition_takes_the_core_side_of_the_host_s_link_down():
    assert veth_name("host2") == "vhost2"
    assert link_argv("host2", up=False) == ["ip", "link", "set", "vhost2", "down"]
    assert link_argv("host1", up=True) == ["ip", "link", "set", "vhost1", "up"]
    plans = plan_hosts(LabPaths(Path("/tmp/l")), 2)
    assert [p.veth for p in plans] == ["vhost1", "vhost2"]  # the link the lab created is the one cut


@pytest.mark.parametrize(
    ("shown", "up"),
    [
        ("4: vhost1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue master br0 state UP", True),
        ("4: vhost1@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue master br0 state DOWN", False),
        # up, but its peer gone (the host's holder died): still administratively up
        ("4: vhost1@if2: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state LOWERLAYERDOWN", True),
        ("", None),
    ],
)
def test_whether_a_link_is_up(shown, up):
    assert link_is_up(shown) is up


def test_a_host_death_kills_everything_inside_but_the_holder():
    inside = {100: "sleep infinity", 101: "/usr/sbin/libvirtd --listen", 102: "qemu-system-x86_64 -name guest=g1"}
    assert host_death_victims(inside, holder_pid=100) == {101: inside[101], 102: inside[102]}
    assert host_death_victims({100: "sleep infinity"}, holder_pid=100) == {}


@pytest.mark.parametrize(
    ("free", "leave", "steps"),
    [
        (512 << 20, 0, ((512 << 20) - FILL_MARGIN, FILL_MARGIN // FILL_BLOCK + 1)),  # + 1: dd meets ENOSPC
        (100 << 20, 10 << 20, ((90 << 20) - FILL_MARGIN, FILL_MARGIN // FILL_BLOCK)),
        (4 << 20, 0, (0, (4 << 20) // FILL_BLOCK + 1)),
        (1 << 20, 2 << 20, (0, 0)),  # already fuller than asked
        (0, 0, (0, 0)),
    ],
)
def test_how_a_host_s_image_filesystem_is_filled(free, leave, steps):
    assert fill_steps(free, leave) == steps
    bulk, blocks = steps
    if leave:
        assert bulk + blocks * FILL_BLOCK == max(0, free - leave)


def test_free_bytes_from_stat():
    assert parse_statfs_free("130479 4096\n") == 130479 * 4096


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("host2=512M", ("host2", 512 << 20)), ("host1=1G", ("host1", 1 << 30)), (" host3 = 64M", ("host3", 64 << 20))],
)
def test_image_fs_option(text, parsed):
    assert parse_image_fs(text) == parsed


@pytest.mark.parametrize("text", ["host2", "host2=", "host2=512", "core=512M", "=512M"])
def test_image_fs_option_refused(text):
    with pytest.raises(ValueError):
        parse_image_fs(text)


def test_a_host_with_its_own_image_filesystem_mounts_it_over_the_host_local_var():
    paths = LabPaths(Path("/tmp/l"))
    plans = plan_hosts(paths, 2, {"host2": 512 << 20})
    assert [p.image_fs_bytes for p in plans] == [0, 512 << 20]
    plain = host_mount_commands(paths, "host1", plans[0].image_fs_bytes)
    small = host_mount_commands(paths, "host2", plans[1].image_fs_bytes)
    assert image_fs_mount(512 << 20) not in plain
    mount = image_fs_mount(512 << 20)
    assert mount == ["mount", "-t", "tmpfs", "-o", f"size={512 << 20},mode=0755", "tmpfs", IMAGE_DIR]
    # after the /var overlay (or it would hide the mount), and the only difference
    overlay = next(i for i, argv in enumerate(small) if "overlay" in argv)
    assert small.index(mount) == overlay + 1
    assert [argv for argv in small if argv != mount] == [[a.replace("host1", "host2") for a in argv] for argv in plain]


@pytest.mark.parametrize(
    ("image_fs", "problem"),
    [({"host3": 512 << 20}, "host3"), ({"host1": 1 << 20}, "at least 16 MiB")],
)
def test_image_fs_for_a_host_the_lab_has_not_or_too_small(image_fs, problem):
    with pytest.raises(ValueError, match=problem):
        plan_hosts(LabPaths(Path("/tmp/l")), 2, image_fs)


def test_the_host_record_keeps_its_image_filesystem_and_old_state_files_still_load():
    record = HostRecord("host2", 2, "10.77.0.12", "u", "br-vm", "qemu:///", "qemu+tcp://", "unix:a", "b", {}, 64 << 20)
    assert HostRecord.from_json(record.to_json()) == record
    old = {k: v for k, v in record.to_json().items() if k != "image_fs_bytes"}
    assert HostRecord.from_json(old).image_fs_bytes == 0


def test_etcd_raft_leader_from_endpoint_status():
    status = (
        '[{"Endpoint":"http://10.77.0.1:2379","Status":{"header":{"member_id":15369708580296004171},'
        '"leader":6793080987439434437}},'
        '{"Endpoint":"http://10.77.0.1:2381","Status":{"header":{"member_id":6793080987439434437},'
        '"leader":6793080987439434437}}]'
    )
    assert endpoint_leader(status) == "http://10.77.0.1:2381"
    assert endpoint_leader("[]") is None
    assert endpoint_leader("Error: context deadline exceeded") is None
    # quorum lost: the member that answers names no leader among the endpoints
    assert endpoint_leader('[{"Endpoint":"http://a:1","Status":{"header":{"member_id":1},"leader":0}}]') is None


def test_status_shows_a_host_s_image_filesystem_and_a_link_taken_down():
    host = {
        "name": "host2",
        "address": "10.77.0.12",
        "host_uuid": "u2",
        "guest_bridge": "br-vm",
        "libvirt_uri": "qemu:///x",
        "tcp_uri": "qemu+tcp://10.77.0.12/system",
        "agent_address": "unix:/a",
        "agent_listen": "10.77.0.12:7070",
        "holder": None,
        "libvirtd": None,
        "agent": None,
        "guests": None,
        "image_fs_bytes": 512 << 20,
        "link_up": False,
    }
    status = {
        "lab_dir": "/tmp/l",
        "up": True,
        "created": "now",
        "core": {"address": "10.77.0.1/24", "bridge": "br0", "holder": None},
        "hosts": [host],
        "control_plane": None,
        "components": [],
    }
    line = next(line for line in render_text(status).splitlines() if line.startswith("host2"))
    assert "image fs 512 MiB" in line and "LINK DOWN (ferry-lab heal host2)" in line
    host.update(link_up=True, image_fs_bytes=0)
    line = next(line for line in render_text(status).splitlines() if line.startswith("host2"))
    assert "image fs" not in line and "LINK" not in line


MOUNTINFO = """\
46 30 0:41 / / rw,relatime - overlay overlay rw
87 46 254:0 /tmp/l/hosts/host1/passwd /etc/passwd rw,relatime - ext4 /dev/vda rw
88 46 254:0 /tmp/l/hosts/host1/group /etc/group rw,relatime - ext4 /dev/vda rw
89 46 254:0 /tmp/l/hosts/host1/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw
90 46 254:0 /tmp/l/hosts/host1/etc /etc/libvirt rw,relatime - ext4 /dev/vda rw
"""


def test_etc_files_a_host_lost_when_the_machine_replaced_them():
    assert lost_etc_binds(MOUNTINFO) == []
    # useradd renamed a new /etc/passwd over the old one: the kernel detached the bind mounts on it
    after_useradd = "\n".join(
        line for line in MOUNTINFO.splitlines() if "/etc/passwd" not in line and "group" not in line
    )
    assert lost_etc_binds(after_useradd) == ["passwd", "group"]
    assert set(BOUND_ETC_FILES) == {
        Path(argv[-1]).name
        for argv in host_mount_commands(LabPaths(Path("/tmp/l")), "host1")
        if argv[-1].startswith("/etc/") and argv[1] == "--bind" and not argv[-1].endswith("libvirt")
    }
