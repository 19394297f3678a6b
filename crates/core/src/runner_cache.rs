//! The runner cache: an in-region copy of the current actions-runner release in the deployment's
//! bucket, so that a booting runner fetches its ~200 MB package from S3 in its own region instead of
//! from github.com's release downloads (`scripts/runner.sh` tries the bucket first and falls back to
//! GitHub; it verifies the SHA-256 either way).
//!
//! move-jobs refreshes it on its schedule: for each architecture the templates use (config
//! `runner_cache.architectures`), if `<prefix>actions-runner-linux-<arch>-<version>.tar.gz` is not
//! in the bucket, the package is streamed from GitHub into a multipart upload to that key, each
//! part carrying its SHA-256 (S3 checks it), and the whole package's SHA-256 is compared with
//! GitHub's before the upload is completed. A multipart upload is invisible until it is completed
//! (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/mpuoverview.html>), so a copy that fails,
//! runs out of time or is cut off leaves nothing under the final key; it is aborted, and what an
//! abort misses (a Lambda killed mid-copy) the bucket's lifecycle rule removes after a day.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::aws::describe;
use crate::config::{Config, Scope};
use crate::github::{Github, RunnerScope};
use crate::release::{Package, Releases, RunnerRelease};

/// The size of each part but the last. S3 refuses parts under 5 MiB but the last
/// (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/qfacts.html>); 8 MiB keeps a 128 MB
/// Lambda's memory use at one part in flight.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// S3's smallest part but the last.
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;
/// Time kept back from the Lambda deadline to abort an upload cleanly.
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// An architecture runners use, as GitHub names its packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    X64,
    Arm64,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X64 => "x64",
            Self::Arm64 => "arm64",
        }
    }

    fn package(self, release: &RunnerRelease) -> &Package {
        match self {
            Self::X64 => &release.x64,
            Self::Arm64 => &release.arm64,
        }
    }
}

/// Config key `runner_cache`: where the copies go, and which architectures to copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerCacheConfig {
    pub bucket: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_architectures")]
    pub architectures: BTreeSet<Architecture>,
}

fn default_prefix() -> String {
    "actions-runner/".into()
}

fn default_architectures() -> BTreeSet<Architecture> {
    [Architecture::X64, Architecture::Arm64].into()
}

impl RunnerCacheConfig {
    /// The key a release's package has in the bucket (the name `scripts/runner.sh` looks for).
    pub fn key(&self, architecture: Architecture, release: &RunnerRelease) -> String {
        format!(
            "{}actions-runner-linux-{}-{}.tar.gz",
            self.prefix,
            architecture.as_str(),
            release.version
        )
    }
}

/// A part uploaded: its number, S3's ETag and its SHA-256 (base64), which completing the upload
/// repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    pub number: i32,
    pub etag: String,
    pub sha256: String,
}

/// The bucket, as the copy needs it. Errors are the service's own words.
#[async_trait]
pub trait Objects: Send + Sync {
    async fn exists(&self, key: &str) -> Result<bool, String>;
    /// Starts a multipart upload with SHA-256 part checksums; answers its upload id.
    async fn start_upload(&self, key: &str) -> Result<String, String>;
    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, part: Bytes) -> Result<UploadedPart, String>;
    /// Publishes the object under `key`.
    async fn finish_upload(&self, key: &str, upload_id: &str, parts: &[UploadedPart]) -> Result<(), String>;
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), String>;
}

/// A download in progress: its body, chunk by chunk.
#[async_trait]
pub trait Download: Send {
    /// The next chunk, `None` at the end.
    async fn chunk(&mut self) -> Result<Option<Bytes>, String>;
}

/// Fetches a URL (following redirects, as GitHub's release downloads need).
#[async_trait]
pub trait Downloads: Send + Sync {
    async fn open(&self, url: &str) -> Result<Box<dyn Download>, String>;
}

/// Why one copy did not happen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CopyError {
    #[error("cannot download it: {0}")]
    Download(String),
    #[error("the bucket refused it: {0}")]
    Bucket(String),
    #[error("its SHA-256 is {actual}, GitHub lists {expected}: not published")]
    Checksum { expected: String, actual: String },
    #[error("the download was empty")]
    Empty,
    #[error("out of time before the copy ended: abandoned, the next run starts again")]
    OutOfTime,
}

