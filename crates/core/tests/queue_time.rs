//! Queue time under a burst: 10 × a template's `max_runners` jobs queued at once, runners that
//! take 1–5 minutes, create-runner, stop-runner, the sweep and move-jobs over the fakes, in
//! simulated seconds. Run twice: without the waiting list (a full template hands the job back
//! for `retry_delay_seconds`, three hand-backs send it to the DLQ, move-jobs brings it back
//! hourly) and with it (the job waits in the list; each freed slot wakes the oldest).
//!
//! It prints queued → launched (p50/p90/p99/max) and how long a freed slot stays unused while jobs
//! wait, the table docs/performance.md keeps:
//! `cargo test -p sophons-core --test queue_time -- --nocapture` (`make bench` runs it).

mod common;

use common::{Fakes, Rng};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsEvent, SqsMessage};
use sophons_core::config::Config;
use sophons_core::create::CreateRunner;
use sophons_core::fleet::{TAG_COMMAND_ID, TAG_JOB_ID};
use sophons_core::job::{JobMessage, rfc3339};
use sophons_core::ports::Ports;
use sophons_core::queue::{Queue, QueueError, Received};
use sophons_core::redrive::MoveJobs;
use sophons_core::stop::StopRunner;
use tokio::time::Instant;

const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/jobs";
const TEMPLATE: &str = "template_cpu";
const MAX_RUNNERS: u32 = 10;
const BURST: u64 = 10 * MAX_RUNNERS as u64;
/// The jobs queue's redrive policy and visibility timeout (Terraform's defaults).
const MAX_RECEIVES: u32 = 3;
const VISIBILITY_SECONDS: u64 = 36 * 60;
/// The event source mapping: records per batch, batches per second.
const BATCH_SIZE: usize = 10;
const BATCHES_PER_SECOND: usize = 5;
const SWEEP_EVERY: u64 = 15 * 60;
const MOVE_JOBS_EVERY: u64 = 60 * 60;
const LIMIT_SECONDS: u64 = 12 * 3600;

struct Message {
    body: String,
    delivery_id: String,
    visible_at: u64,
    receives: u32,
    receipt: Option<String>,
}

/// SQS in simulated seconds: visibility, receive counts, and the DLQ after `MAX_RECEIVES`.
#[derive(Default)]
struct SimQueue {
    now: AtomicU64,
    counter: AtomicU64,
    queues: Mutex<BTreeMap<String, Vec<Message>>>,
    dead_lettered: AtomicU64,
}

impl SimQueue {
    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn dlq() -> String {
        format!("{QUEUE}-dlq")
    }

    /// What the event source mapping receives this second, as Lambda records.
    fn poll(&self, most: usize) -> Vec<SqsMessage> {
        let now = self.now();
        let mut queues = self.queues.lock().unwrap();
        let mut moved = Vec::new();
        let mut records = Vec::new();
        let jobs = queues.entry(QUEUE.to_string()).or_default();
        for (index, message) in jobs.iter_mut().enumerate() {
            if records.len() == most {
                break;
            }
            if message.visible_at > now {
                continue;
            }
            message.receives += 1;
            if message.receives > MAX_RECEIVES {
                moved.push(index);
                continue;
            }
            let receipt = format!("r-{}", self.counter.fetch_add(1, Ordering::SeqCst));
            message.receipt = Some(receipt.clone());
            message.visible_at = now + VISIBILITY_SECONDS;
            let mut record = SqsMessage::default();
            record.message_id = Some(receipt.clone());
            record.receipt_handle = Some(receipt);
            record.body = Some(message.body.clone());
            record
                .attributes
                .insert("ApproximateReceiveCount".into(), message.receives.to_string());
            records.push(record);
        }
        let mut dead = Vec::new();
        for index in moved.into_iter().rev() {
            let mut message = jobs.remove(index);
            message.receives = 0;
            message.receipt = None;
            self.dead_lettered.fetch_add(1, Ordering::SeqCst);
            dead.push(message);
        }
        queues.entry(Self::dlq()).or_default().extend(dead.into_iter().rev());
        records
    }

    fn delete_receipt(&self, receipt: &str) {
        for queue in self.queues.lock().unwrap().values_mut() {
            queue.retain(|m| m.receipt.as_deref() != Some(receipt));
        }
    }
}

