"""Secure by default, on the real lab: every link is mutual TLS with the lab CA's certificates,
roles are enforced, etcd's RBAC confines each agent to its own key (and reading the registrations),
libvirtd speaks only TLS, and a migration's stream (memory and the NBD disk copy) crosses the lab network encrypted.

The encryption proof: the guest keeps 4 MiB of ``FERRY-MEMORY-MARKER <boot id>`` in its RAM
(deploy/lab/guest/init); tcpdump in the core namespace captures every packet between the two hosts
on the lab bridge while ``ferry migrate`` moves the guest; the marker is not in the capture, while
a memory dump of the guest on the target shows it is in the memory that was carried. (QEMU's
``tls-creds`` cannot be read mid-migration through libvirt: its monitor is held by the migration
job; the lab's qemu.conf sets ``migrate_tls_force``, so a migration without TLS would be refused.)

Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fleetcli import SUCCEEDED, beats, ferry, ok, remove_guests, running_on, submit, wait_final
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.certs import issue_identity, new_ca, shared_authority, write_pem
from ferry.identity import Identity, Role
from ferry.keys import HOSTS, host_key
from ferry.lab import Lab, pki
from ferry.lab.control import etcdctl
from ferry.lab.controlplane import ETCD_PREFIX
from ferry.lab.state import CORE
from ferry.rpc import Tls, create_channel
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc

pytestmark = pytest.mark.lab

MiB = 1 << 20
MARKER = b"FERRY-MEMORY-MARKER "

# run inside the core namespace: a plaintext gRPC health check per address; prints address -> code
_PLAINTEXT_PROBE = """
import json, sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
out = {}
for address in sys.argv[1:]:
    with grpc.insecure_channel(address) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            out[address] = "OK"
        except grpc.RpcError as exc:
            out[address] = exc.code().name
