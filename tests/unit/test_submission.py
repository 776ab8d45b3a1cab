"""The submit and cancel protocols (``coordinator/submission.py``) on the in-memory store, without gRPC.

The fleet view is the real one, following registrations in the same store; each host's agent is
a stand-in that answers ``inventory()`` from a dict. The clock and the id factory are injected,
so the record's times and ids are known in advance.

What an operator would check: a submission writes its record, its idempotency key and the VM's
active key, all naming one id; the same idempotency key gives the same migration; a busy VM is
refused naming the migration in the way; a refused request (unknown host or VM) writes nothing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry import keys
from ferry.convergence import ConvergencePolicy, PostcopyMode
from ferry.coordinator.config import HostDecl
from ferry.coordinator.fleet import Fleet
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.placer import LoadBook, Placer
from ferry.coordinator.policies import PolicySelector, PredictionConfig
from ferry.coordinator.record import ActionEntry, decode, encode, with_phase
from ferry.coordinator.submission import Submissions, SubmitRequest
from ferry.errors import FailedPrecondition, InvalidArgument, NotFound, StatusCode
from ferry.model import (
    Disk,
    DomainInfo,
    DomainState,
    GuestLoad,
    HostFacts,
    HostMapping,
    Inventory,
    JobStats,
    MigrationOptions,
    MigrationPhase,
    MigrationProgress,
    PolicyAction,
    StorageMode,
)
from ferry.registry import HostRegistration
from ferry.testing.memory_store import MemoryStore

GiB = 1 << 30
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
UUID = "6c61622d-0000-4000-8000-000000000001"
HOSTS = {
    "host1": HostDecl("host1", bridges={"guest": "br-guest"}),
    "host2": HostDecl("host2", bridges={"guest": "br-vm"}),
    "host3": HostDecl("host3", bridges={"guest": "br-guest"}),
}


def guest(name: str = "g1", uuid: str = UUID) -> DomainInfo:
    """A running guest with one local disk (copied) and one shared disk (not copied)."""
    return DomainInfo(
        name,
        uuid,
        DomainState.RUNNING,
        memory_bytes=GiB,
        disks=(
            Disk("vda", f"/var/lib/libvirt/images/{name}.qcow2", "qcow2", virtual_size=10 * GiB, allocation=2 * GiB),
            Disk("vdb", f"/shared/{name}-data.qcow2", "qcow2", virtual_size=5 * GiB, allocation=GiB, shared=True),
        ),
    )


@dataclass
class InventoryAgent:
    """All the fleet view and a submission ask of an agent: its inventory (its bridges say where a
    mapping may send a NIC), one domain of it, a guest measured."""

    host: str
    domains: list[DomainInfo] = field(default_factory=list)
    loads: dict[str, GuestLoad] = field(default_factory=dict)  # by domain UUID; else not measured
    bridges: tuple[str, ...] = ("br-guest", "br-vm")

    async def inventory(self) -> Inventory:
        facts = HostFacts(hostname=self.host, host_uuid=f"uuid-{self.host}", bridges=self.bridges)
        return Inventory(facts, tuple(self.domains))

    async def get_domain(self, vm: str, *, include_xml: bool = False) -> tuple[DomainInfo, str]:
        for d in self.domains:
            if vm in (d.name, d.uuid):
                return d, ""
        raise NotFound(f"no domain {vm} on {self.host}", reason="DOMAIN_NOT_FOUND")

    async def measure_guest(self, vm: str, *, periods: Sequence[int] = (1, 3)) -> GuestLoad:
        return self.loads.get(vm, GuestLoad(error="not measured in this test"))


@dataclass
class Setup:
    store: MemoryStore
    fleet: Fleet
    agents: dict[str, InventoryAgent]
    submissions: Submissions

    async def revision(self) -> int:
        """The store's revision once the fleet view has seen every host's VMs as they are now
        (it keeps them in ``last-seen/``, written when they change), so what moves it afterwards
        is the submission's own writes."""
        await self.fleet.refresh(force=True)
        return self.store.revision

    async def keys_below(self, prefix: str) -> dict[str, str]:
        entries, _ = await self.store.list(prefix)
        return {e.key: keys.decode_id(e.value) for e in entries}


