//! The config document all four Lambdas read: from `SOPHONS_CONFIG` (the JSON inline) or from the
//! SSM parameter named by `SOPHONS_CONFIG_PARAM` (what Terraform writes). It names SSM parameters for
//! every secret and never holds one. A bad document fails the cold start with one error naming the
//! key and the fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::parameters::Parameters;

pub const CONFIG_ENV: &str = "SOPHONS_CONFIG";
pub const CONFIG_PARAM_ENV: &str = "SOPHONS_CONFIG_PARAM";

/// GitHub caps webhook payloads at 25 MB; anything larger is not GitHub.
const MAX_BODY_LIMIT: usize = 25 * 1024 * 1024;
/// SQS's longest visibility timeout.
const MAX_VISIBILITY_SECONDS: u32 = 12 * 60 * 60;
/// `AWS-RunShellScript`'s longest execution timeout (48 h).
const MAX_COMMAND_TIMEOUT_SECONDS: u32 = 172_800;
/// A job's runner labels include `self-hosted` and the template name; GitHub takes at most 100.
const MAX_TEMPLATE_LABELS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Prefix of every name this deployment owns; the value of the `sophons:deployment` tag.
    pub deployment: String,
    pub queue_url: String,
    pub dlq_url: String,
    pub webhook_secret_param: String,
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    pub github: GithubConfig,
    /// `owner/name` allow-list; empty allows every repository of `github.owner`.
    #[serde(default)]
    pub repositories: Vec<String>,
    #[serde(default)]
    pub allow_public_repositories: bool,
    pub runner_script: RunnerScript,
    /// How long a job handed back to the queue stays hidden (full template, capacity errors).
    #[serde(default = "defaults::retry_delay_seconds")]
    pub retry_delay_seconds: u32,
    #[serde(default)]
    pub command: CommandConfig,
    #[serde(default)]
    pub sweep: SweepConfig,
    /// How many times a job whose runner died before taking it is sent back for a new runner.
    #[serde(default = "defaults::max_job_relaunches")]
    pub max_job_relaunches: u32,
    /// `arn:<partition>:ec2:<region>:<account>:instance/`: create-runner tags each JIT parameter
    /// with its instance's ARN, which the runner role's policy compares with the calling
    /// instance's (`ec2:SourceInstanceARN`). Terraform writes it; without it runners on AWS
    /// cannot read their JIT config.
    #[serde(default)]
    pub instance_arn_prefix: Option<String>,
    /// The DynamoDB table holding launch-slot claims (`slots`); Terraform creates and names it.
    pub slots_table: String,
    /// The DynamoDB table of jobs waiting for room (`waiting`); Terraform creates and names it.
    /// Unset: a job that finds its template full is handed back to the jobs queue for
    /// `retry_delay_seconds`, and spends one of its receives each time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_table: Option<String>,
    /// The DynamoDB table of spot interruptions (`interruptions`); Terraform creates and names
    /// it. Unset: an interrupted job is not re-run and no template backs off spot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruptions_table: Option<String>,
    /// When a template stops asking for spot for a while (`interruptions`).
    #[serde(default)]
    pub spot_backoff: SpotBackoff,
    /// A runner release to install instead of GitHub's current one (`release`). Unset (the
    /// default) follows GitHub's releases, which is what keeps runners registrable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_pin: Option<crate::release::RunnerPin>,
    /// Where move-jobs keeps an in-region copy of the current runner release (`runner_cache`).
    /// Unset: runners download it from GitHub at every boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_cache: Option<crate::runner_cache::RunnerCacheConfig>,
    pub templates: BTreeMap<String, Template>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    #[serde(default = "defaults::api_url")]
    pub api_url: String,
    pub owner: String,
    pub scope: Scope,
    #[serde(default = "defaults::runner_group_id")]
    pub runner_group_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_param: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppConfig>,
    /// The id of the webhook GitHub sends `workflow_job` deliveries through: the organisation's
    /// hook, or `webhook_repository`'s. Set, move-jobs asks GitHub to redeliver its failed
    /// deliveries (`redeliver`); unset, it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<u64>,
    /// `owner/name`: the hook is this repository's, not the organisation's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_repository: Option<String>,
    /// How far back move-jobs looks for failed deliveries, in minutes.
    #[serde(default = "defaults::redelivery_lookback_minutes")]
    pub redelivery_lookback_minutes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Runners register with the organisation `github.owner`.
    Org,
    /// Runners register with the job's repository.
    Repo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub app_id: u64,
    pub installation_id: u64,
    pub private_key_param: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerScript {
    pub bucket: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    #[serde(default = "defaults::command_timeout_seconds")]
    pub timeout_seconds: u32,
    #[serde(default = "defaults::command_log_group")]
    pub log_group: String,
    #[serde(default = "defaults::start_deadline_seconds")]
    pub start_deadline_seconds: u32,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            timeout_seconds: defaults::command_timeout_seconds(),
            log_group: defaults::command_log_group(),
            start_deadline_seconds: defaults::start_deadline_seconds(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    #[serde(default = "defaults::max_runner_lifetime_seconds")]
    pub max_runner_lifetime_seconds: u32,
    #[serde(default = "defaults::idle_runner_seconds")]
    pub idle_runner_seconds: u32,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            max_runner_lifetime_seconds: defaults::max_runner_lifetime_seconds(),
            idle_runner_seconds: defaults::idle_runner_seconds(),
        }
    }
}

