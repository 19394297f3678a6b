//! In-memory fakes of the ports, for unit and simulation tests. Each records what it was asked and
//! can be told to fail.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::queue::{Queue, QueueError, Received};
use crate::secrets::{Secrets, SecretsError};

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

#[derive(Default)]
pub struct FakeSecrets {
    values: Mutex<BTreeMap<String, String>>,
}

impl FakeSecrets {
    pub fn with(values: &[(&str, &str)]) -> Self {
        Self {
            values: Mutex::new(values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
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
        self.values.lock().unwrap().insert(name.into(), value.into());
        Ok(())
    }

    async fn create(&self, name: &str, value: &str) -> Result<bool, SecretsError> {
        let mut values = self.values.lock().unwrap();
        if values.contains_key(name) {
            return Ok(false);
        }
        values.insert(name.into(), value.into());
        Ok(true)
    }

    async fn delete(&self, name: &str) -> Result<(), SecretsError> {
        self.values.lock().unwrap().remove(name);
        Ok(())
    }

    async fn list(&self, path: &str) -> Result<Vec<String>, SecretsError> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        Ok(self
            .values
            .lock()
            .unwrap()
            .keys()
            .filter(|name| name.starts_with(&prefix))
            .cloned()
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
use crate::github::{Github, GithubError, JitConfig, JobStatus, Runner, RunnerScope};

#[derive(Default)]
struct FleetState {
    instances: BTreeMap<String, Instance>,
    tokens: HashMap<String, String>,
    launches: Vec<LaunchRequest>,
    launch_faults: VecDeque<FleetError>,
    next_id: u64,
    peak_live: HashMap<String, usize>,
    terminated: Vec<String>,
    cancelled_spot_requests: Vec<String>,
}

/// EC2 in memory: instances with tags and states, CreateFleet's ClientToken idempotency, and
/// launch faults to inject.
#[derive(Default)]
pub struct FakeFleet {
    state: Mutex<FleetState>,
}

impl FakeFleet {
    /// The next launches fail with these errors, one each, in order.
    pub fn fail_launches(&self, errors: impl IntoIterator<Item = FleetError>) {
        self.state.lock().unwrap().launch_faults.extend(errors);
    }

    pub fn launches(&self) -> Vec<LaunchRequest> {
        self.state.lock().unwrap().launches.clone()
    }

    pub fn all_instances(&self) -> Vec<Instance> {
        self.state.lock().unwrap().instances.values().cloned().collect()
    }

    pub fn instance(&self, id: &str) -> Option<Instance> {
        self.state.lock().unwrap().instances.get(id).cloned()
    }

    pub fn live_instances(&self) -> Vec<Instance> {
        self.all_instances().into_iter().filter(|i| i.state.is_live()).collect()
    }

    /// Puts an instance in place as if some earlier launch had made it.
    pub fn insert(&self, instance: Instance) {
        self.state
            .lock()
            .unwrap()
            .instances
            .insert(instance.id.clone(), instance);
    }

    pub fn set_state(&self, id: &str, state: InstanceState) {
        if let Some(instance) = self.state.lock().unwrap().instances.get_mut(id) {
            instance.state = state;
        }
    }

    /// EC2 takes the spot instance back.
    pub fn reclaim(&self, id: &str) {
        if let Some(instance) = self.state.lock().unwrap().instances.get_mut(id) {
            instance.state = InstanceState::Terminated;
            instance.state_reason = Some("Server.SpotInstanceTermination".into());
        }
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
}

#[async_trait]
impl Fleet for FakeFleet {
    async fn launch(&self, request: &LaunchRequest) -> Result<Launched, FleetError> {
        let mut state = self.state.lock().unwrap();
        state.launches.push(request.clone());
        if let Some(id) = state.tokens.get(&request.client_token).cloned() {
            let instance = &state.instances[&id];
            return Ok(Launched {
                instance_id: id,
                instance_type: instance.instance_type.clone(),
                capacity: request.capacity,
            });
        }
        if let Some(error) = state.launch_faults.pop_front() {
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
        state.tokens.insert(request.client_token.clone(), id.clone());
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

    async fn instances(&self, deployment: &str, query: &InstanceQuery) -> Result<Vec<Instance>, FleetError> {
        let state = self.state.lock().unwrap();
        let job_id = query.job_id.map(|id| id.to_string());
        Ok(state
            .instances
            .values()
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
            .cloned()
            .collect())
    }

    async fn tag(&self, instance_id: &str, tags: &[(String, String)]) -> Result<(), FleetError> {
        let mut state = self.state.lock().unwrap();
        let instance = state
            .instances
            .get_mut(instance_id)
            .ok_or_else(|| FleetError::Rejected(format!("InvalidInstanceID.NotFound: {instance_id}")))?;
        instance.tags.extend(tags.iter().cloned());
        Ok(())
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), FleetError> {
        let mut state = self.state.lock().unwrap();
        if let Some(instance) = state.instances.get_mut(instance_id)
            && instance.state != InstanceState::Terminated
        {
            instance.state = InstanceState::Terminated;
            instance.state_reason = Some("Client.UserInitiatedShutdown".into());
            state.terminated.push(instance_id.to_string());
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
}

/// GitHub in memory: job statuses, registered runners, faults to inject.
#[derive(Default)]
pub struct FakeGithub {
    state: Mutex<GithubState>,
}

impl FakeGithub {
    /// Every job GitHub does not otherwise know has this status (`queued` by default here).
    pub fn new() -> Self {
        let fake = Self::default();
        fake.state.lock().unwrap().default_status = Some("queued".into());
        fake
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
            encoded: format!("jit-secret-{id}"),
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

    async fn remove_runner(&self, _scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError> {
        let mut state = self.state.lock().unwrap();
        if state.runners.remove(&runner_id).is_some() {
            state.removed.push(runner_id);
        }
        Ok(())
    }
}
