"""The role table enforced on every RPC, and the audit log: one interceptor per server.

``ferry.rpc.create_server`` installs :class:`Authorizer` on every server it builds. For each call
it reads the caller's identity from its client certificate (the ``ferry://ROLE/NAME`` URI SAN,
``ferry/identity.py``), checks it against ``ferry.authz.RULES`` before the servicer runs, makes
it available to the servicer (:func:`caller`), and writes one audit line per mutating call::

    audit identity=ferry://operator/alice method=SubmitMigration vm="web-1" migration="m-3f2a9c41" outcome=OK

(logger ``ferry.audit``). A server without TLS (``insecure = true``) checks nothing: its callers
have no identity; their calls are still audited, as ``identity=insecure``.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from ferry import authz
from ferry.errors import FerryError
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


class Authorizer(grpc.aio.ServerInterceptor):
    """Checks every call against ``ferry.authz`` (when ``enforce``) and audits the mutating ones."""

    def __init__(self, *, enforce: bool) -> None:
        self.enforce = enforce

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or authz.is_open(method):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)),
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
            return authz.check(identity, method, request)
        except FerryError as err:
            from ferry.rpc import to_status  # ferry.rpc imports this module

            log.info("%s refused to %s: %s: %s", authz.short(method), identity or "unknown", err.reason, err.message)
            await context.abort_with_status(to_status(err))
            raise  # abort_with_status raises; this is for the type checker

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
            response = None
            failure: BaseException | None = None
            try:
                response = await inner(request, context)
                return response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._audit(method, rule, request, response, _outcome(context, failure))

        return behavior

    def _stream(self, method: str, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            rule = await self._admit(method, request, context)
            failure: BaseException | None = None
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._audit(method, rule, request, None, _outcome(context, failure))

        return behavior


async def _never(request: Any, context: Any) -> Any:
    raise AssertionError("unreachable: a method outside the role table is refused before it runs")
