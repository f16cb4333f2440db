#!/usr/bin/env bash
# The runbook's emergency rollback: 100% of new requests to one pool, now, in one atomic
# swap (the pool is also marked ready). A thin wrapper over `switchyard ctl rollback`.
#
# Usage: emergency-rollback.sh --target POOL [--socket PATH] [--json]
#
#   --target POOL   blue or green; "stable" means the daemon's stable pool
#   --socket PATH   admin socket (default: $SWITCHYARD_SOCKET, else /run/switchyard/admin.sock)
#   --json          print the daemon's JSON reply even on a terminal
#
# The switchyard binary is $SWITCHYARD_BIN, else `switchyard` on PATH, else this
# repository's target/release or target/debug build.
# Exit codes are switchyard ctl's: 0 ok, 1 usage or internal error, 2 socket unreachable or
# permission denied.
set -euo pipefail

usage() { sed -n '2,15s/^# \{0,1\}//p' "$0"; }

find_bin() {
    if [[ -n "${SWITCHYARD_BIN:-}" ]]; then
        printf '%s\n' "$SWITCHYARD_BIN"
    elif command -v switchyard >/dev/null 2>&1; then
        command -v switchyard
    else
        local repo
        repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
        for candidate in "$repo/target/release/switchyard" "$repo/target/debug/switchyard"; do
            if [[ -x "$candidate" ]]; then
                printf '%s\n' "$candidate"
                return 0
            fi
        done
        echo "emergency-rollback.sh: switchyard binary not found; set SWITCHYARD_BIN" >&2
        return 1
    fi
}

target=""
socket="${SWITCHYARD_SOCKET:-/run/switchyard/admin.sock}"
flags=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) target="${2:?--target needs a pool}"; shift 2 ;;
        --socket) socket="${2:?--socket needs a path}"; shift 2 ;;
        --json) flags+=(--json); shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "emergency-rollback.sh: unknown argument '$1'" >&2; usage >&2; exit 1 ;;
    esac
done
case "$target" in
    blue | green) words=(rollback to "$target") ;;
    stable) words=(rollback) ;;
    "") echo "emergency-rollback.sh: --target is required (blue, green or stable)" >&2; usage >&2; exit 1 ;;
    *) echo "emergency-rollback.sh: --target must be blue, green or stable, not '$target'" >&2; exit 1 ;;
esac

bin="$(find_bin)" || exit 1
if [[ ! -x "$bin" ]]; then
    echo "emergency-rollback.sh: $bin is not an executable switchyard binary" >&2
    exit 1
fi
exec "$bin" ctl --socket "$socket" ${flags[@]+"${flags[@]}"} "${words[@]}"