@pytest.fixture
async def fx() -> AsyncIterator[Setup]:
    store = MemoryStore()
    agents = {name: InventoryAgent(name) for name in HOSTS}
    for name in agents:
        await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
    fleet = Fleet(store, lambda name, address: agents[name], lambda: NOW, inventory_ttl_s=0.0, declared=HOSTS)
    await fleet.start()
    ids = (f"m-{n}" for n in itertools.count(1))
    submissions = Submissions(
        store, fleet, hosts=HOSTS, timeouts=Timeouts(), clock=lambda: NOW, new_id=lambda: next(ids)
    )
    try:
        yield Setup(store, fleet, agents, submissions)
    finally:
        await fleet.close()
        await store.close()


async def test_a_submission_writes_its_record_its_idempotency_key_and_the_vms_active_key(fx):
    fx.agents["host1"].domains.append(guest())
    m = await fx.submissions.submit(SubmitRequest("g1", "host2", priority=3, idempotency_key="deploy-42"))
    assert (m.id, m.vm, m.vm_uuid, m.source_host, m.target_host) == ("m-1", "g1", UUID, "host1", "host2")
    assert m.phase is Phase.PENDING and m.priority == 3 and m.idempotency_key == "deploy-42"
    # the injected clock: submitted now, queued until now + the Pending timeout
    assert m.created_at == m.updated_at == NOW and [(c.phase, c.at, c.reason) for c in m.history] == [
        (Phase.PENDING, NOW, "submitted")
    ]
    assert m.phase_deadline == NOW + timedelta(seconds=Timeouts().pending_s)
    # storage left to the coordinator: vda is local, so copy-all (only vda is copied); bridges derived
    assert m.options.storage is StorageMode.COPY_ALL
    assert (m.memory_bytes, m.disk_bytes) == (GiB, 2 * GiB)
    assert m.mapping == HostMapping(bridges={"br-guest": "br-vm"})
    # the three keys, one id
    entry = await fx.store.get(keys.migration_key("m-1"))
    assert decode(entry.value, entry.mod_revision) == m
    assert await fx.keys_below(keys.IDEMPOTENCY) == {keys.idempotency_key("deploy-42"): "m-1"}
    assert await fx.keys_below(keys.VM_ACTIVE) == {keys.vm_active_key(UUID): "m-1"}
    # the key, the VM's claim and the record are one store write (one revision)
    claim = await fx.store.get(keys.vm_active_key(UUID))
    key = await fx.store.get(keys.idempotency_key("deploy-42"))
    assert claim is not None and key is not None
    assert key.mod_revision == claim.mod_revision == entry.mod_revision == m.revision


async def test_a_submission_without_a_key_writes_no_idempotency_key(fx):
    fx.agents["host1"].domains.append(guest())
    fx.agents["host3"].bridges += ("br-x",)  # an override must name a bridge the target has
    options = MigrationOptions(storage=StorageMode.SHARED)
    m = await fx.submissions.submit(
        SubmitRequest("g1", "host3", options, storage_explicit=True, mapping=HostMapping(bridges={"br-guest": "br-x"}))
    )
    assert m.options.storage is StorageMode.SHARED and m.disk_bytes == 0  # the caller's mode wins
    assert m.mapping.bridges == {"br-guest": "br-x"}  # the request's override wins
    assert await fx.keys_below(keys.IDEMPOTENCY) == {}
    assert await fx.keys_below(keys.VM_ACTIVE) == {keys.vm_active_key(UUID): m.id}


async def test_the_same_idempotency_key_returns_the_same_migration(fx):
    fx.agents["host1"].domains.append(guest())
    first = await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k"))
    again = await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k"))
    assert again == first
    # even once the VM is gone: the key names the submission (the fleet is not asked again)
    fx.agents["host1"].domains.clear()
    assert await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k")) == first
    assert await fx.submissions.submit(SubmitRequest(UUID, "host2", idempotency_key="k")) == first  # by UUID
    entries, _ = await fx.store.list(keys.MIGRATIONS)
    assert len(entries) == 1


async def test_a_named_policy_is_part_of_the_idempotent_request(fx):
    """The same key and policy: the same migration; the key without the name (the selectors
    choose) is the same request too."""
    fx.submissions.policies = {"busy": BUSY}
    fx.agents["host1"].domains.append(guest())
    first = await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k", policy="busy"))
    assert first.policy is not None and first.policy.name == "busy"
    assert await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k", policy="busy")) == first
    assert await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k")) == first


