"""The common `main` of Ferry's long-running processes (ferry-agent, ferry-coordinator).

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for a bad config, 1 when it cannot run
(also when the Python packages of its extra are missing: ``pip install 'ferry[agent]'``).
``--check`` reads the config and its TLS files, says what it found and exits (0 valid, 2 not):
for ``ExecStartPre=`` and before a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from ferry import logsetup
from ferry.errors import FerryError, InvalidArgument
from ferry.rpc import Tls, check_pair
from ferry.tomlconfig import LogConfig


class DaemonConfig(Protocol):
    @property
    def log(self) -> LogConfig: ...


C = TypeVar("C", bound=DaemonConfig)
RENEW_DAYS = 14  # --check says to renew a certificate with less left


def tls_in(config: object, where: str = "") -> list[tuple[str, Tls]]:
    """Every Tls of a config (dataclasses all the way down), each once, with every place it is in.

    >>> from dataclasses import dataclass
    >>> from pathlib import Path
    >>> @dataclass
    ... class Etcd:
    ...     tls: Tls | None = None
    >>> @dataclass
    ... class Config:
    ...     etcd: Etcd
    ...     tls: Tls
    >>> t = Tls(Path("ca.pem"), Path("a.pem"), Path("a-key.pem"))
    >>> [w for w, _ in tls_in(Config(Etcd(t), t))], [w for w, _ in tls_in(Config(Etcd(), t))]
    (['etcd.tls, tls'], ['tls'])
    """
    places: dict[Tls, list[str]] = {}

    def walk(node: object, at: str) -> None:
        if isinstance(node, Tls):
            places.setdefault(node, []).append(at or "tls")
        elif dataclasses.is_dataclass(node) and not isinstance(node, type):
            for f in dataclasses.fields(node):
                walk(getattr(node, f.name), f"{at}.{f.name}" if at else f.name)

    walk(config, where)
    return [(", ".join(at), tls) for tls, at in places.items()]


def check_tls(config: object, *, now: datetime | None = None) -> list[str]:
    """What ``--check`` says of each TLS identity of ``config``; raises the first problem
    (InvalidArgument: unreadable, not PEM, a key not the certificate's, no Ferry identity,
    expired)."""
    from ferry.certs import ends_at, identity_in

    now = now or datetime.now(UTC)
    lines = []
    for where, tls in tls_in(config):
        check_pair(tls)
        pem = tls.cert.read_bytes()
        identity = identity_in(pem)
        ends = ends_at(pem)
        if ends <= now:
            raise InvalidArgument(
                f"the certificate {tls.cert} ({where}) expired on {ends:%Y-%m-%d %H:%M} UTC",
                reason="TLS_CERT_EXPIRED",
                hint="issue a new one (ferry-certs issue) and restart",
            )
        days = (ends - now).days
        soon = f"; RENEW IT: {days} day(s) left" if days < RENEW_DAYS else ""
        who = identity.uri if identity is not None else "no Ferry identity (ferry://ROLE/NAME)"
        lines.append(f"{where}: {who}, {tls.cert} (key {tls.key} matches), valid until {ends:%Y-%m-%d}{soon}")
    return lines


def missing_modules(modules: Sequence[str]) -> list[str]:
    """Those of ``modules`` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


class RestartRequested(Exception):
    """Raised by a daemon's ``serve`` after a clean stop, to run again in a fresh process: the same
    command line, the same PID (``os.execv``), nothing kept in memory."""


async def first_ended(
    stop: asyncio.Event, tasks: Sequence[asyncio.Task[None]], log: logging.Logger
) -> asyncio.Task[None] | None:
    """Wait for ``stop``, or for one of ``tasks`` (each meant to run until cancelled) to end: that
    one, logged with why (None: ``stop`` was set). A daemon's ``serve`` then stops and raises
    :class:`RestartRequested` rather than serve on without it."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    for task in tasks:
        if task in done:
            error = None if task.cancelled() else task.exception()
            log.error("the %s task ended%s", task.get_name(), f": {error!r}" if error else "", exc_info=error)
            return task
    return None


def run_daemon(
    prog: str,
    description: str,
    load_config: Callable[[str], C],
    serve: Callable[[C], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
    *,
    extra: str = "",
    requires: Sequence[str] = (),
) -> int:
    """Parse the options, check the packages of ``extra`` (importable ``requires``), read the
    config, set up logging as its ``[log]`` says, and run ``serve(config)`` until it returns."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="TOML config file")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the config and its TLS files (each key belongs to its certificate, which names an "
        "identity and has not expired), print what was found and exit: 0 valid, 2 not",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        default=None,
        choices=logsetup.LOG_LEVELS,
        help="overrides [log] level of the config (default: info)",
    )
    args = parser.parse_args(argv)
    logsetup.configure(LogConfig(), level=args.log_level)  # until the config is read
    log = logging.getLogger(prog)
    missing = missing_modules(requires)
    if missing:
        log.error(
            "%s cannot run: Python module(s) %s are not installed; install them with: pip install 'ferry[%s]'",
            prog,
            ", ".join(missing),
            extra,
        )
        return 1
    try:
        config = load_config(args.config)
        if args.check:
            lines = check_tls(config)
            print(f"{prog}: {args.config} is valid")
            for line in lines:
                print(f"  {line}")
            return 0
    except FerryError as exc:
        log.error("%s", exc)
        return 2
    try:
        logsetup.configure(config.log, level=args.log_level)
    except ImportError as exc:
        log.error("cannot write the log as [log] says: %s; install it with: pip install 'ferry[%s]'", exc, extra)
        return 1
    try:  # the certificates, once: a key of another or an expired one would fail every handshake obscurely
        for line in check_tls(config):
            (log.warning if "RENEW IT" in line else log.info)("TLS identity %s", line)
    except FerryError as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(serve(config))
    except RestartRequested as exc:
        log.error("%s starts over: %s", prog, exc)
        logging.shutdown()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    except (OSError, FerryError) as exc:
        log.error("cannot run %s: %s", prog, exc)
        return 1
    return 0
