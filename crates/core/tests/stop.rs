//! stop-runner and the sweep over the fakes: every branch, named by behaviour.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::metrics_of_job;
use serde_json::json;
use sophons_core::commands::CommandStatus;
use sophons_core::config::Config;
use sophons_core::create::{CreateRunner, Outcome};
use sophons_core::fakes::{FakeCommands, FakeFleet, FakeGithub, FakeParameters, FakeQueue, Lag};
use sophons_core::fleet::{Instance, InstanceState};
use sophons_core::github::{Github, GithubError, RunnerScope};
use sophons_core::job::JobMessage;
use sophons_core::parameters::Parameters;
use sophons_core::slots::{FakeSlots, SlotClaim, Slots};
use sophons_core::stop::{Handled, StopRunner, Stopped};
use tokio::time::Instant;

const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs";

struct World {
    fleet: Arc<FakeFleet>,
    github: Arc<FakeGithub>,
    parameters: Arc<FakeParameters>,
    slots: Arc<FakeSlots>,
    commands: Arc<FakeCommands>,
    queue: Arc<FakeQueue>,
    create: Arc<CreateRunner>,
    stop: StopRunner,
}

impl World {
    fn stored(&self) -> Vec<String> {
        common::stored(&self.parameters, &self.slots)
    }
}

fn world_with(edit: impl FnOnce(&mut serde_json::Value)) -> World {
    let mut document = common::config_json(QUEUE);
    edit(&mut document);
    let config = Arc::new(Config::parse(&document.to_string()).unwrap());
    let fakes = common::Fakes::new();
    World {
        create: Arc::new(CreateRunner::new(config.clone(), fakes.ports())),
        stop: StopRunner::new(config, fakes.ports()),
        fleet: fakes.fleet,
        github: fakes.github,
        parameters: fakes.parameters,
        slots: fakes.slots,
        commands: fakes.commands,
        queue: fakes.queue,
    }
}

fn world() -> World {
    world_with(|_| {})
}

fn message(job_id: u64, relaunches: u32) -> JobMessage {
    JobMessage {
        relaunches,
        ..common::job_message(job_id, "template_cpu")
    }
}

/// The GitHub runner id create-runner tagged an instance with.
fn runner_id_of(world: &World, instance_id: &str) -> u64 {
    world
        .fleet
        .instance(instance_id)
        .and_then(|i| i.tag("sophons:runner-id").and_then(|id| id.parse().ok()))
        .expect("a started instance carries its runner id")
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(900)
}

/// Serves a job and answers (instance id, command id).
async fn running_job(world: &World, job_id: u64) -> (String, String) {
    match world.create.serve(&message(job_id, 0).encode(), 1, far()).await {
        Outcome::Served {
            instance_id,
            command_id,
            ..
        } => (instance_id, command_id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_successful_command_ends_the_instance_and_everything_it_owned() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 1).await;
    world.github.set_job_status("my-org/app", 1, "completed");
    let stopped = world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert_eq!(
        stopped,
        Stopped::Ended {
            instance_id: instance_id.clone(),
            relaunched: false
        }
    );
    assert_eq!(
        world.fleet.instance(&instance_id).unwrap().state,
        InstanceState::Terminated
    );
    assert_eq!(world.fleet.cancelled_spot_requests().len(), 1);
    assert!(world.stored().is_empty());
    assert!(world.github.runners().is_empty());
    assert!(world.queue.sent().is_empty(), "a job that ran is not relaunched");
}

#[tokio::test]
async fn an_event_for_an_instance_that_is_not_ours_changes_nothing() {
    let world = world();
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sophons:deployment".to_string(), "someone-else".to_string());
    tags.insert("sophons:command-id".to_string(), "command-x".to_string());
    world.fleet.insert(Instance {
        id: "i-theirs".into(),
        state: InstanceState::Running,
        instance_type: "m7i.large".into(),
        launched_at: Some(SystemTime::now()),
        spot_request_id: None,
        state_reason: None,
        tags,
    });
    let (ours, _) = running_job(&world, 2).await;
    for (instance, command) in [("i-theirs", "command-x"), ("i-untagged", "command-y")] {
        let stopped = world.stop.command_ended(instance, command, "Failed").await;
        assert!(matches!(stopped, Stopped::Ignored(_)), "{stopped:?}");
    }
    assert_eq!(world.fleet.instance("i-theirs").unwrap().state, InstanceState::Running);
    assert!(world.fleet.terminated().is_empty());
    assert!(world.fleet.instance(&ours).unwrap().state.is_live());
}

#[tokio::test]
async fn an_event_for_another_command_on_our_instance_changes_nothing() {
    let world = world();
    let (instance_id, _) = running_job(&world, 3).await;
    let stopped = world
        .stop
        .command_ended(&instance_id, "some-other-command", "Success")
        .await;
    assert!(matches!(stopped, Stopped::Ignored(reason) if reason.contains("not the runner command")));
    assert!(world.fleet.instance(&instance_id).unwrap().state.is_live());
}

#[tokio::test]
async fn a_status_that_is_not_terminal_changes_nothing() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 4).await;
    assert!(matches!(
        world.stop.command_ended(&instance_id, &command_id, "InProgress").await,
        Stopped::Ignored(_)
    ));
    assert!(world.fleet.instance(&instance_id).unwrap().state.is_live());
}

