#!/usr/bin/env bash
# sophons image bake: the build (and test) step of the image_builder pipeline's component (image-builder.tf).
#
# Bakes into an Amazon Linux 2023 image what scripts/runner.sh would otherwise install at every boot:
#   - the runner's libraries (libicu krb5-libs openssl-libs zlib: runner.sh's RPM list) and SOPHONS_BAKE_PACKAGES
#     (default git and docker), with dnf;
#   - GitHub's latest actions-runner release, its tarball checked against the SHA-256 its release notes publish
#     (between `<!-- BEGIN SHA linux-<arch> -->` and `<!-- END SHA linux-<arch> -->`, per the release note template
#     https://github.com/actions/runner/blob/main/releaseNote.md), unpacked into
#     $SOPHONS_ROOT/actions-runner-<version>: the directory runner.sh uses as it is when it has run.sh, without
#     downloading or verifying anything. runner.sh installs the version create-runner names (GitHub's current one),
#     so the baked runner serves only while it is that version; otherwise runner.sh downloads the current one.
# Docker is installed, not enabled: runner.sh starts it for the templates that ask for it.
#
#   SOPHONS_BAKE_STEP=bake   (default) install all of the above
#   SOPHONS_BAKE_STEP=check  check the image: the runner directory, its libraries, the packages (validate and test)
#
# Environment for the tests: SOPHONS_ROOT (default /opt/sophons), SOPHONS_RUNNER_RELEASE_URL (the releases API's
# latest release), SOPHONS_RUNNER_DOWNLOAD_URL (the base under which v<version>/<tarball> lives).
set -euo pipefail

SOPHONS_ROOT="${SOPHONS_ROOT:-/opt/sophons}"
RELEASE_URL="${SOPHONS_RUNNER_RELEASE_URL:-https://api.github.com/repos/actions/runner/releases/latest}"
DOWNLOAD_URL="${SOPHONS_RUNNER_DOWNLOAD_URL:-https://github.com/actions/runner/releases/download}"
read -r -a PACKAGES <<<"${SOPHONS_BAKE_PACKAGES-git docker}"
# What runner.sh installs on an RPM distribution when a library is missing, and the sonames it then looks for.
readonly RUNTIME_PACKAGES=(libicu krb5-libs openssl-libs zlib)
readonly RUNTIME_LIBRARIES=(libicuuc libssl libgssapi_krb5 libz)
readonly VERSION_FILE="$SOPHONS_ROOT/baked-runner-version"

# Log lines go to the script's stdout (fd 3), also from inside command substitutions.
exec 3>&1

log() {
  printf '%s sophons-bake: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&3
}

die() {
  log "error: $*"
  exit 1
}

runner_arch() {
  case "$(uname -m)" in
    x86_64 | amd64) echo x64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) die "unsupported machine architecture $(uname -m)" ;;
  esac
}

# Prints "<version> <sha256>" of the latest release's linux-$1 tarball, from the releases API's JSON.
latest_release() {
  local arch=$1 json
  json=$(curl -fsSL --retry 5 --retry-delay 3 --connect-timeout 10 -H 'Accept: application/vnd.github+json' "$RELEASE_URL") ||
    die "could not read the latest actions-runner release from $RELEASE_URL"
  python3 -c '
import json, re, sys
release, arch = json.loads(sys.argv[1]), sys.argv[2]
version = str(release.get("tag_name", "")).removeprefix("v")
marker = "<!-- BEGIN SHA linux-" + arch + " -->([0-9A-Fa-f]{64})<!-- END SHA linux-" + arch + " -->"
found = re.search(marker, release.get("body") or "")
if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version) or not found:
    sys.exit("the release " + (version or "?") + " names no version or no SHA-256 of linux-" + arch)
print(version, found.group(1).lower())
' "$json" "$arch" || die "the latest actions-runner release cannot be verified; not baking an unverified runner"
}

install_packages() {
  local wanted=("${RUNTIME_PACKAGES[@]}" "${PACKAGES[@]}") package
  for package in "${PACKAGES[@]}"; do
    [[ $package =~ ^[A-Za-z0-9][A-Za-z0-9+._-]*$ ]] || die "SOPHONS_BAKE_PACKAGES: '$package' is not a package name"
  done
  log "installing with dnf: ${wanted[*]}"
  dnf install -y "${wanted[@]}" || die "dnf could not install ${wanted[*]}"
  dnf clean all >/dev/null || true
}

install_runner() {
  local arch release version sha256 name tmp dir actual
  arch=$(runner_arch)
  release=$(latest_release "$arch")
  read -r version sha256 <<<"$release"
  name="actions-runner-linux-$arch-$version.tar.gz"
  dir="$SOPHONS_ROOT/actions-runner-$version"
  mkdir -p "$SOPHONS_ROOT"
  tmp=$(mktemp -d "$SOPHONS_ROOT/bake.XXXXXX")
  log "downloading $DOWNLOAD_URL/v$version/$name"
  curl -fsSL --retry 5 --retry-delay 3 --connect-timeout 10 -o "$tmp/$name" "$DOWNLOAD_URL/v$version/$name" ||
    die "could not download $name"
  actual=$(sha256sum "$tmp/$name" | cut -d' ' -f1)
  [[ $actual == "$sha256" ]] ||
    die "checksum mismatch for $name: the release notes say $sha256, the download is $actual; not baking it"
  log "checksum verified ($sha256)"
  rm -rf "$dir.partial" "$dir"
  mkdir -p "$dir.partial"
  tar -xzf "$tmp/$name" -C "$dir.partial" || die "could not unpack $name"
  rm -rf "$tmp"
  [[ -x $dir.partial/run.sh ]] || die "$name has no run.sh"
  mv "$dir.partial" "$dir"
  printf '%s\n' "$version" >"$VERSION_FILE"
  log "baked actions-runner $version ($arch) into $dir"
}

check() {
  [[ -s $VERSION_FILE ]] || die "$VERSION_FILE is missing: no runner was baked"
  local version dir cache library package problems=0
  version=$(<"$VERSION_FILE")
  dir="$SOPHONS_ROOT/actions-runner-$version"
  if [[ -x $dir/run.sh ]]; then
    log "actions-runner $version is in $dir"
  else
    log "error: $dir/run.sh is missing"
    problems=$((problems + 1))
  fi
  cache=$(ldconfig -p)
  for library in "${RUNTIME_LIBRARIES[@]}"; do
    if ! grep -Eq "^[[:space:]]*${library}\.so\.[0-9]" <<<"$cache"; then
      log "error: ldconfig finds no $library: the runner would not start"
      problems=$((problems + 1))
    fi
  done
  for package in "${PACKAGES[@]}"; do
    if ! rpm -q --quiet "$package"; then
      log "error: the package $package is not installed"
      problems=$((problems + 1))
    fi
  done
  ((problems == 0)) || die "$problems problem(s) with the baked image"
  log "the image has actions-runner $version, its libraries and ${PACKAGES[*]:-no extra package}"
}

case "${SOPHONS_BAKE_STEP:-bake}" in
  bake)
    install_packages
    install_runner
    check
    ;;
  check) check ;;
  *) die "SOPHONS_BAKE_STEP='${SOPHONS_BAKE_STEP}' is not bake or check" ;;
esac
