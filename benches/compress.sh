#!/usr/bin/env bash
# Edge's CPU per MiB served, identity against each encoding, through the real
# binary: a release edge with `compress` on its route, in front of Python's
# http.server serving one text file (this workspace's Rust and Markdown,
# ~2 MiB, `Content-Type: text/plain`), fetched N times by curl per encoding.
# CPU is edge's own utime + stime from /proc/PID/stat (not wall time, so a
# shared machine only slows the run down). Also prints the micro benchmark
# (benches/src/bin/compress-cpu.rs: the encoder alone, on this thread's CPU).
#
#   bash benches/compress.sh [N]        # N fetches per encoding (default 40)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
for bin in "edge --bin edge" "edge-benches --bin compress-cpu"; do
    # shellcheck disable=SC2086
    cargo build --release -p $bin >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }
done

find . -path ./target -prune -o -path ./vendor -prune -o \( -name '*.rs' -o -name '*.md' \) -print |
    sort | xargs cat >"$work/corpus.txt"
size=$(stat -c %s "$work/corpus.txt")

python3 -m http.server --bind 127.0.0.1 0 --directory "$work" >"$work/origin.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    port=$(grep -o 'port [0-9]*' "$work/origin.log" | grep -o '[0-9]*' || true)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "origin did not start" >&2; exit 1; }

cat >"$work/edge.toml" <<EOF
listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
admin = "127.0.0.1:0"
state_dir = "$work/state"
[log]
access = "off"
[[routes]]
pool = "default"
compress = ["zstd", "br", "gzip"]
[pools.default]
endpoints = ["http://127.0.0.1:$port"]
protocol = "h1"
EOF
./target/release/edge run -c "$work/edge.toml" --workers 1 >"$work/edge.log" 2>&1 &
edge=$!
pids+=($edge)
for _ in $(seq 100); do
    addr=$(grep -o 'kind=http addr=127.0.0.1:[0-9]*' "$work/edge.log" | grep -o '127.0.0.1:[0-9]*' | head -1 || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { cat "$work/edge.log" >&2; echo "edge did not start" >&2; exit 1; }

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$edge/stat"; }
mib=$(awk -v s="$size" -v n="$N" 'BEGIN { printf "%.1f", s * n / 1048576 }')
echo "corpus $size B; $N fetches ($mib MiB) per row; edge --workers 1, release"
echo
echo "| Accept-Encoding | bytes on the wire per fetch | edge CPU ms | edge CPU µs per MiB | over identity |"
echo "|---|---|---|---|---|"
base=""
for enc in identity gzip br zstd; do
    curl -s -o /dev/null -H "accept-encoding: $enc" "http://$addr/corpus.txt" # warm up
    before=$(cpu)
    wire=0
    for _ in $(seq "$N"); do
        wire=$(curl -s -o /dev/null -w '%{size_download}' -H "accept-encoding: $enc" "http://$addr/corpus.txt")
    done
    after=$(cpu)
    ms=$(( (after - before) * 1000 / ticks ))
    per=$(awk -v ms="$ms" -v m="$mib" 'BEGIN { printf "%.0f", ms * 1000 / m }')
    [ -z "$base" ] && base=$per
    extra=$(awk -v p="$per" -v b="$base" 'BEGIN { printf "%+.0f", p - b }')
    echo "| $enc | $wire | $ms | $per | $extra |"
done
echo
./target/release/compress-cpu 64
