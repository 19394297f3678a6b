//! Spot interruptions over the fakes: a job whose spot instance EC2 took back while it ran is
//! re-run once, on on-demand, when GitHub fails it; nothing else is re-run; a template that keeps
//! losing spot launches on-demand for a while.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use sophons_core::config::Config;
use sophons_core::create::{CreateRunner, Outcome};
use sophons_core::fakes::{FakeFleet, FakeGithub, FakeQueue};
use sophons_core::fleet::{Capacity, FleetError};
use sophons_core::github::{GithubError, JobDetails, RunDetails};
use sophons_core::interruptions::{FakeInterruptions, InterruptionsError, RAN_RECORD_AWAITED};
use sophons_core::job::{JobMessage, now_rfc3339, rfc3339};
use sophons_core::stop::{Handled, StopRunner, Stopped};
use sophons_core::webhook::Webhook;
use tokio::time::Instant;

const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs";
const REPOSITORY: &str = "my-org/app";
const RUN: u64 = 7;

struct World {
    config: Arc<Config>,
    fleet: Arc<FakeFleet>,
    queue: Arc<FakeQueue>,
    github: Arc<FakeGithub>,
    store: Arc<FakeInterruptions>,
    create: Arc<CreateRunner>,
    stop: StopRunner,
}

fn world_with(edit: impl FnOnce(&mut Value)) -> World {
    let mut document = common::config_json(QUEUE);
    document["interruptions_table"] = json!("sophons-interruptions");
    edit(&mut document);
    let config = Arc::new(Config::parse(&document.to_string()).unwrap());
    let fakes = common::Fakes::new().with_interruptions();
    let ports = fakes.ports();
    World {
        create: Arc::new(CreateRunner::new(config.clone(), ports.clone())),
        stop: StopRunner::new(config.clone(), ports),
        config,
        queue: fakes.queue,
        fleet: fakes.fleet,
        github: fakes.github,
        store: fakes.interruptions.expect("asked for"),
    }
}

fn world() -> World {
    world_with(|_| {})
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(900)
}

/// Job `job_id` named `name` of run `RUN`, attempt `attempt`, on template_cpu.
fn job(job_id: u64, name: &str, attempt: u32) -> JobMessage {
    JobMessage {
        run_id: RUN,
        run_attempt: attempt,
        job_name: name.into(),
        created_at: now_rfc3339(),
        received_at: now_rfc3339(),
        ..common::job_message(job_id, "template_cpu")
    }
}

/// Serves a job; answers its instance and the capacity it launched on.
async fn serve(world: &World, message: &JobMessage) -> (String, Capacity) {
    let (instance_id, capacity, _) = serve_with_command(world, message).await;
    (instance_id, capacity)
}

/// Serves a job; answers its instance, the capacity it launched on, and its runner command.
async fn serve_with_command(world: &World, message: &JobMessage) -> (String, Capacity, String) {
    match world.create.serve(&message.encode(), 1, far()).await {
        Outcome::Served {
            instance_id,
            capacity,
            command_id,
            ..
        } => (instance_id, capacity, command_id),
        other => panic!("job {} should have been served: {other:?}", message.job_id),
    }
}

/// EC2's documented warning event
/// (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html>).
fn warning(instance_id: &str, at: SystemTime) -> Value {
    json!({
        "version": "0",
        "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": "EC2 Spot Instance Interruption Warning",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": rfc3339(at),
        "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1a:instance/{instance_id}")],
        "detail": { "instance-id": instance_id, "instance-action": "terminate" }
    })
}

/// EC2's documented state-change event.
fn terminated(instance_id: &str) -> Value {
    json!({
        "version": "0",
        "id": "7bf73129-1428-4cd3-a780-95db273d1602",
        "detail-type": "EC2 Instance State-change Notification",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": now_rfc3339(),
        "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}")],
        "detail": { "instance-id": instance_id, "state": "terminated" }
    })
}

