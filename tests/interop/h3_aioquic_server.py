#!/usr/bin/env python3
"""WebSocket over HTTP/3 (RFC 9220) echo server built on aioquic, the
third-party peer for switchyard's HTTP/3 client.

Usage: h3_aioquic_server.py CERT KEY [--host 127.0.0.1] [--port 0]

Prints "listening PORT" once ready. Answers an extended CONNECT with
:protocol websocket with 200 (plus a `server` header, which aioquic's QPACK
encoder Huffman-codes), other :protocol values with 501, and echoes each
WebSocket frame (client frames unmasked, our frames unmasked as RFC 6455
requires for a server); answers a close frame with a close frame and ends
the stream. Exits after --lifetime seconds (default 60).
"""

import argparse
import asyncio
import struct
import sys

from aioquic.asyncio import serve
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration

SERVER_HEADER = b"aioquic-interop-echo"


def server_frame(opcode, payload):
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def take_client_frame(buf):
    """(fin, opcode, payload, consumed) of one masked client frame, or None."""
    if len(buf) < 2:
        return None
    fin = bool(buf[0] & 0x80)
    opcode = buf[0] & 0x0F
    if not buf[1] & 0x80:
        raise ValueError("client frame is not masked")
    n = buf[1] & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = struct.unpack("!H", bytes(buf[2:4]))[0]
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = struct.unpack("!Q", bytes(buf[2:10]))[0]
        pos = 10
    if len(buf) < pos + 4 + n:
        return None
    mask = buf[pos : pos + 4]
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[pos + 4 : pos + 4 + n]))
    return fin, opcode, data, pos + 4 + n


class EchoServer(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.buffers = {}
        self.closed = set()

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.on_headers(ev)
            elif isinstance(ev, DataReceived) and ev.stream_id in self.buffers:
                self.on_data(ev)
        self.transmit()

    def on_headers(self, ev):
        h = dict(ev.headers)
        if h.get(b":method") != b"CONNECT" or b":protocol" not in h:
            self.h3.send_headers(ev.stream_id, [(b":status", b"405")], end_stream=True)
            return
        if h[b":protocol"] != b"websocket":
            self.h3.send_headers(ev.stream_id, [(b":status", b"501")], end_stream=True)
            return
        if h.get(b"sec-websocket-version") != b"13":
            self.h3.send_headers(
                ev.stream_id,
                [(b":status", b"400"), (b"sec-websocket-version", b"13")],
                end_stream=True,
            )
            return
        self.buffers[ev.stream_id] = bytearray()
        self.h3.send_headers(
            ev.stream_id, [(b":status", b"200"), (b"server", SERVER_HEADER)]
        )

    def on_data(self, ev):
        sid = ev.stream_id
        buf = self.buffers[sid]
        buf += ev.data
        while sid not in self.closed:
            got = take_client_frame(buf)
            if got is None:
                break
            fin, opcode, payload, used = got
            del buf[:used]
            if opcode == 0x8:
                self.closed.add(sid)
                self.h3.send_data(sid, server_frame(0x8, payload[:2]), end_stream=True)
            elif opcode == 0x9:
                self.h3.send_data(sid, server_frame(0xA, payload), end_stream=False)
            elif opcode in (0x0, 0x1, 0x2):
                # Echo frame by frame (fragments keep their opcodes and FIN).
                head = (0x80 if fin else 0) | opcode
                frame = server_frame(0, payload)
                self.h3.send_data(sid, bytes([head]) + frame[1:], end_stream=False)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cert")
    p.add_argument("key")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--lifetime", type=float, default=60.0)
    args = p.parse_args()
    cfg = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    cfg.load_cert_chain(args.cert, args.key)
    server = await serve(args.host, args.port, configuration=cfg, create_protocol=EchoServer)
    port = server._transport.get_extra_info("sockname")[1]
    print(f"listening {port}", flush=True)
    try:
        await asyncio.sleep(args.lifetime)
    finally:
        server.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
