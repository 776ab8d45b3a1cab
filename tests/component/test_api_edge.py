"""The API edge, over real gRPC: what issue 7 found accepted or crashing is refused with a reason
code, errors repeat at most a short piece of the input, a Migrate goes only to a registered
host, secrets in a domain's XML go only to callers allowed them, and servers cap concurrent calls.

What an operator would check: the status code and reason say which field is wrong; the status
is small whatever was sent; nothing moved when a request was refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_agent_api import add_guest, migrate_request, prepare_target, rpc_error

from ferry import keys, validate
from ferry.agent.main import register
from ferry.agent.targets import MigrationTargets
from ferry.coordinator.phases import Phase
from ferry.model import DomainState
from ferry.registry import HostRegistration
from ferry.rpc import (
    SERVER_BUSY_HINT,
    STATUS_MESSAGE_MAX_BYTES,
    ServerLimits,
    create_channel,
    create_server,
    from_rpc_error,
)
from ferry.testing.fake_hypervisor import make_domain_xml
from ferry.testing.memory_store import MemoryStore
from ferry.testing.store_reads import ReadLog
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb


async def refused(call) -> tuple[grpc.StatusCode, str, str]:
    exc = await rpc_error(call)
    err = from_rpc_error(exc)
    assert err.hint, f"{err.reason} has no hint"
    return exc.code(), err.reason, err.message


async def drain(stream) -> list:
    return [e async for e in stream]


DEEP = "<domain>" + "<a>" * 100_000 + "</a>" * 100_000 + "</domain>"
LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(8))
    + "]><domain><name>&i;</name></domain>"
)
XXE = "<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/shadow'>]><domain><name>&x;</name></domain>"


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [
        (apb.PrepareIncomingRequest(domain_xml="<domain/>", storage=99), "BAD_STORAGE_MODE", "storage"),
        (apb.PrepareIncomingRequest(domain_xml="<domain/>", ttl_seconds=4_294_967_295), "OUT_OF_RANGE", "ttl_seconds"),
        (apb.PrepareIncomingRequest(domain_xml=DEEP), "INVALID_XML", "nested deeper than"),
        (apb.PrepareIncomingRequest(domain_xml=LAUGHS), "INVALID_XML", "DOCTYPE"),
        (apb.PrepareIncomingRequest(domain_xml=XXE), "INVALID_XML", "DOCTYPE"),
        (apb.PrepareIncomingRequest(domain_xml=f"<domain><name>{'x' * 5000}</name></domain>"), "INVALID_XML", "name"),
        (apb.PrepareIncomingRequest(domain_xml="<domain>" + "x" * (2 << 20) + "</domain>"), "INVALID_XML", "bytes"),
        (apb.PrepareIncomingRequest(domain_xml="<domain/>", migration_id="../m-1"), "BAD_ID", "migration_id"),
        (
            apb.PrepareIncomingRequest(domain_xml="<domain/>", disks=[tpb.DiskPlan(target="vda")] * 300),
            "TOO_MANY_ITEMS",
            "disks",
        ),
        (
            apb.PrepareIncomingRequest(
                domain_xml="<domain/>", disks=[tpb.DiskPlan(target="vda", virtual_size=(1 << 64) - 1)]
            ),
            "OUT_OF_RANGE",
            "virtual_size",
        ),
        (apb.GetDomainRequest(name="g1\0"), "INVALID_CHARACTERS", "name"),
        (apb.GetDomainRequest(name="x" * 10_000), "FIELD_TOO_LONG", "name"),
        (apb.TuneMigrationRequest(domain="g1", bandwidth_mibps=4_294_967_295), "OUT_OF_RANGE", "bandwidth_mibps"),
        (apb.CleanupIncomingRequest(prepare_id="../../etc"), "BAD_ID", "prepare_id"),
        (apb.RemoveSourceDisksRequest(domain_uuid="../x", paths=["/x"], migration_id="m-1"), "BAD_UUID", "domain_uuid"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
async def test_agent_refuses_malformed_requests_with_a_reason(agents, request_, reason, field):
    host1, _ = agents
    method = getattr(host1.stub, type(request_).__name__.removesuffix("Request"))
    code, got, message = await refused(method(request_))
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason) and field in message
    assert len(message.encode()) <= STATUS_MESSAGE_MAX_BYTES


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (tpb.MigrationOptions(bandwidth_mibps=4_294_967_295), "bandwidth_mibps"),  # -1 sent as unsigned
        (tpb.MigrationOptions(max_downtime_ms=4_294_967_295), "max_downtime_ms"),
        (tpb.MigrationOptions(completion_timeout_s=4_294_967_295), "completion_timeout_s"),
        (tpb.MigrationOptions(storage=7), "storage"),
    ],
)
async def test_a_migrate_with_an_option_out_of_range_is_refused_and_nothing_moves(agents, options, field):
    host1, host2 = agents
    add_guest(host1, "g1")
    request = migrate_request("g1", host2, "")
    request.options.CopyFrom(options)
    code, reason, message = await refused(drain(host1.stub.Migrate(request)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and reason in ("OUT_OF_RANGE", "BAD_STORAGE_MODE")
    assert field in message
    assert [d.name for d in host1.hv.domains.values()] == ["g1"] and not host2.hv.domains


async def test_an_echoed_10_kb_input_stays_small_in_the_status(agents):
    host1, _ = agents
    exc = await rpc_error(host1.stub.GetDomain(apb.GetDomainRequest(name="é" * 10_000)))
    size = sum(len(k) + len(v) for k, v in exc.trailing_metadata())
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and len(exc.details()) < 400 and size < 2048
    assert "é" * 100 in exc.details() and "é" * 300 not in exc.details()  # a short piece, not the input


@pytest.mark.parametrize(
    "request_",
    [
        apb.GetJobRequest(domain="g1", leader_term=1 << 63),  # a read: observed, never refused but for this
        apb.AbortMigrationRequest(domain="g1", leader_term=(1 << 64) - 1),  # -1 sent as unsigned
    ],
    ids=lambda r: type(r).__name__,
)
async def test_a_leader_term_no_leader_can_have_is_refused_and_fences_nobody(agents, request_):
    host1, _ = agents
    add_guest(host1, "g1")
    method = getattr(host1.stub, type(request_).__name__.removesuffix("Request"))
    code, reason, message = await refused(method(request_))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "OUT_OF_RANGE") and "leader_term" in message
    # the agent did not take it as a new leader's term: the real leader (an etcd revision) still acts
    aborted = await host1.stub.AbortMigration(apb.AbortMigrationRequest(domain="g1", leader_term=7))
    assert aborted.aborted is False and host1.servicer.fence.highest == 7


# ---------------------------------------------------------------- Migrate: only to registered hosts


@pytest.mark.parametrize(
    ("target_uri", "migrate_uri", "code", "reason"),
    [
        ("qemu+tcp://10.77.0.99/system", "", grpc.StatusCode.FAILED_PRECONDITION, "TARGET_NOT_REGISTERED"),
        ("qemu+ssh://root@evil.example/system", "", grpc.StatusCode.FAILED_PRECONDITION, "TARGET_NOT_REGISTERED"),
        ("qemu+tcp://10.77.0.11/system", "", grpc.StatusCode.FAILED_PRECONDITION, "TARGET_NOT_REGISTERED"),  # itself
        ("qemu+tcp://10.77.0.12/system", "tcp://10.77.0.99", grpc.StatusCode.FAILED_PRECONDITION,
         "MIGRATE_URI_NOT_REGISTERED"),
        ("qemu+tcp://10.77.0.12/system", "rdma://10.77.0.12", grpc.StatusCode.INVALID_ARGUMENT, "MIGRATE_URI_INVALID"),
    ],
)  # fmt: skip
async def test_migrate_goes_only_to_registered_hosts(agents, target_uri, migrate_uri, code, reason):
    host1, host2 = agents
    # only host2 is a registered peer of host1 here (its own URI is not a target)
    host1.servicer.targets._peers = lambda: [host2.hv.uri]
    add_guest(host1, "g1")
    request = migrate_request("g1", host2, "")
    request.target_uri, request.migrate_uri = target_uri, migrate_uri
    got_code, got_reason, _ = await refused(drain(host1.stub.Migrate(request)))
    assert (got_code, got_reason) == (code, reason)
    assert "migrate" not in host1.hv.calls  # libvirt was never asked to connect anywhere
    assert [d.name for d in host1.hv.domains.values()] == ["g1"]


async def test_a_registered_target_with_its_migration_address_is_fine(agents):
    host1, host2 = agents
    add_guest(host1, "g1")
    host2.host.files["/srv/shared/g1-data.raw"] = 64 << 20  # shared storage: seen on both hosts
    prep = await prepare_target(host1, host2, "g1")
    request = migrate_request("g1", host2, prep.destination_xml)
    request.migrate_uri = "tcp://10.77.0.12:49152"
    events = await drain(host1.stub.Migrate(request))
    assert events[-1].HasField("result")
    assert "g1" in [d.name for d in host2.hv.domains.values()]


async def test_a_migrate_naming_its_target_host_reads_that_registration_alone(agents):
    """The coordinator names the target's host: the source agent reads hosts/<it>, not the whole
    registry (a thousand registrations per Migrate at fleet scale)."""
    host1, host2 = agents
    store = ReadLog(MemoryStore())
    await store.create(
        keys.host_key("host2"), HostRegistration("host2", "127.0.0.1:1", host2.hv.uri, "10.77.0.12").encode()
    )
    host1.servicer.targets = MigrationTargets("host1", store=store)  # type: ignore[arg-type]
    add_guest(host1, "g1")
    host2.host.files["/srv/shared/g1-data.raw"] = 64 << 20
    prep = await prepare_target(host1, host2, "g1")
    request = migrate_request("g1", host2, prep.destination_xml)
    request.target_host = "host2"
    events = await drain(host1.stub.Migrate(request))
    assert events[-1].HasField("result")
    assert store.reads == ["get hosts/host2"]
    # the guest runs on host2, and on host1 no longer
    assert [d.name for d in host2.hv.domains.values() if d.state is DomainState.RUNNING] == ["g1"]
    assert not [d for d in host1.hv.domains.values() if d.name == "g1" and d.state.is_active]
    request.target_host = "host2\x00"
    code, reason, message = await refused(drain(host1.stub.Migrate(request)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CHARACTERS") and "target_host" in message


# ---------------------------------------------------------------- secrets in the XML


async def test_get_domain_serves_secrets_only_to_callers_allowed_them(agents):
    host1, _ = agents
    xml = make_domain_xml("g1").replace("</devices>", "<graphics type='vnc' port='-1' passwd='s3cret'/></devices>")
    host1.hv.add_domain(xml)
    allowed = await host1.stub.GetDomain(apb.GetDomainRequest(name="g1", include_xml=True))
    assert "passwd='s3cret'" in allowed.xml  # the default: the gate lets every caller through
    host1.servicer.secure_xml = lambda context: False  # e.g. not the coordinator's identity
    denied = await host1.stub.GetDomain(apb.GetDomainRequest(name="g1", include_xml=True))
    assert "s3cret" not in denied.xml and "<graphics" in denied.xml


# ---------------------------------------------------------------- servers cap concurrent calls


async def test_a_server_caps_concurrent_calls(agents):
    host1, _ = agents
    host1.hv.timeout_s = 5.0
    host1.hv.hang("host_facts")  # GetInventory blocks like a hung libvirtd
    server, [port] = create_server(
        ["127.0.0.1:0"], register(host1.servicer), limits=ServerLimits(max_concurrent_rpcs=2)
    )
    await server.start()
    channel = create_channel(f"127.0.0.1:{port}")
    stub = agrpc.AgentStub(channel)
    try:
        busy = [asyncio.ensure_future(stub.GetInventory(apb.GetInventoryRequest(), timeout=10)) for _ in range(2)]
        await asyncio.sleep(0.3)
        exc = await rpc_error(stub.GetInventory(apb.GetInventoryRequest(), timeout=10))
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # refused at once, not queued
        err = from_rpc_error(exc)  # what a client shows: gRPC refused it, not Ferry; try again
        assert (err.reason, err.hint) == ("SERVER_BUSY", SERVER_BUSY_HINT)
        assert "as many calls as it takes at once" in err.message
        for call in busy:
            call.cancel()
    finally:
        await channel.close()
        await server.stop(None)


_BLOCKED_SERVER = """
import asyncio, sys, time
import grpc
from grpc_health.v1 import health, health_pb2_grpc

