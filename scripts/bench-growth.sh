#!/usr/bin/env bash
# Cost as the work grows: TAGS tags of the replay stream (default 10
# million) into a fresh all-in-one as fast as 64 requests in flight allow,
# sampling every 10 s the tags counted, the server's resident memory and its
# data directory's size: the bytes allocated on disk (`du`), and the sum of
# the files' lengths (`du -b`), which also counts the unwritten end of the
# engine's preallocated, sparse journals. Ends with the engine's own
# breakdown by keyspace and journal (growth-parts.txt). Writes growth.csv
# and growth.svg to OUT (docs/bench by default), and projects the last
# rates to 24 hours (86.4 million tags). BIN= runs another build of the
# server; the server inherits the environment (e.g. MIMALLOC_ALLOW_THP=0).
# Loopback only; bounded by the tag count.
#
#   ./scripts/bench-growth.sh            # 10,000,000 tags
#   TAGS=2000000 OUT=/tmp/growth ./scripts/bench-growth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
TAGS="${TAGS:-10000000}"
OUT="${OUT:-docs/bench}"
BIN="${BIN:-./target/release/allezon}"
mkdir -p "$OUT"
cargo build --release -p allezon -p allezon-replay >&2
DATA=$(mktemp -d)
trap 'kill ${PID:-} 2>/dev/null; wait ${PID:-} 2>/dev/null; rm -rf "$DATA"' EXIT
start_all_in_one "$BIN" "$DATA"

# One profile query per 100 tags; no aggregate queries (sampling asks its own).
./target/release/allezon-replay --target "http://127.0.0.1:$PORT" --seed 42 \
  --tags "$TAGS" --max-in-flight 64 --profile-every 100 --aggregate-every 0 --quiet \
  > "$OUT/growth-replay.txt" &
REPLAY=$!

# The replay's event time runs 1 ms per tag from 2022-03-01T00:00: 24
# hours of it hold 86.4 million tags, so one day's count covers the run.
echo "seconds,tags_counted,rss_bytes,disk_bytes,disk_apparent_bytes" > "$OUT/growth.csv"
start=$(date +%s)
while kill -0 "$REPLAY" 2>/dev/null; do
  sleep 10
  rss=$(awk '/VmRSS/ {print $2 * 1024}' "/proc/$PID/status")
  disk=$(du -s -B1 "$DATA" | cut -f1)
  apparent=$(du -sb "$DATA" | cut -f1)
  echo "$(( $(date +%s) - start )),$(count_all "http://127.0.0.1:$PORT"),$rss,$disk,$apparent" | tee -a "$OUT/growth.csv"
done
wait "$REPLAY" || true
curl -sf "http://127.0.0.1:$ADMIN/metrics" | grep -E '^allezon_store_(disk|journal)_bytes' > "$OUT/growth-parts.txt" || true
python3 scripts/plot-growth.py "$OUT/growth.csv" "$OUT/growth.svg" | tee "$OUT/growth.txt"
