"""Records written by this coordinator stay readable by a coordinator of the previous release.

Coordinators of one fleet run two releases at once during a rolling upgrade, and the old one again
after a downgrade. An older coordinator refuses a record with a key it does not know
(RECORD_INVALID), skips it and loses track of its VM: a migration under way would be left to
nobody. So a stored dataclass's new field is written only when it is not at its default
(``record.LATER_FIELDS``). These key sets are what the first release of schema 1 wrote; a field
added to a stored dataclass must go into LATER_FIELDS, not here.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from datetime import UTC, datetime

from ferry.coordinator import drain as drains
from ferry.coordinator.record import LATER_FIELDS, MigrationRecord, decode, encode
from ferry.model import DiskPlan, MigrationOptions

RECORD_KEYS = {
    "actions", "attempt", "cancel_requested", "created_at", "destination_xml", "disk_bytes", "disks", "error",
    "history", "id", "idempotency_key", "mapping", "memory_bytes", "options", "phase", "phase_deadline", "policy",
    "prediction", "prepare_id", "priority", "progress", "result", "retries", "rollback_to", "schema", "source_host",
    "target_cleaned", "target_host", "updated_at", "vm", "vm_uuid",
}  # fmt: skip
OPTIONS_KEYS = {
    "allow_postcopy", "auto_converge", "bandwidth_mibps", "completion_timeout_s", "max_downtime_ms", "migrate_disks",
    "offline", "persist_dest", "postcopy_on_stall", "storage", "undefine_source", "unsafe",
}  # fmt: skip
DISK_PLAN_KEYS = {
    "allocation", "backing_file", "backing_format", "copy", "destination", "format", "source", "target",
    "virtual_size",
}  # fmt: skip

AT = datetime(2026, 12, 5, tzinfo=UTC)


def record(**changes: object) -> MigrationRecord:
    r = MigrationRecord("m-1", "g1", "u1", "host1", "host2", AT, disks=(DiskPlan("vda", "/img/g1.qcow2"),))
    return replace(r, **changes)


def test_a_record_at_its_defaults_has_only_the_first_releases_keys() -> None:
    doc = json.loads(encode(record()))
    assert set(doc) == RECORD_KEYS
    assert set(doc["options"]) == OPTIONS_KEYS
    assert set(doc["disks"][0]) == DISK_PLAN_KEYS


def test_every_field_of_a_stored_dataclass_is_a_first_release_key_or_a_later_field() -> None:
    for cls, first in ((MigrationOptions, OPTIONS_KEYS), (DiskPlan, DISK_PLAN_KEYS)):
        names = {f.name for f in fields(cls)}
        later = LATER_FIELDS.get(cls, frozenset())
        assert names - first == later, f"{cls.__name__}: list its new fields in record.LATER_FIELDS"
        assert not later & first


def test_a_later_field_is_written_when_used_and_read_back_either_way() -> None:
    used = record(
        options=MigrationOptions(persist_transient=True),
        disks=(DiskPlan("vda", "/img/g1.qcow2", backing_file="/img/base.qcow2", backing_fingerprint="sha256:ab"),),
    )
    doc = json.loads(encode(used))
    assert doc["options"]["persist_transient"] is True and doc["disks"][0]["backing_fingerprint"] == "sha256:ab"
    assert decode(encode(used), 7).options == used.options and decode(encode(used), 7).disks == used.disks
    assert decode(encode(record()), 7).options == MigrationOptions()


def test_a_drain_at_its_defaults_writes_the_first_releases_option_keys() -> None:
    d = drains.DrainRecord(id="d-1", host="host1", created_at=AT)
    assert set(json.loads(drains.encode(d))["options"]) == OPTIONS_KEYS
    moved = replace(d, options=MigrationOptions(persist_transient=True))
    assert drains.decode(drains.encode(moved), 3).options == moved.options
