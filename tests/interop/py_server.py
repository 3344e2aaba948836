"""Python `websockets` (the PyPI package) as a SERVER for OUR client,
`switchyard connect` in pipe mode (stdin lines out as text messages, received
messages printed one per line).

usage: py_server.py SWITCHYARD_BIN plain
       py_server.py SWITCHYARD_BIN tls CERT KEY CA

Starts an echo server on 127.0.0.1 (a free port; TLS with CERT/KEY when asked),
runs `SWITCHYARD_BIN connect ws[s]://127.0.0.1:PORT/interop [--ca CA]`, writes three
lines to its stdin and closes stdin once the echoes are printed, and checks that the server received exactly those lines as text
messages, that the client printed the echoes, and that the client ended the
connection with a closing handshake (not a dropped socket).
"""

import os
import ssl
import subprocess
import sys
import threading

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import serve

LINES = ["hello", "interop with websockets", "ünïcödé ✓"]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def main():
    binary, mode = sys.argv[1], sys.argv[2]
    ctx = None
    if mode == "tls":
        cert, key, ca = sys.argv[3:6]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)

    seen = {"paths": [], "messages": [], "close": [], "extensions": []}
    done = threading.Event()

    def handler(ws):
        seen["paths"].append(ws.request.path)
        seen["extensions"].append(ws.response.headers.get("Sec-WebSocket-Extensions"))
        for msg in ws:
            seen["messages"].append(msg)
            try:
                ws.send(msg)
            except ConnectionClosed:
                pass  # the client closed already; keep reading what it sent before
        seen["close"].append(ws.protocol.close_rcvd)
        done.set()

    with serve(handler, "127.0.0.1", 0, ssl=ctx) as server:
        port = server.socket.getsockname()[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        scheme = "wss" if ctx else "ws"
        cmd = [binary, "connect", f"{scheme}://127.0.0.1:{port}/interop"]
        if ctx:
            cmd += ["--ca", ca]
        print("running:", " ".join(cmd), flush=True)
        env = dict(os.environ, NO_COLOR="1")
        # Lines go in one write; stdin stays open until the echoes are printed
        # (Python's server reads ahead, so a close right behind the messages
        # would make its echoes unsendable), then its end closes the connection.
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env)
        printed = []

        def read_echoes():
            for raw in proc.stdout:
                printed.append(raw.decode("utf-8", "replace").rstrip("\n"))
                if len(printed) == len(LINES):
                    break

        reader = threading.Thread(target=read_echoes, daemon=True)
        reader.start()
        proc.stdin.write("".join(line + "\n" for line in LINES).encode())
        proc.stdin.flush()
        reader.join(15)
        proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print("client stderr:", proc.stderr.read().decode("utf-8", "replace"), flush=True)
            check(False, "switchyard connect exited within 15 s of the end of its stdin")
        rest_out, err = proc.stdout.read(), proc.stderr.read()
        out = "\n".join(printed) + "\n" + rest_out.decode("utf-8", "replace")
        err = err.decode("utf-8", "replace")
        print("client stdout:\n" + out + "client stderr:\n" + err, flush=True)
        check(proc.returncode == 0, f"switchyard connect exited 0 (got {proc.returncode})")
        done.wait(10)
        check(seen["paths"] == ["/interop"], f"one connection to /interop ({seen['paths']})")
        ext = seen["extensions"][0] or ""
        check(ext.startswith("permessage-deflate"), f"our client's permessage-deflate offer accepted ({ext!r})")
        check(seen["messages"] == LINES, f"server received the stdin lines as text ({seen['messages']})")
        printed = [line for line in out.splitlines() if line != ""]
        check(printed == LINES, "client printed the echoes, one per line")
        rcvd = seen["close"][0] if seen["close"] else None
        check(rcvd is not None and rcvd.code == 1000,
              f"client closed with a closing handshake, code 1000 ({rcvd})")
        server.shutdown()
    print("py_server: all checks passed", flush=True)


if __name__ == "__main__":
    main()
