//! A 256-job matrix burst through create-runner over the fakes, counting every call per API, and
//! what each service's documented limit makes of those counts: which limit bounds the launch
//! rate, which must be GitHub's or EC2's, never a write of our own. The counts are exact (the fakes answer at once); the limits are the services' defaults.
//!
//! `cargo test -p sophons-core --test burst -- --nocapture` prints the table (docs/performance.md).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sophons_core::config::Config;
use sophons_core::create::{Backoff, CreateRunner, Outcome};
use sophons_core::fakes::{FakeFleet, FakeGithub, FakeParameters};
use sophons_core::fleet::{Fleet, FleetError, Instance, InstanceQuery, LaunchRequest, Launched};
use sophons_core::github::{Github, GithubError, JitConfig, JobStatus, Runner, RunnerScope};
use sophons_core::job::{JobMessage, now_rfc3339};
use sophons_core::parameters::{Listed, Parameters, ParametersError};
use sophons_core::ports::Ports;
use sophons_core::slots::{ClaimAnswer, ClaimedSlot, FakeSlots, SlotClaim, Slots, SlotsError};
use tokio::time::Instant;

const BURST: u64 = 256;

#[derive(Default)]
struct Calls(Mutex<BTreeMap<&'static str, u64>>);

impl Calls {
    fn count(&self, api: &'static str) {
        *self.0.lock().unwrap().entry(api).or_default() += 1;
    }

    fn get(&self, api: &str) -> u64 {
        self.0.lock().unwrap().get(api).copied().unwrap_or(0)
    }
}

/// A fake that counts the calls made to it, per API.
struct Counted<T> {
    inner: Arc<T>,
    calls: Arc<Calls>,
}

impl<T> Counted<T> {
    fn over(inner: &Arc<T>, calls: &Arc<Calls>) -> Arc<Self> {
        Arc::new(Self {
            inner: inner.clone(),
            calls: calls.clone(),
        })
    }
}

#[async_trait]
impl Parameters for Counted<FakeParameters> {
    async fn get(&self, name: &str) -> Result<String, ParametersError> {
        self.calls.count("ssm:GetParameter");
        self.inner.get(name).await
    }
    async fn put_secure(&self, name: &str, value: &str, tags: &[(String, String)]) -> Result<(), ParametersError> {
        self.calls.count("ssm:PutParameter");
        if !tags.is_empty() {
            self.calls.count("ssm:AddTagsToResource");
        }
        self.inner.put_secure(name, value, tags).await
    }
    async fn delete(&self, name: &str) -> Result<(), ParametersError> {
        self.calls.count("ssm:DeleteParameter");
        self.inner.delete(name).await
    }
    async fn list(&self, path: &str) -> Result<Vec<Listed>, ParametersError> {
        // GetParametersByPath answers 10 a page.
        let listed = self.inner.list(path).await?;
        for _ in 0..listed.len().div_ceil(10).max(1) {
            self.calls.count("ssm:GetParametersByPath");
        }
        Ok(listed)
    }
}

#[async_trait]
impl Slots for Counted<FakeSlots> {
    async fn claim(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<ClaimAnswer, SlotsError> {
        self.calls.count("dynamodb:PutItem");
        self.inner.claim(template, slot, claim).await
    }
    async fn get(&self, template: &str, slot: u32) -> Result<Option<SlotClaim>, SlotsError> {
        self.calls.count("dynamodb:GetItem");
        self.inner.get(template, slot).await
    }
    async fn release(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<bool, SlotsError> {
        self.calls.count("dynamodb:DeleteItem");
        self.inner.release(template, slot, claim).await
    }
    async fn list(&self, template: Option<&str>) -> Result<Vec<ClaimedSlot>, SlotsError> {
        // Query and Scan answer up to 1 MB a page: thousands of claims.
        self.calls.count(if template.is_some() {
            "dynamodb:Query"
        } else {
            "dynamodb:Scan"
        });
        self.inner.list(template).await
    }
}

#[async_trait]
impl Fleet for Counted<FakeFleet> {
    async fn launch(&self, request: &LaunchRequest) -> Result<Launched, FleetError> {
        self.calls.count("ec2:CreateFleet");
        self.inner.launch(request).await
    }
    async fn instances(&self, deployment: &str, query: &InstanceQuery) -> Result<Vec<Instance>, FleetError> {
        // DescribeInstances answers up to 1,000 a page (moto: 100).
        let found = self.inner.instances(deployment, query).await?;
        for _ in 0..found.len().div_ceil(1000).max(1) {
            self.calls.count("ec2:DescribeInstances");
        }
        Ok(found)
    }
    async fn tag(&self, instance_id: &str, tags: &[(String, String)]) -> Result<(), FleetError> {
        self.calls.count("ec2:CreateTags");
        self.inner.tag(instance_id, tags).await
    }
    async fn terminate(&self, instance_id: &str) -> Result<(), FleetError> {
        self.calls.count("ec2:TerminateInstances");
        self.inner.terminate(instance_id).await
    }
    async fn cancel_spot_request(&self, request_id: &str) -> Result<(), FleetError> {
        self.inner.cancel_spot_request(request_id).await
    }
}

#[async_trait]
impl Github for Counted<FakeGithub> {
    async fn job_status(&self, repository: &str, job_id: u64) -> Result<JobStatus, GithubError> {
        self.calls.count("github:GET job");
        self.inner.job_status(repository, job_id).await
    }
    async fn register_runner(
        &self,
        scope: &RunnerScope,
        name: &str,
        labels: &[String],
        runner_group_id: u64,
    ) -> Result<JitConfig, GithubError> {
        self.calls.count("github:generate-jitconfig");
        self.inner.register_runner(scope, name, labels, runner_group_id).await
    }
    async fn runners(&self, scope: &RunnerScope) -> Result<Vec<Runner>, GithubError> {
        self.calls.count("github:GET runners");
        Github::runners(self.inner.as_ref(), scope).await
    }
    async fn remove_runner(&self, scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError> {
        self.calls.count("github:DELETE runner");
        self.inner.remove_runner(scope, runner_id).await
    }
    async fn runner_downloads(
        &self,
        scope: &RunnerScope,
    ) -> Result<Vec<sophons_core::github::RunnerDownload>, GithubError> {
        self.calls.count("github:GET runner downloads");
        self.inner.runner_downloads(scope).await
    }
}

/// A documented limit: `burst` calls at once, then `per_second`.
struct Limit {
    api: &'static str,
    burst: f64,
    per_second: f64,
    source: &'static str,
}

const LIMITS: &[Limit] = &[
    Limit {
        api: "ssm:PutParameter",
        burst: 3.0,
        per_second: 3.0,
        source: "Parameter Store's default write throughput, about 3/s per account (AWS support; DESIGN.md)",
    },
    Limit {
        api: "dynamodb:PutItem",
        burst: 0.0,
        per_second: 1000.0,
        source: "1,000 write units a second per partition key (a template's claims share one)",
    },
    Limit {
        api: "github:generate-jitconfig",
        burst: 0.0,
        per_second: 166.0 / 60.0,
        source: "about 166 JIT registrations a minute per App or token, taken as a steady rate (REFERENCE.md)",
    },
    Limit {
        api: "ec2:CreateFleet",
        burst: 1000.0,
        per_second: 2.0,
        source: "instance launches: a 1,000-token resource bucket refilled at 2/s (EC2 API throttling, RunInstances)",
    },
];

#[tokio::test]
async fn a_matrix_burst_is_bounded_by_githubs_registration_rate_not_by_our_own_writes() {
    let mut document = common::config_json("https://sqs.us-east-1.amazonaws.com/123456789012/jobs");
    document["templates"]["template_cpu"]["max_runners"] = serde_json::json!(BURST);
    let config = Arc::new(Config::parse(&document.to_string()).unwrap());
    let calls = Arc::new(Calls::default());
    let fakes = common::Fakes::new();
    let ports = Ports {
        fleet: Counted::over(&fakes.fleet, &calls),
        github: Counted::over(&fakes.github, &calls),
        parameters: Counted::over(&fakes.parameters, &calls),
        slots: Counted::over(&fakes.slots, &calls),
        ..fakes.ports()
    };
    let create = CreateRunner::new(config, ports).with_backoff(Backoff {
        first: Duration::ZERO,
        max: Duration::ZERO,
    });
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut served = 0;
    for job_id in 1..=BURST {
        let message = JobMessage {
            job_name: format!("matrix ({job_id})"),
            created_at: now_rfc3339(),
            received_at: now_rfc3339(),
            ..common::job_message(job_id, "template_cpu")
        };
        if matches!(
            create.serve(&message.encode(), 1, deadline).await,
            Outcome::Served { .. }
        ) {
            served += 1;
        }
    }
    assert_eq!(served, BURST, "every job of the burst launched");

    println!("a {BURST}-job matrix burst through create-runner: calls per launched job");
    let all = calls.0.lock().unwrap().clone();
    for (api, n) in &all {
        println!("  {api:<28} {:>6.2}", *n as f64 / BURST as f64);
    }
    println!("time to launch the burst under each documented limit, from those counts:");
    let mut bound = ("", 0.0f64);
    for limit in LIMITS {
        let needed = calls.get(limit.api) as f64;
        let seconds = ((needed - limit.burst).max(0.0) / limit.per_second).max(0.0);
        println!(
            "  {:<28} {needed:>5} calls -> {seconds:>6.1} s  ({})",
            limit.api, limit.source
        );
        if seconds > bound.1 {
            bound = (limit.api, seconds);
        }
    }
    println!(
        "  bound: {} at {:.1} s, {:.2} launches/s",
        bound.0,
        bound.1,
        BURST as f64 / bound.1.max(f64::EPSILON)
    );
    // The accounting this figure rests on: one Parameter Store write per launch (the JIT config;
    // the slot claim is a DynamoDB item). A change to it changes docs/performance.md.
    assert_eq!(calls.get("ssm:PutParameter"), BURST);
    assert_eq!(calls.get("dynamodb:PutItem"), BURST);
    assert_eq!(calls.get("github:generate-jitconfig"), BURST);
    assert_eq!(calls.get("ec2:CreateFleet"), BURST);
    assert_eq!(
        bound.0, "github:generate-jitconfig",
        "the bound moved: update docs/performance.md"
    );
}
