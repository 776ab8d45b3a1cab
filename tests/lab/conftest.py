"""The lab tests: the ``lab`` fixtures live in tests/conftest.py (the contract suite uses them too)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _lab_cli_config(cli_config_home: Path) -> Path:
    """Every lab test and every ferry-lab command they run use the temporary $XDG_CONFIG_HOME."""
    return cli_config_home
