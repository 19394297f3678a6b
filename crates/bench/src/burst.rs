//! A burst of jobs through the release create-runner, as the jobs queue's event source mapping
//! drives it: `lambdas` concurrent invocations (terraform's create_runner_max_concurrency) of
//! `batch` records each (create_runner_batch_size), against moto and the fake GitHub answering
//! after `latency`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sophons_core::job::{JobMessage, MESSAGE_VERSION};
use testkit::runtime_api::LambdaProcess;
use testkit::stack::{Stack, sqs_event};

use crate::process;

pub struct Burst {
    pub jobs: usize,
    pub elapsed: Duration,
    /// Jobs that got a runner (a JIT registration at the fake GitHub).
    pub served: usize,
    /// Records reported back as batch item failures (they would be retried).
    pub failed: usize,
    pub github_calls: usize,
    /// create-runner's CPU time for the jobs (init excluded), summed over its processes.
    pub cpu: Duration,
    pub peak_rss: u64,
    /// create-runner's invocations' wall time as Lambda bills it (each rounded up to the ms).
    pub billed: Duration,
}

impl Burst {
    pub fn jobs_per_second(&self) -> f64 {
        self.served as f64 / self.elapsed.as_secs_f64()
    }

    pub fn github_calls_per_job(&self) -> f64 {
        self.github_calls as f64 / self.jobs.max(1) as f64
    }
}

const TEMPLATE: &str = "cpu";
/// Lambda's longest timeout: moto slows as instances pile up, and a batch must not be cut short.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(900);

fn message(job_id: u64) -> String {
    JobMessage {
        version: MESSAGE_VERSION,
        delivery_id: format!("72d3162e-cc78-11e3-81ab-{job_id:012}"),
        job_id,
        run_id: 2_202_229_078,
        run_attempt: 1,
        repository: "my-org/app".into(),
        owner: "my-org".into(),
        name: "app".into(),
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
        template: TEMPLATE.into(),
        workflow_name: "CI".into(),
        job_name: format!("test ({job_id})"),
        job_url: format!("https://github.com/my-org/app/actions/runs/2202229078/job/{job_id}"),
        created_at: "2026-11-28T06:00:00Z".into(),
        received_at: sophons_core::job::now_rfc3339(),
        relaunches: 0,
        runner_failures: 0,
        trip: 0,
    }
    .encode()
}

/// `jobs` in rounds of at most `round` jobs, each against an emptied moto (moto's EC2 slows with
/// every instance it holds, far more than EC2 does); only the rounds themselves are timed.
pub async fn run_in_rounds(
    binary: &Path,
    jobs: usize,
    round: usize,
    latency: Duration,
    lambdas: usize,
    batch: usize,
) -> Result<Burst, String> {
    let mut total = Burst {
        jobs: 0,
        elapsed: Duration::ZERO,
        served: 0,
        failed: 0,
        github_calls: 0,
        cpu: Duration::ZERO,
        peak_rss: 0,
        billed: Duration::ZERO,
    };
    let mut first_job = 5_000_000_000u64;
    while total.jobs < jobs {
        let size = round.max(1).min(jobs - total.jobs);
        reset_moto(testkit::moto::endpoint())?;
        let part = run(binary, first_job, size, latency, lambdas, batch).await?;
        first_job += size as u64;
        total.jobs += part.jobs;
        total.elapsed += part.elapsed;
        total.served += part.served;
        total.failed += part.failed;
        total.github_calls += part.github_calls;
        total.cpu += part.cpu;
        total.peak_rss = total.peak_rss.max(part.peak_rss);
        total.billed += part.billed;
    }
    Ok(total)
}

async fn run(
    binary: &Path,
    first_job: u64,
    jobs: usize,
    latency: Duration,
    lambdas: usize,
    batch: usize,
) -> Result<Burst, String> {
    // Room for every job: the burst measures the pace, not max_runners.
    let stack = Stack::create(&[(TEMPLATE, (jobs * 2) as u32)]).await;
    stack.github.set_latency(latency);

    let mut processes = Vec::with_capacity(lambdas);
    for _ in 0..lambdas {
        let lambda = LambdaProcess::spawn(binary, "create-runner", &stack.env).await;
        if lambda.init_duration().await.is_none() {
            return Err(format!("create-runner did not start:\n{}", lambda.logs()));
        }
        let pid = lambda.pid().ok_or("create-runner has no pid")?;
        let cpu_at_ready = process::cpu_time(pid).unwrap_or_default();
        processes.push((lambda, pid, cpu_at_ready));
    }

    let events: VecDeque<Value> = (0..jobs)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|chunk| {
            let records: Vec<(String, String)> = chunk
                .iter()
                .map(|i| (format!("m-{i}"), message(first_job + *i as u64)))
                .collect();
            // (message id, receipt handle, body, receive count): the receipt is not a real one, as no
            // message was received; only a hand-back would use it.
            let borrowed: Vec<(&str, &str, &str, u32)> = records
                .iter()
                .map(|(id, body)| (id.as_str(), id.as_str(), body.as_str(), 1))
                .collect();
            sqs_event(&borrowed)
        })
        .collect();
    let events = Arc::new(Mutex::new(events));

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(lambdas);
    for (mut lambda, pid, cpu_at_ready) in processes {
        let events = Arc::clone(&events);
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            let mut billed = Duration::ZERO;
            loop {
                let Some(event) = events.lock().unwrap().pop_front() else {
                    break;
                };
                let invoked = Instant::now();
                let answer = lambda.invoke_with_deadline(event, INVOCATION_TIMEOUT).await;
                billed += Duration::from_millis(invoked.elapsed().as_micros().div_ceil(1000) as u64);
                match answer {
                    Ok(response) => failed += response["batchItemFailures"].as_array().map_or(0, Vec::len),
                    Err(error) => return Err(format!("create-runner failed: {error}\n{}", lambda.logs())),
                }
            }
            let cpu = process::cpu_time(pid).unwrap_or_default().saturating_sub(cpu_at_ready);
            let rss = process::peak_rss(pid).unwrap_or(0);
            Ok((failed, cpu, rss, billed))
        }));
    }
    let mut failed = 0;
    let mut cpu = Duration::ZERO;
    let mut peak_rss = 0;
    let mut billed = Duration::ZERO;
    for task in tasks {
        let (f, c, r, b) = task.await.map_err(|e| e.to_string())??;
        failed += f;
        cpu += c;
        peak_rss = peak_rss.max(r);
        billed += b;
    }
    let elapsed = started.elapsed();
    Ok(Burst {
        jobs,
        elapsed,
        served: stack.github.requests_to("POST", "generate-jitconfig").len(),
        failed,
        github_calls: stack.github.requests().len(),
        cpu,
        peak_rss,
        billed,
    })
}

/// Forgets every resource in moto, so that each burst starts from an empty account (moto's
/// DescribeInstances slows as instances pile up, which would blur the comparison).
pub fn reset_moto(endpoint: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).map_err(|e| format!("moto at {address}: {e}"))?;
    stream
        .write_all(b"POST /moto-api/reset HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "moto reset answered: {}",
            answer.lines().next().unwrap_or_default()
        ))
    }
}
