//! Dispatching the smoke workflow and following its one job to the end: find the run, read its
//! job until it completes or the time is up, and list runners meanwhile to see one come online.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::api::{Github, Method, SmokeError, Step, query_value};
use crate::cli::Options;
use crate::report::Report;
use crate::runners::RunnerWatch;
use crate::time::Timestamp;
use crate::timeline::{Timeline, looks_like_a_sophons_runner};
use crate::workflow::WORKFLOW_FILE;

/// The run a dispatch created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef {
    pub id: u64,
    pub html_url: String,
}

/// How far the job got when the time ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// GitHub accepted the dispatch, but no run with its nonce appeared.
    NoRun,
    /// The run exists, but GitHub listed no job for it yet.
    NoJob,
    /// The job waits for a runner. `runner_seen`: one with the template's label came online but
    /// did not take it. `runners_visible`: whether the token could list runners at all.
    Queued {
        runner_seen: Option<String>,
        runners_visible: bool,
    },
    /// A runner took the job, and it had not ended.
    InProgress { runner: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job ended with `conclusion` (`success`, `failure`, `cancelled`...).
    Concluded {
        conclusion: String,
    },
    /// The run ended without a job (`startup_failure`: GitHub refused the workflow).
    RunConcluded {
        conclusion: String,
    },
    TimedOut(Stage),
}

/// What `follow` found.
#[derive(Debug, Clone)]
pub struct Followed {
    pub run: Option<RunRef>,
    pub job_url: Option<String>,
    pub timeline: Timeline,
    pub outcome: Outcome,
}

#[derive(Debug, Deserialize)]
struct Run {
    id: u64,
    status: String,
    conclusion: Option<String>,
    #[serde(default)]
    display_title: String,
    #[serde(default)]
    html_url: String,
}

#[derive(Debug, Deserialize)]
struct Runs {
    workflow_runs: Vec<Run>,
}

