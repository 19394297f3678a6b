//! create-runner: one just-in-time runner on an EC2 instance for each queued job.
//!
//! Per job, in order: decode → already served? → still wanted? → room? → launch → register →
//! start. A failure after the launch cleans up what it made before the message is handed back.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use tokio::time::Instant;

use crate::commands::{CommandError, CommandRequest, runner_commands};
use crate::config::{Config, Template};
use crate::fleet::{
    Capacity, FleetError, Instance, InstanceQuery, LaunchRequest, Launched, TAG_COMMAND_ID, TAG_DEPLOYMENT, TAG_JOB_ID,
    TAG_JOB_NAME, TAG_RELAUNCHES, TAG_REPOSITORY, TAG_RUN_ATTEMPT, TAG_RUN_ID, TAG_RUNNER_FAILURES, TAG_RUNNER_ID,
    TAG_SLOT, TAG_TEMPLATE, TAG_WORKFLOW,
};
use crate::github::{GithubError, JitConfig, JobStatus, RunnerScope};
use crate::job::JobMessage;
use crate::metrics::{Emf, name as metric};
use crate::names;
use crate::release::{RELEASE_TTL, Releases, RunnerRelease};
use crate::slots::{ClaimAnswer, SlotClaim, SlotsError, slot_of};
use crate::templates::runner_labels;

/// Records of one batch served at once; GitHub's JIT endpoint and SSM PutParameter (a few per
/// second on the standard throughput tier: one JIT config per launch) are what a larger number
/// would strain.
pub const BATCH_CONCURRENCY: usize = 8;
/// A transient AWS failure hands the message back for this long, not the full retry delay.
pub const TRANSIENT_DELAY_SECONDS: u32 = 60;
/// Time kept back from the Lambda deadline for cleaning up and answering.
const DEADLINE_MARGIN: Duration = Duration::from_secs(20);

use crate::ports::Ports;

/// Backoff for SendCommand while the SSM agent registers.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(2),
            max: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Served {
        instance_id: String,
        instance_type: String,
        capacity: Capacity,
        runner_id: u64,
        command_id: String,
    },
    /// Nothing (more) to do for this message; it is deleted.
    Acknowledged(String),
    /// The template is full: the job waits in the waiting list (`waiting`) and its message is
    /// deleted; a freed slot sends it back.
    Waiting(String),
    /// Try again after `delay_seconds`; after the queue's maxReceiveCount it goes to the DLQ.
    HandedBack {
        delay_seconds: u32,
        reason: String,
        kind: HandBack,
    },
}

/// Why a job was handed back, as a small closed set (the `reason` dimension of the `HandBacks`
/// metric; the text in `reason` says the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandBack {
    /// The template is at `max_runners`.
    Full,
    /// Another launch of this job is in flight or being ended: look again shortly.
    InFlight,
    /// Nothing launched: no capacity, a refused launch.
    LaunchFailed,
    /// Launched, but the runner could not be registered or started; the instance was ended.
    StartFailed,
    /// A service we depend on did not answer (EC2, GitHub, DynamoDB...).
    Unavailable,
}

impl HandBack {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::InFlight => "in_flight",
            Self::LaunchFailed => "launch_failed",
            Self::StartFailed => "start_failed",
            Self::Unavailable => "unavailable",
        }
    }
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Served { .. } => "served",
            Self::Acknowledged(_) => "acknowledged",
            Self::Waiting(_) => "waiting",
            Self::HandedBack { .. } => "handed_back",
        }
    }
}

/// A failure after the launch: what to say, how long to wait before the retry, and the runner
/// registered before it (to remove).
struct SetupFailure {
    reason: String,
    delay_seconds: u32,
    /// The instance belongs to another handler (same ClientToken): leave it alone.
    not_ours: bool,
    runner_id: Option<u64>,
}

impl SetupFailure {
    /// A failure of this handler's own instance.
    fn new(reason: String, delay_seconds: u32, runner_id: Option<u64>) -> Self {
        Self {
            reason,
            delay_seconds,
            not_ours: false,
            runner_id,
        }
    }
}

/// A runner registered and its command sent.
struct StartedRunner {
    runner_id: u64,
    command_id: String,
}

/// The runner's command, sent after `attempts` SendCommands.
struct SentCommand {
    command_id: String,
    attempts: u32,
}

/// One record's launch: the message, its template, its receive, the slot it claimed, and its
/// clock.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    message: &'a JobMessage,
    template: &'a Template,
    release: &'a RunnerRelease,
    receive_count: u32,
    slot: u32,
    started: Instant,
    deadline: Instant,
}

/// Whether a record's launch slot is still held by an instance after its launch and start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotFate {
    /// An instance carries it (served, or not ended after a failed start: the sweep frees it).
    Kept,
    /// No instance of this record holds it: give it back now.
    GiveBack,
}

/// Another slot claim, against a record's own.
enum SameJob {
    No,
    Launching,
    Leftover,
}

/// What a record's slot claim found.
enum Claim {
    Claimed(u32, SlotClaim),
    /// Every slot is held or claimed.
    Full,
    /// Another handler holds a fresh claim for this job: it is launching the job.
    JobBeingLaunched(u32),
}

/// Tries of one slot's claim while DynamoDB throttles.
const CLAIM_ATTEMPTS: u32 = 3;

/// The relaunch an instance was launched for (its `sophons:relaunches` tag).
fn generation(instance: &Instance) -> u32 {
    instance.tag(TAG_RELAUNCHES).and_then(|n| n.parse().ok()).unwrap_or(0)
}

pub struct CreateRunner {
    config: Arc<Config>,
    ports: Ports,
    backoff: Backoff,
    gate: Gate,
    releases: Releases,
}

