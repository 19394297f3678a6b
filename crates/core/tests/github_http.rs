//! The octocrab adapter against the fake GitHub over real HTTP: PAT and App auth, org and repo
//! scope, job status, runner removal, 5xx and rate-limit answers, and GitHub's bad days: a retried
//! registration meeting its own first attempt, busy runners, pages, secondary rate limits.

use std::time::{Duration, Instant};

use serde_json::json;
use sophons_core::config::{AppConfig, GithubConfig, Scope};
use sophons_core::fakes::FakeParameters;
use sophons_core::github::{Github, GithubError, JobStatus, OctocrabGithub, RunnerScope};
use testkit::github::GithubServer;

const TOKEN: &str = "ghp_testtoken";

fn github_config(url: &str, scope: Scope) -> GithubConfig {
    GithubConfig {
        api_url: url.to_string(),
        owner: "my-org".into(),
        scope,
        runner_group_id: 1,
        token_param: Some("/sophons/github/token".into()),
        app: None,
        webhook_id: None,
        webhook_repository: None,
        redelivery_lookback_minutes: 180,
    }
}

async fn pat_client(fake: &GithubServer) -> OctocrabGithub {
    fake.set_token(TOKEN);
    let parameters = FakeParameters::with(&[("/sophons/github/token", TOKEN)]);
    OctocrabGithub::connect(&github_config(&fake.url(), Scope::Org), &parameters)
        .await
        .unwrap()
}

fn labels() -> Vec<String> {
    vec!["self-hosted".into(), "template_cpu".into(), "linux".into()]
}

#[tokio::test]
async fn a_pat_registers_an_org_runner_with_the_templates_labels_and_group() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let org = RunnerScope::Org("my-org".into());
    let jit = github
        .register_runner(&org, "sophons-i-0abc", &labels(), 3)
        .await
        .unwrap();
    assert!(!jit.encoded.is_empty());
    assert!(
        !format!("{jit:?}").contains(&jit.encoded),
        "Debug must not show the JIT config"
    );
    let requests = fake.requests_to("POST", "/orgs/my-org/actions/runners/generate-jitconfig");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["name"], "sophons-i-0abc");
    assert_eq!(requests[0].body["labels"], json!(labels()));
    assert_eq!(requests[0].body["runner_group_id"], 3);
    assert_eq!(requests[0].authorization.as_deref(), Some(&*format!("Bearer {TOKEN}")));
    // The same name again is a conflict, which create-runner reads as "another handler has it".
    let again = github.register_runner(&org, "sophons-i-0abc", &labels(), 3).await;
    assert!(matches!(again, Err(GithubError::Conflict(_))), "{again:?}");
}

#[tokio::test]
async fn a_repo_scoped_runner_registers_with_the_repository() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let repo = RunnerScope::Repo("my-org/app".into());
    let jit = github
        .register_runner(&repo, "sophons-i-1", &labels(), 1)
        .await
        .unwrap();
    assert_eq!(
        fake.requests_to("POST", "/repos/my-org/app/actions/runners/generate-jitconfig")
            .len(),
        1
    );
    let listed = github.runners(&repo).await.unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), vec![jit.runner_id]);
    github.remove_runner(&repo, jit.runner_id).await.unwrap();
    assert!(github.runners(&repo).await.unwrap().is_empty());
    // Removing a runner already gone is not an error.
    github.remove_runner(&repo, jit.runner_id).await.unwrap();
}

