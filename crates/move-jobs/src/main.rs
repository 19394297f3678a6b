//! The move-jobs Lambda, on an EventBridge schedule: DLQ → jobs queue for jobs GitHub still has
//! queued (`sophons_core::redrive`).

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use sophons_core::Config;
use sophons_core::github::OctocrabGithub;
use sophons_core::queue::SqsQueue;
use sophons_core::redrive::MoveJobs;
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
    let move_jobs = Arc::new(MoveJobs::new(config, Arc::new(SqsQueue::new(&sdk)), Arc::new(github)));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let move_jobs = Arc::clone(&move_jobs);
        async move {
            let report = move_jobs
                .run(sophons_core::lambda::deadline(event.context.deadline))
                .await;
            Ok::<_, Error>(json!({
                "moved": report.moved, "dropped": report.dropped, "left": report.left, "out_of_time": report.out_of_time
            }))
        }
    }))
    .await
}
