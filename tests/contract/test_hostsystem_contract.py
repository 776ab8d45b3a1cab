"""One suite, two HostSystems: the in-memory fake and the real one (tmp dirs, a fake sysfs tree,
a fake mount table, real qemu-img), so the fake cannot drift from what the agent meets on a host."""

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from ferry.agent.hostsystem import LocalHostSystem
from ferry.errors import AlreadyExists, FerryError, Internal, InvalidArgument
from ferry.model import LINUX_BRIDGE, OVS_BRIDGE
from ferry.paths import PathUse
from ferry.ports import HostSystem
from ferry.testing.fake_hostsystem import FakeHostSystem

GiB = 1 << 30


@dataclass
class World:
    host: HostSystem
    images: str  # local image directory
    shared: str  # declared shared directory
    nfs: str  # a directory on a cluster file system (not declared)


def local_world(tmp: Path) -> World:
    images, shared, nfs = tmp / "images", tmp / "shared", tmp / "nfs"
    for d in (images, shared, nfs):
        d.mkdir()
    net = tmp / "sys" / "class" / "net"
    (net / "br-vm" / "bridge").mkdir(parents=True)
    (net / "eth0").mkdir(parents=True)
    (net / "lo").mkdir(parents=True)
    mounts = tmp / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nfiler:/export {nfs} nfs4 rw,vers=4.2 0 0\n")
    host = LocalHostSystem([str(images)], [str(shared)], sysfs_root=str(tmp / "sys"), mounts_file=str(mounts))
    return World(host, str(images), str(shared), str(nfs))


def fake_world(tmp: Path) -> World:
    images, shared, nfs = str(tmp / "images"), str(tmp / "shared"), str(tmp / "nfs")
    host = FakeHostSystem(
        bridges=["br-vm"],
        dirs={images: 50 * GiB, shared: 80 * GiB, nfs: 80 * GiB},
        totals={images: 100 * GiB, shared: 100 * GiB, nfs: 100 * GiB},
        shared_dirs=[shared, nfs],
        storage=[images, shared],
        fs_types={shared: "ext4"},  # declared shared on a local file system, as local_world's
    )
    return World(host, images, shared, nfs)


needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")


@pytest.fixture(params=[pytest.param("fake"), pytest.param("local", marks=needs_qemu_img)])
def world(request, tmp_path) -> World:
    return fake_world(tmp_path) if request.param == "fake" else local_world(tmp_path)


def test_bridges_are_only_bridges(world):
    assert world.host.bridges() == ["br-vm"]


def test_create_exists_remove(world):
    path = f"{world.images}/g1.qcow2"
    assert not world.host.exists(path)
    world.host.create_image(path, fmt="qcow2", virtual_size=GiB)
    assert world.host.exists(path)
    assert world.host.remove(path) is True
    assert not world.host.exists(path)
    assert world.host.remove(path) is False  # already gone


def test_an_existing_file_is_in_the_way(world):
    path = f"{world.images}/g1.raw"
    world.host.create_image(path, fmt="raw", virtual_size=GiB)
    with pytest.raises(AlreadyExists) as err:
        world.host.create_image(path, fmt="qcow2", virtual_size=2 * GiB)
    assert err.value.reason == "FILE_IN_THE_WAY"
    assert path in err.value.message
    assert world.host.exists(path)  # and it was left alone


def test_a_file_is_not_a_block_device(world):
    path = f"{world.images}/g1.raw"
    world.host.create_image(path, fmt="raw", virtual_size=GiB)
    assert (world.host.is_block_device(path), world.host.is_block_device(f"{world.images}/none")) == (False, False)
    assert world.host.block_identity(path) == ""


def test_parent_directories_are_created(world):
    path = f"{world.images}/tenant-a/web/g1.qcow2"
    assert world.host.writable_dir(path)
    world.host.create_image(path, fmt="qcow2", virtual_size=GiB)
    assert world.host.exists(path)


def test_backing_file(world):
    base, top = f"{world.images}/base.raw", f"{world.images}/top.qcow2"
    world.host.create_image(base, fmt="raw", virtual_size=GiB)
    world.host.create_image(top, fmt="qcow2", virtual_size=GiB, backing_file=base, backing_format="raw")
    assert world.host.exists(top)


def test_free_space_is_sane_and_does_not_grow_on_create(world):
    path = f"{world.images}/g1.qcow2"
    before = world.host.free_bytes(path)  # nearest existing parent: the image dir
    world.host.create_image(path, fmt="qcow2", virtual_size=10 * GiB)
    after = world.host.free_bytes(path)
    total = next(d.total_bytes for d in world.host.storage_dirs() if d.path == world.images)
    assert 0 < after <= total
    assert after <= before + (1 << 20)  # other writers on a real disk may free a little
    assert before - after < GiB  # a new image is (nearly) empty, whatever its virtual size


