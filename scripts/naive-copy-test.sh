#!/usr/bin/env bash
# What happens when the live data directory is copied with `cp -r` while the
# service takes events? Starts the release binary, loads it with wrk (64
# connections, unique events), copies the directory mid-load TRIALS times,
# and for each copy reports whether it opens and whether `verify` passes.
# Usage: scripts/naive-copy-test.sh [TRIALS]   (needs wrk; builds release)
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-5}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/b24-journal
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
member=a223c6b3710f85df22e9377d6c4f7553 token=51856fefc120afa4b628cc82d3935cce
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
local n = 0
request = function()
  n = n + 1
  local body = "event=ONCRMACTIVITYUPDATE&data%5BFIELDS%5D%5BID%5D=" .. math.random(1, 1000000000) .. "_" .. n .. "&ts=1466439714&auth%5Bdomain%5D=some-domain.bitrix24.com&auth%5Bmember_id%5D=$member&auth%5Bapplication_token%5D=$token"
  return wrk.format(nil, "/v1/bitrix24/events", nil, body)
end
LUA
"$bin" serve --listen 127.0.0.1:$port --data-dir "$work/live" --portal $member=$token >"$work/server.log" 2>&1 &
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
wrk -t2 -c64 -d$((trials * 3 + 5))s -s "$work/post.lua" "http://127.0.0.1:$port" >/dev/null &
sleep 2
opened=0 verified=0
for i in $(seq "$trials"); do
  cp -r "$work/live" "$work/copy$i"
  if out=$("$bin" verify --data-dir "$work/copy$i" 2>&1); then
    opened=$((opened + 1)); verified=$((verified + 1)); result="opens, verify OK"
  elif grep -q '"problem_count"' <<<"$out"; then
    opened=$((opened + 1)); result="opens, verify FAILED: $(grep -o '"problem_count": [0-9]*' <<<"$out")"
  else
    result="does NOT open: $(tail -n1 <<<"$out")"
  fi
  echo "copy $i: $result"
  sleep 2
done
echo "naive-copy: trials=$trials opened=$opened verified=$verified"
