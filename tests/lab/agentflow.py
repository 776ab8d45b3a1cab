"""Move a guest between two lab hosts through the agents' gRPC API, as an operator's script (and
later the coordinator) does it -- nothing here talks to libvirt directly:

    source GetDomain(include_xml) -> plan the disks (ferry.diskplan) -> target
    PrepareIncoming -> source Migrate (progress streamed) to the target's advertised libvirt URI
    -> target CommitIncoming; on a failed Migrate: target CleanupIncoming, then the error.

Also the lab tests' guest bookkeeping (``remove_guest``) and disk probes (``marker``).

Import it from a test in tests/lab as ``from agentflow import ...``.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import grpc

from ferry import convert
from ferry.diskplan import plan_disks
from ferry.errors import FerryError
from ferry.lab import Lab
from ferry.lab.topology import IMAGE_DIR
from ferry.model import HostMapping, MigrationOptions, StorageMode
from ferry.rpc import create_channel, from_rpc_error
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import types_pb2 as tpb

MiB = 1 << 20
CALL_S = 60.0  # deadline of every call but Migrate
MIGRATE_S = 300.0  # deadline of the Migrate stream

OnProgress = Callable[[tpb.MigrationProgress], Awaitable[None] | None]


@asynccontextmanager
async def agent(lab: Lab, host: str) -> AsyncIterator[agrpc.AgentStub]:
    """A stub for ``host``'s agent over its unix socket (reachable from the test process)."""
    async with create_channel(lab.agent_address(host), tls=lab.client_tls()) as channel:
        yield agrpc.AgentStub(channel)


@dataclass
class MigrationRun:
    """What one migration through the agents returned."""

    vm: str
    source: str
    target: str
    target_uri: str = ""
    prepare: apb.PrepareIncomingResponse | None = None
    progress: list[tpb.MigrationProgress] = field(default_factory=list)
    result: apb.MigrateResult | None = None
    wall_s: float = 0.0  # Migrate call only (prepare and commit excluded)

    def phases(self) -> list[int]:
        """The phases the progress stream went through, in order, without repeats."""
        return [p for i, p in enumerate(x.phase for x in self.progress) if i == 0 or self.progress[i - 1].phase != p]

    def summary(self) -> str:
        phases = ",".join(tpb.MigrationPhase.Name(p).removeprefix("MIGRATION_PHASE_") for p in self.phases())
        head = (
            f"{self.vm} {self.source} -> {self.target}: Migrate wall {self.wall_s:.2f} s, "
            f"{len(self.progress)} progress events ({phases or 'none'})"
        )
        if self.result is None:
            return head + ", no result"
        job = self.result.job
        return (
            f"{head}, job {job.time_elapsed_ms} ms, downtime {job.downtime_ms} ms, "
            f"memory {job.memory_processed / MiB:.0f} MiB, disk {job.disk_processed / MiB:.0f} MiB, "
            f"{job.iterations} iterations"
        )


class MigrationFailed(Exception):
    """Migrate failed; the target's prepare was cleaned up (``cleanup``; None if that failed too,
    see ``cleanup_error``)."""

    def __init__(
        self,
        error: FerryError,
        run: MigrationRun,
        cleanup: apb.CleanupIncomingResponse | None,
        cleanup_error: FerryError | None,
    ) -> None:
        super().__init__(f"migration of {run.vm} failed: {error.reason}: {error}")
        self.error = error
        self.run = run
        self.cleanup = cleanup
        self.cleanup_error = cleanup_error


