"""The role matrix: every RPC of both services x every identity, over real gRPC with real certificates.

An agent (over the fakes) and a coordinator (over the in-memory store) serve with mutual TLS, as
the daemons do. Each identity calls each method with a minimal request: a role the table allows
gets past the authorization (whatever the servicer then says about the request), any other gets
PERMISSION_DENIED with ``ROLE_<ROLE>_REQUIRED``. Clients without a certificate, with a
certificate from another CA, or with an expired one never reach a servicer (the handshake fails).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from ferry import authz
from ferry.agent.config import AgentConfig
from ferry.agent.main import build_agent
from ferry.agent.main import register as register_agent
from ferry.certs import Pem, issue, issue_identity, new_ca, write_pem
from ferry.coordinator.config import AgentsConfig, CoordinatorConfig, EtcdConfig
from ferry.coordinator.main import build_coordinator
from ferry.identity import Identity, Role
from ferry.rpc import Tls, create_channel, create_server, from_rpc_error
from ferry.testing.fake_hostsystem import FakeHostSystem
from ferry.testing.fake_hypervisor import FakeFleet, FakeHypervisor, make_domain_xml
from ferry.testing.memory_store import MemoryStore
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb

GiB = 1 << 30
IDENTITIES = {
    "coordinator": Identity(Role.COORDINATOR, "c1"),
    "operator": Identity(Role.OPERATOR, "alice"),
    "scheduler": Identity(Role.SCHEDULER, "nova"),
    "reader": Identity(Role.READER, "grafana"),
    "agent": Identity(Role.AGENT, "host2"),
}
PASSWORD = "s3cret-vnc"

# one minimal request per method: enough to get past the authorization, nothing more
AGENT_REQUESTS: dict[str, Any] = {
    "GetInventory": apb.GetInventoryRequest(),
    "GetDomain": apb.GetDomainRequest(name="nope"),
    "ListPrepares": apb.ListPreparesRequest(),
    "GetJob": apb.GetJobRequest(domain="nope"),
    "PrepareIncoming": apb.PrepareIncomingRequest(),
    "CleanupIncoming": apb.CleanupIncomingRequest(),
    "CommitIncoming": apb.CommitIncomingRequest(),
    "Migrate": apb.MigrateRequest(),
    "AbortMigration": apb.AbortMigrationRequest(),
    "TuneMigration": apb.TuneMigrationRequest(),
    "ProbeTarget": apb.ProbeTargetRequest(),
    "RemoveSourceDisks": apb.RemoveSourceDisksRequest(),
    "MeasureGuest": apb.MeasureGuestRequest(),
    "MarkSharedStorage": apb.MarkSharedStorageRequest(),
    "UnmarkSharedStorage": apb.UnmarkSharedStorageRequest(),
}
COORDINATOR_REQUESTS: dict[str, Any] = {
    "SubmitMigration": cpb.SubmitMigrationRequest(vm="nope", target_host="host9"),
    "CancelMigration": cpb.CancelMigrationRequest(id="m-nope"),
    "GetMigration": cpb.GetMigrationRequest(id="m-nope"),
    "ListMigrations": cpb.ListMigrationsRequest(),
    "WatchMigration": cpb.WatchMigrationRequest(id="m-nope"),
    "ListHosts": cpb.ListHostsRequest(),
    "ListVMs": cpb.ListVMsRequest(),
    "Preflight": cpb.PreflightRequest(vm="nope", target_host="host9"),
    "RankTargets": cpb.RankTargetsRequest(vm="nope"),
    "ListPolicies": cpb.ListPoliciesRequest(),
    "ControlMigration": cpb.ControlMigrationRequest(id="m-nope", force_complete=True),
    "WatchFleet": cpb.WatchFleetRequest(),
    "CordonHost": cpb.CordonHostRequest(host="host9", reason="role matrix"),
    "UncordonHost": cpb.UncordonHostRequest(host="host9"),
    "ForgetHost": cpb.ForgetHostRequest(host="host9"),
    "SubmitDrain": cpb.SubmitDrainRequest(host="host9", dry_run=True),
    "PauseDrain": cpb.PauseDrainRequest(id="d-nope"),
    "ResumeDrain": cpb.ResumeDrainRequest(id="d-nope"),
    "CancelDrain": cpb.CancelDrainRequest(id="d-nope"),
    "GetDrain": cpb.GetDrainRequest(id="d-nope"),
    "ListDrains": cpb.ListDrainsRequest(),
    "WatchDrain": cpb.WatchDrainRequest(id="d-nope"),
}
# the agent API's reads (coordinator, operator and reader may call them)
AGENT_READS = ("GetInventory", "GetDomain", "ListPrepares", "GetJob")
# host state, drains and changing a running migration: the operator's
OPERATOR_ONLY = (
    "CordonHost",
    "UncordonHost",
    "ForgetHost",
    "SubmitDrain",
    "PauseDrain",
    "ResumeDrain",
    "CancelDrain",
    "ControlMigration",
)
ALLOWED = {
    # agent API: reads for coordinator, operator, reader; everything else the coordinator only
    **{m: {"coordinator", "operator", "reader"} for m in AGENT_READS},
    **{
        m: {"coordinator"}
        for m in (
            "PrepareIncoming",
            "CleanupIncoming",
            "CommitIncoming",
            "Migrate",
            "AbortMigration",
            "TuneMigration",
            "ProbeTarget",
            "MeasureGuest",
            "RemoveSourceDisks",
            "MarkSharedStorage",
            "UnmarkSharedStorage",
        )
    },
    # coordinator API
    "SubmitMigration": {"operator", "scheduler"},
    "CancelMigration": {"operator", "scheduler"},
    **{
        m: {"operator", "scheduler", "reader"}
        for m in (
            "GetMigration",
            "ListMigrations",
            "WatchMigration",
            "ListHosts",
            "ListVMs",
            "Preflight",
            "RankTargets",
            "ListPolicies",
            "WatchFleet",
            "GetDrain",
            "ListDrains",
            "WatchDrain",
        )
    },
    **{m: {"operator"} for m in OPERATOR_ONLY},
}
# the role a refusal names: the least privileged one allowed
NEEDED = {m: "ROLE_COORDINATOR_REQUIRED" for m in AGENT_REQUESTS} | {m: "ROLE_READER_REQUIRED" for m in AGENT_READS}
NEEDED |= (
    {m: "ROLE_READER_REQUIRED" for m in COORDINATOR_REQUESTS}
    | {
        "SubmitMigration": "ROLE_SCHEDULER_REQUIRED",
        "CancelMigration": "ROLE_SCHEDULER_REQUIRED",
    }
    | {m: "ROLE_OPERATOR_REQUIRED" for m in OPERATOR_ONLY}
)


@dataclass
class Pki:
    dir: Path
    ca: Pem

    def tls(self, stem: str) -> Tls:
        return Tls(self.dir / "ca.pem", self.dir / f"{stem}.pem", self.dir / f"{stem}-key.pem")


@dataclass
class Servers:
    pki: Pki
    agent_address: str
    coordinator_address: str
    hv: FakeHypervisor


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = new_ca("Ferry test CA")
    write_pem(d, "ca", ca)
    server_names = {"dns": ["localhost", "host1"], "ips": ["127.0.0.1"]}
    write_pem(d, "agent-server", issue_identity(ca, Identity(Role.AGENT, "host1"), **server_names))
    write_pem(d, "coordinator-server", issue_identity(ca, Identity(Role.COORDINATOR, "c1"), **server_names))
    for key, identity in IDENTITIES.items():
        write_pem(d, key, issue_identity(ca, identity))
    write_pem(d, "anonymous", issue(ca, "someone"))  # the right CA, no ferry:// identity
    other = new_ca("Another CA")
    write_pem(d, "other-ca", other)
    write_pem(d, "foreign", issue_identity(other, IDENTITIES["operator"]))
    # copy the right CA's file beside the foreign cert, so the client trusts the servers
    (d / "foreign-ca.pem").write_bytes(ca.cert)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    write_pem(d, "expired", issue_identity(ca, IDENTITIES["operator"], days=1, not_before=long_ago))
    return Pki(d, ca)


def tls_agent_config(pki: Pki, hv: FakeHypervisor, tmp_path: Path) -> AgentConfig:
    """host1's agent on a free loopback port, serving with its lab certificate."""
    return AgentConfig(
        name="host1",
        listen=("127.0.0.1:0",),
        advertise_libvirt_uri=hv.uri,
        image_dirs=("/images",),
        state_dir=str(tmp_path / "state"),
        tls=pki.tls("agent-server"),
    )