print(json.dumps(out))
"""


@pytest.fixture
def guests(lab: Lab) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    remove_guests(lab, names)


async def health(address: str, tls: Tls | None, *, client_cert: bool = True) -> grpc.StatusCode:
    if tls is not None and not client_cert:  # TLS that trusts the CA, but presents no certificate
        creds = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes())
        channel = grpc.aio.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    else:
        channel = create_channel(address, tls=tls)
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)  # type: ignore[attr-defined]
        return grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()


# ---------------------------------------------------------------- who may connect


async def test_only_clients_with_a_lab_certificate_get_an_answer(lab: Lab, tmp_path: Path):
    other = new_ca("not the lab's CA")
    write_pem(tmp_path, "other-ca", other)
    write_pem(tmp_path, "intruder", issue_identity(other, Identity(Role.OPERATOR, "lab")))
    (tmp_path / "lab-ca.pem").write_bytes(lab.client_tls().ca.read_bytes())
    foreign = Tls(tmp_path / "lab-ca.pem", tmp_path / "intruder.pem", tmp_path / "intruder-key.pem")
    operator = lab.client_tls("operator.lab")
    for address in (lab.agent_address("host1"), f"unix:{lab.dir}/coordinators/c1.sock"):
        assert await health(address, operator) == grpc.StatusCode.OK, address  # the lab's own: served
        assert await health(address, None) == grpc.StatusCode.UNAVAILABLE, address  # plaintext
        assert await health(address, operator, client_cert=False) == grpc.StatusCode.UNAVAILABLE, address
        assert await health(address, foreign) == grpc.StatusCode.UNAVAILABLE, address  # another CA
    # and over the lab network, from the core namespace: plaintext gRPC to an agent and a coordinator
    addresses = [lab.host("host1").agent_listen, lab.host("host2").agent_listen, "10.77.0.1:7100"]
    probe = lab.host_exec(CORE, sys.executable, "-c", _PLAINTEXT_PROBE, *addresses, timeout=60)
    codes = json.loads(probe.stdout)
    print(f"\n[lab] plaintext gRPC over the lab network: {codes}")
    assert codes == dict.fromkeys(addresses, "UNAVAILABLE")


def test_a_reader_cannot_submit_and_a_scheduler_cannot_override(lab: Lab):
    pki = lab.dir / "pki"

    def as_(stem: str, *args: str):
        return ferry(
            lab, "--cert", f"{pki}/{stem}.pem", "--key", f"{pki}/{stem}-key.pem", "--ca", f"{pki}/ca.pem", *args
        )

    hosts = ok(as_("reader.lab", "hosts"))  # a reader reads
    assert {h["name"] for h in hosts["hosts"]} == {"host1", "host2"}
    refused = as_("reader.lab", "migrate", "nobody-tls", "--to", "host2", "--no-wait")
    assert refused.code == 2, str(refused)
    assert refused.error["code"] == "PERMISSION_DENIED" and refused.error["reason"] == "ROLE_SCHEDULER_REQUIRED"
    refused = as_("scheduler.lab", "migrate", "nobody-tls", "--to", "host2", "--no-wait", "--map-bridge", "a=b")
    assert refused.code == 2 and refused.error["reason"] == "ROLE_OPERATOR_REQUIRED", str(refused)
    assert "mapping overrides" in refused.error["message"]
    # refused before anything was written
    assert ok(ferry(lab, "migrations", "--vm", "nobody-tls")).get("migrations", []) == []
    # no certificate at all: the CLI refuses to dial without one, and --insecure gets no answer
    nocert = ferry(lab, "--insecure", "hosts", timeout=60)
    assert nocert.code == 3 and nocert.error["reason"] == "UNREACHABLE", str(nocert)


def test_etcd_confines_each_agent_to_its_own_key(lab: Lab):
    core, urls = lab.etcd_access()
    agent = pki.etcd_client_tls(lab.paths, Role.AGENT, "host1")  # etcd's own CA issued these
    coordinator = pki.etcd_client_tls(lab.paths, Role.COORDINATOR, "c1")
    own = ETCD_PREFIX + host_key("host1")
    other = ETCD_PREFIX + host_key("host2")

    def run(tls: Tls | None, *args: str) -> subprocess.CompletedProcess[str]:
        return etcdctl(core, urls, *args, timeout_s=5.0, tls=tls)  # type: ignore[return-value]

    assert run(agent, "get", own, "--print-value-only").returncode == 0  # its own registration
    # every registration, read only: the registered hosts are the migration targets it accepts
    listed = run(agent, "get", ETCD_PREFIX + HOSTS, "--prefix", "--keys-only")
    assert listed.returncode == 0 and own in listed.stdout and other in listed.stdout, listed.stderr
    for args in (("put", other, "{}"), ("del", other), ("get", ETCD_PREFIX + "migrations/", "--prefix")):
        denied = run(agent, *args)
        assert denied.returncode != 0 and "permission denied" in denied.stderr.lower(), (args, denied.stderr)
    assert run(coordinator, "get", ETCD_PREFIX, "--prefix", "--keys-only").returncode == 0
    anonymous = etcdctl(core, urls, "get", own, timeout_s=3.0)  # no client certificate: no TLS session
    assert anonymous.returncode != 0


def test_etcd_admits_no_certificate_of_the_apis_ca(lab: Lab):
    """Seen in a walkthrough: with one lab CA, a reader's certificate was an etcd client; RBAC kept
    the keys, but etcd does not guard leases, compaction or alarms: it granted 20,000 leases, kept
    another host's lease alive and compacted. etcd trusts its own CA now, whose only clients are the
    coordinators and the agents."""
    core, urls = lab.etcd_access()
    etcd_ca = pki.etcd_pki_dir(lab.paths) / "ca.pem"
    for stem in ("reader.lab", "operator.lab", "agent.host1", "coordinator.c1"):  # the APIs' certificates
        api = lab.client_tls(stem)
        for args in (("lease", "grant", "60"), ("compaction", "1"), ("get", ETCD_PREFIX, "--prefix", "--keys-only")):
            refused = etcdctl(core, urls, *args, timeout_s=3.0, tls=Tls(etcd_ca, api.cert, api.key))
            assert refused.returncode != 0, (stem, args, refused.stdout)
    root = lab.client_tls("reader.lab").ca.read_bytes()
    assert not shared_authority(etcd_ca.read_bytes(), root)
    # raft (plain HTTP) listens on the core namespace's loopback: a host does not reach it
    peer = lab.host_exec("host1", "curl", "-sS", "--max-time", "3", "http://10.77.0.1:2380/version", check=False)
    assert peer.returncode != 0, peer.stdout


def test_qemu_admits_only_the_hypervisors_certificates(lab: Lab, tmp_path: Path):
    """Seen in a walkthrough: with one lab CA, a reader's certificate read a guest's disk from the
    NBD port of a migration under way (QEMU checks who signed a certificate, not whom it names).
    A TLS NBD server with host2's QEMU credentials, as a migration's target runs it, admits host1's
    QEMU certificate and refuses the lab's reader and agent certificates (another CA). The agents
    report no migration TLS problem (their QEMU CA is not the APIs')."""
    host_pki = lab.dir / "hosts"
    image = tmp_path / "nbd-probe.qcow2"
    lab.host_exec("host2", "qemu-img", "create", "-f", "qcow2", str(image), "16M")
    port = "10809"
    server = [
        "qemu-nbd", "--fork", "--persistent", "-t", "-b", "10.77.0.12", "-p", port, "-x", "probe",
        "--object", f"tls-creds-x509,id=tls0,dir={host_pki}/host2/etc/pki/qemu,endpoint=server,verify-peer=on",
        "--tls-creds", "tls0", "--pid-file", str(tmp_path / "nbd.pid"), "-f", "qcow2", str(image),
    ]  # fmt: skip
    lab.host_exec("host2", *server)
    try:

        def read_with(qemu_dir: Path) -> int:
            opts = f"driver=nbd,server.type=inet,server.host=10.77.0.12,server.port={port},export=probe,tls-creds=c0"
            argv = ["qemu-img", "info", "--object", f"tls-creds-x509,id=c0,dir={qemu_dir},endpoint=client"]
            return lab.host_exec("host1", *argv, "--image-opts", opts, check=False, timeout=30).returncode

        assert read_with(host_pki / "host1/etc/pki/qemu") == 0  # a hypervisor: admitted
        for stem in ("reader.lab", "agent.host1"):  # the APIs' CA: refused
            d = tmp_path / stem
            d.mkdir()
            (d / "ca-cert.pem").write_bytes((host_pki / "host1/etc/pki/qemu/ca-cert.pem").read_bytes())
            api = lab.client_tls(stem)
            (d / "client-cert.pem").write_bytes(api.cert.read_bytes())
            (d / "client-key.pem").write_bytes(api.key.read_bytes())
            assert read_with(d) != 0, stem
    finally:
        pid = int((tmp_path / "nbd.pid").read_text())
        lab.host_exec("host2", "kill", str(pid), check=False)
    hosts = ok(ferry(lab, "hosts"))["hosts"]
    assert all(not h.get("facts", {}).get("migration_tls_problem") for h in hosts), hosts


_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("open")
except ConnectionRefusedError:
    print("refused")
except OSError:
    print("dropped")
"""


def reach(lab: Lab, place: str, address: str, port: int) -> str:
    """A TCP connection from ``place``'s namespace: open, refused (nothing listens, but the packet
    got there) or dropped (no answer: the firewall)."""
    return lab.host_exec(place, "python3", "-c", _CONNECT, address, str(port), timeout=30).stdout.strip()


def test_only_the_hypervisors_reach_libvirtd_and_qemus_ports_and_only_the_core_the_agents(lab: Lab):
    """Every lab host loads deploy/lab/firewall.py's ruleset (deploy/nftables/ferry-hypervisor.nft
    with the lab's addresses). QEMU's incoming port ends a migration on any connection, with a
    certificate or without: only the hypervisors may connect. The core namespace (coordinators,
    etcd, the metrics' scraper) is no hypervisor; a hypervisor is no coordinator."""
    h2 = "10.77.0.12"
    seen = {
        (place, port): reach(lab, place, h2, port) for place in (CORE, "host1") for port in (16514, 49152, 7070, 9470)
    }
    print(f"\n[tls] reaching host2 (16514 libvirtd, 49152 QEMU, 7070 agent, 9470 metrics): {seen}")
    assert seen == {
        (CORE, 16514): "dropped",
        (CORE, 49152): "dropped",
        (CORE, 7070): "open",
        (CORE, 9470): "open",
        ("host1", 16514): "open",
        ("host1", 49152): "refused",  # let through: no migration listens there now
        ("host1", 7070): "dropped",
        ("host1", 9470): "dropped",
    }
    table = lab.host_exec("host2", "nft", "list", "table", "inet", "ferry_hypervisor").stdout
    assert "10.77.0.11" in table and h2 in table


def test_libvirtd_speaks_only_tls(lab: Lab):
    plain = lab.host_exec("host1", "virsh", "-c", "qemu+tcp://10.77.0.12/system", "hostname", check=False, timeout=60)
    assert plain.returncode != 0  # no plain TCP listener (the seed's auth_tcp = "none" is gone)
    tls = lab.host_exec("host1", "virsh", "-c", lab.tcp_uri("host2"), "hostname", timeout=60)
    assert tls.stdout.strip() == "host2"
    conf = (lab.dir / "hosts/host2/etc/libvirtd.conf").read_text()
    assert "listen_tcp = 0" in conf and "auth_tcp" not in conf


def test_agents_check_the_coordinators_identity(lab: Lab):
    """A valid lab certificate of another role may read an agent, not migrate with it."""
    import asyncio

    async def abort(stem: str) -> grpc.StatusCode:
        async with create_channel(lab.agent_address("host1"), tls=lab.client_tls(stem)) as channel:
            try:
                await agrpc.AgentStub(channel).AbortMigration(apb.AbortMigrationRequest(domain="nobody"), timeout=10)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                return exc.code()

    assert asyncio.run(abort("operator.lab")) == grpc.StatusCode.PERMISSION_DENIED
    assert asyncio.run(abort("agent.host2")) == grpc.StatusCode.PERMISSION_DENIED
    assert asyncio.run(abort("coordinator.c1")) != grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------- the migration stream


class Capture:
    """tcpdump in the core namespace, every TCP packet between two hosts on br0, read as a stream:
    counts bytes and occurrences of ``needle`` without writing the capture to disk."""

    def __init__(self, lab: Lab, a: str, b: str, needle: bytes) -> None:
        argv = lab.exec_argv(
            CORE,
            # -B: a 128 MiB kernel buffer (KiB), so a busy machine does not make tcpdump drop packets
            ["tcpdump", "-i", "br0", "-s", "0", "-B", "131072", "-U", "-w", "-", f"tcp and host {a} and host {b}"],
        )
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.needle = needle
        self.bytes = 0
        self.hits = 0
        self.dropped = -1
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(1.0)  # tcpdump attaches to the bridge
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        tail = b""
        while chunk := self.proc.stdout.read(1 << 20):
            self.bytes += len(chunk)
            window = tail + chunk
            self.hits += window.count(self.needle)
            tail = window[-(len(self.needle) - 1) :]

    def stop(self) -> None:
        self.proc.terminate()  # our own process, by its PID
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=30)
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        found = re.search(r"(\d+) packets? dropped by kernel", err)
        self.dropped = int(found.group(1)) if found else -1  # -1: tcpdump did not say


