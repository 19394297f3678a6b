#!/usr/bin/env bash
# Issue 8's measurements, printed as one Markdown table (also saved to target/bench/table.md):
# cold start and peak memory of the four release binaries and of a Node.js SQS client, binary
# sizes, the webhook hot path against its HMAC, create-runner's cost per job, and a burst of jobs.
#
# Assumes `make setup` (moto) ran. Uses `make build`'s binaries (target/lambda/<name>/bootstrap)
# when present, else `cargo build --release`'s, and builds the latter when neither exists.
# Arguments go to sophons-bench (e.g. --starts 50, --jobs 0 to skip the burst; --help lists them).
# BENCH_ALT=1 also builds autoscaler with opt-level "s" into target/bench-alt (about 15 minutes on
# 2 cores) and compares it; an earlier such build is used whenever it exists.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
binaries=(autoscaler create-runner stop-runner move-jobs)
node_sdk="@aws-sdk/client-sqs@3.1175.0"
out=target/bench
mkdir -p "$out"

[[ -x .venv/bin/moto_server ]] || { echo "bench: moto is missing: run 'make setup'" >&2; exit 1; }

missing=()
for name in "${binaries[@]}"; do
  [[ -f target/lambda/$name/bootstrap || -f target/release/$name ]] || missing+=("$name")
done
if ((${#missing[@]})); then
  echo "bench: no release build of ${missing[*]}: cargo build --release (about 15 minutes on 2 cores)" >&2
  packages=()
  for name in "${binaries[@]}"; do packages+=(-p "$name"); done
  cargo build --release --locked "${packages[@]}"
fi

if [[ ${BENCH_ALT:-0} == 1 && ! -f target/bench-alt/release/autoscaler ]]; then
  echo "bench: building autoscaler with opt-level \"s\" into target/bench-alt" >&2
  cargo build --release --locked -p autoscaler --config 'profile.release.opt-level="s"' --target-dir target/bench-alt
fi
alt=()
[[ -f target/bench-alt/release/autoscaler ]] && alt=(--alt target/bench-alt/release/autoscaler)

# Node.js and the SDK peers use, from the npm registry, kept out of the repository under target/.
if command -v npm >/dev/null && [[ ! -d target/bench-node/node_modules/@aws-sdk/client-sqs ]]; then
  echo "bench: npm install $node_sdk into target/bench-node" >&2
  mkdir -p target/bench-node
  [[ -f target/bench-node/package.json ]] || echo '{ "private": true }' >target/bench-node/package.json
  npm install --prefix target/bench-node --no-audit --no-fund --silent "$node_sdk" >&2
fi

# Criterion (release profile): the webhook hot path and create-runner per job. Its report goes to
# target/bench/criterion.log; sophons-bench reads the medians from target/criterion.
echo "bench: cargo bench (webhook, create); report in $out/criterion.log" >&2
cargo bench --locked -p sophons-core --bench webhook --bench create >"$out/criterion.log" 2>&1 ||
  { tail -40 "$out/criterion.log" >&2; exit 1; }

# The orchestrator only spawns and times processes: a debug build is enough.
cargo build --locked -p sophons-bench >&2

{
  echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p' | head -1), \
$(free -g | awk '/^Mem:/ {print $2}') GiB memory; $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  scripts/with-moto.sh target/debug/sophons-bench "${alt[@]}" "$@" | grep -v '^with-moto:'
  # Issue 14: queue time under a burst of 10 x max_runners, in simulated seconds, without and with
  # the waiting list (crates/core/tests/queue_time.rs; the fakes, so no moto and no wall clock).
  echo
  echo "queue time (cargo test -p sophons-core --test queue_time, simulated seconds):"
  echo '```'
  cargo test --locked -q -p sophons-core --test queue_time -- --nocapture 2>/dev/null | grep -E '^(burst|seed|  )'
  echo '```'
} | tee "$out/table.md"
