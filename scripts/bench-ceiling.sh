#!/usr/bin/env bash
# Our share of the machine: the all-in-one against the bare reference server
# (gateway/examples/bare_tags.rs: the same tag parser, answers 204, stores
# nothing), under the same load, alternating, in one run. Loopback only;
# every load is bounded in time or in tags.
#
# The load is wrk's (scripts/load/user_tags.lua), or with CLIENT=replay our
# checking client, allezon-replay, sending TAGS tags as fast as the
# connections allow and checking every answer (tags only: the bare server
# keeps no profiles). A checking client spends more CPU per request than wrk,
# so on one machine it leaves both servers less; that is how a user's own
# test client loads them.
#
#   ./scripts/bench-ceiling.sh                 # 64 and 256 connections, 15 s each
#   DURATION=30s CONNECTIONS="64 256" ROUNDS=2 ./scripts/bench-ceiling.sh
#   CLIENT=replay TAGS=300000 ./scripts/bench-ceiling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
DURATION="${DURATION:-15s}"
CONNECTIONS="${CONNECTIONS:-64 256}"
ROUNDS="${ROUNDS:-1}"
CLIENT="${CLIENT:-wrk}"
TAGS="${TAGS:-300000}"
case $CLIENT in
  wrk) command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; } ;;
  replay) ;;
  *) echo "CLIENT is wrk or replay, not $CLIENT" >&2; exit 2 ;;
esac

cargo build --release -p allezon -p allezon-replay >&2
cargo build --release -p gateway --example bare_tags >&2
PORT=$(free_port); GRPC=$(free_port); BARE=$(free_port)
DATA=$(mktemp -d)
RUST_LOG=warn ./target/release/allezon --http-addr "127.0.0.1:$PORT" \
  --grpc-addr "127.0.0.1:$GRPC" --data-dir "$DATA" >/dev/null &
ALLEZON=$!
./target/release/examples/bare_tags "127.0.0.1:$BARE" &
BARE_PID=$!
trap 'kill $ALLEZON $BARE_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$DATA"' EXIT
for port in $PORT $BARE; do
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

# The machine's count of handshakes dropped from a full accept queue (a
# client then waits a second to retry): one line of /proc/net/netstat names
# the fields, the next holds their values.
listen_overflows() {
  awk '$1 == "TcpExt:" { if (!names) { for (i = 2; i <= NF; i++) if ($i == "ListenOverflows") f = i; names = 1 } else print $f }' /proc/net/netstat
}

# run NAME PORT CONNECTIONS: one load run; prints "NAME c=N rate p50 p99
# non2xx", and the accept-queue overflows during it.
run() {
  local out overflows
  RUN=$((RUN + 1))
  overflows=$(listen_overflows)
  if [[ $CLIENT == wrk ]]; then
    out=$(wrk -t2 -c"$3" -d"$DURATION" --latency -s scripts/load/user_tags.lua \
      "http://127.0.0.1:$2" -- "$RUN" 2>/dev/null)
    wrk_summary "$out"
  else
    # Each run its own seed: a stream sent twice would be stored once.
    out=$(./target/release/allezon-replay --target "http://127.0.0.1:$2" --seed "$RUN" \
      --tags "$TAGS" --rate 0 --max-in-flight "$3" --profile-every 0 --aggregate-every 0 \
      --quiet 2>&1) || { echo "$out" >&2; return 1; }
    # user_tags requests correct wrong timed-out errors rate p50 p99 max
    read -r _ WRK_REQUESTS correct _ _ _ WRK_RATE WRK_P50 WRK_P99 _ \
      < <(awk '$1 == "user_tags"' <<<"$out")
    WRK_NON2XX=$((WRK_REQUESTS - correct))
    WRK_P50="${WRK_P50}ms" WRK_P99="${WRK_P99}ms"
  fi
  overflows=$(($(listen_overflows) - overflows))
  printf '%-8s c=%-4s %10s tags/s  p50 %-8s p99 %-8s requests %-9s non-2xx %-4s listen-overflows %s\n' \
    "$1" "$3" "$WRK_RATE" "$WRK_P50" "$WRK_P99" "$WRK_REQUESTS" "$WRK_NON2XX" "$overflows"
  [[ $1 == allezon ]] && ACCEPTED=$((ACCEPTED + WRK_REQUESTS - WRK_NON2XX))
  return 0
}

ACCEPTED=0 RUN=0
for round in $(seq 1 "$ROUNDS"); do
  for c in $CONNECTIONS; do
    run bare "$BARE" "$c"
    run allezon "$PORT" "$c"
  done
done
# wrk's count leaves out the requests in flight when it stopped: those may
# be counted too, so the count lands between accepted and accepted plus the
# connections.
for _ in $(seq 1 60); do
  counted=$(count_all "http://127.0.0.1:$PORT")
  [[ $counted -ge $ACCEPTED ]] && break
  sleep 1
done
echo "allezon: $ACCEPTED tags answered 204 by $CLIENT's count; counted in the aggregates: $counted"
