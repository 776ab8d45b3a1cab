"""The committed ferry/v1 stubs (modules and their .pyi type stubs) are exactly what tools/gen-proto makes."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_match_proto(tmp_path):
    subprocess.run(
        [str(ROOT / "tools" / "gen-proto"), str(tmp_path)], check=True, env={**os.environ, "PYTHON": sys.executable}
    )
    fresh = sorted(p.name for p in (tmp_path / "ferry" / "v1").iterdir())
    committed = sorted(
        p.name for p in (ROOT / "ferry" / "v1").iterdir() if p.name != "__init__.py" and p.suffix in (".py", ".pyi")
    )
    assert fresh == committed, "stub files differ: run tools/gen-proto"
    messages = [n for n in fresh if n.endswith("_pb2.py")]
    assert messages and all(n + "i" in fresh for n in messages), "every *_pb2.py has its .pyi (mypy reads it)"
    for name in fresh:
        want = (tmp_path / "ferry" / "v1" / name).read_bytes()
        have = (ROOT / "ferry" / "v1" / name).read_bytes()
        assert have == want, f"ferry/v1/{name} is stale: run tools/gen-proto and commit"
