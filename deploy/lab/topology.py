"""The lab's shape, as pure data: addresses, names, paths and the config files each host gets.

Nothing here touches the system, so every rule (who gets which IP, bridge, UUID, which lines go
into libvirtd.conf) is testable from a table.

Worked example, lab dir /tmp/ferry-lab, 2 hosts::

    core      10.77.0.1/24 on br0 (in the core network namespace)
    host1     10.77.0.11 eth0, guest bridge br-guest, qemu+tls://10.77.0.11/system?pkipath=/etc/libvirt/pki
    host2     10.77.0.12 eth0, guest bridge br-vm,    qemu+tls://10.77.0.12/system?pkipath=/etc/libvirt/pki

libvirtd listens with TLS only (x509 certificates from the lab CA, ``deploy/lab/pki.py``; peers
must present a lab host's certificate), and QEMU's migration stream uses TLS with the same files.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry.lab.domain import parse_size

SUBNET_PREFIX = "10.77.0."
PREFIX_LEN = 24
CORE_ADDRESS = SUBNET_PREFIX + "1"
CORE_BRIDGE = "br0"
CORE_HOSTNAME = "core"
AGENT_PORT = 7070
AGENT_METRICS_PORT = 9470  # ferry.agent.config's default
MAX_HOSTS = 20
QEMU_USER_LINE = "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin"
QEMU_GROUP_LINE = "libvirt-qemu:x:64055:"
IMAGE_DIR = "/var/lib/libvirt/images"  # inside a host's mount namespace: host-local
# A host's own image filesystem (``--image-fs host2=512M``): at least this big, so that a
# guest's disk fits beside the qcow2 metadata
MIN_IMAGE_FS_BYTES = 16 << 20
AGENT_STATE_DIR = "/var/lib/ferry-agent"  # inside a host's mount namespace: host-local
# A unix socket path must fit in sun_path (108 bytes including the NUL).
MAX_SOCKET_PATH = 107
# Paths a host's mount namespace covers with its own mounts: a lab dir below them would be
# hidden inside the hosts.
HIDDEN_IN_HOSTS = ("/var", "/run", "/sys", "/etc/libvirt")

_UUID_NAMESPACE = uuid.UUID("9d7c4a52-6f0e-4d55-9a43-6c61622d6665")  # fixed: "lab-fe" suffix


def host_name(index: int) -> str:
    """``host1``, ``host2``, ... (1-based)."""
    return f"host{index}"


def host_index(name: str) -> int:
    """The inverse of host_name: ``host2`` -> 2; ValueError for anything else."""
    if not name.startswith("host") or not name[4:].isdigit() or int(name[4:]) < 1:
        raise ValueError(f"not a lab host name: {name!r}")
    return int(name[4:])


def veth_name(host: str) -> str:
    """The core-side end of a host's ``eth0`` (on br0 in the core namespace): ``vhost1``.
    Taking it down cuts the host off the lab network (a partition)."""
    return f"v{host}"


def host_address(index: int) -> str:
    """Host N lives at 10.77.0.(10+N): host1 = 10.77.0.11."""
    return f"{SUBNET_PREFIX}{10 + index}"


def guest_bridge(index: int) -> str:
    """Odd hosts call their guest bridge ``br-guest``, even ones ``br-vm``: migrating a guest
    with a NIC between neighbours needs its interface XML rewritten."""
    return "br-guest" if index % 2 == 1 else "br-vm"


def host_uuid(lab_dir: Path, name: str) -> str:
    """A distinct, stable libvirt host_uuid per lab and host (libvirt refuses to migrate to a
    host whose UUID equals its own, and the SMBIOS default is the same for every lab host)."""
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{lab_dir}/{name}"))


@dataclass(frozen=True)
class LabPaths:
    """Where everything of one lab lives (all below ``root``)."""

    root: Path

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lab.lock"

    @property
    def core(self) -> Path:
        return self.root / "core"

    @property
    def hosts(self) -> Path:
        return self.root / "hosts"

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def guest(self) -> Path:
        return self.root / "guest"

    @property
    def cache(self) -> Path:
        """Kept across up/down: libvirt's QEMU capabilities (probing them takes ~8 s)."""
        return self.root / "cache"

    def host(self, name: str) -> Path:
        return self.hosts / name

    def libvirt_socket(self, name: str) -> Path:
        """The host's libvirtd socket as seen from the root mount namespace."""
        return self.host(name) / "run" / "libvirt-sock"

    def agent_socket(self, name: str) -> Path:
        return self.host(name) / "agent.sock"

    def metrics_socket(self, name: str) -> Path:
        """The agent's metrics endpoint, reachable from the root namespace (``curl --unix-socket``)."""
        return self.host(name) / "metrics.sock"

    def console_log(self, guest: str) -> Path:
        return self.shared / f"{guest}.console.log"


