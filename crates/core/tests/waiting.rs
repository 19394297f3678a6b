//! The waiting list over the fakes: a job that finds its template full waits there without
//! spending its receives, and the oldest waiting job takes each slot that frees.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use sophons_core::config::Config;
use sophons_core::create::{CreateRunner, HandBack, Outcome};
use sophons_core::fakes::{FakeFleet, FakeGithub, FakeQueue};
use sophons_core::fleet::InstanceState;
use sophons_core::job::{JobMessage, rfc3339};
use sophons_core::ports::Ports;
use sophons_core::slots::FakeSlots;
use sophons_core::stop::StopRunner;
use sophons_core::waiting::{self, FakeWaiting, WaitingError};
use tokio::time::Instant;

const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs";
/// template_gpu allows 2 runners.
const TEMPLATE: &str = "template_gpu";

struct World {
    config: Arc<Config>,
    ports: Ports,
    fleet: Arc<FakeFleet>,
    github: Arc<FakeGithub>,
    slots: Arc<FakeSlots>,
    queue: Arc<FakeQueue>,
    waiting: Arc<FakeWaiting>,
    create: Arc<CreateRunner>,
    stop: StopRunner,
}

fn world() -> World {
    let config = Arc::new(common::config(QUEUE));
    let fakes = common::Fakes::new().with_waiting();
    let ports = fakes.ports();
    World {
        create: Arc::new(CreateRunner::new(config.clone(), ports.clone())),
        stop: StopRunner::new(config.clone(), ports.clone()),
        config,
        ports,
        fleet: fakes.fleet,
        github: fakes.github,
        slots: fakes.slots,
        queue: fakes.queue,
        waiting: fakes.waiting.expect("asked for"),
    }
}