/// What this process is doing right now, so that the records of one batch, served at once, see
/// each other: EC2 does not list an instance before its launch returns, so two records of a
/// template counting at the same moment would both find room, and two records of one job (a
/// redelivery in the same batch) would both find it unserved.
#[derive(Default)]
struct Gate {
    /// Per template: held while counting, so that counts and reservations do not interleave.
    rooms: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per template: the jobs whose launches are reserved and not yet returned.
    launching: std::sync::Mutex<std::collections::HashMap<String, std::collections::HashSet<u64>>>,
    /// Jobs being served by a record of this process.
    jobs: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl Gate {
    fn room(&self, template: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.rooms
            .lock()
            .unwrap()
            .entry(template.to_string())
            .or_default()
            .clone()
    }

    /// Launches in flight here whose instance is not among `live` yet (an instance EC2 lists
    /// before its launch call has returned here must not count twice).
    fn launching(&self, template: &str, live: &[Instance]) -> usize {
        let listed: std::collections::HashSet<u64> = live
            .iter()
            .filter_map(|i| i.tag(TAG_JOB_ID).and_then(|id| id.parse().ok()))
            .collect();
        self.launching
            .lock()
            .unwrap()
            .get(template)
            .map_or(0, |jobs| jobs.iter().filter(|job| !listed.contains(job)).count())
    }
}

/// Releases what a record held in the gate when it is done (or dropped mid-way).
struct Held<'a> {
    gate: &'a Gate,
    job_id: u64,
    launching: Option<String>,
}

impl Held<'_> {
    fn launched(&mut self) {
        if let Some(template) = self.launching.take()
            && let Some(jobs) = self.gate.launching.lock().unwrap().get_mut(&template)
        {
            jobs.remove(&self.job_id);
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.launched();
        self.gate.jobs.lock().unwrap().remove(&self.job_id);
    }
}

impl CreateRunner {
    pub fn new(config: Arc<Config>, ports: Ports) -> Self {
        Self {
            releases: Releases::new(config.runner_pin.as_ref(), RELEASE_TTL),
            config,
            ports,
            backoff: Backoff::default(),
            gate: Gate::default(),
        }
    }

    /// How long GitHub's answer about the current runner release is kept (tests shorten it).
    pub fn with_release_ttl(mut self, ttl: Duration) -> Self {
        self.releases = Releases::new(self.config.runner_pin.as_ref(), ttl);
        self
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The SQS event source mapping's entry point. Records are served concurrently and
    /// independently; a record handed back (or whose task failed) is reported as a batch item
    /// failure, after its visibility timeout was set to the delay it asked for.
    pub async fn handle_batch(self: &Arc<Self>, event: SqsEvent, deadline: Instant) -> SqsBatchResponse {
        let permits = Arc::new(tokio::sync::Semaphore::new(BATCH_CONCURRENCY));
        let mut tasks = Vec::with_capacity(event.records.len());
        for record in event.records {
            let message_id = record.message_id.clone().unwrap_or_default();
            let this = Arc::clone(self);
            let permits = Arc::clone(&permits);
            tasks.push((
                message_id,
                tokio::spawn(async move {
                    let _permit = permits.acquire_owned().await.expect("the semaphore is never closed");
                    let receive_count = record
                        .attributes
                        .get("ApproximateReceiveCount")
                        .and_then(|count| count.parse().ok())
                        .unwrap_or(1);
                    let outcome = this
                        .serve(record.body.as_deref().unwrap_or_default(), receive_count, deadline)
                        .await;
                    if let (Outcome::HandedBack { delay_seconds, .. }, Some(receipt)) =
                        (&outcome, &record.receipt_handle)
                        && let Err(error) = this
                            .ports
                            .queue
                            .hide(&this.config.queue_url, receipt, *delay_seconds)
                            .await
                    {
                        tracing::warn!(%error, "could not set the retry delay; the queue's visibility timeout applies");
                    }
                    outcome
                }),
            ));
        }
        let mut response = SqsBatchResponse::default();
        for (message_id, task) in tasks {
            let failed = match task.await {
                Ok(outcome) => matches!(outcome, Outcome::HandedBack { .. }),
                Err(error) => {
                    tracing::error!(message_id, %error, "serving the message failed unexpectedly; it will be retried");
                    true
                }
            };
            if failed {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = message_id;
                response.batch_item_failures.push(failure);
            }
        }
        response
    }

    /// Serves one message. Never panics on bad input; every path logs why it ended.
    pub async fn serve(&self, body: &str, receive_count: u32, deadline: Instant) -> Outcome {
        let started = Instant::now();
        let message = match JobMessage::decode(body) {
            Ok(message) => message,
            Err(error) => {
                let job_id = serde_json::from_str::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("job_id").and_then(serde_json::Value::as_u64))
                    .unwrap_or_default();
                tracing::error!(job_id, reason = %error, "message dropped: {error}");
                return Outcome::Acknowledged(error.to_string());
            }
        };
        let Some(template) = self.config.templates.get(&message.template) else {
            let reason = format!(
                "template `{}` is not in this deployment's config (templates: {}); the job cannot be served",
                message.template,
                self.config.templates.keys().cloned().collect::<Vec<_>>().join(", ")
            );
            tracing::error!(
                job_id = message.job_id,
                template = message.template,
                "message dropped: {reason}"
            );
            return Outcome::Acknowledged(reason);
        };
        let outcome = self
            .serve_job(&message, template, receive_count, started, deadline)
            .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let reason = match &outcome {
            Outcome::Served { .. } => String::new(),
            Outcome::Acknowledged(reason) | Outcome::Waiting(reason) | Outcome::HandedBack { reason, .. } => {
                reason.clone()
            }
        };
        let instance_id = match &outcome {
            Outcome::Served { instance_id, .. } => instance_id.as_str(),
            _ => "",
        };
        self.emit_metrics(&message, &outcome);
        if let Some(waiting) = self.ports.waiting.as_ref().filter(|_| message.trip > 0) {
            // A job woken from the waiting list is taken off it once served, whatever the
            // outcome, unless it waits again (its park cleared the wake mark). Until then it
            // holds its place, so no other job is woken for its slot.
            if !matches!(outcome, Outcome::Waiting(_))
                && let Err(error) = waiting
                    .remove_woken(&message.template, &crate::waiting::place(&message))
                    .await
            {
                tracing::warn!(job_id = message.job_id, %error, "cannot take the served job off the waiting list; it is woken again in {} s and acknowledged then", crate::waiting::WOKEN_FOR.as_secs());
            }
            // One that needs no runner after all (cancelled, served meanwhile) leaves the slot it
            // was woken for unused: pass it on.
            if matches!(outcome, Outcome::Acknowledged(_)) {
                crate::waiting::wake(&self.config, &self.ports, &message.template).await;
            }
        }
        tracing::info!(
            job_id = message.job_id,
            delivery_id = message.delivery_id,
            template = message.template,
            repository = message.repository,
            instance_id,
            outcome = outcome.name(),
            receive_count,
            queued_ms = queued_ms(&message.received_at),
            elapsed_ms,
            "job {}: {}",
            message.job_id,
            if reason.is_empty() { "runner started" } else { &reason }
        );
        outcome
    }

