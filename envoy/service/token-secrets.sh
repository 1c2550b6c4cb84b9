#!/usr/bin/env bash
# Writes the key service's two tokens, once, for envoy/docker-compose.yaml
# (the `apikey-admin-token` and `apikey-feed-token` compose secrets):
#
#   DIR/admin.token   the management API's token (people and tools that
#                     create, revoke and rotate keys: `apikey --server URL
#                     --admin-token-file DIR/admin.token ...`)
#   DIR/feed.token    the gateways' token for the feed (contract §8.3); the
#                     stack's apikey-init writes it into the gateway's
#                     key_source configuration
#
# Two tokens because they grant different things: the feed token reads
# every key's hash, the admin token changes keys. Each is 64 hex digits
# from /dev/urandom (256 bits, nothing to quote). The service reads them
# from files (--admin-token-file, --feed-token-file): never on a command
# line, where `ps` shows them to every user, nor in the environment.
#
# DIR defaults to envoy/service/secrets (ignored by git). Existing tokens
# are kept; --rotate makes new ones (then `up` again: the service reads its
# token files at start, and apikey-init rewrites the gateway's
# configuration with the new feed token).
#
# Permissions: DIR is 0700, so no other user of this machine can read the
# files; the files themselves are 0644 because the service's image runs as
# an unprivileged user (uid 10001), which must read the mounted files.
set -euo pipefail

# shellcheck source=../secret-args.sh
source "$(dirname "${BASH_SOURCE[0]}")/../secret-args.sh"
read_secret_args "$(dirname "${BASH_SOURCE[0]}")" "$@"

for name in admin feed; do
  file="$dir/$name.token"
  if ((rotate)) || [[ ! -s "$file" ]]; then
    token="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    [[ ${#token} -eq 64 ]] || { echo "$0: could not read 32 bytes from /dev/urandom" >&2; exit 1; }
    # Written beside the file and renamed, so a reader never sees half of it.
    printf '%s\n' "$token" >"$file.tmp"
    chmod 0644 "$file.tmp"
    mv "$file.tmp" "$file"
    echo "new $name token in $file"
  else
    chmod 0644 "$file"
    echo "kept $name token in $file"
  fi
done
