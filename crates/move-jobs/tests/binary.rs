//! A message received 3 times lands in moto's DLQ through the real redrive policy, and the built
//! `move-jobs` binary, run as Lambda runs it, brings it back (and drops what GitHub finished). With
//! `github.webhook_id` set, the same run asks GitHub to redeliver the webhook's failed deliveries.

use std::path::Path;

use sophons_core::job::{JobMessage, MESSAGE_VERSION, now_rfc3339};
use testkit::runtime_api::LambdaProcess;
use testkit::stack::{Stack, scheduled_event};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_move-jobs"))
}

fn message(job_id: u64) -> String {
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
        template: "cpu".into(),
        workflow_name: String::new(),
        job_name: String::new(),
        job_url: String::new(),
        created_at: now_rfc3339(),
        received_at: now_rfc3339(),
        relaunches: 0,
        runner_failures: 0,
        trip: 0,
    }
    .encode()
}

async fn bodies(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<String> {
    let output = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    output
        .messages()
        .iter()
        .filter_map(|m| m.body().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_job_that_failed_three_receives_reaches_the_dlq_and_move_jobs_brings_it_back() {
    let stack = Stack::create(&[("cpu", 5)]).await;
    let sqs = aws_sdk_sqs::Client::new(&stack.sdk);
    for job_id in [1, 2] {
        sqs.send_message()
            .queue_url(&stack.queue_url)
            .message_body(message(job_id))
            .send()
            .await
            .unwrap();
    }
    stack.github.set_job_status("my-org/app", 2, "completed");
    // Three receives that are handed back (visibility 0, as a failed batch item comes back).
    for _ in 0..3 {
        let received = sqs
            .receive_message()
            .queue_url(&stack.queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        for m in received.messages() {
            sqs.change_message_visibility()
                .queue_url(&stack.queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
        }
    }
    assert!(
        bodies(&sqs, &stack.queue_url).await.is_empty(),
        "the fourth receive finds them gone"
    );
    let mut in_dlq = 0;
    for _ in 0..3 {
        let received = sqs
            .receive_message()
            .queue_url(&stack.dlq_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        in_dlq += received.messages().len();
        for m in received.messages() {
            sqs.change_message_visibility()
                .queue_url(&stack.dlq_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
        }
        if in_dlq >= 2 {
            break;
        }
    }
    assert_eq!(in_dlq, 2, "both jobs are in the DLQ after 3 receives");

    let mut lambda = LambdaProcess::spawn(binary(), "move-jobs", &stack.env).await;
    let answer = lambda.invoke(scheduled_event("sophons-move-jobs")).await.unwrap();
    assert_eq!(answer["moved"], 1, "{answer}");
    assert_eq!(answer["dropped"]["not_queued"], 1, "{answer}");
    let back = bodies(&sqs, &stack.queue_url).await;
    assert_eq!(back.len(), 1);
    assert_eq!(JobMessage::decode(&back[0]).unwrap().job_id, 1);
    assert!(bodies(&sqs, &stack.dlq_url).await.is_empty());
    let logs = lambda.settled_logs().await;
    assert!(logs.contains("move-jobs: moved 1"), "{logs}");
    // What CloudWatch counts of it (EMF): each job found in the DLQ, by what became of it.
    use sophons_core::metrics::{documents, read};
    let data = read(&documents(logs.lines())).unwrap();
    let mut reasons: Vec<_> = data
        .iter()
        .filter(|d| d.name == "DeadLetters")
        .inspect(|d| assert_eq!((d.unit.as_str(), d.value), ("Count", 1.0)))
        .map(|d| {
            d.dimensions
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
                .join(",")
                + "="
                + &d.dimensions.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>()[2..].join(",")
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{data:?}");
    assert!(
        reasons.iter().all(|r| r.starts_with("deployment,template,reason=")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.ends_with("=moved")) && reasons.iter().any(|r| r.ends_with("=not_queued")),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn with_a_webhook_id_move_jobs_asks_github_to_redeliver_a_failed_delivery_and_reports_it() {
    let stack = Stack::create(&[("cpu", 5)]).await;
    let mut document = stack.document.clone();
    document["github"]["webhook_id"] = 31.into();
    let ssm = aws_sdk_ssm::Client::new(&stack.sdk);
    ssm.put_parameter()
        .name(format!("/{}/config", stack.deployment))
        .value(document.to_string())
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    let hook = testkit::github::org_hook("my-org", 31);
    let payload = serde_json::json!({"action": "queued"});
    stack.github.add_hook_delivery(
        &hook,
        "guid-1",
        "workflow_job",
        500,
        std::time::Duration::from_secs(600),
        payload,
    );

    let mut lambda = LambdaProcess::spawn(binary(), "move-jobs", &stack.env).await;
    let answer = lambda.invoke(scheduled_event("sophons-move-jobs")).await.unwrap();
    assert_eq!(answer["redelivery"]["redelivered"], 1, "{answer}");
    assert_eq!(answer["redelivery"]["listed"], 1, "{answer}");
    assert_eq!(answer["moved"], 0, "{answer}");
    assert_eq!(
        stack
            .github
            .requests_to("POST", "/orgs/my-org/hooks/31/deliveries/1/attempts")
            .len(),
        1
    );
    let logs = lambda.settled_logs().await;
    assert!(logs.contains("\"outcome\":\"redelivered\""), "{logs}");
}
