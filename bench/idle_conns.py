#!/usr/bin/env python3
"""Memory a proxy holds per connection, and whether it gives it back.

Drives one proxy (any: Outrigger, Envoy, HAProxy) listening on HOST:PORT in
front of an upstream that answers GET /, and reads the proxy's VmRSS and open
file descriptors from /proc/PID. Prints one JSON object on stdout.

  idle     RSS after a warm-up (a few requests on a few connections, closed),
           then a settle pause
  held     N keep-alive connections, each after one complete request and
           response, all held open and idle
  per_conn (held - idle) / N
  after    RSS sampled every second for SETTLE seconds after all N closed;
           `returned_at` is the first second at which RSS was within
           2x idle (null if never)
  slow     (with --slowloris M) M connections that send a request head one
           byte per second and never finish it; RSS while they are open, then
           after the proxy closed them (its header timeout) or they were
           closed here after --slow-hold seconds

Usage: idle_conns.py --pid PID --port PORT [--conns 10000] [--settle 30]
       [--slowloris 2000] [--slow-hold 15]
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench-upstream\r\nUser-Agent: idle-conns\r\n\r\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


async def read_response(reader):
    """Reads one HTTP/1.1 response with a Content-Length or chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def open_held(host, port, n, parallel=256):
    """N connections, each after one request answered 200, kept open."""
    gate = asyncio.Semaphore(parallel)
    held, failed = [], 0

    async def one():
        nonlocal failed
        async with gate:
            try:
                r, w = await asyncio.open_connection(host, port)
                w.write(REQUEST)
                await w.drain()
                status = await asyncio.wait_for(read_response(r), 10)
                if status != 200:
                    raise RuntimeError(f"status {status}")
                held.append((r, w))
            except Exception as e:  # counted, reported, never silent
                failed += 1
                if failed <= 3:
                    print(f"connection failed: {e!r}", file=sys.stderr)

    await asyncio.gather(*(one() for _ in range(n)))
    return held, failed


async def close_all(conns):
    for _, w in conns:
        w.close()
    for _, w in conns:
        try:
            await w.wait_closed()
        except Exception:
            pass


async def sample_until(pid, idle, seconds):
    """RSS each second for `seconds`; the first second within 2x idle."""
    samples, returned_at = [], None
    start = time.monotonic()
    for s in range(seconds + 1):
        await asyncio.sleep(max(0.0, start + s - time.monotonic()))
        kib = rss_kib(pid)
        samples.append(kib)
        if returned_at is None and kib <= 2 * idle:
            returned_at = s
    return samples, returned_at


async def slowloris(host, port, m, hold, pid, parallel=256):
    """M connections trickling a request head one byte a second."""
    gate = asyncio.Semaphore(parallel)
    conns = []

    async def one():
        async with gate:
            try:
                r, w = await asyncio.open_connection(host, port)
                w.write(b"GET / HTTP/1.1\r\n")
                await w.drain()
                conns.append((r, w))
            except Exception:
                pass

    await asyncio.gather(*(one() for _ in range(m)))
    opened = len(conns)
    peak = rss_kib(pid)
    start = time.monotonic()
    closed_by_proxy = 0
    while time.monotonic() - start < hold:
        await asyncio.sleep(1)
        for r, w in conns:
            if not w.is_closing() and not r.at_eof():
                try:
                    w.write(b"X")
                except Exception:
                    pass
        peak = max(peak, rss_kib(pid))
    for r, _ in conns:
        if r.at_eof():
            closed_by_proxy += 1
    await close_all(conns)
    return {"opened": opened, "rss_peak_kib": peak, "closed_by_proxy": closed_by_proxy}


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--settle", type=int, default=30)
    ap.add_argument("--slowloris", type=int, default=0)
    ap.add_argument("--slow-hold", type=int, default=15)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = a.conns + a.slowloris + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(need, min(hard, need)), hard))

    warm, failed = await open_held(a.host, a.port, 16)
    if failed:
        raise SystemExit(f"warm-up: {failed} of 16 connections failed")
    await close_all(warm)
    await asyncio.sleep(3)
    idle = rss_kib(a.pid)
    idle_fds = fds(a.pid)

    held, failed = await open_held(a.host, a.port, a.conns)
    await asyncio.sleep(2)
    held_kib = rss_kib(a.pid)
    held_fds = fds(a.pid)
    n = len(held)
    await close_all(held)
    after, returned_at = await sample_until(a.pid, idle, a.settle)
    out = {
        "conns": a.conns,
        "held": n,
        "failed": failed,
        "idle_kib": idle,
        "idle_fds": idle_fds,
        "held_kib": held_kib,
        "held_fds": held_fds,
        "per_conn_kib": round((held_kib - idle) / n, 2) if n else None,
        "after_kib": after,
        "after_end_kib": after[-1],
        "after_end_fds": fds(a.pid),
        "returned_at_s": returned_at,
    }
    if a.slowloris:
        before = rss_kib(a.pid)
        slow = await slowloris(a.host, a.port, a.slowloris, a.slow_hold, a.pid)
        slow["rss_before_kib"] = before
        samples, ret = await sample_until(a.pid, idle, a.settle)
        slow["after_end_kib"] = samples[-1]
        slow["returned_at_s"] = ret
        out["slowloris"] = slow
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
