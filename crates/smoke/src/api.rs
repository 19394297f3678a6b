//! GitHub's REST API as smoke speaks it: one octocrab client, every answer's status read here,
//! 5xx and lost answers tried again a few times, and refusals turned into errors that name the
//! permission the token lacks.

use std::time::Duration;

use octocrab::Octocrab;
use octocrab::service::middleware::retry::RetryConfig;
use serde_json::Value;

use crate::time::Timestamp;

/// Tries per request: GitHub's 5xx and dropped connections are usually gone on the next one.
const ATTEMPTS: u32 = 4;
/// The longest a request waits on a rate limit's `retry-after` before giving up.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// What smoke asks GitHub for. Each names the permission it needs, so that a refusal says what to
/// grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ReadRepository,
    ReadWorkflowFile,
    WriteWorkflowFile,
    Dispatch,
    ListRuns,
    ReadRun,
    ListJobs,
    ListRepositoryRunners,
    ListOrganizationRunners,
    CancelRun,
}

impl Step {
    pub fn what(self) -> &'static str {
        match self {
            Self::ReadRepository => "read the repository",
            Self::ReadWorkflowFile => "read the smoke workflow file",
            Self::WriteWorkflowFile => "write the smoke workflow file",
            Self::Dispatch => "dispatch the smoke workflow",
            Self::ListRuns => "list the smoke workflow's runs",
            Self::ReadRun => "read the smoke run",
            Self::ListJobs => "list the smoke run's jobs",
            Self::ListRepositoryRunners => "list the repository's self-hosted runners",
            Self::ListOrganizationRunners => "list the organization's self-hosted runners",
            Self::CancelRun => "cancel the smoke run",
        }
    }

    /// The fine-grained permission the step needs, and the classic token's scope.
    pub fn permission(self) -> &'static str {
        match self {
            Self::ReadRepository => {
                "the repository in its repository access (fine-grained: Metadata: Read comes with it; classic: `repo`)"
            }
            Self::ReadWorkflowFile => "Contents: Read (classic: `repo`)",
            Self::WriteWorkflowFile => {
                "Contents: Read and write and Workflows: Read and write (classic: `repo` and `workflow`)"
            }
            Self::Dispatch | Self::CancelRun => "Actions: Read and write (classic: `repo`)",
            Self::ListRuns | Self::ReadRun | Self::ListJobs => "Actions: Read (classic: `repo`)",
            Self::ListRepositoryRunners => {
                "Administration: Read on the repository (classic: `repo`, from an admin of the repository)"
            }
            Self::ListOrganizationRunners => {
                "the organization permission Self-hosted runners: Read (classic: `admin:org`)"
            }
        }
    }

    /// What else a 404 may mean for this step.
    fn not_found_hint(self) -> &'static str {
        match self {
            Self::ReadRepository => "check --repository (owner/name)",
            Self::ReadWorkflowFile | Self::WriteWorkflowFile => "check that --ref names a branch",
            Self::Dispatch => {
                "GitHub does not know the workflow on this ref: it takes a few seconds to register a new \
                 workflow file, --ref must name a branch, and a workflow only on a branch other than the default \
                 may stay unknown (run smoke once without --ref)"
            }
            Self::ListOrganizationRunners => "the owner may be a user, not an organization",
            _ => "it may have been deleted meanwhile",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Post,
}

