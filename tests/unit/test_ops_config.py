"""``[metrics]`` and ``[log]`` in both daemons' configs: defaults, what may be written, mistakes named."""

from __future__ import annotations

import re

import pytest

from ferry.agent.config import parse_config as parse_agent
from ferry.coordinator.config import parse_config as parse_coordinator
from ferry.errors import InvalidArgument
from ferry.tomlconfig import LogConfig, MetricsConfig

AGENT = """
[agent]
name = "host1"
listen = ["10.77.0.11:7070", "unix:/run/ferry/agent.sock"]
advertise_libvirt_uri = "qemu+tcp://10.77.0.11/system"
[tls]
insecure = true
"""
COORDINATOR = """
[coordinator]
id = "c1"
listen = ["unix:/run/ferry/c1.sock", "10.77.0.1:7100"]
[etcd]
endpoints = ["10.77.0.1:2379"]
insecure = true
[tls]
insecure = true
"""


def test_metrics_are_on_by_default_beside_the_grpc_api():
    agent, coordinator = parse_agent(AGENT), parse_coordinator(COORDINATOR)
    assert agent.metrics == coordinator.metrics == MetricsConfig()
    assert agent.metrics_listen == ("10.77.0.11:9470",)
    assert coordinator.metrics_listen == ("10.77.0.1:9471",)  # the first TCP address, not the socket
    assert agent.log == coordinator.log == LogConfig(format="text", level="info")


@pytest.mark.parametrize("parse, text", [(parse_agent, AGENT), (parse_coordinator, COORDINATOR)])
def test_metrics_and_log_sections(parse, text):
    c = parse(
        text
        + '[metrics]\nlisten = ["127.0.0.1:9999", "unix:/run/ferry/metrics.sock"]\n'
        + '[log]\nformat = "json"\nlevel = "DEBUG"\n'
    )
    assert c.metrics_listen == ("127.0.0.1:9999", "unix:/run/ferry/metrics.sock")
    assert c.log == LogConfig(format="json", level="debug")
    off = parse(text + "[metrics]\nenabled = false\n")
    assert off.metrics.enabled is False
    plain = parse(text + "[metrics]\ninsecure = true\n")
    assert plain.metrics.insecure is True and c.metrics.insecure is False


def test_metrics_serve_the_daemons_tls_unless_insecure():
    from pathlib import Path

    from ferry.rpc import Tls

    tls = Tls(Path("ca.pem"), Path("c.pem"), Path("c-key.pem"))
    assert MetricsConfig().tls(tls) == tls
    assert MetricsConfig(insecure=True).tls(tls) is None
    assert MetricsConfig().tls(None) is None  # a daemon without TLS


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ('[log]\nformat = "yaml"\n', "format must be one of text, json"),
        ('[log]\nlevel = "loud"\n', "level must be one of"),
        ('[log]\ncolour = "yes"\n', "unknown key 'colour' in [log]"),
        ("[metrics]\nlisten = []\n", "listen is empty"),
        ('[metrics]\nenabled = "no"\n', "enabled must be true or false"),
        ('[metrics]\ninsecure = "yes"\n', "insecure must be true or false"),
        ("[metrics]\nport = 9470\n", "unknown key 'port' in [metrics]"),
    ],
)
def test_mistakes_are_named(section, named):
    for parse, text in ((parse_agent, AGENT), (parse_coordinator, COORDINATOR)):
        with pytest.raises(InvalidArgument, match=re.escape(named)) as exc:
            parse(text + section)
        assert exc.value.reason == "CONFIG_INVALID" and exc.value.hint
