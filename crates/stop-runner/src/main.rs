//! The stop-runner Lambda. EventBridge invokes it for SSM command status changes (ends the
//! instance), EC2's spot interruption warnings and instance terminations, and on a schedule (the
//! sweep); `sophons_core::stop` tells them apart.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};
use sophons_core::ports::Ports;
use sophons_core::stop::{Handled, StopRunner};

#[tokio::main]
async fn main() -> Result<(), Error> {
    sophons_core::logging::init();
    let (config, ports) = Ports::connect().await?;
    let stop = Arc::new(StopRunner::new(config, ports));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let stop = Arc::clone(&stop);
        async move {
            let deadline = sophons_core::lambda::deadline(event.context.deadline);
            let answer = match stop.handle(event.payload, deadline).await {
                Handled::Stop(stopped) => json!({ "handled": "instance_event", "result": stopped }),
                // Every count of the report, and the total cleaned.
                Handled::Sweep(report) => {
                    let mut answer = serde_json::to_value(&report).unwrap_or_default();
                    answer["handled"] = json!("sweep");
                    answer["cleaned"] = json!(report.cleaned());
                    answer
                }
                Handled::Ignored(reason) => json!({ "handled": "ignored", "reason": reason }),
            };
            Ok::<_, Error>(answer)
        }
    }))
    .await
}
