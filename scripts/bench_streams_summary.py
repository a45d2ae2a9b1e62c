#!/usr/bin/env python3
"""Medians of scripts/bench_streams.sh (or bench_brokers.sh) output, as Markdown tables.

Usage: scripts/bench_streams_summary.py OUTPUT.txt   (the script's stdout, saved with tee)
"""
import re
import statistics
import sys
from collections import defaultdict


def fields(words):
    """key value pairs of a result line's words"""
    return {words[i]: words[i + 1] for i in range(0, len(words) - 1)}


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, d=2):
    return f"{x:,.{d}f}"


fanout = defaultdict(list)  # label -> [(run, us)]
hop = defaultdict(list)  # label -> [(p50, p99, p999)]
ceiling = defaultdict(lambda: defaultdict(list))  # label -> rate -> [(status, us)]
recovery = defaultdict(list)  # label -> [fields]
run = 0
for line in open(sys.argv[1]):
    w = line.split()
    if not w:
        continue
    if w[0] == "==" and w[1] == "run":
        run = int(w[2])
    elif w[0] == "hop":
        f = fields(w[2:])
        hop[w[1]].append((int(f["p50_us"]), int(f["p99_us"]), int(f["p99.9_us"])))
    elif w[0] == "ceiling":
        f = fields(w[2:])
        ceiling[w[1]][int(f["rate"].rstrip("/s"))].append((w[-1], float(f["broker_us_per_publish"]), int(f["missing"])))
    elif w[0] == "recovery":
        recovery[w[1]].append(fields(w[2:]))
    elif len(w) > 2 and w[1] == "received" and "B_us_per_delivery" in w:
        f = fields(w[1:])
        fanout[w[0]].append((run, float(f["B_us_per_delivery"]), f["received"], int(f["missing"])))

if fanout:
    print("| broker | pub/sub µs per delivery (runs) | median | --history µs per delivery (runs) | median | ratio per run | median ratio |")
    print("|---|---|---:|---|---:|---|---:|")
    for name in ("redis", "cluster", "nats", "kafka"):
        hist = dict((r, us) for r, us, _, _ in fanout.get(f"{name}-history", []))
        ref_label = "redis" if name == "kafka" else name
        ref = dict((r, us) for r, us, _, _ in fanout.get(ref_label, []))
        if not hist:
            continue
        ratios = [hist[r] / ref[r] for r in sorted(hist) if r in ref and ref[r] > 0]
        refs = [ref[r] for r in sorted(ref)]
        hs = [hist[r] for r in sorted(hist)]
        print(f"| {name}{' (against Redis pub/sub)' if name == 'kafka' else ''} | {', '.join(fmt(x) for x in refs)} | {fmt(med(refs))} "
              f"| {', '.join(fmt(x) for x in hs)} | {fmt(med(hs))} | {', '.join(fmt(x) for x in ratios)} | **{fmt(med(ratios))}×** |")
    lost = [(l, r, rec, m) for l, v in fanout.items() for r, _, rec, m in v if m]
    print(f"\nfanout runs with missing deliveries: {lost or 'none'}\n")

if hop:
    local = hop.get("local", [])
    lp50 = med([p[0] for p in local]) if local else None
    lp99 = med([p[1] for p in local]) if local else None
    print("| configuration | p50 µs (runs) | median | p99 µs (runs) | median | p99.9 median | added p50 / p99 to local |")
    print("|---|---|---:|---|---:|---:|---|")
    for label, v in hop.items():
        p50 = [x[0] for x in v]; p99 = [x[1] for x in v]; p999 = [x[2] for x in v]
        added = "" if label == "local" or lp50 is None else f"{fmt(med(p50) - lp50, 0)} / {fmt(med(p99) - lp99, 0)}"
        print(f"| {label} | {', '.join(fmt(x, 0) for x in p50)} | {fmt(med(p50), 0)} | {', '.join(fmt(x, 0) for x in p99)} "
              f"| {fmt(med(p99), 0)} | {fmt(med(p999), 0)} | {added} |")
    print()

if ceiling:
    rates = sorted({r for v in ceiling.values() for r in v})
    print("| configuration | " + " | ".join(f"{r:,}/s" for r in rates) + " | lossless in every run |")
    print("|---|" + "---|" * len(rates) + "---|")
    for label, v in ceiling.items():
        cells, best = [], 0
        for r in rates:
            st = [s for s, _, _ in v.get(r, [])]
            cells.append(", ".join(st) if st else "")
            if st and all(s == "OK" for s in st):
                best = r
        print(f"| {label} | " + " | ".join(cells) + f" | {best:,}/s |")
    print()
    print("| broker CPU µs per publish | " + " | ".join(f"{r:,}/s" for r in rates) + " |")
    print("|---|" + "---|" * len(rates))
    for label, v in ceiling.items():
        print(f"| {label} | " + " | ".join(", ".join(fmt(u) for _, u, _ in v.get(r, [])) for r in rates) + " |")
    print()

if recovery:
    print("| broker | recovered / reset / silent (runs) | all live again after, s (runs) | median | broker CPU ms over 3 s from the reopening, beside before (runs) | fresh B's CPU ms over those 3 s (runs) |")
    print("|---|---|---|---:|---|---|")
    for label, v in recovery.items():
        rr = "; ".join(f"{f['recovered']} / {f['reset']} / {f['silent']}" for f in v)
        live = [x if x == "none" else f"{float(x):.3f}" for x in (f["all_live_after_s"] for f in v)]
        lv = [float(x) for x in live if x != "none"]
        br = "; ".join(f"{f['broker_ms_3s']} ({f['broker_ms_before_3s']})" for f in v)
        bm = ", ".join(f["B_ms_3s"] for f in v)
        print(f"| {label} | {rr} | {', '.join(live)} | {fmt(med(lv), 3) if lv else 'none'} | {br} | {bm} |")
