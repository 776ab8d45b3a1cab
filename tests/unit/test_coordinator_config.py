"""The coordinator's config file, and the host mapping derived from its [hosts.*] tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.coordinator.config import HostDecl, bandwidth_budget, derive_mapping, load_config, parse_config
from ferry.coordinator.phases import Timeouts
from ferry.errors import FailedPrecondition, InvalidArgument
from ferry.model import HostMapping

TLS = """
[tls]
ca = "/pki/ca.pem"
cert = "/pki/coordinator.c1.pem"
key = "/pki/coordinator.c1-key.pem"
"""

NO_TLS = """
[coordinator]
id = "c1"
listen = ["127.0.0.1:7100"]

[etcd]
endpoints = ["127.0.0.1:2379"]
"""

MINIMAL = NO_TLS + TLS

FULL = """
[coordinator]
id = "coord-1"
listen = ["10.77.0.1:7100", "unix:/tmp/ferry/coordinator.sock"]
advertise = "10.77.0.1:7100"
election_ttl_s = 6
prepare_ttl_s = 300

[etcd]
endpoints = ["10.77.0.1:2379", "10.77.0.2:2379"]
prefix = "/lab/"
timeout_s = 2.5
ca = "pki/etcd-ca.pem"
cert = "pki/etcd-client.pem"
key = "pki/etcd-client-key.pem"

[limits]
per_host_outbound = 2
per_host_inbound = 3
cluster = 8
prepare_ahead = 0

[timeouts]
preflight_s = 30
max_attempts = 5

[agents]
call_timeout_s = 10
inventory_ttl_s = 2
ca = "pki/ca.pem"
cert = "pki/coord.pem"
key = "pki/coord-key.pem"

[tls]
ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server-key.pem"

[hosts.host1]
bridges = { guest = "br-guest" }
paths = { images = "/var/lib/libvirt/images" }

