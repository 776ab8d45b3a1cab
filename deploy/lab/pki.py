"""The lab's certificates: three CAs per lab, one per trust domain, and a certificate per identity
(``ferry.certs``, no openssl CLI).

A CA is trusted for everything it signs: a certificate from the CA of Ferry's APIs that also passed
etcd's or QEMU's TLS would let a reader's certificate grant etcd leases, compact etcd, or read a
guest's disk from the NBD port of a migration under way (seen in a walkthrough). So each link trusts
only the CA of its own domain. ``ferry-lab up`` writes ``<lab>/pki`` before anything starts::

    ca.pem, ca-key.pem                 Ferry's APIs: the lab CA
    coordinator.cN.pem                 ferry://coordinator/cN  (10.77.0.1, localhost, cN), N = 1..3
    agent.hostN.pem                    ferry://agent/hostN     (10.77.0.(10+N), localhost, hostN)
    operator.lab.pem                   ferry://operator/lab    (the CLI config's certificate)
    scheduler.lab.pem, reader.lab.pem  for trying the roles (reader.lab also scrapes the metrics)
    etcd/ca.pem, etcd/ca-key.pem       etcd's CA: its clients are the coordinators and the agents only
    etcd/server.pem                    etcd's server certificate (10.77.0.1, localhost)
    etcd/root.pem                      etcd's admin (CN root: etcdctl of the lab tools; RBAC set-up)
    etcd/coordinator.cN.pem            CN coordinator.cN (etcd's user name), etcd/agent.hostN.pem likewise
    hypervisors/ca.pem, ca-key.pem     libvirtd's and QEMU's CA: the hosts' libvirt certificates only
    (each with its -key.pem, mode 0600)

and per host, for libvirtd and QEMU (``<lab>/hosts/hostN/etc/pki``, which is ``/etc/libvirt/pki``
inside the host), signed by the hypervisors' CA: libvirt's names (cacert.pem, servercert.pem,
serverkey.pem, clientcert.pem, clientkey.pem; ``?pkipath=`` in the peers' URIs) and QEMU's in
``qemu/`` (ca-cert.pem, server-cert.pem, ...: the migration stream's TLS). Subject
``O=Ferry,CN=libvirt.hostN``, which the other hosts' ``tls_allowed_dn_list`` names.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path

from ferry.certs import Pem, issue, issue_identity, new_ca, read_pem, write_pem
from ferry.identity import Identity, Role
from ferry.lab.controlplane import ETCD_SERVER_NAME
from ferry.lab.etcd import MemberTLS
from ferry.lab.topology import CORE_ADDRESS, HostPlan, LabPaths
from ferry.rpc import Tls

MAX_COORDINATORS = 3
LAB_USER = "lab"  # operator.lab, scheduler.lab, reader.lab
ETCD_ADMIN = "root"
LIBVIRT_PKI = "/etc/libvirt/pki"  # inside a host (its /etc/libvirt is <lab>/hosts/NAME/etc)
QEMU_PKI = LIBVIRT_PKI + "/qemu"


ETCD_DOMAIN = "etcd"  # <lab>/pki/etcd
HYPERVISOR_DOMAIN = "hypervisors"  # <lab>/pki/hypervisors


def pki_dir(paths: LabPaths) -> Path:
    return paths.root / "pki"


def etcd_pki_dir(paths: LabPaths) -> Path:
    """etcd's trust domain: its CA, its server certificate, and its clients' certificates."""
    return pki_dir(paths) / ETCD_DOMAIN


def libvirt_dn(host: str) -> str:
    """The subject of a host's libvirt certificate as libvirtd prints it (tls_allowed_dn_list;
    ``virt-pki-query-dn clientcert.pem``: in the certificate's order, not RFC 4514's).

    >>> libvirt_dn("host1")
    'O=Ferry,CN=libvirt.host1'
    """
    return f"O=Ferry,CN=libvirt.{host}"


def tls(paths: LabPaths, stem: str) -> Tls:
    """The lab CA and ``<stem>.pem`` / ``<stem>-key.pem`` (e.g. ``operator.lab``, ``coordinator.c1``)."""
    d = pki_dir(paths)
    return Tls(d / "ca.pem", d / f"{stem}.pem", d / f"{stem}-key.pem")


def identity_stem(role: Role, name: str) -> str:
    return Identity(role, name).common_name


def operator_tls(paths: LabPaths) -> Tls:
    return tls(paths, identity_stem(Role.OPERATOR, LAB_USER))


def tls_near(address: str) -> Tls | None:
    """The operator certificate of the lab a unix socket belongs to (``<lab>/hosts/NAME/agent.sock``,
    ``<lab>/coordinators/cN.sock``); None for another address or a lab without a pki dir."""
    if not address.startswith("unix:"):
        return None
    sock = Path(address.removeprefix("unix:").removeprefix("//"))
    for root in (sock.parent.parent, sock.parent.parent.parent):
        paths = LabPaths(root)
        if (pki_dir(paths) / "ca.pem").is_file():
            return operator_tls(paths)
    return None


def create(paths: LabPaths, hosts: Sequence[HostPlan]) -> None:
    """Fresh CAs and every certificate of a lab with ``hosts`` (and up to 3 coordinators)."""
    d = pki_dir(paths)
    tag = secrets.token_hex(4)
    ca = new_ca(f"Ferry lab CA {tag}", days=30)  # a CN holds at most 64 characters
    etcd_ca = new_ca(f"Ferry lab etcd CA {tag}", days=30)
    hypervisor_ca = new_ca(f"Ferry lab hypervisor CA {tag}", days=30)
    write_pem(d, "ca", ca)
    e = etcd_pki_dir(paths)
    write_pem(e, "ca", etcd_ca)
    write_pem(pki_dir(paths) / HYPERVISOR_DOMAIN, "ca", hypervisor_ca)
    server = issue(etcd_ca, "etcd", dns=["localhost", ETCD_SERVER_NAME], ips=[CORE_ADDRESS, "127.0.0.1"], days=30)
    write_pem(e, "server", server)
    write_pem(e, ETCD_ADMIN, issue(etcd_ca, ETCD_ADMIN, days=30))
    for i in range(1, MAX_COORDINATORS + 1):
        who = Identity(Role.COORDINATOR, f"c{i}")
        write_pem(d, who.common_name, issue_identity(ca, who, dns=["localhost", f"c{i}"], ips=[CORE_ADDRESS], days=30))
        write_pem(e, who.common_name, issue(etcd_ca, who.common_name, days=30))
    for role in (Role.OPERATOR, Role.SCHEDULER, Role.READER):
        who = Identity(role, LAB_USER)
        write_pem(d, who.common_name, issue_identity(ca, who, days=30))
    for plan in hosts:
        who = Identity(Role.AGENT, plan.name)
        write_pem(
            d, who.common_name, issue_identity(ca, who, dns=[plan.name, "localhost"], ips=[plan.address], days=30)
        )
        write_pem(e, who.common_name, issue(etcd_ca, who.common_name, days=30))
        write_libvirt_pki(paths, plan, hypervisor_ca)


def etcd_client_tls(paths: LabPaths, role: Role, name: str) -> Tls:
    """A coordinator's or an agent's certificate for etcd (etcd's CA; CN ``ROLE.NAME``, its user)."""
    e = etcd_pki_dir(paths)
    stem = identity_stem(role, name)
    return Tls(e / "ca.pem", e / f"{stem}.pem", e / f"{stem}-key.pem")


def write_libvirt_pki(paths: LabPaths, plan: HostPlan, ca: Pem) -> None:
    """libvirtd's and QEMU's certificate files for one host (server and client: the same one)."""
    pem = issue(ca, f"libvirt.{plan.name}", dns=[plan.name], ips=[plan.address], days=30)
    libvirt = paths.host(plan.name) / "etc" / "pki"
    qemu = libvirt / "qemu"
    for directory, ca_name, names in (
        (libvirt, "cacert.pem", ("servercert.pem", "serverkey.pem", "clientcert.pem", "clientkey.pem")),
        (qemu, "ca-cert.pem", ("server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem")),
    ):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ca_name).write_bytes(ca.cert)
        for name in names:
            target = directory / name
            target.write_bytes(pem.key if "key" in name else pem.cert)
            if "key" in name:
                target.chmod(0o600)


def etcd_admin(paths: LabPaths) -> Tls | None:
    """etcd's root user (the lab tools' etcdctl); None for a lab without certificates."""
    e = etcd_pki_dir(paths)
    found = Tls(e / "ca.pem", e / f"{ETCD_ADMIN}.pem", e / f"{ETCD_ADMIN}-key.pem")
    return found if found.cert.is_file() else None


def etcd_member_tls(paths: LabPaths) -> MemberTLS:
    """etcd's server files (etcd's own CA, which it trusts for clients), and the root certificate
    for its health probes."""
    e = etcd_pki_dir(paths)
    return MemberTLS(
        e / "ca.pem", e / "server.pem", e / "server-key.pem", e / f"{ETCD_ADMIN}.pem", e / f"{ETCD_ADMIN}-key.pem"
    )


def lab_ca(paths: LabPaths) -> Pem:
    return read_pem(pki_dir(paths), "ca")
