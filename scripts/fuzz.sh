#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60), one
# at a time, and prints per target the seconds run, libFuzzer's executions
# (stat::number_of_executed_units) and the crashes found. Exits non-zero
# when any target crashed (a panic, a failed property, a sanitizer report,
# a timeout or running out of memory).
#
# Each target starts from its committed seeds (fuzz/seeds/<target>/),
# copied into a scratch corpus, so the repository is never written to;
# a crashing input is copied to fuzz/artifacts/<target>/ (ignored by git)
# and the command that replays it is printed. docs/fuzzing.md says more.
#
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 7          # the smoke scripts/test.sh runs
#   FUZZ_TARGETS="decision" scripts/fuzz.sh 600
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECONDS_PER_TARGET="${1:-60}"
[[ "$SECONDS_PER_TARGET" =~ ^[1-9][0-9]*$ ]] || die "usage: scripts/fuzz.sh [seconds per target, a positive integer]"
FUZZ_DIR="$REPO_ROOT/fuzz"
read -r -a TARGETS <<<"${FUZZ_TARGETS:-config_parse credential_extraction path_normalisation decision}"

export PATH="$TOOLS_ROOT/bin:$PATH"
rustup run nightly rustc --version >/dev/null 2>&1 || die "no nightly toolchain: run scripts/setup.sh"
cargo-fuzz --version >/dev/null 2>&1 || die "cargo-fuzz not found in $TOOLS_ROOT/bin: run scripts/setup.sh"

# The dictionary each target's mutations draw tokens from.
dictionary() {
  case "$1" in
    config_parse) echo "$FUZZ_DIR/dicts/config.dict" ;;
    path_normalisation) echo "$FUZZ_DIR/dicts/path.dict" ;;
    *) echo "$FUZZ_DIR/dicts/headers.dict" ;;
  esac
}

step "building the fuzz targets (nightly, AddressSanitizer, debug assertions)"
(cd "$FUZZ_DIR" && cargo +nightly fuzz build) || die "cargo fuzz build failed"

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/apikey-fuzz.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

rows=()
failed=0
for target in "${TARGETS[@]}"; do
  [[ -d "$FUZZ_DIR/seeds/$target" ]] || die "no seed corpus fuzz/seeds/$target"
  corpus="$SCRATCH/corpus/$target"
  artifacts="$SCRATCH/artifacts/$target"
  log="$SCRATCH/$target.log"
  mkdir -p "$corpus" "$artifacts"
  cp "$FUZZ_DIR/seeds/$target/"* "$corpus/"
  step "fuzzing $target for ${SECONDS_PER_TARGET}s"
  started=$EPOCHREALTIME
  status=0
  (cd "$FUZZ_DIR" && cargo +nightly fuzz run "$target" "$corpus" -- \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
    -dict="$(dictionary "$target")" -max_len=8192 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1) || status=$?
  elapsed=$(awk -v from="$started" -v to="$EPOCHREALTIME" 'BEGIN { printf "%.0f", to - from }')
  executions=$(awk '/stat::number_of_executed_units/ { print $NF }' "$log" | tail -n 1)
  crashes=$(find "$artifacts" -type f | wc -l)
  if ((status != 0 && crashes == 0)); then
    # libFuzzer stopped without leaving an input (e.g. the build or the
    # harness failed): still a failure, shown with its log.
    crashes=1
  fi
  if ((crashes > 0)); then
    failed=1
    tail -n 40 "$log"
    mkdir -p "$FUZZ_DIR/artifacts/$target"
    for input in "$artifacts"/*; do
      [[ -e "$input" ]] || continue
      cp "$input" "$FUZZ_DIR/artifacts/$target/"
      echo "crash kept: fuzz/artifacts/$target/$(basename "$input")"
      echo "  replay:   (cd fuzz && cargo +nightly fuzz run $target artifacts/$target/$(basename "$input"))"
    done
  fi
  rows+=("$(printf '%-22s %8s %14s %8s %10s' "$target" "$elapsed" "${executions:-?}" "$crashes" "$(find "$corpus" -type f | wc -l)")")
done

step "fuzzing summary (${SECONDS_PER_TARGET}s per target)"
printf '%-22s %8s %14s %8s %10s\n' target seconds executions crashes corpus
printf '%s\n' "${rows[@]}"
((failed == 0)) || die "a fuzz target crashed; see above"
