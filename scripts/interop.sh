#!/usr/bin/env bash
# Interop with real third-party peers (issue 3, point 6). Builds nothing: it runs
# the binaries it is given against
#   - Python `websockets` as a client (ws:// and wss://) and as a server for our
#     `switchyard connect` (plain and TLS with --ca),
#   - Node's built-in http2 server (RFC 8441) for `switchyard connect --http2`,
#     over TLS and over cleartext with prior knowledge,
#   - the `ws` npm package as a client (ws:// and wss://),
#   - Node's built-in http2 client doing an extended CONNECT (RFC 8441), over TLS
#     (ALPN h2) and over cleartext with prior knowledge,
#   - Chromium headless (Debian `chromium`, driven by playwright-core) running
#     `new WebSocket('wss://...')`, once with h2 offered (the server's log must
#     show an extended CONNECT, not an HTTP/1.1 upgrade) and once with HTTP/1.1 only,
#   - aioquic (PyPI) as an HTTP/3 client (RFC 9220) of `serve --tls --http3`, and
#     as the HTTP/3 server for `switchyard connect --http3`.
# Peers are installed by scripts/install-test-deps.sh (tests/interop/node_modules,
# .venv). Every server listens on 127.0.0.1 port 0; every process started here is
# stopped on exit. Logs go to reports/interop/.
#
# usage: scripts/interop.sh [TEST_NAME_REGEX]   (matched against whole names, e.g. 'py-.*|chromium-h1')
# env:   SWITCHYARD (default target/ci/switchyard: both roles, `serve` and
#        `connect`), CLIENT_EXAMPLES (default target/ci/examples; no test needs an
#        example binary now), PY (.venv/bin/python), NODE (node), CHROMIUM
#        (/usr/bin/chromium), INTEROP_SKIP_PENDING=1 to count tests whose server
#        or client feature is missing from the binary as skipped instead of failed.
# Tests: py-client-ws node-ws-ws node-h2c-connect py-client-wss node-ws-wss
#        node-h2-connect chromium-h2 chromium-h1 py-server-ws py-server-wss
#        node-h2-server-h2c node-h2-server-tls aioquic-h3 aioquic-h3-server
# Prints one line per test and, last, `interop: N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SWITCHYARD=${SWITCHYARD:-target/ci/switchyard}
CLIENT_EXAMPLES=${CLIENT_EXAMPLES:-target/ci/examples}
PY=${PY:-.venv/bin/python}
NODE=${NODE:-node}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export NO_COLOR=1
filter=${1:-.*}
case $SWITCHYARD in /*) ;; *) SWITCHYARD=$ROOT/$SWITCHYARD ;; esac
export SWITCHYARD CLIENT_EXAMPLES

out=$ROOT/reports/interop
rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/interop.XXXXXX")
server_pids=()
PEER_PID=
cleanup() {
  local p
  if [ -n "$PEER_PID" ]; then
    kill "$PEER_PID" 2>/dev/null
    wait "$PEER_PID" 2>/dev/null
  fi
  for p in "${server_pids[@]:-}"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null
  done
  for p in "${server_pids[@]:-}"; do
    [ -n "$p" ] && wait "$p" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0 failed=0 skipped=0
report() { # report ok|FAIL|skip NAME DETAIL
  printf '%-4s %-28s %s\n' "$1" "$2" "$3"
  case $1 in ok) passed=$((passed + 1)) ;; FAIL) failed=$((failed + 1)) ;; skip) skipped=$((skipped + 1)) ;; esac
}
# A test whose prerequisite is missing: a failure unless INTEROP_SKIP_PENDING=1.
pending() {
  if [ "${INTEROP_SKIP_PENDING:-0}" = 1 ]; then report skip "$1" "pending: $2"; else report FAIL "$1" "pending: $2"; fi
}
wanted() { [[ $1 =~ ^($filter)$ ]]; }

# --- what the binaries can do -------------------------------------------------
if [ ! -x "$SWITCHYARD" ]; then
  echo "interop: $SWITCHYARD is not an executable (build it: cargo build --profile ci --bins)" >&2
  echo "interop: 0 passed, 1 failed"
  exit 1
fi
missing=
"$PY" -c 'import aioquic' 2>/dev/null || missing+=" python-aioquic($PY)"
[ -d tests/interop/node_modules/ws ] && [ -d tests/interop/node_modules/playwright-core ] || missing+=" tests/interop/node_modules"
"$PY" -c 'import websockets' 2>/dev/null || missing+=" python-websockets($PY)"
command -v "$NODE" >/dev/null || missing+=" node"
[ -x "$CHROMIUM" ] || missing+=" chromium($CHROMIUM)"
command -v openssl >/dev/null || missing+=" openssl"
if [ -n "$missing" ]; then
  echo "interop: missing peers:$missing (run scripts/install-test-deps.sh)" >&2
  echo "interop: 0 passed, 1 failed"
  exit 1
fi
serve_help=$("$SWITCHYARD" serve --help 2>&1)
has_tls=0
grep -q -- '--tls-cert' <<<"$serve_help" && grep -q -- '--tls-key' <<<"$serve_help" && has_tls=1
# How to make the server offer HTTP/1.1 only over TLS (ALPN without h2).
h1_only_args=()
if grep -q -- '--alpn' <<<"$serve_help"; then h1_only_args=(--alpn http/1.1)
elif grep -q -- '--no-h2' <<<"$serve_help"; then h1_only_args=(--no-h2)
elif grep -q -- '--no-http2' <<<"$serve_help"; then h1_only_args=(--no-http2)
elif grep -q -- '--http1-only' <<<"$serve_help"; then h1_only_args=(--http1-only)
fi
has_http3=0
grep -q -- '--http3' <<<"$serve_help" && has_http3=1
has_connect=0 has_connect_h2=0
if connect_help=$("$SWITCHYARD" connect --help 2>&1); then
  has_connect=1
  grep -q -- '--http2' <<<"$connect_help" && has_connect_h2=1
fi

# --- certificates: a throwaway CA and a leaf for localhost / 127.0.0.1 --------
ca=$work/ca.pem cert=$work/cert.pem key=$work/key.pem
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj '/CN=switchyard interop CA' -keyout "$work/ca-key.pem" -out "$ca" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj '/CN=localhost' -keyout "$key" -out "$work/leaf.csr" &&
  printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
    'extendedKeyUsage=serverAuth' 'subjectAltName=DNS:localhost,IP:127.0.0.1' >"$work/leaf.ext" &&
  openssl x509 -req -in "$work/leaf.csr" -CA "$ca" -CAkey "$work/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$work/leaf.ext" -out "$cert"
} >"$out/openssl.log" 2>&1 || { cat "$out/openssl.log" >&2; echo "interop: 0 passed, 1 failed"; exit 1; }
# Chromium trusts the leaf by the SHA-256 of its SubjectPublicKeyInfo.
spki=$(openssl x509 -in "$cert" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64)

# --- servers --------------------------------------------------------------------
# start_server NAME ARGS...: `switchyard serve --listen 127.0.0.1:0 ARGS...` with
# RUST_LOG=info, stdout in $out/NAME.stdout and the log (stderr) in $out/NAME.log;
# sets PORT and SERVER_PID. Returns non-zero if no port was printed within 10 s.
start_server() {
  local name=$1
  shift
  RUST_LOG=info "$SWITCHYARD" serve --listen 127.0.0.1:0 "$@" >"$out/$name.stdout" 2>"$out/$name.log" &
  SERVER_PID=$!
  server_pids+=("$SERVER_PID")
  PORT=
  for _ in $(seq 1 100); do
    PORT=$(grep -m1 -oE '127\.0\.0\.1:[0-9]+' "$out/$name.stdout" 2>/dev/null | head -n1 | cut -d: -f2)
    [ -n "$PORT" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  return 1
}
stop_server() {
  kill "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  return 0
}

# peer NAME CMD...: runs one peer (bounded to 90 s), its output in $out/NAME.out;
# sets PEER_RC and PEER_SECS. run NAME CMD... also reports ok, or FAIL with the
# peer's last lines.
peer() {
  local name=$1 start=$SECONDS
  shift
  # In the background and waited for, so a signal to this script runs its trap at
  # once; timeout passes the TERM of the cleanup on to the peer.
  timeout -k 5 90 "$@" <&0 >"$out/$name.out" 2>&1 &
  PEER_PID=$!
  wait "$PEER_PID"
  PEER_RC=$?
  PEER_PID=
  PEER_SECS=$((SECONDS - start))
}
verdict() { # verdict NAME [FAILURE]: reports the peer's result, or FAILURE when given
  if [ $PEER_RC -ne 0 ]; then
    report FAIL "$1" "(exit $PEER_RC after ${PEER_SECS}s; $out/$1.out)"
    tail -n 15 "$out/$1.out" | sed 's/^/     | /'
  elif [ -n "${2:-}" ]; then
    report FAIL "$1" "$2"
  else
    report ok "$1" "(${PEER_SECS}s)"
  fi
}
run() { peer "$@"; verdict "$1"; }
# log_has NAME ERE: the server log NAME (colors stripped) has a line matching ERE.
# grep reads the whole input (no -q): with pipefail, a grep -q that exits at the
# first match makes sed die of SIGPIPE on a long log and the pipeline "fail".
log_has() { sed 's/\x1b\[[0-9;]*m//g' "$out/$1.log" | grep -E "$2" >/dev/null; }
# What the server logs (RUST_LOG=info) per WebSocket, by way of opening it
# (crates/gateway: http1.rs "switching protocols" with the token, websocket.rs
# "upgraded to websocket"; h2.rs "websocket over HTTP/2 (RFC 8441)"):
H1_UPGRADE_LOG='switching protocols.*token=websocket|upgraded to websocket'
H2_CONNECT_LOG='websocket over HTTP/2'

# A server per configuration, shared by the tests that use it.
with_server() { # with_server NAME ARGS... ; on failure reports every test named in $tests
  if ! start_server "$@"; then
    local t
    for t in $tests; do report FAIL "$t" "(server did not start: $out/$1.log)"; done
    sed 's/^/     | /' "$out/$1.log" | tail -n 5
    return 1
  fi
}

# 1. Cleartext: the Python websockets and ws clients over HTTP/1.1, and Node's
#    http2 client with prior knowledge (h2c preface, no Upgrade: h2c).
tests="py-client-ws node-ws-ws node-h2c-connect"
if wanted py-client-ws || wanted node-ws-ws || wanted node-h2c-connect; then
  if with_server plain; then
    wanted py-client-ws && run py-client-ws "$PY" tests/interop/py_client.py "ws://127.0.0.1:$PORT/echo"
    wanted node-ws-ws && run node-ws-ws "$NODE" tests/interop/node_ws.mjs "ws://127.0.0.1:$PORT/echo"
    wanted node-h2c-connect && run node-h2c-connect "$NODE" tests/interop/node_h2.mjs "http://127.0.0.1:$PORT"
    stop_server
  fi
fi

# 2. Over TLS (serve --tls with our certificate; ALPN offers h2 and http/1.1):
#    Python websockets and ws over wss://, Node http2 extended CONNECT, Chromium.
tls_tests="py-client-wss node-ws-wss node-h2-connect chromium-h2"
any=0
for t in $tls_tests; do wanted "$t" && any=1; done
if [ $any = 1 ]; then
  if [ $has_tls = 0 ]; then
    for t in $tls_tests; do wanted "$t" && pending "$t" "switchyard serve has no --tls-cert/--tls-key"; done
  else
    tests=$tls_tests
    if with_server tls --tls --tls-cert "$cert" --tls-key "$key"; then
      wanted py-client-wss && run py-client-wss "$PY" tests/interop/py_client.py "wss://127.0.0.1:$PORT/echo" "$ca"
      wanted node-ws-wss && run node-ws-wss "$NODE" tests/interop/node_ws.mjs "wss://127.0.0.1:$PORT/echo" "$ca"
      stop_server
    fi
    # Node http2 and Chromium each get their own server, so the log shows only their WebSockets.
    if wanted node-h2-connect; then
      tests=node-h2-connect
      if with_server h2-node --tls --tls-cert "$cert" --tls-key "$key"; then
        peer node-h2-connect "$NODE" tests/interop/node_h2.mjs "https://127.0.0.1:$PORT" "$ca"
        stop_server
        why=
        log_has h2-node "$H2_CONNECT_LOG" || why="the server log has no '$H2_CONNECT_LOG' line ($out/h2-node.log)"
        verdict node-h2-connect "$why"
      fi
    fi
    if wanted chromium-h2; then
      tests=chromium-h2
      if with_server chromium-h2 --tls --tls-cert "$cert" --tls-key "$key"; then
        peer chromium-h2 "$NODE" tests/interop/chromium.mjs "https://127.0.0.1:$PORT" "$spki" h2
        stop_server
        why=
        if ! log_has chromium-h2 "$H2_CONNECT_LOG"; then
          why="the server log has no '$H2_CONNECT_LOG' line ($out/chromium-h2.log)"
        elif log_has chromium-h2 "$H1_UPGRADE_LOG"; then
          why="a WebSocket came as an HTTP/1.1 upgrade, not an extended CONNECT ($out/chromium-h2.log)"
        elif ! log_has chromium-h2 'CloseCode\(4002\)'; then
          why="the server log does not show the page's close 4002 ($out/chromium-h2.log)"
        fi
        verdict chromium-h2 "$why"
      fi
    fi
  fi
fi

# 3. Chromium with HTTP/1.1 only: the WebSocket is an HTTP/1.1 upgrade. The server
#    offers only http/1.1 in ALPN when it has a flag for that; otherwise Chromium
#    is started with --disable-http2 (it offers only http/1.1), and the line says so.
if wanted chromium-h1; then
  if [ $has_tls = 0 ]; then
    pending chromium-h1 "switchyard serve has no --tls-cert/--tls-key"
  else
    tests=chromium-h1
    chromium_h1_args=() how="server ALPN ${h1_only_args[*]:-}"
    if [ ${#h1_only_args[@]} = 0 ]; then
      chromium_h1_args=(--disable-http2)
      how="chromium --disable-http2: switchyard serve has no way to offer HTTP/1.1 only"
    fi
    if with_server chromium-h1 --tls --tls-cert "$cert" --tls-key "$key" "${h1_only_args[@]}"; then
      peer chromium-h1 "$NODE" tests/interop/chromium.mjs "https://127.0.0.1:$PORT" "$spki" http/1.1 "${chromium_h1_args[@]}"
      stop_server
      why=
      if ! log_has chromium-h1 "$H1_UPGRADE_LOG"; then
        why="the server log has no '$H1_UPGRADE_LOG' line ($out/chromium-h1.log)"
      elif log_has chromium-h1 "$H2_CONNECT_LOG"; then
        why="the server log shows an extended CONNECT with HTTP/2 off ($out/chromium-h1.log)"
      elif ! log_has chromium-h1 'CloseCode\(4002\)'; then
        why="the server log does not show the page's close 4002 ($out/chromium-h1.log)"
      fi
      verdict chromium-h1 "$why"
      [ $PEER_RC -eq 0 ] && [ -z "$why" ] && echo "     (HTTP/1.1 only by $how)"
    fi
  fi
fi

# 4. Our client (`switchyard connect`) against a Python websockets server (HTTP/1.1)
#    and against Node's built-in http2 server (RFC 8441, `connect --http2`).
for t in py-server-ws py-server-wss node-h2-server-h2c node-h2-server-tls; do
  wanted "$t" || continue
  if [ $has_connect = 0 ]; then
    pending "$t" "the switchyard binary has no connect subcommand"
    continue
  fi
  case $t in
    py-server-ws) run "$t" "$PY" tests/interop/py_server.py "$SWITCHYARD" plain ;;
    py-server-wss) run "$t" "$PY" tests/interop/py_server.py "$SWITCHYARD" tls "$cert" "$key" "$ca" ;;
    node-h2-server-*)
      if [ $has_connect_h2 = 0 ]; then
        pending "$t" "switchyard connect has no --http2"
      elif [ $t = node-h2-server-h2c ]; then
        run "$t" "$NODE" tests/interop/node_h2_server.mjs "$SWITCHYARD" plain
      else
        run "$t" "$NODE" tests/interop/node_h2_server.mjs "$SWITCHYARD" tls "$cert" "$key" "$ca"
      fi
      ;;
  esac
done

# 5. HTTP/3 (RFC 9220): aioquic (PyPI) as the client of `serve --tls --http3`
#    (tests/interop/h3_aioquic.py comes from the HTTP/3 work, branch wt-h3).
if wanted aioquic-h3; then
  if [ $has_tls = 0 ] || [ $has_http3 = 0 ]; then
    pending aioquic-h3 "switchyard serve has no --http3"
  elif [ ! -f tests/interop/h3_aioquic.py ]; then
    pending aioquic-h3 "tests/interop/h3_aioquic.py is missing (branch wt-h3)"
  else
    tests=aioquic-h3
    if with_server h3 --tls --tls-cert "$cert" --tls-key "$key" --http3; then
      run aioquic-h3 "$PY" tests/interop/h3_aioquic.py 127.0.0.1 "$PORT" --cafile "$ca" --server-name localhost --path /echo
      stop_server
    fi
  fi
fi

#    And our client (`switchyard connect --http3`) against aioquic's server
#    (tests/interop/h3_aioquic_server.py, also from wt-h3).
if wanted aioquic-h3-server; then
  if [ $has_connect = 0 ] || ! grep -q -- '--http3' <<<"$connect_help"; then
    pending aioquic-h3-server "switchyard connect has no --http3"
  elif [ ! -f tests/interop/h3_aioquic_server.py ]; then
    pending aioquic-h3-server "tests/interop/h3_aioquic_server.py is missing (branch wt-h3)"
  else
    "$PY" tests/interop/h3_aioquic_server.py "$cert" "$key" --lifetime 60 >"$out/aioquic-server.log" 2>&1 &
    SERVER_PID=$!
    server_pids+=("$SERVER_PID")
    PORT=
    for _ in $(seq 1 100); do
      PORT=$(grep -m1 -oE '^listening [0-9]+' "$out/aioquic-server.log" | cut -d' ' -f2)
      [ -n "$PORT" ] && break
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$PORT" ]; then
      report FAIL aioquic-h3-server "(aioquic server did not start: $out/aioquic-server.log)"
    else
      printf '%s\n' 'hello over h3' 'ünïcödé ✓' >"$work/h3-lines.txt"
      peer aioquic-h3-server "$SWITCHYARD" connect --http3 "wss://127.0.0.1:$PORT/echo" --ca "$ca" <"$work/h3-lines.txt"
      stop_server
      why=
      if ! diff -q "$work/h3-lines.txt" <(grep -v '^$' "$out/aioquic-h3-server.out" | grep -vE '^(connected|closed)') >/dev/null; then
        why="the echoes printed differ from the lines sent ($out/aioquic-h3-server.out)"
      elif ! grep -q 'HTTP/3' "$out/aioquic-h3-server.out"; then
        why="switchyard connect did not report HTTP/3 ($out/aioquic-h3-server.out)"
      fi
      verdict aioquic-h3-server "$why"
    fi
  fi
fi

if [ $skipped -gt 0 ]; then
  echo "interop: $passed passed, $failed failed, $skipped skipped"
else
  echo "interop: $passed passed, $failed failed"
fi
[ $failed -eq 0 ]