#[derive(Debug, Deserialize)]
struct Job {
    id: u64,
    name: String,
    status: String,
    conclusion: Option<String>,
    created_at: String,
    started_at: Option<String>,
    completed_at: Option<String>,
    runner_name: Option<String>,
    #[serde(default)]
    labels: Vec<String>,
    html_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Jobs {
    jobs: Vec<Job>,
}

/// Asks GitHub to run the workflow on `git_ref` for `template`. Returns the run when GitHub says
/// which it is (`return_run_details`, since 2026-02-19); `None` means find it by `nonce`.
pub async fn dispatch(
    github: &Github,
    options: &Options,
    git_ref: &str,
    nonce: &str,
    just_written: bool,
) -> Result<Option<RunRef>, SmokeError> {
    let route = format!(
        "/repos/{}/actions/workflows/{WORKFLOW_FILE}/dispatches",
        options.repository
    );
    let mut body = json!({
        "ref": git_ref,
        "inputs": {"template": options.template, "nonce": nonce},
        "return_run_details": true,
    });
    // GitHub takes a few seconds to register a workflow file it has just been given; until then
    // the dispatch meets 404 or 422.
    let registered_by = Instant::now()
        + if just_written {
            options.registration_wait
        } else {
            Duration::ZERO
        };
    loop {
        let answer = github.send(Step::Dispatch, Method::Post, &route, Some(&body)).await?;
        match answer.status {
            200 => {
                let id = answer.body["workflow_run_id"].as_u64();
                let html_url = answer.body["html_url"].as_str().unwrap_or_default().to_string();
                return Ok(id.map(|id| RunRef { id, html_url }));
            }
            204 => return Ok(None),
            // A GitHub that predates `return_run_details` may refuse the key: dispatch without it.
            400 | 422 if answer.body.to_string().contains("return_run_details") => {
                body.as_object_mut().expect("an object").remove("return_run_details");
            }
            404 | 422 if Instant::now() < registered_by => tokio::time::sleep(options.poll_interval).await,
            _ => return Err(SmokeError::from_answer(Step::Dispatch, &route, &answer)),
        }
    }
}

/// The newest run whose title carries `nonce`: the run-name holds it, so a run someone else
/// dispatched meanwhile, even a newer one, is never taken for this one.
fn pick_run(runs: Vec<Run>, nonce: &str) -> Option<Run> {
    runs.into_iter()
        .find(|run| run.display_title.split_whitespace().any(|word| word == nonce))
}

/// What was dispatched, for `follow` to find.
#[derive(Debug, Clone)]
pub struct Dispatched {
    pub git_ref: String,
    pub nonce: String,
    /// The run, when GitHub said which it is.
    pub run: Option<RunRef>,
}

/// Follows the dispatched run until its job ends or `deadline` passes.
pub async fn follow(
    github: &Github,
    options: &Options,
    dispatched: Dispatched,
    runners: &mut RunnerWatch,
    report: &mut Report<'_>,
    deadline: Instant,
) -> Result<Followed, SmokeError> {
    let repository = &options.repository;
    let mut timeline = Timeline {
        poll_interval: options.poll_interval,
        ..Timeline::default()
    };
    let Dispatched {
        git_ref,
        nonce,
        mut run,
    } = dispatched;
    if let Some(run) = &run {
        report.line(format!("run {}: {}", run.id, run.html_url));
    }
    let mut job_url = None;
    let mut job_status = String::new();
    let outcome = loop {
        if run.is_none() {
            let route = format!(
                "/repos/{repository}/actions/workflows/{WORKFLOW_FILE}/runs?event=workflow_dispatch&branch={}&per_page=20",
                query_value(&git_ref)
            );
            let answer = github.call(Step::ListRuns, Method::Get, &route, None).await?;
            let runs: Runs = parse(Step::ListRuns, answer.body)?;
            if let Some(found) = pick_run(runs.workflow_runs, &nonce) {
                report.line(format!("run {}: {}", found.id, found.html_url));
                run = Some(RunRef {
                    id: found.id,
                    html_url: found.html_url,
                });
            }
        }
        if let Some(run) = &run {
            let route = format!("/repos/{repository}/actions/runs/{}/jobs", run.id);
            let answer = github.call(Step::ListJobs, Method::Get, &route, None).await?;
            let jobs: Jobs = parse(Step::ListJobs, answer.body)?;
            match jobs.jobs.into_iter().next() {
                Some(job) => {
                    job_url = job.html_url.clone();
                    if let Some(conclusion) = note_job(&job, &mut timeline, &mut job_status, report) {
                        break Outcome::Concluded { conclusion };
                    }
                }
                None => {
                    // A run that ends without a job is one GitHub would not start.
                    let route = format!("/repos/{repository}/actions/runs/{}", run.id);
                    let answer = github.call(Step::ReadRun, Method::Get, &route, None).await?;
                    let read: Run = parse(Step::ReadRun, answer.body)?;
                    if read.status == "completed" {
                        let conclusion = read.conclusion.unwrap_or_else(|| "unknown".into());
                        report.line(format!("run ended without a job: {conclusion}"));
                        break Outcome::RunConcluded { conclusion };
                    }
                }
            }
        }
        let runner_missing = timeline
            .runner_name
            .as_deref()
            .is_none_or(|name| runners.seen(Some(name)).is_none());
        if runners.visible() && runner_missing {
            for seen in runners.poll(github).await? {
                report.line(format!("runner {} is online", seen.name));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            let stage = match (&run, job_status.as_str(), &timeline.runner_name) {
                (None, _, _) => Stage::NoRun,
                (Some(_), "", _) => Stage::NoJob,
                (Some(_), _, Some(runner)) => Stage::InProgress { runner: runner.clone() },
                (Some(_), _, None) => Stage::Queued {
                    runner_seen: runners.seen(None).map(|s| s.name.clone()),
                    runners_visible: runners.visible(),
                },
            };
            break Outcome::TimedOut(stage);
        }
        tokio::time::sleep(options.poll_interval.min(deadline - now)).await;
    };
    timeline.runner_online = runners.seen(timeline.runner_name.as_deref()).cloned();
    if timeline.runner_online.is_none() && timeline.runner_name.is_none() {
        timeline.runner_online = runners.seen(None).cloned();
    }
    add_notes(&mut timeline, runners);
    Ok(Followed {
        run,
        job_url,
        timeline,
        outcome,
    })
}

/// Takes what a read of the job says into the timeline, and says each step once. Returns the
/// conclusion once the job has completed.
fn note_job(job: &Job, timeline: &mut Timeline, status: &mut String, report: &mut Report<'_>) -> Option<String> {
    let runner = job.runner_name.clone().filter(|name| !name.is_empty());
    if status.is_empty() {
        timeline.queued = Timestamp::parse_rfc3339(&job.created_at);
        report.line(format!(
            "job {} `{}` queued for [{}]",
            job.id,
            job.name,
            job.labels.join(", ")
        ));
    }
    if timeline.runner_name.is_none()
        && let Some(runner) = &runner
    {
        timeline.runner_name = Some(runner.clone());
        timeline.started = job.started_at.as_deref().and_then(Timestamp::parse_rfc3339);
        report.line(format!("job started on {runner}"));
    }
    *status = job.status.clone();
    if job.status != "completed" {
        return None;
    }
    let conclusion = job.conclusion.clone().unwrap_or_else(|| "unknown".into());
    timeline.completed = job.completed_at.as_deref().and_then(Timestamp::parse_rfc3339);
    timeline.conclusion = Some(conclusion.clone());
    report.line(format!("job completed: {conclusion}"));
    Some(conclusion)
}

fn add_notes(timeline: &mut Timeline, runners: &RunnerWatch) {
    if let Some(name) = &timeline.runner_name {
        if runners.was_online_before_dispatch(name) {
            timeline.notes.push(format!(
                "{name} was online before the dispatch: it was not launched for this job"
            ));
        }
        if !looks_like_a_sophons_runner(name) {
            timeline.notes.push(format!(
                "{name} is not named like a sophons runner (<deployment>-<instance id>): another runner with \
                 these labels took the job, so this run does not prove the deployment works"
            ));
        }
    }
    if timeline.runner_online.is_none() && !runners.refusals().is_empty() {
        for refusal in runners.refusals() {
            timeline.notes.push(format!("runner online not visible: {refusal}"));
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(step: Step, body: serde_json::Value) -> Result<T, SmokeError> {
    serde_json::from_value(body).map_err(|e| SmokeError::Malformed {
        step,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: u64, title: &str) -> Run {
        Run {
            id,
            status: "queued".into(),
            conclusion: None,
            display_title: title.into(),
            html_url: String::new(),
        }
    }

    #[test]
    fn the_run_is_found_by_its_nonce_not_by_being_the_newest() {
        let runs = vec![
            run(9, "sophons smoke cpu someone-elses"),
            run(8, "sophons smoke cpu 5f2a"),
            run(7, "sophons smoke cpu 5f2a0"),
        ];
        assert_eq!(pick_run(runs, "5f2a").map(|r| r.id), Some(8));
        assert!(pick_run(vec![run(9, "sophons smoke cpu ")], "5f2a").is_none());
    }
}
