#!/usr/bin/env bash
# sophons runner script.
#
# create-runner starts this on a fresh runner instance through SSM Run Command (AWS-RunShellScript, as root):
#   runner.sh <jit-parameter-name>
# It installs the pinned GitHub Actions runner, reads the instance's JIT config from its SecureString
# parameter (through the instance role), deletes the parameter, and runs that one ephemeral runner as an
# unprivileged user. It exits with the runner's status; the end of the SSM command is what tells stop-runner
# to terminate the instance. Everything it prints goes to the command output (CloudWatch Logs); the JIT
# config is never printed.
#
# Exit codes: the runner's own status once it ran; before that 64 usage, 65 setup, 66 JIT parameter
# unreadable, 67 download or checksum failure.
set -euo pipefail

# The pinned actions-runner release. Bump the version and both checksums together; each release on
# https://github.com/actions/runner/releases lists the SHA-256 of its assets.
readonly DEFAULT_RUNNER_VERSION="2.326.0"
readonly RUNNER_SHA256_X64="9c74af9b4352bbc99aecc7353b47bcdfcd1b2a0f6d15af54a99f54a0c14a1de8"
readonly RUNNER_SHA256_ARM64="ee7c229c979c5152e9f12be16ee9e83ff74c9d9b95c3c1aeb2e9b6d07157ec85"

# Optional cache of runner tarballs (`s3://<bucket>/actions-runner/`). Terraform rewrites the default below
# in the bucket's copy of this script when runner_cache_enabled is set; keep the line as it is.
: "${SOPHONS_RUNNER_CACHE_URI:=}"

# Overridable for AMIs that bake the runner in, and for the tests.
RUNNER_VERSION="${SOPHONS_RUNNER_VERSION:-$DEFAULT_RUNNER_VERSION}"
SOPHONS_ROOT="${SOPHONS_ROOT:-/opt/sophons}"
RUNNER_USER="${SOPHONS_RUNNER_USER:-sophons-runner}"
IMDS_ENDPOINT="${SOPHONS_IMDS_ENDPOINT:-http://169.254.169.254}"
INSTALL_DEPENDENCIES="${SOPHONS_INSTALL_DEPENDENCIES:-auto}"

readonly EXIT_USAGE=64 EXIT_SETUP=65 EXIT_PARAMETER=66 EXIT_DOWNLOAD=67

# Log lines go to the script's stdout (fd 3), also from inside command substitutions.
exec 3>&1

log() {
  printf '%s sophons-runner: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&3
}

die() {
  local code=$1
  shift
  log "error: $*"
  exit "$code"
}

usage() {
  die "$EXIT_USAGE" "usage: runner.sh <jit-parameter-name> (an SSM parameter name such as /sophons/jit/i-0123456789abcdef0)"
}

# The region from the environment, else from the instance metadata (IMDSv2: token first).
detect_region() {
  local region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
  if [[ -z $region ]]; then
    local token
    token=$(curl -fsS --retry 3 --connect-timeout 2 -X PUT \
      -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS_ENDPOINT/latest/api/token") ||
      die "$EXIT_SETUP" "no AWS_REGION and the instance metadata service (IMDSv2) did not answer"
    region=$(curl -fsS --retry 3 --connect-timeout 2 \
      -H "X-aws-ec2-metadata-token: $token" "$IMDS_ENDPOINT/latest/meta-data/placement/region") ||
      die "$EXIT_SETUP" "could not read the region from the instance metadata service"
  fi
  [[ $region =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "$EXIT_SETUP" "unexpected region '$region'"
  printf '%s\n' "$region"
}

runner_arch() {
  case "$(uname -m)" in
    x86_64 | amd64) echo x64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) die "$EXIT_SETUP" "unsupported machine architecture $(uname -m)" ;;
  esac
}

expected_sha256() {
  local arch=$1
  if [[ -n ${SOPHONS_RUNNER_SHA256:-} ]]; then
    echo "$SOPHONS_RUNNER_SHA256"
  elif [[ $RUNNER_VERSION != "$DEFAULT_RUNNER_VERSION" ]]; then
    die "$EXIT_SETUP" "SOPHONS_RUNNER_VERSION=$RUNNER_VERSION needs SOPHONS_RUNNER_SHA256: an unverified runner is never installed"
  elif [[ $arch == x64 ]]; then
    echo "$RUNNER_SHA256_X64"
  else
    echo "$RUNNER_SHA256_ARM64"
  fi
}

runner_home() {
  local home
  home=$(getent passwd "$RUNNER_USER" | cut -d: -f6) || true
  printf '%s\n' "${home:-$SOPHONS_ROOT/home}"
}

ensure_runner_user() {
  if id -u "$RUNNER_USER" >/dev/null 2>&1; then
    return
  fi
  log "creating the unprivileged user $RUNNER_USER"
  useradd --system --create-home --home-dir "$SOPHONS_ROOT/home" --shell /bin/bash "$RUNNER_USER" ||
    die "$EXIT_SETUP" "could not create the user $RUNNER_USER"
}

# Downloads the tarball to $2: from the bucket cache when configured (falling back to GitHub), else GitHub.
download_runner() {
  local name=$1 out=$2
  if [[ -n $SOPHONS_RUNNER_CACHE_URI ]]; then
    log "fetching $name from the cache ${SOPHONS_RUNNER_CACHE_URI}"
    if aws s3 cp --only-show-errors "${SOPHONS_RUNNER_CACHE_URI%/}/$name" "$out"; then
      return 0
    fi
    log "the cache has no usable $name; falling back to GitHub"
  fi
  local url="https://github.com/actions/runner/releases/download/v${RUNNER_VERSION}/${name}"
  log "downloading $url"
  curl -fsSL --retry 5 --retry-delay 2 --connect-timeout 10 -o "$out" "$url" ||
    die "$EXIT_DOWNLOAD" "could not download $url"
}

verify_sha256() {
  local file=$1 expected=$2 actual
  actual=$(sha256sum "$file" | cut -d' ' -f1)
  if [[ $actual != "$expected" ]]; then
    die "$EXIT_DOWNLOAD" "checksum mismatch for $(basename "$file"): expected $expected, got $actual; not installing it"
  fi
  log "checksum verified ($expected)"
}

install_dependencies() {
  local dir=$1
  case "$INSTALL_DEPENDENCIES" in
    0 | false | no) return ;;
    auto) if ldconfig -p 2>/dev/null | grep -q libicuuc; then return; fi ;;
  esac
  if [[ -x $dir/bin/installdependencies.sh ]]; then
    log "installing the runner's system dependencies"
    "$dir/bin/installdependencies.sh" || log "warning: installdependencies.sh failed; the runner may not start"
  fi
}

