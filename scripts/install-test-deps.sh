#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine (idempotent):
# a Python virtualenv (.venv) with the Autobahn TestSuite runner kosoku
# (re-installed whenever the requirements change), nginx and openssl for the doctor
# tests, and the interop peers of scripts/interop.sh and of the aioquic cargo tests
# (Python websockets and aioquic, Chromium, npm packages). The gateway peer tests
# (crates/cli/tests/gateway_peers.rs) need nginx and Python websockets from here too.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cmp -s conformance/requirements.txt .venv/.installed-requirements 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r conformance/requirements.txt
  cp conformance/requirements.txt .venv/.installed-requirements
fi
.venv/bin/kosoku --help >/dev/null

# --- doctor tests (crates/cli/tests/doctor.rs): nginx as a misconfigured
# reverse proxy in front of our echo server, openssl for certificate checks.
# crates/cli/tests/gateway_peers.rs runs nginx in front of and behind the gateway.
if ! { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx openssl >/dev/null
  # The package may start a system nginx on port 80; the tests run their own.
  $SUDO service nginx stop >/dev/null 2>&1 || true
fi
{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null 2>&1 \
  || echo "warning: nginx is not installed; the doctor and gateway_peers nginx tests will fail" >&2
# --- end doctor tests

# Interop peers (scripts/interop.sh): Python websockets and aioquic into the same .venv,
# Chromium from Debian, and the npm packages of tests/interop (ws, playwright-core,
# which drives the system Chromium: no browser download).
# (re)installed when tests/interop/requirements.txt differs from the copy kept in .venv
if ! cmp -s tests/interop/requirements.txt .venv/.interop-requirements.txt; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
  cp tests/interop/requirements.txt .venv/.interop-requirements.txt
fi
apt_install() { # apt_install PACKAGE...: one retry of the index update for a flaky mirror
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || { sleep 5; apt-get update -qq >/dev/null; }
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
apt_wanted=()
command -v chromium >/dev/null 2>&1 || apt_wanted+=(chromium)
command -v openssl >/dev/null 2>&1 || apt_wanted+=(openssl)
command -v node >/dev/null 2>&1 || apt_wanted+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_wanted+=(npm)
# redis-server for the cluster tests (crates/gateway/tests/redis_store.rs), which start
# and stop their own on a loopback port; the package's system service is not used.
{ command -v redis-server || test -x /usr/bin/redis-server; } >/dev/null 2>&1 || apt_wanted+=(redis-server)
# HAProxy for the cluster's end-to-end test (crates/gateway/tests/session/haproxy.rs):
# a load balancer in HTTP mode in front of three gateways; the test runs its own.
{ command -v haproxy || test -x /usr/sbin/haproxy; } >/dev/null 2>&1 || apt_wanted+=(haproxy)
if [ ${#apt_wanted[@]} -gt 0 ]; then
  apt_install "${apt_wanted[@]}"
  service redis-server stop >/dev/null 2>&1 || true
  service haproxy stop >/dev/null 2>&1 || true
fi
# npm ci reinstalls from the lock file; skipped when node_modules was installed
# from this very lock file (a copy of it is kept there as a stamp). The
# devDependencies are the benchmarks' Node peers, which they install on demand.
if ! cmp -s tests/interop/package-lock.json tests/interop/node_modules/.interop-lock.json; then
  (cd tests/interop && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null &&
    cp package-lock.json node_modules/.interop-lock.json)
fi

# The toolchain of the library crates' declared rust-version, for scripts/msrv.sh
# (rustup skips it when it is there).
msrv=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
  rustup toolchain install "$msrv" --profile minimal >/dev/null
fi
