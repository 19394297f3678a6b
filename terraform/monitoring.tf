# Alarms and a dashboard (var.monitoring; docs/monitoring.md says what each alarm means and what to do).
#
# They read what AWS already publishes (SQS, Lambda, API Gateway) and the `sophons` metrics the Lambdas write as
# CloudWatch Embedded Metric Format log lines: no PutMetricData call, no call per job. Every alarm treats missing
# data as not breaching: an idle deployment publishes nothing (SQS stops reporting a queue after six idle hours,
# Lambda reports no errors without invocations), and that must never page anyone.

locals {
  monitoring = var.monitoring.enabled

  # Every alarm notifies these topics when it goes into ALARM and when it is back to OK.
  alarm_topic_arns = [for arn in [var.monitoring.alarm_topic_arn, one(aws_sns_topic.alarms[*].arn)] : arn if arn != null]

  metric_namespace = "sophons"
  period           = 300

  # The one-metric alarms: a threshold on one metric over one period.
  metric_alarms = local.monitoring ? merge(
    {
      dead-letter-jobs = {
        description = "Jobs failed max_receive_count times and wait in the dead-letter queue (move-jobs retries them on move_jobs_schedule). Templates full or no Spot/on-demand capacity for long, or launches failing: see the create-runner log and docs/monitoring.md."
        namespace   = "AWS/SQS"
        metric      = "ApproximateNumberOfMessagesVisible"
        dimensions  = { QueueName = aws_sqs_queue.jobs_dlq.name }
        statistic   = "Maximum"
        threshold   = var.monitoring.dead_letter_jobs
        period      = local.period
      }
      oldest-job = {
        description = "A job has waited in the jobs queue longer than monitoring.oldest_job_seconds: create-runner is not taking jobs (errors, throttles, event source mapping disabled, too little concurrency). See docs/monitoring.md."
        namespace   = "AWS/SQS"
        metric      = "ApproximateAgeOfOldestMessage"
        dimensions  = { QueueName = aws_sqs_queue.jobs.name }
        statistic   = "Maximum"
        threshold   = var.monitoring.oldest_job_seconds
        period      = local.period
      }
      # An HTTP API publishes `5xx` (a REST API would publish `5XXError` by ApiName). ApiId alone covers every
      # stage; this API has one, `$default`.
      webhook-5xx = {
        description = "The webhook answered GitHub with 5xx (the autoscaler failed, timed out, was throttled, or could not queue the job). GitHub does not redeliver by itself: redeliver from the webhook's Recent Deliveries. See docs/monitoring.md."
        namespace   = "AWS/ApiGateway"
        metric      = "5xx"
        dimensions  = { ApiId = aws_apigatewayv2_api.webhook.id }
        statistic   = "Sum"
        threshold   = var.monitoring.webhook_5xx
        period      = local.period
      }
    },
    # The handlers return failures as values (batch item failures, answers), so Errors counts only crashes,
    # timeouts and failed cold starts.
    { for key, name in local.functions : "${replace(key, "_", "-")}-errors" => {
      description = "${name} failed (crash, timeout or failed cold start). Its log group says why. See docs/monitoring.md."
      namespace   = "AWS/Lambda"
      metric      = "Errors"
      dimensions  = { FunctionName = name }
      statistic   = "Sum"
      threshold   = var.monitoring.lambda_errors
      period      = local.period
    } },
    { for key, name in local.functions : "${replace(key, "_", "-")}-throttles" => {
      description = "Lambda refused to run ${name} (account or reserved concurrency exhausted). A throttled autoscaler answers GitHub 5xx. See docs/monitoring.md."
      namespace   = "AWS/Lambda"
      metric      = "Throttles"
      dimensions  = { FunctionName = name }
      statistic   = "Sum"
      threshold   = var.monitoring.lambda_throttles
      period      = local.period
    } },
    # A job that finds its template at max_runners waits in the waiting list (waiting.tf), not in the jobs queue,
    # so oldest-job and no-launch do not see it. The sweep writes OldestWaiting per template on sweep_schedule
    # (15 minutes by default) while the list holds a job, and nothing while it is empty: an hour always holds a
    # point while jobs wait (the check below warns when the sweep runs less often).
    { for template in local.templates : "oldest-waiting-${template}" => {
      description = "A job has waited for room in template ${template}'s waiting list for ${var.monitoring.oldest_job_seconds} s or more (monitoring.oldest_job_seconds): the template stays at max_runners. Dashboard: live instances and free slots of ${template}. Busy runners: raise its max_runners. Instances that do not end, or no free slot with fewer live instances than max_runners: see the stop-runner log and docs/monitoring.md."
      namespace   = local.metric_namespace
      metric      = "OldestWaiting"
      dimensions  = { deployment = var.deployment, template = template }
      statistic   = "Maximum"
      threshold   = var.monitoring.oldest_job_seconds
      period      = 3600
    } },
  ) : {}

  # The sweep's interval in minutes when sweep_schedule is a rate(...); null for a cron(...), which is not checked.
  sweep_rate    = try(regex("^rate\\(([0-9]+) (minute|hour|day)s?\\)$", var.sweep_schedule), null)
  sweep_minutes = local.sweep_rate == null ? null : tonumber(local.sweep_rate[0]) * { minute = 1, hour = 60, day = 1440 }[local.sweep_rate[1]]

  alarm_arns = concat(
    [for alarm in aws_cloudwatch_metric_alarm.metric : alarm.arn],
    aws_cloudwatch_metric_alarm.no_launch[*].arn,
  )
}

