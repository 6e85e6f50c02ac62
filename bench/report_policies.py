#!/usr/bin/env python3
"""Turns bench/out-policies/ (written by bench/policies.sh) into the policy
section of BENCHMARKS.md. Standard library only.

  report_policies.py --out-dir bench/out-policies --report BENCHMARKS.md

The section sits between BEGIN and END below; it replaces the one already in
the report, or is appended when there is none. bench/run.sh's report.py keeps
it when it rewrites the rest of the file.
"""

import argparse
import json
import os
import statistics
import sys

from report_section import splice

BEGIN = "<!-- policies: begin (bench/policies.sh writes this section; bench/run.sh keeps it) -->"
END = "<!-- policies: end -->"

# The 10 % target of the traffic-policy issue: with every policy on, Outrigger
# keeps at least this share of its own policies-off throughput.
TARGET = 0.90

FEATURES = {
    "off": "every policy off (one route, retries off)",
    "defaults": "defaults (no route: 2 retries on connect-failure, refused-stream, unavailable, cancelled; budget)",
    "retries": "retries: 2 on 5xx,reset,connect-failure,refused-stream, per-try timeout 2 s",
    "timeout": "route timeout 10 s",
    "match": "uri prefix match + request header set",
    "split": "90/10 split over two subsets",
    "ratelimit": "route token bucket (never empty)",
    "outlier": "outlier detection (5 consecutive 5xx)",
    "pool": "connection-pool limits (10000)",
    "all": "all of the above at once",
}
ENVOY = {"off": "Envoy × 2, no policies", "on": "Envoy × 2, the same policies as *all*"}


def load_runs(res):
    runs = {}
    for name in os.listdir(res):
        if name.endswith(".json") and not name.endswith(".oha.json") and name != "idle.json" and not name.startswith("instr-"):
            with open(os.path.join(res, name)) as f:
                r = json.load(f)
            kind, setup = r["label"].split()
            runs[(kind, setup)] = r
    return runs


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def load_instructions(res):
    """Instructions per request of each Outrigger setup (callgrind), by setup."""
    out = {}
    for name in os.listdir(res):
        if name.startswith("instr-") and name.endswith(".json"):
            with open(os.path.join(res, name)) as f:
                d = json.load(f)
            out[d["setup"]] = (d["i2"] - d["i1"]) / (d["n2"] - d["n1"])
    return out


class Setup:
    """One setup's runs over all rounds."""

    def __init__(self, runs, setup, rounds):
        self.name = setup
        self.max = [runs.get((f"max{i}", setup)) for i in range(1, rounds + 1)]
        self.fixed = [runs.get((f"fixed{i}", setup)) for i in range(1, rounds + 1)]
        self.max = [r for r in self.max if r]
        self.fixed = [r for r in self.fixed if r]

    def rps(self):
        return median(r["load"]["ok_per_s"] for r in self.max)

    def rps_range(self):
        v = [r["load"]["ok_per_s"] for r in self.max]
        return (min(v), max(v)) if v else (None, None)

    def p99_max(self):
        return median(r["load"]["p99_ms"] for r in self.max)

    def p99_fixed(self):
        return median(r["load"]["p99_ms"] for r in self.fixed)

    def client_cpu_us(self):
        """The client-side proxy's CPU per request at max throughput, µs."""
        vals = []
        for r in self.max:
            procs = [p for p in r["processes"] if p != "upstream" and not p.endswith("_server")]
            if not procs:
                return None
            vals.append(r["processes"][procs[0]]["cpu_s_per_10k_ok"] * 100.0)  # s/10k -> µs/req
        return median(vals)

    def errors(self):
        return sum(r["load"]["errors"] + r["load"]["non_2xx"] for r in self.max + self.fixed)


