#!/usr/bin/env bash
# Crash cycles under a checking client: allezon-replay sends a deterministic
# stream with profile and aggregate queries while processes are killed with
# SIGKILL and restarted, again and again. Afterwards every minute of every
# filter combination the stream touched is compared with the replay's model
# (--verify-every-cell), and the tags counted are compared with the tags
# acknowledged.
#
#   ./scripts/crash-cycles.sh                    # the all-in-one, 10 kills
#   MODE=cluster ./scripts/crash-cycles.sh       # five processes on tansu:
#       every cycle kills gateway, profile-svc, aggregate-svc, id-svc and
#       worker-1 in turn (10 cycles: 50 kills)
#
# Environment: CYCLES (10), EVERY (seconds between kills, 6), DOWN (seconds a
# killed process stays down, 1), RATE (tags/s; 2000 all-in-one, 1000
# cluster), TAGS (enough for the cycles), NAME (report name under
# docs/bench). Loopback only; bounded by TAGS and CYCLES.
#
# Passes when the replay saw no wrong answer (answers may fail while a
# process is down; sampled queries then skip what such tags touch), the
# full cell check found every minute of every filter combination between
# the acknowledged tags' totals and those plus the unanswered tags' (refused
# tags must be in no cell), and the counts hold every tag answered 204.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"

MODE="${MODE:-all-in-one}"
CYCLES="${CYCLES:-10}" EVERY="${EVERY:-6}" DOWN="${DOWN:-1}"
case "$MODE" in
  all-in-one) RATE="${RATE:-2000}"; procs=(allezon) ;;
  cluster) RATE="${RATE:-1000}"; procs=(gateway profile-svc aggregate-svc id-svc worker-1) ;;
  *) echo "MODE is all-in-one or cluster" >&2; exit 2 ;;
esac
kills=$((CYCLES * ${#procs[@]}))
TAGS="${TAGS:-$(( (kills + 2) * EVERY * RATE ))}"
NAME="${NAME:-crash-$MODE}"
OUT=docs/bench
mkdir -p "$OUT"
RUN=$(mktemp -d)
export RUN
HTTP_PORT=$(free_port)
export HTTP_PORT
BASE="http://127.0.0.1:$HTTP_PORT"

cargo build --release --locked -p allezon -p allezon-replay -p gateway -p profile-svc \
  -p aggregate-svc -p id-svc -p ingest-worker >&2

# The pid lives in a file: the killer restarts the server from a subshell.
start_allezon() {
  RUST_LOG=warn ./target/release/allezon --http-addr "127.0.0.1:$HTTP_PORT" \
    --grpc-addr 127.0.0.1:0 --admin-addr off --data-dir "$RUN/data" >>"$RUN/allezon.log" 2>&1 &
  echo $! >"$RUN/allezon.pid"
}
wait_http() {
  for _ in $(seq 1 600); do
    curl -s -o /dev/null "$BASE/openapi.json" && return 0
    sleep 0.05
  done
  echo "$BASE does not answer" >&2; return 1
}
cleanup() {
  [ -z "${KILLER:-}" ] || kill "$KILLER" 2>/dev/null || true
  if [ "$MODE" = cluster ]; then ./scripts/cluster.sh stop || true; else kill "$(cat "$RUN/allezon.pid")" 2>/dev/null || true; fi
  kill "${TANSU_PID:-}" 2>/dev/null || true
}
trap cleanup EXIT

if [ "$MODE" = cluster ]; then
  KAFKA_PORT=$(free_port)
  # One worker, a static member: killed, it comes back under its own id and
  # takes its partitions back at once, which tansu 0.6 does for a group of
  # one (its fault is a dead static leader of a bigger group: cluster.sh).
  export KAFKA="127.0.0.1:$KAFKA_PORT" WORKERS=1 PARTITIONS="${PARTITIONS:-2}" STATIC_MEMBERS=1
  start_tansu "$KAFKA_PORT" "$RUN/tansu.log"
  RUST_LOG=warn ./scripts/cluster.sh start
else
  start_allezon
  wait_http
fi

# The killer: one process at a time, in turn, every EVERY seconds.
(
  sleep "$EVERY"
  for cycle in $(seq 1 "$CYCLES"); do
    for proc in "${procs[@]}"; do
      echo "== cycle $cycle: kill -9 $proc" >&2
      if [ "$MODE" = cluster ]; then
        ./scripts/cluster.sh kill "$proc"
        sleep "$DOWN"
        RUST_LOG=warn ./scripts/cluster.sh restart "$proc"
      else
        pid=$(cat "$RUN/allezon.pid")
        kill -9 "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        sleep "$DOWN"
        restarted=$(date +%s%N)
        start_allezon
        wait_http
        # From the start of the new process to its first HTTP answer: the
        # journal replay and the log's unflushed tail.
        echo "== serving $(( ($(date +%s%N) - restarted) / 1000000 )) ms after the restart" >&2
      fi
      sleep "$EVERY"
    done
  done
  echo "== $kills kills done" >&2
) &
KILLER=$!

./target/release/allezon-replay --target "$BASE" --seed 7 --tags "$TAGS" --rate "$RATE" \
  --allow-slow --quiet --verify-every-cell \
  --report "$OUT/$NAME.json" --plot "$OUT/$NAME.svg" | tee "$OUT/$NAME.txt" || true
wait "$KILLER" || true
KILLER=""

# Acknowledged vs counted, over the whole stream (its event time starts at
# 2022-03-01T00:00, one tag per ms). Tags whose answer never came may or
# may not be stored, so counted lies between acknowledged and sent.
counted=$(count_all "$BASE")
python3 - "$OUT/$NAME.json" "$counted" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
counted = int(sys.argv[2])
ends = {e["endpoint"]: e for e in report["endpoints"]}
tags = ends["user_tags"]
acked = tags["correct"]
sent = report["tags"]
cells = report["every_cell"]
wrong = sum(e["wrong"] for e in report["endpoints"])
print(f"tags: sent {sent}, acknowledged {acked}, refused or unanswered {sent - acked}, counted {counted}")
print(f"wrong answers: {wrong} (tags/profiles/aggregates: "
      + "/".join(str(ends[k]["wrong"]) for k in ("user_tags", "user_profiles", "aggregates")) + ")")
print(f"every cell: {cells['cells']} minute cells compared, {cells['wrong']} wrong, {cells['errors']} errors")
ok = wrong == 0 and cells["wrong"] == 0 and cells["errors"] == 0 and acked <= counted <= sent
print("CRASH CYCLES PASSED" if ok else "CRASH CYCLES FAILED")
sys.exit(0 if ok else 1)
PY
