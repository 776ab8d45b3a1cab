"""Placement (``coordinator/placement.py``): which hosts can take a VM and which is best, from the
cached inventories and the migrations on their way (pure: tables, no I/O).

What a scheduler or an operator would check: a host that cannot take the VM is rejected with
every blocker (reason codes as a preflight gives them); the best host is the one with the most
room once what is on its way has landed; a host whose inbound slots are taken ranks after the
free ones; nothing is ever placed beyond a host's free memory.
"""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry.coordinator.hoststate import HostCordon
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.placement import (
    AntiAffinity,
    HostLoad,
    HostOption,
    PlacementPolicy,
    Reservations,
    loads,
    natural,
    rank,
)
from ferry.coordinator.record import new_migration, with_phase
from ferry.errors import FailedPrecondition
from ferry.model import (
    Disk,
    DomainInfo,
    DomainState,
    HostFacts,
    HostMapping,
    MigrationOptions,
    Nic,
    StorageDir,
    StorageMode,
)

GiB = 1 << 30
MiB = 1 << 20
NOW = datetime(2026, 1, 1, tzinfo=UTC)
LIVE = MigrationOptions()


def vm(name: str = "g1", memory: int = 2 * GiB, bridge: str = "br-guest", disk: int = 4 * GiB) -> DomainInfo:
    return DomainInfo(
        name,
        f"uuid-{name}",
        DomainState.RUNNING,
        memory_bytes=memory,
        disks=(Disk("vda", f"/var/lib/libvirt/images/{name}.qcow2", "qcow2", virtual_size=10 * GiB, allocation=disk),),
        nics=(Nic("bridge", bridge),),
    )


def host(
    name: str,
    *,
    free: int = 8 * GiB,
    total: int = 16 * GiB,
    bridges: tuple[str, ...] = ("br-guest",),
    vms: int = 0,
    disk_free: int = 100 * GiB,
    available: bool = True,
    state: HostCordon | None = None,
    load: HostLoad = HostLoad(),
    arch: str = "x86_64",
) -> HostOption:
    facts = HostFacts(
        hostname=name,
        host_uuid=f"uuid-{name}",
        arch=arch,
        memory_total_bytes=total,
        memory_free_bytes=free,
        bridges=bridges,
        storage=(StorageDir("/var/lib/libvirt/images", disk_free, 200 * GiB),),
    )
    domains = tuple(DomainInfo(f"{name}-vm{i}", f"uuid-{name}-{i}", DomainState.RUNNING) for i in range(vms))
    return HostOption(name, available, facts, domains, state, load)


SOURCE = host("host1", vms=1)


def ranked(
    guest: DomainInfo,
    *hosts: HostOption,
    policy: PlacementPolicy = PlacementPolicy(),
    mapping=None,
    detail: bool = True,
):
    return rank(
        guest,
        SOURCE,
        [SOURCE, *hosts],
        options=LIVE,
        storage=StorageMode.COPY_ALL,
        mapping_for=mapping or (lambda target: HostMapping()),
        policy=policy,
        detail=detail,
    )


def reasons(ranking, name: str) -> list[str]:
    return [b.reason for c in ranking.rejected if c.host == name for b in c.blockers]


@pytest.mark.parametrize(
    "target, expected",
    [
        (host("h2", available=False), ["TARGET_DOWN"]),
        (host("h2", state=HostCordon("h2", cordoned=True, reason="kernel")), ["TARGET_CORDONED"]),
        (replace(host("h2"), facts=None), ["INVENTORY_UNKNOWN"]),
        (host("h2", bridges=("br-vm",)), ["BRIDGE_MISSING"]),
        (host("h2", free=GiB), ["INSUFFICIENT_MEMORY"]),
        (host("h2", disk_free=GiB), ["INSUFFICIENT_SPACE"]),
        (host("h2", arch="aarch64"), ["ARCH_MISMATCH"]),
        # free enough alone, not once what is on its way to it has landed
        (host("h2", free=3 * GiB, load=HostLoad(1, 2 * GiB, 0, 1)), ["INSUFFICIENT_MEMORY"]),
        (host("h2", disk_free=5 * GiB, load=HostLoad(1, 0, 2 * GiB, 1)), ["INSUFFICIENT_SPACE"]),
        # everything wrong at once: every blocker listed
        (
            host("h2", available=False, bridges=(), free=0, state=HostCordon("h2", True)),
            ["TARGET_DOWN", "TARGET_CORDONED", "BRIDGE_MISSING", "INSUFFICIENT_MEMORY"],
        ),
    ],
)
def test_a_host_that_cannot_take_the_vm_is_rejected_with_every_blocker(target, expected):
    r = ranked(vm(), target)
    assert r.candidates == () and reasons(r, "h2") == expected
    assert r.best is None


