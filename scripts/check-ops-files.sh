#!/usr/bin/env bash
# Validates the operations files that ship next to the binary:
#   1. config/prometheus-alerts.yml   with `promtool check rules`
#   2. config/grafana-dashboard.json  parses as JSON (a dashboard with panels)
#   3. every switchyard_* metric the two use is a name in src/metrics/names.rs
#      (histogram series _bucket/_sum/_count count as their base name), and every
#      `runbook:` anchor of the alerts is a heading of docs/operations.md
#   4. systemd/switchyard.service     with `systemd-analyze verify` (no warnings allowed)
#      and systemd/switchyard.sysusers.conf with `systemd-sysusers --dry-run`
#
# Missing tools are installed with apt-get (Debian: promtool is in `prometheus`,
# systemd-analyze in `systemd`); that needs root, and runs non-interactively.
# The switchyard binary for step 4 is $SWITCHYARD_BIN, else target/release/switchyard, else
# target/debug/switchyard, else `cargo build` makes target/debug/switchyard.
# Run from anywhere: bash scripts/check-ops-files.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ALERTS=config/prometheus-alerts.yml
DASHBOARD=config/grafana-dashboard.json
NAMES=src/metrics/names.rs
UNIT=systemd/switchyard.service
SYSUSERS=systemd/switchyard.sysusers.conf
OPS_DOC=docs/operations.md

export DEBIAN_FRONTEND=noninteractive
apt_updated=0

fail() {
    echo "check-ops-files: $*" >&2
    exit 1
}

# need COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is not on PATH.
need() {
    local cmd="$1" pkg="$2" sudo=()
    command -v "$cmd" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || fail "$cmd is missing and apt-get is not available; install $pkg"
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || fail "$cmd is missing; run as root (or with sudo) to install $pkg"
        sudo=(sudo -E)
    fi
    echo "check-ops-files: installing $pkg (for $cmd)" >&2
    if [[ "$apt_updated" -eq 0 ]]; then
        "${sudo[@]}" apt-get update -qq
        apt_updated=1
    fi
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null
    command -v "$cmd" >/dev/null 2>&1 || fail "installed $pkg but $cmd is still missing"
}

for f in "$ALERTS" "$DASHBOARD" "$NAMES" "$UNIT" "$SYSUSERS" "$OPS_DOC"; do
    [[ -f "$f" ]] || fail "$f is missing"
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- 1. Alert rules -------------------------------------------------------------------
need promtool prometheus
promtool check rules "$ALERTS"

# --- 2. Dashboard ---------------------------------------------------------------------
need python3 python3
python3 - "$DASHBOARD" <<'PY'
import json, sys
path = sys.argv[1]
with open(path) as f:
    d = json.load(f)
panels = d.get("panels") or sys.exit(f"{path}: no panels")
def walk(ps):
    for p in ps:
        yield p
        yield from walk(p.get("panels", []))
ids = [p["id"] for p in walk(panels)]
if len(ids) != len(set(ids)):
    sys.exit(f"{path}: duplicate panel ids")
queries = [t["expr"] for p in walk(panels) for t in p.get("targets", [])]
if not queries:
    sys.exit(f"{path}: no queries")
print(f"{path}: valid JSON, schemaVersion {d.get('schemaVersion')}, {len(ids)} panels, {len(queries)} queries")
PY

# --- 3. Metric names and runbook anchors -------------------------------------------------
# The exported names: every `pub const X: &str = "switchyard_...";` in names.rs.
grep -oE 'pub const [A-Z0-9_]+: &str = "switchyard_[a-z0-9_]+"' "$NAMES" |
    grep -oE 'switchyard_[a-z0-9_]+' | sort -u >"$tmp/known"
[[ -s "$tmp/known" ]] || fail "no metric names found in $NAMES"