/// What one refresh did, per key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheReport {
    /// The release the cache should hold (none when no verified release is known).
    pub version: Option<String>,
    pub copied: Vec<String>,
    pub present: Vec<String>,
    /// Key → reason.
    pub failed: BTreeMap<String, String>,
}

/// The flow that keeps the cache current.
pub struct RunnerCache {
    config: RunnerCacheConfig,
    scope: Option<RunnerScope>,
    releases: Releases,
    objects: Arc<dyn Objects>,
    downloads: Arc<dyn Downloads>,
}

impl RunnerCache {
    /// `None` when the config document has no `runner_cache`.
    pub fn new(config: &Config, objects: Arc<dyn Objects>, downloads: Arc<dyn Downloads>) -> Option<Self> {
        let cache = config.runner_cache.clone()?;
        // The downloads API is the same for every scope; in repository scope any allowed
        // repository may answer it.
        let scope = match config.github.scope {
            Scope::Org => Some(RunnerScope::Org(config.github.owner.clone())),
            Scope::Repo => config.repositories.first().map(|repo| RunnerScope::Repo(repo.clone())),
        };
        Some(Self {
            config: cache,
            scope,
            releases: Releases::new(config.runner_pin.as_ref(), crate::release::RELEASE_TTL),
            objects,
            downloads,
        })
    }

    /// The real cache, from the config document (`None` without `runner_cache`).
    pub async fn connect(config: &Config) -> Option<Self> {
        let cache = config.runner_cache.as_ref()?;
        let downloads = HttpDownloads::new();
        let sdk = crate::aws::load().await;
        let objects = S3Objects::new(&sdk, &cache.bucket);
        Self::new(config, Arc::new(objects), Arc::new(downloads))
    }

