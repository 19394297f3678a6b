//! The built `create-runner` binary run as Lambda runs it, fed an SQS event carrying a message the
//! webhook produced, against moto and the fake GitHub over HTTP.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use sophons_core::fakes::FakeQueue;
use sophons_core::webhook::{Webhook, sign};
use testkit::github::FakeGithub;
use testkit::moto;
use testkit::runtime_api::LambdaProcess;

const TOKEN: &str = "ghp_create_runner_binary_test";

fn short_deployment() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}", nanos % 10_000_000_000)
}

struct Setup {
    deployment: String,
    document: Value,
    env: Vec<(&'static str, String)>,
    sdk: aws_config::SdkConfig,
    github: FakeGithub,
}

async fn setup() -> Setup {
    let sdk = moto::sdk_config().await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let deployment = short_deployment();
    let launch_template = format!("{deployment}-template_cpu");
    ec2.create_launch_template()
        .launch_template_name(&launch_template)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let subnet = ec2.describe_subnets().send().await.unwrap().subnets()[0]
        .subnet_id()
        .unwrap()
        .to_string();
    let queue_url = sqs
        .create_queue()
        .queue_name(&deployment)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let github = FakeGithub::start().await;
    github.set_token(TOKEN);
    github.set_default_job_status(Some("queued"));
    let token_param = format!("/{deployment}/github/token");
    ssm.put_parameter()
        .name(&token_param)
        .value(TOKEN)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    let document = json!({
        "deployment": deployment,
        "queue_url": queue_url,
        "dlq_url": format!("{queue_url}-dlq"),
        "webhook_secret_param": format!("/{deployment}/github/webhook-secret"),
        "github": { "api_url": github.url(), "owner": "my-org", "scope": "org", "token_param": token_param },
        "runner_script": { "bucket": "sophons-scripts", "key": "runner.sh" },
        "templates": {
            "template_cpu": { "labels": ["linux", "x64"], "launch_template": launch_template,
                              "instance_types": ["c7i.large", "m7i.large"], "subnet_ids": [subnet],
                              "max_runners": 5, "on_demand_fallback": true }
        }
    });
    let config_param = format!("/{deployment}/config");
    ssm.put_parameter()
        .name(&config_param)
        .value(document.to_string())
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let mut env = moto::env();
    env.push(("SOPHONS_CONFIG_PARAM", config_param));
    Setup {
        deployment,
        document,
        env,
        sdk,
        github,
    }
}

/// The message the webhook writes for GitHub's documented queued delivery, made one of ours.
async fn message_from_the_webhook(document: &Value, job_id: u64) -> String {
    let queue = Arc::new(FakeQueue::default());
    let config = sophons_core::Config::parse(&document.to_string()).unwrap();
    let webhook = Webhook::new(Arc::new(config), "secret", queue.clone());
    let mut payload = testkit::fixture("workflow_job.queued");
    payload["workflow_job"]["id"] = json!(job_id);
    payload["workflow_job"]["labels"] = json!(["self-hosted", "linux"]);
    payload["repository"]["full_name"] = json!("my-org/app");
    payload["repository"]["owner"]["login"] = json!("my-org");
    payload["repository"]["private"] = json!(true);
    let body = payload.to_string().into_bytes();
    let event = testkit::apigw::delivery("workflow_job", "d-1", &sign(b"secret", &body), &body);
    let response = webhook
        .handle(lambda_http::request::from_str(&event.to_string()).unwrap())
        .await;
    assert_eq!(response.status().as_u16(), 202);
    queue.sent().remove(0).body
}

fn sqs_event(records: &[(&str, &str)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(id, body)| {
            json!({
                "messageId": id,
                "receiptHandle": format!("receipt-{id}"),
                "body": body,
                "attributes": { "ApproximateReceiveCount": "1", "SentTimestamp": "1795500000000",
                                "SenderId": "AIDAEXAMPLE", "ApproximateFirstReceiveTimestamp": "1795500000001" },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:sophons-jobs",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    json!({ "Records": records })
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_create-runner"))
}

#[tokio::test]
async fn one_message_gives_one_instance_one_parameter_one_command_and_one_jit_registration() {
    let setup = setup().await;
    let body = message_from_the_webhook(&setup.document, 4242).await;
    let mut lambda = LambdaProcess::spawn(binary(), "create-runner", &setup.env).await;
    let response = lambda
        .invoke(sqs_event(&[("m-1", &body), ("m-2", "not a message")]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        response["batchItemFailures"],
        json!([]),
        "the bad record is dropped, not retried"
    );

    let ec2 = aws_sdk_ec2::Client::new(&setup.sdk);
    let reservations = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:sophons:deployment")
                .values(&setup.deployment)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let instances: Vec<_> = reservations.reservations().iter().flat_map(|r| r.instances()).collect();
    assert_eq!(instances.len(), 1);
    let instance = instances[0];
    let instance_id = instance.instance_id().unwrap();
    let tag = |key: &str| {
        instance
            .tags()
            .iter()
            .find(|t| t.key() == Some(key))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag("sophons:job-id").as_deref(), Some("4242"));
    assert_eq!(tag("sophons:template").as_deref(), Some("template_cpu"));
    assert_eq!(tag("sophons:repository").as_deref(), Some("my-org/app"));
    assert!(tag("sophons:command-id").is_some());

    let ssm = aws_sdk_ssm::Client::new(&setup.sdk);
    let parameter = format!("/{}/jit/{instance_id}", setup.deployment);
    let stored = ssm
        .get_parameter()
        .name(&parameter)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    let stored = stored.parameter.unwrap();
    assert_eq!(stored.r#type, Some(aws_sdk_ssm::types::ParameterType::SecureString));
    let jit_value = stored.value.unwrap();

    let command_id = tag("sophons:command-id").unwrap();
    let commands = ssm.list_commands().command_id(&command_id).send().await.unwrap();
    assert_eq!(commands.commands().len(), 1);
    let sent = commands.commands()[0].parameters().unwrap()["commands"].join("\n");
    assert!(sent.contains(&parameter) && !sent.contains(&jit_value));

    let registrations = setup
        .github
        .requests_to("POST", "/orgs/my-org/actions/runners/generate-jitconfig");
    assert_eq!(registrations.len(), 1);
    assert_eq!(
        registrations[0].body["labels"],
        json!(["self-hosted", "template_cpu", "linux", "x64"])
    );
    assert_eq!(
        registrations[0].body["name"],
        format!("{}-{instance_id}", setup.deployment)
    );

    let logs = lambda.logs();
    assert!(!logs.contains(&jit_value), "the JIT config must never be logged");
    assert!(!logs.contains(TOKEN), "the GitHub token must never be logged");
    assert!(logs.contains("\"outcome\":\"served\""), "{logs}");

    // The same message again (a redelivery): acknowledged, no second instance.
    let response = lambda.invoke(sqs_event(&[("m-3", &body)])).await.unwrap();
    assert_eq!(response["batchItemFailures"], json!([]));
    assert_eq!(setup.github.requests_to("POST", "generate-jitconfig").len(), 1);
}
