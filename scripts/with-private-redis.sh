#!/usr/bin/env bash
# Runs a command with a private redis-server (temp dir, free port, no
# persistence) and MODEL_ROUTER_TEST_REDIS_URL pointing at it; stops Redis
# afterwards and exits with the command's status. Installs redis-server from
# Debian's packages when it is missing.
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server missing: installing it (apt-get)" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save "" --appendonly no \
  --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
cleanup() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

export MODEL_ROUTER_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
"$@"
