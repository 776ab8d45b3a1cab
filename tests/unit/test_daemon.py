"""run_daemon: a daemon that asks to start over runs again as the same command line, same PID."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import pytest

from ferry import daemon
from ferry.tomlconfig import LogConfig


@dataclass
class Config:
    log: LogConfig = field(default_factory=LogConfig)


def test_a_restart_requested_by_serve_execs_the_same_command_line(monkeypatch, tmp_path):
    """The coordinator raises RestartRequested after a clean stop when etcd's history went back."""
    calls: list[tuple[str, list[str]]] = []

    def execv(path: str, argv: list[str]) -> None:
        calls.append((path, argv))
        raise SystemExit(0)  # stands for the new program

    async def serve(config: Config) -> None:
        raise daemon.RestartRequested("etcd's history went back from revision 9 to 4")

    monkeypatch.setattr(daemon.os, "execv", execv)
    monkeypatch.setattr(daemon.logging, "shutdown", lambda: None)  # the test run's own handlers stay open
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "ferry.coordinator.main", "--config", "c.toml"])
    with pytest.raises(SystemExit):
        daemon.run_daemon("ferry-test", "test", lambda path: Config(), serve, ["--config", str(tmp_path / "c.toml")])
    assert calls == [(sys.executable, [sys.executable, "-m", "ferry.coordinator.main", "--config", "c.toml"])]