#[async_trait]
impl Queue for SimQueue {
    /// A message sent is received from the next second on (the event source mapping's long poll).
    async fn send(&self, queue_url: &str, body: &str, delivery_id: &str) -> Result<String, QueueError> {
        let id = self.counter.fetch_add(1, Ordering::SeqCst);
        self.queues
            .lock()
            .unwrap()
            .entry(queue_url.to_string())
            .or_default()
            .push(Message {
                body: body.to_string(),
                delivery_id: delivery_id.to_string(),
                visible_at: self.now() + 1,
                receives: 0,
                receipt: None,
            });
        Ok(format!("m-{id}"))
    }

    async fn hide(&self, _queue_url: &str, receipt_handle: &str, seconds: u32) -> Result<(), QueueError> {
        let now = self.now();
        for queue in self.queues.lock().unwrap().values_mut() {
            for message in queue.iter_mut() {
                if message.receipt.as_deref() == Some(receipt_handle) {
                    message.visible_at = now + u64::from(seconds);
                }
            }
        }
        Ok(())
    }

    async fn receive(&self, queue_url: &str, max: u32, _wait_seconds: u32) -> Result<Vec<Received>, QueueError> {
        let now = self.now();
        let mut queues = self.queues.lock().unwrap();
        let queue = queues.entry(queue_url.to_string()).or_default();
        let mut received = Vec::new();
        for message in queue.iter_mut().filter(|m| m.visible_at <= now).take(max as usize) {
            let receipt = format!("r-{}", self.counter.fetch_add(1, Ordering::SeqCst));
            message.receipt = Some(receipt.clone());
            message.visible_at = now + 30;
            received.push(Received {
                message_id: receipt.clone(),
                receipt_handle: receipt,
                body: message.body.clone(),
                delivery_id: message.delivery_id.clone(),
            });
        }
        Ok(received)
    }

    async fn delete(&self, _queue_url: &str, receipt_handle: &str) -> Result<(), QueueError> {
        self.delete_receipt(receipt_handle);
        Ok(())
    }
}

