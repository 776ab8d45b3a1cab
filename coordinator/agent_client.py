"""``GrpcAgentClient``: the AgentClient port over a gRPC channel to one host's agent.

Thin: model -> protobuf (ferry.convert) -> the agent's RPC -> model. Every unary call has a
deadline; the Migrate stream has none of its own (the coordinator's phase deadline bounds it)
and ends when the caller stops iterating (the agent then leaves the libvirt job running).

Calls made while a migration is bound for logging (``ferry.logcontext``: the runner's tasks) carry
its id, VM and hosts as metadata, so the agent's log lines about it name them too.

Errors: a status the agent sent carries its Ferry error (reason and hint survive, through
``ferry.rpc.from_rpc_error``). A call that never reached the agent or got no answer in time (no
Ferry error in the status) becomes Unavailable ``AGENT_UNREACHABLE`` / DeadlineExceeded
``AGENT_TIMEOUT`` with a hint naming the host and address: ``transport_failure`` tells the two
apart without reading any message text.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ferry import convert
from ferry.convergence import ConvergencePolicy
from ferry.errors import DeadlineExceeded, FailedPrecondition, FerryError, Unavailable
from ferry.model import (
    CompletedJob,
    DiskPlan,
    DomainInfo,
    GuestLoad,
    HostMapping,
    Inventory,
    MigrationOptions,
    MigrationProgress,
    MigrationResult,
    PolicyAction,
    PreparedIncoming,
    PrepareRecord,
    Problem,
    StorageMode,
)
from ferry.ports import TuneResult
from ferry.rpc import Tls, call_metadata, create_channel, from_rpc_error, has_status_details
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import types_pb2 as tpb

AGENT_UNREACHABLE = "AGENT_UNREACHABLE"
AGENT_TIMEOUT = "AGENT_TIMEOUT"
AGENT_TOO_OLD = "AGENT_TOO_OLD"
_TRANSPORT_REASONS = frozenset({AGENT_UNREACHABLE, AGENT_TIMEOUT})


def transport_failure(err: FerryError) -> bool:
    """The call failed on the way (agent down, unreachable, no answer in time), not in the agent."""
    return err.reason in _TRANSPORT_REASONS


def agent_lost(err: FerryError) -> bool:
    """The agent (or its libvirtd) cannot be used right now: Unavailable or DeadlineExceeded."""
    return isinstance(err, (Unavailable, DeadlineExceeded))


@dataclass(eq=False)
class _Conn:
    """One channel to the agent and the calls running on it."""

    channel: grpc.aio.Channel
    stub: agrpc.AgentStub
    calls: int = 0
    retired: bool = False


class GrpcAgentClient:
    """One agent over gRPC. ``timeout_s`` is the deadline of quick calls; ``slow_timeout_s`` of
    those that may wait on disks or on an incoming job (PrepareIncoming, CleanupIncoming)."""

    def __init__(
        self,
        host: str,
        address: str,
        tls: Tls | None = None,
        *,
        timeout_s: float = 30.0,
        slow_timeout_s: float = 120.0,
        progress_interval_ms: int = 500,
    ) -> None:
        self.host = host
        self.address = address
        self._tls = tls
        self._timeout_s = timeout_s
        self._slow_timeout_s = slow_timeout_s
        self._progress_interval_ms = progress_interval_ms
        self._conn: _Conn | None = None
        self._retired: set[_Conn] = set()  # replaced, closed when their last call ends
        self._closing: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"GrpcAgentClient({self.host!r}, {self.address!r})"

    async def close(self) -> None:
        conns = [c for c in (self._conn, *self._retired) if c is not None]
        self._conn = None
        self._retired.clear()
        await asyncio.gather(*(c.channel.close() for c in conns), *self._closing, return_exceptions=True)

    @contextlib.contextmanager
    def _using(self) -> Iterator[_Conn]:
        """The current channel, counted as in use for the duration of one call."""
        if self._conn is None:
            # the agent's certificate must name its host (a DNS SAN): a registration whose
            # address points at another agent fails the TLS handshake
            channel = create_channel(self.address, tls=self._tls, server_name=self.host)
            self._conn = _Conn(channel, agrpc.AgentStub(channel))
        conn = self._conn
        conn.calls += 1
        try:
            yield conn
        finally:
            conn.calls -= 1
            if conn.retired and conn.calls == 0:
                self._close(conn)

    def _retire(self, conn: _Conn) -> None:
        """Stop using a channel that could not connect: gRPC would wait out its reconnect backoff
        before trying again, a new channel connects at the next call. Calls still running on the
        old one finish first; it is closed after the last."""
        if conn.retired:
            return
        conn.retired = True
        if self._conn is conn:
            self._conn = None
        if conn.calls == 0:
            self._close(conn)
        else:
            self._retired.add(conn)

    def _close(self, conn: _Conn) -> None:
        self._retired.discard(conn)
        task = asyncio.get_running_loop().create_task(conn.channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # ------------------------------------------------------------------ errors

    def _error(self, exc: grpc.RpcError, conn: _Conn, method: str = "") -> FerryError:
        err = from_rpc_error(exc)
        from_agent = has_status_details(exc)
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        if code == grpc.StatusCode.UNIMPLEMENTED and not from_agent:
            return FailedPrecondition(
                f"the agent on {self.host} ({self.address}) does not know {method or 'this call'}",
                reason=AGENT_TOO_OLD,
                hint=f"upgrade ferry-agent on {self.host}",
            )
        # without a Ferry error in it, UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED come from the way
        # there (no connection, no answer, the agent's server shutting down mid-call)
        if from_agent or code not in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.CANCELLED,
        ):
            return err
        if code != grpc.StatusCode.DEADLINE_EXCEEDED:
            self._retire(conn)
            return Unavailable(
                f"the agent on {self.host} ({self.address}) cannot be reached: {err.message}",
                reason=AGENT_UNREACHABLE,
                hint=f"check that ferry-agent runs on {self.host} and listens on {self.address}",
            )
        return DeadlineExceeded(
            f"the agent on {self.host} ({self.address}) did not answer in time: {err.message}",
            reason=AGENT_TIMEOUT,
            hint=f"check ferry-agent's log and libvirtd on {self.host}",
        )

    async def _call(self, method: str, request: object, *, slow: bool = False) -> object:
        with self._using() as conn:
            try:
                return await getattr(conn.stub, method)(
                    request, timeout=self._slow_timeout_s if slow else self._timeout_s, metadata=call_metadata()
                )
            except grpc.RpcError as exc:
                raise self._error(exc, conn, method) from None

    # ------------------------------------------------------------------ port

    async def inventory(self) -> Inventory:
        m = await self._call("GetInventory", apb.GetInventoryRequest())
        assert isinstance(m, apb.Inventory)
        return convert.inventory_from_pb(m)

    async def get_domain(
        self, vm: str, *, include_xml: bool = False, leader_term: int = 0, backing_fingerprints: bool = False
    ) -> tuple[DomainInfo, str]:
        m = await self._call(
            "GetDomain",
            apb.GetDomainRequest(
                name=vm, include_xml=include_xml, leader_term=leader_term, backing_fingerprints=backing_fingerprints
            ),
        )
        assert isinstance(m, apb.GetDomainResponse)
        return convert.domain_from_pb(m.domain), m.xml

    async def prepare_incoming(
        self,
        *,
        domain_xml: str,
        disks: Sequence[DiskPlan],
        mapping: HostMapping,
        storage: StorageMode,
        ttl_s: int,
        migration_id: str,
        dry_run: bool,
        leader_term: int = 0,
        shared_probes: Sequence[str] = (),
        block_devices: Mapping[str, str] | None = None,
        offline: bool = False,
    ) -> PreparedIncoming:
        request = apb.PrepareIncomingRequest(
            domain_xml=domain_xml,
            disks=[convert.disk_plan_to_pb(d) for d in disks],
            mapping=convert.mapping_to_pb(mapping),
            storage=convert.storage_mode_to_pb(storage),
            ttl_seconds=max(0, int(ttl_s)),
            migration_id=migration_id,
            dry_run=dry_run,
            leader_term=leader_term,
            shared_probes=list(shared_probes),
            block_devices=dict(block_devices or {}),
            offline=offline,
        )
        m = await self._call("PrepareIncoming", request, slow=True)
        assert isinstance(m, apb.PrepareIncomingResponse)
        return convert.prepared_from_pb(m)

    async def cleanup_incoming(
        self, prepare_id: str, *, discard_incoming: bool = False, leader_term: int = 0
    ) -> list[str]:
        request = apb.CleanupIncomingRequest(
            prepare_id=prepare_id, discard_incoming=discard_incoming, leader_term=leader_term
        )
        m = await self._call("CleanupIncoming", request, slow=True)
        assert isinstance(m, apb.CleanupIncomingResponse)
        return list(m.removed)

    async def commit_incoming(self, prepare_id: str, *, require_landed: bool = False, leader_term: int = 0) -> None:
        await self._call(
            "CommitIncoming",
            apb.CommitIncomingRequest(prepare_id=prepare_id, require_landed=require_landed, leader_term=leader_term),
        )

    async def list_prepares(self, *, leader_term: int = 0) -> list[PrepareRecord]:
        m = await self._call("ListPrepares", apb.ListPreparesRequest(leader_term=leader_term))
        assert isinstance(m, apb.ListPreparesResponse)
        return [convert.prepare_record_from_pb(p) for p in m.prepares]

    async def migrate(
        self,
        vm: str,
        *,
        target_uri: str,
        destination_xml: str,
        options: MigrationOptions,
        migration_id: str,
        migrate_uri: str = "",
        disks: Sequence[DiskPlan] = (),
        policy: ConvergencePolicy | None = None,
        predicted_converges: bool | None = None,
        leader_term: int = 0,
        target_host: str = "",
    ) -> AsyncIterator[MigrationProgress | PolicyAction | MigrationResult]:
        """Progress snapshots and policy actions, then one MigrationResult; a failed job raises
        its FerryError. Stopping the iteration cancels the stream (the job keeps running on the
        source)."""
        request = apb.MigrateRequest(
            domain=vm,
            target_uri=target_uri,
            migrate_uri=migrate_uri,
            destination_xml=destination_xml,
            options=convert.options_to_pb(options),
            migration_id=migration_id,
            progress_interval_ms=self._progress_interval_ms,
            disks=[convert.disk_plan_to_pb(d) for d in disks],
            leader_term=leader_term,
            target_host=target_host,
        )
        if policy is not None:
            request.policy.CopyFrom(convert.policy_to_pb(policy))
        if predicted_converges is not None:
            request.predicted_converges = predicted_converges
        with self._using() as conn:
            call = conn.stub.Migrate(request, metadata=call_metadata())
            try:
                while True:
                    try:
                        event = await call.read()
                    except grpc.RpcError as exc:
                        raise self._error(exc, conn) from None
                    if event is grpc.aio.EOF:
                        return
                    if event.HasField("result"):
                        # read the stream's end before letting go of it: the agent's call then
                        # ends OK, not CANCELLED by the finally below (its metrics tell them apart)
                        await self._drain(call)
                        yield convert.migrate_result_from_pb(event.result)
                        return
                    if event.HasField("progress"):
                        yield convert.progress_from_pb(event.progress)
                    if event.HasField("action"):
                        yield convert.policy_action_from_pb(event.action)
            finally:
                call.cancel()

    @staticmethod
    async def _drain(call: Any) -> None:
        """Wait (briefly) for the end of a stream whose last message has come."""
        with contextlib.suppress(grpc.RpcError, asyncio.TimeoutError):
            while await asyncio.wait_for(call.read(), timeout=5.0) is not grpc.aio.EOF:
                pass

    async def abort_migration(self, vm: str, *, leader_term: int = 0) -> bool:
        m = await self._call("AbortMigration", apb.AbortMigrationRequest(domain=vm, leader_term=leader_term))
        assert isinstance(m, apb.AbortMigrationResponse)
        return m.aborted

    async def tune_migration(
        self,
        vm: str,
        *,
        max_downtime_ms: int | None = None,
        bandwidth_mibps: int | None = None,
        start_postcopy: bool = False,
        force_complete: bool = False,
        requested_by: str = "",
        leader_term: int = 0,
    ) -> TuneResult:
        request = apb.TuneMigrationRequest(
            domain=vm,
            start_postcopy=start_postcopy,
            force_complete=force_complete,
            requested_by=requested_by,
            leader_term=leader_term,
        )
        if max_downtime_ms is not None:
            request.max_downtime_ms = max_downtime_ms
        if bandwidth_mibps is not None:
            request.bandwidth_mibps = bandwidth_mibps
        m = await self._call("TuneMigration", request)
        assert isinstance(m, apb.TuneMigrationResponse)
        return TuneResult(m.max_downtime_ms, m.bandwidth_mibps, m.done)

    async def measure_guest(self, vm: str, *, periods: Sequence[int] = (1, 3)) -> GuestLoad:
        m = await self._call("MeasureGuest", apb.MeasureGuestRequest(domain=vm, periods_s=list(periods)), slow=True)
        assert isinstance(m, tpb.GuestLoad)
        return convert.guest_load_from_pb(m)

    async def get_job(self, vm: str, *, leader_term: int = 0) -> MigrationProgress:
        m = await self._call("GetJob", apb.GetJobRequest(domain=vm, leader_term=leader_term))
        assert isinstance(m, apb.GetJobResponse)
        return convert.job_from_pb(m)

    async def mark_shared_storage(self, disk_paths: Sequence[str], token: str) -> tuple[list[str], list[Problem]]:
        m = await self._call(
            "MarkSharedStorage", apb.MarkSharedStorageRequest(disk_paths=list(disk_paths), token=token)
        )
        assert isinstance(m, apb.MarkSharedStorageResponse)
        return list(m.probes), [convert.problem_from_pb(p) for p in m.problems]

    async def unmark_shared_storage(self, probes: Sequence[str]) -> list[str]:
        m = await self._call("UnmarkSharedStorage", apb.UnmarkSharedStorageRequest(probes=list(probes)))
        assert isinstance(m, apb.UnmarkSharedStorageResponse)
        return list(m.removed)

    async def completed_job(self, vm: str, *, leader_term: int = 0) -> CompletedJob:
        m = await self._call("GetJob", apb.GetJobRequest(domain=vm, completed=True, leader_term=leader_term))
        assert isinstance(m, apb.GetJobResponse)
        return convert.completed_job_response_from_pb(m)

    async def probe_target(self, target_uri: str, *, migration_address: str = "") -> tuple[list[Problem], int]:
        m = await self._call(
            "ProbeTarget", apb.ProbeTargetRequest(target_uri=target_uri, migration_address=migration_address)
        )
        assert isinstance(m, apb.ProbeTargetResponse)
        return [convert.problem_from_pb(p) for p in m.problems], m.latency_ms

    async def remove_source_disks(
        self, vm_uuid: str, paths: Sequence[str], *, migration_id: str, leader_term: int = 0
    ) -> tuple[list[str], list[str]]:
        m = await self._call(
            "RemoveSourceDisks",
            apb.RemoveSourceDisksRequest(
                domain_uuid=vm_uuid, paths=list(paths), migration_id=migration_id, leader_term=leader_term
            ),
        )
        assert isinstance(m, apb.RemoveSourceDisksResponse)
        return list(m.removed), list(m.already_gone)
