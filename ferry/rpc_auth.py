"""The role table enforced on every RPC, and the audit log: one interceptor per server.

``ferry.rpc.create_server`` installs :class:`Authorizer` on every server it builds. For each call
it reads the caller's identity from its client certificate (the ``ferry://ROLE/NAME`` URI SAN,
``ferry/identity.py``), checks it against ``ferry.authz.RULES`` before the servicer runs, makes
it available to the servicer (:func:`caller`), and writes one audit line per mutating call::

    audit identity=ferry://operator/alice method=SubmitMigration vm="web-1" migration="m-3f2a9c41" outcome=OK

(logger ``ferry.audit``). A server without TLS (``insecure = true``) checks nothing: its callers
have no identity; their calls are still audited, as ``identity=insecure``.

It also shares the server's calls out (:class:`CallBudget`): gRPC's own cap
(``ServerLimits.max_concurrent_rpcs``) is first come, first served, so one reader holding
hundreds of idle watch streams had the operators refused by the coordinator and the coordinator
refused by an agent (seen in a walkthrough). A call beyond its share is RESOURCE_EXHAUSTED with
reason ``CALLER_BUSY`` (this identity's own calls) or ``SERVER_BUSY`` (the share of readers,
schedulers and agents together).
"""

from __future__ import annotations

import contextvars
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from ferry import authz
from ferry.errors import FerryError, ResourceExhausted
from ferry.identity import Identity, Role, identity_of

log = logging.getLogger(__name__)
audit_log = logging.getLogger("ferry.audit")

_AUDIT_VALUE_MAX = 200
_caller: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("ferry_caller", default=None)
_enforced: contextvars.ContextVar[bool] = contextvars.ContextVar("ferry_enforced", default=False)


def caller() -> Identity | None:
    """The identity of the call being served (None on a server without TLS, or outside a call)."""
    return _caller.get()


def caller_may(role: Role) -> bool:
    """The call being served comes from ``role`` (always true on a server without TLS: its
    operator chose to trust every caller)."""
    if not _enforced.get():
        return True
    identity = _caller.get()
    return identity is not None and identity.role is role


def peer_identity(context: Any) -> Identity | None:
    """The Ferry identity in the peer's certificate (grpc's ``peer_uri`` auth property holds its URI SANs)."""
    auth = context.auth_context() or {}
    uris = [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in auth.get("peer_uri", ())]
    return identity_of(uris)


def _value(text: str) -> str:
    return json.dumps(text[:_AUDIT_VALUE_MAX] + ("..." if len(text) > _AUDIT_VALUE_MAX else ""))


def _outcome(context: Any, exc: BaseException | None) -> str:
    if exc is None:
        return "OK"
    code = context.code() if callable(getattr(context, "code", None)) else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(exc, FerryError):
        return exc.code.name
    return type(exc).__name__


PRIVILEGED = frozenset({Role.COORDINATOR, Role.OPERATOR})  # the reserved calls are theirs
REFUSAL_LOG_INTERVAL_S = 10.0


class Throttle:
    """One log line per key and interval, then how many were left out (a reader refused 10,000
    times in 4 s wrote 1.8 MB of log lines; seen in a walkthrough).

    >>> t = Throttle(10.0)
    >>> [t.admit("k", now) for now in (0.0, 1.0, 2.0, 11.0, 12.0)]
    [0, None, None, 2, None]
    """

    def __init__(self, interval_s: float, max_keys: int = 10_000) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._keys: dict[object, tuple[float, int]] = {}  # key -> (last line, left out since)

    def admit(self, key: object, now: float) -> int | None:
        """How many lines of ``key`` were left out since its last one, when this one is to be
        written; None when it is to be left out."""
        last = self._keys.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._keys[key] = (last[0], last[1] + 1)
            return None
        if len(self._keys) >= self.max_keys:
            self._keys = {k: v for k, v in self._keys.items() if now - v[0] < self.interval_s}
        self._keys[key] = (now, 0)
        return last[1] if last is not None else 0


