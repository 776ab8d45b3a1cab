"""The coordinator's API end to end: a real coordinator gRPC server on 127.0.0.1:0 over an
in-memory store, real agent gRPC servers (over fakes) that registered themselves in that store,
driven through the real `ferry` CLI code and through the stub.

What an operator would check: a refused request says why (code, reason, hint); the same
idempotency key gives the same migration; a busy VM is refused naming the migration in the way;
lists filter and sort as asked; cancel marks the record; a watch streams every phase until the
end; `ferry hosts`/`ferry vms` show what is on each host; `ferry preflight` lists every blocker.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import grpc
import pytest
from coordinator_setup import Setup, close, config, start

from ferry import keys
from ferry.agent.registration import Registration
from ferry.agent.targets import MigrationTargets
from ferry.cli import main as cli
from ferry.coordinator.agent_client import GrpcAgentClient
from ferry.coordinator.main import build_coordinator, current_leader
from ferry.coordinator.phases import Phase
from ferry.coordinator.record import decode
from ferry.errors import FerryError
from ferry.model import DomainState
from ferry.rpc import create_channel, from_rpc_error
from ferry.testing.fake_hostsystem import FakeDir
from ferry.testing.fake_hypervisor import GiB, MiB, make_domain_xml
from ferry.testing.memory_store import MemoryStore
from ferry.testing.store_reads import ReadLog
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import types_pb2 as tpb


async def refused(call) -> FerryError:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await call
    err = from_rpc_error(exc.value)
    err.code_seen = exc.value.code()  # type: ignore[attr-defined]
    return err


# ---------------------------------------------------------------- submit


@pytest.mark.parametrize(
    ("vm", "to", "code", "reason"),
    [
        ("", "host2", grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD"),
        ("nope", "", grpc.StatusCode.NOT_FOUND, "VM_UNKNOWN"),  # no target: placed, once found
        ("g1", "host9", grpc.StatusCode.NOT_FOUND, "TARGET_UNKNOWN"),
        ("nope", "host2", grpc.StatusCode.NOT_FOUND, "VM_UNKNOWN"),
        ("g1", "host1", grpc.StatusCode.FAILED_PRECONDITION, "SAME_HOST"),
    ],
)
async def test_submit_is_refused_with_code_reason_and_hint(fx, vm, to, code, reason):
    fx.agents.add_guest("host1", "g1")
    err = await refused(fx.submit(vm, to))
    assert (err.code_seen, err.reason) == (code, reason)
    assert err.hint
    entries, _ = await fx.store.list(keys.MIGRATIONS)
    assert entries == []  # nothing was recorded


@pytest.mark.parametrize(
    ("args", "reason", "meant"),
    [
        (("migrate", "g1", "--to", "HOST2", "--no-wait"), "TARGET_UNKNOWN", "host2"),
        (("migrate", "g1", "--to", "qemu+tls://host2.dc1.example/system", "--no-wait"), "TARGET_UNKNOWN", "host2"),
        (("migrate", "G1", "--no-wait"), "VM_UNKNOWN", "g1"),
        (("migrate", "gg1", "--to", "host2", "--no-wait"), "VM_UNKNOWN", "g1"),
        (("drain", "hots1", "--dry-run"), "HOST_UNKNOWN", "host1"),
        (("drain", "host1", "--to", "host2.dc1", "--dry-run"), "TARGET_UNKNOWN", "host2"),
        (("hosts", "cordon", "HOST1", "--reason", "fan"), "HOST_UNKNOWN", "host1"),
        (("vms", "--host", "host1.dc1.example"), "HOST_UNKNOWN", "host1"),
    ],
)
async def test_a_name_the_fleet_knows_otherwise_is_refused_saying_which_it_knows(fx, capsys, args, reason, meant):
    fx.agents.add_guest("host1", "g1")
    code, out = await fx.ferry(capsys, *args)
    assert code == 2 and out["error"]["reason"] == reason
    assert out["error"]["hint"].startswith(f"did you mean {meant!r}?")
    entries, _ = await fx.store.list(keys.MIGRATIONS)
    assert entries == []


@pytest.mark.parametrize(
    "args",
    [
        ("migrate", "g1", "--to", "qemu+tls://[fd00::12/system", "--no-wait"),  # virsh's URI, a bracket lost
        ("hosts", "cordon", "qemu+tls://[fd00::12/system", "--reason", "fan"),
        ("drain", "qemu+tls://[fd00::12/system", "--dry-run"),
        ("vms", "--host", "qemu+tls://[fd00::12/system"),
    ],
)
async def test_a_host_name_no_uri_parser_reads_is_unknown_not_an_internal_error(fx, capsys, args):
    fx.agents.add_guest("host1", "g1")
    code, out = await fx.ferry(capsys, *args)
    assert code == 2 and out["error"]["code"] == "NOT_FOUND", out
    assert out["error"]["reason"] in ("TARGET_UNKNOWN", "HOST_UNKNOWN")


async def test_ranking_among_hosts_the_fleet_does_not_know_is_refused_naming_them(fx):
    """A typo in RankTargets' hosts would otherwise answer an empty ranking: "nothing fits"."""
    fx.agents.add_guest("host1", "g1")
    err = await refused(fx.stub.RankTargets(cpb.RankTargetsRequest(vm="g1", hosts=["host2", "hots3"])))
    assert (err.code_seen, err.reason) == (grpc.StatusCode.NOT_FOUND, "TARGET_UNKNOWN")
    assert "'hots3'" in err.message and err.hint.startswith("did you mean 'host3'?")


