# shellcheck shell=bash
# Metrics and alerts (envoy/observability, tests/e2e/test_observability.py):
# Debian's prometheus package, for promtool, which checks the shipped alert
# rules (`promtool check rules`) and runs their unit tests (`promtool test
# rules`). Only the tool is used: the Prometheus server this package may
# also start as a system service is not. Sourced by scripts/setup.sh.

ensure_promtool() {
  apt_install prometheus
  require_command promtool "apt-get install prometheus"
  promtool --version >/dev/null 2>&1 || die "promtool is installed but does not run"
}

ensure_promtool
