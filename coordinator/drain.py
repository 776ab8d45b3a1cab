"""The drain record: one host being emptied, as one object in the store (pure).

A drain lists every VM of its host (a :class:`DrainItem` each) and moves them off, a few at a
time, each through an ordinary migration record whose id the item keeps. The leader drives it
(``drain_controller.py`` applying ``drainplan.step``); the API only creates it and sets its
state (pause, resume, cancel) by compare-and-set on its revision, like a migration record.

States::

    RUNNING <-> PAUSED          (PauseDrain / ResumeDrain)
       |          |
       +----+-----+--> CANCELLING --> CANCELLED      (CancelDrain; migrations under way cancelled)
            |
            +--> SUCCEEDED     every item MOVED (or SKIPPED VM_GONE: it left the host on its own)
            +--> INCOMPLETE    some item FAILED or SKIPPED while on the host; the rest moved

Item states: WAITING -> MIGRATING -> MOVED; a failed migration sends the item back to WAITING
for another host (``tried`` grows) until it moved, or no host is left (FAILED with the blockers
of every host), or its attempts are used up (FAILED with the last error). SKIPPED: not running
(nothing to move live), no longer on the host (VM_GONE: moved or removed outside the drain), or the
drain was cancelled before it started.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from ferry.errors import FerryError, Internal
from ferry.model import MigrationOptions, Problem, StorageMode
from ferry.store import Entry

from .record import plain, problem_doc, time_doc, time_from_doc

SCHEMA = 1
HISTORY_MAX = 100


class DrainState(enum.Enum):
    RUNNING = 1
    PAUSED = 2
    CANCELLING = 3
    SUCCEEDED = 4
    INCOMPLETE = 5
    CANCELLED = 6

    @property
    def is_final(self) -> bool:
        return self in (DrainState.SUCCEEDED, DrainState.INCOMPLETE, DrainState.CANCELLED)


class ItemState(enum.Enum):
    WAITING = 1
    MIGRATING = 2
    MOVED = 3
    FAILED = 4
    SKIPPED = 5

    @property
    def is_final(self) -> bool:
        return self in (ItemState.MOVED, ItemState.FAILED, ItemState.SKIPPED)


@dataclass(frozen=True)
class DrainItem:
    vm: str
    vm_uuid: str
    memory_bytes: int = 0
    disk_bytes: int = 0  # bytes of disk its migration copies (0: shared storage)
    estimate_s: float = 0.0  # estimated migration time
    state: ItemState = ItemState.WAITING
    target: str = ""  # planned (dry run), current or final target
    migration_id: str = ""  # the current or last migration
    attempts: int = 0  # migrations submitted for it
    tried: tuple[str, ...] = ()  # targets whose migration failed
    problems: tuple[Problem, ...] = ()  # why it could not move / why the last attempt failed
    started_at: datetime | None = None  # its first migration was submitted
    ended_at: datetime | None = None

    @property
    def bytes_total(self) -> int:
        return self.memory_bytes + self.disk_bytes


@dataclass(frozen=True)
class DrainChange:
    """One history entry: the drain's state at ``at`` and why (same state: a note)."""

    state: DrainState
    at: datetime
    reason: str = ""


@dataclass(frozen=True)
class DrainRecord:
    id: str
    host: str
    created_at: datetime
    reason: str = ""  # the operator's words (the cordon's reason)
    targets: tuple[str, ...] = ()  # allowed targets (empty = any feasible host)
    max_parallel: int = 0  # as asked (0 = the host's outbound limit)
    policy: str = ""  # convergence policy of its migrations ("" = default)
    options: MigrationOptions = MigrationOptions()  # of its migrations
    storage_explicit: bool = False  # False: each migration's storage mode from the inventory
    state: DrainState = DrainState.RUNNING
    items: tuple[DrainItem, ...] = ()
    history: tuple[DrainChange, ...] = ()
    estimated_s: float = 0.0  # the makespan estimated at the start
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    revision: int = 0  # the store's mod revision; not part of the JSON

    def item(self, vm_uuid: str) -> DrainItem | None:
        return next((i for i in self.items if i.vm_uuid == vm_uuid), None)

    def count(self, *states: ItemState) -> int:
        return sum(1 for i in self.items if i.state in states)


def with_state(d: DrainRecord, state: DrainState, now: datetime, reason: str) -> DrainRecord:
    """The drain in ``state`` with a history entry (a final state sets ``ended_at``)."""
    history = d.history + (DrainChange(state, now, reason),)
    if len(history) > HISTORY_MAX:
        history = history[:1] + history[len(history) - HISTORY_MAX + 1 :]
    return replace(d, state=state, history=history, updated_at=now, ended_at=now if state.is_final else None)


