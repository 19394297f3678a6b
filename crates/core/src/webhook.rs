//! The front door: GitHub's `workflow_job` deliveries, verified, filtered and enqueued.
//!
//! Every answer is one row of the README's table; `Answer` carries the row and the log fields.
//! Only the fields sophons needs are parsed, borrowed from the body.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use hmac::{KeyInit, Mac};
use lambda_http::http::{HeaderMap, Method, StatusCode, header};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use crate::config::Config;
use crate::interruptions::{Interruptions, Ran};
use crate::job::{JobMessage, MESSAGE_VERSION, now_rfc3339};
use crate::metrics::{Emf, name as metric};
use crate::queue::Queue;
use crate::templates;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";
pub const WEBHOOK_PATH: &str = "/webhook";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Wrong,
}

impl SignatureError {
    fn reason(self) -> &'static str {
        match self {
            Self::Missing => "X-Hub-Signature-256 header is missing: set a secret on the webhook",
            Self::Malformed => "X-Hub-Signature-256 header is not `sha256=<64 hex digits>`",
            Self::Wrong => "signature does not match the body: the webhook's secret differs from sophons'",
        }
    }
}

/// Checks `X-Hub-Signature-256` over the raw body, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&[u8]>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_digest = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
    let mut expected = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut expected).map_err(|_| SignatureError::Malformed)?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| SignatureError::Wrong)
}

/// The signature GitHub would send for this body (for tests, the demo and benchmarks).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One row of the webhook's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    NotFound,
    MethodNotAllowed,
    TooLarge,
    Unauthorized,
    Pong,
    Ignored,
    BadRequest,
    Forbidden,
    Enqueued,
    QueueFailed,
    /// An `in_progress` delivery naming a runner of ours: which job it ran is kept.
    Recorded,
    /// ... and keeping it failed (the 5xx makes the delivery one move-jobs redelivers).
    RecordFailed,
}

impl Decision {
    pub fn status(self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Pong => StatusCode::OK,
            Self::Ignored | Self::Enqueued | Self::Recorded => StatusCode::ACCEPTED,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::QueueFailed | Self::RecordFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge => "too_large",
            Self::Unauthorized => "unauthorized",
            Self::Pong => "pong",
            Self::Ignored => "ignored",
            Self::BadRequest => "bad_request",
            Self::Forbidden => "forbidden",
            Self::Enqueued => "enqueued",
            Self::QueueFailed => "queue_failed",
            Self::Recorded => "recorded",
            Self::RecordFailed => "record_failed",
        }
    }
}

/// The webhook's answer and what its log line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub decision: Decision,
    pub reason: String,
    pub delivery_id: Option<String>,
    pub event: Option<String>,
    pub action: Option<String>,
    pub job_id: Option<u64>,
    /// The job's run and attempt: with the job id, what lets an operator follow a job through
    /// its re-runs (a re-run's job has a new id in the same run).
    pub run_id: Option<u64>,
    pub run_attempt: Option<u32>,
    pub repository: Option<String>,
    pub template: Option<String>,
}

impl Answer {
    fn new(decision: Decision, reason: impl Into<String>) -> Self {
        Self {
            decision,
            reason: reason.into(),
            delivery_id: None,
            event: None,
            action: None,
            job_id: None,
            run_id: None,
            run_attempt: None,
            repository: None,
            template: None,
        }
    }

    pub fn body(&self) -> String {
        let mut body = json!({ "decision": self.decision.as_str(), "reason": self.reason });
        if let Some(template) = &self.template {
            body["template"] = json!(template);
        }
        if let Some(job_id) = self.job_id {
            body["job_id"] = json!(job_id);
        }
        body.to_string()
    }
}

#[derive(Deserialize)]
struct Delivery<'a> {
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workflow_job: Option<JobFields<'a>>,
    #[serde(borrow)]
    repository: Option<RepositoryFields<'a>>,
}

