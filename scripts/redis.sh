#!/usr/bin/env bash
# A private Redis server for tests, from Debian's redis-server package: listening on
# 127.0.0.1:$QUARTET_REDIS_PORT (default 16379), data under $QUARTET_REDIS_DIR (default
# /var/tmp/quartet/redis). It never touches a system Redis.
#
#   scripts/redis.sh up     install if needed, start; prints the connection URL
#   scripts/redis.sh down   stop it
set -euo pipefail
DIR=${QUARTET_REDIS_DIR:-/var/tmp/quartet/redis}
PORT=${QUARTET_REDIS_PORT:-16379}
URL="redis://127.0.0.1:$PORT"
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

up() {
  if ! command -v redis-server >/dev/null; then
    printf '[redis] installing Debian'"'"'s redis-server\n' >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  fi
  mkdir -p "$DIR"
  if ! redis-cli -p "$PORT" ping >/dev/null 2>&1; then
    redis-server --bind 127.0.0.1 --port "$PORT" --dir "$DIR" --daemonize yes \
      --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" --save "" --appendonly no \
      --databases 32 >/dev/null
    for _ in $(seq 1 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$PORT" ping >/dev/null || { tail -20 "$DIR/redis.log" >&2; exit 1; }
  fi
  echo "$URL"
}

down() {
  command -v redis-cli >/dev/null || return 0
  redis-cli -p "$PORT" shutdown nosave >/dev/null 2>&1 || true
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
