"""Agents register themselves in a real etcd: the key appears, goes away within the TTL when the
agent stops renewing it, is deleted at once on a clean stop, and comes back after an etcd
restart or a lost lease. Also the processes: `ferry-agent` with a [registry] section, and a
`ferry-coordinator` that shows that agent in `ferry hosts`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ferry import keys
from ferry.agent.config import parse_config
from ferry.agent.registration import Registration
from ferry.certs import issue, issue_identity, new_ca, write_pem
from ferry.errors import InvalidArgument
from ferry.etcd_store import EtcdStore, EtcdTLS
from ferry.identity import Identity, Role
from ferry.lab.etcd import EtcdCluster, MemberTLS, free_loopback_ports
from ferry.registry import HostRegistration
from ferry.timed_store import TimedStore

TTL = 2
# etcd checks lease expiry every 500 ms and applies the deletion through raft
EXPIRY_SLACK_S = 1.5

AGENT = """
[agent]
name = "host1"
listen = ["127.0.0.1:7070"]
advertise_libvirt_uri = "qemu+tcp://10.77.0.11/system"

[tls]
ca = "/pki/ca.pem"
cert = "/pki/agent.host1.pem"
key = "/pki/agent.host1-key.pem"
"""


# ---------------------------------------------------------------- the [registry] section (no etcd)


def test_registry_section_is_optional():
    assert parse_config(AGENT).registry is None


def test_registry_section():
    c = parse_config(
        AGENT + '[registry]\netcd_endpoints = ["127.0.0.1:2379"]\naddress = "10.77.0.11:7070"\n'
        'prefix = "/lab/"\nttl_s = 5\n'
    )
    assert c.registry is not None
    assert (c.registry.etcd_endpoints, c.registry.address, c.registry.prefix, c.registry.ttl_s) == (
        ("127.0.0.1:2379",),
        "10.77.0.11:7070",
        "/lab/",
        5,
    )
    d = parse_config(AGENT + '[registry]\netcd_endpoints = ["e:1"]\naddress = "a:1"\n').registry
    assert d is not None and (d.prefix, d.ttl_s) == ("/ferry/", 10)


@pytest.mark.parametrize(
    ("registry", "what"),
    [
        ('etcd_endpoints = ["e:1"]\n', "lacks address"),
        ('address = "a:1"\n', "lacks etcd_endpoints"),
        ('etcd_endpoints = []\naddress = "a:1"\n', "etcd_endpoints must be a non-empty list"),
        ('etcd_endpoints = ["e:1"]\naddress = "a:1"\nttl = 5\n', "unknown key 'ttl' in [registry]"),
        ('etcd_endpoints = ["e:1"]\naddress = "a:1"\nttl_s = 1\n', "at least 2"),
        ('etcd_endpoints = ["e:1"]\naddress = "a:1"\nprefix = "/x"\n', "must end with '/'"),
    ],
)
def test_bad_registry_section_is_named(registry, what):
    with pytest.raises(InvalidArgument) as exc:
        parse_config(AGENT + "[registry]\n" + registry)
    assert what in exc.value.message and exc.value.hint


# ---------------------------------------------------------------- against a real etcd


@pytest.fixture
async def store(etcd_one: EtcdCluster) -> AsyncIterator[EtcdStore]:
    s = EtcdStore(etcd_one.endpoints, prefix=f"/reg-{uuid.uuid4().hex[:8]}/", timeout_s=2.0, watch_threads=False)
    try:
        yield s
    finally:
        await s.close()


async def registered(store: EtcdStore, name: str) -> HostRegistration | None:
    entry = await store.get(keys.host_key(name))
    return HostRegistration.decode(entry.value) if entry is not None else None


async def wait_for(predicate, timeout_s: float, what: str) -> float:
    """Poll ``predicate`` (async) until true; returns the seconds it took."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def start(reg: Registration) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(reg.run())


@pytest.mark.etcd
async def test_registration_appears_and_a_clean_stop_deletes_it(store):
    reg = Registration(store, "host1", "10.77.0.11:7070", "qemu+tcp://10.77.0.11/system", "10.77.0.11", TTL)
    start(reg)
    await asyncio.wait_for(reg.registered.wait(), 5)
    r = await registered(store, "host1")
    assert r is not None
    assert (r.name, r.address, r.libvirt_uri, r.migration_address) == (
        "host1",
        "10.77.0.11:7070",
        "qemu+tcp://10.77.0.11/system",
        "10.77.0.11",
    )
    assert r.registered_at is not None
    await asyncio.sleep(TTL * 1.5)  # kept alive past its TTL
    assert await registered(store, "host1") is not None
    await reg.stop()
    assert await registered(store, "host1") is None  # at once, not after the TTL


