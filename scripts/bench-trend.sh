#!/usr/bin/env bash
# The saturated rate as the store fills: ROUNDS consecutive wrk runs of
# DURATION at CONNECTIONS against one fresh all-in-one, each run's tags/s on
# one line, followed by the server's CPU time per tag in that run, by thread
# name (user + system, from /proc): which work grows as the store fills. To
# compare two builds, run it once with each binary, alternating (BIN=path). RENICE_FJALL=N puts the engine's background threads at nice N
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
TICKS=$(getconf CLK_TCK)
# CPU ticks so far of each thread name of the server, one "name ticks" a line.
thread_ticks() {
  local task
  for task in /proc/"$PID"/task/*; do
    echo "$(tr ' ' '_' <"$task/comm") $(cut -d' ' -f14,15 "$task/stat")"
  done | awk '{ticks[$1] += $2 + $3} END {for (name in ticks) print name, ticks[name]}' | sort
}
for run in $(seq 1 "$ROUNDS"); do
  before=$(thread_ticks)
  out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s scripts/load/user_tags.lua \
    "http://127.0.0.1:$PORT" -- "$run")
  after=$(thread_ticks)
  wrk_summary "$out"
  echo "run $run: $WRK_RATE tags/s, disk $(du -sm "$DATA" | cut -f1) MB"
  join <(echo "$before") <(echo "$after") | awk -v n="$WRK_REQUESTS" -v hz="$TICKS" \
    '$3 > $2 {printf "  %-18s %6.2f us per tag\n", $1, ($3 - $2) / hz * 1e6 / n}'
done
