#!/usr/bin/env bash
# The runbook's "switch N% of traffic to green", as a thin wrapper over `switchyard ctl`.
#
# Usage: load-balancer-switch.sh --green-percentage N [--socket PATH] [--expect-gen G] [--json]
#
#   --green-percentage N  green's share of new requests, 0..100 with up to two decimals
#                         (sent as `weight green N`: green's share whichever pool is stable)
#   --socket PATH         admin socket (default: $SWITCHYARD_SOCKET, else /run/switchyard/admin.sock)
#   --expect-gen G        only apply if the route table is still at generation G
#   --json                print the daemon's JSON reply even on a terminal
#
# The switchyard binary is $SWITCHYARD_BIN, else `switchyard` on PATH, else this
# repository's target/release or target/debug build.
# Exit codes are switchyard ctl's: 0 ok, 1 usage or internal error, 2 socket unreachable or
# permission denied, 7 conflict (stale --expect-gen, or a rollout is progressing), 9 busy
# (retry), 10 state_unwritable (refused: the state file cannot be written).
set -euo pipefail

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }

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
        echo "load-balancer-switch.sh: switchyard binary not found; set SWITCHYARD_BIN" >&2
        return 1
    fi
}

percentage=""
socket="${SWITCHYARD_SOCKET:-/run/switchyard/admin.sock}"
extra=()
flags=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --green-percentage) percentage="${2:?--green-percentage needs a value}"; shift 2 ;;
        --socket) socket="${2:?--socket needs a path}"; shift 2 ;;
        --expect-gen) extra+=(expect-gen "${2:?--expect-gen needs a generation}"); shift 2 ;;
        --json) flags+=(--json); shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "load-balancer-switch.sh: unknown argument '$1'" >&2; usage >&2; exit 1 ;;
    esac
done
if [[ -z "$percentage" ]]; then
    echo "load-balancer-switch.sh: --green-percentage is required" >&2
    usage >&2
    exit 1
fi

bin="$(find_bin)" || exit 1
if [[ ! -x "$bin" ]]; then
    echo "load-balancer-switch.sh: $bin is not an executable switchyard binary" >&2
    exit 1
fi
exec "$bin" ctl --socket "$socket" ${flags[@]+"${flags[@]}"} weight green "$percentage" ${extra[@]+"${extra[@]}"}
