#!/usr/bin/env bash
# Fuzzes every decoder that reads the network, for a bounded time each, on stable Rust:
# the upgrade-request parser (and the handshake behind it), the frame decoder (and the
# connection core behind it, both roles), without and with permessage-deflate, the
# deflate encoders (a compressed message must shrink and inflate back), and the query
# decoder. The targets live in fuzz/ (cargo-fuzz), their seed corpora in
# fuzz/corpus/<target>/. New inputs the fuzzer finds go to a scratch
# directory, so the repository's corpus stays a few seed files. A crash fails the script;
# libFuzzer leaves the input in fuzz/artifacts/<target>/, to be turned into a regression
# test (see cluster-transport/src/fuzzing.rs). Built with debug assertions and overflow
# checks (-a), so an arithmetic overflow on peer input counts as a crash too.
#
#   scripts/fuzz.sh [TARGET...]        FUZZ_SECONDS=30 per target by default
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(upgrade_request frames frames_deflate deflate_encoder query)

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

echo "== fuzzing ${targets[*]} for ${seconds} s each (cargo fuzz, stable, -s none -a)"
cargo fuzz build -s none -a # every target at once; `run` below finds them built
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if ! cargo fuzz run -s none -a "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $target FAILED (input saved under fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    runs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo '?')"
    echo "fuzz: $target: $runs execs in ${seconds} s, no crash"
done
