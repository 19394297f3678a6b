# Least privilege, one role per Lambda and one for the runner instances.
#
# - Anything that changes an instance (terminate, tag, SendCommand) is conditioned on the instance carrying
#   `sophons:deployment` = this deployment.
# - Instances can only be launched from this deployment's launch templates, tagged at launch, and the only
#   role that can be passed is the runner role, to EC2.
# - The runner role reads and deletes only its own instance's JIT parameter (/<deployment>/jit/<instance-id>,
#   tagged by create-runner with the instance's ARN; see "Runner instances" below), never lists parameters,
#   reads the runner script object only, and writes the command log group only.
# - DynamoDB on three tables only. Launch slots are items of the slots table (slots.tf): create-runner claims and
#   gives back, stop-runner frees and sweeps. Jobs waiting for room are items of the waiting table (waiting.tf):
#   create-runner parks them, create-runner and stop-runner wake them (read the oldest, send each to the jobs
#   queue, delete it). Spot interruptions are items of the interruptions table (interruptions.tf): stop-runner
#   records them and follows the interrupted jobs, create-runner reads them to launch re-runs and backed-off
#   templates on-demand, and the autoscaler records which job each runner ran (PutItem of `ran#` items only, by
#   a condition on the partition key). move-jobs and the runner instances have no DynamoDB action, and no role has
#   one beyond those tables.
# - Describe/Get actions that AWS does not scope to resources are the only statements on "*".

locals {
  instance_arns        = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
  jit_parameter_arns   = "${local.parameter_arn}${local.jit_path}/*"
  launch_template_arns = [for lt in aws_launch_template.runner : lt.arn]

  # create-runner tags each JIT parameter with the ARN of the instance it is for (arn:<partition>:ec2:<region>:
  # <account>:instance/<instance-id>); only that instance may read or delete it (ReadAndDeleteOwnJitConfig).
  jit_owner_tag = "sophons:instance-arn"

  config_parameter_arn = "${local.parameter_arn}${local.config_param_name}"
  # A missing credential is reported by the config parameter's precondition; these only must not fail first.
  webhook_secret_arn    = "${local.parameter_arn}${coalesce(local.webhook_secret_param_name, "${local.parameter_prefix}/github/unset")}"
  github_credential_arn = "${local.parameter_arn}${coalesce(local.github_credential_param_name, "${local.parameter_prefix}/github/unset")}"
  kms_key_arns          = var.parameter_kms_key_arn == null ? [] : [var.parameter_kms_key_arn]

  # Public parameters (/aws/service/...) have no account in their ARN.
  ami_parameter_arns = distinct([
    for t in values(local.runner_templates) : (
      startswith(t.ami_ssm_parameter, "/aws/service/")
      ? "arn:${local.partition}:ssm:${local.region}::parameter${t.ami_ssm_parameter}"
      : "${local.parameter_arn}${t.ami_ssm_parameter}"
    ) if t.ami_id == null
  ])

  deployment_condition_value = [var.deployment]
}

################################################################################
# Shared statements
################################################################################

# Every function reads the config document; all but the autoscaler read the GitHub credential. At a cold start both
# come in one GetParameters call (functions.tf, SOPHONS_SECRET_PARAMS), which needs ssm:GetParameters on each name.
data "aws_iam_policy_document" "read_github_credential" {
  statement {
    sid       = "ReadConfigAndGitHubCredential"
    actions   = ["ssm:GetParameter", "ssm:GetParameters"]
    resources = [local.config_parameter_arn, local.github_credential_arn]
  }

  dynamic "statement" {
    for_each = length(local.kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "DecryptParameters"
      actions   = ["kms:Decrypt"]
      resources = local.kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${local.region}.amazonaws.com"]
      }
    }
  }
}

