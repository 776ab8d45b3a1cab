"""Ports: the narrow interfaces behind which every side effect lives.

Only ``agent/libvirt_hypervisor.py`` imports ``libvirt``; only the etcd store adapter imports the
etcd client. Each port lists just the calls its users make. Fakes implement the same ports and a
contract suite runs against fake and real adapter alike.

Every method raises only ``ferry.errors.FerryError`` subclasses.
"""

from __future__ import annotations

from typing import Protocol

from ferry.model import DomainInfo, HostFacts, JobStats, MigrationOptions, StorageDir


class Hypervisor(Protocol):
    """The local libvirt, as the agent uses it. Every call has a timeout (DeadlineExceeded)."""

    async def host_facts(self) -> HostFacts:
        """Hostname, host UUID, versions, CPU, memory, libvirt networks (not bridges/storage)."""
        ...

    async def list_domains(self) -> list[DomainInfo]: ...

    async def get_domain(self, name_or_uuid: str) -> DomainInfo:
        """Raises NotFound (reason DOMAIN_NOT_FOUND)."""
        ...

    async def find_domain(self, *, name: str = "", uuid: str = "") -> DomainInfo | None:
        """The domain with this name or this UUID, if any (active or only defined)."""
        ...

    async def domain_xml(self, name_or_uuid: str, *, migratable: bool = True) -> str: ...

    async def migrate(
        self,
        name_or_uuid: str,
        *,
        target_uri: str,
        destination_xml: str,
        options: MigrationOptions,
        migrate_disks: list[str],
        migrate_uri: str = "",
        timeout_s: float,
    ) -> None:
        """Run a peer-to-peer migration to ``target_uri``; returns when the job ended well.

        Raises Aborted when the job was aborted, Unavailable when the target cannot be reached,
        DeadlineExceeded after ``timeout_s``; others per the error table.
        """
        ...

    async def job_stats(self, name_or_uuid: str, *, completed: bool = False) -> JobStats: ...

    async def remote_completed_job(self, target_uri: str, name_or_uuid: str) -> JobStats:
        """The completed migration job's statistics, read on the target host."""
        ...

    async def abort_job(self, name_or_uuid: str) -> bool:
        """Abort the domain's running job; False when there was none."""
        ...

    async def set_max_downtime(self, name_or_uuid: str, ms: int) -> None: ...

    async def set_bandwidth(self, name_or_uuid: str, mibps: int) -> None: ...

    async def start_postcopy(self, name_or_uuid: str) -> None: ...


class HostSystem(Protocol):
    """The host's own files and network devices, as the agent uses them (no libvirt)."""

    def bridges(self) -> list[str]:
        """Names of the Linux bridges on this host."""
        ...

    def storage_dirs(self) -> list[StorageDir]:
        """The configured image directories with their free space and shared flag."""
        ...

    def free_bytes(self, path: str) -> int:
        """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
        ...

    def exists(self, path: str) -> bool: ...

    def writable_dir(self, path: str) -> bool:
        """True when ``path``'s directory exists (or can be created) and is writable."""
        ...

    def is_shared(self, path: str) -> bool:
        """True when ``path`` lies on storage declared shared (or a cluster file system)."""
        ...

    def create_image(self, path: str, *, fmt: str, virtual_size: int,
                     backing_file: str = "", backing_format: str = "") -> None:
        """Create a disk image (qemu-img create), parent directories included. Raises
        AlreadyExists when ``path`` exists."""
        ...

    def remove(self, path: str) -> bool:
        """Remove a file Ferry created; False when it was already gone."""
        ...
