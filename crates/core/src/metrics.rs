//! CloudWatch metrics as log lines in the Embedded Metric Format (EMF): one JSON object per line
//! on stdout, which Lambda sends to CloudWatch Logs and CloudWatch turns into metrics, with no
//! PutMetricData call and no extra permission
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>).
//!
//! Namespace `sophons`; every metric has the dimension `deployment`, and `template` where a job
//! or template is known; a few add one small closed set (`capacity`, `reason`, `decision`).
//! A document can also publish its metrics under a smaller set of its dimensions (`Emf::also_by`),
//! which CloudWatch keeps as a metric of its own: `Launches` by `deployment` alone lets one alarm
//! count every launch without listing templates and capacities.
//! Never a per-job or per-repository dimension: each distinct value would be a metric of its own,
//! billed as one. The job id and repository ride along as properties (searchable in Logs Insights,
//! not metrics).
//!
//! Written by hand rather than with a crate: `metrics_cloudwatch_embedded` (the maintained one)
//! sits behind the `metrics` facade and wraps the Lambda runtime loop to flush per invocation,
//! which would add two dependencies to every binary for what is one `serde_json` object here.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::job::parse_rfc3339;

pub const NAMESPACE: &str = "sophons";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Count,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Seconds => "Seconds",
            Self::Count => "Count",
        }
    }
}

/// The metric names, shared by the writers, the tests, the demo and Terraform's dashboard
/// (terraform/monitoring.tf).
pub mod name {
    /// Seconds from the job's `created_at` to the webhook queueing it.
    pub const ENQUEUED_AFTER: &str = "EnqueuedAfter";
    /// Seconds from `created_at` to the job started on its runner (GitHub's `started_at`).
    pub const JOB_STARTED_AFTER: &str = "JobStartedAfter";
    /// Seconds from the job's start to its end (GitHub's `started_at` to `completed_at`).
    pub const JOB_DURATION: &str = "JobDuration";
    /// Seconds from `created_at` to its instance launched.
    pub const LAUNCHED_AFTER: &str = "LaunchedAfter";
    /// Seconds from `created_at` to the runner command sent.
    pub const COMMAND_SENT_AFTER: &str = "CommandSentAfter";
    /// Launches, by `capacity` (spot, on-demand); also by `deployment` alone, for the no-launch
    /// alarm.
    pub const LAUNCHES: &str = "Launches";
    /// Jobs handed back to the queue, by `reason`.
    pub const HAND_BACKS: &str = "HandBacks";
    /// Jobs move-jobs found in the dead-letter queue, by `reason` (what it did with them).
    pub const DEAD_LETTERS: &str = "DeadLetters";
    /// Jobs launched again after their runner ended without running them.
    pub const RELAUNCHES: &str = "Relaunches";
    /// Spot instances EC2 took back, counted when stop-runner or the sweep looks after them.
    pub const SPOT_RECLAIMS: &str = "SpotReclaims";
    /// Webhook deliveries, by `decision` (enqueued, ignored, rejected...).
    pub const WEBHOOK_ANSWERS: &str = "WebhookAnswers";
    /// Live instances per template, from the sweep.
    pub const LIVE_INSTANCES: &str = "LiveInstances";
    /// Free launch slots per template (`max_runners` − live instances), from the sweep.
    pub const FREE_SLOTS: &str = "FreeSlots";
    /// Seconds since GitHub queued the oldest job in a template's waiting list, from the sweep
    /// (nothing while the list is empty).
    pub const OLDEST_WAITING: &str = "OldestWaiting";

    /// Every metric the Lambdas write (the dashboard's contract).
    pub const ALL: [&str; 14] = [
        ENQUEUED_AFTER,
        LAUNCHED_AFTER,
        COMMAND_SENT_AFTER,
        JOB_STARTED_AFTER,
        JOB_DURATION,
        LAUNCHES,
        HAND_BACKS,
        DEAD_LETTERS,
        RELAUNCHES,
        SPOT_RECLAIMS,
        WEBHOOK_ANSWERS,
        LIVE_INSTANCES,
        FREE_SLOTS,
        OLDEST_WAITING,
    ];
}

