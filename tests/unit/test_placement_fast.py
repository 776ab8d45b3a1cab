"""Placement's fast paths decide as its plain ones (property checks over random fleets, pure).

``rank(detail=False)`` decides the common case -- a host its shape's static checks pass, with no
clash, room enough and no group member -- by a few comparisons, and judges only the others with
the full checks; ``LoadBook`` works out each target's load again only when something of that
target changed; ``Placer.options`` keeps an option with its load while neither changed. Each is
checked here against the straightforward computation: the same feasible hosts in the same order
with the same scores and reasons, the same rejected hosts with the same reason codes, the same
loads.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from ferry import keys
from ferry.coordinator.fleet import Fleet
from ferry.coordinator.hoststate import HostCordon
from ferry.coordinator.phases import Phase, Timeouts
from ferry.coordinator.placement import (
    AntiAffinity,
    HostLoad,
    HostOption,
    PlacementPolicy,
    Reservations,
    choose,
    loads,
    rank,
)
from ferry.coordinator.placer import SETTLE_MAX, LoadBook, Placer
from ferry.coordinator.record import MigrationRecord, new_migration
from ferry.errors import Unavailable
from ferry.model import (
    Disk,
    DomainInfo,
    DomainState,
    HostFacts,
    HostMapping,
    Inventory,
    MigrationOptions,
    Nic,
    StorageDir,
    StorageMode,
)
from ferry.registry import HostRegistration
from ferry.testing.memory_store import MemoryStore

GiB = 1 << 30
NOW = datetime(2026, 1, 1, tzinfo=UTC)
IMAGES = "/var/lib/libvirt/images"
# the blockers of a host's availability, domains, room and load (not of its shape)
DYNAMIC = {
    "TARGET_DOWN",
    "TARGET_CORDONED",
    "INVENTORY_UNKNOWN",
    "DOMAIN_EXISTS",
    "INSUFFICIENT_MEMORY",
    "INSUFFICIENT_SPACE",
    "ANTI_AFFINITY",
}


def guest(rng: random.Random, name: str) -> DomainInfo:
    return DomainInfo(
        name,
        f"uuid-{name}",
        rng.choice([DomainState.RUNNING, DomainState.RUNNING, DomainState.SHUTOFF]),
        memory_bytes=rng.choice([0, GiB, 2 * GiB, 4 * GiB]),
        persistent=rng.random() < 0.8,
        disks=(
            Disk("vda", f"{IMAGES}/{name}.qcow2", "qcow2", virtual_size=8 * GiB, allocation=rng.choice([GiB, 6 * GiB])),
        ),
        nics=(Nic("bridge", rng.choice(["br-a", "br-b"])),),
    )


def fleet(rng: random.Random, n: int) -> list[HostOption]:
    """Hosts of a few shapes, some down or cordoned, with guests (some named like the placed one,
    some of its group) and loads (some carrying its name)."""
    out = []
    for i in range(1, n + 1):
        name = f"h{i}"
        bridges = rng.choice([("br-a",), ("br-b",), ("br-a", "br-b")])
        arch = rng.choice(["x86_64"] * 5 + ["aarch64"])
        facts = HostFacts(
            hostname=name,
            host_uuid=f"uuid-{name}",
            arch=arch,
            memory_total_bytes=rng.choice([0, 16 * GiB, 16 * GiB]),
            memory_free_bytes=rng.choice([GiB, 3 * GiB, 8 * GiB, 12 * GiB]),
            bridges=bridges,
            storage=(StorageDir(IMAGES, rng.choice([2 * GiB, 7 * GiB, 100 * GiB]), 200 * GiB),),
        )
        names = [f"web-{i}", "g1", f"db-{i}", f"x{i}"]
        domains = tuple(
            DomainInfo(
                rng.choice(names),
                rng.choice([f"u-{i}-{k}", "uuid-g1"]),
                rng.choice([DomainState.RUNNING, DomainState.SHUTOFF]),
            )
            for k in range(rng.randrange(4))
        )
        load = HostLoad(
            rng.randrange(4),
            rng.choice([0, GiB, 6 * GiB]),
            rng.choice([0, GiB, 50 * GiB]),
            rng.randrange(3),
            frozenset(rng.sample(["g1", "uuid-g1", "web-9", "y"], rng.randrange(3))),
        )
        shape = (bridges, arch, name.endswith("7"))  # as the mapping below: a shape includes its declaration
        state = HostCordon(name, cordoned=rng.random() < 0.5) if rng.random() < 0.15 else None
        out.append(
            HostOption(name, rng.random() > 0.1, facts if rng.random() > 0.05 else None, domains, state, load, shape)
        )
    return out


def test_the_quick_ranking_ranks_as_the_detailed_one_on_random_fleets():
    rng = random.Random(11)
    groups = (AntiAffinity("web", ("web-*", "g1")),)
    for trial in range(300):
        hosts = fleet(rng, rng.randrange(1, 40))
        source = hosts[0]
        domain = guest(rng, rng.choice(["g1", "web-1", "solo"]))
        options = MigrationOptions(offline=rng.random() < 0.2)
        storage = rng.choice([StorageMode.COPY_ALL, StorageMode.SHARED])
        policy = PlacementPolicy(inbound_limit=rng.choice([1, 2, 3]), anti_affinity=groups if trial % 2 else ())

        def mapping(target: str) -> HostMapping:
            return HostMapping(bridges={"br-b": "br-a"}) if target.endswith("7") else HostMapping()

        args = dict(options=options, storage=storage, mapping_for=mapping, policy=policy)
        full = rank(domain, source, hosts, detail=True, **args)
        quick = rank(domain, source, hosts, detail=False, **args)
        assert [(c.host, c.score, c.busy) for c in quick.candidates] == [
            (c.host, c.score, c.busy) for c in full.candidates
        ], trial
        assert quick.best == full.best  # the chosen one, with its reasons
        assert [c.host for c in quick.rejected] == [
            h.name for h in hosts[1:] if h.name in {c.host for c in full.rejected}
        ]
        by_host = {c.host: c for c in quick.rejected}
        for f in full.rejected:  # the reasons found, in order (a static rejection stops the judging)
            codes = [b.reason for b in by_host[f.host].blockers]
            assert codes and codes == [b.reason for b in f.blockers if b.reason in codes], (trial, f.host)
        # a host the static checks pass is judged in full: every blocker, with its text
        for f in full.rejected:
            if {b.reason for b in f.blockers} <= DYNAMIC:
                assert by_host[f.host] == f, (trial, f.host)


def test_the_choice_is_the_detailed_rankings_first_on_random_fleets():
    """``choose`` (a submission without a target, a drain) picks the host the full ranking puts
    first, with its score and reasons; with none feasible it says why as the quick ranking does.
    Every other fleet is made of copies of one feasible host (same facts, domains and load, names
    shuffled): the scores tie, and the lower natural name wins."""
    rng = random.Random(17)
    groups = (AntiAffinity("web", ("web-*", "g1")),)

    def mapping(target: str) -> HostMapping:
        return HostMapping(bridges={"br-b": "br-a"}) if target.endswith("7") else HostMapping()

    chosen = nowhere = ties = 0
    for trial in range(400):
        hosts = fleet(rng, rng.randrange(1, 60))
        domain = guest(rng, rng.choice(["g1", "web-1", "solo"]))
        options = MigrationOptions(offline=rng.random() < 0.2)
        storage = rng.choice([StorageMode.COPY_ALL, StorageMode.SHARED])
        policy = PlacementPolicy(inbound_limit=rng.choice([1, 2, 3]), anti_affinity=groups if trial % 3 else ())
        args = dict(options=options, storage=storage, mapping_for=mapping, policy=policy)
        full = rank(domain, hosts[0], hosts, detail=True, **args)
        if trial % 2 and full.candidates:
            picked = rng.choice(full.candidates).host
            twin = next(h for h in hosts if h.name == picked)
            names = [f"h{i}" for i in rng.sample(range(2, 120), rng.randrange(1, 40))]
            assert isinstance(twin.shape, tuple)  # its declaration goes by its name (``mapping``)
            hosts = [hosts[0], *(replace(twin, name=n, shape=(*twin.shape[:2], n.endswith("7"))) for n in names)]
            full = rank(domain, hosts[0], hosts, detail=True, **args)
        choice = choose(domain, hosts[0], hosts, **args)
        if full.best is not None:
            chosen += 1
            assert choice.candidates == (full.best,), trial
            assert choice.rejected == ()
            ties += [(c.busy, c.score) for c in full.candidates].count((full.best.busy, full.best.score)) > 1
        else:
            nowhere += 1
            assert choice == rank(domain, hosts[0], hosts, detail=False, **args), trial
            assert choice.nowhere().reason == "NO_TARGET"
    assert chosen > 40 and nowhere > 40 and ties > 20, (chosen, nowhere, ties)  # every case exercised


def test_an_option_with_a_load_is_the_option_replaced():
    rng = random.Random(3)
    for option in fleet(rng, 30):
        _ = option.names, option.active  # worked out before
        load = HostLoad(1, GiB, 0, 1, frozenset({"g9"}))
        assert option.with_load(load) == replace(option, load=load)
        assert option.with_load(load).names == replace(option, load=load).names
    hosts = fleet(rng, 5)
    booked = Reservations()
    booked.add("h2", guest(rng, "g1"), GiB)
    assert booked.apply(hosts)[1].load.vms == hosts[1].load.vms + 1


class ReferenceBook:
    """The load book as it was before it kept its records by target: every call prunes and counts
    every record."""

    def __init__(self) -> None:
        self.unsettled: dict[str, MigrationRecord] = {}
        self.reserved: dict[str, tuple[str, HostLoad]] = {}
        self.ended: dict[str, int] = {}  # a record's final revision: an older version is not counted

    def note(self, r: MigrationRecord) -> None:
        self.reserved.pop(r.id, None)
        old = self.unsettled.get(r.id)
        if old is not None and old.revision and r.revision and old.revision > r.revision:
            return
        if r.revision and self.ended.get(r.id, 0) > r.revision:
            return
        if r.phase.is_final and r.revision:
            self.ended[r.id] = r.revision
        if r.phase.is_final and r.phase is not Phase.SUCCEEDED:
            self.unsettled.pop(r.id, None)
        else:
            self.unsettled[r.id] = r

    def loads(self, inventory_at: dict[str, datetime | None], now: datetime) -> dict[str, HostLoad]:
        for mid, r in list(self.unsettled.items()):
            if r.phase is Phase.SUCCEEDED:
                seen = inventory_at.get(r.target_host)
                landed = r.updated_at or r.created_at
                if (seen is not None and seen > landed) or now - landed > SETTLE_MAX:
                    del self.unsettled[mid]
        out = loads(self.unsettled.values(), inventory_at)
        for target, extra in self.reserved.values():
            h = out.get(target, HostLoad())
            out[target] = HostLoad(
                h.inbound + extra.inbound,
                h.memory_bytes + extra.memory_bytes,
                h.disk_bytes + extra.disk_bytes,
                h.vms + extra.vms,
                h.names | extra.names,
            )
        return out

    def targets_of(self, vm: str) -> set[str]:
        mine = [r for r in self.unsettled.values() if vm in (r.vm, r.vm_uuid)]
        if not mine:
            return set()
        newest = sorted(mine, key=lambda r: (r.created_at, r.id))[-1]
        return {newest.target_host} if newest.phase.is_final else {newest.source_host, newest.target_host}


def test_the_load_book_counts_as_counting_every_record_anew():
    rng = random.Random(5)
    phases = [Phase.PENDING, Phase.PREFLIGHT, Phase.MIGRATING, Phase.SUCCEEDED, Phase.SUCCEEDED, Phase.FAILED]
    for trial in range(40):
        book, ref = LoadBook(), ReferenceBook()
        now = NOW
        inventory_at: dict[str, datetime | None] = {}
        revisions: dict[str, int] = {}
        # a follower's loads, the book version and the inventory times it followed them to
        follower: dict[str, HostLoad] = {}
        followed, synced = 0, dict[str, datetime | None]()
        for step in range(300):
            now += timedelta(seconds=rng.choice([0, 1, 5, 30]))
            what = rng.random()
            if what < 0.55:
                mid = f"m{rng.randrange(60)}"
                revisions[mid] = revision = revisions.get(mid, 0) + rng.choice([1, 1, 1, -1])  # sometimes stale
                n = rng.randrange(12)
                r = new_migration(
                    id=mid,
                    vm=f"v{n}",
                    vm_uuid=f"u{n}",
                    source_host="h0",
                    target_host=f"h{int(mid[1:]) % 7}",
                    now=now - timedelta(seconds=rng.choice([0, 10, 200])),
                    timeouts=Timeouts(),
                    memory_bytes=rng.choice([GiB, 2 * GiB]),
                    disk_bytes=GiB,
                )
                updated = rng.choice([now, now - timedelta(seconds=rng.choice([3, 60, 150])), None])
                r = replace(r, phase=rng.choice(phases), updated_at=updated, revision=max(revision, 0))
                book.note(r)
                ref.note(r)
            elif what < 0.62:
                mid = f"m{rng.randrange(60)}"
                book.on_change(mid, None)
                ref.unsettled.pop(mid, None)
                ref.ended.pop(mid, None)
            elif what < 0.7:
                mid, target = f"p{rng.randrange(5)}", f"h{rng.randrange(7)}"
                placed = guest(rng, f"r{mid}")
                book.reserve(mid, target, placed, GiB)
                ref.reserved[mid] = (target, HostLoad().plus(placed, GiB))
            elif what < 0.75:
                mid = f"p{rng.randrange(5)}"
                book.release(mid)
                ref.reserved.pop(mid, None)
            elif what < 0.85:  # an inventory arrives (or a host is forgotten)
                host = f"h{rng.randrange(8)}"
                inventory_at[host] = rng.choice([now, now - timedelta(seconds=20), None])
            else:
                view = dict(inventory_at)
                expected = ref.loads(view, now)
                if rng.random() < 0.5:  # a placer following the changes (``Placer.options``)
                    hosts = [h for h in {*view, *synced} if view.get(h) != synced.get(h)]
                    book.settle(view, now, hosts)
                    for target in {*hosts, *book.changed_since(followed)}:
                        load = book.load(target, view.get(target))
                        if load is None:
                            follower.pop(target, None)
                        else:
                            follower[target] = load
                    followed, synced = book.version, view
                    assert follower == expected, (trial, step)
                assert book.loads(view, now) == expected, (trial, step)
                assert len(book) == len(ref.unsettled)
                assert all(book.targets_of(f"v{n}") == ref.targets_of(f"v{n}") for n in range(12))
                assert book.targets_of("u3") == ref.targets_of("u3")


@dataclass
class Agent:
    """A stand-in agent: answers ``inventory()`` with its host's facts and domains, or fails."""

    host: str
    free: int = 8 * GiB
    domains: list[DomainInfo] = field(default_factory=list)
    down: bool = False
    tls_problem: str = ""
    machine_types: tuple[str, ...] = ()

    async def inventory(self) -> Inventory:
        if self.down:
            raise Unavailable(f"the agent on {self.host} cannot be reached", reason="AGENT_UNREACHABLE")
        facts = HostFacts(
            self.host,
            f"uuid-{self.host}",
            memory_total_bytes=16 * GiB,
            memory_free_bytes=self.free,
            migration_tls_problem=self.tls_problem,
            machine_types=self.machine_types,
        )
        return Inventory(facts, tuple(self.domains))


