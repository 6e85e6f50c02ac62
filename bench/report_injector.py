#!/usr/bin/env python3
"""Turns bench/out-injector/ (written by bench/injector.sh) into the injector
section of BENCHMARKS.md. Standard library only."""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import summarize_oha  # noqa: E402
from report_section import markers, splice  # noqa: E402

NAME = "injector"
P99_TARGET_MS = 5.0
# "Flat": the injector's RSS after the last admission is within this of its
# RSS once warm (after the first tenth of the admissions).
FLAT_KIB = 1024


def load(out, name):
    with open(os.path.join(out, f"{name}.json")) as f:
        return summarize_oha(json.load(f))


def ms(v):
    return "n/a" if v is None else f"{v:.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--report", required=True)
    args = ap.parse_args()
    out = args.out_dir
    machine = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "machine.txt")) if "=" in l)
    settings = dict(kv.split("=", 1) for kv in machine["settings"].split())
    rate, admissions = int(settings["RATE"]), int(settings["ADMISSIONS"])
    fixed, peak, mem = load(out, "fixed"), load(out, "max"), load(out, "memory")
    samples = [json.loads(l) for l in open(os.path.join(out, "memory.jsonl")) if l.strip()]
    def counter(file, name):
        for line in open(os.path.join(out, file)).read().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    requests = counter("metrics.txt", "outrigger_injector_requests_total")
    injected = counter("metrics.txt", "outrigger_injector_injected_total")
    # The memory run's admissions are counted from the injector's count
    # just before it (the latency runs came first).
    first = counter("metrics-before-memory.txt", "outrigger_injector_requests_total")
    run = [dict(s, n=s["requests"] - first) for s in samples]

    def rss_at(n):
        past = [s for s in run if s["n"] >= n]
        return past[0]["rss_kb"] if past else None

    marks = [admissions // 10, admissions // 4, admissions // 2, 3 * admissions // 4, admissions]
    rss = {m: rss_at(m) for m in marks}
    warm, last = rss[marks[0]], run[-1]["rss_kb"] if run else None
    peak_rss = max(s["rss_kb"] for s in run) if run else None
    flat = warm is not None and last is not None and last - warm <= FLAT_KIB
    p99_ok = fixed["p99_ms"] is not None and fixed["p99_ms"] < P99_TARGET_MS and fixed["errors"] + fixed["non_2xx"] == 0

    begin, end = markers(NAME)
    md = [f"{begin} (written by bench/injector.sh; bench/report_injector.py) -->", "", "## Injector: admission latency and memory", ""]
    md.append(
        "The real `outrigger-injector` binary (release build, local mode: namespaces from a file, "
        "no API server) answering AdmissionReviews over HTTPS on loopback, pinned to CPU 0, with "
        "oha on CPU 1 posting one realistic review (a Deployment's pod with two containers, an "
        "init container, probes on a named and a numbered port, a volume, an opaque-ports "
        f"annotation; the answer is a {open(os.path.join(out, 'patch-bytes.txt')).read().strip()}-byte "
        "base64 JSON Patch, checked before the load)."
    )
    md.append("")
    md.append(f"- Date: {machine.get('date')}; {machine.get('nproc')} × {machine.get('cpu')}")
    md.append(f"- Injector: {machine.get('outrigger')}; load: `{machine.get('oha')}`")
    md.append("")
    md.append("| run | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors |")
    md.append("|---|---|---|---|---|---|---|")
    for label, r in ((f"fixed {rate} req/s, -c 4, latency-corrected", fixed), ("unthrottled, -c 8", peak), (f"{admissions:,} admissions back to back, -c 8", mem)):
        md.append(f"| {label} | {r['ok_per_s']:,.0f} | {ms(r['p50_ms'])} | {ms(r['p90_ms'])} | {ms(r['p99_ms'])} | {ms(r['p999_ms'])} | {r['errors'] + r['non_2xx']} |")
    md.append("")
    md.append("Memory (VmRSS, sampled every 100 ms against the injector's own request counter) during the back-to-back run:")
    md.append("")
    md.append("| admissions | " + " | ".join(f"{m:,}" for m in marks) + " | peak |")
    md.append("|---|" + "---|" * (len(marks) + 1))
    md.append("| RSS MiB | " + " | ".join("n/a" if rss[m] is None else f"{rss[m] / 1024:.1f}" for m in marks) + f" | {'n/a' if peak_rss is None else f'{peak_rss / 1024:.1f}'} |")
    md.append("")
    md.append(f"The injector counted {requests:,.0f} requests and {injected:,.0f} injections over the whole run.")
    md.append("")
    md.append("| target | this run | verdict |")
    md.append("|---|---|---|")
    md.append(f"| admission p99 < {P99_TARGET_MS:g} ms at {rate} req/s | {ms(fixed['p99_ms'])} ms, {fixed['errors'] + fixed['non_2xx']} errors | {'**met**' if p99_ok else '**missed**'} |")
    growth = "n/a" if warm is None or last is None else f"{(last - warm) / 1024:+.2f} MiB"
    md.append(f"| memory flat over {admissions:,} admissions (within {FLAT_KIB // 1024} MiB of the RSS after the first tenth) | {growth} | {'**met**' if flat else '**missed**'} |")
    md.append("")
    md.append(end)
    section = "\n".join(md) + "\n"
    existing = open(args.report).read() if os.path.exists(args.report) else ""
    with open(args.report, "w") as f:
        f.write(splice(existing, section, NAME))
    sys.stdout.write(section)


if __name__ == "__main__":
    main()
