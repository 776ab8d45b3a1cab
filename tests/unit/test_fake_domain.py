"""The fake hypervisor's domains parse their XML once per XML, not once per lookup (a fleet
simulation looks domains up by name or UUID thousands of times a second)."""

from __future__ import annotations

import ferry.testing.fake_hypervisor as fake
from ferry.model import DomainState


def test_a_domain_parses_its_xml_once_and_again_when_it_changes(monkeypatch):
    parsed: list[str] = []
    real = fake.parse_domain
    monkeypatch.setattr(fake, "parse_domain", lambda xml: parsed.append(xml) or real(xml))
    first = fake.make_domain_xml("g1", uuid="u-1")
    dom = fake.FakeDomain(first, DomainState.RUNNING)
    assert [dom.name, dom.uuid, dom.name, dom.parsed.memory_bytes > 0] == ["g1", "u-1", "g1", True]
    assert parsed == [first]
    dom.xml = fake.make_domain_xml("g2", uuid="u-2")  # redefined: the new XML is what counts
    assert (dom.name, dom.uuid) == ("g2", "u-2")
    assert len(parsed) == 2
