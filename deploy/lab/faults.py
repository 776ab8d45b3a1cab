"""Whole-host faults, for drills by hand and for the fault campaign (``bench/chaos.py``):

* a **partition**: the host's link taken down in the core namespace (the core-side end of its
  ``eth0`` on br0), so it reaches neither etcd, the coordinators nor the other hosts, while
  everything on it keeps running; ``heal`` brings the link up again;
* a **host death**: its link down and every process inside its namespaces killed at once with
  SIGKILL (libvirtd, every QEMU, the agent, whatever else runs there) -- a power cut. The
  holder survives: it is the "hardware" (the namespaces, the host-local /var and image
  filesystem). ``revive`` is the power coming back: link up, libvirtd and the agent started
  again with their recorded command lines; the guests it ran stay shut off, as after a crash;
* a **full image filesystem**: a filler file takes what is left of the host's image
  directory (a host given a small one with ``ferry-lab up --image-fs host2=512M``);
  ``unfill`` removes it.

The command lines and the arithmetic are pure functions (tested from tables); the rest runs
them inside the lab's namespaces, through the recorded holder PIDs.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ferry.errors import FailedPrecondition, NotFound
from ferry.lab import hosts, procs
from ferry.lab.procs import SYSTEM_CLOCK, Clock
from ferry.lab.state import CORE, LabState
from ferry.lab.topology import IMAGE_DIR, veth_name

FILLER = f"{IMAGE_DIR}/.ferry-lab-filler"  # the file that fills a host's image filesystem
KILL_WAIT_S = 10.0
QUIET_S = 1.0  # a host death sweeps its namespaces until nothing was found for this long
_FLAGS_RE = re.compile(r"<([^>]*)>")


# ---------------------------------------------------------------- pure


def link_argv(host: str, up: bool) -> list[str]:
    """``ip`` command (run in the core namespace) that takes a host's link down or up.

    >>> link_argv("host2", up=False)
    ['ip', 'link', 'set', 'vhost2', 'down']
    """
    return ["ip", "link", "set", veth_name(host), "up" if up else "down"]


def link_is_up(ip_link_output: str) -> bool | None:
    """Whether ``ip -o link show DEV`` says the link is administratively up (None: no such
    link in the output).

    >>> link_is_up("4: vhost1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master br0 state UP")
    True
    >>> link_is_up("4: vhost1@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue master br0 state DOWN")
    False
    >>> link_is_up("") is None
    True
    """
    found = _FLAGS_RE.search(ip_link_output)
    if found is None:
        return None
    return "UP" in found.group(1).split(",")


def host_death_victims(inside: Mapping[int, str], holder_pid: int) -> dict[int, str]:
    """Of the processes inside a host's namespaces, the ones a host death kills: all but the
    holder (which keeps the namespaces, i.e. the machine's disks and network card).

    >>> host_death_victims({10: "sleep infinity", 11: "libvirtd", 12: "qemu-system-x86_64"}, 10)
    {11: 'libvirtd', 12: 'qemu-system-x86_64'}
    """
    return {pid: cmd for pid, cmd in inside.items() if pid != holder_pid}


def parse_statfs_free(output: str) -> int:
    """Bytes available to an unprivileged writer, from ``stat -f -c '%a %S' DIR`` (free blocks,
    block size).

    >>> parse_statfs_free("1024 4096\\n")
    4194304
    """
    blocks, size = output.split()
    return int(blocks) * int(size)


FILL_MARGIN = 8 << 20  # tmpfs refuses an fallocate of all that statfs says is free
FILL_BLOCK = 64 << 10  # the rest is written with dd in blocks of this size


def fill_bytes(free: int, leave: int = 0) -> int:
    """How much the filler takes so that ``leave`` bytes stay free (never negative).

    >>> fill_bytes(100 << 20, leave=1 << 20)
    103809024
    >>> fill_bytes(1 << 20, leave=2 << 20)
    0
    """
    return max(0, free - leave)


def fill_steps(free: int, leave: int = 0) -> tuple[int, int]:
    """(bytes to fallocate at once, blocks of FILL_BLOCK to write after it): a quick
    fallocate of all but FILL_MARGIN, then zeros written with dd (tmpfs keeps a page for
    each) for the rest; with nothing to leave free, one block more, so dd stops at ENOSPC.

    >>> fill_steps(100 << 20)
    (96468992, 129)
    >>> fill_steps(4 << 20, leave=1 << 20)
    (0, 48)
    >>> fill_steps(0)
    (0, 0)
    """
    wanted = fill_bytes(free, leave)
    bulk = max(0, wanted - FILL_MARGIN)
    blocks = -(-(wanted - bulk) // FILL_BLOCK)
    return bulk, blocks + (1 if not leave and wanted else 0)


# ---------------------------------------------------------------- side effects


@dataclass(frozen=True)
class HostDeath:
    host: str
    killed: tuple[str, ...]  # "PID command line" of each process killed
    lost: tuple[str, ...] = ()  # what the host's /run/libvirt held (gone with the power, as on a reboot)

    def describe(self) -> str:
        lost = f"; libvirt's runtime state lost ({len(self.lost)} entries)" if self.lost else ""
        return f"{self.host}: link down, {len(self.killed)} processes killed: " + "; ".join(self.killed) + lost


def _holder_pid(state: LabState, place: str) -> int:
    holder = state.holder(place)
    if holder is None or not procs.is_alive(holder):
        raise NotFound(
            f"no running {place!r} in the lab in {state.lab_dir}",
            reason="LAB_NO_HOST",
            hint="see ferry-lab status for the lab's hosts",
        )
    return holder.pid


def _require_host(state: LabState, host: str) -> None:
    if state.host(host) is None:
        known = ", ".join(h.name for h in state.hosts)
        raise NotFound(f"no host {host!r} in this lab", reason="LAB_NO_HOST", hint=f"name one of: {known}")


def set_link(state: LabState, host: str, up: bool) -> None:
    """Take the host's link down (a partition) or bring it up again (healed)."""
    _require_host(state, host)
    core = _holder_pid(state, CORE)
    procs.run(hosts.nsenter(core, link_argv(host, up), mount=False, uts=False), reason="LAB_LINK_FAILED")


def link_up(state: LabState, host: str) -> bool | None:
    """Whether the host's link is up (None: the core namespace has no such link)."""
    _require_host(state, host)
    core = _holder_pid(state, CORE)
    shown = procs.run(
        hosts.nsenter(core, ["ip", "-o", "link", "show", veth_name(host)], mount=False, uts=False), check=False
    )
    return link_is_up(shown.stdout) if shown.returncode == 0 else None


def kill_host(state: LabState, host: str, *, clock: Clock = SYSTEM_CLOCK) -> HostDeath:
    """A power cut: link down, then SIGKILL to every process inside the host's namespaces
    but its holder, at once; returns once they are gone. Then what lived in memory goes too:
    the host's /run/libvirt (a tmpfs on a real machine) is emptied, so the libvirtd started
    at power-back begins, like after a reboot, with no runtime record of any guest
    (``forget_runtime``). Disks (images, definitions, the agent's prepare records) stay."""
    _require_host(state, host)
    record = state.host(host)
    assert record is not None
    holder = _holder_pid(state, host)
    set_link(state, host, up=False)
    namespaces = {v for k, v in record.namespaces.items() if k in ("net", "mnt")}
    killed: dict[int, str] = {}
    quiet_since: list[float] = []

    def all_gone() -> bool:
        # A process being forked when its parent is killed (libvirtd starting a QEMU) shows up
        # after the first sweep: sweep until nothing is left for QUIET_S.
        victims = host_death_victims(procs.pids_in_namespaces(namespaces), holder)
        for pid, cmd in victims.items():
            procs.kill_pid(pid)
            killed.setdefault(pid, cmd)
        if victims:
            quiet_since.clear()
            return False
        quiet_since.append(clock.now())
        return clock.now() - quiet_since[0] >= QUIET_S

    procs.wait_until(all_gone, KILL_WAIT_S, clock=clock, interval=0.05)
    lost = forget_runtime(Path(state.lab_dir) / "hosts" / host / "run")
    return HostDeath(host, tuple(f"{pid} {cmd}" for pid, cmd in sorted(killed.items())), tuple(lost))


def forget_runtime(run_dir: Path) -> list[str]:
    """Empty a dead host's /run/libvirt (the lab dir's hosts/NAME/run): what a power cut takes
    with the RAM. Without it, the restarted libvirtd reloads the runtime record of every guest
    it ran; one it was starting when it was killed (before its QEMU ran) can come back as an
    active, paused domain that no QEMU backs and no API call can take (libvirt 9.0 refuses each
    with "cannot acquire state change lock"), which no real host shows after a reboot.
    Returns the entries removed (names relative to ``run_dir``).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> (d / "qemu").mkdir(); (d / "qemu" / "g.xml").write_text("<domstatus/>") and None
    >>> forget_runtime(d), list(d.iterdir())
    (['qemu', 'qemu/g.xml'], [])
    >>> d.rmdir()
    """
    if not run_dir.is_dir():
        return []
    lost = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return lost


def kill_guest(state: LabState, host: str, name: str) -> bool:
    """SIGKILL the QEMU of guest ``name`` on ``host`` (the pid libvirtd recorded in
    run/qemu/NAME.pid, if that process still runs inside the host's mount namespace): the
    hard way out when libvirtd cannot destroy it (e.g. a restarted libvirtd that keeps an
    incoming migration's job forever). True when there was such a process.

    "Inside the host" is its network namespace: the Debian 13 QEMU the lab runs its guests on
    (``deploy/fetch-qemu.sh``'s wrapper) starts in a mount namespace of its own (``unshare
    --mount``, to swap in its modules), a child of the host's."""
    _require_host(state, host)
    record = state.host(host)
    assert record is not None
    pidfile = Path(state.lab_dir) / "hosts" / host / "run" / "qemu" / f"{name}.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    if not record.namespaces.get("net") or procs.namespace_ids(pid).get("net") != record.namespaces["net"]:
        return False
    procs.kill_pid(pid)
    return True


def forget_guest_runtime(state: LabState, host: str, name: str) -> list[str]:
    """Remove the runtime record libvirtd keeps of guest ``name`` on ``host`` (run/qemu/NAME.xml
    and .pid; its definition stays). Only while that host's libvirtd is stopped and the guest's
    QEMU gone: a libvirtd restarted after a crash mid incoming migration may reload such a
    record and keep the guest "paused" under a migration job nobody owns, refusing every call on
    it. Returns the files removed."""
    _require_host(state, host)
    runtime = Path(state.lab_dir) / "hosts" / host / "run" / "qemu"
    removed = []
    for path in (runtime / f"{name}.xml", runtime / f"{name}.pid"):
        if path.exists():
            path.unlink()
            removed.append(str(path))
    return removed


def image_dir_free(state: LabState, host: str) -> int:
    """Bytes free in the host's image directory (as its agent sees it)."""
    _require_host(state, host)
    out = procs.run(hosts.nsenter(_holder_pid(state, host), ["stat", "-f", "-c", "%a %S", IMAGE_DIR]))
    return parse_statfs_free(out.stdout)


def fill_images(state: LabState, host: str, leave: int = 0) -> int:
    """Fill the host's image filesystem up to ``leave`` free bytes with a filler file (it is
    refused on a host without an image filesystem of its own: it would fill the machine's
    disk). Returns the bytes the filler holds now."""
    _require_host(state, host)
    record = state.host(host)
    assert record is not None
    if not record.image_fs_bytes:
        raise FailedPrecondition(
            f"{host} has no image filesystem of its own: filling it would fill this machine's disk",
            reason="LAB_NO_IMAGE_FS",
            hint=f"start the lab with ferry-lab up --image-fs {host}=512M",
        )
    holder = _holder_pid(state, host)
    bulk, blocks = fill_steps(image_dir_free(state, host), leave)
    if bulk:
        filler = filler_bytes(state, host)
        procs.run(hosts.nsenter(holder, ["fallocate", "-l", str(filler + bulk), FILLER]), reason="LAB_FILL_FAILED")
    if blocks:
        dd = ["dd", "if=/dev/zero", f"of={FILLER}", f"bs={FILL_BLOCK}", f"count={blocks}"]
        # exits 1 at ENOSPC, which is the point when nothing is to be left free
        procs.run(hosts.nsenter(holder, [*dd, "oflag=append", "conv=notrunc"]), check=False)
    return filler_bytes(state, host)


def filler_bytes(state: LabState, host: str) -> int:
    """The size of the filler file on the host (0: none)."""
    out = procs.run(hosts.nsenter(_holder_pid(state, host), ["stat", "-c", "%s", FILLER]), check=False)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else 0


def unfill_images(state: LabState, host: str) -> bool:
    """Remove the filler; True when there was one."""
    had = filler_bytes(state, host) > 0
    procs.run(hosts.nsenter(_holder_pid(state, host), ["rm", "-f", FILLER]))
    return had


__all__ = [
    "FILLER",
    "HostDeath",
    "fill_bytes",
    "fill_images",
    "host_death_victims",
    "kill_guest",
    "kill_host",
    "link_argv",
    "link_is_up",
    "link_up",
    "set_link",
    "unfill_images",
]