@pytest.mark.parametrize(
    ("other", "field"),
    [
        (SubmitRequest("g2", "host2", idempotency_key="k"), "vm"),
        (SubmitRequest("g1", "host3", idempotency_key="k"), "target_host"),
        (SubmitRequest("g1", "host2", priority=9, idempotency_key="k"), "priority"),
        (SubmitRequest("g1", "host2", MigrationOptions(bandwidth_mibps=5), idempotency_key="k"), "options"),
        (
            SubmitRequest("g1", "host2", MigrationOptions(storage=StorageMode.SHARED), True, idempotency_key="k"),
            "options",
        ),
        (
            SubmitRequest("g1", "host2", mapping=HostMapping(bridges={"br-guest": "br-guest"}), idempotency_key="k"),
            "mapping",
        ),
        (SubmitRequest("g1", "host2", idempotency_key="k", policy="busy"), "policy"),
    ],
)
async def test_an_idempotency_key_reused_with_another_body_is_refused(fx, other, field):
    fx.submissions.policies = {"busy": BUSY}
    fx.agents["host1"].domains.append(guest())
    first = await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k"))
    before = await fx.revision()
    with pytest.raises(InvalidArgument) as refused:
        await fx.submissions.submit(other)
    assert refused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert first.id in refused.value.message and field in refused.value.message
    assert fx.store.revision == before  # nothing written


@pytest.mark.parametrize(
    ("mapping", "error", "reason"),
    [
        (
            HostMapping(path_prefixes={"/var/lib/libvirt/images": "/var/lib/libvirt/images/../../../../etc/cron.d"}),
            InvalidArgument,
            "PATH_DOTDOT",
        ),
        (
            HostMapping(path_prefixes={"/var/lib/libvirt/images": "/etc/cron.d"}),
            InvalidArgument,
            "PATH_OUTSIDE_IMAGE_DIRS",
        ),
        (HostMapping(path_prefixes={"/var/lib/libvirt/images": "images"}), InvalidArgument, "PATH_NOT_ABSOLUTE"),
        (HostMapping(bridges={"br-guest": "br-mgmt"}), FailedPrecondition, "BRIDGE_MISSING"),
        (HostMapping(networks={"default": "nowhere"}), FailedPrecondition, "NETWORK_MISSING"),
    ],
)
async def test_mapping_overrides_must_land_on_what_the_target_has(fx, mapping, error, reason):
    fx.agents["host1"].domains.append(guest())
    before = await fx.revision()
    with pytest.raises(error) as refused:
        await fx.submissions.submit(SubmitRequest("g1", "host2", mapping=mapping))
    assert refused.value.reason == reason and refused.value.hint
    assert fx.store.revision == before


async def test_a_second_submission_for_a_busy_vm_is_refused_vm_busy(fx):
    fx.agents["host1"].domains.append(guest())
    first = await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k1"))
    with pytest.raises(FailedPrecondition) as refused:
        await fx.submissions.submit(SubmitRequest("g1", "host3", idempotency_key="k2"))
    err = refused.value
    assert err.reason == "VM_BUSY" and first.id in err.message and "(pending, " in err.message
    assert f"ferry migrations cancel {first.id}" in err.hint
    assert await fx.keys_below(keys.IDEMPOTENCY) == {keys.idempotency_key("k1"): first.id}  # k2 released
    entries, _ = await fx.store.list(keys.MIGRATIONS)
    assert len(entries) == 1
    # once the first is final, the VM may migrate again: the stale vm-active key is taken over
    entry = await fx.store.get(keys.migration_key(first.id))
    failed = with_phase(decode(entry.value, entry.mod_revision), Phase.FAILED, NOW, "test", Timeouts())
    await fx.store.update(entry.key, encode(failed), entry.mod_revision)
    second = await fx.submissions.submit(SubmitRequest("g1", "host3", idempotency_key="k2"))
    assert second.id != first.id and second.phase is Phase.PENDING
    assert await fx.keys_below(keys.VM_ACTIVE) == {keys.vm_active_key(UUID): second.id}