def test_a_copy_all_overlay_needs_room_for_its_whole_chain():
    """--copy-storage-all writes a disk's whole backing chain into one new image: a 2 MiB overlay
    on a 40 GiB base needs up to 40 GiB on the target, not the 2 MiB its top layer holds."""
    images = "/var/lib/libvirt/images"
    overlay = Disk("vda", f"{images}/g1.qcow2", "qcow2", 40 * GiB, 2 * MiB, backing_chain=(f"{images}/golden.qcow2",))
    r = ranked(replace(vm(), disks=(overlay,)), host("h2", disk_free=10 * GiB), host("h3", disk_free=50 * GiB))
    assert reasons(r, "h2") == ["INSUFFICIENT_SPACE"] and [c.host for c in r.candidates] == ["h3"]


def test_the_source_is_never_a_candidate_and_a_name_clash_is_a_blocker():
    clash = replace(host("h2"), domains=(DomainInfo("g1", "other-uuid", DomainState.SHUTOFF),))
    on_way = host("h3", load=HostLoad(1, GiB, 0, 1, frozenset({"g1", "uuid-g1"})))
    own_definition = replace(host("h4"), domains=(DomainInfo("g1", "uuid-g1", DomainState.SHUTOFF),))
    r = ranked(vm(), clash, on_way, own_definition)
    assert "host1" not in [c.host for c in r.candidates + r.rejected]
    assert reasons(r, "h2") == ["DOMAIN_EXISTS"] and reasons(r, "h3") == ["DOMAIN_EXISTS"]
    # its own inactive definition may be replaced by the incoming guest (libvirt allows it)
    assert [c.host for c in r.candidates] == ["h4"]


def twin(option: HostOption, of: HostOption = SOURCE) -> HostOption:
    """``option`` reporting ``of``'s libvirt host UUID (a cloned install)."""
    return replace(option, facts=replace(option.facts, host_uuid=of.facts.host_uuid.upper()))


@pytest.mark.parametrize("detail", [True, False])
def test_a_host_reporting_the_sources_host_uuid_is_rejected_alone_not_its_shape(detail):
    # libvirt refuses to migrate between hosts of one host UUID ("to the same host"); h2 and h3
    # have one shape, so the quick ranking must not judge h3 by h2
    shape = ("one shape",)
    h2, h3 = replace(twin(host("h2", free=12 * GiB)), shape=shape), replace(host("h3"), shape=shape)
    r = ranked(vm(), h2, h3, detail=detail)
    assert reasons(r, "h2") == ["HOST_UUID_SHARED"] and [c.host for c in r.candidates] == ["h3"]
    shared = next(c for c in r.rejected if c.host == "h2").blockers[0]
    assert "host1 and h2 report the same libvirt host UUID" in shared.message and "uuidgen" in shared.hint
    # the other order: the shape's first host is the clean one
    r = ranked(vm(), h3, h2, detail=detail)
    assert reasons(r, "h2") == ["HOST_UUID_SHARED"] and [c.host for c in r.candidates] == ["h3"]


def test_the_bridge_is_checked_after_the_mapping_and_an_ambiguous_mapping_blocks():
    def mapping(target: str) -> HostMapping:
        if target == "h3":
            raise FailedPrecondition("ambiguous", reason="MAPPING_AMBIGUOUS", hint="fix [hosts.*]")
        return HostMapping(bridges={"br-guest": "br-vm"})

    r = ranked(vm(), host("h2", bridges=("br-vm",)), host("h3", bridges=("br-vm",)), mapping=mapping)
    assert [c.host for c in r.candidates] == ["h2"]
    assert reasons(r, "h3") == ["MAPPING_AMBIGUOUS"]


