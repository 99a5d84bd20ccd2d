#!/usr/bin/env bash
# `make bench`: each benchmark runs Quartet and its peer in the same run, on the same machine,
# and reports the ratio. Figures go to standard output as Markdown rows for docs/BENCHMARKS.md.
#
#   scripts/bench.sh [rest|auth|db|tasks|rpc|all]   (default all)
#
# rest: the kit's REST path (actix-web with the request span and metrics middleware) serving
#       GET /v1/info from a release build of quartet-auth, against nginx returning the same JSON
#       from its config, both with two workers, loaded by wrk. It bounds what every Quartet REST
#       API pays before its own work starts.
# auth: quartet-auth's permission checks, local token verifications and logins per second
#       (services/auth/benches/auth.rs) against the real Apache Shiro (Debian's libshiro-java),
#       PyJWT and the argon2 reference implementation (argon2-cffi), on the same inputs.
# db:   sysbench oltp_point_select and oltp_read_write against a three-replica quartet-db
#       group (release build, every commit on a majority) and against MariaDB (Debian's
#       mariadb-server, InnoDB, durable commits), same tables, threads and duration; then the
#       time from killing the group's leader to the first acknowledged write, three times.
# tasks: quartet-task-gateway's Redis layer and Rust worker (release) against Celery 5.7 (its
#       client, a prefork worker), same Redis, same task (add two numbers), same concurrency:
#       publish rate, end-to-end throughput, submit->result round trip p50/p99.
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

