"""Hosts' migration bandwidth budgets shared by their running jobs (``coordinator/sharing.py``),
over real agent gRPC servers on fakes: a second job out of a host with a budget halves the first
one's bandwidth (TuneMigration on its source) and starts at its half; when one ends the other gets
the whole budget back; each record says why its bandwidth changed; an operator's tune is the job's
own cap from then on. Jobs that copy disks start at the budget over the slots and keep it while
they copy (libvirt cannot re-tune a disk copy), then share like the others."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_engine import SLOW, engine, final, now, read, request_cancel, submit, until, wait_for

from ferry.coordinator.live import LiveOps, LiveRequest
from ferry.coordinator.phases import Phase
from ferry.coordinator.record import MigrationRecord
from ferry.coordinator.slots import Limits
from ferry.model import MigrationOptions
from ferry.testing.fake_hypervisor import FakeHypervisor, MiB
from ferry.testing.fleet import Fleet, FleetDirectory, start_fleet
from ferry.testing.memory_store import MemoryStore

TWO_OUT = Limits(per_host_outbound=2, per_host_inbound=2, cluster=5)
SHARED = MigrationOptions()  # the disks on shared storage: nothing copied


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = await start_fleet(tmp_path, 3)
    yield f
    await f.close()


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    s = MemoryStore()
    yield s
    await s.close()


def job_speed(hv: FakeHypervisor, uuid: str) -> int:
    """The MiB/s of the guest's migration job on this fake libvirt (-1: no job)."""
    job = hv.jobs.get(uuid)
    return job.bandwidth_bps // MiB if job is not None else -1


def notes(r: MigrationRecord) -> list[str]:
    return [e.action.reason for e in r.actions if e.action.action == "bandwidth"]


async def test_two_jobs_out_of_a_host_share_its_budget_and_the_survivor_gets_it_back(store, fleet):
    hv = fleet["host1"].hv
    g1, g2 = fleet.add_guest("host1", "g1", local_disk=False), fleet.add_guest("host1", "g2", local_disk=False)

    hv.hold()
    budget = {"host1": 100}
    async with engine(
        store, FleetDirectory(fleet), TWO_OUT, timeouts=SLOW, bandwidth_budget=lambda h: budget.get(h, 0)
    ):
        m1 = await submit(store, fleet, "g1", "host1", "host2", options=SHARED)
        await until(lambda: job_speed(hv, g1) == 100)  # alone: the whole budget
        m2 = await submit(store, fleet, "g2", "host1", "host3", options=SHARED)
        await until(lambda: job_speed(hv, g2) == 50)  # started at its half
        await until(lambda: job_speed(hv, g1) == 50)  # the first one tuned down
        assert hv.calls.count("set_bandwidth") == 1
        await request_cancel(store, m2.id)  # g2's job ends: g1 gets the budget back
        await until(lambda: job_speed(hv, g1) == 100)
        hv.release()
        one, two = await final(store, m1.id), await final(store, m2.id)
    assert one.phase is Phase.SUCCEEDED and two.phase is Phase.CANCELLED
    assert notes(one) == [
        "bandwidth 100 MiB/s: the migration budget of host1, 100 MiB/s out",
        "bandwidth 50 MiB/s: the migration budget of host1, 100 MiB/s out, shared by 2 migrations",
        "bandwidth 100 MiB/s: the migration budget of host1, 100 MiB/s out",
    ]
    assert notes(two) == ["bandwidth 50 MiB/s: the migration budget of host1, 100 MiB/s out, shared by 2 migrations"]
    assert all(e.action.by == "ferry-coordinator" for e in one.actions if e.action.action == "bandwidth")


async def test_jobs_that_copy_disks_keep_the_budget_over_the_slots_until_their_memory_moves(store, fleet):
    hv = fleet["host1"].hv
    g1, g2 = fleet.add_guest("host1", "g1"), fleet.add_guest("host1", "g2")  # local disks: copied
    # g1 dirties memory faster than its disk copy's fixed 50 MiB/s: only the whole budget, once its
    # memory moves, lets its pre-copy converge
    hv.set_dirty_rate("g1", 70 * MiB)

    hv.hold()
    async with engine(
        store, FleetDirectory(fleet), TWO_OUT, timeouts=SLOW, bandwidth_budget=lambda h: 100 if h == "host1" else 0
    ):
        m1 = await submit(store, fleet, "g1", "host1", "host2")
        await until(lambda: job_speed(hv, g1) == 50)  # alone, yet its disk copy could not be slowed later
        m2 = await submit(store, fleet, "g2", "host1", "host3")
        await until(lambda: job_speed(hv, g2) == 50)
        await request_cancel(store, m2.id)
        await wait_for(store, m2.id, lambda r: r.phase is not Phase.MIGRATING)
        assert job_speed(hv, g1) == 50 and "set_bandwidth" not in hv.calls  # not re-tuned while it copies
        hv.release()
        await until(lambda: job_speed(hv, g1) == 100)  # its memory moves: the whole budget, alone
        one = await final(store, m1.id)
    assert one.phase is Phase.SUCCEEDED
    assert notes(one) == [
        "bandwidth 50 MiB/s while its disks are copied (libvirt sets a disk copy's speed once); "
        "host1 has 100 MiB/s out for 2 slots",
        "bandwidth 100 MiB/s: the migration budget of host1, 100 MiB/s out",
    ]


async def test_an_operators_tune_is_the_jobs_own_cap_within_the_budget(store, fleet):
    hv = fleet["host1"].hv
    g1, g2 = fleet.add_guest("host1", "g1", local_disk=False), fleet.add_guest("host1", "g2", local_disk=False)

    hv.hold()
    hosts = FleetDirectory(fleet)
    async with engine(store, hosts, TWO_OUT, timeouts=SLOW, bandwidth_budget=lambda h: 100 if h == "host1" else 0):
        m1 = await submit(store, fleet, "g1", "host1", "host2", options=SHARED)
        await until(lambda: job_speed(hv, g1) == 100)
        await wait_for(store, m1.id, lambda r: bool(notes(r)))
        await LiveOps(store, hosts, now).control(m1.id, LiveRequest(bandwidth_mibps=20), requested_by="alice")
        assert job_speed(hv, g1) == 20
        await submit(store, fleet, "g2", "host1", "host3", options=SHARED)
        await until(lambda: job_speed(hv, g2) == 80)  # g1 keeps its 20: the rest is g2's
        assert job_speed(hv, g1) == 20
        hv.release()
    r = await read(store, m1.id)
    assert "bandwidth 20 MiB/s: its own cap" in notes(r)[-1], notes(r)


async def test_without_a_budget_no_job_is_tuned(store, fleet):
    hv = fleet["host1"].hv
    fleet.add_guest("host1", "g1")
    fleet.add_guest("host1", "g2")
    async with engine(store, FleetDirectory(fleet), TWO_OUT):
        m1 = await submit(store, fleet, "g1", "host1", "host2")
        m2 = await submit(store, fleet, "g2", "host1", "host3")
        one, two = await final(store, m1.id), await final(store, m2.id)
    assert one.phase is two.phase is Phase.SUCCEEDED
    assert "set_bandwidth" not in hv.calls and not notes(one) and not notes(two)