    /// Copies the current release for each configured architecture, unless it is there already.
    pub async fn refresh(&self, github: &dyn Github, deadline: Instant) -> CacheReport {
        let mut report = CacheReport::default();
        let Some(scope) = &self.scope else {
            tracing::warn!(
                "runner cache: in repository scope with no `repositories` listed, nothing may ask GitHub for the \
                 current runner release; runners download it from GitHub"
            );
            return report;
        };
        let release = match self.releases.current(github, scope).await {
            Ok(release) => release,
            Err(error) => {
                tracing::warn!(%error, "runner cache: not refreshed");
                return report;
            }
        };
        report.version = Some(release.version.to_string());
        let stop_at = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
        for &architecture in &self.config.architectures {
            let key = self.config.key(architecture, &release);
            match self.objects.exists(&key).await {
                Ok(true) => report.present.push(key),
                Ok(false) => {
                    let started = Instant::now();
                    match self.copy(&key, architecture.package(&release), stop_at).await {
                        Ok(bytes) => {
                            tracing::info!(
                                key, bytes, seconds = started.elapsed().as_secs_f64(), runner_version = %release.version,
                                "runner cache: copied {key} from GitHub, SHA-256 verified"
                            );
                            report.copied.push(key);
                        }
                        Err(error) => {
                            tracing::warn!(key, %error, "runner cache: {key} not copied; runners download it from GitHub");
                            report.failed.insert(key, error.to_string());
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(key, %error, "runner cache: cannot tell whether {key} is in the bucket");
                    report.failed.insert(key, format!("cannot read the bucket: {error}"));
                }
            }
        }
        report
    }

    /// One copy: published only if every byte arrived and matched GitHub's SHA-256; else aborted.
    async fn copy(&self, key: &str, package: &Package, stop_at: Instant) -> Result<u64, CopyError> {
        if Instant::now() >= stop_at {
            return Err(CopyError::OutOfTime);
        }
        // A server that takes the connection and never answers must not hold move-jobs to its timeout.
        let mut body = match tokio::time::timeout_at(stop_at, self.downloads.open(&package.url)).await {
            Err(_) => return Err(CopyError::OutOfTime),
            Ok(opened) => opened.map_err(CopyError::Download)?,
        };
        let upload_id = self.objects.start_upload(key).await.map_err(CopyError::Bucket)?;
        let streamed = self.stream(key, &upload_id, body.as_mut(), package, stop_at).await;
        let published = match streamed {
            Ok((parts, bytes)) => self
                .objects
                .finish_upload(key, &upload_id, &parts)
                .await
                .map(|()| bytes)
                .map_err(CopyError::Bucket),
            Err(error) => Err(error),
        };
        if published.is_err()
            && let Err(error) = self.objects.abort_upload(key, &upload_id).await
        {
            tracing::warn!(
                key, %error,
                "runner cache: cannot abort the unfinished upload; nothing is under {key}, and the bucket's lifecycle \
                 rule removes the parts within a day"
            );
        }
        published
    }

    async fn stream(
        &self,
        key: &str,
        upload_id: &str,
        body: &mut dyn Download,
        package: &Package,
        stop_at: Instant,
    ) -> Result<(Vec<UploadedPart>, u64), CopyError> {
        let mut whole = Sha256::new();
        let mut buffer = BytesMut::with_capacity(PART_BYTES);
        let mut parts = Vec::new();
        let mut bytes = 0u64;
        loop {
            let chunk = match tokio::time::timeout_at(stop_at, body.chunk()).await {
                Err(_) => return Err(CopyError::OutOfTime),
                Ok(chunk) => chunk.map_err(CopyError::Download)?,
            };
            let Some(chunk) = chunk else { break };
            whole.update(&chunk);
            bytes += chunk.len() as u64;
            buffer.extend_from_slice(&chunk);
            while buffer.len() >= PART_BYTES {
                let part = buffer.split_to(PART_BYTES).freeze();
                parts.push(self.upload(key, upload_id, parts.len(), part, stop_at).await?);
            }
        }
        if bytes == 0 {
            return Err(CopyError::Empty);
        }
        let actual = hex::encode(whole.finalize());
        if actual != package.sha256 {
            return Err(CopyError::Checksum {
                expected: package.sha256.clone(),
                actual,
            });
        }
        if !buffer.is_empty() {
            parts.push(
                self.upload(key, upload_id, parts.len(), buffer.freeze(), stop_at)
                    .await?,
            );
        }
        Ok((parts, bytes))
    }

    async fn upload(
        &self,
        key: &str,
        upload_id: &str,
        index: usize,
        part: Bytes,
        stop_at: Instant,
    ) -> Result<UploadedPart, CopyError> {
        let number = index as i32 + 1;
        match tokio::time::timeout_at(stop_at, self.objects.upload_part(key, upload_id, number, part)).await {
            Err(_) => Err(CopyError::OutOfTime),
            Ok(uploaded) => uploaded.map_err(CopyError::Bucket),
        }
    }
}

/// A part's SHA-256 as S3 takes it (base64 of the digest).
pub fn part_sha256(part: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(part))
}

/// The real bucket.
pub struct S3Objects {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Objects {
    pub fn new(sdk: &aws_config::SdkConfig, bucket: &str) -> Self {
        // An endpoint override (moto, a local S3) serves buckets by path, not by host name.
        let path_style = std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
            || sdk.endpoint_url().is_some();
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(path_style)
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.to_string(),
        }
    }
}

#[async_trait]
impl Objects for S3Objects {
    async fn exists(&self, key: &str) -> Result<bool, String> {
        // Without s3:ListBucket, S3 answers a missing key with 403, not 404; the role has it.
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(error) => Err(describe(&error)),
        }
    }

    async fn start_upload(&self, key: &str) -> Result<String, String> {
        let started = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/gzip")
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|error| describe(&error))?;
        started
            .upload_id
            .ok_or_else(|| "CreateMultipartUpload answered no upload id".to_string())
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, part: Bytes) -> Result<UploadedPart, String> {
        let sha256 = part_sha256(&part);
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .checksum_sha256(&sha256)
            .body(aws_sdk_s3::primitives::ByteStream::from(part))
            .send()
            .await
            .map_err(|error| describe(&error))?;
        Ok(UploadedPart {
            number,
            etag: uploaded.e_tag.unwrap_or_default(),
            sha256,
        })
    }

    async fn finish_upload(&self, key: &str, upload_id: &str, parts: &[UploadedPart]) -> Result<(), String> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|part| {
                        CompletedPart::builder()
                            .part_number(part.number)
                            .e_tag(&part.etag)
                            .checksum_sha256(&part.sha256)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map(drop)
            .map_err(|error| describe(&error))
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<(), String> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(drop)
            .map_err(|error| describe(&error))
    }
}