bench_db() {
  local out=$WORK/db threads=${BENCH_DB_THREADS:-8} seconds=${BENCH_DB_SECONDS:-20}
  local tables=${BENCH_DB_TABLES:-4} size=${BENCH_DB_TABLE_SIZE:-10000}
  local need=()
  command -v sysbench >/dev/null || need+=(sysbench)
  command -v mariadbd >/dev/null || need+=(mariadb-server)
  if [[ ${#need[@]} -gt 0 ]]; then
    say "apt-get install ${need[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  say "building quartet-db (release)"
  CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p quartet-db
  rm -rf "$out"; mkdir -p "$out"
  local dbpids=()
  stop_db() { kill -9 "${dbpids[@]}" 2>/dev/null || true; wait "${dbpids[@]}" 2>/dev/null || true; }
  trap stop_db EXIT

  say "MariaDB $(mariadbd --version | awk '{print $3}') on 127.0.0.1:13400"
  mariadb-install-db --user=root --datadir="$out/mariadb" --auth-root-authentication-method=normal >"$out/mariadb-install.log" 2>&1
  mariadbd --user=root --datadir="$out/mariadb" --port=13400 --bind-address=127.0.0.1 \
    --socket="$out/mariadb.sock" --pid-file="$out/mariadb.pid" --skip-log-bin \
    --innodb-buffer-pool-size=512M --innodb-flush-log-at-trx-commit=1 --max-connections=200 \
    >"$out/mariadb.log" 2>&1 &
  dbpids+=($!)
  for _ in $(seq 1 100); do [[ -S $out/mariadb.sock ]] && break; sleep 0.2; done
  # 'sb'@'localhost', not @'%': the anonymous ''@'localhost' would shadow a wildcard host.
  mariadb --socket="$out/mariadb.sock" -u root -e \
    "CREATE DATABASE sbtest; CREATE USER 'sb'@'localhost' IDENTIFIED BY 'sb'; GRANT ALL ON sbtest.* TO 'sb'@'localhost';"

  say "quartet-db, three replicas on 127.0.0.1:1350x (MySQL) / 1351x (gRPC)"
  echo sb >"$out/password"
  local members=1=127.0.0.1:13511/127.0.0.1:13501,2=127.0.0.1:13512/127.0.0.1:13502,3=127.0.0.1:13513/127.0.0.1:13503
  start_replica() { # n
    "$TARGET/release/quartet-db" --log-filter warn --admin-listen "127.0.0.1:1352$1" \
      --grpc-listen "127.0.0.1:1351$1" --http-listen "127.0.0.1:1353$1" --mysql-listen "127.0.0.1:1350$1" \
      --mysql-user sb --mysql-password-file "$out/password" --mysql-database sbtest \
      --storage-path "$out/replica-$1" --raft-node-id "$1" --raft-initial-members "$members" \
      2>>"$out/replica-$1.log" &
    replica_pid[$1]=$!
    dbpids+=($!)
  }
  local -a replica_pid
  for n in 1 2 3; do start_replica "$n"; done
  local leader_port=
  for _ in $(seq 1 100); do
    for n in 1 2 3; do
      curl -fsS "http://127.0.0.1:1352$n/metrics" 2>/dev/null | grep -qx 'quartet_db_raft_is_leader 1' && leader_port=1350$n
    done
    [[ -n $leader_port ]] && break
    sleep 0.1
  done
  [[ -n $leader_port ]] || { say "no leader"; return 1; }

  sb() { # port test action [options]
    local port=$1; shift
    sysbench "$@" --mysql-host=127.0.0.1 --mysql-port="$port" --mysql-user=sb --mysql-password=sb \
      --mysql-db=sbtest --tables="$tables" --table-size="$size" --threads="$threads" \
      --time="$seconds" --percentile=99 --report-interval=0
  }
  figures() { # report → "tps p99 errors"
    awk '/transactions:/ {gsub(/\(/, "", $3); tps=$3} /99th percentile:/ {p99=$3} /ignored errors:/ {err=$3} END {print tps, p99, err}'
  }
  printf '| test | quartet-db TPS | MariaDB TPS | TPS ratio | quartet-db p99 ms | MariaDB p99 ms | p99 ratio | errors (quartet-db / MariaDB) |\n|---|---|---|---|---|---|---|---|\n'
  for port in 13400 "$leader_port"; do
    sb "$port" oltp_read_write prepare >"$out/prepare-$port.log" 2>&1 ||
      { say "sysbench prepare failed on port $port"; cat "$out/prepare-$port.log" >&2; return 1; }
  done
  for test in oltp_point_select oltp_read_write; do
    sb "$leader_port" "$test" run >"$out/$test-quartet.txt" 2>&1
    sb 13400 "$test" run >"$out/$test-mariadb.txt" 2>&1
    for f in "$out/$test-quartet.txt" "$out/$test-mariadb.txt"; do
      grep -q FATAL "$f" && { say "sysbench failed, see $f"; sed -n '1,20p' "$f" >&2; return 1; }
    done
    read -r q_tps q_p99 q_err < <(figures <"$out/$test-quartet.txt")
    read -r m_tps m_p99 m_err < <(figures <"$out/$test-mariadb.txt")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s / %s |\n' "$test" "$q_tps" "$m_tps" \
      "$(awk -v a="$q_tps" -v b="$m_tps" 'BEGIN {printf "%.2f", a / b}')" "$q_p99" "$m_p99" \
      "$(awk -v a="$q_p99" -v b="$m_p99" 'BEGIN {printf "%.2f", a / b}')" "$q_err" "$m_err"
  done

  local py; py=$(scripts/python.sh)
  printf '\n| failover round | leader killed (pid) | kill → first acknowledged write |\n|---|---|---|\n'
  for round in 1 2 3; do
    local nodes=()
    for n in 1 2 3; do nodes+=("1350$n:1352$n:${replica_pid[$n]}"); done
    read -r _ ms _ pid < <("$py" e2e/python/db_failover.py sb sb sbtest "${nodes[@]}")
    printf '| %s | %s | %s ms |\n' "$round" "$pid" "$ms"
    for n in 1 2 3; do
      if [[ ${replica_pid[$n]} == "$pid" ]]; then wait "$pid" 2>/dev/null || true; start_replica "$n"; fi
    done
    sleep 3
  done
  stop_db
  trap - EXIT
}

bench_tasks() {
  local n=${BENCH_TASKS:-5000} trips=${BENCH_ROUND_TRIPS:-300} concurrency=${BENCH_TASKS_CONCURRENCY:-8}
  local out=$WORK/tasks; mkdir -p "$out"
  say "building the task gateway's benchmark (release)"
  CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p quartet-task-gateway --example bench_tasks
  local redis; redis=$(QUARTET_REDIS_PORT=16391 QUARTET_REDIS_DIR="$out/redis" scripts/redis.sh up)
  local py; py=$(scripts/python.sh)
  say "quartet-task-gateway: $n tasks, $trips round trips, concurrency $concurrency"
  "$TARGET/release/examples/bench_tasks" "$redis" "$n" "$trips" "$concurrency" >"$out/ours.txt"
  say "Celery $("$py" -c 'import celery; print(celery.__version__)'): the same, prefork concurrency $concurrency"
  (cd e2e/python && BROKER_URL="$redis/4" RESULT_URL="$redis/5" CELERY_CONCURRENCY=$concurrency \
    "$py" bench_celery.py "$n" "$trips" "bench-py-$$") >"$out/celery.txt"
  QUARTET_REDIS_PORT=16391 QUARTET_REDIS_DIR="$out/redis" scripts/redis.sh down
  cat "$out/ours.txt" "$out/celery.txt" | awk '
    { v[$1] = $2 }
    END {
      printf "| figure | quartet-task-gateway | Celery 5.7 | ratio |\n|---|---|---|---|\n"
      printf "| publish rate (tasks/s) | %.0f | %.0f | %.2f |\n", v["publish_per_sec"], v["celery_publish_per_sec"], v["publish_per_sec"] / v["celery_publish_per_sec"]
      printf "| end-to-end throughput (tasks/s) | %.0f | %.0f | %.2f |\n", v["end_to_end_per_sec"], v["celery_end_to_end_per_sec"], v["end_to_end_per_sec"] / v["celery_end_to_end_per_sec"]
      printf "| round trip p50 (ms) | %.2f | %.2f | %.2f |\n", v["round_trip_p50_ms"], v["celery_round_trip_p50_ms"], v["round_trip_p50_ms"] / v["celery_round_trip_p50_ms"]
      printf "| round trip p99 (ms) | %.2f | %.2f | %.2f |\n", v["round_trip_p99_ms"], v["celery_round_trip_p99_ms"], v["round_trip_p99_ms"] / v["celery_round_trip_p99_ms"]
    }'
}

# rpc: quartet-rpc-gateway's zerorpc library (release) against zerorpc-python 0.6.3, in one run:
#      sequential calls/s and p50/p99 for each pairing, calls/s with many in flight (greenlets
#      for Python), stream items/s, and calls through the gateway's zerorpc front with tokens
#      from quartet-auth (release), to a Python and to a Rust backend.
bench_rpc() {
  local n=${BENCH_RPC_CALLS:-3000} in_flight=${BENCH_RPC_IN_FLIGHT:-32}
  local out=$WORK/rpc; mkdir -p "$out"
  say "building the zerorpc benchmark, quartet-auth and quartet-rpc-gateway (release)"
  CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p quartet-rpc-gateway --example bench_zerorpc --bin quartet-rpc-gateway
  CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p quartet-auth
  local py; py=$(scripts/python.sh)
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  local -a rpc_pids=()
  # The peers and servers go with the function, also when a step fails.
  trap 'kill "${rpc_pids[@]}" 2>/dev/null || true' EXIT
  local port; port=$(free_port)
  (cd e2e/python && exec "$py" zerorpc_peer.py server "tcp://127.0.0.1:$port") >"$out/py-server.log" 2>&1 &
  rpc_pids+=($!)
  for _ in $(seq 1 100); do grep -q ready "$out/py-server.log" 2>/dev/null && break; sleep 0.1; done
  local pyb=(env -C e2e/python "$py" bench_zerorpc.py "tcp://127.0.0.1:$port")
  say "zerorpc-python client -> zerorpc-python server: $n calls one at a time, $((n * 4)) from $in_flight greenlets, a 20k-item stream"
  "${pyb[@]}" "$n" py_to_py >"$out/figures.txt"
  "${pyb[@]}" "$((n * 4))" py_to_py_parallel --concurrency "$in_flight" >>"$out/figures.txt"
  # zerorpc-python's own streams of 50 000 items and more end in LostRemote here: its
  # heartbeats starve while the gevent loop streams, so its stream is measured at 20 000.
  "${pyb[@]}" 20000 py_stream --stream >>"$out/figures.txt"
  say "our client and server: $n calls each, $in_flight in flight, a 100k-item stream"
  "$TARGET/release/examples/bench_zerorpc" direct "$py" "tcp://127.0.0.1:$port" "$n" "$in_flight" >>"$out/figures.txt"

  say "through quartet-rpc-gateway's zerorpc front (tokens from quartet-auth)"
  local rport aport gport front
  rport=$(free_port); aport=$(free_port); gport=$(free_port); front="tcp://127.0.0.1:$(free_port)"
  "$TARGET/release/examples/bench_zerorpc" serve "tcp://127.0.0.1:$rport" >"$out/rust-server.log" &
  rpc_pids+=($!)
  printf 'bench-admin-password' >"$out/admin-password"
  rm -f "$out/auth.db"
  "$TARGET/release/quartet-auth" --log-filter warn --admin-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
    --http-listen "127.0.0.1:$aport" --store-url "sqlite://$out/auth.db?mode=rwc" \
    --bootstrap-admin-user admin --bootstrap-admin-password-file "$out/admin-password" \
    --bootstrap-cli-client quartet-cli --tokens-issuer "http://127.0.0.1:$aport" 2>"$out/auth.log" &
  rpc_pids+=($!)
  "$TARGET/release/quartet-rpc-gateway" --log-filter warn --admin-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
    --http-listen "127.0.0.1:$gport" --auth-jwks-url "http://127.0.0.1:$aport/.well-known/jwks.json" \
    --auth-issuer "http://127.0.0.1:$aport" --rpc-zerorpc-listen "$front" \
    --rpc-backends "bench=tcp://127.0.0.1:$rport,demo=tcp://127.0.0.1:$port" 2>"$out/gateway.log" &
  rpc_pids+=($!)
  local token=
  for _ in $(seq 1 100); do
    token=$(curl -fsS "http://127.0.0.1:$aport/oauth2/token" -d grant_type=password -d client_id=quartet-cli \
      -d username=admin -d password=bench-admin-password 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' 2>/dev/null) && break
    sleep 0.1
  done
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$gport/v1/services" -H "authorization: Bearer $token" >/dev/null 2>&1 && break; sleep 0.1; done
  "$TARGET/release/examples/bench_zerorpc" gateway "$front" "$token" "$n" "$in_flight" >>"$out/figures.txt"
  env -C e2e/python "$py" bench_zerorpc.py "$front" "$n" py_gw_py --method demo.add --token "$token" >>"$out/figures.txt"
  kill "${rpc_pids[@]}" 2>/dev/null || true
  wait "${rpc_pids[@]}" 2>/dev/null || true
  trap - EXIT
  awk '
    { v[$1] = $2 }
    function row(label, key, base) {
      printf "| %s | %.0f | %s | %s | %.2f |\n", label, v[key "_calls_per_sec"], \
        (key "_p50_ms" in v) ? sprintf("%.3f", v[key "_p50_ms"]) : "", \
        (key "_p99_ms" in v) ? sprintf("%.3f", v[key "_p99_ms"]) : "", v[key "_calls_per_sec"] / base
    }
    END {
      seq = v["py_to_py_calls_per_sec"]; par = v["py_to_py_parallel_calls_per_sec"]
      printf "| pairing | calls/s | p50 (ms) | p99 (ms) | vs zerorpc-python (same shape) |\n|---|---|---|---|---|\n"
      row("Python client -> Python server", "py_to_py", seq)
      row("Python client -> our server", "py_to_rust", seq)
      row("our client -> Python server", "rust_to_py", seq)
      row("our client -> our server", "rust_to_rust", seq)
      row("Python client -> Python server, " IF " greenlets", "py_to_py_parallel", par)
      row("our client -> our server, " IF " in flight", "rust_to_rust_parallel", par)
      row("Python client -> gateway -> Python server", "py_gw_py", seq)
      row("our client -> gateway -> Python server", "rust_gw_py", seq)
      row("our client -> gateway -> our server", "rust_gw_rust", seq)
      row("our client -> gateway -> our server, " IF " in flight", "rust_gw_rust_parallel", par)
      printf "\nstream items/s: zerorpc-python %.0f, ours %.0f (%.2fx)\n", v["py_stream_items_per_sec"], \
        v["rust_stream_items_per_sec"], v["rust_stream_items_per_sec"] / v["py_stream_items_per_sec"]
    }' IF="$in_flight" "$out/figures.txt"
}

mkdir -p "$WORK"
if [[ $WHAT == rpc || $WHAT == all ]]; then
  bench_rpc
fi
if [[ $WHAT == tasks || $WHAT == all ]]; then
  bench_tasks
fi
if [[ $WHAT == db || $WHAT == all ]]; then
  bench_db
fi
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