check "oldest_waiting_alarms" {
  assert {
    condition     = !local.monitoring || local.sweep_minutes == null || local.sweep_minutes <= 60
    error_message = "sweep_schedule is ${var.sweep_schedule}, but the ${var.deployment}-oldest-waiting-<template> alarms look at 1-hour periods of OldestWaiting, which the sweep writes once per run: hours without a sweep read as nothing waiting, so the alarms go back to OK while jobs still wait. Run the sweep at least hourly (docs/monitoring.md)."
  }
}

resource "aws_sns_topic" "alarms" {
  #checkov:skip=CKV_AWS_26:Encrypted with monitoring.alarm_topic_kms_key_arn when set. The AWS managed key alias/aws/sns cannot be used: CloudWatch alarms may not use it and would notify nobody. The topic carries alarm names and states only.
  count = local.monitoring && var.monitoring.alarm_email != null ? 1 : 0

  name              = "${var.deployment}-alarms"
  kms_master_key_id = var.monitoring.alarm_topic_kms_key_arn
  tags              = local.tags
}

# SNS mails the address a confirmation link first; nothing is delivered until it is followed.
resource "aws_sns_topic_subscription" "alarm_email" {
  count = length(aws_sns_topic.alarms)

  topic_arn = aws_sns_topic.alarms[0].arn
  protocol  = "email"
  endpoint  = var.monitoring.alarm_email
}

resource "aws_cloudwatch_metric_alarm" "metric" {
  for_each = local.metric_alarms

  alarm_name          = "${var.deployment}-${each.key}"
  alarm_description   = each.value.description
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  period              = each.value.period
  evaluation_periods  = 1
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"

  actions_enabled = true
  alarm_actions   = local.alarm_topic_arns
  ok_actions      = local.alarm_topic_arns
  tags            = local.tags
}

# Jobs wait and nothing launches: in each of the last no_launch_minutes / 5 periods the jobs queue held a job
# (visible: not yet taken; not visible: handed back or being handled) and no template launched an instance.
# Missing values count as 0 in metric math: `0 * waiting` gives the sum a value in every period the queue reports,
# so a window without any launch reads 0 instead of no data. An idle queue reports nothing: no data, not breaching.
#
# Launches are read by deployment alone: create-runner publishes each launch under that dimension set too (EMF,
# crates/core/src/metrics.rs), because it launches on-demand on any template, not only those with
# on_demand_fallback: the re-run of a job whose spot instance was interrupted, and a template in spot back-off.
# Listing Launches per template and capacity would miss those, or take 2 metrics per template (past the 10 an alarm's
# math reads from 5 templates on); the one metric counts every launch of every template and capacity.
resource "aws_cloudwatch_metric_alarm" "no_launch" {
  count = local.monitoring ? 1 : 0

  alarm_name          = "${var.deployment}-no-launch-while-jobs-wait"
  alarm_description   = "Jobs have waited ${var.monitoring.no_launch_minutes} minutes in the jobs queue and no template launched an instance: launches fail (capacity, quotas, AMI, subnets, permissions) or every template is full. See the create-runner log and docs/monitoring.md."
  evaluation_periods  = var.monitoring.no_launch_minutes / 5
  datapoints_to_alarm = var.monitoring.no_launch_minutes / 5
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"

  metric_query {
    id = "visible"
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesVisible"
      dimensions  = { QueueName = aws_sqs_queue.jobs.name }
      stat        = "Maximum"
      period      = local.period
    }
  }

  metric_query {
    id = "hidden"
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesNotVisible"
      dimensions  = { QueueName = aws_sqs_queue.jobs.name }
      stat        = "Maximum"
      period      = local.period
    }
  }

  metric_query {
    id = "launches"
    metric {
      namespace   = local.metric_namespace
      metric_name = "Launches"
      dimensions  = { deployment = var.deployment }
      stat        = "Sum"
      period      = local.period
    }
  }

  metric_query {
    id         = "waiting"
    expression = "visible + hidden"
    label      = "Jobs in the jobs queue"
  }

  metric_query {
    id         = "launched"
    expression = "0 * waiting + launches"
    label      = "Instances launched"
  }

  metric_query {
    id          = "stalled"
    expression  = "IF(waiting >= 1 AND launched < 1, 1, 0)"
    label       = "Jobs wait and nothing launched"
    return_data = true
  }

  actions_enabled = true
  alarm_actions   = local.alarm_topic_arns
  ok_actions      = local.alarm_topic_arns
  tags            = local.tags
}

