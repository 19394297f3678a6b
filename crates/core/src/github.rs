//! GitHub: is a job still queued, register a just-in-time runner, list and remove runners.
//! The adapter is octocrab, with a PAT or a GitHub App installation (octocrab mints the JWT,
//! exchanges it for an installation token and refreshes that before it expires).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use octocrab::Octocrab;
use serde::Deserialize;

use crate::config::{GithubConfig, Scope};
use crate::secrets::Secrets;

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
    /// Removes a runner; one already gone is not an error.
    async fn remove_runner(&self, scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError>;
}

/// The real adapter.
#[derive(Clone)]
pub struct OctocrabGithub {
    client: Octocrab,
}

#[derive(Debug, thiserror::Error)]
pub enum GithubSetupError {
    #[error("cannot read the GitHub credential: {0}")]
    Secret(#[from] crate::secrets::SecretsError),
    #[error("github.api_url `{0}` is not a usable URL")]
    ApiUrl(String),
    #[error("the GitHub App private key in `{0}` is not an RSA key in PEM form: {1}")]
    AppKey(String, String),
    #[error("cannot build the GitHub client: {0}")]
    Client(String),
}

impl OctocrabGithub {
    /// Reads the credential the config names (once per cold start) and builds the client.
    pub async fn connect(github: &GithubConfig, secrets: &dyn Secrets) -> Result<Self, GithubSetupError> {
        let builder = Octocrab::builder()
            .base_uri(github.api_url.as_str())
            .map_err(|_| GithubSetupError::ApiUrl(github.api_url.clone()))?
            .set_connect_timeout(Some(Duration::from_secs(5)))
            .set_read_timeout(Some(Duration::from_secs(10)));
        let client = match (&github.token_param, &github.app) {
            (_, Some(app)) => {
                let pem = secrets.get(&app.private_key_param).await?;
                let key = octocrab::EncodingKey::from_rsa_pem(pem.as_bytes())
                    .map_err(|e| GithubSetupError::AppKey(app.private_key_param.clone(), e.to_string()))?;
                builder
                    .app(app.app_id.into(), key)
                    .build()
                    .and_then(|client| client.installation(app.installation_id.into()))
                    .map_err(|e| GithubSetupError::Client(e.to_string()))?
            }
            (Some(token_param), None) => {
                let token = secrets.get(token_param).await?;
                builder
                    .personal_token(token)
                    .build()
                    .map_err(|e| GithubSetupError::Client(e.to_string()))?
            }
            (None, None) => return Err(GithubSetupError::Client("the config names no credential".into())),
        };
        Ok(Self { client })
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

#[async_trait]
impl Github for OctocrabGithub {
    async fn job_status(&self, repository: &str, job_id: u64) -> Result<JobStatus, GithubError> {
        let route = format!("/repos/{repository}/actions/jobs/{job_id}");
        let job: JobResponse = self
            .client
            .get(route, None::<&()>)
            .await
            .map_err(|e| classify(&format!("job {job_id} of {repository}"), e))?;
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
        let response: JitResponse = self
            .client
            .post(format!("{}/generate-jitconfig", scope.path()), Some(&body))
            .await
            .map_err(|e| classify(&format!("runner registration `{name}`"), e))?;
        Ok(JitConfig {
            runner_id: response.runner.id,
            encoded: response.encoded_jit_config,
        })
    }

    async fn runners(&self, scope: &RunnerScope) -> Result<Vec<Runner>, GithubError> {
        let mut runners = Vec::new();
        for page in 1.. {
            let route = format!("{}?per_page=100&page={page}", scope.path());
            let response: RunnersPage = self
                .client
                .get(route, None::<&()>)
                .await
                .map_err(|e| classify("runner list", e))?;
            let done = response.runners.is_empty()
                || runners.len() as u64 + response.runners.len() as u64 >= response.total_count;
            runners.extend(response.runners);
            if done {
                break;
            }
        }
        Ok(runners)
    }

    async fn remove_runner(&self, scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError> {
        let route = format!("{}/{runner_id}", scope.path());
        let what = format!("runner {runner_id}");
        let response = self
            .client
            ._delete(route, None::<&()>)
            .await
            .map_err(|e| classify(&what, e))?;
        match octocrab::map_github_error(response).await {
            Ok(_) => Ok(()),
            Err(error) => match classify(&what, error) {
                GithubError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }
}
