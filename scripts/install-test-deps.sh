#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine (idempotent):
# a Python virtualenv (.venv) with the Autobahn TestSuite runner kosoku, and the
# interop peers of scripts/interop.sh (Python websockets, Chromium, tests/interop npm packages).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/kosoku ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r conformance/requirements.txt
fi
.venv/bin/kosoku --help >/dev/null

# Interop peers (scripts/interop.sh): Python websockets into the same .venv,
# Chromium from Debian, and the npm packages of tests/interop (ws, playwright-core,
# which drives the system Chromium: no browser download).
if ! .venv/bin/python -c 'import websockets' 2>/dev/null; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium openssl >/dev/null
fi
if ! command -v node >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# npm ci reinstalls from the lock file; skipped when node_modules was installed
# from this very lock file (a copy of it is kept there as a stamp).
if ! cmp -s tests/interop/package-lock.json tests/interop/node_modules/.interop-lock.json; then
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error >/dev/null &&
    cp package-lock.json node_modules/.interop-lock.json)
fi
