#!/usr/bin/env python3
"""Redis commands per message of a fallback session in a cluster, from
`INFO commandstats` (docs/cluster.md, bench/README.md).

Starts its own redis-server and one `switchyard serve` with [cluster] on
loopback ports, opens a long-polling session on the echo route, then sends
N text messages, each in its own `send` and read back by its own `poll`
(no batching: the worst case), and prints the commands Redis ran per
message, by command, and the caps' cost per connection on a capped route.

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


def http(method, url, body=None, ctype=None):
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("content-type", ctype)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/ci/switchyard"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    rport, gport = free_port(), free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    gw = None
    try:
        wait_port(rport, "redis-server")
        cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        cfg.write(
            f'[[listener]]\naddress = "127.0.0.1:{gport}"\n'
            '[[route]]\npath = "/echo"\napp = "echo"\n'
            '[[route]]\npath = "/capped"\napp = "echo"\n[route.policy]\nmax_connections = 1000\n'
            "max_connections_per_ip = 1000\n"
            f'[cluster]\nredis = "redis://127.0.0.1:{rport}/0"\nnode_id = "bench"\n'
        )
        cfg.close()
        gw = subprocess.Popen(
            [binary, "serve", "--config", cfg.name, "--threads", "2"],
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        wait_port(gport, "switchyard")
        base = f"http://127.0.0.1:{gport}"

        def exchange(path, count):
            _, body = http("POST", f"{base}{path}?sw=open", b"{}", "application/json")
            s = json.loads(body)
            q = f"{base}{path}?sid={s['sid']}&token={s['token']}"
            seen = 0
            for i in range(1, count + 1):
                st, _ = http("POST", f"{q}&sw=send&seq={i}", f"m{i}".encode(),
                             "text/plain; charset=utf-8")
                assert st == 200, st
                while seen < i:
                    _, got = http("GET", f"{q}&sw=poll&after={seen}")
                    for e in json.loads(got).get("messages", []):
                        seen = max(seen, e["seq"])
            return q

        # Warm-up: scripts loaded, connections made.
        exchange("/echo", 5)
        before = commandstats(rport)
        exchange("/echo", n)
        after = commandstats(rport)
        diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        diff = {k: v for k, v in diff.items() if v > 0 and k != "info"}
        print(f"{n} messages each way, one send and one poll per message (no batching)")
        print(f"{'command':<24}{'calls':>10}{'per message':>14}")
        for k, v in sorted(diff.items(), key=lambda kv: -kv[1]):
            print(f"{k:<24}{v:>10}{v / n:>14.2f}")
        total = sum(diff.values())
        print(f"{'total':<24}{total:>10}{total / n:>14.2f}")
        print("(a script's inner commands count under their own names too;")
        print(" round trips are the evalsha + hgetall + other top-level rows)")

        # The caps: one session open and end on a capped route.
        before = commandstats(rport)
        exchange("/capped", 0)
        after = commandstats(rport)
        diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        diff = {k: v for k, v in diff.items() if v > 0 and k != "info"}
        print("\nopening one session on a capped route (the open's own commands included):")
        for k, v in sorted(diff.items(), key=lambda kv: -kv[1]):
            print(f"{k:<24}{v:>10}")
    finally:
        if gw:
            gw.terminate()
            gw.wait(timeout=30)
        redis.terminate()
        redis.wait(timeout=30)


if __name__ == "__main__":
    main()
