//! The simulation: create-runner, stop-runner, the sweep and move-jobs together, over the in-memory
//! fakes with faults injected on every port, in simulated minutes, seeded and reproducible.
//!
//! The driver owns everything the flows do not: SQS (visibility, receive counts, the DLQ after
//! three receives), GitHub's side of jobs, runs (one job each, re-run as a new attempt) and
//! runners, the boxes themselves (EC2 takes some spot ones back while their job runs), EventBridge
//! and the schedules. Handlers run interleaved at their port calls and can be killed between any
//! two. Invariants are checked as the run goes (at every launch) and at the end, after the sweep
//! and move-jobs have run until nothing moves: nothing lost, doubled or leaked, max_runners kept,
//! and every job interrupted while it ran re-run exactly once, on-demand, and nothing else re-run.
//!
//! `SOPHONS_SIM_SEED=123 cargo test -p sophons-core --test simulation` reruns one seed;
//! `SOPHONS_SIM_JOBS` sets the jobs per seed; `SOPHONS_SOAK_JOBS` the total of the ignored soak.

mod common;

use common::Rng;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::json;
use sophons_core::commands::{CommandError, CommandRequest, CommandStatus, Commands};
use sophons_core::config::Config;
use sophons_core::create::{Backoff, CreateRunner, Outcome};
use sophons_core::fakes::{FakeCommands, FakeFleet, FakeGithub, FakeParameters, Lag};
use sophons_core::fleet::{
    Capacity, Fleet, FleetError, Instance, InstanceQuery, LaunchRequest, Launched, TAG_INTERRUPTION_RECORDED,
    TAG_JOB_ID, TAG_RELAUNCHED, TAG_RELAUNCHES, TAG_RUNNER_FAILURES, TAG_TEMPLATE, pool_errors_outcome,
};
use sophons_core::github::{
    DeliveriesPage, Github, GithubError, Hook, HookDelivery, JitConfig, JobDetails, JobStatus, RunDetails, Runner,
    RunnerScope,
};
use sophons_core::interruptions::{FakeInterruptions, Interrupted, Interruptions, InterruptionsError, Ran, Rerun};
use sophons_core::job::{JobMessage, MESSAGE_VERSION, now_rfc3339, rfc3339};
use sophons_core::names;
use sophons_core::parameters::{Parameters, ParametersError};
use sophons_core::queue::{Queue, QueueError, Received};
use sophons_core::redeliver::Redeliver;
use sophons_core::redrive::MoveJobs;
use sophons_core::slots::{ClaimAnswer, ClaimedSlot, FakeSlots, SlotClaim, Slots, SlotsError};
use sophons_core::stop::{self, SPOT_WARNING_DETAIL_TYPE, SSM_DETAIL_TYPE, STATE_CHANGE_DETAIL_TYPE, StopRunner};
use sophons_core::waiting::{FakeWaiting, Parked, Waiting, WaitingError};
use sophons_core::webhook::Webhook;
use tokio::time::Instant;

const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs";
const REPOSITORY: &str = "my-org/app";
/// The jobs queue's redrive policy (terraform `max_receive_count`).
const MAX_RECEIVES: u32 = 3;
/// The jobs queue's visibility timeout: 6 × create-runner's 360 s timeout.
const VISIBILITY_MINUTES: u64 = 36;
const SWEEP_EVERY: u64 = 15;
const MOVE_JOBS_EVERY: u64 = 60;
/// Event source mapping: invocations at once, records per batch, batches per simulated minute.
const CONCURRENCY: usize = 2;
const BATCH_SIZE: u32 = 10;
const BATCH_ROUNDS: usize = 3;
/// Jobs arrive at about this many per simulated minute.
const ARRIVALS_PER_MINUTE: f64 = 2.5;
/// After the last arrival faults go on this long, then the bad day ends and the system drains.
const FAULT_TAIL_MINUTES: u64 = 120;
/// Draining longer than this is a failure: something never settles.
const DRAIN_LIMIT_MINUTES: u64 = 3 * 24 * 60;

/// How often each fault strikes (per call of the port, or per job / box / event).
#[derive(Clone, Copy)]
struct Rates {
    handler_killed: f64,
    interleave: f64,
    ec2_throttled: f64,
    insufficient_capacity: f64,
    quota: f64,
    timeout: f64,
    not_ready: f64,
    ssm_failed: f64,
    ssm_throttled: f64,
    github_5xx: f64,
    github_rate_limited: f64,
    sqs_failed: f64,
    duplicate_delivery: f64,
    /// A delivery of a queued job that never reached the webhook (a 5xx, a throttled burst, no
    /// answer): GitHub records it failed, and only a redelivery brings the job.
    delivery_failed: f64,
    event_lost: f64,
    event_repeated: f64,
    cancelled_while_queued: f64,
    taken_elsewhere: f64,
    taken_by_another_job: f64,
    bad_ami: f64,
    spot_reclaimed: f64,
    /// EC2 takes a spot instance back while its runner runs a job (per job taken on spot): the
    /// two-minute warning, then the end; GitHub fails the job a few minutes later.
    spot_reclaimed_running: f64,
    /// The warning never reaches stop-runner, or reaches it minutes after the instance ended.
    warning_lost: f64,
    warning_late: f64,
    /// The state change to `terminated` never reaches stop-runner.
    state_change_lost: f64,
    /// GitHub refuses a re-run (403) though the run it showed was completed: its views lag.
    rerun_refused: f64,
    /// A call to the interruptions table that fails (throttled, 5xx).
    interruptions_failed: f64,
    /// A launch whose instance is missing from listings until the next minute.
    listing_late: f64,
    /// A terminated instance listed as it was for the rest of the minute (then shutting-down).
    ended_late: f64,
    /// Tags written after the launch shown a minute late.
    tags_late: f64,
    /// A no-capacity answer also names pools that do not offer the type (`Unsupported`).
    pools_unsupported: f64,
    /// A job GitHub never gives to our runners (runner group not granted to the repository).
    unroutable: f64,
}

const RATES: Rates = Rates {
    handler_killed: 0.004,
    interleave: 0.3,
    ec2_throttled: 0.03,
    insufficient_capacity: 0.08,
    quota: 0.02,
    timeout: 0.01,
    not_ready: 0.3,
    ssm_failed: 0.02,
    ssm_throttled: 0.02,
    github_5xx: 0.03,
    github_rate_limited: 0.02,
    sqs_failed: 0.02,
    duplicate_delivery: 0.05,
    delivery_failed: 0.03,
    event_lost: 0.05,
    event_repeated: 0.05,
    cancelled_while_queued: 0.05,
    taken_elsewhere: 0.05,
    taken_by_another_job: 0.05,
    bad_ami: 0.03,
    spot_reclaimed: 0.02,
    spot_reclaimed_running: 0.02,
    warning_lost: 0.2,
    warning_late: 0.2,
    state_change_lost: 0.2,
    rerun_refused: 0.1,
    interruptions_failed: 0.02,
    listing_late: 0.3,
    ended_late: 0.3,
    tags_late: 0.2,
    pools_unsupported: 0.5,
    unroutable: 0.005,
};

/// How create-runner is invoked: one record at a time, or several invocations at once (the
/// event source mapping's concurrency), interleaving at every call of a port.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serial,
    Concurrent,
    /// Odd seeds concurrent, even seeds serial (the soak).
    Alternating,
}

// ---------------------------------------------------------------------------------------------
// Randomness, time, faults

tokio::task_local! {
    /// The Lambda invocation a handler future belongs to; killing it drops all its futures.
    static INVOCATION: u64;
}

/// What every fault-injecting port shares: the PRNG, the simulated clock, the fault counts and
/// the bookkeeping the invariants are checked against.
struct Chaos {
    rng: Mutex<Rng>,
    /// Faults strike only while the bad day lasts; interleaving goes on regardless.
    on: AtomicBool,
    /// Simulated minutes.
    now: AtomicU64,
    rates: Rates,
    faults: Mutex<BTreeMap<&'static str, u64>>,
    killed: Mutex<BTreeSet<u64>>,
    ledger: Mutex<Ledger>,
    max_runners: BTreeMap<String, usize>,
}

#[derive(Default)]
struct Ledger {
    /// Simulated minute of each instance's launch: its age for the flows.
    launched_at: HashMap<String, u64>,
    /// Live (pending/running) instances: job id and template.
    live: BTreeMap<String, (u64, String)>,
    /// The launch slot each instance was launched with.
    slot_of: BTreeMap<String, String>,
    /// `InvalidInstanceId` answers still to give per new instance (the agent registering).
    not_ready: HashMap<String, u32>,
    /// Commands SSM took, for the driver to start boxes: (command id, instance id).
    commands: Vec<(String, String)>,
    violations: Vec<String>,
    launches: u64,
    retries: u64,
    /// Simulated minute of each last write: JIT parameters by name, launch-slot claims as `slot:<template>/<n>`.
    claims: HashMap<String, u64>,
    /// Each job's launches: the instance and the capacity its launch request asked for.
    launched_for: HashMap<u64, Vec<(String, Capacity)>>,
    /// Jobs whose last spot launch EC2 refused for capacity: an on-demand launch next is the fallback.
    spot_refused: BTreeSet<u64>,
    /// The jobs GitHub made by re-running an interrupted one (new attempts).
    reruns: BTreeSet<u64>,
    /// Every re-run the sweep asked GitHub for, in order.
    rerun_calls: Vec<RerunCall>,
    /// Simulated minute GitHub started and completed each job (its `started_at`, `completed_at`).
    started_at: HashMap<u64, u64>,
    completed_at: HashMap<u64, u64>,
    backoffs_started: u64,
    backoffs_ended: u64,
    on_demand_for_backoff: u64,
}

/// One `rerun_job` call and what came of it.
#[derive(Debug, Clone)]
struct RerunCall {
    minute: u64,
    job_id: u64,
    answer: RerunAnswer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RerunAnswer {
    /// GitHub made a new attempt (and the caller heard so, or its answer was lost).
    Taken { answer_lost: bool },
    /// GitHub's 403: the run has not completed (or its views lagged).
    Refused,
    /// A 5xx or the rate limit: GitHub did nothing.
    Failed,
}

impl Chaos {
    fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    fn draw(&self, n: u64) -> u64 {
        self.rng.lock().unwrap().below(n)
    }

    fn chance(&self, p: f64) -> bool {
        self.rng.lock().unwrap().chance(p)
    }

    /// Whether a fault of `kind` strikes now; counted when it does.
    fn fault(&self, kind: &'static str, p: f64) -> bool {
        let on = self.on.load(Ordering::Relaxed);
        let struck = self.chance(p) && on;
        if struck {
            self.count(kind);
        }
        struck
    }

    fn count(&self, kind: &'static str) {
        *self.faults.lock().unwrap().entry(kind).or_default() += 1;
    }

    fn violation(&self, what: String) {
        let now = self.now();
        self.ledger
            .lock()
            .unwrap()
            .violations
            .push(format!("minute {now}: {what}"));
    }

    fn is_killed(&self, invocation: u64) -> bool {
        self.killed.lock().unwrap().contains(&invocation)
    }

    /// A point between two steps of a handler: another handler may run first, or the handler's
    /// whole invocation may be killed here (its futures are dropped by the driver).
    async fn step(&self) {
        let killed = self.fault("handler killed", self.rates.handler_killed);
        let interleave = self.chance(self.rates.interleave);
        if killed && let Ok(invocation) = INVOCATION.try_with(|id| *id) {
            self.killed.lock().unwrap().insert(invocation);
            std::future::pending::<()>().await;
        }
        if interleave {
            YieldOnce(false).await;
        }
    }

    /// An instance the flows see, aged in simulated time. Ages are kept half a minute short of
    /// the simulated minute so that wall-clock drift during a run never tips a comparison.
    fn aged(&self, mut instance: Instance) -> Instance {
        let launched = self.ledger.lock().unwrap().launched_at.get(&instance.id).copied();
        if let Some(minute) = launched {
            let age = Duration::from_secs(self.now().saturating_sub(minute) * 60);
            instance.launched_at = Some(SystemTime::now() + Duration::from_secs(30) - age);
        }
        instance
    }

    /// Bookkeeping of a launch (asked for on `capacity`), and the invariants a launch could break.
    fn launched(&self, instance: &Instance, capacity: Capacity) {
        let mut ledger = self.ledger.lock().unwrap();
        if !instance.state.is_live() || ledger.live.contains_key(&instance.id) {
            return;
        }
        let job: u64 = instance.tag(TAG_JOB_ID).and_then(|id| id.parse().ok()).unwrap_or(0);
        let template = instance.tag(TAG_TEMPLATE).unwrap_or_default().to_string();
        ledger.launches += 1;
        ledger
            .launched_for
            .entry(job)
            .or_default()
            .push((instance.id.clone(), capacity));
        ledger.launched_at.insert(instance.id.clone(), self.now());
        ledger.live.insert(instance.id.clone(), (job, template.clone()));
        ledger.slot_of.insert(
            instance.id.clone(),
            instance.tag("sophons:slot").unwrap_or("none").to_string(),
        );
        let now = self.now();
        let others: Vec<String> = ledger
            .live
            .iter()
            .filter(|(id, (j, _))| *j == job && **id != instance.id)
            .map(|(id, _)| id.clone())
            .collect();
        if !others.is_empty() {
            ledger.violations.push(format!(
                "minute {now}: job {job} has two live instances at once: {} and {others:?}",
                instance.id
            ));
        }
        let live = ledger.live.values().filter(|(_, t)| *t == template).count();
        let max = self.max_runners.get(&template).copied().unwrap_or(0);
        if live > max {
            let beside: Vec<String> = ledger
                .live
                .iter()
                .filter(|(id, (_, t))| *t == template && **id != instance.id)
                .map(|(id, (j, _))| {
                    format!(
                        "{id} (job {j}, slot {})",
                        ledger.slot_of.get(id).map_or("?", String::as_str)
                    )
                })
                .collect();
            ledger.violations.push(format!(
                "minute {now}: template `{template}` has {live} live instances, max_runners is {max}: job {job} \
                 launched {} (slot {}) beside {beside:?}",
                instance.id,
                instance.tag("sophons:slot").unwrap_or("none")
            ));
        }
    }

    fn ended(&self, instance_id: &str) {
        self.ledger.lock().unwrap().live.remove(instance_id);
    }

    fn is_live(&self, instance_id: &str) -> bool {
        self.ledger.lock().unwrap().live.contains_key(instance_id)
    }

