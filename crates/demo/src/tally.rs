//! What the demo reads back from moto and the fake GitHub. Every listing reads every page: AWS pages
//! DescribeInstances and GetParametersByPath, and so does moto (100 reservations, 10 parameters), so
//! a listing that stops at the first page undercounts and can read "0 left" while more are left. A
//! figure that could not be read whole is `Read::CouldNotRead`, which prints as such, never as 0.

use std::collections::BTreeMap;
use std::fmt;

use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::Filter;
use testkit::github::GithubServer;

/// A figure from a listing: complete (every page was read), or why it is unknown.
#[derive(Debug, Clone, PartialEq)]
pub enum Read<T> {
    Complete(T),
    CouldNotRead { what: String, why: String },
}

impl<T> Read<T> {
    fn from_result(what: impl Into<String>, result: Result<T, String>) -> Self {
        match result {
            Ok(value) => Read::Complete(value),
            Err(why) => Read::CouldNotRead { what: what.into(), why },
        }
    }

    pub fn complete(&self) -> Option<&T> {
        match self {
            Read::Complete(value) => Some(value),
            Read::CouldNotRead { .. } => None,
        }
    }
}

impl Read<usize> {
    /// Read in full, and nothing there. An unread figure is not zero.
    pub fn is_zero(&self) -> bool {
        *self == Read::Complete(0)
    }
}

impl<T: fmt::Display> fmt::Display for Read<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Read::Complete(value) => value.fmt(f),
            Read::CouldNotRead { what, why } => write!(f, "could not read {what}: {why}"),
        }
    }
}

/// The deployment's instances, every state, every page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Instances {
    /// Instances per job id (any state): every served job must have exactly one.
    pub per_job: BTreeMap<u64, usize>,
    /// Pending or running.
    pub live: usize,
}

impl Instances {
    /// Jobs that got at least one instance.
    pub fn jobs_run(&self) -> usize {
        self.per_job.values().filter(|n| **n > 0).count()
    }

    /// Jobs that got more than one.
    pub fn doubled(&self) -> usize {
        self.per_job.values().filter(|n| **n > 1).count()
    }
}

impl fmt::Display for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} live, {} jobs with an instance", self.live, self.jobs_run())
    }
}

/// Read from moto and the fake GitHub at the end.
#[derive(Debug, Clone, PartialEq)]
pub struct Tally {
    pub jobs_sent: usize,
    pub instances: Read<Instances>,
    pub parameters_left: Read<usize>,
    /// Launch slots still claimed (items of the deployment's launch-slot table).
    pub slots_left: Read<usize>,
    /// Jobs still in the waiting list (items of the deployment's waiting table).
    pub waiting_left: Read<usize>,
    pub runners_left: Read<usize>,
    pub jobs_queue_left: Read<usize>,
    pub dlq_left: Read<usize>,
    pub runners_registered: usize,
}

impl Default for Tally {
    fn default() -> Self {
        fn unread<T>() -> Read<T> {
            Read::CouldNotRead {
                what: "anything".into(),
                why: "the tally was not taken".into(),
            }
        }
        Self {
            jobs_sent: 0,
            instances: unread(),
            parameters_left: unread(),
            slots_left: unread(),
            waiting_left: unread(),
            runners_left: unread(),
            jobs_queue_left: unread(),
            dlq_left: unread(),
            runners_registered: 0,
        }
    }
}

impl Tally {
    /// Everything read in full, nothing left running, nothing left behind.
    pub fn clean(&self) -> bool {
        self.instances.complete().is_some_and(|i| i.live == 0)
            && self.parameters_left.is_zero()
            && self.slots_left.is_zero()
            && self.waiting_left.is_zero()
            && self.runners_left.is_zero()
            && self.jobs_queue_left.is_zero()
            && self.dlq_left.is_zero()
    }

