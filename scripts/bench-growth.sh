#!/usr/bin/env bash
# Cost as the work grows: TAGS tags of the replay stream (default 10
# million) into a fresh all-in-one as fast as 64 requests in flight allow,
# sampling every 10 s the tags counted, the server's resident memory and its
# data directory's size: the bytes allocated on disk (`du`), and the sum of
# the files' lengths (`du -b`), which also counts the unwritten end of the
# engine's preallocated, sparse journals. Ends with the engine's own
# breakdown by keyspace and journal (growth-parts.txt). Writes docs/bench/growth.csv and growth.svg, and
# projects the last rates to 24 hours (86.4 million tags). Loopback only;
# bounded by the tag count.
#
#   ./scripts/bench-growth.sh            # 10,000,000 tags
#   TAGS=2000000 ./scripts/bench-growth.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
TAGS="${TAGS:-10000000}"
OUT=docs/bench
mkdir -p "$OUT"
cargo build --release -p allezon -p allezon-replay >&2
PORT=$(free_port); GRPC=$(free_port); ADMIN=$(free_port)
DATA=$(mktemp -d)
RUST_LOG=warn ./target/release/allezon --http-addr "127.0.0.1:$PORT" \
  --grpc-addr "127.0.0.1:$GRPC" --admin-addr "127.0.0.1:$ADMIN" --data-dir "$DATA" >/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done

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
