"""What an agent below an API level cannot check (``ferry/compat.py``), as blockers (pure).

An old target ignores the shared-storage probes it is sent and an old source sends no backing
fingerprints: the migration would go ahead unchecked, so preflight and placement both refuse it
(unless ``--unsafe``: the operator vouches, as for any check that cannot be made).
"""

from __future__ import annotations

from collections.abc import Sequence

from ferry.compat import BACKING_FINGERPRINTS, SHARED_STORAGE_PROBES
from ferry.model import DiskPlan, DomainInfo, HostFacts, MigrationOptions, Problem, StorageMode


def left_in_place(domain: DomainInfo, plans: Sequence[DiskPlan]) -> list[str]:
    """Source paths of the writable disks the plan does not copy (they must be shared)."""
    writable = {d.target for d in domain.disks if not d.readonly and d.device == "disk"}
    return [p.source for p in plans if not p.copy and p.target in writable and p.source]


def _agent_words(host: str, facts: HostFacts) -> str:
    version = f"ferry-agent {facts.agent_version}, " if facts.agent_version else ""
    return f"{host}'s agent ({version}API level {facts.api_level})"


def unverified_storage(source: str, target: str, paths: Sequence[str], why: str, old: Sequence[str]) -> Problem:
    return Problem(
        "SHARED_STORAGE_UNVERIFIED",
        f"{source} cannot check that {target} sees the same storage as it does for {', '.join(paths)}: {why}",
        f"upgrade ferry-agent on {' and '.join(old)} (the check needs API level {SHARED_STORAGE_PROBES} on both "
        "hosts), copy the disks (--copy-storage-all), or pass --unsafe if you know both hosts use the same storage "
        "there",
    )


def below_level(
    source: str, source_facts: HostFacts, target: str, target_facts: HostFacts, level: int
) -> list[tuple[str, HostFacts]]:
    """The hosts of the two whose agents speak an API level below ``level`` (ferry/compat.py)."""
    return [(h, f) for h, f in ((source, source_facts), (target, target_facts)) if f.api_level < level]


def old_agent_blockers(
    source: str,
    source_facts: HostFacts,
    target: str,
    target_facts: HostFacts,
    plans: Sequence[DiskPlan],
    in_place: Sequence[str],
    mode: StorageMode,
    options: MigrationOptions,
) -> list[Problem]:
    """A blocker for each check an agent below its API level would skip without a word (an old
    target ignores the probes it is sent, an old source sends no fingerprints): the disks left in
    place, and the backing files of a --copy-storage-inc. None when the migration is unsafe (the
    operator vouches), as for checks that cannot be made.

    >>> old, new = HostFacts("h1", "u1", agent_version="0.1.0"), HostFacts("h2", "u2", api_level=1)
    >>> [b] = old_agent_blockers("h1", new, "h2", old, (), ["/srv/a.raw"], StorageMode.SHARED, MigrationOptions())
    >>> b.reason
    'SHARED_STORAGE_UNVERIFIED'
    >>> b.message.split(": ", 1)[1]
    "h2's agent (ferry-agent 0.1.0, API level 0) does not look for the probe files that show it"
    >>> old_agent_blockers("h1", new, "h2", old, (), ["/srv/a.raw"], StorageMode.SHARED, MigrationOptions(unsafe=True))
    []
    """
    if options.unsafe:
        return []
    out: list[Problem] = []
    old = below_level(source, source_facts, target, target_facts, SHARED_STORAGE_PROBES)
    if in_place and old:
        doing = {source: "does not write", target: "does not look for"}
        why = "; ".join(f"{_agent_words(h, f)} {doing[h]} the probe files that show it" for h, f in old)
        out.append(unverified_storage(source, target, in_place, why, [h for h, _ in old]))
    bases = sorted({p.backing_file for p in plans if p.copy and p.backing_file})
    old = below_level(source, source_facts, target, target_facts, BACKING_FINGERPRINTS)
    if mode is StorageMode.COPY_INC and bases and old:
        doing = {source: "does not fingerprint", target: "does not compare"}
        why = "; ".join(f"{_agent_words(h, f)} {doing[h]} backing files" for h, f in old)
        out.append(
            Problem(
                "BACKING_UNVERIFIED",
                f"{target}'s backing files {', '.join(bases)} cannot be shown to be the source's: {why}",
                f"upgrade ferry-agent on {' and '.join(h for h, _ in old)} (the check needs API level "
                f"{BACKING_FINGERPRINTS} on both hosts), copy the whole disks (--copy-storage-all), or pass --unsafe "
                "if the backing files are byte-for-byte copies",
            )
        )
    return out
