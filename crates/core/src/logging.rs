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
}
