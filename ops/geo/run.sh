#!/usr/bin/env bash
# Three local "regions" and one edge, to watch geo routing and spillover with curl.
#
#   bash ops/geo/run.sh            start everything, print what to try, wait for Ctrl-C
#   bash ops/geo/run.sh selftest   start everything, check routing and spillover, stop
#
# Regions are loopback networks: near = 127.1.0.0/16 (this edge's own), mid =
# 127.2.0.0/16, far = 127.3.0.0/16. Each region's origins listen on its network
# and answer after 5, 40 and 90 ms (no tc netem needed: the delay is in the
# origin, /healthz included, so the edge's health probes measure it). Every
# answer's x-origin header names the origin that served it, and x-edge-geo names
# the client's region and the chosen one. A region is taken down by writing
# "down" into its origins' health files (the script prints the commands).
#
# Binaries: $EDGE_BIN and $ORIGIN_BIN, else target/release/{edge,test-origin},
# built when missing. Ports: edge 127.0.0.1:18080 (plain HTTP), admin :19901,
# origins :19101. Everything stays on loopback and stops on exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:-run}
edge_bin=${EDGE_BIN:-$root/target/release/edge}
origin_bin=${ORIGIN_BIN:-$root/target/release/test-origin}
if [[ ! -x $edge_bin || ! -x $origin_bin ]]; then
    (cd "$root" && cargo build --release -p edge -p edge-tests --bin edge --bin test-origin)
fi

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# origin NAME ADDR DELAY_MS: a test-origin whose /healthz follows $work/NAME.health.
origin() {
    echo ok >"$work/$1.health"
    "$origin_bin" "$2" "$3" "$work/$1.health" >"$work/$1.log" &
    pids+=($!)
}
origin near1 127.1.0.10:19101 5
origin near2 127.1.0.11:19101 5
origin mid 127.2.0.10:19101 40
origin far 127.3.0.10:19101 90

"$edge_bin" run -c "$root/ops/geo/edge.toml" >"$work/edge.log" 2>&1 &
pids+=($!)
edge=http://127.0.0.1:18080
admin=http://127.0.0.1:19901

# until DEADLINE_S CMD...: retries CMD every 0.1 s until it succeeds or time runs out.
until_ok() {
    local end=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= end)); then
            echo "timed out waiting for: $*" >&2
            cat "$work/edge.log" >&2
            return 1
        fi
        sleep 0.1
    done
}
# metric_has REGEX: a line of /metrics matches.
metric_has() { curl -s "$admin/metrics" | grep -q "$1"; }
# region_of FROM: the region network (second octet of x-origin) serving a client at FROM.
region_of() {
    curl -s --interface "$1" -o /dev/null -D - "$edge/" |
        tr -d '\r' | sed -n 's/^x-origin: 127\.\([0-9]*\)\..*/\1/p'
}
# served_in FROM NET: a client at FROM is served by region network NET.
served_in() { [[ $(region_of "$1") == "$2" ]]; }

until_ok 20 curl -sf "$admin/healthz"
# Measured distances take over from the configured ones after 3 probes each.
until_ok 10 metric_has '^proxy_region_rtt_samples{region="far"} [3-9]'

if [[ $mode != selftest ]]; then
    cat <<EOF
edge:   $edge  (admin $admin/metrics)
logs:   $work/*.log

Who serves a client of each region:
  curl -s --interface 127.1.0.1 -D - -o /dev/null $edge/ | grep -i -e x-origin -e x-edge-geo
  curl -s --interface 127.2.0.1 -D - -o /dev/null $edge/ | grep -i -e x-origin -e x-edge-geo

Take one of near's two endpoints down (below the 70% threshold: about 71% stays
near, the rest spills to the nearest other region), then both (everything moves):
  echo down > $work/near1.health
  echo down > $work/near2.health
and back: echo ok > $work/near1.health; echo ok > $work/near2.health

Distances in use:  curl -s $admin/metrics | grep ^proxy_region_
Ctrl-C stops everything.
EOF
    wait
    exit 0
fi

fail() { echo "selftest: $*" >&2; exit 1; }
for net in 1 2 3; do
    got=$(region_of "127.$net.0.1")
    [[ $got == "$net" ]] || fail "a client of 127.$net/16 was served by 127.$got/16"
done
echo "selftest: each region's clients reach their own region"

echo down >"$work/near1.health"
echo down >"$work/near2.health"
for ip in 127.1.0.10 127.1.0.11; do
    until_ok 10 metric_has "proxy_endpoint_healthy{backend=\"api\",endpoint=\"http://$ip:19101\"} 0"
done
for _ in 1 2 3 4 5; do
    got=$(region_of 127.1.0.1)
    [[ $got == 2 ]] || fail "with near down, near's client went to 127.$got/16, not mid (40 ms)"
done
echo "selftest: near down: its clients go to mid, the nearest by measurement"

echo ok >"$work/near1.health"
echo ok >"$work/near2.health"
until_ok 10 served_in 127.1.0.1 1
echo "selftest: near back: its clients return"
echo "selftest: ok"