@pytest.mark.parametrize(
    "hosts, best",
    [
        # more memory free after placement wins
        ((host("h2", free=4 * GiB), host("h3", free=12 * GiB)), "h3"),
        # same memory: fewer VMs wins (balance)
        ((host("h2", vms=5), host("h3", vms=1)), "h3"),
        # memory promised to migrations on their way counts as used
        ((host("h2", free=12 * GiB, load=HostLoad(1, 10 * GiB, 0, 1)), host("h3", free=8 * GiB)), "h3"),
        # all equal: the natural name order (h2 before h10)
        ((host("h10"), host("h2")), "h2"),
        # a busy host (inbound slots taken) ranks after a free one even with more room
        ((host("h2", free=15 * GiB, load=HostLoad(2, 0, 0, 2)), host("h3", free=4 * GiB)), "h3"),
    ],
)
def test_the_best_host_has_the_most_room(hosts, best):
    r = ranked(vm(), *hosts)
    assert r.best is not None and r.best.host == best, r
    assert [c.score for c in r.candidates if not c.busy] == sorted(
        (c.score for c in r.candidates if not c.busy), reverse=True
    )


def test_scores_come_with_their_reasons_and_a_busy_host_says_it_would_queue():
    r = ranked(vm(), host("h2", free=10 * GiB, load=HostLoad(2, 0, 0, 2)), host("h3"))
    h3, h2 = r.candidates
    assert (h3.host, h3.busy, h2.host, h2.busy) == ("h3", False, "h2", True)
    assert "6.0 GiB of 16.0 GiB memory free after placement (38%)" in h3.reasons
    assert any("busy" in why for why in h2.reasons)
    assert 0 <= h2.score <= 1 and 0 <= h3.score <= 1


def test_anti_affinity_keeps_group_members_apart():
    groups = (AntiAffinity("web", ("web-*",)),)
    with_web = replace(host("h2"), domains=(DomainInfo("web-2", "u-web-2", DomainState.RUNNING),))
    receiving_web = host("h3", load=HostLoad(1, GiB, 0, 1, frozenset({"web-3"})))
    r = ranked(vm("web-1"), with_web, receiving_web, host("h4"), policy=PlacementPolicy(anti_affinity=groups))
    assert [c.host for c in r.candidates] == ["h4"]
    assert reasons(r, "h2") == ["ANTI_AFFINITY"] and reasons(r, "h3") == ["ANTI_AFFINITY"]
    # a VM outside the group is not affected
    assert {
        c.host
        for c in ranked(vm("db-1"), with_web, host("h4"), policy=PlacementPolicy(anti_affinity=groups)).candidates
    } == {"h2", "h4"}


def test_nowhere_names_what_keeps_each_host_out():
    r = ranked(vm(bridge="br-only1"), host("h2"), host("h3"), host("h4", available=False))
    p = r.nowhere()
    assert p.reason == "NO_TARGET"
    assert "BRIDGE_MISSING on h2, h3, h4" in p.message and "TARGET_DOWN on h4" in p.message


def test_placing_several_vms_never_overcommits_a_host():
    """A plan placing one VM after the other counts each placed one as on its way (a drain)."""
    hosts = [host("h2", free=5 * GiB), host("h3", free=5 * GiB)]
    booked = Reservations()
    placed = []
    for i in range(5):
        guest = vm(f"v{i}", memory=2 * GiB)
        r = ranked(guest, *booked.apply(hosts), policy=PlacementPolicy(inbound_limit=99))
        if r.best is None:
            placed.append(None)
            continue
        placed.append(r.best.host)
        booked.add(r.best.host, guest, 0)
    # two 2 GiB guests fit in each 5 GiB host; the fifth fits nowhere
    assert sorted(p for p in placed if p) == ["h2", "h2", "h3", "h3"] and placed[4] is None


