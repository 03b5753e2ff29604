# Shared by the scripts: sourced, not run.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_tansu PORT LOGFILE: an in-memory Kafka-protocol broker on loopback.
# Sets TANSU_PID; returns once the port accepts connections.
start_tansu() {
  local port=$1 log=$2
  tansu broker --storage-engine "memory://tansu/" \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" >"$log" 2>&1 &
  TANSU_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$TANSU_PID" 2>/dev/null; then
      cat "$log" >&2; echo "tansu exited" >&2; return 1
    fi
    sleep 0.1
  done
  echo "tansu did not listen on $port" >&2; return 1
}

# count_all BASE: every tag of 2022-03-01 the aggregates have counted.
count_all() {
  local total=0 n
  for action in VIEW BUY; do
    n=$(curl -s -X POST "$1/aggregates?time_range=2022-03-01T00:00:00_2022-03-02T00:00:00&action=$action&aggregates=COUNT" \
      | python3 -c 'import json,sys; print(sum(int(r[2]) for r in json.load(sys.stdin)["rows"]))')
    total=$((total + n))
  done
  echo "$total"
}

# start_all_in_one BIN DATA: an all-in-one on free loopback ports, with its
# data in DATA. Sets PORT (REST API), ADMIN (metrics) and PID; returns once
# it is ready.
start_all_in_one() {
  local bin=$1 data=$2 grpc
  PORT=$(free_port); grpc=$(free_port); ADMIN=$(free_port)
  RUST_LOG=warn "$bin" --http-addr "127.0.0.1:$PORT" --grpc-addr "127.0.0.1:$grpc" \
    --admin-addr "127.0.0.1:$ADMIN" --data-dir "$data" >/dev/null 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && return 0
    kill -0 "$PID" 2>/dev/null || { echo "allezon exited" >&2; return 1; }
    sleep 0.1
  done
  echo "allezon not ready" >&2; return 1
}

# renice_engine PID NICE: the storage engine's background threads (fjall's
# workers, which run at nice 10) at NICE instead, for comparisons.
renice_engine() {
  local task
  for task in /proc/$1/task/*; do
    [[ $(cat "$task/comm") == fjall* ]] && renice -n "$2" -p "${task##*/}" >/dev/null
  done
  return 0
}

# wrk_summary OUTPUT: the figures of one `wrk --latency` run, read from its
# printed OUTPUT, in WRK_RATE (requests/s), WRK_P50, WRK_P99 (with units, as
# wrk prints them), WRK_REQUESTS and WRK_NON2XX (0 when wrk printed none).
wrk_summary() {
  WRK_RATE=$(awk '/Requests\/sec/ {print $2}' <<<"$1")
  WRK_P50=$(awk '$1 == "50%" {print $2}' <<<"$1")
  WRK_P99=$(awk '$1 == "99%" {print $2}' <<<"$1")
  WRK_REQUESTS=$(awk '/requests in/ {print $1}' <<<"$1")
  WRK_NON2XX=$(awk '/Non-2xx/ {print $5}' <<<"$1")
  WRK_NON2XX=${WRK_NON2XX:-0}
}