def test_storage_dirs_and_shared_flag(world):
    dirs = {d.path: d for d in world.host.storage_dirs()}
    assert set(dirs) == {world.images, world.shared}
    assert dirs[world.images].shared is False
    assert dirs[world.shared].shared is True
    for d in dirs.values():
        assert 0 < d.free_bytes <= d.total_bytes


@pytest.mark.parametrize(
    ("where", "shared", "libvirt_shared"),
    # the declared directory is shared for Ferry, but on a file system (ext4) libvirt does not
    # take for shared: libvirt migrates its disks in place only when told the migration is unsafe
    [("images", False, False), ("shared", True, False), ("nfs", True, True)],
)
def test_is_shared(world, where, shared, libvirt_shared):
    directory = getattr(world, where)
    assert world.host.is_shared(f"{directory}/g1.qcow2") is shared
    assert world.host.is_shared(directory) is shared
    assert world.host.libvirt_shared(f"{directory}/g1.qcow2") is libvirt_shared


def test_network_devices_cpus_and_numa_nodes(tmp_path):
    """What a macvtap NIC and a pinned guest need of a target (``target_checks``)."""
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "net" / "br-vm" / "bridge").mkdir(parents=True)
    for device in ("eth0", "lo"):
        (sysfs / "class" / "net" / device).mkdir()
    for what, online in (("cpu", "0-3\n"), ("node", "0\n")):
        (sysfs / "devices" / "system" / what).mkdir(parents=True)
        (sysfs / "devices" / "system" / what / "online").write_text(online)
    local = LocalHostSystem([], sysfs_root=str(sysfs))
    fake = FakeHostSystem(bridges=["br-vm"])  # eth0 and lo, CPUs 0-3, node 0 unless told otherwise
    for host in (local, fake):
        assert host.net_devices() == ["br-vm", "eth0", "lo"]  # every device, bridges too
        assert (host.online_cpus(), host.numa_nodes()) == (frozenset(range(4)), frozenset({0}))


def test_local_cpus_and_nodes_it_cannot_read_are_unknown(tmp_path):
    (tmp_path / "sys" / "devices" / "system" / "cpu").mkdir(parents=True)
    (tmp_path / "sys" / "devices" / "system" / "cpu" / "online").write_text("garbage\n")
    local = LocalHostSystem([], sysfs_root=str(tmp_path / "sys"))  # no node/: a kernel without NUMA
    assert (local.net_devices(), local.online_cpus(), local.numa_nodes()) == ([], frozenset(), frozenset())


# ------------------------------------------------------------------ real adapter only


@needs_qemu_img
def test_local_image_has_the_size_format_and_backing_asked_for(tmp_path):
    w = local_world(tmp_path)
    base, top = f"{w.images}/base.qcow2", f"{w.images}/vm/top.qcow2"
    w.host.create_image(base, fmt="qcow2", virtual_size=3 * GiB)
    w.host.create_image(top, fmt="qcow2", virtual_size=3 * GiB, backing_file=base)  # format probed
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", top], capture_output=True, text=True, check=True
        ).stdout
    )
    assert (info["format"], info["virtual-size"]) == ("qcow2", 3 * GiB)
    assert (info["backing-filename"], info["backing-filename-format"]) == (base, "qcow2")


@needs_qemu_img
def test_local_failed_create_leaves_nothing(tmp_path):
    w = local_world(tmp_path)
    path = f"{w.images}/bad.qcow2"
    with pytest.raises(Internal) as err:  # qemu-img refuses a missing backing file
        w.host.create_image(
            path, fmt="qcow2", virtual_size=GiB, backing_file=f"{w.images}/nope.raw", backing_format="raw"
        )
    assert err.value.reason == "QEMU_IMG_FAILED"
    assert not w.host.exists(path)


def test_local_dangling_symlink_is_in_the_way(tmp_path):
    w = local_world(tmp_path)
    link = Path(w.images) / "g1.qcow2"
    link.symlink_to(tmp_path / "gone")
    assert w.host.exists(str(link))
    with pytest.raises(AlreadyExists):
        w.host.create_image(str(link), fmt="qcow2", virtual_size=GiB)


def test_local_fs_type_from_mount_table(tmp_path):
    w = local_world(tmp_path)
    assert w.host.fs_type(f"{w.nfs}/x/y.qcow2") == "nfs4"
    assert w.host.fs_type(w.images) == "ext4"


