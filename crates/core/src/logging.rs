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