/// Downloads over HTTPS with the platform's root certificates, following up to five redirects
/// (GitHub's release downloads redirect to its object storage), never from HTTPS down to HTTP.
/// The client (and the root certificates it reads) is built at the first download, not at the
/// cold start: most runs find the release already copied.
#[derive(Default)]
pub struct HttpDownloads {
    client: std::sync::OnceLock<Result<HttpClient, String>>,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<Bytes>,
>;

const MAX_REDIRECTS: usize = 5;

impl HttpDownloads {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self) -> Result<&HttpClient, String> {
        self.client
            .get_or_init(|| {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(Duration::from_secs(10)));
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_native_roots()
                    .map_err(|error| format!("cannot load the root certificates: {error}"))?
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

type BoxedBody = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

struct HttpDownload(BoxedBody);

#[async_trait]
impl Download for HttpDownload {
    async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        use http_body_util::BodyExt;
        loop {
            match self.0.frame().await {
                None => return Ok(None),
                Some(Err(error)) => return Err(format!("the download broke off: {error}")),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Downloads for HttpDownloads {
    async fn open(&self, url: &str) -> Result<Box<dyn Download>, String> {
        use http_body_util::BodyExt;
        let mut uri: http::Uri = url.parse().map_err(|error| format!("`{url}` is not a URL: {error}"))?;
        for _ in 0..=MAX_REDIRECTS {
            let request = http::Request::get(uri.clone())
                .header(http::header::USER_AGENT, "sophons")
                .body(http_body_util::Empty::new())
                .map_err(|error| error.to_string())?;
            let response = self
                .client()?
                .request(request)
                .await
                .map_err(|error| format!("{uri}: {}", describe_chain(&error)))?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .ok_or_else(|| format!("{uri} answered {status} without a Location"))?;
                let next: http::Uri = location
                    .parse()
                    .map_err(|error| format!("{uri} redirects to `{location}`: {error}"))?;
                if uri.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
                    return Err(format!("{uri} redirects from https to `{location}`; refused"));
                }
                uri = next;
                continue;
            }
            if !status.is_success() {
                return Err(format!("{uri} answered {status}"));
            }
            let body = response.into_body().map_err(|error| error.into()).boxed();
            return Ok(Box::new(HttpDownload(body)));
        }
        Err(format!("{url}: more than {MAX_REDIRECTS} redirects"))
    }
}

fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// The in-memory bucket. It refuses a part under 5 MiB that is not the last, and a completion
/// whose parts' checksums do not match, as S3 does.
#[derive(Default)]
pub struct FakeObjects {
    state: Mutex<FakeBucket>,
}

#[derive(Default)]
struct FakeBucket {
    objects: BTreeMap<String, Vec<u8>>,
    uploads: BTreeMap<String, (String, BTreeMap<i32, Bytes>)>,
    next_upload: u64,
    fail_part: Option<i32>,
}

impl FakeObjects {
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.state.lock().unwrap().objects.get(key).cloned()
    }

    pub fn put(&self, key: &str, content: &[u8]) {
        self.state.lock().unwrap().objects.insert(key.into(), content.to_vec());
    }

    /// Uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        self.state.lock().unwrap().uploads.len()
    }

    /// The part with this number is refused (a 5xx S3 gives up on).
    pub fn fail_part(&self, number: i32) {
        self.state.lock().unwrap().fail_part = Some(number);
    }
}

#[async_trait]
impl Objects for FakeObjects {
    async fn exists(&self, key: &str) -> Result<bool, String> {
        Ok(self.state.lock().unwrap().objects.contains_key(key))
    }

    async fn start_upload(&self, key: &str) -> Result<String, String> {
        let mut state = self.state.lock().unwrap();
        state.next_upload += 1;
        let id = format!("upload-{}", state.next_upload);
        state.uploads.insert(id.clone(), (key.into(), BTreeMap::new()));
        Ok(id)
    }

