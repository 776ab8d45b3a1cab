"""``ferry-lab``: real libvirt hosts on this machine, for trying Ferry and for its lab tests.

    ferry-lab up [--hosts 2] [--no-agents]      start the lab (reuses one already up), with
        [--etcd-members 1|3] [--coordinators N]   etcd and coordinators in the core namespace
        [--no-control-plane]                      (the ferry CLI works right after)
    ferry-lab status [-o json]                  every component, PID, address, alive or not,
                                                which coordinator leads
    ferry-lab kill COMPONENT [--signal KILL]    signal one (coordinator c1, etcd s1, agent host1)
    ferry-lab restart COMPONENT                 start it again, wait until it serves
    ferry-lab guest NAME --host host1 [...]     boot a test guest, wait for its heartbeat
    ferry-lab console NAME [--follow]           its serial console (continues across hosts)
    ferry-lab virsh HOST ARGS...                virsh against that host's libvirtd
    ferry-lab exec HOST|core CMD...             run a command inside the host's namespaces
    ferry-lab partition HOST / heal HOST        take the host's link down / up again
    ferry-lab crash HOST / revive HOST          host death (libvirtd, QEMUs, agent killed,
                                                link down) / power back (restarted)
    ferry-lab fill HOST [--leave SIZE] / unfill HOST   fill its image filesystem (up --image-fs)
    ferry-lab etcd-snapshot FILE / etcd-restore FILE   back etcd up / restore it (disaster recovery)
    ferry-lab down                              stop everything the lab started

The lab dir is --lab-dir, else $FERRY_LAB_DIR, else /tmp/ferry-lab.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ferry.errors import FerryError
from ferry.lab import drills
from ferry.lab.controlplane import ETCD_MEMBER_COUNTS, MAX_COORDINATORS, ControlPlane
from ferry.lab.domain import parse_size
from ferry.lab.drills import SIGNALS
from ferry.lab.guests import BOOT_TIMEOUT_S
from ferry.lab.lab import Lab, default_lab_dir
from ferry.lab.status import render_text
from ferry.lab.topology import MAX_HOSTS, parse_image_fs

EXIT_ERROR = 1
EXIT_USAGE = 64  # EX_USAGE, as `ferry`'s
OUTPUTS = ("table", "json")  # the same words as `ferry -o`

EPILOG = f"""\
global options go before or after the command: `ferry-lab status -o json` = `ferry-lab -o json status`.