async def main():
    # the core drops a call that no RequestCall took up within this many seconds (30 unless set)
    server = grpc.aio.server(options=[("grpc.server_max_unrequested_time_in_server", 1)])
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    time.sleep(2.5)  # the event loop busy: calls arrive, none is taken up
    await asyncio.sleep(0.5)
    await server.stop(None)

asyncio.run(main())
"""


async def test_a_call_grpc_drops_before_the_server_takes_it_up_reads_server_busy(tmp_path):
    """A server whose event loop is too busy to take up calls: gRPC's core cancels those that wait
    too long (status CANCELLED, message "CANCELLED", no Ferry error): the client is told to retry."""
    script = tmp_path / "server.py"
    script.write_text(_BLOCKED_SERVER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def check(stub: health_pb2_grpc.HealthStub) -> grpc.RpcError | None:
        try:
            await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError as exc:
            return exc
        return None

    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 30))
        async with create_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            assert await check(stub) is None
            proc.stdin.write(b"block\n")
            await proc.stdin.drain()
            await asyncio.sleep(0.2)
            # the first may match a request the server posted before its loop stopped
            errors = [e for e in await asyncio.gather(*(check(stub) for _ in range(3))) if e is not None]
        assert errors, "no call was dropped"
        for exc in errors:
            assert (exc.code(), exc.details()) == (grpc.StatusCode.CANCELLED, "CANCELLED")
            err = from_rpc_error(exc)
            assert (err.reason, err.hint) == ("SERVER_BUSY", SERVER_BUSY_HINT)
            assert "dropped the call before taking it up" in err.message
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # our own child
        await proc.wait()


# ---------------------------------------------------------------- the coordinator


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (cpb.SubmitMigrationRequest(vm="g1", target_host="host2", priority=-(1 << 31)), "OUT_OF_RANGE"),
        (cpb.SubmitMigrationRequest(vm="g1", target_host="host2", idempotency_key="k" * 10_000), "FIELD_TOO_LONG"),
        (cpb.SubmitMigrationRequest(vm="g1\0", target_host="host2"), "INVALID_CHARACTERS"),
        (
            cpb.SubmitMigrationRequest(vm="g1", target_host="host2", options=tpb.MigrationOptions(storage=42)),
            "BAD_STORAGE_MODE",
        ),
        (
            cpb.SubmitMigrationRequest(
                vm="g1", target_host="host2", options=tpb.MigrationOptions(bandwidth_mibps=4_294_967_295)
            ),
            "OUT_OF_RANGE",
        ),
        (
            cpb.SubmitMigrationRequest(
                vm="g1",
                target_host="host2",
                mapping=tpb.HostMapping(
                    path_prefixes={"/var/lib/libvirt/images": "/var/lib/libvirt/images/../../../../etc/cron.d"}
                ),
            ),
            "PATH_DOTDOT",
        ),
        (cpb.GetMigrationRequest(id="m-1/../x"), "BAD_ID"),
        (cpb.ListMigrationsRequest(phases=[99]), "BAD_PHASE"),
        (cpb.ListVMsRequest(host="h" * 10_000), "FIELD_TOO_LONG"),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
async def test_coordinator_refuses_malformed_requests_with_a_reason(fx, request_, reason):
    fx.agents.add_guest("host1", "g1")
    method = getattr(fx.stub, type(request_).__name__.removesuffix("Request"))
    await fx.coordinator.fleet.refresh(force=True)  # the view has written what it saw (last-seen/)
    before = fx.store.revision
    code, got, message = await refused(method(request_))
    assert (code, got) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert len(message.encode()) <= STATUS_MESSAGE_MAX_BYTES
    assert fx.store.revision == before  # nothing written


async def test_watch_streams_share_one_store_watch(fx):
    for vm in ("a", "b"):
        fx.agents.add_guest("host1", vm)
    ms = [await fx.submit("a", "host2"), await fx.submit("b", "host3")]
    streams = [fx.stub.WatchMigration(cpb.WatchMigrationRequest(id=m.id)) for m in ms for _ in range(10)]
    for s in streams:
        assert (await s.read()).phase == cpb.PHASE_PENDING
    watches = fx.coordinator.servicer.watches
    assert watches.subscribers == 20 and watches.watches_started == 1
    for m in ms:
        await fx.advance(m.id, Phase.PREFLIGHT, Phase.FAILED)
    for s in streams:
        phases = []
        while (update := await asyncio.wait_for(s.read(), 5)) is not grpc.aio.EOF:
            phases.append(update.phase)
        assert phases == [cpb.PHASE_PREFLIGHT, cpb.PHASE_FAILED]  # every change, in order, then the end
    await asyncio.sleep(0.1)
    assert watches.subscribers == 0


def test_limits_are_what_the_readme_says():
    assert (validate.MAX_NAME, validate.MAX_ITEMS, validate.MAX_XML_BYTES) == (200, 256, 1 << 20)
