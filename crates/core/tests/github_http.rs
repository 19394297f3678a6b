//! The octocrab adapter against the fake GitHub over real HTTP: PAT and App auth, org and repo
//! scope, job status, runner removal, 5xx and rate-limit answers.

use serde_json::json;
use sophons_core::config::{AppConfig, GithubConfig, Scope};
use sophons_core::fakes::FakeSecrets;
use sophons_core::github::{Github, GithubError, JobStatus, OctocrabGithub, RunnerScope};
use testkit::github::FakeGithub;

const TOKEN: &str = "ghp_testtoken";

fn github_config(url: &str, scope: Scope) -> GithubConfig {
    GithubConfig {
        api_url: url.to_string(),
        owner: "my-org".into(),
        scope,
        runner_group_id: 1,
        token_param: Some("/sophons/github/token".into()),
        app: None,
    }
}

async fn pat_client(fake: &FakeGithub) -> OctocrabGithub {
    fake.set_token(TOKEN);
    let secrets = FakeSecrets::with(&[("/sophons/github/token", TOKEN)]);
    OctocrabGithub::connect(&github_config(&fake.url(), Scope::Org), &secrets)
        .await
        .unwrap()
}

fn labels() -> Vec<String> {
    vec!["self-hosted".into(), "template_cpu".into(), "linux".into()]
}

#[tokio::test]
async fn a_pat_registers_an_org_runner_with_the_templates_labels_and_group() {
    let fake = FakeGithub::start().await;
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
    let fake = FakeGithub::start().await;
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
    let fake = FakeGithub::start().await;
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
    let fake = FakeGithub::start().await;
    let github = pat_client(&fake).await;
    fake.set_job_status("my-org/app", 1, "queued");
    // octocrab retries a 5xx itself; one that persists is "unavailable".
    fake.fail_next("/actions/jobs/1", 10, 502, vec![], json!({"message": "Bad Gateway"}));
    assert!(matches!(
        github.job_status("my-org/app", 1).await,
        Err(GithubError::Unavailable(_))
    ));
    let fake = FakeGithub::start().await;
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
    // octocrab itself retries a 429 a few times; one that persists is "rate limited".
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
    let fake = FakeGithub::start().await;
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
    let fake = FakeGithub::start().await;
    fake.set_token("the-right-one");
    let secrets = FakeSecrets::with(&[("/sophons/github/token", "a-wrong-one")]);
    let github = OctocrabGithub::connect(&github_config(&fake.url(), Scope::Org), &secrets)
        .await
        .unwrap();
    assert!(matches!(
        github.job_status("my-org/app", 1).await,
        Err(GithubError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn a_github_app_exchanges_its_jwt_for_an_installation_token() {
    let fake = FakeGithub::start().await;
    fake.set_app(1234, 5678);
    fake.set_job_status("my-org/app", 1, "queued");
    let pem = std::fs::read_to_string(testkit::workspace_root().join("crates/testkit/fixtures/keys/test-app-key.pem"))
        .unwrap();
    let secrets = FakeSecrets::with(&[("/sophons/github/app-key", pem.as_str())]);
    let mut config = github_config(&fake.url(), Scope::Org);
    config.token_param = None;
    config.app = Some(AppConfig {
        app_id: 1234,
        installation_id: 5678,
        private_key_param: "/sophons/github/app-key".into(),
    });
    let github = OctocrabGithub::connect(&config, &secrets).await.unwrap();
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
    let secrets = FakeSecrets::with(&[("/k", "not a key")]);
    let mut config = github_config("https://api.github.com", Scope::Org);
    config.token_param = None;
    config.app = Some(AppConfig {
        app_id: 1,
        installation_id: 2,
        private_key_param: "/k".into(),
    });
    let error = OctocrabGithub::connect(&config, &secrets).await.err().expect("refused");
    assert!(error.to_string().contains("`/k`"), "{error}");
}
