"""ferry-certs: a CA, role certificates with the ferry://ROLE/NAME identity, keys kept private."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat

from cryptography import x509

from ferry.certs import identity_in, issue, issue_identity, main, new_ca
from ferry.identity import Identity, Role, identity_of, parse_identity_uri


def test_init_issue_show(tmp_path, capsys):
    assert main(["init", "--dir", str(tmp_path)]) == 0
    assert main(["init", "--dir", str(tmp_path)]) == 2  # an existing CA is never overwritten
    assert (
        main(
            [
                "issue",
                "--dir",
                str(tmp_path),
                "--role",
                "agent",
                "--name",
                "hv1",
                "--dns",
                "hv1.dc1",
                "--ip",
                "10.0.0.11",
            ]
        )
        == 0
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "agent.hv1.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["ferry://agent/hv1"]
    assert san.get_values_for_type(x509.DNSName) == ["hv1.dc1"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.11")]
    assert cert.subject.rfc4514_string() == "CN=agent.hv1,O=Ferry"  # etcd's user name: agent.hv1
    for key in ("ca-key.pem", "agent.hv1-key.pem"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    capsys.readouterr()
    assert main(["show", str(tmp_path / "agent.hv1.pem")]) == 0
    assert capsys.readouterr().out.strip() == "ferry://agent/hv1"
    assert main(["issue", "--dir", str(tmp_path), "--role", "reader", "--name", "a/b"]) == 2  # not a NAME


def test_identity_of_a_certificate():
    ca = new_ca()
    assert identity_in(issue_identity(ca, Identity(Role.SCHEDULER, "nova")).cert) == Identity(Role.SCHEDULER, "nova")
    assert identity_in(issue(ca, "someone").cert) is None  # no ferry:// URI
    two = issue(ca, "x", uris=["ferry://reader/a", "ferry://operator/b"]).cert
    assert identity_in(two) is None  # ambiguous: refused rather than guessed


def test_identity_uris():
    assert parse_identity_uri("ferry://coordinator/c1") == Identity(Role.COORDINATOR, "c1")
    for bad in ("ferry://coordinator/", "ferry://coordinator/c1/x", "ferry:/reader/x", "https://reader/x"):
        assert parse_identity_uri(bad) is None, bad
    assert identity_of(["spiffe://a/b", "ferry://reader/r"]) == Identity(Role.READER, "r")


def test_a_certificate_can_be_made_already_expired():
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    cert = x509.load_pem_x509_certificate(
        issue_identity(new_ca(), Identity(Role.OPERATOR, "o"), days=1, not_before=past).cert
    )
    assert cert.not_valid_after_utc < dt.datetime.now(dt.UTC)


def test_etcd_reached_with_the_apis_ca_is_warned_about(tmp_path):
    """etcd admits every certificate of the CA it trusts to leases and compaction (RBAC guards keys):
    a daemon whose etcd CA is its API CA says so at start."""
    from ferry.certs import etcd_ca_warning, new_ca, write_pem

    api, etcd = write_pem(tmp_path, "api", new_ca("API")), write_pem(tmp_path, "etcd", new_ca("etcd"))
    assert etcd_ca_warning(etcd[0], api[0]) == ""
    assert "a CA of its own" in etcd_ca_warning(api[0], api[0])
    assert etcd_ca_warning(api[0], None) == "" and etcd_ca_warning(tmp_path / "missing.pem", api[0]) == ""
