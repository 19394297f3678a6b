#!/usr/bin/env bats
# Tests of terraform/image-builder/bake-runner.sh, the image_builder pipeline's bake step, on this machine: GitHub's
# releases API and downloads are files (curl reads file:// URLs), dnf, rpm, ldconfig and uname are stubs. Run by
# scripts/check-terraform.sh; alone: bats terraform/test/bake-runner.bats
# The stubs and the greps quote shell code on purpose.
# shellcheck disable=SC2016,SC2030,SC2031

setup() {
  SCRIPT="$BATS_TEST_DIRNAME/../image-builder/bake-runner.sh"
  RUNNER_SCRIPT="$BATS_TEST_DIRNAME/../../scripts/runner.sh"
  STUBS="$BATS_TEST_TMPDIR/stubs"
  STATE="$BATS_TEST_TMPDIR/state"
  mkdir -p "$STUBS" "$STATE"
  export STATE
  export PATH="$STUBS:$PATH"
  export SOPHONS_ROOT="$BATS_TEST_TMPDIR/root"
  unset SOPHONS_BAKE_STEP SOPHONS_BAKE_PACKAGES
  stub uname 'echo "${STUB_MACHINE:-x86_64}"'
  stub dnf 'echo "dnf $*" >>"$STATE/calls"; [[ $1 == clean ]] && exit 0; shift 2; printf "%s\n" "$@" >>"$STATE/installed"'
  stub rpm 'grep -qx "$3" "$STATE/installed" 2>/dev/null'
  stub ldconfig 'for lib in libicuuc.so.74 libssl.so.3 libgssapi_krb5.so.2 libz.so.1; do
    grep -qx "${lib%%.so*}" "$STATE/missing" 2>/dev/null || printf "\t%s (libc6,x86-64) => /usr/lib64/%s\n" "$lib" "$lib"; done'

  release 2.331.0
  export SOPHONS_RUNNER_RELEASE_URL="file://$STATE/latest.json"
  export SOPHONS_RUNNER_DOWNLOAD_URL="file://$STATE/download"
}

stub() {
  printf '#!/usr/bin/env bash\n%s\n' "$2" >"$STUBS/$1"
  chmod +x "$STUBS/$1"
}

# A release $1 with a linux-x64 and a linux-arm64 tarball (each with its own run.sh), published in the releases
# API's shape: the checksums between the markers of the release note template.
release() {
  VERSION=$1
  local arch body=""
  for arch in x64 arm64; do
    mkdir -p "$STATE/build-$arch" "$STATE/download/v$VERSION"
    printf '#!/bin/sh\necho %s %s\n' "$arch" "$VERSION" >"$STATE/build-$arch/run.sh"
    chmod +x "$STATE/build-$arch/run.sh"
    tar -czf "$STATE/download/v$VERSION/actions-runner-linux-$arch-$VERSION.tar.gz" -C "$STATE/build-$arch" run.sh
    body+="- actions-runner-linux-$arch-$VERSION.tar.gz <!-- BEGIN SHA linux-$arch -->"
    body+="$(sha256sum "$STATE/download/v$VERSION/actions-runner-linux-$arch-$VERSION.tar.gz" | cut -d' ' -f1)"
    body+="<!-- END SHA linux-$arch -->\n"
  done
  printf '{"tag_name": "v%s", "body": "## SHA-256 Checksums\\n\\n%s"}\n' "$VERSION" "$body" >"$STATE/latest.json"
}

@test "bakes the latest release into the directory runner.sh uses as it is, with its libraries and packages" {
  run bash "$SCRIPT"
  [ "$status" -eq 0 ]
  [ -x "$SOPHONS_ROOT/actions-runner-2.331.0/run.sh" ]
  [ "$("$SOPHONS_ROOT/actions-runner-2.331.0/run.sh")" = "x64 2.331.0" ]
  [ "$(cat "$SOPHONS_ROOT/baked-runner-version")" = 2.331.0 ]
  grep -qx "dnf install -y libicu krb5-libs openssl-libs zlib git docker" "$STATE/calls"
  [[ $output == *"checksum verified"* ]]
  [ ! -e "$SOPHONS_ROOT/actions-runner-2.331.0.partial" ]
}

