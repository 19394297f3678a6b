//! Re-running a job through the octocrab adapter against the fake GitHub over real HTTP: the job and
//! its run read back, GitHub's refusal while the run is not completed, a new attempt with a new job
//! id once it is, and a re-run that is never retried.

mod common;

use std::time::Duration;

use serde_json::json;
use sophons_core::Config;
use sophons_core::fakes::FakeParameters;
use sophons_core::github::{Github, GithubError, JobDetails, OctocrabGithub, RunDetails};
use testkit::github::GithubServer;

const TOKEN: &str = "ghp_testtoken";
const REPOSITORY: &str = "my-org/app";
const RUN: u64 = 500;
const JOB: u64 = 501;

/// The adapter with a token, and run `RUN` of `REPOSITORY` queued with its one job `JOB`.
async fn adapter_and_run(fake: &GithubServer) -> OctocrabGithub {
    fake.set_token(TOKEN);
    fake.add_workflow_run(REPOSITORY, RUN, JOB, "build", &["self-hosted", "template_cpu"]);
    let mut value = common::config_json("https://sqs.us-east-1.amazonaws.com/123456789012/sophons-jobs");
    value["github"]["api_url"] = json!(fake.url());
    let config = Config::parse(&value.to_string()).unwrap();
    let parameters = FakeParameters::with(&[("/sophons/github/token", TOKEN)]);
    OctocrabGithub::connect(&config.github, &parameters).await.unwrap()
}

fn seconds(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test]
async fn a_job_is_read_with_its_attempt_runner_and_times() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    let queued = github.job(REPOSITORY, JOB).await.unwrap();
    assert_eq!(
        (
            queued.id,
            queued.run_id,
            queued.run_attempt,
            queued.name.as_str(),
            queued.status.as_str()
        ),
        (JOB, RUN, 1, "build", "queued")
    );
    assert_eq!(
        (queued.conclusion, queued.runner_name, queued.completed_at),
        (None, None, None)
    );
    fake.start_workflow_job(JOB, "sophons-i-0abc", seconds(20));
    fake.complete_workflow_job(JOB, "failure", seconds(80));
    let ended = github.job(REPOSITORY, JOB).await.unwrap();
    assert_eq!(
        (
            ended.status.as_str(),
            ended.conclusion.as_deref(),
            ended.runner_name.as_deref()
        ),
        ("completed", Some("failure"), Some("sophons-i-0abc"))
    );
    let (started, completed) = (ended.started_at.unwrap(), ended.completed_at.unwrap());
    assert!(
        started.ends_with('Z') && completed > started,
        "{started} .. {completed}"
    );
}

#[tokio::test]
async fn a_workflow_run_is_read_as_of_its_latest_attempt() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    assert_eq!(
        github.workflow_run(REPOSITORY, RUN).await.unwrap(),
        RunDetails {
            id: RUN,
            run_attempt: 1,
            status: "queued".into(),
            conclusion: None,
        }
    );
    fake.complete_workflow_job(JOB, "cancelled", seconds(30));
    let ended = github.workflow_run(REPOSITORY, RUN).await.unwrap();
    assert_eq!(
        (ended.status.as_str(), ended.conclusion.as_deref()),
        ("completed", Some("cancelled"))
    );
}

#[tokio::test]
async fn a_rerun_while_the_run_is_in_progress_is_a_conflict_with_githubs_message() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    fake.start_workflow_job(JOB, "sophons-i-0abc", seconds(20));
    let refused = github.rerun_job(REPOSITORY, JOB).await;
    assert!(
        matches!(&refused, Err(e @ GithubError::Conflict(m)) if m.contains("already running") && !e.is_retryable()),
        "{refused:?}"
    );
    assert_eq!(fake.requests_to("POST", &format!("/actions/jobs/{JOB}/rerun")).len(), 1);
    assert_eq!(fake.workflow_run(RUN).unwrap().run_attempt, 1);
}

