"""Cordons, retention, paging, the admission of a cordoned target and the new config sections, on
the in-memory store where a store is needed (no gRPC).

What an operator would check: a cordon keeps its first reason and says which drain set it; a host
being drained cannot be uncordoned; retention deletes only what ended long enough ago, and never
someone else's idempotency key; a page token gives the next page even when items came and went.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry import keys
from ferry.coordinator import hoststate
from ferry.coordinator.config import Retention, parse_config
from ferry.coordinator.drain import DrainRecord, DrainState, with_state
from ferry.coordinator.drain import encode as encode_drain
from ferry.coordinator.paging import paginate
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import encode, new_migration, with_phase
from ferry.coordinator.retention import Sweeper, due
from ferry.coordinator.slots import Limits, WaitKind, plan_admission
from ferry.errors import FailedPrecondition, InvalidArgument
from ferry.testing.memory_store import MemoryStore

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


# ---------------------------------------------------------------- cordons


async def test_cordon_keeps_the_first_reason_and_a_drain_records_itself():
    store = MemoryStore()
    state, changed = await hoststate.cordon(store, "h1", "kernel update", NOW)
    assert changed and (state.cordoned, state.reason, state.since, state.drain_id) == (True, "kernel update", NOW, "")
    again, changed = await hoststate.cordon(store, "h1", "other words", NOW + DAY)
    assert not changed and again.reason == "kernel update"
    by_drain, changed = await hoststate.cordon(store, "h1", "drain", NOW + DAY, drain_id="d-1")
    assert changed and (by_drain.drain_id, by_drain.reason, by_drain.since) == ("d-1", "kernel update", NOW)
    stored, revision = await hoststate.read(store, "h1")
    assert stored == by_drain and revision > 0
    await store.close()


async def test_uncordon_is_refused_while_a_drain_runs():
    store = MemoryStore()
    await hoststate.cordon(store, "h1", "r", NOW, drain_id="d-1")

    async def draining(host: str) -> str:
        return "d-1"

    with pytest.raises(FailedPrecondition) as exc:
        await hoststate.uncordon(store, "h1", active_drain=draining)
    assert exc.value.reason == "DRAIN_ACTIVE" and "ferry drains cancel d-1" in exc.value.hint
    assert (await hoststate.read(store, "h1"))[0].cordoned

    async def none(host: str) -> str:
        return ""

    assert not (await hoststate.uncordon(store, "h1", active_drain=none)).cordoned
    assert await store.get(keys.host_state_key("h1")) is None
    await store.close()


async def test_a_reason_too_long_is_refused():
    with pytest.raises(InvalidArgument):
        await hoststate.cordon(MemoryStore(), "h1", "x" * 501, NOW)


def test_admission_keeps_a_migration_to_a_cordoned_host_waiting():
    r = new_migration(id="m1", vm="g", vm_uuid="u", source_host="h1", target_host="h2", now=NOW, timeouts=Timeouts())
    plan = plan_admission([r], [], Limits(), {"h1", "h2"}, NOW + 2 * DAY, cordoned={"h2"})
    assert plan.start == () and plan.waiting["m1"].kind is WaitKind.TARGET_CORDONED
    assert not plan.waiting["m1"].reserving  # waiting for a cordon reserves no slot, however old
    assert plan_admission([r], [], Limits(), {"h1", "h2"}, NOW, cordoned={"h1"}).start == ("m1",)  # source: fine


# ---------------------------------------------------------------- retention


def finished(mid: str, at: datetime, key: str = "", phase: Phase = Phase.FAILED):
    r = new_migration(
        id=mid,
        vm=mid,
        vm_uuid=f"u-{mid}",
        source_host="h1",
        target_host="h2",
        now=at,
        timeouts=Timeouts(),
        idempotency_key=key,
    )
    return with_phase(r, phase, at, "t", Timeouts())


def test_due_takes_only_what_ended_long_enough_ago():
    keep = Retention(migrations_s=7 * 86400, idempotency_s=86400, drains_s=30 * 86400)
    old = finished("old", NOW - 8 * DAY, key="k-old")
    keyed = finished("keyed", NOW - 2 * DAY, key="k-keyed")
    fresh = finished("fresh", NOW - timedelta(hours=1), key="k-fresh")
    running = new_migration(
        id="run", vm="r", vm_uuid="u", source_host="h1", target_host="h2", now=NOW - 30 * DAY, timeouts=Timeouts()
    )
    d_old = with_state(DrainRecord("d-old", "h1", NOW - 40 * DAY), DrainState.SUCCEEDED, NOW - 31 * DAY, "done")
    d_run = DrainRecord("d-run", "h1", NOW - 40 * DAY)
    got = due([old, keyed, fresh, running], [d_old, d_run], NOW, keep)
    assert [r.id for r in got.migrations] == ["old"]
    assert [r.id for r in got.idempotency] == ["keyed"]
    assert [d.id for d in got.drains] == ["d-old"]
    assert due([old], [d_old], NOW, replace(keep, migrations_s=0, drains_s=0, idempotency_s=0)) == due(
        [], [], NOW, keep
    )


async def test_the_sweeper_deletes_records_and_only_their_own_keys():
    store = MemoryStore()
    old = finished("old", NOW - 8 * DAY, key="k-old")
    reused = finished("reused", NOW - 8 * DAY, key="k-reused")
    records = {}
    for r in (old, reused):
        rev = await store.create(keys.migration_key(r.id), encode(r))
        records[r.id] = replace(r, revision=rev)
    await store.create(keys.idempotency_key("k-old"), keys.encode_id("old"))
    await store.create(keys.idempotency_key("k-reused"), keys.encode_id("newer"))  # reused by a later submission
    d = with_state(DrainRecord("d-old", "h1", NOW - 40 * DAY), DrainState.SUCCEEDED, NOW - 31 * DAY, "done")
    rev = await store.create(keys.drain_key(d.id), encode_drain(d))
    sweeper = Sweeper(store, lambda: records, {d.id: replace(d, revision=rev)}, Retention(), lambda: NOW)
    await sweeper.sweep()
    assert await store.get(keys.migration_key("old")) is None and await store.get(keys.migration_key("reused")) is None
    assert await store.get(keys.idempotency_key("k-old")) is None
    assert keys.decode_id((await store.get(keys.idempotency_key("k-reused"))).value) == "newer"
    assert await store.get(keys.drain_key("d-old")) is None
    assert sweeper.deleted == {"migrations": 2, "idempotency": 1, "drains": 1}
    await store.close()


# ---------------------------------------------------------------- paging


def test_a_page_token_survives_items_coming_and_going():
    items = ["e", "d", "c", "b", "a"]  # newest first
    first, token = paginate(items, lambda x: (x,), 2, "", descending=True)
    assert first == ["e", "d"]
    later = ["f", "e", "c", "b", "a"]  # "f" added, "d" deleted meanwhile
    assert paginate(later, lambda x: (x,), 2, token, descending=True)[0] == ["c", "b"]


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token!",
        base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).decode(),  # nested past json's recursion limit
    ],
)
def test_a_bad_page_token_is_refused(token):
    with pytest.raises(InvalidArgument) as exc:
        paginate([1, 2], lambda x: (str(x),), 1, token)
    assert exc.value.reason == "BAD_PAGE_TOKEN"


# ---------------------------------------------------------------- config


def test_the_new_config_sections():
    cfg = parse_config(
        """
