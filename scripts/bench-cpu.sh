#!/usr/bin/env bash
# The server's CPU time per tag under saturation, a steadier measure than the
# rate on a shared machine: for each server given, one wrk run on a fresh
# data directory, printing its rate, p99 and the server's user + system CPU
# time (from /proc) per request answered. `bare` is the reference server
# (gateway/examples/bare_tags.rs); anything else is an all-in-one binary.
# Servers alternate, ROUNDS times. Loopback only; every run is bounded.
#
#   cp target/release/allezon /tmp/allezon-before     # on the old commit
#   ROUNDS=3 ./scripts/bench-cpu.sh /tmp/allezon-before target/release/allezon
#   C=256 D=20s ./scripts/bench-cpu.sh bare target/release/allezon
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ROUNDS="${ROUNDS:-1}" C="${C:-64}" D="${D:-15s}"
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }
[ $# -gt 0 ] || { echo "usage: $0 SERVER... (an all-in-one binary, or bare)" >&2; exit 2; }
TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

DATA=""
trap 'kill ${PID:-} 2>/dev/null; wait 2>/dev/null; [ -z "$DATA" ] || rm -rf "$DATA"' EXIT
for _ in $(seq 1 "$ROUNDS"); do
  for server in "$@"; do
    if [[ $server == bare ]]; then
      cargo build --release -q -p gateway --example bare_tags >&2
      PORT=$(free_port)
      ./target/release/examples/bare_tags "127.0.0.1:$PORT" &
      PID=$!
      for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    else
      DATA=$(mktemp -d)
      start_all_in_one "$server" "$DATA"
    fi
    before=$(cpu_ticks "$PID")
    out=$(wrk -t2 -c"$C" -d"$D" --latency -s scripts/load/user_tags.lua \
      "http://127.0.0.1:$PORT" -- "$RANDOM" 2>/dev/null)
    after=$(cpu_ticks "$PID")
    wrk_summary "$out"
    awk -v name="$server" -v before="$before" -v after="$after" -v ticks="$TICKS" \
      -v requests="$WRK_REQUESTS" -v rate="$WRK_RATE" -v p99="$WRK_P99" \
      'BEGIN { printf "%-32s %10s tags/s  p99 %-8s  server CPU %5.1f us per tag\n",
               name, rate, p99, (after - before) / ticks * 1e6 / requests }'
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
    if [ -n "$DATA" ]; then rm -rf "$DATA"; DATA=""; fi
  done
done
