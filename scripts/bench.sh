#!/usr/bin/env bash
# `make bench`: each benchmark runs Quartet and its peer in the same run, on the same machine,
# and reports the ratio. Figures go to standard output as Markdown rows for docs/BENCHMARKS.md.
#
# Today's benchmark: the kit's REST path (actix-web with the request span and metrics
# middleware) serving GET /v1/info from a release build of quartet-auth, against nginx
# returning the same JSON body from its config, both with two workers, loaded by wrk.
# It bounds what every Quartet REST API pays before its own work starts.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-/var/tmp/quartet/target}
WORK=${QUARTET_BENCH_DIR:-/var/tmp/quartet/bench}
DURATION=${BENCH_DURATION:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
ROUNDS=${BENCH_ROUNDS:-3}
say() { printf '[bench] %s\n' "$*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

need=()
command -v wrk >/dev/null || need+=(wrk)
[[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
if [[ ${#need[@]} -gt 0 ]]; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

say "building quartet-auth (release)"
CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p quartet-auth
mkdir -p "$WORK"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT

"$TARGET/release/quartet-auth" --log-filter warn --admin-listen 127.0.0.1:17119 \
  --grpc-listen 127.0.0.1:17110 --http-listen 127.0.0.1:17111 2>"$WORK/quartet-auth.log" &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:17111/v1/info >/dev/null 2>&1 && break; sleep 0.1; done
BODY=$(curl -fsS http://127.0.0.1:17111/v1/info)

cat >"$WORK/nginx.conf" <<NGINX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  server {
    listen 127.0.0.1:18080;
    location = /v1/info { default_type application/json; return 200 '$BODY'; }
  }
}
NGINX
/usr/sbin/nginx -c "$WORK/nginx.conf" -p "$WORK" &
pids+=($!)
for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:18080/v1/info >/dev/null 2>&1 && break; sleep 0.1; done

run() { # url → "rps p99"
  wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency "$1" |
    awk '/Requests\/sec/ {rps=$2} /^ +99%/ {p99=$2} END {print rps, p99}'
}
printf '| round | quartet-auth req/s | nginx req/s | ratio | quartet p99 | nginx p99 |\n|---|---|---|---|---|---|\n'
for round in $(seq 1 "$ROUNDS"); do
  read -r q_rps q_p99 < <(run http://127.0.0.1:17111/v1/info)
  read -r n_rps n_p99 < <(run http://127.0.0.1:18080/v1/info)
  ratio=$(awk -v a="$q_rps" -v b="$n_rps" 'BEGIN {printf "%.2f", a / b}')
  printf '| %s | %s | %s | %s | %s | %s |\n' "$round" "$q_rps" "$n_rps" "$ratio" "$q_p99" "$n_p99"
done
