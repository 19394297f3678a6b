//! Shared by the core integration tests: a config, payloads and signed API Gateway events.
#![allow(dead_code)]

use lambda_http::Request;
use serde_json::{Value, json};
use sophons_core::Config;
use sophons_core::job::{JobMessage, MESSAGE_VERSION};
use sophons_core::webhook::sign;

pub const SECRET: &str = "It's a Secret to Everybody";

pub fn config_json(queue_url: &str) -> Value {
    json!({
        "deployment": "sophons",
        "queue_url": queue_url,
        "dlq_url": format!("{queue_url}-dlq"),
        "webhook_secret_param": "/sophons/github/webhook-secret",
        "slots_table": "sophons-slots",
        "max_body_bytes": 65536,
        "github": { "api_url": "https://api.github.com", "owner": "my-org", "scope": "org",
                    "runner_group_id": 1, "token_param": "/sophons/github/token" },
        "repositories": [],
        "allow_public_repositories": false,
        "instance_arn_prefix": "arn:aws:ec2:us-east-1:123456789012:instance/",
        "runner_script": { "bucket": "sophons-scripts", "key": "runner.sh" },
        "templates": {
            "template_cpu": { "labels": ["linux", "x64"], "launch_template": "sophons-template_cpu",
                              "instance_types": ["c7i.large", "m7i.large"], "subnet_ids": ["subnet-0abc"],
                              "max_runners": 20, "on_demand_fallback": true },
            "template_gpu": { "labels": ["linux", "x64", "gpu"], "launch_template": "sophons-template_gpu",
                              "instance_types": ["g5.xlarge"], "subnet_ids": ["subnet-0abc"],
                              "max_runners": 2 }
        }
    })
}

pub fn config(queue_url: &str) -> Config {
    Config::parse(&config_json(queue_url).to_string()).unwrap()
}

/// GitHub's documented `queued` delivery, made one of ours: owner `my-org`, private, our labels.
pub fn queued_payload(labels: &[&str]) -> Value {
    let mut payload = testkit::fixture("workflow_job.queued");
    payload["workflow_job"]["labels"] = json!(labels);
    payload["repository"]["full_name"] = json!("my-org/app");
    payload["repository"]["name"] = json!("app");
    payload["repository"]["owner"]["login"] = json!("my-org");
    payload["repository"]["private"] = json!(true);
    payload
}

/// A job of `my-org/app` (run 7, attempt 1) for `template`, never relaunched, with no times: a
/// test sets what it is about on top, `JobMessage { job_name, ..job_message(1, "template_cpu") }`.
pub fn job_message(job_id: u64, template: &str) -> JobMessage {
    JobMessage {
        version: MESSAGE_VERSION,
        delivery_id: format!("d-{job_id}"),
        job_id,
        run_id: 7,
        run_attempt: 1,
        repository: "my-org/app".into(),
        owner: "my-org".into(),
        name: "app".into(),
        labels: vec!["self-hosted".into(), template.into()],
        template: template.into(),
        workflow_name: "CI".into(),
        job_name: "build".into(),
        job_url: String::new(),
        created_at: String::new(),
        received_at: String::new(),
        relaunches: 0,
        runner_failures: 0,
        trip: 0,
    }
}

pub fn signed(event: &str, delivery_id: &str, payload: &[u8]) -> Value {
    testkit::apigw::delivery(event, delivery_id, &sign(SECRET.as_bytes(), payload), payload)
}

pub fn request(event: &Value) -> Request {
    lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway v2 event")
}

pub fn body_of(response: &lambda_http::Response<lambda_http::Body>) -> Value {
    match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text).unwrap(),
        other => panic!("expected a JSON text body, got {other:?}"),
    }
}

/// What a deployment stores in the fakes: parameter names, and each launch-slot claim as
/// `/sophons/slots/<template>/<slot>` (where the claims were parameters before), sorted.
pub fn stored(parameters: &sophons_core::fakes::FakeParameters, slots: &sophons_core::slots::FakeSlots) -> Vec<String> {
    let mut names = parameters.names();
    names.extend(
        slots
            .all()
            .into_iter()
            .map(|found| format!("/sophons/slots/{}/{}", found.template, found.slot)),
    );
    names.sort();
    names
}

/// The metrics the flows emitted for one job, read as CloudWatch reads them (after
/// `sophons_core::metrics::record()`; tests run in parallel, so each picks its own job).
pub fn metrics_of_job(job_id: u64) -> Vec<sophons_core::metrics::Datum> {
    let documents: Vec<Value> = sophons_core::metrics::recorded()
        .into_iter()
        .filter(|document| document["job_id"] == job_id)
        .collect();
    sophons_core::metrics::read(&documents).expect("EMF as CloudWatch reads it")
}

/// splitmix64: tiny, seeded, the same sequence on every machine.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// Every port's in-memory fake, kept for a test to steer and read; `ports` wires them as a
/// Lambda wires the real adapters. The waiting list and the interruptions store are off unless
/// asked for, as when their tables are not configured.
pub struct Fakes {
    pub fleet: std::sync::Arc<sophons_core::fakes::FakeFleet>,
    pub github: std::sync::Arc<sophons_core::fakes::FakeGithub>,
    pub parameters: std::sync::Arc<sophons_core::fakes::FakeParameters>,
    pub slots: std::sync::Arc<sophons_core::slots::FakeSlots>,
    pub commands: std::sync::Arc<sophons_core::fakes::FakeCommands>,
    pub queue: std::sync::Arc<sophons_core::fakes::FakeQueue>,
    pub waiting: Option<std::sync::Arc<sophons_core::waiting::FakeWaiting>>,
    pub interruptions: Option<std::sync::Arc<sophons_core::interruptions::FakeInterruptions>>,
}

impl Fakes {
    pub fn new() -> Self {
        Self {
            fleet: Default::default(),
            github: std::sync::Arc::new(sophons_core::fakes::FakeGithub::new()),
            parameters: Default::default(),
            slots: Default::default(),
            commands: Default::default(),
            queue: Default::default(),
            waiting: None,
            interruptions: None,
        }
    }

    pub fn with_waiting(mut self) -> Self {
        self.waiting = Some(Default::default());
        self
    }

    pub fn with_interruptions(mut self) -> Self {
        self.interruptions = Some(Default::default());
        self
    }

    pub fn ports(&self) -> sophons_core::ports::Ports {
        sophons_core::ports::Ports {
            fleet: self.fleet.clone(),
            github: self.github.clone(),
            parameters: self.parameters.clone(),
            slots: self.slots.clone(),
            commands: self.commands.clone(),
            queue: self.queue.clone(),
            waiting: self.waiting.clone().map(|waiting| waiting as _),
            interruptions: self.interruptions.clone().map(|store| store as _),
        }
    }
}
