"""The agent's small state files, written atomically and durably.

A temporary file beside the target is written and fsynced, renamed over the target, and the
directory fsynced: a crash leaves the old content or the new, never a torn file, and a file that
was written stays written.

An fsync waits for the disk. On a host whose disk is busy with a copy migration that takes far
longer than the ~1 ms of an idle disk, so the agent never calls these on its event loop while it
serves: the callers run them in a thread (``asyncio.to_thread``), and the loop keeps streaming
progress, answering GetDomain and renewing the agent's registration meanwhile.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text``, atomically and durably (blocking: see above)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """``doc`` as indented JSON at ``path`` (``write_atomically``).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_json(Path(d) / "p-1.json", {"a": 1})
    ...     sorted(p.name for p in Path(d).iterdir()), json.loads((Path(d) / "p-1.json").read_text())
    (['p-1.json'], {'a': 1})
    """
    write_atomically(path, json.dumps(doc, indent=1))
