//! The whole of sophons on one machine, without an AWS account.
//!
//! - moto server (started by `scripts/with-moto.sh`, `MOTO_ENDPOINT`) and a fake GitHub on loopback;
//! - the AWS side provisioned by applying the project's own Terraform to moto (`crates/demo/terraform`);
//! - the four real binaries, each behind its own Lambda Runtime API endpoint;
//! - glue standing in for AWS's managed plumbing, each piece named for what it replaces: API Gateway
//!   (deliveries → autoscaler), the SQS event source mapping (jobs queue → create-runner, deleting
//!   what succeeded, leaving batch item failures to their visibility timeout), the runner on the box
//!   (moto runs no command: the glue reads and deletes the JIT parameter as the runner script does,
//!   takes the job on the fake GitHub and finishes it), EventBridge (the SSM status event →
//!   stop-runner) and the schedules (→ move-jobs and the sweep).
//!
//! Everything the report says about what was left behind is read from moto and the fake GitHub.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use sophons_core::interruptions::Interruptions;
use sophons_core::logging::step;
use sophons_core::webhook::sign;
use testkit::github::GithubServer;
use testkit::moto;
use testkit::runtime_api::LambdaProcess;
use testkit::stack::{scheduled_event, ssm_status_event};

use crate::event_source_mapping::{EventSourceMapping, Watched};
use crate::tally::{Sources, States, Tally, instances, messages_in, queue_depth};

const SECRET: &str = "demo-webhook-secret";
const TOKEN: &str = "ghp_demo_token_not_a_secret";
const REPOSITORY: &str = "demo-org/app";
const BINARIES: [&str; 4] = ["autoscaler", "create-runner", "stop-runner", "move-jobs"];
/// How long the scenario may take before the demo gives up: this much at least, and
/// `SCENARIO_SECONDS_PER_JOB` more for every job (moto slows as instances pile up).
const SCENARIO_LIMIT: Duration = Duration::from_secs(600);
const SCENARIO_SECONDS_PER_JOB: u64 = 5;
/// How often the serving loop says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(60);

type Error = Box<dyn std::error::Error + Send + Sync>;

mod event_source_mapping;
pub mod tally;

pub struct Options {
    /// Matching jobs to send (half `cpu`, a quarter each `gpu` and `large`... see `scenario`).
    pub jobs: usize,
    pub binaries: PathBuf,
    pub plugin_dir: PathBuf,
    /// Print the timelines and the tally as it goes.
    pub print: bool,
    /// Where to write the four binaries' logs (`<binary>.log`), whether the demo finishes or not.
    pub logs: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            jobs: 6,
            binaries: testkit::workspace_root().join("target/debug"),
            plugin_dir: PathBuf::from(std::env::var("TF_PLUGIN_DIR").unwrap_or_else(|_| "/opt/tf-plugins".into())),
            print: false,
            logs: None,
        }
    }
}

/// One delivery the demo sent and what the webhook answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub kind: &'static str,
    pub job_id: u64,
    pub status: u16,
    pub decision: String,
}

#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub job_id: u64,
    pub template: String,
    pub instance_id: String,
    pub instance_type: String,
    pub capacity: String,
    /// Stage name → when.
    pub stages: BTreeMap<&'static str, SystemTime>,
    /// How many times a freed slot woke it from the waiting list.
    pub wakes: u32,
}

impl Timeline {
    /// From one stage to another, when it has both.
    pub fn between(&self, from: &str, to: &str) -> Option<Duration> {
        let (from, to) = (self.stages.get(from)?, self.stages.get(to)?);
        to.duration_since(*from).ok()
    }

    /// Whether it waited in the waiting list.
    pub fn waited(&self) -> bool {
        self.stages.contains_key("parked")
    }
}

/// Queue time (enqueued → launched) over some jobs, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueTime {
    pub jobs: usize,
    pub p50: u128,
    pub p90: u128,
    pub max: u128,
}

impl QueueTime {
    pub fn of<'a>(timelines: impl IntoIterator<Item = &'a Timeline>) -> Self {
        let mut ms: Vec<u128> = timelines
            .into_iter()
            .filter_map(|t| t.between("enqueued", "launched"))
            .map(|d| d.as_millis())
            .collect();
        ms.sort_unstable();
        let at = |p: usize| {
            ms.get((ms.len() * p).div_ceil(100).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        };
        Self {
            jobs: ms.len(),
            p50: at(50),
            p90: at(90),
            max: ms.last().copied().unwrap_or(0),
        }
    }
}

impl std::fmt::Display for QueueTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} job(s): p50 {} ms, p90 {} ms, max {} ms",
            self.jobs, self.p50, self.p90, self.max
        )
    }
}

const STAGES: [&str; 8] = [
    "received",
    "enqueued",
    "launched",
    "registered",
    "command_sent",
    "command_ended",
    "instance_terminated",
    "runner_removed",
];