@pytest.fixture
async def servers(pki: Pki, tmp_path: Path) -> AsyncIterator[Servers]:
    host = FakeHostSystem(bridges=["br-guest"], dirs={"/images": 50 * GiB}, totals={"/images": 100 * GiB})
    hv = FakeHypervisor(hostname="host1", uri="qemu+tls://127.0.0.1/system", fleet=FakeFleet(), host=host)
    xml = make_domain_xml("web-1").replace(
        "</devices>", f"<graphics type='vnc' port='-1' autoport='yes' passwd='{PASSWORD}'/></devices>"
    )
    hv.add_domain(xml)
    agent_config = tls_agent_config(pki, hv, tmp_path)
    servicer = build_agent(agent_config, hv, host)
    agent_server, [agent_port] = create_server(agent_config.listen, register_agent(servicer), tls=agent_config.tls)
    await agent_server.start()
    config = CoordinatorConfig(
        id="c1",
        listen=("127.0.0.1:0",),
        etcd=EtcdConfig(("unused:1",)),
        agents=AgentsConfig(inventory_ttl_s=0.0, inventory_timeout_s=1.0),
        tls=pki.tls("coordinator-server"),
    )
    store = MemoryStore()
    coordinator = build_coordinator(config, store, lambda h, a: None)  # type: ignore[arg-type,return-value]
    [port] = await coordinator.start(campaign=False)
    try:
        yield Servers(pki, f"127.0.0.1:{agent_port}", f"127.0.0.1:{port}", hv)
    finally:
        await coordinator.stop(grace_s=0.1)
        await agent_server.stop(None)
        await store.close()
        hv.release()


