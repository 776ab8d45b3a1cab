"""The common `main` of Ferry's long-running processes (ferry-agent, ferry-coordinator).

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for a bad config, 1 when it cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from ferry.errors import FerryError

C = TypeVar("C")


def run_daemon(
    prog: str,
    description: str,
    load_config: Callable[[str], C],
    serve: Callable[[C], Coroutine[Any, Any, None]],
    argv: Sequence[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="TOML config file")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log = logging.getLogger(prog)
    try:
        config = load_config(args.config)
    except FerryError as exc:
        log.error("%s", exc)
        return 2
    try:
        asyncio.run(serve(config))
    except (OSError, FerryError) as exc:
        log.error("cannot run %s: %s", prog, exc)
        return 1
    return 0
