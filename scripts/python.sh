#!/usr/bin/env bash
# The Python environment of the end-to-end tests: a venv at $QUARTET_VENV (default
# /var/tmp/quartet/venv) with e2e/requirements.txt installed. Idempotent: reinstalls only when
# the requirements change. Prints the venv's python path.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${QUARTET_VENV:-/var/tmp/quartet/venv}
REQ=e2e/requirements.txt
stamp=$(sha256sum "$REQ" | cut -c1-16)
if [[ ! -x $VENV/bin/python || $(cat "$VENV/.quartet-stamp" 2>/dev/null) != "$stamp" ]]; then
  printf '[python] installing %s into %s\n' "$REQ" "$VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  echo "$stamp" >"$VENV/.quartet-stamp"
fi
echo "$VENV/bin/python"
