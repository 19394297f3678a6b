//! In-memory fakes of the ports, for unit and simulation tests. Each records what it was asked and
//! can be told to fail.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::queue::{Queue, QueueError};
use crate::secrets::{Secrets, SecretsError};

/// A message the fake queue took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub queue_url: String,
    pub body: String,
    pub delivery_id: String,
}

#[derive(Default)]
pub struct FakeQueue {
    sent: Mutex<Vec<SentMessage>>,
    refuse: Mutex<Option<QueueError>>,
}

impl FakeQueue {
    pub fn sent(&self) -> Vec<SentMessage> {
        self.sent.lock().unwrap().clone()
    }

    /// Every later send fails with this error.
    pub fn refuse_with(&self, error: QueueError) {
        *self.refuse.lock().unwrap() = Some(error);
    }
}

#[async_trait]
impl Queue for FakeQueue {
    async fn send(
        &self,
        queue_url: &str,
        body: &str,
        delivery_id: &str,
    ) -> Result<String, QueueError> {
        if let Some(error) = self.refuse.lock().unwrap().clone() {
            return Err(error);
        }
        let mut sent = self.sent.lock().unwrap();
        sent.push(SentMessage {
            queue_url: queue_url.into(),
            body: body.into(),
            delivery_id: delivery_id.into(),
        });
        Ok(format!("message-{}", sent.len()))
    }
}

#[derive(Default)]
pub struct FakeSecrets {
    values: Mutex<BTreeMap<String, String>>,
}

impl FakeSecrets {
    pub fn with(values: &[(&str, &str)]) -> Self {
        Self {
            values: Mutex::new(
                values
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.values.lock().unwrap().keys().cloned().collect()
    }
}

#[async_trait]
impl Secrets for FakeSecrets {
    async fn get(&self, name: &str) -> Result<String, SecretsError> {
        self.values
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| SecretsError::NotFound(name.into()))
    }

    async fn put_secure(&self, name: &str, value: &str) -> Result<(), SecretsError> {
        self.values
            .lock()
            .unwrap()
            .insert(name.into(), value.into());
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), SecretsError> {
        self.values.lock().unwrap().remove(name);
        Ok(())
    }
}
