#!/usr/bin/env bash
# Crash consistency: K cycles of start → 64 keep-alive connections posting
# events (~10% resends) → SIGKILL after a random 0.2–2 s → restart on the same
# data directory → check every acknowledged event is there exactly once.
# Prints `crash-test: cycles=K acked=N lost=L duplicated=D reopen_failures=F`.
#
#   scripts/crash-test.sh            # 20 cycles
#   scripts/crash-test.sh 100        # 100 cycles
#   CRASH_SEED=123 scripts/crash-test.sh   # replay a run (the seed is printed)
#
# Other knobs: CRASH_CONNS (64), CRASH_MIN_MS (200), CRASH_MAX_MS (2000),
# CRASH_SNAPSHOT_EVERY_MB (the service's --snapshot-every-mb; 1 makes kills
# land around engine reopens).
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_CYCLES="${1:-${CRASH_CYCLES:-20}}"
exec cargo test --release --test crash -- --ignored --nocapture crash_consistency_long