/// GitHub's view: job `job_id` ran on the runner of `instance_id` and ended as `conclusion`
/// (None: still running) at `completed`; the run is `run_status`.
fn github_says(
    world: &World,
    job_id: u64,
    instance_id: &str,
    conclusion: Option<&str>,
    completed: SystemTime,
    run_status: &str,
) {
    world.github.set_job(
        REPOSITORY,
        JobDetails {
            id: job_id,
            run_id: RUN,
            run_attempt: 1,
            name: if job_id == 1 {
                "build".into()
            } else {
                format!("build-{job_id}")
            },
            status: if conclusion.is_some() {
                "completed"
            } else {
                "in_progress"
            }
            .into(),
            conclusion: conclusion.map(str::to_string),
            runner_name: Some(format!("sophons-{instance_id}")),
            started_at: Some(now_rfc3339()),
            completed_at: conclusion.map(|_| rfc3339(completed)),
        },
    );
    world.github.set_run(
        REPOSITORY,
        RunDetails {
            id: RUN,
            run_attempt: world.github.run(REPOSITORY, RUN).map_or(1, |run| run.run_attempt),
            status: run_status.into(),
            conclusion: (run_status == "completed").then(|| "failure".into()),
        },
    );
}

/// The webhook hears GitHub's `in_progress` delivery: job `job_id` (`name`, of run `run_id` in
/// `repository`) started on the runner of `instance_id`.
async fn started(world: &World, instance_id: &str, repository: &str, run_id: u64, job_id: u64, name: &str) {
    let mut payload = testkit::fixture("workflow_job.in_progress");
    payload["workflow_job"]["id"] = json!(job_id);
    payload["workflow_job"]["run_id"] = json!(run_id);
    payload["workflow_job"]["name"] = json!(name);
    payload["workflow_job"]["runner_name"] = json!(format!("sophons-{instance_id}"));
    payload["repository"]["full_name"] = json!(repository);
    payload["repository"]["owner"]["login"] = json!("my-org");
    let webhook =
        Webhook::new(world.config.clone(), common::SECRET, world.queue.clone()).with_interruptions(world.store.clone());
    let request = common::signed("workflow_job", "d-started", payload.to_string().as_bytes());
    let response = webhook.handle(common::request(&request)).await;
    assert_eq!(common::body_of(&response)["decision"], "recorded");
}

async fn sweep(world: &World) -> sophons_core::interruptions::Followed {
    world.stop.sweep(far()).await.interrupted
}

/// A job served on spot whose instance EC2 warned about: answers the instance.
async fn warned_job(world: &World) -> String {
    let (instance_id, capacity) = serve(world, &job(1, "build", 1)).await;
    assert_eq!(capacity, Capacity::Spot);
    let handled = world.stop.handle(warning(&instance_id, SystemTime::now()), far()).await;
    assert!(matches!(handled, Handled::Stop(Stopped::Warned { .. })), "{handled:?}");
    instance_id
}

/// A warned job GitHub gave to another runner, which ran it to success: answers the instance
/// launched for it, whose runner took another job.
async fn warned_job_run_elsewhere(world: &World) -> String {
    let instance_id = warned_job(world).await;
    github_says(
        world,
        1,
        "i-someone-else",
        Some("success"),
        SystemTime::now(),
        "completed",
    );
    instance_id
}

#[tokio::test]
async fn a_warned_job_github_failed_is_rerun_once_after_its_run_completes_and_the_rerun_launches_on_demand() {
    let world = world();
    let instance_id = warned_job(&world).await;
    assert_eq!(world.store.followed(), vec![1]);

    github_says(&world, 1, &instance_id, None, SystemTime::now(), "in_progress");
    assert_eq!(sweep(&world).await.following, 1, "still running: followed");
    github_says(
        &world,
        1,
        &instance_id,
        Some("failure"),
        SystemTime::now(),
        "in_progress",
    );
    assert_eq!(
        sweep(&world).await.following,
        1,
        "GitHub re-runs a job only once its run has completed"
    );
    assert!(world.github.reruns().is_empty());

    github_says(&world, 1, &instance_id, Some("failure"), SystemTime::now(), "completed");
    assert_eq!(sweep(&world).await.rerun, 1);
    assert_eq!(world.github.reruns(), vec![(REPOSITORY.to_string(), 1)]);
    assert!(world.store.followed().is_empty());
    assert_eq!(
        sweep(&world).await,
        Default::default(),
        "asked once, then nothing to follow"
    );
    assert_eq!(world.github.reruns().len(), 1);

    // The new attempt: a new job id, the same name; launched on-demand. Other jobs stay on spot.
    let (_, capacity) = serve(&world, &job(101, "build", 2)).await;
    assert_eq!(capacity, Capacity::OnDemand);
    let (_, capacity) = serve(&world, &job(102, "test", 2)).await;
    assert_eq!(capacity, Capacity::Spot, "only the re-run job goes on-demand");
}

