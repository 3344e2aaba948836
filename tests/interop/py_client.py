"""Python `websockets` (the PyPI package) as a CLIENT of `switchyard serve`.

usage: py_client.py URL [CA_FILE]

Connects to URL (ws:// or wss://; with wss:// the CA_FILE is the only trust
anchor, and the host name is verified), then checks:
  - permessage-deflate was negotiated (the 101's Sec-WebSocket-Extensions),
  - a text, a binary, a fragmented and a large compressible message come back
    unchanged and in order,
  - a close with code 4321 and a reason is answered with the same code.
Prints one line per check; exits non-zero on the first failure.
"""

import os
import ssl
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def main():
    url = sys.argv[1]
    ctx = None
    if url.startswith("wss://"):
        ctx = ssl.create_default_context(cafile=sys.argv[2])
    with connect(
        url,
        ssl=ctx,
        compression="deflate",
        open_timeout=10,
        close_timeout=10,
        max_size=4 << 20,
    ) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        check(ext.startswith("permessage-deflate"), f"permessage-deflate negotiated ({ext!r})")
        if ctx is not None:
            check(ws.socket.version() in ("TLSv1.3", "TLSv1.2"), f"TLS in use ({ws.socket.version()})")

        ws.send("héllo, switchyard")
        check(ws.recv(timeout=10) == "héllo, switchyard", "text echo")

        blob = os.urandom(3000) + bytes(range(256))
        ws.send(blob)
        check(ws.recv(timeout=10) == blob, "binary echo")

        # A fragmented text message: three frames, one message back.
        ws.send(iter(["frag", "ment", "ed"]))
        check(ws.recv(timeout=10) == "fragmented", "fragmented message echo")

        big = ("the quick brown fox jumps over the lazy dog " * 30000)[:1 << 20]
        ws.send(big)
        check(ws.recv(timeout=20) == big, "1 MiB compressible text echo")

        # Several messages in flight at once come back in order.
        for i in range(50):
            ws.send(f"m{i}")
        got = [ws.recv(timeout=10) for _ in range(50)]
        check(got == [f"m{i}" for i in range(50)], "50 pipelined messages in order")

        ws.close(code=4321, reason="interop bye")
        rcvd = ws.protocol.close_rcvd
        check(rcvd is not None and rcvd.code == 4321,
              f"close code round trip (server answered {rcvd.code if rcvd else None})")
        try:
            ws.recv(timeout=1)
            check(False, "no message after close")
        except ConnectionClosed:
            pass
    print("py_client: all checks passed", flush=True)


if __name__ == "__main__":
    main()
