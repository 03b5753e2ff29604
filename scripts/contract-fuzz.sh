#!/usr/bin/env bash
# Fuzzes the REST API against its OpenAPI document (gateway/api/openapi.json,
# served at /openapi.json) with schemathesis: an all-in-one on a throwaway
# data directory gets generated valid and invalid requests, and every answer
# must be no 5xx, a documented status, content type and headers, and a body
# that matches the document; invalid requests must be refused with a 4xx.
#
#   ./scripts/contract-fuzz.sh                       # the debug binary
#   BIN=target/release/allezon EXAMPLES=1000 ./scripts/contract-fuzz.sh
#   SEED=123 ./scripts/contract-fuzz.sh              # replay a run
#
# Needs schemathesis (PyPI); scripts/test.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# The workspace's target directory, wherever CARGO_TARGET_DIR puts it.
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/debug/allezon}"
EXAMPLES="${EXAMPLES:-150}"
[ -x "$BIN" ] || cargo build --locked -p allezon
port=$(free_port)
data=$(mktemp -d)
log=$(mktemp)
"$BIN" --http-addr "127.0.0.1:$port" --admin-addr off --data-dir "$data" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$port/openapi.json" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done

# schemathesis's console script sits beside the python3 that installed it.
st="$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))')/schemathesis"
seed=()
[ -n "${SEED:-}" ] && seed=(--seed "$SEED")
# positive_data_acceptance is left out: the document cannot say that a
# range must not be reversed, a date must exist, or a tag must not be dated
# more than 24 hours ahead, so valid-looking requests are rightly refused.
"$st" run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,unsupported_method \
  --max-examples "$EXAMPLES" "${seed[@]}" --no-color

if grep -E "panicked|ERROR" "$log"; then
  echo "the server logged errors while fuzzed (above)" >&2
  exit 1
fi
kill -0 "$pid" || { echo "the server died while fuzzed" >&2; exit 1; }
