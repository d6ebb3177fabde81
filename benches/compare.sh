#!/usr/bin/env bash
# Side-by-side load runs: edge against nginx, HAProxy and Caddy (and the origin
# alone, the `direct` ceiling), on this machine, interleaved. See benches/README.md.
#
#   bash benches/compare.sh            # full run (3 repetitions, ~12 minutes)
#   QUICK=1 bash benches/compare.sh    # 1 repetition, short runs, small idle counts
#
# Layout: the proxy under test is pinned to CPU 0 with one worker; the origin (a
# separate nginx) and the load generator are pinned to CPU 1. WORKERS=2 gives
# every proxy two workers (threads) on CPUs 0-1, sharing CPU 1 with the load. Every proxy reaches
# the origin over HTTP/1.1 keep-alive. Everything binds 127.0.0.1 on free ports.
#
# Knobs (environment): QUICK, REPS, DURATION (seconds per load run), CONNS,
# H2_STREAMS, IDLE_N1/IDLE_N2 (idle TCP and TLS connections), QUIC_N1/QUIC_N2,
# IDLE_KINDS (the idle scenario's kinds, default "plain tls h2 quic": HTTP/1.1
# plain and over TLS, HTTP/2 over TLS, HTTP/3), IDLE_HOOK (a command run as
# `$IDLE_HOOK row kind count pid` after each idle RSS reading, while the
# connections are held: e.g. to snapshot allocator statistics),
# SCENARIOS (any of: h1 h2 h3 1m cache idle features, and the churn ones: hs
# hs-rsa resume hs-quic close churn), RESULTS (markdown output file), EDGE_BIN
# (an edge binary to test instead of building the work tree), PROXIES (the peers
# to run, default "nginx haproxy caddy edge"; edge always), CLOSE_RATE and
# CLOSE_CONNS (the `close` scenario's arrival rate and client cap),
# CHURN_DURATION and CHURN_CONNS (the `churn` scenario), WORKERS (workers or
# threads per proxy, default 1; more than 1 pins the proxies to CPUs
# 0..WORKERS-1, which the load generator shares).
#
# Churn scenarios (benches/src/bin/bench-handshake.rs is the client): `hs` a new
# TLS 1.3 connection per request (ECDSA P-256), `hs-rsa` the same with an
# RSA-2048 certificate (every process restarted with it), `resume` TLS 1.3
# resumed from the previous connection's ticket, `hs-quic` a new QUIC
# connection per HTTP/3 request (edge and Caddy), `close` plain HTTP/1.1
# `Connection: close` clients arriving at a fixed rate, and `churn` the origin
# answering `Connection: close` to every proxied request (upstream port churn,
# TIME_WAIT counted).
#
# `features` is edge alone, three ways on the h1 load: as configured in
# conf/edge.toml, with one local rate limit that never refuses, and with sticky
# cookies (every request carrying a valid one), and with the access log on (JSON
# to a file): the cost per request of each.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF=$ROOT/benches/conf
TOOLS=$ROOT/benches/.tools
PY=$ROOT/.venv/bin/python3
OHA=$TOOLS/bin/oha
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    REPS=${REPS:-1}
    DURATION=${DURATION:-2}
    IDLE_N1=${IDLE_N1:-500}
    IDLE_N2=${IDLE_N2:-1500}
    QUIC_N1=${QUIC_N1:-200}
    QUIC_N2=${QUIC_N2:-600}
fi
REPS=${REPS:-3}
DURATION=${DURATION:-6}
CONNS=${CONNS:-50}
H2_STREAMS=${H2_STREAMS:-1}
IDLE_N1=${IDLE_N1:-5000}
# Edge keeps a quarter of its open-file limit for upstream connections, so
# under this machine's 20,000 it holds about 14,980 clients: 14,000 fits all four.
IDLE_N2=${IDLE_N2:-14000}
QUIC_N1=${QUIC_N1:-2000}
QUIC_N2=${QUIC_N2:-6000}
CLOSE_RATE=${CLOSE_RATE:-2000}
CLOSE_CONNS=${CLOSE_CONNS:-500}
CHURN_CONNS=${CHURN_CONNS:-200}
if [[ $QUICK == 1 ]]; then CHURN_DURATION=${CHURN_DURATION:-10}; fi
CHURN_DURATION=${CHURN_DURATION:-60}
WORKERS=${WORKERS:-1}
if ((WORKERS < 1 || WORKERS > $(nproc))); then
    echo "compare.sh: WORKERS=$WORKERS, this machine has $(nproc) CPUs" >&2
    exit 2
fi
# The CPUs the proxy under test runs on (CPU 0 alone with one worker).
PROXY_CPUS=0
((WORKERS > 1)) && PROXY_CPUS=0-$((WORKERS - 1))
SCENARIOS=${SCENARIOS:-h1 h2 h3 1m cache idle}
IDLE_KINDS=${IDLE_KINDS:-plain tls h2 quic}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-$TARGET_DIR/compare/results-$STAMP.md}
# Per-process connection limit given to every proxy (the hard open-file limit
# here is 20,000; the idle test holds up to IDLE_N2 client connections).
MAXCONN=19000
# First guess of HTTP/3 req/s, to size oha's -n for the first repetition; later
# repetitions use the rate that row just measured (oha -z would abort requests
# in flight at the deadline and count them as errors).
H3_GUESS_RPS=10000

read -ra PROXIES <<<"${PROXIES:-nginx haproxy caddy edge}"
[[ " ${PROXIES[*]} " == *" edge "* ]] || PROXIES+=(edge)
# edge with one feature on each, for the `features` scenario.
FEATURE_ROWS=(edge-limit edge-sticky edge-log)
STICKY_COOKIE=
EDGE_WHAT=""
HZ=$(getconf CLK_TCK)

log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------- processes
# Every process this script starts is recorded here (pid -> name) and stopped by
# pid on exit, whatever the exit.
declare -A RUNNING=()
declare -A PID_OF=()
WORK=""

alive() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [[ ${s:0:1} != Z ]]
}

# The pid and all its descendants, one per line.
tree() {
    local c
    echo "$1"
    for c in $(pgrep -P "$1" || true); do
        tree "$c"
    done
}

stop_pid() {
    local pid=$1 procs p i
    procs=$(tree "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    for p in $procs; do
        if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    wait "$pid" 2>/dev/null || true
    unset "RUNNING[$pid]"
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!RUNNING[@]}"; do
        stop_pid "$pid"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $rc != 0 && -n ${KEEP_WORK:-} ]]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# utime + stime (clock ticks) of a process and its descendants.
tree_cpu() {
    local t=0 p s f
    for p in $(tree "$1"); do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) }
        read -ra f <<<"$s"
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}

