"""Paging of the List calls (pure): ``page_size`` and an opaque ``page_token``.

A list is sorted by a key (a tuple of strings); a page token is the key of the last item of the
previous page, base64url-encoded JSON. The next page starts after that key, so an item added or
deleted between two calls neither repeats nor shifts what follows.

>>> items = ["a", "b", "c", "d", "e"]
>>> page, token = paginate(items, lambda x: (x,), 2, "")
>>> page, paginate(items, lambda x: (x,), 2, token)[0]
(['a', 'b'], ['c', 'd'])
>>> paginate(items, lambda x: (x,), 2, paginate(items, lambda x: (x,), 4, "")[1])
(['e'], '')
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from ferry.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000
MAX_TOKEN = 4096  # characters: a key of a few names and ids, base64-encoded


def page_size(requested: int) -> int:
    """0 = the default; anything above the maximum is the maximum."""
    return DEFAULT_PAGE_SIZE if requested <= 0 else min(requested, MAX_PAGE_SIZE)


def encode_token(key: tuple[str, ...]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode()


def decode_token(token: str) -> tuple[str, ...]:
    try:
        if len(token) > MAX_TOKEN:
            raise ValueError("too long")
        key = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(key, list) or not all(isinstance(k, str) for k in key):
            raise ValueError("not a list of strings")
        return tuple(key)
    except (ValueError, TypeError, RecursionError) as e:  # RecursionError: JSON nested past the parser's depth
        raise InvalidArgument(
            "page_token is not one this server gave out",
            reason="BAD_PAGE_TOKEN",
            hint="pass next_page_token of the previous answer unchanged, or none for the first page",
        ) from e


def paginate(
    items: Sequence[T], key: Callable[[T], tuple[str, ...]], size: int, token: str, *, descending: bool = False
) -> tuple[list[T], str]:
    """The page after ``token`` of ``items`` (already sorted by ``key``, descending if so) and the
    token of the next page ('' when this is the last)."""
    n = page_size(size)
    start = 0
    if token:
        after = decode_token(token)
        start = len(items)
        for i, item in enumerate(items):
            k = key(item)
            if (k < after) if descending else (k > after):
                start = i
                break
    page = list(items[start : start + n])
    more = start + n < len(items)
    return page, encode_token(key(page[-1])) if more and page else ""