/// An answer of GitHub, any status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// `Null` when the body was empty or not JSON.
    pub body: Value,
    /// GitHub's clock when it answered (its `Date` header).
    pub date: Option<Timestamp>,
    /// `X-Accepted-GitHub-Permissions`: what GitHub says the call accepts, sent with a 403.
    pub accepted_permissions: Option<String>,
    pub rate_limit_remaining: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// GitHub's `message`, else the status's name.
    pub fn message(&self) -> String {
        match self.body["message"].as_str() {
            Some(message) => message
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or(message)
                .to_string(),
            None => String::from(match self.status {
                404 => "Not Found",
                403 => "Forbidden",
                _ => "no message",
            }),
        }
    }

    fn rate_limited(&self) -> bool {
        self.status == 429
            || (self.status == 403
                && (self.rate_limit_remaining.as_deref() == Some("0")
                    || self.retry_after.is_some()
                    || self.message().to_ascii_lowercase().contains("rate limit")))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "GitHub refused the token (401 {message}): GITHUB_TOKEN is wrong, expired or revoked; make one with the permissions `smoke --help` lists"
    )]
    BadCredentials { message: String },
    #[error("GitHub refused to {} ({status} {message}, {route}): the token needs {}{}", .step.what(), .step.permission(), accepted_note(.accepted))]
    Refused {
        step: Step,
        route: String,
        status: u16,
        message: String,
        accepted: Option<String>,
    },
    #[error("GitHub answered 404 ({message}) when asked to {} ({route}): {}; GitHub also answers 404 when the token may not see it: it needs {}", .step.what(), .step.not_found_hint(), .step.permission())]
    NotFound { step: Step, route: String, message: String },
    #[error("GitHub's rate limit stopped smoke from being able to {} ({status} {message}): wait for it to reset, or use another token", .step.what())]
    RateLimited { step: Step, status: u16, message: String },
    #[error("GitHub did not answer when asked to {} ({route}) after {ATTEMPTS} attempts: {detail}; check --api-url, the network, and https://www.githubstatus.com", .step.what())]
    Unavailable { step: Step, route: String, detail: String },
    #[error("GitHub refused to {} ({route}): {status} {message}", .step.what())]
    Unexpected {
        step: Step,
        route: String,
        status: u16,
        message: String,
    },
    #[error("GitHub's answer when asked to {} is not what smoke expects: {detail}", .step.what())]
    Malformed { step: Step, detail: String },
}

fn accepted_note(accepted: &Option<String>) -> String {
    accepted
        .as_ref()
        .map(|a| format!(" (GitHub says this call accepts: {a})"))
        .unwrap_or_default()
}

impl SmokeError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => crate::EXIT_USAGE,
            _ => crate::EXIT_GITHUB,
        }
    }

    /// The error for an answer that is not a success.
    pub fn from_answer(step: Step, route: &str, answer: &Answer) -> Self {
        let (route, status, message) = (route.to_string(), answer.status, answer.message());
        match status {
            401 => Self::BadCredentials { message },
            _ if answer.rate_limited() => Self::RateLimited { step, status, message },
            403 => Self::Refused {
                step,
                route,
                status,
                message,
                accepted: answer.accepted_permissions.clone(),
            },
            404 => Self::NotFound { step, route, message },
            500.. => Self::Unavailable {
                step,
                route,
                detail: format!("{status} {message}"),
            },
            _ => Self::Unexpected {
                step,
                route,
                status,
                message,
            },
        }
    }
}

/// The client. The token goes into octocrab and is never shown again.
pub struct Github {
    client: Octocrab,
    retry_pause: Duration,
}

impl Github {
    /// `retry_pause` is the wait before the second attempt of a request, doubled for each next.
    pub fn connect(api_url: &str, token: &str, retry_pause: Duration) -> Result<Self, SmokeError> {
        let client = Octocrab::builder()
            // Retries are counted here, so that a 5xx after the last one names the step.
            .add_retry_config(RetryConfig::None)
            .base_uri(api_url)
            .map_err(|_| SmokeError::Usage(format!("--api-url `{api_url}` is not a usable URL")))?
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .personal_token(token.to_string())
            .build()
            .map_err(|e| SmokeError::Usage(format!("cannot build the GitHub client: {e}")))?;
        Ok(Self { client, retry_pause })
    }

