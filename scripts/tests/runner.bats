#!/usr/bin/env bats
# Tests of scripts/runner.sh with the commands it runs stubbed on PATH (scripts/tests/stubs: aws, curl, tar,
# runuser, id, useradd, usermod, chown, uname, cloud-init, ldconfig, dnf, rpm, apt-get, apt-cache, dpkg-query,
# systemctl). Each stub appends its call to $STUB_STATE/calls. Run with: bats scripts/tests
# Each @test runs in its own subshell on purpose, so its exports do not leak into the next one.
# shellcheck disable=SC2030,SC2031

RELEASES=https://github.com/actions/runner/releases/download/v2.330.0
URL_X64=$RELEASES/actions-runner-linux-x64-2.330.0.tar.gz
URL_ARM64=$RELEASES/actions-runner-linux-arm64-2.330.0.tar.gz
# A checksum that no fake release has.
OTHER_SHA256=9c74af9b4352bbc99aecc7353b47bcdfcd1b2a0f6d15af54a99f54a0c14a1de8

setup() {
  SCRIPT="$BATS_TEST_DIRNAME/../runner.sh"
  export STUB_STATE="$BATS_TEST_TMPDIR/state"
  mkdir -p "$STUB_STATE/cache"
  : >"$STUB_STATE/calls"
  export PATH="$BATS_TEST_DIRNAME/stubs:$PATH"
  export SOPHONS_ROOT="$BATS_TEST_TMPDIR/root"
  export AWS_REGION=us-east-1
  unset AWS_DEFAULT_REGION SOPHONS_RUNNER_CACHE_URI SOPHONS_PACKAGES SOPHONS_DOCKER SOPHONS_INSTALL_DEPENDENCIES \
    SOPHONS_CLOUD_INIT_TIMEOUT STUB_RUNNER_STATUS STUB_MACHINE

  PARAMETER=/sophons/jit/i-0123456789abcdef0
  JIT_SECRET="jit-config-$RANDOM-do-not-print"
  printf '%s\n' "$JIT_SECRET" >"$STUB_STATE/parameter"

  # A fake release tarball; both architectures' checksums are its own, as create-runner would pass them.
  printf 'not really a tarball %s\n' "$RANDOM" >"$STUB_STATE/release.tar.gz"
  RELEASE_SHA256=$(sha256sum "$STUB_STATE/release.tar.gz" | cut -d' ' -f1)
  export SOPHONS_RUNNER_VERSION=2.330.0
  export SOPHONS_RUNNER_URL_X64=$URL_X64 SOPHONS_RUNNER_SHA256_X64=$RELEASE_SHA256
  export SOPHONS_RUNNER_URL_ARM64=$URL_ARM64 SOPHONS_RUNNER_SHA256_ARM64=$RELEASE_SHA256

  # A fresh Amazon Linux 2023: OpenSSL, Kerberos and zlib are there; ICU and git are not.
  amazon_linux_2023
  printf '%s\n' openssl-libs krb5-libs zlib >"$STUB_STATE/installed"
}

amazon_linux_2023() {
  cat >"$STUB_STATE/os-release" <<'EOF'
NAME="Amazon Linux"
VERSION="2023"
ID="amzn"
ID_LIKE="fedora"
VERSION_ID="2023"
PRETTY_NAME="Amazon Linux 2023.9.20251117"
EOF
  export SOPHONS_OS_RELEASE="$STUB_STATE/os-release"
}

ubuntu_2404() {
  cat >"$STUB_STATE/os-release" <<'EOF'
PRETTY_NAME="Ubuntu 24.04.3 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
ID=ubuntu
ID_LIKE=debian
EOF
  export SOPHONS_OS_RELEASE="$STUB_STATE/os-release"
}

# `! grep` would not fail a bats test (errexit ignores negated commands); this does.
refute_grep() {
  if grep -q "$@"; then
    echo "unexpected match: grep $*"
    return 1
  fi
}

