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


SYSTEMD = CONFIG.parent / "systemd"


def unit(name: str) -> dict[str, list[str]]:
    """A unit file's ``Key=value`` lines (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_agent_unit_is_confined_to_the_example_configs_image_dirs():
    u, c = unit("ferry-agent.service"), load_agent(CONFIG / "agent.toml")
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert u[key] == ["yes"], key
    assert u["ProtectSystem"] == ["strict"] and u["StateDirectory"] == ["ferry-agent"]
    writable = {p.lstrip("-") for p in u["ReadWritePaths"]}
    assert {*c.image_dirs, *c.shared_dirs} <= writable and "/run/libvirt" in writable
    assert u["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "CAP_SYS_ADMIN" not in u["CapabilityBoundingSet"][0]


def test_the_coordinator_runs_as_its_own_user():
    u = unit("ferry-coordinator.service")
    assert u["User"] == ["ferry-coordinator"] and "DynamicUser" not in u
    assert u["CapabilityBoundingSet"] == [""] and u["ProtectSystem"] == ["strict"]
    assert "u ferry-coordinator" in (SYSTEMD / "ferry.sysusers.conf").read_text()
