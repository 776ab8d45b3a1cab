"""Whether this host's libvirtd answers, watched by the agent and announced to the coordinators.

The agent's process may outlive its libvirtd (a crash, a restart, an upgrade): the agent's lease
then holds, so a coordinator would not learn from the registry that the host cannot migrate
anything, nor that it can again. :class:`LibvirtWatch` pings libvirtd (``Hypervisor.ping``: a
round trip on the agent's connection, reopened when it died) every ``interval_s`` and calls
``on_change(up)`` when the answer changes; the agent's registration carries that state
(``HostRegistration.libvirt_up``), so the coordinators' fleet view marks the host unavailable
while libvirtd is down and available again within about ``interval_s`` of its return, and the
leader acts on the migrations involving it at once (see ``coordinator/engine.py``).

Why the registration and not a health stream per agent: the coordinators already follow the
registrations (one watch on etcd for the whole fleet, resumed across leader changes), a new
leader reads the current state with the list it makes anyway, and an agent that dies with its
libvirtd is covered by its lease running out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ferry.errors import FerryError
from ferry.ports import Hypervisor

log = logging.getLogger(__name__)


class LibvirtWatch:
    """Pings libvirtd every ``interval_s``; ``on_change(up)`` on every change (and once at start)."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        on_change: Callable[[bool], None],
        *,
        interval_s: float = 1.0,
        name: str = "",
    ) -> None:
        self._hv = hypervisor
        self._on_change = on_change
        self.interval_s = interval_s
        self.name = name
        self.up: bool | None = None  # None: not asked yet

    async def check(self) -> bool:
        """Ask once; report a change. Returns whether libvirtd answered."""
        try:
            async with asyncio.timeout(max(self.interval_s * 3, 2.0)):
                await self._hv.ping()
            up, why = True, ""
        except (FerryError, TimeoutError) as exc:
            up, why = False, getattr(exc, "reason", "no answer in time")
        if up != self.up:
            if up:
                log.info("libvirtd%s answers%s", f" on {self.name}" if self.name else "", " again" if self.up else "")
            else:
                log.warning("libvirtd%s does not answer (%s)", f" on {self.name}" if self.name else "", why)
            self.up = up
            self._on_change(up)
        return up

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self.interval_s)
