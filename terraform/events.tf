# EventBridge: the end of a runner's SSM command -> stop-runner; schedules -> stop-runner's sweep and move-jobs.

resource "aws_cloudwatch_event_rule" "command_finished" {
  name        = "${var.deployment}-command-finished"
  description = "A runner script's SSM command reached a terminal status: stop-runner cleans up the instance"

  event_pattern = jsonencode({
    source        = ["aws.ssm"]
    "detail-type" = ["EC2 Command Invocation Status-change Notification"]
    detail = {
      "document-name" = ["AWS-RunShellScript"]
      status          = ["Success", "Failed", "TimedOut", "Cancelled", "Undeliverable", "Terminated"]
    }
  })

  tags = local.tags
}

resource "aws_cloudwatch_event_rule" "sweep" {
  name                = "${var.deployment}-sweep"
  description         = "Periodic sweep of orphan runner instances, leftover JIT parameters and ghost runners"
  schedule_expression = var.sweep_schedule
  tags                = local.tags
}

resource "aws_cloudwatch_event_rule" "move_jobs" {
  name                = "${var.deployment}-move-jobs"
  description         = "Periodic move of jobs from the dead-letter queue back to the jobs queue"
  schedule_expression = var.move_jobs_schedule
  tags                = local.tags
}

locals {
  event_targets = {
    command_finished = { rule = aws_cloudwatch_event_rule.command_finished, function = module.stop_runner }
    sweep            = { rule = aws_cloudwatch_event_rule.sweep, function = module.stop_runner }
    move_jobs        = { rule = aws_cloudwatch_event_rule.move_jobs, function = module.move_jobs }
  }
}

resource "aws_cloudwatch_event_target" "this" {
  for_each = local.event_targets

  rule      = each.value.rule.name
  target_id = each.key
  arn       = each.value.function.function_arn

  retry_policy {
    maximum_event_age_in_seconds = 3600
    maximum_retry_attempts       = 10
  }
}

resource "aws_lambda_permission" "events" {
  for_each = local.event_targets

  statement_id  = "AllowEventBridge-${each.key}"
  action        = "lambda:InvokeFunction"
  function_name = each.value.function.function_name
  principal     = "events.amazonaws.com"
  source_arn    = each.value.rule.arn
}