    /// The job's metrics (`metrics`): a launch by capacity and the time to its command, or a
    /// hand-back by reason.
    fn emit_metrics(&self, message: &JobMessage, outcome: &Outcome) {
        let job = || {
            Emf::new(&self.config.deployment)
                .dimension("template", &message.template)
                .property("job_id", message.job_id)
        };
        match outcome {
            Outcome::Served { capacity, .. } => {
                // Also by deployment alone: the no-launch alarm reads that one metric, which counts
                // on-demand launches of any template (re-runs, spot back-off) as well as spot ones.
                job()
                    .dimension("capacity", capacity.as_str())
                    .also_by(&["deployment"])
                    .count(metric::LAUNCHES, 1)
                    .emit();
                let mut times = job();
                if let Some(after) = crate::metrics::since(&message.created_at) {
                    times = times.seconds(metric::COMMAND_SENT_AFTER, after);
                }
                if message.relaunches > 0 {
                    times = times.count(metric::RELAUNCHES, 1);
                }
                times.emit();
            }
            Outcome::HandedBack { kind, .. } => {
                job()
                    .dimension("reason", kind.as_str())
                    .count(metric::HAND_BACKS, 1)
                    .emit();
            }
            // Counted as a job the full template turned away, whether it waits in the list or
            // was handed back (no waiting list): the dashboard's "full" line means both.
            Outcome::Waiting(_) => {
                job()
                    .dimension("reason", HandBack::Full.as_str())
                    .count(metric::HAND_BACKS, 1)
                    .emit();
            }
            Outcome::Acknowledged(_) => {}
        }
    }

    async fn serve_job(
        &self,
        message: &JobMessage,
        template: &Template,
        receive_count: u32,
        started: Instant,
        deadline: Instant,
    ) -> Outcome {
        let job_id = message.job_id;

        if !self.gate.jobs.lock().unwrap().insert(job_id) {
            return Outcome::Acknowledged(format!(
                "job {job_id} is being served by another message of this batch; no second runner launched"
            ));
        }
        let mut held = Held {
            gate: &self.gate,
            job_id,
            launching: None,
        };

        if let Some(outcome) = self.already_served(message).await {
            return outcome;
        }
        if let Some(outcome) = self.still_wanted(message).await {
            return outcome;
        }
        // Which runner? GitHub's current release (or the last one it named); with none known,
        // nothing is launched, since no runner is ever installed unverified.
        let scope = RunnerScope::for_job(&self.config.github, &message.repository);
        let release = match self.releases.current(self.ports.github.as_ref(), &scope).await {
            Ok(release) => release,
            Err(reason) => return transient(reason),
        };

        if let Some(outcome) = self.behind_older_jobs(message, template).await {
            return outcome;
        }

        let (slot, claim) = match self.claim_room(message, template, &mut held).await {
            Ok(claimed) => claimed,
            Err(outcome) => return outcome,
        };

        let attempt = Attempt {
            message,
            template,
            release: &release,
            receive_count,
            slot,
            started,
            deadline,
        };
        let (outcome, slot_fate) = self.launch_and_start(&attempt, &mut held).await;
        if slot_fate == SlotFate::GiveBack {
            crate::slots::give_back(self.ports.slots.as_ref(), &message.template, slot, &claim).await;
        }
        outcome
    }

    /// Room? Counted under this process's room lock (the records of one batch see each other's
    /// reservations), then made exact across invocations by claiming one of the template's slots.
    /// Answers the slot claimed, or the outcome when there is none for the job now (it waits for
    /// room, or another handler is launching it).
    async fn claim_room(
        &self,
        message: &JobMessage,
        template: &Template,
        held: &mut Held<'_>,
    ) -> Result<(u32, SlotClaim), Outcome> {
        let deployment = &self.config.deployment;
        let job_id = message.job_id;
        let query = InstanceQuery {
            template: Some(message.template.clone()),
            live_only: true,
            ..Default::default()
        };
        let room = self.gate.room(&message.template);
        let counting = room.lock().await;
        let full = format!(
            "template `{}` is at max_runners ({})",
            message.template, template.max_runners
        );
        let mut live = match self.ports.fleet.instances(deployment, &query).await {
            Ok(live) => live,
            Err(error) => return Err(transient(format!("cannot count instances: {error}"))),
        };
        if live.len() + self.gate.launching(&message.template, &live) >= template.max_runners as usize {
            // EC2 may still list an instance stop-runner has just ended, for a moment: its slot is
            // free in the (consistent) slots table, and a job woken for that slot must not find
            // the template full and wait again. An instance is dropped from the count only when
            // its slot has no claim: stop-runner frees a slot after the instance's termination,
            // a failed launch gives its slot back only when nothing was launched, and the sweep
            // frees one only when no listed instance holds it.
            if let Ok(claims) = self.ports.slots.list(Some(&message.template)).await {
                let claimed: std::collections::HashSet<u32> = claims.iter().map(|found| found.slot).collect();
                live.retain(|instance| slot_of(instance).is_none_or(|(_, slot)| claimed.contains(&slot)));
            }
            if live.len() + self.gate.launching(&message.template, &live) >= template.max_runners as usize {
                drop(counting);
                return Err(self.wait_for_room(message, template, &full).await);
            }
        }
        self.gate
            .launching
            .lock()
            .unwrap()
            .entry(message.template.clone())
            .or_default()
            .insert(job_id);
        held.launching = Some(message.template.clone());
        drop(counting);
        // The count above is this process's quick answer; the claim is the exact one, and needs
        // no lock of ours (only one caller can create a slot), so the batch's other records count
        // meanwhile. Returning drops `held`, which gives the reservation back.
        match self.claim_slot(message, template.max_runners, &live).await {
            Ok(Claim::Claimed(slot, claim)) => match self.another_claim_of_this_job(message, slot).await {
                Ok(None) => Ok((slot, claim)),
                Ok(Some(other)) => {
                    crate::slots::give_back(self.ports.slots.as_ref(), &message.template, slot, &claim).await;
                    Err(in_flight(format!(
                        "job {job_id} is being launched by another handler (it holds launch slot {other}); checking \
                         again in {TRANSIENT_DELAY_SECONDS} s"
                    )))
                }
                Err(error) => {
                    crate::slots::give_back(self.ports.slots.as_ref(), &message.template, slot, &claim).await;
                    Err(transient(format!("cannot read the launch slots: {error}")))
                }
            },
            Ok(Claim::Full) => Err(self.wait_for_room(message, template, &full).await),
            // Not acknowledged: the claimant may die before it launches. Once its launch is
            // listed, the next receive acknowledges; if it died, its claim goes stale and the next
            // receive takes the slot over.
            Ok(Claim::JobBeingLaunched(slot)) => Err(in_flight(format!(
                "job {job_id} is being launched by another handler (it holds launch slot {slot}); checking again in \
                 {TRANSIENT_DELAY_SECONDS} s"
            ))),
            Err(error) => Err(transient(format!("cannot claim a launch slot: {error}"))),
        }
    }