# Installs the pinned runner into $SOPHONS_ROOT/actions-runner-<version>, unless an AMI already has it.
install_runner() {
  local arch=$1 dir=$2
  if [[ -x $dir/run.sh ]]; then
    log "actions-runner $RUNNER_VERSION is already installed in $dir"
    return
  fi
  local name="actions-runner-linux-${arch}-${RUNNER_VERSION}.tar.gz" sha256 tmp
  sha256=$(expected_sha256 "$arch")
  tmp=$(mktemp -d "$SOPHONS_ROOT/download.XXXXXX")
  download_runner "$name" "$tmp/$name"
  verify_sha256 "$tmp/$name" "$sha256"
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  tar -xzf "$tmp/$name" -C "$dir.partial" || die "$EXIT_DOWNLOAD" "could not unpack $name"
  rm -rf "$tmp"
  mv "$dir.partial" "$dir"
  [[ -x $dir/run.sh ]] || die "$EXIT_DOWNLOAD" "$name has no run.sh"
  install_dependencies "$dir"
  log "installed actions-runner $RUNNER_VERSION ($arch) in $dir"
}

main() {
  [[ $# -eq 1 ]] || usage
  local parameter=$1
  [[ $parameter =~ ^/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$ ]] || usage

  local region arch dir
  region=$(detect_region)
  export AWS_REGION="$region" AWS_DEFAULT_REGION="$region"
  arch=$(runner_arch)
  dir="$SOPHONS_ROOT/actions-runner-$RUNNER_VERSION"
  log "preparing a runner for $parameter in $region"

  mkdir -p "$SOPHONS_ROOT"
  ensure_runner_user
  install_runner "$arch" "$dir"
  mkdir -p "$dir/_work"
  chown -R "$RUNNER_USER:" "$dir" || die "$EXIT_SETUP" "could not hand $dir to $RUNNER_USER"

  # The JIT config: read once, deleted at once (it is single-use; stop-runner deletes it too if this fails).
  local jit
  jit=$(aws ssm get-parameter --name "$parameter" --with-decryption \
    --query Parameter.Value --output text) ||
    die "$EXIT_PARAMETER" "could not read the JIT parameter $parameter (already used, deleted, or not readable by the instance role)"
  if [[ -z $jit || $jit == None ]]; then
    die "$EXIT_PARAMETER" "the JIT parameter $parameter is empty"
  fi
  if aws ssm delete-parameter --name "$parameter"; then
    log "read and deleted $parameter"
  else
    log "warning: could not delete $parameter; stop-runner deletes it when the runner ends"
  fi

  # The runner gets a clean environment: nothing of this script (region, cache, JIT config) leaks into jobs.
  log "starting the runner as $RUNNER_USER"
  local status=0 home
  home=$(runner_home)
  cd "$dir"
  runuser -u "$RUNNER_USER" -- env -i \
    HOME="$home" \
    USER="$RUNNER_USER" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    ./run.sh --jitconfig "$jit" || status=$?
  unset jit

  log "the runner exited with status $status"
  exit "$status"
}

main "$@"
