//! The move-jobs Lambda, on an EventBridge schedule: DLQ → jobs queue for jobs GitHub still has
//! queued (`sophons_core::redrive`).

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use sophons_core::ports::Ports;
use sophons_core::redrive::MoveJobs;

#[tokio::main]
async fn main() -> Result<(), Error> {
    sophons_core::logging::init();
    let (config, ports) = Ports::connect().await?;
    let move_jobs = Arc::new(MoveJobs::new(config, ports.queue, ports.github));
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
