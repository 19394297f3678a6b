//! stop-runner: ends every instance of ours whose runner script has ended (the SSM status event),
//! and the sweep that catches what events missed (EventBridge delivery is best-effort).
//!
//! Only instances carrying this deployment's tag, and only for a command whose id matches the
//! instance's command tag, are ever touched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::commands::CommandStatus;
use crate::config::Config;
use crate::fleet::{Instance, InstanceQuery, InstanceState, TAG_INTERRUPTION_RECORDED, TAG_RELAUNCHED, TAG_REPOSITORY};
use crate::github::{JobStatus, Runner, RunnerScope};
use crate::job::{JobMessage, MESSAGE_VERSION, now_rfc3339};
use crate::metrics::{Emf, name as metric};
use crate::names;
use crate::slots::{ClaimedSlot, slot_of};

pub const SSM_DETAIL_TYPE: &str = "EC2 Command Invocation Status-change Notification";
pub const SCHEDULE_DETAIL_TYPE: &str = "Scheduled Event";
/// EC2's two minutes' notice before it takes a spot instance back
/// (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>).
pub const SPOT_WARNING_DETAIL_TYPE: &str = "EC2 Spot Instance Interruption Warning";
/// An instance changed state; Terraform routes only `terminated` here
/// (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instance-state-changes.html>).
pub const STATE_CHANGE_DETAIL_TYPE: &str = "EC2 Instance State-change Notification";
/// Statuses after which the runner script is no longer running.
pub const TERMINAL_STATUSES: &[&str] = &[
    "Success",
    "Failed",
    "TimedOut",
    "Cancelled",
    "Undeliverable",
    "Terminated",
];
/// EC2's state reason for an instance it ended to take spot capacity back
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_StateReason.html>).
const SPOT_RECLAIM_REASON: &str = "Server.SpotInstanceTermination";

/// A launch slot claimed longer ago than this with no live instance holding it is stale: no
/// create-runner invocation lasts longer (Lambda's limit is 15 minutes).
pub const SLOT_CLAIM_GRACE: Duration = Duration::from_secs(16 * 60);
/// A job is sent back at most this often whatever the reason: a bound on a job whose runners
/// keep being given other jobs.
pub const MAX_SEND_BACKS: u32 = 20;
/// Time kept back from the Lambda deadline.
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

use crate::ports::Ports;

/// What an instance's event led to (stop-runner answers it as JSON: `{"ended": {...}}`,
/// `{"warned": {...}}` or `{"ignored": "<reason>"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// The instance was ended; `relaunched` says whether its job was sent back for a new runner.
    Ended { instance_id: String, relaunched: bool },
    /// EC2 warned that it takes the instance back: its job is followed for a re-run.
    Warned { instance_id: String },
    /// Nothing of ours to do: not our instance, not our command, not terminal, or already handled.
    Ignored(String),
}

/// What became of a job whose runner ended without running it (`relaunch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relaunch {
    /// Sent back to the jobs queue for a new runner.
    Sent,
    /// Nothing to send: GitHub has the job running or done, or it reached its limits (logged).
    NotNeeded,
    /// It should have gone back and could not, or GitHub could not say after a Success: the
    /// instance is left as it is for the sweep or a retried event.
    Retry,
}

/// What an online runner is doing, as the sweep sees it.
enum Idleness {
    Working,
    JobWentElsewhere,
    /// Online and idle past the idle limit while its own job stays queued.
    JobNeverRouted,
}

/// Counts of one sweep, by reason (stop-runner's answer to the schedule, as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    pub examined: usize,
    pub lifetime_exceeded: usize,
    pub never_started: usize,
    pub command_ended: usize,
    pub idle: usize,
    /// Runners online and idle while their own job stayed queued: GitHub never routes it to them.
    pub unroutable: usize,
    /// Instances EC2 ended (spot reclaims) whose job had not been looked after yet.
    pub reclaimed: usize,
    pub relaunched: usize,
    pub parameters_deleted: usize,
    pub runners_removed: usize,
    pub slots_freed: usize,
    /// Jobs the sweep sent back from the waiting list to free slots.
    pub woken: usize,
    /// What became of the interrupted jobs followed (`interruptions`).
    pub interrupted: crate::interruptions::Followed,
    pub errors: usize,
}