data "aws_iam_policy_document" "own_instances" {
  statement {
    sid       = "TerminateOwnInstances"
    actions   = ["ec2:TerminateInstances"]
    resources = [local.instance_arns]

    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/sophons:deployment"
      values   = local.deployment_condition_value
    }
  }

  # Tags after launch, only on our instances, and only sophons: keys: create-runner's
  # sophons:command-id and sophons:runner-id, stop-runner's sophons:relaunched on an instance EC2 ended.
  statement {
    sid       = "TagOwnInstances"
    actions   = ["ec2:CreateTags"]
    resources = [local.instance_arns]

    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/sophons:deployment"
      values   = local.deployment_condition_value
    }

    condition {
      test     = "ForAllValues:StringLike"
      variable = "aws:TagKeys"
      values   = ["sophons:*"]
    }
  }

  statement {
    sid       = "DescribeInstances"
    actions   = ["ec2:DescribeInstances", "ec2:DescribeSpotInstanceRequests"]
    resources = ["*"] # Describe actions have no resource-level permissions.
  }
}

################################################################################
# autoscaler: verify the webhook, queue the job, record which job each runner ran
################################################################################

data "aws_iam_policy_document" "autoscaler" {
  statement {
    sid       = "ReadConfigAndWebhookSecret"
    actions   = ["ssm:GetParameter", "ssm:GetParameters"]
    resources = [local.config_parameter_arn, local.webhook_secret_arn]
  }

  dynamic "statement" {
    for_each = length(local.kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "DecryptParameters"
      actions   = ["kms:Decrypt"]
      resources = local.kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${local.region}.amazonaws.com"]
      }
    }
  }

  statement {
    sid       = "QueueJobs"
    actions   = ["sqs:SendMessage", "sqs:GetQueueUrl"]
    resources = [aws_sqs_queue.jobs.arn]
  }

  # GitHub gives a queued job to any idle runner with its labels, so a runner may run a job of another workflow
  # run than the one its instance was launched for. The `in_progress` delivery names the runner: the webhook keeps
  # which job it took (PutItem ran#<instance id> / job, unconditional; a redelivery writes the same again), and
  # stop-runner's sweep reads it back (FollowInterruptedJobs) to re-run the job an interrupted runner really ran.
  # Only items whose partition key starts with ran#: the webhook, the one function the internet reaches, can never
  # write (or read) a re-run claim, a spot loss, a back-off or an interrupted job.
  # dynamodb:LeadingKeys "represents the first key attribute of a table—in other words, the partition key", is
  # checked for PutItem, and must be used with ForAllValues (Amazon DynamoDB Developer Guide, "Using IAM policy
  # conditions for fine-grained access control":
  # https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/specifying-conditions.html); StringLike
  # matches the * wildcard (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html).
  # ForAllValues is also true when the key is missing from the request, so the Null test requires it
  # (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-single-vs-multi-valued-context-keys.html).
  statement {
    sid       = "RecordWhichJobEachRunnerRan"
    actions   = ["dynamodb:PutItem"]
    resources = [aws_dynamodb_table.interruptions.arn]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "dynamodb:LeadingKeys"
      values   = ["ran#*"]
    }

    condition {
      test     = "Null"
      variable = "dynamodb:LeadingKeys"
      values   = ["false"]
    }
  }
}

################################################################################
# create-runner: launch an instance for a job, hand it the JIT config, start the runner script
################################################################################

