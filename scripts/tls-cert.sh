#!/usr/bin/env bash
# tls-cert.sh [DIR]: a self-signed certificate for the gateway's HTTPS
# listener (envoy/envoy.yaml, :10443), for the demo, the compose stack and
# the tests: DIR/gateway.crt and DIR/gateway.key (default envoy/tls). An
# existing pair is kept, so a client that trusted it goes on trusting it.
# ECDSA P-256, valid 30 days, for localhost and 127.0.0.1 only: a
# production gateway uses a certificate from its own CA instead.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

dir="${1:-$REPO_ROOT/envoy/tls}"
crt="$dir/gateway.crt"
key="$dir/gateway.key"
if [[ -s "$crt" && -s "$key" ]] && openssl x509 -in "$crt" -noout -checkend 86400 >/dev/null 2>&1; then
  exit 0
fi
require_command openssl "apt-get install openssl (it makes the demo's certificate)"
mkdir -p "$dir"
# The key is written readable by its owner only, then made readable by the
# container user that runs Envoy in the compose stack (a demo key).
(umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$key" -out "$crt" -days 30 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1) ||
  die "openssl could not make a certificate in $dir"
chmod 644 "$crt" "$key"
echo "wrote a self-signed certificate for localhost: ${crt#"$REPO_ROOT"/}"
