//! Spot interruptions: a job whose spot instance EC2 took back while it ran is re-run once, on
//! on-demand; a template that keeps losing spot launches on-demand for a while (the *back-off*).
//!
//! 1. **Heard.** EC2 warns two minutes before it takes a spot instance back (EventBridge
//!    `EC2 Spot Instance Interruption Warning`), and the instance then ends with the state reason
//!    `Server.SpotInstanceTermination`. stop-runner hears either (the warning, the state change to
//!    `terminated`, the runner command's end, or the sweep, since events can be lost or late) and
//!    *records* the instance's job here. The instance's tags go when the instance does (EC2 lists
//!    a terminated instance for about an hour), so the record lives in a DynamoDB table.
//! 2. **Followed.** The sweep follows every recorded job on GitHub. GitHub re-runs a job only once
//!    its workflow run has completed (it answers 403 before). A job is re-run when GitHub
//!    concluded it `failure` on the interrupted instance's runner, after the warning; it is
//!    *settled* without a re-run when it succeeded, was cancelled, failed before the warning, ran
//!    on another runner, or was re-run by someone already.
//! 3. **Re-run once.** Before asking GitHub, the sweep *claims* the re-run: one item per job name
//!    in the run, holding the interrupted attempt. A claim for this attempt or a later one by
//!    another job stops a second re-run; the claim of the same job is taken again (its ask may
//!    have failed).
//! 4. **On-demand.** GitHub queues the new attempt's job under a new id and sends its `queued`
//!    delivery. create-runner finds the claim by repository, run id and job name, and launches
//!    the new attempt on-demand whatever the template's spot setting.
//! 5. **Back-off.** Every spot loss of a template (an interruption, or a spot launch refused for
//!    capacity) is recorded; after `spot_backoff.after` of them within `within_minutes`, the
//!    template launches on-demand for `on_demand_minutes`. Starting and ending it are conditional
//!    writes, so each is logged once.
//!
//! The table (config key `interruptions_table`; partition key `pk`, sort key `sk`, TTL on
//! `expires_at`) holds four kinds of item:
//!
//! | pk | sk | what |
//! |---|---|---|
//! | `interrupted` | job id `#` instance id | a job to follow (kept 3 days) |
//! | `rerun#<owner/repo>#<run id>` | job name | a claimed re-run (kept 30 days, GitHub's limit) |
//! | `spot#<template>` | instance id, or `capacity#<job id>#<ms>` | a spot loss (kept for the window) |
//! | `backoff` | template | a back-off and when it ends |
//! | `ran#<instance id>` | `job` | the job the instance's runner ran (kept 4 days) |
//!
//! The last is the webhook's: GitHub gives a queued job to any idle runner with its labels, so
//! the runner launched for one job may run another, of another run or repository. GitHub's
//! `in_progress` delivery names the runner that took the job; the webhook keeps it, and the sweep
//! follows the job the interrupted runner ran.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::config::Config;
use crate::fleet::{Capacity, Instance};
use crate::github::{GithubError, JobDetails};
use crate::job::JobMessage;
use crate::logging::step;
use crate::ports::Ports;

/// EC2's two minutes' notice: a job that failed earlier than this before the record failed for
/// another reason.
pub const WARNING: Duration = Duration::from_secs(120);
/// How long a recorded job is followed: GitHub marks a job whose runner vanished as failed within
/// minutes, but its run completes only when its other jobs do.
pub const FOLLOWED_FOR: Duration = Duration::from_secs(3 * 24 * 60 * 60);
/// How long the sweep waits for the record of which job an interrupted runner ran, when neither
/// the job it was launched for nor another of that run ran on it: a failed `in_progress` delivery
/// is redelivered by move-jobs, hourly.
pub const RAN_RECORD_AWAITED: Duration = Duration::from_secs(2 * 60 * 60);
/// How long the record of which job a runner ran is kept.
const RAN_KEPT_FOR: Duration = Duration::from_secs(4 * 24 * 60 * 60);
/// GitHub re-runs a run up to 30 days after it started.
const CLAIM_KEPT_FOR: Duration = Duration::from_secs(30 * 24 * 60 * 60);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InterruptionsError {
    #[error(
        "interruptions table `{0}` does not exist: check interruptions_table in the config document (Terraform's output `interruptions_table_name`)"
    )]
    NoTable(String),
    #[error(
        "interruptions table `{table}`: access denied ({reason}); create-runner needs dynamodb:GetItem, PutItem and Query on it, stop-runner PutItem, Query and DeleteItem, the autoscaler PutItem on items `ran#...`"
    )]
    AccessDenied { table: String, reason: String },
    #[error("interruptions table `{table}`: {reason}")]
    Failed { table: String, reason: String },
}

/// A job whose spot instance EC2 took back, as read from the instance's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    pub job_id: u64,
    /// `owner/name`.
    pub repository: String,
    pub run_id: u64,
    pub template: String,
    pub instance_id: String,
    /// When the warning came, or when the end was seen if the warning was lost.
    pub at: SystemTime,
    /// Whether `at` is the warning's time. Only then does a job that failed before it count as
    /// failed for another reason: an end seen late says nothing of when the job failed.
    pub warned: bool,
}

