//! In-memory fakes of the ports, for unit and simulation tests. Each records what it was asked and
//! can be told to fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::parameters::{Listed, Parameters, ParametersError};
use crate::queue::{Queue, QueueError, Received};

/// A message the fake queue took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    pub queue_url: String,
    pub body: String,
    pub delivery_id: String,
}

#[derive(Debug, Clone)]
struct Stored {
    message_id: String,
    body: String,
    delivery_id: String,
    receipt_handle: Option<String>,
}

/// SQS in memory: queues by URL, messages in flight until deleted, and a record of every send.
#[derive(Default)]
pub struct FakeQueue {
    sent: Mutex<Vec<SentMessage>>,
    queues: Mutex<HashMap<String, Vec<Stored>>>,
    refuse: Mutex<Option<QueueError>>,
    hidden: Mutex<Vec<(String, u32)>>,
    counter: Mutex<u64>,
}

impl FakeQueue {
    pub fn sent(&self) -> Vec<SentMessage> {
        self.sent.lock().unwrap().clone()
    }

    /// Bodies of the messages a queue holds (in flight or not).
    pub fn messages(&self, queue_url: &str) -> Vec<String> {
        let queues = self.queues.lock().unwrap();
        queues
            .get(queue_url)
            .map(|q| q.iter().map(|m| m.body.clone()).collect())
            .unwrap_or_default()
    }

    /// Every message in flight becomes visible again (their visibility timeouts passed).
    pub fn release_in_flight(&self) {
        for queue in self.queues.lock().unwrap().values_mut() {
            for message in queue.iter_mut() {
                message.receipt_handle = None;
            }
        }
    }

    /// Receipt handles hidden, with their delay.
    pub fn hidden(&self) -> Vec<(String, u32)> {
        self.hidden.lock().unwrap().clone()
    }

    /// Every later send fails with this error.
    pub fn refuse_with(&self, error: QueueError) {
        *self.refuse.lock().unwrap() = Some(error);
    }

    fn next_id(&self) -> u64 {
        let mut counter = self.counter.lock().unwrap();
        *counter += 1;
        *counter
    }
}

#[async_trait]
impl Queue for FakeQueue {
    async fn send(&self, queue_url: &str, body: &str, delivery_id: &str) -> Result<String, QueueError> {
        if let Some(error) = self.refuse.lock().unwrap().clone() {
            return Err(error);
        }
        let message_id = format!("message-{}", self.next_id());
        self.sent.lock().unwrap().push(SentMessage {
            queue_url: queue_url.into(),
            body: body.into(),
            delivery_id: delivery_id.into(),
        });
        self.queues
            .lock()
            .unwrap()
            .entry(queue_url.to_string())
            .or_default()
            .push(Stored {
                message_id: message_id.clone(),
                body: body.into(),
                delivery_id: delivery_id.into(),
                receipt_handle: None,
            });
        Ok(message_id)
    }

    async fn hide(&self, _queue_url: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
        self.hidden.lock().unwrap().push((receipt_handle.to_string(), seconds));
        Ok(())
    }

    async fn receive(&self, queue_url: &str, max: u32, _wait_seconds: u32) -> Result<Vec<Received>, QueueError> {
        let ids: Vec<u64> = (0..max.clamp(1, 10)).map(|_| self.next_id()).collect();
        let mut queues = self.queues.lock().unwrap();
        let queue = queues.entry(queue_url.to_string()).or_default();
        let mut taken = Vec::new();
        for (message, id) in queue.iter_mut().filter(|m| m.receipt_handle.is_none()).zip(ids) {
            let receipt = format!("receipt-{id}");
            message.receipt_handle = Some(receipt.clone());
            taken.push(Received {
                message_id: message.message_id.clone(),
                receipt_handle: receipt,
                body: message.body.clone(),
                delivery_id: message.delivery_id.clone(),
            });
        }
        Ok(taken)
    }

    async fn delete(&self, queue_url: &str, receipt_handle: &str) -> Result<(), QueueError> {
        let mut queues = self.queues.lock().unwrap();
        if let Some(queue) = queues.get_mut(queue_url) {
            queue.retain(|m| m.receipt_handle.as_deref() != Some(receipt_handle));
        }
        Ok(())
    }
}

/// Parameter Store's limits, which it enforces (moto does not): an Advanced value holds 8 KB (a
/// Standard one 4 KB: `parameters::STANDARD_TIER_VALUE_MAX`); a name at most 1,011 characters.
pub const ADVANCED_VALUE_LIMIT: usize = 8192;
pub const PARAMETER_NAME_LIMIT: usize = 1011;

