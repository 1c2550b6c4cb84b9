# shellcheck shell=bash
# Deployment (issue 9): containers through Podman for the compose demo
# (envoy/docker-compose.yaml, envoy/images/build.sh,
# tests/e2e/test_compose.py), and an OCI registry with a standard client for
# the Istio module image (envoy/istio/package-oci.sh, tests/e2e/test_oci.py):
# Debian's podman and runc, docker-registry (the CNCF distribution
# registry, run by the test as a process) and skopeo; podman-compose from
# PyPI into the venv (.venv/bin/podman-compose), because Debian 12's 1.0.3
# cannot run the compose file: it passes `network_mode: "service:gateway"`
# to podman as it is, beside the default network, and podman refuses both
# (1.1 and later translate it to `--network container:...`).
# Sourced by scripts/setup.sh; VENV_PYTHON, apt_install, die and
# require_command come from scripts/lib.sh.
#
# /etc/containers/containers.conf: the sandbox machines this project is
# built on need three settings Podman's defaults lack: crun refuses their
# hybrid cgroup hierarchy (cgroup v1 controllers, cgroup2 only at
# /sys/fs/cgroup/unified), so runc and the cgroupfs manager; and the
# open-files limit Podman raises every container to by default cannot be
# raised there, so no default ulimits. The file is written only when all of
# these hold, so a workstation is never touched:
#   - the file does not exist (an identical one is left alone; a different
#     one is never overwritten: the settings to add are printed instead);
#   - no Docker daemon answers (`docker info`): where Docker is the engine,
#     Podman's system configuration is not ours to change;
#   - the cgroup hierarchy is hybrid (the sandbox's): on a cgroup v2 host,
#     every current distribution, Podman's defaults work as they are.
# APIKEY_CONTAINERS_CONF=skip never touches the file; =write writes it when
# it is absent whatever the host (the Docker and cgroup checks are skipped).

PODMAN_PACKAGES=(podman runc docker-registry skopeo)
PODMAN_COMPOSE_VERSION=1.6.0
CONTAINERS_CONF=/etc/containers/containers.conf

containers_conf_text() {
  cat <<'EOF'
# Written by the apikey gateway's scripts/setup.d/podman.sh for a sandbox
# machine with hybrid cgroups: crun refuses them, and the open-files limit
# Podman would raise each container to cannot be raised here.
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
EOF
}

# True when /sys/fs/cgroup is the hybrid layout (v1 controllers, cgroup2
# mounted only at /sys/fs/cgroup/unified), the one crun refuses.
cgroups_are_hybrid() {
  [[ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != "cgroup2fs" ]] &&
    [[ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" == "cgroup2fs" ]]
}

docker_daemon_answers() {
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

ensure_containers_conf() {
  local mode="${APIKEY_CONTAINERS_CONF:-auto}"
  case "$mode" in
    skip) return ;;
    auto | write) ;;
    *) die "APIKEY_CONTAINERS_CONF must be auto, write or skip, not '$mode'" ;;
  esac
  if [[ -e "$CONTAINERS_CONF" ]]; then
    cmp -s "$CONTAINERS_CONF" <(containers_conf_text) && return
    if grep -Eq '^[[:space:]]*runtime[[:space:]]*=[[:space:]]*"runc"' "$CONTAINERS_CONF" &&
      grep -Eq '^[[:space:]]*cgroup_manager[[:space:]]*=[[:space:]]*"cgroupfs"' "$CONTAINERS_CONF" &&
      grep -Eq '^[[:space:]]*default_ulimits[[:space:]]*=[[:space:]]*\[[[:space:]]*\]' "$CONTAINERS_CONF"; then
      return
    fi
    if [[ "$mode" == write ]] || { cgroups_are_hybrid && ! docker_daemon_answers; }; then
      printf 'note: %s exists and differs from what this sandbox needs; it is left as it is.\n' "$CONTAINERS_CONF" >&2
      printf '      If podman run fails (crun and cgroups, or setrlimit), add these settings:\n' >&2
      containers_conf_text | grep -v '^#' | sed 's/^/        /' >&2
    fi
    return
  fi
  if [[ "$mode" == auto ]]; then
    docker_daemon_answers && return
    cgroups_are_hybrid || return
  fi
  local sudo=()
  [[ "$(id -u)" == 0 ]] || sudo=(sudo)
  echo "writing $CONTAINERS_CONF (runc, cgroupfs, no default ulimits: this host's cgroups are hybrid)"
  if ! "${sudo[@]}" mkdir -p "$(dirname "$CONTAINERS_CONF")" ||
    ! containers_conf_text | "${sudo[@]}" tee "$CONTAINERS_CONF" >/dev/null; then
    die "could not write $CONTAINERS_CONF"
  fi
}

ensure_podman_compose() {
  local compose="$VENV/bin/podman-compose"
  [[ "$("$compose" --version 2>/dev/null | head -n 1)" == "podman-compose version $PODMAN_COMPOSE_VERSION" ]] &&
    return
  "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION" ||
    die "pip could not install podman-compose==$PODMAN_COMPOSE_VERSION into $VENV"
}

ensure_podman() {
  apt_install "${PODMAN_PACKAGES[@]}"
  local tool
  for tool in podman runc skopeo; do
    require_command "$tool" "apt-get install ${PODMAN_PACKAGES[*]}"
  done
  [[ -x /usr/bin/docker-registry ]] || die "/usr/bin/docker-registry missing: apt-get install docker-registry"
  ensure_containers_conf
  local info
  info="$(podman info 2>&1 >/dev/null)" || die "podman is installed but does not work: ${info:0:600}"
  ensure_podman_compose
}

ensure_podman
