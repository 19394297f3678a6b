//! The webhook's hot path on a realistic 27 KB `workflow_job` delivery: everything the Lambda does
//! per request (verify + parse + match + build the message) against the HMAC alone over the same
//! bytes. The target is a ratio of at most 2; `scripts/bench.sh` reads both medians from
//! `target/criterion` and prints it.
//!
//! `json_skim` (serde_json walking the body into `IgnoredAny`) is the floor of any parse that
//! reads the whole body; it shows where the time beyond the HMAC goes.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lambda_http::http::{HeaderMap, HeaderValue, Method};
use serde_json::{Value, json};
use sophons_core::Config;
use sophons_core::job::{JobMessage, MESSAGE_VERSION, now_rfc3339};
use sophons_core::queue::{Queue, QueueError, Received};
use sophons_core::templates;
use sophons_core::webhook::{
    DELIVERY_HEADER, Decision, EVENT_HEADER, SIGNATURE_HEADER, Webhook, sign, verify_signature,
};

const SECRET: &[u8] = b"It's a Secret to Everybody";
/// GitHub's deliveries of busy workflows land here: the repository and sender objects with their
/// URL templates, and a job with its steps.
const TARGET_BYTES: std::ops::Range<usize> = 26_000..28_000;

const QUEUED: &str = include_str!("../../testkit/fixtures/github-webhooks/workflow_job.queued.payload.json");
const WITH_ORGANIZATION: &str = include_str!(
    "../../testkit/fixtures/github-webhooks/workflow_job.completed.success.with-organization.payload.json"
);

/// SQS as far as the webhook can tell: it takes the message and says nothing. The bench measures
/// our code, not a network call.
struct NoQueue;

#[async_trait]
impl Queue for NoQueue {
    async fn send(&self, _queue_url: &str, body: &str, _delivery_id: &str) -> Result<String, QueueError> {
        black_box(body);
        Ok(String::new())
    }
    async fn hide(&self, _queue_url: &str, _receipt_handle: &str, _seconds: u32) -> Result<(), QueueError> {
        Ok(())
    }
    async fn receive(&self, _queue_url: &str, _max: u32, _wait_seconds: u32) -> Result<Vec<Received>, QueueError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _queue_url: &str, _receipt_handle: &str) -> Result<(), QueueError> {
        Ok(())
    }
}

/// GitHub's documented `queued` delivery made one of ours, with the fields a real one carries
/// (organization, sender, enterprise-sized steps list) until it weighs 26–28 KB.
fn payload() -> Vec<u8> {
    let mut payload: Value = serde_json::from_str(QUEUED).unwrap();
    let with_organization: Value = serde_json::from_str(WITH_ORGANIZATION).unwrap();
    payload["workflow_job"]["labels"] = json!(["self-hosted", "linux", "x64"]);
    payload["repository"]["full_name"] = json!("my-org/app");
    payload["repository"]["name"] = json!("app");
    payload["repository"]["owner"]["login"] = json!("my-org");
    payload["repository"]["private"] = json!(true);
    for key in ["organization", "sender", "installation"] {
        if let Some(value) = with_organization.get(key) {
            payload[key] = value.clone();
        }
    }
    let actions = [
        "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683",
        "actions/cache@5a3ec84eff668545956fd18022155c47e93e2684",
        "actions/setup-node@49933ea5288caeca8642d1e84afbd3f7d6820020",
        "docker/setup-buildx-action@b5ca514318bd6ebac0fb2aedd5d36ec1b5c232a2",
        "actions/upload-artifact@ea165f8d65b6e75b540449e92b4886f43607fa02",
    ];
    let mut steps = Vec::new();
    let mut number = 0;
    while serde_json::to_vec(&payload).unwrap().len() < TARGET_BYTES.start {
        number += 1;
        let name = match number % 7 {
            0 => format!("Run {}", actions[number % actions.len()]),
            1 => format!("Run cargo test --workspace --locked -p crate-{number} -- --test-threads 4"),
            2 => format!("Post Run {}", actions[(number + 2) % actions.len()]),
            3 => "Set up job".to_string(),
            4 => format!("Run make -C services/service-{number} lint test package"),
            5 => format!("Run ./scripts/integration.sh --shard {number} --of 64 --retry 2"),
            _ => "Complete job".to_string(),
        };
        steps.push(json!({
            "name": name, "status": "queued", "conclusion": null, "number": number,
            "started_at": null, "completed_at": null,
        }));
        payload["workflow_job"]["steps"] = json!(steps);
    }
    let body = serde_json::to_vec(&payload).unwrap();
    assert!(
        TARGET_BYTES.contains(&body.len()),
        "payload is {} bytes, outside {TARGET_BYTES:?}",
        body.len()
    );
    body
}

