"""The leader's timing rules: when to renew, until when it may act, when to give up."""

from __future__ import annotations

import itertools

import pytest

from ferry.coordinator.election import Candidate, LeaseTiming


@pytest.mark.parametrize(
    ("sent_at", "ttl_s", "safety_s", "now", "leader"),
    [
        (100.0, 9, 1.0, 100.0, True),  # just renewed
        (100.0, 9, 1.0, 103.0, True),  # a renewal is due now
        (100.0, 9, 1.0, 107.99, True),  # renewals failing, still inside ttl - safety
        (100.0, 9, 1.0, 108.0, False),  # safety margin reached: step down
        (100.0, 9, 1.0, 109.0, False),  # the lease itself may be gone
        (100.0, 9, 1.0, 500.0, False),
        (100.0, 2, 0.2, 101.79, True),  # the smallest etcd TTL
        (100.0, 2, 0.2, 101.8, False),
    ],
)
def test_still_leader_after_a_renewal_sent_at(sent_at, ttl_s, safety_s, now, leader):
    assert LeaseTiming(ttl_s, safety_s).still_leader(sent_at, now) is leader


@pytest.mark.parametrize(
    ("ttl_s", "sent_at", "next_renewal"),
    [(9, 100.0, 103.0), (3, 100.0, 101.0), (30, 0.0, 10.0)],
)
def test_renewal_every_third_of_the_ttl(ttl_s, sent_at, next_renewal):
    assert LeaseTiming.for_ttl(ttl_s).next_renewal(sent_at) == pytest.approx(next_renewal)


@pytest.mark.parametrize(
    ("now", "retry"),
    [
        (103.0, 103.9),  # failed at the first renewal: retry after ttl/10
        (107.5, 108.0),  # not later than the deadline
        (108.0, None),  # at the deadline: step down
        (120.0, None),
    ],
)
def test_retry_after_a_failed_renewal(now, retry):
    got = LeaseTiming(9, 1.0).retry_at(now, renewal_sent_at=100.0)
    assert got == (pytest.approx(retry) if retry is not None else None)


@pytest.mark.parametrize(("ttl_s", "safety_s"), [(1, 0.2), (2, 0.2), (10, 1.0), (30, 3.0)])
def test_default_safety_margin(ttl_s, safety_s):
    assert LeaseTiming.for_ttl(ttl_s).safety_s == pytest.approx(safety_s)


def test_never_leader_once_the_lease_could_have_expired_and_renewals_come_first():
    for ttl_s, sent_at, dt in itertools.product([2, 3, 5, 10, 60], [0.0, 17.5, 1e6], [x / 10 for x in range(0, 700)]):
        t = LeaseTiming.for_ttl(ttl_s)
        now = sent_at + dt
        if t.still_leader(sent_at, now):
            assert now < sent_at + ttl_s
        assert t.next_renewal(sent_at) < t.deadline(sent_at)  # room for at least one retry


@pytest.mark.parametrize(
    ("data", "candidate"),
    [
        (Candidate("coord-1", "10.77.0.1:7000").encode(), Candidate("coord-1", "10.77.0.1:7000")),
        (b'{"id": "x"}', Candidate("x", "")),
        (b"not json", Candidate("?", "")),
        (b"[1, 2]", Candidate("?", "")),
    ],
)
def test_leader_value_names_the_candidate(data, candidate):
    assert Candidate.decode(data) == candidate
