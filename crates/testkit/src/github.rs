//! A fake GitHub REST API on loopback, spoken to over real HTTP so that octocrab (auth, retries,
//! rate-limit handling, JSON models) runs exactly as it does against api.github.com. It covers the
//! calls sophons makes: App installation tokens, job status, JIT runner registration, runner list
//! and removal, a webhook's deliveries and their redelivery (which POSTs the stored payload, signed,
//! to a webhook URL when a test sets one with `set_webhook_target`). Tests steer it with setters and read back every request it saw. For `make smoke`
//! it also serves repositories added with `add_repository`: their files, workflow dispatch, and the
//! runs and jobs a dispatch creates, which the test moves along as GitHub and a runner would. Runs
//! (made by a dispatch or `add_workflow_run`) are re-run with GitHub's rules (`POST .../jobs/<id>/rerun`
//! and `.../runs/<id>/rerun-failed-jobs`): a new attempt whose job has a new id, announced by a
//! `workflow_job` `queued` delivery.
//!
//! It answers as GitHub does on a bad day, by default: JIT configs are over 4 KB and grow with the
//! runner's name and labels; a second registration of a name is 409, including the retry of a POST
//! whose first attempt succeeded; deleting a busy runner is 422; runner lists come in pages of at
//! most 100 (30 unless asked) with `Link` headers. Faults (5xx, lost answers, rate limits) are
//! opt-in per test; the two kind defaults can be switched off (`set_short_jit_configs`,
//! `set_busy_runners_deletable`) by a test about something else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

/// A self-hosted runner as the fake holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    pub labels: Vec<String>,
    /// `org:<org>` or `repo:<owner>/<repo>`.
    pub scope: String,
    pub status: String,
    pub busy: bool,
    pub runner_group_id: u64,
}

/// One request the fake received, including those answered by `fail_next`.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    /// `Null` when the body was empty or not JSON.
    pub body: Value,
    pub authorization: Option<String>,
}

/// A workflow run the fake created for a dispatch. The fake runs one job per run: the first
/// under the workflow's `jobs:`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRun {
    pub id: u64,
    /// `owner/name`.
    pub repository: String,
    /// The workflow's file name, e.g. `sophons-smoke.yml`.
    pub workflow: String,
    pub head_branch: String,
    /// The workflow's `run-name` with the dispatch's inputs put in, else its `name`, as GitHub
    /// shows it.
    pub display_title: String,
    /// The workflow's `name`, else its path.
    pub name: String,
    /// The inputs the dispatch gave.
    pub inputs: Value,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    pub conclusion: Option<String>,
    /// Seconds since the epoch, as every time here.
    pub created_at: u64,
    /// 1, and one more for each re-run.
    pub run_attempt: u32,
    /// When the latest attempt started: `created_at` until a re-run.
    pub run_started_at: u64,
    /// The job of the latest attempt.
    pub job: WorkflowJob,
    /// The jobs of earlier attempts, oldest first; GitHub still answers for them by id.
    pub earlier_jobs: Vec<WorkflowJob>,
}

/// The one job of a `WorkflowRun`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowJob {
    pub id: u64,
    pub run_id: u64,
    /// The attempt of the run this job belongs to.
    pub run_attempt: u32,
    /// The job's key under `jobs:`.
    pub name: String,
    /// The job's `runs-on`, with the dispatch's inputs put in.
    pub labels: Vec<String>,
    pub status: String,
    pub conclusion: Option<String>,
    pub runner_name: Option<String>,
    pub created_at: u64,
    /// Equal to `created_at` until a runner takes the job, as GitHub reports it.
    pub started_at: u64,
    pub completed_at: Option<u64>,
}

impl WorkflowJob {
    /// Job `id` of attempt `run_attempt` of run `run_id`, queued `now`: no runner has taken it.
    fn queued(id: u64, run_id: u64, run_attempt: u32, name: String, labels: Vec<String>, now: u64) -> Self {
        Self {
            id,
            run_id,
            run_attempt,
            name,
            labels,
            status: "queued".into(),
            conclusion: None,
            runner_name: None,
            created_at: now,
            started_at: now,
            completed_at: None,
        }
    }
}

/// A repository the fake serves contents and workflow runs for.
#[derive(Default)]
struct Repository {
    default_branch: String,
    branches: Vec<String>,
    /// (branch, path) → content.
    files: HashMap<(String, String), Vec<u8>>,
    commits: u64,
}

struct Fault {
    path_contains: String,
    remaining: usize,
    status: u16,
    headers: HeaderMap,
    body: Value,
}

/// One delivery of a webhook, as the fake keeps it (GitHub's "hook delivery" with its payload).
#[derive(Debug, Clone, PartialEq)]
pub struct HookDelivery {
    pub id: u64,
    /// `org:<org>/<hook id>` or `repo:<owner>/<name>/<hook id>` (see `org_hook`, `repo_hook`).
    pub hook: String,
    pub guid: String,
    pub event: String,
    /// The payload's `action`.
    pub action: Option<String>,
    pub status_code: u16,
    pub redelivery: bool,
    /// Seconds since the epoch.
    pub delivered_at: u64,
    pub payload: Value,
}

/// The fake's name for organisation `org`'s hook `hook_id`.
pub fn org_hook(org: &str, hook_id: u64) -> String {
    format!("org:{org}/{hook_id}")
}

/// The fake's name for repository `owner_repo`'s hook `hook_id`.
pub fn repo_hook(owner_repo: &str, hook_id: u64) -> String {
    format!("repo:{owner_repo}/{hook_id}")
}

/// Makes a delivery's `X-Hub-Signature-256` from its body.
type Signer = dyn Fn(&[u8]) -> String + Send + Sync;

/// Where a redelivery is POSTed, and how its body is signed (`X-Hub-Signature-256`): testkit
/// has no HMAC of its own, so the test passes sophons' `webhook::sign` with its secret.
struct WebhookTarget {
    url: String,
    sign: Arc<Signer>,
}

/// A delivery the fake owes (a redelivery, or a re-run's `queued` job): the POST is made outside
/// the state's lock.
struct Outgoing {
    /// The delivery that records the webhook's answer, if the fake keeps one.
    delivery_id: Option<u64>,
    event: String,
    guid: String,
    hook_id: String,
    payload: Vec<u8>,
}

struct Stall {
    path_contains: String,
    remaining: usize,
    duration: Duration,
}

/// What becomes of a request that was carried out: its answer replaced by a 5xx, or lost.
enum AfterSuccess {
    Status(u16),
    Lost,
}

struct AfterFault {
    path_contains: String,
    then: AfterSuccess,
}

/// The size GitHub's JIT configs had in 2025 for a short name and a few labels (they passed 4 KB,
/// the SSM Standard tier's limit), and the most one is made to reach here.
pub const JIT_CONFIG_BASE_SIZE: usize = 4_600;
pub const JIT_CONFIG_MAX_SIZE: usize = 6_144;

#[derive(Default)]
struct Inner {
    pat: Option<String>,
    app: Option<(u64, u64)>,
    installation_tokens: Vec<String>,
    jobs: HashMap<(String, u64), String>,
    default_job_status: Option<String>,
    runners: Vec<Runner>,
    next_runner_id: u64,
    jit_calls: u64,
    requests: Vec<Recorded>,
    faults: Vec<Fault>,
    after_faults: Vec<AfterFault>,
    latency: Duration,
    short_jit_configs: bool,
    busy_runners_deletable: bool,
    /// The runner downloads API's answer (None: `runner_downloads(FAKE_RUNNER_VERSION)`).
    runner_downloads: Option<Value>,
    /// Repositories whose contents and workflow runs the fake serves (`add_repository`); the
    /// routes for any other repository answer 404 as before.
    repositories: HashMap<String, Repository>,
    workflow_runs: Vec<WorkflowRun>,
    /// Ids of workflow runs and their jobs, one sequence for both.
    last_workflow_id: u64,
    /// A dispatch answers 204 even when asked for the run's details, as GitHub did before
    /// 2026-02-19 and as GitHub Enterprise Server may still do.
    dispatch_without_run_ids: bool,
    /// Webhook deliveries, oldest first; their ids are one sequence for every hook.
    hook_deliveries: Vec<HookDelivery>,
    /// Hooks that exist (any other answers 404, as a wrong `hook_id` does on GitHub).
    hooks: Vec<String>,
    webhook_target: Option<WebhookTarget>,
    outgoing: Option<Outgoing>,
    stalls: Vec<Stall>,
}

/// The runner release the fake offers unless told otherwise.
pub const FAKE_RUNNER_VERSION: &str = "2.330.0";

/// GitHub's runner downloads answer for a release: a package per os and architecture, each with
/// a (made-up) SHA-256.
pub fn runner_downloads(version: &str) -> Value {
    let packages: Vec<Value> = [
        ("osx", "x64"),
        ("linux", "x64"),
        ("linux", "arm"),
        ("linux", "arm64"),
        ("win", "x64"),
    ]
    .iter()
    .enumerate()
    .map(|(index, (os, architecture))| {
        let extension = if *os == "win" { "zip" } else { "tar.gz" };
        let filename = format!("actions-runner-{os}-{architecture}-{version}.{extension}");
        json!({
            "os": os,
            "architecture": architecture,
            "download_url": format!("https://github.com/actions/runner/releases/download/v{version}/{filename}"),
            "filename": filename,
            "sha256_checksum": format!("{:064x}", index as u64 + 1),
        })
    })
    .collect();
    Value::Array(packages)
}

type Shared = Arc<Mutex<Inner>>;

/// The fake GitHub API served over HTTP, for the real adapter (octocrab) and the binaries; it
/// stops when dropped. The core's in-memory `sophons_core::fakes::FakeGithub` is the other fake,
/// for flow tests and the simulation.
pub struct GithubServer {
    inner: Shared,
    address: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl GithubServer {
    pub async fn start() -> Self {
        let inner: Shared = Arc::new(Mutex::new(Inner {
            next_runner_id: 1000,
            ..Inner::default()
        }));
        // One fallback handler instead of axum routes: every request must be recorded and may be
        // faulted before routing, and unknown routes must answer GitHub's JSON 404.
        let app = axum::Router::new().fallback(handle).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { inner, address, server }
    }

    /// The base URI to give octocrab, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    /// Accepts `token` as a personal access token (replacing any earlier one).
    pub fn set_token(&self, token: &str) {
        self.lock().pat = Some(token.into());
    }

    /// Lets the App `app_id` exchange a JWT for a token of installation `installation_id`.
    pub fn set_app(&self, app_id: u64, installation_id: u64) {
        self.lock().app = Some((app_id, installation_id));
    }

    pub fn set_job_status(&self, owner_repo: &str, job_id: u64, status: &str) {
        let key = (owner_repo.to_string(), job_id);
        self.lock().jobs.insert(key, status.into());
    }

    /// The status of jobs never given one; `None` makes them 404 as unknown jobs do on GitHub.
    pub fn set_default_job_status(&self, status: Option<&str>) {
        self.lock().default_job_status = status.map(Into::into);
    }

    /// Plays the runner's side: coming online, picking up a job. Unknown ids are ignored because
    /// the code under test may already have removed the runner.
    pub fn set_runner_status(&self, runner_id: u64, status: &str, busy: bool) {
        if let Some(runner) = self.lock().runners.iter_mut().find(|r| r.id == runner_id) {
            runner.status = status.into();
            runner.busy = busy;
        }
    }

    pub fn runners(&self) -> Vec<Runner> {
        self.lock().runners.clone()
    }

    pub fn remove_all_runners(&self) {
        self.lock().runners.clear();
    }

    /// Plays GitHub's side when a JIT runner's one job ends: the runner is removed. Unknown ids
    /// are ignored.
    pub fn runner_finished(&self, runner_id: u64) {
        self.lock().runners.retain(|r| r.id != runner_id);
    }

    /// `true` makes JIT configs `fakejit-<runner id>-<serial>` alone, as short as the fakes of old;
    /// by default they are 4.6–6 KB like GitHub's.
    /// What the runner downloads API answers from now on.
    pub fn set_runner_downloads(&self, downloads: Value) {
        self.lock().runner_downloads = Some(downloads);
    }

    pub fn set_short_jit_configs(&self, short: bool) {
        self.lock().short_jit_configs = short;
    }

    /// `true` lets a busy runner be deleted; by default GitHub's 422 "still running a job".
    pub fn set_busy_runners_deletable(&self, deletable: bool) {
        self.lock().busy_runners_deletable = deletable;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// The recorded requests with this method whose path ends with `path_suffix`.
    pub fn requests_to(&self, method: &str, path_suffix: &str) -> Vec<Recorded> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.ends_with(path_suffix))
            .cloned()
            .collect()
    }

