#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets: the tag JSON parser, the
# time and time-range parsers, the profile and aggregate query parsers) for
# FUZZ_SECONDS each, starting from the committed corpus in fuzz/corpus.
# Findings (crashes) land in fuzz/artifacts and fail the run.
#
#   ./scripts/fuzz.sh                    # 30 s per target
#   FUZZ_SECONDS=600 ./scripts/fuzz.sh   # longer
#   KEEP=1 ./scripts/fuzz.sh             # add what the run found to the corpus
#
# libFuzzer without a sanitizer: the parsers are safe Rust, and this way a
# stable toolchain builds them (RUSTC_BOOTSTRAP lets cargo-fuzz pass its
# flags to it). Needs cargo-fuzz; scripts/test.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
cargo fuzz build --sanitizer none -O
for target in $(cargo fuzz list); do
  echo "== fuzzing $target for ${FUZZ_SECONDS}s" >&2
  # New inputs go to a scratch directory; the committed corpus is read only,
  # unless KEEP asks to keep them.
  scratch=$(mktemp -d)
  status=0
  cargo fuzz run --sanitizer none -O "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -max_len=4096 \
    >"$scratch.log" 2>&1 || status=$?
  grep -E "^(#[0-9]+\s+DONE|stat::number_of_executed_units|stat::new_units_added|SUMMARY)|panicked|Failing input" \
    "$scratch.log" || true
  [ "$status" = 0 ] || tail -40 "$scratch.log" >&2
  rm -f "$scratch.log"
  if [ -n "${KEEP:-}" ]; then cp -n "$scratch"/* "corpus/$target/" 2>/dev/null || true; fi
  rm -rf "$scratch"
  if [ "$status" != 0 ]; then
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
