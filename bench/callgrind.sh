#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: the same build and
# load give the same count within about 0.5 %, where CPU time on a shared VM moves by
# 10 % or more between runs. Use it to compare two builds of a hot-path change.
#
#   bench/callgrind.sh [plain|tls|h2|close] [REQUESTS] [--keep] [--bare] [--bin PATH]
#
# plain: HTTP/1.1 (h2load --h1), tls: HTTP/1.1 over TLS, h2: HTTP/2 over TLS (-m 10);
# 16 keep-alive connections, REQUESTS (default 4000) counted after 500 to warm up.
# close: plain HTTP/1.1 with `Connection: close`, a new connection per request (the
# cost of a connection's setup and teardown; bench/run.sh's close scenario).
# Measures target/release/switchyard (build it first), or the binary --bin names. The configs and the upstream
# nginx are the load benchmark's (bench/run.sh renders them). --keep keeps the temp dir
# with the profile (cg.out.1, for callgrind_annotate). --bare turns off the request id and
# the security headers (`[request_id] enabled = false`, `[security_headers] headers = []`):
# the difference is what that default work costs. Every process started here is stopped
# by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=plain
REQUESTS=4000
KEEP=0
BARE=0
BIN=target/release/switchyard
NEXT_IS_BIN=0
for arg in "$@"; do
    if ((NEXT_IS_BIN)); then BIN=$arg; NEXT_IS_BIN=0; continue; fi
    case $arg in
        --bin) NEXT_IS_BIN=1 ;;
        --bin=*) BIN=${arg#*=} ;;
        plain | tls | h2 | close) MODE=$arg ;;
        --keep) KEEP=1 ;;
        --bare) BARE=1 ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *)
            [[ $arg =~ ^[0-9]+$ ]] || { echo "callgrind: unknown argument $arg (see --help)" >&2; exit 1; }
            REQUESTS=$arg ;;
    esac
done
((NEXT_IS_BIN == 0)) || { echo "callgrind: --bin needs a path" >&2; exit 1; }
[[ -x $BIN ]] || { echo "callgrind: $BIN is missing: run cargo build --release" >&2; exit 1; }

pkgs=()
command -v valgrind >/dev/null || pkgs+=(valgrind)
command -v h2load >/dev/null || pkgs+=(nghttp2-client)
command -v curl >/dev/null || pkgs+=(curl)
if ((${#pkgs[@]})); then
    sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

# One short harness run renders the configs, the certificate and the upstream's config.
log=$(bench/run.sh --bin "$BIN" --keep-tmp --only switchyard --scenarios small --rounds 1 --duration 1 2>&1) ||
    { echo "$log" >&2; exit 1; }
TMP=$(sed -n 's/.*temp dir kept: //p' <<<"$log" | tail -1)
[[ -d $TMP ]] || { echo "callgrind: no temp dir from bench/run.sh" >&2; exit 1; }

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $TMP/upstream/nginx.pid ]] && kill "$(cat "$TMP/upstream/nginx.pid")" 2>/dev/null || true
    if ((KEEP)); then echo "kept: $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

taskset -c 1 nginx -c "$TMP/upstream/nginx.conf" -p "$TMP/upstream" >/dev/null 2>&1

case $MODE in
    plain) config=$TMP/switchyard/no-tls.toml; which=1; scheme=http; h2=(--h1) ;;
    tls) config=$TMP/switchyard/full.toml; which=2; scheme=https; h2=(--h1) ;;
    h2) config=$TMP/switchyard/full.toml; which=2; scheme=https; h2=(-m 10) ;;
    close) config=$TMP/switchyard/no-tls.toml; which=1; scheme=http; h2=(--h1 -H 'Connection: close') ;;
esac
port=$(grep -o '127.0.0.1:[0-9]*' "$config" | sed -n "${which}p")
url=$scheme://$port/
rm -f "$TMP/switchyard/admin.sock"
if ((BARE)); then
    printf '\n[request_id]\nenabled = false\n\n[security_headers]\nheaders = []\n' >>"$config"
fi
taskset -c 0 env RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" \
    "$BIN" run --config "$config" >"$TMP/callgrind.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
    curl -sk -o /dev/null "$url" && break
    sleep 0.3
done
curl -sk -o /dev/null "$url" || { echo "callgrind: the proxy did not answer; see $TMP/callgrind.log" >&2; KEEP=1; exit 1; }

# Warm up (pooled connections, first-use paths), then count only the measured requests.
timeout 300 taskset -c 1 h2load "${h2[@]}" -n 500 -c 16 "$url" >/dev/null
callgrind_control -z "${pids[0]}" >/dev/null 2>&1
timeout 600 taskset -c 1 h2load "${h2[@]}" -n "$REQUESTS" -c 16 "$url" | grep -E '^requests:'
callgrind_control -d "${pids[0]}" >/dev/null 2>&1
total=$(sed -n 's/^summary: //p' "$TMP/cg.out.1")
if [[ $BIN == target/release/switchyard ]]; then
    built="$(git rev-parse --short HEAD)$(git diff --quiet || echo ', modified tree')"
else
    built=$BIN
fi
bare=""
((BARE)) && bare=", --bare"
echo "$MODE: $((total / REQUESTS)) instructions per request ($REQUESTS requests, $built$bare)"
