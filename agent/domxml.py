"""libvirt domain XML: read what Ferry needs, rewrite host-specific names for a target (pure).

Reading gives the facts the agent reports (name, UUID, memory, vCPUs, CPU mode, disks, NICs).
Writing (``rewrite_for_target``) produces the destination XML a migration hands to the target
libvirtd: only host-specific things change, everything else (name, UUID, devices, metadata) is
kept as it was.

What the rewrite touches, and nothing else:

* ``<disk>`` with a plan for its target device: ``<source file>`` becomes the plan's destination;
  with a plan ``backing_file`` the nearest ``<backingStore>`` source becomes that file.
* every other file path a guest definition may name on the host -- disk sources and their
  ``<backingStore>`` chains without a plan, ``<os>`` kernel/initrd/dtb/loader/nvram, ``<filesystem>``
  source dirs, file-backed serial/console/parallel/channel sources and their ``<log file>`` --
  goes through the path-prefix mapping. A path no prefix matches stays untouched, so a serial
  log on shared storage or the host's own kernel keeps its path unless the operator maps it.
* ``<interface type='bridge'>`` source bridge and ``<interface type='network'>`` source
  network through the bridge and network mappings. A NIC's ``<virtualport>`` is kept: a NIC on
  an Open vSwitch bridge needs one on the target too, a NIC on a Linux bridge a Linux bridge
  (``target_checks``, BRIDGE_TYPE_MISMATCH).

A mapping that matches nothing changes nothing.

Parsing is bounded (``parse_xml``): a definition larger than ``MAX_XML_BYTES``, nested deeper
than ``MAX_XML_DEPTH``, or with a DOCTYPE or entity declaration (libvirt never writes one; they
are how entity-expansion and external-entity attacks start) is refused as INVALID_XML before
ElementTree sees it.
"""

from __future__ import annotations

import functools
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from xml.parsers import expat

from ferry.diskplan import map_path
from ferry.errors import InvalidArgument, clip
from ferry.model import Disk, DiskPlan, HostMapping, Nic
from ferry.validate import MAX_NAME, MAX_XML_BYTES

# a domain definition nests about 6 deep; a <backingStore> chain adds one level per image
MAX_XML_DEPTH = 256

# libvirt's memory units (docs: formatdomain "Memory Allocation"); bare number = KiB.
_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
}

# ElementTree's own automatic prefixes; registering one of these raises.
_RESERVED_PREFIX = re.compile(r"ns\d+$")

_CHAR_DEVICES = ("serial", "console", "parallel", "channel")


@dataclass(frozen=True)
class ParsedDomain:
    name: str
    uuid: str
    domain_type: str  # "kvm", "qemu", ...
    memory_bytes: int
    vcpus: int
    cpu_mode: str = ""  # "host-model", "host-passthrough", "custom", "" = no <cpu>
    cpu_model: str = ""
    emulator: str = ""  # <devices><emulator>, "" = libvirt's default
    machine: str = ""  # <os><type machine>, e.g. "pc-q35-8.2" (libvirt stores the canonical name)


class _Refused(Exception):
    """Raised from inside the bounds check's expat handlers."""


def _refuse(what: str) -> InvalidArgument:
    return InvalidArgument(
        f"domain XML refused: {what}",
        reason="INVALID_XML",
        hint="pass the XML exactly as `virsh dumpxml --migratable` prints it (no DOCTYPE, no entities)",
    )


# a domain's XML is checked again and again (inventory, GetDomain, both prepares of a migration):
# passing ones up to this many characters are remembered, at most 64 of them (a domain's is ~5 KB)
_REMEMBERED_MAX = 64 << 10


def _check_bounds(xml: str) -> None:
    """Size, depth, no DOCTYPE, no entity declarations (a refusal is never remembered)."""
    if len(xml) <= _REMEMBERED_MAX:
        _check_bounds_remembered(xml)
    else:
        _check_bounds_now(xml)


@functools.lru_cache(maxsize=64)
def _check_bounds_remembered(xml: str) -> None:
    _check_bounds_now(xml)