#[tokio::test]
async fn a_repeated_event_is_harmless() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 5).await;
    world.stop.command_ended(&instance_id, &command_id, "Failed").await;
    let again = world.stop.command_ended(&instance_id, &command_id, "Failed").await;
    assert!(matches!(again, Stopped::Ignored(_)), "{again:?}");
    assert_eq!(world.queue.sent().len(), 1, "relaunched once, not twice");
    assert_eq!(world.fleet.terminated(), vec![instance_id]);
}

#[tokio::test]
async fn a_runner_that_died_before_its_job_started_gets_the_job_a_new_runner() {
    let world = world();
    let (first, command_id) = running_job(&world, 6).await;
    let stopped = world.stop.command_ended(&first, &command_id, "Failed").await;
    assert_eq!(
        stopped,
        Stopped::Ended {
            instance_id: first.clone(),
            relaunched: true
        }
    );
    let sent = world.queue.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].queue_url, QUEUE);
    let relaunch = JobMessage::decode(&sent[0].body).unwrap();
    assert_eq!(
        (relaunch.job_id, relaunch.relaunches, relaunch.template.as_str()),
        (6, 1, "template_cpu")
    );
    // create-runner serves the relaunched message with a fresh instance.
    let outcome = world.create.serve(&sent[0].body, 1, far()).await;
    let Outcome::Served {
        instance_id: second, ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_ne!(first, second);
    assert_eq!(world.fleet.live_instances().len(), 1);
}

#[tokio::test]
async fn a_job_whose_runner_keeps_dying_is_dropped_after_the_limit() {
    let world = world_with(|c| c["max_job_relaunches"] = json!(2));
    let mut body = message(7, 0).encode();
    for expected_relaunch in 1..=3u32 {
        let Outcome::Served {
            instance_id,
            command_id,
            ..
        } = world.create.serve(&body, 1, far()).await
        else {
            panic!("not served")
        };
        let stopped = world.stop.command_ended(&instance_id, &command_id, "Failed").await;
        let relaunched = matches!(stopped, Stopped::Ended { relaunched: true, .. });
        assert_eq!(relaunched, expected_relaunch <= 2, "relaunch {expected_relaunch}");
        if relaunched {
            body = world.queue.sent().last().unwrap().body.clone();
        }
    }
    assert_eq!(world.queue.sent().len(), 2);
}

#[tokio::test]
async fn a_failed_runner_whose_job_ran_elsewhere_is_not_relaunched() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 8).await;
    world.github.set_job_status("my-org/app", 8, "completed");
    let stopped = world.stop.command_ended(&instance_id, &command_id, "TimedOut").await;
    assert_eq!(
        stopped,
        Stopped::Ended {
            instance_id,
            relaunched: false
        }
    );
    assert!(world.queue.sent().is_empty());
}