fn check_parameter(name: &str, value: &str, value_limit: usize) -> Result<(), ParametersError> {
    if value.len() > value_limit {
        return Err(ParametersError::Invalid {
            name: name.into(),
            reason: format!(
                "ValidationException: the value is {} characters, the tier holds {value_limit}",
                value.len()
            ),
        });
    }
    if name.len() > PARAMETER_NAME_LIMIT {
        return Err(ParametersError::Invalid {
            name: name.into(),
            reason: format!("ValidationException: the name is longer than {PARAMETER_NAME_LIMIT} characters"),
        });
    }
    Ok(())
}

/// Parameter Store in memory, with its size limits: `put_secure` writes Standard or Advanced (up
/// to 8 KB).
#[derive(Default)]
pub struct FakeParameters {
    values: Mutex<BTreeMap<String, String>>,
    modified: Mutex<BTreeMap<String, std::time::SystemTime>>,
    tags: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
}

impl FakeParameters {
    pub fn with(values: &[(&str, &str)]) -> Self {
        Self {
            values: Mutex::new(values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            modified: Mutex::default(),
            tags: Mutex::default(),
        }
    }

    /// Sets when a parameter was last written (to make it look old).
    pub fn set_modified(&self, name: &str, at: std::time::SystemTime) {
        self.modified.lock().unwrap().insert(name.to_string(), at);
    }

    /// The tags of a parameter.
    pub fn tags_of(&self, name: &str) -> BTreeMap<String, String> {
        self.tags.lock().unwrap().get(name).cloned().unwrap_or_default()
    }

    pub fn names(&self) -> Vec<String> {
        self.values.lock().unwrap().keys().cloned().collect()
    }
}

#[async_trait]
impl Parameters for FakeParameters {
    async fn get(&self, name: &str) -> Result<String, ParametersError> {
        self.values
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| ParametersError::NotFound(name.into()))
    }

    async fn put_secure(&self, name: &str, value: &str, tags: &[(String, String)]) -> Result<(), ParametersError> {
        check_parameter(name, value, ADVANCED_VALUE_LIMIT)?;
        self.values.lock().unwrap().insert(name.into(), value.into());
        self.modified
            .lock()
            .unwrap()
            .insert(name.into(), std::time::SystemTime::now());
        let mut all = self.tags.lock().unwrap();
        let own = all.entry(name.to_string()).or_default();
        own.extend(tags.iter().cloned());
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<(), ParametersError> {
        self.values.lock().unwrap().remove(name);
        self.modified.lock().unwrap().remove(name);
        self.tags.lock().unwrap().remove(name);
        Ok(())
    }

    async fn list(&self, path: &str) -> Result<Vec<Listed>, ParametersError> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let modified = self.modified.lock().unwrap();
        let tags = self.tags.lock().unwrap();
        Ok(self
            .values
            .lock()
            .unwrap()
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, value)| Listed {
                name: name.clone(),
                modified: modified.get(name).copied(),
                // SecureStrings are not decrypted: those `put_secure` wrote, each with an entry in
                // `tags` (empty or not).
                value: (!tags.contains_key(name)).then(|| value.clone()),
            })
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// EC2

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::commands::{CommandError, CommandRequest, CommandStatus, Commands};
use crate::fleet::{
    Capacity, Fleet, FleetError, Instance, InstanceQuery, InstanceState, LaunchRequest, Launched, TAG_DEPLOYMENT,
    TAG_JOB_ID, TAG_TEMPLATE,
};
use crate::github::{
    DeliveriesPage, Github, GithubError, Hook, HookDelivery, JitConfig, JobDetails, JobStatus, RunDetails, Runner,
    RunnerDownload, RunnerScope,
};

/// How late EC2's reads are, in the fake's clock units (the simulation's minutes; unit tests
/// move the clock by hand). EC2's DescribeInstances is eventually consistent: a new instance can
/// be missing, a terminated one can still read `running` then `shutting-down`, and tags written
/// by CreateTags can show late. All zero: strongly consistent (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// A launched instance is missing from listings this long.
    pub new: u64,
    /// A terminated (or reclaimed) instance still reads as it was this long, then `shutting-down`
    /// as long again.
    pub ended: u64,
    /// Tags written after the launch show this late.
    pub tags: u64,
}

/// What listings show of an instance, against the truth in `instances`.
#[derive(Debug, Clone, Default)]
struct View {
    visible_from: u64,
    /// When it ended, and the state listings showed before.
    ended: Option<(u64, InstanceState)>,
    /// Tags written after the launch, each visible from its time.
    late_tags: Vec<(u64, String, String)>,
    ended_lag: u64,
    tags_lag: u64,
}

/// What a ClientToken's first call answered, with the request it answered.
#[derive(Clone)]
struct TokenUse {
    request: LaunchRequest,
    answer: Result<String, FleetError>,
}