data "aws_iam_policy_document" "create_runner" {
  source_policy_documents = [
    data.aws_iam_policy_document.read_github_credential.json,
    data.aws_iam_policy_document.own_instances.json,
  ]

  statement {
    sid     = "ConsumeJobs"
    actions = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"]
    resources = [
      aws_sqs_queue.jobs.arn
    ]
  }

  # An instant fleet launches with the caller's own RunInstances rights (below, bound to our launch templates).
  # CreateFleet itself is authorized on the fleet, the launch template and the resources it will create; the
  # only launch templates it may name are ours.
  statement {
    sid     = "CreateFleetFromOwnTemplates"
    actions = ["ec2:CreateFleet"]
    resources = concat(local.launch_template_arns, [
      for type in ["fleet", "instance", "volume", "network-interface", "subnet", "security-group", "spot-instances-request", "key-pair"] :
      "arn:${local.partition}:ec2:${local.region}:${local.account_id}:${type}/*"
      ], [
      "arn:${local.partition}:ec2:${local.region}::image/*",
    ])
  }

  statement {
    sid       = "LaunchFromOwnTemplates"
    actions   = ["ec2:RunInstances"]
    resources = local.launch_template_arns
  }

  # The instance itself must be tagged with this deployment in the launch request.
  statement {
    sid       = "LaunchTaggedInstances"
    actions   = ["ec2:RunInstances"]
    resources = [local.instance_arns]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/sophons:deployment"
      values   = local.deployment_condition_value
    }

    condition {
      test     = "ArnEquals"
      variable = "ec2:LaunchTemplate"
      values   = local.launch_template_arns
    }
  }

  # The other resources a launch touches, only when the launch uses one of our launch templates.
  statement {
    sid     = "LaunchResourcesOfOwnTemplates"
    actions = ["ec2:RunInstances"]
    resources = [
      for type in ["volume", "network-interface", "subnet", "security-group", "spot-instances-request", "key-pair"] :
      "arn:${local.partition}:ec2:${local.region}:${local.account_id}:${type}/*"
    ]

    condition {
      test     = "ArnEquals"
      variable = "ec2:LaunchTemplate"
      values   = local.launch_template_arns
    }
  }

  statement {
    sid       = "LaunchImagesOfOwnTemplates"
    actions   = ["ec2:RunInstances"]
    resources = ["arn:${local.partition}:ec2:${local.region}::image/*"]

    condition {
      test     = "ArnEquals"
      variable = "ec2:LaunchTemplate"
      values   = local.launch_template_arns
    }
  }

  # Tags at launch (TagSpecifications of CreateFleet and of the launch template).
  statement {
    sid     = "TagOnLaunch"
    actions = ["ec2:CreateTags"]
    resources = [
      for type in ["instance", "volume", "network-interface", "spot-instances-request", "fleet"] :
      "arn:${local.partition}:ec2:${local.region}:${local.account_id}:${type}/*"
    ]

    condition {
      test     = "StringEquals"
      variable = "ec2:CreateAction"
      values   = ["CreateFleet", "RunInstances"]
    }
  }

  statement {
    sid       = "PassRunnerRoleToEc2"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.runner.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ec2.amazonaws.com"]
    }
  }

  # EC2 Fleet and Spot need their service-linked roles; the first launch in an account creates them.
  statement {
    sid     = "CreateFleetAndSpotServiceLinkedRoles"
    actions = ["iam:CreateServiceLinkedRole"]
    resources = [
      "arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/ec2fleet.amazonaws.com/AWSServiceRoleForEC2Fleet",
      "arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot",
    ]

    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = ["ec2fleet.amazonaws.com", "spot.amazonaws.com"]
    }
  }

  statement {
    sid = "DescribeForLaunch"
    actions = [
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplates",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:DescribeSubnets",
    ]
    resources = ["*"] # Describe actions have no resource-level permissions.
  }

  # Launch templates that name their AMI as resolve:ssm:<parameter> are resolved with the caller's rights.
  dynamic "statement" {
    for_each = length(local.ami_parameter_arns) > 0 ? [1] : []

    content {
      sid       = "ResolveAmiParameters"
      actions   = ["ssm:GetParameters", "ssm:GetParameter"]
      resources = local.ami_parameter_arns
    }
  }

  statement {
    sid       = "WriteJitConfig"
    actions   = ["ssm:PutParameter", "ssm:DeleteParameter", "ssm:GetParameter"]
    resources = [local.jit_parameter_arns]
  }

  # The owner tag is what lets an instance read its JIT parameter (ReadAndDeleteOwnJitConfig). PutParameter
  # takes Tags only when it creates (not with Overwrite), so a rewritten parameter is tagged again with
  # AddTagsToResource; tagging on create needs this permission too.
  statement {
    sid       = "TagJitConfigWithItsInstance"
    actions   = ["ssm:AddTagsToResource"]
    resources = [local.jit_parameter_arns]

    condition {
      test     = "ForAllValues:StringLike"
      variable = "aws:TagKeys"
      values   = ["sophons:*"]
    }
  }

  # A launch claims one of its template's max_runners slots (PutItem if the slot is not taken), so that
  # concurrent invocations never launch past max_runners; it reads the template's claims (Query, GetItem), and a
  # failed launch gives its slot back (DeleteItem, conditioned on its own claim).
  statement {
    sid       = "ClaimLaunchSlots"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.slots.arn]
  }

  # A job that finds its template at max_runners is parked in the waiting list (PutItem) instead of handed back,
  # which would spend one of its receives. Right after parking, create-runner wakes the template (a slot freed
  # between its count and its park would otherwise wake nobody): it reads the oldest parked jobs (Query) and marks
  # each it sends back to the jobs queue (UpdateItem, conditioned on the item it read). A woken job it has served
  # is taken off the list (DeleteItem), as is one GitHub has cancelled by now.
  statement {
    sid       = "ParkJobsWaitingForRoom"
    actions   = ["dynamodb:PutItem", "dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.waiting.arn]
  }

  # A job woken from the waiting list goes back to the jobs queue, where the next create-runner launches it.
  statement {
    sid       = "WakeWaitingJobs"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.jobs.arn]
  }

  # Before a launch, create-runner asks whether the job is the re-run of an interrupted job (GetItem of the claim
  # rerun#<repo>#<run>/<job name>) and whether its template is backed off spot (Query of the backoff partition):
  # either launches on-demand. A spot launch EC2 refuses for capacity is a spot loss (PutItem spot#<template>);
  # create-runner counts the template's losses in the window (Query) and starts the back-off when they reach
  # spot_backoff_after (PutItem backoff/<template>, conditioned on none being on). Never DeleteItem: only the sweep
  # ends what the table follows.
  statement {
    sid       = "LaunchRerunsAndBackedOffTemplatesOnDemand"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"]
    resources = [aws_dynamodb_table.interruptions.arn]
  }

  statement {
    sid       = "RunScriptDocument"
    actions   = ["ssm:SendCommand"]
    resources = ["arn:${local.partition}:ssm:${local.region}::document/AWS-RunShellScript"]
  }

  statement {
    sid       = "RunScriptOnOwnInstances"
    actions   = ["ssm:SendCommand"]
    resources = [local.instance_arns]

    condition {
      test     = "StringEquals"
      variable = "ssm:resourceTag/sophons:deployment"
      values   = local.deployment_condition_value
    }
  }
}

