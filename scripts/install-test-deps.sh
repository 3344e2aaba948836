#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine (idempotent):
# a Python virtualenv (.venv) with the Autobahn TestSuite runner kosoku and
# aioquic (HTTP/3 interop), re-installed whenever the requirements change.
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
if ! { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx openssl >/dev/null
  # The package may start a system nginx on port 80; the tests run their own.
  $SUDO service nginx stop >/dev/null 2>&1 || true
fi
{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null 2>&1 \
  || echo "warning: nginx is not installed; the doctor nginx test will fail" >&2
# --- end doctor tests
