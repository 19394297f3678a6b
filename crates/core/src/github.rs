//! GitHub: is a job still queued, register a just-in-time runner, list and remove runners, list a
//! webhook's deliveries and redeliver one, read a job and its workflow run and re-run the job.
//! The adapter is octocrab, with a PAT or a GitHub App installation (octocrab mints the JWT,
//! exchanges it for an installation token and refreshes that before it expires).
//!
//! The adapter retries itself rather than through octocrab, because a retried registration must
//! know that it is one: octocrab's retry resends the generate-jitconfig POST after a 5xx or a lost
//! answer, and when the first attempt had registered the runner the retry meets 409 for our own
//! name. Here, a 409 after an unanswered attempt of ours removes that runner and registers again.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use octocrab::Octocrab;
use octocrab::service::middleware::retry::RetryConfig;
use serde::Deserialize;

use crate::config::{GithubConfig, Scope};
use crate::parameters::Parameters;

/// Where a runner registers: the organisation, or the job's repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerScope {
    Org(String),
    Repo(String),
}

impl RunnerScope {
    /// The scope for a job of `repository` (`owner/name`) under this configuration.
    pub fn for_job(github: &GithubConfig, repository: &str) -> Self {
        match github.scope {
            Scope::Org => Self::Org(github.owner.clone()),
            Scope::Repo => Self::Repo(repository.to_string()),
        }
    }

    fn path(&self) -> String {
        match self {
            Self::Org(org) => format!("/orgs/{org}/actions/runners"),
            Self::Repo(repository) => format!("/repos/{repository}/actions/runners"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    /// Anything else GitHub reports (`in_progress`, `completed`, `waiting`, ...).
    Other(String),
}

/// A JIT config: opaque and secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct JitConfig {
    pub runner_id: u64,
    pub encoded: String,
}

impl fmt::Debug for JitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JitConfig")
            .field("runner_id", &self.runner_id)
            .field("encoded", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    /// `online` or `offline`.
    pub status: String,
    pub busy: bool,
}

/// One runner package GitHub offers for download (`GET .../actions/runners/downloads`): the
/// current release, one entry per os and architecture.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct RunnerDownload {
    pub os: String,
    pub architecture: String,
    pub download_url: String,
    pub filename: String,
    #[serde(default)]
    pub sha256_checksum: Option<String>,
}

/// A workflow job as GitHub reports it (`GET /repos/{owner}/{repo}/actions/jobs/{job_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobDetails {
    pub id: u64,
    pub run_id: u64,
    /// 1 when GitHub leaves it out.
    #[serde(default = "first_attempt")]
    pub run_attempt: u32,
    pub name: String,
    /// queued, in_progress, completed, waiting, ...
    pub status: String,
    /// success, failure, cancelled, skipped, ... once completed.
    pub conclusion: Option<String>,
    pub runner_name: Option<String>,
    /// RFC 3339, as GitHub wrote it.
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

/// A workflow run (`GET /repos/{owner}/{repo}/actions/runs/{run_id}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunDetails {
    pub id: u64,
    #[serde(default = "first_attempt")]
    pub run_attempt: u32,
    pub status: String,
    pub conclusion: Option<String>,
}

fn first_attempt() -> u32 {
    1
}

/// A webhook GitHub delivers to us: the organisation's hook, or one repository's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Org {
        org: String,
        hook_id: u64,
    },
    /// `repository` is `owner/name`.
    Repo {
        repository: String,
        hook_id: u64,
    },
}

impl Hook {
    /// The hook the config names (`github.webhook_id`, `github.webhook_repository`); `None` when
    /// no `webhook_id` is set, which turns redelivery off.
    pub fn from_config(github: &GithubConfig) -> Option<Self> {
        let hook_id = github.webhook_id?;
        Some(match &github.webhook_repository {
            Some(repository) => Self::Repo {
                repository: repository.clone(),
                hook_id,
            },
            None => Self::Org {
                org: github.owner.clone(),
                hook_id,
            },
        })
    }

    fn path(&self) -> String {
        match self {
            Self::Org { org, hook_id } => format!("/orgs/{org}/hooks/{hook_id}"),
            Self::Repo { repository, hook_id } => format!("/repos/{repository}/hooks/{hook_id}"),
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Org { org, hook_id } => write!(f, "hook {hook_id} of organisation {org}"),
            Self::Repo { repository, hook_id } => write!(f, "hook {hook_id} of repository {repository}"),
        }
    }
}

