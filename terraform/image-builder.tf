# The optional baked image (var.image_builder): an EC2 Image Builder pipeline per architecture that bakes Amazon
# Linux 2023 with the runner's libraries, the image_builder packages and GitHub's latest actions-runner release
# (image-builder/bake-runner.sh), on a schedule. Each build writes its AMI id to
# /imagebuilder/<deployment>/runner-image/<architecture>; templates with baked_image = true launch from that
# parameter (runners.tf). Off by default, and off in the moto test (moto has no Image Builder): terraform validate of
# examples/baked-image, a plan against moto (test/preconditions, case baked) and checkov cover it.

locals {
  baked_architectures = var.image_builder.enabled ? toset(var.image_builder.architectures) : toset([])

  # Image Builder's service-linked role may write SSM parameters under /imagebuilder/ only (AWSServiceRoleForImageBuilder:
  # ssm:PutParameter on arn:aws:ssm:*:*:parameter/imagebuilder/*), so the AMI ids are published there.
  baked_image_parameter_prefix = "/imagebuilder/${var.deployment}/runner-image/"
  baked_image_parameters       = { for arch in var.image_builder.architectures : arch => "${local.baked_image_parameter_prefix}${arch}" }

  image_builder_instance_types = merge({
    x86_64 = ["c7i.large", "c6i.large", "m7i.large"]
    arm64  = ["c7g.large", "c6g.large", "m7g.large"]
  }, var.image_builder.instance_types)

  image_builder_subnet_id = try(coalesce(var.image_builder.subnet_id, try(var.subnet_ids[0], null)), null)

  # The component runs image-builder/bake-runner.sh as it is: `bake` on the build instance (which ends with the
  # check), `check` on an instance started from the new image (test). The script travels compressed: a component
  # holds at most 16,000 characters. Each command is a JSON string, which YAML reads as a double-quoted scalar.
  bake_script_path = "${path.module}/image-builder/bake-runner.sh"
  bake_script_gz   = base64gzip(file(local.bake_script_path))
  bake_script_file = "/tmp/sophons-bake-runner.sh"
  bake_commands = { for step in ["bake", "check"] : step => [
    "echo '${local.bake_script_gz}' | base64 -d | gunzip > ${local.bake_script_file}",
    "SOPHONS_BAKE_STEP=${step} SOPHONS_BAKE_PACKAGES='${join(" ", var.image_builder.packages)}' bash ${local.bake_script_file}",
  ] }
  # indent(12): the lists sit 12 columns in once <<- has stripped the heredoc's 4-space margin.
  bake_yaml_commands = { for step, commands in local.bake_commands : step => join("\n", [for c in commands : "- ${jsonencode(c)}"]) }
  bake_component     = <<-EOT
    name: ${var.deployment}-runner
    description: ${jsonencode("Bakes the runner's libraries, ${join(" ", var.image_builder.packages)} and GitHub's latest actions-runner (checksum verified) into /opt/sophons")}
    schemaVersion: 1.0
    phases:
      - name: build
        steps:
          - name: BakeRunner
            action: ExecuteBash
            inputs:
              commands:
                ${indent(12, local.bake_yaml_commands.bake)}
      - name: test
        steps:
          - name: CheckRunner
            action: ExecuteBash
            inputs:
              commands:
                ${indent(12, local.bake_yaml_commands.check)}
  EOT

  # Image Builder components and recipes are immutable: a changed one is a new version, created before the old one
  # goes (the pipeline still names it). The versions come from the content (x.y.z, each at most 2^30 - 1).
  # The script's own hash stands for its compressed copy, whose bytes may differ between Terraform builds.
  bake_component_version = "1.0.${parseint(substr(sha256(replace(local.bake_component, local.bake_script_gz, filesha256(local.bake_script_path))), 0, 7), 16)}"
  baked_recipe_version = {
    for arch in local.baked_architectures : arch => "1.0.${parseint(substr(sha256(join("|", [
      local.bake_component_version, arch, var.image_builder.volume_size_gb,
    ])), 0, 7), 16)}"
  }
}

################################################################################
# What the build instance may do
################################################################################

data "aws_iam_policy_document" "image_builder_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "image_builder" {
  count = var.image_builder.enabled ? 1 : 0

  name                 = "${var.deployment}-image-builder"
  description          = "Role of the ${var.deployment} image build and test instances (EC2 Image Builder)"
  assume_role_policy   = data.aws_iam_policy_document.image_builder_assume.json
  max_session_duration = 3600
  tags                 = local.tags
}

