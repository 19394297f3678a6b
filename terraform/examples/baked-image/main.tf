# Runners that start from a baked image: an EC2 Image Builder pipeline per architecture rebuilds Amazon Linux 2023
# with the runner's libraries, git, Docker and GitHub's latest actions-runner every night, and both templates
# launch from its latest image. See docs/deploy.md, "A baked image".
#
#   jobs:
#     build:
#       runs-on: [self-hosted, linux-x64]     # or linux-arm64; Docker is installed and started for linux-x64
#
# After the first apply, start the first build instead of waiting for the schedule (until it has run, the templates
# launch from plain Amazon Linux 2023, and the runner script installs everything at boot):
#
#   terraform output -json image_builder_pipeline_arns | jq -r '.[]' |
#     xargs -n1 aws imagebuilder start-image-pipeline-execution --image-pipeline-arn

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

  image_builder = {
    enabled       = true
    architectures = ["x86_64", "arm64"]
    schedule      = "cron(0 4 * * ? *)" # daily, 04:00 UTC
    packages      = ["git", "docker"]
    images_kept   = 3
  }

  runner_templates = {
    "linux-x64" = {
      labels         = ["linux", "x64"]
      instance_types = ["c7i.large", "c6i.large", "m7i.large"]
      max_runners    = 20
      baked_image    = true
      docker         = true
    }
    "linux-arm64" = {
      labels         = ["linux", "arm64"]
      instance_types = ["c7g.large", "m7g.large"]
      max_runners    = 10
      baked_image    = true
    }
  }

  tags = { Team = "platform" }
}