#[tokio::test]
async fn a_job_whose_warning_was_lost_is_recorded_when_its_instance_ends_and_rerun() {
    let world = world();
    let (instance_id, _) = serve(&world, &job(1, "build", 1)).await;
    github_says(&world, 1, &instance_id, None, SystemTime::now(), "in_progress");
    world.fleet.reclaim(&instance_id);
    let handled = world.stop.handle(terminated(&instance_id), far()).await;
    assert!(
        matches!(handled, Handled::Stop(Stopped::Ended { relaunched: false, .. })),
        "{handled:?}"
    );
    assert_eq!(world.store.followed(), vec![1]);
    github_says(&world, 1, &instance_id, Some("failure"), SystemTime::now(), "completed");
    assert_eq!(sweep(&world).await.rerun, 1);
}

#[tokio::test]
async fn a_job_whose_warning_and_state_change_were_both_lost_is_recorded_by_the_sweep() {
    let world = world();
    let (instance_id, _) = serve(&world, &job(1, "build", 1)).await;
    github_says(&world, 1, &instance_id, None, SystemTime::now(), "in_progress");
    world.fleet.reclaim(&instance_id);
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.reclaimed, 1);
    assert_eq!(report.interrupted.following, 1);
    github_says(&world, 1, &instance_id, Some("failure"), SystemTime::now(), "completed");
    assert_eq!(sweep(&world).await.rerun, 1);
}

#[tokio::test]
async fn a_job_that_succeeded_or_was_cancelled_is_not_rerun() {
    for conclusion in ["success", "cancelled"] {
        let world = world();
        let instance_id = warned_job(&world).await;
        github_says(
            &world,
            1,
            &instance_id,
            Some(conclusion),
            SystemTime::now(),
            "completed",
        );
        let followed = sweep(&world).await;
        assert_eq!((followed.rerun, followed.settled), (0, 1), "{conclusion}");
        assert!(world.github.reruns().is_empty(), "{conclusion}");
        assert!(world.store.followed().is_empty());
    }
}

#[tokio::test]
async fn a_job_that_failed_before_the_warning_is_not_rerun() {
    let world = world();
    let instance_id = warned_job(&world).await;
    let long_before = SystemTime::now() - Duration::from_secs(600);
    github_says(&world, 1, &instance_id, Some("failure"), long_before, "completed");
    assert_eq!(sweep(&world).await.settled, 1);
    assert!(world.github.reruns().is_empty());
}

#[tokio::test]
async fn a_job_that_ran_on_another_runner_is_not_rerun_once_no_record_of_what_ours_ran_came() {
    let world = world();
    warned_job(&world).await;
    github_says(
        &world,
        1,
        "i-someone-else",
        Some("failure"),
        SystemTime::now(),
        "completed",
    );
    // The runner may have run a job of another run; its `in_progress` delivery may come late
    // (move-jobs redelivers a failed one within the hour).
    let followed = sweep(&world).await;
    assert_eq!((followed.following, followed.settled), (1, 0), "{followed:?}");
    world.store.age(RAN_RECORD_AWAITED + Duration::from_secs(1));
    assert_eq!(sweep(&world).await.settled, 1);
    assert!(world.github.reruns().is_empty());
}