# Resident set size (bytes) of a process and its descendants.
tree_rss() {
    local t=0 p kb
    for p in $(tree "$1"); do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
        t=$((t + ${kb:-0} * 1024))
    done
    echo "$t"
}

# ---------------------------------------------------------------- install, build

install_deps() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    if [[ " ${PROXIES[*]} " == *" haproxy "* ]]; then command -v haproxy >/dev/null || missing+=(haproxy); fi
    if [[ " ${PROXIES[*]} " == *" caddy "* ]]; then command -v caddy >/dev/null || missing+=(caddy); fi
    command -v curl >/dev/null || missing+=(curl)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v python3 >/dev/null || missing+=(python3)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # aioquic goes into the workspace virtualenv the test command also uses
    # (Debian's system pip refuses installs).
    if [[ ! -x $PY ]]; then
        python3 -c 'import venv, ensurepip' 2>/dev/null || apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$ROOT/.venv"
    fi
    if ! "$PY" -c 'import aioquic' 2>/dev/null; then
        log "installing aioquic"
        "$PY" -m pip install -q aioquic
    fi
    if has h3 && [[ ! -x $OHA ]]; then
        log "building oha (http3) into $TOOLS"
        cargo install --locked --root "$TOOLS" oha --features http3
    fi
}

build_edge() {
    mkdir -p "$WORK/bin"
    if [[ -n ${EDGE_BIN:-} ]]; then
        log "edge under test: $EDGE_BIN (EDGE_BIN, not built)"
        cp "$EDGE_BIN" "$WORK/bin/edge"
        EDGE_WHAT="$EDGE_BIN (given with EDGE_BIN)"
        return
    fi
    log "cargo build --release -p edge"
    EDGE_WHAT="release build of the work tree at $(git -C "$ROOT" rev-parse --short HEAD)"
    if ! git -C "$ROOT" diff --quiet HEAD -- edge upstream Cargo.toml Cargo.lock 2>/dev/null; then
        EDGE_WHAT+=" plus uncommitted changes in edge/, upstream/ or Cargo files"
    fi
    (cd "$ROOT" && cargo build --release -p edge)
    # Run a copy: a rebuild during the run must not change the binary under test.
    cp "$TARGET_DIR/release/edge" "$WORK/bin/edge"
}

# The churn scenarios' load client (benches/src/bin/bench-handshake.rs).
build_client() {
    has hs || has hs-rsa || has resume || has hs-quic || has close || return 0
    log "cargo build --release -p edge-benches --bin bench-handshake"
    (cd "$ROOT" && cargo build --release -p edge-benches --bin bench-handshake)
    cp "$TARGET_DIR/release/bench-handshake" "$WORK/bin/bench-handshake"
}

# ---------------------------------------------------------------- configs, start

declare -A HTTP_PORT=() TLS_PORT=() ADMIN_PORT=()

render() { # template output http_port tls_port
    sed -e "s|@DIR@|$WORK|g" \
        -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" \
        -e "s|@ORIGIN_TLS_PORT@|$ORIGIN_TLS_PORT|g" \
        -e "s|@HTTP_PORT@|$3|g" \
        -e "s|@TLS_PORT@|$4|g" \
        -e "s|@MAXCONN@|$MAXCONN|g" \
        -e "s|@WORKERS@|$WORKERS|g" \
        -e "s|@ACCESS_LOG@|${ACCESS_LOG:-off}|g" \
        -e "s|@ACCESS_FILE@|$(dirname "$2")/access.log|g" \
        -e "s|@ORIGIN_KEEPALIVE@|${ORIGIN_KEEPALIVE:-300s}|g" \
        "$1" >"$2"
    if grep -v '^[[:space:]]*#' "$2" | grep -q '@[A-Z_]*@'; then die "$2: unfilled placeholder"; fi
}

start() { # name
    local name=$1 dir=$WORK/$1 pid
    rm -rf "$dir"
    mkdir -p "$dir"
    case $name in
    origin)
        render "$CONF/origin-nginx.conf" "$dir/nginx.conf" - -
        taskset -c 1 nginx -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
        ;;
    nginx)
        render "$CONF/nginx.conf" "$dir/nginx.conf" "${HTTP_PORT[$name]}" "${TLS_PORT[$name]}"
        taskset -c "$PROXY_CPUS" nginx -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
        ;;
    haproxy)
        render "$CONF/haproxy.cfg" "$dir/haproxy.cfg" "${HTTP_PORT[$name]}" "${TLS_PORT[$name]}"
        taskset -c "$PROXY_CPUS" haproxy -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 &
        ;;
    caddy)
        render "$CONF/Caddyfile" "$dir/Caddyfile" "${HTTP_PORT[$name]}" "${TLS_PORT[$name]}"
        env GOMAXPROCS="$WORKERS" HOME="$dir" XDG_DATA_HOME="$dir/data" XDG_CONFIG_HOME="$dir/config" \
            taskset -c "$PROXY_CPUS" caddy run --config "$dir/Caddyfile" --adapter caddyfile >"$dir/out.log" 2>&1 &
        ;;
    edge | edge-limit | edge-sticky | edge-log)
        local access=off
        [[ $name == edge-log ]] && access=json
        ACCESS_LOG=$access render "$CONF/edge.toml" "$dir/edge.toml" "${HTTP_PORT[$name]}" "${TLS_PORT[$name]}"
        # conf/edge.toml ends inside [pools.default]: a pool key appended lands there.
        case $name in
        edge-limit)
            # Matches every request, never refuses: the cost of the decision alone.
            printf '\n[[rate_limits]]\nname = "bench"\nkey = "client_ip"\nrate = "10000000/s"\nburst = 10000000\n' >>"$dir/edge.toml"
            ;;
        edge-sticky) printf 'sticky = {}\n' >>"$dir/edge.toml" ;;
        esac
        # The pool and routes come from the file: only /cached goes through the
        # cache, so the other scenarios measure the same pass-through as before.
        # STATE_DIRECTORY: the sticky signing key is generated in the work dir.
        STATE_DIRECTORY="$dir/state" taskset -c "$PROXY_CPUS" "$WORK/bin/edge" run -c "$dir/edge.toml" \
            --listen "127.0.0.1:${TLS_PORT[$name]}" --http-listen "127.0.0.1:${HTTP_PORT[$name]}" \
            --admin "127.0.0.1:${ADMIN_PORT[$name]}" --workers "$WORKERS" \
            --cert "$WORK/cert.pem" --key "$WORK/key.pem" >"$dir/out.log" 2>&1 &
        ;;
    *) die "unknown process $name" ;;
    esac
    pid=$!
    RUNNING[$pid]=$name
    PID_OF[$name]=$pid
    local i
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        if "$PY" "$WORK/bench.py" ready "${HTTP_PORT[$name]}" "${TLS_PORT[$name]}" 0 >"$dir/ready.log" 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$dir"/*.log >&2 || true
    die "$name did not come up"
}

