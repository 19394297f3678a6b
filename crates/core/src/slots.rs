//! Launch slots: a template's `max_runners` slots, each held by at most one launch in flight or
//! live instance, so that concurrent create-runner invocations never launch past `max_runners`.
//!
//! A claim is an item of a DynamoDB table (config key `slots_table`; partition key `template`,
//! sort key `slot`) that only one handler can create: a PutItem conditioned on
//! `attribute_not_exists`, which DynamoDB documents as the way to keep a put from replacing an
//! item (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html#Expressions.ConditionExpressions.PreventingOverwrites>).
//! They were SSM parameters before: PutParameter's account-wide rate (a few per second by
//! default) then bounded a burst of launches, as docs/performance.md shows. Reads here are
//! strongly consistent (`ConsistentRead`), and a claim is freed only while it is still the claim
//! its releaser read (a conditional DeleteItem), so a slot claimed again since is never freed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use crate::fleet::{Instance, TAG_SLOT, TAG_TEMPLATE};

/// The slot an instance holds: its template and slot tags.
pub fn slot_of(instance: &Instance) -> Option<(&str, u32)> {
    Some((instance.tag(TAG_TEMPLATE)?, instance.tag(TAG_SLOT)?.parse().ok()?))
}

/// Frees the launch slot an ended instance held (stop-runner, after terminating it), unless it
/// has been claimed again since: by another job, by this job's relaunch (a claim with another
/// relaunch count), or by a retry of the same launch (a claim made after the instance's launch).
/// Answers the template whose slot was freed.
pub async fn free_slot_of_ended<'i>(slots: &dyn Slots, instance: &'i Instance, job_id: u64) -> Option<&'i str> {
    let (template, slot) = slot_of(instance)?;
    match slots.get(template, slot).await {
        Ok(Some(claim))
            if claim.job_id == job_id
                && claim.relaunches == instance.relaunches()
                && instance
                    .launched_at
                    .is_none_or(|launched| claim.at <= launched + std::time::Duration::from_secs(5)) =>
        {
            match slots.release(template, slot, &claim).await {
                Ok(freed) => freed.then_some(template),
                Err(error) => {
                    tracing::warn!(job_id, template, slot, %error, "cannot free the launch slot; the sweep frees it");
                    None
                }
            }
        }
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(job_id, template, slot, %error, "cannot read the launch slot; the sweep frees it");
            None
        }
    }
}

/// Gives back a slot a create-runner handler claimed and no instance of its holds (its launch
/// failed, or another handler is launching the job). Its own claim only: one claimed again
/// since stays.
pub async fn give_back(slots: &dyn Slots, template: &str, slot: u32, claim: &SlotClaim) {
    if let Err(error) = slots.release(template, slot, claim).await {
        tracing::warn!(template, slot, %error, "cannot release the launch slot; the sweep frees it");
    }
}

/// Who claimed a slot: the job (and its relaunch), and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotClaim {
    pub job_id: u64,
    pub relaunches: u32,
    pub at: SystemTime,
}

impl SlotClaim {
    /// The claim time as stored: Unix milliseconds.
    pub fn at_millis(&self) -> u64 {
        self.at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    /// The same claim as the store gives it back (its time in whole milliseconds).
    pub fn stored(self) -> Self {
        Self {
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(self.at_millis()),
            ..self
        }
    }
}

/// A claim found in the store, with the slot it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedSlot {
    pub template: String,
    pub slot: u32,
    pub claim: SlotClaim,
}

/// What a claim of one slot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The slot is this claim's.
    Claimed,
    /// Another claim holds the slot (None: it was freed again before it could be read).
    Held(Option<SlotClaim>),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SlotsError {
    #[error("DynamoDB throttled a request to the launch-slot table `{0}`; it will be retried")]
    Throttled(String),
    #[error(
        "the launch-slot table `{0}` does not exist in this region: check the config key `slots_table` (Terraform \
         writes it) and that the table was created"
    )]
    NoTable(String),
    #[error(
        "DynamoDB refused access to the launch-slot table `{table}` ({reason}): the Lambda role needs the table's grants in terraform/iam.tf"
    )]
    AccessDenied { table: String, reason: String },
    #[error("a request to the launch-slot table `{table}` failed: {reason}")]
    Failed { table: String, reason: String },
}

impl SlotsError {
    /// Worth trying again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Throttled(_) | Self::Failed { .. })
    }
}