class CallBudget:
    """The calls each caller may hold open on one server at once (a stream while it is open).

    Every identity but the coordinator's at most ``per_identity``; the unprivileged roles (reader,
    scheduler, agent) together at most ``total - reserved``, so the coordinator and operators always
    find ``reserved`` of gRPC's ``total`` left.

    >>> from ferry.identity import parse_identity_uri as who
    >>> budget = CallBudget(total=4, per_identity=2, reserved=1)
    >>> r1, r2, op = who("ferry://reader/r1"), who("ferry://reader/r2"), who("ferry://operator/o")
    >>> [budget.take(r1) is None, budget.take(r1) is None, budget.take(r1).reason]
    [True, True, 'CALLER_BUSY']
    >>> [budget.take(r2) is None, budget.take(r2).reason, budget.take(op) is None]
    [True, 'SERVER_BUSY', True]
    >>> budget.give_back(r1); budget.take(r2) is None
    True
    """

    def __init__(self, *, total: int, per_identity: int, reserved: int) -> None:
        self.per_identity = per_identity
        self.shared = max(total - reserved, 1)
        self.open: dict[Identity, int] = {}
        self.unprivileged = 0

    @classmethod
    def of(cls, limits: Any) -> CallBudget:
        """From ``ferry.rpc.ServerLimits``."""
        return cls(
            total=limits.max_concurrent_rpcs,
            per_identity=limits.max_calls_per_identity,
            reserved=limits.reserved_for_privileged,
        )

    def take(self, identity: Identity) -> FerryError | None:
        """Count one more call of ``identity``; the refusal instead when it has no room."""
        held = self.open.get(identity, 0)
        if identity.role is not Role.COORDINATOR and held >= self.per_identity:
            return ResourceExhausted(
                f"{identity.uri} already has {held} calls open on this server (streams count while open)",
                reason="CALLER_BUSY",
                hint="close some (a watch stream per migration can be one WatchFleet), or wait for them",
            )
        unprivileged = identity.role not in PRIVILEGED
        if unprivileged and self.unprivileged >= self.shared:
            return ResourceExhausted(
                f"readers, schedulers and agents already hold {self.unprivileged} calls open on this server; "
                "the rest is kept for the coordinator and operators",
                reason="SERVER_BUSY",
                hint="retry later; if this lasts, find which clients hold streams open (the server's log)",
            )
        self.open[identity] = held + 1
        self.unprivileged += unprivileged
        return None

    def give_back(self, identity: Identity) -> None:
        held = self.open.get(identity, 0) - 1
        if held > 0:
            self.open[identity] = held
        else:
            self.open.pop(identity, None)
        if identity.role not in PRIVILEGED:
            self.unprivileged = max(self.unprivileged - 1, 0)


