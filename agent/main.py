"""``ferry-agent --config agent.toml``: the agent process, one per hypervisor host.

Builds the libvirt adapter, the host system adapter, the prepare registry and the servicer,
serves them on every configured address (health checking and reflection included), serves its
Prometheus metrics (``[metrics]``, ``agent/metrics.py``), sweeps expired prepares at start and
every 30 s, and stops gracefully on SIGTERM/SIGINT.

Its Python dependencies come with ``pip install 'ferry[agent]'``; the modules needing them are
imported only in ``serve``, so without them ``ferry-agent`` says what to install.

Exit status: 0 after a clean stop, 2 for a bad config, 1 when it cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc

from ferry.agent.advertised import AdvertisedUri
from ferry.agent.config import AgentConfig, load_config
from ferry.agent.fencing import LeaderFence
from ferry.agent.health import LibvirtWatch
from ferry.agent.hostsystem import LocalHostSystem
from ferry.agent.inventory import Inventory
from ferry.agent.migration import JobObserver, MigrationDriver
from ferry.agent.prepare import PrepareService
from ferry.agent.registration import start_registration
from ferry.agent.service import SERVICE_NAME, AgentServicer
from ferry.agent.source_disks import SourceDisks
from ferry.agent.source_records import SourceRecords
from ferry.agent.targets import MigrationTargets
from ferry.agent.tls_material import migration_tls_problem
from ferry.daemon import RestartRequested, first_ended, run_daemon, tls_in
from ferry.errors import FerryError
from ferry.keys import LEADER_KEY
from ferry.ports import HostSystem, Hypervisor
from ferry.rpc import RpcObserver, create_server
from ferry.store import Store
from ferry.v1 import agent_pb2_grpc as agrpc

log = logging.getLogger("ferry.agent")

SWEEP_INTERVAL_S = 30.0
GRACE_S = 5.0
# the agent extra's modules (pyproject.toml), checked before anything imports them
REQUIRES = ("libvirt", "prometheus_client", "pythonjsonlogger", "etcd3aio")
QEMU_HOOK = "/etc/libvirt/hooks/qemu.d/ferry"  # the target's check of incoming XML (agent/incoming.py)
LIBVIRT_WATCH_S = 1.0  # how often libvirtd is pinged (its state is in the registration)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def build_agent(
    config: AgentConfig,
    hypervisor: Hypervisor,
    host: HostSystem,
    clock: Callable[[], datetime] = _utc_now,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    jobs: JobObserver | None = None,
    tls_problem: Callable[[], str] = lambda: "",
    targets: MigrationTargets | None = None,
) -> AgentServicer:
    """The servicer wired to the given ports (tests pass fakes; ``main`` the real adapters).
    ``jobs`` hears about every migration job the driver runs (the metrics). ``tls_problem`` says
    why the host cannot migrate over TLS ("" = it can; ``serve`` checks QEMU's certificate files,
    ``tls_material.migration_tls_problem``). ``targets``: where Migrate may go, by default the
    config's ``migration_targets`` and the registered hosts once ``serve`` attaches the
    registration's store."""
    inventory = Inventory(
        hypervisor,
        host,
        libvirt_uri=config.advertise_libvirt_uri,
        migration_address=config.migration_address,
        migration_tls_problem=tls_problem,
        advertised=AdvertisedUri(hypervisor, config.advertise_libvirt_uri),
    )
    prepare = PrepareService(
        hypervisor, host, Path(config.state_dir), default_ttl_s=config.prepare_ttl_s, clock=clock, host_name=config.name
    )
    driver = MigrationDriver(hypervisor, clock=monotonic, observer=jobs)
    source_disks = SourceDisks(
        hypervisor,
        host,
        host_name=config.name,
        records=SourceRecords(Path(config.state_dir)),
        prepared=prepare.list,
        clock=clock,
    )
    return AgentServicer(
        hypervisor=hypervisor,
        inventory=inventory,
        prepare=prepare,
        driver=driver,
        source_disks=source_disks,
        targets=targets or MigrationTargets(config.name, config.migration_targets),
        fence=LeaderFence(Path(config.state_dir) / "leader-term"),
    )


def leader_term_in(store: Store) -> Callable[[], Awaitable[int | None]]:
    """The term of the coordinator that etcd's ``leader`` key names now (its create revision)."""

    async def current() -> int | None:
        entry = await store.get(LEADER_KEY)
        return entry.create_revision if entry is not None else None

    return current


def register(servicer: AgentServicer) -> Callable[[grpc.aio.Server], list[str]]:
    def add(server: grpc.aio.Server) -> list[str]:
        agrpc.add_AgentServicer_to_server(servicer, server)
        return [SERVICE_NAME]

    return add


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """Log what a part of a periodic round raises instead of raising it: the loop outlives it, and
    its next round tries again."""
    try:
        yield
    except FerryError as exc:
        log.warning("%s failed: %s: %s", what, exc.reason, exc)
    except Exception:  # our side (the state directory full or read-only for a while, a bug): with its traceback
        log.exception("%s failed; the next round tries again", what)


