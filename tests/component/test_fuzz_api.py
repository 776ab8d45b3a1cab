"""Property-based fuzzing of every RPC of both services, over real gRPC servers on port 0.

A coordinator (in-memory store) and three agents over the fakes (``ferry.testing``) run in a loop
of their own, in a thread; hypothesis (pinned, derandomized, a fixed number of examples per RPC)
sends them requests built from edge values: unknown enum numbers, numbers at and past their
bounds (an unsigned 4294967295 is a negative number sent by another client), 10 kB names, NUL
and control characters, paths with ``..``, relative paths and ``/etc/shadow``, oversized lists and
maps, XML 100,000 elements deep, DOCTYPE and entity bombs, leader terms past any etcd revision
-- mixed with real names, so the requests also reach past the edge checks.

The properties, for every call:

* never INTERNAL or UNKNOWN (an unexpected exception in a servicer);
* every refusal is typed: a google.rpc.ErrorInfo of domain ferry.dev with a reason code (a
  trailer the client could not read arrives as a bare RESOURCE_EXHAUSTED without one);
* the trailers (grpc-message percent-encoded, the status details base64) stay under 8 KiB, the
  size a gRPC client accepts.

``FERRY_FUZZ_EXAMPLES`` sets the examples per RPC (default 40: about 800 requests, a few seconds).
The figures (requests, accepted, refused by code, crashes) are printed at the end of the module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from coordinator_setup import Setup, close, start
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry import convert
from ferry.diskplan import plan_disks
from ferry.errors import ERROR_DOMAIN
from ferry.model import HostMapping, StorageMode
from ferry.rpc import create_channel
from ferry.v1 import agent_pb2 as apb
from ferry.v1 import agent_pb2_grpc as agrpc
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb

EXAMPLES = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "40"))
TRAILER_LIMIT = 8 * 1024  # grpc.max_metadata_size a client accepts by default
CALL_TIMEOUT_S = 10.0
SILENT_S = 0.5

# ---------------------------------------------------------------- the servers, in a loop of their own


class LoopThread:
    """An event loop running in a thread: hypothesis' examples are plain functions that submit
    coroutines to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz servers", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Apis:
    loop: LoopThread
    setup: Setup
    agents: dict[str, agrpc.AgentStub]
    real: dict[str, Any]  # names, UUIDs, ids, URIs, XML that exist in this fleet; valid requests
    figures: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Apis]:
    loop = LoopThread()
    setup: Setup = loop.run(start(tmp_path_factory.mktemp("fuzz")))

    async def prepare() -> tuple[dict[str, agrpc.AgentStub], dict[str, Any], list[grpc.aio.Channel]]:
        uuids = [setup.agents.add_guest("host1", name) for name in ("g1", "g2")]
        channels = [create_channel(a.address) for a in setup.agents.agents.values()]
        stubs = {n: agrpc.AgentStub(c) for n, c in zip(setup.agents.agents, channels, strict=True)}
        got = await stubs["host1"].GetDomain(apb.GetDomainRequest(name="g1", include_xml=True))
        m = await setup.stub.SubmitMigration(cpb.SubmitMigrationRequest(vm="g2", target_host="host2"))
        domain = convert.domain_from_pb(got.domain)
        plans = [convert.disk_plan_to_pb(p) for p in plan_disks(domain.disks, StorageMode.COPY_ALL, (), HostMapping())]
        copy_all = tpb.MigrationOptions(storage=tpb.STORAGE_MODE_COPY_ALL)  # the definition moves with it
        to_host2 = tpb.HostMapping(bridges={"br-guest": "br-vm"})
        host2 = setup.agents.agents["host2"]
        real = {
            "names": ["g1", "g2", "host1", "host2", "host3", *uuids],
            "uuids": uuids,
            "ids": [m.id, "m-1", "m-fz"],
            "uris": [a.hv.uri for a in setup.agents.agents.values()],
            "xml": [got.xml],
            "bases": {  # valid requests, one field of which is fuzzed
                "prepare": apb.PrepareIncomingRequest(
                    domain_xml=got.xml, disks=plans, mapping=to_host2, storage=tpb.STORAGE_MODE_COPY_ALL,
                    migration_id="m-fz", dry_run=True,
                ),
                "migrate": apb.MigrateRequest(
                    domain="g1", target_uri=host2.hv.uri, options=copy_all, migration_id="m-fz",
                    progress_interval_ms=10, disks=plans,
                ),
                "submit": cpb.SubmitMigrationRequest(vm="g1", target_host="host2", mapping=to_host2),
                "preflight": cpb.PreflightRequest(vm="g1", target_host="host2", mapping=to_host2),
            },
        }  # fmt: skip
        return stubs, real, channels

    stubs, real, channels = loop.run(prepare())
    apis = Apis(loop, setup, stubs, real)
    yield apis

    async def stop() -> None:
        for c in channels:
            await c.close()
        await close(setup)

    loop.run(stop())
    loop.close()
    f = apis.figures
    refused = {k.removeprefix("code:"): v for k, v in sorted(f.items()) if k.startswith("code:")}
    line = (
        f"fuzz: {f['requests']} requests over {f['rpcs']} RPC runs: {f['ok']} accepted, "
        f"{sum(refused.values())} refused {refused}, {f['crashes']} crashes, "
        f"largest trailer {f['max_trailer']} bytes"
    )
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown in every run, not only with -s
            reporter.write_line("\n" + line)


