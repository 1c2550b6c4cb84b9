#!/usr/bin/env bash
# The soak (issue 8): real Envoy with 4 workers under steady load from 3
# client processes for MINUTES (default 10), a new configuration every
# second and an invalid one every 10 s. Prints a table (requests, answers by
# status, 5xx, stale decisions, Envoy memory at warm-up/middle/end) and
# exits non-zero when a must-hold fails: any 5xx or failed connection, any
# decision older than 1 s after the update that changed it, an invalid
# configuration accepted, or memory growing after warm-up.
# tests/soak/soak.py holds the details; docs/reliability.md the figures.
# The judge of stale and wrong decisions (tests/soak/judge.py) has unit
# tests on synthetic logs; they run first, so a judge that could no longer
# catch a stale answer, or that blames the filter for the driver's
# scheduling, stops the soak before it starts.
#
#   scripts/soak.sh        # 10 minutes
#   scripts/soak.sh 1      # the minute scripts/test.sh runs
#   SOAK_DIR=/tmp/soak scripts/soak.sh 30   # keep Envoy's files there
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MINUTES="${1:-10}"
[[ "$MINUTES" =~ ^[1-9][0-9]*$ ]] || die "usage: scripts/soak.sh [minutes, a positive integer]"
[[ -x "$VENV_PYTHON" && -x "$ENVOY" ]] || die "no .venv with Envoy: run scripts/setup.sh"

step "the soak's judge (unit tests)"
(cd "$REPO_ROOT" && "$VENV_PYTHON" -m pytest -q tests/soak)

step "building the module"
build_module
export APIKEY_WASM="$WASM_MODULE"

step "soak: $MINUTES minute(s)"
"$VENV_PYTHON" "$REPO_ROOT/tests/soak/soak.py" --minutes "$MINUTES"
