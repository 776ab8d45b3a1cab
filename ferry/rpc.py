"""The one place where Ferry builds gRPC servers and channels, and turns errors into statuses.

Mutual TLS is switched on here (``Tls``) for every server and channel at once; every server also
gets ``ferry.rpc_auth.Authorizer``, which enforces the role table (``ferry.authz``) on each call
and writes the audit log. ``tls=None`` is plaintext: only when a config says ``insecure = true``.
Addresses are gRPC targets: ``HOST:PORT`` or ``unix:/path/to.sock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from ferry import logcontext
from ferry.errors import (
    ERROR_DOMAIN,
    DeadlineExceeded,
    FerryError,
    Internal,
    InvalidArgument,
    StatusCode,
    Unavailable,
    clip,
    clip_bytes,
    error_for_code,
)
from ferry.identity import Role, identity_of

log = logging.getLogger(__name__)

_STATUS_DETAILS_KEY = "grpc-status-details-bin"

# A status travels in the trailers, which a client refuses above 8 KiB (grpc.max_metadata_size):
# the message is sent twice (grpc-message, percent-encoded: up to 3 characters a byte, and inside
# the google.rpc.Status, base64), the hint once. These caps keep the worst case near 5 KiB.
STATUS_MESSAGE_MAX_BYTES = 1024
STATUS_HINT_MAX_BYTES = 512

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
"""A servicer method's context (``rpc_method`` wraps methods of every request and response type)."""


@dataclass(frozen=True)
class Tls:
    """PEM files for mutual TLS: the CA that signs every Ferry certificate, this process's
    certificate (its identity, ``ferry/identity.py``) and key. ``None`` instead of a Tls means
    plaintext, which configs allow only with an explicit ``insecure = true``."""

    ca: Path
    cert: Path
    key: Path


_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # a channel of its own per client: a new channel must not inherit a dead connection's backoff
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
]


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts at once; a call beyond ``max_concurrent_rpcs`` is refused at once
    with RESOURCE_EXHAUSTED (streams count while they are open)."""

    max_concurrent_rpcs: int = 512
    # with TLS, what one caller may hold of them (``ferry.rpc_auth.CallBudget``): each identity but
    # the coordinator's at most ``max_calls_per_identity``; readers, schedulers and agents together
    # leave ``reserved_for_privileged`` to the coordinator and operators (a reader's 600 idle watch
    # streams locked operators out of the coordinator and the coordinator out of an agent)
    max_calls_per_identity: int = 128
    reserved_for_privileged: int = 64
    max_streams_per_connection: int = 100  # HTTP/2 streams one client connection may have open
    max_receive_bytes: int = 4 << 20  # one request message (a domain XML is capped at 1 MiB)
    max_send_bytes: int = 64 << 20  # one response message (an inventory of many domains)


def check_pair(tls: Tls) -> None:
    """Refuse a certificate and a key that do not belong together, or a file that is no PEM of
    its kind, naming the files: gRPC itself only logs "Invalid private key" and every call then
    fails as if no server answered. InvalidArgument (TLS_FILE_INVALID, TLS_KEY_MISMATCH)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    def load(what: str, path: Path, loader: Callable[[bytes], Any]) -> Any:
        try:
            return loader(path.read_bytes())
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(
                f"{path} is not a PEM {what}: {exc}",
                reason="TLS_FILE_INVALID",
                hint=f"give the {what} file (PEM) made by ferry-certs",
            ) from None
        except OSError as exc:
            raise InvalidArgument(
                f"cannot read the {what} {path}: {exc.strerror}",
                reason="TLS_FILE_UNREADABLE",
                hint="check the path and permissions",
            ) from None

    cert = load("certificate", tls.cert, x509.load_pem_x509_certificate)
    key = load("private key", tls.key, lambda b: serialization.load_pem_private_key(b, password=None))
    load("CA certificate", tls.ca, x509.load_pem_x509_certificate)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise InvalidArgument(
            f"the key {tls.key} does not belong to the certificate {tls.cert}",
            reason="TLS_KEY_MISMATCH",
            hint="give the key issued with that certificate (ferry-certs writes NAME.pem and NAME-key.pem)",
        )


def _server_credentials(tls: Tls) -> grpc.ServerCredentials:
    check_pair(tls)
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=tls.ca.read_bytes(),
        require_client_auth=True,
    )