@dataclass(frozen=True)
class HostPlan:
    """Everything decided about one host before it is started."""

    name: str
    index: int
    address: str
    host_uuid: str
    guest_bridge: str
    veth: str  # the core-side end of the host's eth0
    libvirt_uri: str  # from the root namespace, over the unix socket
    tcp_uri: str  # from other hosts (migration peers): qemu+tls:// (the name predates TLS)
    agent_listen: str  # inside the host's network namespace
    agent_address: str  # from the root namespace
    metrics_listen: str = ""  # the agent's metrics, inside the host's network namespace
    metrics_address: str = ""  # the same, from the root namespace (unix:...)
    image_fs_bytes: int = 0  # its own image filesystem of this size (tmpfs); 0: part of /var


def plan_hosts(paths: LabPaths, count: int, image_fs: Mapping[str, int] | None = None) -> tuple[HostPlan, ...]:
    """The plan for hosts 1..count; ``image_fs`` gives hosts a small image filesystem of their
    own (host name -> bytes), e.g. for a target whose disk fills up mid-copy."""
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"a lab has 1 to {MAX_HOSTS} hosts, not {count}")
    image_fs = dict(image_fs or {})
    unknown = sorted(set(image_fs) - {host_name(i) for i in range(1, count + 1)})
    if unknown:
        raise ValueError(f"an image filesystem for {', '.join(unknown)}, which this lab of {count} hosts has not")
    for name, size in image_fs.items():
        if size < MIN_IMAGE_FS_BYTES:
            raise ValueError(f"the image filesystem of {name} must be at least {MIN_IMAGE_FS_BYTES >> 20} MiB")
    plans = []
    for index in range(1, count + 1):
        name = host_name(index)
        address = host_address(index)
        plans.append(
            HostPlan(
                name=name,
                index=index,
                address=address,
                host_uuid=host_uuid(paths.root, name),
                guest_bridge=guest_bridge(index),
                veth=veth_name(name),
                libvirt_uri=f"qemu:///system?socket={paths.libvirt_socket(name)}",
                tcp_uri=peer_uri(address),
                agent_listen=f"{address}:{AGENT_PORT}",
                agent_address=f"unix:{paths.agent_socket(name)}",
                metrics_listen=f"{address}:{AGENT_METRICS_PORT}",
                metrics_address=f"unix:{paths.metrics_socket(name)}",
                image_fs_bytes=image_fs.get(name, 0),
            )
        )
    return tuple(plans)


def parse_image_fs(text: str) -> tuple[str, int]:
    """``ferry-lab up --image-fs HOST=SIZE``: (host, bytes).

    >>> parse_image_fs("host2=512M")
    ('host2', 536870912)
    """
    name, sep, size = text.partition("=")
    if not sep:
        raise ValueError(f"--image-fs {text!r}: give HOST=SIZE, e.g. host2=512M")
    host_index(name.strip())  # a lab host's name
    return name.strip(), parse_size(size)


