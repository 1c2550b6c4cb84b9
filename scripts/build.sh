#!/usr/bin/env bash
# Builds what a deployment needs and prints where it is:
#   - the filter module Envoy loads (release, wasm32-wasip1, finished by
#     scripts/finish_module.py: unused callbacks dropped, wasm-opt -O3);
#   - the native edge, the same core as an Envoy dynamic module
#     (target/release/libapikey_dynamic.so, contract §9);
#   - the `apikey` CLI and the `apikey-ratelimit` server (release, host).
# Run scripts/setup.sh first on a fresh machine (the target, wasm-opt).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

require_command wasm-opt "run scripts/setup.sh (Debian's binaryen)"
build_module
build_native
cargo build --quiet --release -p apikey-cli -p apikey-ratelimit
printf '%s\t%s bytes\n' "${WASM_MODULE#"$REPO_ROOT"/}" "$(stat -c %s "$WASM_MODULE")"
printf '%s\t%s bytes\n' "${NATIVE_MODULE#"$REPO_ROOT"/}" "$(stat -c %s "$NATIVE_MODULE")"
printf '%s\n' target/release/apikey target/release/apikey-ratelimit
