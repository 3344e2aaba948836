#!/usr/bin/env bash
# Fallback sessions benchmark: the same echo through switchyard's WebSocket path, its fallback
# sessions (SSE + POST, long polls + POST) and Socket.IO's engine.io server (long polling).
#
# A benchmark, not a test: it measures and prints, it never fails on a number, and CI never
# runs it. See bench/README.md ("Fallback sessions") for the table and what it means.
#
# - ws, sse, poll: `switchyard serve --threads 1` (its built-in /echo) driven by
#   `switchyard bench --transport ws|sse|poll` (sessions through the library's client);
# - engine.io: bench/engineio/server.mjs (npm `engine.io`, polling only) driven by
#   bench/engineio/load.mjs (npm `engine.io-client`, polling only, no upgrade, its Node
#   transport with a keep-alive http.Agent), same closed loop, same message size.
# Every server is pinned to --server-cpu and the load generator to --load-cpu (taskset); each
# measurement starts a fresh server; rounds interleave the transports (the order rotates every
# round); the report gives medians over rounds. Server CPU per message is the server
# process's utime+stime over the whole load run divided by the messages echoed in it.
#
# Usage: bench/fallback.sh [--rounds N] [--duration S] [--warmup S] [--connections N]
#                          [--in-flight N] [--size N] [--server-cpu N] [--load-cpu LIST]
#                          [--switchyard PATH] [--no-build] [--out DIR]
#        (default: 3 rounds of 3 s after 1 s warm-up, 10 connections, 1 in flight, 16 B,
#        server on CPU 0, load generator on CPU 1, target/release/switchyard built first)
# The npm packages (tests/interop's devDependencies) are installed on demand.
set -euo pipefail

ROUNDS=3
DURATION=3
WARMUP=1
CONNS=10
IN_FLIGHT=1
SIZE=16
SERVER_CPU=0
LOAD_CPU=1
SWITCHYARD=""
BUILD=1
OUT=""
PORT_BASE=${PORT_BASE:-19500}
TRANSPORTS="ws sse poll engine.io"

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --in-flight) IN_FLIGHT=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --server-cpu) SERVER_CPU=$2; shift 2 ;;
        --load-cpu) LOAD_CPU=$2; shift 2 ;;
        --switchyard) SWITCHYARD=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fallback.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
