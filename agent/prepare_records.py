"""The prepare records on disk: what each PrepareIncoming created, so it can be undone exactly.

One JSON file per prepare under ``state_dir/prepares``, written atomically (temporary file,
fsync, rename, fsync of the directory). Besides the record, each file keeps the bytes the
prepare will fill per image (``reserved``), so concurrent prepares do not promise the same free
space twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from ferry.model import PrepareRecord

log = logging.getLogger(__name__)


class PrepareStore:
    """One JSON file per prepare under ``state_dir/prepares``, written atomically
    (temporary file, fsync, rename, fsync of the directory)."""

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
        tmp = self._dir / f".{record.prepare_id}.json.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(record.prepare_id))
        dir_fd = os.open(self._dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

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