@test "an arm64 build instance bakes the arm64 tarball, checked against its own checksum" {
  export STUB_MACHINE=aarch64
  run bash "$SCRIPT"
  [ "$status" -eq 0 ]
  [ "$("$SOPHONS_ROOT/actions-runner-2.331.0/run.sh")" = "arm64 2.331.0" ]
}

@test "a tarball that does not match the release notes' checksum is not baked" {
  printf 'tampered\n' >>"$STATE/download/v2.331.0/actions-runner-linux-x64-2.331.0.tar.gz"
  run bash "$SCRIPT"
  [ "$status" -ne 0 ]
  [[ $output == *"checksum mismatch"* ]]
  [ ! -e "$SOPHONS_ROOT/actions-runner-2.331.0" ]
  [ ! -e "$SOPHONS_ROOT/baked-runner-version" ]
}

@test "a release whose notes publish no checksum for the architecture is not baked" {
  sed -i 's/BEGIN SHA linux-x64/BEGIN SHA linux-x86/' "$STATE/latest.json"
  run bash "$SCRIPT"
  [ "$status" -ne 0 ]
  [[ $output == *"not baking an unverified runner"* ]]
  [ ! -e "$SOPHONS_ROOT/actions-runner-2.331.0" ]
}

@test "the packages to bake come from SOPHONS_BAKE_PACKAGES, and only package names pass" {
  SOPHONS_BAKE_PACKAGES="jq" run bash "$SCRIPT"
  [ "$status" -eq 0 ]
  grep -qx "dnf install -y libicu krb5-libs openssl-libs zlib jq" "$STATE/calls"
  : >"$STATE/calls"
  SOPHONS_BAKE_PACKAGES="git --nogpgcheck" run bash "$SCRIPT"
  [ "$status" -ne 0 ]
  [[ $output == *"'--nogpgcheck' is not a package name"* ]]
  [ ! -s "$STATE/calls" ]
}

@test "the image check fails on a missing library or package, and names it" {
  run bash "$SCRIPT"
  [ "$status" -eq 0 ]
  echo libicuuc >"$STATE/missing"
  sed -i '/^docker$/d' "$STATE/installed"
  SOPHONS_BAKE_STEP=check run bash "$SCRIPT"
  [ "$status" -ne 0 ]
  [[ $output == *"no libicuuc"* ]]
  [[ $output == *"docker is not installed"* ]]
  rm "$STATE/missing"
  echo docker >>"$STATE/installed"
  SOPHONS_BAKE_STEP=check run bash "$SCRIPT"
  [ "$status" -eq 0 ]
}

@test "the image check fails when no runner was baked" {
  SOPHONS_BAKE_STEP=check run bash "$SCRIPT"
  [ "$status" -ne 0 ]
  [[ $output == *"no runner was baked"* ]]
}

# The bake is only worth something while runner.sh looks where the bake writes and wants what it installs.
@test "runner.sh uses a runner found in SOPHONS_ROOT/actions-runner-<version> and loads the libraries baked in" {
  grep -qF 'dir="$SOPHONS_ROOT/actions-runner-$RUNNER_VERSION"' "$RUNNER_SCRIPT"
  grep -qF 'if [[ -x $dir/run.sh ]]; then' "$RUNNER_SCRIPT"
  grep -qF 'SOPHONS_ROOT="${SOPHONS_ROOT:-/opt/sophons}"' "$RUNNER_SCRIPT"
  grep -qF 'readonly RUNTIME_LIBRARIES=(libicuuc libssl libgssapi_krb5 libz)' "$RUNNER_SCRIPT"
  grep -qF 'rpm) WANTED+=(libicu krb5-libs openssl-libs zlib) ;;' "$RUNNER_SCRIPT"
  grep -qF 'readonly RUNTIME_LIBRARIES=(libicuuc libssl libgssapi_krb5 libz)' "$SCRIPT"
  grep -qF 'readonly RUNTIME_PACKAGES=(libicu krb5-libs openssl-libs zlib)' "$SCRIPT"
}
