"""The examples in the modules' docstrings run and print what they say.

``pytest --doctest-modules`` cannot map the repository's folders onto the installed ``ferry``
namespace (agent/ is ``ferry.agent``, ...), so this walks the installed package instead: one
test per module, failing with doctest's own report.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = "ferry.v1"  # protobuf stubs from tools/gen-proto: no docstrings of ours

# every shipped package; an editable install maps agent/, coordinator/, ... onto ferry.* through an
# import hook that pkgutil cannot list, so each package's own folder is walked as well
PACKAGES = [
    p for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"] if p != GENERATED
]


def _generated(name: str) -> bool:
    return name == GENERATED or name.startswith(GENERATED + ".")


def _walk(package: str) -> set[str]:
    path = importlib.import_module(package).__path__
    return {package} | {m.name for m in pkgutil.walk_packages(path, prefix=package + ".") if not _generated(m.name)}


MODULES = sorted(set().union(*(_walk(p) for p in PACKAGES)))


@pytest.mark.parametrize("package", ["ferry.agent", "ferry.coordinator", "ferry.cli", "ferry.lab", "ferry.testing"])
def test_the_walk_finds_the_modules_of_every_subpackage(package: str) -> None:
    assert package in PACKAGES, f"{package} is not in pyproject.toml's packages"
    assert [m for m in MODULES if m.startswith(package + ".")], f"no modules of {package} found"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    report: list[str] = []
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(module, name):
        runner.run(test, out=report.append)
    assert runner.summarize(verbose=False).failed == 0, "".join(report)
