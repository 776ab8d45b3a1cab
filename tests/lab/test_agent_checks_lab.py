"""The target checks, the probe and the source-disk removal against real libvirt hosts.

What an operator would check:
* a guest whose CPU needs a feature the target's hypervisor lacks (AVX-512 under TCG) is refused
  by the target's dry run, which names the feature, and a real prepare creates nothing;
* the source says why it cannot reach a target (a name that does not resolve, an address where
  nothing listens) within seconds;
* after a copy migration through the coordinator the source keeps no image of the guest, and the
  guest can be migrated back (which failed before with FILE_IN_THE_WAY on the source).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from fleetcli import SUCCEEDED, beats, ferry, history, images, ms, placement, remove_guests

from ferry.lab import Lab
from ferry.lab.domain import GuestSpec, domain_xml
from ferry.lab.topology import IMAGE_DIR
from ferry.rpc import create_channel, from_rpc_error
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import types_pb2 as tpb

pytestmark = pytest.mark.lab

MiB = 1 << 20
AVX512 = "<feature policy='require' name='avx512f'/>"


@pytest.fixture
async def agents(lab: Lab) -> AsyncIterator[dict[str, agrpc.AgentStub]]:
    channels = {h: create_channel(lab.agent_address(h)) for h in ("host1", "host2")}
    yield {h: agrpc.AgentStub(c) for h, c in channels.items()}
    for c in channels.values():
        await c.close()


@pytest.fixture
def guests(lab: Lab) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    remove_guests(lab, names)


def guest_xml(lab: Lab, name: str, *, cpu_extra: str = "", memory_mib: int = 256) -> str:
    """A lab guest's definition (shared-storage console, no disk), its qemu64 CPU with extras."""
    image = lab.guest_image()
    spec = GuestSpec(
        name=name,
        memory_mib=memory_mib,
        kernel=str(image.kernel),
        initrd=str(image.initrd),
        console_log=str(lab.paths.console_log(name)),
        bridge="br-guest",
    )
    xml = domain_xml(spec)
    assert '<model fallback="forbid">qemu64</model>' in xml
    return xml.replace('<model fallback="forbid">qemu64</model>', f'<model fallback="forbid">qemu64</model>{cpu_extra}')


def prepare_request(xml: str, *, dry_run: bool) -> apb.PrepareIncomingRequest:
    return apb.PrepareIncomingRequest(
        domain_xml=xml,
        mapping=tpb.HostMapping(bridges={"br-guest": "br-vm"}),
        storage=tpb.STORAGE_MODE_SHARED,
        migration_id="lab-cpu",
        dry_run=dry_run,
    )


# ---------------------------------------------------------------- the CPU and memory on the target


async def test_target_names_the_cpu_feature_its_hypervisor_lacks(lab, agents):
    host2 = agents["host2"]
    fine = await host2.PrepareIncoming(prepare_request(guest_xml(lab, "la-cpu"), dry_run=True), timeout=60)
    assert list(fine.problems) == []  # plain qemu64 runs under TCG
    refused = await host2.PrepareIncoming(
        prepare_request(guest_xml(lab, "la-cpu", cpu_extra=AVX512), dry_run=True), timeout=60
    )
    [p] = refused.problems
    assert p.reason == "CPU_INCOMPATIBLE", p
    assert "avx512f" in p.message and "host2" in p.message and "qemu64" in p.message
    assert "hypervisor-cpu-baseline" in p.hint
    print(f"\n[lab] host2's dry run: {p.reason}: {p.message}")


