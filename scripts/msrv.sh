#!/usr/bin/env bash
# The declared minimum Rust version, checked: the library crates (all
# features) are type-checked by the toolchain named by `rust-version` in the
# workspace's Cargo.toml, which scripts/install-test-deps.sh installs with
# rustup. Its own target directory, so the main build is not invalidated.
set -euo pipefail
cd "$(dirname "$0")/.."
msrv=$(sed -n 's/^rust-version = "\([0-9.]*\)"$/\1/p' Cargo.toml)
[ -n "$msrv" ] || { echo "msrv: no rust-version in Cargo.toml's [workspace.package]" >&2; exit 1; }
if ! rustup run "$msrv" rustc --version >/dev/null 2>&1; then
  echo "msrv: the toolchain $msrv is not installed; run scripts/install-test-deps.sh (rustup toolchain install $msrv --profile minimal)" >&2
  exit 1
fi
echo "msrv: $(rustup run "$msrv" rustc --version)"
rustup run "$msrv" cargo check --locked --target-dir target/msrv \
  -p switchyard-proto -p switchyard-ws --all-features --lib