#[async_trait]
pub trait Slots: Send + Sync {
    /// Claims `slot` of `template` if no claim holds it (atomic: of two handlers claiming one
    /// slot, one gets `Claimed`).
    async fn claim(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<ClaimAnswer, SlotsError>;
    /// The claim that holds a slot, if any.
    async fn get(&self, template: &str, slot: u32) -> Result<Option<SlotClaim>, SlotsError>;
    /// Frees a slot if `claim` (as the store gave it back, or as it was claimed) still holds
    /// it; answers whether it did. A slot already free, or claimed again since, is left as it is.
    async fn release(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<bool, SlotsError>;
    /// Every claim of one template, or of every template (None), read consistently.
    async fn list(&self, template: Option<&str>) -> Result<Vec<ClaimedSlot>, SlotsError>;
}

/// The real adapter over DynamoDB.
#[derive(Clone)]
pub struct DynamoSlots {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

const TEMPLATE: &str = "template";
const SLOT: &str = "slot";
const JOB_ID: &str = "job_id";
const RELAUNCHES: &str = "relaunches";
const CLAIMED_AT: &str = "claimed_at";

impl DynamoSlots {
    pub fn new(sdk: &aws_config::SdkConfig, table: &str) -> Self {
        Self {
            client: aws_sdk_dynamodb::Client::new(sdk),
            table: table.to_string(),
        }
    }

    pub fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }

    fn key(template: &str, slot: u32) -> HashMap<String, AttributeValue> {
        HashMap::from([
            (TEMPLATE.to_string(), AttributeValue::S(template.to_string())),
            (SLOT.to_string(), AttributeValue::N(slot.to_string())),
        ])
    }

    fn classify<E, R>(&self, error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> SlotsError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use crate::aws::TableFault;
        let table = self.table.clone();
        match crate::aws::table_fault(error) {
            TableFault::Throttled(_) => SlotsError::Throttled(table),
            TableFault::NoTable => SlotsError::NoTable(table),
            TableFault::AccessDenied(reason) => SlotsError::AccessDenied { table, reason },
            TableFault::Failed(reason) => SlotsError::Failed { table, reason },
        }
    }
}

fn number<T: std::str::FromStr>(item: &HashMap<String, AttributeValue>, name: &str) -> Option<T> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// A claim from a stored item; None for an item sophons did not write.
fn parse_item(item: &HashMap<String, AttributeValue>) -> Option<ClaimedSlot> {
    Some(ClaimedSlot {
        template: item.get(TEMPLATE)?.as_s().ok()?.clone(),
        slot: number(item, SLOT)?,
        claim: SlotClaim {
            job_id: number(item, JOB_ID)?,
            relaunches: number(item, RELAUNCHES)?,
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(number(item, CLAIMED_AT)?),
        },
    })
}

#[async_trait]
impl Slots for DynamoSlots {
    async fn claim(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<ClaimAnswer, SlotsError> {
        let mut item = Self::key(template, slot);
        item.insert(JOB_ID.into(), AttributeValue::N(claim.job_id.to_string()));
        item.insert(RELAUNCHES.into(), AttributeValue::N(claim.relaunches.to_string()));
        item.insert(CLAIMED_AT.into(), AttributeValue::N(claim.at_millis().to_string()));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#template)")
            .expression_attribute_names("#template", TEMPLATE)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(ClaimAnswer::Claimed),
            Err(error) => {
                let holder = error.as_service_error().and_then(|e| match e {
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(failed) => {
                        Some(failed.item().and_then(parse_item))
                    }
                    _ => None,
                });
                match holder {
                    Some(Some(found)) => Ok(ClaimAnswer::Held(Some(found.claim))),
                    // An answer without the holder (an older endpoint): read it.
                    Some(None) => Ok(ClaimAnswer::Held(self.get(template, slot).await?)),
                    None => Err(self.classify(&error)),
                }
            }
        }
    }

    async fn get(&self, template: &str, slot: u32) -> Result<Option<SlotClaim>, SlotsError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(template, slot)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|error| self.classify(&error))?;
        Ok(output.item().and_then(parse_item).map(|found| found.claim))
    }

    async fn release(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<bool, SlotsError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(template, slot)))
            .condition_expression("#job = :job AND #relaunches = :relaunches AND #at = :at")
            .expression_attribute_names("#job", JOB_ID)
            .expression_attribute_names("#relaunches", RELAUNCHES)
            .expression_attribute_names("#at", CLAIMED_AT)
            .expression_attribute_values(":job", AttributeValue::N(claim.job_id.to_string()))
            .expression_attribute_values(":relaunches", AttributeValue::N(claim.relaunches.to_string()))
            .expression_attribute_values(":at", AttributeValue::N(claim.at_millis().to_string()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(error) => Err(self.classify(&error)),
        }
    }

    async fn list(&self, template: Option<&str>) -> Result<Vec<ClaimedSlot>, SlotsError> {
        let mut found = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let (items, next) = match template {
                Some(template) => {
                    let output = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("#template = :template")
                        .expression_attribute_names("#template", TEMPLATE)
                        .expression_attribute_values(":template", AttributeValue::S(template.to_string()))
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|error| self.classify(&error))?;
                    (output.items.unwrap_or_default(), output.last_evaluated_key)
                }
                None => {
                    let output = self
                        .client
                        .scan()
                        .table_name(&self.table)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(|error| self.classify(&error))?;
                    (output.items.unwrap_or_default(), output.last_evaluated_key)
                }
            };
            found.extend(items.iter().filter_map(parse_item));
            match next {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(found)
    }
}