    /// Already served? Redeliveries, retries and redrives must not launch a second instance:
    /// answers the outcome when the job has (or may have) an instance already, after ending one
    /// whose handler died before starting it.
    ///
    /// Long because each kind of instance the job may have already (an earlier relaunch's, a started one, one
    /// being started, an abandoned one) has its own answer, and their order matters.
    async fn already_served(&self, message: &JobMessage) -> Option<Outcome> {
        let deployment = &self.config.deployment;
        let job_id = message.job_id;
        let query = InstanceQuery {
            job_id: Some(job_id),
            live_only: true,
            ..Default::default()
        };
        let existing = match self.ports.fleet.instances(deployment, &query).await {
            Ok(existing) => existing,
            Err(error) => return Some(transient(format!("cannot list instances: {error}"))),
        };
        for instance in existing {
            if generation(&instance) < message.relaunches {
                // The instance of an earlier relaunch: its run has ended (stop-runner sends the
                // job back before ending it, and SQS can hand us the message at once), so it
                // never serves this message. Launching beside it would give the job two live
                // instances; wait until it is gone (stop-runner, or the sweep, ends it).
                return Some(Outcome::HandedBack {
                    kind: HandBack::InFlight,
                    delay_seconds: TRANSIENT_DELAY_SECONDS,
                    reason: format!(
                        "job {job_id}'s previous instance {} (relaunch {}) is still being ended; its new runner \
                         is launched once it is gone",
                        instance.id,
                        generation(&instance)
                    ),
                });
            }
            if instance.tag(TAG_COMMAND_ID).is_some() {
                return Some(Outcome::Acknowledged(format!(
                    "job {job_id} already has instance {}; no second runner launched",
                    instance.id
                )));
            }
            // Not started yet: another handler may be starting it, or a launch whose answer was
            // lost left it. Keep the message until it is started or abandoned (then replaced):
            // acknowledging here would lose the job to an instance nobody starts.
            if !self.is_abandoned(&instance) {
                return Some(Outcome::HandedBack {
                    kind: HandBack::InFlight,
                    delay_seconds: self.config.retry_delay_seconds,
                    reason: format!(
                        "job {job_id} has instance {} not started yet; checking again in {} s",
                        instance.id, self.config.retry_delay_seconds
                    ),
                });
            }
            tracing::warn!(
                job_id,
                instance_id = instance.id,
                "instance was never started (its handler died); replacing it"
            );
            let scope = RunnerScope::for_job(&self.config.github, &message.repository);
            // A handler killed between SendCommand and tagging leaves a runner at work without
            // the command tag: ending its instance would end the job it runs.
            let name = names::runner_name(deployment, &instance.id);
            match self.ports.github.runners(&scope).await {
                Ok(runners) if runners.iter().any(|r| r.name == name && r.busy) => {
                    return Some(Outcome::Acknowledged(format!(
                        "job {job_id} already has instance {} whose runner is busy; no second runner launched",
                        instance.id
                    )));
                }
                Ok(_) => {}
                Err(error) => return Some(transient(format!("cannot list runners: {error}"))),
            }
            let ending = crate::ports::Ending {
                instance_id: &instance.id,
                spot_request_id: instance.spot_request_id.as_deref(),
                runner_id: instance.runner_id(),
                scope: &scope,
                job_id,
            };
            if !self.ports.end_instance(&self.config.deployment, &ending).await {
                // Launching now would give the job two live instances.
                return Some(transient(format!(
                    "cannot end instance {} that was never started; no replacement launched yet",
                    instance.id
                )));
            }
        }
        None
    }

    /// Still wanted? A spare instance costs less than a job that never runs, so an unreachable
    /// GitHub does not stop the launch: answers the outcome when GitHub says the job needs none.
    async fn still_wanted(&self, message: &JobMessage) -> Option<Outcome> {
        let job_id = message.job_id;
        match self.ports.github.job_status(&message.repository, job_id).await {
            Ok(JobStatus::Queued) => {}
            Ok(JobStatus::Other(status)) => {
                return Some(Outcome::Acknowledged(format!(
                    "job {job_id} is {status}; no runner launched"
                )));
            }
            Err(GithubError::NotFound(_)) => {
                return Some(Outcome::Acknowledged(format!(
                    "GitHub has no job {job_id} in {} (deleted, or the credential cannot see it); no runner launched",
                    message.repository
                )));
            }
            Err(error) => {
                tracing::warn!(job_id, %error, "cannot ask GitHub whether the job is still queued; launching anyway")
            }
        }
        None
    }

