#!/usr/bin/env bash
# Do idle live streams slow ingest? Measures durable ingest (wrk, 64
# connections, unique events, 10 s) with no stream open, then with N idle SSE
# streams open on another portal, then without again. Prints events/s for
# each. Usage: scripts/idle-streams-bench.sh [N]   (default 500; needs wrk, curl)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-500}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/b24-journal
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
p1=a223c6b3710f85df22e9377d6c4f7553 t1=51856fefc120afa4b628cc82d3935cce
p2=010b6886ebc205e43ae65000ee00addb t2=3c6c9248ec54af6bea1159b43ee0ab32
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
counter = 0
request = function()
  counter = counter + 1
  local body = "event=ONCRMACTIVITYUPDATE&data%5BFIELDS%5D%5BID%5D=" .. math.random(1, 2000000000) .. "_" .. counter .. "&ts=1466439714&auth%5Bdomain%5D=some-domain.bitrix24.com&auth%5Bmember_id%5D=$p1&auth%5Bapplication_token%5D=$t1"
  return wrk.format("POST", "/v1/bitrix24/events", nil, body)
end
LUA
"$bin" serve --listen 127.0.0.1:$port --data-dir "$work/data" --portal $p1=$t1 --portal $p2=$t2 \
  --read-token rt --max-streams $((n + 10)) >"$work/server.log" 2>&1 &
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
# The streamed portal must exist; it then stays idle.
curl -sf -XPOST -H 'Content-Type: application/x-www-form-urlencoded' \
  --data-binary @tests/fixtures/ONCRMCONTACTADD-app.form "http://127.0.0.1:$port/v1/bitrix24/events" >/dev/null
rate() { wrk -t1 -c64 -d10s -s "$work/post.lua" "http://127.0.0.1:$port/" | awk '/Non-2xx/ {bad=$NF} /Requests\/sec/ {r=$2} END {print r " events/s" (bad ? " (non-2xx: " bad ")" : "")}'; }
echo "no streams:        $(rate)"
for _ in $(seq "$n"); do
  curl -sN -H 'Authorization: Bearer rt' "http://127.0.0.1:$port/v1/portals/$p2/events/stream" >/dev/null &
done
sleep 2
echo "$n idle streams: $(rate)"
kill $(jobs -p | tail -n "$n") 2>/dev/null || true
sleep 1
echo "no streams again:  $(rate)"
