//! The names sophons gives things, in one place: create-runner makes them, stop-runner and the
//! sweep find things by them, the runner script and Terraform's IAM policies rely on them.

use sha2::{Digest, Sha256};

use crate::fleet::Capacity;
use crate::job::JobMessage;

/// The GitHub runner's name.
pub fn runner_name(deployment: &str, instance_id: &str) -> String {
    format!("{deployment}-{instance_id}")
}

/// The prefix of every JIT parameter of a deployment (the runner role may read only below it).
pub fn jit_prefix(deployment: &str) -> String {
    format!("/{deployment}/jit/")
}

/// The SecureString parameter holding an instance's JIT config.
pub fn jit_parameter(deployment: &str, instance_id: &str) -> String {
    format!("{}{}", jit_prefix(deployment), sanitize_parameter_segment(instance_id))
}

/// The tag on a JIT parameter naming the ARN of the instance it is for: the runner role may read
/// and delete a parameter only when this tag equals the calling instance's ARN (Terraform's
/// `local.jit_owner_tag`, checked by `terraform/test/check_iam.py`).
pub const JIT_OWNER_TAG: &str = "sophons:instance-arn";

/// SSM parameter names take a-zA-Z0-9_.-/; anything else becomes `_`.
fn sanitize_parameter_segment(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The SendCommand comment (SSM allows 100 characters).
pub fn command_comment(deployment: &str, job_id: u64) -> String {
    let comment = format!("sophons {deployment} job {job_id}");
    comment.chars().take(100).collect()
}

/// An EC2 tag value: at most 256 characters, no control characters.
pub fn tag_value(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// CreateFleet's idempotency token: the same job, attempt, relaunch, DLQ trip and receive give
/// the same token, so two handlers racing on one delivery get one instance; a retry after a
/// failure (a new receive) and a trip back from the DLQ (receives count from 1 again) get new
/// ones. At most 64 ASCII characters.
pub fn client_token(deployment: &str, message: &JobMessage, receive_count: u32, capacity: Capacity) -> String {
    let mut hash = Sha256::new();
    hash.update(format!(
        "{deployment}/{}/{}/{}/{}/{receive_count}/{}",
        message.job_id,
        message.run_attempt,
        message.relaunches,
        message.trip,
        capacity.as_str()
    ));
    hex::encode(&hash.finalize()[..24])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_names_keep_to_ssms_charset() {
        assert_eq!(jit_parameter("sophons", "i-0abc"), "/sophons/jit/i-0abc");
        assert_eq!(jit_parameter("sophons", "i-0a b/$(x)"), "/sophons/jit/i-0a_b___x_");
    }

    #[test]
    fn tag_values_are_cut_to_256_characters_without_control_characters() {
        let long = "é".repeat(300);
        assert_eq!(tag_value(&long).chars().count(), 256);
        assert_eq!(tag_value("a\nb\tc"), "abc");
    }

    #[test]
    fn comments_fit_ssms_limit() {
        assert!(command_comment(&"d".repeat(200), u64::MAX).chars().count() <= 100);
    }
}