unknown=0
for f in "$ALERTS" "$DASHBOARD"; do
    while read -r used; do
        base="$used"
        for suffix in _bucket _sum _count; do
            if [[ "$used" == *"$suffix" ]] && grep -qx "${used%"$suffix"}" "$tmp/known"; then
                base="${used%"$suffix"}"
            fi
        done
        if ! grep -qx "$base" "$tmp/known"; then
            echo "check-ops-files: $f uses $used, which is not a metric in $NAMES" >&2
            unknown=1
        fi
    done < <(grep -oE 'switchyard_[a-z0-9_]+' "$f" | sort -u)
done
[[ "$unknown" -eq 0 ]] || fail "unknown metric names (see above)"
echo "metric names: all used in $ALERTS and $DASHBOARD are exported ($(wc -l <"$tmp/known") known)"

# GitHub-style anchors of the doc's headings: lower case, punctuation dropped, spaces to -.
grep -E '^#{1,6} ' "$OPS_DOC" | sed -E 's/^#+ +//' | tr '[:upper:]' '[:lower:]' |
    sed -E 's/[^a-z0-9 _-]//g; s/ /-/g' | sort -u >"$tmp/anchors"
missing=0
while read -r anchor; do
    if ! grep -qx "$anchor" "$tmp/anchors"; then
        echo "check-ops-files: $ALERTS links $OPS_DOC#$anchor, which is not a heading there" >&2
        missing=1
    fi
done < <(grep -oE "runbook: \"$OPS_DOC#[a-z0-9_-]+\"" "$ALERTS" | sed -E 's/.*#//; s/"$//')
[[ "$missing" -eq 0 ]] || fail "runbook annotations point at missing sections (see above)"
echo "runbook annotations: every anchor is a heading of $OPS_DOC"

# --- 4. systemd unit ----------------------------------------------------------------------
need systemd-analyze systemd
# `systemd-analyze verify` fails when an Exec*= binary does not exist, and CI has no
# /usr/local/bin/switchyard. So verify a copy of the unit, under the same file name, whose
# /usr/local/bin/switchyard is this build's binary: every other line is checked unchanged.
bin="${SWITCHYARD_BIN:-}"
if [[ -z "$bin" ]]; then
    for candidate in target/release/switchyard target/debug/switchyard; do
        if [[ -x "$candidate" ]]; then
            bin="$candidate"
            break
        fi
    done
fi
if [[ -z "$bin" ]]; then
    cargo build --quiet --bin switchyard
    bin=target/debug/switchyard
fi
[[ -x "$bin" ]] || fail "$bin is not an executable switchyard binary"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
grep -q '/usr/local/bin/switchyard ' "$UNIT" || fail "$UNIT no longer runs /usr/local/bin/switchyard; update this script"
sed "s#/usr/local/bin/switchyard #$bin #g" "$UNIT" >"$tmp/switchyard.service"
# verify exits 0 on unknown keys and other mistakes it only warns about: treat any output
# as a failure.
if ! out="$(systemd-analyze verify "$tmp/switchyard.service" 2>&1)" || [[ -n "$out" ]]; then
    printf '%s\n' "$out" >&2
    fail "systemd-analyze verify $UNIT failed"
fi
echo "$UNIT: systemd-analyze verify passed (binary $bin)"

need systemd-sysusers systemd
# --dry-run parses the file and prints what it would create, writing nothing.
if ! out="$(systemd-sysusers --dry-run "$PWD/$SYSUSERS" 2>&1)" || grep -qiE 'fail|invalid|ignoring' <<<"$out"; then
    printf '%s\n' "$out" >&2
    fail "systemd-sysusers --dry-run $SYSUSERS failed"
fi
echo "$SYSUSERS: systemd-sysusers --dry-run passed"

# --- 5. A live scrape ------------------------------------------------------------------
# Start the binary on loopback (with a TLS listener, for the certificate metrics), scrape
# /metrics, pass it through `promtool check metrics`, check that every metric the alerts and
# the dashboard use is in the exposition, and that the HTTP read API answers.
need openssl openssl
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=live.test" \
    -addext "subjectAltName=DNS:live.test" \
    -keyout "$tmp/live.key" -out "$tmp/live.crt" 2>/dev/null ||
    fail "openssl could not make a test certificate"