/// One EMF document: its dimensions, metrics and properties.
#[derive(Debug, Clone)]
pub struct Emf {
    dimensions: Vec<(&'static str, String)>,
    /// Smaller dimension sets the metrics are also published under, each a subset of `dimensions`.
    also: Vec<Vec<&'static str>>,
    metrics: Vec<(&'static str, Unit, f64)>,
    properties: Map<String, Value>,
}

impl Emf {
    pub fn new(deployment: &str) -> Self {
        Self {
            dimensions: vec![("deployment", deployment.to_string())],
            also: Vec::new(),
            metrics: Vec::new(),
            properties: Map::new(),
        }
    }

    pub fn dimension(mut self, name: &'static str, value: &str) -> Self {
        self.dimensions.push((name, value.to_string()));
        self
    }

    /// Also publishes the document's metrics under these of its dimensions alone: one more
    /// CloudWatch metric per value combination, billed as one, that sums over the dimensions left
    /// out. Each name must be a dimension already added, and the set smaller than the document's
    /// (the same set twice would count every value twice). Tests catch a wrong name; in Lambda it is
    /// left out rather than making CloudWatch refuse the whole document.
    pub fn also_by(mut self, names: &[&'static str]) -> Self {
        let known = |name: &&'static str| self.dimensions.iter().any(|(dimension, _)| dimension == name);
        debug_assert!(
            names.iter().all(known),
            "also_by({names:?}): every name must be one of the document's dimensions {:?}",
            self.dimensions
        );
        let set: Vec<&'static str> = names.iter().copied().filter(known).collect();
        debug_assert!(
            set.len() < self.dimensions.len(),
            "also_by({names:?}) repeats the document's own dimension set"
        );
        if set.len() < self.dimensions.len() {
            self.also.push(set);
        }
        self
    }

    pub fn count(mut self, name: &'static str, value: u64) -> Self {
        self.metrics.push((name, Unit::Count, value as f64));
        self
    }

    pub fn seconds(mut self, name: &'static str, value: Duration) -> Self {
        self.metrics.push((name, Unit::Seconds, value.as_secs_f64()));
        self
    }

    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.to_string(), value.into());
        self
    }

    /// The document as CloudWatch reads it, stamped `at`.
    pub fn to_json(&self, at: SystemTime) -> Value {
        let timestamp = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut document = self.properties.clone();
        for (name, value) in &self.dimensions {
            document.insert((*name).to_string(), json!(value));
        }
        for (name, _, value) in &self.metrics {
            document.insert((*name).to_string(), json!(value));
        }
        // Every set is a metric of its own in CloudWatch, the document's full set first.
        let full: Vec<&str> = self.dimensions.iter().map(|(name, _)| *name).collect();
        let sets: Vec<&[&str]> = std::iter::once(full.as_slice())
            .chain(self.also.iter().map(Vec::as_slice))
            .collect();
        document.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": sets,
                    "Metrics": self.metrics.iter()
                        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
                        .collect::<Vec<_>>(),
                }],
            }),
        );
        Value::Object(document)
    }

    /// Writes the document as one line on stdout, in a Lambda execution environment only (where
    /// `AWS_LAMBDA_RUNTIME_API` is set): the simulation and the flow tests run the same code
    /// millions of times and read no metric. Nothing is written for a document without a metric.
    pub fn emit(self) {
        static IN_LAMBDA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if self.metrics.is_empty() {
            return;
        }
        if RECORDING.load(std::sync::atomic::Ordering::Relaxed) {
            RECORDED.lock().unwrap().push(self.to_json(SystemTime::now()));
        }
        if !*IN_LAMBDA.get_or_init(|| std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some()) {
            return;
        }
        use std::io::Write;
        let line = self.to_json(SystemTime::now()).to_string();
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
    }
}

static RECORDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static RECORDED: std::sync::Mutex<Vec<Value>> = std::sync::Mutex::new(Vec::new());

/// From now on this process also keeps every document it emits, in or out of Lambda: for flow
/// tests, which pick theirs out of `recorded()` by a property (tests run in parallel).
pub fn record() {
    RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The documents kept since `record()`.
pub fn recorded() -> Vec<Value> {
    RECORDED.lock().unwrap().clone()
}

/// Time since an RFC 3339 moment (GitHub's `created_at`), if it is one and in the past.
pub fn since(rfc3339: &str) -> Option<Duration> {
    SystemTime::now().duration_since(parse_rfc3339(rfc3339)?).ok()
}

/// Time from one RFC 3339 moment to a later one (GitHub's `started_at` to `completed_at`).
pub fn between(from: &str, to: &str) -> Option<Duration> {
    parse_rfc3339(to)?.duration_since(parse_rfc3339(from)?).ok()
}

/// The EMF documents among log lines, as CloudWatch picks them out: JSON objects with an `_aws`
/// member. For tests and the demo.
pub fn documents<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<Value> {
    lines
        .into_iter()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(|value| value.get("_aws").is_some())
        .collect()
}

/// One metric value found in EMF documents: its name, unit, dimensions and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Datum {
    pub name: String,
    pub unit: String,
    pub dimensions: Vec<(String, String)>,
    pub value: f64,
}