async def call(address: str, tls: Tls | None, service: str, method: str, request: Any) -> tuple[grpc.StatusCode, Any]:
    """(status code, the call's Ferry error or response) of one call; streams: their first message."""
    async with create_channel(address, tls=tls) as channel:
        stub = (agrpc.AgentStub if service == "agent" else cgrpc.CoordinatorStub)(channel)
        rpc = getattr(stub, method)
        try:
            if method in ("Migrate", "WatchMigration", "WatchDrain", "WatchFleet"):
                # WatchFleet sends nothing until something matches: allowed ends DEADLINE_EXCEEDED
                async for first in rpc(request, timeout=1 if method == "WatchFleet" else 5):
                    return grpc.StatusCode.OK, first
                return grpc.StatusCode.OK, None
            return grpc.StatusCode.OK, await rpc(request, timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), from_rpc_error(exc)


MATRIX = [("agent", m, who) for m in AGENT_REQUESTS for who in IDENTITIES] + [
    ("coordinator", m, who) for m in COORDINATOR_REQUESTS for who in IDENTITIES
]


def test_the_matrix_covers_every_rpc_of_both_services():
    methods = {
        f"/{s.full_name}/{m.name}"
        for s in (apb.DESCRIPTOR.services_by_name["Agent"], cpb.DESCRIPTOR.services_by_name["Coordinator"])
        for m in s.methods
    }
    assert methods == set(authz.RULES), "every RPC needs a rule in ferry.authz.RULES"
    assert {authz.short(m) for m in methods} == set(ALLOWED) == set(AGENT_REQUESTS) | set(COORDINATOR_REQUESTS)
    for method, rule in authz.RULES.items():
        assert {r.value for r in rule.roles} == ALLOWED[authz.short(method)], method