def _prepare_unix_socket(address: str) -> None:
    """Make the directory of a unix socket; remove a stale socket left by a previous run."""
    path = Path(address.removeprefix("unix:").removeprefix("//"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()


# ---------------------------------------------------------------- every call of a server


class RpcObserver(Protocol):
    """Told about every call of a Ferry service when it ends (the daemons' RPC metrics)."""

    def rpc_handled(self, service: str, method: str, code: str, seconds: float) -> None:
        """``code``: the gRPC status code's name (``OK``, ``NOT_FOUND``, ``CANCELLED``, ...)."""
        ...


def _status_name(context: Context, exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"  # the client went away (or the server is stopping)
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "OK" if exc is None else "UNKNOWN"


class _CallInterceptor(grpc.aio.ServerInterceptor):
    """The one interceptor of every Ferry server, for the calls of its own services (not health
    checking or reflection): binds the migration a call's metadata names for the handler's log
    lines (``ferry.logcontext``) and tells the observer how long the call took and its status."""

    def __init__(self, observer: RpcObserver | None, *, verify_callers: bool = False) -> None:
        self.observer = observer
        self.services: set[str] = set()  # filled once the servicers are registered
        # with TLS, only a coordinator's calls name the migration they serve: anyone else's words
        # would land in the server's log lines as its fields (audit lines included)
        self.verify_callers = verify_callers

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        service, _, method = str(details.method).lstrip("/").partition("/")
        if handler is None or service not in self.services:
            return handler
        migration = logcontext.from_metadata(cast(Any, details.invocation_metadata))
        wrapped = {
            kind: self._wrap(behavior, service, method, migration)
            for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
            if (behavior := getattr(handler, kind, None)) is not None
        }
        # grpc's handlers are namedtuples (grpc._utilities.RpcMethodHandler)
        return cast("grpc.RpcMethodHandler[Any, Any]", cast(Any, handler)._replace(**wrapped))

    def _named(
        self, migration: logcontext.MigrationContext | None, context: Context
    ) -> logcontext.MigrationContext | None:
        """The migration the call's metadata names, if its caller may name one."""
        if migration is None or not self.verify_callers:
            return migration
        auth = context.auth_context() or {}
        uris = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in auth.get("peer_uri", ())]
        who = identity_of(uris)
        return migration if who is not None and who.role is Role.COORDINATOR else None

    def _done(self, service: str, method: str, started: float, context: Context, exc: BaseException | None) -> None:
        if self.observer is not None:
            self.observer.rpc_handled(service, method, _status_name(context, exc), time.monotonic() - started)

    def _wrap(
        self, behavior: Callable[..., Any], service: str, method: str, migration: logcontext.MigrationContext | None
    ) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                started, failure = time.monotonic(), None
                logcontext.bind(self._named(migration, context))
                try:
                    async for item in behavior(request, context):
                        yield item
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    self._done(service, method, started, context, failure)

            return stream

        async def unary(request: Any, context: Context) -> Any:
            started, failure = time.monotonic(), None
            logcontext.bind(self._named(migration, context))
            try:
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._done(service, method, started, context, failure)

        return unary


def call_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata for an outgoing call: the migration this task works on (``ferry.logcontext``), so
    the server's log lines about it carry its fields too."""
    return logcontext.to_metadata(logcontext.current())


def create_server(
    addresses: Sequence[str],
    register: Callable[[grpc.aio.Server], Iterable[str]],
    *,
    tls: Tls | None = None,
    limits: ServerLimits = ServerLimits(),
    observer: RpcObserver | None = None,
) -> tuple[grpc.aio.Server, list[int]]:
    """Build (not start) an asyncio gRPC server listening on ``addresses``.

    ``register(server)`` adds the servicers and returns their full service names; health
    checking (each service SERVING) and reflection are added for them. Every call of those
    services goes through two interceptors: the outer binds the migration named in its metadata
    for its log lines and tells ``observer`` (the metrics) how it ended (refusals included); the
    inner (``ferry.rpc_auth.Authorizer``) checks the caller's certificate against the role table
    (``ferry.authz``) when there is ``tls`` and writes the audit log. With ``tls``, clients must
    present a certificate from its CA. ``limits`` caps concurrent calls, streams per connection and
    message sizes. Returns the server and the bound port of each address (0 for unix sockets), so
    tests can listen on port 0.
    """
    from ferry.rpc_auth import Authorizer, CallBudget  # it imports this module (to_status)

    interceptor = _CallInterceptor(observer, verify_callers=tls is not None)
    server = grpc.aio.server(
        options=[
            *_SERVER_OPTIONS,
            ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
            ("grpc.max_receive_message_length", limits.max_receive_bytes),
            ("grpc.max_send_message_length", limits.max_send_bytes),
        ],
        interceptors=[interceptor, Authorizer(enforce=tls is not None, budget=CallBudget.of(limits))],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    if tls is None:
        log.warning("serving %s WITHOUT TLS: no authentication, no roles (insecure = true)", ", ".join(addresses))
    names = list(register(server))
    interceptor.services.update(names)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *names]:
        # aio HealthServicer.set is a coroutine; the underlying dict write is enough before start
        # (a private attribute: not in the type stubs)
        health_servicer._server_status[name] = health_pb2.HealthCheckResponse.SERVING  # type: ignore[attr-defined]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    ports = []
    for address in addresses:
        if address.startswith("unix:"):
            _prepare_unix_socket(address)
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, _server_credentials(tls))
        if not address.startswith("unix:") and port == 0:
            raise OSError(f"cannot listen on {address}")
        ports.append(port)
    return server, ports


def create_channel(address: str, *, tls: Tls | None = None, server_name: str | None = None) -> grpc.aio.Channel:
    """An asyncio channel to a Ferry server (agent or coordinator).

    With ``tls`` the server's certificate must come from the CA and name the host dialled (a
    ``unix:`` address dials ``localhost``), or ``server_name`` when given: the coordinator dials
    a registered agent address expecting the agent's host name, so a registration that points
    at another agent fails the handshake.
    """
    if tls is None:
        return grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes(),
        certificate_chain=tls.cert.read_bytes(),
    )
    options: list[tuple[str, str | int]] = list(_CHANNEL_OPTIONS)
    if not server_name and address.startswith("unix:"):
        server_name = "localhost"  # a local socket: the server's certificate names localhost
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.aio.secure_channel(address, creds, options=options)


