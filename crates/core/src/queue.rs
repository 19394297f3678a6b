//! SQS: the jobs queue and its dead-letter queue.

use async_trait::async_trait;

/// The message attribute that carries GitHub's delivery id beside the body.
pub const DELIVERY_ID_ATTRIBUTE: &str = "delivery_id";

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QueueError {
    #[error("queue `{queue_url}` does not exist: check queue_url/dlq_url in the config document")]
    NotFound { queue_url: String },
    #[error("SQS refused the request on `{queue_url}`: {reason}")]
    Refused { queue_url: String, reason: String },
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Sends one message; answers SQS's message id.
    async fn send(&self, queue_url: &str, body: &str, delivery_id: &str) -> Result<String, QueueError>;
    /// Hides a received message for `seconds` (hands it back for later).
    async fn hide(&self, queue_url: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError>;
    /// Receives up to `max` messages (at most 10), waiting at most `wait_seconds` for the first.
    async fn receive(&self, queue_url: &str, max: u32, wait_seconds: u32) -> Result<Vec<Received>, QueueError>;
    async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), QueueError>;
}

/// A message taken from a queue, hidden until deleted or its visibility timeout passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    pub delivery_id: String,
}

/// The real adapter over the SQS API.
#[derive(Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
}

impl SqsQueue {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(sdk),
        }
    }
}

fn classify<E, R>(queue_url: &str, error: &aws_sdk_sqs::error::SdkError<E, R>) -> QueueError
where
    E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match crate::aws::code(error) {
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist") => QueueError::NotFound {
            queue_url: queue_url.into(),
        },
        _ => QueueError::Refused {
            queue_url: queue_url.into(),
            reason: crate::aws::describe(error),
        },
    }
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, queue_url: &str, body: &str, delivery_id: &str) -> Result<String, QueueError> {
        let attribute = aws_sdk_sqs::types::MessageAttributeValue::builder()
            .data_type("String")
            .string_value(delivery_id)
            .build()
            .map_err(|error| QueueError::Refused {
                queue_url: queue_url.into(),
                reason: error.to_string(),
            })?;
        let output = self
            .client
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .message_attributes(DELIVERY_ID_ATTRIBUTE, attribute)
            .send()
            .await
            .map_err(|error| classify(queue_url, &error))?;
        Ok(output.message_id.unwrap_or_default())
    }

    async fn hide(&self, queue_url: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
        self.client
            .change_message_visibility()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds as i32)
            .send()
            .await
            .map_err(|error| classify(queue_url, &error))?;
        Ok(())
    }

    async fn receive(&self, queue_url: &str, max: u32, wait_seconds: u32) -> Result<Vec<Received>, QueueError> {
        let output = self
            .client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait_seconds.min(20) as i32)
            .message_attribute_names(DELIVERY_ID_ATTRIBUTE)
            .send()
            .await
            .map_err(|error| classify(queue_url, &error))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|message| Received {
                delivery_id: message
                    .message_attributes
                    .as_ref()
                    .and_then(|attributes| attributes.get(DELIVERY_ID_ATTRIBUTE))
                    .and_then(|value| value.string_value.clone())
                    .unwrap_or_default(),
                message_id: message.message_id.unwrap_or_default(),
                receipt_handle: message.receipt_handle.unwrap_or_default(),
                body: message.body.unwrap_or_default(),
            })
            .collect())
    }

    async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), QueueError> {
        self.client
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|error| classify(queue_url, &error))?;
        Ok(())
    }
}
