#!/usr/bin/env bash
# switchyard echo benchmark against tokio-tungstenite, fastwebsockets, tokio-websockets and
# uWebSockets.js (Node, on uWebSockets' C++ core; bench/uws/echo.mjs).
#
# A benchmark, not a test: it measures and prints, it never fails on a number, and CI never
# runs it. See bench/README.md for the cases and the table.
#
# Fairness rules applied here:
# - every server runs on ONE core: `taskset -c $SERVER_CPU`; the peers use a current-thread
#   tokio runtime, and switchyard is given `--threads 1` when `switchyard serve` has that option
#   (one core either way, since taskset pins the whole process);
# - the load generator (`switchyard bench`) runs on another core: `taskset -c $LOAD_CPU`;
# - each measurement starts a fresh server process; rounds interleave the servers (the order
#   rotates every round) so that slow drifts of the machine hit every server alike;
# - uWebSockets.js runs its event loop on Node's main thread; taskset pins the whole process;
# - the reported number is the median over the rounds; ratios are ours / peer.
#
# Transports (switchyard only; the peers speak neither TLS nor HTTP/2): cases (f) wss over
# HTTP/1.1, (g) HTTP/2 with 100 WebSockets as streams of ONE connection, (h) HTTP/2 with 100
# connections of one stream each; the server runs `serve --tls` (self-signed) for them.
#
# Usage: bench/run.sh [--rounds N] [--duration S] [--warmup S] [--idle N] [--cases "a b c d e f g h"]
#                     [--servers "switchyard fastwebsockets tokio-tungstenite tokio-websockets
#                                 uwebsockets-js"]
#                     [--server-cpu N] [--load-cpu LIST] [--no-build] [--out DIR] [--ours NAME]
#        (default: server on CPU 0, load generator on all other CPUs, one thread per CPU)
#        --ours: the server the ratios are computed for (default switchyard). The axum
#        comparison: --ours axum-switchyard --servers "axum-switchyard axum-tungstenite
#        axum-fastwebsockets" --cases "a c d".
set -euo pipefail

ROUNDS=5
DURATION=3
WARMUP=1
IDLE_CONNS=10000
CASES="a b c d e f g h"
SERVERS="switchyard fastwebsockets tokio-tungstenite tokio-websockets uwebsockets-js"
SERVER_CPU=0
LOAD_CPU="" # default: every CPU but the server's
BUILD=1
OUT=""
PORT_BASE=${PORT_BASE:-19100}

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --idle) IDLE_CONNS=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --servers) SERVERS=$2; shift 2 ;;
        --server-cpu) SERVER_CPU=$2; shift 2 ;;
        --load-cpu) LOAD_CPU=$2; shift 2 ;; # a taskset list, e.g. 1 or 1-3
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        --ours) export BENCH_OURS=$2; shift 2 ;;
        -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
