"""The agent's check of its own advertised libvirt URI (``agent/advertised.py``), over fake hosts:
a URI that reaches another machine's libvirtd is a problem its inventory reports; its own is
none; one it cannot open from here proves nothing."""

from __future__ import annotations

import asyncio
import logging

from ferry.agent.advertised import AdvertisedUri
from ferry.agent.inventory import Inventory
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor


def two_hosts() -> tuple[FakeHypervisor, FakeHypervisor]:
    fleet = FakeFleet()
    return FakeHypervisor(hostname="h1", fleet=fleet), FakeHypervisor(hostname="h2", fleet=fleet)


async def test_a_uri_reaching_another_machine_is_a_problem_and_its_own_is_none():
    h1, h2 = two_hosts()
    assert await AdvertisedUri(h1, h1.uri).check(h1.host_uuid) == ""
    problem = await AdvertisedUri(h1, h2.uri).check(h1.host_uuid)
    assert f"the advertised libvirt URI {h2.uri} reaches another machine's libvirtd" in problem
    assert h2.host_uuid in problem and h1.host_uuid in problem


async def test_a_uri_that_cannot_be_opened_from_here_proves_nothing(caplog):
    h1, h2 = two_hosts()
    h2.reachable = False
    with caplog.at_level(logging.WARNING):
        assert await AdvertisedUri(h1, h2.uri).check(h1.host_uuid) == ""
        assert await AdvertisedUri(h1, "qemu+tls://nowhere/system").check(h1.host_uuid) == ""
    assert "cannot open the advertised libvirt URI" in caplog.text


async def test_the_inventory_reports_it_without_waiting_for_the_check():
    h1, h2 = two_hosts()
    now = [0.0]
    inventory = Inventory(
        h1,
        FakeHostSystem(),
        libvirt_uri=h2.uri,  # a config copied from h2
        migration_address="",
        advertised=AdvertisedUri(h1, h2.uri, every_s=60, clock=lambda: now[0]),
    )
    assert (await inventory.facts()).libvirt_uri_problem == ""  # the check runs in the background
    await asyncio.sleep(0.01)
    assert "reaches another machine's libvirtd" in (await inventory.facts()).libvirt_uri_problem
    calls = h1.calls.count("remote_host_uuid")
    await inventory.facts()
    assert h1.calls.count("remote_host_uuid") == calls  # not again before every_s
    now[0] = 61.0
    await inventory.facts()
    await asyncio.sleep(0.01)
    assert h1.calls.count("remote_host_uuid") == calls + 1