#[derive(Deserialize)]
struct JobFields<'a> {
    id: Option<u64>,
    run_id: Option<u64>,
    run_attempt: Option<u32>,
    #[serde(borrow)]
    labels: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    workflow_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    html_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    started_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    completed_at: Option<Cow<'a, str>>,
    #[serde(borrow)]
    runner_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RepositoryFields<'a> {
    #[serde(borrow)]
    full_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    private: Option<bool>,
    #[serde(borrow)]
    owner: Option<OwnerFields<'a>>,
}

#[derive(Deserialize)]
struct OwnerFields<'a> {
    #[serde(borrow)]
    login: Option<Cow<'a, str>>,
}

fn text(value: Option<Cow<'_, str>>) -> String {
    value.map(Cow::into_owned).unwrap_or_default()
}

/// The webhook's state, built once per cold start.
pub struct Webhook {
    config: Arc<Config>,
    secret: Vec<u8>,
    queue: Arc<dyn Queue>,
    interruptions: Option<Arc<dyn Interruptions>>,
}

impl Webhook {
    pub fn new(config: Arc<Config>, secret: impl Into<Vec<u8>>, queue: Arc<dyn Queue>) -> Self {
        Self {
            config,
            secret: secret.into(),
            queue,
            interruptions: None,
        }
    }

    /// Keeps, from each `in_progress` delivery, which job a runner of ours took (the interruptions
    /// table): the sweep follows that job when EC2 takes the runner's spot instance back.
    pub fn with_interruptions(mut self, interruptions: Arc<dyn Interruptions>) -> Self {
        self.interruptions = Some(interruptions);
        self
    }

    /// The Lambda entry point: answers the request and writes its one log line.
    pub async fn handle(&self, request: Request) -> Response<Body> {
        let started = Instant::now();
        let body: &[u8] = match request.body() {
            Body::Empty => &[],
            Body::Text(text) => text.as_bytes(),
            Body::Binary(bytes) => bytes,
            _ => &[],
        };
        let answer = self
            .answer(request.method(), request.uri().path(), request.headers(), body)
            .await;
        log(&answer, started.elapsed().as_micros());
        Emf::new(&self.config.deployment)
            .dimension("decision", answer.decision.as_str())
            .count(metric::WEBHOOK_ANSWERS, 1)
            .emit();
        let mut response = Response::builder()
            .status(answer.decision.status())
            .header(header::CONTENT_TYPE, "application/json");
        if answer.decision == Decision::MethodNotAllowed {
            response = response.header(header::ALLOW, "POST");
        }
        response
            .body(Body::Text(answer.body()))
            .expect("static status and headers always build")
    }

