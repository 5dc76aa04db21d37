#!/usr/bin/env bash
# Benchmark harness: ceiling, ingest, query and resources in one run, one
# markdown table on stdout and in target/bench/latest.md.
#
#   scripts/bench.sh                 # full run, N = 1,000,000 (several minutes)
#   scripts/bench.sh --full          # N = 10,000,000
#   scripts/bench.sh --smoke         # a few seconds; exits non-zero on correctness errors (CI)
#   scripts/bench.sh --write BENCHMARKS.md
#
# Every other option is passed to `b24-bench run` (see `target/release/b24-bench`).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p b24-journal -p b24-journal-bench

work="$(mktemp -d -t b24-bench.XXXXXX)"
harness_pid=""
cleanup() {
  # The harness kills its own children; this catches what a killed harness
  # left behind (each child's pid is a file in $work/pids).
  if [[ -n "$harness_pid" ]]; then kill "$harness_pid" 2>/dev/null || true; fi
  if [[ -d "$work/pids" ]]; then
    for f in "$work"/pids/*; do
      [[ -e "$f" ]] || continue
      kill -9 "$(cat "$f")" 2>/dev/null || true
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# On a shared machine, background work (builds, tests) steals CPU from the
# measured processes; where allowed, run the harness and every server it
# starts at a higher priority (children inherit it). The report shows the
# niceness used and the CPU that other processes still got.
prio=()
if nice -n -10 true 2>/dev/null; then prio=(nice -n -10); fi

cmd="scripts/bench.sh${*:+ $*}"
"${prio[@]}" target/release/b24-bench run \
  --tmp "$work" \
  --repo . \
  --server-bin target/release/b24-journal \
  --ceiling-bin target/release/b24-bench-ceiling \
  --latest target/bench/latest.md \
  --command "$cmd" \
  "$@" &
harness_pid=$!
set +e
wait "$harness_pid"
status=$?
set -e
harness_pid=""
exit "$status"