/// A re-run sophons claimed: the job `job_name` of run `run_id` lost its instance in attempt
/// `attempt`; the next attempt's job launches on-demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerun {
    pub repository: String,
    pub run_id: u64,
    pub job_name: String,
    pub attempt: u32,
    /// The interrupted job's id (the new attempt's job has another).
    pub job_id: u64,
}

/// The job a runner of ours ran, from GitHub's `in_progress` delivery (the webhook writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub instance_id: String,
    pub job_id: u64,
    /// `owner/name`.
    pub repository: String,
    pub run_id: u64,
    pub run_attempt: u32,
    pub job_name: String,
}

#[async_trait]
pub trait Interruptions: Send + Sync {
    /// Keeps which job an instance's runner ran (the webhook, from the `in_progress` delivery;
    /// a redelivery writes the same again).
    async fn ran(&self, ran: &Ran) -> Result<(), InterruptionsError>;
    /// Which job an instance's runner ran, if the webhook heard it.
    async fn ran_on(&self, instance_id: &str) -> Result<Option<Ran>, InterruptionsError>;
    /// Records a job to follow; answers false when it was recorded already.
    async fn record(&self, interrupted: &Interrupted) -> Result<bool, InterruptionsError>;
    /// Every recorded job, read consistently.
    async fn recorded(&self) -> Result<Vec<Interrupted>, InterruptionsError>;
    /// Stops following a job's interruption (one per instance: a job can lose two instances).
    async fn settle(&self, job_id: u64, instance_id: &str) -> Result<(), InterruptionsError>;
    /// Claims the re-run; answers false when another job's claim for this attempt or a later one
    /// is there (the same job's claim is taken again).
    async fn claim_rerun(&self, rerun: &Rerun) -> Result<bool, InterruptionsError>;
    /// Gives a claim back when GitHub refused the re-run (it is asked again later).
    async fn release_rerun(&self, rerun: &Rerun) -> Result<(), InterruptionsError>;
    /// The claim for job `job_name` of a run, if any.
    async fn rerun_of(
        &self,
        repository: &str,
        run_id: u64,
        job_name: &str,
    ) -> Result<Option<Rerun>, InterruptionsError>;
    /// Records a spot loss of `template` under `key` (one per instance or refused launch), kept
    /// `keep_for`; answers how many of the template's losses are at or after `since`.
    async fn spot_lost(
        &self,
        template: &str,
        key: &str,
        at: SystemTime,
        since: SystemTime,
        keep_for: Duration,
    ) -> Result<u32, InterruptionsError>;
    /// Starts `template`'s back-off until `until`, unless one is on at `now`; answers whether this
    /// call started it.
    async fn start_backoff(
        &self,
        template: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, InterruptionsError>;
    /// Every template's back-off, on or over, with when it ends.
    async fn backoffs(&self) -> Result<Vec<(String, SystemTime)>, InterruptionsError>;
    /// Ends a back-off if it is still the one read; answers whether this call ended it.
    async fn end_backoff(&self, template: &str, until: SystemTime) -> Result<bool, InterruptionsError>;
}

/// stop-runner heard that EC2 takes `instance` back (`how`: the warning, the termination...):
/// records its job for a re-run (unless its template turned re-runs off) and counts a spot loss
/// of its template. Errors are logged; a later event or the sweep records it again.
/// Answers false when the record failed (logged): the caller keeps the instance for a later
/// event or the sweep to record it.
pub async fn record(
    config: &Config,
    ports: &Ports,
    instance: &Instance,
    at: SystemTime,
    warned: bool,
    how: &str,
) -> bool {
    let Some(store) = &ports.interruptions else {
        return true;
    };
    let mut recorded = true;
    let template = instance.template().to_string();
    let job_id: u64 = instance.job_id();
    let run_id: u64 = instance.run_id();
    let repository = instance.repository().to_string();
    let instance_id = instance.id.as_str();
    let rerun = config
        .templates
        .get(&template)
        .is_some_and(|t| t.rerun_interrupted_jobs);
    if rerun && job_id > 0 {
        let interrupted = Interrupted {
            job_id,
            repository: repository.clone(),
            run_id,
            template: template.clone(),
            instance_id: instance_id.to_string(),
            at,
            warned,
        };
        match store.record(&interrupted).await {
            Ok(true) => tracing::warn!(
                job_id,
                run_id,
                repository,
                instance_id,
                template,
                how,
                step = step::INTERRUPTED,
                "job {job_id}: EC2 takes its spot instance {instance_id} back ({how}); if GitHub fails the job, it is re-run once on on-demand"
            ),
            Ok(false) => {}
            Err(error) => {
                recorded = false;
                tracing::warn!(job_id, instance_id, %error, "cannot record the interruption; a later event or the sweep records it")
            }
        }
    } else if !rerun {
        tracing::info!(
            job_id,
            instance_id,
            template,
            "job {job_id}: EC2 takes its spot instance back; template `{template}` does not re-run interrupted jobs"
        );
    }
    spot_lost(config, ports, &template, instance_id, at).await;
    recorded
}

/// Counts a spot loss of `template` and starts its back-off when there were `after` of them
/// within the window. `key` names the loss (an instance id, or a refused launch's own key).
pub async fn spot_lost(config: &Config, ports: &Ports, template: &str, key: &str, at: SystemTime) {
    let (Some(store), backoff) = (&ports.interruptions, &config.spot_backoff) else {
        return;
    };
    if backoff.after == 0 || template.is_empty() {
        return;
    }
    let window = Duration::from_secs(u64::from(backoff.within_minutes) * 60);
    let now = SystemTime::now();
    let losses = match store.spot_lost(template, key, at, now - window, window).await {
        Ok(losses) => losses,
        Err(error) => {
            tracing::warn!(template, %error, "cannot record a spot loss; the back-off counts it not");
            return;
        }
    };
    if losses < backoff.after {
        return;
    }
    let until = now + Duration::from_secs(u64::from(backoff.on_demand_minutes) * 60);
    match store.start_backoff(template, until, now).await {
        Ok(true) => tracing::warn!(
            template,
            losses,
            step = step::SPOT_BACKOFF_STARTED,
            "template `{template}` lost spot {losses} times within {} minutes; it launches on-demand for {} minutes",
            backoff.within_minutes,
            backoff.on_demand_minutes
        ),
        Ok(false) => {}
        Err(error) => tracing::warn!(template, %error, "cannot start the spot back-off"),
    }
}

/// Why create-runner launches a job on-demand first, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDemandFirst {
    /// The job is the re-run of an interrupted job (its id).
    Rerun(u64),
    /// The template is backing off spot.
    Backoff,
}