def _check_bounds_now(xml: str) -> None:
    """Size, depth, no DOCTYPE, no entity declarations: one streaming pass, nothing built."""
    try:
        data = xml.encode("utf-8")
    except UnicodeError as exc:
        raise _refuse("it is not valid Unicode") from exc
    if len(data) > MAX_XML_BYTES:
        raise _refuse(f"{len(data)} bytes, at most {MAX_XML_BYTES}")
    parser = expat.ParserCreate()
    depth = 0

    def start(name: str, attrs: object) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_XML_DEPTH:
            raise _Refused(f"elements nested deeper than {MAX_XML_DEPTH}")

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1

    def doctype(*_: object) -> None:
        raise _Refused("it has a DOCTYPE declaration")

    def entity(*_: object) -> None:
        raise _Refused("it declares an entity")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise _refuse(str(exc)) from None
    except expat.ExpatError as exc:
        raise InvalidArgument(
            f"domain XML does not parse: {clip(exc)}",
            reason="INVALID_XML",
            hint="pass the XML exactly as `virsh dumpxml --migratable` prints it",
        ) from None


def parse_xml(xml: str) -> ET.Element:
    """The document's root element, parsed within bounds (see the module docstring).

    >>> try:
    ...     parse_xml("<!DOCTYPE d [<!ENTITY a 'x'>]><domain>&a;</domain>")
    ... except InvalidArgument as err:
    ...     print(err.reason, err.message)
    INVALID_XML domain XML refused: it has a DOCTYPE declaration
    >>> parse_xml("<domain><name>g1</name></domain>").findtext("name")
    'g1'
    """
    _check_bounds(xml)
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:  # the bounds check parsed it already: not expected
        raise InvalidArgument(
            f"domain XML does not parse: {clip(exc)}",
            reason="INVALID_XML",
            hint="pass the XML exactly as `virsh dumpxml --migratable` prints it",
        ) from exc


def _root(xml: str) -> ET.Element:
    root = parse_xml(xml)
    if root.tag != "domain":
        raise InvalidArgument(
            f"domain XML has root element <{clip(root.tag, 64)}>, not <domain>",
            reason="INVALID_XML",
            hint="pass a libvirt domain definition (`virsh dumpxml --migratable NAME`)",
        )
    return root


def _memory_bytes(el: ET.Element | None) -> int:
    if el is None or not (el.text or "").strip():
        return 0
    unit = el.get("unit", "KiB").lower()
    if unit not in _UNITS:
        raise InvalidArgument(
            f"unknown memory unit {clip(repr(el.get('unit')))}",
            reason="INVALID_XML",
            hint="use a libvirt memory unit such as KiB, MiB or GiB",
        )
    try:
        return int(el.text.strip()) * _UNITS[unit]  # type: ignore[union-attr]
    except ValueError as exc:
        raise InvalidArgument(
            f"memory {clip(repr(el.text))} is not a number", reason="INVALID_XML", hint="fix the <memory> element"
        ) from exc


