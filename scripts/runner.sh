#!/usr/bin/env bash
# sophons runner script.
#
# create-runner starts this on a fresh runner instance through SSM Run Command (AWS-RunShellScript, as root):
#   export SOPHONS_RUNNER_VERSION=... SOPHONS_RUNNER_URL_X64=... SOPHONS_RUNNER_SHA256_X64=... (and _ARM64)
#   export SOPHONS_PACKAGES=... SOPHONS_DOCKER=...
#   runner.sh <jit-parameter-name>
# It waits for cloud-init, installs what the runner and the template's jobs need with the OS's package manager,
# installs the given actions-runner release (verified against its SHA-256), reads the instance's JIT config
# from its SecureString parameter (through the instance role), deletes the parameter, and runs that one
# ephemeral runner as an unprivileged user. It exits with the runner's status; the end of the SSM command is
# what tells stop-runner to terminate the instance. Everything it prints goes to the command output
# (CloudWatch Logs); the JIT config is never printed.
#
# Environment. create-runner sets the release from GitHub's runner downloads API (or from the operator's pin):
#   SOPHONS_RUNNER_VERSION        the actions-runner release, e.g. 2.330.0. There is no default on purpose:
#                                 GitHub refuses runners older than 2.329.0 and stops giving jobs to one that
#                                 has not updated within 30 days of a release, so a version pinned here would
#                                 break a deployment by itself.
#   SOPHONS_RUNNER_URL_X64, SOPHONS_RUNNER_SHA256_X64      the x86_64 tarball and its SHA-256
#   SOPHONS_RUNNER_URL_ARM64, SOPHONS_RUNNER_SHA256_ARM64  the aarch64 tarball and its SHA-256
#                                 (only this machine's architecture is required)
#   SOPHONS_PACKAGES              space-separated OS packages the template's jobs need. Unset: git (without
#                                 it actions/checkout falls back to a tarball). Empty: none.
#   SOPHONS_DOCKER                1: install Docker, start it and put the runner user in the docker group.
#                                 0 (default): leave Docker alone.
#   SOPHONS_INSTALL_DEPENDENCIES  the runner's .NET libraries (ICU, OpenSSL, Kerberos, zlib): auto (default)
#                                 installs them when one is missing, always installs them, never leaves the
#                                 package manager alone. In every mode a library still missing fails (68).
#   SOPHONS_CLOUD_INIT_TIMEOUT    seconds to wait for cloud-init to finish (default 600).
#   SOPHONS_RUNNER_CACHE_URI      s3:// prefix holding actions-runner-linux-<arch>-<version>.tar.gz (below).
#   SOPHONS_ROOT, SOPHONS_RUNNER_USER, SOPHONS_IMDS_ENDPOINT, SOPHONS_OS_RELEASE: for AMIs and the tests.
#
# Exit codes: the runner's own status once it ran; before that 64 usage (the argument or the environment),
# 65 setup (including cloud-init not finishing in time), 66 JIT parameter unreadable, 67 download or checksum
# failure, 68 dependencies (the package manager failed, Docker did not start, or a library the runner loads
# is still missing).
set -euo pipefail

# Optional cache of runner tarballs (`s3://<bucket>/actions-runner/`). Terraform rewrites the default below
# in the bucket's copy of this script when runner_cache_enabled is set; keep the line as it is.
: "${SOPHONS_RUNNER_CACHE_URI:=}"

SOPHONS_ROOT="${SOPHONS_ROOT:-/opt/sophons}"
RUNNER_USER="${SOPHONS_RUNNER_USER:-sophons-runner}"
IMDS_ENDPOINT="${SOPHONS_IMDS_ENDPOINT:-http://169.254.169.254}"
OS_RELEASE="${SOPHONS_OS_RELEASE:-/etc/os-release}"
INSTALL_DEPENDENCIES="${SOPHONS_INSTALL_DEPENDENCIES:-auto}"
CLOUD_INIT_TIMEOUT="${SOPHONS_CLOUD_INIT_TIMEOUT:-600}"
DOCKER="${SOPHONS_DOCKER:-0}"
# Unset means git; set and empty means no package at all.
read -r -a PACKAGES <<<"${SOPHONS_PACKAGES-git}"