BENCH_DIR=$ROOT/bench
OUT=${OUT:-$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

for tool in taskset python3; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool is required (apt-get install util-linux python3)" >&2; exit 1; }
done
NCPU=$(nproc --all)
if [ "$NCPU" -lt 2 ] || [ "$SERVER_CPU" -ge "$NCPU" ]; then
    echo "run.sh: need at least two CPUs and --server-cpu below $NCPU (got $SERVER_CPU)" >&2
    exit 1
fi
if [ -z "$LOAD_CPU" ]; then
    LOAD_CPU=$(seq 0 $((NCPU - 1)) | grep -vx "$SERVER_CPU" | paste -sd, -)
fi
# taskset list -> number of CPUs (the load generator starts one thread per CPU it may use).
LOAD_SET=$(taskset -c "$LOAD_CPU" python3 -c 'import os; print(" ".join(map(str, sorted(os.sched_getaffinity(0)))))')
LOAD_CORES=$(echo "$LOAD_SET" | wc -w)
if echo "$LOAD_SET" | tr ' ' '\n' | grep -qx "$SERVER_CPU"; then
    echo "run.sh: --load-cpu $LOAD_CPU includes the server's CPU $SERVER_CPU" >&2
    exit 1
fi

# Case (e) holds IDLE_CONNS sockets in the server and as many in the load generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CONNS + 200)) ]; then
    echo "run.sh: open-file limit $(ulimit -n) is below $((IDLE_CONNS + 200)); case (e) will use $(( $(ulimit -n) - 200 )) connections" >&2
    IDLE_CONNS=$(( $(ulimit -n) - 200 ))
fi

if [ "$BUILD" = 1 ]; then
    echo "== building (release)"
    (cd "$ROOT" && cargo build --release -q -p switchyard-cli)
    (cd "$BENCH_DIR" && cargo build --release -q)
fi
# Binaries: $SWITCHYARD and $PEER_BIN override (e.g. to compare two builds of ours
# with --no-build); otherwise cargo's output dirs (honouring CARGO_TARGET_DIR).
SWITCHYARD=${SWITCHYARD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard}
PEER_BIN=${PEER_BIN:-${CARGO_TARGET_DIR:-$BENCH_DIR/target}/release}
[ -x "$SWITCHYARD" ] || { echo "run.sh: $SWITCHYARD missing (build with cargo build --release -p switchyard-cli)" >&2; exit 1; }

# uWebSockets.js comes from tests/interop's npm devDependencies, installed here on demand.
if echo "$SERVERS" | tr ' ' '\n' | grep -qx uwebsockets-js; then
    if ! command -v node >/dev/null || ! need_npm_dev_peers "$ROOT" uws-pack; then
        echo "run.sh: node or the npm package uws-pack is unavailable; skipping uwebsockets-js" >&2
        SERVERS=$(echo "$SERVERS" | tr ' ' '\n' | grep -vx uwebsockets-js | tr '\n' ' ')
    fi
fi

# Does our binary have an echo server yet, and does it take --threads?
OURS_ARGS=""
if ! "$SWITCHYARD" serve --help >/dev/null 2>&1; then
    echo "run.sh: '$SWITCHYARD serve' does not exist yet; skipping switchyard" >&2
    SERVERS=$(echo "$SERVERS" | tr ' ' '\n' | grep -vx switchyard | tr '\n' ' ')
elif "$SWITCHYARD" serve --help 2>&1 | grep -q -- '--threads'; then
    OURS_ARGS="--threads 1"
fi
# Cleartext cases run our server on io_uring when it has the option (and the kernel allows it:
# otherwise the server says so and uses epoll); `switchyard-epoll` is the same binary without it.
URING_ARG=""
if "$SWITCHYARD" serve --help 2>&1 | grep -q -- '--io-uring'; then
    URING_ARG=" --io-uring"
fi

# server_cmd NAME PORT -> the command line (path of the echo endpoint is printed by server_path)
server_cmd() {
    case "$1" in
        # RUST_LOG=warn: switchyard logs every connection at info level; the peers log nothing.
        switchyard) echo "env RUST_LOG=warn $SWITCHYARD serve --listen 127.0.0.1:$2 $OURS_ARGS$([ "$CASE_TLS" = 1 ] && echo " --tls" || echo "$URING_ARG")" ;;
        # Not a peer: our server on epoll, to show what io_uring changes; only by name.
        switchyard-epoll) echo "env RUST_LOG=warn $SWITCHYARD serve --listen 127.0.0.1:$2 $OURS_ARGS$([ "$CASE_TLS" = 1 ] && echo " --tls")" ;;
        fastwebsockets) echo "$PEER_BIN/echo-fastwebsockets --listen 127.0.0.1:$2" ;;
        tokio-tungstenite) echo "$PEER_BIN/echo-tungstenite --listen 127.0.0.1:$2" ;;
        tokio-websockets) echo "$PEER_BIN/echo-tokio-websockets --listen 127.0.0.1:$2" ;;
        uwebsockets-js) echo "node $BENCH_DIR/uws/echo.mjs --listen 127.0.0.1:$2" ;;
        # The axum comparison (--ours axum-switchyard): the same handler shape on axum::serve.
        axum-switchyard) echo "$PEER_BIN/echo-axum-switchyard --listen 127.0.0.1:$2" ;;
        axum-tungstenite) echo "$PEER_BIN/echo-axum-tungstenite --listen 127.0.0.1:$2" ;;
        axum-fastwebsockets) echo "$PEER_BIN/echo-axum-fastwebsockets --listen 127.0.0.1:$2" ;;
        # Not a peer: a measurement of the io_uring I/O path (see the binary's doc); only by name.
        io-uring-sketch) echo "$PEER_BIN/io-uring-sketch --listen 127.0.0.1:$2" ;;
        *) echo "run.sh: unknown server $1" >&2; return 1 ;;
    esac
}
server_path() {
    case "$1" in
        switchyard) echo /echo ;;
        *) echo /echo ;; # the peers echo on any path
    esac
}

