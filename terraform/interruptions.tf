# Spot interruptions: what EC2 took back, which re-runs sophons asked GitHub for, which templates launch
# on-demand for a while, and which job each runner ran (crates/core/src/interruptions.rs). One table, five kinds
# of item (pk / sk):
#
# - `interrupted` / <job_id>#<instance id>: a job whose spot instance EC2 took back while it ran (one item per lost instance). stop-runner records it when it
#   hears of the interruption (the warning or the termination, events.tf; the command's end; the sweep) and the
#   sweep follows it (Query of the partition) until GitHub concludes the job: a job that failed there is re-run
#   once, then the item is deleted. Kept 3 days at most.
# - `rerun#<owner/repo>#<run_id>` / <job name>: a re-run the sweep claimed before asking GitHub (a conditional
#   PutItem, so that a job is re-run once). GitHub's new attempt comes back as a new job of the same run and name;
#   create-runner finds the claim (GetItem) and launches that attempt on-demand. Kept 30 days, GitHub's limit for
#   re-runs.
# - `spot#<template>` / <instance id>, or capacity#<job_id>#<ms>: one spot loss of a template (an interruption, or
#   a spot launch EC2 refused for capacity), kept for spot_backoff_within_minutes and counted by a Query of the
#   template's partition.
# - `backoff` / <template>: the template launches on-demand until the item's ends_at; spot_backoff_after losses
#   within the window start spot_backoff_on_demand_minutes of it (a conditional PutItem), the sweep deletes it once
#   it is over.
# - `ran#<instance id>` / `job`: the job the instance's runner ran (job_id, repository, run_id, attempt,
#   job_name). GitHub gives a queued job to any idle runner with its labels, so it may be a job of another workflow
#   run than the one the instance was launched for. The autoscaler writes it (an unconditional PutItem) when
#   GitHub's `in_progress` delivery names a runner of this deployment; the sweep reads it back (Query of the
#   partition) to follow the job an interrupted runner really ran. Kept 4 days.
#
# Every item carries expires_at, set by the Lambda that writes it past the item's use, so that TTL removes what
# nothing deleted. create-runner and stop-runner read and write the table; the autoscaler writes `ran#` items
# only (iam.tf).
resource "aws_dynamodb_table" "interruptions" {
  #checkov:skip=CKV_AWS_119:Items hold job ids, repository and job names, template names, instance ids and times, no secret; the AWS owned key encrypts them at rest without a key policy to keep in step with the Lambda roles.
  name         = "${var.deployment}-interruptions"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  # Point-in-time recovery, as for the waiting list (waiting.tf): an `interrupted` item is the only record that a
  # job failed because EC2 took its instance back. GitHub shows such a job as failed like any other, so a lost
  # table leaves those jobs failed and nobody re-runs them. Billed on the table's size ($0.20 per GB-month in
  # us-east-1); the items are a few hundred bytes, and few live at once.
  point_in_time_recovery {
    enabled = true
  }

  # No server_side_encryption block: as for the slots table (slots.tf), the AWS owned key.

  tags = local.tags
}