# ---------------------------------------------------------------- strategies: edge values

CHARS = st.characters(codec="utf-8")  # protobuf strings are UTF-8: no lone surrogates
EDGE_TEXT = [
    "",
    "\0",
    "a\0b",
    "\n\r\t",
    "%00",
    "../../etc/shadow",
    "/etc/shadow",
    "g1.qcow2",
    "/var/lib/libvirt/images/../../../../etc/cron.d",
    "/var/lib/libvirt/images//x",
    "/var/lib/libvirt/images/x.qcow2",
    "/srv/shared/x.raw",
    "qemu+tcp://10.77.0.99/system",
    "qemu+ssh://root@evil/system",
    "tcp://10.77.0.12:49152",
    "tcp://evil:1",
    "ftp://x",
    "nonsense",
    "m-../x",
    "é" * 300,
    "🦀" * 100,
]


def long_text() -> st.SearchStrategy[str]:
    return st.builds(lambda n, c: c * n, st.integers(180, 12_000), st.sampled_from(["x", "é", "\0", "/", "🦀"]))


def text(real: list[str] = ()) -> st.SearchStrategy[str]:
    """Half the time a value that exists in the fleet (so requests get past the edge checks), else
    an edge value, any short text, or a long one."""
    edges = st.one_of(st.sampled_from(EDGE_TEXT), st.text(CHARS, max_size=40), long_text())
    if not real:
        return edges
    return st.one_of(st.sampled_from(real), edges)


def uint(bits: int) -> st.SearchStrategy[int]:
    top = (1 << bits) - 1
    edges = st.sampled_from([0, 1, 10, 500, 1 << 20, (1 << 31) - 1, 1 << 31, top])
    return st.one_of(edges, st.integers(0, 1000), st.integers(0, top))


def term() -> st.SearchStrategy[int]:
    """A coordinator leader's term (the fence, agent/fencing.py): mostly none (0, as from an operator's
    tool, so most requests get past the fence), else an edge value or any uint64 (past the largest
    etcd revision, 2**63 - 1: refused)."""
    return st.one_of(st.just(0), st.just(0), uint(64), st.sampled_from([(1 << 63) - 1, 1 << 63]))


INT32 = st.one_of(st.sampled_from([0, -1, 5, -(1 << 31), (1 << 31) - 1]), st.integers(-(1 << 31), (1 << 31) - 1))
ENUM = st.one_of(st.integers(0, 3), st.integers(-3, 12), st.sampled_from([-(1 << 31), (1 << 31) - 1, 99]))


def bounded_list(item: st.SearchStrategy[Any], many: Any) -> st.SearchStrategy[list[Any]]:
    """A few of ``item``, or 250-320 copies of ``many`` (past the 256-entry limit)."""
    return st.one_of(st.lists(item, max_size=3), st.integers(250, 320).map(lambda n: [many] * n))


