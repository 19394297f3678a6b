//! `sophons-bench`: issue 8's measurements, printed as one Markdown table. `scripts/bench.sh`
//! builds what it needs, runs the criterion benches, starts moto and runs this.
//!
//! It runs the release binaries as Lambda runs them (behind a Runtime API endpoint, against
//! moto), so it can itself be a debug build: it only spawns processes and times them from outside.

mod burst;
mod cold;
mod cost;
mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

const BINARIES: [&str; 4] = ["autoscaler", "create-runner", "stop-runner", "move-jobs"];
const USAGE: &str = "usage: sophons-bench [--target DIR] [--starts N] [--node PATH] [--alt PATH] \
                     [--jobs N] [--burst-latency MS] [--lambdas N] [--batch N] \
                     [--sweep MS,MS..] [--sweep-jobs N] [--sweep-lambdas N] [--round N]";

struct Options {
    target: PathBuf,
    starts: usize,
    jobs: usize,
    burst_latency: Duration,
    lambdas: usize,
    sweep: Vec<Duration>,
    sweep_jobs: usize,
    sweep_lambdas: usize,
    /// Jobs per moto reset.
    round: usize,
    batch: usize,
    node: Option<PathBuf>,
    /// autoscaler built with the alternative release profile (see scripts/bench.sh).
    alt: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        target: testkit::workspace_root().join("target"),
        starts: 20,
        jobs: 1000,
        burst_latency: Duration::ZERO,
        lambdas: 10,
        sweep: [0, 250, 500, 1000].map(Duration::from_millis).to_vec(),
        sweep_jobs: 100,
        sweep_lambdas: 2,
        round: 100,
        batch: 5,
        node: find_on_path("node"),
        alt: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        let number = |text: String| text.parse::<usize>().map_err(|e| format!("{flag} {text}: {e}"));
        match flag.as_str() {
            "--target" => options.target = PathBuf::from(value()?),
            "--starts" => options.starts = number(value()?)?.max(1),
            "--jobs" => options.jobs = number(value()?)?,
            "--lambdas" => options.lambdas = number(value()?)?.max(1),
            "--batch" => options.batch = number(value()?)?.clamp(1, 10),
            "--node" => options.node = Some(PathBuf::from(value()?)),
            "--alt" => options.alt = Some(PathBuf::from(value()?)).filter(|path| path.exists()),
            "--burst-latency" => options.burst_latency = Duration::from_millis(number(value()?)? as u64),
            "--round" => options.round = number(value()?)?.max(1),
            "--sweep-jobs" => options.sweep_jobs = number(value()?)?,
            "--sweep-lambdas" => options.sweep_lambdas = number(value()?)?.max(1),
            "--sweep" => {
                options.sweep = value()?
                    .split(',')
                    .map(|ms| ms.trim().parse::<u64>().map(Duration::from_millis))
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--sweep: {e}"))?
            }
            _ => return Err(USAGE.to_string()),
        }
    }
    Ok(options)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// `make build`'s output when it is there, else `cargo build --release`'s.
fn binary(target: &Path, name: &str) -> Option<PathBuf> {
    [
        target.join("lambda").join(name).join("bootstrap"),
        target.join("release").join(name),
    ]
    .into_iter()
    .find(|path| path.is_file())
}

/// One row of the table.
struct Row {
    measure: String,
    result: String,
    target: &'static str,
    verdict: String,
}