    /// Whether any figure is unknown (as opposed to non-zero).
    pub fn incomplete(&self) -> bool {
        self.instances.complete().is_none()
            || [
                &self.parameters_left,
                &self.slots_left,
                &self.waiting_left,
                &self.runners_left,
                &self.jobs_queue_left,
                &self.dlq_left,
            ]
            .iter()
            .any(|r| r.complete().is_none())
    }
}

/// Where the tally reads from.
pub(crate) struct Sources<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub ssm: &'a aws_sdk_ssm::Client,
    pub slots: &'a sophons_core::slots::DynamoSlots,
    pub slots_table: &'a str,
    pub waiting_table: &'a str,
    pub sqs: &'a aws_sdk_sqs::Client,
    pub github: &'a GithubServer,
    pub deployment: &'a str,
    pub jobs_queue_url: &'a str,
    pub dlq_url: &'a str,
}

pub(crate) async fn tally(sources: &Sources<'_>, job_ids: impl IntoIterator<Item = u64>, jobs_sent: usize) -> Tally {
    let Sources {
        ec2,
        ssm,
        sqs,
        github,
        deployment,
        ..
    } = sources;
    Tally {
        jobs_sent,
        instances: Read::from_result(
            format!("the instances tagged sophons:deployment={deployment}"),
            instance_counts(ec2, deployment, job_ids).await,
        ),
        parameters_left: Read::from_result(
            format!("the parameters under /{deployment}/jit"),
            parameter_count(ssm, &format!("/{deployment}/jit")).await,
        ),
        slots_left: Read::from_result(format!("the launch-slot table {}", sources.slots_table), {
            use sophons_core::slots::Slots;
            // A paged, consistent Scan: every claim of every template.
            sources
                .slots
                .list(None)
                .await
                .map(|claims| claims.len())
                .map_err(|error| error.to_string())
        }),
        waiting_left: Read::from_result(
            format!("the waiting table {}", sources.waiting_table),
            item_count(sources.slots, sources.waiting_table).await,
        ),
        // The fake's own state, not a listing: whole by construction.
        runners_left: Read::Complete(github.runners().len()),
        jobs_queue_left: Read::from_result("the jobs queue's depth", queue_depth(sqs, sources.jobs_queue_url).await),
        dlq_left: Read::from_result("the DLQ's depth", queue_depth(sqs, sources.dlq_url).await),
        runners_registered: github
            .requests_to("POST", "generate-jitconfig")
            .iter()
            .filter(|r| r.body.get("name").is_some())
            .count(),
    }
}

/// Every item of a table, by a paged, consistent Scan (with the launch slots' DynamoDB client).
async fn item_count(slots: &sophons_core::slots::DynamoSlots, table: &str) -> Result<usize, String> {
    let dynamodb = slots.client();
    let mut count = 0;
    let mut start = None;
    loop {
        let page = dynamodb
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|error| format!("Scan: {}", sophons_core::aws::describe(&error)))?;
        count += page.items.unwrap_or_default().len();
        match page.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(count),
        }
    }
}

async fn instance_counts(
    ec2: &aws_sdk_ec2::Client,
    deployment: &str,
    job_ids: impl IntoIterator<Item = u64>,
) -> Result<Instances, String> {
    let mut counts = Instances {
        per_job: job_ids.into_iter().map(|job| (job, 0)).collect(),
        live: 0,
    };
    for instance in instances(ec2, deployment, States::Any).await? {
        if instance.is_live() {
            counts.live += 1;
        }
        if let Some(job) = instance.job_id() {
            *counts.per_job.entry(job).or_default() += 1;
        }
    }
    Ok(counts)
}

/// One instance as DescribeInstances shows it.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub id: String,
    pub state: String,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    pub fn is_live(&self) -> bool {
        self.state == "pending" || self.state == "running"
    }

    pub fn job_id(&self) -> Option<u64> {
        self.tags.get("sophons:job-id")?.parse().ok()
    }
}

/// Which instances to list.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum States {
    Any,
    /// Pending or running: what the serving loop polls, filtered by EC2 so that the instances
    /// that have ended (moto keeps them all) do not make every poll longer.
    Live,
}