[hosts.host2]
bridges = { guest = "br-vm" }
networks = { mgmt = "default" }
"""


def test_minimal_config_takes_the_defaults():
    c = parse_config(MINIMAL)
    assert (c.id, c.listen, c.advertised) == ("c1", ("127.0.0.1:7100",), "127.0.0.1:7100")
    assert c.etcd.endpoints == ("127.0.0.1:2379",) and c.etcd.prefix == "/ferry/"
    assert (c.limits.per_host_outbound, c.limits.per_host_inbound, c.limits.cluster) == (1, 2, 4)
    assert c.limits.prepare_ahead == 1
    assert c.timeouts == Timeouts()
    assert c.tls is not None and c.tls.cert == Path("/pki/coordinator.c1.pem") and c.hosts == {}
    assert c.agents.tls == c.tls and c.etcd.tls == c.tls  # one identity for the API, the agents and etcd


def test_full_config(tmp_path: Path):
    path = tmp_path / "coordinator.toml"
    path.write_text(FULL)
    c = load_config(path)
    assert c.advertised == "10.77.0.1:7100" and c.election_ttl_s == 6 and c.prepare_ttl_s == 300
    assert c.etcd.prefix == "/lab/" and c.etcd.timeout_s == 2.5 and c.etcd.tls is not None
    assert c.etcd.tls.ca == tmp_path / "pki/etcd-ca.pem" and c.etcd.tls.key == tmp_path / "pki/etcd-client-key.pem"
    assert (c.limits.per_host_outbound, c.limits.per_host_inbound, c.limits.cluster) == (2, 3, 8)
    assert c.limits.prepare_ahead == 0
    assert c.timeouts.preflight_s == 30.0 and c.timeouts.max_attempts == 5
    assert c.timeouts.preparing_s == Timeouts().preparing_s  # not overridden
    assert c.agents.call_timeout_s == 10 and c.agents.tls is not None
    assert c.agents.tls.cert == tmp_path / "pki/coord.pem"  # relative to the file
    assert c.tls is not None and c.tls.key == tmp_path / "pki/server-key.pem"
    assert c.hosts["host1"].bridges == {"guest": "br-guest"}
    assert c.hosts["host2"].networks == {"mgmt": "default"}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (MINIMAL + "\n[limits]\nper_host_outbund = 2\n", "'per_host_outbund' in [limits]"),
        (MINIMAL.replace('id = "c1"', 'id = "c1"\nlisten_on = []'), "'listen_on' in [coordinator]"),
        (MINIMAL + "\n[timeouts]\npreflight = 3\n", "'preflight' in [timeouts]"),
        (MINIMAL + "\n[hosts.h1]\nbridge = { guest = 'br0' }\n", "'bridge' in [hosts.h1]"),
        (MINIMAL + "\n[agent]\nx = 1\n", "'agent' in [top level]"),
        (MINIMAL.replace("[etcd]", "[etcd]\nprefixx = '/x/'"), "'prefixx' in [etcd]"),
    ],
)
def test_unknown_keys_are_named(text, named):
    with pytest.raises(InvalidArgument) as exc:
        parse_config(text)
    assert exc.value.reason == "CONFIG_INVALID"
    assert named in exc.value.message
    assert "known keys" in exc.value.hint


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("[etcd]\nendpoints = ['x:1']\n", "no [coordinator]"),
        ("[coordinator]\nid = 'c'\n[etcd]\nendpoints = ['x:1']\n", "lacks listen"),
        ("[coordinator]\nid = 'c'\nlisten = ['a:1']\n" + TLS, "no [etcd]"),
        (MINIMAL.replace('["127.0.0.1:2379"]', "[]"), "endpoints must be a non-empty list"),
        (MINIMAL + "\n[limits]\ncluster = 0\n", "cluster must be a positive integer"),
        (MINIMAL + "\n[limits]\ncluster = 2.5\n", "cluster must be a positive integer"),
        (MINIMAL + "\n[limits]\nprepare_ahead = -1\n", "prepare_ahead must be a number >= 0"),
        (MINIMAL + "\n[limits]\nprepare_ahead = 1.5\n", "prepare_ahead must be a whole number"),
        (MINIMAL + "\n[limits]\nhost_bandwidth_mibps = -5\n", "host_bandwidth_mibps must be a number >= 0"),
        (MINIMAL + "\n[hosts.h1]\nbandwidth_mibps = 12.5\n", "[hosts.h1] bandwidth_mibps must be a whole number"),
        (MINIMAL + "\n[timeouts]\nslot_wait_s = 900\n", "slot_wait_s (900 s) is not below [coordinator] prepare_ttl_s"),
        (MINIMAL.replace("[etcd]", "[etcd]\nprefix = '/ferry'"), "must end with '/'"),
        (NO_TLS + "\n[tls]\nca = 'ca.pem'\n", "lacks cert, key"),
        (NO_TLS + "\n[tls]\ncert = 'c.pem'\nkey = 'k.pem'\n", "lacks ca"),
        (NO_TLS, "no [tls] table"),
        (NO_TLS + "\n[tls]\ninsecure = true\nca = 'ca.pem'\n", "insecure = true but also gives ca"),
        (NO_TLS + "\n[tls]\ninsecure = true\n", "[etcd] has no ca, cert and key, and [tls] is insecure"),
        (MINIMAL.replace("[etcd]", "[etcd]\nca = 'x.pem'"), "[etcd] has ca but lacks cert, key"),
        (MINIMAL.replace("[etcd]", "[etcd]\ninsecure = 'yes'"), "insecure must be true or false"),
        (MINIMAL + "\n[hosts.h1]\nbridges = ['br0']\n", "bridges must be a table"),
        ("[coordinator\n", "not valid TOML"),
    ],
)
def test_bad_values_say_what_is_wrong(text, what):
    with pytest.raises(InvalidArgument) as exc:
        parse_config(text)
    assert what in exc.value.message
    assert exc.value.hint


def test_unreadable_file_is_named(tmp_path: Path):
    with pytest.raises(InvalidArgument) as exc:
        load_config(tmp_path / "missing.toml")
    assert exc.value.reason == "CONFIG_UNREADABLE" and "missing.toml" in exc.value.message


# ---------------------------------------------------------------- the derived mapping

H1 = HostDecl(
    "host1",
    bridges={"guest": "br-guest", "storage": "br-stor"},
    networks={"mgmt": "default"},
    paths={"images": "/var/lib/libvirt/images", "iso": "/srv/iso"},
)
H2 = HostDecl(
    "host2",
    bridges={"guest": "br-vm", "storage": "br-stor"},
    networks={"mgmt": "mgmt-net"},
    paths={"images": "/data/images"},
)
H3 = HostDecl("host3", bridges={"backup": "br-bk"})


@pytest.mark.parametrize(
    ("source", "target", "overrides", "bridges", "networks", "paths"),
    [
        # every logical name both declare; identical names are left out; names only one declares ignored
        (H1, H2, None, {"br-guest": "br-vm"}, {"default": "mgmt-net"}, {"/var/lib/libvirt/images": "/data/images"}),
        # the other way round
        (H2, H1, None, {"br-vm": "br-guest"}, {"mgmt-net": "default"}, {"/data/images": "/var/lib/libvirt/images"}),
        # nothing in common
        (H1, H3, None, {}, {}, {}),
        # a host without a [hosts.*] table: only the request's overrides
        (None, H2, HostMapping(bridges={"br0": "br-vm"}), {"br0": "br-vm"}, {}, {}),
        (H1, None, None, {}, {}, {}),
        # the request wins, key by key; other derived pairs stay
        (
            H1,
            H2,
            HostMapping(bridges={"br-guest": "br-x"}, path_prefixes={"/srv/iso": "/iso"}),
            {"br-guest": "br-x"},
            {"default": "mgmt-net"},
            {"/var/lib/libvirt/images": "/data/images", "/srv/iso": "/iso"},
        ),
    ],
)
def test_mapping_is_derived_from_both_hosts_declarations(source, target, overrides, bridges, networks, paths):
    m = derive_mapping(source, target, overrides)
    assert (m.bridges, m.networks, m.path_prefixes) == (bridges, networks, paths)


def test_ambiguous_mapping_is_refused_unless_overridden():
    # host A puts two logical networks on one bridge, host B has them on two bridges
    a = HostDecl("a", bridges={"guest": "br0", "storage": "br0"})
    b = HostDecl("b", bridges={"guest": "br-guest", "storage": "br-stor"})
    with pytest.raises(FailedPrecondition) as exc:
        derive_mapping(a, b)
    assert exc.value.reason == "MAPPING_AMBIGUOUS"
    assert "--map-bridge br0=" in exc.value.hint
    assert derive_mapping(a, b, HostMapping(bridges={"br0": "br-guest"})).bridges == {"br0": "br-guest"}
    # the other way round is not ambiguous: two bridges onto one
    assert derive_mapping(b, a).bridges == {"br-guest": "br0", "br-stor": "br0"}


def test_docstring_examples():
    import doctest

    from ferry.coordinator import config

    assert doctest.testmod(config).failed == 0


def test_plaintext_only_when_each_link_says_insecure():
    c = parse_config(NO_TLS.replace("[etcd]", "[etcd]\ninsecure = true") + "\n[tls]\ninsecure = true\n")
    assert c.tls is None and c.etcd.tls is None and c.agents.tls is None


def test_etcd_over_tls_with_a_plaintext_api_is_possible():
    text = (
        NO_TLS.replace("[etcd]", "[etcd]\nca = 'e/ca.pem'\ncert = 'e/c.pem'\nkey = 'e/k.pem'")
        + "[tls]\ninsecure = true\n"
    )
    c = parse_config(text, base_dir=Path("/cfg"))
    assert c.tls is None and c.etcd.tls is not None and c.etcd.tls.cert == Path("/cfg/e/c.pem")


# ---------------------------------------------------------------- convergence policies

POLICIES = (
    MINIMAL
    + """