readonly EXIT_USAGE=64 EXIT_SETUP=65 EXIT_PARAMETER=66 EXIT_DOWNLOAD=67 EXIT_DEPENDENCIES=68

# The shared libraries the runner's .NET runtime loads, by soname prefix: ICU (without it the runner dies
# with "Couldn't find a valid ICU package"; Amazon Linux 2023 comes without it), OpenSSL, Kerberos' GSSAPI
# and zlib. That is the list of the runner's own bin/installdependencies.sh
# (https://github.com/actions/runner/blob/main/src/Misc/layoutbin/installdependencies.sh: "lttng-ust
# openssl-libs krb5-libs zlib libicu" on Fedora/RHEL) without lttng-ust, which .NET 8 only loads for tracing
# when it is there and does not list as a dependency
# (https://github.com/dotnet/core/blob/main/release-notes/8.0/distros/rhel.json: ca-certificates krb5-libs
# glibc libgcc libicu libstdc++ openssl-libs tzdata).
readonly RUNTIME_LIBRARIES=(libicuuc libssl libgssapi_krb5 libz)

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

# Exits 64 naming the variable $1 unless it is set and matches the pattern $2 (described as $3).
require_env() {
  local name=$1 pattern=$2 what=$3
  local value="${!name:-}"
  [[ -n $value ]] || die "$EXIT_USAGE" "$name is not set: it must be $what (create-runner sets it)"
  [[ $value =~ $pattern ]] || die "$EXIT_USAGE" "$name='$value' is not $what"
}

# The release to install on this machine: sets RUNNER_ARCH (x64 or arm64), RUNNER_VERSION, RUNNER_URL and
# RUNNER_SHA256 from the environment, or exits 64 naming the variable that is missing or malformed.
select_release() {
  case "$(uname -m)" in
    x86_64 | amd64) RUNNER_ARCH=x64 ;;
    aarch64 | arm64) RUNNER_ARCH=arm64 ;;
    *) die "$EXIT_SETUP" "unsupported machine architecture $(uname -m)" ;;
  esac
  local url_var="SOPHONS_RUNNER_URL_${RUNNER_ARCH^^}" sha256_var="SOPHONS_RUNNER_SHA256_${RUNNER_ARCH^^}"
  require_env SOPHONS_RUNNER_VERSION '^[0-9]+\.[0-9]+\.[0-9]+$' "an actions-runner version such as 2.330.0"
  require_env "$url_var" '^https://[^[:space:]]+$' "the https URL of the $RUNNER_ARCH runner tarball"
  require_env "$sha256_var" '^[0-9A-Fa-f]{64}$' "the SHA-256 (64 hex digits) of the $RUNNER_ARCH runner tarball"
  RUNNER_VERSION=$SOPHONS_RUNNER_VERSION
  RUNNER_URL=${!url_var}
  RUNNER_SHA256=${!sha256_var,,}
}

check_settings() {
  [[ $INSTALL_DEPENDENCIES =~ ^(auto|always|never)$ ]] ||
    die "$EXIT_USAGE" "SOPHONS_INSTALL_DEPENDENCIES='$INSTALL_DEPENDENCIES' is not auto, always or never"
  [[ $DOCKER =~ ^[01]$ ]] || die "$EXIT_USAGE" "SOPHONS_DOCKER='$DOCKER' is not 0 or 1"
  [[ $CLOUD_INIT_TIMEOUT =~ ^[1-9][0-9]*$ ]] ||
    die "$EXIT_USAGE" "SOPHONS_CLOUD_INIT_TIMEOUT='$CLOUD_INIT_TIMEOUT' is not a number of seconds"
  local package
  for package in "${PACKAGES[@]}"; do
    # Names only: nothing that a package manager would read as an option.
    [[ $package =~ ^[A-Za-z0-9][A-Za-z0-9+._-]*$ ]] ||
      die "$EXIT_USAGE" "SOPHONS_PACKAGES: '$package' is not a package name"
  done
}

