#!/usr/bin/env python3
"""Turns bench/proxy.sh's results.jsonl into the median table and switchyard's ratios to nginx
and HAProxy, with issue 4's targets.

Usage: python3 bench/proxy_report.py RESULTS.jsonl
"""
import json
import statistics
import sys

CLK_TCK = 100  # USER_HZ on Linux
ORDER = ["switchyard-transparent", "switchyard-auto", "nginx", "haproxy"]
OURS = [p for p in ORDER if p.startswith("switchyard")]
PEERS = ["nginx", "haproxy"]
CASES = {
    "a": "(a) 100 conns x 16 B text, 1 in flight",
    "c": "(c) 10 conns x 64 KiB binary, 1 in flight",
    "d": "(d) handshakes through the proxy (32 conc.)",
    "e": "(e) memory per idle proxied connection",
}
W0 = 46


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def med(d, key):
    v = d.get(key)
    return statistics.median(v) if v else None


def fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def main(path):
    rows = load(path)
    proxies = [p for p in ORDER if any(r["proxy"] == p for r in rows)]
    cases = [c for c in CASES if any(r["case"] == c for r in rows)]
    rate, mbps, cpu_us, be_us, util, p50, p99, lg_cpu, errors, failures = ({} for _ in range(10))
    for r in rows:
        key = (r["case"], r["proxy"])
        if "error" in r:
            failures.setdefault(key, []).append(r["error"])
            continue
        j = json.loads(r["load"])
        errors[key] = errors.get(key, 0) + int(j.get("errors", 0))
        if r["case"] == "e":
            n = max(int(j["ready"]), 1)
            rate.setdefault(key, []).append((int(r["rss1_kib"]) - int(r["rss0_kib"])) * 1024 / n)
            continue
        rate.setdefault(key, []).append(j.get("msgs_per_s", j.get("handshakes_per_s", 0.0)))
        if "mb_per_s" in j:
            mbps.setdefault(key, []).append(j["mb_per_s"])
        total = j.get("messages_total", j.get("handshakes_total", 0))
        ticks = int(r["proxy_ticks"])
        if total:
            cpu_us.setdefault(key, []).append(ticks / CLK_TCK / total * 1e6)
            be_us.setdefault(key, []).append(int(r["backend_ticks"]) / CLK_TCK / total * 1e6)
        wall = float(r["wall1"]) - float(r["wall0"])
        if wall > 0:
            util.setdefault(key, []).append(ticks / CLK_TCK / wall)
        p50.setdefault(key, []).append(j["p50_us"])
        p99.setdefault(key, []).append(j["p99_us"])
        if j.get("client_cpu") is not None:
            lg_cpu.setdefault(key, []).append(j["client_cpu"])

    rounds = max((len(v) for v in rate.values()), default=0)
    # (label, unit, dict, case, digits, higher_is_better)
    lines = []
    for c in cases:
        if c == "e":
            lines.append((CASES[c], "B/conn", rate, c, 0, False))
            continue
        unit = "hs/s" if c == "d" else "msgs/s"
        lines.append((CASES[c], unit, rate, c, 0, True))
        if c == "c":
            lines.append(("    payload throughput", "MB/s", mbps, c, 1, True))
        lines.append(("    proxy CPU per " + ("handshake" if c == "d" else "message"),
                      "us", cpu_us, c, 2, False))

    print()
    print(f"Medians over {rounds} round(s).")
    head = f"{'case':{W0}} {'unit':7}" + "".join(f" {p:>23}" for p in proxies)
    print(head)
    print("-" * len(head))
    for label, unit, d, c, digits, _ in lines:
        print(f"{label:{W0}} {unit:7}" + "".join(f" {fmt(med(d, (c, p)), digits):>23}" for p in proxies))

    peers = [p for p in PEERS if p in proxies]
    ours = [p for p in OURS if p in proxies]
    if ours and peers:
        print()
        print("Ratio switchyard / peer (medians; rates: > 1 is better; CPU and memory: < 1 is better).")
        cols = [(o, p) for o in ours for p in peers]
        head = f"{'case':{W0}} {'unit':7}" + "".join(
            f" {o.replace('switchyard-', 'sy-') + ' / ' + p:>23}" for o, p in cols)
        print(head)
        print("-" * len(head))
        for label, unit, d, c, _, _ in lines:
            line = f"{label:{W0}} {unit:7}"
            for o, p in cols:
                a, b = med(d, (c, o)), med(d, (c, p))
                line += f" {fmt(a / b if a is not None and b else None, 2):>23}"
            print(line)

        if "nginx" in proxies:
            print()
            print("Issue 4's targets (against nginx):")
            for o in ours:
                for c, what, check in targets(rate, cpu_us):
                    if c not in cases:
                        continue
                    print(f"  {o:24} {what:58} {check(o)}")

    print()
    print("Details (medians): CPU per message (handshake in (d)) of the proxy and of the echo")
    print("backend (us), proxy CPU use, latency p50/p99 (us), load-generator CPU use, errors summed.")
    head = (f"{'case':5} {'proxy':24} {'proxy us':>9} {'backend us':>10} {'proxy cpu':>9} "
            f"{'p50 us':>10} {'p99 us':>10} {'lg cpu':>7} {'errors':>7}")
    print(head)
    print("-" * len(head))
    pct = lambda x: "-" if x is None else f"{100 * x:.0f}%"
    for c in cases:
        for p in proxies:
            key = (c, p)
            fail = failures.get(key)
            if c == "e" and not fail:
                continue
            print(f"({c})   {p:24} {fmt(med(cpu_us, key), 2):>9} {fmt(med(be_us, key), 2):>10} "
                  f"{pct(med(util, key)):>9} {fmt(med(p50, key), 1):>10} {fmt(med(p99, key), 1):>10} "
                  f"{pct(med(lg_cpu, key)):>7} {errors.get(key, 0):>7}"
                  + (f"  FAILED x{len(fail)}: {fail[0]}" if fail else ""))


def targets(rate, cpu_us):
    def ratio_check(d, c, goal, higher):
        def check(o):
            a, b = med(d, (c, o)), med(d, (c, "nginx"))
            if a is None or not b:
                return "(no result)"
            r = a / b
            ok = r >= goal if higher else r <= goal
            return f"{'yes' if ok else 'NO'} ({r:.2f}x)"
        return check

    def mem_check(o):
        v = med(rate, ("e", o))
        return "(no result)" if v is None else f"{'yes' if v <= 4096 else 'NO'} ({v:.0f} B)"

    return [
        ("a", "(a) proxy CPU per message <= 0.5x nginx's", ratio_check(cpu_us, "a", 0.5, False)),
        ("c", "(c) msgs/s (64 KiB) >= 3x nginx's", ratio_check(rate, "c", 3.0, True)),
        ("d", "(d) handshakes/s >= 2x nginx's", ratio_check(rate, "d", 2.0, True)),
        ("e", "(e) <= 4096 B per idle proxied connection", mem_check),
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: proxy_report.py RESULTS.jsonl")
    main(sys.argv[1])