async def registered(agents: dict[str, Agent], first: int | None = None) -> tuple[MemoryStore, Fleet]:
    """A fleet view of ``agents`` (the ``first`` of them registered; all by default)."""
    store = MemoryStore()
    for name in list(agents)[:first]:
        await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
    fleet = Fleet(store, lambda name, address: agents[name], lambda: NOW, inventory_ttl_s=0.0)  # type: ignore[arg-type,return-value]
    await fleet.start()
    await fleet.refresh()
    return store, fleet


@pytest.mark.parametrize(
    ("machine", "agents", "reason"),
    [
        # the migration TLS problem an agent reports decides tls_blockers
        ("", {"h2": Agent("h2", tls_problem="no certificates"), "h3": Agent("h3")}, "MIGRATION_TLS_MISSING"),
        # the machine types an agent reports decide qemu_blockers
        (
            "pc-q35-8.2",
            {
                "h2": Agent("h2", machine_types=("pc-q35-8.0", "pc-q35-8.1")),
                "h3": Agent("h3", machine_types=("pc-q35-8.2", "pc-q35-9.0")),
            },
            "MACHINE_TYPE_MISSING",
        ),
    ],
    ids=["migration TLS", "machine types"],
)
async def test_a_host_a_static_check_refuses_is_not_of_the_shape_of_one_it_does_not(machine, agents, reason):
    """The quick ranking judges the static checks once per shape: what they read of a host is
    part of the placer's shape, so h2 is refused and h3, alike otherwise, is not."""
    g1 = DomainInfo("g1", "uuid-g1", DomainState.RUNNING, memory_bytes=GiB, machine=machine)
    source = Agent("h1", domains=[g1], machine_types=(machine,) if machine else ())
    store, fleet = await registered({"h1": source, **agents})
    placer = Placer(fleet, {}, LoadBook(), {})
    for detail in (True, False):
        ranking = placer.rank(g1, "h1", MigrationOptions(), storage_explicit=False, now=NOW, detail=detail).ranking
        assert [c.host for c in ranking.candidates] == ["h3"]
        assert [(c.host, [b.reason for b in c.blockers]) for c in ranking.rejected] == [("h2", [reason])]
    await fleet.close()
    await store.close()


