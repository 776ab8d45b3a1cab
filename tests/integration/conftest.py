"""Real etcd processes for integration tests: a fresh cluster per test, stopped by PID afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.lab.etcd import EtcdCluster


@pytest.fixture
def etcd_one(etcd_bin: Path, tmp_path: Path) -> Iterator[EtcdCluster]:
    """One member (outage tests pause or kill it, so it is not shared)."""
    cluster = EtcdCluster.plan(tmp_path / "etcd", 1, binary=etcd_bin)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_three(etcd_bin: Path, tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three members on loopback ports."""
    cluster = EtcdCluster.plan(tmp_path / "etcd", 3, binary=etcd_bin)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
