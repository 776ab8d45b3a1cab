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
INSECURE = "\n[tls]\ninsecure = true\n"


def test_lab_config():
    assert parse_config(LAB + INSECURE) == AgentConfig(
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
    cfg = parse_config(
        '[agent]\nname = "h"\nlisten = ["127.0.0.1:0"]\nadvertise_libvirt_uri = "qemu+tcp://h/system"\n' + INSECURE
    )
    assert cfg.libvirt_uri == "qemu:///system"
    assert cfg.prepare_ttl_s == 600 and cfg.libvirt_timeout_s == 30


def test_example_config_in_deploy_parses():
    cfg = load_config(Path(__file__).parents[2] / "deploy/config/agent.toml")
    assert cfg.tls == Tls(
        Path("/etc/ferry/pki/ca.pem"),
        Path("/etc/ferry/pki/agent.hv-r12-07.pem"),
        Path("/etc/ferry/pki/agent.hv-r12-07-key.pem"),
    )
    # etcd: the same identity, from etcd's own CA (a CA of the APIs would make every reader an etcd client)
    assert cfg.registry is not None and cfg.registry.tls == Tls(
        Path("/etc/ferry/pki/etcd/ca.pem"),
        Path("/etc/ferry/pki/etcd/agent.hv-r12-07.pem"),
        Path("/etc/ferry/pki/etcd/agent.hv-r12-07-key.pem"),
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


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (LAB, "no [tls] table: mutual TLS is required"),
        (LAB + '[tls]\ncert = "b"\n', "[tls] has cert but lacks ca, key"),  # a cert without a CA
        (LAB + '[tls]\nca = "a"\ncert = "b"\n', "lacks key"),  # a CA and cert without a key
        (LAB + '[tls]\ninsecure = true\nkey = "c"\n', "insecure = true but also gives key"),
        (LAB + "[tls]\ninsecure = 1\n", "insecure must be true or false"),
        (LAB + INSECURE + '[registry]\netcd_endpoints = ["e:1"]\naddress = "a:1"\n', "[registry] has no ca"),
        (
            LAB + '[tls]\nca = "a"\ncert = "b"\nkey = "c"\n[registry]\netcd_endpoints = ["e:1"]\naddress = "a:1"\n'
            'ca = "x"\n',
            "[registry] has ca but lacks cert, key",
        ),
    ],
)
def test_half_written_tls_is_refused_naming_the_missing_key(text, named):
    with pytest.raises(InvalidArgument) as exc:
        parse_config(text, source="agent.toml")
    assert named in exc.value.message


def test_registry_in_plaintext_only_when_it_says_so():
    cfg = parse_config(LAB + INSECURE + '[registry]\netcd_endpoints = ["e:1"]\naddress = "a:1"\ninsecure = true\n')
    assert cfg.tls is None and cfg.registry is not None and cfg.registry.tls is None


def test_registry_has_its_own_etcd_certificate(tmp_path):
    text = (
        LAB
        + '[tls]\nca = "ca.pem"\ncert = "a.pem"\nkey = "a-key.pem"\n'
        + '[registry]\netcd_endpoints = ["e:1"]\naddress = "a:1"\nca = "e/ca.pem"\ncert = "e/a.pem"\nkey = "e/k.pem"\n'
        + 'server_name = "etcd.dc1"\n'
    )
    cfg = parse_config(text, base_dir=tmp_path)
    assert cfg.registry is not None and cfg.registry.tls == Tls(
        tmp_path / "e/ca.pem", tmp_path / "e/a.pem", tmp_path / "e/k.pem"
    )
    assert cfg.registry.server_name == "etcd.dc1"


def test_migration_streams_are_encrypted_by_default(tmp_path):
    from ferry.agent.tls_material import QEMU_TLS_FILES, migration_tls_problem

    cfg = parse_config(LAB + INSECURE)
    assert cfg.migration_tls is True and cfg.migration_tls_dir == "/etc/pki/qemu"
    off = parse_config(LAB.replace("[agent]", "[agent]\nmigration_tls = false") + INSECURE)
    assert off.migration_tls is False
    assert "switched off" in migration_tls_problem(False, str(tmp_path))
    for name in QEMU_TLS_FILES[:-1]:
        (tmp_path / name).write_text("pem")
    assert migration_tls_problem(True, str(tmp_path)).endswith("client-key.pem")  # names what is missing
    (tmp_path / QEMU_TLS_FILES[-1]).write_text("pem")
    assert migration_tls_problem(True, str(tmp_path)) == ""