/// What one run measured, in simulated seconds.
struct Measured {
    /// Per job: queued → its instance launched.
    queued_to_launched: Vec<u64>,
    /// Per launch after the first `max_runners`: how long the slot it took had been free.
    slot_unused: Vec<u64>,
    dead_lettered: u64,
    /// Jobs that waited in the list, in the order they launched, against the order GitHub queued them.
    out_of_order: usize,
    peak_live: usize,
    finished_at: u64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(values: &[u64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    format!(
        "p50 {:>5} s  p90 {:>5} s  p99 {:>5} s  max {:>5} s",
        percentile(&sorted, 50.0),
        percentile(&sorted, 90.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(0)
    )
}

async fn run(with_waiting_list: bool, seed: u64) -> Measured {
    let mut document = common::config_json(QUEUE);
    document["templates"][TEMPLATE]["max_runners"] = MAX_RUNNERS.into();
    let config = Arc::new(Config::parse(&document.to_string()).unwrap());
    let fakes = if with_waiting_list {
        Fakes::new().with_waiting()
    } else {
        Fakes::new()
    };
    let queue = Arc::new(SimQueue::default());
    let ports = Ports {
        queue: queue.clone(),
        ..fakes.ports()
    };
    let create = Arc::new(CreateRunner::new(config.clone(), ports.clone()));
    let stop = StopRunner::new(config.clone(), ports.clone());
    let move_jobs = MoveJobs::new(config.clone(), queue.clone(), fakes.github.clone());
    let far = || Instant::now() + Duration::from_secs(900);

    // The burst: GitHub queues every job at t = 0, one millisecond apart (its order).
    let queued_at = SystemTime::now();
    for job_id in 1..=BURST {
        let created = rfc3339(queued_at + Duration::from_millis(job_id));
        let message = JobMessage {
            job_name: format!("matrix ({job_id})"),
            created_at: created.clone(),
            received_at: created,
            ..common::job_message(job_id, TEMPLATE)
        };
        queue
            .send(QUEUE, &message.encode(), &message.delivery_id)
            .await
            .unwrap();
    }

    let mut rng = Rng(seed);
    let mut launched: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut ends: BTreeMap<u64, Vec<(u64, String, String)>> = BTreeMap::new();
    let mut free_since: VecDeque<u64> = (0..MAX_RUNNERS).map(|_| 0).collect();
    let mut slot_unused = Vec::new();
    let mut finished = 0;
    let mut peak_live = 0;
    let mut now = 0;
    while finished < BURST && now < LIMIT_SECONDS {
        now += 1;
        queue.now.store(now, Ordering::SeqCst);
        // Runners whose job ended: SSM's status event reaches stop-runner a second later.
        for (job_id, instance_id, command_id) in ends.remove(&now).unwrap_or_default() {
            fakes.github.set_job_status("my-org/app", job_id, "completed");
            stop.command_ended(&instance_id, &command_id, "Success").await;
            free_since.push_back(now);
            finished += 1;
        }
        if now % SWEEP_EVERY == 0 {
            stop.sweep(far()).await;
        }
        if now % MOVE_JOBS_EVERY == 0 {
            move_jobs.run(far()).await;
        }
        for _ in 0..BATCHES_PER_SECOND {
            let records = queue.poll(BATCH_SIZE);
            if records.is_empty() {
                break;
            }
            let receipts: Vec<String> = records.iter().filter_map(|r| r.receipt_handle.clone()).collect();
            let mut event = SqsEvent::default();
            event.records = records;
            let response = create.handle_batch(event, far()).await;
            let failed: BTreeSet<String> = response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect();
            // The event source mapping deletes what did not fail.
            for receipt in receipts.iter().filter(|r| !failed.contains(*r)) {
                queue.delete_receipt(receipt);
            }
        }
        let live = fakes.fleet.live_instances();
        peak_live = peak_live.max(live.len());
        for instance in live {
            if !seen.insert(instance.id.clone()) {
                continue;
            }
            let job_id: u64 = instance.tag(TAG_JOB_ID).unwrap().parse().unwrap();
            let command_id = instance.tag(TAG_COMMAND_ID).unwrap_or_default().to_string();
            launched.entry(job_id).or_insert(now);
            slot_unused.push(now - free_since.pop_front().unwrap_or(now));
            let runs_for = 60 + rng.next() % 241;
            ends.entry(now + runs_for)
                .or_default()
                .push((job_id, instance.id.clone(), command_id));
        }
    }
    assert_eq!(finished, BURST, "every job ran within {LIMIT_SECONDS} s");
    // The order of the jobs that waited: the first max_runners took the free slots as they came.
    let mut by_launch: Vec<(u64, u64)> = launched.iter().map(|(job, at)| (*at, *job)).collect();
    by_launch.sort();
    let waited: Vec<u64> = by_launch
        .iter()
        .skip(MAX_RUNNERS as usize)
        .map(|(_, job)| *job)
        .collect();
    let out_of_order = waited.windows(2).filter(|pair| pair[0] > pair[1]).count();
    Measured {
        queued_to_launched: launched.values().copied().collect(),
        slot_unused: slot_unused.into_iter().skip(MAX_RUNNERS as usize).collect(),
        dead_lettered: queue.dead_lettered.load(Ordering::SeqCst),
        out_of_order,
        peak_live,
        finished_at: now,
    }
}

fn print(label: &str, measured: &Measured) {
    println!("{label}");
    println!("  queued -> launched   {}", summary(&measured.queued_to_launched));
    println!("  freed slot unused    {}", summary(&measured.slot_unused));
    println!(
        "  dead-lettered {}, launched out of queue order {}, peak live {} of {MAX_RUNNERS}, burst done at {} s",
        measured.dead_lettered, measured.out_of_order, measured.peak_live, measured.finished_at
    );
}

#[tokio::test]
async fn with_the_waiting_list_a_burst_starts_within_seconds_of_room_in_queue_order() {
    println!("burst of {BURST} jobs on a template of max_runners {MAX_RUNNERS}, runners 60-300 s (simulated)");
    for seed in [1, 2, 3] {
        let before = run(false, seed).await;
        let after = run(true, seed).await;
        print(
            &format!("seed {seed}, without the waiting list (hand back for 900 s, DLQ after 3)"),
            &before,
        );
        print(&format!("seed {seed}, with the waiting list"), &after);

        assert_eq!(after.dead_lettered, 0, "waiting for room never reaches the DLQ");
        assert_eq!(
            after.out_of_order, 0,
            "waiting jobs start in the order GitHub queued them"
        );
        let longest = after.slot_unused.iter().max().copied().unwrap_or(0);
        assert!(
            longest <= 10,
            "a freed slot stayed unused {longest} s while jobs waited"
        );
        assert!(after.peak_live <= MAX_RUNNERS as usize);
        assert!(before.peak_live <= MAX_RUNNERS as usize);
        // The harm the list removes, so that this test fails if the comparison stops meaning it.
        assert!(
            before.dead_lettered > 0,
            "without the list, waiting jobs spend their receives"
        );
    }
}
