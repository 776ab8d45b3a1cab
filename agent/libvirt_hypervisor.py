"""The Hypervisor port over libvirt-python: the only module that imports ``libvirt``.

Every libvirt call is blocking, so each runs in this adapter's own thread pool and is awaited
with a timeout: a hung libvirtd costs a thread, never the event loop, and the caller gets
DeadlineExceeded (LIBVIRT_TIMEOUT) naming the call and the host. libvirt errors become Ferry
errors through the one table in ``libvirt_errors`` (decided on error codes, never on text);
libvirt's values are translated to and from Ferry's model (flags, typed parameters, job
statistics, domain state, capabilities) by the pure functions in ``libvirt_translate``. This
module keeps the plumbing: connections, threads, timeouts, retries.

The connection is opened on first use and re-opened when it is found dead (``isAlive``) or a
call failed because the connection broke; idempotent reads are retried once on a new
connection. libvirt's default error handler (which prints every error to stderr) is silenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import libvirt

from ferry.agent import libvirt_errors as le
from ferry.agent import libvirt_translate as lt
from ferry.agent import probe
from ferry.agent.target_checks import cpu_check_failed
from ferry.convergence import ConvergencePolicy
from ferry.errors import Aborted, FailedPrecondition, FerryError
from ferry.model import DomainInfo, DomainState, HostFacts, JobStats, MigrationOptions

log = logging.getLogger(__name__)

T = TypeVar("T")

#: how long libvirtd waits for a domain's job lock before it fails a call (QEMU_JOB_WAIT_TIME, 30 s)
LIBVIRT_JOB_WAIT_S = 30.0
#: how long the host's capabilities and QEMU version are reused on one connection (a new
#: connection, after libvirtd restarted, reads them again)
STATIC_MAX_AGE_S = 300.0

# libvirt reports "no network driver" for a libvirtd built or started without one.
_NO_DRIVER = frozenset({le.VIR_ERR_NO_SUPPORT, le.VIR_ERR_OPERATION_UNSUPPORTED})


def _silence(_ctx: object, _err: object) -> None:
    """libvirt's default handler prints every error to stderr; we report them ourselves."""


def _code(exc: libvirt.libvirtError) -> int:
    return exc.get_error_code() or 0


# ---------------------------------------------------------------- the adapter


