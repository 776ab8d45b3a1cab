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
    """The first of :func:`coordinator_addresses`."""
    return coordinator_addresses(flag, env)[0]


def coordinator_addresses(flag: str | None, env: Mapping[str, str] | None = None) -> list[str]:
    """Coordinator replicas to try, in order: flag > $FERRY_COORDINATOR > config file > default.

    Flag and variable may list several addresses separated by commas. The config file (written by
    `ferry-lab up`) holds ``coordinator = "unix:/tmp/ferry-lab/coordinators/c1.sock"`` and optionally
    ``coordinators = [...]``, every replica (each serves the whole API).
    """
    env = os.environ if env is None else env
    if flag:
        return [a for a in flag.split(",") if a]
    if env.get(ENV_ADDRESS):
        return [a for a in env[ENV_ADDRESS].split(",") if a]
    path = config_path(env)
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(
                f"cannot parse {path}: {exc}", reason="BAD_CONFIG", hint=f"fix or remove {path}"
            ) from exc
        out: list[str] = []
        first = data.get("coordinator")
        if isinstance(first, str) and first:
            out.append(first)
        many = data.get("coordinators", [])
        if not isinstance(many, list) or not all(isinstance(a, str) for a in many):
            raise InvalidArgument(
                f"{path}: coordinators must be a list of addresses",
                reason="BAD_CONFIG",
                hint='e.g. coordinators = ["unix:/run/c1.sock", "10.0.0.5:7100"]',
            )
        out += [a for a in many if a and a not in out]
        if out:
            return out
    return [DEFAULT_COORDINATOR]
