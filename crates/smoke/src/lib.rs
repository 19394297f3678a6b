//! `make smoke`: the platform engineer's proof that a real deployment works. Given a repository,
//! a template and a token, smoke puts a tiny workflow on the repository, dispatches it for
//! `runs-on: [self-hosted, <template>]`, follows its one job until it ends, and prints the job's
//! timeline (queued → runner online → started → completed) and result. It exits 0 only when the
//! job succeeded.
//!
//! Tested against testkit's fake GitHub over HTTP (tests/smoke.rs); `main` only parses the
//! command line and reads the token.

pub mod api;
pub mod cli;
pub mod follow;
pub mod report;
pub mod runners;
pub mod time;
pub mod timeline;
pub mod workflow;

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::api::{Github, Method, SmokeError, Step};
use crate::cli::Options;
use crate::follow::{Dispatched, Followed, Outcome, Stage};
use crate::report::Report;
use crate::runners::RunnerWatch;
use crate::time::duration_text;
use crate::workflow::{WORKFLOW_PATH, Written};

pub const EXIT_SUCCESS: u8 = 0;
/// The job ended with another conclusion than `success`.
pub const EXIT_JOB_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// GitHub refused or failed a request (permissions, names, outage).
pub const EXIT_GITHUB: u8 = 3;
pub const EXIT_TIMED_OUT: u8 = 4;

/// Where the deployment guide lists each cause of a job that waits, and its fix.
pub const TROUBLESHOOTING: &str = "the Troubleshooting section of docs/deploy.md";

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Concluded { conclusion } if conclusion == "success" => EXIT_SUCCESS,
            Self::Concluded { .. } | Self::RunConcluded { .. } => EXIT_JOB_FAILED,
            Self::TimedOut(_) => EXIT_TIMED_OUT,
        }
    }
}

/// Runs the whole smoke test, saying what happens on `out`. An `Err` is a request GitHub refused
/// or failed before the job could be followed; the job's own ending is the `Outcome`.
pub async fn smoke(options: &Options, github: &Github, out: &mut dyn Write) -> Result<Outcome, SmokeError> {
    let deadline = Instant::now() + options.timeout;
    let mut report = Report::new(out);
    let repository = &options.repository;
    let route = format!("/repos/{repository}");
    let answer = github.call(Step::ReadRepository, Method::Get, &route, None).await?;
    let git_ref = match (&options.git_ref, answer.body["default_branch"].as_str()) {
        (Some(git_ref), _) => git_ref.clone(),
        (None, Some(default_branch)) => default_branch.to_string(),
        (None, None) => {
            return Err(SmokeError::Malformed {
                step: Step::ReadRepository,
                detail: "no `default_branch`; name the branch with --ref".into(),
            });
        }
    };
    report.line(format!(
        "smoke: {repository}, branch {git_ref}, template {}, {}",
        options.template, options.api_url
    ));
    let written = workflow::ensure(github, repository, &git_ref).await?;
    report.line(match &written {
        Written::AlreadyAsExpected => format!("{WORKFLOW_PATH}: already as expected"),
        Written::Created { commit } => format!("{WORKFLOW_PATH}: created (commit {commit})"),
        Written::Updated { commit } => format!("{WORKFLOW_PATH}: differed, updated (commit {commit})"),
    });
    let mut runners = RunnerWatch::start(github, repository, &options.template).await?;
    let nonce = nonce();
    let just_written = written != Written::AlreadyAsExpected;
    let run = follow::dispatch(github, options, &git_ref, &nonce, just_written).await?;
    report.line(format!(
        "dispatched for runs-on [self-hosted, {}]; following the job for up to {}",
        options.template,
        duration_text(options.timeout)
    ));
    let dispatched = Dispatched { git_ref, nonce, run };
    let followed = follow::follow(github, options, dispatched, &mut runners, &mut report, deadline).await?;
    report.line("");
    report.line(followed.timeline.to_string().trim_end());
    report.line("");
    report.line(verdict(options, &followed));
    if let (Outcome::TimedOut(_), Some(run)) = (&followed.outcome, &followed.run) {
        let route = format!("/repos/{repository}/actions/runs/{}/cancel", run.id);
        report.line(match github.call(Step::CancelRun, Method::Post, &route, None).await {
            Ok(_) => format!("cancelled run {} so that it does not wait on GitHub", run.id),
            Err(error) => format!(
                "could not cancel run {}: {error}; cancel it on {}",
                run.id, run.html_url
            ),
        });
    }
    Ok(followed.outcome)
}

