//! Every row of the webhook's table, driven through an API Gateway v2 event over the fake queue.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::{Value, json};
use sophons_core::fakes::FakeQueue;
use sophons_core::interruptions::Interruptions;
use sophons_core::job::JobMessage;
use sophons_core::queue::QueueError;
use sophons_core::webhook::{Webhook, verify_signature};

const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/sophons-jobs";

fn webhook_with(config: Value) -> (Webhook, Arc<FakeQueue>) {
    let queue = Arc::new(FakeQueue::default());
    let config = sophons_core::Config::parse(&config.to_string()).unwrap();
    (Webhook::new(Arc::new(config), SECRET, queue.clone()), queue)
}

fn webhook() -> (Webhook, Arc<FakeQueue>) {
    webhook_with(config_json(QUEUE))
}

async fn send(webhook: &Webhook, event: Value) -> (u16, Value) {
    let response = webhook.handle(request(&event)).await;
    (response.status().as_u16(), body_of(&response))
}

async fn send_queued(webhook: &Webhook, payload: &Value) -> (u16, Value) {
    let bytes = payload.to_string().into_bytes();
    send(webhook, signed("workflow_job", "delivery-1", &bytes)).await
}

#[test]
fn githubs_documented_signature_test_vector_passes() {
    let header = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(
        verify_signature(SECRET.as_bytes(), b"Hello, World!", Some(header)),
        Ok(())
    );
    assert!(verify_signature(b"another secret", b"Hello, World!", Some(header)).is_err());
}

#[tokio::test]
async fn a_signed_queued_job_is_enqueued_once_naming_template_and_job() {
    let (webhook, queue) = webhook();
    let (status, body) = send_queued(&webhook, &queued_payload(&["self-hosted", "template_cpu"])).await;
    assert_eq!(status, 202);
    assert_eq!(body["decision"], "enqueued");
    assert_eq!(body["template"], "template_cpu");
    assert_eq!(body["job_id"], 289782451);
    let sent = queue.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].queue_url, QUEUE);
    assert_eq!(sent[0].delivery_id, "delivery-1");
    let message = JobMessage::decode(&sent[0].body).unwrap();
    assert_eq!(message.job_id, 289782451);
    assert_eq!(message.run_id, 2202229078);
    assert_eq!(message.run_attempt, 1);
    assert_eq!(message.repository, "my-org/app");
    assert_eq!((message.owner.as_str(), message.name.as_str()), ("my-org", "app"));
    assert_eq!(message.template, "template_cpu");
    assert_eq!(message.labels, vec!["self-hosted", "template_cpu"]);
    assert_eq!(message.workflow_name, "CodeQL");
    assert_eq!(message.job_name, "update");
    assert_eq!(message.created_at, "2021-09-13T02:21:13Z");
    assert_eq!(message.delivery_id, "delivery-1");
}

#[tokio::test]
async fn a_base64_encoded_body_is_verified_after_decoding() {
    let (webhook, queue) = webhook();
    let payload = queued_payload(&["self-hosted", "linux", "gpu"])
        .to_string()
        .into_bytes();
    let signature = sophons_core::webhook::sign(SECRET.as_bytes(), &payload);
    let event = testkit::apigw::event(
        "POST",
        "/webhook",
        &[
            ("x-github-event", "workflow_job"),
            ("x-github-delivery", "d-64"),
            ("x-hub-signature-256", &signature),
        ],
        &payload,
        true,
    );
    let (status, body) = send(&webhook, event).await;
    assert_eq!((status, body["template"].as_str()), (202, Some("template_gpu")));
    assert_eq!(queue.sent().len(), 1);
}

