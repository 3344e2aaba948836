#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh machine (idempotent):
# a Python virtualenv (.venv) with the Autobahn TestSuite runner kosoku.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/kosoku ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r conformance/requirements.txt
fi
.venv/bin/kosoku --help >/dev/null
