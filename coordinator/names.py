"""Which known host or VM an unknown name most likely meant (pure): the "did you mean" of the
HOST_UNKNOWN, TARGET_UNKNOWN and VM_UNKNOWN hints.

Operators come from virsh and DNS: they give a libvirt URI (``qemu+tls://hv2.dc1/system``), a
fully qualified name, an address, or the name in other case, where Ferry knows a host only by
the name its agent registered. A host matches when the given name, taken apart that way, is its
name or one of the addresses it registered (agent, libvirt URI, migration address), or the first
label of either; failing that, a name a typo away (``difflib``). Only a single answer is offered.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from ferry.registry import HostRegistration

CLOSE = 0.75  # difflib's ratio for "a typo away"


def _host_part(text: str) -> str:
    """The host in a URI or ``host:port`` (lower case, no brackets or user).

    >>> _host_part("qemu+tls://root@HV2.dc1.example:16514/system"), _host_part("10.0.0.5:7070")
    ('hv2.dc1.example', '10.0.0.5')
    >>> _host_part("[fd00::5]:7070"), _host_part("hv2")
    ('fd00::5', 'hv2')
    >>> _host_part("qemu+tls://[fd00::12/system")  # not a URI after all: no host to compare
    ''
    """
    text = text.strip()
    if "://" in text:
        try:
            return (urlsplit(text).hostname or "").lower()
        except ValueError:  # an unclosed '[' and the like
            return ""
    if text.startswith("["):
        return text[1:].split("]", 1)[0].lower()
    if text.count(":") == 1:
        text = text.split(":", 1)[0]
    return text.lower()


def _forms(text: str) -> set[str]:
    """The host part and, unless it is an address, its first label.

    >>> sorted(_forms("qemu+ssh://hv2.dc1.example/system")), sorted(_forms("10.0.0.5"))
    (['hv2', 'hv2.dc1.example'], ['10.0.0.5'])
    """
    host = _host_part(text)
    if not host:
        return set()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return {host, host.split(".", 1)[0]}
    return {host}


def host_meant(given: str, hosts: Mapping[str, HostRegistration | None]) -> str | None:
    """The one known host ``given`` most likely means, or None.

    >>> regs = {
    ...     "hv1": HostRegistration("hv1", "10.0.0.11:7070", "qemu+tls://hv1.dc1.example/system"),
    ...     "hv2": HostRegistration("hv2", "10.0.0.12:7070", "qemu+tls://hv2.dc1.example/system"),
    ...     "old": None,
    ... }
    >>> [host_meant(g, regs) for g in ("HV2", "hv2.dc1.example", "qemu+tls://hv2.dc1.example/system")]
    ['hv2', 'hv2', 'hv2']
    >>> [host_meant(g, regs) for g in ("10.0.0.11", "hv3", "hvv2", "ld", "nothing-like-it")]
    ['hv1', None, 'hv2', 'old', None]
    """
    wanted = _forms(given)
    if not wanted:
        return None
    hits = []
    for name, reg in hosts.items():
        known = _forms(name)
        if reg is not None:
            for address in (reg.address, reg.libvirt_uri, reg.migration_address):
                if address:
                    known |= _forms(address)
        if wanted & known:
            hits.append(name)
    if len(hits) == 1:
        return hits[0]
    if hits:
        return None
    return _close(given, hosts)


def vm_meant(given: str, names: Iterable[str]) -> str | None:
    """The one known VM ``given`` most likely means (other case, a typo), or None.

    >>> vm_meant("DB1", ["db1", "web1"]), vm_meant("wbe1", ["db1", "web1"]), vm_meant("x", ["db1"])
    ('db1', 'web1', None)
    """
    names = list(names)
    same = [n for n in names if n.lower() == given.lower()]
    if len(same) == 1:
        return same[0]
    return _close(given, names) if not same else None


def _close(given: str, names: Iterable[str]) -> str | None:
    lowered: dict[str, list[str]] = {}
    for n in names:
        lowered.setdefault(n.lower(), []).append(n)
    match = difflib.get_close_matches(given.lower(), list(lowered), n=2, cutoff=CLOSE)
    if len(match) == 1 or (len(match) == 2 and _clearly_first(given.lower(), match)):
        found = lowered[match[0]]
        return found[0] if len(found) == 1 else None
    return None


def _clearly_first(given: str, match: list[str]) -> bool:
    ratio = [difflib.SequenceMatcher(None, given, m).ratio() for m in match]
    return ratio[0] - ratio[1] > 0.1


def host_hint(given: str, hosts: Mapping[str, HostRegistration | None], fallback: str) -> str:
    """``fallback``, led by the host ``given`` most likely means.

    >>> host_hint("HV1", {"hv1": None}, "check the name with `ferry hosts`")
    "did you mean 'hv1'? Ferry knows a host by the name its agent registered; check the name with `ferry hosts`"
    """
    meant = host_meant(given, hosts)
    if meant is None or meant == given:
        return fallback
    return f"did you mean {meant!r}? Ferry knows a host by the name its agent registered; {fallback}"


def vm_hint(given: str, names: Iterable[str], fallback: str) -> str:
    """``fallback``, led by the VM ``given`` most likely means.

    >>> vm_hint("DB1", ["db1"], "check the name with `ferry vms`")
    "did you mean 'db1'? check the name with `ferry vms`"
    """
    meant = vm_meant(given, names)
    if meant is None or meant == given:
        return fallback
    return f"did you mean {meant!r}? {fallback}"