def names_map(real: list[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.one_of(
        st.dictionaries(text(real), text(real), max_size=3),
        st.integers(250, 320).map(lambda n: {f"k{i}": "v" for i in range(n)}),
    )


def xml(real: list[str]) -> st.SearchStrategy[str]:
    deep = st.integers(200, 100_000).map(lambda d: "<domain>" + "<a>" * d + "</a>" * d + "</domain>")
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">' for i in range(8))
        + "]><domain><name>&i;</name></domain>"
    )
    xxe = "<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/shadow'>]><domain><name>&x;</name></domain>"
    huge = st.integers(900_000, 1_200_000).map(lambda n: "<domain><name>" + "x" * n + "</name></domain>")
    mutated = st.sampled_from(real).flatmap(
        lambda x: st.sampled_from(
            [
                x,
                x.replace("<name>", "<name>\u200b"),
                x.replace("unit='KiB'", "unit='parsec'").replace("unit='MiB'", "unit='parsec'"),
                x.replace("<memory", "<memory>" + "9" * 5000 + "</memory><junk", 1),
                x.replace("/var/lib/libvirt/images", "/var/lib/libvirt/images/../../../etc"),
                x.replace("<domain", "<!DOCTYPE domain><domain", 1),
                x[: len(x) // 2],
            ]
        )
    )
    return st.one_of(mutated, mutated, text(), deep, huge, st.sampled_from([laughs, xxe, "<notdomain/>", "<domain/>"]))


def paths() -> st.SearchStrategy[str]:
    return text(["/var/lib/libvirt/images/g1.qcow2", "/srv/shared/g1-data.raw", "/var/lib/libvirt/images/new.qcow2"])


def disk_plan(real: list[str]) -> st.SearchStrategy[tpb.DiskPlan]:
    return st.builds(
        tpb.DiskPlan,
        target=text(["vda", "vdb", "vdz"]),
        source=paths(),
        destination=paths(),
        format=text(["qcow2", "raw", "vvfat", "luks"]),
        virtual_size=uint(64),
        allocation=uint(64),
        backing_file=paths(),
        backing_format=text(["raw", "qcow2"]),
        copy=st.booleans(),
    )


def options() -> st.SearchStrategy[tpb.MigrationOptions]:
    return st.builds(
        tpb.MigrationOptions,
        offline=st.booleans(),
        storage=ENUM,
        migrate_disks=bounded_list(text(["vda", "vdb"]), "vda"),
        keep_source_definition=st.booleans(),
        transient_target=st.booleans(),
        bandwidth_mibps=uint(32),
        max_downtime_ms=uint(32),
        auto_converge=st.booleans(),
        allow_postcopy=st.booleans(),
        unsafe=st.booleans(),
        completion_timeout_s=uint(32),
        postcopy_on_stall=st.booleans(),
    )


def mapping(real: list[str]) -> st.SearchStrategy[tpb.HostMapping]:
    return st.builds(
        tpb.HostMapping,
        bridges=names_map(["br-guest", "br-vm"]),
        networks=names_map(["default"]),
        path_prefixes=names_map(["/var/lib/libvirt/images", "/srv/shared", "/etc/cron.d"]),
    )


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def tune(domain: st.SearchStrategy[str]) -> st.SearchStrategy[apb.TuneMigrationRequest]:
    def build(
        d: str,
        downtime: int | None,
        bandwidth: int | None,
        postcopy: bool,
        force: bool,
        by: str,
        leader_term: int,
    ) -> apb.TuneMigrationRequest:
        r = apb.TuneMigrationRequest(
            domain=d, start_postcopy=postcopy, force_complete=force, requested_by=by, leader_term=leader_term
        )
        if downtime is not None:
            r.max_downtime_ms = downtime
        if bandwidth is not None:
            r.bandwidth_mibps = bandwidth
        return r

    return st.builds(
        build,
        domain,
        optional(uint(32)),
        optional(uint(32)),
        st.booleans(),
        st.booleans(),
        text(["ops via ipv4:127.0.0.1:5000"]),
        term(),
    )


def control(ids: list[str]) -> st.SearchStrategy[cpb.ControlMigrationRequest]:
    def build(
        i: str, downtime: int | None, bandwidth: int | None, postcopy: bool, force: bool
    ) -> cpb.ControlMigrationRequest:
        r = cpb.ControlMigrationRequest(id=i, start_postcopy=postcopy, force_complete=force)
        if downtime is not None:
            r.max_downtime_ms = downtime
        if bandwidth is not None:
            r.bandwidth_mibps = bandwidth
        return r

    return st.builds(build, text(ids), optional(uint(32)), optional(uint(32)), st.booleans(), st.booleans())


SECONDS = st.one_of(
    st.sampled_from([0.0, -1.0, 0.5, 30.0, 1e300, float("nan"), float("inf"), -float("inf")]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def policy() -> st.SearchStrategy[tpb.ConvergencePolicy]:
    step = st.builds(tpb.DowntimeStep, max_downtime_ms=uint(32), after_s=SECONDS, after_iterations=uint(32))
    return st.builds(
        tpb.ConvergencePolicy,
        name=text(["busy", "default"]),
        bandwidth_mibps=uint(32),
        downtime_steps=bounded_list(step, tpb.DowntimeStep(max_downtime_ms=300)),
        auto_converge=st.booleans(),
        auto_converge_initial=uint(32),
        auto_converge_increment=uint(32),
        postcopy=ENUM,
        postcopy_after_s=SECONDS,
        postcopy_bandwidth_mibps=uint(32),
        stall_iterations=uint(32),
        stall_tolerance=SECONDS,
        completion_timeout_s=SECONDS,
        timeout_per_gib_s=SECONDS,
        min_timeout_s=SECONDS,
        progress_timeout_s=SECONDS,
        timeout_action=ENUM,
        parallel_connections=uint(32),
        compression=bounded_list(text(["mt", "xbzrle", "zlib", "zstd"]), "mt"),
        refuse_unfinishable=st.booleans(),
    )


@dataclass(frozen=True)
class Rpc:
    service: str  # "agent" or "coordinator"
    method: str
    request: Callable[[dict[str, Any]], st.SearchStrategy[Any]]
    streaming: bool = False
    # a stream that sends nothing until something matching changes (a watch of the whole fleet):
    # silence for SILENT_S after the call is an answer; a refusal comes before any wait
    may_stay_silent: bool = False


def mutate(base: Any, fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """``base`` (a valid request) with one field replaced by a fuzzed value: deeper than a request
    whose every field is fuzzed, which rarely gets past the edge checks."""

    def apply(item: tuple[str, Any]) -> Any:
        name, value = item
        m = type(base)()
        m.CopyFrom(base)
        current = getattr(m, name)
        if isinstance(value, dict):
            current.clear()
            current.update(value)
        elif isinstance(value, list):
            del current[:]
            current.extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            current.CopyFrom(value)
        else:
            setattr(m, name, value)
        return m

    return st.sampled_from(sorted(fields)).flatmap(lambda n: fields[n].map(lambda v: (n, v))).map(apply)


def fuzzed(
    message: type, base: str, fields: Callable[[dict[str, Any]], dict[str, st.SearchStrategy[Any]]]
) -> Callable[[dict[str, Any]], st.SearchStrategy[Any]]:
    """Every field fuzzed, or the valid request ``real["bases"][base]`` with one field fuzzed."""
    return lambda r: st.one_of(st.builds(message, **fields(r)), mutate(r["bases"][base], fields(r)))


PLAN_MANY = tpb.DiskPlan(target="vda", copy=True, virtual_size=1)

RPCS = [
    Rpc("agent", "GetInventory", lambda r: st.just(apb.GetInventoryRequest())),
    Rpc(
        "agent",
        "GetDomain",
        lambda r: st.builds(apb.GetDomainRequest, name=text(r["names"]), include_xml=st.booleans(), leader_term=term()),
    ),
    Rpc(
        "agent",
        "PrepareIncoming",
        fuzzed(
            apb.PrepareIncomingRequest,
            "prepare",
            lambda r: {
                "domain_xml": xml(r["xml"]),
                "disks": bounded_list(disk_plan(r["names"]), PLAN_MANY),
                "mapping": mapping(r["names"]),
                "storage": ENUM,
                "ttl_seconds": uint(32),
                "migration_id": text(r["ids"]),
                "dry_run": st.booleans(),
                "leader_term": term(),
            },
        ),
    ),
    Rpc(
        "agent",
        "CleanupIncoming",
        lambda r: st.builds(
            apb.CleanupIncomingRequest, prepare_id=text(r["ids"]), discard_incoming=st.booleans(), leader_term=term()
        ),
    ),
    Rpc(
        "agent",
        "CommitIncoming",
        lambda r: st.builds(apb.CommitIncomingRequest, prepare_id=text(r["ids"]), leader_term=term()),
    ),
    Rpc("agent", "ListPrepares", lambda r: st.builds(apb.ListPreparesRequest, leader_term=term())),
    Rpc(
        "agent",
        "Migrate",
        fuzzed(
            apb.MigrateRequest,
            "migrate",
            lambda r: {
                "domain": text(r["names"]),
                "target_uri": text(r["uris"]),
                "migrate_uri": text(["tcp://10.77.0.12", "tcp://10.77.0.12:49152"]),
                "destination_xml": st.one_of(st.just(""), xml(r["xml"])),
                "options": options(),
                "migration_id": text(r["ids"]),
                "progress_interval_ms": uint(32),
                "disks": bounded_list(disk_plan(r["names"]), PLAN_MANY),
                "leader_term": term(),
                "policy": policy(),
                "predicted_converges": st.booleans(),
            },
        ),
        streaming=True,
    ),
    Rpc(
        "agent",
        "AbortMigration",
        lambda r: st.builds(apb.AbortMigrationRequest, domain=text(r["names"]), leader_term=term()),
    ),
    Rpc("agent", "TuneMigration", lambda r: tune(text(r["names"]))),
    Rpc(
        "agent",
        "GetJob",
        lambda r: st.builds(apb.GetJobRequest, domain=text(r["names"]), completed=st.booleans(), leader_term=term()),
    ),
    Rpc(
        "agent",
        "ProbeTarget",
        lambda r: st.builds(apb.ProbeTargetRequest, target_uri=text(r["uris"]), migration_address=text(["10.77.0.12"])),
    ),
    Rpc(
        "agent",
        "MeasureGuest",
        lambda r: st.builds(
            apb.MeasureGuestRequest,
            domain=text(r["names"]),
            periods_s=st.one_of(
                st.lists(st.sampled_from([0, 1, 2, 61, (1 << 32) - 1]), max_size=3), bounded_list(uint(32), 1)
            ),
        ),
    ),
    Rpc(
        "agent",
        "RemoveSourceDisks",
        lambda r: st.builds(
            apb.RemoveSourceDisksRequest,
            domain_uuid=text(r["uuids"]),
            paths=bounded_list(paths(), "/var/lib/libvirt/images/g1.qcow2"),
            migration_id=text(r["ids"]),
            leader_term=term(),
        ),
    ),
    Rpc(
        "agent",
        "MarkSharedStorage",
        lambda r: st.builds(
            apb.MarkSharedStorageRequest,
            disk_paths=bounded_list(paths(), "/srv/shared/g1-data.raw"),
            token=text(["00112233445566778899aabbccddeeff", "XYZ"]),
        ),
    ),
    Rpc(
        "agent",
        "UnmarkSharedStorage",
        lambda r: st.builds(
            apb.UnmarkSharedStorageRequest,
            probes=bounded_list(paths(), "/srv/shared/.ferry-probe-00112233445566778899aabbccddeeff"),
        ),
    ),
    Rpc(
        "coordinator",
        "SubmitMigration",
        fuzzed(
            cpb.SubmitMigrationRequest,
            "submit",
            lambda r: {
                "vm": text(r["names"]),
                "target_host": text(["host1", "host2", "host3"]),
                "options": options(),
                "idempotency_key": text(["k1", "k2"]),
                "priority": INT32,
                "mapping": mapping(r["names"]),
                "policy": text(["busy", ""]),
            },
        ),
    ),
    Rpc("coordinator", "GetMigration", lambda r: st.builds(cpb.GetMigrationRequest, id=text(r["ids"]))),
    Rpc(
        "coordinator",
        "ListMigrations",
        lambda r: st.builds(
            cpb.ListMigrationsRequest,
            phases=bounded_list(ENUM, 1),
            host=text(r["names"]),
            vm=text(r["names"]),
            limit=uint(32),
            page_size=uint(32),
            page_token=text(),
        ),
    ),
    Rpc(
        "coordinator",
        "WatchMigration",
        lambda r: st.builds(cpb.WatchMigrationRequest, id=text(r["ids"])),
        streaming=True,
    ),
    Rpc("coordinator", "CancelMigration", lambda r: st.builds(cpb.CancelMigrationRequest, id=text(r["ids"]))),
    Rpc(
        "coordinator",
        "ListHosts",
        lambda r: st.builds(cpb.ListHostsRequest, page_size=uint(32), page_token=text()),
    ),
    Rpc(
        "coordinator",
        "ListVMs",
        lambda r: st.builds(cpb.ListVMsRequest, host=text(r["names"]), page_size=uint(32), page_token=text()),
    ),
    Rpc(
        "coordinator",
        "Preflight",
        fuzzed(
            cpb.PreflightRequest,
            "preflight",
            lambda r: {
                "vm": text(r["names"]),
                "target_host": text(["host1", "host2", "host3"]),
                "options": options(),
                "mapping": mapping(r["names"]),
                "policy": text(["busy", ""]),
            },
        ),
    ),
    # fleet operations: cordons, placement, drains, the fleet-wide watch
    Rpc(
        "coordinator",
        "CordonHost",
        lambda r: st.builds(cpb.CordonHostRequest, host=text(["host3", "host9"]), reason=text(["kernel"])),
    ),
    Rpc("coordinator", "UncordonHost", lambda r: st.builds(cpb.UncordonHostRequest, host=text(["host3", "host9"]))),
    Rpc("coordinator", "ForgetHost", lambda r: st.builds(cpb.ForgetHostRequest, host=text(["host3", "host9"]))),
    Rpc(
        "coordinator",
        "RankTargets",
        lambda r: st.builds(
            cpb.RankTargetsRequest,
            vm=text(r["names"]),
            options=options(),
            mapping=mapping(r["names"]),
            hosts=bounded_list(text(["host1", "host2", "host3"]), "host2"),
        ),
    ),
    Rpc(
        "coordinator",
        "SubmitDrain",
        lambda r: st.builds(
            cpb.SubmitDrainRequest,
            host=text(["host1", "host2", "host3"]),
            targets=bounded_list(text(["host1", "host2", "host3"]), "host2"),
            max_parallel=uint(32),
            policy=text(["default"]),
            dry_run=st.just(True),  # a plan only: the fleet stays as the other RPCs expect it
            reason=text(["kernel"]),
            options=options(),
        ),
    ),
    Rpc("coordinator", "GetDrain", lambda r: st.builds(cpb.GetDrainRequest, id=text(r["ids"]))),
    Rpc(
        "coordinator",
        "ListDrains",
        lambda r: st.builds(
            cpb.ListDrainsRequest,
            host=text(r["names"]),
            states=bounded_list(ENUM, 1),
            page_size=uint(32),
            page_token=text(),
        ),
    ),
    Rpc(
        "coordinator",
        "WatchDrain",
        lambda r: st.builds(cpb.WatchDrainRequest, id=text(r["ids"])),
        streaming=True,
    ),
    Rpc("coordinator", "PauseDrain", lambda r: st.builds(cpb.PauseDrainRequest, id=text(r["ids"]))),
    Rpc("coordinator", "ResumeDrain", lambda r: st.builds(cpb.ResumeDrainRequest, id=text(r["ids"]))),
    Rpc("coordinator", "CancelDrain", lambda r: st.builds(cpb.CancelDrainRequest, id=text(r["ids"]))),
    Rpc(
        "coordinator",
        "WatchFleet",
        lambda r: st.builds(
            cpb.WatchFleetRequest,
            objects=bounded_list(ENUM, 1),
            hosts=bounded_list(text(r["names"]), "host1"),
            vms=bounded_list(text(r["names"]), "g1"),
            phases=bounded_list(ENUM, 1),
            drain_states=bounded_list(ENUM, 1),
            current=st.booleans(),
        ),
        streaming=True,
        may_stay_silent=True,
    ),
    Rpc("coordinator", "ListPolicies", lambda r: st.just(cpb.ListPoliciesRequest())),
    Rpc("coordinator", "ControlMigration", lambda r: control(r["ids"])),
]


def test_every_rpc_of_both_services_is_fuzzed():
    served = {
        "agent": set(apb.DESCRIPTOR.services_by_name["Agent"].methods_by_name),
        "coordinator": set(cpb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name),
    }
    fuzzed = {s: {r.method for r in RPCS if r.service == s} for s in served}
    assert fuzzed == served


# ---------------------------------------------------------------- the properties


def trailer_bytes(exc: grpc.aio.AioRpcError) -> int:
    """What the status costs in trailers on the wire: grpc-message (percent-encoded) and every
    trailing metadata entry (binary ones base64-encoded)."""
    message = (exc.details() or "").encode()
    size = len("grpc-message") + sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in message)
    for key, value in exc.trailing_metadata() or ():
        size += len(key) + (-(-len(value) // 3) * 4 if isinstance(value, bytes) else len(value))
    return size


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                    return info
    return None


async def call(apis: Apis, rpc: Rpc, request: Any, host: str) -> None:
    stub = apis.agents[host] if rpc.service == "agent" else apis.setup.stub
    method = getattr(stub, rpc.method)
    if not rpc.streaming:
        await method(request, timeout=CALL_TIMEOUT_S)
        return
    stream = method(request, timeout=CALL_TIMEOUT_S)
    try:  # the first message (or the refusal): edge checks come before it
        if rpc.may_stay_silent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stream.read(), SILENT_S)
        else:
            await stream.read()
    finally:
        stream.cancel()


@pytest.mark.parametrize("rpc", RPCS, ids=[f"{r.service}.{r.method}" for r in RPCS])
def test_fuzzed_requests_get_an_answer_or_a_typed_refusal(apis: Apis, rpc: Rpc) -> None:
    apis.figures["rpcs"] += 1
    strategy = st.tuples(rpc.request(apis.real), st.sampled_from(sorted(apis.agents)))

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(strategy)
    def one(args: tuple[Any, str]) -> None:
        request, host = args
        apis.figures["requests"] += 1
        try:
            apis.loop.run(call(apis, rpc, request, host), timeout=CALL_TIMEOUT_S + 5)
        except grpc.aio.AioRpcError as exc:
            code, info, size = exc.code(), error_info(exc), trailer_bytes(exc)
            apis.figures["max_trailer"] = max(apis.figures["max_trailer"], size)
            if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (exc.details() or ""):
                apis.figures["code:RESOURCE_EXHAUSTED (message size limit)"] += 1  # gRPC's own cap, before us
                return
            crashed = code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) or info is None
            apis.figures["crashes" if crashed else f"code:{code.name}"] += 1
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                f"{rpc.method}: {code.name}: {exc.details()[:300]}"
            )
            assert info is not None and info.reason, f"{rpc.method}: untyped {code.name}: {exc.details()[:300]}"
            assert size <= TRAILER_LIMIT, f"{rpc.method}: a {size}-byte trailer ({info.reason})"
            assert len(exc.details() or "") <= 1100
            return
        apis.figures["ok"] += 1

    one()


def test_the_figures_add_up(apis: Apis) -> None:
    """Runs last in the module (pytest keeps file order): every request was counted once."""
    f = apis.figures
    if not f["requests"]:
        pytest.skip("no fuzz test ran in this session")
    refused = sum(v for k, v in f.items() if k.startswith("code:"))
    assert f["requests"] == f["ok"] + refused + f["crashes"]
    assert f["crashes"] == 0