################################################################################
# stop-runner: clean up after a command ends, and sweep
################################################################################

data "aws_iam_policy_document" "stop_runner" {
  source_policy_documents = [
    data.aws_iam_policy_document.read_github_credential.json,
    data.aws_iam_policy_document.own_instances.json,
  ]

  statement {
    sid       = "CancelOwnSpotRequests"
    actions   = ["ec2:CancelSpotInstanceRequests"]
    resources = ["arn:${local.partition}:ec2:${local.region}:${local.account_id}:spot-instances-request/*"]

    condition {
      test     = "StringEquals"
      variable = "ec2:ResourceTag/sophons:deployment"
      values   = local.deployment_condition_value
    }
  }

  statement {
    sid       = "CleanUpJitConfig"
    actions   = ["ssm:DeleteParameter", "ssm:DeleteParameters", "ssm:GetParametersByPath"]
    resources = [local.jit_parameter_arns, "${local.parameter_arn}${local.jit_path}"]
  }

  # An ended instance frees its launch slot; the sweep lists every claim (Scan) and frees those whose
  # claimant died. Never PutItem: only create-runner claims.
  statement {
    sid       = "FreeLaunchSlots"
    actions   = ["dynamodb:GetItem", "dynamodb:DeleteItem", "dynamodb:Query", "dynamodb:Scan"]
    resources = [aws_dynamodb_table.slots.arn]
  }

  # A freed slot wakes its template, and the sweep wakes every template: the oldest parked jobs (Query) are marked
  # woken (UpdateItem, conditioned on the item it read) and go back to the jobs queue (RequeueJobs); one GitHub has
  # cancelled by now (queued over 24 h ago) is taken off the list (DeleteItem). Never PutItem: only create-runner
  # parks.
  statement {
    sid       = "WakeWaitingJobs"
    actions   = ["dynamodb:Query", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.waiting.arn]
  }

  # An interrupted job is recorded (PutItem interrupted/<job_id>, conditioned on not being there) with its
  # template's spot loss (PutItem spot#<template>, counted by a Query), which may start the template's back-off
  # (PutItem backoff/<template>). The sweep reads the interrupted jobs (Query of that partition), claims each re-run
  # before asking GitHub (PutItem rerun#..., conditioned on no other claim) and gives the claim back when GitHub
  # refused (DeleteItem); it deletes a job's item once GitHub concluded it, and a back-off once it is over
  # (DeleteItem). Never Scan: every read names its partition.
  statement {
    sid       = "FollowInterruptedJobs"
    actions   = ["dynamodb:PutItem", "dynamodb:Query", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.interruptions.arn]
  }

  statement {
    sid       = "ListParametersAndCommands"
    actions   = ["ssm:DescribeParameters", "ssm:GetCommandInvocation"]
    resources = ["*"] # Neither action has resource-level permissions; both return metadata only.
  }

  statement {
    sid       = "RequeueJobs"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.jobs.arn]
  }
}

