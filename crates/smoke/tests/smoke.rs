//! smoke against testkit's fake GitHub, over HTTP. The test plays GitHub's and the runner's side:
//! it waits for the dispatched job, brings a runner online and runs the job to its end.

use std::time::Duration;

use serde_json::{Value, json};
use smoke::api::{Github, SmokeError, Step};
use smoke::cli::Options;
use smoke::follow::{Outcome, Stage};
use smoke::workflow::{WORKFLOW, WORKFLOW_PATH};
use testkit::github::GithubServer;
use tokio::time::Instant;

const TOKEN: &str = "ghp_smoke_test_token";
const REPO_RUNNERS: &str = "/repos/acme/app/actions/runners";

async fn github() -> GithubServer {
    let github = GithubServer::start().await;
    github.set_token(TOKEN);
    github.add_repository("acme/app", "main");
    github
}

fn options(github: &GithubServer) -> Options {
    let mut options = Options::new("acme/app", "cpu");
    options.api_url = github.url();
    options.poll_interval = Duration::from_millis(20);
    options.retry_pause = Duration::from_millis(5);
    options.registration_wait = Duration::from_secs(2);
    options.timeout = Duration::from_secs(20);
    options
}

async fn run_smoke(options: &Options) -> (Result<Outcome, SmokeError>, String) {
    let client = Github::connect(&options.api_url, TOKEN, options.retry_pause).unwrap();
    let mut out = Vec::new();
    let result = smoke::smoke(options, &client, &mut out).await;
    (result, String::from_utf8(out).unwrap())
}

async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < until, "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Plays GitHub and a sophons runner for the `nth` run: a runner with the template's label comes
/// online (and, with `listed`, smoke lists it while the job waits), takes the job 48 s after it
/// was queued and ends it with `conclusion` at 62 s (in GitHub's clock). Returns the runner's name.
async fn serve_the_job(github: &GithubServer, nth: usize, conclusion: &str, listed: bool) -> String {
    let job = eventually("the dispatch", || {
        github.workflow_runs().get(nth).map(|run| run.job.clone())
    })
    .await;
    let name = format!("sophons-i-{:017x}", nth + 1);
    let runner = github.add_runner("repo:acme/app", &name, &["self-hosted", "cpu"]);
    github.set_runner_status(runner, "online", false);
    if listed {
        let before = github.requests_to("GET", REPO_RUNNERS).len();
        let listed_since = || (github.requests_to("GET", REPO_RUNNERS).len() > before).then_some(());
        eventually("smoke to list the runner", listed_since).await;
    }
    github.set_runner_status(runner, "online", true);
    github.start_workflow_job(job.id, &name, Duration::from_secs(48));
    github.complete_workflow_job(job.id, conclusion, Duration::from_secs(62));
    github.runner_finished(runner);
    name
}

fn line_with<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line `{start}` in:\n{out}"))
}

#[tokio::test]
async fn a_job_that_succeeds_prints_its_timeline_and_exits_0() {
    let github = github().await;
    let options = options(&github);
    let ((result, out), runner) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "success", true));
    println!("{out}");
    assert_eq!(result.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    let run = &github.workflow_runs()[0];
    assert_eq!(run.job.labels, ["self-hosted", "cpu"], "the job asks for the template");
    assert_eq!(run.inputs["template"], "cpu");
    assert!(line_with(&out, "  queued         +0s     ").ends_with('Z'), "{out}");
    let online = line_with(&out, "  runner online  +");
    assert!(online.contains(&format!("{runner} (first listed online")), "{online}");
    assert_eq!(
        line_with(&out, "  started        ").split_whitespace().nth(1),
        Some("+48s")
    );
    assert!(line_with(&out, "  started        ").ends_with(&format!("on {runner}")));
    assert_eq!(
        line_with(&out, "  completed      ").split_whitespace().nth(1),
        Some("+1m02s")
    );
    assert_eq!(line_with(&out, "  result "), "  result         success");
    assert!(
        out.contains(&format!(
            "runner {runner} is online\njob started on {runner}\njob completed: success\n"
        )),
        "{out}"
    );
    assert!(
        out.ends_with("smoke: success: a runner for template `cpu` took the job and ran it\n"),
        "{out}"
    );
    assert!(!out.contains("note:"), "{out}");
}

