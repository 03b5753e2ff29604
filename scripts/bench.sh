#!/usr/bin/env bash
# Reproduces the figures in README.md against the real all-in-one server:
# builds it in release mode, starts it on a fresh data directory, and loads it
# with wrk and hey (apt-get install wrk hey). Loopback only; every load is
# bounded in time or count.
#
#   ./scripts/bench.sh            # 20 s per step
#   DURATION=60s ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
DURATION="${DURATION:-20s}"
CONNECTIONS="${CONNECTIONS:-64}"
PORT="${PORT:-18080}"
GRPC_PORT="${GRPC_PORT:-18051}"
BASE="http://127.0.0.1:$PORT"

command -v wrk >/dev/null && command -v hey >/dev/null || {
  echo "needs wrk and hey: apt-get install -y wrk hey" >&2; exit 1; }

cargo build --release -p allezon >&2
DATA=$(mktemp -d)
RUST_LOG=warn ./target/release/allezon --http-addr "127.0.0.1:$PORT" \
  --grpc-addr "127.0.0.1:$GRPC_PORT" --data-dir "$DATA" >/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "$BASE/" && break; sleep 0.1; done


echo "== POST /user_tags, as fast as $CONNECTIONS connections go ($DURATION)"
wrk -t2 -c"$CONNECTIONS" -d"$DURATION" --latency -s scripts/load/user_tags.lua "$BASE" \
  | tee /tmp/allezon-bench-wrk.txt | grep -E "Latency|50%|90%|99%|requests in|Requests/sec"
sent=$(awk '/requests in/ {print $1}' /tmp/allezon-bench-wrk.txt)
echo "counted in aggregates right after the run: $(count_all "$BASE") of $sent"
sleep 2
echo "counted 2 s later: $(count_all "$BASE") of $sent"

# One tag sent over and over: the profile store keeps it once, the log and
# the aggregates take every copy (the client retried, as far as we know).
TAG='{"time":"2022-03-01T00:00:00.000Z","cookie":"retry00000000000000001","country":"PL","device":"PC","action":"VIEW","origin":"CAMPAIGN_1","product_info":{"product_id":1,"brand_id":"brand_1","category_id":"cat_1","price":100}}'
echo
echo "== POST /user_tags at a fixed 1,000/s (hey: 10 workers x 100/s, $DURATION)"
hey -z "$DURATION" -c 10 -q 100 -m POST -T application/json -d "$TAG" "$BASE/user_tags" \
  | grep -E "Requests/sec|50%|90%|99%|\[204\]|\[5"

echo
echo "== 100 hot cookies get 1,000+ distinct tags each (wrk, 15 s)"
wrk -t1 -c16 -d15s -s scripts/load/hot_cookies.lua "$BASE" | grep -E "requests in"
echo "== POST /user_profiles of a hot cookie (200 views + 200 buys kept) at a fixed 1,000/s ($DURATION)"
hey -z "$DURATION" -c 10 -q 100 -m POST \
  "$BASE/user_profiles/hot00000000000000042?time_range=2022-03-01T00:00:00.000_2022-03-01T01:00:00.000" \
  | grep -E "Requests/sec|50%|90%|99%|\[200\]|\[5"

echo
echo "== POST /aggregates, 10-minute range with two filters (2,000 queries, 1 at a time)"
hey -n 2000 -c 1 -m POST \
  "$BASE/aggregates?time_range=2022-03-01T00:00:00_2022-03-01T00:10:00&action=VIEW&origin=CAMPAIGN_1&brand_id=brand_1&aggregates=COUNT&aggregates=SUM_PRICE" \
  | grep -E "Requests/sec|50%|90%|99%|\[200\]|\[5"
echo
echo "== POST /aggregates, 24-hour range, no filter (200 queries, 1 at a time)"
hey -n 200 -c 1 -m POST \
  "$BASE/aggregates?time_range=2022-03-01T00:00:00_2022-03-02T00:00:00&action=BUY&aggregates=COUNT" \
  | grep -E "Requests/sec|50%|90%|99%|\[200\]|\[5"
