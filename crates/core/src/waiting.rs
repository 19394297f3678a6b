//! The waiting list: jobs that found their template at `max_runners`, in the order GitHub queued
//! them, until a launch slot frees.
//!
//! Waiting for room is not a failure, so it does not spend the jobs queue's receives (after
//! `max_receive_count` of those SQS moves a message to the DLQ). create-runner *parks* such a job
//! here and deletes its message; whoever frees a slot *wakes* the template: the oldest parked
//! jobs, as many as there are free slots, go back to the jobs queue.
//!
//! A woken job stays listed, marked `woken_at`, until create-runner has served it (launched it,
//! or found it needs no runner, or handed it back for a failure): then create-runner takes it
//! off. Meanwhile it holds its place and counts against the free slots, so that the next wake
//! (another slot freed, a park) does not send a second job for the same slot, and a job queued
//! later waits behind it. A woken job that finds the template full after all (another handler's
//! launch took the slot) is parked again at its own place, which clears the mark. A mark older
//! than `WOKEN_FOR` whose job holds no slot is taken for a lost message (a create-runner killed
//! before it served the job) and the job is woken again; create-runner's "already served?" keeps
//! a duplicate from a second instance. Marking is conditioned on the item as it was read, so two
//! wakes never send one job twice, and a job parked again since is never lost to a stale read.
//!
//! Who wakes a template: stop-runner after it freed an ended instance's slot, the sweep (for every
//! template, as the pump for wakes that were missed), and create-runner right after it parked a
//! job (a slot freed between its count and its park would otherwise wake nobody) or after a woken
//! job turned out to need no runner.
//!
//! The store is a DynamoDB table (config key `waiting_table`; partition key `template`, sort key
//! `place`): a Query on one partition reads its items in sort-key order, ascending by default
//! (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_Query.html>, `ScanIndexForward`),
//! and with `ConsistentRead` sees every write acknowledged before it. `place` is the job's queue
//! time then its id, zero-padded, so that the string order is the queue order. Each item carries
//! `expires_at`, 25 hours after the job was queued, for the table's TTL: GitHub cancels a job left
//! queued for 24 hours.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::config::Config;
use crate::job::JobMessage;
use crate::ports::Ports;
use crate::redrive::QUEUE_LIMIT;

/// How many listed jobs one wake reads at most (the woken ones in flight among them): one Query
/// page of small items. The next wake, or the sweep, moves the rest.
pub const MOST_READ_PER_WAKE: u32 = 100;
/// How long a woken job counts as on its way to a slot. create-runner claims its slot within
/// seconds of receiving the message, but the message can wait behind a backlog in the jobs queue
/// (a burst larger than create-runner's concurrency serves at once: the demo's 200 jobs kept
/// woken messages waiting over a minute, and a 2-minute mark then sent a second job for the same
/// slot). A mark this old whose job claimed nothing means its handler died or its removal
/// failed; SQS brings a message whose handler died back after the visibility timeout anyway.
pub const WOKEN_FOR: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WaitingError {
    #[error(
        "waiting table `{0}` does not exist: check waiting_table in the config document (Terraform's output `waiting_table_name`)"
    )]
    NoTable(String),
    #[error(
        "waiting table `{table}`: access denied ({reason}); the function's role needs dynamodb:PutItem, UpdateItem, Query and DeleteItem on it"
    )]
    AccessDenied { table: String, reason: String },
    #[error("waiting table `{table}`: {reason}")]
    Failed { table: String, reason: String },
}

/// A job in the waiting list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub place: String,
    /// The job's queue message, as create-runner received it.
    pub body: String,
    pub delivery_id: String,
    /// When a wake sent it back to the jobs queue (in whole milliseconds), if one did since it
    /// was parked.
    pub woken_at: Option<SystemTime>,
}

impl Parked {
    /// The job's id, from its place.
    pub fn job_id(&self) -> Option<u64> {
        self.place.rsplit('#').next()?.parse().ok()
    }