async def test_cli_reports_a_refusal_with_exit_2(fx, capsys):
    code, out = await fx.ferry(capsys, "migrate", "nope", "--to", "host2", "--no-wait")
    assert code == 2
    assert out["error"]["reason"] == "VM_UNKNOWN" and out["error"]["code"] == "NOT_FOUND"
    assert "ferry vms" in out["error"]["hint"]


async def test_submit_records_a_pending_migration(fx, capsys):
    uuid = fx.agents.add_guest("host1", "g1")
    code, m = await fx.ferry(capsys, "migrate", "g1", "--to", "host2", "--no-wait", "--priority", "3")
    assert code == 0
    assert (m["vm"], m["vm_uuid"], m["source_host"], m["target_host"]) == ("g1", uuid, "host1", "host2")
    assert m["phase"] == "pending" and m["priority"] == 3 and m["idempotency_key"]
    assert m["history"][0]["phase"] == "pending" and m["history"][0]["reason"] == "submitted"
    # storage was left to the coordinator: vda is local, so copy-all; the bridge mapping is derived
    assert m["options"]["storage"] == "copy_all"
    assert m["mapping"]["bridges"] == {"br-guest": "br-vm"}
    entry = await fx.store.get(keys.migration_key(m["id"]))
    record = decode(entry.value, entry.mod_revision)
    _, domain = await fx.coordinator.fleet.locate_vm("g1")
    vda = next(d for d in domain.disks if d.target == "vda")
    assert record.memory_bytes == 256 * MiB
    assert record.disk_bytes == vda.allocation > 0  # only vda is copied (vdb is shared)
    assert keys.decode_id((await fx.store.get(keys.vm_active_key(uuid))).value) == m["id"]


async def test_request_mapping_overrides_the_derived_one(fx):
    fx.agents.add_guest("host1", "g1")
    # overrides must land on what the target has (a bridge, an image directory): host2 has both
    host2 = fx.agents["host2"].host
    host2.bridge_names.append("br-other")
    host2.dirs["/data"] = FakeDir(10 << 30, 10 << 30)
    host2.storage.append("/data")
    m = await fx.submit(
        "g1", "host2", mapping=tpb.HostMapping(bridges={"br-guest": "br-other"}, path_prefixes={"/srv": "/data"})
    )
    assert dict(m.mapping.bridges) == {"br-guest": "br-other"}
    assert dict(m.mapping.path_prefixes) == {"/srv": "/data"}


