"""The one converter from the coordinator's protobuf answers to the CLI's JSON (``--output json``).

The schema is documented in ``docs/cli-json.md`` and written down as a JSON Schema in
``docs/cli-json.schema.json``; tests validate real outputs against it. Rules, for every object:

- every field is present, also when it is false, 0, "" or empty (no protobuf default elision);
- numbers are JSON numbers (protobuf's JSON turns 64-bit integers into strings; we do not);
- an enum is one lower-case word, the same everywhere: its protobuf name without the enum's
  prefix (``PHASE_ROLLED_BACK`` -> ``rolled_back``, ``MIGRATION_PHASE_PRECOPY`` -> ``precopy``,
  ``STORAGE_MODE_COPY_ALL`` -> ``copy_all``); a history entry's phase (a label such as
  ``RolledBack`` on the wire) is spelled the same way as the record's phase;
- timestamps are RFC 3339 strings in UTC with microseconds (``2026-11-25T10:00:00.123456Z``);
- a sub-object that may be missing (a migration's ``progress``, ``result`` and ``error``, its
  ``updated_at``, a host's ``facts``, ``last_seen`` and ``why_down``, a VM's ``last_seen``) is
  ``null`` when missing; every other one is always an object;
- maps are objects, repeated fields are arrays (possibly empty).

>>> from ferry.v1 import types_pb2 as tpb
>>> to_json(tpb.ErrorDetail(reason="BRIDGE_MISSING"))
{'reason': 'BRIDGE_MISSING', 'message': '', 'hint': ''}
>>> to_json(tpb.CompletedJob(time_elapsed_ms=2300))["time_elapsed_ms"], to_json(tpb.CompletedJob())["postcopy"]
(2300, False)
>>> enum_word(tpb.MigrationPhase.DESCRIPTOR, tpb.MIGRATION_PHASE_DISK_MIRROR)
'disk_mirror'
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ferry.v1 import coordinator_pb2 as cpb

UNSPECIFIED = "unspecified"

#: Message fields that are ``null`` when the server did not set them (``message.field``).
NULLABLE = frozenset(
    {
        "ferry.v1.Migration.updated_at",
        "ferry.v1.Migration.progress",
        "ferry.v1.Migration.result",
        "ferry.v1.Migration.error",
        "ferry.v1.HostStatus.facts",
        "ferry.v1.HostStatus.last_seen",
        "ferry.v1.HostStatus.why_down",
        "ferry.v1.HostStatus.cordoned_at",
        "ferry.v1.Drain.updated_at",
        "ferry.v1.Drain.ended_at",
        "ferry.v1.Drain.waiting",
        "ferry.v1.DrainItem.started_at",
        "ferry.v1.DrainItem.ended_at",
        "ferry.v1.Migration.policy",
        "ferry.v1.Migration.prediction",
        "ferry.v1.PreflightResponse.policy",
        "ferry.v1.PreflightResponse.prediction",
        "ferry.v1.ControlMigrationResponse.migration",
        "ferry.v1.VM.last_seen",
    }
)


def _snake(name: str) -> str:
    """``MigrationPhase`` -> ``MIGRATION_PHASE`` (the prefix protobuf style gives enum values)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def enum_word(enum: EnumDescriptor, number: int) -> str:
    """An enum value as the JSON and the tables spell it; 0 and numbers this CLI does not know
    (a newer server) read ``unspecified``.

    >>> enum_word(cpb.Phase.DESCRIPTOR, cpb.PHASE_ROLLED_BACK), enum_word(cpb.Phase.DESCRIPTOR, 99)
    ('rolled_back', 'unspecified')
    """
    value = enum.values_by_number.get(number)
    if value is None or number == 0:
        return UNSPECIFIED
    return value.name.removeprefix(_snake(enum.name) + "_").lower()


def enum_words(enum: EnumDescriptor) -> list[str]:
    """Every spelling of an enum, ``unspecified`` first (for the schema and for choices)."""
    return [UNSPECIFIED] + [enum_word(enum, v.number) for v in enum.values if v.number != 0]


def phase_word(phase: int) -> str:
    """A migration phase: ``cpb.PHASE_ROLLED_BACK`` -> ``rolled_back``."""
    return enum_word(cpb.Phase.DESCRIPTOR, phase)


PHASE_WORDS = tuple(enum_words(cpb.Phase.DESCRIPTOR)[1:])


def phase_from_word(word: str) -> cpb.Phase:
    """The phase number of a spelling: ``rolled_back``, also ``rolled-back``, ``RolledBack`` and
    ``PHASE_ROLLED_BACK``; raises ValueError for anything else.

    >>> [phase_from_word(w) == cpb.PHASE_ROLLED_BACK for w in ("rolled_back", "RolledBack", "PHASE_ROLLED_BACK")]
    [True, True, True]
    """
    wanted = word.strip().upper().removeprefix("PHASE_").replace("-", "").replace("_", "")
    for value in cpb.Phase.DESCRIPTOR.values:
        if value.number and value.name.removeprefix("PHASE_").replace("_", "") == wanted:
            return cast(cpb.Phase, value.number)
    raise ValueError(f"unknown phase {word!r}")


def label_word(label: str) -> str:
    """A history entry's phase label (``RolledBack``, as the coordinator writes it) -> the phase
    word (``rolled_back``); "" and labels this CLI does not know read ``unspecified``, as enums do.

    >>> label_word("RolledBack"), label_word(""), label_word("Paused")
    ('rolled_back', 'unspecified', 'unspecified')
    """
    try:
        return phase_word(phase_from_word(label))
    except ValueError:
        return UNSPECIFIED


def timestamp(ts: Timestamp) -> str:
    """RFC 3339, UTC, microseconds: ``2026-11-25T10:00:00.123456Z``."""
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


#: Fields whose JSON differs from the generic rules (``message.field`` -> converter).
_SPECIAL = {"ferry.v1.TimedPhase.phase": lambda v: label_word(str(v))}


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return enum_word(field.enum_type, int(value))
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.hex()
    return value


def to_json(message: Message) -> Any:
    """A message as the CLI's JSON (see the module docstring); a Timestamp is a string."""
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    if descriptor.full_name == "google.protobuf.Timestamp":
        assert isinstance(message, Timestamp)
        return timestamp(message)
    out: dict[str, Any] = {}
    for field in descriptor.fields:
        value = getattr(message, field.name)
        if field.full_name in _SPECIAL:
            out[field.name] = _SPECIAL[field.full_name](value)
        elif field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {str(k): _scalar(value_field, v) for k, v in sorted(value.items())}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            out[field.name] = None if field.full_name in NULLABLE else to_json(value)
        else:
            out[field.name] = _scalar(field, value)
    return out


def error_json(reason: str, message: str, hint: str, code: str) -> dict[str, Any]:
    """What a command that failed prints with ``--output json`` (``code``: the gRPC status name)."""
    return {"error": {"reason": reason, "message": message, "hint": hint, "code": code}}
