"""Preflight: every reason a migration cannot go ahead, gathered from the fleet (touches nothing).

One function for both callers: the API's Preflight RPC (a dry run an operator asks for) and the
engine's Preflight phase. It asks the agents, then applies the pure checks:

1. the source agent's GetDomain (with the migratable XML), or, when the source is not given,
   every available agent's inventory to find the VM;
2. the source's and target's inventories (host facts) -> ``checks.coordinator_blockers``;
3. the disk plan (``diskplan.plan_disks``, storage mode from ``checks.effective_storage``) and
   the target agent's ``PrepareIncoming(dry_run=True)``: its problems are blockers too.

A host whose agent is not available (no registration) or does not answer is listed in
``PreflightReport.unavailable``: the engine re-queues the migration then (an agent may come back),
while the API shows the blockers (SOURCE_DOWN, TARGET_DOWN, AGENT_UNREACHABLE) to the operator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ferry.agent.diskplan import plan_disks
from ferry.errors import FerryError, NotFound
from ferry.model import Blocker, DiskPlan, DomainInfo, HostFacts, HostMapping, MigrationOptions, StorageMode

from .agent_client import agent_lost
from .checks import HostView, coordinator_blockers, effective_storage

if TYPE_CHECKING:
    from .engine import HostDirectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreflightReport:
    """What preflight found. ``blockers`` empty = the migration can go ahead."""

    blockers: tuple[Blocker, ...]
    source_host: str = ""
    domain: DomainInfo | None = None
    domain_xml: str = ""                 # the source's migratable XML
    storage: StorageMode | None = None   # the storage mode the migration would use (auto resolved)
    disks: tuple[DiskPlan, ...] = ()     # the disk plan, with the target's destinations when it answered
    unavailable: tuple[str, ...] = ()    # hosts whose agent is down or did not answer

    @property
    def ok(self) -> bool:
        return not self.blockers


def _unreachable(host: str, err: FerryError) -> Blocker:
    return Blocker("AGENT_UNREACHABLE", f"the agent on {host} could not be asked: {err.message}",
                   err.hint or f"check ferry-agent on {host}")


def _blocker(err: FerryError) -> Blocker:
    return Blocker(err.reason, err.message, err.hint)


async def _find(hosts: HostDirectory, vm: str, names: Sequence[str]
                ) -> tuple[str | None, dict[str, FerryError]]:
    """The available host reporting ``vm`` (by name or UUID; an active copy wins)."""
    async def one(name: str) -> tuple[str, object]:
        try:
            return name, await hosts.client(name).inventory()
        except FerryError as err:
            return name, err
    found: list[tuple[bool, str]] = []
    failed: dict[str, FerryError] = {}
    for name, got in await asyncio.gather(*(one(n) for n in names)):
        if isinstance(got, FerryError):
            failed[name] = got
            continue
        for d in got.domains:  # type: ignore[attr-defined]
            if vm in (d.name, d.uuid):
                found.append((not d.state.is_active, name))
    return (min(found)[1] if found else None), failed


async def preflight(hosts: HostDirectory, vm: str, target: str, options: MigrationOptions,
                    mapping: HostMapping, *, storage: StorageMode | None = None, source_host: str | None = None,
                    migration_id: str = "") -> PreflightReport:
    """Every blocker for migrating ``vm`` to ``target`` (see the module docstring).

    ``storage`` None means auto (``effective_storage``); ``source_host`` None means look the VM
    up on every available host. Never raises for what it finds: agent errors become blockers.
    """
    available = hosts.available_hosts()
    unavailable: list[str] = []
    extra: list[Blocker] = []
    failed: dict[str, FerryError] = {}
    if source_host is None:
        source_host, failed = await _find(hosts, vm, sorted(available))
        if source_host is not None:   # found: only the hosts involved matter
            failed = {h: e for h, e in failed.items() if h == target}
    domain, xml = None, ""
    if source_host is not None and source_host in available:
        try:
            domain, xml = await hosts.client(source_host).get_domain(vm, include_xml=True)
        except NotFound:
            domain = None
        except FerryError as err:
            failed[source_host] = err
    elif source_host is not None:
        unavailable.append(source_host)

    async def facts(name: str) -> HostFacts | FerryError | None:
        if name not in available or name in failed:
            return None
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
        views[name] = HostView(name, name in available and name not in failed, got)
    for name, err in failed.items():
        extra.append(_unreachable(name, err))
        unavailable.append(name)
    if target not in available:
        unavailable.append(target)

    mode = storage if storage is not None else (
        effective_storage(domain, options, explicit=False) if domain is not None else options.storage)
    source_view = views.get(source_host) if source_host else None
    target_view = views[target] if target in available else None
    blockers = coordinator_blockers(vm, domain, source_view, target, target_view, options, mode)
    if source_host is not None and domain is None and (source_host in failed or source_host not in available):
        # the VM is not unknown: its host could not be asked
        blockers = [b for b in blockers if b.reason != "VM_UNKNOWN"]
        if source_host not in failed:
            blockers.append(Blocker("SOURCE_DOWN", f"the agent on {source_host} is not available",
                                    f"start ferry-agent on {source_host}"))

    plans: list[DiskPlan] = []
    if domain is not None and target_view is not None and target_view.available and source_host != target:
        try:
            plans = plan_disks(domain.disks, mode, options.migrate_disks, mapping)
        except FerryError as err:
            blockers.append(_blocker(err))
        else:
            try:
                out = await hosts.client(target).prepare_incoming(
                    domain_xml=xml, disks=plans, mapping=mapping, storage=mode, ttl_s=0,
                    migration_id=migration_id, dry_run=True)
                blockers.extend(out.problems)
                plans = list(out.disks) or plans
            except FerryError as err:
                if agent_lost(err):
                    extra.append(_unreachable(target, err))
                    unavailable.append(target)
                else:
                    blockers.append(_blocker(err))
    seen = {(b.reason, b.message) for b in blockers}
    blockers.extend(b for b in extra if (b.reason, b.message) not in seen)
    return PreflightReport(tuple(blockers), source_host or "", domain, xml, mode, tuple(plans),
                           tuple(dict.fromkeys(unavailable)))