[coordinator]
id = "c1"
listen = ["127.0.0.1:7100"]
[etcd]
endpoints = ["127.0.0.1:2379"]
insecure = true
[limits]
per_host_inbound = 3
[placement]
weights = { memory = 1.0, balance = 0.0, inbound = 0.0 }
anti_affinity = { web = ["web-*", "frontend"] }
[drains]
bandwidth_mibps = 250
overhead_s = 2
max_attempts = 2
[retention]
migrations_s = 3600
idempotency_s = 600
drains_s = 0
[engine]
progress_write_s = 2.5
[tls]
insecure = true
"""
    )
    assert cfg.placement.weights.memory == 1.0 and cfg.placement.inbound_limit == 3
    assert cfg.placement.anti_affinity[0].matches("web-7") and cfg.placement.anti_affinity[0].matches("frontend")
    assert (cfg.drains.estimates.bandwidth_mibps, cfg.drains.estimates.overhead_s, cfg.drains.max_attempts) == (
        250,
        2,
        2,
    )
    assert (cfg.retention.migrations_s, cfg.retention.idempotency_s, cfg.retention.drains_s) == (3600, 600, 0)
    assert cfg.engine.progress_write_s == 2.5


@pytest.mark.parametrize(
    "section",
    [
        "[retention]\nmigrations_s = 60\nidempotency_s = 120",  # a key would outlive its record
        "[drains]\nbandwidth_mibps = 0",
        "[drains]\nmax_attempts = 0",
        "[placement]\nweights = { memroy = 1 }",
    ],
)
def test_bad_sections_are_refused(section):
    with pytest.raises(InvalidArgument) as exc:
        parse_config(f'[coordinator]\nid = "c1"\nlisten = ["x:1"]\n[etcd]\nendpoints = ["x:2"]\n{section}\n')
    assert exc.value.reason == "CONFIG_INVALID"