#[tokio::test]
async fn the_handler_tells_ssm_events_spot_warnings_and_the_schedule_from_anything_else() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 9).await;
    // AWS's documented sample shapes.
    let ssm_event = json!({
        "version": "0", "id": "51c0891d-0e34-45b1-83d6-95db273d1602",
        "detail-type": "EC2 Command Invocation Status-change Notification", "source": "aws.ssm",
        "account": "123456789012", "time": "2026-11-28T06:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}")],
        "detail": { "command-id": command_id, "document-name": "AWS-RunShellScript", "instance-id": instance_id,
                    "requested-date-time": "2026-11-28T05:00:00.000Z", "status": "Success" }
    });
    assert!(matches!(
        world.stop.handle(ssm_event, far()).await,
        Handled::Stop(Stopped::Ended { .. })
    ));
    let schedule = json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-11-28T06:15:00Z", "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/sophons-sweep"], "detail": {}
    });
    assert!(matches!(world.stop.handle(schedule, far()).await, Handled::Sweep(_)));
    // A spot warning without an instance is no instance of ours; an event of another kind is
    // not one stop-runner handles.
    let empty_warning =
        json!({ "detail-type": "EC2 Spot Instance Interruption Warning", "source": "aws.ec2", "detail": {} });
    assert!(matches!(
        world.stop.handle(empty_warning, far()).await,
        Handled::Stop(Stopped::Ignored(_))
    ));
    let other = json!({ "detail-type": "EC2 Instance Rebalance Recommendation", "source": "aws.ec2", "detail": {} });
    assert!(matches!(world.stop.handle(other, far()).await, Handled::Ignored(_)));
    assert!(matches!(
        world.stop.handle(json!("garbage"), far()).await,
        Handled::Ignored(_)
    ));
}

#[tokio::test]
async fn the_sweep_ends_an_instance_whose_event_was_missed() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 10).await;
    world
        .commands
        .set_status(&command_id, CommandStatus::Ended("Failed".into()));
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.command_ended, report.relaunched), (1, 1));
    assert_eq!(
        world.fleet.instance(&instance_id).unwrap().state,
        InstanceState::Terminated
    );
    assert!(world.stored().is_empty());
    assert!(world.github.runners().is_empty());
}

#[tokio::test]
async fn the_sweep_leaves_a_working_runner_alone() {
    let world = world();
    let (instance_id, _) = running_job(&world, 11).await;
    let report = world.stop.sweep(far()).await;
    assert_eq!(
        (
            report.examined,
            report.cleaned(),
            report.parameters_deleted,
            report.runners_removed
        ),
        (1, 0, 0, 0)
    );
    assert!(world.fleet.instance(&instance_id).unwrap().state.is_live());
    assert_eq!(world.stored().len(), 2, "its JIT parameter and its launch slot");
}

#[tokio::test]
async fn the_sweep_ends_instances_past_their_lifetime_and_those_never_started() {
    let world = world();
    let (old, _) = running_job(&world, 12).await;
    world
        .fleet
        .set_launched_at(&old, SystemTime::now() - Duration::from_secs(9 * 3600));
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sophons:deployment".to_string(), "sophons".to_string());
    tags.insert("sophons:job-id".to_string(), "13".to_string());
    world.fleet.insert(Instance {
        id: "i-never-started".into(),
        state: InstanceState::Running,
        instance_type: "c7i.large".into(),
        launched_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        spot_request_id: None,
        state_reason: None,
        tags,
    });
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.lifetime_exceeded, report.never_started), (1, 1));
    assert!(world.fleet.live_instances().is_empty());
}

#[tokio::test]
async fn the_sweep_ends_an_idle_runner_whose_job_went_elsewhere() {
    let world = world();
    let (instance_id, _) = running_job(&world, 14).await;
    let runner_id: u64 = runner_id_of(&world, &instance_id);
    world
        .fleet
        .set_launched_at(&instance_id, SystemTime::now() - Duration::from_secs(1800));
    world.github.set_runner_status(runner_id, "online", false);
    world.github.set_job_status("my-org/app", 14, "completed");
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.idle, 1);
    assert!(world.fleet.live_instances().is_empty());
    // Busy, or its job still queued: not idle.
    let (busy, _) = running_job(&world, 15).await;
    let busy_runner: u64 = runner_id_of(&world, &busy);
    world
        .fleet
        .set_launched_at(&busy, SystemTime::now() - Duration::from_secs(1800));
    world.github.set_runner_status(busy_runner, "online", true);
    world.github.set_job_status("my-org/app", 15, "in_progress");
    assert_eq!(world.stop.sweep(far()).await.idle, 0);
}

