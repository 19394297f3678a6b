//! The ports create-runner, stop-runner and move-jobs talk through, and how a Lambda connects them to AWS
//! and GitHub at cold start.

use std::sync::Arc;

use crate::commands::{Commands, SsmCommands};
use crate::config::Config;
use crate::fleet::{Ec2Fleet, Fleet};
use crate::github::{Github, OctocrabGithub};
use crate::interruptions::{DynamoInterruptions, Interruptions};
use crate::parameters::{Parameters, Prefetched, SsmParameters};
use crate::queue::{Queue, SqsQueue};
use crate::slots::{DynamoSlots, Slots};
use crate::waiting::{DynamoWaiting, Waiting};

#[derive(Clone)]
pub struct Ports {
    pub fleet: Arc<dyn Fleet>,
    pub github: Arc<dyn Github>,
    pub parameters: Arc<dyn Parameters>,
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

/// An instance to end, with what it owns.
pub struct Ending<'a> {
    pub instance_id: &'a str,
    /// Its spot request, when known (a one-time request of an instant fleet also closes by
    /// itself when its instance ends).
    pub spot_request_id: Option<&'a str>,
    /// Its runner, once registered.
    pub runner_id: Option<u64>,
    pub scope: &'a crate::github::RunnerScope,
    /// For the log lines.
    pub job_id: u64,
}

impl Ports {
    /// The one way an instance is ended, by create-runner (after a failed start, or an instance
    /// never started) and by stop-runner: terminate it, cancel its spot request, delete its JIT
    /// parameter, remove its runner. Each failure is logged for the sweep to retry; answers
    /// whether the instance was terminated (its launch slot may then be given back).
    pub async fn end_instance(&self, deployment: &str, ending: &Ending<'_>) -> bool {
        let Ending {
            instance_id,
            spot_request_id,
            runner_id,
            scope,
            job_id,
        } = *ending;
        let terminated = match self.fleet.terminate(instance_id).await {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(job_id, instance_id, %error, "cannot terminate; the sweep will retry");
                false
            }
        };
        if let Some(request) = spot_request_id
            && let Err(error) = self.fleet.cancel_spot_request(request).await
        {
            tracing::warn!(job_id, instance_id, %error, "cannot cancel the spot request");
        }
        let parameter = crate::names::jit_parameter(deployment, instance_id);
        if let Err(error) = self.parameters.delete(&parameter).await {
            tracing::error!(job_id, instance_id, %error, "cannot delete the JIT parameter; the sweep will retry");
        }
        if let Some(runner_id) = runner_id {
            match self.github.remove_runner(scope, runner_id).await {
                Ok(()) => {}
                // GitHub still shows the runner at its job for a moment after the box ends; a JIT
                // runner removes itself, and the sweep removes it once GitHub sees it offline.
                Err(crate::github::GithubError::Busy(reason)) => {
                    tracing::info!(
                        job_id,
                        instance_id,
                        runner_id,
                        reason,
                        "runner still busy on GitHub; left for the sweep"
                    )
                }
                Err(error) => {
                    tracing::warn!(job_id, instance_id, runner_id, %error, "cannot remove the runner; the sweep will retry")
                }
            }
        }
        terminated
    }

    /// Reads the config document and the GitHub credential from SSM (in one request when
    /// `SOPHONS_SECRET_PARAMS` names the credential) and builds the real adapters.
    /// A failure is logged (naming the parameter or key to fix) and fails the cold start.
    pub async fn connect() -> Result<(Arc<Config>, Self), Box<dyn std::error::Error + Send + Sync>> {
        let sdk = crate::aws::load().await;
        let ssm = SsmParameters::new(&sdk);
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
            parameters: Arc::new(ssm),
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
