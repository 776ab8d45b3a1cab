"""The CLI's JSON (cli/jsonout.py) against its documented schema (docs/cli-json.schema.json and
docs/cli-json.md): the three cannot drift apart. A field added to the protobuf messages, an enum
value, a field that may be null: each must be in the schema file and in the page, or these fail.
(tests/component/test_cli_over_grpc.py validates the real output of every command over gRPC.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from ferry.cli import jsonout
from ferry.coordinator.convert import phase_label
from ferry.coordinator.phases import Phase
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCHEMA = json.loads((DOCS / "cli-json.schema.json").read_text())
PAGE = (DOCS / "cli-json.md").read_text()
DEFS: dict[str, Any] = SCHEMA["$defs"]
MESSAGE_DEFS = {name: d for name, d in DEFS.items() if "x-protobuf" in d}
ENUM_DEFS = {
    "phase": cpb.Phase.DESCRIPTOR,
    "job_phase": tpb.MigrationPhase.DESCRIPTOR,
    "storage_mode": tpb.StorageMode.DESCRIPTOR,
    "domain_state": tpb.DomainState.DESCRIPTOR,
    "drain_state": cpb.DrainState.DESCRIPTOR,
    "drain_item_state": cpb.DrainItemState.DESCRIPTOR,
    "postcopy_mode": tpb.PostcopyMode.DESCRIPTOR,
    "timeout_action": tpb.TimeoutAction.DESCRIPTOR,
}
MESSAGES = {
    m.DESCRIPTOR.full_name: m
    for m in (
        cpb.ListHostsResponse,
        cpb.HostStatus,
        tpb.HostFacts,
        tpb.StorageDir,
        cpb.ListVMsResponse,
        cpb.VM,
        tpb.Domain,
        tpb.Disk,
        tpb.Nic,
        cpb.PreflightResponse,
        tpb.ErrorDetail,
        tpb.DiskPlan,
        cpb.Migration,
        tpb.MigrationOptions,
        tpb.HostMapping,
        tpb.TimedPhase,
        tpb.MigrationProgress,
        tpb.CompletedJob,
        cpb.ListMigrationsResponse,
        cpb.HostCandidate,
        cpb.Drain,
        cpb.DrainItem,
        cpb.DrainChange,
        cpb.ListDrainsResponse,
        tpb.ConvergencePolicy,
        tpb.DowntimeStep,
        tpb.Prediction,
        tpb.PolicyAction,
        cpb.ListPoliciesResponse,
        cpb.PolicySelector,
        cpb.ControlMigrationResponse,
    )
}


def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for one definition of the schema file."""
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    sub = {"$schema": SCHEMA["$schema"], "$defs": DEFS, "$ref": f"#/$defs/{name}"}
    return jsonschema.Draft202012Validator(sub, format_checker=jsonschema.FormatChecker())


def filled(descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
    """Keyword arguments setting every field of a message to something not its default."""
    kw: dict[str, Any] = {}
    for f in descriptor.fields:
        if f.full_name == "ferry.v1.TimedPhase.phase":
            value: Any = "RolledBack"
        elif f.message_type is not None and f.message_type.GetOptions().map_entry:
            kw[f.name] = {"k": "v"}
            continue
        elif f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp":
            value = {"seconds": 1_764_064_800, "nanos": 123_456_000}
        elif f.message_type is not None:
            value = filled(f.message_type, depth + 1)
        elif f.type == FieldDescriptor.TYPE_ENUM:
            value = f.enum_type.values[-1].number
        elif f.type == FieldDescriptor.TYPE_BOOL:
            value = True
        elif f.type == FieldDescriptor.TYPE_STRING:
            value = f"{f.name}-x"
        else:
            value = (1 << 40) + 7  # past 32 bits: protobuf's JSON would make this a string
            if f.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_INT32):
                value = 7
        kw[f.name] = [value] if f.is_repeated else value
    return kw


def test_the_schema_file_is_a_valid_schema_and_names_every_message_def():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert set(MESSAGE_DEFS) == {MESSAGES[d["x-protobuf"]].DESCRIPTOR.name for d in MESSAGE_DEFS.values()}
    assert {d["x-protobuf"] for d in MESSAGE_DEFS.values()} == set(MESSAGES)


