#!/usr/bin/env bash
# Installs what building and testing Quartet need on a fresh Debian 12 machine. Idempotent:
# a second run only checks. Called by `make test` and `make dev`.
#
#   - Debian packages: build tools, Docker CLI check, and what the Kubernetes test harness uses
#   - the Python venv of the e2e tests' real peers (scripts/python.sh, e2e/requirements.txt)
#   - the Kubernetes test binaries (etcd, kube-apiserver, kubectl, helm), cached under
#     /var/tmp/quartet/k8s by e2e/k8s/envtest.sh (built once per machine, a few minutes)
#
# protoc is not needed: proto/build.rs compiles .proto files with protox, in Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

# openjdk + libshiro-java: the real Apache Shiro, a test and benchmark peer of quartet-auth.
# mariadb-client: the MySQL command-line client, a real client of quartet-db.
# sysbench: the OLTP load generator quartet-db is tested and benchmarked with.
# libclang-dev: bindgen generates SQLite's session-extension bindings (quartet-db replication).
# libzmq3-dev: libzmq for quartet-rpc-gateway's zerorpc (Debian builds it with libsodium: CURVE).
PACKAGES=(build-essential pkg-config binutils curl ca-certificates openssl python3 python3-venv
          golang-go dpkg-dev make rsync openjdk-17-jdk-headless libshiro-java libclang-dev mariadb-client sysbench
          libzmq3-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  say "apt-get install ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { say "cargo is missing: install Rust with rustup (https://rustup.rs)"; exit 1; }
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
command -v docker >/dev/null || { say "docker is missing: the e2e tests need a running Docker engine"; exit 1; }
docker info >/dev/null 2>&1 || { say "the Docker engine is not reachable (docker info failed)"; exit 1; }

QUARTET_K8S_KCM=1 e2e/k8s/envtest.sh install
scripts/python.sh >/dev/null
say "ready"