stop() { # name
    stop_pid "${PID_OF[$1]}"
    unset "PID_OF[$1]"
}

# ---------------------------------------------------------------- load runs

RUNS=""
declare -A H3_N=()

port_for() { # row tls|http
    if [[ $1 == direct ]]; then
        if [[ $2 == tls ]]; then echo "$ORIGIN_TLS_PORT"; else echo "$ORIGIN_PORT"; fi
    elif [[ $2 == tls ]]; then
        echo "${TLS_PORT[$1]}"
    else
        echo "${HTTP_PORT[$1]}"
    fi
}

run_load() { # scenario row repetition
    local scen=$1 row=$2 rep=$3 pid="" out cpu0="" cpu="-" rss="-" res rc=0
    local ok window p50 p99 errors n
    out=$WORK/runs/$scen-$row-$rep
    if [[ $row != direct ]]; then
        pid=${PID_OF[$row]}
        cpu0=$(tree_cpu "$pid")
    fi
    case $scen in
    h1 | 1m | cache | features)
        local path=/ headers=()
        [[ $scen == 1m ]] && path=/1m
        [[ $scen == cache ]] && path=/cached
        [[ $row == edge-sticky ]] && headers=(-H "Cookie: $STICKY_COOKIE")
        timeout -k 5 $((DURATION + 60)) taskset -c 1 \
            wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${headers[@]}" "http://127.0.0.1:$(port_for "$row" http)$path" \
            >"$out.txt" 2>&1 || rc=$?
        res=$("$PY" "$WORK/bench.py" parse-wrk "$out.txt") || rc=$?
        ;;
    h2)
        timeout -k 5 $((DURATION + 60)) taskset -c 1 \
            h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$DURATION" --log-file="$out.log" \
            "https://127.0.0.1:$(port_for "$row" tls)/" >"$out.txt" 2>&1 || rc=$?
        res=$("$PY" "$WORK/bench.py" parse-h2load "$out.txt" "$out.log") || rc=$?
        rm -f "$out.log"
        ;;
    h3)
        n=${H3_N[$row]:-$((H3_GUESS_RPS * DURATION))}
        # oha waits for the QUIC idle timeout (30 s with Caddy) after the last
        # response; parse-oha ends the window at the last response instead.
        timeout -k 5 $((DURATION * 10 + 90)) taskset -c 1 \
            "$OHA" -n "$n" -c "$CONNS" --http-version 3 --insecure --no-tui --worker-threads 1 \
            --output-format json -o "$out.json" --db-url "$out.db" \
            "https://127.0.0.1:$(port_for "$row" tls)/" >"$out.txt" 2>&1 || rc=$?
        res=$("$PY" "$WORK/bench.py" parse-oha "$out.json" "$out.db") || rc=$?
        rm -f "$out.db"
        ;;
    hs | hs-rsa | resume | hs-quic | close)
        # One request per connection; the latencies printed are the handshake's.
        local mode=tls port conns=$CONNS rate=()
        case $scen in
        resume) mode=resume ;;
        hs-quic) mode=quic ;;
        close) mode=plain conns=$CLOSE_CONNS rate=("$CLOSE_RATE") ;;
        esac
        if [[ $mode == plain ]]; then port=$(port_for "$row" http); else port=$(port_for "$row" tls); fi
        timeout -k 5 $((DURATION + 60)) taskset -c 1 \
            "$WORK/bin/bench-handshake" "$mode" "127.0.0.1:$port" "$WORK/cert.pem" "$conns" "$DURATION" "${rate[@]}" \
            >"$out.txt" 2>"$out.err" || rc=$?
        res=$(sed -n 1p "$out.txt")
        printf '%s\t%s\t%s\t%s\n' "$scen" "$rep" "$row" "$(sed -n 2p "$out.txt")" >>"$WORK/handshakes.tsv"
        ;;
    esac
    if [[ -n $pid ]]; then
        cpu=$(($(tree_cpu "$pid") - cpu0))
        rss=$(tree_rss "$pid")
        alive "$pid" || die "$row died during $scen (see $WORK/$row)"
    fi
    if [[ $rc != 0 || -z ${res:-} ]]; then
        tail -n 20 "$out.txt" >&2 || true
        die "$scen $row: load run failed (exit $rc)"
    fi
    read -r ok window p50 p99 errors <<<"$res"
    if [[ $scen == h3 ]]; then
        H3_N[$row]=$("$PY" -c "print(max(1000, int($ok / max($window, 0.001) * $DURATION)))")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$scen" "$rep" "$row" "$ok" "$window" "$p50" "$p99" "$errors" "$cpu" "$rss" "$HZ" >>"$RUNS"
    log "$(printf '%-3s rep %d %-8s %8s req in %6ss  p50 %6s ms  p99 %7s ms  errors %s' \
        "$scen" "$rep" "$row" "$ok" "$window" "$p50" "$p99" "$errors")"
    sleep 0.5
}