    /// Simulated minute `minute` as the flows see it: as far behind the wall clock as it is
    /// behind the simulated now (as `aged` does for instances).
    fn wall_time(&self, minute: u64) -> SystemTime {
        SystemTime::now() - Duration::from_secs(self.now().saturating_sub(minute) * 60)
    }
}

/// Pending once, then ready: hands the turn to the next handler.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting ports

struct ChaosFleet {
    inner: Arc<FakeFleet>,
    chaos: Arc<Chaos>,
    /// To tell a launch on-demand because of a back-off from the others.
    interruptions: Arc<FakeInterruptions>,
}

impl ChaosFleet {
    /// Counts a new on-demand launch made because its template was backing off spot: neither the
    /// re-run of an interrupted job nor the fallback after a spot launch refused for capacity.
    fn count_backoff_launch(&self, instance: &Instance, capacity: Capacity) {
        let job: u64 = instance.tag(TAG_JOB_ID).and_then(|id| id.parse().ok()).unwrap_or(0);
        let template = instance.tag(TAG_TEMPLATE).unwrap_or_default();
        let mut ledger = self.chaos.ledger.lock().unwrap();
        let fallback = ledger.spot_refused.remove(&job);
        if capacity != Capacity::OnDemand || fallback || ledger.reruns.contains(&job) {
            return;
        }
        let backing_off = self
            .interruptions
            .backoffs()
            .now()
            .and_then(Result::ok)
            .unwrap_or_default()
            .iter()
            .any(|(t, until)| t == template && *until > SystemTime::now());
        if backing_off {
            ledger.on_demand_for_backoff += 1;
        }
    }
}

#[async_trait]
impl Fleet for ChaosFleet {
    async fn launch(&self, request: &LaunchRequest) -> Result<Launched, FleetError> {
        let chaos = &self.chaos;
        let rates = chaos.rates;
        chaos.step().await;
        if chaos.fault("EC2 throttled", rates.ec2_throttled) {
            return Err(FleetError::Unavailable(
                "RequestLimitExceeded: Request limit exceeded.".into(),
            ));
        }
        // Errors inside CreateFleet's answer: the fake keeps them with the token, as EC2 does.
        let mut fault = None;
        if request.capacity == Capacity::Spot
            && chaos.fault("InsufficientInstanceCapacity", rates.insufficient_capacity)
        {
            let mut pools = vec![(
                "InsufficientInstanceCapacity".to_string(),
                "There is no Spot capacity available that matches your request.".to_string(),
            )];
            if chaos.fault("Unsupported pools beside capacity errors", rates.pools_unsupported) {
                pools.push((
                    "Unsupported".to_string(),
                    "The requested configuration is currently not supported.".to_string(),
                ));
            }
            fault = Some(pool_errors_outcome(&pools));
        } else if chaos.fault("quota (VcpuLimitExceeded)", rates.quota) {
            fault = Some(FleetError::NoCapacity("VcpuLimitExceeded: vCPU quota reached".into()));
        }
        let answer_lost = chaos.fault("EC2 timeout after the launch", rates.timeout);
        let launched = match self.inner.launch_or_fail(request, fault) {
            Ok(launched) => launched,
            Err(error) => {
                if request.capacity == Capacity::Spot
                    && matches!(error, FleetError::NoCapacity(_))
                    && let Some(job) = request
                        .tags
                        .iter()
                        .find(|(key, _)| key == TAG_JOB_ID)
                        .and_then(|(_, id)| id.parse().ok())
                {
                    chaos.ledger.lock().unwrap().spot_refused.insert(job);
                }
                return Err(error);
            }
        };
        if let Some(instance) = self.inner.instance(&launched.instance_id) {
            let fresh = !chaos.ledger.lock().unwrap().launched_at.contains_key(&instance.id);
            chaos.launched(&instance, request.capacity);
            if fresh {
                self.count_backoff_launch(&instance, request.capacity);
            }
            if fresh && chaos.fault("InvalidInstanceId after launch", rates.not_ready) {
                let times = 1 + chaos.draw(3) as u32;
                chaos
                    .ledger
                    .lock()
                    .unwrap()
                    .not_ready
                    .insert(instance.id.clone(), times);
            }
        }
        chaos.step().await;
        if answer_lost {
            return Err(FleetError::Unavailable("timeout waiting for CreateFleet".into()));
        }
        Ok(launched)
    }

    async fn instances(&self, deployment: &str, query: &InstanceQuery) -> Result<Vec<Instance>, FleetError> {
        self.chaos.step().await;
        if self.chaos.fault("EC2 throttled", self.chaos.rates.ec2_throttled) {
            return Err(FleetError::Unavailable(
                "RequestLimitExceeded: Request limit exceeded.".into(),
            ));
        }
        let found = self.inner.instances(deployment, query).await?;
        Ok(found.into_iter().map(|i| self.chaos.aged(i)).collect())
    }

    async fn tag(&self, instance_id: &str, tags: &[(String, String)]) -> Result<(), FleetError> {
        self.chaos.step().await;
        if self.chaos.fault("EC2 throttled", self.chaos.rates.ec2_throttled) {
            return Err(FleetError::Unavailable(
                "RequestLimitExceeded: Request limit exceeded.".into(),
            ));
        }
        let answer_lost = self.chaos.fault("EC2 timeout after tagging", self.chaos.rates.timeout);
        self.inner.tag(instance_id, tags).await?;
        self.chaos.step().await;
        if answer_lost {
            return Err(FleetError::Unavailable("timeout waiting for CreateTags".into()));
        }
        Ok(())
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), FleetError> {
        self.chaos.step().await;
        if self.chaos.fault("EC2 throttled", self.chaos.rates.ec2_throttled) {
            return Err(FleetError::Unavailable(
                "RequestLimitExceeded: Request limit exceeded.".into(),
            ));
        }
        self.inner.terminate(instance_id).await?;
        self.chaos.ended(instance_id);
        self.chaos.step().await;
        Ok(())
    }

    async fn cancel_spot_request(&self, request_id: &str) -> Result<(), FleetError> {
        self.chaos.step().await;
        if self.chaos.fault("EC2 throttled", self.chaos.rates.ec2_throttled) {
            return Err(FleetError::Unavailable(
                "RequestLimitExceeded: Request limit exceeded.".into(),
            ));
        }
        self.inner.cancel_spot_request(request_id).await
    }
}

struct ChaosCommands {
    inner: Arc<FakeCommands>,
    chaos: Arc<Chaos>,
}

#[async_trait]
impl Commands for ChaosCommands {
    async fn send(&self, request: &CommandRequest) -> Result<String, CommandError> {
        let chaos = &self.chaos;
        // SSM answers InvalidInstanceId for an instance that is gone, for as long as it is asked.
        // No draw here: how often the backoff asks depends on the wall clock.
        if !chaos.is_live(&request.instance_id) {
            return Err(CommandError::NotReady(request.instance_id.clone()));
        }
        chaos.step().await;
        if chaos.fault("SSM throttled", chaos.rates.ssm_throttled) {
            return Err(CommandError::Failed("ThrottlingException: Rate exceeded".into()));
        }
        {
            let mut ledger = chaos.ledger.lock().unwrap();
            if let Some(left) = ledger.not_ready.get_mut(&request.instance_id)
                && *left > 0
            {
                *left -= 1;
                ledger.retries += 1;
                return Err(CommandError::NotReady(request.instance_id.clone()));
            }
        }
        let answer_lost = chaos.fault("SSM timeout after SendCommand", chaos.rates.timeout);
        let command_id = self.inner.send(request).await?;
        chaos
            .ledger
            .lock()
            .unwrap()
            .commands
            .push((command_id.clone(), request.instance_id.clone()));
        chaos.step().await;
        if answer_lost {
            return Err(CommandError::Failed("timeout waiting for SendCommand".into()));
        }
        Ok(command_id)
    }

    async fn status(&self, command_id: &str, instance_id: &str) -> Result<CommandStatus, CommandError> {
        self.chaos.step().await;
        if self.chaos.fault("SSM 5xx", self.chaos.rates.ssm_failed) {
            return Err(CommandError::Failed("InternalServerError".into()));
        }
        self.inner.status(command_id, instance_id).await
    }
}

struct ChaosParameters {
    inner: Arc<FakeParameters>,
    chaos: Arc<Chaos>,
}

#[async_trait]
impl Parameters for ChaosParameters {
    async fn get(&self, name: &str) -> Result<String, ParametersError> {
        self.inner.get(name).await
    }

    async fn put_secure(&self, name: &str, value: &str, tags: &[(String, String)]) -> Result<(), ParametersError> {
        self.chaos.step().await;
        if self.chaos.fault("SSM throttled", self.chaos.rates.ssm_throttled) {
            return Err(ParametersError::Throttled(name.into()));
        }
        let answer_lost = self
            .chaos
            .fault("SSM timeout after PutParameter", self.chaos.rates.timeout);
        self.inner.put_secure(name, value, tags).await?;
        let minute = self.chaos.now();
        self.chaos
            .ledger
            .lock()
            .unwrap()
            .claims
            .insert(name.to_string(), minute);
        self.chaos.step().await;
        if answer_lost {
            return Err(ParametersError::Failed {
                name: name.into(),
                reason: "timeout".into(),
            });
        }
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), ParametersError> {
        self.chaos.step().await;
        if self.chaos.fault("SSM 5xx", self.chaos.rates.ssm_failed) {
            return Err(ParametersError::Failed {
                name: name.into(),
                reason: "InternalServerError".into(),
            });
        }
        self.inner.delete(name).await
    }

    async fn list(&self, path: &str) -> Result<Vec<sophons_core::parameters::Listed>, ParametersError> {
        self.chaos.step().await;
        if self.chaos.fault("SSM throttled", self.chaos.rates.ssm_throttled) {
            return Err(ParametersError::Throttled(path.into()));
        }
        // Last writes in simulated time (as `Chaos::aged` does for instances).
        let written = self.chaos.ledger.lock().unwrap().claims.clone();
        let now = self.chaos.now();
        Ok(self
            .inner
            .list(path)
            .await?
            .into_iter()
            .map(|mut listed| {
                if let Some(minute) = written.get(&listed.name) {
                    let age = Duration::from_secs(now.saturating_sub(*minute) * 60);
                    let at = SystemTime::now() + Duration::from_secs(30) - age;
                    listed.modified = Some(at);
                }
                listed
            })
            .collect())
    }
}

/// The launch-slot table, with DynamoDB's faults (rarer there than SSM's; drawn at SSM's rates
/// all the same) and claim times in simulated time.
struct ChaosSlots {
    inner: Arc<FakeSlots>,
    chaos: Arc<Chaos>,
}

impl ChaosSlots {
    fn key(template: &str, slot: u32) -> String {
        format!("slot:{template}/{slot}")
    }