/// Reads EMF documents as CloudWatch does, checking the specification's rules: a namespace, each
/// dimension and metric named in a directive present as a top-level member, values numbers.
/// Each metric gives one datum per dimension set of its directive (each set is a metric of its own
/// in CloudWatch), in the order of the sets. Errors name the broken rule.
pub fn read(documents: &[Value]) -> Result<Vec<Datum>, String> {
    let mut data = Vec::new();
    for document in documents {
        let aws = &document["_aws"];
        if !aws["Timestamp"].is_u64() {
            return Err(format!("_aws.Timestamp is not a number of milliseconds: {document}"));
        }
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .ok_or_else(|| format!("_aws.CloudWatchMetrics is not an array: {document}"))?;
        for directive in directives {
            if directive["Namespace"].as_str().is_none_or(str::is_empty) {
                return Err(format!("a directive without a namespace: {document}"));
            }
            let sets = directive["Dimensions"].as_array().cloned().unwrap_or_default();
            for metric in directive["Metrics"].as_array().cloned().unwrap_or_default() {
                let name = metric["Name"].as_str().ok_or("a metric without a Name")?.to_string();
                let value = document[&name]
                    .as_f64()
                    .ok_or_else(|| format!("metric {name} has no numeric member: {document}"))?;
                for set in &sets {
                    let mut dimensions = Vec::new();
                    for dimension in set.as_array().cloned().unwrap_or_default() {
                        let key = dimension.as_str().ok_or("a dimension name that is not a string")?;
                        let value = document[key]
                            .as_str()
                            .ok_or_else(|| format!("dimension {key} has no string member: {document}"))?;
                        dimensions.push((key.to_string(), value.to_string()));
                    }
                    data.push(Datum {
                        name: name.clone(),
                        unit: metric["Unit"].as_str().unwrap_or("None").to_string(),
                        dimensions,
                        value,
                    });
                }
            }
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_names_each_metric_and_dimension_as_a_member_as_emf_requires() {
        let document = Emf::new("sophons")
            .dimension("template", "cpu")
            .dimension("capacity", "spot")
            .count(name::LAUNCHES, 1)
            .property("job_id", 42)
            .to_json(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        assert_eq!(document["_aws"]["Timestamp"], 1_700_000_000_123u64);
        assert_eq!(document["_aws"]["CloudWatchMetrics"][0]["Namespace"], "sophons");
        let data = read(std::slice::from_ref(&document)).unwrap();
        assert_eq!(
            data,
            vec![Datum {
                name: "Launches".into(),
                unit: "Count".into(),
                dimensions: vec![
                    ("deployment".into(), "sophons".into()),
                    ("template".into(), "cpu".into()),
                    ("capacity".into(), "spot".into())
                ],
                value: 1.0,
            }]
        );
        assert_eq!(document["job_id"], 42, "a property, not a dimension");
    }

    #[test]
    fn a_launch_also_counted_by_deployment_alone_is_read_as_two_data_the_smaller_with_only_its_dimension() {
        let document = Emf::new("sophons")
            .dimension("template", "cpu")
            .dimension("capacity", "on-demand")
            .also_by(&["deployment"])
            .count(name::LAUNCHES, 1)
            .to_json(SystemTime::now());
        assert_eq!(
            document["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["deployment", "template", "capacity"], ["deployment"]])
        );
        let data = read(&[document]).unwrap();
        let dimensions: Vec<_> = data.iter().map(|datum| datum.dimensions.clone()).collect();
        assert_eq!(
            dimensions,
            vec![
                vec![
                    ("deployment".into(), "sophons".into()),
                    ("template".into(), "cpu".into()),
                    ("capacity".into(), "on-demand".into())
                ],
                vec![("deployment".into(), "sophons".into())],
            ]
        );
        assert!(
            data.iter()
                .all(|datum| datum.name == "Launches" && datum.value == 1.0 && datum.unit == "Count")
        );
    }

    #[test]
    fn every_metric_of_a_document_is_published_under_each_of_its_sets() {
        let document = Emf::new("d")
            .dimension("template", "gpu")
            .also_by(&["deployment"])
            .count(name::RELAUNCHES, 1)
            .count(name::SPOT_RECLAIMS, 1)
            .to_json(SystemTime::now());
        let data = read(&[document]).unwrap();
        let named: Vec<(&str, usize)> = data.iter().map(|d| (d.name.as_str(), d.dimensions.len())).collect();
        assert_eq!(
            named,
            [
                ("Relaunches", 2),
                ("Relaunches", 1),
                ("SpotReclaims", 2),
                ("SpotReclaims", 1)
            ]
        );
    }

    #[test]
    #[should_panic(expected = "must be one of the document's dimensions")]
    fn a_smaller_set_naming_a_dimension_the_document_lacks_is_a_mistake_tests_catch() {
        let _ = Emf::new("d").also_by(&["template"]);
    }

    #[test]
    fn the_reader_refuses_a_metric_without_its_member() {
        let mut document = Emf::new("d").count(name::RELAUNCHES, 1).to_json(SystemTime::now());
        document.as_object_mut().unwrap().remove("Relaunches");
        assert!(read(&[document]).unwrap_err().contains("Relaunches"));
        let mut document = Emf::new("d").count(name::RELAUNCHES, 1).to_json(SystemTime::now());
        document.as_object_mut().unwrap().remove("deployment");
        assert!(read(&[document]).unwrap_err().contains("deployment"));
    }

    #[test]
    fn the_dashboard_contract_names_exactly_the_metrics_written() {
        // terraform/test/check_monitoring.py's CONTRACT: `    "Name": {"deployment", ...},` lines.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../terraform/test/check_monitoring.py");
        let text = std::fs::read_to_string(path).unwrap();
        let contract = &text[text.find("CONTRACT = {").unwrap()..];
        let contract = &contract[..contract.find("\n}").unwrap()];
        let mut named: Vec<&str> = contract
            .lines()
            .filter_map(|line| line.trim().strip_prefix('"')?.split('"').next())
            .collect();
        let mut written = name::ALL.to_vec();
        named.sort_unstable();
        written.sort_unstable();
        assert_eq!(named, written);
    }

    #[test]
    fn only_json_lines_with_aws_are_documents() {
        let lines = [
            r#"{"level":"INFO","message":"job 1: runner started"}"#,
            "not json",
            r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[]}}"#,
        ];
        assert_eq!(documents(lines).len(), 1);
    }
}
