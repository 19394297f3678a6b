//! SSM Run Command: starting the runner script on an instance, and asking how it ended.

use async_trait::async_trait;

pub const DOCUMENT: &str = "AWS-RunShellScript";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    pub instance_id: String,
    pub commands: Vec<String>,
    pub execution_timeout_seconds: u32,
    pub log_group: String,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandStatus {
    /// Pending, InProgress, Delayed: the runner may still be working.
    Running,
    /// A terminal status, as SSM names it (Success, Failed, TimedOut, Cancelled, ...).
    Ended(String),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// `InvalidInstanceId`: the SSM agent on a new instance has not registered yet.
    #[error("the SSM agent on {0} has not registered yet")]
    NotReady(String),
    #[error("SSM Run Command failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Commands: Send + Sync {
    /// Sends the command; answers its command id.
    async fn send(&self, request: &CommandRequest) -> Result<String, CommandError>;
    async fn status(&self, command_id: &str, instance_id: &str) -> Result<CommandStatus, CommandError>;
}

/// Quotes a value for a POSIX shell: nothing inside single quotes is interpreted.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The commands SSM runs: fetch the runner script, run it with the JIT parameter's NAME and
/// `env` exported (the runner release and its checksums, the template's packages: nothing
/// secret, since SSM keeps commands in its history).
pub fn runner_commands(bucket: &str, key: &str, parameter_name: &str, env: &[(&str, String)]) -> Vec<String> {
    let mut commands = vec![
        "set -euo pipefail".into(),
        "mkdir -p /opt/sophons".into(),
        format!(
            "aws s3 cp {} /opt/sophons/runner.sh --only-show-errors",
            shell_quote(&format!("s3://{bucket}/{key}"))
        ),
    ];
    commands.extend(
        env.iter()
            .map(|(name, value)| format!("export {name}={}", shell_quote(value))),
    );
    commands.push(format!(
        "exec bash /opt/sophons/runner.sh {}",
        shell_quote(parameter_name)
    ));
    commands
}

#[derive(Clone)]
pub struct SsmCommands {
    client: aws_sdk_ssm::Client,
}

impl SsmCommands {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_ssm::Client::new(sdk),
        }
    }
}

#[async_trait]
impl Commands for SsmCommands {
    async fn send(&self, request: &CommandRequest) -> Result<String, CommandError> {
        let output = self
            .client
            .send_command()
            .document_name(DOCUMENT)
            .instance_ids(&request.instance_id)
            .parameters("commands", request.commands.clone())
            .parameters("executionTimeout", vec![request.execution_timeout_seconds.to_string()])
            .comment(&request.comment)
            .cloud_watch_output_config(
                aws_sdk_ssm::types::CloudWatchOutputConfig::builder()
                    .cloud_watch_log_group_name(&request.log_group)
                    .cloud_watch_output_enabled(true)
                    .build(),
            )
            .send()
            .await
            .map_err(|error| match crate::aws::code(&error) {
                Some("InvalidInstanceId") => CommandError::NotReady(request.instance_id.clone()),
                _ => CommandError::Failed(crate::aws::describe(&error)),
            })?;
        output
            .command
            .and_then(|command| command.command_id)
            .ok_or_else(|| CommandError::Failed("SendCommand answered without a command id".into()))
    }

    async fn status(&self, command_id: &str, instance_id: &str) -> Result<CommandStatus, CommandError> {
        let output = self
            .client
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|error| CommandError::Failed(crate::aws::describe(&error)))?;
        let status = output.status.map(|s| s.as_str().to_string()).unwrap_or_default();
        Ok(match status.as_str() {
            "Pending" | "InProgress" | "Delayed" | "" => CommandStatus::Running,
            _ => CommandStatus::Ended(status),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_nothing_for_the_shell_to_interpret() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's $(rm -rf /)"), r"'it'\''s $(rm -rf /)'");
    }

    #[test]
    fn the_command_carries_the_parameter_name_and_never_a_value() {
        let commands = runner_commands("bucket", "runner.sh", "/sophons/jit/i-0abc", &[]);
        assert!(
            commands
                .iter()
                .any(|c| c == "exec bash /opt/sophons/runner.sh '/sophons/jit/i-0abc'")
        );
        assert!(commands.iter().any(|c| c.contains("'s3://bucket/runner.sh'")));
    }

    #[test]
    fn the_script_environment_is_exported_quoted_before_the_script_runs() {
        let env = [
            ("SOPHONS_RUNNER_VERSION", "2.330.0".to_string()),
            ("SOPHONS_PACKAGES", "git jq; reboot".to_string()),
        ];
        let commands = runner_commands("bucket", "runner.sh", "/sophons/jit/i-0abc", &env);
        let exec = commands.iter().position(|c| c.starts_with("exec ")).unwrap();
        let version = commands
            .iter()
            .position(|c| c == "export SOPHONS_RUNNER_VERSION='2.330.0'")
            .unwrap();
        assert!(version < exec, "{commands:?}");
        assert!(commands.contains(&"export SOPHONS_PACKAGES='git jq; reboot'".to_string()));
    }
}