def memory_marker(lab: Lab, name: str) -> bytes:
    for line in lab.console(name).splitlines():
        if line.startswith("MEMORY-MARKER "):
            return MARKER + line.split()[1].encode()
    raise AssertionError(f"{name} printed no MEMORY-MARKER line:\n{lab.console(name)[-2000:]}")


def test_the_migration_stream_is_encrypted(lab: Lab, guests: list[str]):
    name = "g-tls"
    guests.append(name)
    lab.guest(name, "host1", disks=["256M"])
    marker = memory_marker(lab, name)
    src, dst = lab.host("host1").address, lab.host("host2").address
    capture = Capture(lab, src, dst, marker)
    try:
        record = wait_final(lab, submit(lab, name), timeout=300)
    finally:
        capture.stop()
    assert record["phase"] == SUCCEEDED, record
    assert running_on(lab, name) == ["host2"]
    beats(lab, name)
    result = record.get("result", {})
    memory = int(result.get("memory_processed", 0))
    print(
        f"\n[lab] migration over TLS: captured {capture.bytes / MiB:.0f} MiB between {src} and {dst}, "
        f"{capture.dropped} packets dropped (the job sent {memory / MiB:.0f} MiB of memory and "
        f"{int(result.get('disk_processed', 0)) / MiB:.0f} MiB of disk, zero blocks not on the wire); "
        f"marker found {capture.hits} times"
    )
    # the capture saw the stream: about as many bytes as the memory sent, and (tcpdump counts its
    # drops) fewer lost packets than could hold the 4 MiB of marker, even at 64 KiB each
    assert memory > 32 * MiB and capture.bytes > 0.9 * memory
    assert 0 <= capture.dropped * 64 * 1024 < 4 * MiB
    assert capture.hits == 0  # ... and not one copy of the marker in it
    # the control: the marker is in the memory that was carried (a plaintext stream would show it)
    dump = lab.paths.shared / f"{name}.memory"
    try:
        lab.virsh("host2", "dump", "--memory-only", name, str(dump), timeout=120)
        found = 0
        with dump.open("rb") as f:
            tail = b""
            while chunk := f.read(1 << 22):
                window = tail + chunk
                found += window.count(marker)
                tail = window[-(len(marker) - 1) :]
    finally:
        dump.unlink(missing_ok=True)
    print(f"[lab] the marker is {found} times in the guest's memory on the target")
    assert found > 1000
