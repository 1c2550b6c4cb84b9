#!/usr/bin/env bash
# Packages the filter module as the OCI image Istio's WasmPlugin pulls
# (`url: oci://...`), as an OCI image layout on disk, and optionally
# pushes it to a registry with skopeo. No registry and no container engine
# are needed to build it.
#
#   envoy/istio/package-oci.sh [--wasm FILE] [--layout DIR] [--tag TAG]
#                              [--push docker://HOST/REPO:TAG] [--insecure]
#
# The format is the Wasm image specification's "oci" variant, the one
# with Wasm media types that Istio's image fetcher (pkg/wasm/imagefetcher.go)
# reads:
#   manifest  application/vnd.oci.image.manifest.v1+json
#   config    application/vnd.module.wasm.config.v1+json: {"type":
#             "envoy_proxy", "abiVersions": [the module's proxy-wasm ABI],
#             "config": {"root_ids": ["apikey"]}}
#   layers    1. that same runtime config (runtime-config.json)
#             2. application/vnd.module.wasm.content.layer.v1+wasm: the
#                module itself, byte for byte, uncompressed (plugin.wasm)
# Istio requires exactly these two layers in this variant: an image whose
# only layer is the module is refused ("number of layers must be 2 but got
# 1"), as is a layer of any other type. Nothing in it depends on the time
# or the machine, so the same module always gives the same digest.
#
# Prints the manifest digest: pin it in the WasmPlugin
# (`url: oci://HOST/REPO@sha256:...`, or `sha256:` beside a tag), so every
# gateway runs exactly the module that was reviewed.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

WASM="$WASM_MODULE"
LAYOUT="$REPO_ROOT/target/oci/apikey-filter"
TAG="$(awk -F'"' '/^version = / { print $2; exit }' "$REPO_ROOT/Cargo.toml")"
PUSH=""
TLS_VERIFY=true

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

while (($#)); do
  case "$1" in
    --wasm) WASM="${2:?--wasm needs a file}"; shift 2 ;;
    --layout) LAYOUT="${2:?--layout needs a directory}"; shift 2 ;;
    --tag) TAG="${2:?--tag needs a tag}"; shift 2 ;;
    --push) PUSH="${2:?--push needs docker://HOST/REPO:TAG}"; shift 2 ;;
    --insecure) TLS_VERIFY=false; shift ;;
    -h | --help) usage ;;
    *) printf 'unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done

[[ -f "$WASM" ]] || die "$WASM not found: build it with scripts/build.sh"
[[ "$TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "'$TAG' is not a valid OCI tag"
require_command python3 "it writes the image layout"

# The layout is written whole into a fresh directory, then renamed over the
# old one, so a reader never sees a half-written image.
write_layout() {
  local staging
  staging="$(mktemp -d "$(dirname "$LAYOUT")/.oci.XXXXXX")"
  python3 - "$WASM" "$staging" "$TAG" <<'EOF' || { rm -rf "$staging"; die "writing the image layout failed"; }
import hashlib, json, re, sys
from pathlib import Path

wasm_path, layout, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
module = wasm_path.read_bytes()
if module[:4] != b"\0asm":
    sys.exit(f"{wasm_path} is not a Wasm module")
# The ABI the module declares by exporting proxy_abi_version_X_Y_Z.
abis = sorted({m.decode() for m in re.findall(rb"proxy_abi_version_[0-9]+_[0-9]+_[0-9]+", module)})
if not abis:
    sys.exit(f"{wasm_path} exports no proxy_abi_version_*: not a proxy-wasm module")

blobs = layout / "blobs" / "sha256"
blobs.mkdir(parents=True)

def blob(data: bytes, media_type: str, title: str | None = None) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    descriptor = {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
    if title:
        descriptor["annotations"] = {"org.opencontainers.image.title": title}
    return descriptor

def canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()

runtime = canonical({"type": "envoy_proxy", "abiVersions": abis, "config": {"root_ids": ["apikey"]}})
config = blob(runtime, "application/vnd.module.wasm.config.v1+json")
manifest = canonical({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": config,
    "layers": [
        blob(runtime, "application/vnd.module.wasm.config.v1+json", "runtime-config.json"),
        blob(module, "application/vnd.module.wasm.content.layer.v1+wasm", "plugin.wasm"),
    ],
})
described = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
described["annotations"] = {"org.opencontainers.image.ref.name": tag}
(layout / "index.json").write_bytes(canonical({"schemaVersion": 2, "manifests": [described]}))
(layout / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))
print(described["digest"])
EOF
  rm -rf "$LAYOUT"
  mv "$staging" "$LAYOUT"
}

mkdir -p "$(dirname "$LAYOUT")"
DIGEST="$(write_layout)"
echo "oci:${LAYOUT#"$REPO_ROOT"/}:$TAG  $DIGEST"

if [[ -n "$PUSH" ]]; then
  require_command skopeo "apt-get install skopeo (scripts/setup.d/podman.sh)"
  [[ "$PUSH" == docker://* ]] || die "--push takes docker://HOST/REPO:TAG, not '$PUSH'"
  # --preserve-digests: the registry must hold this manifest byte for byte,
  # or the digest printed above (and pinned in the WasmPlugin) would not match.
  skopeo copy --quiet --preserve-digests --dest-tls-verify="$TLS_VERIFY" "oci:$LAYOUT:$TAG" "$PUSH" ||
    die "skopeo could not push to $PUSH"
  echo "pushed $PUSH  $DIGEST"
fi