#[tokio::test]
async fn the_sweep_deletes_leftover_parameters_and_ghost_runners() {
    let world = world();
    let (live, _) = running_job(&world, 16).await;
    world
        .parameters
        .put_secure("/sophons/jit/i-gone", "x", &[])
        .await
        .unwrap();
    // Written longer ago than any launch takes (a fresh one may be a launch EC2 lists late).
    world
        .parameters
        .set_modified("/sophons/jit/i-gone", SystemTime::now() - Duration::from_secs(3600));
    world
        .parameters
        .put_secure("/other-deployment/jit/i-gone", "x", &[])
        .await
        .unwrap();
    let org = RunnerScope::Org("my-org".into());
    world
        .github
        .register_runner(&org, "sophons-i-gone", &["self-hosted".into()], 1)
        .await
        .unwrap();
    world
        .github
        .register_runner(&org, "not-ours-i-gone", &["self-hosted".into()], 1)
        .await
        .unwrap();
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.parameters_deleted, report.runners_removed), (1, 1));
    let names = world.stored();
    assert_eq!(
        names,
        vec![
            "/other-deployment/jit/i-gone".to_string(),
            format!("/sophons/jit/{live}"),
            "/sophons/slots/template_cpu/16".to_string(),
        ]
    );
    let runners: Vec<String> = world.github.runners().into_iter().map(|r| r.runner.name).collect();
    assert_eq!(runners, vec![format!("sophons-{live}"), "not-ours-i-gone".to_string()]);
}

#[tokio::test]
async fn the_sweep_keeps_going_when_github_fails() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 17).await;
    world
        .commands
        .set_status(&command_id, CommandStatus::Ended("Failed".into()));
    world.github.fail_job_status(GithubError::Unavailable("502".into()));
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.command_ended, 1);
    assert_eq!(
        world.fleet.instance(&instance_id).unwrap().state,
        InstanceState::Terminated
    );
    assert_eq!(
        world.queue.sent().len(),
        1,
        "a runner that failed gets its job sent back; create-runner asks again"
    );
}

#[tokio::test]
async fn a_runner_github_gave_another_job_gets_its_own_job_sent_back_when_it_ends() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 18).await;
    // The runner ran some other job and ended in Success; its own job is still queued.
    let stopped = world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert_eq!(
        stopped,
        Stopped::Ended {
            instance_id: instance_id.clone(),
            relaunched: true
        }
    );
    let sent = world.queue.sent();
    let message = JobMessage::decode(&sent[0].body).unwrap();
    assert_eq!((message.job_id, message.relaunches), (18, 1));
    assert!(!world.fleet.instance(&instance_id).unwrap().state.is_live());
}

#[tokio::test]
async fn a_finished_runner_whose_job_github_cannot_report_is_kept_until_the_sweep_can_ask() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 19).await;
    world.github.set_job_status("my-org/app", 19, "completed");
    world.github.fail_job_status(GithubError::Unavailable("502".into()));
    world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert!(
        world.fleet.instance(&instance_id).unwrap().state.is_live(),
        "kept: GitHub could not say"
    );
    assert!(world.queue.sent().is_empty(), "no spare launch while GitHub is out");
    world
        .commands
        .set_status(&command_id, CommandStatus::Ended("Success".into()));
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.command_ended, report.relaunched), (1, 0), "{report:?}");
    assert!(!world.fleet.instance(&instance_id).unwrap().state.is_live());
    assert!(world.stored().is_empty());
}

#[tokio::test]
async fn the_sweep_does_not_end_a_busy_runner_whose_handler_died_before_tagging_its_command() {
    let world = world();
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sophons:deployment".to_string(), "sophons".to_string());
    tags.insert("sophons:job-id".to_string(), "14".to_string());
    tags.insert("sophons:repository".to_string(), "my-org/app".to_string());
    world.fleet.insert(Instance {
        id: "i-untagged".into(),
        state: InstanceState::Running,
        instance_type: "c7i.large".into(),
        launched_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        spot_request_id: None,
        state_reason: None,
        tags,
    });
    // SendCommand went out and the runner took its job; the handler died before CreateTags.
    let scope = RunnerScope::Org("my-org".into());
    let jit = world
        .github
        .register_runner(&scope, "sophons-i-untagged", &["self-hosted".into()], 1)
        .await
        .unwrap();
    world.github.set_runner_status(jit.runner_id, "online", true);
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.never_started, 0, "{report:?}");
    assert_eq!(
        world.fleet.live_instances().len(),
        1,
        "the job it runs is not interrupted"
    );
    // Once the job is done the JIT runner is gone, and the instance is ended.
    world.github.runner_finished(jit.runner_id);
    assert_eq!(world.stop.sweep(far()).await.never_started, 1);
}

