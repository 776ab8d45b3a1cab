"""Copy the Python packages into the layout they are installed in (ferry/agent/, ferry/coordinator/, ...).

The repository keeps the design card's top-level folders (agent/, coordinator/, cli/, deploy/lab/)
and maps them onto one ``ferry`` namespace through setuptools' package-dir. Static tools that
find modules by walking directories (import-linter's grimp, mypy) need the installed layout:
``python tools/stage.py DIR`` writes it under DIR (sources only, no build), and
``tools/check`` maps reported paths back to the repository.
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs() -> dict[str, Path]:
    """Every shipped package and its folder in the repository, from pyproject.toml."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = setup.get("package-dir", {})
    dirs: dict[str, Path] = {}
    for package in setup["packages"]:
        parent, _, leaf = package.rpartition(".")
        if package in mapping:
            dirs[package] = ROOT / mapping[package]
        elif parent in dirs:
            dirs[package] = dirs[parent] / leaf
        else:
            dirs[package] = ROOT / package.replace(".", "/")
    return dirs


def stage(dest: Path) -> None:
    for package, src in package_dirs().items():
        out = dest / package.replace(".", "/")
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and f.suffix in (".py", ".pyi", ".typed"):
                shutil.copy2(f, out / f.name)
        if (src / "py.typed").exists() or package == "ferry":
            (out / "py.typed").touch()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tools/stage.py DIR")
    stage(Path(sys.argv[1]))
    for package, src in package_dirs().items():
        print(f"{package.replace('.', '/')}/\t{src.relative_to(ROOT)}/")
