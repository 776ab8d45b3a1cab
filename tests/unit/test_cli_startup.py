"""The CLI's own start-up and exit: part of every ``ferry migrate``'s wall time."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from ferry.cli import main as cli_main


def test_importing_the_cli_leaves_out_what_only_some_commands_need():
    """rich draws on a terminal only, ``ferry top`` is one command, the version one option."""
    probe = (
        "import sys, ferry.cli.main; "
        "print(sorted(m for m in ('rich', 'importlib.metadata', 'ferry.cli.top') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_main_freezes_what_was_imported_before_running_the_command(monkeypatch):
    frozen: list[int] = []
    monkeypatch.setattr(cli_main, "main_code", lambda argv: frozen.append(gc.get_freeze_count()) or 0)
    try:
        with pytest.raises(SystemExit) as exc:
            cli_main.main(["hosts"])
    finally:
        gc.unfreeze()
    assert exc.value.code == 0
    assert frozen and frozen[0] > 0
