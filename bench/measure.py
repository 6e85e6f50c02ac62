#!/usr/bin/env python3
"""Runs one load-generator command while watching the proxy processes.

Used by bench/run.sh (standard library only):

  measure.py idle  --out FILE --pid NAME=PID ...
      VmRSS of each process now (the idle figure).

  measure.py load  --out FILE --label LABEL --pid NAME=PID ... --timeout S -- oha ARGS...
      Runs oha (which must print JSON on stdout), samples VmRSS of every
      process every 50 ms and keeps the maximum, reads utime+stime from
      /proc/PID/stat before and after, and writes one JSON result: oha's
      summary reduced to successful responses, error counts, and per-process
      resource use.

  measure.py rate  --fraction F --results DIR SETUP...
      Prints `RATE SETUP`: the slowest setup (lowest successful req/s over its
      max- and cap- runs) and F x its req/s, the first rate to try as the
      common near-saturation rate of one comparison.

  measure.py sustained --rate R FILE
      Exit status 0 when a rate-limited run kept up with R req/s.

  measure.py disturbed --cores C FILE
      Exit status 0 when other processes and steal took more than C CPUs.
"""

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

# oha reports requests still in flight when the -z deadline passes as errors
# with this text; they are neither successes nor failures of the proxy.
DEADLINE_ABORT = "aborted due to deadline"


def parse_pids(items):
    pids = {}
    for item in items or []:
        name, _, pid = item.partition("=")
        pids[name] = int(pid)
    return pids


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after it are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] != "Z"
    except OSError:
        return False


def system_cpu():
    """(busy, steal, total) seconds of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                user, nice, system, idle, iowait, irq, softirq = v[:7]
                steal = v[7] if len(v) > 7 else 0
                busy = user + nice + system + irq + softirq
                total = busy + idle + iowait + steal
                return busy / CLK_TCK, steal / CLK_TCK, total / CLK_TCK
    return 0.0, 0.0, 0.0


def children_cpu():
    """CPU time of the load generator (a reaped child) plus this sampler itself."""
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    s = resource.getrusage(resource.RUSAGE_SELF)
    return c.ru_utime + c.ru_stime + s.ru_utime + s.ru_stime


def cmd_idle(args):
    pids = parse_pids(args.pid)
    out = {name: {"pid": pid, "rss_kb": rss_kb(pid)} for name, pid in pids.items()}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)


def summarize_oha(raw):
    summary = raw.get("summary", {})
    codes = {str(k): int(v) for k, v in (raw.get("statusCodeDistribution") or {}).items()}
    errors = {str(k): int(v) for k, v in (raw.get("errorDistribution") or {}).items()}
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    bad_status = sum(v for k, v in codes.items() if not k.startswith("2"))
    aborted = sum(v for k, v in errors.items() if k == DEADLINE_ABORT)
    failed = sum(v for k, v in errors.items() if k != DEADLINE_ABORT)
    secs = float(summary.get("total") or 0.0)
    pct = raw.get("latencyPercentiles") or {}
    return {
        "duration_s": secs,
        "ok": ok,
        "non_2xx": bad_status,
        "errors": failed,
        "aborted_at_deadline": aborted,
        "status_codes": codes,
        "error_kinds": {k: v for k, v in errors.items() if k != DEADLINE_ABORT},
        "ok_per_s": ok / secs if secs > 0 else 0.0,
        # oha's percentiles are over successful responses, in seconds.
        "p50_ms": none_or_ms(pct.get("p50")),
        "p90_ms": none_or_ms(pct.get("p90")),
        "p99_ms": none_or_ms(pct.get("p99")),
        "p999_ms": none_or_ms(pct.get("p99.9")),
        "oha_requests_per_s": summary.get("requestsPerSec"),
        "oha_success_rate": summary.get("successRate"),
    }


def none_or_ms(v):
    return None if v is None else float(v) * 1000.0


def cmd_load(args):
    pids = parse_pids(args.pid)
    cmd = args.command
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    before = {n: cpu_seconds(p) for n, p in pids.items()}
    peak = {n: rss_kb(p) or 0 for n, p in pids.items()}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for n, p in pids.items():
                v = rss_kb(p)
                if v is not None and v > peak[n]:
                    peak[n] = v
            stop.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sys_before = system_cpu()
    children_before = children_cpu()
    started = time.monotonic()
    started_at = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        stop.set()
        sys.exit(f"measure.py: {args.label}: load generator still running after {args.timeout}s; killed")
    finally:
        stop.set()
        sampler.join()
    wall = time.monotonic() - started
    after = {n: cpu_seconds(p) for n, p in pids.items()}
    sys_after = system_cpu()
    loadgen_cpu = children_cpu() - children_before
    if proc.returncode != 0:
        sys.exit(f"measure.py: {args.label}: load generator exited {proc.returncode}: {stderr.strip()[-2000:]}")
    try:
        raw = json.loads(stdout)
    except json.JSONDecodeError as e:
        sys.exit(f"measure.py: {args.label}: load generator printed no JSON ({e}): {stdout[:500]!r}")
    result = {
        "label": args.label,
        "command": shlex.join(cmd),
        "started_at": started_at,
        "wall_s": wall,
        "load": summarize_oha(raw),
        "processes": {},
    }
    ok = result["load"]["ok"]
    busy = sys_after[0] - sys_before[0]
    tracked = sum(after[n] - before[n] for n in pids if before[n] is not None and after[n] is not None)
    result["system"] = {
        # Whole machine over the run, in CPU-seconds: all busy time, time the
        # hypervisor gave to someone else (steal), the load generator's own
        # time, and what is left for processes outside the benchmark.
        "busy_cpu_s": busy,
        "steal_cpu_s": sys_after[1] - sys_before[1],
        "total_cpu_s": sys_after[2] - sys_before[2],
        "loadgen_cpu_s": loadgen_cpu,
        "tracked_cpu_s": tracked,
        "foreign_cpu_s": max(0.0, busy - loadgen_cpu - tracked),
    }
    for n, p in pids.items():
        cpu = None
        if before[n] is not None and after[n] is not None:
            cpu = after[n] - before[n]
        result["processes"][n] = {
            "pid": p,
            "alive_after": alive(p),
            "rss_max_kb": peak[n],
            "cpu_s": cpu,
            "cpu_s_per_10k_ok": (cpu / ok * 10000.0) if (cpu is not None and ok) else None,
        }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    if args.raw_out:
        with open(args.raw_out, "w") as f:
            f.write(stdout)
    l = result["load"]
    dead = [n for n, p in result["processes"].items() if not p["alive_after"]]
    print(
        f"  {args.label:<28} {l['ok_per_s']:>9.0f} ok/s  p50 {fmt(l['p50_ms'])}  p99 {fmt(l['p99_ms'])} ms"
        f"  errors {l['errors'] + l['non_2xx']}"
        f"  (other CPU {result['system']['foreign_cpu_s'] / wall:.2f} cores, steal {result['system']['steal_cpu_s'] / wall:.2f})"
        + (f"  DIED: {', '.join(dead)}" if dead else ""),
        flush=True,
    )


def fmt(v):
    return "   n/a" if v is None else f"{v:6.2f}"


def cmd_rate(args):
    """Prints `RATE SETUP`: SETUP is the slowest of the given setups, judged by
    the lower of its two unthrottled runs (max-SETUP, cap-SETUP), and RATE is
    the fraction of that."""
    best = None
    for setup in args.setups:
        got = []
        for kind in ("max", "cap"):
            with open(os.path.join(args.results, f"{kind}-{setup}.json")) as f:
                got.append(json.load(f)["load"]["ok_per_s"])
        if best is None or min(got) < best[0]:
            best = (min(got), setup)
    print(max(1, int(best[0] * args.fraction)), best[1])


def cmd_sustained(args):
    """Exit 0 when a rate-limited run served the offered rate: at least
    --min-fraction of it as successful responses, no errors, and p90 within
    --max-p90-ms (a proxy past saturation queues, and its latency grows
    without bound)."""
    with open(args.file) as f:
        load = json.load(f)["load"]
    ok = (
        load["ok_per_s"] >= args.rate * args.min_fraction
        and load["errors"] + load["non_2xx"] == 0
        and load["p90_ms"] is not None
        and load["p90_ms"] <= args.max_p90_ms
    )
    sys.exit(0 if ok else 1)


def cmd_disturbed(args):
    """Exit 0 when, during the run, processes outside the benchmark plus the
    hypervisor's steal took more than --cores CPUs on average."""
    with open(args.file) as f:
        r = json.load(f)
    lost = (r["system"]["foreign_cpu_s"] + r["system"]["steal_cpu_s"]) / r["wall_s"]
    sys.exit(0 if lost > args.cores else 1)