################################################################################
# move-jobs: dead-letter queue -> jobs queue
################################################################################

data "aws_iam_policy_document" "move_jobs" {
  source_policy_documents = [data.aws_iam_policy_document.read_github_credential.json]

  statement {
    sid       = "DrainDeadLetterQueue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
    resources = [aws_sqs_queue.jobs_dlq.arn]
  }

  statement {
    sid       = "RequeueJobs"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.jobs.arn]
  }

  # The runner cache (runner_cache_enabled): HeadObject (s3:GetObject) and a multipart upload (s3:PutObject,
  # s3:AbortMultipartUpload) under the cache prefix only. s3:ListBucket on the bucket lets HeadObject answer a
  # missing package with 404 instead of 403 (S3 HeadObject API reference, "Permissions"); the bucket holds
  # nothing secret (the runner script and runner packages).
  dynamic "statement" {
    for_each = var.runner_cache_enabled ? [1] : []
    content {
      sid       = "CopyRunnerPackages"
      actions   = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
      resources = ["${aws_s3_bucket.scripts.arn}/${local.runner_cache_prefix}*"]
    }
  }

  dynamic "statement" {
    for_each = var.runner_cache_enabled ? [1] : []
    content {
      sid       = "TellMissingRunnerPackages"
      actions   = ["s3:ListBucket"]
      resources = [aws_s3_bucket.scripts.arn]
    }
  }
}

################################################################################
# Runner instances
################################################################################

data "aws_iam_policy_document" "runner_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "runner" {
  name                 = "${var.deployment}-runner"
  description          = "Role of the ${var.deployment} runner instances: SSM agent, its own JIT config, the runner script"
  assume_role_policy   = data.aws_iam_policy_document.runner_assume.json
  max_session_duration = 3600
  tags                 = local.tags
}

