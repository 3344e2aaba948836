#!/usr/bin/env bash
# Autobahn TestSuite conformance (the PyPI package kosoku) in both roles:
#   server role: kosoku -m fuzzingclient drives `switchyard serve` (/echo)
#   client role: kosoku -m fuzzingserver is driven by our client (examples/autobahn_client.rs)
#   server-uring: the server role again, with `serve --threads 2 --io-uring` (its connections on
#                 the io_uring worker threads instead of epoll), against the same expected results
# Each run is compared with conformance/expected-{server,client}.json; any case that
# changes, or is not OK/INFORMATIONAL, fails (an INFORMATIONAL case that changed is first
# run once more alone: see run() below).
# usage: scripts/autobahn.sh [server|client|server-uring|all] [--write]   (needs .venv with kosoku)
set -euo pipefail
cd "$(dirname "$0")/.."
role=${1:-all}
write=${2:-}
KOSOKU=${KOSOKU:-.venv/bin/kosoku}
PY=${PY:-.venv/bin/python}
SWITCHYARD=${SWITCHYARD:-target/release/switchyard}
CLIENT=${CLIENT:-target/release/examples/autobahn_client}
# Cases run at once in each role (kosoku -p for the server role, our client's own for the client role).
SERVER_PARALLEL=${SERVER_PARALLEL:-3}
CLIENT_PARALLEL=${CLIENT_PARALLEL:-3}
out=reports/autobahn
mkdir -p "$out"

free_port() { "$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# drive_server DIR PARALLEL [KOSOKU ARGS...]: kosoku -m fuzzingclient drives `switchyard serve`,
# report in DIR, logs in DIR.log and DIR-kosoku.log.
drive_server() (
  dir=$1 parallel=$2
  shift 2
  port=$(free_port)
  # shellcheck disable=SC2086 # SERVE_ARGS: several arguments
  "$SWITCHYARD" serve --listen "127.0.0.1:$port" ${SERVE_ARGS:-} >"$dir.log" 2>&1 &
  spid=$!
  trap 'kill $spid 2>/dev/null || true' EXIT
  wait_port "$port"
  rm -rf "$dir"
  # Exit status of kosoku is not used: check.py decides, against the expected file.
  "$KOSOKU" -m fuzzingclient -p "$parallel" "$@" -o "$dir" "ws://127.0.0.1:$port/echo" >"$dir-kosoku.log" 2>&1 || true
  echo "server role: $(tail -n 1 "$dir-kosoku.log")"
)

# drive_client DIR PARALLEL [KOSOKU ARGS...]: our client is driven by kosoku -m fuzzingserver.
drive_client() (
  dir=$1 parallel=$2
  shift 2
  port=$(free_port)
  rm -rf "$dir"
  "$KOSOKU" -m fuzzingserver "$@" -o "$dir" "127.0.0.1:$port" >"$dir-kosoku.log" 2>&1 &
  kpid=$!
  trap 'kill $kpid 2>/dev/null || true' EXIT
  wait_port "$port"
  status=0
  "$CLIENT" "ws://127.0.0.1:$port" switchyard "$parallel" >"$dir.log" 2>&1 || { echo "autobahn_client failed:"; tail -n 20 "$dir.log"; status=1; }
  # fuzzingserver writes its report and exits once the client asked for updateReports
  for _ in $(seq 1 300); do kill -0 "$kpid" 2>/dev/null || break; sleep 0.1; done
  echo "client role: $(tail -n 1 "$dir-kosoku.log")"
  exit $status
)

# run ROLE PARALLEL [NAME]: the whole suite in one role, compared with
# conformance/expected-ROLE.json; reports in reports/autobahn/NAME (default ROLE).
# INFORMATIONAL cases that differ (timing-dependent by design, see check.py) are run once
# more, alone, and must then match; any other difference fails at once.
run() (
  role=$1 dir=$out/${3:-$1}
  expected=conformance/expected-$role.json
  "drive_$role" "$dir" "$2" || exit 1
  if [ -n "$write" ]; then
    exec "$PY" conformance/check.py "$dir" "$expected" "$write"
  fi
  rm -f "$dir.retry"
  rc=0
  "$PY" conformance/check.py "$dir" "$expected" --retry-list "$dir.retry" || rc=$?
  [ "$rc" -eq 3 ] || exit "$rc"
  read -ra cases <"$dir.retry"
  echo "$role role: running alone the INFORMATIONAL cases that differed: ${cases[*]}"
  include=()
  for c in "${cases[@]}"; do include+=(-i "$c"); done
  "drive_$role" "$dir-retry" 1 "${include[@]}" || exit 1
  "$PY" conformance/check.py "$dir-retry" "$expected" --subset
)

status=0
case "$role" in
  server) run server "$SERVER_PARALLEL" || status=1 ;;
  client) run client "$CLIENT_PARALLEL" || status=1 ;;
  server-uring) SERVE_ARGS="--threads 2 --io-uring" run server "$SERVER_PARALLEL" server-uring || status=1 ;;
  # Both roles at once, 3 cases at a time in each: a case mostly waits on one
  # side at a time (kosoku, then us), so one role alone keeps ~1 of 2 cores busy.
  # On this 2-core VM: sequential (server -p 2, client 1 at a time) ~1050 s,
  # this ~500 s, with the same 517/517 results in both roles.
  all)
    run server "$SERVER_PARALLEL" & spid=$!
    run client "$CLIENT_PARALLEL" || status=1
    wait "$spid" || status=1
    # Then the io_uring transport.
    if [ "$(uname -s)" = Linux ]; then
      SERVE_ARGS="--threads 2 --io-uring" run server "$SERVER_PARALLEL" server-uring || status=1
    fi
    ;;
  *) echo "usage: $0 [server|client|all] [--write]" >&2; exit 2 ;;
esac
exit $status