def parse_domain(xml: str) -> ParsedDomain:
    """Name, UUID, type, memory, vCPUs, CPU, emulator and machine type of a domain definition.

    >>> parse_domain("<domain type='qemu'><name>g1</name><uuid>u</uuid>"
    ...              "<memory unit='MiB'>256</memory><vcpu current='1'>2</vcpu></domain>").memory_bytes
    268435456
    """
    root = _root(xml)
    vcpu = root.find("vcpu")
    vcpus = 0
    if vcpu is not None:
        text = vcpu.get("current") or (vcpu.text or "").strip() or "0"
        try:
            vcpus = int(text)
        except ValueError as exc:
            raise InvalidArgument(
                f"vcpu {clip(repr(text))} is not a number", reason="INVALID_XML", hint="fix the <vcpu> element"
            ) from exc
    cpu = root.find("cpu")
    cpu_mode = cpu_model = ""
    if cpu is not None:
        model = cpu.find("model")
        cpu_model = (model.text or "").strip() if model is not None else ""
        cpu_mode = cpu.get("mode") or "custom"
    name, uuid = (root.findtext("name") or "").strip(), (root.findtext("uuid") or "").strip()
    for what, value, limit in (("name", name, MAX_NAME), ("uuid", uuid, 64)):
        if len(value) > limit or any(ord(c) < 0x20 for c in value):
            raise InvalidArgument(
                f"domain {what} {clip(repr(value))} is not a libvirt domain {what}",
                reason="INVALID_XML",
                hint=f"a domain {what} has at most {limit} printable characters",
            )
    os_type = root.find("os/type")
    return ParsedDomain(
        name=name,
        uuid=uuid,
        domain_type=root.get("type", ""),
        memory_bytes=_memory_bytes(root.find("memory")),
        vcpus=vcpus,
        cpu_mode=cpu_mode,
        cpu_model=cpu_model,
        emulator=(root.findtext("devices/emulator") or "").strip(),
        machine=(os_type.get("machine") or "").strip() if os_type is not None else "",
    )


def _backing_chain(disk: ET.Element) -> list[ET.Element]:
    """The <backingStore> elements that name a file, nearest first."""
    chain = []
    store = disk.find("backingStore")
    while store is not None:
        source = store.find("source")
        if source is not None and source.get("file"):
            chain.append(store)
        store = store.find("backingStore")
    return chain


def parse_disks(xml: str) -> list[Disk]:
    """Every ``<disk>``: target dev, file source ("" for non-file disks), format, cache, flags,
    and the backing chain from ``<backingStore>`` (nearest first). Sizes are left 0: the
    hypervisor adapter fills them from the host."""
    disks = []
    for el in _root(xml).iterfind("devices/disk"):
        target = el.find("target")
        driver = el.find("driver")
        source = el.find("source")
        disks.append(
            Disk(
                target=target.get("dev", "") if target is not None else "",
                source=source.get("file", "") if source is not None and el.get("type", "file") == "file" else "",
                block_device=source.get("dev", "") if source is not None and el.get("type") == "block" else "",
                format=driver.get("type", "") if driver is not None else "",
                cache=driver.get("cache", "") if driver is not None else "",
                readonly=el.find("readonly") is not None,
                device=el.get("device", "disk"),
                bus=target.get("bus", "") if target is not None else "",
                backing_chain=tuple(
                    s.find("source").get("file", "")  # type: ignore[union-attr]
                    for s in _backing_chain(el)
                ),
            )
        )
    return disks


def backing_formats(xml: str) -> dict[str, str]:
    """Format of each disk's nearest backing file, by target dev (only disks that say one)."""
    out = {}
    for el in _root(xml).iterfind("devices/disk"):
        target, chain = el.find("target"), _backing_chain(el)
        fmt = chain[0].find("format") if chain else None
        if target is not None and fmt is not None and fmt.get("type"):
            out[target.get("dev", "")] = fmt.get("type", "")
    return out


def parse_nics(xml: str) -> list[Nic]:
    """Every ``<interface>``: type, bridge/network/device it attaches to, MAC, model, and the type
    of its ``<virtualport>`` ("none" when it names none, as libvirt calls that; "" without one)."""
    nics = []
    for el in _root(xml).iterfind("devices/interface"):
        kind = el.get("type", "")
        source = el.find("source")
        attached = ""
        if source is not None:
            attached = source.get({"bridge": "bridge", "network": "network"}.get(kind, "dev"), "")
        mac, model, port = el.find("mac"), el.find("model"), el.find("virtualport")
        nics.append(
            Nic(
                type=kind,
                source=attached,
                mac=mac.get("address", "") if mac is not None else "",
                model=model.get("type", "") if model is not None else "",
                virtualport=(port.get("type", "") or "none") if port is not None else "",
            )
        )
    return nics


# ------------------------------------------------------------------------------ rewrite