    /// When GitHub queued the job, from its place.
    pub fn queued_at(&self) -> Option<SystemTime> {
        let ms: u64 = self.place.split('#').next()?.parse().ok()?;
        (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// Woken and, as far as anyone knows, on its way to a slot.
    fn on_its_way(&self, now: SystemTime) -> bool {
        self.woken_at
            .is_some_and(|at| now.duration_since(at).unwrap_or_default() < WOKEN_FOR)
    }
}

#[async_trait]
pub trait Waiting: Send + Sync {
    /// Puts a job in its template's list at `place` (a job parked again keeps its place, and
    /// loses its wake mark).
    async fn park(&self, template: &str, place: &str, body: &str, delivery_id: &str) -> Result<(), WaitingError>;
    /// The first `limit` jobs of a template's list, oldest first, read consistently.
    async fn oldest(&self, template: &str, limit: u32) -> Result<Vec<Parked>, WaitingError>;
    /// Marks a job woken now, if it is still as it was read (same message, same mark); answers
    /// whether it did. Of two wakes that read the same job, one marks it.
    async fn mark_woken(&self, template: &str, parked: &Parked) -> Result<bool, WaitingError>;
    /// Takes a woken job off the list once it is served; a job parked again since (no mark) stays.
    async fn remove_woken(&self, template: &str, place: &str) -> Result<(), WaitingError>;
    /// Takes a job off the list if it is still as it was read (a job that cannot be served any
    /// more); answers whether it did.
    async fn remove(&self, template: &str, parked: &Parked) -> Result<bool, WaitingError>;
}

/// A job's place in its template's list: when GitHub queued it (else when the webhook took it),
/// in milliseconds, then its id, so that two jobs queued in the same millisecond keep one order.
pub fn place(message: &JobMessage) -> String {
    let queued = message
        .queued_at()
        .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    format!("{:016}#{:020}", queued.as_millis(), message.job_id)
}

/// What one wake did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Woken {
    /// Free slots the wake counted: `max_runners` less the slots claimed, less the jobs woken
    /// before and still on their way.
    pub room: u32,
    /// Jobs sent back to the jobs queue.
    pub moved: u32,
    /// Jobs taken off the list because GitHub has cancelled them by now (queued over 24 h ago),
    /// or because their message cannot be read.
    pub dropped: u32,
}

/// Sends the oldest parked jobs of `template` back to the jobs queue, one per free launch slot.
/// Errors are logged and answered as nothing (more) moved: the next wake, or the sweep, moves
/// the job.
///
/// Long because counting room, then marking and sending each woken job, has a failure path at every step that
/// must leave the job listed.
pub async fn wake(config: &Config, ports: &Ports, template: &str) -> Woken {
    let mut woken = Woken::default();
    let Some(waiting) = &ports.waiting else {
        return woken;
    };
    let Some(max_runners) = config.templates.get(template).map(|t| t.max_runners) else {
        return woken;
    };
    let claims = match ports.slots.list(Some(template)).await {
        Ok(claims) => claims,
        Err(error) => {
            tracing::warn!(template, %error, "wake: cannot count the launch slots; the next wake moves the waiting jobs");
            return woken;
        }
    };
    if claims.len() as u32 >= max_runners {
        return woken;
    }
    let listed = match waiting.oldest(template, MOST_READ_PER_WAKE).await {
        Ok(listed) => listed,
        Err(error) => {
            tracing::warn!(template, %error, "wake: cannot read the waiting list; the next wake moves the waiting jobs");
            return woken;
        }
    };
    // Woken jobs that have claimed their slot are in the claims already.
    let claimed: HashSet<u64> = claims.iter().map(|found| found.claim.job_id).collect();
    let now = SystemTime::now();
    let on_their_way = listed
        .iter()
        .filter(|job| job.on_its_way(now) && !job.job_id().is_some_and(|id| claimed.contains(&id)))
        .count();
    woken.room = max_runners.saturating_sub((claims.len() + on_their_way) as u32);
    for job in listed.into_iter().filter(|job| !job.on_its_way(now)) {
        if woken.moved == woken.room {
            break;
        }
        let mut message = match JobMessage::decode(&job.body) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(template, place = job.place, "waiting job dropped: {error}");
                if matches!(waiting.remove(template, &job).await, Ok(true)) {
                    woken.dropped += 1;
                }
                continue;
            }
        };
        let job_id = message.job_id;
        if message.age().unwrap_or_default() > QUEUE_LIMIT {
            tracing::warn!(
                job_id,
                template,
                step = crate::logging::step::WAIT_EXPIRED,
                "job {job_id} dropped from the waiting list: it was queued over 24 h ago, and GitHub cancels such jobs"
            );
            if matches!(waiting.remove(template, &job).await, Ok(true)) {
                woken.dropped += 1;
            }
            continue;
        }
        match waiting.mark_woken(template, &job).await {
            Ok(true) => {}
            // Another wake took it, or it was parked again since the read: the next wake sees it.
            Ok(false) => continue,
            Err(error) => {
                tracing::warn!(job_id, template, %error, "wake: cannot mark a waiting job woken; the next wake moves it");
                break;
            }
        }
        // A trip of its own, as from the DLQ: SQS counts receives from 1 again, and a launch
        // token of an earlier trip would get that trip's answers from EC2.
        message.trip += 1;
        if let Err(error) = ports
            .queue
            .send(&config.queue_url, &message.encode(), &job.delivery_id)
            .await
        {
            // Marked and not sent: parked again as it was, which clears the mark, so that its slot
            // is not held for it; if even that fails, it is woken again once the mark is old.
            tracing::warn!(job_id, template, %error, "wake: cannot send a waiting job to the jobs queue; it keeps its place");
            if let Err(error) = waiting.park(template, &job.place, &job.body, &job.delivery_id).await {
                tracing::warn!(job_id, template, %error, "wake: cannot clear the wake mark; the job is woken again in {} s", WOKEN_FOR.as_secs());
            }
            break;
        }
        woken.moved += 1;
        tracing::info!(
            job_id,
            template,
            delivery_id = job.delivery_id,
            step = crate::logging::step::WOKEN,
            "job {job_id}: a launch slot of `{template}` is free; sent back to the jobs queue"
        );
    }
    woken
}

