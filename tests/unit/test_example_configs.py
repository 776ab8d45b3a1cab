"""The example configs in deploy/config/ parse with the real loaders (they must not drift), and
show every section an operator needs: the agent's registration, metrics and logging."""

import tomllib
from pathlib import Path

from ferry.agent.config import load_config as load_agent
from ferry.coordinator.config import derive_mapping
from ferry.coordinator.config import load_config as load_coordinator

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config"


def test_agent_example():
    c = load_agent(CONFIG / "agent.toml")
    assert c.name == "hv-r12-07" and c.tls is not None
    assert c.registry is not None and c.registry.address == "10.20.0.7:7070" and len(c.registry.etcd_endpoints) == 3
    assert c.metrics.enabled and c.metrics_listen == ("10.20.0.7:9470",)
    assert c.log.format == "json" and c.log.level == "info"


def test_examples_show_every_section():
    agent = tomllib.loads((CONFIG / "agent.toml").read_text())
    coordinator = tomllib.loads((CONFIG / "coordinator.toml").read_text())
    assert set(agent) == {"agent", "tls", "registry", "metrics", "log"}
    assert set(coordinator) == {
        "coordinator",
        "etcd",
        "limits",
        "agents",
        "metrics",
        "log",
        "tls",
        "hosts",
        "policies",
        "policy_selectors",
        "prediction",
    }
    # the agent registers where the coordinators look: the same etcd and prefix
    assert agent["registry"]["etcd_endpoints"] == coordinator["etcd"]["endpoints"]
    assert agent["registry"]["prefix"] == coordinator["etcd"]["prefix"]


def test_coordinator_example_derives_the_mapping():
    c = load_coordinator(CONFIG / "coordinator.toml")
    assert c.limits.per_host_outbound == 1
    assert c.metrics_listen == ("10.20.0.2:9471",) and c.log.format == "json"
    m = derive_mapping(c.hosts["hv-r12-07"], c.hosts["hv-r14-02"])
    assert m.bridges == {"br-guest": "virbr-guests"}
    assert m.path_prefixes == {"/var/lib/libvirt/images": "/srv/vm-images"}


def test_coordinator_example_policies():
    c = load_coordinator(CONFIG / "coordinator.toml")
    assert sorted(c.policies) == ["busy", "default", "no-postcopy"]
    assert [s.policy for s in c.policy_selectors] == ["busy", "default"]
    assert c.prediction.link_mibps == 1100