def cmd_mtls_connections(args):
    """Prints how many inbound connections an Outrigger proxy counted as
    mutual TLS, from its Prometheus text on stdin."""
    total = 0.0
    for line in sys.stdin:
        if not line.startswith("outrigger_tcp_connections_opened_total{"):
            continue
        series, _, value = line.rstrip("\n").rpartition(" ")
        if 'direction="inbound"' in series and 'connection_security_policy="mutual_tls"' in series:
            total += float(value)
    print(int(total))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("idle")
    p.add_argument("--out", required=True)
    p.add_argument("--pid", action="append")
    p.set_defaults(func=cmd_idle)
    p = sub.add_parser("load")
    p.add_argument("--out", required=True)
    p.add_argument("--raw-out")
    p.add_argument("--label", required=True)
    p.add_argument("--pid", action="append")
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_load)
    p = sub.add_parser("rate")
    p.add_argument("--fraction", type=float, required=True)
    p.add_argument("--results", required=True)
    p.add_argument("setups", nargs="+")
    p.set_defaults(func=cmd_rate)
    p = sub.add_parser("sustained")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--min-fraction", type=float, default=0.97)
    p.add_argument("--max-p90-ms", type=float, default=50.0)
    p.add_argument("file")
    p.set_defaults(func=cmd_sustained)
    p = sub.add_parser("disturbed")
    p.add_argument("--cores", type=float, required=True)
    p.add_argument("file")
    p.set_defaults(func=cmd_disturbed)
    p = sub.add_parser("mtls-connections")
    p.set_defaults(func=cmd_mtls_connections)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
