"""PrepareIncoming on a real lab host refuses what cannot work, with the right gRPC status, reason
and hint, and creates nothing; a dry run lists every problem at once.

The request is built as the coordinator builds it: the source agent's GetDomain (XML and disks
with their sizes) and ferry.diskplan, for a running guest on host1 (NIC on br-guest, one
local 64 MiB disk); host2 has bridge br-vm and its own local image directory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest
from agentflow import agent, image_files, remove_guest

from ferry import convert
from ferry.diskplan import plan_disks
from ferry.lab import Lab
from ferry.lab.guests import GuestInfo
from ferry.model import DiskPlan, HostMapping, StorageMode
from ferry.rpc import from_rpc_error
from ferry.v1 import agent_pb2 as apb

pytestmark = pytest.mark.lab

GUEST = "agp-src"
TO_HOST2 = HostMapping(bridges={"br-guest": "br-vm"})
PiB = 1 << 50


@pytest.fixture(scope="module")
def source_guest(lab: Lab) -> Iterator[GuestInfo]:
    try:
        yield lab.guest(GUEST, "host1", disks=("64M",), nic=True)
    finally:
        asyncio.run(remove_guest(lab, GUEST))


@pytest.fixture
def host2_untouched(lab: Lab, source_guest: GuestInfo) -> Iterator[None]:
    """Whatever a test does, host2's image directory ends as it began (checked afterwards)."""
    before = image_files(lab, "host2")
    yield
    assert image_files(lab, "host2") == before


async def request(
    lab: Lab, *, mapping: HostMapping, huge: bool = False, dry_run: bool = False
) -> apb.PrepareIncomingRequest:
    """The prepare the coordinator would send to host2 for a copy-storage migration of the guest
    (``huge``: its disk planned at 1 PiB, more than any lab host has)."""
    async with agent(lab, "host1") as source:
        got = await source.GetDomain(apb.GetDomainRequest(name=GUEST, include_xml=True), timeout=30)
    plans: list[DiskPlan] = plan_disks(convert.domain_from_pb(got.domain).disks, StorageMode.COPY_ALL, (), mapping)
    if huge:
        plans = [replace(p, virtual_size=PiB, allocation=PiB) for p in plans]
    return apb.PrepareIncomingRequest(
        domain_xml=got.xml,
        disks=[convert.disk_plan_to_pb(p) for p in plans],
        mapping=convert.mapping_to_pb(mapping),
        storage=convert.storage_mode_to_pb(StorageMode.COPY_ALL),
        migration_id="agp",
        dry_run=dry_run,
    )


async def refused(lab: Lab, req: apb.PrepareIncomingRequest) -> tuple[grpc.StatusCode, str, str]:
    """Send ``req`` to host2, expect a refusal; (status code, reason, hint). No prepare is left."""
    async with agent(lab, "host2") as target:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await target.PrepareIncoming(req, timeout=60)
        assert list((await target.ListPrepares(apb.ListPreparesRequest(), timeout=30)).prepares) == []
    err = from_rpc_error(exc.value)
    print(f"refused: {exc.value.code().name} {err.reason}: {err}")
    return exc.value.code(), err.reason, err.hint


@pytest.fixture
def file_in_the_way(lab: Lab, source_guest: GuestInfo) -> Iterator[str]:
    """An operator's file at the guest's disk path on host2 (removed afterwards)."""
    path = source_guest.disks[0].path
    lab.host_exec("host2", "sh", "-c", f"echo keep-me > {path}")
    try:
        yield path
        assert lab.host_exec("host2", "cat", path).stdout == "keep-me\n"  # never touched
    finally:
        lab.host_exec("host2", "rm", "-f", path)


async def test_missing_bridge(lab, host2_untouched):
    code, reason, hint = await refused(lab, await request(lab, mapping=HostMapping()))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BRIDGE_MISSING")
    assert "br-vm" in hint and "br-guest" in hint


async def test_too_little_space(lab, host2_untouched):
    code, reason, hint = await refused(lab, await request(lab, mapping=TO_HOST2, huge=True))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_SPACE")
    assert "free" in hint


async def test_file_in_the_way(lab, file_in_the_way, host2_untouched):
    code, reason, hint = await refused(lab, await request(lab, mapping=TO_HOST2))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "FILE_IN_THE_WAY")
    assert file_in_the_way in hint


async def test_dry_run_lists_every_problem_at_once(lab, file_in_the_way, host2_untouched):
    async with agent(lab, "host2") as target:
        out = await target.PrepareIncoming(
            await request(lab, mapping=HostMapping(), huge=True, dry_run=True), timeout=60
        )
        assert list((await target.ListPrepares(apb.ListPreparesRequest(), timeout=30)).prepares) == []
    for p in out.problems:
        print(f"dry run: {p.reason}: {p.message} (hint: {p.hint})")
    assert [p.reason for p in out.problems] == ["BRIDGE_MISSING", "FILE_IN_THE_WAY", "INSUFFICIENT_SPACE"]
    assert all(p.message and p.hint for p in out.problems)
    assert (out.prepare_id, list(out.created)) == ("", [])


async def test_dry_run_of_a_good_request_finds_nothing(lab, host2_untouched):
    async with agent(lab, "host2") as target:
        out = await target.PrepareIncoming(await request(lab, mapping=TO_HOST2, dry_run=True), timeout=60)
    assert list(out.problems) == []
    assert (out.prepare_id, list(out.created)) == ("", [])
    assert "br-vm" in out.destination_xml and "br-guest" not in out.destination_xml
