"""Where the `ferry` CLI finds the coordinator: flag, environment, config file, default."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from ferry.errors import InvalidArgument

DEFAULT_COORDINATOR = "127.0.0.1:7100"
ENV_ADDRESS = "FERRY_COORDINATOR"
ENV_CONFIG = "FERRY_CONFIG"


def config_path(env: Mapping[str, str]) -> Path:
    """The CLI config file: $FERRY_CONFIG, else $XDG_CONFIG_HOME/ferry/cli.toml (~/.config/...)."""
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "ferry" / "cli.toml"


def coordinator_address(flag: str | None, env: Mapping[str, str] | None = None) -> str:
    """Resolve the coordinator address in the order flag > $FERRY_COORDINATOR > config file > default.

    The config file (written by `ferry-lab up`) looks like ``coordinator = "unix:/tmp/ferry-lab/coordinator.sock"``.
    """
    env = os.environ if env is None else env
    if flag:
        return flag
    if env.get(ENV_ADDRESS):
        return env[ENV_ADDRESS]
    path = config_path(env)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"cannot parse {path}: {exc}", reason="BAD_CONFIG",
                                  hint=f"fix or remove {path}") from exc
        address = data.get("coordinator")
        if isinstance(address, str) and address:
            return address
    return DEFAULT_COORDINATOR
