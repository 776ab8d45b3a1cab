"""Preflight: every reason a migration cannot go ahead, gathered from the fleet (touches nothing).

One function for both callers: the API's Preflight RPC (a dry run an operator asks for) and the
engine's Preflight phase. It asks the agents, then applies the pure checks:

1. the source agent's GetDomain (with the migratable XML), or, when the source is not given,
   every available agent's inventory to find the VM;
2. the source's and target's inventories (host facts) -> ``checks.coordinator_blockers`` and
   ``host_cpu_blockers`` (a host-passthrough guest needs the same host CPU on the target: the
   target agent cannot judge a CPU the XML does not describe);
3. the disk plan (``diskplan.plan_disks``, storage mode from ``checks.effective_storage``) and
   the target agent's ``PrepareIncoming(dry_run=True)``: its problems (bridges, files, space,
   CPU model, memory) are blockers too; its memory figure is fresher than the inventory's;
4. at the same time, the source agent's ``ProbeTarget`` of the target's libvirt URI (the one the
   migration would use): a name that does not resolve or a libvirtd that cannot be reached from
   the source are blockers (TARGET_UNRESOLVABLE, TARGET_UNREACHABLE).
5. before that dry run, when writable disks stay in place (shared storage), the source agent's
   ``MarkSharedStorage``: an empty probe file next to each such disk, which the target must see
   at the mapped path (else SHARED_STORAGE_MISMATCH: the target's file there is another file, e.g.
   its shared storage is not mounted and a local copy stands in); removed again right after the
   dry run. A directory the source cannot write a probe in is a blocker
   (SHARED_STORAGE_UNVERIFIED) unless the migration is marked unsafe (the operator vouches).
6. the checks an agent of an older API level (``HostFacts.api_level``, ferry/compat.py) would skip
   without a word -- an old target ignores the probes, an old source fingerprints no backing file --
   are blockers too (SHARED_STORAGE_UNVERIFIED, BACKING_UNVERIFIED; ``old_agent_blockers``), unless
   the migration is marked unsafe.

A host whose agent is not available (no registration) or does not answer is listed in
``PreflightReport.unavailable``: the engine re-queues the migration then (an agent may come back),
while the API shows the blockers (SOURCE_DOWN, TARGET_DOWN, AGENT_UNREACHABLE) to the operator.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ferry.convergence import ConvergencePolicy
from ferry.diskplan import plan_disks
from ferry.errors import FerryError, NotFound
from ferry.model import (
    DiskPlan,
    DomainInfo,
    GuestLoad,
    HostFacts,
    HostMapping,
    MigrationOptions,
    Problem,
    StorageMode,
)
from ferry.prediction import Prediction
from ferry.registry import HostDirectory

from .agent_client import AGENT_TOO_OLD, agent_lost
from .checks import HostView, coordinator_blockers, effective_storage, host_cpu_blockers, host_down
from .old_agents import left_in_place, old_agent_blockers, unverified_storage
from .policies import PredictionConfig, predict_migration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreflightReport:
    """What preflight found. ``blockers`` empty = the migration can go ahead."""

    blockers: tuple[Problem, ...]
    source_host: str = ""
    domain: DomainInfo | None = None
    domain_xml: str = ""  # the source's migratable XML
    storage: StorageMode | None = None  # the storage mode the migration would use (auto resolved)
    disks: tuple[DiskPlan, ...] = ()  # the disk plan, with the target's destinations when it answered
    unavailable: tuple[str, ...] = ()  # hosts whose agent is down or did not answer

    @property
    def ok(self) -> bool:
        return not self.blockers


def _unreachable(host: str, err: FerryError) -> Problem:
    return Problem(
        "AGENT_UNREACHABLE",
        f"the agent on {host} could not be asked: {err.message}",
        err.hint or f"check ferry-agent on {host}",
    )


def target_address(hosts: HostDirectory, target: str, facts: HostFacts | None) -> tuple[str, str]:
    """The target's libvirt URI and migration address as a migration would use them: its
    registration's, else its inventory's."""
    reg = hosts.registration(target)
    if reg is not None and reg.libvirt_uri:
        return reg.libvirt_uri, reg.migration_address
    return (facts.libvirt_uri, facts.migration_address) if facts is not None else ("", "")


class ProbeCache:
    """Probes that found nothing wrong, remembered for ``ttl_s`` by (source, target URI): the
    engine's preflights of many VMs between the same two hosts probe once a minute, not each time.
    (An operator's Preflight always probes.)"""

    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._passed: dict[tuple[str, str], float] = {}

    def fresh(self, source: str, uri: str) -> bool:
        at = self._passed.get((source, uri))
        return at is not None and self._clock() - at < self.ttl_s

    def passed(self, source: str, uri: str) -> None:
        self._passed[(source, uri)] = self._clock()


async def _probe(
    hosts: HostDirectory, source: str, target: str, facts: HostFacts | None, probes: ProbeCache | None = None
) -> tuple[list[Problem], FerryError | None]:
    """The source's ProbeTarget of the target: its problems, or the error asking it."""
    uri, address = target_address(hosts, target, facts)
    if uri and probes is not None and probes.fresh(source, uri):
        return [], None
    if not uri:
        return [
            Problem(
                "TARGET_URI_UNKNOWN",
                f"{target} advertises no libvirt URI",
                f"set advertise_libvirt_uri in ferry-agent's config on {target}",
            )
        ], None
    try:
        problems, latency_ms = await hosts.client(source).probe_target(uri, migration_address=address)
    except FerryError as err:
        if err.reason == AGENT_TOO_OLD:
            log.warning("cannot probe %s from %s: %s", target, source, err)
            return [], None
        return [], err
    log.debug("probe %s -> %s (%s): %d ms, %d problem(s)", source, target, uri, latency_ms, len(problems))
    if not problems and probes is not None:
        probes.passed(source, uri)
    return problems, None


def block_devices(domain: DomainInfo, options: MigrationOptions) -> tuple[dict[str, str], list[Problem]]:
    """The writable block devices the guest keeps using in place (path -> the source's identity of
    each), and a blocker for each whose identity the source cannot tell (unless unsafe)."""
    used = {d.block_device: d for d in domain.disks if d.block_device and not d.readonly and d.device == "disk"}
    unknown = [
        Problem(
            "BLOCK_DEVICE_UNVERIFIED",
            f"disk {d.target} is the block device {path}, which the source cannot identify (no device-mapper "
            "UUID or WWID): the target's device at that path cannot be shown to be the same one",
            "Ferry never copies a block device: use storage both hosts see under one identity (a multipath LUN, "
            "a shared volume group), move the disk into a file image, or pass --unsafe if you know the target's "
            f"{path} is the same device",
        )
        for path, d in used.items()
        if not d.block_identity and not options.unsafe
    ]
    return {path: d.block_identity for path, d in used.items()}, unknown


async def _mark(
    hosts: HostDirectory,
    source: str,
    target: str,
    paths: list[str],
    options: MigrationOptions,
    extra: list[Problem],
    unavailable: list[str],
) -> tuple[list[str], list[Problem]]:
    """The source's probes next to the disks left in place: (probes, blockers)."""
    try:
        probes, problems = await hosts.client(source).mark_shared_storage(paths, secrets.token_hex(16))
    except FerryError as err:
        if err.reason == AGENT_TOO_OLD:  # its inventory said otherwise (downgraded since?)
            return [], [] if options.unsafe else [unverified_storage(source, target, paths, err.message, [source])]
        if agent_lost(err):
            extra.append(_unreachable(source, err))
            unavailable.append(source)
            return [], []
        probes, problems = [], [Problem.of(err)]
    if options.unsafe:  # the operator vouches for what could not be checked
        return probes, []
    return probes, [
        Problem(
            "SHARED_STORAGE_UNVERIFIED",
            f"{source} cannot check that {target} sees the same storage as it does: {p.message}",
            f"list that directory in shared_dirs of {source}'s agent config (the agent writes an empty "
            ".ferry-probe-* file there and removes it), copy the disks (--copy-storage-all), or pass --unsafe "
            "if you know both hosts use the same storage there",
        )
        for p in problems
    ]


async def _unmark(hosts: HostDirectory, source: str, probes: list[str]) -> None:
    try:
        await hosts.client(source).unmark_shared_storage(probes)
    except FerryError as err:  # the agent removes them itself later
        log.warning("could not remove the shared-storage probes on %s: %s", source, err)


async def _dry_run(
    hosts: HostDirectory,
    source: str | None,
    target: str,
    domain: DomainInfo,
    xml: str,
    mode: StorageMode,
    options: MigrationOptions,
    mapping: HostMapping,
    migration_id: str,
    extra: list[Problem],
    unavailable: list[str],
    both: tuple[HostFacts, HostFacts] | None = None,
) -> tuple[list[DiskPlan], list[Problem]]:
    """The disk plan and the target's PrepareIncoming(dry_run), with the source's shared-storage
    probes (``source`` None: none): (plans, blockers). An agent that cannot be asked goes to
    ``extra``/``unavailable``. ``both``: the source's and the target's facts, for the checks their
    agents' API levels cannot make (``old_agent_blockers``)."""
    try:
        plans = plan_disks(domain.disks, mode, options.migrate_disks, mapping)
    except FerryError as err:
        return [], [Problem.of(err)]
    in_place = left_in_place(domain, plans) if source is not None else []
    old = (
        old_agent_blockers(source, both[0], target, both[1], plans, in_place, mode, options)
        if source is not None and both is not None
        else []
    )
    probes, blockers = (
        await _mark(hosts, source, target, in_place, options, extra, unavailable)
        if source is not None and in_place and not any(b.reason == "SHARED_STORAGE_UNVERIFIED" for b in old)
        else ([], [])
    )
    blockers += old
    devices, unknown = block_devices(domain, options)
    blockers += unknown
    try:
        out = await hosts.client(target).prepare_incoming(
            domain_xml=xml,
            disks=plans,
            mapping=mapping,
            storage=mode,
            ttl_s=0,
            migration_id=migration_id,
            dry_run=True,
            shared_probes=probes,
            block_devices=devices,
            offline=options.offline,
        )
    except FerryError as err:
        if agent_lost(err):
            extra.append(_unreachable(target, err))
            unavailable.append(target)
            return plans, blockers
        return plans, [*blockers, Problem.of(err)]
    finally:
        if probes:
            assert source is not None
            await _unmark(hosts, source, probes)
    return list(out.disks) or plans, [*blockers, *out.problems]


async def _find(hosts: HostDirectory, vm: str, names: Sequence[str]) -> tuple[str | None, dict[str, FerryError]]:
    """The available host reporting ``vm`` (by name or UUID; an active copy wins)."""
    found, _, failed = await _find_named(hosts, vm, names)
    return found, failed


async def _find_named(
    hosts: HostDirectory, vm: str, names: Sequence[str]
) -> tuple[str | None, str, dict[str, FerryError]]:
    """As ``_find``, with the VM's name there."""

    async def one(name: str) -> tuple[str, object]:
        try:
            return name, await hosts.client(name).inventory()
        except FerryError as err:
            return name, err

    found: list[tuple[bool, str, str]] = []
    failed: dict[str, FerryError] = {}
    for name, got in await asyncio.gather(*(one(n) for n in names)):
        if isinstance(got, FerryError):
            failed[name] = got
            continue
        for d in got.domains:  # type: ignore[attr-defined]
            if vm in (d.name, d.uuid):
                found.append((not d.state.is_active, name, d.name))
    if not found:
        return None, "", failed
    _, host, named = min(found)
    return host, named, failed


async def _moved(
    hosts: HostDirectory, vm: str, source: str, available: Sequence[str], blockers: list[Problem]
) -> list[Problem]:
    """The source has no such VM: when another host has it, say so instead of "no host reports"."""
    host, name, _ = await _find_named(hosts, vm, [h for h in available if h != source])
    if host is None:
        return blockers
    return [
        Problem(
            "VM_UNKNOWN",
            f"{name} is no longer on {source}: it runs on {host} now (moved outside this migration: by hand, by "
            "another migration, or etcd was restored from an older backup)",
            f"nothing to do if {host} is where {name} should be; else migrate it from there (ferry migrate {name})",
        ),
        *(b for b in blockers if b.reason != "VM_UNKNOWN"),
    ]


async def preflight(
    hosts: HostDirectory,
    vm: str,
    target: str,
    options: MigrationOptions,
    mapping: HostMapping,
    *,
    storage: StorageMode | None = None,
    source_host: str | None = None,
    migration_id: str = "",
    known_facts: Callable[[str], HostFacts | None] | None = None,
    probes: ProbeCache | None = None,
) -> PreflightReport:
    """Every blocker for migrating ``vm`` to ``target`` (see the module docstring).

    ``storage`` None means auto (``effective_storage``); ``source_host`` None means look the VM
    up on every available host. ``known_facts(host)``: a host's facts when the caller has them
    fresh (the fleet view's cached inventory), so only hosts without are asked; ``probes``: the
    probes that passed lately (not asked again). Never raises for what it finds: agent errors
    become blockers.
    """
    available = hosts.available_hosts()
    unavailable: list[str] = []
    extra: list[Problem] = []
    failed: dict[str, FerryError] = {}
    source_given = source_host is not None
    if source_host is None:
        source_host, failed = await _find(hosts, vm, sorted(available))
        if source_host is not None:  # found: only the hosts involved matter
            failed = {h: e for h, e in failed.items() if h == target}
    domain, xml = None, ""
    if source_host is not None and source_host in available:
        try:
            domain, xml = await hosts.client(source_host).get_domain(
                vm, include_xml=True, backing_fingerprints=StorageMode.COPY_INC in (storage, options.storage)
            )
        except NotFound:
            domain = None
        except FerryError as err:
            failed[source_host] = err
    elif source_host is not None:
        unavailable.append(source_host)

    async def facts(name: str) -> HostFacts | FerryError | None:
        if name not in available or name in failed:
            return None
        cached = known_facts(name) if known_facts is not None else None
        if cached is not None:
            return cached
        try:
            return (await hosts.client(name).inventory()).host
        except FerryError as err:
            return err

    views: dict[str, HostView] = {}
    names = [n for n in dict.fromkeys((source_host, target)) if n]
    for name, got in zip(names, await asyncio.gather(*(facts(n) for n in names)), strict=True):
        if isinstance(got, FerryError):
            failed[name] = got
            got = None
        up = name in available and name not in failed
        views[name] = HostView(name, up, got, None if up or name in failed else hosts.why_down(name))
    for name, error in failed.items():
        extra.append(_unreachable(name, error))
        unavailable.append(name)
    if target not in available:
        unavailable.append(target)

    mode = (
        storage
        if storage is not None
        else (effective_storage(domain, options, explicit=False) if domain is not None else options.storage)
    )
    source_view = views.get(source_host) if source_host else None
    target_view = views[target] if target in available else None
    shown = domain.name if domain is not None else vm  # the engine asks by UUID; messages name the VM
    blockers = coordinator_blockers(shown, domain, source_view, target, target_view, options, mode)
    if source_host is not None and domain is None and (source_host in failed or source_host not in available):
        # the VM is not unknown: its host could not be asked
        blockers = [b for b in blockers if b.reason != "VM_UNKNOWN"]
        if source_host not in failed:
            blockers.append(host_down(source_host, hosts.why_down(source_host), target=False))
    elif source_given and domain is None and source_host is not None:
        blockers = await _moved(hosts, vm, source_host, sorted(available), blockers)

    blockers.extend(
        host_cpu_blockers(
            vm, domain, source_view.facts if source_view else None, target_view.facts if target_view else None
        )
    )
    probing: asyncio.Task[tuple[list[Problem], FerryError | None]] | None = None
    if (
        domain is not None
        and source_host is not None
        and source_host != target
        and source_view is not None
        and source_view.available
        and target_view is not None
        and target_view.available
    ):
        probing = asyncio.create_task(_probe(hosts, source_host, target, target_view.facts, probes))

    plans: list[DiskPlan] = []
    try:
        if domain is not None and target_view is not None and target_view.available and source_host != target:
            source_up = source_view is not None and source_view.available
            plans, problems = await _dry_run(
                hosts,
                source_host if source_up else None,
                target,
                domain,
                xml,
                mode,
                options,
                mapping,
                migration_id,
                extra,
                unavailable,
                (source_view.facts, target_view.facts)
                if source_up and source_view is not None and source_view.facts is not None and target_view.facts
                else None,
            )
            if any(p.reason == "INSUFFICIENT_MEMORY" for p in problems):
                # the target's own figure, fresher than its last inventory
                blockers = [b for b in blockers if b.reason != "INSUFFICIENT_MEMORY"]
            blockers.extend(problems)
    except BaseException:
        if probing is not None:
            probing.cancel()  # preflight itself was cancelled (or failed): nobody waits for the probe
        raise
    if probing is not None and source_host is not None:
        problems, probe_error = await probing
        blockers.extend(problems)
        if probe_error is not None and agent_lost(probe_error):
            extra.append(_unreachable(source_host, probe_error))
            unavailable.append(source_host)
        elif probe_error is not None:
            blockers.append(Problem.of(probe_error))
    seen = {(b.reason, b.message) for b in blockers}
    blockers.extend(b for b in extra if (b.reason, b.message) not in seen)
    return PreflightReport(
        tuple(blockers), source_host or "", domain, xml, mode, tuple(plans), tuple(dict.fromkeys(unavailable))
    )


async def measure(
    hosts: HostDirectory, source: str, vm_uuid: str, memory_bytes: int, config: PredictionConfig
) -> GuestLoad:
    """The guest measured on its source (MeasureGuest: libvirt's dirty-rate calculation, the
    periods of ``config`` one after the other). Never raises: what cannot be measured says why."""
    try:
        load = await hosts.client(source).measure_guest(vm_uuid, periods=config.periods_s)
    except FerryError as err:
        log.info("cannot measure %s on %s: %s: %s", vm_uuid, source, err.reason, err)
        load = GuestLoad(memory_bytes=memory_bytes, error=f"the source could not measure it ({err.reason})")
    return load if load.memory_bytes else replace(load, memory_bytes=memory_bytes)


async def predict_for(
    hosts: HostDirectory,
    source: str,
    domain: DomainInfo,
    policy: ConvergencePolicy,
    *,
    disk_bytes: int,
    config: PredictionConfig,
    load: GuestLoad | None = None,
    budget_mibps: int = 0,
) -> Prediction:
    """Predict the migration under ``policy`` from ``load``, measured now when not given, at most
    at ``budget_mibps`` (its hosts' bandwidth budgets; 0: none)."""
    if load is None:
        load = await measure(hosts, source, domain.uuid, domain.memory_bytes, config)
    prediction = predict_migration(policy, load, disk_bytes=disk_bytes, config=config, budget_mibps=budget_mibps)
    log.info("prediction for %s under policy %s: %s", domain.name, policy.label, prediction.words)
    return prediction
