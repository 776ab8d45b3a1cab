#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine, as root: installs what is missing, then
# runs every layer (unit, component, contract, integration with real etcd, lab with real libvirt).
# Extra arguments go to pytest, e.g. `deploy/test.sh tests/unit -q`.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash deploy/setup.sh || exit 1
export FERRY_ETCD_BIN=${FERRY_ETCD_BIN:-$root/.cache/etcd/usr/bin/etcd}
.venv/bin/python -m pytest -ra "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "test.sh: pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