impl SweepReport {
    pub fn cleaned(&self) -> usize {
        self.lifetime_exceeded + self.never_started + self.command_ended + self.idle + self.unroutable + self.reclaimed
    }
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "detail-type", default)]
    detail_type: String,
    #[serde(default)]
    source: String,
    /// When the event happened (RFC 3339).
    #[serde(default)]
    time: String,
    #[serde(default)]
    detail: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Stop(Stopped),
    Sweep(SweepReport),
    Ignored(String),
}

pub struct StopRunner {
    config: Arc<Config>,
    ports: Ports,
}

impl StopRunner {
    pub fn new(config: Arc<Config>, ports: Ports) -> Self {
        Self { config, ports }
    }

    /// The Lambda entry point: tells an SSM status event from the sweep's schedule.
    pub async fn handle(&self, event: Value, deadline: Instant) -> Handled {
        let Ok(event) = serde_json::from_value::<Event>(event) else {
            tracing::warn!("event ignored: not an EventBridge event");
            return Handled::Ignored("not an EventBridge event".into());
        };
        match event.detail_type.as_str() {
            SSM_DETAIL_TYPE => {
                let field = |name: &str| {
                    event
                        .detail
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                Handled::Stop(
                    self.command_ended(&field("instance-id"), &field("command-id"), &field("status"))
                        .await,
                )
            }
            SCHEDULE_DETAIL_TYPE => Handled::Sweep(self.sweep(deadline).await),
            SPOT_WARNING_DETAIL_TYPE => {
                let at = crate::job::parse_rfc3339(&event.time).unwrap_or_else(SystemTime::now);
                let instance_id = event
                    .detail
                    .get("instance-id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Handled::Stop(self.interruption_warned(instance_id, at).await)
            }
            STATE_CHANGE_DETAIL_TYPE => {
                let field = |name: &str| event.detail.get(name).and_then(Value::as_str).unwrap_or_default();
                Handled::Stop(self.state_changed(field("instance-id"), field("state")).await)
            }
            other => {
                let reason = format!("event `{other}` from `{}` is not one stop-runner handles", event.source);
                tracing::warn!("event ignored: {reason}");
                Handled::Ignored(reason)
            }
        }
    }

    /// An SSM command invocation reached a status.
    pub async fn command_ended(&self, instance_id: &str, command_id: &str, status: &str) -> Stopped {
        let ignore = |reason: String| {
            tracing::info!(instance_id, command_id, status, "event ignored: {reason}");
            Stopped::Ignored(reason)
        };
        if !TERMINAL_STATUSES.contains(&status) {
            return ignore(format!("status `{status}` is not terminal"));
        }
        // Terminated too: a spot reclaim ends the instance before its command's status changes.
        let Some(instance) = self.look_up(instance_id).await else {
            return ignore(format!(
                "{instance_id} is not an instance of deployment `{}` (or is gone)",
                self.config.deployment
            ));
        };
        if instance.command_id() != Some(command_id) {
            return ignore(format!(
                "command {command_id} is not the runner command of {instance_id}"
            ));
        }
        if instance.ended_by_ec2() && !instance.looked_after() {
            let relaunched = self.reclaimed(&instance).await;
            return Stopped::Ended {
                instance_id: instance_id.to_string(),
                relaunched,
            };
        }
        if !instance.state.is_live() {
            // Already being ended (a repeated or late event): finish the cleanup, relaunch nothing.
            self.end(&instance, None).await;
            return ignore(format!("{instance_id} is already ending"));
        }
        let relaunched = self.end(&instance, Some(status)).await;
        Stopped::Ended {
            instance_id: instance_id.to_string(),
            relaunched,
        }
    }

    /// EC2 takes `instance_id` back in two minutes: its job is recorded to be followed for a
    /// re-run (`interruptions`). The rest ends as for any reclaim, once the instance has ended.
    pub async fn interruption_warned(&self, instance_id: &str, at: SystemTime) -> Stopped {
        let Some(instance) = self.look_up(instance_id).await else {
            let reason = format!(
                "{instance_id} is not an instance of deployment `{}` (or is gone)",
                self.config.deployment
            );
            tracing::info!(instance_id, "spot interruption warning ignored: {reason}");
            return Stopped::Ignored(reason);
        };
        crate::interruptions::record(&self.config, &self.ports, &instance, at, true, "the two-minute warning").await;
        Stopped::Warned {
            instance_id: instance_id.to_string(),
        }
    }

    /// An instance changed state (Terraform routes `terminated`): one EC2 ended is looked after
    /// at once (its job sent back or followed, its slot freed); one ended by us needs nothing.
    pub async fn state_changed(&self, instance_id: &str, state: &str) -> Stopped {
        let ignore = |reason: String| {
            tracing::debug!(instance_id, state, "state change ignored: {reason}");
            Stopped::Ignored(reason)
        };
        if state != "terminated" {
            return ignore(format!("state `{state}` is not one stop-runner acts on"));
        }
        let Some(instance) = self.look_up(instance_id).await else {
            return ignore(format!(
                "{instance_id} is not an instance of deployment `{}`",
                self.config.deployment
            ));
        };
        if !instance.ended_by_ec2() || instance.looked_after() {
            return ignore(format!("{instance_id} was ended by sophons, or looked after already"));
        }
        let relaunched = self.reclaimed(&instance).await;
        Stopped::Ended {
            instance_id: instance_id.to_string(),
            relaunched,
        }
    }

    /// One instance of this deployment, ended ones too; None when it is not ours, or on error
    /// (logged: the sweep finds it).
    async fn look_up(&self, instance_id: &str) -> Option<Instance> {
        if instance_id.is_empty() {
            return None; // an event without `detail.instance-id`
        }
        let query = InstanceQuery {
            instance_id: Some(instance_id.to_string()),
            with_terminated: true,
            ..Default::default()
        };
        match self.ports.fleet.instances(&self.config.deployment, &query).await {
            Ok(found) => found.into_iter().next(),
            Err(error) => {
                tracing::error!(instance_id, %error, "cannot look the instance up; the sweep looks after it");
                None
            }
        }
    }

    /// Terminate, cancel the spot request, delete the JIT parameter, remove the runner. When the
    /// command ended (whatever its status) and the job is still queued, send the job back: the
    /// runner died before taking it, or GitHub gave the runner another job with the same labels.
    /// Answers whether the job was sent back.
    async fn end(&self, instance: &Instance, command_status: Option<&str>) -> bool {
        let instance_id = instance.id.as_str();
        let job_id: u64 = instance.job_id();
        // The job goes back before anything is ended: if the send fails (or this handler dies
        // before it), the instance is still there for the sweep or the retried event to try again.
        let relaunched = match command_status {
            Some(status) => match self.relaunch(instance, job_id, status).await {
                Relaunch::Sent => true,
                Relaunch::NotNeeded => false,
                Relaunch::Retry => return false,
            },
            None => false,
        };
        let repository = instance.repository();
        let ending = crate::ports::Ending {
            instance_id,
            spot_request_id: instance.spot_request_id.as_deref(),
            runner_id: instance.runner_id(),
            scope: &RunnerScope::for_job(&self.config.github, repository),
            job_id,
        };
        if self.ports.end_instance(&self.config.deployment, &ending).await {
            // The slot is free: the oldest job waiting for this template takes it.
            if let Some(template) = crate::slots::free_slot_of_ended(self.ports.slots.as_ref(), instance, job_id).await
            {
                crate::waiting::wake(&self.config, &self.ports, template).await;
            }
        }
        tracing::info!(
            job_id,
            instance_id,
            command_status = command_status.unwrap_or(""),
            relaunched,
            step = crate::logging::step::INSTANCE_ENDED,
            "job {job_id}: instance {instance_id} ended"
        );
        relaunched
    }

    /// How long the oldest job in a template's waiting list has waited since GitHub queued it
    /// (`OldestWaiting`; nothing while the list is empty, or cannot be read).
    async fn emit_oldest_waiting(&self, template: &str) {
        let Some(waiting) = &self.ports.waiting else {
            return;
        };
        let oldest = match waiting.oldest(template, 1).await {
            Ok(listed) => listed.into_iter().next(),
            Err(error) => {
                tracing::warn!(template, %error, "sweep: cannot read the waiting list");
                return;
            }
        };
        if let Some(queued) = oldest.as_ref().and_then(crate::waiting::Parked::queued_at) {
            let waited = SystemTime::now().duration_since(queued).unwrap_or_default();
            Emf::new(&self.config.deployment)
                .dimension("template", template)
                .seconds(metric::OLDEST_WAITING, waited)
                .emit();
        }
    }

    /// Slots no live instance holds, claimed longer ago than any create-runner invocation lasts:
    /// their claimant died before launching, or their release failed. A slot claimed again
    /// between the listing and the release is kept (the release names the claim it read).
    async fn free_stale_slots(&self, instances: &[Instance], report: &mut SweepReport) {
        let claims = match self.ports.slots.list(None).await {
            Ok(claims) => claims,
            Err(error) => {
                tracing::warn!(%error, "sweep: cannot list launch slots");
                report.errors += 1;
                return;
            }
        };
        let held: BTreeSet<(&str, u32)> = instances
            .iter()
            .filter(|i| i.state.is_live())
            .filter_map(slot_of)
            .collect();
        for ClaimedSlot { template, slot, claim } in claims {
            if held.contains(&(template.as_str(), slot)) {
                continue;
            }
            let age = SystemTime::now().duration_since(claim.at).unwrap_or_default();
            if age <= SLOT_CLAIM_GRACE {
                continue;
            }
            match self.ports.slots.release(&template, slot, &claim).await {
                Ok(true) => report.slots_freed += 1,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(template, slot, %error, "sweep: cannot free a launch slot");
                    report.errors += 1;
                }
            }
        }
    }

    /// EC2 ended the instance (a spot reclaim, a host failure), perhaps before its runner took the
    /// job: the job goes back if GitHub still has it queued, as for a runner that died. The
    /// instance is then tagged, so that repeated events and later sweeps (EC2 lists a terminated
    /// instance for about an hour) do not send it again. Answers whether the job was sent back.
    async fn reclaimed(&self, instance: &Instance) -> bool {
        let job_id: u64 = instance.job_id();
        let why = format!(
            "instance ended by EC2 ({})",
            instance.state_reason.as_deref().unwrap_or_default()
        );
        tracing::warn!(job_id, instance_id = instance.id, reason = why, "job {job_id}: {why}");
        let relaunched = match self.relaunch(instance, job_id, &why).await {
            Relaunch::Sent => true,
            Relaunch::NotNeeded => false,
            Relaunch::Retry => return false, // nothing marked: the next event or sweep tries again
        };
        let mut mark = vec![(TAG_RELAUNCHED.to_string(), relaunched.to_string())];
        // Counted once per reclaim looked after (the mark below keeps it from being looked after again).
        if instance.state_reason.as_deref() == Some(SPOT_RECLAIM_REASON) {
            // Followed for a re-run (recorded already if the warning came; this covers a warning
            // lost). Even when its own job was still queued and sent back: the runner may have run
            // another job with the same labels, which the follow-up finds in the job's run.
            let how = "the instance ended with Server.SpotInstanceTermination";
            let recorded =
                crate::interruptions::record(&self.config, &self.ports, instance, SystemTime::now(), false, how).await;
            if !recorded && !relaunched {
                // Not marked: the next event or sweep looks after it again, and records it.
                return false;
            }
            // Its job sent back, it is marked looked after (not sent twice); the sweep still
            // records the interruption when this record failed.
            mark.push((TAG_INTERRUPTION_RECORDED.to_string(), recorded.to_string()));
            Emf::new(&self.config.deployment)
                .dimension(
                    "template",
                    instance.tag(crate::fleet::TAG_TEMPLATE).unwrap_or("unknown"),
                )
                .count(metric::SPOT_RECLAIMS, 1)
                .property("job_id", job_id)
                .property("instance_id", instance.id.as_str())
                .emit();
        }
        if let Err(error) = self.ports.fleet.tag(&instance.id, &mark).await {
            // Harmless: a job sent back twice gets one instance (create-runner finds the first).
            tracing::warn!(job_id, instance_id = instance.id, %error, "cannot mark the ended instance; a later sweep may send its job back again");
        }
        self.end(instance, None).await;
        relaunched
    }

    /// An instance EC2 took back whose job was sent back but whose interruption could not be
    /// recorded then: recorded now, and marked so.
    async fn record_late(&self, instance: &Instance) {
        let how = "the sweep, after a failed record";
        if crate::interruptions::record(&self.config, &self.ports, instance, SystemTime::now(), false, how).await {
            let mark = [(TAG_INTERRUPTION_RECORDED.to_string(), "true".to_string())];
            if let Err(error) = self.ports.fleet.tag(&instance.id, &mark).await {
                tracing::warn!(instance_id = instance.id, %error, "cannot mark the interruption recorded; the next sweep records it again");
            }
        }
    }

    /// The runner ended without running its job: it died before taking it (bad AMI, script
    /// failure, spot reclaim during boot), or GitHub gave it another queued job with the same
    /// labels (its command then ends in Success). A job GitHub still has queued goes back to the
    /// jobs queue, a limited number of times. Answers whether it was sent back; an error when it
    /// should have been and could not, or when GitHub could not say after a Success.
    ///
    /// Long because it is the limits checked in order (GitHub's status, runner failures, send-backs) and the
    /// message rebuilt from the instance's tags.
    async fn relaunch(&self, instance: &Instance, job_id: u64, status: &str) -> Relaunch {
        let repository = instance.repository().to_string();
        match self.ports.github.job_status(&repository, job_id).await {
            Ok(JobStatus::Queued) => {}
            Ok(JobStatus::Other(state)) => {
                tracing::info!(
                    job_id,
                    status,
                    "command ended {status}; job {job_id} is {state}, nothing to relaunch"
                );
                return Relaunch::NotNeeded;
            }
            // After a Success the runner almost always ran its own job: relaunching on every
            // GitHub outage would launch spare instances. The instance stays for the sweep to ask again.
            Err(error) if status == "Success" => {
                tracing::warn!(job_id, %error, "cannot ask GitHub whether the job ran; the sweep will ask again");
                return Relaunch::Retry;
            }
            Err(error) => {
                tracing::warn!(job_id, %error, "cannot ask GitHub about the job; relaunching (create-runner asks again)");
            }
        }
        let relaunches: u32 = instance.relaunches();
        let failures: u32 = instance.runner_failures();
        // After a Success the runner ran a job: GitHub gave it another queued job with the same
        // labels. That runner did nothing wrong, so it does not count against the limit.
        let took_another_job = status == "Success";
        let failures_after = failures + u32::from(!took_another_job);
        if !took_another_job && failures >= self.config.max_job_relaunches {
            tracing::error!(
                job_id,
                repository,
                relaunches,
                runner_failures = failures_after,
                "job {job_id} dropped: {failures_after} runner(s) launched for it ended without running any job \
                 (last: {status}); check the AMI, the runner script's output in the command log group, and spot \
                 interruptions"
            );
            return Relaunch::NotNeeded;
        }
        if relaunches >= MAX_SEND_BACKS {
            tracing::error!(
                job_id,
                repository,
                relaunches,
                "job {job_id} dropped: sent back {relaunches} times; its runners keep being given other jobs \
                 (GitHub gives a queued job to any runner with matching labels)"
            );
            return Relaunch::NotNeeded;
        }
        if took_another_job {
            tracing::info!(
                job_id,
                instance_id = instance.id,
                "job {job_id}: its runner ran another queued job with the same labels (GitHub's choice); the job \
                 gets a new runner, which does not count against max_job_relaunches"
            );
        }
        let template = instance.template().to_string();
        let labels = self
            .config
            .templates
            .get(&template)
            .map(|t| crate::templates::runner_labels(&template, t))
            .unwrap_or_default();
        let (owner, name) = repository.split_once('/').unwrap_or((repository.as_str(), ""));
        let message = JobMessage {
            version: MESSAGE_VERSION,
            delivery_id: format!("relaunch-{}-{job_id}", relaunches + 1),
            job_id,
            run_id: instance.run_id(),
            run_attempt: instance.run_attempt(),
            owner: owner.to_string(),
            name: name.to_string(),
            repository: repository.clone(),
            labels,
            template,
            workflow_name: String::new(),
            job_name: instance.job_name().to_string(),
            job_url: String::new(),
            created_at: String::new(),
            received_at: now_rfc3339(),
            relaunches: relaunches + 1,
            runner_failures: failures_after,
            trip: 0,
        };
        match self
            .ports
            .queue
            .send(&self.config.queue_url, &message.encode(), &message.delivery_id)
            .await
        {
            Ok(_) => {
                tracing::warn!(
                    job_id,
                    status,
                    relaunches = relaunches + 1,
                    runner_failures = failures_after,
                    "runner ended without running its job ({status}); job sent back for a new runner"
                );
                Relaunch::Sent
            }
            Err(error) => {
                tracing::error!(job_id, %error, "cannot send the job back; its instance is left for the sweep to retry");
                Relaunch::Retry
            }
        }
    }

    /// Ends what events missed; deletes leftover parameters and ghost runners.
    ///
    /// Long because it is the sweep's passes in order, each a call (instances, slots, interrupted jobs, the
    /// waiting list's pump, parameters, runners), and its one summary line.
    pub async fn sweep(&self, deadline: Instant) -> SweepReport {
        let mut report = SweepReport::default();
        let stop_at = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
        let deployment = &self.config.deployment;
        let everything = InstanceQuery {
            with_terminated: true,
            ..Default::default()
        };
        let instances = match self.ports.fleet.instances(deployment, &everything).await {
            Ok(instances) => instances,
            Err(error) => {
                tracing::error!(%error, "sweep: cannot list instances; nothing cleaned");
                report.errors += 1;
                return report;
            }
        };
        report.examined = instances.len();
        for (name, template) in &self.config.templates {
            let live = instances
                .iter()
                .filter(|i| i.state.is_live() && i.template() == name.as_str())
                .count() as u64;
            Emf::new(deployment)
                .dimension("template", name)
                .count(metric::LIVE_INSTANCES, live)
                .count(metric::FREE_SLOTS, u64::from(template.max_runners).saturating_sub(live))
                .emit();
        }
        let scopes = self.runner_scopes(&instances);
        let mut runners: BTreeMap<u64, (RunnerScope, Runner)> = BTreeMap::new();
        let mut runners_listed = true;
        for scope in &scopes {
            match self.ports.github.runners(scope).await {
                Ok(listed) => runners.extend(listed.into_iter().map(|r| (r.id, (scope.clone(), r)))),
                Err(error) => {
                    runners_listed = false;
                    tracing::warn!(%error, "sweep: cannot list runners");
                    report.errors += 1;
                }
            }
        }
        let now = SystemTime::now();
        let mut still_live: BTreeSet<String> = BTreeSet::new();
        for instance in &instances {
            if Instant::now() >= stop_at {
                break;
            }
            if self
                .sweep_instance(instance, now, &runners, runners_listed, &mut report)
                .await
            {
                still_live.insert(instance.id.clone());
            }
        }
        self.free_stale_slots(&instances, &mut report).await;
        report.interrupted = crate::interruptions::follow(&self.config, &self.ports).await;
        // The pump: every template with room and jobs waiting moves them, whatever wake was
        // missed (a stop-runner that died after freeing a slot, a slot the sweep freed).
        for template in self.config.templates.keys() {
            report.woken += crate::waiting::wake(&self.config, &self.ports, template).await.moved as usize;
            self.emit_oldest_waiting(template).await;
        }
        // Instances that were already ending also own nothing any more.
        let launching = self
            .delete_orphan_parameters(&still_live, &instances, &mut report)
            .await;
        still_live.extend(launching);
        self.remove_ghost_runners(&still_live, &instances, &runners, &mut report)
            .await;
        tracing::info!(
            examined = report.examined,
            cleaned = report.cleaned(),
            lifetime_exceeded = report.lifetime_exceeded,
            never_started = report.never_started,
            command_ended = report.command_ended,
            idle = report.idle,
            unroutable = report.unroutable,
            reclaimed = report.reclaimed,
            relaunched = report.relaunched,
            parameters_deleted = report.parameters_deleted,
            runners_removed = report.runners_removed,
            slots_freed = report.slots_freed,
            woken = report.woken,
            reruns = report.interrupted.rerun,
            interrupted_followed = report.interrupted.following,
            errors = report.errors,
            "sweep: examined {} instance(s), cleaned {}",
            report.examined,
            report.cleaned()
        );
        report
    }

    /// The sweep's look at one instance: ends it when its time is up, its command ended, it
    /// never started, or its runner idles; looks after one EC2 ended. Answers whether it stays
    /// (it still owns its parameter and runner).
    ///
    /// Long because each reason to end an instance (ended by EC2, lifetime, never started, command ended, idle,
    /// never routed) is checked in this order, the first one deciding.
    async fn sweep_instance(
        &self,
        instance: &Instance,
        now: SystemTime,
        runners: &BTreeMap<u64, (RunnerScope, Runner)>,
        runners_listed: bool,
        report: &mut SweepReport,
    ) -> bool {
        let deployment = &self.config.deployment;
        if !instance.state.is_live() {
            // A reclaim whose event was missed.
            if instance.ended_by_ec2() && !instance.looked_after() {
                report.reclaimed += 1;
                if self.reclaimed(instance).await {
                    report.relaunched += 1;
                }
            } else if instance.interruption_unrecorded() {
                self.record_late(instance).await;
            }
            return false;
        }
        let age = instance
            .launched_at
            .and_then(|at| now.duration_since(at).ok())
            .unwrap_or_default();
        let command = instance.command_id();
        let start_limit = Duration::from_secs(u64::from(self.config.command.start_deadline_seconds) + 60);
        if age > Duration::from_secs(self.config.sweep.max_runner_lifetime_seconds.into()) {
            report.lifetime_exceeded += 1;
            self.end(instance, None).await;
            return false;
        }
        let Some(command_id) = command else {
            // A handler killed between SendCommand and tagging leaves a runner that works
            // without the command tag: a busy runner is not "never started".
            let name = names::runner_name(deployment, &instance.id);
            let busy = runners.values().any(|(_, runner)| runner.name == name && runner.busy);
            // Without the runner list a busy runner cannot be told from none: wait.
            if age <= start_limit || !runners_listed || busy {
                return true;
            }
            report.never_started += 1;
            self.end(instance, None).await;
            return false;
        };
        match self.ports.commands.status(command_id, &instance.id).await {
            Ok(CommandStatus::Ended(status)) => {
                report.command_ended += 1;
                if self.end(instance, Some(&status)).await {
                    report.relaunched += 1;
                }
                return false;
            }
            Ok(CommandStatus::Running) => {}
            Err(error) => {
                tracing::warn!(instance_id = instance.id, %error, "sweep: cannot read the command status");
                report.errors += 1;
            }
        }
        match self.idleness(instance, age, runners).await {
            Idleness::Working => {}
            Idleness::JobWentElsewhere => {
                report.idle += 1;
                self.end(instance, None).await;
                return false;
            }
            Idleness::JobNeverRouted => {
                let job_id = instance.job_id();
                let repository = instance.repository();
                tracing::error!(
                    job_id,
                    repository,
                    instance_id = instance.id,
                    idle_seconds = age.as_secs(),
                    "job {job_id}: GitHub does not give it to its runner, online and idle for over {} s while the \
                     job stays queued; the instance is ended and no new runner launched. Likely causes: the \
                     runner group (runner_group_id {}) is not granted to {repository}, the workflow asks for \
                     another runner group, or its labels differ from the template's in a way GitHub compares. \
                     Fix the group's repository access or the job's `runs-on`, then re-run the job",
                    self.config.sweep.idle_runner_seconds,
                    self.config.github.runner_group_id
                );
                report.unroutable += 1;
                self.end(instance, None).await;
                return false;
            }
        }
        true
    }

    /// Whether a runner online and not busy past the idle limit has anything left to do: its own
    /// job went elsewhere (GitHub gave it another runner, or it was cancelled), or GitHub keeps
    /// its own job queued without giving it to this runner (it never will).
    async fn idleness(
        &self,
        instance: &Instance,
        age: Duration,
        runners: &BTreeMap<u64, (RunnerScope, Runner)>,
    ) -> Idleness {
        if age <= Duration::from_secs(self.config.sweep.idle_runner_seconds.into()) {
            return Idleness::Working;
        }
        let Some((_, runner)) = instance.runner_id().and_then(|id| runners.get(&id)) else {
            return Idleness::Working;
        };
        if runner.status != "online" || runner.busy {
            return Idleness::Working;
        }
        let job_id = instance.job_id();
        let repository = instance.repository();
        match self.ports.github.job_status(repository, job_id).await {
            Ok(JobStatus::Other(_)) => Idleness::JobWentElsewhere,
            Ok(JobStatus::Queued) => Idleness::JobNeverRouted,
            Err(_) => Idleness::Working,
        }
    }

    fn runner_scopes(&self, instances: &[Instance]) -> Vec<RunnerScope> {
        let mut repositories: BTreeSet<String> = self.config.repositories.iter().cloned().collect();
        repositories.extend(
            instances
                .iter()
                .filter_map(|i| i.tag(TAG_REPOSITORY).map(str::to_string)),
        );
        match self.config.github.scope {
            crate::config::Scope::Org => vec![RunnerScope::Org(self.config.github.owner.clone())],
            crate::config::Scope::Repo => repositories.into_iter().map(RunnerScope::Repo).collect(),
        }
    }

    /// Whether an instance the sweep did not list (launched after the listing) is live now.
    async fn launched_since(&self, instances: &[Instance], instance_id: &str) -> bool {
        if instances.iter().any(|i| i.id == instance_id) {
            return false;
        }
        let query = InstanceQuery {
            instance_id: Some(instance_id.to_string()),
            live_only: true,
            ..Default::default()
        };
        // When EC2 cannot answer, keep the thing: a later sweep decides.
        self.ports
            .fleet
            .instances(&self.config.deployment, &query)
            .await
            .map(|found| !found.is_empty())
            .unwrap_or(true)
    }

    /// Deletes JIT parameters no live instance owns. Answers the instances whose parameter was
    /// kept because it is younger than a launch takes and EC2 does not list the instance at all:
    /// a launch in flight (EC2 lists a new instance late), whose runner is not a ghost either.
    async fn delete_orphan_parameters(
        &self,
        live: &BTreeSet<String>,
        instances: &[Instance],
        report: &mut SweepReport,
    ) -> BTreeSet<String> {
        let mut launching = BTreeSet::new();
        let prefix = names::jit_prefix(&self.config.deployment);
        let parameters = match self.ports.parameters.list(&prefix).await {
            Ok(parameters) => parameters,
            Err(error) => {
                tracing::warn!(%error, "sweep: cannot list JIT parameters");
                report.errors += 1;
                return launching;
            }
        };
        let now = SystemTime::now();
        let start_limit = Duration::from_secs(u64::from(self.config.command.start_deadline_seconds) + 60);
        for parameter in parameters {
            let instance_id = parameter.name.strip_prefix(&prefix).unwrap_or_default().to_string();
            if live.contains(&instance_id) || self.launched_since(instances, &instance_id).await {
                continue;
            }
            let young = parameter
                .modified
                .is_some_and(|at| now.duration_since(at).map_or(true, |age| age < start_limit));
            if young && !instances.iter().any(|i| i.id == instance_id) {
                launching.insert(instance_id);
                continue;
            }
            match self.ports.parameters.delete(&parameter.name).await {
                Ok(()) => report.parameters_deleted += 1,
                Err(error) => {
                    tracing::warn!(parameter = parameter.name, %error, "sweep: cannot delete a leftover parameter");
                    report.errors += 1;
                }
            }
        }
        launching
    }

    async fn remove_ghost_runners(
        &self,
        live: &BTreeSet<String>,
        instances: &[Instance],
        runners: &BTreeMap<u64, (RunnerScope, Runner)>,
        report: &mut SweepReport,
    ) {
        let prefix = names::runner_name(&self.config.deployment, "");
        for (id, (scope, runner)) in runners {
            let Some(instance_id) = runner.name.strip_prefix(&prefix) else {
                continue;
            };
            // Runners of listed instances are ended with them (or still working); a ghost's
            // instance is gone altogether (terminated, or no longer listed at all).
            let listed = instances
                .iter()
                .any(|i| i.id == instance_id && i.state != InstanceState::Terminated);
            if !instance_id.starts_with("i-") || runner.status != "offline" || listed || live.contains(instance_id) {
                continue;
            }
            if self.launched_since(instances, instance_id).await {
                continue;
            }
            match self.ports.github.remove_runner(scope, *id).await {
                Ok(()) => report.runners_removed += 1,
                Err(error) => {
                    tracing::warn!(runner_id = id, %error, "sweep: cannot remove a ghost runner");
                    report.errors += 1;
                }
            }
        }
    }
}