/// The real adapter over DynamoDB.
#[derive(Clone)]
pub struct DynamoWaiting {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

const TEMPLATE: &str = "template";
const PLACE: &str = "place";
const BODY: &str = "body";
const DELIVERY_ID: &str = "delivery_id";
const EXPIRES_AT: &str = "expires_at";
const WOKEN_AT: &str = "woken_at";
/// The TTL attribute's lead over the job's queue time: a day (GitHub's limit) and an hour.
const KEPT_FOR: Duration = Duration::from_secs(25 * 60 * 60);

impl DynamoWaiting {
    pub fn new(sdk: &aws_config::SdkConfig, table: &str) -> Self {
        Self {
            client: aws_sdk_dynamodb::Client::new(sdk),
            table: table.to_string(),
        }
    }

    fn key(template: &str, place: &str) -> std::collections::HashMap<String, AttributeValue> {
        std::collections::HashMap::from([
            (TEMPLATE.to_string(), AttributeValue::S(template.to_string())),
            (PLACE.to_string(), AttributeValue::S(place.to_string())),
        ])
    }

    fn classify<E, R>(&self, error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> WaitingError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use crate::aws::TableFault;
        let table = self.table.clone();
        match crate::aws::table_fault(error) {
            TableFault::NoTable => WaitingError::NoTable(table),
            TableFault::AccessDenied(reason) => WaitingError::AccessDenied { table, reason },
            TableFault::Throttled(reason) | TableFault::Failed(reason) => WaitingError::Failed { table, reason },
        }
    }
}

/// The epoch second at which DynamoDB's TTL may delete a parked job: `KEPT_FOR` after its queue
/// time, read from the place.
fn expires_at(place: &str) -> u64 {
    let queued_ms: u64 = place
        .split('#')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_default();
    let queued = if queued_ms == 0 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
    } else {
        Duration::from_millis(queued_ms)
    };
    (queued + KEPT_FOR).as_secs()
}

#[async_trait]
impl Waiting for DynamoWaiting {
    async fn park(&self, template: &str, place: &str, body: &str, delivery_id: &str) -> Result<(), WaitingError> {
        let mut item = Self::key(template, place);
        item.insert(BODY.into(), AttributeValue::S(body.to_string()));
        item.insert(DELIVERY_ID.into(), AttributeValue::S(delivery_id.to_string()));
        item.insert(EXPIRES_AT.into(), AttributeValue::N(expires_at(place).to_string()));
        crate::aws::put_item(&self.client, &self.table, item)
            .await
            .map_err(|error| self.classify(&error))
    }

