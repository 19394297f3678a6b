//! Cold starts measured as Lambda measures Init Duration: from exec until the process first asks
//! the Runtime API for an event. The Rust binaries read their config document and secrets from
//! moto on loopback and build their clients in that time; Node loads `@aws-sdk/client-sqs` and
//! builds a client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::runtime_api::LambdaProcess;

use crate::process;

pub struct ColdStarts {
    /// Init Durations, sorted.
    pub inits: Vec<Duration>,
    /// The largest peak RSS seen at the end of init, in bytes.
    pub peak_rss: u64,
}

impl ColdStarts {
    pub fn median(&self) -> Duration {
        self.inits[self.inits.len() / 2]
    }

    pub fn p90(&self) -> Duration {
        self.inits[(self.inits.len() * 9 / 10).min(self.inits.len() - 1)]
    }
}

/// Starts `binary` `starts` times, one after another, each a fresh process as a cold Lambda is.
pub async fn measure(binary: &Path, name: &str, env: &[(&str, String)], starts: usize) -> Result<ColdStarts, String> {
    let mut inits = Vec::with_capacity(starts);
    let mut peak_rss = 0;
    // One start first, unmeasured: it pages the binary into the page cache, as Lambda's own
    // caching of a function's code does after its first start.
    for round in 0..=starts {
        let mut lambda = LambdaProcess::spawn(binary, name, env).await;
        let Some(init) = lambda.init_duration().await else {
            let status = lambda.wait_exit(Duration::from_secs(1)).await;
            return Err(format!(
                "{name} never asked for an event (exit: {status:?}, init error: {:?}):\n{}",
                lambda.init_error(),
                lambda.logs()
            ));
        };
        let pid = lambda.pid().ok_or_else(|| format!("{name} has no pid"))?;
        if round > 0 {
            inits.push(init);
            peak_rss = peak_rss.max(process::peak_rss(pid).unwrap_or(0));
        }
        drop(lambda);
    }
    inits.sort();
    Ok(ColdStarts { inits, peak_rss })
}

/// Writes the Node process Lambda's Node runtime would start into `dir` (where
/// `@aws-sdk/client-sqs` is installed) and answers its path: an executable script whose first
/// line is `node` itself, so that exec → ready is timed with nothing in between.
pub fn node_script(node: &Path, dir: &Path) -> Result<PathBuf, String> {
    if !node.is_file() {
        return Err(format!("{} is not a node executable", node.display()));
    }
    if !dir.join("node_modules/@aws-sdk/client-sqs").exists() {
        return Err(format!(
            "@aws-sdk/client-sqs is not installed in {}: scripts/bench.sh installs it with npm",
            dir.display()
        ));
    }
    let script = dir.join("ready.js");
    let text = format!("#!{}\n{}", node.display(), include_str!("../node/ready.js"));
    std::fs::write(&script, text).map_err(|e| format!("write {}: {e}", script.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", script.display()))?;
    Ok(script)
}