def test_loads_count_what_is_on_its_way_and_what_the_inventory_does_not_show_yet():
    def rec(i: int, phase: Phase, target: str = "h2", at: datetime = NOW):
        r = new_migration(
            id=f"m{i}",
            vm=f"v{i}",
            vm_uuid=f"u{i}",
            source_host="h1",
            target_host=target,
            now=at,
            timeouts=Timeouts(),
            memory_bytes=GiB,
            disk_bytes=MiB,
        )
        for p in {
            Phase.SUCCEEDED: [Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING, Phase.FINISHING, Phase.SUCCEEDED],
            Phase.MIGRATING: [Phase.PREFLIGHT, Phase.PREPARING, Phase.MIGRATING],
            Phase.FAILED: [Phase.FAILED],
            Phase.PENDING: [],
        }[phase]:
            r = with_phase(r, p, at, "t", Timeouts())
        return r

    records = [
        rec(1, Phase.PENDING),  # queued: on its way, takes an inbound slot
        rec(2, Phase.MIGRATING),
        rec(3, Phase.SUCCEEDED, at=NOW + timedelta(seconds=5)),  # landed after h2's inventory
        rec(4, Phase.SUCCEEDED, at=NOW - timedelta(seconds=5)),  # landed before: the inventory shows it
        rec(5, Phase.FAILED),
        rec(6, Phase.MIGRATING, target="h3"),
    ]
    got = loads(records, {"h2": NOW, "h3": NOW})
    assert (got["h2"].inbound, got["h2"].vms, got["h2"].memory_bytes) == (2, 3, 3 * GiB)
    assert got["h2"].names == {"v1", "u1", "v2", "u2", "v3", "u3"}
    assert (got["h3"].inbound, got["h3"].vms) == (1, 1)


def test_natural_order():
    assert sorted(["host10", "host9", "host100", "a"], key=natural) == ["a", "host9", "host10", "host100"]


def test_the_quick_ranking_chooses_as_the_detailed_one():
    """Without detail the static checks run once per host shape: the same hosts are feasible, in
    the same order with the same scores, and each rejected host keeps (some of) its reasons."""
    rng = random.Random(7)
    for _ in range(40):
        hosts = []
        for i in range(2, 30):
            h = host(
                f"h{i}",
                free=rng.choice([GiB, 4 * GiB, 8 * GiB, 12 * GiB]),
                bridges=rng.choice([("br-guest",), ("br-vm",), ("br-guest", "br-vm")]),
                vms=rng.randrange(4),
                disk_free=rng.choice([GiB, 100 * GiB]),
                available=rng.random() > 0.1,
                state=HostCordon(f"h{i}", cordoned=True) if rng.random() < 0.1 else None,
                load=HostLoad(rng.randrange(3), rng.choice([0, 2 * GiB]), 0, rng.randrange(3)),
                arch=rng.choice(["x86_64", "x86_64", "aarch64"]),
            )
            dirs = tuple(StorageDir(d.path, 0, 0) for d in h.facts.storage)  # the paths, not the free space
            static = replace(
                h.facts, hostname="", host_uuid="", memory_free_bytes=0, memory_total_bytes=0, storage=dirs
            )
            if rng.random() < 0.05:
                h = twin(h)
            hosts.append(replace(h, shape=static))
        guest = vm(memory=rng.choice([GiB, 2 * GiB]), bridge=rng.choice(["br-guest", "br-vm"]))
        full = ranked(guest, *hosts)
        quick = ranked(guest, *hosts, detail=False)
        assert [(c.host, c.score, c.busy) for c in quick.candidates] == [
            (c.host, c.score, c.busy) for c in full.candidates
        ]
        assert quick.best is None or quick.best == full.best  # the chosen one with its reasons
        assert sorted(c.host for c in quick.rejected) == sorted(c.host for c in full.rejected)
        by_host = {c.host: c for c in quick.rejected}
        for f in full.rejected:
            q = by_host[f.host]
            # the reasons found (a host a static check rejects is not judged further), in order
            reasons = [b.reason for b in f.blockers]
            assert q.blockers and [b.reason for b in q.blockers] == [
                r for r in reasons if r in {b.reason for b in q.blockers}
            ]