@pytest.mark.etcd
async def test_registration_disappears_within_ttl_when_keepalive_stops(store):
    reg = Registration(store, "host1", "10.77.0.11:7070", ttl_s=TTL)
    task = start(reg)
    await asyncio.wait_for(reg.registered.wait(), 5)
    task.cancel()  # the agent crashed: no more keepalives, no revoke
    stopped_at = time.monotonic()
    took = await wait_for(lambda: _absent(store, "host1"), TTL + EXPIRY_SLACK_S + 1, "registration gone")
    assert time.monotonic() - stopped_at <= TTL + EXPIRY_SLACK_S
    assert took > 0.5  # not removed by us: by the lease's expiry


async def _absent(store: EtcdStore, name: str) -> bool:
    return await registered(store, name) is None


async def _present(store: EtcdStore, name: str) -> bool:
    return await registered(store, name) is not None


@pytest.mark.etcd
async def test_registration_comes_back_after_etcd_restart(store, etcd_one):
    reg = Registration(store, "host1", "10.77.0.11:7070", ttl_s=TTL)
    start(reg)
    await asyncio.wait_for(reg.registered.wait(), 5)
    member = etcd_one.members[0]
    member.kill()  # etcd is gone for longer than the TTL
    await asyncio.sleep(TTL * 2)
    member.start()
    await asyncio.to_thread(member.wait_healthy)
    await wait_for(lambda: _present(store, "host1"), TTL * 3 + 5, "registration back after the restart")
    # and it stays: keepalives work again
    await asyncio.sleep(TTL * 1.5)
    assert await registered(store, "host1") is not None
    await reg.stop()


@pytest.mark.etcd
async def test_registration_comes_back_after_a_lost_lease(store):
    reg = Registration(store, "host1", "10.77.0.11:7070", ttl_s=TTL)
    start(reg)
    await asyncio.wait_for(reg.registered.wait(), 5)
    entry = await store.get(keys.host_key("host1"))
    await store.revoke(entry.lease)  # as if it had expired
    assert await registered(store, "host1") is None
    await wait_for(lambda: _present(store, "host1"), TTL * 2, "registration back with a new lease")
    again = await store.get(keys.host_key("host1"))
    assert again.lease not in (None, entry.lease)
    await reg.stop()


@pytest.mark.etcd
async def test_key_left_by_a_previous_run_is_replaced(store):
    old_lease = await store.grant_lease(60)  # the previous run crashed a moment ago
    await store.create(keys.host_key("host1"), HostRegistration("host1", "10.0.0.1:7070").encode(), lease=old_lease)
    reg = Registration(store, "host1", "10.77.0.11:7070", ttl_s=TTL)
    start(reg)
    await asyncio.wait_for(reg.registered.wait(), 5)
    r = await registered(store, "host1")
    assert r is not None and r.address == "10.77.0.11:7070"
    await store.revoke(old_lease)  # the old lease ending does not take our key
    assert (await registered(store, "host1")).address == "10.77.0.11:7070"
    await reg.stop()


@pytest.mark.etcd
async def test_a_second_agent_with_the_same_name_does_not_fight(store):
    first = Registration(store, "host1", "10.77.0.11:7070", ttl_s=TTL)
    start(first)
    await asyncio.wait_for(first.registered.wait(), 5)
    second = Registration(store, "host1", "10.77.0.99:7070", ttl_s=TTL)
    start(second)
    await asyncio.wait_for(second.registered.wait(), 5)  # a newcomer takes the name over once
    await asyncio.sleep(TTL * 1.5)  # the first sees that and stands back
    assert (await registered(store, "host1")).address == "10.77.0.99:7070"
    assert first.registrations == 1 and not first.registered.is_set()
    await second.stop()
    await first.stop()


