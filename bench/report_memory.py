#!/usr/bin/env python3
"""Writes the memory section of BENCHMARKS.md from bench/memory.sh's results
(one JSON file per proxy and round, from bench/idle_conns.py). Standard
library only."""
import argparse
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_section import markers, splice  # noqa: E402

NAME = "memory"
ORDER = ["outrigger-jemalloc", "outrigger-system", "envoy", "haproxy"]
LABEL = {
    "outrigger-jemalloc": "Outrigger (jemalloc, the default build)",
    "outrigger-system": "Outrigger (system allocator)",
    "envoy": "Envoy",
    "haproxy": "HAProxy",
}
TARGET_PER_CONN_KIB = 8
TARGET_RETURN_S = 30


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load(results):
    runs = {}
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        name = os.path.basename(path).rsplit("-", 1)[0]
        with open(path) as f:
            runs.setdefault(name, []).append(json.load(f))
    return runs


def summarize(rs):
    def m(key, sub=None):
        return median([(r[sub] if sub else r).get(key) for r in rs if (r.get(sub) if sub else r) is not None])

    returned = [r["returned_at_s"] for r in rs]
    return {
        "rounds": len(rs),
        "held": min(r["held"] for r in rs),
        "failed": max(r["failed"] for r in rs),
        "idle": m("idle_kib"),
        "held_kib": m("held_kib"),
        "per_conn": m("per_conn_kib"),
        "after_end": m("after_end_kib"),
        "returned": None if any(x is None for x in returned) else max(returned),
        "slow_peak": m("rss_peak_kib", "slowloris"),
        "slow_closed": min(r["slowloris"]["closed_by_proxy"] for r in rs) if all("slowloris" in r for r in rs) else None,
        "slow_opened": min(r["slowloris"]["opened"] for r in rs) if all("slowloris" in r for r in rs) else None,
        "slow_after": m("after_end_kib", "slowloris"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--conns", type=int, required=True)
    ap.add_argument("--settle", type=int, required=True)
    ap.add_argument("--slowloris", type=int, required=True)
    ap.add_argument("--slow-hold", type=int, required=True)
    ap.add_argument("--report", required=True)
    a = ap.parse_args()
    runs = load(a.results)
    if not runs:
        raise SystemExit(f"no results in {a.results}")
    s = {n: summarize(rs) for n, rs in runs.items()}
    with open(a.machine) as f:
        machine = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)

    begin, end = markers(NAME)
    out = [f"{begin} (bench/memory.sh writes this section; bench/run.sh keeps it) -->", ""]
    out.append("## Memory per connection, and memory returned")
    out.append("")
    out.append(
        f"Produced by `bench/memory.sh` on {machine.get('date', '?')} ({machine.get('outrigger', '?')}). "
        "One hop (client → proxy → upstream, HTTP/1.1, loopback), one worker per proxy, each proxy started fresh. "
        f"**Idle connections:** {a.conns:,} keep-alive connections, each after one request answered 200, held open and idle; "
        "per connection = (RSS with them held − idle RSS) ÷ connections. "
        f"**Returned:** all of them closed, RSS read every second for {a.settle} s; the first second at which RSS is within 2× the idle RSS. "
        f"**Slowloris:** {a.slowloris:,} connections sending a request head one byte a second for {a.slow_hold} s, never finishing it. "
        f"Medians over {max(v['rounds'] for v in s.values())} round(s). RSS is VmRSS from /proc."
    )
    out.append("")
    out.append(
        "| proxy | idle RSS | RSS, connections held | per idle connection | RSS "
        f"{a.settle} s after they closed | back within 2× idle after | slowloris: peak RSS | closed by the proxy | "
        f"RSS {a.settle} s after | failed connections |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for n in ORDER + sorted(set(s) - set(ORDER)):
        if n not in s:
            continue
        v = s[n]
        returned = f"{v['returned']} s" if v["returned"] is not None else f"not within {a.settle} s"
        closed = f"{v['slow_closed']:,} of {v['slow_opened']:,}" if v["slow_closed"] is not None else "–"
        out.append(
            f"| {LABEL.get(n, n)} | {mib(v['idle'])} | {mib(v['held_kib'])} | {v['per_conn']:.1f} KiB | "
            f"{mib(v['after_end'])} | {returned} | {mib(v['slow_peak']) if v['slow_peak'] else '–'} | {closed} | "
            f"{mib(v['slow_after']) if v['slow_after'] else '–'} | {v['failed']} |"
        )
    skipped = os.path.join(a.results, "haproxy-skipped.txt")
    if os.path.exists(skipped):
        with open(skipped) as f:
            out.append("")
            out.append(f.read().strip() + ".")
    out.append("")
    o = s.get("outrigger-jemalloc")
    if o:
        per = o["per_conn"]
        verdict = "met" if per <= TARGET_PER_CONN_KIB else "missed"
        ratios = []
        for peer in ("envoy", "haproxy"):
            if peer in s and s[peer]["per_conn"]:
                ratios.append(f"×{per / s[peer]['per_conn']:.2f} {LABEL[peer]}'s")
        out.append(
            f"**Target (≤ {TARGET_PER_CONN_KIB} KiB per idle connection): {verdict}** at {per:.1f} KiB"
            + (f" ({', '.join(ratios)})." if ratios else ".")
        )
        ret = o["returned"]
        verdict = "met" if ret is not None and ret <= TARGET_RETURN_S else "missed"
        out.append("")
        out.append(
            f"**Target (RSS back within 2× idle within {TARGET_RETURN_S} s of the connections closing): {verdict}**"
            + (f", after {ret} s." if ret is not None else f": still above 2× idle after {a.settle} s.")
        )
        sysalloc = s.get("outrigger-system")
        if sysalloc:
            out.append("")
            out.append(
                f"The allocator, measured: the system allocator holds {sysalloc['per_conn']:.1f} KiB per idle connection and "
                + (f"was back within 2× idle after {sysalloc['returned']} s" if sysalloc["returned"] is not None
                   else f"kept {mib(sysalloc['after_end'])} {a.settle} s after the connections closed")
                + f"; jemalloc with its background thread holds {per:.1f} KiB and "
                + (f"gave the memory back after {ret} s." if ret is not None
                   else f"kept {mib(o['after_end'])} {a.settle} s after the connections closed.")
            )
    out.append("")
    out.append(f"{end}")
    section = "\n".join(out) + "\n"
    existing = open(a.report).read() if os.path.exists(a.report) else ""
    with open(a.report, "w") as f:
        f.write(splice(existing, section, NAME))


if __name__ == "__main__":
    main()
