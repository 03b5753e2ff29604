#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: the replay tool against a fresh all-in-one server
# per run, at fixed rates and as fast as possible. Reports (JSON) and plots
# (SVG) go to OUT (docs/bench/ by default). TAGS= overrides each run's tag
# count; RENICE_FJALL=N puts the engine's background threads at nice N
# after the start (they run at nice 10). Loopback only; every run is
# bounded by its tag count.
#
#   ./scripts/replay-bench.sh                 # every run below
#   ./scripts/replay-bench.sh 1000 5000       # only these rates ("max" for as fast as possible)
#   RENICE_FJALL=19 TAGS=300000 OUT=/tmp/r ./scripts/replay-bench.sh 10000
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
OUT="${OUT:-docs/bench}"
mkdir -p "$OUT"
cargo build --release -p allezon -p allezon-replay >&2

runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(1000 2000 5000 10000 max)

for rate in "${runs[@]}"; do
  case "$rate" in
    1000) tags=150000 ;;
    2000) tags=120000 ;;
    10000) tags=600000 ;;
    max) tags=300000 ;;
    *) tags=300000 ;;
  esac
  tags="${TAGS:-$tags}"
  DATA=$(mktemp -d)
  start_all_in_one ./target/release/allezon "$DATA"
  [ -z "${RENICE_FJALL:-}" ] || renice_engine "$PID" "$RENICE_FJALL"
  rate_args=(--rate "$rate")
  [ "$rate" = max ] && rate_args=(--max-in-flight 64)
  echo "== $tags tags at $rate tags/s" >&2
  ./target/release/allezon-replay --target "http://127.0.0.1:$PORT" --seed 42 \
    --tags "$tags" "${rate_args[@]}" --quiet \
    --report "$OUT/replay-$rate.json" --plot "$OUT/replay-$rate.svg" \
    | tee "$OUT/replay-$rate.txt" || true
  kill "$PID"; wait "$PID" 2>/dev/null || true
  rm -rf "$DATA"
done