OUT=${OUT:-$ROOT/target/bench-results/fallback-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

for tool in taskset python3 node npm; do
    command -v "$tool" >/dev/null || { echo "fallback.sh: $tool is required" >&2; exit 1; }
done
if [ -z "$SWITCHYARD" ]; then
    SWITCHYARD=$ROOT/target/release/switchyard
    if [ "$BUILD" = 1 ]; then
        (cd "$ROOT" && cargo build --release -p switchyard-cli)
    fi
fi
[ -x "$SWITCHYARD" ] || { echo "fallback.sh: $SWITCHYARD missing" >&2; exit 1; }
need_npm_dev_peers "$ROOT" engine.io engine.io-client

SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

PORT_SEQ=0
start_server() { # TRANSPORT -> sets SERVER_PID, PORT
    PORT_SEQ=$((PORT_SEQ + 1))
    PORT=$((PORT_BASE + PORT_SEQ % 400))
    if [ "$1" = engine.io ]; then
        taskset -c "$SERVER_CPU" node "$ROOT/bench/engineio/server.mjs" "$PORT" > "$OUT/server-$1.log" 2>&1 &
    else
        # RUST_LOG=warn: the gateway logs every session open and end at info level.
        taskset -c "$SERVER_CPU" env RUST_LOG=warn "$SWITCHYARD" serve --listen "127.0.0.1:$PORT" \
            --threads 1 > "$OUT/server-$1.log" 2>&1 &
    fi
    SERVER_PID=$!
    if wait_port "$PORT" "$SERVER_PID"; then
        sleep 0.2
        return 0
    fi
    echo "fallback.sh: $1 did not start listening on 127.0.0.1:$PORT (log: $OUT/server-$1.log)" >&2
    kill "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    return 1
}
stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

measure() { # ROUND TRANSPORT
    local round=$1 t=$2 json t0 t1
    start_server "$t" || return 0
    t0=$(cpu_ticks "$SERVER_PID")
    if [ "$t" = engine.io ]; then
        json=$(taskset -c "$LOAD_CPU" node "$ROOT/bench/engineio/load.mjs" \
            "http://127.0.0.1:$PORT/engine.io/" "$CONNS" "$IN_FLIGHT" "$SIZE" "$WARMUP" "$DURATION" \
            2>"$OUT/load.err" || true)
    else
        json=$(taskset -c "$LOAD_CPU" "$SWITCHYARD" --threads 1 bench "ws://127.0.0.1:$PORT/echo" \
            --transport "$t" --connections "$CONNS" --in-flight "$IN_FLIGHT" --size "$SIZE" \
            --warmup "$WARMUP" --duration "$DURATION" --json 2>"$OUT/load.err" || true)
    fi
    t1=$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo "$t0")
    stop_server
    if [ -z "$json" ]; then
        echo "   $t: load generator failed: $(tail -n 1 "$OUT/load.err")"
        return 0
    fi
    python3 - "$round" "$t" "$json" "$((t1 - t0))" "$(getconf CLK_TCK)" >> "$RESULTS" <<'PY'
import json, sys
round_, t, j, ticks, hz = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
j.update(round=int(round_), transport=t, server_cpu_s=ticks / hz,
         server_us_per_msg=ticks / hz * 1e6 / max(j["messages_total"], 1))
print(json.dumps(j))
PY
    tail -n 1 "$RESULTS" | python3 -c '
import json, sys
j = json.load(sys.stdin)
print(f"   {j['"'"'transport'"'"']:10} {j['"'"'msgs_per_s'"'"']:9.0f} msgs/s  p50 {j['"'"'p50_us'"'"']:8.0f} us  "
      f"p99 {j['"'"'p99_us'"'"']:8.0f} us  p99.9 {j['"'"'p999_us'"'"']:8.0f} us  "
      f"server {j['"'"'server_us_per_msg'"'"']:6.1f} us/msg  errors {j['"'"'errors'"'"']}")'
}

echo "fallback sessions benchmark: $ROUNDS rounds, ${DURATION}s (+${WARMUP}s warm-up), $CONNS connections, $IN_FLIGHT in flight, $SIZE B; server CPU $SERVER_CPU, load CPU $LOAD_CPU"
set -- $TRANSPORTS
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round"
    for t in "$@"; do measure "$round" "$t"; done
    # Rotate the order so that a drift of the machine hits every transport alike.
    first=$1; shift; set -- "$@" "$first"
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
order = ["ws", "sse", "poll", "engine.io"]
med = {}
for t in order:
    rs = [r for r in rows if r["transport"] == t]
    if rs:
        med[t] = {k: statistics.median(r[k] for r in rs)
                  for k in ("msgs_per_s", "p50_us", "p99_us", "p999_us", "server_us_per_msg", "errors")}
        med[t]["n"] = len(rs)
print()
print("| transport | msgs/s | p50 | p99 | p99.9 | server CPU/msg | errors | rounds |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for t, m in med.items():
    print(f"| {t} | {m['msgs_per_s']:.0f} | {m['p50_us']:.0f} us | {m['p99_us']:.0f} us | "
          f"{m['p999_us']:.0f} us | {m['server_us_per_msg']:.1f} us | {m['errors']:.0f} | {m['n']} |")
print()
if "sse" in med and "engine.io" in med:
    s, e = med["sse"], med["engine.io"]
    ratio = s["msgs_per_s"] / max(e["msgs_per_s"], 1e-9)
    print(f"SSE+POST / engine.io polling, msgs/s: {ratio:.2f}x (target >= 3x); "
          f"p99 {s['p99_us']:.0f} us vs {e['p99_us']:.0f} us (target: lower)")
if "ws" in med:
    for t in ("sse", "poll"):
        if t in med:
            r = med[t]["server_us_per_msg"] / max(med["ws"]["server_us_per_msg"], 1e-9)
            print(f"server CPU per message, {t} / ws: {r:.2f}x (target <= 5x)")
PY
echo "results: $RESULTS"