# The line number of the first call matching $1 in the calls file (fails when there is none).
first_call() {
  local line
  line=$(grep -n -m 1 -E "$1" "$STUB_STATE/calls" | cut -d: -f1)
  [ -n "$line" ] || { echo "no call matches $1"; return 1; }
  echo "$line"
}

runner_did_not_start() {
  [ ! -f "$STUB_STATE/runner-args" ]
  refute_grep "^runuser" "$STUB_STATE/calls"
  refute_grep "get-parameter" "$STUB_STATE/calls"
  [ -f "$STUB_STATE/parameter" ]
}

@test "happy path on a fresh Amazon Linux 2023: installs ICU and git, the verified runner, reads and deletes the JIT parameter, runs it, exits 0" {
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -qx "cloud-init status --wait" "$STUB_STATE/calls"
  grep -qx "dnf install -y libicu git" "$STUB_STATE/calls"
  [ ! -f "$STUB_STATE/parameter" ]
  grep -q "aws ssm get-parameter --name $PARAMETER --with-decryption" "$STUB_STATE/calls"
  grep -q "aws ssm delete-parameter --name $PARAMETER" "$STUB_STATE/calls"
  grep -q "^curl .*$URL_X64$" "$STUB_STATE/calls"
  grep -q "runuser -u sophons-runner -- env -i" "$STUB_STATE/calls"
  [ "$(sed -n 1p "$STUB_STATE/runner-args")" = "--jitconfig" ]
  [ "$(sed -n 2p "$STUB_STATE/runner-args")" = "$JIT_SECRET" ]
  [[ $output == *"checksum verified"* ]]
  [[ $output == *"the runner exited with status 0"* ]]
}

@test "the JIT config is never printed and does not reach the job's environment" {
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  [[ $output != *"$JIT_SECRET"* ]]
  refute_grep "$JIT_SECRET" "$STUB_STATE/runner-env"
  refute_grep "^AWS_REGION=" "$STUB_STATE/runner-env"
  refute_grep "^SOPHONS_" "$STUB_STATE/runner-env"
  grep -q "^USER=sophons-runner$" "$STUB_STATE/runner-env"
}

@test "missing parameter: exits 66 without starting a runner" {
  rm "$STUB_STATE/parameter"
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 66 ]
  [[ $output == *"could not read the JIT parameter $PARAMETER"* ]]
  [ ! -f "$STUB_STATE/runner-args" ]
  refute_grep "runuser" "$STUB_STATE/calls"
}

@test "bad checksum: a download that does not match SOPHONS_RUNNER_SHA256_X64 is neither unpacked nor run (67)" {
  export SOPHONS_RUNNER_SHA256_X64=$OTHER_SHA256
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 67 ]
  [[ $output == *"checksum mismatch"* ]]
  [[ $output == *"expected $OTHER_SHA256, got $RELEASE_SHA256"* ]]
  refute_grep "^tar " "$STUB_STATE/calls"
  runner_did_not_start
}

@test "an upper-case checksum (as an operator may paste it) is accepted" {
  export SOPHONS_RUNNER_SHA256_X64=${RELEASE_SHA256^^}
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
}

@test "runner failing: exits with the runner's status after deleting the parameter" {
  export STUB_RUNNER_STATUS=3
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 3 ]
  [ ! -f "$STUB_STATE/parameter" ]
  [[ $output == *"the runner exited with status 3"* ]]
}

@test "download failure: exits 67" {
  rm "$STUB_STATE/release.tar.gz"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 67 ]
  [[ $output == *"could not download $URL_X64"* ]]
  runner_did_not_start
}

@test "x86_64 downloads SOPHONS_RUNNER_URL_X64 and checks it against SOPHONS_RUNNER_SHA256_X64" {
  export STUB_MACHINE=x86_64
  unset SOPHONS_RUNNER_URL_ARM64
  export SOPHONS_RUNNER_SHA256_ARM64=$OTHER_SHA256
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "^curl .*$URL_X64$" "$STUB_STATE/calls"
  refute_grep "arm64" "$STUB_STATE/calls"
  [[ $output == *"checksum verified ($RELEASE_SHA256)"* ]]
}

