# The demo's deployment: the project's own root module, applied to moto server, with the GitHub API
# pointed at the demo's fake GitHub. Short delays so that a hand-back or a DLQ trip takes seconds.

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 7.0"
    }
  }
}

variable "moto_endpoint" {
  description = "moto server URL."
  type        = string
}

variable "github_api_url" {
  description = "The demo's fake GitHub."
  type        = string
}

variable "lambda_zip_dir" {
  description = "Placeholder <binary>/bootstrap.zip files: the demo runs the binaries locally, not in moto."
  type        = string
}

variable "deployment" {
  description = "Deployment name, unique per demo run."
  type        = string
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  s3_use_path_style           = true

  endpoints {
    apigatewayv2   = var.moto_endpoint
    cloudwatch     = var.moto_endpoint
    cloudwatchlogs = var.moto_endpoint
    dynamodb       = var.moto_endpoint
    ec2            = var.moto_endpoint
    eventbridge    = var.moto_endpoint
    iam            = var.moto_endpoint
    kms            = var.moto_endpoint
    lambda         = var.moto_endpoint
    s3             = var.moto_endpoint
    sqs            = var.moto_endpoint
    ssm            = var.moto_endpoint
    sts            = var.moto_endpoint
  }
}

resource "aws_vpc" "demo" {
  #checkov:skip=CKV2_AWS_11:Demo fixture inside moto: no traffic, no flow logs.
  #checkov:skip=CKV2_AWS_12:Demo fixture inside moto: nothing uses the default security group.
  cidr_block = "10.77.0.0/16"
}

# Large enough for a burst: moto never gives back the address of a terminated instance (AWS does),
# so every launch of the run uses one up. A /24 (251 addresses) stopped JOBS=1000 at its 251st launch.
resource "aws_subnet" "demo" {
  vpc_id     = aws_vpc.demo.id
  cidr_block = "10.77.0.0/17"
}

module "sophons" {
  source = "../../../terraform"

  deployment     = var.deployment
  github_owner   = "demo-org"
  github_scope   = "org"
  github_api_url = var.github_api_url
  github_token   = "ghp_demo_token_not_a_secret"
  webhook_secret = "demo-webhook-secret"
  lambda_zip_dir = var.lambda_zip_dir
  vpc_id         = aws_vpc.demo.id
  subnet_ids     = [aws_subnet.demo.id]

  retry_delay_seconds = 2

  runner_templates = {
    cpu   = { labels = ["linux", "x64"], instance_types = ["c7i.large", "m7i.large"], max_runners = 4, ami_id = "ami-12c6146b" }
    gpu   = { labels = ["linux", "x64", "gpu"], instance_types = ["g5.xlarge"], max_runners = 2, on_demand_fallback = false, ami_id = "ami-12c6146b" }
    large = { labels = ["linux", "x64", "large"], instance_types = ["m7i.4xlarge"], max_runners = 2, ami_id = "ami-12c6146b" }
  }

  # moto gaps, as in terraform/test/moto: bucket-policy conditions and RedriveAllowPolicy read-back.
  script_bucket_tls_only_policy = false
  dlq_redrive_allow_policy      = false
  # No github.com here to copy runner releases from; runners are not real either.
  runner_cache_enabled = false
}

output "config_parameter_name" {
  value = module.sophons.config_parameter_name
}

output "jobs_queue_url" {
  value = module.sophons.jobs_queue_url
}

output "dead_letter_queue_url" {
  value = module.sophons.dead_letter_queue_url
}

output "launch_template_names" {
  value = module.sophons.launch_template_names
}

output "webhook_url" {
  value = module.sophons.webhook_url
}

output "function_names" {
  value = module.sophons.function_names
}
