"""Shared fixtures.

- ``etcd_bin``: the etcd server binary; missing means FAIL under CI, skip locally.
- ``lab`` / ``fleet_lab``: the real lab for the lab tests and the Hypervisor contract suite: a 2-host
  lab (libvirtd + agent per host) with its control plane (etcd s1, coordinators c1 and c2 in the core
  namespace) in a fresh temporary lab dir, so an operator's own lab (/tmp/ferry-lab) is never touched.
  One lab serves the whole session: the control plane starts beside the hosts and costs about a second.
  Its ``ferry`` CLI config goes to a temporary $XDG_CONFIG_HOME (``cli_config_home``), never to the
  real home. Skipped only when not root (nothing else can create the namespaces); every other problem
  while starting the lab fails the tests that use it, with the lab's own error and hint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.lab import ControlPlane, Lab
from ferry.lab.etcd import find_etcd_binary


def etcd_binary_or_skip() -> Path:
    """The etcd binary, or fail (env CI set) / skip (locally) with the fix in the message."""
    binary = find_etcd_binary()
    if binary is None:
        reason = "no etcd server binary: run deploy/fetch-etcd.sh or set FERRY_ETCD_BIN"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="session")
def etcd_bin() -> Path:
    return etcd_binary_or_skip()


NOT_ROOT = "lab tests need root (network/mount namespaces, libvirtd, QEMU): run them as root"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(NOT_ROOT)


@pytest.fixture(scope="session")
def lab_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by every lab of the session: libvirt's QEMU capabilities are probed once.
    Lab tests that start their own small lab use it (and so are skipped when not root)."""
    require_root()
    return tmp_path_factory.mktemp("lab-cache")


@pytest.fixture(scope="session")
def cli_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """$XDG_CONFIG_HOME in a temporary dir (FERRY_CONFIG unset) for every lab test and every
    ferry-lab command they run: ``up`` writes the CLI config there (autouse in tests/lab)."""
    home = tmp_path_factory.mktemp("xdg-config")
    saved = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "FERRY_CONFIG")}
    os.environ["XDG_CONFIG_HOME"] = str(home)
    os.environ.pop("FERRY_CONFIG", None)
    try:
        yield home
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_cache: Path, cli_config_home: Path) -> Iterator[Lab]:
    the_lab = Lab(
        tmp_path_factory.mktemp("lab"), cache_dir=lab_cache, cli_config=cli_config_home / "ferry" / "cli.toml"
    )
    try:
        # install=False: deploy/setup.sh installs the packages; a missing one fails clearly
        the_lab.up(hosts=2, agents=True, install=False, control_plane=ControlPlane(etcd_members=1, coordinators=2))
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(scope="session")
def fleet_lab(lab: Lab) -> Lab:
    """The lab with its control plane (etcd s1, coordinators c1 and c2): the same lab as
    ``lab``, named for tests that drive Ferry through the coordinators."""
    return lab
