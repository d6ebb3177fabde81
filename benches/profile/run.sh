#!/usr/bin/env bash
# Load-independent figures for edge alone (issue 5's performance pass), for a
# machine too busy for wall-clock runs:
#
#   bash benches/profile/run.sh idle   # RSS slope per idle HTTP/1.1 connection, plain and TLS
#   bash benches/profile/run.sh cg     # user-space instructions per request, h1 -> h1 (callgrind)
#
# Starts bench-origin and edge (release builds of this work tree, or EDGE_BIN /
# ORIGIN_BIN) on 127.0.0.1, --workers 1 --upstream-protocol h1, and stops both by
# pid on exit. Knobs: N1, N2 (idle connections, default 1000, 4000); C (wrk
# connections, 10), SECS (measured seconds, 10), ACCESS (the access log:
# off, json or text to a file; off), OUT (callgrind file,
# target/profile/callgrind.out). Needs python3, curl, wrk and valgrind.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODE=${1:-idle}
N1=${N1:-1000}; N2=${N2:-4000}; C=${C:-10}; SECS=${SECS:-10}; ACCESS=${ACCESS:-off}
OUT=${OUT:-$ROOT/target/profile/callgrind.out}
if [[ -z ${EDGE_BIN:-} || -z ${ORIGIN_BIN:-} ]]; then
    cargo build --release -p edge -p edge-benches --manifest-path "$ROOT/Cargo.toml" >&2
fi
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/edge}
ORIGIN_BIN=${ORIGIN_BIN:-$ROOT/target/release/bench-origin}
D=$(mktemp -d)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$D"
}
trap cleanup EXIT

"$ORIGIN_BIN" 127.0.0.1:0 >"$D/origin.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q 127.0.0.1 "$D/origin.out" && break; sleep 0.1; done
ORIGIN=$(grep -o '127.0.0.1:[0-9]*' "$D/origin.out" | head -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
TLS_PORT=$(free_port); HTTP_PORT=$(free_port); ADMIN_PORT=$(free_port)
# Limits lifted as in benches/conf/edge.toml: the idle test holds connections
# longer than the default 10 s header read timeout.
cat >"$D/edge.toml" <<T
[client]
header_read_timeout = "300s"
idle_timeout = "300s"
max_connections = 19000
# Off by default, as in compare.sh (stdout JSON is edge's default);
# ACCESS=json or text measures the log, written to a file.
[log]
access = "$ACCESS"
access_file = "$D/access.log"
[pools.default]
endpoints = ["http://$ORIGIN"]
protocol = "h1"
T
EDGE=("$EDGE_BIN" run -c "$D/edge.toml" --upstream "http://$ORIGIN" --upstream-protocol h1
    --listen "127.0.0.1:$TLS_PORT" --http-listen "127.0.0.1:$HTTP_PORT"
    --admin "127.0.0.1:$ADMIN_PORT" --workers 1)
wait_ready() {
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$HTTP_PORT/" && return 0
        sleep 0.2
    done
    echo "edge did not start" >&2
    return 1
}
ulimit -n 20000

case $MODE in
idle)
    for kind in plain tls; do
        "${EDGE[@]}" >"$D/edge.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        wait_ready
        port=$HTTP_PORT
        [[ $kind == tls ]] && port=$TLS_PORT
        python3 "$ROOT/benches/profile/idle.py" 127.0.0.1 "$port" "$kind" "$N1" "$N2" "$pid" \
            "127.0.0.1:$ADMIN_PORT"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
    ;;
cg)
    mkdir -p "$(dirname "$OUT")"
    valgrind --tool=callgrind --callgrind-out-file="$OUT" --dump-instr=no \
        --instr-atstart=no "${EDGE[@]}" >"$D/edge.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_ready
    wrk -t1 -c"$C" -d2s "http://127.0.0.1:$HTTP_PORT/" >/dev/null # warm-up: pools, caches
    callgrind_control -i on "$pid" >/dev/null
    wrk -t1 -c"$C" -d"${SECS}s" "http://127.0.0.1:$HTTP_PORT/" >"$D/wrk.out"
    callgrind_control -i off "$pid" >/dev/null
    rm -f "$OUT".*
    callgrind_control -d "$pid" >/dev/null
    # The dump is complete once callgrind_annotate can read its totals.
    total=
    for _ in $(seq 100); do
        total=$(callgrind_annotate "$OUT".* 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
        [[ -n $total ]] && break
        sleep 0.1
    done
    [[ -n $total ]] || { echo "no callgrind dump in 10 s" >&2; exit 1; }
    requests=$(awk '/requests in/ { print $1 }' "$D/wrk.out")
    grep -E 'Non-2xx|Socket errors' "$D/wrk.out" || true
    echo "requests=$requests instructions=$total per_request=$((total / requests)) profile=$(ls "$OUT".*)"
    ;;
*)
    echo "usage: $0 idle|cg" >&2
    exit 2
    ;;
esac