    /// Jobs queued before this one wait for this template: they go first, and this one waits
    /// behind them (the wake after its park hands a free slot to the oldest). A job woken from
    /// the list (or back from the DLQ: `trip`) was given its turn already.
    async fn behind_older_jobs(&self, message: &JobMessage, template: &Template) -> Option<Outcome> {
        let job_id = message.job_id;
        if let Some(waiting) = self.ports.waiting.as_ref().filter(|_| message.trip == 0) {
            match waiting.oldest(&message.template, 1).await {
                Ok(first)
                    if first
                        .first()
                        .is_some_and(|parked| parked.place < crate::waiting::place(message)) =>
                {
                    return Some(
                        self.wait_for_room(message, template, "jobs queued before it are waiting for a slot")
                            .await,
                    );
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(job_id, %error, "cannot read the waiting list; the job is served without it")
                }
            }
        }
        None
    }

    /// The template has no room for the job (or older jobs wait for it): the job is parked in the
    /// waiting list, where it spends none of its receives, and its message is deleted; the
    /// template is woken at once, in case a slot freed since it was counted. Without a waiting
    /// list, or when the park fails, the message is handed back for `retry_delay_seconds`.
    async fn wait_for_room(&self, message: &JobMessage, template: &Template, why: &str) -> Outcome {
        let job_id = message.job_id;
        let delay_seconds = self.config.retry_delay_seconds;
        let handed_back = |note: &str| Outcome::HandedBack {
            kind: HandBack::Full,
            delay_seconds,
            reason: format!("{why}; job {job_id} waits {delay_seconds} s{note}"),
        };
        let Some(waiting) = &self.ports.waiting else {
            return handed_back("");
        };
        let place = crate::waiting::place(message);
        if let Err(error) = waiting
            .park(&message.template, &place, &message.encode(), &message.delivery_id)
            .await
        {
            tracing::warn!(job_id, %error, "cannot park the job in the waiting list; it is handed back instead");
            return handed_back(" (the waiting list could not take it)");
        }
        let woken = crate::waiting::wake(&self.config, &self.ports, &message.template).await;
        tracing::info!(
            job_id,
            template = message.template,
            max_runners = template.max_runners,
            place,
            woken = woken.moved,
            step = crate::logging::step::PARKED,
            "job {job_id} parked in the waiting list: {why}"
        );
        Outcome::Waiting(format!(
            "{why}; job {job_id} waits in the waiting list until a slot frees"
        ))
    }

    /// Claims a slot of the template no live instance holds: an item only one handler can
    /// create. Every handler of a job walks the slots in the same order, so a handler serving a
    /// duplicate of a message (another receive count, so another launch token) usually meets the
    /// fresh claim of the handler launching the same job, and stops there: EC2 may not list that
    /// launch yet. `another_claim_of_this_job` catches the walks that differed.
    async fn claim_slot(&self, message: &JobMessage, max_runners: u32, live: &[Instance]) -> Result<Claim, SlotsError> {
        let held: std::collections::HashSet<u32> = live.iter().filter_map(slot_of).map(|(_, slot)| slot).collect();
        let claim = SlotClaim {
            job_id: message.job_id,
            relaunches: message.relaunches,
            at: SystemTime::now(),
        };
        let first = (message.job_id % u64::from(max_runners.max(1))) as u32;
        let mut last_error = None;
        for offset in 0..max_runners {
            let slot = (first + offset) % max_runners;
            if held.contains(&slot) {
                continue;
            }
            // A throttled claim is tried again after a short pause, and then the scan goes on to
            // the next slot; only a scan that found no slot because of errors is an error.
            let mut delay = self.backoff.first.min(Duration::from_millis(500));
            for attempt in 1..=CLAIM_ATTEMPTS {
                match self.ports.slots.claim(&message.template, slot, &claim).await {
                    Ok(ClaimAnswer::Claimed) => return Ok(Claim::Claimed(slot, claim)),
                    Ok(ClaimAnswer::Held(found)) => match found.map(|found| (found, self.same_job(&claim, &found))) {
                        Some((_, SameJob::Launching)) => return Ok(Claim::JobBeingLaunched(slot)),
                        Some((found, SameJob::Leftover)) => {
                            self.ports.slots.release(&message.template, slot, &found).await?;
                        }
                        Some((_, SameJob::No)) | None => break,
                    },
                    Err(error @ SlotsError::Throttled(_)) if attempt < CLAIM_ATTEMPTS => {
                        last_error = Some(error);
                        if !delay.is_zero() {
                            tokio::time::sleep(jittered(delay)).await;
                        }
                        delay *= 2;
                    }
                    Err(error) => {
                        last_error = Some(error);
                        break;
                    }
                }
            }
        }
        match last_error {
            Some(error) => Err(error),
            None => Ok(Claim::Full),
        }
    }

    /// After claiming a slot: does another fresh claim of this job exist (see `same_job`)?
    /// Handlers whose listings of instances differed may have walked the slots differently, so
    /// the walk alone cannot meet every duplicate; claiming first and then reading every claim can
    /// (a claimant that finds another backs off; two that find each other both back off and
    /// retry). This costs one consistent Query of the template's claims.
    async fn another_claim_of_this_job(&self, message: &JobMessage, own: u32) -> Result<Option<u32>, SlotsError> {
        let claim = SlotClaim {
            job_id: message.job_id,
            relaunches: message.relaunches,
            at: SystemTime::now(),
        };
        for found in self.ports.slots.list(Some(&message.template)).await? {
            if found.slot == own {
                continue;
            }
            match self.same_job(&claim, &found.claim) {
                SameJob::No => {}
                SameJob::Leftover => {
                    self.ports
                        .slots
                        .release(&message.template, found.slot, &found.claim)
                        .await?;
                }
                SameJob::Launching => return Ok(Some(found.slot)),
            }
        }
        Ok(None)
    }

