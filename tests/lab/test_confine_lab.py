"""The confined agent on real hosts: a copy migration through the fleet still works end to end (the
target checks, the registry-backed target check, the source's record of what it copied), and on
the same real agents, libvirtd and disks, what issue 7 found possible is refused.

What the operator checks: the guest runs on the target only, beats, with one boot; its source
image is gone (removed because the source recorded copying it); a Migrate to an address that is
no registered host, a RemoveSourceDisks with a made-up UUID, a prepare into /etc/cron.d and a
mapping override out of the image directory are refused with their reason codes, and nothing
appeared in /etc/cron.d or disappeared from the image directory. Run with ``-s`` for the numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from fleetcli import SUCCEEDED, beats, ferry, history, images, placement, remove_guests

from ferry.lab import Lab
from ferry.lab.topology import IMAGE_DIR
from ferry.rpc import create_channel, from_rpc_error
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import types_pb2 as tpb

pytestmark = pytest.mark.lab

NAME = "cf-move"
CRON = "/etc/cron.d"


@pytest.fixture
def guest(lab: Lab) -> Iterator[str]:
    lab.guest(NAME, "host1", disks=("64M",))
    yield NAME
    remove_guests(lab, [NAME])


def refusal(lab: Lab, host: str, call: str, request: object) -> tuple[grpc.StatusCode, str]:
    """Call the real agent on ``host`` (its unix socket); the refusal's code and reason."""

    async def ask() -> tuple[grpc.StatusCode, str]:
        async with create_channel(lab.agent_address(host)) as channel:
            method = getattr(agrpc.AgentStub(channel), call)
            try:
                if call == "Migrate":
                    [_ async for _ in method(request, timeout=60)]
                else:
                    await method(request, timeout=60)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), from_rpc_error(exc).reason
        raise AssertionError(f"{call} on {host} was not refused")

    return asyncio.run(ask())


def cron_files(lab: Lab, host: str) -> list[str]:
    return sorted(lab.host_exec(host, "ls", "-1", CRON, check=False).stdout.split())


def test_a_copy_migration_works_and_what_escapes_is_refused(lab: Lab, guest: str) -> None:
    lab.wait_for_heartbeat(guest, above=2, timeout=60)
    cron_before = {h: cron_files(lab, h) for h in ("host1", "host2")}

    # the whole fleet path: prepare inside the image dir, Migrate to the registered host2, the
    # source removes the image it recorded copying
    run = ferry(lab, "migrate", guest, "--to", "host2", "--copy-storage-all")
    assert run.code == 0 and run.data["phase"] == SUCCEEDED, run
    assert placement(lab, guest) == {"host2": "running"}
    before, after = beats(lab, guest)
    assert after > before and lab.console(guest).count("GUEST-BOOTED") == 1
    assert images(lab, "host1", guest) == [] and images(lab, "host2", guest) == [f"{guest}-vda.qcow2"]
    assert any("source disks removed on host1" in h["reason"] for h in run.data["history"]), history(run.data)
    print(f"\n[confine] {guest} host1 -> host2 --copy-storage-all: {run.seconds:.1f} s, source image removed")

    image = f"{IMAGE_DIR}/{guest}-vda.qcow2"
    uuid = next(v["domain"]["uuid"] for v in run_vms(lab) if v["domain"]["name"] == guest)

    # Migrate to an address that is no registered host: refused before libvirt connects anywhere
    migrate = apb.MigrateRequest(
        domain=guest,
        target_uri="qemu+tcp://10.77.0.99/system",
        migration_id="m-cf-evil",
        options=tpb.MigrationOptions(storage=tpb.STORAGE_MODE_COPY_ALL),
    )
    assert refusal(lab, "host2", "Migrate", migrate) == (grpc.StatusCode.FAILED_PRECONDITION, "TARGET_NOT_REGISTERED")

    # RemoveSourceDisks with a made-up UUID (and the migration's real id): removes nothing
    remove = apb.RemoveSourceDisksRequest(
        domain_uuid="99999999-9999-4999-8999-999999999999", paths=[image], migration_id=run.data["id"]
    )
    assert refusal(lab, "host2", "RemoveSourceDisks", remove) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "MIGRATION_NOT_RECORDED",
    )
    # nor with the real UUID on the host it runs on
    remove.domain_uuid = uuid
    assert refusal(lab, "host2", "RemoveSourceDisks", remove)[1] == "DOMAIN_STILL_HERE"
    assert images(lab, "host2", guest) == [f"{guest}-vda.qcow2"]

    # a prepare on host1 straight into /etc/cron.d
    got = asyncio.run(domain_xml(lab, "host2", guest))
    prepare = apb.PrepareIncomingRequest(
        domain_xml=got,
        disks=[tpb.DiskPlan(target="vda", destination=f"{CRON}/ferry-cf.qcow2", virtual_size=64 << 20, copy=True)],
        mapping=tpb.HostMapping(bridges={"br-vm": "br-guest"}),
        storage=tpb.STORAGE_MODE_COPY_ALL,
    )
    assert refusal(lab, "host1", "PrepareIncoming", prepare) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "PATH_OUTSIDE_IMAGE_DIRS",
    )

    # back to host1 with a mapping override out of the image directory: refused at submit
    escape = f"{IMAGE_DIR}={IMAGE_DIR}/../../../../etc/cron.d"
    back = ferry(lab, "migrate", guest, "--to", "host1", "--copy-storage-all", "--map-path", escape)
    assert back.code == 2 and back.error["reason"] == "PATH_DOTDOT", back

    assert {h: cron_files(lab, h) for h in ("host1", "host2")} == cron_before  # nothing landed there
    assert placement(lab, guest) == {"host2": "running"}
    assert lab.console(guest).count("GUEST-BOOTED") == 1


def run_vms(lab: Lab) -> list[dict]:
    run = ferry(lab, "vms")
    assert run.code == 0, run
    return list(run.data.get("vms", []))


async def domain_xml(lab: Lab, host: str, name: str) -> str:
    async with create_channel(lab.agent_address(host)) as channel:
        got = await agrpc.AgentStub(channel).GetDomain(apb.GetDomainRequest(name=name, include_xml=True), timeout=30)
        return got.xml
