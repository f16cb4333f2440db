#!/usr/bin/env bash
# switchyard load-benchmark harness: switchyard vs nginx vs HAProxy, side by
# side, same worker count, loopback only, bounded durations. See bench/README.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/.." && pwd)
LIB="$SCRIPT_DIR/lib"
CONF="$SCRIPT_DIR/conf"
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:${CARGO_HOME:-$HOME/.cargo}/bin"

ALL_PROXIES="switchyard,nginx,haproxy"
ALL_SCENARIOS="small,body16k,tls,h2,close,rate,tlsrate,flip,idle,tlsidle,h2idle"

DURATION=10
ROUNDS=3
QUICK=0
BUILD=1
INSTALL=1
ONLY=$ALL_PROXIES
SCENARIOS=$ALL_SCENARIOS
IDLE_CONNS=10000
RATE=5000
FLIP_INTERVAL_MS=10
WORKERS=1
PROXY_CPU=0
LOAD_CPU=1
KEEP_TMP=0
BIN_PATH=""
BASE_BIN=""
DURATION_SET=0
ROUNDS_SET=0
IDLE_SET=0
SAME_WORK=0

usage() {
    cat <<EOF
Usage: bench/run.sh [OPTIONS]

Load benchmark of switchyard against nginx and HAProxy as reverse proxies, each
with one worker pinned to one CPU, in front of the same nginx upstream, on
127.0.0.1 only. Installs missing tools (Debian: nginx haproxy wrk
nghttp2-client procps util-linux; oha with cargo install), builds switchyard
(cargo build --release), runs every scenario for every proxy for several
rounds, prints a markdown table and writes it to bench/out/DATE-TIME.md.

Options:
  --quick              1 round, 3 s per scenario, 2,000 idle connections
                       (about 1.5 minutes once tools are installed and the
                       release build is up to date; add the build time otherwise)
  --duration SECONDS   length of each load run (default $DURATION)
  --rounds N           rounds; the table shows medians (default $ROUNDS)
  --only LIST          proxies to run, comma separated, from: $ALL_PROXIES
                       (default: all)
  --scenarios LIST     comma separated, from: $ALL_SCENARIOS
                       (default: all)
                         small   wrk, 64 keep-alive connections, GET /
                         body16k wrk, 64 keep-alive connections, GET /16k
                         tls     wrk over https (HTTP/1.1), 64 connections
                         h2      h2load over TLS, -c 64 -m 10
                         close   wrk, 16 connections, Connection: close
                         rate    oha at a fixed rate (--rate), P50/P99/P99.9
                         tlsrate the same over https (HTTP/1.1)
                         flip    switchyard only: small load while the admin
                                 socket flips the weight every ${FLIP_INTERVAL_MS} ms, right
                                 after the same load without flips
                         idle    RSS with N idle keep-alive connections
                         tlsidle the same over https (HTTP/1.1)
                         h2idle  the same over https with HTTP/2 (by ALPN)
  --idle-conns N       connections for the idle scenarios (default $IDLE_CONNS)
  --rate N             requests per second for the rate and tlsrate scenarios (default $RATE)
  --no-build           do not run cargo build --release (use target/release/switchyard)
  --bin PATH           bench this switchyard binary instead of target/release/switchyard
                       (implies --no-build); to compare two commits, build each
                       with its own CARGO_TARGET_DIR and run once per binary
  --baseline-bin PATH  also bench this second switchyard build as the proxy
                       "switchyard-base", in the same rounds: the report's ratio
                       table then has switchyard ÷ switchyard-base per round, an A/B
                       comparison of two builds that the drift between separate
                       runs does not blur
  --same-work          nginx and HAProxy also do the per-request work switchyard does
                       by default: a request id made (or a client's kept), sent to
                       the upstream and returned, four security headers on every
                       response, and (HAProxy) the response's constitutional hash
                       checked; without it they proxy bare (see bench/README.md)
  --no-install         do not install missing tools; fail instead
  --workers N          workers of each proxy under test: switchyard workers,
                       nginx worker_processes, haproxy nbthread (default $WORKERS);
                       give --proxy-cpu as many CPUs (the upstream keeps one)
  --proxy-cpu LIST     CPU(s) for the proxy under test, taskset -c form, e.g. 0
                       or 0,1 (default $PROXY_CPU)
  --load-cpu N         CPU for load generators and the upstream (default $LOAD_CPU)
  --keep-tmp           keep the temp dir (configs, logs, raw tool outputs)
  -h, --help           this help

Every load run is bounded (timeout); every process the script starts is
stopped on exit. Example:  bench/run.sh --quick --only nginx,haproxy
EOF
}

die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
# abs_path PATH: PATH from the root, its directory resolved (fails if that does not exist)
abs_path() {
    local d
    d=$(cd "$(dirname "$1")" && pwd) || return 1
    printf '%s/%s' "$d" "$(basename "$1")"
}

quote_arg() {
    if [[ $1 =~ ^[A-Za-z0-9_,./=:@%+-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}
CMDLINE="bench/run.sh"
for a in "$@"; do CMDLINE+=" $(quote_arg "$a")"; done

while (($#)); do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --quick) QUICK=1 ;;
        --duration) [[ $# -ge 2 ]] || die "--duration needs a value"; DURATION=$2; DURATION_SET=1; shift ;;
        --duration=*) DURATION=${1#*=}; DURATION_SET=1 ;;
        --rounds) [[ $# -ge 2 ]] || die "--rounds needs a value"; ROUNDS=$2; ROUNDS_SET=1; shift ;;
        --rounds=*) ROUNDS=${1#*=}; ROUNDS_SET=1 ;;
        --only) [[ $# -ge 2 ]] || die "--only needs a value"; ONLY=$2; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --scenarios) [[ $# -ge 2 ]] || die "--scenarios needs a value"; SCENARIOS=$2; shift ;;
        --scenarios=*) SCENARIOS=${1#*=} ;;
        --idle-conns) [[ $# -ge 2 ]] || die "--idle-conns needs a value"; IDLE_CONNS=$2; IDLE_SET=1; shift ;;
        --idle-conns=*) IDLE_CONNS=${1#*=}; IDLE_SET=1 ;;
        --rate) [[ $# -ge 2 ]] || die "--rate needs a value"; RATE=$2; shift ;;
        --rate=*) RATE=${1#*=} ;;
        --no-build) BUILD=0 ;;
        --bin) [[ $# -ge 2 ]] || die "--bin needs a value"; BIN_PATH=$2; BUILD=0; shift ;;
        --bin=*) BIN_PATH=${1#*=}; BUILD=0 ;;
        --baseline-bin) [[ $# -ge 2 ]] || die "--baseline-bin needs a value"; BASE_BIN=$2; shift ;;
        --baseline-bin=*) BASE_BIN=${1#*=} ;;
        --no-install) INSTALL=0 ;;
        --same-work) SAME_WORK=1 ;;
        --workers) [[ $# -ge 2 ]] || die "--workers needs a value"; WORKERS=$2; shift ;;
        --workers=*) WORKERS=${1#*=} ;;
        --proxy-cpu) [[ $# -ge 2 ]] || die "--proxy-cpu needs a value"; PROXY_CPU=$2; shift ;;
        --load-cpu) [[ $# -ge 2 ]] || die "--load-cpu needs a value"; LOAD_CPU=$2; shift ;;
        --keep-tmp) KEEP_TMP=1 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if ((QUICK)); then
    ((DURATION_SET)) || DURATION=3
    ((ROUNDS_SET)) || ROUNDS=1
    ((IDLE_SET)) || IDLE_CONNS=2000
fi
[[ $PROXY_CPU =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--proxy-cpu must be a CPU number or a comma-separated list, got '$PROXY_CPU'"
for v in DURATION ROUNDS IDLE_CONNS RATE WORKERS LOAD_CPU; do
    is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
done
((DURATION >= 1)) || die "--duration must be at least 1"
((ROUNDS >= 1)) || die "--rounds must be at least 1"
((WORKERS >= 1)) || die "--workers must be at least 1"

if [[ -n $BASE_BIN ]]; then
    [[ ",$ONLY," == *",switchyard,"* ]] || die "--baseline-bin compares against switchyard: keep it in --only"
    [[ -x $BASE_BIN ]] || die "--baseline-bin $BASE_BIN: not an executable file"
    BASE_BIN=$(abs_path "$BASE_BIN")
    ONLY+=",switchyard-base"
    ALL_PROXIES+=",switchyard-base"
fi
IFS=, read -r -a PROXY_LIST <<<"$ONLY"
IFS=, read -r -a SCEN_LIST <<<"$SCENARIOS"
((${#PROXY_LIST[@]})) || die "--only is empty"
((${#SCEN_LIST[@]})) || die "--scenarios is empty"
for p in "${PROXY_LIST[@]}"; do
    [[ ",$ALL_PROXIES," == *",$p,"* ]] || die "unknown proxy '$p' (choose from $ALL_PROXIES)"
done
for s in "${SCEN_LIST[@]}"; do
    [[ ",$ALL_SCENARIOS," == *",$s,"* ]] || die "unknown scenario '$s' (choose from $ALL_SCENARIOS)"
done
has_proxy() { [[ ",$ONLY," == *",$1,"* ]]; }
has_scen() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
# a fixed-rate scenario (oha): rate or tlsrate
has_rate_scen() { has_scen rate || has_scen tlsrate; }
# an idle-memory scenario: idle, tlsidle or h2idle
has_idle_scen() { has_scen idle || has_scen tlsidle || has_scen h2idle; }
# a scenario over the TLS listener
has_tls_scen() { has_scen tls || has_scen h2 || has_scen tlsrate || has_scen tlsidle || has_scen h2idle; }

NCPU=$(nproc)
MAX_PROXY_CPU=$(tr , '\n' <<<"$PROXY_CPU" | sort -n | tail -n 1)
if ((MAX_PROXY_CPU >= NCPU || LOAD_CPU >= NCPU)); then
    log "only $NCPU CPU(s): pinning everything to CPU 0"
    PROXY_CPU=0
    LOAD_CPU=0
fi

# ------------------------------------------------------------------ tools

APT_UPDATED=0
apt_install() {
    ((INSTALL)) || die "missing packages: $* (run without --no-install, or install them)"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "missing packages $* and not root"
        sudo=(sudo)
    fi
    if ((!APT_UPDATED)); then
        log "apt-get update"
        "${sudo[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tools() {
    local pkgs=()
    command -v python3 >/dev/null || pkgs+=(python3)
    command -v openssl >/dev/null || pkgs+=(openssl)
    command -v ps >/dev/null || pkgs+=(procps)
    command -v pgrep >/dev/null || pkgs+=(procps)
    command -v getconf >/dev/null || pkgs+=(libc-bin)
    command -v taskset >/dev/null || pkgs+=(util-linux)
    command -v nginx >/dev/null || pkgs+=(nginx) # the upstream is always nginx
    command -v wrk >/dev/null || pkgs+=(wrk)
    if has_proxy haproxy; then command -v haproxy >/dev/null || pkgs+=(haproxy); fi
    if has_scen h2; then command -v h2load >/dev/null || pkgs+=(nghttp2-client); fi
    if ((${#pkgs[@]})); then
        local uniq
        mapfile -t uniq < <(printf '%s\n' "${pkgs[@]}" | sort -u)
        apt_install "${uniq[@]}"
    fi
    if has_rate_scen && ! command -v oha >/dev/null; then
        ((INSTALL)) || die "oha missing (cargo install oha --locked)"
        command -v cargo >/dev/null || die "oha missing and no cargo to install it"
        log "cargo install oha --locked (a few minutes, once)"
        cargo install oha --locked
        command -v oha >/dev/null || die "oha still not on PATH after cargo install"
    fi
}
ensure_tools

# ------------------------------------------------------------------ temp dir, processes

TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-bench.XXXXXX")
PIDFILE="$TMP/pids"
: >"$PIDFILE"

children_of() { pgrep -P "$1" 2>/dev/null || true; }

proc_alive() {
    # true while PID exists and is not a zombie
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(cut -d')' -f2 "/proc/$1/stat" 2>/dev/null | awk '{print $1}') || return 1
    [[ -n $st && $st != Z ]]
}

stop_pid() {
    local pid=$1 i kids
    [[ -n $pid ]] || return 0
    kids=$(children_of "$pid")
    if proc_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            proc_alive "$pid" || break
            sleep 0.1
        done
        if proc_alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # children (nginx workers) of a master that is gone
    local k
    for k in $kids; do
        if proc_alive "$k"; then kill -KILL "$k" 2>/dev/null || true; fi
    done
    wait "$pid" 2>/dev/null || true
    return 0
}

# proc_start PID: the process's start time (clock ticks since boot), to tell
# a process we started from a later one that reuses its pid
proc_start() {
    [[ -r /proc/$1/stat ]] || return 0
    cut -d')' -f2- "/proc/$1/stat" 2>/dev/null | awk '{print $20}' || true
}

# remember PID...: add to the pid file (with start time) for the EXIT trap
remember() {
    local pid
    for pid in "$@"; do
        echo "$pid $(proc_start "$pid")" >>"$PIDFILE"
    done
}

cleanup() {
    local rc=$? pid start
    trap - EXIT INT TERM
    if [[ -s $PIDFILE ]]; then
        # in start order: a master before the workers it stops itself
        while read -r pid start; do
            if [[ -n $start && $(proc_start "$pid") == "$start" ]]; then
                stop_pid "$pid"
            fi
        done <"$PIDFILE"
    fi
    if ((KEEP_TMP)) || ((rc != 0)); then
        log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

LAST_PID=
FLIP_PID=
FLIP_OUT=
# start_bg LOGFILE CMD... : start in the background, remember the pid
start_bg() {
    local logf=$1
    shift
    "$@" >>"$logf" 2>&1 &
    LAST_PID=$!
    remember "$LAST_PID"
}

py() { python3 "$LIB/benchlib.py" "$@"; }

# remember_children PID: put PID's children (nginx workers) in the pid file too,
# so that they are stopped even if their master dies first
remember_children() {
    local kids
    kids=$(children_of "$1")
    # shellcheck disable=SC2086 # a list of pids
    [[ -z $kids ]] || remember $kids
}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
WORKER_CONNECTIONS=$((NOFILE < 30000 ? NOFILE : 30000))
HAPROXY_MAXCONN=$(((NOFILE - 100) / 2))
((HAPROXY_MAXCONN <= 30000)) || HAPROXY_MAXCONN=30000
NOTES=()
note() { NOTES+=("$*"); log "note: $*"; }
if has_idle_scen; then
    max_idle=$((NOFILE - 200))
    # HAProxy counts two descriptors per connection: keep the same N for every proxy
    if has_proxy haproxy && ((HAPROXY_MAXCONN - 50 < max_idle)); then max_idle=$((HAPROXY_MAXCONN - 50)); fi
    if ((IDLE_CONNS > max_idle)); then
        note "open-file limit is $NOFILE (hard limit; could not raise it to 65536): idle connections lowered from $IDLE_CONNS to $max_idle for every proxy"
        IDLE_CONNS=$max_idle
    fi
fi
CLK_TCK=$(getconf CLK_TCK)

START_STAMP=$(date +%Y-%m-%d-%H%M%S)
START_DATE=$(date -u '+%Y-%m-%d %H:%M:%S')

# ------------------------------------------------------------------ ports, configs, cert

mapfile -t PORTS < <(py ports 12)
UPSTREAM_BLUE=${PORTS[0]}
UPSTREAM_GREEN=${PORTS[1]}
SWITCHYARD_HTTP=${PORTS[2]}
SWITCHYARD_TLS=${PORTS[3]}
SWITCHYARD_METRICS=${PORTS[4]}
NGINX_HTTP=${PORTS[5]}
NGINX_TLS=${PORTS[6]}
HAPROXY_HTTP=${PORTS[7]}
HAPROXY_TLS=${PORTS[8]}
BASE_HTTP=${PORTS[9]}
BASE_TLS=${PORTS[10]}
BASE_METRICS=${PORTS[11]}
RUN_USER=$(id -un)

SWITCHYARD_NAME=switchyard
# The peers' configs hold their share of switchyard's default per-request work between
# SAME-WORK-BEGIN and SAME-WORK-END; it stays only with --same-work.
same_work_filter() {
    if ((SAME_WORK)); then cat; else sed '/# SAME-WORK-BEGIN/,/# SAME-WORK-END/d'; fi
}
render() {
    sed -e "s|@DIR@|$TMP|g" \
        -e "s|@SWITCHYARD_NAME@|$SWITCHYARD_NAME|g" \
        -e "s|@USER@|$RUN_USER|g" \
        -e "s|@WORKERS@|$WORKERS|g" \
        -e "s|@NOFILE@|$NOFILE|g" \
        -e "s|@WORKER_CONNECTIONS@|$WORKER_CONNECTIONS|g" \
        -e "s|@HAPROXY_MAXCONN@|$HAPROXY_MAXCONN|g" \
        -e "s|@UPSTREAM_BLUE@|$UPSTREAM_BLUE|g" \
        -e "s|@UPSTREAM_GREEN@|$UPSTREAM_GREEN|g" \
        -e "s|@SWITCHYARD_HTTP@|$SWITCHYARD_HTTP|g" \
        -e "s|@SWITCHYARD_TLS@|$SWITCHYARD_TLS|g" \
        -e "s|@SWITCHYARD_METRICS@|$SWITCHYARD_METRICS|g" \
        -e "s|@NGINX_HTTP@|$NGINX_HTTP|g" \
        -e "s|@NGINX_TLS@|$NGINX_TLS|g" \
        -e "s|@HAPROXY_HTTP@|$HAPROXY_HTTP|g" \
        -e "s|@HAPROXY_TLS@|$HAPROXY_TLS|g" \
        "$1" | same_work_filter
}

mkdir -p "$TMP"/{upstream,nginx-proxy,haproxy,switchyard,switchyard-base,tls,www,out}
for d in upstream nginx-proxy; do
    mkdir -p "$TMP/$d"/{client_body,proxy,fastcgi,uwsgi,scgi}
done
printf 'ok\n' >"$TMP/www/index.txt"
head -c 16384 /dev/zero | tr '\0' 'x' >"$TMP/www/16k"
if ((SAME_WORK)); then
    note "--same-work: nginx and HAProxy also make and return a request id and add the four security headers; HAProxy also checks the response's constitutional hash (nginx cannot, without a module)"
else
    note "nginx and HAProxy proxy bare; switchyard also makes a request id, adds four security headers and checks the response's hash (its defaults): --same-work gives the peers that work too"
fi
render "$CONF/upstream-nginx.conf" >"$TMP/upstream/nginx.conf"
render "$CONF/nginx-proxy.conf" >"$TMP/nginx-proxy/nginx.conf"
render "$CONF/haproxy.cfg" >"$TMP/haproxy/haproxy.cfg"
# render_switchyard NAME HTTP TLS METRICS: a switchyard config on these ports with its
# files under $TMP/NAME, and the fallbacks for a build that lacks a key (full, no-workers,
# no-tls, no-tls-no-workers). NAME is switchyard, or switchyard-base (--baseline-bin).
render_switchyard() {
    local SWITCHYARD_NAME=$1 SWITCHYARD_HTTP=$2 SWITCHYARD_TLS=$3 SWITCHYARD_METRICS=$4
    local d="$TMP/$1"
    render "$CONF/switchyard.toml" >"$d/full.toml"
    sed '/# WORKERS-LINE/d' "$d/full.toml" >"$d/no-workers.toml"
    sed '/# TLS-BEGIN/,/# TLS-END/d' "$d/full.toml" >"$d/no-tls.toml"
    sed '/# TLS-BEGIN/,/# TLS-END/d' "$d/no-workers.toml" >"$d/no-tls-no-workers.toml"
}
render_switchyard switchyard "$SWITCHYARD_HTTP" "$SWITCHYARD_TLS" "$SWITCHYARD_METRICS"
render_switchyard switchyard-base "$BASE_HTTP" "$BASE_TLS" "$BASE_METRICS"

log "self-signed certificate"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" >"$TMP/tls/openssl.log" 2>&1 ||
    die "openssl req failed: $(cat "$TMP/tls/openssl.log")"
cat "$TMP/tls/cert.pem" "$TMP/tls/key.pem" >"$TMP/tls/combined.pem"

# wait_http URL PID [SECONDS]: until URL answers 200 with the hash header, while PID lives
wait_http() {
    local url=$1 pid=$2 secs=${3:-15} i
    for ((i = 0; i < secs * 10; i++)); do
        if py probe --header X-Constitutional-Hash --timeout 1 "$url" >/dev/null 2>&1; then
            return 0
        fi
        proc_alive "$pid" || return 1
        sleep 0.1
    done
    return 1
}

# ------------------------------------------------------------------ build

SWITCHYARD_BIN="$REPO/target/release/switchyard"
if [[ -n $BIN_PATH ]]; then
    SWITCHYARD_BIN=$(abs_path "$BIN_PATH") || die "--bin $BIN_PATH: no such directory"
fi
SWITCHYARD_USABLE=0
if has_proxy switchyard; then
    if ((BUILD)); then
        log "cargo build --release (may wait for a cargo lock)"
        if (cd "$REPO" && cargo build --release) >"$TMP/build.log" 2>&1; then
            SWITCHYARD_USABLE=1
        else
            tail -n 30 "$TMP/build.log" >&2
            note "switchyard: cargo build --release failed (see the log above; --no-build benches the existing binary); switchyard rows are n/a"
        fi
    else
        SWITCHYARD_USABLE=1
    fi
    [[ -n $BIN_PATH ]] && note "switchyard binary: $SWITCHYARD_BIN (--bin; the commit above is the harness's, not necessarily the binary's)"
    [[ -n $BASE_BIN ]] && note "switchyard-base binary: $BASE_BIN (--baseline-bin; the same config on ports of its own)"
    if ((SWITCHYARD_USABLE)) && [[ ! -x $SWITCHYARD_BIN ]]; then
        note "switchyard: $SWITCHYARD_BIN not found; switchyard rows are n/a"
        SWITCHYARD_USABLE=0
    fi
fi

# From here on the harness itself (python helpers, load generators) runs on
# the load CPU; each proxy is started with an explicit taskset to the proxy CPU.
taskset -pc "$LOAD_CPU" $$ >/dev/null

# ------------------------------------------------------------------ upstream

log "upstream nginx on 127.0.0.1:$UPSTREAM_BLUE (blue) and :$UPSTREAM_GREEN (green), CPU $LOAD_CPU"
start_bg "$TMP/upstream/stdout.log" taskset -c "$LOAD_CPU" \
    nginx -p "$TMP/upstream" -c "$TMP/upstream/nginx.conf" -e "$TMP/upstream/error.log" -g 'daemon off;'
UPSTREAM_PID=$LAST_PID
sleep 0.2
remember_children "$UPSTREAM_PID"
for u in "http://127.0.0.1:$UPSTREAM_BLUE/" "http://127.0.0.1:$UPSTREAM_GREEN/16k" \
    "http://127.0.0.1:$UPSTREAM_GREEN/health"; do
    wait_http "$u" "$UPSTREAM_PID" 10 ||
        die "upstream nginx does not answer $u: $(cat "$TMP/upstream/error.log" "$TMP/upstream/stdout.log" 2>/dev/null)"
done

# ------------------------------------------------------------------ proxies

declare -A PID HTTP_PORT TLS_PORT USABLE TLS_OK
HTTP_PORT=([switchyard]=$SWITCHYARD_HTTP [nginx]=$NGINX_HTTP [haproxy]=$HAPROXY_HTTP [switchyard-base]=$BASE_HTTP)
TLS_PORT=([switchyard]=$SWITCHYARD_TLS [nginx]=$NGINX_TLS [haproxy]=$HAPROXY_TLS [switchyard-base]=$BASE_TLS)
SWITCHYARD_CONFIG=

start_nginx_proxy() {
    start_bg "$TMP/nginx-proxy/stdout.log" taskset -c "$PROXY_CPU" \
        nginx -p "$TMP/nginx-proxy" -c "$TMP/nginx-proxy/nginx.conf" \
        -e "$TMP/nginx-proxy/error.log" -g 'daemon off;'
    PID[nginx]=$LAST_PID
    wait_http "http://127.0.0.1:$NGINX_HTTP/" "$LAST_PID" || return 1
    remember_children "$LAST_PID"
}

start_haproxy() {
    start_bg "$TMP/haproxy/stdout.log" taskset -c "$PROXY_CPU" \
        haproxy -db -f "$TMP/haproxy/haproxy.cfg"
    PID[haproxy]=$LAST_PID
    wait_http "http://127.0.0.1:$HAPROXY_HTTP/" "$LAST_PID"
}

start_switchyard_with() {
    local cfg=$1 name=${2:-switchyard} bin=${3:-$SWITCHYARD_BIN}
    rm -f "$TMP/$name/admin.sock"
    start_bg "$TMP/$name/stdout.log" taskset -c "$PROXY_CPU" \
        env RUST_LOG="${RUST_LOG:-warn}" "$bin" run --config "$cfg"
    PID[$name]=$LAST_PID
    wait_http "http://127.0.0.1:${HTTP_PORT[$name]}/" "$LAST_PID" 20
}

# The baseline build, with the config variant the build under test started with.
start_switchyard_base() {
    [[ -n $SWITCHYARD_CONFIG ]] || return 1
    start_switchyard_with "$TMP/switchyard-base/$(basename "$SWITCHYARD_CONFIG")" \
        switchyard-base "$BASE_BIN"
}

start_switchyard() {
    if [[ -n $SWITCHYARD_CONFIG ]]; then
        start_switchyard_with "$SWITCHYARD_CONFIG"
        return
    fi
    # First start: try the full config, then without the keys this build may
    # not know yet. The first that serves plain HTTP wins.
    local v
    for v in full no-workers no-tls no-tls-no-workers; do
        if start_switchyard_with "$TMP/switchyard/$v.toml"; then
            SWITCHYARD_CONFIG="$TMP/switchyard/$v.toml"
            case $v in
                no-workers | no-tls-no-workers)
                    note "switchyard: config with 'workers = $WORKERS' was refused; ran without it (the taskset to one CPU still gives one runtime worker if it sizes by CPU affinity)" ;;
            esac
            case $v in
                no-tls*) note "switchyard: config with [[proxy.tls]] did not start; TLS scenarios are n/a" ;;
            esac
            return 0
        fi
        log "switchyard did not serve with $v.toml: $(tail -n 5 "$TMP/switchyard/stdout.log" | tr '\n' ' ')"
        cp "$TMP/switchyard/stdout.log" "$TMP/switchyard/stdout-$v.log"
        stop_pid "${PID[switchyard]}"
    done
    return 1
}

proxy_log_tail() {
    local f
    case $1 in
        nginx) f="$TMP/nginx-proxy/error.log" ;;
        *) f="$TMP/$1/stdout.log" ;;
    esac
    tail -n 4 "$f" 2>/dev/null | tr '\n' ' ' | cut -c1-400
}

start_proxy() {
    case $1 in
        nginx) start_nginx_proxy ;;
        haproxy) start_haproxy ;;
        switchyard) start_switchyard ;;
        switchyard-base) start_switchyard_base ;;
    esac
}

# check_tls PROXY: does the TLS listener answer an HTTP/1.1 GET with the hash header?
check_tls() {
    local p=$1
    TLS_OK[$p]=0
    if [[ $p == switchyard* && $SWITCHYARD_CONFIG == *no-tls* ]]; then
        return 0
    fi
    local i
    for ((i = 0; i < 8; i++)); do
        if py probe --header X-Constitutional-Hash --timeout 2 "https://127.0.0.1:${TLS_PORT[$p]}/" \
            >"$TMP/$p-tls-probe.log" 2>&1; then
            TLS_OK[$p]=1
            return 0
        fi
        sleep 0.25
    done
    note "$p: TLS listener 127.0.0.1:${TLS_PORT[$p]} does not serve ($(tr '\n' ' ' <"$TMP/$p-tls-probe.log")); TLS scenarios are n/a"
}

ACTIVE=()
for p in "${PROXY_LIST[@]}"; do
    USABLE[$p]=0
    if [[ $p == switchyard* ]] && ((!SWITCHYARD_USABLE)); then
        continue
    fi
    log "starting $p on 127.0.0.1:${HTTP_PORT[$p]} (TLS :${TLS_PORT[$p]}), CPU $PROXY_CPU"
    if start_proxy "$p"; then
        USABLE[$p]=1
        ACTIVE+=("$p")
        if has_tls_scen; then check_tls "$p"; fi
    else
        note "$p did not start or serve (log: $(proxy_log_tail "$p"))"
        stop_pid "${PID[$p]:-}"
    fi
done

# Warm-up: connections to the upstream, allocator, caches.
tree_desc=()
for p in "${ACTIVE[@]}"; do
    timeout -k 2 10 wrk -t1 -c64 -d1s "http://127.0.0.1:${HTTP_PORT[$p]}/" >/dev/null 2>&1 || true
    tree_desc+=("$p: $(py threads "${PID[$p]}")")
done
if ((${#tree_desc[@]})); then
    joined=$(printf '%s; ' "${tree_desc[@]}")
    note "processes and threads after warm-up (all on CPU $PROXY_CPU): ${joined%; }"
fi

# ------------------------------------------------------------------ scenarios

RESULTS="$TMP/results.jsonl"
: >"$RESULTS"
TIMEOUT_SLACK=30

na() { # na ROUND SCENARIO PROXY NOTE
    py record --results "$RESULTS" --round "$1" --scenario "$2" --proxy "$3" --tool na --note "$4"
}

# measure ROUND SCENARIO PROXY TOOL OUTFILE CMD... : run a bounded load, record it.
# With FLIP_PID/FLIP_OUT set, waits for that admin loop and records its summary.
measure() {
    local round=$1 scen=$2 p=$3 tool=$4 outf=$5
    shift 5
    local pid=${PID[$p]} u0 s0 u1 s1 rc=0 notes=""
    read -r u0 s0 < <(py cpu "$pid")
    timeout -k 5 $((DURATION + TIMEOUT_SLACK)) "$@" >"$outf" 2>&1 || rc=$?
    read -r u1 s1 < <(py cpu "$pid")
    local extra=()
    if [[ -n ${FLIP_PID:-} ]]; then
        wait "$FLIP_PID" 2>/dev/null || true
        extra+=(--flip "$FLIP_OUT")
    fi
    if ((rc != 0)); then
        notes+="$tool exit $rc: $(grep -v '^WRKJSON' "$outf" | tail -n 2 | tr '\n' ' ' | cut -c1-160) "
    fi
    if proc_alive "$pid"; then
        extra+=(--cpu-ticks $((u1 + s1 - u0 - s0)) --cpu-sys-ticks $((s1 - s0)))
    else
        notes+="$p exited during the run (no CPU figure)"
    fi
    [[ -n $notes ]] && extra+=(--note "$notes")
    py record --results "$RESULTS" --round "$round" --scenario "$scen" --proxy "$p" --tool "$tool" \
        --output "$outf" --clk-tck "$CLK_TCK" "${extra[@]}"
}

OHA_JSON=()
oha_json_flag() {
    local help
    help=$(oha --help 2>&1 || true)
    if grep -q -- '--output-format' <<<"$help"; then
        OHA_JSON=(--output-format json)
    else
        OHA_JSON=(-j)
    fi
    # one runtime thread: oha is pinned to one CPU anyway
    if grep -q -- '--worker-threads' <<<"$help"; then OHA_JSON+=(--worker-threads 1); fi
    # let requests in flight at the deadline finish instead of counting them as errors
    if grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$help"; then OHA_JSON+=(-w); fi
}
if has_rate_scen; then oha_json_flag; fi

admin_socket() { echo "$TMP/switchyard/admin.sock"; }

# run_idle ROUND PROXY [idle|tlsidle|h2idle]
run_idle() {
    local round=$1 p=$2 scen=${3:-idle}
    local out="$TMP/out/r$round-$scen-$p"
    local port=${HTTP_PORT[$p]} tls=()
    if [[ $scen == tlsidle || $scen == h2idle ]]; then
        if [[ ${TLS_OK[$p]:-0} != 1 ]]; then na "$round" "$scen" "$p" "TLS not served"; return; fi
        port=${TLS_PORT[$p]}
        tls=(--tls)
        [[ $scen == tlsidle ]] || tls=(--h2)
    fi
    # a fresh process, so that the numbers do not depend on earlier scenarios
    stop_pid "${PID[$p]}"
    if ! start_proxy "$p"; then
        USABLE[$p]=0
        na "$round" "$scen" "$p" "$p did not restart"
        return
    fi
    sleep 1
    local base held cpid i
    base=$(py rss "${PID[$p]}")
    rm -f "$out.ready"
    start_bg "$out.client" timeout -k 5 $((120 + IDLE_CONNS / 100)) \
        python3 "$LIB/idle_conns.py" --port "$port" "${tls[@]}" -n "$IDLE_CONNS" \
        --hold 60 --concurrency 64 --ready-file "$out.ready"
    cpid=$LAST_PID
    for ((i = 0; i < 900; i++)); do
        [[ -s $out.ready ]] && break
        proc_alive "$cpid" || break
        sleep 0.1
    done
    if [[ ! -s $out.ready ]]; then
        stop_pid "$cpid"
        na "$round" "$scen" "$p" "idle client did not finish opening: $(tail -n 2 "$out.client" | tr '\n' ' ')"
        return
    fi
    sleep 4
    held=$(py rss "${PID[$p]}")
    local extra=()
    proc_alive "${PID[$p]}" || extra+=(--note "$p exited while holding connections")
    stop_pid "$cpid"
    py record --results "$RESULTS" --round "$round" --scenario "$scen" --proxy "$p" --tool idle \
        --output "$out.ready" --rss-base "$base" --rss "$held" "${extra[@]}"
}

run_one() {
    local round=$1 scen=$2 p=$3
    local out="$TMP/out/r$round-$scen-$p.txt"
    local http="http://127.0.0.1:${HTTP_PORT[$p]}" https="https://127.0.0.1:${TLS_PORT[$p]}"
    local wrk=(taskset -c "$LOAD_CPU" wrk -t1 -d"${DURATION}s" --timeout 5s -s "$LIB/wrk_report.lua")
    local oha=(taskset -c "$LOAD_CPU" oha --no-tui "${OHA_JSON[@]}" -q "$RATE" -z "${DURATION}s" -c 64
        --latency-correction)
    [[ $scen != flip || $p == switchyard ]] || return 0
    if [[ ${USABLE[$p]} != 1 ]]; then
        na "$round" "$scen" "$p" "$p not running"
        return
    fi
    if ! proc_alive "${PID[$p]}"; then
        # it died in an earlier run: say so, and give it one more start
        note "$p had exited before round $round, scenario $scen (log: $(proxy_log_tail "$p")); restarted"
        if ! start_proxy "$p"; then
            USABLE[$p]=0
            note "$p did not restart; its remaining rows are n/a"
            na "$round" "$scen" "$p" "$p not running"
            return
        fi
    fi
    log "round $round/$ROUNDS  $scen  $p"
    FLIP_PID=
    FLIP_OUT=
    case $scen in
        small) measure "$round" "$scen" "$p" wrk "$out" "${wrk[@]}" -c64 "$http/" ;;
        body16k) measure "$round" "$scen" "$p" wrk "$out" "${wrk[@]}" -c64 "$http/16k" ;;
        close) measure "$round" "$scen" "$p" wrk "$out" "${wrk[@]}" -c16 -H 'Connection: close' "$http/" ;;
        tls)
            if [[ ${TLS_OK[$p]:-0} != 1 ]]; then na "$round" "$scen" "$p" "TLS not served"; return; fi
            measure "$round" "$scen" "$p" wrk "$out" "${wrk[@]}" -c64 "$https/" ;;
        h2)
            if [[ ${TLS_OK[$p]:-0} != 1 ]]; then na "$round" "$scen" "$p" "TLS not served"; return; fi
            measure "$round" "$scen" "$p" h2load "$out" taskset -c "$LOAD_CPU" \
                h2load -t1 -c64 -m10 -D "$DURATION" "$https/" ;;
        rate)
            measure "$round" "$scen" "$p" oha "$out" "${oha[@]}" "$http/" ;;
        tlsrate)
            if [[ ${TLS_OK[$p]:-0} != 1 ]]; then na "$round" "$scen" "$p" "TLS not served"; return; fi
            # HTTP/1.1 over TLS (oha offers no ALPN h2 unless asked); the certificate is
            # the run's self-signed one
            measure "$round" "$scen" "$p" oha "$out" "${oha[@]}" --insecure "$https/" ;;
        flip)
            [[ $p == switchyard ]] || return 0
            # the same load without flips right before, as the baseline
            measure "$round" flip-base "$p" wrk "$TMP/out/r$round-flip-base-$p.txt" "${wrk[@]}" -c64 "$http/"
            FLIP_OUT="$TMP/out/r$round-flip-admin.json"
            start_bg "$FLIP_OUT" timeout -k 5 $((DURATION + TIMEOUT_SLACK)) \
                python3 "$LIB/admin_flip.py" --socket "$(admin_socket)" --duration "$DURATION" \
                --interval "0.$(printf '%03d' "$FLIP_INTERVAL_MS")"
            FLIP_PID=$LAST_PID
            measure "$round" "$scen" "$p" wrk "$out" "${wrk[@]}" -c64 "$http/"
            FLIP_PID=
            FLIP_OUT= ;;
        idle) run_idle "$round" "$p" ;;
        tlsidle) run_idle "$round" "$p" tlsidle ;;
        h2idle) run_idle "$round" "$p" h2idle ;;
    esac
}

for ((round = 1; round <= ROUNDS; round++)); do
    for scen in "${SCEN_LIST[@]}"; do
        # rotate the proxy order every round so that none always goes first
        n=${#PROXY_LIST[@]}
        for ((k = 0; k < n; k++)); do
            p=${PROXY_LIST[$(((k + round - 1) % n))]}
            run_one "$round" "$scen" "$p"
        done
    done
done

# ------------------------------------------------------------------ report

commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "no-commit")
if [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null | head -n 1) ]]; then
    commit+="-dirty"
fi
first_line() { # first line of a command's output, whatever its exit status
    local out
    out=$("$@" 2>&1) || true
    printf '%s' "${out%%$'\n'*}"
}
versions="$(first_line nginx -v | sed 's|^nginx version: ||')"
command -v haproxy >/dev/null && versions+=", $(first_line haproxy -v | awk '{print "haproxy " $3}')"
versions+=", $(first_line wrk -v | awk '{print "wrk " $2}')"
command -v h2load >/dev/null && versions+=", $(first_line h2load --version)"
command -v oha >/dev/null && versions+=", $(first_line oha --version)"
command -v rustc >/dev/null && versions+=", $(first_line rustc --version | awk '{print $1 " " $2}')"
printf '%s\n' "${NOTES[@]}" >"$TMP/notes.txt"

META_COMMAND="$CMDLINE" META_COMMIT="$commit" META_DATE="$START_DATE" META_NPROC="$NCPU" \
    META_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" \
    META_KERNEL="$(uname -srm)" META_LOAD="$(cut -d' ' -f1-3 /proc/loadavg)" \
    META_WORKERS="$WORKERS" META_PIN="proxy on CPU $PROXY_CPU; upstream nginx, load generators and harness on CPU $LOAD_CPU" \
    META_ROUNDS="$ROUNDS" META_DURATION="$DURATION" META_PROXIES="${ACTIVE[*]}" \
    META_VERSIONS="$versions" META_NOTES="$TMP/notes.txt" \
    META_EXTRA="fixed rate $RATE req/s; idle connections $IDLE_CONNS; weight flip every $FLIP_INTERVAL_MS ms" \
    python3 - "$TMP/meta.json" <<'PYEOF'
import json, os, sys
e = os.environ
with open(e["META_NOTES"]) as f:
    notes = [l.strip() for l in f if l.strip()]
notes.append(e["META_EXTRA"])
meta = {"command": e["META_COMMAND"], "commit": e["META_COMMIT"], "date": e["META_DATE"],
        "nproc": e["META_NPROC"], "cpu_model": e["META_CPU"], "kernel": e["META_KERNEL"],
        "loadavg": e["META_LOAD"], "pinning": e["META_PIN"], "workers": e["META_WORKERS"], "rounds": e["META_ROUNDS"],
        "duration": e["META_DURATION"], "proxies": e["META_PROXIES"].split(),
        "versions": e["META_VERSIONS"], "notes": notes}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
PYEOF

mkdir -p "$SCRIPT_DIR/out"
REPORT="$SCRIPT_DIR/out/$START_STAMP.md"
py report --results "$RESULTS" --meta "$TMP/meta.json" --markdown-out "$REPORT"
cp "$RESULTS" "$SCRIPT_DIR/out/$START_STAMP.jsonl"
log "report written to ${REPORT#"$REPO"/} (raw results: bench/out/$START_STAMP.jsonl)"
