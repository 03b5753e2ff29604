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
DATA=$(mktemp -d)
trap 'kill ${PID:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"' EXIT
start_all_in_one "$BIN" "$DATA"
[ -z "${RENICE_FJALL:-}" ] || renice_engine "$PID" "$RENICE_FJALL"
for run in $(seq 1 "$ROUNDS"); do
  rate=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s scripts/load/user_tags.lua \
    "http://127.0.0.1:$PORT" -- "$run" | awk '/Requests\/sec/ {print $2}')
  echo "run $run: $rate tags/s"
done
