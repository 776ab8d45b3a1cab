"""The metrics endpoint as a scraper sees it: HTTP on TCP (port 0) and on a unix socket."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from ferry.metrics import MetricsServer, new_registry


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
