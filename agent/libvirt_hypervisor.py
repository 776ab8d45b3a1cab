"""The Hypervisor port over libvirt-python: the only module that imports ``libvirt``.

Every libvirt call is blocking, so each runs in this adapter's own thread pool and is awaited
with a timeout: a hung libvirtd costs a thread, never the event loop, and the caller gets
DeadlineExceeded (LIBVIRT_TIMEOUT) naming the call and the host. libvirt errors become Ferry
errors through the one table in ``libvirt_errors`` (decided on error codes, never on text).

The connection is opened on first use and re-opened when it is found dead (``isAlive``) or a
call failed because the connection broke; idempotent reads are retried once on a new
connection. libvirt's default error handler (which prints every error to stderr) is silenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import libvirt

from ferry.agent import libvirt_errors as le
from ferry.agent import probe
from ferry.agent.domxml import parse_disks, parse_domain, parse_nics
from ferry.agent.target_checks import cpu_check_failed
from ferry.errors import Aborted, FerryError
from ferry.model import DomainInfo, DomainState, HostFacts, JobStats, MigrationOptions, StorageMode

log = logging.getLogger(__name__)

T = TypeVar("T")
MiB = 1 << 20

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

# libvirt reports "no network driver" for a libvirtd built or started without one.
_NO_DRIVER = frozenset({le.VIR_ERR_NO_SUPPORT, le.VIR_ERR_OPERATION_UNSUPPORTED})

_JOB_TYPES = {0: "none", 1: "bounded", 2: "unbounded", 3: "completed", 4: "failed", 5: "cancelled"}
_JOB_OPERATIONS = {
    0: "",
    1: "start",
    2: "save",
    3: "restore",
    4: "migration in",
    5: "migration out",
    6: "snapshot",
    7: "snapshot revert",
    8: "dump",
    9: "backup",
    10: "snapshot delete",
}


def _silence(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; we report them ourselves."""


# ---------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Capabilities:
    host_uuid: str = ""
    arch: str = ""
    cpu_model: str = ""
    cpu_features: tuple[str, ...] = ()


def parse_capabilities(xml: str) -> Capabilities:
    """Host UUID, CPU arch, model and features from ``virConnectGetCapabilities``."""
    root = ET.fromstring(xml)
    cpu = root.find("host/cpu")
    return Capabilities(
        host_uuid=(root.findtext("host/uuid") or "").strip(),
        arch=(cpu.findtext("arch") or "").strip() if cpu is not None else "",
        cpu_model=(cpu.findtext("model") or "").strip() if cpu is not None else "",
        cpu_features=tuple(f.get("name", "") for f in cpu.iterfind("feature") if f.get("name"))
        if cpu is not None
        else (),
    )


def migration_flags(options: MigrationOptions, *, copy_disks: bool) -> int:
    """migrateToURI3 flags: always peer-to-peer; live unless offline (offline = definition only,
    hence PERSIST_DEST); storage copy per the storage mode when there are disks to copy."""
    flags = libvirt.VIR_MIGRATE_PEER2PEER
    if options.offline:
        flags |= libvirt.VIR_MIGRATE_OFFLINE | libvirt.VIR_MIGRATE_PERSIST_DEST
    else:
        flags |= libvirt.VIR_MIGRATE_LIVE
    if options.persist_dest:
        flags |= libvirt.VIR_MIGRATE_PERSIST_DEST
    if options.undefine_source:
        flags |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if copy_disks and options.storage is StorageMode.COPY_ALL:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    elif copy_disks and options.storage is StorageMode.COPY_INC:
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    if options.auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if options.allow_postcopy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if options.unsafe:
        flags |= libvirt.VIR_MIGRATE_UNSAFE
    return flags


def migration_params(
    options: MigrationOptions, *, destination_xml: str, migrate_disks: list[str], migrate_uri: str
) -> dict[str, Any]:
    """migrateToURI3 typed parameters. The destination XML is also the persistent definition
    on the target: without it libvirt would keep the source's host-specific names there."""
    params: dict[str, Any] = {}
    if destination_xml:
        params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = destination_xml
        if options.persist_dest or options.offline:
            params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = destination_xml
    if migrate_disks and options.storage is not StorageMode.SHARED:
        params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(migrate_disks)
    if options.bandwidth_mibps:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = options.bandwidth_mibps
    if migrate_uri:
        params[libvirt.VIR_MIGRATE_PARAM_URI] = migrate_uri
    return params


