#!/usr/bin/env bats
# Tests of scripts/runner.sh with aws, curl, tar, runuser, id, useradd and chown stubbed on PATH
# (scripts/tests/stubs). Run with: bats scripts/tests
# Each @test runs in its own subshell on purpose, so its exports do not leak into the next one.
# shellcheck disable=SC2030,SC2031

setup() {
  SCRIPT="$BATS_TEST_DIRNAME/../runner.sh"
  export STUB_STATE="$BATS_TEST_TMPDIR/state"
  mkdir -p "$STUB_STATE/cache"
  : >"$STUB_STATE/calls"
  export PATH="$BATS_TEST_DIRNAME/stubs:$PATH"
  export SOPHONS_ROOT="$BATS_TEST_TMPDIR/root"
  export SOPHONS_INSTALL_DEPENDENCIES=0
  export AWS_REGION=us-east-1
  unset AWS_DEFAULT_REGION SOPHONS_RUNNER_CACHE_URI SOPHONS_RUNNER_VERSION SOPHONS_RUNNER_SHA256 STUB_RUNNER_STATUS

  PARAMETER=/sophons/jit/i-0123456789abcdef0
  JIT_SECRET="jit-config-$RANDOM-do-not-print"
  printf '%s\n' "$JIT_SECRET" >"$STUB_STATE/parameter"

  # A fake release tarball; the tests that expect a successful install pin its checksum.
  printf 'not really a tarball %s\n' "$RANDOM" >"$STUB_STATE/release.tar.gz"
  RELEASE_SHA256=$(sha256sum "$STUB_STATE/release.tar.gz" | cut -d' ' -f1)
}

# `! grep` would not fail a bats test (errexit ignores negated commands); this does.
refute_grep() {
  if grep -q "$@"; then
    echo "unexpected match: grep $*"
    return 1
  fi
}

trusting_the_fake_release() {
  export SOPHONS_RUNNER_SHA256="$RELEASE_SHA256"
}

@test "happy path: installs the verified runner, reads and deletes the JIT parameter, runs it, exits 0" {
  trusting_the_fake_release
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  [ ! -f "$STUB_STATE/parameter" ]
  grep -q "aws ssm get-parameter --name $PARAMETER --with-decryption" "$STUB_STATE/calls"
  grep -q "aws ssm delete-parameter --name $PARAMETER" "$STUB_STATE/calls"
  grep -q "curl .*releases/download/v2.326.0/actions-runner-linux-x64-2.326.0.tar.gz" "$STUB_STATE/calls"
  grep -q "runuser -u sophons-runner -- env -i" "$STUB_STATE/calls"
  [ "$(sed -n 1p "$STUB_STATE/runner-args")" = "--jitconfig" ]
  [ "$(sed -n 2p "$STUB_STATE/runner-args")" = "$JIT_SECRET" ]
  [[ $output == *"checksum verified"* ]]
  [[ $output == *"the runner exited with status 0"* ]]
}

@test "the JIT config is never printed and does not reach the job's environment" {
  trusting_the_fake_release
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  [[ $output != *"$JIT_SECRET"* ]]
  refute_grep "$JIT_SECRET" "$STUB_STATE/runner-env"
  refute_grep "^AWS_REGION=" "$STUB_STATE/runner-env"
  grep -q "^USER=sophons-runner$" "$STUB_STATE/runner-env"
}

@test "missing parameter: exits 66 without starting a runner" {
  trusting_the_fake_release
  rm "$STUB_STATE/parameter"
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 66 ]
  [[ $output == *"could not read the JIT parameter $PARAMETER"* ]]
  [ ! -f "$STUB_STATE/runner-args" ]
  refute_grep "runuser" "$STUB_STATE/calls"
}

@test "bad checksum: the pinned checksum rejects a tampered download and nothing is unpacked or run" {
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 67 ]
  [[ $output == *"checksum mismatch"* ]]
  [[ $output == *"expected 9c74af9b4352bbc99aecc7353b47bcdfcd1b2a0f6d15af54a99f54a0c14a1de8"* ]]
  refute_grep "^tar " "$STUB_STATE/calls"
  refute_grep "get-parameter" "$STUB_STATE/calls"
  [ -f "$STUB_STATE/parameter" ]
}

