#!/usr/bin/env bash
# Run every cargo-fuzz target in fuzz/ for SECONDS each (default 30).
#
#   scripts/fuzz.sh [SECONDS]
#   scripts/fuzz.sh --build-only   # install cargo-fuzz if needed and build the targets
#
# Installs cargo-fuzz if missing, builds all targets, then runs each one on a
# temporary copy of its seed corpus plus fuzz/regressions/<target>/ (the
# committed directories are never modified),
# FUZZ_JOBS (default 2) at a time. Fails on any crash, leak, timeout or
# out-of-memory and prints the saved input (fuzz/artifacts/<target>/...).
# Reproduce with: cd fuzz && cargo fuzz run <target> <path-to-input>
#
# Toolchain: `cargo +nightly fuzz` when a nightly toolchain is installed,
# otherwise `cargo fuzz` on the default (stable) toolchain with
# RUSTC_BOOTSTRAP=1 so the -Z flags cargo-fuzz passes are accepted. Force one
# with FUZZ_TOOLCHAIN=nightly|stable. The sanitizer is AddressSanitizer in both
# modes (the stable x86_64 Linux toolchain ships its runtime); override with
# FUZZ_SANITIZER=none|address|... if a toolchain lacks it.
set -euo pipefail

build_only=false
if [ "${1:-}" = "--build-only" ]; then
    build_only=true
    shift
fi
secs="${1:-30}"
case "$secs" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac
jobs="${FUZZ_JOBS:-2}"
sanitizer="${FUZZ_SANITIZER:-address}"

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

mode="${FUZZ_TOOLCHAIN:-}"
if [ -z "$mode" ]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        mode=nightly
    else
        mode=stable
    fi
fi
case "$mode" in
nightly) fuzz=(cargo +nightly fuzz) ;;
stable)
    # cargo-fuzz needs -Zsanitizer and friends; RUSTC_BOOTSTRAP lets the
    # stable compiler accept them.
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    ;;
*)
    echo "fuzz: FUZZ_TOOLCHAIN must be nightly or stable, not '$mode'" >&2
    exit 2
    ;;
esac
echo "fuzz: toolchain mode: $mode, sanitizer: $sanitizer, ${secs}s per target, $jobs at a time"

start=$(date +%s)
"${fuzz[@]}" build --sanitizer "$sanitizer"
echo "fuzz: built in $(($(date +%s) - start))s"
if $build_only; then
    exit 0
fi

mapfile -t targets < <("${fuzz[@]}" list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz: no targets found" >&2
    exit 1
fi

rustc_cmd=(rustc)
[ "$mode" = nightly ] && rustc_cmd=(rustc +nightly)
host="$("${rustc_cmd[@]}" -vV | sed -n 's/^host: //p')"
bindir="$root/fuzz/target/$host/release"

work="$(mktemp -d)"
# On exit (or Ctrl-C) stop the runs this script started, then clean up.
cleanup() {
    local pids
    pids="$(jobs -p)"
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086 # one pid per word
        kill $pids 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run one target on a temp copy of its seeds; its exit status goes to a file.
run_one() {
    local t="$1"
    mkdir -p "$work/$t/corpus" "$root/fuzz/artifacts/$t"
    # Seeds plus the saved reproducers of past crashes (run first thing).
    for d in "corpus/$t" "regressions/$t"; do
        if [ -d "$d" ]; then
            cp -r "$d/." "$work/$t/corpus/"
        fi
    done
    local rc=0
    "$bindir/$t" \
        -artifact_prefix="$root/fuzz/artifacts/$t/" \
        -max_total_time="$secs" \
        -rss_limit_mb=2048 \
        -timeout=10 \
        -print_final_stats=1 \
        "$work/$t/corpus" >"$work/$t/log" 2>&1 || rc=$?
    echo "$rc" >"$work/$t/rc"
}

running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    echo "fuzz: running $t for ${secs}s"
    run_one "$t" &
    running=$((running + 1))
done
wait || true

passed=0
failed=0
for t in "${targets[@]}"; do
    rc="$(cat "$work/$t/rc" 2>/dev/null || echo missing)"
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t/log" | tail -n1)"
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1))
        echo "fuzz: $t ok (${runs:-?} runs)"
    else
        failed=$((failed + 1))
        echo "fuzz: $t FAILED (exit $rc); last lines of its log:"
        grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)' -A3 "$work/$t/log" | head -n 20 || true
        tail -n 5 "$work/$t/log"
        input="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$work/$t/log" | tail -n1)"
        if [ -n "$input" ]; then
            echo "fuzz: $t crashing input: $input"
            echo "fuzz: reproduce: (cd fuzz && ${RUSTC_BOOTSTRAP:+RUSTC_BOOTSTRAP=1 }${fuzz[*]} run $t $input)"
        fi
    fi
done
echo "fuzz: total $(($(date +%s) - start))s"
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