def job_stats_from_libvirt(d: dict[str, Any], *, postcopy: bool = False) -> JobStats:
    """virDomainGetJobStats' typed parameters as JobStats."""
    job_type = _JOB_TYPES.get(int(d.get("type", 0)), "none")
    return JobStats(
        active=job_type in ("bounded", "unbounded"),
        job_type=job_type,
        operation=_JOB_OPERATIONS.get(int(d.get("operation", 0)), ""),
        time_elapsed_ms=int(d.get("time_elapsed", 0)),
        memory_total=int(d.get("memory_total", 0)),
        memory_processed=int(d.get("memory_processed", 0)),
        memory_remaining=int(d.get("memory_remaining", 0)),
        disk_total=int(d.get("disk_total", 0)),
        disk_processed=int(d.get("disk_processed", 0)),
        disk_remaining=int(d.get("disk_remaining", 0)),
        dirty_rate_pages=int(d.get("memory_dirty_rate", 0)),
        page_size=int(d.get("memory_page_size", 0)) or 4096,
        iteration=int(d.get("memory_iteration", 0)),
        bandwidth_bps=int(d.get("memory_bps", 0)),
        auto_converge_throttle=int(d.get("auto_converge_throttle", 0)),
        downtime_ms=int(d.get("downtime", 0)),
        postcopy=postcopy,
    )


def available_memory(stats: Mapping[str, int]) -> int:
    """Bytes of memory available for a new guest from virNodeGetMemoryStats (KiB): free plus
    buffers and page cache (what the kernel reclaims at once); 0 when libvirt said nothing.

    >>> available_memory({"total": 8_000_000, "free": 1_000_000, "buffers": 24, "cached": 2_000_000})
    3072024576
    """
    return sum(int(stats.get(k, 0)) for k in ("free", "buffers", "cached")) * 1024


def _in_postcopy(state: int, reason: int) -> bool:
    return (state, reason) in (
        (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY),
        (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_POSTCOPY),
    )


def _code(exc: libvirt.libvirtError) -> int:
    return exc.get_error_code() or 0


# ---------------------------------------------------------------- the adapter