#[tokio::test]
async fn the_job_of_another_run_the_interrupted_runner_ran_is_rerun_from_the_webhooks_record_and_launches_on_demand() {
    let world = world();
    // GitHub gave job 1 to another runner, and job 55 of run 99 in another repository to ours.
    let instance_id = warned_job_run_elsewhere(&world).await;
    started(&world, &instance_id, "my-org/other", 99, 55, "lint").await;
    let job_55 = |status: &str, conclusion: Option<&str>| JobDetails {
        id: 55,
        run_id: 99,
        run_attempt: 1,
        name: "lint".into(),
        status: status.into(),
        conclusion: conclusion.map(str::to_string),
        runner_name: Some(format!("sophons-{instance_id}")),
        started_at: Some(now_rfc3339()),
        completed_at: conclusion.map(|_| now_rfc3339()),
    };
    let run_99 = |status: &str| RunDetails {
        id: 99,
        run_attempt: 1,
        status: status.into(),
        conclusion: (status == "completed").then(|| "failure".into()),
    };
    world.github.set_job("my-org/other", job_55("in_progress", None));
    world.github.set_run("my-org/other", run_99("in_progress"));
    assert_eq!(sweep(&world).await.following, 1);
    world
        .github
        .set_job("my-org/other", job_55("completed", Some("failure")));
    world.github.set_run("my-org/other", run_99("completed"));
    assert_eq!(sweep(&world).await.rerun, 1);
    assert_eq!(world.github.reruns(), vec![("my-org/other".to_string(), 55)]);

    let mut rerun = job(155, "lint", 2);
    rerun.repository = "my-org/other".into();
    rerun.name = "other".into();
    rerun.run_id = 99;
    let (_, capacity) = serve(&world, &rerun).await;
    assert_eq!(capacity, Capacity::OnDemand);
}

#[tokio::test]
async fn the_job_of_the_same_run_the_interrupted_runner_ran_is_rerun_even_when_the_webhooks_record_never_came() {
    let world = world();
    // GitHub gave job 1 to another runner, and job 2 of the same run to ours (same labels); its
    // in_progress delivery never reached the webhook.
    let instance_id = warned_job_run_elsewhere(&world).await;
    github_says(&world, 2, &instance_id, Some("failure"), SystemTime::now(), "completed");
    assert_eq!(sweep(&world).await.following, 1, "the webhook's record is awaited");
    world.store.age(RAN_RECORD_AWAITED + Duration::from_secs(1));
    assert_eq!(sweep(&world).await.rerun, 1, "then the run's jobs are looked at");
    assert_eq!(world.github.reruns(), vec![(REPOSITORY.to_string(), 2)]);
}

#[tokio::test]
async fn a_run_someone_rerun_already_is_not_rerun_again() {
    let world = world();
    let instance_id = warned_job(&world).await;
    github_says(&world, 1, &instance_id, Some("failure"), SystemTime::now(), "completed");
    world.github.set_run(
        REPOSITORY,
        RunDetails {
            id: RUN,
            run_attempt: 2,
            status: "in_progress".into(),
            conclusion: None,
        },
    );
    assert_eq!(sweep(&world).await.settled, 1);
    assert!(world.github.reruns().is_empty());
}

#[tokio::test]
async fn a_template_that_turned_reruns_off_does_not_follow_its_jobs() {
    let world = world_with(|document| document["templates"]["template_cpu"]["rerun_interrupted_jobs"] = json!(false));
    warned_job(&world).await;
    assert!(world.store.followed().is_empty());
}

#[tokio::test]
async fn a_rerun_github_refuses_is_asked_again_at_the_next_sweep() {
    let world = world();
    let instance_id = warned_job(&world).await;
    github_says(&world, 1, &instance_id, Some("failure"), SystemTime::now(), "completed");
    world
        .github
        .fail_rerun([GithubError::Conflict("403 the run is not completed".into())]);
    let first = sweep(&world).await;
    assert_eq!((first.rerun, first.errors), (0, 1));
    assert!(world.store.reruns().is_empty(), "a refused re-run gives its claim back");
    assert_eq!(sweep(&world).await.rerun, 1);
    assert_eq!(world.github.reruns().len(), 1);
}