@pytest.mark.parametrize(
    ("vm", "to", "key", "error", "reason", "hint"),
    [
        ("g1", "host9", "", NotFound, "TARGET_UNKNOWN", "ferry hosts"),
        ("nope", "host2", "", NotFound, "VM_UNKNOWN", "ferry vms"),
        ("nope", "host9", "", NotFound, "TARGET_UNKNOWN", "ferry hosts"),  # the target is checked first
        ("g1", "host1", "", FailedPrecondition, "SAME_HOST", "another target"),
        ("g1", "host2", "a/b", InvalidArgument, "BAD_IDEMPOTENCY_KEY", "without '/'"),
        ("g1", "host2", "k" * 201, InvalidArgument, "BAD_IDEMPOTENCY_KEY", "at most 200"),
    ],
)
async def test_a_refused_submission_says_why_and_writes_nothing(fx, vm, to, key, error, reason, hint):
    fx.agents["host1"].domains.append(guest())
    before = await fx.revision()
    with pytest.raises(error) as refused:
        await fx.submissions.submit(SubmitRequest(vm, to, idempotency_key=key))
    assert refused.value.reason == reason and hint in refused.value.hint
    assert fx.store.revision == before  # no key was written (nor written and removed)


async def test_an_unknown_disk_to_copy_is_refused_before_any_write(fx):
    fx.agents["host1"].domains.append(guest())
    before = await fx.revision()
    options = MigrationOptions(storage=StorageMode.COPY_ALL, migrate_disks=("vdz",))
    with pytest.raises(InvalidArgument) as refused:
        await fx.submissions.submit(SubmitRequest("g1", "host2", options, storage_explicit=True))
    assert refused.value.reason == "DISK_NOT_IN_DOMAIN" and "vda" in refused.value.hint
    assert fx.store.revision == before


@pytest.mark.parametrize("to", ["host2", ""])
@pytest.mark.parametrize(
    ("state", "offline", "reason", "words", "hint"),
    [
        (DomainState.SHUTOFF, False, "VM_NOT_RUNNING", "g1 is shut off on host1", "--offline"),
        (DomainState.CRASHED, False, "VM_NOT_RUNNING", "g1 is crashed on host1", "--offline"),
        (DomainState.RUNNING, True, "VM_TRANSIENT", "no persistent definition", "virsh define"),
    ],
)
async def test_what_the_vm_itself_blocks_is_refused_at_submission_with_or_without_a_target(
    fx, to, state, offline, reason, words, hint
):
    """Seen on the lab: `ferry migrate g3 --to host2` of a shut-off guest was accepted and its record
    failed in preflight a moment later (naming the VM by its UUID), while `ferry migrate g3` was
    refused NO_TARGET "VM_NOT_RUNNING on host2", as if host2 were the problem. Both are refused now,
    FAILED_PRECONDITION with the VM's own reason; nothing is written."""
    from dataclasses import replace

    fx.agents["host1"].domains.append(replace(guest(), state=state, persistent=False))
    fx.submissions.placer = Placer(fx.fleet, {}, LoadBook(), HOSTS)
    before = await fx.revision()
    with pytest.raises(FailedPrecondition) as refused:
        await fx.submissions.submit(SubmitRequest("g1", to, MigrationOptions(offline=offline)))
    err = refused.value
    assert (err.reason, err.code) == (reason, StatusCode.FAILED_PRECONDITION)
    assert words in err.message and hint in err.hint
    assert fx.store.revision == before


async def test_keys_left_by_a_crashed_submission_are_taken_over(fx):
    fx.agents["host1"].domains.append(guest())
    fx.submissions.in_flight_wait_s = 0.1
    # a submission wrote its keys and died before writing its record
    await fx.store.create(keys.idempotency_key("k1"), keys.encode_id("m-crashed"))
    await fx.store.create(keys.vm_active_key(UUID), keys.encode_id("m-crashed"))
    m = await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k1"))
    assert m.id == "m-1" and m.phase is Phase.PENDING
    assert await fx.keys_below(keys.IDEMPOTENCY) == {keys.idempotency_key("k1"): "m-1"}
    assert await fx.keys_below(keys.VM_ACTIVE) == {keys.vm_active_key(UUID): "m-1"}
    assert (await fx.submissions.submit(SubmitRequest("g1", "host2", idempotency_key="k1"))).id == "m-1"


