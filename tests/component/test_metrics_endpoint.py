"""The metrics endpoint as a scraper sees it: HTTP on TCP (port 0) and on a unix socket; HTTPS for
a reader's client certificate when the daemon has TLS."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferry.certs import issue, issue_identity, new_ca, write_pem
from ferry.identity import Identity, Role
from ferry.metrics import MetricsServer, exporter, new_registry
from ferry.rpc import Tls
from ferry.tomlconfig import MetricsConfig


async def request(address: str, raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send ``raw`` and read the whole answer: status line, headers, body."""
    if address.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(address[5:])
    else:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


async def test_get_head_and_refusals(tmp_path: Path) -> None:
    sock = tmp_path / "metrics.sock"
    sock.parent.mkdir(exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))  # left behind by a previous run: replaced
    stale.close()
    server = MetricsServer(new_registry("agent"))
    port, unix_port = await server.start(["127.0.0.1:0", f"unix:{sock}"])
    assert port > 0 and unix_port == 0
    try:
        for address in (f"127.0.0.1:{port}", f"unix:{sock}"):
            status, headers, body = await request(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == "HTTP/1.1 200 OK"
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert int(headers["content-length"]) == len(body)
            assert b'ferry_build_info{component="agent"' in body
            assert b"process_cpu_seconds_total" in body or b"python_info" in body

        status, headers, body = await request(
            f"127.0.0.1:{port}", b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
        )
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")

        status, headers, body = await request(f"127.0.0.1:{port}", b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK" and body == b"" and int(headers["content-length"]) > 0
        assert (await request(f"127.0.0.1:{port}", b"POST /metrics HTTP/1.1\r\n\r\n"))[0].startswith("HTTP/1.1 405")
        assert (await request(f"127.0.0.1:{port}", b"GET /debug HTTP/1.1\r\n\r\n"))[0].startswith("HTTP/1.1 404")
        assert (await request(f"127.0.0.1:{port}", b"hello\r\n\r\n"))[0].startswith("HTTP/1.1 400")
    finally:
        await server.close()
    # closed: nothing answers any more
    try:
        await asyncio.open_connection("127.0.0.1", port)
        raise AssertionError("still listening after close")
    except OSError:
        pass


# ---------------------------------------------------------------- HTTPS: mutual TLS and a reader's role


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca = new_ca("Ferry test CA")
    write_pem(d, "ca", ca)
    write_pem(d, "server", issue_identity(ca, Identity(Role.AGENT, "host1"), dns=["localhost"], ips=["127.0.0.1"]))
    for role in ("reader", "scheduler", "operator", "agent", "coordinator"):
        write_pem(d, role, issue_identity(ca, Identity(Role(role), "someone")))
    write_pem(d, "anonymous", issue(ca, "someone"))  # the right CA, no ferry:// identity
    write_pem(d, "foreign", issue_identity(new_ca("Another CA"), Identity(Role.READER, "someone")))
    return d


def tls_of(pki: Path, stem: str) -> Tls:
    return Tls(pki / "ca.pem", pki / f"{stem}.pem", pki / f"{stem}-key.pem")


async def scrape(port: int, pki: Path, stem: str | None) -> tuple[str, bytes]:
    """GET /metrics over HTTPS with ``stem``'s client certificate (None: without one)."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if stem is not None:
        context.load_cert_chain(str(pki / f"{stem}.pem"), str(pki / f"{stem}-key.pem"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], body


@pytest.fixture
async def https(pki: Path, tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    server = MetricsServer(new_registry("agent"), tls_of(pki, "server"))
    sock = tmp_path / "m.sock"
    port, _ = await server.start(["127.0.0.1:0", f"unix:{sock}"])
    try:
        yield port, sock
    finally:
        await server.close()


@pytest.mark.parametrize("role", ["reader", "scheduler", "operator"])
async def test_a_readers_certificate_scrapes_over_https(https: tuple[int, Path], pki: Path, role: str) -> None:
    status, body = await scrape(https[0], pki, role)
    assert status == "HTTP/1.1 200 OK" and b'ferry_build_info{component="agent"' in body


@pytest.mark.parametrize(
    ("stem", "reason"),
    [("agent", "ROLE_READER_REQUIRED"), ("coordinator", "ROLE_READER_REQUIRED"), ("anonymous", "NO_IDENTITY")],
)
async def test_other_identities_are_refused_with_the_reason(
    https: tuple[int, Path], pki: Path, stem: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent's certificate (a compromised host) does not read the other hosts' VMs and migrations."""
    caplog.set_level(logging.INFO, "ferry.metrics")
    status, body = await scrape(https[0], pki, stem)
    assert status == "HTTP/1.1 403 Forbidden" and reason.encode() in body
    assert b"ferry_" not in body
    assert b"ferry://reader/NAME" in body  # what to use instead
    assert any(reason in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("stem", [None, "foreign"])
async def test_no_certificate_or_another_cas_fails_the_handshake(
    https: tuple[int, Path], pki: Path, stem: str | None
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        status, body = await scrape(https[0], pki, stem)
        assert not body  # TLS 1.3: the refusal may come with the first read
        raise ConnectionError(status)


async def test_plain_http_to_the_https_port_gets_no_metrics(https: tuple[int, Path]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", https[0])
    writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert b"ferry_" not in answer


async def test_the_unix_socket_stays_plain_http_for_its_owner_and_group(https: tuple[int, Path]) -> None:
    sock = https[1]
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    status, _, body = await request(f"unix:{sock}", b"GET /metrics HTTP/1.1\r\n\r\n")
    assert status == "HTTP/1.1 200 OK" and b"ferry_build_info" in body


@pytest.mark.parametrize(("insecure", "expect_tls"), [(False, True), (True, False)])
def test_the_daemon_endpoint_uses_its_tls_unless_told_insecure(
    pki: Path, insecure: bool, expect_tls: bool, caplog: pytest.LogCaptureFixture
) -> None:
    server = exporter(new_registry("agent"), MetricsConfig(insecure=insecure), tls_of(pki, "server"))
    assert ("HTTPS" in server.scheme) is expect_tls
    assert any("plain HTTP" in r.getMessage() for r in caplog.records) is insecure
    assert "HTTPS" not in exporter(new_registry("agent"), MetricsConfig(), None).scheme  # a daemon without TLS


def test_certificate_expiry_is_read_at_scrape_time(pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A certificate that ends while a daemon runs fails every handshake of its link: the metric
    says when each ends, and a file renewed on disk shows its new date at the next scrape."""
    import datetime as dt
    import shutil

    from prometheus_client import CollectorRegistry, generate_latest

    from ferry.metrics import CertificateExpiry, certificate_files

    cert = tmp_path / "server.pem"
    shutil.copy(pki / "server.pem", cert)
    registry = CollectorRegistry()
    files = certificate_files([("tls", Tls(pki / "ca.pem", cert, pki / "server-key.pem"))])
    registry.register(CertificateExpiry([*files, ("migration", tmp_path / "missing.pem")]))

    def ends() -> dict[str, float]:
        text = generate_latest(registry).decode()
        return {
            line.split('use="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ferry_tls_certificate_expiry_timestamp_seconds{")
        }

    first = ends()
    assert set(first) == {"tls", "tls: ca"}  # the missing file is left out, and said so once
    assert first["tls"] > dt.datetime.now(dt.UTC).timestamp() + 300 * 86400  # ferry-certs: a year
    later = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    renewed = issue_identity(new_ca("CA"), Identity(Role.AGENT, "host1"), days=3, not_before=later)
    cert.write_bytes(renewed.cert)
    os.utime(cert, (1, 1))  # another mtime than the first file's
    assert ends()["tls"] < dt.datetime.now(dt.UTC).timestamp()  # the file on disk now: already ended
    ends()
    assert sum("missing.pem" in r.getMessage() for r in caplog.records) == 1
