data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition

  # Every resource carries the deployment tag; IAM conditions on runner instances key on it.
  deployment_tag = { "sophons:deployment" = var.deployment }
  tags           = merge(var.tags, local.deployment_tag)

  # SSM parameter paths. The JIT path is the only one the runner instances can touch.
  parameter_prefix = "/${var.deployment}"
  jit_path         = "${local.parameter_prefix}/jit"
  parameter_arn    = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter"

  lambda_zip_dir = coalesce(var.lambda_zip_dir, "${path.module}/../target/lambda")

  functions = {
    autoscaler    = "${var.deployment}-autoscaler"
    create_runner = "${var.deployment}-create-runner"
    stop_runner   = "${var.deployment}-stop-runner"
    move_jobs     = "${var.deployment}-move-jobs"
  }
}
