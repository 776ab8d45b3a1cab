"""Real etcd processes for integration tests: a fresh cluster per test, stopped by PID afterwards."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.lab.etcd import EtcdCluster, MemberTLS


@pytest.fixture
def etcd_one(etcd_bin: Path, tmp_path: Path) -> Iterator[EtcdCluster]:
    """One member (outage tests pause or kill it, so it is not shared)."""
    cluster = EtcdCluster.plan(tmp_path / "etcd", 1, binary=etcd_bin)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_three(etcd_bin: Path, tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three members on loopback ports."""
    cluster = EtcdCluster.plan(tmp_path / "etcd", 3, binary=etcd_bin)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def make_test_pki(directory: Path) -> MemberTLS:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=ferry-test-ca")
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        (directory / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=ferry-{name}")
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
        )
    return MemberTLS(
        ca_file=directory / "ca.crt",
        cert_file=directory / "server.crt",
        key_file=directory / "server.key",
        client_cert_file=directory / "client.crt",
        client_key_file=directory / "client.key",
    )


@pytest.fixture
def etcd_tls(etcd_bin: Path, tmp_path: Path) -> Iterator[EtcdCluster]:
    """One member serving clients over TLS and requiring client certificates."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    cluster = EtcdCluster.plan(tmp_path / "etcd", 1, binary=etcd_bin, tls=make_test_pki(tmp_path / "pki"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
