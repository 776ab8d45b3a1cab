#!/usr/bin/env bash
# Install everything Ferry needs on a Debian 12 machine, as root. Idempotent; safe to re-run.
#   - Debian packages: QEMU, libvirt (daemon, no system units), build tools for libvirt-python
#   - .venv/ with Ferry installed (editable) and its test tools
#   - etcd 3.5 from Debian 13's package, unpacked into .cache/etcd (no system change)
#   - QEMU 10 from Debian 13's packages, unpacked into .cache/qemu-trixie, for the lab's TCG guests
#     (Debian 12's QEMU 7.2 corrupts a TCG guest's memory while migrating it; see fetch-qemu.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# one list, shared with `ferry-lab up` (which installs what is missing too)
mapfile -t APT_PACKAGES < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' deploy/lab/apt-packages.txt)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.ferry-installed
if [ ! -f $stamp ] || [ pyproject.toml -nt $stamp ]; then
  echo "setup: installing Python packages"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[agent,coordinator,lab,dev]'
  touch $stamp
fi

bash deploy/fetch-etcd.sh
bash deploy/fetch-qemu.sh || echo "setup: no Debian 13 QEMU: lab guests run on Debian 12's QEMU 7.2 (see deploy/fetch-qemu.sh)"
echo "setup: done"
