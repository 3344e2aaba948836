#!/usr/bin/env bash
# Is `switchyard bench` cheaper than the server it measures? (issue 5, point 4)
#
# For each case, ROUNDS times: starts a fresh `switchyard --threads 1 serve` pinned to
# SERVER_CPU, runs `switchyard --threads 1 bench` pinned to LOAD_CPU, and samples utime+stime
# of BOTH processes from /proc/PID/stat at two instants of the measured window (after the
# warm-up, away from the handshakes and the close), so both CPU times cover the same interval.
# Prints, per case, the medians over the rounds of: echoed messages/s, latency p99 and p99.9,
# the server's use of its core, the load generator's use of its core, and the bench/server CPU
# ratio (< 1: the load generator spends less CPU per message than the server, so the server is
# the bottleneck). With --io "epoll io_uring" every round runs the server on each I/O path in
# turn (interleaved), and the verdict compares them: a rate gained with a worse tail (p99 or
# p99.9 above the other path's) does not count.
#
# A measurement, not a test: it never fails on a number, and CI does not run it.
#
# Usage: bench/bench-cpu.sh [--rounds N] [--duration S] [--warmup S] [--cases "a b c"]
#                           [--server-cpu N] [--load-cpu N] [--io "epoll io_uring"] [--no-build]
#   cases: a = 100 connections x 16 B, 1 in flight; b = 100 x 16 B, 16 in flight;
#          c = 10 connections x 64 KiB binary, 1 in flight; s = 100 x 16 B, 64 in flight
#          (enough work queued that the server's core is saturated: the case that shows
#          whether the load generator can drive the server to its limit); o = 1 connection
#          x 16 B, 1 in flight (every wake-up is the server's own); m = 1,000 x 16 B, 1 in
#          flight; n = 1,000 x 16 B, 16 in flight
#   SWITCHYARD=path/to/switchyard overrides the binary (default: target/release/switchyard).
set -euo pipefail

ROUNDS=3
DURATION=4
WARMUP=1
CASES="a b c s"
IO_PATHS="epoll"
SERVER_CPU=1
LOAD_CPU=0
BUILD=1
PORT_BASE=${PORT_BASE:-19900}

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --server-cpu) SERVER_CPU=$2; shift 2 ;;
        --load-cpu) LOAD_CPU=$2; shift 2 ;;
        --io) IO_PATHS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench-cpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
if [ "$BUILD" = 1 ] && [ -z "${SWITCHYARD:-}" ]; then
    echo "== building (release)"
    (cd "$ROOT" && cargo build --release -q -p switchyard-cli)
fi
SWITCHYARD=${SWITCHYARD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard}
[ -x "$SWITCHYARD" ] || { echo "bench-cpu.sh: $SWITCHYARD missing" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench-cpu.sh: needs taskset (util-linux)" >&2; exit 1; }
awk -v d="$DURATION" 'BEGIN { exit !(d >= 2) }' || { echo "bench-cpu.sh: --duration must be at least 2" >&2; exit 2; }

TMP=$(mktemp -d)
SERVER_PID=""
LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

case_args() {
    case "$1" in
        a) echo "--connections 100 --in-flight 1 --size 16" ;;
        b) echo "--connections 100 --in-flight 16 --size 16" ;;
        c) echo "--connections 10 --in-flight 1 --size 65536 --binary" ;;
        s) echo "--connections 100 --in-flight 64 --size 16" ;;
        o) echo "--connections 1 --in-flight 1 --size 16" ;;
        m) echo "--connections 1000 --in-flight 1 --size 16" ;;
        n) echo "--connections 1000 --in-flight 16 --size 16" ;;
        *) echo "bench-cpu.sh: unknown case $1" >&2; return 1 ;;
    esac
}
ticks() { # PID -> utime+stime (clock ticks) of the whole process, all threads
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
now() { date +%s.%N; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

PORT_SEQ=0
start_server() { # IO_PATH
    local io_flag=""
    case "$1" in
        epoll) ;;
        io_uring) io_flag="--io-uring" ;;
        *) echo "bench-cpu.sh: unknown I/O path $1 (epoll or io_uring)" >&2; exit 2 ;;
    esac
    PORT_SEQ=$((PORT_SEQ + 1))
    PORT=$((PORT_BASE + PORT_SEQ % 90))
    # shellcheck disable=SC2086 # io_flag: empty or one flag
    RUST_LOG=warn taskset -c "$SERVER_CPU" "$SWITCHYARD" --threads 1 serve --listen "127.0.0.1:$PORT" $io_flag \
        > "$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    if wait_port "$PORT" "$SERVER_PID"; then sleep 0.2; return 0; fi
    echo "bench-cpu.sh: the server did not start on port $PORT: $(tail -n 1 "$TMP/server.log")" >&2
    exit 1
}
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

