#!/usr/bin/env bash
# What the console's first view of a portal costs on a filled journal: the
# three calls it makes (the portal list, then the newest page of events and
# 48 hours of stats, in parallel), timed with curl against the release
# binary, cold (first after start) and warm (median of 5); then the whole
# view drawn in headless Chromium (scripts/console-first-view-browser.py).
#
#   scripts/console-first-view.sh DATA_DIR
#
# Fill DATA_DIR first with the bench's fill, e.g. one portal of 10,000,000
# events:
#   target/release/b24-bench fill --data-dir DIR --to 10000000 --n 10000000 --portals 1
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: scripts/console-first-view.sh DATA_DIR}"
bin=target/release/b24-journal
[[ -x $bin ]] || cargo build --release -q -p b24-journal
token="first-view-$(openssl rand -hex 16)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" --read-token "$token" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 200); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done

get() { curl -s -o /tmp/first-view.$$ -w '%{time_total}' -H "Authorization: Bearer $token" "$base$1"; }
ms() { python3 -c "print(round($1 * 1000, 1))"; }

portals_s="$(get /v1/portals)"
read -r portal events newest_ts < <(python3 - /tmp/first-view.$$ <<'PY'
import json, sys, urllib.request
p = max(json.load(open(sys.argv[1]))["portals"], key=lambda p: p["events"])
print(p["member_id"], p["events"], 0)
PY
)
events_s="$(get "/v1/portals/$portal/events?limit=50")"
until_ts="$(python3 -c "import json; print(json.load(open('/tmp/first-view.$$'))['events'][0]['ts_unix'])")"
since_ts=$((until_ts - 47 * 3600))
stats_s="$(get "/v1/portals/$portal/stats?bucket=hour&since=$since_ts&until=$until_ts")"
charted="$(python3 -c "import json; print(json.load(open('/tmp/first-view.$$'))['events'])")"
rm -f /tmp/first-view.$$
echo "portal $portal: $events events; 48 h charted: $charted events"
echo "cold: portals $(ms "$portals_s") ms, events page $(ms "$events_s") ms, stats $(ms "$stats_s") ms"
echo "      first view = portals + max(events, stats) = $(python3 -c "print(round(($portals_s + max($events_s, $stats_s)) * 1000, 1))") ms"
warm=()
for _ in 1 2 3 4 5; do
  a="$(get /v1/portals)"; b="$(get "/v1/portals/$portal/events?limit=50")"
  c="$(get "/v1/portals/$portal/stats?bucket=hour&since=$since_ts&until=$until_ts")"
  warm+=("$(python3 -c "print(($a + max($b, $c)) * 1000)")")
done
rm -f /tmp/first-view.$$
echo "warm: first view median $(printf '%s\n' "${warm[@]}" | sort -n | sed -n 3p | cut -c1-6) ms (of 5)"
# The same view in headless Chromium (needs chromium and chromium-driver).
scripts/console-first-view-browser.py "$base" "$token" "$portal"
