//! EC2: launching runner instances with CreateFleet, finding ours by tag, ending them.
//! EC2 tags are sophons' only state; every lookup is scoped to this deployment's tag.

use std::collections::BTreeMap;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest, FleetLaunchTemplateOverridesRequest,
    FleetLaunchTemplateSpecificationRequest, FleetOnDemandAllocationStrategy, FleetType, InstanceStateName,
    OnDemandOptionsRequest, ResourceType, SpotAllocationStrategy, SpotOptionsRequest, Tag, TagSpecification,
    TargetCapacitySpecificationRequest,
};

pub const TAG_DEPLOYMENT: &str = "sophons:deployment";
pub const TAG_TEMPLATE: &str = "sophons:template";
pub const TAG_JOB_ID: &str = "sophons:job-id";
pub const TAG_REPOSITORY: &str = "sophons:repository";
pub const TAG_RUN_ID: &str = "sophons:run-id";
/// The job's run attempt and name: a job sent back keeps them, so the re-run of an interrupted
/// job stays recognised (and on-demand) through a relaunch.
pub const TAG_RUN_ATTEMPT: &str = "sophons:run-attempt";
pub const TAG_JOB_NAME: &str = "sophons:job-name";
/// The job's workflow name: with the repository, what cost allocation groups by.
pub const TAG_WORKFLOW: &str = "sophons:workflow";
pub const TAG_COMMAND_ID: &str = "sophons:command-id";
pub const TAG_RUNNER_ID: &str = "sophons:runner-id";
/// How many times the job was sent back for a new runner before this instance (any reason).
pub const TAG_RELAUNCHES: &str = "sophons:relaunches";
/// Of those, runners that ended without running any job: they count against `max_job_relaunches`.
pub const TAG_RUNNER_FAILURES: &str = "sophons:runner-failures";
/// The launch slot the instance holds (see `create.rs`): below its template's `max_runners`.
pub const TAG_SLOT: &str = "sophons:slot";
/// On an instance EC2 ended (a spot reclaim): its job was sent back, so it is not sent again.
pub const TAG_RELAUNCHED: &str = "sophons:relaunched";
/// On an instance EC2 took back: whether its interruption was recorded when it was looked after
/// (`false`: the sweep records it, though its job was sent back already).
pub const TAG_INTERRUPTION_RECORDED: &str = "sophons:interruption-recorded";

/// EC2 error codes that mean "no room in this pool": worth another pool, on-demand, or later.
const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientHostCapacity",
    "InsufficientFreeAddressesInSubnet",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
    "UnfulfillableCapacity",
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    Spot,
    OnDemand,
}

impl Capacity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Spot => "spot",
            Self::OnDemand => "on-demand",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Stopping,
    Stopped,
    Terminated,
}

impl InstanceState {
    /// Pending or running: the instance counts against `max_runners` and serves its job.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub state: InstanceState,
    pub instance_type: String,
    pub launched_at: Option<SystemTime>,
    pub spot_request_id: Option<String>,
    /// EC2's `StateReason.Code` of an instance that is ending or ended, e.g.
    /// `Client.UserInitiatedShutdown` or `Server.SpotInstanceTermination`.
    pub state_reason: Option<String>,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }

    /// The job create-runner launched the instance for (0 when the tag is missing).
    pub fn job_id(&self) -> u64 {
        self.number(TAG_JOB_ID).unwrap_or_default()
    }

    pub fn run_id(&self) -> u64 {
        self.number(TAG_RUN_ID).unwrap_or_default()
    }

    /// The job's run attempt (1 when the tag is missing: instances launched before it existed).
    pub fn run_attempt(&self) -> u32 {
        self.number(TAG_RUN_ATTEMPT).unwrap_or(1)
    }

    pub fn job_name(&self) -> &str {
        self.tag(TAG_JOB_NAME).unwrap_or_default()
    }

    pub fn template(&self) -> &str {
        self.tag(TAG_TEMPLATE).unwrap_or_default()
    }

    /// `owner/name` of the job's repository.
    pub fn repository(&self) -> &str {
        self.tag(TAG_REPOSITORY).unwrap_or_default()
    }

    /// How many times the job was sent back before this instance.
    pub fn relaunches(&self) -> u32 {
        self.number(TAG_RELAUNCHES).unwrap_or_default()
    }

    /// Of those, runners that ended without running any job.
    pub fn runner_failures(&self) -> u32 {
        self.number(TAG_RUNNER_FAILURES).unwrap_or_default()
    }

    /// The runner GitHub registered for the instance, once create-runner has tagged it.
    pub fn runner_id(&self) -> Option<u64> {
        self.number(TAG_RUNNER_ID)
    }

    /// The runner's SSM command, once create-runner has tagged it.
    pub fn command_id(&self) -> Option<&str> {
        self.tag(TAG_COMMAND_ID)
    }

    /// EC2 ended it and stop-runner (or the sweep) looked after its job already.
    pub fn looked_after(&self) -> bool {
        self.tag(TAG_RELAUNCHED).is_some()
    }

    /// Looked after, but the record of its interruption failed: the sweep records it.
    pub fn interruption_unrecorded(&self) -> bool {
        self.tag(TAG_INTERRUPTION_RECORDED) == Some("false")
    }

    fn number<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.tag(key)?.parse().ok()
    }

    /// Ended by EC2, not by us: a spot reclaim, a host failure. Codes of EC2's own doing start
    /// with `Server.`; ours (TerminateInstances) and shutdowns from inside are `Client.`.
    pub fn ended_by_ec2(&self) -> bool {
        !self.state.is_live()
            && self
                .state_reason
                .as_deref()
                .is_some_and(|code| code.starts_with("Server."))
    }
}

