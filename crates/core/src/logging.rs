//! JSON log lines, one object per line, as CloudWatch Logs Insights reads them best.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Installs the JSON subscriber. `RUST_LOG` takes `tracing` target directives (`info`,
/// `sophons_core=debug,info`); an unreadable value falls back to `info` rather than silencing logs.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| value.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let layer = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false);
    // A second call (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layer).with(filter).try_init();
}

/// The `step` field of the log lines that mark a job's way through the system: what an operator
/// filters on, and what the demo builds its timelines from. One name per step, here.
pub mod step {
    /// create-runner: the instance was launched.
    pub const LAUNCHED: &str = "launched";
    /// create-runner: the runner was registered with GitHub (JIT config stored).
    pub const REGISTERED: &str = "registered";
    /// create-runner: the runner's command was sent; the box is starting it.
    pub const COMMAND_SENT: &str = "command_sent";
    /// create-runner: the template was full; the job waits in the waiting list.
    pub const PARKED: &str = "parked";
    /// stop-runner, the sweep or create-runner: a freed slot sent the job back to the jobs queue.
    pub const WOKEN: &str = "woken";
    /// A job dropped from the waiting list after GitHub's 24 hours.
    pub const WAIT_EXPIRED: &str = "wait_expired";
    /// stop-runner: the instance was ended (terminated, parameter deleted, runner removed).
    pub const INSTANCE_ENDED: &str = "instance_ended";
    /// stop-runner: EC2 takes a spot instance back; its job is followed for a re-run.
    pub const INTERRUPTED: &str = "interrupted";
    /// The sweep: GitHub was asked to re-run an interrupted job.
    pub const RERUN_ASKED: &str = "rerun_asked";
    /// The sweep: an interrupted job is not re-run (the log line says why).
    pub const RERUN_NOT_NEEDED: &str = "rerun_not_needed";
    /// create-runner: a queued job is the re-run of an interrupted job; it launches on-demand.
    pub const RERUN_RECOGNISED: &str = "rerun_recognised";
    /// A template lost spot too often: it launches on-demand for a while.
    pub const SPOT_BACKOFF_STARTED: &str = "spot_backoff_started";
    /// The sweep: a template's spot back-off is over.
    pub const SPOT_BACKOFF_ENDED: &str = "spot_backoff_ended";
}
