//! move-jobs over the fakes: what goes back to the jobs queue, what is dropped and why.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sophons_core::config::Config;
use sophons_core::fakes::{FakeGithub, FakeQueue};
use sophons_core::github::GithubError;
use sophons_core::job::{JobMessage, MESSAGE_VERSION, now_rfc3339};
use sophons_core::queue::{Queue, QueueError};
use sophons_core::redrive::MoveJobs;
use tokio::time::Instant;

const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs";
const DLQ: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs-dlq";

fn setup() -> (MoveJobs, Arc<FakeQueue>, Arc<FakeGithub>) {
    let config = Arc::new(Config::parse(&common::config_json(QUEUE).to_string()).unwrap());
    let queue = Arc::new(FakeQueue::default());
    let github = Arc::new(FakeGithub::new());
    (MoveJobs::new(config, queue.clone(), github.clone()), queue, github)
}

fn message(job_id: u64, created_at: &str) -> String {
    JobMessage {
        version: MESSAGE_VERSION,
        delivery_id: format!("d-{job_id}"),
        job_id,
        run_id: 1,
        run_attempt: 1,
        repository: "my-org/app".into(),
        owner: "my-org".into(),
        name: "app".into(),
        labels: vec!["self-hosted".into()],
        template: "template_cpu".into(),
        workflow_name: String::new(),
        job_name: String::new(),
        job_url: String::new(),
        created_at: created_at.into(),
        received_at: now_rfc3339(),
        relaunches: 0,
        runner_failures: 0,
        trip: 0,
    }
    .encode()
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(300)
}

#[tokio::test]
async fn a_job_still_queued_moves_back_to_the_jobs_queue() {
    let (move_jobs, queue, _) = setup();
    let body = message(1, &now_rfc3339());
    queue.send(DLQ, &body, "d-1").await.unwrap();
    let report = move_jobs.run(far()).await;
    assert_eq!(report.moved, 1);
    let moved = JobMessage::decode(&queue.messages(QUEUE)[0]).unwrap();
    let mut expected = JobMessage::decode(&body).unwrap();
    expected.trip = 1;
    assert_eq!(
        moved, expected,
        "the same job, on a trip of its own (its launch tokens are new)"
    );
    assert!(queue.messages(DLQ).is_empty());
    assert_eq!(queue.sent().last().unwrap().delivery_id, "d-1");
}

#[tokio::test]
async fn jobs_github_no_longer_has_queued_or_too_old_are_dropped_by_reason() {
    let (move_jobs, queue, github) = setup();
    github.set_job_status("my-org/app", 2, "completed");
    queue.send(DLQ, &message(2, &now_rfc3339()), "d").await.unwrap();
    queue.send(DLQ, &message(3, "2026-01-01T00:00:00Z"), "d").await.unwrap();
    queue.send(DLQ, "not a job", "d").await.unwrap();
    github.set_job_status("my-org/app", 4, "queued");
    queue.send(DLQ, &message(4, &now_rfc3339()), "d").await.unwrap();
    let report = move_jobs.run(far()).await;
    assert_eq!(report.moved, 1);
    assert_eq!(report.dropped.get("not_queued"), Some(&1));
    assert_eq!(report.dropped.get("expired"), Some(&1));
    assert_eq!(report.dropped.get("unreadable"), Some(&1));
    assert!(queue.messages(DLQ).is_empty());
    github.set_default_status(None);
    queue.send(DLQ, &message(5, &now_rfc3339()), "d").await.unwrap();
    assert_eq!(move_jobs.run(far()).await.dropped.get("gone"), Some(&1));
}

#[tokio::test]
async fn a_job_github_cannot_be_asked_about_stays_in_the_dlq() {
    let (move_jobs, queue, github) = setup();
    github.fail_job_status(GithubError::Unavailable("503".into()));
    queue.send(DLQ, &message(6, &now_rfc3339()), "d").await.unwrap();
    let report = move_jobs.run(far()).await;
    assert_eq!((report.moved, report.left), (0, 1));
    assert_eq!(queue.messages(DLQ).len(), 1);
}

#[tokio::test]
async fn a_failed_send_never_deletes_the_message_from_the_dlq() {
    let (move_jobs, queue, _) = setup();
    queue.send(DLQ, &message(7, &now_rfc3339()), "d").await.unwrap();
    queue.refuse_with(QueueError::Refused {
        queue_url: QUEUE.into(),
        reason: "AccessDenied".into(),
    });
    let report = move_jobs.run(far()).await;
    assert_eq!((report.moved, report.left), (0, 1));
    assert_eq!(queue.messages(DLQ).len(), 1, "send before delete");
}

#[tokio::test]
async fn it_stops_before_the_lambda_deadline() {
    let (move_jobs, queue, _) = setup();
    queue.send(DLQ, &message(8, &now_rfc3339()), "d").await.unwrap();
    let report = move_jobs.run(Instant::now() + Duration::from_secs(5)).await;
    assert!(report.out_of_time);
    assert_eq!(report.moved, 0);
    assert_eq!(queue.messages(DLQ).len(), 1);
}
