"""Can this host reach a peer's libvirtd? (ProbeTarget, the source side of preflight)

A migration fails late and obscurely when the source cannot reach the target ("unable to
connect to server", after a DNS or TCP timeout in the middle of the Perform phase). The probe
asks the same questions up front, one step at a time, and names the first one that fails:

1. the peer URI parses (``parse_peer_uri``): transport, host, libvirtd's port;
2. its host name resolves here -> TARGET_UNRESOLVABLE (FailedPrecondition);
3. TCP transports only (qemu+tcp 16509, qemu+tls / qemu:// 16514, or the URI's port): a TCP
   connection opens -> TARGET_UNREACHABLE (Unavailable); ssh, unix and local URIs skip this;
4. a libvirt connection to the URI opens -> per the libvirt error table (TARGET_UNREACHABLE,
   LIBVIRT_ACCESS_DENIED...);
5. the peer's QEMU migration address, when given, resolves too (QEMU listens there only
   during an incoming migration: nothing to connect to before).

``probe_peer`` runs the steps over injected primitives, so the libvirt adapter (sockets and
libvirt) and the fake hypervisor (an in-memory fleet) give the same errors for the same
situations. Only the addresses the URI names are contacted.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ferry.errors import FailedPrecondition, InvalidArgument, Unavailable

LIBVIRT_TCP_PORT = 16509
LIBVIRT_TLS_PORT = 16514

# transports whose connection is a plain TCP socket to libvirtd (libvirt's remote driver URIs)
_TCP_TRANSPORTS = {"tcp": LIBVIRT_TCP_PORT, "tls": LIBVIRT_TLS_PORT}
_KNOWN_TRANSPORTS = frozenset({"tcp", "tls", "ssh", "libssh", "libssh2", "unix", "ext"})


@dataclass(frozen=True)
class PeerAddress:
    """Where a libvirt URI points: ``qemu+tcp://host2:16509/system`` -> tcp, host2, 16509."""

    uri: str
    driver: str  # "qemu"
    transport: str  # "tcp", "tls", "ssh", "unix", ...; "" for a local URI (no host)
    host: str  # "" for a local URI
    port: int  # libvirtd's TCP port; 0 when the transport is not a TCP socket to libvirtd

    @property
    def tcp(self) -> bool:
        return self.port > 0


@functools.lru_cache(maxsize=4096)
def parse_peer_uri(uri: str) -> PeerAddress:
    """The transport, host and libvirtd port of a libvirt URI (remembered: a fleet's few URIs are
    parsed again and again; a refused one is not remembered).

    A remote URI without a transport (``qemu://host/system``) is TLS, as libvirt reads it.

    >>> parse_peer_uri("qemu+tcp://10.77.0.12/system")
    PeerAddress(uri='qemu+tcp://10.77.0.12/system', driver='qemu', transport='tcp', host='10.77.0.12', port=16509)
    >>> parse_peer_uri("qemu://host2:16600/system").port
    16600
    >>> parse_peer_uri("qemu+ssh://root@host2/system").port
    0
    """
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise _invalid(uri, str(exc)) from None
    if not parts.scheme or "://" not in uri:
        raise _invalid(uri, "it has no scheme (driver[+transport]://[host]/path)")
    driver, _, transport = parts.scheme.partition("+")
    host = parts.hostname or ""
    if transport and transport not in _KNOWN_TRANSPORTS:
        raise _invalid(uri, f"libvirt has no transport {transport!r}")
    if not host:
        if transport in _TCP_TRANSPORTS:
            raise _invalid(uri, f"a {transport} URI needs a host name")
        return PeerAddress(uri, driver, transport, "", 0)
    transport = transport or "tls"
    tcp_port = (port or _TCP_TRANSPORTS[transport]) if transport in _TCP_TRANSPORTS else 0
    return PeerAddress(uri, driver, transport, host, tcp_port)