class Authorizer(grpc.aio.ServerInterceptor):
    """Checks every call against ``ferry.authz`` (when ``enforce``) and audits the mutating ones;
    with ``budget``, shares the server's calls out among the callers."""

    def __init__(self, *, enforce: bool, budget: CallBudget | None = None) -> None:
        self.enforce = enforce
        self.budget = budget if enforce else None
        self.refusals = Throttle(REFUSAL_LOG_INTERVAL_S)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            streams = handler.unary_stream
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, cast(Callable[..., AsyncIterator[Any]], streams))
                if inspect.isasyncgenfunction(streams)
                else self._writer(method, cast(Callable[..., Awaitable[Any]], streams)),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None and authz.is_open(method):  # reflection
            return grpc.stream_stream_rpc_method_handler(
                self._bidi(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Ferry has no client-streaming RPCs: such a method is not in the role table
        return grpc.unary_unary_rpc_method_handler(self._unary(method, _never))

    async def _admit(self, method: str, request: Any, context: Any) -> authz.Rule | None:
        """The rule that admits this call (None without enforcement); aborts the call otherwise."""
        identity = peer_identity(context) if self.enforce else None
        _caller.set(identity)
        _enforced.set(self.enforce)
        if not self.enforce:
            return authz.RULES.get(method)
        try:
            rule = authz.check(identity, method, request)
            if self.budget is not None and identity is not None:
                busy = self.budget.take(identity)
                if busy is not None:
                    raise busy
            return rule
        except FerryError as err:
            from ferry.rpc import to_status  # ferry.rpc imports this module

            self._refused(method, identity, err)
            await context.abort_with_status(to_status(err))
            raise  # abort_with_status raises; this is for the type checker

    def _refused(self, method: str, identity: Identity | None, err: FerryError) -> None:
        """Log a refusal (and audit it, for a mutating method), at most once per caller, method and
        reason every ``REFUSAL_LOG_INTERVAL_S``, saying how many were left out."""
        left_out = self.refusals.admit((identity, method, err.reason), time.monotonic())
        if left_out is None:
            return
        more = f" ({left_out} more since the last line)" if left_out else ""
        who = identity.uri if identity is not None else "unknown"
        log.info("%s refused to %s: %s: %s%s", authz.short(method), who, err.reason, err.message, more)
        rule = authz.RULES.get(method)
        if rule is not None and rule.mutating:
            audit_log.info(
                "audit identity=%s method=%s vm=- migration=- outcome=%s reason=%s%s",
                who,
                authz.short(method),
                err.code.name,
                err.reason,
                f" repeated={left_out + 1}" if left_out else "",
            )

    def _counted(self) -> Identity | None:
        """Whose share the call just admitted by ``_admit`` holds (read at once: a stream's end may
        run in another context)."""
        return _caller.get() if self.budget is not None else None

    def _done(self, counted: Identity | None) -> None:
        """The call ended: its share is free again."""
        if self.budget is not None and counted is not None:
            self.budget.give_back(counted)

    def _audit(self, method: str, rule: authz.Rule | None, request: Any, response: Any, outcome: str) -> None:
        if rule is None or not rule.mutating or (rule.audited is not None and not rule.audited(request)):
            return
        vm, migration = authz.audit_fields(request, response)
        identity = _caller.get()
        audit_log.info(
            "audit identity=%s method=%s vm=%s migration=%s outcome=%s",
            identity.uri if identity is not None else ("unknown" if self.enforce else "insecure"),
            authz.short(method),
            _value(vm),
            _value(migration),
            outcome,
        )

    def _unary(self, method: str, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def behavior(request: Any, context: Any) -> Any:
            rule = await self._admit(method, request, context)
            counted = self._counted()
            response = None
            failure: BaseException | None = None
            try:
                response = await inner(request, context)
                return response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._done(counted)
                self._audit(method, rule, request, response, _outcome(context, failure))

        return behavior

    def _stream(self, method: str, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            rule = await self._admit(method, request, context)
            counted = self._counted()
            failure: BaseException | None = None
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._done(counted)
                self._audit(method, rule, request, None, _outcome(context, failure))

        return behavior

    def _bidi(self, method: str, inner: Callable[..., Any]) -> Callable[..., Any]:
        """A stream-stream call (reflection): admitted and counted as the others."""
        return self._writer(method, inner) if not inspect.isasyncgenfunction(inner) else self._stream(method, inner)

    def _writer(self, method: str, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """A streaming handler that writes with ``context.write`` (grpc's health Watch) rather
        than yields: admitted and counted the same way."""

        async def behavior(request: Any, context: Any) -> Any:
            await self._admit(method, None, context)
            counted = self._counted()
            try:
                return await inner(request, context)
            finally:
                self._done(counted)

        return behavior


async def _never(request: Any, context: Any) -> Any:
    raise AssertionError("unreachable: a method outside the role table is refused before it runs")
