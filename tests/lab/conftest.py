"""The real lab for the lab tests: a 2-host lab (libvirtd + agent per host) in a fresh
temporary lab dir, so an operator's own lab (/tmp/ferry-lab) is never touched.

Skipped only when not root (nothing else can create the namespaces). Every other problem while
starting the lab fails the tests that use it, with the lab's own error and hint.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.lab import Lab

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
def lab(tmp_path_factory: pytest.TempPathFactory, lab_cache: Path) -> Iterator[Lab]:
    the_lab = Lab(tmp_path_factory.mktemp("lab"), cache_dir=lab_cache)
    try:
        # install=False: deploy/setup.sh installs the packages; a missing one fails clearly
        the_lab.up(hosts=2, agents=True, install=False)
        yield the_lab
    finally:
        the_lab.down()
