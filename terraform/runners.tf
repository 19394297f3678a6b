# What a runner instance is made of: one launch template per runner template, a security group with no
# ingress, the bucket holding the runner script SSM runs, and the log group receiving the command output.

locals {
  # A template with baked_image launches from the image_builder pipeline's parameter of its architecture, resolved
  # at each launch like any ami_ssm_parameter (so create-runner's role may read it: iam.tf, ResolveAmiParameters).
  template_architectures = {
    for name, instance_type in data.aws_ec2_instance_type.template : name => (
      contains(instance_type.supported_architectures, "arm64") ? "arm64" : (
        contains(instance_type.supported_architectures, "x86_64") ? "x86_64" : join("/", instance_type.supported_architectures)
      )
    )
  }
  baked_template_architectures = {
    for name, arch in local.template_architectures : name => arch if var.runner_templates[name].baked_image
  }
  # The runner cache holds the packages of the architectures the templates run, named as GitHub names them.
  runner_cache_architectures = sort(distinct([
    for arch in values(local.template_architectures) : arch == "arm64" ? "arm64" : "x64"
  ]))
  baked_template_parameters = {
    for name, arch in local.baked_template_architectures : name => "${local.baked_image_parameter_prefix}${arch}"
  }

  runner_templates = {
    for name, t in var.runner_templates : name => merge(t, {
      subnet_ids        = t.subnet_ids != null ? t.subnet_ids : var.subnet_ids
      ami_id            = t.baked_image ? null : t.ami_id
      ami_ssm_parameter = t.baked_image ? lookup(local.baked_template_parameters, name, null) : t.ami_ssm_parameter
      image_id = (
        t.baked_image ? "resolve:ssm:${lookup(local.baked_template_parameters, name, "")}"
        : t.ami_id != null ? t.ami_id : "resolve:ssm:${t.ami_ssm_parameter}"
      )
    })
  }

  runner_script_key    = "runner.sh"
  runner_cache_prefix  = "actions-runner/"
  runner_script_source = file(coalesce(var.runner_script_path, "${path.module}/../scripts/runner.sh"))
  # The script reads its optional tarball cache location from this line; the copy in the bucket points it at
  # this deployment's bucket when runner_cache_enabled is set.
  runner_cache_marker = "SOPHONS_RUNNER_CACHE_URI:=}"
  runner_script = var.runner_cache_enabled ? replace(
    local.runner_script_source,
    local.runner_cache_marker,
    "SOPHONS_RUNNER_CACHE_URI:=s3://${aws_s3_bucket.scripts.id}/${local.runner_cache_prefix}}"
  ) : local.runner_script_source
}

# A template's architecture (its first instance type's; create-runner's fleet keeps to one architecture per template)
# picks the image a baked template launches from, and which runner packages the runner cache keeps.
data "aws_ec2_instance_type" "template" {
  for_each = { for name, t in var.runner_templates : name => t.instance_types[0] }

  instance_type = each.value
}

################################################################################
# Network
################################################################################

resource "aws_security_group" "runner" {
  #checkov:skip=CKV_AWS_382:Jobs need outbound access to arbitrary hosts (GitHub, package registries, their own services); nothing can connect in.
  name        = "${var.deployment}-runners"
  description = "Runner instances of ${var.deployment}: no ingress, outbound for GitHub, AWS APIs and the jobs"
  vpc_id      = var.vpc_id

  egress {
    description = "All outbound traffic: GitHub, SSM, S3, CloudWatch Logs and whatever the jobs fetch"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }

  tags = merge(local.tags, { Name = "${var.deployment}-runners" })
}

################################################################################
# Launch templates
################################################################################

