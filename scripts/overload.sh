#!/usr/bin/env bash
# Overload: far more requests than the all-in-one can serve (CONNECTIONS
# closed-loop wrk connections, several times what saturates it), for
# DURATION. Prints resident memory every few seconds while the load runs,
# wrk's rate and latency, how many requests were refused, and whether every
# tag answered 204 was counted. Loopback only; bounded by DURATION.
#
#   ./scripts/overload.sh                        # 6,000 connections, 60 s
#   CONNECTIONS=2000 DURATION=30s ./scripts/overload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
CONNECTIONS="${CONNECTIONS:-6000}"
DURATION="${DURATION:-60s}"
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
# One descriptor per connection on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -p allezon >&2
PORT=$(free_port)
DATA=$(mktemp -d)
RUST_LOG=warn ./target/release/allezon --http-addr "127.0.0.1:$PORT" \
  --grpc-addr 127.0.0.1:0 --admin-addr off --data-dir "$DATA" >/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done

rss() { awk '/VmRSS/ {printf "%d MiB", $2 / 1024}' "/proc/$PID/status"; }
echo "idle: $(rss)"
out=$(mktemp)
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --timeout 10s --latency -s scripts/load/user_tags.lua \
  "http://127.0.0.1:$PORT" -- 1 >"$out" 2>&1 &
WRK=$!
peak=0
while kill -0 "$WRK" 2>/dev/null; do
  sleep 5
  kb=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
  peak=$((kb > peak ? kb : peak))
  echo "$(date +%T) resident $((kb / 1024)) MiB"
done
cat "$out"
requests=$(awk '/requests in/ {print $1}' "$out")
bad=$(awk '/Non-2xx/ {print $5}' "$out"); bad=${bad:-0}
accepted=$((requests - bad))
echo "peak resident memory: $((peak / 1024)) MiB; requests $requests, refused (503) $bad, accepted $accepted"
for _ in $(seq 1 90); do
  counted=$(count_all "http://127.0.0.1:$PORT")
  [[ $counted -ge $accepted ]] && break
  sleep 1
done
echo "counted in the aggregates: $counted (at least every accepted tag: $([[ $counted -ge $accepted ]] && echo yes || echo NO))"
[[ $counted -ge $accepted ]]