#[tokio::test]
async fn a_missing_malformed_or_wrong_signature_is_refused_with_401() {
    let (webhook, queue) = webhook();
    let payload = queued_payload(&["self-hosted"]).to_string().into_bytes();
    let good = sophons_core::webhook::sign(SECRET.as_bytes(), &payload);
    let wrong = sophons_core::webhook::sign(b"not the secret", &payload);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![],
        vec![("x-hub-signature-256", "sha256=zz")],
        vec![("x-hub-signature-256", "sha1=0123")],
        vec![("x-hub-signature-256", &good[..good.len() - 2])],
        vec![("x-hub-signature-256", &wrong)],
        vec![("x-hub-signature", "sha1=0000000000000000000000000000000000000000")],
    ];
    for signature in cases {
        let mut headers = vec![("x-github-event", "workflow_job"), ("x-github-delivery", "d")];
        headers.extend(signature.iter().copied());
        let (status, body) = send(
            &webhook,
            testkit::apigw::event("POST", "/webhook", &headers, &payload, false),
        )
        .await;
        assert_eq!(
            (status, body["decision"].as_str()),
            (401, Some("unauthorized")),
            "{signature:?}"
        );
    }
    // A body changed after signing.
    let mut tampered = payload.clone();
    tampered[10] ^= 1;
    let headers = [
        ("x-github-event", "workflow_job"),
        ("x-github-delivery", "d"),
        ("x-hub-signature-256", good.as_str()),
    ];
    let (status, _) = send(
        &webhook,
        testkit::apigw::event("POST", "/webhook", &headers, &tampered, false),
    )
    .await;
    assert_eq!(status, 401);
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_before_anything_else() {
    let (webhook, queue) = webhook();
    let mut payload = queued_payload(&["self-hosted"]);
    payload["padding"] = json!("x".repeat(70_000));
    let (status, body) = send_queued(&webhook, &payload).await;
    assert_eq!((status, body["decision"].as_str()), (413, Some("too_large")));
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn a_ping_is_answered_200() {
    let (webhook, queue) = webhook();
    let payload = testkit::fixture("ping").to_string().into_bytes();
    let (status, body) = send(&webhook, signed("ping", "d-ping", &payload)).await;
    assert_eq!((status, body["decision"].as_str()), (200, Some("pong")));
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn other_events_and_actions_are_ignored_with_202() {
    let (webhook, queue) = webhook();
    let push = br#"{"ref":"refs/heads/main"}"#;
    let (status, body) = send(&webhook, signed("push", "d-push", push)).await;
    assert_eq!((status, body["decision"].as_str()), (202, Some("ignored")));
    for fixture in [
        "workflow_job.completed.success.with-organization",
        "workflow_job.completed.failure.with-organization",
        "workflow_job.in_progress",
        "workflow_job.waiting",
    ] {
        let payload = testkit::fixture(fixture).to_string().into_bytes();
        let (status, body) = send(&webhook, signed("workflow_job", "d", &payload)).await;
        assert_eq!((status, body["decision"].as_str()), (202, Some("ignored")), "{fixture}");
        assert!(body["reason"].as_str().unwrap().contains("needs no runner"), "{body}");
    }
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn a_queued_job_no_template_satisfies_is_ignored_saying_why() {
    let (webhook, queue) = webhook();
    // GitHub's own example asks for `ubuntu-latest`: a GitHub-hosted job.
    let hosted = testkit::fixture("workflow_job.queued");
    let mut hosted = hosted.clone();
    hosted["repository"]["owner"]["login"] = json!("my-org");
    hosted["repository"]["private"] = json!(true);
    let (status, body) = send_queued(&webhook, &hosted).await;
    assert_eq!((status, body["decision"].as_str()), (202, Some("ignored")));
    assert!(body["reason"].as_str().unwrap().contains("self-hosted"), "{body}");

    let (status, body) = send_queued(&webhook, &queued_payload(&["self-hosted", "linux", "windows"])).await;
    assert_eq!((status, body["decision"].as_str()), (202, Some("ignored")));
    assert!(body["reason"].as_str().unwrap().contains("no template"), "{body}");
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn a_repository_not_allowed_is_refused_with_403() {
    let mut listed = config_json(QUEUE);
    listed["repositories"] = json!(["my-org/other"]);
    let (restricted, restricted_queue) = webhook_with(listed);
    let (status, body) = send_queued(&restricted, &queued_payload(&["self-hosted"])).await;
    assert_eq!((status, body["decision"].as_str()), (403, Some("forbidden")));
    assert!(restricted_queue.sent().is_empty());

    let (webhook, queue) = webhook();
    let mut foreign = queued_payload(&["self-hosted"]);
    foreign["repository"]["owner"]["login"] = json!("someone-else");
    let (status, _) = send_queued(&webhook, &foreign).await;
    assert_eq!(status, 403);

    let mut public = queued_payload(&["self-hosted"]);
    public["repository"]["private"] = json!(false);
    let (status, body) = send_queued(&webhook, &public).await;
    assert_eq!(status, 403);
    assert!(body["reason"].as_str().unwrap().contains("public"), "{body}");
    assert!(queue.sent().is_empty());

    let mut open = config_json(QUEUE);
    open["allow_public_repositories"] = json!(true);
    let (open, open_queue) = webhook_with(open);
    let (status, _) = send_queued(&open, &public).await;
    assert_eq!(status, 202);
    assert_eq!(open_queue.sent().len(), 1);
}

#[tokio::test]
async fn malformed_json_or_missing_fields_are_refused_with_400() {
    let (webhook, queue) = webhook();
    let (status, body) = send(&webhook, signed("workflow_job", "d", b"{not json")).await;
    assert_eq!((status, body["decision"].as_str()), (400, Some("bad_request")));
    let (status, _) = send(&webhook, signed("workflow_job", "d", b"[1,2]")).await;
    assert_eq!(status, 400);
    let (status, _) = send(&webhook, signed("workflow_job", "d", br#"{"workflow_job":{}}"#)).await;
    assert_eq!(status, 400, "no action");
    for field in ["id", "run_id", "labels"] {
        let mut payload = queued_payload(&["self-hosted"]);
        payload["workflow_job"].as_object_mut().unwrap().remove(field);
        let (status, body) = send_queued(&webhook, &payload).await;
        assert_eq!(status, 400, "{field}");
        assert!(body["reason"].as_str().unwrap().contains(field), "{body}");
    }
    for pointer in [
        ("repository", None),
        ("repository", Some("private")),
        ("repository", Some("full_name")),
    ] {
        let mut payload = queued_payload(&["self-hosted"]);
        match pointer {
            (object, None) => {
                payload.as_object_mut().unwrap().remove(object);
            }
            (object, Some(field)) => {
                payload[object].as_object_mut().unwrap().remove(field);
            }
        }
        let (status, _) = send_queued(&webhook, &payload).await;
        assert_eq!(status, 400, "{pointer:?}");
    }
    let mut wrong_type = queued_payload(&["self-hosted"]);
    wrong_type["workflow_job"]["id"] = json!("289782451");
    assert_eq!(send_queued(&webhook, &wrong_type).await.0, 400);
    // A signed delivery with no event header.
    let payload = queued_payload(&["self-hosted"]).to_string().into_bytes();
    let signature = sophons_core::webhook::sign(SECRET.as_bytes(), &payload);
    let event = testkit::apigw::event(
        "POST",
        "/webhook",
        &[("x-hub-signature-256", &signature)],
        &payload,
        false,
    );
    assert_eq!(send(&webhook, event).await.0, 400);
    assert!(queue.sent().is_empty());
}

#[tokio::test]
async fn a_queue_that_refuses_the_message_gives_500() {
    let (webhook, queue) = webhook();
    queue.refuse_with(QueueError::Refused {
        queue_url: QUEUE.into(),
        reason: "AccessDenied".into(),
    });
    let (status, body) = send_queued(&webhook, &queued_payload(&["self-hosted"])).await;
    assert_eq!((status, body["decision"].as_str()), (500, Some("queue_failed")));
    assert!(body["reason"].as_str().unwrap().contains("redeliver"), "{body}");
}

#[tokio::test]
async fn another_path_is_404_and_another_method_is_405() {
    let (webhook, queue) = webhook();
    let (status, _) = send(&webhook, testkit::apigw::event("POST", "/hooks", &[], b"{}", false)).await;
    assert_eq!(status, 404);
    let response = webhook
        .handle(request(&testkit::apigw::event("GET", "/webhook", &[], b"", false)))
        .await;
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    // A named stage prefixes the path; the webhook still answers there.
    let payload = queued_payload(&["self-hosted"]).to_string().into_bytes();
    let mut event = signed("workflow_job", "d", &payload);
    event["rawPath"] = json!("/prod/webhook");
    assert_eq!(send(&webhook, event).await.0, 202);
    assert_eq!(queue.sent().len(), 1);
}

#[tokio::test]
async fn a_redelivery_is_enqueued_again_with_the_same_delivery_id() {
    // The webhook does not deduplicate: create-runner's "already served?" check does, from EC2 tags.
    let (webhook, queue) = webhook();
    let payload = queued_payload(&["self-hosted"]);
    send_queued(&webhook, &payload).await;
    send_queued(&webhook, &payload).await;
    let sent = queue.sent();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].delivery_id, sent[1].delivery_id);
}

#[test]
fn a_job_of_ours_that_starts_and_ends_gives_its_start_and_duration_from_githubs_times() {
    use sophons_core::metrics::read;
    let (webhook, _) = webhook();
    let ours = |name: &str| {
        let mut payload = testkit::fixture(name);
        payload["workflow_job"]["labels"] = json!(["self-hosted", "linux"]);
        payload.to_string().into_bytes()
    };
    let metric = |body: &[u8]| {
        let document = webhook
            .progress_of(body)
            .map(|emf| emf.to_json(std::time::SystemTime::now()));
        document.map(|d| read(&[d]).unwrap().remove(0))
    };
    // in_progress: created 03:31:29, started 03:31:36.
    let started = metric(&ours("workflow_job.in_progress.with-queued-steps")).unwrap();
    assert_eq!(
        (started.name.as_str(), started.unit.as_str(), started.value),
        ("JobStartedAfter", "Seconds", 7.0)
    );
    assert_eq!(
        started.dimensions[1],
        ("template".to_string(), "template_cpu".to_string())
    );
    // completed: started 10:34:58, completed 10:38:16.
    let ended = metric(&ours("workflow_job.completed.success.with-organization")).unwrap();
    assert_eq!((ended.name.as_str(), ended.value), ("JobDuration", 198.0));
    // Not ours (GitHub-hosted labels), or an action that says nothing about time: nothing.
    let hosted = testkit::fixture("workflow_job.completed.success.with-organization").to_string();
    assert!(metric(hosted.as_bytes()).is_none());
    assert!(metric(&ours("workflow_job.waiting")).is_none());
    assert!(metric(&ours("workflow_job.queued")).is_none());
}

/// GitHub's documented `in_progress` delivery, as if runner `runner` of ours took it, in
/// `my-org/app`. The field is in GitHub's own example (`workflow_job.runner_name`).
fn started_on(runner: &str) -> Vec<u8> {
    let mut payload = testkit::fixture("workflow_job.in_progress");
    payload["workflow_job"]["runner_name"] = json!(runner);
    payload["repository"]["full_name"] = json!("my-org/app");
    payload["repository"]["owner"]["login"] = json!("my-org");
    payload.to_string().into_bytes()
}

fn webhook_keeping_runs() -> (Webhook, Arc<sophons_core::interruptions::FakeInterruptions>) {
    let store = Arc::new(sophons_core::interruptions::FakeInterruptions::default());
    let (webhook, _) = webhook();
    (webhook.with_interruptions(store.clone()), store)
}

#[tokio::test]
async fn a_job_started_on_a_runner_of_ours_is_kept_with_its_run_and_name() {
    let (webhook, store) = webhook_keeping_runs();
    let payload = started_on("sophons-i-0123456789abcdef0");
    let (status, body) = send(&webhook, signed("workflow_job", "d", &payload)).await;
    assert_eq!((status, body["decision"].as_str()), (202, Some("recorded")), "{body}");
    let fixture = testkit::fixture("workflow_job.in_progress");
    let ran = store.ran_on("i-0123456789abcdef0").await.unwrap().expect("kept");
    assert_eq!(ran.job_id, fixture["workflow_job"]["id"].as_u64().unwrap());
    assert_eq!(ran.run_id, fixture["workflow_job"]["run_id"].as_u64().unwrap());
    assert_eq!(ran.repository, "my-org/app");
    assert_eq!(ran.job_name, fixture["workflow_job"]["name"].as_str().unwrap());
    assert_eq!(ran.run_attempt, 1);
}

#[tokio::test]
async fn a_job_started_on_a_runner_not_of_this_deployment_is_not_kept() {
    let (webhook, store) = webhook_keeping_runs();
    for runner in [
        "GitHub Actions 5",
        "other-deployment-i-0123456789abcdef0",
        "sophons-i-not-an-instance",
        "sophons-i-0123456789abcdef0/../x",
        "sophons-",
    ] {
        let (status, body) = send(&webhook, signed("workflow_job", "d", &started_on(runner))).await;
        assert_eq!(
            (status, body["decision"].as_str()),
            (202, Some("ignored")),
            "{runner}: {body}"
        );
    }
    assert_eq!(store.ran_on("i-0123456789abcdef0").await.unwrap(), None);
}

#[tokio::test]
async fn a_job_started_on_a_runner_of_ours_in_a_repository_not_the_owners_is_refused_and_not_kept() {
    let (webhook, store) = webhook_keeping_runs();
    let mut payload: Value = serde_json::from_slice(&started_on("sophons-i-0123456789abcdef0")).unwrap();
    payload["repository"]["full_name"] = json!("someone-else/app");
    let (status, body) = send(&webhook, signed("workflow_job", "d", payload.to_string().as_bytes())).await;
    assert_eq!((status, body["decision"].as_str()), (403, Some("forbidden")), "{body}");
    assert_eq!(store.ran_on("i-0123456789abcdef0").await.unwrap(), None);
}

#[tokio::test]
async fn a_started_job_that_cannot_be_kept_is_answered_500_so_move_jobs_redelivers_it() {
    use sophons_core::interruptions::InterruptionsError;
    let (webhook, store) = webhook_keeping_runs();
    store.fail_next([InterruptionsError::Failed {
        table: "sophons-interruptions".into(),
        reason: "ProvisionedThroughputExceededException".into(),
    }]);
    let payload = started_on("sophons-i-0123456789abcdef0");
    let (status, body) = send(&webhook, signed("workflow_job", "d", &payload)).await;
    assert_eq!(
        (status, body["decision"].as_str()),
        (500, Some("record_failed")),
        "{body}"
    );
    assert!(body["reason"].as_str().unwrap().contains("redeliver"), "{body}");
    // The redelivery is kept.
    let (status, _) = send(&webhook, signed("workflow_job", "d", &payload)).await;
    assert_eq!(status, 202);
    assert!(store.ran_on("i-0123456789abcdef0").await.unwrap().is_some());
}

#[tokio::test]
async fn a_started_job_of_our_runner_without_its_ids_is_refused_with_400() {
    let (webhook, _) = webhook_keeping_runs();
    let mut payload: Value = serde_json::from_slice(&started_on("sophons-i-0123456789abcdef0")).unwrap();
    payload["workflow_job"]["run_id"] = Value::Null;
    let (status, body) = send(&webhook, signed("workflow_job", "d", payload.to_string().as_bytes())).await;
    assert_eq!(
        (status, body["decision"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
}

#[tokio::test]
async fn without_the_interruptions_table_a_started_job_is_only_ignored() {
    let (webhook, _) = webhook();
    let payload = started_on("sophons-i-0123456789abcdef0");
    let (status, body) = send(&webhook, signed("workflow_job", "d", &payload)).await;
    assert_eq!((status, body["decision"].as_str()), (202, Some("ignored")), "{body}");
}
