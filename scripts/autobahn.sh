#!/usr/bin/env bash
# Autobahn TestSuite conformance (the PyPI package kosoku) in both roles:
#   server role: kosoku -m fuzzingclient drives `switchyard serve` (/echo)
#   client role: kosoku -m fuzzingserver is driven by our client (examples/autobahn_client.rs)
# Each run is compared with conformance/expected-{server,client}.json; any case that
# changes, or is not OK/INFORMATIONAL, fails.
# usage: scripts/autobahn.sh [server|client|all] [--write]   (needs .venv with kosoku)
set -euo pipefail
cd "$(dirname "$0")/.."
role=${1:-all}
write=${2:-}
KOSOKU=${KOSOKU:-.venv/bin/kosoku}
PY=${PY:-.venv/bin/python}
SWITCHYARD=${SWITCHYARD:-target/release/switchyard}
CLIENT=${CLIENT:-target/release/examples/autobahn_client}
out=reports/autobahn
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { "$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

status=0
if [ "$role" = server ] || [ "$role" = all ]; then
  port=$(free_port)
  "$SWITCHYARD" serve --listen "127.0.0.1:$port" >"$out/server.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
  rm -rf "$out/server"
  # Exit status of kosoku is not used: check.py decides, against the expected file.
  "$KOSOKU" -m fuzzingclient -p 2 -o "$out/server" "ws://127.0.0.1:$port/echo" >"$out/server-kosoku.log" 2>&1 || true
  tail -n 3 "$out/server-kosoku.log"
  "$PY" conformance/check.py "$out/server" conformance/expected-server.json $write || status=1
  kill "${pids[-1]}" 2>/dev/null || true
fi
if [ "$role" = client ] || [ "$role" = all ]; then
  port=$(free_port)
  rm -rf "$out/client"
  "$KOSOKU" -m fuzzingserver -o "$out/client" "127.0.0.1:$port" >"$out/client-kosoku.log" 2>&1 &
  kpid=$!
  pids+=($kpid)
  wait_port "$port"
  "$CLIENT" "ws://127.0.0.1:$port" switchyard >"$out/client.log" 2>&1 || { echo "autobahn_client failed:"; tail -n 20 "$out/client.log"; status=1; }
  # fuzzingserver writes its report and exits once the client asked for updateReports
  for _ in $(seq 1 300); do kill -0 "$kpid" 2>/dev/null || break; sleep 0.1; done
  kill "$kpid" 2>/dev/null || true
  tail -n 3 "$out/client-kosoku.log"
  "$PY" conformance/check.py "$out/client" conformance/expected-client.json $write || status=1
fi
exit $status
