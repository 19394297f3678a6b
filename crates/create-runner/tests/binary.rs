//! The built `create-runner` binary run as Lambda runs it, fed an SQS event carrying a message the
//! webhook produced, against moto and the fake GitHub over HTTP.

use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use sophons_core::fakes::FakeQueue;
use sophons_core::webhook::{Webhook, sign};
use testkit::runtime_api::LambdaProcess;
use testkit::stack::{Stack, TOKEN, sqs_event};

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

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_create-runner"))
}

#[tokio::test]
async fn one_message_gives_one_instance_one_parameter_one_command_and_one_jit_registration() {
    let setup = Stack::create(&[("template_cpu", 5)]).await;
    let body = message_from_the_webhook(&setup.document, 4242).await;
    let mut lambda = LambdaProcess::spawn(binary(), "create-runner", &setup.env).await;
    let response = lambda
        .invoke(sqs_event(&[
            ("m-1", "receipt-1", &body, 1),
            ("m-2", "receipt-2", "not a message", 1),
        ]))
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

    let logs = lambda.settled_logs().await;
    assert!(!logs.contains(&jit_value), "the JIT config must never be logged");
    assert!(!logs.contains(TOKEN), "the GitHub token must never be logged");
    assert!(logs.contains("\"outcome\":\"served\""), "{logs}");
    // The metrics CloudWatch makes of it (EMF): one launch, by capacity and by deployment alone (the
    // no-launch alarm's metric); the times from the job's created_at to its launch and to its command.
    use sophons_core::metrics::{documents, read};
    let data = read(&documents(logs.lines())).unwrap();
    let dimensions = |extra: &[(&str, &str)]| {
        let mut all = vec![
            ("deployment".to_string(), setup.deployment.clone()),
            ("template".to_string(), "template_cpu".to_string()),
        ];
        all.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        all
    };
    let launches: Vec<_> = data.iter().filter(|d| d.name == "Launches").collect();
    assert_eq!(launches.len(), 2, "{data:?}");
    assert!(
        launches.iter().all(|d| (d.unit.as_str(), d.value) == ("Count", 1.0)),
        "{data:?}"
    );
    assert_eq!(launches[0].dimensions, dimensions(&[("capacity", "spot")]));
    assert_eq!(
        launches[1].dimensions,
        [("deployment".to_string(), setup.deployment.clone())]
    );
    for name in ["LaunchedAfter", "CommandSentAfter"] {
        let times: Vec<_> = data.iter().filter(|d| d.name == name).collect();
        assert_eq!(times.len(), 1, "{name}: {data:?}");
        assert_eq!(times[0].unit, "Seconds");
        assert_eq!(times[0].dimensions, dimensions(&[]));
        assert!(times[0].value > 0.0);
    }
    assert!(!data.iter().any(|d| d.name == "HandBacks"), "{data:?}");

    // The same message again (a redelivery): acknowledged, no second instance.
    let response = lambda
        .invoke(sqs_event(&[("m-3", "receipt-3", &body, 1)]))
        .await
        .unwrap();
    assert_eq!(response["batchItemFailures"], json!([]));
    assert_eq!(setup.github.requests_to("POST", "generate-jitconfig").len(), 1);
}
