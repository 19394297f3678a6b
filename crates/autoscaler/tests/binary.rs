//! The built `autoscaler` binary run as Lambda runs it: behind a Runtime API endpoint, reading its
//! config document and secret from moto's SSM, sending to moto's SQS, answering API Gateway v2 events.

use std::path::Path;

use serde_json::{Value, json};
use testkit::moto;
use testkit::runtime_api::LambdaProcess;

const SECRET: &str = "binary-test-webhook-secret-7f3a";

struct Deployment {
    queue_url: String,
    env: Vec<(&'static str, String)>,
    sqs: aws_sdk_sqs::Client,
    interruptions: sophons_core::interruptions::DynamoInterruptions,
}

async fn deploy() -> Deployment {
    let sdk = moto::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let prefix = moto::unique("bin");
    let queue_url = sqs
        .create_queue()
        .queue_name(&prefix)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let interruptions_table = moto::interruptions_table(&sdk, &format!("{prefix}-interruptions")).await;
    let secret_param = format!("/{prefix}/github/webhook-secret");
    ssm.put_parameter()
        .name(&secret_param)
        .value(SECRET)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let document = json!({
        "deployment": "sophons",
        "queue_url": queue_url,
        "dlq_url": format!("{queue_url}-dlq"),
        "webhook_secret_param": secret_param,
        "slots_table": "sophons-slots",
        "interruptions_table": interruptions_table,
        "max_body_bytes": 65536,
        "github": { "owner": "my-org", "scope": "org", "token_param": "/sophons/github/token" },
        "runner_script": { "bucket": "sophons-scripts", "key": "runner.sh" },
        "templates": {
            "template_cpu": { "labels": ["linux", "x64"], "launch_template": "sophons-template_cpu",
                              "instance_types": ["c7i.large"], "subnet_ids": ["subnet-0abc"], "max_runners": 20 }
        }
    });
    let config_param = format!("/{prefix}/config");
    ssm.put_parameter()
        .name(&config_param)
        .value(document.to_string())
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let mut env = moto::env();
    env.push(("SOPHONS_CONFIG_PARAM", config_param));
    Deployment {
        queue_url,
        env,
        sqs,
        interruptions: sophons_core::interruptions::DynamoInterruptions::new(&sdk, &interruptions_table),
    }
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_autoscaler"))
}

fn payload(labels: &[&str], private: bool) -> Vec<u8> {
    let mut payload = testkit::fixture("workflow_job.queued");
    payload["workflow_job"]["labels"] = json!(labels);
    payload["repository"]["full_name"] = json!("my-org/app");
    payload["repository"]["owner"]["login"] = json!("my-org");
    payload["repository"]["private"] = json!(private);
    payload.to_string().into_bytes()
}

fn sign(secret: &str, body: &[u8]) -> String {
    sophons_core::webhook::sign(secret.as_bytes(), body)
}

async fn status_of(lambda: &mut LambdaProcess, event: Value) -> (u16, Value) {
    let response = lambda
        .invoke(event)
        .await
        .unwrap_or_else(|e| panic!("invocation failed: {e}"));
    let body: Value = serde_json::from_str(response["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
    (response["statusCode"].as_u64().unwrap() as u16, body)
}

#[tokio::test]
async fn the_binary_answers_every_row_of_the_table_and_enqueues_only_the_served_job() {
    let deployment = deploy().await;
    let mut lambda = LambdaProcess::spawn(binary(), "autoscaler", &deployment.env).await;

    let ours = payload(&["self-hosted", "template_cpu"], true);
    let mut oversized = serde_json::from_slice::<Value>(&ours).unwrap();
    oversized["padding"] = json!("x".repeat(70_000));
    let oversized = oversized.to_string().into_bytes();
    let public = payload(&["self-hosted"], false);
    let hosted = payload(&["ubuntu-latest"], true);
    let ping = testkit::fixture("ping").to_string().into_bytes();
    let completed = testkit::fixture("workflow_job.completed.success.with-organization")
        .to_string()
        .into_bytes();
    // Later deliveries of one of our jobs: answered `ignored`, they give its start and duration.
    let ours_later = |name: &str| {
        let mut payload = testkit::fixture(name);
        payload["workflow_job"]["labels"] = json!(["self-hosted", "template_cpu"]);
        payload.to_string().into_bytes()
    };
    let started = ours_later("workflow_job.in_progress.with-queued-steps");
    let ended = ours_later("workflow_job.completed.success.with-organization");
    let delivery =
        |event: &str, body: &[u8], secret: &str| testkit::apigw::delivery(event, "d-bin", &sign(secret, body), body);

    let rows: Vec<(u16, &str, Value)> = vec![
        (401, "unauthorized", delivery("workflow_job", &ours, "forged")),
        (
            401,
            "unauthorized",
            testkit::apigw::event("POST", "/webhook", &[("x-github-event", "workflow_job")], &ours, false),
        ),
        (413, "too_large", delivery("workflow_job", &oversized, SECRET)),
        (200, "pong", delivery("ping", &ping, SECRET)),
        (202, "ignored", delivery("workflow_job", &completed, SECRET)),
        (202, "ignored", delivery("workflow_job", &started, SECRET)),
        (202, "ignored", delivery("workflow_job", &ended, SECRET)),
        (202, "ignored", delivery("workflow_job", &hosted, SECRET)),
        (403, "forbidden", delivery("workflow_job", &public, SECRET)),
        (400, "bad_request", delivery("workflow_job", b"{\"action\":", SECRET)),
        (404, "not_found", testkit::apigw::event("POST", "/", &[], b"", false)),
        (
            405,
            "method_not_allowed",
            testkit::apigw::event("GET", "/webhook", &[], b"", false),
        ),
        (202, "enqueued", delivery("workflow_job", &ours, SECRET)),
    ];
    for (status, decision, event) in rows {
        let (got, body) = status_of(&mut lambda, event).await;
        assert_eq!(
            (got, body["decision"].as_str().unwrap_or_default()),
            (status, decision),
            "{body}"
        );
    }
    // A base64-encoded body, as API Gateway sends non-text content.
    let base64 = testkit::apigw::event(
        "POST",
        "/webhook",
        &[
            ("x-github-event", "workflow_job"),
            ("x-github-delivery", "d-64"),
            ("x-hub-signature-256", &sign(SECRET, &ours)),
        ],
        &ours,
        true,
    );
    assert_eq!(status_of(&mut lambda, base64).await.0, 202);

    let received = deployment
        .sqs
        .receive_message()
        .queue_url(&deployment.queue_url)
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert_eq!(received.len(), 2, "one message per served delivery");
    let logs = lambda.settled_logs().await;
    assert!(!logs.contains(SECRET), "the webhook secret must never be logged");
    assert!(
        logs.contains("\"decision\":\"enqueued\""),
        "one JSON line per request: {logs}"
    );

    // The metrics CloudWatch makes of the same output (EMF): one answer per request by decision,
    // and the time to enqueued of each served job by template.
    use sophons_core::metrics::{documents, read};
    let data = read(&documents(logs.lines())).unwrap();
    let answers = |decision: &str| {
        data.iter()
            .filter(|d| {
                d.name == "WebhookAnswers" && d.dimensions.iter().any(|(k, v)| k == "decision" && v == decision)
            })
            .inspect(|d| {
                assert_eq!(d.unit, "Count");
                assert_eq!(d.dimensions.len(), 2, "{d:?}");
            })
            .count()
    };
    assert_eq!(answers("enqueued"), 2);
    assert_eq!(answers("unauthorized"), 2);
    assert_eq!(answers("forbidden"), 1);
    let enqueued: Vec<_> = data.iter().filter(|d| d.name == "EnqueuedAfter").collect();
    assert_eq!(enqueued.len(), 2, "{data:?}");
    let one = |name: &str| {
        let found: Vec<_> = data.iter().filter(|d| d.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {data:?}");
        assert_eq!(found[0].unit, "Seconds");
        assert_eq!(
            found[0].dimensions[1],
            ("template".to_string(), "template_cpu".to_string())
        );
        found[0].value
    };
    // GitHub's times in the fixtures: started 7 s after created; completed 198 s after started.
    assert_eq!((one("JobStartedAfter"), one("JobDuration")), (7.0, 198.0));
    assert!(enqueued.iter().all(|d| d.unit == "Seconds"
        && d.value > 0.0
        && d.dimensions
            == vec![
                ("deployment".to_string(), "sophons".to_string()),
                ("template".to_string(), "template_cpu".to_string())
            ]));
}

#[tokio::test]
async fn the_queue_refusing_the_message_gives_500_from_the_binary() {
    let deployment = deploy().await;
    let mut lambda = LambdaProcess::spawn(binary(), "autoscaler", &deployment.env).await;
    deployment
        .sqs
        .delete_queue()
        .queue_url(&deployment.queue_url)
        .send()
        .await
        .unwrap();
    let ours = payload(&["self-hosted"], true);
    let event = testkit::apigw::delivery("workflow_job", "d-500", &sign(SECRET, &ours), &ours);
    let (status, body) = status_of(&mut lambda, event).await;
    assert_eq!(
        (status, body["decision"].as_str()),
        (500, Some("queue_failed")),
        "{body}"
    );
}

#[tokio::test]
async fn a_job_started_on_a_runner_of_ours_is_kept_in_the_interruptions_table_by_the_binary() {
    use sophons_core::interruptions::Interruptions;
    let deployment = deploy().await;
    let mut lambda = LambdaProcess::spawn(binary(), "autoscaler", &deployment.env).await;
    // GitHub's documented in_progress delivery, on a runner of ours.
    let mut started = testkit::fixture("workflow_job.in_progress");
    started["workflow_job"]["runner_name"] = json!("sophons-i-0123456789abcdef0");
    started["repository"]["full_name"] = json!("my-org/app");
    let started = started.to_string().into_bytes();
    let event = testkit::apigw::delivery("workflow_job", "d-started", &sign(SECRET, &started), &started);
    let (status, body) = status_of(&mut lambda, event).await;
    assert_eq!((status, body["decision"].as_str()), (202, Some("recorded")), "{body}");
    let ran = deployment
        .interruptions
        .ran_on("i-0123456789abcdef0")
        .await
        .unwrap()
        .expect("kept in DynamoDB");
    let fixture = testkit::fixture("workflow_job.in_progress");
    assert_eq!(ran.job_id, fixture["workflow_job"]["id"].as_u64().unwrap());
    assert_eq!(ran.repository, "my-org/app");
}

#[tokio::test]
async fn a_missing_webhook_secret_fails_the_cold_start_naming_the_parameter() {
    let mut deployment = deploy().await;
    deployment.env.retain(|(key, _)| *key != "SOPHONS_CONFIG_PARAM");
    let mut document: Value = serde_json::from_str(include_str!("../../../docs/config.example.json")).unwrap();
    document["webhook_secret_param"] = json!("/does-not-exist/webhook-secret");
    deployment.env.push(("SOPHONS_CONFIG", document.to_string()));
    let mut lambda = LambdaProcess::spawn(binary(), "autoscaler", &deployment.env).await;
    let status = lambda.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "a missing secret fails the cold start"
    );
    assert!(
        lambda.logs().contains("/does-not-exist/webhook-secret"),
        "{}",
        lambda.logs()
    );
}

#[tokio::test]
async fn a_bad_config_document_fails_the_cold_start_naming_the_key() {
    let deployment = deploy().await;
    let mut env: Vec<(&str, String)> = deployment
        .env
        .into_iter()
        .filter(|(k, _)| *k != "SOPHONS_CONFIG_PARAM")
        .collect();
    let mut document: Value = serde_json::from_str(include_str!("../../../docs/config.example.json")).unwrap();
    document["github"]["scope"] = json!("enterprise");
    env.push(("SOPHONS_CONFIG", document.to_string()));
    let mut lambda = LambdaProcess::spawn(binary(), "autoscaler", &env).await;
    let status = lambda.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| !s.success()));
    assert!(lambda.logs().contains("github.scope"), "{}", lambda.logs());
}

#[tokio::test]
async fn check_config_accepts_the_documented_example_and_refuses_a_bad_one() {
    let good = include_str!("../../../docs/config.example.json");
    let output = std::process::Command::new(binary())
        .arg("--check-config")
        .env_clear()
        .env("SOPHONS_CONFIG", good)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("template_cpu"));

    let output = std::process::Command::new(binary())
        .arg("--check-config")
        .env_clear()
        .env(
            "SOPHONS_CONFIG",
            good.replace("\"max_runners\": 20", "\"max_runners\": 0"),
        )
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("templates.template_cpu.max_runners"));
}