/// One delivery of a hook, as GitHub lists it ("List deliveries for an organization webhook",
/// <https://docs.github.com/en/rest/orgs/webhooks#list-deliveries-for-an-organization-webhook>, and
/// its repository twin, <https://docs.github.com/en/rest/repos/webhooks#list-deliveries-for-a-repository-webhook>).
/// GitHub lists more fields (`duration`, `status`, `installation_id`, `repository_id`,
/// `throttled_at`); these are the ones redelivery reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct HookDelivery {
    /// This delivery attempt; what a redelivery names.
    pub id: u64,
    /// The event, shared by every delivery of it: the `X-GitHub-Delivery` header, our `delivery_id`.
    pub guid: String,
    /// RFC 3339.
    pub delivered_at: String,
    /// Whether GitHub sent it because someone asked for a redelivery.
    pub redelivery: bool,
    /// Our answer's HTTP status; GitHub records a delivery that got no answer (timeout,
    /// connection refused) with a status that is not 2xx, so only 2xx counts as delivered.
    #[serde(default)]
    pub status_code: u16,
    /// `X-GitHub-Event`, e.g. `workflow_job`.
    pub event: String,
    /// The payload's `action` (`queued`...), when the event has one.
    #[serde(default)]
    pub action: Option<String>,
}

impl HookDelivery {
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.status_code)
    }
}

/// One page of a hook's deliveries, newest first, and the cursor of the next (GitHub gives it in
/// the `Link` header's `rel="next"`; none on the last page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveriesPage {
    pub deliveries: Vec<HookDelivery>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GithubError {
    #[error("GitHub has no such {0}")]
    NotFound(String),
    #[error("GitHub refused: {0}")]
    Conflict(String),
    #[error("GitHub rate limit reached: {0}")]
    RateLimited(String),
    #[error("GitHub refused the credentials: {0}. Check the token's scopes or the App's permissions")]
    Unauthorized(String),
    #[error("GitHub rejected the request: {0}")]
    Rejected(String),
    /// GitHub's 422 to deleting a runner that is running a job. GitHub removes a JIT runner
    /// itself when its one job ends, so this is not lost: try again later, or leave it.
    #[error(
        "GitHub refused to remove a runner that is running a job: {0}. GitHub removes a JIT runner itself when its job ends"
    )]
    Busy(String),
    #[error("GitHub is unreachable or failing: {0}")]
    Unavailable(String),
}

impl GithubError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited(_) | Self::Unavailable(_))
    }
}

