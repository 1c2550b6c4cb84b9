# Sourced by envoy/service/token-secrets.sh and envoy/fleet/redis-secret.sh:
# their one command line, `[--rotate] [DIR]`, read into `rotate` (0 or 1)
# and `dir` (DIR, default `secrets/` beside the calling script), and DIR
# made private (0700; files created with umask 077).
#
# Usage: read_secret_args "$(dirname "${BASH_SOURCE[0]}")" "$@"

secret_args_usage() {
  echo "usage: $0 [--rotate] [DIR]" >&2
  exit 2
}

read_secret_args() {
  local here="$1" arg
  shift
  rotate=0
  dir=""
  for arg in "$@"; do
    case "$arg" in
      --rotate) rotate=1 ;;
      -h | --help) secret_args_usage ;;
      -*) secret_args_usage ;;
      *) [[ -z "$dir" ]] || secret_args_usage; dir="$arg" ;;
    esac
  done
  dir="${dir:-$here/secrets}"
  umask 077
  mkdir -p "$dir"
  chmod 0700 "$dir"
}