    /// The next `times` requests whose path contains `path_contains` get this answer instead
    /// (5xx, or a rate limit: 403 with `x-ratelimit-remaining: 0`, or 429 with `retry-after`).
    /// A `Null` body answers with no body. Faults are checked before credentials.
    pub fn fail_next(
        &self,
        path_contains: &str,
        times: usize,
        status: u16,
        headers: Vec<(String, String)>,
        body: Value,
    ) {
        // Parsed here so that a bad header fails the test that set it, not a server task.
        let headers = headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::try_from(name.as_str()).expect("fault header name");
                (name, value.parse().expect("fault header value"))
            })
            .collect();
        self.lock().faults.push(Fault {
            path_contains: path_contains.into(),
            remaining: times,
            status,
            headers,
            body,
        });
    }

    /// The next request whose path contains `path_contains` and succeeds is carried out (a runner
    /// registered, deleted...), then answered with `status` instead, as a gateway does when GitHub
    /// did the work but the answer failed on the way back. A client that retries meets its own
    /// first attempt: a second registration of the name is 409.
    pub fn fail_after_success_next(&self, path_contains: &str, status: u16) {
        self.lock().after_faults.push(AfterFault {
            path_contains: path_contains.into(),
            then: AfterSuccess::Status(status),
        });
    }

    /// Like `fail_after_success_next`, but the answer is lost: the connection closes mid-answer,
    /// before the body (a reset or a timeout, as the client sees it).
    pub fn lose_answer_after_success_next(&self, path_contains: &str) {
        self.lock().after_faults.push(AfterFault {
            path_contains: path_contains.into(),
            then: AfterSuccess::Lost,
        });
    }

    /// The next `times` requests whose path contains `path_contains` meet a secondary rate limit:
    /// `status` 403 or 429 with GitHub's message, and `retry-after: <seconds>` when given.
    pub fn secondary_rate_limit_next(&self, path_contains: &str, times: usize, status: u16, retry_after: Option<u64>) {
        let headers = retry_after
            .map(|seconds| vec![("retry-after".to_string(), seconds.to_string())])
            .unwrap_or_default();
        let body = json!({
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "documentation_url": "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits",
        });
        self.fail_next(path_contains, times, status, headers, body);
    }

    /// Delays every answer, to model GitHub's round trip in benchmarks.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The next `times` requests whose path contains `path_contains` are held `duration` before
    /// they are answered as usual: a GitHub that stalls, which a client sees as a timeout.
    pub fn stall_next(&self, path_contains: &str, times: usize, duration: Duration) {
        self.lock().stalls.push(Stall {
            path_contains: path_contains.into(),
            remaining: times,
            duration,
        });
    }
}

/// A webhook's deliveries (`GET .../hooks/<id>/deliveries`, newest first, `per_page` up to 100,
/// the next page's `cursor` in a `Link` header) and redeliveries (`POST .../deliveries/<id>/attempts`:
/// 202, then a new delivery with the same `guid` and `redelivery: true`). Faults: `fail_next` and
/// `stall_next` with `/deliveries` or `/attempts`.
impl GithubServer {
    /// Makes hook `hook` (`org_hook`, `repo_hook`) exist with no deliveries yet.
    pub fn add_hook(&self, hook: &str) {
        let mut inner = self.lock();
        if !inner.hooks.iter().any(|h| h == hook) {
            inner.hooks.push(hook.into());
        }
    }

    /// Records a delivery GitHub made `age` ago of `event` with `payload`, which our webhook
    /// answered with `status_code`; returns its id. The hook exists from then on.
    pub fn add_hook_delivery(
        &self,
        hook: &str,
        guid: &str,
        event: &str,
        status_code: u16,
        age: Duration,
        payload: Value,
    ) -> u64 {
        self.add_hook(hook);
        let mut inner = self.lock();
        let id = inner.hook_deliveries.last().map_or(1, |d| d.id + 1);
        inner.hook_deliveries.push(HookDelivery {
            id,
            hook: hook.into(),
            guid: guid.into(),
            event: event.into(),
            action: payload["action"].as_str().map(String::from),
            status_code,
            redelivery: false,
            delivered_at: now_secs().saturating_sub(age.as_secs()),
            payload,
        });
        id
    }

    /// Every delivery of `hook`, oldest first, redeliveries included.
    pub fn hook_deliveries(&self, hook: &str) -> Vec<HookDelivery> {
        self.lock()
            .hook_deliveries
            .iter()
            .filter(|d| d.hook == hook)
            .cloned()
            .collect()
    }

    /// Redeliveries are POSTed to `url` from now on, signed with `sign` (e.g. sophons'
    /// `webhook::sign` with the webhook secret), and the delivery records the status the URL
    /// answered (0 when it did not). The POST is made before the 202 answers, so a test sees its
    /// outcome at once. Without a target a redelivery records 200.
    pub fn set_webhook_target(&self, url: &str, sign: impl Fn(&[u8]) -> String + Send + Sync + 'static) {
        self.lock().webhook_target = Some(WebhookTarget {
            url: url.into(),
            sign: Arc::new(sign),
        });
    }
}

/// Repositories, workflow files and the runs a dispatch creates: what `make smoke` uses. The test
/// plays the runner's side with `start_workflow_job` and `complete_workflow_job`.
impl GithubServer {
    /// Serves `owner_repo` (contents, workflow dispatch, runs and jobs) with one branch.
    pub fn add_repository(&self, owner_repo: &str, default_branch: &str) {
        let repository = Repository {
            default_branch: default_branch.into(),
            branches: vec![default_branch.into()],
            ..Repository::default()
        };
        self.lock().repositories.insert(owner_repo.into(), repository);
    }

    pub fn add_branch(&self, owner_repo: &str, branch: &str) {
        let mut inner = self.lock();
        let repository = inner.repositories.get_mut(owner_repo).expect("add_repository first");
        repository.branches.push(branch.into());
    }

    /// Puts a file on a branch, as a push would.
    pub fn set_file(&self, owner_repo: &str, branch: &str, path: &str, content: &str) {
        let mut inner = self.lock();
        let repository = inner.repositories.get_mut(owner_repo).expect("add_repository first");
        repository
            .files
            .insert((branch.into(), path.into()), content.as_bytes().to_vec());
    }

    pub fn file(&self, owner_repo: &str, branch: &str, path: &str) -> Option<String> {
        let inner = self.lock();
        let content = inner
            .repositories
            .get(owner_repo)?
            .files
            .get(&(branch.into(), path.into()))?;
        Some(String::from_utf8_lossy(content).into_owned())
    }

    /// `false` makes a dispatch answer 204 without the run's id even when asked for it.
    pub fn set_dispatch_returns_run_ids(&self, returns: bool) {
        self.lock().dispatch_without_run_ids = !returns;
    }

    pub fn workflow_runs(&self) -> Vec<WorkflowRun> {
        self.lock().workflow_runs.clone()
    }

    pub fn workflow_run(&self, run_id: u64) -> Option<WorkflowRun> {
        self.lock().workflow_runs.iter().find(|run| run.id == run_id).cloned()
    }

    /// Queues run `run_id` of `owner_repo` with one job `job_id`, as a push would, without a
    /// workflow file or `add_repository`: for tests about a job rather than a dispatch. The ids
    /// must be new; ids the fake picks later (dispatches, re-runs) come after them.
    pub fn add_workflow_run(&self, owner_repo: &str, run_id: u64, job_id: u64, job_name: &str, labels: &[&str]) {
        let mut inner = self.lock();
        let taken = |id: u64| {
            inner
                .workflow_runs
                .iter()
                .any(|run| run.id == id || run.jobs().any(|job| job.id == id))
        };
        assert!(
            run_id != job_id && !taken(run_id) && !taken(job_id),
            "run {run_id} or job {job_id} exists"
        );
        inner.last_workflow_id = inner.last_workflow_id.max(run_id).max(job_id);
        let labels = labels.iter().map(|l| l.to_string()).collect();
        inner
            .workflow_runs
            .push(WorkflowRun::queued(owner_repo, run_id, job_id, job_name, labels));
    }

    /// Makes run `run_id` created `age` ago, for GitHub's 30-day re-run window.
    pub fn age_workflow_run(&self, run_id: u64, age: Duration) {
        let mut inner = self.lock();
        let run = inner
            .workflow_runs
            .iter_mut()
            .find(|run| run.id == run_id)
            .unwrap_or_else(|| panic!("no workflow run {run_id}"));
        run.created_at = now_secs().saturating_sub(age.as_secs());
    }

    /// Plays a runner taking the job `after` it was queued: in progress on `runner_name`.
    pub fn start_workflow_job(&self, job_id: u64, runner_name: &str, after: Duration) {
        let mut inner = self.lock();
        let run = workflow_run_of_job(&mut inner, job_id);
        run.status = "in_progress".into();
        run.job.status = "in_progress".into();
        run.job.runner_name = Some(runner_name.into());
        run.job.started_at = run.job.created_at + after.as_secs();
    }

    /// Plays the job ending `after` it was queued, with `conclusion` (`success`, `failure`...);
    /// the run ends with it.
    pub fn complete_workflow_job(&self, job_id: u64, conclusion: &str, after: Duration) {
        let mut inner = self.lock();
        let run = workflow_run_of_job(&mut inner, job_id);
        run.status = "completed".into();
        run.conclusion = Some(conclusion.into());
        run.job.status = "completed".into();
        run.job.conclusion = Some(conclusion.into());
        run.job.completed_at = Some(run.job.created_at + after.as_secs());
    }

    /// Registers a runner directly, offline and idle, in `scope` (`org:<org>` or
    /// `repo:<owner>/<repo>`); returns its id.
    pub fn add_runner(&self, scope: &str, name: &str, labels: &[&str]) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_runner_id;
        inner.next_runner_id += 1;
        inner.runners.push(Runner {
            id,
            name: name.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            scope: scope.into(),
            status: "offline".into(),
            busy: false,
            runner_group_id: 1,
        });
        id
    }
}

/// The run whose latest attempt has job `job_id`: only that job moves.
fn workflow_run_of_job(inner: &mut Inner, job_id: u64) -> &mut WorkflowRun {
    inner
        .workflow_runs
        .iter_mut()
        .find(|run| run.job.id == job_id)
        .unwrap_or_else(|| panic!("no workflow job {job_id} in a latest attempt"))
}

impl WorkflowRun {
    /// Run `id` of `repository` as GitHub queues it: attempt 1, its one job `job_id` queued with
    /// it. A push of `ci.yml` on `main` (workflow `CI`, no inputs) unless the caller says otherwise.
    fn queued(repository: &str, id: u64, job_id: u64, job_name: &str, labels: Vec<String>) -> Self {
        let now = now_secs();
        Self {
            id,
            repository: repository.into(),
            workflow: "ci.yml".into(),
            head_branch: "main".into(),
            display_title: "CI".into(),
            name: "CI".into(),
            inputs: json!({}),
            status: "queued".into(),
            conclusion: None,
            created_at: now,
            run_attempt: 1,
            run_started_at: now,
            job: WorkflowJob::queued(job_id, id, 1, job_name.into(), labels, now),
            earlier_jobs: Vec::new(),
        }
    }

    /// Its jobs of every attempt, the latest first.
    fn jobs(&self) -> impl Iterator<Item = &WorkflowJob> {
        std::iter::once(&self.job).chain(self.earlier_jobs.iter().rev())
    }
}

/// Job `job_id` of `repository`, of any attempt, with its run.
fn find_job<'a>(inner: &'a Inner, repository: &str, job_id: u64) -> Option<(&'a WorkflowRun, &'a WorkflowJob)> {
    inner
        .workflow_runs
        .iter()
        .filter(|run| run.repository == repository)
        .find_map(|run| run.jobs().find(|job| job.id == job_id).map(|job| (run, job)))
}

impl Drop for GithubServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let latency = {
        let mut inner = shared.lock().unwrap();
        inner.requests.push(Recorded {
            method: method.to_string(),
            path: uri.path().into(),
            query: uri.query().unwrap_or_default().into(),
            body: body.clone(),
            authorization: authorization.clone(),
        });
        inner.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let stall = take_stall(&mut shared.lock().unwrap(), uri.path());
    if let Some(stall) = stall {
        tokio::time::sleep(stall).await;
    }
    let host = headers.get("host").and_then(|v| v.to_str().ok());
    let (response, outgoing) = {
        let mut inner = shared.lock().unwrap();
        if let Some(fault) = take_fault(&mut inner, uri.path()) {
            return fault;
        }
        let response = route(&mut inner, method, &uri, host, authorization.as_deref(), &body);
        let target = inner
            .webhook_target
            .as_ref()
            .map(|t| (t.url.clone(), Arc::clone(&t.sign)));
        (response, inner.outgoing.take().map(|outgoing| (outgoing, target)))
    };
    if let Some((outgoing, target)) = outgoing {
        let status_code = match target {
            Some((url, sign)) => post_delivery(&url, sign.as_ref(), &outgoing).await,
            None => 200,
        };
        let mut inner = shared.lock().unwrap();
        if let Some(delivery) = inner
            .hook_deliveries
            .iter_mut()
            .find(|d| Some(d.id) == outgoing.delivery_id)
        {
            delivery.status_code = status_code;
        }
    }
    let mut inner = shared.lock().unwrap();
    if !response.status().is_success() {
        return response;
    }
    let Some(index) = inner
        .after_faults
        .iter()
        .position(|f| uri.path().contains(&f.path_contains))
    else {
        return response;
    };
    match inner.after_faults.remove(index).then {
        AfterSuccess::Status(status) => answer(status, json!({"message": "Server Error"})),
        AfterSuccess::Lost => {
            // A body that fails on its first frame: hyper closes the connection mid-answer, so
            // the client has at most the status line and loses the rest.
            let failing = http_body_util::Limited::new(http_body_util::Full::new(Bytes::from(vec![b' '; 4096])), 1);
            let (parts, _) = response.into_parts();
            Response::from_parts(parts, Body::new(failing))
        }
    }
}