resource "aws_launch_template" "runner" {
  for_each = local.runner_templates

  name                   = "${var.deployment}-${each.key}"
  description            = "Runner template ${each.key} of ${var.deployment}"
  image_id               = each.value.image_id
  update_default_version = true
  ebs_optimized          = true
  user_data              = each.value.user_data == null ? null : base64encode(each.value.user_data)

  iam_instance_profile {
    arn = aws_iam_instance_profile.runner.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = var.runner_metadata_hop_limit
    instance_metadata_tags      = "disabled"
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = false
    delete_on_termination       = true
    security_groups             = [aws_security_group.runner.id]
  }

  block_device_mappings {
    device_name = each.value.root_device_name

    ebs {
      volume_size           = each.value.volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = false
  }

  # Whatever create-runner launches from this template carries the deployment tag from the first moment, so
  # the tag-conditioned permissions (terminate, cancel) and the sweep always see it.
  dynamic "tag_specifications" {
    for_each = ["instance", "volume", "network-interface", "spot-instances-request"]

    content {
      resource_type = tag_specifications.value
      tags          = merge(local.tags, { "sophons:template" = each.key, Name = "${var.deployment}-${each.key}" })
    }
  }

  tags = merge(local.tags, { "sophons:template" = each.key })
}

################################################################################
# Runner script bucket
################################################################################

resource "aws_s3_bucket" "scripts" {
  #checkov:skip=CKV_AWS_18:The bucket holds the runner script (and optionally the runner tarball), written only by Terraform; enable CloudTrail S3 data events if you need read audit.
  #checkov:skip=CKV_AWS_144:The script is redeployed by terraform apply; cross-region replication adds nothing for a single-region deployment.
  #checkov:skip=CKV_AWS_145:SSE-S3 encryption; the script is public in this repository, so a customer-managed key protects nothing.
  #checkov:skip=CKV2_AWS_62:Nothing needs to react to changes of the script object.
  bucket        = "${var.deployment}-scripts-${local.account_id}-${local.region}"
  force_destroy = true
  tags          = local.tags
}

resource "aws_s3_bucket_ownership_controls" "scripts" {
  bucket = aws_s3_bucket.scripts.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "scripts" {
  bucket                  = aws_s3_bucket.scripts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "scripts" {
  bucket = aws_s3_bucket.scripts.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_versioning" "scripts" {
  bucket = aws_s3_bucket.scripts.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "scripts" {
  bucket = aws_s3_bucket.scripts.id

  # The runner cache: move-jobs copies each new release in; a release is current for weeks, and one that is still
  # current when its copy expires is copied again within move_jobs_schedule (runners use GitHub meanwhile).
  rule {
    id     = "expire-old-runner-packages"
    status = var.runner_cache_enabled ? "Enabled" : "Disabled"

    filter {
      prefix = local.runner_cache_prefix
    }

    expiration {
      days = 60
    }
  }

  rule {
    id     = "expire-old-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = 30
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.scripts]
}

data "aws_iam_policy_document" "scripts_bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
    resources = [
      aws_s3_bucket.scripts.arn,
      "${aws_s3_bucket.scripts.arn}/*",
    ]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "scripts" {
  count = var.script_bucket_tls_only_policy ? 1 : 0

  bucket = aws_s3_bucket.scripts.id
  policy = data.aws_iam_policy_document.scripts_bucket.json

  depends_on = [aws_s3_bucket_public_access_block.scripts]
}

resource "aws_s3_object" "runner_script" {
  bucket       = aws_s3_bucket.scripts.id
  key          = local.runner_script_key
  content      = local.runner_script
  content_type = "text/x-shellscript"
  tags         = local.tags

  lifecycle {
    precondition {
      condition     = strcontains(local.runner_script_source, local.runner_cache_marker)
      error_message = "scripts/runner.sh lost its `${local.runner_cache_marker}` line; runner_cache_enabled cannot point it at the bucket."
    }
  }

  depends_on = [aws_s3_bucket_server_side_encryption_configuration.scripts]
}

################################################################################
# Runner command output
################################################################################

resource "aws_cloudwatch_log_group" "runner_commands" {
  #checkov:skip=CKV_AWS_158:Runner output is the runner's own log (the JIT config is never printed); the CloudWatch Logs default encryption applies.
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable (30 days by default).
  name              = "/${var.deployment}/runners"
  retention_in_days = var.log_retention_days
  tags              = local.tags
}