[policies.busy]
bandwidth_mibps = 32
downtime = [{ ms = 100 }, { ms = 300, after_s = 10 }, { ms = 500, after_s = 10, after_iterations = 5 }]
postcopy = "on-prediction"
postcopy_bandwidth_mibps = 64
timeout_per_gib_s = 150
progress_timeout_s = 150
timeout_action = "force-complete"

[policies.strict]
downtime = [{ ms = 300 }]
refuse_unfinishable = true

[[policy_selectors]]
policy = "busy"
vm = "db-*"
min_memory_mib = 4096

[[policy_selectors]]
policy = "strict"

[prediction]
link_mibps = 150
periods_s = [1, 4]
on_submit = true
reuse_s = 30
always = true
"""
)


def test_named_policies_selectors_and_the_prediction_settings():
    from ferry.convergence import DowntimeStep, PostcopyMode, TimeoutAction
    from ferry.coordinator.policies import PolicySelector, PredictionConfig

    c = parse_config(POLICIES)
    busy = c.policies["busy"]
    assert (busy.name, busy.bandwidth_mibps, busy.postcopy, busy.timeout_action) == (
        "busy",
        32,
        PostcopyMode.ON_PREDICTION,
        TimeoutAction.FORCE_COMPLETE,
    )
    assert busy.downtime_steps == (
        DowntimeStep(100),
        DowntimeStep(300, after_s=10),
        DowntimeStep(500, after_s=10, after_iterations=5),
    )
    assert (busy.postcopy_bandwidth_mibps, busy.timeout_per_gib_s, busy.progress_timeout_s) == (64, 150.0, 150.0)
    assert c.policies["strict"].refuse_unfinishable
    assert c.policy_selectors == (PolicySelector("busy", "db-*", 4 << 30, 0), PolicySelector("strict"))
    assert c.prediction == PredictionConfig(link_mibps=150, periods_s=(1, 4), on_submit=True, reuse_s=30.0, always=True)


def test_without_policies_the_flags_make_the_policy():
    from ferry.coordinator.policies import PredictionConfig

    c = parse_config(MINIMAL)
    assert (dict(c.policies), c.policy_selectors, c.prediction) == ({}, (), PredictionConfig())


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ('[policies.p]\npostcopy = "often"\n', "postcopy = 'often' is unknown"),
        ("[policies.p]\nbandwith_mibps = 3\n", "unknown key(s) bandwith_mibps"),
        ("[policies.p]\ndowntime = [{ ms = 500 }, { ms = 100, after_s = 5 }]\n", "does not follow step 1"),
        ('[policies.p]\npostcopy = "on-stall"\nparallel_connections = 4\n', "multifd"),
        ('[[policy_selectors]]\npolicy = "nope"\n', "names policy 'nope', which is not defined"),
        ('[[policy_selectors]]\nvm = "db-*"\n', "names no policy"),
        ("[prediction]\nperiods_s = [0]\n", "periods_s must be 1 to 60 s"),
    ],
)
def test_bad_policy_configs_are_refused_naming_the_problem(extra, says):
    with pytest.raises(InvalidArgument) as e:
        parse_config(MINIMAL + extra, source="c.toml")
    assert e.value.reason == "CONFIG_INVALID"
    assert says in e.value.message and "c.toml" in e.value.message


def test_the_example_config_policies_parse():
    from ferry.lab.controlplane import LAB_POLICIES

    c = parse_config(MINIMAL + LAB_POLICIES)
    assert sorted(c.policies) == ["busy", "multifd", "postcopy-early", "precopy", "strict"]


def test_host_bandwidth_budgets_default_to_limits_and_a_host_may_have_its_own():
    c = parse_config(MINIMAL + "\n[limits]\nhost_bandwidth_mibps = 500\n[hosts.h1]\nbandwidth_mibps = 2000\n")
    budget = bandwidth_budget(c)
    assert budget is not None and (budget("h1"), budget("h2")) == (2000, 500)
    assert bandwidth_budget(parse_config(MINIMAL)) is None  # none configured: nothing is shared
