"""The `ferry` command line: every command, option and help text, in one parser.

Global options (``--coordinator``, ``-o/--output``, ``--rpc-timeout``, ``--ca/--cert/--key``,
``--insecure``) are accepted before or after
the command (``ferry -o json vms`` = ``ferry vms -o json``): each (sub)parser carries them with
suppressed defaults, so a value given anywhere lands in the namespace once, and
:func:`parse` fills in the defaults afterwards. Usage errors raise :class:`UsageError` (exit 64,
EX_USAGE) instead of argparse's exit 2, which `ferry` means as "the coordinator refused".
"""

from __future__ import annotations

import argparse
import math
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ferry.cli import jsonout
from ferry.cli.config import DEFAULT_COORDINATOR, ENV_ADDRESS, ENV_CONFIG
from ferry.v1 import coordinator_pb2 as cpb

# Exit status (documented in --help and the README)
EXIT_OK = 0
EXIT_UNSUCCESSFUL = 1  # the migration ended without success, or preflight found blockers
EXIT_REFUSED = 2  # the coordinator refused the request (it says what to fix)
EXIT_UNREACHABLE = 3  # no coordinator answered, or it failed
EXIT_USAGE = 64  # the command line is wrong (EX_USAGE); nothing was sent
EXIT_INTERRUPTED = 130  # Ctrl-C (a migration being waited for goes on)
EXIT_PIPE = 141  # the reader of our output went away (`ferry ... | head`)

OUTPUTS = ("table", "json")
DEFAULT_RPC_TIMEOUT_S = 30.0
DEFAULT_TOP_INTERVAL_S = 1.0
DEFAULT_TOP_FINISHED = 5
SHELLS = ("bash", "zsh")

EPILOG = f"""\
exit status:
  {EXIT_OK}    success
  {EXIT_UNSUCCESSFUL}    the migration (or drain) ended without success (failed, cancelled,
       rolled_back; a drain incomplete), or preflight found blockers (a drain's dry
       run: a VM that fits nowhere)
  {EXIT_REFUSED}    the coordinator refused the request (the message says what to fix)
  {EXIT_UNREACHABLE}    no coordinator could be reached, it failed, or it stayed too busy
       to take the call (SERVER_BUSY, after four tries over ~8 s). A migration or
       drain being waited for goes on in the coordinator; a watch that breaks is
       read and watched again first, for ~15 s, on each configured coordinator.
       `ferry top`: its last refresh failed
  {EXIT_USAGE}   usage error: a wrong command line; nothing was sent
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C); a migration being waited for goes on
  {EXIT_PIPE}  the reader of the output went away (e.g. `ferry ... | head`)

environment:
  {ENV_ADDRESS}   coordinator address(es), comma-separated (overridden by --coordinator)
  {ENV_CONFIG}        CLI config file (default $XDG_CONFIG_HOME/ferry/cli.toml, else
                      ~/.config/ferry/cli.toml; `ferry-lab up` writes one)
  XDG_CONFIG_HOME     where the default config file is looked for
  NO_COLOR            set to anything: no colours (output that is not a terminal never has any)

JSON output (-o json) follows a documented schema: docs/cli-json.md.
Shell completion: `source <(ferry completion bash)`; see `ferry completion --help`."""


class UsageError(Exception):
    """A wrong command line; ``message`` says what, ``prog`` whose usage to show."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.message = message
        self.usage = usage


class Parser(argparse.ArgumentParser):
    """argparse, raising :class:`UsageError` instead of exiting 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def ferry_version() -> str:
    """The installed distribution's version (single-sourced in pyproject.toml)."""
    from importlib.metadata import PackageNotFoundError, version  # ~15 ms: only for --version

    try:
        return version("ferry")
    except PackageNotFoundError:
        return "unknown (not installed)"


