"""A small CA for Ferry: create one, issue role certificates, read identities back (``cryptography``).

For the lab (``ferry-lab up`` writes ``<lab>/pki``) and for fleets without a PKI of their own::

    ferry-certs init --dir /etc/ferry/pki                       # ca.pem + ca-key.pem (keep the key offline)
    ferry-certs issue --dir /etc/ferry/pki --role agent --name hv1 --dns hv1.dc1 --ip 10.0.0.11
    ferry-certs issue --dir /etc/ferry/pki --role coordinator --name c1 --dns coord1.dc1
    ferry-certs issue --dir /etc/ferry/pki --role operator --name alice
    ferry-certs show /etc/ferry/pki/agent.hv1.pem

Each ``issue`` writes ``ROLE.NAME.pem`` and ``ROLE.NAME-key.pem`` (mode 0600). The identity
scheme (URI SAN ``ferry://ROLE/NAME``, CN ``ROLE.NAME``) is described in ``ferry/identity.py``;
any CA that writes such certificates works the same (README: "Using your own PKI").
Keys are ECDSA P-256; certificates carry both serverAuth and clientAuth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferry.identity import ROLES, Identity, Role, identity_of, valid_name

DEFAULT_DAYS = 365
CA_DAYS = 3650
_BACKDATE = dt.timedelta(minutes=5)  # clock skew between the issuer and the verifiers


@dataclass(frozen=True)
class Pem:
    """A certificate and its private key, PEM encoded."""

    cert: bytes
    key: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_ca(common_name: str = "Ferry CA", *, days: int = CA_DAYS, now: dt.datetime | None = None) -> Pem:
    """A self-signed CA certificate and key."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = (now or _now()) - _BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Pem,
    common_name: str,
    *,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
    organization: str = "Ferry",
) -> Pem:
    """A certificate for ``common_name`` signed by ``ca`` (serverAuth and clientAuth), with the
    given URI, DNS and IP subject alternative names. ``not_before`` (default: now minus 5 min)
    lets tests make expired certificates."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key is not an ECDSA key")
    key = _new_key()
    start = not_before or (_now() - _BACKDATE)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,  # libvirt (gnutls) refuses a server certificate without it
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_identity(
    ca: Pem,
    identity: Identity,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
) -> Pem:
    """A certificate for a Ferry identity (URI SAN ``ferry://ROLE/NAME``, CN ``ROLE.NAME``)."""
    return issue(ca, identity.common_name, uris=[identity.uri], dns=dns, ips=ips, days=days, not_before=not_before)


def uris_of(cert_pem: bytes) -> list[str]:
    """The URI subject alternative names of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def identity_in(cert_pem: bytes) -> Identity | None:
    """The Ferry identity a PEM certificate carries (None: none, or more than one)."""
    return identity_of(uris_of(cert_pem))


def ends_at(pem: bytes) -> dt.datetime:
    """When the PEM's certificate ends (of a bundle or a chain: the first of them to end, after
    which it no longer verifies); raises ValueError when it holds no certificate."""
    return min(c.not_valid_after_utc for c in x509.load_pem_x509_certificates(pem))


def shared_authority(bundle_a: bytes, bundle_b: bytes) -> bool:
    """Whether two PEM bundles of CA certificates hold the same authority (a certificate with the
    same public key in both: the same CA, or one re-issued with its key). Unreadable PEM: False.
    Two trust domains that share one would each admit the other's certificates."""
    try:
        keys_a = {_public_key_der(c) for c in x509.load_pem_x509_certificates(bundle_a)}
        keys_b = {_public_key_der(c) for c in x509.load_pem_x509_certificates(bundle_b)}
    except ValueError:
        return False
    return bool(keys_a & keys_b)


def shared_ca_files(a: Path, b: Path) -> bool:
    """``shared_authority`` of two CA files; False when either cannot be read."""
    try:
        return shared_authority(a.read_bytes(), b.read_bytes())
    except OSError:
        return False


def etcd_ca_warning(etcd_ca: Path, api_ca: Path | None) -> str:
    """A start-up warning when etcd is reached with the CA of Ferry's APIs ("" when not)."""
    if api_ca is None or not shared_ca_files(etcd_ca, api_ca):
        return ""
    return (
        f"etcd's CA ({etcd_ca}) is also the CA of Ferry's APIs: every operator's, reader's and agent's "
        "certificate is an etcd client too, and etcd's RBAC does not guard leases, compaction or alarms; "
        "give etcd a CA of its own (ca/cert/key in [etcd] or [registry], README 'Three trust domains')"
    )


def _public_key_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_pem(directory: Path, stem: str, pem: Pem) -> tuple[Path, Path]:
    """``STEM.pem`` and ``STEM-key.pem`` (0600) in ``directory``; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
    cert_path.write_bytes(pem.cert)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem.key)
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def read_pem(directory: Path, stem: str) -> Pem:
    return Pem((directory / f"{stem}.pem").read_bytes(), (directory / f"{stem}-key.pem").read_bytes())


# ---------------------------------------------------------------- ferry-certs


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry-certs", description="A small CA for Ferry's mutual TLS.")
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create ca.pem and ca-key.pem")
    init.add_argument("--dir", required=True, type=Path)
    init.add_argument("--name", default="Ferry CA", help="the CA's common name")
    init.add_argument("--days", type=int, default=CA_DAYS)
    iss = sub.add_parser("issue", help="issue ROLE.NAME.pem and ROLE.NAME-key.pem signed by the CA in --dir")
    iss.add_argument("--dir", required=True, type=Path)
    iss.add_argument("--role", required=True, choices=ROLES)
    iss.add_argument("--name", required=True, help="host name (agent), replica id (coordinator), person or program")
    iss.add_argument("--dns", action="append", default=[], help="a DNS name clients dial (repeatable)")
    iss.add_argument("--ip", action="append", default=[], help="an IP address clients dial (repeatable)")
    iss.add_argument("--days", type=int, default=DEFAULT_DAYS)
    show = sub.add_parser("show", help="print the identity a certificate carries")
    show.add_argument("cert", type=Path)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.command == "init":
        if (a.dir / "ca.pem").exists():
            print(f"ferry-certs: {a.dir / 'ca.pem'} exists; not overwritten", file=sys.stderr)
            return 2
        cert, key = write_pem(a.dir, "ca", new_ca(a.name, days=a.days))
        print(f"{cert}\n{key}  (keep it offline; only `ferry-certs issue` needs it)")
        return 0
    if a.command == "issue":
        if not valid_name(a.name):
            print(f"ferry-certs: bad name {a.name!r} (letters, digits, '.', '-', '_')", file=sys.stderr)
            return 2
        identity = Identity(Role(a.role), a.name)
        pem = issue_identity(read_pem(a.dir, "ca"), identity, dns=a.dns, ips=a.ip, days=a.days)
        cert, key = write_pem(a.dir, identity.common_name, pem)
        print(f"{identity.uri}: {cert} {key}")
        return 0
    found = identity_in(a.cert.read_bytes())
    print(found.uri if found else "no ferry:// identity")
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
