"""Who may reach a hypervisor's Ferry, libvirtd and QEMU ports: an nftables ruleset.

``render`` writes it for a set of addresses; ``deploy/nftables/ferry-hypervisor.nft`` is its output
with documentation addresses (regenerate with ``python -m ferry.lab.firewall >
deploy/nftables/ferry-hypervisor.nft``; a unit test holds the two together), for operators to fill
in. ``ferry-lab up --firewall`` loads it into every lab host with the lab's addresses.

QEMU's incoming migration port takes one connection, and any connection ends the migration under
way, with a certificate or without; TLS cannot keep that from happening, only who can connect.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

TABLE = "ferry_hypervisor"
LIBVIRTD_TLS_PORT = 16514
QEMU_PORTS = "49152-49215"  # qemu.conf migration_port_min/max: the migration stream and the NBD copy
AGENT_PORT = 7070
AGENT_METRICS_PORT = 9470


@dataclass(frozen=True)
class Allowed:
    """Addresses or networks (IPv4 and IPv6 mixed) allowed to reach each kind of port."""

    hypervisors: Sequence[str]  # libvirtd TLS and QEMU's ports: the other hypervisors and this one
    controllers: Sequence[str]  # the agent's API: the coordinators (and tools that call agents)
    scrapers: Sequence[str]  # the agent's metrics: Prometheus


EXAMPLE = Allowed(
    hypervisors=("192.0.2.0/24", "2001:db8:1::/64"),
    controllers=("198.51.100.10/31", "2001:db8:2::/64"),
    scrapers=("198.51.100.20", "2001:db8:3::/64"),
)

_HEAD = """\
#!/usr/sbin/nft -f
# Ferry on a hypervisor: who may reach the ports Ferry, libvirtd and QEMU listen on.
# Written by `python -m ferry.lab.firewall` (deploy/lab/firewall.py): edit the sets' elements.
#
# Install: fill the sets below with your addresses, copy to /etc/nftables.d/ (or include it from
# /etc/nftables.conf) and load it: `nft -f ferry-hypervisor.nft`. It guards these ports only (its
# chain accepts everything else: your host firewall keeps its own rules) and replaces its own
# table when loaded again.
#
#   16514        libvirtd over TLS        other hypervisors (peer-to-peer migration, the agents' probes)
#   49152-49215  QEMU's incoming          other hypervisors: the migration stream and the NBD disk copy.
#                migration and NBD        QEMU takes ONE connection on such a port and any connection,
#                                         with a certificate or without, ends the migration under way
#   7070         ferry-agent's API        the coordinators (and operators' tools, if they call agents)
#   9470         ferry-agent's metrics    the Prometheus servers
#
# The hypervisors' set includes this host itself: its agent opens its own advertised libvirt URI to
# check that it is its own libvirtd. Ports are the defaults (libvirtd.conf tls_port, qemu.conf
# migration_port_min/max, the agent's listen and [metrics] listen): change them here with those.
"""


def _family(networks: Sequence[str], version: int) -> list[str]:
    return [n for n in networks if ipaddress.ip_network(n, strict=False).version == version]


def _set(name: str, kind: str, elements: Sequence[str]) -> str:
    # an empty set has no elements line: nothing of that family is let in
    listed = f"\t\telements = {{ {', '.join(elements)} }}\n" if elements else ""
    return f"\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval\n{listed}\t}}\n"


def render(allowed: Allowed) -> str:
    """The ruleset (``nft -f``) that lets only ``allowed`` reach each port.

    >>> text = render(Allowed(hypervisors=("10.77.0.11", "10.77.0.12"), controllers=("10.77.0.1",), scrapers=()))
    >>> "elements = { 10.77.0.11, 10.77.0.12 }" in text, "tcp dport 9470 ip saddr != @scrapers drop" in text
    (True, True)
    """
    sets = ""
    rules = ""
    for name, networks, ports in (
        ("hypervisors", allowed.hypervisors, f"{{ {LIBVIRTD_TLS_PORT}, {QEMU_PORTS} }}"),
        ("controllers", allowed.controllers, str(AGENT_PORT)),
        ("scrapers", allowed.scrapers, str(AGENT_METRICS_PORT)),
    ):
        sets += _set(name, "ipv4_addr", _family(networks, 4))
        sets += _set(f"{name}6", "ipv6_addr", _family(networks, 6))
        rules += f"\t\ttcp dport {ports} ip saddr != @{name} drop\n"
        rules += f"\t\ttcp dport {ports} ip6 saddr != @{name}6 drop\n"
    return (
        f"{_HEAD}\n"
        f"table inet {TABLE}\ndelete table inet {TABLE}\n\n"
        f"table inet {TABLE} {{\n{sets}\n"
        f"\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n{rules}\t}}\n}}\n"
    )


if __name__ == "__main__":
    print(render(EXAMPLE), end="")
