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
        (Q72, 8_000_000, []),  # newer target: QEMU keeps older machine types for years
        (Q72, 6_002_000, ["VERSION_TOO_OLD"]),
        # an older minor: each QEMU release brings its own machine type (pc-q35-7.2 is not in 7.1),
        # and without the target's machine types the guest's may be the source's newest
        (Q72, 7_001_000, ["VERSION_TOO_OLD"]),
        (8_002_000, 8_000_000, ["VERSION_TOO_OLD"]),
        (7_002_022, Q72, []),  # a stable update brings no machine type
        (Q72, 10_000_000, []),  # Debian 12 -> 13, the rolling upgrade: QEMU 10.0 still has pc-q35-7.2
        (5_000_000, 8_000_000, []),  # 3 majors on
        (4_002_000, 10_000_000, ["VERSION_SKEW"]),  # 6 majors on: QEMU may have removed 4.2's types
        (0, 8_000_000, []),  # unknown versions pass
        (Q72, 0, []),
    ],
)
def test_qemu_versions_without_machine_types(src, dst, expected):
    """An agent from before machine types: the conservative rule of the versions."""
    assert [b.reason for b in version_blockers(facts("a", qemu=src), facts("b", qemu=dst))] == expected


def _releases(first: str, last: str) -> list[str]:
    last_minor = {2: 12, 3: 1, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2, 9: 2, 10: 0}
    out = [f"{major}.{minor}" for major, n in last_minor.items() for minor in range(n + 1)]
    return out[out.index(first) : out.index(last) + 1]


# Debian 13's QEMU 10.0 (x86_64): pc-i440fx and pc-q35 from 2.4 (pc-i440fx-1.4 to 2.3 are gone), the aliases
QEMU_10 = (
    "pc",
    "q35",
    *(f"pc-i440fx-{r}" for r in _releases("2.4", "10.0")),
    *(f"pc-q35-{r}" for r in _releases("2.4", "10.0")),
    "pc-q35-4.0.1",
    "microvm",
)


@pytest.mark.parametrize(
    ("machine", "src", "dst", "offered", "expected"),
    [
        # the target lists its machine types: they decide, not the versions
        ("pc-q35-8.2", 8_002_000, 8_000_000, ("pc-q35-8.0", "q35"), ["MACHINE_TYPE_MISSING"]),
        ("pc-q35-8.0", 8_002_000, 8_000_000, ("pc-q35-8.0", "q35"), []),  # to an older QEMU that has it
        ("pc-q35-7.2", Q72, 10_000_000, QEMU_10, []),  # Debian 12 -> 13
        ("pc-q35-2.4", Q72, 10_000_000, QEMU_10, []),  # 8 majors apart, and still there
        ("pc-i440fx-2.3", Q72, 10_000_000, QEMU_10, ["MACHINE_TYPE_MISSING"]),  # removed by QEMU 10.0
        ("pc-q35-rhel9.4.0", 8_002_000, 8_002_000, QEMU_10, ["MACHINE_TYPE_MISSING"]),  # a distribution's own
        ("pc-q35-6.2", Q72, 6_002_000, ("pc-q35-6.1", "pc-q35-6.2"), []),  # an older major that has it
        # the target does not report its machine types (an older agent): a versioned one against its QEMU
        ("pc-q35-8.2", 8_002_000, 8_000_000, (), ["MACHINE_TYPE_MISSING"]),
        ("pc-q35-8.2", 8_002_000, 8_001_009, (), ["MACHINE_TYPE_MISSING"]),
        ("pc-q35-7.2", 8_002_000, 8_000_000, (), []),  # an older QEMU, but the machine type is older still
        ("pc-q35-4.0.1", 4_001_000, 4_000_000, (), ["MACHINE_TYPE_MISSING"]),  # came with the stable 4.0.1
        ("pc-q35-7.2", Q72, 10_000_000, (), []),
        ("pc-q35-2.4", Q72, 10_000_000, (), ["VERSION_SKEW"]),  # conservatively: past QEMU's 6 years
        # neither the target's machine types nor a versioned guest one: the hosts' versions
        ("q35", 8_002_000, 8_000_000, (), ["VERSION_TOO_OLD"]),
        ("", 8_002_000, 8_000_000, ("pc-q35-8.2",), ["VERSION_TOO_OLD"]),  # an older source agent
        ("", Q72, 10_000_000, QEMU_10, []),
    ],
)
def test_machine_types(machine, src, dst, offered, expected):
    source, target = facts("host1", qemu=src), replace(facts("host2", qemu=dst), machine_types=offered)
    assert [b.reason for b in version_blockers(source, target, replace(dom(), machine=machine))] == expected


