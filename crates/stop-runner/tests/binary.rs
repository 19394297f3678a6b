//! The built `stop-runner` binary run as Lambda runs it, against moto and the fake GitHub: an SSM
//! status event ends our instance and everything it owned, leaves others alone; the sweep
//! removes leftovers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sophons_core::commands::SsmCommands;
use sophons_core::create::{CreateRunner, Outcome};
use sophons_core::fleet::Ec2Fleet;
use sophons_core::github::OctocrabGithub;
use sophons_core::job::{JobMessage, MESSAGE_VERSION};
use sophons_core::parameters::SsmParameters;
use sophons_core::ports::Ports;
use sophons_core::queue::SqsQueue;
use testkit::runtime_api::LambdaProcess;
use testkit::stack::{Stack, scheduled_event, ssm_status_event};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_stop-runner"))
}

async fn github(stack: &Stack) -> OctocrabGithub {
    let config = sophons_core::Config::parse(&stack.document.to_string()).unwrap();
    OctocrabGithub::connect(&config.github, &SsmParameters::new(&stack.sdk))
        .await
        .unwrap()
}

/// Serves a job with the real adapters, as create-runner does: (instance id, command id).
async fn serve(stack: &Stack, job_id: u64) -> (String, String) {
    let config = Arc::new(sophons_core::Config::parse(&stack.document.to_string()).unwrap());
    let ports = Ports {
        fleet: Arc::new(Ec2Fleet::new(&stack.sdk)),
        github: Arc::new(github(stack).await),
        parameters: Arc::new(SsmParameters::new(&stack.sdk)),
        slots: Arc::new(sophons_core::slots::DynamoSlots::new(&stack.sdk, &stack.slots_table)),
        commands: Arc::new(SsmCommands::new(&stack.sdk)),
        queue: Arc::new(SqsQueue::new(&stack.sdk)),
        waiting: None,
        interruptions: None,
    };
    let message = JobMessage {
        version: MESSAGE_VERSION,
        delivery_id: "d".into(),
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
        created_at: String::new(),
        received_at: String::new(),
        relaunches: 0,
        runner_failures: 0,
        trip: 0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    match CreateRunner::new(config, ports)
        .serve(&message.encode(), 1, deadline)
        .await
    {
        Outcome::Served {
            instance_id,
            command_id,
            ..
        } => (instance_id, command_id),
        other => panic!("{other:?}"),
    }
}

fn state_of(instances: &[(String, String, std::collections::BTreeMap<String, String>)], id: &str) -> String {
    instances
        .iter()
        .find(|(i, _, _)| i == id)
        .map(|(_, s, _)| s.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_ssm_status_event_ends_our_instance_its_parameter_and_its_runner() {
    let stack = Stack::create(&[("cpu", 5)]).await;
    let (instance_id, command_id) = serve(&stack, 101).await;
    let (other_id, other_command) = serve(&stack, 102).await;
    assert_eq!(stack.jit_parameters().await.len(), 2);
    assert_eq!(stack.github.runners().len(), 2);

    let mut lambda = LambdaProcess::spawn(binary(), "stop-runner", &stack.env).await;
    let answer = lambda
        .invoke(ssm_status_event(&instance_id, &command_id, "Success"))
        .await
        .unwrap();
    assert_eq!(answer["handled"], "instance_event", "{answer}");
    assert_eq!(
        answer["result"]["ended"],
        // The fake GitHub has the job still queued: the runner ended without it, so it goes back.
        json!({ "instance_id": instance_id, "relaunched": true }),
        "{answer}"
    );

    let instances = stack.instances().await;
    assert!(matches!(
        state_of(&instances, &instance_id).as_str(),
        "terminated" | "shutting-down"
    ));
    assert_eq!(state_of(&instances, &other_id), "running");
    assert_eq!(
        stack.jit_parameters().await,
        vec![format!("/{}/jit/{other_id}", stack.deployment)]
    );
    assert_eq!(stack.github.runners().len(), 1);

    // A command id that is not the instance's own: nothing happens.
    let answer = lambda
        .invoke(ssm_status_event(&other_id, "not-our-command", "Failed"))
        .await
        .unwrap();
    assert!(answer["result"]["ignored"].is_string(), "{answer}");
    // The same event again: harmless.
    lambda
        .invoke(ssm_status_event(&instance_id, &command_id, "Success"))
        .await
        .unwrap();
    assert_eq!(state_of(&stack.instances().await, &other_id), "running");
    let _ = other_command;
}

#[tokio::test]
async fn an_event_for_an_instance_of_another_deployment_changes_nothing() {
    let ours = Stack::create(&[("cpu", 5)]).await;
    let theirs = Stack::create(&[("cpu", 5)]).await;
    let (their_instance, their_command) = serve(&theirs, 201).await;
    let mut lambda = LambdaProcess::spawn(binary(), "stop-runner", &ours.env).await;
    let answer = lambda
        .invoke(ssm_status_event(&their_instance, &their_command, "Success"))
        .await
        .unwrap();
    assert!(answer["result"]["ignored"].is_string(), "{answer}");
    assert_eq!(state_of(&theirs.instances().await, &their_instance), "running");
}

/// EC2's documented spot interruption warning
/// (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>).
fn spot_warning(instance_id: &str) -> serde_json::Value {
    json!({
        "version": "0",
        "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": sophons_core::job::now_rfc3339(),
        "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1a:instance/{instance_id}")],
        "detail": { "instance-id": instance_id, "instance-action": "terminate" }
    })
}

#[tokio::test]
async fn a_spot_warning_records_our_instances_job_in_the_interruptions_table_and_ignores_others() {
    let ours = Stack::create(&[("cpu", 5)]).await;
    let theirs = Stack::create(&[("cpu", 5)]).await;
    let (instance_id, _) = serve(&ours, 301).await;
    let (their_instance, _) = serve(&theirs, 302).await;
    let mut lambda = LambdaProcess::spawn(binary(), "stop-runner", &ours.env).await;
    let answer = lambda.invoke(spot_warning(&instance_id)).await.unwrap();
    assert_eq!(
        answer["result"]["warned"]["instance_id"],
        json!(instance_id),
        "{answer}"
    );
    let answer = lambda.invoke(spot_warning(&their_instance)).await.unwrap();
    assert!(answer["result"]["ignored"].is_string(), "{answer}");

    let table = ours.document["interruptions_table"].as_str().unwrap();
    let items = aws_sdk_dynamodb::Client::new(&ours.sdk)
        .scan()
        .table_name(table)
        .send()
        .await
        .unwrap()
        .items
        .unwrap_or_default();
    let recorded: Vec<_> = items
        .iter()
        .filter(|item| item["pk"].as_s().unwrap() == "interrupted")
        .map(|item| {
            (
                item["job_id"].as_n().unwrap().clone(),
                item["instance_id"].as_s().unwrap().clone(),
            )
        })
        .collect();
    assert_eq!(recorded, vec![("301".to_string(), instance_id.clone())]);
    let losses = items
        .iter()
        .filter(|item| item["pk"].as_s().unwrap() == "spot#cpu")
        .count();
    assert_eq!(losses, 1, "the template's spot loss is counted for the back-off");
    let logs = lambda.settled_logs().await;
    assert!(logs.contains("\"step\":\"interrupted\""), "{logs}");
}

#[tokio::test]
async fn the_sweep_removes_leftover_parameters_and_ghost_runners() {
    let stack = Stack::create(&[("cpu", 5)]).await;
    let (live, _) = serve(&stack, 301).await;
    // An instance ended behind stop-runner's back: its parameter and its runner are left over.
    // (A leftover is told from a launch EC2 does not list yet by the instance being listed as
    // ended, or by the parameter's age: a fresh one of an unlisted instance is kept.)
    let (dead, _) = serve(&stack, 302).await;
    aws_sdk_ec2::Client::new(&stack.sdk)
        .terminate_instances()
        .instance_ids(&dead)
        .send()
        .await
        .unwrap();

    let mut lambda = LambdaProcess::spawn(binary(), "stop-runner", &stack.env).await;
    let answer = lambda.invoke(scheduled_event("sophons-sweep")).await.unwrap();
    assert_eq!(answer["handled"], "sweep", "{answer}");
    assert_eq!(answer["parameters_deleted"], json!(1), "{answer}");
    assert_eq!(answer["runners_removed"], json!(1), "{answer}");
    // moto reports every SSM command as ended at once, so to the sweep the live instance's
    // event was missed: it is ended too, with its own parameter and runner.
    assert_eq!(answer["cleaned"], json!(1), "{answer}");
    for count in [
        "lifetime_exceeded",
        "never_started",
        "command_ended",
        "woken",
        "slots_freed",
        "errors",
    ] {
        assert!(
            answer[count].is_u64(),
            "the answer carries every count of the report, {count}: {answer}"
        );
    }
    assert!(matches!(
        state_of(&stack.instances().await, &live).as_str(),
        "terminated" | "shutting-down"
    ));
    assert!(stack.jit_parameters().await.is_empty());
    assert!(stack.github.runners().is_empty());
    let logs = lambda.settled_logs().await;
    assert!(logs.contains("sweep: examined"), "one summary line per sweep");
    // The gauges CloudWatch makes of it (EMF), as the sweep found the template before cleaning:
    // one live instance of its 5 slots.
    use sophons_core::metrics::{documents, read};
    let data = read(&documents(logs.lines())).unwrap();
    let gauge = |name: &str| {
        let found: Vec<_> = data.iter().filter(|d| d.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {data:?}");
        assert_eq!(found[0].unit, "Count");
        assert_eq!(
            found[0].dimensions,
            vec![
                ("deployment".to_string(), stack.deployment.clone()),
                ("template".to_string(), "cpu".to_string())
            ]
        );
        found[0].value
    };
    assert_eq!((gauge("LiveInstances"), gauge("FreeSlots")), (1.0, 4.0));
}