#[derive(Default)]
struct FleetState {
    instances: BTreeMap<String, Instance>,
    views: HashMap<String, View>,
    tokens: HashMap<String, TokenUse>,
    launches: Vec<LaunchRequest>,
    launch_faults: VecDeque<FleetError>,
    next_id: u64,
    peak_live: HashMap<String, usize>,
    terminated: Vec<String>,
    cancelled_spot_requests: Vec<String>,
    now: u64,
    lag: Lag,
}

/// A source of per-instance lags (the simulation draws them from its seeded generator).
type LagSource = Box<dyn FnMut() -> Lag + Send>;

/// EC2 in memory: instances with tags and states; CreateFleet's ClientToken idempotency as EC2
/// documents it (the first answer replayed, errors included; other parameters with the same token
/// answer `IdempotentParameterMismatch`); eventual consistency when a `Lag` is set; launch faults.
#[derive(Default)]
pub struct FakeFleet {
    state: Mutex<FleetState>,
    lags: Mutex<Option<LagSource>>,
}

impl FakeFleet {
    /// The next launches fail with these errors, one each, in order. Errors EC2 answers inside a
    /// CreateFleet response (no capacity, pools refused) are replayed for the same token, as EC2
    /// does; throttling and request errors are not.
    pub fn fail_launches(&self, errors: impl IntoIterator<Item = FleetError>) {
        self.state.lock().unwrap().launch_faults.extend(errors);
    }

    /// The next launch launches nothing and answers these per-pool errors (code, message), as
    /// CreateFleet instant does: e.g. `Unsupported` in one zone beside
    /// `InsufficientInstanceCapacity` in another.
    pub fn fail_launch_with_pool_errors(&self, errors: &[(&str, &str)]) {
        let errors: Vec<(String, String)> = errors.iter().map(|(c, m)| (c.to_string(), m.to_string())).collect();
        self.fail_launches([crate::fleet::pool_errors_outcome(&errors)]);
    }

    /// Every instance launched from now on lags this much.
    pub fn set_lag(&self, lag: Lag) {
        self.state.lock().unwrap().lag = lag;
    }

    /// Each instance launched from now on lags as this source says.
    pub fn set_lag_source(&self, source: impl FnMut() -> Lag + Send + 'static) {
        *self.lags.lock().unwrap() = Some(Box::new(source));
    }

    /// Moves the fake's clock (the unit of `Lag`).
    pub fn set_now(&self, now: u64) {
        self.state.lock().unwrap().now = now;
    }

    pub fn launches(&self) -> Vec<LaunchRequest> {
        self.state.lock().unwrap().launches.clone()
    }

    /// The truth, whatever listings show.
    pub fn all_instances(&self) -> Vec<Instance> {
        self.state.lock().unwrap().instances.values().cloned().collect()
    }

    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.state.lock().unwrap().instances.get(id).cloned()
    }

    pub fn live_instances(&self) -> Vec<Instance> {
        self.all_instances().into_iter().filter(|i| i.state.is_live()).collect()
    }

    /// Puts an instance in place as if some earlier launch had made it (visible at once).
    pub fn insert(&self, instance: Instance) {
        let mut state = self.state.lock().unwrap();
        state.views.remove(&instance.id);
        state.instances.insert(instance.id.clone(), instance);
    }

    pub fn set_state(&self, id: &str, state: InstanceState) {
        if let Some(instance) = self.state.lock().unwrap().instances.get_mut(id) {
            instance.state = state;
        }
    }

    /// EC2 takes the spot instance back.
    pub fn reclaim(&self, id: &str) {
        self.end(id, "Server.SpotInstanceTermination");
    }

    pub fn set_launched_at(&self, id: &str, at: SystemTime) {
        if let Some(instance) = self.state.lock().unwrap().instances.get_mut(id) {
            instance.launched_at = Some(at);
        }
    }

    /// The most instances of a template live at one moment.
    pub fn peak_live(&self, template: &str) -> usize {
        self.state.lock().unwrap().peak_live.get(template).copied().unwrap_or(0)
    }

    pub fn terminated(&self) -> Vec<String> {
        self.state.lock().unwrap().terminated.clone()
    }

    pub fn cancelled_spot_requests(&self) -> Vec<String> {
        self.state.lock().unwrap().cancelled_spot_requests.clone()
    }

    /// Ends an instance (truth at once; listings as the lag says). Answers whether it was live.
    fn end(&self, id: &str, reason: &str) -> bool {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let now = state.now;
        let Some(instance) = state.instances.get_mut(id) else {
            return false;
        };
        if instance.state == InstanceState::Terminated {
            return false;
        }
        let before = instance.state;
        instance.state = InstanceState::Terminated;
        instance.state_reason = Some(reason.into());
        state.views.entry(id.to_string()).or_default().ended = Some((now, before));
        true
    }

    fn next_lag(&self, state: &FleetState) -> Lag {
        match self.lags.lock().unwrap().as_mut() {
            Some(source) => source(),
            None => state.lag,
        }
    }

    /// What a listing shows of an instance now; None while it is not visible yet.
    fn view(state: &FleetState, instance: &Instance) -> Option<Instance> {
        let Some(view) = state.views.get(&instance.id) else {
            return Some(instance.clone());
        };
        let now = state.now;
        if now < view.visible_from {
            return None;
        }
        let lag = view.ended_lag;
        let mut shown = instance.clone();
        if let Some((at, before)) = view.ended
            && now < at + 2 * lag
        {
            shown.state = if now < at + lag {
                before
            } else {
                InstanceState::ShuttingDown
            };
            if now < at + lag {
                shown.state_reason = None;
            }
        }
        for (visible_from, key, _) in &view.late_tags {
            if now < *visible_from {
                shown.tags.remove(key);
            }
        }
        // A tag rewritten late shows its latest visible value.
        for (visible_from, key, value) in &view.late_tags {
            if now >= *visible_from {
                shown.tags.insert(key.clone(), value.clone());
            }
        }
        Some(shown)
    }
}