    /// Decides a request's row of the table; sends the message when the row says so.
    pub async fn answer(&self, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Answer {
        let header_text = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_string)
        };
        let delivery_id = header_text(DELIVERY_HEADER);
        let event = header_text(EVENT_HEADER);
        let mut answer = self
            .decide(method, path, headers, body, event.as_deref(), delivery_id.as_deref())
            .await;
        answer.delivery_id = delivery_id;
        answer.event = event;
        answer
    }

    /// Long because it is the webhook's table of answers, in order (size, signature, event, action), each with
    /// its status.
    async fn decide(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &[u8],
        event: Option<&str>,
        delivery_id: Option<&str>,
    ) -> Answer {
        // A stage other than $default prefixes the path with its name.
        if path != WEBHOOK_PATH && !path.ends_with(WEBHOOK_PATH) {
            return Answer::new(
                Decision::NotFound,
                format!("no such path `{path}`: GitHub posts to {WEBHOOK_PATH}"),
            );
        }
        if method != Method::POST {
            return Answer::new(
                Decision::MethodNotAllowed,
                format!("{method} is not allowed: GitHub posts"),
            );
        }
        if body.len() > self.config.max_body_bytes {
            return Answer::new(
                Decision::TooLarge,
                format!(
                    "body of {} bytes is over the {}-byte limit",
                    body.len(),
                    self.config.max_body_bytes
                ),
            );
        }
        let signature = headers.get(SIGNATURE_HEADER).map(|value| value.as_bytes());
        if let Err(error) = verify_signature(&self.secret, body, signature) {
            return Answer::new(Decision::Unauthorized, error.reason());
        }
        match event {
            None => return Answer::new(Decision::BadRequest, "X-GitHub-Event header is missing"),
            Some("ping") => {
                return Answer::new(Decision::Pong, "pong: the webhook and its secret work");
            }
            Some("workflow_job") => {}
            Some(other) => {
                return Answer::new(
                    Decision::Ignored,
                    format!("event `{other}` is not handled: subscribe the webhook to Workflow jobs only"),
                );
            }
        }
        let mut delivery: Delivery<'_> = match serde_json::from_slice(body) {
            Ok(delivery) => delivery,
            Err(error) => {
                return Answer::new(
                    Decision::BadRequest,
                    format!("body is not a workflow_job payload: {error}"),
                );
            }
        };
        let Some(action) = delivery.action.take() else {
            return Answer::new(Decision::BadRequest, "workflow_job payload has no `action`");
        };
        if action != "queued" {
            if let Some(progress) = delivery
                .workflow_job
                .as_ref()
                .and_then(|job| self.progress(&action, job))
            {
                progress.emit();
            }
            let recorded = match (&delivery.workflow_job, action.as_ref()) {
                (Some(job), "in_progress") => self.record_ran(job, delivery.repository.as_ref()).await,
                _ => None,
            };
            let mut answer = recorded
                .unwrap_or_else(|| Answer::new(Decision::Ignored, format!("action `{action}` needs no runner")));
            answer.action = Some(action.into_owned());
            if let Some(job) = delivery.workflow_job {
                answer.job_id = job.id;
                answer.run_id = job.run_id;
                answer.run_attempt = job.run_attempt;
            }
            return answer;
        }
        let mut answer = self.queued(delivery, delivery_id).await;
        answer.action = Some("queued".into());
        answer
    }

    /// Keeps which job a runner of this deployment took, when the delivery names one and the
    /// interruptions table is configured; `None` for any other runner (or none).
    async fn record_ran(&self, job: &JobFields<'_>, repository: Option<&RepositoryFields<'_>>) -> Option<Answer> {
        let store = self.interruptions.as_ref()?;
        let instance_id = job
            .runner_name
            .as_deref()?
            .strip_prefix(&self.config.deployment)?
            .strip_prefix('-')
            .filter(|id| is_instance_id(id))?;
        let (Some(job_id), Some(run_id)) = (job.id, job.run_id) else {
            return Some(Answer::new(
                Decision::BadRequest,
                "in_progress workflow_job of our runner has no `workflow_job.id` or `workflow_job.run_id`",
            ));
        };
        // The sweep splices the name into GitHub API paths, as create-runner does.
        let full_name = repository.and_then(|r| r.full_name.as_deref()).unwrap_or_default();
        if !is_repository_of(full_name, &self.config.github.owner) {
            return Some(Answer::new(
                Decision::Forbidden,
                format!(
                    "repository `{full_name}` is not `{}/<name>`: which job runner `{instance_id}` ran is not kept",
                    self.config.github.owner
                ),
            ));
        }
        let ran = Ran {
            instance_id: instance_id.to_string(),
            job_id,
            repository: full_name.to_string(),
            run_id,
            run_attempt: job.run_attempt.unwrap_or(1),
            job_name: job.name.as_deref().unwrap_or_default().to_string(),
        };
        let mut answer = match store.ran(&ran).await {
            Ok(()) => Answer::new(
                Decision::Recorded,
                format!(
                    "job {job_id} runs on instance {instance_id}: kept, for a re-run if EC2 takes the instance back"
                ),
            ),
            Err(error) => Answer::new(
                Decision::RecordFailed,
                format!(
                    "cannot keep which job instance {instance_id} runs ({error}); move-jobs redelivers the delivery"
                ),
            ),
        };
        answer.repository = Some(ran.repository);
        Some(answer)
    }

    /// What a later delivery of one of our jobs tells about it (`JobStartedAfter` when it starts,
    /// `JobDuration` when it ends), from GitHub's own times; `None` for a job no template serves.
    fn progress(&self, action: &str, job: &JobFields<'_>) -> Option<Emf> {
        let labels = job.labels.as_ref()?;
        let (template, _) = templates::select(&self.config.templates, labels).ok()?;
        let (metric, from, to) = match action {
            "in_progress" => (metric::JOB_STARTED_AFTER, &job.created_at, &job.started_at),
            "completed" => (metric::JOB_DURATION, &job.started_at, &job.completed_at),
            _ => return None,
        };
        let took = crate::metrics::between(from.as_deref()?, to.as_deref()?)?;
        Some(
            Emf::new(&self.config.deployment)
                .dimension("template", template)
                .seconds(metric, took)
                .property("job_id", job.id.unwrap_or_default()),
        )
    }

    /// The same, from a delivery's body (for tests).
    pub fn progress_of(&self, body: &[u8]) -> Option<Emf> {
        let delivery: Delivery<'_> = serde_json::from_slice(body).ok()?;
        self.progress(delivery.action.as_deref()?, delivery.workflow_job.as_ref()?)
    }

    /// Long because each field of the delivery is checked with its own 400 answer before the repository and
    /// labels decide.
    async fn queued(&self, delivery: Delivery<'_>, delivery_id: Option<&str>) -> Answer {
        let missing = |field: &str| Answer::new(Decision::BadRequest, format!("queued workflow_job has no `{field}`"));
        let Some(job) = delivery.workflow_job else {
            return missing("workflow_job");
        };
        let Some(job_id) = job.id else {
            return missing("workflow_job.id");
        };
        let Some(run_id) = job.run_id else {
            return missing("workflow_job.run_id");
        };
        let Some(labels) = job.labels else {
            return missing("workflow_job.labels");
        };
        let Some(repository) = delivery.repository else {
            return missing("repository");
        };
        let Some(full_name) = repository.full_name else {
            return missing("repository.full_name");
        };
        let Some(owner) = repository.owner.and_then(|owner| owner.login) else {
            return missing("repository.owner.login");
        };
        let Some(private) = repository.private else {
            return missing("repository.private");
        };
        let Some(delivery_id) = delivery_id else {
            return Answer::new(Decision::BadRequest, "X-GitHub-Delivery header is missing");
        };
        let name = repository
            .name
            .map(Cow::into_owned)
            .unwrap_or_else(|| full_name.rsplit('/').next().unwrap_or_default().to_string());

        let run_attempt = job.run_attempt;
        let with_job = |mut answer: Answer| {
            answer.job_id = Some(job_id);
            answer.run_id = Some(run_id);
            answer.run_attempt = run_attempt;
            answer.repository = Some(full_name.to_string());
            answer
        };
        if let Some(refusal) = self.refuse_repository(&full_name, &owner, private) {
            return with_job(Answer::new(Decision::Forbidden, refusal));
        }
        let (template, _) = match templates::select(&self.config.templates, &labels) {
            Ok(found) => found,
            Err(no_match) => {
                return with_job(Answer::new(Decision::Ignored, no_match.reason(&labels)));
            }
        };
        // The full name is spliced into GitHub API paths (`/repos/{full_name}/...`): anything
        // but `owner/name` as GitHub spells names could point those calls elsewhere.
        if !is_repository_of(&full_name, &self.config.github.owner) {
            return with_job(Answer::new(
                Decision::Forbidden,
                format!(
                    "repository `{full_name}` is not `{}/<name>` with a name of letters, digits, `-`, `_` and `.`",
                    self.config.github.owner
                ),
            ));
        }

        let message = JobMessage {
            version: MESSAGE_VERSION,
            delivery_id: delivery_id.to_string(),
            job_id,
            run_id,
            run_attempt: job.run_attempt.unwrap_or(1),
            repository: full_name.to_string(),
            owner: owner.into_owned(),
            name,
            labels: labels.into_iter().map(Cow::into_owned).collect(),
            template: template.to_string(),
            workflow_name: text(job.workflow_name),
            job_name: text(job.name),
            job_url: text(job.html_url),
            created_at: text(job.created_at),
            received_at: now_rfc3339(),
            relaunches: 0,
            runner_failures: 0,
            trip: 0,
        };
        let mut answer = match self
            .queue
            .send(&self.config.queue_url, &message.encode(), delivery_id)
            .await
        {
            Ok(_) => {
                if let Some(after) = crate::metrics::since(&message.created_at) {
                    Emf::new(&self.config.deployment)
                        .dimension("template", template)
                        .seconds(metric::ENQUEUED_AFTER, after)
                        .property("job_id", job_id)
                        .emit();
                }
                Answer::new(
                    Decision::Enqueued,
                    format!("job {job_id} queued for template `{template}`"),
                )
            }
            Err(error) => Answer::new(
                Decision::QueueFailed,
                format!("job {job_id} could not be queued ({error}); redeliver it from the webhook's settings"),
            ),
        };
        answer.template = Some(template.to_string());
        with_job(answer)
    }

    fn refuse_repository(&self, full_name: &str, owner: &str, private: bool) -> Option<String> {
        let config = &self.config;
        if !owner.eq_ignore_ascii_case(&config.github.owner) {
            return Some(format!("repository owner `{owner}` is not `{}`", config.github.owner));
        }
        if !config.repositories.is_empty()
            && !config
                .repositories
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(full_name))
        {
            return Some(format!(
                "repository `{full_name}` is not in the config's `repositories`"
            ));
        }
        if !private && !config.allow_public_repositories {
            return Some(format!(
                "repository `{full_name}` is public and allow_public_repositories is false \
                 (a pull request from any fork could run code on a runner)"
            ));
        }
        None
    }
}

