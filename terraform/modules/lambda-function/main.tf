# One Lambda function with its own role (nothing shared between functions), its own log group with
# retention, and the role allowed to write only that log group.

data "aws_partition" "current" {}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name               = "${var.name}-lambda"
  description        = "Role of the ${var.name} Lambda function"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Logs hold no secrets (the JIT config and credentials are never logged); the CloudWatch Logs default encryption applies and a customer-managed key would add cost and key-policy plumbing.
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable (30 days by default); a year of Lambda logs is not needed to operate runners.
  name              = "/aws/lambda/${var.name}"
  retention_in_days = var.log_retention_days
  tags              = var.tags
}

data "aws_iam_policy_document" "logs" {
  source_policy_documents = [var.policy_json]

  statement {
    sid       = "WriteOwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }

  dynamic "statement" {
    for_each = var.tracing_mode == "Active" ? [1] : []

    content {
      sid       = "SendTraces"
      actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
      resources = ["*"] # X-Ray has no resource-level permissions for these.
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "${var.name}-lambda"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.logs.json
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_116:No function-level DLQ: the webhook is invoked synchronously, create-runner is driven by the jobs queue which has its own DLQ, and a lost EventBridge invocation of stop-runner/move-jobs is caught by the next scheduled sweep.
  #checkov:skip=CKV_AWS_117:The functions call only AWS and GitHub public endpoints; a VPC would need a NAT gateway and add cold-start time for no isolation gain.
  #checkov:skip=CKV_AWS_173:The environment holds only SOPHONS_CONFIG_PARAM (a parameter name), SOPHONS_CONFIG_SHA256 (the hash of a document without secrets) and RUST_LOG; secrets stay in SSM SecureString parameters.
  #checkov:skip=CKV_AWS_272:The zips are built from this repository by `make build` and deployed by the same Terraform run; code signing would need a signing profile outside this module.
  #checkov:skip=CKV_AWS_115:Concurrency is bounded where it matters (the event source mapping's maximum concurrency, API throttling); reserving concurrency fails in new accounts with the default quota of 10.
  function_name    = var.name
  description      = var.description
  role             = aws_iam_role.this.arn
  filename         = var.zip_file
  source_code_hash = filebase64sha256(var.zip_file)
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.architecture]
  memory_size      = var.memory_mb
  timeout          = var.timeout_seconds

  environment {
    variables = var.environment
  }

  tracing_config {
    mode = var.tracing_mode
  }

  tags = var.tags

  # The log group must exist (with its retention) before the first invocation creates a default one.
  depends_on = [aws_iam_role_policy.this, aws_cloudwatch_log_group.this]
}