@pytest.mark.parametrize(("service", "method", "who"), MATRIX, ids=[f"{s}.{m}-{w}" for s, m, w in MATRIX])
async def test_role_matrix(servers: Servers, service: str, method: str, who: str):
    address = servers.agent_address if service == "agent" else servers.coordinator_address
    request = (AGENT_REQUESTS if service == "agent" else COORDINATOR_REQUESTS)[method]
    code, answer = await call(address, servers.pki.tls(who), service, method, request)
    if who in ALLOWED[method]:
        assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), answer
        assert code != grpc.StatusCode.UNAVAILABLE, answer
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, answer
        assert answer.reason == NEEDED[method]
        assert IDENTITIES[who].uri in answer.message and answer.hint


@pytest.mark.parametrize("client", ["none", "foreign", "expired"])
@pytest.mark.parametrize("service", ["agent", "coordinator"])
async def test_clients_without_a_valid_certificate_never_reach_a_servicer(servers: Servers, client: str, service: str):
    address = servers.agent_address if service == "agent" else servers.coordinator_address
    method, request = ("GetInventory", AGENT_REQUESTS["GetInventory"])
    if service == "coordinator":
        method, request = ("ListHosts", COORDINATOR_REQUESTS["ListHosts"])
    pki = servers.pki
    tls = {
        "none": None,  # plaintext: no TLS at all
        "foreign": Tls(pki.dir / "foreign-ca.pem", pki.dir / "foreign.pem", pki.dir / "foreign-key.pem"),
        "expired": pki.tls("expired"),
    }[client]
    code, _ = await call(address, tls, service, method, request)
    assert code == grpc.StatusCode.UNAVAILABLE
    # the same call with a valid operator certificate goes through: the refusal was the certificate's
    code, _ = await call(address, pki.tls("operator"), service, method, request)
    assert code == grpc.StatusCode.OK


async def test_a_certificate_without_an_identity_is_unauthenticated(servers: Servers):
    code, err = await call(
        servers.coordinator_address, servers.pki.tls("anonymous"), "coordinator", "ListHosts", cpb.ListHostsRequest()
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED and err.reason == "NO_IDENTITY"


@pytest.mark.parametrize(
    ("extra", "feature"),
    [
        ({"mapping": tpb.HostMapping(bridges={"br-guest": "br-vm"})}, "mapping overrides"),
        ({"mapping": tpb.HostMapping(path_prefixes={"/a": "/b"})}, "mapping overrides"),
        ({"options": tpb.MigrationOptions(unsafe=True)}, "unsafe options"),
        ({"options": tpb.MigrationOptions(keep_source_definition=True)}, "definition overrides"),
        ({"options": tpb.MigrationOptions(transient_target=True)}, "definition overrides"),
    ],
)
async def test_a_scheduler_submits_without_overrides_or_unsafe_options(servers: Servers, extra: dict, feature: str):
    request = cpb.SubmitMigrationRequest(vm="nope", target_host="host9", **extra)
    code, err = await call(
        servers.coordinator_address, servers.pki.tls("scheduler"), "coordinator", "SubmitMigration", request
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "ROLE_OPERATOR_REQUIRED"
    assert feature in err.message
    # an operator may: the request gets past the authorization (the VM is unknown)
    code, err = await call(
        servers.coordinator_address, servers.pki.tls("operator"), "coordinator", "SubmitMigration", request
    )
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), err


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        ("GetDomain", apb.GetDomainRequest(name="web-1", leader_term=1 << 40)),
        ("ListPrepares", apb.ListPreparesRequest(leader_term=1 << 40)),
        ("GetJob", apb.GetJobRequest(domain="web-1", leader_term=1 << 40)),
    ],
)
async def test_only_the_coordinator_reads_with_a_leader_term(servers: Servers, method: str, request_: Any):
    """An agent remembers the highest leader term a read carries and refuses older leaders'
    changes: a reader's read with a made-up term must not fence off the real leader."""
    for who in ("operator", "reader"):
        code, err = await call(servers.agent_address, servers.pki.tls(who), "agent", method, request_)
        assert code == grpc.StatusCode.PERMISSION_DENIED and err.reason == "ROLE_COORDINATOR_REQUIRED", (who, err)
        assert "a leader term" in err.message
    # the leader's next change (term 5) still goes through: the refused reads raised no fence
    coordinator = servers.pki.tls("coordinator")
    code, err = await call(
        servers.agent_address,
        coordinator,
        "agent",
        "AbortMigration",
        apb.AbortMigrationRequest(domain="web-1", leader_term=5),
    )
    assert not (code == grpc.StatusCode.FAILED_PRECONDITION and err.reason == "STALE_LEADER"), err
    # the coordinator itself may read with its term
    code, answer = await call(servers.agent_address, coordinator, "agent", method, request_)
    assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED), answer


