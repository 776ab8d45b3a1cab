"""``pip install ferry`` as an operator's laptop gets it: the wheel built from this tree, installed
into a fresh virtual environment that holds only what the wheel requires without extras.

What the operator checks: ``ferry --help`` works there; libvirt-python, the etcd client and the
Prometheus client are not installed; ``ferry-agent`` says which extra it needs instead of a
traceback; the daemons' packages come with ``ferry[agent]`` / ``ferry[coordinator]``; the wheel's
version is pyproject.toml's. Offline: the required packages are linked in from this test run's own
environment (exactly the distributions the wheel names, and theirs), nothing is downloaded.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SKIP_COPY = shutil.ignore_patterns(
    ".git", ".venv", ".cache", ".lab", "build", "*.egg-info", "__pycache__", ".pytest_cache"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this tree, built from a copy (the build leaves nothing in the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=SKIP_COPY)
    out = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            out,
            source,
        ],
        check=True,
        timeout=300,
    )
    [built] = out.glob("ferry-*.whl")
    return built


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(z.read(name))


def required_closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions ``requirements`` (no extras) need, transitively."""
    found: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(req.name)
        if key in found:
            continue
        dist = metadata.distribution(req.name)
        assert dist.version in req.specifier, f"{req} is not satisfied here by {dist.version}"
        found[key] = dist
        todo += [Requirement(r) for r in dist.requires or ()]
    return found


def fresh_venv(path: Path, wheel: Path, deps: dict[str, metadata.Distribution]) -> Path:
    """A venv without pip: the wheel installed by this environment's pip, ``deps`` linked in."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True, timeout=120)
    python = path / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel],
        check=True,
        timeout=300,
    )
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    for dist in deps.values():
        for file in dist.files or ():
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # scripts and caches: not needed to import
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(Path(str(dist.locate_file(file))).resolve())
    return path


def test_the_wheel_declares_the_cli_alone_and_the_daemons_in_extras(wheel: Path) -> None:
    meta = wheel_metadata(wheel)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["Version"] == project["version"]
    requires = meta.get_all("Requires-Dist") or []
    plain = [r for r in requires if "extra ==" not in r]
    assert not [r for r in plain if canonicalize_name(Requirement(r).name) in {"libvirt-python", "etcd3aio"}]
    by_extra = {}
    for r in requires:
        req = Requirement(r)
        for extra in ("agent", "coordinator", "lab"):
            if req.marker is not None and req.marker.evaluate({"extra": extra}) and "extra ==" in r:
                by_extra.setdefault(extra, set()).add(canonicalize_name(req.name))
    assert {"libvirt-python", "etcd3aio", "prometheus-client", "python-json-logger"} <= by_extra["agent"]
    assert {"etcd3aio", "prometheus-client", "python-json-logger"} <= by_extra["coordinator"]
    assert "libvirt-python" not in by_extra["coordinator"]
    assert set(meta.get_all("Provides-Extra") or []) >= {"agent", "coordinator", "lab", "dev"}


def test_ferry_help_runs_where_only_the_cli_is_installed(wheel: Path, tmp_path: Path) -> None:
    requires = [r for r in wheel_metadata(wheel).get_all("Requires-Dist") or [] if "extra ==" not in r]
    deps = required_closure(requires)
    assert not {"libvirt-python", "etcd3aio", "prometheus-client", "python-json-logger"} & set(deps)
    venv = fresh_venv(tmp_path / "venv", wheel, deps)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HOME"] = str(tmp_path)

    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)

    check = run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "check")
    assert check.returncode == 0, check.stdout + check.stderr  # every requirement of ferry (no extras) is met

    help_ = run(venv / "bin" / "ferry", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "usage: ferry" in help_.stdout
    for module in ("libvirt", "etcd3aio", "prometheus_client", "pythonjsonlogger"):
        probe = run(venv / "bin" / "python", "-c", f"import {module}")
        assert probe.returncode != 0, f"{module} is importable in the CLI-only venv"
    # ferry is really the wheel's copy, not this repository's
    where = run(venv / "bin" / "python", "-c", "import ferry.cli.main as m; print(m.__file__)")
    assert str(venv) in where.stdout, where.stdout + where.stderr

    agent = run(venv / "bin" / "ferry-agent", "--config", tmp_path / "agent.toml")
    assert agent.returncode == 1
    assert "pip install 'ferry[agent]'" in agent.stderr and "libvirt" in agent.stderr
    assert "Traceback" not in agent.stderr
    coordinator = run(venv / "bin" / "ferry-coordinator", "--config", tmp_path / "coordinator.toml")
    assert coordinator.returncode == 1 and "pip install 'ferry[coordinator]'" in coordinator.stderr