/// SQS that refuses the first send, then works.
struct FirstSendFails {
    inner: Arc<FakeQueue>,
    failed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl sophons_core::queue::Queue for FirstSendFails {
    async fn send(
        &self,
        queue_url: &str,
        body: &str,
        delivery_id: &str,
    ) -> Result<String, sophons_core::queue::QueueError> {
        if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(sophons_core::queue::QueueError::Refused {
                queue_url: queue_url.into(),
                reason: "InternalError".into(),
            });
        }
        self.inner.send(queue_url, body, delivery_id).await
    }
    async fn hide(&self, queue_url: &str, receipt: &str, seconds: u32) -> Result<(), sophons_core::queue::QueueError> {
        self.inner.hide(queue_url, receipt, seconds).await
    }
    async fn receive(
        &self,
        queue_url: &str,
        max: u32,
        wait: u32,
    ) -> Result<Vec<sophons_core::queue::Received>, sophons_core::queue::QueueError> {
        self.inner.receive(queue_url, max, wait).await
    }
    async fn delete(&self, queue_url: &str, receipt: &str) -> Result<(), sophons_core::queue::QueueError> {
        self.inner.delete(queue_url, receipt).await
    }
}

#[tokio::test]
async fn a_job_whose_relaunch_could_not_be_sent_is_not_lost() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 15).await;
    let stop = StopRunner::new(
        Arc::new(common::config(QUEUE)),
        sophons_core::ports::Ports {
            fleet: world.fleet.clone(),
            github: world.github.clone(),
            parameters: world.parameters.clone(),
            slots: world.slots.clone(),
            commands: world.commands.clone(),
            queue: Arc::new(FirstSendFails {
                inner: world.queue.clone(),
                failed: Default::default(),
            }),
            waiting: None,
            interruptions: None,
        },
    );
    stop.command_ended(&instance_id, &command_id, "Failed").await;
    assert!(
        world.fleet.instance(&instance_id).unwrap().state.is_live(),
        "with the job not sent back, the instance stays for the sweep to retry"
    );
    world
        .commands
        .set_status(&command_id, CommandStatus::Ended("Failed".into()));
    let report = stop.sweep(far()).await;
    assert_eq!(report.relaunched, 1, "{report:?}");
    assert_eq!(world.queue.sent().len(), 1);
    assert!(world.fleet.live_instances().is_empty());
}

/// GitHub whose runner list fails: everything else as the fake does.
struct RunnerListFails(Arc<FakeGithub>);

#[async_trait::async_trait]
impl Github for RunnerListFails {
    async fn job_status(&self, repository: &str, job_id: u64) -> Result<sophons_core::github::JobStatus, GithubError> {
        self.0.job_status(repository, job_id).await
    }
    async fn register_runner(
        &self,
        scope: &RunnerScope,
        name: &str,
        labels: &[String],
        group: u64,
    ) -> Result<sophons_core::github::JitConfig, GithubError> {
        self.0.register_runner(scope, name, labels, group).await
    }
    async fn runners(&self, _scope: &RunnerScope) -> Result<Vec<sophons_core::github::Runner>, GithubError> {
        Err(GithubError::Unavailable("502 Bad Gateway".into()))
    }
    async fn remove_runner(&self, scope: &RunnerScope, runner_id: u64) -> Result<(), GithubError> {
        self.0.remove_runner(scope, runner_id).await
    }
    async fn runner_downloads(
        &self,
        scope: &RunnerScope,
    ) -> Result<Vec<sophons_core::github::RunnerDownload>, GithubError> {
        self.0.runner_downloads(scope).await
    }
}

