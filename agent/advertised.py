"""Is the libvirt URI this agent advertises its own host's libvirtd?

Peers' libvirtds reach a host by the URI its agent advertises (``advertise_libvirt_uri``). An agent
config copied from another host keeps that host's URI, and a migration "to this host" then lands on
the other one (the record names one host, the guest runs on another). So the agent opens its
advertised URI and compares the host UUID that answers with its local libvirtd's: another machine's
is a problem it reports with its inventory (``HostFacts.libvirt_uri_problem``), and preflight and
placement refuse the host as a target (``TARGET_URI_MISMATCH``). A URI it cannot open from here
proves nothing (peers may reach it where this host cannot): logged, not reported.

The check runs in the background (at most every ``every_s``): an inventory never waits for it, and
a URI that hangs costs no inventory its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ferry.errors import FerryError
from ferry.ports import Hypervisor

log = logging.getLogger(__name__)

EVERY_S = 300.0


def mismatch(uri: str, theirs: str, own: str) -> str:
    """The problem text ("" when the UUIDs match, or one is unknown).

    >>> mismatch("qemu+tls://h2/system", "AB", "ab")
    ''
    >>> print(mismatch("qemu+tls://h2/system", "ab", "cd"))
    the advertised libvirt URI qemu+tls://h2/system reaches another machine's libvirtd (host UUID ab; this host's is cd)
    """
    if not theirs or not own or theirs.lower() == own.lower():
        return ""
    return (
        f"the advertised libvirt URI {uri} reaches another machine's libvirtd "
        f"(host UUID {theirs}; this host's is {own})"
    )


class AdvertisedUri:
    """The last finding about the advertised URI, checked again in the background."""

    def __init__(
        self, hypervisor: Hypervisor, uri: str, *, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._hv = hypervisor
        self._uri = uri
        self._every_s = every_s
        self._clock = clock
        self._problem = ""
        self._checked_at: float | None = None
        self._task: asyncio.Task[str] | None = None
        self._unopened = ""  # the last reason it could not be opened (logged once per reason)

    def problem(self, own_uuid: str) -> str:
        """What is known now ("" = nothing wrong, or not known yet); starts a check when the last
        one is older than ``every_s``."""
        now = self._clock()
        stale = self._checked_at is None or now - self._checked_at >= self._every_s
        if stale and (self._task is None or self._task.done()) and own_uuid:
            self._checked_at = now
            self._task = asyncio.get_running_loop().create_task(self.check(own_uuid), name="advertised URI check")
        return self._problem

    async def check(self, own_uuid: str) -> str:
        """Open the advertised URI now; the finding (also kept for ``problem``)."""
        try:
            theirs = await self._hv.remote_host_uuid(self._uri)
        except FerryError as exc:
            if exc.reason != self._unopened:
                self._unopened = exc.reason
                log.warning(
                    "cannot open the advertised libvirt URI %s from this host (%s: %s); peers may still reach it",
                    self._uri,
                    exc.reason,
                    exc,
                )
            return self._problem
        self._unopened = ""
        problem = mismatch(self._uri, theirs, own_uuid)
        if problem and problem != self._problem:
            log.error("%s: no migration can come here; set advertise_libvirt_uri to this host's own", problem)
        elif self._problem and not problem:
            log.info("the advertised libvirt URI %s reaches this host's libvirtd again", self._uri)
        self._problem = problem
        return problem
