#!/usr/bin/env bash
# The gateway on this machine, with demo keys: Envoy on :10000 and HTTPS on
# :10443 (admin 127.0.0.1:9901) running envoy/envoy.yaml unmodified from the
# repository root, the echo upstream on 127.0.0.1:8080 (production) and
# another on 127.0.0.1:8090 (the sandbox, where test keys go), a self-signed
# certificate (scripts/tls-cert.sh), and the demo keys pushed through ECDS
# by the key-management CLI: envoy/demo-config.json is moved into a key
# database, .work/demo/apikey.db (`apikey import-state`), and the CLI writes
# the ECDS file from it. Prints a curl line for each answer the filter gives,
# with the answer it gives right now, then follows Envoy's log (JSON access
# lines included) until Ctrl-C.
#
# The demo keys (only their SHA-256 is in envoy/demo-config.json):
#   sk_live_demoPro0000000000000000    acme, plan pro, leads:read leads:write
#   sk_live_demoFree000000000000000    globex, plan free (grants leads:read only, 5 requests/min)
#   sk_live_demoRevoked00000000000     revoked
#   sk_live_demoExpired00000000000     expired 2024-01-01
#   crm_demoAdmin00000000000000000     initech, no plan, leads:read admin (send it as X-API-Key)
#   sk_test_demoSandbox000000000000    acme, plan pro, env test: reaches the sandbox upstream
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

PRO_KEY="sk_live_demoPro0000000000000000"
FREE_KEY="sk_live_demoFree000000000000000"
REVOKED_KEY="sk_live_demoRevoked00000000000"
EXPIRED_KEY="sk_live_demoExpired00000000000"
CRM_KEY="crm_demoAdmin00000000000000000"
TEST_KEY="sk_test_demoSandbox000000000000"
GATEWAY="http://localhost:10000"
GATEWAY_TLS="https://localhost:10443"
CA_CERT="envoy/tls/gateway.crt"
ADMIN="http://127.0.0.1:9901"
ECDS_FILE="envoy/ecds/apikey.yaml"  # the path envoy/envoy.yaml watches
RELOADS_STAT="extension_config_discovery.http_filter.apikey.config_reload"
ENVOY_LOG="$REPO_ROOT/.work/demo/envoy.log"
DEMO_DB=".work/demo/apikey.db"  # the demo's key database, made afresh each run
APIKEY="$REPO_ROOT/target/debug/apikey"
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -f "$ECDS_FILE" "$ECDS_FILE.lock"
}

# wait_for WHAT COMMAND...: polls COMMAND for up to 30 s; gives up at once
# if a process the demo started has exited (a port in use, say).
wait_for() {
  local what="$1" deadline=$((SECONDS + 30)) pid
  shift
  while true; do
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || die "a demo process exited while waiting for $what (is the port in use?)"
    done
    "$@" >/dev/null 2>&1 && return
    ((SECONDS < deadline)) || die "timed out waiting for $what"
    sleep 0.1
  done
}

# Ours, not some other server that already held the port: PORT NAME.
echo_upstream_answers() {
  curl -sfI "http://127.0.0.1:$1/" | grep -qi "^x-echo-upstream: $2"
}

configuration_applied() {
  curl -sf "$ADMIN/stats?filter=$RELOADS_STAT" | grep -q ": [1-9]"
}

start() {
  require_command curl "the demo prints and runs curl commands"
  bash scripts/setup.sh
  build_module
  bash scripts/tls-cert.sh
  cargo build --quiet -p apikey-cli
  mkdir -p "$(dirname "$DEMO_DB")"
  rm -f "$DEMO_DB" "$DEMO_DB-wal" "$DEMO_DB-shm"
  trap cleanup EXIT
  "$APIKEY" --db "$DEMO_DB" --ecds-dir "$(dirname "$ECDS_FILE")" import-state envoy/demo-config.json >/dev/null
  trap 'exit 130' INT TERM
  "$VENV_PYTHON" tests/e2e/echo_upstream.py --port 8080 >/dev/null &
  PIDS+=($!)
  "$VENV_PYTHON" tests/e2e/echo_upstream.py --port 8090 --name sandbox >/dev/null &
  PIDS+=($!)
  wait_for "the echo upstream on 127.0.0.1:8080" echo_upstream_answers 8080 1
  wait_for "the sandbox upstream on 127.0.0.1:8090" echo_upstream_answers 8090 sandbox
  mkdir -p "$(dirname "$ENVOY_LOG")"
  "$ENVOY" -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart -l warning >"$ENVOY_LOG" 2>&1 &
  PIDS+=($!)
  wait_for "Envoy's admin to say LIVE on 9901" curl -sf "$ADMIN/ready"
  wait_for "the demo configuration to reach every worker" configuration_applied
}

