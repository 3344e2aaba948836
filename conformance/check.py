#!/usr/bin/env python3
"""Compare a kosoku (Autobahn TestSuite) report with the expected results kept in the repo.

usage: check.py REPORT_DIR EXPECTED_JSON [--write]

Fails (exit 1) when the number of cases differs from the expected file, when any
case's behavior or behaviorClose differs from the expected one (durations are
ignored), or when any case is anything but OK or INFORMATIONAL. With --write,
records the report as the new expected results (only if every case is clean).
"""
import json
import sys
from pathlib import Path

CLEAN = {"OK", "INFORMATIONAL"}


def case_key(case_id):
    return tuple(int(p) for p in case_id.split("."))


def load_report(report_dir):
    index = json.loads((Path(report_dir) / "index.json").read_text())
    results = {}
    for agent_cases in index.values():
        for case_id, r in agent_cases.items():
            results[case_id] = {
                "behavior": r["behavior"],
                "behaviorClose": r["behaviorClose"],
                "remoteCloseCode": r.get("remoteCloseCode"),
            }
    return dict(sorted(results.items(), key=lambda kv: case_key(kv[0])))


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    report_dir, expected_path = sys.argv[1], Path(sys.argv[2])
    got = load_report(report_dir)
    unclean = {c: r for c, r in got.items() if r["behavior"] not in CLEAN or r["behaviorClose"] not in CLEAN}
    for c, r in unclean.items():
        print(f"NOT CLEAN {c}: behavior={r['behavior']} behaviorClose={r['behaviorClose']}")
    if "--write" in sys.argv[3:]:
        if unclean:
            print(f"refusing to record: {len(unclean)} cases are not OK/INFORMATIONAL")
            return 1
        # One line per case, so a change reads as a one-line diff.
        lines = [f"  {json.dumps(c)}: {json.dumps(r)}" for c, r in got.items()]
        expected_path.write_text("{\n" + ",\n".join(lines) + "\n}\n")
        print(f"recorded {len(got)} cases in {expected_path}")
        return 0
    expected = json.loads(expected_path.read_text())
    diffs = 0
    for c in sorted(set(expected) | set(got), key=case_key):
        e, g = expected.get(c), got.get(c)
        if e is None:
            print(f"UNEXPECTED case {c} (not in {expected_path.name})")
        elif g is None:
            print(f"MISSING case {c}: expected {e['behavior']}/{e['behaviorClose']}, not run")
        elif (e["behavior"], e["behaviorClose"], e.get("remoteCloseCode")) != (g["behavior"], g["behaviorClose"], g.get("remoteCloseCode")):
            print(f"REGRESSION {c}: expected {e}, got {g}")
        else:
            continue
        diffs += 1
    ok = len(got) - len(unclean)
    status = "passed" if not diffs and not unclean else "failed"
    print(f"autobahn {report_dir}: {ok} passed, {len(unclean)} failed ({diffs} differ from {expected_path.name}) -> {status}")
    return 0 if status == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
