# The waiting list: one item per job that found its template at max_runners, keyed by its template and its place
# (when GitHub queued it, then its id, so that a Query of one template reads its jobs oldest first). create-runner
# parks such a job here (PutItem) and deletes its queue message, so waiting for room neither spends the jobs
# queue's receives nor sends the job to the dead-letter queue. Whoever frees a slot wakes the template: stop-runner
# (an ended instance, and the sweep for every template) and create-runner (right after it parked) Query the oldest
# parked jobs, send each back to the jobs queue, then DeleteItem it. Each item carries expires_at, 25 hours after
# GitHub queued the job: GitHub cancels a job left queued for 24 hours, so TTL removes what nothing woke.
resource "aws_dynamodb_table" "waiting" {
  #checkov:skip=CKV_AWS_119:A parked job is its queue message (job id, repository, labels, workflow and job names), no secret; the AWS owned key encrypts it at rest without a key policy to keep in step with the Lambda roles.
  name         = "${var.deployment}-waiting"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "template"
  range_key    = "place"

  attribute {
    name = "template"
    type = "S"
  }

  attribute {
    name = "place"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  # Point-in-time recovery, not skipped (CKV_AWS_28) as for the slots table: a parked job exists nowhere else. Its
  # queue message was deleted when it was parked, and move-jobs drains only the dead-letter queue. A lost or
  # emptied table loses those jobs; nothing in sophons brings them back, and GitHub shows them queued until it
  # cancels them after 24 hours. With recovery on, an operator can restore the table within that day (a deleted
  # table leaves a system backup for 35 days; restored under its own name, the next wake sends the jobs on). It is
  # billed on the table's size ($0.20 per GB-month in us-east-1), and a parked job is a queue message under 1 KB:
  # 10,000 waiting jobs are 10 MB, about $0.002 a month.
  point_in_time_recovery {
    enabled = true
  }

  # No server_side_encryption block: as for the slots table (slots.tf), the AWS owned key.

  tags = local.tags
}