    async fn upload_part(&self, key: &str, upload_id: &str, number: i32, part: Bytes) -> Result<UploadedPart, String> {
        let mut state = self.state.lock().unwrap();
        if state.fail_part == Some(number) {
            return Err("InternalError: We encountered an internal error. Please try again.".into());
        }
        let (upload_key, parts) = state.uploads.get_mut(upload_id).ok_or("NoSuchUpload")?;
        if upload_key != key {
            return Err("NoSuchUpload: key differs".into());
        }
        let sha256 = part_sha256(&part);
        parts.insert(number, part);
        Ok(UploadedPart {
            number,
            etag: format!("\"etag-{number}\""),
            sha256,
        })
    }

    async fn finish_upload(&self, key: &str, upload_id: &str, parts: &[UploadedPart]) -> Result<(), String> {
        let mut state = self.state.lock().unwrap();
        let (upload_key, stored) = state.uploads.get(upload_id).ok_or("NoSuchUpload")?;
        if upload_key != key || parts.len() != stored.len() || parts.is_empty() {
            return Err("InvalidPart: the parts listed are not the parts uploaded".into());
        }
        let mut content = Vec::new();
        for (index, part) in parts.iter().enumerate() {
            let data = stored.get(&part.number).ok_or("InvalidPart")?;
            if part.number != index as i32 + 1 || part_sha256(data) != part.sha256 {
                return Err("InvalidPart: a part's number or checksum does not match".into());
            }
            if index + 1 < parts.len() && data.len() < MIN_PART_BYTES {
                return Err("EntityTooSmall: Your proposed upload is smaller than the minimum allowed size".into());
            }
            content.extend_from_slice(data);
        }
        state.uploads.remove(upload_id);
        state.objects.insert(key.into(), content);
        Ok(())
    }

    async fn abort_upload(&self, _key: &str, upload_id: &str) -> Result<(), String> {
        self.state.lock().unwrap().uploads.remove(upload_id);
        Ok(())
    }
}

/// In-memory downloads: a body per URL, served in 1 MiB chunks, optionally cut off after some
/// bytes (a connection that breaks) or stalled (a server that stops sending).
#[derive(Default)]
pub struct FakeDownloads {
    bodies: Mutex<BTreeMap<String, FakeBody>>,
    opened: Mutex<Vec<String>>,
}

#[derive(Clone, Default)]
struct FakeBody {
    content: Bytes,
    cut_after: Option<usize>,
    stall_after: Option<usize>,
    never_answers: bool,
}

impl FakeDownloads {
    pub fn serve(&self, url: &str, content: Vec<u8>) {
        self.bodies.lock().unwrap().insert(
            url.into(),
            FakeBody {
                content: content.into(),
                ..FakeBody::default()
            },
        );
    }

    /// The connection breaks after `bytes`.
    pub fn cut_after(&self, url: &str, bytes: usize) {
        if let Some(body) = self.bodies.lock().unwrap().get_mut(url) {
            body.cut_after = Some(bytes);
        }
    }

    /// The server stops sending after `bytes`, without closing.
    pub fn stall_after(&self, url: &str, bytes: usize) {
        if let Some(body) = self.bodies.lock().unwrap().get_mut(url) {
            body.stall_after = Some(bytes);
        }
    }

    /// The server takes the connection and never answers.
    pub fn never_answer(&self, url: &str) {
        if let Some(body) = self.bodies.lock().unwrap().get_mut(url) {
            body.never_answers = true;
        }
    }

