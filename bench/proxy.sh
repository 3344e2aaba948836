#!/usr/bin/env bash
# switchyard as a WebSocket reverse proxy against nginx and HAProxy (issue 4's benchmark).
#
# A benchmark, not a test: it measures and prints, it never fails on a number, and CI never
# runs it. See bench/README.md ("Proxy benchmark") for the cases, targets and the table.
#
# One echo backend (`switchyard serve`, /echo) behind each proxy in turn:
#   switchyard-transparent  `switchyard serve --config` with tunnel = "transparent" (byte copy)
#   switchyard-auto         the same without a `tunnel` key: the default, which on
#                           `serve --config` is frame-aware for WebSocket (messages relayed)
#   nginx                   Debian's nginx, worker_processes 1, nginx.org's WebSocket proxying
#                           settings (map $http_upgrade, proxy_http_version 1.1, Upgrade and
#                           Connection headers, long proxy_read_timeout)
#   haproxy                 Debian's HAProxy, nbthread 1, mode http, timeout tunnel
# Fairness: each proxy process is pinned to one core (`taskset -c $PROXY_CPU`); the load
# generator (`switchyard --threads 1 bench`) and the backend run on the other core(s); every
# measurement starts a fresh proxy; rounds interleave the proxies (the order rotates every
# round); the table gives medians and our ratio to each peer.
#
# Usage: bench/proxy.sh [--rounds N] [--duration S] [--warmup S] [--idle N] [--cases "a c d e"]
#                       [--proxies "switchyard-transparent switchyard-auto nginx haproxy"]
#                       [--proxy-cpu N] [--load-cpu N] [--backend-cpu N] [--no-build] [--out DIR]
#        Needs nginx and haproxy: apt-get install nginx haproxy (this script installs nothing).
set -euo pipefail

ROUNDS=5
DURATION=3
WARMUP=1
IDLE_CONNS=10000
CASES="a c d e"
PROXIES="switchyard-transparent switchyard-auto nginx haproxy"
PROXY_CPU=0
LOAD_CPU=""    # default: the first CPU that is not the proxy's
BACKEND_CPU="" # default: a third CPU when there is one, else the load generator's
BUILD=1
OUT=""
PORT_BASE=${PORT_BASE:-19900}

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --idle) IDLE_CONNS=$2; shift 2 ;;
        --cases) CASES=$2; shift 2 ;;
        --proxies) PROXIES=$2; shift 2 ;;
        --proxy-cpu) PROXY_CPU=$2; shift 2 ;;
        --load-cpu) LOAD_CPU=$2; shift 2 ;;
        --backend-cpu) BACKEND_CPU=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "proxy.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/bench/lib.sh"
BENCH_DIR=$ROOT/bench
OUT=${OUT:-$ROOT/target/bench-results/proxy-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

for tool in taskset python3; do
    command -v "$tool" >/dev/null || { echo "proxy.sh: $tool is required (apt-get install util-linux python3)" >&2; exit 1; }
done
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
HAPROXY=${HAPROXY:-$(command -v haproxy || echo /usr/sbin/haproxy)}
for p in $PROXIES; do
    case "$p" in
        nginx) [ -x "$NGINX" ] || { echo "proxy.sh: nginx is missing: apt-get install nginx (or drop it with --proxies)" >&2; exit 1; } ;;
        haproxy) [ -x "$HAPROXY" ] || { echo "proxy.sh: haproxy is missing: apt-get install haproxy (or drop it with --proxies)" >&2; exit 1; } ;;
        switchyard-transparent|switchyard-auto) ;;
        *) echo "proxy.sh: unknown proxy $p" >&2; exit 2 ;;
    esac
done

NCPU=$(nproc --all)
if [ "$NCPU" -lt 2 ] || [ "$PROXY_CPU" -ge "$NCPU" ]; then
    echo "proxy.sh: need at least two CPUs and --proxy-cpu below $NCPU (got $PROXY_CPU)" >&2
    exit 1