#[tokio::test]
async fn a_job_that_fails_exits_non_zero_with_its_conclusion() {
    let github = github().await;
    let options = options(&github);
    let ((result, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "failure", true));
    let outcome = result.unwrap();
    assert_eq!(
        outcome,
        Outcome::Concluded {
            conclusion: "failure".into()
        }
    );
    assert_eq!(outcome.exit_code(), smoke::EXIT_JOB_FAILED);
    assert_eq!(line_with(&out, "  result "), "  result         failure");
    let job = &github.workflow_runs()[0].job;
    let log = format!("https://github.com/acme/app/actions/runs/{}/job/{}", job.run_id, job.id);
    assert!(
        out.contains(&format!("smoke: the job ended `failure`: its log is at {log}.")),
        "{out}"
    );
}

#[tokio::test]
async fn a_job_no_runner_picks_up_times_out_with_the_hint_and_is_cancelled() {
    let github = github().await;
    let mut options = options(&github);
    options.timeout = Duration::from_millis(400);
    let (result, out) = run_smoke(&options).await;
    println!("{out}");
    let outcome = result.unwrap();
    let waiting = Stage::Queued {
        runner_seen: None,
        runners_visible: true,
    };
    assert_eq!(outcome, Outcome::TimedOut(waiting));
    assert_eq!(outcome.exit_code(), smoke::EXIT_TIMED_OUT);
    assert!(line_with(&out, "  runner online  -").ends_with("not seen"), "{out}");
    assert!(line_with(&out, "  started        -").ends_with("not started"), "{out}");
    assert_eq!(line_with(&out, "  result "), "  result         none");
    let hint = line_with(&out, "smoke: timed out after 400ms: no runner took the job.");
    assert!(hint.contains(smoke::TROUBLESHOOTING), "{hint}");
    assert!(out.contains("  1. the webhook's Recent Deliveries"), "{out}");
    assert!(out.contains("/aws/lambda/<deployment>-create-runner"), "{out}");
    let run = &github.workflow_runs()[0];
    assert_eq!(
        run.job.conclusion.as_deref(),
        Some("cancelled"),
        "the run does not stay queued"
    );
    assert!(out.ends_with(&format!(
        "cancelled run {} so that it does not wait on GitHub\n",
        run.id
    )));
}

#[tokio::test]
async fn a_runner_that_comes_online_but_never_takes_the_job_is_named_in_the_hint() {
    let github = github().await;
    let mut options = options(&github);
    options.timeout = Duration::from_millis(600);
    let other = github.add_runner("org:acme", "sophons-i-0aaaaaaaaaaaaaaaa", &["self-hosted", "CPU"]);
    let bring_online = async {
        eventually("the dispatch", || github.workflow_runs().first().cloned()).await;
        github.set_runner_status(other, "online", false);
    };
    let ((result, out), ()) = tokio::join!(run_smoke(&options), bring_online);
    assert_eq!(
        result.unwrap(),
        Outcome::TimedOut(Stage::Queued {
            runner_seen: Some("sophons-i-0aaaaaaaaaaaaaaaa".into()),
            runners_visible: true
        })
    );
    assert!(
        line_with(&out, "  runner online  +").contains("sophons-i-0aaaaaaaaaaaaaaaa"),
        "{out}"
    );
    assert!(
        out.contains("runner sophons-i-0aaaaaaaaaaaaaaaa came online but did not take the job"),
        "{out}"
    );
}