    async fn oldest(&self, template: &str, limit: u32) -> Result<Vec<Parked>, WaitingError> {
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#template = :template")
            .expression_attribute_names("#template", TEMPLATE)
            .expression_attribute_values(":template", AttributeValue::S(template.to_string()))
            .scan_index_forward(true)
            .consistent_read(true)
            .limit(limit.max(1) as i32)
            .send()
            .await
            .map_err(|error| self.classify(&error))?;
        let text = |item: &std::collections::HashMap<String, AttributeValue>, name: &str| {
            item.get(name).and_then(|v| v.as_s().ok()).cloned()
        };
        Ok(output
            .items
            .unwrap_or_default()
            .iter()
            .filter_map(|item| {
                Some(Parked {
                    place: text(item, PLACE)?,
                    body: text(item, BODY).unwrap_or_default(),
                    delivery_id: text(item, DELIVERY_ID).unwrap_or_default(),
                    woken_at: item
                        .get(WOKEN_AT)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|ms| ms.parse().ok())
                        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
                })
            })
            .collect())
    }

    async fn mark_woken(&self, template: &str, parked: &Parked) -> Result<bool, WaitingError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(template, &parked.place)))
            .update_expression("SET #woken = :now")
            .expression_attribute_names("#woken", WOKEN_AT)
            .expression_attribute_names("#body", BODY)
            .expression_attribute_values(":now", AttributeValue::N(millis(SystemTime::now()).to_string()))
            .expression_attribute_values(":body", AttributeValue::S(parked.body.clone()));
        update = match parked.woken_at {
            None => update.condition_expression("#body = :body AND attribute_not_exists(#woken)"),
            Some(at) => update
                .condition_expression("#body = :body AND #woken = :read")
                .expression_attribute_values(":read", AttributeValue::N(millis(at).to_string())),
        };
        match update.send().await {
            Ok(_) => Ok(true),
            Err(error) if crate::aws::condition_failed(&error) => Ok(false),
            Err(error) => Err(self.classify(&error)),
        }
    }

    async fn remove_woken(&self, template: &str, place: &str) -> Result<(), WaitingError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(template, place)))
            .condition_expression("attribute_exists(#woken)")
            .expression_attribute_names("#woken", WOKEN_AT)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // Not there (served before, or never parked), or parked again since: nothing to take off.
            Err(error) if crate::aws::condition_failed(&error) => Ok(()),
            Err(error) => Err(self.classify(&error)),
        }
    }

    async fn remove(&self, template: &str, parked: &Parked) -> Result<bool, WaitingError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(template, &parked.place)))
            .condition_expression("#body = :body")
            .expression_attribute_names("#body", BODY)
            .expression_attribute_values(":body", AttributeValue::S(parked.body.clone()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error) if crate::aws::condition_failed(&error) => Ok(false),
            Err(error) => Err(self.classify(&error)),
        }
    }
}

fn millis(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()
}

/// The in-memory list, for flow tests and the simulation.
#[derive(Default)]
pub struct FakeWaiting {
    lists: Mutex<BTreeMap<String, BTreeMap<String, Parked>>>,
    failures: Mutex<VecDeque<WaitingError>>,
}

impl FakeWaiting {
    /// The next calls fail with these errors, in order.
    pub fn fail_next(&self, errors: impl IntoIterator<Item = WaitingError>) {
        self.failures.lock().unwrap().extend(errors);
    }

    /// Parks a job as create-runner does.
    pub async fn park_message(&self, message: &JobMessage) {
        self.park(
            &message.template,
            &place(message),
            &message.encode(),
            &message.delivery_id,
        )
        .await
        .expect("the fake parks unless told to fail");
    }

    /// Makes every wake mark older by `by`, as if that long had passed.
    pub fn age_marks(&self, by: Duration) {
        for list in self.lists.lock().unwrap().values_mut() {
            for parked in list.values_mut() {
                parked.woken_at = parked.woken_at.map(|at| at - by);
            }
        }
    }

