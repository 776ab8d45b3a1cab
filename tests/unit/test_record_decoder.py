"""The replica's shared record decoder (``coordinator/replica.py``): each version of a record is
decoded at most once, whichever watch asks first, and the versions the engine wrote not at all."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.coordinator import replica
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.record import MigrationRecord, decode, encode, new_migration, with_phase
from ferry.keys import migration_key
from ferry.store import Entry

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def versions() -> list[MigrationRecord]:
    """A migration's versions as the engine writes them, Pending (revision 10) to Succeeded."""
    r = replace(
        new_migration(id="m-1", vm="g1", vm_uuid="u1", source_host="h1", target_host="h2", now=T0, timeouts=Timeouts()),
        revision=10,
        create_revision=10,
    )
    out = [r]
    for n, phase in enumerate((Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING, Phase.FINISHING, Phase.SUCCEEDED)):
        r = replace(with_phase(r, phase, T0 + timedelta(seconds=n), phase.name.lower(), Timeouts()), revision=11 + n)
        out.append(r)
    return out


def entry(r: MigrationRecord) -> Entry:
    return Entry(migration_key(r.id), encode(r), r.revision, 10)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []

    def counting(data: bytes, revision: int, create_revision: int = 0) -> MigrationRecord:
        seen.append(revision)
        return decode(data, revision, create_revision)

    monkeypatch.setattr(replica, "decode", counting)
    return seen


def test_the_versions_the_engine_wrote_ahead_of_both_watches_are_not_decoded(decoded: list[int]) -> None:
    submitted, *written = versions()
    decoder = replica.RecordDecoder()
    assert decoder(entry(submitted)) == submitted
    for r in written[:3]:  # three versions written before either watch brings one back
        decoder.written(r)
    engine_watch = [decoder(entry(r)) for r in [submitted, *written[:3]]]
    view_watch = [decoder(entry(r)) for r in [submitted, *written[:3]]]
    for r in written[3:]:  # the last two (Succeeded the final one): each brought back after its write
        decoder.written(r)
        engine_watch.append(decoder(entry(r)))
        view_watch.append(decoder(entry(r)))
    assert decoded == [10]
    assert engine_watch == [submitted, *written] and all(a is b for a, b in zip(engine_watch, view_watch, strict=True))
    assert all(a is b for a, b in zip(engine_watch[1:], written, strict=True))  # the written objects themselves
    assert decoder._by_key == {migration_key("m-1"): {15: written[-1]}}  # final: that version alone


def test_each_version_is_decoded_once_but_a_lagging_watch_decodes_the_last_before_the_final_again(
    decoded: list[int],
) -> None:
    """Once the final version was asked for, the older ones are dropped (a final record is kept
    for the retention time: its newest version alone); a watch one version behind the other then
    decodes the version before the final once more."""
    every = versions()
    for lag, again in ((0, []), (1, [14])):  # the view's watch `lag` versions behind the engine's
        decoder = replica.RecordDecoder()
        decoded.clear()
        for i, r in enumerate(every):
            assert decoder(entry(r)) == r
            if i >= lag:
                assert decoder(entry(every[i - lag])) == every[i - lag]
        for r in every[len(every) - lag :]:
            assert decoder(entry(r)) == r
        assert decoded == [r.revision for r in every] + again, lag
        assert decoder._by_key == {migration_key("m-1"): {15: every[-1]}}