/// After `after` spot losses (interruptions, or launches refused for capacity) of one template
/// within `within_minutes`, the template launches on-demand for `on_demand_minutes`. `after` 0
/// turns it off. Needs `interruptions_table`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotBackoff {
    #[serde(default = "defaults::spot_backoff_after")]
    pub after: u32,
    #[serde(default = "defaults::spot_backoff_within_minutes")]
    pub within_minutes: u32,
    #[serde(default = "defaults::spot_backoff_on_demand_minutes")]
    pub on_demand_minutes: u32,
}

impl Default for SpotBackoff {
    fn default() -> Self {
        Self {
            after: defaults::spot_backoff_after(),
            within_minutes: defaults::spot_backoff_within_minutes(),
            on_demand_minutes: defaults::spot_backoff_on_demand_minutes(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub labels: Vec<String>,
    pub launch_template: String,
    pub instance_types: Vec<String>,
    pub subnet_ids: Vec<String>,
    pub max_runners: u32,
    #[serde(default)]
    pub on_demand_fallback: bool,
    /// Highest Spot price per hour in USD (`"0.05"`); none means up to the on-demand price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot_max_price: Option<String>,
    /// OS packages the runner script installs before the runner starts (`git` unless given).
    #[serde(default = "defaults::packages")]
    pub packages: Vec<String>,
    /// Install Docker and let the runner's user use it.
    #[serde(default)]
    pub docker: bool,
    /// A job whose spot instance EC2 took back while it ran is re-run once, on-demand
    /// (`interruptions`). Off for jobs that must never run twice.
    #[serde(default = "defaults::yes")]
    pub rerun_interrupted_jobs: bool,
}

mod defaults {
    pub fn packages() -> Vec<String> {
        vec!["git".into()]
    }
    pub fn max_body_bytes() -> usize {
        1024 * 1024
    }
    pub fn api_url() -> String {
        "https://api.github.com".into()
    }
    pub fn runner_group_id() -> u64 {
        1
    }
    pub fn redelivery_lookback_minutes() -> u32 {
        180
    }
    pub fn retry_delay_seconds() -> u32 {
        900
    }
    pub fn command_timeout_seconds() -> u32 {
        6 * 60 * 60
    }
    pub fn command_log_group() -> String {
        "/sophons/runners".into()
    }
    pub fn start_deadline_seconds() -> u32 {
        300
    }
    pub fn max_runner_lifetime_seconds() -> u32 {
        8 * 60 * 60
    }
    pub fn idle_runner_seconds() -> u32 {
        15 * 60
    }
    pub fn max_job_relaunches() -> u32 {
        2
    }
    pub fn yes() -> bool {
        true
    }
    pub fn spot_backoff_after() -> u32 {
        3
    }
    pub fn spot_backoff_within_minutes() -> u32 {
        30
    }
    pub fn spot_backoff_on_demand_minutes() -> u32 {
        60
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "no config document: set {CONFIG_PARAM_ENV} to the name of the SSM parameter that holds it \
         (Terraform does this), or {CONFIG_ENV} to the JSON document itself"
    )]
    Missing,
    #[error(
        "could not read the config document from SSM parameter `{name}`: {reason}. Check that the \
         parameter exists in this region and that the function's role may ssm:GetParameter it"
    )]
    Unreadable { name: String, reason: String },
    #[error("config document, key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl Config {
    /// Reads the document named by the environment: inline JSON wins over a parameter name.
    pub async fn load(parameters: &dyn Parameters) -> Result<Self, ConfigError> {
        if let Ok(json) = std::env::var(CONFIG_ENV) {
            return Self::parse(&json);
        }
        let name = std::env::var(CONFIG_PARAM_ENV).map_err(|_| ConfigError::Missing)?;
        let json = parameters.get(&name).await.map_err(|error| ConfigError::Unreadable {
            name: name.clone(),
            reason: error.to_string(),
        })?;
        Self::parse(&json)
    }

