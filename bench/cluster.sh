#!/usr/bin/env bash
# Cluster benchmark: fallback sessions echoed through HAProxy (HTTP mode, round robin per
# request, no stickiness, the Upgrade header removed, as in the end-to-end test) across three
# gateway instances sharing their sessions in Redis, against one instance behind the same
# HAProxy (alone: sessions in memory; and with [cluster]: sessions in Redis).
#
# A benchmark, not a test: it measures and prints, it never fails on a number, and CI never
# runs it. See bench/README.md ("Several instances through Redis") for the table.
#
# Each instance is `switchyard serve --threads 1` with the built-in /echo as the backend;
# the load is `switchyard bench --transport sse|poll`, closed loop (--connections sessions,
# 1 message in flight each: the most it serves) and open loop at --rate messages per second
# (latency from each message's scheduled send time, so a stall is not hidden). The servers
# (every gateway, redis-server, haproxy) are pinned to --server-cpu, the load generator to
# --load-cpu: on a 2-core machine the three instances share one core with Redis and HAProxy.
# Every measurement starts fresh servers; rounds interleave the setups (the order rotates
# every round); the report gives medians over rounds. Server CPU per message (closed loop):
# the utime+stime of all gateway processes, and of redis-server, over the load run (warm-up
# included) divided by the messages echoed in it: less dependent on the machine's load than
# the rates.
#
# Usage: bench/cluster.sh [--rounds N] [--duration S] [--warmup S] [--connections N]
#                         [--rate N] [--size N] [--server-cpu LIST] [--load-cpu LIST]
#                         [--switchyard PATH] [--out DIR]
#        (default: 3 rounds of 3 s after 1 s warm-up, 10 sessions, 1000 msgs/s, 16 B,
#        servers on CPU 0, load generator on CPU 1, target/ci/switchyard)
set -euo pipefail

ROUNDS=3
DURATION=3
WARMUP=1
CONNS=10
RATE=1000
SIZE=16
SERVER_CPU=0
LOAD_CPU=1
SWITCHYARD=""
OUT=""
SETUPS="one one-redis three"

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --server-cpu) SERVER_CPU=$2; shift 2 ;;
        --load-cpu) LOAD_CPU=$2; shift 2 ;;
        --switchyard) SWITCHYARD=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