#[tokio::test]
async fn a_rerun_after_the_run_completed_makes_a_new_attempt_with_a_new_job_id() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    fake.start_workflow_job(JOB, "sophons-i-0abc", seconds(20));
    fake.complete_workflow_job(JOB, "cancelled", seconds(80));
    github.rerun_job(REPOSITORY, JOB).await.unwrap();
    let run = github.workflow_run(REPOSITORY, RUN).await.unwrap();
    assert_eq!(
        (run.run_attempt, run.status.as_str(), run.conclusion),
        (2, "queued", None)
    );
    let new_id = fake.workflow_run(RUN).unwrap().job.id;
    assert_ne!(new_id, JOB);
    let new = github.job(REPOSITORY, new_id).await.unwrap();
    assert_eq!(
        new,
        JobDetails {
            id: new_id,
            run_id: RUN,
            run_attempt: 2,
            name: "build".into(),
            status: "queued".into(),
            conclusion: None,
            runner_name: None,
            started_at: new.started_at.clone(),
            completed_at: None,
        }
    );
    let old = github.job(REPOSITORY, JOB).await.unwrap();
    assert_eq!(
        (old.run_attempt, old.conclusion.as_deref()),
        (1, Some("cancelled")),
        "the first attempt's job keeps its end"
    );
    let again = github.rerun_job(REPOSITORY, new_id).await;
    assert!(matches!(again, Err(GithubError::Conflict(_))), "{again:?}");
}

#[tokio::test]
async fn a_rerun_met_by_a_5xx_is_not_retried() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    fake.complete_workflow_job(JOB, "failure", seconds(80));
    fake.fail_next("/rerun", 1, 502, vec![], json!({"message": "Server Error"}));
    let failed = github.rerun_job(REPOSITORY, JOB).await;
    assert!(matches!(failed, Err(GithubError::Unavailable(_))), "{failed:?}");
    let posts = fake.requests_to("POST", &format!("/actions/jobs/{JOB}/rerun"));
    assert_eq!(
        posts.len(),
        1,
        "exactly one POST: a retry after a lost answer could re-run twice"
    );
    assert_eq!(fake.workflow_run(RUN).unwrap().run_attempt, 1);

    // GitHub made the new attempt, then the answer failed on its way back: still one POST.
    fake.fail_after_success_next("/rerun", 502);
    let failed = github.rerun_job(REPOSITORY, JOB).await;
    assert!(matches!(failed, Err(GithubError::Unavailable(_))), "{failed:?}");
    assert_eq!(fake.requests_to("POST", &format!("/actions/jobs/{JOB}/rerun")).len(), 2);
    assert_eq!(fake.workflow_run(RUN).unwrap().run_attempt, 2);
}