#[tokio::test]
async fn job_status_reads_queued_other_and_missing_jobs() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    fake.set_job_status("my-org/app", 1, "queued");
    fake.set_job_status("my-org/app", 2, "completed");
    assert_eq!(github.job_status("my-org/app", 1).await.unwrap(), JobStatus::Queued);
    assert_eq!(
        github.job_status("my-org/app", 2).await.unwrap(),
        JobStatus::Other("completed".into())
    );
    assert!(matches!(
        github.job_status("my-org/app", 3).await,
        Err(GithubError::NotFound(_))
    ));
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_told_apart_from_refusals() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    fake.set_job_status("my-org/app", 1, "queued");
    // The adapter retries a 5xx; one that persists is "unavailable".
    fake.fail_next("/actions/jobs/1", 10, 502, vec![], json!({"message": "Bad Gateway"}));
    assert!(matches!(
        github.job_status("my-org/app", 1).await,
        Err(GithubError::Unavailable(_))
    ));
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    fake.set_job_status("my-org/app", 1, "queued");
    let reset = ("x-ratelimit-reset".to_string(), "1900000000".to_string());
    let remaining = ("x-ratelimit-remaining".to_string(), "0".to_string());
    fake.fail_next(
        "/actions/jobs/1",
        1,
        403,
        vec![remaining, reset],
        json!({"message": "API rate limit exceeded"}),
    );
    let limited = github.job_status("my-org/app", 1).await;
    assert!(
        matches!(&limited, Err(e @ GithubError::RateLimited(_)) if e.is_retryable()),
        "{limited:?}"
    );
    // A 429 with a short retry-after is waited for, up to 2 s in all; one that persists is
    // "rate limited".
    fake.fail_next(
        "generate-jitconfig",
        10,
        429,
        vec![("retry-after".into(), "1".into())],
        json!({"message": "slow down"}),
    );
    let limited = github
        .register_runner(&RunnerScope::Org("my-org".into()), "r", &labels(), 1)
        .await;
    assert!(matches!(limited, Err(GithubError::RateLimited(_))), "{limited:?}");
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    fake.fail_next(
        "generate-jitconfig",
        10,
        403,
        vec![],
        json!({"message": "Resource not accessible by integration"}),
    );
    let refused = github
        .register_runner(&RunnerScope::Org("my-org".into()), "r", &labels(), 1)
        .await;
    assert!(
        matches!(&refused, Err(e @ GithubError::Unauthorized(_)) if !e.is_retryable()),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized() {
    let fake = GithubServer::start().await;
    fake.set_token("the-right-one");
    let parameters = FakeParameters::with(&[("/sophons/github/token", "a-wrong-one")]);
    let github = OctocrabGithub::connect(&github_config(&fake.url(), Scope::Org), &parameters)
        .await
        .unwrap();
    assert!(matches!(
        github.job_status("my-org/app", 1).await,
        Err(GithubError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn a_github_app_exchanges_its_jwt_for_an_installation_token() {
    let fake = GithubServer::start().await;
    fake.set_app(1234, 5678);
    fake.set_job_status("my-org/app", 1, "queued");
    let pem = std::fs::read_to_string(testkit::workspace_root().join("crates/testkit/fixtures/keys/test-app-key.pem"))
        .unwrap();
    let parameters = FakeParameters::with(&[("/sophons/github/app-key", pem.as_str())]);
    let mut config = github_config(&fake.url(), Scope::Org);
    config.token_param = None;
    config.app = Some(AppConfig {
        app_id: 1234,
        installation_id: 5678,
        private_key_param: "/sophons/github/app-key".into(),
    });
    let github = OctocrabGithub::connect(&config, &parameters).await.unwrap();
    assert_eq!(github.job_status("my-org/app", 1).await.unwrap(), JobStatus::Queued);
    github
        .register_runner(&RunnerScope::Org("my-org".into()), "sophons-i-app", &labels(), 1)
        .await
        .unwrap();
    let exchanges = fake.requests_to("POST", "/app/installations/5678/access_tokens");
    assert_eq!(exchanges.len(), 1, "the installation token is cached between calls");
    let used = fake.requests_to("GET", "/repos/my-org/app/actions/jobs/1");
    assert!(
        used[0].authorization.as_deref().is_some_and(|a| a.contains("ghs_")),
        "{:?}",
        used[0].authorization
    );
}

#[tokio::test]
async fn an_app_key_that_is_not_pem_fails_the_cold_start_clearly() {
    let parameters = FakeParameters::with(&[("/k", "not a key")]);
    let mut config = github_config("https://api.github.com", Scope::Org);
    config.token_param = None;
    config.app = Some(AppConfig {
        app_id: 1,
        installation_id: 2,
        private_key_param: "/k".into(),
    });
    let error = OctocrabGithub::connect(&config, &parameters)
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("`/k`"), "{error}");
}

#[tokio::test]
async fn a_retried_registration_that_meets_its_own_first_attempt_registers_again() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let org = RunnerScope::Org("my-org".into());
    // GitHub registers the runner, then the answer fails on its way back; the retry meets 409.
    fake.fail_after_success_next("generate-jitconfig", 502);
    let jit = github
        .register_runner(&org, "sophons-i-0abc", &labels(), 1)
        .await
        .expect("the runner is ours: removed and registered again");
    let runners = fake.runners();
    assert_eq!(runners.len(), 1, "{runners:?}");
    assert_eq!(
        (runners[0].id, runners[0].name.as_str()),
        (jit.runner_id, "sophons-i-0abc")
    );
    assert!(jit.encoded.starts_with(&format!("fakejit-{}-", jit.runner_id)));
    let posts = fake.requests_to("POST", "/generate-jitconfig").len();
    let deletes = fake.requests_to("DELETE", "/orgs/my-org/actions/runners/1000").len();
    assert_eq!(
        (posts, deletes),
        (3, 1),
        "502, 409, then 201 after removing runner 1000"
    );
}

#[tokio::test]
async fn a_registration_whose_answer_was_lost_registers_again() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let org = RunnerScope::Org("my-org".into());
    fake.lose_answer_after_success_next("generate-jitconfig");
    let jit = github
        .register_runner(&org, "sophons-i-0abc", &labels(), 1)
        .await
        .expect("a lost answer is retried, and the retry's 409 is ours");
    assert_eq!(
        fake.runners().iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![jit.runner_id]
    );
}

#[tokio::test]
async fn a_conflict_on_the_first_attempt_is_another_handlers_runner() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let org = RunnerScope::Org("my-org".into());
    let theirs = github
        .register_runner(&org, "sophons-i-0abc", &labels(), 1)
        .await
        .unwrap();
    let again = github.register_runner(&org, "sophons-i-0abc", &labels(), 1).await;
    assert!(
        matches!(&again, Err(GithubError::Conflict(m)) if m.contains("409")),
        "{again:?}"
    );
    assert_eq!(
        fake.runners().iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![theirs.runner_id]
    );
    assert!(
        fake.requests_to("DELETE", "").is_empty(),
        "another handler's runner is left alone"
    );
}

#[tokio::test]
async fn a_retry_that_meets_a_runner_already_at_work_leaves_it_alone() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let org = RunnerScope::Org("my-org".into());
    // Another handler's runner of this name is online; our first attempt fails with a 502 that
    // GitHub answered without doing anything, and the retry meets the other runner.
    let theirs = github
        .register_runner(&org, "sophons-i-0abc", &labels(), 1)
        .await
        .unwrap();
    fake.set_runner_status(theirs.runner_id, "online", false);
    fake.fail_next("generate-jitconfig", 1, 502, vec![], json!({"message": "Server Error"}));
    let again = github.register_runner(&org, "sophons-i-0abc", &labels(), 1).await;
    assert!(
        matches!(&again, Err(GithubError::Conflict(m)) if m.contains("online")),
        "{again:?}"
    );
    assert_eq!(fake.runners().len(), 1);
    assert!(fake.requests_to("DELETE", "").is_empty());
}

