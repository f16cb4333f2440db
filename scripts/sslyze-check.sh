#!/usr/bin/env bash
# Checks switchyard's TLS listener against Mozilla's "intermediate" configuration with
# sslyze (from PyPI): a throwaway venv and certificate, switchyard on 127.0.0.1, one scan.
# Not part of CI (it downloads sslyze); run it by hand after changing TLS settings.
#
#   scripts/sslyze-check.sh [path/to/switchyard]    (default: target/release, else debug)
#
# Exit: sslyze's (0 when the listener is compliant), 2 when the setup itself failed.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-}"
if [[ -z "$bin" ]]; then
    for b in "$root/target/release/switchyard" "$root/target/debug/switchyard"; do
        [[ -x "$b" ]] && { bin="$b"; break; }
    done
fi
if [[ -z "$bin" || ! -x "$bin" ]]; then
    echo "no switchyard binary; build one (cargo build --release) or pass its path" >&2
    exit 2
fi

work="$(mktemp -d)"
pid=""
cleanup() {
    # Only the process this script started, by its pid.
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

echo "== sslyze in a venv ($work/venv)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check sslyze

echo "== test CA and certificate (ECDSA P-256, SAN localhost and 127.0.0.1)"
# A throwaway CA that sslyze is told to trust (--certinfo_ca_file), so that the scan judges
# the TLS configuration rather than the fact that a test certificate is not publicly trusted.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=switchyard sslyze test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=localhost" -keyout "$work/site.key" -out "$work/site.csr" 2>/dev/null
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" > "$work/site.ext"
openssl x509 -req -in "$work/site.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$work/site.ext" -out "$work/site.crt" 2>/dev/null
cat "$work/site.crt" "$work/ca.pem" > "$work/site.pem"

tls_port="$(free_port)"
cat > "$work/switchyard.toml" <<EOF
[proxy]
listen = []
[[proxy.tls]]
listen = "127.0.0.1:$tls_port"
certs = [{ cert = "$work/site.pem", key = "$work/site.key" }]
[pools.blue]
backends = ["127.0.0.1:9"]
[pools.blue.health]
path = ""
[pools.green]
backends = ["127.0.0.1:9"]
[pools.green.health]
path = ""
[admin]
socket = "$work/admin.sock"
[metrics]
listen = ""
[state]
path = "$work/state.json"
EOF

echo "== switchyard on 127.0.0.1:$tls_port"
"$bin" check --config "$work/switchyard.toml"
RUST_LOG=warn "$bin" run --config "$work/switchyard.toml" 2> "$work/switchyard.log" &
pid=$!
for _ in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$tls_port),0.2)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "switchyard exited:" >&2
        cat "$work/switchyard.log" >&2
        exit 2
    fi
    sleep 0.1
done

echo "== sslyze --mozilla_config=intermediate 127.0.0.1:$tls_port"
set +e
"$work/venv/bin/sslyze" --mozilla_config=intermediate --certinfo_ca_file "$work/ca.pem" "127.0.0.1:$tls_port"
verdict=$?
set -e
if [[ $verdict -eq 0 ]]; then
    echo "== verdict: compliant with Mozilla's intermediate configuration"
else
    echo "== verdict: NOT compliant (sslyze exit $verdict)"
fi
exit $verdict