@test "aarch64 downloads SOPHONS_RUNNER_URL_ARM64 and checks it against SOPHONS_RUNNER_SHA256_ARM64" {
  export STUB_MACHINE=aarch64
  unset SOPHONS_RUNNER_URL_X64
  export SOPHONS_RUNNER_SHA256_X64=$OTHER_SHA256
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "^curl .*$URL_ARM64$" "$STUB_STATE/calls"
  refute_grep "x64" "$STUB_STATE/calls"
  [[ $output == *"installed actions-runner 2.330.0 (arm64)"* ]]
}

@test "aarch64 with the ARM64 checksum of another file: exits 67" {
  export STUB_MACHINE=aarch64 SOPHONS_RUNNER_SHA256_ARM64=$OTHER_SHA256
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 67 ]
  [[ $output == *"expected $OTHER_SHA256"* ]]
}

@test "a missing or malformed release variable for this architecture is a usage error (64) naming it, before anything else runs" {
  for variable in SOPHONS_RUNNER_VERSION SOPHONS_RUNNER_URL_X64 SOPHONS_RUNNER_SHA256_X64; do
    (
      unset "$variable"
      run "$SCRIPT" "$PARAMETER"
      echo "$variable: $output"
      [ "$status" -eq 64 ]
      [[ $output == *"$variable is not set"* ]]
    )
  done
  (
    export STUB_MACHINE=aarch64
    unset SOPHONS_RUNNER_SHA256_ARM64
    run "$SCRIPT" "$PARAMETER"
    [ "$status" -eq 64 ]
    [[ $output == *"SOPHONS_RUNNER_SHA256_ARM64 is not set"* ]]
  )
  (
    export SOPHONS_RUNNER_VERSION="2.330.0/../../etc"
    run "$SCRIPT" "$PARAMETER"
    [ "$status" -eq 64 ]
    [[ $output == *"SOPHONS_RUNNER_VERSION='2.330.0/../../etc' is not an actions-runner version"* ]]
  )
  (
    export SOPHONS_RUNNER_URL_X64="http://github.com/x.tar.gz"
    run "$SCRIPT" "$PARAMETER"
    [ "$status" -eq 64 ]
    [[ $output == *"SOPHONS_RUNNER_URL_X64="* ]]
  )
  (
    export SOPHONS_RUNNER_SHA256_X64="${RELEASE_SHA256:0:63}"
    run "$SCRIPT" "$PARAMETER"
    [ "$status" -eq 64 ]
    [[ $output == *"SOPHONS_RUNNER_SHA256_X64="* ]]
  )
  [ ! -s "$STUB_STATE/calls" ]
}

@test "the cached tarball in the bucket is used when configured, and still verified" {
  cp "$STUB_STATE/release.tar.gz" "$STUB_STATE/cache/actions-runner-linux-x64-2.330.0.tar.gz"
  rm "$STUB_STATE/release.tar.gz"
  export SOPHONS_RUNNER_CACHE_URI=s3://bucket/actions-runner/
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "aws s3 cp --only-show-errors s3://bucket/actions-runner/actions-runner-linux-x64-2.330.0.tar.gz" "$STUB_STATE/calls"
  refute_grep "releases/download" "$STUB_STATE/calls"
  [[ $output == *"checksum verified"* ]]
}

@test "the cache is keyed by architecture and version" {
  export STUB_MACHINE=aarch64 SOPHONS_RUNNER_CACHE_URI=s3://bucket/actions-runner
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  grep -q "aws s3 cp --only-show-errors s3://bucket/actions-runner/actions-runner-linux-arm64-2.330.0.tar.gz" "$STUB_STATE/calls"
}

@test "a cache miss falls back to the release URL, still verified" {
  export SOPHONS_RUNNER_CACHE_URI=s3://bucket/actions-runner/
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  grep -q "^curl .*$URL_X64$" "$STUB_STATE/calls"
  [[ $output == *"checksum verified"* ]]
}

