//! The create-runner Lambda (SQS event source mapping with ReportBatchItemFailures). Reads the
//! config document and the GitHub credential once per cold start, then serves each batch from
//! `sophons_core::create`.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use sophons_core::Config;
use sophons_core::commands::SsmCommands;
use sophons_core::create::{CreateRunner, Ports};
use sophons_core::fleet::Ec2Fleet;
use sophons_core::github::OctocrabGithub;
use sophons_core::queue::SqsQueue;
use sophons_core::secrets::SsmSecrets;

#[tokio::main]
async fn main() -> Result<(), Error> {
    sophons_core::logging::init();
    let sdk = sophons_core::aws::load().await;
    let ssm = SsmSecrets::new(&sdk);
    let config = Arc::new(
        Config::load(&ssm)
            .await
            .inspect_err(|error| tracing::error!("{error}"))?,
    );
    let github = OctocrabGithub::connect(&config.github, &ssm)
        .await
        .inspect_err(|error| tracing::error!("{error}"))?;
    let ports = Ports {
        fleet: Arc::new(Ec2Fleet::new(&sdk)),
        github: Arc::new(github),
        secrets: Arc::new(ssm),
        commands: Arc::new(SsmCommands::new(&sdk)),
        queue: Arc::new(SqsQueue::new(&sdk)),
    };
    let create = Arc::new(CreateRunner::new(config, ports));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let create = Arc::clone(&create);
        async move {
            let deadline = sophons_core::lambda::deadline(event.context.deadline);
            Ok::<_, Error>(create.handle_batch(event.payload, deadline).await)
        }
    }))
    .await
}