# The documented minimum of an Image Builder instance profile for AMI builds: EC2InstanceProfileForImageBuilder
# (the component, its logs) and AmazonSSMManagedInstanceCore (Image Builder drives the instance through SSM).
# EC2 Image Builder User Guide, Prerequisites, IAM:
# https://docs.aws.amazon.com/imagebuilder/latest/userguide/image-builder-setting-up.html
resource "aws_iam_role_policy_attachment" "image_builder" {
  for_each = var.image_builder.enabled ? toset([
    "arn:${local.partition}:iam::aws:policy/EC2InstanceProfileForImageBuilder",
    "arn:${local.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore",
  ]) : toset([])

  role       = aws_iam_role.image_builder[0].name
  policy_arn = each.value
}

# AmazonSSMManagedInstanceCore allows ssm:GetParameter(s) on "*": the build instance needs none of this deployment's
# parameters, so it may read none of them, whatever else is attached to the role.
data "aws_iam_policy_document" "image_builder" {
  statement {
    sid     = "NeverReadDeploymentParameters"
    effect  = "Deny"
    actions = ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory"]
    resources = distinct([
      "${local.parameter_arn}${local.parameter_prefix}",
      "${local.parameter_arn}${local.parameter_prefix}/*",
      local.config_parameter_arn,
      local.webhook_secret_arn,
      local.github_credential_arn,
    ])
  }
}

resource "aws_iam_role_policy" "image_builder" {
  count = var.image_builder.enabled ? 1 : 0

  name   = "${var.deployment}-image-builder"
  role   = aws_iam_role.image_builder[0].id
  policy = data.aws_iam_policy_document.image_builder.json
}

resource "aws_iam_instance_profile" "image_builder" {
  count = var.image_builder.enabled ? 1 : 0

  name = "${var.deployment}-image-builder"
  role = aws_iam_role.image_builder[0].name
  tags = local.tags
}

################################################################################
# The pipeline, per architecture
################################################################################

