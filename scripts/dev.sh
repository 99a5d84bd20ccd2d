#!/usr/bin/env bash
# `make dev`: builds every Quartet binary and runs it on loopback with its embedded defaults,
# prints each endpoint, shows each one answering, and stops them all on Ctrl-C (SIGTERM to each,
# then a wait, so no process is left behind).
#
# Logs go to $QUARTET_DEV_DIR/logs (default /var/tmp/quartet/dev/logs).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-/var/tmp/quartet/target}
DIR=${QUARTET_DEV_DIR:-/var/tmp/quartet/dev}
mkdir -p "$DIR/logs"
say() { printf '[dev] %s\n' "$*" >&2; }

say "building"
CARGO_TARGET_DIR=$TARGET cargo build --workspace --bins --locked

# name  gRPC  REST  admin   (ports are each service's defaults; only the address is loopback)
# quartet-db runs as a three-replica group: replica N on the 7N40 block, MySQL on 7N43.
SERVICES=(
  "quartet-auth 7110 7111 7119"
  "quartet-task-gateway 7120 7121 7129"
  "quartet-rpc-gateway 7130 7131 7139"
  "quartet-db 7140 7141 7149"
  "quartet-db 7240 7241 7249"
  "quartet-db 7340 7341 7349"
  "quartet-operator - - 7159"
)
DB_MEMBERS=1=127.0.0.1:7140/127.0.0.1:7143,2=127.0.0.1:7240/127.0.0.1:7243,3=127.0.0.1:7340/127.0.0.1:7343
# quartet-task-gateway keeps its queues and results in its embedded SQLite broker for dev (a
# Redis URL instead makes it share them with Celery).
TASKS_BROKER=sqlite:$DIR/tasks.sqlite
RAFT_SECRET_FILE=$DIR/raft-secret
[[ -s $RAFT_SECRET_FILE ]] || head -c 24 /dev/urandom | base64 >"$RAFT_SECRET_FILE"

# quartet-auth keeps its store in the dev directory and bootstraps an administrator whose
# password is in a file, as a mounted Secret would hold it; the other services verify its tokens.
ADMIN_PASSWORD_FILE=$DIR/admin-password
[[ -s $ADMIN_PASSWORD_FILE ]] || head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ADMIN_PASSWORD_FILE"
JWKS=http://127.0.0.1:7111/.well-known/jwks.json
# quartet-db's MySQL front: user app, password in a file as a Secret would hold it.
DB_PASSWORD_FILE=$DIR/db-password
[[ -s $DB_PASSWORD_FILE ]] || echo "app-dev-password" >"$DB_PASSWORD_FILE"
command -v mariadb >/dev/null || { say "installing the MySQL command-line client (Debian's mariadb-client)";
  { [[ $(id -u) == 0 ]] && apt-get install -y -qq --no-install-recommends mariadb-client >/dev/null; } ||
  sudo apt-get install -y -qq --no-install-recommends mariadb-client >/dev/null; }
extra_args() { # name grpc-port
  case $1 in
    quartet-auth) echo "--store-url sqlite://$DIR/auth.db?mode=rwc --bootstrap-admin-user admin --bootstrap-admin-password-file $ADMIN_PASSWORD_FILE --bootstrap-cli-client quartet-cli --tokens-issuer http://127.0.0.1:7111" ;;
    quartet-operator) ;;
    quartet-db) local n=${2:1:1}
      echo "--auth-jwks-url $JWKS --auth-issuer http://127.0.0.1:7111 --mysql-listen 127.0.0.1:7${n}43 --mysql-database shop --mysql-user app --mysql-password-file $DB_PASSWORD_FILE --storage-path $DIR/db-$n --raft-node-id $n --raft-initial-members $DB_MEMBERS --raft-secret-file $RAFT_SECRET_FILE" ;;
    quartet-task-gateway) echo "--auth-jwks-url $JWKS --auth-issuer http://127.0.0.1:7111 --redis-broker-url $TASKS_BROKER --worker-enabled true" ;;
    quartet-rpc-gateway) echo "--auth-jwks-url $JWKS --auth-issuer http://127.0.0.1:7111 --rpc-backends demo=tcp://127.0.0.1:7135,reports=tcp://127.0.0.1:7136" ;;
    *) echo "--auth-jwks-url $JWKS --auth-issuer http://127.0.0.1:7111" ;;
  esac
}