def test_local_declared_bridges_are_the_only_ones_offered(tmp_path):
    w = local_world(tmp_path)
    (tmp_path / "sys" / "class" / "net" / "br-mgmt" / "bridge").mkdir(parents=True)
    assert w.host.bridges() == ["br-mgmt", "br-vm"]
    declared = LocalHostSystem(
        [w.images], sysfs_root=str(tmp_path / "sys"), mounts_file=str(tmp_path / "mounts"), bridges=["br-vm", "br-gone"]
    )
    assert declared.bridges() == ["br-vm"]  # the management bridge is not a guest bridge


def test_open_vswitch_bridges_are_offered_too_and_told_apart(tmp_path):
    net = tmp_path / "sys" / "class" / "net"
    (net / "br-vm" / "bridge").mkdir(parents=True)
    for device in ("br-ovs", "ovs-system", "eth0"):  # an OVS bridge: a network device without bridge/
        (net / device).mkdir()
    vsctl = tmp_path / "ovs-vsctl"
    vsctl.write_text("#!/bin/sh\necho br-ovs\n")  # what `ovs-vsctl list-br` prints
    vsctl.chmod(0o755)
    local = LocalHostSystem([], sysfs_root=str(tmp_path / "sys"), ovs_vsctl=str(vsctl))
    fake = FakeHostSystem(bridges=["br-vm"], ovs_bridges=["br-ovs"])
    for host in (local, fake):
        assert host.bridges() == ["br-ovs", "br-vm"]
        assert host.bridge_kinds() == {"br-ovs": OVS_BRIDGE, "br-vm": LINUX_BRIDGE}


def test_confinement_is_the_same_on_both(world, tmp_path):
    outside = str(tmp_path / "elsewhere" / "g1.qcow2")
    assert world.host.confine(outside, PathUse.CREATE).reason == "PATH_OUTSIDE_IMAGE_DIRS"
    assert world.host.confine(f"{world.images}/../g1.qcow2", PathUse.CREATE).reason == "PATH_DOTDOT"
    assert world.host.confine("g1.qcow2", PathUse.REMOVE).reason == "PATH_NOT_ABSOLUTE"
    assert world.host.confine(f"{world.images}/a/g1.qcow2", PathUse.CREATE) is None
    assert world.host.confine(f"{world.shared}/g1.qcow2", PathUse.READ) is None  # shared dirs are image dirs too
    with pytest.raises(InvalidArgument) as exc:
        world.host.create_image(outside, fmt="qcow2", virtual_size=GiB)
    assert exc.value.reason == "PATH_OUTSIDE_IMAGE_DIRS" and not world.host.exists(outside)
    with pytest.raises(InvalidArgument):
        world.host.remove("/etc/passwd")


def test_a_probe_is_an_empty_file_written_once_and_removed_like_an_image(world, tmp_path):
    probe = f"{world.shared}/.ferry-probe-00112233445566778899aabbccddeeff"
    world.host.write_probe(probe)
    assert world.host.exists(probe)
    with pytest.raises(AlreadyExists) as exc:
        world.host.write_probe(probe)
    assert exc.value.reason == "FILE_IN_THE_WAY"
    assert world.host.remove(probe) is True and not world.host.exists(probe)
    outside = str(tmp_path / "elsewhere" / ".ferry-probe-00112233445566778899aabbccddeeff")
    with pytest.raises(InvalidArgument) as bad:
        world.host.write_probe(outside)
    assert bad.value.reason == "PATH_OUTSIDE_IMAGE_DIRS" and not world.host.exists(outside)


def test_local_probe_is_empty_private_and_never_written_through_a_link(tmp_path):
    w = local_world(tmp_path)
    probe = Path(w.shared) / ".ferry-probe-00112233445566778899aabbccddeeff"
    w.host.write_probe(str(probe))
    assert probe.stat().st_size == 0 and probe.stat().st_mode & 0o777 == 0o600
    probe.unlink()
    (Path(w.shared) / "vms").symlink_to(tmp_path / "nfs")
    with pytest.raises(FerryError) as exc:
        w.host.write_probe(f"{w.shared}/vms/.ferry-probe-00112233445566778899aabbccddeeff")
    assert exc.value.reason == "PATH_SYMLINK" and list((tmp_path / "nfs").iterdir()) == []
    with pytest.raises(FerryError) as missing:
        w.host.write_probe(f"{w.shared}/gone/.ferry-probe-00112233445566778899aabbccddeeff")
    assert missing.value.reason == "PATH_NOT_WRITABLE"