/// `i-` and 8 or 17 hexadecimal digits, as EC2 names instances.
fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-")
        .is_some_and(|hex| matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_repository_of(full_name: &str, owner: &str) -> bool {
    full_name.split_once('/').is_some_and(|(of, name)| {
        of.eq_ignore_ascii_case(owner)
            && !matches!(name, "" | "." | "..")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    })
}

fn log(answer: &Answer, elapsed_us: u128) {
    let fields = (
        answer.delivery_id.as_deref().unwrap_or(""),
        answer.event.as_deref().unwrap_or(""),
        answer.action.as_deref().unwrap_or(""),
        answer.repository.as_deref().unwrap_or(""),
        answer.template.as_deref().unwrap_or(""),
    );
    let job_id = answer.job_id.unwrap_or_default();
    let run_id = answer.run_id.unwrap_or_default();
    let run_attempt = answer.run_attempt.unwrap_or_default();
    let status = answer.decision.status().as_u16();
    let decision = answer.decision.as_str();
    if matches!(answer.decision, Decision::QueueFailed | Decision::RecordFailed) {
        tracing::error!(
            delivery_id = fields.0,
            event = fields.1,
            action = fields.2,
            job_id,
            run_id,
            run_attempt,
            repository = fields.3,
            template = fields.4,
            decision,
            status,
            elapsed_us = elapsed_us as u64,
            "{}",
            answer.reason
        );
    } else {
        tracing::info!(
            delivery_id = fields.0,
            event = fields.1,
            action = fields.2,
            job_id,
            run_id,
            run_attempt,
            repository = fields.3,
            template = fields.4,
            decision,
            status,
            elapsed_us = elapsed_us as u64,
            "{}",
            answer.reason
        );
    }
}