#[tokio::test]
async fn the_sweep_does_not_end_an_untagged_instance_while_github_cannot_list_its_runners() {
    let world = world();
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sophons:deployment".to_string(), "sophons".to_string());
    tags.insert("sophons:job-id".to_string(), "16".to_string());
    world.fleet.insert(Instance {
        id: "i-untagged".into(),
        state: InstanceState::Running,
        instance_type: "c7i.large".into(),
        launched_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        spot_request_id: None,
        state_reason: None,
        tags,
    });
    let stop = StopRunner::new(
        Arc::new(common::config(QUEUE)),
        sophons_core::ports::Ports {
            fleet: world.fleet.clone(),
            github: Arc::new(RunnerListFails(world.github.clone())),
            parameters: world.parameters.clone(),
            slots: world.slots.clone(),
            commands: world.commands.clone(),
            queue: world.queue.clone(),
            waiting: None,
            interruptions: None,
        },
    );
    let report = stop.sweep(far()).await;
    assert_eq!(report.never_started, 0, "its runner may be busy: {report:?}");
    assert_eq!(world.fleet.live_instances().len(), 1);
}

#[tokio::test]
async fn a_spot_reclaim_during_boot_gets_the_job_a_new_runner_once() {
    let world = world();
    sophons_core::metrics::record();
    let (instance_id, command_id) = running_job(&world, 9040).await;
    world.fleet.reclaim(&instance_id);
    let stopped = world.stop.command_ended(&instance_id, &command_id, "Failed").await;
    assert_eq!(
        stopped,
        Stopped::Ended {
            instance_id: instance_id.clone(),
            relaunched: true
        }
    );
    let sent = world.queue.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let relaunch = JobMessage::decode(&sent[0].body).unwrap();
    assert_eq!((relaunch.job_id, relaunch.relaunches), (9040, 1));
    assert!(world.stored().is_empty(), "the JIT parameter is deleted");
    assert!(world.github.runners().is_empty(), "the runner is removed");
    // The same event again, and the sweep while EC2 still lists the ended instance: no second send.
    let again = world.stop.command_ended(&instance_id, &command_id, "Failed").await;
    assert!(matches!(again, Stopped::Ignored(_)), "{again:?}");
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.reclaimed, report.relaunched), (0, 0), "{report:?}");
    assert_eq!(world.queue.sent().len(), 1);
    // The job sent back gets a new instance.
    let Outcome::Served {
        instance_id: second, ..
    } = world.create.serve(&relaunch.encode(), 1, far()).await
    else {
        panic!("the relaunched job was not served");
    };
    assert_ne!(second, instance_id);
    // What CloudWatch counts of it: one reclaim, once, and one relaunch served.
    let data = metrics_of_job(9040);
    let named = |name: &str| data.iter().filter(|d| d.name == name).collect::<Vec<_>>();
    assert_eq!(named("SpotReclaims").len(), 1, "{data:?}");
    assert_eq!(
        named("SpotReclaims")[0].dimensions[1],
        ("template".into(), "template_cpu".into())
    );
    assert_eq!(named("Relaunches").len(), 1, "{data:?}");
    // Each launch is read twice: by template and capacity, and by deployment alone.
    assert_eq!(
        named("Launches").iter().filter(|d| d.dimensions.len() == 3).count(),
        2,
        "the first launch and the relaunch: {data:?}"
    );
    assert_eq!(
        named("Launches").iter().filter(|d| d.dimensions.len() == 1).count(),
        2,
        "both also by deployment alone: {data:?}"
    );
}

#[tokio::test]
async fn the_sweep_sends_back_the_job_of_a_reclaimed_instance_whose_event_was_lost() {
    let world = world();
    let (instance_id, _) = running_job(&world, 41).await;
    world.fleet.reclaim(&instance_id);
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.reclaimed, report.relaunched), (1, 1), "{report:?}");
    assert_eq!(JobMessage::decode(&world.queue.sent()[0].body).unwrap().job_id, 41);
    assert!(world.stored().is_empty());
    assert!(world.github.runners().is_empty());
    let report = world.stop.sweep(far()).await;
    assert_eq!(
        (report.reclaimed, report.relaunched),
        (0, 0),
        "the next sweep leaves it: {report:?}"
    );
    assert_eq!(world.queue.sent().len(), 1);
}

