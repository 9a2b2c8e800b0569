#!/usr/bin/env bash
# `npm start`: install what is missing, build, put `corral` on PATH, make sure a Docker engine
# is running (Corral watches its labels), then run the single-host stack in the foreground.
# Extra arguments go to `corral up`, e.g. `npm start -- --http-listen :8080`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node scripts/build.mjs
if [ "$(id -u)" = 0 ] && [ ! -e /usr/local/bin/corral ]; then
  ln -s "$PWD/dist/corral.mjs" /usr/local/bin/corral
  echo "corral: linked /usr/local/bin/corral -> $PWD/dist/corral.mjs" >&2
fi
sock=${CORRAL_DOCKER_SOCKET:-/var/run/docker.sock}
if [ -n "$sock" ] && [ ! -S "$sock" ] && command -v dockerd >/dev/null && [ "$(id -u)" = 0 ]; then
  if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null; then
    echo "corral: started docker.service" >&2
  else
    # No init system (containers, CI machines): run dockerd ourselves, as TESTBED.md describes.
    [ -d /sys/fs/cgroup/devices ] || cgroupfs-mount >/dev/null 2>&1 || true
    echo "corral: starting dockerd (log: /var/log/corral-dockerd.log)" >&2
    nohup dockerd --storage-driver=vfs --iptables=false >/var/log/corral-dockerd.log 2>&1 &
    for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
  fi
fi
exec node dist/corral.mjs up "$@"