@test "runner failing: exits with the runner's status after deleting the parameter" {
  trusting_the_fake_release
  export STUB_RUNNER_STATUS=3
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 3 ]
  [ ! -f "$STUB_STATE/parameter" ]
  [[ $output == *"the runner exited with status 3"* ]]
}

@test "download failure: exits 67" {
  trusting_the_fake_release
  rm "$STUB_STATE/release.tar.gz"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 67 ]
  [[ $output == *"could not download"* ]]
}

@test "the cached tarball in the bucket is used when configured, and still verified" {
  trusting_the_fake_release
  cp "$STUB_STATE/release.tar.gz" "$STUB_STATE/cache/actions-runner-linux-x64-2.326.0.tar.gz"
  rm "$STUB_STATE/release.tar.gz"
  export SOPHONS_RUNNER_CACHE_URI=s3://bucket/actions-runner/
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "aws s3 cp --only-show-errors s3://bucket/actions-runner/actions-runner-linux-x64-2.326.0.tar.gz" "$STUB_STATE/calls"
  refute_grep "releases/download" "$STUB_STATE/calls"
  [[ $output == *"checksum verified"* ]]
}

@test "a cache miss falls back to GitHub's release" {
  trusting_the_fake_release
  export SOPHONS_RUNNER_CACHE_URI=s3://bucket/actions-runner/
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  grep -q "releases/download/v2.326.0" "$STUB_STATE/calls"
}

@test "region comes from IMDSv2 when AWS_REGION is unset" {
  trusting_the_fake_release
  unset AWS_REGION
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "curl .*-X PUT .*latest/api/token" "$STUB_STATE/calls"
  grep -q "curl .*X-aws-ec2-metadata-token: stub-imds-token.*placement/region" "$STUB_STATE/calls"
  [[ $output == *"in eu-west-1"* ]]
}

@test "an unpinned runner version is refused without a checksum" {
  export SOPHONS_RUNNER_VERSION=9.9.9
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 65 ]
  [[ $output == *"needs SOPHONS_RUNNER_SHA256"* ]]
  refute_grep "curl .*releases" "$STUB_STATE/calls"
}

@test "creates the unprivileged runner user when it is missing" {
  trusting_the_fake_release
  touch "$STUB_STATE/no-user"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  grep -q "useradd --system .* sophons-runner" "$STUB_STATE/calls"
}

@test "an installed runner (baked into the AMI) is not downloaded again" {
  trusting_the_fake_release
  mkdir -p "$SOPHONS_ROOT/actions-runner-2.326.0"
  printf '#!/usr/bin/env bash\nprintf "%%s\\n" "$@" >"%s/runner-args"\n' "$STUB_STATE" >"$SOPHONS_ROOT/actions-runner-2.326.0/run.sh"
  chmod +x "$SOPHONS_ROOT/actions-runner-2.326.0/run.sh"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  refute_grep "^curl .*releases" "$STUB_STATE/calls"
  [ "$(sed -n 1p "$STUB_STATE/runner-args")" = "--jitconfig" ]
}

@test "usage: no argument or a non-parameter argument exits 64" {
  run "$SCRIPT"
  [ "$status" -eq 64 ]
  run "$SCRIPT" "not a parameter; rm -rf /"
  [ "$status" -eq 64 ]
  run "$SCRIPT" /a /b
  [ "$status" -eq 64 ]
}

@test "the copy Terraform uploads with runner_cache_enabled (marker rewritten) reads the cache" {
  trusting_the_fake_release
  cp "$STUB_STATE/release.tar.gz" "$STUB_STATE/cache/actions-runner-linux-x64-2.326.0.tar.gz"
  rm "$STUB_STATE/release.tar.gz"
  # The same rewrite as terraform/runners.tf (local.runner_cache_marker).
  grep -qF 'SOPHONS_RUNNER_CACHE_URI:=}' "$SCRIPT"
  sed 's|SOPHONS_RUNNER_CACHE_URI:=}|SOPHONS_RUNNER_CACHE_URI:=s3://sophons-scripts/actions-runner/}|' "$SCRIPT" >"$BATS_TEST_TMPDIR/runner.sh"
  run bash "$BATS_TEST_TMPDIR/runner.sh" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "aws s3 cp --only-show-errors s3://sophons-scripts/actions-runner/actions-runner-linux-x64-2.326.0.tar.gz" "$STUB_STATE/calls"
}