def note(d: DrainRecord, now: datetime, reason: str) -> DrainRecord:
    return with_state(d, d.state, now, reason) if not d.state.is_final else d


def with_item(d: DrainRecord, item: DrainItem) -> DrainRecord:
    return replace(d, items=tuple(item if i.vm_uuid == item.vm_uuid else i for i in d.items))


# --- JSON ----------------------------------------------------------------------------------------


def _ts(dt: datetime | None) -> str | None:
    return time_doc(dt, "drain record")


def _item_doc(i: DrainItem) -> dict[str, Any]:
    return {
        "vm": i.vm,
        "vm_uuid": i.vm_uuid,
        "memory_bytes": i.memory_bytes,
        "disk_bytes": i.disk_bytes,
        "estimate_s": i.estimate_s,
        "state": i.state.name,
        "target": i.target,
        "migration_id": i.migration_id,
        "attempts": i.attempts,
        "tried": list(i.tried),
        "problems": [problem_doc(p) for p in i.problems],
        "started_at": _ts(i.started_at),
        "ended_at": _ts(i.ended_at),
    }


def _item(d: dict[str, Any]) -> DrainItem:
    return DrainItem(
        vm=d["vm"],
        vm_uuid=d["vm_uuid"],
        memory_bytes=int(d["memory_bytes"]),
        disk_bytes=int(d["disk_bytes"]),
        estimate_s=float(d["estimate_s"]),
        state=ItemState[d["state"]],
        target=d["target"],
        migration_id=d["migration_id"],
        attempts=int(d["attempts"]),
        tried=tuple(d["tried"]),
        problems=tuple(Problem(p["reason"], p["message"], p["hint"]) for p in d["problems"]),
        started_at=time_from_doc(d["started_at"]),
        ended_at=time_from_doc(d["ended_at"]),
    )


def _options(d: dict[str, Any]) -> MigrationOptions:
    o = dict(d)
    o["storage"] = StorageMode[o["storage"]]
    o["migrate_disks"] = tuple(o["migrate_disks"])
    return MigrationOptions(**o)


def encode(d: DrainRecord) -> bytes:
    """The drain as versioned JSON ("schema": 1); ``revision`` is left out."""
    doc = {
        "schema": SCHEMA,
        "id": d.id,
        "host": d.host,
        "created_at": _ts(d.created_at),
        "reason": d.reason,
        "targets": list(d.targets),
        "max_parallel": d.max_parallel,
        "policy": d.policy,
        "options": plain(d.options),
        "storage_explicit": d.storage_explicit,
        "state": d.state.name,
        "items": [_item_doc(i) for i in d.items],
        "history": [{"state": c.state.name, "at": _ts(c.at), "reason": c.reason} for c in d.history],
        "estimated_s": d.estimated_s,
        "updated_at": _ts(d.updated_at),
        "ended_at": _ts(d.ended_at),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes, revision: int) -> DrainRecord:
    """Raises Internal (RECORD_SCHEMA, RECORD_INVALID) for what this coordinator cannot read."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise Internal(f"drain record is not JSON: {e}", reason="RECORD_INVALID", hint="inspect the key") from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise Internal(
            f"drain record has schema {doc.get('schema') if isinstance(doc, dict) else None!r}; "
            f"this coordinator reads {SCHEMA}",
            reason="RECORD_SCHEMA",
            hint="run the same Ferry version on every coordinator",
        )
    try:
        created = time_from_doc(doc["created_at"])
        assert created is not None
        return DrainRecord(
            id=doc["id"],
            host=doc["host"],
            created_at=created,
            reason=doc["reason"],
            targets=tuple(doc["targets"]),
            max_parallel=int(doc["max_parallel"]),
            policy=doc["policy"],
            options=_options(doc["options"]),
            storage_explicit=bool(doc["storage_explicit"]),
            state=DrainState[doc["state"]],
            items=tuple(_item(i) for i in doc["items"]),
            history=tuple(
                DrainChange(DrainState[c["state"]], time_from_doc(c["at"]) or created, c["reason"])
                for c in doc["history"]
            ),
            estimated_s=float(doc["estimated_s"]),
            updated_at=time_from_doc(doc["updated_at"]),
            ended_at=time_from_doc(doc["ended_at"]),
            revision=revision,
        )
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise Internal(
            f"drain record {doc.get('id', '?')!r} is unreadable: {e!r}",
            reason="RECORD_INVALID",
            hint="inspect the key in etcd; a coordinator bug or a hand edit broke it",
        ) from e


def decode_entry(entry: Entry) -> DrainRecord | None:
    """For a PrefixView: None for an unreadable record (logged by the caller's view)."""
    try:
        return decode(entry.value, entry.mod_revision)
    except FerryError:
        return None
