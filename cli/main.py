"""`ferry`: the operator's command line. Thin: it talks only to the coordinator.

Commands, options, exit status and environment: ``cli/args.py`` (and ``ferry --help``); the
JSON it prints with ``-o json``: ``cli/jsonout.py`` and docs/cli-json.md; drawing: ``render.py``
(plain text) and ``live.py`` (rich, on a terminal); ``ferry top``: ``top.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import getpass
import json
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from ferry.cli import jsonout, live, render
from ferry.cli.args import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_UNSUCCESSFUL,
    EXIT_USAGE,
    UsageError,
    parse,
)
from ferry.cli.args import parser as parser
from ferry.cli.config import client_tls, coordinator_addresses
from ferry.errors import FerryError, InvalidArgument, NotFound, Unavailable
from ferry.rpc import SERVER_BUSY, Tls, create_channel, from_rpc_error, serving
from ferry.v1 import coordinator_pb2 as cpb
from ferry.v1 import coordinator_pb2_grpc as cgrpc
from ferry.v1 import types_pb2 as tpb

RETRIES_ACROSS_REPLICAS = 20
BUSY_BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # pauses before each try again when the coordinator is busy
FINAL = render.FINAL
UNREACHABLE_HINT = "is the coordinator running? see `ferry-lab status` or pass --coordinator"
# after a watch broke (its coordinator restarting or failing over, its store watch ended): the
# pauses before each try to read the record again and watch on, each jittered (~15 s in all)
WATCH_AGAIN_S = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
# why a watch broke that watching again may mend (see _broken_watch); of them, those its coordinator answered
WATCH_AGAIN_REASONS = frozenset({"UNREACHABLE", "TIMEOUT", "WATCH_FAILED", "STORE_UNAVAILABLE", SERVER_BUSY})
ANSWERED = frozenset({"WATCH_FAILED", "WATCH_ENDED", "STORE_UNAVAILABLE"})

R = TypeVar("R", cpb.Migration, cpb.Drain)
M = TypeVar("M", bound=Message)


class StoreWatch:
    """While a migration's watch is silent for ``quiet_s``, asks ``probe`` (its GetMigration) every
    ``every_s``: a coordinator that cannot read etcd (STORE_UNAVAILABLE) is said once through
    ``say``, and its end once (``heard``). Before, ``ferry migrate`` went silent through an etcd
    outage, the job going on on its hosts, and said nothing of why."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        say: Callable[[str], None],
        *,
        quiet_s: float = 10.0,
        every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe, self.say, self.quiet_s, self.every_s, self.clock = probe, say, quiet_s, every_s, clock
        self.last = clock()
        self.outage = False

    def heard(self) -> None:
        self.last = self.clock()
        if self.outage:
            self.outage = False
            self.say("  the coordinator reads etcd again")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            if self.clock() - self.last < self.quiet_s:
                continue
            try:
                await self.probe()
            except FerryError as err:
                if err.reason == "STORE_UNAVAILABLE" and not self.outage:
                    self.outage = True
                    self.say(
                        f"  the coordinator cannot read etcd ({err.reason}: {err.message}); the job goes on "
                        "on its hosts and this waits for etcd (Ctrl-C leaves the migration running)"
                    )