class VersionAction(argparse.Action):
    """``--version``: the version is looked up when asked for, not each time the parser is built."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: str | None = None
    ) -> None:
        print(f"ferry {ferry_version()}", flush=True)
        parser.exit()


def _output(value: str) -> str:
    word = value.strip().lower()
    return "table" if word == "text" else word  # "text": ferry-lab's old word, accepted quietly


def _phase(value: str) -> str:
    try:
        return jsonout.phase_word(jsonout.phase_from_word(value))
    except ValueError:
        return value  # argparse's choices check names the valid ones


def _count(value: str) -> int:
    """A whole number from 0 up (MiB/s, ms, s, N): the API's unsigned 32-bit fields.

    >>> _count("32")
    32
    >>> _count("-5")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a whole number from 0 to 4294967295, got -5
    """
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {0xFFFFFFFF}, got {value}")
    return number


def _int32(value: str) -> int:
    """A signed whole number of 32 bits (a priority).

    >>> _int32("-3")
    -3
    """
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {value}") from None
    if not -(2**31) <= number < 2**31:
        raise argparse.ArgumentTypeError(f"must be from {-(2**31)} to {2**31 - 1}, got {value}")
    return number


def _positive_float(value: str) -> float:
    """A number of seconds: finite and above 0 (``nan``, ``inf`` and ``1e400`` parse as floats).

    >>> _positive_float("2.5")
    2.5
    >>> _positive_float("inf")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be more than 0 and finite, got inf
    """
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {value}") from None
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 and finite, got {value}")
    return number


def _common() -> argparse.ArgumentParser:
    """The global options, accepted by every (sub)command; defaults suppressed (see :func:`parse`)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options")
    g.add_argument(
        "--coordinator",
        metavar="ADDR",
        default=argparse.SUPPRESS,
        help=f"coordinator address, HOST:PORT or unix:PATH; several comma-separated (the first that answers "
        f"is used). Default: ${ENV_ADDRESS}, else the config file, else {DEFAULT_COORDINATOR}",
    )
    g.add_argument(
        "-o",
        "--output",
        type=_output,
        choices=OUTPUTS,
        default=argparse.SUPPRESS,
        help="output format: table (for people) or json (the schema in docs/cli-json.md). Default: table",
    )
    g.add_argument(
        "--rpc-timeout",
        type=_positive_float,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help=f"deadline of each call to the coordinator, in seconds (waiting for a migration has none). "
        f"Default: {DEFAULT_RPC_TIMEOUT_S:g}",
    )
    g.add_argument(
        "--ca", metavar="PEM", default=argparse.SUPPRESS, help="the CA certificate. Default: ca in the config file"
    )
    g.add_argument(
        "--cert",
        metavar="PEM",
        default=argparse.SUPPRESS,
        help="the client certificate, naming ferry://ROLE/NAME (the coordinator requires mutual TLS). "
        "Default: cert in the config file",
    )
    g.add_argument("--key", metavar="PEM", default=argparse.SUPPRESS, help="its key. Default: key in the config file")
    g.add_argument(
        "--insecure",
        action="store_true",
        default=argparse.SUPPRESS,
        help="plaintext, no certificate: only for a coordinator configured with insecure = true",
    )
    return p


GLOBAL_DEFAULTS: dict[str, Any] = {
    "coordinator": None,
    "output": "table",
    "rpc_timeout": DEFAULT_RPC_TIMEOUT_S,
    "ca": None,
    "cert": None,
    "key": None,
    "insecure": False,
}
FILTER_DEFAULTS: dict[str, Any] = {"phase": None, "host": None, "vm": None, "limit": 0, "state": None}
# other names operators type (kubectl, openstack, virsh habits) -> the command or action they mean
COMMAND_ALIASES = {"host": "hosts", "vm": "vms", "migration": "migrations", "policy": "policies"}
ACTION_ALIASES: dict[str, str | None] = {"abort": "cancel", "list": None}  # list: the listing itself


