"""The common `main` of Ferry's long-running processes (ferry-agent, ferry-coordinator).

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for a bad config, 1 when it cannot run
(also when the Python packages of its extra are missing: ``pip install 'ferry[agent]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from ferry import logsetup
from ferry.errors import FerryError
from ferry.tomlconfig import LogConfig


class DaemonConfig(Protocol):
    @property
    def log(self) -> LogConfig: ...


C = TypeVar("C", bound=DaemonConfig)


def missing_modules(modules: Sequence[str]) -> list[str]:
    """Those of ``modules`` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


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
    except FerryError as exc:
        log.error("%s", exc)
        return 2
    try:
        logsetup.configure(config.log, level=args.log_level)
    except ImportError as exc:
        log.error("cannot write the log as [log] says: %s; install it with: pip install 'ferry[%s]'", exc, extra)
        return 1
    try:
        asyncio.run(serve(config))
    except (OSError, FerryError) as exc:
        log.error("cannot run %s: %s", prog, exc)
        return 1
    return 0