#[tokio::test]
async fn a_reclaimed_instance_whose_job_already_ran_sends_nothing_back() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 42).await;
    world.github.set_job_status("my-org/app", 42, "completed");
    world.fleet.reclaim(&instance_id);
    let stopped = world.stop.command_ended(&instance_id, &command_id, "Failed").await;
    assert!(
        matches!(stopped, Stopped::Ended { relaunched: false, .. }),
        "{stopped:?}"
    );
    assert!(world.queue.sent().is_empty());
    assert_eq!(world.stop.sweep(far()).await.reclaimed, 0, "marked as looked after");
}

#[tokio::test]
async fn an_instance_we_ended_ourselves_is_never_taken_for_a_reclaim() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 43).await;
    world.github.set_job_status("my-org/app", 43, "completed");
    world.stop.command_ended(&instance_id, &command_id, "Success").await;
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.reclaimed, report.relaunched), (0, 0), "{report:?}");
    assert!(world.queue.sent().is_empty());
}

#[tokio::test]
async fn an_ended_instance_frees_its_launch_slot() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 44).await;
    assert_eq!(
        world.stored(),
        vec![
            format!("/sophons/jit/{instance_id}"),
            "/sophons/slots/template_cpu/4".to_string()
        ]
    );
    world.github.set_job_status("my-org/app", 44, "completed");
    world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert!(world.stored().is_empty(), "{:?}", world.stored());
}

#[tokio::test]
async fn an_ended_instance_leaves_a_slot_another_job_has_claimed_since() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 45).await;
    world.slots.remove("template_cpu", 5);
    let claim = SlotClaim {
        job_id: 99,
        relaunches: 0,
        at: SystemTime::now(),
    };
    world.slots.put("template_cpu", 5, claim);
    world.github.set_job_status("my-org/app", 45, "completed");
    world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert_eq!(world.slots.get("template_cpu", 5).await, Ok(Some(claim.stored())));
}

#[tokio::test]
async fn an_ended_instance_leaves_its_slot_to_its_jobs_relaunch_that_claimed_it_since() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 46).await;
    world.slots.remove("template_cpu", 6);
    // A repeated event after the job's relaunch claimed the same slot again.
    let claim = SlotClaim {
        job_id: 46,
        relaunches: 0,
        at: SystemTime::now() + Duration::from_secs(120),
    };
    world.slots.put("template_cpu", 6, claim);
    world.github.set_job_status("my-org/app", 46, "completed");
    world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert_eq!(world.slots.get("template_cpu", 6).await, Ok(Some(claim.stored())));
}

#[tokio::test]
async fn an_ended_instance_leaves_its_slot_to_its_jobs_relaunch_that_claimed_it_within_seconds_of_its_launch() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 47).await;
    world.slots.remove("template_cpu", 7);
    // The relaunch's claim is told by its relaunch count, whatever the clocks say (an instance
    // ended seconds after its launch, EC2's launch time and the Lambda's clock apart).
    let launched = world.fleet.instance(&instance_id).unwrap().launched_at.unwrap();
    let claim = SlotClaim {
        job_id: 47,
        relaunches: 1,
        at: launched,
    };
    world.slots.put("template_cpu", 7, claim);
    world.github.set_job_status("my-org/app", 47, "completed");
    world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert_eq!(world.slots.get("template_cpu", 7).await, Ok(Some(claim.stored())));
}

#[tokio::test]
async fn the_sweep_frees_a_stale_launch_slot_and_keeps_a_fresh_one() {
    let world = world();
    let long_ago = SystemTime::now() - sophons_core::stop::SLOT_CLAIM_GRACE - Duration::from_secs(60);
    for (slot, job_id, at) in [(7, 1, long_ago), (8, 2, SystemTime::now())] {
        world.slots.put(
            "template_cpu",
            slot,
            SlotClaim {
                job_id,
                relaunches: 0,
                at,
            },
        );
    }
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.slots_freed, 1, "{report:?}");
    assert_eq!(world.stored(), vec!["/sophons/slots/template_cpu/8".to_string()]);
}