/// DescribeInstances' largest page. Each page costs moto a pass over every instance it holds, and
/// each instance a scan of every tag it holds: at 1,000 instances, ten pages of 100 took 25 s here,
/// one page of 1,000 took 7 s.
const INSTANCES_PER_PAGE: i32 = 1000;

/// The deployment's instances, every page.
pub(crate) async fn instances(
    ec2: &aws_sdk_ec2::Client,
    deployment: &str,
    states: States,
) -> Result<Vec<Instance>, String> {
    instances_by_page(ec2, deployment, states, INSTANCES_PER_PAGE).await
}

async fn instances_by_page(
    ec2: &aws_sdk_ec2::Client,
    deployment: &str,
    states: States,
    page_size: i32,
) -> Result<Vec<Instance>, String> {
    let mut filters = Vec::new();
    if states == States::Live {
        // First: moto applies filters in order, and the state is a field where the tag is a scan
        // of every tag it holds (at 1,000 instances, 78 ms this way round, 1.7 s the other).
        filters.push(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        );
    }
    filters.push(
        Filter::builder()
            .name("tag:sophons:deployment")
            .values(deployment)
            .build(),
    );
    let pages = ec2
        .describe_instances()
        .set_filters(Some(filters))
        .into_paginator()
        .page_size(page_size)
        .send()
        .try_collect()
        .await
        .map_err(|error| format!("DescribeInstances: {}", DisplayErrorContext(error)))?;
    Ok(pages
        .iter()
        .flat_map(|page| page.reservations())
        .flat_map(|r| r.instances())
        .map(|i| Instance {
            id: i.instance_id().unwrap_or_default().to_string(),
            state: i
                .state()
                .and_then(|s| s.name())
                .map(|n| n.as_str().to_string())
                .unwrap_or_default(),
            tags: i
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect(),
        })
        .collect())
}

/// How many parameters sit under `path` (recursively), every page.
pub(crate) async fn parameter_count(ssm: &aws_sdk_ssm::Client, path: &str) -> Result<usize, String> {
    let pages = ssm
        .get_parameters_by_path()
        .path(path)
        .recursive(true)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|error| format!("GetParametersByPath: {}", DisplayErrorContext(error)))?;
    Ok(pages.iter().map(|page| page.parameters().len()).sum())
}