@test "a tampered tarball in the cache is never installed: GitHub's release is, verified" {
  printf 'tampered\n' >"$STUB_STATE/cache/actions-runner-linux-x64-2.330.0.tar.gz"
  export SOPHONS_RUNNER_CACHE_URI=s3://bucket/actions-runner/
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  [[ $output == *"does not match its SHA-256"* ]]
  grep -q "^curl .*$URL_X64$" "$STUB_STATE/calls"
  [[ $output == *"checksum verified"* ]]
}

@test "region comes from IMDSv2 when AWS_REGION is unset" {
  unset AWS_REGION
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "curl .*-X PUT .*latest/api/token" "$STUB_STATE/calls"
  grep -q "curl .*X-aws-ec2-metadata-token: stub-imds-token.*placement/region" "$STUB_STATE/calls"
  [[ $output == *"in eu-west-1"* ]]
}

@test "creates the unprivileged runner user when it is missing" {
  touch "$STUB_STATE/no-user"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  grep -q "useradd --system .* sophons-runner" "$STUB_STATE/calls"
}

@test "an installed runner (baked into the AMI) is not downloaded again" {
  mkdir -p "$SOPHONS_ROOT/actions-runner-2.330.0"
  printf '#!/usr/bin/env bash\nprintf "%%s\\n" "$@" >"%s/runner-args"\n' "$STUB_STATE" >"$SOPHONS_ROOT/actions-runner-2.330.0/run.sh"
  chmod +x "$SOPHONS_ROOT/actions-runner-2.330.0/run.sh"
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
  cp "$STUB_STATE/release.tar.gz" "$STUB_STATE/cache/actions-runner-linux-x64-2.330.0.tar.gz"
  rm "$STUB_STATE/release.tar.gz"
  # The same rewrite as terraform/runners.tf (local.runner_cache_marker).
  grep -qF 'SOPHONS_RUNNER_CACHE_URI:=}' "$SCRIPT"
  sed 's|SOPHONS_RUNNER_CACHE_URI:=}|SOPHONS_RUNNER_CACHE_URI:=s3://sophons-scripts/actions-runner/}|' "$SCRIPT" >"$BATS_TEST_TMPDIR/runner.sh"
  run bash "$BATS_TEST_TMPDIR/runner.sh" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "aws s3 cp --only-show-errors s3://sophons-scripts/actions-runner/actions-runner-linux-x64-2.330.0.tar.gz" "$STUB_STATE/calls"
}

# Dependencies and packages

@test "Amazon Linux 2023 with none of the runner's libraries: dnf installs libicu krb5-libs openssl-libs zlib, then the runner starts" {
  : >"$STUB_STATE/installed"
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -qx "dnf install -y libicu krb5-libs openssl-libs zlib git" "$STUB_STATE/calls"
  refute_grep "^apt-get" "$STUB_STATE/calls"
  [ -f "$STUB_STATE/runner-args" ]
}

@test "Ubuntu 24.04: apt-get installs the runner's libraries (the newest libicu and libssl of the sources) and git, with no prompt" {
  ubuntu_2404
  printf '%s\n' libkrb5-3 zlib1g >"$STUB_STATE/installed"
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  [ "$(first_call '^apt-get .*update')" -lt "$(first_call '^apt-get .*install')" ]
  grep -qE "^apt-get .* install -y -q --no-install-recommends libgssapi-krb5-2 libssl3t64 libicu74 git$" "$STUB_STATE/calls"
  grep -q "^apt-get .*DPkg::Lock::Timeout" "$STUB_STATE/calls"
  refute_grep "^dnf" "$STUB_STATE/calls"
  [ -f "$STUB_STATE/runner-args" ]
}

@test "SOPHONS_INSTALL_DEPENDENCIES=auto leaves the runner's libraries alone when they are all there" {
  # An ICU the image built itself: ldconfig knows it, no package owns it.
  echo libicuuc.so.77 >"$STUB_STATE/libraries"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  grep -qx "dnf install -y git" "$STUB_STATE/calls"
}

