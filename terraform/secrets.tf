# GitHub credentials and the webhook secret. Either Terraform creates the SecureString parameter from a
# sensitive variable (the value then also lives in the Terraform state: keep the state encrypted), or the
# caller created it out of band and passes its name, which keeps the secret out of Terraform entirely.

locals {
  create_github_token     = nonsensitive(var.github_token != null)
  create_github_app_key   = nonsensitive(var.github_app_private_key != null)
  create_webhook_secret   = nonsensitive(var.webhook_secret != null)
  uses_github_app         = var.github_app != null
  github_token_param_name = local.create_github_token ? "${local.parameter_prefix}/github/token" : var.github_token_parameter_name
  github_app_key_param_name = (
    local.create_github_app_key ? "${local.parameter_prefix}/github/app-private-key" : var.github_app_private_key_parameter_name
  )
  webhook_secret_param_name = local.create_webhook_secret ? "${local.parameter_prefix}/github/webhook-secret" : var.webhook_secret_parameter_name

  # The one GitHub credential parameter the Lambdas that talk to GitHub may read.
  github_credential_param_name = local.uses_github_app ? local.github_app_key_param_name : local.github_token_param_name

  credential_errors = compact([
    local.create_github_token && var.github_token_parameter_name != null ? "set github_token or github_token_parameter_name, not both" : "",
    local.create_github_app_key && var.github_app_private_key_parameter_name != null ? "set github_app_private_key or github_app_private_key_parameter_name, not both" : "",
    local.create_webhook_secret && var.webhook_secret_parameter_name != null ? "set webhook_secret or webhook_secret_parameter_name, not both" : "",
    local.webhook_secret_param_name == null ? "set webhook_secret or webhook_secret_parameter_name" : "",
    local.uses_github_app && local.github_token_param_name != null ? "set a GitHub token or a GitHub App, not both" : "",
    !local.uses_github_app && local.github_token_param_name == null ? "set github_token, github_token_parameter_name or github_app" : "",
    local.uses_github_app && local.github_app_key_param_name == null ? "github_app needs github_app_private_key or github_app_private_key_parameter_name" : "",
    !local.uses_github_app && local.github_app_key_param_name != null ? "a GitHub App private key was given without github_app" : "",
  ])
}

resource "aws_ssm_parameter" "github_token" {
  count = local.create_github_token ? 1 : 0

  name        = local.github_token_param_name
  description = "GitHub personal access token used by the ${var.deployment} runner Lambdas"
  type        = "SecureString"
  key_id      = var.parameter_kms_key_arn
  value       = var.github_token
  tags        = local.tags
}

resource "aws_ssm_parameter" "github_app_private_key" {
  count = local.create_github_app_key ? 1 : 0

  name        = local.github_app_key_param_name
  description = "GitHub App private key used by the ${var.deployment} runner Lambdas"
  type        = "SecureString"
  key_id      = var.parameter_kms_key_arn
  value       = var.github_app_private_key
  tags        = local.tags
}

resource "aws_ssm_parameter" "webhook_secret" {
  count = local.create_webhook_secret ? 1 : 0

  name        = local.webhook_secret_param_name
  description = "Secret GitHub signs ${var.deployment} webhook deliveries with"
  type        = "SecureString"
  key_id      = var.parameter_kms_key_arn
  value       = var.webhook_secret
  tags        = local.tags
}