async def test_secure_domain_xml_only_for_the_coordinator(servers: Servers):
    request = apb.GetDomainRequest(name="web-1", include_xml=True)
    xml = {}
    for who in ("coordinator", "operator", "reader"):
        code, answer = await call(servers.agent_address, servers.pki.tls(who), "agent", "GetDomain", request)
        assert code == grpc.StatusCode.OK, answer
        xml[who] = answer.xml
    assert PASSWORD in xml["coordinator"]
    assert "<graphics" in xml["operator"] and PASSWORD not in xml["operator"] and PASSWORD not in xml["reader"]


async def test_every_mutating_call_is_audited_once(servers: Servers, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="ferry.audit")
    await call(
        servers.agent_address,
        servers.pki.tls("coordinator"),
        "agent",
        "AbortMigration",
        apb.AbortMigrationRequest(domain="web-1"),
    )
    await call(
        servers.coordinator_address,
        servers.pki.tls("operator"),
        "coordinator",
        "CancelMigration",
        cpb.CancelMigrationRequest(id="m-0123"),
    )
    await call(
        servers.coordinator_address, servers.pki.tls("reader"), "coordinator", "ListHosts", cpb.ListHostsRequest()
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "ferry.audit"]
    assert lines == [
        'audit identity=ferry://coordinator/c1 method=AbortMigration vm="web-1" migration="" outcome=OK',
        'audit identity=ferry://operator/alice method=CancelMigration vm="" migration="m-0123" outcome=NOT_FOUND',
    ]