HZ=$(getconf CLK_TCK)
# Sample from 0.5 s into the measured window to 0.5 s before its end.
SPAN=$(awk -v d="$DURATION" 'BEGIN { print d - 1 }')
echo "== $SWITCHYARD; server on CPU $SERVER_CPU, bench on CPU $LOAD_CPU, both --threads 1; I/O: $IO_PATHS"
echo "== $ROUNDS rounds per case, ${WARMUP} s warm-up, CPU sampled over ${SPAN} s of each ${DURATION} s window; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for case in $CASES; do
    args=$(case_args "$case")
    for round in $(seq 1 "$ROUNDS"); do
        for io in $IO_PATHS; do
            start_server "$io"
            # shellcheck disable=SC2086
            taskset -c "$LOAD_CPU" "$SWITCHYARD" --threads 1 bench "ws://127.0.0.1:$PORT/echo" $args \
                --warmup "$WARMUP" --duration "$DURATION" --json > "$TMP/bench.json" 2> "$TMP/bench.err" &
            LOAD_PID=$!
            sleep "$(awk -v w="$WARMUP" 'BEGIN { print w + 0.5 }')"
            s0=$(ticks "$SERVER_PID"); l0=$(ticks "$LOAD_PID"); w0=$(now)
            sleep "$SPAN"
            s1=$(ticks "$SERVER_PID"); l1=$(ticks "$LOAD_PID"); w1=$(now)
            wait "$LOAD_PID" || { echo "bench-cpu.sh: bench failed: $(tail -n 1 "$TMP/bench.err")" >&2; exit 1; }
            LOAD_PID=""
            stop_server
            # rate errors p99 p99.9, from the bench's one-line JSON
            read -r rate errors p99 p999 < <(tr ',' '\n' < "$TMP/bench.json" | awk -F: '
                /"msgs_per_s"/ { r = $2 } /"errors"/ && !e { e = $2 } /"p99_us"/ { p = $2 } /"p999_us"/ { q = $2 }
                END { print r + 0, e + 0, p + 0, q + 0 }')
            awk -v s=$((s1 - s0)) -v l=$((l1 - l0)) -v w="$(awk -v a="$w0" -v b="$w1" 'BEGIN { print b - a }')" \
                -v hz="$HZ" -v rate="$rate" -v err="$errors" -v p99="$p99" -v p999="$p999" -v c="$case" -v r="$round" -v io="$io" 'BEGIN {
                    su = s / hz / w; lu = l / hz / w; ratio = (s > 0) ? l / s : 0
                    printf "   case %s round %s %-8s: %9.0f msgs/s  p99 %8.0f us  p99.9 %8.0f us  server %5.1f%%  bench %5.1f%%  bench/server %.2f  errors %d\n", c, r, io, rate, p99, p999, 100 * su, 100 * lu, ratio, err }'
            echo "$(( s1 - s0 )) $(( l1 - l0 )) $w0 $w1 $errors $rate $p99 $p999" >> "$TMP/$case.$io.raw"
        done
    done
done

echo
verdicts=""
echo "case  setup                                I/O        msgs/s   p99 us  p99.9 us  server core  bench core  bench/server  errors"
for case in $CASES; do
    case $case in
        a) setup="100 conns x 16 B, 1 in flight" ;;
        b) setup="100 conns x 16 B, 16 in flight" ;;
        c) setup="10 conns x 64 KiB binary, 1 in flight" ;;
        s) setup="100 conns x 16 B, 64 in flight" ;;
        o) setup="1 conn x 16 B, 1 in flight" ;;
        m) setup="1000 conns x 16 B, 1 in flight" ;;
        n) setup="1000 conns x 16 B, 16 in flight" ;;
    esac
    for io in $IO_PATHS; do
        raw="$TMP/$case.$io.raw"
        rate=$(awk '{ print $6 }' "$raw" | median)
        p99=$(awk '{ print $7 }' "$raw" | median)
        p999=$(awk '{ print $8 }' "$raw" | median)
        su=$(awk -v hz="$HZ" '{ print 100 * $1 / hz / ($4 - $3) }' "$raw" | median)
        lu=$(awk -v hz="$HZ" '{ print 100 * $2 / hz / ($4 - $3) }' "$raw" | median)
        ratio=$(awk '{ print ($1 > 0) ? $2 / $1 : 0 }' "$raw" | median)
        errs=$(awk '{ e += $5 } END { print e + 0 }' "$raw")
        echo "$rate $p99 $p999" > "$TMP/$case.$io.med"
        printf "(%s)   %-36s %-8s %9.0f %8.0f %9.0f  %10.1f%%  %9.1f%%  %12.2f  %6d\n" "$case" "$setup" "$io" "$rate" "$p99" "$p999" "$su" "$lu" "$ratio" "$errs"
        verdicts="$verdicts$(awk -v c="$case" -v io="$io" -v su="$su" -v r="$ratio" 'BEGIN {
            if (su >= 95 && r < 1) printf "(%s %s) the server is saturated (%.1f%% of its core) and the load generator spends %.2f of its CPU: not the bottleneck\n", c, io, su, r
            else if (su >= 95) printf "(%s %s) the server is saturated, but the load generator spends more CPU than it (%.2f)\n", c, io, r
            else printf "(%s %s) the server is not saturated (%.1f%% of its core): the pair is bound by latency or by the load generator\n", c, io, su }')
"
    done
    # Two paths: the second against the first, rate and tail together.
    read -r first second _ <<< "$IO_PATHS"
    if [ -n "${second:-}" ]; then
        read -r r1 p1 q1 < "$TMP/$case.$first.med"
        read -r r2 p2 q2 < "$TMP/$case.$second.med"
        verdicts="$verdicts$(awk -v c="$case" -v a="$second" -v b="$first" -v r1="$r1" -v r2="$r2" -v p1="$p1" -v p2="$p2" -v q1="$q1" -v q2="$q2" 'BEGIN {
            rr = (r1 > 0) ? r2 / r1 : 0; pr = (p1 > 0) ? p2 / p1 : 0; qr = (q1 > 0) ? q2 / q1 : 0
            v = (p2 <= p1 && q2 <= q1) ? "its tail is no worse" : "its tail is WORSE: a rate gain does not count"
            printf "(%s) %s / %s: msgs/s %.2fx, p99 %.2fx, p99.9 %.2fx: %s\n", c, a, b, rr, pr, qr, v }')
"
    fi
done
printf "%s" "$verdicts"
echo "(medians of $ROUNDS rounds; load after the run: $(cut -d' ' -f1-3 /proc/loadavg))"
