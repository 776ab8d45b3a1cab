"""What each outgoing migration copied, recorded on the source: the only disks RemoveSourceDisks
may remove.

A Migrate that copies disks writes a record keyed by its migration id before the job starts
(the domain's UUID and name, the source paths of the disks copied) and marks how the job ended
as far as this agent saw it (a job the Migrate stopped watching: once it ends, ``settled``).
RemoveSourceDisks then removes only paths that record lists, for the domain it names: a made-up
UUID, a made-up path or a migration this host never ran removes nothing.

One JSON file per migration under ``state_dir/outgoing``, written atomically and durably
(``statefile``; ``save``, ``ended``, ``settled`` and ``sweep`` block on the disk: ``SourceDisks``
runs them in a thread). Records older than ``KEEP`` are swept.
"""

from __future__ import annotations

import enum
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from ferry.agent.statefile import write_json

log = logging.getLogger(__name__)

KEEP = timedelta(days=7)  # a record outlives its migration by this long (late RemoveSourceDisks)


class Outcome(enum.Enum):
    """How the job ended, as far as this agent saw it."""

    # started; the agent did not see the end (yet: a job the Migrate stopped watching -- stream
    # cut, an abort that did not end it -- is marked when it ends; never: the agent restarted)
    RUNNING = "running"
    COMPLETED = "completed"  # the job completed: the domain runs on the target
    FAILED = "failed"  # the job failed or was aborted: the domain stayed here
    REMOVED = "removed"  # RemoveSourceDisks removed the paths


@dataclass(frozen=True)
class SourceRecord:
    migration_id: str
    domain_uuid: str
    domain_name: str
    paths: tuple[str, ...]  # source paths of the disks the migration copies
    started_at: datetime
    outcome: Outcome = Outcome.RUNNING
    ended_at: datetime | None = None


class SourceRecords:
    """One JSON file per outgoing migration that copies disks, under ``state_dir/outgoing``.
    Migration ids are checked by the caller (``ferry.validate.ident``: no ``/``, no ``..``)."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = Path(state_dir) / "outgoing"
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, migration_id: str) -> Path:
        return self._dir / f"{migration_id}.json"

    def save(self, record: SourceRecord) -> None:
        doc = {
            "migration_id": record.migration_id,
            "domain_uuid": record.domain_uuid,
            "domain_name": record.domain_name,
            "paths": list(record.paths),
            "started_at": record.started_at.isoformat(),
            "outcome": record.outcome.value,
            "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        }
        write_json(self._path(record.migration_id), doc)

    def load(self, migration_id: str) -> SourceRecord | None:
        """The record, None when there is none (or it is unreadable: logged, left for an operator)."""
        try:
            doc = json.loads(self._path(migration_id).read_text(encoding="utf-8"))
            ended = doc.get("ended_at")
            return SourceRecord(
                migration_id=str(doc["migration_id"]),
                domain_uuid=str(doc["domain_uuid"]),
                domain_name=str(doc["domain_name"]),
                paths=tuple(str(p) for p in doc["paths"]),
                started_at=datetime.fromisoformat(doc["started_at"]),
                outcome=Outcome(doc["outcome"]),
                ended_at=datetime.fromisoformat(ended) if ended else None,
            )
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable outgoing migration record %s: %r; left in place", migration_id, exc)
            return None

    def migration_ids(self) -> list[str]:
        """The migrations recorded here, sorted."""
        return sorted(p.stem for p in self._dir.glob("*.json"))

    def ended(self, migration_id: str, outcome: Outcome, at: datetime) -> None:
        record = self.load(migration_id)
        if record is not None:
            self.save(replace(record, outcome=outcome, ended_at=at))

    def settled(self, migration_id: str, outcome: Outcome, at: datetime) -> bool:
        """``ended`` for a job whose end came after the Migrate stopped watching it: only a record
        still RUNNING changes (one REMOVED meanwhile stays so). Whether it changed."""
        record = self.load(migration_id)
        if record is None or record.outcome is not Outcome.RUNNING:
            return False
        self.save(replace(record, outcome=outcome, ended_at=at))
        return True

    def sweep(self, now: datetime) -> list[str]:
        """Delete records started more than ``KEEP`` ago; their migration ids."""
        gone = []
        for path in sorted(self._dir.glob("*.json")):
            record = self.load(path.stem)
            if record is not None and now - record.started_at > KEEP:
                path.unlink(missing_ok=True)
                gone.append(record.migration_id)
        return gone