async def test_the_same_fixed_id_submitted_twice_at_once_keeps_the_vms_claim(fx):
    """A drain's item (a fixed id) submitted by a new leader while the old one's submission is
    between its steps: the second finds the claim naming the id and the record existing; undoing
    "its" claim would free the VM of a live migration for a second one."""
    fx.agents["host1"].domains.append(guest())
    req = SubmitRequest(UUID, "host2", migration_id="d-1-0-1", source_host="host1")
    a, b = await asyncio.gather(fx.submissions.submit(req), fx.submissions.submit(req))
    assert a.id == b.id == "d-1-0-1"
    assert await fx.keys_below(keys.VM_ACTIVE) == {keys.vm_active_key(UUID): "d-1-0-1"}
    with pytest.raises(FailedPrecondition) as refused:
        await fx.submissions.submit(SubmitRequest("g1", "host3"))
    assert refused.value.reason == "VM_BUSY"


async def test_cancel_marks_the_record_once_and_refuses_a_final_one(fx):
    fx.agents["host1"].domains.append(guest())
    m = await fx.submissions.submit(SubmitRequest("g1", "host2"))
    asked = await fx.submissions.cancel(m.id)
    assert asked.cancel_requested and asked.phase is Phase.PENDING
    assert (asked.history[-1].at, asked.history[-1].reason) == (NOW, "cancel requested")
    entry = await fx.store.get(keys.migration_key(m.id))
    assert decode(entry.value, entry.mod_revision) == asked
    again = await fx.submissions.cancel(m.id)  # repeating is fine and writes nothing
    assert again == asked
    cancelled = with_phase(asked, Phase.CANCELLED, NOW, "test", Timeouts())
    await fx.store.update(entry.key, encode(cancelled), entry.mod_revision)
    with pytest.raises(FailedPrecondition) as refused:
        await fx.submissions.cancel(m.id)
    assert refused.value.reason == "ALREADY_FINAL" and "(cancelled)" in refused.value.message
    with pytest.raises(NotFound) as unknown:
        await fx.submissions.cancel("m-nope")
    assert unknown.value.reason == "MIGRATION_UNKNOWN"


@pytest.mark.parametrize("how", ["progress", "action", "finishing"])
async def test_cancel_is_refused_once_the_guest_runs_on_the_target(fx, how):
    """Seen on the lab: a cancel during post-copy answered "cancel requested", and the migration
    then succeeded "(cancel requested)": the engine ignores it (stopping would lose the guest)."""
    fx.agents["host1"].domains.append(guest())
    m = await fx.submissions.submit(SubmitRequest("g1", "host2"))
    entry = await fx.store.get(keys.migration_key(m.id))
    r = decode(entry.value, entry.mod_revision)
    for phase in (Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING):
        r = with_phase(r, phase, NOW, "test", Timeouts())
    if how == "progress":
        r = replace(r, progress=MigrationProgress(MigrationPhase.POSTCOPY, JobStats(active=True)))
    elif how == "action":
        r = replace(r, actions=(ActionEntry(NOW, PolicyAction("start-postcopy", "4 s of pre-copy", 0, "policy p")),))
    else:
        r = with_phase(r, Phase.FINISHING, NOW, "test", Timeouts())
    await fx.store.update(entry.key, encode(r), entry.mod_revision)
    with pytest.raises(FailedPrecondition) as refused:
        await fx.submissions.cancel(m.id)
    assert refused.value.reason == "TOO_LATE_TO_CANCEL"
    assert ("landed on host2" if how == "finishing" else "post-copy started: g1 runs on host2") in refused.value.message
    assert "ferry migrate g1 --to host1" in refused.value.hint
    stored = await fx.store.get(keys.migration_key(m.id))
    assert not decode(stored.value, stored.mod_revision).cancel_requested  # nothing written


# ---------------------------------------------------------------- the policy and the prediction

BUSY = ConvergencePolicy(name="busy", bandwidth_mibps=32, postcopy=PostcopyMode.ON_PREDICTION)
STRICT = ConvergencePolicy(name="strict", bandwidth_mibps=32, refuse_unfinishable=True)
MiB = 1 << 20


def busy_load(dirty_mibps: float) -> GuestLoad:
    """1 GiB guest, 512 MiB non-zero, rewriting 64 MiB (saturates the 3 s measurement)."""
    return GuestLoad(GiB, samples=((1.0, dirty_mibps * MiB), (3.0, 64 * MiB / 3)), resident_bytes=512 * MiB)


@pytest.fixture
def policies(fx: Setup) -> Setup:
    fx.submissions.policies = {"busy": BUSY, "strict": STRICT}
    fx.submissions.selectors = (PolicySelector("busy", vm="db-*"),)
    fx.submissions.prediction = PredictionConfig(on_submit=True)
    fx.agents["host1"].domains.append(guest())
    return fx