#[tokio::test]
async fn a_rerun_whose_answer_was_lost_is_never_asked_twice_once_github_took_it() {
    let world = world();
    let instance_id = warned_job(&world).await;
    github_says(&world, 1, &instance_id, Some("failure"), SystemTime::now(), "completed");
    world.github.fail_rerun([GithubError::Unavailable("timed out".into())]);
    assert_eq!(sweep(&world).await.errors, 1);
    assert_eq!(
        world.store.reruns().len(),
        1,
        "the claim stays: GitHub may have taken it"
    );
    // GitHub did take it: the run is at attempt 2 now.
    world.github.set_run(
        REPOSITORY,
        RunDetails {
            id: RUN,
            run_attempt: 2,
            status: "queued".into(),
            conclusion: None,
        },
    );
    assert_eq!(sweep(&world).await.settled, 1);
    assert!(world.github.reruns().is_empty(), "no second ask");
    let (_, capacity) = serve(&world, &job(101, "build", 2)).await;
    assert_eq!(
        capacity,
        Capacity::OnDemand,
        "the claim still sends the new attempt on-demand"
    );
}

#[tokio::test]
async fn a_job_still_queued_when_its_instance_went_is_sent_back_not_rerun() {
    let world = world();
    let (instance_id, _) = serve(&world, &job(1, "build", 1)).await;
    world.fleet.reclaim(&instance_id);
    // FakeGithub answers `queued` for a job it has no details of: stop-runner sends it back.
    let handled = world.stop.handle(terminated(&instance_id), far()).await;
    assert!(
        matches!(handled, Handled::Stop(Stopped::Ended { relaunched: true, .. })),
        "{handled:?}"
    );
    // Followed anyway, in case the runner had run another job; none had: settled once no
    // record of one came.
    world.store.age(RAN_RECORD_AWAITED + Duration::from_secs(1));
    let followed = sweep(&world).await;
    assert_eq!((followed.rerun, followed.settled), (0, 1), "{followed:?}");
    assert!(world.github.reruns().is_empty());
}

#[tokio::test]
async fn an_instance_we_ended_or_of_another_deployment_is_ignored() {
    let world = world();
    let (instance_id, _) = serve(&world, &job(1, "build", 1)).await;
    world
        .fleet
        .set_state(&instance_id, sophons_core::fleet::InstanceState::Terminated);
    let handled = world.stop.handle(terminated(&instance_id), far()).await;
    assert!(matches!(handled, Handled::Stop(Stopped::Ignored(_))), "{handled:?}");
    let handled = world.stop.handle(warning("i-not-ours", SystemTime::now()), far()).await;
    assert!(matches!(handled, Handled::Stop(Stopped::Ignored(_))), "{handled:?}");
    assert!(world.store.followed().is_empty());
}

#[tokio::test]
async fn a_template_backs_off_spot_after_three_losses_in_thirty_minutes_for_an_hour() {
    let world = world();
    for job_id in 1..=2 {
        let (instance_id, capacity) = serve(&world, &job(job_id, &format!("j{job_id}"), 1)).await;
        assert_eq!(capacity, Capacity::Spot);
        world.stop.handle(warning(&instance_id, SystemTime::now()), far()).await;
    }
    // The third loss: a spot launch refused for capacity (the template falls back to on-demand).
    world
        .fleet
        .fail_launches([FleetError::NoCapacity("InsufficientInstanceCapacity".into())]);
    let (_, capacity) = serve(&world, &job(3, "j3", 1)).await;
    assert_eq!(capacity, Capacity::OnDemand);
    let (_, capacity) = serve(&world, &job(4, "j4", 1)).await;
    assert_eq!(capacity, Capacity::OnDemand, "backing off: on-demand first");

    world.store.age(Duration::from_secs(59 * 60));
    assert_eq!(sweep(&world).await.backoffs_ended, 0);
    world.store.age(Duration::from_secs(2 * 60));
    assert_eq!(sweep(&world).await.backoffs_ended, 1);
    let (_, capacity) = serve(&world, &job(5, "j5", 1)).await;
    assert_eq!(capacity, Capacity::Spot, "the back-off is over");
}

