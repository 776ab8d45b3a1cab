"""The ``ferry`` CLI's config for a lab: ``<lab>/cli.toml`` always, and the operator's own
($XDG_CONFIG_HOME/ferry/cli.toml, else ~/.config/ferry/cli.toml) when that is free or already
points into this lab. Someone else's config is never overwritten nor removed: then the operator
runs ``FERRY_CONFIG=<lab>/cli.toml ferry ...``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ferry.cli.config import ENV_CONFIG, config_path
from ferry.lab.controlplane import may_replace_cli_config

log = logging.getLogger("ferry.lab")


def user_cli_config(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the CLI looks when FERRY_CONFIG is not set (the file ``ferry-lab up`` writes)."""
    return config_path({k: v for k, v in environ.items() if k != ENV_CONFIG})


@dataclass(frozen=True)
class CliConfigOutcome:
    lab_config: Path  # <lab>/cli.toml, always written
    user_config: Path  # the operator's default CLI config path
    written: bool  # user_config now points into this lab
    why_not: str = ""  # when not written: whose config it is

    def advice(self) -> str:
        """One line for the operator: how the ``ferry`` CLI reaches this lab."""
        if self.written:
            return f"ferry CLI: configured in {self.user_config} (try: ferry hosts)"
        return f"ferry CLI: kept {self.user_config} ({self.why_not}); use FERRY_CONFIG={self.lab_config} ferry hosts"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"# unreadable: {exc}"


def install(lab_dir: Path, text: str, user_config: Path) -> CliConfigOutcome:
    """Write ``<lab>/cli.toml`` and, when allowed, ``user_config`` (atomically)."""
    lab_config = lab_dir / "cli.toml"
    _write(lab_config, text)
    if not may_replace_cli_config(_read(user_config), lab_dir):
        return CliConfigOutcome(lab_config, user_config, written=False, why_not="it points to another coordinator")
    try:
        _write(user_config, text)
    except OSError as exc:
        return CliConfigOutcome(lab_config, user_config, written=False, why_not=f"cannot write it: {exc.strerror}")
    return CliConfigOutcome(lab_config, user_config, written=True)


def remove(lab_dir: Path, user_config: Path | None) -> None:
    """Remove ``<lab>/cli.toml`` and ``user_config`` if it still points into this lab."""
    (lab_dir / "cli.toml").unlink(missing_ok=True)
    if user_config is None:
        return
    existing = _read(user_config)
    if existing is not None and may_replace_cli_config(existing, lab_dir):
        user_config.unlink(missing_ok=True)
        log.info("removed %s (it pointed into this lab)", user_config)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