SERVER_PID=""
LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

CASE_TLS=0 # 1 while measuring a TLS case (f, g, h)
tls_case() { case "$1" in f|g|h) return 0 ;; *) return 1 ;; esac; }
PORT_SEQ=0
start_server() { # NAME -> sets SERVER_PID, PORT
    PORT_SEQ=$((PORT_SEQ + 1))
    PORT=$((PORT_BASE + PORT_SEQ % 800))
    local cmd
    cmd=$(server_cmd "$1" "$PORT")
    # shellcheck disable=SC2086
    taskset -c "$SERVER_CPU" $cmd > "$OUT/server-$1.log" 2>&1 &
    SERVER_PID=$!
    if wait_port "$PORT" "$SERVER_PID"; then
        sleep 0.2
        return 0
    fi
    echo "run.sh: $1 did not start listening on 127.0.0.1:$PORT (log: $OUT/server-$1.log)" >&2
    kill "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    return 1
}
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
cpu_ticks() { # PID -> utime+stime in clock ticks
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
rss_kib() { # PID -> VmRSS in KiB
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# case_args CASE -> load generator arguments
case_args() {
    case "$1" in
        a) echo "--connections 100 --in-flight 1 --size 16" ;;
        b) echo "--connections 100 --in-flight 16 --size 16" ;;
        c) echo "--connections 10 --in-flight 1 --size 65536 --binary" ;;
        d) echo "--connections 32 --handshakes" ;;
        f) echo "--connections 100 --in-flight 1 --size 16 --insecure" ;;
        g) echo "--connections 100 --in-flight 1 --size 16 --insecure --http2 --streams 100" ;;
        h) echo "--connections 100 --in-flight 1 --size 16 --insecure --http2 --streams 1" ;;
    esac
}

record() { # JSON fields appended to results.jsonl via python (keeps quoting right)
    python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@" >> "$RESULTS"
}

measure_load() { # ROUND CASE SERVER
    local round=$1 case=$2 name=$3 url json t0 t1 w0 w1 scheme=ws
    CASE_TLS=0
    if tls_case "$case"; then CASE_TLS=1; scheme=wss; fi
    start_server "$name" || { record round "$round" case "$case" server "$name" error "server did not start"; return; }
    url="$scheme://127.0.0.1:$PORT$(server_path "$name")"
    t0=$(cpu_ticks "$SERVER_PID"); w0=$(date +%s.%N)
    # shellcheck disable=SC2046
    json=$(taskset -c "$LOAD_CPU" "$SWITCHYARD" bench "$url" $(case_args "$case") \
        --duration "$DURATION" --warmup "$WARMUP" --json 2>"$OUT/load.err" || true)
    t1=$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo "$t0"); w1=$(date +%s.%N)
    stop_server
    if [ -z "$json" ]; then
        record round "$round" case "$case" server "$name" error "$(tail -n 1 "$OUT/load.err")"
        echo "   $name: load generator failed: $(tail -n 1 "$OUT/load.err")"
        return
    fi
    record round "$round" case "$case" server "$name" load "$json" \
        server_ticks "$((t1 - t0))" wall0 "$w0" wall1 "$w1" \
        server_cpu "$SERVER_CPU" load_cpu "$LOAD_CPU"
    python3 - "$name" "$json" "$SERVER_CPU" "$LOAD_CPU" "$BENCH_DIR" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[5])
from report import cores_busy
name, j = sys.argv[1], json.loads(sys.argv[2])
rate = j.get("msgs_per_s", j.get("handshakes_per_s", 0))
line = (f"   {name:18} {rate:12.0f}/s  p50 {j['p50_us']:8.1f} us  p99 {j['p99_us']:9.1f} us  "
        f"errors {j['errors']}  load-gen CPU {100 * (j.get('client_cpu') or 0):.0f}%")
srv, lg = (cores_busy(j.get("cpu_busy"), spec) for spec in sys.argv[3:5])
if srv is not None and lg is not None:
    line += f"  cores busy: server {100 * srv:.0f}%, load {100 * lg:.0f}%"