#[tokio::test]
async fn losses_spread_wider_than_the_window_do_not_back_off() {
    let world = world();
    for job_id in 1..=3 {
        let (instance_id, _) = serve(&world, &job(job_id, &format!("j{job_id}"), 1)).await;
        world.stop.handle(warning(&instance_id, SystemTime::now()), far()).await;
        world.store.age(Duration::from_secs(16 * 60));
    }
    let (_, capacity) = serve(&world, &job(9, "j9", 1)).await;
    assert_eq!(capacity, Capacity::Spot);
}

#[tokio::test]
async fn after_zero_turns_the_backoff_off() {
    let world = world_with(|document| document["spot_backoff"] = json!({ "after": 0 }));
    for job_id in 1..=4 {
        let (instance_id, capacity) = serve(&world, &job(job_id, &format!("j{job_id}"), 1)).await;
        assert_eq!(capacity, Capacity::Spot, "job {job_id}");
        world.stop.handle(warning(&instance_id, SystemTime::now()), far()).await;
    }
}

#[tokio::test]
async fn a_failing_store_launches_as_the_template_says_and_loses_nothing() {
    let world = world();
    let (instance_id, _) = serve(&world, &job(1, "build", 1)).await;
    let failed = InterruptionsError::Failed {
        table: "t".into(),
        reason: "throttled".into(),
    };
    world.store.fail_next([failed.clone()]);
    world.stop.handle(warning(&instance_id, SystemTime::now()), far()).await;
    assert!(world.store.followed().is_empty(), "the record failed");
    // The sweep records it once the instance has ended.
    github_says(&world, 1, &instance_id, None, SystemTime::now(), "in_progress");
    world.fleet.reclaim(&instance_id);
    world.stop.sweep(far()).await;
    assert_eq!(world.store.followed(), vec![1]);
    world.store.fail_next([failed.clone(), failed]);
    let (_, capacity) = serve(&world, &job(2, "other", 1)).await;
    assert_eq!(capacity, Capacity::Spot);
}

#[tokio::test]
async fn a_rerun_whose_on_demand_runner_died_at_boot_is_relaunched_on_demand_again() {
    let world = world();
    let instance_id = warned_job(&world).await;
    github_says(&world, 1, &instance_id, Some("failure"), SystemTime::now(), "completed");
    assert_eq!(sweep(&world).await.rerun, 1);
    let (rerun_instance, capacity, command_id) = serve_with_command(&world, &job(101, "build", 2)).await;
    assert_eq!(capacity, Capacity::OnDemand);
    // Its runner dies before taking the job (GitHub still has job 101 queued): sent back.
    let stopped = world.stop.command_ended(&rerun_instance, &command_id, "Failed").await;
    assert!(
        matches!(stopped, Stopped::Ended { relaunched: true, .. }),
        "{stopped:?}"
    );
    let relaunch = world
        .queue
        .sent()
        .iter()
        .map(|sent| JobMessage::decode(&sent.body).unwrap())
        .find(|message| message.job_id == 101)
        .expect("job 101 sent back");
    assert_eq!((relaunch.run_attempt, relaunch.job_name.as_str()), (2, "build"));
    let (_, capacity) = serve(&world, &relaunch).await;
    assert_eq!(capacity, Capacity::OnDemand, "still the re-run of an interrupted job");
}

#[tokio::test]
async fn a_job_whose_warning_was_lost_and_whose_end_was_seen_late_is_still_rerun() {
    let world = world();
    let (instance_id, _) = serve(&world, &job(1, "build", 1)).await;
    github_says(&world, 1, &instance_id, None, SystemTime::now(), "in_progress");
    world.fleet.reclaim(&instance_id);
    // GitHub failed the job ten minutes before the sweep saw the instance's end: that says
    // nothing of the job failing before the (lost) warning.
    let failed = SystemTime::now() - Duration::from_secs(600);
    github_says(&world, 1, &instance_id, Some("failure"), failed, "completed");
    assert_eq!(sweep(&world).await.rerun, 1, "recorded and followed by one sweep");
}