#[async_trait]
pub trait Github: Send + Sync {
    async fn job_status(&self, repository: &str, job_id: u64) -> Result<JobStatus, GithubError>;
    async fn register_runner(
        &self,
        scope: &RunnerScope,
        name: &str,
        labels: &[String],
        runner_group_id: u64,
    ) -> Result<JitConfig, GithubError>;
    async fn runners(&self, scope: &RunnerScope) -> Result<Vec<Runner>, GithubError>;
    /// Removes a runner; one already gone is not an error, one running a job is `Busy`.
    async fn remove_runner(&self, scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError>;
    /// The runner packages GitHub offers now (its current release), for the scope.
    async fn runner_downloads(&self, scope: &RunnerScope) -> Result<Vec<RunnerDownload>, GithubError>;
    /// One page (up to 100) of `hook`'s deliveries, newest first, from `cursor` (`None`: the
    /// newest). GitHub keeps 3 days of them.
    async fn hook_deliveries(&self, hook: &Hook, cursor: Option<&str>) -> Result<DeliveriesPage, GithubError> {
        let _ = cursor;
        Err(not_supported(&format!("listing the deliveries of {hook}")))
    }
    /// Asks GitHub to deliver delivery `delivery_id` of `hook` again (GitHub's 202: it will, with
    /// the same `guid` and `redelivery: true`). One attempt, never retried here: a retry after a
    /// lost answer could make GitHub redeliver twice.
    async fn redeliver(&self, hook: &Hook, delivery_id: u64) -> Result<(), GithubError> {
        Err(not_supported(&format!("redelivering delivery {delivery_id} of {hook}")))
    }
    /// Job `job_id` of `repository` (`owner/name`), of whichever attempt of its run it belongs to.
    async fn job(&self, repository: &str, job_id: u64) -> Result<JobDetails, GithubError> {
        Err(not_supported(&format!("reading job {job_id} of {repository}")))
    }
    /// Workflow run `run_id` of `repository`, as of its latest attempt.
    async fn workflow_run(&self, repository: &str, run_id: u64) -> Result<RunDetails, GithubError> {
        Err(not_supported(&format!("reading workflow run {run_id} of {repository}")))
    }
    /// The jobs of a run's latest attempt
    /// (`GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs?filter=latest`, every page).
    async fn run_jobs(&self, repository: &str, run_id: u64) -> Result<Vec<JobDetails>, GithubError> {
        Err(not_supported(&format!(
            "listing the jobs of run {run_id} of {repository}"
        )))
    }
    /// `POST /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun`: a new attempt of the run with
    /// this job (and the jobs that need it), whose jobs get new ids. One attempt, never retried
    /// here: a retry after a lost answer could re-run twice. GitHub refuses (403, here
    /// `Conflict` with its message) while the run has not completed, more than 30 days after its
    /// initial run, and after 50 re-runs.
    async fn rerun_job(&self, repository: &str, job_id: u64) -> Result<(), GithubError> {
        Err(not_supported(&format!("re-running job {job_id} of {repository}")))
    }
}

/// The most pages of a run's jobs read (100 a page; a matrix has at most 256 jobs).
const MOST_JOB_PAGES: u32 = 5;

/// What the hook methods answer in an adapter that does not implement them.
fn not_supported(what: &str) -> GithubError {
    GithubError::Rejected(format!("{what} is not supported by this GitHub adapter"))
}

/// The real adapter.
#[derive(Clone)]
pub struct OctocrabGithub {
    client: Octocrab,
    credential: Credential,
}

/// Which kind of credential the adapter holds, to name the permission a refusal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    App,
    Token,
}

