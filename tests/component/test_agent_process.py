"""`python -m ferry.agent.main --config agent.toml` as the lab and systemd start it: it serves on a
unix socket over libvirt's in-process test driver (test:///default, no libvirtd), answers
health checks and inventory, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry.certs import issue_identity, new_ca, write_pem
from ferry.identity import Identity, Role
from ferry.rpc import Tls, create_channel
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc

pytest.importorskip("libvirt")


def write_config(tmp: Path, sock: Path, tls: str = "insecure = true\n", **over: str) -> Path:
    keys = {
        "name": '"host1"',
        "listen": f'["unix:{sock}"]',
        "libvirt_uri": '"test:///default"',
        "advertise_libvirt_uri": '"qemu+tcp://10.77.0.11/system"',
        "migration_address": '"10.77.0.11"',
        "image_dirs": f'["{tmp}/images"]',
        "state_dir": f'"{tmp}/state"',
        "libvirt_timeout_s": "5",
        **over,
    }
    path = tmp / "agent.toml"
    path.write_text("[agent]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()) + "[tls]\n" + tls)
    return path


async def test_agent_process_serves_and_stops_on_sigterm(tmp_path):
    (tmp_path / "images").mkdir()
    sock = tmp_path / "run" / "agent.sock"
    pki = tmp_path / "pki"
    ca = new_ca()
    write_pem(pki, "ca", ca)
    write_pem(pki, "agent", issue_identity(ca, Identity(Role.AGENT, "host1"), dns=["localhost"]))
    write_pem(pki, "coordinator", issue_identity(ca, Identity(Role.COORDINATOR, "c1")))
    tls = f'ca = "{pki}/ca.pem"\ncert = "{pki}/agent.pem"\nkey = "{pki}/agent-key.pem"\n'
    config = write_config(tmp_path, sock, tls=tls)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry.agent.main", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        async with asyncio.timeout(20):
            while not sock.exists():
                assert proc.poll() is None, proc.stderr.read()
                await asyncio.sleep(0.05)
        plain = create_channel(f"unix:{sock}")
        try:  # mutual TLS only: a plaintext client gets no answer
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await agrpc.AgentStub(plain).GetInventory(apb.GetInventoryRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await plain.close()
        client = Tls(pki / "ca.pem", pki / "coordinator.pem", pki / "coordinator-key.pem")
        channel = create_channel(f"unix:{sock}", tls=client)
        try:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="ferry.v1.Agent"), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            inv = await agrpc.AgentStub(channel).GetInventory(apb.GetInventoryRequest(), timeout=10)
            assert inv.host.libvirt_uri == "qemu+tcp://10.77.0.11/system"
            assert [d.name for d in inv.domains] == ["test"]
        finally:
            await channel.close()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = await asyncio.to_thread(proc.communicate, timeout=15)
        assert proc.returncode == 0, err
        assert "serving on" in err and "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_config_exits_2_naming_the_key(tmp_path):
    config = write_config(tmp_path, tmp_path / "a.sock", prepare_tll_s="5")
    proc = subprocess.run(
        [sys.executable, "-m", "ferry.agent.main", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "prepare_tll_s" in proc.stderr
