"""Log lines as the daemons write them: text with the migration's fields, JSON, journald's shape."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from ferry import logcontext
from ferry.logsetup import TextFormatter, is_journal, make_handler, syslog_priority
from ferry.tomlconfig import LogConfig

CTX = logcontext.MigrationContext("m-1", vm="g1", source="host1", target="host2")


def emit(handler: logging.Handler, level: int, msg: str, *args: object, **kw: object) -> None:
    log = logging.getLogger("ferry.test.logsetup")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    try:
        log.log(level, msg, *args, **kw)  # type: ignore[arg-type]
    finally:
        log.removeHandler(handler)


def test_text_appends_the_bound_migration():
    out = io.StringIO()
    handler = make_handler(LogConfig(), out)
    with logcontext.bound(CTX):
        emit(handler, logging.INFO, "migrating %s", "g1")
    emit(handler, logging.WARNING, "nothing in particular")
    first, second = out.getvalue().splitlines()
    assert first.endswith("INFO ferry.test.logsetup: migrating g1  migration_id=m-1  vm=g1  source=host1  target=host2")
    assert first[:4].isdigit()  # a time first (not the journal)
    assert second.endswith("WARNING ferry.test.logsetup: nothing in particular")


def test_extra_wins_over_nothing_bound():
    out = io.StringIO()
    emit(make_handler(LogConfig(), out), logging.INFO, "released", extra=CTX.extra())
    assert "migration_id=m-1" in out.getvalue()


def test_json_lines_carry_every_field():
    out = io.StringIO()
    handler = make_handler(LogConfig(format="json"), out)
    with logcontext.bound(CTX):
        emit(handler, logging.ERROR, "failed: %s", "boom")
    emit(handler, logging.INFO, "idle")
    about, idle = (json.loads(line) for line in out.getvalue().splitlines())
    assert about["message"] == "failed: boom" and about["level"] == "ERROR" and about["logger"] == "ferry.test.logsetup"
    assert (about["migration_id"], about["vm"], about["source"], about["target"]) == ("m-1", "g1", "host1", "host2")
    assert about["time"].startswith("20")
    assert idle["migration_id"] == "" and idle["target"] == ""


def test_json_keeps_the_traceback():
    out = io.StringIO()
    try:
        raise ValueError("bad")
    except ValueError:
        emit(make_handler(LogConfig(format="json"), out), logging.ERROR, "oops", exc_info=True)
    line = json.loads(out.getvalue())
    assert "ValueError: bad" in line["exc_info"]


@pytest.mark.parametrize(("level", "priority"), [(10, 7), (20, 6), (30, 4), (40, 3), (50, 2)])
def test_levels_map_to_syslog_priorities(level, priority):
    assert syslog_priority(level) == priority


def test_journal_lines_have_a_priority_and_no_time():
    formatter = TextFormatter(journal=True)
    record = logging.LogRecord("ferry.x", logging.WARNING, __file__, 1, "two\nlines", None, None)
    logcontext.MigrationFields().filter(record)
    assert formatter.format(record) == "<4>WARNING ferry.x: two\n<4>lines"


def test_journal_is_recognised_by_its_device_and_inode(tmp_path):
    with open(tmp_path / "f", "w") as stream:
        st = os.fstat(stream.fileno())
        assert is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not is_journal(stream, {})
    assert not is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


def test_metadata_names_only_what_is_known():
    assert logcontext.to_metadata(logcontext.MigrationContext("m-2", vm="g2")) == (
        ("ferry-migration-id", "m-2"),
        ("ferry-vm", "g2"),
    )
    assert logcontext.from_metadata([("ferry-vm", "g2")]) is None  # no id: about no migration
    assert logcontext.to_metadata(None) == ()


def test_merged_fills_only_the_same_migrations_gaps():
    partial = logcontext.MigrationContext("m-1", target="host2")
    assert partial.merged(CTX) == CTX
    assert partial.merged(logcontext.MigrationContext("m-9", vm="x")) == partial
