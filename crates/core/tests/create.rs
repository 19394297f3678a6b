//! create-runner's flow over the fakes: every step and branch, named by behaviour.

mod common;

use common::metrics_of_job;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use serde_json::json;
use sophons_core::commands::CommandError;
use sophons_core::config::Config;
use sophons_core::create::{Backoff, CreateRunner, HandBack, Outcome};
use sophons_core::fakes::{FakeCommands, FakeFleet, FakeGithub, FakeParameters, FakeQueue, Lag};
use sophons_core::fleet::{Capacity, Fleet, FleetError, Instance, InstanceState};
use sophons_core::github::{GithubError, RunnerScope};
use sophons_core::job::JobMessage;
use sophons_core::parameters::Parameters;
use sophons_core::ports::Ports;
use sophons_core::queue::Queue;
use sophons_core::slots::{FakeSlots, SlotClaim, Slots};
use tokio::time::Instant;

struct World {
    fleet: Arc<FakeFleet>,
    github: Arc<FakeGithub>,
    parameters: Arc<FakeParameters>,
    slots: Arc<FakeSlots>,
    commands: Arc<FakeCommands>,
    queue: Arc<FakeQueue>,
    create: Arc<CreateRunner>,
}

impl World {
    fn stored(&self) -> Vec<String> {
        common::stored(&self.parameters, &self.slots)
    }
}