def test_a_missing_machine_type_says_which_qemu_the_target_needs():
    target = replace(facts("host2", qemu=8_000_000), machine_types=("pc-q35-7.2", "pc-q35-8.0", "q35"))
    [p] = version_blockers(facts("host1", qemu=8_002_000), target, replace(dom(), machine="pc-q35-8.2"))
    assert (
        p.message == "g1 runs machine type pc-q35-8.2, which QEMU 8.0.0 on host2 does not have: it came with QEMU 8.2"
    )
    assert p.hint == (
        "pick a target whose QEMU is 8.2 or newer, upgrade QEMU on host2 to 8.2 or later, or give g1 a machine "
        "type host2 has (its newest of the kind: pc-q35-8.0) and restart it cold (shut down, virsh edit, start)"
    )
    [gone] = version_blockers(
        facts("host1", qemu=Q72),
        replace(facts("host2", qemu=10_000_000), machine_types=QEMU_10),
        replace(dom(), machine="pc-i440fx-2.3"),
    )
    assert "which QEMU 10.0.0 on host2 no longer has" in gone.message
    assert gone.hint.startswith("pick a target whose QEMU still has pc-i440fx-2.3 (an older release), or give g1")
    assert "(its newest of the kind: pc-i440fx-10.0)" in gone.hint


def test_a_guest_of_another_qemu_binary_is_not_judged_by_the_hosts_machine_types():
    """The hosts report the machine types and version of their default QEMU binary: a guest that
    names another (the lab's run Debian 13's QEMU from their own path) is left to the target's dry run."""
    own = "/usr/bin/qemu-system-x86_64"
    source = replace(facts("host1", qemu=8_002_000), emulator=own)
    target = replace(facts("host2", qemu=8_000_000), machine_types=("pc-q35-8.0",), emulator=own)
    guest = replace(dom(), machine="pc-q35-8.2", emulator="/opt/qemu-9/bin/qemu-system-x86_64")
    assert version_blockers(source, target, guest) == []
    assert [b.reason for b in version_blockers(source, target, replace(guest, emulator=own))] == [
        "MACHINE_TYPE_MISSING"
    ]
    # an older target agent: the source's binary tells whether the versions are the guest's QEMU's
    old = replace(target, machine_types=(), emulator="")
    assert version_blockers(source, old, guest) == []
    assert [b.reason for b in version_blockers(source, old, replace(guest, emulator=own))] == ["MACHINE_TYPE_MISSING"]


def test_preflight_refuses_a_target_without_the_guests_machine_type():
    target = HostView("host2", True, replace(facts("host2", qemu=8_000_000), machine_types=("pc-q35-8.0",)))
    guest = replace(dom(), machine="pc-q35-8.2")
    assert reasons(domain=guest, source=host("host1", qemu=8_002_000), target=target) == ["MACHINE_TYPE_MISSING"]
    newer = HostView("host2", True, replace(facts("host2", qemu=10_000_000), machine_types=QEMU_10))
    assert reasons(domain=guest, source=host("host1", qemu=8_002_000), target=newer) == []


def test_a_pc_q35_8_2_guest_host_passthrough_is_refused_for_qemu_8_0():
    """The reviewer's case: a host-passthrough guest (no CPU comparison by the target agent) whose
    machine type is the source's newest, to an older minor QEMU, with and without machine types."""
    from ferry.agent.target_checks import TargetSnapshot, check_target, guest_cpu
    from ferry.coordinator.checks import host_cpu_blockers
    from ferry.model import HostMapping

    xml = (
        "<domain type='kvm'><name>g1</name><uuid>0d6f7c4e-5a3b-4c8e-9f1a-2b3c4d5e6f70</uuid>"
        "<memory unit='MiB'>256</memory><os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os>"
        "<cpu mode='host-passthrough' check='none'/><devices/></domain>"
    )
    assert not guest_cpu(xml).comparable
    guest = replace(dom(), cpu_mode="host-passthrough", machine="pc-q35-8.2")
    src = replace(facts("host1", qemu=8_002_000), cpu_model="Skylake")
    for offered in (("pc-q35-8.0", "q35"), ()):
        dst = replace(facts("host2", qemu=8_000_000), cpu_model="Skylake", machine_types=offered)
        found = [
            *version_blockers(src, dst, guest),
            *host_cpu_blockers("g1", guest, src, dst),
            *check_target(xml, [], HostMapping(), StorageMode.SHARED, TargetSnapshot("host2", cpu=None)),
        ]
        assert [p.reason for p in found] == ["MACHINE_TYPE_MISSING"]


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
