# EventBridge: the end of a runner's SSM command and EC2 taking back or ending an instance -> stop-runner; schedules
# -> stop-runner's sweep and move-jobs.

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

# EC2 takes back a spot instance: the warning comes two minutes before, on a best-effort basis ("EC2 Spot Instance
# Interruption Warning", detail { "instance-id", "instance-action": terminate | stop | hibernate }; Amazon EC2 User
# Guide, Spot Instance interruption notices:
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html). stop-runner records
# the interruption of the job the instance runs (interruptions.tf).
resource "aws_cloudwatch_event_rule" "spot_interruption" {
  name        = "${var.deployment}-spot-interruption"
  description = "EC2 will take back a Spot instance in two minutes: stop-runner records the interruption of its job"

  event_pattern = jsonencode({
    source        = ["aws.ec2"]
    "detail-type" = ["EC2 Spot Instance Interruption Warning"]
  })

  tags = local.tags
}

# An instance ended ("EC2 Instance State-change Notification", detail { "instance-id", "state" }; Amazon EC2 User
# Guide, State change events for Amazon EC2 instances:
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/monitoring-instance-state-changes.html). The warning above
# is best effort, so stop-runner also looks at each of its runners that terminated: one EC2 took back while its job
# ran is an interruption even without a warning. EventBridge cannot match on tags, so this fires for every instance
# of the account that terminates in the region: stop-runner ignores those not tagged with this deployment (one
# short invocation each).
resource "aws_cloudwatch_event_rule" "instance_terminated" {
  name        = "${var.deployment}-instance-terminated"
  description = "An EC2 instance terminated: stop-runner follows the job of one of this deployment's runners that EC2 ended"

  event_pattern = jsonencode({
    source        = ["aws.ec2"]
    "detail-type" = ["EC2 Instance State-change Notification"]
    detail = {
      state = ["terminated"]
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
    command_finished    = { rule = aws_cloudwatch_event_rule.command_finished, function = module.stop_runner }
    spot_interruption   = { rule = aws_cloudwatch_event_rule.spot_interruption, function = module.stop_runner }
    instance_terminated = { rule = aws_cloudwatch_event_rule.instance_terminated, function = module.stop_runner }
    sweep               = { rule = aws_cloudwatch_event_rule.sweep, function = module.stop_runner }
    move_jobs           = { rule = aws_cloudwatch_event_rule.move_jobs, function = module.move_jobs }
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