fn route(
    inner: &mut Inner,
    method: Method,
    uri: &Uri,
    host: Option<&str>,
    authorization: Option<&str>,
    body: &Value,
) -> Response {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let bearer = authorization.and_then(|a| a.strip_prefix("Bearer ").or_else(|| a.strip_prefix("token ")));
    if let (&Method::POST, ["app", "installations", id, "access_tokens"]) = (&method, segments.as_slice()) {
        return installation_token(inner, id, bearer);
    }
    let accepted =
        bearer.is_some_and(|t| inner.pat.as_deref() == Some(t) || inner.installation_tokens.iter().any(|i| i == t));
    if !accepted {
        return answer(401, json!({"message": "Bad credentials"}));
    }
    // Hook routes too, split off the same way.
    match segments.as_slice() {
        ["orgs", org, "hooks", id, rest @ ..] => {
            return hook_route(inner, method, &org_hook(org, id.parse().unwrap_or(0)), rest, uri, host);
        }
        ["repos", owner, repo, "hooks", id, rest @ ..] => {
            let hook = repo_hook(&format!("{owner}/{repo}"), id.parse().unwrap_or(0));
            return hook_route(inner, method, &hook, rest, uri, host);
        }
        _ => {}
    }
    // Runner routes exist in an org form and a repo form; split off the scope so each is written once.
    let (scope, rest) = match segments.as_slice() {
        ["orgs", org, "actions", "runners", rest @ ..] => (format!("org:{org}"), rest),
        ["repos", owner, repo, "actions", "runners", rest @ ..] => (format!("repo:{owner}/{repo}"), rest),
        ["repos", owner, repo, "actions", "jobs", id] if method == Method::GET => {
            return job(inner, &format!("{owner}/{repo}"), id);
        }
        ["repos", owner, repo, "actions", "jobs", id, "rerun"] if method == Method::POST => {
            return rerun_job(inner, &format!("{owner}/{repo}"), id);
        }
        ["repos", owner, repo, "actions", "runs", id, rest @ ..] if serves_runs(inner, &format!("{owner}/{repo}")) => {
            return run_route(inner, method, &format!("{owner}/{repo}"), id, rest, uri);
        }
        ["repos", owner, repo, rest @ ..] if inner.repositories.contains_key(&format!("{owner}/{repo}")) => {
            return repository_route(inner, method, &format!("{owner}/{repo}"), rest, uri, body);
        }
        _ => return not_found(),
    };
    match (method, rest) {
        (Method::POST, ["generate-jitconfig"]) => generate_jitconfig(inner, scope, body),
        (Method::GET, []) => list_runners(inner, &scope, uri, host),
        (Method::GET, ["downloads"]) => answer(
            200,
            inner
                .runner_downloads
                .clone()
                .unwrap_or_else(|| runner_downloads(FAKE_RUNNER_VERSION)),
        ),
        (Method::GET, [id]) => match inner
            .runners
            .iter()
            .find(|r| r.scope == scope && id == &r.id.to_string())
        {
            Some(runner) => answer(200, runner_json(runner)),
            None => not_found(),
        },
        (Method::DELETE, [id]) => {
            let Some(index) = inner
                .runners
                .iter()
                .position(|r| r.scope == scope && id == &r.id.to_string())
            else {
                return not_found();
            };
            let runner = &inner.runners[index];
            if runner.busy && !inner.busy_runners_deletable {
                // GitHub's answer, as clients log it: 422 `Bad request - Runner "x" is still running a job`.
                return answer(
                    422,
                    json!({
                        "message": format!("Bad request - Runner \"{}\" is still running a job", runner.name),
                        "documentation_url": "https://docs.github.com/rest/actions/self-hosted-runners#delete-a-self-hosted-runner-from-an-organization",
                    }),
                );
            }
            inner.runners.remove(index);
            empty(204)
        }
        _ => not_found(),
    }
}

/// The routes of a repository added with `add_repository` (`rest` follows `/repos/<owner>/<name>`).
fn repository_route(
    inner: &mut Inner,
    method: Method,
    repository: &str,
    rest: &[&str],
    uri: &Uri,
    body: &Value,
) -> Response {
    let query: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    match (method, rest) {
        (Method::GET, []) => {
            let (owner, name) = repository.split_once('/').unwrap_or((repository, ""));
            answer(
                200,
                json!({
                    "id": 1, "name": name, "full_name": repository, "private": true,
                    "owner": {"login": owner}, "default_branch": inner.repositories[repository].default_branch,
                    "html_url": format!("https://github.com/{repository}"),
                }),
            )
        }
        (Method::GET, ["contents", path @ ..]) => get_contents(inner, repository, &path.join("/"), query.get("ref")),
        (Method::PUT, ["contents", path @ ..]) => put_contents(inner, repository, &path.join("/"), body),
        (Method::POST, ["actions", "workflows", workflow, "dispatches"]) => {
            dispatch_workflow(inner, repository, workflow, body)
        }
        (Method::GET, ["actions", "workflows", workflow, "runs"]) => {
            list_workflow_runs(inner, repository, workflow, &query)
        }
        _ => not_found(),
    }
}

/// Runs are served for repositories added with `add_repository` and for those that have a run
/// (`add_workflow_run`); any other answers 404 as before.
fn serves_runs(inner: &Inner, repository: &str) -> bool {
    inner.repositories.contains_key(repository) || inner.workflow_runs.iter().any(|run| run.repository == repository)
}

/// The routes of run `id` of `repository` (`rest` follows `/actions/runs/<id>`).
fn run_route(inner: &mut Inner, method: Method, repository: &str, id: &str, rest: &[&str], uri: &Uri) -> Response {
    let Some(index) = inner
        .workflow_runs
        .iter()
        .position(|run| run.repository == repository && run.id.to_string() == id)
    else {
        return not_found();
    };
    match (method, rest) {
        (Method::GET, []) => answer(200, workflow_run_json(&inner.workflow_runs[index])),
        (Method::GET, ["jobs"]) => {
            // GitHub's `filter`: `latest` (the default) lists the latest attempt's jobs, `all` every attempt's.
            let query: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
            let run = &inner.workflow_runs[index];
            let jobs: Vec<Value> = match query.get("filter").map(String::as_str) {
                Some("all") => run.jobs().map(|job| workflow_job_json(run, job)).collect(),
                _ => vec![workflow_job_json(run, &run.job)],
            };
            answer(200, json!({"total_count": jobs.len(), "jobs": jobs}))
        }
        (Method::POST, ["cancel"]) => cancel_workflow_run(&mut inner.workflow_runs[index]),
        (Method::POST, ["rerun-failed-jobs"]) => rerun_failed_jobs(inner, index),
        _ => not_found(),
    }
}

fn get_contents(inner: &Inner, repository: &str, path: &str, git_ref: Option<&String>) -> Response {
    let repo = &inner.repositories[repository];
    let branch = git_ref.map_or(repo.default_branch.as_str(), |r| r.trim_start_matches("refs/heads/"));
    if !repo.branches.iter().any(|b| b == branch) {
        return answer(404, json!({"message": format!("No commit found for the ref {branch}")}));
    }
    let Some(content) = repo.files.get(&(branch.to_string(), path.to_string())) else {
        return not_found();
    };
    // GitHub wraps the base64 every 60 characters, so a client must skip the newlines.
    let encoded = base64_encode(content);
    let mut wrapped = String::new();
    for line in encoded.as_bytes().chunks(60) {
        wrapped.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        wrapped.push('\n');
    }
    answer(
        200,
        json!({
            "type": "file", "encoding": "base64", "size": content.len(), "path": path,
            "name": path.rsplit('/').next(), "content": wrapped, "sha": blob_sha(content),
        }),
    )
}

/// GitHub's rules: a new file needs no `sha`; replacing one needs the `sha` of the version
/// replaced (422 without it, 409 when it is not the current one).
fn put_contents(inner: &mut Inner, repository: &str, path: &str, body: &Value) -> Response {
    let invalid = |message: &str| answer(422, json!({"message": message}));
    let (Some(message), Some(encoded)) = (body["message"].as_str(), body["content"].as_str()) else {
        return invalid("Invalid request.\n\n\"message\" and \"content\" are required.");
    };
    let Some(content) = base64url_decode(encoded) else {
        return invalid("content is not valid Base64");
    };
    let repo = inner
        .repositories
        .get_mut(repository)
        .expect("routed to a known repository");
    let branch = body["branch"].as_str().unwrap_or(&repo.default_branch).to_string();
    if !repo.branches.contains(&branch) {
        return answer(404, json!({"message": format!("Branch {branch} not found")}));
    }
    let key = (branch, path.to_string());
    let created = match (repo.files.get(&key), body["sha"].as_str()) {
        (None, _) => true,
        (Some(_), None) => return invalid("Invalid request.\n\n\"sha\" wasn't supplied."),
        (Some(current), Some(sha)) if sha != blob_sha(current) => {
            return answer(409, json!({"message": format!("{path} does not match {sha}")}));
        }
        (Some(_), Some(_)) => false,
    };
    let sha = blob_sha(&content);
    repo.files.insert(key, content);
    repo.commits += 1;
    answer(
        if created { 201 } else { 200 },
        json!({
            "content": {"name": path.rsplit('/').next(), "path": path, "sha": sha},
            "commit": {"sha": blob_sha(format!("commit {}", repo.commits).as_bytes()), "message": message},
        }),
    )
}

/// Stands in for git's blob SHA-1: the same content gives the same 40 hex digits.
fn blob_sha(content: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let hash = |seed: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (seed, content).hash(&mut hasher);
        hasher.finish()
    };
    format!("{:016x}{:016x}{:08x}", hash(1), hash(2), content.len() as u32)
}

/// Checks a dispatch as GitHub does (the workflow on the ref, its `workflow_dispatch` trigger, the
/// inputs it declares) and creates a run with one queued job. Asked for `return_run_details`, it
/// answers 200 with the run's id, else 204.
fn dispatch_workflow(inner: &mut Inner, repository: &str, workflow: &str, body: &Value) -> Response {
    let repo = &inner.repositories[repository];
    let Some(git_ref) = body["ref"].as_str() else {
        return answer(422, json!({"message": "Invalid request.\n\n\"ref\" wasn't supplied."}));
    };
    let branch = git_ref.trim_start_matches("refs/heads/").to_string();
    if !repo.branches.contains(&branch) {
        return answer(422, json!({"message": format!("No ref found for: {git_ref}")}));
    }
    let path = format!(".github/workflows/{workflow}");
    let Some(file) = repo.files.get(&(branch.clone(), path.clone())) else {
        return not_found();
    };
    let text = String::from_utf8_lossy(file).into_owned();
    if !text.contains("workflow_dispatch") {
        return answer(
            422,
            json!({"message": "Workflow does not have 'workflow_dispatch' trigger"}),
        );
    }
    let inputs = body["inputs"].as_object().cloned().unwrap_or_default();
    let unexpected: Vec<&String> = inputs
        .keys()
        .filter(|key| !text.lines().any(|line| line.trim() == format!("{key}:")))
        .collect();
    if !unexpected.is_empty() {
        return answer(
            422,
            json!({"message": format!("Unexpected inputs provided: {unexpected:?}")}),
        );
    }
    let inputs = Value::Object(inputs);
    let name = top_level_value(&text, "name").unwrap_or(path);
    let display_title = top_level_value(&text, "run-name").map_or_else(|| name.clone(), |t| with_inputs(&t, &inputs));
    let (job_name, labels) = first_job(&text, &inputs);
    let (run_id, job_id) = (inner.last_workflow_id + 1, inner.last_workflow_id + 2);
    inner.last_workflow_id += 2;
    inner.workflow_runs.push(WorkflowRun {
        workflow: workflow.into(),
        head_branch: branch,
        display_title,
        name,
        inputs,
        ..WorkflowRun::queued(repository, run_id, job_id, &job_name, labels)
    });
    if body["return_run_details"].as_bool() == Some(true) && !inner.dispatch_without_run_ids {
        answer(
            200,
            json!({
                "workflow_run_id": run_id,
                "run_url": format!("https://api.github.com/repos/{repository}/actions/runs/{run_id}"),
                "html_url": format!("https://github.com/{repository}/actions/runs/{run_id}"),
            }),
        )
    } else {
        empty(204)
    }
}

