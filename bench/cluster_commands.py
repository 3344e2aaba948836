#!/usr/bin/env python3
"""Redis commands per message of a fallback session in a cluster, from
`INFO commandstats` (docs/cluster.md, bench/README.md).

Starts its own redis-server, a Python `websockets` backend that discards
what it gets (.venv, from scripts/install-test-deps.sh) and two
`switchyard serve` with [cluster] on loopback ports: every session is
opened on the first (its owner) and every other request goes to the
second, so that each one crosses instances (the worst case; a request on
the owner's instance may cost less). Each message is its own `send`,
answered before the next (no batching: the worst case):

* exchange, poll: the echo route, each echo read back by its own `poll`;
* exchange, SSE: the echo route, each echo awaited on one event stream;
* client to backend: the discarding backend, sends only.

It prints the commands Redis ran per message by command, then all
commands per message and direction (a script's inner ones included: what
costs Redis CPU, as INFO commandstats counts them); the backend to client
share is an exchange less a client-to-backend message.
Last, the caps' cost per connection on a capped route.

usage: bench/cluster_commands.py [path/to/switchyard] [N]
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start on port {port}")


def redis_cli(port, *args):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), *args], check=True, capture_output=True, text=True
    )
    return out.stdout


def commandstats(port):
    stats = {}
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_") :].split(":", 1)
            fields = dict(kv.split("=") for kv in rest.split(","))
            stats[name] = int(fields["calls"])
    return stats


SINK = """
import asyncio, sys, websockets
async def sink(ws):
    async for _ in ws:
        pass
async def main():
    async with websockets.serve(sink, "127.0.0.1", int(sys.argv[1])):
        await asyncio.Future()
asyncio.run(main())
"""


def http(method, url, body=None, ctype=None):
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("content-type", ctype)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def open_session(base, path, serve=None):
    """Open on `base`; the session's other requests go to `serve`."""
    _, body = http("POST", f"{base}{path}?sw=open", b"{}", "application/json")
    s = json.loads(body)
    return f"{serve or base}{path}?sid={s['sid']}&token={s['token']}"


def send(q, i):
    st, _ = http("POST", f"{q}&sw=send&seq={i}", f"m{i}".encode(), "text/plain; charset=utf-8")
    assert st == 200, st


def exchange_poll(base, other, count):
    q = open_session(base, "/echo", other)
    seen = 0
    for i in range(1, count + 1):
        send(q, i)
        while seen < i:
            _, got = http("GET", f"{q}&sw=poll&after={seen}")
            for e in json.loads(got).get("messages", []):
                seen = max(seen, e["seq"])


def exchange_sse(base, other, count):
    q = open_session(base, "/echo", other)
    seen = 0
    stream = None
    try:
        for i in range(1, count + 1):
            send(q, i)
            while seen < i:
                if stream is None:
                    req = urllib.request.Request(f"{q}&sw=sse")
                    req.add_header("last-event-id", str(seen))
                    stream = urllib.request.urlopen(req, timeout=30)
                line = stream.readline()
                if not line:  # the response ended (its budget): resume
                    stream.close()
                    stream = None
                elif line.startswith(b"id: "):
                    seen = int(line[4:])
    finally:
        if stream:
            stream.close()


def sends_only(base, other, count):
    q = open_session(base, "/sink", other)
    for i in range(1, count + 1):
        send(q, i)


def measure(rport, run):
    """Commands by name while `run` runs."""
    before = commandstats(rport)
    run()
    after = commandstats(rport)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: v for k, v in diff.items() if v > 0 and k != "info"}


def report(title, diff, n):
    print(f"\n{title}")
    print(f"{'command':<24}{'calls':>10}{'per message':>14}")
    for k, v in sorted(diff.items(), key=lambda kv: -kv[1]):
        print(f"{k:<24}{v:>10}{v / n:>14.2f}")
    total = sum(diff.values())
    print(f"{'all commands':<24}{total:>10}{total / n:>14.2f}")
    return total / n


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/ci/switchyard"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    rport, sport = free_port(), free_port()
    gports = [free_port(), free_port()]
    redis = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    sink = subprocess.Popen([".venv/bin/python", "-c", SINK, str(sport)])
    gws = []
    try:
        wait_port(rport, "redis-server")
        wait_port(sport, "the websockets backend")
        for i, gport in enumerate(gports):
            gws.append(start_gateway(binary, gport, sport, rport, i))
        for gport in gports:
            wait_port(gport, "switchyard")
        base, other = (f"http://127.0.0.1:{p}" for p in gports)

        # Warm-up: scripts loaded, connections made.
        exchange_poll(base, other, 5)
        exchange_sse(base, other, 5)
        sends_only(base, other, 5)
        print(f"{n} messages, each in its own send, answered before the next (no batching);")
        print("sessions owned by one instance, every other request on another")
        poll = report("exchange (one message each way), poll",
                      measure(rport, lambda: exchange_poll(base, other, n)), n)
        sse = report("exchange (one message each way), SSE",
                     measure(rport, lambda: exchange_sse(base, other, n)), n)
        up = report("client to backend only",
                    measure(rport, lambda: sends_only(base, other, n)), n)
        print("\nall commands per message (a script's inner ones included)")
        for name, total in (
            ("client to backend", up),
            ("backend to client, poll", poll - up),
            ("backend to client, SSE", sse - up),
        ):
            print(f"  {name:<24}{total:>10.2f}")

        # The caps: one session open and end on a capped route.
        diff = measure(rport, lambda: open_session(base, "/capped"))
        print("\nopening one session on a capped route (the open's own commands included):")
        for k, v in sorted(diff.items(), key=lambda kv: -kv[1]):
            print(f"{k:<24}{v:>10}")
    finally:
        for gw in gws:
            gw.terminate()
            gw.wait(timeout=30)
        sink.terminate()
        sink.wait(timeout=30)
        redis.terminate()
        redis.wait(timeout=30)


def start_gateway(binary, gport, sport, rport, i):
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(
        f'[[listener]]\naddress = "127.0.0.1:{gport}"\n'
        f'[[upstream]]\nname = "sink"\nservers = ["ws://127.0.0.1:{sport}/"]\n'
        '[[route]]\npath = "/echo"\napp = "echo"\n'
        '[[route]]\npath = "/sink"\nupstream = "sink"\n'
        '[[route]]\npath = "/capped"\napp = "echo"\n[route.policy]\nmax_connections = 1000\n'
        "max_connections_per_ip = 1000\n"
        f'[cluster]\nredis = "redis://127.0.0.1:{rport}/0"\nnode_id = "bench{i}"\n'
    )
    cfg.close()
    return subprocess.Popen(
        [binary, "serve", "--config", cfg.name, "--threads", "2"],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )


if __name__ == "__main__":
    main()
