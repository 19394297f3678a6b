//! The stop-runner Lambda. EventBridge invokes it for SSM command status changes (ends the
//! instance) and on a schedule (the sweep); `sophons_core::stop` tells the two apart.

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
                Handled::Stop(stopped) => json!({ "handled": "command_ended", "result": format!("{stopped:?}") }),
                Handled::Sweep(report) => json!({
                    "handled": "sweep", "examined": report.examined, "cleaned": report.cleaned(),
                    "parameters_deleted": report.parameters_deleted, "runners_removed": report.runners_removed,
                    "reclaimed": report.reclaimed, "relaunched": report.relaunched, "slots_freed": report.slots_freed,
                    "idle": report.idle, "unroutable": report.unroutable, "errors": report.errors
                }),
                Handled::Ignored(reason) => json!({ "handled": "ignored", "reason": reason }),
            };
            Ok::<_, Error>(answer)
        }
    }))
    .await
}
