"""A replica's view of a prefix (``coordinator/view.py``) over the in-memory store: it shows
what a fresh list of the prefix would show, whatever the values written meanwhile."""

import asyncio

from ferry.coordinator import hoststate
from ferry.coordinator.view import PrefixView
from ferry.testing.memory_store import MemoryStore


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_key_rewritten_with_a_value_the_view_cannot_read_leaves_it_rather_than_stay_as_it_was():
    # a newer version's schema (a rolling upgrade), or a value written by hand: a fresh list would
    # leave the key out; the view does not go on serving the superseded value (h1 "cordoned")
    store = MemoryStore()
    view = PrefixView(store, "host-state/", hoststate.decode_entry)
    rev = await store.create("host-state/h1", hoststate.encode(hoststate.HostCordon("h1", True, "kernel")))
    await view.start()
    seen: list[tuple[str, object]] = []
    view.subscribe(lambda name, value: seen.append((name, value)))
    assert view.get("h1") is not None and view.get("h1").cordoned
    await store.update("host-state/h1", b'{"schema": 99, "state": "in-service"}', rev)
    await settle()
    assert view.get("h1") is None and seen == [("h1", None)]
    await view.close()


async def test_a_value_the_decoder_chokes_on_does_not_stop_the_view_following_the_store(caplog):
    store = MemoryStore()
    view = PrefixView(store, "host-state/", hoststate.decode_entry)
    await view.start()
    await store.create("host-state/bad", b"[" * 100_000)  # json.loads: RecursionError, not a FerryError
    await settle()
    await store.create("host-state/h2", hoststate.encode(hoststate.HostCordon("h2", True, "disk swap")))
    await settle()
    assert view.get("h2") is not None and view.get("bad") is None
    assert "cannot decode bad" in caplog.text
    await view.close()
