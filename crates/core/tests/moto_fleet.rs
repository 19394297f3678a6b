//! The EC2 and SSM Run Command adapters against moto: CreateFleet with a launch template,
//! overrides and tags; lookups by tag; tagging; terminate; SendCommand.

use sophons_core::commands::{CommandRequest, CommandStatus, Commands, SsmCommands};
use sophons_core::fleet::{Capacity, Ec2Fleet, Fleet, InstanceQuery, LaunchRequest};
use testkit::moto;

async fn launch_template(sdk: &aws_config::SdkConfig) -> (String, String) {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let name = moto::unique("lt");
    ec2.create_launch_template()
        .launch_template_name(&name)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id("ami-12c6146b")
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let subnets = ec2.describe_subnets().send().await.unwrap();
    let subnet = subnets.subnets()[0].subnet_id().unwrap().to_string();
    (name, subnet)
}

fn request(template: &str, subnet: &str, deployment: &str, job_id: u64, token: &str) -> LaunchRequest {
    LaunchRequest {
        launch_template: template.to_string(),
        instance_types: vec!["c7i.large".into(), "m7i.large".into()],
        subnet_ids: vec![subnet.to_string()],
        capacity: Capacity::Spot,
        spot_max_price: Some("0.5".into()),
        client_token: token.to_string(),
        tags: vec![
            ("sophons:deployment".into(), deployment.into()),
            ("sophons:template".into(), "template_cpu".into()),
            ("sophons:job-id".into(), job_id.to_string()),
            ("sophons:repository".into(), "my-org/app".into()),
        ],
    }
}

#[tokio::test]
async fn create_fleet_launches_one_tagged_instance_found_again_by_its_tags() {
    let sdk = moto::sdk_config().await;
    let fleet = Ec2Fleet::new(&sdk);
    let (template, subnet) = launch_template(&sdk).await;
    let deployment = moto::unique("d");
    let launched = fleet
        .launch(&request(&template, &subnet, &deployment, 42, &moto::unique("tok")))
        .await
        .unwrap();
    assert!(launched.instance_id.starts_with("i-"), "{launched:?}");
    assert_eq!(launched.capacity, Capacity::Spot);

    let by_job = InstanceQuery {
        job_id: Some(42),
        live_only: true,
        ..Default::default()
    };
    let found = fleet.instances(&deployment, &by_job).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, launched.instance_id);
    assert_eq!(found[0].tag("sophons:repository"), Some("my-org/app"));
    assert!(found[0].launched_at.is_some());

    let other_job = InstanceQuery {
        job_id: Some(43),
        live_only: true,
        ..Default::default()
    };
    assert!(fleet.instances(&deployment, &other_job).await.unwrap().is_empty());
    assert!(
        fleet.instances("another-deployment", &by_job).await.unwrap().is_empty(),
        "scoped to the deployment"
    );

    fleet
        .launch(&request(&template, &subnet, &deployment, 44, &moto::unique("tok")))
        .await
        .unwrap();
    let by_template = InstanceQuery {
        template: Some("template_cpu".into()),
        live_only: true,
        ..Default::default()
    };
    assert_eq!(fleet.instances(&deployment, &by_template).await.unwrap().len(), 2);

    fleet
        .tag(&launched.instance_id, &[("sophons:command-id".into(), "cmd-1".into())])
        .await
        .unwrap();
    let found = fleet.instances(&deployment, &by_job).await.unwrap();
    assert_eq!(found[0].tag("sophons:command-id"), Some("cmd-1"));

    fleet.terminate(&launched.instance_id).await.unwrap();
    assert!(
        fleet.instances(&deployment, &by_job).await.unwrap().is_empty(),
        "terminated is not live"
    );
    assert_eq!(fleet.instances(&deployment, &by_template).await.unwrap().len(), 1);

    // A terminated instance is still listed when asked for, with why it ended: ours, not EC2's.
    let ended = InstanceQuery {
        instance_id: Some(launched.instance_id.clone()),
        with_terminated: true,
        ..Default::default()
    };
    let found = fleet.instances(&deployment, &ended).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].state_reason.as_deref(), Some("Client.UserInitiatedShutdown"));
    assert!(!found[0].ended_by_ec2());
}

#[tokio::test]
async fn a_missing_launch_template_is_refused_not_retried_forever() {
    let sdk = moto::sdk_config().await;
    let fleet = Ec2Fleet::new(&sdk);
    let (_, subnet) = launch_template(&sdk).await;
    let result = fleet
        .launch(&request("no-such-template", &subnet, "d", 1, &moto::unique("tok")))
        .await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn terminating_an_instance_already_gone_is_not_an_error() {
    let sdk = moto::sdk_config().await;
    let fleet = Ec2Fleet::new(&sdk);
    let (template, subnet) = launch_template(&sdk).await;
    let launched = fleet
        .launch(&request(&template, &subnet, "d", 1, &moto::unique("tok")))
        .await
        .unwrap();
    fleet.terminate(&launched.instance_id).await.unwrap();
    fleet.terminate(&launched.instance_id).await.unwrap();
}

#[tokio::test]
async fn send_command_starts_the_runner_script_on_the_instance() {
    let sdk = moto::sdk_config().await;
    let fleet = Ec2Fleet::new(&sdk);
    let (template, subnet) = launch_template(&sdk).await;
    let launched = fleet
        .launch(&request(&template, &subnet, "d", 1, &moto::unique("tok")))
        .await
        .unwrap();
    let commands = SsmCommands::new(&sdk);
    let command_id = commands
        .send(&CommandRequest {
            instance_id: launched.instance_id.clone(),
            commands: sophons_core::commands::runner_commands("bucket", "runner.sh", "/d/jit/i-1", &[]),
            execution_timeout_seconds: 3600,
            log_group: "/sophons/runners".into(),
            comment: "sophons d job 1".into(),
        })
        .await
        .unwrap();
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let listed = ssm.list_commands().command_id(&command_id).send().await.unwrap();
    let command = &listed.commands()[0];
    assert_eq!(command.document_name(), Some("AWS-RunShellScript"));
    let parameters = command.parameters().unwrap();
    assert!(parameters["commands"].iter().any(|c| c.contains("'/d/jit/i-1'")));
    assert_eq!(parameters["executionTimeout"], vec!["3600".to_string()]);
    // moto reports every command as ended at once: it runs nothing.
    let status = commands.status(&command_id, &launched.instance_id).await.unwrap();
    assert!(
        matches!(status, CommandStatus::Ended(_) | CommandStatus::Running),
        "{status:?}"
    );
}