class Usage(InvalidArgument):
    """A command line that parses but does not make sense (contradictory flags, a bad pair):
    exit 64 like any usage error; nothing was sent."""

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
    moves with the VM (both on, the API's default), as in Nova; naming either one selects exactly
    the named ones, as in virsh: --persistent alone keeps the source's definition
    (keep_source_definition), --undefinesource alone leaves the target transient (transient_target).
    A transient VM stays transient unless --persistent is named (persist_transient), as in virsh."""
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
        keep_source_definition=explicit and not a.undefinesource,
        transient_target=explicit and not a.persistent,
        persist_transient=a.persistent,
        bandwidth_mibps=a.bandwidth or 0,
        max_downtime_ms=a.max_downtime or 0,
        auto_converge=a.auto_converge,
        allow_postcopy=a.postcopy,
        unsafe=a.unsafe,
        completion_timeout_s=a.timeout or 0,
        postcopy_on_stall=a.postcopy_on_stall,
    )


def drain_options(a: argparse.Namespace) -> tpb.MigrationOptions:
    """`ferry drain`'s flags of every migration: live, the definition moving with each VM, every
    writable local disk copied unless a storage flag says otherwise (those are per VM: not here)."""
    per_vm = {"offline": False, "migrate_disks": None, "persistent": False, "undefinesource": False}
    return build_options(argparse.Namespace(**{**vars(a), **per_vm}))


def build_mapping(a: argparse.Namespace) -> tpb.HostMapping:
    return tpb.HostMapping(
        bridges=_pairs(a.map_bridge, "--map-bridge"),
        networks=_pairs(a.map_network, "--map-network"),
        path_prefixes=_pairs(a.map_path, "--map-path"),
    )


def matches(m: cpb.Migration, a: argparse.Namespace) -> bool:
    """Whether a migration passes the ``--phase/--host/--vm`` filters given."""
    return (
        (not a.phase or render.phase_name(m.phase) in a.phase)
        and (not a.host or a.host in (m.source_host, m.target_host))
        and (not a.vm or a.vm in (m.vm, m.vm_uuid))
    )


def interrupted_note(migration_id: str) -> str:
    return f"migration {migration_id} continues; `ferry migrations cancel {migration_id}` stops it"


async def every_page(call: Callable[..., Awaitable[Any]], req: Any, into: M, field: str, timeout: float) -> M:
    """``into`` with the ``field`` items of every page a List ``call`` answers from ``req`` on
    (the server pages at 500; ``req.page_token`` follows ``next_page_token`` until it is empty)."""
    while True:
        page = await call(req, timeout=timeout)
        getattr(into, field).extend(getattr(page, field))
        req.page_token = page.next_page_token
        if not req.page_token:
            return into


class Cli:
    """The commands, over ``stub`` to the coordinator at ``address``. ``addresses`` (every one
    configured), ``tls`` and ``channels`` (where a channel opened to another one is closed at the
    end) let a command that waits -- a watch, ``ferry top`` -- go on with another coordinator
    when this one is lost."""

    def __init__(
        self,
        stub: cgrpc.CoordinatorStub,
        args: argparse.Namespace,
        address: str = "",
        *,
        addresses: Sequence[str] = (),
        tls: Tls | None = None,
        channels: contextlib.AsyncExitStack | None = None,
    ) -> None:
        self.stub = stub
        self.a = args
        self.json = args.output == "json"
        self.timeout = args.rpc_timeout
        self.address = address
        self.addresses = list(addresses) or [address]
        self.tls = tls
        self.channels = channels
        self.screen = live.Screen()

    async def _reconnect(self) -> tuple[cgrpc.CoordinatorStub, str]:
        """The first configured coordinator that answers a health check takes the calls over
        (this one again when it answers first); raises Unavailable when none answers."""
        address = await pick_coordinator(self.addresses, tls=self.tls)
        if address != self.address and self.channels is not None:
            channel = await self.channels.enter_async_context(create_channel(address, tls=self.tls))
            self.stub, self.address = cgrpc.CoordinatorStub(channel), address
        return self.stub, self.address

    async def _records(
        self,
        watch: Callable[[], AsyncIterable[R]],
        read: Callable[[], Awaitable[R]],
        final: Callable[[R], bool],
        say: Callable[[str], None],
        what: str,
        again: str,
    ) -> AsyncGenerator[R, None]:
        """Each record ``watch`` streams, until a final one. When the watch breaks where watching
        again may mend it (:func:`_broken_watch`: a coordinator restarting or failing over, its
        store watch ended) or ends before the record is final, the record is ``read`` again and
        watched on, after a pause before each try (WATCH_AGAIN_S; from the first pause again once
        news came), from the first configured coordinator that answers when this one is lost.
        ``what`` (``migration m-1``) runs in the coordinator, not in this command: when no try
        succeeds, the Unavailable raised says it goes on and that ``again`` follows it again."""
        last: R | None = None
        tries = 0
        err: FerryError
        while True:
            try:
                async for record in watch():
                    if record != last:
                        tries = 0  # news: the next break gets every try again
                    last = record
                    yield record
                    if final(record):
                        return
                err = Unavailable(f"the watch of {what} ended before it did", reason="WATCH_ENDED")
            except grpc.RpcError as exc:
                if (broken := _broken_watch(exc)) is None:
                    raise
                err = broken
            say(f"  the watch of {what} broke ({err.reason}: {err.message}); reading it again")
            while True:  # read again until a coordinator answers, or no try is left
                if tries >= len(WATCH_AGAIN_S):
                    raise _watch_lost(err, what, again)
                await asyncio.sleep(WATCH_AGAIN_S[tries] * random.uniform(0.5, 1.5))
                tries += 1
                try:
                    if len(self.addresses) > 1 and err.reason not in ANSWERED:  # lost: maybe another answers
                        before = self.address
                        await self._reconnect()
                        if self.address != before:
                            say(f"  following {what} from the coordinator at {self.address}")
                    record = await read()
                except grpc.RpcError as exc:
                    if (broken := _broken_watch(exc)) is None:
                        raise
                    err = broken
                    continue
                except Unavailable as exc:  # no configured coordinator answers
                    err = exc
                    continue
                break
            if record != last:
                tries = 0
            last = record
            yield record
            if final(record):
                return

    def emit(self, message: Message, text: Callable[[], None] | str) -> None:
        """The message as JSON (-o json), else the text (or a function that prints it)."""
        if self.json:
            self.screen.text(json.dumps(jsonout.to_json(message), indent=2))
        elif isinstance(text, str):
            self.screen.text(text)
        else:
            text()

    async def _forget(self) -> int:
        # run() keeps ``args`` across a retry on another replica: a replica lost after it forgot
        # the host leaves a retry that finds the host unknown -- the first call's work, not a typo
        sent_before = getattr(self.a, "forget_sent", False)
        self.a.forget_sent = True
        try:
            f = await self.stub.ForgetHost(cpb.ForgetHostRequest(host=self.a.host), timeout=self.timeout)
        except grpc.RpcError as exc:
            reason = from_rpc_error(exc).reason
            if reason == SERVER_BUSY:
                self.a.forget_sent = sent_before  # turned away before the coordinator took it up
            if not (sent_before and reason == "HOST_UNKNOWN"):
                raise
            f = cpb.ForgetHostResponse(host=self.a.host)
            self.emit(f, f"{f.host} forgotten (by the coordinator that went away before it answered)")
            return EXIT_OK
        self.emit(f, f"{f.host} forgotten; no longer listed: {', '.join(f.vms) or 'no VM'}")
        return EXIT_OK

    async def hosts(self) -> int:
        if self.a.action == "cordon":
            h = await self.stub.CordonHost(
                cpb.CordonHostRequest(host=self.a.host, reason=self.a.reason), timeout=self.timeout
            )
            self.emit(h, render.cordoned(h, self.a.reason or ""))
            return EXIT_OK
        if self.a.action == "uncordon":
            h = await self.stub.UncordonHost(cpb.UncordonHostRequest(host=self.a.host), timeout=self.timeout)
            self.emit(h, f"{h.name} is back in service")
            return EXIT_OK
        if self.a.action == "forget":
            return await self._forget()
        resp = await every_page(
            self.stub.ListHosts, cpb.ListHostsRequest(), cpb.ListHostsResponse(), "hosts", self.timeout
        )
        rows = [
            [
                h.name,
                ("up" if h.available else "DOWN") + (",cordoned" if h.cordoned else ""),
                h.address,
                h.facts.cpu_model,
                f"{render.size(h.facts.memory_free_bytes)}/{render.size(h.facts.memory_total_bytes)}",
                h.domains,
                f"{h.migrations_out}/{h.migrations_in}",
                ",".join(h.facts.bridges),
                ((f"{h.drain_id}: " if h.drain_id else "") + h.cordon_reason) if h.cordoned else "",
            ]
            for h in resp.hosts
        ]
        headers: tuple[str, ...] = ("HOST", "STATE", "AGENT", "CPU", "MEM FREE", "VMS", "OUT/IN", "BRIDGES", "CORDON")
        if any(h.bandwidth_budget_mibps for h in resp.hosts):  # MiB/s out/in of the host's budget
            headers = (*headers[:7], "MIB/S OUT/IN", *headers[7:])
            for row, h in zip(rows, resp.hosts, strict=True):
                row.insert(7, render.bandwidth_use(h))
        self.emit(resp, lambda: self._hosts_table(headers, rows, resp.hosts))
        return EXIT_OK

    def _hosts_table(self, headers: tuple[str, ...], rows: list[list[object]], hosts: Sequence[cpb.HostStatus]) -> None:
        """The table, then why each host that is DOWN is, with what to check."""
        self.screen.table(headers, rows)
        for h in hosts:
            if not h.available and h.HasField("why_down"):
                self.screen.text(f"{h.name} DOWN: {h.why_down.reason}: {h.why_down.message}")
                if h.why_down.hint:
                    self.screen.text(f"  fix: {h.why_down.hint}")
        for line in [*render.migration_problems(hosts), *render.shared_host_uuids(hosts)]:
            self.screen.text(line)
        for line in render.api_levels(hosts):
            self.screen.text(line)

    async def vms(self) -> int:
        req = cpb.ListVMsRequest(host=self.a.host or "")
        resp = await every_page(self.stub.ListVMs, req, cpb.ListVMsResponse(), "vms", self.timeout)
        rows = [
            [
                v.domain.name,
                v.host,
                render.vm_state(v),
                render.size(v.domain.memory_bytes),
                v.domain.vcpus,
                ",".join(f"{d.target}{'(shared)' if d.shared else ''}" for d in v.domain.disks),
                ",".join(n.source for n in v.domain.nics),
                v.migration_id,
            ]
            for v in resp.vms
        ]
        headers = ("VM", "HOST", "STATE", "MEMORY", "VCPUS", "DISKS", "NETS", "MIGRATION")
        self.emit(resp, lambda: self.screen.table(headers, rows))
        return EXIT_OK

    async def preflight(self) -> int:
        req = cpb.PreflightRequest(
            vm=self.a.vm,
            target_host=self.a.to or "",
            options=build_options(self.a),
            mapping=build_mapping(self.a),
            policy=self.a.policy,
        )
        resp = await self.stub.Preflight(req, timeout=self.timeout)
        to = resp.target_host or self.a.to or "any host"
        lines = render.candidates(resp, self.a.vm) if not self.a.to else []
        if resp.ok:
            lines += [f"OK: {self.a.vm} can migrate {resp.source_host} -> {to}" + ("" if self.a.to else " (best)")]
        else:
            lines += [f"BLOCKED: {self.a.vm} cannot migrate {resp.source_host or '?'} -> {to}:"]
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
        return EXIT_OK if resp.ok else EXIT_UNSUCCESSFUL

    async def migrate(self) -> int:
        req = cpb.SubmitMigrationRequest(
            vm=self.a.vm,
            target_host=self.a.to or "",
            options=build_options(self.a),
            mapping=build_mapping(self.a),
            priority=self.a.priority,
            idempotency_key=self.a.idempotency_key,
            policy=self.a.policy,
        )
        m = await self.stub.SubmitMigration(req, timeout=self.timeout)
        if self.a.no_wait:
            self.emit(m, m.id)
            return EXIT_OK
        if not self.json:
            self.screen.text(f"migration {m.id}: {m.vm} {m.source_host} -> {m.target_host}{render.submitted_note(m)}")
        return await self._follow(m.id)

    async def _follow(self, migration_id: str) -> int:
        """Watch until final: a bar redrawn in place on a terminal, phase and progress lines
        otherwise, the final record at the end. Ctrl-C says the migration goes on."""
        try:
            last = await self._watch(migration_id)
        except asyncio.CancelledError:  # Ctrl-C (asyncio.run cancels us, then raises KeyboardInterrupt)
            print(f"\nferry: {interrupted_note(migration_id)}", file=sys.stderr, flush=True)
            raise
        self.emit(last, render.migration_detail(last))
        return EXIT_OK if last.phase == cpb.PHASE_SUCCEEDED else EXIT_UNSUCCESSFUL

    async def _watch(self, migration_id: str) -> cpb.Migration:
        last: cpb.Migration | None = None
        last_phase = None
        shown = 0.0
        before: tpb.MigrationProgress | None = None  # the job's previous figures, to measure its rate

        async def read() -> cpb.Migration:
            m: cpb.Migration = await self.stub.GetMigration(
                cpb.GetMigrationRequest(id=migration_id), timeout=self.timeout
            )
            return m

        async def probe() -> None:
            try:
                await read()
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        def watch() -> AsyncIterable[cpb.Migration]:
            stream: AsyncIterable[cpb.Migration] = self.stub.WatchMigration(cpb.WatchMigrationRequest(id=migration_id))
            return stream

        with self.screen.live(enabled=not self.json) as area:
            say: Callable[[str], None] = (lambda _: None) if self.json else area.line
            store = StoreWatch(probe, say)
            watchdog = asyncio.get_running_loop().create_task(store.run(), name="store watchdog")
            records = self._records(
                watch,
                read,
                lambda m: m.phase in FINAL,
                say,
                f"migration {migration_id}",
                f"`ferry migrations watch {migration_id}`",
            )
            try:
                async with contextlib.aclosing(records):
                    async for m in records:
                        store.heard()
                        last = m
                        if self.json:
                            pass
                        elif m.phase != last_phase:
                            reason = m.history[-1].reason if m.history else ""
                            area.line(render.phase_name(m.phase) + (f": {reason}" if reason else ""))
                            last_phase = m.phase
                        elif m.HasField("progress") and m.phase == cpb.PHASE_MIGRATING:
                            shown = max(shown, render.fraction(m.progress))
                            if area.enabled:
                                area.show(live.progress_line(m.progress, at_least=shown, previous=before))
                            else:
                                area.line("  " + render.progress_bar(m.progress, at_least=shown, previous=before))
                            before = m.progress
            finally:
                watchdog.cancel()
        if last is None:
            raise FerryError(f"the watch of {migration_id} ended without news", reason="WATCH_ENDED")
        return last

    async def _select(self) -> cpb.Migration:
        """The migration ``show|watch|cancel`` is about: by ID (which must pass the filters given
        with it), else the newest one passing the filters (for cancel: one not final)."""
        a = self.a
        if a.id:
            m: cpb.Migration = await self.stub.GetMigration(cpb.GetMigrationRequest(id=a.id), timeout=self.timeout)
            if not matches(m, a):
                raise InvalidArgument(
                    f"migration {m.id} is of {m.vm} ({render.phase_name(m.phase)}, "
                    f"{m.source_host} -> {m.target_host}): not what --vm/--host/--phase say",
                    reason="FILTER_MISMATCH",
                    hint="drop the filters, or drop the ID to pick the newest migration that matches them",
                )
            return m
        phases = [jsonout.phase_from_word(p) for p in a.phase or ()]
        if not phases and a.action == "cancel":
            phases = list(render.IN_FLIGHT)
        req = cpb.ListMigrationsRequest(phases=phases, host=a.host or "", vm=a.vm or "", limit=1)
        listed: cpb.ListMigrationsResponse = await self.stub.ListMigrations(req, timeout=self.timeout)
        found = listed.migrations
        if not found:
            raise NotFound(
                "no migration matches " + " ".join(_filter_words(a)),
                reason="MIGRATION_UNKNOWN",
                hint="`ferry migrations` lists them",
            )
        return found[0]

    async def migrations(self) -> int:
        action = self.a.action
        if action is not None:
            m = await self._select()
            if action == "show":
                self.emit(m, render.migration_detail(m))
                return EXIT_OK
            if action == "watch":
                return await self._follow(m.id)
            if action in ("tune", "force-complete", "postcopy"):
                return await self._control(action, m.id)
            m = await self.stub.CancelMigration(cpb.CancelMigrationRequest(id=m.id), timeout=self.timeout)
            self.emit(m, f"cancel requested for {m.id} (phase {render.phase_name(m.phase)})")
            return EXIT_OK
        req = cpb.ListMigrationsRequest(
            phases=[jsonout.phase_from_word(p) for p in self.a.phase or ()],
            host=self.a.host or "",
            vm=self.a.vm or "",
            limit=max(0, self.a.limit),
        )
        resp = await every_page(self.stub.ListMigrations, req, cpb.ListMigrationsResponse(), "migrations", self.timeout)
        rows = [render.migration_line(m) for m in resp.migrations]
        self.emit(resp, lambda: self.screen.table(render.MIGRATION_HEADERS, rows))
        return EXIT_OK

    # ------------------------------------------------------------------ drains

    async def drain(self) -> int:
        following = getattr(self.a, "drain_id", "")
        if following:  # submitted on a replica that died since: follow that drain, not a second one
            return await self._follow_drain(following)
        req = cpb.SubmitDrainRequest(
            host=self.a.host,
            targets=[t for t in (self.a.to or "").split(",") if t],
            max_parallel=self.a.max_parallel,
            policy=self.a.policy,
            reason=self.a.reason,
            dry_run=self.a.dry_run,
            options=drain_options(self.a),
        )
        d = await self.stub.SubmitDrain(req, timeout=self.timeout)
        if self.a.dry_run:  # a VM that fits nowhere or would not finish: the drain would not empty the host
            self.emit(d, render.drain_detail(d))
            failed = any(
                i.state == cpb.DRAIN_ITEM_STATE_FAILED or (i.state == cpb.DRAIN_ITEM_STATE_WAITING and i.problems)
                for i in d.items
            )
            return EXIT_UNSUCCESSFUL if failed else EXIT_OK
        if self.a.no_wait:
            self.emit(d, d.id)
            return EXIT_OK
        self.a.drain_id = d.id  # kept across a retry on another replica (run() keeps ``args``)
        if not self.json:
            self.screen.text(f"drain {d.id}: {d.host} cordoned, {d.vms_total} VM(s), {d.slots} at a time")
        return await self._follow_drain(d.id)

    async def _follow_drain(self, drain_id: str) -> int:
        """Watch until final: a bar redrawn in place on a terminal, a line per VM that moved (or
        could not) and progress lines otherwise; the final drain at the end. A watch that breaks
        is mended as a migration's (:meth:`_records`)."""
        last: cpb.Drain | None = None
        # printed: (VM, item state, attempt), and (VM, -1, how many hosts it failed on)
        told: set[tuple[str, int, int]] = set()
        printed = ""  # the last progress line printed (not on a terminal, a line only when it changes)

        async def read() -> cpb.Drain:
            d: cpb.Drain = await self.stub.GetDrain(cpb.GetDrainRequest(id=drain_id), timeout=self.timeout)
            return d

        def watch() -> AsyncIterable[cpb.Drain]:
            stream: AsyncIterable[cpb.Drain] = self.stub.WatchDrain(cpb.WatchDrainRequest(id=drain_id))
            return stream

        try:
            with self.screen.live(enabled=not self.json) as area:
                say: Callable[[str], None] = (lambda _: None) if self.json else area.line
                records = self._records(
                    watch,
                    read,
                    lambda d: d.state in render.DRAIN_FINAL,
                    say,
                    f"drain {drain_id}",
                    f"`ferry drains watch {drain_id}`",
                )
                async with contextlib.aclosing(records):
                    async for d in records:
                        last = d
                        if self.json:
                            continue
                        for i in d.items:
                            if i.tried and (i.vm, -1, len(i.tried)) not in told:  # an attempt failed there
                                told.add((i.vm, -1, len(i.tried)))
                                p = i.problems[-1] if i.problems else None
                                again = i.state in (cpb.DRAIN_ITEM_STATE_WAITING, cpb.DRAIN_ITEM_STATE_MIGRATING)
                                area.line(
                                    f"  {i.vm}: not to {i.tried[-1]}"
                                    + (f": {p.reason}: {p.message}" if p else "")
                                    + ("; placing it again" if again or i.state == cpb.DRAIN_ITEM_STATE_MOVED else "")
                                )
                            if i.state == cpb.DRAIN_ITEM_STATE_WAITING or (i.vm, i.state, i.attempts) in told:
                                continue
                            told.add((i.vm, i.state, i.attempts))
                            why = (
                                f" ({i.problems[-1].reason})"
                                if i.problems and i.state in (cpb.DRAIN_ITEM_STATE_FAILED, cpb.DRAIN_ITEM_STATE_SKIPPED)
                                else ""
                            )
                            area.line(f"  {i.vm}: {render.item_state_name(i.state)} -> {i.target_host or '?'}{why}")
                        bar = "  " + render.drain_bar(d)
                        if area.enabled:
                            area.show(bar)
                        elif bar != printed:
                            area.line(bar)
                            printed = bar
        except asyncio.CancelledError:  # Ctrl-C: the drain goes on
            print(f"\nferry: drain {drain_id} continues; `ferry drains cancel {drain_id}` stops it", file=sys.stderr)
            raise
        if last is None:
            raise FerryError(f"the watch of {drain_id} ended without news", reason="WATCH_ENDED")
        self.emit(last, render.drain_detail(last))
        return EXIT_OK if last.state == cpb.DRAIN_STATE_SUCCEEDED else EXIT_UNSUCCESSFUL

    async def drains(self) -> int:
        action, t = self.a.action, self.timeout
        if action == "watch":
            return await self._follow_drain(self.a.id)
        if action is not None:
            calls = {
                "show": (self.stub.GetDrain, cpb.GetDrainRequest),
                "pause": (self.stub.PauseDrain, cpb.PauseDrainRequest),
                "resume": (self.stub.ResumeDrain, cpb.ResumeDrainRequest),
                "cancel": (self.stub.CancelDrain, cpb.CancelDrainRequest),
            }
            call, message = calls[action]
            d = await call(message(id=self.a.id), timeout=t)
            done = {"pause": "paused", "resume": "resumed", "cancel": "cancel requested for"}
            name = render.drain_state_name(d.state)
            self.emit(d, render.drain_detail(d) if action == "show" else f"{done[action]} {d.id} ({name})")
            return EXIT_OK
        states = [f"DRAIN_STATE_{word.upper()}" for word in self.a.state or ()]
        req = cpb.ListDrainsRequest(host=self.a.host or "", states=states)
        resp = await every_page(self.stub.ListDrains, req, cpb.ListDrainsResponse(), "drains", t)
        rows = [render.drain_line(d) for d in resp.drains]
        self.emit(resp, lambda: self.screen.table(render.DRAIN_HEADERS, rows))
        return EXIT_OK

    async def _control(self, action: str, migration_id: str) -> int:
        """`ferry migrations tune|force-complete|postcopy`: ControlMigration, who asks sent along."""
        req = cpb.ControlMigrationRequest(
            id=migration_id, force_complete=action == "force-complete", start_postcopy=action == "postcopy"
        )
        if action == "tune":
            if self.a.max_downtime is None and self.a.bandwidth is None:
                raise Usage("tune needs --max-downtime and/or --bandwidth", hint="e.g. --max-downtime 500")
            if self.a.max_downtime is not None:
                req.max_downtime_ms = self.a.max_downtime
            if self.a.bandwidth is not None:
                req.bandwidth_mibps = self.a.bandwidth
        resp = await self.stub.ControlMigration(req, timeout=self.timeout, metadata=((USER_METADATA, _user()),))
        self.emit(
            resp,
            f"{resp.migration.id}: {resp.done}; libvirt now reads max downtime {resp.max_downtime_ms} ms, "
            f"bandwidth {resp.bandwidth_mibps} MiB/s",
        )
        return EXIT_OK

    async def policies(self) -> int:
        resp = await self.stub.ListPolicies(cpb.ListPoliciesRequest(), timeout=self.timeout)
        self.emit(resp, render.policies(resp))
        return EXIT_OK

    async def top(self) -> int:
        if self.a.iterations < 0 or self.a.finished < 0:
            raise Usage("--iterations and --finished take 0 or more", hint="e.g. --iterations 1")
        from ferry.cli.top import run as run_top  # only this command needs it

        reconnect = self._reconnect if len(self.addresses) > 1 else None
        return await run_top(self.stub, self.a, self.screen, self.address, self.timeout, reconnect)


USER_METADATA = "x-ferry-user"  # who asks, as the CLI says (the coordinator records it with the peer)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _filter_words(a: argparse.Namespace) -> list[str]:
    words = [f"--phase {p}" for p in a.phase or ()]
    words += [f"--host {a.host}"] if a.host else []
    return words + ([f"--vm {a.vm}"] if a.vm else [])


def exit_code(err: FerryError) -> int:
    """Usage errors 64, other refusals (the caller's fault) 2, the rest (unreachable, busy, ours) 3."""
    if isinstance(err, Usage):
        return EXIT_USAGE
    if err.reason == SERVER_BUSY:  # RESOURCE_EXHAUSTED, yet nothing the caller asked was wrong
        return EXIT_UNREACHABLE
    return EXIT_REFUSED if err.caller_fault else EXIT_UNREACHABLE


def _report(err: FerryError, as_json: bool, *, one_line: bool = False) -> int:
    """The error on stderr, or as JSON on stdout (``one_line``: `ferry top`'s, whose output is JSON Lines)."""
    if as_json:
        print(
            json.dumps(
                jsonout.error_json(err.reason, err.message, err.hint, err.code.name), indent=None if one_line else 2
            )
        )
    else:
        print(f"ferry: {err.reason}: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"  fix: {err.hint}", file=sys.stderr)
    return exit_code(err)


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether a command line that did not parse asked for JSON (its error is then JSON too)."""
    words = list(argv)
    for word, nxt in zip(words, [*words[1:], ""], strict=True):
        option, eq, value = word.partition("=")
        if option.startswith("-o") and not option.startswith("--") and len(option) > 2:  # -ojson
            option, value, eq = "-o", option[2:], "="
        # argparse takes -o, --output and any unambiguous start of it (--out), the value after = or next
        if option == "-o" or (len(option) > 2 and "--output".startswith(option)):
            if (value if eq else nxt).lower() == "json":
                return True
    return False


def _usage_error(exc: UsageError, argv: Sequence[str]) -> int:
    if _wants_json(argv):
        print(json.dumps(jsonout.error_json("USAGE", exc.message, "see `ferry --help`", "INVALID_ARGUMENT"), indent=2))
    sys.stderr.write(exc.usage)
    print(f"ferry: error: {exc.message}", file=sys.stderr)
    return EXIT_USAGE


async def pick_coordinator(addresses: Sequence[str], timeout_s: float = 2.0, tls: Tls | None = None) -> str:
    """The first replica that answers a health check; with one address, that address unchecked."""
    if len(addresses) == 1:
        return addresses[0]
    for address in addresses:
        async with create_channel(address, tls=tls) as channel:
            if await serving(channel, timeout_s=timeout_s):
                return address
    raise Unavailable(f"no coordinator answers at {', '.join(addresses)}", reason="UNREACHABLE", hint=UNREACHABLE_HINT)


def completion(shell: str) -> str:
    """The completion script for ``shell`` (``ferry completion bash|zsh``)."""
    import shtab

    return str(shtab.complete(parser(aliases=False), shell=shell))


async def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse(argv)
    except UsageError as exc:
        return _usage_error(exc, argv)
    as_json = args.output == "json"
    if args.command == "completion":
        sys.stdout.write(completion(args.shell))
        return EXIT_OK
    if args.command == "migrate" and not args.idempotency_key:
        # fixed before the first call, so a retry on another replica returns the same migration
        args.idempotency_key = uuid.uuid4().hex
    try:
        if args.command in ("migrate", "preflight"):
            build_options(args)  # a contradictory command line is a usage error before anything else
            build_mapping(args)
        if args.command == "drain":
            drain_options(args)
        addresses = coordinator_addresses(args.coordinator)
        tls = client_tls(args.ca, args.cert, args.key, insecure=args.insecure)
        retries = RETRIES_ACROSS_REPLICAS if len(addresses) > 1 else 0
        busy = 0
        while True:
            address = await pick_coordinator(addresses, tls=tls)
            try:
                async with create_channel(address, tls=tls) as channel, contextlib.AsyncExitStack() as others:
                    stub = cgrpc.CoordinatorStub(channel)
                    cli = Cli(stub, args, address, addresses=addresses, tls=tls, channels=others)
                    command: Callable[[], Awaitable[int]] = getattr(cli, args.command)
                    return await command()
            except grpc.RpcError as exc:
                # a replica died under us (no Ferry error attached): run the command again on
                # another one; every command is safe to repeat (a migration is submitted by its
                # idempotency key; a drain already submitted is followed by its id; a host forgotten by the
                # lost replica is not reported unknown)
                reason = from_rpc_error(exc).reason
                # a replica shutting down may cancel its calls (RST_STREAM) rather than go away
                # (GOAWAY: UNAVAILABLE); no Ferry error has the code CANCELLED
                lost = reason == "UNREACHABLE" or (_code(exc) == grpc.StatusCode.CANCELLED and not _being_cancelled())
                if retries > 0 and lost:
                    retries -= 1
                    if not as_json:
                        print(f"\nferry: lost the coordinator at {address}; trying the others", file=sys.stderr)
                    await asyncio.sleep(1.0)
                    continue
                # gRPC turned the call away before the coordinator took it up (too many calls at
                # once): again after a pause, as the error's hint tells a script to do
                if busy < len(BUSY_BACKOFF_S) and reason == SERVER_BUSY and not _being_cancelled():
                    if not as_json:
                        print(f"ferry: the coordinator at {address} is busy; trying again", file=sys.stderr)
                    await asyncio.sleep(BUSY_BACKOFF_S[busy] * random.uniform(0.5, 1.5))
                    busy += 1
                    continue
                raise
    except grpc.RpcError as exc:
        err = from_rpc_error(exc)
        if err.reason == "UNREACHABLE":
            err.hint = err.hint or UNREACHABLE_HINT
        return _report(err, as_json, one_line=args.command == "top")
    except FerryError as err:
        return _report(err, as_json, one_line=args.command == "top")


def _broken_watch(exc: grpc.RpcError) -> FerryError | None:
    """Why a watch broke, when watching again may mend it: its coordinator lost (UNREACHABLE,
    TIMEOUT; a replica shutting down cancels its calls), its store watch ended (WATCH_FAILED,
    "watch again"), it cannot read etcd now (STORE_UNAVAILABLE), or gRPC turned the call away
    (SERVER_BUSY). None for the rest -- a refusal: the migration or drain is unknown, deleted --
    and for Ctrl-C."""
    err = from_rpc_error(exc)
    if _being_cancelled():
        return None
    if err.reason in WATCH_AGAIN_REASONS or _code(exc) == grpc.StatusCode.CANCELLED:
        return err
    return None


def _watch_lost(err: FerryError, what: str, again: str) -> Unavailable:
    """The watch of ``what`` broke and no try to read it again succeeded (exit 3): it goes on in
    the coordinator all the same."""
    answers = err.reason in ANSWERED
    return Unavailable(
        f"lost the watch of {what} ({err.reason}: {err.message}); it goes on in the coordinator, not in this command",
        reason=err.reason if answers else "UNREACHABLE",
        hint=f"{again} follows it again" + ("" if answers else f" once a coordinator answers; {UNREACHABLE_HINT}"),
    )


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if callable(code) else None


def _being_cancelled() -> bool:
    """Ctrl-C reached us (asyncio.run cancels the command's task): no more tries."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def main_code(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit status (see ``ferry --help``)."""
    try:
        return asyncio.run(run(argv))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`ferry ... | head`): not an error of ours; the migration goes on
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE


def main(argv: Sequence[str] | None = None) -> None:
    # What is imported by now (grpc, protobuf, asyncio: ~10^5 objects) lives until the process
    # ends: out of the garbage collector's sight, the collections during the command and the
    # one at interpreter exit skip it -- ~60 ms of every command's wall time, the exit's mostly.
    gc.freeze()
    sys.exit(main_code(argv))
