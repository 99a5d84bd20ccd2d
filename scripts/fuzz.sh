#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of untrusted input (docs/fuzzing.md), with
# cargo-fuzz and libFuzzer on the stable toolchain. `make fuzz` runs it; `make test` runs it
# short (`--seconds 10`).
#
#   scripts/fuzz.sh [--seconds N] [TARGET...]     fuzz each target (all by default) N seconds
#   scripts/fuzz.sh --smoke RUNS [TARGET...]      RUNS inputs each from the committed seeds, with
#                                                 a fixed seed: the same inputs every time for the
#                                                 same code (make test's run; nothing is kept)
#   scripts/fuzz.sh --build                       only build the targets
#   scripts/fuzz.sh --list                        name the targets
#
# Installs cargo-fuzz (pinned) when it is missing; idempotent. Builds into FUZZ_TARGET_DIR
# (instrumented builds share nothing with the normal ones). A run grows its corpus under
# FUZZ_CORPUS_DIR/<target>, reading the committed seeds in fuzz/corpus/<target> as well;
# crashes go to fuzz/artifacts/<target>/ and fail the run, with the input as hex and the
# backtrace. Settings (environment):
#   FUZZ_SECONDS      per target (default 180)         FUZZ_TIMEOUT   per input, s (default 10)
#   FUZZ_RSS_MB       memory limit (default 2048)      FUZZ_MAX_LEN   longest input (libFuzzer's
#   FUZZ_SANITIZER    none (default) or address                       choice: 4096 or the
#   FUZZ_TARGET_DIR   default /var/tmp/quartet/fuzz-target            longest seed)
#   FUZZ_CORPUS_DIR   default /var/tmp/quartet/fuzz-corpus
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '[fuzz] %s\n' "$*" >&2; }

CARGO_FUZZ_VERSION=0.13.2
SECONDS_EACH=${FUZZ_SECONDS:-180}
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}
SANITIZER=${FUZZ_SANITIZER:-none}
TARGET_DIR=${FUZZ_TARGET_DIR:-/var/tmp/quartet/fuzz-target}
CORPUS_DIR=${FUZZ_CORPUS_DIR:-/var/tmp/quartet/fuzz-corpus}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR=$TARGET_DIR/$TRIPLE/release

mode=run
smoke_runs=
targets=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --smoke) smoke_runs=$2; shift 2 ;;
    --build) mode=build; shift ;;
    --list) mode=list; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) say "unknown option $1 (see --help)"; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=($(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^quartet-fuzz$'))
if [[ $mode == list ]]; then printf '%s\n' "${all[@]}"; exit 0; fi
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
for t in "${targets[@]}"; do
  printf '%s\n' "${all[@]}" | grep -qx "$t" || { say "no target $t (targets: ${all[*]})"; exit 2; }
done

# cargo-fuzz from crates.io, built once per machine (about a minute). Its own target dir,
# not the Makefile's CARGO_TARGET_DIR.
if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  env -u CARGO_TARGET_DIR cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

# libFuzzer's instrumentation (SanitizerCoverage) needs rustc's unstable flags; the stable
# toolchain accepts them under RUSTC_BOOTSTRAP, for this build only.
say "building ${#all[@]} targets (sanitizer: $SANITIZER) into $TARGET_DIR"
RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir fuzz --sanitizer "$SANITIZER" \
  --target-dir "$TARGET_DIR" --codegen-units 16 >&2
[[ $mode == build ]] && exit 0

summary=()
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$CORPUS_DIR/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log=$(mktemp)
  args=(-timeout="$TIMEOUT" -rss_limit_mb="$RSS_MB"
        -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1)
  corpora=("$CORPUS_DIR/$t" "fuzz/corpus/$t")
  if [[ -n $smoke_runs ]]; then
    # Reproducible: the committed seeds only, a fixed seed, a count of inputs rather than a
    # time, and what the run adds goes to a scratch directory.
    scratch=$(mktemp -d)
    args+=(-runs="$smoke_runs" -seed=1)
    corpora=("$scratch" "fuzz/corpus/$t")
  else
    args+=(-max_total_time="$SECONDS_EACH")
  fi
  [[ -n ${FUZZ_MAX_LEN:-} ]] && args+=(-max_len="$FUZZ_MAX_LEN")
  [[ -f fuzz/dict/$t.dict ]] && args+=(-dict="fuzz/dict/$t.dict")
  if [[ -n $smoke_runs ]]; then say "$t: $smoke_runs inputs from the seeds"; else say "$t: ${SECONDS_EACH}s"; fi
  status=0
  "$BIN_DIR/$t" "${args[@]}" "${corpora[@]}" >"$log" 2>&1 || status=$?
  [[ -n $smoke_runs ]] && rm -rf "$scratch"
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  corpus=$(find "$CORPUS_DIR/$t" -type f | wc -l)
  if [[ $status -ne 0 ]]; then
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    say "$t FAILED (exit $status): $artifact"
    grep -v '^#[0-9]' "$log" | tail -60 >&2
    if [[ -n $artifact && -f $artifact ]]; then
      say "input ($(wc -c <"$artifact") bytes), as hex:"
      od -An -v -tx1 "$artifact" | tr -d ' \n' | head -c 4096 >&2; echo >&2
      say "replay: $BIN_DIR/$t $artifact"
    fi
    failed+=("$t")
    summary+=("$(printf '%-16s FAILED  %s' "$t" "${artifact:-see the log above}")")
  else
    summary+=("$(printf '%-16s ok      %10s runs  %7s exec/s  corpus %s' "$t" "${runs:-?}" "${rate:-?}" "$corpus")")
  fi
  rm -f "$log"
done
printf '[fuzz] %s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
  say "crashes in: ${failed[*]} (docs/fuzzing.md says how to reproduce and minimise)"
  exit 1
fi
if [[ -n $smoke_runs ]]; then each="$smoke_runs inputs"; else each="${SECONDS_EACH}s"; fi
say "no crash in ${#targets[@]} targets, $each each"