cat >"$tmp/live.toml" <<TOML
[proxy]
listen = ["127.0.0.1:0"]
[[proxy.tls]]
listen = "127.0.0.1:0"
certs = [{ cert = "$tmp/live.crt", key = "$tmp/live.key" }]
[pools.blue]
backends = ["127.0.0.1:9"]
[pools.green]
backends = ["127.0.0.1:9"]
[admin]
socket = "$tmp/admin.sock"
[metrics]
listen = "127.0.0.1:0"
[state]
path = "$tmp/state.json"
TOML
"$bin" run --config "$tmp/live.toml" --log-format text 2>"$tmp/live.log" &
live_pid=$!
metrics_addr=""
for _ in $(seq 1 100); do
    metrics_addr="$(grep -oE 'metrics listening addr=[0-9.:]+' "$tmp/live.log" | sed 's/.*addr=//' || true)"
    [[ -n "$metrics_addr" ]] && break
    sleep 0.1
done
if [[ -z "$metrics_addr" ]]; then
    kill "$live_pid" 2>/dev/null || true
    cat "$tmp/live.log" >&2
    fail "the daemon did not report its metrics listener"
fi
python3 - "$metrics_addr" "$tmp/scrape.txt" <<'PY' || { kill "$live_pid" 2>/dev/null || true; fail "the HTTP read API did not answer as documented"; }
import json, sys, time, urllib.error, urllib.request
base, out = f"http://{sys.argv[1]}", sys.argv[2]
def get(path, method="GET"):
    req = urllib.request.Request(base + path, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
# /ready is 200 once serving with a backend in rotation (port 9: discard, no health answer,
# but backends start in rotation until their checks fail three times).
for _ in range(50):
    if get("/ready")[0] == 200:
        break
    time.sleep(0.1)
else:
    sys.exit("/ready never answered 200")
assert get("/live")[0] == 200, "/live"
status, body = get("/status")
assert status == 200 and json.loads(body)["ok"] is True, "/status"
assert get("/ready", "HEAD") == (200, b""), "HEAD /ready"
assert get("/status", "POST")[0] == 405, "POST /status must be refused"
with open(out, "w") as f:
    f.write(get("/metrics")[1].decode())
print("HTTP read API: /live, /ready, /status and HEAD answer; POST is refused")
PY
kill "$live_pid" 2>/dev/null || true
wait "$live_pid" 2>/dev/null || true
promtool check metrics <"$tmp/scrape.txt" || fail "promtool check metrics rejected the exposition"
absent=0
for f in "$ALERTS" "$DASHBOARD"; do
    while read -r used; do
        if ! grep -qE "^${used}(\{| )" "$tmp/scrape.txt"; then
            echo "check-ops-files: $f uses $used, which a running daemon does not export" >&2
            absent=1
        fi
    done < <(grep -oE 'switchyard_[a-z0-9_]+' "$f" | sort -u)
done
# What operators look for first, whether or not the alerts use it.
for name in switchyard_build_info switchyard_backend_requests_total \
    switchyard_tls_certificate_expiry_timestamp_seconds switchyard_config_last_reload_success \
    switchyard_config_last_reload_success_timestamp_seconds process_cpu_seconds_total \
    process_resident_memory_bytes process_open_fds process_max_fds process_start_time_seconds; do
    if ! grep -qE "^${name}(\{| )" "$tmp/scrape.txt"; then
        echo "check-ops-files: a running daemon does not export $name" >&2
        absent=1
    fi
done
[[ "$absent" -eq 0 ]] || fail "metrics missing from a live scrape (see above)"
echo "live scrape: promtool check metrics passed; every metric used is exported"

echo "check-ops-files: all checks passed"
