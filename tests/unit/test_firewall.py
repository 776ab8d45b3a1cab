"""The hypervisors' nftables ruleset (``deploy/lab/firewall.py``): the shipped file is the renderer's
output, and each port lets in only its set of addresses."""

from __future__ import annotations

from pathlib import Path

from ferry.lab.firewall import EXAMPLE, Allowed, render

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nftables" / "ferry-hypervisor.nft"


def test_the_shipped_ruleset_is_the_renderers_output():
    assert SHIPPED.read_text() == render(EXAMPLE), (
        "regenerate it: .venv/bin/python -m ferry.lab.firewall > deploy/nftables/ferry-hypervisor.nft"
    )


def test_each_port_lets_in_its_own_set_and_an_empty_family_lets_in_nothing():
    text = render(Allowed(hypervisors=("10.77.0.11", "10.77.0.12"), controllers=("10.77.0.1",), scrapers=("fd00::9",)))
    assert "tcp dport { 16514, 49152-49215 } ip saddr != @hypervisors drop" in text
    assert "tcp dport 7070 ip saddr != @controllers drop" in text
    assert "tcp dport 9470 ip6 saddr != @scrapers6 drop" in text
    sets = text.split("\tset ")[1:]
    by_name = {s.split(" ", 1)[0]: s for s in sets}
    assert "elements = { 10.77.0.11, 10.77.0.12 }" in by_name["hypervisors"]
    assert "elements" not in by_name["hypervisors6"]  # no IPv6 hypervisor: none gets in over IPv6
    assert "elements = { fd00::9 }" in by_name["scrapers6"] and "elements" not in by_name["scrapers"]
    # loaded again, it replaces its own table (and only that)
    assert text.count("delete table inet ferry_hypervisor") == 1