def image_fs_mount(size_bytes: int) -> list[str]:
    """The mount that gives a host its own image filesystem of ``size_bytes``: a size-limited
    tmpfs over the image directory (it supports O_DIRECT, which the guests' cache='none' needs,
    on Linux 6.6 and later), gone with the host's mount namespace.

    >>> image_fs_mount(256 << 20)
    ['mount', '-t', 'tmpfs', '-o', 'size=268435456,mode=0755', 'tmpfs', '/var/lib/libvirt/images']
    """
    return ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", IMAGE_DIR]


LIBVIRT_PKI = "/etc/libvirt/pki"  # inside a host: <lab>/hosts/NAME/etc/pki (deploy/lab/pki.py writes it)


def peer_uri(address: str) -> str:
    """How other lab hosts reach a host's libvirtd: TLS, with the lab's client certificate.

    >>> peer_uri("10.77.0.12")
    'qemu+tls://10.77.0.12/system?pkipath=/etc/libvirt/pki'
    """
    return f"qemu+tls://{address}/system?pkipath={LIBVIRT_PKI}"


def lab_dir_problem(lab_dir: Path, host_names: tuple[str, ...] = ("host1",)) -> str:
    """Why ``lab_dir`` cannot hold a lab ("" when it can): it must be absolute, not hidden by a
    host's own mounts, and short enough for its unix socket paths."""
    if not lab_dir.is_absolute():
        return f"lab dir {lab_dir} is not an absolute path"
    for hidden in HIDDEN_IN_HOSTS:
        if lab_dir == Path(hidden) or Path(hidden) in lab_dir.parents:
            return f"lab dir {lab_dir} is below {hidden}, which every lab host mounts over"
    paths = LabPaths(lab_dir)
    for name in host_names:
        for sock in (paths.libvirt_socket(name), paths.agent_socket(name), paths.metrics_socket(name)):
            if len(str(sock)) > MAX_SOCKET_PATH:
                return f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes"
    return ""


# ---------------------------------------------------------------- config files


def render_etc_hosts(plans: tuple[HostPlan, ...]) -> str:
    """/etc/hosts shared by every lab host: loopback, the core and all hosts."""
    lines = ["127.0.0.1\tlocalhost", f"{CORE_ADDRESS}\t{CORE_HOSTNAME}"]
    lines += [f"{p.address}\t{p.name}" for p in plans]
    return "\n".join(lines) + "\n"


def with_qemu_user(passwd: str, group: str) -> tuple[str, str]:
    """The machine's /etc/passwd and /etc/group plus a ``libvirt-qemu`` user and group.

    libvirtd resolves its compiled-in QEMU user before it reads qemu.conf, and fails to start
    when the user does not exist (Debian creates it only in libvirt-daemon-system).
    """

    def add(text: str, line: str) -> str:
        if any(row.split(":", 1)[0] == "libvirt-qemu" for row in text.splitlines()):
            return text
        return text + ("" if text.endswith("\n") or not text else "\n") + line + "\n"

    return add(passwd, QEMU_USER_LINE), add(group, QEMU_GROUP_LINE)


def render_libvirtd_conf(plan: HostPlan) -> str:
    """libvirtd listens with TLS only (no plain TCP listener at all): certificates from the lab's
    own CA, and only the lab hosts' libvirt certificates (``O=Ferry,CN=libvirt.hostN``) may
    connect. The unix sockets (the local agent, virsh from the root namespace) need no authentication,
    so they are root's alone (mode 0700, as libvirt's own default for the read-write socket; the lab's
    run directory is below /tmp, where a world-writable socket made any local user root)."""
    # No auth_tcp line at all: there is no TCP listener. (The seed's auth_tcp = "none" recipe gave
    # anyone on the network the hypervisor; it is what Ferry exists to end.)
    allowed = '"O=Ferry,CN=libvirt.*"'  # gnutls prints the subject in certificate order
    return "\n".join(
        [
            "# written by ferry-lab: TLS only (x509 from the lab CA); no plain TCP listener",
            "listen_tls = 1",
            "listen_tcp = 0",
            f'listen_addr = "{plan.address}"',
            f'ca_file = "{LIBVIRT_PKI}/cacert.pem"',
            f'cert_file = "{LIBVIRT_PKI}/servercert.pem"',
            f'key_file = "{LIBVIRT_PKI}/serverkey.pem"',
            "tls_no_verify_certificate = 0",
            f"tls_allowed_dn_list = [{allowed}]",
            'auth_tls = "none"  # the client certificate (checked against tls_allowed_dn_list) is the authentication',
            'auth_unix_ro = "none"',
            'auth_unix_rw = "none"',
            'unix_sock_group = "root"',
            'unix_sock_rw_perms = "0700"',
            'unix_sock_ro_perms = "0700"',
            'unix_sock_admin_perms = "0700"',
            f'host_uuid = "{plan.host_uuid}"',
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
            "",
        ]
    )