async def test_the_requested_policy_and_its_prediction_are_recorded(policies):
    policies.agents["host1"].loads[UUID] = busy_load(40)
    m = await policies.submissions.submit(SubmitRequest("g1", "host2", policy="busy"))
    assert m.policy == BUSY
    assert m.history[0].reason == "submitted (policy busy)"
    p = m.prediction
    assert (p.converges, p.finishes, p.need, p.policy) == (False, True, "post-copy", "busy")
    # copied: vda's whole 10 GiB at 32 MiB/s (320 s), iteration 1: 512 MiB (16 s), then 64 MiB (2 s)
    assert p.disk_bytes == 10 * GiB and p.seconds == pytest.approx(320 + 16 + 2, abs=0.1)
    assert "policy busy switches to post-copy after iteration 1" in p.words
    entry = await policies.store.get(keys.migration_key(m.id))
    assert decode(entry.value, entry.mod_revision) == m  # kept in the record


async def test_a_selector_picks_the_policy_and_flags_go_on_top(policies):
    policies.agents["host1"].domains[:] = [guest("db-1")]
    m = await policies.submissions.submit(SubmitRequest("db-1", "host2", MigrationOptions(bandwidth_mibps=64)))
    assert (m.policy.name, m.policy.bandwidth_mibps, m.policy.postcopy) == ("busy", 64, PostcopyMode.ON_PREDICTION)


async def test_without_a_name_or_a_matching_selector_the_flags_are_the_policy(policies):
    m = await policies.submissions.submit(SubmitRequest("g1", "host2", MigrationOptions(max_downtime_ms=400)))
    assert m.policy.name == "" and m.policy.downtime_steps[0].max_downtime_ms == 400
    assert m.prediction.converges is None and "not measured in this test" in m.prediction.words


async def test_an_unknown_policy_is_refused_naming_the_known_ones(policies):
    with pytest.raises(NotFound) as e:
        await policies.submissions.submit(SubmitRequest("g1", "host2", policy="fast"))
    assert e.value.reason == "POLICY_UNKNOWN" and "busy, strict" in e.value.hint
    assert await policies.keys_below(keys.VM_ACTIVE) == {}


async def test_a_policy_refuses_what_the_prediction_says_it_cannot_finish(policies):
    policies.agents["host1"].loads[UUID] = busy_load(40)
    with pytest.raises(FailedPrecondition) as e:
        await policies.submissions.submit(SubmitRequest("g1", "host2", policy="strict", idempotency_key="k"))
    assert e.value.reason == "WILL_NOT_CONVERGE"
    assert "will not converge at 32 MiB/s (guest dirties ~40 MiB/s" in e.value.message
    # nothing written: no record, no keys
    assert await policies.keys_below(keys.VM_ACTIVE) == {} and await policies.keys_below(keys.IDEMPOTENCY) == {}
    entries, _ = await policies.store.list(keys.MIGRATIONS)
    assert entries == []
    # a quiet guest goes ahead under the same policy
    policies.agents["host1"].loads[UUID] = busy_load(4)
    m = await policies.submissions.submit(SubmitRequest("g1", "host2", policy="strict"))
    assert m.prediction.converges is True


async def test_without_on_submit_a_recent_preflights_measurement_is_used_else_none(policies):
    """By default a submission does not wait for a measurement: it predicts from one a Preflight
    made in the last ``reuse_s``; without one the engine's Preflight phase measures."""
    policies.submissions.prediction = PredictionConfig(on_submit=False, reuse_s=60)
    policies.agents["host1"].loads[UUID] = busy_load(40)
    m = await policies.submissions.submit(SubmitRequest("g1", "host2", policy="busy", idempotency_key="a"))
    assert m.policy == BUSY and m.prediction is None  # nobody measured it: the engine will
    await policies.submissions.measure("host1", guest())  # what the Preflight RPC does
    await policies.submissions.cancel(m.id)
    entry = await policies.store.get(keys.migration_key(m.id))
    await policies.store.update(
        entry.key,
        encode(with_phase(decode(entry.value, entry.mod_revision), Phase.CANCELLED, NOW, "test", Timeouts())),
        entry.mod_revision,
    )
    again = await policies.submissions.submit(SubmitRequest("g1", "host2", policy="busy", idempotency_key="b"))
    assert again.prediction is not None and again.prediction.need == "post-copy"
