#!/usr/bin/env python3
"""Turns bench/run.sh's results.jsonl into the median table and our ratios to each peer.

Usage: python3 bench/report.py RESULTS.jsonl
"""
import json
import os
import statistics
import sys

CLK_TCK = 100  # USER_HZ on Linux
# The server the ratios are for: run.sh --ours NAME sets it (the axum comparison).
OURS = os.environ.get("BENCH_OURS", "switchyard")
SERVER_ORDER = ["switchyard", "fastwebsockets", "tokio-tungstenite", "tokio-websockets",
                "uwebsockets-js", "axum-switchyard", "axum-fastwebsockets", "axum-tungstenite"]
# Shown with the others, but not a peer: not counted in the targets (see its source).
NOT_PEERS = {"io-uring-sketch", "switchyard-epoll"}
CASES = {
    "a": "(a) 100 conns x 16 B text, 1 in flight",
    "b": "(b) 100 conns x 16 B text, 16 in flight",
    "c": "(c) 10 conns x 64 KiB binary, 1 in flight",
    "d": "(d) handshakes (32 concurrent)",
    "e": "(e) memory per idle connection",
    "f": "(f) wss h1: 100 conns x 16 B, 1 in flight",
    "g": "(g) HTTP/2 TLS: 100 streams on 1 conn",
    "h": "(h) HTTP/2 TLS: 100 conns x 1 stream",
}
UNITS = {
    "a": "msgs/s", "b": "msgs/s", "c": "msgs/s", "d": "hs/s", "e": "B/conn",
    "f": "msgs/s", "g": "msgs/s", "h": "msgs/s",
}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def main(path, lg_cores=1):
    rows = load(path)
    servers = [s for s in SERVER_ORDER if any(r["server"] == s for r in rows)]
    servers += sorted({r["server"] for r in rows} - set(servers))
    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    # metric[case][server] = list of per-round values; extra detail lists too.
    metric, mbps, cpu_us, lg_us, util, p50, p99, lg_cpu, errors, failures = ({} for _ in range(10))
    p999 = {}
    srv_busy, lg_busy = {}, {}
    by_round = {}  # (case, round) -> {server: rate}
    for r in rows:
        key = (r["case"], r["server"])
        if "error" in r:
            failures.setdefault(key, []).append(r["error"])
            continue
        j = json.loads(r["load"])
        errors[key] = errors.get(key, 0) + int(j.get("errors", 0))
        if r["case"] == "e":
            n = max(int(j["ready"]), 1)
            delta = (int(r["rss1_kib"]) - int(r["rss0_kib"])) * 1024 / n
            metric.setdefault(key, []).append(delta)
            continue
        rate = j.get("msgs_per_s", j.get("handshakes_per_s", 0.0))
        metric.setdefault(key, []).append(rate)
        by_round.setdefault((r["case"], r["round"]), {})[r["server"]] = rate
        if "mb_per_s" in j:
            mbps.setdefault(key, []).append(j["mb_per_s"])
        total = j.get("messages_total", j.get("handshakes_total", 0))
        ticks = int(r["server_ticks"])
        if total:
            cpu_us.setdefault(key, []).append(ticks / CLK_TCK / total * 1e6)
            if j.get("client_cpu_seconds") is not None:
                lg_us.setdefault(key, []).append(j["client_cpu_seconds"] / total * 1e6)
        wall = float(r["wall1"]) - float(r["wall0"])
        if wall > 0:
            util.setdefault(key, []).append(ticks / CLK_TCK / wall)
        p50.setdefault(key, []).append(j["p50_us"])
        p99.setdefault(key, []).append(j["p99_us"])
        if "p999_us" in j:
            p999.setdefault(key, []).append(j["p999_us"])
        if j.get("client_cpu") is not None:
            lg_cpu.setdefault(key, []).append(j["client_cpu"])
        # Busy time of the cores themselves (older results files do not have it).
        for dest, field in ((srv_busy, "server_cpu"), (lg_busy, "load_cpu")):
            b = cores_busy(j.get("cpu_busy"), r.get(field))
            if b is not None:
                dest.setdefault(key, []).append(b)

    def med(d, key):
        v = d.get(key)
        return statistics.median(v) if v else None

    def fmt(x, digits=0):
        if x is None:
            return "-"
        return f"{x:,.{digits}f}"

    rounds = max((len(v) for v in metric.values()), default=0)
    print()
    print(f"Medians over {rounds} round(s); higher is better except (e).")
    w0 = 44
    head = f"{'case':{w0}} {'unit':7}" + "".join(f" {s:>18}" for s in servers)
    print(head)
    print("-" * len(head))
    for c in cases:
        line = f"{CASES[c]:{w0}} {UNITS[c]:7}"
        for s in servers:
            line += f" {fmt(med(metric, (c, s))):>18}"
        print(line)
        if c == "c":
            line = f"{'    payload throughput':{w0}} {'MB/s':7}"
            for s in servers:
                line += f" {fmt(med(mbps, (c, s)), 1):>18}"
            print(line)

    if OURS in servers:
        peers = [s for s in servers if s != OURS]
        real_peers = [p for p in peers if p not in NOT_PEERS]  # the ones the targets count
        print()
        print(f"Ratio {OURS} / peer (medians; > 1 is better for (a)-(d), < 1 is better for (e)).")
        head = f"{'case':{w0}}" + "".join(f" {'vs ' + p:>22}" for p in peers) + "  target -> met?"
        print(head)
        print("-" * len(head))
        for c in cases:
            ours = med(metric, (c, OURS))
            line = f"{CASES[c]:{w0}}"
            for p in peers:
                peer = med(metric, (c, p))
                ratio = ours / peer if ours is not None and peer else None
                line += f" {fmt(ratio, 2):>22}"
            tail = lambda s: Tail(med(p99, (c, s)), med(p999, (c, s)))
            line += "  " + target(
                c, ours, {p: med(metric, (c, p)) for p in real_peers},
                tail(OURS), {p: tail(p) for p in real_peers},
            )
            print(line)

        # Rounds are interleaved, so each round's ratio to the best peer of that same round
        # shows how much of a median difference is noise.
        def best_peer(v):
            return max((rate for n, rate in v.items() if n in real_peers), default=0)

        spread = []
        for c in ("a", "c", "d"):
            ratios = sorted(
                v[OURS] / best_peer(v)
                for (rc, _), v in by_round.items()
                if rc == c and OURS in v and best_peer(v)
            )
            if ratios:
                ahead = sum(x >= 1 for x in ratios)
                spread.append(
                    f"({c}) min {ratios[0]:.3f}  median {statistics.median(ratios):.3f}  "
                    f"max {ratios[-1]:.3f}  rounds at or above: {ahead}/{len(ratios)}"
                )
        if spread:
            print()
            print(f"Per round, {OURS} / the fastest peer of that round:")
            for line in spread:
                print("  " + line)

        print()
        print(f"Server CPU per message, peer / {OURS} (medians; > 1: {OURS} needs less CPU per")
        print("message or handshake; unlike msgs/s this does not depend on how much CPU the machine gave).")
        cpu_cases = [c for c in cases if c != "e"]
        head = f"{'case':{w0}}" + "".join(f" {'vs ' + p:>22}" for p in peers)
        print(head)
        print("-" * len(head))
        for c in cpu_cases:
            ours = med(cpu_us, (c, OURS))
            line = f"{CASES[c]:{w0}}"
            for p in peers:
                peer = med(cpu_us, (c, p))
                ratio = peer / ours if ours and peer is not None else None
                line += f" {fmt(ratio, 2):>22}"
            print(line)

    print()
    print("Details (medians): server and load-generator CPU per message (us; per handshake in (d)),")
    print("server CPU use, latency p50/p99/p99.9 (us), load-generator CPU use, errors summed over rounds;")
    print("'core' columns: how busy the server's core and the load generator's cores were, counting")
    print("what the kernel did there for other processes' packets (softirq), which 'cpu' does not.")
    head = (
        f"{'case':5} {'server':18} {'srv us/msg':>11} {'lg us/msg':>10} {'srv cpu':>8} "
        f"{'p50 us':>10} {'p99 us':>10} {'p99.9 us':>10} {'lg cpu':>7} {'srv core':>9} {'lg core':>8} {'errors':>7}"
    )
    print(head)
    print("-" * len(head))
    for c in cases:
        for s in servers:
            key = (c, s)
            if c == "e" and key not in failures:
                continue  # no CPU or latency figures for the idle-memory case
            fail = failures.get(key)
            pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"
            print(
                f"({c})   {s:18} {fmt(med(cpu_us, key), 2):>11} {fmt(med(lg_us, key), 2):>10} "
                f"{pct(med(util, key)):>8} "
                f"{fmt(med(p50, key), 1):>10} {fmt(med(p99, key), 1):>10} {fmt(med(p999, key), 1):>10} "
                f"{pct(med(lg_cpu, key)):>7} "
                f"{pct(med(srv_busy, key)):>9} {pct(med(lg_busy, key)):>8} "
                f"{errors.get(key, 0):>7}" + (f"  FAILED x{len(fail)}: {fail[0]}" if fail else "")
            )
    saturated = [
        f"({c}) {s}"
        for c in cases
        for s in servers
        if max(med(lg_cpu, (c, s)) or 0, med(lg_busy, (c, s)) or 0) >= 0.9
    ]
    if saturated:
        print()
        print("WARNING: the load generator or its cores were >= 90% busy for " + ", ".join(saturated))
        print("         those numbers are lower bounds for the server, not its capacity.")
    # With one core each, the side that needs more CPU per message sets the rate.
    heavy = [
        f"({c}) {s}"
        for c in cases
        for s in servers
        if med(lg_us, (c, s)) is not None
        and med(cpu_us, (c, s))
        and med(lg_us, (c, s)) >= 0.8 * med(cpu_us, (c, s)) * lg_cores
    ]
    if heavy:
        print()
        print("NOTE: the load generator needs >= 80% of the server's CPU per message for " + ", ".join(heavy) + ";")
        print("      on loopback both sides pay mostly kernel TCP time, so with as many load cores as")
        print("      server cores these msgs/s are bounded by the pair: compare 'srv us/msg' there.")


