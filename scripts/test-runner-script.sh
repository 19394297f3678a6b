#!/usr/bin/env bash
# Lints every shell script under scripts/ with shellcheck, then runs the runner script's tests
# (scripts/tests/*.bats, with aws/curl/tar stubbed). Exits non-zero on any finding or failure.
# Needs shellcheck and bats (Debian packages: apt-get install -y shellcheck bats).
set -euo pipefail

cd "$(dirname "$0")/.."

for tool in shellcheck bats; do
  command -v "$tool" >/dev/null || {
    echo "test-runner-script: $tool is missing: apt-get install -y shellcheck bats" >&2
    exit 1
  }
done

mapfile -t scripts < <(find scripts -type f \( -name '*.sh' -o -path 'scripts/tests/stubs/*' \) | sort)
mapfile -t bats_files < <(find scripts/tests -type f -name '*.bats' | sort)

echo "== shellcheck: ${#scripts[@]} scripts, ${#bats_files[@]} bats files"
shellcheck --severity=style "${scripts[@]}"
shellcheck --severity=style --shell=bats "${bats_files[@]}"

echo "== bats: ${bats_files[*]}"
bats "${bats_files[@]}"