/// A job GitHub queued `ago` before now.
fn job(job_id: u64, ago: Duration) -> JobMessage {
    let queued = rfc3339(SystemTime::now() - ago);
    JobMessage {
        job_name: format!("build-{job_id}"),
        created_at: queued.clone(),
        received_at: queued,
        ..common::job_message(job_id, TEMPLATE)
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(900)
}

async fn serve(world: &World, message: &JobMessage) -> Outcome {
    world.create.serve(&message.encode(), 1, far()).await
}

/// Fills template_gpu with two served jobs; answers their (instance, command) ids.
async fn fill(world: &World) -> Vec<(String, String)> {
    let mut served = Vec::new();
    for job_id in [1, 2] {
        match serve(world, &job(job_id, Duration::from_secs(600))).await {
            Outcome::Served {
                instance_id,
                command_id,
                ..
            } => served.push((instance_id, command_id)),
            other => panic!("job {job_id} should have been served: {other:?}"),
        }
    }
    served
}

/// The jobs sent to the jobs queue, in order: (job id, trip).
fn sent_jobs(world: &World) -> Vec<(u64, u32)> {
    world
        .queue
        .sent()
        .iter()
        .filter(|sent| sent.queue_url == QUEUE)
        .map(|sent| JobMessage::decode(&sent.body).unwrap())
        .map(|message| (message.job_id, message.trip))
        .collect()
}

/// The message a wake sent for a job (the last one).
fn woken_message(world: &World, job_id: u64) -> JobMessage {
    world
        .queue
        .sent()
        .iter()
        .rev()
        .map(|sent| JobMessage::decode(&sent.body).unwrap())
        .find(|message| message.job_id == job_id)
        .expect("the job was woken")
}

/// The jobs waiting and not woken, oldest first.
fn parked_jobs(world: &World) -> Vec<u64> {
    listed(world, false)
}

/// The jobs woken and not yet served (they keep their place until then).
fn woken_jobs(world: &World) -> Vec<u64> {
    listed(world, true)
}

fn listed(world: &World, woken: bool) -> Vec<u64> {
    world
        .waiting
        .listed(TEMPLATE)
        .iter()
        .filter(|parked| parked.woken_at.is_some() == woken)
        .map(|parked| JobMessage::decode(&parked.body).unwrap().job_id)
        .collect()
}

/// Ends a served job's instance as its finished command does (stop-runner on the SSM event).
async fn finish(world: &World, job_id: u64, (instance_id, command_id): &(String, String)) {
    world.github.set_job_status("my-org/app", job_id, "completed");
    world.stop.command_ended(instance_id, command_id, "Success").await;
}

/// A slot frees without anyone waking the template (a stop-runner that died after the release).
fn free_silently(world: &World, instance_id: &str) {
    let instance = world.fleet.instance(instance_id).unwrap();
    world.fleet.set_state(instance_id, InstanceState::Terminated);
    let (template, slot) = sophons_core::slots::slot_of(&instance).unwrap();
    world.slots.remove(template, slot);
}

#[tokio::test]
async fn a_job_that_finds_its_template_full_waits_in_the_list_and_spends_no_receive() {
    let world = world();
    fill(&world).await;
    let mut event = SqsEvent::default();
    let mut record = SqsMessage::default();
    record.message_id = Some("m-3".into());
    record.receipt_handle = Some("receipt-3".into());
    record.body = Some(job(3, Duration::from_secs(60)).encode());
    record.attributes.insert("ApproximateReceiveCount".into(), "1".into());
    event.records = vec![record];

    let response = world.create.handle_batch(event, far()).await;

    assert!(
        response.batch_item_failures.is_empty(),
        "a waiting job's message is deleted, not handed back: {:?}",
        response.batch_item_failures
    );
    assert!(
        world.queue.hidden().is_empty(),
        "no visibility change: the receive count stays"
    );
    assert_eq!(parked_jobs(&world), [3]);
    assert_eq!(world.fleet.live_instances().len(), 2);
}

#[tokio::test]
async fn when_a_runner_ends_the_oldest_waiting_job_goes_back_to_the_jobs_queue() {
    let world = world();
    let served = fill(&world).await;
    // Job 4 reaches create-runner first, but GitHub queued job 3 before it.
    assert!(matches!(
        serve(&world, &job(4, Duration::from_secs(100))).await,
        Outcome::Waiting(_)
    ));
    assert!(matches!(
        serve(&world, &job(3, Duration::from_secs(200))).await,
        Outcome::Waiting(_)
    ));
    assert_eq!(parked_jobs(&world), [3, 4]);
    assert!(sent_jobs(&world).is_empty());

    finish(&world, 1, &served[0]).await;

    assert_eq!(
        sent_jobs(&world),
        [(3, 1)],
        "one slot freed: the oldest job, on a trip of its own"
    );
    assert_eq!(parked_jobs(&world), [4]);
    assert_eq!(woken_jobs(&world), [3], "it keeps its place until it is served");
    let woken = woken_message(&world, 3);
    assert!(matches!(serve(&world, &woken).await, Outcome::Served { .. }));
    assert!(woken_jobs(&world).is_empty(), "served: taken off the list");
    assert_eq!(parked_jobs(&world), [4]);
}

#[tokio::test]
async fn a_slot_given_to_a_woken_job_is_not_given_again_by_the_next_wake() {
    let world = world();
    let served = fill(&world).await;
    serve(&world, &job(3, Duration::from_secs(300))).await;
    serve(&world, &job(4, Duration::from_secs(200))).await;
    free_silently(&world, &served[0].0);

    let first = waiting::wake(&world.config, &world.ports, TEMPLATE).await;
    // Another slot event, a park, the sweep: before job 3 has claimed its slot.
    let second = waiting::wake(&world.config, &world.ports, TEMPLATE).await;

    assert_eq!((first.room, first.moved), (1, 1));
    assert_eq!(
        (second.room, second.moved),
        (0, 0),
        "job 3 is on its way to the free slot"
    );
    assert_eq!(sent_jobs(&world), [(3, 1)]);
}

#[tokio::test]
async fn a_woken_job_whose_message_was_lost_is_woken_again() {
    let world = world();
    let served = fill(&world).await;
    serve(&world, &job(3, Duration::from_secs(300))).await;
    free_silently(&world, &served[0].0);
    waiting::wake(&world.config, &world.ports, TEMPLATE).await;
    assert_eq!(sent_jobs(&world), [(3, 1)]);
    // Its create-runner was killed before serving it, and the message is gone.
    world.waiting.age_marks(waiting::WOKEN_FOR);

    let again = waiting::wake(&world.config, &world.ports, TEMPLATE).await;

    assert_eq!(again.moved, 1);
    assert_eq!(
        sent_jobs(&world),
        [(3, 1), (3, 1)],
        "the same trip: a duplicate of the first is harmless"
    );
}

#[tokio::test]
async fn waiting_jobs_start_in_the_order_github_queued_them() {
    let world = world();
    let served = fill(&world).await;
    // Arriving in another order than GitHub queued them (13 oldest, 11 newest).
    for (job_id, ago) in [(12, 300), (11, 100), (13, 500)] {
        assert!(matches!(
            serve(&world, &job(job_id, Duration::from_secs(ago))).await,
            Outcome::Waiting(_)
        ));
    }
    let mut started = Vec::new();
    let mut running = served;
    let mut finished = 1;
    while !world.waiting.is_empty() {
        let ended = running.remove(0);
        finish(&world, finished, &ended).await;
        let (woken, trip) = *sent_jobs(&world).last().expect("a slot freed wakes a job");
        let mut message = world
            .queue
            .sent()
            .iter()
            .rev()
            .map(|sent| JobMessage::decode(&sent.body).unwrap())
            .find(|m| m.job_id == woken)
            .unwrap();
        assert_eq!(message.trip, trip);
        message.trip = trip;
        match world.create.serve(&message.encode(), 1, far()).await {
            Outcome::Served {
                instance_id,
                command_id,
                ..
            } => running.push((instance_id, command_id)),
            other => panic!("woken job {woken} should start: {other:?}"),
        }
        started.push(woken);
        finished = woken;
    }
    assert_eq!(started, [13, 12, 11]);
}

#[tokio::test]
async fn a_new_job_waits_behind_older_waiting_jobs_even_when_a_slot_is_free() {
    let world = world();
    let served = fill(&world).await;
    assert!(matches!(
        serve(&world, &job(3, Duration::from_secs(300))).await,
        Outcome::Waiting(_)
    ));
    // A slot frees and nobody wakes the template.
    free_silently(&world, &served[0].0);

    let newer = serve(&world, &job(4, Duration::from_secs(10))).await;

    assert!(matches!(newer, Outcome::Waiting(_)), "{newer:?}");
    assert_eq!(
        sent_jobs(&world),
        [(3, 1)],
        "its park woke the older job into the free slot"
    );
    assert_eq!(parked_jobs(&world), [4]);
    assert_eq!(woken_jobs(&world), [3]);
    let woken = woken_message(&world, 3);
    assert!(matches!(serve(&world, &woken).await, Outcome::Served { .. }));
}

#[tokio::test]
async fn a_woken_job_that_needs_no_runner_passes_its_slot_on() {
    let world = world();
    let served = fill(&world).await;
    serve(&world, &job(3, Duration::from_secs(300))).await;
    serve(&world, &job(4, Duration::from_secs(200))).await;
    finish(&world, 1, &served[0]).await;
    assert_eq!(sent_jobs(&world), [(3, 1)]);
    // Cancelled while it waited.
    world.github.set_job_status("my-org/app", 3, "completed");
    let woken = woken_message(&world, 3);

    assert!(matches!(serve(&world, &woken).await, Outcome::Acknowledged(_)));

    assert_eq!(
        sent_jobs(&world),
        [(3, 1), (4, 1)],
        "the unused slot goes to the next waiting job"
    );
    assert_eq!(woken_jobs(&world), [4], "job 3 is off the list, job 4 on its way");
    assert!(parked_jobs(&world).is_empty());
}

#[tokio::test]
async fn the_sweep_moves_waiting_jobs_whose_wake_was_missed() {
    let world = world();
    let served = fill(&world).await;
    serve(&world, &job(3, Duration::from_secs(300))).await;
    free_silently(&world, &served[0].0);

    let report = world.stop.sweep(far()).await;
    assert_eq!(report.woken, 1);
    assert_eq!(sent_jobs(&world), [(3, 1)]);
    assert_eq!(woken_jobs(&world), [3]);
}

#[tokio::test]
async fn the_sweep_reports_how_long_the_oldest_job_has_waited_per_template() {
    sophons_core::metrics::record();
    let world = world();
    fill(&world).await;
    serve(&world, &job(3, Duration::from_secs(1_000))).await;
    serve(&world, &job(4, Duration::from_secs(10))).await;

    world.stop.sweep(far()).await;

    let documents = sophons_core::metrics::recorded();
    let oldest: Vec<f64> = sophons_core::metrics::read(&documents)
        .unwrap()
        .into_iter()
        .filter(|d| d.name == "OldestWaiting" && d.unit == "Seconds")
        .filter(|d| d.dimensions.contains(&("template".to_string(), TEMPLATE.to_string())))
        .map(|d| d.value)
        .collect();
    assert!(
        oldest.iter().any(|waited| (1_000.0..1_100.0).contains(waited)),
        "the oldest of the two, job 3: {oldest:?}"
    );
}

#[tokio::test]
async fn a_job_waiting_longer_than_github_keeps_jobs_is_dropped() {
    let world = world();
    let expired = job(5, Duration::from_secs(25 * 3600));
    world.waiting.park_message(&expired).await;

    let woken = waiting::wake(&world.config, &world.ports, TEMPLATE).await;

    assert_eq!((woken.room, woken.moved, woken.dropped), (2, 0, 1));
    assert!(sent_jobs(&world).is_empty());
    assert!(world.waiting.is_empty());
}

#[tokio::test]
async fn when_the_waiting_list_fails_the_job_is_handed_back_for_the_retry_delay() {
    let world = world();
    fill(&world).await;
    let failed = || WaitingError::Failed {
        table: "sophons-waiting".into(),
        reason: "InternalServerError".into(),
    };
    // The look for older jobs fails (the job is served without it), then the park.
    world.waiting.fail_next([failed(), failed()]);

    let outcome = serve(&world, &job(3, Duration::from_secs(60))).await;

    match outcome {
        Outcome::HandedBack {
            kind: HandBack::Full,
            delay_seconds: 900,
            ..
        } => {}
        other => panic!("expected the old hand-back: {other:?}"),
    }
    assert!(world.waiting.is_empty());
}

#[tokio::test]
async fn a_job_whose_wake_could_not_be_sent_keeps_its_place_unmarked() {
    let world = world();
    let served = fill(&world).await;
    serve(&world, &job(3, Duration::from_secs(300))).await;
    world.queue.refuse_with(sophons_core::queue::QueueError::Refused {
        queue_url: QUEUE.into(),
        reason: "throttled".into(),
    });
    free_silently(&world, &served[0].0);

    let woken = waiting::wake(&world.config, &world.ports, TEMPLATE).await;

    assert_eq!(woken.moved, 0);
    assert!(sent_jobs(&world).is_empty());
    assert_eq!(
        parked_jobs(&world),
        [3],
        "it keeps its place, and no mark holds the free slot for it"
    );
    let again = waiting::wake(&world.config, &world.ports, TEMPLATE).await;
    assert_eq!(again.room, 1, "the next wake sees the slot free");
}
