#!/usr/bin/env bash
# The local two-proxy demo (static mode, loopback, no root, no iptables):
#
#   curl → client proxy :4140 (outbound) ──HTTP/2──▶ server proxy :4143 (inbound) → upstream :8080
#
# Builds the release binaries, starts the upstream and both proxies from the
# checked-in configs next to this script, and prints commands to try.
# Ctrl-C stops everything. With --smoke it sends a few requests, checks the
# answers and the metrics, and exits (CI runs it that way).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
smoke=0
[[ "${1:-}" == "--smoke" ]] && smoke=1

cd "$root"
echo "building (release)..."
cargo build --release --locked -q -p outrigger-proxy -p outrigger-bench
target_dir="${CARGO_TARGET_DIR:-target}"
[[ "$target_dir" == /* ]] || target_dir="$root/$target_dir"
bin="$target_dir/release"
logs="$(mktemp -d)"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

for port in 8080 4140 4143 4191 4192; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use on 127.0.0.1; stop whatever holds it and retry" >&2
    exit 1
  fi
done

"$bin/outrigger-bench-upstream" --listen 127.0.0.1:8080 --name web-v1 >"$logs/upstream.log" 2>&1 & pids+=($!)
"$bin/outrigger-proxy" run --config "$here/server-proxy.yaml" --access-log >"$logs/server-proxy.log" 2>&1 & pids+=($!)
"$bin/outrigger-proxy" run --config "$here/client-proxy.yaml" --access-log >"$logs/client-proxy.log" 2>&1 & pids+=($!)

# Wait (bounded) until both proxies say they are ready.
for admin in 4191 4192; do
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fs "http://127.0.0.1:$admin/ready" >/dev/null || { echo "proxy on admin :$admin never became ready; logs in $logs" >&2; exit 1; }
done

echo
echo "mesh is up; logs in $logs"
echo "  $ curl -s http://127.0.0.1:4140/"
answer="$(curl -fsS http://127.0.0.1:4140/)"
echo "  $answer"

if [[ $smoke == 1 ]]; then
  [[ "$answer" == "hello from web-v1" ]] || { echo "unexpected answer: $answer" >&2; exit 1; }
  h2="$(curl -fsS --http2-prior-knowledge http://127.0.0.1:4140/bytes/5)"
  [[ "$h2" == "xxxxx" ]] || { echo "unexpected HTTP/2 answer: $h2" >&2; exit 1; }
  echoed="$(curl -fsS -d 'ping' http://127.0.0.1:4140/echo)"
  [[ "$echoed" == "ping" ]] || { echo "unexpected echo: $echoed" >&2; exit 1; }
  count="$(curl -fsS http://127.0.0.1:4191/metrics | awk '/^outrigger_requests_total\{.*response_code="200"/ {s+=$NF} END {print s+0}')"
  [[ "$count" == "3" ]] || { echo "client proxy counted $count requests, expected 3" >&2; exit 1; }
  echo "smoke test passed: HTTP/1.1, HTTP/2 and a streamed body through both proxies; metrics count 3"
  exit 0
fi

cat <<TRY

Try:
  curl -s http://127.0.0.1:4140/                              # HTTP/1.1 through both proxies
  curl -s --http2-prior-knowledge http://127.0.0.1:4140/      # HTTP/2
  curl -s -d 'hello' http://127.0.0.1:4140/echo               # a streamed request body, echoed
  curl -s http://127.0.0.1:4191/metrics | grep ^outrigger_requests_total
  curl -s http://127.0.0.1:4191/config                        # the client proxy's snapshot in force
  tail -f $logs/client-proxy.log                              # access log
  curl -s -XPOST http://127.0.0.1:4191/shutdown               # graceful drain of the client proxy

Ctrl-C stops the demo.
TRY
wait