async def _sweep(servicer: AgentServicer) -> None:
    """One round: finish the expired prepares, forget old outgoing migration records. A part that
    fails is logged (``_logged``); the other still runs."""
    with _logged("prepare sweep"):
        for line in await servicer.prepare.sweep():
            log.info("prepare sweep: %s", line)
    with _logged("outgoing migration record sweep"):
        for migration_id in await servicer.source_disks.sweep():
            log.info("forgot the outgoing migration record %s (older than a week)", migration_id)


async def _sweep_forever(servicer: AgentServicer, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """``_sweep`` every ``SWEEP_INTERVAL_S`` until cancelled; a round that fails does not end it."""
    while True:
        await _sweep(servicer)
        await sleep(SWEEP_INTERVAL_S)


def _addresses(listen: Sequence[str], ports: Sequence[int]) -> str:
    return ", ".join(
        a if a.startswith("unix:") else f"{a.rsplit(':', 1)[0]}:{p}" for a, p in zip(listen, ports, strict=True)
    )


async def serve(config: AgentConfig) -> None:
    from ferry.agent.libvirt_hypervisor import LibvirtHypervisor  # libvirt-python: the agent extra
    from ferry.agent.metrics import AgentMetrics
    from ferry.metrics import RpcMetrics, StoreMetrics, certificate_files, exporter, new_registry

    certificates = certificate_files(tls_in(config))
    if config.migration_tls:  # QEMU's: an expired one fails every migration from and to this host
        qemu = Path(config.migration_tls_dir)
        certificates += [("migration", qemu / "server-cert.pem"), ("migration: client", qemu / "client-cert.pem")]
        certificates += [("migration: ca", qemu / "ca-cert.pem")]
    registry = new_registry("agent", certificates)
    metrics = AgentMetrics(registry)
    rpc: RpcObserver = RpcMetrics(registry)
    hypervisor = LibvirtHypervisor(config.libvirt_uri, config.libvirt_timeout_s, migration_tls=config.migration_tls)
    api_ca = config.tls.ca if config.tls is not None else None
    if not config.migration_tls:
        log.warning("migration streams of %s are NOT encrypted (migration_tls = false)", config.name)
    elif problem := migration_tls_problem(True, config.migration_tls_dir, api_ca):
        log.warning("%s: preflight will block migrations from and to this host", problem)
    host = LocalHostSystem(config.image_dirs, config.shared_dirs, bridges=config.bridges)
    servicer = build_agent(
        config,
        hypervisor,
        host,
        jobs=metrics,
        tls_problem=lambda: migration_tls_problem(config.migration_tls, config.migration_tls_dir, api_ca),
    )
    metrics.watch_prepares(servicer.prepare.list)
    server, ports = create_server(config.listen, register(servicer), tls=config.tls, observer=rpc)
    endpoint = exporter(registry, config.metrics, config.tls)
    if config.metrics.enabled:
        metrics_ports = await endpoint.start(config.metrics_listen)
        log.info("metrics on %s (%s)", _addresses(config.metrics_listen, metrics_ports), endpoint.scheme)
    await server.start()
    if not Path(QEMU_HOOK).exists():
        log.warning(
            "%s is missing: this host's libvirtd starts incoming guests with whatever XML their source was given "
            "(install deploy/libvirt/ferry-qemu-hook there and restart libvirtd)",
            QEMU_HOOK,
        )
    log.info(
        "agent %s (pid %d) serving on %s; libvirt %s, advertised as %s",
        config.name,
        os.getpid(),
        _addresses(config.listen, ports),
        config.libvirt_uri,
        config.advertise_libvirt_uri,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sweeper = asyncio.create_task(_sweep_forever(servicer), name="prepare sweep")
    registration = start_registration(config, StoreMetrics(registry))  # only with a [registry] section
    watch = LibvirtWatch(
        hypervisor,
        registration.registration.set_libvirt_up if registration is not None else lambda up: None,
        interval_s=LIBVIRT_WATCH_S,
        name=config.name,
    )
    watcher = asyncio.create_task(watch.run(), name="libvirt watch")
    if registration is not None:
        servicer.targets.use_store(registration.store)  # Migrate goes only to registered hosts
        servicer.fence.current_term = leader_term_in(registration.store)  # the fence's judge after a restore
    ended: asyncio.Task[None] | None = None
    try:
        # an agent whose registration, libvirt watch or sweeper died would go on serving while it
        # no longer registers, reports libvirtd or cleans up
        ended = await first_ended(stop, [sweeper, watcher, *([registration.task] if registration else [])], log)
        log.info("stopping (grace %.0f s)", GRACE_S)
    finally:
        watcher.cancel()
        sweeper.cancel()
        if registration is not None:
            await registration.close()  # deregister first: coordinators stop calling us
        await server.stop(GRACE_S)
        await endpoint.close()
        hypervisor.close()
    log.info("stopped")
    if ended is not None:  # a fresh process, rather than an agent that silently no longer registers
        raise RestartRequested(f"its {ended.get_name()} task ended")


def main(argv: Sequence[str] | None = None) -> int:
    return run_daemon(
        "ferry-agent",
        "Ferry agent: gRPC over the local libvirt",
        load_config,
        serve,
        argv,
        extra="agent",
        requires=REQUIRES,
    )


if __name__ == "__main__":
    sys.exit(main())
