//! The webhook Lambda (API Gateway HTTP API, payload 2.0). Reads the config document and the
//! webhook secret once per cold start (together when `SOPHONS_SECRET_PARAMS` names the secret),
//! then answers each delivery from `sophons_core::webhook`, keeping which job each runner of ours
//! took in the interruptions table when the config names one.
//!
//! `autoscaler --check-config` validates the config document the environment names and exits:
//! 0 when the Lambdas would accept it, 1 with the key and the fix when not.

use std::sync::Arc;

use lambda_http::{Error, Request, service_fn};
use sophons_core::Config;
use sophons_core::interruptions::DynamoInterruptions;
use sophons_core::parameters::{Parameters, Prefetched, SsmParameters};
use sophons_core::queue::SqsQueue;
use sophons_core::webhook::Webhook;

#[tokio::main]
async fn main() -> Result<(), Error> {
    sophons_core::logging::init();
    let sdk = sophons_core::aws::load().await;
    let ssm = SsmParameters::new(&sdk);

    if std::env::args().any(|arg| arg == "--check-config") {
        return match Config::load(&ssm).await {
            Ok(config) => {
                println!(
                    "config document accepted: deployment `{}`, {} template(s): {}",
                    config.deployment,
                    config.templates.len(),
                    config.templates.keys().cloned().collect::<Vec<_>>().join(", ")
                );
                Ok(())
            }
            Err(error) => {
                eprintln!("{error}");
                std::process::exit(1);
            }
        };
    }

    // The document and the webhook secret in one request when SOPHONS_SECRET_PARAMS names it.
    let cold_start = Prefetched::cold_start(&ssm).await;
    let config = Config::load(&cold_start)
        .await
        .inspect_err(|error| tracing::error!("{error}"))?;
    let secret = cold_start
        .get(&config.webhook_secret_param)
        .await
        .inspect_err(|error| tracing::error!("cannot read the webhook secret: {error}"))?;
    drop(cold_start);
    let interruptions = config
        .interruptions_table
        .as_deref()
        .map(|table| Arc::new(DynamoInterruptions::new(&sdk, table)));
    let mut webhook = Webhook::new(Arc::new(config), secret, Arc::new(SqsQueue::new(&sdk)));
    if let Some(interruptions) = interruptions {
        webhook = webhook.with_interruptions(interruptions);
    }
    let webhook = &webhook;
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, std::convert::Infallible>(webhook.handle(request).await)
    }))
    .await
}
