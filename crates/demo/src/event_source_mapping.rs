//! The SQS event source mapping, run beside the boxes and EventBridge as it is in AWS (run in the
//! same loop, a create-runner batch held up every stop-runner behind it, so finished runners held
//! their room for as long as a batch took): batches of up to 10 from the jobs queue to
//! create-runner, deleting what create-runner did not report failed and leaving batch item
//! failures to their visibility timeout.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use testkit::runtime_api::LambdaProcess;
use testkit::stack::sqs_event;

use crate::{Error, Ledger};

/// The running mapping; `stop` ends it after the batch in hand and gives create-runner back.
pub(crate) struct EventSourceMapping {
    stopping: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<Result<LambdaProcess, Error>>>,
}

/// What the mapping tells the demo about one job as it passes: the most receives it saw.
pub(crate) struct Watched {
    pub job_id: u64,
    pub receives: Arc<AtomicU32>,
}

impl EventSourceMapping {
    pub fn start(
        create_runner: LambdaProcess,
        timeout: Duration,
        sqs: aws_sdk_sqs::Client,
        queue_url: String,
        watched: &Watched,
        ledger: Ledger,
    ) -> Self {
        let stopping = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(serve(
            create_runner,
            timeout,
            sqs,
            queue_url,
            (watched.job_id, watched.receives.clone()),
            ledger,
            stopping.clone(),
        ));
        Self {
            stopping,
            task: Some(task),
        }
    }

    /// Whether it ended on its own, which it does only on an error.
    pub fn failed(&self) -> bool {
        self.task.as_ref().is_none_or(|task| task.is_finished())
    }

    pub async fn stop(mut self) -> Result<LambdaProcess, Error> {
        self.stopping.store(true, Ordering::Relaxed);
        let task = self.task.take().ok_or("the event source mapping was stopped already")?;
        task.await
            .map_err(|error| format!("the event source mapping: {error}"))?
    }
}

impl Drop for EventSourceMapping {
    fn drop(&mut self) {
        // A demo that fails leaves no batch running behind it.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn serve(
    mut create_runner: LambdaProcess,
    timeout: Duration,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    (watched_job, receives): (u64, Arc<AtomicU32>),
    ledger: Ledger,
    stopping: Arc<AtomicBool>,
) -> Result<LambdaProcess, Error> {
    let watched_body = format!("\"job_id\":{watched_job},");
    while !stopping.load(Ordering::Relaxed) {
        let since = Instant::now();
        let received = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await?;
        ledger.charge("ReceiveMessage (jobs queue)", since);
        let messages = received.messages();
        if messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let records: Vec<(&str, &str, &str, u32)> = messages
            .iter()
            .map(|m| {
                let count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(1);
                (
                    m.message_id().unwrap_or_default(),
                    m.receipt_handle().unwrap_or_default(),
                    m.body().unwrap_or_default(),
                    count,
                )
            })
            .collect();
        for (_, _, body, count) in &records {
            if body.contains(&watched_body) {
                receives.fetch_max(*count, Ordering::Relaxed);
            }
        }
        let since = Instant::now();
        let answer = create_runner
            .invoke_with_deadline(sqs_event(&records), timeout)
            .await
            .map_err(|error| format!("create-runner failed: {error}"))?;
        ledger.charge("create-runner", since);
        let failed: BTreeSet<&str> = answer["batchItemFailures"]
            .as_array()
            .map(|f| f.iter().filter_map(|i| i["itemIdentifier"].as_str()).collect())
            .unwrap_or_default();
        let done: Vec<_> = records
            .iter()
            .filter(|(id, ..)| !failed.contains(id))
            .map(|(id, receipt, ..)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(*id)
                    .receipt_handle(*receipt)
                    .build()
            })
            .collect::<Result<_, _>>()?;
        if !done.is_empty() {
            let deleted = sqs
                .delete_message_batch()
                .queue_url(&queue_url)
                .set_entries(Some(done))
                .send()
                .await?;
            if !deleted.failed().is_empty() {
                return Err(format!("DeleteMessageBatch refused {:?}", deleted.failed()).into());
            }
        }
    }
    Ok(create_runner)
}
