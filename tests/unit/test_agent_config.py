"""The agent's TOML config: the agreed lab file parses; mistakes are named, not defaulted."""

from pathlib import Path

import pytest

from ferry.agent.config import AgentConfig, load_config, parse_config
from ferry.errors import InvalidArgument
from ferry.rpc import Tls

LAB = """
[agent]
name = "host1"
listen = ["10.77.0.11:7070", "unix:/tmp/ferry-lab/hosts/host1/agent.sock"]
libvirt_uri = "qemu:///system"
advertise_libvirt_uri = "qemu+tcp://10.77.0.11/system"
migration_address = "10.77.0.11"
image_dirs = ["/var/lib/libvirt/images"]
shared_dirs = ["/tmp/ferry-lab/shared"]
state_dir = "/var/lib/ferry-agent"
prepare_ttl_s = 600
libvirt_timeout_s = 30
"""


def test_lab_config():
    assert parse_config(LAB) == AgentConfig(
        name="host1",
        listen=("10.77.0.11:7070", "unix:/tmp/ferry-lab/hosts/host1/agent.sock"),
        advertise_libvirt_uri="qemu+tcp://10.77.0.11/system",
        libvirt_uri="qemu:///system",
        migration_address="10.77.0.11",
        image_dirs=("/var/lib/libvirt/images",),
        shared_dirs=("/tmp/ferry-lab/shared",),
        state_dir="/var/lib/ferry-agent",
        prepare_ttl_s=600,
        libvirt_timeout_s=30.0,
        tls=None,
    )


def test_minimal_config_has_defaults():
    cfg = parse_config('[agent]\nname = "h"\nlisten = ["127.0.0.1:0"]\nadvertise_libvirt_uri = "qemu+tcp://h/system"\n')
    assert cfg.libvirt_uri == "qemu:///system"
    assert cfg.prepare_ttl_s == 600 and cfg.libvirt_timeout_s == 30


def test_example_config_in_deploy_parses():
    cfg = load_config(Path(__file__).parents[2] / "deploy/config/agent.toml")
    assert cfg.tls == Tls(
        Path("/etc/ferry/pki/ca.pem"), Path("/etc/ferry/pki/agent.pem"), Path("/etc/ferry/pki/agent-key.pem")
    )


def test_relative_tls_paths_are_relative_to_the_file(tmp_path):
    f = tmp_path / "agent.toml"
    f.write_text(LAB + '\n[tls]\nca = "pki/ca.pem"\ncert = "pki/a.pem"\nkey = "pki/a-key.pem"\n')
    assert load_config(f).tls == Tls(tmp_path / "pki/ca.pem", tmp_path / "pki/a.pem", tmp_path / "pki/a-key.pem")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (LAB + "prepare_tll_s = 5\n", "prepare_tll_s"),  # typo: unknown key
        (LAB + '[tsl]\nca = "x"\n', "tsl"),  # unknown table
        (LAB + '[tls]\nca = "a"\ncert = "b"\nkey = "c"\nkeypass = "d"\n', "keypass"),
        (LAB + '[tls]\nca = "a"\n', "cert"),  # incomplete TLS
        (LAB.replace('name = "host1"\n', ""), "name"),  # required key
        (LAB.replace("advertise_libvirt_uri", "#"), "advertise_libvirt_uri"),
        (LAB.replace("prepare_ttl_s = 600", 'prepare_ttl_s = "600"'), "prepare_ttl_s"),
        (LAB.replace("prepare_ttl_s = 600", "prepare_ttl_s = 0"), "prepare_ttl_s"),
        (LAB.replace("libvirt_timeout_s = 30", "libvirt_timeout_s = true"), "libvirt_timeout_s"),
        (LAB.replace("listen = [", 'listen = "x" #'), "listen"),
        (
            LAB.replace('listen = ["10.77.0.11:7070", "unix:/tmp/ferry-lab/hosts/host1/agent.sock"]', "listen = []"),
            "listen",
        ),
        (LAB.replace('migration_address = "10.77.0.11"', "migration_address = 7"), "migration_address"),
        ("[agent\n", "TOML"),
        ('name = "h"\n', "name"),  # key outside [agent]
    ],
)
def test_mistakes_are_named(text, named):
    with pytest.raises(InvalidArgument) as exc:
        parse_config(text, source="agent.toml")
    assert exc.value.reason == "CONFIG_INVALID"
    assert named in str(exc.value)
    assert "agent.toml" in exc.value.message
    assert exc.value.hint


def test_missing_file(tmp_path):
    with pytest.raises(InvalidArgument) as exc:
        load_config(tmp_path / "nope.toml")
    assert exc.value.reason == "CONFIG_UNREADABLE"


def test_confinement_keys():
    cfg = parse_config(LAB + 'bridges = ["br-guest"]\nmigration_targets = ["qemu+tcp://10.77.0.12/system"]\n')
    assert cfg.bridges == ("br-guest",) and cfg.migration_targets == ("qemu+tcp://10.77.0.12/system",)
    assert parse_config(LAB).migration_targets == ()  # without a registry: Migrate goes nowhere


@pytest.mark.parametrize("bad", ['"images"', '"/var/lib/../../etc"'])
def test_image_dirs_must_be_absolute_without_dotdot(bad):
    with pytest.raises(InvalidArgument) as exc:
        parse_config(LAB.replace('image_dirs = ["/var/lib/libvirt/images"]', f"image_dirs = [{bad}]"))
    assert exc.value.reason == "CONFIG_INVALID" and "image_dirs" in exc.value.message
