#!/usr/bin/env python3
"""Summarise an Autobahn|TestSuite fuzzingclient report (index.json) and give a verdict.

Usage: autobahn_summary.py INDEX_JSON [--agent NAME] [--summary-md FILE]

A case passes when both its `behavior` and its `behaviorClose` are OK or INFORMATIONAL;
anything else (NON-STRICT, FAILED, UNIMPLEMENTED, WRONG CODE, UNCLEAN, ...) fails it.
Prints a table per case group and every failing case. Exit status: 0 when all cases
passed, 1 when one failed or no case was found, 2 when the report cannot be read.
Used by scripts/autobahn.sh; only the Python 3 standard library is needed.
"""
import argparse
import json
import sys
from collections import OrderedDict

PASSING = ("OK", "INFORMATIONAL")
# Case groups of the suite (there is no group 8 in Autobahn|TestSuite 0.8.2).
GROUP_NAMES = {
    "1": "Framing",
    "2": "Pings/Pongs",
    "3": "Reserved bits",
    "4": "Opcodes",
    "5": "Fragmentation",
    "6": "UTF-8 handling",
    "7": "Close handling",
    "9": "Limits/performance",
    "10": "Miscellaneous",
    "12": "permessage-deflate",
    "13": "permessage-deflate",
}
COLUMNS = ("OK", "INFORMATIONAL", "NON-STRICT", "FAILED/other")


def case_key(case_id):
    return tuple(int(p) if p.isdigit() else 0 for p in case_id.split("."))


def outcome(result):
    """The worst of behavior and behaviorClose, as one of COLUMNS."""
    rank = {"OK": 0, "INFORMATIONAL": 1, "NON-STRICT": 2}
    worst = 0
    for key in ("behavior", "behaviorClose"):
        worst = max(worst, rank.get(result.get(key), 3))
    return COLUMNS[worst]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("index_json")
    ap.add_argument("--agent", default="uringcast")
    ap.add_argument("--summary-md", metavar="FILE")
    args = ap.parse_args()

    try:
        with open(args.index_json) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print("cannot read the Autobahn report %s: %s" % (args.index_json, e), file=sys.stderr)
        return 2
    if args.agent not in index:
        print("no results for agent %r in %s (agents: %s)"
              % (args.agent, args.index_json, ", ".join(sorted(index)) or "none"), file=sys.stderr)
        return 2
    results = index[args.agent]
    if not results:
        print("no test case was run", file=sys.stderr)
        return 1

    groups = OrderedDict()
    failing = []
    for case_id in sorted(results, key=case_key):
        r = results[case_id]
        o = outcome(r)
        g = groups.setdefault(case_id.split(".")[0], dict.fromkeys(COLUMNS, 0))
        g[o] += 1
        if not (r.get("behavior") in PASSING and r.get("behaviorClose") in PASSING):
            failing.append((case_id, r))
    total = {c: sum(g[c] for g in groups.values()) for c in COLUMNS}
    n = len(results)

    rows = []
    for name, g in groups.items():
        label = ("%s %s" % (name, GROUP_NAMES.get(name, ""))).rstrip()
        rows.append([label, str(sum(g.values()))] + [str(g[c]) for c in COLUMNS])
    rows.append(["total", str(n)] + [str(total[c]) for c in COLUMNS])

    header = ["case group", "cases"] + list(COLUMNS)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join("%%-%ds" % w if i == 0 else "%%%ds" % w for i, w in enumerate(widths))
    print("Autobahn|TestSuite results for %s: %d cases, %d failing" % (args.agent, n, len(failing)))
    print(fmt % tuple(header))
    for r in rows:
        print(fmt % tuple(r))
    if failing:
        print("\nFailing cases (%d):" % len(failing))
        for case_id, r in failing:
            print("  %-8s behavior=%s behaviorClose=%s remoteCloseCode=%s"
                  % (case_id, r.get("behavior"), r.get("behaviorClose"), r.get("remoteCloseCode")))

    if args.summary_md:
        md = ["| " + " | ".join(header) + " |",
              "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
        for r in rows:
            cells = ["**%s**" % c for c in r] if r[0] == "total" else r
            md.append("| " + " | ".join(cells) + " |")
        if failing:
            md.append("")
            md.append("Cases that did not pass (behavior / behaviorClose):")
            md.append("")
            for case_id, r in failing:
                md.append("- %s: %s / %s" % (case_id, r.get("behavior"), r.get("behaviorClose")))
        with open(args.summary_md, "w") as f:
            f.write("\n".join(md) + "\n")

    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
