//! move-jobs: brings jobs back from the dead-letter queue, dropping those GitHub no longer has
//! queued or that are past GitHub's 24-hour queue limit. A message is sent to the jobs queue
//! before it is deleted from the DLQ, never the other way round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Config;
use crate::github::{Github, GithubError, JobStatus};
use crate::job::JobMessage;
use crate::metrics::{Emf, name as metric};
use crate::queue::Queue;

/// GitHub cancels a job left queued for 24 hours.
pub const QUEUE_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveReport {
    pub moved: usize,
    /// Dropped messages by reason: `not_queued`, `expired`, `gone`, `unreadable`.
    pub dropped: BTreeMap<&'static str, usize>,
    /// Messages left in the DLQ for a later run (GitHub unreachable, a send that failed).
    pub left: usize,
    /// Whether it stopped for the Lambda deadline with messages possibly still waiting.
    pub out_of_time: bool,
}

pub struct MoveJobs {
    config: Arc<Config>,
    queue: Arc<dyn Queue>,
    github: Arc<dyn Github>,
}

impl MoveJobs {
    pub fn new(config: Arc<Config>, queue: Arc<dyn Queue>, github: Arc<dyn Github>) -> Self {
        Self { config, queue, github }
    }

    /// Long because receiving, deciding, sending back and deleting a batch are one loop bounded by the
    /// deadline; each message's decision is `decide`.
    pub async fn run(&self, deadline: Instant) -> RedriveReport {
        let mut report = RedriveReport::default();
        let stop_at = deadline.checked_sub(DEADLINE_MARGIN).unwrap_or(deadline);
        loop {
            if Instant::now() >= stop_at {
                report.out_of_time = true;
                break;
            }
            let batch = match self.queue.receive(&self.config.dlq_url, 10, 1).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "cannot read the DLQ; move-jobs stops here");
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            for message in batch {
                // Every job found here is counted by what happened to it (`DeadLetters`).
                let template = JobMessage::decode(&message.body).map_or_else(|_| "unknown".to_string(), |m| m.template);
                let counted = |reason: &str| {
                    Emf::new(&self.config.deployment)
                        .dimension("template", &template)
                        .dimension("reason", reason)
                        .count(metric::DEAD_LETTERS, 1)
                        .emit();
                };
                match self.decide(&message.body).await {
                    Decision::Move(mut job) => {
                        counted("moved");
                        // A trip of its own: receives count from 1 again, and the launch tokens
                        // must not be the first trip's (EC2 would replay that trip's answers).
                        job.trip += 1;
                        match self
                            .queue
                            .send(&self.config.queue_url, &job.encode(), &message.delivery_id)
                            .await
                        {
                            Ok(_) => match self.queue.delete(&self.config.dlq_url, &message.receipt_handle).await {
                                Ok(()) => report.moved += 1,
                                // Sent but not deleted: it comes back to the DLQ reader later, and
                                // create-runner's "already served?" keeps it from a second instance.
                                Err(error) => {
                                    tracing::warn!(%error, "moved a job but could not delete it from the DLQ");
                                    report.moved += 1;
                                }
                            },
                            Err(error) => {
                                tracing::error!(%error, "cannot send to the jobs queue; the job stays in the DLQ");
                                report.left += 1;
                            }
                        }
                    }
                    Decision::Drop { reason, why, job_id } => {
                        counted(reason);
                        tracing::warn!(job_id, reason, "job dropped from the DLQ: {why}");
                        if self
                            .queue
                            .delete(&self.config.dlq_url, &message.receipt_handle)
                            .await
                            .is_ok()
                        {
                            *report.dropped.entry(reason).or_default() += 1;
                        } else {
                            report.left += 1;
                        }
                    }
                    Decision::Leave { why, job_id } => {
                        counted("left");
                        tracing::warn!(job_id, "job left in the DLQ for the next run: {why}");
                        report.left += 1;
                    }
                }
            }
        }
        let dropped: usize = report.dropped.values().sum();
        tracing::info!(
            moved = report.moved,
            dropped,
            dropped_not_queued = report.dropped.get("not_queued").copied().unwrap_or(0),
            dropped_expired = report.dropped.get("expired").copied().unwrap_or(0),
            dropped_gone = report.dropped.get("gone").copied().unwrap_or(0),
            dropped_unreadable = report.dropped.get("unreadable").copied().unwrap_or(0),
            left = report.left,
            out_of_time = report.out_of_time,
            "move-jobs: moved {}, dropped {dropped}, left {}",
            report.moved,
            report.left
        );
        report
    }

    async fn decide(&self, body: &str) -> Decision {
        let message = match JobMessage::decode(body) {
            Ok(message) => message,
            Err(error) => {
                return Decision::Drop {
                    reason: "unreadable",
                    why: error.to_string(),
                    job_id: 0,
                };
            }
        };
        let job_id = message.job_id;
        if let Some(age) = message.age()
            && age > QUEUE_LIMIT
        {
            return Decision::Drop {
                reason: "expired",
                why: format!(
                    "job {job_id} was queued {} h ago; GitHub cancels jobs after 24 h",
                    age.as_secs() / 3600
                ),
                job_id,
            };
        }
        match self.github.job_status(&message.repository, job_id).await {
            Ok(JobStatus::Queued) => Decision::Move(Box::new(message)),
            Ok(JobStatus::Other(status)) => Decision::Drop {
                reason: "not_queued",
                why: format!("job {job_id} is {status}"),
                job_id,
            },
            Err(GithubError::NotFound(_)) => Decision::Drop {
                reason: "gone",
                why: format!("GitHub has no job {job_id} in {}", message.repository),
                job_id,
            },
            Err(error) => Decision::Leave {
                why: format!("cannot ask GitHub about job {job_id}: {error}"),
                job_id,
            },
        }
    }
}

enum Decision {
    Move(Box<JobMessage>),
    Drop {
        reason: &'static str,
        why: String,
        job_id: u64,
    },
    Leave {
        why: String,
        job_id: u64,
    },
}