################################################################################
# Dashboard
################################################################################

locals {
  templates = sort(keys(var.runner_templates))

  # One line per template and percentile: percentiles cannot be combined across templates.
  queue_time_widgets = {
    LaunchedAfter    = "Job created → instance launched (s)"
    CommandSentAfter = "Job created → runner command sent (s)"
    JobStartedAfter  = "Job created → job started (s)"
    EnqueuedAfter    = "Job created → queued by the webhook (s)"
    JobDuration      = "Job duration, start to end (s)"
  }
  queue_time_order = ["LaunchedAfter", "CommandSentAfter", "JobStartedAfter", "EnqueuedAfter", "JobDuration"]

  dashboard_widgets = concat(
    [
      {
        type = "text", x = 0, y = 0, width = 8, height = 6
        properties = {
          markdown = join("\n", [
            "# ${var.deployment}: runners",
            "Times count from the job's creation on GitHub (`created_at`), per template: p50, p90, p99.",
            "Counts are per 5 minutes. Namespace `${local.metric_namespace}`, written by the Lambdas as log lines (EMF).",
            "",
            "What each alarm means and what to do: **docs/monitoring.md** in the sophons repository.",
          ])
        }
      },
      {
        type = "alarm", x = 8, y = 0, width = 16, height = 6
        properties = {
          title  = "Alarms"
          alarms = local.alarm_arns
        }
      },
    ],
    [for i, metric in local.queue_time_order : {
      type = "metric", x = (i % 3) * 8, y = 6 + floor(i / 3) * 6, width = 8, height = 6
      properties = {
        title   = local.queue_time_widgets[metric]
        region  = local.region
        view    = "timeSeries"
        stacked = false
        period  = local.period
        yAxis   = { left = { min = 0, label = "seconds", showUnits = false } }
        metrics = concat([for template in local.templates : [
          for p in ["p50", "p90", "p99"] :
          [local.metric_namespace, metric, "deployment", var.deployment, "template", template, { stat = p, label = "${template} ${p}" }]
        ]]...)
      }
    }],
    [
      {
        type = "metric", x = 0, y = 18, width = 8, height = 6
        properties = {
          title   = "Launches by capacity"
          region  = local.region
          view    = "timeSeries"
          stacked = true
          period  = local.period
          yAxis   = { left = { min = 0, label = "instances", showUnits = false } }
          metrics = concat([for template in local.templates : [
            for capacity in ["spot", "on-demand"] :
            [local.metric_namespace, "Launches", "deployment", var.deployment, "template", template, "capacity", capacity, { stat = "Sum", label = "${template} ${capacity}" }]
          ]]...)
        }
      },
      # The reasons are the Lambdas' to name: SEARCH shows whichever exist.
      {
        type = "metric", x = 8, y = 18, width = 8, height = 6
        properties = {
          title   = "Hand-backs by reason (job hidden, retried later)"
          region  = local.region
          view    = "timeSeries"
          stacked = true
          period  = local.period
          yAxis   = { left = { min = 0, label = "jobs", showUnits = false } }
          metrics = [[{ id = "handbacks", expression = "SEARCH('{${local.metric_namespace},deployment,reason,template} MetricName=\"HandBacks\" deployment=\"${var.deployment}\"', 'Sum', ${local.period})" }]]
        }
      },
      {
        type = "metric", x = 16, y = 18, width = 8, height = 6
        properties = {
          title   = "Dead-letter trips by reason"
          region  = local.region
          view    = "timeSeries"
          stacked = true
          period  = local.period
          yAxis   = { left = { min = 0, label = "jobs", showUnits = false } }
          metrics = [[{ id = "deadletters", expression = "SEARCH('{${local.metric_namespace},deployment,reason,template} MetricName=\"DeadLetters\" deployment=\"${var.deployment}\"', 'Sum', ${local.period})" }]]
        }
      },
      {
        type = "metric", x = 0, y = 24, width = 8, height = 6
        properties = {
          title   = "Relaunches and Spot reclaims"
          region  = local.region
          view    = "timeSeries"
          stacked = false
          period  = local.period
          yAxis   = { left = { min = 0, label = "jobs", showUnits = false } }
          metrics = concat([for template in local.templates : [
            [local.metric_namespace, "Relaunches", "deployment", var.deployment, "template", template, { stat = "Sum", label = "${template} relaunches" }],
            [local.metric_namespace, "SpotReclaims", "deployment", var.deployment, "template", template, { stat = "Sum", label = "${template} Spot reclaims" }],
          ]]...)
        }
      },
      {
        type = "metric", x = 8, y = 24, width = 8, height = 6
        properties = {
          title   = "Lambda errors and throttles"
          region  = local.region
          view    = "timeSeries"
          stacked = false
          period  = local.period
          yAxis   = { left = { min = 0, label = "invocations", showUnits = false } }
          metrics = concat([for key in sort(keys(local.functions)) : [
            ["AWS/Lambda", "Errors", "FunctionName", local.functions[key], { stat = "Sum", label = "${replace(key, "_", "-")} errors" }],
            ["AWS/Lambda", "Throttles", "FunctionName", local.functions[key], { stat = "Sum", label = "${replace(key, "_", "-")} throttles" }],
          ]]...)
        }
      },
      {
        type = "metric", x = 16, y = 24, width = 8, height = 6
        properties = {
          title   = "Webhook answers by decision, and 5xx"
          region  = local.region
          view    = "timeSeries"
          stacked = false
          period  = local.period
          yAxis   = { left = { min = 0, label = "deliveries", showUnits = false } }
          metrics = [
            [{ id = "answers", expression = "SEARCH('{${local.metric_namespace},decision,deployment} MetricName=\"WebhookAnswers\" deployment=\"${var.deployment}\"', 'Sum', ${local.period})" }],
            ["AWS/ApiGateway", "5xx", "ApiId", aws_apigatewayv2_api.webhook.id, { stat = "Sum", label = "webhook 5xx (API Gateway)" }],
          ]
        }
      },
      # Gauges the sweep writes on sweep_schedule: a line per sweep, not per minute.
      {
        type = "metric", x = 0, y = 30, width = 8, height = 6
        properties = {
          title   = "Live instances and free slots per template"
          region  = local.region
          view    = "timeSeries"
          stacked = false
          period  = local.period
          yAxis   = { left = { min = 0, label = "instances", showUnits = false } }
          metrics = concat([for template in local.templates : [
            [local.metric_namespace, "LiveInstances", "deployment", var.deployment, "template", template, { stat = "Maximum", label = "${template} live" }],
            [local.metric_namespace, "FreeSlots", "deployment", var.deployment, "template", template, { stat = "Minimum", label = "${template} free slots" }],
          ]]...)
        }
      },
      # Below the slots: a template without free slots is where jobs wait for room. No line: nothing waits.
      {
        type = "metric", x = 0, y = 36, width = 8, height = 6
        properties = {
          title   = "Oldest job waiting for room, per template (s)"
          region  = local.region
          view    = "timeSeries"
          stacked = false
          period  = local.period
          yAxis   = { left = { min = 0, label = "seconds", showUnits = false } }
          metrics = [for template in local.templates :
            [local.metric_namespace, "OldestWaiting", "deployment", var.deployment, "template", template, { stat = "Maximum", label = "${template} oldest waiting" }]
          ]
          annotations = {
            horizontal = [{ label = "oldest-waiting alarms", value = var.monitoring.oldest_job_seconds }]
          }
        }
      },
      {
        type = "metric", x = 8, y = 30, width = 8, height = 6
        properties = {
          title   = "Jobs queue"
          region  = local.region
          view    = "timeSeries"
          stacked = false
          period  = local.period
          yAxis = {
            left  = { min = 0, label = "jobs", showUnits = false }
            right = { min = 0, label = "seconds", showUnits = false }
          }
          metrics = [
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.jobs.name, { stat = "Maximum", label = "waiting (visible)" }],
            ["AWS/SQS", "ApproximateNumberOfMessagesNotVisible", "QueueName", aws_sqs_queue.jobs.name, { stat = "Maximum", label = "handed back or being handled" }],
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", aws_sqs_queue.jobs.name, { stat = "Maximum", label = "oldest job (s)", yAxis = "right" }],
          ]
        }
      },
      {
        type = "metric", x = 16, y = 30, width = 8, height = 6
        properties = {
          title   = "Dead-letter queue"
          region  = local.region
          view    = "timeSeries"
          stacked = false
          period  = local.period
          yAxis = {
            left  = { min = 0, label = "jobs", showUnits = false }
            right = { min = 0, label = "seconds", showUnits = false }
          }
          metrics = [
            ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", aws_sqs_queue.jobs_dlq.name, { stat = "Maximum", label = "jobs" }],
            ["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName", aws_sqs_queue.jobs_dlq.name, { stat = "Maximum", label = "oldest (s)", yAxis = "right" }],
          ]
        }
      },
    ],
  )
}

resource "aws_cloudwatch_dashboard" "this" {
  count = local.monitoring ? 1 : 0

  dashboard_name = var.deployment
  dashboard_body = jsonencode({ widgets = local.dashboard_widgets })
}