async def test_same_idempotency_key_returns_the_same_migration(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    args = ("migrate", "g1", "--to", "host2", "--no-wait", "--idempotency-key", "deploy-42")
    code1, first = await fx.ferry(capsys, *args)
    code2, again = await fx.ferry(capsys, *args)
    assert code1 == code2 == 0
    assert again["id"] == first["id"] and again == first
    # the same key with other arguments is another request: refused, nothing written
    err = await refused(fx.submit("g1", "host3", key="deploy-42"))
    assert (err.code_seen, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "IDEMPOTENCY_KEY_REUSED")
    assert first["id"] in err.message and "target_host" in err.message
    entries, _ = await fx.store.list(keys.MIGRATIONS)
    assert len(entries) == 1


async def test_concurrent_submissions_with_one_key_make_one_migration(fx):
    fx.agents.add_guest("host1", "g1")
    results = await asyncio.gather(*(fx.submit("g1", "host2", key="k") for _ in range(5)))
    assert len({m.id for m in results}) == 1
    entries, _ = await fx.store.list(keys.MIGRATIONS)
    assert len(entries) == 1


async def test_second_migration_of_a_busy_vm_is_refused(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    first = await fx.submit("g1", "host2", key="k1")
    err = await refused(fx.submit("g1", "host3", key="k2"))
    assert (err.code_seen, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VM_BUSY")
    assert first.id in err.message and f"ferry migrations cancel {first.id}" in err.hint
    assert await fx.store.get(keys.idempotency_key("k2")) is None  # our key was released
    code, out = await fx.ferry(capsys, "migrate", "g1", "--to", "host3", "--no-wait")
    assert code == 2 and out["error"]["reason"] == "VM_BUSY"
    # once the first is final, the VM may migrate again (the stale vm-active key is taken over)
    await fx.advance(first.id, Phase.FAILED)
    second = await fx.submit("g1", "host3", key="k2")
    assert second.id != first.id and second.phase == cpb.PHASE_PENDING


async def test_keys_left_by_a_crashed_submission_are_taken_over(fx):
    uuid = fx.agents.add_guest("host1", "g1")
    fx.coordinator.servicer.submissions.in_flight_wait_s = 0.2
    # a submission wrote its keys and died before writing its record
    await fx.store.create(keys.idempotency_key("k1"), keys.encode_id("m-crashed"))
    await fx.store.create(keys.vm_active_key(uuid), keys.encode_id("m-crashed"))
    m = await fx.submit("g1", "host2", key="k1")
    assert m.id != "m-crashed" and m.phase == cpb.PHASE_PENDING
    assert keys.decode_id((await fx.store.get(keys.idempotency_key("k1"))).value) == m.id
    assert keys.decode_id((await fx.store.get(keys.vm_active_key(uuid))).value) == m.id
    assert (await fx.submit("g1", "host2", key="k1")).id == m.id


async def test_unknown_disk_to_copy_is_refused(fx):
    fx.agents.add_guest("host1", "g1")
    err = await refused(
        fx.submit("g1", "host2", options=tpb.MigrationOptions(storage=tpb.STORAGE_MODE_COPY_ALL, migrate_disks=["vdz"]))
    )
    assert (err.code_seen, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "DISK_NOT_IN_DOMAIN")
    assert "vda" in err.hint


# ---------------------------------------------------------------- get, list, cancel, watch


async def test_get_unknown_migration(fx, capsys):
    code, out = await fx.ferry(capsys, "migrations", "show", "m-nope")
    assert code == 2 and out["error"]["reason"] == "MIGRATION_UNKNOWN" and out["error"]["code"] == "NOT_FOUND"


async def test_list_filters_and_order(fx, capsys):
    for host, vm in (("host1", "a"), ("host1", "b"), ("host2", "c")):
        fx.agents.add_guest(host, vm)
    ma = await fx.submit("a", "host2")
    mb = await fx.submit("b", "host3")
    mc = await fx.submit("c", "host3")
    await fx.advance(mb.id, Phase.CANCELLED)

    async def ids(*args: str) -> list[str]:
        code, out = await fx.ferry(capsys, "migrations", *args)
        assert code == 0
        return [m["id"] for m in out["migrations"]]

    assert await ids() == [mc.id, mb.id, ma.id]  # newest first
    assert await ids("--limit", "2") == [mc.id, mb.id]
    assert await ids("--host", "host2") == [mc.id, ma.id]  # as source or as target
    assert await ids("--vm", "b") == [mb.id]
    assert await ids("--vm", ma.vm_uuid) == [ma.id]  # by UUID too
    assert await ids("--phase", "pending") == [mc.id, ma.id]
    assert await ids("--phase", "cancelled", "--phase", "pending", "--host", "host3") == [mc.id, mb.id]
    assert await ids("--host", "host9") == []


async def test_cancel_a_pending_migration(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    m = await fx.submit("g1", "host2")
    code, out = await fx.ferry(capsys, "migrations", "cancel", m.id)
    assert code == 0 and out["cancel_requested"] is True and out["phase"] == "pending"
    got = await fx.stub.GetMigration(cpb.GetMigrationRequest(id=m.id))
    assert got.cancel_requested and got.history[-1].reason == "cancel requested"
    again = await fx.stub.CancelMigration(cpb.CancelMigrationRequest(id=m.id))  # repeating is fine
    assert again.cancel_requested and len(again.history) == len(got.history)
    await fx.advance(m.id, Phase.CANCELLED)
    code, out = await fx.ferry(capsys, "migrations", "cancel", m.id)
    assert code == 2 and out["error"]["reason"] == "ALREADY_FINAL" and out["error"]["code"] == "FAILED_PRECONDITION"


async def test_watch_streams_every_phase_until_final(fx):
    fx.agents.add_guest("host1", "g1")
    m = await fx.submit("g1", "host2")
    seen: list[int] = []

    async def follow() -> None:
        async for update in fx.stub.WatchMigration(cpb.WatchMigrationRequest(id=m.id)):
            seen.append(update.phase)

    watcher = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    await fx.advance(m.id, Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING, Phase.ROLLING_BACK, Phase.ROLLED_BACK)
    await asyncio.wait_for(watcher, 5)  # the stream ends at the final phase
    assert seen == [
        cpb.PHASE_PENDING,
        cpb.PHASE_PREFLIGHT,
        cpb.PHASE_PREPARING,
        cpb.PHASE_MIGRATING,
        cpb.PHASE_ROLLING_BACK,
        cpb.PHASE_ROLLED_BACK,
    ]


async def test_watch_of_a_final_migration_returns_it_and_ends(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    m = await fx.submit("g1", "host2")
    await fx.advance(m.id, Phase.FAILED)
    code, out = await fx.ferry(capsys, "migrations", "watch", m.id)
    assert code == 1 and out["phase"] == "failed"  # not a success: exit 1


async def test_watch_resyncs_after_compaction(fx):
    fx.agents.add_guest("host1", "g1")
    m = await fx.submit("g1", "host2")
    stream = fx.stub.WatchMigration(cpb.WatchMigrationRequest(id=m.id))
    first = await stream.read()
    assert first.phase == cpb.PHASE_PENDING
    await fx.advance(m.id, Phase.PREFLIGHT)
    await fx.store.compact(fx.store.revision)  # history gone: the watch gets a Resync
    await fx.advance(m.id, Phase.FAILED)
    phases = []
    while (update := await asyncio.wait_for(stream.read(), 5)) is not grpc.aio.EOF:
        phases.append(update.phase)
    assert phases[-1] == cpb.PHASE_FAILED


# ---------------------------------------------------------------- hosts and VMs


async def test_hosts_show_agents_facts_and_migration_counts(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    fx.agents.add_guest("host1", "g2")
    await fx.submit("g1", "host2")
    code, out = await fx.ferry(capsys, "hosts")
    assert code == 0
    hosts = {h["name"]: h for h in out["hosts"]}
    assert list(hosts) == ["host1", "host2", "host3"]
    h1, h2 = hosts["host1"], hosts["host2"]
    assert h1["available"] and h1["address"] == fx.agents["host1"].address
    assert h1["facts"]["bridges"] == ["br-guest"] and h2["facts"]["bridges"] == ["br-vm"]
    assert h1["facts"]["libvirt_uri"] == "qemu+tcp://10.77.0.11/system"
    assert h1["domains"] == 2 and h1["migrations_out"] == 1 and h1["migrations_in"] == 0
    assert h2["migrations_in"] == 1 and h1["last_seen"]


async def test_a_lost_agent_shows_down_with_its_last_facts(fx, capsys):
    await fx.ferry(capsys, "hosts")
    await fx.agents["host3"].stop()  # the process is gone; its lease not yet
    code, out = await fx.ferry(capsys, "hosts")
    h3 = {h["name"]: h for h in out["hosts"]}["host3"]
    assert h3["available"] is False and h3["facts"]["bridges"] == ["br-guest"]
    assert "host3" not in fx.coordinator.fleet.available_hosts()
    await fx.registrations["host3"].stop()  # and now its registration is gone too
    await asyncio.sleep(0.05)
    code, out = await fx.ferry(capsys, "hosts")
    h3 = {h["name"]: h for h in out["hosts"]}["host3"]
    assert h3["available"] is False and h3["facts"]["hostname"] == "host3"
    await fx.agents["host3"].start()  # restarted: registers again, available again
    reg = fx.registrations["host3"] = Registration(fx.store, "host3", fx.agents["host3"].address, ttl_s=10)
    asyncio.get_running_loop().create_task(reg.run())
    await asyncio.wait_for(reg.registered.wait(), 5)
    for _ in range(50):  # gRPC may wait out its reconnect backoff (about 1 s) first
        code, out = await fx.ferry(capsys, "hosts")
        if {h["name"]: h for h in out["hosts"]}["host3"]["available"]:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"host3 did not come back: {fx.coordinator.fleet.host('host3')}")


async def test_an_agent_that_answers_again_is_available_again_by_itself(fx, capsys):
    await fx.agents["host2"].stop()  # a hiccup: the agent is gone, its lease is not
    code, out = await fx.ferry(capsys, "hosts")
    assert {h["name"]: h for h in out["hosts"]}["host2"]["available"] is False
    assert "host2" not in fx.coordinator.fleet.available_hosts()
    await fx.agents["host2"].start()
    for _ in range(100):  # nobody calls the API: the fleet asks again
        if "host2" in fx.coordinator.fleet.available_hosts():
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"host2 did not come back: {fx.coordinator.fleet.host('host2')}")


async def test_vms_list_every_host_with_active_migration(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    fx.agents.add_guest("host2", "g2")
    m = await fx.submit("g1", "host3")
    code, out = await fx.ferry(capsys, "vms")
    assert code == 0
    vms = {v["domain"]["name"]: v for v in out["vms"]}
    assert (vms["g1"]["host"], vms["g1"]["migration_id"]) == ("host1", m.id)
    assert vms["g2"]["host"] == "host2" and vms["g2"]["migration_id"] == ""
    assert vms["g1"]["domain"]["state"] == "running"
    code, out = await fx.ferry(capsys, "vms", "--host", "host2")
    assert [v["domain"]["name"] for v in out["vms"]] == ["g2"]
    code, out = await fx.ferry(capsys, "vms", "--host", "host9")
    assert code == 2 and out["error"]["reason"] == "HOST_UNKNOWN"


async def test_vms_lists_every_page(fx, capsys):
    """ListVMs answers 500 a page; `ferry vms` asks for the next ones until there are none."""
    for i in range(510):
        fx.agents.add_guest("host1", f"v{i:04d}", local_disk=False, memory=1 << 20)
    code, out = await fx.ferry(capsys, "vms")
    assert code == 0 and len({v["domain"]["name"] for v in out["vms"]}) == 510
    assert "next_page_token" not in out or not out["next_page_token"]


async def test_a_dead_hosts_vms_stay_listed_as_unreachable(fx, capsys):
    """A host that died (agent, libvirtd and guests at once) must not lose its VMs in the
    records: they stay listed where they last ran, marked unreachable, with when that was."""
    fx.agents.add_guest("host3", "g3")
    code, out = await fx.ferry(capsys, "vms")
    assert {v["domain"]["name"]: v for v in out["vms"]}["g3"]["unreachable"] is False  # alive: not marked
    await fx.agents["host3"].stop()
    await fx.registrations["host3"].stop()  # its lease is gone
    await asyncio.sleep(0.05)
    code, out = await fx.ferry(capsys, "vms")
    assert code == 0
    g3 = {v["domain"]["name"]: v for v in out["vms"]}["g3"]
    assert (g3["host"], g3["domain"]["state"], g3["unreachable"]) == ("host3", "running", True)
    assert g3["last_seen"]
    code, out = await fx.ferry(capsys, "vms", "--host", "host3")
    assert [v["domain"]["name"] for v in out["vms"]] == ["g3"]
    capsys.readouterr()
    assert await cli.run(["--coordinator", fx.address, "--insecure", "vms", "--host", "host3"]) == 0  # the table
    assert "unreachable (last: running)" in capsys.readouterr().out
    assert fx.agents.where("g3") == {"host3": DomainState.RUNNING}  # nothing started elsewhere


async def test_running_copy_wins_over_a_leftover_definition(fx):
    from ferry.model import DomainState

    uuid = fx.agents.add_guest("host1", "g1")
    xml = make_domain_xml("g1", uuid=uuid, bridges=["br-vm"])
    fx.agents["host2"].hv.add_domain(xml, state=DomainState.SHUTOFF)  # left behind on host2
    located = await fx.coordinator.fleet.locate_vm("g1")
    assert located is not None and located[0] == "host1"
    m = await fx.submit("g1", "host2")
    assert m.source_host == "host1"


@pytest.mark.parametrize(
    ("copies", "available", "picked"),
    [
        ([("h1", "shutoff"), ("h2", "running")], {"h1", "h2"}, "h2"),  # the running copy, not the leftover
        ([("h1", "running"), ("h2", "shutoff")], {"h2"}, "h1"),  # even on a host that is down now
        ([("h1", "running"), ("h2", "running")], {"h2"}, "h2"),  # h1's report is stale
        ([("h2", "paused"), ("h1", "paused")], {"h1", "h2"}, "h1"),  # equals: by host name
        ([], {"h1"}, None),
    ],
)
def test_which_copy_of_a_vm_counts(copies, available, picked):
    from ferry.coordinator.fleet import pick_domain
    from ferry.model import DomainInfo, DomainState

    found = [(h, DomainInfo("g1", "u1", DomainState[state.upper()])) for h, state in copies]
    got = pick_domain(found, available)
    assert (got[0] if got else None) == picked


# ---------------------------------------------------------------- preflight


async def test_preflight_ok_with_the_derived_mapping(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    code, out = await fx.ferry(capsys, "preflight", "g1", "--to", "host2")
    assert code == 0 and out["ok"] and out["source_host"] == "host1"
    disks = {d["target"]: d for d in out["disks"]}
    assert disks["vda"]["copy"] and disks["vdb"]["copy"] is False
    assert any("copy-all" in w for w in out["warnings"])
    assert fx.agents["host2"].host.created == []  # a dry run creates nothing


async def test_preflight_lists_every_blocker_at_once(tmp_path, capsys):
    s = await start(tmp_path, hosts={})  # no [hosts.*]: no bridge mapping is derived
    try:
        big = s.agents.add_guest("host1", "big", memory=12 * GiB)
        s.agents.add_guest("host2", "filler", memory=8 * GiB)  # host2 has 8 GiB free
        code, out = await s.ferry(capsys, "preflight", "big", "--to", "host2")
        assert code == 1 and out["ok"] is False
        blockers = {b["reason"]: b for b in out["blockers"]}
        assert {"INSUFFICIENT_MEMORY", "BRIDGE_MISSING"} <= set(blockers)
        # asked by UUID (as the engine asks), the messages still name the VM
        code, out = await s.ferry(capsys, "preflight", big, "--to", "host1")
        assert [b["message"] for b in out["blockers"] if b["reason"] == "SAME_HOST"] == ["big already runs on host1"]
        assert "br-guest=br-vm" in blockers["BRIDGE_MISSING"]["hint"]
        assert all(b["hint"] for b in out["blockers"])
        # an unknown target and an unknown VM: both said at once
        code, out = await s.ferry(capsys, "preflight", "nope", "--to", "host9")
        assert code == 1
        blockers = {b["reason"]: b for b in out["blockers"]}
        assert set(blockers) == {"TARGET_UNKNOWN", "VM_UNKNOWN"}
        assert "ferry hosts" in blockers["TARGET_UNKNOWN"]["hint"] and "ferry vms" in blockers["VM_UNKNOWN"]["hint"]
        # names the fleet knows otherwise (case, an FQDN): the hints say which
        code, out = await s.ferry(capsys, "preflight", "BIG", "--to", "Host2.dc1.example")
        blockers = {b["reason"]: b for b in out["blockers"]}
        assert blockers["TARGET_UNKNOWN"]["hint"].startswith("did you mean 'host2'?")
        assert blockers["VM_UNKNOWN"]["hint"].startswith("did you mean 'big'?")
        # the mapping given on the command line fixes the bridge
        s.agents["host2"].hv.domains.clear()
        code, out = await s.ferry(capsys, "preflight", "big", "--to", "host2", "--map-bridge", "br-guest=br-vm")
        assert code == 0 and out["ok"]
    finally:
        await close(s)


async def test_preflight_with_a_down_target(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    await fx.agents["host2"].stop()
    code, out = await fx.ferry(capsys, "preflight", "g1", "--to", "host2")
    assert code == 1
    assert [b["reason"] for b in out["blockers"]] == ["TARGET_DOWN"]


async def test_a_host_that_is_down_says_which_part_and_what_to_check(fx, capsys):
    """Seen on the lab: libvirtd killed on a host showed it DOWN in `ferry hosts` with no reason,
    preflight to it said "start ferry-agent" (the agent ran), and the record of a migration from
    it said "agent on host1 lost"."""
    fx.agents.add_guest("host1", "g1")
    fx.registrations["host2"].set_libvirt_up(False)  # the agent runs; its libvirtd does not answer
    for _ in range(200):
        if "host2" not in fx.coordinator.fleet.available_hosts():
            break
        await asyncio.sleep(0.01)
    code, out = await fx.ferry(capsys, "hosts")
    hosts = {h["name"]: h for h in out["hosts"]}
    assert code == 0 and not hosts["host2"]["available"] and hosts["host1"]["why_down"] is None
    assert hosts["host2"]["why_down"]["reason"] == "LIBVIRTD_DOWN"
    code, out = await fx.ferry(capsys, "preflight", "g1", "--to", "host2")
    [blocker] = out["blockers"]
    assert blocker["reason"] == "TARGET_DOWN"
    assert blocker["message"] == "host2 is not available: libvirtd on host2 does not answer its agent (the agent runs)"
    assert blocker["hint"].startswith("start libvirtd on host2 (`systemctl status libvirtd`)")
    assert blocker["hint"].endswith(", or pick another target")
    # the table says it under the hosts, with the fix
    capsys.readouterr()
    assert await cli.run(["--coordinator", fx.address, "--insecure", "hosts"]) == 0
    text = capsys.readouterr().out
    assert "host2 DOWN: LIBVIRTD_DOWN: libvirtd on host2 does not answer its agent (the agent runs)" in text
    assert "  fix: start libvirtd on host2" in text and "host1 DOWN" not in text
    # the source's libvirtd: SOURCE_DOWN says so
    fx.registrations["host2"].set_libvirt_up(True)
    fx.registrations["host1"].set_libvirt_up(False)
    for _ in range(200):
        if fx.coordinator.fleet.available_hosts() == {"host2", "host3"}:
            break
        await asyncio.sleep(0.01)
    code, out = await fx.ferry(capsys, "preflight", "g1", "--to", "host3")
    assert [(b["reason"], b["message"]) for b in out["blockers"]] == [
        ("SOURCE_DOWN", "host1 is not available: libvirtd on host1 does not answer its agent (the agent runs)")
    ]
    # an agent gone from the registry
    await fx.registrations["host3"].stop()
    for _ in range(200):
        if "host3" not in fx.coordinator.fleet.available_hosts():
            break
        await asyncio.sleep(0.01)
    code, out = await fx.ferry(capsys, "hosts")
    [h3] = [h for h in out["hosts"] if h["name"] == "host3"]
    assert h3["why_down"]["reason"] == "AGENT_NOT_REGISTERED" and "start ferry-agent on host3" in h3["why_down"]["hint"]


# ---------------------------------------------------------------- the server itself


async def test_health_and_reflection_are_served(fx):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with create_channel(fx.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        resp = await health.Check(health_pb2.HealthCheckRequest(service="ferry.v1.Coordinator"))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_leader_key_names_the_elected_replica(tmp_path):
    store = MemoryStore()
    c = build_coordinator(replace(config(), advertise="10.77.0.1:7100"), store, lambda h, a: GrpcAgentClient(h, a))
    c.new_engine = lambda: _IdleEngine()  # type: ignore[method-assign]
    await c.start()
    try:
        for _ in range(100):
            if c.is_leader():
                break
            await asyncio.sleep(0.02)
        leader = await current_leader(store)
        assert leader is not None and (leader.id, leader.address) == ("c1", "10.77.0.1:7100")
    finally:
        await c.stop(grace_s=0.5)
    assert await current_leader(store) is None  # resigned on stop
    await store.close()


class _IdleEngine:
    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self.records: dict = {}
        self.observers: list = []
        self.loaded = asyncio.Event()

    def admit_soon(self) -> None:
        pass

    async def run(self) -> None:
        await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()


# ---------------------------------------------------------------- with the leader's engine


async def test_migrate_waits_until_the_guest_runs_on_the_target(leading, capsys):
    leading.agents.add_guest("host1", "g1")
    seen: list[int] = []
    code, m = await leading.ferry(capsys, "migrate", "g1", "--to", "host2")  # waits with the watch
    assert code == 0, m
    assert m["phase"] == "succeeded" and m["result"]["time_elapsed_ms"] > 0
    assert [h["phase"] for h in m["history"]][-1] == "succeeded"
    assert leading.agents.running_on("g1") == ["host2"]  # moved, and only there
    # the VM may migrate again at once (its vm-active key was released)
    second = await leading.submit("g1", "host3")
    async for update in leading.stub.WatchMigration(cpb.WatchMigrationRequest(id=second.id)):
        seen.append(update.phase)
    # every phase from where the watch started (the engine may have admitted it already)
    full = [
        cpb.PHASE_PENDING,
        cpb.PHASE_PREFLIGHT,
        cpb.PHASE_PREPARING,
        cpb.PHASE_MIGRATING,
        cpb.PHASE_FINISHING,
        cpb.PHASE_SUCCEEDED,
    ]
    phases = list(dict.fromkeys(seen))
    assert phases == full[full.index(phases[0]) :]
    assert leading.agents.running_on("g1") == ["host3"]


async def test_cancel_of_a_queued_migration_ends_it_cancelled(leading, capsys):
    leading.agents.add_guest("host1", "g1")
    await leading.agents["host3"].stop()
    await leading.ferry(capsys, "hosts")  # the coordinator sees host3 down
    m = await leading.submit("g1", "host3")  # queued: its target is unavailable
    await asyncio.sleep(0.3)
    assert (await leading.stub.GetMigration(cpb.GetMigrationRequest(id=m.id))).phase == cpb.PHASE_PENDING
    code, out = await leading.ferry(capsys, "migrations", "cancel", m.id)
    assert code == 0 and out["cancel_requested"]
    code, out = await leading.ferry(capsys, "migrations", "watch", m.id)
    assert code == 1 and out["phase"] == "cancelled"
    assert leading.agents.running_on("g1") == ["host1"]


# ---------------------------------------------------------------- policies, prediction, live control


def with_policies(s: Setup) -> None:
    from ferry.convergence import ConvergencePolicy, PostcopyMode
    from ferry.coordinator.policies import PolicySelector

    s.coordinator.servicer.submissions.policies = {
        "busy": ConvergencePolicy(name="busy", bandwidth_mibps=32, postcopy=PostcopyMode.ON_PREDICTION),
        "strict": ConvergencePolicy(name="strict", bandwidth_mibps=32, refuse_unfinishable=True),
    }
    s.coordinator.servicer.submissions.selectors = (PolicySelector("busy", vm="db-*"),)


async def test_ferry_policies_lists_the_policies_and_the_rules(fx, capsys):
    with_policies(fx)
    code, out = await fx.ferry(capsys, "policies")
    assert code == 0
    assert [(p["name"], p["postcopy"]) for p in out["policies"]] == [("busy", "on_prediction"), ("strict", "never")]
    assert out["selectors"] == [{"policy": "busy", "vm": "db-*", "min_memory_bytes": 0, "max_memory_bytes": 0}]


async def test_preflight_and_submit_predict_and_a_strict_policy_refuses(fx, capsys):
    """A guest dirtying 40 MiB/s (the fake measures it) at a 32 MiB/s cap: preflight says it will
    not converge and what the policy does then; the strict policy refuses up front."""
    with_policies(fx)
    fx.agents.add_guest("host1", "db-1", dirty=40 * MiB)
    code, out = await fx.ferry(capsys, "preflight", "db-1", "--to", "host2")
    assert code == 0 and out["policy"]["name"] == "busy"  # the selector's
    p = out["prediction"]
    assert p["known"] and not p.get("converges") and p["need"] == "post-copy"
    assert "will not converge at 32 MiB/s (guest dirties ~40 MiB/s" in p["words"]
    code, out = await fx.ferry(capsys, "preflight", "db-1", "--to", "host2", "--policy", "strict")
    assert code == 1 and [b["reason"] for b in out["blockers"]] == ["WILL_NOT_CONVERGE"]
    code, out = await fx.ferry(capsys, "migrate", "db-1", "--to", "host2", "--policy", "strict", "--no-wait")
    assert code == 2 and out["error"]["reason"] == "WILL_NOT_CONVERGE"
    m = await fx.submit("db-1", "host2", policy="busy")
    assert m.policy.name == "busy" and m.prediction.need == "post-copy"


async def test_tune_a_running_migration_reads_libvirts_value_back(fx, capsys):
    fx.agents.add_guest("host1", "g1")
    m = await fx.submit("g1", "host2")
    code, out = await fx.ferry(capsys, "migrations", "tune", m.id, "--max-downtime", "700")
    assert code == 2 and out["error"]["reason"] == "MIGRATION_NOT_RUNNING"  # still Pending
    await fx.advance(m.id, Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING)
    code, out = await fx.ferry(capsys, "migrations", "tune", m.id, "--max-downtime", "700", "--bandwidth", "48")
    assert code == 0, out
    assert (out["max_downtime_ms"], out["bandwidth_mibps"]) == (700, 48)  # read back from (fake) libvirt
    assert fx.agents["host1"].hv.calls.count("migration_limits") == 1
    record = out["migration"]
    assert record["history"][-1]["reason"].startswith("tune by ")
    assert "libvirt reads max downtime 700 ms, bandwidth 48 MiB/s" in record["history"][-1]["reason"]
    assert [a["action"] for a in record["actions"]] == ["tune"]
    code, out = await fx.ferry(capsys, "migrations", "tune", m.id)
    assert code == 64 and out["error"]["reason"] == "USAGE"


async def test_a_plain_submit_moves_the_definition_with_the_vm(leading):
    """A scheduler's request with proto3 defaults only (what a reflection client without Ferry's
    stubs sends): afterwards the VM is defined on the target alone, persistent there."""
    leading.agents.add_guest("host1", "g1")
    m = await leading.stub.SubmitMigration(
        cpb.SubmitMigrationRequest(vm="g1", target_host="host2", idempotency_key="sched-1")
    )
    async for update in leading.stub.WatchMigration(cpb.WatchMigrationRequest(id=m.id)):
        last = update
    assert last.phase == cpb.PHASE_SUCCEEDED, [h.reason for h in last.history]
    assert leading.agents.where("g1") == {"host2": DomainState.RUNNING}  # nothing left on host1
    [moved] = [d for d in leading.agents["host2"].hv.domains.values() if d.name == "g1"]
    assert moved.persistent
    assert not last.options.keep_source_definition and not last.options.transient_target


async def test_the_source_agent_checks_the_target_against_its_registration_alone(leading):
    """The coordinator names the target host in Migrate: the source agent, reading the registry as
    a real agent does, reads hosts/host2 and nothing else of it."""
    registry = ReadLog(leading.store)
    leading.agents["host1"].servicer.targets = MigrationTargets("host1", store=registry)  # type: ignore[arg-type]
    leading.agents.add_guest("host1", "g1")
    m = await leading.submit("g1", "host2")
    async for update in leading.stub.WatchMigration(cpb.WatchMigrationRequest(id=m.id)):
        last = update
    assert last.phase == cpb.PHASE_SUCCEEDED, [h.reason for h in last.history]
    assert registry.reads == ["get hosts/host2"]
    # the guest runs on the target alone, nothing of the migration is left on either host
    assert leading.agents.where("g1") == {"host2": DomainState.RUNNING}
    assert leading.agents.prepares("host1") == [] and leading.agents.prepares("host2") == []