#[tokio::test]
async fn deleting_a_busy_runner_is_refused_not_lost() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let org = RunnerScope::Org("my-org".into());
    let jit = github
        .register_runner(&org, "sophons-i-0abc", &labels(), 1)
        .await
        .unwrap();
    fake.set_runner_status(jit.runner_id, "online", true);
    let refused = github.remove_runner(&org, jit.runner_id).await;
    assert!(
        matches!(&refused, Err(e @ GithubError::Busy(m)) if m.contains("still running a job") && !e.is_retryable()),
        "{refused:?}"
    );
    assert_eq!(fake.runners().len(), 1);
    assert_eq!(fake.requests_to("DELETE", "").len(), 1, "a 422 is not retried");
    // When the job ends, GitHub removes the JIT runner itself; removing it then is no error.
    fake.runner_finished(jit.runner_id);
    github.remove_runner(&org, jit.runner_id).await.unwrap();
}

#[tokio::test]
async fn a_removal_whose_answer_failed_is_done() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let org = RunnerScope::Org("my-org".into());
    let jit = github
        .register_runner(&org, "sophons-i-0abc", &labels(), 1)
        .await
        .unwrap();
    fake.fail_after_success_next("/actions/runners/", 502);
    github.remove_runner(&org, jit.runner_id).await.unwrap();
    assert!(fake.runners().is_empty());
    assert_eq!(fake.requests_to("DELETE", "").len(), 2, "502, then 404: gone");
}

