"""Shared-storage probes: proof that the target sees the very file a guest's disk is on the source.

A disk left in place (shared storage) is checked on the target by path: a file must be there, on
storage the target takes for shared. A target whose shared storage is not mounted, with a local
file at that path (a stand-in the operator pre-created, a stale copy, an image a provisioning
script made), passes that check -- and the guest would continue on the wrong disk. So before the
target's checks, the source writes an empty probe file, ``DIR/.ferry-probe-TOKEN``, in each such
disk's directory (MarkSharedStorage, TOKEN random per preflight); the target must see it at the
mapped path (``PrepareIncomingRequest.shared_probes``), else SHARED_STORAGE_MISMATCH. The caller
removes the probes afterwards (UnmarkSharedStorage); this agent removes only probes it wrote, and
those the caller forgets after ``ttl_s``. A probe left by an agent that stopped meanwhile is an
empty hidden file, ``.ferry-probe-*``: safe to delete.

Probes are confined like images (``HostSystem.write_probe``): a disk's directory outside the image
directories gets no probe, and the caller learns why.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable

from ferry.errors import FerryError, InvalidArgument, clip
from ferry.model import Problem
from ferry.ports import HostSystem

log = logging.getLogger(__name__)

PROBE_PREFIX = ".ferry-probe-"
_TOKEN = re.compile(r"[0-9a-f]{16,64}")


def probe_path(directory: str, token: str) -> str:
    """The probe of ``token`` in ``directory``.

    >>> probe_path("/srv/nfs/vms", "00112233445566778899aabbccddeeff")
    '/srv/nfs/vms/.ferry-probe-00112233445566778899aabbccddeeff'
    """
    return f"{directory.rstrip('/')}/{PROBE_PREFIX}{token}"


def check_token(token: str) -> str:
    """The token, if it is 16-64 lowercase hex digits; else InvalidArgument."""
    if not _TOKEN.fullmatch(token):
        raise InvalidArgument(
            "token must be 16-64 lowercase hex digits", reason="TOKEN_INVALID", hint="pass a random hex token"
        )
    return token


class SharedProbes:
    """The probes this agent wrote and has not removed yet (in memory)."""

    def __init__(self, host: HostSystem, *, ttl_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._host = host
        self._ttl_s = ttl_s
        self._clock = clock
        self._placed: dict[str, float] = {}  # probe path -> when written

    def place(self, disk_paths: Iterable[str], token: str) -> tuple[list[str], list[Problem]]:
        """A probe in the directory of each disk: (written, one problem per directory without)."""
        check_token(token)
        self._expire()
        written: list[str] = []
        problems: list[Problem] = []
        for directory in dict.fromkeys(os.path.dirname(p) for p in disk_paths if p):
            probe = probe_path(directory, token)
            try:
                self._host.write_probe(probe)
            except FerryError as err:
                problems.append(
                    Problem(
                        err.reason,
                        f"no probe written in {clip(directory)}: {clip(err.message)}",
                        err.hint,
                        kind=type(err),
                    )
                )
                continue
            self._placed[probe] = self._clock()
            written.append(probe)
        return written, problems

    def remove(self, probes: Iterable[str]) -> list[str]:
        """Remove the probes named that this agent wrote (others are ignored); the removed ones."""
        removed = []
        for probe in probes:
            if probe in self._placed and self._drop(probe):
                removed.append(probe)
        self._expire()
        return removed

    @property
    def placed(self) -> list[str]:
        return sorted(self._placed)

    def _expire(self) -> None:
        now = self._clock()
        for probe, at in list(self._placed.items()):
            if now - at >= self._ttl_s:
                log.info("removing shared-storage probe %s: its caller did not within %.0f s", probe, self._ttl_s)
                self._drop(probe)

    def _drop(self, probe: str) -> bool:
        self._placed.pop(probe, None)
        try:
            return self._host.remove(probe)
        except FerryError as err:
            log.warning("could not remove shared-storage probe %s: %s", probe, err)
            return False