#[derive(Debug, Clone, Default)]
pub struct DlqStory {
    pub job_id: u64,
    /// The job was read in the DLQ (so its launch template came back and move-jobs ran).
    pub reached_dlq: bool,
    /// The most receives the event source mapping saw of it by then.
    pub receives_before_dlq: u32,
    pub moved_back: u64,
    pub served_after: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub deployment: String,
    pub terraform_apply: Duration,
    pub deliveries: Vec<Delivery>,
    pub timelines: Vec<Timeline>,
    pub tally: Tally,
    pub peak_live: BTreeMap<String, usize>,
    pub max_runners: BTreeMap<String, usize>,
    pub dlq: DlqStory,
    pub sweep: Value,
    /// GitHub's `in_progress` deliveries (a runner took its job), by the webhook's answer, and
    /// the jobs whose runner the interruptions table then named.
    pub started: BTreeMap<String, usize>,
    pub started_kept: BTreeSet<u64>,
    /// Where the serving loop's time went, by function invoked or moto call made.
    pub spent: BTreeMap<&'static str, Spent>,
    /// The metrics the Lambdas wrote (EMF lines in their output), read as CloudWatch reads them.
    pub metrics: Vec<sophons_core::metrics::Datum>,
    pub elapsed: Duration,
}

/// Calls of one kind and their time, summed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    pub calls: u32,
    pub total: Duration,
}

/// The time spent, by kind of call, as the demo's loop and the event source mapping go.
#[derive(Clone, Default)]
struct Ledger(Arc<Mutex<BTreeMap<&'static str, Spent>>>);

impl Ledger {
    fn charge(&self, what: &'static str, since: Instant) {
        let mut spent = self.0.lock().unwrap();
        let entry = spent.entry(what).or_default();
        entry.calls += 1;
        entry.total += since.elapsed();
    }

    fn get(&self, what: &str) -> Spent {
        self.0.lock().unwrap().get(what).copied().unwrap_or_default()
    }

    fn snapshot(&self) -> BTreeMap<&'static str, Spent> {
        self.0.lock().unwrap().clone()
    }
}

impl Report {
    /// Everything read, nothing left running, nothing left behind.
    pub fn clean(&self) -> bool {
        self.tally.clean()
    }
}

struct Outputs {
    config_parameter: String,
    jobs_queue_url: String,
    dlq_url: String,
    launch_templates: BTreeMap<String, String>,
    /// Each binary's function timeout as Terraform deployed it: the deadline each invocation gets.
    timeouts: BTreeMap<&'static str, Duration>,
}

/// The four binaries, each behind its own Runtime API endpoint.
struct Functions {
    processes: BTreeMap<&'static str, LambdaProcess>,
    timeouts: BTreeMap<&'static str, Duration>,
    /// Each binary's output, readable while the event source mapping holds create-runner.
    output: BTreeMap<&'static str, Arc<Mutex<Vec<String>>>>,
}

