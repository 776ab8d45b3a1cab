"""The systemd units in deploy/systemd pass ``systemd-analyze verify``.

systemd-analyze checks a unit against the machine it runs on: the programs ``ExecStart`` names must
exist and the units it requires must be known. This machine has no Ferry in /opt/ferry and maybe no
libvirtd.service, so the units are verified from a copy whose ExecStart points at a stand-in
program (same arguments) beside a stand-in libvirtd.service; everything else is verified as
shipped. systemd-analyze exits 0 even for lines it ignores (unknown keys, bad values), so its
output must be empty as well.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
INSTALLED = "/opt/ferry/venv/bin/"


@pytest.fixture
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here (package systemd): the units were not verified")
    return tool


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_verifies(unit: str, analyze: str, tmp_path: Path) -> None:
    text = (UNITS / unit).read_text()
    assert INSTALLED in text, "ExecStart should run the installed console script"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            program = line.removeprefix("ExecStart=").split()[0]
            stand_in = bin_dir / Path(program).name
            stand_in.write_text("#!/bin/sh\nexit 0\n")
            stand_in.chmod(0o755)
    (tmp_path / unit).write_text(text.replace(INSTALLED, f"{bin_dir}/"))
    (tmp_path / "libvirtd.service").write_text("[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n")
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


def test_units_leave_the_log_to_the_journal() -> None:
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        assert "SyslogIdentifier=" + unit.stem in text
        assert "StandardError=" not in text and "StandardOutput=" not in text  # the journal, the default
