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
# Host tools built from source (wasm-bindgen-cli) live outside the repo, so a
# fresh clone (CI) reuses them instead of spending minutes rebuilding them.
TOOLS_ROOT="${APIKEY_TOOLS_ROOT:-$HOME/.cache/apikey-gateway/tools}"
WASM_BINDGEN_TEST_RUNNER="$TOOLS_ROOT/bin/wasm-bindgen-test-runner"

# step TITLE: a header that makes each stage of a long log easy to find,
# with the seconds since the script started (how long set-up took on a
# fresh machine is read off the next header).
step() {
  printf '\n==> %s  [%d s]\n' "$*" "$SECONDS"
}

# die MESSAGE: stop the script with a message that says what to do.
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# locked_version CRATE: the version of CRATE that Cargo.lock pins.
locked_version() {
  awk -v crate="$1" '$0 == "name = \"" crate "\"" { getline; gsub(/version = |"/, ""); print; exit }' \
    "$REPO_ROOT/Cargo.lock"
}

require_command() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found on PATH: $2"
}

# build_module: the release Wasm module Envoy loads: cargo's output with the
# callbacks the filter does not use dropped and wasm-opt applied
# (scripts/finish_module.py says why). Cargo re-links its output on every
# build, so the finish runs every time (about a second).
build_module() {
  (cd "$REPO_ROOT" && cargo build --quiet --release --target "$WASM_TARGET" -p apikey-filter)
  [[ -f "$WASM_MODULE" ]] || die "cargo built, but $WASM_MODULE is missing"
  python3 "$REPO_ROOT/scripts/finish_module.py" "$WASM_MODULE" >/dev/null ||
    die "scripts/finish_module.py could not finish $WASM_MODULE"
}

# build_native: the native edge (contract §9), the core as an Envoy dynamic
# module. It must unwind to catch panics at its entry points, so it builds
# with the release-native profile (release, panic = "unwind"; the Wasm
# module's release profile aborts), then lands where Envoy's
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH is pointed: target/release/.
NATIVE_MODULE="$REPO_ROOT/target/release/libapikey_dynamic.so"
build_native() {
  (cd "$REPO_ROOT" && cargo build --quiet --profile release-native -p apikey-dynamic)
  local built="$REPO_ROOT/target/release-native/libapikey_dynamic.so"
  [[ -f "$built" ]] || die "cargo built, but $built is missing"
  mkdir -p "$(dirname "$NATIVE_MODULE")"
  # A new inode, not an overwrite: an Envoy that has the old file mapped
  # keeps it intact.
  cp "$built" "$NATIVE_MODULE.tmp" && mv -f "$NATIVE_MODULE.tmp" "$NATIVE_MODULE"
}

# cargo_install_tool CRATE VERSION: builds a host tool from crates.io into
# TOOLS_ROOT. The crate's published Cargo.lock is tried first (--locked, the
# versions its authors tested); the registry this project builds from is a
# snapshot, so a lock written elsewhere can name a version it does not serve
# (wasm-bindgen-cli 0.2.130's pins webpki-roots 1.0.11, which it lacks).
# Resolution fails before anything compiles, so falling back to resolving
# afresh costs seconds; only when both fail is the tool truly not to be had.
cargo_install_tool() {
  local crate="$1" version="$2" log
  log="$(mktemp)"
  local args=(install --quiet --force "$crate" --root "$TOOLS_ROOT")
  [[ -n "$version" ]] && args+=(--version "$version")
  if cargo "${args[@]}" --locked 2>"$log"; then
    rm -f "$log"
    return 0
  fi
  echo "note: cargo install --locked $crate ${version} failed; resolving its dependencies afresh" >&2
  grep -E '^(error|  )' "$log" | head -n 5 | sed 's/^/  /' >&2
  rm -f "$log"
  cargo "${args[@]}" || die "cargo install $crate ${version} failed, with and without its published lock"
}

# apt_install PACKAGE...: installs the Debian packages not yet installed
# (quietly; root or sudo). Dies naming the packages when apt cannot.
apt_install() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  local sudo=()
  [[ "$(id -u)" == 0 ]] || sudo=(sudo)
  echo "installing Debian packages: ${missing[*]}"
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
    "${sudo[@]}" apt-get update -qq >/dev/null || true
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
      die "apt-get could not install ${missing[*]}"
  fi
}