/// Serves a job sent back `relaunches` times, `runner_failures` of them for a failed runner.
async fn running_relaunch(world: &World, job_id: u64, relaunches: u32, runner_failures: u32) -> (String, String) {
    let mut job = message(job_id, relaunches);
    job.runner_failures = runner_failures;
    match world.create.serve(&job.encode(), 1, far()).await {
        Outcome::Served {
            instance_id,
            command_id,
            ..
        } => (instance_id, command_id),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_runner_github_gave_another_job_does_not_use_up_its_jobs_relaunch_budget() {
    let world = world();
    // Sent back twice already (max_job_relaunches is 2), never for a failed runner.
    let (instance_id, command_id) = running_relaunch(&world, 30, 2, 0).await;
    let stopped = world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert_eq!(
        stopped,
        Stopped::Ended {
            instance_id,
            relaunched: true
        }
    );
    let message = JobMessage::decode(&world.queue.sent()[0].body).unwrap();
    assert_eq!(
        (message.relaunches, message.runner_failures),
        (3, 0),
        "a runner that ran another job is no failure"
    );
}

#[tokio::test]
async fn a_runner_that_died_before_any_job_counts_against_the_relaunch_budget() {
    let world = world();
    let (first, command) = running_relaunch(&world, 31, 3, 1).await;
    world.stop.command_ended(&first, &command, "Failed").await;
    let message = JobMessage::decode(&world.queue.sent()[0].body).unwrap();
    assert_eq!((message.relaunches, message.runner_failures), (4, 2));
    // The third failed runner is one too many.
    let (second, command) = running_relaunch(&world, 32, 4, 2).await;
    let stopped = world.stop.command_ended(&second, &command, "Failed").await;
    assert_eq!(
        stopped,
        Stopped::Ended {
            instance_id: second,
            relaunched: false
        }
    );
    assert_eq!(world.queue.sent().len(), 1);
}

#[tokio::test]
async fn a_runner_idle_while_github_keeps_its_own_job_queued_is_ended_without_a_relaunch() {
    let world = world();
    let (instance_id, _) = running_job(&world, 33).await;
    let runner_id: u64 = runner_id_of(&world, &instance_id);
    // Online, idle, and GitHub still has its job queued half an hour on: it will never route it here.
    world
        .fleet
        .set_launched_at(&instance_id, SystemTime::now() - Duration::from_secs(1800));
    world.github.set_runner_status(runner_id, "online", false);
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.unroutable, report.idle, report.relaunched), (1, 0, 0));
    assert!(world.fleet.live_instances().is_empty());
    assert!(
        world.queue.sent().is_empty(),
        "no runner launched for a job GitHub does not route to us"
    );
    assert!(world.github.runners().is_empty());
}

#[tokio::test]
async fn a_runner_idle_for_less_than_the_idle_limit_is_left_to_take_its_job() {
    let world = world();
    let (instance_id, _) = running_job(&world, 34).await;
    let runner_id: u64 = runner_id_of(&world, &instance_id);
    world.github.set_runner_status(runner_id, "online", false);
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.unroutable, 0);
    assert_eq!(world.fleet.live_instances().len(), 1);
}

#[tokio::test]
async fn deleting_a_runner_github_still_reports_busy_leaves_it_for_the_sweep() {
    let world = world();
    let (instance_id, command_id) = running_job(&world, 35).await;
    let runner_id: u64 = runner_id_of(&world, &instance_id);
    // GitHub still shows the runner busy right after its command ended: DELETE answers 422.
    world.github.set_runner_status(runner_id, "online", true);
    world.github.set_job_status("my-org/app", 35, "completed");
    world.stop.command_ended(&instance_id, &command_id, "Success").await;
    assert!(!world.fleet.instance(&instance_id).unwrap().state.is_live());
    assert_eq!(world.github.runners().len(), 1, "422: the runner is still there");
    // GitHub then sees it offline; the sweep removes the ghost.
    world.github.set_runner_status(runner_id, "offline", false);
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.runners_removed, 1);
    assert!(world.github.runners().is_empty());
}

#[tokio::test]
async fn the_sweep_keeps_the_parameter_and_runner_of_a_launch_ec2_does_not_list_yet() {
    let world = world();
    // EC2 lists the new instance late; the sweep runs in between.
    world.fleet.set_lag(Lag {
        new: 1,
        ..Lag::default()
    });
    let (instance_id, _) = running_job(&world, 36).await;
    let report = world.stop.sweep(far()).await;
    assert_eq!((report.parameters_deleted, report.runners_removed), (0, 0));
    assert!(
        world
            .stored()
            .contains(&sophons_core::names::jit_parameter("sophons", &instance_id)),
        "the runner still needs its JIT config"
    );
    assert_eq!(world.github.runners().len(), 1);
}