/// A top-level `key: value` of a workflow file, unquoted.
fn top_level_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}:")))
        .map(|value| value.trim().trim_matches('"').to_string())
        .filter(|value| !value.is_empty())
}

/// Puts the dispatch's inputs into `${{ inputs.<name> }}` (an input not given is empty, as on GitHub).
fn with_inputs(text: &str, inputs: &Value) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        let Some(end) = rest[start..].find("}}") else { break };
        let expression = rest[start + 3..start + end].trim();
        out.push_str(&rest[..start]);
        match expression.strip_prefix("inputs.") {
            Some(name) => out.push_str(inputs[name].as_str().unwrap_or_default()),
            None => out.push_str(&rest[start..start + end + 2]),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

/// The first job's key under `jobs:` and its `runs-on` labels.
fn first_job(text: &str, inputs: &Value) -> (String, Vec<String>) {
    let name = text
        .lines()
        .skip_while(|line| line.trim_end() != "jobs:")
        .skip(1)
        .find(|line| line.starts_with("  ") && !line.starts_with("   ") && line.trim_end().ends_with(':'))
        .map_or_else(
            || "job".to_string(),
            |line| line.trim().trim_end_matches(':').to_string(),
        );
    let runs_on = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("runs-on:"))
        .map(|value| with_inputs(value.trim(), inputs))
        .unwrap_or_default();
    let labels = runs_on
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(|label| label.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .filter(|label| !label.is_empty())
        .collect();
    (name, labels)
}

/// Newest first, filtered by `branch` and `event` as GitHub does, in pages of `per_page`.
fn list_workflow_runs(inner: &Inner, repository: &str, workflow: &str, query: &HashMap<String, String>) -> Response {
    let number = |key: &str| query.get(key).and_then(|v| v.parse::<usize>().ok());
    let per_page = number("per_page").unwrap_or(30).clamp(1, 100);
    let page = number("page").unwrap_or(1).max(1);
    let matching: Vec<&WorkflowRun> = inner
        .workflow_runs
        .iter()
        .rev()
        .filter(|run| run.repository == repository && run.workflow == workflow)
        .filter(|run| query.get("branch").is_none_or(|b| &run.head_branch == b))
        .filter(|_| query.get("event").is_none_or(|e| e == "workflow_dispatch"))
        .collect();
    let runs: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|run| workflow_run_json(run))
        .collect();
    answer(200, json!({"total_count": matching.len(), "workflow_runs": runs}))
}

fn cancel_workflow_run(run: &mut WorkflowRun) -> Response {
    if run.status == "completed" {
        return answer(
            409,
            json!({"message": "Cannot cancel a workflow run that is completed."}),
        );
    }
    let now = now_secs();
    run.status = "completed".into();
    run.conclusion = Some("cancelled".into());
    run.job.status = "completed".into();
    run.job.conclusion = Some("cancelled".into());
    run.job.completed_at = Some(now);
    answer(202, json!({}))
}

fn workflow_run_json(run: &WorkflowRun) -> Value {
    let repository = &run.repository;
    let previous_attempt_url = (run.run_attempt > 1).then(|| {
        format!(
            "https://api.github.com/repos/{repository}/actions/runs/{}/attempts/{}",
            run.id,
            run.run_attempt - 1
        )
    });
    json!({
        "id": run.id, "name": run.name, "display_title": run.display_title, "event": "workflow_dispatch",
        "status": run.status, "conclusion": run.conclusion, "head_branch": run.head_branch,
        "head_sha": "0000000000000000000000000000000000000000",
        "path": format!(".github/workflows/{}", run.workflow), "workflow_id": 1,
        "run_number": run.id, "run_attempt": run.run_attempt, "previous_attempt_url": previous_attempt_url,
        "created_at": rfc3339(run.created_at), "run_started_at": rfc3339(run.run_started_at),
        "updated_at": rfc3339(now_secs()),
        "url": format!("https://api.github.com/repos/{repository}/actions/runs/{}", run.id),
        "jobs_url": format!("https://api.github.com/repos/{repository}/actions/runs/{}/jobs", run.id),
        "html_url": format!("https://github.com/{repository}/actions/runs/{}", run.id),
    })
}

fn workflow_job_json(run: &WorkflowRun, job: &WorkflowJob) -> Value {
    let repository = &run.repository;
    json!({
        "id": job.id, "run_id": run.id, "run_attempt": job.run_attempt, "status": job.status,
        "conclusion": job.conclusion,
        "name": job.name, "workflow_name": run.name, "head_branch": run.head_branch,
        "head_sha": "0000000000000000000000000000000000000000", "node_id": format!("CR_{}", job.id),
        "labels": job.labels, "runner_id": null, "runner_name": job.runner_name,
        "runner_group_id": null, "runner_group_name": null,
        "created_at": rfc3339(job.created_at), "started_at": rfc3339(job.started_at),
        "completed_at": job.completed_at.map(rfc3339), "steps": [],
        "url": format!("https://api.github.com/repos/{repository}/actions/jobs/{}", job.id),
        "run_url": format!("https://api.github.com/repos/{repository}/actions/runs/{}", run.id),
        "check_run_url": format!("https://api.github.com/repos/{repository}/check-runs/{}", job.id),
        "html_url": format!("https://github.com/{repository}/actions/runs/{}/job/{}", run.id, job.id),
    })
}

/// How long after its creation GitHub re-runs a run, and how many re-runs it makes of one
/// ("Re-running workflows and jobs": "up to 30 days after its initial run", "A workflow run can be
/// re-run a maximum of 50 times. This limit includes both full re-runs and re-runs of a subset of jobs").
const RERUN_WINDOW: Duration = Duration::from_secs(30 * 86_400);
const MAX_RERUNS: u32 = 50;

/// GitHub's 403, with the endpoint's documentation as GitHub links it.
fn forbidden(message: &str, documentation_url: &str) -> Response {
    answer(
        403,
        json!({"message": message, "documentation_url": documentation_url, "status": "403"}),
    )
}

/// GitHub's refusal to re-run `run` now, if it refuses. `running` is its message for a run that
/// has not completed, which differs between endpoints.
fn rerun_refusal(run: &WorkflowRun, running: &str, documentation_url: &str) -> Option<Response> {
    if now_secs().saturating_sub(run.created_at) > RERUN_WINDOW.as_secs() {
        // As clients quote GitHub's answer to an old run (cf. cli/cli#9989).
        let message = "Unable to retry this workflow run because it was created over a month ago";
        return Some(forbidden(message, documentation_url));
    }
    if run.status != "completed" {
        return Some(forbidden(running, documentation_url));
    }
    if run.run_attempt > MAX_RERUNS {
        // GitHub's wording for this one is not known; the rule is documented.
        let message = format!("This workflow run has been re-run the maximum of {MAX_RERUNS} times");
        return Some(forbidden(&message, documentation_url));
    }
    None
}

const RERUN_JOB_DOCS: &str = "https://docs.github.com/rest/actions/workflow-runs#re-run-a-job-from-a-workflow-run";
const RERUN_FAILED_DOCS: &str =
    "https://docs.github.com/rest/actions/workflow-runs#re-run-failed-jobs-from-a-workflow-run";

/// `POST .../actions/jobs/<id>/rerun`: only a job of its run's latest attempt, once the run has
/// completed; the answer is 201 `{}` and the run's next attempt is queued.
fn rerun_job(inner: &mut Inner, repository: &str, id: &str) -> Response {
    let Some((run, job)) = id.parse().ok().and_then(|id| find_job(inner, repository, id)) else {
        return not_found();
    };
    // GitHub's message while the run is queued or in progress (apache/tvm#12847, and the check
    // for it in apache/tvm#12295).
    let running = "The workflow run containing this job is already running";
    if let Some(refusal) = rerun_refusal(run, running, RERUN_JOB_DOCS) {
        return refusal;
    }
    if job.id != run.job.id {
        // The fake's wording: GitHub re-runs jobs of the latest attempt only.
        let message = format!(
            "Job {} is of attempt {} of this workflow run; only jobs of its latest attempt ({}) can be re-run",
            job.id, job.run_attempt, run.run_attempt
        );
        return forbidden(&message, RERUN_JOB_DOCS);
    }
    let run_id = run.id;
    new_attempt(inner, run_id);
    answer(201, json!({}))
}

/// `POST .../actions/runs/<id>/rerun-failed-jobs`: the same rules, for a run whose job failed,
/// was cancelled or timed out.
fn rerun_failed_jobs(inner: &mut Inner, index: usize) -> Response {
    let run = &inner.workflow_runs[index];
    // GitHub's message while the run is queued or in progress (metabase/metabase#70916).
    if let Some(refusal) = rerun_refusal(run, "This workflow is already running", RERUN_FAILED_DOCS) {
        return refusal;
    }
    let failed = matches!(
        run.job.conclusion.as_deref(),
        Some("failure" | "cancelled" | "timed_out")
    );
    if !failed {
        // The fake's wording: there is nothing to re-run.
        return forbidden("This workflow run has no failed jobs to re-run", RERUN_FAILED_DOCS);
    }
    let run_id = run.id;
    new_attempt(inner, run_id);
    answer(201, json!({}))
}

/// Starts run `run_id`'s next attempt: queued, its job replaced by a new one (a new id, the same
/// name and labels), and a `workflow_job` `queued` delivery of it owed to the webhook, recorded
/// for the repository's hook, else its organisation's, when the test added one.
fn new_attempt(inner: &mut Inner, run_id: u64) {
    inner.last_workflow_id += 1;
    let job_id = inner.last_workflow_id;
    let now = now_secs();
    let run = inner
        .workflow_runs
        .iter_mut()
        .find(|run| run.id == run_id)
        .expect("a run being re-run exists");
    run.run_attempt += 1;
    run.run_started_at = now;
    run.status = "queued".into();
    run.conclusion = None;
    let job = WorkflowJob::queued(
        job_id,
        run_id,
        run.run_attempt,
        run.job.name.clone(),
        run.job.labels.clone(),
        now,
    );
    let earlier = std::mem::replace(&mut run.job, job);
    run.earlier_jobs.push(earlier);
    let payload = queued_delivery(run);
    let owner = run.repository.split('/').next().unwrap_or_default();
    let hook = inner
        .hooks
        .iter()
        .find(|hook| hook.starts_with(&format!("repo:{}/", run.repository)))
        .or_else(|| {
            inner
                .hooks
                .iter()
                .find(|hook| hook.starts_with(&format!("org:{owner}/")))
        })
        .cloned();
    let guid = format!("00000000-0000-4000-8000-{job_id:012x}");
    let delivery_id = hook.as_ref().map(|hook| {
        let id = inner.hook_deliveries.last().map_or(1, |d| d.id + 1);
        inner.hook_deliveries.push(HookDelivery {
            id,
            hook: hook.clone(),
            guid: guid.clone(),
            event: "workflow_job".into(),
            action: Some("queued".into()),
            status_code: 0,
            redelivery: false,
            delivered_at: now,
            payload: payload.clone(),
        });
        id
    });
    inner.outgoing = Some(Outgoing {
        delivery_id,
        event: "workflow_job".into(),
        guid,
        hook_id: hook
            .as_deref()
            .and_then(|hook| hook.rsplit('/').next())
            .unwrap_or("0")
            .into(),
        payload: payload.to_string().into_bytes(),
    });
}

/// GitHub's `workflow_job` `queued` delivery of `run`'s job: its documented example with the
/// fake's job and repository put in (a private repository, as `GET /repos/<owner>/<name>` says).
fn queued_delivery(run: &WorkflowRun) -> Value {
    let mut payload = crate::fixture("workflow_job.queued");
    payload["workflow_job"] = workflow_job_json(run, &run.job);
    let (owner, name) = run.repository.split_once('/').unwrap_or((&run.repository, ""));
    let repository = &mut payload["repository"];
    repository["full_name"] = json!(run.repository);
    repository["name"] = json!(name);
    repository["owner"]["login"] = json!(owner);
    repository["private"] = json!(true);
    repository["visibility"] = json!("private");
    repository["url"] = json!(format!("https://api.github.com/repos/{}", run.repository));
    repository["html_url"] = json!(format!("https://github.com/{}", run.repository));
    payload
}