# What AmazonSSMManagedInstanceCore grants for Run Command, without its ssm:GetParameter(s) on "*": a job
# running on the box must not be able to read the GitHub credentials or the webhook secret.
data "aws_iam_policy_document" "runner" {
  #checkov:skip=CKV_AWS_111:The SSM agent's message channels (ec2messages:*, ssmmessages:*) have no resource-level permissions; AmazonSSMManagedInstanceCore grants them on "*" too. Every other statement is scoped.
  #checkov:skip=CKV_AWS_356:Same statement: ec2messages and ssmmessages actions accept only "*" as their resource.
  statement {
    sid = "SsmAgentMessageChannels"
    actions = [
      "ec2messages:AcknowledgeMessage",
      "ec2messages:DeleteMessage",
      "ec2messages:FailMessage",
      "ec2messages:GetEndpoint",
      "ec2messages:GetMessages",
      "ec2messages:SendReply",
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"]
  }

  statement {
    sid = "SsmAgentRegistration"
    actions = [
      "ssm:UpdateInstanceInformation",
      "ssm:ListInstanceAssociations",
      "ssm:UpdateInstanceAssociationStatus",
    ]
    resources = [local.instance_arns]
  }

  statement {
    sid       = "SsmAgentDocuments"
    actions   = ["ssm:GetDocument", "ssm:DescribeDocument"]
    resources = ["arn:${local.partition}:ssm:${local.region}::document/*"]
  }

  # Only the calling instance's own JIT parameter: a job that learns another instance's id must not be able to
  # take that runner's registration. The Resource cannot name the caller: an instance ARN is no parameter name
  # (no ":" allowed), and "The ec2:SourceInstanceARN key cannot be used as a variable to populate the ARN for
  # the Resource element in a statement" (Amazon EC2 User Guide, policy structure, as published in
  # awsdocs/amazon-ec2-user-guide: https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/iam-policy-structure.html).
  # So the parameter carries its instance's ARN as a tag and the condition compares the two:
  # - ec2:SourceInstanceARN is "the Amazon Resource Name (ARN) of the Amazon EC2 instance from which the
  #   request is made. This key is present only when the request comes from an Amazon EC2 instance using an
  #   IAM role associated with an EC2 instance profile", and may be used as a policy variable
  #   (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html); "This key is
  #   included in the request context whenever the role session is created by an Amazon EC2 instance"
  #   (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-ec2-source-instance-arn).
  # - "You can use a policy variable for Condition values in any condition that involves the string
  #   operators" (same variables page), and GetParameter and DeleteParameter on a parameter take
  #   aws:ResourceTag/${TagKey} (https://docs.aws.amazon.com/service-authorization/latest/reference/list_awssystemsmanager.html).
  # Without the key, or without the tag, the condition cannot match and the request is denied.
  statement {
    sid       = "ReadAndDeleteOwnJitConfig"
    actions   = ["ssm:GetParameter", "ssm:DeleteParameter"]
    resources = [local.jit_parameter_arns]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${local.jit_owner_tag}"
      values   = ["$${ec2:SourceInstanceARN}"]
    }
  }

  # The tag is the access check, so the runner must never move it, even if someone attaches a broader policy
  # to this role ("consider explicitly denying users the ability to add those tags to or remove them",
  # Amazon EC2 User Guide, attribute-based access).
  statement {
    sid       = "NeverRetagJitConfig"
    effect    = "Deny"
    actions   = ["ssm:AddTagsToResource", "ssm:RemoveTagsFromResource", "ssm:PutParameter"]
    resources = [local.jit_parameter_arns]
  }

  statement {
    sid = "ReadRunnerScript"
    # GetObject only: no ListBucket, so the box learns nothing else about the bucket.
    actions = ["s3:GetObject"]
    resources = concat(
      ["${aws_s3_bucket.scripts.arn}/${local.runner_script_key}"],
      var.runner_cache_enabled ? ["${aws_s3_bucket.scripts.arn}/${local.runner_cache_prefix}*"] : [],
    )
  }

  statement {
    sid       = "WriteCommandOutput"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.runner_commands.arn}:*"]
  }

  statement {
    sid       = "FindCommandLogGroup"
    actions   = ["logs:DescribeLogGroups"]
    resources = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:*"]
  }

  dynamic "statement" {
    for_each = length(local.kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "DecryptOwnJitConfig"
      actions   = ["kms:Decrypt"]
      resources = local.kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["ssm.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "runner" {
  name   = "${var.deployment}-runner"
  role   = aws_iam_role.runner.id
  policy = data.aws_iam_policy_document.runner.json
}

resource "aws_iam_instance_profile" "runner" {
  name = "${var.deployment}-runner"
  role = aws_iam_role.runner.name
  tags = local.tags
}