/// The in-memory store, for flow tests and the simulation. Claim times are kept in whole
/// milliseconds, as DynamoDB keeps them.
#[derive(Default)]
pub struct FakeSlots {
    claims: Mutex<std::collections::BTreeMap<(String, u32), SlotClaim>>,
    throttled_claims: Mutex<usize>,
}

impl FakeSlots {
    /// The next `times` claims answer "throttled".
    pub fn throttle_next_claims(&self, times: usize) {
        *self.throttled_claims.lock().unwrap() = times;
    }

    /// Every claim held now.
    pub fn all(&self) -> Vec<ClaimedSlot> {
        self.claims
            .lock()
            .unwrap()
            .iter()
            .map(|((template, slot), claim)| ClaimedSlot {
                template: template.clone(),
                slot: *slot,
                claim: *claim,
            })
            .collect()
    }

    /// Removes a slot's claim, whoever holds it.
    pub fn remove(&self, template: &str, slot: u32) {
        self.claims.lock().unwrap().remove(&(template.to_string(), slot));
    }

    /// Sets a claim as if a handler had made it (at any time, to make it look old).
    pub fn put(&self, template: &str, slot: u32, claim: SlotClaim) {
        self.claims
            .lock()
            .unwrap()
            .insert((template.to_string(), slot), claim.stored());
    }
}

#[async_trait]
impl Slots for FakeSlots {
    async fn claim(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<ClaimAnswer, SlotsError> {
        {
            let mut throttled = self.throttled_claims.lock().unwrap();
            if *throttled > 0 {
                *throttled -= 1;
                return Err(SlotsError::Throttled("fake".into()));
            }
        }
        let mut claims = self.claims.lock().unwrap();
        match claims.get(&(template.to_string(), slot)) {
            Some(holder) => Ok(ClaimAnswer::Held(Some(*holder))),
            None => {
                claims.insert((template.to_string(), slot), claim.stored());
                Ok(ClaimAnswer::Claimed)
            }
        }
    }

    async fn get(&self, template: &str, slot: u32) -> Result<Option<SlotClaim>, SlotsError> {
        Ok(self.claims.lock().unwrap().get(&(template.to_string(), slot)).copied())
    }

    async fn release(&self, template: &str, slot: u32, claim: &SlotClaim) -> Result<bool, SlotsError> {
        let mut claims = self.claims.lock().unwrap();
        let key = (template.to_string(), slot);
        if claims.get(&key) == Some(&claim.stored()) {
            claims.remove(&key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn list(&self, template: Option<&str>) -> Result<Vec<ClaimedSlot>, SlotsError> {
        Ok(self
            .all()
            .into_iter()
            .filter(|found| template.is_none_or(|t| found.template == t))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(job_id: u64, at_ms: u64) -> SlotClaim {
        SlotClaim {
            job_id,
            relaunches: 0,
            at: SystemTime::UNIX_EPOCH + Duration::from_nanos(at_ms * 1_000_000 + 123_456),
        }
    }

    #[tokio::test]
    async fn only_the_first_claim_of_a_slot_wins_and_the_loser_learns_the_holder() {
        let slots = FakeSlots::default();
        assert_eq!(slots.claim("cpu", 3, &claim(1, 10)).await, Ok(ClaimAnswer::Claimed));
        assert_eq!(
            slots.claim("cpu", 3, &claim(2, 11)).await,
            Ok(ClaimAnswer::Held(Some(claim(1, 10).stored())))
        );
        assert_eq!(slots.claim("gpu", 3, &claim(2, 11)).await, Ok(ClaimAnswer::Claimed));
    }

    #[tokio::test]
    async fn a_release_frees_only_the_claim_it_names() {
        let slots = FakeSlots::default();
        slots.claim("cpu", 0, &claim(1, 10)).await.unwrap();
        assert_eq!(slots.release("cpu", 0, &claim(1, 11)).await, Ok(false), "another time");
        assert_eq!(slots.release("cpu", 0, &claim(2, 10)).await, Ok(false), "another job");
        // The claim as made (nanoseconds) and as read back (milliseconds) are the same claim.
        assert_eq!(slots.release("cpu", 0, &claim(1, 10)).await, Ok(true));
        assert_eq!(slots.get("cpu", 0).await, Ok(None));
        assert_eq!(slots.release("cpu", 0, &claim(1, 10)).await, Ok(false), "already free");
    }
}
