output "webhook_url" {
  description = "Payload URL of the GitHub webhook (content type application/json, event \"Workflow jobs\" only)."
  value       = "${aws_apigatewayv2_api.webhook.api_endpoint}/webhook"
}

output "webhook_secret_parameter_name" {
  description = "SSM parameter holding the webhook secret; give GitHub the same value."
  value       = local.webhook_secret_param_name
}

output "github_credential_parameter_name" {
  description = "SSM parameter holding the GitHub token or the GitHub App private key."
  value       = local.github_credential_param_name
}

output "config_parameter_name" {
  description = "SSM parameter holding the config document the Lambdas read (SOPHONS_CONFIG_PARAM)."
  value       = aws_ssm_parameter.config.name
}

output "config_document" {
  description = "The config document written to config_parameter_name (parameter names only, no secrets)."
  value       = local.config_document
}

output "jit_parameter_path" {
  description = "Path under which create-runner writes one JIT config parameter per instance."
  value       = local.jit_path
}

output "slots_table_name" {
  description = "DynamoDB table of the launch slots: one item per launch in flight or instance alive (key: template, slot)."
  value       = aws_dynamodb_table.slots.name
}

output "waiting_table_name" {
  description = "DynamoDB table of the waiting list: one item per job parked while its template is at max_runners (key: template, place; expires 25 hours after GitHub queued the job)."
  value       = aws_dynamodb_table.waiting.name
}

output "interruptions_table_name" {
  description = "DynamoDB table of spot interruptions (key: pk, sk): jobs whose spot instance EC2 took back, the re-runs sophons asked GitHub for, each template's spot losses and back-offs, and which job each runner ran."
  value       = aws_dynamodb_table.interruptions.name
}

output "jobs_queue_url" {
  description = "URL of the jobs queue (webhook -> create-runner)."
  value       = aws_sqs_queue.jobs.url
}

output "dead_letter_queue_url" {
  description = "URL of the dead-letter queue (jobs that failed max_receive_count times; move-jobs retries them)."
  value       = aws_sqs_queue.jobs_dlq.url
}

output "runner_script_uri" {
  description = "S3 URI of the runner script SSM runs on every runner instance."
  value       = "s3://${aws_s3_bucket.scripts.id}/${aws_s3_object.runner_script.key}"
}

output "runner_cache_uri" {
  description = "Where move-jobs keeps the current actions-runner release when runner_cache_enabled is set (null otherwise)."
  value       = var.runner_cache_enabled ? "s3://${aws_s3_bucket.scripts.id}/${local.runner_cache_prefix}" : null
}

output "runner_role_arn" {
  description = "Role of the runner instances."
  value       = aws_iam_role.runner.arn
}

output "launch_template_names" {
  description = "Launch template of each runner template."
  value       = { for name, lt in aws_launch_template.runner : name => lt.name }
}

output "function_names" {
  description = "The four Lambda functions."
  value = {
    autoscaler    = module.autoscaler.function_name
    create_runner = module.create_runner.function_name
    stop_runner   = module.stop_runner.function_name
    move_jobs     = module.move_jobs.function_name
  }
}

output "log_group_names" {
  description = "Where to look: each function's log group, the webhook access log and the runner command output."
  value = {
    autoscaler      = module.autoscaler.log_group_name
    create_runner   = module.create_runner.log_group_name
    stop_runner     = module.stop_runner.log_group_name
    move_jobs       = module.move_jobs.log_group_name
    webhook_access  = aws_cloudwatch_log_group.webhook_access.name
    runner_commands = aws_cloudwatch_log_group.runner_commands.name
  }
}

output "image_builder_pipeline_arns" {
  description = "The image_builder pipeline of each architecture (empty when image_builder is off). Start a build now: aws imagebuilder start-image-pipeline-execution --image-pipeline-arn <arn>."
  value       = { for arch, pipeline in aws_imagebuilder_image_pipeline.runner : arch => pipeline.arn }
}

output "baked_image_parameter_names" {
  description = "SSM parameter holding the latest baked image's AMI id, per architecture (empty when image_builder is off); templates with baked_image = true launch from it."
  value       = { for arch in local.baked_architectures : arch => local.baked_image_parameters[arch] }
}

output "monitoring" {
  description = "The CloudWatch dashboard, the alarms and the SNS topics they notify (empty: none), as docs/monitoring.md describes them; null when monitoring.enabled is false."
  value = var.monitoring.enabled ? {
    dashboard_name   = one(aws_cloudwatch_dashboard.this[*].dashboard_name)
    alarm_names      = sort(concat([for alarm in aws_cloudwatch_metric_alarm.metric : alarm.alarm_name], aws_cloudwatch_metric_alarm.no_launch[*].alarm_name))
    alarm_topic_arns = local.alarm_topic_arns
  } : null
}