fi
OTHERS=$(seq 0 $((NCPU - 1)) | grep -vx "$PROXY_CPU" || true)
LOAD_CPU=${LOAD_CPU:-$(echo "$OTHERS" | head -n 1)}
if [ -z "$BACKEND_CPU" ]; then
    BACKEND_CPU=$(echo "$OTHERS" | { grep -vx "$LOAD_CPU" || true; } | head -n 1)
    BACKEND_CPU=${BACKEND_CPU:-$LOAD_CPU}
fi
if [ "$LOAD_CPU" = "$PROXY_CPU" ] || [ "$BACKEND_CPU" = "$PROXY_CPU" ]; then
    echo "proxy.sh: the load generator and the backend must not share the proxy's CPU $PROXY_CPU" >&2
    exit 1
fi

# Case (e): the proxy holds two sockets per idle connection (client and upstream).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $((2 * IDLE_CONNS + 100)) -gt "$NOFILE" ]; then
    echo "proxy.sh: open-file limit $NOFILE is below 2 x $IDLE_CONNS + 100 (the proxy holds two sockets per connection);" \
        "case (e) will use $(( (NOFILE - 100) / 2 )) connections (raise the hard limit to measure $IDLE_CONNS)" >&2
    IDLE_CONNS=$(( (NOFILE - 100) / 2 ))
fi
[ "$NOFILE" = unlimited ] && NOFILE=1048576

if [ "$BUILD" = 1 ]; then
    echo "== building (release)"
    (cd "$ROOT" && cargo build --release -q -p switchyard-cli)
fi
SWITCHYARD=${SWITCHYARD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard}
[ -x "$SWITCHYARD" ] || { echo "proxy.sh: $SWITCHYARD missing (build with cargo build --release -p switchyard-cli)" >&2; exit 1; }

PIDS_TO_KILL=()
BACKEND_PID=""
PROXY_PID=""
LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
    [ -n "$BACKEND_PID" ] && kill "$BACKEND_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Processes of a proxy: the pid and its children (nginx: master + worker).
proxy_pids() { echo "$1"; pgrep -P "$1" || true; }
cpu_ticks() { # PID... -> summed utime+stime in clock ticks
    local p sum=0 t
    for p in "$@"; do
        t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        sum=$((sum + t))
    done
    echo "$sum"
}
rss_kib() { # PID... -> summed VmRSS in KiB
    local p sum=0 r
    for p in "$@"; do
        r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
        sum=$((sum + ${r:-0}))
    done
    echo "$sum"
}

BACKEND_PORT=$PORT_BASE
start_backend() {
    # RUST_LOG=warn: switchyard logs every connection at info level.
    RUST_LOG=warn taskset -c "$BACKEND_CPU" "$SWITCHYARD" --threads 1 serve \
        --listen "127.0.0.1:$BACKEND_PORT" > "$OUT/backend.log" 2>&1 &
    BACKEND_PID=$!
    wait_port "$BACKEND_PORT" "$BACKEND_PID" || { echo "proxy.sh: the echo backend did not start (log: $OUT/backend.log)" >&2; exit 1; }
}

# Config files of each proxy, for listening PORT (written once per measurement).
write_config() { # NAME PORT -> path of the config
    local name=$1 port=$2 dir=$OUT/conf/$1
    mkdir -p "$dir"
    case "$name" in
        switchyard-*)
            {
                printf '[[listener]]\naddress = "127.0.0.1:%s"\n\n' "$port"
                printf '[[upstream]]\nname = "echo"\nservers = ["ws://127.0.0.1:%s"]\n\n' "$BACKEND_PORT"
                printf '[[route]]\npath = "/echo"\nupstream = "echo"\n'
                printf '[route.policy]\nidle_timeout = "1h"\n'
                if [ "$name" = switchyard-transparent ]; then printf 'tunnel = "transparent"\n'; fi
            } > "$dir/switchyard.toml"
            echo "$dir/switchyard.toml"
            ;;
        nginx)
            mkdir -p "$dir/logs" "$dir/tmp"
            # https://nginx.org/en/docs/http/websocket.html; access_log off (the others log
            # nothing per connection either).
            cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events {
    worker_connections $NOFILE;
}
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      close;
    }
    server {
        listen 127.0.0.1:$port;
        location /echo {
            proxy_pass http://127.0.0.1:$BACKEND_PORT;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Host \$host;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }
    }
}
EOF
            echo "$dir/nginx.conf"
            ;;
        haproxy)
            # https://www.haproxy.com/documentation/haproxy-configuration-tutorials/protocol-support/websocket/
            cat > "$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $(( (NOFILE - 100) / 2 ))
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
frontend fe
    bind 127.0.0.1:$port
    default_backend echo
