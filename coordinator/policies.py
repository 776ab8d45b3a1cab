"""Which convergence policy a migration runs under, and what it predicts (pure).

Named policies come from the config (``[policies.NAME]``, ``ferry.convergence.policy_from_doc``);
selector rules (``[[policy_selectors]]``) pick one by the VM's name (a shell pattern) and memory
size, the first match winning. A request may name a policy itself (``--policy NAME``), and the
flags it gives (bandwidth, max downtime, auto-converge, post-copy, timeout) go on top
(``ferry.convergence.with_options``). Without a name and without a matching selector, the flags
alone make the policy (``policy_from_options``): today's behaviour.

``predict_migration`` turns what the source measured (``GuestLoad``) into a ``Prediction`` for
the chosen policy, at the policy's bandwidth or, without a cap, the link's (``[prediction]
link_mibps``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ferry.convergence import (
    ConvergencePolicy,
    PostcopyMode,
    completion_timeout_s,
    flags_given,
    policy_from_options,
    policy_view,
    with_options,
)
from ferry.errors import FailedPrecondition, NotFound
from ferry.model import DiskPlan, GuestLoad, MigrationOptions
from ferry.prediction import Prediction, predict, workload_of

MiB = 1 << 20


@dataclass(frozen=True)
class PolicySelector:
    """A rule choosing ``policy`` for VMs whose name matches ``vm`` (a shell pattern, "" any) and
    whose memory lies within [min_memory_bytes, max_memory_bytes] (0: no bound)."""

    policy: str
    vm: str = ""
    min_memory_bytes: int = 0
    max_memory_bytes: int = 0

    def matches(self, vm: str, memory_bytes: int) -> bool:
        """
        >>> PolicySelector("busy", vm="db-*", min_memory_bytes=4 << 30).matches("db-1", 8 << 30)
        True
        >>> PolicySelector("busy", vm="db-*").matches("web-1", 8 << 30)
        False
        """
        if self.vm and not fnmatch.fnmatchcase(vm, self.vm):
            return False
        if self.min_memory_bytes and memory_bytes < self.min_memory_bytes:
            return False
        return not (self.max_memory_bytes and memory_bytes > self.max_memory_bytes)


@dataclass(frozen=True)
class PredictionConfig:
    """``[prediction]``: how the coordinator predicts before a migration starts."""

    link_mibps: int = 1000  # the migration link's rate, for a policy without a bandwidth cap
    periods_s: tuple[int, ...] = (1, 3)  # dirty-rate calculations on the source (seconds each)
    # measure in SubmitMigration itself (the reply then always has the prediction, a submission
    # takes the periods longer); else the engine measures in the Preflight phase and the reply
    # predicts only from a measurement of the last ``reuse_s`` (a Preflight's)
    on_submit: bool = False
    reuse_s: float = 120.0
    # the engine's Preflight phase measures a guest not measured yet: always, or only when the
    # policy acts on the prediction (post-copy on prediction, refusing what it cannot finish);
    # a measurement costs the migration its periods (4 s by default)
    always: bool = False


def needs_prediction(policy: ConvergencePolicy) -> bool:
    """Whether ``policy`` acts on the prediction (so a migration under it must be measured).

    >>> from ferry.convergence import PostcopyMode
    >>> needs_prediction(ConvergencePolicy(postcopy=PostcopyMode.ON_PREDICTION)), needs_prediction(ConvergencePolicy())
    (True, False)
    """
    return policy.postcopy is PostcopyMode.ON_PREDICTION or policy.refuse_unfinishable


def choose_policy(
    policies: Mapping[str, ConvergencePolicy],
    selectors: Sequence[PolicySelector],
    *,
    requested: str,
    vm: str,
    memory_bytes: int,
    options: MigrationOptions,
) -> ConvergencePolicy:
    """The policy a migration of ``vm`` runs under (see the module docstring). Raises NotFound
    (POLICY_UNKNOWN) for a requested name the config does not have.

    >>> busy = ConvergencePolicy(name="busy", bandwidth_mibps=32)
    >>> rules = [PolicySelector("busy", vm="db-*")]
    >>> choose_policy({"busy": busy}, rules, requested="", vm="db-1", memory_bytes=0, options=MigrationOptions()).name
    'busy'
    >>> choose_policy({"busy": busy}, rules, requested="", vm="web-1", memory_bytes=0, options=MigrationOptions()).name
    ''
    """
    if requested:
        if requested not in policies:
            known = ", ".join(sorted(policies)) or "none configured"
            raise NotFound(
                f"no convergence policy named {requested!r}",
                reason="POLICY_UNKNOWN",
                hint=f"see `ferry policies` ({known}); policies are [policies.NAME] tables in the coordinator config",
            )
        chosen: ConvergencePolicy | None = policies[requested]
    else:
        chosen = next(
            (policies[s.policy] for s in selectors if s.policy in policies and s.matches(vm, memory_bytes)), None
        )
    if chosen is None:
        return policy_from_options(options)
    return with_options(chosen, options) if flags_given(options) else chosen


def copy_bytes(plans: Sequence[DiskPlan]) -> int:
    """The bytes a storage copy sends, for the prediction: the copied disks' whole virtual size
    (libvirt's mirror walks all of it at the bandwidth cap, allocated or not: seen in the lab).

    >>> plans = [DiskPlan("vda", "/a", virtual_size=64 * MiB, allocation=2 * MiB), DiskPlan("vdb", "/b", copy=False)]
    >>> copy_bytes(plans)
    67108864
    """
    return sum(p.virtual_size or p.allocation for p in plans if p.copy)


def predict_migration(
    policy: ConvergencePolicy, load: GuestLoad, *, disk_bytes: int, config: PredictionConfig, budget_mibps: int = 0
) -> Prediction:
    """The prediction for a guest as the source measured it, under ``policy``, at its cap (or the
    link), at most ``budget_mibps`` (its hosts' bandwidth budgets, ``bandwidth.alone``; 0: none).

    >>> load = GuestLoad(256 * MiB, samples=((1.0, 40.0 * MiB), (3.0, 21.0 * MiB)), resident_bytes=160 * MiB)
    >>> from ferry.convergence import PostcopyMode
    >>> busy = ConvergencePolicy(name="busy", bandwidth_mibps=32, postcopy=PostcopyMode.ON_PREDICTION)
    >>> p = predict_migration(busy, load, disk_bytes=0, config=PredictionConfig())
    >>> p.converges, p.need, round(p.seconds)
    (False, 'post-copy', 7)
    """
    memory = load.memory_bytes
    mibps = policy.bandwidth_mibps or config.link_mibps
    bandwidth = (min(mibps, budget_mibps) if budget_mibps > 0 else mibps) * MiB
    timeout = completion_timeout_s(policy, memory, disk_bytes)
    prediction = predict(workload_of(load, disk_bytes), bandwidth, policy_view(policy, timeout))
    if load.error and prediction.converges is None:
        return replace(prediction, words=f"no prediction: {load.error}")
    return prediction


def refusal(policy: ConvergencePolicy, prediction: Prediction) -> FailedPrecondition | None:
    """A policy that refuses what it cannot finish (``refuse_unfinishable``), and a prediction
    saying so: the error to refuse with (None: go ahead)."""
    if not policy.refuse_unfinishable or prediction.finishes is not False:
        return None
    return FailedPrecondition(
        f"refused up front: {prediction.words}",
        reason="WILL_NOT_CONVERGE",
        hint=f"policy {policy.label} refuses what it cannot finish: choose a policy that allows post-copy or "
        "force-complete (--policy), raise the bandwidth, or migrate when the guest is quieter",
    )
