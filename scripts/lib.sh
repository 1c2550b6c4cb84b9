# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this file
# Shared helpers for the scripts in this directory. Source it; do not run it.
#
# Everything a script needs to find (the venv, Envoy, the built module) is
# named here once, so setup, test and demo cannot disagree about a path.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
VENV_PYTHON="$VENV/bin/python"
ENVOY="$VENV/bin/envoy"
ENVOY_VERSION="1.40.0"
WASM_TARGET="wasm32-wasip1"
WASM_MODULE="$REPO_ROOT/target/$WASM_TARGET/release/apikey_filter.wasm"

# step TITLE: a header that makes each stage of a long log easy to find.
step() {
  printf '\n==> %s\n' "$*"
}

# die MESSAGE: stop the script with a message that says what to do.
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

require_command() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH: $2"
}

# build_module: the release Wasm module Envoy loads.
build_module() {
  (cd "$REPO_ROOT" && cargo build --quiet --release --target "$WASM_TARGET" -p apikey-filter)
  [[ -f "$WASM_MODULE" ]] || die "cargo built, but $WASM_MODULE is missing"
}
