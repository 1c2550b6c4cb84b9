#!/usr/bin/env bash
# The latency fleet-wide limits (contract §6) add on loopback: a local-only
# gateway and a fleet gateway asking apikey-ratelimit (Redis) measured side
# by side in one run (bench/fleet_latency.py says how). Prints a markdown
# section and writes it into docs/performance.md between
# <!-- fleet:begin --> and <!-- fleet:end -->. Arguments go to the Python
# script (--requests N, --block N, --warmup N, --no-write).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

[[ -x "$VENV_PYTHON" ]] || die "$VENV_PYTHON missing: run scripts/setup.sh"
require_command redis-server "run scripts/setup.sh (setup.d/redis.sh installs it)"
step "building the filter and apikey-ratelimit (release)"
build_module
cargo build --quiet --release -p apikey-ratelimit
step "measuring local-only and fleet gateways"
"$VENV_PYTHON" bench/fleet_latency.py "$@"
