"""Shared fixtures. `etcd_bin`: the etcd server binary; missing means FAIL under CI, skip locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
