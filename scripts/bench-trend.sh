#!/usr/bin/env bash
# The saturated rate as the store fills: ROUNDS consecutive wrk runs of
# DURATION at CONNECTIONS against one fresh all-in-one, each run's tags/s on
# one line. To compare two builds, run it once with each binary, alternating
# (BIN=path). RENICE_FJALL=N puts the engine's background threads at nice N
# after the start (they run at nice 10; 0 for equal priority). Loopback
# only; bounded.
#
#   ./scripts/bench-trend.sh                          # 4 runs of 20 s, 64 connections
#   BIN=/tmp/allezon.other ./scripts/bench-trend.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS="${ROUNDS:-4}" DURATION="${DURATION:-20s}" CONNECTIONS="${CONNECTIONS:-64}"
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
if [ -z "${BIN:-}" ]; then
  cargo build --release -p allezon >&2
  BIN=./target/release/allezon
fi
PORT=$(free_port); GRPC=$(free_port); ADMIN=$(free_port)
DATA=$(mktemp -d)
RUST_LOG=warn "$BIN" --http-addr "127.0.0.1:$PORT" --grpc-addr "127.0.0.1:$GRPC" \
  --admin-addr "127.0.0.1:$ADMIN" --data-dir "$DATA" >/dev/null 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && break; sleep 0.1; done
if [ -n "${RENICE_FJALL:-}" ]; then
  for task in /proc/$PID/task/*; do
    [[ $(cat "$task/comm") == fjall* ]] && renice -n "$RENICE_FJALL" -p "${task##*/}" >/dev/null
  done
fi
for run in $(seq 1 "$ROUNDS"); do
  rate=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s scripts/load/user_tags.lua \
    "http://127.0.0.1:$PORT" -- "$run" | awk '/Requests\/sec/ {print $2}')
  echo "run $run: $rate tags/s"
done
