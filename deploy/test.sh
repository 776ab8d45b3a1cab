#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine, as root: installs what is missing, runs the
# static checks (tools/check), then every test layer (unit, component, contract, integration with
# real etcd, lab with real libvirt).
# Extra arguments go to pytest, e.g. `deploy/test.sh tests/unit -q`.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash deploy/setup.sh || exit 1
# static checks first (ruff, import rules, mypy --strict); the tests run either way, so one run
# reports both, and a failed check fails the run
bash tools/check
checks=$?
export FERRY_ETCD_BIN=${FERRY_ETCD_BIN:-$root/.cache/etcd/usr/bin/etcd}
.venv/bin/python -m pytest -ra "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  exit 1
fi
if [ $checks -ne 0 ]; then
  echo "test.sh: static checks failed (bash tools/check): failing" >&2
  [ $rc -ne 0 ] || rc=1
fi
exit $rc
