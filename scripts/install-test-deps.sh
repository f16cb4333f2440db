#!/usr/bin/env bash
# Installs the real components the integration tests start on loopback ports:
#   etcd        (Debian `etcd-server`)   the fleet's store: tests/fleet*.rs
#   etcdctl     (Debian `etcd-client`)   used by docs/fleet.md and for debugging
#   prometheus  (Debian `prometheus`)    query gates and `promtool` (scripts/check-ops-files.sh)
# Debian's packages start system services on install; this script stops and disables them,
# so that only what the tests start runs (on ports they pick).
# Needs root (or sudo) and runs non-interactively. .ci/run calls it before `cargo test`.
# Run from anywhere: bash scripts/install-test-deps.sh
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

want=()
command -v etcd >/dev/null 2>&1 || want+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || want+=(etcd-client)
command -v prometheus >/dev/null 2>&1 || want+=(prometheus)
command -v promtool >/dev/null 2>&1 || want+=(prometheus)

if [[ ${#want[@]} -eq 0 ]]; then
    echo "install-test-deps: etcd, etcdctl and prometheus are installed"
    exit 0
fi

sudo=()
if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "install-test-deps: run as root (or with sudo) to install: ${want[*]}" >&2
        exit 1
    }
    sudo=(sudo)
fi
command -v apt-get >/dev/null 2>&1 || {
    echo "install-test-deps: apt-get is not available; install ${want[*]} (Debian package names)" >&2
    exit 1
}

# Keep the packages' own services from starting (no init system may be running at all).
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 0755 "$policy"
    added_policy=1
fi
cleanup() { [[ "$added_policy" -eq 1 ]] && "${sudo[@]}" rm -f "$policy"; return 0; }
trap cleanup EXIT

"${sudo[@]}" apt-get update -qq
mapfile -t unique < <(printf '%s\n' "${want[@]}" | sort -u)
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${unique[@]}" >/dev/null

for svc in etcd prometheus; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
        "${sudo[@]}" systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
done

echo "install-test-deps: installed ${unique[*]}"
command -v etcd >/dev/null && etcd --version | head -n 1
command -v prometheus >/dev/null && prometheus --version 2>&1 | head -n 1
