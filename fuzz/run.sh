#!/usr/bin/env bash
# Fuzzes the webhook's input path with cargo fuzz (libFuzzer, nightly) for RUNS executions
# (default 1,000,000). New inputs go to fuzz/corpus/webhook (kept between runs, not committed);
# fuzz/seeds/webhook is the committed seed corpus. Crashes land in fuzz/artifacts/webhook.
# Extra arguments go to libFuzzer, e.g. `fuzz/run.sh -jobs=4`.
set -euo pipefail
cd "$(dirname "$0")"
runs="${RUNS:-1000000}"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || { echo "cargo fuzz needs nightly: rustup toolchain install nightly" >&2; exit 1; }
mkdir -p corpus/webhook
# Safe Rust needs no AddressSanitizer to be memory safe, and runs several times faster
# without it; debug assertions turn integer overflow into a finding.
cargo +nightly fuzz run webhook --sanitizer none --debug-assertions corpus/webhook seeds/webhook -- \
  -runs="$runs" -max_len=20000 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "$@"
echo "fuzz/corpus/webhook: $(find corpus/webhook -type f | wc -l) inputs"