    /// Parses and validates a document.
    pub fn parse(json: &str) -> Result<Self, ConfigError> {
        let deserializer = &mut serde_json::Deserializer::from_str(json);
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let key = error.path().to_string();
            let key = if key == "." { "(document)".into() } else { key };
            invalid(
                key,
                format!("{}; see the README's config document table", error.inner()),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Long because it is one check per key, in the document's order, each naming its key and its fix: split
    /// up, the rules of one document would be read in pieces.
    fn validate(&self) -> Result<(), ConfigError> {
        let deployment = &self.deployment;
        let starts_with_letter = deployment.starts_with(|c: char| c.is_ascii_lowercase());
        if deployment.is_empty()
            || deployment.len() > 24
            || !starts_with_letter
            || !deployment
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(invalid(
                "deployment",
                format!(
                    "`{deployment}` is not a usable name: use 1 to 24 characters of a-z, 0-9 and -, \
                     starting with a letter (it prefixes every resource, tag and parameter name)"
                ),
            ));
        }
        for (key, url) in [("queue_url", &self.queue_url), ("dlq_url", &self.dlq_url)] {
            if !url.starts_with("https://") && !url.starts_with("http://") {
                return Err(invalid(
                    key,
                    format!("`{url}` is not a queue URL: give the SQS queue URL (https://sqs...)"),
                ));
            }
        }
        require_parameter_name("webhook_secret_param", &self.webhook_secret_param)?;
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_LIMIT {
            return Err(invalid(
                "max_body_bytes",
                format!(
                    "{} is out of range: use 1 to {MAX_BODY_LIMIT} (GitHub's own cap)",
                    self.max_body_bytes
                ),
            ));
        }
        self.validate_github()?;
        if let Some(prefix) = &self.instance_arn_prefix
            && (!prefix.starts_with("arn:") || !prefix.ends_with(":instance/") || prefix.split(':').count() != 6)
        {
            return Err(invalid(
                "instance_arn_prefix",
                format!(
                    "`{prefix}` is not an instance ARN prefix: write `arn:<partition>:ec2:<region>:<account>:instance/`"
                ),
            ));
        }
        // DynamoDB's table names: 3 to 255 of a-z, A-Z, 0-9, `_`, `-`, `.`.
        let table_name = |name: &str| {
            (3..=255).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if !table_name(&self.slots_table) {
            return Err(invalid(
                "slots_table",
                format!(
                    "`{}` is not a DynamoDB table name: give the launch-slot table's name (Terraform's output \
                     `slots_table_name`)",
                    self.slots_table
                ),
            ));
        }
        if let Some(table) = self.waiting_table.as_deref().filter(|table| !table_name(table)) {
            return Err(invalid(
                "waiting_table",
                format!(
                    "`{table}` is not a DynamoDB table name: give the waiting list's table name (Terraform's output \
                     `waiting_table_name`), or leave the key out"
                ),
            ));
        }
        if let Some(table) = self.interruptions_table.as_deref().filter(|table| !table_name(table)) {
            return Err(invalid(
                "interruptions_table",
                format!(
                    "`{table}` is not a DynamoDB table name: give the interruptions table's name (Terraform's \
                     output `interruptions_table_name`), or leave the key out"
                ),
            ));
        }
        let backoff = &self.spot_backoff;
        for (key, minutes) in [
            ("spot_backoff.within_minutes", backoff.within_minutes),
            ("spot_backoff.on_demand_minutes", backoff.on_demand_minutes),
        ] {
            if backoff.after > 0 && minutes == 0 {
                return Err(invalid(
                    key,
                    "must be at least 1 (set spot_backoff.after to 0 to turn the back-off off)",
                ));
            }
        }
        for (index, repository) in self.repositories.iter().enumerate() {
            let owner = repository.split_once('/').map(|(owner, _)| owner);
            if !owner.is_some_and(|owner| owner.eq_ignore_ascii_case(&self.github.owner)) {
                return Err(invalid(
                    format!("repositories[{index}]"),
                    format!(
                        "`{repository}` is not a repository of `{}`: write it as `{}/<name>`",
                        self.github.owner, self.github.owner
                    ),
                ));
            }
        }
        if self.runner_script.bucket.is_empty() {
            return Err(invalid(
                "runner_script.bucket",
                "is empty: name the S3 bucket holding the runner script",
            ));
        }
        if self.runner_script.key.is_empty() {
            return Err(invalid(
                "runner_script.key",
                "is empty: give the runner script's object key",
            ));
        }
        if self.retry_delay_seconds > MAX_VISIBILITY_SECONDS {
            return Err(invalid(
                "retry_delay_seconds",
                format!(
                    "{} is longer than SQS allows: use at most {MAX_VISIBILITY_SECONDS}",
                    self.retry_delay_seconds
                ),
            ));
        }
        let command = &self.command;
        if command.timeout_seconds == 0 || command.timeout_seconds > MAX_COMMAND_TIMEOUT_SECONDS {
            return Err(invalid(
                "command.timeout_seconds",
                format!(
                    "{} is out of range: use 1 to {MAX_COMMAND_TIMEOUT_SECONDS} (48 h, the most AWS-RunShellScript allows)",
                    command.timeout_seconds
                ),
            ));
        }
        if command.log_group.is_empty() {
            return Err(invalid(
                "command.log_group",
                "is empty: name the CloudWatch log group for runner output",
            ));
        }
        if command.start_deadline_seconds == 0 || command.start_deadline_seconds > 840 {
            return Err(invalid(
                "command.start_deadline_seconds",
                format!(
                    "{} is out of range: use 1 to 840, which keeps it inside create-runner's 15-minute Lambda limit",
                    command.start_deadline_seconds
                ),
            ));
        }
        if self.sweep.max_runner_lifetime_seconds < command.timeout_seconds {
            return Err(invalid(
                "sweep.max_runner_lifetime_seconds",
                format!(
                    "{} is shorter than command.timeout_seconds ({}): the sweep would end runners still allowed to work",
                    self.sweep.max_runner_lifetime_seconds, command.timeout_seconds
                ),
            ));
        }
        if let Some(pin) = &self.runner_pin {
            validate_pin(pin)?;
        }
        if let Some(cache) = &self.runner_cache {
            if cache.bucket.is_empty() {
                return Err(invalid(
                    "runner_cache.bucket",
                    "is empty: name the bucket that keeps the runner packages",
                ));
            }
            if !cache.prefix.is_empty() && !cache.prefix.ends_with('/') {
                return Err(invalid(
                    "runner_cache.prefix",
                    format!("`{}` must end with `/` (e.g. actions-runner/)", cache.prefix),
                ));
            }
            if cache.architectures.is_empty() {
                return Err(invalid(
                    "runner_cache.architectures",
                    "is empty: list x64 and/or arm64, or remove runner_cache",
                ));
            }
        }
        if self.templates.is_empty() {
            return Err(invalid("templates", "is empty: define at least one runner template"));
        }
        for (name, template) in &self.templates {
            validate_template(name, template)?;
        }
        Ok(())
    }

    fn validate_github(&self) -> Result<(), ConfigError> {
        let github = &self.github;
        if !github.api_url.starts_with("https://") && !github.api_url.starts_with("http://") {
            return Err(invalid(
                "github.api_url",
                format!(
                    "`{}` is not a URL: use https://api.github.com, or https://<host>/api/v3 for GitHub Enterprise Server",
                    github.api_url
                ),
            ));
        }
        if github.owner.is_empty() {
            return Err(invalid(
                "github.owner",
                "is empty: give the organisation or user that owns the repositories",
            ));
        }
        if github.runner_group_id == 0 {
            return Err(invalid(
                "github.runner_group_id",
                "is 0: use 1 for the Default group, or your group's id",
            ));
        }
        validate_redelivery(github)?;
        match (&github.token_param, &github.app) {
            (Some(_), Some(_)) => Err(invalid(
                "github",
                "has both `token_param` and `app`: keep one credential, the App or the token",
            )),
            (None, None) => Err(invalid(
                "github",
                "has no credential: set `token_param` (an SSM parameter holding a PAT) or `app` \
                 ({app_id, installation_id, private_key_param})",
            )),
            (Some(name), None) => require_parameter_name("github.token_param", name),
            (None, Some(app)) => {
                if app.app_id == 0 {
                    return Err(invalid(
                        "github.app.app_id",
                        "is 0: give the App's id from its settings page",
                    ));
                }
                if app.installation_id == 0 {
                    return Err(invalid(
                        "github.app.installation_id",
                        "is 0: give the id of the App's installation on the owner",
                    ));
                }
                require_parameter_name("github.app.private_key_param", &app.private_key_param)
            }
        }
    }
}

/// GitHub keeps a hook's deliveries for 3 days and redelivers none older
/// (<https://docs.github.com/en/webhooks/testing-and-troubleshooting-webhooks/redelivering-webhooks>).
pub const MAX_REDELIVERY_LOOKBACK_MINUTES: u32 = 3 * 24 * 60;

fn validate_redelivery(github: &GithubConfig) -> Result<(), ConfigError> {
    if github.webhook_id == Some(0) {
        return Err(invalid(
            "github.webhook_id",
            "is 0: give the hook's id (the number in its settings URL, or the X-GitHub-Hook-ID header of a delivery), \
             or leave it out to turn redelivery off",
        ));
    }
    if let Some(repository) = &github.webhook_repository {
        let parts: Vec<&str> = repository.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|part| part.is_empty()) {
            return Err(invalid(
                "github.webhook_repository",
                format!(
                    "`{repository}` is not `owner/name`: name the repository whose hook it is, or leave it out for the organisation's hook"
                ),
            ));
        }
        if github.webhook_id.is_none() {
            return Err(invalid(
                "github.webhook_repository",
                "is set without `github.webhook_id`: give the repository hook's id too, or leave both out",
            ));
        }
    }
    if !(1..=MAX_REDELIVERY_LOOKBACK_MINUTES).contains(&github.redelivery_lookback_minutes) {
        return Err(invalid(
            "github.redelivery_lookback_minutes",
            format!(
                "{} is out of range: use 1 to {MAX_REDELIVERY_LOOKBACK_MINUTES} (GitHub keeps deliveries 3 days)",
                github.redelivery_lookback_minutes
            ),
        ));
    }
    Ok(())
}

fn require_parameter_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.-/".contains(c);
    if name.is_empty() || name.len() > 2048 || !name.chars().all(allowed) {
        return Err(invalid(
            key,
            format!("`{name}` is not an SSM parameter name: use letters, digits and _.-/ (e.g. /sophons/github/token)"),
        ));
    }
    Ok(())
}