impl FakeFleet {
    /// CreateFleet with `fault` as its answer if the token is new (else the next queued fault):
    /// a token already used replays its first answer whatever the fault.
    pub fn launch_or_fail(&self, request: &LaunchRequest, fault: Option<FleetError>) -> Result<Launched, FleetError> {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        state.launches.push(request.clone());
        if let Some(used) = state.tokens.get(&request.client_token) {
            if used.request != *request {
                return Err(FleetError::TokenMismatch(format!(
                    "client token {} was used with other parameters",
                    request.client_token
                )));
            }
            let id = used.answer.clone()?;
            let instance = &state.instances[&id];
            return Ok(Launched {
                instance_id: id,
                instance_type: instance.instance_type.clone(),
                capacity: request.capacity,
            });
        }
        if let Some(error) = fault.or_else(|| state.launch_faults.pop_front()) {
            // Errors inside a CreateFleet answer belong to the token; request errors do not.
            if matches!(error, FleetError::NoCapacity(_) | FleetError::Rejected(_)) {
                state.tokens.insert(
                    request.client_token.clone(),
                    TokenUse {
                        request: request.clone(),
                        answer: Err(error.clone()),
                    },
                );
            }
            return Err(error);
        }
        state.next_id += 1;
        let id = format!("i-{:017x}", state.next_id);
        let instance_type = request.instance_types.first().cloned().unwrap_or_default();
        let spot_request_id = (request.capacity == Capacity::Spot).then(|| format!("sir-{:08x}", state.next_id));
        let instance = Instance {
            id: id.clone(),
            state: InstanceState::Pending,
            instance_type: instance_type.clone(),
            launched_at: Some(SystemTime::now()),
            spot_request_id,
            state_reason: None,
            tags: request.tags.iter().cloned().collect(),
        };
        let template = instance.tag(TAG_TEMPLATE).unwrap_or_default().to_string();
        state.instances.insert(id.clone(), instance);
        let lag = self.next_lag(state);
        if lag != Lag::default() {
            state.views.insert(
                id.clone(),
                View {
                    visible_from: state.now + lag.new,
                    ended: None,
                    late_tags: Vec::new(),
                    ended_lag: lag.ended,
                    tags_lag: lag.tags,
                },
            );
        }
        state.tokens.insert(
            request.client_token.clone(),
            TokenUse {
                request: request.clone(),
                answer: Ok(id.clone()),
            },
        );
        let live = state
            .instances
            .values()
            .filter(|i| i.state.is_live() && i.tag(TAG_TEMPLATE) == Some(template.as_str()))
            .count();
        let peak = state.peak_live.entry(template).or_default();
        *peak = (*peak).max(live);
        Ok(Launched {
            instance_id: id,
            instance_type,
            capacity: request.capacity,
        })
    }
}

#[async_trait]
impl Fleet for FakeFleet {
    async fn launch(&self, request: &LaunchRequest) -> Result<Launched, FleetError> {
        self.launch_or_fail(request, None)
    }

    async fn instances(&self, deployment: &str, query: &InstanceQuery) -> Result<Vec<Instance>, FleetError> {
        let state = self.state.lock().unwrap();
        let job_id = query.job_id.map(|id| id.to_string());
        Ok(state
            .instances
            .values()
            .filter_map(|i| Self::view(&state, i))
            .filter(|i| i.tag(TAG_DEPLOYMENT) == Some(deployment))
            .filter(|i| query.instance_id.as_deref().is_none_or(|id| i.id == id))
            .filter(|i| query.template.as_deref().is_none_or(|t| i.tag(TAG_TEMPLATE) == Some(t)))
            .filter(|i| job_id.as_deref().is_none_or(|j| i.tag(TAG_JOB_ID) == Some(j)))
            .filter(|i| {
                if query.live_only {
                    i.state.is_live()
                } else {
                    query.with_terminated || i.state != InstanceState::Terminated
                }
            })
            .collect())
    }