pids=()
stop_all() {
  trap - INT TERM EXIT
  if [[ ${#pids[@]} -eq 0 ]]; then
    return 0
  fi
  say "stopping ${#pids[@]} processes"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  say "all stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

for line in "${SERVICES[@]}"; do
  read -r name grpc http admin <<<"$line"
  for port in $grpc $http $admin; do
    [[ $port == - ]] && continue
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      say "port $port (for $name) is already in use; stop whatever holds it and retry"; exit 1
    fi
  done
  args=(--admin-listen "127.0.0.1:$admin")
  [[ $grpc != - ]] && args+=(--grpc-listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$http")
  # shellcheck disable=SC2046 # the extra arguments are words on purpose
  log=$DIR/logs/$name.log; [[ $name == quartet-db ]] && log=$DIR/logs/$name-${grpc:1:1}.log
  "$TARGET/debug/$name" "${args[@]}" $(extra_args "$name" "$grpc") >"$log" 2>&1 &
  pids+=($!)
done

# Two zerorpc services behind quartet-rpc-gateway: zerorpc-python's Demo (add, count, …) and
# reports, written in Rust with the gateway's zerorpc library.
PYTHON=$(scripts/python.sh)
(cd e2e/python && exec "$PYTHON" zerorpc_peer.py server tcp://127.0.0.1:7135) >"$DIR/logs/zerorpc-demo-python.log" 2>&1 &
pids+=($!)
"$TARGET/debug/quartet-zerorpc-demo" tcp://127.0.0.1:7136 >"$DIR/logs/zerorpc-demo-rust.log" 2>&1 &
pids+=($!)

for line in "${SERVICES[@]}"; do
  read -r name grpc http admin <<<"$line"
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$admin/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS "http://127.0.0.1:$admin/healthz" >/dev/null || { say "$name did not start (admin port $admin); see $DIR/logs"; exit 1; }
done

printf '\n%-22s %-24s %-32s %s\n' SERVICE gRPC REST ADMIN
for line in "${SERVICES[@]}"; do
  read -r name grpc http admin <<<"$line"
  if [[ $grpc == - ]]; then g=-; r=-; else g="127.0.0.1:$grpc"; r="http://127.0.0.1:$http/v1"; fi
  printf '%-22s %-24s %-32s %s\n' "$name" "$g" "$r" "http://127.0.0.1:$admin/healthz"
done
printf '%-22s %-24s\n' "quartet-db (MySQL)" "127.0.0.1:7143, :7243, :7343  (mariadb -h 127.0.0.1 -P 7143 -u app -p\$(cat $DB_PASSWORD_FILE) shop)"
printf '\nEach answers:\n'
for line in "${SERVICES[@]}"; do
  read -r name grpc http admin <<<"$line"
  if [[ $grpc == - ]]; then
    printf '  %-22s /readyz  %s\n' "$name" "$(curl -fsS "http://127.0.0.1:$admin/readyz")"
  else
    printf '  %-22s /v1/info %s\n' "$name" "$(curl -fsS "http://127.0.0.1:$http/v1/info")"
  fi
done
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
token() { # user password
  curl -fsS http://127.0.0.1:7111/oauth2/token -d grant_type=password -d client_id=quartet-cli \
    --data-urlencode "username=$1" --data-urlencode "password=$2" | json "['access_token']"
}
printf '\nA login, a user with a role, and a token another service accepts:\n'
ADMIN_TOKEN=$(token admin "$(cat "$ADMIN_PASSWORD_FILE")")
printf '  admin logged in (password in %s); token for quartet-cli issued\n' "$ADMIN_PASSWORD_FILE"
curl -fsS http://127.0.0.1:7111/v1/admin/roles -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
  -d '{"name":"ops","description":"runs tasks","permissions":["task:submit:*","task:read:*","rpc:call:reports.*"]}' >/dev/null 2>&1 || true
curl -fsS http://127.0.0.1:7111/v1/admin/users -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
  -d '{"name":"ada","password":"ada-dev-password","roles":["ops"]}' >/dev/null 2>&1 || true
printf '  role ops (task:submit:*, task:read:*, rpc:call:reports.*) and user ada (password ada-dev-password) exist\n'
ADA_TOKEN=$(token ada ada-dev-password)
printf '  quartet-task-gateway /v1/whoami with ada'"'"'s token: %s\n' \
  "$(curl -fsS http://127.0.0.1:7121/v1/whoami -H "Authorization: Bearer $ADA_TOKEN")"
printf '  the same call without a token: HTTP %s\n' "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:7121/v1/whoami)"

printf '\nA task submitted over REST with ada'"'"'s token, run by the gateway'"'"'s Rust worker (embedded broker %s):\n' "$TASKS_BROKER"
TASK=$(curl -fsS http://127.0.0.1:7121/v1/tasks -H "Authorization: Bearer $ADA_TOKEN" -H 'content-type: application/json' \
  -d '{"name":"quartet.add","args":[2,40]}')
printf '  POST /v1/tasks {"name":"quartet.add","args":[2,40]} -> %s\n' "$TASK"
TASK_ID=$(printf '%s' "$TASK" | json "['id']")
printf '  GET /v1/tasks/%s?wait=10 -> %s\n' "$TASK_ID" \
  "$(curl -fsS "http://127.0.0.1:7121/v1/tasks/$TASK_ID?wait=10" -H "Authorization: Bearer $ADA_TOKEN")"

printf '\nzerorpc services through quartet-rpc-gateway (REST; zerorpc clients use tcp://127.0.0.1:7134):\n'
for _ in $(seq 1 100); do grep -q ready "$DIR/logs/zerorpc-demo-python.log" 2>/dev/null && break; sleep 0.1; done
printf '  POST /v1/services/reports/daily [3] (Rust service) with ada'"'"'s token -> %s\n' \
  "$(curl -sS http://127.0.0.1:7131/v1/services/reports/daily -H "Authorization: Bearer $ADA_TOKEN" -H 'content-type: application/json' -d '[3]')"
printf '  POST /v1/services/demo/add [20,22] (Python service) with the admin token -> %s\n' \
  "$(curl -sS http://127.0.0.1:7131/v1/services/demo/add -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' -d '[20,22]')"
printf '  the same with ada'"'"'s token (her role has rpc:call:reports.* only) -> HTTP %s\n' \
  "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:7131/v1/services/demo/add -H "Authorization: Bearer $ADA_TOKEN" -H 'content-type: application/json' -d '[20,22]')"
printf '  GET /v1/services/demo (from its backends'"'"' inspect, with their health) -> %s\n' \
  "$(curl -sS http://127.0.0.1:7131/v1/services/demo -H "Authorization: Bearer $ADMIN_TOKEN" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"methods": [m["name"] for m in d["methods"] or []], "backends": d["backends"]}))')"
printf '\nThe same services over gRPC (quartet.rpc.v1.Rpc, a client that learns the types from server reflection):\n'
grpc_call() { (cd e2e/python && "$PYTHON" grpc_call.py 127.0.0.1:7130 "$@" 2>&1) | tr '\n' ' '; }
printf '  Invoke reports.daily [3] (Rust service) with ada'"'"'s token -> %s\n' \
  "$(grpc_call quartet.rpc.v1.Rpc/Invoke '{"service":"reports","method":"daily","argsJson":"[3]"}' "$ADA_TOKEN")"
printf '  InvokeStream demo.count [3] (Python service) with the admin token -> %s\n' \
  "$(grpc_call quartet.rpc.v1.Rpc/InvokeStream '{"service":"demo","method":"count","argsJson":"[3]"}' "$ADMIN_TOKEN")"
printf '  Invoke demo.add [1,2] without a token -> %s\n' \
  "$(grpc_call quartet.rpc.v1.Rpc/Invoke '{"service":"demo","method":"add","argsJson":"[1,2]"}')"

printf '\nquartet-db, a group of three replicas:\n'
leader=
for _ in $(seq 1 100); do
  for n in 1 2 3; do
    curl -fsS "http://127.0.0.1:7${n}49/metrics" 2>/dev/null | grep -qx 'quartet_db_raft_is_leader 1' && leader=$n
  done
  [[ -n $leader ]] && break
  sleep 0.1
done
[[ -n $leader ]] || { say "the quartet-db group elected no leader; see $DIR/logs"; exit 1; }
follower=$(( leader % 3 + 1 ))
status=$(curl -fsS "http://127.0.0.1:7${leader}41/v1/cluster" -H "Authorization: Bearer $ADMIN_TOKEN")
python3 - "$status" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
print(f"  GET /v1/cluster (admin token): node {s['node']} is {s['role']}, term {s['term']}, applied {s['applied']}")
for m in s["members"]:
    kind = "voter" if m["voter"] else "learner"
    print(f"    member {m['id']}: {kind}, mysql {m['mysql']}, lag {m['lag']}")
PY
DB="mariadb -h 127.0.0.1 -u app -p$(cat "$DB_PASSWORD_FILE") -D shop"

printf '\nA mysql client session with the leader (127.0.0.1:7%s43, user app, database shop):\n' "$leader"
$DB -P "7${leader}43" --table -e \
  "CREATE TABLE IF NOT EXISTS visits (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, who VARCHAR(40) NOT NULL, at VARCHAR(32) DEFAULT CURRENT_TIMESTAMP);
   INSERT INTO visits (who) VALUES ('ada'), ('bob');
   SELECT who, COUNT(*) AS visits FROM visits GROUP BY who ORDER BY who;" | sed 's/^/  /'
printf '\nThe same write on a follower (127.0.0.1:7%s43) is refused, naming the leader:\n' "$follower"
$DB -P "7${follower}43" -e "INSERT INTO visits (who) VALUES ('eve')" 2>&1 | sed 's/^/  /' || true
printf 'A follower read that accepts data up to 5 s old:\n'
$DB -P "7${follower}43" --table -e "SET quartet_read_staleness_ms = 5000; SELECT COUNT(*) AS visits FROM visits;" | sed 's/^/  /'

printf '\nLogs: %s/logs/. OpenAPI: http://127.0.0.1:7111/openapi.json. Press Ctrl-C to stop everything.\n' "$DIR"
wait -n "${pids[@]}" || true
say "a process exited on its own; see $DIR/logs"
exit 1