    pub fn opened(&self) -> Vec<String> {
        self.opened.lock().unwrap().clone()
    }
}

struct FakeDownload {
    body: FakeBody,
    sent: usize,
}

#[async_trait]
impl Download for FakeDownload {
    async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        const CHUNK: usize = 1024 * 1024;
        if self.body.cut_after.is_some_and(|cut| self.sent >= cut) {
            return Err("connection reset by peer".into());
        }
        if self.body.stall_after.is_some_and(|stall| self.sent >= stall) {
            std::future::pending::<()>().await;
        }
        if self.sent >= self.body.content.len() {
            return Ok(None);
        }
        let end = [self.body.cut_after, self.body.stall_after]
            .into_iter()
            .flatten()
            .fold((self.sent + CHUNK).min(self.body.content.len()), usize::min);
        let chunk = self.body.content.slice(self.sent..end);
        self.sent = end;
        Ok(Some(chunk))
    }
}

#[async_trait]
impl Downloads for FakeDownloads {
    async fn open(&self, url: &str) -> Result<Box<dyn Download>, String> {
        self.opened.lock().unwrap().push(url.into());
        let body = self
            .bodies
            .lock()
            .unwrap()
            .get(url)
            .cloned()
            .ok_or_else(|| format!("{url} answered 404 Not Found"))?;
        if body.never_answers {
            std::future::pending::<()>().await;
        }
        Ok(Box::new(FakeDownload { body, sent: 0 }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FakeGithub;
    use crate::github::RunnerDownload;

    const VERSION: &str = "2.330.0";

    fn content(architecture: &str, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ architecture.len() as u8)
            .collect()
    }

    fn url(architecture: &str) -> String {
        format!(
            "https://github.com/actions/runner/releases/download/v{VERSION}/actions-runner-linux-{architecture}-{VERSION}.tar.gz"
        )
    }

    struct World {
        cache: RunnerCache,
        objects: Arc<FakeObjects>,
        downloads: Arc<FakeDownloads>,
        github: FakeGithub,
    }

    /// GitHub lists both packages of VERSION with their real checksums; each is `len` bytes.
    fn world(len: usize, architectures: &[Architecture]) -> World {
        let mut config = crate::config::tests::sample();
        config.runner_cache = Some(RunnerCacheConfig {
            bucket: "scripts".into(),
            prefix: default_prefix(),
            architectures: architectures.iter().copied().collect(),
        });
        let objects = Arc::new(FakeObjects::default());
        let downloads = Arc::new(FakeDownloads::default());
        let github = FakeGithub::default();
        let mut listed = Vec::new();
        for architecture in ["x64", "arm64"] {
            let body = content(architecture, len);
            listed.push(RunnerDownload {
                os: "linux".into(),
                architecture: architecture.into(),
                download_url: url(architecture),
                filename: format!("actions-runner-linux-{architecture}-{VERSION}.tar.gz"),
                sha256_checksum: Some(hex::encode(Sha256::digest(&body))),
            });
            downloads.serve(&url(architecture), body);
        }
        github.set_runner_downloads(listed);
        let cache = RunnerCache::new(&config, objects.clone(), downloads.clone()).unwrap();
        World {
            cache,
            objects,
            downloads,
            github,
        }
    }

    fn key(architecture: &str) -> String {
        format!("actions-runner/actions-runner-linux-{architecture}-{VERSION}.tar.gz")
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(120)
    }

    #[tokio::test]
    async fn the_current_release_missing_from_the_bucket_is_copied_in_parts_and_published_verified() {
        let len = 2 * PART_BYTES + 123_457;
        let w = world(len, &[Architecture::X64, Architecture::Arm64]);
        let report = w.cache.refresh(&w.github, soon()).await;
        assert_eq!(report.copied, vec![key("x64"), key("arm64")]);
        assert_eq!(report.version.as_deref(), Some(VERSION));
        assert!(report.failed.is_empty(), "{report:?}");
        assert_eq!(w.objects.object(&key("x64")).unwrap(), content("x64", len));
        assert_eq!(w.objects.object(&key("arm64")).unwrap(), content("arm64", len));
        assert_eq!(w.objects.open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_release_already_in_the_bucket_is_not_downloaded_again() {
        let w = world(1000, &[Architecture::X64]);
        w.objects.put(&key("x64"), b"copied by an earlier run");
        let report = w.cache.refresh(&w.github, soon()).await;
        assert_eq!(report.present, vec![key("x64")]);
        assert!(report.copied.is_empty());
        assert!(w.downloads.opened().is_empty());
    }

    #[tokio::test]
    async fn only_the_architectures_the_templates_use_are_copied() {
        let w = world(1000, &[Architecture::Arm64]);
        let report = w.cache.refresh(&w.github, soon()).await;
        assert_eq!(report.copied, vec![key("arm64")]);
        assert_eq!(w.downloads.opened(), vec![url("arm64")]);
        assert!(w.objects.object(&key("x64")).is_none());
    }

    #[tokio::test]
    async fn a_download_that_does_not_match_githubs_checksum_is_never_published() {
        let w = world(PART_BYTES + 10, &[Architecture::X64, Architecture::Arm64]);
        let mut tampered = content("x64", PART_BYTES + 10);
        tampered[PART_BYTES + 3] ^= 1;
        w.downloads.serve(&url("x64"), tampered);
        let report = w.cache.refresh(&w.github, soon()).await;
        assert!(report.failed[&key("x64")].contains("SHA-256"), "{report:?}");
        assert!(w.objects.object(&key("x64")).is_none());
        assert_eq!(w.objects.open_uploads(), 0, "the upload is aborted");
        assert_eq!(
            report.copied,
            vec![key("arm64")],
            "the other architecture is still copied"
        );
    }

    #[tokio::test]
    async fn an_interrupted_download_leaves_nothing_under_the_final_key() {
        let w = world(3 * PART_BYTES, &[Architecture::X64]);
        w.downloads.cut_after(&url("x64"), PART_BYTES + PART_BYTES / 2);
        let report = w.cache.refresh(&w.github, soon()).await;
        assert!(report.failed[&key("x64")].contains("connection reset"), "{report:?}");
        assert!(w.objects.object(&key("x64")).is_none());
        assert_eq!(w.objects.open_uploads(), 0);
        // The next run copies it whole.
        w.downloads.serve(&url("x64"), content("x64", 3 * PART_BYTES));
        let report = w.cache.refresh(&w.github, soon()).await;
        assert_eq!(report.copied, vec![key("x64")]);
        assert_eq!(w.objects.object(&key("x64")).unwrap(), content("x64", 3 * PART_BYTES));
    }

    #[tokio::test]
    async fn a_part_the_bucket_refuses_aborts_the_copy() {
        let w = world(2 * PART_BYTES + 1, &[Architecture::X64]);
        w.objects.fail_part(2);
        let report = w.cache.refresh(&w.github, soon()).await;
        assert!(report.failed[&key("x64")].contains("InternalError"), "{report:?}");
        assert!(w.objects.object(&key("x64")).is_none());
        assert_eq!(w.objects.open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_copy_that_runs_out_of_time_is_abandoned_not_published() {
        let w = world(2 * PART_BYTES, &[Architecture::X64]);
        w.downloads.stall_after(&url("x64"), PART_BYTES + 1);
        // Half a second before the deadline's margin.
        let deadline = Instant::now() + DEADLINE_MARGIN + Duration::from_millis(500);
        let report = w.cache.refresh(&w.github, deadline).await;
        assert!(report.failed[&key("x64")].contains("out of time"), "{report:?}");
        assert!(w.objects.object(&key("x64")).is_none());
        assert_eq!(w.objects.open_uploads(), 0);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_does_not_hold_move_jobs_to_its_timeout() {
        let w = world(1000, &[Architecture::X64]);
        w.downloads.never_answer(&url("x64"));
        let deadline = Instant::now() + DEADLINE_MARGIN + Duration::from_millis(300);
        let report = w.cache.refresh(&w.github, deadline).await;
        assert!(report.failed[&key("x64")].contains("out of time"), "{report:?}");
        assert!(Instant::now() < deadline, "stopped before the deadline's margin");
        assert_eq!(w.objects.open_uploads(), 0, "no upload was started");
    }

    #[tokio::test]
    async fn without_a_known_release_nothing_is_downloaded() {
        let w = world(1000, &[Architecture::X64]);
        w.github.set_runner_downloads(Vec::new());
        let report = w.cache.refresh(&w.github, soon()).await;
        assert_eq!(report.version, None);
        assert!(w.downloads.opened().is_empty());
    }

    #[test]
    fn the_cache_keys_are_the_names_the_runner_script_looks_for() {
        let config: RunnerCacheConfig = serde_json::from_str(r#"{"bucket": "b"}"#).unwrap();
        assert_eq!(config.architectures, default_architectures());
        let release = RunnerRelease::pinned(&crate::release::RunnerPin {
            version: "2.331.0".into(),
            sha256_x64: "a".repeat(64),
            sha256_arm64: "b".repeat(64),
        })
        .unwrap();
        // scripts/runner.sh: "${SOPHONS_RUNNER_CACHE_URI%/}/actions-runner-linux-${RUNNER_ARCH}-${RUNNER_VERSION}.tar.gz"
        assert_eq!(
            config.key(Architecture::Arm64, &release),
            "actions-runner/actions-runner-linux-arm64-2.331.0.tar.gz"
        );
    }
}
