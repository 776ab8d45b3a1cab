"""The example configs in deploy/config/ parse with the real loaders (they must not drift)."""

from pathlib import Path

from ferry.agent.config import load_config as load_agent
from ferry.coordinator.config import derive_mapping
from ferry.coordinator.config import load_config as load_coordinator

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


def test_agent_example():
    c = load_agent(CONFIG / "agent.toml")
    assert c.name == "hv-r12-07" and c.tls is not None


def test_coordinator_example_derives_the_mapping():
    c = load_coordinator(CONFIG / "coordinator.toml")
    assert c.limits.per_host_outbound == 1
    m = derive_mapping(c.hosts["hv-r12-07"], c.hosts["hv-r14-02"])
    assert m.bridges == {"br-guest": "virbr-guests"}
    assert m.path_prefixes == {"/var/lib/libvirt/images": "/srv/vm-images"}
