"""What this host is and what runs on it: libvirt's facts, the host's bridges and storage, and
how peers reach it (from the config), combined into one HostFacts and the domain list.

A disk's ``shared`` flag is the host's verdict on its path (declared shared dir or cluster file
system), so the coordinator can tell which disks a migration must copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata

from ferry.agent.advertised import AdvertisedUri
from ferry.agent.fingerprint import fingerprint_or_empty
from ferry.compat import AGENT_API_LEVEL
from ferry.model import Disk, DomainInfo, HostFacts
from ferry.ports import HostSystem, Hypervisor


def agent_version() -> str:
    try:
        return metadata.version("ferry")
    except metadata.PackageNotFoundError:
        return "unknown"


class Inventory:
    def __init__(
        self,
        hypervisor: Hypervisor,
        host: HostSystem,
        *,
        libvirt_uri: str,
        migration_address: str,
        version: str = "",
        migration_tls_problem: Callable[[], str] = lambda: "",
        api_level: int = AGENT_API_LEVEL,
        advertised: AdvertisedUri | None = None,
    ) -> None:
        """``migration_tls_problem``: why this host cannot migrate over TLS now ("" = it can;
        asked at every facts() call, so certificates put in place later count). ``api_level``: the
        level reported (ferry/compat.py; tests act as an older agent with a lower one);
        ``advertised``: whether the advertised URI is this host's libvirtd (``advertised.py``)."""
        self.api_level = api_level
        self._hv = hypervisor
        self._tls_problem = migration_tls_problem
        self._advertised = advertised
        self._host = host
        self._libvirt_uri = libvirt_uri
        self._migration_address = migration_address
        self._version = version or agent_version()

    async def facts(self) -> HostFacts:
        """libvirt's host facts plus bridges, storage dirs, advertised URI and migration address."""
        facts = await self._hv.host_facts()
        bridges, storage = await asyncio.to_thread(lambda: (self._host.bridges(), self._host.storage_dirs()))
        return replace(
            facts,
            bridges=tuple(bridges),
            storage=tuple(storage),
            libvirt_uri=self._libvirt_uri,
            migration_address=self._migration_address,
            agent_version=self._version,
            migration_tls_problem=await asyncio.to_thread(self._tls_problem),
            api_level=self.api_level,
            libvirt_uri_problem=self._advertised.problem(facts.host_uuid) if self._advertised is not None else "",
        )

    async def domains(self) -> list[DomainInfo]:
        return [await self._with_shared(d) for d in await self._hv.list_domains()]

    async def domain(self, name_or_uuid: str, *, backing_fingerprints: bool = False) -> DomainInfo:
        """Raises NotFound (DOMAIN_NOT_FOUND). With each block device's identity, and
        (``backing_fingerprints``) each disk's nearest backing file's fingerprint."""
        dom = await self._with_shared(await self._hv.get_domain(name_or_uuid))
        if backing_fingerprints or any(d.block_device for d in dom.disks):
            dom = await asyncio.to_thread(self._disk_facts, dom, backing_fingerprints)
        return dom

    def _disk_facts(self, dom: DomainInfo, fingerprints: bool) -> DomainInfo:
        return replace(
            dom,
            disks=tuple(
                replace(
                    d,
                    backing_fingerprint=(
                        fingerprint_or_empty(self._host, d.backing_chain[0]) if fingerprints and d.backing_chain else ""
                    ),
                    block_identity=self._host.block_identity(d.block_device) if d.block_device else "",
                )
                for d in dom.disks
            ),
        )

    async def _with_shared(self, dom: DomainInfo) -> DomainInfo:
        if not any(d.source for d in dom.disks):
            return dom

        def verdict(d: Disk) -> tuple[bool, bool]:  # (shared, but on a file system libvirt does not know so)
            shared = bool(d.source) and self._host.is_shared(d.source)
            return shared, shared and not self._host.libvirt_shared(d.source)

        found = await asyncio.to_thread(lambda: [verdict(d) for d in dom.disks])
        return replace(
            dom,
            disks=tuple(
                replace(d, shared=s, shared_unknown_to_libvirt=unknown)
                for d, (s, unknown) in zip(dom.disks, found, strict=True)
            ),
        )
