# One organization, one runner template. The GitHub token and the webhook secret were put into SSM by hand
# (see docs/deploy.md), so they never pass through Terraform or its state.
#
#   jobs:
#     build:
#       runs-on: [self-hosted, linux-x64]

provider "aws" {
  region = var.region
}

module "sophons" {
  source = "../.."

  deployment   = "sophons"
  github_owner = var.github_owner
  github_scope = "org"

  github_token_parameter_name   = "/sophons/github/token"
  webhook_secret_parameter_name = "/sophons/github/webhook-secret"

  vpc_id     = var.vpc_id
  subnet_ids = var.subnet_ids

  runner_templates = {
    "linux-x64" = {
      labels         = ["linux", "x64"]
      instance_types = ["c7i.large", "c6i.large", "m7i.large", "m6i.large"]
      max_runners    = 20
    }
  }

  tags = { Team = "platform" }
}
