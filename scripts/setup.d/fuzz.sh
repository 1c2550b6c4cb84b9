# shellcheck shell=bash
# Fuzzing (fuzz/, scripts/fuzz.sh, docs/fuzzing.md): cargo-fuzz drives
# libFuzzer, which needs the nightly toolchain (`-Z sanitizer=address`).
# The nightly toolchain is installed with the minimal profile (rustc, cargo,
# rust-std), and cargo-fuzz is built once into TOOLS_ROOT, like
# wasm-bindgen's runner, so a fresh clone reuses it. Sourced by
# scripts/setup.sh.

CARGO_FUZZ="$TOOLS_ROOT/bin/cargo-fuzz"

ensure_nightly() {
  if rustup run nightly rustc --version >/dev/null 2>&1; then
    return
  fi
  echo "installing the nightly Rust toolchain (cargo fuzz needs it)"
  rustup toolchain install nightly --profile minimal >/dev/null ||
    die "rustup could not install the nightly toolchain (cargo fuzz needs it)"
}

ensure_cargo_fuzz() {
  if "$CARGO_FUZZ" --version >/dev/null 2>&1; then
    return
  fi
  echo "building cargo-fuzz into $TOOLS_ROOT (a minute or two, once)"
  cargo_install_tool cargo-fuzz ""
  "$CARGO_FUZZ" --version >/dev/null 2>&1 || die "cargo-fuzz was installed but $CARGO_FUZZ does not run"
}

ensure_nightly
ensure_cargo_fuzz
