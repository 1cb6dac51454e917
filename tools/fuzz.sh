#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ and runs each for a bounded time. Fails if a
# target does not build or any run finds a crash, a panic, a leak, an input slower than
# the per-input timeout, or memory past the limit (the input is left in
# fuzz/artifacts/TARGET/; replay it with `cargo fuzz run TARGET fuzz/artifacts/TARGET/...`).
#
#   tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 30 s, every target)
#
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 unlocks them on a stable toolchain.
# Each run starts from fuzz/corpus/TARGET (what earlier runs found; not committed) and
# fuzz/seeds/TARGET (committed: inputs that once broke a decoder, replayed every run).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${1:-30}
shift || true
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build

failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "seeds/$target"
    log=$(mktemp)
    # -timeout: seconds per input; -rss_limit_mb: also the largest single allocation.
    if cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        runs=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$log")
        echo "fuzz $target: ${runs:-?} inputs in ${seconds} s, corpus $(ls "corpus/$target" | wc -l) files, no crash"
    else
        # What failed (a panic's message, a sanitizer's or libFuzzer's verdict), where
        # the input was saved and how to replay it; the whole log only for a build error.
        if grep -qE 'panicked at|ERROR: |^SUMMARY' "$log"; then
            grep -E -A2 'panicked at|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|^SUMMARY' "$log" | head -n 30
            grep -E -A2 '^(Failing input|Reproduce with):' "$log"
        else
            cat "$log"
        fi
        echo "fuzz $target: FAILED (log above)"
        failed+=("$target")
    fi
    rm -f "$log"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${#failed[@]} of ${#targets[@]} targets failed: ${failed[*]}"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