fn config() -> Config {
    Config::parse(
        &json!({
            "deployment": "sophons",
            "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/sophons-jobs",
            "dlq_url": "https://sqs.us-east-1.amazonaws.com/123456789012/sophons-dlq",
            "webhook_secret_param": "/sophons/github/webhook-secret",
            "slots_table": "sophons-slots",
            "github": { "owner": "my-org", "scope": "org", "token_param": "/sophons/github/token" },
            "runner_script": { "bucket": "sophons-scripts", "key": "runner.sh" },
            "templates": {
                "cpu": { "labels": ["linux", "x64"], "launch_template": "sophons-cpu",
                         "instance_types": ["c7i.large", "m7i.large"], "subnet_ids": ["subnet-0abc"], "max_runners": 50 },
                "gpu": { "labels": ["linux", "x64", "gpu"], "launch_template": "sophons-gpu",
                         "instance_types": ["g5.xlarge"], "subnet_ids": ["subnet-0abc"], "max_runners": 4 },
                "arm": { "labels": ["linux", "arm64"], "launch_template": "sophons-arm",
                         "instance_types": ["c7g.large"], "subnet_ids": ["subnet-0abc"], "max_runners": 20 }
            }
        })
        .to_string(),
    )
    .unwrap()
}

/// The message the webhook builds for this delivery, as it builds it (owned copies of the fields,
/// the time of receipt).
fn message() -> JobMessage {
    JobMessage {
        version: MESSAGE_VERSION,
        delivery_id: "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
        job_id: 289_782_451,
        run_id: 2_202_229_078,
        run_attempt: 1,
        repository: "my-org/app".into(),
        owner: "my-org".into(),
        name: "app".into(),
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
        template: "cpu".into(),
        workflow_name: "CodeQL".into(),
        job_name: "update".into(),
        job_url: "https://github.com/octo-org/octo-repo/runs/1291536064".into(),
        created_at: "2021-09-13T02:21:13Z".into(),
        received_at: now_rfc3339(),
        relaunches: 0,
        runner_failures: 0,
        trip: 0,
    }
}

fn hot_path(c: &mut Criterion) {
    let body = payload();
    let signature = sign(SECRET, &body);
    let mut headers = HeaderMap::new();
    headers.insert(SIGNATURE_HEADER, HeaderValue::from_str(&signature).unwrap());
    headers.insert(EVENT_HEADER, HeaderValue::from_static("workflow_job"));
    headers.insert(
        DELIVERY_HEADER,
        HeaderValue::from_static("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    );
    let webhook = Webhook::new(Arc::new(config()), SECRET, Arc::new(NoQueue));
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let answer = runtime.block_on(webhook.answer(&Method::POST, "/webhook", &headers, &body));
    assert_eq!(answer.decision, Decision::Enqueued, "{}", answer.reason);

    let mut group = c.benchmark_group("webhook");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("hmac_sha256", |b| {
        b.iter(|| verify_signature(SECRET, black_box(&body), Some(signature.as_bytes())).unwrap())
    });
    group.bench_function("json_skim", |b| {
        b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).unwrap())
    });
    // The pieces after the parse, so that the ratio's remainder can be placed.
    let config = config();
    let labels = ["self-hosted", "linux", "x64"];
    group.bench_function("match", |b| {
        b.iter(|| {
            templates::select(&config.templates, black_box(&labels))
                .unwrap()
                .0
                .len()
        })
    });
    group.bench_function("build_message", |b| b.iter(|| black_box(message()).encode()));
    group.bench_function("verify_parse_match_build", |b| {
        b.iter(|| runtime.block_on(webhook.answer(&Method::POST, "/webhook", &headers, black_box(&body))))
    });
    group.finish();
    println!("webhook payload: {} bytes", body.len());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(60).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = hot_path
}
criterion_main!(benches);
