"""Disk plans: which disks are copied, where they land on the target."""

from dataclasses import replace

import pytest

from ferry.diskplan import map_path, plan_disks
from ferry.errors import InvalidArgument
from ferry.model import Disk, DiskPlan, HostMapping, StorageMode

IMG = "/var/lib/libvirt/images"


@pytest.mark.parametrize(
    ("path", "prefixes", "expected"),
    [
        (f"{IMG}/a.qcow2", {}, f"{IMG}/a.qcow2"),
        (f"{IMG}/a.qcow2", {IMG: "/srv/img"}, "/srv/img/a.qcow2"),
        (f"{IMG}/a.qcow2", {IMG + "/": "/srv/img/"}, "/srv/img/a.qcow2"),  # trailing slashes
        (f"{IMG}/a.qcow2", {"/var/lib": "/data", IMG: "/srv/img"}, "/srv/img/a.qcow2"),  # longest wins
        (f"{IMG}/a.qcow2", {IMG: "/srv/img", "/var/lib": "/data"}, "/srv/img/a.qcow2"),  # order irrelevant
        ("/var/lib/libvirt/images/a", {"/var/lib/libvirt/img": "/x"}, "/var/lib/libvirt/images/a"),  # components
        ("/var/lib/img", {"/var/lib/img": "/srv/img"}, "/srv/img"),  # the prefix itself
        ("/var/lib/img2", {"/var/lib/img": "/srv/img"}, "/var/lib/img2"),
        ("/a/b", {"/": "/mnt"}, "/mnt/a/b"),  # root prefix
        ("/a/b", {"/a": "/"}, "/b"),
        ("/a", {"/a": "/"}, "/"),
        ("", {"/a": "/b"}, ""),
    ],
)
def test_map_path(path, prefixes, expected):
    assert map_path(path, prefixes) == expected


ROOT = Disk(
    target="vda",
    source=f"{IMG}/g.qcow2",
    format="qcow2",
    virtual_size=10 << 30,
    allocation=2 << 30,
    backing_chain=(f"{IMG}/base.qcow2", f"{IMG}/os.raw"),
)
DATA = Disk(target="vdb", source=f"{IMG}/g-data.raw", format="raw", virtual_size=1 << 30)
NOFMT = Disk(target="vdd", source=f"{IMG}/g-old.img", virtual_size=1 << 20)
ISO = Disk(target="sda", source="/iso/install.iso", format="raw", device="cdrom", readonly=True)
EMPTY_CD = Disk(target="sdb", device="cdrom", readonly=True)
RO = Disk(target="vdc", source=f"{IMG}/seed.raw", format="raw", readonly=True)
SHARED = Disk(target="vde", source="/shared/g-logs.qcow2", format="qcow2", virtual_size=1 << 30, shared=True)
ALL = [ROOT, DATA, ISO, EMPTY_CD, RO, SHARED]
MAP = HostMapping(path_prefixes={IMG: "/srv/img"})


def summary(plans):
    """target -> (copied?, destination, backing file)"""
    return {p.target: (p.copy, p.destination, p.backing_file) for p in plans}


