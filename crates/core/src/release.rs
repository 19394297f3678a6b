//! Which actions-runner release a new runner installs: always a current one, and always verified.
//!
//! GitHub refuses to register runners older than 2.329.0 and stops giving jobs to a runner that
//! has not installed a new release within 30 days of its publication, so a version pinned in the
//! code is a deployment that breaks by itself. create-runner asks GitHub's runner downloads API
//! (`GET /orgs/{org}/actions/runners/downloads`, or the repository's), which lists the current
//! release's package per os and architecture with its SHA-256, keeps the answer for a while, and
//! hands version, URLs and checksums to the runner script, which installs nothing it cannot verify.
//! When GitHub cannot answer, the last release it named is used; with none known, the job waits.
//! An operator may pin a release (with its checksums) in the config document instead.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::github::{Github, RunnerDownload, RunnerScope};

/// The oldest release GitHub still registers (enforced on github.com since 2026-09; REFERENCE.md).
pub const MIN_RUNNER_VERSION: Version = Version(2, 329, 0);
/// How long an answer of the downloads API is kept before asking again.
pub const RELEASE_TTL: Duration = Duration::from_secs(3600);

/// A runner release number, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim_start_matches('v').split('.');
        let version = Self(
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        parts.next().is_none().then_some(version)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A release an operator pins in the config document (`runner_pin`), with the SHA-256 of each
/// package as its GitHub release page lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerPin {
    pub version: String,
    pub sha256_x64: String,
    pub sha256_arm64: String,
}

/// One package of a release: where to fetch it and its SHA-256 (64 lowercase hex digits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub url: String,
    pub sha256: String,
}

/// The release a runner installs: one package per architecture sophons launches (x64, arm64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerRelease {
    pub version: Version,
    pub x64: Package,
    pub arm64: Package,
}

pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl RunnerRelease {
    /// The release GitHub's downloads API names: its Linux x64 and arm64 packages, each with a
    /// checksum (a package without one is never installed), of one version.
    pub fn from_downloads(downloads: &[RunnerDownload]) -> Result<Self, String> {
        let package = |architecture: &str| -> Result<(Version, Package), String> {
            let download = downloads
                .iter()
                .find(|d| d.os == "linux" && d.architecture == architecture)
                .ok_or_else(|| format!("GitHub lists no linux-{architecture} runner package"))?;
            let version = download
                .filename
                .strip_suffix(".tar.gz")
                .and_then(|name| name.rsplit('-').next())
                .and_then(Version::parse)
                .ok_or_else(|| format!("cannot read a version from `{}`", download.filename))?;
            let sha256 = download
                .sha256_checksum
                .as_deref()
                .filter(|sum| is_sha256(sum))
                .ok_or_else(|| {
                    format!(
                        "GitHub lists `{}` without a SHA-256; it is never installed",
                        download.filename
                    )
                })?;
            if !download.download_url.starts_with("https://") {
                return Err(format!("`{}` is not an https URL", download.download_url));
            }
            Ok((
                version,
                Package {
                    url: download.download_url.clone(),
                    sha256: sha256.to_ascii_lowercase(),
                },
            ))
        };
        let (version, x64) = package("x64")?;
        let (arm_version, arm64) = package("arm64")?;
        if version != arm_version {
            return Err(format!(
                "GitHub lists linux-x64 {version} beside linux-arm64 {arm_version}"
            ));
        }
        Ok(Self { version, x64, arm64 })
    }

    /// A pinned release, from GitHub's release downloads.
    pub fn pinned(pin: &RunnerPin) -> Result<Self, String> {
        let version = Version::parse(&pin.version).ok_or_else(|| format!("`{}` is not a version", pin.version))?;
        let package = |architecture: &str, sha256: &str| Package {
            url: format!(
                "https://github.com/actions/runner/releases/download/v{version}/actions-runner-linux-{architecture}-{version}.tar.gz"
            ),
            sha256: sha256.to_ascii_lowercase(),
        };
        Ok(Self {
            version,
            x64: package("x64", &pin.sha256_x64),
            arm64: package("arm64", &pin.sha256_arm64),
        })
    }

    /// What the runner script reads (none of it secret).
    pub fn script_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SOPHONS_RUNNER_VERSION", self.version.to_string()),
            ("SOPHONS_RUNNER_URL_X64", self.x64.url.clone()),
            ("SOPHONS_RUNNER_SHA256_X64", self.x64.sha256.clone()),
            ("SOPHONS_RUNNER_URL_ARM64", self.arm64.url.clone()),
            ("SOPHONS_RUNNER_SHA256_ARM64", self.arm64.sha256.clone()),
        ]
    }
}

/// The current release as GitHub last named it, kept for `ttl`, shared by a process's invocations.
pub struct Releases {
    pin: Option<RunnerRelease>,
    ttl: Duration,
    known: Mutex<Option<(Arc<RunnerRelease>, Instant)>>,
    warned_pin: std::sync::atomic::AtomicBool,
}

