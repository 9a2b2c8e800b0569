#!/usr/bin/env bash
# Installs what Corral needs on a fresh Debian 12 machine, then the npm dependencies.
#   scripts/setup.sh          what `npm start` needs (the daemons' runtime, and what the README's tour uses)
#   scripts/setup.sh --test   also what `npm test` and `npm run bench` need
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# command -> Debian package (the tour: busybox-static for its image, dig and curl to ask DNS and the LB)
runtime=(dockerd:docker.io nft:nftables ip:iproute2 wireguard-go:wireguard-go cgroupfs-mount:cgroupfs-mount busybox:busybox-static dig:dnsutils curl:curl)
testing=(dig:dnsutils kdig:knot-dnsutils unbound:unbound dnsperf:dnsperf busybox:busybox-static curl:curl wrk:wrk h2load:nghttp2-client haproxy:haproxy nginx:nginx-light etcd:etcd-server iperf3:iperf3 tcpdump:tcpdump ping:iputils-ping podman:podman ctr:containerd chromium:chromium prometheus:prometheus promtool:prometheus pebble:pebble openssl:openssl docker-compose:docker-compose redis-server:redis-server redis-cli:redis-tools psql:postgresql-client)

missing=()
check() { for pair in "$@"; do cmd=${pair%%:*}; pkg=${pair#*:}; command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg"); done; }
check "${runtime[@]}"
[ "$want_test" = 1 ] && check "${testing[@]}"
# busybox must be the static build: it runs inside containers made from an empty rootfs.
if ! dpkg -s busybox-static >/dev/null 2>&1; then missing+=(busybox-static); fi
# The PostgreSQL server: lb/tcp tests run a private cluster (initdb, postgres are not on PATH).
if [ "$want_test" = 1 ] && ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then missing+=(postgresql); fi
# The reference CNI plugins (portmap chains after corral-cni in tests; bridge/host-local are the bench anchor).
if [ "$want_test" = 1 ] && [ ! -x /usr/lib/cni/portmap ]; then missing+=(containernetworking-plugins); fi

if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" != 0 ]; then
    echo "corral setup: missing ${missing[*]}; run as root or install them: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "corral setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The unbound package starts a system resolver on :53; Corral's DNS wants that port, and
  # tests start their own unbound. Keep the system one off.
  if [ -x /usr/sbin/unbound ] && command -v systemctl >/dev/null 2>&1; then systemctl disable --now unbound >/dev/null 2>&1 || true; fi
  pkill -x unbound 2>/dev/null || true
fi

# dockerd needs the cgroup v1 hierarchies (the devices controller in particular).
if [ ! -d /sys/fs/cgroup/devices ] && command -v cgroupfs-mount >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  cgroupfs-mount >/dev/null 2>&1 || true
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