def test_qemus_migration_ca_must_not_be_the_apis(tmp_path):
    """Seen in a walkthrough: with one lab CA for everything, a reader's certificate read a guest's
    disk from the NBD port of a migration under way (QEMU checks the CA, not whom it names)."""
    from ferry.agent.tls_material import QEMU_TLS_FILES, migration_tls_problem
    from ferry.certs import new_ca, shared_authority

    api, hypervisors = new_ca("Ferry API CA"), new_ca("Hypervisor CA")
    (tmp_path / "api-ca.pem").write_bytes(api.cert)
    for name in QEMU_TLS_FILES:
        (tmp_path / name).write_text("pem")
    (tmp_path / "ca-cert.pem").write_bytes(hypervisors.cert)
    assert migration_tls_problem(True, str(tmp_path), tmp_path / "api-ca.pem") == ""
    (tmp_path / "ca-cert.pem").write_bytes(hypervisors.cert + api.cert)  # a bundle that includes the API's
    problem = migration_tls_problem(True, str(tmp_path), tmp_path / "api-ca.pem")
    assert "also the CA of Ferry's APIs" in problem and "a CA of their own" in problem
    assert migration_tls_problem(True, str(tmp_path), None) == ""  # an agent without TLS has no CA to compare
    assert not shared_authority(b"not pem", api.cert)


def test_confinement_keys():
    cfg = parse_config(
        LAB + 'bridges = ["br-guest"]\nmigration_targets = ["qemu+tls://10.77.0.12/system"]\n' + INSECURE
    )
    assert cfg.bridges == ("br-guest",) and cfg.migration_targets == ("qemu+tls://10.77.0.12/system",)
    assert parse_config(LAB + INSECURE).migration_targets == ()  # without a registry: Migrate goes nowhere


@pytest.mark.parametrize("bad", ['"images"', '"/var/lib/../../etc"'])
def test_image_dirs_must_be_absolute_without_dotdot(bad):
    with pytest.raises(InvalidArgument) as exc:
        parse_config(LAB.replace('image_dirs = ["/var/lib/libvirt/images"]', f"image_dirs = [{bad}]") + INSECURE)
    assert exc.value.reason == "CONFIG_INVALID" and "image_dirs" in exc.value.message


def test_check_says_what_the_config_and_its_certificates_hold_and_exits(tmp_path, capsys):
    """`ferry-agent --config F --check`: valid -> 0 and each identity; a key of another -> 2."""
    import datetime as dt

    from ferry.agent.main import main
    from ferry.certs import issue_identity, new_ca, write_pem
    from ferry.identity import Identity, Role

    ca = new_ca("test CA")
    write_pem(tmp_path, "ca", ca)
    write_pem(tmp_path, "agent.host1", issue_identity(ca, Identity(Role.AGENT, "host1"), dns=["host1"]))
    soon = dt.datetime.now(dt.UTC) - dt.timedelta(days=355)  # 365 days from then: 10 left
    write_pem(tmp_path, "old", issue_identity(ca, Identity(Role.AGENT, "host1"), not_before=soon))
    config = tmp_path / "agent.toml"
    tls = '[tls]\nca = "ca.pem"\ncert = "{0}.pem"\nkey = "{1}-key.pem"\n'
    config.write_text(LAB + tls.format("agent.host1", "agent.host1"))
    assert main(["--config", str(config), "--check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"ferry-agent: {config} is valid"
    assert out[1].startswith("  tls: ferry://agent/host1, ") and "matches" in out[1] and "RENEW" not in out[1]
    config.write_text(LAB + tls.format("old", "old"))
    assert main(["--config", str(config), "--check"]) == 0
    assert "RENEW IT: 9 day(s) left" in capsys.readouterr().out
    config.write_text(LAB + tls.format("agent.host1", "old"))
    assert main(["--config", str(config), "--check"]) == 2
    assert capsys.readouterr().out == ""