/// Which capacity create-runner asks for first for `message`: on-demand for the re-run of an
/// interrupted job (a later attempt of its run, found by its claim) or during the template's
/// back-off, spot otherwise. A later attempt whose claim cannot be read is an error (the job is
/// handed back and looked at again: launching it on spot could lose it to spot again); a
/// back-off that cannot be read is taken as none.
pub async fn first_capacity(ports: &Ports, message: &JobMessage) -> Result<(Capacity, Option<OnDemandFirst>), String> {
    let Some(store) = &ports.interruptions else {
        return Ok((Capacity::Spot, None));
    };
    let job_id = message.job_id;
    if message.run_attempt > 1 && !message.job_name.is_empty() {
        match store
            .rerun_of(&message.repository, message.run_id, &message.job_name)
            .await
        {
            Ok(Some(rerun)) if message.run_attempt > rerun.attempt => {
                tracing::info!(
                    job_id,
                    run_id = message.run_id,
                    run_attempt = message.run_attempt,
                    interrupted_job_id = rerun.job_id,
                    step = step::RERUN_RECOGNISED,
                    "job {job_id} is the re-run of interrupted job {}: launching on-demand",
                    rerun.job_id
                );
                return Ok((Capacity::OnDemand, Some(OnDemandFirst::Rerun(rerun.job_id))));
            }
            Ok(_) => {}
            Err(error) => {
                return Err(format!(
                    "cannot tell whether job {job_id} re-runs an interrupted job: {error}"
                ));
            }
        }
    }
    match store.backoffs().await {
        Ok(backoffs) => {
            let now = SystemTime::now();
            if backoffs
                .iter()
                .any(|(template, until)| *template == message.template && *until > now)
            {
                return Ok((Capacity::OnDemand, Some(OnDemandFirst::Backoff)));
            }
        }
        Err(error) => tracing::warn!(job_id, %error, "cannot read the spot back-offs; launching as the template says"),
    }
    Ok((Capacity::Spot, None))
}

/// What one sweep's follow-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Followed {
    /// Jobs GitHub was asked to re-run.
    pub rerun: usize,
    /// Jobs no longer followed without a re-run (succeeded, cancelled, failed for another reason...).
    pub settled: usize,
    /// Jobs still followed (GitHub has not concluded them, or their run is still going).
    pub following: usize,
    /// Back-offs that ended.
    pub backoffs_ended: usize,
    pub errors: usize,
}

/// What to do with one recorded job, from what GitHub says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    Wait(&'static str),
    Settle(String),
    Rerun(Rerun),
}

/// The sweep's part: follows every recorded job on GitHub, re-runs those GitHub failed because
/// their instance went, and ends the back-offs whose time is up.
pub async fn follow(config: &Config, ports: &Ports) -> Followed {
    let mut followed = Followed::default();
    let Some(store) = &ports.interruptions else {
        return followed;
    };
    end_backoffs(store.as_ref(), &mut followed).await;
    let recorded = match store.recorded().await {
        Ok(recorded) => recorded,
        Err(error) => {
            tracing::warn!(%error, "sweep: cannot read the interrupted jobs");
            followed.errors += 1;
            return followed;
        }
    };
    for interrupted in recorded {
        let (job_id, run_id) = (interrupted.job_id, interrupted.run_id);
        let ran = match store.ran_on(&interrupted.instance_id).await {
            Ok(ran) => ran,
            Err(error) => {
                followed.errors += 1;
                tracing::warn!(job_id, run_id, %error, "sweep: cannot read which job the interrupted runner ran; the next sweep reads it again");
                continue;
            }
        };
        let next = match next_step(config, ports, &interrupted, ran.as_ref()).await {
            Ok(next) => next,
            Err(error) => {
                followed.errors += 1;
                if let GithubError::Unauthorized(_) = error {
                    tracing::warn!(
                        job_id,
                        run_id,
                        %error,
                        "sweep: GitHub refuses to show or re-run interrupted jobs; give the GitHub App the repository \
                         permission Actions: Read and write (a token: the `repo` scope)"
                    );
                    break;
                }
                tracing::warn!(job_id, run_id, %error, "sweep: cannot follow an interrupted job; the next sweep asks again");
                if error.is_retryable() {
                    break;
                }
                continue;
            }
        };
        match next {
            Next::Wait(why) => {
                tracing::debug!(job_id, run_id, "interrupted job followed: {why}");
                followed.following += 1;
            }
            Next::Settle(why) => not_rerun(store.as_ref(), &interrupted, &why, &mut followed).await,
            Next::Rerun(rerun) => match ask_rerun(ports, &rerun).await {
                Ok(true) => {
                    tracing::warn!(
                        job_id = rerun.job_id,
                        run_id,
                        run_attempt = rerun.attempt,
                        job_name = rerun.job_name,
                        step = step::RERUN_ASKED,
                        "job {} failed when EC2 took its spot instance back: GitHub re-runs it (run {run_id}, attempt {}), on on-demand",
                        rerun.job_id,
                        rerun.attempt + 1
                    );
                    followed.rerun += 1;
                    settle(store.as_ref(), &interrupted, &mut followed).await;
                }
                Ok(false) => {
                    let why = format!("a re-run of this job in run {run_id} was claimed already");
                    not_rerun(store.as_ref(), &interrupted, &why, &mut followed).await;
                }
                Err(error) => {
                    followed.errors += 1;
                    tracing::warn!(job_id, run_id, %error, "sweep: the re-run of an interrupted job failed; the next sweep asks again");
                }
            },
        }
    }
    followed
}