# Rows of a scenario, rotated by the repetition so no row always goes first.
rows_for() { # scenario repetition
    local rows i n
    if [[ $1 == h3 || $1 == hs-quic ]]; then
        rows=(caddy edge)
    elif [[ $1 == cache ]]; then
        # Cache hits: the proxies with a response cache configured.
        rows=(direct edge)
        [[ " ${PROXIES[*]} " == *" nginx "* ]] && rows+=(nginx)
    elif [[ $1 == features ]]; then
        rows=(edge "${FEATURE_ROWS[@]}")
    elif [[ $1 == hs || $1 == hs-rsa || $1 == resume ]]; then
        # No `direct`: the origin's TLS port (nginx 1.22 defaults) has no TLS 1.3.
        rows=("${PROXIES[@]}")
    else
        rows=(direct "${PROXIES[@]}")
    fi
    n=${#rows[@]}
    for ((i = 0; i < n; i++)); do
        echo "${rows[$(((i + $2 - 1) % n))]}"
    done
}

has() { [[ " $SCENARIOS " == *" $1 "* ]]; }
idle_kind() { [[ " $IDLE_KINDS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- idle connections

IDLE=""

wait_held() { # file count pid timeout
    local deadline=$((SECONDS + $4))
    while ((SECONDS < deadline)); do
        if grep -q "^held $2 " "$1"; then return 0; fi
        if grep -q '^error' "$1" || ! alive "$3"; then
            cat "$1" "$1.err" >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
    log "timed out waiting for $2 connections"
    return 1
}

# Kernel memory that grows with held sockets, in bytes: the slab caches a socket
# takes objects from (the socket, its inode, file, dentry, epoll entry) plus
# the pages queued in TCP and UDP socket buffers (/proc/net/sockstat). Over
# loopback both ends are counted (the holder's sockets too); `-` when
# /proc/slabinfo is not readable.
kernel_bytes() {
    [[ -r /proc/slabinfo ]] || {
        echo -
        return
    }
    local slab pages
    slab=$(awk '$1 ~ /^(TCP|TCPv6|UDP|UDPv6|sock_inode_cache|filp|dentry|eventpoll_epi|eventpoll_pwq|request_sock_TCP|tcp_bind_bucket|skbuff_head_cache)$/ { t += $3 * $4 } END { print t + 0 }' /proc/slabinfo)
    pages=$(awk '$1 == "TCP:" || $1 == "UDP:" { for (i = 2; i < NF; i++) if ($i == "mem") t += $(i + 1) } END { print t + 0 }' /proc/net/sockstat)
    echo $((slab + pages * $(getconf PAGESIZE)))
}

idle_measure() { # row kind(plain|tls|h2|quic)
    local row=$1 kind=$2 n1 n2 pid hpid fd ctl out rss1 rss2 port k1 k2
    if [[ $kind == quic ]]; then n1=$QUIC_N1 n2=$QUIC_N2; else n1=$IDLE_N1 n2=$IDLE_N2; fi
    # A fresh proxy: memory freed by earlier runs would otherwise absorb growth.
    stop "$row"
    start "$row"
    pid=${PID_OF[$row]}
    ctl=$WORK/idle-$row-$kind.ctl
    out=$WORK/idle-$row-$kind.out
    mkfifo "$ctl"
    if [[ $kind == quic ]]; then
        port=$(port_for "$row" tls)
        taskset -c 1 "$PY" "$WORK/bench.py" hold-quic "$port" <"$ctl" >"$out" 2>"$out.err" &
    else
        if [[ $kind == plain ]]; then port=$(port_for "$row" http); else port=$(port_for "$row" tls); fi
        taskset -c 1 "$PY" "$WORK/bench.py" hold-tcp "$port" "$kind" <"$ctl" >"$out" 2>"$out.err" &
    fi
    hpid=$!
    RUNNING[$hpid]=holder
    exec {fd}>"$ctl"
    echo "open $n1" >&"$fd"
    wait_held "$out" "$n1" "$hpid" 300 || die "idle $kind $row: holder failed at $n1"
    sleep 2
    rss1=$(tree_rss "$pid")
    k1=$(kernel_bytes)
    if [[ -n ${IDLE_HOOK:-} ]]; then $IDLE_HOOK "$row" "$kind" "$n1" "$pid"; fi
    echo "open $n2" >&"$fd"
    wait_held "$out" "$n2" "$hpid" 600 || die "idle $kind $row: holder failed at $n2"
    sleep 2
    rss2=$(tree_rss "$pid")
    k2=$(kernel_bytes)
    if [[ -n ${IDLE_HOOK:-} ]]; then $IDLE_HOOK "$row" "$kind" "$n2" "$pid"; fi
    alive "$pid" || die "$row died holding idle connections"
    echo quit >&"$fd"
    exec {fd}>&-
    stop_pid "$hpid"
    rm -f "$ctl"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$kind" "$n1" "$rss1" "$n2" "$rss2" "$k1" "$k2" >>"$IDLE"
    log "$(printf 'idle %-5s %-8s %6d conns %6d MiB  %6d conns %6d MiB  -> %s B/conn, kernel %s B/conn (both ends)' \
        "$kind" "$row" "$n1" "$((rss1 >> 20))" "$n2" "$((rss2 >> 20))" "$(((rss2 - rss1) / (n2 - n1)))" \
        "$([[ $k1 == - ]] && echo - || echo $(((k2 - k1) / (n2 - n1))))")"
}

# ---------------------------------------------------------------- churn

use_cert() { # ec|rsa: the certificate every process starts with
    cp "$WORK/$1/cert.pem" "$WORK/cert.pem"
    cp "$WORK/$1/key.pem" "$WORK/key.pem"
    cp "$WORK/$1/combined.pem" "$WORK/combined.pem"
}

restart_origin() {
    stop origin
    start origin
}

restart_all() {
    local p
    restart_origin
    for p in "${!PID_OF[@]}"; do
        [[ $p == origin ]] && continue
        stop "$p"
        start "$p"
    done
}

# TIME_WAIT sockets on the origin's port: (on the origin's side, on the proxy's).
time_wait() {
    local server client
    server=$(ss -Htan state time-wait "( sport = :$ORIGIN_PORT )" | wc -l)
    client=$(ss -Htan state time-wait "( dport = :$ORIGIN_PORT )" | wc -l)
    echo "$server $client"
}

churn_run() { # row
    local row=$1 pid out cpu0 cpu rc=0 res tw0 tw1 peak=0 n
    pid=${PID_OF[$row]}
    out=$WORK/runs/churn-$row
    read -ra tw0 <<<"$(time_wait)"
    cpu0=$(tree_cpu "$pid")
    timeout -k 5 $((CHURN_DURATION + 60)) taskset -c 1 \
        wrk -t1 -c"$CHURN_CONNS" -d"${CHURN_DURATION}s" --latency "http://127.0.0.1:$(port_for "$row" http)/" \
        >"$out.txt" 2>&1 &
    local wpid=$!
    RUNNING[$wpid]=wrk
    # The most TIME_WAIT sockets seen on the proxy's side while the load runs.
    while alive "$wpid"; do
        read -ra tw1 <<<"$(time_wait)"
        n=$((tw1[1]))
        ((n > peak)) && peak=$n
        sleep 1
    done
    wait "$wpid" || rc=$?
    unset "RUNNING[$wpid]"
    cpu=$(($(tree_cpu "$pid") - cpu0))
    read -ra tw1 <<<"$(time_wait)"
    res=$("$PY" "$WORK/bench.py" parse-wrk "$out.txt") || rc=$?
    [[ $rc == 0 && -n $res ]] || die "churn $row: load run failed (exit $rc)"
    alive "$pid" || die "$row died during churn"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$res" "$cpu" "$HZ" \
        "$((tw1[0] - tw0[0]))" "$((tw1[1] - tw0[1]))" "$peak" "$(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' '-')" >>"$WORK/churn.tsv"
    log "churn $row: $res; TIME_WAIT origin side +$((tw1[0] - tw0[0])), proxy side +$((tw1[1] - tw0[1])) (peak $peak)"
}

# ---------------------------------------------------------------- main

main() {
    install_deps
    WORK=$(mktemp -d -t edge-compare.XXXXXX)
    build_edge
    build_client
    write_helper "$WORK/bench.py"
    mkdir -p "$WORK/runs" "$WORK/www" "$(dirname "$RESULTS")"
    RUNS=$WORK/runs.tsv
    IDLE=$WORK/idle.tsv
    : >"$RUNS"

    # Leaf certificates (CA:FALSE: rustls, in bench-handshake, refuses a CA as a
    # server's certificate), ECDSA P-256 for every scenario but hs-rsa.
    local kind
    for kind in ec rsa; do
        mkdir -p "$WORK/$kind"
        local newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
        [[ $kind == rsa ]] && newkey=(-newkey rsa:2048)
        openssl req -x509 "${newkey[@]}" -nodes -days 2 \
            -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -addext "basicConstraints=critical,CA:FALSE" \
            -keyout "$WORK/$kind/key.pem" -out "$WORK/$kind/cert.pem" 2>/dev/null
        cat "$WORK/$kind/cert.pem" "$WORK/$kind/key.pem" >"$WORK/$kind/combined.pem"
    done
    use_cert ec
    head -c 1048576 /dev/urandom >"$WORK/www/1m"

    local ports
    local started=("${PROXIES[@]}")
    has features && started+=("${FEATURE_ROWS[@]}")
    read -ra ports <<<"$("$PY" "$WORK/bench.py" ports $((2 + 3 * ${#started[@]})))"
    ORIGIN_PORT=${ports[0]}
    ORIGIN_TLS_PORT=${ports[1]}
    HTTP_PORT[origin]=$ORIGIN_PORT
    TLS_PORT[origin]=$ORIGIN_TLS_PORT
    local i=2 p
    for p in "${started[@]}"; do
        HTTP_PORT[$p]=${ports[$i]}
        TLS_PORT[$p]=${ports[$((i + 1))]}
        ADMIN_PORT[$p]=${ports[$((i + 2))]}
        i=$((i + 3))
    done

    log "work dir $WORK; origin 127.0.0.1:$ORIGIN_PORT (h1), :$ORIGIN_TLS_PORT (h2/TLS)"
    start origin
    for p in "${started[@]}"; do
        start "$p"
        log "$p up, pid ${PID_OF[$p]}, http :${HTTP_PORT[$p]}, tls :${TLS_PORT[$p]}"
    done
    if has features; then
        # One valid cookie, sent on every request of the edge-sticky row: the
        # steady state (verify and keep), not a first visit's sign-and-set.
        STICKY_COOKIE=$(curl -s -o /dev/null -D - "http://127.0.0.1:${HTTP_PORT[edge-sticky]}/" |
            sed -n 's/^[Ss]et-[Cc]ookie: \(edge_s=[0-9a-f]*\).*/\1/p' | tr -d '\r')
        [[ -n $STICKY_COOKIE ]] || die "edge-sticky set no cookie"
    fi

    # Warm-up, not recorded: pools to the origin, page cache, allocators.
    for p in direct "${started[@]}"; do
        taskset -c 1 wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$(port_for "$p" http)/" >/dev/null 2>&1 || true
    done

    local rep scen row
    for ((rep = 1; rep <= REPS; rep++)); do
        for scen in h1 h2 h3 1m cache features hs resume hs-quic close; do
            has "$scen" || continue
            for row in $(rows_for "$scen" "$rep"); do
                run_load "$scen" "$row" "$rep"
            done
        done
    done

    if has hs-rsa; then
        # Every process (the origin's TLS port too) restarted with the RSA certificate.
        use_cert rsa
        restart_all
        for ((rep = 1; rep <= REPS; rep++)); do
            for row in $(rows_for hs-rsa "$rep"); do
                run_load hs-rsa "$row" "$rep"
            done
        done
        use_cert ec
        restart_all
    fi

    if has churn; then
        # The origin closes every connection after its response: each proxied
        # request needs a new upstream connection (ephemeral ports, TIME_WAIT).
        ORIGIN_KEEPALIVE=0 restart_origin
        : >"$WORK/churn.tsv"
        for row in "${PROXIES[@]}"; do
            churn_run "$row"
        done
        restart_origin
    fi

    if has idle; then
        : >"$IDLE"
        for row in "${PROXIES[@]}"; do
            for kind in plain tls h2; do
                if idle_kind "$kind"; then idle_measure "$row" "$kind"; fi
            done
        done
        for row in caddy edge; do
            if idle_kind quic && [[ " ${PROXIES[*]} " == *" $row "* ]]; then idle_measure "$row" quic; fi
        done
    fi

    {
        echo "## compare.sh run $STAMP"
        echo
        echo "- Edge: $EDGE_WHAT"
        echo "- Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(sed -n 's/^PRETTY_NAME="\(.*\)"$/\1/p' /etc/os-release), kernel $(uname -r)"
        echo "- Peers: ${PROXIES[*]}; nginx $(nginx -v 2>&1 | sed 's|.*/||')$(command -v haproxy >/dev/null && echo ", HAProxy $(haproxy -v | awk 'NR == 1 { print $3 }')")$(command -v caddy >/dev/null && echo ", Caddy $(caddy version | awk '{ print $1 }')")"
        echo "- Load: wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'), h2load $(h2load --version | awk '{ print $2 }')$([[ -x $OHA ]] && echo ", oha $("$OHA" --version | awk '{ print $2 }')")"
        echo "- Settings: REPS=$REPS DURATION=${DURATION}s CONNS=$CONNS H2_STREAMS=$H2_STREAMS IDLE=$IDLE_N1→$IDLE_N2 QUIC=$QUIC_N1→$QUIC_N2 WORKERS=$WORKERS (proxies on CPU $PROXY_CPUS)"
        echo
        "$PY" "$WORK/bench.py" report "$RUNS" "$IDLE" "$WORK/handshakes.tsv" "$WORK/churn.tsv"
    } >"$RESULTS"
    cp "$RUNS" "${RESULTS%.md}.runs.tsv"
    [[ -s $IDLE ]] && cp "$IDLE" "${RESULTS%.md}.idle.tsv"
    cat "$RESULTS"
    log "results in $RESULTS"
}

# ---------------------------------------------------------------- python helper
# Free ports, readiness checks, parsing load generator output, idle-connection
# holders (TCP, TLS and QUIC with aioquic) and the markdown report.
write_helper() {
    cat >"$1" <<'PY'
"""Helpers for benches/compare.sh: free ports, readiness checks, parsing the load
generators' output, idle-connection holders (TCP, TLS, QUIC) and the report."""

import asyncio
import json
import os
import re
import socket
import sqlite3
import ssl
import statistics
import sys
import time

REQUEST = "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: compare-holder\r\n\r\n"


# ---------------------------------------------------------------- ports, ready


def cmd_ports(n):
    """Print N distinct ports free on 127.0.0.1 for both TCP and UDP."""
    held, ports = [], []
    while len(ports) < int(n):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            t.close()
            u.close()
            continue
        held += [t, u]
        ports.append(port)
    for s in held:
        s.close()
    print(" ".join(map(str, ports)))


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def read_response(sock):
    """Read one HTTP/1.1 response with a Content-Length body; return (status, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return status, body


def open_h2(port):
    """A TLS connection with ALPN h2 after one GET / (SETTINGS exchanged both ways),
    as a client that keeps it open for more requests holds it."""
    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = ctx.wrap_socket(sock, server_hostname="localhost")
    if sock.selected_alpn_protocol() != "h2":
        raise RuntimeError(f"port {port}: ALPN {sock.selected_alpn_protocol()!r}, not h2")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                            (":authority", f"127.0.0.1:{port}"), (":path", "/"),
                            ("user-agent", "compare-holder")], end_stream=True)
    sock.sendall(conn.data_to_send())
    status, body, done, acked = None, b"", False, False
    while not (done and acked):
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the response")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                acked = True
        sock.sendall(conn.data_to_send())
    if status != 200 or body != b"ok":
        raise RuntimeError(f"port {port}: status {status}, body {body[:40]!r}")
    return sock


def open_h1(port, ctx):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(REQUEST.format(port=port).encode())
    status, body = read_response(sock)
    if status != 200 or body != b"ok":
        raise RuntimeError(f"port {port}: status {status}, body {body[:40]!r}")
    return sock


def cmd_ready(port, tls_port, timeout="20"):
    """Wait until GET / answers 200 'ok' on the plain port and over TLS."""
    deadline = time.monotonic() + float(timeout)
    last = None
    first = True
    while first or time.monotonic() < deadline:
        first = False
        try:
            open_h1(int(port), None).close()
            if tls_port != "-":
                open_h1(int(tls_port), tls_context()).close()
            return
        except Exception as e:  # noqa: BLE001 - any failure means not ready yet
            last = e
            time.sleep(0.2)
    sys.exit(f"not ready after {timeout}s: {last}")


# ---------------------------------------------------------------- parsers
# Each prints: completed_2xx window_seconds p50_ms p99_ms errors


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}
    return float(m.group(1)) * scale[m.group(2)]


def cmd_parse_wrk(path):
    text = open(path).read()
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if not m:
        sys.exit(f"{path}: no request count in wrk output")
    total = int(m.group(1))
    window = to_ms(m.group(2) + m.group(3)) / 1000.0
    p = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", text, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(non2xx.group(1)) if non2xx else 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    sock = sum(map(int, sock.groups())) if sock else 0
    print(total - non2xx, f"{window:.3f}", f"{to_ms(p['50']):.3f}", f"{to_ms(p['99']):.3f}", non2xx + sock)


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def cmd_parse_h2load(path, log):
    text = open(path).read()
    m = re.search(r"finished in ([\d.]+)(us|ms|s|m),", text)
    if not m:
        sys.exit(f"{path}: no 'finished in' in h2load output")
    window = to_ms(m.group(1) + m.group(2)) / 1000.0
    req = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    done, failed, timeouts = int(req.group(3)), int(req.group(5)), int(req.group(7))
    ok = int(codes.group(1))
    errors = max(failed, done - ok) + timeouts
    lat = []
    with open(log) as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1].startswith("2"):
                lat.append(int(parts[2]) / 1000.0)
    lat.sort()
    print(ok, f"{window:.3f}", f"{percentile(lat, 50):.3f}", f"{percentile(lat, 99):.3f}", errors)


def cmd_parse_oha(path, db):
    """oha's own rate for HTTP/3 includes its wait for the QUIC idle timeout after
    the last response; the window here ends at the last response instead."""
    data = json.load(open(path))
    con = sqlite3.connect(db)
    ok, end = con.execute(
        "SELECT COUNT(*), MAX(end) FROM oha WHERE status >= 200 AND status < 300"
    ).fetchone()
    lat = sorted(r[0] * 1000.0 for r in con.execute(
        "SELECT duration FROM oha WHERE status >= 200 AND status < 300"))
    con.close()
    non2xx = sum(v for k, v in data.get("statusCodeDistribution", {}).items() if not k.startswith("2"))
    errs = sum(data.get("errorDistribution", {}).values())
    print(ok, f"{end or 0:.3f}", f"{percentile(lat, 50):.3f}", f"{percentile(lat, 99):.3f}", non2xx + errs)


# ---------------------------------------------------------------- idle holders


def holder_commands():
    """Yield target counts read from stdin ('open N'); stop at 'quit' or EOF."""
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["open"]:
            yield int(words[1])
        elif words[:1] == ["quit"]:
            return


def say(text):
    print(text, flush=True)


def cmd_hold_tcp(port, tls):
    port = int(port)
    ctx = tls_context() if tls == "tls" else None
    held = []
    for target in holder_commands():
        t0 = time.monotonic()
        while len(held) < target:
            try:
                held.append(open_h2(port) if tls == "h2" else open_h1(port, ctx))
            except Exception as e:  # noqa: BLE001
                say(f"error after {len(held)} connections: {e}")
                sys.exit(1)
        say(f"held {len(held)} in {time.monotonic() - t0:.1f}s")
    for s in held:
        s.close()


def cmd_hold_quic(port):
    from aioquic.asyncio import connect
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.h3.connection import H3_ALPN, H3Connection
    from aioquic.h3.events import DataReceived, HeadersReceived
    from aioquic.quic.configuration import QuicConfiguration

    port = int(port)

    class Client(QuicConnectionProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.h3 = H3Connection(self._quic)
            self.done = None
            self.status = None
            self.body = b""

        def quic_event_received(self, event):
            for ev in self.h3.handle_event(event):
                if isinstance(ev, HeadersReceived):
                    for k, v in ev.headers:
                        if k == b":status":
                            self.status = int(v)
                elif isinstance(ev, DataReceived):
                    self.body += ev.data
                if getattr(ev, "stream_ended", False) and self.done and not self.done.done():
                    self.done.set_result(None)

        async def get(self):
            sid = self._quic.get_next_available_stream_id()
            self.h3.send_headers(sid, [
                (b":method", b"GET"), (b":scheme", b"https"),
                (b":authority", f"127.0.0.1:{port}".encode()), (b":path", b"/"),
                (b"user-agent", b"compare-holder"),
            ], end_stream=True)
            self.done = asyncio.get_running_loop().create_future()
            self.transmit()
            await asyncio.wait_for(self.done, 10)
            if self.status != 200 or self.body != b"ok":
                raise RuntimeError(f"status {self.status}, body {self.body[:40]!r}")

    async def main():
        from contextlib import AsyncExitStack

        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE)
        held = []
        loop = asyncio.get_running_loop()

        async def open_one(stack):
            client = await stack.enter_async_context(
                connect("127.0.0.1", port, configuration=config, create_protocol=Client,
                        wait_connected=True))
            await client.get()
            held.append(client)

        async def keepalive():
            # edge closes an idle QUIC connection after min(idle_timeout, 30s),
            # quic-go (Caddy) after 30s: ping every 5s.
            while True:
                await asyncio.sleep(5)
                for i in range(0, len(held), 500):
                    await asyncio.gather(*(asyncio.wait_for(c.ping(), 10) for c in held[i:i + 500]),
                                         return_exceptions=True)

        async with AsyncExitStack() as stack:
            pinger = asyncio.create_task(keepalive())
            while True:
                line = await loop.run_in_executor(None, sys.stdin.readline)
                words = line.split()
                if not words or words[0] == "quit":
                    break
                target = int(words[1])
                t0 = time.monotonic()
                while len(held) < target:
                    batch = min(50, target - len(held))
                    try:
                        await asyncio.gather(*(open_one(stack) for _ in range(batch)))
                    except Exception as e:  # noqa: BLE001
                        say(f"error after {len(held)} connections: {e!r}")
                        os._exit(1)
                say(f"held {len(held)} in {time.monotonic() - t0:.1f}s")
            pinger.cancel()
            for c in held:
                c.close()
        os._exit(0)

    asyncio.run(main())


# ---------------------------------------------------------------- report


def fmt_int(x):
    return f"{x:,.0f}"


def ratio(x):
    return f"{x:.2f}×"


def load_runs(path):
    runs = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            scen, rep, row, ok, window, p50, p99, errors, cpu_ticks, rss, hz = line.split("\t")
            ok, window = int(ok), float(window)
            cpu_s = float(cpu_ticks) / float(hz) if cpu_ticks != "-" else None
            runs.append(dict(
                scen=scen, rep=int(rep), row=row, ok=ok, window=window,
                rps=ok / window if window > 0 else 0.0, p50=float(p50), p99=float(p99),
                errors=int(errors),
                cpu_us=cpu_s * 1e6 / ok if cpu_s is not None and ok else None,
                busy=cpu_s / window if cpu_s is not None and window > 0 else None,
                rss=int(rss) if rss != "-" else None,
            ))
    return runs


SCENARIOS = [
    ("h1", "HTTP/1.1 keep-alive, 2-byte body (wrk, plain HTTP)", "nginx"),
    ("h2", "HTTP/2 over TLS, 2-byte body (h2load)", "nginx"),
    ("h3", "HTTP/3, 2-byte body (oha --http-version 3)", "caddy"),
    ("1m", "HTTP/1.1 keep-alive, 1 MiB body (wrk, plain HTTP)", "nginx"),
    ("cache", "Cache hits: HTTP/1.1 keep-alive, 2-byte body from the proxy's cache (nginx proxy_cache, edge L1)", "nginx"),
    ("features", "Features on the request path: HTTP/1.1 keep-alive, 2-byte body; edge as configured, with one local rate limit (never refusing), with a sticky cookie on every request, with the access log on (JSON to a file)", "edge"),
    ("hs", "New TLS 1.3 connection per request, ECDSA P-256 (bench-handshake tls; req/s = handshakes/s, CPU per handshake + request, p50/p99 = handshake latency)", "nginx"),
    ("hs-rsa", "New TLS 1.3 connection per request, RSA-2048 (bench-handshake tls; as above)", "nginx"),
    ("resume", "Resumed TLS 1.3 connection per request, tickets (bench-handshake resume; as above)", "haproxy"),
    ("hs-quic", "New QUIC connection per HTTP/3 request (bench-handshake quic; as above)", "caddy"),
    ("close", "HTTP/1.1 `Connection: close` clients arriving at a fixed rate, plain TCP (bench-handshake plain; p50/p99 = TCP connect)", "nginx"),
]
ROW_ORDER = ["direct", "nginx", "haproxy", "caddy", "edge", "edge-limit", "edge-sticky", "edge-log"]


def per_rep_ratio(runs, scen, row, ref):
    """Median over repetitions of (row req/s / ref req/s) within the same repetition."""
    by = {(r["rep"], r["row"]): r["rps"] for r in runs if r["scen"] == scen}
    vals = [by[(rep, row)] / by[(rep, ref)] for (rep, rw) in by
            if rw == row and (rep, ref) in by and by[(rep, ref)] > 0]
    return statistics.median(vals) if vals else None


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def scenario_table(runs, scen, ref):
    lines = [
        f"| row | req/s median [min–max] | × {ref} | p50 ms | p99 ms | proxy CPU µs/req | proxy CPU busy | proxy RSS MiB | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [r for r in ROW_ORDER if any(x["scen"] == scen and x["row"] == r for x in runs)]
    for row in rows:
        rr = [x for x in runs if x["scen"] == scen and x["row"] == row]
        rps = sorted(x["rps"] for x in rr)
        rat = per_rep_ratio(runs, scen, row, ref)
        cpu, busy, rss = med([x["cpu_us"] for x in rr]), med([x["busy"] for x in rr]), med([x["rss"] for x in rr])
        lines.append("| " + " | ".join([
            row,
            f"{fmt_int(statistics.median(rps))} [{fmt_int(rps[0])}–{fmt_int(rps[-1])}]",
            ratio(rat) if rat is not None else "–",
            f"{med([x['p50'] for x in rr]):.2f}",
            f"{med([x['p99'] for x in rr]):.2f}",
            f"{cpu:.1f}" if cpu is not None else "–",
            f"{busy * 100:.0f}%" if busy is not None else "–",
            f"{rss / 1048576:.1f}" if rss is not None else "–",
            str(sum(x["errors"] for x in rr)),
        ]) + " |")
    return "\n".join(lines)


def load_idle(path):
    idle = {}
    if not os.path.exists(path):
        return idle
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            f = line.rstrip("\n").split("\t")
            row, kind, n1, rss1, n2, rss2 = f[:6]
            k = f[6:8] if len(f) >= 8 and "-" not in f[6:8] else None
            kernel = (int(k[1]) - int(k[0])) / (int(n2) - int(n1)) if k else None
            idle[(row, kind)] = (int(n1), int(rss1), int(n2), int(rss2), kernel)
    return idle


def idle_table(idle):
    kinds = [("plain", "HTTP/1.1 plain"), ("tls", "HTTP/1.1 over TLS"), ("h2", "HTTP/2 over TLS"),
             ("quic", "HTTP/3 (QUIC)")]
    kinds = [k for k in kinds if any(key[1] == k[0] for key in idle)]
    head = "| row | " + " | ".join(f"{label} bytes/conn" for _, label in kinds) + " | RSS MiB at N2 (plain) |"
    lines = [head, "|---|" + "---|" * len(kinds) + "---|"]
    for row in ROW_ORDER:
        cells, any_cell = [], False
        for kind, _ in kinds:
            v = idle.get((row, kind))
            if v:
                n1, r1, n2, r2, kernel = v
                k = f"; kernel {kernel:,.0f}" if kernel is not None else ""
                cells.append(f"{(r2 - r1) / (n2 - n1):,.0f} ({n1:,}→{n2:,}{k})")
                any_cell = True
            else:
                cells.append("–")
        if not any_cell:
            continue
        plain = idle.get((row, "plain"))
        cells.append(f"{plain[3] / 1048576:.1f}" if plain else "–")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(runs, idle):
    out = []

    def line(name, value, ok, detail):
        mark = "met" if ok else "NOT met"
        out.append(f"| {name} | {detail} | {value} | {mark} |")

    def cpu(scen, row):
        return med([x["cpu_us"] for x in runs if x["scen"] == scen and x["row"] == row])

    r = per_rep_ratio(runs, "h1", "edge", "nginx")
    if r is not None:
        line("HTTP/1.1 small", ratio(r), r >= 1.0, "edge ≥ 1.0× nginx")
    r = per_rep_ratio(runs, "h2", "edge", "haproxy")
    if r is not None:
        line("HTTP/2 TLS small", ratio(r), r >= 1.0, "edge ≥ 1.0× HAProxy")
    r = per_rep_ratio(runs, "h3", "edge", "caddy")
    if r is not None:
        line("HTTP/3 small", ratio(r), r >= 3.0, "edge ≥ 3× Caddy")
    c3, c2 = cpu("h3", "edge"), cpu("h2", "edge")
    if c3 and c2:
        line("HTTP/3 CPU", f"{c3 / c2:.2f}× ({c3:.1f} / {c2:.1f} µs)", c3 / c2 <= 2.0,
             "edge h3 CPU/req ≤ 2× its h2 CPU/req")
    r = per_rep_ratio(runs, "1m", "edge", "nginx")
    if r is not None:
        line("1 MiB", ratio(r), r >= 1.2, "edge ≥ 1.2× nginx")
    # Handshakes per core: the inverse ratio of CPU per handshake (a proxy that
    # is not busy was held back by the load generator, whose rate then says
    # little); the rate ratio is shown beside it.
    for scen, name, ref, goal in [
        ("hs", "TLS handshakes per core (ECDSA)", "nginx", 1.15),
        ("hs-rsa", "TLS handshakes per core (RSA)", "nginx", 1.15),
        ("resume", "TLS resumed per core", "haproxy", 1.0),
        ("hs-quic", "QUIC handshakes per core", "caddy", 3.0),
    ]:
        mine, theirs = cpu(scen, "edge"), cpu(scen, ref)
        r = per_rep_ratio(runs, scen, "edge", ref)
        if mine and theirs:
            per_core = theirs / mine
            line(name, f"{ratio(per_core)} ({mine:.0f} / {theirs:.0f} µs; rate {ratio(r) if r else '–'})",
                 per_core >= goal, f"edge ≥ {goal:g}× {ref}")
    v = idle.get(("edge", "plain"))
    if v:
        b = (v[3] - v[1]) / (v[2] - v[0])
        line("idle HTTP/1.1 connection", f"{b:,.0f} B", b <= 4096, "edge ≤ 4 KiB per connection")
    for kind, name, goal in [("tls", "idle HTTP/1.1 over TLS connection", 4),
                             ("h2", "idle HTTP/2 connection", 8), ("quic", "idle QUIC connection", 20)]:
        v = idle.get(("edge", kind))
        if v:
            b = (v[3] - v[1]) / (v[2] - v[0])
            line(name, f"{b:,.0f} B", b <= goal * 1024, f"edge ≤ {goal} KiB per connection (user space)")
    errs = {}
    for x in runs:
        errs[(x["scen"], x["row"])] = errs.get((x["scen"], x["row"]), 0) + x["errors"]
    bad = [f"{s}/{r}: {n}" for (s, r), n in errs.items() if n]
    line("errors", "0" if not bad else ", ".join(bad), not bad, "0 errors in every row")
    return "\n".join(["| target | rule | edge | |", "|---|---|---|---|"] + out)


def resumed_table(path):
    """How many handshakes of the `resume` rows rustls reported resumed."""
    if not os.path.exists(path):
        return ""
    tally = {}
    with open(path) as f:
        for line in f:
            scen, _rep, row, extra = line.rstrip("\n").split("\t")
            if scen != "resume":
                continue
            words = extra.split()
            resumed = int(words[words.index("resumed") + 1])
            tally.setdefault(row, []).append(resumed)
    if not tally:
        return ""
    lines = ["| row | handshakes resumed (sum over repetitions) |", "|---|---|"]
    for row in ROW_ORDER:
        if row in tally:
            lines.append(f"| {row} | {sum(tally[row]):,} |")
    return "\n".join(lines)


def churn_table(path):
    if not os.path.exists(path) or not os.path.getsize(path):
        return ""
    lines = [
        "| row | req/s | proxy CPU µs/req | p99 ms | errors | TIME_WAIT origin side (+) | TIME_WAIT proxy side (+) | proxy side peak | ephemeral range |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with open(path) as f:
        for line in f:
            row, res, cpu, hz, tw_server, tw_client, peak, ports = line.rstrip("\n").split("\t")
            ok, window, _p50, p99, errors = res.split()
            ok, window = int(ok), float(window)
            cpu_us = float(cpu) / float(hz) * 1e6 / ok if ok else 0.0
            lines.append(f"| {row} | {fmt_int(ok / window)} | {cpu_us:.1f} | {float(p99):.2f} | {errors} | "
                         f"{int(tw_server):,} | {int(tw_client):,} | {int(peak):,} | {ports} |")
    return "\n".join(lines)


def cmd_report(runs_path, idle_path, handshakes_path="", churn_path=""):
    runs = load_runs(runs_path)
    idle = load_idle(idle_path)
    parts = []
    for scen, title, ref in SCENARIOS:
        if any(x["scen"] == scen for x in runs):
            parts.append(f"### {title}\n\n{scenario_table(runs, scen, ref)}\n")
    resumed = resumed_table(handshakes_path)
    if resumed:
        parts.append("### Resumption (the `resume` rows)\n\n" + resumed + "\n")
    churn = churn_table(churn_path)
    if churn:
        parts.append("### Upstream churn: the origin closes every connection (wrk, plain HTTP)\n\n" + churn + "\n")
    if idle:
        parts.append("### Memory per idle connection (RSS slope between N1 and N2)\n\n"
                     "User space: the proxy's RSS slope. Kernel: the growth of the socket slab caches and of "
                     "the pages queued in socket buffers, both ends of each loopback connection.\n\n"
                     + idle_table(idle) + "\n")
    parts.append("### Targets\n\n" + targets(runs, idle) + "\n")
    print("\n".join(parts))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "ports": cmd_ports, "ready": cmd_ready,
        "parse-wrk": cmd_parse_wrk, "parse-h2load": cmd_parse_h2load, "parse-oha": cmd_parse_oha,
        "hold-tcp": cmd_hold_tcp, "hold-quic": cmd_hold_quic, "report": cmd_report,
    }[cmd](*args)
PY
}

main "$@"
