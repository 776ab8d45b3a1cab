"""A Store passed through, noting each read (``get KEY``, ``list PREFIX``) in ``reads``: for tests
that check which keys a component reads."""

from __future__ import annotations

from typing import Any

from ferry.store import Entry, Store


class ReadLog:
    """``store`` with its reads noted in order; every other call passes straight through."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads: list[str] = []

    async def get(self, key: str) -> Entry | None:
        self.reads.append(f"get {key}")
        return await self.store.get(key)

    async def list(self, prefix: str) -> tuple[list[Entry], int]:
        self.reads.append(f"list {prefix}")
        return await self.store.list(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)
