"""The Debian packages the lab needs (deploy/lab/apt-packages.txt, also read by
deploy/setup.sh), installed with apt-get when some are missing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ferry.errors import FailedPrecondition
from ferry.lab import procs

log = logging.getLogger("ferry.lab")

PACKAGE_LIST = Path(__file__).parent / "apt-packages.txt"
APT_TIMEOUT_S = 900.0


def parse_package_list(text: str) -> list[str]:
    """One package per line; blank lines and ``#`` comments are skipped."""
    names = []
    for line in text.splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def installed_from_dpkg(output: str) -> set[str]:
    """Names marked installed in ``dpkg-query -W -f '${Package}\\t${db:Status-Status}\\n'``."""
    installed = set()
    for line in output.splitlines():
        name, _, status = line.partition("\t")
        if status.strip() == "installed":
            installed.add(name.split(":", 1)[0])
    return installed


def missing_packages(names: list[str]) -> list[str]:
    result = procs.run(
        ["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Status}\n", *names], check=False
    )  # exit 1 when some name is unknown: read stdout anyway
    installed = installed_from_dpkg(result.stdout)
    return [n for n in names if n not in installed]


def ensure_installed(package_list: Path = PACKAGE_LIST, *, install: bool = True) -> list[str]:
    """Install the missing packages (or, without ``install``, refuse when some are missing);
    returns what was installed."""
    names = parse_package_list(package_list.read_text())
    missing = missing_packages(names)
    if not missing:
        return []
    if not install or os.geteuid() != 0:
        raise FailedPrecondition(
            f"missing packages: {' '.join(missing)}",
            reason="LAB_PACKAGES_MISSING",
            hint="run deploy/setup.sh as root (or ferry-lab up without --no-install)",
        )
    log.info("installing missing packages: %s", " ".join(missing))
    env_hint = "check the machine's apt sources and network, then run deploy/setup.sh"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    procs.run(["apt-get", "update", "-q"], timeout=APT_TIMEOUT_S, reason="LAB_APT_FAILED", hint=env_hint, env=env)
    procs.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        timeout=APT_TIMEOUT_S,
        reason="LAB_APT_FAILED",
        hint=env_hint,
        env=env,
    )
    return missing
