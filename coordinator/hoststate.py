"""The operator's state of a host: cordoned or not (record pure; the protocol on the Store).

A cordoned host receives no migration: a submission naming it as target is refused
(FAILED_PRECONDITION ``TARGET_CORDONED``), placement never picks it, and the leader's admission
keeps a queued record for it waiting (``slots.WaitKind.TARGET_CORDONED``) until it is
uncordoned. Migrations *from* a cordoned host go on (that is how it is emptied). A drain cordons
its host first and leaves it cordoned when it ends; ``ferry hosts uncordon`` lifts it.

Stored under ``host-state/<name>`` (``ferry/keys.py``) as JSON, written by every replica with a
compare-and-set (create-if-absent for the first cordon), read by every replica through a
:class:`~ferry.coordinator.view.PrefixView`. A missing key is a host in service.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ferry import keys
from ferry.errors import AlreadyExists, FailedPrecondition, FerryError, InvalidArgument
from ferry.model import Problem
from ferry.store import Conflict, Entry, Store

log = logging.getLogger(__name__)

MAX_REASON = 500


@dataclass(frozen=True)
class HostCordon:
    """``cordoned``: receives no migration; ``reason`` says why (the operator's words);
    ``drain_id``: the drain that cordoned it ('' = cordoned by hand); ``since``: when."""

    host: str
    cordoned: bool = False
    reason: str = ""
    drain_id: str = ""
    since: datetime | None = None


def encode(state: HostCordon) -> bytes:
    doc = {
        "host": state.host,
        "cordoned": state.cordoned,
        "reason": state.reason,
        "drain_id": state.drain_id,
        "since": state.since.astimezone(UTC).isoformat() if state.since else None,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode(value: bytes) -> HostCordon:
    """Raises Internal-ish FerryError (HOST_STATE_INVALID) for a value that is not a host state.

    >>> decode(encode(HostCordon("h1", True, "kernel update"))).reason
    'kernel update'
    """
    try:
        doc: dict[str, Any] = json.loads(value)
        since = doc.get("since")
        return HostCordon(
            host=str(doc["host"]),
            cordoned=bool(doc.get("cordoned", False)),
            reason=str(doc.get("reason", "")),
            drain_id=str(doc.get("drain_id", "")),
            since=datetime.fromisoformat(since) if since else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise FerryError(
            f"host state is unreadable: {e!r}",
            reason="HOST_STATE_INVALID",
            hint="run the same Ferry version on every coordinator; delete the key if it is not Ferry's",
        ) from e


def decode_entry(entry: Entry) -> HostCordon | None:
    """For a PrefixView: None (logged) for an unreadable value."""
    try:
        return decode(entry.value)
    except FerryError as err:
        log.error("skipping %s: %s", entry.key, err)
        return None


def cordoned_hosts(states: Mapping[str, HostCordon]) -> dict[str, HostCordon]:
    """The cordoned ones, by host name."""
    return {name: s for name, s in states.items() if s.cordoned}


def cordon_problem(state: HostCordon) -> Problem:
    """The blocker a cordoned target is (placement, preflight, submission)."""
    by = f" by drain {state.drain_id}" if state.drain_id else ""
    return Problem(
        "TARGET_CORDONED",
        f"{state.host} is cordoned{by}: {state.reason or 'no reason given'}",
        f"pick another target, or uncordon it (ferry hosts uncordon {state.host})",
    )


def cordoned_error(state: HostCordon) -> FailedPrecondition:
    p = cordon_problem(state)
    return FailedPrecondition(p.message, reason=p.reason, hint=p.hint)


async def read(store: Store, host: str) -> tuple[HostCordon, int]:
    """The host's state and its key's mod revision (0: no key, the host is in service)."""
    entry = await store.get(keys.host_state_key(host))
    if entry is None:
        return HostCordon(host), 0
    return decode(entry.value), entry.mod_revision


async def cordon(store: Store, host: str, reason: str, now: datetime, *, drain_id: str = "") -> tuple[HostCordon, bool]:
    """Cordon ``host`` (a repeat keeps the first reason and time, unless a drain takes it over).

    Returns the state and whether this call changed it. A drain cordoning a host cordoned by
    hand records itself (so the drain's record names who cordoned it), keeping the reason.
    """
    if len(reason) > MAX_REASON:
        raise InvalidArgument(
            f"the reason has {len(reason)} characters", reason="BAD_REASON", hint=f"use at most {MAX_REASON}"
        )
    key = keys.host_state_key(host)
    while True:
        current, revision = await read(store, host)
        if current.cordoned and (not drain_id or current.drain_id == drain_id):
            return current, False
        new = HostCordon(
            host,
            cordoned=True,
            reason=current.reason if current.cordoned else reason,
            drain_id=drain_id,
            since=current.since if current.cordoned else now,
        )
        try:
            if revision:
                await store.update(key, encode(new), revision)
            else:
                await store.create(key, encode(new))
        except (Conflict, AlreadyExists):
            continue
        log.info("cordoned %s%s: %s", host, f" (drain {drain_id})" if drain_id else "", new.reason)
        return new, True


async def uncordon(
    store: Store, host: str, *, active_drain: Callable[[str], Awaitable[str]] | None = None
) -> HostCordon:
    """Put ``host`` back in service (deletes its state). Refused (FAILED_PRECONDITION
    DRAIN_ACTIVE) while a drain of the host is not final: cancel the drain first."""
    key = keys.host_state_key(host)
    while True:
        current, revision = await read(store, host)
        if not revision:
            return current
        drain = await active_drain(host) if active_drain is not None else ""
        if drain:
            raise FailedPrecondition(
                f"{host} is being drained ({drain})",
                reason="DRAIN_ACTIVE",
                hint=f"cancel the drain first (ferry drains cancel {drain}), then uncordon",
            )
        try:
            await store.delete(key, expected_mod_revision=revision)
        except Conflict:
            continue
        log.info("uncordoned %s", host)
        return HostCordon(host)
