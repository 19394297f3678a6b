# The four Lambda functions. Each gets only SOPHONS_CONFIG_PARAM, SOPHONS_CONFIG_SHA256, SOPHONS_SECRET_PARAMS and
# RUST_LOG; everything else comes from the config document. Each has its own role: see iam.tf for what each may do.

locals {
  lambda_environment = {
    SOPHONS_CONFIG_PARAM = local.config_param_name
    # The Lambdas read the document once per cold start, so a warm instance would keep an old one. Its hash
    # here makes every apply that changes the document update every function, which retires the warm
    # instances: the next invocation reads the new document. Taken from the parameter, not from
    # local.config_document, so that the functions change only after the new document is written.
    SOPHONS_CONFIG_SHA256 = nonsensitive(sha256(aws_ssm_parameter.config.value))
    RUST_LOG              = var.lambda_log_level
  }

  # The secret parameter each function reads at every cold start, in the same GetParameters call as its document.
  # GetParameters fails whole when one name is denied, so each names only what its role may read (iam.tf): the
  # webhook secret for the autoscaler, the GitHub credential for the three that call GitHub.
  secret_params = {
    autoscaler = join(",", compact([local.webhook_secret_param_name]))
    github     = join(",", compact([local.github_credential_param_name]))
  }
}

module "autoscaler" {
  source = "./modules/lambda-function"

  name               = local.functions.autoscaler
  description        = "Verifies GitHub workflow_job webhooks and queues jobs a runner template can serve"
  zip_file           = "${local.lambda_zip_dir}/autoscaler/bootstrap.zip"
  architecture       = var.lambda_architecture
  memory_mb          = var.lambda_memory_mb
  timeout_seconds    = var.lambda_timeouts.autoscaler
  environment        = merge(local.lambda_environment, { SOPHONS_SECRET_PARAMS = local.secret_params.autoscaler })
  policy_json        = data.aws_iam_policy_document.autoscaler.json
  log_retention_days = var.log_retention_days
  tracing_mode       = var.lambda_tracing_mode
  tags               = local.tags
}

module "create_runner" {
  source = "./modules/lambda-function"

  name               = local.functions.create_runner
  description        = "Launches a Spot runner instance for a queued job and starts the runner script on it"
  zip_file           = "${local.lambda_zip_dir}/create-runner/bootstrap.zip"
  architecture       = var.lambda_architecture
  memory_mb          = var.lambda_memory_mb
  timeout_seconds    = var.lambda_timeouts.create_runner
  environment        = merge(local.lambda_environment, { SOPHONS_SECRET_PARAMS = local.secret_params.github })
  policy_json        = data.aws_iam_policy_document.create_runner.json
  log_retention_days = var.log_retention_days
  tracing_mode       = var.lambda_tracing_mode
  tags               = local.tags
}

module "stop_runner" {
  source = "./modules/lambda-function"

  name               = local.functions.stop_runner
  description        = "Terminates runner instances whose command ended and sweeps orphans, leftover JIT parameters and ghost runners"
  zip_file           = "${local.lambda_zip_dir}/stop-runner/bootstrap.zip"
  architecture       = var.lambda_architecture
  memory_mb          = var.lambda_memory_mb
  timeout_seconds    = var.lambda_timeouts.stop_runner
  environment        = merge(local.lambda_environment, { SOPHONS_SECRET_PARAMS = local.secret_params.github })
  policy_json        = data.aws_iam_policy_document.stop_runner.json
  log_retention_days = var.log_retention_days
  tracing_mode       = var.lambda_tracing_mode
  tags               = local.tags
}

module "move_jobs" {
  source = "./modules/lambda-function"

  name               = local.functions.move_jobs
  description        = "Moves jobs from the dead-letter queue back to the jobs queue, dropping jobs GitHub no longer has queued"
  zip_file           = "${local.lambda_zip_dir}/move-jobs/bootstrap.zip"
  architecture       = var.lambda_architecture
  memory_mb          = var.lambda_memory_mb
  timeout_seconds    = var.lambda_timeouts.move_jobs
  environment        = merge(local.lambda_environment, { SOPHONS_SECRET_PARAMS = local.secret_params.github })
  policy_json        = data.aws_iam_policy_document.move_jobs.json
  log_retention_days = var.log_retention_days
  tracing_mode       = var.lambda_tracing_mode
  tags               = local.tags
}

# create-runner consumes the jobs queue. ReportBatchItemFailures: one failed job never fails its batch-mates.
resource "aws_lambda_event_source_mapping" "jobs" {
  event_source_arn                   = aws_sqs_queue.jobs.arn
  function_name                      = module.create_runner.function_arn
  batch_size                         = var.create_runner_batch_size
  maximum_batching_window_in_seconds = 0
  function_response_types            = ["ReportBatchItemFailures"]

  scaling_config {
    maximum_concurrency = var.create_runner_max_concurrency
  }

  tags = local.tags
}