# The SSM agent is not ordered after cloud-init, so this script can start while the user data is still
# installing packages (and holding the package manager's lock). Nothing is installed or started before
# cloud-init has finished; if it does not finish in time, the setup fails (65).
wait_for_cloud_init() {
  if ! command -v cloud-init >/dev/null; then
    log "no cloud-init on this image; not waiting for it"
    return
  fi
  log "waiting for cloud-init to finish (at most ${CLOUD_INIT_TIMEOUT}s)"
  local status=0 output
  output=$(timeout "$CLOUD_INIT_TIMEOUT" cloud-init status --wait 2>&1) || status=$?
  case $status in
    0) log "cloud-init is done" ;;
    124) die "$EXIT_SETUP" "cloud-init did not finish within ${CLOUD_INIT_TIMEOUT}s; not installing anything while it may still be running" ;;
    # 1 is an error, 2 a recoverable one (cloud-init 23.4 and later): either way cloud-init has stopped, and
    # what failed is the image's or the template's user data, not something the runner needs. The dependency
    # checks below decide whether the runner can start; stopping here would fail jobs on, say, a deprecation
    # warning in someone's cloud-config.
    *) log "warning: cloud-init ended with status $status (${output##*$'\n'}); going on, the dependency checks decide" ;;
  esac
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

################################################################################
# OS packages
################################################################################

os_release_field() {
  local line
  line=$(grep -E "^$1=" "$OS_RELEASE" 2>/dev/null | tail -n 1) || true
  line=${line#*=}
  line=${line#[\"\']}
  printf '%s\n' "${line%[\"\']}"
}

# Sets OS_FAMILY from os-release: rpm (Amazon Linux, Fedora, RHEL and its rebuilds: dnf, else yum), deb
# (Debian, Ubuntu: apt-get) or unknown (nothing can be installed there).
detect_os() {
  local id like
  id=$(os_release_field ID)
  like=$(os_release_field ID_LIKE)
  case " $id $like " in
    *" amzn "* | *" fedora "* | *" rhel "* | *" centos "*) OS_FAMILY=rpm ;;
    *" debian "* | *" ubuntu "*) OS_FAMILY=deb ;;
    *) OS_FAMILY=unknown ;;
  esac
  local name
  name=$(os_release_field PRETTY_NAME)
  log "OS: ${name:-unknown} (ID=${id:-none} VERSION_ID=$(os_release_field VERSION_ID)), packages: $OS_FAMILY"
}

# The runtime libraries ldconfig does not know, space-separated (empty when all are there).
missing_libraries() {
  local cache library missing=""
  cache=$(ldconfig -p) ||
    die "$EXIT_DEPENDENCIES" "ldconfig -p failed: cannot tell whether the runner's libraries are installed"
  for library in "${RUNTIME_LIBRARIES[@]}"; do
    grep -Eq "^[[:space:]]*${library}\.so\.[0-9]" <<<"$cache" || missing+=" $library"
  done
  printf '%s\n' "${missing# }"
}

APT_UPDATED=0
apt_get() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 "$@"
}
apt_update() {
  if [[ $APT_UPDATED == 0 ]]; then
    apt_get update -q || die "$EXIT_DEPENDENCIES" "apt-get update failed"
    APT_UPDATED=1
  fi
}

# Appends to WANTED the newest package of the apt sources starting with $1 whose whole name matches $2
# (libicu74 for libicu and ^libicu[0-9]+$ on Ubuntu 24.04): Debian and Ubuntu put the library's version in
# the name, and it changes from release to release.
want_newest_apt_package() {
  local name
  name=$(apt-cache pkgnames "$1" | grep -E "$2" | sort -V | tail -n 1) || true
  [[ -n $name ]] || die "$EXIT_DEPENDENCIES" "no package matching $2 in the apt sources"
  WANTED+=("$name")
}