    /// Sends a request and returns GitHub's answer, whatever its status, once it is not a 5xx, a
    /// short rate limit or a lost answer, or when the attempts are used up. A retried POST may be
    /// carried out twice; for a dispatch that is one more smoke run, which is harmless.
    pub async fn send(
        &self,
        step: Step,
        method: Method,
        route: &str,
        body: Option<&Value>,
    ) -> Result<Answer, SmokeError> {
        let mut pause = self.retry_pause;
        for attempt in 1..=ATTEMPTS {
            let last = attempt == ATTEMPTS;
            match self.once(method, route, body).await {
                Ok(answer) if answer.status >= 500 && !last => {}
                Ok(answer) if answer.rate_limited() && !last => match answer.retry_after {
                    Some(wait) if wait <= MAX_RETRY_AFTER => {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    _ => return Ok(answer),
                },
                Ok(answer) => return Ok(answer),
                Err(error) if last => {
                    return Err(SmokeError::Unavailable {
                        step,
                        route: route.to_string(),
                        detail: error.to_string(),
                    });
                }
                Err(_) => {}
            }
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        unreachable!("the last attempt returns")
    }

    /// `send`, with anything but a success turned into the error that says what to fix.
    pub async fn call(
        &self,
        step: Step,
        method: Method,
        route: &str,
        body: Option<&Value>,
    ) -> Result<Answer, SmokeError> {
        let answer = self.send(step, method, route, body).await?;
        if answer.is_success() {
            Ok(answer)
        } else {
            Err(SmokeError::from_answer(step, route, &answer))
        }
    }

    async fn once(&self, method: Method, route: &str, body: Option<&Value>) -> Result<Answer, octocrab::Error> {
        let response = match method {
            Method::Get => self.client._get(route).await?,
            Method::Put => self.client._put(route, body).await?,
            Method::Post => self.client._post(route, body).await?,
        };
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let status = response.status().as_u16();
        let date = header("date").and_then(|d| Timestamp::parse_http_date(&d));
        let accepted_permissions = header("x-accepted-github-permissions");
        let rate_limit_remaining = header("x-ratelimit-remaining");
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = self.client.body_to_string(response).await?;
        Ok(Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            date,
            accepted_permissions,
            rate_limit_remaining,
            retry_after,
        })
    }
}

/// Percent-encodes a query value (a branch name may hold `&`, `#` or `+`).
pub fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body,
            date: None,
            accepted_permissions: None,
            rate_limit_remaining: None,
            retry_after: None,
        }
    }

    #[test]
    fn a_refusal_names_the_permission_and_what_github_accepts() {
        let mut refused = answer(
            403,
            json!({"message": "Resource not accessible by personal access token"}),
        );
        refused.accepted_permissions = Some("actions=write".into());
        let error = SmokeError::from_answer(
            Step::Dispatch,
            "/repos/a/b/actions/workflows/w.yml/dispatches",
            &refused,
        );
        let text = error.to_string();
        assert!(text.contains("dispatch the smoke workflow"), "{text}");
        assert!(text.contains("Actions: Read and write"), "{text}");
        assert!(text.contains("accepts: actions=write"), "{text}");
        let write = SmokeError::from_answer(Step::WriteWorkflowFile, "/x", &answer(403, Value::Null)).to_string();
        assert!(write.contains("Workflows: Read and write"), "{write}");
    }

    #[test]
    fn statuses_become_errors_that_say_what_to_do() {
        let bad = SmokeError::from_answer(
            Step::ReadRepository,
            "/r",
            &answer(401, json!({"message": "Bad credentials"})),
        );
        assert!(matches!(bad, SmokeError::BadCredentials { .. }));
        assert!(bad.to_string().contains("GITHUB_TOKEN is wrong, expired or revoked"));
        let missing = SmokeError::from_answer(
            Step::ReadRepository,
            "/r",
            &answer(404, json!({"message": "Not Found"})),
        );
        assert!(missing.to_string().contains("check --repository"), "{missing}");
        let mut limited = answer(403, json!({"message": "API rate limit exceeded"}));
        limited.rate_limit_remaining = Some("0".into());
        assert!(matches!(
            SmokeError::from_answer(Step::ListJobs, "/j", &limited),
            SmokeError::RateLimited { .. }
        ));
        assert!(matches!(
            SmokeError::from_answer(Step::Dispatch, "/d", &answer(422, json!({"message": "Invalid\n\ndetail"}))),
            SmokeError::Unexpected { status: 422, ref message, .. } if message == "Invalid"
        ));
        assert_eq!(bad.exit_code(), crate::EXIT_GITHUB);
        assert_eq!(SmokeError::Usage("x".into()).exit_code(), crate::EXIT_USAGE);
    }

    #[test]
    fn query_values_keep_slashes_and_escape_the_rest() {
        assert_eq!(query_value("feature/a+b&c"), "feature/a%2Bb%26c");
    }
}
