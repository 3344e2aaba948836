#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then
# format, lint, unit + integration tests (doc-tests and the examples' own tests
# included), the library crates' docs, public API snapshot, minimum Rust version
# and packaging, Autobahn conformance in both roles, a one-minute soak of the
# gateway, and a short fuzz run of every target. `.ci/run` runs exactly this.
# `--all-features` everywhere: the feature `axum` of switchyard-ws is built,
# linted and tested too.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n==== %s (%ss)\n' "$*" "$SECONDS"; }

step "test dependencies"
scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "build (profile ci: release speed, debug assertions)"
cargo build --profile ci --locked --workspace --all-features --bins --examples

step "cargo test"
cargo test --profile ci --locked --workspace --all-features

if [ "$(uname -s)" = Linux ]; then
  step "proxy tests again with the client side on io_uring"
  SWITCHYARD_TEST_IO=io_uring cargo test --profile ci --locked --all-features \
    -p switchyard-gateway --test proxy
fi

step "library crates: docs (-D warnings, the gateway's too), public API snapshot, rust-version, packaging"
RUSTDOCFLAGS="-D warnings" cargo doc --profile ci --no-deps --locked --all-features \
  -p switchyard-proto -p switchyard-ws -p switchyard-gateway
scripts/public-api.sh
scripts/msrv.sh
# Every crate packages with its metadata and versioned dependencies (the build
# of the packaged sources is what `cargo test` above already did).
cargo publish --workspace --dry-run --locked --no-verify

# The fuzz targets (and cargo-fuzz itself on a fresh machine) build while the
# conformance and interop runs, which mostly wait on the network, take their time.
step "fuzz build (in the background)"
fuzz_log=target/fuzz-build.log
scripts/fuzz.sh --build-only >"$fuzz_log" 2>&1 &
fuzz_build=$!
kill_tree() { # kill_tree PID: the process and everything it started
    local child
    for child in $(pgrep -P "$1" || true); do kill_tree "$child"; done
    kill "$1" 2>/dev/null || true
}
trap 'kill_tree "$fuzz_build"' EXIT

step "autobahn (kosoku) both roles"
.venv/bin/python conformance/test_check.py
SWITCHYARD=target/ci/switchyard CLIENT=target/ci/examples/autobahn_client scripts/autobahn.sh all

step "interop with third-party peers (Python websockets, Node ws and http2, Chromium, aioquic)"
SWITCHYARD=target/ci/switchyard scripts/interop.sh

step "soak (1 minute, 1000 connections through the gateway, hostile peers)"
SWITCHYARD=target/ci/switchyard HOSTILE=target/ci/examples/hostile \
  bench/soak.sh --ci --out target/soak-ci

step "fuzz (30 s per target)"
if ! wait "$fuzz_build"; then
    cat "$fuzz_log"
    echo "fuzz: the build failed" >&2
    exit 1
fi
cat "$fuzz_log"
scripts/fuzz.sh "${FUZZ_SECONDS:-30}"

step "all tests passed"
