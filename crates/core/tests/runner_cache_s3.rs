//! The runner cache against moto's S3 (through the guard) and a local HTTP server that serves a
//! release package the way GitHub does: a redirect to object storage, then the bytes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};
use sophons_core::fakes::FakeGithub;
use sophons_core::github::RunnerDownload;
use sophons_core::runner_cache::{Download, Downloads, HttpDownloads, PART_BYTES, RunnerCache, S3Objects};
use testkit::moto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const VERSION: &str = "2.331.0";

/// A package of `len` bytes, different for each architecture.
fn package(architecture: &str, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ architecture.len() as u8)
        .collect()
}

/// Serves `/releases/<name>` as a 302 to `/objects/<name>`, which sends the package whole, and
/// `/broken/<name>`, which announces the whole package but hangs up after `cut` bytes.
async fn release_server(len: usize, cut: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let architecture = if path.contains("arm64") { "arm64" } else { "x64" };
                let body = package(architecture, len);
                let head = |status: &str, extra: &str, length: usize| {
                    format!("HTTP/1.1 {status}\r\ncontent-length: {length}\r\nconnection: close\r\n{extra}\r\n")
                };
                if let Some(name) = path.strip_prefix("/releases/") {
                    let location = format!("location: http://{address}/objects/{name}\r\n");
                    let _ = socket.write_all(head("302 Found", &location, 0).as_bytes()).await;
                } else if path.starts_with("/objects/") {
                    let _ = socket.write_all(head("200 OK", "", body.len()).as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                } else if path.starts_with("/broken/") {
                    let _ = socket.write_all(head("200 OK", "", body.len()).as_bytes()).await;
                    let _ = socket.write_all(&body[..cut]).await;
                } else {
                    let _ = socket.write_all(head("404 Not Found", "", 0).as_bytes()).await;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{address}")
}

fn downloads(base: &str, route: &str, len: usize) -> Vec<RunnerDownload> {
    ["x64", "arm64"]
        .iter()
        .map(|architecture| {
            let filename = format!("actions-runner-linux-{architecture}-{VERSION}.tar.gz");
            RunnerDownload {
                os: "linux".into(),
                architecture: architecture.to_string(),
                download_url: format!("https://{}/{route}/{filename}", base.trim_start_matches("http://")),
                filename,
                sha256_checksum: Some(hex::encode(Sha256::digest(package(architecture, len)))),
            }
        })
        .collect()
}

async fn bucket(sdk: &aws_config::SdkConfig) -> (Client, String) {
    let client = Client::from_conf(aws_sdk_s3::config::Builder::from(sdk).force_path_style(true).build());
    let name = moto::unique("scripts").to_lowercase();
    client.create_bucket().bucket(&name).send().await.unwrap();
    (client, name)
}

fn config(bucket: &str) -> sophons_core::Config {
    let mut value = common::config_json("https://sqs.us-east-1.amazonaws.com/123456789012/jobs");
    value["runner_cache"] = serde_json::json!({ "bucket": bucket, "architectures": ["x64", "arm64"] });
    sophons_core::Config::parse(&value.to_string()).unwrap()
}

/// The real downloader, sent to the local server over http: GitHub's URLs are https (the release
/// logic refuses any other), the test server speaks plain http.
struct PlainHttp(HttpDownloads);

#[async_trait::async_trait]
impl Downloads for PlainHttp {
    async fn open(&self, url: &str) -> Result<Box<dyn Download>, String> {
        self.0.open(&url.replacen("https://", "http://", 1)).await
    }
}

fn cache(sdk: &aws_config::SdkConfig, bucket: &str) -> RunnerCache {
    RunnerCache::new(
        &config(bucket),
        Arc::new(S3Objects::new(sdk, bucket)),
        Arc::new(PlainHttp(HttpDownloads::new())),
    )
    .unwrap()
}

async fn open_uploads(client: &Client, bucket: &str) -> usize {
    let listed = client.list_multipart_uploads().bucket(bucket).send().await.unwrap();
    listed.uploads.unwrap_or_default().len()
}

#[tokio::test]
async fn the_runner_release_is_copied_into_s3_through_a_redirect_in_verified_parts() {
    let sdk = moto::sdk_config().await;
    let (client, bucket) = bucket(&sdk).await;
    let len = PART_BYTES + PART_BYTES / 2 + 7;
    let base = release_server(len, 0).await;
    let github = FakeGithub::default();
    github.set_runner_downloads(downloads(&base, "releases", len));
    let report = cache(&sdk, &bucket)
        .refresh(&github, Instant::now() + Duration::from_secs(120))
        .await;
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.copied.len(), 2, "{report:?}");
    for architecture in ["x64", "arm64"] {
        let key = format!("actions-runner/actions-runner-linux-{architecture}-{VERSION}.tar.gz");
        let object = client.get_object().bucket(&bucket).key(&key).send().await.unwrap();
        let bytes = object.body.collect().await.unwrap().into_bytes();
        assert_eq!(bytes.len(), len);
        assert!(bytes == package(architecture, len), "{key} differs from the package");
    }
    assert_eq!(open_uploads(&client, &bucket).await, 0);
}

#[tokio::test]
async fn a_copy_cut_off_midway_leaves_nothing_under_the_final_key_in_s3() {
    let sdk = moto::sdk_config().await;
    let (client, bucket) = bucket(&sdk).await;
    let len = 2 * PART_BYTES + 1000;
    let base = release_server(len, PART_BYTES + 4096).await;
    let github = FakeGithub::default();
    github.set_runner_downloads(downloads(&base, "broken", len));
    let report = cache(&sdk, &bucket)
        .refresh(&github, Instant::now() + Duration::from_secs(120))
        .await;
    assert!(report.copied.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 2, "{report:?}");
    let listed = client.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.key_count, Some(0), "{:?}", listed.contents);
    assert_eq!(open_uploads(&client, &bucket).await, 0, "the uploads are aborted");
}

#[tokio::test]
async fn a_missing_package_in_the_bucket_is_reported_as_missing_not_as_an_error() {
    let sdk = moto::sdk_config().await;
    let (_, bucket) = bucket(&sdk).await;
    use sophons_core::runner_cache::Objects;
    let objects = S3Objects::new(&sdk, &bucket);
    assert_eq!(objects.exists("actions-runner/none.tar.gz").await, Ok(false));
    let error = S3Objects::new(&sdk, "no-such-bucket-sophons")
        .start_upload("actions-runner/x.tar.gz")
        .await
        .unwrap_err();
    assert!(error.contains("NoSuchBucket"), "{error}");
}
