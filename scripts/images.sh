#!/usr/bin/env bash
# Builds one container image per Quartet binary with the local Docker engine, pulling nothing.
#
#   scripts/images.sh [--profile release|dev] [--tag TAG]
#
# Images are named quartet/<role>:<tag> (quartet/auth, quartet/task-gateway, quartet/rpc-gateway,
# quartet/db, quartet/operator). Binaries come from `cargo build` on the host. The base is
# $QUARTET_IMAGE_BASE when set (e.g. gcr.io/distroless/cc-debian12:nonroot where a registry is
# reachable), else quartet/base:local, made here from the host's glibc with `docker import`.
set -euo pipefail

cd "$(dirname "$0")/.."
PROFILE=release
TAG=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
while [[ $# -gt 0 ]]; do
  case $1 in
    --profile) PROFILE=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    *) echo "usage: $0 [--profile release|dev] [--tag TAG]" >&2; exit 2 ;;
  esac
done
BINARIES=(quartet-auth quartet-task-gateway quartet-rpc-gateway quartet-db quartet-operator)
TARGET=${CARGO_TARGET_DIR:-target}
OUT_DIR=$TARGET/$([[ $PROFILE == dev ]] && echo debug || echo "$PROFILE")
STAGE=${QUARTET_IMAGE_STAGE:-/var/tmp/quartet/images}
say() { printf '[images] %s\n' "$*" >&2; }

say "building binaries (profile $PROFILE)"
cargo build --profile "$PROFILE" --bins --locked $(printf -- '-p %s ' "${BINARIES[@]}")

# The local base: exactly the shared libraries the binaries link, CA certificates, and the
# non-root user 65532 that distroless calls `nonroot`. Rebuilt when that list changes.
make_local_base() {
  local root=$STAGE/base-rootfs libs
  libs=$(for b in "${BINARIES[@]}"; do ldd "$OUT_DIR/$b"; done | grep -o '/[^ ]*\.so[^ ]*' | sort -u)
  local stamp
  stamp=$(printf '%s\n' "$libs" | sha256sum | cut -c1-12)
  if docker image inspect "quartet/base:local-$stamp" >/dev/null 2>&1; then
    docker tag "quartet/base:local-$stamp" quartet/base:local
    return
  fi
  say "making quartet/base:local from the host's libraries"
  rm -rf "$root" && mkdir -p "$root"/{etc/ssl/certs,tmp,home/nonroot}
  local lib
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  # Binaries ask for the loader at /lib64; on Debian that is a symlink into /lib/x86_64-linux-gnu.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
    --message "quartet local base: glibc from the build host" - "quartet/base:local-$stamp" >/dev/null
  docker tag "quartet/base:local-$stamp" quartet/base:local
  rm -rf "$root"
}

BASE=${QUARTET_IMAGE_BASE:-}
if [[ -z $BASE ]]; then
  make_local_base
  BASE=quartet/base:local
fi

for bin in "${BINARIES[@]}"; do
  ctx=$STAGE/context-$bin
  rm -rf "$ctx" && mkdir -p "$ctx"
  # Debug symbols stay on the host; the image carries the stripped binary.
  objcopy --strip-debug "$OUT_DIR/$bin" "$ctx/$bin"
  image=quartet/${bin#quartet-}:$TAG
  DOCKER_BUILDKIT=0 docker build --quiet --file Dockerfile --build-arg "BASE=$BASE" --build-arg "BINARY=$bin" \
    --tag "$image" "$ctx" >"$STAGE/build-$bin.log" 2>&1 || { cat "$STAGE/build-$bin.log" >&2; exit 1; }
  rm -rf "$ctx"
  say "$image  $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.1f MiB", $1/1048576}')"
done