pub async fn run(options: &Options) -> Result<Report, Error> {
    let started = Instant::now();
    let say = |text: String| {
        if options.print {
            println!("{text}");
        }
    };
    for binary in BINARIES {
        if !options.binaries.join(binary).exists() {
            return Err(format!(
                "{} is missing: run `cargo build --workspace` (make demo does)",
                options.binaries.join(binary).display()
            )
            .into());
        }
    }
    let moto_endpoint = moto::endpoint().to_string();
    let github = GithubServer::start().await;
    github.set_token(TOKEN);
    github.set_default_job_status(Some("queued"));
    let deployment = format!("demo{}", std::process::id() % 100_000);
    say(format!(
        "== sophons demo: deployment `{deployment}`; moto at {moto_endpoint}; fake GitHub at {}",
        github.url()
    ));

    let work = std::env::temp_dir().join(format!("sophons-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let applied = Instant::now();
    let outputs = terraform_apply(options, &work, &moto_endpoint, &github.url(), &deployment)?;
    let terraform_apply = applied.elapsed();
    say(format!(
        "== terraform apply of terraform/ to moto: {:.1} s (config document {})",
        terraform_apply.as_secs_f64(),
        outputs.config_parameter
    ));

    let sdk = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let mut env = moto::env();
    env.push(("SOPHONS_CONFIG_PARAM", outputs.config_parameter.clone()));
    env.push(("RUST_LOG", "info".into()));
    let mut lambdas = Functions {
        processes: BTreeMap::new(),
        timeouts: outputs.timeouts.clone(),
        output: BTreeMap::new(),
    };
    for binary in BINARIES {
        let process = LambdaProcess::spawn(&options.binaries.join(binary), binary, &env).await;
        lambdas.output.insert(binary, process.output.clone());
        lambdas.processes.insert(binary, process);
    }
    let ledger = Ledger::default();
    let document: Value = serde_json::from_str(
        ssm.get_parameter()
            .name(&outputs.config_parameter)
            .send()
            .await?
            .parameter
            .and_then(|p| p.value)
            .as_deref()
            .unwrap_or("{}"),
    )?;
    // The interruptions table Terraform made and named in the document: the webhook's record of
    // which job each runner took is read back from it.
    let interruptions = sophons_core::interruptions::DynamoInterruptions::new(
        &sdk,
        document["interruptions_table"]
            .as_str()
            .ok_or("the config document names no interruptions_table")?,
    );
    let max_runners: BTreeMap<String, usize> = document["templates"]
        .as_object()
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.clone(), v["max_runners"].as_u64().unwrap_or(0) as usize))
                .collect()
        })
        .unwrap_or_default();

    // EC2 refusing the launch, for the DLQ story: the `large` template's launch template is removed
    // (moto cannot produce InsufficientInstanceCapacity; the hand-back path is the same).
    let large_template = outputs.launch_templates.get("large").cloned().unwrap_or_default();
    ec2.delete_launch_template()
        .launch_template_name(&large_template)
        .send()
        .await?;

    // API Gateway: the deliveries.
    let mut report = Report {
        deployment: deployment.clone(),
        terraform_apply,
        max_runners,
        ..Default::default()
    };
    let mut timelines: BTreeMap<u64, Timeline> = BTreeMap::new();
    let scenario = scenario(options.jobs);
    let dlq_job = scenario
        .iter()
        .find(|d| d.template == Some("large"))
        .map(|d| d.job_id)
        .unwrap_or_default();
    report.dlq.job_id = dlq_job;
    say("== deliveries (API Gateway → autoscaler)".into());
    for delivery in &scenario {
        let body = payload(delivery.job_id, &delivery.labels).to_string().into_bytes();
        let secret = if delivery.kind == "forged" {
            "not-the-secret"
        } else {
            SECRET
        };
        let event = testkit::apigw::delivery(
            "workflow_job",
            &delivery.delivery_id,
            &sign(secret.as_bytes(), &body),
            &body,
        );
        let sent_at = SystemTime::now();
        let answer = invoke(&mut lambdas, &ledger, "autoscaler", event).await?;
        let status = answer["statusCode"].as_u64().unwrap_or(0) as u16;
        let decision: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("{}")).unwrap_or_default();
        let decision = decision["decision"].as_str().unwrap_or_default().to_string();
        say(format!(
            "   {:<12} job {:<6} labels {:<32} → {status} {decision}",
            delivery.kind,
            delivery.job_id,
            format!("{:?}", delivery.labels)
        ));
        if decision == "enqueued" && delivery.kind != "redelivered" {
            let timeline = timelines.entry(delivery.job_id).or_default();
            timeline.job_id = delivery.job_id;
            timeline.template = delivery.template.unwrap_or_default().to_string();
            timeline.stages.insert("received", sent_at);
            timeline.stages.insert("enqueued", SystemTime::now());
        }
        report.deliveries.push(Delivery {
            kind: delivery.kind,
            job_id: delivery.job_id,
            status,
            decision,
        });
    }
    let expected: BTreeSet<u64> = timelines.keys().copied().collect();

    // The event source mapping, the boxes and EventBridge, until every job has run.
    // A box whose job finished: (instance, command, job).
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String, u64)>();
    let mut started_boxes: BTreeSet<String> = BTreeSet::new();
    let mut finished_jobs: BTreeSet<u64> = BTreeSet::new();
    let mut restored = false;
    let limit = SCENARIO_LIMIT.max(Duration::from_secs(SCENARIO_SECONDS_PER_JOB * expected.len() as u64));
    let watched = Watched {
        job_id: dlq_job,
        receives: Arc::default(),
    };
    let create_runner = lambdas
        .processes
        .remove("create-runner")
        .ok_or("create-runner is not running")?;
    let esm = EventSourceMapping::start(
        create_runner,
        lambdas.timeouts["create-runner"],
        sqs.clone(),
        outputs.jobs_queue_url.clone(),
        &watched,
        ledger.clone(),
    );
    let serving = Instant::now();
    let deadline = serving + limit;
    let mut progress_at = serving + PROGRESS_EVERY;
    say("== serving (SQS event source mapping → create-runner; box; EventBridge → stop-runner)".into());
    loop {
        if Instant::now() > progress_at {
            progress_at += PROGRESS_EVERY;
            save_logs(options, &lambdas)?;
            let created = ledger.get("create-runner");
            say(format!(
                "   {:>5} s: {} of {} jobs finished, {} runners started; create-runner {} batches, {:.1} s each",
                serving.elapsed().as_secs(),
                finished_jobs.len(),
                expected.len(),
                started_boxes.len(),
                created.calls,
                created.total.as_secs_f64() / f64::from(created.calls.max(1)),
            ));
        }
        if Instant::now() > deadline {
            save_logs(options, &lambdas)?;
            let waiting: Vec<_> = expected.difference(&finished_jobs).collect();
            let depth = |url| queue_depth(&sqs, url);
            let (queue, dlq) = (depth(&outputs.jobs_queue_url).await, depth(&outputs.dlq_url).await);
            return Err(format!(
                "{} of {} jobs not finished within {} s (jobs queue {}, DLQ {}, runners started {}): {waiting:?}",
                waiting.len(),
                expected.len(),
                limit.as_secs(),
                queue.map_or_else(|why| why, |n| n.to_string()),
                dlq.map_or_else(|why| why, |n| n.to_string()),
                started_boxes.len(),
            )
            .into());
        }
        if esm.failed() {
            save_logs(options, &lambdas)?;
            return Err(match esm.stop().await {
                Err(error) => error,
                Ok(_) => "the event source mapping stopped by itself".into(),
            });
        }
        let mut busy = false;
        // One listing of the live instances (every page) serves the peak and the boxes.
        let since = Instant::now();
        let live = instances(&ec2, &deployment, States::Live).await?;
        ledger.charge("DescribeInstances (live, every page)", since);
        track_peak(&live, &mut report.peak_live);
        // The boxes: every started runner reads and deletes its parameter, takes its job, finishes.
        for (instance_id, command_id, job_id) in runner_commands(&live) {
            if started_boxes.insert(instance_id.clone()) {
                busy = true;
                let since = Instant::now();
                let parameter = format!("/{deployment}/jit/{instance_id}");
                // As the runner script: read the JIT config through the instance role, then delete it.
                ssm.get_parameter()
                    .name(&parameter)
                    .with_decryption(true)
                    .send()
                    .await?;
                ssm.delete_parameter().name(&parameter).send().await?;
                ledger.charge("the boxes (GetParameter, DeleteParameter)", since);
                // `./run.sh --jitconfig` brings the runner online and GitHub hands it the job.
                let runner_name = format!("{deployment}-{instance_id}");
                if let Some(runner) = github.runners().into_iter().find(|r| r.name == runner_name) {
                    github.set_runner_status(runner.id, "online", true);
                }
                github.set_job_status(REPOSITORY, job_id, "in_progress");
                // GitHub's in_progress delivery: the webhook keeps which job this runner took.
                let mut started = payload(job_id, &["self-hosted"]);
                started["action"] = json!("in_progress");
                started["workflow_job"]["status"] = json!("in_progress");
                started["workflow_job"]["runner_name"] = json!(runner_name);
                let body = started.to_string().into_bytes();
                let event = testkit::apigw::delivery(
                    "workflow_job",
                    &format!("started-{job_id}"),
                    &sign(SECRET.as_bytes(), &body),
                    &body,
                );
                let answer = invoke(&mut lambdas, &ledger, "autoscaler", event).await?;
                let decision: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("{}")).unwrap_or_default();
                let decision = decision["decision"].as_str().unwrap_or_default().to_string();
                *report.started.entry(decision).or_default() += 1;
                let since = Instant::now();
                let kept = interruptions.ran_on(&instance_id).await.map_err(|e| e.to_string())?;
                if kept.is_some_and(|ran| ran.job_id == job_id) {
                    report.started_kept.insert(job_id);
                }
                ledger.charge("the webhook's record (Query)", since);
                let tx = ended_tx.clone();
                let work_ms = 300 + (job_id % 7) * 100;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(work_ms)).await;
                    let _ = tx.send((instance_id, command_id, job_id));
                });
            }
        }
        // EventBridge: the SSM status change of each finished runner command → stop-runner.
        while let Ok((instance_id, command_id, job_id)) = ended_rx.try_recv() {
            busy = true;
            github.set_job_status(REPOSITORY, job_id, "completed");
            // Its job done, the runner exits and GitHub shows it idle (deleting a busy runner is
            // 422). GitHub also removes an ephemeral runner by itself; the fake leaves that to
            // stop-runner, so that the tally shows whether stop-runner does it.
            let runner_name = format!("{deployment}-{instance_id}");
            if let Some(runner) = github.runners().into_iter().find(|r| r.name == runner_name) {
                github.set_runner_status(runner.id, "offline", false);
            }
            if let Some(timeline) = timelines.get_mut(&job_id) {
                timeline.stages.insert("command_ended", SystemTime::now());
            }
            invoke(
                &mut lambdas,
                &ledger,
                "stop-runner",
                ssm_status_event(&instance_id, &command_id, "Success"),
            )
            .await?;
            finished_jobs.insert(job_id);
        }
        // The DLQ story: once the refused job sits in the DLQ, restore its launch template and let
        // the hourly schedule run move-jobs. Other DLQ arrivals (a burst that waits for room longer
        // than three retry delays) go back the same way, before or after: the schedule, compressed.
        let since = Instant::now();
        let in_dlq = queue_depth(&sqs, &outputs.dlq_url)
            .await
            .map_err(|why| format!("the DLQ: {why}"))?;
        let refused_job_in_dlq = !restored
            && in_dlq > 0
            && messages_in(&sqs, &outputs.dlq_url)
                .await
                .map_err(|why| format!("the DLQ: {why}"))?
                .iter()
                .any(|body| body.contains(&format!("\"job_id\":{dlq_job},")));
        ledger.charge("the DLQ (depth, and its messages until the refused job is seen)", since);
        if in_dlq > 0 {
            busy = true;
            if refused_job_in_dlq {
                report.dlq.reached_dlq = true;
                report.dlq.receives_before_dlq = watched.receives.load(std::sync::atomic::Ordering::Relaxed);
                say(format!(
                    "   job {dlq_job}: EC2 refused its launch 3 times; it is in the DLQ. Restoring its launch template; schedule → move-jobs"
                ));
                restore_launch_template(&ec2, &large_template).await?;
                let answer = invoke(&mut lambdas, &ledger, "move-jobs", scheduled_event("move-jobs")).await?;
                report.dlq.moved_back = answer["moved"].as_u64().unwrap_or(0);
                restored = true;
            } else {
                invoke(&mut lambdas, &ledger, "move-jobs", scheduled_event("move-jobs")).await?;
            }
        }
        if finished_jobs.is_superset(&expected) && started_boxes.len() >= expected.len() {
            break;
        }
        if !busy {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    report.dlq.served_after = finished_jobs.contains(&dlq_job);
    let create_runner = esm.stop().await?;
    lambdas.processes.insert("create-runner", create_runner);

    // The schedules: the sweep and move-jobs once more, as at the end of any quiet hour. Not while
    // jobs are served: moto runs no command and reports each one ended at once, so a sweep then
    // would take the boxes still at work for runners whose command ended (a 15-minute sweep in a
    // JOBS=1000 run ended 6 of them and sent 4 jobs back).
    report.sweep = invoke(&mut lambdas, &ledger, "stop-runner", scheduled_event("sweep")).await?;
    invoke(&mut lambdas, &ledger, "move-jobs", scheduled_event("move-jobs")).await?;

    // The timelines, from the binaries' own JSON log lines.
    for (name, output) in &lambdas.output {
        for line in output.lock().unwrap().iter() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(job_id) = entry["job_id"].as_u64() else {
                continue;
            };
            let Some(timeline) = timelines.get_mut(&job_id) else {
                continue;
            };
            let Some(at) = entry["timestamp"].as_str().and_then(parse_time) else {
                continue;
            };
            if let Some(instance_type) = entry["instance_type"].as_str() {
                timeline.instance_type = instance_type.to_string();
                timeline.capacity = entry["capacity"].as_str().unwrap_or_default().to_string();
                timeline.instance_id = entry["instance_id"].as_str().unwrap_or_default().to_string();
            }
            match (*name, entry["step"].as_str()) {
                ("create-runner", Some(step::LAUNCHED)) => {
                    timeline.stages.insert("launched", at);
                }
                ("create-runner", Some(step::REGISTERED)) => {
                    timeline.stages.insert("registered", at);
                }
                ("create-runner", Some(step::COMMAND_SENT)) => {
                    timeline.stages.insert("command_sent", at);
                }
                ("stop-runner", Some(step::INSTANCE_ENDED)) => {
                    timeline.stages.insert("instance_terminated", at);
                    timeline.stages.insert("runner_removed", at);
                }
                // The waiting list: the first park, and the last wake (a job can wait twice).
                ("create-runner", Some(step::PARKED)) => {
                    timeline.stages.entry("parked").or_insert(at);
                }
                (_, Some(step::WOKEN)) => {
                    timeline.stages.insert("woken", at);
                    timeline.wakes += 1;
                }
                _ => {}
            }
        }
    }
    report.timelines = timelines.into_values().collect();
    let slots_table = document["slots_table"].as_str().unwrap_or_default().to_string();
    let slots = sophons_core::slots::DynamoSlots::new(&sdk, &slots_table);
    let sources = Sources {
        ec2: &ec2,
        ssm: &ssm,
        slots: &slots,
        slots_table: &slots_table,
        waiting_table: document["waiting_table"].as_str().unwrap_or_default(),
        sqs: &sqs,
        github: &github,
        deployment: &deployment,
        jobs_queue_url: &outputs.jobs_queue_url,
        dlq_url: &outputs.dlq_url,
    };
    report.spent = ledger.snapshot();
    let lines: Vec<String> = lambdas
        .output
        .values()
        .flat_map(|output| output.lock().unwrap().clone())
        .collect();
    report.metrics = sophons_core::metrics::read(&sophons_core::metrics::documents(lines.iter().map(String::as_str)))
        .map_err(|error| format!("the Lambdas wrote EMF CloudWatch would refuse: {error}"))?;
    report.tally = tally::tally(&sources, scenario.iter().map(|p| p.job_id), scenario.len()).await;
    save_logs(options, &lambdas)?;
    report.elapsed = started.elapsed();
    if options.print {
        print_report(&report);
    }
    drop(lambdas);
    let _ = std::fs::remove_dir_all(&work);
    Ok(report)
}