    async fn tag(&self, instance_id: &str, tags: &[(String, String)]) -> Result<(), FleetError> {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let now = state.now;
        let instance = state
            .instances
            .get_mut(instance_id)
            .ok_or_else(|| FleetError::Rejected(format!("InvalidInstanceID.NotFound: {instance_id}")))?;
        instance.tags.extend(tags.iter().cloned());
        if let Some(view) = state.views.get_mut(instance_id)
            && view.tags_lag > 0
        {
            let visible_from = now + view.tags_lag;
            view.late_tags
                .extend(tags.iter().map(|(k, v)| (visible_from, k.clone(), v.clone())));
        }
        Ok(())
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), FleetError> {
        if self.end(instance_id, "Client.UserInitiatedShutdown") {
            self.state.lock().unwrap().terminated.push(instance_id.to_string());
        }
        Ok(())
    }

    async fn cancel_spot_request(&self, request_id: &str) -> Result<(), FleetError> {
        self.state
            .lock()
            .unwrap()
            .cancelled_spot_requests
            .push(request_id.to_string());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// SSM Run Command

#[derive(Default)]
struct CommandsState {
    sent: Vec<(CommandRequest, String)>,
    not_ready: usize,
    faults: VecDeque<CommandError>,
    statuses: HashMap<String, CommandStatus>,
    next_id: u64,
}

#[derive(Default)]
pub struct FakeCommands {
    state: Mutex<CommandsState>,
}

impl FakeCommands {
    /// The next `times` sends answer `InvalidInstanceId` (the agent has not registered).
    pub fn not_ready_for(&self, times: usize) {
        self.state.lock().unwrap().not_ready = times;
    }

    pub fn fail_next(&self, error: CommandError) {
        self.state.lock().unwrap().faults.push_back(error);
    }

    /// Requests that succeeded, with their command ids.
    pub fn sent(&self) -> Vec<(CommandRequest, String)> {
        self.state.lock().unwrap().sent.clone()
    }

    pub fn set_status(&self, command_id: &str, status: CommandStatus) {
        self.state
            .lock()
            .unwrap()
            .statuses
            .insert(command_id.to_string(), status);
    }
}

#[async_trait]
impl Commands for FakeCommands {
    async fn send(&self, request: &CommandRequest) -> Result<String, CommandError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.faults.pop_front() {
            return Err(error);
        }
        if state.not_ready > 0 {
            state.not_ready -= 1;
            return Err(CommandError::NotReady(request.instance_id.clone()));
        }
        state.next_id += 1;
        let id = format!("command-{}", state.next_id);
        state.sent.push((request.clone(), id.clone()));
        state.statuses.insert(id.clone(), CommandStatus::Running);
        Ok(id)
    }

    async fn status(&self, command_id: &str, _instance_id: &str) -> Result<CommandStatus, CommandError> {
        self.state
            .lock()
            .unwrap()
            .statuses
            .get(command_id)
            .cloned()
            .ok_or_else(|| CommandError::Failed(format!("InvalidCommandId: {command_id}")))
    }
}

// ---------------------------------------------------------------------------------------------
// GitHub

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRunner {
    pub runner: Runner,
    pub scope: RunnerScope,
    pub labels: Vec<String>,
    pub group_id: u64,
}

#[derive(Default)]
struct GithubState {
    jobs: HashMap<(String, u64), String>,
    default_status: Option<String>,
    runners: BTreeMap<u64, FakeRunner>,
    next_runner: u64,
    status_faults: VecDeque<GithubError>,
    register_faults: VecDeque<GithubError>,
    removed: Vec<u64>,
    /// What the runner downloads API lists (None: `runner_downloads_of(FAKE_RUNNER_VERSION)`).
    downloads: Option<Vec<RunnerDownload>>,
    download_faults: VecDeque<GithubError>,
    /// The hook's deliveries, oldest first (listed newest first, as GitHub does).
    deliveries: Vec<HookDelivery>,
    /// Page size of the deliveries list (None: 100, GitHub's most).
    delivery_page_size: Option<usize>,
    delivery_faults: VecDeque<GithubError>,
    delivery_pages_read: usize,
    redeliver_faults: VecDeque<GithubError>,
    /// Ids of the deliveries a redelivery was asked for, in order.
    redelivered: Vec<u64>,
    /// The status a redelivery gets (None: 202, what the webhook answers a job it enqueued).
    redelivery_status: Option<u16>,
    /// Jobs and runs as the job and run APIs report them (re-runs).
    job_details: HashMap<(String, u64), JobDetails>,
    runs: HashMap<(String, u64), RunDetails>,
    /// (repository, job id) of every re-run GitHub took, in order.
    reruns: Vec<(String, u64)>,
    rerun_faults: VecDeque<GithubError>,
}

/// The release the fake GitHub offers unless told otherwise.
pub const FAKE_RUNNER_VERSION: &str = "2.330.0";

/// What GitHub's runner downloads API lists for a release: a package per os and architecture,
/// each with a SHA-256 (made up here, derived from the version and architecture).
pub fn runner_downloads_of(version: &str) -> Vec<RunnerDownload> {
    let mut downloads = Vec::new();
    for (os, architecture, extension) in [
        ("osx", "x64", "tar.gz"),
        ("linux", "x64", "tar.gz"),
        ("linux", "arm", "tar.gz"),
        ("win", "x64", "zip"),
        ("linux", "arm64", "tar.gz"),
    ] {
        let filename = format!("actions-runner-{os}-{architecture}-{version}.{extension}");
        let digest: String = format!("{version}/{os}/{architecture}")
            .bytes()
            .cycle()
            .take(32)
            .map(|b| format!("{:02x}", b.wrapping_mul(31)))
            .collect();
        downloads.push(RunnerDownload {
            os: os.into(),
            architecture: architecture.into(),
            download_url: format!("https://github.com/actions/runner/releases/download/v{version}/{filename}"),
            filename,
            sha256_checksum: Some(digest),
        });
    }
    downloads
}

/// A JIT config as large as GitHub's are now (over 4 KB, growing with the runner's name and
/// labels), starting `jit-secret-<runner id>-` so that tests can tell whose it is.
pub fn jit_config(runner_id: u64, name: &str, labels: &[String]) -> String {
    let size = 4_600 + 4 * name.len() + labels.iter().map(|l| 4 * l.len()).sum::<usize>();
    let mut encoded = format!("jit-secret-{runner_id}-");
    let filler = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    while encoded.len() < size.min(6_000) {
        encoded.push_str(filler);
    }
    encoded.truncate(size.min(6_000));
    encoded
}

/// GitHub in memory: job statuses, registered runners, faults to inject. As GitHub: JIT configs
/// over 4 KB, a name registered twice in a scope is 409, a busy runner cannot be deleted (422).
#[derive(Default)]
pub struct FakeGithub {
    state: Mutex<GithubState>,
}

impl FakeGithub {
    /// What the runner downloads API lists from now on (a new release, or a package without a
    /// checksum).
    pub fn set_runner_downloads(&self, downloads: Vec<RunnerDownload>) {
        self.state.lock().unwrap().downloads = Some(downloads);
    }