fn world_with(edit: impl FnOnce(&mut serde_json::Value)) -> World {
    let mut document = common::config_json("https://sqs.us-east-1.amazonaws.com/123456789012/jobs");
    edit(&mut document);
    let config = Arc::new(Config::parse(&document.to_string()).unwrap());
    let fakes = common::Fakes::new();
    // Short backoff: these tests run in real time.
    let backoff = Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    World {
        create: Arc::new(CreateRunner::new(config, fakes.ports()).with_backoff(backoff)),
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

fn message(job_id: u64, template: &str) -> JobMessage {
    JobMessage {
        delivery_id: format!("delivery-{job_id}"),
        job_url: "https://github.com/my-org/app/actions/runs/7/job/1".into(),
        created_at: "2026-11-28T06:00:00Z".into(),
        received_at: "2026-11-28T06:00:01.000Z".into(),
        ..common::job_message(job_id, template)
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(900)
}

async fn serve(world: &World, message: &JobMessage) -> Outcome {
    world.create.serve(&message.encode(), 1, far()).await
}

fn served_instance(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Served { instance_id, .. } => instance_id.clone(),
        other => panic!("expected a served job, got {other:?}"),
    }
}

#[tokio::test]
async fn a_queued_job_gets_one_tagged_spot_instance_a_registered_runner_and_a_started_command() {
    let world = world();
    let outcome = serve(&world, &message(42, "template_cpu")).await;
    let instance_id = served_instance(&outcome);

    let launches = world.fleet.launches();
    assert_eq!(launches.len(), 1);
    let launch = &launches[0];
    assert_eq!(launch.capacity, Capacity::Spot);
    assert_eq!(launch.launch_template, "sophons-template_cpu");
    assert_eq!(launch.instance_types, vec!["c7i.large", "m7i.large"]);
    assert_eq!(launch.subnet_ids, vec!["subnet-0abc"]);
    assert!(!launch.client_token.is_empty() && launch.client_token.len() <= 64);
    let tags: std::collections::BTreeMap<_, _> = launch.tags.iter().cloned().collect();
    assert_eq!(tags["sophons:deployment"], "sophons");
    assert_eq!(tags["sophons:template"], "template_cpu");
    assert_eq!(tags["sophons:job-id"], "42");
    assert_eq!(tags["sophons:repository"], "my-org/app");
    assert_eq!(tags["sophons:run-id"], "7");

    let runners = world.github.runners();
    assert_eq!(runners.len(), 1);
    assert_eq!(runners[0].runner.name, format!("sophons-{instance_id}"));
    assert_eq!(runners[0].scope, RunnerScope::Org("my-org".into()));
    assert_eq!(runners[0].labels, vec!["self-hosted", "template_cpu", "linux", "x64"]);
    assert_eq!(runners[0].group_id, 1);

    let parameter = format!("/sophons/jit/{instance_id}");
    let stored = world.parameters.get(&parameter).await.unwrap();
    assert!(
        stored.starts_with(&format!("jit-secret-{}-", runners[0].runner.id)),
        "the runner's own JIT config"
    );

    let sent = world.commands.sent();
    assert_eq!(sent.len(), 1);
    let (request, command_id) = &sent[0];
    assert_eq!(request.instance_id, instance_id);
    assert_eq!(request.execution_timeout_seconds, 21_600);
    assert_eq!(request.log_group, "/sophons/runners");
    let script = request.commands.join("\n");
    assert!(
        script.contains(&format!("'{parameter}'")),
        "the command names the parameter: {script}"
    );
    assert!(
        !script.contains("jit-secret"),
        "the command never carries the JIT config"
    );
    assert!(script.contains("'s3://sophons-scripts/runner.sh'"));

    let instance = world.fleet.instance(&instance_id).unwrap();
    assert_eq!(instance.tag("sophons:command-id"), Some(command_id.as_str()));
    assert_eq!(
        instance.tag("sophons:runner-id"),
        Some(runners[0].runner.id.to_string().as_str())
    );
}

#[tokio::test]
async fn repo_scope_registers_the_runner_with_the_jobs_repository() {
    let world = world_with(|c| c["github"]["scope"] = json!("repo"));
    served_instance(&serve(&world, &message(1, "template_cpu")).await);
    assert_eq!(world.github.runners()[0].scope, RunnerScope::Repo("my-org/app".into()));
}

#[tokio::test]
async fn an_unknown_message_version_is_acknowledged_without_a_launch() {
    let world = world();
    let body = message(1, "template_cpu")
        .encode()
        .replace("\"version\":1", "\"version\":99");
    let outcome = world.create.serve(&body, 1, far()).await;
    assert!(
        matches!(&outcome, Outcome::Acknowledged(reason) if reason.contains("99")),
        "{outcome:?}"
    );
    for garbage in ["", "not json", "{}", "{\"version\":1}", "[]"] {
        assert!(
            matches!(world.create.serve(garbage, 1, far()).await, Outcome::Acknowledged(_)),
            "{garbage:?}"
        );
    }
    assert!(world.fleet.launches().is_empty());
}

#[tokio::test]
async fn an_unknown_template_is_acknowledged_without_a_launch() {
    let world = world();
    let outcome = serve(&world, &message(1, "template_removed")).await;
    assert!(
        matches!(&outcome, Outcome::Acknowledged(reason) if reason.contains("template_removed")),
        "{outcome:?}"
    );
    assert!(world.fleet.launches().is_empty());
}

#[tokio::test]
async fn a_redelivered_job_does_not_get_a_second_instance() {
    let world = world();
    let job = message(5, "template_cpu");
    served_instance(&serve(&world, &job).await);
    // The same delivery again (a redelivered webhook), a retried message, a redriven one.
    for receive_count in [1, 2, 3] {
        let outcome = world.create.serve(&job.encode(), receive_count, far()).await;
        assert!(
            matches!(&outcome, Outcome::Acknowledged(r) if r.contains("already has instance")),
            "{outcome:?}"
        );
    }
    assert_eq!(world.fleet.all_instances().len(), 1);
    assert_eq!(world.commands.sent().len(), 1);
}

#[tokio::test]
async fn two_handlers_racing_on_one_delivery_get_one_instance_and_one_runner() {
    let world = world();
    let job = message(6, "template_cpu");
    let (a, b) = tokio::join!(serve(&world, &job), serve(&world, &job));
    let served = [&a, &b].iter().filter(|o| matches!(o, Outcome::Served { .. })).count();
    assert_eq!(served, 1, "{a:?} / {b:?}");
    assert_eq!(world.fleet.all_instances().len(), 1);
    assert_eq!(world.github.runners().len(), 1);
    assert!(
        world.fleet.terminated().is_empty(),
        "the loser must not end the winner's instance"
    );
}

#[tokio::test]
async fn an_instance_whose_handler_died_before_starting_it_is_ended_with_its_spot_request_and_replaced() {
    let world = world();
    let job = message(8, "template_cpu");
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sophons:deployment".to_string(), "sophons".to_string());
    tags.insert("sophons:template".to_string(), "template_cpu".to_string());
    tags.insert("sophons:job-id".to_string(), "8".to_string());
    world.fleet.insert(Instance {
        id: "i-abandoned".into(),
        state: InstanceState::Running,
        instance_type: "c7i.large".into(),
        launched_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        spot_request_id: Some("sir-abandoned".into()),
        state_reason: None,
        tags,
    });
    let instance_id = served_instance(&serve(&world, &job).await);
    assert_ne!(instance_id, "i-abandoned");
    assert_eq!(world.fleet.terminated(), vec!["i-abandoned"]);
    // Ended the way stop-runner ends an instance: its spot request goes too.
    assert_eq!(world.fleet.cancelled_spot_requests(), vec!["sir-abandoned"]);
    assert_eq!(
        world.fleet.live_instances().len(),
        1,
        "never two instances for one job at once"
    );
}

#[tokio::test]
async fn a_job_no_longer_queued_on_github_is_acknowledged_without_a_launch() {
    let world = world();
    world.github.set_job_status("my-org/app", 9, "completed");
    let outcome = serve(&world, &message(9, "template_cpu")).await;
    assert_eq!(
        outcome,
        Outcome::Acknowledged("job 9 is completed; no runner launched".into())
    );
    world.github.set_job_status("my-org/app", 10, "in_progress");
    assert!(matches!(
        serve(&world, &message(10, "template_cpu")).await,
        Outcome::Acknowledged(_)
    ));
    world.github.set_default_status(None);
    let outcome = serve(&world, &message(11, "template_cpu")).await;
    assert!(
        matches!(&outcome, Outcome::Acknowledged(r) if r.contains("GitHub has no job 11")),
        "{outcome:?}"
    );
    assert!(world.fleet.launches().is_empty());
}

#[tokio::test]
async fn an_unreachable_github_does_not_stop_the_launch() {
    let world = world();
    world
        .github
        .fail_job_status(GithubError::Unavailable("502 Bad Gateway".into()));
    served_instance(&serve(&world, &message(12, "template_cpu")).await);
    world
        .github
        .fail_job_status(GithubError::RateLimited("403 rate limit".into()));
    served_instance(&serve(&world, &message(13, "template_cpu")).await);
}

#[tokio::test]
async fn a_full_template_hands_the_job_back_for_the_retry_delay() {
    let world = world();
    // template_gpu allows 2 runners.
    sophons_core::metrics::record();
    served_instance(&serve(&world, &message(9020, "template_gpu")).await);
    served_instance(&serve(&world, &message(9021, "template_gpu")).await);
    let outcome = serve(&world, &message(9022, "template_gpu")).await;
    assert!(
        matches!(&outcome, Outcome::HandedBack { delay_seconds: 900, reason, kind: HandBack::Full } if reason.contains("max_runners")),
        "{outcome:?}"
    );
    // What CloudWatch counts of it: a hand-back for a full template; the two before it, launches.
    let handed_back = metrics_of_job(9022);
    assert_eq!(handed_back.len(), 1, "{handed_back:?}");
    assert_eq!(
        (handed_back[0].name.as_str(), handed_back[0].unit.as_str()),
        ("HandBacks", "Count")
    );
    assert_eq!(
        handed_back[0].dimensions[1..],
        [
            ("template".into(), "template_gpu".into()),
            ("reason".into(), "full".into())
        ]
    );
    let served = metrics_of_job(9021);
    assert!(
        served
            .iter()
            .any(|d| d.name == "Launches" && d.dimensions.get(2) == Some(&("capacity".into(), "spot".into()))),
        "{served:?}"
    );
    assert!(
        served
            .iter()
            .any(|d| d.name == "CommandSentAfter" && d.unit == "Seconds"),
        "{served:?}"
    );
    assert_eq!(world.fleet.launches().len(), 2);
    // Another template is not held back by it.
    served_instance(&serve(&world, &message(23, "template_cpu")).await);
}

#[tokio::test]
async fn the_retry_delay_is_configurable() {
    let world = world_with(|c| c["retry_delay_seconds"] = json!(120));
    world
        .fleet
        .fail_launches([FleetError::NoCapacity("InsufficientInstanceCapacity".into())]);
    let outcome = serve(&world, &message(24, "template_gpu")).await;
    assert!(
        matches!(outcome, Outcome::HandedBack { delay_seconds: 120, .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn no_spot_capacity_falls_back_to_on_demand_when_the_template_allows() {
    let world = world();
    world.fleet.fail_launches([FleetError::NoCapacity(
        "InsufficientInstanceCapacity in every pool".into(),
    )]);
    let outcome = serve(&world, &message(30, "template_cpu")).await;
    assert!(
        matches!(
            outcome,
            Outcome::Served {
                capacity: Capacity::OnDemand,
                ..
            }
        ),
        "{outcome:?}"
    );
    let launches = world.fleet.launches();
    assert_eq!(
        launches.iter().map(|l| l.capacity).collect::<Vec<_>>(),
        vec![Capacity::Spot, Capacity::OnDemand]
    );
    assert_ne!(launches[0].client_token, launches[1].client_token);
}

#[tokio::test]
async fn no_capacity_without_fallback_hands_the_job_back() {
    let world = world();
    world
        .fleet
        .fail_launches([FleetError::NoCapacity("MaxSpotInstanceCountExceeded".into())]);
    let outcome = serve(&world, &message(31, "template_gpu")).await;
    assert!(
        matches!(outcome, Outcome::HandedBack { delay_seconds: 900, .. }),
        "{outcome:?}"
    );
    assert!(world.fleet.all_instances().is_empty());
    assert!(world.github.runners().is_empty());
}

#[tokio::test]
async fn a_refused_launch_hands_the_job_back_and_registers_nothing() {
    let world = world();
    world.fleet.fail_launches([FleetError::Rejected(
        "InvalidLaunchTemplateName.NotFoundException".into(),
    )]);
    let outcome = serve(&world, &message(32, "template_cpu")).await;
    assert!(matches!(&outcome, Outcome::HandedBack { reason, .. } if reason.contains("InvalidLaunchTemplate")));
    assert!(world.github.runners().is_empty());
}

#[tokio::test]
async fn a_retry_after_a_failure_uses_a_new_client_token() {
    let world = world();
    world
        .fleet
        .fail_launches([FleetError::NoCapacity("InsufficientInstanceCapacity".into())]);
    let job = message(33, "template_gpu");
    world.create.serve(&job.encode(), 1, far()).await;
    served_instance(&world.create.serve(&job.encode(), 2, far()).await);
    let tokens: Vec<_> = world.fleet.launches().into_iter().map(|l| l.client_token).collect();
    assert_eq!(tokens.len(), 2);
    assert_ne!(tokens[0], tokens[1]);
}

#[tokio::test]
async fn send_command_is_retried_while_the_ssm_agent_registers() {
    let world = world();
    world.commands.not_ready_for(4);
    served_instance(&serve(&world, &message(40, "template_cpu")).await);
    assert_eq!(world.commands.sent().len(), 1);
}

#[tokio::test]
async fn an_agent_that_never_registers_is_cleaned_up_and_the_job_handed_back() {
    let world = world_with(|c| c["command"] = json!({"start_deadline_seconds": 1}));
    world.commands.not_ready_for(usize::MAX);
    let started = Instant::now();
    let outcome = serve(&world, &message(41, "template_cpu")).await;
    assert!(
        matches!(&outcome, Outcome::HandedBack { reason, .. } if reason.contains("not registered")),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "gives up by the start deadline"
    );
    assert_nothing_left(&world).await;
}

#[tokio::test]
async fn the_lambda_deadline_bounds_the_send_command_retries() {
    let world = world();
    world.commands.not_ready_for(usize::MAX);
    // create-runner keeps 20 s back from the Lambda deadline for cleaning up and answering.
    let deadline = Instant::now() + Duration::from_secs(21);
    let outcome = world
        .create
        .serve(&message(42, "template_cpu").encode(), 1, deadline)
        .await;
    assert!(matches!(outcome, Outcome::HandedBack { .. }));
    assert!(Instant::now() < deadline, "answered before the Lambda deadline");
    assert_nothing_left(&world).await;
}

#[tokio::test]
async fn a_failed_registration_ends_the_instance_before_handing_back() {
    let world = world();
    world.github.fail_register(GithubError::Unavailable("500".into()));
    let outcome = serve(&world, &message(50, "template_cpu")).await;
    assert!(
        matches!(outcome, Outcome::HandedBack { delay_seconds: 60, .. }),
        "{outcome:?}"
    );
    assert_nothing_left(&world).await;
}

#[tokio::test]
async fn a_failed_send_command_ends_the_instance_deletes_the_parameter_and_removes_the_runner() {
    let world = world();
    world
        .commands
        .fail_next(CommandError::Failed("AccessDeniedException".into()));
    let outcome = serve(&world, &message(51, "template_cpu")).await;
    assert!(matches!(outcome, Outcome::HandedBack { .. }), "{outcome:?}");
    assert_eq!(world.github.removed().len(), 1);
    assert_nothing_left(&world).await;
}

async fn assert_nothing_left(world: &World) {
    assert!(
        world.fleet.live_instances().is_empty(),
        "{:?}",
        world.fleet.live_instances()
    );
    assert!(world.stored().is_empty(), "{:?}", world.stored());
    assert!(world.github.runners().is_empty(), "{:?}", world.github.runners());
}

fn record(id: &str, body: &str, receive_count: u32) -> SqsMessage {
    let mut record = SqsMessage::default();
    record.message_id = Some(id.into());
    record.receipt_handle = Some(format!("receipt-{id}"));
    record.body = Some(body.into());
    record
        .attributes
        .insert("ApproximateReceiveCount".into(), receive_count.to_string());
    record
}

#[tokio::test]
async fn one_bad_record_never_fails_its_batch_mates() {
    let world = world();
    // template_gpu allows 2: the third gpu job is handed back.
    let mut event = SqsEvent::default();
    event.records = vec![
        record("a", &message(60, "template_cpu").encode(), 1),
        record("b", "garbage", 1),
        record("c", &message(61, "template_gpu").encode(), 1),
        record("d", &message(62, "template_gpu").encode(), 1),
        record("e", &message(63, "template_gpu").encode(), 1),
        record("f", &message(64, "template_unknown").encode(), 1),
    ];
    let response = world.create.handle_batch(event, far()).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "only the job that found its template full is retried: {failed:?}"
    );
    assert_eq!(world.fleet.live_instances().len(), 3);
    assert_eq!(world.queue.hidden(), vec![(format!("receipt-{}", failed[0]), 900)]);
    assert!(world.fleet.peak_live("template_gpu") <= 2);
}

#[tokio::test]
async fn a_job_moved_back_from_the_dlq_does_not_get_the_ended_instance_of_its_first_receive() {
    let world = world();
    let job = message(21, "template_cpu");
    world
        .commands
        .fail_next(CommandError::Failed("ThrottlingException".into()));
    let first = serve(&world, &job).await;
    assert!(matches!(first, Outcome::HandedBack { .. }), "{first:?}");
    let ended = world.fleet.terminated();
    assert_eq!(ended.len(), 1, "the failed start cleaned up its instance");
    // move-jobs sends the same body back; SQS counts its receives from 1 again.
    let instance_id = served_instance(&serve(&world, &job).await);
    assert_ne!(
        instance_id, ended[0],
        "the ClientToken of receive 1 answers the ended instance"
    );
    assert_eq!(
        world.fleet.instance(&instance_id).unwrap().state,
        InstanceState::Pending
    );
}

#[tokio::test]
async fn a_job_whose_launch_answer_was_lost_is_not_acknowledged_for_an_instance_never_started() {
    let world = world();
    let job = message(22, "template_cpu");
    // CreateFleet launched, but its answer was lost: the instance is there, never started.
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sophons:deployment".to_string(), "sophons".to_string());
    tags.insert("sophons:template".to_string(), "template_cpu".to_string());
    tags.insert("sophons:job-id".to_string(), "22".to_string());
    world.fleet.insert(Instance {
        id: "i-unstarted".into(),
        state: InstanceState::Pending,
        instance_type: "c7i.large".into(),
        launched_at: Some(SystemTime::now()),
        spot_request_id: None,
        state_reason: None,
        tags,
    });
    let outcome = world.create.serve(&job.encode(), 2, far()).await;
    assert!(
        matches!(outcome, Outcome::HandedBack { delay_seconds: 900, .. }),
        "the message must outlive the unstarted instance: {outcome:?}"
    );
    assert_eq!(world.fleet.all_instances().len(), 1, "no second instance meanwhile");
}

/// EC2 that will not terminate: everything else as the fake does.
struct NoTerminate(Arc<FakeFleet>);

#[async_trait::async_trait]
impl sophons_core::fleet::Fleet for NoTerminate {
    async fn launch(
        &self,
        request: &sophons_core::fleet::LaunchRequest,
    ) -> Result<sophons_core::fleet::Launched, FleetError> {
        self.0.launch(request).await
    }
    async fn instances(
        &self,
        deployment: &str,
        query: &sophons_core::fleet::InstanceQuery,
    ) -> Result<Vec<Instance>, FleetError> {
        self.0.instances(deployment, query).await
    }
    async fn tag(&self, instance_id: &str, tags: &[(String, String)]) -> Result<(), FleetError> {
        self.0.tag(instance_id, tags).await
    }
    async fn terminate(&self, _instance_id: &str) -> Result<(), FleetError> {
        Err(FleetError::Unavailable("RequestLimitExceeded".into()))
    }
    async fn cancel_spot_request(&self, request_id: &str) -> Result<(), FleetError> {
        self.0.cancel_spot_request(request_id).await
    }
}

#[tokio::test]
async fn an_abandoned_instance_that_cannot_be_terminated_is_not_replaced_by_a_second_live_one() {
    let fleet = Arc::new(FakeFleet::default());
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sophons:deployment".to_string(), "sophons".to_string());
    tags.insert("sophons:template".to_string(), "template_cpu".to_string());
    tags.insert("sophons:job-id".to_string(), "23".to_string());
    fleet.insert(Instance {
        id: "i-abandoned".into(),
        state: InstanceState::Running,
        instance_type: "c7i.large".into(),
        launched_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        spot_request_id: None,
        state_reason: None,
        tags,
    });
    let config = Arc::new(Config::parse(&common::config_json("https://sqs.example/jobs").to_string()).unwrap());
    let ports = Ports {
        fleet: Arc::new(NoTerminate(fleet.clone())),
        github: Arc::new(FakeGithub::new()),
        parameters: Arc::new(FakeParameters::default()),
        slots: Arc::new(FakeSlots::default()),
        commands: Arc::new(FakeCommands::default()),
        queue: Arc::new(FakeQueue::default()),
        waiting: None,
        interruptions: None,
    };
    let create = CreateRunner::new(config, ports);
    let outcome = create.serve(&message(23, "template_cpu").encode(), 2, far()).await;
    assert!(matches!(outcome, Outcome::HandedBack { .. }), "{outcome:?}");
    assert_eq!(fleet.live_instances().len(), 1, "never two live instances for one job");
}

#[tokio::test]
async fn a_busy_runner_whose_handler_died_before_tagging_its_command_is_not_replaced() {
    let world = world();
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("sophons:deployment".to_string(), "sophons".to_string());
    tags.insert("sophons:template".to_string(), "template_cpu".to_string());
    tags.insert("sophons:job-id".to_string(), "24".to_string());
    world.fleet.insert(Instance {
        id: "i-untagged".into(),
        state: InstanceState::Running,
        instance_type: "c7i.large".into(),
        launched_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        spot_request_id: None,
        state_reason: None,
        tags,
    });
    let scope = RunnerScope::Org("my-org".into());
    let jit = sophons_core::github::Github::register_runner(
        world.github.as_ref(),
        &scope,
        "sophons-i-untagged",
        &["self-hosted".into()],
        1,
    )
    .await
    .unwrap();
    world.github.set_runner_status(jit.runner_id, "online", true);
    let outcome = world
        .create
        .serve(&message(24, "template_cpu").encode(), 2, far())
        .await;
    assert!(matches!(outcome, Outcome::Acknowledged(_)), "{outcome:?}");
    assert!(
        world.fleet.terminated().is_empty(),
        "the job its runner runs is not interrupted"
    );
}

/// A fleet whose calls yield first, as real network calls do, so that the records of a batch
/// interleave between counting and launching.
struct YieldingFleet(Arc<FakeFleet>);

#[async_trait::async_trait]
impl sophons_core::fleet::Fleet for YieldingFleet {
    async fn launch(
        &self,
        request: &sophons_core::fleet::LaunchRequest,
    ) -> Result<sophons_core::fleet::Launched, FleetError> {
        tokio::task::yield_now().await;
        self.0.launch(request).await
    }
    async fn instances(
        &self,
        deployment: &str,
        query: &sophons_core::fleet::InstanceQuery,
    ) -> Result<Vec<Instance>, FleetError> {
        tokio::task::yield_now().await;
        self.0.instances(deployment, query).await
    }
    async fn tag(&self, instance_id: &str, tags: &[(String, String)]) -> Result<(), FleetError> {
        tokio::task::yield_now().await;
        self.0.tag(instance_id, tags).await
    }
    async fn terminate(&self, instance_id: &str) -> Result<(), FleetError> {
        self.0.terminate(instance_id).await
    }
    async fn cancel_spot_request(&self, request_id: &str) -> Result<(), FleetError> {
        self.0.cancel_spot_request(request_id).await
    }
}

fn yielding_world() -> World {
    let world = world();
    let config = Arc::new(
        Config::parse(&common::config_json("https://sqs.us-east-1.amazonaws.com/123456789012/jobs").to_string())
            .unwrap(),
    );
    let ports = Ports {
        fleet: Arc::new(YieldingFleet(world.fleet.clone())),
        github: world.github.clone(),
        parameters: world.parameters.clone(),
        slots: world.slots.clone(),
        commands: world.commands.clone(),
        queue: world.queue.clone(),
        waiting: None,
        interruptions: None,
    };
    World {
        create: Arc::new(CreateRunner::new(config, ports)),
        ..world
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_records_of_one_batch_never_launch_past_max_runners() {
    let world = yielding_world();
    let mut event = SqsEvent::default();
    // template_gpu allows 2.
    event.records = (0..6)
        .map(|n| record(&format!("g{n}"), &message(70 + n, "template_gpu").encode(), 1))
        .collect();
    let response = world.create.handle_batch(event, far()).await;
    assert_eq!(world.fleet.peak_live("template_gpu"), 2);
    assert_eq!(world.fleet.live_instances().len(), 2);
    assert_eq!(response.batch_item_failures.len(), 4, "the others wait for room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivery_in_the_same_batch_gets_no_second_instance() {
    let world = yielding_world();
    let job = message(80, "template_cpu").encode();
    let mut event = SqsEvent::default();
    // Two messages of one job (a redelivered webhook), received at different counts: different
    // ClientTokens, so only the batch itself can keep them from two instances.
    event.records = vec![record("a", &job, 1), record("b", &job, 2)];
    let response = world.create.handle_batch(event, far()).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(world.fleet.all_instances().len(), 1);
    assert_eq!(world.github.runners().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_invocations_never_launch_past_max_runners() {
    let world = yielding_world();
    // A second invocation: its own process, its own in-process gate, the same AWS and GitHub.
    let config = Arc::new(
        Config::parse(&common::config_json("https://sqs.us-east-1.amazonaws.com/123456789012/jobs").to_string())
            .unwrap(),
    );
    let other = Arc::new(CreateRunner::new(
        config,
        Ports {
            fleet: Arc::new(YieldingFleet(world.fleet.clone())),
            github: world.github.clone(),
            parameters: world.parameters.clone(),
            slots: world.slots.clone(),
            commands: world.commands.clone(),
            queue: world.queue.clone(),
            waiting: None,
            interruptions: None,
        },
    ));
    let batch = |first: u64| {
        let mut event = SqsEvent::default();
        event.records = (first..first + 4)
            .map(|n| record(&format!("g{n}"), &message(n, "template_gpu").encode(), 1))
            .collect();
        event
    };
    // template_gpu allows 2.
    let (a, b) = tokio::join!(
        world.create.handle_batch(batch(300), far()),
        other.handle_batch(batch(400), far())
    );
    assert_eq!(world.fleet.peak_live("template_gpu"), 2);
    assert_eq!(
        a.batch_item_failures.len() + b.batch_item_failures.len(),
        6,
        "the others wait for room"
    );
    let slots: Vec<String> = world.stored().into_iter().filter(|n| n.contains("/slots/")).collect();
    assert_eq!(
        slots.len(),
        2,
        "one slot per live instance, none left by the jobs handed back: {slots:?}"
    );
}

#[tokio::test]
async fn a_slot_claimed_by_a_launch_in_flight_elsewhere_counts_against_max_runners() {
    let world = world();
    // Another invocation has claimed both of template_gpu's slots and not launched yet.
    for slot in 0..2 {
        let claim = SlotClaim {
            job_id: 900 + u64::from(slot),
            relaunches: 0,
            at: SystemTime::now(),
        };
        assert_eq!(
            world.slots.claim("template_gpu", slot, &claim).await,
            Ok(sophons_core::slots::ClaimAnswer::Claimed)
        );
    }
    let outcome = serve(&world, &message(24, "template_gpu")).await;
    assert!(
        matches!(&outcome, Outcome::HandedBack { reason, .. } if reason.contains("max_runners")),
        "{outcome:?}"
    );
    assert!(world.fleet.launches().is_empty());
}

#[tokio::test]
async fn a_failed_launch_gives_its_slot_back() {
    let world = world();
    world.fleet.fail_launches([FleetError::Rejected(
        "InvalidLaunchTemplateName.NotFoundException".into(),
    )]);
    let outcome = serve(&world, &message(25, "template_gpu")).await;
    assert!(matches!(outcome, Outcome::HandedBack { .. }), "{outcome:?}");
    assert!(world.stored().is_empty(), "{:?}", world.stored());
}

#[tokio::test]
async fn a_relaunched_job_is_never_acknowledged_against_the_instance_being_ended() {
    let world = world();
    let first = served_instance(&serve(&world, &message(40, "template_cpu")).await);
    // stop-runner sends the job back before it ends the old instance, and SQS can hand the
    // message to create-runner at once: the old instance is still live, with its command tag.
    let mut relaunch = message(40, "template_cpu");
    relaunch.relaunches = 1;
    let outcome = serve(&world, &relaunch).await;
    assert!(
        matches!(&outcome, Outcome::HandedBack { reason, .. } if reason.contains("still being ended")),
        "{outcome:?}"
    );
    assert_eq!(
        world.fleet.all_instances().len(),
        1,
        "never two live instances for one job"
    );
    // Once the old instance is gone, the relaunch gets its runner.
    end_as_stop_runner_does(&world, &first).await;
    let second = served_instance(&world.create.serve(&relaunch.encode(), 2, far()).await);
    assert_ne!(second, first);
}

#[tokio::test]
async fn a_job_back_from_the_dlq_launches_with_tokens_of_its_own() {
    use sophons_core::redrive::MoveJobs;
    let world = world_with(|c| c["templates"]["template_cpu"]["on_demand_fallback"] = json!(false));
    let mut job = message(41, "template_cpu");
    job.created_at = sophons_core::job::now_rfc3339();
    // Its first trip found no capacity; EC2 keeps that answer with the token for a day.
    world
        .fleet
        .fail_launches([FleetError::NoCapacity("InsufficientInstanceCapacity".into())]);
    let first = world.create.serve(&job.encode(), 1, far()).await;
    assert!(matches!(first, Outcome::HandedBack { .. }), "{first:?}");
    // Three receives later it is in the DLQ; move-jobs sends it back and SQS counts from 1.
    let dlq = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs-dlq";
    world.queue.send(dlq, &job.encode(), &job.delivery_id).await.unwrap();
    let config = Arc::new(common::config("https://sqs.us-east-1.amazonaws.com/123456789012/jobs"));
    let moved = MoveJobs::new(config, world.queue.clone(), world.github.clone())
        .run(far())
        .await;
    assert_eq!(moved.moved, 1);
    let body = world
        .queue
        .messages("https://sqs.us-east-1.amazonaws.com/123456789012/jobs")
        .pop()
        .unwrap();
    // Capacity is back: the moved job launches, and is not answered its first trip's failure.
    served_instance(&world.create.serve(&body, 1, far()).await);
}

#[tokio::test]
async fn a_launch_token_used_with_other_parameters_hands_the_job_back_with_a_new_token_and_never_loses_it() {
    let world = world();
    let job = message(42, "template_cpu");
    // A handler serving a duplicate delivery launched first with the same token and another slot.
    let token = sophons_core::names::client_token("sophons", &job, 1, Capacity::Spot);
    let request = sophons_core::fleet::LaunchRequest {
        launch_template: "sophons-template_cpu".into(),
        instance_types: vec!["c7i.large".into()],
        subnet_ids: vec!["subnet-0abc".into()],
        capacity: Capacity::Spot,
        spot_max_price: None,
        client_token: token,
        tags: vec![("sophons:slot".into(), "19".into())],
    };
    let other = world.fleet.launch(&request).await.unwrap();
    let outcome = serve(&world, &job).await;
    assert!(
        matches!(&outcome, Outcome::HandedBack { delay_seconds: 60, reason, kind: HandBack::InFlight } if reason.contains("same launch token")),
        "never acknowledged: the other launch may fail, and its message may be gone: {outcome:?}"
    );
    assert!(
        world.stored().iter().all(|n| !n.contains("/slots/")),
        "its slot is given back: {:?}",
        world.stored()
    );
    // The other handler's launch failed and was ended: the next receive (a new token) launches.
    world.fleet.terminate(&other.instance_id).await.unwrap();
    served_instance(&world.create.serve(&job.encode(), 2, far()).await);
}

#[tokio::test]
async fn unsupported_pools_beside_capacity_errors_still_fall_back_to_on_demand() {
    let world = world();
    world.fleet.fail_launch_with_pool_errors(&[
        ("InsufficientInstanceCapacity", "no spot capacity in us-east-1a"),
        ("Unsupported", "c7i.large is not offered in us-east-1e"),
    ]);
    let outcome = serve(&world, &message(43, "template_cpu")).await;
    assert!(
        matches!(
            outcome,
            Outcome::Served {
                capacity: Capacity::OnDemand,
                ..
            }
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn an_instance_missing_from_the_listing_right_after_its_launch_is_not_taken_for_ended() {
    let world = world();
    // EC2's reads lag: the new instance is not listed until the clock moves.
    world.fleet.set_lag(Lag {
        new: 1,
        ..Lag::default()
    });
    served_instance(&serve(&world, &message(44, "template_cpu")).await);
    assert_eq!(world.fleet.launches().len(), 1, "no second launch with a new token");
    assert_eq!(world.fleet.all_instances().len(), 1);
}

#[tokio::test]
async fn a_terminated_instance_still_listed_as_running_does_not_serve_its_jobs_relaunch() {
    let world = world();
    world.fleet.set_lag(Lag {
        ended: 2,
        ..Lag::default()
    });
    let first = served_instance(&serve(&world, &message(45, "template_cpu")).await);
    end_as_stop_runner_does(&world, &first).await;
    let mut relaunch = message(45, "template_cpu");
    relaunch.relaunches = 1;
    let outcome = serve(&world, &relaunch).await;
    assert!(matches!(outcome, Outcome::HandedBack { .. }), "{outcome:?}");
    world.fleet.set_now(5);
    served_instance(&world.create.serve(&relaunch.encode(), 2, far()).await);
}

#[tokio::test]
async fn a_throttled_slot_claim_does_not_hand_the_job_back() {
    let world = world();
    world.slots.throttle_next_claims(2);
    let outcome = serve(&world, &message(46, "template_cpu")).await;
    served_instance(&outcome);
}

#[tokio::test]
async fn an_instance_ended_by_a_failed_start_frees_its_slot_at_once() {
    let world = world();
    world.commands.fail_next(CommandError::Failed("AccessDenied".into()));
    let outcome = serve(&world, &message(47, "template_cpu")).await;
    assert!(matches!(outcome, Outcome::HandedBack { .. }), "{outcome:?}");
    assert!(world.stored().is_empty(), "{:?}", world.stored());
}

#[tokio::test]
async fn jit_configs_as_large_as_githubs_are_stored_for_the_runner() {
    let world = world();
    let instance_id = served_instance(&serve(&world, &message(48, "template_cpu")).await);
    let value = world
        .parameters
        .get(&sophons_core::names::jit_parameter("sophons", &instance_id))
        .await
        .unwrap();
    assert!(
        value.len() > 4096,
        "GitHub's JIT configs exceed a Standard parameter: {}",
        value.len()
    );
}

#[tokio::test]
async fn a_duplicate_message_served_before_ec2_lists_the_first_launch_gets_no_second_instance() {
    let world = world();
    // Not listed yet: the "already served?" lookup cannot see the first launch.
    world.fleet.set_lag(Lag {
        new: 1,
        ..Lag::default()
    });
    let job = message(49, "template_cpu");
    served_instance(&world.create.serve(&job.encode(), 1, far()).await);
    // A duplicate of the message, at another receive count (so another launch token).
    let outcome = world.create.serve(&job.encode(), 2, far()).await;
    assert!(
        matches!(&outcome, Outcome::HandedBack { reason, .. } if reason.contains("being launched by another handler")),
        "{outcome:?}"
    );
    assert_eq!(world.fleet.all_instances().len(), 1);
}

#[tokio::test]
async fn the_jit_parameter_is_tagged_with_the_arn_of_its_instance() {
    let world = world();
    let instance_id = served_instance(&serve(&world, &message(50, "template_cpu")).await);
    let tags = world
        .parameters
        .tags_of(&sophons_core::names::jit_parameter("sophons", &instance_id));
    assert_eq!(
        tags.get(sophons_core::names::JIT_OWNER_TAG).map(String::as_str),
        Some(format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}").as_str()),
        "the runner role reads only the parameter tagged with the calling instance's ARN"
    );
}

#[tokio::test]
async fn a_handler_that_finds_another_claim_of_its_job_after_claiming_backs_off() {
    let world = world();
    // Another handler of job 51 claimed slot 7 (its walk differed: its listing of instances did).
    claim_slot_7(&world, 51, SystemTime::now()).await;
    let outcome = serve(&world, &message(51, "template_cpu")).await;
    assert!(
        matches!(&outcome, Outcome::HandedBack { reason, .. } if reason.contains("holds launch slot 7")),
        "{outcome:?}"
    );
    assert!(world.fleet.launches().is_empty(), "no second launch for the job");
    assert_eq!(
        world.stored(),
        vec!["/sophons/slots/template_cpu/7".to_string()],
        "its own claim given back"
    );
}

#[tokio::test]
async fn a_claim_of_the_same_job_older_than_a_launch_takes_is_taken_over() {
    let world = world();
    claim_slot_7(&world, 52, SystemTime::now() - Duration::from_secs(3600)).await;
    served_instance(&serve(&world, &message(52, "template_cpu")).await);
    assert!(!world.stored().contains(&"/sophons/slots/template_cpu/7".to_string()));
}

/// Terminates an instance and frees its launch slot, as stop-runner does.
async fn end_as_stop_runner_does(world: &World, instance_id: &str) {
    let slot = world
        .fleet
        .instance(instance_id)
        .and_then(|i| i.tag("sophons:slot").and_then(|slot| slot.parse().ok()))
        .unwrap();
    world.fleet.terminate(instance_id).await.unwrap();
    world.slots.remove("template_cpu", slot);
}

#[tokio::test]
async fn a_launch_whose_answer_was_lost_keeps_its_slot_until_the_sweep_finds_it_unheld() {
    let world = world();
    // The request timed out: EC2 may have launched an instance tagged with this slot that it does
    // not list yet. Giving the slot back would let another launch take it: max_runners + 1.
    world
        .fleet
        .fail_launches([FleetError::Unavailable("timeout waiting for CreateFleet".into())]);
    let outcome = serve(&world, &message(53, "template_gpu")).await;
    assert!(
        matches!(&outcome, Outcome::HandedBack { reason, .. } if reason.contains("may have launched")),
        "{outcome:?}"
    );
    assert_eq!(world.stored(), vec!["/sophons/slots/template_gpu/1".to_string()]);
}

/// Slot 7 of template_cpu claimed for a job (relaunch 0), as another handler would.
async fn claim_slot_7(world: &World, job_id: u64, at: SystemTime) {
    let claim = SlotClaim {
        job_id,
        relaunches: 0,
        at,
    };
    world.slots.put("template_cpu", 7, claim);
}

/// The same world, its create-runner asking GitHub for the current runner release at every launch.
fn always_asking_for_the_release(world: World) -> World {
    let config = Arc::new(
        Config::parse(&common::config_json("https://sqs.us-east-1.amazonaws.com/123456789012/jobs").to_string())
            .unwrap(),
    );
    let ports = Ports {
        fleet: world.fleet.clone(),
        github: world.github.clone(),
        parameters: world.parameters.clone(),
        slots: world.slots.clone(),
        commands: world.commands.clone(),
        queue: world.queue.clone(),
        waiting: None,
        interruptions: None,
    };
    World {
        create: Arc::new(CreateRunner::new(config, ports).with_release_ttl(Duration::ZERO)),
        ..world
    }
}

/// The `export NAME='value'` lines of the last command sent, as (NAME, value).
fn script_env(world: &World) -> std::collections::BTreeMap<String, String> {
    let (request, _) = world.commands.sent().pop().expect("a command was sent");
    request
        .commands
        .iter()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(name, value)| (name.to_string(), value.trim_matches('\'').to_string()))
        .collect()
}

#[tokio::test]
async fn a_runner_installs_githubs_current_release_with_its_checksums() {
    let world = world();
    served_instance(&serve(&world, &message(60, "template_cpu")).await);
    let listed = sophons_core::fakes::runner_downloads_of(sophons_core::fakes::FAKE_RUNNER_VERSION);
    let linux = |architecture: &str| {
        listed
            .iter()
            .find(|d| d.os == "linux" && d.architecture == architecture)
            .unwrap()
            .clone()
    };
    let env = script_env(&world);
    assert_eq!(env["SOPHONS_RUNNER_VERSION"], sophons_core::fakes::FAKE_RUNNER_VERSION);
    assert_eq!(env["SOPHONS_RUNNER_URL_X64"], linux("x64").download_url);
    assert_eq!(
        Some(&env["SOPHONS_RUNNER_SHA256_X64"]),
        linux("x64").sha256_checksum.as_ref()
    );
    assert_eq!(env["SOPHONS_RUNNER_URL_ARM64"], linux("arm64").download_url);
    assert_eq!(
        Some(&env["SOPHONS_RUNNER_SHA256_ARM64"]),
        linux("arm64").sha256_checksum.as_ref()
    );
    assert_eq!(env["SOPHONS_PACKAGES"], "git", "git unless the template says otherwise");
    assert_eq!(env["SOPHONS_DOCKER"], "0");
}

#[tokio::test]
async fn a_new_release_is_picked_up_without_a_deploy() {
    let world = always_asking_for_the_release(world());
    served_instance(&serve(&world, &message(61, "template_cpu")).await);
    assert_eq!(script_env(&world)["SOPHONS_RUNNER_VERSION"], "2.330.0");
    world
        .github
        .set_runner_downloads(sophons_core::fakes::runner_downloads_of("2.331.0"));
    served_instance(&serve(&world, &message(62, "template_cpu")).await);
    let env = script_env(&world);
    assert_eq!(env["SOPHONS_RUNNER_VERSION"], "2.331.0");
    assert!(env["SOPHONS_RUNNER_URL_X64"].ends_with("actions-runner-linux-x64-2.331.0.tar.gz"));
}

#[tokio::test]
async fn when_github_cannot_name_the_release_the_last_one_it_named_is_installed() {
    let world = always_asking_for_the_release(world());
    served_instance(&serve(&world, &message(63, "template_cpu")).await);
    world
        .github
        .fail_runner_downloads([GithubError::Unavailable("502 Bad Gateway".into())]);
    served_instance(&serve(&world, &message(64, "template_cpu")).await);
    assert_eq!(script_env(&world)["SOPHONS_RUNNER_VERSION"], "2.330.0");
}

#[tokio::test]
async fn with_no_verified_release_known_nothing_is_launched_and_the_job_waits() {
    for break_it in [
        |world: &World| {
            world
                .github
                .fail_runner_downloads([GithubError::Unavailable("502 Bad Gateway".into())])
        },
        // A package listed without a checksum is never installed.
        |world: &World| {
            let mut downloads = sophons_core::fakes::runner_downloads_of("2.331.0");
            for download in &mut downloads {
                download.sha256_checksum = None;
            }
            world.github.set_runner_downloads(downloads)
        },
    ] {
        let world = world();
        break_it(&world);
        let outcome = serve(&world, &message(65, "template_cpu")).await;
        assert!(
            matches!(&outcome, Outcome::HandedBack { delay_seconds: 60, reason, kind: HandBack::Unavailable } if reason.contains("runner release")),
            "{outcome:?}"
        );
        assert!(world.fleet.launches().is_empty());
        assert!(world.stored().is_empty(), "no slot claimed: {:?}", world.stored());
    }
}

#[tokio::test]
async fn a_pinned_release_is_installed_as_pinned() {
    let world = world_with(|v| {
        v["runner_pin"] = json!({"version": "2.329.5", "sha256_x64": "a".repeat(64), "sha256_arm64": "B".repeat(64)})
    });
    served_instance(&serve(&world, &message(66, "template_cpu")).await);
    let env = script_env(&world);
    assert_eq!(env["SOPHONS_RUNNER_VERSION"], "2.329.5");
    assert_eq!(
        env["SOPHONS_RUNNER_URL_ARM64"],
        "https://github.com/actions/runner/releases/download/v2.329.5/actions-runner-linux-arm64-2.329.5.tar.gz"
    );
    assert_eq!(env["SOPHONS_RUNNER_SHA256_ARM64"], "b".repeat(64));
}

#[tokio::test]
async fn a_templates_packages_and_docker_reach_the_runner_script() {
    let world = world_with(|v| {
        v["templates"]["template_cpu"]["packages"] = json!(["git", "jq", "make"]);
        v["templates"]["template_cpu"]["docker"] = json!(true);
        v["templates"]["template_gpu"]["packages"] = json!([]);
    });
    served_instance(&serve(&world, &message(67, "template_cpu")).await);
    let env = script_env(&world);
    assert_eq!(env["SOPHONS_PACKAGES"], "git jq make");
    assert_eq!(env["SOPHONS_DOCKER"], "1");
    served_instance(&serve(&world, &message(68, "template_gpu")).await);
    assert_eq!(
        script_env(&world)["SOPHONS_PACKAGES"],
        "",
        "an empty list installs nothing"
    );
}