async def migrate(
    lab: Lab,
    vm: str,
    src: str,
    dst: str,
    *,
    storage: StorageMode,
    mapping: HostMapping | None = None,
    options: MigrationOptions | None = None,
    on_progress: OnProgress | None = None,
    migration_id: str = "",
    progress_interval_ms: int = 200,
    forge: Callable[[str], str] | None = None,
) -> MigrationRun:
    """Migrate ``vm`` from lab host ``src`` to ``dst`` (see the module docstring).

    ``options`` defaults to the model's (persist on the target, undefine the source); its
    storage is replaced by ``storage``. ``on_progress`` sees every progress event (it may be a
    coroutine function, e.g. one that calls AbortMigration). ``migration_id`` defaults to
    "agentflow-VM" (no coordinator record has it, so no coordinator touches the prepare).
    ``forge`` rewrites the destination XML the source is given (a coordinator that lies).
    Raises FerryError when the prepare is refused (nothing to clean up) and MigrationFailed
    when Migrate fails.
    """
    mapping = mapping or HostMapping()
    migration_id = migration_id or f"agentflow-{vm}"
    options = replace(options or MigrationOptions(), storage=storage)
    run = MigrationRun(vm=vm, source=src, target=dst)
    async with agent(lab, src) as source, agent(lab, dst) as target:
        try:
            got = await source.GetDomain(apb.GetDomainRequest(name=vm, include_xml=True), timeout=CALL_S)
            facts = (await target.GetInventory(apb.GetInventoryRequest(), timeout=CALL_S)).host
            domain = convert.domain_from_pb(got.domain)
            plans = plan_disks(domain.disks, storage, options.migrate_disks, mapping)
            run.target_uri = facts.libvirt_uri
            run.prepare = await target.PrepareIncoming(
                apb.PrepareIncomingRequest(
                    domain_xml=got.xml,
                    disks=[convert.disk_plan_to_pb(p) for p in plans],
                    mapping=convert.mapping_to_pb(mapping),
                    storage=convert.storage_mode_to_pb(storage),
                    migration_id=migration_id,
                ),
                timeout=CALL_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
        started = time.monotonic()
        try:
            stream = source.Migrate(
                apb.MigrateRequest(
                    domain=vm,
                    target_uri=run.target_uri,
                    destination_xml=forge(run.prepare.destination_xml) if forge else run.prepare.destination_xml,
                    options=convert.options_to_pb(options),
                    migration_id=migration_id,
                    progress_interval_ms=progress_interval_ms,
                ),
                timeout=MIGRATE_S,
            )
            async for event in stream:
                if event.HasField("progress"):
                    run.progress.append(event.progress)
                    if on_progress is not None:
                        maybe = on_progress(event.progress)
                        if inspect.isawaitable(maybe):
                            await maybe
                else:
                    run.result = event.result
        except grpc.aio.AioRpcError as exc:
            run.wall_s = time.monotonic() - started
            error = from_rpc_error(exc)
            cleanup, cleanup_error = None, None
            try:
                cleanup = await target.CleanupIncoming(
                    apb.CleanupIncomingRequest(prepare_id=run.prepare.prepare_id), timeout=CALL_S
                )
            except grpc.aio.AioRpcError as cexc:
                cleanup_error = from_rpc_error(cexc)
            raise MigrationFailed(error, run, cleanup, cleanup_error) from exc
        run.wall_s = time.monotonic() - started
        try:
            await target.CommitIncoming(apb.CommitIncomingRequest(prepare_id=run.prepare.prepare_id), timeout=CALL_S)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from exc
    return run


# ---------------------------------------------------------------- lab bookkeeping and probes


async def remove_guest(lab: Lab, name: str) -> None:
    """Whatever is left of guest ``name`` anywhere in the lab: its domain on every host, its
    disks (host-local and shared) and any prepare recorded for it."""
    for host in lab.hosts():
        lab.virsh(host, "destroy", name, check=False)
        lab.virsh(host, "undefine", name, check=False)
        lab.host_exec(host, "sh", "-c", f"rm -f {IMAGE_DIR}/{name}-vd*.qcow2", check=False)
        try:
            async with agent(lab, host) as stub:
                listed = await stub.ListPrepares(apb.ListPreparesRequest(), timeout=CALL_S)
                for p in listed.prepares:
                    if p.domain_name == name:
                        await stub.CleanupIncoming(apb.CleanupIncomingRequest(prepare_id=p.prepare_id), timeout=CALL_S)
        except grpc.aio.AioRpcError:
            pass  # best effort: the lab goes down at the end of the session anyway
    for disk in lab.paths.shared.glob(f"{name}-vd*.qcow2"):
        disk.unlink(missing_ok=True)


def image_files(lab: Lab, host: str) -> list[str]:
    """The files in ``host``'s local image directory (full paths)."""
    return sorted(f"{IMAGE_DIR}/{name}" for name in lab.host_exec(host, "ls", "-A", IMAGE_DIR).stdout.split())


def sector0(lab: Lab, host: str, image: str) -> bytes:
    """The first 512 bytes the guest sees on ``image`` (read-only, shared lock: the guest may be
    running on it), read with qemu-io inside ``host``."""
    out = lab.host_exec(host, "qemu-io", "-r", "-U", "-c", "read -v 0 512", image).stdout
    data = bytearray()
    for line in out.splitlines():
        head, sep, rest = line.partition(":")
        if not sep or not re.fullmatch(r"[0-9a-f]{8}", head):
            continue
        data += bytes(int(x, 16) for x in rest.split()[:16])
    return bytes(data)


_MARKER = re.compile(rb"marker heartbeat=(\d+)")


def marker(lab: Lab, host: str, image: str) -> int:
    """The heartbeat number of the marker the guest last wrote to sector 0 (0: none)."""
    found = _MARKER.search(sector0(lab, host, image))
    return int(found.group(1)) if found else 0