@pytest.mark.parametrize(
    ("storage", "migrate_disks", "expected"),
    [
        pytest.param(
            StorageMode.COPY_ALL,
            [],
            {
                "vda": (True, "/srv/img/g.qcow2", ""),
                "vdb": (True, "/srv/img/g-data.raw", ""),
                "sda": (False, "/iso/install.iso", ""),
                "vdc": (False, "/srv/img/seed.raw", ""),
                "vde": (False, "/shared/g-logs.qcow2", ""),
            },
            id="copy-all: writable local disks; cdrom, read-only and shared expected in place",
        ),
        pytest.param(
            StorageMode.COPY_ALL,
            ["vdb"],
            {
                "vda": (False, "/srv/img/g.qcow2", ""),
                "vdb": (True, "/srv/img/g-data.raw", ""),
                "sda": (False, "/iso/install.iso", ""),
                "vdc": (False, "/srv/img/seed.raw", ""),
                "vde": (False, "/shared/g-logs.qcow2", ""),
            },
            id="copy-all with migrate_disks: exactly those",
        ),
        pytest.param(
            StorageMode.COPY_ALL,
            ["vde"],
            {
                "vda": (False, "/srv/img/g.qcow2", ""),
                "vdb": (False, "/srv/img/g-data.raw", ""),
                "sda": (False, "/iso/install.iso", ""),
                "vdc": (False, "/srv/img/seed.raw", ""),
                "vde": (True, "/shared/g-logs.qcow2", ""),
            },
            id="an explicitly requested shared disk is copied",
        ),
        pytest.param(
            StorageMode.COPY_INC,
            [],
            {
                "vda": (True, "/srv/img/g.qcow2", "/srv/img/base.qcow2"),
                "vdb": (True, "/srv/img/g-data.raw", ""),
                "sda": (False, "/iso/install.iso", ""),
                "vdc": (False, "/srv/img/seed.raw", ""),
                "vde": (False, "/shared/g-logs.qcow2", ""),
            },
            id="copy-inc: nearest backing file mapped to the target",
        ),
        pytest.param(
            StorageMode.SHARED,
            [],
            {
                "vda": (False, "/srv/img/g.qcow2", ""),
                "vdb": (False, "/srv/img/g-data.raw", ""),
                "sda": (False, "/iso/install.iso", ""),
                "vdc": (False, "/srv/img/seed.raw", ""),
                "vde": (False, "/shared/g-logs.qcow2", ""),
            },
            id="shared: nothing copied, every file disk expected at its mapped path",
        ),
    ],
)
def test_plan_disks(storage, migrate_disks, expected):
    assert summary(plan_disks(ALL, storage, migrate_disks, MAP)) == expected


def test_plan_carries_sizes_and_format():
    plans = plan_disks([ROOT, NOFMT], StorageMode.COPY_INC, [], HostMapping())
    assert plans == [
        DiskPlan(
            target="vda",
            source=ROOT.source,
            destination=ROOT.source,
            format="qcow2",
            virtual_size=10 << 30,
            allocation=2 << 30,
            backing_file=ROOT.backing_chain[0],
            copy=True,
        ),
        DiskPlan(
            target="vdd", source=NOFMT.source, destination=NOFMT.source, format="raw", virtual_size=1 << 20, copy=True
        ),
    ]


@pytest.mark.parametrize(
    ("disk", "storage", "allocation"),
    [
        # copy-inc copies the top layer onto the base the target has: the top layer's allocation
        (ROOT, StorageMode.COPY_INC, 2 << 30),
        # copy-all flattens the chain into one image: every layer's data, which nothing measured (0:
        # count the virtual size), not the top layer's 2 GiB
        (ROOT, StorageMode.COPY_ALL, 0),
        (replace(DATA, allocation=512 << 20), StorageMode.COPY_ALL, 512 << 20),  # no chain: what it holds
        (ROOT, StorageMode.SHARED, 2 << 30),  # not copied: the disk's own figure
    ],
)
def test_the_allocation_a_copy_is_expected_to_write(disk, storage, allocation):
    [plan] = plan_disks([disk], storage, [], HostMapping())
    assert plan.allocation == allocation


@pytest.mark.parametrize(
    ("storage", "migrate_disks", "reason", "hint_has"),
    [
        (StorageMode.COPY_ALL, ["vdz"], "DISK_NOT_IN_DOMAIN", "vda, vdb, sda, sdb, vdc, vde"),
        (StorageMode.COPY_INC, ["vda", "hdq"], "DISK_NOT_IN_DOMAIN", "vda, vdb"),
        (StorageMode.COPY_ALL, ["sda"], "DISK_NOT_COPYABLE", "writable file disks"),
        (StorageMode.COPY_ALL, ["sdb"], "DISK_NOT_COPYABLE", "writable file disks"),
        (StorageMode.COPY_ALL, ["vdc"], "DISK_NOT_COPYABLE", "writable file disks"),
        (StorageMode.SHARED, ["vda"], "MIGRATE_DISKS_WITH_SHARED", "--copy-storage-all"),
    ],
)
def test_plan_disks_refuses(storage, migrate_disks, reason, hint_has):
    with pytest.raises(InvalidArgument) as err:
        plan_disks(ALL, storage, migrate_disks, MAP)
    assert err.value.reason == reason
    assert hint_has in err.value.hint
