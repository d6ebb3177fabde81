#!/usr/bin/env bash
# The one test command, for developers and CI alike: installs the helper programs
# the integration tests drive (only those missing), then runs format, lint, build
# and every test. Runs non-interactively; installing needs root, as in CI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive
# Tests start daemons (dnsmasq) that Debian installs under sbin.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# make and a C compiler build jemalloc (edge's allocator, tikv-jemalloc-sys).
apt_missing=()
command -v make >/dev/null 2>&1 || apt_missing+=(make)
command -v cc >/dev/null 2>&1 || apt_missing+=(gcc libc6-dev)
# curl drives h1/h2/h2c, gtlsclient (ngtcp2-client) drives h3.
command -v curl >/dev/null 2>&1 || apt_missing+=(curl)
command -v gtlsclient >/dev/null 2>&1 || apt_missing+=(ngtcp2-client)
# openssl s_client sends TLS 1.3 early data in the early_data tests.
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
# dnsmasq (dnsmasq-base) is the real DNS server of the discovery tests.
command -v dnsmasq >/dev/null 2>&1 || apt_missing+=(dnsmasq-base)
# redis-server is the shared L2 of the cache tests (started per test on a free port).
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
# pebble is the real ACME CA of the ACME tests (Debian's 2.4.0, on free loopback ports).
command -v pebble >/dev/null 2>&1 || apt_missing+=(pebble)
# prometheus and promtool check the alert rules and scrape edge in a test.
command -v promtool >/dev/null 2>&1 || apt_missing+=(prometheus)
# chromium (headless) renders the admin status page in a test.
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
# systemd-analyze verifies the shipped unit (a minimal image may lack systemd).
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)
# PowerDNS runs the GeoDNS example of ops/geo/powerdns/ in a test (its own config
# folder on a loopback port; the package's service is held back below). Its zone
# comes from the lua2 backend, a package of its own.
if ! command -v pdns_server >/dev/null 2>&1 ||
  ! compgen -G '/usr/lib/*/pdns/liblua2backend.so' >/dev/null; then
  apt_missing+=(pdns-server pdns-backend-lua2)
fi
if ((${#apt_missing[@]} > 0)); then
  apt-get update </dev/null
  # The tests start their own daemons on loopback ports: keep the packages'
  # services (prometheus listens on *:9090 by default, pdns on *:53) from
  # starting on install.
  hold_services=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    hold_services=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y --no-install-recommends "${apt_missing[@]}" </dev/null
  if [[ -n $hold_services ]]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

# The Python clients of tests/py/ go into a virtualenv in the workspace (Debian's
# system pip refuses installs): aioquic and niquests (HTTP/3), h2 (hostile HTTP/2
# clients), mmdb-writer (the geo tests' MaxMind databases), websockets (the
# WebSocket client and echo server of tests/tests/websocket.rs). The tests find it as
# $EDGE_TEST_PYTHON.
venv=.venv
py_packages=(aioquic niquests mmdb-writer h2 websockets grpcio)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  apt-get update </dev/null
  apt-get install -y python3-venv </dev/null
fi
if [[ ! -x $venv/bin/python3 ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python3" -c 'import aioquic, niquests, mmdb_writer, h2, websockets, grpc' >/dev/null 2>&1; then
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "${py_packages[@]}" </dev/null
fi
export EDGE_TEST_PYTHON="$PWD/$venv/bin/python3"

# The independent HTTP cache conformance suite (npm http-cache-tests, the suite
# behind cache-tests.fyi), run against edge by tests/tests/cache_conformance.rs.
# Node.js runs it; the package goes to target/ (ignored), fetched once.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update </dev/null
  apt-get install -y nodejs npm </dev/null
fi
cache_tests=target/cache-tests
if [[ ! -f $cache_tests/package/node_modules/node-fetch/package.json ]]; then
  rm -rf "$cache_tests" && mkdir -p "$cache_tests"
  (cd "$cache_tests" && npm pack --silent http-cache-tests@0.4.5 >/dev/null \
    && tar xzf http-cache-tests-0.4.5.tgz \
    && cd package && npm install --silent --no-save --no-audit --no-fund node-fetch@2 </dev/null)
fi

# rustfmt and clippy are rustup components a minimal toolchain lacks.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy </dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests run this binary; cargo test does not build it for them.
cargo build -p edge --bin edge
# Both test runs go ahead whatever the first gives, so one CI log shows every
# failure; the script still fails if either did.
failed=0
# Everything but the 1 GiB streaming tests, two at a time.
# (The overload test, which pushes edge's RSS past a mark, runs alone below.)
cargo test --workspace --no-fail-fast -- --test-threads=2 --skip 1gib \
  --skip overload_stops_accepting_and_sheds_idle_connections || failed=1
# These two say --workspace like the run above: with `-p edge-tests` cargo
# unifies features over fewer packages and rebuilds every dependency (4 min).
cargo test --workspace --test slots -- --test-threads=1 overload || failed=1
# The streaming tests one at a time: each already keeps both cores busy.
cargo test --workspace --test streaming -- --test-threads=1 || failed=1
exit "$failed"