async def test_a_real_prepare_is_refused_for_the_cpu_and_creates_nothing(lab, agents):
    host2 = agents["host2"]
    before = images(lab, "host2", "la-cpu")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await host2.PrepareIncoming(
            prepare_request(guest_xml(lab, "la-cpu", cpu_extra=AVX512), dry_run=False), timeout=60
        )
    err = from_rpc_error(exc.value)
    assert (exc.value.code(), err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CPU_INCOMPATIBLE")
    assert images(lab, "host2", "la-cpu") == before
    listed = await host2.ListPrepares(apb.ListPreparesRequest(), timeout=30)
    assert not [p for p in listed.prepares if p.migration_id == "lab-cpu"]


async def test_target_names_memory_it_does_not_have(lab, agents):
    huge = guest_xml(lab, "la-huge", memory_mib=64 << 20)  # 64 TiB
    [p] = (await agents["host2"].PrepareIncoming(prepare_request(huge, dry_run=True), timeout=60)).problems
    assert p.reason == "INSUFFICIENT_MEMORY" and "64.0 TiB" in p.message and "available" in p.message


# ---------------------------------------------------------------- the source probes the target


async def test_the_source_probes_the_target(lab, agents):
    host1 = agents["host1"]
    ok = await host1.ProbeTarget(
        apb.ProbeTargetRequest(target_uri=lab.tcp_uri("host2"), migration_address=lab.host_ip("host2")), timeout=30
    )
    assert list(ok.problems) == []
    print(f"\n[lab] host1 -> {lab.tcp_uri('host2')}: reachable, {ok.latency_ms} ms")

    started = time.monotonic()
    bad_name = await host1.ProbeTarget(
        apb.ProbeTargetRequest(target_uri="qemu+tcp://no-such-host.invalid/system"), timeout=30
    )
    [p] = bad_name.problems
    assert p.reason == "TARGET_UNRESOLVABLE" and "no-such-host.invalid" in p.message
    assert "/etc/hosts on host1" in p.hint

    started = time.monotonic()
    nobody = await host1.ProbeTarget(apb.ProbeTargetRequest(target_uri="qemu+tcp://10.77.0.99/system"), timeout=30)
    took = time.monotonic() - started
    [p] = nobody.problems
    assert p.reason == "TARGET_UNREACHABLE" and "10.77.0.99" in p.message and "16509" in p.hint
    assert took < 6, f"the probe took {took:.1f} s"
    print(f"[lab] host1 -> 10.77.0.99: {p.reason} after {took:.1f} s: {p.message}")


# ---------------------------------------------------------------- copied disks, there and back


def test_copy_migration_there_and_back_leaves_no_image_behind(lab, agents, guests):
    name = "la-return"
    guests.append(name)
    lab.guest(name, "host1", disks=("64M",))
    image = f"{IMAGE_DIR}/{name}-vda.qcow2"

    there = ferry(lab, "migrate", name, "--to", "host2", "--copy-storage-all")
    assert there.code == 0 and there.data["phase"] == SUCCEEDED, there
    assert placement(lab, name) == {"host2": "running"}
    assert images(lab, "host1", name) == [], "the source keeps its copy"
    assert images(lab, "host2", name) == [f"{name}-vda.qcow2"]
    assert any(reason.startswith(f"source disks removed on host1: {image}") for _, reason in history(there.data))
    assert ms(there.data, "disk_processed") > 0  # the source counted the copy

    back = ferry(lab, "migrate", name, "--to", "host1", "--copy-storage-all")
    assert back.code == 0 and back.data["phase"] == SUCCEEDED, back
    assert placement(lab, name) == {"host1": "running"}
    assert images(lab, "host2", name) == [] and images(lab, "host1", name) == [f"{name}-vda.qcow2"]
    before, after = beats(lab, name)
    assert after > before
    print(f"\n[lab] {name} host1 -> host2 -> host1 with disk copy: {there.seconds:.1f} s + {back.seconds:.1f} s")


async def test_source_disks_of_a_guest_still_here_or_on_shared_storage_stay(lab, agents, guests):
    name = "la-stay"
    guests.append(name)
    info = lab.guest(name, "host1", disks=("32M",))
    uuid = (await agents["host1"].GetDomain(apb.GetDomainRequest(name=name), timeout=30)).domain.uuid
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await agents["host1"].RemoveSourceDisks(
            apb.RemoveSourceDisksRequest(domain_uuid=uuid, paths=[info.disks[0].path], migration_id="m-la-stay"),
            timeout=30,
        )
    assert from_rpc_error(exc.value).reason == "DOMAIN_STILL_HERE"
    shared = str(lab.paths.console_log(name))  # a file on the lab's shared dir
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await agents["host1"].RemoveSourceDisks(
            apb.RemoveSourceDisksRequest(
                domain_uuid="00000000-0000-4000-8000-000000000000", paths=[shared], migration_id="m-la-stay"
            ),
            timeout=30,
        )
    # no Migrate from host1 recorded that migration: nothing is removed, shared storage least of all
    # (PATH_NOT_LOCAL for a recorded migration naming a shared path: tests/unit/test_source_disks.py)
    assert (exc.value.code(), from_rpc_error(exc.value).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "MIGRATION_NOT_RECORDED",
    )
    assert images(lab, "host1", name) == [f"{name}-vda.qcow2"]
    assert lab.paths.console_log(name).exists()
