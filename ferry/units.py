"""Byte counts for people: the one formatter the agent's messages and the CLI share (pure)."""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

_UNITS = (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB))


def human_bytes(n: int, *, short: bool = False) -> str:
    """A byte count in the largest binary unit it fills, with one decimal; ``short`` (tables,
    progress lines) drops the decimal from 10 up.

    >>> human_bytes(3 << 30), human_bytes(256 << 20), human_bytes(512)
    ('3.0 GiB', '256.0 MiB', '512 B')
    >>> human_bytes(256 << 20, short=True), human_bytes(1536, short=True), human_bytes(0, short=True)
    ('256 MiB', '1.5 KiB', '0 B')
    """
    for unit, size in _UNITS:
        if abs(n) >= size:
            value = n / size
            return f"{value:.0f} {unit}" if short and abs(value) >= 10 else f"{value:.1f} {unit}"
    return f"{n} B"
