#!/usr/bin/env bash
# Regenerates envoy/istio/wasmplugin.yaml with the key-management CLI's
# renderer (`apikey render istio`), so the shipped WasmPlugin is exactly
# what a control plane would write: the plugin configuration in
# `pluginConfig`, phase AUTHN, failStrategy FAIL_CLOSE.
#
#   envoy/istio/render.sh [--state FILE] [--url oci://HOST/REPO:TAG|@sha256:...] [--out FILE]
#
# Defaults: the demo configuration (envoy/demo-config.json, which the CLI
# reads as its state file), an example registry URL, and the shipped file.
# For a real gateway pass your state file and the URL package-oci.sh pushed
# to, pinned by the digest it printed (oci://HOST/REPO@sha256:...).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

STATE="$REPO_ROOT/envoy/demo-config.json"
URL="oci://registry.example.com/apikey/apikey-filter:0.1.0"
OUT="$REPO_ROOT/envoy/istio/wasmplugin.yaml"

while (($#)); do
  case "$1" in
    --state) STATE="${2:?--state needs a file}"; shift 2 ;;
    --url) URL="${2:?--url needs an oci:// URL}"; shift 2 ;;
    --out) OUT="${2:?--out needs a file}"; shift 2 ;;
    *) die "unknown argument '$1' (--state FILE, --url URL, --out FILE)" ;;
  esac
done

(cd "$REPO_ROOT" && cargo run --quiet -p apikey-cli -- --state "$STATE" render istio --url "$URL" --out "$OUT") ||
  die "apikey render istio failed"
echo "wrote ${OUT#"$REPO_ROOT"/} ($URL)"
