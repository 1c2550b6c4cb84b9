#!/usr/bin/env bash
# The gateway on this machine, with demo keys, in one command:
#
#   scripts/demo.sh          the keys live in the key service: `apikey serve`
#                            on 127.0.0.1:8470 (database .work/demo/apikey.db,
#                            tokens in .work/demo/*.token), and Envoy follows
#                            it (key_source, contract §8.3): a key created or
#                            revoked through the API or the CLI is enforced
#                            within a second, with no file and no restart
#   scripts/demo.sh --ecds   the keys travel in Envoy's configuration: the
#                            CLI writes the whole table into the ECDS file
#                            envoy/envoy.yaml watches after each change
#
# Either way: Envoy on :10000 and HTTPS on :10443 (admin 127.0.0.1:9901)
# running envoy/envoy.yaml unmodified from the repository root (following
# the service adds, on its command line, the `apikey_control` cluster that
# reaches it), the echo upstream on 127.0.0.1:8080 (production) and another
# on 127.0.0.1:8090 (the sandbox, where test keys go), a self-signed
# certificate (scripts/tls-cert.sh), and envoy/demo-config.json's settings
# and keys: put into the service through its API (envoy/service/init.py,
# the compose stack's start-up job), or moved into a key database,
# .work/demo/apikey.db (`apikey import-state`), from which the CLI writes
# the ECDS file. Prints a curl line for each answer the filter gives, with
# the answer it gives right now, then (following the service) creates a
# key through the API, shows it allowed, revokes it and shows it refused,
# and prints the commands to do the same; then follows Envoy's log (JSON
# access lines included) until Ctrl-C, which stops everything it started.
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
DEMO_DIR=".work/demo"
DEMO_DB="$DEMO_DIR/apikey.db"  # the demo's key database, made afresh each run
APIKEY="$REPO_ROOT/target/debug/apikey"
# The key service (the default mode): where it listens, its tokens (new
# ones each run, readable by this user only) and its log.
SERVICE="http://127.0.0.1:8470"
ADMIN_TOKEN_FILE="$DEMO_DIR/admin.token"
FEED_TOKEN_FILE="$DEMO_DIR/feed.token"
SERVICE_LOG="$REPO_ROOT/$DEMO_DIR/apikey-serve.log"
# Merged into envoy/envoy.yaml on Envoy's command line: the cluster the
# key_source configuration names, reaching the service on loopback.
CONTROL_CLUSTER='{static_resources: {clusters: [{name: apikey_control, type: STATIC, connect_timeout: 1s,
  load_assignment: {cluster_name: apikey_control, endpoints: [{lb_endpoints: [{endpoint: {address:
  {socket_address: {address: 127.0.0.1, port_value: 8470}}}}]}]}}]}}'
MODE=service
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

# The public route answered by the upstream ten times in a row: every
# worker holds a table (before its first, a worker answers 503).
table_on_every_worker() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$GATEWAY/healthz")" == 200 ]] || return 1
  done
}

# key_status KEY: the status a request with KEY gets now.
key_status() {
  curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $1" "$GATEWAY/api/v1/leads"
}

# start_service: a fresh database and tokens, `apikey serve` on them, the
# demo's settings and keys put in through its API, and the ECDS file
# holding only key_source (with the feed token: 0600), all by
# envoy/service/init.py as the compose stack does it.
start_service() {
  (
    umask 077
    local name
    for name in "$ADMIN_TOKEN_FILE" "$FEED_TOKEN_FILE"; do
      od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$name"
    done
  )
  "$APIKEY" --db "$DEMO_DB" serve --listen 127.0.0.1:8470 \
    --admin-token-file "$ADMIN_TOKEN_FILE" --feed-token-file "$FEED_TOKEN_FILE" 2>"$SERVICE_LOG" &
  PIDS+=($!)
  wait_for "the key service on 127.0.0.1:8470" curl -sf "$SERVICE/healthz"
  "$VENV_PYTHON" envoy/service/init.py --server "$SERVICE" --seed envoy/demo-config.json \
    --admin-token-file "$ADMIN_TOKEN_FILE" --feed-token-file "$FEED_TOKEN_FILE" \
    --ecds "$ECDS_FILE" --cluster apikey_control --authority 127.0.0.1:8470 --file-mode 0600 >/dev/null ||
    die "envoy/service/init.py could not seed the key service (log: ${SERVICE_LOG#"$REPO_ROOT"/})"
}

