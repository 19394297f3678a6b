//! The AWS SDK configuration shared by every adapter.

/// Loads the SDK configuration from the environment, as Lambda provides it. The SDK honours
/// `AWS_ENDPOINT_URL` (and `AWS_ENDPOINT_URL_<SERVICE>`), which is how the binaries run unchanged
/// against moto server.
pub async fn load() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Renders an SDK error with the service's own code and message, which `Display` alone hides
/// ("service error").
pub fn describe<E, R>(error: &aws_sdk_sqs::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                source = inner.source();
            }
            text
        }
    }
}

/// The service error code of an SDK error, if the service answered with one.
pub fn code<E, R>(error: &aws_sdk_sqs::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
{
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    error.code()
}

/// A DynamoDB error, as every table's adapter tells it: each maps it to its own error, which
/// names its table and its config key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableFault {
    /// Throttled (provisioned throughput, request limit): worth trying again.
    Throttled(String),
    /// The table does not exist in this region.
    NoTable,
    /// The role lacks a grant, or the credentials are refused.
    AccessDenied(String),
    Failed(String),
}

pub fn table_fault<E, R>(error: &aws_sdk_sqs::error::SdkError<E, R>) -> TableFault
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match code(error) {
        Some("ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded") => {
            TableFault::Throttled(describe(error))
        }
        Some("ResourceNotFoundException") => TableFault::NoTable,
        Some("AccessDeniedException" | "UnrecognizedClientException") => TableFault::AccessDenied(describe(error)),
        _ => TableFault::Failed(describe(error)),
    }
}

/// A conditional write whose condition did not hold: an answer, not a failure.
pub fn condition_failed<E, R>(error: &aws_sdk_sqs::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata,
{
    code(error) == Some("ConditionalCheckFailedException")
}

/// An unconditional PutItem, which replaces any item of the same key; each table's adapter reads
/// the error as its own (`table_fault`).
pub async fn put_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    item: std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>,
) -> Result<
    (),
    aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::put_item::PutItemError,
        aws_sdk_dynamodb::config::http::HttpResponse,
    >,
> {
    client.put_item().table_name(table).set_item(Some(item)).send().await?;
    Ok(())
}