exit status:
  0    success
  {EXIT_ERROR}    the command failed (the message says why and what to do)
  {EXIT_USAGE}   usage error: a wrong command line
  130  interrupted (Ctrl-C)
  (virsh and exec pass on their command's exit status)

environment:
  FERRY_LAB_DIR        lab directory (default {default_lab_dir()}; --lab-dir wins)
  FERRY_LAB_CACHE_DIR  where libvirtd's QEMU capability cache is kept between labs
  FERRY_ETCD_BIN       the etcd server binary (default: the one deploy/fetch-etcd.sh fetched)
  XDG_CONFIG_HOME      `up` also writes the `ferry` CLI config to $XDG_CONFIG_HOME/ferry/cli.toml
                       (when that file is free or already points into a lab)"""


class UsageError(Exception):
    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse, raising UsageError (exit 64) instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def _output(value: str) -> str:
    word = value.strip().lower()
    return "table" if word == "text" else word  # "text": the old word, accepted quietly


def _common() -> _Parser:
    """Options every command takes, before or after it (defaults suppressed, filled in by main)."""
    common = _Parser(add_help=False)
    g = common.add_argument_group("global options")
    g.add_argument(
        "--lab-dir",
        type=Path,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"lab directory. Default: $FERRY_LAB_DIR, else {default_lab_dir()}",
    )
    g.add_argument(
        "-o",
        "--output",
        type=_output,
        choices=OUTPUTS,
        default=argparse.SUPPRESS,
        help="output of up and status: table (for people) or json (the status object). Default: table",
    )
    g.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors on stderr. Default: off"
    )
    return common


GLOBAL_DEFAULTS = {"lab_dir": None, "output": "table", "quiet": False}


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = _Parser(
        prog="ferry-lab",
        description="Real libvirt hosts in namespaces on this machine.",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return commands.add_parser(name, parents=[common], **kw)

    up = command("up", help="start the lab (core namespace, hosts, libvirtd, agents, etcd, coordinators)")
    up.add_argument("--hosts", type=int, default=2, help=f"number of hosts, 1-{MAX_HOSTS}. Default: 2")
    up.add_argument("--no-agents", action="store_true", help="do not start Ferry agents. Default: start them")
    up.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing packages (fail instead). Default: install",
    )
    up.add_argument(
        "--etcd-members",
        type=int,
        default=1,
        choices=ETCD_MEMBER_COUNTS,
        help="etcd members in the core namespace. Default: 1",
    )
    up.add_argument(
        "--coordinators",
        type=int,
        default=1,
        choices=range(1, MAX_COORDINATORS + 1),
        help="coordinator replicas (one leads, all serve the API). Default: 1",
    )
    up.add_argument(
        "--per-host-outbound",
        type=int,
        default=1,
        metavar="N",
        help="concurrent migrations out of one host. Default: 1",
    )
    up.add_argument(
        "--host-bandwidth",
        type=int,
        default=0,
        metavar="MIBPS",
        help="each host's migration bandwidth budget, shared by the migrations running through it "
        "([limits] host_bandwidth_mibps). Default: 0 (none)",
    )
    up.add_argument(
        "--no-control-plane",
        action="store_true",
        help="no etcd, no coordinators (a lab already up is reused as it is). Default: start them",
    )
    up.add_argument(
        "--image-fs",
        action="append",
        type=_image_fs_arg,
        default=[],
        metavar="HOST=SIZE",
        help="give HOST its own image filesystem of SIZE (e.g. host2=512M: a target that can fill up); "
        "repeatable. Default: none (images on the host's /var)",
    )

    command("down", help="destroy guests, stop everything the lab started")

    command("status", help="every component, its PID, addresses, liveness (-o json: as JSON)")

    guest = command("guest", help="create and boot a test guest on a host")
    guest.add_argument("name", help="guest name")
    guest.add_argument("--host", required=True, help="lab host, e.g. host1 (required)")
    guest.add_argument("--memory", type=int, default=256, metavar="MiB", help="guest memory in MiB. Default: 256")
    guest.add_argument(
        "--disk",
        action="append",
        metavar="SIZE",
        help="a qcow2 disk (vda, vdb, ... in order), e.g. 256M; repeatable. Default: one 256M disk",
    )
    guest.add_argument("--shared", action="store_true", help="disks on the lab's shared storage. Default: host-local")
    guest.add_argument(
        "--backing",
        metavar="FILE",
        help="create vda as a qcow2 overlay on this image, which must exist on the host (a template, for "
        "--copy-storage-inc). Default: none",
    )
    guest.add_argument(
        "--dirty-rate",
        metavar="MiB/s|max",
        help="start the memory dirtier at this rate, in MiB/s or max. Default: no dirtier",
    )
    guest.add_argument(
        "--dirty-mb", type=int, default=64, metavar="MiB", help="memory the dirtier keeps dirty, in MiB. Default: 64"
    )
    guest.add_argument("--no-nic", action="store_true", help="no network interface. Default: one NIC")
    guest.add_argument(
        "--bridge", metavar="NAME", help="put the NIC on this bridge of the host. Default: its guest bridge"
    )
    guest.add_argument(
        "--timeout",
        type=float,
        default=BOOT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for the first heartbeat, in seconds. Default: {BOOT_TIMEOUT_S:g}",
    )

    console = command("console", help="print a guest's serial console log")
    console.add_argument("name", help="guest name")
    console.add_argument("-f", "--follow", action="store_true", help="keep printing new lines. Default: print and exit")

    virsh = command("virsh", help="virsh against a host's libvirtd")
    virsh.add_argument("host", help="lab host, e.g. host1")
    virsh.add_argument("args", nargs=argparse.REMAINDER, help="virsh's arguments")

    exec_ = command("exec", help="run a command inside a host's (or core's) namespaces")
    exec_.add_argument("host", help="host name or 'core'")
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments")

    kill = command("kill", help="signal components by their recorded PIDs (a drill)")
    kill.add_argument(
        "component", nargs="+", help="e.g. coordinator c1, etcd s1, agent host1, libvirtd host2; or several pairs"
    )
    kill.add_argument(
        "--signal",
        default="KILL",
        type=str.upper,
        choices=tuple(SIGNALS),
        help="KILL (a crash), TERM, STOP (hang) or CONT (resume). Default: KILL",
    )

    restart = command("restart", help="start components again, one after the other, each until it serves")
    restart.add_argument("component", nargs="+", help="e.g. coordinator c1, etcd s1, agent host1; or several pairs")

    snap = command("etcd-snapshot", help="save the lab's etcd to a file (etcdctl snapshot save: a backup)")
    snap.add_argument("file", type=Path, help="where to write the snapshot")
    restore = command(
        "etcd-restore",
        help="disaster recovery: stop etcd, restore it from a snapshot, start it again (Ferry keeps running)",
    )
    restore.add_argument("file", type=Path, help="a snapshot from ferry-lab etcd-snapshot")
    restore.add_argument(
        "--bump-revision",
        type=int,
        default=0,
        metavar="N",
        help="revisions go on N above the snapshot's (etcdutl --bump-revision N --mark-compacted). Default: 0",
    )

    for name, text in (
        ("partition", "cut a host off the lab network (its link down in the core namespace)"),
        ("heal", "bring a partitioned host's link up again"),
        ("crash", "host death: link down, libvirtd, every QEMU and the agent killed at once, /run/libvirt lost"),
        ("revive", "power back after a crash: link up, libvirtd and the agent started again"),
        ("unfill", "remove the filler from a host's image filesystem"),
    ):
        command(name, help=text).add_argument("host")
    fill = command("fill", help="fill a host's own image filesystem (ferry-lab up --image-fs)")
    fill.add_argument("host")
    fill.add_argument("--leave", type=_size_arg, default=0, metavar="SIZE", help="bytes to leave free. Default: 0")
    return parser


def _image_fs_arg(text: str) -> tuple[str, int]:
    try:
        return parse_image_fs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_up(lab: Lab, args: argparse.Namespace) -> int:
    control_plane = (
        None
        if args.no_control_plane
        else ControlPlane(
            etcd_members=args.etcd_members,
            coordinators=args.coordinators,
            per_host_outbound=args.per_host_outbound,
            host_bandwidth_mibps=args.host_bandwidth,
        )
    )
    lab.up(
        hosts=args.hosts,
        agents=not args.no_agents,
        install=not args.no_install,
        control_plane=control_plane,
        image_fs=dict(args.image_fs),
    )
    return _cmd_status(lab, args)


def _cmd_kill(lab: Lab, args: argparse.Namespace) -> int:
    for words in drills.groups(args.component):
        print(lab.kill(words, args.signal))
    return 0


def _cmd_restart(lab: Lab, args: argparse.Namespace) -> int:
    for words in drills.groups(args.component):
        component = lab.restart(words)
        pid = component.process.pid if component.process else "-"
        print(f"{' '.join(words)}: restarted, pid {pid}")
    return 0


def _cmd_etcd(lab: Lab, args: argparse.Namespace) -> int:
    if args.command == "etcd-snapshot":
        print(lab.etcd_snapshot(args.file))
    else:
        print(lab.etcd_restore(args.file, bump_revision=args.bump_revision))
    return 0


def _cmd_host_fault(lab: Lab, args: argparse.Namespace) -> int:
    host = args.host
    if args.command == "partition":
        lab.partition(host)
        print(f"{host}: link down (cut off the lab network); ferry-lab heal {host}")
    elif args.command == "heal":
        lab.heal(host)
        print(f"{host}: link up")
    elif args.command == "crash":
        print(lab.kill_host(host).describe())
        print(f"power it back with: ferry-lab revive {host}")
    elif args.command == "revive":
        started = lab.revive_host(host)
        pids = ", ".join(f"{drills.spoken_name(c)} pid {c.process.pid if c.process else '-'}" for c in started)
        print(f"{host}: link up; {pids}")
    elif args.command == "fill":
        size = lab.fill_images(host, args.leave)
        print(f"{host}: image filesystem filled ({size} bytes of filler); ferry-lab unfill {host}")
    else:
        print(f"{host}: " + ("filler removed" if lab.unfill_images(host) else "no filler"))
    return 0


def _cmd_down(lab: Lab, args: argparse.Namespace) -> int:
    report = lab.down()
    if not report.was_up:
        print(f"no lab in {lab.dir}")
        return 0
    if report.guests_destroyed:
        print(f"destroyed guests: {', '.join(report.guests_destroyed)}")
    for name, outcome in report.stopped:
        print(f"  {name:<16} {outcome}")
    for leftover in report.leftovers:
        print(f"  killed leftover process in the lab's namespaces: {leftover}")
    print(f"lab down in {report.seconds:.1f} s; nothing of it is running")
    return 0


def _cmd_status(lab: Lab, args: argparse.Namespace) -> int:
    status = lab.status()
    if args.output == "json":
        print(json.dumps(status, indent=2))
    else:
        print(render_text(status), end="")
    return 0


def _cmd_guest(lab: Lab, args: argparse.Namespace) -> int:
    info = lab.guest(
        args.name,
        args.host,
        memory_mib=args.memory,
        disks=args.disk or ["256M"],
        shared=args.shared,
        dirty_rate=args.dirty_rate,
        dirty_mb=args.dirty_mb,
        nic=not args.no_nic,
        bridge=args.bridge,
        timeout=args.timeout,
        backing=args.backing,
    )
    print(info.describe())
    return 0


def _cmd_console(lab: Lab, args: argparse.Namespace) -> int:
    text = lab.console(args.name)
    sys.stdout.write(text)
    sys.stdout.flush()
    if not args.follow:
        return 0
    path = lab.paths.console_log(args.name)
    offset = len(text.encode())
    try:
        while True:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            if chunk:
                offset += len(chunk)
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0


def _passthrough(argv: Sequence[str]) -> int:
    """Run an operator's command with the terminal attached (no time limit: they may be long
    or interactive, e.g. a migration or ``virsh console``)."""
    return subprocess.run(list(argv), check=False).returncode


def _cmd_virsh(lab: Lab, args: argparse.Namespace) -> int:
    from ferry.lab.hosts import virsh_argv

    return _passthrough(virsh_argv(lab.libvirt_uri(args.host), args.args))


def _cmd_exec(lab: Lab, args: argparse.Namespace) -> int:
    if not args.cmd:
        print("ferry-lab exec: give a command to run", file=sys.stderr)
        return EXIT_USAGE
    return _passthrough(lab.exec_argv(args.host, args.cmd))


COMMANDS = {
    "up": _cmd_up,
    "down": _cmd_down,
    "status": _cmd_status,
    "guest": _cmd_guest,
    "console": _cmd_console,
    "virsh": _cmd_virsh,
    "exec": _cmd_exec,
    "kill": _cmd_kill,
    "restart": _cmd_restart,
    "etcd-snapshot": _cmd_etcd,
    "etcd-restore": _cmd_etcd,
    "partition": _cmd_host_fault,
    "heal": _cmd_host_fault,
    "crash": _cmd_host_fault,
    "revive": _cmd_host_fault,
    "fill": _cmd_host_fault,
    "unfill": _cmd_host_fault,
}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; raises UsageError for a wrong command line (--help exits 0)."""
    args = _parser().parse_args(argv)
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
    except UsageError as exc:
        sys.stderr.write(exc.usage)
        print(f"ferry-lab: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="ferry-lab: %(message)s", stream=sys.stderr
    )
    lab = Lab(args.lab_dir)
    try:
        return COMMANDS[args.command](lab, args)
    except FerryError as exc:
        print(f"ferry-lab: error [{exc.reason}]: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ferry-lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ferry-lab status -o json | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