/// What CreateFleet is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    pub launch_template: String,
    pub instance_types: Vec<String>,
    pub subnet_ids: Vec<String>,
    pub capacity: Capacity,
    /// Highest Spot price per hour (Spot only).
    pub spot_max_price: Option<String>,
    /// Makes a repeated call for the same job and attempt return the same instance.
    pub client_token: String,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub instance_id: String,
    pub instance_type: String,
    pub capacity: Capacity,
}

/// Which of this deployment's instances to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    pub instance_id: Option<String>,
    pub template: Option<String>,
    pub job_id: Option<u64>,
    /// Only pending and running instances.
    pub live_only: bool,
    /// Terminated instances too (EC2 lists them for about an hour after they end).
    pub with_terminated: bool,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FleetError {
    #[error("no capacity in any pool: {0}")]
    NoCapacity(String),
    #[error("EC2 refused the launch: {0}")]
    Rejected(String),
    #[error("EC2 request failed: {0}")]
    Unavailable(String),
    /// The ClientToken was first used with other parameters: another handler launched for this
    /// job with this token (its slot differs). Retrying with the same token can never succeed.
    #[error("EC2 answered IdempotentParameterMismatch: {0}")]
    TokenMismatch(String),
}

/// EC2 error codes of a pool that does not offer the instance type (in that zone): no use trying
/// it again, but beside capacity errors of other pools the request is still "no capacity".
const NOT_OFFERED_CODES: &[&str] = &["Unsupported", "InstanceTypeNotSupported", "UnsupportedInstanceType"];

/// What CreateFleet's per-pool errors (code, message) mean when it launched nothing: "no
/// capacity" when every pool failed for capacity or does not offer the type there, and at least
/// one for capacity (so spot may be retried later or on-demand tried now); refused otherwise.
pub fn pool_errors_outcome(errors: &[(String, String)]) -> FleetError {
    let summary = if errors.is_empty() {
        "CreateFleet launched nothing and gave no reason".to_string()
    } else {
        errors
            .iter()
            .map(|(code, message)| format!("{code}: {message}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let capacity = |code: &str| CAPACITY_CODES.contains(&code);
    let not_offered = |code: &str| NOT_OFFERED_CODES.contains(&code);
    let all_capacity_or_not_offered = errors.iter().all(|(code, _)| capacity(code) || not_offered(code));
    if !errors.is_empty() && all_capacity_or_not_offered && errors.iter().any(|(code, _)| capacity(code)) {
        FleetError::NoCapacity(summary)
    } else if !errors.is_empty() && all_capacity_or_not_offered {
        FleetError::Rejected(format!(
            "no pool offers the template's instance types in its subnets ({summary}); change `instance_types` or \
             `subnet_ids`"
        ))
    } else {
        FleetError::Rejected(summary)
    }
}

#[async_trait]
pub trait Fleet: Send + Sync {
    async fn launch(&self, request: &LaunchRequest) -> Result<Launched, FleetError>;
    /// This deployment's instances matching the query.
    async fn instances(&self, deployment: &str, query: &InstanceQuery) -> Result<Vec<Instance>, FleetError>;
    async fn tag(&self, instance_id: &str, tags: &[(String, String)]) -> Result<(), FleetError>;
    /// Terminates; an instance already gone is not an error.
    async fn terminate(&self, instance_id: &str) -> Result<(), FleetError>;
    /// Cancels a spot request; one already gone is not an error.
    async fn cancel_spot_request(&self, request_id: &str) -> Result<(), FleetError>;
}

/// The real adapter over the EC2 API.
#[derive(Clone)]
pub struct Ec2Fleet {
    client: aws_sdk_ec2::Client,
}

impl Ec2Fleet {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_ec2::Client::new(sdk),
        }
    }
}

fn unavailable<E, R>(error: &aws_sdk_ec2::error::SdkError<E, R>) -> FleetError
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let reason = crate::aws::describe(error);
    match crate::aws::code(error) {
        Some(code) if CAPACITY_CODES.contains(&code) => FleetError::NoCapacity(reason),
        Some("IdempotentParameterMismatch") => FleetError::TokenMismatch(reason),
        Some(code)
            if code.starts_with("InvalidLaunchTemplate")
                || code.starts_with("InvalidParameter")
                || code == "UnauthorizedOperation" =>
        {
            FleetError::Rejected(reason)
        }
        _ => FleetError::Unavailable(reason),
    }
}

