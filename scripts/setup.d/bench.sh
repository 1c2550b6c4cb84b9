# shellcheck shell=bash
# The benchmark (scripts/bench.sh): wrk, the HTTP load generator, from
# Debian, and the chart's Python packages (bench/requirements.txt) into the
# repo venv. Sourced by scripts/setup.sh after the venv exists.

BENCH_REQUIREMENTS="$REPO_ROOT/bench/requirements.txt"
BENCH_STAMP="$VENV/.bench-installed-from"

ensure_bench_tools() {
  apt_install wrk util-linux # util-linux: taskset pins Envoy and wrk to their own cores
  require_command wrk "apt-get install wrk"
  if [[ -f "$BENCH_STAMP" ]] && cmp -s "$BENCH_STAMP" "$BENCH_REQUIREMENTS"; then
    return
  fi
  "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check -r "$BENCH_REQUIREMENTS" ||
    die "pip could not install $BENCH_REQUIREMENTS into $VENV"
  cp "$BENCH_REQUIREMENTS" "$BENCH_STAMP"
}

ensure_bench_tools