/// Stops following a job that is not to be re-run, saying why.
async fn not_rerun(store: &dyn Interruptions, interrupted: &Interrupted, why: &str, followed: &mut Followed) {
    let (job_id, run_id) = (interrupted.job_id, interrupted.run_id);
    tracing::info!(
        job_id,
        run_id,
        step = step::RERUN_NOT_NEEDED,
        "job {job_id} is not re-run: {why}"
    );
    followed.settled += 1;
    settle(store, interrupted, followed).await;
}

async fn settle(store: &dyn Interruptions, interrupted: &Interrupted, followed: &mut Followed) {
    let job_id = interrupted.job_id;
    if let Err(error) = store.settle(job_id, &interrupted.instance_id).await {
        tracing::warn!(job_id, %error, "sweep: cannot stop following a job; the next sweep settles it again");
        followed.errors += 1;
    }
}

/// From GitHub's view of the job and its run: wait, settle, or re-run. `ran` is the job the
/// webhook heard the interrupted runner take, if it did.
///
/// Long because it is GitHub's facts checked in order (the job, its conclusion, its time, its run), each settling
/// or waiting with its reason.
async fn next_step(
    config: &Config,
    ports: &Ports,
    interrupted: &Interrupted,
    ran: Option<&Ran>,
) -> Result<Next, GithubError> {
    let job_id = interrupted.job_id;
    if SystemTime::now().duration_since(interrupted.at).unwrap_or_default() > FOLLOWED_FOR {
        return Ok(Next::Settle(format!(
            "followed for {} days without a conclusion",
            FOLLOWED_FOR.as_secs() / 86_400
        )));
    }
    let (repository, job) = match job_ran(config, ports, interrupted, ran).await? {
        Ok(found) => found,
        Err(next) => return Ok(next),
    };
    if job.status != "completed" {
        return Ok(Next::Wait("GitHub has not concluded the job yet"));
    }
    match job.conclusion.as_deref() {
        Some("failure") => {}
        other => {
            return Ok(Next::Settle(format!(
                "GitHub concluded it `{}`",
                other.unwrap_or("none")
            )));
        }
    }
    let completed = job.completed_at.as_deref().and_then(crate::job::parse_rfc3339);
    if interrupted.warned && completed.is_some_and(|completed| completed + WARNING < interrupted.at) {
        return Ok(Next::Settle("it failed before EC2 warned of the interruption".into()));
    }
    let run = ports.github.workflow_run(&repository, job.run_id).await?;
    if run.run_attempt > job.run_attempt {
        return Ok(Next::Settle(format!(
            "run {} was re-run already (attempt {})",
            job.run_id, run.run_attempt
        )));
    }
    if run.status != "completed" {
        return Ok(Next::Wait("GitHub re-runs a job once its run has completed"));
    }
    if job.id != job_id {
        tracing::info!(
            job_id,
            ran_job_id = job.id,
            run_id = job.run_id,
            repository,
            "the interrupted runner had run job {} (run {} of {repository}), not job {job_id}: that job is the one re-run",
            job.id,
            job.run_id
        );
    }
    Ok(Next::Rerun(Rerun {
        repository,
        run_id: job.run_id,
        job_name: job.name,
        attempt: job.run_attempt,
        job_id: job.id,
    }))
}

