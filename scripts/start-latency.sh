#!/usr/bin/env bash
# Start-up latency of the five processes: RUNS times, start a fresh tansu and
# the cluster (scripts/cluster.sh; Aerospike when AEROSPIKE_HOSTS is set),
# send the first 2,000 tags at 2,000/s without queries, print the tag line of
# the replay report (a timed-out tag waited over 200 ms), and stop. Loopback
# only; bounded by RUNS.
#
#   AEROSPIKE_HOSTS=127.0.0.1:3000 RUNS=8 ./scripts/start-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"
RUNS="${RUNS:-8}"
export PARTITIONS="${PARTITIONS:-4}" WORKERS="${WORKERS:-1}"
cargo build --release --locked -p allezon-replay >&2
for i in $(seq 1 "$RUNS"); do
  export RUN ALLEZON_AEROSPIKE_SET_PREFIX KAFKA
  RUN=$(mktemp -d)
  ALLEZON_AEROSPIKE_SET_PREFIX="start$(date +%s)_${i}_"
  port=$(free_port)
  KAFKA="127.0.0.1:$port"
  start_tansu "$port" "$RUN/tansu.log"
  RUST_LOG=warn ./scripts/cluster.sh start 2>/dev/null
  ./target/release/allezon-replay --target "http://127.0.0.1:${HTTP_PORT:-8080}" --seed "$i" \
    --tags 2000 --rate 2000 --quiet --profile-every 0 --aggregate-every 0 |
    grep '^user_tags' || true
  ./scripts/cluster.sh stop
  kill "$TANSU_PID" 2>/dev/null || true
  wait "$TANSU_PID" 2>/dev/null || true
  sleep 1
done