def _filters(*, for_list: bool) -> argparse.ArgumentParser:
    """``ferry migrations`` filters, also accepted after show/watch/cancel (where they select)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group(
        "filters" if for_list else "select by filter instead of an ID: the newest match (with an ID, it must match)"
    )
    g.add_argument(
        "--phase",
        action="append",
        type=_phase,
        choices=jsonout.PHASE_WORDS,
        default=argparse.SUPPRESS,
        help="only migrations in this phase; repeatable. Default: every phase"
        + ("" if for_list else " (cancel without an ID: those not final)"),
    )
    g.add_argument(
        "--host", metavar="HOST", default=argparse.SUPPRESS, help="only migrations from or to this host. Default: all"
    )
    g.add_argument("--vm", metavar="VM", default=argparse.SUPPRESS, help="only this VM's (name or UUID). Default: all")
    if for_list:
        g.add_argument(
            "--limit",
            type=_count,
            metavar="N",
            default=argparse.SUPPRESS,
            help="at most N, newest first. Default: 0 = all",
        )
    return p


def _add_job_flags(g: argparse._ArgumentGroup) -> None:
    """The flags of each migration job, for `ferry migrate` and `ferry drain` alike."""
    g.add_argument("--copy-storage-all", action="store_true", help="copy every local disk to the target")
    g.add_argument(
        "--copy-storage-inc",
        action="store_true",
        help="copy only the top image layer; the backing files already exist on the target",
    )
    g.add_argument(
        "--shared-storage",
        action="store_true",
        help="the disks are on shared storage; copy none. Default: decided from the inventory (local disks are copied)",
    )
    g.add_argument(
        "--bandwidth",
        type=_count,
        metavar="MiB/s",
        help="cap the migration stream, in MiB/s. Default: 0 = QEMU's default (unlimited)",
    )
    g.add_argument(
        "--max-downtime",
        type=_count,
        metavar="ms",
        help="longest pause of the guest at the switch-over, in milliseconds. Default: 0 = QEMU's default (300 ms)",
    )
    g.add_argument(
        "--auto-converge",
        action="store_true",
        help="let QEMU throttle the guest's vCPUs when pre-copy does not converge. Default: off",
    )
    g.add_argument("--postcopy", action="store_true", help="allow switching to post-copy. Default: off")
    g.add_argument(
        "--postcopy-on-stall",
        action="store_true",
        help="switch to post-copy when pre-copy stalls (needs --postcopy). Default: off",
    )
    g.add_argument(
        "--unsafe",
        action="store_true",
        help="skip libvirt's cache-mode/storage safety check, and vouch for the storage checks Ferry cannot make "
        "(*_UNVERIFIED: a probe that cannot be written, a device without an identity, an agent too old to check); "
        "a check that fails (*_MISMATCH, *_MISSING) still blocks. Default: checked",
    )
    g.add_argument(
        "--timeout",
        type=_count,
        metavar="s",
        help="abort the migration when it takes longer, in seconds. "
        "Default: 0 = 800 s per GiB of memory and copied disk, at least 120 s",
    )


# virsh migrate's flags that an operator types out of habit. Ferry always does what the first
# group asks (accepted, nothing to do); the second group is decided elsewhere in Ferry, and naming
# one is a usage error that says where.
VIRSH_ALWAYS = {
    "--live": "live is the default (--offline for a VM that is not running)",
    "--p2p": "the source's libvirtd always connects to the target's itself (peer to peer)",
    "--tls": "migration streams are always encrypted with TLS (the agents' migration_tls)",
    "--verbose": "the progress bar is shown by default",
}
_MAPPING = "the target's definition is written from the source's through the host mapping: --map-bridge, "
_POLICY = "part of a convergence policy: --policy NAME (see `ferry policies`)"
VIRSH_ELSEWHERE = {
    flag: why
    for flags, why in (
        (("--direct",), "Ferry migrates peer to peer through libvirtd (QEMU's direct migration is not offered)"),
        (("--tunnelled", "--tunneled"), "the stream goes from QEMU to QEMU over TLS instead of through libvirtd"),
        (("--dname",), "the VM keeps its name on the target (the fleet knows it by name and UUID)"),
        (("--xml", "--persistent-xml"), _MAPPING + "--map-network, --map-path"),
        (
            ("--migrateuri", "--listen-address"),
            "the target's migration address is the one its agent registered (advertise it in the target's "
            "ferry-agent config)",
        ),
        (("--compressed", "--comp-methods"), f"compression is {_POLICY}"),
        (("--parallel", "--parallel-connections"), f"parallel connections are {_POLICY}"),
        (
            ("--auto-converge-initial", "--auto-converge-increment"),
            f"the throttle steps are {_POLICY}; --auto-converge turns it on",
        ),
        (("--postcopy-bandwidth",), f"the post-copy bandwidth is {_POLICY}"),
        (
            ("--timeout-suspend",),
            "a migration past --timeout is aborted, or switched to post-copy by its policy (--postcopy-on-stall); "
            "the guest is never left paused",
        ),
        (("--timeout-postcopy",), "switching to post-copy is --postcopy --postcopy-on-stall, or its policy"),
    )
    for flag in flags
}
_VIRSH_TAKES_VALUE = frozenset(
    {"--dname", "--xml", "--persistent-xml", "--migrateuri", "--listen-address", "--comp-methods",
     "--parallel-connections", "--auto-converge-initial", "--auto-converge-increment", "--postcopy-bandwidth"}
)  # fmt: skip


class VirshElsewhere(argparse.Action):
    """A virsh migrate flag Ferry decides elsewhere: a usage error saying where."""

    def __call__(
        self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: object, option: str | None = None
    ) -> None:
        name = option or self.option_strings[0]
        parser.error(f"{name} (virsh migrate) is not a ferry flag: {VIRSH_ELSEWHERE[name]}")


def _add_virsh_habits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "virsh migrate's flags",
        textwrap.fill(
            "Accepted, as Ferry always does what they ask. Others of virsh migrate's flags are decided elsewhere "
            "in Ferry (" + ", ".join(sorted(VIRSH_ELSEWHERE)) + "): naming one says where.",
            width=76,
            break_on_hyphens=False,
        ),
    )
    for flag, why in VIRSH_ALWAYS.items():
        g.add_argument(flag, action="store_true", dest=f"virsh_{flag[2:]}", help=f"accepted: {why}")
    for flag in VIRSH_ELSEWHERE:  # refused with the reason; listed in the group's description only
        p.add_argument(
            flag, action=VirshElsewhere, nargs=1 if flag in _VIRSH_TAKES_VALUE else 0, help=argparse.SUPPRESS
        )


def _add_migration_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("vm", help="VM name or UUID")
    p.add_argument(
        "target",
        nargs="?",
        metavar="HOST",
        help="target host, where virsh migrate takes its DESTURI (the same as --to). Default: see --to",
    )
    p.add_argument(
        "--to", metavar="HOST", help="target host. Default: the best feasible host (placement; the record says why)"
    )
    g = p.add_argument_group("migration flags (named as in virsh migrate)")
    g.add_argument(
        "--offline", action="store_true", help="migrate the definition only (the VM is not running). Default: live"
    )
    _add_job_flags(g)
    g.add_argument(
        "--migrate-disks",
        metavar="vda,vdb",
        help="copy only these disks (guest device names, comma-separated). Default: every writable local disk",
    )
    g.add_argument(
        "--persistent",
        action="store_true",
        help="define the VM on the target (a transient VM too); named alone (as in virsh) the source keeps its "
        "definition. Default: without --persistent and --undefinesource both happen (a transient VM stays "
        "transient)",
    )
    g.add_argument(
        "--undefinesource",
        action="store_true",
        help="undefine the VM on the source; named alone (as in virsh) the target's domain is transient. "
        "Default: see --persistent",
    )

    g.add_argument(
        "--map-bridge",
        action="append",
        metavar="SRC=DST",
        help="put NICs on source bridge SRC on target bridge DST; repeatable. "
        "Default: the mapping the coordinator derives from its [hosts.*] config",
    )
    g.add_argument(
        "--map-network",
        action="append",
        metavar="SRC=DST",
        help="same for libvirt networks; repeatable. Default: as for --map-bridge",
    )
    g.add_argument(
        "--map-path",
        action="append",
        metavar="OLD=NEW",
        help="disk paths under prefix OLD land under NEW on the target; repeatable. Default: as for --map-bridge",
    )
    g.add_argument(
        "--policy",
        default="",
        metavar="NAME",
        help="the convergence policy (see `ferry policies`); the flags above go on top of it. "
        "Default: the coordinator's selector rules, else the flags alone",
    )
    _add_virsh_habits(p)


def parser(*, aliases: bool = True) -> argparse.ArgumentParser:
    """The ``ferry`` command line; ``aliases`` False leaves out the other spellings (host, abort,
    ...), for the completion scripts."""
    common = _common()

    def sub_parser(
        sub: argparse._SubParsersAction[Any],
        name: str,
        text: str,
        *,
        parents: Sequence[argparse.ArgumentParser] = (),
        description: str | None = None,
        also: Sequence[str] = (),
    ) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = sub.add_parser(
            name,
            aliases=list(also) if aliases else [],
            help=text,
            description=description or text[0].upper() + text[1:] + ".",
            parents=[common, *parents],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="Exit status and environment: see `ferry --help`.",
        )
        return made

    p = Parser(
        prog="ferry",
        description="Live-migrate VMs across a KVM/libvirt fleet. Talks only to the coordinator.",
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument("--version", action=VersionAction, help="print the version")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    hs = sub_parser(
        sub,
        "hosts",
        "list hosts: agent state, CPU, free memory, VMs, migrations out/in, bridges, cordons",
        also=["host"],
    )
    hs_sub = hs.add_subparsers(dest="action", metavar="ACTION")
    sub_parser(hs_sub, "list", "the same as `ferry hosts` alone")
    cordon = sub_parser(hs_sub, "cordon", "cordon a host: it receives no migration until uncordoned")
    cordon.add_argument("host", metavar="HOST")
    cordon.add_argument("--reason", default="", help="why, shown in `ferry hosts`. Default: none")
    sub_parser(hs_sub, "uncordon", "put a cordoned host back in service").add_argument("host", metavar="HOST")
    sub_parser(
        hs_sub,
        "forget",
        "take a decommissioned host (its agent stopped) out of the view: the VMs it last reported are no longer listed",
    ).add_argument("host", metavar="HOST")
    vms = sub_parser(sub, "vms", "list VMs across the fleet and where they run", also=["vm"])
    vms.add_argument("--host", metavar="HOST", help="only this host's VMs. Default: every host")
    pre = sub_parser(
        sub,
        "preflight",
        "check a migration without touching anything: every blocker at once, with a fix for each",
    )
    _add_migration_flags(pre)
    mig = sub_parser(sub, "migrate", "migrate a VM (live by default) and wait for the end with a progress bar")
    _add_migration_flags(mig)
    g = mig.add_argument_group("queueing and waiting")
    g.add_argument(
        "--priority", type=_int32, default=0, metavar="N", help="higher runs first when slots are short. Default: 0"
    )
    g.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="submitting again with the same key returns the same migration. Default: a new random key",
    )
    g.add_argument("--no-wait", action="store_true", help="print the migration and return at once. Default: wait")

    ms = sub_parser(
        sub,
        "migrations",
        "list migrations (newest first), or show, watch or cancel one",
        parents=[_filters(for_list=True)],
        also=["migration"],
    )
    ms_sub = ms.add_subparsers(dest="action", metavar="ACTION")
    sub_parser(ms_sub, "list", "the same as `ferry migrations` alone", parents=[_filters(for_list=True)])
    for name, text, also in (
        ("show", "show one migration: its record, history and why it ended as it did", ()),
        ("watch", "follow one migration until it ends, with a progress bar", ()),
        (
            "cancel",
            "ask the coordinator to cancel one migration (it rolls back; the VM stays on its source)",
            ("abort",),
        ),
    ):
        s = sub_parser(ms_sub, name, text, parents=[_filters(for_list=False)], also=also)
        s.add_argument("id", nargs="?", metavar="ID", help="the migration's ID; or select one with --vm/--host/--phase")

    dr = sub_parser(
        sub,
        "drain",
        "empty a host: cordon it, move every VM off it a few at a time, and wait with a progress bar",
    )
    dr.add_argument("host", metavar="HOST")
    dr.add_argument(
        "--to", metavar="H1,H2", help="only these targets, comma-separated. Default: the best feasible host per VM"
    )
    dr.add_argument(
        "--max-parallel",
        type=_count,
        default=0,
        metavar="N",
        help="migrations at once (at most the host's outbound limit). Default: 0 = that limit",
    )
    dr.add_argument(
        "--policy",
        default="",
        metavar="NAME",
        help="the convergence policy of its migrations (see `ferry policies`). "
        "Default: the coordinator's selector rules, per VM",
    )
    dr.add_argument("--reason", default="", help="why (the cordon's reason). Default: none")
    _add_job_flags(dr.add_argument_group("flags of every migration (named as in virsh migrate)"))
    dr.add_argument(
        "--dry-run", action="store_true", help="print the plan (VM -> target, estimated time); touch nothing"
    )
    dr.add_argument("--no-wait", action="store_true", help="print the drain and return at once. Default: wait")
    drain_filters = argparse.ArgumentParser(add_help=False)
    drain_filters.add_argument(
        "--host", metavar="HOST", default=argparse.SUPPRESS, help="only this host's. Default: all"
    )
    drain_filters.add_argument(
        "--state",
        action="append",
        choices=jsonout.enum_words(cpb.DrainState.DESCRIPTOR)[1:],
        default=argparse.SUPPRESS,
        help="only drains in this state; repeatable. Default: every state",
    )
    ds = sub_parser(
        sub,
        "drains",
        "list drains (newest first), or show, watch, pause, resume or cancel one",
        parents=[drain_filters],
    )
    ds_sub = ds.add_subparsers(dest="action", metavar="ACTION")
    sub_parser(ds_sub, "list", "the same as `ferry drains` alone", parents=[drain_filters])
    for name, text, also in (
        ("show", "show one drain: every VM, where it went or why not, the history", ()),
        ("watch", "follow one drain until it ends, with a progress bar", ()),
        ("pause", "start no new migration (those under way finish)", ()),
        ("resume", "go on with a paused drain", ()),
        ("cancel", "cancel a drain and the migrations it has under way", ("abort",)),
    ):
        made = sub_parser(ds_sub, name, text, also=also)
        made.add_argument("id", metavar="ID", help="the drain's ID (ferry drains)")
    for name, text in (
        ("tune", "change a running migration's max downtime or bandwidth (libvirt's values are read back)"),
        ("force-complete", "finish a running migration now: post-copy if its policy allows it, else pause and finish"),
        ("postcopy", "switch a running migration to post-copy (its policy must allow post-copy)"),
    ):
        s = sub_parser(ms_sub, name, text, parents=[_filters(for_list=False)])
        s.add_argument("id", nargs="?", metavar="ID", help="the migration's ID; or select one with --vm/--host/--phase")
        if name == "tune":
            s.add_argument(
                "--max-downtime",
                type=_count,
                metavar="ms",
                help="the longest pause at the switch-over, in milliseconds. Default: unchanged",
            )
            s.add_argument(
                "--bandwidth",
                type=_count,
                metavar="MiB/s",
                help="the migration stream's cap, in MiB/s. Default: unchanged",
            )
    sub_parser(sub, "policies", "list the convergence policies and the rules that choose them", also=["policy"])

    top = sub_parser(
        sub,
        "top",
        "live view of every migration in flight: progress, rate, dirty rate, ETA, phase",
        description=(
            "Live view of every migration in flight (queued ones too) with its progress bar, transfer rate,\n"
            "dirty rate, remaining bytes, ETA and phase, and the last finished ones; updated in place on a\n"
            "terminal, one block of plain lines per refresh when the output is not a terminal, one JSON\n"
            "object per line with -o json. A refresh that fails (the coordinator restarting, a replica\n"
            "failing over) is shown -- with -o json, as an error object on its line -- and the next one\n"
            "is tried. Ctrl-C leaves it (the migrations go on)."
        ),
    )
    top.add_argument(
        "--interval",
        type=_positive_float,
        default=DEFAULT_TOP_INTERVAL_S,
        metavar="SECONDS",
        help=f"seconds between refreshes. Default: {DEFAULT_TOP_INTERVAL_S:g}",
    )
    top.add_argument(
        "--iterations",
        type=_count,
        default=0,
        metavar="N",
        help="stop after N refreshes (failed ones too; exit 3 when the last failed). Default: 0 = until Ctrl-C",
    )
    top.add_argument("--host", metavar="HOST", help="only migrations from or to this host. Default: all")
    top.add_argument("--vm", metavar="VM", help="only this VM's migrations (name or UUID). Default: all")
    top.add_argument(
        "--finished",
        type=_count,
        default=DEFAULT_TOP_FINISHED,
        metavar="N",
        help=f"also show the last N finished migrations. Default: {DEFAULT_TOP_FINISHED}",
    )

    comp = sub_parser(
        sub,
        "completion",
        "print a shell completion script",
        description=(
            "Print a completion script for bash or zsh.\n\n"
            "  bash:  source <(ferry completion bash)        (or save it in /etc/bash_completion.d/ferry)\n"
            "  zsh:   ferry completion zsh > ~/.zfunc/_ferry  (a directory on $fpath; then compinit)"
        ),
    )
    comp.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    return p


def parse(argv: Sequence[str] | None, make: Callable[[], argparse.ArgumentParser] = parser) -> argparse.Namespace:
    """Parse; raises :class:`UsageError` for a wrong command line (``--help``/``--version`` exit 0)."""
    args = make().parse_args(argv)
    for name, default in {**GLOBAL_DEFAULTS, **FILTER_DEFAULTS}.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    args.command = COMMAND_ALIASES.get(args.command, args.command)
    if getattr(args, "target", None):  # ferry migrate VM HOST, as virsh migrate VM DESTURI
        if args.to and args.to != args.target:
            raise UsageError(
                f"two targets: {args.target} and --to {args.to}; name one", f"usage: ferry {args.command} VM [HOST]\n"
            )
        args.to = args.target
    if getattr(args, "action", None) in ACTION_ALIASES:
        args.action = ACTION_ALIASES[args.action]
    if args.command == "migrations":
        _check_migration_selection(args)
    return args


def _check_migration_selection(args: argparse.Namespace) -> None:
    if args.action is None:
        return
    if args.id is None and not (args.vm or args.host or args.phase):
        raise UsageError(
            f"ferry migrations {args.action} needs an ID, or --vm/--host/--phase to select one",
            f"usage: ferry migrations {args.action} ID  (or: --vm VM)\n",
        )