@pytest.mark.parametrize("name", sorted(MESSAGE_DEFS))
def test_each_message_def_has_exactly_the_messages_fields(name):
    d = MESSAGE_DEFS[name]
    fields = [f.name for f in MESSAGES[d["x-protobuf"]].DESCRIPTOR.fields]
    assert list(d["properties"]) == fields
    assert d["required"] == fields and d["additionalProperties"] is False
    for f in MESSAGES[d["x-protobuf"]].DESCRIPTOR.fields:
        nullable = "oneOf" in d["properties"][f.name]
        assert nullable == (f.full_name in jsonout.NULLABLE), f"{f.full_name}: null in the schema iff in NULLABLE"


@pytest.mark.parametrize("name", sorted(ENUM_DEFS))
def test_each_enum_def_lists_every_spelling(name):
    assert DEFS[name]["enum"] == jsonout.enum_words(ENUM_DEFS[name])
    assert all(re.fullmatch(r"[a-z][a-z_]*", w) for w in DEFS[name]["enum"])


@pytest.mark.parametrize("name", sorted(MESSAGE_DEFS))
def test_a_filled_and_an_empty_message_both_validate(name):
    message_type = MESSAGES[MESSAGE_DEFS[name]["x-protobuf"]]
    full: Message = message_type(**filled(message_type.DESCRIPTOR))
    empty: Message = message_type()
    check = validator(name)
    for message in (full, empty):
        out = jsonout.to_json(message)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(out)]
        assert not errors, errors


def test_numbers_are_numbers_false_and_zero_are_there_and_missing_is_null():
    m = cpb.Migration(
        id="m-1",
        phase=cpb.PHASE_MIGRATING,
        progress=tpb.MigrationProgress(phase=tpb.MIGRATION_PHASE_PRECOPY, memory_total=268_435_456),
        history=[tpb.TimedPhase(phase="RolledBack", reason="x")],
    )
    out = jsonout.to_json(m)
    assert out["progress"]["memory_total"] == 268_435_456 and out["progress"]["iteration"] == 0
    assert out["progress"]["phase"] == "precopy" and out["phase"] == "migrating"
    assert out["history"][0]["phase"] == "rolled_back" and out["history"][0]["at"] == "1970-01-01T00:00:00.000000Z"
    assert out["cancel_requested"] is False and out["priority"] == 0 and out["prepare_id"] == ""
    assert out["ahead_of_slot"] is False
    assert out["result"] is None and out["error"] is None and out["updated_at"] is None
    assert out["options"]["storage"] == "unspecified" and out["mapping"] == {
        "bridges": {},
        "networks": {},
        "path_prefixes": {},
    }
    assert jsonout.to_json(cpb.HostStatus(name="h"))["facts"] is None
    assert jsonout.to_json(cpb.PreflightResponse())["ok"] is False


@pytest.mark.parametrize("phase", list(Phase))
def test_a_history_entry_says_its_phase_as_the_record_does(phase):
    """The coordinator writes history phases as labels (``RolledBack``); the record's phase is
    the enum: the JSON spells both the same."""
    assert jsonout.label_word(phase_label(phase)) == jsonout.phase_word(phase.value)


def test_timestamps_are_utc_with_microseconds():
    ts = tpb.TimedPhase(at={"seconds": 1_764_064_800, "nanos": 5_000})
    assert jsonout.to_json(ts)["at"] == "2025-11-25T10:00:00.000005Z"


def _section(title: str) -> str:
    found = re.search(rf"^### `{re.escape(title)}`\n(.*?)(?=^##|\Z)", PAGE, re.S | re.M)
    assert found, f"docs/cli-json.md has no section ### `{title}`"
    return found.group(1)


@pytest.mark.parametrize("name", sorted(n for n in DEFS if n != "timestamp"))
def test_the_page_documents_every_def_and_field(name):
    section = _section(name)
    for prop in DEFS[name].get("properties", {}):
        assert re.search(rf"^\| `{prop}` \|", section, re.M), f"docs/cli-json.md ### `{name}`: no row for `{prop}`"
    for word in DEFS[name].get("enum", []):
        assert word == "unspecified" or f"`{word}`" in section, f"docs/cli-json.md ### `{name}`: `{word}`"