/// The job the interrupted runner ran, with its repository; or what to do when none is known.
///
/// GitHub gives a queued job to any idle runner with its labels: the runner may have run another
/// job than the one it was launched for. The webhook's record of the `in_progress` delivery says
/// which; without it, the launched-for job is taken if it ran there. Otherwise the record is
/// awaited for a while (a failed delivery comes back with move-jobs' redelivery); then a job of
/// the same run that ran there (a matrix) is the last look before the job is settled.
async fn job_ran(
    config: &Config,
    ports: &Ports,
    interrupted: &Interrupted,
    ran: Option<&Ran>,
) -> Result<Result<(String, JobDetails), Next>, GithubError> {
    let Interrupted {
        job_id,
        repository,
        run_id,
        ..
    } = interrupted;
    let ours = crate::names::runner_name(&config.deployment, &interrupted.instance_id);
    if let Some(ran) = ran {
        return match ports.github.job(&ran.repository, ran.job_id).await {
            Ok(job) => Ok(Ok((ran.repository.clone(), job))),
            Err(GithubError::NotFound(_)) => Ok(Err(Next::Settle(format!(
                "GitHub does not know job {} of {}, which the runner ran (any more)",
                ran.job_id, ran.repository
            )))),
            Err(error) => Err(error),
        };
    }
    let job = match ports.github.job(repository, *job_id).await {
        Ok(job) => job,
        Err(GithubError::NotFound(_)) => {
            return Ok(Err(Next::Settle("GitHub does not know the job (any more)".into())));
        }
        Err(error) => return Err(error),
    };
    if job.runner_name.as_deref() == Some(ours.as_str()) {
        return Ok(Ok((repository.clone(), job)));
    }
    // The record names a job of the same run too; the run's jobs are listed once, when it has
    // not come (a lost delivery), which spares GitHub's rate limit two calls a sweep.
    if SystemTime::now().duration_since(interrupted.at).unwrap_or_default() < RAN_RECORD_AWAITED {
        return Ok(Err(Next::Wait(
            "the job it was launched for ran elsewhere or not yet; awaiting the webhook's record of the job the runner ran",
        )));
    }
    let other = match ports.github.run_jobs(repository, *run_id).await {
        Ok(jobs) => jobs
            .into_iter()
            .find(|other| other.runner_name.as_deref() == Some(ours.as_str())),
        Err(error) if error.is_retryable() => return Err(error),
        Err(error) => {
            tracing::debug!(job_id, run_id, %error, "cannot list the jobs of the interrupted job's run");
            None
        }
    };
    if let Some(other) = other {
        return Ok(Ok((repository.clone(), other)));
    }
    Ok(Err(Next::Settle(match job.runner_name {
        Some(runner) => format!(
            "it ran on runner `{runner}`, and no job is known to have run on the interrupted one (no `in_progress` delivery named it)"
        ),
        None => {
            "no job is known to have run on the interrupted runner (a job still queued was sent back for a new runner)"
                .into()
        }
    })))
}

/// Claims the re-run, then asks GitHub. Answers false when another claim stands; an error when
/// GitHub did not take it (a refusal gives the claim back; an answer lost keeps it, and the next
/// sweep sees the new attempt, or asks again under the same claim).
async fn ask_rerun(ports: &Ports, rerun: &Rerun) -> Result<bool, String> {
    let Some(store) = &ports.interruptions else {
        return Ok(false);
    };
    if !store.claim_rerun(rerun).await.map_err(|error| error.to_string())? {
        return Ok(false);
    }
    match ports.github.rerun_job(&rerun.repository, rerun.job_id).await {
        Ok(()) => Ok(true),
        Err(error @ (GithubError::Conflict(_) | GithubError::Unauthorized(_) | GithubError::Rejected(_))) => {
            if let Err(release) = store.release_rerun(rerun).await {
                tracing::warn!(job_id = rerun.job_id, %release, "cannot give the re-run claim back");
            }
            Err(error.to_string())
        }
        Err(error) => Err(error.to_string()),
    }
}