def cores_busy(busy, spec):
    """Mean busy fraction of the CPUs in the taskset list `spec` ("1", "1-3", "0,2"),
    from the load generator's `cpu_busy` (CPU number as a string -> fraction)."""
    if not busy or not spec:
        return None
    cpus = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    vals = [busy[str(c)] for c in sorted(cpus) if str(c) in busy]
    return sum(vals) / len(vals) if vals else None


class Tail:
    """Latency p99 and p99.9 (us, medians over rounds; None when not recorded)."""

    def __init__(self, p99, p999):
        self.p99, self.p999 = p99, p999

    def no_worse_than(self, other):
        pairs = [(a, b) for a, b in ((self.p99, other.p99), (self.p999, other.p999)) if b is not None]
        return all(a is not None and a <= b for a, b in pairs)

    def __str__(self):
        fmt = lambda x: "-" if x is None else f"{x:,.0f}"
        return f"p99 {fmt(self.p99)} / p99.9 {fmt(self.p999)} us"


def target(case, ours, peers, our_tail, peer_tails):
    """The case's target against the peer it names; a rate target is met only with a tail
    (p99 and p99.9) no worse than that peer's: a rate bought with a worse tail does not count."""
    known = {p: v for p, v in peers.items() if v is not None}
    if ours is None:
        return f"(no result for {OURS})"

    def verdict(peer, needed):
        if ours < needed:
            return "NO"
        if not our_tail.no_worse_than(peer_tails[peer]):
            return f"NO: tail worse than {peer}'s ({our_tail} against {peer_tails[peer]})"
        return "yes"

    if case in ("a", "c", "d"):
        if not known:
            return ">= fastest peer -> (no peer result)"
        peer, best = max(known.items(), key=lambda kv: kv[1])
        return f">= fastest peer, tail no worse -> {verdict(peer, best)} ({ours / best:.2f}x)"
    if case == "b":
        fw = known.get("fastwebsockets")
        if fw is None:
            return ">= 5x fastwebsockets -> (no fastwebsockets result)"
        return f">= 5x fastwebsockets, tail no worse -> {verdict('fastwebsockets', 5 * fw)} ({ours / fw:.2f}x)"
    if case in ("f", "g", "h"):
        return "(switchyard only: compare with (a))"
    if case == "e":
        return f"<= 2048 B/conn -> {'yes' if ours <= 2048 else 'NO'} ({ours:.0f} B)"
    return ""


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: report.py RESULTS.jsonl [LOAD_GENERATOR_CORES]")
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