#[tokio::test]
async fn runner_lists_are_read_across_pages() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let org = RunnerScope::Org("my-org".into());
    fake.set_short_jit_configs(true);
    for i in 0..205 {
        github
            .register_runner(&org, &format!("sophons-i-{i:03}"), &labels(), 1)
            .await
            .unwrap();
    }
    let listed = github.runners(&org).await.unwrap();
    assert_eq!(listed.len(), 205);
    assert_eq!(listed[204].name, "sophons-i-204");
    let pages: Vec<String> = fake
        .requests_to("GET", "/orgs/my-org/actions/runners")
        .into_iter()
        .map(|r| r.query)
        .collect();
    assert_eq!(
        pages,
        ["per_page=100&page=1", "per_page=100&page=2", "per_page=100&page=3"],
        "100 a page, GitHub's most"
    );
}

#[tokio::test]
async fn a_secondary_rate_limit_with_retry_after_is_rate_limited() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    fake.set_job_status("my-org/app", 1, "queued");
    fake.secondary_rate_limit_next("/actions/jobs/1", 1, 403, Some(60));
    let started = Instant::now();
    let limited = github.job_status("my-org/app", 1).await;
    assert!(
        matches!(&limited, Err(e @ GithubError::RateLimited(m)) if e.is_retryable() && m.contains("secondary")),
        "{limited:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a Lambda does not sleep for a minute"
    );
    assert_eq!(
        fake.requests_to("GET", "/actions/jobs/1").len(),
        1,
        "no retry before retry-after"
    );
    fake.secondary_rate_limit_next("generate-jitconfig", 1, 429, None);
    let limited = github
        .register_runner(&RunnerScope::Org("my-org".into()), "r", &labels(), 1)
        .await;
    assert!(matches!(limited, Err(GithubError::RateLimited(_))), "{limited:?}");
    assert!(fake.runners().is_empty());
}

#[tokio::test]
async fn a_short_retry_after_is_waited_for_and_the_call_goes_through() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    fake.set_job_status("my-org/app", 1, "queued");
    fake.secondary_rate_limit_next("/actions/jobs/1", 1, 429, Some(1));
    let started = Instant::now();
    assert_eq!(github.job_status("my-org/app", 1).await.unwrap(), JobStatus::Queued);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(fake.requests_to("GET", "/actions/jobs/1").len(), 2);
}

#[tokio::test]
async fn jit_configs_are_larger_than_a_standard_parameter() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let jit = github
        .register_runner(&RunnerScope::Org("my-org".into()), "sophons-i-0abc", &labels(), 1)
        .await
        .unwrap();
    // SSM's Standard tier holds 4,096 characters; GitHub's JIT configs no longer fit.
    assert!(
        (4_097..=testkit::github::JIT_CONFIG_MAX_SIZE).contains(&jit.encoded.len()),
        "{}",
        jit.encoded.len()
    );
}

#[tokio::test]
async fn the_current_runner_release_is_read_from_the_downloads_api_in_each_scope() {
    let fake = GithubServer::start().await;
    let github = pat_client(&fake).await;
    let downloads = github
        .runner_downloads(&RunnerScope::Org("my-org".into()))
        .await
        .unwrap();
    let release = sophons_core::release::RunnerRelease::from_downloads(&downloads).unwrap();
    assert_eq!(release.version.to_string(), testkit::github::FAKE_RUNNER_VERSION);
    assert!(release.arm64.url.ends_with("linux-arm64-2.330.0.tar.gz"), "{release:?}");
    assert_eq!(
        fake.requests_to("GET", "/orgs/my-org/actions/runners/downloads").len(),
        1
    );

    fake.set_runner_downloads(testkit::github::runner_downloads("2.331.0"));
    let downloads = github
        .runner_downloads(&RunnerScope::Repo("my-org/app".into()))
        .await
        .unwrap();
    assert_eq!(
        sophons_core::release::RunnerRelease::from_downloads(&downloads)
            .unwrap()
            .version
            .to_string(),
        "2.331.0"
    );
    assert_eq!(
        fake.requests_to("GET", "/repos/my-org/app/actions/runners/downloads")
            .len(),
        1
    );

    // Every attempt fails: the adapter says so, and create-runner falls back (tests/create.rs).
    fake.fail_next("/downloads", 3, 502, vec![], json!({"message": "Bad Gateway"}));
    assert!(matches!(
        github.runner_downloads(&RunnerScope::Org("my-org".into())).await,
        Err(GithubError::Unavailable(_))
    ));
}