async def test_refused_mutating_calls_are_audited_and_a_flood_of_refusals_logs_once(
    servers: Servers, caplog: pytest.LogCaptureFixture
):
    """Seen in a walkthrough: 10,000 refused CordonHost calls of a reader wrote 1.8 MB of log lines
    in 4 s (40 GB a day), none in the audit log. A refused mutating call is audited; the refusals of
    one caller, method and reason are logged once per interval, the next line saying how many were
    left out."""
    caplog.set_level(logging.INFO, logger="ferry")
    async with create_channel(servers.coordinator_address, tls=servers.pki.tls("reader")) as channel:
        stub = cgrpc.CoordinatorStub(channel)
        for _ in range(30):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CordonHost(cpb.CordonHostRequest(host="host1", reason="mine now"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    audit = [r.getMessage() for r in caplog.records if r.name == "ferry.audit"]
    assert audit == [
        "audit identity=ferry://reader/grafana method=CordonHost vm=- migration=- outcome=PERMISSION_DENIED "
        "reason=ROLE_OPERATOR_REQUIRED"
    ]
    logged = [r.getMessage() for r in caplog.records if r.name == "ferry.rpc_auth" and "refused" in r.getMessage()]
    assert len(logged) == 1 and "ROLE_OPERATOR_REQUIRED" in logged[0], logged


async def test_the_coordinator_reaches_an_agent_only_under_its_registered_name(servers: Servers):
    """The agent's certificate names its host (DNS SAN host1): a registration of host2 that
    points at host1's address fails the handshake instead of talking to the wrong agent."""
    from ferry.coordinator.agent_client import GrpcAgentClient
    from ferry.errors import Unavailable

    tls = servers.pki.tls("coordinator")
    right = GrpcAgentClient("host1", servers.agent_address, tls, timeout_s=5.0)
    wrong = GrpcAgentClient("host2", servers.agent_address, tls, timeout_s=2.0)
    try:
        assert (await right.inventory()).host.hostname == "host1"
        with pytest.raises(Unavailable):
            await wrong.inventory()
    finally:
        await right.close()
        await wrong.close()


async def test_a_plaintext_server_says_so_at_start(caplog: pytest.LogCaptureFixture):
    server, _ = create_server(["127.0.0.1:0"], lambda s: [])
    try:
        assert any("WITHOUT TLS" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    finally:
        await server.stop(None)


# ---------------------------------------------------------------- a fair share of a server's calls


async def test_no_reader_can_take_a_server_from_the_coordinator_and_operators(pki: Pki, tmp_path: Path):
    """Seen in a walkthrough: a reader's certificate held 512 idle watch streams on the coordinator
    (operators then got RESOURCE_EXHAUSTED for every call), and 600 calls on an agent turned the
    coordinator's own calls away. Each identity now has a share, and the unprivileged roles
    together leave room for the coordinator and operators."""
    from ferry.rpc import ServerLimits

    for name in ("r2", "r3"):
        write_pem(pki.dir, f"reader-{name}", issue_identity(pki.ca, Identity(Role.READER, name)))
    hv = FakeHypervisor(hostname="host1", uri="qemu+tls://127.0.0.1/system", fleet=FakeFleet())
    hv.timeout_s = 10.0
    hv.hang("host_facts")  # every GetInventory stays open, like a slow libvirtd
    agent_config = tls_agent_config(pki, hv, tmp_path)
    servicer = build_agent(agent_config, hv, FakeHostSystem(dirs={"/images": GiB}))
    limits = ServerLimits(max_concurrent_rpcs=8, max_calls_per_identity=2, reserved_for_privileged=4)
    server, [port] = create_server(agent_config.listen, register_agent(servicer), tls=agent_config.tls, limits=limits)
    await server.start()
    channels = {
        who: create_channel(f"127.0.0.1:{port}", tls=pki.tls(who))
        for who in ("reader", "reader-r2", "reader-r3", "operator", "coordinator")
    }
    held: list[asyncio.Future[Any]] = []

    def hold(who: str) -> None:
        stub = agrpc.AgentStub(channels[who])
        held.append(asyncio.ensure_future(stub.GetInventory(apb.GetInventoryRequest(), timeout=20)))

    async def refused(who: str) -> str:
        try:
            await agrpc.AgentStub(channels[who]).GetInventory(apb.GetInventoryRequest(), timeout=20)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return from_rpc_error(exc).reason
        raise AssertionError(f"{who} was let in")

    try:
        for who in ("reader", "reader", "reader-r2"):
            hold(who)
        await asyncio.sleep(0.3)
        assert await refused("reader") == "CALLER_BUSY"  # its own share is used up
        hold("reader-r2")
        await asyncio.sleep(0.3)
        assert await refused("reader-r3") == "SERVER_BUSY"  # the readers' share is used up: 4 of 8, 4 kept
        for who in ("operator", "coordinator", "coordinator", "coordinator"):  # the coordinator: no own cap
            hold(who)
        await asyncio.sleep(0.5)
        assert not any(f.done() for f in held), [f.exception() for f in held if f.done()]
        held.pop(0).cancel()  # one of the first reader's calls ends: its room is back
        await asyncio.sleep(0.3)
        hold("reader-r3")
        await asyncio.sleep(0.3)
        assert not held[-1].done()
    finally:
        for f in held:
            f.cancel()
        for channel in channels.values():
            await channel.close()
        await server.stop(None)
        hv.release()


async def test_health_checks_need_an_identity_and_count_in_its_share(tmp_path: Path):
    """An identity-less certificate from the CA opened idle Health/Watch streams until gRPC's cap
    on open calls was reached, and the coordinator's own calls to the agent were turned away."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ferry.rpc import ServerLimits

    def tls(stem: str) -> Tls:
        return Tls(tmp_path / "ca.pem", tmp_path / f"{stem}.pem", tmp_path / f"{stem}-key.pem")

    ca = new_ca("CA")
    write_pem(tmp_path, "ca", ca)
    write_pem(
        tmp_path, "server", issue_identity(ca, Identity(Role.AGENT, "host1"), dns=["localhost"], ips=["127.0.0.1"])
    )
    write_pem(tmp_path, "coordinator", issue_identity(ca, Identity(Role.COORDINATOR, "c1")))
    write_pem(tmp_path, "reader", issue_identity(ca, Identity(Role.READER, "grafana")))
    write_pem(tmp_path, "anonymous", issue(ca, "someone"))  # the CA's, but no ferry:// identity
    hv = FakeHypervisor(hostname="host1", uri="qemu+tls://127.0.0.1/system", fleet=FakeFleet())
    config = AgentConfig(
        name="host1", listen=("127.0.0.1:0",), advertise_libvirt_uri=hv.uri, image_dirs=("/images",),
        state_dir=str(tmp_path / "state"), tls=tls("server"),
    )  # fmt: skip
    limits = ServerLimits(max_concurrent_rpcs=8, max_calls_per_identity=2, reserved_for_privileged=4)
    agent = build_agent(config, hv, FakeHostSystem(dirs={"/images": 1 << 30}))
    server, [port] = create_server(config.listen, register_agent(agent), tls=config.tls, limits=limits)
    await server.start()
    channels = {
        who: create_channel(f"127.0.0.1:{port}", tls=tls(who)) for who in ("anonymous", "reader", "coordinator")
    }
    watches = []
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await health_pb2_grpc.HealthStub(channels["anonymous"]).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert from_rpc_error(refused.value).reason == "NO_IDENTITY"
        health = health_pb2_grpc.HealthStub(channels["reader"])
        for _ in range(2):  # the reader's share
            call = health.Watch(health_pb2.HealthCheckRequest())
            await call.read()
            watches.append(call)
        third = health.Watch(health_pb2.HealthCheckRequest())
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await third.read()
        assert from_rpc_error(busy.value).reason == "CALLER_BUSY"
        await agrpc.AgentStub(channels["coordinator"]).GetInventory(apb.GetInventoryRequest(), timeout=5)
        # reflection too: served to an identity (a coordinator's share is not capped), refused without
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        listed = [
            r
            async for r in reflection_pb2_grpc.ServerReflectionStub(channels["coordinator"]).ServerReflectionInfo(
                iter([ask])
            )
        ]
        assert "ferry.v1.Agent" in [s.name for s in listed[0].list_services_response.service]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            _ = [
                r
                async for r in reflection_pb2_grpc.ServerReflectionStub(channels["anonymous"]).ServerReflectionInfo(
                    iter([ask])
                )
            ]
        assert from_rpc_error(refused.value).reason == "NO_IDENTITY"
    finally:
        for call in watches:
            call.cancel()
        for channel in channels.values():
            await channel.close()
        await server.stop(None)
