//! Test support shared by every crate's tests, the demo and the benchmarks: moto server behind a
//! guard that refuses what AWS refuses, a Lambda Runtime API endpoint to run the real binaries as
//! Lambda runs them, API Gateway v2 events, a fake GitHub, and GitHub's documented webhook payloads.

pub mod apigw;
pub mod aws_guard;
pub mod github;
pub mod moto;
pub mod runtime_api;
pub mod stack;

use std::path::PathBuf;

/// The workspace root (where the Makefile is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// One of GitHub's documented example deliveries, e.g. `workflow_job.queued`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/github-webhooks")
        .join(format!("{name}.payload.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixtures are JSON")
}

/// A free TCP port on loopback (the OS picks; a race with another process is possible but rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
