#!/usr/bin/env bash
# What tracing costs: the all-in-one with traces off, and with traces on at
# 100 % sampling exporting every span over OTLP to a receiver that counts
# them (allezon/examples/otlp_sink.rs), alternating under the same wrk load
# in one run. BASELINE=path/to/allezon adds a third server, built from an
# earlier commit (the code before tracing existed), to show that "off" costs
# nothing. Loopback only; every load is bounded in time.
#
#   ./scripts/bench-tracing.sh
#   BASELINE=/tmp/allezon-before ROUNDS=4 ORDER=alternate ./scripts/bench-tracing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
DURATION="${DURATION:-15s}"
CONNECTIONS="${CONNECTIONS:-64}"
ROUNDS="${ROUNDS:-2}"
command -v wrk >/dev/null || { echo "needs wrk: apt-get install -y wrk" >&2; exit 1; }

cargo build --release -p allezon --bin allezon --example otlp_sink >&2
SINK=$(free_port)
./target/release/examples/otlp_sink "127.0.0.1:$SINK" 2>/tmp/otlp-sink.log &
PIDS=($!)
DIRS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "${DIRS[@]}"' EXIT

start() { # NAME BINARY ENV… : starts a server, sets PORT_<NAME>
  local name=$1 bin=$2; shift 2
  local port grpc data
  port=$(free_port); grpc=$(free_port); data=$(mktemp -d); DIRS+=("$data")
  env RUST_LOG=warn "$@" "$bin" --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$grpc" \
    --admin-addr off --data-dir "$data" >/dev/null &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  printf -v "PORT_$name" '%s' "$port"
}
SERVERS=(off on)
start off ./target/release/allezon
start on ./target/release/allezon OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK" \
  OTEL_TRACES_SAMPLER=always_on
if [ -n "${BASELINE:-}" ]; then
  # An older binary may not know --admin-addr; it never had an admin port.
  SERVERS=(before "${SERVERS[@]}")
  port=$(free_port); grpc=$(free_port); data=$(mktemp -d); DIRS+=("$data")
  RUST_LOG=warn "$BASELINE" --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$grpc" \
    --data-dir "$data" >/dev/null &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  PORT_before=$port
fi

# ORDER=alternate reverses the order every other round, so that no server
# always runs first (the machine and the data directories drift over a run).
RUN=0
for round in $(seq 1 "$ROUNDS"); do
  for c in $CONNECTIONS; do
    order=("${SERVERS[@]}")
    if [ "${ORDER:-}" = alternate ] && [ $((round % 2)) = 0 ]; then
      order=(); for ((i = ${#SERVERS[@]} - 1; i >= 0; i--)); do order+=("${SERVERS[$i]}"); done
    fi
    for name in "${order[@]}"; do
      RUN=$((RUN + 1))
      port_var="PORT_$name"
      out=$(wrk -t2 -c"$c" -d"$DURATION" --latency -s scripts/load/user_tags.lua \
        "http://127.0.0.1:${!port_var}" -- "$RUN" 2>/dev/null)
      printf '%-7s round %s c=%-4s %10s tags/s  p50 %-8s p99 %-8s non-2xx %s\n' "$name" "$round" "$c" \
        "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
        "$(awk '$1 == "50%" {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")" \
        "$(awk '/Non-2xx/ {print $5}' <<<"$out" | grep . || echo 0)"
    done
  done
done
sleep 6
echo "spans exported by the traced server: $(tail -1 /tmp/otlp-sink.log)"
