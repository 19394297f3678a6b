//! What the binaries share about running under Lambda.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The invocation's deadline (milliseconds since the epoch, from the Runtime API) as an
/// `Instant`, so the flows can stop in time.
pub fn deadline(deadline_ms: u64) -> tokio::time::Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}
