"""Host bandwidth budgets shared by the migrations running through them (``coordinator/bandwidth.py``):
on random fleets no budget is exceeded, no flow runs above its cap, and every flow is held by
something (max-min fairness: its cap, or a full budget on which no other flow gets more)."""

from __future__ import annotations

import random

import pytest

from ferry.coordinator.bandwidth import Flow, fixed_share, shares, why


def random_case(rng: random.Random) -> tuple[list[Flow], dict[str, int]]:
    hosts = [f"h{i}" for i in range(rng.randint(2, 6))]
    budgets = {h: rng.choice([0, 0, 40, 100, 250, 1000]) for h in hosts}
    flows = []
    for i in range(rng.randint(0, 12)):
        s, t = rng.sample(hosts, 2)
        if rng.random() < 0.25 and (budgets[s] or budgets[t]):  # copies disks: the budget over 2 slots, kept
            flows.append(Flow(f"m{i}", s, t, fixed_share(budgets.__getitem__, s, t, 0, (2, 2)), fixed=True))
        else:
            flows.append(Flow(f"m{i}", s, t, cap_mibps=rng.choice([0, 0, 0, 16, 32, 64, 500])))
    return flows, budgets


@pytest.mark.parametrize("seed", range(30))
def test_shares_keep_every_budget_and_cap_and_are_max_min_fair(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        flows, budgets = random_case(rng)
        got = shares(flows, budgets.__getitem__)
        links: dict[tuple[str, bool], list[Flow]] = {}
        for f in flows:
            for host, out in ((f.source, True), (f.target, False)):
                if budgets[host]:
                    links.setdefault((host, out), []).append(f)
        for (host, _), on in links.items():
            fixed = sum(f.cap_mibps for f in on if f.fixed)
            others = [f for f in on if not f.fixed]
            # what the fixed flows leave is shared; a flow starved elsewhere still gets 1 MiB/s (0 is
            # "no cap" to libvirt): at most 1 MiB/s over per flow
            assert sum(got[f.id] for f in others) <= max(budgets[host] - fixed, 0) + len(others), (host, on, got)
        for f in flows:
            if f.fixed:
                assert got[f.id] == f.cap_mibps  # never re-tuned
                continue
            limited = f.cap_mibps or (f.source, True) in links or (f.target, False) in links
            if not limited:
                assert got[f.id] == 0  # nothing caps it: QEMU's default
                continue
            assert got[f.id] >= 1
            if f.cap_mibps:
                assert got[f.id] <= f.cap_mibps
            at_cap = f.cap_mibps and got[f.id] >= f.cap_mibps - 1
            # or held by a full budget where it is among the largest (whole-MiB rounding: 1 per flow)
            held = any(
                f in on
                and sum(got[g.id] for g in on) >= budgets[host] - len(on)
                and got[f.id] >= max(got[g.id] for g in on if not g.fixed) - 1
                for (host, _), on in links.items()
            )
            assert at_cap or held, (f, got, budgets)


def test_a_note_says_which_budget_and_how_many_share_it() -> None:
    flows = [Flow("a", "h1", "h2"), Flow("b", "h1", "h3"), Flow("c", "h4", "h2")]
    budget = {"h1": 100, "h2": 60}.get
    got = shares(flows, lambda h: budget(h) or 0)
    assert got == {"a": 30, "b": 70, "c": 30}
    assert why(flows[0], got, flows, lambda h: budget(h) or 0) == (
        "bandwidth 30 MiB/s: the migration budget of h1, 100 MiB/s out, shared by 2 migrations; "
        "the migration budget of h2, 60 MiB/s in, shared by 2 migrations"
    )
    # b is held by h1 alone (h3 has no budget), c by h2
    assert why(flows[1], got, flows, lambda h: budget(h) or 0) == (
        "bandwidth 70 MiB/s: the migration budget of h1, 100 MiB/s out, shared by 2 migrations"
    )
    assert why(flows[2], got, flows, lambda h: budget(h) or 0) == (
        "bandwidth 30 MiB/s: the migration budget of h2, 60 MiB/s in, shared by 2 migrations"
    )
