#!/usr/bin/env bash
# A private PostgreSQL server for tests, from Debian's postgresql package: one cluster under
# $QUARTET_PG_DIR (default /var/tmp/quartet/postgres), listening on 127.0.0.1:$QUARTET_PG_PORT
# (default 15432) with trust authentication for loopback only. It never touches a system cluster.
#
#   scripts/postgres.sh up     install if needed, init once, start; prints the connection URL
#   scripts/postgres.sh down   stop it
#   scripts/postgres.sh url    print the connection URL
set -euo pipefail
DIR=${QUARTET_PG_DIR:-/var/tmp/quartet/postgres}
PORT=${QUARTET_PG_PORT:-15432}
URL="postgres://postgres@127.0.0.1:$PORT/postgres"
say() { printf '[postgres] %s\n' "$*" >&2; }

bin_dir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
# PostgreSQL refuses to run as root: run its tools as the `postgres` user the package creates.
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

up() {
  if [[ -z $(bin_dir) ]]; then
    say "installing Debian's postgresql"
    if [[ $(id -u) == 0 ]]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
  fi
  local bin; bin=$(bin_dir)
  mkdir -p "$DIR"
  [[ $(id -u) == 0 ]] && chown postgres:postgres "$DIR"
  if [[ ! -f $DIR/data/PG_VERSION ]]; then
    say "initialising a cluster in $DIR/data"
    as_pg "$bin/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
  fi
  if ! as_pg "$bin/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
    say "starting on 127.0.0.1:$PORT"
    as_pg "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 30 \
      -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null ||
      { tail -20 "$DIR/server.log" >&2; exit 1; }
  fi
  echo "$URL"
}

down() {
  local bin; bin=$(bin_dir)
  [[ -n $bin && -f $DIR/data/PG_VERSION ]] || return 0
  as_pg "$bin/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
}

case ${1:-} in
  up) up ;;
  down) down ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 up|down|url" >&2; exit 2 ;;
esac
