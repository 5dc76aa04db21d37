#!/usr/bin/env bash
# Runs every fuzz target for RUNS executions (default 10,000,000) and prints
# libFuzzer's final stats per target. Needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). No sanitizer (`-s none`): the code
# under test is safe Rust, and without ASan the targets run 3-5x faster;
# debug assertions and overflow checks stay on (cargo-fuzz's default).
#
#   fuzz/run.sh                       # all targets, 10M runs each
#   RUNS=1000000 fuzz/run.sh decode_json
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-10000000}"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode_form decode_json cursor_decode events_query_parse)
for t in "${targets[@]}"; do
  log="fuzz/artifacts/$t.log"
  mkdir -p fuzz/artifacts
  start=$(date +%s)
  cargo +nightly fuzz run -s none "$t" -- -runs="$RUNS" -print_final_stats=1 >"$log" 2>&1 || {
    echo "$t: FAILED (see $log)"; tail -40 "$log"; exit 1; }
  end=$(date +%s)
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  rate=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
  done_line=$(grep -m1 '^Done' "$log")
  echo "$t: $done_line; executions=$execs exec/s=$rate wall=$((end - start))s (incl. build)"
done
