//! A sophons deployment in moto, made with the SDK for the binaries' tests: jobs queue and DLQ
//! (redrive after 3 receives), a launch template per runner template, the launch-slot table, the GitHub token and the
//! config document in SSM, and a fake GitHub. (The demo and `make test` also apply the real
//! Terraform to moto; this is the quick way for a single test.)

use serde_json::{Value, json};

use crate::github::GithubServer;
use crate::moto;

pub const TOKEN: &str = "ghp_testkit_stack_token";
pub const WEBHOOK_SECRET: &str = "testkit-stack-webhook-secret";

pub struct Stack {
    pub deployment: String,
    pub document: Value,
    /// The environment a binary needs: moto's endpoint and credentials, and SOPHONS_CONFIG_PARAM.
    pub env: Vec<(&'static str, String)>,
    pub sdk: aws_config::SdkConfig,
    pub github: GithubServer,
    pub queue_url: String,
    pub dlq_url: String,
    /// The launch-slot table (DynamoDB).
    pub slots_table: String,
}

/// A deployment name no other test in this moto server uses (≤ 24 characters).
pub fn unique_deployment() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "t{}{}",
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed) % 100
    )
}

impl Stack {
    /// `templates`: (name, max_runners) pairs; each gets labels `linux`, `x64`.
    pub async fn create(templates: &[(&str, u32)]) -> Self {
        let sdk = moto::sdk_config().await;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let deployment = unique_deployment();
        let subnet = ec2.describe_subnets().send().await.unwrap().subnets()[0]
            .subnet_id()
            .unwrap()
            .to_string();
        let mut template_docs = serde_json::Map::new();
        for (name, max_runners) in templates {
            let launch_template = format!("{deployment}-{name}");
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
            template_docs.insert(
                name.to_string(),
                json!({ "labels": ["linux", "x64"], "launch_template": launch_template,
                        "instance_types": ["c7i.large", "m7i.large"], "subnet_ids": [subnet],
                        "max_runners": max_runners, "on_demand_fallback": true }),
            );
        }
        let dlq_url = sqs
            .create_queue()
            .queue_name(format!("{deployment}-dlq"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
            .clone();
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("{deployment}-jobs"))
            .attributes(
                aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
                json!({ "deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3 }).to_string(),
            )
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let slots_table = moto::slots_table(&sdk, &format!("{deployment}-slots")).await;
        let waiting_table = moto::waiting_table(&sdk, &format!("{deployment}-waiting")).await;
        let interruptions_table = moto::interruptions_table(&sdk, &format!("{deployment}-interruptions")).await;
        let github = GithubServer::start().await;
        github.set_token(TOKEN);
        github.set_default_job_status(Some("queued"));
        let secure = |name: String, value: &str| {
            let ssm = ssm.clone();
            let value = value.to_string();
            async move {
                ssm.put_parameter()
                    .name(name)
                    .value(value)
                    .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                    .send()
                    .await
                    .unwrap();
            }
        };
        let token_param = format!("/{deployment}/github/token");
        let secret_param = format!("/{deployment}/github/webhook-secret");
        secure(token_param.clone(), TOKEN).await;
        secure(secret_param.clone(), WEBHOOK_SECRET).await;
        let document = json!({
            "deployment": deployment,
            "queue_url": queue_url,
            "dlq_url": dlq_url,
            "webhook_secret_param": secret_param,
            "slots_table": slots_table,
            "waiting_table": waiting_table,
            "interruptions_table": interruptions_table,
            "github": { "api_url": github.url(), "owner": "my-org", "scope": "org", "token_param": token_param },
            "runner_script": { "bucket": format!("{deployment}-scripts"), "key": "runner.sh" },
            "templates": template_docs,
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
        // As Terraform does: the cold start reads the document and these in one request.
        env.push(("SOPHONS_SECRET_PARAMS", format!("{secret_param},{token_param}")));
        Self {
            deployment,
            document,
            env,
            sdk,
            github,
            queue_url,
            dlq_url,
            slots_table,
        }
    }

    /// This deployment's instances (any state) as (id, state, tags).
    pub async fn instances(&self) -> Vec<(String, String, std::collections::BTreeMap<String, String>)> {
        let ec2 = aws_sdk_ec2::Client::new(&self.sdk);
        let output = ec2
            .describe_instances()
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("tag:sophons:deployment")
                    .values(&self.deployment)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(|i| {
                (
                    i.instance_id().unwrap_or_default().to_string(),
                    i.state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                    i.tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                        .collect(),
                )
            })
            .collect()
    }

    /// Names of this deployment's JIT parameters.
    pub async fn jit_parameters(&self) -> Vec<String> {
        let ssm = aws_sdk_ssm::Client::new(&self.sdk);
        let output = ssm
            .get_parameters_by_path()
            .path(format!("/{}/jit", self.deployment))
            .recursive(true)
            .send()
            .await
            .unwrap();
        output
            .parameters()
            .iter()
            .filter_map(|p| p.name().map(str::to_string))
            .collect()
    }
}

/// An SQS event for the create-runner Lambda, as the event source mapping sends it; each record is
/// (message id, receipt handle, body, receive count).
pub fn sqs_event(records: &[(&str, &str, &str, u32)]) -> Value {
    let records: Vec<Value> = records
        .iter()
        .map(|(id, receipt, body, receive_count)| {
            json!({
                "messageId": id,
                "receiptHandle": receipt,
                "body": body,
                "attributes": { "ApproximateReceiveCount": receive_count.to_string(), "SentTimestamp": "1795500000000",
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

/// EventBridge's SSM "EC2 Command Invocation Status-change Notification", as AWS documents it.
pub fn ssm_status_event(instance_id: &str, command_id: &str, status: &str) -> Value {
    json!({
        "version": "0", "id": "51c0891d-0e34-45b1-83d6-95db273d1602",
        "detail-type": "EC2 Command Invocation Status-change Notification", "source": "aws.ssm",
        "account": "123456789012", "time": "2026-11-28T06:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}")],
        "detail": { "command-id": command_id, "document-name": "AWS-RunShellScript", "instance-id": instance_id,
                    "requested-date-time": "2026-11-28T05:00:00.000Z", "status": status }
    })
}

/// EventBridge's scheduled event.
pub fn scheduled_event(rule: &str) -> Value {
    json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-11-28T06:15:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:events:us-east-1:123456789012:rule/{rule}")], "detail": {}
    })
}
