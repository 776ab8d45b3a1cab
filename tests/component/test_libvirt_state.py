"""The agent says when its libvirtd stops and comes back, and the coordinators' fleet view follows:
LibvirtWatch over a fake hypervisor -> the agent's Registration in the (in-memory) store -> the
coordinator's Fleet -> a HostChange for the leader's engine. Also: an agent restarted within its
lease is a HostChange too (the leader resumes its migrations at once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ferry.agent.health import LibvirtWatch
from ferry.agent.registration import Registration
from ferry.coordinator.fleet import Fleet
from ferry.keys import host_key
from ferry.registry import HostChange, HostRegistration
from ferry.testing.fake_hypervisor import FakeHypervisor
from ferry.testing.memory_store import MemoryStore


class _NoClient:
    host = "host1"

    async def inventory(self):  # never asked here: the tests do not refresh inventories
        raise AssertionError("not used")


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


async def next_change(changes: AsyncIterator[HostChange], timeout: float = 2.0) -> HostChange:
    return await asyncio.wait_for(anext(changes), timeout)


def test_registration_value_carries_libvirts_state_and_old_values_read_as_up():
    reg = HostRegistration("host1", "10.77.0.11:7070", libvirt_up=False)
    assert HostRegistration.decode(reg.encode()) == reg
    old = b'{"name": "host1", "address": "10.77.0.11:7070", "libvirt_uri": "", "registered_at": null}'
    assert HostRegistration.decode(old).libvirt_up  # an older agent's value


async def test_libvirt_watch_reports_each_change_once():
    hv = FakeHypervisor(hostname="host1")
    seen: list[bool] = []
    watch = LibvirtWatch(hv, seen.append, interval_s=0.01)
    assert await watch.check() and seen == [True]
    hv.reachable = False  # libvirtd killed
    assert not await watch.check() and not await watch.check()
    hv.reachable = True  # restarted
    assert await watch.check()
    assert seen == [True, False, True]


async def test_libvirtd_down_and_back_reaches_the_fleet_view_at_once(store):
    hv = FakeHypervisor(hostname="host1")
    reg = Registration(store, "host1", "10.77.0.11:7070", ttl_s=30)  # renewals far apart
    running = asyncio.get_running_loop().create_task(reg.run())
    await asyncio.wait_for(reg.registered.wait(), 2)
    fleet = Fleet(store, lambda host, address: _NoClient())  # type: ignore[arg-type,return-value]
    await fleet.start()
    changes = fleet.changes().__aiter__()
    watch = asyncio.get_running_loop().create_task(LibvirtWatch(hv, reg.set_libvirt_up, interval_s=0.05).run())
    try:
        assert fleet.available_hosts() == {"host1"}
        first = await store.get(host_key("host1"))
        hv.reachable = False
        change = await next_change(changes)
        assert change.host == "host1" and not change.available and change.why is not None
        assert change.why.reason == "LIBVIRTD_DOWN" and "start libvirtd on host1" in change.why.hint
        assert fleet.available_hosts() == set()
        assert fleet.why_down("host1") == change.why and fleet.host("host1").why_down == change.why
        down = await store.get(host_key("host1"))
        assert down is not None and first is not None
        assert down.lease == first.lease  # the same registration, rewritten
        assert HostRegistration.decode(down.value).registered_at == HostRegistration.decode(first.value).registered_at
        hv.reachable = True
        assert await next_change(changes) == HostChange("host1", available=True)
        assert fleet.available_hosts() == {"host1"}
    finally:
        watch.cancel()
        await fleet.close()
        await reg.stop()
        running.cancel()


async def test_an_agent_restarted_within_its_lease_is_announced(store):
    first = Registration(store, "host1", "10.77.0.11:7070", ttl_s=30)
    task = asyncio.get_running_loop().create_task(first.run())
    await asyncio.wait_for(first.registered.wait(), 2)
    fleet = Fleet(store, lambda host, address: _NoClient())  # type: ignore[arg-type,return-value]
    await fleet.start()
    changes = fleet.changes().__aiter__()
    task.cancel()  # killed: its key stays until the lease runs out
    await asyncio.gather(task, return_exceptions=True)
    again = Registration(store, "host1", "10.77.0.11:7070", ttl_s=30)  # the restarted agent
    task = asyncio.get_running_loop().create_task(again.run())
    try:
        assert await next_change(changes) == HostChange("host1", available=True, restarted=True)
    finally:
        await fleet.close()
        await again.stop()
        task.cancel()


class _CountingClient:
    """An agent whose libvirtd is down: every inventory fails, counted."""

    host = "host1"

    def __init__(self) -> None:
        self.asked = 0

    async def inventory(self):
        from ferry.errors import Unavailable

        self.asked += 1
        raise Unavailable("libvirtd on host1 does not answer", reason="LIBVIRT_UNREACHABLE")


async def test_a_host_whose_libvirtd_is_down_is_not_asked_again_until_its_agent_says_it_is_back(store):
    """The lab: with host2's libvirtd down, the coordinator asked its inventory every 2 s and the
    agent logged each failure; the agent's registration says when libvirtd is back."""
    client = _CountingClient()
    reg = Registration(store, "host1", "10.77.0.11:7070", ttl_s=30)
    running = asyncio.get_running_loop().create_task(reg.run())
    await asyncio.wait_for(reg.registered.wait(), 2)
    fleet = Fleet(store, lambda host, address: client)  # type: ignore[arg-type,return-value]
    fleet.reprobe_s = 0.02
    await fleet.start()
    try:
        await fleet.refresh(["host1"], force=True)  # the agent answers: its libvirtd is down
        assert client.asked == 1 and fleet.available_hosts() == set()
        await asyncio.sleep(0.2)
        assert client.asked > 3  # registered as up: asked again and again (an agent that may come back)
        reg.set_libvirt_up(False)
        for _ in range(100):
            why = fleet.why_down("host1")
            if why is not None and why.reason == "LIBVIRTD_DOWN":
                break
            await asyncio.sleep(0.01)
        await fleet.refresh(["host1"], force=True)  # someone lists the hosts: it fails again
        asked = client.asked
        await asyncio.sleep(0.2)
        assert client.asked == asked  # its registration says when libvirtd is back
    finally:
        await fleet.close()
        await reg.stop()
        running.cancel()
