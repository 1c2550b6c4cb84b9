#!/usr/bin/env bash
# Every check the project has, in the order a failure is cheapest to find:
# formatting, lints (host and wasm32), unit tests (native, then the core
# compiled to wasm32 under Node), the release modules (Wasm and native), the
# shipped Envoy configurations, and finally the end-to-end tests against a
# real Envoy, on the Wasm edge and then on the native one.
# CI runs exactly this (.ci/run). To add a check, add a function and a line
# to main.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

setup() {
  step "setup"
  bash scripts/setup.sh
}

check_format() {
  step "cargo fmt --check"
  cargo fmt --all --check
}

lint_host() {
  step "clippy (host)"
  cargo clippy --workspace --all-targets -- -D warnings
}

lint_wasm() {
  step "clippy (wasm32-wasip1, the filter as Envoy loads it)"
  cargo clippy -p apikey-filter --target "$WASM_TARGET" -- -D warnings
}

unit_tests() {
  step "unit tests (native)"
  cargo test --workspace
}

unit_tests_wasm32() {
  step "core unit tests (wasm32-unknown-unknown, under Node)"
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$WASM_BINDGEN_TEST_RUNNER" \
    cargo test -p apikey-core --target wasm32-unknown-unknown
}

release_module() {
  step "release module"
  build_module
  printf '%s: %s bytes\n' "${WASM_MODULE#"$REPO_ROOT"/}" "$(stat -c %s "$WASM_MODULE")"
}

native_module() {
  step "release native module (Envoy dynamic module)"
  build_native
  printf '%s: %s bytes\n' "${NATIVE_MODULE#"$REPO_ROOT"/}" "$(stat -c %s "$NATIVE_MODULE")"
}

# The configurations under envoy/ name their files relative to the repository
# root (envoy/ecds/README.md). Validate each from a scratch root holding the
# modules just built, an empty ECDS file and a certificate, so the repository
# is untouched. envoy-native.yaml finds its module the way it says: through
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH.
validate_envoy_configs() (
  step "envoy --mode validate"
  local scratch config module
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/envoy/ecds"
  echo '{"resources": []}' >"$scratch/envoy/ecds/apikey.yaml"
  bash scripts/tls-cert.sh "$scratch/envoy/tls" >/dev/null # the HTTPS listener's certificate
  for module in "$WASM_MODULE" "$NATIVE_MODULE"; do
    mkdir -p "$scratch/$(dirname "${module#"$REPO_ROOT"/}")"
    ln -s "$module" "$scratch/${module#"$REPO_ROOT"/}"
  done
  for config in "$REPO_ROOT"/envoy/*.yaml; do
    [[ "$(basename "$config")" == docker-compose.yaml ]] && continue # a Compose file, not a bootstrap
    (cd "$scratch" && ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$scratch/$(dirname "${NATIVE_MODULE#"$REPO_ROOT"/}")" \
      "$ENVOY" --mode validate -c "$config" --log-level warn) ||
      die "Envoy refuses ${config#"$REPO_ROOT"/}"
  done
)

# About 30 s in all of the cargo-fuzz targets (docs/fuzzing.md): their properties,
# not only "no crash", on the committed seeds and what they mutate into.
fuzz_smoke() {
  step "fuzz smoke (7 s per target)"
  bash scripts/fuzz.sh 7
}

e2e_tests() {
  step "end-to-end tests, Wasm edge (real Envoy $ENVOY_VERSION)"
  "$VENV_PYTHON" -m pytest -v tests/e2e --edge wasm
}

# The same suite on the native edge (contract §9), the module built above.
# Only the tests that run the filter: the wasm_only ones are skipped with
# their reason, and those that run no filter (the key service, the CLI, the
# shipped files) were run by the Wasm session (tests/e2e/conftest.py).
e2e_tests_native() {
  step "end-to-end tests, native edge (real Envoy $ENVOY_VERSION)"
  APIKEY_NATIVE="$NATIVE_MODULE" "$VENV_PYTHON" -m pytest -v tests/e2e --edge native
}

# One minute of the soak (docs/reliability.md): a new configuration every
# second under load; no 5xx, no stale decision, memory flat.
soak_smoke() {
  step "soak (1 minute)"
  bash scripts/soak.sh 1
}

main() {
  setup
  check_format
  lint_host
  lint_wasm
  unit_tests
  unit_tests_wasm32
  release_module
  native_module
  validate_envoy_configs
  fuzz_smoke
  e2e_tests
  e2e_tests_native
  soak_smoke
}

main "$@"