async def serving(channel: grpc.aio.Channel, *, timeout_s: float) -> bool:
    """The server's grpc.health.v1 Check says SERVING (False when the call fails or times out)."""
    # types-grpcio-health-checking declares HealthStub without its methods
    check = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
    try:
        reply: health_pb2.HealthCheckResponse = await check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- errors <-> status


def grpc_code(code: StatusCode) -> grpc.StatusCode:
    """``ferry.errors.StatusCode`` as grpc's enum (same names, same numbers).

    >>> grpc_code(StatusCode.NOT_FOUND)
    <StatusCode.NOT_FOUND: (5, 'not found')>
    """
    return grpc.StatusCode[code.name]


def error_type_for(code: grpc.StatusCode) -> type[FerryError]:
    """The error type a gRPC status code maps back to (``ferry.errors.error_for_code``)."""
    return error_for_code(code.value[0])


def to_status(err: FerryError) -> grpc.Status:
    """A gRPC status carrying ``err`` as google.rpc.ErrorInfo (reason, hint).

    Message and hint are cut to ``STATUS_MESSAGE_MAX_BYTES`` / ``STATUS_HINT_MAX_BYTES``, so no
    error, whatever input it repeats, makes a trailer the client refuses.
    """
    info = error_details_pb2.ErrorInfo(reason=clip(err.reason, 64), domain=ERROR_DOMAIN)
    if err.hint:
        info.metadata["hint"] = clip_bytes(err.hint, STATUS_HINT_MAX_BYTES)
    detail = any_pb2.Any()
    detail.Pack(info)
    message = clip_bytes(err.message, STATUS_MESSAGE_MAX_BYTES)
    status = status_pb2.Status(code=int(err.code), message=message, details=[detail])
    return rpc_status.to_status(status)


