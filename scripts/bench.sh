#!/usr/bin/env bash
# Issue 6's and 23's benchmark, in one command: builds the apikey filter, the
# native edge (libapikey_dynamic.so) and the empty filter (bench/empty-filter),
# then drives Envoy (one worker, core 1) with wrk (core 0) through every
# set-up, interleaved round by round, and
# regenerates docs/performance.md and docs/performance.png (bench/bench.py
# says how each number is taken).
#
#   scripts/bench.sh            the full run (~15 min: 10, 100k and 1M keys, the 1M
#                               table also as apikey.pb), after waiting up to an hour
#                               for a 1-minute load average below 0.8 (--quiet-wait S)
#   scripts/bench.sh --quick    a ~2-minute smoke (small tables, short runs)
#   scripts/bench.sh --rounds 7 --seconds 20   longer runs; --help lists all
#
# Issue 21's benchmark, gateways following the key service (`key_source`):
# bench/key_source_bench.py writes its own section of docs/performance.md
# (the run above keeps it).
#
#   scripts/bench.sh --key-source               100,000 and 1,000,000 keys (~40 min; more
#                                               while 1M-key gateways take minutes to load)
#   scripts/bench.sh --key-source --quick       100,000 keys only (~4 min)
#   scripts/bench.sh --key-source --sizes 1000000 --runs 5   one size; --help lists all
#                                               (the start on both edges, Wasm and native;
#                                               --edges wasm for the Wasm filter's alone)
#
# Issue 22's profile, where one request's time goes (bench/request_profile.py
# writes its own section of docs/performance.md; ~8 min):
#
#   scripts/bench.sh --profile [--before OLD.wasm]   OLD: an older finished module to compare calls with
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -x "$ENVOY" ]] || die "$ENVOY missing: run scripts/setup.sh"
require_command wrk "run scripts/setup.sh (scripts/setup.d/bench.sh installs it)"
require_command taskset "run scripts/setup.sh (util-linux)"

if [[ "${1:-}" == "--profile" ]]; then
  shift
  step "building the filter, the host-call probe and the core profile (release)"
  build_module
  (cd "$REPO_ROOT" && cargo build --quiet --release --target "$WASM_TARGET" \
    --manifest-path bench/hostcall-probe/Cargo.toml --target-dir target/hostcall-probe)
  (cd "$REPO_ROOT" && cargo build --quiet --release --target "$WASM_TARGET" \
    --manifest-path bench/core-profile/Cargo.toml --target-dir target/core-profile)
  require_command node "Node runs the core profile under V8 (Debian's nodejs)"
  step "profile: where one request's time goes"
  cd "$REPO_ROOT"
  exec "$VENV_PYTHON" bench/request_profile.py "$@"
fi
if [[ "${1:-}" == "--key-source" ]]; then
  shift
  step "building the filter, the native edge and the CLI (release)"
  build_module
  build_native
  (cd "$REPO_ROOT" && cargo build --quiet --release --target "$WASM_TARGET" -p empty-filter)
  (cd "$REPO_ROOT" && cargo build --quiet --release -p apikey-cli)
  step "benchmark: gateways following the key service"
  cd "$REPO_ROOT"
  exec "$VENV_PYTHON" bench/key_source_bench.py "$@"
fi
"$VENV_PYTHON" -c "import matplotlib" 2>/dev/null || die "matplotlib missing from $VENV: run scripts/setup.sh"
(($(nproc) >= 2)) || echo "warning: fewer than 2 cores; Envoy and wrk will share one" >&2

step "building the modules (release, $WASM_TARGET; the native edge, release-native)"
build_module
build_native
(cd "$REPO_ROOT" && cargo build --quiet --release --target "$WASM_TARGET" -p empty-filter)
# The CLI: bench.py checks its protobuf ECDS encoder against the CLI's.
(cd "$REPO_ROOT" && cargo build --quiet --release -p apikey-cli)
# The host-call probe is its own workspace (a measuring tool, not the product's).
(cd "$REPO_ROOT" && cargo build --quiet --release --target "$WASM_TARGET" \
  --manifest-path bench/hostcall-probe/Cargo.toml --target-dir target/hostcall-probe)

step "benchmark"
cd "$REPO_ROOT"
exec "$VENV_PYTHON" bench/bench.py "$@"
