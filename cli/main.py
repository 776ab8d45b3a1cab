"""`ferry`: the operator's command line. Thin: it talks only to the coordinator.

Exit status: 0 success; 1 the migration ended without success (Failed, Cancelled, RolledBack) or the
preflight found blockers; 2 the request was refused (bad input, unknown VM/host, busy VM);
3 the coordinator could not be reached or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from ferry.cli import render
from ferry.cli.config import coordinator_addresses
from ferry.errors import FerryError, Unavailable
from ferry.rpc import create_channel, from_rpc_error, serving
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb

RETRIES_ACROSS_REPLICAS = 20
FINAL = {cpb.PHASE_SUCCEEDED, cpb.PHASE_FAILED, cpb.PHASE_CANCELLED, cpb.PHASE_ROLLED_BACK}


class Usage(FerryError):
    caller_fault = True
    default_reason = "USAGE"


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or ():
        src, sep, dst = v.partition("=")
        if not sep or not src or not dst:
            raise Usage(f"{flag} takes OLD=NEW, got {v!r}", hint=f"e.g. {flag} br-guest=br-vm")
        out[src] = dst
    return out


def build_options(a: argparse.Namespace) -> tpb.MigrationOptions:
    """virsh-style flags -> MigrationOptions. Without --persistent/--undefinesource the definition
    moves with the VM (both on), as in Nova; naming either one selects exactly the named ones."""
    if a.copy_storage_all and a.copy_storage_inc:
        raise Usage(
            "--copy-storage-all and --copy-storage-inc exclude each other",
            hint="pick one: all copies every disk, inc copies only the top layer",
        )
    storage = tpb.STORAGE_MODE_UNSPECIFIED
    if a.copy_storage_all:
        storage = tpb.STORAGE_MODE_COPY_ALL
    elif a.copy_storage_inc:
        storage = tpb.STORAGE_MODE_COPY_INC
    elif a.shared_storage:
        storage = tpb.STORAGE_MODE_SHARED
    explicit = a.persistent or a.undefinesource
    disks = [d for d in (a.migrate_disks or "").split(",") if d]
    if a.postcopy_on_stall and not a.postcopy:
        raise Usage("--postcopy-on-stall needs --postcopy", hint="add --postcopy")
    return tpb.MigrationOptions(
        offline=a.offline,
        storage=storage,
        migrate_disks=disks,
        persist_dest=a.persistent if explicit else True,
        undefine_source=a.undefinesource if explicit else True,
        bandwidth_mibps=a.bandwidth or 0,
        max_downtime_ms=a.max_downtime or 0,
        auto_converge=a.auto_converge,
        allow_postcopy=a.postcopy,
        unsafe=a.unsafe,
        completion_timeout_s=a.timeout or 0,
        postcopy_on_stall=a.postcopy_on_stall,
    )


def build_mapping(a: argparse.Namespace) -> tpb.HostMapping:
    return tpb.HostMapping(
        bridges=_pairs(a.map_bridge, "--map-bridge"),
        networks=_pairs(a.map_network, "--map-network"),
        path_prefixes=_pairs(a.map_path, "--map-path"),
    )


def _add_migration_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("vm", help="VM name or UUID")
    p.add_argument("--to", required=True, metavar="HOST", help="target host")
    p.add_argument("--offline", action="store_true", help="migrate the definition only (VM not running)")
    p.add_argument("--copy-storage-all", action="store_true", help="copy local disks to the target")
    p.add_argument(
        "--copy-storage-inc",
        action="store_true",
        help="copy only the top image layer; backing files exist on the target",
    )
    p.add_argument(
        "--shared-storage",
        action="store_true",
        help="disks are on shared storage (default: decided from the inventory)",
    )
    p.add_argument("--migrate-disks", metavar="vda,vdb", help="only these disks are copied")
    p.add_argument("--persistent", action="store_true", help="define the VM on the target")
    p.add_argument("--undefinesource", action="store_true", help="undefine the VM on the source")
    p.add_argument("--bandwidth", type=int, metavar="MiB/s")
    p.add_argument("--max-downtime", type=int, metavar="ms")
    p.add_argument("--auto-converge", action="store_true")
    p.add_argument("--postcopy", action="store_true", help="allow switching to post-copy")
    p.add_argument("--postcopy-on-stall", action="store_true", help="switch to post-copy when pre-copy stalls")
    p.add_argument("--unsafe", action="store_true", help="skip libvirt's cache-mode/storage safety check")
    p.add_argument("--timeout", type=int, metavar="s", help="abort the migration after this long")
    p.add_argument("--map-bridge", action="append", metavar="SRC=DST")
    p.add_argument("--map-network", action="append", metavar="SRC=DST")
    p.add_argument("--map-path", action="append", metavar="OLD=NEW")
    p.add_argument(
        "--policy", default="", metavar="NAME", help="convergence policy (see `ferry policies`); flags go on top"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry", description="Live-migrate VMs across a KVM/libvirt fleet.")
    p.add_argument(
        "--coordinator",
        metavar="ADDR",
        help="coordinator address (HOST:PORT or unix:PATH); default from $FERRY_COORDINATOR "
        "or ~/.config/ferry/cli.toml (written by ferry-lab up)",
    )
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")
    p.add_argument("--rpc-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("hosts", help="list hosts and their agents")
    vms = sub.add_parser("vms", help="list VMs across the fleet")
    vms.add_argument("--host")
    pre = sub.add_parser("preflight", help="check a migration without touching anything")
    _add_migration_flags(pre)
    mig = sub.add_parser("migrate", help="migrate a VM (live by default) and wait with a progress bar")
    _add_migration_flags(mig)
    mig.add_argument("--priority", type=int, default=0)
    mig.add_argument("--idempotency-key", help="default: a new random key")
    mig.add_argument("--no-wait", action="store_true", help="print the migration ID and return")
    ms = sub.add_parser("migrations", help="list, show, watch or cancel migrations")
    ms_sub = ms.add_subparsers(dest="action")
    ms.add_argument("--phase", action="append", help="filter by phase (repeatable), e.g. Migrating")
    ms.add_argument("--host")
    ms.add_argument("--vm")
    ms.add_argument("--limit", type=int, default=0)
    for name in ("show", "watch", "cancel"):
        s = ms_sub.add_parser(name)
        s.add_argument("id")
    tune = ms_sub.add_parser("tune", help="change a running migration (read back from libvirt)")
    tune.add_argument("id")
    tune.add_argument("--bandwidth", type=int, metavar="MiB/s")
    tune.add_argument("--max-downtime", type=int, metavar="ms")
    ms_sub.add_parser("force-complete", help="finish now: post-copy if allowed, else pause and finish").add_argument(
        "id"
    )
    ms_sub.add_parser("postcopy", help="switch a running migration to post-copy").add_argument("id")
    sub.add_parser("policies", help="list the convergence policies and the rules choosing them")
    return p


def _phase_from_name(name: str) -> str:
    """A phase as the CLI spells it (``RolledBack``, ``rolled-back``) -> its protobuf name (``PHASE_ROLLED_BACK``)."""
    wanted = name.replace("-", "").replace("_", "").lower()
    for pb_name, value in cpb.Phase.items():
        if value and render.phase_name(value).lower() == wanted:
            return pb_name
    choices = ", ".join(render.phase_name(v) for v in cpb.Phase.values() if v)
    raise Usage(f"unknown phase {name!r}", hint=f"one of {choices}")


class Cli:
    def __init__(self, stub: cgrpc.CoordinatorStub, args: argparse.Namespace) -> None:
        self.stub = stub
        self.a = args
        self.json = args.output == "json"
        self.timeout = args.rpc_timeout

    def emit(self, message: Any, text: str) -> None:
        if self.json:
            print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2))
        else:
            print(text)

    async def hosts(self) -> int:
        resp = await self.stub.ListHosts(cpb.ListHostsRequest(), timeout=self.timeout)
        rows = [
            [
                h.name,
                "up" if h.available else "DOWN",
                h.address,
                h.facts.cpu_model,
                f"{render.size(h.facts.memory_free_bytes)}/{render.size(h.facts.memory_total_bytes)}",
                h.domains,
                f"{h.migrations_out}/{h.migrations_in}",
                ",".join(h.facts.bridges),
            ]
            for h in resp.hosts
        ]
        self.emit(resp, render.table(("HOST", "STATE", "AGENT", "CPU", "MEM FREE", "VMS", "OUT/IN", "BRIDGES"), rows))
        return 0

    async def vms(self) -> int:
        resp = await self.stub.ListVMs(cpb.ListVMsRequest(host=self.a.host or ""), timeout=self.timeout)
        rows = [
            [
                v.domain.name,
                v.host,
                tpb.DomainState.Name(v.domain.state).removeprefix("DOMAIN_STATE_").lower(),
                render.size(v.domain.memory_bytes),
                v.domain.vcpus,
                ",".join(f"{d.target}{'(shared)' if d.shared else ''}" for d in v.domain.disks),
                ",".join(n.source for n in v.domain.nics),
                v.migration_id,
            ]
            for v in resp.vms
        ]
        self.emit(resp, render.table(("VM", "HOST", "STATE", "MEMORY", "VCPUS", "DISKS", "NETS", "MIGRATION"), rows))
        return 0

    async def preflight(self) -> int:
        req = cpb.PreflightRequest(
            vm=self.a.vm,
            target_host=self.a.to,
            options=build_options(self.a),
            mapping=build_mapping(self.a),
            policy=self.a.policy,
        )
        resp = await self.stub.Preflight(req, timeout=self.timeout)
        if resp.ok:
            lines = [f"OK: {self.a.vm} can migrate {resp.source_host} -> {self.a.to}"]
        else:
            lines = [f"BLOCKED: {self.a.vm} cannot migrate {resp.source_host or '?'} -> {self.a.to}:"]
            for b in resp.blockers:
                lines.append(f"  {b.reason}: {b.message}")
                if b.hint:
                    lines.append(f"    fix: {b.hint}")
        lines += [f"  warning: {w}" for w in resp.warnings]
        for d in resp.disks:
            lines.append(
                f"  disk {d.target}: {d.source} -> {d.destination or d.source}"
                f" ({'copy' if d.copy else 'shared'}, {render.size(d.virtual_size)})"
            )
        lines += render.prediction_lines(resp.policy, resp.prediction)
        self.emit(resp, "\n".join(lines))
        return 0 if resp.ok else 1

    async def migrate(self) -> int:
        req = cpb.SubmitMigrationRequest(
            vm=self.a.vm,
            target_host=self.a.to,
            options=build_options(self.a),
            mapping=build_mapping(self.a),
            priority=self.a.priority,
            idempotency_key=self.a.idempotency_key,
            policy=self.a.policy,
        )
        m = await self.stub.SubmitMigration(req, timeout=self.timeout)
        if self.a.no_wait:
            self.emit(m, m.id)
            return 0
        if not self.json:
            print(f"migration {m.id}: {m.vm} {m.source_host} -> {m.target_host}", flush=True)
            print("\n".join(render.prediction_lines(m.policy, m.prediction)), flush=True)
        return await self._follow(m.id)

    async def _follow(self, migration_id: str) -> int:
        """Watch until final; a progress bar on a terminal, phase lines otherwise."""
        tty = sys.stdout.isatty() and not self.json
        last: cpb.Migration | None = None
        last_phase = None
        shown = 0.0
        async for m in self.stub.WatchMigration(cpb.WatchMigrationRequest(id=migration_id)):
            last = m
            if self.json:
                continue
            if m.phase != last_phase:
                if tty and last_phase is not None:
                    print()
                reason = m.history[-1].reason if m.history else ""
                print(f"{render.phase_name(m.phase)}" + (f": {reason}" if reason else ""), flush=True)
                last_phase = m.phase
            elif m.HasField("progress") and m.phase == cpb.PHASE_MIGRATING:
                shown = max(shown, render.fraction(m.progress))
                line = "  " + render.progress_bar(m.progress, at_least=shown)
                print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            if m.phase in FINAL:
                break
        if last is None:
            raise FerryError(f"the watch of {migration_id} ended without news", reason="WATCH_ENDED")
        if tty:
            print()
        self.emit(last, render.migration_detail(last))
        return 0 if last.phase == cpb.PHASE_SUCCEEDED else 1

    async def migrations(self) -> int:
        action = self.a.action
        if action == "show":
            m = await self.stub.GetMigration(cpb.GetMigrationRequest(id=self.a.id), timeout=self.timeout)
            self.emit(m, render.migration_detail(m))
            return 0
        if action == "watch":
            return await self._follow(self.a.id)
        if action == "cancel":
            m = await self.stub.CancelMigration(cpb.CancelMigrationRequest(id=self.a.id), timeout=self.timeout)
            self.emit(m, f"cancel requested for {m.id} (phase {render.phase_name(m.phase)})")
            return 0
        if action in ("tune", "force-complete", "postcopy"):
            return await self.control(action)
        req = cpb.ListMigrationsRequest(
            phases=[_phase_from_name(p) for p in self.a.phase or ()],
            host=self.a.host or "",
            vm=self.a.vm or "",
            limit=self.a.limit,
        )
        resp = await self.stub.ListMigrations(req, timeout=self.timeout)
        self.emit(resp, render.table(render.MIGRATION_HEADERS, [render.migration_line(m) for m in resp.migrations]))
        return 0

    async def control(self, action: str) -> int:
        return await _control(self, action)

    async def policies(self) -> int:
        return await _policies(self)


async def _control(cli: Cli, action: str) -> int:
    """`ferry migrations tune|force-complete|postcopy ID`: ControlMigration, who asks sent along."""
    req = cpb.ControlMigrationRequest(
        id=cli.a.id, force_complete=action == "force-complete", start_postcopy=action == "postcopy"
    )
    if action == "tune":
        if cli.a.max_downtime is None and cli.a.bandwidth is None:
            raise Usage("tune needs --max-downtime and/or --bandwidth", hint="e.g. --max-downtime 500")
        if cli.a.max_downtime is not None:
            req.max_downtime_ms = cli.a.max_downtime
        if cli.a.bandwidth is not None:
            req.bandwidth_mibps = cli.a.bandwidth
    resp = await cli.stub.ControlMigration(req, timeout=cli.timeout, metadata=((USER_METADATA, _user()),))
    cli.emit(
        resp,
        f"{resp.migration.id}: {resp.done}; libvirt now reads max downtime {resp.max_downtime_ms} ms, "
        f"bandwidth {resp.bandwidth_mibps} MiB/s",
    )
    return 0


USER_METADATA = "x-ferry-user"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def _policies(cli: Cli) -> int:
    resp = await cli.stub.ListPolicies(cpb.ListPoliciesRequest(), timeout=cli.timeout)
    cli.emit(resp, render.policies(resp))
    return 0


def _report(err: FerryError, as_json: bool) -> int:
    if as_json:
        print(
            json.dumps(
                {"error": {"reason": err.reason, "message": err.message, "hint": err.hint, "code": err.code.name}},
                indent=2,
            )
        )
    else:
        print(f"ferry: {err.reason}: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"  fix: {err.hint}", file=sys.stderr)
    return 2 if err.caller_fault else 3


async def pick_coordinator(addresses: Sequence[str], timeout_s: float = 2.0) -> str:
    """The first replica that answers a health check; with one address, that address unchecked."""
    if len(addresses) == 1:
        return addresses[0]
    for address in addresses:
        async with create_channel(address) as channel:
            if await serving(channel, timeout_s=timeout_s):
                return address
    raise Unavailable(
        f"no coordinator answers at {', '.join(addresses)}",
        reason="UNREACHABLE",
        hint="is the coordinator running? see `ferry-lab status` or pass --coordinator",
    )


async def run(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    as_json = args.output == "json"
    if args.command == "migrate" and not args.idempotency_key:
        # fixed before the first call, so a retry on another replica returns the same migration
        args.idempotency_key = uuid.uuid4().hex
    try:
        addresses = coordinator_addresses(args.coordinator)
        retries = RETRIES_ACROSS_REPLICAS if len(addresses) > 1 else 0
        while True:
            address = await pick_coordinator(addresses)
            try:
                async with create_channel(address) as channel:
                    cli = Cli(cgrpc.CoordinatorStub(channel), args)
                    command: Callable[[], Awaitable[int]] = getattr(cli, args.command)
                    return await command()
            except grpc.RpcError as exc:
                # a replica died under us (no Ferry error attached): run the command again on
                # another one; every command is safe to repeat (submit by idempotency key)
                if retries > 0 and from_rpc_error(exc).reason == "UNREACHABLE":
                    retries -= 1
                    if not as_json:
                        print(f"\nferry: lost the coordinator at {address}; trying the others", file=sys.stderr)
                    await asyncio.sleep(1.0)
                    continue
                raise
    except grpc.RpcError as exc:
        err = from_rpc_error(exc)
        if err.reason == "UNREACHABLE":
            err.hint = err.hint or "is the coordinator running? see `ferry-lab status` or pass --coordinator"
        return _report(err, as_json)
    except FerryError as err:
        return _report(err, as_json)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        sys.exit(asyncio.run(run(argv)))
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        # the reader went away (`ferry ... | head`): not an error of ours; the migration goes on
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
