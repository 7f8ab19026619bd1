#!/usr/bin/env bash
# Fuzz every parser of bucket input (src/fuzz.rs: sealed objects, object metadata, journal
# batches, snapshots, vault.json, object keys, statements and object signatures) for a set time
# each, with libFuzzer.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Starts from the seeds in fuzz/corpus/<target>/ (replayed by `cargo test` too:
# tests/fuzz_corpus.rs); inputs the fuzzer finds interesting go to fuzz/work/<target>/ (not
# kept). A crash stops that target, leaves its input in fuzz/artifacts/<target>/, and makes the
# script exit 1 after the others ran: copy the input into fuzz/corpus/<target>/ once fixed, so
# that the replay test keeps it fixed, and add a unit test naming what it broke.
# Needs rustup (installs the nightly toolchain and cargo-fuzz if missing) and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(sealed_object object_metadata journal_batch snapshot vault_descriptor object_key statement)
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
mkdir -p fuzz/work
cargo +nightly fuzz build >fuzz/work/build.log 2>&1 || { tail -30 fuzz/work/build.log; exit 1; }
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
    echo "== $t: ${secs} s"
    if ! cargo +nightly fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 -print_final_stats=1 \
        >"fuzz/work/$t.log" 2>&1; then
        failed+=("$t")
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "fuzz/work/$t.log" | head -20
    fi
    grep -E "stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb" "fuzz/work/$t.log" | tr '\n' ' '
    echo
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "no crash in ${#targets[@]} targets, ${secs} s each"
