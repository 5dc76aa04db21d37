#!/usr/bin/env bash
# Cluster benchmark: durable ingest throughput and latency of a 3-node
# cluster on NATS JetStream (three nats-servers with sync_interval: always,
# three b24-journal nodes, all on this machine) against embedded mode, in
# the same run, at 16 and 64 connections; then the longest answer during
# a failover of the stream's leader (SIGKILL under 16 connections).
#
#   scripts/bench-cluster.sh [SECS]      # SECS per load phase, default 10
#
# Prints a markdown table (also in target/bench/cluster.md). On one
# machine the three nodes and three NATS servers share its cores: the
# cluster's figures are a floor for machines of their own.
#
#   JOURNAL_WRAP=eatmydata scripts/bench-cluster.sh [SECS]
#
# runs the journal processes (embedded and the three nodes, not NATS) with
# their fsyncs turned into no-ops: the most that skipping the redo log's
# per-batch fdatasync could gain (docs/cluster.md, "Local durability").
# A measurement only: never run a service that way.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
wrap="${JOURNAL_WRAP:-}"

cargo build --release -q -p b24-journal -p b24-journal-bench
nats_bin="${B24J_NATS_SERVER:-$(scripts/install-nats.sh)}"
bin=target/release/b24-journal
bench=target/release/b24-bench

work="$(mktemp -d -t b24-cluster-bench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 1 300); do
    curl -sf "http://$1/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "node $1 did not become healthy" >&2
  return 1
}

$bench load --config > "$work/portals.toml"
read_token=bench-read-token-0123456789

# Embedded mode.
emb_port=$(port)
$wrap $bin serve --listen 127.0.0.1:$emb_port --data-dir "$work/embedded" --config "$work/portals.toml" \
  --read-token $read_token --log-level warn &
pids+=($!); emb_pid=$!
wait_http 127.0.0.1:$emb_port
emb16=$($bench load --journal 127.0.0.1:$emb_port 16 "$secs" 2)
emb64=$($bench load --journal 127.0.0.1:$emb_port 64 "$secs" 2)
kill -TERM $emb_pid; wait $emb_pid || true

# Three NATS servers in a route mesh.
routes=($(port) $(port) $(port)); clients=($(port) $(port) $(port))
nats_pids=()
for i in 0 1 2; do
  others=""
  for j in 0 1 2; do [ $j = $i ] || others="$others nats-route://127.0.0.1:${routes[$j]},"; done
  cat > "$work/n$((i+1)).conf" <<CONF
server_name: n$((i+1))
listen: 127.0.0.1:${clients[$i]}
jetstream { store_dir: "$work/n$((i+1))-js", sync_interval: always }
cluster { name: bench, listen: 127.0.0.1:${routes[$i]}, routes: [${others%,}] }
CONF
  "$nats_bin" -c "$work/n$((i+1)).conf" >"$work/n$((i+1)).log" 2>&1 &
  pids+=($!); nats_pids+=($!)
done
urls="nats://127.0.0.1:${clients[0]},nats://127.0.0.1:${clients[1]},nats://127.0.0.1:${clients[2]}"
for _ in $(seq 1 120); do
  $bin cluster --cluster "$urls" init --max-age-days 1 --max-bytes 1073741824 >/dev/null 2>&1 && break
  sleep 0.5
done

# Three journal nodes.
node_ports=($(port) $(port) $(port))
for i in 0 1 2; do
  $wrap $bin serve --listen 127.0.0.1:${node_ports[$i]} --data-dir "$work/j$i" --config "$work/portals.toml" \
    --read-token $read_token --cluster "$urls" --node-name j$i --log-level warn &
  pids+=($!)
done
for i in 0 1 2; do wait_http 127.0.0.1:${node_ports[$i]}; done
first=127.0.0.1:${node_ports[0]}
also=127.0.0.1:${node_ports[1]},127.0.0.1:${node_ports[2]}
cl16=$($bench load --journal $first 16 "$secs" 2 --also $also)
cl64=$($bench load --journal $first 64 "$secs" 2 --also $also)

# Failover: SIGKILL the stream's leader 3 s into a 16-connection run.
leader=$($bin cluster --cluster "$urls" status | python3 -c 'import json,sys;print(json.load(sys.stdin)["cluster"]["leader"])')
leader_pid=${nats_pids[$(( ${leader#n} - 1 ))]}
( sleep 4; kill -9 "$leader_pid" ) &
fo=$($bench load --journal $first 16 15 2 --also $also)

row() { # name, load line
  python3 - "$1" "$2" <<'PY'
import re, sys
name, line = sys.argv[1], sys.argv[2]
def g(k):
    return int(re.search(k + r" (\d+)", line).group(1))
rate = re.match(r"(\d+) req/s", line).group(1)
print("| %s | %s | %.2f | %.2f | %.1f | %d |" % (name, rate, g("p50") / 1000, g("p99") / 1000, g("max") / 1000, g("503")))
PY
}
mkdir -p target/bench
{
  echo "Command: \`${wrap:+JOURNAL_WRAP=$wrap }scripts/bench-cluster.sh $secs\` ($(nproc) cores, $(date -u +%Y-%m-%d))"
  echo
  echo "| mode | req/s | p50 ms | p99 ms | max ms | 503 |"
  echo "|------|------:|-------:|-------:|-------:|----:|"
  row "embedded, 16 conns" "$emb16"
  row "embedded, 64 conns" "$emb64"
  row "cluster 3+3, 16 conns" "$cl16"
  row "cluster 3+3, 64 conns" "$cl64"
  row "cluster, leader SIGKILLed, 16 conns" "$fo"
  echo
  echo "Raw \`b24-bench load\` lines: embedded 16/64: $emb16 / $emb64; cluster 16/64: $cl16 / $cl64; failover: $fo"
} | tee target/bench/cluster.md
