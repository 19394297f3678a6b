//! The move-jobs Lambda, on an EventBridge schedule: DLQ → jobs queue for jobs GitHub still has
//! queued (`sophons_core::redrive`), then GitHub asked to redeliver the webhook's failed
//! `workflow_job` deliveries when `github.webhook_id` is set (`sophons_core::redeliver`), then the
//! runner cache brought up to GitHub's current release (`sophons_core::runner_cache`).

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use sophons_core::ports::Ports;
use sophons_core::redeliver::Redeliver;
use sophons_core::redrive::MoveJobs;
use sophons_core::runner_cache::RunnerCache;

#[tokio::main]
async fn main() -> Result<(), Error> {
    sophons_core::logging::init();
    let (config, ports) = Ports::connect().await?;
    let runner_cache = RunnerCache::connect(&config).await.map(Arc::new);
    let github = ports.github.clone();
    let redeliver = Redeliver::new(&config, ports.github.clone()).map(Arc::new);
    let move_jobs = Arc::new(MoveJobs::new(config, ports.queue, ports.github));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (move_jobs, runner_cache, github) = (Arc::clone(&move_jobs), runner_cache.clone(), github.clone());
        let redeliver = redeliver.clone();
        async move {
            let deadline = sophons_core::lambda::deadline(event.context.deadline);
            let report = move_jobs.run(deadline).await;
            let redelivery = match &redeliver {
                Some(redeliver) => Some(redeliver.run(deadline).await),
                None => None,
            };
            let cached = match &runner_cache {
                Some(cache) => Some(cache.refresh(github.as_ref(), deadline).await),
                None => None,
            };
            Ok::<_, Error>(json!({
                "moved": report.moved, "dropped": report.dropped, "left": report.left, "out_of_time": report.out_of_time,
                "redelivery": redelivery, "runner_cache": cached,
            }))
        }
    }))
    .await
}