    /// Launch, register, start. Answers the outcome and whether the record's launch slot is
    /// still held by an instance (kept) or must be given back.
    async fn launch_and_start(&self, attempt: &Attempt<'_>, held: &mut Held<'_>) -> (Outcome, SlotFate) {
        let launch = self.launch(attempt).await;
        held.launched();
        let launched = match launch {
            Ok(launched) => launched,
            Err(error) => return self.launch_failed(attempt, error),
        };
        self.report_launched(attempt, &launched);

        let scope = RunnerScope::for_job(&self.config.github, &attempt.message.repository);
        match self.start_runner(attempt, &launched, &scope).await {
            Ok(started) => (
                Outcome::Served {
                    instance_id: launched.instance_id,
                    instance_type: launched.instance_type,
                    capacity: launched.capacity,
                    runner_id: started.runner_id,
                    command_id: started.command_id,
                },
                SlotFate::Kept,
            ),
            Err(failure) => self.start_failed(attempt, &launched, &scope, failure).await,
        }
    }

    /// A launch that failed: each way has its own outcome, and decides whether the slot is kept.
    fn launch_failed(&self, attempt: &Attempt<'_>, error: FleetError) -> (Outcome, SlotFate) {
        let message = attempt.message;
        let job_id = message.job_id;
        if let FleetError::TokenMismatch(reason) = &error {
            // Same job, relaunch, trip and receive, other slot: a handler serving a duplicate
            // of this message launched with this token first. Its launch may have failed and
            // been ended since, and its message may be the duplicate already acknowledged
            // (the soak found a job lost that way), so the job is looked at again shortly,
            // with the next receive's token: a live instance of the job is acknowledged then.
            return (
                Outcome::HandedBack {
                    kind: HandBack::InFlight,
                    delay_seconds: TRANSIENT_DELAY_SECONDS,
                    reason: format!(
                        "job {job_id}: another handler launched with the same launch token ({reason}); checking \
                         again in {TRANSIENT_DELAY_SECONDS} s whether its instance serves the job"
                    ),
                },
                SlotFate::GiveBack,
            );
        }
        let delay_seconds = match error {
            FleetError::Unavailable(_) => TRANSIENT_DELAY_SECONDS,
            _ => self.config.retry_delay_seconds,
        };
        if let FleetError::Rejected(_) = error {
            tracing::error!(job_id, template = message.template, %error, "launch refused: check the launch template `{}` and the function's permissions", attempt.template.launch_template);
        }
        // A request that failed on its way (timeout, 5xx, throttling) may have launched
        // an instance whose answer was lost, tagged with this slot and not listed yet:
        // the slot stays claimed until the sweep finds no instance holding it. A definite
        // answer (no capacity, refused) launched nothing.
        let fate = if matches!(error, FleetError::Unavailable(_)) {
            SlotFate::Kept
        } else {
            SlotFate::GiveBack
        };
        let reason = match fate {
            SlotFate::Kept => {
                format!("launch for job {job_id} failed, it may have launched an instance: {error}")
            }
            SlotFate::GiveBack => format!("no instance launched for job {job_id}: {error}"),
        };
        let kind = HandBack::LaunchFailed;
        (
            Outcome::HandedBack {
                delay_seconds,
                reason,
                kind,
            },
            fate,
        )
    }

    /// The launch's metric (time from queued to launched) and log lines.
    fn report_launched(&self, attempt: &Attempt<'_>, launched: &Launched) {
        let message = attempt.message;
        let job_id = message.job_id;
        if let Some(after) = crate::metrics::since(&message.created_at) {
            Emf::new(&self.config.deployment)
                .dimension("template", &message.template)
                .seconds(metric::LAUNCHED_AFTER, after)
                .property("job_id", job_id)
                .emit();
        }
        tracing::info!(
            job_id,
            template = message.template,
            instance_id = launched.instance_id,
            step = crate::logging::step::LAUNCHED,
            elapsed_ms = attempt.started.elapsed().as_millis() as u64
        );
        tracing::info!(
            job_id,
            instance_id = launched.instance_id,
            instance_type = launched.instance_type,
            capacity = launched.capacity.as_str(),
            "job {job_id}: launched {} ({})",
            launched.instance_type,
            launched.capacity.as_str()
        );
    }

    /// A start that failed: the instance is ended (with its runner, if registered) and the job
    /// handed back, unless the instance is another handler's.
    async fn start_failed(
        &self,
        attempt: &Attempt<'_>,
        launched: &Launched,
        scope: &RunnerScope,
        failure: SetupFailure,
    ) -> (Outcome, SlotFate) {
        if failure.not_ours {
            // The token answered another handler's instance, which holds its own slot.
            return (Outcome::Acknowledged(failure.reason), SlotFate::GiveBack);
        }
        let job_id = attempt.message.job_id;
        tracing::warn!(
            job_id,
            instance_id = launched.instance_id,
            reason = failure.reason,
            "cleaning up after a failed start"
        );
        let ending = crate::ports::Ending {
            instance_id: &launched.instance_id,
            // Not known without a DescribeInstances: the instant fleet's one-time spot
            // request closes when its instance ends.
            spot_request_id: None,
            runner_id: failure.runner_id,
            scope,
            job_id,
        };
        let ended = self.ports.end_instance(&self.config.deployment, &ending).await;
        // An instance that could not be ended keeps its slot (by its tag) until the sweep
        // ends it and frees the slot; one that was ended frees it now.
        let fate = if ended { SlotFate::GiveBack } else { SlotFate::Kept };
        (
            Outcome::HandedBack {
                kind: HandBack::StartFailed,
                delay_seconds: failure.delay_seconds,
                reason: failure.reason,
            },
            fate,
        )
    }

    /// Register (JIT config into its parameter) and start (SendCommand, then tag). Each step
    /// fails in its own way; a failure after the registration carries the runner's id.
    async fn start_runner(
        &self,
        attempt: &Attempt<'_>,
        launched: &Launched,
        scope: &RunnerScope,
    ) -> Result<StartedRunner, SetupFailure> {
        let jit = self.register(attempt, launched, scope).await?;
        let parameter = self.store_jit_config(attempt, launched, &jit).await?;
        let sent = self.send_command(attempt, launched, &parameter, jit.runner_id).await?;
        self.tag_with_command(launched, &sent.command_id, jit.runner_id).await?;
        tracing::info!(
            job_id = attempt.message.job_id,
            instance_id = launched.instance_id,
            command_id = sent.command_id,
            attempts = sent.attempts,
            step = crate::logging::step::COMMAND_SENT,
            elapsed_ms = attempt.started.elapsed().as_millis() as u64
        );
        Ok(StartedRunner {
            runner_id: jit.runner_id,
            command_id: sent.command_id,
        })
    }