def test_the_load_book_counts_a_placement_from_its_choice_until_its_record_arrives():
    from ferry.coordinator.placer import LoadBook

    book = LoadBook()
    guest = vm("g1", memory=GiB)
    book.reserve("m-1", "h2", guest, 2 * GiB)
    got = book.loads({"h2": NOW}, NOW)["h2"]
    assert (got.inbound, got.memory_bytes, got.disk_bytes, "g1" in got.names) == (1, GiB, 2 * GiB, True)
    # the record arrives: it counts instead (once), the reservation is gone
    r = new_migration(
        id="m-1",
        vm="g1",
        vm_uuid="uuid-g1",
        source_host="h1",
        target_host="h2",
        now=NOW,
        timeouts=Timeouts(),
        memory_bytes=GiB,
        disk_bytes=2 * GiB,
    )
    book.note(r)
    assert book.loads({"h2": NOW}, NOW)["h2"].inbound == 1
    # a placement whose submission was refused stops counting
    book.reserve("m-2", "h3", vm("g2"), 0)
    book.release("m-2")
    assert "h3" not in book.loads({}, NOW)


def test_the_load_book_does_not_count_again_a_version_older_than_the_final_one():
    """A submitter's own Pending version, noted after the watch brought the final one (the leader
    failed it meanwhile): counted again, it held the target's slot and memory until retention."""
    from ferry.coordinator.placer import LoadBook

    book = LoadBook()
    r = new_migration(
        id="m-1", vm="g1", vm_uuid="uuid-g1", source_host="h1", target_host="h2", now=NOW,
        timeouts=Timeouts(), memory_bytes=8 * GiB,
    )  # fmt: skip
    later = NOW + timedelta(days=1)
    for final in (Phase.FAILED, Phase.CANCELLED, Phase.SUCCEEDED):
        book.note(replace(r, phase=final, revision=12, updated_at=NOW))
        book.note(replace(r, revision=10))  # the late Pending one
        assert book.loads({"h2": later}, later) == {}, final
    # once the record is deleted (retention), its id may come again (etcd restored from a backup)
    book.on_change("m-1", None)
    book.note(replace(r, revision=3))
    assert book.loads({"h2": later}, later)["h2"].inbound == 1


def test_a_host_whose_old_agent_cannot_check_shared_storage_is_no_choice_however_roomy():
    """During a rolling upgrade: preflight refuses a target whose agent cannot look for the
    shared-storage probes (SHARED_STORAGE_UNVERIFIED), so placement does not pick it either."""

    def on_shared(name: str, free: int, api_level: int) -> HostOption:
        shared = StorageDir("/srv/shared", 500 * GiB, 1000 * GiB, shared=True)
        facts = HostFacts(
            name, f"uuid-{name}", arch="x86_64", memory_total_bytes=64 * GiB, memory_free_bytes=free,
            storage=(shared,), api_level=api_level,
        )  # fmt: skip
        return HostOption(name, True, facts)

    guest = DomainInfo(
        "g1", "uuid-g1", DomainState.RUNNING, memory_bytes=2 * GiB,
        disks=(Disk("vda", "/srv/shared/g1.raw", "raw", 10 * GiB, 10 * GiB, cache="none", shared=True),),
    )  # fmt: skip
    source, old, new = on_shared("h1", 8 * GiB, 1), on_shared("h2", 60 * GiB, 0), on_shared("h3", 20 * GiB, 1)
    ranking = rank(
        guest, source, [source, old, new], options=LIVE, storage=StorageMode.SHARED,
        mapping_for=lambda target: HostMapping(), policy=PlacementPolicy(),
    )  # fmt: skip
    assert ranking.best is not None and ranking.best.host == "h3"
    assert reasons(ranking, "h2") == ["SHARED_STORAGE_UNVERIFIED"]
    unsafe = rank(
        guest, source, [source, old, new], options=replace(LIVE, unsafe=True), storage=StorageMode.SHARED,
        mapping_for=lambda target: HostMapping(), policy=PlacementPolicy(),
    )  # fmt: skip
    assert unsafe.best is not None and unsafe.best.host == "h2"  # the operator vouches for the storage
