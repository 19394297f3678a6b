//! moto server on loopback. `make test` starts one and exports `MOTO_ENDPOINT`; without it, the
//! first test of a process starts its own from the repository's `.venv`, and it stops when the
//! process ends (it watches its stdin, which closes with the test process).
//!
//! The SDK is pointed not at moto but at an `AwsGuard` in front of it (one per process), which
//! refuses what AWS refuses and moto accepts: an 8 KB value in SSM's Standard tier, a 300-character
//! tag. Tools that must reach moto itself (its `/moto-api/` resets) use `raw_endpoint`.

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::aws_guard::AwsGuard;

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY: &str = "testing";

static RAW_ENDPOINT: OnceLock<String> = OnceLock::new();
static GUARD: OnceLock<AwsGuard> = OnceLock::new();

/// The endpoint to give the SDK: the guard in front of moto (both started on first use).
pub fn endpoint() -> &'static str {
    guard().endpoint()
}

/// The guard in front of moto, to inject faults such as SSM's throttling.
pub fn guard() -> &'static AwsGuard {
    GUARD.get_or_init(|| AwsGuard::start(raw_endpoint()))
}

/// moto itself, for what must not pass the guard: `/moto-api/` resets, moto-only tools.
pub fn raw_endpoint() -> &'static str {
    RAW_ENDPOINT.get_or_init(|| match std::env::var("MOTO_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => start(),
    })
}

fn start() -> String {
    let moto = crate::workspace_root().join(".venv/bin/moto_server");
    assert!(
        moto.exists(),
        "{} is missing: run `make setup` (or `make test`, which does) to install moto",
        moto.display()
    );
    let port = crate::free_port();
    let script = format!(
        "'{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid",
        moto.display()
    );
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start moto server");
    // Keep the pipe open for the life of the process; it closes when the process ends.
    std::mem::forget(child);
    let endpoint = format!("http://127.0.0.1:{port}");
    wait_until_up(port);
    endpoint
}

fn wait_until_up(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Write;
            let _ = stream.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n");
            let mut buf = [0u8; 12];
            if stream.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto server did not answer on port {port} within 30 s");
}

/// The environment a process needs to talk to moto (through the guard) with the standard SDK
/// variables.
pub fn env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint().to_string()),
        ("AWS_REGION", REGION.into()),
        ("AWS_DEFAULT_REGION", REGION.into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", ACCESS_KEY.into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// An SDK configuration pointed at moto, through the guard.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let credentials = aws_credential_types::Credentials::new(ACCESS_KEY, ACCESS_KEY, None, None, "moto");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new(REGION))
        .credentials_provider(credentials)
        .load()
        .await
}

/// A name no other test in this moto server has used.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The launch-slot table as Terraform makes it (terraform/slots.tf).
pub async fn slots_table(sdk: &aws_config::SdkConfig, name: &str) -> String {
    use aws_sdk_dynamodb::types::ScalarAttributeType;
    table(sdk, name, "slot", ScalarAttributeType::N).await
}

/// The waiting list's table as Terraform makes it (terraform/waiting.tf).
pub async fn waiting_table(sdk: &aws_config::SdkConfig, name: &str) -> String {
    use aws_sdk_dynamodb::types::ScalarAttributeType;
    table(sdk, name, "place", ScalarAttributeType::S).await
}

/// The spot interruptions table as Terraform makes it (terraform/interruptions.tf).
pub async fn interruptions_table(sdk: &aws_config::SdkConfig, name: &str) -> String {
    use aws_sdk_dynamodb::types::ScalarAttributeType;
    keyed_table(sdk, name, "pk", ("sk", ScalarAttributeType::S)).await
}

/// A table keyed by `template` and a sort key.
async fn table(
    sdk: &aws_config::SdkConfig,
    name: &str,
    sort_key: &str,
    sort_type: aws_sdk_dynamodb::types::ScalarAttributeType,
) -> String {
    keyed_table(sdk, name, "template", (sort_key, sort_type)).await
}

/// A table keyed by a string partition key and a sort key.
async fn keyed_table(
    sdk: &aws_config::SdkConfig,
    name: &str,
    partition_key: &str,
    (sort_key, sort_type): (&str, aws_sdk_dynamodb::types::ScalarAttributeType),
) -> String {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    let attribute = |name: &str, kind| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .unwrap()
    };
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    aws_sdk_dynamodb::Client::new(sdk)
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(partition_key, ScalarAttributeType::S))
        .attribute_definitions(attribute(sort_key, sort_type))
        .key_schema(key(partition_key, KeyType::Hash))
        .key_schema(key(sort_key, KeyType::Range))
        .send()
        .await
        .unwrap_or_else(|error| panic!("create the table {name} in moto: {error:?}"));
    name.to_string()
}