def is_ip_address(host: str) -> bool:
    """An IP address literal (nothing to resolve)?

    >>> is_ip_address("10.77.0.12"), is_ip_address("fe80::1"), is_ip_address("host2")
    (True, True, False)
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- the errors (shared by real and fake)


def _invalid(uri: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"{uri!r} is not a libvirt URI Ferry can probe: {why}",
        reason="TARGET_URI_INVALID",
        hint="advertise the target as e.g. qemu+tls://HOST/system (advertise_libvirt_uri in its agent config)",
    )


def unresolvable(
    host: str, from_host: str, detail: str, *, what: str = "the target's libvirt URI"
) -> FailedPrecondition:
    return FailedPrecondition(
        f"{host} ({what}) does not resolve on {from_host}: {detail}",
        reason="TARGET_UNRESOLVABLE",
        hint=f"add {host} to DNS or to /etc/hosts on {from_host}, or have the target advertise an IP "
        "address (advertise_libvirt_uri / migration_address in its agent config)",
    )


def unreachable(peer: PeerAddress, address: str, from_host: str, detail: str) -> Unavailable:
    via = f"{peer.host} ({address})" if address != peer.host else peer.host
    listen = "listen_tls" if peer.transport == "tls" else "listen_tcp"
    return Unavailable(
        f"libvirtd on {via} port {peer.port} cannot be reached from {from_host}: {detail}",
        reason="TARGET_UNREACHABLE",
        hint=f"check routing and firewalls from {from_host} to {address}:{peer.port}, and that libvirtd on "
        f"{peer.host} listens there ({listen} in libvirtd.conf with --listen, or the "
        f"libvirtd-{peer.transport}.socket unit)",
    )


def open_failed(uri: str, from_host: str, detail: str) -> Unavailable:
    return Unavailable(
        f"a libvirt connection to {uri} cannot be opened from {from_host}: {detail}",
        reason="TARGET_UNREACHABLE",
        hint=f"check that libvirtd runs on the target and accepts connections on {uri} (transport, port, TLS "
        "certificates), and its log",
    )


# ---------------------------------------------------------------- the steps

Resolve = Callable[[str, int], Awaitable[Sequence[str]]]  # (host, port) -> addresses; OSError/TimeoutError
Connect = Callable[[str, int], Awaitable[None]]  # (address, port); OSError/TimeoutError
OpenLibvirt = Callable[[], Awaitable[None]]  # raises FerryError


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


async def probe_peer(
    uri: str,
    *,
    from_host: str,
    resolve: Resolve,
    connect: Connect,
    open_libvirt: OpenLibvirt,
    migration_address: str = "",
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run the steps of the module docstring; the round trip in ms (the TCP connect, else the
    libvirt open). Raises the first step's error."""
    peer = parse_peer_uri(uri)
    addresses: Sequence[str] = ()
    if peer.host:
        try:
            addresses = await resolve(peer.host, peer.port)
        except (OSError, TimeoutError) as exc:
            raise unresolvable(peer.host, from_host, _why(exc)) from None
        if not addresses:
            raise unresolvable(peer.host, from_host, "no address")
    latency: float | None = None
    if peer.tcp:
        failures = []
        for address in addresses:
            started = clock()
            try:
                await connect(address, peer.port)
            except (OSError, TimeoutError) as exc:
                failures.append((address, _why(exc)))
                continue
            latency = clock() - started
            break
        else:
            address, why = failures[0]
            others = f" (and {len(failures) - 1} other address(es))" if len(failures) > 1 else ""
            raise unreachable(peer, address, from_host, why + others)
    started = clock()
    await open_libvirt()
    if latency is None:
        latency = clock() - started
    if migration_address and not is_ip_address(migration_address.strip("[]")):
        try:
            if not await resolve(migration_address, 0):
                raise OSError("no address")
        except (OSError, TimeoutError) as exc:
            raise unresolvable(migration_address, from_host, _why(exc), what="the target's migration address") from None
    return max(0, round(latency * 1000))