fn validate_pin(pin: &crate::release::RunnerPin) -> Result<(), ConfigError> {
    use crate::release::{MIN_RUNNER_VERSION, Version, is_sha256};
    match Version::parse(&pin.version) {
        None => {
            return Err(invalid(
                "runner_pin.version",
                format!("`{}` is not a runner version such as 2.330.0", pin.version),
            ));
        }
        Some(version) if version < MIN_RUNNER_VERSION => {
            return Err(invalid(
                "runner_pin.version",
                format!(
                    "{version} is older than {MIN_RUNNER_VERSION}, which GitHub no longer registers: pin a current \
                     release or remove the pin"
                ),
            ));
        }
        Some(_) => {}
    }
    for (key, sum) in [
        ("runner_pin.sha256_x64", &pin.sha256_x64),
        ("runner_pin.sha256_arm64", &pin.sha256_arm64),
    ] {
        if !is_sha256(sum) {
            return Err(invalid(
                key,
                format!(
                    "`{sum}` is not a SHA-256: copy the package's checksum from its GitHub release page (64 hex digits)"
                ),
            ));
        }
    }
    Ok(())
}

fn validate_template(name: &str, template: &Template) -> Result<(), ConfigError> {
    let key = |field: &str| format!("templates.{name}.{field}");
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(invalid(
            format!("templates.{name}"),
            "is not a usable template name: use 1 to 64 characters of A-Z, a-z, 0-9, _ and - \
             (workflows name it in `runs-on`)",
        ));
    }
    for (index, label) in template.labels.iter().enumerate() {
        if label.trim().is_empty() || label.len() > 256 || label.contains(',') {
            return Err(invalid(
                key(&format!("labels[{index}]")),
                format!("`{label}` is not a usable runner label: use 1 to 256 characters, no commas"),
            ));
        }
    }
    if template.labels.len() + 2 > MAX_TEMPLATE_LABELS {
        return Err(invalid(
            key("labels"),
            format!(
                "has {} labels: GitHub takes at most 98 besides `self-hosted` and the template name",
                template.labels.len()
            ),
        ));
    }
    if template.launch_template.is_empty() {
        return Err(invalid(
            key("launch_template"),
            "is empty: name the EC2 launch template Terraform made for it",
        ));
    }
    if template.instance_types.is_empty() {
        return Err(invalid(
            key("instance_types"),
            "is empty: list at least one EC2 instance type",
        ));
    }
    if template.subnet_ids.is_empty() {
        return Err(invalid(key("subnet_ids"), "is empty: list at least one subnet id"));
    }
    if let Some(price) = &template.spot_max_price
        && price.parse::<f64>().map_or(true, |p| p.is_nan() || p <= 0.0)
    {
        return Err(invalid(
            key("spot_max_price"),
            format!("`{price}` is not a price: give USD per hour as a decimal, such as \"0.05\""),
        ));
    }
    if template.max_runners == 0 {
        return Err(invalid(
            key("max_runners"),
            "is 0: allow at least one runner, or remove the template",
        ));
    }
    // Passed to the package manager on the instance: names only, nothing a shell or dnf/apt-get
    // would read as an option.
    for (index, package) in template.packages.iter().enumerate() {
        if package.is_empty()
            || package.starts_with(['-', '.'])
            || !package
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
        {
            return Err(invalid(
                key(&format!("packages[{index}]")),
                format!("`{package}` is not a package name: use letters, digits and . _ + -"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example document, parsed.
    pub(crate) fn sample() -> Config {
        Config::parse(EXAMPLE).unwrap()
    }

    pub(crate) const EXAMPLE: &str = r#"{
      "deployment": "sophons",
      "queue_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/sophons-jobs",
      "dlq_url": "https://sqs.eu-west-1.amazonaws.com/123456789012/sophons-jobs-dlq",
      "webhook_secret_param": "/sophons/github/webhook-secret",
      "slots_table": "sophons-slots",
      "github": { "api_url": "https://api.github.com", "owner": "my-org", "scope": "org",
                  "runner_group_id": 1, "token_param": "/sophons/github/token" },
      "repositories": [],
      "allow_public_repositories": false,
      "runner_script": { "bucket": "sophons-scripts-123456789012", "key": "runner.sh" },
      "templates": {
        "template_cpu": { "labels": ["linux", "x64"], "launch_template": "sophons-template_cpu",
                          "instance_types": ["c7i.large", "m7i.large"], "subnet_ids": ["subnet-0abc"],
                          "max_runners": 20, "on_demand_fallback": true }
      }
    }"#;

    fn with(edit: impl FnOnce(&mut serde_json::Value)) -> Result<Config, ConfigError> {
        let mut value: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        edit(&mut value);
        Config::parse(&value.to_string())
    }

    fn key_of(result: Result<Config, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid document, got {other:?}"),
        }
    }

    #[test]
    fn the_documented_example_is_accepted_with_defaults_filled_in() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert_eq!(config.max_body_bytes, 1024 * 1024);
        assert_eq!(config.retry_delay_seconds, 900);
        assert_eq!(config.command.timeout_seconds, 21_600);
        assert_eq!(config.command.start_deadline_seconds, 300);
        assert_eq!(config.github.scope, Scope::Org);
        assert_eq!(config.templates["template_cpu"].max_runners, 20);
        assert_eq!(config.templates["template_cpu"].packages, vec!["git".to_string()]);
        assert!(!config.templates["template_cpu"].docker);
        assert_eq!(config.runner_pin, None, "GitHub's current release unless pinned");
    }

    #[test]
    fn a_current_pin_with_its_checksums_is_accepted() {
        let config = with(|v| {
            v["runner_pin"] =
                serde_json::json!({"version": "2.330.0", "sha256_x64": "a".repeat(64), "sha256_arm64": "B".repeat(64)})
        })
        .unwrap();
        assert_eq!(config.runner_pin.unwrap().version, "2.330.0");
    }

    #[test]
    fn an_app_credential_is_accepted_in_place_of_a_token() {
        let config = with(|v| {
            v["github"].as_object_mut().unwrap().remove("token_param");
            v["github"]["app"] =
                serde_json::json!({"app_id": 1, "installation_id": 2, "private_key_param": "/sophons/github/app-key"});
        })
        .unwrap();
        assert_eq!(config.github.app.unwrap().installation_id, 2);
    }

    #[test]
    fn redelivery_is_off_unless_a_webhook_id_is_given_and_looks_back_three_hours() {
        let config = sample();
        assert_eq!(config.github.webhook_id, None);
        assert_eq!(config.github.webhook_repository, None);
        assert_eq!(config.github.redelivery_lookback_minutes, 180);
    }

    #[test]
    fn an_organisation_or_repository_hook_is_accepted_with_a_look_back_up_to_three_days() {
        let config = with(|v| {
            v["github"]["webhook_id"] = 123_456.into();
            v["github"]["redelivery_lookback_minutes"] = 4320.into();
        })
        .unwrap();
        assert_eq!(config.github.webhook_id, Some(123_456));
        assert_eq!(config.github.redelivery_lookback_minutes, 4320);
        let config = with(|v| {
            v["github"]["webhook_id"] = 9.into();
            v["github"]["webhook_repository"] = "my-org/app".into();
        })
        .unwrap();
        assert_eq!(config.github.webhook_repository.as_deref(), Some("my-org/app"));
    }

    #[test]
    fn a_look_back_past_githubs_three_days_names_the_key_and_the_range() {
        let error = with(|v| v["github"]["redelivery_lookback_minutes"] = 5000.into())
            .unwrap_err()
            .to_string();
        assert!(error.contains("github.redelivery_lookback_minutes"), "{error}");
        assert!(error.contains("1 to 4320"), "{error}");
    }

    #[test]
    fn both_credentials_at_once_are_refused() {
        let result = with(|v| {
            v["github"]["app"] = serde_json::json!({"app_id": 1, "installation_id": 2, "private_key_param": "/k"});
        });
        assert_eq!(key_of(result), "github");
    }

    #[test]
    fn no_credential_is_refused() {
        let result = with(|v| {
            v["github"].as_object_mut().unwrap().remove("token_param");
        });
        assert_eq!(key_of(result), "github");
    }

    #[test]
    fn an_unknown_scope_names_the_key_and_the_choices() {
        let result = with(|v| v["github"]["scope"] = "orgs".into());
        let error = result.unwrap_err().to_string();
        assert!(error.contains("github.scope"), "{error}");
        assert!(error.contains("`org`") && error.contains("`repo`"), "{error}");
    }

    #[test]
    fn a_misspelt_key_is_refused_rather_than_ignored() {
        let result = with(|v| v["templates"]["template_cpu"]["max_runner"] = 3.into());
        let error = result.unwrap_err().to_string();
        assert!(error.contains("templates.template_cpu"), "{error}");
        assert!(error.contains("max_runner"), "{error}");
    }

    #[test]
    fn a_missing_key_is_named() {
        let result = with(|v| {
            v.as_object_mut().unwrap().remove("queue_url");
        });
        let error = result.unwrap_err().to_string();
        assert!(error.contains("queue_url"), "{error}");
    }

    /// Long because it is the table of bad values, one row per rule of `validate`.
    #[test]
    fn each_bad_value_names_its_key() {
        type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("deployment", Box::new(|v| v["deployment"] = "Sophons Prod".into())),
            ("deployment", Box::new(|v| v["deployment"] = "".into())),
            ("queue_url", Box::new(|v| v["queue_url"] = "sophons-jobs".into())),
            (
                "webhook_secret_param",
                Box::new(|v| v["webhook_secret_param"] = "a secret!".into()),
            ),
            ("max_body_bytes", Box::new(|v| v["max_body_bytes"] = 0.into())),
            ("slots_table", Box::new(|v| v["slots_table"] = "/sophons/slots".into())),
            ("slots_table", Box::new(|v| v["slots_table"] = "".into())),
            (
                "instance_arn_prefix",
                Box::new(|v| v["instance_arn_prefix"] = "arn:aws:ec2:us-east-1:123456789012:instance".into()),
            ),
            (
                "github.api_url",
                Box::new(|v| v["github"]["api_url"] = "api.github.com".into()),
            ),
            ("github.owner", Box::new(|v| v["github"]["owner"] = "".into())),
            (
                "github.runner_group_id",
                Box::new(|v| v["github"]["runner_group_id"] = 0.into()),
            ),
            ("github.webhook_id", Box::new(|v| v["github"]["webhook_id"] = 0.into())),
            (
                "github.webhook_repository",
                Box::new(|v| {
                    v["github"]["webhook_id"] = 7.into();
                    v["github"]["webhook_repository"] = "app".into();
                }),
            ),
            (
                "github.webhook_repository",
                Box::new(|v| v["github"]["webhook_repository"] = "my-org/app".into()),
            ),
            (
                "github.redelivery_lookback_minutes",
                Box::new(|v| v["github"]["redelivery_lookback_minutes"] = 0.into()),
            ),
            (
                "github.redelivery_lookback_minutes",
                Box::new(|v| v["github"]["redelivery_lookback_minutes"] = 4321.into()),
            ),
            (
                "repositories[0]",
                Box::new(|v| v["repositories"] = serde_json::json!(["other/repo"])),
            ),
            (
                "runner_script.bucket",
                Box::new(|v| v["runner_script"]["bucket"] = "".into()),
            ),
            (
                "retry_delay_seconds",
                Box::new(|v| v["retry_delay_seconds"] = 50_000.into()),
            ),
            (
                "waiting_table",
                Box::new(|v| v["waiting_table"] = "jobs waiting".into()),
            ),
            (
                "command.timeout_seconds",
                Box::new(|v| v["command"] = serde_json::json!({"timeout_seconds": 200_000})),
            ),
            (
                "command.start_deadline_seconds",
                Box::new(|v| v["command"] = serde_json::json!({"start_deadline_seconds": 900})),
            ),
            (
                "sweep.max_runner_lifetime_seconds",
                Box::new(|v| v["sweep"] = serde_json::json!({"max_runner_lifetime_seconds": 60})),
            ),
            ("templates", Box::new(|v| v["templates"] = serde_json::json!({}))),
            (
                "templates.bad name",
                Box::new(|v| v["templates"]["bad name"] = v["templates"]["template_cpu"].clone()),
            ),
            (
                "templates.template_cpu.labels[0]",
                Box::new(|v| v["templates"]["template_cpu"]["labels"] = serde_json::json!(["a,b"])),
            ),
            (
                "templates.template_cpu.instance_types",
                Box::new(|v| v["templates"]["template_cpu"]["instance_types"] = serde_json::json!([])),
            ),
            (
                "templates.template_cpu.subnet_ids",
                Box::new(|v| v["templates"]["template_cpu"]["subnet_ids"] = serde_json::json!([])),
            ),
            (
                "templates.template_cpu.max_runners",
                Box::new(|v| v["templates"]["template_cpu"]["max_runners"] = 0.into()),
            ),
            (
                "templates.template_cpu.launch_template",
                Box::new(|v| v["templates"]["template_cpu"]["launch_template"] = "".into()),
            ),
            (
                "templates.template_cpu.spot_max_price",
                Box::new(|v| v["templates"]["template_cpu"]["spot_max_price"] = "cheap".into()),
            ),
            (
                "templates.template_cpu.packages[1]",
                Box::new(|v| v["templates"]["template_cpu"]["packages"] = serde_json::json!(["git", "-y; rm"])),
            ),
            (
                "runner_pin.version",
                Box::new(
                    |v| v["runner_pin"] = serde_json::json!({"version": "2.326.0", "sha256_x64": "a".repeat(64), "sha256_arm64": "b".repeat(64)}),
                ),
            ),
            (
                "runner_pin.version",
                Box::new(
                    |v| v["runner_pin"] = serde_json::json!({"version": "latest", "sha256_x64": "a".repeat(64), "sha256_arm64": "b".repeat(64)}),
                ),
            ),
            (
                "runner_pin.sha256_arm64",
                Box::new(|v| {
                    v["runner_pin"] = serde_json::json!({"version": "2.330.0", "sha256_x64": "a".repeat(64), "sha256_arm64": "unknown"})
                }),
            ),
            (
                "runner_cache.bucket",
                Box::new(|v| v["runner_cache"] = serde_json::json!({"bucket": ""})),
            ),
            (
                "runner_cache.prefix",
                Box::new(|v| v["runner_cache"] = serde_json::json!({"bucket": "b", "prefix": "actions-runner"})),
            ),
            (
                "runner_cache.architectures",
                Box::new(|v| v["runner_cache"] = serde_json::json!({"bucket": "b", "architectures": []})),
            ),
            (
                "runner_cache.architectures[0]",
                Box::new(|v| v["runner_cache"] = serde_json::json!({"bucket": "b", "architectures": ["x86_64"]})),
            ),
        ];
        for (expected, edit) in cases {
            assert_eq!(key_of(with(edit)), expected);
        }
    }

    #[test]
    fn malformed_json_is_reported_as_the_document() {
        let error = Config::parse("{not json").unwrap_err();
        assert!(matches!(error, ConfigError::Invalid { .. }), "{error}");
    }
}