    /// A claim as the flows see it: its time in simulated time (as `Chaos::aged` does for
    /// instances).
    fn aged(&self, template: &str, slot: u32, claim: SlotClaim) -> SlotClaim {
        let claimed = self
            .chaos
            .ledger
            .lock()
            .unwrap()
            .claims
            .get(&Self::key(template, slot))
            .copied();
        match claimed {
            Some(minute) => {
                let age = Duration::from_secs(self.chaos.now().saturating_sub(minute) * 60);
                SlotClaim {
                    at: SystemTime::now() + Duration::from_secs(30) - age,
                    ..claim
                }
            }
            None => claim,
        }
    }
}

#[async_trait]
impl Slots for ChaosSlots {
    async fn claim(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<ClaimAnswer, SlotsError> {
        self.chaos.step().await;
        if self.chaos.fault("DynamoDB throttled", self.chaos.rates.ssm_throttled) {
            return Err(SlotsError::Throttled("slots".into()));
        }
        let answer_lost = self
            .chaos
            .fault("DynamoDB timeout after PutItem", self.chaos.rates.timeout);
        let answer = match self.inner.claim(template, slot, claim).await? {
            ClaimAnswer::Claimed => {
                let minute = self.chaos.now();
                self.chaos
                    .ledger
                    .lock()
                    .unwrap()
                    .claims
                    .insert(Self::key(template, slot), minute);
                ClaimAnswer::Claimed
            }
            ClaimAnswer::Held(found) => ClaimAnswer::Held(found.map(|c| self.aged(template, slot, c))),
        };
        self.chaos.step().await;
        if answer_lost {
            return Err(SlotsError::Failed {
                table: "slots".into(),
                reason: "timeout".into(),
            });
        }
        Ok(answer)
    }

    async fn get(&self, template: &str, slot: u32) -> Result<Option<SlotClaim>, SlotsError> {
        Ok(self
            .inner
            .get(template, slot)
            .await?
            .map(|c| self.aged(template, slot, c)))
    }

    /// The flows name a claim by the (simulated) time they read; the table keeps the real one.
    /// A claim of the same job and relaunch stands for it here.
    async fn release(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<bool, SlotsError> {
        self.chaos.step().await;
        if self.chaos.fault("DynamoDB 5xx", self.chaos.rates.ssm_failed) {
            return Err(SlotsError::Failed {
                table: "slots".into(),
                reason: "InternalServerError".into(),
            });
        }
        match self.inner.get(template, slot).await? {
            Some(held) if held.job_id == claim.job_id && held.relaunches == claim.relaunches => {
                self.inner.release(template, slot, &held).await
            }
            _ => Ok(false),
        }
    }

    async fn list(&self, template: Option<&str>) -> Result<Vec<ClaimedSlot>, SlotsError> {
        self.chaos.step().await;
        if self.chaos.fault("DynamoDB throttled", self.chaos.rates.ssm_throttled) {
            return Err(SlotsError::Throttled("slots".into()));
        }
        Ok(self
            .inner
            .list(template)
            .await?
            .into_iter()
            .map(|found| ClaimedSlot {
                claim: self.aged(&found.template, found.slot, found.claim),
                ..found
            })
            .collect())
    }
}

/// The waiting list, failing as DynamoDB does, and interleaving at every call. Wake marks age in
/// simulated time (as `ChaosSlots::aged` does for claims): the flows compare them with the wall
/// clock, which hardly moves while minutes are simulated.
struct ChaosWaiting {
    inner: Arc<FakeWaiting>,
    chaos: Arc<Chaos>,
    /// (template, place) → the mark as the fake keeps it, and the minute it was made.
    marks: Mutex<HashMap<(String, String), (SystemTime, u64)>>,
}

impl ChaosWaiting {
    fn fault(&self) -> Result<(), WaitingError> {
        if self
            .chaos
            .fault("DynamoDB waiting list failed", self.chaos.rates.ssm_throttled)
        {
            return Err(WaitingError::Failed {
                table: "waiting".into(),
                reason: "ThrottlingException".into(),
            });
        }
        Ok(())
    }

    /// A listed job as the flows see it: its mark in simulated time.
    fn aged(&self, template: &str, mut parked: Parked) -> Parked {
        let key = (template.to_string(), parked.place.clone());
        if let Some(real) = parked.woken_at
            && let Some((kept, minute)) = self.marks.lock().unwrap().get(&key)
            && *kept == real
        {
            let age = Duration::from_secs(self.chaos.now().saturating_sub(*minute) * 60);
            parked.woken_at = Some(SystemTime::now() - age);
        }
        parked
    }

    /// The mark as the fake keeps it, for a job read through `aged`.
    fn kept(&self, template: &str, parked: &Parked) -> Parked {
        let mut kept = parked.clone();
        let key = (template.to_string(), parked.place.clone());
        if parked.woken_at.is_some()
            && let Some((real, _)) = self.marks.lock().unwrap().get(&key)
        {
            kept.woken_at = Some(*real);
        }
        kept
    }
}

#[async_trait]
impl Waiting for ChaosWaiting {
    async fn park(&self, template: &str, place: &str, body: &str, delivery_id: &str) -> Result<(), WaitingError> {
        self.chaos.step().await;
        self.fault()?;
        self.inner.park(template, place, body, delivery_id).await
    }

    async fn oldest(&self, template: &str, limit: u32) -> Result<Vec<Parked>, WaitingError> {
        self.chaos.step().await;
        self.fault()?;
        let listed = self.inner.oldest(template, limit).await?;
        Ok(listed.into_iter().map(|parked| self.aged(template, parked)).collect())
    }

    async fn remove(&self, template: &str, parked: &Parked) -> Result<bool, WaitingError> {
        self.chaos.step().await;
        self.fault()?;
        self.inner.remove(template, parked).await
    }

    async fn mark_woken(&self, template: &str, parked: &Parked) -> Result<bool, WaitingError> {
        self.chaos.step().await;
        self.fault()?;
        let marked = self.inner.mark_woken(template, &self.kept(template, parked)).await?;
        if marked
            && let Some(now) = self
                .inner
                .listed(template)
                .into_iter()
                .find(|listed| listed.place == parked.place)
                .and_then(|listed| listed.woken_at)
        {
            self.marks
                .lock()
                .unwrap()
                .insert((template.to_string(), parked.place.clone()), (now, self.chaos.now()));
        }
        Ok(marked)
    }

    async fn remove_woken(&self, template: &str, place: &str) -> Result<(), WaitingError> {
        self.chaos.step().await;
        self.fault()?;
        self.inner.remove_woken(template, place).await
    }
}

struct ChaosGithub {
    inner: Arc<FakeGithub>,
    chaos: Arc<Chaos>,
}

impl ChaosGithub {
    fn failure(&self) -> Option<GithubError> {
        let rates = self.chaos.rates;
        if self.chaos.fault("GitHub 5xx", rates.github_5xx) {
            return Some(GithubError::Unavailable("502 Bad Gateway".into()));
        }
        if self.chaos.fault("GitHub rate limited", rates.github_rate_limited) {
            return Some(GithubError::RateLimited("403 API rate limit exceeded".into()));
        }
        None
    }

    /// A job with GitHub's times in simulated time, as the interruption records are
    /// (`FakeInterruptions::age`).
    fn aged(&self, mut job: JobDetails) -> JobDetails {
        let ledger = self.chaos.ledger.lock().unwrap();
        let at = |minute: Option<&u64>| minute.map(|minute| rfc3339(self.chaos.wall_time(*minute)));
        job.started_at = at(ledger.started_at.get(&job.id));
        job.completed_at = at(ledger.completed_at.get(&job.id));
        job
    }
}

#[async_trait]
impl Github for ChaosGithub {
    async fn job_status(&self, repository: &str, job_id: u64) -> Result<JobStatus, GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        self.inner.job_status(repository, job_id).await
    }

    async fn register_runner(
        &self,
        scope: &RunnerScope,
        name: &str,
        labels: &[String],
        runner_group_id: u64,
    ) -> Result<JitConfig, GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        let answer_lost = self
            .chaos
            .fault("GitHub timeout after registering", self.chaos.rates.timeout);
        let jit = self.inner.register_runner(scope, name, labels, runner_group_id).await?;
        self.chaos.step().await;
        if answer_lost {
            return Err(GithubError::Unavailable(
                "timeout waiting for generate-jitconfig".into(),
            ));
        }
        Ok(jit)
    }

    async fn runners(&self, scope: &RunnerScope) -> Result<Vec<Runner>, GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        Github::runners(self.inner.as_ref(), scope).await
    }

    async fn remove_runner(&self, scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        self.inner.remove_runner(scope, runner_id).await
    }

    async fn runner_downloads(
        &self,
        scope: &RunnerScope,
    ) -> Result<Vec<sophons_core::github::RunnerDownload>, GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        self.inner.runner_downloads(scope).await
    }

    async fn hook_deliveries(&self, hook: &Hook, cursor: Option<&str>) -> Result<DeliveriesPage, GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        self.inner.hook_deliveries(hook, cursor).await
    }

    async fn redeliver(&self, hook: &Hook, delivery_id: u64) -> Result<(), GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        self.inner.redeliver(hook, delivery_id).await
    }

    async fn job(&self, repository: &str, job_id: u64) -> Result<JobDetails, GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        let job = self.inner.job(repository, job_id).await?;
        Ok(self.aged(job))
    }

    async fn run_jobs(&self, repository: &str, run_id: u64) -> Result<Vec<JobDetails>, GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        let jobs = self.inner.run_jobs(repository, run_id).await?;
        Ok(jobs.into_iter().map(|job| self.aged(job)).collect())
    }

    async fn workflow_run(&self, repository: &str, run_id: u64) -> Result<RunDetails, GithubError> {
        self.chaos.step().await;
        if let Some(error) = self.failure() {
            return Err(error);
        }
        self.inner.workflow_run(repository, run_id).await
    }

    /// GitHub's rules are the fake's (403 before the run completed, only the latest attempt);
    /// each call is written down for the invariants, and the driver makes the new attempt's job.
    async fn rerun_job(&self, repository: &str, job_id: u64) -> Result<(), GithubError> {
        let chaos = &self.chaos;
        chaos.step().await;
        let answer = match self.failure() {
            Some(error) => Err(error),
            None if chaos.fault(
                "GitHub refused a re-run (403) of a run it showed completed",
                chaos.rates.rerun_refused,
            ) =>
            {
                Err(GithubError::Conflict(format!(
                    "403 the workflow run of job {job_id} is not completed yet"
                )))
            }
            None => self.inner.rerun_job(repository, job_id).await,
        };
        let answer_lost = answer.is_ok() && chaos.fault("GitHub timeout after re-running", chaos.rates.timeout);
        let call = RerunCall {
            minute: chaos.now(),
            job_id,
            answer: match &answer {
                Ok(()) => RerunAnswer::Taken { answer_lost },
                Err(GithubError::Conflict(_)) => RerunAnswer::Refused,
                Err(_) => RerunAnswer::Failed,
            },
        };
        chaos.ledger.lock().unwrap().rerun_calls.push(call);
        chaos.step().await;
        if answer_lost {
            return Err(GithubError::Unavailable("timeout waiting for the re-run".into()));
        }
        answer
    }
}

/// The interruptions table, failing as DynamoDB does and interleaving at every call. Its times
/// age with simulated time: the driver moves them back a minute every simulated minute.
struct ChaosInterruptions {
    inner: Arc<FakeInterruptions>,
    chaos: Arc<Chaos>,
}

impl ChaosInterruptions {
    async fn fault(&self) -> Result<(), InterruptionsError> {
        self.chaos.step().await;
        if self.chaos.fault(
            "DynamoDB interruptions table failed",
            self.chaos.rates.interruptions_failed,
        ) {
            return Err(InterruptionsError::Failed {
                table: "interruptions".into(),
                reason: "ThrottlingException".into(),
            });
        }
        Ok(())
    }

