//! create-runner's own cost per job: decode → already served? → still wanted? → room? → launch →
//! register → start, over the in-memory fakes, so that only our code is timed (no network). The
//! runtime is single-threaded and no fake waits, so wall time here is CPU time on one core. Log
//! lines are rendered as JSON into a sink, as the Lambda renders them to stdout.
//! Target: at most 5 ms per job.

// The integration tests' `Fakes`: the bench builds its world as they do.
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use sophons_core::Config;
use sophons_core::create::{CreateRunner, Outcome};
use sophons_core::job::{JobMessage, MESSAGE_VERSION};
use tokio::time::Instant;

fn config() -> Arc<Config> {
    let document = json!({
        "deployment": "sophons",
        "queue_url": "https://sqs.us-east-1.amazonaws.com/123456789012/sophons-jobs",
        "dlq_url": "https://sqs.us-east-1.amazonaws.com/123456789012/sophons-dlq",
        "webhook_secret_param": "/sophons/github/webhook-secret",
        "slots_table": "sophons-slots",
        "github": { "owner": "my-org", "scope": "org", "token_param": "/sophons/github/token" },
        "runner_script": { "bucket": "sophons-scripts", "key": "runner.sh" },
        "templates": {
            "cpu": { "labels": ["linux", "x64"], "launch_template": "sophons-cpu",
                     "instance_types": ["c7i.large", "m7i.large"], "subnet_ids": ["subnet-0abc", "subnet-0def"],
                     "max_runners": 1000, "on_demand_fallback": true }
        }
    });
    Arc::new(Config::parse(&document.to_string()).unwrap())
}

fn message(job_id: u64) -> String {
    JobMessage {
        version: MESSAGE_VERSION,
        delivery_id: format!("72d3162e-cc78-11e3-81ab-{job_id:012}"),
        job_id,
        run_id: 2_202_229_078,
        run_attempt: 1,
        repository: "my-org/app".into(),
        owner: "my-org".into(),
        name: "app".into(),
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
        template: "cpu".into(),
        workflow_name: "CI".into(),
        job_name: "build (ubuntu, stable)".into(),
        job_url: format!("https://github.com/my-org/app/actions/runs/2202229078/job/{job_id}"),
        created_at: "2026-11-28T06:00:00Z".into(),
        received_at: "2026-11-28T06:00:01.000Z".into(),
        relaunches: 0,
        runner_failures: 0,
        trip: 0,
    }
    .encode()
}

/// A fresh deployment over the fakes: every job is the first of its kind.
fn world() -> CreateRunner {
    CreateRunner::new(config(), common::Fakes::new().ports())
}

fn per_job(c: &mut Criterion) {
    // The Lambda's log format, written nowhere: its cost is part of ours.
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .with_writer(std::io::sink)
            .finish(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let far = || Instant::now() + Duration::from_secs(900);
    let check = runtime.block_on(world().serve(&message(1), 1, far()));
    assert!(matches!(check, Outcome::Served { .. }), "{check:?}");

    let mut group = c.benchmark_group("create_runner");
    group.throughput(Throughput::Elements(1));
    let mut job_id = 289_782_451u64;
    group.bench_function("serve_one_job", |b| {
        b.iter_batched(
            || {
                job_id += 1;
                (world(), message(job_id))
            },
            |(create, body)| runtime.block_on(async { create.serve(&body, 1, far()).await }),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(40).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = per_job
}
criterion_main!(benches);
