#!/usr/bin/env bash
# Put etcd 3.5 (Debian 13's etcd-server/etcd-client packages) into .cache/etcd/usr/bin without
# changing the system: a private apt state pointed at this machine's own Debian mirror, suite
# trixie, then dpkg -x. Debian 12's own etcd (3.4) is the fallback when that fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=$root/.cache
bin=$cache/etcd/usr/bin/etcd
[ -x "$bin" ] && exit 0

mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -E '^(URIs:|deb )' | grep -v -- '-security' | head -1 \
  | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//; s/[[:space:]].*$//' || true)
if [ -n "$mirror" ]; then
  A=$cache/apt-trixie
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$cache/etcd"
  echo "deb $mirror trixie main" > "$A/sources.list"
  O=(-o Dir::Etc::sourcelist="$A/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$A/lists"
     -o Dir::Cache="$A/cache" -o Acquire::Languages=none)
  if apt-get "${O[@]}" -q update >/dev/null && (cd "$cache" && apt-get "${O[@]}" -q download etcd-server/trixie etcd-client/trixie >/dev/null); then
    for d in "$cache"/etcd-*.deb; do dpkg -x "$d" "$cache/etcd"; done
    rm -f "$cache"/etcd-*.deb
  fi
fi
if [ ! -x "$bin" ]; then
  echo "fetch-etcd: trixie package unavailable; installing Debian 12's etcd-server"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server etcd-client
  mkdir -p "$cache/etcd/usr/bin"
  ln -sf /usr/bin/etcd "$bin"
  [ -x /usr/bin/etcdctl ] && ln -sf /usr/bin/etcdctl "$cache/etcd/usr/bin/etcdctl"
fi
"$bin" --version | sed -n 1p   # sed reads it all: head could end etcd with SIGPIPE (exit 141 under pipefail)
