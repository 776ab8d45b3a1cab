"""The agent announces itself in the coordinator's store: ``hosts/<name>`` under a lease.

The key lives as long as the agent keeps its lease alive, so the coordinators see a host come and
go without polling it: a crashed agent's key disappears ``ttl_s`` after its last keepalive; a
clean stop deletes it at once.

:class:`Registration` runs beside the agent's gRPC server:

- grant a lease, create ``hosts/<name>``; a key left by a previous run of this agent (another
  lease, not yet expired) is replaced;
- renew the lease every ``ttl_s / 3``;
- watch the key: when it is deleted, or written under another lease, read it to see whether it
  is still ours (no read per renewal: at 1,000 agents those were 300 reads/s on etcd);
- after a lost lease (an etcd outage longer than the TTL, a revoke) register again with a new one;
- if another live agent registers the same name, do not fight over the key (log it, wait until
  that key is gone): a duplicate name is a configuration error the operator must fix;
- :meth:`stop` revokes the lease, which deletes the key.

The value is JSON (``ferry/registry.HostRegistration``): name, agent gRPC address, libvirt URI, migration
address, registration time, and whether the agent's libvirtd answers (:meth:`Registration.set_libvirt_up`,
fed by ``agent/health.py``): a change is written at once (compare-and-set on the key, same lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from ferry.agent.config import AgentConfig
from ferry.errors import AlreadyExists, FerryError, InvalidArgument
from ferry.keys import host_key
from ferry.registry import HostRegistration
from ferry.store import Conflict, EventKind, LeaseLost, Resync, Store
from ferry.timed_store import StoreObserver, TimedStore

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Registration:
    """Keeps ``hosts/<name>`` alive under a lease while :meth:`run` runs."""

    def __init__(
        self,
        store: Store,
        name: str,
        address: str,
        libvirt_uri: str = "",
        migration_address: str = "",
        ttl_s: int = 10,
        clock: Clock = _utc_now,
    ) -> None:
        if ttl_s < 2:
            raise InvalidArgument(
                f"registration ttl {ttl_s} s is too short",
                reason="CONFIG_INVALID",
                hint="use ttl_s of at least 2 (10 is the default)",
            )
        self.store = store
        self.name = name
        self.address = address
        self.libvirt_uri = libvirt_uri
        self.migration_address = migration_address
        self.ttl_s = ttl_s
        self._clock = clock
        self._lease: int | None = None
        self._previous_lease: int | None = None  # ours, given up after an outage; may still hold the key
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.registered = asyncio.Event()  # set while our key is in the store (as far as we know)
        self.registrations = 0  # how many times the key was (re)written
        self.libvirt_up = True
        self._registered_at: datetime | None = None  # this claim's time, kept by rewrites
        self._changed = asyncio.Event()  # the value changed: rewrite the key
        self._doubt = asyncio.Event()  # the key may not be ours any more: read it
        self._claimed_at = 0  # the store revision of our last write of the key

    @property
    def key(self) -> str:
        return host_key(self.name)

    def value(self) -> HostRegistration:
        at = self._registered_at or self._clock().astimezone(UTC)
        return HostRegistration(
            self.name, self.address, self.libvirt_uri, self.migration_address, at, libvirt_up=self.libvirt_up
        )

    def set_libvirt_up(self, up: bool) -> None:
        """Whether libvirtd answers; a change is written to the key as soon as possible."""
        if up != self.libvirt_up:
            self.libvirt_up = up
            self._changed.set()

    async def run(self) -> None:
        """Register and stay registered until :meth:`stop`. Store errors are retried, never raised."""
        self._task = asyncio.current_task()
        backoff = 0.2
        while not self._stopped.is_set():
            try:
                lease = await self.store.grant_lease(self.ttl_s)
                self._lease = lease
                if await self._claim(lease):
                    backoff = 0.2
                    await self._keep(lease)
                    self._previous_lease = lease
            except FerryError as exc:
                log.warning("registration of %s: %s: %s; retrying", self.name, exc.reason, exc)
            self.registered.clear()
            await self._pause(backoff)
            backoff = min(backoff * 2, self.ttl_s / 3)

    async def stop(self) -> None:
        """Deregister: revoke the lease (its key goes with it). Bounded; best effort."""
        self._stopped.set()
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()  # a create in flight must not outlive the revoke below
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.registered.clear()
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(FerryError, TimeoutError):
                async with asyncio.timeout(min(2.0, self.ttl_s / 2)):
                    await self.store.revoke(lease)
            log.info("deregistered %s", self.name)

    # -- internals ------------------------------------------------------------------------------

    async def _claim(self, lease: int) -> bool:
        """Write our key under ``lease``: create it, or replace our own previous run's key."""
        first = self.registrations == 0
        previous, self._previous_lease = self._previous_lease, None
        self._registered_at = None  # a new claim: a new registration time
        self._registered_at = self.value().registered_at
        self._changed.clear()  # the value written below is the newest
        while not self._stopped.is_set():
            try:
                self._claimed_at = await self.store.create(self.key, self.value().encode(), lease=lease)
                break
            except AlreadyExists:
                pass
            current = await self.store.get(self.key)
            if current is None:
                continue
            if not first and current.lease not in (lease, previous):
                # after we were registered, someone else took the name: do not fight over it
                log.error(
                    "host name %s is registered by another agent (%s); waiting until that key is gone",
                    self.name,
                    _address(current.value),
                )
                await self.store.revoke(lease)
                self._lease = None
                await self._wait_gone()
                return False
            try:
                self._claimed_at = await self.store.update(
                    self.key, self.value().encode(), current.mod_revision, lease=lease
                )
                log.info(
                    "replaced the registration of %s left by a previous run (%s)", self.name, _address(current.value)
                )
                break
            except Conflict:
                continue
        else:
            return False
        self.registrations += 1
        self.registered.set()
        if previous is not None:
            with contextlib.suppress(FerryError):
                await self.store.revoke(previous)
        log.info("registered %s at %s (lease %x, ttl %d s)", self.name, self.address, lease, self.ttl_s)
        return True

    async def _keep(self, lease: int) -> None:
        """Renew until the lease is lost, the key is no longer ours, or stop(); write a changed
        value at once. A watch on the key says when to check it is still ours; while the watch is
        not running (it failed), the key is read after every renewal instead."""
        self._doubt.clear()
        watcher = asyncio.get_running_loop().create_task(
            self._watch_key(lease, self._claimed_at + 1), name=f"registration watch {self.name}"
        )
        try:
            await self._renew(lease, watcher)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, FerryError):
                await watcher

    async def _renew(self, lease: int, watcher: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        renewed_at = loop.time()
        next_renewal = renewed_at + self.ttl_s / 3
        while not self._stopped.is_set():
            await self._pause(next_renewal - loop.time(), wake=(self._changed, self._doubt))
            if self._stopped.is_set():
                return
            if self._doubt.is_set() or (watcher.done() and loop.time() >= next_renewal):
                self._doubt.clear()
                try:
                    if not await self._still_ours(lease):
                        return
                except FerryError as exc:
                    log.info("registration of %s not checked yet (%s); retrying", self.name, exc.reason)
                    self._doubt.set()
                    await self._pause(min(0.5, self.ttl_s / 10))
                    continue
            if self._changed.is_set():
                self._changed.clear()
                await self._rewrite(lease)
            if loop.time() < next_renewal:
                continue
            next_renewal = loop.time() + self.ttl_s / 3
            try:
                async with asyncio.timeout(self.ttl_s / 3):
                    await self.store.keepalive(lease)
                renewed_at = loop.time()
            except LeaseLost:
                log.warning("registration lease of %s was lost; registering again", self.name)
                return
            except (FerryError, TimeoutError) as exc:
                if loop.time() - renewed_at >= self.ttl_s:
                    log.warning(
                        "registration of %s could not be renewed for %d s; registering again", self.name, self.ttl_s
                    )
                    return
                log.info(
                    "registration keepalive of %s failed (%s); retrying", self.name, getattr(exc, "reason", "TIMEOUT")
                )

    async def _still_ours(self, lease: int) -> bool:
        """Read the key: False (after giving the lease up) when it is gone or held by another lease."""
        current = await self.store.get(self.key)
        if current is not None and current.lease == lease:
            return True
        log.warning(
            "registration key of %s is %s; registering again",
            self.name,
            "gone" if current is None else "held by another lease",
        )
        with contextlib.suppress(FerryError):
            await self.store.revoke(lease)
        return False

    async def _watch_key(self, lease: int, start_revision: int) -> None:
        """Set ``_doubt`` when the key is deleted or written under another lease (or the watch
        lost history). The key is a prefix of other hosts' keys (host1, host10): those are skipped."""
        try:
            async with contextlib.aclosing(self.store.watch(self.key, start_revision)) as changes:
                async for change in changes:
                    if isinstance(change, Resync):
                        mine = [e for e in change.entries if e.key == self.key]
                        if not mine or mine[0].lease != lease:
                            self._doubt.set()
                    elif change.entry.key == self.key and (
                        change.kind is EventKind.DELETE or change.entry.lease != lease
                    ):
                        self._doubt.set()
        except FerryError as exc:
            log.warning("registration of %s: its watch failed (%s); checking the key at each renewal", self.name, exc)
        self._doubt.set()  # the watch ended: check now, then at each renewal

    async def _rewrite(self, lease: int) -> None:
        """Write the current value over our own key (same lease); on failure try again later."""
        try:
            current = await self.store.get(self.key)
            if current is None or current.lease != lease:
                return  # not ours any more: the renewal finds out and registers again
            await self.store.update(self.key, self.value().encode(), current.mod_revision, lease=lease)
            log.info("registration of %s updated: libvirtd %s", self.name, "up" if self.libvirt_up else "DOWN")
        except (FerryError, Conflict) as exc:
            log.info("registration of %s not updated yet (%s); retrying", self.name, getattr(exc, "reason", exc))
            self._changed.set()
            await self._pause(min(0.5, self.ttl_s / 10))

    async def _wait_gone(self) -> None:
        while not self._stopped.is_set():
            with contextlib.suppress(FerryError):
                if await self.store.get(self.key) is None:
                    return
            await self._pause(self.ttl_s / 3)

    async def _pause(self, seconds: float, *, wake: Sequence[asyncio.Event] = ()) -> None:
        """Sleep ``seconds``, less when stopped (or one of ``wake`` is set)."""
        if seconds <= 0 or any(e.is_set() for e in wake):
            return
        events = [self._stopped, *wake]
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


def _address(value: bytes) -> str:
    try:
        return HostRegistration.decode(value).address
    except FerryError:
        return "unreadable value"


class RunningRegistration:
    """A :class:`Registration` running as a task over its own store connection (the agent process)."""

    def __init__(self, registration: Registration, store: Store) -> None:
        self.registration = registration
        self.store = store
        self.task = asyncio.create_task(registration.run(), name=f"registration {registration.name}")

    async def close(self) -> None:
        """Deregister, then close the store connection."""
        await self.registration.stop()
        await self.store.close()


def start_registration(config: AgentConfig, observer: StoreObserver | None = None) -> RunningRegistration | None:
    """Register the agent per its ``[registry]`` section; None when the section is absent.
    ``observer`` (the metrics) hears how long each etcd call took."""
    r = config.registry
    if r is None:
        return None
    from ferry.certs import etcd_ca_warning
    from ferry.etcd_store import EtcdStore, EtcdTLS  # the etcd client only when registering

    if r.tls is None:
        log.warning("registering in etcd %s WITHOUT TLS ([registry] insecure = true)", ",".join(r.etcd_endpoints))
    elif warning := etcd_ca_warning(r.tls.ca, config.tls.ca if config.tls is not None else None):
        log.warning("%s", warning)
    tls = EtcdTLS.of(r.tls, r.server_name)
    # one quiet watch (our key): read on the event loop, no thread
    store: Store = EtcdStore(r.etcd_endpoints, r.prefix, tls=tls, timeout_s=max(1.0, r.ttl_s / 3), watch_threads=False)
    if observer is not None:
        store = TimedStore(store, observer)
    registration = Registration(
        store, config.name, r.address, config.advertise_libvirt_uri, config.migration_address, r.ttl_s
    )
    log.info(
        "registering %s at %s in etcd %s (prefix %s, ttl %d s)",
        config.name,
        r.address,
        ",".join(r.etcd_endpoints),
        r.prefix,
        r.ttl_s,
    )
    return RunningRegistration(registration, store)
