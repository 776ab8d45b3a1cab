"""One suite, two Hypervisors: FakeHypervisor and LibvirtHypervisor against the real lab hosts.

The same situations must give the same answers (values, error types and reasons) on both, so
the component tests that run on the fake say something true about real libvirt.

The real side runs in the test process, i.e. in the root network namespace, where the lab's
addresses are not routed: the adapter reaches both libvirtds through their unix sockets and is
told (``peer_uris``) how to reach host2's libvirtd for its own calls to the target. The source
libvirtd itself migrates over the lab network, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from ferry.agent.domxml import rewrite_for_target
from ferry.errors import Aborted, FailedPrecondition, Internal, InvalidArgument, NotFound, Unavailable
from ferry.model import DomainState, HostMapping, JobStats, MigrationOptions, StorageMode
from ferry.ports import Hypervisor
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor, make_domain_xml

MiB = 1 << 20
IMAGES = "/var/lib/libvirt/images"
TO_HOST2 = HostMapping(bridges={"br-guest": "br-vm"})
DEAD_URI = "qemu+tcp://10.77.0.99/system"  # inside the lab network; nothing answers there
ALL_DISKS_COPIED = MigrationOptions(storage=StorageMode.COPY_ALL)


@dataclass
class World:
    kind: str
    src: Hypervisor
    dst: Hypervisor
    target_uri: str
    host_uuid: str
    new_guest: Callable[..., Awaitable[str]]  # (name, shared_disk=, dirty=, disk_mib=) -> disk path
    target_disk: Callable[[str, int], Awaitable[None]]  # create an image on host2
    guests: list[str] = field(default_factory=list)

    def name(self, short: str) -> str:
        return f"ct{self.kind[0]}-{short}"


# ---------------------------------------------------------------- the two worlds


@contextlib.asynccontextmanager
async def fake_world() -> AsyncIterator[World]:
    fleet = FakeFleet()
    shared = "/srv/lab-shared"
    h1 = FakeHostSystem(bridges=["br-guest"], dirs={IMAGES: 50 << 30, shared: 50 << 30})
    h2 = FakeHostSystem(bridges=["br-vm"], dirs={IMAGES: 50 << 30, shared: 50 << 30})
    for h in (h1, h2):
        h.dirs[shared].fs_type = "ext4"  # like the lab's shared dir: seen by both, not a shared FS
    # 50 ms per step of 100 simulated ms: slow enough for the abort test to act during the mirror
    src = FakeHypervisor(hostname="host1", uri="qemu+tcp://10.77.0.11/system", fleet=fleet, host=h1, step_s=0.05)
    dst = FakeHypervisor(hostname="host2", uri="qemu+tcp://10.77.0.12/system", fleet=fleet, host=h2)

    async def new_guest(name: str, *, shared_disk: bool = False, dirty: bool = False, disk_mib: int = 256) -> str:
        path = f"{shared}/{name}-vda.qcow2" if shared_disk else f"{IMAGES}/{name}-vda.qcow2"
        for h in (h1, h2) if shared_disk else (h1,):
            h.files[path] = disk_mib * MiB
        src.add_domain(
            make_domain_xml(name, disks=[("vda", path, "qcow2")], bridges=["br-guest"]),
            dirty_bytes_per_s=(4 << 30) if dirty else 0,
        )
        return path

    async def target_disk(path: str, size: int) -> None:
        h2.create_image(path, fmt="qcow2", virtual_size=size)

    yield World("fake", src, dst, dst.uri, src.host_uuid, new_guest, target_disk)


@contextlib.asynccontextmanager
async def real_world(lab) -> AsyncIterator[World]:
    from ferry.agent.libvirt_hypervisor import LibvirtHypervisor

    src = LibvirtHypervisor(
        lab.libvirt_uri("host1"),
        60,
        peer_uris={
            lab.tcp_uri("host2"): lab.libvirt_uri("host2"),
            DEAD_URI: "qemu:///system?socket=/nonexistent/libvirt-sock",
        },
    )
    dst = LibvirtHypervisor(lab.libvirt_uri("host2"), 60)
    disks: list[tuple[str, str]] = []

    async def new_guest(name: str, *, shared_disk: bool = False, dirty: bool = False, disk_mib: int = 256) -> str:
        info = await asyncio.to_thread(
            lab.guest, name, "host1", shared=shared_disk, disks=(f"{disk_mib}M",), dirty_rate="max" if dirty else None
        )
        world.guests.append(name)
        path = info.disks[0].path
        disks.append(("host1", path))
        return path

    async def target_disk(path: str, size: int) -> None:
        await asyncio.to_thread(lab.host_exec, "host2", "qemu-img", "create", "-q", "-f", "qcow2", path, str(size))
        disks.append(("host2", path))

    world = World("real", src, dst, lab.tcp_uri("host2"), lab.host("host1").host_uuid, new_guest, target_disk)
    try:
        yield world
    finally:

        def clean() -> None:
            for name in world.guests:
                for host in ("host1", "host2"):
                    lab.virsh(host, "destroy", name, check=False)
                    lab.virsh(host, "undefine", name, check=False)
            for host, path in disks:
                lab.host_exec(host, "rm", "-f", path, check=False)

        await asyncio.to_thread(clean)
        src.close()
        dst.close()


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.lab)])
async def world(request) -> AsyncIterator[World]:
    if request.param == "fake":
        async with fake_world() as w:
            yield w
    else:
        async with real_world(request.getfixturevalue("lab")) as w:
            yield w


async def destination_xml(w: World, name: str) -> str:
    return rewrite_for_target(await w.src.domain_xml(name), TO_HOST2, [])


async def running_on_source(w: World, name: str) -> None:
    assert (await w.src.get_domain(name)).state is DomainState.RUNNING
    assert await w.dst.find_domain(name=name) is None


# ---------------------------------------------------------------- reading


async def test_host_facts(world):
    facts = await world.src.host_facts()
    assert facts.hostname == "host1"
    assert facts.host_uuid == world.host_uuid
    assert facts.libvirt_version >= 9_000_000 and facts.qemu_version > 0
    assert facts.memory_total_bytes >= facts.memory_free_bytes > 0 and facts.cpus > 0
    assert facts.arch == "x86_64"
    assert isinstance(facts.networks, tuple)
    # its default QEMU for x86_64 and that binary's machine types, aliases included (Debian's QEMU on
    # the lab, Debian 12's list in the fake): pc-q35-7.2 is the lab guests'
    assert facts.emulator == "/usr/bin/qemu-system-x86_64"
    assert {"pc-q35-7.2", "q35", "pc"} <= set(facts.machine_types)


async def test_ping(world):
    await world.src.ping()  # a round trip to libvirtd (the agent's LibvirtWatch)
    await world.dst.ping()


async def test_unknown_domain(world):
    for call in (
        world.src.get_domain("nope"),
        world.src.domain_xml("nope"),
        world.src.job_stats("nope"),
        world.src.abort_job("nope"),
    ):
        with pytest.raises(NotFound) as exc:
            await call
        assert exc.value.reason == "DOMAIN_NOT_FOUND"
    assert await world.src.find_domain(name="nope") is None
    assert await world.src.find_domain(uuid=str(uuidlib.uuid4())) is None


async def test_a_running_guest_without_a_job(world):
    name = world.name("idle")
    path = await world.new_guest(name)
    [dom] = [d for d in await world.src.list_domains() if d.name == name]
    assert (dom.state, dom.persistent, dom.memory_bytes) == (DomainState.RUNNING, True, 256 * MiB)
    assert [(d.target, d.source, d.virtual_size) for d in dom.disks] == [("vda", path, 256 * MiB)]
    assert [(n.type, n.source) for n in dom.nics] == [("bridge", "br-guest")]
    # its machine type by its versioned name (never an alias), one its host's QEMU offers
    assert dom.machine.startswith("pc-") and dom.machine in (await world.src.host_facts()).machine_types
    assert (await world.src.get_domain(dom.uuid)).name == name
    assert (await world.src.find_domain(uuid=dom.uuid)).name == name
    assert f"<name>{name}</name>" in await world.src.domain_xml(name)
    assert await world.src.job_stats(name) == JobStats()
    assert (await world.src.job_stats(name, completed=True)).job_type == "none"
    assert await world.src.abort_job(name) is False
    await world.src.set_max_downtime(name, 500)  # kept for the next migration
    await world.src.set_bandwidth(name, 100)
    with pytest.raises(FailedPrecondition) as exc:
        await world.src.start_postcopy(name)
    assert exc.value.reason == "DOMAIN_STATE_INVALID"
    with pytest.raises(FailedPrecondition) as exc:  # a running guest is never an unfinished incoming copy
        await world.src.destroy_incoming(dom.uuid)
    assert exc.value.reason == "NOT_INCOMING"
    assert (await world.src.get_domain(dom.uuid)).state is DomainState.RUNNING
    assert await world.src.destroy_incoming(str(uuidlib.uuid4())) is False  # nothing there: nothing to do


# ---------------------------------------------------------------- CPU and peers


QEMU64 = "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>qemu64</model>{}</cpu>"


async def test_cpu_comparison(world):
    """qemu64 runs on both hosts; AVX-512 is on neither (TCG, the fake's Haswell-class CPU); an
    unknown model cannot be compared."""

    async def compare(xml: str) -> str:
        return await world.dst.compare_cpu(
            xml, arch="x86_64", machine="pc-q35-7.2", virttype="qemu", emulator="/usr/bin/qemu-system-x86_64"
        )

    assert await compare(QEMU64.format("")) == ""
    why = await compare(QEMU64.format("<feature policy='require' name='avx512f'/>"))
    assert why == "Host CPU does not provide required features: avx512f"
    assert await compare(QEMU64.format("<feature policy='disable' name='sse2'/>")) == ""
    with pytest.raises(FailedPrecondition) as exc:
        await compare(QEMU64.replace("qemu64", "NoSuchModel").format(""))
    assert exc.value.reason == "CPU_CHECK_FAILED" and "NoSuchModel" in exc.value.message


async def test_probe_of_peers(world):
    assert await world.src.probe_peer(world.target_uri) >= 0
    with pytest.raises(Unavailable) as exc:
        await world.src.probe_peer(DEAD_URI)
    assert exc.value.reason == "TARGET_UNREACHABLE" and exc.value.hint
    with pytest.raises(InvalidArgument) as exc:
        await world.src.probe_peer("qemu+tcp:///system")
    assert exc.value.reason == "TARGET_URI_INVALID"


# ---------------------------------------------------------------- refused migrations


async def test_refused_migrations_leave_the_guest_running_on_the_source(world):
    name = world.name("refused")
    path = await world.new_guest(name)
    xml = await destination_xml(world, name)

    async def migrate(target_uri=world.target_uri, destination=xml, options=ALL_DISKS_COPIED, disks=("vda",)):
        await world.src.migrate(
            name,
            target_uri=target_uri,
            destination_xml=destination,
            options=options,
            migrate_disks=list(disks),
            timeout_s=120,
        )

    with pytest.raises(Unavailable) as exc:
        await migrate(target_uri=DEAD_URI)
    assert exc.value.reason == "TARGET_UNREACHABLE"
    with pytest.raises(FailedPrecondition) as exc:
        await migrate()  # no image on the target
    assert exc.value.reason == "TARGET_DISK_MISSING"
    with pytest.raises(FailedPrecondition) as exc:
        await migrate(options=MigrationOptions(storage=StorageMode.SHARED), disks=())  # local disk, not copied
    assert exc.value.reason == "MIGRATION_UNSAFE"
    await world.target_disk(path, 256 * MiB)
    with pytest.raises(Internal) as exc:
        await migrate(destination="")  # br-guest is not on host2
    assert exc.value.reason == "HOST_SYSTEM_ERROR" and "br-guest" in exc.value.message
    await running_on_source(world, name)


# ---------------------------------------------------------------- migrations


async def _watch(
    w: World, name: str, task: asyncio.Task[None], until: Callable[[JobStats], bool] | None = None
) -> list[JobStats]:
    seen = []
    while not task.done():
        with contextlib.suppress(NotFound):
            stats = await w.src.job_stats(name)
            seen.append(stats)
            if until is not None and until(stats):
                break
        await asyncio.wait({task}, timeout=0.05)
    return seen


async def test_copy_all_moves_the_guest(world):
    name = world.name("copy")
    path = await world.new_guest(name)
    uuid = (await world.src.get_domain(name)).uuid
    await world.target_disk(path, 256 * MiB)
    task = asyncio.create_task(
        world.src.migrate(
            name,
            target_uri=world.target_uri,
            destination_xml=await destination_xml(world, name),
            options=ALL_DISKS_COPIED,
            migrate_disks=["vda"],
            timeout_s=180,
        )
    )
    seen = await _watch(world, name, task)
    await task
    assert all(s.operation == "migration out" for s in seen if s.active)
    moved = await world.dst.get_domain(name)
    assert (moved.uuid, moved.state, moved.persistent) == (uuid, DomainState.RUNNING, True)
    assert [n.source for n in moved.nics] == ["br-vm"]
    assert await world.src.find_domain(uuid=uuid) is None  # undefined on the source
    done = await world.src.remote_completed_job(world.target_uri, name)
    assert done.job_type == "completed" and done.time_elapsed_ms > 0 and done.memory_processed > 0
    assert (await world.dst.job_stats(name, completed=True)).job_type == "completed"  # still there


async def test_shared_disk_moves_only_with_unsafe(world):
    """A plain directory both hosts see is not a shared file system to libvirt."""
    name = world.name("shared")
    await world.new_guest(name, shared_disk=True)
    xml = await destination_xml(world, name)
    with pytest.raises(FailedPrecondition) as exc:
        await world.src.migrate(
            name,
            target_uri=world.target_uri,
            destination_xml=xml,
            options=MigrationOptions(),
            migrate_disks=[],
            timeout_s=120,
        )
    assert exc.value.reason == "MIGRATION_UNSAFE"
    await world.src.migrate(
        name,
        target_uri=world.target_uri,
        destination_xml=xml,
        options=MigrationOptions(unsafe=True, undefine_source=False),
        migrate_disks=[],
        timeout_s=120,
    )
    assert (await world.dst.get_domain(name)).state is DomainState.RUNNING
    left = await world.src.get_domain(name)  # defined, shut off, on the source
    assert (left.state, left.persistent) == (DomainState.SHUTOFF, True)
    assert await world.src.job_stats(name) == JobStats()  # a shut-off domain has no job


async def test_abort_mid_way_leaves_the_guest_on_the_source(world):
    """A guest dirtying memory flat out (30-40 MiB/s under TCG), sent at 20 MiB/s: pre-copy
    never ends; abort it there. (The bandwidth limits the disk mirror too: a small disk.)"""
    name = world.name("abort")
    path = await world.new_guest(name, dirty=True, disk_mib=64)
    await world.target_disk(path, 64 * MiB)
    task = asyncio.create_task(
        world.src.migrate(
            name,
            target_uri=world.target_uri,
            destination_xml=await destination_xml(world, name),
            options=MigrationOptions(storage=StorageMode.COPY_ALL, bandwidth_mibps=20),
            migrate_disks=["vda"],
            timeout_s=300,
        )
    )
    try:
        seen = await _watch(world, name, task, until=lambda s: s.active and s.memory_processed > 0)
        assert not task.done() and seen[-1].memory_processed > 0  # in pre-copy
        assert await world.src.abort_job(name) is True
        with pytest.raises(Aborted) as exc:
            await task
        assert exc.value.reason == "MIGRATION_ABORTED"
        await running_on_source(world, name)
        assert (await world.src.job_stats(name)).active is False
    finally:
        if not task.done():
            with contextlib.suppress(Exception):
                await world.src.abort_job(name)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 60)