fn state_of(name: Option<&InstanceStateName>) -> InstanceState {
    match name {
        Some(InstanceStateName::Pending) => InstanceState::Pending,
        Some(InstanceStateName::Running) => InstanceState::Running,
        Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
        Some(InstanceStateName::Stopping) => InstanceState::Stopping,
        Some(InstanceStateName::Stopped) => InstanceState::Stopped,
        _ => InstanceState::Terminated,
    }
}

#[async_trait]
impl Fleet for Ec2Fleet {
    /// Long because the CreateFleet request is one builder (overrides per type and subnet, spot or on-demand
    /// options, tags) and its answer mixes instances with per-pool errors.
    async fn launch(&self, request: &LaunchRequest) -> Result<Launched, FleetError> {
        let overrides = request.instance_types.iter().flat_map(|instance_type| {
            request.subnet_ids.iter().map(move |subnet| {
                FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(instance_type.as_str().into())
                    .subnet_id(subnet)
                    .set_max_price(
                        request
                            .spot_max_price
                            .clone()
                            .filter(|_| request.capacity == Capacity::Spot),
                    )
                    .build()
            })
        });
        let config = FleetLaunchTemplateConfigRequest::builder()
            .launch_template_specification(
                FleetLaunchTemplateSpecificationRequest::builder()
                    .launch_template_name(&request.launch_template)
                    .version("$Default")
                    .build(),
            )
            .set_overrides(Some(overrides.collect()))
            .build();
        let capacity_type = match request.capacity {
            Capacity::Spot => DefaultTargetCapacityType::Spot,
            Capacity::OnDemand => DefaultTargetCapacityType::OnDemand,
        };
        let tags: Vec<Tag> = request
            .tags
            .iter()
            .map(|(key, value)| Tag::builder().key(key).value(value).build())
            .collect();
        let tag_specifications = [ResourceType::Instance, ResourceType::Volume]
            .into_iter()
            .map(|kind| {
                TagSpecification::builder()
                    .resource_type(kind)
                    .set_tags(Some(tags.clone()))
                    .build()
            })
            .collect();
        let mut call = self
            .client
            .create_fleet()
            .r#type(FleetType::Instant)
            .client_token(&request.client_token)
            .launch_template_configs(config)
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(1)
                    .default_target_capacity_type(capacity_type)
                    .build(),
            )
            .set_tag_specifications(Some(tag_specifications));
        call = match request.capacity {
            Capacity::Spot => call.spot_options(
                SpotOptionsRequest::builder()
                    .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            ),
            Capacity::OnDemand => call.on_demand_options(
                OnDemandOptionsRequest::builder()
                    .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                    .build(),
            ),
        };
        let output = call.send().await.map_err(|error| unavailable(&error))?;
        for instance in output.instances() {
            if let Some(id) = instance.instance_ids().first() {
                return Ok(Launched {
                    instance_id: id.clone(),
                    instance_type: instance
                        .instance_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    capacity: request.capacity,
                });
            }
        }
        let errors: Vec<(String, String)> = output
            .errors()
            .iter()
            .map(|e| {
                (
                    e.error_code().unwrap_or("?").to_string(),
                    e.error_message().unwrap_or("").to_string(),
                )
            })
            .collect();
        Err(pool_errors_outcome(&errors))
    }

    /// Long because DescribeInstances is paged and filtered, and each instance is read field by field from the
    /// SDK's optional fields.
    async fn instances(&self, deployment: &str, query: &InstanceQuery) -> Result<Vec<Instance>, FleetError> {
        let states: &[&str] = if query.live_only {
            &["pending", "running"]
        } else if query.with_terminated {
            &[
                "pending",
                "running",
                "shutting-down",
                "stopping",
                "stopped",
                "terminated",
            ]
        } else {
            &["pending", "running", "shutting-down", "stopping", "stopped"]
        };
        // The state filter first: the same answer on AWS, and moto, which keeps every instance it
        // launched, narrows by state cheaply before it scans every tag for the tag filters.
        let mut filters = vec![
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(states.iter().map(|s| s.to_string()).collect()))
                .build(),
            Filter::builder()
                .name(format!("tag:{TAG_DEPLOYMENT}"))
                .values(deployment)
                .build(),
        ];
        if let Some(instance_id) = &query.instance_id {
            filters.push(Filter::builder().name("instance-id").values(instance_id).build());
        }
        if let Some(template) = &query.template {
            filters.push(
                Filter::builder()
                    .name(format!("tag:{TAG_TEMPLATE}"))
                    .values(template)
                    .build(),
            );
        }
        if let Some(job_id) = query.job_id {
            filters.push(
                Filter::builder()
                    .name(format!("tag:{TAG_JOB_ID}"))
                    .values(job_id.to_string())
                    .build(),
            );
        }
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let output = self
                .client
                .describe_instances()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|error| unavailable(&error))?;
            for reservation in output.reservations() {
                for instance in reservation.instances() {
                    found.push(Instance {
                        id: instance.instance_id().unwrap_or_default().to_string(),
                        state: state_of(instance.state().and_then(|s| s.name())),
                        instance_type: instance
                            .instance_type()
                            .map(|t| t.as_str().to_string())
                            .unwrap_or_default(),
                        launched_at: instance.launch_time().and_then(|t| SystemTime::try_from(*t).ok()),
                        spot_request_id: instance.spot_instance_request_id().map(str::to_string),
                        state_reason: instance.state_reason().and_then(|r| r.code()).map(str::to_string),
                        tags: instance
                            .tags()
                            .iter()
                            .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
                            .collect(),
                    });
                }
            }
            match output.next_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => break,
            }
        }
        Ok(found)
    }

    async fn tag(&self, instance_id: &str, tags: &[(String, String)]) -> Result<(), FleetError> {
        self.client
            .create_tags()
            .resources(instance_id)
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(|error| unavailable(&error))?;
        Ok(())
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), FleetError> {
        match self.client.terminate_instances().instance_ids(instance_id).send().await {
            Ok(_) => Ok(()),
            Err(error) if crate::aws::code(&error) == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(error) => Err(unavailable(&error)),
        }
    }

    async fn cancel_spot_request(&self, request_id: &str) -> Result<(), FleetError> {
        match self
            .client
            .cancel_spot_instance_requests()
            .spot_instance_request_ids(request_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if crate::aws::code(&error) == Some("InvalidSpotInstanceRequestID.NotFound") => Ok(()),
            Err(error) => Err(unavailable(&error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(errors: &[(&str, &str)]) -> FleetError {
        let errors: Vec<(String, String)> = errors.iter().map(|(c, m)| (c.to_string(), m.to_string())).collect();
        pool_errors_outcome(&errors)
    }

    #[test]
    fn capacity_errors_mixed_with_pools_that_do_not_offer_the_type_are_no_capacity() {
        let outcome = pools(&[
            ("InsufficientInstanceCapacity", "no capacity in us-east-1a"),
            ("Unsupported", "not offered in us-east-1e"),
        ]);
        assert!(matches!(outcome, FleetError::NoCapacity(_)), "{outcome:?}");
    }

    #[test]
    fn pools_that_all_do_not_offer_the_type_are_a_configuration_to_fix() {
        let outcome = pools(&[("Unsupported", "not offered in us-east-1e")]);
        assert!(
            matches!(&outcome, FleetError::Rejected(reason) if reason.contains("instance_types")),
            "{outcome:?}"
        );
    }

    #[test]
    fn any_other_pool_error_is_a_refusal() {
        let outcome = pools(&[
            ("InsufficientInstanceCapacity", "no capacity"),
            ("InvalidLaunchTemplateId.NotFound", "no such launch template"),
        ]);
        assert!(matches!(outcome, FleetError::Rejected(_)), "{outcome:?}");
        assert!(matches!(pools(&[]), FleetError::Rejected(_)));
    }
}