    /// The next calls to the runner downloads API fail with these errors, in order.
    pub fn fail_runner_downloads(&self, errors: impl IntoIterator<Item = GithubError>) {
        self.state.lock().unwrap().download_faults.extend(errors);
    }

    /// Every job GitHub does not otherwise know has this status (`queued` by default here).
    pub fn new() -> Self {
        let fake = Self::default();
        fake.state.lock().unwrap().default_status = Some("queued".into());
        fake
    }

    /// A job as the job API reports it (its status is the job status API's too).
    pub fn set_job(&self, repository: &str, job: JobDetails) {
        let mut state = self.state.lock().unwrap();
        state.jobs.insert((repository.to_string(), job.id), job.status.clone());
        state.job_details.insert((repository.to_string(), job.id), job);
    }

    /// A run as the run API reports it.
    pub fn set_run(&self, repository: &str, run: RunDetails) {
        self.state
            .lock()
            .unwrap()
            .runs
            .insert((repository.to_string(), run.id), run);
    }

    /// The run as it is now, after any re-run.
    pub fn run(&self, repository: &str, run_id: u64) -> Option<RunDetails> {
        self.state
            .lock()
            .unwrap()
            .runs
            .get(&(repository.to_string(), run_id))
            .cloned()
    }

    /// (repository, job id) of every re-run GitHub took, in order.
    pub fn reruns(&self) -> Vec<(String, u64)> {
        self.state.lock().unwrap().reruns.clone()
    }

    /// The next re-run requests fail with these errors, in order.
    pub fn fail_rerun(&self, errors: impl IntoIterator<Item = GithubError>) {
        self.state.lock().unwrap().rerun_faults.extend(errors);
    }

    pub fn set_job_status(&self, repository: &str, job_id: u64, status: &str) {
        self.state
            .lock()
            .unwrap()
            .jobs
            .insert((repository.to_string(), job_id), status.to_string());
    }

    /// Unknown jobs answer 404 when `None`.
    pub fn set_default_status(&self, status: Option<&str>) {
        self.state.lock().unwrap().default_status = status.map(str::to_string);
    }

