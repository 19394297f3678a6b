# Applies the whole root module against moto server (scripts/check-terraform.sh starts it). Only the
# provider is pointed at moto; the module gets production defaults except where a variable is the only way
# around a moto gap (see the comments below).

terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}

variable "moto_endpoint" {
  description = "moto server URL, such as http://127.0.0.1:5000."
  type        = string
}

variable "lambda_zip_dir" {
  description = "Directory of placeholder <binary>/bootstrap.zip files (make build is not part of make test)."
  type        = string
}

variable "secrets" {
  description = "The fixtures' secrets: the pat deployment's token, the App deployment's private key (PEM) and the webhook secret. check-terraform.sh generates throwaway values for each run, so that nothing secret-shaped is committed (secret scanners rightly flag a key, placeholder or not)."
  type = object({
    github_token           = string
    github_app_private_key = string
    webhook_secret         = string
  })
  sensitive = true
}

variable "cpu_max_runners" {
  description = "max_runners of the pat deployment's template_cpu. check-terraform.sh applies again with another value to see the change reach every function."
  type        = number
  default     = 20
}

variable "deployment_prefix" {
  description = "Prefix of the two deployment names (<prefix>-pat, <prefix>-app); unique per run so a shared moto server can take several runs."
  type        = string
  default     = "sophons"
}

provider "aws" {
  region     = "us-east-1"
  access_key = "test"
  secret_key = "test"

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
    sns            = var.moto_endpoint
    sqs            = var.moto_endpoint
    ssm            = var.moto_endpoint
    sts            = var.moto_endpoint
  }
}

resource "aws_vpc" "test" {
  #checkov:skip=CKV2_AWS_11:Test fixture inside moto: the VPC exists only to give the module a vpc_id; no traffic, no flow logs.
  #checkov:skip=CKV2_AWS_12:Test fixture inside moto: nothing uses the default security group.
  cidr_block = "10.42.0.0/16"
}

resource "aws_subnet" "test" {
  for_each = { a = "10.42.1.0/24", b = "10.42.2.0/24" }

  vpc_id     = aws_vpc.test.id
  cidr_block = each.value
}

# Deployment one: organization runners, a token Terraform stores, the webhook secret passed by name.
module "pat" {
  source = "../.."

  deployment     = "${var.deployment_prefix}-pat"
  github_owner   = "sophons-test-org"
  github_scope   = "org"
  lambda_zip_dir = var.lambda_zip_dir

  # Both ways of passing secrets are exercised: a created SecureString and an existing parameter name.
  github_token                  = var.secrets.github_token
  webhook_secret_parameter_name = aws_ssm_parameter.webhook_secret.name
  repositories                  = ["sophons-test-org/app"]
  runner_cache_enabled          = true

  vpc_id     = aws_vpc.test.id
  subnet_ids = [for s in aws_subnet.test : s.id]

  runner_templates = {
    template_cpu = {
      labels         = ["linux", "x64"]
      instance_types = ["c7i.large", "m7i.large"]
      max_runners    = var.cpu_max_runners
      packages       = ["git", "jq"]
      docker         = true
    }
    # moto stores `resolve:ssm:` image ids as given; this template uses an explicit AMI id instead, so
    # both forms are applied.
    arm_small = {
      labels             = ["linux", "arm64"]
      instance_types     = ["t4g.small"]
      ami_id             = "ami-0123456789abcdef0"
      on_demand_fallback = false
      volume_size_gb     = 20
      subnet_ids         = [aws_subnet.test["a"].id]
      packages           = []
    }
  }

  tags = { Environment = "moto" }

  # Alarms mail an address through a topic the module creates.
  monitoring = { alarm_email = "runners-oncall@example.com" }

  # moto gaps (production keeps the defaults, true):
  # - moto applies bucket policies without their conditions: the Deny-unless-TLS statement would deny all.
  # - moto stores RedriveAllowPolicy but never returns it: the provider would wait for it forever.
  script_bucket_tls_only_policy = false
  dlq_redrive_allow_policy      = false
}

# Deployment two: repository runners, a GitHub App, both secrets created by Terraform, all optional
# switches flipped away from their defaults (but image_builder: moto has no Image Builder; terraform/test/preconditions
# plans it instead).
module "app" {
  source = "../.."

  deployment     = "${var.deployment_prefix}-app"
  github_owner   = "sophons-test-user"
  github_scope   = "repo"
  lambda_zip_dir = var.lambda_zip_dir

  github_app             = { app_id = 123456, installation_id = 7890123 }
  github_app_private_key = var.secrets.github_app_private_key
  webhook_secret         = var.secrets.webhook_secret

  vpc_id              = aws_vpc.test.id
  subnet_ids          = [aws_subnet.test["b"].id]
  lambda_architecture = "arm64"
  lambda_tracing_mode = "Active"
  log_retention_days  = 7

  # A pinned runner release. The checksums are computed, not written out: secret scanners flag 64 hex digits.
  runner_pin = {
    version      = "2.330.0"
    sha256_x64   = sha256("actions-runner-linux-x64-2.330.0")
    sha256_arm64 = sha256("actions-runner-linux-arm64-2.330.0")
  }

  runner_templates = {
    "gpu-large" = {
      labels         = ["linux", "gpu"]
      instance_types = ["g5.xlarge", "g6.xlarge"]
      max_runners    = 2
      user_data      = "#!/bin/bash\necho hello\n"
      # A job EC2 interrupted is not re-run here.
      rerun_interrupted_jobs = false
    }
  }

  # No spot back-off: the template asks for spot whatever it lost.
  spot_backoff_after = 0

  # Alarms go to a topic that exists already, with thresholds of its own.
  monitoring = {
    alarm_topic_arn    = aws_sns_topic.existing_alarms.arn
    oldest_job_seconds = 900
    no_launch_minutes  = 15
    lambda_errors      = 3
  }

  script_bucket_tls_only_policy = false
  dlq_redrive_allow_policy      = false
}

resource "aws_ssm_parameter" "webhook_secret" {
  #checkov:skip=CKV_AWS_337:Test fixture inside moto holding a throwaway value; real deployments choose their key with parameter_kms_key_arn.
  name  = "/${var.deployment_prefix}-existing/webhook-secret"
  type  = "SecureString"
  value = var.secrets.webhook_secret
}

resource "aws_sns_topic" "existing_alarms" {
  #checkov:skip=CKV_AWS_26:Test fixture inside moto: the operator's own topic that alarms notify; no message is ever published.
  name = "${var.deployment_prefix}-existing-alarms"
}

output "config_parameter_names" {
  value = [module.pat.config_parameter_name, module.app.config_parameter_name]
}

output "webhook_urls" {
  value = [module.pat.webhook_url, module.app.webhook_url]
}

output "monitoring" {
  description = "Each deployment's dashboard, alarms and alarm topics (terraform/test/check_monitoring.py)."
  value       = { pat = module.pat.monitoring, app = module.app.monitoring }
}

output "functions_by_config_parameter" {
  description = "The four functions that read each config document."
  value = {
    for deployment in [module.pat, module.app] :
    deployment.config_parameter_name => values(deployment.function_names)
  }
}