    /// Every parked job of a template, oldest first.
    pub fn listed(&self, template: &str) -> Vec<Parked> {
        self.lists
            .lock()
            .unwrap()
            .get(template)
            .map(|list| list.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many jobs are parked, over every template.
    pub fn len(&self) -> usize {
        self.lists.lock().unwrap().values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fault(&self) -> Result<(), WaitingError> {
        match self.failures.lock().unwrap().pop_front() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Waiting for FakeWaiting {
    async fn park(&self, template: &str, place: &str, body: &str, delivery_id: &str) -> Result<(), WaitingError> {
        self.fault()?;
        self.lists
            .lock()
            .unwrap()
            .entry(template.to_string())
            .or_default()
            .insert(
                place.to_string(),
                Parked {
                    place: place.to_string(),
                    body: body.to_string(),
                    delivery_id: delivery_id.to_string(),
                    woken_at: None,
                },
            );
        Ok(())
    }

    async fn oldest(&self, template: &str, limit: u32) -> Result<Vec<Parked>, WaitingError> {
        self.fault()?;
        Ok(self.listed(template).into_iter().take(limit.max(1) as usize).collect())
    }

    async fn mark_woken(&self, template: &str, parked: &Parked) -> Result<bool, WaitingError> {
        self.fault()?;
        let mut lists = self.lists.lock().unwrap();
        let Some(listed) = lists.get_mut(template).and_then(|list| list.get_mut(&parked.place)) else {
            return Ok(false);
        };
        if listed.body != parked.body || listed.woken_at != parked.woken_at {
            return Ok(false);
        }
        // Kept in whole milliseconds, as DynamoDB keeps it.
        listed.woken_at = Some(UNIX_EPOCH + Duration::from_millis(millis(SystemTime::now()) as u64));
        Ok(true)
    }

    async fn remove_woken(&self, template: &str, place: &str) -> Result<(), WaitingError> {
        self.fault()?;
        if let Some(list) = self.lists.lock().unwrap().get_mut(template)
            && list.get(place).is_some_and(|listed| listed.woken_at.is_some())
        {
            list.remove(place);
        }
        Ok(())
    }

    async fn remove(&self, template: &str, parked: &Parked) -> Result<bool, WaitingError> {
        self.fault()?;
        let mut lists = self.lists.lock().unwrap();
        let Some(list) = lists.get_mut(template) else {
            return Ok(false);
        };
        if list.get(&parked.place).is_some_and(|listed| listed.body == parked.body) {
            list.remove(&parked.place);
            return Ok(true);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(job_id: u64, created_at: &str) -> JobMessage {
        let mut message: JobMessage = serde_json::from_value(serde_json::json!({
            "version": 1, "delivery_id": format!("d-{job_id}"), "job_id": job_id, "run_id": 1, "run_attempt": 1,
            "repository": "my-org/app", "owner": "my-org", "name": "app", "labels": ["self-hosted", "cpu"],
            "template": "cpu", "workflow_name": "CI", "job_name": "build", "job_url": "",
            "created_at": created_at, "received_at": ""
        }))
        .unwrap();
        message.created_at = created_at.to_string();
        message
    }

    #[test]
    fn places_sort_as_github_queued_the_jobs() {
        let early = place(&message(9_000_000_000, "2026-12-01T10:00:00Z"));
        let later = place(&message(5, "2026-12-01T10:00:01Z"));
        let same_ms_lower_id = place(&message(4, "2026-12-01T10:00:01Z"));
        assert!(
            early < same_ms_lower_id && same_ms_lower_id < later,
            "{early} {same_ms_lower_id} {later}"
        );
    }

    #[test]
    fn a_parked_job_expires_a_day_and_an_hour_after_it_was_queued() {
        let queued = place(&message(1, "2026-12-01T10:00:00Z"));
        let at = crate::job::parse_rfc3339("2026-12-02T11:00:00Z").unwrap();
        assert_eq!(expires_at(&queued), at.duration_since(UNIX_EPOCH).unwrap().as_secs());
    }

    #[tokio::test]
    async fn the_fake_lists_oldest_first_and_a_job_parked_again_keeps_one_place() {
        let waiting = FakeWaiting::default();
        waiting.park("cpu", "2", "b", "d2").await.unwrap();
        waiting.park("cpu", "1", "a", "d1").await.unwrap();
        waiting.park("cpu", "1", "a2", "d1").await.unwrap();
        waiting.park("gpu", "0", "g", "d0").await.unwrap();
        let oldest = waiting.oldest("cpu", 5).await.unwrap();
        assert_eq!(oldest.iter().map(|p| p.body.as_str()).collect::<Vec<_>>(), ["a2", "b"]);
        assert_eq!(waiting.oldest("cpu", 1).await.unwrap().len(), 1);
        let read = waiting.oldest("cpu", 1).await.unwrap().remove(0);
        waiting.park("cpu", "1", "a3", "d1").await.unwrap();
        assert!(
            !waiting.remove("cpu", &read).await.unwrap(),
            "parked again since it was read: kept"
        );
        assert!(
            !waiting.mark_woken("cpu", &read).await.unwrap(),
            "parked again since it was read: not woken"
        );
        let read = waiting.oldest("cpu", 1).await.unwrap().remove(0);
        assert!(waiting.mark_woken("cpu", &read).await.unwrap());
        assert!(
            !waiting.mark_woken("cpu", &read).await.unwrap(),
            "a second wake of the same read loses"
        );
        waiting.remove_woken("cpu", "2").await.unwrap();
        assert_eq!(
            waiting.listed("cpu").len(),
            2,
            "a job never woken is not taken off as served"
        );
        waiting.remove_woken("cpu", "1").await.unwrap();
        assert_eq!(waiting.listed("cpu").len(), 1);
        assert_eq!(waiting.len(), 2);
    }
}
