#!/usr/bin/env python3
"""Writes the soak section of BENCHMARKS.md from bench/soak.sh's results:
the driver's JSON lines (bench/src/bin/soak.rs), the per-process samples and
the events (edits, control-plane restarts). Standard library only."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_section import markers, splice  # noqa: E402

NAME = "soak"
KINDS = ["h1", "h2", "grpc", "ws", "tcp"]
KIND_LABEL = {
    "h1": "HTTP/1.1 requests",
    "h2": "HTTP/2 requests",
    "grpc": "gRPC bidi stream messages",
    "ws": "WebSocket messages",
    "tcp": "opaque TCP echoes",
}
PROCS = ["or_client", "or_server", "control_plane", "upstream", "driver"]
PROC_LABEL = {
    "or_client": "client-side proxy",
    "or_server": "server-side proxy",
    "control_plane": "control plane",
    "upstream": "upstream",
    "driver": "driver",
}
# "Flat after warm-up": RSS at the end within this share (or FLAT_RSS_KIB,
# whichever is larger) of RSS at the end of the warm-up, and open fds within
# FLAT_FDS.
FLAT_RSS_SHARE = 0.10
FLAT_RSS_KIB = 1024
FLAT_FDS = 5


def read_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def human(seconds):
    seconds = int(round(seconds))
    if seconds == 0:
        return "0 s"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    if seconds > 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def ms(v):
    if v is None:
        return "–"
    return f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"


def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--settings", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--logs", required=True)
    ap.add_argument("--report", required=True)
    a = ap.parse_args()

    with open(a.settings) as f:
        st = json.load(f)
    with open(a.machine) as f:
        machine = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    driver = read_jsonl(os.path.join(a.results, "driver.jsonl"))
    samples = read_jsonl(os.path.join(a.results, "samples.jsonl"))
    events = read_jsonl(os.path.join(a.results, "events.jsonl"))
    summary = next((d["summary"] for d in driver if "summary" in d), None)
    if summary is None:
        raise SystemExit(f"no summary line in {a.results}/driver.jsonl: the driver did not finish")
    buckets = [d for d in driver if "kind" in d]
    duration = st["duration_s"]
    warmup = st["warmup_s"]
    restart = st["restart_every_s"]
    window = min(restart, 300)

    edits = sum(1 for e in events if e["event"] == "edit")
    restarts = sum(1 for e in events if e["event"] == "restart_ready")

    begin, end = markers(NAME)
    out = [f"{begin} (bench/soak.sh writes this section; bench/run.sh keeps it) -->", ""]
    w = out.append
    w("## Soak: mixed traffic under config edits, control-plane restarts and certificate renewals")
    w("")
    full = " (the full soak is 1 h: `bench/soak.sh` with no settings)" if duration < 3600 else ""
    w(
        f"**This run lasted {human(duration)}**{full}. Produced by `bench/soak.sh` on {machine.get('date', '?')} "
        f"({machine.get('outrigger', '?')}; {machine.get('nproc', '?')} cores, {machine.get('cpu', '?')}). "
        "Driver (`outrigger-bench-soak`) → Outrigger outbound → mutual TLS → Outrigger inbound → upstream, loopback, "
        f"one worker per proxy; both proxies follow a folder-mode control plane, which is their CA. "
        "Traffic, steady: HTTP/1.1 (4 keep-alive connections) and HTTP/2 (one connection) requests, 80/s each, "
        "alternating `GET /` and `POST /echo` (body checked); 4 gRPC-style bidirectional streams, 4 WebSocket "
        "sessions and 4 opaque TCP connections (a Service declared opaque), each echoing a message every 100 ms "
        "and ended cleanly and reopened every 60 s (a gRPC stream must end with `grpc-status: 0`). "
        f"Meanwhile the VirtualService is rewritten every {human(st['edit_every_s'])} (weights 90/10 ↔ 10/90 "
        f"over two subsets, timeout 30 s ↔ 31 s), the control plane is stopped (SIGTERM) and started again every "
        f"{human(restart)}, and workload certificates live {human(st['cert_lifetime_s'])} (renewed at 70 % of it). "
        "A failure is any request or echo that did not come back right within 10 s, or a stream, session or "
        "connection that could not be opened or did not end cleanly."
    )
    w("")

    # Renewals and config updates, from the proxies' own counters.
    first, last = {}, {}
    for s in samples:
        if "renewals_ok" not in s or s["t"] > duration + st["sample_every_s"] * 3:
            continue
        first.setdefault(s["name"], s)
        last[s["name"]] = s
    renew_parts, config_parts, disconnected = [], [], []
    renewals_total = 0
    for n in ("or_client", "or_server"):
        if n in first:
            r = last[n]["renewals_ok"] - first[n]["renewals_ok"]
            renewals_total += r
            err = last[n]["renewals_error"] - first[n]["renewals_error"]
            renew_parts.append(f"{PROC_LABEL[n]} {r}" + (f" ({err} failed)" if err else ""))
            applied = last[n]["config_applied"] - first[n]["config_applied"]
            rejected = last[n]["config_rejected"] - first[n]["config_rejected"]
            config_parts.append(f"{PROC_LABEL[n]} {applied}" + (f" ({rejected} refused)" if rejected else ""))
            off = sum(1 for s in samples if s["name"] == n and s.get("cp_connected") == 0)
            if off:
                disconnected.append(f"{PROC_LABEL[n]} {off}")
    # Cross-check: each certificate the proxy takes is logged once, the first included.
    logged = []
    for n in ("or_client", "or_server"):
        path = os.path.join(a.logs, f"{n}.log")
        if os.path.exists(path):
            with open(path) as f:
                held = sum(1 for line in f if "certificate held" in line)
            logged.append(f"{PROC_LABEL[n]} {max(held - 1, 0)}")
    w(
        f"**What happened** (counted, not scheduled): {edits} config edits, {restarts} control-plane restarts; "
        f"certificate renewals by the proxies' `outrigger_identity_renewals_total{{result=\"ok\"}}`: "
        f"{', '.join(renew_parts) or 'not read'} (their logs' `certificate held` lines after the first: "
        f"{', '.join(logged) or 'no log'}); configurations applied (`outrigger_config_applied_total`): "
        f"{', '.join(config_parts) or 'not read'}"
        + (f"; samples with the config stream down (`outrigger_control_plane_connected` 0): {', '.join(disconnected)}"
           if disconnected else "")
        + "."
    )
    w("")

    # Failures per kind.
    kinds = summary["kinds"]
    total_failed = sum(kinds[k]["failures"] for k in kinds)
    w("| traffic | samples | failed | streams / sessions / connections opened | p50 (median of 10 s buckets) | p99 (median of 10 s buckets) | p99, worst 10 s bucket |")
    w("|---|---|---|---|---|---|---|")
    for k in KINDS:
        if k not in kinds:
            continue
        t = kinds[k]
        bs = [b for b in buckets if b["kind"] == k and b["p99_ms"] is not None]
        p50s = sorted(b["p50_ms"] for b in bs)
        p99s = sorted(b["p99_ms"] for b in bs)
        med = (lambda v: v[len(v) // 2] if v else None)
        opened = f"{t['opened']:,}" if k in ("grpc", "ws", "tcp") else "–"
        w(
            f"| {KIND_LABEL[k]} | {t['count']:,} | {t['failures']:,} | {opened} | {ms(med(p50s))} | {ms(med(p99s))} | "
            f"{ms(max(p99s) if p99s else None)} |"
        )
    w("")
    verdict = "met" if total_failed == 0 else "missed"
    w(f"**Target (0 failed requests): {verdict}**" + ("." if total_failed == 0 else f": {total_failed:,} failed."))
    if total_failed:
        w("")
        w("Failures by reason (the driver's log has the first of each kind with its time):")
        w("")
        for k in KINDS:
            for reason, n in sorted(kinds.get(k, {}).get("errors", {}).items(), key=lambda x: -x[1]):
                w(f"- {k}: {n:,} × `{reason}`")
    w("")

    # p99 over time, per window.
    restart_times = [e["t"] for e in events if e["event"] == "restart_begin"]
    nwin = max(1, -(-duration // window))
    w(
        f"p99 over time, per {human(window)} window: the worst 10 s bucket's p99 in the window "
        "(failed samples in brackets when any); the control plane restarted at "
        + (", ".join(human(t) for t in restart_times) if restart_times else "no time")
        + "."
    )
    w("")
    head = "| traffic | " + " | ".join(f"{human(i * window)}–{human(min((i + 1) * window, duration))}" for i in range(nwin)) + " |"
    w(head)
    w("|---" * (nwin + 1) + "|")
    for k in KINDS:
        cells = []
        for i in range(nwin):
            bs = [b for b in buckets if b["kind"] == k and i * window < b["t"] <= (i + 1) * window + 1]
            p99 = [b["p99_ms"] for b in bs if b["p99_ms"] is not None]
            failed = sum(b["failures"] for b in bs)
            cell = ms(max(p99) if p99 else None) + (f" ({failed})" if failed else "")
            cells.append(cell)
        w(f"| {k} | " + " | ".join(cells) + " |")
    w("")

    # RSS and fds: warm-up end vs end, and over time.
    def at(name, t):
        """The sample of NAME nearest to time t during the run."""
        c = [s for s in samples if s["name"] == name and s["t"] <= duration and s.get("rss_kib") is not None]
        return min(c, key=lambda s: abs(s["t"] - t)) if c else None

    w(
        f"Memory and file descriptors of every process (VmRSS and `/proc/PID/fd`, sampled every "
        f"{human(st['sample_every_s'])}), at the end of the warm-up ({human(warmup)}) and at the end of the traffic. "
        f"**Flat** = RSS at the end within {FLAT_RSS_SHARE:.0%} (or {FLAT_RSS_KIB // 1024} MiB, whichever is larger) "
        f"of RSS at the end of the warm-up, and open fds within ±{FLAT_FDS}. The control plane is a new process after "
        "every restart, so its row compares the incarnations running at those times; the driver is the load, not "
        "judged."
    )
    w("")
    w("| process | RSS after warm-up | RSS at the end | peak RSS after warm-up | fds after warm-up | fds at the end | flat |")
    w("|---|---|---|---|---|---|---|")
    all_flat = True
    for n in PROCS:
        a0, a1 = at(n, warmup), at(n, duration)
        if not a0 or not a1:
            continue
        peak = max((s["rss_kib"] for s in samples if s["name"] == n and warmup <= s["t"] <= duration
                    and s.get("rss_kib") is not None), default=None)
        flat_rss = abs(a1["rss_kib"] - a0["rss_kib"]) <= max(FLAT_RSS_SHARE * a0["rss_kib"], FLAT_RSS_KIB)
        flat_fds = abs(a1["fds"] - a0["fds"]) <= FLAT_FDS
        if n == "driver":
            verdict = "–"
        else:
            verdict = "met" if flat_rss and flat_fds else "**missed**"
            all_flat &= flat_rss and flat_fds
        delta = a1["rss_kib"] - a0["rss_kib"]
        w(
            f"| {PROC_LABEL[n]} | {mib(a0['rss_kib'])} | {mib(a1['rss_kib'])} ({delta / 1024:+.1f}) | {mib(peak)} | "
            f"{a0['fds']} | {a1['fds']} ({a1['fds'] - a0['fds']:+d}) | {verdict} |"
        )
    w("")
    w(f"**Target (RSS and fds flat after warm-up, every process): {'met' if all_flat else 'missed'}.**")
    w("")
    w(f"RSS (MiB) / open fds over time, at each {human(window)} mark:")
    w("")
    marks = [min(i * window, duration) for i in range(nwin + 1)]
    marks[0] = min(warmup, duration) if warmup < window else marks[0]
    w("| process | " + " | ".join(human(m) for m in marks) + " |")
    w("|---" * (len(marks) + 1) + "|")
    for n in PROCS:
        cells = []
        for m in marks:
            s = at(n, m)
            cells.append(f"{s['rss_kib'] / 1024:.1f} / {s['fds']}" if s else "–")
        w(f"| {PROC_LABEL[n]} | " + " | ".join(cells) + " |")
    w("")
    w("Raw results (the driver's 10 s buckets, the samples, the events and every log) stay in `bench/out-soak/`, which is not committed.")
    w("")
    w(end)
    section = "\n".join(out) + "\n"
    existing = open(a.report).read() if os.path.exists(a.report) else ""
    with open(a.report, "w") as f:
        f.write(splice(existing, section, NAME))
    sys.stdout.write(section)


if __name__ == "__main__":
    main()
