# Plans the root module with one bad input at a time (var.case); scripts/check-terraform.sh expects each plan to
# fail with the message listed in cases.txt. Only data sources are read, from moto.

terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}

variable "case" {
  description = "Which bad input to plan with (a key of local.cases)."
  type        = string
}

variable "moto_endpoint" {
  description = "moto server URL."
  type        = string
}

variable "lambda_zip_dir" {
  description = "Directory of placeholder <binary>/bootstrap.zip files."
  type        = string
}

provider "aws" {
  region     = "us-east-1"
  access_key = "test"
  secret_key = "test"

  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true

  endpoints {
    ec2 = var.moto_endpoint
    iam = var.moto_endpoint
    ssm = var.moto_endpoint
    sts = var.moto_endpoint
  }
}

locals {
  good = {
    deployment                            = "sophons"
    github_token_parameter_name           = "/sophons/github/token"
    github_app                            = null
    github_app_private_key_parameter_name = null
    webhook_secret_parameter_name         = "/sophons/github/webhook-secret"
    subnet_ids                            = ["subnet-0abc"]
    repositories                          = []
    max_runner_lifetime_seconds           = 28800
    runner_pin                            = null
    image_builder                         = {}
    spot_backoff_within_minutes           = 30
    runner_templates                      = { cpu = { labels = ["linux"], instance_types = ["c7i.large"] } }
  }
  # The image_builder pipeline is never applied (moto has no Image Builder); these plans are what proves its
  # expressions, preconditions and the templates' choice of image.
  baked = {
    image_builder = { enabled = true, architectures = ["x86_64", "arm64"] }
    runner_templates = {
      cpu = { labels = ["linux"], instance_types = ["c7i.large"], baked_image = true, docker = true }
      arm = { labels = ["arm64"], instance_types = ["t4g.small"], baked_image = true, packages = [] }
    }
  }
  cases = {
    good              = {}
    token_and_app     = { github_app = { app_id = 1, installation_id = 2 }, github_app_private_key_parameter_name = "/sophons/github/app-key" }
    no_credential     = { github_token_parameter_name = null }
    no_webhook_secret = { webhook_secret_parameter_name = null }
    other_owner       = { repositories = ["someone-else/app"] }
    no_subnets        = { subnet_ids = [] }
    bad_deployment    = { deployment = "Sophons_Prod" }
    short_lifetime    = { max_runner_lifetime_seconds = 3600 }
    old_runner_pin    = { runner_pin = { version = "2.326.0", sha256_x64 = sha256("x64"), sha256_arm64 = sha256("arm64") } }
    bad_checksum      = { runner_pin = { version = "2.330.0", sha256_x64 = sha256("x64"), sha256_arm64 = "unknown" } }
    no_backoff_window = { spot_backoff_within_minutes = 0 }
    bad_package       = { runner_templates = { cpu = { labels = ["linux"], instance_types = ["c7i.large"], packages = ["git", "-y"] } } }
    baked             = local.baked
    baked_unbuilt     = { runner_templates = local.baked.runner_templates }
    baked_other_arch  = merge(local.baked, { image_builder = { enabled = true, architectures = ["x86_64"] } })
    baked_small_disk = merge(local.baked, { runner_templates = {
      cpu = { labels = ["linux"], instance_types = ["c7i.large"], baked_image = true, volume_size_gb = 8 }
    }, image_builder = { enabled = true, volume_size_gb = 12 } })
  }
  input = merge(local.good, local.cases[var.case])
}

module "sophons" {
  source = "../.."

  deployment     = local.input.deployment
  github_owner   = "my-org"
  vpc_id         = "vpc-0abc"
  lambda_zip_dir = var.lambda_zip_dir

  github_token_parameter_name           = local.input.github_token_parameter_name
  github_app                            = local.input.github_app
  github_app_private_key_parameter_name = local.input.github_app_private_key_parameter_name
  webhook_secret_parameter_name         = local.input.webhook_secret_parameter_name
  subnet_ids                            = local.input.subnet_ids
  repositories                          = local.input.repositories
  max_runner_lifetime_seconds           = local.input.max_runner_lifetime_seconds
  runner_pin                            = local.input.runner_pin
  image_builder                         = local.input.image_builder
  spot_backoff_within_minutes           = local.input.spot_backoff_within_minutes
  runner_templates                      = local.input.runner_templates
}
