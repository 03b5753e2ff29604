#!/usr/bin/env bash
# The multi-process check: the five processes (scripts/cluster.sh) on a
# fresh tansu broker, with Aerospike when AEROSPIKE_HOSTS is set; the replay
# client sends TAGS tags at RATE tags/s with profile and aggregate queries,
# and one ingest worker is killed with SIGKILL and restarted mid-run
# (KILL_AFTER=0: no kill). After the run, every minute of every filter
# combination the stream touched is compared with the model
# (--verify-every-cell). Reports go to docs/bench/cluster-*. Loopback only;
# bounded by TAGS.
#
#   AEROSPIKE_HOSTS=127.0.0.1:3000 ./scripts/replay-cluster.sh
#   TAGS=300000 RATE=2000 KILL_AFTER=60 ./scripts/replay-cluster.sh
#   KILL_AFTER=0 PARTITIONS=1 WORKERS=1 NAME=no-kill ./scripts/replay-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"
TAGS="${TAGS:-300000}" RATE="${RATE:-2000}" KILL_AFTER="${KILL_AFTER:-60}"
NAME="${NAME:-cluster-$RATE}"
OUT=docs/bench
mkdir -p "$OUT"
export RUN
RUN=$(mktemp -d)
KAFKA_PORT=$(free_port)
export KAFKA="127.0.0.1:$KAFKA_PORT"
# A fresh set prefix keeps runs apart in a shared Aerospike namespace.
export ALLEZON_AEROSPIKE_SET_PREFIX="run$(date +%s)_"

cleanup() { ./scripts/cluster.sh stop || true; kill "${TANSU_PID:-}" 2>/dev/null || true; }
trap cleanup EXIT
start_tansu "$KAFKA_PORT" "$RUN/tansu.log"

cargo build --release --locked -p allezon-replay >&2
RUST_LOG=warn ./scripts/cluster.sh start
KILLER=""
if [ "$KILL_AFTER" != 0 ]; then
  (sleep "$KILL_AFTER"; echo "== killing worker 1" >&2; ./scripts/cluster.sh kill-worker 1
   sleep 2; echo "== restarting worker 1" >&2; RUST_LOG=warn ./scripts/cluster.sh start-worker 1) &
  KILLER=$!
fi
status=0
./target/release/allezon-replay --target "http://127.0.0.1:${HTTP_PORT:-8080}" --seed 42 \
  --tags "$TAGS" --rate "$RATE" --quiet --verify-every-cell \
  --report "$OUT/$NAME.json" --plot "$OUT/$NAME.svg" | tee "$OUT/$NAME.txt" || status=$?
[ -z "$KILLER" ] || wait "$KILLER" || true
echo "worker metrics after the run:" >&2
curl -s http://127.0.0.1:9101/metrics http://127.0.0.1:9102/metrics | grep '^allezon' >&2 || true
exit "$status"