@test "SOPHONS_INSTALL_DEPENDENCIES=always asks for the runner's packages even when their libraries are there" {
  ubuntu_2404
  printf '%s\n' libkrb5-3 libgssapi-krb5-2 zlib1g libssl3t64 libicu74 git >"$STUB_STATE/installed"
  export SOPHONS_INSTALL_DEPENDENCIES=always
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "^apt-cache pkgnames libicu" "$STUB_STATE/calls"
  grep -q "^dpkg-query .* libicu74$" "$STUB_STATE/calls"
  refute_grep "^apt-get .*install" "$STUB_STATE/calls"
}

@test "SOPHONS_PACKAGES unset installs git; set, it installs exactly its packages" {
  printf '%s\n' libicu >>"$STUB_STATE/installed"
  export SOPHONS_PACKAGES="git jq make"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  grep -qx "dnf install -y git jq make" "$STUB_STATE/calls"
}

@test "SOPHONS_PACKAGES empty installs nothing: a complete image never reaches the package repositories" {
  printf '%s\n' libicu >>"$STUB_STATE/installed"
  export SOPHONS_PACKAGES=""
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  refute_grep "^dnf" "$STUB_STATE/calls"
  refute_grep "^rpm -q --quiet git" "$STUB_STATE/calls"
}

@test "packages the image already has are not installed again" {
  printf '%s\n' libicu git >>"$STUB_STATE/installed"
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -q "^rpm -q --quiet git" "$STUB_STATE/calls"
  refute_grep "^dnf" "$STUB_STATE/calls"
  [[ $output == *"already installed: git"* ]]
}

@test "a SOPHONS_PACKAGES entry that is not a package name is a usage error (64)" {
  export SOPHONS_PACKAGES="git --nogpgcheck"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 64 ]
  [[ $output == *"SOPHONS_PACKAGES: '--nogpgcheck' is not a package name"* ]]
  [ ! -s "$STUB_STATE/calls" ]
}

@test "SOPHONS_DOCKER=1 on Amazon Linux 2023: installs docker, starts it and puts the runner user in the docker group before the runner starts" {
  export SOPHONS_DOCKER=1
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -qx "dnf install -y libicu git docker" "$STUB_STATE/calls"
  grep -qx "systemctl enable --now docker" "$STUB_STATE/calls"
  grep -qx "usermod -aG docker sophons-runner" "$STUB_STATE/calls"
  [ "$(first_call '^dnf')" -lt "$(first_call '^systemctl enable --now docker')" ]
  [ "$(first_call '^usermod -aG docker')" -lt "$(first_call '^runuser')" ]
}

@test "SOPHONS_DOCKER=1 on Ubuntu installs docker.io" {
  ubuntu_2404
  printf '%s\n' libkrb5-3 libgssapi-krb5-2 zlib1g libssl3t64 libicu74 >"$STUB_STATE/installed"
  export SOPHONS_DOCKER=1
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  grep -qE "^apt-get .* install .* git docker.io$" "$STUB_STATE/calls"
  grep -qx "usermod -aG docker sophons-runner" "$STUB_STATE/calls"
}

@test "without SOPHONS_DOCKER, Docker is neither installed nor started" {
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  refute_grep "docker" "$STUB_STATE/calls"
}

@test "Docker that does not start: exits 68 without starting the runner" {
  export SOPHONS_DOCKER=1 STUB_SYSTEMCTL_FAILS=1
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 68 ]
  [[ $output == *"Docker did not start"* ]]
  runner_did_not_start
}

@test "a package manager failure exits 68 naming the packages, without starting the runner" {
  export STUB_PACKAGE_MANAGER_FAILS=1 SOPHONS_PACKAGES="git no-such-package"
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 68 ]
  [[ $output == *"dnf could not install libicu git no-such-package"* ]]
  refute_grep "^curl .*releases" "$STUB_STATE/calls"
  runner_did_not_start
}

