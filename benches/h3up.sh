#!/usr/bin/env bash
# HTTP/3 to upstream against HTTP/2 to upstream (BENCHMARKS.md, "h3 upstream"):
# wrk (HTTP/1.1 keep-alive) → front edge → back edge → nginx origin (2 B), the
# front's pool speaking `protocol = "h3"` (one QUIC connection) in one row and
# `"h2"` (h2 over TLS, one TCP connection) in the other, to the same back edge.
# Both fronts run at once and are loaded in turn; the figure is the front's CPU
# per request (utime + stime from /proc over the run), plus req/s.
#
#   bash benches/h3up.sh                       # builds --release, 3 × 6 s per row
#   EDGE_BIN=target/release/edge REPS=1 DURATION=3 bash benches/h3up.sh
#
# Pinning: the front edges on CPU 0; the back edge, the origin and wrk on CPU 1.
# Everything binds 127.0.0.1. Processes started here are stopped by pid on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPS=${REPS:-3}
DURATION=${DURATION:-6}
CONNS=${CONNS:-50}
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z ${EDGE_BIN:-} ]]; then
    (cd "$ROOT" && cargo build --release -p edge --bin edge)
    EDGE_BIN=$ROOT/target/release/edge
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    echo "nothing answers on $1" >&2
    exit 1
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# A CA and a localhost leaf for the back edge; the fronts trust the CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=h3up-ca -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/ext" -out "$WORK/cert.pem" 2>/dev/null

ORIGIN=$(free_port)
mkdir -p "$WORK/origin"
cat >"$WORK/origin/nginx.conf" <<EOF
daemon off; worker_processes 1; pid $WORK/origin/nginx.pid; error_log $WORK/origin/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  client_body_temp_path $WORK/origin; proxy_temp_path $WORK/origin; fastcgi_temp_path $WORK/origin;
  uwsgi_temp_path $WORK/origin; scgi_temp_path $WORK/origin;
  server { listen 127.0.0.1:$ORIGIN; location / { return 200 "ok"; } } }
EOF
taskset -c 1 nginx -e "$WORK/origin/error.log" -c "$WORK/origin/nginx.conf" &
PIDS+=($!)
wait_port "$ORIGIN"

# edge NAME CPU TLS_PORT HTTP_PORT ENDPOINT PROTOCOL: starts one edge.
edge() {
    local name=$1 cpu=$2 tls=$3 http=$4 endpoint=$5 protocol=$6 dir=$WORK/$1
    mkdir -p "$dir"
    cat >"$dir/edge.toml" <<EOF
[log]
access = "off"
[[routes]]
path_prefix = "/"
pool = "default"
[pools.default]
endpoints = ["$endpoint"]
protocol = "$protocol"
ca = "$WORK/ca.pem"
EOF
    STATE_DIRECTORY="$dir/state" taskset -c "$cpu" "$EDGE_BIN" run -c "$dir/edge.toml" \
        --listen "127.0.0.1:$tls" --http-listen "127.0.0.1:$http" --admin "127.0.0.1:$(free_port)" \
        --workers 1 --cert "$WORK/cert.pem" --key "$WORK/key.pem" >"$dir/out.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$name=$!"
    wait_port "$http"
}

BACK_TLS=$(free_port)
edge back 1 "$BACK_TLS" "$(free_port)" "http://127.0.0.1:$ORIGIN" h1
H3_HTTP=$(free_port)
H2_HTTP=$(free_port)
edge h3 0 "$(free_port)" "$H3_HTTP" "https://localhost:$BACK_TLS" h3
edge h2 0 "$(free_port)" "$H2_HTTP" "https://localhost:$BACK_TLS" h2

# run ROW PORT PID: one wrk run; prints "req/s cpu_us_per_req errors".
run() {
    local port=$2 pid=$3 before after out reqs errors
    before=$(cpu_ticks "$pid")
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/")
    after=$(cpu_ticks "$pid")
    reqs=$(awk '/requests in/ { print $1 }' <<<"$out")
    errors=$(awk '/Non-2xx/ { n += $NF } /Socket errors/ { n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$out")
    awk -v r="$reqs" -v d="$DURATION" -v t=$((after - before)) -v hz="$HZ" -v e="$errors" -v row="$1" \
        'BEGIN { printf "%s %.0f %.1f %d\n", row, r / d, t / hz * 1e6 / r, e }'
}

# Warm-up: opens each front's one upstream connection.
taskset -c 1 wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$H3_HTTP/" >/dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$H2_HTTP/" >/dev/null
grep -q "QUIC to the endpoint failed" "$WORK/h3/out.log" && {
    echo "the h3 front fell back to TCP:" >&2
    cat "$WORK/h3/out.log" >&2
    exit 1
}
for ((i = 0; i < REPS; i++)); do
    run "h3" "$H3_HTTP" "$PID_h3"
    run "h2" "$H2_HTTP" "$PID_h2"
done | awk '
    { rps[$1] = rps[$1] " " $2; cpu[$1] = cpu[$1] " " $3; err[$1] += $4 }
    END {
        print "| upstream protocol | req/s (each run) | front CPU µs/req (each run) | errors |"
        print "|---|---|---|---|"
        for (r in rps) printf "| %s |%s |%s | %d |\n", r, rps[r], cpu[r], err[r]
    }'
