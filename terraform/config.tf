# The one document all four Lambdas read (env SOPHONS_CONFIG_PARAM). It holds parameter NAMES only, never a
# secret, so it is a plain String parameter that the box's instance role cannot read anyway.

locals {
  config_param_name = "${local.parameter_prefix}/config"

  # Exactly one credential key (`app` or `token_param`); jsondecode lets the two shapes share one expression.
  github_credentials = jsondecode(local.uses_github_app ? jsonencode({
    app = {
      app_id            = try(var.github_app.app_id, null)
      installation_id   = try(var.github_app.installation_id, null)
      private_key_param = local.github_app_key_param_name
    }
    }) : jsonencode({
    token_param = local.github_token_param_name
  }))

  config_document_base = {
    deployment           = var.deployment
    queue_url            = aws_sqs_queue.jobs.url
    dlq_url              = aws_sqs_queue.jobs_dlq.url
    slots_table          = aws_dynamodb_table.slots.name
    waiting_table        = aws_dynamodb_table.waiting.name
    interruptions_table  = aws_dynamodb_table.interruptions.name
    webhook_secret_param = local.webhook_secret_param_name
    max_body_bytes       = var.max_body_bytes
    github = merge(
      {
        api_url                     = var.github_api_url
        owner                       = var.github_owner
        scope                       = var.github_scope
        runner_group_id             = var.runner_group_id
        redelivery_lookback_minutes = var.redelivery_lookback_minutes
      },
      local.github_credentials,
      # Redelivery's hook, each key only when set (the document refuses nulls); jsondecode lets the shapes share one expression.
      jsondecode(var.github_webhook_id == null ? "{}" : jsonencode({ webhook_id = var.github_webhook_id })),
      jsondecode(var.github_webhook_repository == null ? "{}" : jsonencode({ webhook_repository = var.github_webhook_repository })),
    )
    repositories              = var.repositories
    allow_public_repositories = var.allow_public_repositories
    runner_script = {
      bucket = aws_s3_bucket.scripts.id
      key    = aws_s3_object.runner_script.key
    }
    retry_delay_seconds = var.retry_delay_seconds
    command = {
      timeout_seconds        = var.command_timeout_seconds
      log_group              = aws_cloudwatch_log_group.runner_commands.name
      start_deadline_seconds = var.start_deadline_seconds
    }
    sweep = {
      max_runner_lifetime_seconds = var.max_runner_lifetime_seconds
      idle_runner_seconds         = var.idle_runner_seconds
    }
    max_job_relaunches = var.max_job_relaunches
    # A template that keeps losing spot launches on-demand for a while (interruptions.tf); after = 0 turns it off.
    spot_backoff = {
      after             = var.spot_backoff_after
      within_minutes    = var.spot_backoff_within_minutes
      on_demand_minutes = var.spot_backoff_on_demand_minutes
    }
    # create-runner tags each JIT parameter with its instance's ARN; the runner role compares it
    # with ec2:SourceInstanceARN (iam.tf, ReadAndDeleteOwnJitConfig).
    instance_arn_prefix = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/"
    templates = {
      for name, t in local.runner_templates : name => merge({
        labels             = t.labels
        launch_template    = aws_launch_template.runner[name].name
        instance_types     = t.instance_types
        subnet_ids         = t.subnet_ids
        max_runners        = t.max_runners
        on_demand_fallback = t.on_demand_fallback
        packages           = t.packages
        docker             = t.docker
        # A job EC2 interrupted on spot is re-run once, on-demand; false for jobs that must never run twice.
        rerun_interrupted_jobs = t.rerun_interrupted_jobs
      }, t.spot_max_price == null ? {} : { spot_max_price = t.spot_max_price })
    }
  }

  # runner_pin only when set: unset, create-runner follows GitHub's current release.
  # runner_cache only when enabled: move-jobs then keeps the current release's packages in the script bucket.
  config_document = merge(
    local.config_document_base,
    var.runner_pin == null ? {} : { runner_pin = var.runner_pin },
    !var.runner_cache_enabled ? {} : {
      runner_cache = {
        bucket        = aws_s3_bucket.scripts.id
        prefix        = local.runner_cache_prefix
        architectures = local.runner_cache_architectures
      }
    },
  )

  baked_templates = { for name, t in var.runner_templates : name => t if t.baked_image }
  baked_template_errors = compact(concat(
    [for name, _ in local.baked_templates : var.image_builder.enabled ? "" : "template ${name} sets baked_image, but image_builder.enabled is false: enable the pipeline, or launch it from ami_id or ami_ssm_parameter"],
    [for name, arch in local.baked_template_architectures : !var.image_builder.enabled || contains(var.image_builder.architectures, arch) ? "" : "template ${name} runs ${arch} instances (${var.runner_templates[name].instance_types[0]}), but image_builder.architectures is [${join(", ", var.image_builder.architectures)}]: add ${arch}"],
    [for name, t in local.baked_templates : t.volume_size_gb >= var.image_builder.volume_size_gb ? "" : "template ${name} has volume_size_gb = ${t.volume_size_gb}, smaller than the baked image's root volume (image_builder.volume_size_gb = ${var.image_builder.volume_size_gb}): EC2 would refuse the launch"],
  ))
}

resource "aws_ssm_parameter" "config" {
  #checkov:skip=CKV2_AWS_34:The config document holds parameter names and settings, no secret; the Lambdas read it as plain String.
  name        = local.config_param_name
  description = "Configuration document of the ${var.deployment} runner Lambdas (no secrets: parameter names only)"
  type        = "String"
  tier        = length(jsonencode(local.config_document)) > 4096 ? "Advanced" : "Standard"
  value       = jsonencode(local.config_document)
  tags        = local.tags

  lifecycle {
    precondition {
      condition     = length(local.credential_errors) == 0
      error_message = "GitHub credentials: ${join("; ", local.credential_errors)}."
    }
    precondition {
      condition     = alltrue([for t in values(local.runner_templates) : length(t.subnet_ids) > 0])
      error_message = "Every runner template needs subnets: set subnet_ids, or subnet_ids in the template."
    }
    precondition {
      condition     = alltrue([for r in var.repositories : lower(split("/", r)[0]) == lower(var.github_owner)])
      error_message = "Every entry of repositories must be a repository of github_owner (${var.github_owner}/<name>)."
    }
    precondition {
      condition     = var.max_runner_lifetime_seconds >= var.command_timeout_seconds
      error_message = "max_runner_lifetime_seconds must be at least command_timeout_seconds, or the sweep ends runners still allowed to work."
    }
    precondition {
      condition     = length(local.baked_template_errors) == 0
      error_message = "Baked image: ${join("; ", local.baked_template_errors)}."
    }
    precondition {
      condition     = var.lambda_timeouts.create_runner > var.start_deadline_seconds
      error_message = "lambda_timeouts.create_runner (${var.lambda_timeouts.create_runner} s) must be longer than start_deadline_seconds (${var.start_deadline_seconds} s)."
    }
  }
}