/// Messages in a queue, visible or in flight (SQS's approximate counts: not a listing, nothing to page).
pub(crate) async fn queue_depth(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<usize, String> {
    use aws_sdk_sqs::types::QueueAttributeName::{ApproximateNumberOfMessages, ApproximateNumberOfMessagesNotVisible};
    let output = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(ApproximateNumberOfMessages)
        .attribute_names(ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .map_err(|error| format!("GetQueueAttributes: {}", DisplayErrorContext(error)))?;
    let attributes = output.attributes.unwrap_or_default();
    let count = |name| {
        attributes
            .get(&name)
            .ok_or_else(|| format!("GetQueueAttributes answered without {name}"))?
            .parse::<usize>()
            .map_err(|error| format!("{name}: {error}"))
    };
    Ok(count(ApproximateNumberOfMessages)? + count(ApproximateNumberOfMessagesNotVisible)?)
}

/// The bodies of every message in a queue, left in it: each page is received and kept hidden
/// (so that the next receive returns others) until the queue answers empty, then all are made
/// visible again at once.
pub(crate) async fn messages_in(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<Vec<String>, String> {
    use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
    let mut bodies = Vec::new();
    let mut held = Vec::new();
    loop {
        let page = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .send()
            .await
            .map_err(|error| format!("ReceiveMessage: {}", DisplayErrorContext(error)))?;
        if page.messages().is_empty() {
            break;
        }
        for message in page.messages() {
            bodies.push(message.body().unwrap_or_default().to_string());
            held.push(
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(format!("m{}", held.len()))
                    .receipt_handle(message.receipt_handle().unwrap_or_default())
                    .visibility_timeout(0)
                    .build()
                    .map_err(|error| error.to_string())?,
            );
        }
    }
    for batch in held.chunks(10) {
        let answer = sqs
            .change_message_visibility_batch()
            .queue_url(queue_url)
            .set_entries(Some(batch.to_vec()))
            .send()
            .await
            .map_err(|error| format!("ChangeMessageVisibilityBatch: {}", DisplayErrorContext(error)))?;
        if !answer.failed().is_empty() {
            return Err(format!("ChangeMessageVisibilityBatch refused {:?}", answer.failed()));
        }
    }
    Ok(bodies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    use testkit::moto;

    fn unique(prefix: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        format!("{prefix}{}x{nanos}", std::process::id())
    }

    /// One RunInstances call per instance: moto pages DescribeInstances by reservation, so one call
    /// launching them all would fit on one page.
    async fn launch(ec2: &aws_sdk_ec2::Client, deployment: &str, job_id: u64) -> String {
        let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
        let output = ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(1)
            .max_count(1)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(tag("sophons:deployment", deployment))
                    .tags(tag("sophons:job-id", &job_id.to_string()))
                    .tags(tag("sophons:template", "cpu"))
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|error| panic!("RunInstances: {}", DisplayErrorContext(error)));
        output.instances()[0].instance_id().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_tally_over_more_than_a_hundred_instances_and_ten_parameters_counts_them_all() {
        let sdk = moto::sdk_config().await;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let deployment = unique("paging");
        let mut ids = Vec::new();
        for job in 0..130 {
            ids.push(launch(&ec2, &deployment, job).await);
        }
        ec2.terminate_instances()
            .set_instance_ids(Some(ids[..20].to_vec()))
            .send()
            .await
            .unwrap();
        for n in 0..25 {
            ssm.put_parameter()
                .name(format!("/{deployment}/jit/i-{n}"))
                .value("x")
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .send()
                .await
                .unwrap();
        }

        let counts = instance_counts(&ec2, &deployment, 0..130).await.unwrap();
        assert_eq!(
            counts.jobs_run(),
            130,
            "every job's instance, past the first page of 100"
        );
        assert_eq!(counts.doubled(), 0);
        assert_eq!(counts.live, 110, "the 20 terminated are not live, the other 110 are");
        let live = instances(&ec2, &deployment, States::Live).await.unwrap();
        assert_eq!(live.len(), 110);
        let by_fifty = instances_by_page(&ec2, &deployment, States::Any, 50).await.unwrap();
        assert_eq!(by_fifty.len(), 130, "three pages of at most 50, all read");
        assert_eq!(
            parameter_count(&ssm, &format!("/{deployment}/jit")).await,
            Ok(25),
            "every parameter, past the first page of 10"
        );
    }

    #[tokio::test]
    async fn a_listing_that_fails_reads_as_could_not_read_never_as_zero() {
        let sdk = moto::sdk_config()
            .await
            .to_builder()
            .endpoint_url("http://127.0.0.1:1")
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let instances = Read::from_result("the instances", instance_counts(&ec2, "nowhere", [7]).await);
        let parameters = Read::from_result("the parameters", parameter_count(&ssm, "/nowhere/jit").await);
        assert!(instances.complete().is_none(), "{instances:?}");
        assert!(
            parameters
                .to_string()
                .starts_with("could not read the parameters: GetParametersByPath"),
            "{parameters}"
        );
        assert!(!parameters.is_zero());

        let tally = Tally {
            instances,
            parameters_left: parameters,
            slots_left: Read::Complete(0),
            waiting_left: Read::Complete(0),
            runners_left: Read::Complete(0),
            jobs_queue_left: Read::Complete(0),
            dlq_left: Read::Complete(0),
            ..Tally::default()
        };
        assert!(!tally.clean(), "an unread figure is not a clean one");
        assert!(tally.incomplete());
    }
}