# Appends to WANTED the packages holding RUNTIME_LIBRARIES on this OS family. The rpm names are those of the
# runner's installdependencies.sh for Fedora/RHEL (above), which does not recognise Amazon Linux 2023 and
# exits. On Amazon Linux 2023, github-aws-runners/terraform-aws-github-runner (whose default image it is)
# installs libicu, docker and git with dnf under these names:
# https://github.com/github-aws-runners/terraform-aws-github-runner/blob/main/modules/runners/templates/install-runner.sh
# https://github.com/github-aws-runners/terraform-aws-github-runner/blob/main/modules/runners/templates/user-data.sh
want_runtime_packages() {
  case $OS_FAMILY in
    rpm) WANTED+=(libicu krb5-libs openssl-libs zlib) ;;
    deb)
      apt_update
      WANTED+=(libkrb5-3 libgssapi-krb5-2 zlib1g)
      want_newest_apt_package libssl '^libssl[0-9.]+(t64)?$'
      want_newest_apt_package libicu '^libicu[0-9]+$'
      ;;
    *) die "$EXIT_DEPENDENCIES" "cannot install the runner's libraries (${RUNTIME_LIBRARIES[*]}) on this OS (not a dnf/yum or apt-get distribution per $OS_RELEASE): bake them into the image" ;;
  esac
}

is_installed() {
  case $OS_FAMILY in
    rpm) rpm -q --quiet "$1" ;;
    deb) [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]] ;;
    *) return 1 ;;
  esac
}

# Installs the packages given, all in one transaction, or exits 68.
package_install() {
  case $OS_FAMILY in
    rpm)
      local dnf
      dnf=$(command -v dnf || command -v yum) || die "$EXIT_DEPENDENCIES" "neither dnf nor yum is installed: cannot install $*"
      log "installing with ${dnf##*/}: $*"
      "$dnf" install -y "$@" || die "$EXIT_DEPENDENCIES" "${dnf##*/} could not install $* (its output is above)"
      ;;
    deb)
      apt_update
      log "installing with apt-get: $*"
      apt_get install -y -q --no-install-recommends "$@" ||
        die "$EXIT_DEPENDENCIES" "apt-get could not install $* (its output is above)"
      ;;
    *)
      die "$EXIT_DEPENDENCIES" "cannot install $* on this OS (not a dnf/yum or apt-get distribution per $OS_RELEASE): bake them into the image, and set SOPHONS_PACKAGES='' for packages"
      ;;
  esac
}

