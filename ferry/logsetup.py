"""How the daemons write their log: plain text or JSON lines, on stderr, adapted to journald.

``[log] format`` (``ferry.tomlconfig.LogConfig``) chooses the shape of a line:

- ``text`` (the default): ``2026-01-02 10:00:00,123 INFO ferry.coordinator.runner: migration m-1:
  Pending -> Preflight: admitted  migration_id=m-1 vm=g1 source=host1 target=host2``
  (the migration's fields appended when the line is about one);
- ``json``: one object per line (python-json-logger), keys ``time``, ``level``, ``logger``,
  ``message``, and ``migration_id``, ``vm``, ``source``, ``target`` on every line (empty when the
  line is about no migration), ``exc_info`` with a traceback.

When stderr is the systemd journal (``$JOURNAL_STREAM`` names it), each line starts with its
syslog priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug; journald strips it
into PRIORITY) and carries no time of its own: journald stamps every entry.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import IO, Any

from ferry.logcontext import FIELDS, MigrationFields
from ferry.tomlconfig import LOG_LEVELS, LogConfig

__all__ = ["LOG_LEVELS", "TextFormatter", "configure", "is_journal", "json_formatter", "make_handler"]

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels between two take the more severe one).

    >>> syslog_priority(logging.WARNING), syslog_priority(logging.INFO), syslog_priority(25)
    (4, 6, 4)
    """
    for level, priority in sorted(_PRIORITY.items()):
        if levelno <= level:
            return priority
    return 2


def is_journal(stream: IO[str], environ: dict[str, str] | None = None) -> bool:
    """``stream`` is connected to the journal: systemd sets ``JOURNAL_STREAM=<device>:<inode>``
    of the stream it gave the service, and it must still be this stream (not a redirect)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def _with_priority(text: str, levelno: int) -> str:
    prefix = f"<{syslog_priority(levelno)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


def _quoted(value: object) -> str:
    """A field's value as is when it is one plain word, else quoted: a value holding spaces or '='
    (a caller's words) cannot pass for more fields.

    >>> _quoted("m-1a2b"), _quoted("web 1 outcome=OK")
    ('m-1a2b', '"web 1 outcome=OK"')
    """
    text = str(value)
    return text if text and all(c.isalnum() or c in "-_.:/@+" for c in text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    """``[time ]LEVEL logger: message`` plus `` key=value`` for the migration's fields."""

    def __init__(self, *, journal: bool = False) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        about = "  ".join(f"{k}={_quoted(v)}" for k in FIELDS if (v := getattr(record, k, "")))
        if about:
            head, nl, rest = text.partition("\n")  # after the message, before a traceback
            text = f"{head}  {about}{nl}{rest}"
        return _with_priority(text, record.levelno) if self.journal else text


def json_formatter(*, journal: bool = False) -> logging.Formatter:
    """One JSON object per line (python-json-logger: the coordinator/agent extras install it)."""
    from pythonjsonlogger.json import JsonFormatter

    class _Json(JsonFormatter):
        def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
            super().add_fields(log_data, record, message_dict)
            for key in FIELDS:
                log_data.setdefault(key, getattr(record, key, ""))

        def format(self, record: logging.LogRecord) -> str:
            text = super().format(record)
            return _with_priority(text, record.levelno) if journal else text

    return _Json(
        ["levelname", "name", "message"],
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp=False if journal else "time",
    )


def make_handler(config: LogConfig, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing ``config.format`` lines to ``stream`` (stderr), with the migration fields."""
    out = stream if stream is not None else sys.stderr
    journal = is_journal(out)
    handler = logging.StreamHandler(out)
    handler.setFormatter(json_formatter(journal=journal) if config.format == "json" else TextFormatter(journal=journal))
    handler.addFilter(MigrationFields())
    return handler


def configure(config: LogConfig, *, level: str | None = None, stream: IO[str] | None = None) -> logging.Handler:
    """Make the root logger write through one handler as ``config`` says (replacing any handler
    set before); ``level`` (the --log-level option) wins over ``config.level``."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = make_handler(config, stream)
    root.addHandler(handler)
    root.setLevel((level or config.level).upper())
    return handler