def _register_namespaces(xml: str) -> None:
    """Keep the document's namespace prefixes (e.g. in <metadata>) on output.

    ElementTree only knows prefixes through its global registry; registering the ones the
    document declares keeps the XML as the source wrote it instead of ns0/ns1.
    """
    for _event, (prefix, uri) in ET.iterparse(io.StringIO(xml), events=("start-ns",)):
        if prefix and not _RESERVED_PREFIX.match(prefix):
            ET.register_namespace(prefix, uri)


def _map_attr(el: ET.Element | None, attr: str, prefixes: Mapping[str, str]) -> None:
    if el is not None and el.get(attr):
        el.set(attr, map_path(el.get(attr, ""), prefixes))


def _map_text(el: ET.Element | None, prefixes: Mapping[str, str]) -> None:
    if el is not None and el.text and el.text.strip():
        el.text = map_path(el.text.strip(), prefixes)


def _rewrite_disks(root: ET.Element, plans: Mapping[str, DiskPlan], prefixes: Mapping[str, str]) -> None:
    for el in root.iterfind("devices/disk"):
        target = el.find("target")
        plan = plans.get(target.get("dev", "")) if target is not None else None
        source = el.find("source")
        is_file = el.get("type", "file") == "file"
        if plan is not None and plan.destination and source is not None and is_file:
            source.set("file", plan.destination)
        else:
            _map_attr(source, "file", prefixes)
        chain = _backing_chain(el)
        for i, store in enumerate(chain):
            if i == 0 and plan is not None and plan.backing_file:
                store.find("source").set("file", plan.backing_file)  # type: ignore[union-attr]
            else:
                _map_attr(store.find("source"), "file", prefixes)


def _rewrite_other_paths(root: ET.Element, prefixes: Mapping[str, str]) -> None:
    os_el = root.find("os")
    if os_el is not None:
        for tag in ("kernel", "initrd", "dtb", "loader", "nvram"):
            _map_text(os_el.find(tag), prefixes)
    for fs in root.iterfind("devices/filesystem"):
        _map_attr(fs.find("source"), "dir", prefixes)
        _map_attr(fs.find("source"), "file", prefixes)
    for tag in _CHAR_DEVICES:
        for dev in root.iterfind(f"devices/{tag}"):
            if dev.get("type") == "file":
                _map_attr(dev.find("source"), "path", prefixes)
            _map_attr(dev.find("log"), "file", prefixes)


def _rewrite_nics(root: ET.Element, mapping: HostMapping) -> None:
    for el in root.iterfind("devices/interface"):
        source = el.find("source")
        if source is None:
            continue
        kind = el.get("type")
        if kind == "bridge" and source.get("bridge") in mapping.bridges:
            source.set("bridge", mapping.bridges[source.get("bridge", "")])
        elif kind == "network" and source.get("network") in mapping.networks:
            source.set("network", mapping.networks[source.get("network", "")])


def rewrite_for_target(xml: str, mapping: HostMapping, disks: Iterable[DiskPlan]) -> str:
    """The destination XML: disk sources at their planned destinations, bridges, networks and
    path prefixes mapped (see the module docstring for exactly which paths); all else kept.

    Raises InvalidArgument (INVALID_XML) when the XML does not parse, and (DISK_NOT_IN_DOMAIN)
    when a plan names a target device the domain does not have.
    """
    root = _root(xml)
    plans = {p.target: p for p in disks}
    devices = {t.get("dev", "") for t in root.iterfind("devices/disk/target")}
    unknown = sorted(set(plans) - devices)
    if unknown:
        raise InvalidArgument(
            f"disk plan names {', '.join(unknown)}, which the domain does not have",
            reason="DISK_NOT_IN_DOMAIN",
            hint=f"the domain's disks are {', '.join(sorted(devices)) or 'none'}",
        )
    _register_namespaces(xml)
    _rewrite_disks(root, plans, mapping.path_prefixes)
    _rewrite_other_paths(root, mapping.path_prefixes)
    _rewrite_nics(root, mapping)
    return ET.tostring(root, encoding="unicode")