    /// The instance's runner, registered with GitHub: its JIT config.
    async fn register(
        &self,
        attempt: &Attempt<'_>,
        launched: &Launched,
        scope: &RunnerScope,
    ) -> Result<JitConfig, SetupFailure> {
        let message = attempt.message;
        let job_id = message.job_id;
        let instance_id = &launched.instance_id;
        let labels = runner_labels(&message.template, attempt.template);
        let runner_name = names::runner_name(&self.config.deployment, instance_id);
        let jit = match self
            .ports
            .github
            .register_runner(scope, &runner_name, &labels, self.config.github.runner_group_id)
            .await
        {
            Ok(jit) => jit,
            // The adapter re-registers after meeting its own retried POST, so a conflict here is
            // another handler's registration for this instance (the same launch token).
            Err(GithubError::Conflict(reason)) => {
                return Err(SetupFailure {
                    reason: format!("runner `{runner_name}` is already registered by another handler: {reason}"),
                    delay_seconds: 0,
                    not_ours: true,
                    runner_id: None,
                });
            }
            Err(error) => {
                let delay = if error.is_retryable() {
                    TRANSIENT_DELAY_SECONDS
                } else {
                    self.config.retry_delay_seconds
                };
                return Err(SetupFailure::new(
                    format!("runner registration failed: {error}"),
                    delay,
                    None,
                ));
            }
        };
        tracing::info!(
            job_id,
            instance_id,
            runner_id = jit.runner_id,
            step = crate::logging::step::REGISTERED,
            elapsed_ms = attempt.started.elapsed().as_millis() as u64
        );
        Ok(jit)
    }

    /// The JIT config, stored in the instance's parameter for the runner script to read; answers
    /// the parameter's name.
    async fn store_jit_config(
        &self,
        attempt: &Attempt<'_>,
        launched: &Launched,
        jit: &JitConfig,
    ) -> Result<String, SetupFailure> {
        let job_id = attempt.message.job_id;
        let instance_id = &launched.instance_id;
        let parameter = names::jit_parameter(&self.config.deployment, instance_id);
        let owner: Vec<(String, String)> = self
            .config
            .instance_arn_prefix
            .iter()
            .map(|prefix| (names::JIT_OWNER_TAG.to_string(), format!("{prefix}{instance_id}")))
            .collect();
        if let Err(error) = self.ports.parameters.put_secure(&parameter, &jit.encoded, &owner).await {
            let delay = if error.is_retryable() {
                TRANSIENT_DELAY_SECONDS
            } else {
                tracing::error!(job_id, %error, "the JIT config cannot be stored; no runner can start until this is fixed");
                self.config.retry_delay_seconds
            };
            return Err(SetupFailure::new(
                format!("cannot store the JIT config: {error}"),
                delay,
                Some(jit.runner_id),
            ));
        }
        Ok(parameter)
    }

