# A GitHub App with several runner templates: a small general one that falls back to on-demand when Spot has
# no capacity, a large one that waits for Spot (cheaper, may queue), and an arm64 one. The App's private key
# and the webhook secret are created by Terraform from sensitive variables (kept in the state: encrypt it).
#
#   runs-on: [self-hosted, small]        runs-on: [self-hosted, large]        runs-on: [self-hosted, arm64]

provider "aws" {
  region = var.region
}

module "sophons" {
  source = "../.."

  deployment   = "ci-runners"
  github_owner = var.github_owner
  github_scope = "org"

  github_app = {
    app_id          = var.github_app_id
    installation_id = var.github_app_installation_id
  }
  github_app_private_key = var.github_app_private_key
  webhook_secret         = var.webhook_secret

  allow_public_repositories = false
  repositories              = ["${var.github_owner}/api", "${var.github_owner}/web"]

  vpc_id     = var.vpc_id
  subnet_ids = var.subnet_ids

  runner_templates = {
    small = {
      labels             = ["linux", "x64", "small"]
      instance_types     = ["c7i.large", "c6i.large", "c6a.large", "m7i.large"]
      max_runners        = 30
      on_demand_fallback = true
    }
    large = {
      labels             = ["linux", "x64", "large"]
      instance_types     = ["c7i.4xlarge", "c6i.4xlarge", "c6a.4xlarge", "m7i.4xlarge"]
      max_runners        = 10
      on_demand_fallback = false
      volume_size_gb     = 100
    }
    arm64 = {
      labels             = ["linux", "arm64"]
      instance_types     = ["c7g.large", "c6g.large", "m7g.large"]
      ami_ssm_parameter  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
      max_runners        = 10
      on_demand_fallback = true
      user_data          = <<-EOT
        #!/bin/bash
        dnf install -y docker git && systemctl enable --now docker
      EOT
    }
  }

  create_runner_max_concurrency = 20
  log_retention_days            = 14
  tags                          = { Team = "platform" }
}