fn row(measure: impl Into<String>, result: impl Into<String>, target: &'static str, verdict: impl Into<String>) -> Row {
    Row {
        measure: measure.into(),
        result: result.into(),
        target,
        verdict: verdict.into(),
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn us(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// "met" or "missed by N%" for a value that must stay at or under `limit`.
fn verdict_of(value: f64, limit: f64) -> String {
    if value <= limit {
        "met".into()
    } else {
        format!("missed by {:.0}%", (value / limit - 1.0) * 100.0)
    }
}

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("sophons-bench: {error}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let options = options()?;
    let scratch = options.target.join("bench");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // 1 and 4. Cold start, memory and size of each binary; the same for Node.
    let stack = testkit::stack::Stack::create(&[("cpu", 20)]).await;
    let mut rust_medians = Vec::new();
    let mut binaries = Vec::new();
    for name in BINARIES {
        let path = binary(&options.target, name)
            .ok_or_else(|| format!("no release build of {name}: run `make build` (or `cargo build --release`)"))?;
        binaries.push((name, path));
    }
    notes.push(format!(
        "binaries: {}",
        binaries[0].1.parent().unwrap_or(Path::new("")).display()
    ));
    // Cold starts talk to moto itself, not through the AWS guard: the guard is a proxy in this
    // (debug-built) process that would add its own hop to every call of the start.
    let cold_env: Vec<(&str, String)> = stack
        .env
        .iter()
        .map(|(name, value)| match *name {
            "AWS_ENDPOINT_URL" => (*name, testkit::moto::raw_endpoint().to_string()),
            _ => (*name, value.clone()),
        })
        .collect();
    for (name, path) in &binaries {
        let starts = cold::measure(path, name, &cold_env, options.starts).await?;
        eprintln!("{name}: {} starts, median {}", starts.inits.len(), ms(starts.median()));
        rust_medians.push((*name, starts.median()));
        rows.push(row(
            format!(
                "{name}: cold start (Init Duration, median of {}; p90)",
                starts.inits.len()
            ),
            format!("{} ({})", ms(starts.median()), ms(starts.p90())),
            "≤ 25 ms",
            verdict_of(starts.median().as_secs_f64() * 1e3, 25.0),
        ));
        rows.push(row(
            format!("{name}: peak RSS at ready"),
            mib(starts.peak_rss),
            "≤ 25 MB",
            verdict_of(starts.peak_rss as f64 / (1024.0 * 1024.0), 25.0),
        ));
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let zipped = process::zipped_size(path, &scratch).unwrap_or(0);
        rows.push(row(
            format!("{name}: size zipped (binary)"),
            format!("{} ({})", mib(zipped), mib(size)),
            "",
            "",
        ));
    }
    // Before the cold start read its parameters together: the same binaries, each parameter read
    // on its own (no SOPHONS_SECRET_PARAMS), one round trip after the other.
    let one_by_one: Vec<(&str, String)> = cold_env
        .iter()
        .filter(|(name, _)| *name != sophons_core::parameters::SECRET_PARAMS_ENV)
        .cloned()
        .collect();
    for (name, path) in binaries
        .iter()
        .filter(|(name, _)| ["autoscaler", "create-runner"].contains(name))
    {
        let starts = cold::measure(path, name, &one_by_one, options.starts).await?;
        rows.push(row(
            format!("{name}: cold start reading each parameter on its own (the way before; median; p90)"),
            format!("{} ({})", ms(starts.median()), ms(starts.p90())),
            "",
            "",
        ));
    }
    if let Some(alt) = &options.alt {
        let starts = cold::measure(alt, "autoscaler", &cold_env, options.starts).await?;
        let size = std::fs::metadata(alt).map(|m| m.len()).unwrap_or(0);
        let zipped = process::zipped_size(alt, &scratch.join("alt")).unwrap_or(0);
        rows.push(row(
            "autoscaler built with opt-level \"s\": cold start median; peak RSS; zipped (binary)",
            format!(
                "{}; {}; {} ({})",
                ms(starts.median()),
                mib(starts.peak_rss),
                mib(zipped),
                mib(size)
            ),
            "",
            "",
        ));
    }
    match &options.node {
        Some(node) => match cold::node_script(node, &options.target.join("bench-node")) {
            Ok(script) => {
                let starts = cold::measure(&script, "node-sqs", &cold_env, options.starts).await?;
                let (fastest, slowest) = (
                    rust_medians.iter().map(|(_, d)| *d).min().unwrap_or_default(),
                    rust_medians.iter().map(|(_, d)| *d).max().unwrap_or_default(),
                );
                let ratio = |rust: Duration| starts.median().as_secs_f64() / rust.as_secs_f64().max(1e-9);
                rows.push(row(
                    format!(
                        "Node {} + @aws-sdk/client-sqs: cold start (median; p90)",
                        node_version(node)
                    ),
                    format!("{} ({})", ms(starts.median()), ms(starts.p90())),
                    "",
                    format!("{:.1}–{:.1}× the Rust binaries", ratio(slowest), ratio(fastest)),
                ));
                rows.push(row("Node: peak RSS at ready", mib(starts.peak_rss), "", ""));
            }
            Err(error) => notes.push(format!("Node skipped: {error}")),
        },
        None => notes.push("Node skipped: no `node` on PATH".into()),
    }
    drop(stack);

    // 2 and 3. Criterion's figures (scripts/bench.sh ran `cargo bench` first).
    let criterion = options.target.join("criterion");
    let hmac = process::criterion_median(&criterion, "webhook", "hmac_sha256");
    let skim = process::criterion_median(&criterion, "webhook", "json_skim");
    let full = process::criterion_median(&criterion, "webhook", "verify_parse_match_build");
    match (hmac, skim, full) {
        (Some(hmac), Some(skim), Some(full)) => {
            let bytes = process::criterion_bytes(&criterion, "webhook", "hmac_sha256").unwrap_or(0);
            rows.push(row(
                format!("webhook, {bytes} B delivery: HMAC-SHA256 alone"),
                us(hmac),
                "",
                "",
            ));
            rows.push(row(
                "webhook: JSON skim of the body (serde IgnoredAny)",
                us(skim),
                "",
                "",
            ));
            for (name, label) in [
                ("match", "webhook: match the labels to a template (of 3)"),
                ("build_message", "webhook: build + encode the queue message"),
            ] {
                if let Some(part) = process::criterion_median(&criterion, "webhook", name) {
                    rows.push(row(label, us(part), "", ""));
                }
            }
            rows.push(row("webhook: verify + parse + match + build", us(full), "", ""));
            let ratio = full.as_secs_f64() / hmac.as_secs_f64();
            rows.push(row(
                "webhook: hot path / HMAC",
                format!("{ratio:.2}×"),
                "≤ 2×",
                verdict_of(ratio, 2.0),
            ));
        }
        _ => notes.push("webhook rows skipped: run `cargo bench -p sophons-core --bench webhook` first".into()),
    }
    match process::criterion_median(&criterion, "create_runner", "serve_one_job") {
        Some(per_job) => rows.push(row(
            "create-runner: own CPU per job over the fakes",
            us(per_job),
            "≤ 5 ms",
            verdict_of(per_job.as_secs_f64() * 1e3, 5.0),
        )),
        None => notes.push("create-runner row skipped: run `cargo bench -p sophons-core --bench create` first".into()),
    }

    // 3. The burst at the deployment's defaults, then the same at fewer jobs in flight while the
    // fake GitHub slows down: the pace must follow GitHub's latency, not our code.
    let create_runner = &binaries[1].1;
    let mut runs = Vec::new();
    if options.jobs > 0 {
        runs.push((options.jobs, options.burst_latency, options.lambdas));
    }
    if options.sweep_jobs > 0 {
        runs.extend(
            options
                .sweep
                .iter()
                .map(|latency| (options.sweep_jobs, *latency, options.sweep_lambdas)),
        );
    }
    let mut seconds_per_job_at_zero = std::collections::HashMap::new();
    for (jobs, latency, lambdas) in runs {
        let result =
            match burst::run_in_rounds(create_runner, jobs, options.round, latency, lambdas, options.batch).await {
                Ok(result) => result,
                Err(error) => {
                    notes.push(format!("burst of {jobs} at {} ms failed: {error}", latency.as_millis()));
                    continue;
                }
            };
        eprintln!(
            "burst of {jobs} at {} ms, {lambdas} Lambdas: {:.1} jobs/s",
            latency.as_millis(),
            result.jobs_per_second()
        );
        let in_flight = (lambdas * options.batch.min(sophons_core::create::BATCH_CONCURRENCY)) as f64;
        // A closed system: `in_flight` jobs, each waiting for its GitHub calls (an
        // infinite server) and for moto and our code (one shared server; its time per job is the
        // inverse of the pace with no latency). Its pace is at most
        // min(1 / D, in_flight / (D + calls × latency)).
        if latency.is_zero() {
            seconds_per_job_at_zero.insert(lambdas, 1.0 / result.jobs_per_second());
        }
        let verdict = match seconds_per_job_at_zero.get(&lambdas) {
            Some(d) if !latency.is_zero() => {
                let github_bound = in_flight / (d + result.github_calls_per_job() * latency.as_secs_f64());
                format!(
                    "bound {:.1} jobs/s (GitHub-bound {:.1})",
                    github_bound.min(1.0 / d),
                    github_bound
                )
            }
            _ => format!(
                "ceiling of moto + our code; {:.1} GitHub calls/job",
                result.github_calls_per_job()
            ),
        };
        rows.push(row(
            format!(
                "burst of {jobs} jobs, GitHub latency {} ms, {lambdas} Lambdas × {} records, moto reset every {}",
                latency.as_millis(),
                options.batch,
                options.round
            ),
            format!(
                "{:.1} jobs/s ({} served, {} retried)",
                result.jobs_per_second(),
                result.served,
                result.failed
            ),
            "",
            verdict,
        ));
        if lambdas == options.lambdas && jobs == options.jobs {
            let cpu_per_job = result.cpu.as_secs_f64() / result.served.max(1) as f64;
            rows.push(row(
                "burst: create-runner CPU per job (release binary, /proc stat); peak RSS",
                format!("{}; {}", us(Duration::from_secs_f64(cpu_per_job)), mib(result.peak_rss)),
                "≤ 5 ms",
                verdict_of(cpu_per_job * 1e3, 5.0),
            ));
            // What 1,000 jobs cost the control plane (cost.rs has the prices and their pages).
            // create-runner's billed time is measured here; the webhook's three invocations
            // (~20 ms each: one SQS send on AWS) and stop-runner's one (~500 ms: terminate,
            // delete, remove the runner) are estimates. On AWS create-runner also waits for the
            // instance's SSM agent before SendCommand succeeds (moto answers at once): the second
            // row adds 30 s of it per job, one job per invocation (a trickle; a burst shares it).
            let billed_per_job = result.billed / result.served.max(1) as u32;
            let others = Duration::from_millis(3 * 20 + 500);
            rows.push(row(
                format!(
                    "control-plane cost per 1,000 jobs (create-runner billed {} per job as measured here, others \
                     estimated {}; us-east-1 prices)",
                    ms(billed_per_job),
                    ms(others)
                ),
                cost::describe(&cost::PerJob::with_lambda(billed_per_job + others)),
                "",
                "",
            ));
            rows.push(row(
                "control-plane cost per 1,000 jobs, create-runner waiting 30 s per job for the SSM agent (worst case)",
                cost::describe(&cost::PerJob::with_lambda(
                    billed_per_job + others + Duration::from_secs(30),
                )),
                "",
                "",
            ));
        }
    }

    print_table(&rows);
    for note in notes {
        println!("\n{note}");
    }
    Ok(())
}

fn node_version(node: &Path) -> String {
    std::process::Command::new(node)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn print_table(rows: &[Row]) {
    let headers = ["measure", "result", "target", "verdict"];
    let cells: Vec<[&str; 4]> = rows
        .iter()
        .map(|r| [r.measure.as_str(), r.result.as_str(), r.target, r.verdict.as_str()])
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let print = |line: [&str; 4]| {
        let padded: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    print(headers);
    println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
    for line in cells {
        print(line);
    }
}