/// `rest` follows `.../hooks/<id>`.
fn hook_route(inner: &mut Inner, method: Method, hook: &str, rest: &[&str], uri: &Uri, host: Option<&str>) -> Response {
    if !inner.hooks.iter().any(|h| h == hook) {
        return not_found();
    }
    match (method, rest) {
        (Method::GET, ["deliveries"]) => list_hook_deliveries(inner, hook, uri, host),
        (Method::POST, ["deliveries", id, "attempts"]) => {
            let Some(original) = inner
                .hook_deliveries
                .iter()
                .find(|d| d.hook == hook && id == &d.id.to_string())
                .cloned()
            else {
                return not_found();
            };
            let delivery_id = inner.hook_deliveries.last().map_or(1, |d| d.id + 1);
            inner.hook_deliveries.push(HookDelivery {
                id: delivery_id,
                redelivery: true,
                status_code: 0,
                delivered_at: now_secs(),
                ..original.clone()
            });
            inner.outgoing = Some(Outgoing {
                delivery_id: Some(delivery_id),
                event: original.event,
                guid: original.guid,
                hook_id: hook.rsplit('/').next().unwrap_or_default().into(),
                payload: original.payload.to_string().into_bytes(),
            });
            answer(202, json!({}))
        }
        _ => not_found(),
    }
}

/// Newest first; the cursor `v1_<id>` starts a page at delivery `<id>`.
fn list_hook_deliveries(inner: &Inner, hook: &str, uri: &Uri, host: Option<&str>) -> Response {
    let query: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let per_page = query
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let start = match query.get("cursor") {
        None => u64::MAX,
        Some(cursor) => match cursor.strip_prefix("v1_").and_then(|id| id.parse().ok()) {
            Some(id) => id,
            None => return answer(400, json!({"message": "Invalid cursor"})),
        },
    };
    let mut matching = inner
        .hook_deliveries
        .iter()
        .rev()
        .filter(|d| d.hook == hook && d.id <= start);
    let page: Vec<Value> = matching
        .by_ref()
        .take(per_page)
        .map(|d| {
            json!({
                "id": d.id, "guid": d.guid, "delivered_at": rfc3339(d.delivered_at), "redelivery": d.redelivery,
                "duration": 0.05, "status": if (200..300).contains(&d.status_code) { "OK" } else { "failed" },
                "status_code": d.status_code, "event": d.event, "action": d.action,
                "installation_id": null, "repository_id": null, "throttled_at": null,
            })
        })
        .collect();
    let mut response = answer(200, Value::Array(page));
    if let Some(next) = matching.next() {
        let link = format!(
            "<http://{}{}?per_page={per_page}&cursor=v1_{}>; rel=\"next\"",
            host.unwrap_or("127.0.0.1"),
            uri.path(),
            next.id
        );
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

/// POSTs a redelivery as GitHub does; the status the webhook answered, 0 when none came.
async fn post_delivery(url: &str, sign: &Signer, outgoing: &Outgoing) -> u16 {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, http_body_util::Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = axum::http::Request::post(url)
        .header("content-type", "application/json")
        .header("user-agent", "GitHub-Hookshot/fake")
        .header("x-github-event", &outgoing.event)
        .header("x-github-delivery", &outgoing.guid)
        .header("x-github-hook-id", &outgoing.hook_id)
        .header("x-hub-signature-256", sign(&outgoing.payload))
        .body(http_body_util::Full::new(Bytes::from(outgoing.payload.clone())));
    let Ok(request) = request else { return 0 };
    // GitHub gives a webhook 10 seconds.
    match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
        Ok(Ok(response)) => response.status().as_u16(),
        _ => 0,
    }
}

fn take_stall(inner: &mut Inner, path: &str) -> Option<Duration> {
    let index = inner
        .stalls
        .iter()
        .position(|s| s.remaining > 0 && path.contains(&s.path_contains))?;
    let stall = &mut inner.stalls[index];
    stall.remaining -= 1;
    let duration = stall.duration;
    if stall.remaining == 0 {
        inner.stalls.remove(index);
    }
    Some(duration)
}

fn take_fault(inner: &mut Inner, path: &str) -> Option<Response> {
    let index = inner
        .faults
        .iter()
        .position(|f| f.remaining > 0 && path.contains(&f.path_contains))?;
    let fault = &mut inner.faults[index];
    fault.remaining -= 1;
    let mut response = if fault.body.is_null() {
        empty(fault.status)
    } else {
        answer(fault.status, fault.body.clone())
    };
    response.headers_mut().extend(fault.headers.clone());
    if fault.remaining == 0 {
        inner.faults.remove(index);
    }
    Some(response)
}

fn installation_token(inner: &mut Inner, installation: &str, jwt: Option<&str>) -> Response {
    let Some((app_id, installation_id)) = inner.app else {
        return answer(401, json!({"message": "Bad credentials"}));
    };
    // Only the claims are read: the signature is not checked, since the fake has no key pair and
    // the point is that the client built the JWT for the right App, not that its RSA code works.
    let issuer = jwt
        .and_then(|jwt| jwt.split('.').nth(1))
        .and_then(base64url_decode)
        .and_then(|payload| serde_json::from_slice::<Value>(&payload).ok())
        .and_then(|claims| match &claims["iss"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        });
    if issuer != Some(app_id) {
        return answer(401, json!({"message": "A JSON web token could not be decoded"}));
    }
    // GitHub answers 404 for an installation the App does not have.
    if installation != installation_id.to_string() {
        return not_found();
    }
    let token = format!("ghs_fake_{}", inner.installation_tokens.len() + 1);
    inner.installation_tokens.push(token.clone());
    answer(
        201,
        json!({
            "token": token,
            "expires_at": rfc3339(now_secs() + 3600),
            "permissions": {},
            "repository_selection": "all",
        }),
    )
}

/// A job of a run answers with everything GitHub says of it; a job known only by its status
/// (`set_job_status`, `set_default_job_status`) with that status and made-up rest.
fn job(inner: &Inner, owner_repo: &str, id: &str) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return not_found();
    };
    if let Some((run, job)) = find_job(inner, owner_repo, id) {
        return answer(200, workflow_job_json(run, job));
    }
    let status = inner
        .jobs
        .get(&(owner_repo.to_string(), id))
        .or(inner.default_job_status.as_ref());
    let Some(status) = status else {
        return not_found();
    };
    let now = rfc3339(now_secs());
    // Beyond the fields sophons reads, octocrab's `Job` model requires these, so they are filled.
    answer(
        200,
        json!({
            "id": id, "run_id": 1, "run_attempt": 1, "status": status, "conclusion": null,
            "name": "job", "workflow_name": "CI", "head_branch": "main",
            "head_sha": "0000000000000000000000000000000000000000", "node_id": format!("FJ_{id}"),
            "labels": [], "runner_id": null, "runner_name": null,
            "runner_group_id": null, "runner_group_name": null,
            "created_at": now, "started_at": now, "completed_at": null, "steps": [],
            "url": format!("https://api.github.com/repos/{owner_repo}/actions/jobs/{id}"),
            "run_url": format!("https://api.github.com/repos/{owner_repo}/actions/runs/1"),
            "check_run_url": format!("https://api.github.com/repos/{owner_repo}/check-runs/{id}"),
            "html_url": format!("https://github.com/{owner_repo}/actions/runs/1/job/{id}"),
        }),
    )
}

fn generate_jitconfig(inner: &mut Inner, scope: String, body: &Value) -> Response {
    let name = body["name"].as_str().unwrap_or_default();
    let labels: Option<Vec<String>> = body["labels"]
        .as_array()
        .and_then(|labels| labels.iter().map(|l| l.as_str().map(String::from)).collect());
    let invalid = |message: &str| answer(422, json!({"message": message}));
    if name.is_empty() {
        return invalid("Invalid request: \"name\" is required and must not be empty.");
    }
    let Some(runner_group_id) = body["runner_group_id"].as_u64() else {
        return invalid("Invalid request: \"runner_group_id\" is required.");
    };
    let Some(labels) = labels.filter(|l| (1..=100).contains(&l.len())) else {
        return invalid("Invalid request: \"labels\" must have between 1 and 100 strings.");
    };
    if inner.runners.iter().any(|r| r.scope == scope && r.name == name) {
        return answer(
            409,
            json!({"message": format!("Already exists - A runner with the name {name} already exists.")}),
        );
    }
    let runner = Runner {
        id: inner.next_runner_id,
        name: name.into(),
        labels,
        scope,
        status: "offline".into(),
        busy: false,
        runner_group_id,
    };
    inner.next_runner_id += 1;
    inner.jit_calls += 1;
    let encoded = jit_config(&runner, inner.jit_calls, inner.short_jit_configs);
    let answer_body = json!({"runner": runner_json(&runner), "encoded_jit_config": encoded});
    inner.runners.push(runner);
    answer(201, answer_body)
}

/// Opaque like the real one, but starting `fakejit-<runner id>-<serial>-` so a test can tell which
/// runner it is for. GitHub's is base64 of a document that holds the runner's name and labels
/// (themselves base64 inside it), so it grows by about two characters for each of theirs.
fn jit_config(runner: &Runner, serial: u64, short: bool) -> String {
    let prefix = format!("fakejit-{}-{serial}", runner.id);
    if short {
        return prefix;
    }
    let grows_with = runner.name.len() + runner.labels.iter().map(|l| l.len() + 3).sum::<usize>();
    let size = (JIT_CONFIG_BASE_SIZE + 2 * grows_with).min(JIT_CONFIG_MAX_SIZE);
    let document = json!({"name": runner.name, "labels": runner.labels, "id": runner.id}).to_string();
    let filler = base64_encode(document.as_bytes());
    let mut encoded = format!("{prefix}-");
    while encoded.len() < size {
        encoded.push_str(&filler);
    }
    encoded.truncate(size);
    encoded
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    while !out.len().is_multiple_of(4) {
        out.push('=');
    }
    out
}

fn list_runners(inner: &Inner, scope: &str, uri: &Uri, host: Option<&str>) -> Response {
    let query: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let number = |key: &str| query.get(key).and_then(|v| v.parse::<usize>().ok());
    let per_page = number("per_page").unwrap_or(30).clamp(1, 100);
    let page = number("page").unwrap_or(1).max(1);
    let name = query.get("name");
    let matching: Vec<&Runner> = inner
        .runners
        .iter()
        .filter(|r| r.scope == scope && name.is_none_or(|n| &r.name == n))
        .collect();
    let runners: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| runner_json(r))
        .collect();
    let mut response = answer(200, json!({"total_count": matching.len(), "runners": runners}));
    // Clients that page by following `Link` (octocrab's `Page`) need it, as GitHub sends it:
    // `next` and `last` while there are more pages, `prev` and `first` after the first.
    let last = matching.len().div_ceil(per_page).max(1);
    let name = name.map(|n| format!("&name={n}")).unwrap_or_default();
    let url = |page: usize| {
        format!(
            "<http://{}{}?per_page={per_page}&page={page}{name}>",
            host.unwrap_or("127.0.0.1"),
            uri.path()
        )
    };
    let mut links = Vec::new();
    if page < last {
        links.push(format!("{}; rel=\"next\"", url(page + 1)));
        links.push(format!("{}; rel=\"last\"", url(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", url(page - 1)));
        links.push(format!("{}; rel=\"first\"", url(1)));
    }
    if !links.is_empty() {
        response.headers_mut().insert("link", links.join(", ").parse().unwrap());
    }
    response
}

fn runner_json(runner: &Runner) -> Value {
    let labels: Vec<Value> = runner
        .labels
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"id": i + 1, "name": name, "type": "custom"}))
        .collect();
    json!({
        "id": runner.id, "name": runner.name, "os": "linux", "status": runner.status,
        "busy": runner.busy, "runner_group_id": runner.runner_group_id, "labels": labels,
    })
}

fn answer(status: u16, body: Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn empty(status: u16) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    response
}

