#!/usr/bin/env bash
# Writes the fleet's Redis password, once, for envoy/docker-compose.yaml's
# `fleet` profile (and for the loopback fleet of envoy/fleet/README.md):
#
#   DIR/redis-password    the password alone, for apikey-ratelimit's
#                         --redis-password-file (APIKEY_RATELIMIT_REDIS_PASSWORD_FILE)
#   DIR/redis-auth.conf   `requirepass <the same password>`, which Redis's
#                         configuration includes (envoy/fleet/redis.conf)
#
# Two files for one secret because Redis reads a password only as a
# configuration directive and the server wants the bare value; both are
# compose secrets, mounted read-only at /run/secrets/. Nothing puts the
# password on a command line, where `ps` shows it to every user.
#
# DIR defaults to envoy/fleet/secrets (ignored by git). An existing
# redis-password is kept and redis-auth.conf rewritten from it; --rotate
# makes a new password (restart Redis and the servers afterwards). The
# password is 64 hex digits from /dev/urandom (256 bits, nothing to quote).
#
# Permissions: DIR is 0700, so no other user of this machine can read the
# files; the files themselves are 0644 because the official redis image
# drops to its own `redis` user, which must read the mounted file.
set -euo pipefail

# shellcheck source=../secret-args.sh
source "$(dirname "${BASH_SOURCE[0]}")/../secret-args.sh"
read_secret_args "$(dirname "${BASH_SOURCE[0]}")" "$@"

password_file="$dir/redis-password"
if ((rotate)) || [[ ! -s "$password_file" ]]; then
  password="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
  [[ ${#password} -eq 64 ]] || { echo "$0: could not read 32 bytes from /dev/urandom" >&2; exit 1; }
  # Written beside the file and renamed, so a reader never sees half of it.
  printf '%s\n' "$password" >"$password_file.tmp"
  mv "$password_file.tmp" "$password_file"
  made="new"
else
  password="$(tr -d ' \t\r\n' <"$password_file")"
  [[ "$password" =~ ^[0-9A-Za-z._~-]+$ ]] ||
    { echo "$0: $password_file holds characters redis-auth.conf would need quoted; --rotate replaces it" >&2; exit 1; }
  made="kept"
fi
printf 'requirepass %s\n' "$password" >"$dir/redis-auth.conf.tmp"
mv "$dir/redis-auth.conf.tmp" "$dir/redis-auth.conf"
chmod 0644 "$password_file" "$dir/redis-auth.conf"
echo "$made Redis password in $password_file (and $dir/redis-auth.conf)"
