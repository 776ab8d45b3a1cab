"""Ferry's error types and the one table that maps them to gRPC status codes.

Every error carries a stable ``reason`` code (what went wrong, machine-readable), a message
(what is wrong, for a person) and a ``hint`` (what to do about it). Adapters translate vendor
errors (libvirt, etcd, OS) into these at the boundary; servers turn them into a gRPC status with
a google.rpc.ErrorInfo detail; clients turn that status back into the same error type.

``caller_fault`` says whose fault it is: the caller's errors are logged without a traceback,
ours with one.
"""

from __future__ import annotations

import enum
from typing import ClassVar

ERROR_DOMAIN = "ferry.dev"

ECHO_MAX = 200  # characters of a caller's input an error message or a log line may repeat


def clip(value: object, limit: int = ECHO_MAX) -> str:
    """``value`` as text, cut to ``limit`` characters (an ellipsis and the size cut off say so).

    The one helper for repeating a caller's input in an error or a log line, so that a 10 kB
    name cannot end up in a status trailer.

    >>> clip("web-1")
    'web-1'
    >>> clip("x" * 500)[-16:]
    'xxx…(+313 chars)'
    >>> len(clip("x" * 500)) <= ECHO_MAX
    True
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(f"…(+{len(text)} chars)"))
    return f"{text[:keep]}…(+{len(text) - keep} chars)"


def clip_bytes(text: str, limit: int) -> str:
    """``text`` cut so that its UTF-8 form has at most ``limit`` bytes (at a character boundary).

    >>> clip_bytes("héllo", 5), clip_bytes("hello", 10)
    ('h…', 'hello')
    """
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    cut = data[: max(0, limit - 3)].decode("utf-8", errors="ignore")  # "…" is 3 bytes
    return cut + "…"


class StatusCode(enum.IntEnum):
    """gRPC's status codes by their wire numbers (``ferry.rpc`` maps them to ``grpc.StatusCode``),
    so that this module, and the pure core that raises these errors, never imports grpc."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class FerryError(Exception):
    """Base of every error Ferry reports on purpose."""

    code: ClassVar[StatusCode] = StatusCode.INTERNAL
    caller_fault: ClassVar[bool] = False
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason}: {self.message!r})"


class InvalidArgument(FerryError):
    """The request itself is malformed: fix the request."""

    code = StatusCode.INVALID_ARGUMENT
    caller_fault = True
    default_reason = "INVALID_ARGUMENT"


class NotFound(FerryError):
    """A named thing (domain, host, prepare, migration) does not exist."""

    code = StatusCode.NOT_FOUND
    caller_fault = True
    default_reason = "NOT_FOUND"


class AlreadyExists(FerryError):
    """Something is in the way: a file, a domain with that name or UUID, a record."""

    code = StatusCode.ALREADY_EXISTS
    caller_fault = True
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(FerryError):
    """The system is not in a state that allows this (missing bridge, domain not running...)."""

    code = StatusCode.FAILED_PRECONDITION
    caller_fault = True
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(FerryError):
    """Not enough of something: disk space, memory, migration slots."""

    code = StatusCode.RESOURCE_EXHAUSTED
    caller_fault = True
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(FerryError):
    """A dependency cannot be reached right now (libvirtd, an agent, etcd); retry later."""

    code = StatusCode.UNAVAILABLE
    caller_fault = False
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(FerryError):
    """A call did not finish within its time limit."""

    code = StatusCode.DEADLINE_EXCEEDED
    caller_fault = False
    default_reason = "TIMEOUT"


class Aborted(FerryError):
    """The operation was stopped (cancelled by a user, aborted by policy, lost a race)."""

    code = StatusCode.ABORTED
    caller_fault = False
    default_reason = "ABORTED"


class Internal(FerryError):
    """A bug or an unexpected failure on our side."""

    code = StatusCode.INTERNAL
    caller_fault = False
    default_reason = "INTERNAL"


# The one table: gRPC status code <-> error type.
ERROR_TYPES: tuple[type[FerryError], ...] = (
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    Aborted,
    Internal,
)
BY_CODE: dict[StatusCode, type[FerryError]] = {t.code: t for t in ERROR_TYPES}


def error_for_code(code: int) -> type[FerryError]:
    """The error type a gRPC status code (its number) maps back to (CANCELLED and unknown codes included).

    >>> error_for_code(StatusCode.NOT_FOUND).__name__, error_for_code(1).__name__, error_for_code(99).__name__
    ('NotFound', 'Aborted', 'Internal')
    """
    if code == StatusCode.CANCELLED:
        return Aborted
    try:
        return BY_CODE.get(StatusCode(code), Internal)
    except ValueError:
        return Internal
