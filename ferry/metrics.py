"""Prometheus metrics shared by the agent and the coordinator, and the HTTP endpoint serving them.

Each daemon builds one registry (``new_registry``: the process's CPU, memory and file
descriptors, Python's GC, and ``ferry_build_info``), adds its own metrics to it
(``agent/metrics.py``, ``coordinator/metrics.py``) and serves it with ``MetricsServer`` on the
addresses of its ``[metrics]`` section: ``GET /metrics`` answers in the text format, or in
OpenMetrics when the scraper asks for it. On TCP it speaks HTTPS with the daemon's own ``[tls]``
certificate and asks for a client certificate from the same CA, whose identity must have a reader's
role (``ferry.authz.METRICS``: reader, scheduler, operator); any other is answered 403, none fails
the handshake. A unix socket (mode 0660) is plain HTTP: whoever may open it is on the host. Plain
HTTP on TCP only with ``[metrics] insecure = true`` or a daemon without TLS. The server runs in the
daemon's event loop, so the collectors that read the engine's or the driver's state at scrape time
read it between two steps of that loop, never in the middle of one.

Metrics of every gRPC server (``RpcMetrics``, an ``ferry.rpc.RpcObserver``):

- ``ferry_rpc_server_handled_total{service, method, code}``: calls ended, by status code;
- ``ferry_rpc_server_handling_seconds{service, method}``: how long they took (a Migrate stream
  lasts as long as its migration).

Metrics of the store (``StoreMetrics``, for ``ferry.timed_store.TimedStore``):

- ``ferry_etcd_request_duration_seconds{operation}``: every get, list, create, update, delete, commit,
  grant_lease, keepalive, revoke;
- ``ferry_etcd_request_failures_total{operation, reason}``: those that failed, by Ferry reason
  (``CAS_CONFLICT`` is a lost compare-and-set, ``UNAVAILABLE`` an unreachable etcd).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ferry import authz
from ferry.errors import FerryError
from ferry.identity import Identity, identity_of
from ferry.rpc import Tls
from ferry.tomlconfig import MetricsConfig

log = logging.getLogger(__name__)

RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_READ_TIMEOUT_S = 5.0
_MAX_HEADER_LINES = 100


def ferry_version() -> str:
    """The installed distribution's version (pyproject.toml's, the one source of it)."""
    try:
        return metadata.version("ferry")
    except metadata.PackageNotFoundError:
        return "unknown"


def new_registry(component: str, certificates: Sequence[tuple[str, Path]] = ()) -> CollectorRegistry:
    """A registry for one daemon: process and Python metrics, ``ferry_build_info``, and when each of
    its ``certificates`` ((use, file); ``certificate_files``) ends."""
    registry = CollectorRegistry()
    registry.register(CertificateExpiry(certificates))
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        with contextlib.suppress(ValueError):  # already in it
            registry.register(collector)
    info = Gauge(
        "ferry_build_info", "Always 1: the Ferry version and component", ["version", "component"], registry=registry
    )
    info.labels(ferry_version(), component).set(1)
    return registry


class RpcMetrics:
    """Calls of a gRPC server (an ``ferry.rpc.RpcObserver``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "ferry_rpc_server_handled",
            "gRPC calls handled by this server, by status code",
            ["service", "method", "code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "ferry_rpc_server_handling_seconds",
            "How long gRPC calls took, from arrival to their last message",
            ["service", "method"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )

    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None:
        short = service.rsplit(".", 1)[-1]  # ferry.v1.Agent -> Agent
        self.handled.labels(short, method, code).inc()
        self.seconds.labels(short, method).observe(seconds)


class StoreMetrics:
    """Store (etcd) calls (a ``ferry.timed_store.StoreObserver``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seconds = Histogram(
            "ferry_etcd_request_duration_seconds",
            "How long calls to etcd took (successful or not)",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "ferry_etcd_request_failures",
            "Calls to etcd that failed, by Ferry reason (CAS_CONFLICT: a compare-and-set lost)",
            ["operation", "reason"],
            registry=registry,
        )

    def store_call(self, operation: str, seconds: float, reason: str) -> None:
        self.seconds.labels(operation).observe(seconds)
        if reason:
            self.failures.labels(operation, reason).inc()


class CertificateExpiry:
    """``ferry_tls_certificate_expiry_timestamp_seconds{use, file}``: when each certificate file the
    daemon uses ends (a bundle: its first certificate to end), read at scrape time, so a file
    replaced on disk shows its new date (the daemon itself takes it up at its next start). The
    daemons check expiry only at start; a certificate that ends while they run fails every
    handshake of its link, so alert well before: ``ferry_tls_certificate_expiry_timestamp_seconds -
    time() < 14 * 86400``. A file that cannot be read or parsed is left out (and logged once)."""

    def __init__(self, files: Sequence[tuple[str, Path]]) -> None:
        self.files = list(dict.fromkeys(files))
        self._seen: dict[Path, tuple[float, float]] = {}  # path -> (mtime, not after)
        self._unreadable: set[Path] = set()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "ferry_tls_certificate_expiry_timestamp_seconds",
            "When each certificate the daemon uses ends (Unix time; a bundle: its first to end)",
            labels=["use", "file"],
        )
        for use, path in self.files:
            ends = self._not_after(path)
            if ends is not None:
                family.add_metric([use, str(path)], ends)
        yield family

    def _not_after(self, path: Path) -> float | None:
        from ferry.certs import ends_at

        try:
            mtime = path.stat().st_mtime
            seen = self._seen.get(path)
            if seen is not None and seen[0] == mtime:
                return seen[1]
            ends = ends_at(path.read_bytes()).timestamp()
        except (OSError, ValueError) as exc:
            if path not in self._unreadable:
                self._unreadable.add(path)
                log.warning("cannot read the certificate %s for its expiry metric: %s", path, exc)
            return None
        self._unreadable.discard(path)
        self._seen[path] = (mtime, ends)
        return ends


def certificate_files(places: Sequence[tuple[str, Tls]]) -> list[tuple[str, Path]]:
    """(use, file) of each certificate and CA of ``places`` (``ferry.daemon.tls_in``'s answer).

    >>> t = Tls(Path("ca.pem"), Path("a.pem"), Path("a-key.pem"))
    >>> certificate_files([("tls, agents.tls", t)])
    [('tls, agents.tls', PosixPath('a.pem')), ('tls, agents.tls: ca', PosixPath('ca.pem'))]
    """
    return [item for where, tls in places for item in ((where, tls.cert), (f"{where}: ca", tls.ca))]


# ---------------------------------------------------------------- the endpoint


def server_context(tls: Tls) -> ssl.SSLContext:
    """TLS for the TCP endpoints: the daemon's certificate, and a client certificate from ``tls.ca``
    required (mutual TLS, as on the gRPC ports)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.load_verify_locations(cafile=str(tls.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_identity(peercert: object) -> Identity | None:
    """The Ferry identity in a peer certificate as ``ssl`` decodes it (``getpeercert()``).

    >>> peer_identity({"subjectAltName": (("DNS", "prom1"), ("URI", "ferry://reader/prom1"))})
    Identity(role=<Role.READER: 'reader'>, name='prom1')
    >>> peer_identity({}) is None, peer_identity(None) is None
    (True, True)
    """
    if not isinstance(peercert, dict):
        return None
    return identity_of([value for kind, value in peercert.get("subjectAltName", ()) if kind == "URI"])


class MetricsServer:
    """``GET /metrics`` over HTTP/1.x on TCP and unix-socket addresses (``HOST:PORT``, ``unix:/path``).

    With ``tls``, TCP addresses speak HTTPS and admit only a client certificate of a reader's role
    (``ferry.authz.check_metrics``; 403 with the reason otherwise); unix sockets stay plain HTTP, mode
    0660. One request per connection (``Connection: close``), as Prometheus scrapes; anything but GET
    or HEAD of ``/metrics`` (or ``/``) gets 405 or 404.
    """

    def __init__(self, registry: CollectorRegistry, tls: Tls | None = None) -> None:
        self.registry = registry
        self._context = server_context(tls) if tls is not None else None
        self._servers: list[asyncio.Server] = []
        self._open: set[asyncio.StreamWriter] = set()  # connections being answered or closed

    @property
    def scheme(self) -> str:
        """How the TCP addresses serve, for the daemon's start-up line."""
        return "GET /metrics, HTTPS for readers' certificates" if self._context is not None else "GET /metrics"

    async def start(self, addresses: Sequence[str]) -> list[int]:
        """Listen on every address; the bound port of each (0 for unix sockets)."""
        ports = []
        try:
            for address in addresses:
                ports.append(await self._listen(address))
        except BaseException:
            await self.close()
            raise
        return ports

    async def _listen(self, address: str) -> int:
        if address.startswith("unix:"):
            path = Path(address.removeprefix("unix:").removeprefix("//"))
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if path.is_socket():
                    path.unlink()  # left by a previous run
            server = await asyncio.start_unix_server(self._serve, path=str(path))
            self._servers.append(server)
            os.chmod(path, 0o660)  # the owner and its group; not every local user
            return 0
        host, _, port = address.rpartition(":")
        server = await asyncio.start_server(
            self._serve,
            host=host.strip("[]") or None,
            port=int(port),
            ssl=self._context,
            ssl_handshake_timeout=_READ_TIMEOUT_S if self._context is not None else None,
            ssl_shutdown_timeout=_READ_TIMEOUT_S if self._context is not None else None,
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for writer in list(self._open):  # e.g. a TLS close waiting for the scraper's close_notify
            writer.transport.abort()
        for server in servers:
            await server.wait_closed()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_READ_TIMEOUT_S):
                while self._open:
                    await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            async with asyncio.timeout(_READ_TIMEOUT_S):
                request = await reader.readline()
                headers = await _read_headers(reader)
            refusal = self._refusal(writer)
            if refusal is not None:
                status, content_type, body = "403 Forbidden", "text/plain", refusal.encode()
            else:
                status, content_type, body = self._answer(request, headers)
            head_only = request.split(b" ", 1)[0] == b"HEAD"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            if not head_only:
                writer.write(body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass  # a scraper that went away or sent nonsense: nothing to answer
        except Exception:  # a collector failed: say so in the log, keep serving
            log.exception("metrics scrape failed")
        finally:
            writer.close()
            try:
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.wait_closed()
            finally:  # also when cancelled there (at shutdown): close() waits for what is open
                self._open.discard(writer)

    def _refusal(self, writer: asyncio.StreamWriter) -> str | None:
        """Why this connection's client may not scrape (None: it may, or it came without TLS)."""
        if writer.get_extra_info("ssl_object") is None:
            return None
        try:
            authz.check_metrics(peer_identity(writer.get_extra_info("peercert")))
        except FerryError as err:
            log.info("metrics scrape refused to %s: %s: %s", writer.get_extra_info("peername"), err.reason, err.message)
            return f"{err.message} ({err.reason}): {err.hint}\n"
        return None

    def _answer(self, request: bytes, headers: dict[str, str]) -> tuple[str, str, bytes]:
        parts = request.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return "400 Bad Request", "text/plain", b"bad request\n"
        method, target, _ = parts
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET /metrics\n"
        if target.split("?", 1)[0] not in ("/metrics", "/"):
            return "404 Not Found", "text/plain", b"metrics are at /metrics\n"
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        return "200 OK", content_type, encoder(self.registry)


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADER_LINES):
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ValueError("too many header lines")


def exporter(registry: CollectorRegistry, config: MetricsConfig, daemon_tls: Tls | None) -> MetricsServer:
    """The daemon's endpoint: HTTPS with the daemon's certificate unless ``[metrics] insecure = true``
    (a warning, when the daemon's other ports use TLS) or the daemon runs without TLS."""
    tls = config.tls(daemon_tls)
    if config.enabled and tls is None and daemon_tls is not None:
        log.warning("metrics are served over plain HTTP to any client ([metrics] insecure = true)")
    return MetricsServer(registry, tls)


async def serve_metrics(
    registry: CollectorRegistry, addresses: Iterable[str], tls: Tls | None = None
) -> tuple[MetricsServer, list[int]]:
    """A started ``MetricsServer`` for ``registry`` and the bound port of each address."""
    server = MetricsServer(registry, tls)
    ports = await server.start(list(addresses))
    return server, ports