resource "aws_imagebuilder_component" "runner" {
  #checkov:skip=CKV_AWS_180:The component is this repository's public bake script: no secret for a customer-managed key to protect.
  count = var.image_builder.enabled ? 1 : 0

  name                  = "${var.deployment}-runner"
  description           = "Runner libraries, packages and the latest actions-runner for ${var.deployment} runners"
  platform              = "Linux"
  supported_os_versions = ["Amazon Linux 2023"]
  version               = local.bake_component_version
  data                  = local.bake_component
  tags                  = local.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_imagebuilder_image_recipe" "runner" {
  #checkov:skip=CKV_AWS_200:The image holds public software only; encrypted with the account's default EBS key, as the runners' own volumes are (a customer-managed key would need grants for Image Builder and for every launch).
  for_each = local.baked_architectures

  name         = "${var.deployment}-runner-${each.key}"
  description  = "Amazon Linux 2023 (${each.key}) with what the ${var.deployment} runner script needs"
  parent_image = "ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${each.key}"
  version      = local.baked_recipe_version[each.key]
  tags         = local.tags

  component {
    component_arn = aws_imagebuilder_component.runner[0].arn
  }

  block_device_mapping {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.image_builder.volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_imagebuilder_infrastructure_configuration" "runner" {
  for_each = local.baked_architectures

  name                          = "${var.deployment}-runner-${each.key}"
  description                   = "Build and test instances of the ${var.deployment} ${each.key} runner image"
  instance_profile_name         = aws_iam_instance_profile.image_builder[0].name
  instance_types                = local.image_builder_instance_types[each.key]
  subnet_id                     = local.image_builder_subnet_id
  security_group_ids            = [aws_security_group.runner.id]
  terminate_instance_on_failure = true
  resource_tags                 = local.tags
  tags                          = local.tags

  instance_metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  lifecycle {
    precondition {
      condition     = local.image_builder_subnet_id != null
      error_message = "image_builder needs a subnet for its build instances: set image_builder.subnet_id, or subnet_ids."
    }
  }
}

resource "aws_imagebuilder_distribution_configuration" "runner" {
  #checkov:skip=CKV_AWS_199:The AMI holds public software only and stays in this account; the account's default EBS encryption applies.
  for_each = local.baked_architectures

  name        = "${var.deployment}-runner-${each.key}"
  description = "Publishes the ${var.deployment} ${each.key} runner image's id to ${local.baked_image_parameters[each.key]}"
  tags        = local.tags

  distribution {
    region = local.region

    ami_distribution_configuration {
      name        = "${var.deployment}-runner-${each.key}-{{ imagebuilder:buildDate }}"
      description = "${var.deployment} runner image (${each.key}): Amazon Linux 2023, the runner's libraries, ${join(" ", var.image_builder.packages)}, actions-runner in /opt/sophons"
      ami_tags    = merge(local.tags, { "sophons:image" = "runner" })
    }

    ssm_parameter_configuration {
      parameter_name = local.baked_image_parameters[each.key]
      data_type      = "aws:ec2:image"
    }
  }
}

resource "aws_imagebuilder_image_pipeline" "runner" {
  for_each = local.baked_architectures

  name                             = "${var.deployment}-runner-${each.key}"
  description                      = "Rebuilds the ${var.deployment} ${each.key} runner image with GitHub's latest actions-runner"
  image_recipe_arn                 = aws_imagebuilder_image_recipe.runner[each.key].arn
  infrastructure_configuration_arn = aws_imagebuilder_infrastructure_configuration.runner[each.key].arn
  distribution_configuration_arn   = aws_imagebuilder_distribution_configuration.runner[each.key].arn
  status                           = "ENABLED"
  tags                             = local.tags

  schedule {
    schedule_expression = var.image_builder.schedule
    # Build at every tick: a new actions-runner release changes neither the parent image nor the component, so
    # the default condition (only when those have updates) would keep an old runner baked.
    pipeline_execution_start_condition = "EXPRESSION_MATCH_ONLY"
  }

  image_tests_configuration {
    image_tests_enabled = true
    timeout_minutes     = 60
  }
}

# Until the first build, the parameter names the plain Amazon Linux 2023 image: baked templates launch (and the
# runner script installs everything) from the first apply on. Each build then overwrites the value.
data "aws_ssm_parameter" "al2023" {
  for_each = local.baked_architectures

  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${each.key}"
}

resource "aws_ssm_parameter" "baked_image" {
  #checkov:skip=CKV2_AWS_34:An AMI id, no secret: EC2 resolves it at launch as a plain String of data type aws:ec2:image.
  for_each = local.baked_architectures

  name        = local.baked_image_parameters[each.key]
  description = "AMI id of the latest ${var.deployment} ${each.key} runner image (written by Image Builder)"
  type        = "String"
  data_type   = "aws:ec2:image"
  value       = nonsensitive(data.aws_ssm_parameter.al2023[each.key].value)
  tags        = local.tags

  lifecycle {
    ignore_changes = [value, insecure_value]
  }
}

################################################################################
# Old images go
################################################################################

data "aws_iam_policy_document" "image_lifecycle_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["imagebuilder.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "image_lifecycle" {
  count = var.image_builder.enabled ? 1 : 0

  name               = "${var.deployment}-image-lifecycle"
  description        = "Lets EC2 Image Builder delete old ${var.deployment} runner images and their snapshots"
  assume_role_policy = data.aws_iam_policy_document.image_lifecycle_assume.json
  tags               = local.tags
}

# The managed policy acts only on images and snapshots tagged CreatedBy = EC2 Image Builder.
resource "aws_iam_role_policy_attachment" "image_lifecycle" {
  count = var.image_builder.enabled ? 1 : 0

  role       = aws_iam_role.image_lifecycle[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/EC2ImageBuilderLifecycleExecutionPolicy"
}

resource "aws_imagebuilder_lifecycle_policy" "runner" {
  for_each = local.baked_architectures

  name           = "${var.deployment}-runner-${each.key}"
  description    = "Keeps the ${var.image_builder.images_kept} latest ${var.deployment} ${each.key} runner images; deletes older ones and their snapshots"
  execution_role = aws_iam_role.image_lifecycle[0].arn
  resource_type  = "AMI_IMAGE"
  status         = "ENABLED"
  tags           = local.tags

  policy_detail {
    action {
      type = "DELETE"

      include_resources {
        amis      = true
        snapshots = true
      }
    }

    filter {
      type  = "COUNT"
      value = var.image_builder.images_kept
    }
  }

  resource_selection {
    recipe {
      name             = aws_imagebuilder_image_recipe.runner[each.key].name
      semantic_version = aws_imagebuilder_image_recipe.runner[each.key].version
    }
  }

  depends_on = [aws_iam_role_policy_attachment.image_lifecycle]
}
