"""Namespaces and libvirtd: the core network namespace and the lab hosts (side effects).

A namespace lives as long as its holder process (``unshare ... sleep infinity``); everything
else enters it with ``nsenter -t HOLDER``. Nothing is added to the root network namespace:
veth pairs are created directly inside the core and host namespaces.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ferry.errors import DeadlineExceeded, FailedPrecondition, Unavailable
from ferry.lab import procs
from ferry.lab.procs import SYSTEM_CLOCK, Clock, ProcessRecord
from ferry.lab.state import CORE, Component, HostRecord
from ferry.lab.topology import (
    CORE_ADDRESS,
    CORE_BRIDGE,
    CORE_HOSTNAME,
    PREFIX_LEN,
    HostPlan,
    LabPaths,
    image_fs_mount,
    render_libvirtd_conf,
    render_qemu_conf,
)

LIBVIRTD = "/usr/sbin/libvirtd"
LIBVIRTD_READY_TIMEOUT_S = 120.0  # QEMU capability probing: ~8 s alone, longer on a busy box
VIRSH_TIMEOUT_S = 30.0
# Directories libvirtd (and the agent) expect in the host-local /var.
HOST_VAR_DIRS = ("lib/libvirt/images", "lib/libvirt/qemu", "cache/libvirt", "log/libvirt", "lib/ferry-agent")
# libvirtd's cache of QEMU capabilities inside a host's /var. libvirtd checks each cached file
# against the QEMU and libvirtd binaries, kernel and host CPU, and probes again when they
# differ, so seeding it from an earlier lab on this machine is safe and saves ~8 s per start.
QEMU_CAPS_DIR = "var.upper/cache/libvirt/qemu/capabilities"

Record = Callable[[Component], None]


def nsenter(
    holder_pid: int, argv: Sequence[str], *, mount: bool = True, uts: bool = True, net: bool = True
) -> list[str]:
    """``argv`` to run inside the namespaces held by ``holder_pid``."""
    flags = [f for f, on in (("-m", mount), ("-u", uts), ("-n", net)) if on]
    return ["nsenter", "-t", str(holder_pid), *flags, "--", *argv]


def virsh_argv(libvirt_uri: str, args: Sequence[str]) -> list[str]:
    return ["virsh", "-q", "-c", libvirt_uri, *args]


# ---------------------------------------------------------------- holders


def start_holder(
    name: str, unshare_flags: Sequence[str], log: Path, place: str, record: Record, *, clock: Clock = SYSTEM_CLOCK
) -> ProcessRecord:
    """Start ``unshare FLAGS sleep infinity`` and wait until it has exec'd sleep: only then are
    its namespaces (and, for a mount namespace, private propagation) in place."""
    process = procs.spawn(["unshare", *unshare_flags, "sleep", "infinity"], log=log)
    record(Component(name=name, kind="holder", place=place, process=process))
    sleep_exe = str(Path(shutil.which("sleep") or "/bin/sleep").resolve())
    if not procs.wait_until(
        lambda: procs.exe_of(process.pid) == sleep_exe or not procs.is_alive(process), 10.0, clock=clock, interval=0.01
    ):
        raise DeadlineExceeded(
            f"namespace holder for {name} did not start within 10 s", reason="LAB_HOLDER_TIMEOUT", hint=f"see {log}"
        )
    if not procs.is_alive(process):
        raise FailedPrecondition(
            f"namespace holder for {name} exited at once: {procs.log_tail(log)}",
            reason="LAB_HOLDER_FAILED",
            hint="run as root on a kernel that allows network, mount and UTS namespaces",
        )
    return process


def start_core(paths: LabPaths, record: Record, *, clock: Clock = SYSTEM_CLOCK) -> ProcessRecord:
    """The core network namespace: bridge br0 with the lab network's gateway address. etcd and
    coordinators join it later (they run inside this namespace, on 10.77.0.1)."""
    paths.core.mkdir(parents=True, exist_ok=True)
    holder = start_holder(CORE, ["--net", "--uts"], paths.core / "holder.log", CORE, record, clock=clock)
    procs.run(nsenter(holder.pid, ["hostname", CORE_HOSTNAME], mount=False, net=False))
    procs.run(
        nsenter(holder.pid, ["ip", "-batch", "-"], mount=False, uts=False),
        input_text="\n".join(
            [
                "link set lo up",
                f"link add {CORE_BRIDGE} type bridge",
                f"addr add {CORE_ADDRESS}/{PREFIX_LEN} dev {CORE_BRIDGE}",
                f"link set {CORE_BRIDGE} up",
            ]
        )
        + "\n",
    )
    return holder


# ---------------------------------------------------------------- one host


def host_mount_commands(paths: LabPaths, name: str, image_fs_bytes: int = 0) -> list[list[str]]:
    """The mounts that make a mount namespace a lab host, in order (run inside its mount and
    network namespaces: sysfs then shows the host's own network devices).

    Private /etc/libvirt, passwd, group, hosts; a fresh /sys; /var as an overlay (so
    /var/lib/libvirt/images is host-local storage), with an image filesystem of its own on top
    when ``image_fs_bytes`` is given; a tmpfs /run whose /run/libvirt is the lab dir's
    hosts/NAME/run, so the libvirtd socket is reachable from the root namespace.
    """
    h = paths.host(name)
    image_fs = [image_fs_mount(image_fs_bytes)] if image_fs_bytes else []
    return [
        ["mount", "--bind", str(h / "passwd"), "/etc/passwd"],
        ["mount", "--bind", str(h / "group"), "/etc/group"],
        ["mount", "--bind", str(h / "hosts"), "/etc/hosts"],
        ["mount", "--bind", str(h / "etc"), "/etc/libvirt"],
        ["mount", "-t", "sysfs", "sysfs", "/sys"],
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir=/var,upperdir={h / 'var.upper'},workdir={h / 'var.work'}",
            "/var",
        ],
        *image_fs,
        ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"],
        ["mkdir", "-p", "/run/libvirt", "/run/lock"],
        ["mount", "--bind", str(h / "run"), "/run/libvirt"],
    ]


# Files of the machine's /etc that a host covers with its own copy (bind mounts, see above).
BOUND_ETC_FILES = ("passwd", "group", "hosts")


def lost_etc_binds(mountinfo: str) -> list[str]:
    """Which of the host's own /etc files are no longer mounted, from its /proc/PID/mountinfo.

    A bind mount on a file goes away when that file is replaced on the machine (``useradd``,
    ``apt`` write a new /etc/passwd and rename it over the old one: the kernel detaches mounts
    whose mount point was deleted). The host then sees the machine's /etc/passwd, without the
    ``libvirt-qemu`` user, and a libvirtd started after that refuses to start.

    >>> lost_etc_binds("89 46 254:0 /l/hosts/host1/hosts /etc/hosts rw - ext4 /dev/vda rw\\n")
    ['passwd', 'group']
    """
    mounted = {fields[4] for fields in (line.split() for line in mountinfo.splitlines()) if len(fields) > 4}
    return [name for name in BOUND_ETC_FILES if f"/etc/{name}" not in mounted]


def restore_etc_binds(paths: LabPaths, name: str, holder_pid: int) -> list[str]:
    """Bind the host's own /etc files again where they were lost (see lost_etc_binds); the
    names of those restored. Run before (re)starting the host's libvirtd."""
    try:
        lost = lost_etc_binds(Path(f"/proc/{holder_pid}/mountinfo").read_text())
    except OSError:
        return []
    for file_name in lost:
        argv = ["mount", "--bind", str(paths.host(name) / file_name), f"/etc/{file_name}"]
        procs.run(nsenter(holder_pid, argv, uts=False), reason="LAB_MOUNT_FAILED")
    return lost


def write_host_files(
    paths: LabPaths, plan: HostPlan, passwd: str, group: str, etc_hosts: str, caps_cache: Path | None = None
) -> None:
    h = paths.host(plan.name)
    for sub in ("etc", "run", "var.upper", "var.work"):
        (h / sub).mkdir(parents=True, exist_ok=True)
    for sub in (*HOST_VAR_DIRS, QEMU_CAPS_DIR.removeprefix("var.upper/")):
        (h / "var.upper" / sub).mkdir(parents=True, exist_ok=True)
    (h / "passwd").write_text(passwd)
    (h / "group").write_text(group)
    (h / "hosts").write_text(etc_hosts)
    (h / "etc" / "libvirtd.conf").write_text(render_libvirtd_conf(plan))
    (h / "etc" / "qemu.conf").write_text(render_qemu_conf(plan))
    (h / "etc" / "libvirt.conf").write_text("# written by ferry-lab\n")
    write_qemu_hook(h / "etc" / "hooks", h / "agent.toml")
    if caps_cache is not None and caps_cache.is_dir():
        for cached in caps_cache.glob("*.xml"):
            shutil.copy2(cached, h / QEMU_CAPS_DIR / cached.name)


def write_qemu_hook(hooks: Path, agent_config: Path) -> Path:
    """The target's check of every incoming migration (``ferry-agent-hook``, agent/incoming.py),
    as a fleet installs it (``deploy/libvirt/ferry-qemu-hook``): ``hooks/qemu.d/ferry``, run by
    the host's libvirtd (which looks for hooks when it starts) with this lab's interpreter and the
    host's agent config."""
    script = hooks / "qemu.d" / "ferry"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(
        "#!/bin/sh\n"
        "# written by ferry-lab: libvirt's qemu hook, the target's check of an incoming migration\n"
        '[ "$2" = migrate ] || exit 0\n'
        f'exec {shlex.quote(sys.executable)} -m ferry.agent.incoming --config {shlex.quote(str(agent_config))} "$@"\n'
    )
    script.chmod(0o755)
    return script


def save_qemu_capabilities(paths: LabPaths, host: str, caps_cache: Path) -> None:
    """Keep what a host's libvirtd probed, for the next lab start (see QEMU_CAPS_DIR)."""
    probed = sorted((paths.host(host) / QEMU_CAPS_DIR).glob("*.xml"))
    if not probed:
        return
    caps_cache.mkdir(parents=True, exist_ok=True)
    for stale in caps_cache.glob("*.xml"):
        stale.unlink()
    for xml in probed:
        shutil.copy2(xml, caps_cache / xml.name)


def start_host(
    paths: LabPaths,
    plan: HostPlan,
    core_holder: ProcessRecord,
    passwd: str,
    group: str,
    etc_hosts: str,
    record: Record,
    *,
    caps_cache: Path | None = None,
    clock: Clock = SYSTEM_CLOCK,
    firewall: str = "",
) -> HostRecord:
    """Bring up one lab host: namespaces, network, its firewall (``firewall``: an nftables ruleset,
    ``firewall.py``), mounts, its own libvirtd (ready to serve).

    Each process is passed to ``record`` as soon as it exists, so a failure half-way leaves
    nothing that ``down`` does not know about.
    """
    h = paths.host(plan.name)
    write_host_files(paths, plan, passwd, group, etc_hosts, caps_cache)
    holder = start_holder(
        plan.name,
        ["--net", "--mount", "--uts", "--propagation", "private"],
        h / "holder.log",
        plan.name,
        record,
        clock=clock,
    )
    namespaces = procs.namespace_ids(holder.pid)
    procs.run(nsenter(holder.pid, ["hostname", plan.name], mount=False, net=False))

    # eth0 in the host, its peer on the core bridge; both ends created in their namespaces
    procs.run(
        [
            "ip",
            "link",
            "add",
            plan.veth,
            "netns",
            str(core_holder.pid),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            str(holder.pid),
        ]
    )
    procs.run(
        nsenter(core_holder.pid, ["ip", "-batch", "-"], mount=False, uts=False),
        input_text=f"link set {plan.veth} master {CORE_BRIDGE}\nlink set {plan.veth} up\n",
    )
    procs.run(
        nsenter(holder.pid, ["ip", "-batch", "-"], mount=False, uts=False),
        input_text="\n".join(
            [
                "link set lo up",
                f"addr add {plan.address}/{PREFIX_LEN} dev eth0",
                "link set eth0 up",
                # the guests' bridge: no address, no uplink (guests only need it to exist)
                f"link add {plan.guest_bridge} type bridge",
                f"link set {plan.guest_bridge} up",
            ]
        )
        + "\n",
    )
    if firewall:  # before anything listens
        (h / "firewall.nft").write_text(firewall)
        procs.run(nsenter(holder.pid, ["nft", "-f", str(h / "firewall.nft")], mount=False, uts=False))

    for argv in host_mount_commands(paths, plan.name, plan.image_fs_bytes):
        procs.run(nsenter(holder.pid, argv, uts=False))

    libvirtd = procs.spawn(
        nsenter(holder.pid, [LIBVIRTD, "--listen", "--config", "/etc/libvirt/libvirtd.conf"]), log=h / "libvirtd.log"
    )
    record(
        Component(
            name=f"{plan.name}/libvirtd",
            kind="libvirtd",
            place=plan.name,
            process=libvirtd,
            endpoints={"unix": plan.libvirt_uri, "tcp": plan.tcp_uri},
        )
    )
    wait_for_libvirtd(plan.name, plan.libvirt_uri, libvirtd, h / "libvirtd.log", clock=clock)
    return HostRecord(
        name=plan.name,
        index=plan.index,
        address=plan.address,
        host_uuid=plan.host_uuid,
        guest_bridge=plan.guest_bridge,
        libvirt_uri=plan.libvirt_uri,
        tcp_uri=plan.tcp_uri,
        agent_address=plan.agent_address,
        agent_listen=plan.agent_listen,
        namespaces=namespaces,
        image_fs_bytes=plan.image_fs_bytes,
    )


def libvirtd_answers(libvirt_uri: str) -> bool:
    """``virsh version`` answers within 10 s (a libvirtd still probing QEMU on a busy machine may
    take longer: not yet, and the caller keeps waiting up to its own limit)."""
    try:
        result = procs.run(virsh_argv(libvirt_uri, ["version"]), timeout=10.0, check=False)
    except DeadlineExceeded:
        return False
    return result.returncode == 0


def wait_for_libvirtd(
    name: str,
    libvirt_uri: str,
    libvirtd: ProcessRecord,
    log: Path,
    *,
    timeout: float = LIBVIRTD_READY_TIMEOUT_S,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    socket = Path(libvirt_uri.split("socket=", 1)[1])

    def ready() -> bool:
        if not procs.is_alive(libvirtd):
            raise Unavailable(
                f"libvirtd of {name} exited during start (exit code "
                f"{procs.exit_status(libvirtd)}): {procs.log_tail(log)}",
                reason="LAB_LIBVIRTD_DIED",
                hint=f"see {log}",
            )
        return socket.exists() and libvirtd_answers(libvirt_uri)

    if not procs.wait_until(ready, timeout, clock=clock, interval=0.25):
        raise DeadlineExceeded(
            f"libvirtd of {name} did not answer within {timeout:.0f} s",
            reason="LAB_LIBVIRTD_TIMEOUT",
            hint=f"see {log}",
        )


# ---------------------------------------------------------------- teardown helpers


def destroy_guests(host: HostRecord) -> list[str]:
    """Destroy (power off) every running guest of a host; returns their names."""
    listing = procs.run(virsh_argv(host.libvirt_uri, ["list", "--name"]), timeout=VIRSH_TIMEOUT_S, check=False)
    names = [n.strip() for n in listing.stdout.splitlines() if n.strip()]
    for guest in names:
        procs.run(virsh_argv(host.libvirt_uri, ["destroy", guest]), timeout=VIRSH_TIMEOUT_S, check=False)
    return names


def qemu_pids(paths: LabPaths, host: HostRecord) -> list[int]:
    """PIDs of QEMU processes the host's libvirtd recorded (run/qemu/NAME.pid) and that still
    run inside that host's network namespace (not its mount namespace: the Debian 13 QEMU's
    wrapper, deploy/fetch-qemu.sh, gives QEMU a mount namespace of its own)."""
    found: list[int] = []
    host_net = host.namespaces.get("net")
    if not host_net:
        return found
    for pidfile in sorted((paths.host(host.name) / "run" / "qemu").glob("*.pid")):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if procs.namespace_ids(pid).get("net") == host_net:
            found.append(pid)
    return found
