//! The ports create-runner, stop-runner and move-jobs talk through, and how a Lambda connects them to AWS
//! and GitHub at cold start.

use std::sync::Arc;

use crate::commands::{Commands, SsmCommands};
use crate::config::Config;
use crate::fleet::{Ec2Fleet, Fleet};
use crate::github::{Github, OctocrabGithub};
use crate::interruptions::{DynamoInterruptions, Interruptions};
use crate::queue::{Queue, SqsQueue};
use crate::secrets::{Prefetched, Secrets, SsmSecrets};
use crate::slots::{DynamoSlots, Slots};
use crate::waiting::{DynamoWaiting, Waiting};

#[derive(Clone)]
pub struct Ports {
    pub fleet: Arc<dyn Fleet>,
    pub github: Arc<dyn Github>,
    pub secrets: Arc<dyn Secrets>,
    pub slots: Arc<dyn Slots>,
    pub commands: Arc<dyn Commands>,
    pub queue: Arc<dyn Queue>,
    /// The waiting list (`waiting`); None (no `waiting_table` in the config) hands a job that
    /// finds its template full back to the jobs queue for `retry_delay_seconds` instead.
    pub waiting: Option<Arc<dyn Waiting>>,
    /// Spot interruptions and back-offs (`interruptions`); None (no `interruptions_table`):
    /// interrupted jobs are not re-run and templates do not back off spot.
    pub interruptions: Option<Arc<dyn Interruptions>>,
}

impl Ports {
    /// Reads the config document and the GitHub credential from SSM (in one request when
    /// `SOPHONS_SECRET_PARAMS` names the credential) and builds the real adapters.
    /// A failure is logged (naming the parameter or key to fix) and fails the cold start.
    pub async fn connect() -> Result<(Arc<Config>, Self), Box<dyn std::error::Error + Send + Sync>> {
        let sdk = crate::aws::load().await;
        let ssm = SsmSecrets::new(&sdk);
        let cold_start = Prefetched::cold_start(&ssm).await;
        let config = Arc::new(
            Config::load(&cold_start)
                .await
                .inspect_err(|error| tracing::error!("{error}"))?,
        );
        let github = OctocrabGithub::connect(&config.github, &cold_start)
            .await
            .inspect_err(|error| tracing::error!("{error}"))?;
        drop(cold_start);
        let ports = Self {
            fleet: Arc::new(Ec2Fleet::new(&sdk)),
            github: Arc::new(github),
            secrets: Arc::new(ssm),
            slots: Arc::new(DynamoSlots::new(&sdk, &config.slots_table)),
            commands: Arc::new(SsmCommands::new(&sdk)),
            queue: Arc::new(SqsQueue::new(&sdk)),
            waiting: config
                .waiting_table
                .as_deref()
                .map(|table| Arc::new(DynamoWaiting::new(&sdk, table)) as Arc<dyn Waiting>),
            interruptions: config
                .interruptions_table
                .as_deref()
                .map(|table| Arc::new(DynamoInterruptions::new(&sdk, table)) as Arc<dyn Interruptions>),
        };
        Ok((config, ports))
    }
}