def _job_stats(dom: libvirt.virDomain, flags: int, completed: bool) -> JobStats:
    """virDomainGetJobStats of ``dom``, for what the agent asks of a job.

    A domain that does not run has no job; libvirt refuses to say so ("domain is not running"),
    e.g. on the source between a completed migration and the undefine. On the target of an
    incoming migration libvirt refuses the statistics ("available only on the source host",
    OPERATION_UNSUPPORTED) while the domain it paused for the migration waits: that job is
    running (a cleanup then waits for it instead of failing NOT_SUPPORTED and leaving its
    prepare behind, as a host death in pre-copy did in CI).
    """
    if not completed and not dom.isActive():
        return JobStats()
    try:
        stats = dom.jobStats(flags)
    except libvirt.libvirtError as exc:
        if not completed and not dom.isActive():  # it stopped while we asked
            return JobStats()
        if not completed and exc.get_error_code() in _NO_DRIVER and lt.paused_by_libvirt(*dom.state()):
            return JobStats(active=True, operation="migration in")
        raise
    state = dom.state()
    return lt.job_stats_from_libvirt(stats, postcopy=lt.in_postcopy(*state), postcopy_failed=lt.postcopy_failed(*state))


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
        migration_tls: bool = True,
    ) -> None:
        """``peer_uris`` maps a target URI (as the source libvirtd reaches it) to how *this*
        process reaches that libvirtd, for the adapter's own calls to peers (completed job
        statistics, reachability probe) when the two differ -- e.g. a test outside the lab's
        network namespaces. Unmapped URIs are used as they are.

        ``resolve`` and ``connect`` are the probe's name lookup and TCP connect (defaults: the
        system resolver and a socket, bounded by ``resolve_timeout_s`` / ``connect_timeout_s``);
        tests pass their own so that nothing leaves the machine.

        ``migration_tls``: migrations are encrypted (VIR_MIGRATE_TLS: memory and the NBD disk
        copy); only an agent config that says ``migration_tls = false`` turns it off."""
        self.migration_tls = migration_tls
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
        # (connection, when, capabilities XML, QEMU version): see _static
        self._static_facts: tuple[libvirt.virConnect, float, str, int] | None = None
        self._aborted: set[str] = set()  # UUIDs whose migration job we aborted
        self._ping: asyncio.Future[None] | None = None  # the ping running in a thread, if any
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
        self,
        exc: libvirt.libvirtError,
        call: str,
        *,
        host: str = "",
        peer: str = "",
        peer_unreachable: bool = False,
        peer_link_lost: bool = False,
        same_host_uuid: bool = False,
    ) -> FerryError:
        return le.translate(
            _code(exc),
            exc.get_error_domain() or 0,
            exc.get_error_message() or "",
            call=call,
            host=host or self.uri,
            peer=peer,
            peer_unreachable=peer_unreachable,
            peer_link_lost=peer_link_lost,
            same_host_uuid=same_host_uuid,
        )

    @staticmethod
    def _lookup(conn: libvirt.virConnect, name_or_uuid: str) -> libvirt.virDomain:
        if lt.looks_like_uuid(name_or_uuid):
            try:
                return conn.lookupByUUIDString(name_or_uuid)
            except libvirt.libvirtError as exc:
                if _code(exc) != le.VIR_ERR_NO_DOMAIN:
                    raise
        return conn.lookupByName(name_or_uuid)

    @staticmethod
    def _domain_info(dom: libvirt.virDomain) -> DomainInfo:
        """Never waits for a migration's job (placement is read with this while migrations run):
        XMLDesc, state, isActive and isPersistent take none; an active domain's disk sizes come
        from NOWAIT bulk statistics (``lt.block_sizes_from_stats``), a shut-off one's from
        virDomainGetBlockInfo (no job can hold it). A disk the statistics left out (libvirt skips
        what needs a job it cannot get at once: seen right after a migration landed, the agent
        just restarted) is read with virDomainGetBlockInfo when the domain is running -- not when
        it is paused, as an incoming migration's domain is, whose job allows none, nor when it runs
        in post-copy: the target's domain then runs under the incoming job (on the lab every
        inventory of the target waited 30 s for "cannot acquire state change lock (held by
        remoteDispatchDomainMigrateFinish3Params)", and the host looked down for the whole post-copy)."""
        xml = dom.XMLDesc(0)
        state, reason = dom.state()
        sizes: dict[str, tuple[int, int]] | None = None
        targets = lt.block_info_targets(xml)
        if targets and dom.isActive():
            try:
                found = dom.connect().domainListGetStats(
                    [dom], lt.VIR_DOMAIN_STATS_BLOCK, lt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
                )
                sizes = lt.block_sizes_from_stats(found[0][1] if found else {})
            except libvirt.libvirtError as exc:
                log.debug("no block statistics for %s: %s", dom.name(), exc)
                sizes = {}
        if sizes is not None:
            running = state == DomainState.RUNNING.value and not lt.in_postcopy(state, reason)
            targets = [t for t in targets if sizes.get(t, (0, 0))[0] <= 0] if running else []
        sizes = sizes or {}
        for target in targets:
            try:
                capacity, allocation, _physical = dom.blockInfo(target)
                sizes[target] = (capacity, allocation)
            except libvirt.libvirtError as exc:
                log.debug("no block info for %s %s: %s", dom.name(), target, exc)
        return lt.domain_info(xml, state=state, reason=reason, persistent=bool(dom.isPersistent()), block_sizes=sizes)

    # ------------------------------------------------------------------ port: reading

    def _static(self, conn: libvirt.virConnect) -> tuple[str, int]:
        """The host's capabilities XML and QEMU version, kept per connection for ``STATIC_MAX_AGE_S``
        (runs in a pool thread). Both wait in libvirtd while it probes an emulator it has not
        looked at yet (the first guest with that QEMU binary, or the first after it was upgraded:
        4 s for TCG on the lab), and an inventory waiting that long makes the host look down."""
        with self._lock:
            kept = self._static_facts
        if kept is not None and kept[0] is conn and time.monotonic() - kept[1] < STATIC_MAX_AGE_S:
            return kept[2], kept[3]
        caps, version = conn.getCapabilities(), conn.getVersion()
        with self._lock:
            self._static_facts = (conn, time.monotonic(), caps, version)
        return caps, version

    async def host_facts(self) -> HostFacts:
        def work(conn: libvirt.virConnect) -> HostFacts:
            caps, qemu_version = self._static(conn)
            info = conn.getInfo()  # [model, memory MiB, cpus, MHz, nodes, sockets, cores, threads]
            total, available = self._memory(conn, int(info[1]))
            try:
                networks = conn.listNetworks()
            except libvirt.libvirtError as exc:
                if _code(exc) not in _NO_DRIVER:
                    raise
                networks = []
            return lt.host_facts(
                capabilities_xml=caps,
                node_info=info,
                hostname=conn.getHostname(),
                libvirt_version=conn.getLibVersion(),
                qemu_version=qemu_version,
                memory_total=total,
                memory_available=available,
                networks=networks,
            )

        return await self._call("getCapabilities", work, retry=True)

    async def ping(self, timeout_s: float | None = None) -> None:
        """virConnectGetLibVersion: a round trip to libvirtd on the (re)opened connection. At
        most one ping runs in a thread: a caller while one is still blocked in libvirt (a hung
        libvirtd) waits for that one instead of taking another thread."""
        timeout = timeout_s or min(self.timeout_s, 10.0)
        running = self._ping
        if running is None or running.done():

            def work() -> None:
                conn = self._connection()
                try:
                    conn.getLibVersion()
                except libvirt.libvirtError:
                    self._forget(conn)
                    raise

            running = self._ping = asyncio.get_running_loop().run_in_executor(self._pool, work)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(running)
        except TimeoutError:
            raise le.timeout_error("getLibVersion", self.uri, timeout) from None
        except libvirt.libvirtError as exc:
            raise self._error(exc, "getLibVersion") from exc

    @staticmethod
    def _memory(conn: libvirt.virConnect, info_mib: int) -> tuple[int, int]:
        """(total, available) bytes (``lt.total_memory``, ``lt.available_memory``). Available =
        free plus what the kernel can reclaim at once (buffers, page cache): on a long-running
        host "free" alone is mostly eaten by the page cache; virNodeGetFreeMemory when the node
        memory statistics say nothing."""
        try:
            stats = conn.getMemoryStats(lt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        except libvirt.libvirtError as exc:
            if _code(exc) not in _NO_DRIVER:
                raise
            stats = {}
        return lt.total_memory(stats, info_mib), lt.available_memory(stats) or int(conn.getFreeMemory())

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

    async def domain_xml(self, name_or_uuid: str, *, migratable: bool = True, secure: bool = True) -> str:
        flags = lt.domain_xml_flags(migratable=migratable, secure=secure)
        return await self._call("XMLDesc", lambda c: self._lookup(c, name_or_uuid).XMLDesc(flags), retry=True)

    async def job_stats(self, name_or_uuid: str, *, completed: bool = False) -> JobStats:
        flags = lt.job_stats_flags(completed=completed)

        def work(conn: libvirt.virConnect) -> JobStats:
            return _job_stats(self._lookup(conn, name_or_uuid), flags, completed)

        return await self._call("jobStats", work, retry=True)

    async def remote_completed_job(self, target_uri: str, name_or_uuid: str) -> JobStats:
        uri = self._peer_uris.get(target_uri, target_uri)

        def work() -> JobStats:
            remote = libvirt.open(uri)
            try:
                stats = self._lookup(remote, name_or_uuid).jobStats(lt.job_stats_flags(completed=True))
                return lt.job_stats_from_libvirt(stats)
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
            if dom.jobInfo()[0] == lt.VIR_DOMAIN_JOB_NONE:
                return False
            self._aborted.add(dom.UUIDString())
            try:
                dom.abortJob()
            except libvirt.libvirtError as exc:
                if _code(exc) == le.VIR_ERR_NO_DOMAIN:
                    return False  # the migration completed and took the domain with it
                if _code(exc) == le.VIR_ERR_OPERATION_INVALID and dom.jobInfo()[0] == lt.VIR_DOMAIN_JOB_NONE:
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

    async def migration_limits(self, name_or_uuid: str) -> tuple[int, int]:
        def work(conn: libvirt.virConnect) -> tuple[int, int]:
            dom = self._lookup(conn, name_or_uuid)
            return int(dom.migrateGetMaxDowntime(0)), int(dom.migrateGetMaxSpeed(0))

        return await self._call("migrateGetMaxDowntime", work, retry=True)

    async def suspend(self, name_or_uuid: str) -> None:
        await self._call("suspend", lambda c: self._lookup(c, name_or_uuid).suspend())

    async def resume(self, name_or_uuid: str) -> None:
        await self._call("resume", lambda c: self._lookup(c, name_or_uuid).resume())

    async def undefine_inactive(self, name_or_uuid: str) -> bool:
        def work(conn: libvirt.virConnect) -> bool:
            try:
                dom = self._lookup(conn, name_or_uuid)
            except libvirt.libvirtError as exc:
                if _code(exc) == le.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            if dom.isActive():
                return False
            dom.undefineFlags(0)
            return True

        return await self._call("undefine", work)

    async def destroy_incoming(self, uuid: str) -> bool:
        def work(conn: libvirt.virConnect) -> bool:
            try:
                dom = conn.lookupByUUIDString(uuid)
            except libvirt.libvirtError as exc:
                if _code(exc) == le.VIR_ERR_NO_DOMAIN:
                    return False
                raise
            state, reason = dom.state()
            persistent = bool(dom.isPersistent())
            if persistent or not lt.paused_by_libvirt(state, reason):
                raise le.not_incoming(
                    dom.name(), uuid, self.uri, persistent=persistent, state=lt.domain_state(state).name.lower()
                )
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if _code(exc) == le.VIR_ERR_OPERATION_TIMEOUT:  # its job lock, held for good
                    raise le.incoming_stuck(dom.name(), uuid, self.uri, exc.get_error_message() or str(exc)) from exc
                # gone or not running: libvirt removed it meanwhile (a transient domain ends so)
                if _code(exc) not in (le.VIR_ERR_NO_DOMAIN, le.VIR_ERR_OPERATION_INVALID):
                    raise
            return True

        # outlasts libvirt's own wait for the domain's job lock, so that its answer is the one heard
        return await self._call("destroy", work, timeout_s=max(self.timeout_s, LIBVIRT_JOB_WAIT_S + 10.0))

    async def remote_resume(self, target_uri: str, name_or_uuid: str) -> bool:
        uri = self._peer_uris.get(target_uri, target_uri)

        def work() -> bool:
            remote = libvirt.open(uri)
            try:
                dom = self._lookup(remote, name_or_uuid)
                if dom.state()[0] != lt.VIR_DOMAIN_PAUSED:
                    return False
                dom.resume()
                return True
            finally:
                remote.close()

        return await self._remote("resume", uri, work)

    async def guest_ram_resident(self, name_or_uuid: str) -> int:
        """From the QEMU process's smaps (libvirt's pid file under /run/libvirt/qemu): local
        qemu:///system only; 0 when it cannot be read."""

        def name(conn: libvirt.virConnect) -> tuple[str, int]:
            dom = self._lookup(conn, name_or_uuid)
            return dom.name(), int(dom.maxMemory()) * 1024

        if not self.uri.startswith("qemu:///system"):
            return 0
        domain, memory = await self._call("lookupByName", name, retry=True)

        def read() -> int:
            try:
                pid = int(open(f"/run/libvirt/qemu/{domain}.pid").read().strip())  # noqa: SIM115
                with open(f"/proc/{pid}/smaps") as f:
                    return lt.guest_ram_resident(f.read(), memory)
            except (OSError, ValueError):
                return 0

        return await asyncio.to_thread(read)

    async def memory_rss(self, name_or_uuid: str) -> int:
        def work(conn: libvirt.virConnect) -> int:
            dom = self._lookup(conn, name_or_uuid)
            if not dom.isActive():
                return 0
            return int(dom.memoryStats().get("rss", 0)) * 1024

        return await self._call("memoryStats", work, retry=True)

    async def dirty_rate(self, name_or_uuid: str, seconds: int) -> float:
        """Page sampling only: QEMU 7.2's dirty-bitmap mode kills a TCG guest (seen in the lab)."""

        def start(conn: libvirt.virConnect) -> None:
            self._lookup(conn, name_or_uuid).startDirtyRateCalc(seconds, lt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)

        def read(conn: libvirt.virConnect) -> float | None:
            dom = self._lookup(conn, name_or_uuid)
            for _dom, stats in conn.domainListGetStats([dom], lt.VIR_DOMAIN_STATS_DIRTYRATE):
                return lt.dirty_rate_of(stats)
            return None

        try:
            await self._call("startDirtyRateCalc", start)
        except FerryError as exc:
            if exc.reason not in ("NOT_SUPPORTED", "ARGUMENT_UNSUPPORTED", "CONFIG_UNSUPPORTED"):
                raise
            raise FailedPrecondition(
                f"libvirt on {self.uri} cannot calculate the dirty rate of {name_or_uuid}: {exc.message}",
                reason="DIRTY_RATE_UNSUPPORTED",
                hint="needs libvirt >= 7.2 and QEMU >= 5.2; the prediction is made without it",
            ) from exc
        await asyncio.sleep(seconds)
        for _ in range(50):
            rate = await self._call("domainListGetStats", read, retry=True)
            if rate is not None:
                return rate
            await asyncio.sleep(0.1)
        raise le.timeout_error("startDirtyRateCalc", self.uri, seconds + 5.0)

    # ------------------------------------------------------------------ port: CPU and peers

    async def compare_cpu(self, cpu_xml: str, *, arch: str, machine: str, virttype: str, emulator: str) -> str:
        """virConnectCompareHypervisorCPU with FAIL_INCOMPATIBLE: libvirt then says why (the
        error's detail names the missing features). Decided on the error code: CPU_INCOMPATIBLE
        -> the explanation; a broken connection or a timeout -> raised as usual; a driver without
        the call -> "" (logged: cannot tell); anything else (unknown model, machine type or
        emulator) -> FailedPrecondition CPU_CHECK_FAILED."""
        flags = lt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE

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
        policy: ConvergencePolicy | None = None,
        resume_postcopy: bool = False,
    ) -> None:
        """Peer-to-peer migration with migrateToURI3 (flags and params: ``lt.migration_flags`` and
        ``lt.migration_params``) on a connection of its own, so statistics, tuning and abort on the
        shared connection stay responsive. Past ``timeout_s`` the job is aborted and
        DeadlineExceeded raised. ``resume_postcopy``: the same call with libvirt's post-copy
        recovery flag, after the link of a post-copy migration broke (no abort then: a
        post-copy job cannot be aborted).

        A failure after our own abort is Aborted whatever libvirt said (the target's error may
        come back instead of "aborted"). A failure that may be the target's connection is
        checked by opening the target: unreachable -> Unavailable TARGET_UNREACHABLE.
        """
        flags = lt.migration_flags(
            options,
            copy_disks=lt.copies_disks(options, migrate_disks),
            policy=policy,
            resume_postcopy=resume_postcopy,
            tls=self.migration_tls,
        )
        params = lt.migration_params(
            options,
            destination_xml=destination_xml,
            migrate_disks=migrate_disks,
            migrate_uri=migrate_uri,
            policy=policy,
        )
        uuid = (await self.get_domain(name_or_uuid)).uuid
        self._aborted.discard(uuid)

        own_link = [False]  # whether our connection to libvirtd outlived a failed call

        def work() -> None:
            # its own connection: calls on the connection that carries a running
            # migrateToURI3 can block for the whole job (seen: jobStats and abortJob stuck
            # for 60 s while a second connection answered at once)
            conn = libvirt.open(self.uri)
            try:
                conn.lookupByUUIDString(uuid).migrateToURI3(target_uri, params, flags)
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    own_link[0] = conn.isAlive() == 1 and conn.getLibVersion() > 0
                raise
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()

        log.info(
            "migrateToURI3 %s -> %s flags=%#x params=%s",
            uuid,
            target_uri,
            flags,
            lt.loggable_params(params),
        )
        try:
            await self._in_thread(work, timeout_s)
        except TimeoutError:
            if resume_postcopy:
                raise le.timeout_error("migrateToURI3 (post-copy resume)", self.uri, timeout_s) from None
            log.error("migration of %s exceeded %.0f s: aborting it", uuid, timeout_s)
            try:
                await self.abort_job(uuid)
            except FerryError as exc:
                log.error("abort of %s failed: %s: %s", uuid, exc.reason, exc)
            raise le.timeout_error("migrateToURI3", self.uri, timeout_s) from None
        except libvirt.libvirtError as exc:
            raise await self._migrate_error(exc, uuid, target_uri, own_link_alive=own_link[0]) from exc
        finally:
            self._aborted.discard(uuid)

    async def _migrate_error(
        self, exc: libvirt.libvirtError, uuid: str, target_uri: str, *, own_link_alive: bool = False
    ) -> FerryError:
        call = "migrateToURI3"
        if uuid in self._aborted:
            return Aborted(
                f"{call} on {self.uri}: {exc.get_error_message()}",
                reason="MIGRATION_ABORTED",
                hint="the migration was aborted on request; the guest keeps running on the source",
            )
        code = _code(exc)
        unreachable = le.is_unreachable(code, exc.get_error_domain() or 0)
        if code == le.VIR_ERR_OPERATION_FAILED or unreachable:
            if not await self._reachable(target_uri):
                return self._error(exc, call, peer=target_uri, peer_unreachable=True)
            if unreachable and own_link_alive:
                # the call's own connection to our libvirtd still works, and the target's answers
                # a new one: what closed was the link between them (a partition, seen on the lab)
                return self._error(exc, call, peer=target_uri, peer_link_lost=True)
        if code == le.VIR_ERR_INTERNAL_ERROR and await self._shares_host_uuid(target_uri):
            return self._error(exc, call, peer=target_uri, same_host_uuid=True)
        return self._error(exc, call, peer=target_uri)

    async def remote_host_uuid(self, uri: str) -> str:
        peer = self._peer_uris.get(uri, uri)

        def remote() -> str:
            conn = libvirt.open(peer)
            try:
                return lt.parse_capabilities(conn.getCapabilities()).host_uuid
            finally:
                conn.close()

        return await self._remote("getCapabilities", peer, remote)

    async def _shares_host_uuid(self, uri: str) -> bool:
        """Do this host's and ``uri``'s libvirtds report one host UUID? (a state probe: libvirt
        refuses such a migration with an internal error, "to the same host"). False when
        either cannot be asked."""
        try:
            own = (await self.host_facts()).host_uuid
            theirs = await self.remote_host_uuid(uri)
        except FerryError as exc:
            log.info("cannot compare the host UUIDs of %s and %s: %s: %s", self.uri, uri, exc.reason, exc)
            return False
        return bool(own) and own.lower() == theirs.lower()

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
