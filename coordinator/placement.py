"""Choosing a target host for a VM (pure): which hosts could take it, and which is best.

``rank(vm, source, hosts, ...)`` judges every other host from what the coordinator already knows
-- the cached inventories and the migrations on their way (``HostLoad``) -- with the same checks
a preflight makes, and returns a :class:`Ranking`: the feasible hosts best first, each with its
score and the reasons for it, and every rejected host with all its blockers. Nothing is asked of
an agent here; the chosen migration still runs its full preflight (the target's PrepareIncoming
dry run, the source's probe) once admitted. ``choose(...)`` is the same judgement for a caller
that takes the best host alone (a submission without a target, a drain): the candidate ``rank``
puts first, without the others.

Feasible means no blocker:

=====================  ==================================================================
reason                 the host ...
=====================  ==================================================================
TARGET_DOWN            has no registered, answering agent
TARGET_CORDONED        is cordoned (``hoststate.py``)
INVENTORY_UNKNOWN      has not reported an inventory yet
HOST_UUID_SHARED       reports the source's libvirt host UUID (libvirt refuses the migration)
ARCH_MISMATCH, ...     fails a check of ``checks.coordinator_blockers`` (machine type and
                       versions, arch, VM state, storage safety) or ``checks.host_cpu_blockers``
MAPPING_AMBIGUOUS      has no unambiguous mapping from the source's names (config)
BRIDGE_MISSING,        lacks the bridge / libvirt network a NIC needs, after the mapping
NETWORK_MISSING
DOMAIN_EXISTS          already has (or is receiving) a domain of that name or UUID
INSUFFICIENT_MEMORY    has less free memory than the guest needs, once the migrations on
                       their way to it have landed
INSUFFICIENT_SPACE     has less free space for the copied disks, likewise
ANTI_AFFINITY          runs (or is receiving) another member of the VM's anti-affinity group
=====================  ==================================================================

A feasible host whose inbound slots are all taken by migrations on their way is **busy**: still
a candidate (a migration to it waits in the queue), ranked after every free one.

Score (0..1, higher is better), weighted (``Weights``):

* memory: the fraction of the host's memory still free after the guest and everything on its
  way to it landed;
* balance: how few VMs the host has after placement compared with the other feasible hosts
  (1 = the emptiest, 0 = the fullest);
* inbound: the share of its inbound slots still free.

Ties go to the host with the lower natural name (host2 before host10).
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from ferry.diskplan import plan_disks
from ferry.errors import FerryError
from ferry.model import DiskPlan, DomainInfo, HostFacts, HostMapping, MigrationOptions, Problem, StorageMode

from .checks import HostView, coordinator_blockers, host_cpu_blockers, host_down, shared_host_uuid
from .hoststate import HostCordon, cordon_problem
from .old_agents import left_in_place, old_agent_blockers
from .phases import Phase
from .record import MigrationRecord

GiB = 1 << 30


@dataclass(frozen=True)
class HostLoad:
    """What is on its way to a host and not yet in its inventory."""

    inbound: int = 0  # migrations to it that are not final (queued ones included)
    memory_bytes: int = 0  # their guests' memory
    disk_bytes: int = 0  # the disk bytes they copy to it
    vms: int = 0  # how many guests that is
    names: frozenset[str] = frozenset()  # their names and UUIDs

    def plus(self, domain: DomainInfo, disk_bytes: int) -> HostLoad:
        """This load with one more guest on its way (a plan that places several VMs at once)."""
        return HostLoad(
            self.inbound + 1,
            self.memory_bytes + domain.memory_bytes,
            self.disk_bytes + disk_bytes,
            self.vms + 1,
            self.names | {domain.name, domain.uuid},
        )

    def add(self, other: HostLoad) -> HostLoad:
        """This load and ``other`` together (what is placed on top of what is on its way).

        >>> both = HostLoad(1, 2, 3, 1, frozenset({"a"})).add(HostLoad(1, 1, 0, 1, frozenset({"b"})))
        >>> both == HostLoad(2, 3, 3, 2, frozenset({"a", "b"}))
        True
        """
        return HostLoad(
            self.inbound + other.inbound,
            self.memory_bytes + other.memory_bytes,
            self.disk_bytes + other.disk_bytes,
            self.vms + other.vms,
            self.names | other.names,
        )


@dataclass(frozen=True)
class HostOption:
    """One host as placement sees it (from the fleet view)."""

    name: str
    available: bool
    facts: HostFacts | None
    domains: tuple[DomainInfo, ...] = ()
    state: HostCordon | None = None  # None = in service
    load: HostLoad = HostLoad()
    # hosts of one shape (same facts but free memory and free space, same [hosts.*] declaration)
    # pass or fail the same static checks: a ranking without detail judges each shape once (None:
    # judge it)
    shape: Hashable | None = None
    why_down: Problem | None = None  # not available: which part is down (None: not known)

    @functools.cached_property
    def names(self) -> frozenset[str]:
        """The names and UUIDs of its domains."""
        return frozenset(k for d in self.domains for k in (d.name, d.uuid))

    @functools.cached_property
    def active(self) -> tuple[DomainInfo, ...]:
        """Its domains that run."""
        return tuple(d for d in self.domains if d.state.is_active)

    @functools.cached_property
    def unavailable(self) -> tuple[Problem, ...]:
        """What keeps it from taking any migration (down, cordoned, no inventory): worked out once
        per option, not per ranking."""
        return tuple(_unavailable(self))

    def with_load(self, load: HostLoad) -> HostOption:
        """This option with another load, keeping what it worked out of its domains (``names``,
        ``active``): ``dataclasses.replace`` would build it anew and forget them, and placement
        gives a load to hundreds of options per decision.

        >>> from ferry.model import DomainState
        >>> o = HostOption("h2", True, None, (DomainInfo("g", "u", DomainState.RUNNING),))
        >>> loaded = o.with_load(HostLoad(1, 0, 0, 1))
        >>> (loaded.load.inbound, loaded.names == o.names, loaded == replace(o, load=HostLoad(1, 0, 0, 1)))
        (1, True, True)
        """
        new = object.__new__(HostOption)
        new.__dict__.update(self.__dict__)
        new.__dict__["load"] = load  # frozen: set as dataclasses' own __init__ does, past __setattr__
        return new


@dataclass(frozen=True)
class Weights:
    memory: float = 0.5
    balance: float = 0.3
    inbound: float = 0.2


@dataclass(frozen=True)
class AntiAffinity:
    """VMs whose names match one of ``patterns`` (shell-style: ``web-*``) never share a host."""

    name: str
    patterns: tuple[str, ...]

    def matches(self, vm: str) -> bool:
        return any(fnmatch.fnmatchcase(vm, p) for p in self.patterns)


@dataclass(frozen=True)
class PlacementPolicy:
    """How to choose (from the coordinator's config ``[placement]`` and ``[limits]``)."""

    weights: Weights = Weights()
    inbound_limit: int = 2  # per_host_inbound: a host with this many on their way is busy
    anti_affinity: tuple[AntiAffinity, ...] = ()


@dataclass(frozen=True)
class Candidate:
    host: str
    score: float = 0.0
    reasons: tuple[str, ...] = ()
    blockers: tuple[Problem, ...] = ()
    busy: bool = False  # feasible, but every inbound slot is taken: a migration would queue

    @property
    def feasible(self) -> bool:
        return not self.blockers


@dataclass(frozen=True)
class Ranking:
    """The feasible hosts best first (free before busy), the rejected ones by name."""

    vm: str
    source: str
    candidates: tuple[Candidate, ...] = ()
    rejected: tuple[Candidate, ...] = ()

    @property
    def best(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None

    def nowhere(self) -> Problem:
        """Why no host can take the VM: the reasons of every rejected host, counted."""
        counts: dict[str, list[str]] = {}
        for c in self.rejected:
            for b in c.blockers:
                counts.setdefault(b.reason, []).append(c.host)
        if not counts:
            return Problem("NO_TARGET", f"no other host is known to take {self.vm}", "add a host (ferry hosts)")
        parts = [f"{reason} on {_hosts(hosts)}" for reason, hosts in sorted(counts.items(), key=lambda kv: -len(kv[1]))]
        blockers = [b for c in self.rejected for b in c.blockers]
        first = next((b for b in blockers if b.hint), blockers[0])
        return Problem(
            "NO_TARGET",
            f"no host can take {self.vm}: " + "; ".join(parts),
            first.hint or "see `ferry preflight " + self.vm + "` for every host's blockers",
        )


def _hosts(names: Sequence[str]) -> str:
    shown = ", ".join(names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


@functools.lru_cache(maxsize=65536)
def natural(name: str) -> tuple[object, ...]:
    """Sort key: host2 before host10.

    >>> sorted(["host10", "host2", "host1"], key=natural)
    ['host1', 'host2', 'host10']
    """
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


# ---------------------------------------------------------------- what is on its way


def loads(records: Iterable[MigrationRecord], inventory_at: Mapping[str, datetime | None]) -> dict[str, HostLoad]:
    """Per target host: the migrations not yet final, and the succeeded ones its last inventory
    (taken at ``inventory_at[host]``) predates. Only the former take an inbound slot."""
    out: dict[str, HostLoad] = {}
    for r in records:
        counted = not r.phase.is_final
        if not counted and r.phase is Phase.SUCCEEDED:
            seen = inventory_at.get(r.target_host)
            counted = seen is None or (r.updated_at is not None and r.updated_at > seen)
        if not counted:
            continue
        h = out.get(r.target_host, HostLoad())
        out[r.target_host] = HostLoad(
            h.inbound + (0 if r.phase.is_final else 1),
            h.memory_bytes + r.memory_bytes,
            h.disk_bytes + r.disk_bytes,
            h.vms + 1,
            h.names | {r.vm, r.vm_uuid},
        )
    return out


# ---------------------------------------------------------------- the checks


def _nic_blockers(domain: DomainInfo, mapping: HostMapping, host: str, facts: HostFacts) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for nic in domain.nics:
        if nic.type not in ("bridge", "network") or not nic.source or (nic.type, nic.source) in seen:
            continue
        seen.add((nic.type, nic.source))
        table, have = (mapping.bridges, facts.bridges) if nic.type == "bridge" else (mapping.networks, facts.networks)
        wanted = table.get(nic.source, nic.source)
        if wanted in have:
            continue
        mapped = f" (mapped from {nic.source})" if wanted != nic.source else ""
        out.append(
            Problem(
                f"{nic.type.upper()}_MISSING",
                f"{nic.type} {wanted}{mapped} does not exist on {host}",
                f"{host} has {nic.type}s {', '.join(have) or 'none'}; map it (--map-{nic.type} "
                f"{nic.source}=NAME) or declare it in the coordinator's [hosts.{host}]",
            )
        )
    return out


def _clash(domain: DomainInfo, option: HostOption) -> list[Problem]:
    if domain.name not in option.names and domain.uuid not in option.names:
        return _clash_on_way(domain, option)
    for d in option.domains:
        if d.uuid == domain.uuid and d.name == domain.name and not d.state.is_active:
            continue  # libvirt lets an incoming migration replace its own inactive definition
        if d.name == domain.name or d.uuid == domain.uuid:
            return [
                Problem(
                    "DOMAIN_EXISTS",
                    f"{option.name} already has a domain {d.name} ({d.uuid})",
                    f"undefine a stale copy there (virsh undefine {d.name}) or pick another host",
                )
            ]
    return _clash_on_way(domain, option)


def _clash_on_way(domain: DomainInfo, option: HostOption) -> list[Problem]:
    if option.load.names and (domain.name in option.load.names or domain.uuid in option.load.names):
        return [
            Problem(
                "DOMAIN_EXISTS",
                f"a migration of a domain named {domain.name} to {option.name} is already on its way",
                "wait for it to end",
            )
        ]
    return []


def _memory(domain: DomainInfo, option: HostOption, facts: HostFacts, offline: bool) -> tuple[list[Problem], int]:
    """Blockers and the free memory left after placement (-1 when the host's memory is unknown)."""
    if not facts.memory_total_bytes:
        return [], -1
    left = facts.memory_free_bytes - option.load.memory_bytes - (0 if offline else domain.memory_bytes)
    if offline or left >= 0:
        return [], max(left, 0)
    on_way = f" ({option.load.memory_bytes >> 20} MiB promised to migrations on their way)" if option.load.vms else ""
    return [
        Problem(
            "INSUFFICIENT_MEMORY",
            f"{domain.name} needs {domain.memory_bytes >> 20} MiB, {option.name} has "
            f"{facts.memory_free_bytes >> 20} MiB free{on_way}",
            "free memory on the host or pick another",
        )
    ], 0


def _copies(
    domain: DomainInfo, storage: StorageMode, mapping: HostMapping, options: MigrationOptions
) -> list[DiskPlan] | Problem:
    """The disks the migration copies (with their destinations on the target), or why not."""
    try:
        return [p for p in plan_disks(domain.disks, storage, options.migrate_disks, mapping) if p.copy]
    except FerryError as err:
        return Problem.of(err)


def _need(copied: list[DiskPlan], facts: HostFacts) -> dict[str, int]:
    """The bytes the copied disks need under each of the host's storage directories (by path)."""
    need_by_dir: dict[str, int] = {}
    for p in copied:
        best = max(
            (d for d in facts.storage if p.destination.startswith(d.path.rstrip("/") + "/")),
            key=lambda d: len(d.path),
            default=None,
        )
        if best is not None:
            need_by_dir[best.path] = need_by_dir.get(best.path, 0) + (p.allocation or p.virtual_size)
    return need_by_dir


def _space(
    domain: DomainInfo,
    option: HostOption,
    facts: HostFacts,
    copied: list[DiskPlan] | Problem,
    need_by_dir: dict[str, int] | None = None,
) -> tuple[list[Problem], int]:
    """Blockers for the copied disks' space, and the bytes they copy (``need_by_dir``: ``_need``
    of them, when a host of the same shape worked it out already)."""
    if isinstance(copied, Problem):
        return [copied], 0
    if need_by_dir is None:
        need_by_dir = _need(copied, facts)
    out = []
    for d in facts.storage:
        need = need_by_dir.get(d.path, 0)
        if need and need > d.free_bytes - option.load.disk_bytes:
            out.append(
                Problem(
                    "INSUFFICIENT_SPACE",
                    f"the copied disks of {domain.name} need {need >> 20} MiB under {d.path} on {option.name}, "
                    f"{max(d.free_bytes - option.load.disk_bytes, 0) >> 20} MiB free after the migrations on their way",
                    "free space there or pick another host",
                )
            )
    return out, sum(p.allocation or p.virtual_size for p in copied)


def _affinity(domain: DomainInfo, option: HostOption, groups: Sequence[AntiAffinity]) -> list[Problem]:
    mine = [g for g in groups if g.matches(domain.name)]
    if not mine:
        return []
    out = []
    here = {d.name for d in option.active if d.uuid != domain.uuid} | set(option.load.names)
    for g in mine:
        others = sorted(n for n in here if n != domain.name and g.matches(n))
        if others:
            out.append(
                Problem(
                    "ANTI_AFFINITY",
                    f"{option.name} runs {', '.join(others)}, of {domain.name}'s anti-affinity group {g.name}",
                    "members of an anti-affinity group never share a host: pick another",
                )
            )
    return out


def _own(source: HostOption, option: HostOption) -> list[Problem]:
    """What is the host's own against the source, not its shape's: a host UUID they share."""
    shared = shared_host_uuid(source.name, source.facts, option.name, option.facts)
    return [shared] if shared is not None else []


def _availability(option: HostOption) -> list[Problem]:
    return list(option.unavailable)


def _unavailable(option: HostOption) -> list[Problem]:
    out = []
    if not option.available:
        out.append(host_down(option.name, option.why_down))
    if option.state is not None and option.state.cordoned:
        out.append(cordon_problem(option.state))
    if option.facts is None:
        out.append(
            Problem(
                "INVENTORY_UNKNOWN",
                f"{option.name} has not reported its inventory yet",
                f"check ferry-agent on {option.name} (ferry hosts)",
            )
        )
    return out


def _static(
    domain: DomainInfo,
    source: HostOption,
    option: HostOption,
    facts: HostFacts,
    options: MigrationOptions,
    storage: StorageMode,
    mapping: HostMapping | FerryError,
) -> list[Problem]:
    """What only the host's facts and the mapping decide (the same on hosts of the same shape)."""
    # the coordinator's own checks, memory left to ours (it counts what is on its way)
    view = HostView(option.name, True, replace(facts, memory_free_bytes=0))
    src = HostView(source.name, True, source.facts)
    out = [
        b
        for b in coordinator_blockers(domain.name, domain, src, option.name, view, options, storage)
        if b.reason not in ("TARGET_DOWN", "SOURCE_DOWN", "HOST_UUID_SHARED")  # (per host: ``_own``)
    ]
    out += host_cpu_blockers(domain.name, domain, source.facts, facts)
    if isinstance(mapping, FerryError):  # the NICs cannot be judged without a mapping
        out.append(Problem.of(mapping))
    else:
        out += _nic_blockers(domain, mapping, option.name, facts)
        out += _old_agent_blockers(domain, source, option.name, facts, options, storage, mapping)
    return out


def _old_agent_blockers(
    domain: DomainInfo,
    source: HostOption,
    target: str,
    facts: HostFacts,
    options: MigrationOptions,
    storage: StorageMode,
    mapping: HostMapping,
) -> list[Problem]:
    """What preflight refuses for the agents' API levels (``old_agents``): during a rolling upgrade,
    a roomier host whose agent is still old is no choice for a VM whose disks stay in place."""
    if source.facts is None:
        return []
    try:
        plans = plan_disks(domain.disks, storage, options.migrate_disks, mapping)
    except FerryError:  # the disk plan's own problem is reported where it is made
        return []
    in_place = left_in_place(domain, plans)
    return old_agent_blockers(source.name, source.facts, target, facts, plans, in_place, storage, options)


def _dynamic(
    domain: DomainInfo,
    option: HostOption,
    facts: HostFacts,
    options: MigrationOptions,
    copied: list[DiskPlan] | Problem,
    policy: PlacementPolicy,
    need_by_dir: dict[str, int] | None = None,
) -> tuple[list[Problem], int, int]:
    """What the host's domains, free memory and space, and what is on its way to it decide."""
    out = _clash(domain, option)
    memory, left = _memory(domain, option, facts, options.offline)
    out += memory
    space, disk_bytes = _space(domain, option, facts, copied, need_by_dir)
    out += space
    out += _affinity(domain, option, policy.anti_affinity)
    return out, left, disk_bytes


def blockers(
    domain: DomainInfo,
    source: HostOption,
    option: HostOption,
    options: MigrationOptions,
    storage: StorageMode,
    mapping: HostMapping | FerryError,
    policy: PlacementPolicy,
) -> tuple[list[Problem], int, int]:
    """Everything that keeps ``option`` from taking the VM, the memory it has left after placement
    (-1 unknown) and the disk bytes the migration copies."""
    out = _availability(option)
    facts = option.facts
    if facts is None:
        return out, -1, 0
    out += _own(source, option)
    out += _static(domain, source, option, facts, options, storage, mapping)
    copied = _copies(domain, storage, mapping if isinstance(mapping, HostMapping) else HostMapping(), options)
    dynamic, left, disk_bytes = _dynamic(domain, option, facts, options, copied, policy)
    return out + dynamic, left, disk_bytes


# ---------------------------------------------------------------- the ranking


def _size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n >> 20} MiB"


def rank(
    domain: DomainInfo,
    source: HostOption,
    hosts: Iterable[HostOption],
    *,
    options: MigrationOptions,
    storage: StorageMode,
    mapping_for: Callable[[str], HostMapping],
    policy: PlacementPolicy = PlacementPolicy(),
    detail: bool = True,
) -> Ranking:
    """Every host but the source, judged for ``domain`` (see the module doc).

    ``mapping_for(target)`` is the source -> target mapping (it may raise, e.g. MAPPING_AMBIGUOUS:
    a blocker of that host). ``detail=False`` (a scheduler only wants the best): the static checks
    run once per host shape (``HostOption.shape``) and a host they reject is not judged further;
    a rejected host's blockers then carry their reason codes (the full text only on the first host
    of each shape), in the order the hosts came. The feasible hosts, their order and scores are
    the same either way.
    """
    if detail:
        return _rank_detailed(domain, source, hosts, options, storage, mapping_for, policy)
    return _rank_quick(domain, source, hosts, options, storage, mapping_for, policy)


def choose(
    domain: DomainInfo,
    source: HostOption,
    hosts: Sequence[HostOption],
    *,
    options: MigrationOptions,
    storage: StorageMode,
    mapping_for: Callable[[str], HostMapping],
    policy: PlacementPolicy = PlacementPolicy(),
) -> Ranking:
    """The best host for ``domain`` alone (a scheduler's choice; a preflight shows ``rank``): a
    Ranking whose only candidate is the one ``rank`` puts first, with the same score and reasons,
    and no rejected hosts -- or, when no host is feasible, ``rank(detail=False)``'s, whose
    rejected hosts say why (``Ranking.nowhere``). The hosts are judged as that quick ranking does,
    but a rejected one is not worked out further and the feasible ones are not sorted.
    """
    feasible = _judged_quickly(domain, source, hosts, options, storage, mapping_for, policy, None)
    if not feasible:
        return _rank_quick(domain, source, hosts, options, storage, mapping_for, policy)
    return Ranking(domain.name, source.name, (_best(feasible, policy),))


def _rank_detailed(
    domain: DomainInfo,
    source: HostOption,
    hosts: Iterable[HostOption],
    options: MigrationOptions,
    storage: StorageMode,
    mapping_for: Callable[[str], HostMapping],
    policy: PlacementPolicy,
) -> Ranking:
    """Every host judged in full, every candidate with its reasons."""
    judged: list[tuple[HostOption, list[Problem], int]] = []
    for option in hosts:
        if option.name == source.name:
            continue
        try:
            mapping: HostMapping | FerryError = mapping_for(option.name)
        except FerryError as err:
            mapping = err
        found, left, _ = blockers(domain, source, option, options, storage, mapping, policy)
        judged.append((option, found, left))
    judged.sort(key=lambda j: natural(j[0].name))
    rejected = tuple(Candidate(o.name, blockers=tuple(b)) for o, b, _ in judged if b)
    feasible = [(o, left, _vms_after(o)) for o, b, left in judged if not b]
    return Ranking(domain.name, source.name, _scored(feasible, policy, detail=True), rejected)


def _rank_quick(
    domain: DomainInfo,
    source: HostOption,
    hosts: Iterable[HostOption],
    options: MigrationOptions,
    storage: StorageMode,
    mapping_for: Callable[[str], HostMapping],
    policy: PlacementPolicy,
) -> Ranking:
    """``rank(detail=False)``: the static checks once per shape, and for a host they pass, the
    common case (no blocker) decided by a few comparisons; a host that may have a blocker is judged
    by the same functions as the detailed ranking, so its blockers are theirs."""
    rejected: list[Candidate] = []
    feasible = _judged_quickly(domain, source, hosts, options, storage, mapping_for, policy, rejected)
    return Ranking(domain.name, source.name, _scored(feasible, policy, detail=False), tuple(rejected))


def _judged_quickly(
    domain: DomainInfo,
    source: HostOption,
    hosts: Iterable[HostOption],
    options: MigrationOptions,
    storage: StorageMode,
    mapping_for: Callable[[str], HostMapping],
    policy: PlacementPolicy,
    rejected: list[Candidate] | None,
) -> list[tuple[HostOption, int, int]]:
    """The quick ranking's judging: the feasible hosts as (option, memory left after placement, VMs
    after), and each rejected one appended to ``rejected`` (None: not kept, nor worked out)."""
    feasible: list[tuple[HostOption, int, int]] = []
    # per shape: its static blockers (as the first host of it got them), their reason codes, the
    # copied disks and the bytes they need under each storage directory
    shapes: dict[Hashable, tuple[list[Problem], tuple[str, ...], list[DiskPlan] | Problem, dict[str, int] | None]] = {}
    name, uuid = domain.name, domain.uuid
    memory_needed = 0 if options.offline else domain.memory_bytes
    grouped = any(g.matches(domain.name) for g in policy.anti_affinity)
    refused: set[Hashable] = set()  # without ``rejected``: the shapes the static checks reject, skipped
    for option in hosts:
        if option.shape in refused or option.name == source.name:
            continue
        facts = option.facts
        if option.shape is None or facts is None:
            try:
                mapping: HostMapping | FerryError = mapping_for(option.name)
            except FerryError as err:
                mapping = err
            found, left, _ = blockers(domain, source, option, options, storage, mapping, policy)
            if not found:
                feasible.append((option, left, _vms_after(option)))
            elif rejected is not None:
                rejected.append(Candidate(option.name, blockers=tuple(found)))
            continue
        known = shapes.get(option.shape)
        first = known is None
        if known is None:
            try:
                mapping = mapping_for(option.name)
            except FerryError as err:
                mapping = err
            static = _static(domain, source, option, facts, options, storage, mapping)
            copied = _copies(domain, storage, mapping if isinstance(mapping, HostMapping) else HostMapping(), options)
            need = None if isinstance(copied, Problem) else _need(copied, facts)
            known = shapes[option.shape] = (static, tuple(b.reason for b in static), copied, need)
        static, codes, copied, need = known
        own = _own(source, option)
        if own:  # (rare: the source's own host UUID)
            if rejected is not None:
                rejected.append(Candidate(option.name, blockers=(*option.unavailable, *own, *static)))
            continue
        if static:  # rejected anyway: the rest is only needed for the detailed ranking
            if rejected is None:
                refused.add(option.shape)
                continue
            down = option.unavailable  # (facts known here: down or cordoned)
            if down:
                rejected.append(Candidate(option.name, blockers=(*down, *(static if first else _quiet(codes)))))
            elif first:
                rejected.append(Candidate(option.name, blockers=tuple(static)))
            else:
                rejected.append(_quiet_rejection(option.name, codes))
            continue
        down = option.unavailable
        if down and rejected is None:
            continue
        load = option.load
        # the memory left after placement when the host clearly has no blocker of ``_dynamic`` but
        # anti-affinity (the number ``_memory`` gives), None when it may have one; written out
        # here, not called: a choice runs this for every host of the fleet
        clear = None
        if not down and need is not None:  # (None: the disks cannot be copied, ``_space`` says why)
            have, coming = option.names, load.names
            # a name of the VM there or on its way: a clash, or its own inactive definition
            if not (name in have or uuid in have or (coming and (name in coming or uuid in coming))):
                for d in facts.storage:
                    n = need.get(d.path, 0)
                    if n and n > d.free_bytes - load.disk_bytes:
                        break  # short of space
                else:
                    if not facts.memory_total_bytes:
                        clear = -1
                    else:  # short of memory (or offline, where ``_memory`` says 0): None
                        left = facts.memory_free_bytes - load.memory_bytes - memory_needed
                        clear = left if left >= 0 else None
        if clear is not None and grouped and _affinity(domain, option, policy.anti_affinity):
            clear = None
        if clear is None:  # a blocker, or one may be: judge it in full
            dynamic, left, _ = _dynamic(domain, option, facts, options, copied, policy, need)
            if down or dynamic:
                if rejected is not None:
                    rejected.append(Candidate(option.name, blockers=(*down, *dynamic)))
                continue
            clear = left
        feasible.append((option, clear, len(option.active) + load.vms + 1))
    return feasible


@functools.lru_cache(maxsize=1024)
def _quiet(codes: tuple[str, ...]) -> tuple[Problem, ...]:
    """Blockers carrying only their reason codes (the shape's other hosts in a quick ranking)."""
    return tuple(Problem(c, c, "") for c in codes)


@functools.lru_cache(maxsize=65536)
def _quiet_rejection(host: str, codes: tuple[str, ...]) -> Candidate:
    return Candidate(host, blockers=_quiet(codes))


def _scored(
    feasible: list[tuple[HostOption, int, int]], policy: PlacementPolicy, *, detail: bool
) -> tuple[Candidate, ...]:
    """The feasible hosts (option, memory left, VMs after placement) scored, best first; without
    ``detail`` only the best one gets its reasons."""
    low, high = (min(n for _, _, n in feasible), max(n for _, _, n in feasible)) if feasible else (0, 0)
    weights, limit = policy.weights, max(policy.inbound_limit, 1)
    scored = []
    for option, left, n in feasible:
        facts = option.facts
        assert facts is not None
        memory, score, busy = _score(option, left, n, low, high, weights, limit)
        reasons = _reasons(option, facts, left, memory, n, low, high, limit, busy) if detail else ()
        scored.append(Candidate(option.name, score, reasons, (), busy))
    scored.sort(key=_best_first)
    if not detail and scored:  # the reasons only of the one chosen
        best = scored[0]
        chosen = next(f for f in feasible if f[0].name == best.host)
        scored[0] = _candidate(chosen, low, high, weights, limit)
    return tuple(scored)


def _best(feasible: list[tuple[HostOption, int, int]], policy: PlacementPolicy) -> Candidate:
    """The candidate ``_scored`` puts first (not empty), with its reasons: each host scored (by
    ``_score``'s arithmetic, written out: a choice scores every feasible host of the fleet), none
    made a Candidate nor sorted. Ties of (busy, score) go to the lower natural name, as there."""
    low = high = feasible[0][2]
    for f in feasible:
        n = f[2]
        if n < low:
            low = n
        elif n > high:
            high = n
    weights, limit = policy.weights, max(policy.inbound_limit, 1)
    wm, wb, wi, span = weights.memory, weights.balance, weights.inbound, high - low
    best, best_busy, best_score = feasible[0], True, float("-inf")
    for f in feasible:
        option, left, n = f
        taken = option.load.inbound
        busy = taken >= limit
        if busy and not best_busy:
            continue
        if left >= 0:
            facts = option.facts
            assert facts is not None
            memory = left / facts.memory_total_bytes
        else:
            memory = 0.5
        balance = 1.0 if span == 0 else (high - n) / span
        inbound = 1 - (taken if taken < limit else limit) / limit
        score = round(wm * memory + wb * balance + wi * inbound, 3)
        if busy is best_busy and (
            score < best_score or (score == best_score and natural(option.name) >= natural(best[0].name))
        ):
            continue
        best, best_busy, best_score = f, busy, score
    return _candidate(best, low, high, weights, limit)


def _score(
    option: HostOption, left: int, n: int, low: int, high: int, w: Weights, limit: int
) -> tuple[float, float, bool]:
    """A feasible host's memory fraction after placement, score and whether it is busy (see the
    module doc), given the fewest and most VMs after placement of the feasible hosts."""
    facts = option.facts
    assert facts is not None
    memory = left / facts.memory_total_bytes if left >= 0 else 0.5
    balance = 1.0 if high == low else (high - n) / (high - low)
    taken = option.load.inbound
    inbound = 1 - (taken if taken < limit else limit) / limit
    return memory, round(w.memory * memory + w.balance * balance + w.inbound * inbound, 3), taken >= limit


def _candidate(chosen: tuple[HostOption, int, int], low: int, high: int, w: Weights, limit: int) -> Candidate:
    """A feasible host as a candidate with its score and the reasons for it."""
    option, left, n = chosen
    assert option.facts is not None
    memory, score, busy = _score(option, left, n, low, high, w, limit)
    return Candidate(
        option.name, score, _reasons(option, option.facts, left, memory, n, low, high, limit, busy), (), busy
    )


def _best_first(c: Candidate) -> tuple[bool, float, tuple[object, ...]]:
    return c.busy, -c.score, natural(c.host)


def _reasons(
    option: HostOption, facts: HostFacts, left: int, memory: float, n: int, low: int, high: int, limit: int, busy: bool
) -> tuple[str, ...]:
    """What a candidate's score is made of, in words."""
    if left >= 0:
        memory_why = f"{_size(left)} of {_size(facts.memory_total_bytes)} memory free after placement"
    else:
        memory_why = "memory unknown"
    return (
        f"{memory_why} ({memory:.0%})",
        f"{n} VM{'' if n == 1 else 's'} after placement ({_spread(low, high)})",
        f"{option.load.inbound}/{limit} inbound slots taken" + ("; busy: it would queue" if busy else ""),
    )


def _spread(low: int, high: int) -> str:
    """The balance reason's context: how many VMs the feasible hosts would run.

    >>> _spread(2, 2)
    'every feasible host would run 2'
    >>> _spread(1, 4)
    'the feasible hosts would run 1 to 4'
    """
    if low == high:
        return f"every feasible host would run {low}"
    return f"the feasible hosts would run {low} to {high}"


def _vms_after(option: HostOption) -> int:
    return len(option.active) + option.load.vms + 1


@dataclass
class Reservations:
    """Loads that grow while a plan places several VMs one after the other (a drain's plan):
    each placed VM is on its way to its host for the next decision."""

    by_host: dict[str, HostLoad] = field(default_factory=dict)

    def add(self, host: str, domain: DomainInfo, disk_bytes: int) -> None:
        self.by_host[host] = self.by_host.get(host, HostLoad()).plus(domain, disk_bytes)

    def apply(self, options: Iterable[HostOption]) -> list[HostOption]:
        """The options with what was placed so far added to their loads."""
        if not self.by_host:
            return list(options)
        get = self.by_host.get
        return [o if (extra := get(o.name)) is None else _with_more(o, extra) for o in options]


def _with_more(o: HostOption, extra: HostLoad) -> HostOption:
    return o.with_load(o.load.add(extra))
