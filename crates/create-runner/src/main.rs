//! The create-runner Lambda (SQS event source mapping with ReportBatchItemFailures). Reads the
//! config document and the GitHub credential once per cold start, then serves each batch from
//! `sophons_core::create`.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};
use sophons_core::create::CreateRunner;
use sophons_core::ports::Ports;

#[tokio::main]
async fn main() -> Result<(), Error> {
    sophons_core::logging::init();
    let (config, ports) = Ports::connect().await?;
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