class _Calls:
    """A StoreObserver counting the store calls by operation."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def store_call(self, operation: str, seconds: float, reason: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1


@pytest.mark.etcd
async def test_renewals_do_not_read_the_key(store):
    """The key is watched, not read after each renewal (a thousand agents made 300 reads/s)."""
    calls = _Calls()
    reg = Registration(TimedStore(store, calls), "host1", "10.77.0.11:7070", ttl_s=TTL)
    start(reg)
    await asyncio.wait_for(reg.registered.wait(), 5)
    before = dict(calls.calls)
    await asyncio.sleep(TTL * 1.5)  # four renewals or so
    renewals = calls.calls.get("keepalive", 0) - before.get("keepalive", 0)
    reads = calls.calls.get("get", 0) - before.get("get", 0)
    assert renewals >= 3 and reads == 0, calls.calls
    assert await registered(store, "host1") is not None
    await reg.stop()


@pytest.mark.etcd
async def test_a_deleted_key_is_written_again_at_once(store):
    """An operator (or a mistake) deletes the key under a live lease: the watch sees it, and the
    agent registers again well before its next renewal would have looked."""
    reg = Registration(store, "host1", "10.77.0.11:7070", ttl_s=30)  # renewals every 10 s
    start(reg)
    await asyncio.wait_for(reg.registered.wait(), 5)
    old = await store.get(keys.host_key("host1"))
    await asyncio.sleep(0.2)
    await store.delete(keys.host_key("host1"))

    async def written_again() -> bool:
        # the agent counts its write once etcd's reply reaches it, which may be after our read
        return reg.registrations == 2 and await _present(store, "host1")

    took = await wait_for(written_again, 5, "registration written again")
    assert took < 3
    again = await store.get(keys.host_key("host1"))
    assert again.lease != old.lease
    await reg.stop()
    assert await registered(store, "host1") is None


@pytest.mark.etcd
async def test_the_first_agent_stands_back_at_once_when_a_second_takes_its_name(store):
    first = Registration(store, "host1", "10.77.0.11:7070", ttl_s=30)
    start(first)
    await asyncio.wait_for(first.registered.wait(), 5)
    second = Registration(store, "host1", "10.77.0.99:7070", ttl_s=30)
    start(second)
    await asyncio.wait_for(second.registered.wait(), 5)

    async def stood_back() -> bool:
        return not first.registered.is_set()

    assert await wait_for(stood_back, 5, "the first agent stood back") < 3
    assert (await registered(store, "host1")).address == "10.77.0.99:7070"
    await second.stop()
    await first.stop()


# ---------------------------------------------------------------- the processes


def make_pki(directory: Path) -> MemberTLS:
    """A CA (ferry-certs' code), etcd's server certificate, and one certificate per identity."""
    ca = new_ca("Ferry integration CA")
    write_pem(directory, "ca", ca)
    local = {"dns": ["localhost"], "ips": ["127.0.0.1"]}
    write_pem(directory, "etcd", issue(ca, "etcd", **local))
    write_pem(
        directory, "agent.host1", issue_identity(ca, Identity(Role.AGENT, "host1"), dns=["host1"], ips=["127.0.0.1"])
    )
    write_pem(directory, "coordinator.c1", issue_identity(ca, Identity(Role.COORDINATOR, "c1"), **local))
    write_pem(directory, "operator.it", issue_identity(ca, Identity(Role.OPERATOR, "it")))
    d = directory
    return MemberTLS(d / "ca.pem", d / "etcd.pem", d / "etcd-key.pem", d / "operator.it.pem", d / "operator.it-key.pem")


@pytest.fixture
def etcd_tls(etcd_bin: Path, tmp_path: Path) -> Iterator[EtcdCluster]:
    """One member serving TLS with client certificates required (the lab's and a fleet's etcd)."""
    cluster = EtcdCluster.plan(tmp_path / "etcd", 1, binary=etcd_bin, tls=make_pki(tmp_path / "pki"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def tls_lines(pki: Path, stem: str) -> str:
    return f'[tls]\nca = "{pki}/ca.pem"\ncert = "{pki}/{stem}.pem"\nkey = "{pki}/{stem}-key.pem"\n'


def _agent_config(tmp: Path, etcd: list[str], prefix: str, port: int) -> Path:
    """host1's agent over mutual TLS (tmp/pki), registering in etcd with the same certificate."""
    (tmp / "images").mkdir(exist_ok=True)
    path = tmp / "agent.toml"
    path.write_text(f"""
[agent]
name = "host1"
listen = ["127.0.0.1:{port}"]
libvirt_uri = "test:///default"
advertise_libvirt_uri = "qemu+tcp://10.77.0.11/system"
migration_address = "10.77.0.11"
image_dirs = ["{tmp}/images"]
state_dir = "{tmp}/state"
libvirt_timeout_s = 5

[registry]
etcd_endpoints = {json.dumps(etcd)}
address = "127.0.0.1:{port}"
prefix = "{prefix}"
ttl_s = {TTL}

{tls_lines(tmp / "pki", "agent.host1")}""")
    return path


@contextlib.contextmanager
def process(*argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.etcd
async def test_agent_process_registers_and_deregisters_on_sigterm(etcd_tls, tmp_path):
    pytest.importorskip("libvirt")
    prefix = f"/agent-{uuid.uuid4().hex[:8]}/"
    [port] = free_loopback_ports(1)
    config = _agent_config(tmp_path, etcd_tls.endpoints, prefix, port)
    store = EtcdStore(etcd_tls.endpoints, prefix=prefix, timeout_s=2.0, tls=etcd_client(tmp_path / "pki"))
    try:
        with process("ferry.agent.main", "--config", str(config)) as proc:
            await wait_for(lambda: _present(store, "host1"), 20, "agent registered")
            r = await registered(store, "host1")
            assert (r.address, r.libvirt_uri, r.migration_address) == (
                f"127.0.0.1:{port}",
                "qemu+tcp://10.77.0.11/system",
                "10.77.0.11",
            )
            os.kill(proc.pid, signal.SIGTERM)
            _, err = await asyncio.to_thread(proc.communicate, timeout=15)
            assert proc.returncode == 0, err
            assert await registered(store, "host1") is None  # deregistered on the way out
            assert "deregistered host1" in err
    finally:
        await store.close()


@pytest.mark.etcd
async def test_coordinator_process_shows_the_registered_agent(etcd_tls, tmp_path, capsys):
    """Every link over mutual TLS: agent -> etcd, coordinator -> etcd, coordinator -> agent (the
    agent's certificate must name host1), CLI -> coordinator (an operator certificate)."""
    pytest.importorskip("libvirt")
    from ferry.cli import main as cli
    from ferry.coordinator.main import current_leader

    prefix = f"/coord-{uuid.uuid4().hex[:8]}/"
    agent_port, coord_port = free_loopback_ports(2)
    agent_config = _agent_config(tmp_path, etcd_tls.endpoints, prefix, agent_port)
    coord_config = tmp_path / "coordinator.toml"
    sock = tmp_path / "run" / "coordinator.sock"
    coord_config.write_text(f"""
[coordinator]
id = "c1"
listen = ["127.0.0.1:{coord_port}", "unix:{sock}"]
election_ttl_s = 3

[etcd]
endpoints = {json.dumps(etcd_tls.endpoints)}
prefix = "{prefix}"
timeout_s = 2

[hosts.host1]
bridges = {{ guest = "br-guest" }}

{tls_lines(tmp_path / "pki", "coordinator.c1")}""")
    store = EtcdStore(etcd_tls.endpoints, prefix=prefix, timeout_s=2.0, tls=etcd_client(tmp_path / "pki"))
    pki = tmp_path / "pki"
    operator = ["--ca", f"{pki}/ca.pem", "--cert", f"{pki}/operator.it.pem", "--key", f"{pki}/operator.it-key.pem"]
    try:
        with (
            process("ferry.agent.main", "--config", str(agent_config)) as agent,
            process("ferry.coordinator.main", "--config", str(coord_config)) as coordinator,
        ):
            await wait_for(lambda: _present(store, "host1"), 20, "agent registered")

            async def host1_up() -> bool:
                assert coordinator.poll() is None, coordinator.stderr.read()
                capsys.readouterr()
                code = await cli.run(["--coordinator", f"unix:{sock}", *operator, "--output", "json", "hosts"])
                out = capsys.readouterr().out
                if code != 0:
                    return False
                hosts = {h["name"]: h for h in json.loads(out).get("hosts", [])}
                return bool(hosts.get("host1", {}).get("available"))

            await wait_for(host1_up, 20, "host1 up in `ferry hosts`")
            code = await cli.run(["--coordinator", f"127.0.0.1:{coord_port}", *operator, "--output", "json", "vms"])
            vms = json.loads(capsys.readouterr().out)["vms"]
            assert code == 0 and [(v["domain"]["name"], v["host"]) for v in vms] == [("test", "host1")]
            await wait_for(lambda: _leader_is(store, "c1"), 10, "c1 leads")
            leader = await current_leader(store)
            assert leader is not None and leader.address == f"127.0.0.1:{coord_port}"
            os.kill(coordinator.pid, signal.SIGTERM)
            _, err = await asyncio.to_thread(coordinator.communicate, timeout=15)
            assert coordinator.returncode == 0, err
            assert await current_leader(store) is None  # resigned on the way out
            os.kill(agent.pid, signal.SIGTERM)
            await asyncio.to_thread(agent.communicate, timeout=15)
    finally:
        await store.close()


async def _leader_is(store: EtcdStore, candidate: str) -> bool:
    from ferry.coordinator.main import current_leader

    leader = await current_leader(store)
    return leader is not None and leader.id == candidate


def etcd_client(pki: Path) -> EtcdTLS:
    return EtcdTLS(pki / "ca.pem", pki / "coordinator.c1.pem", pki / "coordinator.c1-key.pem")