print(line)
PY
}

measure_idle() { # ROUND SERVER
    local round=$1 name=$2 url rss0 rss1 ready load_alive server_alive
    CASE_TLS=0 # a cleartext case, whatever ran before it
    start_server "$name" || { record round "$round" case e server "$name" error "server did not start"; return; }
    url="ws://127.0.0.1:$PORT$(server_path "$name")"
    sleep 0.3
    # The server may have died right after starting (e.g. the port was taken again):
    # record it instead of letting `set -e` end the whole run.
    if ! rss0=$(rss_kib "$SERVER_PID" 2>/dev/null) || [ -z "$rss0" ]; then
        record round "$round" case e server "$name" error "server exited before the idle connections were opened"
        echo "   $name: server exited before the idle connections were opened"
        stop_server
        return
    fi
    taskset -c "$LOAD_CPU" "$SWITCHYARD" bench "$url" --idle "$IDLE_CONNS" --json \
        > "$OUT/idle.out" 2>"$OUT/idle.err" &
    LOAD_PID=$!
    ready=""
    for _ in $(seq 1 1200); do
        if [ -s "$OUT/idle.out" ]; then ready=$(head -n 1 "$OUT/idle.out"); break; fi
        kill -0 "$LOAD_PID" 2>/dev/null || break
        sleep 0.05
    done
    load_alive=0; kill -0 "$LOAD_PID" 2>/dev/null && load_alive=1
    [ -n "$ready" ] && sleep 1 # let the server settle (buffers of the handshakes freed)
    server_alive=0; kill -0 "$SERVER_PID" 2>/dev/null && server_alive=1
    rss1=$(rss_kib "$SERVER_PID" 2>/dev/null || echo "$rss0")
    kill "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
    LOAD_PID=""
    stop_server
    if [ -z "$ready" ]; then
        local why
        why="load generator $(if [ "$load_alive" = 1 ]; then echo "still opening after 60 s"; else echo "exited"; fi); $(tail -n 1 "$OUT/idle.err"); server $(if [ "$server_alive" = 1 ]; then echo alive; else echo "DEAD ($(tail -n 1 "$OUT/server-$name.log"))"; fi)"
        cp "$OUT/idle.err" "$OUT/idle-$name-round$round.err" 2>/dev/null || true
        record round "$round" case e server "$name" error "idle connections never ready: $why"
        echo "   $name: idle connections never ready: $why"
        return
    fi
    record round "$round" case e server "$name" load "$ready" rss0_kib "$rss0" rss1_kib "$rss1"
    python3 - "$name" "$ready" "$rss0" "$rss1" <<'PY'
import json, sys
name, j, r0, r1 = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
n = max(j["ready"], 1)
print(f"   {name:18} RSS {r0} -> {r1} KiB over {j['ready']} idle connections: "
      f"{(r1 - r0) * 1024 / n:.0f} B/conn  (errors {j['errors']})")
PY
}

echo "== servers: $SERVERS"
echo "== cases: $CASES; rounds $ROUNDS; ${WARMUP}s warm-up + ${DURATION}s per measurement; server on CPU $SERVER_CPU, load generator on CPU(s) $LOAD_CPU ($LOAD_CORES thread(s)); idle connections $IDLE_CONNS"
echo "== raw results: $RESULTS"
read -r -a SERVER_LIST <<< "$SERVERS"
NS=${#SERVER_LIST[@]}
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order every round.
    order=()
    for i in $(seq 0 $((NS - 1))); do order+=("${SERVER_LIST[$(( (i + round - 1) % NS ))]}"); done
    for case in $CASES; do
        echo "-- round $round/$ROUNDS, case ($case)"
        for name in "${order[@]}"; do
            if tls_case "$case" && [ "$name" != switchyard ]; then continue; fi
            # The sketch keeps every connection it ever accepted: echo cases only.
            if [ "$name" = io-uring-sketch ] && [[ "$case" != [abc] ]]; then continue; fi
            if [ "$case" = e ]; then measure_idle "$round" "$name"; else measure_load "$round" "$case" "$name"; fi
        done
    done
done

python3 "$BENCH_DIR/report.py" "$RESULTS" "$LOAD_CORES" | tee "$OUT/table.txt"