#[tokio::test]
async fn a_later_attempt_whose_claim_cannot_be_read_is_handed_back_not_launched_on_spot() {
    let world = world();
    world.store.fail_next([InterruptionsError::Failed {
        table: "t".into(),
        reason: "ThrottlingException".into(),
    }]);
    let outcome = world.create.serve(&job(101, "build", 2).encode(), 1, far()).await;
    assert!(matches!(outcome, Outcome::HandedBack { .. }), "{outcome:?}");
    assert!(world.fleet.launches().is_empty(), "nothing launched on spot meanwhile");
    // A first attempt is never a re-run: it does not read the claims at all.
    world.store.fail_next([InterruptionsError::Failed {
        table: "t".into(),
        reason: "ThrottlingException".into(),
    }]);
    let (_, capacity) = serve(&world, &job(102, "test", 1)).await;
    assert_eq!(capacity, Capacity::Spot);
}

#[tokio::test]
async fn an_end_whose_record_failed_is_looked_after_again_and_recorded() {
    let world = world();
    let (instance_id, _) = serve(&world, &job(1, "build", 1)).await;
    github_says(&world, 1, &instance_id, None, SystemTime::now(), "in_progress");
    world.fleet.reclaim(&instance_id);
    world.store.fail_next([InterruptionsError::Failed {
        table: "t".into(),
        reason: "ThrottlingException".into(),
    }]);
    world.stop.handle(terminated(&instance_id), far()).await;
    assert!(world.store.followed().is_empty(), "the record failed");
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.reclaimed, 1, "not marked looked after: the sweep looks again");
    assert_eq!(world.store.followed(), vec![1]);
}

#[tokio::test]
async fn a_reclaim_whose_job_was_sent_back_but_whose_record_failed_is_recorded_by_the_sweep() {
    let world = world();
    let (instance_id, _) = serve(&world, &job(1, "build", 1)).await;
    world.fleet.reclaim(&instance_id);
    world.store.fail_next([InterruptionsError::Failed {
        table: "t".into(),
        reason: "ThrottlingException".into(),
    }]);
    // Still queued on GitHub: sent back, and marked so (not sent twice), the record failed.
    let handled = world.stop.handle(terminated(&instance_id), far()).await;
    assert!(
        matches!(handled, Handled::Stop(Stopped::Ended { relaunched: true, .. })),
        "{handled:?}"
    );
    assert!(world.store.followed().is_empty(), "the record failed");
    let sent = world.queue.sent().len();
    // (GitHub gave the runner the job as it went: followed until GitHub concludes it.)
    github_says(&world, 1, &instance_id, None, SystemTime::now(), "in_progress");
    let report = world.stop.sweep(far()).await;
    assert_eq!(report.reclaimed, 0, "looked after already");
    assert_eq!(world.queue.sent().len(), sent, "not sent back twice");
    assert_eq!(world.store.followed(), vec![1], "the sweep recorded it");
    world.stop.sweep(far()).await;
    assert_eq!(world.store.followed(), vec![1], "once");
}

#[tokio::test]
async fn a_job_that_lost_one_instance_at_boot_and_the_next_while_running_is_rerun() {
    let world = world();
    let message = job(1, "build", 1);
    let (first, _) = serve(&world, &message).await;
    // The first instance goes at boot: the job is still queued, so it is sent back and followed.
    world.fleet.reclaim(&first);
    world.stop.handle(terminated(&first), far()).await;
    let relaunch = world
        .queue
        .sent()
        .iter()
        .map(|sent| JobMessage::decode(&sent.body).unwrap())
        .find(|sent| sent.job_id == 1)
        .expect("sent back");
    let (second, _) = serve(&world, &relaunch).await;
    github_says(&world, 1, &second, None, SystemTime::now(), "in_progress");
    // The first interruption is settled (the job ran elsewhere) while the second is warned.
    world.stop.handle(warning(&second, SystemTime::now()), far()).await;
    sweep(&world).await;
    github_says(&world, 1, &second, Some("failure"), SystemTime::now(), "completed");
    assert_eq!(
        sweep(&world).await.rerun,
        1,
        "the second interruption is its own record"
    );
}
