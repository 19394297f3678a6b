//! The queue message: what create-runner needs to serve a job without re-reading the webhook.

use serde::{Deserialize, Serialize};

pub const MESSAGE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub version: u32,
    /// GitHub's `X-GitHub-Delivery`: unchanged when a delivery is redelivered.
    pub delivery_id: String,
    pub job_id: u64,
    pub run_id: u64,
    pub run_attempt: u32,
    /// `owner/name`.
    pub repository: String,
    pub owner: String,
    pub name: String,
    pub labels: Vec<String>,
    pub template: String,
    pub workflow_name: String,
    pub job_name: String,
    pub job_url: String,
    /// When GitHub queued the job (RFC 3339, as GitHub wrote it).
    pub created_at: String,
    /// When the webhook took the delivery (RFC 3339).
    pub received_at: String,
    /// How many times stop-runner (or the sweep) sent this job back for a new runner, for any
    /// reason. An instance launched for an earlier relaunch never serves this message.
    #[serde(default)]
    pub relaunches: u32,
    /// Of those, the runners that ended without running any job (died, spot reclaim): these
    /// count against `max_job_relaunches`; a runner GitHub gave another job does not.
    #[serde(default)]
    pub runner_failures: u32,
    /// How many times move-jobs sent this message back from the DLQ. Part of every launch
    /// token: SQS counts receives from 1 again on each trip, and EC2 replays a token's first
    /// answer, so a trip without a number of its own would get its first trip's answers.
    #[serde(default)]
    pub trip: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message body is not JSON: {0}")]
    NotJson(String),
    #[error(
        "message version {0} is unknown to this build (it reads version {MESSAGE_VERSION}); deploy the matching create-runner"
    )]
    UnknownVersion(u64),
    #[error("message has no `version`; it was not written by the sophons webhook")]
    NoVersion,
    #[error("message version {MESSAGE_VERSION} is malformed: {0}")]
    Malformed(String),
}

impl JobMessage {
    /// When GitHub queued the job (its `created_at`, else when the webhook took it).
    pub fn queued_at(&self) -> Option<std::time::SystemTime> {
        [&self.created_at, &self.received_at]
            .into_iter()
            .find_map(|at| parse_rfc3339(at))
    }

    /// How long ago GitHub queued the job; None when unknown or in the future.
    pub fn age(&self) -> Option<std::time::Duration> {
        std::time::SystemTime::now().duration_since(self.queued_at()?).ok()
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a JobMessage always serialises")
    }

    pub fn decode(body: &str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Version {
            version: Option<u64>,
        }
        let version: Version = serde_json::from_str(body).map_err(|error| DecodeError::NotJson(error.to_string()))?;
        match version.version {
            None => Err(DecodeError::NoVersion),
            Some(v) if v == u64::from(MESSAGE_VERSION) => {
                serde_json::from_str(body).map_err(|error| DecodeError::Malformed(error.to_string()))
            }
            Some(other) => Err(DecodeError::UnknownVersion(other)),
        }
    }
}

/// Now, in RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// A moment in RFC 3339, with milliseconds when it has any.
pub fn rfc3339(at: std::time::SystemTime) -> String {
    use aws_sdk_sqs::primitives::{DateTime, DateTimeFormat};
    DateTime::from(at).fmt(DateTimeFormat::DateTime).unwrap_or_default()
}

/// An RFC 3339 moment (GitHub's `created_at`, our `received_at`) as a time; `None` if it is not one.
pub fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    use aws_sdk_sqs::primitives::{DateTime, DateTimeFormat};
    DateTime::from_str(text, DateTimeFormat::DateTime)
        .ok()
        .and_then(|at| std::time::SystemTime::try_from(at).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> JobMessage {
        JobMessage {
            version: MESSAGE_VERSION,
            delivery_id: "d-1".into(),
            job_id: 42,
            run_id: 7,
            run_attempt: 1,
            repository: "my-org/app".into(),
            owner: "my-org".into(),
            name: "app".into(),
            labels: vec!["self-hosted".into(), "template_cpu".into()],
            template: "template_cpu".into(),
            workflow_name: "CI".into(),
            job_name: "build".into(),
            job_url: "https://github.com/my-org/app/actions/runs/7/job/42".into(),
            created_at: "2026-11-28T06:00:00Z".into(),
            received_at: "2026-11-28T06:00:01.000Z".into(),
            relaunches: 0,
            runner_failures: 0,
            trip: 0,
        }
    }

    #[test]
    fn a_message_survives_encoding() {
        let message = sample();
        assert_eq!(JobMessage::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn an_unknown_version_is_refused_by_number() {
        let body = sample().encode().replace("\"version\":1", "\"version\":2");
        assert_eq!(JobMessage::decode(&body), Err(DecodeError::UnknownVersion(2)));
    }

    #[test]
    fn a_body_without_version_or_not_json_is_refused() {
        assert_eq!(JobMessage::decode("{\"job_id\":1}"), Err(DecodeError::NoVersion));
        assert!(matches!(JobMessage::decode("hello"), Err(DecodeError::NotJson(_))));
        assert!(matches!(
            JobMessage::decode("{\"version\":1}"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn received_at_is_rfc3339() {
        let now = now_rfc3339();
        assert!(now.len() >= 20 && now.ends_with('Z') && now.contains('T'), "{now}");
    }
}