    /// A write's answer lost after DynamoDB took it.
    async fn answer_lost(&self) -> Result<(), InterruptionsError> {
        let lost = self
            .chaos
            .fault("DynamoDB timeout after PutItem", self.chaos.rates.timeout);
        self.chaos.step().await;
        if lost {
            return Err(InterruptionsError::Failed {
                table: "interruptions".into(),
                reason: "timeout".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Interruptions for ChaosInterruptions {
    async fn ran(&self, ran: &Ran) -> Result<(), InterruptionsError> {
        self.fault().await?;
        self.inner.ran(ran).await?;
        self.answer_lost().await
    }

    async fn ran_on(&self, instance_id: &str) -> Result<Option<Ran>, InterruptionsError> {
        self.fault().await?;
        self.inner.ran_on(instance_id).await
    }

    async fn record(&self, interrupted: &Interrupted) -> Result<bool, InterruptionsError> {
        self.fault().await?;
        let recorded = self.inner.record(interrupted).await?;
        self.answer_lost().await?;
        Ok(recorded)
    }

    async fn recorded(&self) -> Result<Vec<Interrupted>, InterruptionsError> {
        self.fault().await?;
        self.inner.recorded().await
    }

    async fn settle(&self, job_id: u64, instance_id: &str) -> Result<(), InterruptionsError> {
        self.fault().await?;
        self.inner.settle(job_id, instance_id).await
    }

    async fn claim_rerun(&self, rerun: &Rerun) -> Result<bool, InterruptionsError> {
        self.fault().await?;
        let claimed = self.inner.claim_rerun(rerun).await?;
        self.answer_lost().await?;
        Ok(claimed)
    }

    async fn release_rerun(&self, rerun: &Rerun) -> Result<(), InterruptionsError> {
        self.fault().await?;
        self.inner.release_rerun(rerun).await
    }

    async fn rerun_of(
        &self,
        repository: &str,
        run_id: u64,
        job_name: &str,
    ) -> Result<Option<Rerun>, InterruptionsError> {
        self.fault().await?;
        self.inner.rerun_of(repository, run_id, job_name).await
    }

    async fn spot_lost(
        &self,
        template: &str,
        key: &str,
        at: SystemTime,
        since: SystemTime,
        keep_for: Duration,
    ) -> Result<u32, InterruptionsError> {
        self.fault().await?;
        self.inner.spot_lost(template, key, at, since, keep_for).await
    }

    async fn start_backoff(
        &self,
        template: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, InterruptionsError> {
        self.fault().await?;
        let started = self.inner.start_backoff(template, until, now).await?;
        if started {
            self.chaos.ledger.lock().unwrap().backoffs_started += 1;
        }
        Ok(started)
    }

    async fn backoffs(&self) -> Result<Vec<(String, SystemTime)>, InterruptionsError> {
        self.fault().await?;
        self.inner.backoffs().await
    }

    async fn end_backoff(&self, template: &str, until: SystemTime) -> Result<bool, InterruptionsError> {
        self.fault().await?;
        let ended = self.inner.end_backoff(template, until).await?;
        if ended {
            self.chaos.ledger.lock().unwrap().backoffs_ended += 1;
        }
        Ok(ended)
    }
}

// ---------------------------------------------------------------------------------------------
// SQS

struct Message {
    id: u64,
    body: String,
    delivery_id: String,
    receives: u32,
    visible_at: u64,
    receipt: Option<String>,
}

#[derive(Default)]
struct Queues {
    jobs: Vec<Message>,
    dlq: Vec<Message>,
    next: u64,
    dlq_trips: u64,
}

/// SQS as create-runner, stop-runner and move-jobs see it: the jobs queue with visibility and
/// receive counts, the redrive to the DLQ after `MAX_RECEIVES`, and faults on every call.
struct SimQueue {
    state: Mutex<Queues>,
    chaos: Arc<Chaos>,
    dlq_url: String,
}

impl SimQueue {
    fn enqueue(&self, dlq: bool, body: &str, delivery_id: &str) -> u64 {
        let now = self.chaos.now();
        let mut state = self.state.lock().unwrap();
        state.next += 1;
        let message = Message {
            id: state.next,
            body: body.into(),
            delivery_id: delivery_id.into(),
            receives: 0,
            visible_at: now,
            receipt: None,
        };
        let id = message.id;
        if dlq {
            state.dlq.push(message);
        } else {
            state.jobs.push(message);
        }
        id
    }

    /// What the event source mapping receives: visible messages with their receive counts. A
    /// message received `MAX_RECEIVES` times goes to the DLQ instead.
    fn receive_jobs(&self, max: u32) -> Vec<(Received, u32)> {
        let now = self.chaos.now();
        let mut state = self.state.lock().unwrap();
        let mut taken = Vec::new();
        let mut index = 0;
        while index < state.jobs.len() && taken.len() < max as usize {
            if state.jobs[index].visible_at > now {
                index += 1;
                continue;
            }
            if state.jobs[index].receives >= MAX_RECEIVES {
                let mut message = state.jobs.remove(index);
                message.receives = 0;
                message.receipt = None;
                state.dlq_trips += 1;
                state.dlq.push(message);
                continue;
            }
            state.next += 1;
            let receipt = format!("receipt-{}", state.next);
            let message = &mut state.jobs[index];
            message.receives += 1;
            message.visible_at = now + VISIBILITY_MINUTES;
            message.receipt = Some(receipt.clone());
            taken.push((
                Received {
                    message_id: format!("message-{}", message.id),
                    receipt_handle: receipt,
                    body: message.body.clone(),
                    delivery_id: message.delivery_id.clone(),
                },
                message.receives,
            ));
            index += 1;
        }
        taken
    }

    /// What the event source mapping does with a record it was told succeeded.
    fn delete_job(&self, receipt: &str) {
        let mut state = self.state.lock().unwrap();
        state.jobs.retain(|m| m.receipt.as_deref() != Some(receipt));
    }

    fn bodies(&self, dlq: bool) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let queue = if dlq { &state.dlq } else { &state.jobs };
        queue.iter().map(|m| m.body.clone()).collect()
    }

    fn queue_of<'a>(&self, state: &'a mut Queues, queue_url: &str) -> Result<&'a mut Vec<Message>, QueueError> {
        if queue_url == QUEUE {
            Ok(&mut state.jobs)
        } else if queue_url == self.dlq_url {
            Ok(&mut state.dlq)
        } else {
            Err(QueueError::NotFound {
                queue_url: queue_url.into(),
            })
        }
    }

    fn refused(&self, queue_url: &str) -> Option<QueueError> {
        self.chaos
            .fault("SQS 5xx", self.chaos.rates.sqs_failed)
            .then(|| QueueError::Refused {
                queue_url: queue_url.into(),
                reason: "InternalError".into(),
            })
    }
}

#[async_trait]
impl Queue for SimQueue {
    async fn send(&self, queue_url: &str, body: &str, delivery_id: &str) -> Result<String, QueueError> {
        self.chaos.step().await;
        if let Some(error) = self.refused(queue_url) {
            return Err(error);
        }
        let id = self.enqueue(queue_url == self.dlq_url, body, delivery_id);
        self.chaos.step().await;
        Ok(format!("message-{id}"))
    }

    async fn hide(&self, queue_url: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
        self.chaos.step().await;
        if let Some(error) = self.refused(queue_url) {
            return Err(error);
        }
        let now = self.chaos.now();
        let mut state = self.state.lock().unwrap();
        let queue = self.queue_of(&mut state, queue_url)?;
        match queue.iter_mut().find(|m| m.receipt.as_deref() == Some(receipt_handle)) {
            Some(message) => {
                message.visible_at = now + u64::from(seconds).div_ceil(60);
                Ok(())
            }
            None => Err(QueueError::Refused {
                queue_url: queue_url.into(),
                reason: "ReceiptHandleIsInvalid".into(),
            }),
        }
    }

    async fn receive(&self, queue_url: &str, max: u32, _wait_seconds: u32) -> Result<Vec<Received>, QueueError> {
        self.chaos.step().await;
        if let Some(error) = self.refused(queue_url) {
            return Err(error);
        }
        if queue_url == QUEUE {
            return Ok(self.receive_jobs(max).into_iter().map(|(r, _)| r).collect());
        }
        let now = self.chaos.now();
        let mut state = self.state.lock().unwrap();
        state.next += 1;
        let mut next = state.next;
        let queue = self.queue_of(&mut state, queue_url)?;
        let mut taken = Vec::new();
        for message in queue
            .iter_mut()
            .filter(|m| m.visible_at <= now)
            .take(max.clamp(1, 10) as usize)
        {
            next += 1;
            let receipt = format!("receipt-{next}");
            message.receives += 1;
            message.visible_at = now + VISIBILITY_MINUTES;
            message.receipt = Some(receipt.clone());
            taken.push(Received {
                message_id: format!("message-{}", message.id),
                receipt_handle: receipt,
                body: message.body.clone(),
                delivery_id: message.delivery_id.clone(),
            });
        }
        state.next = next;
        Ok(taken)
    }

    async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), QueueError> {
        self.chaos.step().await;
        if let Some(error) = self.refused(queue_url) {
            return Err(error);
        }
        let mut state = self.state.lock().unwrap();
        // A stale receipt (the message was received again since) deletes nothing, as in SQS.
        self.queue_of(&mut state, queue_url)?
            .retain(|m| m.receipt.as_deref() != Some(receipt_handle));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running handlers: interleaved, deterministic, killable

type Task<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

struct Flag {
    woken: AtomicBool,
    outer: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        if let Some(waker) = self.outer.lock().unwrap().as_ref() {
            waker.wake_by_ref();
        }
    }
}

/// Runs handler futures round-robin, switching at their port calls. One that waits on a timer
/// (SendCommand's backoff) holds the others until it resumes, so the wall clock never decides the
/// order and a seed replays exactly. A killed invocation's futures are dropped where they stand
/// and answer `None`.
async fn interleave<'a, T: 'a>(chaos: &Chaos, tasks: Vec<(u64, Task<'a, T>)>) -> Vec<Option<T>> {
    let count = tasks.len();
    let invocations: Vec<u64> = tasks.iter().map(|(id, _)| *id).collect();
    let mut slots: Vec<Option<Task<'a, T>>> = tasks
        .into_iter()
        .map(|(id, task)| Some(Box::pin(INVOCATION.scope(id, task)) as Task<'a, T>))
        .collect();
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let flags: Vec<Arc<Flag>> = (0..count)
        .map(|_| {
            Arc::new(Flag {
                woken: AtomicBool::new(true),
                outer: Mutex::new(None),
            })
        })
        .collect();
    let mut cursor = 0;
    // Unconstrained: tokio's cooperative budget would make a lock answer Pending with a wake-up
    // deferred past this poll, which would look like a deadlock here.
    tokio::task::unconstrained(poll_fn(|cx| {
        for flag in &flags {
            *flag.outer.lock().unwrap() = Some(cx.waker().clone());
        }
        loop {
            let next = (0..count)
                .map(|k| (cursor + k) % count)
                .find(|&i| slots[i].is_some() && flags[i].woken.load(Ordering::SeqCst));
            let Some(index) = next else {
                // The flows sleep only for a non-zero backoff (the simulation's is zero), so a
                // task is only ever woken by another task of this set (a lock it waits for).
                assert!(
                    slots.iter().all(Option::is_none),
                    "every handler waits and none can wake the others: a deadlock in the flows ({} of {count} waiting, invocations {:?})",
                    slots.iter().filter(|s| s.is_some()).count(),
                    invocations
                        .iter()
                        .zip(&slots)
                        .filter(|(_, s)| s.is_some())
                        .map(|(i, _)| (*i, chaos.is_killed(*i)))
                        .collect::<Vec<_>>()
                );
                return Poll::Ready(());
            };
            cursor = index + 1;
            flags[index].woken.store(false, Ordering::SeqCst);
            let waker = Waker::from(flags[index].clone());
            let mut context = Context::from_waker(&waker);
            let task = slots[index].as_mut().expect("checked above");
            match task.as_mut().poll(&mut context) {
                Poll::Ready(value) => {
                    results[index] = Some(value);
                    slots[index] = None;
                }
                Poll::Pending if chaos.is_killed(invocations[index]) => {
                    for (slot, invocation) in slots.iter_mut().zip(&invocations) {
                        if *invocation == invocations[index] {
                            *slot = None;
                        }
                    }
                }
                Poll::Pending => {}
            }
        }
    }))
    .await;
    results
}

enum Either<T> {
    Stop(T),
    Served(Vec<(String, (String, Outcome))>),
}

/// A stop-runner invocation's answer (None: killed), and what create-runner served beside it.
struct Besides<T> {
    value: Option<T>,
    served: Vec<(String, (String, Outcome))>,
}

// ---------------------------------------------------------------------------------------------
// The world around the flows: GitHub's jobs, the boxes, EventBridge

#[derive(Debug, Clone, PartialEq, Eq)]
enum JobState {
    Queued,
    Running(String),
    Ran,
    Cancelled,
    RanElsewhere,
    /// GitHub failed it: EC2 took back the spot instance (this one) its runner ran it on.
    Interrupted(String),
}

impl JobState {
    /// GitHub's status and conclusion of a job in this state.
    fn github(&self) -> (&'static str, Option<&'static str>) {
        match self {
            JobState::Queued => ("queued", None),
            JobState::Running(_) => ("in_progress", None),
            JobState::Ran | JobState::RanElsewhere => ("completed", Some("success")),
            JobState::Cancelled => ("completed", Some("cancelled")),
            JobState::Interrupted(_) => ("completed", Some("failure")),
        }
    }
}

/// The one job name of every run: a run has one job.
const JOB_NAME: &str = "build";

struct Job {
    id: u64,
    template: String,
    state: JobState,
    /// Its workflow run (one job per run) and the run's attempt it belongs to.
    run_id: u64,
    attempt: u32,
    /// The interrupted job this one is the re-run of (a new attempt of the same run).
    rerun_of: Option<u64>,
    /// The runner GitHub last gave it to.
    runner_name: Option<String>,
    /// A runner of this job died before taking it after its last allowed relaunch.
    relaunches_exhausted: bool,
    /// GitHub never gives this job to our runners.
    unroutable: bool,
    /// Why its message last went back to the queue (for the DLQ accounting).
    last_hand_back: Option<String>,
    /// What happened to it, for the failure message.
    history: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Booting {
        until: u64,
    },
    Online,
    /// `warned`: the minute EC2 warns that it takes the (spot) instance back, two minutes before
    /// it does, while the job runs.
    Running {
        job: u64,
        until: u64,
        warned: Option<u64>,
    },
    Done,
}

/// One instance that SSM started the runner script on.
struct Machine {
    instance_id: String,
    command_id: String,
    job: u64,
    relaunches: u32,
    runner_failures: u32,
    runner_id: Option<u64>,
    phase: Phase,
}

/// An EventBridge event for stop-runner.
struct Event {
    due: u64,
    /// The event without its `time`.
    body: serde_json::Value,
    /// The simulated minute it happened: its `time`.
    at: u64,
    /// Lambda retries an async invocation that failed twice.
    retries_left: u32,
}

/// GitHub notices that the runner of a job is gone (its instance was taken back) and fails the job.
struct Notice {
    due: u64,
    job: u64,
    instance_id: String,
    runner_id: Option<u64>,
}

/// A run completes a little after its job.
struct RunCompletion {
    due: u64,
    run_id: u64,
    attempt: u32,
    conclusion: &'static str,
}

#[derive(Default, Clone)]
struct Figures {
    seeds: u64,
    jobs: u64,
    ran: u64,
    cancelled: u64,
    ran_elsewhere: u64,
    relaunches_exhausted: u64,
    launches: u64,
    retries: u64,
    handed_back: u64,
    dlq_trips: u64,
    moved_back: u64,
    relaunched: u64,
    /// Deliveries that never reached the webhook, and the redeliveries move-jobs asked GitHub for.
    deliveries_failed: u64,
    redelivered: u64,
    /// Jobs GitHub never routed to our runners, ended by the sweep with an error line.
    unroutable: u64,
    unroutable_ended: u64,
    dropped: BTreeMap<String, u64>,
    faults: BTreeMap<&'static str, u64>,
    peak_live: BTreeMap<String, usize>,
    leaks: u64,
    minutes: u64,
    interruptions: InterruptionFigures,
}

/// Spot interruptions while jobs ran, their re-runs, and the spot back-offs.
#[derive(Default, Clone)]
struct InterruptionFigures {
    /// Jobs GitHub failed because EC2 took their spot instance back while they ran.
    interrupted: u64,
    /// Of those, jobs that ran on a runner launched for a job of another run (GitHub gives a
    /// queued job to any idle runner with its labels): found from the webhook's record of the
    /// `in_progress` delivery.
    interrupted_on_another_runs_runner: u64,
    /// `in_progress` deliveries that failed (or whose record failed: 500), and their
    /// redeliveries by move-jobs.
    started_failed: u64,
    started_redelivered: u64,
    warnings_lost: u64,
    warnings_late: u64,
    state_changes_lost: u64,
    /// Re-runs GitHub took (new attempts), and those it refused (403: the run not completed).
    reruns_asked: u64,
    reruns_refused: u64,
    /// Re-run jobs whose every launch was on-demand, and those that succeeded.
    reruns_on_demand: u64,
    reruns_succeeded: u64,
    backoffs_started: u64,
    backoffs_ended: u64,
    on_demand_for_backoff: u64,
}

impl InterruptionFigures {
    fn add(&mut self, other: &InterruptionFigures) {
        self.interrupted += other.interrupted;
        self.interrupted_on_another_runs_runner += other.interrupted_on_another_runs_runner;
        self.started_failed += other.started_failed;
        self.started_redelivered += other.started_redelivered;
        self.warnings_lost += other.warnings_lost;
        self.warnings_late += other.warnings_late;
        self.state_changes_lost += other.state_changes_lost;
        self.reruns_asked += other.reruns_asked;
        self.reruns_refused += other.reruns_refused;
        self.reruns_on_demand += other.reruns_on_demand;
        self.reruns_succeeded += other.reruns_succeeded;
        self.backoffs_started += other.backoffs_started;
        self.backoffs_ended += other.backoffs_ended;
        self.on_demand_for_backoff += other.on_demand_for_backoff;
    }

    fn print(&self) {
        println!(
            "  spot interruptions: jobs interrupted while running {} (GitHub failed them); warnings lost {}, late {}; \
             state changes lost {}",
            self.interrupted, self.warnings_lost, self.warnings_late, self.state_changes_lost
        );
        println!(
            "  re-runs: asked {} (refused by GitHub before the run completed {}), launched on-demand {}, succeeded {}; \
             of the interrupted jobs, {} ran on a runner launched for a job of another run",
            self.reruns_asked,
            self.reruns_refused,
            self.reruns_on_demand,
            self.reruns_succeeded,
            self.interrupted_on_another_runs_runner
        );
        println!(
            "  in_progress deliveries that failed (or whose record failed) {}, redelivered by move-jobs {}",
            self.started_failed, self.started_redelivered
        );
        println!(
            "  spot back-offs: started {}, ended {}; launches on-demand because of a back-off {}",
            self.backoffs_started, self.backoffs_ended, self.on_demand_for_backoff
        );
    }
}

impl Figures {
    fn add(&mut self, other: &Figures) {
        self.seeds += other.seeds;
        self.jobs += other.jobs;
        self.ran += other.ran;
        self.cancelled += other.cancelled;
        self.ran_elsewhere += other.ran_elsewhere;
        self.relaunches_exhausted += other.relaunches_exhausted;
        self.launches += other.launches;
        self.retries += other.retries;
        self.handed_back += other.handed_back;
        self.dlq_trips += other.dlq_trips;
        self.moved_back += other.moved_back;
        self.deliveries_failed += other.deliveries_failed;
        self.redelivered += other.redelivered;
        self.relaunched += other.relaunched;
        self.unroutable += other.unroutable;
        self.unroutable_ended += other.unroutable_ended;
        self.leaks += other.leaks;
        self.minutes += other.minutes;
        self.interruptions.add(&other.interruptions);
        for (reason, n) in &other.dropped {
            *self.dropped.entry(reason.clone()).or_default() += n;
        }
        for (kind, n) in &other.faults {
            *self.faults.entry(kind).or_default() += n;
        }
        for (template, n) in &other.peak_live {
            let peak = self.peak_live.entry(template.clone()).or_default();
            *peak = (*peak).max(*n);
        }
    }

    fn print(&self, title: &str, elapsed: Duration) {
        let faults: u64 = self.faults.values().sum();
        println!(
            "{title}: {} jobs over {} seeds ({} simulated hours) in {:.1} s",
            self.jobs,
            self.seeds,
            self.minutes / 60,
            elapsed.as_secs_f64()
        );
        println!(
            "  jobs: ran on our runner {}, ran elsewhere {}, cancelled while queued {}, dropped after max relaunches {}, \
             never routed to our runners {} (their runners ended as unroutable: {})",
            self.ran,
            self.ran_elsewhere,
            self.cancelled,
            self.relaunches_exhausted,
            self.unroutable,
            self.unroutable_ended
        );
        println!(
            "  launches {}, SendCommand retries {}, handed back {}, DLQ trips {}, moved back from the DLQ {}, relaunched by the sweep {}",
            self.launches, self.retries, self.handed_back, self.dlq_trips, self.moved_back, self.relaunched
        );
        println!(
            "  webhook deliveries that failed {}, redelivered by move-jobs {}",
            self.deliveries_failed, self.redelivered
        );
        let dropped: Vec<String> = self.dropped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  dropped: {}", dropped.join(", "));
        let faults_by_kind: Vec<String> = self.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  faults ({faults}): {}", faults_by_kind.join(", "));
        let peaks: Vec<String> = self.peak_live.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  peak live per template: {}; leaks {}", peaks.join(", "), self.leaks);
        self.interruptions.print();
    }
}

/// The test config, with redelivery on (the organisation hook 1) and the interruptions table.
fn config() -> Arc<Config> {
    let mut document = common::config_json(QUEUE);
    document["github"]["webhook_id"] = 1.into();
    document["interruptions_table"] = "sophons-interruptions".into();
    // The bad day refuses a tenth of spot launches for capacity: with the default 3 losses the
    // back-off would last all day and leave few spot jobs to interrupt.
    document["spot_backoff"] = json!({ "after": 10, "within_minutes": 30, "on_demand_minutes": 60 });
    Arc::new(Config::parse(&document.to_string()).unwrap())
}

struct Sim {
    seed: u64,
    config: Arc<Config>,
    chaos: Arc<Chaos>,
    fleet: Arc<FakeFleet>,
    github: Arc<FakeGithub>,
    parameters: Arc<FakeParameters>,
    slots: Arc<FakeSlots>,
    commands: Arc<FakeCommands>,
    queue: Arc<SimQueue>,
    waiting: Arc<FakeWaiting>,
    interruptions: Arc<FakeInterruptions>,
    /// The webhook, for the `in_progress` deliveries: it keeps which job each runner of ours took.
    webhook: Webhook,
    create: CreateRunner,
    stop: StopRunner,
    move_jobs: MoveJobs,
    redeliver: Redeliver,
    /// Jobs whose every delivery so far failed: only a redelivery brings them.
    undelivered: BTreeSet<u64>,
    /// Jobs at least one delivery of which reached the webhook.
    delivered: BTreeSet<u64>,
    /// How many of GitHub's redeliveries the driver has carried out.
    redeliveries_done: usize,
    jobs: BTreeMap<u64, Job>,
    queued: BTreeMap<String, BTreeSet<u64>>,
    machines: Vec<Machine>,
    events: Vec<Event>,
    /// (minute, job id): deliveries of the webhook to come, duplicates included.
    deliveries: Vec<(u64, u64)>,
    /// (minute, job id, cancelled rather than taken by a runner not ours).
    github_events: Vec<(u64, u64, bool)>,
    /// Jobs GitHub is about to fail because their runner's instance was taken back.
    notices: Vec<Notice>,
    run_completions: Vec<RunCompletion>,
    /// How many of GitHub's re-runs the driver has made jobs of.
    reruns_done: usize,
    /// Instances EC2 takes back while their runner runs a job: that job.
    taken_back: HashMap<String, u64>,
    next_invocation: u64,
    /// create-runner serves one record at a time (no two handlers at once).
    serial: bool,
    figures: Figures,
}

impl Sim {
    fn new(seed: u64, jobs: usize, mode: Mode) -> Self {
        let serial = mode == Mode::Serial;
        let config = config();
        let chaos = Arc::new(Chaos {
            rng: Mutex::new(Rng(seed)),
            on: AtomicBool::new(true),
            now: AtomicU64::new(0),
            rates: RATES,
            faults: Mutex::default(),
            killed: Mutex::default(),
            ledger: Mutex::default(),
            max_runners: config
                .templates
                .iter()
                .map(|(name, t)| (name.clone(), t.max_runners as usize))
                .collect(),
        });
        let fleet = Arc::new(FakeFleet::default());
        {
            // EC2's reads lag, in simulated minutes: a new instance missing until the next minute,
            // an ended one listed as it was for the rest of the minute, late tags.
            let chaos = chaos.clone();
            fleet.set_lag_source(move || {
                let mut lag = Lag::default();
                if chaos.chance(chaos.rates.listing_late) {
                    chaos.count("EC2 listing late (new instance missing)");
                    lag.new = 1;
                }
                // Within the minute: EC2 catches up in seconds, and every hand-back waits at
                // least 60 s (TRANSIENT_DELAY_SECONDS), which the flows rely on.
                if chaos.chance(chaos.rates.ended_late) {
                    chaos.count("EC2 listing late (ended instance still live)");
                    lag.ended = 1;
                }
                if chaos.chance(chaos.rates.tags_late) {
                    chaos.count("EC2 tags late");
                    lag.tags = 1;
                }
                lag
            });
        }
        let github = Arc::new(FakeGithub::new());
        let parameters = Arc::new(FakeParameters::default());
        let slots = Arc::new(FakeSlots::default());
        let commands = Arc::new(FakeCommands::default());
        let queue = Arc::new(SimQueue {
            state: Mutex::default(),
            chaos: chaos.clone(),
            dlq_url: config.dlq_url.clone(),
        });
        let interruptions = Arc::new(FakeInterruptions::default());
        let interruptions_port: Arc<dyn Interruptions> = Arc::new(ChaosInterruptions {
            inner: interruptions.clone(),
            chaos: chaos.clone(),
        });
        let fleet_port: Arc<dyn Fleet> = Arc::new(ChaosFleet {
            inner: fleet.clone(),
            chaos: chaos.clone(),
            interruptions: interruptions.clone(),
        });
        let github_port: Arc<dyn Github> = Arc::new(ChaosGithub {
            inner: github.clone(),
            chaos: chaos.clone(),
        });
        let parameters_port: Arc<dyn Parameters> = Arc::new(ChaosParameters {
            inner: parameters.clone(),
            chaos: chaos.clone(),
        });
        let slots_port: Arc<dyn Slots> = Arc::new(ChaosSlots {
            inner: slots.clone(),
            chaos: chaos.clone(),
        });
        let commands_port: Arc<dyn Commands> = Arc::new(ChaosCommands {
            inner: commands.clone(),
            chaos: chaos.clone(),
        });
        let queue_port: Arc<dyn Queue> = queue.clone();
        let waiting = Arc::new(FakeWaiting::default());
        let waiting_port: Arc<dyn Waiting> = Arc::new(ChaosWaiting {
            inner: waiting.clone(),
            chaos: chaos.clone(),
            marks: Mutex::default(),
        });
        let create = CreateRunner::new(
            config.clone(),
            sophons_core::ports::Ports {
                fleet: fleet_port.clone(),
                github: github_port.clone(),
                parameters: parameters_port.clone(),
                slots: slots_port.clone(),
                commands: commands_port.clone(),
                queue: queue_port.clone(),
                waiting: Some(waiting_port.clone()),
                interruptions: Some(interruptions_port.clone()),
            },
        )
        // Each retry costs a millisecond of real time, not seconds.
        .with_backoff(Backoff {
            first: Duration::ZERO,
            max: Duration::ZERO,
        });
        let stop = StopRunner::new(
            config.clone(),
            sophons_core::ports::Ports {
                fleet: fleet_port,
                github: github_port.clone(),
                parameters: parameters_port,
                slots: slots_port,
                commands: commands_port,
                queue: queue_port.clone(),
                waiting: Some(waiting_port.clone()),
                interruptions: Some(interruptions_port),
            },
        );
        let move_jobs = MoveJobs::new(config.clone(), queue_port, github_port.clone());
        let redeliver = Redeliver::new(&config, github_port).expect("the config names the webhook");
        let webhook = Webhook::new(
            config.clone(),
            common::SECRET,
            Arc::new(sophons_core::fakes::FakeQueue::default()),
        )
        .with_interruptions(interruptions.clone());

        // The day's jobs: arrivals, duplicate deliveries, and what GitHub does to them meanwhile.
        let mut rng = Rng(seed ^ 0x5EED);
        let span = (jobs as f64 / ARRIVALS_PER_MINUTE).ceil() as u64;
        let mut plan = BTreeMap::new();
        let mut deliveries = Vec::new();
        let mut github_events = Vec::new();
        let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
        for index in 0..jobs as u64 {
            let id = seed * 10_000_000 + index + 1;
            let template = if rng.chance(0.08) {
                "template_gpu"
            } else {
                "template_cpu"
            };
            let arrival = rng.below(span);
            let unroutable = rng.chance(RATES.unroutable);
            if unroutable {
                *faults.entry("job GitHub never routes to our runners").or_default() += 1;
            }
            deliveries.push((arrival, id));
            if rng.chance(RATES.duplicate_delivery) {
                *faults.entry("duplicate webhook delivery").or_default() += 1;
                deliveries.push((arrival + rng.below(60), id));
            }
            if rng.chance(RATES.cancelled_while_queued) {
                github_events.push((arrival + rng.below(30), id, true));
            } else if rng.chance(RATES.taken_elsewhere) {
                github_events.push((arrival + rng.below(30), id, false));
            }
            plan.insert(
                id,
                Job {
                    id,
                    template: template.into(),
                    state: JobState::Queued,
                    run_id: id,
                    attempt: 1,
                    rerun_of: None,
                    runner_name: None,
                    relaunches_exhausted: false,
                    unroutable,
                    last_hand_back: None,
                    history: Vec::new(),
                },
            );
        }
        deliveries.sort();
        github_events.sort();
        *chaos.faults.lock().unwrap() = faults;
        Sim {
            seed,
            config,
            chaos,
            fleet,
            github,
            parameters,
            slots,
            commands,
            queue,
            waiting,
            interruptions,
            webhook,
            create,
            stop,
            move_jobs,
            redeliver,
            undelivered: BTreeSet::new(),
            delivered: BTreeSet::new(),
            redeliveries_done: 0,
            jobs: plan,
            queued: BTreeMap::new(),
            machines: Vec::new(),
            events: Vec::new(),
            deliveries,
            github_events,
            notices: Vec::new(),
            run_completions: Vec::new(),
            reruns_done: 0,
            taken_back: HashMap::new(),
            next_invocation: 0,
            serial,
            figures: Figures {
                seeds: 1,
                jobs: jobs as u64,
                ..Figures::default()
            },
        }
    }

    fn invocation(&mut self) -> u64 {
        self.next_invocation += 1;
        self.next_invocation
    }

    /// The id the caller reserved right after `invocation` (the poller beside a stop-runner run).
    fn invocation_after(&self, invocation: u64) -> u64 {
        invocation + 1
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "simulation seed {} failed: {what}\n  rerun: SOPHONS_SIM_SEED={} SOPHONS_SIM_JOBS={} cargo test -p sophons-core \
             --test simulation -- --nocapture --exact {}",
            self.seed,
            self.seed,
            self.figures.jobs,
            if self.serial {
                "nothing_lost_doubled_or_leaked_under_faults"
            } else {
                "concurrent_create_runner_invocations_never_exceed_max_runners"
            }
        );
    }

    fn check_violations(&self) {
        let ledger = self.chaos.ledger.lock().unwrap();
        if !ledger.violations.is_empty() {
            let mut first: Vec<String> = ledger.violations.iter().take(3).cloned().collect();
            for line in &mut first {
                let job = line
                    .split("job ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|id| id.parse::<u64>().ok());
                if let Some(job) = job {
                    line.push_str(&format!("\n    history of job {job}:\n      {}", self.history(job)));
                }
            }
            let count = ledger.violations.len();
            drop(ledger);
            self.fail(format!(
                "{count} invariant violation(s), first:\n  {}",
                first.join("\n  ")
            ));
        }
    }

    async fn run(mut self) -> Figures {
        let last_arrival = self.deliveries.iter().map(|(at, _)| *at).max().unwrap_or(0);
        let faults_end = last_arrival + FAULT_TAIL_MINUTES;
        let mut minute = 0;
        let mut quiet_since: Option<u64> = None;
        loop {
            self.chaos.now.store(minute, Ordering::Relaxed);
            self.fleet.set_now(minute);
            if minute > 0 {
                // The flows compare the table's times with the wall clock, which hardly moves
                // while minutes are simulated.
                self.interruptions.age(Duration::from_secs(60));
            }
            if minute == faults_end {
                self.chaos.on.store(false, Ordering::Relaxed);
            }
            self.deliver_webhooks(minute);
            self.github_acts(minute);
            self.machines_act(minute);
            self.deliver_events(minute).await;
            self.serve_jobs().await;
            if minute % SWEEP_EVERY == 0 {
                self.sweep().await;
            }
            if minute % MOVE_JOBS_EVERY == MOVE_JOBS_EVERY / 2 {
                self.move_jobs().await;
            }
            self.check_violations();
            if minute > faults_end && self.is_quiet() {
                // Quiet for two sweeps and a move-jobs run: nothing is left to move.
                let since = *quiet_since.get_or_insert(minute);
                if minute >= since + MOVE_JOBS_EVERY + 2 * SWEEP_EVERY {
                    break;
                }
            } else {
                quiet_since = None;
            }
            if minute > faults_end + DRAIN_LIMIT_MINUTES {
                self.fail(format!(
                    "not settled {DRAIN_LIMIT_MINUTES} minutes after the faults ended: {}",
                    self.state_summary()
                ));
            }
            minute += 1;
        }
        self.figures.minutes = minute;
        self.final_checks();
        self.figures
    }

    fn is_quiet(&self) -> bool {
        self.queue.bodies(false).is_empty()
            && self.queue.bodies(true).is_empty()
            && self.waiting.is_empty()
            && self.undelivered.is_empty()
            && self.events.is_empty()
            && self.deliveries.is_empty()
            && self.machines.iter().all(|m| m.phase == Phase::Done)
            && self.chaos.ledger.lock().unwrap().live.is_empty()
            && self.notices.is_empty()
            && self.run_completions.is_empty()
            && self.reruns_done == self.github.reruns().len()
            && self.interruptions.followed().is_empty()
    }

    fn state_summary(&self) -> String {
        let live: Vec<String> = self.chaos.ledger.lock().unwrap().live.keys().cloned().collect();
        format!(
            "jobs queue {} message(s), DLQ {}, waiting {}, events {}, machines active {}, live instances {:?}, parameters {:?}, slots {:?}, runners {}, interrupted jobs followed {:?}",
            self.queue.bodies(false).len(),
            self.queue.bodies(true).len(),
            self.waiting.len(),
            self.events.len(),
            self.machines.iter().filter(|m| m.phase != Phase::Done).count(),
            live,
            self.parameters.names(),
            self.slots.all(),
            self.github.runners().len(),
            self.interruptions.followed()
        )
    }

    fn note(&mut self, id: u64, what: impl std::fmt::Display) {
        let minute = self.chaos.now();
        if let Some(job) = self.jobs.get_mut(&id) {
            job.history.push(format!("{minute}: {what}"));
        }
    }

    /// The job an instance was launched for, and the one its runner ran when EC2 took it back.
    fn jobs_of(&self, instance_id: &str) -> BTreeSet<u64> {
        let launched_for = self
            .fleet
            .instance(instance_id)
            .and_then(|i| i.tag(TAG_JOB_ID).and_then(|id| id.parse().ok()));
        launched_for
            .into_iter()
            .chain(self.taken_back.get(instance_id).copied())
            .collect()
    }

    fn history(&self, id: u64) -> String {
        self.jobs
            .get(&id)
            .map(|j| j.history.join("\n      "))
            .unwrap_or_default()
    }

    /// GitHub's job `id` is now in `state`; its run (of one job) follows it.
    fn set_job(&mut self, id: u64, state: JobState) {
        self.note(id, format!("GitHub: {state:?}"));
        let minute = self.chaos.now();
        let job = self.jobs.get_mut(&id).expect("a planned job");
        if job.state == JobState::Queued {
            self.queued.get_mut(&job.template).map(|q| q.remove(&id));
        }
        if state == JobState::Queued {
            self.queued.entry(job.template.clone()).or_default().insert(id);
        }
        match &state {
            JobState::Running(instance_id) => {
                job.runner_name = Some(names::runner_name(&self.config.deployment, instance_id));
            }
            JobState::RanElsewhere => job.runner_name = Some("a-runner-not-ours".into()),
            _ => {}
        }
        let (status, conclusion) = state.github();
        job.state = state;
        {
            let mut ledger = self.chaos.ledger.lock().unwrap();
            match conclusion {
                None if status == "in_progress" => ledger.started_at.insert(id, minute),
                None => None,
                Some(_) => ledger.completed_at.insert(id, minute),
            };
        }
        self.github.set_job(
            REPOSITORY,
            JobDetails {
                id,
                run_id: job.run_id,
                run_attempt: job.attempt,
                name: JOB_NAME.into(),
                status: status.into(),
                conclusion: conclusion.map(str::to_string),
                runner_name: job.runner_name.clone(),
                // `ChaosGithub::job` gives them in simulated time.
                started_at: None,
                completed_at: None,
            },
        );
        match conclusion {
            None => self.github.set_run(
                REPOSITORY,
                RunDetails {
                    id: job.run_id,
                    run_attempt: job.attempt,
                    status: status.into(),
                    conclusion: None,
                },
            ),
            Some(conclusion) => self.run_completions.push(RunCompletion {
                due: minute + self.chaos.draw(3),
                run_id: job.run_id,
                attempt: job.attempt,
                conclusion,
            }),
        }
    }

    /// The autoscaler: each delivery of a queued job becomes a message (duplicates too).
    fn deliver_webhooks(&mut self, minute: u64) {
        while let Some(&(at, id)) = self.deliveries.first() {
            if at > minute {
                break;
            }
            self.deliveries.remove(0);
            let job = &self.jobs[&id];
            let first = !self.queued.values().any(|q| q.contains(&id)) && job.state == JobState::Queued;
            if first {
                self.set_job(id, JobState::Queued);
            }
            // GitHub records each delivery (the guid is our delivery id); one that failed is only
            // brought back by a redelivery, which move-jobs asks for.
            let failed = self.chaos.fault(
                "webhook delivery failed (5xx, throttled, no answer)",
                self.chaos.rates.delivery_failed,
            );
            self.github.add_delivery(HookDelivery {
                id: self.github.deliveries().len() as u64 + 1,
                guid: format!("delivery-{id}"),
                delivered_at: now_rfc3339(),
                redelivery: false,
                status_code: if failed { 502 } else { 202 },
                event: "workflow_job".into(),
                action: Some("queued".into()),
            });
            if failed {
                self.figures.deliveries_failed += 1;
                if !self.delivered.contains(&id) {
                    self.undelivered.insert(id);
                }
                self.note(id, "webhook delivery failed");
                continue;
            }
            self.undelivered.remove(&id);
            self.delivered.insert(id);
            self.enqueue_delivery(id);
            self.note(id, "webhook delivered");
        }
    }

    /// The webhook takes a delivery of job `id`: one message in the jobs queue.
    fn enqueue_delivery(&mut self, id: u64) {
        {
            let job = &self.jobs[&id];
            let labels = vec!["self-hosted".to_string(), job.template.clone()];
            let message = JobMessage {
                version: MESSAGE_VERSION,
                delivery_id: format!("delivery-{id}"),
                job_id: id,
                run_id: job.run_id,
                run_attempt: job.attempt,
                repository: REPOSITORY.into(),
                owner: "my-org".into(),
                name: "app".into(),
                labels,
                template: job.template.clone(),
                workflow_name: "CI".into(),
                job_name: JOB_NAME.into(),
                job_url: format!("https://github.com/{REPOSITORY}/actions/runs/{}/job/{id}", job.run_id),
                created_at: now_rfc3339(),
                received_at: now_rfc3339(),
                relaunches: 0,
                runner_failures: 0,
                trip: 0,
            };
            self.queue.enqueue(false, &message.encode(), &message.delivery_id);
        }
    }

    /// GitHub's `in_progress` delivery of job `id`, which the runner of `instance_id` took: the
    /// webhook keeps which job the runner ran. A delivery fails as queued ones do, and the
    /// webhook answers 500 when the table fails; GitHub records either, for move-jobs to redeliver.
    fn deliver_started(&mut self, id: u64, instance_id: &str) {
        let failed = self.chaos.fault(
            "webhook in_progress delivery failed (5xx, throttled, no answer)",
            self.chaos.rates.delivery_failed,
        );
        let status = if failed {
            502
        } else {
            self.post_started(id, instance_id)
        };
        if status >= 300 {
            self.figures.interruptions.started_failed += 1;
        }
        self.github.add_delivery(HookDelivery {
            id: self.github.deliveries().len() as u64 + 1,
            guid: format!("started-{id}-{instance_id}"),
            delivered_at: now_rfc3339(),
            redelivery: false,
            status_code: status,
            event: "workflow_job".into(),
            action: Some("in_progress".into()),
        });
    }

    /// The webhook takes an `in_progress` delivery (the table failing as DynamoDB does); answers
    /// its status.
    fn post_started(&mut self, id: u64, instance_id: &str) -> u16 {
        let job = &self.jobs[&id];
        let payload = json!({
            "action": "in_progress",
            "workflow_job": {
                "id": id, "run_id": job.run_id, "run_attempt": job.attempt, "name": JOB_NAME,
                "labels": ["self-hosted", job.template], "status": "in_progress",
                "runner_name": names::runner_name(&self.config.deployment, instance_id),
            },
            "repository": { "full_name": REPOSITORY, "name": "app", "private": true, "owner": { "login": "my-org" } },
        });
        if self.chaos.fault(
            "DynamoDB interruptions table failed (webhook)",
            self.chaos.rates.interruptions_failed,
        ) {
            self.interruptions.fail_next([InterruptionsError::Failed {
                table: "interruptions".into(),
                reason: "ThrottlingException".into(),
            }]);
        }
        let request = common::signed("workflow_job", &format!("started-{id}"), payload.to_string().as_bytes());
        let response = self
            .webhook
            .handle(common::request(&request))
            .now()
            .expect("the webhook over the in-memory table never waits");
        response.status().as_u16()
    }

    /// GitHub carries out the redeliveries move-jobs asked for: each posts the delivery again,
    /// and this time the webhook takes it.
    fn carry_out_redeliveries(&mut self) {
        let asked = self.github.redelivered();
        let deliveries = self.github.deliveries();
        for delivery_id in asked.iter().skip(self.redeliveries_done) {
            let guid = deliveries
                .iter()
                .find(|d| d.id == *delivery_id)
                .map(|d| d.guid.clone())
                .unwrap_or_default();
            if let Some((job, instance_id)) = guid
                .strip_prefix("started-")
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(job, instance_id)| Some((job.parse::<u64>().ok()?, instance_id.to_string())))
            {
                self.figures.interruptions.started_redelivered += 1;
                let status = self.post_started(job, &instance_id);
                self.note(job, format!("in_progress delivery redelivered by move-jobs: {status}"));
                continue;
            }
            let Some(id) = guid.strip_prefix("delivery-").and_then(|id| id.parse::<u64>().ok()) else {
                continue;
            };
            self.figures.redelivered += 1;
            self.undelivered.remove(&id);
            self.delivered.insert(id);
            self.enqueue_delivery(id);
            self.note(id, "webhook delivered (redelivery move-jobs asked for)");
        }
        self.redeliveries_done = asked.len();
    }

    /// GitHub carries out the re-runs it took: a new attempt of the run, whose job (a new id,
    /// the same name) is queued, and a `queued` delivery of it for the webhook.
    fn carry_out_reruns(&mut self) {
        let taken = self.github.reruns();
        for (_, job_id) in taken.iter().skip(self.reruns_done) {
            let Some(original) = self.jobs.get(job_id) else {
                continue; // not a job of ours: the invariants report the call
            };
            let (template, run_id) = (original.template.clone(), original.run_id);
            let attempt = self
                .github
                .run(REPOSITORY, run_id)
                .map_or(original.attempt + 1, |run| run.run_attempt);
            let id = {
                let mut ledger = self.chaos.ledger.lock().unwrap();
                let id = self.seed * 10_000_000 + 5_000_000 + ledger.reruns.len() as u64 + 1;
                ledger.reruns.insert(id);
                id
            };
            self.jobs.insert(
                id,
                Job {
                    id,
                    template,
                    state: JobState::Queued,
                    run_id,
                    attempt,
                    rerun_of: Some(*job_id),
                    runner_name: None,
                    relaunches_exhausted: false,
                    unroutable: false,
                    last_hand_back: None,
                    history: Vec::new(),
                },
            );
            self.note(
                *job_id,
                format!("GitHub re-runs it as job {id} (attempt {attempt} of run {run_id})"),
            );
            self.note(
                id,
                format!("the re-run of job {job_id} (attempt {attempt} of run {run_id})"),
            );
            self.set_job(id, JobState::Queued);
            let minute = self.chaos.now();
            self.schedule_delivery(minute, id);
            if self
                .chaos
                .fault("duplicate webhook delivery", self.chaos.rates.duplicate_delivery)
            {
                let again = minute + self.chaos.draw(60);
                self.schedule_delivery(again, id);
            }
        }
        self.reruns_done = taken.len();
    }

    /// A webhook delivery of job `id` at `minute`, in order among the others.
    fn schedule_delivery(&mut self, minute: u64, id: u64) {
        let at = self.deliveries.partition_point(|&(due, _)| due <= minute);
        self.deliveries.insert(at, (minute, id));
    }

    /// GitHub cancels a queued job, or a runner not ours takes it.
    fn github_acts(&mut self, minute: u64) {
        while let Some(&(at, id, cancelled)) = self.github_events.first() {
            if at > minute {
                break;
            }
            self.github_events.remove(0);
            if self.jobs[&id].state != JobState::Queued {
                continue;
            }
            if cancelled {
                self.chaos.count("job cancelled while queued");
                self.set_job(id, JobState::Cancelled);
            } else {
                self.chaos.count("job taken by a runner not ours");
                self.set_job(id, JobState::RanElsewhere);
            }
        }
        // GitHub notices that the runner of a job is gone with its instance, and fails the job.
        let (due, later): (Vec<Notice>, Vec<Notice>) = std::mem::take(&mut self.notices)
            .into_iter()
            .partition(|n| n.due <= minute);
        self.notices = later;
        for notice in due {
            if self.jobs[&notice.job].state != JobState::Running(notice.instance_id.clone()) {
                continue;
            }
            self.set_job(notice.job, JobState::Interrupted(notice.instance_id));
            if let Some(runner_id) = notice.runner_id {
                self.github.set_runner_status(runner_id, "offline", false);
            }
        }
        let (due, later): (Vec<RunCompletion>, Vec<RunCompletion>) = std::mem::take(&mut self.run_completions)
            .into_iter()
            .partition(|c| c.due <= minute);
        self.run_completions = later;
        for completion in due {
            let latest = self
                .github
                .run(REPOSITORY, completion.run_id)
                .is_none_or(|run| run.run_attempt == completion.attempt);
            if latest {
                self.github.set_run(
                    REPOSITORY,
                    RunDetails {
                        id: completion.run_id,
                        run_attempt: completion.attempt,
                        status: "completed".into(),
                        conclusion: Some(completion.conclusion.into()),
                    },
                );
            }
        }
    }

    fn emit(&mut self, minute: u64, machine: usize, status: &str) {
        let (instance_id, command_id) = {
            let m = &self.machines[machine];
            (m.instance_id.clone(), m.command_id.clone())
        };
        self.commands
            .set_status(&command_id, CommandStatus::Ended(status.to_string()));
        let chaos = &self.chaos;
        if chaos.fault("EventBridge event lost", chaos.rates.event_lost) {
            return;
        }
        let due = minute + chaos.draw(2);
        let body = json!({
            "detail-type": SSM_DETAIL_TYPE,
            "source": "aws.ssm",
            "detail": {
                "instance-id": instance_id,
                "command-id": command_id,
                "status": status,
            },
        });
        self.send_event(due, minute, body);
    }

    /// EventBridge takes an event that happened at `at` for stop-runner, delivered at `due`, and
    /// sometimes again later.
    fn send_event(&mut self, due: u64, at: u64, body: serde_json::Value) {
        let chaos = &self.chaos;
        let again = chaos
            .fault("EventBridge event repeated", chaos.rates.event_repeated)
            .then(|| due + chaos.draw(20));
        if let Some(again) = again {
            self.events.push(Event {
                due: again,
                body: body.clone(),
                at,
                retries_left: 2,
            });
        }
        self.events.push(Event {
            due,
            body,
            at,
            retries_left: 2,
        });
    }

    /// EC2 warns that it takes the instance of machine `index` back in two minutes: EventBridge
    /// delivers the warning to stop-runner at once, or loses it, or delivers it minutes after the
    /// instance ended.
    fn warn(&mut self, minute: u64, index: usize, job: u64) {
        let instance_id = self.machines[index].instance_id.clone();
        self.taken_back.insert(instance_id.clone(), job);
        let rates = self.chaos.rates;
        if self.chaos.fault("spot interruption warning lost", rates.warning_lost) {
            self.figures.interruptions.warnings_lost += 1;
            self.note(
                job,
                format!("EC2 warns it takes {instance_id} back; the warning is lost"),
            );
            return;
        }
        let due = if self.chaos.fault("spot interruption warning late", rates.warning_late) {
            self.figures.interruptions.warnings_late += 1;
            minute + 3 + self.chaos.draw(5)
        } else {
            minute
        };
        self.note(
            job,
            format!("EC2 warns it takes {instance_id} back; the warning reaches stop-runner at minute {due}"),
        );
        let body = json!({
            "detail-type": SPOT_WARNING_DETAIL_TYPE,
            "source": "aws.ec2",
            "detail": { "instance-id": instance_id, "instance-action": "terminate" },
        });
        self.send_event(due, minute, body);
    }

    /// EC2 takes the spot instance of machine `index` back while its runner runs `job`: the
    /// runner goes offline (busy on GitHub until GitHub notices), the runner command ends,
    /// EventBridge tells of the state change (or loses it), and GitHub fails the job a few
    /// minutes later.
    fn taken_back_while_running(&mut self, minute: u64, index: usize, job: u64, warned: u64) {
        let (instance_id, own, runner_id) = {
            let machine = &self.machines[index];
            (machine.instance_id.clone(), machine.job, machine.runner_id)
        };
        self.fleet.reclaim(&instance_id);
        self.chaos.ended(&instance_id);
        self.note(
            job,
            format!("EC2 took {instance_id} back while its runner ran the job (warned at minute {warned})"),
        );
        if own != job {
            self.note(
                own,
                format!("EC2 took {instance_id} (launched for it) back while its runner ran job {job}"),
            );
        }
        if let Some(runner_id) = runner_id {
            self.github.set_runner_status(runner_id, "offline", true);
        }
        self.machines[index].phase = Phase::Done;
        // The runner command ends with its box, as for a reclaim during boot.
        self.emit(minute, index, "Failed");
        if self
            .chaos
            .fault("state change (terminated) lost", self.chaos.rates.state_change_lost)
        {
            self.figures.interruptions.state_changes_lost += 1;
            self.note(job, "the state change of its instance is lost");
        } else {
            let body = json!({
                "detail-type": STATE_CHANGE_DETAIL_TYPE,
                "source": "aws.ec2",
                "detail": { "instance-id": instance_id, "state": "terminated" },
            });
            let due = minute + self.chaos.draw(2);
            self.send_event(due, minute, body);
        }
        let due = minute + 2 + self.chaos.draw(5);
        self.notices.push(Notice {
            due,
            job,
            instance_id,
            runner_id,
        });
    }

    /// The boxes: boot, read the JIT parameter, take a job, run it; or die first.
    fn machines_act(&mut self, minute: u64) {
        let started: Vec<(String, String)> = std::mem::take(&mut self.chaos.ledger.lock().unwrap().commands);
        for (command_id, instance_id) in started {
            let Some(instance) = self.fleet.instance(&instance_id) else {
                continue;
            };
            let job = instance.tag(TAG_JOB_ID).and_then(|id| id.parse().ok()).unwrap_or(0);
            let relaunches = instance.tag(TAG_RELAUNCHES).and_then(|n| n.parse().ok()).unwrap_or(0);
            let runner_failures = instance
                .tag(TAG_RUNNER_FAILURES)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let until = minute + 1 + self.chaos.draw(3);
            self.note(job, format!("SSM started {command_id} on {instance_id}"));
            self.machines.push(Machine {
                instance_id,
                command_id,
                job,
                relaunches,
                runner_failures,
                runner_id: None,
                phase: Phase::Booting { until },
            });
        }
        for index in 0..self.machines.len() {
            let phase = self.machines[index].phase.clone();
            if phase == Phase::Done {
                continue;
            }
            let instance_id = self.machines[index].instance_id.clone();
            if let Phase::Running {
                job,
                warned: Some(warned),
                ..
            } = &phase
                && self.chaos.is_live(&instance_id)
            {
                if minute == *warned {
                    self.warn(minute, index, *job);
                } else if minute >= warned + 2 {
                    self.taken_back_while_running(minute, index, *job, *warned);
                    continue;
                }
            }
            if !self.chaos.is_live(&instance_id) {
                if let Phase::Running { job, .. } = phase {
                    self.chaos.violation(format!(
                        "job {job} interrupted: instance {instance_id} was ended while its runner ran the job"
                    ));
                }
                if let Some(runner_id) = self.machines[index].runner_id {
                    self.github.set_runner_status(runner_id, "offline", false);
                }
                let command_id = self.machines[index].command_id.clone();
                if matches!(
                    self.commands.status(&command_id, &instance_id).now(),
                    Some(Ok(CommandStatus::Running))
                ) {
                    self.commands
                        .set_status(&command_id, CommandStatus::Ended("Terminated".into()));
                }
                self.machines[index].phase = Phase::Done;
                continue;
            }
            match phase {
                Phase::Booting { until } if until <= minute => self.boot(minute, index),
                Phase::Online => self.take_a_job(minute, index),
                Phase::Running { job, until, .. } if until <= minute => {
                    self.set_job(job, JobState::Ran);
                    if let Some(runner_id) = self.machines[index].runner_id {
                        // A JIT runner removes itself after its one job.
                        self.github.runner_finished(runner_id);
                    }
                    self.machines[index].phase = Phase::Done;
                    self.emit(minute, index, "Success");
                }
                _ => {}
            }
        }
        self.machines.retain(|m| m.phase != Phase::Done);
    }

    fn died_before_its_job(&mut self, index: usize, why: &str) {
        let (job, instance_id) = (self.machines[index].job, self.machines[index].instance_id.clone());
        self.note(job, format!("{instance_id} died before taking a job: {why}"));
        let machine = &self.machines[index];
        if machine.runner_failures >= self.config.max_job_relaunches
            && let Some(job) = self.jobs.get_mut(&machine.job)
        {
            job.relaunches_exhausted = true;
        }
    }

    fn boot(&mut self, minute: u64, index: usize) {
        let instance_id = self.machines[index].instance_id.clone();
        let rates = self.chaos.rates;
        if self.chaos.fault("bad AMI (runner died before its job)", rates.bad_ami) {
            self.died_before_its_job(index, "bad AMI");
            self.machines[index].phase = Phase::Done;
            self.emit(minute, index, "Failed");
            return;
        }
        let spot = self
            .fleet
            .instance(&instance_id)
            .is_some_and(|i| i.spot_request_id.is_some());
        if spot && self.chaos.fault("spot reclaimed during boot", rates.spot_reclaimed) {
            self.fleet.reclaim(&instance_id);
            self.chaos.ended(&instance_id);
            self.died_before_its_job(index, "spot reclaimed");
            self.machines[index].phase = Phase::Done;
            self.emit(minute, index, "Failed");
            return;
        }
        // The runner script: read and delete the JIT parameter, start the runner with it.
        let parameter = names::jit_parameter(&self.config.deployment, &instance_id);
        let value = self.parameters.get(&parameter).now().and_then(Result::ok);
        let runner_id = value
            .as_deref()
            .and_then(|v| v.strip_prefix("jit-secret-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|id| id.parse::<u64>().ok())
            .filter(|id| self.github.runners().iter().any(|r| r.runner.id == *id));
        let _ = self.parameters.delete(&parameter).now();
        let Some(runner_id) = runner_id else {
            self.chaos.count("runner script found no JIT parameter or runner");
            self.died_before_its_job(index, "no JIT parameter or runner");
            self.machines[index].phase = Phase::Done;
            self.emit(minute, index, "Failed");
            return;
        };
        self.github.set_runner_status(runner_id, "online", false);
        self.machines[index].runner_id = Some(runner_id);
        self.machines[index].phase = Phase::Online;
        self.take_a_job(minute, index);
    }

    /// GitHub gives an online runner its job, or another queued job with the same labels.
    fn take_a_job(&mut self, minute: u64, index: usize) {
        let own = self.machines[index].job;
        let Some(template) = self.jobs.get(&own).map(|j| j.template.clone()) else {
            return;
        };
        let queued: BTreeSet<u64> = self
            .queued
            .get(&template)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|id| !self.jobs[id].unroutable)
            .collect();
        let other = queued.iter().copied().find(|id| *id != own);
        let own_queued = queued.contains(&own);
        let job = match (own_queued, other) {
            (true, Some(other))
                if self
                    .chaos
                    .fault("runner taken by another job", self.chaos.rates.taken_by_another_job) =>
            {
                other
            }
            (true, _) => own,
            (false, Some(other)) => other,
            (false, None) => return,
        };
        let instance_id = self.machines[index].instance_id.clone();
        if job != own {
            self.note(own, format!("its runner on {instance_id} took job {job}"));
            // stop-runner sends the own job back when this runner ends; this does not count
            // against the relaunch limit, only against the bound on send-backs.
            if self.machines[index].relaunches >= stop::MAX_SEND_BACKS
                && let Some(own) = self.jobs.get_mut(&own)
            {
                own.relaunches_exhausted = true;
            }
        }
        self.set_job(job, JobState::Running(instance_id.clone()));
        self.deliver_started(job, &instance_id);
        if let Some(runner_id) = self.machines[index].runner_id {
            self.github.set_runner_status(runner_id, "online", true);
        }
        let mut until = minute + 1 + self.chaos.draw(10);
        let spot = self
            .fleet
            .instance(&instance_id)
            .is_some_and(|i| i.spot_request_id.is_some());
        let warned = (spot
            && self.chaos.fault(
                "spot reclaimed while its job ran",
                self.chaos.rates.spot_reclaimed_running,
            ))
        .then(|| minute + 1 + self.chaos.draw(until - minute));
        if let Some(warned) = warned {
            // It would have run past the instance's end.
            until = until.max(warned + 3);
        }
        self.machines[index].phase = Phase::Running { job, until, warned };
    }

    /// EventBridge → stop-runner, for the events due now. A killed invocation is retried.
    async fn deliver_events(&mut self, minute: u64) {
        let (due, later): (Vec<Event>, Vec<Event>) = std::mem::take(&mut self.events)
            .into_iter()
            .partition(|e| e.due <= minute);
        self.events = later;
        for event in due {
            let mut body = event.body.clone();
            body["time"] = rfc3339(self.chaos.wall_time(event.at)).into();
            let instance_id = body["detail"]["instance-id"].as_str().unwrap_or_default().to_string();
            let what = format!(
                "stop-runner, {} of {instance_id}",
                body["detail-type"].as_str().unwrap_or_default()
            );
            let invocation = self.invocation();
            self.next_invocation += 1; // the poller's
            let stop = &self.stop;
            let far = Instant::now() + Duration::from_secs(300);
            let task: Task<'_, _> = Box::pin(stop.handle(body, far));
            let Besides { value, served } = self.beside_create_runner(invocation, task).await;
            for (body, answer) in served {
                self.settle(&body, Some(answer));
            }
            let answer = value
                .as_ref()
                .map_or("killed".to_string(), |handled| format!("{handled:?}"));
            for job in self.jobs_of(&instance_id) {
                self.note(job, format!("{what}: {answer}"));
            }
            if value.is_none() && event.retries_left > 0 {
                self.events.push(Event {
                    due: minute + 1,
                    retries_left: event.retries_left - 1,
                    ..event
                });
            }
        }
    }

    /// The event source mapping: batches of the jobs queue to create-runner, served at once.
    async fn serve_jobs(&mut self) {
        for _ in 0..BATCH_ROUNDS {
            let mut batches = Vec::new();
            let concurrency = if self.serial { 1 } else { CONCURRENCY };
            for _ in 0..concurrency {
                let records = self.queue.receive_jobs(BATCH_SIZE);
                if !records.is_empty() {
                    let invocation = self.invocation();
                    batches.push((invocation, records));
                }
            }
            if batches.is_empty() {
                return;
            }
            let create = &self.create;
            let queue = &self.queue;
            // The serve deadline leaves the SendCommand backoff one real second: an instance SSM
            // will never know (it was ended) costs that, not create-runner's five minutes.
            let deadline = Instant::now() + Duration::from_secs(21);
            let mut tasks: Vec<(u64, Task<'_, (String, Outcome)>)> = Vec::new();
            for (invocation, records) in &batches {
                for (record, receives) in records {
                    let task = async move {
                        let outcome = create.serve(&record.body, *receives, deadline).await;
                        if let Outcome::HandedBack { delay_seconds, .. } = &outcome {
                            // As handle_batch: a failed hide leaves the visibility timeout.
                            let _ = queue.hide(QUEUE, &record.receipt_handle, *delay_seconds).await;
                        }
                        (record.receipt_handle.clone(), outcome)
                    };
                    tasks.push((*invocation, Box::pin(task)));
                }
            }
            let bodies: Vec<String> = batches
                .iter()
                .flat_map(|(_, records)| records.iter().map(|(r, _)| r.body.clone()))
                .collect();
            let answers = if self.serial {
                // One record at a time, as a create-runner limited to one invocation and one
                // record in flight would serve them.
                let mut answers = Vec::new();
                for (invocation, task) in tasks {
                    if self.chaos.is_killed(invocation) {
                        answers.push(None);
                        continue;
                    }
                    answers.extend(interleave(&self.chaos, vec![(invocation, task)]).await);
                }
                answers
            } else {
                interleave(&self.chaos, tasks).await
            };
            for (answer, body) in answers.into_iter().zip(bodies) {
                self.settle(&body, answer);
            }
        }
    }

    /// What the event source mapping does with a record's answer (None: its handler was killed,
    /// and the message comes back after its visibility timeout).
    fn settle(&mut self, body: &str, answer: Option<(String, Outcome)>) {
        let job_id = JobMessage::decode(body).map(|m| m.job_id).unwrap_or(0);
        let Some((receipt, outcome)) = answer else {
            self.note(job_id, "create-runner killed");
            return;
        };
        self.note(job_id, format!("create-runner: {outcome:?}"));
        match outcome {
            Outcome::HandedBack { reason, .. } => {
                self.figures.handed_back += 1;
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.last_hand_back = Some(reason);
                }
            }
            Outcome::Served { .. } => self.queue.delete_job(&receipt),
            Outcome::Waiting(_) => {
                // Parked again after a wake: the slot it was woken for was taken, or EC2 still
                // listed the instance that had held it.
                let again = JobMessage::decode(body).is_ok_and(|m| m.trip > 0);
                let why = if again {
                    "create: waiting for room (again, after a wake)"
                } else {
                    "create: waiting for room"
                };
                *self.figures.dropped.entry(why.to_string()).or_default() += 1;
                self.queue.delete_job(&receipt);
            }
            Outcome::Acknowledged(reason) => {
                let why = if reason.contains("already has instance") {
                    "create: job already has an instance"
                } else if reason.contains("no runner launched") {
                    "create: job no longer queued"
                } else if reason.contains("already registered by another handler") {
                    "create: another handler has the instance"
                } else {
                    "create: other"
                };
                *self.figures.dropped.entry(why.to_string()).or_default() += 1;
                self.queue.delete_job(&receipt);
            }
        }
    }

    /// Runs a stop-runner invocation (an event, the sweep) while create-runner's event source
    /// mapping polls the jobs queue beside it: SQS hands a message stop-runner sends to
    /// create-runner at once, before stop-runner's next call returns.
    async fn beside_create_runner<'a, T: 'a>(&'a self, invocation: u64, task: Task<'a, T>) -> Besides<T> {
        let done = Arc::new(AtomicBool::new(false));
        let poller = self.invocation_after(invocation);
        let first: Task<'a, Either<T>> = {
            let done = done.clone();
            Box::pin(async move {
                let value = task.await;
                done.store(true, Ordering::SeqCst);
                Either::Stop(value)
            })
        };
        let create = &self.create;
        let queue = &self.queue;
        let chaos = &self.chaos;
        let second: Task<'a, Either<T>> = Box::pin(async move {
            let mut answers = Vec::new();
            while !done.load(Ordering::SeqCst) && !chaos.is_killed(invocation) {
                let deadline = Instant::now() + Duration::from_secs(21);
                for (record, receives) in queue.receive_jobs(1) {
                    let outcome = create.serve(&record.body, receives, deadline).await;
                    if let Outcome::HandedBack { delay_seconds, .. } = &outcome {
                        let _ = queue.hide(QUEUE, &record.receipt_handle, *delay_seconds).await;
                    }
                    answers.push((record.body.clone(), (record.receipt_handle.clone(), outcome)));
                }
                YieldOnce(false).await;
            }
            Either::Served(answers)
        });
        let mut results = interleave(&self.chaos, vec![(invocation, first), (poller, second)]).await;
        let served = match results.pop().flatten() {
            Some(Either::Served(answers)) => answers,
            _ => Vec::new(),
        };
        let value = match results.pop().flatten() {
            Some(Either::Stop(value)) => Some(value),
            _ => None,
        };
        Besides { value, served }
    }

    async fn sweep(&mut self) {
        let invocation = self.invocation();
        self.next_invocation += 1; // the poller's
        let stop = &self.stop;
        let far = Instant::now() + Duration::from_secs(300);
        let task: Task<'_, _> = Box::pin(stop.sweep(far));
        let Besides { value, served } = self.beside_create_runner(invocation, task).await;
        for (body, answer) in served {
            self.settle(&body, Some(answer));
        }
        if let Some(report) = value {
            self.figures.relaunched += report.relaunched as u64;
            self.figures.unroutable_ended += report.unroutable as u64;
        }
        self.carry_out_reruns();
    }

    async fn move_jobs(&mut self) {
        let invocation = self.invocation();
        let move_jobs = &self.move_jobs;
        let far = Instant::now() + Duration::from_secs(300);
        let task: Task<'_, _> = Box::pin(move_jobs.run(far));
        if let Some(Some(report)) = interleave(&self.chaos, vec![(invocation, task)]).await.pop() {
            self.figures.moved_back += report.moved as u64;
            for (reason, n) in report.dropped {
                *self.figures.dropped.entry(format!("move-jobs: {reason}")).or_default() += n as u64;
            }
        }
        // Then, in the same invocation, the failed deliveries.
        let invocation = self.invocation();
        let task: Task<'_, _> = Box::pin(self.redeliver.run(far));
        interleave(&self.chaos, vec![(invocation, task)]).await;
        self.carry_out_redeliveries();
    }

    fn final_checks(&mut self) {
        self.check_violations();
        let mut problems = Vec::new();
        let leaked_instances: Vec<String> = self.fleet.live_instances().into_iter().map(|i| i.id).collect();
        let leaked_parameters = self.parameters.names();
        let leaked_slots = self.slots.all();
        let leaked_runners: Vec<u64> = self.github.runners().iter().map(|r| r.runner.id).collect();
        let leaks = leaked_instances.len() + leaked_parameters.len() + leaked_slots.len() + leaked_runners.len();
        if leaks > 0 {
            problems.push(format!(
                "left behind: instances {leaked_instances:?}, JIT parameters {leaked_parameters:?}, slots \
                 {leaked_slots:?}, runners {leaked_runners:?}"
            ));
        }
        self.figures.leaks = leaks as u64;
        let dlq: BTreeMap<u64, usize> = self
            .queue
            .bodies(true)
            .iter()
            .filter_map(|body| JobMessage::decode(body).ok())
            .fold(BTreeMap::new(), |mut acc, m| {
                *acc.entry(m.job_id).or_default() += 1;
                acc
            });
        problems.extend(self.interruption_problems());
        for job in self.jobs.values() {
            match &job.state {
                // Re-runs and interrupted jobs are counted by `interruption_problems`.
                JobState::Ran if job.rerun_of.is_some() => {}
                JobState::Interrupted(_) => {}
                JobState::Ran => self.figures.ran += 1,
                JobState::Cancelled => self.figures.cancelled += 1,
                JobState::RanElsewhere => self.figures.ran_elsewhere += 1,
                JobState::Running(instance) => {
                    problems.push(format!("job {} still running on {instance} at the end", job.id))
                }
                JobState::Queued if dlq.contains_key(&job.id) => {}
                JobState::Queued if job.relaunches_exhausted => self.figures.relaunches_exhausted += 1,
                JobState::Queued if job.unroutable => self.figures.unroutable += 1,
                JobState::Queued => problems.push(format!(
                    "job {} ({}) vanished: GitHub still has it queued, no message holds it, its relaunches were not \
                     exhausted. History:\n      {}",
                    job.id,
                    job.template,
                    self.history(job.id)
                )),
            }
        }
        let ledger = self.chaos.ledger.lock().unwrap();
        self.figures.launches = ledger.launches;
        self.figures.retries = ledger.retries;
        drop(ledger);
        self.figures.dlq_trips = self.queue.state.lock().unwrap().dlq_trips;
        self.figures.faults = self.chaos.faults.lock().unwrap().clone();
        for template in self.config.templates.keys() {
            let peak = self.fleet.peak_live(template);
            self.figures.peak_live.insert(template.clone(), peak);
            let max = self.config.templates[template].max_runners as usize;
            if peak > max {
                problems.push(format!(
                    "template `{template}` peaked at {peak} live instances, max_runners {max}"
                ));
            }
        }
        if !problems.is_empty() {
            let count = problems.len();
            problems.truncate(3);
            self.fail(format!("{count} problem(s) at the end:\n  {}", problems.join("\n  ")));
        }
    }

    /// The interruption invariants: every job interrupted while running (and failed by GitHub)
    /// is re-run exactly once, its re-run launched on-demand only and succeeding; nothing else
    /// is re-run. Counts the interruption figures on the way.
    fn interruption_problems(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut figures = std::mem::take(&mut self.figures.interruptions);
        let (calls, launched_for) = {
            let ledger = self.chaos.ledger.lock().unwrap();
            figures.backoffs_started = ledger.backoffs_started;
            figures.backoffs_ended = ledger.backoffs_ended;
            figures.on_demand_for_backoff = ledger.on_demand_for_backoff;
            (ledger.rerun_calls.clone(), ledger.launched_for.clone())
        };
        let mut taken: BTreeMap<u64, u64> = BTreeMap::new();
        for call in &calls {
            let state = self.jobs.get(&call.job_id).map(|job| &job.state);
            if !matches!(state, Some(JobState::Interrupted(_))) {
                problems.push(format!(
                    "minute {}: re-run of job {} asked ({:?}), which was not interrupted while running (GitHub: {state:?}). \
                     History:\n      {}",
                    call.minute,
                    call.job_id,
                    call.answer,
                    self.history(call.job_id)
                ));
            }
            if taken.get(&call.job_id).is_some_and(|n| *n > 0) {
                problems.push(format!(
                    "minute {}: re-run of job {} asked again ({:?}) after GitHub took one. History:\n      {}",
                    call.minute,
                    call.job_id,
                    call.answer,
                    self.history(call.job_id)
                ));
            }
            match call.answer {
                RerunAnswer::Taken { .. } => {
                    *taken.entry(call.job_id).or_default() += 1;
                    figures.reruns_asked += 1;
                }
                RerunAnswer::Refused => figures.reruns_refused += 1,
                RerunAnswer::Failed => {}
            }
        }
        for job in self.jobs.values() {
            if let JobState::Interrupted(instance_id) = &job.state {
                figures.interrupted += 1;
                let reruns = taken.get(&job.id).copied().unwrap_or(0);
                let launched_for_other_run = self
                    .fleet
                    .instance(instance_id)
                    .is_some_and(|i| i.run_id() != job.run_id);
                if launched_for_other_run {
                    figures.interrupted_on_another_runs_runner += 1;
                }
                if reruns != 1 {
                    // GitHub gives a queued job to any idle runner with its labels.
                    let launched_for = self
                        .fleet
                        .instance(instance_id)
                        .and_then(|i| i.tag(TAG_JOB_ID).map(str::to_string))
                        .unwrap_or_default();
                    let whose = if launched_for == job.id.to_string() {
                        "launched for it".to_string()
                    } else {
                        format!("launched for job {launched_for}, whose runner GitHub gave this job")
                    };
                    // What the interruptions table and the instance say, to tell where it went.
                    let followed = self.interruptions.followed().contains(&job.id);
                    let claims: Vec<_> = self
                        .interruptions
                        .reruns()
                        .into_iter()
                        .filter(|r| r.run_id == job.run_id)
                        .collect();
                    let ran = self
                        .interruptions
                        .ran_on(instance_id)
                        .now()
                        .and_then(Result::ok)
                        .flatten();
                    let tags = self.fleet.instance(instance_id).map(|i| {
                        (
                            i.state,
                            i.state_reason.clone(),
                            i.tag(TAG_RELAUNCHED).map(str::to_string),
                            i.tag(TAG_INTERRUPTION_RECORDED).map(str::to_string),
                        )
                    });
                    problems.push(format!(
                        "job {} was interrupted while running on {instance_id} ({whose}) and GitHub failed it, but \
                         GitHub re-ran it {reruns} times (once expected). Still followed: {followed}; claims of its \
                         run: {claims:?}; the webhook's record for the instance: {ran:?}; the instance (state, reason, \
                         relaunched, interruption-recorded): {tags:?}. History:\n      {}",
                        job.id,
                        self.history(job.id)
                    ));
                }
            }
            let Some(interrupted) = job.rerun_of else {
                continue;
            };
            let launches = launched_for.get(&job.id).cloned().unwrap_or_default();
            let on_spot: Vec<&String> = launches
                .iter()
                .filter(|(_, capacity)| *capacity == Capacity::Spot)
                .map(|(instance_id, _)| instance_id)
                .collect();
            if !on_spot.is_empty() {
                problems.push(format!(
                    "job {} (the re-run of interrupted job {interrupted}) was launched on spot: {on_spot:?} (its launches: \
                     {launches:?}). History:\n      {}",
                    job.id,
                    self.history(job.id)
                ));
            } else if !launches.is_empty() {
                figures.reruns_on_demand += 1;
            }
            match &job.state {
                JobState::Ran => figures.reruns_succeeded += 1,
                // Interrupted again (on a runner launched for another job): its own re-run is checked above.
                JobState::Interrupted(_) => {}
                other => problems.push(format!(
                    "job {} (the re-run of interrupted job {interrupted}) did not succeed: {other:?}. History:\n      {}",
                    job.id,
                    self.history(job.id)
                )),
            }
        }
        self.figures.interruptions = figures;
        problems
    }
}

/// Polls a future of the fakes once: they never wait.
trait Now: Future + Sized {
    fn now(self) -> Option<Self::Output> {
        let mut future = Box::pin(self);
        let mut context = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut context) {
            Poll::Ready(value) => Some(value),
            Poll::Pending => None,
        }
    }
}

impl<F: Future> Now for F {}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

async fn run_seeds(title: &str, seeds: impl Iterator<Item = u64>, jobs_per_seed: usize, mode: Mode) -> Figures {
    let started = std::time::Instant::now();
    let mut total = Figures::default();
    for seed in seeds {
        let mode = match mode {
            Mode::Alternating if seed % 2 == 1 => Mode::Concurrent,
            Mode::Alternating => Mode::Serial,
            mode => mode,
        };
        let figures = Sim::new(seed, jobs_per_seed, mode).run().await;
        total.add(&figures);
        if title == "soak" && total.seeds % 100 == 0 {
            println!(
                "soak: {} jobs over {} seeds, {:.0} s",
                total.jobs,
                total.seeds,
                started.elapsed().as_secs_f64()
            );
        }
    }
    total.print(title, started.elapsed());
    total
}

fn seeds(default: std::ops::RangeInclusive<u64>) -> std::ops::RangeInclusive<u64> {
    match env_number("SOPHONS_SIM_SEED") {
        Some(seed) => seed..=seed,
        None => default,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn nothing_lost_doubled_or_leaked_under_faults() {
    let jobs = env_number("SOPHONS_SIM_JOBS").unwrap_or(500) as usize;
    let total = run_seeds("simulation", seeds(1..=20), jobs, Mode::Serial).await;
    assert!(total.jobs >= 500);
    assert_eq!(total.leaks, 0);
}

#[tokio::test(flavor = "current_thread")]
#[ignore = "a million jobs: make soak"]
async fn soak() {
    let total_jobs = env_number("SOPHONS_SOAK_JOBS").unwrap_or(1_000_000);
    let per_seed = env_number("SOPHONS_SIM_JOBS").unwrap_or(500);
    let count = total_jobs.div_ceil(per_seed);
    let total = run_seeds("soak", seeds(1_000..=999 + count), per_seed as usize, Mode::Alternating).await;
    assert!(total.jobs >= total_jobs.min(per_seed));
    assert_eq!(total.leaks, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_create_runner_invocations_never_exceed_max_runners() {
    let jobs = env_number("SOPHONS_SIM_JOBS").unwrap_or(500) as usize;
    let total = run_seeds(
        "concurrent create-runner invocations",
        seeds(101..=110),
        jobs,
        Mode::Concurrent,
    )
    .await;
    assert_eq!(total.leaks, 0);
}