backend echo
    server echo1 127.0.0.1:$BACKEND_PORT
EOF
            echo "$dir/haproxy.cfg"
            ;;
    esac
}

PORT_SEQ=0
start_proxy() { # NAME -> sets PROXY_PID, PORT
    local name=$1 conf
    PORT_SEQ=$((PORT_SEQ + 1))
    PORT=$((PORT_BASE + 1 + PORT_SEQ % 90))
    conf=$(write_config "$name" "$PORT")
    case "$name" in
        switchyard-*)
            RUST_LOG=warn taskset -c "$PROXY_CPU" "$SWITCHYARD" --threads 1 serve --config "$conf" \
                > "$OUT/proxy-$name.log" 2>&1 &
            ;;
        nginx)
            taskset -c "$PROXY_CPU" "$NGINX" -p "$(dirname "$conf")" -c "$conf" -g 'daemon off;' \
                > "$OUT/proxy-$name.log" 2>&1 &
            ;;
        haproxy)
            taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$conf" > "$OUT/proxy-$name.log" 2>&1 &
            ;;
    esac
    PROXY_PID=$!
    if wait_port "$PORT" "$PROXY_PID"; then
        sleep 0.2
        return 0
    fi
    echo "proxy.sh: $name did not start listening on 127.0.0.1:$PORT (log: $OUT/proxy-$name.log)" >&2
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    PROXY_PID=""
    return 1
}
stop_proxy() {
    if [ -n "$PROXY_PID" ]; then
        kill "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
        PROXY_PID=""
        sleep 0.2 # nginx's worker exits after its master returns
    fi
}

case_args() {
    case "$1" in
        a) echo "--connections 100 --in-flight 1 --size 16" ;;
        c) echo "--connections 10 --in-flight 1 --size 65536 --binary" ;;
        d) echo "--connections 32 --handshakes" ;;
        *) echo "proxy.sh: unknown case $1" >&2; return 1 ;;
    esac
}

record() {
    python3 -c 'import json,sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@" >> "$RESULTS"
}

measure_load() { # ROUND CASE PROXY
    local round=$1 case=$2 name=$3 json t0 t1 b0 b1 w0 w1 pids
    start_proxy "$name" || { record round "$round" case "$case" proxy "$name" error "proxy did not start"; return; }
    pids=$(proxy_pids "$PROXY_PID")
    # shellcheck disable=SC2086
    t0=$(cpu_ticks $pids); b0=$(cpu_ticks "$BACKEND_PID"); w0=$(date +%s.%N)
    # shellcheck disable=SC2046
    json=$(taskset -c "$LOAD_CPU" "$SWITCHYARD" --threads 1 bench "ws://127.0.0.1:$PORT/echo" $(case_args "$case") \
        --duration "$DURATION" --warmup "$WARMUP" --json 2>"$OUT/load.err" || true)
    # shellcheck disable=SC2086
    t1=$(cpu_ticks $pids); b1=$(cpu_ticks "$BACKEND_PID"); w1=$(date +%s.%N)
    stop_proxy
    if [ -z "$json" ]; then
        record round "$round" case "$case" proxy "$name" error "$(tail -n 1 "$OUT/load.err")"
        echo "   $name: load generator failed: $(tail -n 1 "$OUT/load.err")"
        return
    fi
    record round "$round" case "$case" proxy "$name" load "$json" \
        proxy_ticks "$((t1 - t0))" backend_ticks "$((b1 - b0))" wall0 "$w0" wall1 "$w1"
    python3 - "$name" "$json" "$((t1 - t0))" <<'PY'
import json, sys
name, j, ticks = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
rate = j.get("msgs_per_s", j.get("handshakes_per_s", 0))
total = j.get("messages_total", j.get("handshakes_total", 0)) or 1
print(f"   {name:24} {rate:10.0f}/s  proxy {ticks * 1e4 / total:7.2f} us/op  p50 {j['p50_us']:8.1f} us  "
      f"p99 {j['p99_us']:9.1f} us  errors {j['errors']}")
PY
}