    /// SendCommand of the runner script, tried again with backoff while the instance's SSM agent
    /// registers, until the start deadline (or the Lambda's, less the margin kept for cleaning up).
    async fn send_command(
        &self,
        attempt: &Attempt<'_>,
        launched: &Launched,
        parameter: &str,
        runner_id: u64,
    ) -> Result<SentCommand, SetupFailure> {
        let request = CommandRequest {
            instance_id: launched.instance_id.clone(),
            commands: runner_commands(
                &self.config.runner_script.bucket,
                &self.config.runner_script.key,
                parameter,
                &script_env(attempt.release, attempt.template),
            ),
            execution_timeout_seconds: self.config.command.timeout_seconds,
            log_group: self.config.command.log_group.clone(),
            comment: names::command_comment(&self.config.deployment, attempt.message.job_id),
        };
        let Attempt { started, deadline, .. } = *attempt;
        let give_up = (started + Duration::from_secs(self.config.command.start_deadline_seconds.into()))
            .min(deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline));
        let mut delay = self.backoff.first;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match self.ports.commands.send(&request).await {
                Ok(command_id) => return Ok(SentCommand { command_id, attempts }),
                Err(CommandError::NotReady(_)) if Instant::now() + delay < give_up => {
                    if !delay.is_zero() {
                        tokio::time::sleep(jittered(delay)).await;
                    }
                    delay = (delay * 2).min(self.backoff.max);
                }
                Err(error) => {
                    return Err(SetupFailure::new(
                        format!("runner not started after {attempts} attempt(s): {error}"),
                        TRANSIENT_DELAY_SECONDS,
                        Some(runner_id),
                    ));
                }
            }
        }
    }

    /// Tags the instance with its command and runner: the tag that says it was started.
    async fn tag_with_command(
        &self,
        launched: &Launched,
        command_id: &str,
        runner_id: u64,
    ) -> Result<(), SetupFailure> {
        let tags = vec![
            (TAG_COMMAND_ID.to_string(), command_id.to_string()),
            (TAG_RUNNER_ID.to_string(), runner_id.to_string()),
        ];
        if let Err(error) = self.ports.fleet.tag(&launched.instance_id, &tags).await {
            return Err(SetupFailure::new(
                format!("cannot tag the instance with its command: {error}"),
                TRANSIENT_DELAY_SECONDS,
                Some(runner_id),
            ));
        }
        Ok(())
    }

    async fn launch(&self, attempt: &Attempt<'_>) -> Result<Launched, FleetError> {
        let Attempt {
            message,
            template,
            receive_count,
            slot,
            ..
        } = *attempt;
        let deployment = &self.config.deployment;
        let tags = vec![
            (TAG_DEPLOYMENT.to_string(), deployment.clone()),
            (TAG_TEMPLATE.to_string(), message.template.clone()),
            (TAG_SLOT.to_string(), slot.to_string()),
            (TAG_JOB_ID.to_string(), message.job_id.to_string()),
            (TAG_REPOSITORY.to_string(), names::tag_value(&message.repository)),
            (TAG_RUN_ID.to_string(), message.run_id.to_string()),
            (TAG_RUN_ATTEMPT.to_string(), message.run_attempt.to_string()),
            (TAG_JOB_NAME.to_string(), names::tag_value(&message.job_name)),
            (TAG_WORKFLOW.to_string(), names::tag_value(&message.workflow_name)),
            (TAG_RELAUNCHES.to_string(), message.relaunches.to_string()),
            (TAG_RUNNER_FAILURES.to_string(), message.runner_failures.to_string()),
            (
                "Name".to_string(),
                names::tag_value(&format!("{deployment}-{}-{}", message.template, message.job_id)),
            ),
        ];
        let request = |capacity: Capacity| LaunchRequest {
            launch_template: template.launch_template.clone(),
            instance_types: template.instance_types.clone(),
            subnet_ids: template.subnet_ids.clone(),
            capacity,
            spot_max_price: template.spot_max_price.clone(),
            client_token: names::client_token(deployment, message, receive_count, capacity),
            tags: tags.clone(),
        };
        // The re-run of an interrupted job, and any job of a template backing off spot, go
        // on-demand first (`interruptions`).
        let first = crate::interruptions::first_capacity(&self.ports, message)
            .await
            .map_err(FleetError::Unavailable)?;
        if let (Capacity::OnDemand, why) = first {
            if why == Some(crate::interruptions::OnDemandFirst::Backoff) {
                tracing::info!(
                    job_id = message.job_id,
                    template = message.template,
                    "template `{}` is backing off spot; launching on-demand",
                    message.template
                );
            }
            return self.launch_live(request(Capacity::OnDemand)).await;
        }
        match self.launch_live(request(Capacity::Spot)).await {
            Err(FleetError::NoCapacity(reason)) => {
                let now = std::time::SystemTime::now();
                let key = format!(
                    "capacity#{}#{}",
                    message.job_id,
                    now.duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis()
                );
                crate::interruptions::spot_lost(&self.config, &self.ports, &message.template, &key, now).await;
                if !template.on_demand_fallback {
                    return Err(FleetError::NoCapacity(reason));
                }
                tracing::info!(
                    job_id = message.job_id,
                    reason,
                    "no spot capacity in any pool; launching on-demand"
                );
                self.launch_live(request(Capacity::OnDemand)).await
            }
            other => other,
        }
    }

    /// A ClientToken answers the instance it first launched, even after that instance ended: a
    /// job moved back from the DLQ counts its receives from 1 again and would get the ended
    /// instances of its first receives. A token spent on an ended instance is replaced by one
    /// derived from it and that instance, so handlers racing on one message still meet on one.
    async fn launch_live(&self, mut request: LaunchRequest) -> Result<Launched, FleetError> {
        const SPENT_TOKENS: usize = 8;
        for _ in 0..SPENT_TOKENS {
            let launched = self.ports.fleet.launch(&request).await?;
            let query = InstanceQuery {
                instance_id: Some(launched.instance_id.clone()),
                with_terminated: true,
                ..Default::default()
            };
            // Ended only when EC2 lists it as ended: an instance missing from the listing right
            // after its launch is not visible yet (EC2's reads are eventually consistent), and a
            // new token then would launch a second one. When EC2 cannot say, go on: SendCommand
            // finds out, and the failure path cleans up.
            let ended = matches!(
                self.ports.fleet.instances(&self.config.deployment, &query).await,
                Ok(found) if found.iter().any(|i| !i.state.is_live())
            );
            if !ended {
                return Ok(launched);
            }
            use sha2::{Digest, Sha256};
            let next = Sha256::digest(format!("{}/{}", request.client_token, launched.instance_id));
            request.client_token = hex::encode(&next[..24]);
        }
        Err(FleetError::Unavailable(format!(
            "{SPENT_TOKENS} launch tokens in a row answered instances that had ended"
        )))
    }

    /// An instance with no command tag, older than the start deadline: its handler died.
    fn is_abandoned(&self, instance: &Instance) -> bool {
        instance
            .launched_at
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .is_some_and(|age| age > self.start_limit())
    }

    /// What another slot claim says about this record's claim. A fresh claim of the same job
    /// (whatever its relaunch: a duplicate of an older relaunch's message is as much a second
    /// launch) means another handler is launching it; an old one of the same relaunch is its dead
    /// claimant's leftover; an old one of another relaunch is an instance's lasting claim.
    fn same_job(&self, own: &SlotClaim, found: &SlotClaim) -> SameJob {
        if found.job_id != own.job_id {
            return SameJob::No;
        }
        let old = SystemTime::now()
            .duration_since(found.at)
            .is_ok_and(|age| age > self.start_limit());
        match (old, found.relaunches == own.relaunches) {
            (false, _) => SameJob::Launching,
            (true, true) => SameJob::Leftover,
            (true, false) => SameJob::No,
        }
    }

    /// Longer than a handler takes from its slot claim to its command sent.
    fn start_limit(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.command.start_deadline_seconds) + 60)
    }
}

/// What the runner script is told besides the JIT parameter's name: the release to install and
/// the template's packages.
fn script_env(release: &RunnerRelease, template: &Template) -> Vec<(&'static str, String)> {
    let mut env = release.script_env();
    env.push(("SOPHONS_PACKAGES", template.packages.join(" ")));
    env.push(("SOPHONS_DOCKER", if template.docker { "1" } else { "0" }.into()));
    env
}

/// A service did not answer: look again shortly.
fn transient(reason: String) -> Outcome {
    Outcome::HandedBack {
        kind: HandBack::Unavailable,
        delay_seconds: TRANSIENT_DELAY_SECONDS,
        reason,
    }
}

/// Another launch of this job is in flight: look again shortly.
fn in_flight(reason: String) -> Outcome {
    Outcome::HandedBack {
        kind: HandBack::InFlight,
        delay_seconds: TRANSIENT_DELAY_SECONDS,
        reason,
    }
}

/// Up to a quarter more, so that handlers retrying together spread out.
fn jittered(delay: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    delay + delay.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

/// Milliseconds since the webhook took the delivery (0 when unknown).
fn queued_ms(received_at: &str) -> u64 {
    crate::metrics::since(received_at).map_or(0, |d| d.as_millis() as u64)
}