fn save_logs(options: &Options, lambdas: &Functions) -> Result<(), Error> {
    let Some(dir) = &options.logs else {
        return Ok(());
    };
    std::fs::create_dir_all(dir)?;
    for (name, output) in &lambdas.output {
        std::fs::write(dir.join(format!("{name}.log")), output.lock().unwrap().join("\n"))?;
    }
    Ok(())
}

struct Planned {
    kind: &'static str,
    job_id: u64,
    delivery_id: String,
    labels: Vec<&'static str>,
    template: Option<&'static str>,
}

/// `jobs` matching jobs over the `cpu` and `gpu` templates, one for `large` (refused by EC2 until
/// its launch template comes back), then a non-matching job, a forged delivery and a redelivery.
fn scenario(jobs: usize) -> Vec<Planned> {
    let mut planned = Vec::new();
    for n in 0..jobs.max(1) {
        let (labels, template) = if n % 3 == 2 {
            (vec!["self-hosted", "gpu"], "gpu")
        } else {
            (vec!["self-hosted", "linux", "x64"], "cpu")
        };
        planned.push(Planned {
            kind: "matching",
            job_id: 1000 + n as u64,
            delivery_id: format!("delivery-{n}"),
            labels,
            template: Some(template),
        });
    }
    planned.push(Planned {
        kind: "matching",
        job_id: 900,
        delivery_id: "delivery-large".into(),
        labels: vec!["self-hosted", "large"],
        template: Some("large"),
    });
    planned.push(Planned {
        kind: "non-matching",
        job_id: 901,
        delivery_id: "delivery-windows".into(),
        labels: vec!["self-hosted", "windows"],
        template: None,
    });
    planned.push(Planned {
        kind: "forged",
        job_id: 902,
        delivery_id: "delivery-forged".into(),
        labels: vec!["self-hosted", "cpu"],
        template: None,
    });
    planned.push(Planned {
        kind: "redelivered",
        job_id: 1000,
        delivery_id: "delivery-0".into(),
        labels: vec!["self-hosted", "linux", "x64"],
        template: Some("cpu"),
    });
    planned
}