measure_idle() { # ROUND PROXY
    local round=$1 name=$2 rss0 rss1 ready pids
    start_proxy "$name" || { record round "$round" case e proxy "$name" error "proxy did not start"; return; }
    sleep 0.3
    pids=$(proxy_pids "$PROXY_PID")
    # shellcheck disable=SC2086
    rss0=$(rss_kib $pids)
    taskset -c "$LOAD_CPU" "$SWITCHYARD" --threads 1 bench "ws://127.0.0.1:$PORT/echo" --idle "$IDLE_CONNS" --json \
        > "$OUT/idle.out" 2>"$OUT/idle.err" &
    LOAD_PID=$!
    ready=""
    for _ in $(seq 1 1800); do
        if [ -s "$OUT/idle.out" ]; then ready=$(head -n 1 "$OUT/idle.out"); break; fi
        kill -0 "$LOAD_PID" 2>/dev/null || break
        sleep 0.05
    done
    [ -n "$ready" ] && sleep 1 # let the proxy settle (handshake buffers freed)
    # shellcheck disable=SC2086
    rss1=$(rss_kib $pids)
    kill "$LOAD_PID" 2>/dev/null || true
    wait "$LOAD_PID" 2>/dev/null || true
    LOAD_PID=""
    stop_proxy
    sleep 0.5 # the backend drops its side of the connections
    if [ -z "$ready" ]; then
        record round "$round" case e proxy "$name" error "idle connections never ready: $(tail -n 1 "$OUT/idle.err")"
        echo "   $name: idle connections never ready: $(tail -n 1 "$OUT/idle.err")"
        return
    fi
    record round "$round" case e proxy "$name" load "$ready" rss0_kib "$rss0" rss1_kib "$rss1"
    python3 - "$name" "$ready" "$rss0" "$rss1" <<'PY'
import json, sys
name, j, r0, r1 = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
n = max(j["ready"], 1)
print(f"   {name:24} RSS {r0} -> {r1} KiB over {j['ready']} idle proxied connections: "
      f"{(r1 - r0) * 1024 / n:.0f} B/conn  (errors {j['errors']})")
PY
}

start_backend
echo "== proxies: $PROXIES"
echo "== cases: $CASES; rounds $ROUNDS; ${WARMUP}s warm-up + ${DURATION}s per measurement"
echo "== proxy on CPU $PROXY_CPU, load generator on CPU $LOAD_CPU, echo backend on CPU $BACKEND_CPU; idle connections $IDLE_CONNS"
echo "== raw results: $RESULTS"
read -r -a PROXY_LIST <<< "$PROXIES"
NP=${#PROXY_LIST[@]}
for round in $(seq 1 "$ROUNDS"); do
    order=()
    for i in $(seq 0 $((NP - 1))); do order+=("${PROXY_LIST[$(( (i + round - 1) % NP ))]}"); done
    for case in $CASES; do
        echo "-- round $round/$ROUNDS, case ($case), load average $(cut -d' ' -f1 /proc/loadavg)"
        for name in "${order[@]}"; do
            kill -0 "$BACKEND_PID" 2>/dev/null || { echo "   (echo backend died; restarting: $(tail -n 1 "$OUT/backend.log"))"; start_backend; }
            if [ "$case" = e ]; then measure_idle "$round" "$name"; else measure_load "$round" "$case" "$name"; fi
        done
    done
done

python3 "$BENCH_DIR/proxy_report.py" "$RESULTS" | tee "$OUT/table.txt"
echo "(raw results: $RESULTS; table: $OUT/table.txt)"
