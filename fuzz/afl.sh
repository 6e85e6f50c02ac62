#!/usr/bin/env bash
# The long, coverage-guided fuzz run: every target (or those named) under
# AFL++ for SECONDS each, JOBS at a time, then one summary line per target
# from AFL++'s own statistics. Needs cargo-afl (`cargo install cargo-afl`,
# which builds AFL++); stable Rust. Not part of CI (docs/testing.md).
#
#   fuzz/afl.sh [-s SECONDS] [-j JOBS] [-o DIR] [TARGET...]
#
# Crashes land in DIR/<target>/default/crashes/; replay one with
#   target/fuzz/outrigger-fuzz <target> DIR/<target>/default/crashes/id:*
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=180 jobs=2 out=/tmp/outrigger-afl
while getopts s:j:o: opt; do
  case $opt in
    s) seconds=$OPTARG ;;
    j) jobs=$OPTARG ;;
    o) out=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(find fuzz/corpus -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
fi

export CARGO_INCREMENTAL=0
# The profile keeps the instrumented build apart from the dev build;
# -O1 builds the whole dependency graph in minutes rather than tens.
AFL_OPT_LEVEL=${AFL_OPT_LEVEL:-1} nice cargo afl build --profile fuzz --features afl \
  -p outrigger-fuzz --bin outrigger-fuzz
bin=target/fuzz/outrigger-fuzz

# A shared machine: no CPU pinning, no UI, no refusal over the kernel's
# core pattern or CPU governor.
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SUPPRESS_LOG=1
mkdir -p "$out"
run() {
  local t=$1
  rm -rf "${out:?}/$t"
  nice cargo afl fuzz -V "$seconds" -i "fuzz/corpus/$t" -o "$out/$t" -- "$bin" "$t" \
    >"$out/$t.log" 2>&1 || echo "$t: afl-fuzz exited $? (see $out/$t.log)"
}
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
  run "$t" &
done
wait

printf '%-18s %12s %8s %10s %8s %8s %7s %6s\n' target execs exec/s edges cover corpus crashes hangs
for t in "${targets[@]}"; do
  s=$out/$t/default/fuzzer_stats
  [[ -f $s ]] || { echo "$t: no statistics"; continue; }
  v() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$s"; }
  printf '%-18s %12s %8s %10s %8s %8s %7s %6s\n' "$t" "$(v execs_done)" "$(v execs_per_sec)" \
    "$(v edges_found)/$(v total_edges)" "$(v bitmap_cvg)" "$(v corpus_count)" \
    "$(v saved_crashes)" "$(v saved_hangs)"
done