fn not_found() -> Response {
    answer(404, json!({"message": "Not Found"}))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// UTC seconds since the epoch as RFC 3339 (no date crate in testkit; days-to-civil from
/// Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Decodes base64url (padding optional), as used by JWT segments.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let (mut bits, mut count, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A minimal HTTP/1.1 client: one request per connection, the answer read until close.
    async fn exchange(method: &str, url: &str, auth: Option<&str>, body: Option<Value>) -> (u16, String, Value) {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Accept: application/vnd.github+json\r\n\
             User-Agent: testkit\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        (
            status,
            head.to_lowercase(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    /// The status, if it arrived, and the body read until the connection closed.
    async fn lossy_exchange(method: &str, url: &str, auth: Option<&str>, body: Option<Value>) -> (Option<u16>, String) {
        let rest = url.strip_prefix("http://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let raw = String::from_utf8_lossy(&raw);
        let status = raw.get(9..12).and_then(|s| s.parse().ok());
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    async fn http(method: &str, url: &str, auth: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let (status, _, body) = exchange(method, url, auth, body).await;
        (status, body)
    }

    const PAT: Option<&str> = Some("Bearer ghp_test");

    async fn started() -> GithubServer {
        let github = GithubServer::start().await;
        github.set_token("ghp_test");
        github
    }

    fn jit(name: &str, labels: &[&str]) -> Option<Value> {
        Some(json!({"name": name, "runner_group_id": 1, "labels": labels, "work_folder": "_work"}))
    }

    #[tokio::test]
    async fn request_without_accepted_token_is_refused() {
        let github = started().await;
        let url = format!("{}/repos/o/r/actions/jobs/1", github.url());
        let (status, body) = http("GET", &url, None, None).await;
        assert_eq!((status, body["message"].as_str()), (401, Some("Bad credentials")));
        assert_eq!(http("GET", &url, Some("Bearer wrong"), None).await.0, 401);
        let unknown = format!("{}/nowhere", github.url());
        assert_eq!(http("GET", &unknown, Some("token ghp_test"), None).await.0, 404);
        assert_eq!(github.requests().len(), 3);
    }

    #[tokio::test]
    async fn jit_runner_is_created_once_per_name_and_scope() {
        let github = started().await;
        let org = format!("{}/orgs/acme/actions/runners/generate-jitconfig", github.url());
        let repo = format!("{}/repos/acme/app/actions/runners/generate-jitconfig", github.url());
        let (status, body) = http("POST", &org, PAT, jit("r-1", &["sophons", "cpu"])).await;
        assert_eq!(status, 201);
        assert_eq!(body["runner"]["id"], 1000);
        assert_eq!(body["runner"]["labels"][1]["name"], "cpu");
        assert!(body["encoded_jit_config"].as_str().unwrap().contains("1000"));
        // The same name in another scope is a different runner.
        let (status, body) = http("POST", &repo, PAT, jit("r-1", &["sophons"])).await;
        assert_eq!((status, body["runner"]["id"].as_u64()), (201, Some(1001)));
        let (status, body) = http("POST", &org, PAT, jit("r-1", &["sophons"])).await;
        assert_eq!(status, 409);
        assert!(body["message"].as_str().unwrap().starts_with("Already exists"));
        let scopes: Vec<String> = github.runners().into_iter().map(|r| r.scope).collect();
        assert_eq!(scopes, ["org:acme", "repo:acme/app"]);
        assert_eq!(github.requests_to("POST", "/generate-jitconfig").len(), 3);
    }

    #[tokio::test]
    async fn jit_request_without_labels_is_unprocessable() {
        let github = started().await;
        let org = format!("{}/orgs/acme/actions/runners/generate-jitconfig", github.url());
        assert_eq!(http("POST", &org, PAT, jit("r-1", &[])).await.0, 422);
        let too_many: Vec<String> = (0..101).map(|i| format!("l{i}")).collect();
        let body = json!({"name": "r-1", "runner_group_id": 1, "labels": too_many});
        assert_eq!(http("POST", &org, PAT, Some(body)).await.0, 422);
        let no_group = json!({"name": "r-1", "labels": ["x"]});
        assert_eq!(http("POST", &org, PAT, Some(no_group)).await.0, 422);
        assert!(github.runners().is_empty());
    }

    #[tokio::test]
    async fn runners_are_listed_by_page_and_deleted_in_their_scope() {
        let github = started().await;
        let base = format!("{}/orgs/acme/actions/runners", github.url());
        for i in 0..3 {
            let url = format!("{base}/generate-jitconfig");
            assert_eq!(http("POST", &url, PAT, jit(&format!("r-{i}"), &["x"])).await.0, 201);
        }
        github.set_runner_status(1001, "online", true);
        let (status, head, body) = exchange("GET", &format!("{base}?per_page=2&page=2"), PAT, None).await;
        assert_eq!((status, body["total_count"].as_u64()), (200, Some(3)));
        assert_eq!(body["runners"][0]["name"], "r-2");
        assert!(!head.contains("rel=\"next\""));
        let (_, head, _) = exchange("GET", &format!("{base}?per_page=2"), PAT, None).await;
        assert!(head.contains("page=2>; rel=\"next\""));
        let (_, body) = http("GET", &format!("{base}?name=r-1"), PAT, None).await;
        assert_eq!(body["runners"][0]["status"], "online");
        assert_eq!(body["runners"][0]["busy"], true);
        let other_scope = format!("{}/repos/acme/app/actions/runners/1001", github.url());
        assert_eq!(http("DELETE", &other_scope, PAT, None).await.0, 404);
        github.set_runner_status(1001, "offline", false);
        assert_eq!(http("DELETE", &format!("{base}/1001"), PAT, None).await.0, 204);
        assert_eq!(http("DELETE", &format!("{base}/1001"), PAT, None).await.0, 404);
        assert_eq!(github.runners().len(), 2);
        github.remove_all_runners();
        assert_eq!(http("GET", &base, PAT, None).await.1["total_count"], 0);
    }

    #[tokio::test]
    async fn jit_configs_are_larger_than_a_standard_parameter_and_grow_with_name_and_labels() {
        let github = started().await;
        let url = format!("{}/orgs/acme/actions/runners/generate-jitconfig", github.url());
        let (_, short) = http("POST", &url, PAT, jit("r", &["x"])).await;
        let short = short["encoded_jit_config"].as_str().unwrap().to_string();
        assert!(short.starts_with("fakejit-1000-1-"), "{}", &short[..20]);
        assert!((4_097..=JIT_CONFIG_MAX_SIZE).contains(&short.len()), "{}", short.len());
        let labels: Vec<String> = (0..10).map(|i| format!("label-{i}")).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let name = "sophons-production-i-0123456789abcdef0";
        let (_, long) = http("POST", &url, PAT, jit(name, &labels)).await;
        let long = long["encoded_jit_config"].as_str().unwrap();
        assert!(long.len() > short.len() + 100, "{} vs {}", long.len(), short.len());
        let many: Vec<String> = (0..100).map(|i| format!("a-rather-long-label-{i}")).collect();
        let body = json!({"name": "r-many", "runner_group_id": 1, "labels": many});
        let (_, capped) = http("POST", &url, PAT, Some(body)).await;
        assert_eq!(
            capped["encoded_jit_config"].as_str().unwrap().len(),
            JIT_CONFIG_MAX_SIZE
        );
        github.set_short_jit_configs(true);
        let (_, compact) = http("POST", &url, PAT, jit("r-short", &["x"])).await;
        assert_eq!(compact["encoded_jit_config"], "fakejit-1003-4");
    }

    #[tokio::test]
    async fn a_registration_carried_out_then_failed_meets_its_own_name_on_retry() {
        let github = started().await;
        let url = format!("{}/orgs/acme/actions/runners/generate-jitconfig", github.url());
        github.fail_after_success_next("generate-jitconfig", 502);
        let (status, _) = http("POST", &url, PAT, jit("r-1", &["x"])).await;
        assert_eq!(status, 502);
        assert_eq!(github.runners().len(), 1, "the failed answer hid a registration");
        let (status, body) = http("POST", &url, PAT, jit("r-1", &["x"])).await;
        assert_eq!(status, 409);
        assert_eq!(
            body["message"],
            "Already exists - A runner with the name r-1 already exists."
        );
        // The fault was used up; other names register as usual.
        assert_eq!(http("POST", &url, PAT, jit("r-2", &["x"])).await.0, 201);
    }

    #[tokio::test]
    async fn a_lost_answer_arrives_without_its_body_after_the_work_is_done() {
        let github = started().await;
        let url = format!("{}/orgs/acme/actions/runners/generate-jitconfig", github.url());
        // A failing request does not use up the fault: it waits for one that succeeds.
        github.lose_answer_after_success_next("generate-jitconfig");
        assert_eq!(http("POST", &url, PAT, jit("r-1", &[])).await.0, 422);
        let (status, body) = lossy_exchange("POST", &url, PAT, jit("r-1", &["x"])).await;
        assert!(status.is_none_or(|s| s == 201), "{status:?}");
        assert_eq!(body, "", "the body never arrives");
        assert_eq!(github.runners().len(), 1);
    }

    #[tokio::test]
    async fn deleting_a_busy_runner_is_refused_until_its_job_ends() {
        let github = started().await;
        let base = format!("{}/orgs/acme/actions/runners", github.url());
        let url = format!("{base}/generate-jitconfig");
        assert_eq!(http("POST", &url, PAT, jit("r-1", &["x"])).await.0, 201);
        assert_eq!(http("POST", &url, PAT, jit("r-2", &["x"])).await.0, 201);
        github.set_runner_status(1000, "online", true);
        let (status, body) = http("DELETE", &format!("{base}/1000"), PAT, None).await;
        assert_eq!(status, 422);
        assert_eq!(body["message"], "Bad request - Runner \"r-1\" is still running a job");
        github.runner_finished(1000);
        assert_eq!(http("DELETE", &format!("{base}/1000"), PAT, None).await.0, 404);
        github.set_runner_status(1001, "online", true);
        github.set_busy_runners_deletable(true);
        assert_eq!(http("DELETE", &format!("{base}/1001"), PAT, None).await.0, 204);
        assert!(github.runners().is_empty());
    }

    #[tokio::test]
    async fn runner_lists_default_to_30_a_page_at_most_100_with_links_both_ways() {
        let github = started().await;
        let base = format!("{}/orgs/acme/actions/runners", github.url());
        for i in 0..205 {
            let url = format!("{base}/generate-jitconfig");
            assert_eq!(http("POST", &url, PAT, jit(&format!("r-{i}"), &["x"])).await.0, 201);
        }
        let (_, head, body) = exchange("GET", &base, PAT, None).await;
        assert_eq!(body["runners"].as_array().unwrap().len(), 30);
        assert_eq!(body["total_count"], 205);
        assert!(head.contains("per_page=30&page=2>; rel=\"next\""), "{head}");
        assert!(head.contains("per_page=30&page=7>; rel=\"last\""), "{head}");
        let (_, head, body) = exchange("GET", &format!("{base}?per_page=500&page=2"), PAT, None).await;
        assert_eq!(body["runners"].as_array().unwrap().len(), 100);
        assert_eq!(body["runners"][0]["name"], "r-100");
        assert!(head.contains("page=3>; rel=\"next\""), "{head}");
        assert!(head.contains("page=1>; rel=\"prev\""), "{head}");
        let (_, head, body) = exchange("GET", &format!("{base}?per_page=100&page=3"), PAT, None).await;
        assert_eq!(body["runners"].as_array().unwrap().len(), 5);
        assert!(!head.contains("rel=\"next\""), "{head}");
    }

    #[tokio::test]
    async fn a_secondary_rate_limit_answers_with_retry_after() {
        let github = started().await;
        github.set_job_status("acme/app", 7, "queued");
        github.secondary_rate_limit_next("/actions/jobs/", 1, 429, Some(60));
        github.secondary_rate_limit_next("/actions/jobs/", 1, 403, None);
        let url = format!("{}/repos/acme/app/actions/jobs/7", github.url());
        let (status, head, body) = exchange("GET", &url, PAT, None).await;
        assert_eq!(status, 429);
        assert!(head.contains("retry-after: 60"), "{head}");
        assert!(body["message"].as_str().unwrap().contains("secondary rate limit"));
        let (status, head, _) = exchange("GET", &url, PAT, None).await;
        assert_eq!(status, 403);
        assert!(!head.contains("retry-after"), "{head}");
        assert_eq!(http("GET", &url, PAT, None).await.0, 200);
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"\xff\xfe\xfd\xfc"), "//79/A==");
    }

    #[tokio::test]
    async fn job_status_is_known_set_or_defaulted() {
        let github = started().await;
        github.set_job_status("acme/app", 7, "in_progress");
        let job = |id: u64| format!("{}/repos/acme/app/actions/jobs/{id}", github.url());
        let (status, body) = http("GET", &job(7), PAT, None).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("in_progress")));
        assert_eq!(body["id"], 7);
        assert_eq!(http("GET", &job(8), PAT, None).await.0, 404);
        github.set_default_job_status(Some("queued"));
        assert_eq!(http("GET", &job(8), PAT, None).await.1["status"], "queued");
    }

    #[tokio::test]
    async fn fail_next_answers_the_fault_then_recovers() {
        let github = started().await;
        github.set_job_status("acme/app", 7, "queued");
        let headers = vec![
            ("x-ratelimit-remaining".to_string(), "0".to_string()),
            ("x-ratelimit-reset".to_string(), "1700000000".to_string()),
        ];
        let limited = json!({"message": "API rate limit exceeded"});
        github.fail_next("/actions/jobs/", 2, 403, headers, limited);
        let url = format!("{}/repos/acme/app/actions/jobs/7", github.url());
        for _ in 0..2 {
            let (status, head, body) = exchange("GET", &url, PAT, None).await;
            assert_eq!(
                (status, body["message"].as_str()),
                (403, Some("API rate limit exceeded"))
            );
            assert!(head.contains("x-ratelimit-remaining: 0"));
        }
        assert_eq!(http("GET", &url, PAT, None).await.0, 200);
        assert_eq!(github.requests_to("GET", "/jobs/7").len(), 3);
    }

    #[tokio::test]
    async fn app_jwt_is_exchanged_for_an_installation_token() {
        let github = GithubServer::start().await;
        github.set_app(42, 99);
        let url = format!("{}/app/installations/99/access_tokens", github.url());
        // Header {"alg":"RS256","typ":"JWT"}; payloads {"iat":..,"exp":..,"iss":42} (number),
        // the same with "iss":"42" (string), and with "iss":7 (another App).
        let header = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";
        let jwt = |payload: &str| format!("Bearer {header}.{payload}.c2ln");
        let number = jwt("eyJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMCwiaXNzIjo0Mn0");
        let string = jwt("eyJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMCwiaXNzIjoiNDIifQ");
        let other = jwt("eyJpYXQiOjE3MDAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMCwiaXNzIjo3fQ");
        assert_eq!(http("POST", &url, Some(&other), None).await.0, 401);
        assert_eq!(http("POST", &url, None, None).await.0, 401);
        let (status, body) = http("POST", &url, Some(&number), None).await;
        assert_eq!((status, body["token"].as_str()), (201, Some("ghs_fake_1")));
        assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
        assert_eq!(http("POST", &url, Some(&string), None).await.1["token"], "ghs_fake_2");
        let jobs = format!("{}/repos/acme/app/actions/jobs/1", github.url());
        github.set_default_job_status(Some("queued"));
        assert_eq!(http("GET", &jobs, Some("Bearer ghs_fake_1"), None).await.0, 200);
        assert_eq!(http("GET", &jobs, Some(&number), None).await.0, 401);
    }

    const WORKFLOW: &str = "name: smoke\nrun-name: smoke ${{ inputs.template }} ${{ inputs.nonce }}\n\
        on:\n  workflow_dispatch:\n    inputs:\n      template:\n        required: true\n      nonce:\n\
        jobs:\n  check:\n    runs-on: [self-hosted, \"${{ inputs.template }}\"]\n    steps:\n      - run: uname -a\n";

    fn put(content: &str, sha: Option<&str>, branch: Option<&str>) -> Option<Value> {
        let mut body = json!({"message": "add", "content": base64_encode(content.as_bytes())});
        if let Some(sha) = sha {
            body["sha"] = json!(sha);
        }
        if let Some(branch) = branch {
            body["branch"] = json!(branch);
        }
        Some(body)
    }

    #[tokio::test]
    async fn a_repository_serves_its_default_branch_and_files_written_with_the_sha_rules() {
        let github = started().await;
        github.add_repository("acme/app", "trunk");
        github.add_branch("acme/app", "next");
        let (status, body) = http("GET", &format!("{}/repos/acme/app", github.url()), PAT, None).await;
        assert_eq!((status, body["default_branch"].as_str()), (200, Some("trunk")));
        // Repositories never added answer as before.
        assert_eq!(
            http("GET", &format!("{}/repos/acme/other", github.url()), PAT, None)
                .await
                .0,
            404
        );
        let file = format!("{}/repos/acme/app/contents/.github/workflows/w.yml", github.url());
        assert_eq!(http("GET", &file, PAT, None).await.0, 404);
        let (status, created) = http("PUT", &file, PAT, put("one", None, None)).await;
        assert_eq!(status, 201);
        let first_sha = created["content"]["sha"].as_str().unwrap().to_string();
        assert_eq!(first_sha.len(), 40);
        let long = "x".repeat(100);
        assert_eq!(
            http("PUT", &file, PAT, put(&long, None, None)).await.0,
            422,
            "replacing needs the sha"
        );
        let (status, body) = http("PUT", &file, PAT, put(&long, Some("0".repeat(40).as_str()), None)).await;
        assert_eq!(status, 409, "{body}");
        let (status, replaced) = http("PUT", &file, PAT, put(&long, Some(&first_sha), None)).await;
        assert_eq!(status, 200);
        let (status, read) = http("GET", &file, PAT, None).await;
        assert_eq!((status, read["encoding"].as_str()), (200, Some("base64")));
        assert_eq!(read["sha"], replaced["content"]["sha"]);
        let content = read["content"].as_str().unwrap();
        assert!(
            content.lines().all(|line| line.len() <= 60) && content.lines().count() == 3,
            "{content}"
        );
        assert_eq!(github.file("acme/app", "trunk", ".github/workflows/w.yml"), Some(long));
        // Another branch is another file; an unknown branch is refused.
        assert_eq!(http("GET", &format!("{file}?ref=next"), PAT, None).await.0, 404);
        assert_eq!(http("PUT", &file, PAT, put("two", None, Some("next"))).await.0, 201);
        assert_eq!(
            github.file("acme/app", "next", ".github/workflows/w.yml").as_deref(),
            Some("two")
        );
        assert_eq!(http("PUT", &file, PAT, put("two", None, Some("gone"))).await.0, 404);
        assert_eq!(http("GET", &format!("{file}?ref=gone"), PAT, None).await.0, 404);
    }

    #[tokio::test]
    async fn a_dispatch_checks_the_workflow_and_queues_a_run_with_its_inputs_put_in() {
        let github = started().await;
        github.add_repository("acme/app", "main");
        let url = format!("{}/repos/acme/app/actions/workflows/w.yml/dispatches", github.url());
        let dispatch = |inputs: Value| Some(json!({"ref": "main", "inputs": inputs, "return_run_details": true}));
        let inputs = json!({"template": "cpu", "nonce": "n1"});
        assert_eq!(
            http("POST", &url, PAT, dispatch(inputs.clone())).await.0,
            404,
            "no workflow file"
        );
        github.set_file("acme/app", "main", ".github/workflows/w.yml", "on: push\n");
        let (status, body) = http("POST", &url, PAT, dispatch(inputs.clone())).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (422, Some("Workflow does not have 'workflow_dispatch' trigger"))
        );
        github.set_file("acme/app", "main", ".github/workflows/w.yml", WORKFLOW);
        let (status, body) = http("POST", &url, PAT, dispatch(json!({"templat": "cpu"}))).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (422, Some("Unexpected inputs provided: [\"templat\"]"))
        );
        let wrong_ref = Some(json!({"ref": "nowhere", "inputs": inputs}));
        assert_eq!(http("POST", &url, PAT, wrong_ref).await.0, 422);
        assert!(github.workflow_runs().is_empty());

        let (status, body) = http("POST", &url, PAT, dispatch(inputs.clone())).await;
        assert_eq!(status, 200);
        let run = &github.workflow_runs()[0];
        assert_eq!(body["workflow_run_id"], run.id);
        assert_eq!(
            (run.display_title.as_str(), run.name.as_str()),
            ("smoke cpu n1", "smoke")
        );
        assert_eq!(
            (run.job.name.as_str(), run.job.labels.clone()),
            ("check", vec!["self-hosted".to_string(), "cpu".into()])
        );
        assert_eq!((run.status.as_str(), run.job.status.as_str()), ("queued", "queued"));
        // Not asked for the details, or not offering them (before 2026-02 and on GHES): 204.
        let plain = Some(json!({"ref": "refs/heads/main", "inputs": {"template": "gpu"}}));
        let (status, _, _) = exchange("POST", &url, PAT, plain).await;
        assert_eq!(status, 204);
        github.set_dispatch_returns_run_ids(false);
        let (status, _, _) = exchange("POST", &url, PAT, dispatch(inputs)).await;
        assert_eq!(status, 204);

        let runs = format!("{}/repos/acme/app/actions/workflows/w.yml/runs", github.url());
        let (status, body) = http(
            "GET",
            &format!("{runs}?event=workflow_dispatch&branch=main&per_page=2"),
            PAT,
            None,
        )
        .await;
        assert_eq!((status, body["total_count"].as_u64()), (200, Some(3)));
        let titles: Vec<&str> = body["workflow_runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["display_title"].as_str().unwrap())
            .collect();
        assert_eq!(titles, ["smoke cpu n1", "smoke gpu "], "newest first");
        assert_eq!(
            http("GET", &format!("{runs}?branch=other"), PAT, None).await.1["total_count"],
            0
        );
        assert_eq!(
            http("GET", &format!("{runs}?event=push"), PAT, None).await.1["total_count"],
            0
        );
    }

    #[tokio::test]
    async fn a_workflow_job_goes_from_queued_to_in_progress_to_completed_or_is_cancelled() {
        let github = started().await;
        github.add_repository("acme/app", "main");
        github.set_file("acme/app", "main", ".github/workflows/w.yml", WORKFLOW);
        let url = format!("{}/repos/acme/app/actions/workflows/w.yml/dispatches", github.url());
        for _ in 0..2 {
            let dispatch = Some(json!({"ref": "main", "inputs": {"template": "cpu"}}));
            assert_eq!(exchange("POST", &url, PAT, dispatch).await.0, 204);
        }
        let [first, second] = <[WorkflowRun; 2]>::try_from(github.workflow_runs()).unwrap();
        let jobs = |run: u64| format!("{}/repos/acme/app/actions/runs/{run}/jobs", github.url());
        let (status, body) = http("GET", &jobs(first.id), PAT, None).await;
        let job = &body["jobs"][0];
        assert_eq!(
            (status, job["id"].as_u64(), job["status"].as_str()),
            (200, Some(first.job.id), Some("queued"))
        );
        assert_eq!(
            job["started_at"], job["created_at"],
            "GitHub reports a queued job as started when created"
        );
        assert_eq!(job["runner_name"], Value::Null);
        github.start_workflow_job(first.job.id, "sophons-i-0abc", Duration::from_secs(40));
        let job = http("GET", &jobs(first.id), PAT, None).await.1["jobs"][0].clone();
        assert_eq!(
            (job["status"].as_str(), job["runner_name"].as_str()),
            (Some("in_progress"), Some("sophons-i-0abc"))
        );
        assert_eq!(job["started_at"], rfc3339(first.created_at + 40));
        github.complete_workflow_job(first.job.id, "failure", Duration::from_secs(70));
        let job = http("GET", &jobs(first.id), PAT, None).await.1["jobs"][0].clone();
        assert_eq!(
            (job["status"].as_str(), job["conclusion"].as_str()),
            (Some("completed"), Some("failure"))
        );
        assert_eq!(job["completed_at"], rfc3339(first.created_at + 70));
        let run = http(
            "GET",
            &format!("{}/repos/acme/app/actions/runs/{}", github.url(), first.id),
            PAT,
            None,
        )
        .await
        .1;
        assert_eq!(
            (run["status"].as_str(), run["conclusion"].as_str()),
            (Some("completed"), Some("failure"))
        );

        let cancel = |run: u64| format!("{}/repos/acme/app/actions/runs/{run}/cancel", github.url());
        assert_eq!(
            http("POST", &cancel(first.id), PAT, None).await.0,
            409,
            "a completed run"
        );
        assert_eq!(http("POST", &cancel(second.id), PAT, None).await.0, 202);
        let second = &github.workflow_runs()[1];
        assert_eq!(
            (second.job.status.as_str(), second.job.conclusion.as_deref()),
            ("completed", Some("cancelled"))
        );
        assert_eq!(http("GET", &jobs(99), PAT, None).await.0, 404);
    }

    #[tokio::test]
    async fn a_runner_added_directly_is_listed_in_its_scope_only() {
        let github = started().await;
        let id = github.add_runner("repo:acme/app", "sophons-i-0abc", &["self-hosted", "cpu"]);
        github.set_runner_status(id, "online", false);
        let (_, body) = http(
            "GET",
            &format!("{}/repos/acme/app/actions/runners", github.url()),
            PAT,
            None,
        )
        .await;
        assert_eq!(
            (body["runners"][0]["id"].as_u64(), body["runners"][0]["status"].as_str()),
            (Some(id), Some("online"))
        );
        assert_eq!(body["runners"][0]["labels"][1]["name"], "cpu");
        assert_eq!(
            http("GET", &format!("{}/orgs/acme/actions/runners", github.url()), PAT, None)
                .await
                .1["total_count"],
            0
        );
    }

    /// Run 10 of acme/app with job 11, added directly (no repository, no dispatch).
    async fn with_a_run() -> GithubServer {
        let github = started().await;
        github.add_workflow_run("acme/app", 10, 11, "build", &["self-hosted", "cpu"]);
        github
    }

    fn rerun_url(github: &GithubServer, job_id: u64) -> String {
        format!("{}/repos/acme/app/actions/jobs/{job_id}/rerun", github.url())
    }

    fn job_url(github: &GithubServer, job_id: u64) -> String {
        format!("{}/repos/acme/app/actions/jobs/{job_id}", github.url())
    }

    #[tokio::test]
    async fn a_run_added_directly_serves_its_job_in_githubs_full_shape() {
        let github = with_a_run().await;
        let (status, job) = http("GET", &job_url(&github, 11), PAT, None).await;
        assert_eq!(status, 200);
        assert_eq!(
            (job["id"].as_u64(), job["run_id"].as_u64(), job["run_attempt"].as_u64()),
            (Some(11), Some(10), Some(1))
        );
        assert_eq!(
            (job["name"].as_str(), job["status"].as_str()),
            (Some("build"), Some("queued"))
        );
        assert_eq!(job["labels"], json!(["self-hosted", "cpu"]));
        assert_eq!((&job["conclusion"], &job["runner_name"]), (&Value::Null, &Value::Null));
        assert_eq!(job["started_at"], job["created_at"]);
        github.start_workflow_job(11, "sophons-i-0abc", Duration::from_secs(5));
        github.complete_workflow_job(11, "success", Duration::from_secs(9));
        let job = http("GET", &job_url(&github, 11), PAT, None).await.1;
        assert_eq!(
            (job["runner_name"].as_str(), job["conclusion"].as_str()),
            (Some("sophons-i-0abc"), Some("success"))
        );
        let run = http(
            "GET",
            &format!("{}/repos/acme/app/actions/runs/10", github.url()),
            PAT,
            None,
        )
        .await
        .1;
        assert_eq!(
            (
                run["status"].as_str(),
                run["conclusion"].as_str(),
                run["run_attempt"].as_u64()
            ),
            (Some("completed"), Some("success"), Some(1)),
            "the run ends with its one job"
        );
        assert_eq!(run["previous_attempt_url"], Value::Null);
        // The repository itself was never added, and a job known by its status only answers as before.
        assert_eq!(
            http("GET", &format!("{}/repos/acme/app", github.url()), PAT, None)
                .await
                .0,
            404
        );
        github.set_job_status("acme/app", 12, "in_progress");
        let (status, job) = http("GET", &job_url(&github, 12), PAT, None).await;
        assert_eq!(
            (status, job["status"].as_str(), job["run_id"].as_u64()),
            (200, Some("in_progress"), Some(1))
        );
    }

    #[tokio::test]
    async fn a_job_rerun_is_refused_while_its_run_is_in_progress() {
        let github = with_a_run().await;
        let (status, body) = http("POST", &rerun_url(&github, 11), PAT, None).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (403, Some("The workflow run containing this job is already running")),
            "a queued run"
        );
        github.start_workflow_job(11, "sophons-i-0abc", Duration::from_secs(5));
        assert_eq!(
            http("POST", &rerun_url(&github, 11), PAT, None).await.0,
            403,
            "a run in progress"
        );
        let run = github.workflow_run(10).unwrap();
        assert_eq!((run.run_attempt, run.job.id, run.earlier_jobs.len()), (1, 11, 0));
        assert_eq!(github.requests_to("POST", "/actions/jobs/11/rerun").len(), 2);
    }

    #[tokio::test]
    async fn a_job_rerun_makes_a_new_attempt_with_a_new_job_id() {
        let github = with_a_run().await;
        github.start_workflow_job(11, "sophons-i-0abc", Duration::from_secs(5));
        github.complete_workflow_job(11, "failure", Duration::from_secs(9));
        let (status, body) = http("POST", &rerun_url(&github, 11), PAT, None).await;
        assert_eq!((status, body), (201, json!({})));
        let run = github.workflow_run(10).unwrap();
        assert_eq!(
            (run.run_attempt, run.status.as_str(), run.conclusion.as_deref()),
            (2, "queued", None)
        );
        let new = &run.job;
        assert!(new.id > 11, "a new id: {}", new.id);
        assert_eq!(
            (
                new.name.as_str(),
                new.labels.clone(),
                new.status.as_str(),
                new.run_attempt
            ),
            ("build", vec!["self-hosted".to_string(), "cpu".into()], "queued", 2)
        );
        assert_eq!((new.runner_name.as_deref(), new.conclusion.as_deref()), (None, None));
        // The first attempt's job is still there, as it ended.
        let old = http("GET", &job_url(&github, 11), PAT, None).await.1;
        assert_eq!(
            (
                old["run_attempt"].as_u64(),
                old["status"].as_str(),
                old["conclusion"].as_str()
            ),
            (Some(1), Some("completed"), Some("failure"))
        );
        let fresh = http("GET", &job_url(&github, new.id), PAT, None).await.1;
        assert_eq!(
            (fresh["run_attempt"].as_u64(), fresh["status"].as_str()),
            (Some(2), Some("queued"))
        );
        let jobs = format!("{}/repos/acme/app/actions/runs/10/jobs", github.url());
        let latest = http("GET", &jobs, PAT, None).await.1;
        assert_eq!(
            (latest["total_count"].as_u64(), latest["jobs"][0]["id"].as_u64()),
            (Some(1), Some(new.id))
        );
        let all = http("GET", &format!("{jobs}?filter=all"), PAT, None).await.1;
        assert_eq!(all["total_count"], 2);
        let run_json = http(
            "GET",
            &format!("{}/repos/acme/app/actions/runs/10", github.url()),
            PAT,
            None,
        )
        .await
        .1;
        assert_eq!(
            (run_json["run_attempt"].as_u64(), run_json["status"].as_str()),
            (Some(2), Some("queued"))
        );
        assert!(
            run_json["previous_attempt_url"]
                .as_str()
                .unwrap()
                .ends_with("/runs/10/attempts/1")
        );
        // The new attempt runs like the first; its job is the one a runner takes.
        github.start_workflow_job(new.id, "sophons-i-0def", Duration::from_secs(3));
        assert_eq!(github.workflow_run(10).unwrap().status, "in_progress");
    }

    #[tokio::test]
    async fn a_job_of_an_older_attempt_is_not_rerun() {
        let github = with_a_run().await;
        github.complete_workflow_job(11, "cancelled", Duration::from_secs(9));
        assert_eq!(http("POST", &rerun_url(&github, 11), PAT, None).await.0, 201);
        let second = github.workflow_run(10).unwrap().job.id;
        github.complete_workflow_job(second, "failure", Duration::from_secs(9));
        let (status, body) = http("POST", &rerun_url(&github, 11), PAT, None).await;
        assert_eq!(status, 403);
        assert!(body["message"].as_str().unwrap().contains("latest attempt"), "{body}");
        assert_eq!(github.workflow_run(10).unwrap().run_attempt, 2);
        assert_eq!(http("POST", &rerun_url(&github, second), PAT, None).await.0, 201);
        assert_eq!(github.workflow_run(10).unwrap().run_attempt, 3);
    }

    #[tokio::test]
    async fn a_rerun_of_an_unknown_job_is_not_found() {
        let github = with_a_run().await;
        github.complete_workflow_job(11, "failure", Duration::from_secs(9));
        assert_eq!(http("POST", &rerun_url(&github, 99), PAT, None).await.0, 404);
        let other_repository = format!("{}/repos/acme/other/actions/jobs/11/rerun", github.url());
        assert_eq!(http("POST", &other_repository, PAT, None).await.0, 404);
        github.set_job_status("acme/app", 12, "completed");
        assert_eq!(
            http("POST", &rerun_url(&github, 12), PAT, None).await.0,
            404,
            "a job known by its status only has no run to re-run"
        );
        assert_eq!(github.workflow_run(10).unwrap().run_attempt, 1);
    }

    #[tokio::test]
    async fn a_run_is_not_rerun_past_30_days_or_after_50_reruns() {
        let github = with_a_run().await;
        github.complete_workflow_job(11, "failure", Duration::from_secs(9));
        github.age_workflow_run(10, Duration::from_secs(31 * 86_400));
        let (status, body) = http("POST", &rerun_url(&github, 11), PAT, None).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (
                403,
                Some("Unable to retry this workflow run because it was created over a month ago")
            )
        );
        github.age_workflow_run(10, Duration::from_secs(29 * 86_400));
        for attempt in 2..=51 {
            let job = github.workflow_run(10).unwrap().job.id;
            assert_eq!(
                http("POST", &rerun_url(&github, job), PAT, None).await.0,
                201,
                "attempt {attempt}"
            );
            github.complete_workflow_job(github.workflow_run(10).unwrap().job.id, "failure", Duration::ZERO);
        }
        let run = github.workflow_run(10).unwrap();
        assert_eq!((run.run_attempt, run.earlier_jobs.len()), (51, 50));
        let (status, body) = http("POST", &rerun_url(&github, run.job.id), PAT, None).await;
        assert_eq!(status, 403, "a 51st re-run");
        assert!(body["message"].as_str().unwrap().contains("50"), "{body}");
    }

    #[tokio::test]
    async fn rerun_failed_jobs_waits_for_the_run_and_reruns_only_a_failed_job() {
        let github = with_a_run().await;
        let url = format!("{}/repos/acme/app/actions/runs/10/rerun-failed-jobs", github.url());
        let (status, body) = http("POST", &url, PAT, None).await;
        assert_eq!(
            (status, body["message"].as_str()),
            (403, Some("This workflow is already running"))
        );
        github.complete_workflow_job(11, "success", Duration::from_secs(9));
        assert_eq!(http("POST", &url, PAT, None).await.0, 403, "nothing failed");
        assert_eq!(github.workflow_run(10).unwrap().run_attempt, 1);
        let missing = format!("{}/repos/acme/app/actions/runs/99/rerun-failed-jobs", github.url());
        assert_eq!(http("POST", &missing, PAT, None).await.0, 404);

        github.add_workflow_run("acme/app", 20, 21, "build", &["self-hosted"]);
        github.complete_workflow_job(21, "timed_out", Duration::from_secs(9));
        let url = format!("{}/repos/acme/app/actions/runs/20/rerun-failed-jobs", github.url());
        assert_eq!(http("POST", &url, PAT, None).await, (201, json!({})));
        let run = github.workflow_run(20).unwrap();
        assert_eq!((run.run_attempt, run.job.status.as_str()), (2, "queued"));
        assert_ne!(run.job.id, 21);
    }

    /// A webhook URL that answers 202 and hands over each delivery's headers (lower-cased) and body.
    async fn webhook_listener() -> (String, tokio::sync::mpsc::UnboundedReceiver<(String, Value)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut raw = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, body) = loop {
                    let read = stream.read(&mut chunk).await.unwrap();
                    raw.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        if body.len() >= length {
                            break (head.to_ascii_lowercase(), body.to_string());
                        }
                    }
                };
                let answer = "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                stream.write_all(answer.as_bytes()).await.unwrap();
                let _ = sender.send((head, serde_json::from_str(&body).unwrap_or(Value::Null)));
            }
        });
        (url, receiver)
    }

    #[tokio::test]
    async fn a_job_rerun_delivers_a_signed_queued_webhook_for_the_new_job() {
        let github = with_a_run().await;
        let hook = org_hook("acme", 7);
        github.add_hook(&hook);
        let (url, mut deliveries) = webhook_listener().await;
        github.set_webhook_target(&url, |body| format!("sha256=signed-{}", body.len()));
        github.complete_workflow_job(11, "failure", Duration::from_secs(9));
        assert_eq!(http("POST", &rerun_url(&github, 11), PAT, None).await.0, 201);
        let (head, payload) = deliveries.try_recv().expect("delivered before the 201");
        let new = github.workflow_run(10).unwrap().job;
        assert!(head.contains("x-github-event: workflow_job"), "{head}");
        assert!(head.contains("x-github-hook-id: 7"), "{head}");
        let body_length = payload.to_string().len();
        assert!(
            head.contains(&format!("x-hub-signature-256: sha256=signed-{body_length}")),
            "{head}"
        );
        assert_eq!(payload["action"], "queued");
        let job = &payload["workflow_job"];
        assert_eq!(
            (job["id"].as_u64(), job["run_id"].as_u64(), job["run_attempt"].as_u64()),
            (Some(new.id), Some(10), Some(2))
        );
        assert_eq!(
            (job["name"].as_str(), &job["labels"]),
            (Some("build"), &json!(["self-hosted", "cpu"]))
        );
        assert!(job["created_at"].as_str().unwrap().ends_with('Z'));
        let repository = &payload["repository"];
        assert_eq!(
            (
                repository["full_name"].as_str(),
                repository["name"].as_str(),
                repository["owner"]["login"].as_str()
            ),
            (Some("acme/app"), Some("app"), Some("acme"))
        );
        assert_eq!(repository["private"], true);
        let recorded = github.hook_deliveries(&hook);
        assert_eq!(recorded.len(), 1);
        assert_eq!(
            (
                recorded[0].event.as_str(),
                recorded[0].action.as_deref(),
                recorded[0].status_code
            ),
            ("workflow_job", Some("queued"), 202)
        );
        assert!(
            head.contains(&format!("x-github-delivery: {}", recorded[0].guid)),
            "{head}"
        );
        // A refused re-run delivers nothing.
        assert_eq!(http("POST", &rerun_url(&github, new.id), PAT, None).await.0, 403);
        assert!(deliveries.try_recv().is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
