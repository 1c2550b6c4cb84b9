# shellcheck shell=bash
# Fleet-wide limits (crates/apikey-ratelimit, tests/e2e/test_fleet.py):
# Debian's redis-server, the store the rate-limit server counts in. The
# tests start their own redis-server on a free port; the system service
# this package may also start is never used. Sourced by scripts/setup.sh.

ensure_redis() {
  apt_install redis-server
  require_command redis-server "apt-get install redis-server"
  redis-server --version >/dev/null 2>&1 || die "redis-server is installed but does not run"
}

ensure_redis
