#!/usr/bin/env bash
# `make bench`: each benchmark runs Quartet and its peer in the same run, on the same machine,
# and reports the ratio. Figures go to standard output as Markdown rows for docs/BENCHMARKS.md.
#
#   scripts/bench.sh [rest|auth|all]   (default all)
#
# rest: the kit's REST path (actix-web with the request span and metrics middleware) serving
#       GET /v1/info from a release build of quartet-auth, against nginx returning the same JSON
#       from its config, both with two workers, loaded by wrk. It bounds what every Quartet REST
#       API pays before its own work starts.
# auth: quartet-auth's permission checks, local token verifications and logins per second
#       (services/auth/benches/auth.rs) against the real Apache Shiro (Debian's libshiro-java),
#       PyJWT and the argon2 reference implementation (argon2-cffi), on the same inputs.
set -euo pipefail
WHAT=${1:-all}
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-/var/tmp/quartet/target}
WORK=${QUARTET_BENCH_DIR:-/var/tmp/quartet/bench}
DURATION=${BENCH_DURATION:-10s}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
ROUNDS=${BENCH_ROUNDS:-3}
say() { printf '[bench] %s\n' "$*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

bench_auth() {
  local out=$WORK/auth seconds=${BENCH_SECONDS:-5}
  mkdir -p "$out"
  say "quartet-auth figures (cargo bench, optimised)"
  CARGO_TARGET_DIR=$TARGET cargo bench --locked -p quartet-auth --bench auth -- "$seconds" "$out" >"$out/ours.txt"
  say "Apache Shiro $(dpkg-query -W -f='${Version}' libshiro-java) permission checks"
  local jars=/usr/share/java/shiro-core.jar:/usr/share/java/commons-beanutils.jar:/usr/share/java/slf4j-api.jar
  mkdir -p "$WORK/java"
  javac -d "$WORK/java" -cp "$jars" e2e/java/ShiroPeer.java
  java -cp "$WORK/java:$jars" ShiroPeer bench "$seconds" 2>/dev/null | awk '{print "shiro_permission_checks_per_sec", $1}' >"$out/shiro.txt"
  local py; py=$(scripts/python.sh)
  say "PyJWT and argon2-cffi"
  "$py" e2e/python/bench_auth.py jwt "$out" "$seconds" >"$out/peers.txt"
  "$py" e2e/python/bench_auth.py argon2 "$out" "$seconds" >>"$out/peers.txt"
  cat "$out/ours.txt" "$out/shiro.txt" "$out/peers.txt" | awk '
    { v[$1] = $2 }
    END {
      printf "| figure | quartet-auth | peer | peer value | ratio |\n|---|---|---|---|---|\n"
      printf "| permission checks/s | %.0f | Apache Shiro WildcardPermission | %.0f | %.2f |\n", v["permission_checks_per_sec"], v["shiro_permission_checks_per_sec"], v["permission_checks_per_sec"] / v["shiro_permission_checks_per_sec"]
      printf "| local token verifications/s (ES256) | %.0f | PyJWT + cryptography | %.0f | %.2f |\n", v["token_verifications_per_sec"], v["pyjwt_verifications_per_sec"], v["token_verifications_per_sec"] / v["pyjwt_verifications_per_sec"]
      printf "| logins/s (argon2id m=%d KiB, t=%d, p=%d) | %.1f | argon2-cffi verify alone | %.1f | %.2f |\n", v["argon2_memory_kib"], v["argon2_iterations"], v["argon2_parallelism"], v["logins_per_sec"], v["argon2_cffi_verifications_per_sec"], v["logins_per_sec"] / v["argon2_cffi_verifications_per_sec"]
    }'
}

mkdir -p "$WORK"
if [[ $WHAT == auth || $WHAT == all ]]; then
  bench_auth
fi
[[ $WHAT == rest || $WHAT == all ]] || exit 0

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
