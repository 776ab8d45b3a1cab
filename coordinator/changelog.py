"""Which names changed after a version, without looking at the others (placement's caches)."""

from __future__ import annotations


class ChangeLog:
    """Names with the version each last changed at: ``version`` moves on with every ``touch``,
    and ``changed_since(v)`` names those touched after ``v``, the most recent first, looking at
    those alone (a 1,000-host fleet is placed on many times a second, a few hosts at a time
    changing in between).

    >>> log = ChangeLog()
    >>> log.touch("h1"); log.touch("h2"); seen = log.version; log.touch("h1")
    >>> log.changed_since(seen), log.changed_since(0), log.changed_since(log.version)
    (['h1'], ['h1', 'h2'], [])
    """

    def __init__(self) -> None:
        self.version = 0
        self._order: dict[str, int] = {}  # name -> the version it last changed at, the least recent first

    def touch(self, name: str) -> None:
        self.version += 1
        self._order.pop(name, None)
        self._order[name] = self.version

    def changed_since(self, version: int) -> list[str]:
        out = []
        for name in reversed(self._order):
            if self._order[name] <= version:
                break
            out.append(name)
        return out