def num(v, digits=None):
    if v is None:
        return "–"
    if digits is None:
        digits = 0 if v >= 1000 else (1 if v >= 100 else (2 if v >= 1 else 3))
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if a is None or not b:
        return "–"
    return f"×{a / b:.2f}"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def build(out_dir):
    res = os.path.join(out_dir, "results")
    with open(os.path.join(out_dir, "settings.json")) as f:
        s = json.load(f)
    machine = {}
    with open(os.path.join(out_dir, "machine.txt")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            machine[k] = v
    runs = load_runs(res)
    rounds = int(s["rounds"])
    order = s["order"].split()
    setups = {name: Setup(runs, name, rounds) for name in order}
    instr = load_instructions(res)

    md = []
    w = md.append
    w(BEGIN)
    w("")
    w("## Traffic policies: what each feature costs")
    w("")
    w(
        "Produced by `bench/policies.sh` (one command). The two-hop mesh path of the tables above "
        "(client → client-side proxy → HTTP/2 → server-side proxy → upstream), with policies in the "
        "client-side proxy, where Outrigger and Envoy apply outbound policy. Each Outrigger setup is "
        "its own client-side process with one snapshot; the server side is shared. "
        f"**{rounds} rounds**: every setup runs once per round, in the same order, and the tables give "
        f"the **median over the rounds** (the req/s range shows the spread). Max throughput: oha "
        f"unthrottled at `-c {s['concurrency']}` for `{s['duration']}` after a `{s['warmup']}` warm-up; "
        f"latency: oha `-c {s['lat_concurrency']} -q {s['fixed_rate']} --latency-correction` for "
        f"`{s['duration']}`. Client-side CPU: utime + stime of the client-side proxy during the "
        "max-throughput run ÷ successful requests; it is the least noisy measure of what a feature "
        "costs, since throughput here is shared between oha, both proxies and the upstream on 2 cores. "
        "Client-side instructions per request: the Outrigger client side run alone under callgrind "
        "(valgrind), once with a few requests and once with more (oha `-n`, `-c 4`), and the "
        "difference of the two counts divided by the difference in requests: far less noisy than time "
        "on a shared machine, though fresh processes still differ by up to about 1.7 % (timers and "
        "wake-ups); `CG_ONLY=1 CG_RUNS=5 bench/policies.sh` gives the median of five "
        "(Envoy is not run under callgrind)."
    )
    w("")
    w(
        f"- Date: {machine.get('date')}; load average before: {machine.get('loadavg_before')}; "
        f"{machine.get('nproc')} × {machine.get('cpu')}"
    )
    w(f"- Outrigger: `{machine.get('outrigger')}`, {machine.get('rustc')}")
    w(f"- Envoy: `{machine.get('envoy')}`; load generator: `{machine.get('oha')}`")
    w(f"- Workers: Outrigger `--threads {s['threads']}`, Envoy `--concurrency {s['threads']}`, upstream `--threads {s['upstream_threads']}`")
    w("")

    verdicts = []
    for proto, title in (("h1", "HTTP/1.1 from the client"), ("h2", "HTTP/2 (prior knowledge) from the client")):
        names = [n for n in order if n.endswith("-" + proto)]
        if not names:
            continue
        off = setups.get(f"or_off-{proto}")
        en_off = setups.get(f"en_off-{proto}")
        w(f"### {title}")
        w("")
        rows = []
        for n in names:
            st = setups[n]
            system, _, _ = n.rpartition("-")
            if system == "direct":
                label, ref = "direct (no proxy)", None
            elif system.startswith("or_"):
                v = system[3:]
                label, ref = f"Outrigger × 2: {FEATURES[v]}", off
            else:
                v = system[3:]
                label, ref = ENVOY[v], en_off
            lo, hi = st.rps_range()
            rng = f"{num(lo)}–{num(hi)}" if lo is not None else "–"
            cpu = st.client_cpu_us()
            ins = instr.get(n)
            ins_off = instr.get(f"or_off-{proto}")
            rows.append(
                [
                    label,
                    num(st.rps()),
                    ratio(st.rps(), ref.rps()) if ref else "",
                    rng,
                    num(st.p99_max()),
                    ratio(st.p99_max(), ref.p99_max()) if ref else "",
                    num(st.p99_fixed()),
                    ratio(st.p99_fixed(), ref.p99_fixed()) if ref else "",
                    num(cpu),
                    ratio(cpu, ref.client_cpu_us()) if ref else "",
                    num(ins) if ins else "–",
                    ratio(ins, ins_off) if ins and system.startswith("or_") else "",
                    st.errors(),
                ]
            )
        w(
            table(
                [
                    "setup",
                    "req/s",
                    "× off",
                    "req/s range",
                    f"p99 ms at -c {s['concurrency']}",
                    "× off",
                    f"p99 ms at {s['fixed_rate']} req/s",
                    "× off",
                    "client-side CPU µs/req",
                    "× off",
                    "client-side instructions/req",
                    "× off",
                    "errors",
                ],
                rows,
            )
        )
        w("")
        w(
            "*× off*: divided by the same proxy's policies-off setup (Outrigger's *every policy off*, "
            "Envoy's *no policies*). For req/s higher is better; for p99 and CPU lower is better."
        )
        w("")
        all_ = setups.get(f"or_all-{proto}")
        en_on = setups.get(f"en_on-{proto}")
        if off and all_ and off.rps() and all_.rps():
            share = all_.rps() / off.rps()
            ok = share >= TARGET
            verdicts.append((proto, share, ok))
            line = (
                f"**Target (policies on within 10 % of policies off): {'met' if ok else 'NOT met'}.** "
                f"Outrigger with every policy on serves {num(all_.rps())} req/s, ×{share:.2f} of its "
                f"policies-off {num(off.rps())} req/s"
            )
            i_all, i_off = instr.get(f"or_all-{proto}"), instr.get(f"or_off-{proto}")
            if i_all and i_off:
                line += (
                    f" (the client-side proxy runs ×{i_all / i_off:.2f} the instructions per request: "
                    f"{num(i_all)} against {num(i_off)})"
                )
            if en_off and en_on and en_off.rps() and en_on.rps():
                line += (
                    f"; Envoy with the same policies serves ×{en_on.rps() / en_off.rps():.2f} of its own. "
                    f"Policies on, Outrigger against Envoy: ×{all_.rps() / en_on.rps():.2f} the throughput, "
                    f"{ratio(all_.p99_fixed(), en_on.p99_fixed())} the p99 at {s['fixed_rate']} req/s, "
                    f"{ratio(all_.client_cpu_us(), en_on.client_cpu_us())} the client-side CPU per request."
                )
            else:
                line += "."
            w(line)
            w("")

    w("### How the policy runs were made")
    w("")
    w(
        "- Outrigger setups, as snapshot YAML under the service (`bench/policies.sh` writes them to "
        "`bench/out-policies/config/`): *off* is a catch-all route with `retries: { attempts: 0 }`; each "
        "feature row adds one piece to it; *all* adds every piece. Envoy *on* is "
        "`bench/envoy/client-side-policies.yaml.tmpl`: the same route, retry policy and budget, timeout, "
        "90/10 weighted clusters (one cluster per subset, as Istio generates), circuit-breaker "
        "thresholds, outlier detection and a local rate-limit filter."
    )
    w(
        "- No policy is ever triggered here (the upstream always answers 200 and the buckets never "
        "run dry): the rows measure what a policy costs a request that passes through it, which is "
        "what every request pays. What the policies do when things fail is tested in "
        "`tests/tests/policy.rs`, not measured here."
    )
    w("- Fault injection is not in the table: it is a chaos-testing tool that production routes leave unset.")
    disturbed = []
    for name in sorted(os.listdir(res)):
        if name.endswith(".discarded"):
            with open(os.path.join(res, name)) as f:
                d = json.load(f)
            lost = (d["system"]["foreign_cpu_s"] + d["system"]["steal_cpu_s"]) / d["wall_s"]
            disturbed.append(f"`{d['label']}` ({lost:.2f} cores lost)")
    if disturbed:
        w(
            f"- Runs that lost more than {s['disturbed_cores']} cores to other processes or steal were run "
            f"again and only the repeat counts: {', '.join(disturbed)}."
        )
    worst = max(
        (
            ((r["system"]["foreign_cpu_s"] + r["system"]["steal_cpu_s"]) / r["wall_s"], f"{k[0]} {k[1]}")
            for k, r in runs.items()
            if "system" in r
        ),
        default=(0.0, None),
    )
    if worst[0] > float(s["disturbed_cores"]):
        note = f"- Disturbed: in `{worst[1]}` other processes or steal took {worst[0]:.2f} of the 2 cores."
        print(f"report_policies.py: warning: {note}", file=sys.stderr)
        w(note)
    else:
        w(f"- No counted run lost more than {s['disturbed_cores']} cores to other processes or to steal.")
    errs = {f"{k[0]} {k[1]}": r["load"] for k, r in runs.items() if r["load"]["errors"] + r["load"]["non_2xx"]}
    for label, load in sorted(errs.items()):
        w(f"- `{label}`: {load['errors']} errors {json.dumps(load['error_kinds'])}, {load['non_2xx']} non-2xx {json.dumps(load['status_codes'])}")
    w("")
    w(END)
    return "\n".join(md) + "\n", verdicts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--report", required=True)
    args = ap.parse_args()
    section, verdicts = build(args.out_dir)
    existing = ""
    if os.path.exists(args.report):
        with open(args.report) as f:
            existing = f.read()
    with open(args.report, "w") as f:
        f.write(splice(existing, section, "policies"))
    sys.stdout.write(section)
    for proto, share, ok in verdicts:
        print(f"report_policies.py: {proto}: all/off = {share:.3f} ({'within' if ok else 'OUTSIDE'} the 10 % target)", file=sys.stderr)


if __name__ == "__main__":
    main()