async fn end_backoffs(store: &dyn Interruptions, followed: &mut Followed) {
    let backoffs = match store.backoffs().await {
        Ok(backoffs) => backoffs,
        Err(error) => {
            tracing::warn!(%error, "sweep: cannot read the spot back-offs");
            followed.errors += 1;
            return;
        }
    };
    let now = SystemTime::now();
    for (template, until) in backoffs.into_iter().filter(|(_, until)| *until <= now) {
        match store.end_backoff(&template, until).await {
            Ok(true) => {
                followed.backoffs_ended += 1;
                tracing::info!(
                    template,
                    step = step::SPOT_BACKOFF_ENDED,
                    "template `{template}`: the spot back-off is over; it launches spot again"
                );
            }
            Ok(false) => {}
            Err(error) => {
                followed.errors += 1;
                tracing::warn!(template, %error, "sweep: cannot end a spot back-off");
            }
        }
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The real adapter over DynamoDB.
#[derive(Clone)]
pub struct DynamoInterruptions {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

const PK: &str = "pk";
const SK: &str = "sk";
const EXPIRES_AT: &str = "expires_at";
const JOB_ID: &str = "job_id";
const ATTEMPT: &str = "attempt";
const AT: &str = "at_ms";
const ENDS_AT: &str = "ends_at";
const WARNED: &str = "warned";
const INTERRUPTED: &str = "interrupted";
const BACKOFF: &str = "backoff";

type Item = std::collections::HashMap<String, AttributeValue>;

/// An interruption's sort key: the job and the instance it lost.
fn interrupted_key(job_id: u64, instance_id: &str) -> String {
    format!("{job_id:020}#{instance_id}")
}

fn rerun_pk(repository: &str, run_id: u64) -> String {
    format!("rerun#{repository}#{run_id}")
}

fn ran_pk(instance_id: &str) -> String {
    format!("ran#{instance_id}")
}

/// The one item of a `ran#` partition: an ephemeral runner runs one job.
const RAN_SK: &str = "job";

fn spot_pk(template: &str) -> String {
    format!("spot#{template}")
}

fn text(item: &Item, name: &str) -> Option<String> {
    item.get(name).and_then(|v| v.as_s().ok()).cloned()
}

fn number(item: &Item, name: &str) -> Option<u64> {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn expires(at: SystemTime, kept: Duration) -> AttributeValue {
    n((at + kept).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}

impl DynamoInterruptions {
    pub fn new(sdk: &aws_config::SdkConfig, table: &str) -> Self {
        Self {
            client: aws_sdk_dynamodb::Client::new(sdk),
            table: table.to_string(),
        }
    }

    fn key(pk: &str, sk: &str) -> Item {
        Item::from([(PK.to_string(), s(pk)), (SK.to_string(), s(sk))])
    }

    fn classify<E, R>(&self, error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> InterruptionsError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use crate::aws::TableFault;
        let table = self.table.clone();
        match crate::aws::table_fault(error) {
            TableFault::NoTable => InterruptionsError::NoTable(table),
            TableFault::AccessDenied(reason) => InterruptionsError::AccessDenied { table, reason },
            TableFault::Throttled(reason) | TableFault::Failed(reason) => InterruptionsError::Failed { table, reason },
        }
    }

    /// Every item of a partition, read consistently, page after page.
    async fn partition(&self, pk: &str) -> Result<Vec<Item>, InterruptionsError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#pk = :pk")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":pk", s(pk))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|error| self.classify(&error))?;
            items.extend(output.items.unwrap_or_default());
            start = output.last_evaluated_key.filter(|key| !key.is_empty());
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// A PutItem that replaces any item of the same key.
    async fn put(&self, item: Item) -> Result<(), InterruptionsError> {
        crate::aws::put_item(&self.client, &self.table, item)
            .await
            .map_err(|error| self.classify(&error))
    }

    /// A PutItem under a condition (names `#pk`, `#job_id`, `#attempt` and `#ends_at` may be
    /// used in it): answers false when the condition failed.
    async fn put_if(
        &self,
        item: Item,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<bool, InterruptionsError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition);
        for name in [PK, JOB_ID, ATTEMPT, ENDS_AT] {
            if condition.contains(&format!("#{name}")) {
                put = put.expression_attribute_names(format!("#{name}"), name);
            }
        }
        for (name, value) in values {
            put = put.expression_attribute_values(name, value);
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(error) if crate::aws::condition_failed(&error) => Ok(false),
            Err(error) => Err(self.classify(&error)),
        }
    }

    /// A DeleteItem, when `attribute` still holds `value` if one is given: answers false when
    /// it did not.
    async fn delete_if(
        &self,
        key: Item,
        condition: Option<(&str, AttributeValue)>,
    ) -> Result<bool, InterruptionsError> {
        let mut delete = self.client.delete_item().table_name(&self.table).set_key(Some(key));
        if let Some((attribute, value)) = condition {
            delete = delete
                .condition_expression("#attribute = :value")
                .expression_attribute_names("#attribute", attribute)
                .expression_attribute_values(":value", value);
        }
        match delete.send().await {
            Ok(_) => Ok(true),
            Err(error) if crate::aws::condition_failed(&error) => Ok(false),
            Err(error) => Err(self.classify(&error)),
        }
    }
}

#[async_trait]
impl Interruptions for DynamoInterruptions {
    async fn ran(&self, ran: &Ran) -> Result<(), InterruptionsError> {
        let mut item = Self::key(&ran_pk(&ran.instance_id), RAN_SK);
        item.insert(JOB_ID.into(), n(ran.job_id));
        item.insert("repository".into(), s(&ran.repository));
        item.insert("run_id".into(), n(ran.run_id));
        item.insert(ATTEMPT.into(), n(ran.run_attempt));
        item.insert("job_name".into(), s(&ran.job_name));
        item.insert(EXPIRES_AT.into(), expires(SystemTime::now(), RAN_KEPT_FOR));
        self.put(item).await
    }

    async fn ran_on(&self, instance_id: &str) -> Result<Option<Ran>, InterruptionsError> {
        // A Query rather than a GetItem: stop-runner reads partitions, and needs no more.
        Ok(self.partition(&ran_pk(instance_id)).await?.iter().find_map(|item| {
            Some(Ran {
                instance_id: instance_id.to_string(),
                job_id: number(item, JOB_ID)?,
                repository: text(item, "repository")?,
                run_id: number(item, "run_id")?,
                run_attempt: number(item, ATTEMPT).unwrap_or(1) as u32,
                job_name: text(item, "job_name").unwrap_or_default(),
            })
        }))
    }

    async fn record(&self, interrupted: &Interrupted) -> Result<bool, InterruptionsError> {
        let mut item = Self::key(
            INTERRUPTED,
            &interrupted_key(interrupted.job_id, &interrupted.instance_id),
        );
        item.insert(JOB_ID.into(), n(interrupted.job_id));
        item.insert("repository".into(), s(&interrupted.repository));
        item.insert("run_id".into(), n(interrupted.run_id));
        item.insert("template".into(), s(&interrupted.template));
        item.insert("instance_id".into(), s(&interrupted.instance_id));
        item.insert(AT.into(), n(millis(interrupted.at)));
        item.insert(WARNED.into(), AttributeValue::Bool(interrupted.warned));
        item.insert(
            EXPIRES_AT.into(),
            expires(interrupted.at, FOLLOWED_FOR + Duration::from_secs(86_400)),
        );
        self.put_if(item, "attribute_not_exists(#pk)", vec![]).await
    }

    async fn recorded(&self) -> Result<Vec<Interrupted>, InterruptionsError> {
        Ok(self
            .partition(INTERRUPTED)
            .await?
            .iter()
            .filter_map(|item| {
                Some(Interrupted {
                    job_id: number(item, JOB_ID)?,
                    repository: text(item, "repository")?,
                    run_id: number(item, "run_id").unwrap_or_default(),
                    template: text(item, "template").unwrap_or_default(),
                    instance_id: text(item, "instance_id").unwrap_or_default(),
                    at: from_millis(number(item, AT).unwrap_or_default()),
                    warned: item
                        .get(WARNED)
                        .and_then(|v| v.as_bool().ok())
                        .copied()
                        .unwrap_or(false),
                })
            })
            .collect())
    }

    async fn settle(&self, job_id: u64, instance_id: &str) -> Result<(), InterruptionsError> {
        self.delete_if(Self::key(INTERRUPTED, &interrupted_key(job_id, instance_id)), None)
            .await
            .map(|_| ())
    }

    async fn claim_rerun(&self, rerun: &Rerun) -> Result<bool, InterruptionsError> {
        let mut item = Self::key(&rerun_pk(&rerun.repository, rerun.run_id), &rerun.job_name);
        item.insert(ATTEMPT.into(), n(rerun.attempt));
        item.insert(JOB_ID.into(), n(rerun.job_id));
        item.insert(EXPIRES_AT.into(), expires(SystemTime::now(), CLAIM_KEPT_FOR));
        self.put_if(
            item,
            "attribute_not_exists(#pk) OR #job_id = :job OR #attempt < :attempt",
            vec![(":job", n(rerun.job_id)), (":attempt", n(rerun.attempt))],
        )
        .await
    }

    async fn release_rerun(&self, rerun: &Rerun) -> Result<(), InterruptionsError> {
        self.delete_if(
            Self::key(&rerun_pk(&rerun.repository, rerun.run_id), &rerun.job_name),
            Some((JOB_ID, n(rerun.job_id))),
        )
        .await
        .map(|_| ())
    }

    async fn rerun_of(
        &self,
        repository: &str,
        run_id: u64,
        job_name: &str,
    ) -> Result<Option<Rerun>, InterruptionsError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(&rerun_pk(repository, run_id), job_name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|error| self.classify(&error))?;
        Ok(output.item.map(|item| Rerun {
            repository: repository.to_string(),
            run_id,
            job_name: job_name.to_string(),
            attempt: number(&item, ATTEMPT).unwrap_or_default() as u32,
            job_id: number(&item, JOB_ID).unwrap_or_default(),
        }))
    }

    async fn spot_lost(
        &self,
        template: &str,
        key: &str,
        at: SystemTime,
        since: SystemTime,
        keep_for: Duration,
    ) -> Result<u32, InterruptionsError> {
        let mut item = Self::key(&spot_pk(template), key);
        item.insert(AT.into(), n(millis(at)));
        item.insert(EXPIRES_AT.into(), expires(at, keep_for));
        self.put(item).await?;
        // TTL deletes within days, not at `expires_at`: the window is counted here.
        let since = millis(since);
        Ok(self
            .partition(&spot_pk(template))
            .await?
            .iter()
            .filter(|item| number(item, AT).is_some_and(|at| at >= since))
            .count() as u32)
    }

    async fn start_backoff(
        &self,
        template: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, InterruptionsError> {
        let mut item = Self::key(BACKOFF, template);
        item.insert(ENDS_AT.into(), n(millis(until)));
        item.insert(EXPIRES_AT.into(), expires(until, Duration::from_secs(86_400)));
        self.put_if(
            item,
            "attribute_not_exists(#pk) OR #ends_at <= :now",
            vec![(":now", n(millis(now)))],
        )
        .await
    }

    async fn backoffs(&self) -> Result<Vec<(String, SystemTime)>, InterruptionsError> {
        Ok(self
            .partition(BACKOFF)
            .await?
            .iter()
            .filter_map(|item| Some((text(item, SK)?, from_millis(number(item, ENDS_AT)?))))
            .collect())
    }

    async fn end_backoff(&self, template: &str, until: SystemTime) -> Result<bool, InterruptionsError> {
        self.delete_if(Self::key(BACKOFF, template), Some((ENDS_AT, n(millis(until)))))
            .await
    }
}

/// The in-memory store, for flow tests and the simulation.
#[derive(Default)]
pub struct FakeInterruptions {
    state: Mutex<FakeState>,
    failures: Mutex<VecDeque<InterruptionsError>>,
}

#[derive(Default)]
struct FakeState {
    recorded: BTreeMap<(u64, String), Interrupted>,
    reruns: BTreeMap<(String, u64, String), Rerun>,
    losses: BTreeMap<String, BTreeMap<String, SystemTime>>,
    backoffs: BTreeMap<String, SystemTime>,
    ran: BTreeMap<String, Ran>,
}

impl FakeInterruptions {
    /// The next calls fail with these errors, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = InterruptionsError>) {
        self.failures.lock().unwrap().extend(errors);
    }

    /// Makes every time held older by `by`, as if that long had passed.
    pub fn age(&self, by: Duration) {
        let mut state = self.state.lock().unwrap();
        for interrupted in state.recorded.values_mut() {
            interrupted.at -= by;
        }
        for losses in state.losses.values_mut() {
            for at in losses.values_mut() {
                *at -= by;
            }
        }
        for until in state.backoffs.values_mut() {
            *until -= by;
        }
    }

    /// Every claimed re-run.
    pub fn reruns(&self) -> Vec<Rerun> {
        self.state.lock().unwrap().reruns.values().cloned().collect()
    }

    /// The jobs followed now.
    pub fn followed(&self) -> Vec<u64> {
        self.state
            .lock()
            .unwrap()
            .recorded
            .keys()
            .map(|(job_id, _)| *job_id)
            .collect()
    }

    fn fault(&self) -> Result<(), InterruptionsError> {
        match self.failures.lock().unwrap().pop_front() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Interruptions for FakeInterruptions {
    async fn ran(&self, ran: &Ran) -> Result<(), InterruptionsError> {
        self.fault()?;
        self.state
            .lock()
            .unwrap()
            .ran
            .insert(ran.instance_id.clone(), ran.clone());
        Ok(())
    }

    async fn ran_on(&self, instance_id: &str) -> Result<Option<Ran>, InterruptionsError> {
        self.fault()?;
        Ok(self.state.lock().unwrap().ran.get(instance_id).cloned())
    }

    async fn record(&self, interrupted: &Interrupted) -> Result<bool, InterruptionsError> {
        self.fault()?;
        let mut state = self.state.lock().unwrap();
        let key = (interrupted.job_id, interrupted.instance_id.clone());
        if state.recorded.contains_key(&key) {
            return Ok(false);
        }
        state.recorded.insert(key, interrupted.clone());
        Ok(true)
    }

    async fn recorded(&self) -> Result<Vec<Interrupted>, InterruptionsError> {
        self.fault()?;
        Ok(self.state.lock().unwrap().recorded.values().cloned().collect())
    }

    async fn settle(&self, job_id: u64, instance_id: &str) -> Result<(), InterruptionsError> {
        self.fault()?;
        self.state
            .lock()
            .unwrap()
            .recorded
            .remove(&(job_id, instance_id.to_string()));
        Ok(())
    }

    async fn claim_rerun(&self, rerun: &Rerun) -> Result<bool, InterruptionsError> {
        self.fault()?;
        let mut state = self.state.lock().unwrap();
        let key = (rerun.repository.clone(), rerun.run_id, rerun.job_name.clone());
        if let Some(held) = state.reruns.get(&key)
            && held.job_id != rerun.job_id
            && held.attempt >= rerun.attempt
        {
            return Ok(false);
        }
        state.reruns.insert(key, rerun.clone());
        Ok(true)
    }

    async fn release_rerun(&self, rerun: &Rerun) -> Result<(), InterruptionsError> {
        self.fault()?;
        let mut state = self.state.lock().unwrap();
        let key = (rerun.repository.clone(), rerun.run_id, rerun.job_name.clone());
        if state.reruns.get(&key).is_some_and(|held| held.job_id == rerun.job_id) {
            state.reruns.remove(&key);
        }
        Ok(())
    }

    async fn rerun_of(
        &self,
        repository: &str,
        run_id: u64,
        job_name: &str,
    ) -> Result<Option<Rerun>, InterruptionsError> {
        self.fault()?;
        let key = (repository.to_string(), run_id, job_name.to_string());
        Ok(self.state.lock().unwrap().reruns.get(&key).cloned())
    }

    async fn spot_lost(
        &self,
        template: &str,
        key: &str,
        at: SystemTime,
        since: SystemTime,
        _keep_for: Duration,
    ) -> Result<u32, InterruptionsError> {
        self.fault()?;
        let mut state = self.state.lock().unwrap();
        let losses = state.losses.entry(template.to_string()).or_default();
        losses.insert(key.to_string(), at);
        Ok(losses.values().filter(|at| **at >= since).count() as u32)
    }

    async fn start_backoff(
        &self,
        template: &str,
        until: SystemTime,
        now: SystemTime,
    ) -> Result<bool, InterruptionsError> {
        self.fault()?;
        let mut state = self.state.lock().unwrap();
        if state.backoffs.get(template).is_some_and(|on| *on > now) {
            return Ok(false);
        }
        state.backoffs.insert(template.to_string(), until);
        Ok(true)
    }

    async fn backoffs(&self) -> Result<Vec<(String, SystemTime)>, InterruptionsError> {
        self.fault()?;
        Ok(self
            .state
            .lock()
            .unwrap()
            .backoffs
            .iter()
            .map(|(template, until)| (template.clone(), *until))
            .collect())
    }

    async fn end_backoff(&self, template: &str, until: SystemTime) -> Result<bool, InterruptionsError> {
        self.fault()?;
        let mut state = self.state.lock().unwrap();
        if state.backoffs.get(template) == Some(&until) {
            state.backoffs.remove(template);
            return Ok(true);
        }
        Ok(false)
    }
}