def from_rpc_error(exc: grpc.RpcError) -> FerryError:
    """The FerryError a failed call carried (or a plain one built from its status code)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    message = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    err_type = error_type_for(code)
    reason, hint = None, ""
    for key, value in _trailing_metadata(exc):
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:  # Unpack: False for another type
                reason, hint = info.reason, info.metadata.get("hint", "")
    if reason is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        reason = "UNREACHABLE" if code == grpc.StatusCode.UNAVAILABLE else "TIMEOUT"
    if reason is None and (busy := _busy_message(code, message or "")):
        reason, hint, message = SERVER_BUSY, SERVER_BUSY_HINT, f"{busy} ({message})"
    return err_type(message or code.name, reason=reason, hint=hint)


SERVER_BUSY = "SERVER_BUSY"
SERVER_BUSY_HINT = (
    "retry in a few seconds, with fewer calls open at once; every Ferry call is safe to repeat "
    "(a submission by its idempotency key)"
)


def _busy_message(code: grpc.StatusCode, message: str) -> str:
    """What a status without a Ferry error says when gRPC itself turned the call away from a server
    with more calls than it takes (the call never reached Ferry's code); "" for anything else.

    - ``RESOURCE_EXHAUSTED`` "Concurrent RPC limit exceeded!": the server already ran its
      ``max_concurrent_rpcs`` calls.
    - ``CANCELLED`` "CANCELLED": gRPC's core dropped a call that the server's event loop had not
      taken up yet -- more than 1,000 waiting, or one waiting 30 s -- or the server was stopping.
      (A call cancelled by its own client says "Locally cancelled by application!".)
    """
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith("Concurrent RPC limit exceeded"):
        return "the server refused the call: it already runs as many calls as it takes at once"
    if code == grpc.StatusCode.CANCELLED and message == "CANCELLED":
        return (
            "the server dropped the call before taking it up: more calls were waiting than it takes "
            "(over 1,000, or one for 30 s), or it was stopping"
        )
    return ""


def has_status_details(exc: grpc.RpcError) -> bool:
    """The failed call carried a google.rpc.Status: a server answered it (a broken transport carries none)."""
    return any(key == _STATUS_DETAILS_KEY for key, _ in _trailing_metadata(exc))


def _trailing_metadata(exc: grpc.RpcError) -> Iterable[tuple[str, str | bytes]]:
    """The (key, value) pairs of a failed call's trailing metadata (none when it has no such call).

    The stubs type grpc.RpcError's as ``_Metadatum`` objects; an aio error returns ``grpc.aio.Metadata``
    and a sync one namedtuples: both iterate as (key, value) pairs.
    """
    if not callable(getattr(exc, "trailing_metadata", None)):
        return ()
    return cast(Iterable[tuple[str, str | bytes]], exc.trailing_metadata() or ())


def _log(err: FerryError, method: str) -> None:
    text = clip_bytes(str(err), STATUS_MESSAGE_MAX_BYTES + STATUS_HINT_MAX_BYTES)
    if err.caller_fault:
        log.info("%s refused: %s: %s", method, err.reason, text)
    elif isinstance(err, Unavailable | DeadlineExceeded):
        # something it needs is down or slow (libvirtd, etcd, a peer): the reason says which; no
        # traceback (a coordinator asks a host whose libvirtd is down every few seconds)
        log.warning("%s failed: %s: %s", method, err.reason, text)
    else:
        log.error("%s failed: %s: %s", method, err.reason, text, exc_info=err)


def _as_ferry_error(exc: BaseException) -> FerryError:
    if isinstance(exc, FerryError):
        return exc
    return Internal(f"unexpected {type(exc).__name__}: {clip(exc)}", reason="INTERNAL")


def rpc_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method (coroutine or async generator): FerryError -> gRPC status.

    Unexpected exceptions become INTERNAL with a logged traceback. The one error decorator
    every Ferry servicer uses.
    """
    name = fn.__qualname__
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(self: Any, request: Any, context: Context) -> Any:
            try:
                async for item in fn(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - converted to a status right here
                err = _as_ferry_error(exc)
                _log(err, name)
                await context.abort_with_status(to_status(err))

        return stream

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: Context) -> Any:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - converted to a status right here
            err = _as_ferry_error(exc)
            _log(err, name)
            await context.abort_with_status(to_status(err))

    return unary


__all__ = [
    "Context",
    "ServerLimits",
    "RpcObserver",
    "SERVER_BUSY",
    "SERVER_BUSY_HINT",
    "Tls",
    "call_metadata",
    "create_channel",
    "create_server",
    "from_rpc_error",
    "has_status_details",
    "rpc_method",
    "serving",
    "to_status",
]
