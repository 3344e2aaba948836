#!/usr/bin/env python3
"""WebSocket over HTTP/3 (RFC 9220) with aioquic as the third-party client.

Usage: h3_aioquic.py HOST PORT [--cafile PEM] [--server-name NAME] [--path /p]

Connects with QUIC + HTTP/3 (ALPN h3), waits for the server's SETTINGS and
checks SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, sends an extended CONNECT with
:protocol websocket, expects 200, sends one masked text frame (encoded here
by hand), expects the same text back unmasked, then a close handshake
(1000). Exits 0 on success, 1 with a message on failure.
"""

import argparse
import asyncio
import os
import ssl
import struct
import sys
import traceback

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration

ENABLE_CONNECT_PROTOCOL = 0x08
TIMEOUT = 10.0


class WebSocketOverH3(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.stream_id = None
        self.response = asyncio.get_running_loop().create_future()
        self.received = bytearray()
        self.more = asyncio.Event()
        self.ended = False

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if getattr(ev, "stream_id", None) != self.stream_id:
                continue
            if isinstance(ev, HeadersReceived) and not self.response.done():
                self.response.set_result(dict(ev.headers))
            elif isinstance(ev, DataReceived):
                self.received += ev.data
                if ev.stream_ended:
                    self.ended = True
                self.more.set()
        # Settings arrive on the control stream; wake up waiters.
        self.more.set()

    async def wait_for(self, predicate, what):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while not predicate():
            self.more.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            try:
                await asyncio.wait_for(self.more.wait(), left)
            except asyncio.TimeoutError:
                raise TimeoutError(f"timed out waiting for {what}") from None

    def send(self, data, end=False):
        self.h3.send_data(self.stream_id, data, end_stream=end)
        self.transmit()


def masked_frame(opcode, payload):
    """One final frame, client-to-server (masked), RFC 6455 section 5.2."""
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def parse_frame(buf):
    """(opcode, payload, consumed) of one unmasked server frame, or None."""
    if len(buf) < 2:
        return None
    opcode = buf[0] & 0x0F
    if buf[1] & 0x80:
        raise ValueError("server frame is masked")
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
    if len(buf) < pos + n:
        return None
    return opcode, bytes(buf[pos : pos + n]), pos + n


async def run(args):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    cfg.server_name = args.server_name
    if args.cafile:
        cfg.load_verify_locations(args.cafile)
    else:
        cfg.verify_mode = ssl.CERT_NONE
    async with connect(
        args.host, args.port, configuration=cfg, create_protocol=WebSocketOverH3
    ) as client:
        await client.wait_for(
            lambda: client.h3.received_settings is not None, "the server's SETTINGS"
        )
        settings = client.h3.received_settings
        if settings.get(ENABLE_CONNECT_PROTOCOL) != 1:
            raise RuntimeError(f"server SETTINGS lack ENABLE_CONNECT_PROTOCOL=1: {settings}")

        client.stream_id = client._quic.get_next_available_stream_id()
        authority = f"{args.server_name}:{args.port}".encode()
        client.h3.send_headers(
            client.stream_id,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":authority", authority),
                (b":path", args.path.encode()),
                (b"sec-websocket-version", b"13"),
                (b"user-agent", b"aioquic-interop"),
            ],
        )
        client.transmit()
        headers = await asyncio.wait_for(client.response, TIMEOUT)
        status = headers.get(b":status")
        if status != b"200":
            raise RuntimeError(f"expected :status 200, got {status!r} ({headers})")

        text = "hello from aioquic over HTTP/3 \u2713".encode()
        client.send(masked_frame(0x1, text))
        await client.wait_for(lambda: parse_frame(client.received) is not None, "the echo")
        opcode, payload, used = parse_frame(client.received)
        del client.received[:used]
        if (opcode, payload) != (0x1, text):
            raise RuntimeError(f"bad echo: opcode {opcode} payload {payload!r}")

        client.send(masked_frame(0x8, struct.pack("!H", 1000) + b"bye"))
        await client.wait_for(lambda: parse_frame(client.received) is not None, "the close")
        opcode, payload, _ = parse_frame(client.received)
        if opcode != 0x8 or payload[:2] != struct.pack("!H", 1000):
            raise RuntimeError(f"bad close reply: opcode {opcode} payload {payload!r}")
        # RFC 6455 section 7.1.1: the server ends the transport first: its
        # FIN (and a STOP_SENDING H3_NO_ERROR for our side, which is done).
        await client.wait_for(lambda: client.ended, "the server to finish the stream")
    print(f"ok: WebSocket over HTTP/3 with aioquic, echo of {len(text)} bytes and close 1000")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--cafile")
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--path", default="/")
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except Exception as e:  # report any failure as exit 1 with the reason
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("H3_AIOQUIC_DEBUG"):
            traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