start() {
  require_command curl "the demo prints and runs curl commands"
  # tests/e2e/test_demo.py runs the demo after scripts/test.sh's own setup.
  [[ "${APIKEY_DEMO_SKIP_SETUP:-}" == 1 ]] || bash scripts/setup.sh
  build_module
  bash scripts/tls-cert.sh
  cargo build --quiet -p apikey-cli
  mkdir -p "$DEMO_DIR"
  rm -f "$DEMO_DB" "$DEMO_DB-wal" "$DEMO_DB-shm"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  local envoy_args=()
  if [[ "$MODE" == service ]]; then
    start_service
    envoy_args=(--config-yaml "$CONTROL_CLUSTER")
  else
    "$APIKEY" --db "$DEMO_DB" --ecds-dir "$(dirname "$ECDS_FILE")" import-state envoy/demo-config.json >/dev/null
  fi
  "$VENV_PYTHON" tests/e2e/echo_upstream.py --port 8080 >/dev/null &
  PIDS+=($!)
  "$VENV_PYTHON" tests/e2e/echo_upstream.py --port 8090 --name sandbox >/dev/null &
  PIDS+=($!)
  wait_for "the echo upstream on 127.0.0.1:8080" echo_upstream_answers 8080 1
  wait_for "the sandbox upstream on 127.0.0.1:8090" echo_upstream_answers 8090 sandbox
  mkdir -p "$(dirname "$ENVOY_LOG")"
  "$ENVOY" -c envoy/envoy.yaml "${envoy_args[@]}" --concurrency 2 --disable-hot-restart -l warning \
    >"$ENVOY_LOG" 2>&1 &
  PIDS+=($!)
  ENVOY_PID=$!
  wait_for "Envoy's admin to say LIVE on 9901" curl -sf "$ADMIN/ready"
  if [[ "$MODE" == service ]]; then
    wait_for "the key service's table on every worker" table_on_every_worker
  else
    wait_for "the demo configuration to reach every worker" configuration_applied
  fi
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
  if [[ "$MODE" == service ]]; then
    follow_the_service
  else
    step "try them; change the keys with the CLI (no restart: each change rewrites $ECDS_FILE), e.g. revoke the pro key:"
    echo "cargo run -q -p apikey-cli -- --db $DEMO_DB --ecds-dir $(dirname "$ECDS_FILE") revoke key_acme_pro"
    echo "cargo run -q -p apikey-cli -- --db $DEMO_DB list"
  fi
  local stopped="Envoy and the upstreams"
  [[ "$MODE" == service ]] && stopped="Envoy, the upstreams and the key service"
  step "Envoy's log and access log (${ENVOY_LOG#"$REPO_ROOT"/}) follow; Ctrl-C stops $stopped"
}

# microseconds: the wall clock in µs (bash 5's EPOCHREALTIME without its dot).
microseconds() {
  echo "${EPOCHREALTIME/./}"
}

# wait_status KEY STATUS: polls for up to 5 s until requests with KEY get
# STATUS on every worker; prints how long after the change that began.
# Each request is a new connection (any worker), and a worker takes a new
# table on its 100 ms tick, so one answer is not every worker's: the status
# must hold on every request for 300 ms running.
wait_status() {
  local key="$1" status="$2" started since=""
  started="$(microseconds)"
  while :; do
    if [[ "$(key_status "$key")" == "$status" ]]; then
      since="${since:-$(microseconds)}"
      (($(microseconds) - since >= 300000)) && break
    else
      since=""
    fi
    (($(microseconds) - started < 5000000)) || return 1
    sleep 0.02
  done
  echo "$(((since - started) / 1000)) ms"
}

# A key created through the API is allowed, revoked, refused: what
# following the service means. Then the commands to do it yourself.
follow_the_service() {
  local cli=("$APIKEY" --server "$SERVICE" --admin-token-file "$ADMIN_TOKEN_FILE") created key id took
  step "the keys live in the key service ($SERVICE, database $DEMO_DB); Envoy follows it: a change through the API is enforced with no restart"
  # (Its "shown once" note on stderr is for people: the tour shows the key below.)
  created="$("${cli[@]}" create --json --tenant acme --name "demo.sh" --scopes leads:read --plan pro 2>/dev/null)" ||
    die "apikey create through $SERVICE failed (log: ${SERVICE_LOG#"$REPO_ROOT"/})"
  key="$(sed -n 's/.*"key":"\([^"]*\)".*/\1/p' <<<"$created")"
  id="$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' <<<"$created")"
  [[ -n "$key" && -n "$id" ]] || die "apikey create answered no key: $created"
  took="$(wait_status "$key" 200)" || die "the key created through the API was not allowed within 5 s"
  printf '\n# created through the API as %s; allowed %s after the API answered\n' "$id" "$took"
  show "the new key" -H "X-API-Key: $key" "$GATEWAY/api/v1/leads"
  "${cli[@]}" revoke "$id" >/dev/null || die "apikey revoke $id failed"
  took="$(wait_status "$key" 401)" || die "the revocation was not enforced within 5 s"
  printf '\n# revoked through the API; refused %s after the API answered\n' "$took"
  show "401 key_revoked (the same key)" -H "X-API-Key: $key" "$GATEWAY/api/v1/leads"
  step "try it: the CLI on the service (admin token in $ADMIN_TOKEN_FILE; the create prints the new key once)"
  local line="cargo run -q -p apikey-cli -- --server $SERVICE --admin-token-file $ADMIN_TOKEN_FILE"
  echo "$line create --tenant acme --name mine --scopes leads:read --plan pro"
  echo "$line revoke key_acme_pro"
  echo "$line list"
  echo "# or the API itself (docs/configuration.md §10):"
  echo "curl -s -H \"Authorization: Bearer \$(cat $ADMIN_TOKEN_FILE)\" '$SERVICE/v1/keys?limit=10'"
  echo "curl -s -X POST -H \"Authorization: Bearer \$(cat $ADMIN_TOKEN_FILE)\" $SERVICE/v1/keys/key_globex_free/revoke"
  echo "# the service's log: ${SERVICE_LOG#"$REPO_ROOT"/}"
}

usage() {
  echo "usage: $0 [--ecds]   (default: Envoy follows the key service; --ecds: the CLI writes ECDS files)" >&2
  exit 2
}

case "${1:-}" in
  "") MODE=service ;;
  --ecds) MODE=ecds ;;
  *) usage ;;
esac
(($# <= 1)) || usage
start
tour
tail -n +1 -f --pid="$ENVOY_PID" "$ENVOY_LOG"