    pub fn fail_job_status(&self, error: GithubError) {
        self.state.lock().unwrap().status_faults.push_back(error);
    }

    pub fn fail_register(&self, error: GithubError) {
        self.state.lock().unwrap().register_faults.push_back(error);
    }

    pub fn runners(&self) -> Vec<FakeRunner> {
        self.state.lock().unwrap().runners.values().cloned().collect()
    }

    pub fn removed(&self) -> Vec<u64> {
        self.state.lock().unwrap().removed.clone()
    }

    pub fn set_runner_status(&self, runner_id: u64, status: &str, busy: bool) {
        if let Some(runner) = self.state.lock().unwrap().runners.get_mut(&runner_id) {
            runner.runner.status = status.to_string();
            runner.runner.busy = busy;
        }
    }

    /// The runner finished its one job: JIT runners remove themselves.
    pub fn runner_finished(&self, runner_id: u64) {
        self.state.lock().unwrap().runners.remove(&runner_id);
    }

    /// Records a delivery of the hook, as GitHub does after sending one (the newest so far).
    /// The fake serves one hook: any `Hook` lists these.
    pub fn add_delivery(&self, delivery: HookDelivery) {
        self.state.lock().unwrap().deliveries.push(delivery);
    }

    /// Every delivery, oldest first, including the redeliveries asked for.
    pub fn deliveries(&self) -> Vec<HookDelivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    /// Ids of the deliveries a redelivery was asked for (and accepted), in order.
    pub fn redelivered(&self) -> Vec<u64> {
        self.state.lock().unwrap().redelivered.clone()
    }

    /// How many pages of deliveries were read (including those that failed).
    pub fn delivery_pages_read(&self) -> usize {
        self.state.lock().unwrap().delivery_pages_read
    }

    pub fn set_delivery_page_size(&self, size: usize) {
        self.state.lock().unwrap().delivery_page_size = Some(size.max(1));
    }

    /// The status the redeliveries made from now on get (a webhook still failing: 500).
    pub fn set_redelivery_status(&self, status_code: u16) {
        self.state.lock().unwrap().redelivery_status = Some(status_code);
    }

    /// The next pages of deliveries fail with these errors, in order.
    pub fn fail_hook_deliveries(&self, errors: impl IntoIterator<Item = GithubError>) {
        self.state.lock().unwrap().delivery_faults.extend(errors);
    }

    /// The next redeliveries fail with these errors, in order (GitHub did not redeliver).
    pub fn fail_redeliver(&self, errors: impl IntoIterator<Item = GithubError>) {
        self.state.lock().unwrap().redeliver_faults.extend(errors);
    }
}

#[async_trait]
impl Github for FakeGithub {
    async fn job_status(&self, repository: &str, job_id: u64) -> Result<JobStatus, GithubError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.status_faults.pop_front() {
            return Err(error);
        }
        let status = state
            .jobs
            .get(&(repository.to_string(), job_id))
            .cloned()
            .or_else(|| state.default_status.clone())
            .ok_or_else(|| GithubError::NotFound(format!("job {job_id}")))?;
        Ok(if status == "queued" {
            JobStatus::Queued
        } else {
            JobStatus::Other(status)
        })
    }