#[tokio::test]
async fn the_workflow_file_is_written_once_and_not_rewritten_when_already_as_expected() {
    let github = github().await;
    let options = options(&github);
    let ((first, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "success", false));
    assert_eq!(first.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    assert!(out.contains(&format!("{WORKFLOW_PATH}: created (commit ")), "{out}");
    assert_eq!(
        github.file("acme/app", "main", WORKFLOW_PATH).as_deref(),
        Some(WORKFLOW)
    );
    let ((second, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 1, "success", false));
    assert_eq!(second.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    assert!(out.contains(&format!("{WORKFLOW_PATH}: already as expected")), "{out}");
    let writes = github.requests_to("PUT", WORKFLOW_PATH);
    assert_eq!(writes.len(), 1, "one commit for two smoke runs");
    assert_eq!(writes[0].body["branch"], "main");
    assert_eq!(writes[0].body["sha"], Value::Null, "a new file has no sha to give");
}

#[tokio::test]
async fn an_outdated_workflow_file_is_replaced_with_the_sha_it_replaces() {
    let github = github().await;
    github.set_file("acme/app", "main", WORKFLOW_PATH, "name: sophons smoke\non: push\n");
    let options = options(&github);
    let ((result, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "success", false));
    assert_eq!(result.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    assert!(
        out.contains(&format!("{WORKFLOW_PATH}: differed, updated (commit ")),
        "{out}"
    );
    let writes = github.requests_to("PUT", WORKFLOW_PATH);
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].body["sha"].as_str().map(str::len), Some(40));
    assert_eq!(
        github.file("acme/app", "main", WORKFLOW_PATH).as_deref(),
        Some(WORKFLOW)
    );
}

#[tokio::test]
async fn a_403_on_dispatch_names_the_permission() {
    let github = github().await;
    let headers = vec![("x-accepted-github-permissions".to_string(), "actions=write".to_string())];
    let refused = json!({"message": "Resource not accessible by personal access token"});
    github.fail_next("/dispatches", 1, 403, headers, refused);
    let (result, _) = run_smoke(&options(&github)).await;
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            SmokeError::Refused {
                step: Step::Dispatch,
                status: 403,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.exit_code(), smoke::EXIT_GITHUB);
    let text = error.to_string();
    assert!(
        text.starts_with("GitHub refused to dispatch the smoke workflow (403 Resource not accessible"),
        "{text}"
    );
    assert!(text.contains("the token needs Actions: Read and write"), "{text}");
    assert!(text.contains("accepts: actions=write"), "{text}");
    assert!(github.workflow_runs().is_empty());
}

#[tokio::test]
async fn a_wrong_token_is_refused_before_anything_is_written() {
    let github = github().await;
    let client = Github::connect(&github.url(), "ghp_wrong", Duration::from_millis(5)).unwrap();
    let result = smoke::smoke(&options(&github), &client, &mut Vec::new()).await;
    assert!(matches!(result, Err(SmokeError::BadCredentials { .. })), "{result:?}");
    assert!(github.requests_to("PUT", WORKFLOW_PATH).is_empty());
}

#[tokio::test]
async fn a_5xx_is_retried_and_runners_the_token_cannot_list_are_skipped_with_a_note() {
    let github = github().await;
    github.fail_next("/jobs", 2, 502, vec![], json!({"message": "Server Error"}));
    let refused = json!({"message": "Resource not accessible by personal access token"});
    github.fail_next("/actions/runners", 1_000, 403, vec![], refused);
    let options = options(&github);
    let ((result, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "success", false));
    assert_eq!(result.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    assert!(github.requests_to("GET", "/jobs").len() >= 3);
    assert!(line_with(&out, "  runner online  -").ends_with("not seen"), "{out}");
    let note = line_with(
        &out,
        "  note: runner online not visible: GitHub refused to list the repository's",
    );
    assert!(note.contains("the token needs Administration: Read"), "{note}");
    assert!(
        out.contains("Self-hosted runners: Read"),
        "the organization's list too:\n{out}"
    );
    // Refused once, the lists are not asked again.
    assert_eq!(github.requests_to("GET", REPO_RUNNERS).len(), 1);
}

#[tokio::test]
async fn a_dispatch_answered_without_the_run_id_finds_its_run_by_its_title() {
    let github = github().await;
    github.set_dispatch_returns_run_ids(false);
    let options = options(&github);
    let ((result, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "success", false));
    assert_eq!(result.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    let listed = github.requests_to("GET", "/actions/workflows/sophons-smoke.yml/runs");
    assert!(!listed.is_empty());
    assert!(
        listed[0].query.contains("event=workflow_dispatch&branch=main"),
        "{}",
        listed[0].query
    );
    let run = &github.workflow_runs()[0];
    assert!(run.display_title.ends_with(run.inputs["nonce"].as_str().unwrap()));
    assert!(out.contains(&format!(
        "run {}: https://github.com/acme/app/actions/runs/{}",
        run.id, run.id
    )));
}

#[tokio::test]
async fn a_github_that_refuses_return_run_details_is_asked_again_without_it() {
    let github = github().await;
    let refused = json!({"message": "Invalid request.\n\n\"return_run_details\" is not a permitted key."});
    github.fail_next("/dispatches", 1, 422, vec![], refused);
    let options = options(&github);
    let ((result, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "success", false));
    assert_eq!(result.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    let dispatches = github.requests_to("POST", "/dispatches");
    assert_eq!(dispatches.len(), 2);
    assert_eq!(dispatches[1].body.get("return_run_details"), None);
}

#[tokio::test]
async fn a_new_workflow_github_has_not_registered_yet_is_dispatched_again() {
    let github = github().await;
    github.fail_next("/dispatches", 2, 404, vec![], json!({"message": "Not Found"}));
    let options = options(&github);
    let ((result, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "success", false));
    assert_eq!(result.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    assert_eq!(github.requests_to("POST", "/dispatches").len(), 3);
}

#[tokio::test]
async fn a_branch_given_with_ref_gets_the_workflow_and_the_run() {
    let github = github().await;
    github.add_branch("acme/app", "smoke");
    let mut options = options(&github);
    options.git_ref = Some("smoke".into());
    let ((result, out), _) = tokio::join!(run_smoke(&options), serve_the_job(&github, 0, "success", false));
    assert_eq!(result.unwrap().exit_code(), smoke::EXIT_SUCCESS, "{out}");
    assert_eq!(
        github.file("acme/app", "smoke", WORKFLOW_PATH).as_deref(),
        Some(WORKFLOW)
    );
    assert_eq!(github.file("acme/app", "main", WORKFLOW_PATH), None);
    assert_eq!(github.workflow_runs()[0].head_branch, "smoke");
}

#[tokio::test]
async fn the_binary_names_the_permission_on_a_403_and_never_prints_the_token() {
    let github = github().await;
    let refused = json!({"message": "Resource not accessible by personal access token"});
    github.fail_next("/dispatches", 1, 403, vec![], refused);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_smoke"))
        .args([
            "--repository",
            "acme/app",
            "--template",
            "cpu",
            "--api-url",
            &github.url(),
        ])
        .env("GITHUB_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(
        output.status.code(),
        Some(i32::from(smoke::EXIT_GITHUB)),
        "{stdout}{stderr}"
    );
    assert!(
        stderr.starts_with("smoke: GitHub refused to dispatch the smoke workflow"),
        "{stderr}"
    );
    assert!(stderr.contains("Actions: Read and write"), "{stderr}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
}

#[tokio::test]
async fn the_binary_says_what_is_missing_with_exit_status_2() {
    let smoke = || {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_smoke"));
        command.env_remove("GITHUB_TOKEN");
        command
    };
    let output = smoke()
        .args(["--repository", "acme/app", "--template", "cpu"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(i32::from(smoke::EXIT_USAGE)));
    assert!(String::from_utf8_lossy(&output.stderr).contains("GITHUB_TOKEN is not set"));
    let output = smoke().args(["--template", "cpu"]).output().await.unwrap();
    assert_eq!(output.status.code(), Some(i32::from(smoke::EXIT_USAGE)));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--repository <owner/name> is required"));
    let output = smoke().arg("--help").output().await.unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("Workflows: Read and write"));
}

#[test]
fn the_deployment_guide_has_the_sections_smoke_points_to() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deploy.md")).unwrap();
    assert!(smoke::TROUBLESHOOTING.contains("Troubleshooting section of docs/deploy.md"));
    assert!(
        guide
            .lines()
            .any(|l| l.starts_with("## ") && l.ends_with("Troubleshooting")),
        "the hint's section"
    );
    assert!(guide.contains("make smoke REPO="), "the guide shows make smoke");
}
