"""Which disks a migration copies, and where each one lives on the target (pure).

``plan_disks`` covers every disk backed by a file: ``copy=True`` means the target creates a new
image at ``destination`` and libvirt copies the disk into it; ``copy=False`` means the file must
already be visible on the target at ``destination`` (shared storage, or an ISO/read-only image
the operator placed there). Disks without a file (empty CD-ROMs, block devices, network disks)
are not planned: the migration keeps their definition as it is (a writable block device must be
the same device on the target: ``agent/target_checks.py`` compares their identities).

Which disks are copied:

=========  ===================================================================================
SHARED     none; every file disk is expected at its (mapped) path
COPY_ALL   the ``migrate_disks`` devices when given; otherwise every writable (not read-only),
           non-CD-ROM file disk that is not on shared storage
COPY_INC   the same disks; each one's nearest backing file is expected on the target at its
           mapped path (``backing_file``) and only the top layer is copied
=========  ===================================================================================

A plan's ``allocation`` is what its copy is expected to write on the target (0: not known, count
the virtual size; ``copy_allocation``). The inventory's allocation is the top layer's alone
(libvirt's block statistics), right for a disk without a backing chain and for COPY_INC, but
COPY_ALL flattens a chain into one new image that holds every layer's data: a 2 MiB overlay on a
40 GiB base writes up to 40 GiB there, and no layer below the top is measured.

Images are created in the source disk's format (a raw disk stays raw, a qcow2 stays qcow2), so
the destination XML's ``<driver type>`` stays right; a disk without a format is raw, as libvirt
reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ferry.errors import InvalidArgument
from ferry.model import Disk, DiskPlan, HostMapping, StorageMode


def _norm_prefix(prefix: str) -> str:
    """``/a/b/`` -> ``/a/b``; ``/`` -> ``""`` (the root matches every absolute path)."""
    return prefix.rstrip("/")


def map_path(path: str, prefixes: Mapping[str, str]) -> str:
    """``path`` with its longest matching source prefix replaced by the target prefix.

    Prefixes match on whole path components only.

    >>> map_path("/var/lib/img/a.qcow2", {"/var/lib/img": "/srv/img", "/var": "/data"})
    '/srv/img/a.qcow2'
    >>> map_path("/var/lib/images/a.qcow2", {"/var/lib/img": "/srv/img"})
    '/var/lib/images/a.qcow2'
    """
    best: tuple[int, str, str] | None = None
    for source, target in prefixes.items():
        if not source:
            continue
        norm = _norm_prefix(source)
        if path == norm or path.startswith(norm + "/"):
            if best is None or len(norm) > best[0]:
                best = (len(norm), norm, target)
    if best is None:
        return path
    _, norm, target = best
    mapped = target.rstrip("/") + path[len(norm) :]
    return mapped or "/"


def _copyable(disk: Disk) -> bool:
    """Copied by default: a writable hard disk backed by a local file."""
    return bool(disk.source) and disk.device == "disk" and not disk.readonly and not disk.shared


def _check_requested(disks: list[Disk], storage: StorageMode, migrate_disks: Iterable[str]) -> set[str]:
    requested = list(migrate_disks)
    if not requested:
        return set()
    by_target = {d.target: d for d in disks}
    devices = ", ".join(d.target for d in disks) or "none"
    if storage is StorageMode.SHARED:
        raise InvalidArgument(
            f"disks to copy ({', '.join(requested)}) were given with shared storage",
            reason="MIGRATE_DISKS_WITH_SHARED",
            hint="use --copy-storage-all or --copy-storage-inc to copy them, or drop --migrate-disks",
        )
    unknown = [t for t in requested if t not in by_target]
    if unknown:
        raise InvalidArgument(
            f"the domain has no disk {', '.join(unknown)}",
            reason="DISK_NOT_IN_DOMAIN",
            hint=f"the domain's disks are {devices}",
        )
    for target in requested:
        disk = by_target[target]
        if not disk.source or disk.device != "disk" or disk.readonly:
            why = (
                "has no file source"
                if not disk.source
                else f"is a {disk.device}"
                if disk.device != "disk"
                else "is read-only"
            )
            raise InvalidArgument(
                f"disk {target} {why} and cannot be copied",
                reason="DISK_NOT_COPYABLE",
                hint=f"copy only writable file disks; this domain's disks are {devices}",
            )
    return set(requested)


def landed_disks(plans: Iterable[DiskPlan]) -> tuple[Disk, ...]:
    """The disks of a domain that landed, as its migration's plan puts them on the target: a copied
    disk is a new image there, on the target's local storage; one not copied is the file the
    target shares (or was given). What a replica knows of a VM it never asked about, until the
    target's own answer (the next migration's storage mode depends on it).

    >>> plans = [DiskPlan("vda", "/img/g1.qcow2", "/img/g1.qcow2", virtual_size=64),
    ...          DiskPlan("vdb", "/nfs/g1-data.raw", "/mnt/g1-data.raw", format="raw", copy=False)]
    >>> [(d.target, d.source, d.format, d.virtual_size, d.shared) for d in landed_disks(plans)]
    [('vda', '/img/g1.qcow2', 'qcow2', 64, False), ('vdb', '/mnt/g1-data.raw', 'raw', 0, True)]
    """
    return tuple(
        Disk(
            target=p.target,
            source=p.destination or p.source,
            format=p.format,
            virtual_size=p.virtual_size,
            allocation=p.allocation,
            shared=not p.copy,
        )
        for p in plans
    )


def copy_allocation(disk: Disk, storage: StorageMode) -> int:
    """What copying ``disk`` is expected to write on the target, as ``DiskPlan.allocation`` holds
    it (0: not known, count the virtual size): the top layer's allocation, unless COPY_ALL
    flattens a backing chain into the new image (see the module docstring).

    >>> overlay = Disk("vda", "/img/g1.qcow2", virtual_size=40 << 30, allocation=2 << 20,
    ...                backing_chain=("/img/golden.qcow2",))
    >>> copy_allocation(overlay, StorageMode.COPY_INC), copy_allocation(overlay, StorageMode.COPY_ALL)
    (2097152, 0)
    >>> copy_allocation(Disk("vdb", "/img/g1-data.raw", allocation=1 << 30), StorageMode.COPY_ALL)
    1073741824
    """
    return 0 if storage is StorageMode.COPY_ALL and disk.backing_chain else disk.allocation


def plan_disks(
    disks: Iterable[Disk], storage: StorageMode, migrate_disks: Iterable[str], mapping: HostMapping
) -> list[DiskPlan]:
    """One DiskPlan per file-backed disk, in the domain's order (see the module docstring).

    Raises InvalidArgument: DISK_NOT_IN_DOMAIN (hint lists the domain's devices),
    DISK_NOT_COPYABLE, MIGRATE_DISKS_WITH_SHARED.
    """
    disks = list(disks)
    requested = _check_requested(disks, storage, migrate_disks)
    plans = []
    for disk in disks:
        if not disk.source:
            continue
        copy = storage is not StorageMode.SHARED and (disk.target in requested if requested else _copyable(disk))
        backing, fingerprint = "", ""
        if copy and storage is StorageMode.COPY_INC and disk.backing_chain:
            backing = map_path(disk.backing_chain[0], mapping.path_prefixes)
            fingerprint = disk.backing_fingerprint
        plans.append(
            DiskPlan(
                target=disk.target,
                source=disk.source,
                destination=map_path(disk.source, mapping.path_prefixes),
                format=disk.format or "raw",
                virtual_size=disk.virtual_size,
                allocation=copy_allocation(disk, storage) if copy else disk.allocation,
                backing_file=backing,
                copy=copy,
                backing_fingerprint=fingerprint,
            )
        )
    return plans
