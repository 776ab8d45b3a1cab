"""Which migration a log line is about: ``migration_id``, ``vm``, ``source`` and ``target`` on every
line logged while one is being worked on (pure: the standard library only).

The coordinator's runner binds its record for the task that drives it (and the tasks it starts);
its agent calls carry the same four fields as gRPC metadata (``to_metadata``), and the agent's
server binds them for the handler (``ferry.rpc``), so the agent's lines about a migration carry
them too. A handler's ``MigrationFields`` filter copies them onto each record; an explicit
``extra=context.extra()`` on a call wins.

>>> ctx = MigrationContext("m-1", vm="g1", source="host1", target="host2")
>>> from_metadata(to_metadata(ctx)) == ctx
True
>>> with bound(ctx):
...     current() == ctx
True
>>> current() is None
True
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, fields, replace

from ferry.errors import clip

FIELDS = ("migration_id", "vm", "source", "target")
"""The attributes a log record about a migration carries (the JSON keys of a line)."""

METADATA_PREFIX = "ferry-"
"""gRPC metadata keys: ``ferry-migration-id``, ``ferry-vm``, ``ferry-source``, ``ferry-target``."""


@dataclass(frozen=True)
class MigrationContext:
    migration_id: str
    vm: str = ""
    source: str = ""
    target: str = ""

    def extra(self) -> dict[str, str]:
        """For ``log.info(..., extra=ctx.extra())`` where no context is bound."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def merged(self, other: MigrationContext) -> MigrationContext:
        """This context with its empty fields filled from ``other`` (same migration only)."""
        if other.migration_id != self.migration_id:
            return self
        filled = {f.name: getattr(other, f.name) for f in fields(self) if not getattr(self, f.name)}
        return replace(self, **filled)


_current: ContextVar[MigrationContext | None] = ContextVar("ferry_migration", default=None)


def current() -> MigrationContext | None:
    """The migration this task works on, if any."""
    return _current.get()


def bind(ctx: MigrationContext | None) -> None:
    """From now on in this task (and the tasks it starts), log lines are about ``ctx``."""
    _current.set(ctx)


@contextlib.contextmanager
def bound(ctx: MigrationContext | None) -> Iterator[None]:
    """Log lines in the block are about ``ctx``; the previous binding is restored after it."""
    token = _current.set(ctx)
    try:
        yield
    finally:
        _current.reset(token)


def _key(name: str) -> str:
    return METADATA_PREFIX + name.replace("_", "-")


def to_metadata(ctx: MigrationContext | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata naming the migration (empty without one; empty fields left out)."""
    if ctx is None:
        return ()
    return tuple((_key(name), value) for name in FIELDS if (value := getattr(ctx, name)))


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> MigrationContext | None:
    """The migration a call's metadata names (None when it names none)."""
    wanted = {_key(name): name for name in FIELDS}
    # the caller's words: at most ECHO_MAX characters of each reach a log line
    found = {wanted[k]: clip(v) for k, v in metadata or () if k in wanted and isinstance(v, str)}
    if not found.get("migration_id"):
        return None
    return MigrationContext(**found)


class MigrationFields(logging.Filter):
    """Puts the bound migration's fields on every record (empty strings when none is bound), so
    every formatter can name them. Attach it to a handler: it then sees every logger's records."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current()
        for name in FIELDS:
            if not getattr(record, name, ""):
                setattr(record, name, getattr(ctx, name) if ctx is not None else "")
        return True
