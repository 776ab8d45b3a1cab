#!/usr/bin/env bash
# The demo, from a fresh Debian 12 machine, as root: installs what is missing, brings up a lab of two
# real libvirt hosts with etcd, a coordinator and an agent per host, starts a TCG guest with a local
# disk on host1 and live-migrates it to host2 with `ferry migrate --copy-storage-all`, progress shown.
# Every link is mutual TLS with the lab CA's certificates (roles enforced), and the migration stream
# itself is encrypted (libvirt's VIR_MIGRATE_TLS, libvirtd listening with TLS only).
# The lab stays up afterwards so you can go on with `ferry ...`; `ferry-lab down` stops it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash deploy/setup.sh
export PATH=$root/.venv/bin:$PATH
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "ferry-lab up --hosts 2     (namespaces, libvirtd per host, etcd, coordinator, agents)"
if ferry-lab status >/dev/null 2>&1; then
  echo "a lab is already up: taking it down first"
  ferry-lab down
fi
ferry-lab up --hosts 2
step "ferry-lab guest demo1 --host host1 --disk 256M --dirty-rate 8"
ferry-lab guest demo1 --host host1 --disk 256M --dirty-rate 8
step "ferry hosts   (as ferry://operator/lab: the CLI config ferry-lab wrote names the lab's operator certificate)"
ferry hosts
lab_dir=${FERRY_LAB_DIR:-/tmp/ferry-lab}
step "without a certificate nobody is answered; a reader certificate may look but not migrate"
ferry --insecure hosts || echo "(refused, as it should be: exit $?)"
ferry --ca "$lab_dir/pki/ca.pem" --cert "$lab_dir/pki/reader.lab.pem" --key "$lab_dir/pki/reader.lab-key.pem" \
  migrate demo1 --to host2 --no-wait || echo "(refused, as it should be: exit $?)"
step "ferry vms"
ferry vms
step "ferry preflight demo1 --to host2 --copy-storage-all"
ferry preflight demo1 --to host2 --copy-storage-all
# Uncapped, to be quick. (Capped works too now that lab guests run on Debian 13's QEMU: Debian 12's
# QEMU 7.2 loses guest memory writes while migrating a TCG guest -- see deploy/fetch-qemu.sh.)
step "ferry migrate demo1 --to host2 --copy-storage-all   (memory and disk copy over TLS)"
ferry migrate demo1 --to host2 --copy-storage-all
step "ferry vms   (demo1 now runs on host2)"
ferry vms
sleep 2
step "the guest's console: its heartbeat kept counting across the migration"
ferry-lab console demo1 | grep -E 'HEARTBEAT|marker' | tail -3
cat <<MSG

The lab is still up. Try:
  ferry migrations                          # the record of what happened
  ferry migrate demo1 --to host1 --copy-storage-all
  ferry-lab status                          # every process with its PID
  ferry-lab down                            # stop everything
(with $root/.venv/bin on PATH)
MSG