impl Releases {
    /// `pin`: the config's `runner_pin`, already validated.
    pub fn new(pin: Option<&RunnerPin>, ttl: Duration) -> Self {
        Self {
            pin: pin.and_then(|pin| RunnerRelease::pinned(pin).ok()),
            ttl,
            known: Mutex::default(),
            warned_pin: Default::default(),
        }
    }

    /// The release a runner launched now installs. Errors only when no verified release is known
    /// at all: then nothing may be launched.
    pub async fn current(&self, github: &dyn Github, scope: &RunnerScope) -> Result<Arc<RunnerRelease>, String> {
        let cached = self.known.lock().unwrap().clone();
        let fresh = cached.as_ref().filter(|(_, at)| at.elapsed() < self.ttl);
        let latest = match fresh {
            Some((release, _)) => Ok(release.clone()),
            None => match github.runner_downloads(scope).await {
                Ok(downloads) => RunnerRelease::from_downloads(&downloads).map(Arc::new),
                Err(error) => Err(error.to_string()),
            }
            .inspect(|release| {
                if cached.as_ref().is_none_or(|(old, _)| old.version != release.version) {
                    tracing::info!(
                        runner_version = %release.version,
                        "GitHub's current actions-runner release is {}",
                        release.version
                    );
                }
                *self.known.lock().unwrap() = Some((release.clone(), Instant::now()));
            }),
        };
        if let Some(pin) = &self.pin {
            if let Ok(latest) = &latest
                && latest.version > pin.version
                && !self.warned_pin.swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    runner_version = %pin.version,
                    "runner_pin is {}, GitHub's current release is {}: GitHub stops giving jobs to a runner not updated \
                     within 30 days of a release; update or remove the pin",
                    pin.version,
                    latest.version
                );
            }
            return Ok(Arc::new(pin.clone()));
        }
        match (latest, cached) {
            (Ok(release), _) => Ok(release),
            (Err(error), Some((last, _))) => {
                tracing::warn!(
                    runner_version = %last.version,
                    %error,
                    "cannot learn the current runner release from GitHub; using the last one it named, {}",
                    last.version
                );
                Ok(last)
            }
            (Err(error), None) => Err(format!(
                "cannot learn the current runner release from GitHub ({error}), and none is known yet; no runner is \
                 ever installed unverified"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn download(architecture: &str, version: &str, sha: Option<&str>) -> RunnerDownload {
        let filename = format!("actions-runner-linux-{architecture}-{version}.tar.gz");
        RunnerDownload {
            os: "linux".into(),
            architecture: architecture.into(),
            download_url: format!("https://github.com/actions/runner/releases/download/v{version}/{filename}"),
            filename,
            sha256_checksum: sha.map(str::to_string),
        }
    }

    const SHA: &str = "9C74AF9B4352BBC99AECC7353B47BCDFCD1B2A0F6D15AF54A99F54A0C14A1DE8";

    #[test]
    fn a_release_is_read_from_githubs_downloads_with_both_checksums() {
        let mut downloads = vec![
            download("x64", "2.330.0", Some(SHA)),
            download("arm64", "2.330.0", Some(&SHA.replace('9', "1"))),
        ];
        downloads.push(RunnerDownload {
            os: "win".into(),
            ..download("x64", "2.330.0", None)
        });
        let release = RunnerRelease::from_downloads(&downloads).unwrap();
        assert_eq!(release.version, Version(2, 330, 0));
        assert_eq!(release.x64.sha256, SHA.to_ascii_lowercase());
        assert!(release.arm64.url.ends_with("actions-runner-linux-arm64-2.330.0.tar.gz"));
    }

    #[test]
    fn a_package_without_a_checksum_or_of_another_version_is_refused() {
        for (downloads, expected) in [
            (
                vec![
                    download("x64", "2.330.0", Some(SHA)),
                    download("arm64", "2.330.0", None),
                ],
                "without a SHA-256",
            ),
            (
                vec![
                    download("x64", "2.330.0", Some(SHA)),
                    download("arm64", "2.330.0", Some("abc")),
                ],
                "without a SHA-256",
            ),
            (vec![download("x64", "2.330.0", Some(SHA))], "no linux-arm64"),
            (
                vec![
                    download("x64", "2.330.0", Some(SHA)),
                    download("arm64", "2.331.0", Some(SHA)),
                ],
                "beside",
            ),
        ] {
            let error = RunnerRelease::from_downloads(&downloads).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn versions_compare_by_number_not_by_text() {
        assert!(Version::parse("2.330.0").unwrap() > Version::parse("v2.329.10").unwrap());
        assert!(Version::parse("2.99.0").unwrap() < MIN_RUNNER_VERSION);
        assert_eq!(Version::parse("2.330"), None);
        assert_eq!(Version::parse("2.330.0.1"), None);
    }
}
