"""LocalHostSystem.block_identity over a real block device node and a made-up sysfs tree."""

import os
import stat
from pathlib import Path

import pytest

from ferry.agent.hostsystem import LocalHostSystem


def a_block_device() -> str | None:
    for entry in sorted(os.scandir("/dev"), key=lambda e: e.name):
        try:
            if stat.S_ISBLK(entry.stat(follow_symlinks=False).st_mode):
                return entry.path
        except OSError:
            continue
    return None


DEVICE = a_block_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="no block device node in /dev")


def node(sysfs: Path) -> Path:
    assert DEVICE is not None
    rdev = os.stat(DEVICE).st_rdev
    return sysfs / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"


def host(sysfs: Path) -> LocalHostSystem:
    return LocalHostSystem(["/var/lib/libvirt/images"], sysfs_root=str(sysfs))


def test_a_device_mapper_device_is_its_uuid(tmp_path):
    (node(tmp_path) / "dm").mkdir(parents=True)
    (node(tmp_path) / "dm" / "uuid").write_text("LVM-Abc123Def456\n")
    assert host(tmp_path).block_identity(DEVICE) == "dm:LVM-Abc123Def456"


def test_a_lun_is_its_wwid_and_a_partition_adds_its_number(tmp_path):
    disk = tmp_path / "devices" / "sdb"
    (disk / "device").mkdir(parents=True)
    (disk / "device" / "wwid").write_text("naa.600a098038303053\n")
    (disk / "sdb1").mkdir()
    (disk / "sdb1" / "partition").write_text("1\n")
    node(tmp_path).parent.mkdir(parents=True)
    node(tmp_path).symlink_to(disk / "sdb1")
    assert host(tmp_path).block_identity(DEVICE) == "wwid:naa.600a098038303053:part1"


def test_no_identity_for_a_file_a_missing_path_or_a_device_sysfs_says_nothing_of(tmp_path):
    f = tmp_path / "disk.raw"
    f.write_bytes(b"x")
    h = host(tmp_path)
    assert h.block_identity(str(f)) == "" and h.block_identity(str(tmp_path / "gone")) == ""
    assert h.block_identity(DEVICE) == ""  # nothing under the made-up sysfs for it