# Installs what is missing of the runner's libraries (per SOPHONS_INSTALL_DEPENDENCIES), SOPHONS_PACKAGES and
# Docker, starts Docker for the runner user, then checks every library the runner loads. A runner that could
# not start is never started: anything missing exits 68, naming it.
install_packages() {
  local missing
  missing=$(missing_libraries)
  WANTED=()
  case $INSTALL_DEPENDENCIES in
    always) want_runtime_packages ;;
    auto)
      if [[ -n $missing ]]; then
        log "missing runner libraries: $missing"
        want_runtime_packages
      fi
      ;;
  esac
  WANTED+=("${PACKAGES[@]}")
  if [[ $DOCKER == 1 ]]; then
    case $OS_FAMILY in
      deb) WANTED+=(docker.io) ;;
      *) WANTED+=(docker) ;;
    esac
  fi

  local package install=()
  for package in "${WANTED[@]}"; do
    is_installed "$package" || install+=("$package")
  done
  if [[ ${#install[@]} -gt 0 ]]; then
    package_install "${install[@]}"
  elif [[ ${#WANTED[@]} -gt 0 ]]; then
    log "already installed: ${WANTED[*]}"
  fi

  if [[ $DOCKER == 1 ]]; then
    systemctl enable --now docker || die "$EXIT_DEPENDENCIES" "Docker did not start (systemctl enable --now docker)"
    usermod -aG docker "$RUNNER_USER" || die "$EXIT_DEPENDENCIES" "could not add $RUNNER_USER to the docker group"
    log "Docker is running; $RUNNER_USER is in the docker group"
  fi

  missing=$(missing_libraries)
  if [[ -n $missing ]]; then
    local hint="SOPHONS_INSTALL_DEPENDENCIES=$INSTALL_DEPENDENCIES"
    [[ $INSTALL_DEPENDENCIES == never ]] && hint+=": bake them into the image, or use auto"
    die "$EXIT_DEPENDENCIES" "the runner would not start: ldconfig finds no ${missing// /, } ($hint)"
  fi
}

################################################################################
# The runner
################################################################################

# Downloads the tarball to $1 and verifies it: from the bucket cache when configured (move-jobs keeps it current),
# falling back to GitHub when the cache has no copy or a copy that does not match; else from GitHub.
download_runner() {
  local out=$1 name="actions-runner-linux-${RUNNER_ARCH}-${RUNNER_VERSION}.tar.gz"
  if [[ -n $SOPHONS_RUNNER_CACHE_URI ]]; then
    log "fetching $name from the cache ${SOPHONS_RUNNER_CACHE_URI}"
    if aws s3 cp --only-show-errors "${SOPHONS_RUNNER_CACHE_URI%/}/$name" "$out"; then
      if sha256_matches "$out"; then
        log "checksum verified ($RUNNER_SHA256)"
        return 0
      fi
      log "the cached $name does not match its SHA-256 $RUNNER_SHA256; not using it"
      rm -f "$out"
    fi
    log "the cache has no usable $name; falling back to $RUNNER_URL"
  fi
  log "downloading $RUNNER_URL"
  curl -fsSL --retry 5 --retry-delay 2 --connect-timeout 10 -o "$out" "$RUNNER_URL" ||
    die "$EXIT_DOWNLOAD" "could not download $RUNNER_URL"
  if ! sha256_matches "$out"; then
    die "$EXIT_DOWNLOAD" "checksum mismatch for actions-runner $RUNNER_VERSION ($RUNNER_ARCH): expected $RUNNER_SHA256, got $(sha256_of "$out"); not installing it"
  fi
  log "checksum verified ($RUNNER_SHA256)"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
sha256_matches() { [[ $(sha256_of "$1") == "$RUNNER_SHA256" ]]; }

# Installs the release into $1 ($SOPHONS_ROOT/actions-runner-<version>), unless an AMI already has it there.
install_runner() {
  local dir=$1
  if [[ -x $dir/run.sh ]]; then
    log "actions-runner $RUNNER_VERSION is already installed in $dir"
    return
  fi
  local tmp
  tmp=$(mktemp -d "$SOPHONS_ROOT/download.XXXXXX")
  download_runner "$tmp/runner.tar.gz"
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  tar -xzf "$tmp/runner.tar.gz" -C "$dir.partial" || die "$EXIT_DOWNLOAD" "could not unpack $RUNNER_URL"
  rm -rf "$tmp"
  mv "$dir.partial" "$dir"
  [[ -x $dir/run.sh ]] || die "$EXIT_DOWNLOAD" "$RUNNER_URL has no run.sh"
  log "installed actions-runner $RUNNER_VERSION ($RUNNER_ARCH) in $dir"
}

main() {
  [[ $# -eq 1 ]] || usage
  local parameter=$1
  [[ $parameter =~ ^/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$ ]] || usage
  select_release
  check_settings

  wait_for_cloud_init
  local region dir
  region=$(detect_region)
  export AWS_REGION="$region" AWS_DEFAULT_REGION="$region"
  dir="$SOPHONS_ROOT/actions-runner-$RUNNER_VERSION"
  log "preparing actions-runner $RUNNER_VERSION ($RUNNER_ARCH) for $parameter in $region"

  mkdir -p "$SOPHONS_ROOT"
  ensure_runner_user
  detect_os
  install_packages
  install_runner "$dir"
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