impl Credential {
    /// What a re-run needs of this credential (GitHub's "Re-run a job from a workflow run").
    fn rerun_permission(self) -> &'static str {
        match self {
            Self::App => "the GitHub App needs the `Actions: write` repository permission",
            Self::Token => {
                "the token needs the `repo` scope (classic) or the `Actions: write` permission (fine-grained)"
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GithubSetupError {
    #[error("cannot read the GitHub credential: {0}")]
    Secret(#[from] crate::parameters::ParametersError),
    #[error("github.api_url `{0}` is not a usable URL")]
    ApiUrl(String),
    #[error("the GitHub App private key in `{0}` is not an RSA key in PEM form: {1}")]
    AppKey(String, String),
    #[error("cannot build the GitHub client: {0}")]
    Client(String),
}

impl OctocrabGithub {
    /// Reads the credential the config names (once per cold start) and builds the client.
    pub async fn connect(github: &GithubConfig, parameters: &dyn Parameters) -> Result<Self, GithubSetupError> {
        let builder = Octocrab::builder()
            // The adapter retries itself (see the module's comment).
            .add_retry_config(RetryConfig::None)
            .base_uri(github.api_url.as_str())
            .map_err(|_| GithubSetupError::ApiUrl(github.api_url.clone()))?
            .set_connect_timeout(Some(Duration::from_secs(5)))
            .set_read_timeout(Some(Duration::from_secs(10)));
        let (client, credential) = match (&github.token_param, &github.app) {
            (_, Some(app)) => {
                let pem = parameters.get(&app.private_key_param).await?;
                let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| GithubSetupError::AppKey(app.private_key_param.clone(), e.to_string()))?;
                let client = builder
                    .app(app.app_id.into(), key)
                    .build()
                    .and_then(|client| client.installation(app.installation_id.into()))
                    .map_err(|e| GithubSetupError::Client(e.to_string()))?;
                (client, Credential::App)
            }
            (Some(token_param), None) => {
                let token = parameters.get(token_param).await?;
                let client = builder
                    .personal_token(token)
                    .build()
                    .map_err(|e| GithubSetupError::Client(e.to_string()))?;
                (client, Credential::Token)
            }
            (None, None) => return Err(GithubSetupError::Client("the config names no credential".into())),
        };
        Ok(Self { client, credential })
    }
}

/// Attempts per call: GitHub's 5xx and dropped connections are usually gone on the next one.
const ATTEMPTS: u32 = 3;
/// Pause before trying again after a 5xx or a lost answer, doubled each time.
const BACKOFF: Duration = Duration::from_millis(100);
/// The longest a call waits in all for GitHub's `retry-after`. A Lambda must not sleep long; a
/// longer wait is `RateLimited`, and the job waits in its queue instead, which costs nothing.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

/// What a failed attempt says about trying again.
enum Next {
    /// A 5xx, or no answer at all: GitHub may have done the work, and may do it next time.
    Unanswered,
    /// A rate limit that says when to come back (GitHub did nothing).
    RetryAfter(Duration),
    /// The same request would meet the same answer.
    Stop,
}

fn next_after(error: &octocrab::Error) -> Next {
    match error {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code.as_u16();
            let retry_after = source
                .headers
                .as_ref()
                .and_then(|h| h.get("retry-after"))
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (status, retry_after) {
                (500.., _) => Next::Unanswered,
                (403 | 429, Some(seconds)) => Next::RetryAfter(Duration::from_secs(seconds)),
                _ => Next::Stop,
            }
        }
        // Transport failures and timeouts: the request may have reached GitHub.
        octocrab::Error::Hyper { .. } | octocrab::Error::Service { .. } => Next::Unanswered,
        _ => Next::Stop,
    }
}

/// A call's last error, and whether an earlier attempt of it went unanswered, so that GitHub may
/// have carried it out.
struct Failed {
    error: octocrab::Error,
    after_unanswered: bool,
}

impl Failed {
    fn status(&self) -> Option<u16> {
        match &self.error {
            octocrab::Error::GitHub { source, .. } => Some(source.status_code.as_u16()),
            _ => None,
        }
    }
}

/// Runs `attempt` up to `ATTEMPTS` times while GitHub's answer says another try may succeed.
async fn with_retries<T, F, Fut>(mut attempt: F) -> Result<T, Failed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, octocrab::Error>>,
{
    let (mut attempts, mut waited, mut after_unanswered) = (0, Duration::ZERO, false);
    loop {
        attempts += 1;
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let pause = match next_after(&error) {
            Next::Unanswered if attempts < ATTEMPTS => {
                after_unanswered = true;
                BACKOFF * 2u32.pow(attempts - 1)
            }
            Next::RetryAfter(wait) if attempts < ATTEMPTS && waited + wait <= MAX_RETRY_AFTER => {
                waited += wait;
                wait
            }
            _ => {
                return Err(Failed {
                    error,
                    after_unanswered,
                });
            }
        };
        tokio::time::sleep(pause).await;
    }
}

fn classify(what: &str, error: octocrab::Error) -> GithubError {
    match error {
        octocrab::Error::GitHub { source, .. } => {
            let status = source.status_code.as_u16();
            let rate_limited = source
                .headers
                .as_ref()
                .and_then(|h| h.get("x-ratelimit-remaining"))
                .is_some_and(|v| v.as_bytes() == b"0")
                || source.headers.as_ref().is_some_and(|h| h.contains_key("retry-after"));
            let message = format!("{what}: {} {}", status, source.message);
            match status {
                404 => GithubError::NotFound(what.to_string()),
                409 => GithubError::Conflict(message),
                429 => GithubError::RateLimited(message),
                403 if rate_limited || source.message.to_ascii_lowercase().contains("rate limit") => {
                    GithubError::RateLimited(message)
                }
                401 | 403 => GithubError::Unauthorized(message),
                500.. => GithubError::Unavailable(message),
                _ => GithubError::Rejected(message),
            }
        }
        other => GithubError::Unavailable(format!("{what}: {other}")),
    }
}

/// Whether a 403's message is GitHub's for a credential that lacks a permission ("Resource not
/// accessible by integration" for an App, "... by personal access token" for a fine-grained
/// token, "Must have admin rights", an organisation's SAML enforcement) rather than a refusal of
/// the request itself. GitHub's refusals of a re-run are many and undocumented ("The workflow run
/// containing this job is already running", "This workflow run cannot be retried", "Unable to
/// retry this workflow run because it was created over a month ago"); its permission messages are few.
fn is_missing_permission(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    ["not accessible by", "admin rights", "permission", "saml"]
        .iter()
        .any(|marker| message.contains(marker))
}

#[derive(Deserialize)]
struct JobResponse {
    status: String,
}

#[derive(Deserialize)]
struct JitResponse {
    runner: RunnerId,
    encoded_jit_config: String,
}

#[derive(Deserialize)]
struct RunnerId {
    id: u64,
}

#[derive(Deserialize)]
struct RunnersPage {
    total_count: u64,
    runners: Vec<Runner>,
}

impl OctocrabGithub {
    async fn generate_jitconfig(&self, scope: &RunnerScope, body: &serde_json::Value) -> Result<JitResponse, Failed> {
        let route = format!("{}/generate-jitconfig", scope.path());
        with_retries(|| self.client.post(&route, Some(body))).await
    }

    /// Every runner of `scope` (named `name`, when given), read across pages.
    async fn list(&self, scope: &RunnerScope, name: Option<&str>) -> Result<Vec<Runner>, GithubError> {
        let filter = name.map(|n| format!("&name={}", query_encode(n))).unwrap_or_default();
        let mut runners = Vec::new();
        for page in 1.. {
            let route = format!("{}?per_page=100&page={page}{filter}", scope.path());
            let response: RunnersPage = with_retries(|| self.client.get(&route, None::<&()>))
                .await
                .map_err(|failed| classify("runner list", failed.error))?;
            let done = response.runners.is_empty()
                || runners.len() as u64 + response.runners.len() as u64 >= response.total_count;
            runners.extend(response.runners);
            if done {
                break;
            }
        }
        Ok(runners)
    }

    /// Removes the runner named `name` that an unanswered registration of ours left behind. It
    /// never ran (its JIT config never reached an instance), so one that is online or busy was
    /// started by someone else's config, and stays.
    async fn remove_unanswered_registration(&self, scope: &RunnerScope, name: &str) -> Result<(), GithubError> {
        let found = self.list(scope, Some(name)).await?.into_iter().find(|r| r.name == name);
        match found {
            None => Ok(()),
            Some(runner) if runner.busy || runner.status != "offline" => Err(GithubError::Conflict(format!(
                "runner `{name}` exists and is {}{}: it is not the registration whose answer was lost",
                runner.status,
                if runner.busy { " and busy" } else { "" }
            ))),
            Some(runner) => self.remove_runner(scope, runner.id).await,
        }
    }
}

/// The `cursor` of a `Link` header's `rel="next"` URL, percent-decoded.
fn next_cursor(link: &str) -> Option<String> {
    let next = link.split(',').find(|part| part.contains("rel=\"next\""))?;
    let url = next
        .split(';')
        .next()?
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let query = url.split_once('?')?.1;
    let value = query.split('&').find_map(|pair| pair.strip_prefix("cursor="))?;
    Some(percent_decode(value))
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value (runner names are letters, digits, `-`, `_` and `.`, but a
/// name is data).
fn query_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[async_trait]
impl Github for OctocrabGithub {
    async fn job_status(&self, repository: &str, job_id: u64) -> Result<JobStatus, GithubError> {
        let route = format!("/repos/{repository}/actions/jobs/{job_id}");
        let job: JobResponse = with_retries(|| self.client.get(&route, None::<&()>))
            .await
            .map_err(|failed| classify(&format!("job {job_id} of {repository}"), failed.error))?;
        Ok(match job.status.as_str() {
            "queued" => JobStatus::Queued,
            _ => JobStatus::Other(job.status),
        })
    }

    async fn register_runner(
        &self,
        scope: &RunnerScope,
        name: &str,
        labels: &[String],
        runner_group_id: u64,
    ) -> Result<JitConfig, GithubError> {
        let body = serde_json::json!({
            "name": name,
            "runner_group_id": runner_group_id,
            "labels": labels,
            "work_folder": "_work",
        });
        let what = format!("runner registration `{name}`");
        let response = match self.generate_jitconfig(scope, &body).await {
            // A 409 on the first attempt is another handler's runner; after an attempt of ours
            // that went unanswered, it is most likely ours, which GitHub registered without
            // telling us. Its JIT config is lost with the answer, so it is removed and made again.
            Err(failed) if failed.status() == Some(409) && failed.after_unanswered => {
                tracing::warn!(
                    runner_name = name,
                    "GitHub has runner `{name}` after a registration attempt that went unanswered; \
                     removing it and registering again"
                );
                self.remove_unanswered_registration(scope, name).await?;
                self.generate_jitconfig(scope, &body)
                    .await
                    .map_err(|failed| classify(&what, failed.error))?
            }
            other => other.map_err(|failed| classify(&what, failed.error))?,
        };
        Ok(JitConfig {
            runner_id: response.runner.id,
            encoded: response.encoded_jit_config,
        })
    }

    async fn runners(&self, scope: &RunnerScope) -> Result<Vec<Runner>, GithubError> {
        self.list(scope, None).await
    }

    async fn runner_downloads(&self, scope: &RunnerScope) -> Result<Vec<RunnerDownload>, GithubError> {
        let route = format!("{}/downloads", scope.path());
        with_retries(|| self.client.get(&route, None::<&()>))
            .await
            .map_err(|failed| classify("runner downloads", failed.error))
    }

    async fn hook_deliveries(&self, hook: &Hook, cursor: Option<&str>) -> Result<DeliveriesPage, GithubError> {
        let cursor = cursor
            .map(|c| format!("&cursor={}", query_encode(c)))
            .unwrap_or_default();
        let route = format!("{}/deliveries?per_page=100{cursor}", hook.path());
        let what = format!("the deliveries of {hook}");
        let response = with_retries(|| async {
            let response = self.client._get(route.as_str()).await?;
            octocrab::map_github_error(response).await
        })
        .await
        .map_err(|failed| classify(&what, failed.error))?;
        let next_cursor = response
            .headers()
            .get("link")
            .and_then(|v| v.to_str().ok())
            .and_then(next_cursor);
        let body = self
            .client
            .body_to_string(response)
            .await
            .map_err(|error| GithubError::Unavailable(format!("{what}: {error}")))?;
        let deliveries = serde_json::from_str(&body).map_err(|error| {
            GithubError::Rejected(format!("{what}: GitHub's answer is not a list of deliveries: {error}"))
        })?;
        Ok(DeliveriesPage {
            deliveries,
            next_cursor,
        })
    }

    async fn redeliver(&self, hook: &Hook, delivery_id: u64) -> Result<(), GithubError> {
        let route = format!("{}/deliveries/{delivery_id}/attempts", hook.path());
        let what = format!("redelivery of delivery {delivery_id} of {hook}");
        let response = self
            .client
            ._post(route.as_str(), None::<&()>)
            .await
            .map_err(|error| classify(&what, error))?;
        octocrab::map_github_error(response)
            .await
            .map(|_| ())
            .map_err(|error| classify(&what, error))
    }

    async fn remove_runner(&self, scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError> {
        let route = format!("{}/{runner_id}", scope.path());
        let what = format!("runner {runner_id}");
        let deleted = with_retries(|| async {
            let response = self.client._delete(route.as_str(), None::<&()>).await?;
            octocrab::map_github_error(response).await
        })
        .await;
        match deleted {
            Ok(_) => Ok(()),
            // Gone already, or removed by an attempt whose answer was lost.
            Err(failed) if failed.status() == Some(404) => Ok(()),
            Err(Failed {
                error: octocrab::Error::GitHub { source, .. },
                ..
            }) if source.status_code == 422 => Err(GithubError::Busy(format!("{what}: {}", source.message))),
            Err(failed) => Err(classify(&what, failed.error)),
        }
    }

    async fn job(&self, repository: &str, job_id: u64) -> Result<JobDetails, GithubError> {
        let route = format!("/repos/{repository}/actions/jobs/{job_id}");
        with_retries(|| self.client.get(&route, None::<&()>))
            .await
            .map_err(|failed| classify(&format!("job {job_id} of {repository}"), failed.error))
    }

    async fn workflow_run(&self, repository: &str, run_id: u64) -> Result<RunDetails, GithubError> {
        let route = format!("/repos/{repository}/actions/runs/{run_id}");
        with_retries(|| self.client.get(&route, None::<&()>))
            .await
            .map_err(|failed| classify(&format!("workflow run {run_id} of {repository}"), failed.error))
    }

    async fn run_jobs(&self, repository: &str, run_id: u64) -> Result<Vec<JobDetails>, GithubError> {
        #[derive(Deserialize)]
        struct JobsPage {
            total_count: u64,
            jobs: Vec<JobDetails>,
        }
        let mut jobs = Vec::new();
        // A matrix has at most 256 jobs: three pages of 100.
        for page in 1..=MOST_JOB_PAGES {
            let route =
                format!("/repos/{repository}/actions/runs/{run_id}/jobs?filter=latest&per_page=100&page={page}");
            let listed: JobsPage = with_retries(|| self.client.get(&route, None::<&()>))
                .await
                .map_err(|failed| classify(&format!("jobs of workflow run {run_id} of {repository}"), failed.error))?;
            let last = listed.jobs.is_empty() || jobs.len() as u64 + listed.jobs.len() as u64 >= listed.total_count;
            jobs.extend(listed.jobs);
            if last {
                break;
            }
        }
        Ok(jobs)
    }

    async fn rerun_job(&self, repository: &str, job_id: u64) -> Result<(), GithubError> {
        let route = format!("/repos/{repository}/actions/jobs/{job_id}/rerun");
        let what = format!("re-run of job {job_id} of {repository}");
        let response = self
            .client
            ._post(route.as_str(), None::<&()>)
            .await
            .map_err(|error| self.classify_rerun(&what, error))?;
        octocrab::map_github_error(response)
            .await
            .map(|_| ())
            .map_err(|error| self.classify_rerun(&what, error))
    }
}

impl OctocrabGithub {
    /// GitHub answers a re-run it will not make with 403, the status it also gives a missing
    /// permission and a secondary rate limit: a refusal is `Conflict` with GitHub's message, a
    /// missing permission `Unauthorized` naming the one needed.
    fn classify_rerun(&self, what: &str, error: octocrab::Error) -> GithubError {
        let forbidden = match &error {
            octocrab::Error::GitHub { source, .. } if source.status_code == 403 => Some(source.message.clone()),
            _ => None,
        };
        match (classify(what, error), forbidden) {
            (GithubError::Unauthorized(message), Some(github_says)) if is_missing_permission(&github_says) => {
                GithubError::Unauthorized(format!("{message}; {}", self.credential.rerun_permission()))
            }
            (GithubError::Unauthorized(message), Some(_)) => GithubError::Conflict(message),
            (other, _) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_cursor_is_read_from_the_link_header_and_decoded() {
        let link = "<https://api.github.com/orgs/o/hooks/1/deliveries?per_page=100&cursor=v1_41%3D>; rel=\"next\", \
                    <https://api.github.com/orgs/o/hooks/1/deliveries?per_page=100>; rel=\"first\"";
        assert_eq!(next_cursor(link).as_deref(), Some("v1_41="));
        assert_eq!(next_cursor("<https://x/deliveries?per_page=100>; rel=\"first\""), None);
    }

    #[test]
    fn a_rerun_refusal_is_not_mistaken_for_a_missing_permission() {
        for refusal in [
            "The workflow run containing this job is already running",
            "This workflow is already running",
            "This workflow run cannot be retried",
            "Unable to retry this workflow run because it was created over a month ago",
        ] {
            assert!(!is_missing_permission(refusal), "{refusal}");
        }
        for missing in [
            "Resource not accessible by integration",
            "Resource not accessible by personal access token",
            "Must have admin rights to Repository.",
            "Resource protected by organization SAML enforcement. You must grant your Personal Access token access to this organization.",
        ] {
            assert!(is_missing_permission(missing), "{missing}");
        }
    }

    #[test]
    fn a_missing_rerun_permission_is_named_for_the_credential_held() {
        assert!(Credential::App.rerun_permission().contains("`Actions: write`"));
        assert!(Credential::Token.rerun_permission().contains("`repo` scope"));
    }

    #[test]
    fn job_details_read_githubs_job_and_default_a_missing_attempt_to_the_first() {
        let job: JobDetails = serde_json::from_value(serde_json::json!({
            "id": 7, "run_id": 3, "run_attempt": 2, "name": "build", "status": "completed",
            "conclusion": "failure", "runner_name": "sophons-i-0abc", "labels": ["self-hosted"],
            "started_at": "2026-01-02T03:04:05Z", "completed_at": "2026-01-02T03:05:05Z",
        }))
        .unwrap();
        assert_eq!(
            (job.run_attempt, job.conclusion.as_deref(), job.runner_name.as_deref()),
            (2, Some("failure"), Some("sophons-i-0abc"))
        );
        let queued: JobDetails = serde_json::from_value(serde_json::json!({
            "id": 8, "run_id": 3, "name": "build", "status": "queued", "conclusion": null, "runner_name": null,
        }))
        .unwrap();
        assert_eq!((queued.run_attempt, queued.completed_at), (1, None));
    }
}