@test "a library still missing after the install exits 68 naming it, never a runner that cannot start" {
  export STUB_PACKAGES_EMPTY=1
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 68 ]
  grep -qx "dnf install -y libicu git" "$STUB_STATE/calls"
  [[ $output == *"the runner would not start: ldconfig finds no libicuuc"* ]]
  runner_did_not_start
}

@test "SOPHONS_INSTALL_DEPENDENCIES=never installs none of the runner's libraries, and still refuses to start without them (68)" {
  export SOPHONS_INSTALL_DEPENDENCIES=never
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 68 ]
  grep -qx "dnf install -y git" "$STUB_STATE/calls"
  [[ $output == *"ldconfig finds no libicuuc (SOPHONS_INSTALL_DEPENDENCIES=never: bake them into the image"* ]]
  runner_did_not_start
}

@test "an OS that is neither dnf/yum nor apt-get: exits 68 when something has to be installed, runs when nothing has" {
  printf 'ID=alpine\nPRETTY_NAME="Alpine Linux v3.22"\n' >"$STUB_STATE/os-release"
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 68 ]
  [[ $output == *"cannot install the runner's libraries"* ]]

  printf '%s\n' libicu >>"$STUB_STATE/installed"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 68 ]
  [[ $output == *"cannot install git"* ]]

  export SOPHONS_PACKAGES=""
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
}

@test "malformed SOPHONS_DOCKER, SOPHONS_INSTALL_DEPENDENCIES or SOPHONS_CLOUD_INIT_TIMEOUT is a usage error (64)" {
  SOPHONS_DOCKER=yes run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 64 ]
  [[ $output == *"SOPHONS_DOCKER='yes' is not 0 or 1"* ]]
  SOPHONS_INSTALL_DEPENDENCIES=sometimes run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 64 ]
  [[ $output == *"SOPHONS_INSTALL_DEPENDENCIES='sometimes'"* ]]
  SOPHONS_CLOUD_INIT_TIMEOUT=0 run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 64 ]
  [ ! -s "$STUB_STATE/calls" ]
}

# cloud-init

@test "cloud-init is waited for before anything is installed or the runner user created" {
  export SOPHONS_DOCKER=1
  touch "$STUB_STATE/no-user"
  run "$SCRIPT" "$PARAMETER"
  [ "$status" -eq 0 ]
  local waited
  waited=$(first_call '^cloud-init status --wait$')
  [ "$waited" -lt "$(first_call '^useradd')" ]
  [ "$waited" -lt "$(first_call '^(rpm|dnf)')" ]
  [ "$waited" -lt "$(first_call '^systemctl')" ]
  [ "$waited" -lt "$(first_call '^curl .*releases')" ]
}

@test "cloud-init that does not finish in SOPHONS_CLOUD_INIT_TIMEOUT fails the setup (65) before anything is installed" {
  export STUB_CLOUD_INIT_HANG=1 SOPHONS_CLOUD_INIT_TIMEOUT=1
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 65 ]
  [[ $output == *"cloud-init did not finish within 1s"* ]]
  refute_grep "^dnf" "$STUB_STATE/calls"
  refute_grep "^curl .*releases" "$STUB_STATE/calls"
  runner_did_not_start
}

@test "cloud-init that ends in error is logged and the runner still starts" {
  export STUB_CLOUD_INIT_STATUS=1
  run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output == *"warning: cloud-init ended with status 1 (status: error)"* ]]
  [ -f "$STUB_STATE/runner-args" ]
}

@test "an image without cloud-init is not waited for" {
  mkdir "$BATS_TEST_TMPDIR/bin"
  for stub in "$BATS_TEST_DIRNAME"/stubs/*; do
    [[ ${stub##*/} == cloud-init ]] || ln -s "$stub" "$BATS_TEST_TMPDIR/bin/"
  done
  PATH="$BATS_TEST_TMPDIR/bin:${PATH#"$BATS_TEST_DIRNAME/stubs:"}" run "$SCRIPT" "$PARAMETER"
  echo "$output"
  [ "$status" -eq 0 ]
  [[ $output == *"no cloud-init on this image"* ]]
  refute_grep "^cloud-init" "$STUB_STATE/calls"
}
