#!/usr/bin/env bash
# Aggregate queries while tags saturate the all-in-one: wrk sends tags at
# 64 connections while hey asks POST /aggregates (the last 5 minutes of
# event time, one brand) 50 times a second; prints hey's latency summary.
# Loopback only; bounded by DURATION.
#
#   ./scripts/bench-query-latency.sh          # needs wrk and hey
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
DURATION="${DURATION:-18}"
for tool in wrk hey; do
  command -v $tool >/dev/null || { echo "needs $tool: apt-get install -y $tool" >&2; exit 1; }
done
if [ -z "${BIN:-}" ]; then
  cargo build --release -p allezon >&2
  BIN=./target/release/allezon
fi
DATA=$(mktemp -d)
trap 'kill ${PID:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"' EXIT
start_all_in_one "$BIN" "$DATA"
wrk -t2 -c64 -d"$((DURATION + 4))s" -s scripts/load/user_tags.lua \
  "http://127.0.0.1:$PORT" -- 1 >/dev/null &
sleep 2
# scripts/load/user_tags.lua dates tags by today's time of day on 2022-03-01.
now=$(( $(date -u +%s) % 86400 ))
at() { printf '2022-03-01T%02d:%02d:%02d' $(($1 / 3600)) $(($1 / 60 % 60)) $(($1 % 60)); }
range="$(at $((now - 240)))_$(at $((now + 60)))"
hey -z "${DURATION}s" -c 2 -q 25 -m POST \
  "http://127.0.0.1:$PORT/aggregates?time_range=$range&action=VIEW&aggregates=COUNT&brand_id=brand_7" \
  | grep -E "Slowest|Average|Requests/sec|95%|99%"