#[tokio::test]
async fn an_unknown_job_or_run_is_not_found() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    assert!(matches!(github.job(REPOSITORY, 9).await, Err(GithubError::NotFound(_))));
    assert!(matches!(
        github.workflow_run(REPOSITORY, 9).await,
        Err(GithubError::NotFound(_))
    ));
    assert!(matches!(
        github.rerun_job(REPOSITORY, 9).await,
        Err(GithubError::NotFound(_))
    ));
    assert!(matches!(
        github.rerun_job("my-org/other", JOB).await,
        Err(GithubError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_rerun_without_the_permission_or_past_a_rate_limit_is_not_a_conflict() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    fake.complete_workflow_job(JOB, "failure", seconds(80));
    let no_permission = json!({"message": "Resource not accessible by personal access token"});
    fake.fail_next("/rerun", 1, 403, vec![], no_permission);
    let refused = github.rerun_job(REPOSITORY, JOB).await;
    assert!(
        matches!(&refused, Err(GithubError::Unauthorized(m)) if m.contains("`repo` scope")),
        "{refused:?}"
    );
    fake.secondary_rate_limit_next("/rerun", 1, 403, Some(60));
    let limited = github.rerun_job(REPOSITORY, JOB).await;
    assert!(
        matches!(&limited, Err(e @ GithubError::RateLimited(_)) if e.is_retryable()),
        "{limited:?}"
    );
    assert_eq!(fake.requests_to("POST", "/rerun").len(), 2);
    assert_eq!(fake.workflow_run(RUN).unwrap().run_attempt, 1);
}

#[tokio::test]
async fn a_run_older_than_30_days_is_not_rerun() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    fake.complete_workflow_job(JOB, "failure", seconds(80));
    fake.age_workflow_run(RUN, Duration::from_secs(31 * 86_400));
    let refused = github.rerun_job(REPOSITORY, JOB).await;
    assert!(
        matches!(&refused, Err(GithubError::Conflict(m)) if m.contains("over a month ago")),
        "{refused:?}"
    );
}

/// The sweep's follow-up over HTTP: GitHub failed the interrupted job on our runner and its run
/// completed, so the job is re-run once; the new attempt's job is recognised and goes on-demand.
#[tokio::test]
async fn the_sweep_reruns_an_interrupted_job_through_the_adapter_and_its_new_attempt_goes_on_demand() {
    use sophons_core::fakes::{FakeCommands, FakeFleet, FakeQueue};
    use sophons_core::fleet::Capacity;
    use sophons_core::interruptions::{self, FakeInterruptions, Interrupted, Interruptions};
    use sophons_core::ports::Ports;
    use std::sync::Arc;
    use std::time::SystemTime;

    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    let mut value = common::config_json("https://sqs.us-east-1.amazonaws.com/123456789012/sophons-jobs");
    value["interruptions_table"] = json!("sophons-interruptions");
    let config = Config::parse(&value.to_string()).unwrap();
    let store = Arc::new(FakeInterruptions::default());
    let ports = Ports {
        fleet: Arc::new(FakeFleet::default()),
        github: Arc::new(github),
        parameters: Arc::new(FakeParameters::default()),
        slots: Arc::new(sophons_core::slots::FakeSlots::default()),
        commands: Arc::new(FakeCommands::default()),
        queue: Arc::new(FakeQueue::default()),
        waiting: None,
        interruptions: Some(store.clone()),
    };
    let interrupted = Interrupted {
        job_id: JOB,
        repository: REPOSITORY.into(),
        run_id: RUN,
        template: "template_cpu".into(),
        instance_id: "i-0abc".into(),
        at: SystemTime::now(),
        warned: true,
    };
    store.record(&interrupted).await.unwrap();
    fake.start_workflow_job(JOB, "sophons-i-0abc", seconds(20));
    let followed = interruptions::follow(&config, &ports).await;
    assert_eq!((followed.rerun, followed.following), (0, 1), "running: followed");

    fake.complete_workflow_job(JOB, "failure", seconds(80));
    let followed = interruptions::follow(&config, &ports).await;
    assert_eq!(followed.rerun, 1, "{followed:?}");
    assert_eq!(fake.requests_to("POST", &format!("/actions/jobs/{JOB}/rerun")).len(), 1);
    let run = fake.workflow_run(RUN).unwrap();
    assert_eq!(run.run_attempt, 2);
    assert_ne!(run.job.id, JOB, "the new attempt's job has a new id");
    assert_eq!(interruptions::follow(&config, &ports).await, Default::default());

    let mut message = sophons_core::job::JobMessage::decode(
        &json!({
            "version": 1, "delivery_id": "d-2", "job_id": run.job.id, "run_id": RUN, "run_attempt": 2,
            "repository": REPOSITORY, "owner": "my-org", "name": "app",
            "labels": ["self-hosted", "template_cpu"], "template": "template_cpu",
            "workflow_name": "CI", "job_name": "build", "job_url": "", "created_at": "", "received_at": ""
        })
        .to_string(),
    )
    .unwrap();
    assert_eq!(
        interruptions::first_capacity(&ports, &message).await.unwrap().0,
        Capacity::OnDemand
    );
    message.job_name = "test".into();
    assert_eq!(
        interruptions::first_capacity(&ports, &message).await.unwrap().0,
        Capacity::Spot
    );
}

#[tokio::test]
async fn a_runs_jobs_are_listed_with_their_runners() {
    let fake = GithubServer::start().await;
    let github = adapter_and_run(&fake).await;
    fake.start_workflow_job(JOB, "sophons-i-0abc", seconds(20));
    let jobs = github.run_jobs(REPOSITORY, RUN).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        (jobs[0].id, jobs[0].runner_name.as_deref()),
        (JOB, Some("sophons-i-0abc"))
    );
    let listed = fake.requests_to("GET", &format!("/actions/runs/{RUN}/jobs"));
    assert!(
        !listed.is_empty() && listed.iter().all(|request| request.query.contains("filter=latest")),
        "only the latest attempt's jobs: {listed:?}"
    );
}
