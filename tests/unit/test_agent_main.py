"""The agent process (``agent/main.py``): its periodic sweep (expired prepares, old outgoing
migration records) and the background tasks it watches."""

import asyncio
import errno
import logging
from datetime import timedelta

import pytest
from test_prepare import IMG, MAP, VDA, XML, Clock  # beside this file

from ferry.agent.config import AgentConfig
from ferry.agent.main import SWEEP_INTERVAL_S, _sweep_forever, build_agent
from ferry.daemon import first_ended
from ferry.model import StorageMode
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeHypervisor

GiB = 1 << 30


class Stop(Exception):
    """Ends the loop under test after its last round."""


def stop_after(rounds: int, naps: list[float]):
    async def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == rounds:
            raise Stop
        await asyncio.sleep(0)

    return sleep


def fails_once(func, calls: list[str], name: str):
    def call(*args):
        calls.append(name)
        if calls.count(name) == 1:
            raise OSError(errno.EROFS, "Read-only file system")
        return func(*args)

    return call


@pytest.mark.parametrize("failing", ["prepares", "outgoing"])
async def test_a_sweep_round_that_fails_is_logged_and_the_next_round_runs(tmp_path, monkeypatch, caplog, failing):
    """The state directory read-only for a moment: a part of the round fails, logged with its
    traceback; the other part still runs, the loop goes on and its next round finishes the
    expired prepare."""
    clock = Clock()
    host = FakeHostSystem(bridges=["br-vm"], dirs={IMG: 40 * GiB})
    config = AgentConfig(name="host2", listen=("127.0.0.1:0",), advertise_libvirt_uri="", state_dir=str(tmp_path))
    agent = build_agent(config, FakeHypervisor(hostname="host2", host=host), host, clock=clock)
    out = await agent.prepare.prepare(XML, [VDA], MAP, StorageMode.COPY_ALL, 0, "m-1", False)
    clock.now += timedelta(seconds=601)  # expired, and nobody came back for it
    calls: list[str] = []
    parts = {"prepares": (agent.prepare._store, "delete"), "outgoing": (agent.source_disks._records, "sweep")}
    obj, name = parts[failing]
    monkeypatch.setattr(obj, name, fails_once(getattr(obj, name), calls, failing))
    if failing == "prepares":  # the outgoing records' part runs all the same
        outgoing = agent.source_disks._records
        monkeypatch.setattr(outgoing, "sweep", lambda now, _real=outgoing.sweep: calls.append("outgoing") or _real(now))
    naps: list[float] = []
    with caplog.at_level(logging.INFO, logger="ferry.agent"), pytest.raises(Stop):
        await _sweep_forever(agent, sleep=stop_after(2, naps))
    assert naps == [SWEEP_INTERVAL_S] * 2 and calls.count("outgoing") == 2 and calls.count(failing) == 2
    [failed] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert failed.levelno == logging.ERROR and failed.exc_info is not None and failed.exc_info[0] is OSError
    assert agent.prepare.list() == [] and not any(p in host.files for p in out.created)
    assert any(m.startswith(f"prepare sweep: {out.prepare_id}: cleaned up") for m in caplog.messages)


async def test_an_agent_whose_background_task_died_says_which_and_stops_to_start_afresh(caplog):
    """A registration, libvirt watch or sweeper that ended on an error it did not expect would
    leave an agent serving while it no longer registers, reports libvirtd or cleans up: the
    agent names it, with the error, and `serve` starts a fresh process (RestartRequested)."""

    async def registration() -> None:
        await asyncio.sleep(0)
        raise KeyError("a bug")

    async def forever() -> None:
        await asyncio.Event().wait()

    stop = asyncio.Event()
    died = asyncio.create_task(registration(), name="registration host1")
    healthy = asyncio.create_task(forever(), name="libvirt watch")
    with caplog.at_level(logging.ERROR, "ferry.agent"):
        assert await first_ended(stop, [healthy, died], logging.getLogger("ferry.agent")) is died
    assert "the registration host1 task ended: KeyError('a bug')" in caplog.text
    assert caplog.records[-1].exc_info is not None
    # stopped as asked: none ended
    stop.set()
    assert await first_ended(stop, [healthy], logging.getLogger("ferry.agent")) is None
    healthy.cancel()