/// The last word: what the result means, and what to check when it is not a success.
fn verdict(options: &Options, followed: &Followed) -> String {
    let template = &options.template;
    let job_log = followed.job_url.as_deref().unwrap_or("the run's page");
    let run_page = followed
        .run
        .as_ref()
        .map_or("the repository's Actions tab", |r| r.html_url.as_str());
    let waited = duration_text(options.timeout);
    match &followed.outcome {
        Outcome::Concluded { conclusion } if conclusion == "success" => {
            format!("smoke: success: a runner for template `{template}` took the job and ran it")
        }
        Outcome::Concluded { conclusion } => format!(
            "smoke: the job ended `{conclusion}`: its log is at {job_log}. A failed step is the job's own; a runner \
             that went away mid-job is in {TROUBLESHOOTING}"
        ),
        Outcome::RunConcluded { conclusion } => {
            format!("smoke: GitHub ended the run without starting its job (`{conclusion}`): {run_page} says why")
        }
        Outcome::TimedOut(Stage::NoRun) => format!(
            "smoke: timed out after {waited}: GitHub took the dispatch but showed no run for it; check the \
             repository's Actions tab (Actions or the workflow may be disabled)"
        ),
        Outcome::TimedOut(Stage::NoJob) => {
            format!("smoke: timed out after {waited}: the run has no job yet; see {run_page}")
        }
        Outcome::TimedOut(Stage::InProgress { runner }) => format!(
            "smoke: timed out after {waited}: the job was still running on {runner}; its log is at {job_log}. \
             If it is only slow, give it longer (--timeout-minutes, TIMEOUT= with make)"
        ),
        Outcome::TimedOut(Stage::Queued {
            runner_seen: Some(runner),
            ..
        }) => format!(
            "smoke: timed out after {waited}: runner {runner} came online but did not take the job. Its labels must \
             include all of the job's ([self-hosted, {template}]); its own log is in the log group \
             /<deployment>/runners; {TROUBLESHOOTING} lists the causes and fixes"
        ),
        Outcome::TimedOut(Stage::Queued {
            runner_seen: None,
            runners_visible,
        }) => {
            let unseen = if *runners_visible {
                ""
            } else {
                " (the token could not list runners, so whether one came online is unknown)"
            };
            format!(
                "smoke: timed out after {waited}: no runner took the job{unseen}. Check, in order \
                 ({TROUBLESHOOTING} has each cause and its fix):\n\
                 \x20 1. the webhook's Recent Deliveries: a `workflow_job` delivery for this job answered 202 \
                 `enqueued`; `ignored` says why (the template `{template}` must have all of the job's labels)\n\
                 \x20 2. the log group /aws/lambda/<deployment>-create-runner: the launch, or why not (Spot capacity, \
                 vCPU quotas, the template full at max_runners)\n\
                 \x20 3. the dead-letter queue, for jobs that failed three times\n\
                 \x20 4. the log group /<deployment>/runners: the runner script on the instance"
            )
        }
    }
}

/// Tells this run apart from others of the same workflow (it goes into the run's title).
fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    format!(
        "{:012x}",
        (nanos ^ (u64::from(std::process::id()) << 32)) & 0xffff_ffff_ffff
    )
}
