#!/usr/bin/env bash
# The public API of the library crates against its checked-in snapshot
# (crates/proto/public-api.txt, crates/switchyard/public-api.txt), so that an
# accidental change of the public API fails CI. An intended change: run
# `scripts/public-api.sh --bless` and commit the new snapshot with it, where
# the diff shows the reviewer what changed.
#
# The API is read from rustdoc's JSON output (unstable on a stable toolchain,
# hence RUSTC_BOOTSTRAP=1 for that one rustdoc call, as cargo-semver-checks
# does) by scripts/public_api.py. No crate is published yet, so there is no
# baseline for cargo-semver-checks to compare with.
set -euo pipefail
cd "$(dirname "$0")/.."
bless=0
[ "${1:-}" = --bless ] && bless=1

status=0
for spec in "switchyard-proto:switchyard_proto:crates/proto" "switchyard-ws:switchyard:crates/switchyard"; do
  IFS=: read -r package lib dir <<<"$spec"
  RUSTC_BOOTSTRAP=1 cargo rustdoc --profile ci --locked -q -p "$package" --all-features --lib \
    -- -Z unstable-options --output-format json
  current=$(mktemp)
  python3 scripts/public_api.py "target/doc/$lib.json" >"$current"
  if [ "$bless" = 1 ]; then
    mv "$current" "$dir/public-api.txt"
    echo "public-api: wrote $dir/public-api.txt ($(wc -l <"$dir/public-api.txt") lines)"
  elif diff -u "$dir/public-api.txt" "$current"; then
    echo "public-api: $package unchanged"
    rm -f "$current"
  else
    echo "public-api: the public API of $package changed (diff above: - snapshot, + now)." >&2
    echo "  If that is intended, run scripts/public-api.sh --bless and commit $dir/public-api.txt." >&2
    rm -f "$current"
    status=1
  fi
done
exit $status