def render_qemu_conf(plan: HostPlan) -> str:
    """QEMU runs as root without confinement (the lab host is a namespace, not a machine);
    the migration stream goes over the host's lab address."""
    return "\n".join(
        [
            "# written by ferry-lab",
            'user = "root"',
            'group = "root"',
            "dynamic_ownership = 0",
            "remember_owner = 0",
            'security_driver = "none"',
            "cgroup_controllers = [ ]",
            "namespaces = [ ]",
            'stdio_handler = "file"',
            f'migration_address = "{plan.address}"',
            f'migration_host = "{plan.address}"',
            # the migration stream (memory and the NBD disk copy) over TLS, verified both ways
            f'default_tls_x509_cert_dir = "{LIBVIRT_PKI}/qemu"',
            "default_tls_x509_verify = 1",
            f'migrate_tls_x509_cert_dir = "{LIBVIRT_PKI}/qemu"',
            "migrate_tls_x509_verify = 1",
            "migrate_tls_force = 1  # a migration without VIR_MIGRATE_TLS is refused",
            "",
        ]
    )


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_agent_toml(paths: LabPaths, plan: HostPlan, peers: Sequence[HostPlan] = ()) -> str:
    """The agent's config in the agreed format (read with tomllib by ferry.agent). ``peers``:
    the lab's other hosts, listed as ``migration_targets`` (a lab without a control plane has no
    registry to say where a Migrate may go)."""
    listen = ", ".join(_toml_str(a) for a in (plan.agent_listen, plan.agent_address))
    targets = ", ".join(_toml_str(p.tcp_uri) for p in peers if p.name != plan.name)
    return "\n".join(
        [
            "# written by ferry-lab for the agent of this lab host (runs inside its namespaces)",
            "[agent]",
            f"name = {_toml_str(plan.name)}",
            f"listen = [{listen}]",
            'libvirt_uri = "qemu:///system"                       # inside the host\'s mount ns',
            f"advertise_libvirt_uri = {_toml_str(plan.tcp_uri)}",
            f"migration_address = {_toml_str(plan.address)}",
            f"image_dirs = [{_toml_str(IMAGE_DIR)}]",
            f"shared_dirs = [{_toml_str(str(paths.shared))}]",
            *([f"migration_targets = [{targets}]"] if targets else []),
            f"state_dir = {_toml_str(AGENT_STATE_DIR)}                   # host-local (overlay /var)",
            "prepare_ttl_s = 600",
            "libvirt_timeout_s = 30",
            f"migration_tls_dir = {_toml_str(LIBVIRT_PKI + '/qemu')}  # QEMU's migration certificates here",
            "",
            "[tls]  # mutual TLS for the agent's API: ferry://agent/NAME (deploy/lab/pki.py)",
            f"ca = {_toml_str(str(paths.root / 'pki' / 'ca.pem'))}",
            f"cert = {_toml_str(str(paths.root / 'pki' / f'agent.{plan.name}.pem'))}",
            f"key = {_toml_str(str(paths.root / 'pki' / f'agent.{plan.name}-key.pem'))}",
            "",
            "[metrics]                                            # GET /metrics; the socket for the root namespace",
            f"listen = [{_toml_str(plan.metrics_listen)}, {_toml_str(plan.metrics_address)}]",
            "",
        ]
    )