fn payload(job_id: u64, labels: &[&str]) -> Value {
    let mut payload = testkit::fixture("workflow_job.queued");
    payload["workflow_job"]["id"] = json!(job_id);
    payload["workflow_job"]["labels"] = json!(labels);
    payload["workflow_job"]["created_at"] = json!(sophons_core::job::now_rfc3339());
    payload["repository"]["full_name"] = json!(REPOSITORY);
    payload["repository"]["name"] = json!("app");
    payload["repository"]["owner"]["login"] = json!("demo-org");
    payload["repository"]["private"] = json!(true);
    payload
}

/// Invokes a binary with the deadline its function has in Lambda (the timeout Terraform set).
async fn invoke(lambdas: &mut Functions, ledger: &Ledger, name: &'static str, event: Value) -> Result<Value, Error> {
    let timeout = lambdas.timeouts.get(name).copied().ok_or("no such function")?;
    let lambda = lambdas.processes.get_mut(name).ok_or("no such function")?;
    let since = Instant::now();
    let answer = lambda.invoke_with_deadline(event, timeout).await;
    ledger.charge(name, since);
    answer.map_err(|error| format!("{name} failed: {error}").into())
}

fn terraform_apply(
    options: &Options,
    work: &Path,
    moto: &str,
    github: &str,
    deployment: &str,
) -> Result<Outputs, Error> {
    let zips = work.join("lambda");
    for binary in BINARIES {
        // Placeholder packages: moto stores the functions; the demo runs the real binaries itself.
        std::fs::create_dir_all(zips.join(binary))?;
        std::fs::write(zips.join(binary).join("bootstrap.zip"), EMPTY_ZIP)?;
    }
    let dir = testkit::workspace_root().join("crates/demo/terraform");
    std::fs::write(work.join("terraformrc"), "")?;
    let terraform = |args: &[&str]| -> Result<String, Error> {
        let output = std::process::Command::new("terraform")
            .current_dir(&dir)
            .args(args)
            .env("TF_DATA_DIR", work.join("tf-data"))
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("CHECKPOINT_DISABLE", "1")
            .env("TF_CLI_CONFIG_FILE", work.join("terraformrc"))
            .output()
            .map_err(|e| format!("cannot run terraform: {e}"))?;
        if !output.status.success() {
            let text = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
            return Err(format!(
                "terraform {} failed:\n{}",
                args[0],
                text.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let state = format!("-state={}", work.join("terraform.tfstate").display());
    terraform(&[
        "init",
        "-backend=false",
        "-no-color",
        &format!("-plugin-dir={}", options.plugin_dir.display()),
    ])?;
    terraform(&[
        "apply",
        "-auto-approve",
        "-no-color",
        &state,
        "-var",
        &format!("moto_endpoint={moto}"),
        "-var",
        &format!("github_api_url={github}"),
        "-var",
        &format!("lambda_zip_dir={}", zips.display()),
        "-var",
        &format!("deployment={deployment}"),
    ])?;
    disable_moto_event_source_mappings(moto)?;
    let outputs: Value = serde_json::from_str(&terraform(&["output", "-json", &state])?)?;
    let text = |name: &str| outputs[name]["value"].as_str().unwrap_or_default().to_string();
    let mut timeouts = BTreeMap::new();
    for binary in BINARIES {
        let function = outputs["function_names"]["value"][binary.replace('-', "_")]
            .as_str()
            .ok_or_else(|| format!("terraform output `function_names` has no {binary}"))?;
        let configuration: Value = serde_json::from_str(&moto_lambda_api(&[&format!(
            "{moto}/2015-03-31/functions/{function}/configuration"
        )])?)?;
        let seconds = configuration["Timeout"]
            .as_u64()
            .ok_or_else(|| format!("function {function} has no Timeout in moto: {configuration}"))?;
        timeouts.insert(binary, Duration::from_secs(seconds));
    }
    Ok(Outputs {
        config_parameter: text("config_parameter_name"),
        jobs_queue_url: text("jobs_queue_url"),
        dlq_url: text("dead_letter_queue_url"),
        launch_templates: outputs["launch_template_names"]["value"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        timeouts,
    })
}

/// moto acts on an SQS event source mapping itself: it "receives" each message to invoke a function
/// it cannot run, which uses up a receive (and deleting the mapping does not stop it; disabling it
/// does). The demo's glue is the event source mapping, so the one Terraform made is disabled.
fn disable_moto_event_source_mappings(moto: &str) -> Result<(), Error> {
    let curl = moto_lambda_api;
    // Every page: Lambda pages this list by `NextMarker` (moto answers with one page).
    let mut mappings = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let url = format!("{moto}/2015-03-31/event-source-mappings/");
        let listed = match marker.take() {
            Some(marker) => curl(&["-G", "--data-urlencode", &format!("Marker={marker}"), &url])?,
            None => curl(&[&url])?,
        };
        let page: Value = serde_json::from_str(&listed)?;
        mappings.extend(page["EventSourceMappings"].as_array().into_iter().flatten().cloned());
        match page["NextMarker"].as_str() {
            Some(next) if !next.is_empty() => marker = Some(next.to_string()),
            _ => break,
        }
    }
    for mapping in mappings {
        let uuid = mapping["UUID"].as_str().unwrap_or_default();
        curl(&[
            "-X",
            "PUT",
            "-d",
            r#"{"Enabled": false}"#,
            &format!("{moto}/2015-03-31/event-source-mappings/{uuid}"),
        ])?;
    }
    Ok(())
}

/// moto's Lambda API over curl (the demo does not build the Lambda SDK for three calls).
fn moto_lambda_api(args: &[&str]) -> Result<String, Error> {
    let authorization = "Authorization: AWS4-HMAC-SHA256 Credential=testing/20261128/us-east-1/lambda/aws4_request, \
                         SignedHeaders=host, Signature=0";
    let output = std::process::Command::new("curl")
        .args(["-fsS", "-H", authorization, "-H", "Content-Type: application/json"])
        .args(args)
        .output()?;
    if !output.status.success() {
        return Err(format!("curl {args:?}: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// An empty but valid zip archive (the end-of-central-directory record alone).
const EMPTY_ZIP: &[u8] = &[
    0x50, 0x4b, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

async fn restore_launch_template(ec2: &aws_sdk_ec2::Client, name: &str) -> Result<(), Error> {
    ec2.create_launch_template()
        .launch_template_name(name)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

/// Live instances whose runner command was sent: (instance, command, job).
fn runner_commands(live: &[tally::Instance]) -> Vec<(String, String, u64)> {
    live.iter()
        .filter(|i| i.is_live())
        .filter_map(|i| Some((i.id.clone(), i.tags.get("sophons:command-id")?.clone(), i.job_id()?)))
        .collect()
}

fn track_peak(live: &[tally::Instance], peak: &mut BTreeMap<String, usize>) {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for instance in live.iter().filter(|i| i.is_live()) {
        *count
            .entry(instance.tags.get("sophons:template").cloned().unwrap_or_default())
            .or_default() += 1;
    }
    for (template, count) in count {
        let entry = peak.entry(template).or_default();
        *entry = (*entry).max(count);
    }
}

/// The metrics as a CloudWatch dashboard would sum them: queue-time percentiles per template,
/// launches by capacity, hand-backs by reason, webhook answers by decision.
fn print_metrics(metrics: &[sophons_core::metrics::Datum]) {
    use sophons_core::metrics::name;
    let dimension = |datum: &sophons_core::metrics::Datum, key: &str| {
        datum
            .dimensions
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    println!(
        "== metrics (the Lambdas' EMF lines, as CloudWatch reads them: {} data points)",
        metrics.len()
    );
    for metric in [name::ENQUEUED_AFTER, name::LAUNCHED_AFTER, name::COMMAND_SENT_AFTER] {
        let mut by_template: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for datum in metrics.iter().filter(|d| d.name == metric) {
            by_template
                .entry(dimension(datum, "template"))
                .or_default()
                .push(datum.value);
        }
        for (template, mut values) in by_template {
            values.sort_by(f64::total_cmp);
            let at = |p: f64| values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1];
            println!(
                "   {metric} {template}: n {}, p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
                values.len(),
                at(0.5),
                at(0.9),
                at(0.99),
                values[values.len() - 1]
            );
        }
    }
    for (metric, key) in [
        (name::LAUNCHES, "capacity"),
        (name::HAND_BACKS, "reason"),
        (name::DEAD_LETTERS, "reason"),
        (name::WEBHOOK_ANSWERS, "decision"),
    ] {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        // Only the data that carry the key: Launches is also written by deployment alone.
        for datum in metrics
            .iter()
            .filter(|d| d.name == metric && d.dimensions.iter().any(|(k, _)| k == key))
        {
            *sums.entry(dimension(datum, key)).or_default() += datum.value;
        }
        let listed: Vec<String> = sums.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "   {metric} by {key}: {}",
            if listed.is_empty() {
                "none".into()
            } else {
                listed.join(", ")
            }
        );
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    sophons_core::job::parse_rfc3339(text)
}

fn print_report(report: &Report) {
    println!("== timelines (ms since the webhook received the delivery)");
    for timeline in &report.timelines {
        let Some(start) = timeline.stages.get("received").copied() else {
            continue;
        };
        println!(
            "   job {} → template {} · {} {} ({})",
            timeline.job_id, timeline.template, timeline.instance_id, timeline.instance_type, timeline.capacity
        );
        let stages: Vec<String> = STAGES
            .iter()
            .map(|stage| match timeline.stages.get(stage) {
                Some(at) => format!(
                    "{stage} {}",
                    at.duration_since(start).map(|d| d.as_millis()).unwrap_or(0)
                ),
                None => format!("{stage} —"),
            })
            .collect();
        println!("     {}", stages.join(" → "));
    }
    let waited: Vec<&Timeline> = report.timelines.iter().filter(|t| t.waited()).collect();
    println!("== queue time (enqueued → instance launched)");
    println!(
        "   every job:                          {}",
        QueueTime::of(&report.timelines)
    );
    println!(
        "   started at once:                    {}",
        QueueTime::of(report.timelines.iter().filter(|t| !t.waited()))
    );
    println!(
        "   waited for room (the waiting list): {}",
        QueueTime::of(waited.iter().copied())
    );
    for timeline in waited.iter().take(5) {
        let ms = |to: &str| {
            timeline
                .between("enqueued", to)
                .map_or_else(|| "—".to_string(), |d| format!("{} ms", d.as_millis()))
        };
        println!(
            "   job {} ({}): parked at {}, woken at {} as a runner ended ({} wake(s)), launched at {}",
            timeline.job_id,
            timeline.template,
            ms("parked"),
            ms("woken"),
            timeline.wakes,
            ms("launched")
        );
    }
    let t = &report.tally;
    println!(
        "== DLQ: job {} reached the DLQ after {} receive(s): {}; move-jobs moved back {}; served afterwards: {}",
        report.dlq.job_id,
        report.dlq.receives_before_dlq,
        report.dlq.reached_dlq,
        report.dlq.moved_back,
        report.dlq.served_after
    );
    println!(
        "== max_runners held: {}",
        report
            .peak_live
            .iter()
            .map(|(k, v)| format!("{k} peak {v} of {}", report.max_runners.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("== sweep: {}", report.sweep);
    println!(
        "== in_progress deliveries (a runner took its job) → autoscaler: {:?}; jobs the interruptions table names for their runner: {}",
        report.started,
        report.started_kept.len()
    );
    println!("== time by call (deliveries and serving)");
    for (what, spent) in &report.spent {
        println!(
            "   {what}: {} calls, {:.1} s ({:.0} ms each)",
            spent.calls,
            spent.total.as_secs_f64(),
            spent.total.as_secs_f64() * 1000.0 / f64::from(spent.calls.max(1))
        );
    }
    print_metrics(&report.metrics);
    println!("== tally (from moto and the fake GitHub)");
    match &t.instances {
        tally::Read::Complete(instances) => {
            println!(
                "   deliveries sent {}; jobs that got a runner {}; runners registered {}",
                t.jobs_sent,
                instances.jobs_run(),
                t.runners_registered
            );
            println!("   jobs with more than one instance: {}", instances.doubled());
            println!("   instances still running: {}", instances.live);
        }
        unread => {
            println!(
                "   deliveries sent {}; runners registered {}",
                t.jobs_sent, t.runners_registered
            );
            println!("   instances: {unread}");
        }
    }
    println!("   JIT parameters left: {}", t.parameters_left);
    println!("   launch slots still claimed: {}", t.slots_left);
    println!("   jobs still in the waiting list: {}", t.waiting_left);
    println!("   GitHub runners left: {}", t.runners_left);
    println!("   messages left: jobs queue {}, DLQ {}", t.jobs_queue_left, t.dlq_left);
    println!(
        "== done in {:.1} s (terraform apply {:.1} s); {}",
        report.elapsed.as_secs_f64(),
        report.terraform_apply.as_secs_f64(),
        if report.clean() {
            "nothing left behind"
        } else if t.incomplete() {
            "THE TALLY COULD NOT READ EVERYTHING"
        } else {
            "SOMETHING WAS LEFT BEHIND"
        }
    );
}
