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
