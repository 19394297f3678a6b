# Jobs queue (webhook -> create-runner) and its dead-letter queue (move-jobs puts jobs back hourly).

locals {
  # AWS asks for a visibility timeout of at least six times the consumer's timeout, so that a batch the event
  # source mapping retries after throttling is not delivered twice. create-runner sets shorter delays itself
  # (ChangeMessageVisibility) when it hands a job back.
  jobs_visibility_timeout = 6 * var.lambda_timeouts.create_runner
}

resource "aws_sqs_queue" "jobs_dlq" {
  name                      = "${var.deployment}-jobs-dlq"
  message_retention_seconds = 1209600 # 14 days: longer than GitHub keeps a job queued (24 h)
  sqs_managed_sse_enabled   = true
  tags                      = local.tags
}

resource "aws_sqs_queue" "jobs" {
  name                       = "${var.deployment}-jobs"
  visibility_timeout_seconds = local.jobs_visibility_timeout
  message_retention_seconds  = 345600 # 4 days
  receive_wait_time_seconds  = 0
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.jobs_dlq.arn
    maxReceiveCount     = var.max_receive_count
  })

  tags = local.tags
}

resource "aws_sqs_queue_redrive_allow_policy" "jobs_dlq" {
  count = var.dlq_redrive_allow_policy ? 1 : 0

  queue_url = aws_sqs_queue.jobs_dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.jobs.arn]
  })
}

# Only this account's principals (further limited by their IAM policies) and only over TLS.
data "aws_iam_policy_document" "queue" {
  for_each = {
    jobs     = aws_sqs_queue.jobs.arn
    jobs_dlq = aws_sqs_queue.jobs_dlq.arn
  }

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"]
    resources = [each.value]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "jobs" {
  queue_url = aws_sqs_queue.jobs.id
  policy    = data.aws_iam_policy_document.queue["jobs"].json
}

resource "aws_sqs_queue_policy" "jobs_dlq" {
  queue_url = aws_sqs_queue.jobs_dlq.id
  policy    = data.aws_iam_policy_document.queue["jobs_dlq"].json
}
