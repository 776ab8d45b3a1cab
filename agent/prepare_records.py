"""The prepare records on disk: what each PrepareIncoming created, so it can be undone exactly.

One JSON file per prepare under ``state_dir/prepares``, written atomically and durably
(``statefile``; ``save`` and ``delete`` block on the disk: the prepare service runs them in a
thread). Besides the record, each file keeps the bytes the prepare will fill per image
(``reserved``), so prepares do not promise the same free space twice (the prepare service
checks the records and writes a new one under one lock).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from ferry.agent.statefile import write_json
from ferry.model import PrepareRecord

log = logging.getLogger(__name__)


class PrepareStore:
    """One JSON file per prepare under ``state_dir/prepares`` (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = Path(state_dir) / "prepares"
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, prepare_id: str) -> Path:
        return self._dir / f"{prepare_id}.json"

    def save(self, record: PrepareRecord, reserved: Mapping[str, int]) -> None:
        doc = {
            "prepare_id": record.prepare_id,
            "domain_name": record.domain_name,
            "domain_uuid": record.domain_uuid,
            "created": list(record.created),
            "created_at": record.created_at.isoformat(),
            "expires_at": record.expires_at.isoformat(),
            "migration_id": record.migration_id,
            "reserved": dict(reserved),
        }
        write_json(self._path(record.prepare_id), doc)

    def load(self, prepare_id: str) -> tuple[PrepareRecord, dict[str, int]] | None:
        try:
            doc = json.loads(self._path(prepare_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        record = PrepareRecord(
            prepare_id=doc["prepare_id"],
            domain_name=doc["domain_name"],
            domain_uuid=doc["domain_uuid"],
            created=tuple(doc["created"]),
            created_at=datetime.fromisoformat(doc["created_at"]),
            expires_at=datetime.fromisoformat(doc["expires_at"]),
            migration_id=doc.get("migration_id", ""),
        )
        return record, {k: int(v) for k, v in doc.get("reserved", {}).items()}

    def all(self) -> list[tuple[PrepareRecord, dict[str, int]]]:
        out = []
        for path in sorted(self._dir.glob("*.json")):
            try:
                loaded = self.load(path.stem)
            except (ValueError, KeyError, TypeError):
                log.error("unreadable prepare record %s: left in place for an operator", path)
                continue
            if loaded is not None:
                out.append(loaded)
        return sorted(out, key=lambda r: r[0].created_at)

    def delete(self, prepare_id: str) -> bool:
        try:
            self._path(prepare_id).unlink()
        except FileNotFoundError:
            return False
        return True