class LibvirtHypervisor:
    """The local libvirtd at ``uri``; every call bounded by ``timeout_s`` (see module docstring)."""

    def __init__(
        self,
        uri: str,
        timeout_s: float = 30.0,
        *,
        max_threads: int = 16,
        probe_timeout_s: float = 10.0,
        peer_uris: Mapping[str, str] | None = None,
        resolve_timeout_s: float = 3.0,
        connect_timeout_s: float = 3.0,
        resolve: probe.Resolve | None = None,
        connect: probe.Connect | None = None,
    ) -> None:
        """``peer_uris`` maps a target URI (as the source libvirtd reaches it) to how *this*
        process reaches that libvirtd, for the adapter's own calls to peers (completed job
        statistics, reachability probe) when the two differ -- e.g. a test outside the lab's
        network namespaces. Unmapped URIs are used as they are.

        ``resolve`` and ``connect`` are the probe's name lookup and TCP connect (defaults: the
        system resolver and a socket, bounded by ``resolve_timeout_s`` / ``connect_timeout_s``);
        tests pass their own so that nothing leaves the machine."""
        libvirt.registerErrorHandler(_silence, None)
        self.uri = uri
        self.timeout_s = timeout_s
        self._probe_timeout_s = probe_timeout_s
        self._resolve_timeout_s = resolve_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._resolve = resolve or self._system_resolve
        self._connect = connect or self._tcp_connect
        self._pool = ThreadPoolExecutor(max_threads, thread_name_prefix="libvirt")
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._aborted: set[str] = set()  # UUIDs whose migration job we aborted
        self._peer_uris = dict(peer_uris or {})

    def close(self) -> None:
        """Drop the connection and the threads (a thread stuck in libvirt is left behind)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ plumbing

    def _connection(self) -> libvirt.virConnect:
        """The open connection, re-opened when dead (runs in a pool thread)."""
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                log.warning("connection to libvirt %s is dead: reconnecting", self.uri)
            self._conn = libvirt.open(self.uri)
            return self._conn

    async def _in_thread(self, work: Callable[[], T], timeout_s: float) -> T:
        """``work()`` in the pool, awaited at most ``timeout_s`` (TimeoutError). On timeout the
        thread stays blocked in libvirt until libvirt returns; only the wait ends."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, work)
        async with asyncio.timeout(timeout_s):
            return await future

    def _forget(self, conn: libvirt.virConnect | None) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None

    async def _call(
        self, call: str, fn: Callable[[libvirt.virConnect], T], *, timeout_s: float | None = None, retry: bool = False
    ) -> T:
        """Run ``fn(connection)`` in the pool within the timeout; libvirt errors -> Ferry errors."""
        timeout = timeout_s or self.timeout_s
        for attempt in (1, 2):
            used: list[libvirt.virConnect] = []

            def work(used: list[libvirt.virConnect] = used) -> T:
                conn = self._connection()
                used.append(conn)
                return fn(conn)

            try:
                return await self._in_thread(work, timeout)
            except TimeoutError:
                raise le.timeout_error(call, self.uri, timeout) from None
            except libvirt.libvirtError as exc:
                if le.is_unreachable(_code(exc), exc.get_error_domain() or 0):
                    self._forget(used[0] if used else None)
                    if retry and attempt == 1 and used:
                        log.info("libvirt %s failed on a broken connection: retrying once", call)
                        continue
                raise self._error(exc, call) from exc
        raise AssertionError("unreachable")

    def _error(
        self, exc: libvirt.libvirtError, call: str, *, host: str = "", peer: str = "", peer_unreachable: bool = False
    ) -> FerryError:
        return le.translate(
            _code(exc),
            exc.get_error_domain() or 0,
            exc.get_error_message() or "",
            call=call,
            host=host or self.uri,
            peer=peer,
            peer_unreachable=peer_unreachable,
        )

    @staticmethod
    def _lookup(conn: libvirt.virConnect, name_or_uuid: str) -> libvirt.virDomain:
        if _UUID.match(name_or_uuid):
            try:
                return conn.lookupByUUIDString(name_or_uuid)
            except libvirt.libvirtError as exc:
                if _code(exc) != le.VIR_ERR_NO_DOMAIN:
                    raise
        return conn.lookupByName(name_or_uuid)

    @staticmethod
    def _domain_info(dom: libvirt.virDomain) -> DomainInfo:
        xml = dom.XMLDesc(0)
        parsed = parse_domain(xml)
        state, _reason = dom.state()
        disks = []
        for disk in parse_disks(xml):
            if disk.source:
                try:
                    capacity, allocation, _physical = dom.blockInfo(disk.target)
                    disk = replace(disk, virtual_size=capacity, allocation=allocation)
                except libvirt.libvirtError as exc:
                    log.debug("no block info for %s %s: %s", parsed.name, disk.target, exc)
            disks.append(disk)
        try:
            domain_state = DomainState(state)
        except ValueError:
            domain_state = DomainState.UNKNOWN
        return DomainInfo(
            name=parsed.name,
            uuid=parsed.uuid,
            state=domain_state,
            memory_bytes=parsed.memory_bytes,
            vcpus=parsed.vcpus,
            persistent=bool(dom.isPersistent()),
            disks=tuple(disks),
            nics=tuple(parse_nics(xml)),
            cpu_mode=parsed.cpu_mode,
            cpu_model=parsed.cpu_model,
            os_type=parsed.domain_type,
        )

    # ------------------------------------------------------------------ port: reading

    async def host_facts(self) -> HostFacts:
        def work(conn: libvirt.virConnect) -> HostFacts:
            caps = parse_capabilities(conn.getCapabilities())
            info = conn.getInfo()  # [model, memory MiB, cpus, MHz, nodes, sockets, cores, threads]
            total, available = self._memory(conn, int(info[1]))
            try:
                networks = tuple(sorted(conn.listNetworks()))
            except libvirt.libvirtError as exc:
                if _code(exc) not in _NO_DRIVER:
                    raise
                networks = ()
            return HostFacts(
                hostname=conn.getHostname(),
                host_uuid=caps.host_uuid,
                libvirt_version=conn.getLibVersion(),
                qemu_version=conn.getVersion(),
                cpu_model=caps.cpu_model,
                arch=caps.arch or info[0],
                cpu_features=caps.cpu_features,
                cpus=int(info[2]),
                memory_total_bytes=total,
                memory_free_bytes=available,
                networks=networks,
            )

        return await self._call("getCapabilities", work, retry=True)

    @staticmethod
    def _memory(conn: libvirt.virConnect, info_mib: int) -> tuple[int, int]:
        """(total, available) bytes. Available = free plus what the kernel can reclaim at once
        (buffers, page cache): on a long-running host "free" alone is mostly eaten by the page
        cache. Total from the node memory stats (the kernel's MemTotal); virNodeGetInfo's figure
        comes from NUMA topology, which some virtual machines report short."""
        try:
            stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        except libvirt.libvirtError as exc:
            if _code(exc) not in _NO_DRIVER:
                raise
            stats = {}
        total = max(int(stats.get("total", 0)) * 1024, info_mib * MiB)
        return total, available_memory(stats) or int(conn.getFreeMemory())

    async def list_domains(self) -> list[DomainInfo]:
        def work(conn: libvirt.virConnect) -> list[DomainInfo]:
            out = []
            for dom in conn.listAllDomains(0):
                try:
                    out.append(self._domain_info(dom))
                except libvirt.libvirtError as exc:
                    if _code(exc) != le.VIR_ERR_NO_DOMAIN:  # gone while we looked: skip it
                        raise
            return sorted(out, key=lambda d: d.name)

        return await self._call("listAllDomains", work, retry=True)

    async def get_domain(self, name_or_uuid: str) -> DomainInfo:
        return await self._call("lookupByName", lambda c: self._domain_info(self._lookup(c, name_or_uuid)), retry=True)

    async def find_domain(self, *, name: str = "", uuid: str = "") -> DomainInfo | None:
        def work(conn: libvirt.virConnect) -> DomainInfo | None:
            try:
                dom = conn.lookupByUUIDString(uuid) if uuid else conn.lookupByName(name)
                return self._domain_info(dom)
            except libvirt.libvirtError as exc:
                if _code(exc) == le.VIR_ERR_NO_DOMAIN:
                    return None
                raise

        return await self._call("lookupByUUIDString" if uuid else "lookupByName", work, retry=True)

    async def domain_xml(self, name_or_uuid: str, *, migratable: bool = True) -> str:
        flags = libvirt.VIR_DOMAIN_XML_SECURE | (libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0)
        return await self._call("XMLDesc", lambda c: self._lookup(c, name_or_uuid).XMLDesc(flags), retry=True)

    async def job_stats(self, name_or_uuid: str, *, completed: bool = False) -> JobStats:
        # reading completed statistics clears them unless KEEP_COMPLETED: keep them for others
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED if completed else 0

        def work(conn: libvirt.virConnect) -> JobStats:
            dom = self._lookup(conn, name_or_uuid)
            # a domain that does not run has no job; libvirt refuses to say so ("domain is not
            # running"), e.g. on the source between a completed migration and the undefine
            if not completed and not dom.isActive():
                return JobStats()
            try:
                stats = dom.jobStats(flags)
            except libvirt.libvirtError:
                if not completed and not dom.isActive():  # it stopped while we asked
                    return JobStats()
                raise
            return job_stats_from_libvirt(stats, postcopy=_in_postcopy(*dom.state()))

        return await self._call("jobStats", work, retry=True)

    async def remote_completed_job(self, target_uri: str, name_or_uuid: str) -> JobStats:
        uri = self._peer_uris.get(target_uri, target_uri)

        def work() -> JobStats:
            remote = libvirt.open(uri)
            try:
                stats = self._lookup(remote, name_or_uuid).jobStats(
                    libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
                )
                return job_stats_from_libvirt(stats)
            finally:
                remote.close()

        return await self._remote("jobStats", uri, work)

    async def _remote(self, call: str, uri: str, work: Callable[[], T]) -> T:
        """A call on another host's libvirtd (its own connection, not ours)."""
        try:
            return await self._in_thread(work, self.timeout_s)
        except TimeoutError:
            raise le.timeout_error(call, uri, self.timeout_s) from None
        except libvirt.libvirtError as exc:
            raise self._error(exc, call, host=uri) from exc

    # ------------------------------------------------------------------ port: tuning a job

    async def abort_job(self, name_or_uuid: str) -> bool:
        """Abort the running job; False when there is none (any more).

        abortJob waits for the domain's job lock, so it may return only when the migration has
        ended anyway: a domain gone from this host by then (migrated and undefined) or a job no
        longer running means there was nothing left to abort. A hung abortJob is retried once on
        a fresh connection (seen: an abort blocked for ten minutes until a second connection
        aborted)."""

        def abort(conn: libvirt.virConnect) -> bool:
            dom = self._lookup(conn, name_or_uuid)  # an unknown domain is NotFound
            if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                return False
            self._aborted.add(dom.UUIDString())
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if _code(exc) == le.VIR_ERR_NO_DOMAIN:
                    return False  # the migration completed and took the domain with it
                if _code(exc) == le.VIR_ERR_OPERATION_INVALID and dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                    return False  # the job ended meanwhile
                raise
            return True

        try:
            return await self._call("abortJob", abort)
        except FerryError as exc:
            if exc.reason != "LIBVIRT_TIMEOUT":
                raise
            log.warning("abortJob of %s hung: retrying on a new connection", name_or_uuid)

        def abort_fresh(_conn: libvirt.virConnect) -> bool:
            fresh = libvirt.open(self.uri)
            try:
                return abort(fresh)
            finally:
                fresh.close()

        return await self._call("abortJob", abort_fresh)

    async def set_max_downtime(self, name_or_uuid: str, ms: int) -> None:
        await self._call("migrateSetMaxDowntime", lambda c: self._lookup(c, name_or_uuid).migrateSetMaxDowntime(ms, 0))

    async def set_bandwidth(self, name_or_uuid: str, mibps: int) -> None:
        await self._call("migrateSetMaxSpeed", lambda c: self._lookup(c, name_or_uuid).migrateSetMaxSpeed(mibps, 0))

    async def start_postcopy(self, name_or_uuid: str) -> None:
        await self._call("migrateStartPostCopy", lambda c: self._lookup(c, name_or_uuid).migrateStartPostCopy(0))

    # ------------------------------------------------------------------ port: CPU and peers

    async def compare_cpu(self, cpu_xml: str, *, arch: str, machine: str, virttype: str, emulator: str) -> str:
        """virConnectCompareHypervisorCPU with FAIL_INCOMPATIBLE: libvirt then says why (the
        error's detail names the missing features). Decided on the error code: CPU_INCOMPATIBLE
        -> the explanation; a broken connection or a timeout -> raised as usual; a driver without
        the call -> "" (logged: cannot tell); anything else (unknown model, machine type or
        emulator) -> FailedPrecondition CPU_CHECK_FAILED."""
        flags = libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE

        def work(conn: libvirt.virConnect) -> tuple[str, str]:
            try:
                conn.compareHypervisorCPU(
                    emulator or None, arch or None, machine or None, virttype or None, cpu_xml, flags
                )
            except libvirt.libvirtError as exc:
                code, domain = _code(exc), exc.get_error_domain() or 0
                if code == le.VIR_ERR_CPU_INCOMPATIBLE:
                    return "incompatible", exc.get_str2() or exc.get_error_message() or "incompatible CPU"
                if le.is_unreachable(code, domain) or code == le.VIR_ERR_OPERATION_TIMEOUT:
                    raise
                if code in _NO_DRIVER:
                    return "unsupported", exc.get_error_message() or ""
                return "failed", exc.get_error_message() or f"libvirt error {code}"
            return "ok", ""

        verdict, text = await self._call("compareHypervisorCPU", work, retry=True)
        if verdict == "unsupported":
            log.warning("libvirt on %s cannot compare CPUs (%s): the guest's CPU is not checked", self.uri, text)
            return ""
        if verdict == "failed":
            raise cpu_check_failed(self.uri, text)
        return text

    async def probe_peer(self, uri: str, *, migration_address: str = "") -> int:
        """See the port; the steps are ``probe.probe_peer``'s. ``peer_uris`` applies (a mapped
        URI is probed instead, e.g. a unix socket from outside the lab's namespaces)."""
        target = self._peer_uris.get(uri, uri)
        from_host = socket.gethostname()

        def open_peer() -> None:
            libvirt.open(target).close()

        async def open_libvirt() -> None:
            try:
                await self._in_thread(open_peer, self._probe_timeout_s)
            except TimeoutError:
                raise probe.open_failed(uri, from_host, f"no answer within {self._probe_timeout_s:g} s") from None
            except libvirt.libvirtError as exc:
                code, domain = _code(exc), exc.get_error_domain() or 0
                if le.is_unreachable(code, domain):
                    raise probe.open_failed(uri, from_host, exc.get_error_message() or f"libvirt error {code}") from exc
                raise le.translate(code, domain, exc.get_error_message() or "", call="open", host=uri) from exc

        return await probe.probe_peer(
            target,
            from_host=from_host,
            resolve=self._resolve,
            connect=self._connect,
            open_libvirt=open_libvirt,
            migration_address=migration_address,
            clock=time.monotonic,
        )

    async def _system_resolve(self, host: str, port: int) -> list[str]:
        """The system resolver (files, DNS...) in a thread, bounded (the thread may linger)."""
        async with asyncio.timeout(self._resolve_timeout_s):
            infos = await asyncio.to_thread(socket.getaddrinfo, host, port or None, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _tcp_connect(self, address: str, port: int) -> None:
        """Open and close a TCP connection to ``address:port`` (no data sent), bounded."""
        async with asyncio.timeout(self._connect_timeout_s):
            _reader, writer = await asyncio.open_connection(address, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    # ------------------------------------------------------------------ port: migrate

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
        """Peer-to-peer migration with migrateToURI3 (flags and params: ``migration_flags`` and
        ``migration_params``) on a connection of its own, so statistics, tuning and abort on the
        shared connection stay responsive. Past ``timeout_s`` the job is aborted and
        DeadlineExceeded raised.

        A failure after our own abort is Aborted whatever libvirt said (the target's error may
        come back instead of "aborted"). A failure that may be the target's connection is
        checked by opening the target: unreachable -> Unavailable TARGET_UNREACHABLE.
        """
        copy = bool(migrate_disks) and options.storage is not StorageMode.SHARED
        flags = migration_flags(options, copy_disks=copy)
        params = migration_params(
            options, destination_xml=destination_xml, migrate_disks=migrate_disks, migrate_uri=migrate_uri
        )
        uuid = (await self.get_domain(name_or_uuid)).uuid
        self._aborted.discard(uuid)

        def work() -> None:
            # its own connection: calls on the connection that carries a running
            # migrateToURI3 can block for the whole job (seen: jobStats and abortJob stuck
            # for 60 s while a second connection answered at once)
            conn = libvirt.open(self.uri)
            try:
                conn.lookupByUUIDString(uuid).migrateToURI3(target_uri, params, flags)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()

        log.info(
            "migrateToURI3 %s -> %s flags=%#x params=%s",
            uuid,
            target_uri,
            flags,
            sorted(k for k in params if k not in ("destination_xml", "persistent_xml")),
        )
        try:
            await self._in_thread(work, timeout_s)
        except TimeoutError:
            log.error("migration of %s exceeded %.0f s: aborting it", uuid, timeout_s)
            try:
                await self.abort_job(uuid)
            except FerryError as exc:
                log.error("abort of %s failed: %s: %s", uuid, exc.reason, exc)
            raise le.timeout_error("migrateToURI3", self.uri, timeout_s) from None
        except libvirt.libvirtError as exc:
            raise await self._migrate_error(exc, uuid, target_uri) from exc
        finally:
            self._aborted.discard(uuid)

    async def _migrate_error(self, exc: libvirt.libvirtError, uuid: str, target_uri: str) -> FerryError:
        call = "migrateToURI3"
        if uuid in self._aborted:
            return Aborted(
                f"{call} on {self.uri}: {exc.get_error_message()}",
                reason="MIGRATION_ABORTED",
                hint="the migration was aborted on request; the guest keeps running on the source",
            )
        code = _code(exc)
        if code == le.VIR_ERR_OPERATION_FAILED or le.is_unreachable(code, exc.get_error_domain() or 0):
            if not await self._reachable(target_uri):
                return self._error(exc, call, peer=target_uri, peer_unreachable=True)
        return self._error(exc, call, peer=target_uri)

    async def _reachable(self, uri: str) -> bool:
        """Can a libvirt connection to ``uri`` be opened from here? (a state probe, not a guess)"""
        uri = self._peer_uris.get(uri, uri)

        def probe() -> bool:
            try:
                libvirt.open(uri).close()
                return True
            except libvirt.libvirtError as exc:
                return not le.is_unreachable(_code(exc), exc.get_error_domain() or 0)

        try:
            return await self._in_thread(probe, self._probe_timeout_s)
        except TimeoutError:
            return False
