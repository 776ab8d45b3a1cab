"""Who may call what: the one table of RPC method -> roles, like ``ferry.errors``' table of codes.

Enforced for every server ``ferry.rpc.create_server`` builds (``ferry.rpc_auth``'s interceptor),
so a servicer method cannot forget it. A method missing from :data:`RULES` is refused, and a
unit test checks that every RPC of both services has a rule.

The roles (``ferry.identity.Role``):

==============  =====================================================================
coordinator     every Agent RPC; the only identity that may call the mutating ones
                (PrepareIncoming, CleanupIncoming, CommitIncoming, Migrate, AbortMigration,
                TuneMigration, ProbeTarget, MeasureGuest, RemoveSourceDisks, MarkSharedStorage,
                UnmarkSharedStorage) and that gets the secure
                domain XML (graphics passwords) from GetDomain
operator        every Coordinator RPC, with mapping overrides, unsafe options and
                definition overrides (keep_source_definition, transient_target); the only
                identity that may cordon and uncordon hosts, submit, pause, resume or cancel
                drains, and tune, switch to post-copy or force-complete a running migration
                (ControlMigration); the Agent API's reads (GetInventory, GetDomain, ListPrepares, GetJob)
                without a leader term
scheduler       SubmitMigration and CancelMigration without mapping overrides, unsafe
                options or definition overrides; the Coordinator API's reads
reader          the reads: ListHosts, ListVMs, GetMigration, ListMigrations, WatchMigration,
                Preflight, RankTargets, ListPolicies, WatchFleet, GetDrain, ListDrains, WatchDrain; the Agent
                API's reads without a leader term
agent           nothing beyond health checks (agents call etcd, not each other)
==============  =====================================================================

The daemons' metrics endpoints (``GET /metrics`` over HTTPS, ``ferry.metrics``) take the same
client certificates: :data:`METRICS` is the readers' (give Prometheus a reader certificate).
The metrics name VMs, hosts and migrations, which an agent's certificate does not otherwise see.

A leader term (``leader_term``, the agents' fence against a deposed leader) is the
coordinator's alone, also on a read: an agent remembers the highest term any read carried, so a
reader's GetDomain with a made-up term would otherwise fence off the real leader.

A refusal is PERMISSION_DENIED with reason ``ROLE_<ROLE>_REQUIRED`` naming the least
privileged role that would have been allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ferry.errors import PermissionDenied, Unauthenticated
from ferry.identity import Identity, Role

AGENT_SERVICE = "ferry.v1.Agent"
COORDINATOR_SERVICE = "ferry.v1.Coordinator"
# served beside every service, to any caller whose certificate names a Ferry identity (counted in
# its share of the server's calls like any other call)
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)

# least privileged first: the refusal names the first allowed role in this order
_PRIVILEGE = (Role.READER, Role.SCHEDULER, Role.OPERATOR, Role.COORDINATOR, Role.AGENT)


def _operator_features(request: Any) -> list[str]:
    """What in a submit only an operator may ask for (a scheduler's submits are plain)."""
    found = []
    mapping = getattr(request, "mapping", None)
    if mapping is not None and (mapping.bridges or mapping.networks or mapping.path_prefixes):
        found.append("mapping overrides")
    options = getattr(request, "options", None)
    if options is not None and options.unsafe:
        found.append("unsafe options")
    if options is not None and (options.keep_source_definition or options.transient_target):
        found.append("definition overrides")  # a kept source definition is a second, startable copy
    return found


def _leader_term(request: Any) -> list[str]:
    """A leader term on an agent read: only the coordinator speaks for a leader (the agent
    remembers the highest term a read carries and refuses older leaders' changes after it)."""
    return ["a leader term"] if getattr(request, "leader_term", 0) else []


def _not_dry_run(request: Any) -> bool:
    return not getattr(request, "dry_run", False)


@dataclass(frozen=True)
class Rule:
    """Who may call one method, and what the audit log records of it."""

    roles: frozenset[Role]
    mutating: bool = False
    # features of a request only these roles may use (e.g. a scheduler's submit has no overrides)
    elevated: Callable[[Any], list[str]] | None = None
    elevated_roles: frozenset[Role] = field(default_factory=frozenset)
    # a mutating method whose call is audited only when this says so (a dry run changes nothing)
    audited: Callable[[Any], bool] | None = None


_READERS = frozenset({Role.READER, Role.SCHEDULER, Role.OPERATOR})
OPEN_RULE = Rule(frozenset(Role))  # health checking and reflection (``is_open``)
_SUBMITTERS = frozenset({Role.SCHEDULER, Role.OPERATOR})
_AGENT_READERS = frozenset({Role.COORDINATOR, Role.OPERATOR, Role.READER})
_COORDINATOR = frozenset({Role.COORDINATOR})
_OPERATOR = frozenset({Role.OPERATOR})


def _c(method: str) -> str:
    return f"/{COORDINATOR_SERVICE}/{method}"


def _a(method: str) -> str:
    return f"/{AGENT_SERVICE}/{method}"


RULES: dict[str, Rule] = {
    # the coordinator API
    _c("SubmitMigration"): Rule(_SUBMITTERS, mutating=True, elevated=_operator_features, elevated_roles=_OPERATOR),
    _c("CancelMigration"): Rule(_SUBMITTERS, mutating=True),
    _c("GetMigration"): Rule(_READERS),
    _c("ListMigrations"): Rule(_READERS),
    _c("WatchMigration"): Rule(_READERS),
    _c("ListHosts"): Rule(_READERS),
    _c("ListVMs"): Rule(_READERS),
    _c("Preflight"): Rule(_READERS),
    _c("RankTargets"): Rule(_READERS),  # the ranking a scheduler asks before it submits
    _c("ListPolicies"): Rule(_READERS),
    # changing a running migration (tune, post-copy, force-complete): an operator's (issue 7: "tune")
    _c("ControlMigration"): Rule(_OPERATOR, mutating=True),
    _c("WatchFleet"): Rule(_READERS),
    # host state and drains: an operator's (issue 7: "operator: ... drain")
    _c("CordonHost"): Rule(_OPERATOR, mutating=True),
    _c("UncordonHost"): Rule(_OPERATOR, mutating=True),
    _c("ForgetHost"): Rule(_OPERATOR, mutating=True),
    _c("SubmitDrain"): Rule(_OPERATOR, mutating=True, audited=_not_dry_run),
    _c("PauseDrain"): Rule(_OPERATOR, mutating=True),
    _c("ResumeDrain"): Rule(_OPERATOR, mutating=True),
    _c("CancelDrain"): Rule(_OPERATOR, mutating=True),
    _c("GetDrain"): Rule(_READERS),
    _c("ListDrains"): Rule(_READERS),
    _c("WatchDrain"): Rule(_READERS),
    # the agent API
    _a("GetInventory"): Rule(_AGENT_READERS),
    _a("GetDomain"): Rule(_AGENT_READERS, elevated=_leader_term, elevated_roles=_COORDINATOR),
    _a("ListPrepares"): Rule(_AGENT_READERS, elevated=_leader_term, elevated_roles=_COORDINATOR),
    _a("GetJob"): Rule(_AGENT_READERS, elevated=_leader_term, elevated_roles=_COORDINATOR),
    _a("PrepareIncoming"): Rule(_COORDINATOR, mutating=True, audited=_not_dry_run),
    _a("CleanupIncoming"): Rule(_COORDINATOR, mutating=True),
    _a("CommitIncoming"): Rule(_COORDINATOR, mutating=True),
    _a("Migrate"): Rule(_COORDINATOR, mutating=True),
    _a("AbortMigration"): Rule(_COORDINATOR, mutating=True),
    _a("TuneMigration"): Rule(_COORDINATOR, mutating=True),
    _a("ProbeTarget"): Rule(_COORDINATOR),
    _a("MeasureGuest"): Rule(_COORDINATOR),  # seconds of libvirt's dirty-rate measurement on a guest
    _a("RemoveSourceDisks"): Rule(_COORDINATOR, mutating=True),
    _a("MarkSharedStorage"): Rule(_COORDINATOR, mutating=True),  # empty probe files on shared storage
    _a("UnmarkSharedStorage"): Rule(_COORDINATOR, mutating=True),
}


# GET /metrics: the readers (a scraper is a reader; ferry-certs issue --role reader --name prometheus)
METRICS = _READERS
METRICS_WHAT = "GET /metrics"


def is_open(method: str) -> bool:
    """Health checking and reflection: any Ferry identity.

    >>> is_open("/grpc.health.v1.Health/Check"), is_open("/ferry.v1.Agent/Migrate")
    (True, False)
    """
    return method.lstrip("/").split("/", 1)[0] in OPEN_SERVICES


def short(method: str) -> str:
    """The method's name without its service.

    >>> short("/ferry.v1.Agent/Migrate")
    'Migrate'
    """
    return method.rsplit("/", 1)[-1]


def _needed(roles: frozenset[Role]) -> Role:
    return next(r for r in _PRIVILEGE if r in roles)


def check(identity: Identity | None, method: str, request: Any) -> Rule:
    """The rule that lets ``identity`` call ``method`` with ``request``; raises when none does.

    Unauthenticated: no identity in the certificate. PermissionDenied (``ROLE_<ROLE>_REQUIRED``):
    the identity's role may not call this, or not with this request.

    >>> from ferry.identity import parse_identity_uri as who
    >>> check(who("ferry://reader/r"), "/ferry.v1.Coordinator/ListHosts", None).mutating
    False
    >>> try:
    ...     check(who("ferry://reader/r"), "/ferry.v1.Coordinator/SubmitMigration", None)
    ... except PermissionDenied as err:
    ...     print(err.reason, err.message)
    ROLE_SCHEDULER_REQUIRED SubmitMigration needs the scheduler or operator role; ferry://reader/r is a reader
    """
    if identity is None:
        raise Unauthenticated(
            f"{short(method)}: the client certificate names no Ferry identity",
            reason="NO_IDENTITY",
            hint="use a certificate with a URI SAN ferry://ROLE/NAME (ferry-certs issue)",
        )
    rule = OPEN_RULE if is_open(method) else RULES.get(method)
    if rule is None:
        raise PermissionDenied(
            f"{method} has no entry in the role table",
            reason="METHOD_NOT_ALLOWED",
            hint="add the method to ferry.authz.RULES",
        )
    if identity.role not in rule.roles:
        raise _refusal(short(method), identity, rule.roles)
    if rule.elevated is not None and identity.role not in rule.elevated_roles:
        features = rule.elevated(request)
        if features:
            raise _refusal(f"{short(method)} with {' and '.join(features)}", identity, rule.elevated_roles)
    return rule


def check_metrics(identity: Identity | None) -> None:
    """Raise unless ``identity`` may scrape the metrics endpoints (:data:`METRICS`).

    >>> from ferry.identity import parse_identity_uri as who
    >>> check_metrics(who("ferry://reader/prometheus"))
    >>> try:
    ...     check_metrics(who("ferry://agent/host2"))
    ... except PermissionDenied as err:
    ...     print(err.reason, err.message)
    ROLE_READER_REQUIRED GET /metrics needs the reader or scheduler or operator role; ferry://agent/host2 is an agent
    """
    if identity is None:
        raise Unauthenticated(
            f"{METRICS_WHAT}: the client certificate names no Ferry identity",
            reason="NO_IDENTITY",
            hint="scrape with a certificate whose URI SAN is ferry://reader/NAME (ferry-certs issue --role reader)",
        )
    if identity.role not in METRICS:
        raise _refusal(METRICS_WHAT, identity, METRICS)


def _refusal(what: str, identity: Identity, roles: frozenset[Role]) -> PermissionDenied:
    needed = _needed(roles)
    allowed = " or ".join(r.value for r in _PRIVILEGE if r in roles)
    return PermissionDenied(
        f"{what} needs the {allowed} role; {identity.uri} is a{'n' if identity.role.value[0] in 'aeiou' else ''} "
        f"{identity.role.value}",
        reason=f"ROLE_{needed.value.upper()}_REQUIRED",
        hint=f"call with a certificate of the {needed.value} role (ferry://{needed.value}/NAME)",
    )


def audit_fields(request: Any, response: Any = None) -> tuple[str, str]:
    """(VM, migration id) of a call, as far as its request and response say."""
    vm = ""
    for name in ("vm", "domain", "domain_uuid", "name"):
        value = getattr(request, name, "")
        if isinstance(value, str) and value:
            vm = value
            break
    migration = ""
    for source, name in ((request, "migration_id"), (request, "id"), (response, "id")):
        value = getattr(source, name, "") if source is not None else ""
        if isinstance(value, str) and value:
            migration = value
            break
    if not vm and response is not None:
        value = getattr(response, "vm", "")
        vm = value if isinstance(value, str) else ""
    return vm, migration
