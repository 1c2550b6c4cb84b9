#!/usr/bin/env bash
# Regenerates envoy/istio/wasmplugin.yaml with the key-management CLI's
# renderer (`apikey render istio`), so the shipped WasmPlugin is exactly
# what a control plane would write: the plugin configuration in
# `pluginConfig`, phase AUTHN, failStrategy FAIL_CLOSE.
#
#   envoy/istio/render.sh [--db PATH | --config FILE] [--url oci://HOST/REPO:TAG|@sha256:...] [--out FILE]
#
# The keys come from a key database (--db, the one `apikey` and `apikey
# serve` work on), or from a whole §1 configuration with its keys
# (--config; default envoy/demo-config.json), which is moved into a
# scratch database with `apikey import-state` first. Defaults: the demo
# configuration, an example registry URL, and the shipped file. For a real
# gateway pass your database and the URL package-oci.sh pushed to, pinned
# by the digest it printed (oci://HOST/REPO@sha256:...).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

CONFIG="$REPO_ROOT/envoy/demo-config.json"
DB=""
URL="oci://registry.example.com/apikey/apikey-filter:0.1.0"
OUT="$REPO_ROOT/envoy/istio/wasmplugin.yaml"

while (($#)); do
  case "$1" in
    --db) DB="${2:?--db needs a database}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a file}"; shift 2 ;;
    --url) URL="${2:?--url needs an oci:// URL}"; shift 2 ;;
    --out) OUT="${2:?--out needs a file}"; shift 2 ;;
    *) die "unknown argument '$1' (--db PATH, --config FILE, --url URL, --out FILE)" ;;
  esac
done

apikey() {
  (cd "$REPO_ROOT" && cargo run --quiet -p apikey-cli -- "$@")
}

if [[ -z "$DB" ]]; then
  SCRATCH="$(mktemp -d)"
  trap 'rm -rf "$SCRATCH"' EXIT
  DB="$SCRATCH/apikey.db"
  apikey --db "$DB" import-state "$CONFIG" >/dev/null || die "apikey import-state $CONFIG failed"
fi
apikey --db "$DB" render istio --url "$URL" --out "$OUT" || die "apikey render istio failed"
echo "wrote ${OUT#"$REPO_ROOT"/} ($URL)"
