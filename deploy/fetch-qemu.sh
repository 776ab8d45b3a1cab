#!/usr/bin/env bash
# Put Debian 13's QEMU (10.0) into .cache/qemu-trixie for the lab's TCG guests, without changing
# the system: a private apt state pointed at this machine's own Debian mirror, suite trixie, every
# package qemu-system-x86 needs (its C library included: it wants a newer one than Debian 12's)
# unpacked with dpkg -x, and a wrapper, .cache/qemu-trixie/qemu-system-x86_64, that the lab's
# domains name as their <emulator>.
#
# Why: QEMU 7.2 (Debian 12) loses guest memory writes during a live migration under TCG -- the
# fast path of its dirty-bitmap sync does not make TCG's TLB trap the next write to a page it
# cleared (fixed in QEMU 9.0, commit 03bfc2188f "physmem: Fix migration dirty bitmap coherency
# with TCG memory access"). Lab guests that write memory then crash on the target after most
# capped migrations (kernel panic, reboot). With this QEMU they do not. KVM guests are not
# affected (KVM tracks dirty pages itself).
#
# The wrapper starts QEMU with Debian 13's dynamic loader and libraries, in a mount namespace of
# its own where Debian 12's QEMU modules (/usr/lib/x86_64-linux-gnu/qemu) are replaced by Debian
# 13's (QEMU refuses modules of another build). Without a mirror the lab keeps Debian 12's QEMU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=$root/.cache
dest=$cache/qemu-trixie
wrapper=$dest/qemu-system-x86_64
[ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1 && exit 0

mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -E '^(URIs:|deb )' | grep -v -- '-security' | head -1 \
  | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//' || true)
if [ -z "$mirror" ]; then
  echo "fetch-qemu: no Debian mirror in /etc/apt: the lab keeps the system's QEMU" >&2
  exit 0
fi
A=$cache/apt-trixie
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$dest/debs"
echo "deb $mirror trixie main" > "$A/sources.list"
: > "$A/status.empty"
O=(-o Dir::Etc::sourcelist="$A/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$A/lists"
   -o Dir::Cache="$A/cache" -o Acquire::Languages=none)
apt-get "${O[@]}" -q update >/dev/null
# every package of the closure, as if nothing were installed (an empty dpkg status)
mapfile -t pkgs < <(apt-get "${O[@]}" -o Dir::State::status="$A/status.empty" -o Debug::NoLocking=1 \
  -s -qq install --no-install-recommends qemu-system-x86 2>/dev/null \
  | awk '/^Inst/ {gsub(/[()]/, "", $3); print $2 "=" $3}')
[ ${#pkgs[@]} -gt 0 ] || { echo "fetch-qemu: could not resolve qemu-system-x86 in trixie" >&2; exit 1; }
(cd "$dest/debs" && apt-get "${O[@]}" -q download "${pkgs[@]}" >/dev/null 2>&1)
rm -rf "$dest/root"
for d in "$dest"/debs/*.deb; do dpkg -x "$d" "$dest/root"; done
rm -rf "$dest/debs"

cat > "$wrapper" <<EOF
#!/bin/sh
# Debian 13's QEMU with its own loader, libraries and modules (written by deploy/fetch-qemu.sh)
exec unshare --mount --propagation private sh -c 'mount --bind "\$0/usr/lib/x86_64-linux-gnu/qemu" /usr/lib/x86_64-linux-gnu/qemu && exec "\$0/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "\$0/usr/lib/x86_64-linux-gnu:\$0/lib/x86_64-linux-gnu" "\$0/usr/bin/qemu-system-x86_64" -L "\$0/usr/share/qemu" -L "\$0/usr/share/seabios" "\$@"' "$dest/root" "\$@"
EOF
chmod +x "$wrapper"
"$wrapper" --version | head -1
