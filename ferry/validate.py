"""A request's fields, checked at the API edge (pure).

Both servicers and the converters (``ferry/convert.py``) check every field they read before
anything acts on it; a field out of bounds is INVALID_ARGUMENT with a reason code and the field's
name, and the value is repeated at most ``ECHO_MAX`` characters long (``ferry.errors.clip``).

==========================  ======================================================================
reason                      the field
==========================  ======================================================================
``MISSING_FIELD``           is required and empty
``FIELD_TOO_LONG``          is longer than its limit (``MAX_NAME`` for names and URIs)
``INVALID_CHARACTERS``      holds a NUL or another control character (a name), or characters an
                            id may not have (``BAD_ID`` for ids: letters, digits, ``._-``)
``OUT_OF_RANGE``            is a number outside its bounds (a negative bandwidth sent as an
                            unsigned 32-bit number reads 4294967295)
``TOO_MANY_ITEMS``          is a list or map with more than its limit of entries
``BAD_STORAGE_MODE``        is a storage mode this build does not know
==========================  ======================================================================
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import TypeVar

from ferry.errors import InvalidArgument, clip

MAX_NAME = 200  # a domain, host, bridge, network or disk name, a URI, an idempotency key
MAX_ID = 64  # a migration id, a prepare id
MAX_ITEMS = 256  # entries of one list or map in a request
MAX_XML_BYTES = 1 << 20  # a domain definition

# numbers: what libvirt and QEMU can use, and nothing a sign error could produce
MAX_BANDWIDTH_MIBPS = 1 << 20  # 1 TiB/s
MAX_DOWNTIME_MS = 2_000_000  # QEMU's limit: 2000 s
MAX_COMPLETION_TIMEOUT_S = 7 * 86_400
MAX_PREPARE_TTL_S = 7 * 86_400
MAX_PROGRESS_INTERVAL_MS = 60_000
MIN_PROGRESS_INTERVAL_MS = 10
MAX_PRIORITY = 1_000_000
MAX_IMAGE_BYTES = 1 << 56  # 64 PiB
# a coordinator leader's term is an etcd revision (int64): a larger one is no leader's, and would
# fence every real leader out of an agent for good (agent/fencing.py)
MAX_LEADER_TERM = (1 << 63) - 1

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

T = TypeVar("T")


def invalid(field: str, reason: str, message: str, hint: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", reason=reason, hint=hint)


def text(value: str, field: str, *, max_len: int = MAX_NAME, required: bool = False, example: str = "") -> str:
    """A name-like field: at most ``max_len`` characters, no control characters; required: non-empty.

    >>> text("web-1", "vm")
    'web-1'
    >>> try:
    ...     text("a\\0b", "vm")
    ... except InvalidArgument as err:
    ...     print(err.reason, err.message)
    INVALID_CHARACTERS vm: holds a NUL or control character ('a\\x00b')
    """
    if not value:
        if required:
            raise InvalidArgument(
                f"{field} is required",
                reason="MISSING_FIELD",
                hint=f"set {field}" + (f", e.g. {example}" if example else " in the request"),
            )
        return value
    if len(value) > max_len:
        raise invalid(
            field, "FIELD_TOO_LONG", f"{len(value)} characters, at most {max_len} ({clip(value)!r})", "shorten it"
        )
    if _CONTROL.search(value):
        shown = clip(value)
        raise invalid(
            field, "INVALID_CHARACTERS", f"holds a NUL or control character ({shown!r})", "use printable characters"
        )
    return value


def ident(value: str, field: str, *, required: bool = False, max_len: int = MAX_ID, example: str = "") -> str:
    """An id (migration, prepare): letters, digits, ``.``, ``_``, ``-``; at most ``max_len``.

    >>> ident("m-3f2a9c41d07b", "id")
    'm-3f2a9c41d07b'
    >>> try:
    ...     ident("../x", "id")
    ... except InvalidArgument as err:
    ...     print(err.reason, err.message)
    BAD_ID id: '../x' is not an id
    """
    text(value, field, max_len=max_len, required=required, example=example)
    if value and not _ID.fullmatch(value):
        raise invalid(
            field,
            "BAD_ID",
            f"{clip(value)!r} is not an id",
            "ids are letters, digits, '.', '_' and '-', e.g. " + (example or "m-3f2a9c41d07b"),
        )
    return value


def number(value: int, field: str, *, lo: int = 0, hi: int, zero: str = "") -> int:
    """``lo <= value <= hi``; 0 always passes when ``zero`` says what it means.

    >>> try:
    ...     number(4294967295, "bandwidth_mibps", hi=MAX_BANDWIDTH_MIBPS, zero="QEMU's default")
    ... except InvalidArgument as err:
    ...     print(err.reason, err.message, "|", err.hint)
    OUT_OF_RANGE bandwidth_mibps: 4294967295 is out of range | use 1 to 1048576, or 0 for QEMU's default
    """
    if value == 0 and zero:
        return value
    if not lo <= value <= hi:
        low = max(lo, 1) if zero else lo
        raise invalid(
            field,
            "OUT_OF_RANGE",
            f"{value} is out of range",
            f"use {low} to {hi}" + (f", or 0 for {zero}" if zero else ""),
        )
    return value


def live_tuning(max_downtime_ms: int | None, bandwidth_mibps: int | None) -> tuple[int | None, int | None]:
    """What an operator asks of a running job (ControlMigration, and the TuneMigration the
    coordinator forwards it as): a max downtime of 1 ms or more, a bandwidth (0: QEMU's default);
    None for what is not asked. Returns both as given.

    >>> live_tuning(500, None)
    (500, None)
    >>> try:
    ...     live_tuning(0, None)
    ... except InvalidArgument as err:
    ...     print(err.reason, err.message)
    OUT_OF_RANGE max_downtime_ms: 0 is out of range
    """
    if max_downtime_ms is not None:
        number(max_downtime_ms, "max_downtime_ms", lo=1, hi=MAX_DOWNTIME_MS)
    if bandwidth_mibps is not None:
        number(bandwidth_mibps, "bandwidth_mibps", hi=MAX_BANDWIDTH_MIBPS, zero="QEMU's default")
    return max_downtime_ms, bandwidth_mibps


def seconds(value: float, field: str, *, hi: float = MAX_COMPLETION_TIMEOUT_S) -> float:
    """A duration in seconds: finite, ``0 <= value <= hi`` (a double field: NaN and infinities too).

    >>> try:
    ...     seconds(float("nan"), "policy.postcopy_after_s")
    ... except InvalidArgument as err:
    ...     print(err.reason, err.message)
    OUT_OF_RANGE policy.postcopy_after_s: nan s is out of range
    """
    if not (math.isfinite(value) and 0 <= value <= hi):
        raise invalid(field, "OUT_OF_RANGE", f"{value} s is out of range", f"use 0 to {hi:g} s")
    return value


def items(values: Collection[T], field: str, *, limit: int = MAX_ITEMS) -> Collection[T]:
    """At most ``limit`` entries."""
    if len(values) > limit:
        raise invalid(field, "TOO_MANY_ITEMS", f"{len(values)} entries, at most {limit}", "send fewer")
    return values


def names(values: Collection[str], field: str, *, max_len: int = MAX_NAME) -> list[str]:
    """A list of names: at most ``MAX_ITEMS``, each one a valid ``text``."""
    items(values, field)
    return [text(v, f"{field}[{i}]", max_len=max_len) for i, v in enumerate(values)]