# show TITLE CURL_ARGS...: the curl line to copy, and what it answers now
# (the status, the error code of a denial, and which upstream answered).
show() {
  local title="$1" answer status code upstream line="curl -i" arg
  shift
  for arg in "$@"; do
    if [[ "$arg" == *" "* ]]; then line+=" '$arg'"; else line+=" $arg"; fi
  done
  answer="$(curl -s -D - -w '\n%{http_code}' "$@")"
  status="${answer##*$'\n'}"
  code="$(sed -n 's/.*"code":"\([a-z_]*\)".*/\1/p' <<<"$answer")"
  upstream="$(sed -n 's/^x-echo-upstream: \([a-z0-9]*\).*/\1/Ip' <<<"$answer")"
  case "$upstream" in
    1) upstream=" (production upstream)" ;;
    sandbox) upstream=" (sandbox upstream)" ;;
  esac
  printf '\n# %s  -> %s\n%s\n' "$title" "$status${code:+ $code}$upstream" "$line"
}

tour() {
  step "the gateway is up: $GATEWAY and $GATEWAY_TLS (admin $ADMIN, upstreams 127.0.0.1:8080 and, for test keys, :8090)"
  show "public route, no key" "$GATEWAY/healthz"
  show "allowed: pro key, Bearer, leads:read (the upstream sees x-api-* identity, no key)" \
    -H "Authorization: Bearer $PRO_KEY" "$GATEWAY/api/v1/leads"
  show "allowed: pro key, ApiKey scheme, POST needs leads:write" \
    -X POST -H "Authorization: ApiKey $PRO_KEY" "$GATEWAY/api/v1/leads"
  show "allowed: crm_ key in X-API-Key, admin route" -H "X-API-Key: $CRM_KEY" "$GATEWAY/api/v1/admin/keys"
  show "allowed over HTTPS (HTTP/2 by ALPN; the demo's self-signed certificate)" \
    --cacert "$CA_CERT" -H "Authorization: Bearer $PRO_KEY" "$GATEWAY_TLS/api/v1/leads"
  show "allowed: a test key (env test) reaches the sandbox upstream" \
    -H "Authorization: Bearer $TEST_KEY" "$GATEWAY/api/v1/leads"
  show "a live key that asks for the sandbox still reaches production" \
    -H "Authorization: Bearer $PRO_KEY" -H "x-api-env: test" "$GATEWAY/api/v1/leads"
  show "401 missing_credentials" "$GATEWAY/api/v1/leads"
  show "401 malformed_credentials (not an accepted key prefix)" \
    -H "Authorization: Bearer pk_test_123" "$GATEWAY/api/v1/leads"
  show "401 invalid_key" -H "X-API-Key: sk_live_unknown000000000000000" "$GATEWAY/api/v1/leads"
  show "401 key_revoked" -H "X-API-Key: $REVOKED_KEY" "$GATEWAY/api/v1/leads"
  show "401 key_expired" -H "X-API-Key: $EXPIRED_KEY" "$GATEWAY/api/v1/leads"
  show "403 insufficient_scope (pro key, admin route)" \
    -H "Authorization: Bearer $PRO_KEY" "$GATEWAY/api/v1/admin/keys"
  show "403 plan_upgrade_required (free plan does not grant leads:write)" \
    -X POST -H "X-API-Key: $FREE_KEY" "$GATEWAY/api/v1/leads"
  printf '\n# 429 rate_limited: the free plan allows 5 requests a minute\n'
  printf "for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%%{http_code} ' -H 'X-API-Key: %s' %s; done; echo\n" \
    "$FREE_KEY" "$GATEWAY/api/v1/leads"
  step "try them; change the keys with the CLI (no restart: each change rewrites $ECDS_FILE), e.g. revoke the pro key:"
  echo "cargo run -q -p apikey-cli -- --db $DEMO_DB --ecds-dir $(dirname "$ECDS_FILE") revoke key_acme_pro"
  echo "cargo run -q -p apikey-cli -- --db $DEMO_DB list"
  step "Envoy's log and access log (${ENVOY_LOG#"$REPO_ROOT"/}) follow; Ctrl-C stops Envoy and the upstream"
}

start
tour
tail -n +1 -f --pid="${PIDS[1]}" "$ENVOY_LOG"