async def test_the_placer_updates_the_changed_hosts_as_it_would_build_them_all_anew():
    """``Placer.options`` follows the fleet view's changes host by host (``Fleet.changed_since``):
    after any sequence of inventories, outages, registrations, landings and cordons it gives the
    options a placer built from nothing gives."""
    rng = random.Random(9)
    agents = {f"h{i}": Agent(f"h{i}") for i in range(12)}
    store, fleet = await registered(agents, first=8)  # the others register on the way
    cordons: dict[str, HostCordon] = {}
    book = LoadBook()
    placer = Placer(fleet, cordons, book, {})
    for step in range(250):
        what, name = rng.random(), f"h{rng.randrange(12)}"
        if what < 0.3:
            agents[name].free = rng.choice([GiB, 4 * GiB, 8 * GiB])
            agents[name].domains = [
                DomainInfo(f"{name}-{k}", f"u-{name}-{k}", DomainState.RUNNING) for k in range(rng.randrange(3))
            ]
            await fleet.refresh([name], force=True)
        elif what < 0.4:
            agents[name].down = not agents[name].down
            await fleet.refresh([name], force=True)
        elif what < 0.5 and (await store.get(keys.host_key(name))) is None:  # a new agent registers
            await store.create(keys.host_key(name), HostRegistration(name, f"fake:{name}").encode())
            for _ in range(100):
                if fleet.registration(name) is not None:
                    break
                await asyncio.sleep(0.001)
        elif what < 0.6:
            other = f"h{rng.randrange(12)}"
            domains = fleet.host(name).domains if fleet.host(name) is not None else ()
            if domains and other != name:
                fleet.note_landed(domains[0].uuid, name, other, NOW)
        elif what < 0.7:
            fleet.report_unreachable(name, Unavailable("gone", reason="AGENT_UNREACHABLE"))
        elif what < 0.8:
            if name in cordons:
                del cordons[name]
            else:
                cordons[name] = HostCordon(name, cordoned=True, reason=f"step {step}")
        elif what < 0.9:  # a migration on its way (to a host of the view or not), or one that ended
            target = rng.choice([f"h{rng.randrange(12)}", "h99"])
            mid = f"m{rng.randrange(20)}"
            r = new_migration(
                id=mid,
                vm=f"v{mid}",
                vm_uuid=f"u{mid}",
                source_host="h0",
                target_host=target,
                now=NOW,
                timeouts=Timeouts(),
                memory_bytes=GiB,
            )
            phase = rng.choice([Phase.PENDING, Phase.MIGRATING, Phase.FAILED, Phase.SUCCEEDED])
            landed = NOW + timedelta(seconds=rng.choice([-5, 0, 1, step]))  # before or after an inventory
            book.note(replace(r, phase=phase, updated_at=landed, revision=step + 1))
        elif what < 0.98:  # a placement's reservation, or its release
            mid = f"p{rng.randrange(4)}"
            if rng.random() < 0.5:
                book.reserve(mid, f"h{rng.randrange(12)}", DomainInfo(f"v{mid}", f"u{mid}", DomainState.RUNNING), GiB)
            else:
                book.release(mid)
        if rng.random() < 0.5:
            now = NOW + timedelta(seconds=step)  # landings past SETTLE_MAX stop counting
            fresh = Placer(fleet, cordons, book, {})
            assert placer.options(now) == fresh.options(now), step
            # each host with its load, as when every option was given its load one by one
            booked = book.loads({h.name: h.last_seen for h in fleet.hosts()}, now)
            expected = [
                o if o.name not in booked else replace(o, load=booked[o.name]) for o in fresh._base_options()[0]
            ]
            assert placer.options(now) == expected, step
            # the fleet keeps its set of available hosts between changes
            assert fleet.available_hosts() == {h.name for h in fleet.hosts() if h.available}, step
    await fleet.close()
    await store.close()


def test_a_vm_moved_many_times_is_looked_for_where_its_newest_migration_took_it():
    """Seen in the scale bench: a scheduler moving the same VMs again and again made each submission
    ask every host the VM had visited in the last two minutes (GetDomain 7.6 per migration)."""

    def move(i: int, src: str, dst: str, phase: Phase) -> MigrationRecord:
        at = NOW + timedelta(seconds=10 * i)
        r = new_migration(
            id=f"m{i}", vm="v1", vm_uuid="u1", source_host=src, target_host=dst, now=at, timeouts=Timeouts()
        )
        return replace(r, phase=phase, updated_at=at + timedelta(seconds=5))

    book = LoadBook()
    hops = ["h1", "h2", "h3", "h4"]
    for i, (src, dst) in enumerate(zip(hops, hops[1:], strict=False)):
        book.note(move(i, src, dst, Phase.SUCCEEDED))
    assert book.targets_of("v1") == {"h4"} and book.targets_of("u1") == {"h4"}
    book.note(move(9, "h4", "h5", Phase.MIGRATING))
    assert book.targets_of("v1") == {"h4", "h5"}  # on one of them
    assert book.targets_of("v2") == set()