    async fn register_runner(
        &self,
        scope: &RunnerScope,
        name: &str,
        labels: &[String],
        runner_group_id: u64,
    ) -> Result<JitConfig, GithubError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.register_faults.pop_front() {
            return Err(error);
        }
        if labels.is_empty() || labels.len() > 100 {
            return Err(GithubError::Rejected(format!(
                "{} labels; GitHub takes 1 to 100",
                labels.len()
            )));
        }
        if state
            .runners
            .values()
            .any(|r| r.runner.name == name && &r.scope == scope)
        {
            return Err(GithubError::Conflict(format!("a runner named {name} already exists")));
        }
        state.next_runner += 1;
        let id = 1000 + state.next_runner;
        state.runners.insert(
            id,
            FakeRunner {
                runner: Runner {
                    id,
                    name: name.to_string(),
                    status: "offline".into(),
                    busy: false,
                },
                scope: scope.clone(),
                labels: labels.to_vec(),
                group_id: runner_group_id,
            },
        );
        Ok(JitConfig {
            runner_id: id,
            encoded: jit_config(id, name, labels),
        })
    }

    async fn runners(&self, scope: &RunnerScope) -> Result<Vec<Runner>, GithubError> {
        let state = self.state.lock().unwrap();
        Ok(state
            .runners
            .values()
            .filter(|r| &r.scope == scope)
            .map(|r| r.runner.clone())
            .collect())
    }

    async fn runner_downloads(&self, _scope: &RunnerScope) -> Result<Vec<RunnerDownload>, GithubError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.download_faults.pop_front() {
            return Err(error);
        }
        Ok(state
            .downloads
            .clone()
            .unwrap_or_else(|| runner_downloads_of(FAKE_RUNNER_VERSION)))
    }

    async fn hook_deliveries(&self, _hook: &Hook, cursor: Option<&str>) -> Result<DeliveriesPage, GithubError> {
        let mut state = self.state.lock().unwrap();
        state.delivery_pages_read += 1;
        if let Some(error) = state.delivery_faults.pop_front() {
            return Err(error);
        }
        let start = match cursor {
            None => 0,
            Some(cursor) => cursor
                .parse::<usize>()
                .map_err(|_| GithubError::Rejected(format!("cursor `{cursor}` is not one of ours")))?,
        };
        let size = state.delivery_page_size.unwrap_or(100);
        let newest_first: Vec<HookDelivery> = state.deliveries.iter().rev().cloned().collect();
        let deliveries: Vec<HookDelivery> = newest_first.iter().skip(start).take(size).cloned().collect();
        let next_cursor = (start + size < newest_first.len()).then(|| (start + size).to_string());
        Ok(DeliveriesPage {
            deliveries,
            next_cursor,
        })
    }

    async fn job(&self, repository: &str, job_id: u64) -> Result<JobDetails, GithubError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.status_faults.pop_front() {
            return Err(error);
        }
        state
            .job_details
            .get(&(repository.to_string(), job_id))
            .cloned()
            .ok_or_else(|| GithubError::NotFound(format!("job {job_id}")))
    }

    async fn workflow_run(&self, repository: &str, run_id: u64) -> Result<RunDetails, GithubError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.status_faults.pop_front() {
            return Err(error);
        }
        state
            .runs
            .get(&(repository.to_string(), run_id))
            .cloned()
            .ok_or_else(|| GithubError::NotFound(format!("run {run_id}")))
    }

    async fn run_jobs(&self, repository: &str, run_id: u64) -> Result<Vec<JobDetails>, GithubError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.status_faults.pop_front() {
            return Err(error);
        }
        let latest = state
            .runs
            .get(&(repository.to_string(), run_id))
            .map(|run| run.run_attempt);
        Ok(state
            .job_details
            .iter()
            .filter(|((of, _), job)| {
                of == repository && job.run_id == run_id && latest.is_none_or(|at| job.run_attempt == at)
            })
            .map(|(_, job)| job.clone())
            .collect())
    }

    /// GitHub's rules: the job must be of the run's latest attempt, and the run completed (403
    /// before); the run becomes a new attempt, queued.
    async fn rerun_job(&self, repository: &str, job_id: u64) -> Result<(), GithubError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.rerun_faults.pop_front() {
            return Err(error);
        }
        let Some(job) = state.job_details.get(&(repository.to_string(), job_id)).cloned() else {
            return Err(GithubError::NotFound(format!("job {job_id}")));
        };
        let Some(run) = state.runs.get_mut(&(repository.to_string(), job.run_id)) else {
            return Err(GithubError::NotFound(format!("run {}", job.run_id)));
        };
        if run.status != "completed" {
            return Err(GithubError::Conflict(format!("403 run {} is not completed", run.id)));
        }
        if run.run_attempt != job.run_attempt {
            return Err(GithubError::Conflict(format!(
                "403 job {job_id} is of attempt {}, the run is at {}",
                job.run_attempt, run.run_attempt
            )));
        }
        run.run_attempt += 1;
        run.status = "queued".into();
        run.conclusion = None;
        state.reruns.push((repository.to_string(), job_id));
        Ok(())
    }

    async fn redeliver(&self, _hook: &Hook, delivery_id: u64) -> Result<(), GithubError> {
        let mut state = self.state.lock().unwrap();
        if let Some(error) = state.redeliver_faults.pop_front() {
            return Err(error);
        }
        let Some(original) = state.deliveries.iter().find(|d| d.id == delivery_id).cloned() else {
            return Err(GithubError::NotFound(format!("delivery {delivery_id}")));
        };
        let id = state.deliveries.iter().map(|d| d.id).max().unwrap_or(0) + 1;
        let status_code = state.redelivery_status.unwrap_or(202);
        state.deliveries.push(HookDelivery {
            id,
            redelivery: true,
            status_code,
            delivered_at: crate::job::now_rfc3339(),
            ..original
        });
        state.redelivered.push(delivery_id);
        Ok(())
    }

    async fn remove_runner(&self, _scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError> {
        let mut state = self.state.lock().unwrap();
        if state.runners.get(&runner_id).is_some_and(|r| r.runner.busy) {
            return Err(GithubError::Busy(format!(
                "422 runner {runner_id} is still running a job"
            )));
        }
        if state.runners.remove(&runner_id).is_some() {
            state.removed.push(runner_id);
        }
        Ok(())
    }
}
