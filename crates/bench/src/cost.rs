//! What the control plane costs per 1,000 jobs: Lambda (requests and GB-seconds at the functions'
//! 128 MB), API Gateway, SQS, DynamoDB, the Advanced-tier JIT parameter and KMS, CloudWatch Logs.
//! Not the runner instances (EC2 is the job's own cost) and not the fixed monthly costs (alarms,
//! the dashboard, the event source mapping's polling, the sweep's schedule).
//!
//! Prices: US East (N. Virginia), on-demand, x86_64 Lambda, as the pricing pages listed them on
//! 2026-12-01 (each constant names its page); check them for your region.

use std::time::Duration;

/// Lambda: $0.20 per million requests; $0.0000166667 per GB-second on x86_64
/// (<https://aws.amazon.com/lambda/pricing/>; arm64 is 20% less per GB-second).
const LAMBDA_PER_REQUEST: f64 = 0.20 / 1e6;
const LAMBDA_PER_GB_SECOND: f64 = 0.000_016_666_7;
/// The functions' memory (terraform `lambda_memory_mb`, default 128).
const LAMBDA_GB: f64 = 128.0 / 1024.0;
/// API Gateway HTTP APIs: $1.00 per million requests (<https://aws.amazon.com/api-gateway/pricing/>).
const API_PER_REQUEST: f64 = 1.00 / 1e6;
/// SQS standard queues: $0.40 per million requests (<https://aws.amazon.com/sqs/pricing/>).
const SQS_PER_REQUEST: f64 = 0.40 / 1e6;
/// DynamoDB on demand: $0.625 per million write request units, $0.125 per million read request
/// units (<https://aws.amazon.com/dynamodb/pricing/on-demand/>, after the November 2024 reduction).
const DYNAMODB_PER_WRU: f64 = 0.625 / 1e6;
const DYNAMODB_PER_RRU: f64 = 0.125 / 1e6;
/// Parameter Store: an Advanced parameter is $0.05 a month, prorated by the hour; a JIT config is
/// over 4 KB, so it is one for the life of its runner
/// (<https://aws.amazon.com/systems-manager/pricing/>). Standard throughput: API calls are free.
const ADVANCED_PARAMETER_PER_HOUR: f64 = 0.05 / 730.0;
/// KMS: $0.03 per 10,000 requests (<https://aws.amazon.com/kms/pricing/>): the SecureString's
/// encrypt at PutParameter and decrypt on the runner.
const KMS_PER_REQUEST: f64 = 0.03 / 10_000.0;
/// CloudWatch Logs: $0.50 per GB ingested (<https://aws.amazon.com/cloudwatch/pricing/>).
const LOGS_PER_BYTE: f64 = 0.50 / 1e9;

/// What one job asks of each service (counted from the flows: webhook → queue → create-runner →
/// SSM command → EventBridge → stop-runner).
pub struct PerJob {
    /// Billed Lambda time for the job, all functions (rounded up to the ms per invocation).
    pub lambda: Duration,
    pub lambda_requests: f64,
    pub api_requests: f64,
    pub sqs_requests: f64,
    pub write_units: f64,
    pub read_units: f64,
    /// How long the JIT parameter lives (launch to the runner's end).
    pub parameter_life: Duration,
    pub kms_requests: f64,
    pub log_bytes: f64,
}

impl PerJob {
    /// A job as the flows make it, with `lambda` billed Lambda time per job.
    pub fn with_lambda(lambda: Duration) -> Self {
        Self {
            lambda,
            // The webhook thrice (queued, in_progress, completed), create-runner and stop-runner once.
            lambda_requests: 5.0,
            api_requests: 3.0,
            // Send, the event source mapping's receive, delete.
            sqs_requests: 3.0,
            // Claim (PutItem) and free (DeleteItem) a launch slot.
            write_units: 2.0,
            // The claim's Query and GetItem, strongly consistent (1 RRU each for items under 4 KB).
            read_units: 2.0,
            // A runner booting and running a ten-minute job; the runner deletes it at its start.
            parameter_life: Duration::from_secs(15 * 60),
            kms_requests: 2.0,
            // About 40 JSON lines and 10 EMF lines of ~400 bytes across the functions.
            log_bytes: 50.0 * 400.0,
        }
    }

    /// Dollars per 1,000 jobs, by item.
    pub fn per_thousand(&self) -> Vec<(&'static str, f64)> {
        let thousand = 1000.0;
        vec![
            (
                "Lambda GB-seconds",
                self.lambda.as_secs_f64() * LAMBDA_GB * LAMBDA_PER_GB_SECOND * thousand,
            ),
            ("Lambda requests", self.lambda_requests * LAMBDA_PER_REQUEST * thousand),
            ("API Gateway", self.api_requests * API_PER_REQUEST * thousand),
            ("SQS", self.sqs_requests * SQS_PER_REQUEST * thousand),
            (
                "DynamoDB",
                (self.write_units * DYNAMODB_PER_WRU + self.read_units * DYNAMODB_PER_RRU) * thousand,
            ),
            (
                "Advanced parameter",
                self.parameter_life.as_secs_f64() / 3600.0 * ADVANCED_PARAMETER_PER_HOUR * thousand,
            ),
            ("KMS", self.kms_requests * KMS_PER_REQUEST * thousand),
            ("CloudWatch Logs", self.log_bytes * LOGS_PER_BYTE * thousand),
        ]
    }

    pub fn total_per_thousand(&self) -> f64 {
        self.per_thousand().iter().map(|(_, dollars)| dollars).sum()
    }
}

/// "$0.1234 (Lambda GB-seconds $0.0625, ...)".
pub fn describe(per_job: &PerJob) -> String {
    let items: Vec<String> = per_job
        .per_thousand()
        .iter()
        .map(|(item, dollars)| format!("{item} ${dollars:.4}"))
        .collect();
    format!("${:.4} ({})", per_job.total_per_thousand(), items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_jobs_cost_what_their_items_add_up_to() {
        let job = PerJob::with_lambda(Duration::from_secs(30));
        let items = job.per_thousand();
        // 30 s × 0.125 GB × $0.0000166667 × 1,000 = $0.0625.
        assert!((items[0].1 - 0.0625).abs() < 1e-6, "{items:?}");
        // 15 minutes of a $0.05-a-month parameter, 1,000 times: $0.0171.
        assert!((items[5].1 - 0.05 / 730.0 / 4.0 * 1000.0).abs() < 1e-9);
        let sum: f64 = items.iter().map(|(_, d)| d).sum();
        assert!((job.total_per_thousand() - sum).abs() < 1e-12);
        assert!(describe(&job).starts_with(&format!("${:.4}", sum)));
    }
}