SWITCHYARD=${SWITCHYARD:-$ROOT/target/ci/switchyard}
OUT=${OUT:-$ROOT/target/bench-results/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
for tool in taskset python3 redis-server haproxy; do
    command -v "$tool" >/dev/null || {
        echo "cluster.sh: $tool is required (scripts/install-test-deps.sh installs it)" >&2
        exit 1
    }
done
[ -x "$SWITCHYARD" ] || { echo "cluster.sh: $SWITCHYARD missing (cargo build --profile ci)" >&2; exit 1; }

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_listening() { # PORT WHAT
    wait_port "$1" && return 0
    echo "cluster.sh: $2 did not start listening on 127.0.0.1:$1 (logs in $OUT)" >&2
    return 1
}

ADMINS=()
GW_PIDS=()
REDIS_PID=""
start_setup() { # SETUP -> sets FRONT (HAProxy's port), ADMINS, GW_PIDS, REDIS_PID; servers in PIDS
    local setup=$1 n=1 cluster="" rport i port admin conf
    ADMINS=()
    GW_PIDS=()
    REDIS_PID=
    if [ "$setup" != one ]; then
        rport=$(free_port)
        taskset -c "$SERVER_CPU" redis-server --port "$rport" --bind 127.0.0.1 --save "" \
            --appendonly no > "$OUT/redis.log" 2>&1 &
        PIDS+=($!)
        REDIS_PID=$!
        wait_listening "$rport" redis-server || return 1
        cluster="[cluster]
redis = \"redis://127.0.0.1:$rport/0\""
    fi
    [ "$setup" = three ] && n=3
    FRONT=$(free_port)
    conf="$OUT/haproxy.cfg"
    cat > "$conf" <<EOF
defaults
  mode http
  # Without it HAProxy sends with MSG_MORE and an event stream's small events wait up to
  # 200 ms in the kernel: every deployment that streams events through HAProxy needs it.
  option http-no-delay
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend front
  bind 127.0.0.1:$FRONT
  http-request del-header Upgrade
  default_backend gateways
backend gateways
  balance roundrobin
EOF
    for i in $(seq 1 "$n"); do
        port=$(free_port)
        admin=$(free_port)
        cat > "$OUT/g$i.toml" <<EOF
[[listener]]
address = "127.0.0.1:$port"
[admin]
address = "127.0.0.1:$admin"
[[route]]
path = "/echo"
app = "echo"
$cluster
EOF
        [ -n "$cluster" ] && echo "node_id = \"g$i\"" >> "$OUT/g$i.toml"
        # RUST_LOG=warn: the gateway logs every session open and end at info level.
        taskset -c "$SERVER_CPU" env RUST_LOG=warn "$SWITCHYARD" serve --config "$OUT/g$i.toml" \
            --threads 1 > "$OUT/g$i.log" 2>&1 &
        PIDS+=($!)
        GW_PIDS+=($!)
        wait_listening "$port" "gateway g$i" || return 1
        echo "  server g$i 127.0.0.1:$port" >> "$conf"
        ADMINS+=("$admin")
    done
    taskset -c "$SERVER_CPU" haproxy -db -q -f "$conf" > "$OUT/haproxy.log" 2>&1 &
    PIDS+=($!)
    wait_listening "$FRONT" haproxy
}

# The session requests each instance served (its /metrics), space-separated.
served() {
    local a
    for a in "${ADMINS[@]}"; do
        python3 - "$a" <<'PY'
import sys, urllib.request
m = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
print(sum(int(float(l.rsplit(" ", 1)[1])) for l in m.splitlines()
          if l.startswith("switchyard_fallback_requests_total{")), end=" ")
PY
    done 2>/dev/null || true
}

measure() { # ROUND SETUP TRANSPORT MODE
    local round=$1 setup=$2 t=$3 mode=$4 json load spread g0 g1 r0=0 r1=0
    if ! start_setup "$setup"; then cleanup; return 0; fi
    g0=$(cpu_ticks "${GW_PIDS[@]}")
    [ -n "$REDIS_PID" ] && r0=$(cpu_ticks "$REDIS_PID")
    load=(--connections "$CONNS" --in-flight 1)
    [ "$mode" = rate ] && load+=(--rate "$RATE")
    json=$(taskset -c "$LOAD_CPU" "$SWITCHYARD" --threads 1 bench "ws://127.0.0.1:$FRONT/echo" \
        --transport "$t" "${load[@]}" --size "$SIZE" --warmup "$WARMUP" \
        --duration "$DURATION" --json 2>"$OUT/load.err" || true)
    g1=$(cpu_ticks "${GW_PIDS[@]}")
    [ -n "$REDIS_PID" ] && r1=$(cpu_ticks "$REDIS_PID")
    spread=$(served)
    cleanup
    if [ -z "$json" ]; then
        echo "   $setup $t $mode: load generator failed: $(tail -n 1 "$OUT/load.err")"
        return 0
    fi
    python3 - "$round" "$setup" "$t" "$mode" "$spread" "$json" "$((g1 - g0))" "$((r1 - r0))" \
        "$(getconf CLK_TCK)" >> "$RESULTS" <<'PY'
import json, sys
round_, setup, t, mode, spread = sys.argv[1:6]
j = json.loads(sys.argv[6])
gw, rd, hz = (int(x) for x in sys.argv[7:10])
per_msg = lambda ticks: ticks / hz * 1e6 / max(j["messages_total"], 1)
j.update(round=int(round_), setup=setup, transport=t, mode=mode,
         served=[int(x) for x in spread.split()],
         gateway_us_per_msg=per_msg(gw), redis_us_per_msg=per_msg(rd))
print(json.dumps(j))
# The line to read as it runs, on stderr (stdout is the results file).
print(f"   {setup:10} {t:5} {mode:5} {j['msgs_per_s']:8.0f} msgs/s  p50 {j['p50_us']:8.0f} us  "
      f"p99 {j['p99_us']:8.0f} us  p99.9 {j['p999_us']:8.0f} us  errors {j['errors']}  "
      f"CPU/msg gateways {j['gateway_us_per_msg']:.0f} us redis {j['redis_us_per_msg']:.0f} us  "
      f"session requests per instance {j['served']}", file=sys.stderr)
PY
}

echo "cluster benchmark: $ROUNDS rounds, ${DURATION}s (+${WARMUP}s warm-up), $CONNS sessions, $SIZE B, open loop at $RATE msgs/s; servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU ($(nproc) CPUs, shared)"
set -- $SETUPS
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round"
    for setup in "$@"; do
        for t in sse poll; do
            for mode in max rate; do measure "$round" "$setup" "$t" "$mode"; done
        done
    done
    # Rotate the order so that a drift of the machine hits every setup alike.
    first=$1; shift; set -- "$@" "$first"
done

python3 - "$RESULTS" "$RATE" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rate = sys.argv[2]
keys = ("msgs_per_s", "p50_us", "p99_us", "p999_us", "errors", "gateway_us_per_msg",
        "redis_us_per_msg")
med = {}
for r in rows:
    med.setdefault((r["setup"], r["transport"], r["mode"]), []).append(r)
med = {k: dict({x: statistics.median(r[x] for r in rs) for x in keys}, n=len(rs))
       for k, rs in med.items()}
print()
print(f"| setup | transport | max msgs/s | p50 | p99 | p99.9 | at {rate} msgs/s: p50 | p99 | p99.9 "
      "| CPU/msg: gateways | redis | errors | rounds |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for setup in ("one", "one-redis", "three"):
    for t in ("sse", "poll"):
        m, r = med.get((setup, t, "max")), med.get((setup, t, "rate"))
        if not m or not r:
            continue
        print(f"| {setup} | {t} | {m['msgs_per_s']:.0f} | {m['p50_us']:.0f} us | {m['p99_us']:.0f} us | "
              f"{m['p999_us']:.0f} us | {r['p50_us']:.0f} us | {r['p99_us']:.0f} us | "
              f"{r['p999_us']:.0f} us | {m['gateway_us_per_msg']:.0f} us | {m['redis_us_per_msg']:.0f} us | "
              f"{m['errors'] + r['errors']:.0f} | {min(m['n'], r['n'])} |")
print()
for t in ("sse", "poll"):
    three, one = med.get(("three", t, "max")), med.get(("one", t, "max"))
    at = med.get(("three", t, "rate"))
    if three and one and at:
        print(f"{t}: three instances / one, max msgs/s: {three['msgs_per_s'] / max(one['msgs_per_s'], 1e-9):.2f}x "
              f"(target >= 0.5x); p99 at {rate} msgs/s across three: {at['p99_us'] / 1000:.1f} ms (target < 10 ms)")
PY
echo "results: $RESULTS"
