#!/usr/bin/env bash
# The one test command: installs what the tests need, starts it, runs every
# check and test, and stops what it started.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh -p gateway # extra arguments go to the test runner
#
# Needs: a Rust toolchain. protoc is vendored (crate protoc-bin-vendored), so
# nothing else is installed for it. The Kafka-protocol broker `tansu` is
# installed with cargo when missing (10 to 25 minutes, once per machine).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PATH="$HOME/.cargo/bin:$PATH"

# --- tansu, the Kafka-protocol broker on loopback -----------------------------
TANSU_VERSION=0.6.0
if ! command -v tansu >/dev/null 2>&1; then
  log "installing tansu $TANSU_VERSION (first run on this machine only)"
  cargo install --locked tansu --version "$TANSU_VERSION" --features dynostore
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

TANSU_PID=""
cleanup() {
  if [ -n "$TANSU_PID" ]; then
    kill "$TANSU_PID" 2>/dev/null || true
    wait "$TANSU_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

KAFKA_PORT=$(free_port)
export ALLEZON_TEST_KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
log "starting tansu on $ALLEZON_TEST_KAFKA_BROKERS (in-memory storage)"
TANSU_LOG=$(mktemp)
tansu broker \
  --storage-engine "memory://tansu/" \
  --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
  >"$TANSU_LOG" 2>&1 &
TANSU_PID=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then break; fi
  if ! kill -0 "$TANSU_PID" 2>/dev/null; then
    cat "$TANSU_LOG" >&2; echo "tansu exited" >&2; exit 1
  fi
  sleep 0.1
done

# --- checks and tests ------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "tests"
if [ -z "${AEROSPIKE_HOSTS:-}" ]; then
  echo "AEROSPIKE_HOSTS is not set: Aerospike backend tests will skip (they say so)." >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
