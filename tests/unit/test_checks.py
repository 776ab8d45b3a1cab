"""Coordinator-side preflight checks: each situation yields exactly its reason codes."""

from dataclasses import replace

import pytest

from ferry.coordinator.checks import HostView, coordinator_blockers, effective_storage, version_blockers
from ferry.model import Disk, DomainInfo, DomainState, HostFacts, MigrationOptions, StorageMode

V9 = 9_000_000
Q72 = 7_002_000


def facts(name, qemu=Q72, libvirt=V9, free=8 << 30, arch="x86_64"):
    return HostFacts(
        hostname=name, host_uuid=name, qemu_version=qemu, libvirt_version=libvirt, memory_free_bytes=free, arch=arch
    )


def host(name, available=True, **kw):
    return HostView(name, available, facts(name, **kw))


LOCAL = Disk(target="vda", source="/var/lib/libvirt/images/g1.qcow2", format="qcow2", cache="none")
SHARED_OK = Disk(target="vda", source="/shared/g1.qcow2", format="qcow2", cache="none", shared=True)
SHARED_WB = Disk(target="vda", source="/shared/g1.qcow2", format="qcow2", cache="writeback", shared=True)
# in the agent's shared_dirs, on a file system libvirt does not take for shared (ext4, lustre, ...)
SHARED_BY_WORD = replace(SHARED_OK, shared_unknown_to_libvirt=True)


def dom(state=DomainState.RUNNING, disks=(LOCAL,), memory=256 << 20, persistent=True):
    return DomainInfo(name="g1", uuid="u1", state=state, memory_bytes=memory, disks=disks, persistent=persistent)


def reasons(**kw):
    args = dict(
        vm="g1",
        domain=dom(),
        source=host("host1"),
        target_name="host2",
        target=host("host2"),
        options=MigrationOptions(),
        storage=StorageMode.COPY_ALL,
    )
    args.update(kw)
    return [b.reason for b in coordinator_blockers(**args)]


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({}, []),
        ({"target": None, "target_name": "nohost"}, ["TARGET_UNKNOWN"]),
        ({"target": host("host2", available=False)}, ["TARGET_DOWN"]),
        ({"domain": None, "source": None}, ["VM_UNKNOWN"]),
        ({"target_name": "host1", "target": host("host1")}, ["SAME_HOST"]),
        ({"domain": dom(state=DomainState.SHUTOFF)}, ["VM_NOT_RUNNING"]),
        # offline moves the definition only: libvirt cannot copy a disk then, nor may one stay behind
        ({"domain": dom(state=DomainState.SHUTOFF), "options": MigrationOptions(offline=True)}, ["OFFLINE_LOCAL_DISK"]),
        (
            {
                "domain": dom(state=DomainState.SHUTOFF),
                "options": MigrationOptions(offline=True),
                "storage": StorageMode.SHARED,
            },
            ["OFFLINE_LOCAL_DISK"],
        ),
        (
            {
                "domain": dom(state=DomainState.SHUTOFF, disks=(SHARED_OK,)),
                "options": MigrationOptions(offline=True),
                "storage": StorageMode.SHARED,
            },
            [],
        ),
        (
            {"domain": dom(persistent=False), "options": MigrationOptions(offline=True)},
            ["VM_TRANSIENT", "OFFLINE_LOCAL_DISK"],
        ),
        ({"target": host("host2", free=128 << 20)}, ["INSUFFICIENT_MEMORY"]),
        ({"target": host("host2", arch="aarch64")}, ["ARCH_MISMATCH"]),
        # a cloned install: libvirt takes both for one machine and refuses the migration
        ({"target": HostView("host2", True, replace(facts("host2"), host_uuid="HOST1"))}, ["HOST_UUID_SHARED"]),
        # its advertised URI reaches another machine's libvirtd (its agent found it)
        (
            {"target": HostView("host2", True, replace(facts("host2"), libvirt_uri_problem="reaches host3"))},
            ["TARGET_URI_MISMATCH"],
        ),
        ({"storage": StorageMode.SHARED}, ["DISK_NOT_SHARED"]),
        ({"storage": StorageMode.SHARED, "domain": dom(disks=(SHARED_OK,))}, []),
        ({"storage": StorageMode.SHARED, "domain": dom(disks=(SHARED_WB,))}, ["UNSAFE_CACHE"]),
        ({"storage": StorageMode.SHARED, "domain": dom(disks=(SHARED_BY_WORD,))}, ["MIGRATION_UNSAFE"]),
        (
            {
                "storage": StorageMode.SHARED,
                "domain": dom(disks=(SHARED_BY_WORD,)),
                "options": MigrationOptions(unsafe=True),
            },
            [],
        ),
        (
            {
                "storage": StorageMode.SHARED,
                "domain": dom(disks=(SHARED_WB,)),
                "options": MigrationOptions(unsafe=True),
            },
            [],
        ),
        ({"options": MigrationOptions(migrate_disks=("vdz",))}, ["UNKNOWN_DISK"]),
        ({"source": host("host1", available=False)}, ["SOURCE_DOWN"]),
        # several at once: all reported
        (
            {"target": host("host2", free=1 << 20, arch="ppc64le"), "domain": dom(state=DomainState.SHUTOFF)},
            ["VM_NOT_RUNNING", "ARCH_MISMATCH", "INSUFFICIENT_MEMORY"],
        ),
    ],
)
def test_blockers(kw, expected):
    assert reasons(**kw) == expected


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (Q72, Q72, []),
        (Q72, 8_000_000, []),  # newer target, close: fine
        (Q72, 6_002_000, ["VERSION_TOO_OLD"]),
        (Q72, 7_001_000, []),  # older minor: QEMU keeps machine types across minors
        (5_000_000, 8_000_000, ["VERSION_SKEW"]),
    ],
)
def test_qemu_versions(src, dst, expected):
    assert [b.reason for b in version_blockers(facts("a", qemu=src), facts("b", qemu=dst))] == expected


def test_every_blocker_has_a_hint():
    out = coordinator_blockers(
        "g1",
        dom(state=DomainState.SHUTOFF),
        host("host1", available=False),
        "host2",
        host("host2", free=1, arch="ppc64le", qemu=1_000_000),
        MigrationOptions(),
        StorageMode.SHARED,
    )
    assert out and all(b.hint for b in out)


@pytest.mark.parametrize(
    ("disks", "storage"),
    [
        ((LOCAL,), StorageMode.COPY_ALL),
        ((SHARED_OK,), StorageMode.SHARED),
        ((), StorageMode.SHARED),
        ((Disk(target="vdb", source="/x.iso", device="cdrom", readonly=True),), StorageMode.SHARED),
    ],
)
def test_auto_storage(disks, storage):
    assert effective_storage(dom(disks=disks), MigrationOptions(), explicit=False) == storage


def test_a_stopped_vm_with_a_local_disk_is_not_sent_to_offline():
    """--offline cannot copy a local disk: the hint of a stopped VM says so instead of offering it."""
    from ferry.coordinator.checks import vm_blockers

    [local] = vm_blockers(dom(state=DomainState.SHUTOFF), "host1", MigrationOptions())
    assert local.reason == "VM_NOT_RUNNING"
    assert local.hint == (
        "start it (virsh start g1 on host1) and migrate it live; --offline moves only the definition "
        "and cannot copy its local disk vda"
    )
    [shared] = vm_blockers(dom(state=DomainState.SHUTOFF, disks=(SHARED_OK,)), "host1", MigrationOptions())
    assert shared.hint == "start it, or migrate with --offline"
